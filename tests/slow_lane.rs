//! The slow lane: with isolation off (`max_tier(Yield)`), hogs promoted to
//! `Yield` are polled at most `slow_lane_slots` at a time, and a
//! well-behaved task beside them keeps running.
//!
//! How much the lane protects a probe's latency is a timing claim: it is in
//! `cargo run --release --example starvation` (the "slow lane only" row),
//! not here.

mod common;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::spin;
use tokio_pulse::{PollReport, PreemptionHooks, Pulse, TaskInfo, Tier};

/// Counts the polls of `Yield`-tier tasks running at once, and the most
/// seen. Hooks run inside the poll, with the lane slot held.
#[derive(Default)]
struct LaneOccupancy {
    now: AtomicUsize,
    most: AtomicUsize,
    lane_polls: AtomicUsize,
}

thread_local! {
    /// This thread's current poll was counted in `now`.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

impl PreemptionHooks for LaneOccupancy {
    fn before_poll(&self, task: &TaskInfo<'_>) {
        if task.tier() == Tier::Yield {
            let now = self.now.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            self.lane_polls.fetch_add(1, SeqCst);
            COUNTED.with(|c| c.set(true));
        }
    }

    fn after_poll(&self, _task: &TaskInfo<'_>, _poll: &PollReport) {
        if COUNTED.with(|c| c.replace(false)) {
            self.now.fetch_sub(1, SeqCst);
        }
    }
}

#[test]
fn yield_tier_hogs_never_hold_more_slots_than_the_lane_has() {
    let rt = common::two_worker_runtime();
    let pulse = Pulse::builder()
        .max_tier(Tier::Yield)
        .slow_lane_slots(1)
        .build()
        .unwrap();
    let occupancy = Arc::new(LaneOccupancy::default());
    pulse.set_hooks(occupancy.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let quick_polls = rt.block_on(async {
        let mut hogs = Vec::new();
        for _ in 0..8 {
            let stop = stop.clone();
            hogs.push(pulse.spawn(async move {
                while !stop.load(SeqCst) {
                    spin(Duration::from_millis(2));
                    tokio::task::yield_now().await;
                }
            }));
        }
        // Wait until every hog has been promoted, and the lane has served
        // a good number of polls.
        while pulse.snapshot().count(Tier::Yield) < 8 || occupancy.lane_polls.load(SeqCst) < 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A well-behaved task beside them still gets polled.
        let quick = pulse.spawn(async {
            let mut polls = 0;
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                polls += 1;
            }
            polls
        });
        let polls = quick.await.unwrap();
        stop.store(true, SeqCst);
        for h in hogs {
            h.await.unwrap();
        }
        polls
    });
    assert_eq!(quick_polls, 50);
    let t = pulse.totals();
    assert_eq!(t.promotions[Tier::Isolate], 0, "isolation was off");
    assert!(
        t.promotions[Tier::Yield] >= 8,
        "hogs not in the slow lane: {t:?}"
    );
    assert_eq!(
        occupancy.most.load(SeqCst),
        1,
        "more lane polls at once than the lane's one slot"
    );
}
