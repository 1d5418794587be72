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
        if let Some(core) = self.core.take() {
            self.pulse
                .stats
                .isolated_tasks
                .fetch_sub(1, Ordering::SeqCst);
            drop_quietly(core);
        }
        if let Some(outcome) = outcome {
            self.handoff.finish(outcome);
        }
        true
    }
}

/// Drops a finished or cancelled future (or a finished job) on a pool
/// thread, catching a panic from its destructor. Tokio ignores such a panic
/// for a completed future; for a cancelled one it would tell the
/// `JoinHandle`, which here is already gone. Either way the panic must not
/// unwind out of a pool thread: that would end the thread and strand every
/// job queued behind it.
pub(super) fn drop_quietly<T>(value: T) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(value))) {
        tracing::error!(
            panic = panic_message(&*payload),
            "tokio-pulse: the destructor of an isolated task's future panicked; the panic is ignored"
        );
        // A payload's own destructor could panic too: caught the same way.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    }
}

/// The message of a panic payload, if it is a string.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string payload>")
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
            return self.leave(None);
        }
        let Some(core) = self.core.as_mut() else {
            return true;
        };
        // Tokio catches a task's panic at the same boundary: the future's
        // poll and the hooks called around it. The payload travels to the
        // wrapper, which re-raises it on the runtime.
        let polled = catch_unwind(AssertUnwindSafe(|| {
            if core.tier() < Tier::Isolate {
                return None;
            }
            let out = core.poll_isolated(cx);
            Some((out, core.tier()))
        }));
        match polled {
            Ok(None) => self.send_home(),
            // Demoted by this very poll: go home now rather than at the
            // next wake-up.
            Ok(Some((Poll::Pending, tier))) if tier < Tier::Isolate => self.send_home(),
            Ok(Some((Poll::Pending, _))) => false,
            Ok(Some((Poll::Ready(out), _))) => self.leave(Some(Outcome::Output(out))),
            Err(payload) => self.leave(Some(Outcome::Panicked(payload))),
        }
    }
}

impl<F: Future> Job<F> {
    /// Demoted: the wrapper polls the future again as soon as it gets it
    /// back, which re-registers the future's wakers with the runtime.
    fn send_home(&mut self) -> bool {
        if let Some(core) = self.core.take() {
            self.pulse
                .stats
                .isolated_tasks
                .fetch_sub(1, Ordering::SeqCst);
            self.handoff.finish(Outcome::Returned(core));
        }
        true
    }
}
