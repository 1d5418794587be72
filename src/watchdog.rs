//! The stuck-poll watchdog: reporting polls that have run too long while
//! they still run.
//!
//! The engine's ticker runs it at each tick: a plain OS thread, not a Tokio
//! task, because a stuck poll may hold every worker and the watchdog must
//! still run. A poll is charged from the moment the ticker first saw it
//! running (see `context::Sightings`), so "running for 100 ms" means at
//! least 100 ms. A poll found past the threshold is reported once, while it
//! is still running: a `tracing` error naming the task and its spawn site,
//! a counter, an entry in `Pulse::snapshot()`, and a request that the
//! task's next poll be isolated.
//!
//! Capturing the stuck thread's backtrace is not done: Rust cannot walk
//! another thread's stack without signal-handler tricks. The report names
//! the thread instead.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::context::{self, Running, ThreadSlot};
use crate::snapshot::StuckPoll;
use crate::stats::PulseStats;
use crate::ticker::Ticker;
use crate::tier::Tier;
use crate::timing::{as_nanos, clock};

/// Reports `poll` (on `slot`'s thread, running at least `running_ns`) if
/// that is past `threshold_ns` and it was not reported before.
pub(crate) fn check(
    slot: &ThreadSlot,
    poll: Running,
    running_ns: u64,
    threshold_ns: u64,
    stats: &PulseStats,
) {
    if running_ns < threshold_ns
        || slot.sightings().reported_seq.swap(poll.seq, Relaxed) == poll.seq
    {
        return;
    }
    // Act on the task, and copy what the report needs; the report is made
    // after, with the task let go (a subscriber may be slow).
    let found = context::inspect(slot, poll, |task| {
        task.record_stuck();
        let isolated = task.tier() >= Tier::Isolate;
        if !isolated {
            task.force_tier(Tier::Isolate);
        }
        (task.id, task.name.clone(), task.location, isolated)
    });
    let Some((id, name, location, isolated)) = found else {
        return; // ended in the meantime
    };
    stats.watchdog_report();
    let running_ms = running_ns / 1_000_000;
    let consequence = if isolated {
        "the task is already isolated, off the main workers"
    } else {
        "the task will be isolated at its next poll"
    };
    tracing::error!(
        task.id = id.as_u64(),
        task.name = name.as_deref().unwrap_or(""),
        task.location = %location,
        thread = slot.thread_name.as_deref().unwrap_or("<unnamed>"),
        running_ms,
        "tokio-pulse watchdog: a poll has been running for {running_ms} ms without yielding; {consequence}",
    );
}

/// Polls of the engine of `ticker` that have been running now for at
/// least `min`, counted from when its ticker first saw them.
pub(crate) fn stuck_polls(ticker: &Ticker, min: Duration) -> Vec<StuckPoll> {
    let (now, min_ns) = (clock().now_ns(), as_nanos(min));
    let mut found = Vec::new();
    context::for_each_slot(|slot| {
        let Some(poll) = slot.read().filter(|p| std::ptr::eq(p.ticker, ticker)) else {
            return;
        };
        let Some(seen) = slot.sightings().of(poll.seq) else {
            return;
        };
        let running_ns = now.saturating_sub(seen.first_ns);
        if running_ns < min_ns {
            return;
        }
        let task = context::inspect(slot, poll, |t| (t.id, t.name.clone(), t.location));
        if let Some((task, name, location)) = task {
            found.push(StuckPoll {
                task,
                name,
                location,
                running_for: Duration::from_nanos(running_ns),
                thread: slot.thread_name.clone(),
            });
        }
    });
    found
}
