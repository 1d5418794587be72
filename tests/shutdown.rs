//! Shutting down with isolated tasks in flight neither hangs nor leaks the
//! pool's or the watchdog's threads, whichever goes first: the runtime or
//! the `Pulse`.
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::{spin, thread_names};
use tokio_pulse::Pulse;

fn pulse_threads() -> usize {
    thread_names()
        .iter()
        .filter(|n| n.starts_with("pulse-"))
        .count()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

/// A runtime with four hogs isolated on the pool.
fn runtime_with_isolated_hogs(pulse: &Pulse) -> tokio::runtime::Runtime {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..4 {
            pulse.spawn(async {
                loop {
                    spin(Duration::from_millis(2));
                    tokio::task::yield_now().await;
                }
            });
        }
    });
    wait_until("four hogs are isolated", || {
        pulse.totals().isolated_tasks == 4
    });
    rt
}

#[test]
fn shutdown_with_isolated_tasks_in_flight_neither_hangs_nor_leaks_threads() {
    assert_eq!(pulse_threads(), 0);

    // Runtime first, then the Pulse.
    let pulse = Pulse::new();
    let rt = runtime_with_isolated_hogs(&pulse);
    assert!(
        pulse_threads() >= 2,
        "no pool threads: {:?}",
        thread_names()
    );
    let started = Instant::now();
    drop(rt);
    wait_until("the pool drops the cancelled jobs", || {
        pulse.totals().isolated_tasks == 0
    });
    drop(pulse);
    wait_until("pool and watchdog threads exit", || pulse_threads() == 0);
    assert!(started.elapsed() < Duration::from_secs(5));

    // The Pulse first, then the runtime.
    let pulse = Pulse::new();
    let rt = runtime_with_isolated_hogs(&pulse);
    drop(pulse);
    let started = Instant::now();
    rt.shutdown_timeout(Duration::from_secs(5));
    wait_until("pool and watchdog threads exit", || pulse_threads() == 0);
    assert!(started.elapsed() < Duration::from_secs(5));
}
