//! The set of live managed tasks, for `snapshot()`.
//!
//! A task registers at its first `Pending`, not at its spawn: one that
//! completes in its first poll (as many short tasks do) never takes a lock
//! here at all, and the registry is touched twice in a registered task's
//! life, never on the poll path after that. (The watchdog does not need
//! it: it reaches a running task through the thread slot it runs in, see
//! `context::inspect`.) It holds a plain pointer to each task's shared
//! state, not a reference count: a task leaves the registry (under its
//! shard's lock) before its state is freed, and readers use a task only
//! under that lock, so they never see a freed one.

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

    /// Calls `f` on every registered task, one shard locked at a time:
    /// `f` must not reach the registry (a snapshot, say).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&TaskShared)) {
        // SAFETY: registered, so valid (see `insert`), and it cannot be
        // removed while its shard's lock is held.
        self.tasks.for_each(|e| f(unsafe { e.0.as_ref() }));
    }
}
