//! Pulse-wide totals count live and ended tasks alike.

mod common;

use std::time::Duration;

use common::{TierEvents, spin, wait_for};
use tokio_pulse::{Pulse, Tier, Timing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_include_ended_tasks_and_tier_changes() {
    for timing in [Timing::Sampled, Timing::Exact] {
        totals_with(timing).await;
    }
}

async fn totals_with(timing: Timing) {
    let pulse = Pulse::builder().timing(timing).build().unwrap();
    let (hooks, mut changes) = TierEvents::new();
    pulse.set_hooks(hooks);
    let mut handles = Vec::new();
    for _ in 0..10 {
        handles.push(pulse.spawn(async {
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let hog = pulse.spawn_named("hog", async {
        loop {
            spin(Duration::from_millis(2));
            tokio::task::yield_now().await;
        }
    });
    wait_for(&mut changes, Duration::from_secs(2), "hog", |c| {
        c.to == Tier::Yield
    })
    .await;

    let t = pulse.totals();
    assert_eq!(t.tasks_spawned, 11);
    assert_eq!(t.tasks_ended, 10);
    assert!(t.polls >= 60 + 4, "{t:?}");
    // Every poll is measured with exact timing; with sampled timing, the
    // long ones at least.
    match timing {
        Timing::Exact => assert_eq!(t.poll_time_histogram.total(), t.polls),
        _ => assert!((4..=t.polls).contains(&t.poll_time_histogram.total())),
    }
    assert!(t.slow_polls >= 4, "{t:?}");
    assert_eq!(t.promotions[Tier::Warn.index()], 1);
    assert_eq!(t.promotions[Tier::Yield.index()], 1);
    // 2 ms polls land in the [1 ms, 4 ms) bucket, or a later one if the
    // OS descheduled the thread mid-poll. Sampled timing judges a poll by
    // how long it certainly ran, up to a tick (here 250 µs to 4 ms) short
    // of the truth: at least in the [262 µs, 1 ms) bucket below.
    let from = match timing {
        Timing::Exact => 5,
        _ => 4,
    };
    let long: u64 = t.poll_time_histogram.counts[from..].iter().sum();
    assert!(long >= 4, "{t:?}");
    hog.abort();
}
