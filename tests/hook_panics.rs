//! User code the engine calls cannot change a task's outcome: a hook that
//! panics is caught, reported once, and uninstalled, and the task delivers
//! its own result to its `JoinHandle` as under `tokio::spawn`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use common::{Captured, spin};
use tokio_pulse::{PollReport, PreemptionHooks, Pulse, TaskInfo, Tier};

/// Panics in the one hook it is told to, and counts every call.
#[derive(Default)]
struct PanicsIn {
    after_poll: bool,
    tier_change: bool,
    task_end: bool,
    calls: AtomicUsize,
}

impl PreemptionHooks for PanicsIn {
    fn before_poll(&self, _task: &TaskInfo<'_>) {
        self.calls.fetch_add(1, Relaxed);
    }

    fn after_poll(&self, _task: &TaskInfo<'_>, _poll: &PollReport) {
        if self.after_poll {
            panic!("bug in after_poll");
        }
    }

    fn on_tier_change(&self, _task: &TaskInfo<'_>, _from: Tier, _to: Tier) {
        if self.tier_change {
            panic!("bug in on_tier_change");
        }
    }

    fn on_task_end(&self, _task: &TaskInfo<'_>) {
        if self.task_end {
            panic!("bug in on_task_end");
        }
    }
}

/// Events at `ERROR` from tokio-pulse, captured for the test's duration.
fn capture_errors() -> (Captured, tracing::subscriber::DefaultGuard) {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::ERROR)
        .finish();
    (out.clone(), tracing::subscriber::set_default(subscriber))
}

fn text(out: &Captured) -> String {
    String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn a_panicking_after_poll_hook_leaves_the_tasks_output_intact() {
    let (out, _guard) = capture_errors();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let pulse = Pulse::new();
    let hooks = Arc::new(PanicsIn {
        after_poll: true,
        ..PanicsIn::default()
    });
    pulse.set_hooks(hooks.clone());
    let answer = rt.block_on(async {
        pulse
            .spawn(async {
                tokio::task::yield_now().await;
                42
            })
            .await
    });
    assert_eq!(answer.unwrap(), 42);
    assert_eq!(
        hooks.calls.load(Relaxed),
        1,
        "the hooks were called again after panicking"
    );
    let log = text(&out);
    assert_eq!(
        log.matches("PreemptionHooks::after_poll call panicked")
            .count(),
        1,
        "reported not once: {log}"
    );
    assert!(log.contains("bug in after_poll"), "{log}");

    // Hooks installed afterwards are called as usual.
    let fresh = Arc::new(PanicsIn::default());
    pulse.set_hooks(fresh.clone());
    rt.block_on(async { pulse.spawn(async {}).await }).unwrap();
    assert_eq!(fresh.calls.load(Relaxed), 1);
}

#[test]
fn a_panicking_tier_change_hook_does_not_kill_the_task_being_promoted() {
    let (out, _guard) = capture_errors();
    // On this thread, where the events are captured.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let pulse = Pulse::builder()
        .slow_poll_threshold(Duration::from_millis(1))
        .build()
        .unwrap();
    pulse.set_hooks(Arc::new(PanicsIn {
        tier_change: true,
        ..PanicsIn::default()
    }));
    // Polls of 10 ms: the first is a bad window on its own.
    let result = rt.block_on(async {
        pulse
            .spawn(async {
                for _ in 0..5 {
                    spin(Duration::from_millis(10));
                    tokio::task::yield_now().await;
                }
                "finished"
            })
            .await
    });
    assert_eq!(result.unwrap(), "finished");
    assert!(pulse.totals().promotions[Tier::Warn] >= 1);
    assert!(text(&out).contains("on_tier_change"), "{}", text(&out));
}

#[test]
fn a_panicking_task_end_hook_leaves_the_result_and_the_next_tasks_alone() {
    let (_out, _guard) = capture_errors();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let pulse = Pulse::new();
    pulse.set_hooks(Arc::new(PanicsIn {
        task_end: true,
        ..PanicsIn::default()
    }));
    let first = rt.block_on(async { pulse.spawn(async { 1 }).await });
    let second = rt.block_on(async { pulse.spawn(async { 2 }).await });
    assert_eq!((first.unwrap(), second.unwrap()), (1, 2));
    assert_eq!(pulse.task_count(), 0, "an ended task stayed registered");
}
