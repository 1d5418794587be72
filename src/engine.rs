//! The engine beneath every [`Pulse`](crate::Pulse) handle: everything a
//! `Pulse` and its tasks share, and the operations on it.
//!
//! A `Pulse` is a thin `Arc<Engine>`, as `tokio::runtime::Handle` is a thin
//! handle on its scheduler. The engine owns the live-task registry, the
//! pulse-wide counters, the hooks, the event rate limiter, the slow lane,
//! the isolation pool and the watchdog thread, and each operation that
//! touches several of them is one method here: a task registering, ending,
//! changing tier; counting tasks per tier; a snapshot; a reconfiguration.
//! Modules below it (the lane, the pool, the watchdog's scan, the
//! registry) know nothing of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError};
use crate::fault::{self, catch};
use crate::hooks::{Hook, HookSlot};
use crate::isolation::IsolationPool;
use crate::observe::{self, ChangeCause, RateLimiter};
use crate::origins::{OriginChange, OriginMemory, OriginRef};
use crate::registry::Registry;
use crate::slow_lane::SlowLane;
use crate::snapshot::{Snapshot, TaskSnapshot};
use crate::stats::{PulseStats, Totals};
use crate::sync::lock;
use crate::task::{TaskInfo, TaskShared};
use crate::tier::{EscalationPolicy, Tier, TierChange};
use crate::timing::{as_nanos, clock};
use crate::watchdog;

/// State shared by a `Pulse`, its clones, and every task it manages.
#[derive(Debug)]
pub(crate) struct Engine {
    /// Distinguishes this engine's polls in the per-thread slots.
    pub id: u64,
    /// The configuration in force; replaced whole by `reconfigure`.
    config: ArcSwap<Config>,
    /// Bumped after each `reconfigure`; a task compares it with the
    /// generation its cached policy came from (one relaxed load per poll).
    generation: AtomicU64,
    registry: Registry,
    pub hooks: HookSlot,
    warnings: RateLimiter,
    pub stats: PulseStats,
    pub lane: SlowLane,
    /// Held through `reconfigure`, so that concurrent calls apply one whole
    /// configuration after the other: the slow lane's and the warning
    /// limiter's settings are stored apart from the configuration itself.
    reconfiguring: Mutex<()>,
    /// Started when the first task is isolated.
    pool: OnceLock<Result<IsolationPool, String>>,
    watchdog: Mutex<Component>,
    /// How tasks from each origin behaved; `None` when turned off.
    origins: Option<OriginMemory>,
    /// Tasks observed through Tokio's task hooks, not managed.
    #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
    pub runtime: crate::runtime_tasks::RuntimeTasks,
}

/// Which set of tasks a tier change belongs to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope {
    /// A task managed by its wrapper.
    Managed,
    /// A task observed through runtime hooks, with its Tokio id.
    #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
    Runtime(tokio::task::Id),
}

/// Whether the parts of a [`Pulse`](crate::Pulse) that run on threads of
/// their own are up, from [`Pulse::health`](crate::Pulse::health).
///
/// The engine never fails or panics because the OS refused it a thread: the
/// part that needed it is off, the failure was reported once as a
/// `tracing` error, and it shows here.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The stuck-poll watchdog thread. While it is not running, stuck
    /// polls are not reported (they are still judged when they end).
    pub watchdog: Component,
    /// The isolation pool's threads, started when the first task is
    /// isolated. While it is not running, tasks promoted to `Isolate`
    /// stay on the main workers in the slow lane, as if capped at `Yield`.
    pub isolation_pool: Component,
}

/// The state of one background part of a `Pulse`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Component {
    /// Running.
    Running,
    /// Not started yet: it starts on first use.
    NotStarted,
    /// Turned off by the configuration.
    Disabled,
    /// The OS refused its thread; the message says why.
    Failed(String),
}

impl Engine {
    /// An engine for `config`, with its watchdog started (if configured).
    pub(crate) fn start(config: Config) -> Arc<Engine> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        // Calibrate the clock now rather than inside the first poll.
        clock();
        let engine = Arc::new(Engine {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            warnings: RateLimiter::new(config.max_warnings_per_second),
            lane: SlowLane::new(
                config.interventions.slow_lane_slots,
                lane_quantum_ns(&config),
            ),
            #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
            runtime: crate::runtime_tasks::RuntimeTasks::new(&config),
            registry: Registry::default(),
            hooks: HookSlot::new(),
            stats: PulseStats::default(),
            pool: OnceLock::new(),
            watchdog: Mutex::new(Component::Disabled),
            origins: config.origins.map(OriginMemory::new),
            reconfiguring: Mutex::new(()),
            generation: AtomicU64::new(0),
            config: ArcSwap::from_pointee(config),
        });
        if engine.config().interventions.watchdog_threshold.is_some() {
            let status = match start_watchdog(Arc::downgrade(&engine)) {
                Ok(()) => Component::Running,
                Err(e) => {
                    tracing::error!(error = %e, "tokio-pulse: could not start the watchdog thread; stuck polls will not be reported");
                    Component::Failed(e.to_string())
                }
            };
            *lock(&engine.watchdog) = status;
        }
        engine
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The configuration generation; see [`policy`](Self::policy).
    #[inline]
    pub(crate) fn generation(&self, order: Ordering) -> u64 {
        self.generation.load(order)
    }

    /// The escalation policy of the configuration in force, for a task
    /// that can reach `max_tier` at most, and the generation it is from.
    pub(crate) fn policy(&self, max_tier: Tier) -> (EscalationPolicy, u64) {
        // Generation first: a reconfiguration in between is then seen at
        // the task's next poll, never missed.
        let generation = self.generation.load(Ordering::Acquire);
        (self.config().escalation_policy(max_tier), generation)
    }

    /// The tier a new task from `origin` starts at: the one its origin
    /// earned (see `origins`), `Monitor` for an origin never seen to
    /// misbehave.
    #[inline]
    pub(crate) fn starting_tier(&self, origin: OriginRef<'_>) -> Tier {
        self.origins
            .as_ref()
            .map_or(Tier::Monitor, |o| o.start(origin).tier)
    }

    /// A managed task misbehaved (a bad window, or a stuck poll) and now
    /// stands at `reached`: its origin remembers.
    #[cold]
    pub(crate) fn task_offended(&self, task: &TaskShared, reached: Tier, now_ns: u64) {
        let first = task.mark_offended();
        if let Some(origins) = &self.origins {
            if let Some(change) = origins.offended(task.origin(), reached, first) {
                self.origin_changed(&change, now_ns);
            }
        }
    }

    #[cold]
    fn origin_changed(&self, change: &OriginChange, now_ns: u64) {
        let _ = catch(|| observe::origin_changed(change, &self.warnings, now_ns));
    }

    /// A managed task starts.
    pub(crate) fn register(&self, task: Arc<TaskShared>) {
        self.registry.insert(task);
        self.stats.task_spawned();
    }

    /// A managed task ended: completed, panicked or cancelled.
    pub(crate) fn task_ended(&self, task: &TaskShared) {
        self.registry.remove(task.id);
        self.stats.task_ended(&task.counters());
        if let Some(origins) = &self.origins {
            if !task.offended() {
                if let Some(change) = origins.behaved(task.origin()) {
                    self.origin_changed(&change, clock().now_ns());
                }
            }
        }
        if self.hooks.is_installed() {
            let info = TaskInfo { shared: task };
            self.hooks.call(Hook::TaskEnd, |h| h.on_task_end(&info));
        }
    }

    /// A task of `scope` moved between tiers: its tier, the counters, the
    /// event, and (for managed tasks) the hooks.
    #[cold]
    #[inline(never)]
    pub(crate) fn tier_changed(
        &self,
        scope: Scope,
        task: &TaskShared,
        change: TierChange,
        cause: ChangeCause,
        now_ns: u64,
    ) {
        task.set_tier(change.to);
        let (stats, tokio_id) = match scope {
            Scope::Managed => (&self.stats, None),
            #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
            Scope::Runtime(id) => (&self.runtime.stats, Some(id)),
        };
        stats.tier_changed(change.from, change.to);
        // A `tracing` subscriber is user code too: if it panics, the event
        // is lost, not the task.
        let _ = catch(|| {
            observe::tier_changed(task, tokio_id, change, cause, &self.warnings, now_ns);
        });
        if matches!(scope, Scope::Managed) && self.hooks.is_installed() {
            let info = TaskInfo { shared: task };
            self.hooks.call(Hook::TierChange, |h| {
                h.on_tier_change(&info, change.from, change.to)
            });
        }
    }

    /// Remembered origins per starting tier (none when turned off).
    #[cfg(feature = "metrics")]
    pub(crate) fn origin_tier_counts(&self) -> crate::tier::PerTier<usize> {
        self.origins
            .as_ref()
            .map(OriginMemory::tier_counts)
            .unwrap_or_default()
    }

    /// Live managed tasks per tier.
    #[cfg(feature = "metrics")]
    pub(crate) fn tier_counts(&self) -> crate::tier::PerTier<usize> {
        let mut tiers = Vec::new();
        self.registry.for_each(|task| tiers.push(task.tier()));
        crate::tier::PerTier::tally(tiers)
    }

    /// Live managed tasks.
    pub(crate) fn task_count(&self) -> usize {
        self.registry.len()
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        self.registry
            .for_each(|task| snapshot.tasks.push(TaskSnapshot::of(task)));
        if let Some(threshold) = self.config().interventions.watchdog_threshold {
            snapshot.stuck = watchdog::stuck_polls(self.id, threshold);
        }
        if let Some(origins) = &self.origins {
            snapshot.origins = origins.snapshot();
        }
        #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
        self.runtime.snapshot_into(&mut snapshot);
        snapshot
    }

    pub(crate) fn totals(&self) -> Totals {
        let mut live = Vec::new();
        self.registry.for_each(|t| live.push(t.counters()));
        let mut totals = self.stats.totals(live);
        totals.slow_lane_waiting = self.lane.queue_depth();
        totals.slow_lane_running = self.lane.running();
        totals
    }

    /// Applies `new`, validated already, or refuses a change that cannot be
    /// made while running.
    pub(crate) fn reconfigure(&self, new: Config) -> Result<(), ConfigError> {
        let _one_at_a_time = lock(&self.reconfiguring);
        let old = self.config();
        let (o, n) = (&old.interventions, &new.interventions);
        let fixed = [
            (
                "isolation_threads",
                o.isolation_threads != n.isolation_threads,
            ),
            (
                "isolation_priority",
                o.isolation_priority != n.isolation_priority,
            ),
            (
                "without_watchdog",
                o.watchdog_threshold.is_some() != n.watchdog_threshold.is_some(),
            ),
            (
                "without_origin_memory",
                old.origins.is_some() != new.origins.is_some(),
            ),
            (
                "origin_memory_capacity",
                old.origins.map(|o| o.capacity) != new.origins.map(|o| o.capacity),
            ),
        ];
        if let Some((field, _)) = fixed.into_iter().find(|(_, changed)| *changed) {
            return Err(ConfigError::NotReloadable { field });
        }
        self.lane.set_slots(n.slow_lane_slots);
        self.lane.set_quantum_ns(lane_quantum_ns(&new));
        self.warnings.set_max(new.max_warnings_per_second);
        if let (Some(memory), Some(settings)) = (&self.origins, new.origins) {
            memory.set_clean_tasks(settings.clean_tasks);
        }
        self.config.store(Arc::new(new));
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The isolation pool, started on first use; `None` if it could not
    /// start (see [`Health::isolation_pool`]).
    pub(crate) fn isolation_pool(&self) -> Option<&IsolationPool> {
        self.pool
            .get_or_init(|| {
                let config = self.config();
                let i = &config.interventions;
                IsolationPool::start(i.isolation_threads, i.isolation_priority).map_err(|e| {
                    tracing::error!(error = %e, "tokio-pulse: could not start the isolation pool; isolated tasks stay in the slow lane");
                    e.to_string()
                })
            })
            .as_ref()
            .ok()
    }

    pub(crate) fn health(&self) -> Health {
        Health {
            watchdog: lock(&self.watchdog).clone(),
            isolation_pool: match self.pool.get() {
                None => Component::NotStarted,
                Some(Ok(_)) => Component::Running,
                Some(Err(e)) => Component::Failed(e.clone()),
            },
        }
    }
}

/// Starts the watchdog of one engine. The thread ends within one period
/// after the engine is gone (the `Pulse` and all its tasks). The threshold
/// is re-read each period, so `reconfigure` can change it.
fn start_watchdog(engine: Weak<Engine>) -> std::io::Result<()> {
    fault::spawn_thread("pulse-watchdog".into(), move || {
        loop {
            let Some(threshold) = engine
                .upgrade()
                .and_then(|e| e.config().interventions.watchdog_threshold)
            else {
                return;
            };
            std::thread::sleep(watchdog::period(threshold));
            let Some(engine) = engine.upgrade() else {
                return;
            };
            // A panic here can only come from user code (a `tracing`
            // subscriber); the watchdog carries on.
            let _ = catch(|| {
                watchdog::scan(
                    engine.id,
                    as_nanos(threshold),
                    &engine.registry,
                    &engine.stats,
                );
            });
        }
    })
    .map(drop)
}

/// Deficit round robin quantum of the slow lane: two slow-poll thresholds
/// of poll time per turn.
fn lane_quantum_ns(config: &Config) -> i64 {
    i64::try_from(as_nanos(config.slow_poll_threshold).saturating_mul(2)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PulseBuilder;
    use crate::fault::tests::with_thread_spawns_refused;
    use std::sync::Barrier;
    use std::time::Duration;

    /// Rounds of two racing `reconfigure` calls.
    const ROUNDS: usize = 10_000;

    fn config(builder: PulseBuilder) -> Config {
        builder.config().unwrap()
    }

    /// What the slow lane and the warning limiter were told, as a config
    /// would set them.
    fn pulse_wide_settings(engine: &Engine) -> (usize, i64, u32) {
        (
            engine.lane.slots(),
            engine.lane.quantum_ns(),
            engine.warnings.max(),
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
            PulseBuilder::new()
                .without_watchdog()
                .slow_lane_slots(1)
                .slow_poll_threshold(Duration::from_millis(1))
                .max_warnings_per_second(10)
        };
        let b = || {
            PulseBuilder::new()
                .without_watchdog()
                .slow_lane_slots(3)
                .slow_poll_threshold(Duration::from_millis(7))
                .max_warnings_per_second(70)
        };
        let engine = Engine::start(config(a()));
        let start = Barrier::new(3);
        let done = Barrier::new(3);
        let mut mismatches = Vec::new();
        std::thread::scope(|s| {
            for builder in [a, b] {
                let (engine, start, done) = (&engine, &start, &done);
                s.spawn(move || {
                    for _ in 0..ROUNDS {
                        start.wait();
                        engine.reconfigure(config(builder())).unwrap();
                        done.wait();
                    }
                });
            }
            for round in 0..ROUNDS {
                start.wait();
                done.wait();
                let (got, want) = (
                    pulse_wide_settings(&engine),
                    expected_settings(&engine.config()),
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

    #[test]
    fn an_engine_refused_its_threads_runs_degraded_and_says_so() {
        let engine = with_thread_spawns_refused(|| {
            let engine = Engine::start(Config::default());
            assert!(engine.isolation_pool().is_none(), "a pool started");
            engine
        });
        let health = engine.health();
        assert!(
            matches!(health.watchdog, Component::Failed(ref e) if e.contains("refused")),
            "{health:?}"
        );
        assert!(
            matches!(health.isolation_pool, Component::Failed(_)),
            "{health:?}"
        );
        // Still usable: snapshots and totals answer.
        assert_eq!(engine.snapshot().tasks.len(), 0);
        assert_eq!(engine.totals().tasks_spawned, 0);
    }

    #[test]
    fn a_healthy_engine_reports_its_parts() {
        let engine = Engine::start(Config::default());
        assert_eq!(engine.health().watchdog, Component::Running);
        assert_eq!(engine.health().isolation_pool, Component::NotStarted);
        let off = Engine::start(config(PulseBuilder::new().without_watchdog()));
        assert_eq!(off.health().watchdog, Component::Disabled);
    }
}
