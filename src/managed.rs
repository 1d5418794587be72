//! The wrapper around every managed future.
//!
//! Per poll, with no hooks and a well-behaved task, it reads no clock: it
//! publishes the poll in its thread's slot, polls, counts, and compares
//! the ticker's tick with the one it saw before (see `task_core`): no
//! allocation, no lock, no lookup (the measured cost is in BENCHMARKS.md).
//! Everything else (tier changes, events, the slow lane, the isolation
//! pool) is off that path, taken only by polls that spanned a tick and by
//! tasks that have already misbehaved.
//!
//! The wrapper stays in the runtime that spawned it for the task's whole
//! life, so its `JoinHandle` and `abort` behave exactly as Tokio's. When the
//! task is isolated only the right to use its core and future moves to the
//! pool; the wrapper waits for it to come back, finish, or panic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::engine::Engine;
use crate::isolation::{Handoff, Outcome};
use crate::task::{TaskInfo, TaskShared};
use crate::task_core::{CellRef, PoolCore, TaskCore};
use crate::tier::Tier;

pub(crate) use crate::task_core::{Isolator, isolator};

/// A future under tokio-pulse management.
///
/// Created by [`Pulse::spawn`](crate::Pulse::spawn) (which spawns it) or by
/// [`PulseExt::pulse`](crate::PulseExt::pulse) (which hands it back for you to
/// run under any executor). Its output is the wrapped future's output; a
/// panic in the wrapped future propagates unchanged, also from the
/// isolation pool.
#[must_use = "futures do nothing unless polled"]
pub struct Managed<F: Future> {
    /// The task's allocation: its core, future, shared state and engine
    /// (see `task_core`). The wrapper itself is three words, so that
    /// Tokio's task grows by as little as possible.
    cell: CellRef<F>,
    /// Where the core waits on the isolation pool, while it is there. The
    /// wrapper holds the right to use the core and the future exactly
    /// while this is `None`.
    isolated: Option<Arc<Handoff<PoolCore<F>>>>,
    /// Entered around every poll on the runtime, so that events from inside
    /// the task carry its identity. `None` unless a subscriber enabled it
    /// when the task was created (`tokio_pulse::task` at `DEBUG`): a
    /// disabled `Span` is still 40 bytes, and moving it in and out of the
    /// wrapper cost ~6 ns a poll, where checking an `Option<Box<_>>` costs
    /// nothing measurable. Polls on the isolation pool run outside it.
    span: Option<Box<tracing::Span>>,
}

impl<F: Future> Managed<F> {
    pub(crate) fn new(
        engine: Arc<Engine>,
        task: TaskShared,
        future: F,
        isolator: Option<Isolator<F>>,
    ) -> Self {
        let start = engine.starting_tier(task.origin());
        engine.task_spawned();
        let cell = CellRef::new(task, engine, future, isolator, start);
        let span = tracing::debug_span!(
            target: "tokio_pulse::task",
            "pulse.task",
            task.id = cell.shared.id.0,
            task.name = cell.shared.name.as_deref(),
            task.location = %cell.shared.location,
        );
        Managed {
            cell,
            isolated: None,
            span: (!span.is_disabled()).then(|| Box::new(span)),
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
            let Some(handoff) = &self.isolated else {
                // SAFETY: not isolated, so the wrapper holds the right to
                // use the core, and `&mut self` makes this its only use.
                let core = unsafe { self.cell.core() };
                let tier = core.tier();
                if tier == Tier::Isolate && core.can_move() {
                    // SAFETY: the wrapper holds the right to use the core
                    // (see above), and hands it over with the handoff.
                    self.isolated = unsafe { TaskCore::isolate(&self.cell) };
                    continue;
                }
                let out = core.poll_local(cx, tier);
                if out.is_ready() {
                    core.completed();
                }
                return out;
            };
            match handoff.poll_origin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Outcome::Returned(core)) => {
                    // The right to use the core is back.
                    drop(core);
                    self.isolated = None;
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
}

impl<F: Future> Drop for Managed<F> {
    fn drop(&mut self) {
        // Woken with a slow-lane slot on offer but never polled again (e.g.
        // aborted): pass the offer on, or the waiting tasks would stall.
        let (task, engine) = (&self.cell.shared, &self.cell.engine);
        if task.lane_if_used().is_some_and(|entry| entry.end()) {
            engine.lane.offer_next();
        }
        match self.isolated.take() {
            Some(handoff) => handoff.cancel(),
            // SAFETY: not isolated: the wrapper holds the right to use the
            // core. The final poll count goes to the shared state, which
            // `task_ended` adds to the totals. (The future goes with the
            // last hold of the cell.)
            None => unsafe { self.cell.core() }.finish(),
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
