//! With runtime hooks installed, the publisher adds the `scope="runtime"`
//! series: every task of the runtime, scraped over HTTP.

mod common;

use std::time::Duration;

use common::prometheus::{scrape_until, serve_metrics};
use common::spin;
use tokio_pulse::{MetricsPublisher, Pulse};

const RUNTIME: (&str, &str) = ("scope", "runtime");

#[test]
fn a_plain_tokio_hog_shows_in_the_runtime_scope() {
    let pulse = Pulse::builder()
        .slow_poll_threshold(Duration::from_millis(1))
        .build()
        .unwrap();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    pulse.runtime_hooks().install(&mut builder);
    let rt = builder.build().unwrap();

    rt.block_on(async {
        let addr = serve_metrics().await;
        let _publisher = MetricsPublisher::new(&pulse)
            .period(Duration::from_millis(20))
            .spawn()
            .unwrap();
        let hog = tokio::spawn(async {
            loop {
                spin(Duration::from_millis(2));
                tokio::task::yield_now().await;
            }
        });

        let warned = scrape_until(addr, "the hog at warn", |s| {
            // At least: under load, a server task may be caught too.
            s.get("tokio_pulse_tasks", &[RUNTIME, ("tier", "warn")]) >= Some(1.0)
        })
        .await;
        let get = |name: &str, labels: &[(&str, &str)]| warned.get(name, labels).unwrap();
        assert!(get("tokio_pulse_promotions_total", &[RUNTIME, ("tier", "warn")]) >= 1.0);
        assert!(get("tokio_pulse_slow_polls_total", &[RUNTIME]) >= 2.0);
        // The server's and the hog's tasks, at least.
        assert!(get("tokio_pulse_tasks_spawned_total", &[RUNTIME]) >= 2.0);
        // Runtime-wide tasks stop at warn: no series for the tiers beyond.
        assert!(
            warned
                .all("tokio_pulse_tasks", &[RUNTIME, ("tier", "yield")])
                .is_empty()
        );
        assert!(
            warned
                .get("tokio_pulse_polls_total", &[("scope", "managed")])
                .is_some()
        );

        let polls = get("tokio_pulse_polls_total", &[RUNTIME]);
        scrape_until(addr, "runtime polls moving", |s| {
            s.get("tokio_pulse_polls_total", &[RUNTIME])
                .is_some_and(|p| p > polls)
        })
        .await;
        hog.abort();
    });
}
