//! The poll path allocates nothing: checked with a counting allocator over
//! many polls of managed futures, for a well-behaved task, a task in the
//! `Yield` tier, and with hooks installed.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio_pulse::{PollReport, PreemptionHooks, Pulse, PulseExt, TaskInfo, Tier};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: delegates to the system allocator; the counter is a const
// thread-local Cell, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Pending `n` times, spinning `work` in each poll, then ready.
struct Polls {
    left: u32,
    work: Duration,
}

impl Future for Polls {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.work.is_zero() {
            common::spin(self.work);
        }
        if self.left == 0 {
            return Poll::Ready(());
        }
        self.left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Polls `fut` to completion; returns allocations made after the first
/// `warmup` polls.
fn allocations_while_polling<F: Future + Unpin>(fut: F, warmup: u32) -> u64 {
    let mut polls = 0;
    allocations_after(fut, || {
        polls += 1;
        polls > warmup
    })
    .0
}

/// Polls `fut` to completion; returns the allocations made from the first
/// poll before which `warm()` holds on, and how many polls that counted.
fn allocations_after<F: Future + Unpin>(mut fut: F, mut warm: impl FnMut() -> bool) -> (u64, u32) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut counted = 0;
    let mut before = None;
    loop {
        if before.is_none() && warm() {
            before = Some(allocations());
        }
        counted += u32::from(before.is_some());
        if Pin::new(&mut fut).poll(&mut cx).is_ready() {
            return (allocations() - before.unwrap_or(allocations()), counted);
        }
    }
}

/// A `Pulse` whose tasks are never judged to misbehave on this machine,
/// however loaded, nor under valgrind (which runs the test ~50x slower, and
/// one thread at a time): a task's first offence allocates its origin's
/// record (once per origin; see the `Yield` test), and a poll descheduled
/// for a millisecond by other load would count as one. The CPU budget is
/// the whole window, so that no window is ever over it.
fn lenient() -> Pulse {
    Pulse::builder()
        .slow_poll_threshold(Duration::from_millis(50))
        .budget_window(Duration::from_millis(100))
        .cpu_budget(Duration::from_millis(100))
        .without_watchdog()
        .without_origin_memory()
        .build()
        .unwrap()
}

#[test]
fn a_hundred_thousand_managed_polls_allocate_nothing() {
    let pulse = lenient();
    let fut = Polls {
        left: 100_010,
        work: Duration::ZERO,
    }
    .pulse(&pulse);
    assert_eq!(allocations_while_polling(fut, 10), 0);
}

/// Remembers the highest tier any polled task was in.
#[derive(Default)]
struct HighestTier(AtomicU8);
impl PreemptionHooks for HighestTier {
    fn after_poll(&self, task: &TaskInfo<'_>, _poll: &PollReport) {
        self.0.fetch_max(task.tier() as u8, Ordering::Relaxed);
    }
}

#[test]
fn polls_of_a_yield_tier_task_allocate_nothing() {
    let pulse = Pulse::new();
    let highest = Arc::new(HighestTier::default());
    pulse.set_hooks(highest.clone());
    // 2 ms polls: promoted to Yield within a few polls (under valgrind,
    // more), then deferred and timed (CPU time included) on every other
    // poll.
    let fut = Polls {
        left: 400,
        work: Duration::from_millis(2),
    }
    .pulse_named(&pulse, "hog");
    // Warm until ten polls after reaching Yield: its first deferral makes
    // the task's slow-lane entry, and its origin records the offence.
    let mut since_yield = 0;
    let warm = || {
        if highest.0.load(Ordering::Relaxed) == Tier::Yield as u8 {
            since_yield += 1;
        }
        since_yield > 10
    };
    let (allocated, counted) = allocations_after(fut, warm);
    assert!(counted >= 200, "at Yield only for the last {counted} polls");
    assert_eq!(allocated, 0);
}

#[derive(Default)]
struct NoopHooks;
impl PreemptionHooks for NoopHooks {
    fn after_poll(&self, _task: &TaskInfo<'_>, poll: &PollReport) {
        std::hint::black_box(poll);
    }
}

#[test]
fn polls_with_hooks_installed_allocate_nothing() {
    let pulse = lenient();
    pulse.set_hooks(Arc::new(NoopHooks));
    let fut = Polls {
        left: 100_010,
        work: Duration::ZERO,
    }
    .pulse(&pulse);
    assert_eq!(allocations_while_polling(fut, 10), 0);
}
