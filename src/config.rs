//! Configuration: profiles, the builder, and validation.

use std::fmt;
use std::time::Duration;

use crate::budget::BudgetLimits;
use crate::isolation::{FloorSettings, IsolationPriority};
use crate::origins::OriginSettings;
use crate::stack::{self, StackCapture};
use crate::tier::{EscalationPolicy, Tier};
use crate::timing::as_nanos;

/// A preset of thresholds. Start from one and override single values on the
/// [`PulseBuilder`].
///
/// | | slow poll | CPU budget / window | slow polls for a bad window | clean windows to demote |
/// |---|---|---|---|---|
/// | `Aggressive` | 250 µs | 10 ms / 100 ms | 1 | 20 (2 s) |
/// | `Balanced` | 1 ms | 30 ms / 100 ms | 2 | 10 (1 s) |
/// | `Permissive` | 5 ms | 60 ms / 100 ms | 4 | 5 (0.5 s) |
///
/// `Balanced` follows Tokio's guidance that a task should reach an `.await`
/// every 10 to 100 µs: a poll ten times past that is clearly a bug, and two
/// of them within 100 ms is a pattern rather than an accident.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Catches hogs early and forgives slowly: for latency-critical services.
    Aggressive,
    /// The default.
    #[default]
    Balanced,
    /// Acts only on gross misbehaviour: for batch-heavy runtimes.
    Permissive,
}

impl Profile {
    fn defaults(self) -> Config {
        let ms = Duration::from_millis;
        let (slow, budget, strikes, clean) = match self {
            Profile::Aggressive => (Duration::from_micros(250), ms(10), 1, 20),
            Profile::Balanced => (ms(1), ms(30), 2, 10),
            Profile::Permissive => (ms(5), ms(60), 4, 5),
        };
        Config {
            slow_poll_threshold: slow,
            cpu_budget: budget,
            budget_window: ms(100),
            slow_polls_per_window: strikes,
            clean_windows_to_demote: clean,
            max_tier: Tier::Isolate,
            max_warnings_per_second: 100,
            interventions: Interventions::default(),
            origins: Some(OriginSettings {
                capacity: DEFAULT_ORIGIN_CAPACITY,
                clean_tasks: clean,
            }),
            timing: Timing::default(),
        }
    }
}

/// How the length of polls is measured. Set with [`PulseBuilder::timing`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Timing {
    /// The default: a poll reads no clock unless it outlasts a tick of the
    /// `Pulse`'s ticker thread. A tick is a quarter of the slow-poll
    /// threshold while long polls are about, the threshold itself while
    /// all polls are short, and longer when no poll runs at all. A poll
    /// that spans a tick reads the clock once and is judged by how long it
    /// certainly ran (from the first tick after its start): its length is
    /// at most one tick short. What it means for each figure:
    ///
    /// - [`TaskSnapshot::polls`](crate::TaskSnapshot::polls),
    ///   [`Totals::polls`](crate::Totals::polls): every poll is counted,
    ///   but a live task publishes its count at its first poll after each
    ///   tick, so a reading can miss the polls since the latest tick; an
    ///   ended task's count is exact.
    /// - slow polls, the longest poll, the poll-time histogram, the
    ///   [`PollReport::duration`](crate::PollReport::duration) hooks see:
    ///   measured polls only, at that lower bound; a poll shorter than a
    ///   tick reports zero (it was short: it cannot be slow).
    /// - [`TaskSnapshot::total_poll_time`](crate::TaskSnapshot::total_poll_time),
    ///   [`Totals::poll_time`](crate::Totals::poll_time): an unbiased
    ///   estimate: each poll is charged the ticks it spanned, which for a
    ///   poll of random phase averages its true length.
    #[default]
    Sampled,
    /// Every poll reads the clock when it starts and ends: exact figures,
    /// for two clock reads per poll (see BENCHMARKS.md).
    Exact,
}

/// A configuration value that [`PulseBuilder::build`] refused.
///
/// The `Display` message names the setter and the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration or count that must be positive was zero.
    Zero {
        /// The builder method that set it.
        field: &'static str,
    },
    /// A value was outside the range it must lie in.
    OutOfRange {
        /// The builder method that set it.
        field: &'static str,
        /// The value given, formatted.
        value: String,
        /// The rule, e.g. "at most 60s".
        rule: &'static str,
    },
    /// `Pulse::reconfigure` was asked to change a setting that is fixed
    /// once the `Pulse` is built.
    NotReloadable {
        /// The builder method whose value differs from the running one.
        field: &'static str,
    },
    /// Two values contradict each other.
    Inconsistent {
        /// The builder method whose value is wrong relative to the other.
        field: &'static str,
        /// What the two values are and why they cannot go together.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Zero { field } => write!(f, "`{field}` must be greater than zero"),
            ConfigError::OutOfRange { field, value, rule } => {
                write!(f, "`{field}` is {value}, but it must be {rule}")
            }
            ConfigError::Inconsistent { field, reason } => write!(f, "`{field}`: {reason}"),
            ConfigError::NotReloadable { field } => write!(
                f,
                "`{field}` is fixed when the Pulse is built and cannot be changed by `reconfigure`; build a new Pulse instead"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    pub slow_poll_threshold: Duration,
    pub cpu_budget: Duration,
    pub budget_window: Duration,
    pub slow_polls_per_window: u32,
    pub clean_windows_to_demote: u32,
    pub max_tier: Tier,
    pub max_warnings_per_second: u32,
    pub interventions: Interventions,
    /// `None`: origins are not remembered.
    pub origins: Option<OriginSettings>,
    pub timing: Timing,
}

/// How the `Yield` and `Isolate` tiers and the watchdog act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Interventions {
    pub slow_lane_slots: usize,
    pub isolation_threads: usize,
    pub isolation_priority: IsolationPriority,
    /// `None`: no watchdog.
    pub watchdog_threshold: Option<Duration>,
    /// `None`: no progress floor for isolated work.
    pub isolation_floor: Option<FloorSettings>,
    pub stack_capture: StackCapture,
}

impl Default for Interventions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Interventions {
            slow_lane_slots: (cores / 2).max(1),
            isolation_threads: cores,
            isolation_priority: IsolationPriority::default(),
            watchdog_threshold: Some(DEFAULT_WATCHDOG_THRESHOLD),
            isolation_floor: Some(FloorSettings::DEFAULT),
            stack_capture: StackCapture::default(),
        }
    }
}

/// A poll running this long is stuck rather than slow: 100 ms is past
/// anything a latency-sensitive service tolerates, yet far enough from the
/// slow-poll threshold that the watchdog only fires on real trouble.
pub const DEFAULT_WATCHDOG_THRESHOLD: Duration = Duration::from_millis(100);

/// Most isolation threads a pool may have.
const MAX_ISOLATION_THREADS: usize = 1024;

/// Origins remembered by default: far more offending spawn sites and
/// routes than a service has, and a bound (a few hundred KiB) on what names
/// of unbounded cardinality can take.
const DEFAULT_ORIGIN_CAPACITY: usize = 1024;

/// Most origins a `Pulse` may remember.
const MAX_ORIGIN_CAPACITY: usize = 1 << 16;

impl Config {
    pub(crate) fn escalation_policy(&self, max_tier: Tier) -> EscalationPolicy {
        EscalationPolicy {
            limits: BudgetLimits {
                slow_poll_ns: as_nanos(self.slow_poll_threshold),
                cpu_budget_ns: as_nanos(self.cpu_budget),
                charge_floor_ns: as_nanos(self.slow_poll_threshold) / 4,
                window_ns: as_nanos(self.budget_window),
                strikes: self.slow_polls_per_window,
            },
            clean_windows: self.clean_windows_to_demote,
            max_tier: self.max_tier.min(max_tier),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        const MAX_WINDOW: Duration = Duration::from_secs(60);
        // The window first: an unset budget is derived from it.
        let positive = [
            ("budget_window", self.budget_window),
            ("slow_poll_threshold", self.slow_poll_threshold),
            ("cpu_budget", self.cpu_budget),
        ];
        for (field, d) in positive {
            if d.is_zero() {
                return Err(ConfigError::Zero { field });
            }
        }
        let counts = [
            ("slow_polls_per_window", self.slow_polls_per_window),
            ("clean_windows_to_demote", self.clean_windows_to_demote),
            ("max_warnings_per_second", self.max_warnings_per_second),
        ];
        for (field, n) in counts {
            if n == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.budget_window > MAX_WINDOW {
            return Err(ConfigError::OutOfRange {
                field: "budget_window",
                value: format!("{:?}", self.budget_window),
                rule: "at most 60s (a longer window reacts too late to be useful)",
            });
        }
        if self.cpu_budget > self.budget_window {
            return Err(ConfigError::Inconsistent {
                field: "cpu_budget",
                reason: format!(
                    "the budget ({:?}) is longer than its window ({:?}); a task cannot run longer than the window it is measured in",
                    self.cpu_budget, self.budget_window
                ),
            });
        }
        if self.slow_poll_threshold >= self.budget_window {
            return Err(ConfigError::Inconsistent {
                field: "slow_poll_threshold",
                reason: format!(
                    "the threshold ({:?}) must be shorter than the window ({:?}) that counts slow polls",
                    self.slow_poll_threshold, self.budget_window
                ),
            });
        }
        self.validate_interventions()
    }

    fn validate_interventions(&self) -> Result<(), ConfigError> {
        let i = &self.interventions;
        if i.slow_lane_slots == 0 {
            return Err(ConfigError::Zero {
                field: "slow_lane_slots",
            });
        }
        if i.isolation_threads == 0 {
            return Err(ConfigError::Zero {
                field: "isolation_threads",
            });
        }
        if i.isolation_threads > MAX_ISOLATION_THREADS {
            return Err(ConfigError::OutOfRange {
                field: "isolation_threads",
                value: i.isolation_threads.to_string(),
                rule: "at most 1024",
            });
        }
        if let IsolationPriority::Nice(n) = i.isolation_priority {
            if !(-20..=19).contains(&n) {
                return Err(ConfigError::OutOfRange {
                    field: "isolation_priority",
                    value: format!("Nice({n})"),
                    rule: "a nice value from -20 to 19",
                });
            }
        }
        if let Some(o) = &self.origins {
            if o.capacity == 0 {
                return Err(ConfigError::Zero {
                    field: "origin_memory_capacity",
                });
            }
            if o.capacity > MAX_ORIGIN_CAPACITY {
                return Err(ConfigError::OutOfRange {
                    field: "origin_memory_capacity",
                    value: o.capacity.to_string(),
                    rule: "at most 65536",
                });
            }
            if o.clean_tasks == 0 {
                return Err(ConfigError::Zero {
                    field: "origin_clean_tasks",
                });
            }
        }
        if let Some(floor) = i.isolation_floor {
            validate_floor(floor)?;
        }
        if let StackCapture::Signal(signal) = i.stack_capture {
            // Where capture is not supported, any setting means off.
            if let Some(range) = stack::signal_range().filter(|r| !r.contains(&signal)) {
                static RULE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                return Err(ConfigError::OutOfRange {
                    field: "stack_capture",
                    value: format!("StackCapture::Signal({signal})"),
                    rule: RULE.get_or_init(|| {
                        format!(
                            "a real-time signal, from SIGRTMIN ({}) to SIGRTMAX ({}), that the application does not use",
                            range.start(),
                            range.end()
                        )
                    }),
                });
            }
        }
        if let Some(threshold) = i.watchdog_threshold {
            if threshold <= self.slow_poll_threshold {
                return Err(ConfigError::Inconsistent {
                    field: "watchdog_threshold",
                    reason: format!(
                        "the threshold ({threshold:?}) must be longer than the slow-poll threshold ({:?}): a stuck poll is worse than a slow one",
                        self.slow_poll_threshold
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The bounds of [`PulseBuilder::isolation_floor`]'s settings.
fn validate_floor(floor: FloorSettings) -> Result<(), ConfigError> {
    const AFTER: std::ops::RangeInclusive<Duration> =
        Duration::from_millis(10)..=Duration::from_secs(10);
    if !(1..=50).contains(&floor.percent) {
        return Err(ConfigError::OutOfRange {
            field: "isolation_floor",
            value: format!("{} %", floor.percent),
            rule: "a share from 1 to 50 %",
        });
    }
    if !AFTER.contains(&floor.after) {
        return Err(ConfigError::OutOfRange {
            field: "isolation_floor",
            value: format!("{:?}", floor.after),
            rule: "a time from 10ms to 10s (shorter would raise threads on ordinary scheduling jitter)",
        });
    }
    Ok(())
}

impl Default for Config {
    fn default() -> Self {
        Profile::default().defaults()
    }
}

/// Builds a [`Pulse`](crate::Pulse). Obtain one with [`Pulse::builder`](crate::Pulse::builder).
///
/// Setters only record values; [`build`](PulseBuilder::build) validates them
/// all and says which one is wrong.
///
/// ```
/// use std::time::Duration;
/// use tokio_pulse::{Profile, Pulse};
///
/// let pulse = Pulse::builder()
///     .profile(Profile::Aggressive)
///     .slow_poll_threshold(Duration::from_micros(500))
///     .build()?;
/// # Ok::<(), tokio_pulse::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PulseBuilder {
    profile: Profile,
    overrides: Overrides,
}

/// Values set explicitly, applied over the profile's defaults at build time
/// so that `profile()` may be called before or after the setters.
#[derive(Clone, Debug, Default)]
struct Overrides {
    slow_poll_threshold: Option<Duration>,
    cpu_budget: Option<Duration>,
    budget_window: Option<Duration>,
    slow_polls_per_window: Option<u32>,
    clean_windows_to_demote: Option<u32>,
    max_tier: Option<Tier>,
    max_warnings_per_second: Option<u32>,
    slow_lane_slots: Option<usize>,
    isolation_threads: Option<usize>,
    isolation_priority: Option<IsolationPriority>,
    watchdog_threshold: Option<Option<Duration>>,
    isolation_floor: Option<Option<FloorSettings>>,
    stack_capture: Option<StackCapture>,
    origin_capacity: Option<Option<usize>>,
    origin_clean_tasks: Option<u32>,
    timing: Option<Timing>,
}

impl PulseBuilder {
    pub(crate) fn new() -> Self {
        PulseBuilder {
            profile: Profile::default(),
            overrides: Overrides::default(),
        }
    }

    /// The preset the other values default to. `Balanced` if not called.
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// A poll that holds its worker longer than this is slow: a strike
    /// against the task. Must be positive and shorter than `budget_window`.
    pub fn slow_poll_threshold(mut self, threshold: Duration) -> Self {
        self.overrides.slow_poll_threshold = Some(threshold);
        self
    }

    /// Worker time a task may use within one `budget_window` before the
    /// window counts against it. If not set, it is the profile's share of
    /// the window (30 % for `Balanced`), also when the window is changed. Only polls of at least a quarter of the
    /// slow-poll threshold are charged: a task that yields every few
    /// microseconds is cooperative however busy it is, while one whose polls
    /// are each just under the threshold is caught here. Must be positive and
    /// no longer than the window.
    pub fn cpu_budget(mut self, budget: Duration) -> Self {
        self.overrides.cpu_budget = Some(budget);
        self
    }

    /// The window over which slow polls and time used are judged
    /// (default 100 ms). Positive, at most 60 s.
    pub fn budget_window(mut self, window: Duration) -> Self {
        self.overrides.budget_window = Some(window);
        self
    }

    /// Slow polls within one window that make it a bad window and promote
    /// the task one tier. At least 1.
    pub fn slow_polls_per_window(mut self, count: u32) -> Self {
        self.overrides.slow_polls_per_window = Some(count);
        self
    }

    /// Consecutive clean windows after which a promoted task is demoted one
    /// tier: the hysteresis that keeps tiers from flapping. At least 1.
    pub fn clean_windows_to_demote(mut self, count: u32) -> Self {
        self.overrides.clean_windows_to_demote = Some(count);
        self
    }

    /// The highest tier tasks may reach: `Tier::Warn` observes and reports
    /// without ever intervening. Default `Tier::Isolate`.
    pub fn max_tier(mut self, tier: Tier) -> Self {
        self.overrides.max_tier = Some(tier);
        self
    }

    /// Upper bound on escalation warnings emitted through `tracing` per
    /// second, across all tasks, so a storm of hogs cannot flood the logs.
    /// At least 1; default 100.
    pub fn max_warnings_per_second(mut self, count: u32) -> Self {
        self.overrides.max_warnings_per_second = Some(count);
        self
    }

    /// How many `Yield`-tier tasks may be polled at once, together: this caps
    /// the share of worker time all of them get at `slots / workers`, and
    /// the rest of the workers stay free for well-behaved tasks. Waiting
    /// tasks take turns by deficit round robin on measured poll time.
    /// Default: half the available cores, at least 1. At least 1.
    pub fn slow_lane_slots(mut self, slots: usize) -> Self {
        self.overrides.slow_lane_slots = Some(slots);
        self
    }

    /// Threads in the isolation pool, where `Isolate`-tier tasks run.
    /// Default: one per available core, so isolated hogs can use whatever
    /// CPU the main workers leave idle. From 1 to 1024. The threads start
    /// when the first task is isolated.
    pub fn isolation_threads(mut self, threads: usize) -> Self {
        self.overrides.isolation_threads = Some(threads);
        self
    }

    /// OS priority of the isolation threads. Default
    /// [`IsolationPriority::Idle`] (Linux `SCHED_IDLE`).
    pub fn isolation_priority(mut self, priority: IsolationPriority) -> Self {
        self.overrides.isolation_priority = Some(priority);
        self
    }

    /// A poll still running after this long is reported by the watchdog
    /// while it runs, and the task is isolated at its next poll. Default
    /// 100 ms; must be longer than the slow-poll threshold.
    pub fn watchdog_threshold(mut self, threshold: Duration) -> Self {
        self.overrides.watchdog_threshold = Some(Some(threshold));
        self
    }

    /// Turns the stuck-poll watchdog (one OS thread per `Pulse`) off.
    pub fn without_watchdog(mut self) -> Self {
        self.overrides.watchdog_threshold = Some(None);
        self
    }

    /// The progress floor of isolated work: an isolation thread that has
    /// had work for `after`, ran less than `percent` % of the last
    /// `after`, and is waiting for a CPU, is raised back to normal priority
    /// until it has had that share; then it drops back. A busy host (other
    /// processes on every core, or saturated main workers) thus starves
    /// isolated tasks for about `after` at most, and isolated work takes
    /// at most about `percent` % of a CPU per isolation thread from
    /// everyone else, main workers included, and only while it would
    /// otherwise starve. Default 50 % after 50 ms; `percent` from 1 to 50,
    /// `after` from 10 ms to 10 s. Can be changed by `reconfigure`.
    ///
    /// Raising a thread needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that
    /// allows its inherited nice value (Linux); where the OS refuses, the
    /// floor is off, which [`Pulse::health`](crate::Pulse::health) shows.
    /// Nothing is raised with [`IsolationPriority::Inherit`].
    pub fn isolation_floor(mut self, percent: u8, after: Duration) -> Self {
        self.overrides.isolation_floor = Some(Some(FloorSettings { percent, after }));
        self
    }

    /// Turns the progress floor of isolated work off: isolation threads
    /// stay at their low priority however long they starve.
    pub fn without_isolation_floor(mut self) -> Self {
        self.overrides.isolation_floor = Some(None);
        self
    }

    /// Whether the watchdog captures the stack of a stuck poll's thread,
    /// and with which signal: [`StackCapture::On`] (the default, signal
    /// `SIGRTMIN() + 6`), [`StackCapture::Signal`] to pick another
    /// real-time signal, [`StackCapture::Off`]. Only on Linux on x86-64 and
    /// aarch64; elsewhere it is always off. A signal outside `SIGRTMIN()`
    /// to `SIGRTMAX()` is refused by `build`; one the application handles
    /// turns capture off for the `Pulse` (see [`StackCapture`]). Fixed once
    /// the `Pulse` is built.
    ///
    /// ```
    /// use tokio_pulse::{Pulse, StackCapture};
    ///
    /// let pulse = Pulse::builder().stack_capture(StackCapture::Off).build()?;
    /// # Ok::<(), tokio_pulse::ConfigError>(())
    /// ```
    pub fn stack_capture(mut self, capture: StackCapture) -> Self {
        self.overrides.stack_capture = Some(capture);
        self
    }

    /// How many origins (spawn sites and task names, see
    /// [`Origin`](crate::Origin)) whose tasks misbehaved are remembered at
    /// once, so that their new tasks start at the tier they earned.
    /// Default 1024, from 1 to 65536; fixed once the `Pulse` is built.
    /// Well-behaved origins take no room.
    pub fn origin_memory_capacity(mut self, origins: usize) -> Self {
        self.overrides.origin_capacity = Some(Some(origins));
        self
    }

    /// Tasks of a remembered origin that must end in a row without
    /// misbehaving before its new tasks start one tier lower: the
    /// hysteresis of origin memory. Default: the profile's
    /// `clean_windows_to_demote` (10 for `Balanced`). At least 1.
    pub fn origin_clean_tasks(mut self, tasks: u32) -> Self {
        self.overrides.origin_clean_tasks = Some(tasks);
        self
    }

    /// How polls are measured: [`Timing::Sampled`] (the default: a short
    /// poll reads no clock) or [`Timing::Exact`] (every poll reads the
    /// clock twice). Can be changed by `reconfigure`.
    pub fn timing(mut self, timing: Timing) -> Self {
        self.overrides.timing = Some(timing);
        self
    }

    /// Turns origin memory off: every task starts at `Monitor` and is
    /// judged alone, whatever its spawn site or name did before.
    pub fn without_origin_memory(mut self) -> Self {
        self.overrides.origin_capacity = Some(None);
        self
    }

    pub(crate) fn config(&self) -> Result<Config, ConfigError> {
        let o = &self.overrides;
        // Checked even with origin memory off, so a zero is never accepted.
        if o.origin_clean_tasks == Some(0) {
            return Err(ConfigError::Zero {
                field: "origin_clean_tasks",
            });
        }
        let d = self.profile.defaults();
        let config = Config {
            slow_poll_threshold: o.slow_poll_threshold.unwrap_or(d.slow_poll_threshold),
            // An unset budget keeps the profile's share of whatever window
            // is set, never rounded down to zero: a window too short to
            // hold it is then reported as the window's problem, not as a
            // zero budget the user never set.
            cpu_budget: o.cpu_budget.unwrap_or_else(|| match o.budget_window {
                Some(w) => w
                    .mul_f64(d.cpu_budget.as_secs_f64() / d.budget_window.as_secs_f64())
                    .max(Duration::from_nanos(1)),
                None => d.cpu_budget,
            }),
            budget_window: o.budget_window.unwrap_or(d.budget_window),
            slow_polls_per_window: o.slow_polls_per_window.unwrap_or(d.slow_polls_per_window),
            clean_windows_to_demote: o
                .clean_windows_to_demote
                .unwrap_or(d.clean_windows_to_demote),
            max_tier: o.max_tier.unwrap_or(d.max_tier),
            max_warnings_per_second: o
                .max_warnings_per_second
                .unwrap_or(d.max_warnings_per_second),
            interventions: Interventions {
                slow_lane_slots: o.slow_lane_slots.unwrap_or(d.interventions.slow_lane_slots),
                isolation_threads: o
                    .isolation_threads
                    .unwrap_or(d.interventions.isolation_threads),
                isolation_priority: o
                    .isolation_priority
                    .unwrap_or(d.interventions.isolation_priority),
                watchdog_threshold: o
                    .watchdog_threshold
                    .unwrap_or(d.interventions.watchdog_threshold),
                isolation_floor: o.isolation_floor.unwrap_or(d.interventions.isolation_floor),
                stack_capture: o.stack_capture.unwrap_or(d.interventions.stack_capture),
            },
            origins: o
                .origin_capacity
                .unwrap_or(d.origins.map(|d| d.capacity))
                .map(|capacity| OriginSettings {
                    capacity,
                    clean_tasks: o
                        .origin_clean_tasks
                        .unwrap_or(d.origins.map_or(1, |d| d.clean_tasks)),
                }),
            timing: o.timing.unwrap_or(d.timing),
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_is_valid() {
        for p in [Profile::Aggressive, Profile::Balanced, Profile::Permissive] {
            p.defaults().validate().unwrap();
        }
    }

    #[test]
    fn setters_override_the_profile_in_any_order() {
        let c = PulseBuilder::new()
            .slow_poll_threshold(Duration::from_millis(3))
            .profile(Profile::Aggressive)
            .config()
            .unwrap();
        assert_eq!(c.slow_poll_threshold, Duration::from_millis(3));
        assert_eq!(c.cpu_budget, Profile::Aggressive.defaults().cpu_budget);
    }

    #[test]
    fn unset_budget_scales_with_a_changed_window() {
        let c = PulseBuilder::new()
            .budget_window(Duration::from_millis(20))
            .config()
            .unwrap();
        assert_eq!(c.cpu_budget, Duration::from_millis(6));
    }
}
