//! The stuck-poll watchdog.
//!
//! A plain OS thread, not a Tokio task: a stuck poll may hold every worker,
//! and the watchdog must still run. It wakes every quarter of its threshold
//! and reads the thread slots that managed polls publish their start stamp
//! in (see `context`); the poll path does no more than two relaxed stores
//! for it. A poll found running past the threshold is reported once, while
//! it is still running: a `tracing` error naming the task and its spawn
//! site, a counter, an entry in `Pulse::snapshot()`, and a request that
//! the task's next poll be isolated.
//!
//! Capturing the stuck thread's backtrace is not done: Rust cannot walk
//! another thread's stack without signal-handler tricks that are unsound
//! in general. The report names the thread instead.

use std::sync::Weak;
use std::time::Duration;

use crate::context::{self, CurrentPoll, ThreadSlot};
use crate::pulse::PulseShared;
use crate::snapshot::StuckPoll;
use crate::task::TaskId;
use crate::tier::Tier;
use crate::timing::{as_nanos, clock, nanos};

/// Starts the watchdog of one `Pulse`. The thread ends within one period
/// after the `Pulse` and all its tasks are gone. The threshold is re-read
/// each period, so `Pulse::reconfigure` can change it.
pub(crate) fn start(pulse: Weak<PulseShared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("pulse-watchdog".into())
        .spawn(move || {
            loop {
                let threshold = match pulse.upgrade() {
                    Some(p) => p.config.load().interventions.watchdog_threshold,
                    None => return,
                };
                let Some(threshold) = threshold else { return };
                std::thread::sleep(period(threshold));
                let Some(pulse) = pulse.upgrade() else {
                    return;
                };
                scan(&pulse, as_nanos(threshold));
            }
        })
        .map(drop)
}

/// How often to look: a quarter of the threshold, so a stuck poll is
/// reported at most 25 % late.
fn period(threshold: Duration) -> Duration {
    (threshold / 4).clamp(Duration::from_millis(1), Duration::from_millis(250))
}

/// Reports every poll of this `Pulse`'s tasks running past the threshold.
fn scan(pulse: &PulseShared, threshold_ns: u64) {
    let now = clock().now_ns();
    context::for_each_slot(|slot| {
        let Some(poll) = slot.read() else { return };
        if poll.pulse_id != pulse.id || now.saturating_sub(poll.start_ns) < threshold_ns {
            return;
        }
        if slot
            .reported_start_ns
            .swap(poll.start_ns, std::sync::atomic::Ordering::Relaxed)
            == poll.start_ns
        {
            return; // this poll was reported already
        }
        report(pulse, slot, poll, now);
    });
}

fn report(pulse: &PulseShared, slot: &ThreadSlot, poll: CurrentPoll, now: u64) {
    let Some(task) = pulse.registry.get(TaskId(poll.task_id)) else {
        return; // ended in the meantime
    };
    task.record_stuck();
    pulse.stats.watchdog_report();
    let running_ms = now.saturating_sub(poll.start_ns) / 1_000_000;
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

/// Polls of this `Pulse`'s tasks running now for at least `min`.
pub(crate) fn running_polls(pulse: &PulseShared, min: Duration) -> Vec<StuckPoll> {
    let now = clock().now_ns();
    let min_ns = as_nanos(min);
    let mut found = Vec::new();
    context::for_each_slot(|slot| {
        if let Some(poll) = slot.read() {
            let running_ns = now.saturating_sub(poll.start_ns);
            if poll.pulse_id == pulse.id && running_ns >= min_ns {
                found.push(StuckPoll {
                    task: TaskId(poll.task_id),
                    running_for: nanos(running_ns),
                    thread: slot.thread_name.clone(),
                });
            }
        }
    });
    found
}
