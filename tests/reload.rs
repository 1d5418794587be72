//! A hot reload is atomic: while one thread swaps between two
//! configurations as fast as it can and many tasks run, every task is
//! governed by one whole configuration or the other, never a mix.
//!
//! The two configurations are chosen so that a mix shows:
//!
//! | | slow-poll threshold | highest tier |
//! |---|---|---|
//! | A | 1 ms: a 4 ms poll is slow | `Warn` |
//! | B | 500 ms: a 4 ms poll is fine | `Isolate` |
//!
//! A hog with 4 ms polls is promoted under A but stops at `Warn`, and is
//! never promoted under B. Only A's threshold with B's ceiling would put it
//! in `Yield` or above. This catches a task that judges a poll by values
//! read at different times (e.g. the threshold read at the poll's end, the
//! ceiling at its start: every run fails); a mix confined to a window of
//! nanoseconds within one reload would be caught only by luck.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::spin;
use tokio_pulse::{PollReport, PreemptionHooks, Pulse, PulseBuilder, TaskInfo, Tier, Timing};

/// Settings both configurations share. A window as long as its budget, and
/// hogs that sleep as long as they compute, keep B from ever promoting on
/// time used; no watchdog, so a poll descheduled on a busy machine is not
/// escalated by it. Exact timing, so that every hog poll is measured under
/// either configuration (sampled timing would tick at B's 500 ms scale and
/// leave 4 ms polls unmeasured under it).
fn common_settings() -> PulseBuilder {
    Pulse::builder()
        .timing(Timing::Exact)
        .without_watchdog()
        .budget_window(Duration::from_secs(1))
        .cpu_budget(Duration::from_secs(1))
        // Every slow poll is a bad window: a promotion decision.
        .slow_polls_per_window(1)
}

fn config_a() -> PulseBuilder {
    common_settings()
        .slow_poll_threshold(Duration::from_millis(1))
        .max_tier(Tier::Warn)
}

fn config_b() -> PulseBuilder {
    common_settings()
        .slow_poll_threshold(Duration::from_millis(500))
        .max_tier(Tier::Isolate)
}

const HOG_POLL: Duration = Duration::from_millis(4);

/// What the hooks saw of the hogs' polls and every tier change.
#[derive(Default)]
struct Seen {
    /// Hog polls judged slow: A was in force.
    slow: AtomicU64,
    /// Hog polls as long but not judged slow: B was in force.
    long_not_slow: AtomicU64,
    highest_tier: AtomicU8,
}

impl PreemptionHooks for Seen {
    fn after_poll(&self, _task: &TaskInfo<'_>, poll: &PollReport) {
        if poll.slow {
            self.slow.fetch_add(1, Relaxed);
        } else if poll.duration >= HOG_POLL {
            self.long_not_slow.fetch_add(1, Relaxed);
        }
    }

    fn on_tier_change(&self, _task: &TaskInfo<'_>, _from: Tier, to: Tier) {
        self.highest_tier.fetch_max(to as u8, Relaxed);
    }
}

#[test]
fn under_load_every_task_runs_under_one_whole_configuration_or_the_other() {
    let rt = common::two_worker_runtime();
    let pulse = config_a().build().unwrap();
    let seen = Arc::new(Seen::default());
    pulse.set_hooks(seen.clone());
    let stop = Arc::new(AtomicBool::new(false));

    // Swaps A and B back to back until told to stop.
    let flipper = {
        let (pulse, stop) = (pulse.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reloads = 0u64;
            while !stop.load(Relaxed) {
                let next = if reloads % 2 == 0 {
                    config_b()
                } else {
                    config_a()
                };
                pulse.reconfigure(next).unwrap();
                reloads += 1;
            }
            reloads
        })
    };

    let run = Duration::from_millis(1500);
    rt.block_on(async {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            tasks.push(pulse.spawn(async move {
                while started.elapsed() < run {
                    spin(HOG_POLL);
                    tokio::time::sleep(HOG_POLL).await;
                }
            }));
        }
        for _ in 0..200 {
            tasks.push(pulse.spawn(async move {
                while started.elapsed() < run {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    stop.store(true, Relaxed);
    let reloads = flipper.join().unwrap();

    let slow = seen.slow.load(Relaxed);
    let long_not_slow = seen.long_not_slow.load(Relaxed);
    let highest = Tier::ALL[usize::from(seen.highest_tier.load(Relaxed))];
    println!(
        "{reloads} reloads; hog polls: {slow} under A, {long_not_slow} under B; highest tier {highest}"
    );
    // Both configurations really governed polls during the run...
    assert!(reloads > 100, "only {reloads} reloads");
    assert!(slow > 0 && long_not_slow > 0, "{slow} / {long_not_slow}");
    // ...and no task ever combined A's threshold with B's ceiling.
    assert!(highest <= Tier::Warn, "a task reached {highest}");
}
