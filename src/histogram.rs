//! The poll-time histogram: bucket bounds, bucket lookup, and the plain and
//! atomic forms it is kept in.
//!
//! Buckets are powers of four from 4 µs, so a bucket index is a
//! leading-zero count and a shift (no search), and each bucket is a clear
//! step in how much a poll hurts its neighbours: under 4 µs is what Tokio
//! expects of a poll, 1 ms and more starves the worker's other tasks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Number of buckets.
const BUCKETS: usize = 11;

/// The smallest upper bound, 2^12 ns; each next bound is four times larger.
const FIRST_BOUND_LOG2: u32 = 12;

/// Counts of polls by duration, from [`Totals`](crate::Totals).
///
/// Bucket `i` (for `i < BUCKETS - 1`) counts polls shorter than
/// [`upper_bound(i)`](PollHistogram::upper_bound) and at least as long as
/// the bound before it; the last bucket counts the rest. The bounds are
/// 4.096 µs, 16.384 µs, 65.536 µs, ... up to 1.07 s: powers of four.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollHistogram {
    /// The count of each bucket.
    pub counts: [u64; BUCKETS],
}

impl PollHistogram {
    /// Number of buckets (the length of [`counts`](PollHistogram::counts)).
    pub const BUCKETS: usize = BUCKETS;

    /// The upper bound of bucket `i`, or `None` for the last, open bucket
    /// (and for an `i` past it).
    pub fn upper_bound(i: usize) -> Option<Duration> {
        upper_bound_ns(i).map(Duration::from_nanos)
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

/// The upper bound of bucket `i` in nanoseconds; `None` for the last bucket.
pub(crate) fn upper_bound_ns(i: usize) -> Option<u64> {
    (i < BUCKETS - 1).then(|| 1u64 << (FIRST_BOUND_LOG2 + 2 * i as u32))
}

/// The bucket of a poll of `ns` nanoseconds.
#[inline(always)]
pub(crate) fn bucket_of(ns: u64) -> usize {
    let log2 = 63 - (ns | 1).leading_zeros() as usize;
    (log2.saturating_sub(FIRST_BOUND_LOG2 as usize - 2) / 2).min(BUCKETS - 1)
}

/// A histogram of atomic counters.
#[derive(Debug, Default)]
pub(crate) struct AtomicHistogram([AtomicU64; BUCKETS]);

impl AtomicHistogram {
    /// Counts one poll; any number of writers.
    #[inline]
    pub(crate) fn add_one(&self, ns: u64) {
        self.0[bucket_of(ns)].fetch_add(1, Relaxed);
    }

    pub(crate) fn load(&self) -> PollHistogram {
        PollHistogram {
            counts: self.0.each_ref().map(|a| a.load(Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_their_bounds() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(upper_bound_ns(0), Some(4_096));
        assert_eq!(upper_bound_ns(BUCKETS - 2), Some(1 << 30));
        assert_eq!(upper_bound_ns(BUCKETS - 1), None);
        for i in 0..BUCKETS - 1 {
            let bound = upper_bound_ns(i).unwrap();
            assert_eq!(bucket_of(bound - 1), i, "just under bound {i}");
            assert_eq!(bucket_of(bound), i + 1, "at bound {i}");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn atomic_histograms_count_and_sum() {
        let h = AtomicHistogram::default();
        h.add_one(10);
        h.add_one(5_000);
        h.add_one(u64::MAX);
        let counts = h.load();
        assert_eq!(counts.total(), 3);
        assert_eq!((counts.counts[0], counts.counts[1]), (1, 1));
        assert_eq!(counts.counts[BUCKETS - 1], 1);
    }
}
