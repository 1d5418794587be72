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
pub struct Managed<F: Future> {
    state: State<F>,
    /// The task's allocation: its shared state, engine and future. The core
    /// holds it too; the wrapper keeps its own hold for the task's end,
    /// wherever the core is then.
    cell: Arc<TaskCell<F>>,
    /// Moves the core to the isolation pool; `None` for futures that are
    /// not `Send`, which stay on their thread (capped at `Tier::Yield`).
    isolator: Option<Isolator<F>>,
    /// Entered around every poll on the runtime, so that events from inside
    /// the task carry its identity. `None` unless a subscriber enabled it
    /// when the task was created (`tokio_pulse::task` at `DEBUG`): a
    /// disabled `Span` is still 40 bytes, and moving it in and out of the
    /// wrapper cost ~6 ns a poll, where checking an `Option<Box<_>>` costs
    /// nothing measurable. Polls on the isolation pool run outside it.
    span: Option<Box<tracing::Span>>,
}

enum State<F: Future> {
    /// Polled here, on the spawning runtime.
    Local(TaskCore<F>),
    /// Moved to the isolation pool.
    Isolated(Arc<Handoff<TaskCore<F>>>),
    /// Completed, panicked, or polled after either.
    Done,
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
        // SAFETY: `Drop for Managed` removes the task from the registry
        // before it lets go of `cell`, the registry's only other way to it.
        unsafe { cell.engine.register(&cell.shared) };
        let span = tracing::debug_span!(
            target: "tokio_pulse::task",
            "pulse.task",
            task.id = cell.shared.id.0,
            task.name = cell.shared.name.as_deref(),
            task.location = %cell.shared.location,
        );
        Managed {
            span: (!span.is_disabled()).then(|| Box::new(span)),
            state: State::Local(TaskCore::new(Arc::clone(&cell), max_tier, start)),
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
            match &mut self.state {
                State::Local(core) => {
                    let tier = core.tier();
                    if let Some(isolate) = self.isolator {
                        if tier == Tier::Isolate {
                            let State::Local(core) =
                                std::mem::replace(&mut self.state, State::Done)
                            else {
                                unreachable!("matched Local above");
                            };
                            core.pass_lane_offer();
                            self.state = match isolate(core) {
                                Ok(handoff) => State::Isolated(handoff),
                                Err(core) => {
                                    // No pool: the task stays in the slow lane.
                                    self.isolator = None;
                                    State::Local(core)
                                }
                            };
                            continue;
                        }
                    }
                    let out = core.poll_local(cx, tier);
                    if out.is_ready() {
                        self.state = State::Done;
                    }
                    return out;
                }
                State::Isolated(handoff) => match handoff.poll_origin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Outcome::Returned(core)) => self.state = State::Local(core),
                    Poll::Ready(Outcome::Output(out)) => {
                        self.state = State::Done;
                        return Poll::Ready(out);
                    }
                    Poll::Ready(Outcome::Panicked(payload)) => {
                        self.state = State::Done;
                        std::panic::resume_unwind(payload);
                    }
                },
                State::Done => panic!("`Managed` future polled after completion"),
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
        match std::mem::replace(&mut self.state, State::Done) {
            State::Isolated(handoff) => handoff.cancel(),
            State::Local(core) => drop(core),
            State::Done => {}
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
            .field("isolated", &matches!(self.state, State::Isolated(_)))
            .finish_non_exhaustive()
    }
}
