//! The slow lane protects the latency of other tasks from hogs that cannot
//! leave the main workers (isolation is turned off here: `max_tier(Yield)`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use common::{probe_lateness, quantile, spin};
use tokio_pulse::{Pulse, Tier};

/// Probe p99 lateness beside 8 polite hogs (2 ms per poll), spawned
/// through `spawn`.
fn p99_beside_hogs(spawn_with_pulse: bool) -> Duration {
    let rt = common::two_worker_runtime();
    let pulse = Pulse::builder()
        .max_tier(Tier::Yield)
        .slow_lane_slots(1)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let p99 = rt.block_on(async {
        let mut hogs = Vec::new();
        for _ in 0..8 {
            let stop = stop.clone();
            let hog = async move {
                while !stop.load(Relaxed) {
                    spin(Duration::from_millis(2));
                    tokio::task::yield_now().await;
                }
            };
            hogs.push(if spawn_with_pulse {
                pulse.spawn(hog)
            } else {
                tokio::spawn(hog)
            });
        }
        let mut lateness = tokio::spawn(probe_lateness(
            Duration::from_millis(2500),
            Duration::from_millis(500),
        ))
        .await
        .unwrap();
        stop.store(true, Relaxed);
        for h in hogs {
            h.await.unwrap();
        }
        quantile(&mut lateness, 0.99)
    });
    if spawn_with_pulse {
        let t = pulse.totals();
        assert_eq!(t.promotions[Tier::Isolate.index()], 0, "isolation was off");
        assert!(
            t.promotions[Tier::Yield.index()] >= 8,
            "hogs never reached the slow lane: {t:?}"
        );
    }
    p99
}

#[test]
fn with_the_slow_lane_a_probe_beside_hogs_is_at_least_3x_less_late_at_p99() {
    let without = p99_beside_hogs(false);
    let with = p99_beside_hogs(true);
    println!("probe p99 lateness: plain tokio {without:?}, slow lane {with:?}");
    assert!(
        without >= with * 3,
        "slow lane p99 {with:?} is not 3x better than plain tokio's {without:?}"
    );
}
