//! What a `Pulse` costs when there is little to do: resident memory per
//! idle task, and the CPU its ticker thread uses while nothing runs and
//! while tasks poll.
//!
//! `cargo run --release --example overhead`
//!
//! Memory: 100 000 tasks each waiting on a `watch` channel (a connection
//! waiting for a message, say), spawned with `tokio::spawn` and with
//! `pulse.spawn`; each variant runs in a child process of its own, so that
//! memory one variant freed cannot serve the other. The figure is the
//! growth of the resident set divided by the tasks, median of the runs.
//!
//! CPU: the `Pulse`'s own thread, from the scheduler's count, over 5 s
//! with no task at all, and over 2 s of a 2-worker yield storm.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use tokio_pulse::Pulse;

const TASKS: usize = 100_000;
const RUNS: usize = 5;

/// In a child process: spawns the tasks, prints the resident-set growth.
fn child(variant: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pulse = Pulse::new();
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    // Warm the allocator and the runtime first.
    rt.block_on(async {
        let warm: Vec<_> = (0..1_000)
            .map(|_| {
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let _ = rx.changed().await;
                })
            })
            .collect();
        tx.send(1).expect("receivers alive");
        for h in warm {
            h.await.expect("warm-up task");
        }
    });
    let before = common::rss_bytes().expect("RSS");
    let handles = rt.block_on(async {
        let handles: Vec<_> = (0..TASKS)
            .map(|_| {
                let mut rx = rx.clone();
                let wait = async move {
                    let _ = rx.changed().await;
                };
                match variant {
                    "plain" => tokio::spawn(wait),
                    _ => pulse.spawn(wait),
                }
            })
            .collect();
        // Every task polled once, now waiting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        handles
    });
    let after = common::rss_bytes().expect("RSS");
    println!("{}", (after - before) as f64 / TASKS as f64);
    tx.send(2).expect("receivers alive");
    rt.block_on(async {
        for h in handles {
            h.await.expect("task");
        }
    });
}

fn memory_per_task(variant: &str) -> f64 {
    let exe = std::env::current_exe().expect("own path");
    let runs = (0..RUNS)
        .map(|_| {
            let out = Command::new(&exe)
                .args(["--child", variant])
                .output()
                .expect("child process");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<f64>()
                .expect("child output")
        })
        .collect();
    common::median(runs)
}

fn ticker_cpu_share(during: impl FnOnce()) -> f64 {
    let cpu0 = common::threads_cpu("pulse-").unwrap_or_default();
    let t = Instant::now();
    during();
    let cpu = common::threads_cpu("pulse-").unwrap_or_default() - cpu0;
    cpu.as_secs_f64() / t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1]);
        return;
    }
    let plain = memory_per_task("plain");
    let pulse = memory_per_task("pulse");
    println!(
        "resident memory per idle task ({TASKS} tasks waiting on a watch channel, median of {RUNS} processes):\n"
    );
    println!("| tokio::spawn | pulse.spawn | ratio |");
    println!("|---|---|---|");
    println!("| {plain:.0} B | {pulse:.0} B | {:.2}x |", pulse / plain);

    let p = Pulse::new();
    let idle = ticker_cpu_share(|| std::thread::sleep(Duration::from_secs(5)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let busy = ticker_cpu_share(|| {
        rt.block_on(async {
            let stop = Instant::now() + Duration::from_secs(2);
            let tasks: Vec<_> = (0..100)
                .map(|_| {
                    p.spawn(async move {
                        while Instant::now() < stop {
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
        })
    });
    println!("\nthe Pulse's own thread (ticker and watchdog):\n");
    println!("| idle Pulse | during a yield storm |");
    println!("|---|---|");
    println!(
        "| {:.3} ms CPU/s | {:.2} % of a core |",
        idle * 1e3,
        busy * 100.0
    );
}
