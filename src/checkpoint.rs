//! A cooperative preemption point for long loops.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::context;
use crate::timing::clock;

/// Gives way to other tasks if the current task has used its slice.
///
/// Insert `checkpoint().await` in loops that compute for a long time
/// between real `.await`s. Inside a managed task it returns `Pending` once
/// (having scheduled the task to run again, behind other ready work) when
/// the current poll has run longer than the task's slice: half the
/// slow-poll threshold normally, a quarter once the task is in
/// [`Tier::Yield`](crate::Tier::Yield) or above. Otherwise it completes at once;
/// the check is one clock read.
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
                if clock().now_ns().saturating_sub(poll.start_ns) < poll.slice_ns {
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
