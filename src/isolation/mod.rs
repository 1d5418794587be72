//! The isolation pool: where repeat offenders run, off the main workers.
//!
//! A task in the `Isolate` tier leaves the runtime's workers at a poll
//! boundary: its [`TaskCore`] (future and all) moves to a small pool of
//! plain OS threads running at lowered priority (see [`IsolationPriority`]).
//! The pool polls it with the spawning runtime's handle entered, so timers,
//! I/O and `tokio::spawn` inside the task keep working against that runtime.
//! The task's wrapper stays behind in the runtime and waits: its
//! `JoinHandle` gets the output or the panic, and aborting it (or shutting
//! the runtime down) cancels the job. A demoted task moves back.
//!
//! Only `Send` futures can move; the wrapper knows whether its future can
//! by holding an [`Isolator`], a function pointer instantiated where the
//! `Send` bound is known.

mod handoff;
mod pool;
mod priority;

use std::future::Future;
use std::sync::Arc;

pub(crate) use handoff::{Handoff, Outcome};
pub(crate) use pool::IsolationPool;
pub use priority::IsolationPriority;

use crate::task_core::TaskCore;
use handoff::Job;

/// Moves a core to the pool, or gives it back if the pool cannot run it.
pub(crate) type Isolator<F> = fn(TaskCore<F>) -> Result<Arc<Handoff<F>>, TaskCore<F>>;

/// The isolator for futures that can move between threads.
pub(crate) fn isolator<F>() -> Isolator<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    isolate::<F>
}

// The error hands the core back by value on a path taken at most once per
// task (the pool failed to start); boxing it would cost more than it saves.
#[allow(clippy::result_large_err)]
fn isolate<F>(core: TaskCore<F>) -> Result<Arc<Handoff<F>>, TaskCore<F>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let pulse = std::sync::Arc::clone(core.pulse());
    let Some(pool) = pulse.isolation_pool() else {
        return Err(core);
    };
    let handoff = Arc::new(Handoff::new());
    let job = Box::new(Job::new(core, Arc::clone(&handoff)));
    let job_waker = pool.submit(job, tokio::runtime::Handle::try_current().ok());
    handoff.set_job_waker(job_waker);
    Ok(handoff)
}
