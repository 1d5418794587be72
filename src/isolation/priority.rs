//! Lowering the OS priority of isolation threads.

use std::io;

/// The OS scheduling priority of isolation pool threads.
///
/// On Linux the threads can yield the CPU to every normal thread (the main
/// workers included) whenever those have work, and use whatever CPU is left:
/// isolated hogs keep their throughput on an idle machine and cost the
/// others nothing on a busy one. Elsewhere this setting is a documented
/// no-op: the threads run at normal priority.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IsolationPriority {
    /// Linux `SCHED_IDLE`: runs only when no normal thread wants the CPU.
    /// Falls back to `Nice(19)` if the OS refuses. The default.
    #[default]
    Idle,
    /// A nice value for each pool thread, from -20 (highest) to 19
    /// (lowest). Raising priority (negative values) needs privileges.
    Nice(i8),
    /// Leave the threads at the priority they inherit.
    Inherit,
}

/// What a pool thread's priority was lowered to, and what it had before:
/// what the progress floor raises it back to, and lowers it to again (see
/// `floor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lowered {
    /// The thread's kernel id.
    pub tid: i32,
    /// The nice value it inherited, at normal scheduling (`SCHED_OTHER`).
    pub normal_nice: i32,
    /// What it runs at now.
    pub to: Applied,
}

/// The priority a pool thread runs at when not raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// `SCHED_IDLE`.
    Idle,
    /// `SCHED_OTHER` at this nice value.
    Nice(i32),
    /// As inherited: nothing to raise.
    Inherited,
}

/// Applies `priority` to the calling thread and says what it did.
#[cfg(target_os = "linux")]
pub(crate) fn apply(priority: IsolationPriority) -> io::Result<Lowered> {
    let tid = crate::timing::schedstat::current_tid();
    // SAFETY: getpriority has no memory preconditions. (It may return -1
    // as a nice value; errno is not checked since this thread exists.)
    let normal_nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    let to = match priority {
        IsolationPriority::Inherit => Applied::Inherited,
        IsolationPriority::Nice(n) => {
            set_nice(tid, i32::from(n))?;
            Applied::Nice(i32::from(n))
        }
        IsolationPriority::Idle => match set_policy(tid, libc::SCHED_IDLE) {
            Ok(()) => Applied::Idle,
            Err(err) => {
                set_nice(tid, 19).map_err(|_| err)?;
                Applied::Nice(19)
            }
        },
    };
    Ok(Lowered {
        tid,
        normal_nice,
        to,
    })
}

impl Lowered {
    /// Whether the thread runs below normal priority, so that raising it
    /// means anything.
    pub(crate) fn below_normal(&self) -> bool {
        match self.to {
            Applied::Idle => true,
            Applied::Nice(n) => n > self.normal_nice,
            Applied::Inherited => false,
        }
    }

    /// Raises the thread back to normal priority: `SCHED_OTHER` at the nice
    /// value it inherited. Going back up needs `CAP_SYS_NICE` or a
    /// `RLIMIT_NICE` that allows that nice value (Linux refuses otherwise,
    /// with `EPERM`).
    #[cfg(target_os = "linux")]
    pub(crate) fn raise(&self) -> io::Result<()> {
        match self.to {
            Applied::Inherited => Ok(()),
            Applied::Nice(_) => set_nice(self.tid, self.normal_nice),
            Applied::Idle => set_policy(self.tid, libc::SCHED_OTHER),
        }
    }

    /// Lowers the thread again, to what it was lowered to at its start.
    #[cfg(target_os = "linux")]
    pub(crate) fn lower(&self) -> io::Result<()> {
        match self.to {
            Applied::Inherited => Ok(()),
            Applied::Nice(n) => set_nice(self.tid, n),
            Applied::Idle => set_policy(self.tid, libc::SCHED_IDLE),
        }
    }

    /// Off Linux nothing was lowered: nothing to raise.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn raise(&self) -> io::Result<()> {
        Ok(())
    }

    /// Off Linux nothing was lowered.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn lower(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Sets thread `tid`'s scheduling policy (with priority 0: `SCHED_OTHER`,
/// `SCHED_BATCH` and `SCHED_IDLE` take no other); its nice value is kept.
#[cfg(target_os = "linux")]
fn set_policy(tid: i32, policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `tid` names a thread of this process (or the call fails
    // with ESRCH); `param` is a valid sched_param that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
fn set_nice(tid: i32, n: i32) -> io::Result<()> {
    // SAFETY: on Linux, PRIO_PROCESS with a thread id sets that thread's
    // nice value only; no pointers are involved.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, n) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Applies `priority` to the calling thread: a no-op off Linux, where a
/// per-thread priority cannot be set portably.
#[cfg(not(target_os = "linux"))]
pub(crate) fn apply(_priority: IsolationPriority) -> io::Result<Lowered> {
    Ok(Lowered {
        tid: 0,
        normal_nice: 0,
        to: Applied::Inherited,
    })
}

/// The calling thread's scheduling policy is `SCHED_IDLE` (tests use this).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn current_is_idle() -> bool {
    // SAFETY: pid 0 names the calling thread.
    unsafe { libc::sched_getscheduler(0) == libc::SCHED_IDLE }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's nice value, from /proc (field 19 of `stat`).
    fn current_nice() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name (field 2) is in parentheses and may hold spaces.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn nice_priority_applies_to_the_calling_thread_only() {
        let outer = current_nice();
        std::thread::spawn(|| {
            let lowered = apply(IsolationPriority::Nice(19)).unwrap();
            assert_eq!(lowered.to, Applied::Nice(19));
            assert_eq!(current_nice(), 19);
        })
        .join()
        .unwrap();
        assert_eq!(current_nice(), outer);
    }

    #[test]
    fn idle_priority_applies_to_the_calling_thread_only() {
        std::thread::spawn(|| {
            assert_eq!(apply(IsolationPriority::Idle).unwrap().to, Applied::Idle);
            assert!(current_is_idle());
        })
        .join()
        .unwrap();
        assert!(!current_is_idle());
    }

    /// Raising and lowering are done by another thread (the ticker) to a
    /// pool thread; raising back from `SCHED_IDLE` needs privileges, so
    /// where they are missing the refusal is what is checked.
    #[test]
    fn another_thread_raises_a_lowered_thread_to_normal_and_lowers_it_again() {
        let (lowered_tx, lowered_rx) = std::sync::mpsc::channel();
        let (ask_tx, ask_rx) = std::sync::mpsc::channel::<()>();
        let (idle_tx, idle_rx) = std::sync::mpsc::channel();
        let pool_thread = std::thread::spawn(move || {
            lowered_tx
                .send(apply(IsolationPriority::Idle).unwrap())
                .unwrap();
            while ask_rx.recv().is_ok() {
                idle_tx.send(current_is_idle()).unwrap();
            }
        });
        let lowered = lowered_rx.recv().unwrap();
        let is_idle = || {
            ask_tx.send(()).unwrap();
            idle_rx.recv().unwrap()
        };
        assert!(is_idle());
        match lowered.raise() {
            Ok(()) => {
                assert!(!is_idle(), "raised, still SCHED_IDLE");
                lowered.lower().unwrap();
                assert!(is_idle(), "lowered, not SCHED_IDLE");
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                assert!(is_idle());
            }
        }
        drop(ask_tx);
        pool_thread.join().unwrap();
    }
}
