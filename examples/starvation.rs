//! The scenario tokio-pulse is judged by: a latency probe beside CPU hogs.
//!
//! A 2-worker runtime. The probe (plain `tokio::spawn`) sleeps to 1 ms
//! deadlines and records how late it wakes. Beside it: 8 "polite" hogs
//! (spin 2 ms, then `yield_now`, forever) and 1 "blocker" (spin 25 ms in
//! one poll, then sleep 25 ms). Run five ways:
//!
//! - idle: the probe alone;
//! - plain Tokio: hogs spawned with `tokio::spawn`;
//! - tokio-pulse: hogs spawned with `pulse.spawn_named`, default `Pulse`;
//! - tokio-pulse, respawned: the same, but the `Pulse` has met these hogs
//!   before (they ran for a second and stopped): it remembers their names,
//!   so the new hogs start isolated instead of being judged again;
//! - tokio-pulse, slow lane only: isolation off (`max_tier(Tier::Yield)`),
//!   as for futures that cannot move.
//!
//! `cargo run --release --example starvation [seconds per run, default 5]`
//!
//! For diagnosis: `ONLY=pulse` runs the tokio-pulse case alone,
//! `TRACE_LATE=1` prints every probe wake-up more than 2 ms late with its
//! time since start, and `RUST_LOG=info` shows tokio-pulse's events (tier
//! changes, watchdog reports).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_pulse::{Pulse, Tier};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Idle,
    Plain,
    Pulse,
    Respawned,
    SlowLane,
}

struct Outcome {
    p50: Duration,
    p99: Duration,
    max: Duration,
    samples: usize,
    /// Milliseconds of spinning the hogs completed.
    hog_work_ms: u64,
}

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

type Hog = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Spawns the 8 polite hogs and the blocker, until `stop`, adding the
/// milliseconds they spin to `work`.
fn spawn_hogs(
    mode: Mode,
    pulse: &Pulse,
    stop: &Arc<AtomicBool>,
    work: &Arc<AtomicU64>,
) -> Vec<JoinHandle<()>> {
    let spawn = |name: &'static str, hog: Hog| match mode {
        Mode::Plain => tokio::spawn(hog),
        _ => pulse.spawn_named(name, hog),
    };
    let mut hogs = Vec::new();
    for _ in 0..8 {
        let (stop, work) = (stop.clone(), work.clone());
        hogs.push(spawn(
            "polite",
            Box::pin(async move {
                while !stop.load(Relaxed) {
                    spin(Duration::from_millis(2));
                    work.fetch_add(2, Relaxed);
                    tokio::task::yield_now().await;
                }
            }),
        ));
    }
    let (stop, work) = (stop.clone(), work.clone());
    hogs.push(spawn(
        "blocker",
        Box::pin(async move {
            while !stop.load(Relaxed) {
                spin(Duration::from_millis(25));
                work.fetch_add(25, Relaxed);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }),
    ));
    hogs
}

/// Sleeps to 1 ms deadlines for `secs`; returns how late each wake-up was.
async fn probe(secs: f64) -> Vec<Duration> {
    let mut lateness = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1);
        tokio::time::sleep_until(deadline).await;
        let late = tokio::time::Instant::now() - deadline;
        if std::env::var_os("TRACE_LATE").is_some() && late > Duration::from_millis(2) {
            eprintln!("{:?} late {:?}", start.elapsed(), late);
        }
        lateness.push(late);
    }
    lateness
}

fn run(mode: Mode, secs: f64) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pulse = match mode {
        Mode::SlowLane => Pulse::builder()
            .max_tier(Tier::Yield)
            .build()
            .expect("valid configuration"),
        _ => Pulse::new(),
    };
    let work = Arc::new(AtomicU64::new(0));
    let lateness = rt.block_on(async {
        if mode == Mode::Respawned {
            // The hogs' first life: judged, then stopped.
            let stop = Arc::new(AtomicBool::new(false));
            let earlier = spawn_hogs(mode, &pulse, &stop, &Arc::new(AtomicU64::new(0)));
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.store(true, Relaxed);
            for h in earlier {
                let _ = h.await;
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let hogs = match mode {
            Mode::Idle => Vec::new(),
            _ => spawn_hogs(mode, &pulse, &stop, &work),
        };
        let lateness = tokio::spawn(probe(secs)).await.expect("probe");
        stop.store(true, Relaxed);
        for h in hogs {
            let _ = h.await;
        }
        lateness
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let mut sorted = lateness;
    sorted.sort();
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    Outcome {
        p50: pct(0.50),
        p99: pct(0.99),
        max: *sorted.last().unwrap(),
        samples: sorted.len(),
        hog_work_ms: work.load(Relaxed),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!("probe lateness (ms) on a 2-worker runtime, {secs} s per run, {cores} cores\n");
    if std::env::var("ONLY").as_deref() == Ok("pulse") {
        let o = run(Mode::Pulse, secs);
        println!(
            "tokio-pulse p50 {} p99 {} max {} work {}",
            ms(o.p50),
            ms(o.p99),
            ms(o.max),
            o.hog_work_ms
        );
        return;
    }
    let idle = run(Mode::Idle, secs);
    let plain = run(Mode::Plain, secs);
    let pulse = run(Mode::Pulse, secs);
    let respawned = run(Mode::Respawned, secs);
    let lane = run(Mode::SlowLane, secs);
    println!("| runtime | probe p50 | probe p99 | probe max | samples | hog work (ms) |");
    println!("|---|---|---|---|---|---|");
    for (name, o) in [
        ("idle", &idle),
        ("plain tokio", &plain),
        ("tokio-pulse", &pulse),
        ("tokio-pulse, hogs respawned", &respawned),
        ("tokio-pulse, slow lane only", &lane),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            ms(o.p50),
            ms(o.p99),
            ms(o.max),
            o.samples,
            o.hog_work_ms
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let share = |o: &Outcome| 100.0 * o.hog_work_ms as f64 / plain.hog_work_ms.max(1) as f64;
    println!();
    println!(
        "p99 vs idle:  plain tokio {:.2}x, tokio-pulse {:.2}x (goal <= 1.25x)",
        ratio(plain.p99, idle.p99),
        ratio(pulse.p99, idle.p99)
    );
    println!(
        "hog work vs plain tokio: tokio-pulse {:.0} % (goal >= 80 %)",
        share(&pulse)
    );
    println!(
        "hogs respawned from known names: probe max {} ms (first meeting: {} ms)",
        ms(respawned.max),
        ms(pulse.max)
    );
    println!(
        "slow lane only: p99 {:.1}x better than plain tokio's, {:.0} % of its hog work",
        ratio(plain.p99, lane.p99),
        share(&lane)
    );
}
