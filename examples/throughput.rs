//! Whole-runtime cost of management: the same workloads spawned with plain
//! `tokio::spawn`, with tokio-metrics' `TaskMonitor` (the peer: per-task
//! metrics by instrumenting futures), and with `pulse.spawn`, in one
//! process, as a table of medians and ratios against plain Tokio.
//!
//! `cargo run --release --example throughput [-- --rounds N] [--workers N]
//! [--only NAME] [--runtime multi|current] [--variant plain|metrics|pulse]`
//! (`--variant` runs that variant alone and prints its throughput, for a
//! profiler).
//!
//! The poll-heavy workloads do almost nothing per poll, so they show the
//! per-poll cost of management at its most visible; the `work` rows do 1,
//! 10 or 100 µs of computation per poll, as real tasks do, and show how
//! far that cost is diluted. Rounds rotate which variant goes first, and
//! each ratio is the median of per-round ratios, so slow drifts in machine
//! load cancel out. For the `pulse` variant it also reports the CPU the
//! `Pulse`'s own thread (ticker and watchdog) used, as a share of one core.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Runtime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_metrics::TaskMonitor;
use tokio_pulse::Pulse;

/// How a workload spawns its tasks.
#[derive(Clone)]
enum Spawner {
    Plain,
    Metrics(TaskMonitor),
    Pulse(Pulse),
}

impl Spawner {
    fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Spawner::Plain => tokio::spawn(future),
            Spawner::Metrics(monitor) => tokio::spawn(monitor.instrument(future)),
            Spawner::Pulse(pulse) => pulse.spawn(future),
        }
    }
}

/// A workload: its name, the unit it counts, and a run returning how many
/// units it did.
struct Workload {
    name: &'static str,
    unit: &'static str,
    run: fn(&Runtime, &Spawner) -> u64,
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "yield storm: 1000 tasks x 1000 yield_now",
        unit: "polls",
        run: yield_storm,
    },
    Workload {
        name: "ping-pong: 100 pairs x 2000 round trips",
        unit: "msgs",
        run: ping_pong,
    },
    Workload {
        name: "spawn storm: 100 000 empty tasks spawned and joined",
        unit: "tasks",
        run: spawn_storm,
    },
    Workload {
        name: "work: 1 us per poll",
        unit: "polls",
        run: |rt, s| work_polls(rt, s, Duration::from_micros(1), 200, 1_000),
    },
    Workload {
        name: "work: 10 us per poll",
        unit: "polls",
        run: |rt, s| work_polls(rt, s, Duration::from_micros(10), 100, 200),
    },
    Workload {
        name: "work: 100 us per poll",
        unit: "polls",
        run: |rt, s| work_polls(rt, s, Duration::from_micros(100), 20, 100),
    },
];

/// 1 000 tasks, each yielding 1 000 times: a million polls that do nothing.
fn yield_storm(rt: &Runtime, spawner: &Spawner) -> u64 {
    const TASKS: u64 = 1_000;
    const YIELDS: u64 = 1_000;
    rt.block_on(async {
        let handles: Vec<_> = (0..TASKS)
            .map(|_| {
                spawner.spawn(async {
                    for _ in 0..YIELDS {
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task panicked");
        }
    });
    TASKS * (YIELDS + 1)
}

/// Pairs of tasks passing a message back and forth over bounded channels:
/// every poll is a wake-up by the other task.
fn ping_pong(rt: &Runtime, spawner: &Spawner) -> u64 {
    const PAIRS: u64 = 100;
    const ROUND_TRIPS: u64 = 2_000;
    rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..PAIRS {
            let (to_pong, mut pong_rx) = mpsc::channel::<u64>(1);
            let (to_ping, mut ping_rx) = mpsc::channel::<u64>(1);
            handles.push(spawner.spawn(async move {
                while let Some(n) = pong_rx.recv().await {
                    if to_ping.send(n + 1).await.is_err() {
                        break;
                    }
                }
            }));
            handles.push(spawner.spawn(async move {
                for i in 0..ROUND_TRIPS {
                    to_pong.send(i).await.expect("pong alive");
                    ping_rx.recv().await.expect("pong replies");
                }
            }));
        }
        for h in handles {
            h.await.expect("task panicked");
        }
    });
    PAIRS * ROUND_TRIPS * 2
}

/// Many tasks that complete in their first poll, spawned and joined in
/// batches: the cost of a managed task's creation and end, not of its polls.
fn spawn_storm(rt: &Runtime, spawner: &Spawner) -> u64 {
    const TASKS: u64 = 100_000;
    let spawner = spawner.clone();
    rt.block_on(async move {
        let mut batch = Vec::with_capacity(1_000);
        for i in 0..TASKS {
            batch.push(spawner.spawn(async move { i }));
            if batch.len() == 1_000 {
                for h in batch.drain(..) {
                    h.await.expect("task panicked");
                }
            }
        }
    });
    TASKS
}

/// `tasks` tasks, each polled `polls` times, computing `per_poll` in each.
fn work_polls(rt: &Runtime, spawner: &Spawner, per_poll: Duration, tasks: u64, polls: u64) -> u64 {
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                spawner.spawn(async move {
                    for _ in 0..polls {
                        common::work(per_poll);
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task panicked");
        }
    });
    tasks * polls
}

/// Throughput of one run of `workload` under `spawner`, in units per second.
fn rate(rt: &Runtime, workload: &Workload, spawner: &Spawner) -> f64 {
    let t = Instant::now();
    let units = (workload.run)(rt, spawner);
    units as f64 / t.elapsed().as_secs_f64()
}

struct Row {
    plain: Vec<f64>,
    metrics: Vec<f64>,
    pulse: Vec<f64>,
    /// CPU of the pulse's own thread per second of the pulse runs.
    pulse_thread_share: Vec<f64>,
}

fn measure(rt: &Runtime, workload: &Workload, pulse: &Pulse, rounds: usize) -> Row {
    let variants = [
        Spawner::Plain,
        Spawner::Metrics(TaskMonitor::new()),
        Spawner::Pulse(pulse.clone()),
    ];
    // One unmeasured run of each: thread pools, allocator, caches.
    for s in &variants {
        rate(rt, workload, s);
    }
    let mut row = Row {
        plain: Vec::new(),
        metrics: Vec::new(),
        pulse: Vec::new(),
        pulse_thread_share: Vec::new(),
    };
    for round in 0..rounds {
        for k in 0..3 {
            let i = (round + k) % 3;
            match &variants[i] {
                Spawner::Pulse(_) => {
                    let cpu0 = common::threads_cpu("pulse-").unwrap_or_default();
                    let t = Instant::now();
                    row.pulse.push(rate(rt, workload, &variants[i]));
                    let cpu = common::threads_cpu("pulse-").unwrap_or_default() - cpu0;
                    row.pulse_thread_share
                        .push(cpu.as_secs_f64() / t.elapsed().as_secs_f64());
                }
                Spawner::Metrics(_) => row.metrics.push(rate(rt, workload, &variants[i])),
                Spawner::Plain => row.plain.push(rate(rt, workload, &variants[i])),
            }
        }
    }
    row
}

fn value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = value(&args, "--rounds").map_or(7, |n| n.parse().expect("--rounds N"));
    let workers: usize = value(&args, "--workers").map_or(2, |n| n.parse().expect("--workers N"));
    let only = value(&args, "--only");
    let runtime = value(&args, "--runtime");
    common::calibrate();
    let pulse = Pulse::new();
    let mut runtimes: Vec<(String, Runtime)> = Vec::new();
    if runtime.as_deref().is_none_or(|r| r.starts_with("multi")) {
        let rt = Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("runtime");
        runtimes.push((format!("multi_thread({workers})"), rt));
    }
    if runtime.as_deref().is_none_or(|r| r.starts_with("current")) {
        let rt = Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtimes.push(("current_thread".to_owned(), rt));
    }
    if let Some(variant) = value(&args, "--variant") {
        let spawner = match variant.as_str() {
            "plain" => Spawner::Plain,
            "metrics" => Spawner::Metrics(TaskMonitor::new()),
            "pulse" => Spawner::Pulse(pulse.clone()),
            other => panic!("--variant is plain, metrics or pulse, not {other}"),
        };
        for (rt_name, rt) in &runtimes {
            for w in WORKLOADS
                .iter()
                .filter(|w| only.as_deref().is_none_or(|o| w.name.contains(o)))
            {
                let rates = (0..rounds).map(|_| rate(rt, w, &spawner)).collect();
                println!(
                    "{rt_name} {}: {:.2} M{}/s",
                    w.name,
                    common::median(rates) / 1e6,
                    w.unit
                );
            }
        }
        return;
    }
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "{rounds} rounds per row, variants rotating; medians of per-round ratios; {cores} cores.\n"
    );
    println!(
        "| runtime | workload | plain tokio::spawn | TaskMonitor vs plain | pulse.spawn vs plain | pulse thread CPU |"
    );
    println!("|---|---|---|---|---|---|");
    for (rt_name, rt) in &runtimes {
        for w in WORKLOADS
            .iter()
            .filter(|w| only.as_deref().is_none_or(|o| w.name.contains(o)))
        {
            let r = measure(rt, w, &pulse, rounds);
            let ratio =
                |v: &[f64]| common::median(v.iter().zip(&r.plain).map(|(x, p)| p / x).collect());
            println!(
                "| {rt_name} | {} | {:.2} M{}/s | {:.2}x | {:.2}x | {:.2} % |",
                w.name,
                common::median(r.plain.clone()) / 1e6,
                w.unit,
                ratio(&r.metrics),
                ratio(&r.pulse),
                100.0 * common::median(r.pulse_thread_share.clone()),
            );
        }
    }
    assert_eq!(pulse.task_count(), 0, "managed tasks left behind");
}
