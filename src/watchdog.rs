//! The stuck-poll watchdog: finding polls that have run too long, and
//! reporting them while they still run.
//!
//! The engine runs [`scan`] on a plain OS thread, not a Tokio task: a stuck
//! poll may hold every worker, and the watchdog must still run. It reads
//! the thread slots that managed polls publish their start in (see
//! `context`). A poll found running past the threshold is reported once,
//! while it is still running: a `tracing` error naming the task and its
//! spawn site, a counter, an entry in `Pulse::snapshot()`, and a request
//! that the task's next poll be isolated.
//!
//! Capturing the stuck thread's backtrace is not done: Rust cannot walk
//! another thread's stack without signal-handler tricks. The report names
//! the thread instead.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::context::{self, CurrentPoll, ThreadSlot};
use crate::registry::Registry;
use crate::snapshot::StuckPoll;
use crate::stats::PulseStats;
use crate::task::TaskId;
use crate::tier::Tier;
use crate::timing::{as_nanos, clock};

/// How often to look: a quarter of the threshold, so a stuck poll is
/// reported at most 25 % late.
pub(crate) fn period(threshold: Duration) -> Duration {
    (threshold / 4).clamp(Duration::from_millis(1), Duration::from_millis(250))
}

/// Calls `f` with each poll of `pulse_id`'s tasks that has been running
/// for at least `min_ns` at `now_ns`, and the slot it runs in.
fn for_each_running(
    pulse_id: u64,
    min_ns: u64,
    now_ns: u64,
    mut f: impl FnMut(&ThreadSlot, CurrentPoll, u64),
) {
    context::for_each_slot(|slot| {
        let Some(poll) = slot.read() else { return };
        let running_ns = now_ns.saturating_sub(poll.start_ns);
        if poll.pulse_id == pulse_id && running_ns >= min_ns {
            f(slot, poll, running_ns);
        }
    });
}

/// Reports every poll of `pulse_id`'s tasks running past `threshold_ns`
/// that was not reported before.
pub(crate) fn scan(pulse_id: u64, threshold_ns: u64, registry: &Registry, stats: &PulseStats) {
    let now = clock().now_ns();
    for_each_running(pulse_id, threshold_ns, now, |slot, poll, running_ns| {
        if slot.reported_start_ns.swap(poll.start_ns, Relaxed) == poll.start_ns {
            return; // this poll was reported already
        }
        report(registry, stats, slot, poll, running_ns);
    });
}

fn report(
    registry: &Registry,
    stats: &PulseStats,
    slot: &ThreadSlot,
    poll: CurrentPoll,
    running_ns: u64,
) {
    let Some(task) = registry.get(TaskId(poll.task_id)) else {
        return; // ended in the meantime
    };
    task.record_stuck();
    stats.watchdog_report();
    let running_ms = running_ns / 1_000_000;
    let consequence = if task.tier() < Tier::Isolate {
        task.force_tier(Tier::Isolate);
        "the task will be isolated at its next poll"
    } else {
        "the task is already isolated, off the main workers"
    };
    tracing::error!(
        task.id = poll.task_id,
        task.name = task.name.as_deref().unwrap_or(""),
        task.location = %task.location,
        thread = slot.thread_name.as_deref().unwrap_or("<unnamed>"),
        running_ms,
        "tokio-pulse watchdog: a poll has been running for {running_ms} ms without yielding; {consequence}",
    );
}

/// Polls of `pulse_id`'s tasks running now for at least `min`.
pub(crate) fn stuck_polls(pulse_id: u64, min: Duration) -> Vec<StuckPoll> {
    let mut found = Vec::new();
    for_each_running(
        pulse_id,
        as_nanos(min),
        clock().now_ns(),
        |slot, poll, running_ns| {
            found.push(StuckPoll {
                task: TaskId(poll.task_id),
                running_for: Duration::from_nanos(running_ns),
                thread: slot.thread_name.clone(),
            });
        },
    );
    found
}
