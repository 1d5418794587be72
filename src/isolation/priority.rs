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

/// Applies `priority` to the calling thread.
#[cfg(target_os = "linux")]
pub(crate) fn apply(priority: IsolationPriority) -> io::Result<()> {
    match priority {
        IsolationPriority::Inherit => Ok(()),
        IsolationPriority::Nice(n) => set_nice(n),
        IsolationPriority::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: pid 0 names the calling thread; `param` is a valid
            // sched_param that outlives the call.
            let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            if rc == 0 {
                Ok(())
            } else {
                let err = io::Error::last_os_error();
                set_nice(19).map_err(|_| err)
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn set_nice(n: i8) -> io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: on Linux, PRIO_PROCESS with a thread id sets that thread's
    // nice value only; no pointers are involved.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, i32::from(n)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Applies `priority` to the calling thread: a no-op off Linux, where a
/// per-thread priority cannot be set portably.
#[cfg(not(target_os = "linux"))]
pub(crate) fn apply(_priority: IsolationPriority) -> io::Result<()> {
    Ok(())
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
            apply(IsolationPriority::Nice(19)).unwrap();
            assert_eq!(current_nice(), 19);
        })
        .join()
        .unwrap();
        assert_eq!(current_nice(), outer);
    }

    #[test]
    fn idle_priority_applies_to_the_calling_thread_only() {
        std::thread::spawn(|| {
            apply(IsolationPriority::Idle).unwrap();
            assert!(current_is_idle());
        })
        .join()
        .unwrap();
        assert!(!current_is_idle());
    }
}
