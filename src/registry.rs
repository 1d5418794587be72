//! The set of live managed tasks, for `snapshot()` and the watchdog.
//!
//! Touched twice in a task's life (spawn and end) and by readers, never on
//! the poll path. It holds a plain pointer to each task's shared state,
//! not a reference count: a task leaves the registry (under its shard's
//! lock) before its state is freed, and readers use a task only under that
//! lock, so they never see a freed one.

use std::ptr::NonNull;

use crate::sharded::ShardedMap;
use crate::task::{TaskId, TaskShared};

/// A registered task's shared state.
#[derive(Clone, Copy, Debug)]
struct Entry(NonNull<TaskShared>);

// SAFETY: an `Entry` points to a `TaskShared`, which is `Sync`; it is only
// dereferenced under its shard's lock while the task is registered (see
// the module docs), from whichever thread holds that lock.
unsafe impl Send for Entry {}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    tasks: ShardedMap<Entry>,
}

impl Registry {
    /// Registers `task`.
    ///
    /// # Safety
    /// `task` must stay valid until [`remove`](Self::remove) is called with
    /// its id.
    pub(crate) unsafe fn insert(&self, task: &TaskShared) {
        self.tasks.insert(task.id.0, Entry(NonNull::from(task)));
    }

    pub(crate) fn remove(&self, id: TaskId) {
        self.tasks.remove(id.0);
    }

    /// Runs `f` on the task with this id, if it is registered, under its
    /// shard's lock: `f` must not reach the registry (a snapshot, say).
    pub(crate) fn with<R>(&self, id: TaskId, f: impl FnOnce(&TaskShared) -> R) -> Option<R> {
        self.tasks.with_shard(id.0, |shard| {
            // SAFETY: registered, so valid (see `insert`), and it cannot be
            // removed while this shard's lock is held.
            shard.get(&id.0).map(|e| f(unsafe { e.0.as_ref() }))
        })
    }

    /// Calls `f` on every live task, one shard locked at a time; as for
    /// [`with`](Self::with), `f` must not reach the registry.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&TaskShared)) {
        // SAFETY: as in `with`.
        self.tasks.for_each(|e| f(unsafe { e.0.as_ref() }));
    }

    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }
}
