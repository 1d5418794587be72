//! Runtime-wide observation: a "library" spawns a CPU hog with plain
//! `tokio::spawn`, and tokio-pulse still finds it, names where it was
//! spawned, warns about it, and lists every task of the runtime.
//!
//! Run with
//! `RUSTFLAGS="--cfg tokio_unstable" cargo run --example runtime_hooks --features runtime-hooks`.

use std::time::{Duration, Instant};

use tokio_pulse::{Pulse, TaskSnapshot};

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Stands for a dependency: code you did not write and cannot wrap.
mod library {
    use super::*;

    pub fn start_background_compaction() {
        tokio::spawn(async {
            loop {
                spin(Duration::from_millis(4)); // compacts without yielding
                tokio::task::yield_now().await;
            }
        });
    }

    pub fn start_heartbeat() {
        tokio::spawn(async {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
}

fn main() {
    tracing_subscriber::fmt().with_target(false).init();
    let pulse = Pulse::new();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    pulse.runtime_hooks().install(&mut builder);
    let runtime = builder.build().expect("runtime");

    runtime.block_on(async {
        library::start_background_compaction();
        library::start_heartbeat();
        // Managed: measured by its wrapper, shown in both lists.
        pulse.spawn_named("report", async {
            loop {
                spin(Duration::from_micros(50));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
    });

    let snapshot = pulse.snapshot();
    println!("\nevery task of the runtime, worst first:");
    print_table(&snapshot.worst_runtime(10));
    println!("\nmanaged tasks:");
    print_table(&snapshot.worst(10));
    let totals = pulse.runtime_totals();
    println!(
        "\nruntime-wide: {} tasks spawned, {} polls, {} slow, {:?} in polls",
        totals.tasks_spawned, totals.polls, totals.slow_polls, totals.poll_time
    );
}

fn print_table(tasks: &[&TaskSnapshot]) {
    println!(
        "{:>8} {:<8} {:<28} {:>7} {:>6} {:>10} {:>10}",
        "tokio id", "tier", "spawned at / name", "polls", "slow", "busy", "max poll"
    );
    for t in tasks {
        let who = match &t.name {
            Some(name) => name.to_string(),
            None => format!("{}:{}", t.location.file(), t.location.line()),
        };
        println!(
            "{:>8} {:<8} {:<28} {:>7} {:>6} {:>10.1?} {:>10.1?}",
            t.tokio_id.map_or("-".into(), |id| id.to_string()),
            t.tier.as_str(),
            who,
            t.polls,
            t.slow_polls,
            t.total_poll_time,
            t.max_poll_time,
        );
    }
}
