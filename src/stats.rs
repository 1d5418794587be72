//! Pulse-wide totals: what all managed tasks, live and ended, have done.
//!
//! Per-poll figures live in each task's own state (single writer, no
//! contention); they are folded into the totals here when the task ends.
//! Tier changes and task ends are rare, so the shared counters below are
//! plain `fetch_add`s off the poll path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::task::Counters;
use crate::tier::Tier;
use crate::timing::nanos;

/// Upper bounds of the poll-time histogram's buckets, in nanoseconds; the
/// last bucket has no upper bound. Powers of four from 4 µs: each bucket is
/// a clear step in how much a poll hurts its neighbours.
pub const POLL_TIME_BUCKETS_NS: [u64; POLL_TIME_BUCKETS - 1] = [
    4_096,
    16_384,
    65_536,
    262_144,
    1_048_576,
    4_194_304,
    16_777_216,
    67_108_864,
    268_435_456,
    1_073_741_824,
];

/// Number of buckets in a poll-time histogram.
pub const POLL_TIME_BUCKETS: usize = 11;

/// The histogram bucket of a poll of `ns` nanoseconds: a leading-zero
/// count and a shift, no search.
#[inline(always)]
pub(crate) fn bucket_of(ns: u64) -> usize {
    let log2 = 63 - (ns | 1).leading_zeros() as usize;
    (log2.saturating_sub(10) / 2).min(POLL_TIME_BUCKETS - 1)
}

/// Counts of polls by duration, bucketed at [`POLL_TIME_BUCKETS_NS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollHistogram {
    /// `counts[i]` polls took less than `POLL_TIME_BUCKETS_NS[i]` (and at
    /// least the bound before it); the last entry counts the rest.
    pub counts: [u64; POLL_TIME_BUCKETS],
}

impl PollHistogram {
    /// The upper bound of bucket `i`, or `None` for the last, open bucket.
    pub fn upper_bound(i: usize) -> Option<Duration> {
        POLL_TIME_BUCKETS_NS.get(i).map(|&ns| nanos(ns))
    }

    /// All polls counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub(crate) fn add(&mut self, other: &PollHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }
}

/// What all tasks of one [`Pulse`](crate::Pulse) have done since it was built,
/// from [`Pulse::totals`](crate::Pulse::totals). Counters only grow.
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
    /// Wall time spent in polls of managed futures.
    pub poll_time: Duration,
    /// Polls by duration.
    pub poll_time_histogram: PollHistogram,
    /// Promotions into each tier, indexed by [`Tier::index`].
    pub promotions: [u64; 4],
    /// Demotions into each tier, indexed by [`Tier::index`].
    pub demotions: [u64; 4],
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
#[derive(Debug, Default)]
pub(crate) struct PulseStats {
    tasks_spawned: AtomicU64,
    tasks_ended: AtomicU64,
    ended_polls: AtomicU64,
    ended_slow_polls: AtomicU64,
    ended_busy_ns: AtomicU64,
    ended_histogram: [AtomicU64; POLL_TIME_BUCKETS],
    promotions: [AtomicU64; 4],
    demotions: [AtomicU64; 4],
    watchdog_reports: AtomicU64,
    /// Gauge: tasks on the isolation pool now.
    pub isolated_tasks: AtomicUsize,
}

impl PulseStats {
    pub(crate) fn watchdog_report(&self) {
        self.watchdog_reports.fetch_add(1, Relaxed);
    }

    pub(crate) fn task_spawned(&self) {
        self.tasks_spawned.fetch_add(1, Relaxed);
    }

    pub(crate) fn task_ended(&self, c: &Counters) {
        self.ended_polls.fetch_add(c.polls, Relaxed);
        self.ended_slow_polls.fetch_add(c.slow_polls, Relaxed);
        self.ended_busy_ns.fetch_add(c.busy_ns, Relaxed);
        for (total, n) in self.ended_histogram.iter().zip(c.histogram.counts) {
            if n != 0 {
                total.fetch_add(n, Relaxed);
            }
        }
        self.tasks_ended.fetch_add(1, Relaxed);
    }

    pub(crate) fn tier_changed(&self, from: Tier, to: Tier) {
        let counters = if to > from {
            &self.promotions
        } else {
            &self.demotions
        };
        counters[to.index()].fetch_add(1, Relaxed);
    }

    /// Totals of ended tasks plus `live`, the counters of live tasks.
    pub(crate) fn totals(&self, live: impl IntoIterator<Item = Counters>) -> Totals {
        let load = |a: &AtomicU64| a.load(Relaxed);
        let mut t = Totals {
            tasks_spawned: load(&self.tasks_spawned),
            tasks_ended: load(&self.tasks_ended),
            polls: load(&self.ended_polls),
            slow_polls: load(&self.ended_slow_polls),
            poll_time: Duration::ZERO,
            poll_time_histogram: PollHistogram {
                counts: self.ended_histogram.each_ref().map(load),
            },
            promotions: self.promotions.each_ref().map(load),
            demotions: self.demotions.each_ref().map(load),
            watchdog_reports: load(&self.watchdog_reports),
            isolated_tasks: self.isolated_tasks.load(Relaxed),
            ..Totals::default()
        };
        let mut busy_ns = load(&self.ended_busy_ns);
        for c in live {
            t.polls += c.polls;
            t.slow_polls += c.slow_polls;
            busy_ns += c.busy_ns;
            t.poll_time_histogram.add(&c.histogram);
        }
        t.poll_time = nanos(busy_ns);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_their_bounds() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(4_095), 0);
        for (i, &bound) in POLL_TIME_BUCKETS_NS.iter().enumerate() {
            assert_eq!(bucket_of(bound - 1), i, "just under bound {i}");
            assert_eq!(bucket_of(bound), i + 1, "at bound {i}");
        }
        assert_eq!(bucket_of(u64::MAX), POLL_TIME_BUCKETS - 1);
    }
}
