//! Tier behaviour on a real multi-thread runtime.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TierEvents, spin, wait_for};
use tokio_pulse::{Pulse, Tier};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5ms_hog_is_promoted_within_a_second_while_a_microsecond_task_stays_monitor() {
    let _serial = common::serial().await;
    let pulse = Pulse::new();
    let (hooks, mut changes) = TierEvents::new();
    pulse.set_hooks(hooks);
    let stop = Arc::new(AtomicBool::new(false));

    let s = stop.clone();
    let hog = pulse.spawn_named("hog", async move {
        while !s.load(Ordering::Relaxed) {
            spin(Duration::from_millis(5));
            tokio::task::yield_now().await;
        }
    });
    let s = stop.clone();
    let (hundred_polls, polled_enough) = tokio::sync::oneshot::channel();
    let quick = pulse.spawn_named("quick", async move {
        let mut hundred_polls = Some(hundred_polls);
        let mut n = 0;
        while !s.load(Ordering::Relaxed) {
            spin(Duration::from_micros(20));
            tokio::time::sleep(Duration::from_micros(200)).await;
            n += 1;
            if n == 100 {
                hundred_polls.take().unwrap().send(()).unwrap();
            }
        }
    });

    let started = Instant::now();
    let first = wait_for(&mut changes, Duration::from_secs(1), "hog", |c| {
        c.to > Tier::Monitor
    })
    .await;
    assert_eq!(first.from, Tier::Monitor);
    // Let the hog climb further while the quick task keeps polling beside it.
    wait_for(&mut changes, Duration::from_secs(2), "hog", |c| {
        c.to == Tier::Isolate
    })
    .await;
    let elapsed = started.elapsed();
    tokio::time::timeout(Duration::from_secs(5), polled_enough)
        .await
        .expect("quick task starved")
        .unwrap();

    let snap = pulse.snapshot();
    let q = snap.named("quick").expect("quick task is alive");
    assert_eq!(q.tier, Tier::Monitor, "quick task was promoted: {q:?}");
    assert!(q.polls >= 100, "{q:?}");
    assert_eq!(q.slow_polls, 0, "{q:?}");
    let h = snap.named("hog").expect("hog is alive");
    assert_eq!(h.tier, Tier::Isolate);
    // Judged by how long it certainly ran: at most a tick short of the
    // 5 ms it spun. A tick is a quarter of the 1 ms threshold apart, plus
    // however late the ticker thread woke: allow it twice that.
    assert!(h.max_poll_time >= Duration::from_micros(4_500), "{h:?}");
    assert!(
        h.cpu_time > Duration::ZERO,
        "suspect's CPU time was not sampled: {h:?}"
    );
    assert!(
        changes.try_recv().map_or(true, |c| c.name != "quick"),
        "quick changed tier"
    );

    stop.store(true, Ordering::Relaxed);
    hog.await.unwrap();
    quick.await.unwrap();
    assert!(elapsed < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_task_is_demoted_step_by_step_after_it_behaves() {
    let _serial = common::serial().await;
    let pulse = Pulse::builder()
        .budget_window(Duration::from_millis(20))
        .clean_windows_to_demote(3)
        .build()
        .unwrap();
    let (hooks, mut changes) = TierEvents::new();
    pulse.set_hooks(hooks);
    let behave = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));

    let (b, d) = (behave.clone(), done.clone());
    let task = pulse.spawn_named("reformed", async move {
        while !d.load(Ordering::Relaxed) {
            if !b.load(Ordering::Relaxed) {
                spin(Duration::from_millis(3));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });

    let reached = wait_for(&mut changes, Duration::from_secs(1), "reformed", |c| {
        c.to >= Tier::Yield
    })
    .await;
    behave.store(true, Ordering::Relaxed);
    let mut tier = reached.to;
    // Every later change is a single step down, until Monitor. A poll that
    // was already running when `behave` flipped may still promote once.
    while tier > Tier::Monitor {
        let c = wait_for(&mut changes, Duration::from_secs(3), "reformed", |_| true).await;
        assert_eq!(c.from, tier);
        assert_eq!(
            (c.from as i32 - c.to as i32).abs(),
            1,
            "skipped a tier: {c:?}"
        );
        tier = c.to;
    }
    assert_eq!(
        pulse.snapshot().named("reformed").unwrap().tier,
        Tier::Monitor
    );
    done.store(true, Ordering::Relaxed);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tier_warn_reports_but_never_intervenes() {
    let _serial = common::serial().await;
    let pulse = Pulse::builder().max_tier(Tier::Warn).build().unwrap();
    let (hooks, mut changes) = TierEvents::new();
    pulse.set_hooks(hooks);
    let hog = pulse.spawn_named("hog", async {
        for _ in 0..60 {
            spin(Duration::from_millis(3));
            tokio::task::yield_now().await;
        }
    });
    wait_for(&mut changes, Duration::from_secs(1), "hog", |c| {
        c.to == Tier::Warn
    })
    .await;
    hog.await.unwrap();
    while let Ok(c) = changes.try_recv() {
        assert!(c.to <= Tier::Warn, "went past max_tier: {c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_lowering_max_tier_moves_a_running_hog_down_at_its_next_poll() {
    let _serial = common::serial().await;
    let pulse = Pulse::new();
    let (hooks, mut changes) = TierEvents::new();
    pulse.set_hooks(hooks);
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let hog = pulse.spawn_named("hog", async move {
        while !s.load(Ordering::Relaxed) {
            spin(Duration::from_millis(2));
            tokio::task::yield_now().await;
        }
        std::thread::current().name().unwrap_or("").to_owned()
    });
    wait_for(&mut changes, Duration::from_secs(2), "hog", |c| {
        c.to == Tier::Isolate
    })
    .await;
    pulse
        .reconfigure(Pulse::builder().max_tier(Tier::Warn))
        .unwrap();
    let c = wait_for(&mut changes, Duration::from_secs(2), "hog", |_| true).await;
    assert_eq!((c.from, c.to), (Tier::Isolate, Tier::Warn));
    stop.store(true, Ordering::Relaxed);
    let last_thread = hog.await.unwrap();
    assert!(
        last_thread.starts_with("tokio-"),
        "still isolated: {last_thread}"
    );
}
