//! The poll in progress on this thread.
//!
//! The wrapper publishes when its poll started, for whom, and how long a
//! slice the task has. Two readers:
//! - [`checkpoint`](crate::checkpoint), on the same thread, decides whether
//!   to give way (a thread-local `Cell`, plain data, nothing to dangle);
//! - the watchdog, on its own thread, looks for polls that have run too
//!   long. For it each thread that polls managed tasks owns a [`ThreadSlot`]
//!   of atomics, registered once per thread, written with two relaxed stores
//!   per poll and read without ever stopping the poller.

use std::cell::{Cell, OnceCell};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

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
#[derive(Debug)]
pub(crate) struct ThreadSlot {
    start_ns: AtomicU64,
    task_id: AtomicU64,
    pulse_id: AtomicU64,
    /// The start stamp of the poll last reported stuck, so that a poll is
    /// reported once however long it runs. Written by the watchdog only.
    pub reported_start_ns: AtomicU64,
    pub thread_name: Option<String>,
}

impl ThreadSlot {
    /// A consistent reading of the slot, or `None` if no managed poll is
    /// running (or one ended or began while it was read).
    pub(crate) fn read(&self) -> Option<CurrentPoll> {
        let start_ns = self.start_ns.load(Relaxed);
        if start_ns == 0 {
            return None;
        }
        let task_id = self.task_id.load(Relaxed);
        let pulse_id = self.pulse_id.load(Relaxed);
        // Seqlock-style: if the start stamp changed, the ids may belong to
        // another poll. A changed stamp means that poll was short anyway.
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
        }
        if poll.start_ns == 0 {
            return;
        }
        self.task_id.store(poll.task_id, Relaxed);
        self.pulse_id.store(poll.pulse_id, Relaxed);
        self.start_ns.store(poll.start_ns, Relaxed);
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
    let slot = Arc::new(ThreadSlot {
        start_ns: AtomicU64::new(0),
        task_id: AtomicU64::new(0),
        pulse_id: AtomicU64::new(0),
        reported_start_ns: AtomicU64::new(0),
        thread_name: std::thread::current().name().map(str::to_owned),
    });
    let mut slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    slots.retain(|s| s.strong_count() > 0);
    slots.push(Arc::downgrade(&slot));
    slot
}

/// Calls `f` with each live thread slot.
pub(crate) fn for_each_slot(mut f: impl FnMut(&ThreadSlot)) {
    let slots: Vec<Arc<ThreadSlot>> = {
        let slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter().filter_map(Weak::upgrade).collect()
    };
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
