//! Isolated tasks run on the pool's threads, and their output, panic and
//! cancellation still reach the `JoinHandle` on the runtime.

mod common;

use std::time::Duration;

use common::{TierEvents, spin, wait_for};
use tokio_pulse::{IsolationPriority, Pulse, Tier};

const POOL_PREFIX: &str = "pulse-isolate-";

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

/// Hogs (2 ms polls) until one of its polls runs on a pool thread.
async fn hog_until_isolated() -> String {
    for _ in 0..5_000 {
        spin(Duration::from_millis(2));
        let name = thread_name();
        if name.starts_with(POOL_PREFIX) {
            return name;
        }
        tokio::task::yield_now().await;
    }
    panic!("never ran on the isolation pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_tasks_polls_run_on_a_pool_thread_and_its_output_reaches_the_join_handle() {
    let pulse = Pulse::new();
    let handle = pulse.spawn_named("hog", async {
        let pool_thread = hog_until_isolated().await;
        // Timers keep working on the pool: they are the runtime's.
        tokio::time::sleep(Duration::from_millis(5)).await;
        (pool_thread, thread_name())
    });
    let (first, last) = handle.await.unwrap();
    assert!(first.starts_with(POOL_PREFIX), "{first}");
    assert!(
        last.starts_with(POOL_PREFIX),
        "resumed after a timer on {last}"
    );
    let t = pulse.totals();
    assert_eq!(t.promotions[Tier::Isolate.index()], 1);
    assert_eq!(t.isolated_tasks, 0, "the finished job is still on the pool");
    assert_eq!(pulse.task_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_the_pool_reaches_the_join_handle_with_its_payload() {
    let pulse = Pulse::new();
    let handle = pulse.spawn(async {
        let name = hog_until_isolated().await;
        panic!("panicked on {name}");
    });
    let err = handle.await.unwrap_err();
    assert!(err.is_panic());
    let msg = err.into_panic().downcast::<String>().unwrap();
    assert!(msg.starts_with("panicked on pulse-isolate-"), "{msg}");
    // The pool survives: another task can still be isolated.
    let again = pulse.spawn(hog_until_isolated()).await.unwrap();
    assert!(again.starts_with(POOL_PREFIX));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_an_isolated_task_cancels_it_and_drops_its_future() {
    let pulse = Pulse::new();
    let (hooks, mut changes) = TierEvents::new();
    pulse.set_hooks(hooks);
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = pulse.spawn_named("hog", async move {
        let _drop_signal = dropped_tx;
        loop {
            spin(Duration::from_millis(2));
            tokio::task::yield_now().await;
        }
    });
    wait_for(&mut changes, Duration::from_secs(5), "hog", |c| {
        c.to == Tier::Isolate
    })
    .await;
    handle.abort();
    assert!(handle.await.unwrap_err().is_cancelled());
    tokio::time::timeout(Duration::from_secs(5), dropped_rx)
        .await
        .expect("the pool never dropped the aborted future")
        .unwrap_err();
    assert_eq!(pulse.task_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_task_moves_back_to_the_runtime_workers() {
    let pulse = Pulse::builder()
        .budget_window(Duration::from_millis(20))
        .clean_windows_to_demote(2)
        .build()
        .unwrap();
    let (hooks, mut changes) = TierEvents::new();
    pulse.set_hooks(hooks);
    let handle = pulse.spawn_named("reformed", async {
        hog_until_isolated().await;
        // Behave: short polls between timer waits, until back on a worker.
        for _ in 0..5_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let name = thread_name();
            if !name.starts_with(POOL_PREFIX) {
                return name;
            }
        }
        panic!("never moved back from the pool");
    });
    let back_on = handle.await.unwrap();
    assert!(back_on.starts_with("tokio-"), "{back_on}");
    wait_for(&mut changes, Duration::from_secs(1), "reformed", |c| {
        c.from == Tier::Isolate && c.to == Tier::Yield
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_spawn_inside_an_isolated_task_spawns_on_the_original_runtime() {
    let pulse = Pulse::new();
    let child_thread = pulse
        .spawn(async {
            hog_until_isolated().await;
            tokio::spawn(async { thread_name() }).await.unwrap()
        })
        .await
        .unwrap();
    assert!(child_thread.starts_with("tokio-"), "{child_thread}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_that_are_not_send_stay_in_the_slow_lane() {
    use tokio_pulse::PulseExt;
    let pulse = Pulse::new();
    let (hooks, mut changes) = TierEvents::new();
    pulse.set_hooks(hooks);
    let local = tokio::task::LocalSet::new();
    let p = pulse.clone();
    let names = local
        .run_until(async move {
            tokio::task::spawn_local(
                async {
                    let rc = std::rc::Rc::new(()); // not Send
                    let mut names = Vec::new();
                    for _ in 0..40 {
                        spin(Duration::from_millis(2));
                        names.push(thread_name());
                        tokio::task::yield_now().await;
                    }
                    drop(rc);
                    names
                }
                .pulse_named(&p, "local-hog"),
            )
            .await
            .unwrap()
        })
        .await;
    assert!(names.iter().all(|n| !n.starts_with(POOL_PREFIX)));
    wait_for(&mut changes, Duration::from_secs(1), "local-hog", |c| {
        c.to == Tier::Yield
    })
    .await;
    while let Ok(c) = changes.try_recv() {
        assert!(c.to <= Tier::Yield, "{c:?}");
    }
}

/// Panics when dropped, unless the thread is already unwinding.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("destructor of an isolated future panicked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_that_panic_when_dropped_on_the_pool_do_not_take_its_threads_down() {
    // One pool thread, and twice as many panicking destructors as threads:
    // if a panic escaped the pool's thread, the later hogs would never be
    // polled again and their JoinHandles would hang.
    // Normal priority: a SCHED_IDLE thread gets little CPU on a busy
    // machine, and priority is not what this test is about.
    let pulse = Pulse::builder()
        .isolation_threads(1)
        .isolation_priority(IsolationPriority::Inherit)
        .build()
        .unwrap();
    let (hooks, mut changes) = TierEvents::new();
    pulse.set_hooks(hooks);
    for round in 0..2 {
        let name = format!("bomb-{round}");
        let bomb = pulse.spawn_named(name.clone(), async {
            let _bomb = PanicsOnDrop;
            loop {
                spin(Duration::from_millis(2));
                tokio::task::yield_now().await;
            }
        });
        wait_for(&mut changes, Duration::from_secs(5), &name, |c| {
            c.to == Tier::Isolate
        })
        .await;
        // Promoted at the end of a poll; the future moves at the next one.
        wait_until_isolated_tasks(&pulse, |n| n == 1).await;
        bomb.abort();
        assert!(bomb.await.unwrap_err().is_cancelled());
        // The pool drops the cancelled future at the job's next turn.
        wait_until_isolated_tasks(&pulse, |n| n == 0).await;
    }
    let ran_on = tokio::time::timeout(Duration::from_secs(10), pulse.spawn(hog_until_isolated()))
        .await
        .expect("the pool no longer runs isolated tasks")
        .unwrap();
    assert!(ran_on.starts_with(POOL_PREFIX), "{ran_on}");
}

/// Waits (up to 5 s) until the number of tasks on the pool satisfies `pred`.
async fn wait_until_isolated_tasks(pulse: &Pulse, pred: impl Fn(usize) -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !pred(pulse.totals().isolated_tasks) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("isolated tasks: {}", pulse.totals().isolated_tasks));
}
