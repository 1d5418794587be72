//! Moving a task's core to the pool and getting its result back.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;

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
    pub core: Option<TaskCore<F>>,
    pub handoff: Arc<Handoff<F>>,
}

impl<F> PoolJob for Job<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn run(&mut self, cx: &mut Context<'_>) -> bool {
        if self.handoff.cancelled.load(Ordering::SeqCst) {
            self.core = None;
            return true;
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
            Ok(Poll::Pending) if core.tier() < Tier::Isolate => self.send_home(),
            Ok(Poll::Pending) => false,
            Ok(Poll::Ready(out)) => {
                self.core = None;
                self.handoff.finish(Outcome::Output(out));
                true
            }
            Err(payload) => {
                self.core = None;
                self.handoff.finish(Outcome::Panicked(payload));
                true
            }
        }
    }
}

impl<F: Future> Job<F> {
    /// Demoted: the wrapper polls the future again as soon as it gets it
    /// back, which re-registers the future's wakers with the runtime.
    fn send_home(&mut self) -> bool {
        if let Some(core) = self.core.take() {
            self.handoff.finish(Outcome::Returned(core));
        }
        true
    }
}
