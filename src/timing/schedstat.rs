//! What the scheduler says about a thread: how long it ran, and how long it
//! waited, runnable, for a CPU (Linux `/proc/.../schedstat`).
//!
//! The wall time of a poll includes time its thread did not run: the OS
//! gave the CPU to another process (a busy host), a CPU quota throttled the
//! cgroup, the pool thread's low priority kept it off. The run delay the
//! scheduler counts per thread is exactly that time, and a task is not to
//! blame for it. Reading it is a file read, so it is done only for polls
//! already found long, never on the poll path of a short one.

/// The calling thread's kernel thread id (0 where there is none to give).
pub(crate) fn current_tid() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions and cannot fail.
        unsafe { libc::gettid() }
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// What the scheduler has counted for one thread so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SchedStat {
    /// Time the thread ran on a CPU.
    pub cpu_ns: u64,
    /// Time the thread was runnable but waiting for a CPU (the OS ran
    /// something else, or a CPU quota throttled its cgroup).
    pub delay_ns: u64,
}

impl SchedStat {
    /// What happened between `earlier` and `self`.
    pub(crate) fn since(self, earlier: SchedStat) -> SchedStat {
        SchedStat {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            delay_ns: self.delay_ns.saturating_sub(earlier.delay_ns),
        }
    }
}

/// What a poll is charged, out of `poll_ns` it lasted, given what the
/// scheduler counted for its thread over the last `window_ns` of it
/// (`during`): the share of the window the thread spent waiting for a CPU
/// is taken off the whole poll, and the CPU time is scaled up to it. The
/// poll's start, before the window, is assumed to have gone like the
/// window.
pub(crate) fn charged(poll_ns: u64, window_ns: u64, during: SchedStat) -> Charged {
    if window_ns == 0 {
        return Charged {
            run_ns: poll_ns,
            cpu_ns: None,
        };
    }
    let share = |part: u64| {
        let scaled = u128::from(part.min(window_ns)) * u128::from(poll_ns) / u128::from(window_ns);
        u64::try_from(scaled).unwrap_or(poll_ns)
    };
    Charged {
        run_ns: poll_ns - share(during.delay_ns),
        cpu_ns: Some(share(during.cpu_ns)),
    }
}

/// See [`charged`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Charged {
    /// Time the poll held its thread while the thread could run: running,
    /// or blocked in a system call, never waiting for a CPU.
    pub run_ns: u64,
    /// CPU time the poll used, estimated.
    pub cpu_ns: Option<u64>,
}

/// An open `schedstat` file: the calling thread's (`/proc/thread-self`) or
/// another thread's of this process (`/proc/self/task/TID`). Reading an
/// open file is one `pread`, with no allocation.
#[derive(Debug)]
pub(crate) struct SchedStatFile {
    #[cfg(target_os = "linux")]
    fd: libc::c_int,
}

#[cfg(target_os = "linux")]
impl SchedStatFile {
    /// The calling thread's.
    pub(crate) fn current_thread() -> Option<Self> {
        Self::open(c"/proc/thread-self/schedstat")
    }

    /// Thread `tid` of this process.
    pub(crate) fn thread(tid: i32) -> Option<Self> {
        let mut path = [0u8; 48];
        let mut w = Cursor(&mut path, 0);
        use std::fmt::Write;
        write!(w, "/proc/self/task/{tid}/schedstat").ok()?;
        let len = w.1;
        let path = std::ffi::CStr::from_bytes_until_nul(&path[..=len]).ok()?;
        Self::open(path)
    }

    fn open(path: &std::ffi::CStr) -> Option<Self> {
        // SAFETY: `path` is a valid NUL-terminated string for the call.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        (fd >= 0).then_some(SchedStatFile { fd })
    }

    /// The figures now; `None` if the file cannot be read (its thread
    /// exited).
    pub(crate) fn read(&self) -> Option<SchedStat> {
        let mut buf = [0u8; 96];
        // SAFETY: `buf` is valid, writable memory of the length given, and
        // `fd` is an open descriptor this value owns.
        let n = unsafe { libc::pread(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        let text = buf.get(..usize::try_from(n).ok()?)?;
        let mut fields = text
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty())
            .map(|f| std::str::from_utf8(f).ok()?.parse::<u64>().ok());
        Some(SchedStat {
            cpu_ns: fields.next()??,
            delay_ns: fields.next()??,
        })
    }
}

#[cfg(target_os = "linux")]
impl Drop for SchedStatFile {
    fn drop(&mut self) {
        // SAFETY: `fd` is open and owned by this value, closed once here.
        unsafe { libc::close(self.fd) };
    }
}

/// Writes into a fixed buffer, keeping the last byte for a NUL.
#[cfg(target_os = "linux")]
struct Cursor<'a>(&'a mut [u8], usize);

#[cfg(target_os = "linux")]
impl std::fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.1 + s.len();
        if end >= self.0.len() {
            return Err(std::fmt::Error);
        }
        self.0[self.1..end].copy_from_slice(s.as_bytes());
        self.1 = end;
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
impl SchedStatFile {
    /// The calling thread's: not available on this platform.
    pub(crate) fn current_thread() -> Option<Self> {
        None
    }

    /// Another thread's: not available on this platform.
    pub(crate) fn thread(_tid: i32) -> Option<Self> {
        None
    }

    pub(crate) fn read(&self) -> Option<SchedStat> {
        None
    }
}

#[cfg(test)]
mod charge_tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn time_spent_waiting_for_a_cpu_is_not_charged() {
        // 10 ms poll, of which the last 8 ms are known: 6 ms of them
        // waiting for a CPU, 2 ms on one.
        let c = charged(
            10 * MS,
            8 * MS,
            SchedStat {
                cpu_ns: 2 * MS,
                delay_ns: 6 * MS,
            },
        );
        assert_eq!(c.run_ns, 10 * MS - 7_500_000);
        assert_eq!(c.cpu_ns, Some(2_500_000));
        // A poll that ran throughout is charged in full.
        let hog = charged(
            10 * MS,
            8 * MS,
            SchedStat {
                cpu_ns: 8 * MS,
                delay_ns: 0,
            },
        );
        assert_eq!(hog.run_ns, 10 * MS);
        // Figures larger than the window (clock skew) are capped.
        let odd = charged(
            10 * MS,
            MS,
            SchedStat {
                cpu_ns: 0,
                delay_ns: 5 * MS,
            },
        );
        assert_eq!(odd.run_ns, 0);
        assert_eq!(charged(5, 0, SchedStat::default()).run_ns, 5);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_threads_own_and_anothers_figures_agree_and_count_its_cpu() {
        let own = SchedStatFile::current_thread().expect("own schedstat");
        let by_tid = SchedStatFile::thread(current_tid()).expect("schedstat by tid");
        let before = own.read().unwrap();
        // Spin until the thread's own figures show 10 ms more CPU time
        // (however busy the machine, which only makes it take longer).
        let t = Instant::now();
        while own.read().unwrap().since(before).cpu_ns < 10_000_000 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "CPU time does not advance"
            );
        }
        let after = by_tid.read().unwrap().since(before);
        assert!(after.cpu_ns >= 10_000_000, "{after:?}");
        assert!(SchedStatFile::thread(i32::MAX).is_none());
    }
}
