//! How the engine lives with failures that are not its own: panics in code
//! it calls (user hooks, `tracing` subscribers, futures' destructors on the
//! pool) and threads the OS will not start.
//!
//! The policy, in one place:
//! - User code the engine calls never changes a task's outcome. A panic in
//!   it is caught where the engine called it, reported once through
//!   `tracing`, and the task's own output or panic reaches its
//!   `JoinHandle` as without tokio-pulse. (Hooks that panic are also
//!   uninstalled: see `hooks`.)
//! - The engine's own background threads (the watchdog, the isolation
//!   pool) that cannot start leave the `Pulse` working without that part:
//!   the failure is reported once through `tracing`, `Pulse::health`
//!   says which part is down, and what depends on it degrades as
//!   documented there. Threads a user starts explicitly
//!   (`MetricsPublisher::spawn`) return the error instead.

use std::any::Any;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `f`, catching a panic. `f` is user code whose panic must not
/// unwind through the engine; the engine's state it touches is consistent
/// before and after the call.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Box<dyn Any + Send>> {
    catch_unwind(AssertUnwindSafe(f))
}

/// Drops `value`, catching a panic from its destructor, and drops that
/// panic's payload the same way (a payload's own destructor can panic too).
/// Returns the panic's message, if there was one.
pub(crate) fn drop_quietly<T>(value: T) -> Option<String> {
    let payload = catch(move || drop(value)).err()?;
    let message = panic_message(&*payload).to_owned();
    let _ = catch(move || drop(payload));
    Some(message)
}

/// The message of a panic payload, if it is a string.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string payload>")
}

/// Spawns a named engine thread.
pub(crate) fn spawn_thread(
    name: String,
    body: impl FnOnce() + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    #[cfg(test)]
    if tests::refuse_spawns() {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "thread creation refused by the test",
        ));
    }
    std::thread::Builder::new().name(name).spawn(body)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    thread_local! {
        static REFUSE: Cell<bool> = const { Cell::new(false) };
    }

    pub(super) fn refuse_spawns() -> bool {
        REFUSE.with(Cell::get)
    }

    /// Makes every engine thread the calling thread tries to start fail,
    /// as an OS out of threads would, while `f` runs.
    pub(crate) fn with_thread_spawns_refused<R>(f: impl FnOnce() -> R) -> R {
        REFUSE.with(|r| r.set(true));
        let out = super::catch(f);
        REFUSE.with(|r| r.set(false));
        out.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    #[test]
    fn a_panicking_destructor_is_contained_and_its_message_kept() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("boom in drop");
            }
        }
        assert_eq!(super::drop_quietly(Bomb).as_deref(), Some("boom in drop"));
        assert_eq!(super::drop_quietly(5), None);
    }
}
