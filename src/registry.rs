//! The set of live managed tasks, for `snapshot()` and the watchdog.
//!
//! Touched twice in a task's life (spawn and end) and by readers, never on
//! the poll path. Sharded so that spawns on different workers rarely meet on
//! one lock: the design document's known bottleneck was a single shared map
//! consulted on every poll, which this is not.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::task::{TaskId, TaskShared};

const SHARDS: usize = 32;

type Map = HashMap<TaskId, Arc<TaskShared>, BuildHasherDefault<IdHasher>>;
type Shard = Mutex<Map>;

/// Hashes a task id with one multiplication. Ids are assigned by the crate,
/// not by an attacker, so the default SipHash's flooding resistance buys
/// nothing here, and it was a fifth of the cost of a spawn's registration.
/// Multiplying by 2^64/φ spreads ids over the high bits; folding them down
/// spreads them over the low bits too, which the map takes its bucket index
/// from (the ids of one shard share their low five bits).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Debug)]
pub(crate) struct Registry {
    shards: Box<[Shard]>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, id: TaskId) -> MutexGuard<'_, Map> {
        let shard = &self.shards[id.0 as usize % SHARDS];
        // A panic while holding this lock can only come from the allocator;
        // the map itself is never left half-updated, so poisoning is ignored.
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn insert(&self, task: Arc<TaskShared>) {
        self.shard(task.id).insert(task.id, task);
    }

    pub(crate) fn remove(&self, id: TaskId) {
        self.shard(id).remove(&id);
    }

    pub(crate) fn get(&self, id: TaskId) -> Option<Arc<TaskShared>> {
        self.shard(id).get(&id).cloned()
    }

    /// Calls `f` on every live task, one shard locked at a time.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&TaskShared)) {
        for shard in self.shards.iter() {
            let shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            shard.values().for_each(|t| f(t));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn one_shards_ids_spread_over_the_bucket_index_bits() {
        let hasher = BuildHasherDefault::<IdHasher>::default();
        let buckets: HashSet<u64> = (0..1024u64)
            .map(|m| hasher.hash_one(TaskId(m * SHARDS as u64 + 7)) & 1023)
            .collect();
        // A random function fills about 63 % of 1024 buckets.
        assert!(
            buckets.len() > 550,
            "only {} of 1024 buckets",
            buckets.len()
        );
    }
}
