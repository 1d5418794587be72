//! The tasks a `Pulse` observes runtime-wide, without managing them.
//!
//! Tokio's task hooks name a task only by its `tokio::task::Id`, so unlike
//! a managed task (whose wrapper holds its state) a runtime task's state
//! has to be found by id. This is the authoritative map, touched at spawn
//! and termination and by readers; the poll path goes through a per-thread
//! cache in front of it (see `runtime_hooks`).

use std::hash::{Hash, Hasher};
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::sharded::ShardedMap;
use crate::snapshot::{Snapshot, TaskSnapshot};
use crate::stats::{PulseStats, Totals};
use crate::task::TaskShared;
use crate::tier::{Escalation, EscalationPolicy, PerTier, Tier};

/// A `tokio::task::Id` as a number. Tokio does not expose one, but its `Id`
/// hashes as the `u64` it wraps; any other hashing still yields a stable
/// key, only less directly.
pub(crate) fn key_of(id: tokio::task::Id) -> u64 {
    struct Capture(u64);
    impl Hasher for Capture {
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(b);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
        fn finish(&self) -> u64 {
            self.0
        }
    }
    let mut capture = Capture(0);
    id.hash(&mut capture);
    capture.0
}

/// One task observed through the runtime hooks.
#[derive(Debug)]
pub(crate) struct RuntimeTask {
    /// Counters, tier and location, as for a managed task (no name: Tokio
    /// has none to give). Updated with `TaskShared`'s single-writer stores:
    /// in the rare overlap described below, one poll's count can be lost,
    /// never torn.
    pub shared: TaskShared,
    pub tokio_id: tokio::task::Id,
    /// The [`RuntimeTasks`] this task belongs to.
    pub owner: u64,
    /// The tier state machine. Behind a lock because Tokio can run a task's
    /// after-poll hook on one worker while another worker, having stolen
    /// the task once it was rescheduled, already polls it again; the lock
    /// is only tried, and only for polls that can change the tier.
    pub escalation: Mutex<Escalation>,
    /// Set at termination, so that stale per-thread cache entries are
    /// recognised (Tokio may reuse an id once a task is gone).
    pub ended: AtomicBool,
}

/// Every live runtime task of one `Pulse`, and the totals of those ended.
#[derive(Debug)]
pub(crate) struct RuntimeTasks {
    /// Distinguishes this set from another `Pulse`'s in per-thread caches.
    pub id: u64,
    tasks: ShardedMap<Arc<RuntimeTask>>,
    pub stats: PulseStats,
    /// As for managed tasks, but capped at [`Tier::Warn`]: the stronger
    /// interventions need a wrapper around the future.
    pub policy: EscalationPolicy,
    /// Set once hooks are installed into a runtime builder.
    pub installed: AtomicBool,
}

impl RuntimeTasks {
    pub(crate) fn new(config: &Config) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        RuntimeTasks {
            id: NEXT_ID.fetch_add(1, Relaxed),
            tasks: ShardedMap::default(),
            stats: PulseStats::default(),
            policy: config.escalation_policy(Tier::Warn),
            installed: AtomicBool::new(false),
        }
    }

    /// Records a task Tokio just spawned.
    pub(crate) fn spawned(
        &self,
        id: tokio::task::Id,
        location: &'static Location<'static>,
        now_ns: u64,
    ) {
        let task = Arc::new(RuntimeTask {
            shared: TaskShared::new(None, location),
            tokio_id: id,
            owner: self.id,
            escalation: Mutex::new(Escalation::starting_at(Tier::Monitor, now_ns)),
            ended: AtomicBool::new(false),
        });
        self.tasks.insert(key_of(id), task);
        self.stats.task_spawned();
    }

    pub(crate) fn get(&self, key: u64) -> Option<Arc<RuntimeTask>> {
        self.tasks.get(key)
    }

    /// Removes a terminated task, marking it ended. Its counters are folded
    /// into the totals by [`fold`](RuntimeTasks::fold), once its last poll
    /// has been recorded.
    pub(crate) fn remove(&self, key: u64) -> Option<Arc<RuntimeTask>> {
        let task = self.tasks.remove(key)?;
        task.ended.store(true, Relaxed);
        Some(task)
    }

    /// Moves an ended task's counters into the totals.
    pub(crate) fn fold(&self, task: &RuntimeTask) {
        self.stats.task_ended(&task.shared.counters());
    }

    /// Calls `f` on every live task, one shard locked at a time.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&RuntimeTask)) {
        self.tasks.for_each(|t| f(t));
    }

    /// Adds every live task to `snapshot.runtime_tasks`.
    pub(crate) fn snapshot_into(&self, snapshot: &mut Snapshot) {
        self.for_each(|task| {
            let mut t = TaskSnapshot::of(&task.shared);
            t.tokio_id = Some(task.tokio_id);
            snapshot.runtime_tasks.push(t);
        });
    }

    /// Live tasks per tier, without building a snapshot.
    #[cfg(feature = "metrics")]
    pub(crate) fn tier_counts(&self) -> PerTier<usize> {
        let mut tiers = Vec::new();
        self.for_each(|t| tiers.push(t.shared.tier()));
        PerTier::tally(tiers)
    }

    pub(crate) fn totals(&self) -> Totals {
        let mut live = Vec::new();
        self.for_each(|t| live.push(t.shared.counters()));
        self.stats.totals(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_keys_are_tokio_ids_and_distinct() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let a = rt.spawn(async {});
        let b = rt.spawn(async {});
        assert_ne!(key_of(a.id()), key_of(b.id()));
        assert_eq!(key_of(a.id()).to_string(), a.id().to_string());
    }
}
