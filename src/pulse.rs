//! The user's handle: spawning managed tasks, snapshots, hooks.

use std::borrow::Cow;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::{Config, PulseBuilder};
use crate::hooks::{HookSlot, PreemptionHooks};
use crate::managed::Managed;
use crate::observe::RateLimiter;
use crate::registry::Registry;
use crate::snapshot::{Snapshot, TaskSnapshot};
use crate::stats::{PulseStats, Totals};
use crate::task::TaskShared;
use crate::tier::Tier;
use crate::timing::clock;

/// State shared by a `Pulse`, its clones, and every task it manages.
#[derive(Debug)]
pub(crate) struct PulseShared {
    pub config: Config,
    pub registry: Registry,
    pub hooks: HookSlot,
    pub warnings: RateLimiter,
    pub stats: PulseStats,
    /// Tasks observed through Tokio's task hooks, not managed.
    #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
    pub runtime: crate::runtime_tasks::RuntimeTasks,
}

/// Manages tasks: measures their polls, classifies them into [`Tier`]s, and
/// intervenes against the ones that hog their workers.
///
/// Cheap to clone (one `Arc`); clones manage the same set of tasks.
///
/// ```
/// use tokio_pulse::{Pulse, Tier};
///
/// # #[tokio::main]
/// # async fn main() {
/// let pulse = Pulse::new();
/// let handle = pulse.spawn_named("answer", async { 6 * 7 });
/// assert_eq!(handle.await.unwrap(), 42);
///
/// let snapshot = pulse.snapshot();
/// assert_eq!(snapshot.count(Tier::Isolate), 0);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Pulse {
    pub(crate) shared: Arc<PulseShared>,
}

impl Pulse {
    /// A builder, starting from the [`Balanced`](crate::Profile::Balanced) profile.
    pub fn builder() -> PulseBuilder {
        PulseBuilder::new()
    }

    /// A `Pulse` with the default configuration.
    pub fn new() -> Pulse {
        Pulse::from_config(Config::default())
    }

    pub(crate) fn from_config(config: Config) -> Pulse {
        // Calibrate the clock now rather than inside the first poll.
        clock();
        Pulse {
            shared: Arc::new(PulseShared {
                warnings: RateLimiter::new(config.max_warnings_per_second),
                #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
                runtime: crate::runtime_tasks::RuntimeTasks::new(&config),
                config,
                registry: Registry::new(),
                hooks: HookSlot::new(),
                stats: PulseStats::default(),
            }),
        }
    }

    /// Spawns `future` as a managed task on the current Tokio runtime.
    ///
    /// The same contract as [`tokio::spawn`]: same bounds, same
    /// `JoinHandle`, and it panics when called outside a runtime. The
    /// caller's location is recorded as the task's spawn site.
    #[track_caller]
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(self.manage(None, Location::caller(), future, Tier::Isolate))
    }

    /// Like [`spawn`](Pulse::spawn), with a name that shows in snapshots and events.
    #[track_caller]
    pub fn spawn_named<F>(
        &self,
        name: impl Into<Cow<'static, str>>,
        future: F,
    ) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(self.manage(Some(name.into()), Location::caller(), future, Tier::Isolate))
    }

    pub(crate) fn manage<F: Future>(
        &self,
        name: Option<Cow<'static, str>>,
        location: &'static Location<'static>,
        future: F,
        max_tier: Tier,
    ) -> Managed<F> {
        let task = Arc::new(TaskShared::new(name, location));
        Managed::new(Arc::clone(&self.shared), task, future, max_tier)
    }

    /// The state of every live managed task. Takes each registry shard's
    /// lock briefly; never blocks the poll path.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        self.shared.registry.for_each(|task| {
            let t = TaskSnapshot::of(task);
            snapshot.tier_counts[t.tier.index()] += 1;
            snapshot.tasks.push(t);
        });
        #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
        self.shared.runtime.snapshot_into(&mut snapshot);
        snapshot
    }

    /// What all managed tasks, live and ended, have done since this `Pulse`
    /// was built: polls, poll-time histogram, promotions and demotions.
    /// Cheaper than [`snapshot`](Pulse::snapshot): nothing is allocated per task.
    pub fn totals(&self) -> Totals {
        let mut live = Vec::new();
        self.shared.registry.for_each(|t| live.push(t.counters()));
        self.shared.stats.totals(live)
    }

    /// Live managed tasks, without building a snapshot.
    pub fn task_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// Installs `hooks`, replacing any installed before. Callable from any
    /// thread at any time; polls already running finish with the hooks they
    /// started with, and the replaced hooks are dropped after the last of them.
    pub fn set_hooks(&self, hooks: Arc<dyn PreemptionHooks>) {
        self.shared.hooks.set(hooks);
    }

    /// Removes the installed hooks, if any.
    pub fn clear_hooks(&self) {
        self.shared.hooks.clear();
    }
}

impl Default for Pulse {
    fn default() -> Self {
        Pulse::new()
    }
}

/// Wraps any future so that it is managed by a [`Pulse`] while some other
/// spawner runs it: a `LocalSet`, a `JoinSet`, `block_on`, a `select!`.
///
/// Such a future may not be `Send`, so it can never move to the isolation
/// pool: its tier is capped at [`Tier::Yield`].
///
/// ```
/// use tokio_pulse::{Pulse, PulseExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pulse = Pulse::new();
/// let local = tokio::task::LocalSet::new();
/// let rc = std::rc::Rc::new(5); // not Send
/// let out = local
///     .run_until(async move {
///         tokio::task::spawn_local(async move { *rc * 2 }.pulse(&pulse)).await
///     })
///     .await
///     .unwrap();
/// assert_eq!(out, 10);
/// # }
/// ```
pub trait PulseExt: Future + Sized {
    /// Manages this future under `pulse`.
    #[track_caller]
    fn pulse(self, pulse: &Pulse) -> Managed<Self> {
        pulse.manage(None, Location::caller(), self, Tier::Yield)
    }

    /// Manages this future under `pulse`, with a name.
    #[track_caller]
    fn pulse_named(self, pulse: &Pulse, name: impl Into<Cow<'static, str>>) -> Managed<Self> {
        pulse.manage(Some(name.into()), Location::caller(), self, Tier::Yield)
    }
}

impl<F: Future> PulseExt for F {}
