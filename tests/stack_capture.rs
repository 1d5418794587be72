//! The watchdog's report of a stuck poll says where the thread is stuck:
//! the stack it captured, with the function the task is stuck in.
//!
//! Each test waits for the watchdog's own `tracing` error (emitted once
//! the stack is captured and kept), then reads a snapshot: a poll is in
//! `Snapshot::stuck` only while it still runs, so finding its entry there
//! is finding it while stuck.
//!
//! A stuck task stays stuck for at least 600 ms, and then until the test
//! has looked: how soon the report comes is not what these tests check.
//! (The first capture of a process loads the debug information of the
//! binary and of libc; with several test processes doing that at once on
//! two cores, it can take most of 600 ms.)
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::logs::logs;
use tokio_pulse::{Component, Pulse, StackCapture, StuckPoll};

/// How long the stuck tasks stay stuck at least: six times the watchdog's
/// threshold.
const STUCK_FOR: Duration = Duration::from_millis(600);

/// A bound on waiting for an event, never a pause.
const WITHIN: Duration = Duration::from_secs(10);

/// The watchdog's error about task `name`, once it has been emitted.
fn watchdog_report(name: &str) -> String {
    logs().wait_for(
        &["tokio-pulse watchdog", &format!("task.name=\"{name}\"")],
        WITHIN,
    )
}

/// The snapshot entry of task `name`'s stuck poll: the poll is running now.
fn stuck_entry(pulse: &Pulse, name: &str) -> StuckPoll {
    let snapshot = pulse.snapshot();
    snapshot
        .stuck
        .iter()
        .find(|s| s.name.as_deref() == Some(name))
        .cloned()
        .unwrap_or_else(|| panic!("{name} is not stuck any more: {:?}", snapshot.stuck))
}

/// Keeps the stuck tasks stuck until dropped: at the end of a test, or
/// when it fails (so that its runtime can shut down).
struct Stuck(Arc<AtomicBool>);

impl Stuck {
    fn new() -> Self {
        Stuck(Arc::new(AtomicBool::new(false)))
    }

    fn released(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

impl Drop for Stuck {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// Tells the test it is here, then sleeps in the kernel: `STUCK_FOR`, and
/// again until `released`.
#[inline(never)]
fn pulse_test_sleeps_here(here: &mpsc::Sender<()>, released: &AtomicBool) {
    here.send(()).expect("the test listens");
    let started = Instant::now();
    loop {
        std::thread::sleep(STUCK_FOR);
        if released.load(SeqCst) || started.elapsed() > WITHIN {
            break;
        }
    }
    // Keeps the sleep from being a tail call, which would take this
    // function off the stack in a release build.
    black_box(here);
}

/// Tells the test it is here, then spins on the CPU: `STUCK_FOR`, and
/// on until `released`.
#[inline(never)]
fn pulse_test_spins_here(here: &mpsc::Sender<()>, released: &AtomicBool) -> u64 {
    here.send(()).expect("the test listens");
    let started = Instant::now();
    let mut turns = 0u64;
    // The clock and the flag are read rarely, so the thread is nearly
    // always in this very function when it is interrupted.
    loop {
        turns = black_box(turns.wrapping_add(1));
        if turns % (1 << 16) == 0 {
            let elapsed = started.elapsed();
            if (elapsed >= STUCK_FOR && released.load(SeqCst)) || elapsed > WITHIN {
                return turns;
            }
        }
    }
}

/// Runs a task named `name` on `pulse` (on a runtime of its own) that
/// gets stuck in `stuck_in` (which tells the test it is there, and stays
/// until released); returns the watchdog's report about it and its
/// snapshot entry, both taken while it was stuck, once it has been
/// released and has finished.
fn report_and_entry<R: Send + 'static>(
    pulse: &Pulse,
    name: &'static str,
    stuck_in: impl FnOnce(&mpsc::Sender<()>, &AtomicBool) -> R + Send + 'static,
) -> (String, StuckPoll) {
    let rt = common::two_worker_runtime();
    let (here_tx, here) = mpsc::channel();
    let stuck = Stuck::new();
    let released = stuck.released();
    let task = rt.spawn({
        let pulse = pulse.clone();
        async move {
            pulse
                .spawn_named(name, async move { stuck_in(&here_tx, &released) })
                .await
        }
    });
    here.recv_timeout(WITHIN)
        .unwrap_or_else(|_| panic!("{name} never started"));
    let report = watchdog_report(name);
    let entry = stuck_entry(pulse, name);
    drop(stuck);
    rt.block_on(task).unwrap().unwrap();
    (report, entry)
}

#[test]
fn a_poll_stuck_in_a_sleep_is_reported_with_the_function_it_sleeps_in() {
    logs();
    let pulse = Pulse::new();
    assert_eq!(pulse.health().stack_capture, Component::Running);
    let (report, entry) = report_and_entry(&pulse, "sleeper", pulse_test_sleeps_here);

    let stack = entry.stack.as_deref().expect("a stack in the snapshot");
    assert!(stack.contains("pulse_test_sleeps_here"), "{stack}");
    // The innermost frame is the sleep itself, not the capture's handler.
    let first = stack.lines().next().unwrap_or_default();
    assert!(first.contains("nanosleep"), "{stack}");
    assert!(!stack.contains("on_signal"), "{stack}");
    // The same stack, in the `tracing` error's `stack` field.
    assert!(
        report.contains(&format!("stack={first}")),
        "the report's stack field:\n{report}"
    );
    assert!(!report.contains("stack_error"), "{report}");
}

#[test]
fn a_poll_stuck_spinning_is_reported_with_the_function_it_spins_in() {
    logs();
    let pulse = Pulse::new();
    let (report, entry) = report_and_entry(&pulse, "spinner", pulse_test_spins_here);

    let stack = entry.stack.as_deref().expect("a stack in the snapshot");
    // Interrupted in the loop: in the function itself, or in what it
    // calls there (in a debug build, `black_box` and the arithmetic).
    let frame = stack
        .lines()
        .position(|l| l.contains("pulse_test_spins_here"))
        .unwrap_or_else(|| panic!("not in the stack:\n{stack}"));
    assert!(frame <= 3, "{stack}");
    assert!(report.contains("stack="), "{report}");
}

#[test]
fn two_pulses_each_capture_their_own_stuck_poll() {
    logs();
    let rt = common::two_worker_runtime();
    let (first, second) = (Pulse::new(), Pulse::new());
    let (here_tx, here) = mpsc::channel();
    let stuck = Stuck::new();
    let tasks: Vec<_> = [(&first, "first-sleeper"), (&second, "second-spinner")]
        .into_iter()
        .map(|(pulse, name)| {
            let (pulse, here_tx, released) = (pulse.clone(), here_tx.clone(), stuck.released());
            rt.spawn(async move {
                pulse
                    .spawn_named(name, async move {
                        if name == "first-sleeper" {
                            pulse_test_sleeps_here(&here_tx, &released);
                        } else {
                            pulse_test_spins_here(&here_tx, &released);
                        }
                    })
                    .await
            })
        })
        .collect();
    for _ in 0..2 {
        here.recv_timeout(WITHIN).expect("both tasks started");
    }

    let reports = [
        watchdog_report("first-sleeper"),
        watchdog_report("second-spinner"),
    ];
    let (first_stuck, second_stuck) = (first.snapshot().stuck, second.snapshot().stuck);
    drop(stuck);
    for task in tasks {
        rt.block_on(task).unwrap().unwrap();
    }

    // Each watchdog sees its own task only, with its own stack.
    for ((stuck, name, function), report) in [
        (first_stuck, "first-sleeper", "pulse_test_sleeps_here"),
        (second_stuck, "second-spinner", "pulse_test_spins_here"),
    ]
    .into_iter()
    .zip(reports)
    {
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert_eq!(stuck[0].name.as_deref(), Some(name), "{stuck:?}");
        let stack = stuck[0]
            .stack
            .as_deref()
            .unwrap_or_else(|| panic!("no stack; the report:\n{report}"));
        assert!(stack.contains(function), "{stack}");
    }
}

#[test]
fn with_stack_capture_off_a_stuck_poll_is_reported_without_a_stack() {
    logs();
    let pulse = Pulse::builder()
        .stack_capture(StackCapture::Off)
        .build()
        .unwrap();
    assert_eq!(pulse.health().stack_capture, Component::Disabled);
    let (report, entry) = report_and_entry(&pulse, "uncaptured", pulse_test_sleeps_here);

    assert_eq!(entry.stack, None, "{entry:?}");
    assert!(!report.contains("stack="), "{report}");
    assert!(!report.contains("stack_error"), "{report}");
}

/// How often the application's own handler ran.
static APPLICATION_HANDLER_CALLS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn application_handler(_signal: libc::c_int) {
    APPLICATION_HANDLER_CALLS.fetch_add(1, SeqCst);
}

fn handler_of(signal: i32) -> libc::sighandler_t {
    // SAFETY: a null new action only queries; the out pointer is a valid
    // local, all-zero being a valid `sigaction`.
    unsafe {
        let mut now: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(signal, std::ptr::null(), &mut now), 0);
        now.sa_sigaction
    }
}

#[test]
fn a_signal_the_application_handles_is_left_to_it_and_capture_is_off() {
    logs();
    // A signal of this test's own: the others use the default one.
    let signal = libc::SIGRTMIN() + 8;
    let application = application_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: all-zero is a valid sigaction; the handler has the plain
    // `extern "C" fn(c_int)` signature that a handler without SA_SIGINFO
    // is called with.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = application;
        assert_eq!(libc::sigaction(signal, &action, std::ptr::null_mut()), 0);
    }

    let pulse = Pulse::builder()
        .stack_capture(StackCapture::Signal(signal))
        .build()
        .expect("a taken signal turns capture off; it does not fail the build");
    let warning = logs().wait_for(
        &["stack capture is off", &format!("signal={signal}")],
        WITHIN,
    );
    assert!(warning.contains("WARN"), "{warning}");
    match pulse.health().stack_capture {
        Component::Failed(reason) => {
            assert!(reason.contains(&format!("signal {signal} ")), "{reason}");
            assert!(reason.contains("already has a handler"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(handler_of(signal), application, "the handler was replaced");

    // Stuck polls are still reported, without a stack, and the
    // application's handler never gets a signal it did not expect.
    let (report, entry) = report_and_entry(&pulse, "not-ours", pulse_test_sleeps_here);
    assert_eq!(entry.stack, None, "{entry:?}");
    assert!(!report.contains("stack="), "{report}");
    assert!(!report.contains("stack_error"), "{report}");
    assert_eq!(APPLICATION_HANDLER_CALLS.load(SeqCst), 0);
    assert_eq!(handler_of(signal), application);
}
