//! The pool's threads and their run queue.
//!
//! A deliberately plain executor: one FIFO queue shared by all pool
//! threads (its lock is taken once per isolated poll, and isolated polls
//! are long by definition), and a waker per job that re-queues it. The
//! threads exit when the pool is dropped, which happens once the `Pulse`
//! and every task it manages are gone; nothing joins them, so dropping
//! never waits on a poll that is stuck.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::task::{Context, Wake, Waker};

use super::handoff::{JobState, PoolJob};
use super::priority::{self, IsolationPriority};
use crate::fault::{catch, drop_quietly, spawn_thread};
use crate::sync::{lock, wait};

/// Prefix of the pool threads' names; each ends in its index.
pub(crate) const THREAD_NAME_PREFIX: &str = "pulse-isolate-";

#[derive(Debug)]
pub(crate) struct IsolationPool {
    shared: Arc<PoolShared>,
}

#[derive(Default)]
struct PoolShared {
    queue: Mutex<VecDeque<Arc<PoolTask>>>,
    available: Condvar,
    shutdown: AtomicBool,
}

impl std::fmt::Debug for PoolShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolShared").finish_non_exhaustive()
    }
}

struct PoolTask {
    job: Mutex<Option<Box<dyn PoolJob>>>,
    scheduled: AtomicBool,
    pool: Weak<PoolShared>,
    runtime: Option<tokio::runtime::Handle>,
}

impl Wake for PoolTask {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.scheduled.swap(true, SeqCst) {
            return;
        }
        if let Some(pool) = self.pool.upgrade() {
            lock(&pool.queue).push_back(Arc::clone(self));
            pool.available.notify_one();
        }
    }
}

impl IsolationPool {
    /// Starts `threads` threads at `priority`. Fails only if not a single
    /// thread could be spawned.
    pub(crate) fn start(threads: usize, priority: IsolationPriority) -> io::Result<Self> {
        let shared = Arc::new(PoolShared::default());
        let mut started = 0;
        let mut last_error = None;
        for i in 0..threads {
            let shared = Arc::clone(&shared);
            let spawned = spawn_thread(format!("{THREAD_NAME_PREFIX}{i}"), move || {
                run(&shared, priority)
            });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => last_error = Some(e),
            }
        }
        match (started, last_error) {
            (0, Some(e)) => Err(e),
            (_, Some(e)) => {
                tracing::warn!(started, wanted = threads, error = %e, "tokio-pulse: isolation pool started with fewer threads");
                Ok(IsolationPool { shared })
            }
            _ => Ok(IsolationPool { shared }),
        }
    }

    /// Queues a new job; returns the waker that re-queues it.
    pub(crate) fn submit(
        &self,
        job: Box<dyn PoolJob>,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Waker {
        let task = Arc::new(PoolTask {
            job: Mutex::new(Some(job)),
            scheduled: AtomicBool::new(false),
            pool: Arc::downgrade(&self.shared),
            runtime,
        });
        let waker = Waker::from(Arc::clone(&task));
        waker.wake_by_ref();
        waker
    }
}

impl Drop for IsolationPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        self.shared.available.notify_all();
    }
}

fn run(pool: &PoolShared, priority: IsolationPriority) {
    if let Err(e) = priority::apply(priority) {
        tracing::warn!(?priority, error = %e, "tokio-pulse: could not lower the isolation thread's priority; it runs at normal priority");
    }
    while let Some(task) = next(pool) {
        task.scheduled.store(false, SeqCst);
        let waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&waker);
        let mut job = lock(&task.job);
        if let Some(j) = job.as_mut() {
            let _runtime = task.runtime.as_ref().map(tokio::runtime::Handle::enter);
            // `run` catches the panics of the future and the hooks; this
            // is the last line of defence for the thread, should anything
            // else in a job panic: the job is then dropped.
            let state = catch(|| j.run(&mut cx)).unwrap_or(JobState::Done);
            if state == JobState::Done {
                // Dropped here, with the runtime still entered: a future's
                // destructor may deregister timers or I/O.
                if let Some(panic) = drop_quietly(job.take()) {
                    tracing::error!(
                        panic,
                        "tokio-pulse: dropping a finished isolation job panicked; the panic is ignored"
                    );
                }
            }
        }
    }
}

/// The next task to run, or `None` once the pool shuts down.
fn next(pool: &PoolShared) -> Option<Arc<PoolTask>> {
    let mut queue = lock(&pool.queue);
    loop {
        if pool.shutdown.load(SeqCst) {
            return None;
        }
        if let Some(task) = queue.pop_front() {
            return Some(task);
        }
        queue = wait(&pool.available, queue);
    }
}
