//! Runtime-wide observation: every task of a runtime built with
//! `RuntimeHooks`, plain `tokio::spawn`s included, is measured, attributed
//! and shown, and a hog among them is warned about.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Captured, spin};
use tokio::runtime::{Builder, Runtime};
use tokio_pulse::{Pulse, Tier};

fn pulse() -> Pulse {
    Pulse::builder()
        .slow_poll_threshold(Duration::from_millis(1))
        .budget_window(Duration::from_millis(20))
        .clean_windows_to_demote(2)
        .build()
        .unwrap()
}

fn hooked(pulse: &Pulse, mut builder: Builder) -> Runtime {
    pulse.runtime_hooks().install(&mut builder);
    builder.enable_all().build().unwrap()
}

/// Waits, up to 5 s, for `cond`: hooks run on the worker, a moment after
/// the `JoinHandle` has seen its task finish.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn plain_tokio_tasks_are_listed_with_their_tokio_id_and_spawn_site() {
    let pulse = pulse();
    let rt = hooked(&pulse, Builder::new_multi_thread());
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let waiter = rt.spawn(async move {
        released.await.unwrap();
    });
    let line = line!() - 3;
    let id = waiter.id();

    let snapshot = pulse.snapshot();
    let task = snapshot
        .runtime_task(id)
        .expect("the waiting task is listed");
    assert_eq!(task.location.file(), file!());
    assert_eq!(task.location.line(), line);
    assert_eq!(task.tier, Tier::Monitor);
    assert!(snapshot.tasks.is_empty(), "nothing is managed");

    release.send(()).unwrap();
    rt.block_on(waiter).unwrap();
    eventually("the finished task leaves the snapshot", || {
        pulse.snapshot().runtime_task(id).is_none()
    });
    let totals = pulse.runtime_totals();
    assert_eq!(totals.tasks_spawned, 1);
    assert_eq!(totals.tasks_ended, 1);
    assert!(totals.polls >= 1, "{totals:?}");
    assert_eq!(totals.poll_time_histogram.total(), totals.polls);
}

#[test]
fn every_poll_of_every_task_is_counted_once() {
    let pulse = pulse();
    let rt = hooked(&pulse, Builder::new_multi_thread());
    rt.block_on(async {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                tokio::spawn(async {
                    for _ in 0..9 {
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    eventually("all 50 tasks ended", || {
        pulse.runtime_totals().tasks_ended == 50
    });
    let totals = pulse.runtime_totals();
    // Nine yields: ten polls each, the last one ending the task.
    assert_eq!(totals.polls, 500, "{totals:?}");
    assert_eq!(totals.poll_time_histogram.total(), 500);
    assert!(pulse.snapshot().runtime_tasks.is_empty());
}

#[test]
fn an_idle_task_aborted_from_outside_is_counted_as_ended() {
    let pulse = pulse();
    let rt = hooked(&pulse, Builder::new_multi_thread());
    let sleeper = rt.spawn(async { tokio::time::sleep(Duration::from_secs(60)).await });
    let id = sleeper.id();
    eventually("the sleeper has been polled", || {
        pulse
            .snapshot()
            .runtime_task(id)
            .is_some_and(|t| t.polls == 1)
    });
    sleeper.abort();
    assert!(rt.block_on(sleeper).unwrap_err().is_cancelled());
    eventually("the aborted task ended", || {
        pulse.runtime_totals().tasks_ended == 1
    });
    assert!(pulse.snapshot().runtime_task(id).is_none());
}

/// Every event of this test binary, formatted. A global subscriber rather
/// than a scoped one: tests run in parallel, and a callsite first hit by
/// another test's thread could otherwise be cached as uninteresting.
fn captured_events() -> &'static Captured {
    static OUT: OnceLock<Captured> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        out
    })
}

#[test]
fn a_hog_among_plain_tasks_is_warned_about_and_stays_at_warn() {
    let out = captured_events();
    let pulse = pulse();
    let rt = hooked(&pulse, Builder::new_current_thread());
    let (hog_id, line, tier_while_hogging) = {
        rt.block_on(async {
            let hog = tokio::spawn(async {
                for _ in 0..30 {
                    spin(Duration::from_millis(2));
                    tokio::task::yield_now().await;
                }
            });
            let line = line!() - 6;
            let id = hog.id();
            let mut tier = Tier::Monitor;
            while !hog.is_finished() {
                if let Some(t) = tokio_pulse_snapshot_tier(&pulse, id) {
                    tier = tier.max(t);
                }
                tokio::task::yield_now().await;
            }
            hog.await.unwrap();
            (id, line, tier)
        })
    };
    assert_eq!(tier_while_hogging, Tier::Warn, "seen at warn while hogging");

    let totals = pulse.runtime_totals();
    assert!(totals.slow_polls >= 30, "{totals:?}");
    assert_eq!(totals.promotions[Tier::Warn.index()], 1);
    assert_eq!(
        totals.promotions[Tier::Yield.index()],
        0,
        "runtime-wide tasks are observed, never deferred"
    );

    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let warn = text
        .lines()
        .find(|l| l.contains("task promoted to warn") && l.contains(&format!("tokio_id={hog_id} ")))
        .unwrap_or_else(|| panic!("no warning about the hog in:\n{text}"));
    for field in [
        format!("task.tokio_id={hog_id}"),
        format!("task.location={}:{line}:", file!()),
        "tier=\"warn\"".to_owned(),
        "poll_us=".to_owned(),
    ] {
        assert!(warn.contains(&field), "{field} missing from: {warn}");
    }
}

fn tokio_pulse_snapshot_tier(pulse: &Pulse, id: tokio::task::Id) -> Option<Tier> {
    pulse.snapshot().runtime_task(id).map(|t| t.tier)
}

#[test]
fn a_reformed_task_is_demoted_back_to_monitor() {
    let pulse = pulse();
    let rt = hooked(&pulse, Builder::new_multi_thread());
    let task = rt.spawn(async {
        for _ in 0..5 {
            spin(Duration::from_millis(2));
            tokio::task::yield_now().await;
        }
        // Behaves: short polls, for well over two 20 ms windows.
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(200) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    rt.block_on(task).unwrap();
    eventually("the task ended", || pulse.runtime_totals().tasks_ended == 1);
    let totals = pulse.runtime_totals();
    assert_eq!(totals.promotions[Tier::Warn.index()], 1, "{totals:?}");
    assert_eq!(totals.demotions[Tier::Monitor.index()], 1, "{totals:?}");
}

#[test]
fn time_in_a_managed_future_is_charged_to_it_not_to_its_runtime_task() {
    // Kept on the runtime (no slow lane, no isolation pool), so that every
    // managed poll happens inside a poll of its runtime task.
    let pulse = Pulse::builder()
        .slow_poll_threshold(Duration::from_millis(1))
        .max_tier(Tier::Warn)
        .build()
        .unwrap();
    let rt = hooked(&pulse, Builder::new_multi_thread());
    let handle = {
        let _in_runtime = rt.enter();
        pulse.spawn_named("managed hog", async {
            for _ in 0..20 {
                spin(Duration::from_millis(3));
                tokio::task::yield_now().await;
            }
        })
    };
    rt.block_on(handle).unwrap();
    eventually("its runtime task ended", || {
        pulse.runtime_totals().tasks_ended == 1
    });
    let managed = pulse.totals();
    let runtime = pulse.runtime_totals();
    assert_eq!(runtime.tasks_spawned, 1, "the task Pulse::spawn created");
    // All 20 are slow; those measured while ticks were still coarse, or
    // while the ticker itself waited for a CPU (see `Timing::Sampled`),
    // may be measured short: most are judged slow.
    assert!(managed.slow_polls >= 15, "{managed:?}");
    assert!(managed.promotions[Tier::Warn.index()] >= 1);
    // The same polls seen from outside the wrapper: charged only its
    // overhead (margins for a thread descheduled between the two).
    assert!(runtime.polls >= 20, "{runtime:?}");
    assert!(
        runtime.slow_polls * 4 < managed.slow_polls,
        "reported twice: {runtime:?}"
    );
    assert!(runtime.poll_time * 4 < managed.poll_time, "{runtime:?}");
}
