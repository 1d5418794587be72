//! The managed poll in progress on each thread.
//!
//! Every thread that polls managed futures owns a [`ThreadSlot`], made
//! once per thread and listed for the engines' tickers. A poll writes into
//! it when it starts (which task, which engine's ticker, the tick it
//! started at) and when it ends; nothing else, and no other thread writes
//! those words. Three readers:
//! - [`checkpoint`](crate::checkpoint), on the same thread, asks whether
//!   the current poll has used its slice;
//! - the ticker of the poll's engine, on its own thread, notes when it
//!   first saw each poll running (the start of what the poll is charged)
//!   and whether it is still the same poll a tick later (a long one);
//! - the watchdog, run by the ticker, reports polls that run too long,
//!   and captures the thread's stack through the handle the slot keeps
//!   (see `stack`), registered with the slot, once per thread.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex, Weak};

use crossbeam_utils::CachePadded;

use crate::stack::{StackError, ThreadHandle};
use crate::sync::{AtomicPtr, AtomicU64, fence, lock};
use crate::task::TaskShared;
use crate::ticker::{Tick, Ticker};
use crate::timing::schedstat::{SchedStat, SchedStatFile};

/// What the ticker can see of one thread's managed polls.
///
/// The poll words are a seqlock: `seq` is odd while a poll runs. A poll
/// writes the task, the ticker and the start, then the odd `seq` with
/// `Release`; it ends with the next even `seq` and a `Release` fence, so
/// that the next poll's words cannot be seen before it. A reader loads
/// `seq` with `Acquire`, the words, then (after an `Acquire` fence) `seq`
/// again, and trusts the words only if both loads agree and are odd. On
/// x86-64 none of these orderings costs an instruction: they only keep the
/// compiler from reordering. The `loom` model below checks the protocol.
#[derive(Debug)]
pub(crate) struct ThreadSlot {
    poll: CachePadded<PollWords>,
    seen: CachePadded<Sightings>,
    /// The thread's name, for reports.
    pub thread_name: Option<String>,
    /// The thread's kernel id (Linux), for reading its scheduler figures.
    pub tid: i32,
    /// The thread's own scheduler figures, opened at its first long poll;
    /// used by that thread only.
    own_figures: std::sync::OnceLock<Option<SchedStatFile>>,
    /// The thread, for the watchdog's stack captures: registered with the
    /// slot, so never on the poll path. An error where the thread cannot
    /// be captured (another platform; a thread on a foreign stack).
    pub stack_thread: Result<ThreadHandle, StackError>,
    /// The stack the watchdog captured of the poll it last reported stuck
    /// on this thread, with that poll's sequence number: shown by
    /// snapshots while that poll runs, replaced at the next report.
    stuck_stack: Mutex<Option<(u64, String)>>,
}

#[derive(Debug)]
struct PollWords {
    seq: AtomicU64,
    /// The task polled: readable only through [`inspect`].
    task: AtomicPtr<TaskShared>,
    /// The ticker of the engine managing the task: names the engine.
    ticker: AtomicPtr<Ticker>,
    /// The tick count at the poll's start, shifted left once; the low bit
    /// says the task is at `Yield` or above (its slice is shorter).
    start: AtomicU64,
}

/// What the ticker of the poll's engine noted about the thread's current
/// poll: when it first saw it running, the ticker's stalls so far then, and
/// the thread's scheduler figures from about then (a reading at most a
/// slow-poll threshold older; see `engine`). Written by tickers (one at a
/// time, under `writer`), read by the poll itself when it ends and by the
/// watchdog, as a seqlock on `seq` (0 while being written).
#[derive(Debug, Default)]
pub(crate) struct Sightings {
    writer: std::sync::atomic::AtomicBool,
    seq: std::sync::atomic::AtomicU64,
    first_ns: std::sync::atomic::AtomicU64,
    first_stalled_ns: std::sync::atomic::AtomicU64,
    /// 0: no figures yet.
    stamp_ns: std::sync::atomic::AtomicU64,
    stamp_cpu_ns: std::sync::atomic::AtomicU64,
    stamp_delay_ns: std::sync::atomic::AtomicU64,
    /// The poll last reported stuck, so that a poll is reported once.
    reported_seq: std::sync::atomic::AtomicU64,
    /// What the watchdog charged that poll when it reported it.
    reported_ns: std::sync::atomic::AtomicU64,
}

/// What a ticker noted about one poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sighting {
    /// When the poll was first seen running.
    pub first_ns: u64,
    /// The ticker's stalls so far (see `ticker`), then.
    pub first_stalled_ns: u64,
    /// A reading of its thread's scheduler figures, and when it was taken.
    pub stamp: Option<(u64, SchedStat)>,
}

impl Sightings {
    /// What was noted about poll `seq`, if anything.
    pub(crate) fn of(&self, seq: u64) -> Option<Sighting> {
        use std::sync::atomic::{Ordering::Acquire, fence};
        if self.seq.load(Acquire) != seq {
            return None;
        }
        let first_ns = self.first_ns.load(Relaxed);
        let first_stalled_ns = self.first_stalled_ns.load(Relaxed);
        let stamp_ns = self.stamp_ns.load(Relaxed);
        let stamp = SchedStat {
            cpu_ns: self.stamp_cpu_ns.load(Relaxed),
            delay_ns: self.stamp_delay_ns.load(Relaxed),
        };
        fence(Acquire);
        (self.seq.load(Relaxed) == seq).then_some(Sighting {
            first_ns,
            first_stalled_ns,
            stamp: (stamp_ns != 0).then_some((stamp_ns, stamp)),
        })
    }

    /// Notes that poll `seq` is running at `now_ns`, with the ticker's
    /// stalls so far at `stalled_ns`: the first time, when, and a reading
    /// of the thread's scheduler figures from `figures` (its time and
    /// figures); if there was none to take then, the next time. Returns
    /// what is noted now.
    pub(crate) fn see(
        &self,
        seq: u64,
        now_ns: u64,
        stalled_ns: u64,
        figures: impl FnOnce() -> Option<(u64, SchedStat)>,
    ) -> Sighting {
        let known = self.of(seq);
        if let Some(k) = known.filter(|k| k.stamp.is_some()) {
            return k;
        }
        let mut noted = known.unwrap_or(Sighting {
            first_ns: now_ns,
            first_stalled_ns: stalled_ns,
            stamp: None,
        });
        noted.stamp = figures();
        self.write(seq, noted);
        noted
    }

    /// Notes that the watchdog reports poll `seq`, charged `running_ns`;
    /// `false` if it reported that poll before. Only the poll's own
    /// engine's ticker reports it.
    pub(crate) fn report(&self, seq: u64, running_ns: u64) -> bool {
        use std::sync::atomic::Ordering::Release;
        if self.reported_seq.load(Relaxed) == seq {
            return false;
        }
        self.reported_ns.store(running_ns, Relaxed);
        self.reported_seq.store(seq, Release);
        true
    }

    /// What the watchdog charged poll `seq` when it reported it, if it
    /// did.
    pub(crate) fn reported(&self, seq: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Acquire;
        (self.reported_seq.load(Acquire) == seq).then(|| self.reported_ns.load(Relaxed))
    }

    fn write(&self, seq: u64, s: Sighting) {
        use std::sync::atomic::{
            Ordering::{Acquire, Release},
            fence,
        };
        if self.writer.swap(true, Acquire) {
            return; // another engine's ticker is writing: next tick
        }
        self.seq.store(0, Relaxed);
        fence(Release);
        self.first_ns.store(s.first_ns, Relaxed);
        self.first_stalled_ns.store(s.first_stalled_ns, Relaxed);
        let (stamp_ns, figures) = s.stamp.unwrap_or_default();
        self.stamp_ns.store(stamp_ns, Relaxed);
        self.stamp_cpu_ns.store(figures.cpu_ns, Relaxed);
        self.stamp_delay_ns.store(figures.delay_ns, Relaxed);
        self.seq.store(seq, Release);
        self.writer.store(false, Release);
    }
}

/// A consistent reading of a slot: the poll running on its thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Running {
    pub seq: u64,
    /// The task polled; dereference it only through [`inspect`].
    pub task: *const TaskShared,
    pub ticker: *const Ticker,
    pub start: u64,
}

impl ThreadSlot {
    fn new(
        thread_name: Option<String>,
        tid: i32,
        stack_thread: Result<ThreadHandle, StackError>,
    ) -> Self {
        ThreadSlot {
            poll: CachePadded::new(PollWords {
                seq: AtomicU64::new(0),
                task: AtomicPtr::new(ptr::null_mut()),
                ticker: AtomicPtr::new(ptr::null_mut()),
                start: AtomicU64::new(0),
            }),
            seen: CachePadded::new(Sightings::default()),
            thread_name,
            tid,
            own_figures: std::sync::OnceLock::new(),
            stack_thread,
            stuck_stack: Mutex::new(None),
        }
    }

    /// Keeps `stack`, captured during poll `seq`.
    pub(crate) fn set_stuck_stack(&self, seq: u64, stack: String) {
        *lock(&self.stuck_stack) = Some((seq, stack));
    }

    /// The stack captured during poll `seq`, if any.
    pub(crate) fn stuck_stack(&self, seq: u64) -> Option<String> {
        match &*lock(&self.stuck_stack) {
            Some((captured, stack)) if *captured == seq => Some(stack.clone()),
            _ => None,
        }
    }

    /// The scheduler's figures for this slot's thread, read by that
    /// thread itself (after a long poll); `None` off Linux.
    pub(crate) fn own_figures(&self) -> Option<SchedStat> {
        self.own_figures
            .get_or_init(SchedStatFile::current_thread)
            .as_ref()?
            .read()
    }

    /// The poll running on the slot's thread, if any (and if it did not
    /// start or end while it was read: such a poll was short, and the next
    /// reading will do).
    pub(crate) fn read(&self) -> Option<Running> {
        let w = &self.poll;
        let seq = w.seq.load(Acquire);
        if seq % 2 == 0 {
            return None;
        }
        let running = Running {
            seq,
            task: w.task.load(Relaxed),
            ticker: w.ticker.load(Relaxed),
            start: w.start.load(Relaxed),
        };
        fence(Acquire);
        (w.seq.load(Relaxed) == seq).then_some(running)
    }

    /// The poll words' sequence number (for activity tracking).
    pub(crate) fn seq(&self) -> u64 {
        self.poll.seq.load(Relaxed)
    }

    /// The ticker that polled last on this thread.
    pub(crate) fn last_ticker(&self) -> *const Ticker {
        self.poll.ticker.load(Relaxed)
    }

    pub(crate) fn sightings(&self) -> &Sightings {
        &self.seen
    }

    /// Publishes a poll that starts, unless one is running already on this
    /// thread (managed futures nest: a managed request inside a managed
    /// task): then the outer poll stays published, the one that holds the
    /// thread, and `None` is returned. Else returns the poll's sequence
    /// number.
    #[inline(always)]
    fn start(&self, task: *const TaskShared, ticker: *const Ticker, start: u64) -> Option<u64> {
        let w = &self.poll;
        let seq = w.seq.load(Relaxed);
        if seq % 2 == 1 {
            return None;
        }
        w.task.store(task.cast_mut(), Relaxed);
        w.ticker.store(ticker.cast_mut(), Relaxed);
        w.start.store(start, Relaxed);
        w.seq.store(seq + 1, Release);
        Some(seq + 1)
    }

    /// Ends the poll published with `seq`.
    #[inline(always)]
    fn end(&self, seq: u64) {
        self.poll.seq.store(seq + 1, Relaxed);
        fence(Release);
    }
}

/// The poll running on this thread, as `checkpoint` needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CurrentPoll {
    /// The engine's ticker: alive while the poll runs.
    pub ticker: *const Ticker,
    /// The tick the poll started at.
    pub start: Tick,
    /// The task is at `Yield` or above.
    pub yield_slice: bool,
}

thread_local! {
    /// This thread's slot, or null before the first managed poll (and
    /// after the thread's `OWNER` is gone). No destructor: readable during
    /// any other thread-local's destruction.
    static SLOT: Cell<*const ThreadSlot> = const { Cell::new(ptr::null()) };
    /// Keeps this thread's slot alive until the thread exits.
    static OWNER: Owner = const { Owner(Cell::new(None)) };
}

struct Owner(Cell<Option<Arc<ThreadSlot>>>);

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = SLOT.try_with(|s| s.set(ptr::null()));
        drop(self.0.take());
    }
}

/// Every thread that has polled a managed task, for the tickers.
static SLOTS: Mutex<Vec<Weak<ThreadSlot>>> = Mutex::new(Vec::new());

/// This thread's slot, registering it on first use; `None` while the
/// thread exits.
#[inline(always)]
fn slot() -> Option<&'static ThreadSlot> {
    let p = SLOT.try_with(Cell::get).unwrap_or(ptr::null());
    if p.is_null() {
        return register();
    }
    // SAFETY: `SLOT` holds a pointer into the `Arc` that this thread's
    // `OWNER` keeps alive, and `OWNER`'s destructor clears `SLOT` before
    // releasing it; the slot is only used on this thread, within the call
    // that read the pointer.
    Some(unsafe { &*p })
}

#[cold]
#[inline(never)]
fn register() -> Option<&'static ThreadSlot> {
    let slot = Arc::new(ThreadSlot::new(
        std::thread::current().name().map(str::to_owned),
        crate::timing::schedstat::current_tid(),
        ThreadHandle::current(),
    ));
    let p = Arc::as_ptr(&slot);
    OWNER.try_with(|o| o.0.set(Some(Arc::clone(&slot)))).ok()?;
    SLOT.try_with(|s| s.set(p)).ok()?;
    let mut slots = lock(&SLOTS);
    slots.retain(|s| s.strong_count() > 0);
    slots.push(Arc::downgrade(&slot));
    drop(slots);
    // SAFETY: as in `slot`: `OWNER` now holds the `Arc`.
    Some(unsafe { &*p })
}

/// Calls `f` with each live thread slot (holding the list's lock: `f`
/// must be short; it may keep a clone of the slot for later).
pub(crate) fn for_each_slot(mut f: impl FnMut(&Arc<ThreadSlot>)) {
    let slots = lock(&SLOTS);
    for slot in slots.iter().filter_map(Weak::upgrade) {
        f(&slot);
    }
}

/// The managed poll running on this thread, if any.
#[inline]
pub(crate) fn current() -> Option<CurrentPoll> {
    let p = SLOT.try_with(Cell::get).unwrap_or(ptr::null());
    if p.is_null() {
        return None;
    }
    // SAFETY: as in `slot`.
    let w = unsafe { &(*p).poll };
    if w.seq.load(Relaxed) % 2 == 0 {
        return None;
    }
    let start = w.start.load(Relaxed);
    Some(CurrentPoll {
        ticker: w.ticker.load(Relaxed),
        start: Tick::from_count(start >> 1),
        yield_slice: start & 1 == 1,
    })
}

/// Marks a managed poll as running until dropped, also when the poll
/// panics. A poll nested in another managed poll on the same thread is not
/// published: the outer one is, as the poll that holds the thread.
pub(crate) struct PollScope {
    /// The slot and the poll's sequence number in it, if published.
    published: Option<(&'static ThreadSlot, u64)>,
}

impl PollScope {
    #[inline(always)]
    pub(crate) fn enter(
        task: &TaskShared,
        ticker: &Ticker,
        start: Tick,
        yield_slice: bool,
    ) -> PollScope {
        let published = slot().and_then(|slot| {
            let seq = slot.start(task, ticker, start.count() << 1 | u64::from(yield_slice))?;
            Some((slot, seq))
        });
        PollScope { published }
    }

    /// The poll's slot and sequence number in it, if it was published.
    pub(crate) fn slot(&self) -> Option<(&'static ThreadSlot, u64)> {
        self.published
    }
}

impl Drop for PollScope {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some((slot, seq)) = self.published {
            slot.end(seq);
        }
    }
}

/// The task a ticker is inspecting now (its address), or 0; see [`inspect`].
static INSPECTING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One inspection at a time, process-wide (each engine has its ticker).
static INSPECTOR: Mutex<()> = Mutex::new(());

/// Runs `f` on the task of `poll`, found running in `slot`, if that poll is
/// still running: a ticker's way to a task it saw in a slot, registered or
/// not (a task registers at its first `Pending`; see `registry`).
///
/// A poll in progress keeps its task alive, but it may end, and its task
/// be freed, at any moment after the slot was read. So the inspector
/// first announces the task it is about to read, then checks the poll
/// still runs; a task's memory, before it is freed, waits out any
/// announcement of it ([`before_free`]). With a sequentially consistent
/// fence on both sides, either the inspector sees the poll ended, or the
/// freeing thread sees the announcement: never neither. The fence costs the
/// freeing side once per task, the inspecting side once per inspection.
pub(crate) fn inspect<R>(
    slot: &ThreadSlot,
    poll: Running,
    f: impl FnOnce(&TaskShared) -> R,
) -> Option<R> {
    use std::sync::atomic::{Ordering::SeqCst, fence};
    let _one_at_a_time = lock(&INSPECTOR);
    INSPECTING.store(poll.task as usize, SeqCst);
    fence(SeqCst);
    let out = (slot.seq() == poll.seq).then(|| {
        // SAFETY: the poll was still running after the announcement, so
        // the task was alive then, and `before_free` keeps it alive until
        // the announcement is withdrawn below.
        f(unsafe { &*poll.task })
    });
    INSPECTING.store(0, SeqCst);
    out
}

/// Called just before a task's memory is freed: waits while a ticker is
/// inspecting it (a few microseconds at most).
pub(crate) fn before_free(task: &TaskShared) {
    use std::sync::atomic::{Ordering::SeqCst, fence};
    fence(SeqCst);
    let me = std::ptr::from_ref(task) as usize;
    while INSPECTING.load(SeqCst) == me {
        std::hint::spin_loop();
    }
}

/// Model check of the slot protocol: `RUSTFLAGS="--cfg pulse_loom" cargo
/// test --lib --release loom`.
#[cfg(all(test, pulse_loom))]
mod loom_models {
    use super::*;
    use loom::thread;

    /// While a thread ends one poll and starts the next, a reader sees
    /// either poll whole, or nothing: never one poll's sequence number
    /// with another's task.
    #[test]
    fn loom_a_slot_reading_never_mixes_two_polls() {
        loom::model(|| {
            let slot = Arc::new(ThreadSlot::new(None, 0, Err(StackError::Unsupported)));
            let (a, b) = (
                ptr::dangling::<TaskShared>(),
                ptr::dangling::<TaskShared>().wrapping_add(1),
            );
            let first = slot.start(a, ptr::null(), 10).unwrap();
            let writer = {
                let slot = slot.clone();
                thread::spawn(move || {
                    slot.end(first);
                    slot.start(b, ptr::null(), 20);
                })
            };
            if let Some(seen) = slot.read() {
                let expected = if seen.seq == first { (a, 10) } else { (b, 20) };
                assert_eq!((seen.task, seen.start), expected, "{seen:?}");
            }
            writer.join().unwrap();
        });
    }
}
