//! The `metrics` integration, end to end: a publisher feeding the Prometheus
//! exporter's recorder, scraped over HTTP like Prometheus would.

mod common;

use std::time::{Duration, Instant};

use common::prometheus::{Scrape, scrape, scrape_until, serve_metrics};
use common::{TierEvents, spin, wait_for};
use tokio_pulse::{MetricsPublisher, Pulse, Tier};

const MANAGED: (&str, &str) = ("scope", "managed");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_series_show_a_hog_and_keep_moving() {
    let addr = serve_metrics().await;
    let pulse = Pulse::builder()
        .slow_poll_threshold(Duration::from_millis(1))
        .build()
        .unwrap();
    let (hooks, mut changes) = TierEvents::new();
    pulse.set_hooks(hooks);
    let publisher = MetricsPublisher::new(&pulse)
        .period(Duration::from_millis(20))
        .spawn()
        .unwrap();

    let hog = pulse.spawn_named("hog", async {
        loop {
            spin(Duration::from_millis(2));
            tokio::task::yield_now().await;
        }
    });
    wait_for(&mut changes, Duration::from_secs(5), "hog", |c| {
        c.to == Tier::Yield
    })
    .await;

    let promoted = |s: &Scrape| {
        s.get(
            "tokio_pulse_promotions_total",
            &[MANAGED, ("tier", "yield")],
        ) == Some(1.0)
    };
    let first = scrape_until(addr, "the promotion to yield", promoted).await;
    let value = |s: &Scrape, name: &str, labels: &[(&str, &str)]| {
        s.get(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", s.text))
    };
    assert_eq!(
        value(
            &first,
            "tokio_pulse_promotions_total",
            &[MANAGED, ("tier", "warn")]
        ),
        1.0
    );
    assert!(value(&first, "tokio_pulse_slow_polls_total", &[MANAGED]) >= 4.0);
    let suspects = value(&first, "tokio_pulse_tasks", &[MANAGED, ("tier", "yield")])
        + value(&first, "tokio_pulse_tasks", &[MANAGED, ("tier", "isolate")]);
    assert_eq!(suspects, 1.0, "the hog is the one task at yield or above");
    assert_eq!(
        value(&first, "tokio_pulse_tasks", &[MANAGED, ("tier", "monitor")]),
        0.0
    );
    assert!(
        first.text.contains("# HELP tokio_pulse_polls_total"),
        "series are described"
    );

    // The interventions' series: the hog moves on to the isolation pool.
    assert_eq!(
        value(&first, "tokio_pulse_watchdog_reports_total", &[MANAGED]),
        0.0
    );
    assert!(
        first
            .get("tokio_pulse_slow_lane_queue_depth", &[MANAGED])
            .is_some()
    );
    wait_for(&mut changes, Duration::from_secs(5), "hog", |c| {
        c.to == Tier::Isolate
    })
    .await;
    scrape_until(addr, "the hog on the isolation pool", |s| {
        s.get("tokio_pulse_isolated_tasks", &[MANAGED]) == Some(1.0)
    })
    .await;

    // The series move while the hog keeps running.
    let polls = value(&first, "tokio_pulse_polls_total", &[MANAGED]);
    scrape_until(addr, "polls moving", |s| {
        s.get("tokio_pulse_polls_total", &[MANAGED])
            .is_some_and(|p| p > polls)
    })
    .await;

    hog.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pulse.task_count() > 0 {
        assert!(Instant::now() < deadline, "aborted hog never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publisher.stop(); // publishes a last time
    let last = scrape(addr).await;

    assert_eq!(
        value(&last, "tokio_pulse_tasks_spawned_total", &[MANAGED]),
        1.0
    );
    assert_eq!(
        value(&last, "tokio_pulse_tasks_ended_total", &[MANAGED]),
        1.0
    );
    for tier in Tier::ALL {
        let live = value(
            &last,
            "tokio_pulse_tasks",
            &[MANAGED, ("tier", tier.as_str())],
        );
        assert_eq!(live, 0.0, "tier {tier}");
    }

    // The histogram: cumulative buckets ending in +Inf = count = the polls
    // measured (those that outlasted a tick: at most all of them).
    let polls = value(&last, "tokio_pulse_polls_total", &[MANAGED]);
    let mut buckets: Vec<(f64, f64)> = last
        .all("tokio_pulse_poll_duration_seconds_bucket", &[MANAGED])
        .iter()
        .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(buckets.len(), tokio_pulse::PollHistogram::BUCKETS);
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let count = value(&last, "tokio_pulse_poll_duration_seconds_count", &[MANAGED]);
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count));
    // At most every poll was measured (give or take the one the hog was in
    // on the pool when it was aborted: counted as measured when it ended,
    // after the task's own count was added to the totals).
    assert!(count <= polls + 1.0, "{count} measured of {polls}");
    // The hog's 2 ms polls fall between the 1.05 ms and 4.19 ms bounds.
    let at = |le: f64| buckets.iter().find(|b| b.0 == le).unwrap().1;
    assert!(at(0.004194304) - at(0.001048576) >= 4.0, "{buckets:?}");
    // And the time they took is in the sum.
    let sum = value(&last, "tokio_pulse_poll_duration_seconds_sum", &[MANAGED]);
    assert!(sum >= 0.008, "sum {sum}");
}
