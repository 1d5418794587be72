//! The poll in progress on this thread.
//!
//! The wrapper publishes when its poll started, for whom, and how long a
//! slice the task has. Two readers:
//! - [`checkpoint`](crate::checkpoint), on the same thread, decides whether
//!   to give way (a thread-local `Cell`, plain data, nothing to dangle);
//! - the watchdog, on its own thread, looks for polls that have run too
//!   long. For it each thread that polls managed tasks owns a [`ThreadSlot`]
//!   of atomics, registered once per thread, and read without ever stopping
//!   the poller. A poll writes its slot with three stores when it starts
//!   (task, pulse, start stamp; one more to clear an enclosing poll's stamp
//!   first when polls nest) and one when it ends.

use std::cell::{Cell, OnceCell};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex, Weak};

use crate::sync::{AtomicU64, fence, lock};

/// The managed poll running on this thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CurrentPoll {
    /// Clock reading at poll start; 0 when no managed poll is running.
    pub start_ns: u64,
    /// How long the task may run in this poll before `checkpoint` yields.
    pub slice_ns: u64,
    /// The task being polled.
    pub task_id: u64,
    /// The `Pulse` managing it.
    pub pulse_id: u64,
}

impl CurrentPoll {
    const NONE: CurrentPoll = CurrentPoll {
        start_ns: 0,
        slice_ns: 0,
        task_id: 0,
        pulse_id: 0,
    };
}

/// What the watchdog can see of one thread's current managed poll.
///
/// A seqlock whose sequence number is the start stamp (stamps never
/// repeat, and 0 means "no poll"): the poller clears the stamp, writes the
/// ids, then writes the new stamp with `Release`; a reader loads the stamp
/// with `Acquire`, the ids, then (after an `Acquire` fence) the stamp
/// again, and trusts the ids only if both stamps agree. On x86-64 these
/// orderings cost nothing over `Relaxed`: plain loads and stores already
/// behave so, and the orderings only stop the compiler from reordering
/// them. The `loom` model below checks the protocol.
#[derive(Debug)]
pub(crate) struct ThreadSlot {
    start_ns: AtomicU64,
    task_id: AtomicU64,
    pulse_id: AtomicU64,
    /// The start stamp of the poll last reported stuck, so that a poll is
    /// reported once however long it runs. Written by the watchdog only.
    pub reported_start_ns: std::sync::atomic::AtomicU64,
    pub thread_name: Option<String>,
}

impl ThreadSlot {
    fn new(thread_name: Option<String>) -> Self {
        ThreadSlot {
            start_ns: AtomicU64::new(0),
            task_id: AtomicU64::new(0),
            pulse_id: AtomicU64::new(0),
            reported_start_ns: std::sync::atomic::AtomicU64::new(0),
            thread_name,
        }
    }

    /// A consistent reading of the slot, or `None` if no managed poll is
    /// running (or one ended or began while it was read: such a poll was
    /// short, and the next reading will do).
    pub(crate) fn read(&self) -> Option<CurrentPoll> {
        let start_ns = self.start_ns.load(Acquire);
        if start_ns == 0 {
            return None;
        }
        let task_id = self.task_id.load(Relaxed);
        let pulse_id = self.pulse_id.load(Relaxed);
        fence(Acquire);
        (self.start_ns.load(Relaxed) == start_ns).then_some(CurrentPoll {
            start_ns,
            slice_ns: 0,
            task_id,
            pulse_id,
        })
    }

    /// Publishes `poll` (or "no poll" when its start is 0). `replacing`
    /// says whether a poll was published before: only then must the start
    /// be cleared first, so that a reader never pairs the old start with
    /// the new ids.
    #[inline]
    fn publish(&self, poll: &CurrentPoll, replacing: bool) {
        if replacing {
            self.start_ns.store(0, Relaxed);
            fence(Release);
        }
        if poll.start_ns == 0 {
            return;
        }
        self.task_id.store(poll.task_id, Relaxed);
        self.pulse_id.store(poll.pulse_id, Relaxed);
        self.start_ns.store(poll.start_ns, Release);
    }
}

struct ThreadContext {
    current: Cell<CurrentPoll>,
    slot: OnceCell<Arc<ThreadSlot>>,
}

thread_local! {
    static CONTEXT: ThreadContext = const {
        ThreadContext {
            current: Cell::new(CurrentPoll::NONE),
            slot: OnceCell::new(),
        }
    };
}

/// Every thread that has polled a managed task, for the watchdog.
static SLOTS: Mutex<Vec<Weak<ThreadSlot>>> = Mutex::new(Vec::new());

fn register_slot() -> Arc<ThreadSlot> {
    let slot = Arc::new(ThreadSlot::new(
        std::thread::current().name().map(str::to_owned),
    ));
    let mut slots = lock(&SLOTS);
    slots.retain(|s| s.strong_count() > 0);
    slots.push(Arc::downgrade(&slot));
    slot
}

/// Calls `f` with each live thread slot.
pub(crate) fn for_each_slot(mut f: impl FnMut(&ThreadSlot)) {
    let slots: Vec<Arc<ThreadSlot>> = lock(&SLOTS).iter().filter_map(Weak::upgrade).collect();
    slots.iter().for_each(|s| f(s));
}

/// The managed poll running on this thread, if any.
#[inline]
pub(crate) fn current() -> Option<CurrentPoll> {
    let cur = CONTEXT
        .try_with(|c| c.current.get())
        .unwrap_or(CurrentPoll::NONE);
    (cur.start_ns != 0).then_some(cur)
}

/// Marks a managed poll as running until dropped; restores the enclosing
/// one (managed futures nest, e.g. a managed request inside a managed task),
/// also when the poll panics.
pub(crate) struct PollScope {
    outer: CurrentPoll,
}

impl PollScope {
    #[inline]
    pub(crate) fn enter(poll: CurrentPoll) -> PollScope {
        let outer = CONTEXT
            .try_with(|c| {
                let outer = c.current.replace(poll);
                c.slot
                    .get_or_init(register_slot)
                    .publish(&poll, outer.start_ns != 0);
                outer
            })
            .unwrap_or(CurrentPoll::NONE);
        PollScope { outer }
    }
}

impl Drop for PollScope {
    #[inline]
    fn drop(&mut self) {
        let _ = CONTEXT.try_with(|c| {
            c.current.set(self.outer);
            if let Some(slot) = c.slot.get() {
                slot.publish(&self.outer, true);
            }
        });
    }
}

/// Model check of the slot protocol: `RUSTFLAGS="--cfg pulse_loom" cargo
/// test --lib --release loom`.
#[cfg(all(test, pulse_loom))]
mod loom_models {
    use super::*;
    use loom::thread;

    fn poll(start_ns: u64, id: u64) -> CurrentPoll {
        CurrentPoll {
            start_ns,
            slice_ns: 0,
            task_id: id,
            pulse_id: id,
        }
    }

    /// While a thread replaces one poll by another, a reader sees either
    /// poll whole, or nothing: never one poll's start with another's ids.
    #[test]
    fn loom_a_slot_reading_never_mixes_two_polls() {
        loom::model(|| {
            let slot = Arc::new(ThreadSlot::new(None));
            slot.publish(&poll(10, 1), false);
            let writer = {
                let slot = slot.clone();
                thread::spawn(move || slot.publish(&poll(20, 2), true))
            };
            if let Some(seen) = slot.read() {
                let expected = if seen.start_ns == 10 { 1 } else { 2 };
                assert_eq!(
                    (seen.task_id, seen.pulse_id),
                    (expected, expected),
                    "{seen:?}"
                );
            }
            writer.join().unwrap();
        });
    }
}
