//! The isolation pool: where repeat offenders run, off the main workers.
//!
//! A task in the `Isolate` tier leaves the runtime's workers at a poll
//! boundary: its core (future and escalation state, see [`Isolated`])
//! moves to a small pool of plain OS threads running at lowered priority
//! (see [`IsolationPriority`]). The pool polls it with the spawning
//! runtime's handle entered, so timers, I/O and `tokio::spawn` inside the
//! task keep working against that runtime. The task's wrapper stays behind
//! in the runtime and waits: its `JoinHandle` gets the output or the panic,
//! and aborting it (or shutting the runtime down) cancels the job. A
//! demoted task moves back.
//!
//! This module knows nothing of the engine: it moves anything [`Isolated`].

mod handoff;
mod pool;
mod priority;

use std::sync::Arc;

pub(crate) use handoff::{Handoff, Isolated, Outcome, PoolPoll};
pub(crate) use pool::IsolationPool;
pub use priority::IsolationPriority;

use crate::stats::IsolatedGauge;
use handoff::Job;

/// Moves `core` onto `pool`, counted by `gauge` while it is there; the
/// returned handoff is where the wrapper waits for its outcome.
pub(crate) fn isolate<C>(pool: &IsolationPool, core: C, gauge: IsolatedGauge) -> Arc<Handoff<C>>
where
    C: Isolated + Send + 'static,
    C::Output: Send,
{
    let handoff = Arc::new(Handoff::new());
    let job = Box::new(Job::new(core, Arc::clone(&handoff), gauge));
    let job_waker = pool.submit(job, tokio::runtime::Handle::try_current().ok());
    handoff.set_job_waker(job_waker);
    handoff
}
