//! Whole-runtime throughput: the same workloads spawned with plain
//! `tokio::spawn` and with `pulse.spawn`, alternating in one process, as a
//! table of medians and their ratio.
//!
//! `cargo run --release --example throughput [-- --rounds N]`
//! (also run by `cargo bench --bench throughput`).
//!
//! Each workload is poll-heavy and does almost nothing per poll, so the
//! table shows the per-poll cost of management at its most visible; real
//! tasks that do work between `.await`s dilute it: the last column, the time
//! management adds per unit of work, tells what it would add to yours.
//! Rounds alternate which variant runs first, and the ratio is the median of
//! per-round ratios, so that slow drifts in machine load (other processes)
//! cancel out.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Runtime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_pulse::Pulse;

/// How a workload spawns its tasks.
#[derive(Clone)]
enum Spawner {
    Plain,
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

const TASKS: u64 = 1_000;
const YIELDS: u64 = 1_000;
const PAIRS: u64 = 100;
const ROUND_TRIPS: u64 = 2_000;
const CHURN_TASKS: u64 = 100_000;

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "yield 1000 tasks x 1000",
        unit: "polls",
        run: yield_storm,
    },
    Workload {
        name: "ping-pong 100 pairs x 2000",
        unit: "msgs",
        run: ping_pong,
    },
    Workload {
        name: "spawn+join 100000 empty tasks",
        unit: "tasks",
        run: spawn_churn,
    },
];

/// 1 000 tasks, each yielding 1 000 times: a million polls that do nothing.
fn yield_storm(rt: &Runtime, spawner: &Spawner) -> u64 {
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
fn spawn_churn(rt: &Runtime, spawner: &Spawner) -> u64 {
    let spawner = spawner.clone();
    rt.block_on(async move {
        let mut batch = Vec::with_capacity(1_000);
        for i in 0..CHURN_TASKS {
            batch.push(spawner.spawn(async move { i }));
            if batch.len() == 1_000 {
                for h in batch.drain(..) {
                    h.await.expect("task panicked");
                }
            }
        }
    });
    CHURN_TASKS
}

fn timed(rt: &Runtime, workload: &Workload, spawner: &Spawner) -> (Duration, u64) {
    let t = Instant::now();
    let units = (workload.run)(rt, spawner);
    (t.elapsed(), units)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Throughput of each variant (units per second) over `rounds` rounds.
struct Result {
    plain: Vec<f64>,
    pulse: Vec<f64>,
}

fn measure(rt: &Runtime, workload: &Workload, pulse: &Pulse, rounds: usize) -> Result {
    let variants = [Spawner::Plain, Spawner::Pulse(pulse.clone())];
    // One unmeasured run of each: thread pools, allocator, caches.
    for s in &variants {
        timed(rt, workload, s);
    }
    let mut result = Result {
        plain: Vec::new(),
        pulse: Vec::new(),
    };
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (took, units) = timed(rt, workload, &variants[i]);
            let rate = units as f64 / took.as_secs_f64();
            match i {
                0 => result.plain.push(rate),
                _ => result.pulse.push(rate),
            }
        }
    }
    result
}

/// Command-line options: `--rounds N`, `--only <workload substring>`,
/// `--runtime <runtime substring>`, and
/// `--variant plain|pulse` (runs just that variant, once per round, for
/// profiling one side under `valgrind --tool=callgrind`).
struct Options {
    rounds: usize,
    only: Option<String>,
    runtime: Option<String>,
    variant: Option<String>,
}

impl Options {
    fn from_args() -> Options {
        let args: Vec<String> = std::env::args().collect();
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1).cloned())
        };
        Options {
            rounds: value("--rounds").map_or(7, |n| n.parse().expect("--rounds takes a number")),
            only: value("--only"),
            runtime: value("--runtime"),
            variant: value("--variant"),
        }
    }
}

/// Runs one variant alone, for a profiler; prints its median throughput.
fn profile_one(rt: &Runtime, rt_name: &str, w: &Workload, spawner: &Spawner, rounds: usize) {
    let rates = (0..rounds)
        .map(|_| {
            let (took, units) = timed(rt, w, spawner);
            units as f64 / took.as_secs_f64()
        })
        .collect();
    println!(
        "| {rt_name} | {} | {:.2} M{}/s |",
        w.name,
        median(rates) / 1e6,
        w.unit
    );
}

pub fn main() {
    let opts = Options::from_args();
    let pulse = Pulse::new();
    let runtimes: [(&str, Runtime); 2] = [
        (
            "multi_thread(2)",
            Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .expect("runtime"),
        ),
        (
            "current_thread",
            Builder::new_current_thread().build().expect("runtime"),
        ),
    ];
    let matches = |filter: &Option<String>, name: &str| {
        filter.as_ref().is_none_or(|f| name.contains(f.as_str()))
    };
    let selected = |w: &&Workload| matches(&opts.only, w.name);
    let runtimes: Vec<_> = runtimes
        .into_iter()
        .filter(|(name, _)| matches(&opts.runtime, name))
        .collect();
    if let Some(variant) = &opts.variant {
        let spawner = match variant.as_str() {
            "plain" => Spawner::Plain,
            "pulse" => Spawner::Pulse(pulse.clone()),
            other => panic!("--variant is plain or pulse, not {other}"),
        };
        for (rt_name, rt) in &runtimes {
            for w in WORKLOADS.iter().filter(selected) {
                profile_one(rt, rt_name, w, &spawner, opts.rounds);
            }
        }
        return;
    }
    println!(
        "{} rounds per row, plain and pulse alternating; medians.\n",
        opts.rounds
    );
    println!(
        "| runtime | workload | plain tokio::spawn | pulse.spawn | time vs plain | added per unit |\n|---|---|---|---|---|---|"
    );
    for (rt_name, rt) in &runtimes {
        for w in WORKLOADS.iter().filter(selected) {
            let r = measure(rt, w, &pulse, opts.rounds);
            let pairs = || r.pulse.iter().zip(&r.plain);
            let slower = (median(pairs().map(|(p, q)| q / p).collect()) - 1.0) * 100.0;
            let added_ns = median(pairs().map(|(p, q)| (1.0 / p - 1.0 / q) * 1e9).collect());
            println!(
                "| {rt_name} | {} | {:.2} M{unit}/s | {:.2} M{unit}/s | {slower:+.1} % | {added_ns:+.0} ns |",
                w.name,
                median(r.plain.clone()) / 1e6,
                median(r.pulse.clone()) / 1e6,
                unit = w.unit,
            );
        }
    }
    assert_eq!(pulse.task_count(), 0, "managed tasks left behind");
}
