//! The scenario tokio-pulse is judged by: a latency probe beside CPU hogs.
//!
//! A 2-worker runtime. The probe (plain `tokio::spawn`) sleeps to 1 ms
//! deadlines and records how late it wakes. Beside it: 8 "polite" hogs
//! (spin 2 ms of CPU, then `yield_now`, forever) and 1 "blocker" (spin
//! 25 ms of CPU in one poll, then sleep 25 ms). Run five ways:
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
//! A second table is about priority inversion: beside the same hogs, a
//! "holder" hog keeps a `tokio::sync::Mutex` locked across 5 polls of 2 ms
//! of CPU, and a task on the workers (plain `tokio::spawn`) locks it every
//! millisecond, recording how long each lock took. Run three ways: plain
//! Tokio, tokio-pulse (the holder is isolated, on `SCHED_IDLE` threads
//! that the progress floor raises when they starve), and tokio-pulse
//! without the floor.
//!
//! `cargo run --release --example starvation [seconds per run, default 5] [--busy]`
//!
//! `--busy` runs every scenario on a busy host: one busy process per core
//! (`sh -c 'while :; do :; done'`, under `timeout 60` as a safety net)
//! started before each run and ended, by its PID, after it.
//!
//! For diagnosis: `ONLY=pulse` runs the tokio-pulse case alone,
//! `TRACE_LATE=1` prints every probe wake-up more than 2 ms late with its
//! time since start, `FLOOR=25,50` sets the progress floor (percent, and
//! milliseconds `after`; `FLOOR=off` turns it off), and `RUST_LOG=info` shows tokio-pulse's events
//! (tier changes, watchdog reports).

mod common;

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
    NoFloor,
}

struct Outcome {
    p50: Duration,
    p99: Duration,
    max: Duration,
    samples: usize,
    /// Milliseconds of CPU the hogs spun.
    hog_work_ms: u64,
}

fn spin(d: Duration) {
    common::spin_cpu(d);
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The `Pulse` for `mode`: the default, with `FLOOR` applied if set.
fn pulse_for(mode: Mode) -> Pulse {
    let mut builder = Pulse::builder();
    if std::env::var("FLOOR").as_deref() == Ok("off") {
        builder = builder.without_isolation_floor();
    } else if let Some((percent, after_ms)) = std::env::var("FLOOR").ok().and_then(|f| {
        let (p, a) = f.split_once(',')?;
        Some((p.trim().parse().ok()?, a.trim().parse().ok()?))
    }) {
        builder = builder.isolation_floor(percent, Duration::from_millis(after_ms));
    }
    match mode {
        Mode::SlowLane => builder.max_tier(Tier::Yield),
        Mode::NoFloor => builder.without_isolation_floor(),
        _ => builder,
    }
    .build()
    .expect("valid configuration (FLOOR: a percent from 1 to 50, milliseconds from 10 to 10000)")
}

/// The percentile `p` of sorted `samples`.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn run(mode: Mode, secs: f64, busy: bool) -> Outcome {
    let _busy = busy.then(common::BusyProcesses::one_per_core);
    let rt = runtime();
    let pulse = pulse_for(mode);
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
    Outcome {
        p50: pct(&sorted, 0.50),
        p99: pct(&sorted, 0.99),
        max: *sorted.last().unwrap(),
        samples: sorted.len(),
        hog_work_ms: work.load(Relaxed),
    }
}

/// The priority-inversion scenario under `mode` (`Plain`, `Pulse` or
/// `NoFloor`): the hogs, a holder that keeps a mutex locked across 5 polls
/// of 2 ms of CPU, and a task on the workers that locks it every
/// millisecond. Returns how long each lock took.
fn run_lock(mode: Mode, secs: f64, busy: bool) -> Outcome {
    let _busy = busy.then(common::BusyProcesses::one_per_core);
    let rt = runtime();
    let pulse = pulse_for(mode);
    let work = Arc::new(AtomicU64::new(0));
    let waits = rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let mut hogs = spawn_hogs(mode, &pulse, &stop, &work);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let holder = {
            let (lock, stop, work) = (lock.clone(), stop.clone(), work.clone());
            async move {
                while !stop.load(Relaxed) {
                    let guard = lock.lock().await;
                    for _ in 0..5 {
                        spin(Duration::from_millis(2));
                        work.fetch_add(2, Relaxed);
                        tokio::task::yield_now().await;
                    }
                    drop(guard);
                    tokio::task::yield_now().await;
                }
            }
        };
        hogs.push(match mode {
            Mode::Plain => tokio::spawn(holder),
            _ => pulse.spawn_named("holder", holder),
        });
        let waits = tokio::spawn(async move {
            let mut waits = Vec::new();
            let end = Instant::now() + Duration::from_secs_f64(secs);
            while Instant::now() < end {
                let asked = Instant::now();
                let guard = lock.lock().await;
                waits.push(asked.elapsed());
                drop(guard);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            waits
        })
        .await
        .expect("lock probe");
        stop.store(true, Relaxed);
        for h in hogs {
            let _ = h.await;
        }
        waits
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let mut sorted = waits;
    sorted.sort();
    Outcome {
        p50: pct(&sorted, 0.50),
        p99: pct(&sorted, 0.99),
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let busy = args.iter().any(|a| a == "--busy");
    let secs: f64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(5.0);
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let host = if busy {
        format!(", beside {cores} busy processes (one per core)")
    } else {
        String::new()
    };
    println!("probe lateness (ms) on a 2-worker runtime, {secs} s per run, {cores} cores{host}\n");
    if std::env::var("ONLY").as_deref() == Ok("pulse") {
        let o = run(Mode::Pulse, secs, busy);
        println!(
            "tokio-pulse p50 {} p99 {} max {} work {}",
            ms(o.p50),
            ms(o.p99),
            ms(o.max),
            o.hog_work_ms
        );
        return;
    }
    let idle = run(Mode::Idle, secs, busy);
    let plain = run(Mode::Plain, secs, busy);
    let pulse = run(Mode::Pulse, secs, busy);
    let respawned = run(Mode::Respawned, secs, busy);
    let lane = run(Mode::SlowLane, secs, busy);
    println!("| runtime | probe p50 | probe p99 | probe max | samples | hog work (ms) |");
    println!("|---|---|---|---|---|---|");
    for (name, o) in [
        ("idle", &idle),
        ("plain tokio", &plain),
        ("tokio-pulse", &pulse),
        ("tokio-pulse, hogs respawned", &respawned),
        ("tokio-pulse, slow lane only", &lane),
    ] {
        print_row(name, o);
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let share =
        |o: &Outcome, of: &Outcome| 100.0 * o.hog_work_ms as f64 / of.hog_work_ms.max(1) as f64;
    println!();
    println!(
        "p99 vs idle:  plain tokio {:.2}x, tokio-pulse {:.2}x (goal <= 1.25x)",
        ratio(plain.p99, idle.p99),
        ratio(pulse.p99, idle.p99)
    );
    println!(
        "p99: tokio-pulse {:.1}x better than plain tokio (goal on a busy host: >= 3x)",
        ratio(plain.p99, pulse.p99)
    );
    println!(
        "hog work vs plain tokio: tokio-pulse {:.0} % (goal >= 80 %; on a busy host >= 25 %, ideally 50 %)",
        share(&pulse, &plain)
    );
    println!(
        "hogs respawned from known names: probe max {} ms (first meeting: {} ms)",
        ms(respawned.max),
        ms(pulse.max)
    );
    println!(
        "slow lane only: p99 {:.1}x better than plain tokio's, {:.0} % of its hog work",
        ratio(plain.p99, lane.p99),
        share(&lane, &plain)
    );

    let plain_lock = run_lock(Mode::Plain, secs, busy);
    let pulse_lock = run_lock(Mode::Pulse, secs, busy);
    let no_floor = run_lock(Mode::NoFloor, secs, busy);
    println!();
    println!(
        "time to lock a mutex a hog holds across 5 polls of 2 ms (ms), the same hogs beside\n"
    );
    println!("| runtime | lock p50 | lock p99 | lock max | locks | hog work (ms) |");
    println!("|---|---|---|---|---|---|");
    for (name, o) in [
        ("plain tokio", &plain_lock),
        ("tokio-pulse", &pulse_lock),
        ("tokio-pulse, no progress floor", &no_floor),
    ] {
        print_row(name, o);
    }
    println!();
    println!(
        "lock p99: tokio-pulse {:.2}x plain tokio's (goal on a busy host: <= 1x); without the floor {:.2}x",
        ratio(pulse_lock.p99, plain_lock.p99),
        ratio(no_floor.p99, plain_lock.p99)
    );
}

fn print_row(name: &str, o: &Outcome) {
    println!(
        "| {name} | {} | {} | {} | {} | {} |",
        ms(o.p50),
        ms(o.p99),
        ms(o.max),
        o.samples,
        o.hog_work_ms
    );
}
