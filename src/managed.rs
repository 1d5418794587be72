//! The wrapper around every managed future.
//!
//! Per poll, with no hooks and a well-behaved task, it costs two clock reads,
//! a thread-local write and restore, and a handful of relaxed loads and
//! stores on the task's own state: no allocation, no lock, no lookup (the
//! measured cost is in BENCHMARKS.md). Everything else (tier changes,
//! events, CPU time, the slow lane, the isolation pool) is off that path,
//! taken only by tasks that have already misbehaved.
//!
//! The wrapper stays in the runtime that spawned it for the task's whole
//! life, so its `JoinHandle` and `abort` behave exactly as Tokio's. When the
//! task is isolated only the future (in its [`TaskCore`]) moves to the pool;
//! the wrapper waits for it to come back, finish, or panic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::engine::Engine;
use crate::isolation::{self, Handoff, Outcome};
use crate::task::{TaskInfo, TaskShared};
use crate::task_core::{TaskCell, TaskCore};
use crate::tier::Tier;

/// Moves a core to the isolation pool, or hands it back if there is no
/// pool. A function pointer, instantiated where the future is known to be
/// `Send`: the wrapper of a future that is not holds none, and never moves.
pub(crate) type Isolator<F> = fn(TaskCore<F>) -> Result<Arc<Handoff<TaskCore<F>>>, TaskCore<F>>;

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
fn isolate<F>(core: TaskCore<F>) -> Result<Arc<Handoff<TaskCore<F>>>, TaskCore<F>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let engine = Arc::clone(core.engine());
    match engine.isolation_pool() {
        Some(pool) => Ok(isolation::isolate(pool, core, engine.stats.isolated())),
        None => Err(core),
    }
}

/// A future under tokio-pulse management.
///
/// Created by [`Pulse::spawn`](crate::Pulse::spawn) (which spawns it) or by
/// [`PulseExt::pulse`](crate::PulseExt::pulse) (which hands it back for you to
/// run under any executor). Its output is the wrapped future's output; a
/// panic in the wrapped future propagates unchanged, also from the
/// isolation pool.
#[must_use = "futures do nothing unless polled"]
// `repr(C)`: Tokio keeps a task's future right after its own hot words, so
// the first 64 bytes of the wrapper (the span check and the core's hot
// fields, see `TaskCore`) share the cache lines Tokio has just touched.
#[repr(C)]
pub struct Managed<F: Future> {
    /// Entered around every poll on the runtime, so that events from inside
    /// the task carry its identity. `None` unless a subscriber enabled it
    /// when the task was created (`tokio_pulse::task` at `DEBUG`): a
    /// disabled `Span` is still 40 bytes, and moving it in and out of the
    /// wrapper cost ~6 ns a poll, where checking an `Option<Box<_>>` costs
    /// nothing measurable. Polls on the isolation pool run outside it.
    span: Option<Box<tracing::Span>>,
    /// The task's core while it is polled here, on the spawning runtime.
    core: Option<TaskCore<F>>,
    /// Where the core waits on the isolation pool, while it is there.
    isolated: Option<Arc<Handoff<TaskCore<F>>>>,
    /// The task's allocation: its shared state, engine and future. The core
    /// holds it too; the wrapper keeps its own hold for the task's end,
    /// wherever the core is then.
    cell: Arc<TaskCell<F>>,
    /// Moves the core to the isolation pool; `None` for futures that are
    /// not `Send`, which stay on their thread (capped at `Tier::Yield`).
    isolator: Option<Isolator<F>>,
}

impl<F: Future> Managed<F> {
    pub(crate) fn new(
        engine: Arc<Engine>,
        task: TaskShared,
        future: F,
        isolator: Option<Isolator<F>>,
    ) -> Self {
        let start = engine.starting_tier(task.origin());
        let max_tier = if isolator.is_some() {
            Tier::Isolate
        } else {
            Tier::Yield
        };
        let cell = Arc::new(TaskCell::new(task, engine, future));
        cell.engine.task_spawned();
        let span = tracing::debug_span!(
            target: "tokio_pulse::task",
            "pulse.task",
            task.id = cell.shared.id.0,
            task.name = cell.shared.name.as_deref(),
            task.location = %cell.shared.location,
        );
        Managed {
            span: (!span.is_disabled()).then(|| Box::new(span)),
            core: Some(TaskCore::new(Arc::clone(&cell), max_tier, start)),
            isolated: None,
            cell,
            isolator,
        }
    }
}

impl<F: Future> Future for Managed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // `Managed` is `Unpin`: the wrapped future is pinned in its cell.
        let this = self.get_mut();
        if this.span.is_none() {
            // The common case, kept free of writes: `take` below stores
            // into the wrapper, which measurably costs ~3 ns a poll.
            return this.poll_inner(cx);
        }
        let span = this.span.take();
        let out = match &span {
            Some(span) => span.in_scope(|| this.poll_inner(cx)),
            None => this.poll_inner(cx),
        };
        this.span = span;
        out
    }
}

impl<F: Future> Managed<F> {
    #[inline(always)]
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        loop {
            if let Some(core) = &mut self.core {
                let tier = core.tier();
                if tier == Tier::Isolate && self.isolator.is_some() {
                    self.isolate();
                    continue;
                }
                let out = core.poll_local(cx, tier);
                if out.is_ready() {
                    self.core = None;
                }
                return out;
            }
            let Some(handoff) = &self.isolated else {
                panic!("`Managed` future polled after completion");
            };
            match handoff.poll_origin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Outcome::Returned(core)) => {
                    self.isolated = None;
                    self.core = Some(core);
                }
                Poll::Ready(Outcome::Output(out)) => {
                    self.isolated = None;
                    return Poll::Ready(out);
                }
                Poll::Ready(Outcome::Panicked(payload)) => {
                    self.isolated = None;
                    std::panic::resume_unwind(payload);
                }
            }
        }
    }

    /// Moves the core to the isolation pool, or, if there is none, keeps
    /// it here for good (in the slow lane).
    #[cold]
    #[inline(never)]
    fn isolate(&mut self) {
        let (Some(core), Some(isolate)) = (self.core.take(), self.isolator) else {
            return;
        };
        core.pass_lane_offer();
        match isolate(core) {
            Ok(handoff) => self.isolated = Some(handoff),
            Err(core) => {
                self.isolator = None;
                self.core = Some(core);
            }
        }
    }
}

impl<F: Future> Drop for Managed<F> {
    fn drop(&mut self) {
        // Woken with a slow-lane slot on offer but never polled again (e.g.
        // aborted): pass the offer on, or the waiting tasks would stall.
        let (task, engine) = (&self.cell.shared, &self.cell.engine);
        if task.lane_if_used().is_some_and(|entry| entry.end()) {
            engine.lane.offer_next();
        }
        // The core, if here, goes first: dropping it publishes the task's
        // final poll count, which `task_ended` adds to the totals. (The
        // future itself goes with the last hold of the cell.)
        drop(self.core.take());
        if let Some(handoff) = self.isolated.take() {
            handoff.cancel();
        }
        engine.task_ended(task);
    }
}

impl<F: Future> std::fmt::Debug for Managed<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Managed")
            .field(
                "task",
                &TaskInfo {
                    shared: &self.cell.shared,
                },
            )
            .field("isolated", &self.isolated.is_some())
            .finish_non_exhaustive()
    }
}
