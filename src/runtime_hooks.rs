//! Runtime-wide observation through Tokio's own task hooks.
//!
//! [`Pulse::spawn`](crate::Pulse::spawn) measures the tasks it spawns; a service's other tasks
//! (the connection tasks hyper spawns, a library's background job) stay
//! out of sight, and they hog workers too. Built with `tokio_unstable`,
//! Tokio calls back around every task's spawn, polls and termination.
//! [`RuntimeHooks`] installed into a runtime builder times every poll of
//! every task, attributes it to the task's Tokio id and spawn location,
//! lists the task in [`Snapshot::runtime_tasks`](crate::Snapshot::runtime_tasks),
//! and warns through `tracing` when one hogs its worker, as for a managed
//! task.
//!
//! Observation only: a task seen through hooks moves between `Monitor` and
//! `Warn`, never further, because deferring, slowing down or isolating a
//! task takes a wrapper around its future. Spawn the tasks you want handled
//! with [`Pulse::spawn`](crate::Pulse::spawn), or wrap them with [`PulseExt`](crate::PulseExt)
//! (requests, with `PulseLayer`).
//!
//! A managed future polled inside a runtime task (the task `Pulse::spawn`
//! itself creates, or a request under `PulseLayer` in a connection task) is
//! measured by its own wrapper; the runtime task is charged only the rest
//! of the poll, so a hog is reported once, under its own name.
//!
//! # Cost
//!
//! Tokio names a task in its hooks only by id, so a task's state has to be
//! found per poll. Each worker thread keeps its own map from id to state,
//! used without a lock; only a task's first poll on a thread (or after a
//! steal) goes to the shared, sharded map. Per poll, then: two clock reads,
//! a few thread-local accesses, one lookup in that per-thread map, and
//! relaxed stores to the task's counters. The tier state machine (behind a
//! try-lock) only runs for polls long enough to count against the budget,
//! or for tasks already at `Warn`. Spawning a task adds an allocation and
//! a shard-locked insert. Example `runtime_hooks_cost` measures it against
//! a managed future's wrapper and against Tokio calling empty hooks (the
//! README's section on runtime hooks quotes it).

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::runtime::{Builder, TaskMeta};

use crate::engine::{Engine, Scope};
use crate::observe::ChangeCause;
use crate::runtime_tasks::{RuntimeTask, RuntimeTasks, key_of};
use crate::sharded::KeyMap;
use crate::tier::{Step, Tier};
use crate::timing::clock;

thread_local! {
    static THREAD: ThreadState = const {
        ThreadState {
            poll: Cell::new(RuntimePoll::NONE),
            managed_ns: Cell::new(0),
            cache: RefCell::new(Cache { tasks: None, sweep_at: MIN_SWEEP }),
        }
    };
}

/// What one worker thread knows between a task's before- and after-poll hooks.
struct ThreadState {
    poll: Cell<RuntimePoll>,
    /// Time spent in (outermost) managed polls within the current runtime
    /// poll: already reported by their wrappers.
    managed_ns: Cell<u64>,
    cache: RefCell<Cache>,
}

/// The runtime poll in progress on this thread.
#[derive(Clone, Copy)]
struct RuntimePoll {
    key: u64,
    owner: u64,
    /// Clock reading at poll start; 0 when no observed poll is running.
    start_ns: u64,
    /// The task terminated within this poll: its state is to be folded
    /// into the totals once the poll is recorded.
    ended: bool,
}

impl RuntimePoll {
    const NONE: RuntimePoll = RuntimePoll {
        key: 0,
        owner: 0,
        start_ns: 0,
        ended: false,
    };
}

/// A per-thread cache needs sweeping for tasks that ended elsewhere; at
/// least this many entries first, so small runtimes never sweep.
const MIN_SWEEP: usize = 256;

/// This thread's view of the tasks it has polled.
struct Cache {
    tasks: Option<KeyMap<Arc<RuntimeTask>>>,
    /// Sweep ended tasks out before growing past this size: twice the live
    /// size after the last sweep, so sweeping is amortised O(1) per insert.
    sweep_at: usize,
}

impl Cache {
    /// Runs `f` on the task with `key`, looking in this thread's map and,
    /// on a miss, in the shared one.
    #[inline]
    fn with<R>(
        &mut self,
        tasks: &RuntimeTasks,
        key: u64,
        ended_ok: bool,
        f: impl FnOnce(&RuntimeTask) -> R,
    ) -> Option<R> {
        let map = self.tasks.get_or_insert_with(KeyMap::default);
        if let Some(task) = map.get(&key) {
            if task.owner == tasks.id && (ended_ok || !task.ended.load(Relaxed)) {
                return Some(f(task));
            }
        }
        self.miss(tasks, key).map(|task| f(&task))
    }

    #[cold]
    #[inline(never)]
    fn miss(&mut self, tasks: &RuntimeTasks, key: u64) -> Option<Arc<RuntimeTask>> {
        let task = tasks.get(key)?;
        self.insert(key, Arc::clone(&task));
        Some(task)
    }

    fn insert(&mut self, key: u64, task: Arc<RuntimeTask>) {
        let map = self.tasks.get_or_insert_with(KeyMap::default);
        if map.len() >= self.sweep_at {
            map.retain(|_, t| !t.ended.load(Relaxed));
            self.sweep_at = (map.len() * 2).max(MIN_SWEEP);
        }
        map.insert(key, task);
    }

    fn remove(&mut self, key: u64) {
        if let Some(map) = &mut self.tasks {
            map.remove(&key);
        }
    }
}

/// Tokio task hooks that report every task of a runtime to a [`Pulse`](crate::Pulse).
///
/// Needs the `runtime-hooks` feature and `RUSTFLAGS="--cfg tokio_unstable"`.
/// [`install`](RuntimeHooks::install) sets all four of a builder's task
/// hooks (replacing any set before); to keep hooks of your own, call the
/// `on_*` methods from them instead. One `Pulse` per runtime.
///
/// ```
/// use tokio_pulse::Pulse;
///
/// let pulse = Pulse::new();
/// let mut builder = tokio::runtime::Builder::new_current_thread();
/// pulse.runtime_hooks().install(&mut builder);
/// let runtime = builder.enable_all().build().unwrap();
///
/// let task = runtime.spawn(async { 6 * 7 }); // a plain tokio task
/// let id = task.id();
/// let seen = pulse.snapshot().runtime_task(id).cloned().unwrap();
/// assert_eq!(seen.location.line(), line!() - 3); // where it was spawned
///
/// assert_eq!(runtime.block_on(task).unwrap(), 42);
/// assert!(pulse.snapshot().runtime_task(id).is_none());
/// assert_eq!(pulse.runtime_totals().polls, 1);
/// ```
///
/// On a multi-thread runtime, a `JoinHandle` can see its task finish a
/// moment before the hooks have: Tokio wakes it first.
#[derive(Clone, Debug)]
pub struct RuntimeHooks {
    engine: Arc<Engine>,
}

impl RuntimeHooks {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        RuntimeHooks { engine }
    }

    fn tasks(&self) -> &RuntimeTasks {
        &self.engine.runtime
    }

    /// Sets `builder`'s task spawn, poll and terminate hooks to these.
    pub fn install<'b>(&self, builder: &'b mut Builder) -> &'b mut Builder {
        self.tasks().installed.store(true, Relaxed);
        let (spawn, before, after, terminate) =
            (self.clone(), self.clone(), self.clone(), self.clone());
        builder
            .on_task_spawn(move |meta| spawn.on_task_spawn(meta))
            .on_before_task_poll(move |meta| before.on_before_task_poll(meta))
            .on_after_task_poll(move |meta| after.on_after_task_poll(meta))
            .on_task_terminate(move |meta| terminate.on_task_terminate(meta))
    }

    /// For `Builder::on_task_spawn`: starts tracking the task.
    pub fn on_task_spawn(&self, meta: &TaskMeta<'_>) {
        self.tasks()
            .spawned(meta.id(), meta.spawned_at(), clock().now_ns());
    }

    /// For `Builder::on_before_task_poll`: notes when the poll started.
    #[inline]
    pub fn on_before_task_poll(&self, meta: &TaskMeta<'_>) {
        let poll = RuntimePoll {
            key: key_of(meta.id()),
            owner: self.tasks().id,
            start_ns: clock().now_ns(),
            ended: false,
        };
        let _ = THREAD.try_with(|t| {
            t.poll.set(poll);
            t.managed_ns.set(0);
        });
    }

    /// For `Builder::on_after_task_poll`: charges the poll to the task.
    #[inline]
    pub fn on_after_task_poll(&self, meta: &TaskMeta<'_>) {
        let end_ns = clock().now_ns();
        let key = key_of(meta.id());
        let tasks = self.tasks();
        let _ = THREAD.try_with(|t| {
            let poll = t.poll.replace(RuntimePoll::NONE);
            if poll.start_ns == 0 || poll.key != key || poll.owner != tasks.id {
                return;
            }
            let poll_ns = end_ns
                .saturating_sub(poll.start_ns)
                .saturating_sub(t.managed_ns.replace(0));
            let Ok(mut cache) = t.cache.try_borrow_mut() else {
                return;
            };
            cache.with(tasks, key, poll.ended, |task| {
                self.record(task, poll.start_ns, poll_ns);
                if poll.ended {
                    tasks.fold(task);
                }
            });
            if poll.ended {
                cache.remove(key);
            }
        });
    }

    /// For `Builder::on_task_terminate`: stops tracking the task and adds
    /// its counts to the totals.
    pub fn on_task_terminate(&self, meta: &TaskMeta<'_>) {
        let key = key_of(meta.id());
        let tasks = self.tasks();
        // Tasks never seen spawning (`spawn_blocking`'s) are not tracked.
        let Some(task) = tasks.remove(key) else {
            return;
        };
        // A task usually ends inside its own last poll, whose after-poll
        // hook is still to come: leave the task where that hook will find
        // it, and let it fold the task once the poll is counted.
        let deferred = THREAD
            .try_with(|t| {
                let mut poll = t.poll.get();
                let Ok(mut cache) = t.cache.try_borrow_mut() else {
                    return false;
                };
                if poll.start_ns != 0 && poll.key == key && poll.owner == tasks.id {
                    poll.ended = true;
                    t.poll.set(poll);
                    cache.insert(key, Arc::clone(&task));
                    true
                } else {
                    cache.remove(key);
                    false
                }
            })
            .unwrap_or(false);
        if !deferred {
            tasks.fold(&task);
        }
    }

    #[inline]
    fn record(&self, task: &RuntimeTask, start_ns: u64, poll_ns: u64) {
        let limits = &self.tasks().policy.limits;
        let slow = poll_ns > limits.slow_poll_ns;
        task.shared.count_poll();
        task.shared.record_measured(poll_ns, poll_ns, slow);
        self.tasks().stats.poll_measured(poll_ns);
        // Shorter polls of a task at `Monitor` cannot change its tier.
        if poll_ns >= limits.charge_floor_ns || task.shared.tier() > Tier::Monitor {
            self.judge(task, start_ns, poll_ns);
        }
    }

    #[cold]
    #[inline(never)]
    fn judge(&self, task: &RuntimeTask, start_ns: u64, poll_ns: u64) {
        let tasks = self.tasks();
        // Contended only when another worker polls the task again already.
        let Ok(mut escalation) = task.escalation.try_lock() else {
            return;
        };
        let end_ns = start_ns + poll_ns;
        // The short polls not fed to the state machine would have closed
        // the window if it is over; close it as they would have, then
        // charge this poll.
        let changes = [
            escalation.on_poll(&tasks.policy, start_ns, start_ns),
            escalation.on_poll(&tasks.policy, start_ns, end_ns),
        ];
        drop(escalation);
        for change in changes.into_iter().flatten().filter_map(Step::change) {
            let cause = ChangeCause {
                poll_ns,
                cpu_ns: None,
            };
            self.engine.tier_changed(
                Scope::Runtime(task.tokio_id),
                &task.shared,
                change,
                cause,
                end_ns,
            );
        }
    }
}

/// Called by a managed future's wrapper after each measured poll: if the
/// poll ran inside an observed runtime poll on this thread, and not inside
/// another managed poll, its time is the wrapper's to report.
#[inline]
pub(crate) fn managed_poll_done(poll_ns: u64) {
    let _ = THREAD.try_with(|t| {
        if t.poll.get().start_ns != 0 && crate::context::current().is_none() {
            t.managed_ns.set(t.managed_ns.get() + poll_ns);
        }
    });
}
