//! The watchdog reports a stuck poll while it is still running, and the
//! task's next poll is isolated.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use tokio_pulse::{Pulse, Tier};

#[test]
fn a_300ms_blocking_poll_is_reported_while_still_running_and_the_task_is_then_isolated() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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
    let task = snapshot.named("blocker").unwrap();
    assert_eq!(task.stuck_reports, 1);
    let stuck = snapshot
        .stuck
        .iter()
        .find(|s| s.task == task.id)
        .expect("listed as stuck");
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
