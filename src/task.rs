//! What tokio-pulse knows about one managed task.
//!
//! [`TaskShared`] is a task's shared state: identity, counters, tier, what
//! snapshots, the watchdog and the hooks read. It lives in the task's one
//! allocation (`task_core::TaskCell`), next to its future; the task's
//! wrapper reaches it through one pointer, so the poll path never looks
//! anything up, and the registry keeps a plain pointer to it only so that
//! `snapshot()` can find it.
//!
//! Counters have a single writer, the thread polling the task (a task is
//! never polled by two threads at once), so they are updated with plain
//! relaxed loads and stores rather than read-modify-write instructions.

use std::borrow::Cow;
use std::fmt;
use std::panic::Location;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use crate::origins::OriginRef;
use crate::slow_lane::LaneEntry;
use crate::sync::{AtomicBool, AtomicU8, AtomicU64};
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
        // Process-wide and never contended in a model: plain std atomic.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
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
/// `repr(C)` keeps the fields every poll touches (the poll count, the
/// watchdog's request) at the front, on the cache line of the `Arc`'s
/// counts, with the fields measured polls write just behind them.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct TaskShared {
    polls: AtomicU64,
    /// A tier the watchdog wants the task moved to at its next poll (0: none).
    forced_tier: AtomicU8,
    tier: AtomicU8,
    /// The task has misbehaved at least once (see `origins`).
    offended: AtomicBool,
    /// The task is in the registry (from its first `Pending`).
    registered: AtomicBool,
    busy_ns: AtomicU64,
    max_poll_ns: AtomicU64,
    slow_polls: AtomicU64,
    cpu_ns: AtomicU64,
    stuck_reports: AtomicU64,
    pub id: TaskId,
    pub name: Option<Cow<'static, str>>,
    pub location: &'static Location<'static>,
    /// The task's place in the slow lane, made when it first waits there
    /// (most tasks never do); see `slow_lane`.
    lane: OnceLock<Arc<LaneEntry>>,
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
            stuck_reports: AtomicU64::new(0),
            forced_tier: AtomicU8::new(0),
            offended: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            lane: OnceLock::new(),
        }
    }

    /// The task's slow-lane entry, made on first use.
    pub(crate) fn lane(&self) -> &Arc<LaneEntry> {
        self.lane.get_or_init(Arc::default)
    }

    /// The task's slow-lane entry, if it ever waited in the lane.
    pub(crate) fn lane_if_used(&self) -> Option<&Arc<LaneEntry>> {
        self.lane.get()
    }

    pub(crate) fn tier(&self) -> Tier {
        Tier::from_u8(self.tier.load(Relaxed))
    }

    pub(crate) fn set_tier(&self, tier: Tier) {
        self.tier.store(tier as u8, Relaxed);
    }

    /// Counts one poll (of a task observed through runtime hooks; a managed
    /// task counts in its core, see `set_polls`). Called only by the thread
    /// that just polled the task.
    #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
    #[inline(always)]
    pub(crate) fn count_poll(&self) {
        bump(&self.polls, 1);
    }

    /// Publishes the poll count a managed task keeps in its core (see
    /// `TaskCore::publish`). Called only by the thread polling the task.
    #[inline]
    pub(crate) fn set_polls(&self, polls: u64) {
        self.polls.store(polls, Relaxed);
    }

    /// Records what was measured of one poll: `poll_ns`, what it is judged
    /// to have taken (a lower bound), `busy_ns`, what it adds to the
    /// estimate of the task's busy time (see `task_core`), and whether it
    /// was slow. Called only by the thread that just polled the task.
    #[inline]
    pub(crate) fn record_measured(&self, poll_ns: u64, busy_ns: u64, slow: bool) {
        bump(&self.busy_ns, busy_ns);
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

    /// Asks the task's next poll to move it to `tier` (used by the watchdog).
    pub(crate) fn force_tier(&self, tier: Tier) {
        self.forced_tier.store(tier as u8 | 0x80, Relaxed);
    }

    /// Takes a pending request from [`force_tier`](Self::force_tier).
    #[inline]
    pub(crate) fn take_forced_tier(&self) -> Option<Tier> {
        if self.forced_tier.load(Relaxed) == 0 {
            return None;
        }
        let v = self.forced_tier.swap(0, Relaxed);
        (v != 0).then(|| Tier::from_u8(v & 0x7f))
    }

    /// Where the task comes from: its name if it has one, else its site.
    pub(crate) fn origin(&self) -> OriginRef<'_> {
        match &self.name {
            Some(name) => OriginRef::Name(name),
            None => OriginRef::Site(self.location),
        }
    }

    /// Whether the task is in the registry.
    pub(crate) fn is_registered(&self) -> bool {
        self.registered.load(Relaxed)
    }

    pub(crate) fn set_registered(&self) {
        self.registered.store(true, Relaxed);
    }

    /// Marks the task as having misbehaved; `true` the first time.
    pub(crate) fn mark_offended(&self) -> bool {
        !self.offended.swap(true, Relaxed)
    }

    pub(crate) fn offended(&self) -> bool {
        self.offended.load(Relaxed)
    }

    pub(crate) fn record_stuck(&self) {
        self.stuck_reports.fetch_add(1, Relaxed);
    }

    pub(crate) fn counters(&self) -> Counters {
        Counters {
            polls: self.polls.load(Relaxed),
            slow_polls: self.slow_polls.load(Relaxed),
            busy_ns: self.busy_ns.load(Relaxed),
            max_poll_ns: self.max_poll_ns.load(Relaxed),
            cpu_ns: self.cpu_ns.load(Relaxed),
            stuck_reports: self.stuck_reports.load(Relaxed),
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
    pub stuck_reports: u64,
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

/// Model check of the watchdog's escalation request against the poller
/// taking it: `RUSTFLAGS="--cfg pulse_loom" cargo test --lib --release loom`.
#[cfg(all(test, pulse_loom))]
mod loom_models {
    use super::*;
    use loom::thread;

    /// A request made while the task is being polled is taken exactly once:
    /// never lost, never applied twice.
    #[test]
    fn loom_a_forced_tier_request_is_taken_exactly_once() {
        loom::model(|| {
            let task = Arc::new(TaskShared::new(None, Location::caller()));
            let t = task.clone();
            let watchdog = thread::spawn(move || t.force_tier(Tier::Isolate));
            let mut taken = usize::from(task.take_forced_tier().is_some());
            watchdog.join().unwrap();
            taken += usize::from(task.take_forced_tier().is_some());
            assert_eq!(taken, 1);
            assert_eq!(task.take_forced_tier(), None);
        });
    }
}
