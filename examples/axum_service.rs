//! An axum service with a fast route and a CPU-heavy one, each request
//! managed by `PulseLayer` and named after its route. Drives both over HTTP
//! for a few seconds, then prints the fast route's latency and what
//! tokio-pulse attributed to each route.
//!
//! Run with `cargo run --release --example axum_service --features tower`.
//! With `serve` as the first argument it only serves, on 127.0.0.1:3000:
//! try `curl localhost:3000/heavy` and watch the warnings.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_pulse::{PollReport, PreemptionHooks, Pulse, PulseLayer, TaskInfo, Tier};

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// 40 ms of computation in 2 ms bursts: a report renderer, say.
async fn heavy() -> &'static str {
    for _ in 0..20 {
        spin(Duration::from_millis(2));
        tokio::task::yield_now().await;
    }
    "rendered\n"
}

async fn fast() -> &'static str {
    "ok\n"
}

/// Per-route polls, slow polls and highest tier reached.
#[derive(Default)]
struct RouteStats(Mutex<BTreeMap<String, (u64, u64, Tier)>>);

impl PreemptionHooks for RouteStats {
    fn after_poll(&self, task: &TaskInfo<'_>, poll: &PollReport) {
        let mut routes = self.0.lock().unwrap();
        let entry = routes
            .entry(task.name().unwrap_or("?").to_owned())
            .or_insert((0, 0, Tier::Monitor));
        entry.0 += 1;
        entry.1 += u64::from(poll.slow);
        entry.2 = entry.2.max(task.tier());
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt().with_target(false).init();
    let serve_only = std::env::args().nth(1).as_deref() == Some("serve");

    // Every heavy request is promoted; two warnings a second are plenty.
    let pulse = Pulse::builder()
        .max_warnings_per_second(2)
        .build()
        .expect("valid configuration");
    let stats = Arc::new(RouteStats::default());
    pulse.set_hooks(stats.clone());
    let app = Router::new()
        .route("/heavy", get(heavy))
        .route("/fast", get(fast))
        .route_layer(PulseLayer::new(&pulse).name_with(|req: &Request| {
            match req.extensions().get::<MatchedPath>() {
                Some(path) => Cow::Owned(path.as_str().to_owned()),
                None => Cow::Borrowed("unmatched"),
            }
        }));
    let port = if serve_only { 3000 } else { 0 };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    println!("listening on http://{addr}");
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    if serve_only {
        server.await.unwrap();
        return;
    }

    // Two clients hammer /heavy while one measures /fast, for 3 s.
    let until = Instant::now() + Duration::from_secs(3);
    for _ in 0..2 {
        tokio::spawn(async move {
            while Instant::now() < until {
                http_get(addr, "/heavy").await;
            }
        });
    }
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        http_get(addr, "/fast").await;
        latencies.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "\n/fast while /heavy runs: {} requests, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().unwrap()
    );
    println!(
        "\n{:<8} {:>7} {:>10} {:>13}",
        "route", "polls", "slow polls", "highest tier"
    );
    for (route, (polls, slow, tier)) in stats.0.lock().unwrap().iter() {
        println!("{route:<8} {polls:>7} {slow:>10} {:>13}", tier.as_str());
    }
}

/// One GET over a fresh connection, as a plain HTTP/1.1 client would.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}
