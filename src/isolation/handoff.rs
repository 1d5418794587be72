//! Moving a task's core to the pool and getting its result back.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;

use crate::pulse::PulseShared;
use crate::task_core::TaskCore;
use crate::tier::Tier;

/// What the pool hands back to the wrapper.
pub(crate) enum Outcome<F: Future> {
    /// The future completed on the pool.
    Output(F::Output),
    /// The future panicked on the pool; the wrapper re-raises the payload
    /// so the `JoinHandle` sees the same panic as with `tokio::spawn`.
    Panicked(Box<dyn Any + Send>),
    /// The task was demoted: poll it on the main workers again.
    Returned(TaskCore<F>),
}

/// The meeting point of a wrapper (origin) and its job on the pool.
pub(crate) struct Handoff<F: Future> {
    outcome: Mutex<Option<Outcome<F>>>,
    origin: AtomicWaker,
    cancelled: AtomicBool,
    job: OnceLock<Waker>,
}

impl<F: Future> Handoff<F> {
    pub(crate) fn new() -> Self {
        Handoff {
            outcome: Mutex::new(None),
            origin: AtomicWaker::new(),
            cancelled: AtomicBool::new(false),
            job: OnceLock::new(),
        }
    }

    pub(crate) fn set_job_waker(&self, waker: Waker) {
        let _ = self.job.set(waker);
    }

    /// Called by the wrapper: the outcome, once there is one.
    pub(crate) fn poll_origin(&self, cx: &mut Context<'_>) -> Poll<Outcome<F>> {
        self.origin.register(cx.waker());
        match self
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }

    /// Called by the wrapper when it is dropped (abort, runtime shutdown):
    /// the pool drops the future at its next turn.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(job) = self.job.get() {
            job.wake_by_ref();
        }
    }

    fn finish(&self, outcome: Outcome<F>) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        self.origin.wake();
    }
}

/// A job the pool can run without knowing its future's type.
pub(crate) trait PoolJob: Send {
    /// Polls the job once; `true` when it is finished with the pool.
    fn run(&mut self, cx: &mut Context<'_>) -> bool;
}

/// One isolated task on the pool.
pub(crate) struct Job<F: Future> {
    core: Option<TaskCore<F>>,
    handoff: Arc<Handoff<F>>,
    /// Counts the job in the `isolated_tasks` gauge until it leaves.
    pulse: Arc<PulseShared>,
}

impl<F: Future> Job<F> {
    pub(crate) fn new(core: TaskCore<F>, handoff: Arc<Handoff<F>>) -> Self {
        let pulse = Arc::clone(core.pulse());
        pulse.stats.isolated_tasks.fetch_add(1, Ordering::SeqCst);
        Job {
            core: Some(core),
            handoff,
            pulse,
        }
    }

    /// Ends the job's time on the pool; the gauge drops before the wrapper
    /// can see the outcome.
    fn leave(&mut self, outcome: Option<Outcome<F>>) -> bool {
        self.core = None;
        self.pulse
            .stats
            .isolated_tasks
            .fetch_sub(1, Ordering::SeqCst);
        if let Some(outcome) = outcome {
            self.handoff.finish(outcome);
        }
        true
    }
}

impl<F: Future> Drop for Job<F> {
    fn drop(&mut self) {
        if self.core.is_some() {
            // Dropped unfinished (the pool shut down): still leave the gauge.
            self.pulse
                .stats
                .isolated_tasks
                .fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl<F> PoolJob for Job<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn run(&mut self, cx: &mut Context<'_>) -> bool {
        if self.handoff.cancelled.load(Ordering::SeqCst) {
            return self.core.is_none() || self.leave(None);
        }
        let Some(core) = self.core.as_mut() else {
            return true;
        };
        if core.tier() < Tier::Isolate {
            return self.send_home();
        }
        // Tokio catches a task's panic at the same boundary; the payload
        // travels to the wrapper, which re-raises it on the runtime.
        match catch_unwind(AssertUnwindSafe(|| core.poll_isolated(cx))) {
            // Demoted by this very poll: go home now rather than at the
            // next wake-up.
            Ok(Poll::Pending) if core.tier() < Tier::Isolate => self.send_home(),
            Ok(Poll::Pending) => false,
            Ok(Poll::Ready(out)) => self.leave(Some(Outcome::Output(out))),
            Err(payload) => self.leave(Some(Outcome::Panicked(payload))),
        }
    }
}

impl<F: Future> Job<F> {
    /// Demoted: the wrapper polls the future again as soon as it gets it
    /// back, which re-registers the future's wakers with the runtime.
    fn send_home(&mut self) -> bool {
        match self.core.take() {
            Some(core) => self.leave(Some(Outcome::Returned(core))),
            None => true,
        }
    }
}
