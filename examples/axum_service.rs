//! A service under load: an axum server with a fast route and a heavy one,
//! run three ways, while a client measures the fast route's latency.
//!
//! The server runs on its own 2-worker runtime. The client runs on its own
//! OS thread and runtime (so it never shares the server's workers): 4
//! keep-alive connections loop on `/heavy`, and one more times `/fast`
//! every 5 ms. Two kinds of heavy handler:
//!
//! - *single poll*: 20 ms of computation with no `.await` inside, the kind
//!   nothing can preempt once it runs;
//! - *polite*: 20 x 1 ms of computation with `yield_now` between.
//!
//! And three ways to serve it: plain axum; the same handlers under
//! `route_layer(PulseLayer::new(&pulse).name_with(route))` with a default
//! `Pulse`; and by hand, the heavy work moved to `spawn_blocking`.
//!
//! `cargo run --release --example axum_service --features tower [-- SECONDS]`
//! (default 5 s per run).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_pulse::{Pulse, PulseLayer};

/// Computes for about `d` of CPU time: a fixed amount of work, calibrated
/// once on an idle core, rather than a spin until the wall clock says `d`
/// (which would finish early, in CPU terms, on a thread the OS preempts,
/// and flatter whichever way runs more threads than cores).
fn spin(d: Duration) {
    let rounds = WORK_PER_MS.load(Relaxed) * d.as_micros() as u64 / 1_000;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..rounds {
        x = std::hint::black_box(x.rotate_left(5) ^ 0xA5A5_A5A5).wrapping_mul(3);
    }
    std::hint::black_box(x);
}

/// Rounds of `spin`'s loop per millisecond on this machine.
static WORK_PER_MS: AtomicU64 = AtomicU64::new(0);

/// Sets [`WORK_PER_MS`]: the fastest of a few timed runs, the one the OS
/// least interrupted.
fn calibrate() {
    const PROBE: u64 = 1_000_000;
    WORK_PER_MS.store(PROBE, Relaxed);
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        spin(Duration::from_millis(1));
        best = best.min(t.elapsed());
    }
    WORK_PER_MS.store((PROBE as f64 * 1e-3 / best.as_secs_f64()) as u64, Relaxed);
}

#[derive(Clone, Copy, PartialEq)]
enum Handler {
    SinglePoll,
    Polite,
}

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Plain,
    PulseLayer,
    SpawnBlocking,
}

async fn heavy(handler: Handler, way: Way) -> &'static str {
    match (handler, way) {
        (Handler::SinglePoll, Way::SpawnBlocking) => {
            tokio::task::spawn_blocking(|| spin(Duration::from_millis(20)))
                .await
                .unwrap();
        }
        (Handler::SinglePoll, _) => spin(Duration::from_millis(20)),
        (Handler::Polite, Way::SpawnBlocking) => {
            tokio::task::spawn_blocking(|| {
                for _ in 0..20 {
                    spin(Duration::from_millis(1));
                }
            })
            .await
            .unwrap();
        }
        (Handler::Polite, _) => {
            for _ in 0..20 {
                spin(Duration::from_millis(1));
                tokio::task::yield_now().await;
            }
        }
    }
    "heavy"
}

fn route_name(req: &Request) -> Cow<'static, str> {
    match req.extensions().get::<MatchedPath>() {
        Some(path) => Cow::Owned(path.as_str().to_owned()),
        None => Cow::Borrowed("unmatched"),
    }
}

fn app(handler: Handler, way: Way, pulse: &Pulse) -> Router {
    let app = Router::new()
        .route("/heavy", get(move || heavy(handler, way)))
        .route("/fast", get(|| async { "fast" }));
    match way {
        Way::PulseLayer => app.route_layer(PulseLayer::new(pulse).name_with(route_name)),
        _ => app,
    }
}

/// One keep-alive HTTP/1.1 connection: GET, read the head, then the body
/// by its `content-length`.
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Connection {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Connection {
            stream,
            buf: Vec::new(),
        }
    }

    async fn get(&mut self, path: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: server\r\n\r\n");
        self.stream
            .write_all(request.as_bytes())
            .await
            .expect("send");
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        while self.buf.len() < head_end + length {
            self.fill().await;
        }
        self.buf.drain(..head_end + length);
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await.expect("receive");
        assert!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

struct Outcome {
    fast: Vec<Duration>,
    heavy_per_sec: f64,
}

/// The client, on its own thread and runtime.
fn drive(addr: SocketAddr, run: Duration) -> Outcome {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        rt.block_on(async move {
            let stop = Arc::new(AtomicBool::new(false));
            let heavy_done = Arc::new(AtomicU64::new(0));
            let mut loops = Vec::new();
            for _ in 0..4 {
                let (stop, done) = (stop.clone(), heavy_done.clone());
                loops.push(tokio::spawn(async move {
                    let mut c = Connection::open(addr).await;
                    while !stop.load(Relaxed) {
                        c.get("/heavy").await;
                        done.fetch_add(1, Relaxed);
                    }
                }));
            }
            let mut fast = Vec::new();
            let mut c = Connection::open(addr).await;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let started = Instant::now();
            while started.elapsed() < run {
                tick.tick().await;
                let t = Instant::now();
                c.get("/fast").await;
                fast.push(t.elapsed());
            }
            let heavy_per_sec = heavy_done.load(Relaxed) as f64 / started.elapsed().as_secs_f64();
            stop.store(true, Relaxed);
            for l in loops {
                let _ = l.await;
            }
            fast.sort();
            Outcome {
                fast,
                heavy_per_sec,
            }
        })
    })
    .join()
    .expect("client thread")
}

fn run(handler: Handler, way: Way, secs: f64) -> Outcome {
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let pulse = Pulse::new();
    let app = app(handler, way, &pulse);
    let addr = server.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        addr
    });
    let outcome = drive(addr, Duration::from_secs_f64(secs));
    server.shutdown_timeout(Duration::from_secs(1));
    outcome
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn main() {
    calibrate();
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "/fast latency beside /heavy under load: 2-worker server, {secs} s per run, {cores} cores\n"
    );
    println!(
        "| `/heavy` handler | served | /fast p50 (ms) | /fast p99 (ms) | /fast max (ms) | /heavy req/s |"
    );
    println!("|---|---|---|---|---|---|");
    for (handler, kind) in [
        (Handler::SinglePoll, "one 20 ms poll"),
        (Handler::Polite, "20 x 1 ms, yield between"),
    ] {
        let mut p99s = Vec::new();
        let mut rates = Vec::new();
        for (way, served) in [
            (Way::Plain, "plain axum"),
            (Way::PulseLayer, "PulseLayer"),
            (Way::SpawnBlocking, "by hand: spawn_blocking"),
        ] {
            let o = run(handler, way, secs);
            let pct = |p: f64| o.fast[((o.fast.len() - 1) as f64 * p) as usize];
            println!(
                "| {kind} | {served} | {} | {} | {} | {:.0} |",
                ms(pct(0.5)),
                ms(pct(0.99)),
                ms(*o.fast.last().unwrap()),
                o.heavy_per_sec
            );
            p99s.push(pct(0.99));
            rates.push(o.heavy_per_sec);
        }
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        eprintln!(
            "{kind}: PulseLayer p99 {:.1}x better than plain (spawn_blocking {:.1}x), heavy throughput {:.0} % of plain",
            ratio(p99s[0], p99s[1]),
            ratio(p99s[0], p99s[2]),
            100.0 * rates[1] / rates[0]
        );
    }
}
