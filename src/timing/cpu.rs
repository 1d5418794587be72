//! Thread CPU time, per platform.
//!
//! | platform | source |
//! |---|---|
//! | Linux, macOS, BSDs | `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`: a system call, not vDSO-accelerated |
//! | Windows | `GetThreadTimes` (100 ns units), untested here |
//! | elsewhere | none: [`thread_cpu_ns`] returns `None` |
//!
//! A read costs a system call (measured in BENCHMARKS.md, "CPU time"), so
//! the engine reads it only around long polls of suspect tasks (tier `Warn`
//! and above), never on a well-behaved task's poll (see
//! `Escalation::measures_cpu`).

/// CPU time consumed by the calling thread, in nanoseconds, if the platform
/// can tell.
#[cfg(unix)]
pub(crate) fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the
    // call, and CLOCK_THREAD_CPUTIME_ID is a clock every supported unix has.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// CPU time consumed by the calling thread, in nanoseconds, if the platform
/// can tell.
#[cfg(windows)]
pub(crate) fn thread_cpu_ns() -> Option<u64> {
    use windows_sys::Win32::Foundation::FILETIME;
    use windows_sys::Win32::System::Threading::{GetCurrentThread, GetThreadTimes};
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut creation, mut exit, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: GetCurrentThread returns a pseudo-handle valid for the calling
    // thread; all four out-pointers are valid, writable FILETIMEs.
    let ok = unsafe {
        GetThreadTimes(
            GetCurrentThread(),
            &mut creation,
            &mut exit,
            &mut kernel,
            &mut user,
        )
    };
    if ok == 0 {
        return None;
    }
    let ticks = |t: FILETIME| (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime);
    Some((ticks(kernel) + ticks(user)) * 100)
}

/// CPU time consumed by the calling thread: not available on this platform.
#[cfg(not(any(unix, windows)))]
pub(crate) fn thread_cpu_ns() -> Option<u64> {
    None
}

#[cfg(all(test, any(unix, windows)))]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_time_advances_while_spinning_not_while_sleeping() {
        let a = thread_cpu_ns().expect("cpu clock");
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::spin_loop();
        }
        let b = thread_cpu_ns().expect("cpu clock");
        std::thread::sleep(std::time::Duration::from_millis(30));
        let c = thread_cpu_ns().expect("cpu clock");
        // The OS may deschedule the spinning thread on a busy machine, so
        // only the comparison is certain, not an amount.
        assert!(b > a, "CPU time did not advance while spinning");
        assert!(c - b < b - a, "sleep used more CPU than spinning");
    }
}
