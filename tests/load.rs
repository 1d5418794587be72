//! Load: 100 000 managed tasks alive at once on a 2-worker runtime, a few
//! of them hogs, all complete with the right results, and `snapshot()`
//! keeps answering while they run.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::spin;
use tokio_pulse::{IsolationPriority, Pulse, Tier};

const TASKS: usize = 100_000;
/// One task in `HOG_EVERY` is a hog: 8 polls of 2 ms.
const HOG_EVERY: usize = 2_000;

/// What a snapshot thread saw while the tasks ran.
#[derive(Debug, Default)]
struct Seen {
    snapshots: u32,
    slowest: Duration,
    most_tasks: usize,
    promoted: usize,
}

/// Takes snapshots back to back until `stop`, checking each is coherent.
fn watch(pulse: Pulse, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(SeqCst) {
        let started = Instant::now();
        let snap = pulse.snapshot();
        let took = started.elapsed();
        assert_eq!(
            Tier::ALL.iter().map(|&t| snap.count(t)).sum::<usize>(),
            snap.tasks.len(),
            "tier counts disagree with the task list"
        );
        assert!(snap.tasks.len() <= TASKS);
        seen.snapshots += 1;
        seen.slowest = seen.slowest.max(took);
        seen.most_tasks = seen.most_tasks.max(snap.tasks.len());
        seen.promoted = seen
            .promoted
            .max(snap.count(Tier::Yield) + snap.count(Tier::Isolate));
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

#[test]
fn a_hundred_thousand_concurrent_tasks_with_hogs_complete_and_snapshots_stay_usable() {
    let rt = common::two_worker_runtime();
    // Normal priority keeps the test's length independent of other load
    // on the machine; priority is not what this test is about.
    let pulse = Pulse::builder()
        .isolation_priority(IsolationPriority::Inherit)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pulse, stop) = (pulse.clone(), stop.clone());
        std::thread::spawn(move || watch(pulse, stop))
    };

    let started = Instant::now();
    let (sum, all_alive, listed) = rt.block_on(async {
        // Every task waits for `go`, so all of them are alive at once.
        let (go_tx, go_rx) = tokio::sync::watch::channel(false);
        let mut handles = Vec::with_capacity(TASKS);
        for i in 0..TASKS {
            let mut go = go_rx.clone();
            handles.push(pulse.spawn(async move {
                go.wait_for(|go| *go).await.unwrap();
                if i % HOG_EVERY == 0 {
                    for _ in 0..8 {
                        spin(Duration::from_millis(2));
                        tokio::task::yield_now().await;
                    }
                } else {
                    tokio::task::yield_now().await;
                }
                i as u64
            }));
        }
        let all_alive = pulse.task_count();
        // A task shows in snapshots from its first `Pending` on: once all
        // of them wait for `go`, a snapshot lists every one.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut listed = 0;
        while listed < TASKS && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            listed = pulse.snapshot().tasks.len();
        }
        go_tx.send(true).unwrap();
        let mut sum = 0u64;
        for (i, h) in handles.into_iter().enumerate() {
            let v = tokio::time::timeout(Duration::from_secs(60), h)
                .await
                .unwrap_or_else(|_| panic!("task {i} never completed"))
                .unwrap();
            assert_eq!(v, i as u64);
            sum += v;
        }
        (sum, all_alive, listed)
    });
    let elapsed = started.elapsed();
    stop.store(true, SeqCst);
    let seen = watcher.join().unwrap();
    let totals = pulse.totals();
    println!("{TASKS} tasks in {elapsed:?}; snapshots: {seen:?}; {totals:?}");

    assert_eq!(all_alive, TASKS);
    assert_eq!(listed, TASKS, "waiting tasks missing from the snapshot");
    assert_eq!(sum, (TASKS as u64 - 1) * TASKS as u64 / 2);
    assert_eq!(pulse.task_count(), 0);
    assert_eq!(totals.tasks_ended, TASKS as u64);
    assert!(
        totals.promotions[Tier::Yield.index()] > 0,
        "no hog was caught: {totals:?}"
    );
    // Snapshots kept coming while the tasks ran, saw them, and none took
    // long enough to suggest a stall (the bound is for hangs and lock
    // convoys, not a performance claim).
    assert!(seen.snapshots >= 3, "{seen:?}");
    assert!(seen.slowest < Duration::from_secs(5), "{seen:?}");
}
