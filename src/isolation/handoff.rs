//! Moving a task's core to the pool and getting its result back.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;

use crate::fault::catch;
use crate::stats::IsolatedGauge;
use crate::sync::lock;

/// What the pool polls: a task's core, which knows how to poll itself the
/// managed way and when it no longer belongs on the pool.
///
/// Only a `Send + 'static` core with a `Send` output can be moved (see
/// [`isolate`](super::isolate)); the trait itself asks nothing of the
/// sort, so that a wrapper can name its handoff whatever its future.
pub(crate) trait Isolated {
    type Output;

    /// Polls the task once on a pool thread.
    fn poll_isolated(&mut self, cx: &mut Context<'_>) -> PoolPoll<Self::Output>;

    /// Drops the task's future now (it finished, or was cancelled), on the
    /// pool, with the runtime entered.
    fn drop_future(&mut self);
}

/// One poll on the pool, as the core saw it.
pub(crate) enum PoolPoll<T> {
    /// Not finished; stays on the pool until woken.
    Pending,
    /// Finished with this output.
    Ready(T),
    /// Demoted below `Isolate` (before or by this poll): belongs on the
    /// main workers again.
    Demoted,
}

/// What the pool hands back to the wrapper.
pub(crate) enum Outcome<C: Isolated> {
    /// The future completed on the pool.
    Output(C::Output),
    /// The future panicked on the pool; the wrapper re-raises the payload
    /// so the `JoinHandle` sees the same panic as with `tokio::spawn`.
    Panicked(Box<dyn Any + Send>),
    /// The task was demoted: poll it on the main workers again.
    Returned(C),
}

/// The meeting point of a wrapper (origin) and its job on the pool.
pub(crate) struct Handoff<C: Isolated> {
    outcome: Mutex<Option<Outcome<C>>>,
    origin: AtomicWaker,
    cancelled: AtomicBool,
    job: OnceLock<Waker>,
}

impl<C: Isolated> Handoff<C> {
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
    pub(crate) fn poll_origin(&self, cx: &mut Context<'_>) -> Poll<Outcome<C>> {
        self.origin.register(cx.waker());
        match lock(&self.outcome).take() {
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

    fn finish(&self, outcome: Outcome<C>) {
        *lock(&self.outcome) = Some(outcome);
        self.origin.wake();
    }
}

/// Whether a job is done with the pool after a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobState {
    /// Waiting to be woken for another turn.
    Parked,
    /// Finished, panicked, cancelled or sent home: drop the job.
    Done,
}

/// A job the pool can run without knowing its future's type.
pub(crate) trait PoolJob: Send {
    /// Gives the job one turn.
    fn run(&mut self, cx: &mut Context<'_>) -> JobState;
}

/// One isolated task on the pool.
pub(crate) struct Job<C: Isolated> {
    /// `None` once the core has left the pool.
    core: Option<C>,
    handoff: std::sync::Arc<Handoff<C>>,
    /// Counts the job in the isolated-tasks gauge while the core is here.
    gauge: Option<IsolatedGauge>,
}

impl<C: Isolated> Job<C> {
    pub(crate) fn new(core: C, handoff: std::sync::Arc<Handoff<C>>, gauge: IsolatedGauge) -> Self {
        Job {
            core: Some(core),
            handoff,
            gauge: Some(gauge),
        }
    }

    /// Ends the job's time on the pool with `outcome`, if there is one for
    /// the wrapper. The gauge drops before the wrapper can see the outcome,
    /// and a finished or cancelled core is dropped here, on the pool.
    fn leave(&mut self, outcome: Option<Outcome<C>>) -> JobState {
        let core = self.core.take().map(|mut core| {
            // Dropped here, where a panic in its destructor is caught.
            let _ = catch(|| core.drop_future()).map_err(|payload| {
                let message = crate::fault::panic_message(&*payload).to_owned();
                let _ = crate::fault::drop_quietly(payload);
                tracing::error!(
                    panic = message,
                    "tokio-pulse: the destructor of an isolated task's future panicked; the panic is ignored"
                );
            });
            core
        });
        self.gauge = None;
        if let Some(panic) = crate::fault::drop_quietly(core) {
            tracing::error!(
                panic,
                "tokio-pulse: the destructor of an isolated task's future panicked; the panic is ignored"
            );
        }
        if let Some(outcome) = outcome {
            self.handoff.finish(outcome);
        }
        JobState::Done
    }

    /// Demoted: the wrapper polls the future again as soon as it gets it
    /// back, which re-registers the future's wakers with the runtime.
    fn send_home(&mut self) -> JobState {
        self.gauge = None;
        if let Some(core) = self.core.take() {
            self.handoff.finish(Outcome::Returned(core));
        }
        JobState::Done
    }
}

impl<C> PoolJob for Job<C>
where
    C: Isolated + Send + 'static,
    C::Output: Send,
{
    fn run(&mut self, cx: &mut Context<'_>) -> JobState {
        if self.handoff.cancelled.load(Ordering::SeqCst) {
            return self.leave(None);
        }
        let Some(core) = self.core.as_mut() else {
            return JobState::Done;
        };
        // Tokio catches a task's panic at the same boundary: the future's
        // poll and the hooks called around it. The payload travels to the
        // wrapper, which re-raises it on the runtime.
        match catch(|| core.poll_isolated(cx)) {
            Ok(PoolPoll::Pending) => JobState::Parked,
            Ok(PoolPoll::Demoted) => self.send_home(),
            Ok(PoolPoll::Ready(out)) => self.leave(Some(Outcome::Output(out))),
            Err(payload) => self.leave(Some(Outcome::Panicked(payload))),
        }
    }
}
