//! A live, top-like view of the busiest tasks, redrawn once a second from
//! `Pulse::snapshot()`: what each task did in the last second, worst first.
//!
//! Run with `cargo run --release --example top` (10 s; pass a number of
//! seconds to change that). Built with
//! `RUSTFLAGS="--cfg tokio_unstable"` and `--features runtime-hooks`, it
//! also shows every task of the runtime, marked with its Tokio id.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tokio_pulse::{Pulse, Snapshot, TaskSnapshot, Tier};

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// A row's identity across snapshots: managed tasks by their tokio-pulse
/// id, runtime-wide ones by their Tokio id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Managed(u64),
    Runtime(tokio::task::Id),
}

fn key(t: &TaskSnapshot) -> Key {
    match t.tokio_id {
        Some(id) => Key::Runtime(id),
        None => Key::Managed(t.id.as_u64()),
    }
}

/// What a task did between two snapshots.
struct Row<'a> {
    task: &'a TaskSnapshot,
    polls: u64,
    slow: u64,
    busy: Duration,
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("a number of seconds"))
        .unwrap_or(10);
    let pulse = Pulse::new();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
    pulse.runtime_hooks().install(&mut builder);
    let runtime = builder.build().expect("runtime");
    runtime.block_on(workload(&pulse));

    let clear = std::io::stdout().is_terminal();
    let mut previous: HashMap<Key, (u64, u64, Duration)> = HashMap::new();
    let mut last = Instant::now();
    for _ in 0..seconds {
        std::thread::sleep(Duration::from_secs(1));
        let snapshot = pulse.snapshot();
        let elapsed = last.elapsed();
        last = Instant::now();
        let mut out = String::new();
        if clear {
            out.push_str("\x1b[2J\x1b[H");
        }
        render(&mut out, &snapshot, &mut previous, elapsed);
        print!("{out}");
        std::io::stdout().flush().unwrap();
    }
}

fn render(
    out: &mut String,
    snapshot: &Snapshot,
    previous: &mut HashMap<Key, (u64, u64, Duration)>,
    elapsed: Duration,
) {
    use std::fmt::Write;
    let all = snapshot.tasks.iter().chain(&snapshot.runtime_tasks);
    let mut rows: Vec<Row<'_>> = all
        .map(|task| {
            let (polls, slow, busy) =
                previous
                    .get(&key(task))
                    .copied()
                    .unwrap_or((0, 0, Duration::ZERO));
            Row {
                task,
                polls: task.polls - polls,
                slow: task.slow_polls - slow,
                busy: task.total_poll_time.saturating_sub(busy),
            }
        })
        .collect();
    previous.clear();
    for r in &rows {
        let t = r.task;
        previous.insert(key(t), (t.polls, t.slow_polls, t.total_poll_time));
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.busy));

    let per_tier = Tier::ALL
        .map(|t| format!("{t} {}", snapshot.count(t) + snapshot.runtime_count(t)))
        .join(", ");
    let _ = writeln!(
        out,
        "tokio-pulse top: {} managed, {} runtime-wide tasks ({per_tier})\n",
        snapshot.tasks.len(),
        snapshot.runtime_tasks.len()
    );
    let _ = writeln!(
        out,
        "{:>9} {:<28} {:<8} {:>8} {:>7} {:>6} {:>10}",
        "id", "name / spawned at", "tier", "polls/s", "slow/s", "busy", "max poll"
    );
    let per_second = |n: u64| n as f64 / elapsed.as_secs_f64();
    for r in rows.iter().take(15) {
        let t = r.task;
        let id = match t.tokio_id {
            Some(id) => format!("tokio {id}"),
            None => t.id.to_string(),
        };
        let who = match &t.name {
            Some(name) => name.to_string(),
            None => format!("{}:{}", t.location.file(), t.location.line()),
        };
        let _ = writeln!(
            out,
            "{id:>9} {who:<28.28} {:<8} {:>8.0} {:>7.0} {:>5.1}% {:>10.1?}",
            t.tier.as_str(),
            per_second(r.polls),
            per_second(r.slow),
            100.0 * r.busy.as_secs_f64() / elapsed.as_secs_f64(),
            t.max_poll_time,
        );
    }
}

/// Tasks worth watching: steady tickers, a bursty batch job, and a hog
/// that starts after three seconds and stops after six.
async fn workload(pulse: &Pulse) {
    for i in 0..6 {
        pulse.spawn_named(format!("ticker-{i}"), async move {
            loop {
                spin(Duration::from_micros(30 * (i + 1)));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    pulse.spawn_named("batch", async {
        loop {
            for _ in 0..50 {
                spin(Duration::from_micros(400));
                tokio_pulse::checkpoint().await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    pulse.spawn_named("hog", async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            spin(Duration::from_millis(4));
            tokio::task::yield_now().await;
        }
    });
    // Unmanaged: only visible with runtime hooks.
    tokio::spawn(async {
        loop {
            spin(Duration::from_micros(200));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
}
