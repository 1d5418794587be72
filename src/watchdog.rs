//! The stuck-poll watchdog: reporting polls that have run too long while
//! they still run.
//!
//! The engine's ticker runs it at each tick: a plain OS thread, not a Tokio
//! task, because a stuck poll may hold every worker and the watchdog must
//! still run. A poll is charged from the moment the ticker first saw it
//! running (see `context::Sightings`), so "running for 100 ms" means at
//! least 100 ms. A poll found past the threshold is reported once, while it
//! is still running: a `tracing` error naming the task, its spawn site and
//! the stack of the stuck thread, a counter, an entry in
//! `Pulse::snapshot()`, and a request that the task's next poll be
//! isolated.
//!
//! The stack is captured once per stuck poll, when it is first reported,
//! after the scan has let go of the thread slots' list (see `stack` for
//! how, and [`report`] for how a stack of a later poll is told apart).

use std::borrow::Cow;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use crate::context::{self, Running, ThreadSlot};
use crate::snapshot::StuckPoll;
use crate::stack::StackCapturer;
use crate::stats::PulseStats;
use crate::task::TaskId;
use crate::ticker::Ticker;
use crate::tier::Tier;
use crate::timing::schedstat::{SchedStatFile, charged_so_far};
use crate::timing::{as_nanos, clock};

/// A poll [`check`] found stuck, to be [`report`]ed.
pub(crate) struct Stuck {
    slot: Arc<ThreadSlot>,
    seq: u64,
    id: TaskId,
    name: Option<Cow<'static, str>>,
    location: &'static Location<'static>,
    isolated: bool,
    running_ns: u64,
}

/// Acts on `poll` (on `slot`'s thread, running at least `running_ns`) if
/// that is past `threshold_ns` and it was not reported before: returns it,
/// to be reported once the scan is over.
pub(crate) fn check(
    slot: &Arc<ThreadSlot>,
    poll: Running,
    running_ns: u64,
    threshold_ns: u64,
    stats: &PulseStats,
) -> Option<Stuck> {
    if running_ns < threshold_ns || !slot.sightings().report(poll.seq, running_ns) {
        return None;
    }
    // Act on the task, and copy what the report needs; the report is made
    // after, with the task let go (a subscriber may be slow).
    let found = context::inspect(slot, poll, |task| {
        task.record_stuck();
        let isolated = task.tier() >= Tier::Isolate;
        if !isolated {
            task.force_tier(Tier::Isolate);
        }
        (task.id, task.name.clone(), task.location, isolated)
    });
    let (id, name, location, isolated) = found?; // `None`: ended in the meantime
    stats.watchdog_report();
    Some(Stuck {
        slot: Arc::clone(slot),
        seq: poll.seq,
        id,
        name,
        location,
        isolated,
        running_ns,
    })
}

/// Reports a stuck poll: captures its thread's stack (if `stacks` is on),
/// keeps it for snapshots, and emits the `tracing` error.
///
/// The stack is kept only if it was copied while the poll still ran: the
/// poll's sequence number in the slot is checked before the signal is
/// sent (here and by [`check`]) and again once the handler has finished
/// its copy (see [`StackCapturer::capture`]). The thread's slot words
/// change with every poll, so the same odd number on both sides means
/// the thread never left that poll: a stack from a later poll, or from
/// the thread idling, is discarded.
pub(crate) fn report(stuck: Stuck, stacks: &StackCapturer) {
    let Stuck {
        slot,
        seq,
        id,
        name,
        location,
        isolated,
        running_ns,
    } = stuck;
    let still_running = || slot.seq() == seq;
    let captured = if still_running() {
        stacks.capture(&slot.stack_thread, still_running)
    } else {
        None // ended already: nothing to capture, nothing to say
    };
    let (stack, stack_error) = match captured {
        Some(Ok(stack)) => {
            slot.set_stuck_stack(seq, stack.clone());
            (Some(stack), None)
        }
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };
    let running_ms = running_ns / 1_000_000;
    let consequence = if isolated {
        "the task is already isolated, off the main workers"
    } else {
        "the task will be isolated at its next poll"
    };
    tracing::error!(
        task.id = id.as_u64(),
        task.name = name.as_deref().unwrap_or(""),
        task.location = %location,
        thread = slot.thread_name.as_deref().unwrap_or("<unnamed>"),
        running_ms,
        stack = stack.as_deref().map(tracing::field::display),
        stack_error = stack_error.as_ref().map(tracing::field::display),
        "tokio-pulse watchdog: a poll has been running for {running_ms} ms without yielding; {consequence}",
    );
}

/// Polls of the engine of `ticker` that have been running now for at
/// least `min`, counted from when its ticker first saw them.
pub(crate) fn stuck_polls(ticker: &Ticker, min: Duration) -> Vec<StuckPoll> {
    let (now, min_ns) = (clock().now_ns(), as_nanos(min));
    let mut found = Vec::new();
    context::for_each_slot(|slot| {
        let Some(poll) = slot.read().filter(|p| std::ptr::eq(p.ticker, ticker)) else {
            return;
        };
        let Some(seen) = slot.sightings().of(poll.seq) else {
            return;
        };
        let mut running_ns = now.saturating_sub(seen.first_ns);
        if running_ns < min_ns {
            return;
        }
        // Charged as the watchdog charges it (see `Engine::tick`). A poll
        // the watchdog has reported stays listed while it runs, charged at
        // least what the report said, whatever a later reading says (its
        // thread may be runnable for a moment, answering the stack
        // capture's signal).
        let reported = slot.sightings().reported(poll.seq);
        if let (Some((stamp_ns, before)), Some(figures)) = (
            seen.stamp,
            SchedStatFile::thread(slot.tid).and_then(|f| f.read()),
        ) {
            let stalled = ticker.stalled_since(seen.first_stalled_ns, now);
            let window_ns = now.saturating_sub(stamp_ns);
            let during = figures.since(before);
            running_ns = charged_so_far(running_ns, window_ns, during, stalled, slot.tid, min_ns);
            match reported {
                Some(charged_ns) => running_ns = running_ns.max(charged_ns),
                None if running_ns < min_ns => return,
                None => {}
            }
        }
        let task = context::inspect(slot, poll, |t| (t.id, t.name.clone(), t.location));
        if let Some((task, name, location)) = task {
            found.push(StuckPoll {
                task,
                name,
                location,
                running_for: Duration::from_nanos(running_ns),
                thread: slot.thread_name.clone(),
                stack: slot.stuck_stack(poll.seq),
            });
        }
    });
    found
}

#[cfg(all(
    test,
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod tests {
    use super::*;
    use crate::context::PollScope;
    use crate::stack::StackCapture;
    use crate::task::TaskShared;
    use crate::ticker::{Tick, Ticker};
    use std::sync::{Mutex, mpsc};

    /// A bound on waiting for an event, never a pause.
    const WITHIN: Duration = Duration::from_secs(10);

    /// The default capture signal, as `StackCapture::On` installs it.
    fn capture_signal() -> i32 {
        libc::SIGRTMIN() + 6
    }

    fn set_blocked(signal: i32, how: libc::c_int) {
        // SAFETY: sigemptyset initialises the zeroed set; pthread_sigmask
        // changes the calling thread's mask only.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            assert_eq!(libc::pthread_sigmask(how, &set, std::ptr::null_mut()), 0);
        }
    }

    fn is_pending(signal: i32) -> bool {
        // SAFETY: sigpending fills the zeroed set; sigismember reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            assert_eq!(libc::sigpending(&mut set), 0);
            libc::sigismember(&set, signal) == 1
        }
    }

    /// Where the polling thread waits while its poll runs. Says it is
    /// here first: a capture after that finds the thread in this function,
    /// whether still sending or already waiting.
    #[inline(never)]
    fn pulse_watchdog_test_polling_here(here: &mpsc::Sender<()>, until: &mpsc::Receiver<()>) {
        here.send(()).expect("the test listens");
        until.recv().expect("the test ends the poll");
        std::hint::black_box(until);
    }

    /// A thread in a poll of a task, and the slot that shows it.
    struct Polling {
        slot: Arc<ThreadSlot>,
        poll: Running,
        join: std::thread::JoinHandle<()>,
    }

    /// Starts a thread that enters a poll of `task` and then runs `body`
    /// (which may end the poll, by dropping the scope it is given).
    fn polling(task: &Arc<TaskShared>, body: impl FnOnce(PollScope) + Send + 'static) -> Polling {
        let (entered_tx, entered) = mpsc::channel();
        let join = std::thread::spawn({
            let task = Arc::clone(task);
            move || {
                let ticker = Ticker::new(0);
                let scope = PollScope::enter(&task, &ticker, Tick::from_count(0), false);
                entered_tx.send(()).unwrap();
                body(scope);
            }
        });
        entered.recv_timeout(WITHIN).expect("the poll started");
        let mut found = None;
        context::for_each_slot(|slot| {
            if let Some(poll) = slot.read().filter(|p| std::ptr::eq(p.task, &**task)) {
                found = Some((Arc::clone(slot), poll));
            }
        });
        let (slot, poll) = found.expect("the poll is in its thread's slot");
        Polling { slot, poll, join }
    }

    /// Reports `polling`'s poll as stuck, with the `tracing` output.
    fn report_stuck(polling: &Polling, capturer: &StackCapturer) -> String {
        let stuck = check(&polling.slot, polling.poll, 1, 1, &PulseStats::default())
            .expect("the poll is still running when it is checked");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer({
                let logs = logs.clone();
                move || Logs(logs.clone())
            })
            .finish();
        tracing::subscriber::with_default(subscriber, || report(stuck, capturer));
        String::from_utf8(logs.lock().unwrap().clone()).unwrap()
    }

    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capturer() -> StackCapturer {
        let capturer = StackCapturer::start(StackCapture::On).with_timeout(WITHIN);
        assert_eq!(capturer.state(), crate::stack::CaptureState::Running);
        capturer
    }

    #[test]
    fn a_stack_copied_during_the_poll_is_kept_for_it() {
        let task = Arc::new(TaskShared::new(Some("kept".into()), Location::caller()));
        let (here_tx, here) = mpsc::channel();
        let (end_tx, end) = mpsc::channel();
        let polling = polling(&task, move |_scope| {
            pulse_watchdog_test_polling_here(&here_tx, &end);
        });
        here.recv_timeout(WITHIN).unwrap();

        let logs = report_stuck(&polling, &capturer());
        let kept = polling.slot.stuck_stack(polling.poll.seq);
        end_tx.send(()).unwrap();
        polling.join.join().unwrap();

        let stack = kept.expect("the stack is kept for the poll");
        assert!(
            stack.contains("pulse_watchdog_test_polling_here"),
            "{stack}"
        );
        assert!(logs.contains("stack="), "{logs}");
        assert_eq!(polling.slot.stuck_stack(polling.poll.seq + 2), None);
    }

    /// The thread blocks the capture signal, so the copy waits until it
    /// has ended its poll: the capture must find that out and keep
    /// nothing, rather than attach the stack of what came after.
    #[test]
    fn a_stack_copied_after_the_poll_ended_is_discarded() {
        let task = Arc::new(TaskShared::new(Some("moved-on".into()), Location::caller()));
        let signal = capture_signal();
        let (blocked_tx, blocked) = mpsc::channel();
        let (end_tx, end) = mpsc::channel();
        let polling = polling(&task, move |scope| {
            set_blocked(signal, libc::SIG_BLOCK);
            blocked_tx.send(()).unwrap();
            // The capture's signal arrives; the poll ends before the
            // handler can run.
            let deadline = std::time::Instant::now() + WITHIN;
            while !is_pending(signal) {
                assert!(std::time::Instant::now() < deadline, "no signal came");
                std::thread::yield_now();
            }
            drop(scope);
            set_blocked(signal, libc::SIG_UNBLOCK); // the handler runs here
            end.recv().unwrap();
        });
        blocked.recv_timeout(WITHIN).unwrap();

        let logs = report_stuck(&polling, &capturer());
        let kept = polling.slot.stuck_stack(polling.poll.seq);
        end_tx.send(()).unwrap();
        polling.join.join().unwrap();

        assert_eq!(kept, None);
        assert!(!logs.contains("stack="), "{logs}");
        assert!(
            logs.contains("stack_error=the thread had moved on"),
            "{logs}"
        );
    }
}
