//! A managed task's output, panic and cancellation reach its `JoinHandle`
//! exactly as with `tokio::spawn`, and its state is freed when it ends.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TierEvents, spin, wait_for};
use tokio::task::JoinError;
use tokio_pulse::{PollReport, PreemptionHooks, Pulse, PulseExt, TaskInfo, Tier};

fn panic_message(err: JoinError) -> String {
    assert!(err.is_panic(), "expected a panic, got {err:?}");
    let payload = err.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .expect("panic payload is a string")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_reaches_the_join_handle_and_state_is_freed() {
    let pulse = Pulse::new();
    let handle = pulse.spawn(async { vec![1, 2, 3] });
    assert_eq!(handle.await.unwrap(), vec![1, 2, 3]);
    assert_eq!(pulse.task_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_reaches_the_join_handle_with_its_payload_like_tokio_spawn() {
    let pulse = Pulse::new();
    let plain = tokio::spawn(async { panic!("boom {}", 7) })
        .await
        .unwrap_err();
    let managed = pulse
        .spawn(async { panic!("boom {}", 7) })
        .await
        .unwrap_err();
    assert_eq!(panic_message(managed), panic_message(plain));
    assert_eq!(pulse.task_count(), 0, "panicked task's state not freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_cancels_a_pending_task_like_tokio_spawn() {
    let pulse = Pulse::new();
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = pulse.spawn(async move {
        let _guard = dropped_tx; // dropped with the future
        std::future::pending::<()>().await
    });
    assert_eq!(pulse.task_count(), 1);
    handle.abort();
    let err = handle.await.unwrap_err();
    assert!(err.is_cancelled());
    assert!(dropped_rx.await.is_err(), "the future was not dropped");
    assert_eq!(pulse.task_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_cancels_a_promoted_hog_and_frees_it() {
    let pulse = Pulse::new();
    let (hooks, mut changes) = TierEvents::new();
    pulse.set_hooks(hooks);
    let hog = pulse.spawn_named("hog", async {
        loop {
            spin(Duration::from_millis(3));
            tokio::task::yield_now().await;
        }
    });
    wait_for(&mut changes, Duration::from_secs(2), "hog", |c| {
        c.to >= Tier::Yield
    })
    .await;
    hog.abort();
    assert!(hog.await.unwrap_err().is_cancelled());
    assert_eq!(pulse.task_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_records_the_callers_location_and_name() {
    let pulse = Pulse::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let line = line!() + 1;
    let handle = pulse.spawn_named("named", async move { rx.await.unwrap() });
    // Listed once it has returned `Pending` (see `Snapshot::tasks`).
    let snap = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let snap = pulse.snapshot();
            if snap.named("named").is_some() {
                return snap;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the task never showed in a snapshot");
    let t = snap.named("named").unwrap();
    assert_eq!(t.location.file(), file!());
    assert_eq!(t.location.line(), line);
    assert_eq!(snap.count(Tier::Monitor), 1);
    tx.send(()).unwrap();
    handle.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn pulse_ext_manages_non_send_futures_in_a_local_set() {
    let pulse = Pulse::new();
    let local = tokio::task::LocalSet::new();
    let rc = std::rc::Rc::new(21);
    let p = pulse.clone();
    let out = local
        .run_until(async move {
            let h = tokio::task::spawn_local(async move { *rc * 2 }.pulse_named(&p, "local"));
            h.await.unwrap()
        })
        .await;
    assert_eq!(out, 42);
    assert_eq!(pulse.task_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulse_ext_works_under_a_join_set() {
    let pulse = Pulse::new();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..10u64 {
        set.spawn(async move { i * i }.pulse(&pulse));
    }
    let mut sum = 0;
    while let Some(r) = set.join_next().await {
        sum += r.unwrap();
    }
    assert_eq!(sum, 285);
    assert_eq!(pulse.task_count(), 0);
}

#[derive(Default)]
struct PollDurations(std::sync::Mutex<Vec<Duration>>);

impl PreemptionHooks for PollDurations {
    fn after_poll(&self, _task: &TaskInfo<'_>, poll: &PollReport) {
        self.0.lock().unwrap().push(poll.duration);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_splits_a_long_computation_into_short_polls() {
    let pulse = Pulse::new();
    let durations = Arc::new(PollDurations::default());
    pulse.set_hooks(durations.clone());
    pulse
        .spawn(async {
            // At least 40 ms of work with a checkpoint every ~10 µs. Counted
            // in iterations: a descheduled thread only makes it longer.
            for _ in 0..4_000 {
                spin(Duration::from_micros(10));
                tokio_pulse::checkpoint().await;
            }
        })
        .await
        .unwrap();
    let mut durations = durations.0.lock().unwrap().clone();
    durations.sort();
    // Slices are 0.5 ms, so ~80 polls. The OS may deschedule the thread
    // mid-poll on a busy machine, which stretches single polls: judge the
    // median, not the maximum.
    assert!(
        durations.len() >= 40,
        "only {} polls: checkpoint did not yield",
        durations.len()
    );
    let median = durations[durations.len() / 2];
    assert!(median < Duration::from_millis(1), "median poll {median:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn checkpoint_outside_a_managed_task_is_a_plain_budget_check() {
    for _ in 0..1_000 {
        tokio_pulse::checkpoint().await;
    }
}

#[test]
fn checkpoint_outside_any_runtime_does_not_panic() {
    let mut fut = std::pin::pin!(tokio_pulse::checkpoint());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(fut.as_mut().poll(&mut cx).is_ready());
}
