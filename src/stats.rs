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
///
/// Spawns and task ends happen on every worker at once, so their counters
/// are split into stripes, one cache line pair each: a thread adds to its
/// own stripe, and workers ending tasks together do not fight over one
/// line (on two cores that fight cost ~0.5 µs a task). `totals` sums them.
#[derive(Debug, Default)]
pub(crate) struct PulseStats {
    stripes: [Stripe; STRIPES],
    promotions: [AtomicU64; 4],
    demotions: [AtomicU64; 4],
    watchdog_reports: AtomicU64,
    /// Gauge: tasks on the isolation pool now.
    pub isolated_tasks: AtomicUsize,
}

const STRIPES: usize = 8;

/// Spawn and end counters of the threads that map to one stripe. 128-byte
/// aligned: Intel CPUs fetch lines in adjacent pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    tasks_spawned: AtomicU64,
    tasks_ended: AtomicU64,
    ended_polls: AtomicU64,
    ended_slow_polls: AtomicU64,
    ended_busy_ns: AtomicU64,
    ended_histogram: [AtomicU64; POLL_TIME_BUCKETS],
}

/// The calling thread's stripe, assigned round-robin at its first use.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    INDEX.try_with(|i| *i).unwrap_or(0)
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
        s.ended_slow_polls.fetch_add(c.slow_polls, Relaxed);
        s.ended_busy_ns.fetch_add(c.busy_ns, Relaxed);
        for (total, n) in s.ended_histogram.iter().zip(c.histogram.counts) {
            if n != 0 {
                total.fetch_add(n, Relaxed);
            }
        }
        s.tasks_ended.fetch_add(1, Relaxed);
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
            promotions: self.promotions.each_ref().map(load),
            demotions: self.demotions.each_ref().map(load),
            watchdog_reports: load(&self.watchdog_reports),
            isolated_tasks: self.isolated_tasks.load(Relaxed),
            ..Totals::default()
        };
        let mut busy_ns = 0;
        for s in &self.stripes {
            t.tasks_spawned += load(&s.tasks_spawned);
            t.tasks_ended += load(&s.tasks_ended);
            t.polls += load(&s.ended_polls);
            t.slow_polls += load(&s.ended_slow_polls);
            busy_ns += load(&s.ended_busy_ns);
            t.poll_time_histogram.add(&PollHistogram {
                counts: s.ended_histogram.each_ref().map(load),
            });
        }
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
        assert_eq!(t.poll_time, nanos((threads + 1) * 10));
    }
}
