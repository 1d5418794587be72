//! Pulse-wide counters and gauges through the [`metrics`] facade.
//!
//! The facade finds a series by looking its name and labels up in the
//! recorder's registry: far too much work for every poll. So nothing here
//! touches the poll path. A [`MetricsPublisher`] reads the aggregates
//! tokio-pulse keeps anyway ([`Pulse::totals`] and the live tasks per tier)
//! once per period, on its own thread, and sets handles it registered once.
//! A thread rather than a task, so that a runtime starved by a hog (the
//! moment the numbers matter) still gets its metrics published.

use std::fmt;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use metrics::{Counter, Gauge, Unit, counter, describe_counter, describe_gauge, gauge};

use crate::histogram::{PollHistogram, upper_bound_ns};
use crate::pulse::Pulse;
use crate::stats::Totals;
use crate::tier::{PerTier, Tier};

const TASKS_SPAWNED: &str = "tokio_pulse_tasks_spawned_total";
const TASKS_ENDED: &str = "tokio_pulse_tasks_ended_total";
const TASKS: &str = "tokio_pulse_tasks";
const POLLS: &str = "tokio_pulse_polls_total";
const SLOW_POLLS: &str = "tokio_pulse_slow_polls_total";
const PROMOTIONS: &str = "tokio_pulse_promotions_total";
const DEMOTIONS: &str = "tokio_pulse_demotions_total";
const POLL_BUCKET: &str = "tokio_pulse_poll_duration_seconds_bucket";
const POLL_COUNT: &str = "tokio_pulse_poll_duration_seconds_count";
const POLL_SUM: &str = "tokio_pulse_poll_duration_seconds_sum";
const WATCHDOG_REPORTS: &str = "tokio_pulse_watchdog_reports_total";
const SLOW_LANE_WAITING: &str = "tokio_pulse_slow_lane_queue_depth";
const ISOLATED: &str = "tokio_pulse_isolated_tasks";
const ORIGINS: &str = "tokio_pulse_origins";

/// Publishes what a [`Pulse`] measures as `metrics` counters and gauges.
///
/// Install a recorder (an exporter) first: handles are registered with the
/// recorder installed when the first publish runs.
///
/// # Series
///
/// Every series has a `scope` label: `managed` for the futures a `Pulse`
/// manages ([`Pulse::spawn`], [`PulseExt`](crate::PulseExt),
/// `PulseLayer` with feature `tower`); `runtime` for every task of a runtime
/// observed through `RuntimeHooks` (feature `runtime-hooks`), published
/// once those hooks are installed.
///
/// | name | type | labels | what it counts |
/// |---|---|---|---|
/// | `tokio_pulse_tasks_spawned_total` | counter | `scope` | tasks created |
/// | `tokio_pulse_tasks_ended_total` | counter | `scope` | tasks ended: completed, panicked or cancelled |
/// | `tokio_pulse_tasks` | gauge | `scope`, `tier` | live tasks in each tier; `tier="isolate"` are the isolated tasks |
/// | `tokio_pulse_polls_total` | counter | `scope` | polls |
/// | `tokio_pulse_slow_polls_total` | counter | `scope` | polls over the slow-poll threshold |
/// | `tokio_pulse_promotions_total` | counter | `scope`, `tier` | promotions into `tier`: each is a bad window (too many slow polls, or over budget) |
/// | `tokio_pulse_demotions_total` | counter | `scope`, `tier` | demotions into `tier` after a run of clean windows |
/// | `tokio_pulse_poll_duration_seconds_bucket` | counter | `scope`, `le` | measured polls that took less than `le` seconds |
/// | `tokio_pulse_poll_duration_seconds_count` | counter | `scope` | polls measured (equals the `le="+Inf"` bucket; with sampled timing, the polls that outlasted a tick, see [`Timing`](crate::Timing)) |
/// | `tokio_pulse_poll_duration_seconds_sum` | gauge | `scope` | total time of the measured polls, in seconds |
/// | `tokio_pulse_watchdog_reports_total` | counter | `scope="managed"` | polls the watchdog found stuck while running |
/// | `tokio_pulse_slow_lane_queue_depth` | gauge | `scope="managed"` | `Yield`-tier tasks waiting for a slow-lane slot |
/// | `tokio_pulse_isolated_tasks` | gauge | `scope="managed"` | tasks running on the isolation pool now (`tasks{tier="isolate"}` also counts isolated tasks that could not move) |
/// | `tokio_pulse_origins` | gauge | `scope="managed"`, `tier` | remembered origins (spawn sites, routes) whose new tasks start at `tier` (see [`Origin`](crate::Origin)) |
///
/// A promotion is counted per bad window that moved a task; bad windows of
/// a task already at its highest tier move nothing and are not counted.
/// The `runtime` scope has only the `monitor` and `warn` tiers.
///
/// # The poll-time histogram
///
/// tokio-pulse counts polls in fixed buckets
/// ([`PollHistogram`](crate::PollHistogram): powers of four from 4.096 µs
/// to 1.07 s), one set per task, summed here. The facade's own
/// histograms take raw samples, so these counts are exported exactly as the
/// parts of a Prometheus histogram instead: a cumulative counter per `le`
/// bound, a `_count` counter and a `_sum` gauge (the facade's counters are
/// integers; the gauge only ever grows). Prometheus sees them as a counter
/// family and a gauge rather than one `histogram`, which changes nothing for
/// queries: `histogram_quantile(0.99, rate(tokio_pulse_poll_duration_seconds_bucket[5m]))`
/// and `rate(..._sum[5m]) / rate(..._count[5m])` work as usual. Leave
/// `metrics-exporter-prometheus`'s `with_recommended_naming` off: it would
/// append `_total` to the bucket and count series.
///
/// # Counters never go backwards
///
/// [`Pulse::totals`] can dip for an instant while a task ends (its counts
/// move from the live task to the ended totals); the publisher never sets a
/// counter lower than it last did, so rates stay right.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use tokio_pulse::{MetricsPublisher, Pulse};
///
/// # #[tokio::main]
/// # async fn main() {
/// // Any `metrics` recorder; here the Prometheus exporter on port 9000.
/// metrics_exporter_prometheus::PrometheusBuilder::new()
///     .with_http_listener(([127, 0, 0, 1], 9000))
///     .install()
///     .expect("exporter installed");
///
/// let pulse = Pulse::new();
/// let _publisher = MetricsPublisher::new(&pulse)
///     .period(Duration::from_secs(5))
///     .spawn() // publishes until dropped
///     .expect("a positive period, and a thread to publish on");
/// # }
/// ```
#[derive(Debug)]
pub struct MetricsPublisher {
    pulse: Pulse,
    period: Duration,
    managed: Option<ScopeSeries>,
    #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
    runtime: Option<ScopeSeries>,
}

impl MetricsPublisher {
    /// How often [`spawn`](MetricsPublisher::spawn) publishes unless told
    /// otherwise: often enough for a dashboard, rarely enough that walking
    /// the live tasks for their tiers is lost in the noise.
    pub const DEFAULT_PERIOD: Duration = Duration::from_secs(1);

    /// A publisher for `pulse`, with the default period.
    pub fn new(pulse: &Pulse) -> Self {
        MetricsPublisher {
            pulse: pulse.clone(),
            period: Self::DEFAULT_PERIOD,
            managed: None,
            #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
            runtime: None,
        }
    }

    /// How often the spawned publisher publishes. Must be positive:
    /// [`spawn`](MetricsPublisher::spawn) refuses a zero period.
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Publishes once, now, on the calling thread. Walks the live tasks once
    /// (for their tiers), under each registry shard's lock in turn.
    pub fn publish(&mut self) {
        let totals = self.pulse.totals();
        let engine = self.pulse.engine();
        let (tiers, origins) = (engine.tier_counts(), engine.origin_tier_counts());
        let series = self
            .managed
            .get_or_insert_with(|| ScopeSeries::register("managed", Tier::Isolate));
        series.publish(&totals, tiers);
        if let Some(i) = &series.interventions {
            for (tier, n) in origins.tiers() {
                i.origins[tier].set(*n as f64);
            }
        }
        #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
        self.publish_runtime();
    }

    /// The `runtime` scope, once runtime hooks are installed.
    #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
    fn publish_runtime(&mut self) {
        let tasks = &self.pulse.engine().runtime;
        if !tasks.installed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let (totals, tiers) = (tasks.totals(), tasks.tier_counts());
        self.runtime
            .get_or_insert_with(|| ScopeSeries::register("runtime", Tier::Warn))
            .publish(&totals, tiers);
    }

    /// Publishes now and then once per period on a thread of its own, until
    /// the returned handle is dropped or stopped.
    ///
    /// # Errors
    /// [`PublisherError::ZeroPeriod`] if the period is zero,
    /// [`PublisherError::Thread`] if the OS refused the thread.
    pub fn spawn(mut self) -> Result<PublisherHandle, PublisherError> {
        if self.period.is_zero() {
            return Err(PublisherError::ZeroPeriod);
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("tokio-pulse-metrics".into())
            .spawn(move || {
                loop {
                    self.publish();
                    match stopped.recv_timeout(self.period) {
                        Err(RecvTimeoutError::Timeout) => continue,
                        // Stopped: publish once more so the last values are current.
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                self.publish();
            })
            .map_err(PublisherError::Thread)?;
        Ok(PublisherHandle {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Why [`MetricsPublisher::spawn`] could not start a publisher.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublisherError {
    /// The period set with [`MetricsPublisher::period`] is zero.
    ZeroPeriod,
    /// The OS refused to start the publisher's thread.
    Thread(std::io::Error),
}

impl fmt::Display for PublisherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublisherError::ZeroPeriod => f.write_str(
                "`MetricsPublisher::period` is zero; a publishing period must be positive",
            ),
            PublisherError::Thread(e) => {
                write!(f, "could not start the metrics publisher's thread: {e}")
            }
        }
    }
}

impl std::error::Error for PublisherError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublisherError::ZeroPeriod => None,
            PublisherError::Thread(e) => Some(e),
        }
    }
}

/// Keeps a spawned [`MetricsPublisher`] running; stops it when dropped.
#[derive(Debug)]
#[must_use = "the publisher stops when its handle is dropped"]
pub struct PublisherHandle {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PublisherHandle {
    /// Stops the publisher after one last publish, and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A panic in the publisher has already been reported by its thread.
            let _ = thread.join();
        }
    }
}

impl Drop for PublisherHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A counter that never goes backwards.
#[derive(Debug)]
struct Monotonic {
    counter: Counter,
    last: u64,
}

impl Monotonic {
    fn new(counter: Counter) -> Self {
        Monotonic { counter, last: 0 }
    }

    fn set(&mut self, value: u64) {
        if value > self.last {
            self.last = value;
            self.counter.absolute(value);
        }
    }
}

/// The registered series of one scope.
#[derive(Debug)]
struct ScopeSeries {
    tasks_spawned: Monotonic,
    tasks_ended: Monotonic,
    polls: Monotonic,
    slow_polls: Monotonic,
    /// `None` for tiers the scope cannot enter.
    promotions: PerTier<Option<Monotonic>>,
    demotions: PerTier<Option<Monotonic>>,
    tasks: PerTier<Option<Gauge>>,
    buckets: [Monotonic; PollHistogram::BUCKETS],
    count: Monotonic,
    sum: Gauge,
    sum_last: f64,
    /// Only for the managed scope: the interventions act on managed tasks.
    interventions: Option<InterventionSeries>,
}

/// The series of the slow lane, the isolation pool and the watchdog.
#[derive(Debug)]
struct InterventionSeries {
    watchdog_reports: Monotonic,
    slow_lane_waiting: Gauge,
    isolated: Gauge,
    origins: PerTier<Gauge>,
}

impl ScopeSeries {
    /// Registers the series of `scope`, whose tasks go no higher than `max_tier`.
    fn register(scope: &'static str, max_tier: Tier) -> Self {
        describe();
        let by_tier = |name: &'static str, reachable: fn(Tier) -> bool| {
            PerTier::from_fn(|t| {
                (t <= max_tier && reachable(t))
                    .then(|| Monotonic::new(counter!(name, "scope" => scope, "tier" => t.as_str())))
            })
        };
        let buckets = std::array::from_fn(|i| {
            let le = match upper_bound_ns(i) {
                Some(ns) => (ns as f64 / 1e9).to_string(),
                None => "+Inf".to_owned(),
            };
            Monotonic::new(counter!(POLL_BUCKET, "scope" => scope, "le" => le))
        });
        ScopeSeries {
            tasks_spawned: Monotonic::new(counter!(TASKS_SPAWNED, "scope" => scope)),
            tasks_ended: Monotonic::new(counter!(TASKS_ENDED, "scope" => scope)),
            polls: Monotonic::new(counter!(POLLS, "scope" => scope)),
            slow_polls: Monotonic::new(counter!(SLOW_POLLS, "scope" => scope)),
            promotions: by_tier(PROMOTIONS, |t| t > Tier::Monitor),
            demotions: by_tier(DEMOTIONS, |t| t < Tier::Isolate),
            tasks: PerTier::from_fn(|t| {
                (t <= max_tier).then(|| gauge!(TASKS, "scope" => scope, "tier" => t.as_str()))
            }),
            buckets,
            count: Monotonic::new(counter!(POLL_COUNT, "scope" => scope)),
            sum: gauge!(POLL_SUM, "scope" => scope),
            sum_last: 0.0,
            interventions: (max_tier == Tier::Isolate).then(|| InterventionSeries {
                watchdog_reports: Monotonic::new(counter!(WATCHDOG_REPORTS, "scope" => scope)),
                slow_lane_waiting: gauge!(SLOW_LANE_WAITING, "scope" => scope),
                isolated: gauge!(ISOLATED, "scope" => scope),
                origins: PerTier::from_fn(
                    |t| gauge!(ORIGINS, "scope" => scope, "tier" => t.as_str()),
                ),
            }),
        }
    }

    fn publish(&mut self, totals: &Totals, tiers: PerTier<usize>) {
        self.tasks_spawned.set(totals.tasks_spawned);
        self.tasks_ended.set(totals.tasks_ended);
        self.polls.set(totals.polls);
        self.slow_polls.set(totals.slow_polls);
        for tier in Tier::ALL {
            if let Some(c) = &mut self.promotions[tier] {
                c.set(totals.promotions[tier]);
            }
            if let Some(c) = &mut self.demotions[tier] {
                c.set(totals.demotions[tier]);
            }
            if let Some(g) = &self.tasks[tier] {
                g.set(tiers[tier] as f64);
            }
        }
        let mut cumulative = 0;
        for (bucket, n) in self
            .buckets
            .iter_mut()
            .zip(totals.poll_time_histogram.counts)
        {
            cumulative += n;
            bucket.set(cumulative);
        }
        self.count.set(cumulative);
        let sum = totals.measured_poll_time.as_secs_f64();
        if sum > self.sum_last {
            self.sum_last = sum;
            self.sum.set(sum);
        }
        if let Some(i) = &mut self.interventions {
            i.watchdog_reports.set(totals.watchdog_reports);
            i.slow_lane_waiting.set(totals.slow_lane_waiting as f64);
            i.isolated.set(totals.isolated_tasks as f64);
        }
    }
}

/// Describes every series to the installed recorder (it shows as `# HELP`).
fn describe() {
    describe_counter!(TASKS_SPAWNED, Unit::Count, "Tasks created.");
    describe_counter!(
        TASKS_ENDED,
        Unit::Count,
        "Tasks ended: completed, panicked or cancelled."
    );
    describe_gauge!(TASKS, Unit::Count, "Live tasks in each tier.");
    describe_counter!(
        WATCHDOG_REPORTS,
        Unit::Count,
        "Polls the watchdog found still running past its threshold."
    );
    describe_gauge!(
        SLOW_LANE_WAITING,
        Unit::Count,
        "Yield-tier tasks waiting for a slow-lane slot."
    );
    describe_gauge!(ISOLATED, Unit::Count, "Tasks on the isolation pool now.");
    describe_gauge!(
        ORIGINS,
        Unit::Count,
        "Remembered origins (spawn sites, routes) whose new tasks start at each tier."
    );
    describe_counter!(POLLS, Unit::Count, "Polls.");
    describe_counter!(
        SLOW_POLLS,
        Unit::Count,
        "Polls longer than the slow-poll threshold."
    );
    describe_counter!(
        PROMOTIONS,
        Unit::Count,
        "Promotions into each tier, one per bad window that moved a task."
    );
    describe_counter!(
        DEMOTIONS,
        Unit::Count,
        "Demotions into each tier after a run of clean windows."
    );
    describe_counter!(
        POLL_BUCKET,
        Unit::Count,
        "Polls that took less than `le` seconds (cumulative histogram buckets)."
    );
    describe_counter!(POLL_COUNT, Unit::Count, "Polls measured.");
    describe_gauge!(
        POLL_SUM,
        Unit::Seconds,
        "Total time spent in polls (never published lower than before)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_period_is_refused_with_a_message_naming_the_setter() {
        let err = MetricsPublisher::new(&Pulse::new())
            .period(Duration::ZERO)
            .spawn()
            .expect_err("a zero period was accepted");
        assert!(matches!(err, PublisherError::ZeroPeriod));
        assert!(
            err.to_string().contains("MetricsPublisher::period"),
            "{err}"
        );
    }

    #[test]
    fn a_monotonic_counter_ignores_dips() {
        let mut c = Monotonic::new(Counter::noop());
        c.set(10);
        c.set(7);
        assert_eq!(c.last, 10);
        c.set(12);
        assert_eq!(c.last, 12);
    }
}
