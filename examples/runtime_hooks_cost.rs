//! What runtime hooks cost per poll: the same workload (tasks that do
//! nothing but yield) on runtimes with and without `RuntimeHooks`, and,
//! for comparison, as managed tasks.
//!
//! Run with `RUSTFLAGS="--cfg tokio_unstable" cargo run --release
//! --example runtime_hooks_cost --features runtime-hooks`.

use std::time::Instant;

use tokio::runtime::Builder;
use tokio_pulse::Pulse;

const TASKS: usize = 1_000;
const YIELDS: usize = 1_000;
const RUNS: usize = 15;

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Bare,
    /// Hooks that do nothing: what Tokio itself spends calling them.
    Empty,
    Hooked,
    Managed,
}

/// Time per poll of `TASKS` tasks yielding `YIELDS` times, in one run.
fn per_poll(multi_thread: bool, setup: Setup) -> f64 {
    let pulse = Pulse::new();
    let mut builder = if multi_thread {
        let mut b = Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        Builder::new_current_thread()
    };
    match setup {
        Setup::Hooked => {
            pulse.runtime_hooks().install(&mut builder);
        }
        Setup::Empty => {
            builder
                .on_task_spawn(|_| {})
                .on_before_task_poll(|_| {})
                .on_after_task_poll(|_| {})
                .on_task_terminate(|_| {});
        }
        Setup::Bare | Setup::Managed => {}
    }
    let rt = builder.build().unwrap();
    let elapsed = rt.block_on(async {
        let started = Instant::now();
        let work = || async {
            for _ in 0..YIELDS {
                tokio::task::yield_now().await;
            }
        };
        let handles: Vec<_> = (0..TASKS)
            .map(|_| match setup {
                Setup::Managed => pulse.spawn(work()),
                _ => tokio::spawn(work()),
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        started.elapsed()
    });
    elapsed.as_nanos() as f64 / (TASKS * (YIELDS + 1)) as f64
}

fn main() {
    println!("{TASKS} tasks x {YIELDS} yields, ns per poll, best of {RUNS} interleaved runs");
    let setups = [Setup::Bare, Setup::Empty, Setup::Hooked, Setup::Managed];
    for (label, multi) in [("current_thread", false), ("multi_thread(2)", true)] {
        let mut best = [f64::MAX; 4];
        for _ in 0..RUNS {
            for (i, &setup) in setups.iter().enumerate() {
                best[i] = best[i].min(per_poll(multi, setup));
            }
        }
        let [bare, empty, hooked, managed] = best;
        println!(
            "{label:<16} bare {bare:6.1}   empty hooks {empty:6.1} (+{:.1})   \
             runtime hooks {hooked:6.1} (+{:.1})   managed {managed:6.1} (+{:.1})",
            empty - bare,
            hooked - bare,
            managed - bare
        );
    }
}
