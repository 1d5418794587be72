//! The user's handle: spawning managed tasks, snapshots, hooks.

use std::borrow::Cow;
use std::future::Future;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::task::JoinHandle;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, PulseBuilder};
use crate::hooks::{HookSlot, PreemptionHooks};
use crate::isolation::{IsolationPool, Isolator, isolator};
use crate::managed::Managed;
use crate::observe::RateLimiter;
use crate::registry::Registry;
use crate::slow_lane::SlowLane;
use crate::snapshot::{Snapshot, TaskSnapshot};
use crate::stats::{PulseStats, Totals};
use crate::task::TaskShared;
use crate::timing::{as_nanos, clock};
use crate::watchdog;

/// State shared by a `Pulse`, its clones, and every task it manages.
#[derive(Debug)]
pub(crate) struct PulseShared {
    /// Distinguishes this `Pulse`'s polls in the per-thread slots.
    pub id: u64,
    /// The configuration in force; replaced whole by `reconfigure`.
    pub config: ArcSwap<Config>,
    /// Bumped after each `reconfigure`; a task compares it with the
    /// generation its cached policy came from (one relaxed load per poll).
    pub generation: AtomicU64,
    pub registry: Registry,
    pub hooks: HookSlot,
    pub warnings: RateLimiter,
    pub stats: PulseStats,
    pub lane: SlowLane,
    /// Held through `reconfigure`, so that concurrent calls apply one whole
    /// configuration after the other: the slow lane's and the warning
    /// limiter's settings are stored apart from the configuration itself.
    reconfiguring: Mutex<()>,
    /// Started when the first task is isolated; `None` inside if it could
    /// not start, and isolation is then off.
    pool: OnceLock<Option<IsolationPool>>,
    /// Tasks observed through Tokio's task hooks, not managed.
    #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
    pub runtime: crate::runtime_tasks::RuntimeTasks,
}

impl PulseShared {
    /// The isolation pool, started on first use.
    pub(crate) fn isolation_pool(&self) -> Option<&IsolationPool> {
        self.pool
            .get_or_init(|| {
                let config = self.config.load();
                let i = &config.interventions;
                IsolationPool::start(i.isolation_threads, i.isolation_priority)
                    .inspect_err(|e| {
                        tracing::error!(error = %e, "tokio-pulse: could not start the isolation pool; isolated tasks stay in the slow lane");
                    })
                    .ok()
            })
            .as_ref()
    }
}

/// Manages tasks: measures their polls, classifies them into [`Tier`](crate::Tier)s, and
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
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        // Calibrate the clock now rather than inside the first poll.
        clock();
        let quantum_ns = lane_quantum_ns(&config);
        let shared = Arc::new(PulseShared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            warnings: RateLimiter::new(config.max_warnings_per_second),
            lane: SlowLane::new(config.interventions.slow_lane_slots, quantum_ns),
            #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
            runtime: crate::runtime_tasks::RuntimeTasks::new(&config),
            registry: Registry::new(),
            hooks: HookSlot::new(),
            stats: PulseStats::default(),
            pool: OnceLock::new(),
            reconfiguring: Mutex::new(()),
            generation: AtomicU64::new(0),
            config: ArcSwap::from_pointee(config),
        });
        if shared
            .config
            .load()
            .interventions
            .watchdog_threshold
            .is_some()
        {
            if let Err(e) = watchdog::start(Arc::downgrade(&shared)) {
                tracing::error!(error = %e, "tokio-pulse: could not start the watchdog thread; stuck polls will not be reported");
            }
        }
        Pulse { shared }
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
        tokio::spawn(self.manage(None, Location::caller(), future, Some(isolator::<F>())))
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
        tokio::spawn(self.manage(
            Some(name.into()),
            Location::caller(),
            future,
            Some(isolator::<F>()),
        ))
    }

    pub(crate) fn manage<F: Future>(
        &self,
        name: Option<Cow<'static, str>>,
        location: &'static Location<'static>,
        future: F,
        isolator: Option<Isolator<F>>,
    ) -> Managed<F> {
        let task = Arc::new(TaskShared::new(name, location));
        Managed::new(Arc::clone(&self.shared), task, future, isolator)
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
        if let Some(threshold) = self.shared.config.load().interventions.watchdog_threshold {
            snapshot.stuck = watchdog::running_polls(&self.shared, threshold);
        }
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
        let mut totals = self.shared.stats.totals(live);
        totals.slow_lane_waiting = self.shared.lane.queue_depth();
        totals.slow_lane_running = self.shared.lane.running();
        totals
    }

    /// Replaces the configuration while tasks run.
    ///
    /// The new values are validated first; nothing changes if any is
    /// invalid. Each task switches to the whole new configuration at its next
    /// poll, never to a mix of old and new values. Tier thresholds, the slow
    /// lane's slots, the warning rate and the watchdog threshold can change;
    /// the isolation pool's size and priority, and whether there is a
    /// watchdog at all, are fixed when the `Pulse` is built, and a change to
    /// them is refused with [`ConfigError::NotReloadable`].
    ///
    /// A task already above a lowered `max_tier` is moved down to it at
    /// its next poll.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio_pulse::{Profile, Pulse};
    ///
    /// let pulse = Pulse::new();
    /// pulse.reconfigure(Pulse::builder().profile(Profile::Permissive))?;
    /// assert!(pulse.reconfigure(Pulse::builder().isolation_threads(64)).is_err());
    /// # Ok::<(), tokio_pulse::ConfigError>(())
    /// ```
    ///
    /// # Errors
    /// A [`ConfigError`] for an invalid value or a change that cannot be
    /// made while running.
    pub fn reconfigure(&self, builder: PulseBuilder) -> Result<(), ConfigError> {
        let new = builder.config()?;
        let _one_at_a_time = self
            .shared
            .reconfiguring
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let old = self.shared.config.load();
        let (o, n) = (&old.interventions, &new.interventions);
        if o.isolation_threads != n.isolation_threads {
            return Err(ConfigError::NotReloadable {
                field: "isolation_threads",
            });
        }
        if o.isolation_priority != n.isolation_priority {
            return Err(ConfigError::NotReloadable {
                field: "isolation_priority",
            });
        }
        if o.watchdog_threshold.is_some() != n.watchdog_threshold.is_some() {
            return Err(ConfigError::NotReloadable {
                field: "without_watchdog",
            });
        }
        self.shared.lane.set_slots(n.slow_lane_slots);
        self.shared.lane.set_quantum_ns(lane_quantum_ns(&new));
        self.shared.warnings.set_max(new.max_warnings_per_second);
        self.shared.config.store(Arc::new(new));
        self.shared.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Live managed tasks, without building a snapshot.
    pub fn task_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// Installs `hooks`, replacing any installed before. Callable from any
    /// thread at any time; a poll already running may make its remaining
    /// calls to either. Each thread caches the hooks it last called and lets
    /// go of replaced ones at its next hooked poll or when it exits, so they
    /// are dropped some time after the change, not at once.
    pub fn set_hooks(&self, hooks: Arc<dyn PreemptionHooks>) {
        self.shared.hooks.set(hooks);
    }

    /// Removes the installed hooks, if any. Threads that called them let go
    /// of them as described at [`set_hooks`](Pulse::set_hooks).
    pub fn clear_hooks(&self) {
        self.shared.hooks.clear();
    }
}

/// Deficit round robin quantum of the slow lane: two slow-poll thresholds
/// of poll time per turn.
fn lane_quantum_ns(config: &Config) -> i64 {
    i64::try_from(as_nanos(config.slow_poll_threshold).saturating_mul(2)).unwrap_or(i64::MAX)
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
/// pool: its tier is capped at [`Tier::Yield`](crate::Tier::Yield).
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
        pulse.manage(None, Location::caller(), self, None)
    }

    /// Manages this future under `pulse`, with a name.
    #[track_caller]
    fn pulse_named(self, pulse: &Pulse, name: impl Into<Cow<'static, str>>) -> Managed<Self> {
        pulse.manage(Some(name.into()), Location::caller(), self, None)
    }
}

impl<F: Future> PulseExt for F {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::time::Duration;

    /// Rounds of two racing `reconfigure` calls.
    const ROUNDS: usize = 10_000;

    /// What the slow lane and the warning limiter were told, as a config
    /// would set them.
    fn pulse_wide_settings(shared: &PulseShared) -> (usize, i64, u32) {
        (
            shared.lane.slots(),
            shared.lane.quantum_ns(),
            shared.warnings.max(),
        )
    }

    fn expected_settings(config: &Config) -> (usize, i64, u32) {
        (
            config.interventions.slow_lane_slots,
            lane_quantum_ns(config),
            config.max_warnings_per_second,
        )
    }

    #[test]
    fn concurrent_reconfigures_leave_the_pulse_wide_settings_of_the_config_in_force() {
        let a = || {
            Pulse::builder()
                .without_watchdog()
                .slow_lane_slots(1)
                .slow_poll_threshold(Duration::from_millis(1))
                .max_warnings_per_second(10)
        };
        let b = || {
            Pulse::builder()
                .without_watchdog()
                .slow_lane_slots(3)
                .slow_poll_threshold(Duration::from_millis(7))
                .max_warnings_per_second(70)
        };
        let pulse = a().build().unwrap();
        let start = Barrier::new(3);
        let done = Barrier::new(3);
        let mut mismatches = Vec::new();
        std::thread::scope(|s| {
            for builder in [a, b] {
                let (pulse, start, done) = (&pulse, &start, &done);
                s.spawn(move || {
                    for _ in 0..ROUNDS {
                        start.wait();
                        pulse.reconfigure(builder()).unwrap();
                        done.wait();
                    }
                });
            }
            for round in 0..ROUNDS {
                start.wait();
                done.wait();
                let shared = &pulse.shared;
                let (got, want) = (
                    pulse_wide_settings(shared),
                    expected_settings(&shared.config.load()),
                );
                if got != want {
                    mismatches.push((round, got, want));
                }
            }
        });
        assert!(
            mismatches.is_empty(),
            "{} of {ROUNDS} rounds left the lane and limiter (got) out of step with the config in force (want): {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(5)]
        );
    }
}
