//! A cooperative preemption point for long loops.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::context;

/// Gives way to other tasks if the current task has used its slice.
///
/// Insert `checkpoint().await` in loops that compute for a long time
/// between real `.await`s. Inside a managed task it returns `Pending` once
/// (having scheduled the task to run again, behind other ready work) when
/// the current poll may have run longer than the task's slice: half the
/// slow-poll threshold normally, a quarter once the task is in
/// [`Tier::Yield`](crate::Tier::Yield) or above. Otherwise it completes at
/// once. The check reads no clock: it compares the times of the ticks the
/// engine's ticker published (see [`Timing`](crate::Timing)), a few loads,
/// so a checkpoint in a tight loop costs next to nothing; it errs on the
/// side of giving way up to one tick early.
///
/// Outside a managed task it falls back to Tokio's own cooperative budget
/// (`tokio::task::coop`): it yields when the task has done a budget's worth
/// of work, and is a no-op outside a Tokio runtime. It never panics.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pulse = tokio_pulse::Pulse::new();
/// let sum = pulse.spawn(async {
///     let mut sum = 0u64;
///     for i in 0..1_000_000u64 {
///         sum = sum.wrapping_add(i * i);
///         if i % 1024 == 0 {
///             tokio_pulse::checkpoint().await;
///         }
///     }
///     sum
/// });
/// assert!(sum.await.unwrap() > 0);
/// # }
/// ```
pub fn checkpoint() -> Checkpoint {
    Checkpoint { yielded: false }
}

/// The future returned by [`checkpoint`].
#[derive(Debug)]
#[must_use = "futures do nothing unless `.await`ed"]
pub struct Checkpoint {
    yielded: bool,
}

impl Future for Checkpoint {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        match context::current() {
            Some(poll) => {
                // SAFETY: the poll running on this thread holds its
                // engine, and so the ticker, alive until it ends; this
                // checkpoint runs inside that poll.
                let ticker = unsafe { &*poll.ticker };
                if !ticker.slice_used(poll.start, poll.yield_slice) {
                    return Poll::Ready(());
                }
                self.yielded = true;
                defer(cx);
                Poll::Pending
            }
            None => tokio::task::coop::poll_proceed(cx).map(|restore| restore.made_progress()),
        }
    }
}

/// Schedules the current task to run again after other ready work (and,
/// on a Tokio runtime, after the I/O and timer drivers have run), the way
/// `tokio::task::yield_now` does. The caller then returns `Pending`.
pub(crate) fn defer(cx: &mut Context<'_>) {
    // `yield_now`'s first poll registers the waker with the runtime's
    // deferred list (or wakes it directly off-runtime) and returns Pending;
    // the future is a few bytes on the stack and has no drop logic.
    let yield_now = std::pin::pin!(tokio::task::yield_now());
    let first = yield_now.poll(cx);
    debug_assert!(first.is_pending());
}
