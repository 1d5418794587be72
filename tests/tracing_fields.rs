//! What a `tracing` subscriber sees: structured fields on tier changes, and a
//! span per managed task around events from inside it.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{Captured, spin};
use tokio_pulse::Pulse;

/// Runs a managed task that logs once and then hogs its worker, under a
/// `fmt` subscriber with `filter`; returns what the subscriber printed.
///
/// One at a time: `tracing` caches whether a callsite is enabled across
/// all live subscribers, so tests with different filters running in
/// parallel could see each other's verdicts.
fn run_logged_hog(filter: &str) -> String {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false)
        .with_env_filter(filter)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pulse = Pulse::builder()
                .slow_poll_threshold(Duration::from_millis(1))
                .build()
                .unwrap();
            let worker = pulse.spawn_named("worker", async {
                tracing::info!("inside the task");
                for _ in 0..4 {
                    spin(Duration::from_millis(3));
                    tokio::task::yield_now().await;
                }
            });
            worker.await.unwrap();
        });
    });
    let bytes = out.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

#[test]
fn promotion_event_names_the_task_its_location_tier_and_poll_time() {
    let text = run_logged_hog("info");
    let warn = line_with(&text, "task promoted to warn");
    for field in [
        "WARN",
        "task.id=",
        "task.name=\"worker\"",
        "task.location=tests/tracing_fields.rs:",
        "tier=\"warn\"",
        "from=\"monitor\"",
        "poll_us=",
    ] {
        assert!(warn.contains(field), "{field} missing from: {warn}");
    }
}

#[test]
fn events_inside_a_managed_task_carry_its_span_when_enabled() {
    let text = run_logged_hog("info,tokio_pulse::task=debug");
    let inside = line_with(&text, "inside the task");
    assert!(inside.contains("pulse.task{"), "no task span on: {inside}");
    assert!(inside.contains("task.name=\"worker\""), "{inside}");
    // The promotion happens during a poll, so it is inside the span too.
    let warn = line_with(&text, "task promoted to warn");
    assert!(warn.contains("pulse.task{"), "{warn}");
}

#[test]
fn no_task_span_unless_its_target_is_enabled_at_debug() {
    let text = run_logged_hog("info");
    let inside = line_with(&text, "inside the task");
    assert!(!inside.contains("pulse.task"), "{inside}");
}
