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

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;

use crate::config::{Config, ConfigError, Timing};
use crate::context;
use crate::fault::{self, catch};
use crate::hooks::{Hook, HookSlot};
use crate::isolation::{IsolationPool, IsolationPriority};
use crate::observe::{self, ChangeCause, RateLimiter};
use crate::origins::{OriginChange, OriginMemory, OriginRef};
use crate::registry::Registry;
use crate::slow_lane::SlowLane;
use crate::snapshot::{Snapshot, TaskSnapshot};
use crate::stack::{CaptureState, StackCapturer};
use crate::stats::{PulseStats, Totals};
use crate::sync::lock;
use crate::task::{TaskInfo, TaskShared};
use crate::ticker::{Pace, Seen, Ticker};
use crate::tier::{EscalationPolicy, Tier, TierChange};
use crate::timing::schedstat::{SchedStat, SchedStatFile, charged_so_far};
use crate::timing::{as_nanos, clock};
use crate::watchdog;

/// State shared by a `Pulse`, its clones, and every task it manages.
#[derive(Debug)]
pub(crate) struct Engine {
    /// The coarse clock polls read; its address names this engine in the
    /// per-thread slots.
    pub ticker: Ticker,
    /// What every poll reads besides the tick, on a line of its own (the
    /// `Arc`'s counts, written at every spawn and end, are nearby).
    hot: CachePadded<Hot>,
    /// The configuration in force; replaced whole by `reconfigure`.
    config: ArcSwap<Config>,
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
    /// The watchdog's stack captures.
    stacks: StackCapturer,
    /// How tasks from each origin behaved; `None` when turned off.
    origins: Option<OriginMemory>,
    /// Tasks observed through Tokio's task hooks, not managed.
    #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
    pub runtime: crate::runtime_tasks::RuntimeTasks,
}

#[derive(Debug)]
struct Hot {
    /// Bumped after each `reconfigure`; a task compares it with the
    /// generation its cached policy came from.
    generation: AtomicU64,
    /// Every poll reads the clock (`Timing::Exact`, or no ticker thread).
    exact: AtomicBool,
    /// The configuration's highest tier, for a spawn (see `spawn_terms`).
    max_tier: AtomicU8,
    /// The configuration's budget window, for a spawn.
    window_ns: AtomicU64,
}

/// What a new task takes from the configuration in force.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpawnTerms {
    /// The generation they are from.
    pub generation: u64,
    /// The highest tier the task may reach.
    pub max_tier: Tier,
    /// The length of a budget window.
    pub window_ns: u64,
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
    /// The progress floor of isolated work (see
    /// [`PulseBuilder::isolation_floor`](crate::PulseBuilder::isolation_floor)):
    /// `Failed` when the OS refused to raise an isolation thread's
    /// priority (it needs `CAP_SYS_NICE` or `RLIMIT_NICE`), and isolated
    /// tasks may then starve on a busy host; `Disabled` when turned off or
    /// with nothing to raise ([`IsolationPriority::Inherit`](crate::IsolationPriority::Inherit));
    /// `NotStarted` until the pool starts.
    pub isolation_floor: Component,
    /// The watchdog's capture of stuck threads' stacks (see
    /// [`StackCapture`](crate::StackCapture)). `Disabled` when turned off,
    /// without a watchdog, and on platforms other than Linux on x86-64
    /// and aarch64; `Failed` when its signal is used by the application
    /// (stacks are then `None`; stuck polls are still reported).
    pub stack_capture: Component,
}

/// The state of one background part of a `Pulse`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Component {
    /// Running.
    Running,
    /// Not started yet: it starts on first use.
    NotStarted,
    /// Turned off by the configuration (or, for stack capture, not
    /// supported on this platform).
    Disabled,
    /// It could not run: the OS refused its thread, or (stack capture) its
    /// signal is used by the application. The message says why.
    Failed(String),
}

impl Engine {
    /// An engine for `config`, with its ticker (and watchdog) started.
    pub(crate) fn start(config: Config) -> Arc<Engine> {
        // Calibrate the clock now rather than inside the first poll.
        let now = clock().now_ns();
        let ticker = Ticker::new(now);
        ticker.set_slow_poll(config.slow_poll_threshold);
        let engine = Arc::new(Engine {
            ticker,
            hot: CachePadded::new(Hot {
                generation: AtomicU64::new(0),
                exact: AtomicBool::new(config.timing == Timing::Exact),
                max_tier: AtomicU8::new(config.max_tier as u8),
                window_ns: AtomicU64::new(as_nanos(config.budget_window)),
            }),
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
            stacks: if config.interventions.watchdog_threshold.is_some() {
                StackCapturer::start(config.interventions.stack_capture)
            } else {
                StackCapturer::off()
            },
            origins: config.origins.map(OriginMemory::new),
            reconfiguring: Mutex::new(()),
            config: ArcSwap::from_pointee(config),
        });
        let status = match start_ticker(Arc::downgrade(&engine)) {
            Ok(thread) => {
                engine.ticker.set_thread(thread);
                if engine.config().interventions.watchdog_threshold.is_some() {
                    Component::Running
                } else {
                    Component::Disabled
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "tokio-pulse: could not start the ticker thread; every poll reads the clock instead, and stuck polls will not be reported");
                engine.hot.exact.store(true, Ordering::Relaxed);
                Component::Failed(e.to_string())
            }
        };
        *lock(&engine.watchdog) = status;
        engine
    }

    /// Whether polls read the clock (`Timing::Exact`, or no ticker).
    #[inline(always)]
    pub(crate) fn exact_timing(&self) -> bool {
        self.hot.exact.load(Ordering::Relaxed)
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The configuration generation; see [`policy`](Self::policy).
    #[inline]
    pub(crate) fn generation(&self, order: Ordering) -> u64 {
        self.hot.generation.load(order)
    }

    /// The escalation policy of the configuration in force, for a task
    /// that can reach `max_tier` at most, and the generation it is from.
    pub(crate) fn policy(&self, max_tier: Tier) -> (EscalationPolicy, u64) {
        // Generation first: a reconfiguration in between is then seen at
        // the task's next poll, never missed.
        let generation = self.hot.generation.load(Ordering::Acquire);
        (self.config().escalation_policy(max_tier), generation)
    }

    /// What a new task that can reach `max_tier` at most takes from the
    /// configuration: read from the engine's hot line, not the
    /// configuration itself, which costs a spawn more than the rest of its
    /// bookkeeping. A reconfiguration in between is seen at the task's
    /// first poll, as by `policy`.
    #[inline]
    pub(crate) fn spawn_terms(&self, max_tier: Tier) -> SpawnTerms {
        let generation = self.hot.generation.load(Ordering::Acquire);
        SpawnTerms {
            generation,
            max_tier: Tier::from_u8(self.hot.max_tier.load(Ordering::Relaxed)).min(max_tier),
            window_ns: self.hot.window_ns.load(Ordering::Relaxed),
        }
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
    pub(crate) fn task_spawned(&self) {
        self.stats.task_spawned();
    }

    /// Registers a task for snapshots (at its first `Pending`).
    ///
    /// # Safety
    /// `task` must stay valid until [`task_ended`](Self::task_ended) is
    /// called with it.
    pub(crate) unsafe fn register(&self, task: &TaskShared) {
        // SAFETY: passed on from the caller.
        unsafe { self.registry.insert(task) };
        task.set_registered();
    }

    /// A managed task ended: completed, panicked or cancelled.
    pub(crate) fn task_ended(&self, task: &TaskShared) {
        if task.is_registered() {
            self.registry.remove(task.id);
        }
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

    /// Live managed tasks (spawned and not ended, registered or not).
    pub(crate) fn task_count(&self) -> usize {
        self.stats.live_tasks()
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        self.registry
            .for_each(|task| snapshot.tasks.push(TaskSnapshot::of(task)));
        if let Some(threshold) = self.config().interventions.watchdog_threshold {
            snapshot.stuck = watchdog::stuck_polls(&self.ticker, threshold);
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
            ("stack_capture", o.stack_capture != n.stack_capture),
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
        let ticker_failed = matches!(*lock(&self.watchdog), Component::Failed(_));
        self.hot.exact.store(
            new.timing == Timing::Exact || ticker_failed,
            Ordering::Relaxed,
        );
        self.ticker.set_slow_poll(new.slow_poll_threshold);
        self.hot
            .max_tier
            .store(new.max_tier as u8, Ordering::Relaxed);
        self.hot
            .window_ns
            .store(as_nanos(new.budget_window), Ordering::Relaxed);
        self.config.store(Arc::new(new));
        self.hot.generation.fetch_add(1, Ordering::Release);
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
        let config = self.config();
        let floor_wanted = config.interventions.isolation_floor.is_some()
            && config.interventions.isolation_priority != IsolationPriority::Inherit;
        drop(config);
        let (isolation_pool, isolation_floor) = match self.pool.get() {
            None => (Component::NotStarted, Component::NotStarted),
            Some(Err(e)) => (Component::Failed(e.clone()), Component::Failed(e.clone())),
            Some(Ok(pool)) => (
                Component::Running,
                match pool.floor_refused() {
                    Some(why) => Component::Failed(why),
                    None => Component::Running,
                },
            ),
        };
        let watchdog = lock(&self.watchdog).clone();
        let stack_capture = match (&watchdog, self.stacks.state()) {
            (Component::Failed(_), CaptureState::Running) => {
                Component::Failed("the watchdog is not running: no poll is reported".to_owned())
            }
            (_, CaptureState::Running) => Component::Running,
            (_, CaptureState::Off) => Component::Disabled,
            (_, CaptureState::Failed(reason)) => Component::Failed(reason),
        };
        Health {
            watchdog,
            isolation_pool,
            isolation_floor: if floor_wanted {
                isolation_floor
            } else {
                Component::Disabled
            },
            stack_capture,
        }
    }
}

impl Engine {
    /// One tick at `now_ns`: advances the ticker, notes the polls running
    /// on every thread (for their measurement and the watchdog), and
    /// returns what it saw, for the ticker's pace.
    fn tick(&self, now_ns: u64, idle: bool, slots: &mut SlotMemory) -> Seen {
        self.ticker.advance(now_ns, idle);
        let me: *const Ticker = &self.ticker;
        let config = self.config();
        let threshold = config.interventions.watchdog_threshold.map(as_nanos);
        // A reading of a thread's figures this recent stamps a poll seen
        // for the first time: one read per thread and threshold at most,
        // however fine the ticks (each read is a system call).
        let reuse_ns = as_nanos(config.slow_poll_threshold);
        drop(config);
        let stalled_ns = self.ticker.stalled_ns();
        let mut seen = Seen::default();
        let mut stuck = Vec::new();
        slots.sweep_start();
        context::for_each_slot(|slot| {
            let memory = slots.of(slot);
            // Any poll of ours on this thread since the last tick?
            if std::ptr::eq(slot.last_ticker(), me) && memory.changed(slot.seq()) {
                seen.activity = true;
            }
            let Some(poll) = slot.read().filter(|p| std::ptr::eq(p.ticker, me)) else {
                return;
            };
            seen.activity = true;
            let noted = slot.sightings().see(poll.seq, now_ns, stalled_ns, || {
                memory.recent_figures(slot.tid, now_ns, reuse_ns)
            });
            if noted.first_ns >= now_ns {
                return;
            }
            let Some(threshold_ns) = threshold else {
                return;
            };
            // Charged like a poll that ends now (not for time its thread
            // waited for a CPU, nor for time it was blocked while the
            // process was stalled), and only for its CPU time while its
            // thread is runnable (see `schedstat::charged_so_far`).
            let mut running_ns = now_ns - noted.first_ns;
            if running_ns >= threshold_ns {
                if let (Some((stamp_ns, before)), Some((_, now))) =
                    (noted.stamp, memory.recent_figures(slot.tid, now_ns, 0))
                {
                    let stalled = self.ticker.stalled_since(noted.first_stalled_ns, now_ns);
                    let window_ns = now_ns.saturating_sub(stamp_ns);
                    let during = now.since(before);
                    running_ns = charged_so_far(
                        running_ns,
                        window_ns,
                        during,
                        stalled,
                        slot.tid,
                        threshold_ns,
                    );
                }
            }
            stuck.extend(watchdog::check(
                slot,
                poll,
                running_ns,
                threshold_ns,
                &self.stats,
            ));
        });
        slots.sweep_end();
        // The isolation pool's progress floor, if the pool runs.
        if let Some(Ok(pool)) = self.pool.get() {
            let floor = pool.keep_floor(now_ns, self.config().interventions.isolation_floor);
            self.stats.floor_raised(floor.raised);
            // Isolated work is about: keep ticking, so the floor is kept.
            seen.activity |= floor.busy;
        }
        // Reported with the slots' list let go: a capture waits for the
        // stuck thread, and the first one loads the debug information.
        for stuck in stuck {
            watchdog::report(stuck, &self.stacks);
        }
        seen
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The ticker may be sleeping for a long idle period: let it see
        // the engine is gone and exit now.
        self.ticker.unpark();
    }
}

/// What the ticker keeps about each thread slot between ticks: the poll
/// sequence number it last saw (to tell whether any poll ran since), and
/// the thread's scheduler figures file, opened when first needed.
#[derive(Default)]
struct SlotMemory {
    slots: std::collections::HashMap<usize, Remembered>,
}

#[derive(Default)]
struct Remembered {
    /// The thread whose slot this is: a slot freed when its thread exited
    /// may be followed by another thread's at the same address.
    tid: i32,
    seq: u64,
    alive: bool,
    figures: Option<Option<SchedStatFile>>,
    /// The latest reading of `figures`, and when it was taken.
    latest: Option<(u64, SchedStat)>,
}

impl Remembered {
    /// Whether `seq` differs from the last one seen.
    fn changed(&mut self, seq: u64) -> bool {
        std::mem::replace(&mut self.seq, seq) != seq
    }

    /// Thread `tid`'s scheduler figures as of `now_ns`, and when they were
    /// read: the latest reading if it is at most `reuse_ns` old, else a
    /// new one.
    fn recent_figures(&mut self, tid: i32, now_ns: u64, reuse_ns: u64) -> Option<(u64, SchedStat)> {
        if let Some((at, figures)) = self.latest {
            if now_ns.saturating_sub(at) <= reuse_ns && reuse_ns > 0 {
                return Some((at, figures));
            }
        }
        let figures = self
            .figures
            .get_or_insert_with(|| SchedStatFile::thread(tid))
            .as_ref()?
            .read()?;
        self.latest = Some((now_ns, figures));
        self.latest
    }
}

impl SlotMemory {
    fn of(&mut self, slot: &context::ThreadSlot) -> &mut Remembered {
        let fresh = || Remembered {
            tid: slot.tid,
            seq: slot.seq(),
            ..Remembered::default()
        };
        let entry = self
            .slots
            .entry(std::ptr::from_ref(slot) as usize)
            .or_insert_with(fresh);
        if entry.tid != slot.tid {
            *entry = fresh();
        }
        entry.alive = true;
        entry
    }

    fn sweep_start(&mut self) {
        self.slots.values_mut().for_each(|e| e.alive = false);
    }

    /// Forgets slots not seen this tick (their threads exited).
    fn sweep_end(&mut self) {
        self.slots.retain(|_, e| e.alive);
    }
}

/// Starts the ticker thread of one engine; it also runs the watchdog. The
/// thread ends at its next tick after the engine is gone (the `Pulse` and
/// all its tasks; dropping the engine wakes it). The configuration is
/// re-read at each tick, so `reconfigure` can change the pace and the
/// watchdog threshold.
fn start_ticker(engine: Weak<Engine>) -> std::io::Result<std::thread::Thread> {
    let handle = fault::spawn_thread("pulse-ticker".into(), move || {
        let mut pace = Pace::new();
        let mut slots = SlotMemory::default();
        let mut period = Duration::ZERO;
        let mut idle = false;
        loop {
            let slept = std::time::Instant::now();
            std::thread::park_timeout(period);
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let now = clock().now_ns();
            let slept = slept.elapsed();
            if idle && slept < period {
                pace.woken(now);
            }
            if let Some(late) = slept.checked_sub(period) {
                engine.ticker.woke_late(late);
            }
            engine.ticker.working();
            // A panic here can only come from user code (a `tracing`
            // subscriber in a watchdog report); the ticker carries on.
            let seen =
                catch(|| engine.tick(now, idle, &mut slots)).unwrap_or(Seen { activity: true });
            let slow_poll = engine.config().slow_poll_threshold;
            (period, idle) = pace.next(&engine.ticker, seen, now, slow_poll);
            engine.ticker.sleeps_from(clock().now_ns());
        }
    })?;
    Ok(handle.thread().clone())
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
        assert!(
            matches!(health.isolation_floor, Component::Failed(_)),
            "{health:?}"
        );
        // Nothing to capture stacks for without the watchdog.
        let supported = cfg!(all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        ));
        if supported {
            assert!(
                matches!(health.stack_capture, Component::Failed(ref e) if e.contains("watchdog")),
                "{health:?}"
            );
        }
        // Still usable: snapshots and totals answer.
        assert_eq!(engine.snapshot().tasks.len(), 0);
        assert_eq!(engine.totals().tasks_spawned, 0);
    }

    #[test]
    fn a_healthy_engine_reports_its_parts() {
        let engine = Engine::start(Config::default());
        assert_eq!(engine.health().watchdog, Component::Running);
        assert_eq!(engine.health().isolation_pool, Component::NotStarted);
        assert_eq!(engine.health().isolation_floor, Component::NotStarted);
        let off = Engine::start(config(
            PulseBuilder::new()
                .without_watchdog()
                .without_isolation_floor(),
        ));
        assert_eq!(off.health().watchdog, Component::Disabled);
        assert_eq!(off.health().isolation_floor, Component::Disabled);
        let inherit = Engine::start(config(
            PulseBuilder::new().isolation_priority(IsolationPriority::Inherit),
        ));
        assert_eq!(inherit.health().isolation_floor, Component::Disabled);
        assert_eq!(off.health().stack_capture, Component::Disabled);
        let supported = cfg!(all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        ));
        let capture = engine.health().stack_capture;
        if supported {
            assert_eq!(capture, Component::Running);
        } else {
            assert_eq!(capture, Component::Disabled);
        }
        let uncaptured = Engine::start(config(
            PulseBuilder::new().stack_capture(crate::stack::StackCapture::Off),
        ));
        assert_eq!(uncaptured.health().watchdog, Component::Running);
        assert_eq!(uncaptured.health().stack_capture, Component::Disabled);
    }
}
