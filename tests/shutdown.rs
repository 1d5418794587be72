//! Shutting down with isolated tasks in flight neither hangs, nor leaks a
//! thread, nor loses a `JoinHandle` result, whichever goes first: the
//! runtime or the `Pulse`.
#![cfg(target_os = "linux")]

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{spin, thread_names};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_pulse::Pulse;

/// The tests count the process's threads: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

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
    let rt = common::two_worker_runtime();
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
    let _alone = alone();
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

/// The name of the threads of the runtimes under test.
const RUNTIME_THREADS: &str = "rt-under-test";

/// Threads of the runtimes under test and of any `Pulse`.
fn scenario_threads() -> Vec<String> {
    let mut names = thread_names();
    names.retain(|n| n.starts_with("pulse-") || n.starts_with(RUNTIME_THREADS));
    names
}

/// The tasks of one spawner, one of each kind.
struct Tasks {
    /// Returned at once, well before shutdown.
    done: JoinHandle<u32>,
    /// Hogged (8 polls of 2 ms: isolated under a `Pulse`), then returned,
    /// before shutdown.
    done_after_hogging: JoinHandle<u32>,
    /// Never completes.
    pending: JoinHandle<u32>,
    /// Hogs forever (on the pool under a `Pulse`).
    hog: JoinHandle<u32>,
    /// Fire when the never-ending futures are dropped.
    dropped: Vec<oneshot::Receiver<()>>,
}

fn spawn_tasks(
    spawn: impl Fn(std::pin::Pin<Box<dyn Future<Output = u32> + Send>>) -> JoinHandle<u32>,
) -> Tasks {
    let (pending_tx, pending_rx) = oneshot::channel::<()>();
    let (hog_tx, hog_rx) = oneshot::channel::<()>();
    Tasks {
        done: spawn(Box::pin(async { 1 })),
        done_after_hogging: spawn(Box::pin(async {
            for _ in 0..8 {
                spin(Duration::from_millis(2));
                tokio::task::yield_now().await;
            }
            2
        })),
        pending: spawn(Box::pin(async move {
            let _dropped = pending_tx;
            std::future::pending().await
        })),
        hog: spawn(Box::pin(async move {
            let _dropped = hog_tx;
            loop {
                spin(Duration::from_millis(2));
                tokio::task::yield_now().await;
            }
        })),
        dropped: vec![pending_rx, hog_rx],
    }
}

/// A `JoinHandle`'s result, comparable.
#[derive(Debug, PartialEq)]
enum Joined {
    Value(u32),
    Cancelled,
    Panicked,
}

/// Awaits the handles (their runtime is gone) on a fresh runtime, and
/// waits for the never-ending futures to be dropped.
fn join_all(tasks: Tasks) -> Vec<Joined> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .thread_name(RUNTIME_THREADS)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut joined = Vec::new();
        for h in [
            tasks.done,
            tasks.done_after_hogging,
            tasks.pending,
            tasks.hog,
        ] {
            joined.push(match h.await {
                Ok(v) => Joined::Value(v),
                Err(e) if e.is_cancelled() => Joined::Cancelled,
                Err(_) => Joined::Panicked,
            });
        }
        for dropped in tasks.dropped {
            tokio::time::timeout(Duration::from_secs(5), dropped)
                .await
                .expect("a cancelled future was never dropped")
                .unwrap_err();
        }
        joined
    })
}

fn wait_until_finished(what: &str, handles: &[&JoinHandle<u32>]) {
    wait_until(what, || handles.iter().all(|h| h.is_finished()));
}

#[test]
fn after_shutdown_in_either_order_join_handles_report_what_tokio_reports_and_no_thread_is_left() {
    let _alone = alone();
    assert_eq!(scenario_threads(), Vec::<String>::new());
    for pulse_first in [true, false] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(RUNTIME_THREADS)
            .enable_all()
            .build()
            .unwrap();
        let pulse = Pulse::new();
        let (plain, managed) = {
            let _runtime = rt.enter();
            let p = pulse.clone();
            (spawn_tasks(tokio::spawn), spawn_tasks(move |f| p.spawn(f)))
        };
        wait_until_finished(
            "the returning tasks finish",
            &[
                &plain.done,
                &plain.done_after_hogging,
                &managed.done,
                &managed.done_after_hogging,
            ],
        );
        wait_until("the managed hog is on the pool", || {
            pulse.totals().isolated_tasks == 1
        });

        let started = Instant::now();
        if pulse_first {
            drop(pulse);
            drop(rt);
        } else {
            drop(rt);
            drop(pulse);
        }
        let shutdown = started.elapsed();
        assert!(
            shutdown < Duration::from_secs(5),
            "shutdown took {shutdown:?}"
        );

        let expected = [
            Joined::Value(1),
            Joined::Value(2),
            Joined::Cancelled,
            Joined::Cancelled,
        ];
        assert_eq!(join_all(plain), expected, "tokio::spawn");
        assert_eq!(
            join_all(managed),
            expected,
            "pulse.spawn, pulse first: {pulse_first}"
        );
    }
    wait_until("every runtime and pulse thread exits", || {
        scenario_threads().is_empty()
    });
}
