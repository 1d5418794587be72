//! Pulse-wide totals: what all managed tasks, live and ended, have done.
//!
//! Per-poll figures live in each task's own state (single writer, no
//! contention); they are folded into the totals here when the task ends.
//! Tier changes and task ends are rare, so the shared counters below are
//! plain `fetch_add`s off the poll path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::histogram::{AtomicHistogram, PollHistogram};
use crate::task::Counters;
use crate::tier::{PerTier, Tier};

/// What all tasks of one [`Pulse`](crate::Pulse) have done since it was
/// built, from [`Pulse::totals`](crate::Pulse::totals).
///
/// The counters are sums over the tasks, each read without stopping it.
/// While a task ends, its counts move from the live task into the totals of
/// ended tasks, and a reading taken at that moment can count them twice or
/// not at all: two readings a moment apart may differ by one task's counts
/// either way. The `metrics` feature's `MetricsPublisher` never publishes
/// a counter lower than it did before.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Totals {
    /// Managed tasks created.
    pub tasks_spawned: u64,
    /// Managed tasks that ended (completed, panicked or cancelled).
    pub tasks_ended: u64,
    /// Polls of managed futures.
    pub polls: u64,
    /// Polls over the slow-poll threshold.
    pub slow_polls: u64,
    /// Wall time spent in polls of managed futures: exact with
    /// [`Timing::Exact`](crate::Timing::Exact), an unbiased estimate from
    /// the ticks polls span with sampled timing.
    pub poll_time: Duration,
    /// Measured polls by duration. With sampled timing (the default) a
    /// poll is measured when it outlasts a tick of the engine's ticker;
    /// shorter polls are counted in [`polls`](Totals::polls) only (see
    /// [`Timing`](crate::Timing)).
    pub poll_time_histogram: PollHistogram,
    /// The sum of the polls counted in
    /// [`poll_time_histogram`](Totals::poll_time_histogram), each at the
    /// length it was judged by.
    pub measured_poll_time: Duration,
    /// Promotions into each tier.
    pub promotions: PerTier<u64>,
    /// Demotions into each tier.
    pub demotions: PerTier<u64>,
    /// Polls the watchdog found stuck (running past its threshold).
    pub watchdog_reports: u64,
    /// Gauge: `Yield`-tier tasks waiting for a slow-lane slot now.
    pub slow_lane_waiting: usize,
    /// Gauge: `Yield`-tier polls running now.
    pub slow_lane_running: usize,
    /// Gauge: tasks on the isolation pool now.
    pub isolated_tasks: usize,
}

/// The shared counters behind [`Totals`].
///
/// Spawns and task ends happen on every worker at once, so their counters
/// are split into stripes, each on cache lines of its own: a thread adds to
/// its own stripe, and workers ending tasks together do not fight over one
/// line (on two cores that fight cost ~0.5 µs a task). `totals` sums them.
#[derive(Debug, Default)]
pub(crate) struct PulseStats {
    stripes: [CachePadded<Stripe>; STRIPES],
    promotions: PerTier<AtomicU64>,
    demotions: PerTier<AtomicU64>,
    watchdog_reports: AtomicU64,
    isolated: Arc<AtomicUsize>,
}

const STRIPES: usize = 8;

/// Spawn and end counters of the threads that map to one stripe.
#[derive(Debug, Default)]
struct Stripe {
    tasks_spawned: AtomicU64,
    tasks_ended: AtomicU64,
    ended_polls: AtomicU64,
    ended_slow_polls: AtomicU64,
    ended_busy_ns: AtomicU64,
    /// Measured polls of live and ended tasks alike, and their sum.
    histogram: AtomicHistogram,
    measured_ns: AtomicU64,
}

/// The calling thread's stripe, assigned round-robin at its first use.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    INDEX.try_with(|i| *i).unwrap_or(0)
}

/// Counts one task on the isolation pool for as long as it lives: the
/// gauge goes up when the token is made and down, once, when it drops.
#[derive(Debug)]
pub(crate) struct IsolatedGauge(Arc<AtomicUsize>);

impl Drop for IsolatedGauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl PulseStats {
    fn stripe(&self) -> &Stripe {
        &self.stripes[stripe_index()]
    }

    pub(crate) fn watchdog_report(&self) {
        self.watchdog_reports.fetch_add(1, Relaxed);
    }

    pub(crate) fn task_spawned(&self) {
        self.stripe().tasks_spawned.fetch_add(1, Relaxed);
    }

    pub(crate) fn task_ended(&self, c: &Counters) {
        let s = self.stripe();
        s.ended_polls.fetch_add(c.polls, Relaxed);
        // Zero for most tasks (none of their polls outlasted a tick), and
        // an atomic add costs a task end ~5 ns even so.
        if c.slow_polls != 0 {
            s.ended_slow_polls.fetch_add(c.slow_polls, Relaxed);
        }
        if c.busy_ns != 0 {
            s.ended_busy_ns.fetch_add(c.busy_ns, Relaxed);
        }
        s.tasks_ended.fetch_add(1, Relaxed);
    }

    /// Counts a measured poll of `ns` in the poll-time histogram.
    #[inline]
    pub(crate) fn poll_measured(&self, ns: u64) {
        let s = self.stripe();
        s.histogram.add_one(ns);
        s.measured_ns.fetch_add(ns, Relaxed);
    }

    pub(crate) fn tier_changed(&self, from: Tier, to: Tier) {
        let counters = if to > from {
            &self.promotions
        } else {
            &self.demotions
        };
        counters[to].fetch_add(1, Relaxed);
    }

    /// A token counting one more task on the isolation pool until dropped.
    pub(crate) fn isolated(&self) -> IsolatedGauge {
        self.isolated.fetch_add(1, Relaxed);
        IsolatedGauge(Arc::clone(&self.isolated))
    }

    /// Tasks created and not ended yet.
    pub(crate) fn live_tasks(&self) -> usize {
        let (mut spawned, mut ended) = (0u64, 0u64);
        for s in &self.stripes {
            spawned += s.tasks_spawned.load(Relaxed);
            ended += s.tasks_ended.load(Relaxed);
        }
        usize::try_from(spawned.saturating_sub(ended)).unwrap_or(usize::MAX)
    }

    /// Totals of ended tasks plus `live`, the counters of live tasks.
    pub(crate) fn totals(&self, live: impl IntoIterator<Item = Counters>) -> Totals {
        let load = |a: &AtomicU64| a.load(Relaxed);
        let mut t = Totals {
            promotions: PerTier::from_fn(|tier| load(&self.promotions[tier])),
            demotions: PerTier::from_fn(|tier| load(&self.demotions[tier])),
            watchdog_reports: load(&self.watchdog_reports),
            isolated_tasks: self.isolated.load(Relaxed),
            ..Totals::default()
        };
        let (mut busy_ns, mut measured_ns) = (0, 0);
        for s in &self.stripes {
            measured_ns += load(&s.measured_ns);
            t.tasks_spawned += load(&s.tasks_spawned);
            t.tasks_ended += load(&s.tasks_ended);
            t.polls += load(&s.ended_polls);
            t.slow_polls += load(&s.ended_slow_polls);
            busy_ns += load(&s.ended_busy_ns);
            t.poll_time_histogram.add(&s.histogram.load());
        }
        for c in live {
            t.polls += c.polls;
            t.slow_polls += c.slow_polls;
            busy_ns += c.busy_ns;
        }
        t.poll_time = Duration::from_nanos(busy_ns);
        t.measured_poll_time = Duration::from_nanos(measured_ns);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_the_stripes_of_every_thread() {
        let stats = PulseStats::default();
        let ended = Counters {
            polls: 3,
            busy_ns: 10,
            ..Counters::default()
        };
        let threads = 2 * STRIPES as u64;
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    stats.task_spawned();
                    stats.task_ended(&ended);
                });
            }
        });
        let t = stats.totals([ended]);
        assert_eq!((t.tasks_spawned, t.tasks_ended), (threads, threads));
        assert_eq!(t.polls, (threads + 1) * 3);
        assert_eq!(t.poll_time, Duration::from_nanos((threads + 1) * 10));
    }

    #[test]
    fn the_isolated_gauge_counts_live_tokens() {
        let stats = PulseStats::default();
        let a = stats.isolated();
        let b = stats.isolated();
        assert_eq!(stats.totals([]).isolated_tasks, 2);
        drop(a);
        assert_eq!(stats.totals([]).isolated_tasks, 1);
        drop(b);
        assert_eq!(stats.totals([]).isolated_tasks, 0);
    }
}
