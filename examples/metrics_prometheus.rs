//! Serves tokio-pulse's metrics for Prometheus while a hog and some
//! well-behaved tasks run, and prints a few series from its own endpoint.
//!
//! Run with `cargo run --example metrics_prometheus --features metrics`,
//! then `curl -s http://127.0.0.1:9898/metrics | grep tokio_pulse`.
//! An address as the first argument listens there instead.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_pulse::{MetricsPublisher, Pulse};

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("an address such as 127.0.0.1:9898"))
        .unwrap_or_else(|| ([127, 0, 0, 1], 9898).into());
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .expect("Prometheus exporter installed");
    println!("serving http://{addr}/metrics for 10 s");

    let pulse = Pulse::builder()
        .slow_poll_threshold(Duration::from_millis(1))
        .build()
        .expect("valid configuration");
    let _publisher = MetricsPublisher::new(&pulse)
        .spawn()
        .expect("metrics publisher thread");

    // A hog, 3 ms per poll, and a handful of tasks that behave.
    pulse.spawn_named("hog", async {
        loop {
            spin(Duration::from_millis(3));
            tokio::task::yield_now().await;
        }
    });
    for i in 0..8 {
        pulse.spawn_named(format!("ticker-{i}"), async {
            loop {
                spin(Duration::from_micros(20));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let text = scrape(addr).await;
        println!("---");
        for line in text.lines().filter(|l| {
            l.starts_with("tokio_pulse_polls_total")
                || l.starts_with("tokio_pulse_slow_polls_total")
                || l.starts_with("tokio_pulse_promotions_total")
                || (l.starts_with("tokio_pulse_tasks{") && !l.ends_with(" 0"))
        }) {
            println!("{line}");
        }
    }
}

/// GETs `/metrics` the way Prometheus would: plain HTTP/1.1 over TCP.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("receive");
    response
}
