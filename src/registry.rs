//! The set of live managed tasks, for `snapshot()` and the watchdog.
//!
//! Touched twice in a task's life (spawn and end) and by readers, never on
//! the poll path. Sharded so that spawns on different workers rarely meet on
//! one lock: the design document's known bottleneck was a single shared map
//! consulted on every poll, which this is not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::task::{TaskId, TaskShared};

const SHARDS: usize = 32;

type Shard = Mutex<HashMap<TaskId, Arc<TaskShared>>>;

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

    fn shard(&self, id: TaskId) -> MutexGuard<'_, HashMap<TaskId, Arc<TaskShared>>> {
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
