//! The set of live managed tasks, for `snapshot()` and the watchdog.
//!
//! Touched twice in a task's life (spawn and end) and by readers, never on
//! the poll path: a task's wrapper holds the task's state itself, and the
//! registry holds a second reference only so that readers can find it.

use std::sync::Arc;

use crate::sharded::ShardedMap;
use crate::task::{TaskId, TaskShared};

#[derive(Debug, Default)]
pub(crate) struct Registry {
    tasks: ShardedMap<Arc<TaskShared>>,
}

impl Registry {
    pub(crate) fn insert(&self, task: Arc<TaskShared>) {
        self.tasks.insert(task.id.0, task);
    }

    pub(crate) fn remove(&self, id: TaskId) {
        self.tasks.remove(id.0);
    }

    pub(crate) fn get(&self, id: TaskId) -> Option<Arc<TaskShared>> {
        self.tasks.get(id.0)
    }

    /// Calls `f` on every live task, one shard locked at a time.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&TaskShared)) {
        self.tasks.for_each(|t| f(t));
    }

    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }
}
