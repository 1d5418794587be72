//! What tokio-pulse knows about one managed task.
//!
//! [`TaskShared`] is the one place a task's state lives. The task's wrapper
//! holds it directly (an `Arc`), so the poll path never looks anything up;
//! the registry holds a second reference only so `snapshot()` can find it.
//! Counters have a single writer, the thread polling the task (a task is
//! never polled by two threads at once), so they are updated with plain
//! relaxed loads and stores rather than read-modify-write instructions.

use std::borrow::Cow;
use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use crate::stats::{POLL_TIME_BUCKETS, PollHistogram, bucket_of};
use crate::tier::Tier;

/// A managed task's identifier, unique within the process.
///
/// This is tokio-pulse's own id, assigned at spawn; it is not Tokio's
/// `task::Id` (which only exists once Tokio has spawned the task).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub(crate) u64);

impl TaskId {
    /// The id as a number, e.g. for a metrics label.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    fn next() -> TaskId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TaskId(NEXT.fetch_add(1, Relaxed))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identity and live counters of one managed task.
///
/// `repr(C)` keeps the fields every poll writes (polls, busy time, the
/// longest poll, and the histogram's first buckets, where short polls land)
/// together at the front, right after the `Arc`'s counts, so that a poll
/// usually dirties one cache line of the task's state rather than three.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct TaskShared {
    polls: AtomicU64,
    busy_ns: AtomicU64,
    max_poll_ns: AtomicU64,
    histogram: [AtomicU64; POLL_TIME_BUCKETS],
    slow_polls: AtomicU64,
    cpu_ns: AtomicU64,
    pub id: TaskId,
    pub name: Option<Cow<'static, str>>,
    pub location: &'static Location<'static>,
    tier: AtomicU8,
}

impl TaskShared {
    pub(crate) fn new(
        name: Option<Cow<'static, str>>,
        location: &'static Location<'static>,
    ) -> Self {
        TaskShared {
            id: TaskId::next(),
            name,
            location,
            tier: AtomicU8::new(Tier::Monitor as u8),
            polls: AtomicU64::new(0),
            slow_polls: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            max_poll_ns: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            histogram: Default::default(),
        }
    }

    pub(crate) fn tier(&self) -> Tier {
        Tier::from_u8(self.tier.load(Relaxed))
    }

    pub(crate) fn set_tier(&self, tier: Tier) {
        self.tier.store(tier as u8, Relaxed);
    }

    /// Records one poll. Called only by the thread that just polled the task.
    #[inline]
    pub(crate) fn record_poll(&self, poll_ns: u64, slow: bool) {
        bump(&self.polls, 1);
        bump(&self.busy_ns, poll_ns);
        bump(&self.histogram[bucket_of(poll_ns)], 1);
        if slow {
            bump(&self.slow_polls, 1);
        }
        if poll_ns > self.max_poll_ns.load(Relaxed) {
            self.max_poll_ns.store(poll_ns, Relaxed);
        }
    }

    /// Records CPU time measured around a suspect's poll.
    pub(crate) fn record_cpu(&self, cpu_ns: u64) {
        bump(&self.cpu_ns, cpu_ns);
    }

    pub(crate) fn counters(&self) -> Counters {
        Counters {
            polls: self.polls.load(Relaxed),
            slow_polls: self.slow_polls.load(Relaxed),
            busy_ns: self.busy_ns.load(Relaxed),
            max_poll_ns: self.max_poll_ns.load(Relaxed),
            cpu_ns: self.cpu_ns.load(Relaxed),
            histogram: PollHistogram {
                counts: self.histogram.each_ref().map(|a| a.load(Relaxed)),
            },
        }
    }
}

/// Single-writer increment: a load and a store, no locked instruction.
#[inline(always)]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

/// A point-in-time copy of a task's counters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub polls: u64,
    pub slow_polls: u64,
    pub busy_ns: u64,
    pub max_poll_ns: u64,
    pub cpu_ns: u64,
    pub histogram: PollHistogram,
}

/// A borrowed view of a managed task, handed to [`PreemptionHooks`](crate::PreemptionHooks).
#[derive(Clone, Copy)]
pub struct TaskInfo<'a> {
    pub(crate) shared: &'a TaskShared,
}

impl TaskInfo<'_> {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.shared.id
    }

    /// The name given at spawn, if any.
    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// Where the task was spawned (or wrapped).
    pub fn location(&self) -> &'static Location<'static> {
        self.shared.location
    }

    /// The task's current tier.
    pub fn tier(&self) -> Tier {
        self.shared.tier()
    }
}

impl fmt::Debug for TaskInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskInfo")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("location", &format_args!("{}", self.location()))
            .field("tier", &self.tier())
            .finish()
    }
}
