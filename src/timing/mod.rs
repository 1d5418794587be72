//! Clocks for the polls that need one.
//!
//! Under sampled timing (the default) a short poll reads no clock at all:
//! it compares ticks (see `ticker`). A poll that outlasted a tick, and every
//! poll under exact timing, reads these:
//!
//! - **Wall time** ("how long did this poll hold the worker?") comes from
//!   the CPU's invariant time-stamp counter through [`quanta`]: a fraction
//!   of the cost of `Instant::now()` through the vDSO (BENCHMARKS.md,
//!   "CPU-time sources"). Where no invariant TSC exists, quanta falls back
//!   to the OS monotonic clock, so the numbers stay right and only get
//!   slower. Wall time is what starves other tasks (a poll that blocks in a
//!   syscall holds the worker as surely as one that computes).
//! - **The scheduler's figures** for a thread ([`schedstat`]: CPU time, and
//!   the time it waited for a CPU) are read only for polls already found
//!   long: a poll is not charged for time the OS did not run its thread, and
//!   CPU time tells a hog from a blocker in what is reported.

pub(crate) mod schedstat;

use std::sync::OnceLock;
use std::time::Duration;

/// A monotonic nanosecond clock backed by the TSC where possible.
///
/// One process-wide instance ([`clock`]) so that stamps published by one
/// thread (a poll's start) can be compared by another (the watchdog).
pub(crate) struct Clock {
    source: quanta::Clock,
    origin: u64,
    /// quanta reads the TSC, so `raw` may read it inline: `quanta::Clock::raw`
    /// is not inlinable across crates, and the call costs ~2 ns a poll.
    inline_tsc: bool,
}

impl Clock {
    fn new() -> Self {
        let source = quanta::Clock::new();
        let origin = source.raw();
        let inline_tsc = quanta_reads_tsc(&source);
        Clock {
            source,
            origin,
            inline_tsc,
        }
    }

    /// Nanoseconds since this clock was created. Never returns 0, so 0 can
    /// mean "no stamp" in atomics that hold a stamp.
    #[inline(always)]
    pub(crate) fn now_ns(&self) -> u64 {
        self.source.delta_as_nanos(self.origin, self.raw()) | 1
    }

    /// A raw reading in quanta's units, as `quanta::Clock::raw` returns it.
    #[inline(always)]
    fn raw(&self) -> u64 {
        #[cfg(test)]
        READS.with(|r| r.set(r.get() + 1));
        #[cfg(target_arch = "x86_64")]
        if self.inline_tsc {
            return tsc();
        }
        self.source.raw()
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tsc() -> u64 {
    // SAFETY: RDTSC exists on every x86-64 CPU and has no preconditions.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// Whether `source` reads the TSC (it does where the TSC is invariant), told
/// by bracketing a TSC reading between two of its readings: a fallback
/// clock counts nanoseconds, which never bracket TSC ticks three times.
#[cfg(target_arch = "x86_64")]
fn quanta_reads_tsc(source: &quanta::Clock) -> bool {
    (0..3).all(|_| {
        let before = source.raw();
        let t = tsc();
        let after = source.raw();
        before <= t && t <= after
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn quanta_reads_tsc(_source: &quanta::Clock) -> bool {
    false
}

#[cfg(test)]
thread_local! {
    static READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Clock readings taken on this thread so far (tests only: the count is
/// how tests prove a short poll reads no clock).
#[cfg(test)]
pub(crate) fn reads_on_this_thread() -> u64 {
    READS.with(std::cell::Cell::get)
}

/// The process-wide clock. Calibrating the TSC takes a few milliseconds, so
/// it happens once, when the first `Pulse` is built (or on first use).
/// Inlined: the poll path is generic, compiled in the user's crate, and
/// would otherwise make a call just to check that calibration is done.
#[inline]
pub(crate) fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(Clock::new)
}

/// Nanoseconds to a `Duration`, named for what the call site means.
#[inline]
pub(crate) fn nanos(ns: u64) -> Duration {
    Duration::from_nanos(ns)
}

/// A `Duration` to nanoseconds, saturating at `u64::MAX` (584 years).
#[inline]
pub(crate) fn as_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn inline_tsc_reads_agree_with_quanta() {
        let c = clock();
        let (a, b) = (c.raw(), c.source.raw());
        assert!(a <= b, "inline reading {a} after quanta's {b}");
        assert!(
            c.source.delta_as_nanos(a, b) < 50_000_000,
            "inline and quanta readings 50 ms apart"
        );
    }

    #[test]
    fn clock_is_monotonic_and_tracks_real_time() {
        let c = clock();
        let a = c.now_ns();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        let b = c.now_ns();
        assert!(b > a);
        let measured = b - a;
        // Wide margin: calibration error is well under 1 %, but the thread
        // can be descheduled between the two reads.
        assert!(
            (15_000_000..200_000_000).contains(&measured),
            "20 ms spin measured as {measured} ns"
        );
    }
}
