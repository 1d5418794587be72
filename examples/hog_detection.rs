//! A hog is detected and promoted; well-behaved tasks beside it stay put.
//!
//! Run with `cargo run --release --example hog_detection`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_pulse::{PreemptionHooks, Pulse, TaskInfo, Tier};

/// Prints each tier change as it happens, with the time since start.
struct PrintChanges(Instant);

impl PreemptionHooks for PrintChanges {
    fn on_tier_change(&self, task: &TaskInfo<'_>, from: Tier, to: Tier) {
        println!(
            "{:>7.1} ms  {:<10} {:>8} -> {}",
            self.0.elapsed().as_secs_f64() * 1e3,
            task.name().unwrap_or("?"),
            from,
            to
        );
    }
}

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pulse = Pulse::new();
    pulse.set_hooks(Arc::new(PrintChanges(Instant::now())));
    println!("tier changes:");

    // 5 ms of computation per poll: a hog.
    let hog = pulse.spawn_named("hog", async {
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            spin(Duration::from_millis(5));
            tokio::task::yield_now().await;
        }
    });
    // Hogs for half a second, then behaves: promoted, then demoted.
    let reformed = pulse.spawn_named("reformed", async {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(4000) {
            if start.elapsed() < Duration::from_millis(500) {
                spin(Duration::from_millis(3));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    // Well-behaved: short polls between timer waits.
    let ticker = pulse.spawn_named("ticker", async {
        for _ in 0..2000 {
            spin(Duration::from_micros(20));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let p = pulse.clone();
    let table = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        p.snapshot()
    });

    let snapshot = table.await.unwrap();
    println!("\nsnapshot at 1.2 s:");
    println!(
        "{:<10} {:>8} {:>7} {:>6} {:>10} {:>10} {:>10}",
        "task", "tier", "polls", "slow", "mean poll", "max poll", "cpu (susp)"
    );
    let mut tasks = snapshot.tasks.clone();
    tasks.sort_by_key(|t| t.id);
    for t in &tasks {
        let mean = t
            .total_poll_time
            .checked_div(t.polls.max(1) as u32)
            .unwrap_or_default();
        println!(
            "{:<10} {:>8} {:>7} {:>6} {:>10.2?} {:>10.2?} {:>10.2?}",
            t.name.as_deref().unwrap_or("?"),
            t.tier.as_str(),
            t.polls,
            t.slow_polls,
            mean,
            t.max_poll_time,
            t.cpu_time
        );
    }
    println!(
        "tasks per tier: monitor {} / warn {} / yield {} / isolate {}\n",
        snapshot.count(Tier::Monitor),
        snapshot.count(Tier::Warn),
        snapshot.count(Tier::Yield),
        snapshot.count(Tier::Isolate)
    );
    hog.await.unwrap();
    reformed.await.unwrap();
    ticker.await.unwrap();
    println!("all tasks done; live managed tasks: {}", pulse.task_count());
}
