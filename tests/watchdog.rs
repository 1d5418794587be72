//! The watchdog reports a stuck poll while it is still running, and the
//! task's next poll is isolated.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::logs::logs;
use tokio_pulse::{Pulse, PulseExt, Tier};

#[test]
fn a_300ms_blocking_poll_is_reported_while_still_running_and_the_task_is_then_isolated() {
    let rt = common::two_worker_runtime();
    let pulse = Pulse::new();
    let finished_blocking = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let done = finished_blocking.clone();
    let _runtime = rt.enter();
    let handle = pulse.spawn_named("blocker", async move {
        started_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300)); // blocks its worker
        done.store(true, SeqCst);
        tokio::task::yield_now().await;
        std::thread::current().name().unwrap_or("").to_owned()
    });
    started_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("blocker never started");

    // Wait (bounded) for the watchdog's report; it must come mid-poll.
    let deadline = Instant::now() + Duration::from_secs(5);
    let snapshot = loop {
        if pulse.totals().watchdog_reports > 0 {
            break pulse.snapshot();
        }
        assert!(
            !finished_blocking.load(SeqCst),
            "the poll ended before the watchdog reported it"
        );
        assert!(Instant::now() < deadline, "no watchdog report");
        std::thread::yield_now();
    };
    assert!(
        !finished_blocking.load(SeqCst),
        "reported only after the poll ended"
    );
    // Still in its first poll: not among the snapshot's tasks yet, but
    // named by its stuck entry.
    let stuck = snapshot
        .stuck
        .iter()
        .find(|s| s.name.as_deref() == Some("blocker"))
        .expect("listed as stuck");
    assert_eq!(stuck.location.file(), file!());
    assert!(stuck.running_for >= Duration::from_millis(100), "{stuck:?}");
    assert!(
        stuck.thread.as_deref().unwrap_or("").starts_with("tokio-"),
        "{stuck:?}"
    );

    let next_poll_thread = rt.block_on(handle).unwrap();
    assert!(
        next_poll_thread.starts_with("pulse-isolate-"),
        "next poll ran on {next_poll_thread}"
    );
    let t = pulse.totals();
    assert_eq!(t.watchdog_reports, 1, "reported more than once: {t:?}");
    assert_eq!(t.promotions[Tier::Isolate.index()], 1);
}

/// The report identifies the stuck poll by its task and spawn site, also
/// when the thread it runs on has no name to give (and whether or not its
/// stack could be captured: see `tests/stack_capture.rs`).
#[test]
fn a_stuck_poll_on_an_unnamed_thread_is_reported_with_its_task_and_spawn_site() {
    let logs = logs();
    let pulse = Pulse::new();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let blocking = async move {
        started_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    };
    let spawn_line = line!() + 1;
    let blocker = blocking.pulse_named(&pulse, "unnamed-blocker");
    let blocked_thread = std::thread::Builder::new() // no name
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(blocker);
        })
        .unwrap();
    started_rx.recv_timeout(Duration::from_secs(5)).unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    let stuck = loop {
        let snapshot = pulse.snapshot();
        if let Some(stuck) = snapshot.stuck.first() {
            if pulse.totals().watchdog_reports > 0 {
                break stuck.clone();
            }
        }
        assert!(Instant::now() < deadline, "no watchdog report");
        std::thread::yield_now();
    };
    assert_eq!(stuck.thread, None, "{stuck:?}");
    blocked_thread.join().unwrap();

    // The report is emitted once the thread's stack is captured (or its
    // capture has failed), which may be after the poll has ended.
    let report = logs.wait_for(
        &["tokio-pulse watchdog", "unnamed-blocker"],
        deadline.saturating_duration_since(Instant::now()),
    );
    for expected in [
        "ERROR",
        "without yielding",
        "task.name=\"unnamed-blocker\"",
        &format!("task.location={}:{spawn_line}:", file!()),
        "thread=\"<unnamed>\"",
    ] {
        assert!(
            report.contains(expected),
            "{expected:?} missing from {report}"
        );
    }
}
