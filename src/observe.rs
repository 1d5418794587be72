//! Structured `tracing` events for tier changes.
//!
//! One event per tier change, never per poll. Promotions are warnings
//! (target `tokio_pulse::observe`); demotions are `info`. A process-wide
//! rate limit caps warnings per second, so a storm of hogs cannot flood the
//! logs; what the limiter drops is still counted in every task's snapshot.
//!
//! Fields: `task.id`, `task.name`, `task.tokio_id` (runtime-wide tasks
//! only), `task.location`, `tier`, `from`, and for promotions `poll_us`
//! (the poll that tipped the window), `cpu_us` and `blocking` (suspects
//! only, see `timing`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::origins::OriginChange;
use crate::task::TaskShared;
use crate::tier::TierChange;

/// At most `max` events per wall-clock second.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    max: AtomicU32,
    second: AtomicU64,
    count: AtomicU32,
}

impl RateLimiter {
    pub(crate) fn new(max: u32) -> Self {
        RateLimiter {
            max: AtomicU32::new(max),
            second: AtomicU64::new(0),
            count: AtomicU32::new(0),
        }
    }

    /// Takes one permit for an event at `now_ns`, if any are left this second.
    pub(crate) fn allow(&self, now_ns: u64) -> bool {
        let second = now_ns / 1_000_000_000;
        let seen = self.second.load(Relaxed);
        if second != seen
            && self
                .second
                .compare_exchange(seen, second, Relaxed, Relaxed)
                .is_ok()
        {
            self.count.store(0, Relaxed);
        }
        self.count.fetch_add(1, Relaxed) < self.max.load(Relaxed)
    }

    pub(crate) fn set_max(&self, max: u32) {
        self.max.store(max, Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn max(&self) -> u32 {
        self.max.load(Relaxed)
    }
}

/// What the engine knew about the poll that caused a tier change.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChangeCause {
    pub poll_ns: u64,
    /// CPU time of that poll, measured only for suspects.
    pub cpu_ns: Option<u64>,
}

/// Emits the event of one tier change. `tokio_id` is set for a task
/// observed through the runtime hooks.
pub(crate) fn tier_changed(
    shared: &TaskShared,
    tokio_id: Option<tokio::task::Id>,
    change: TierChange,
    cause: ChangeCause,
    limiter: &RateLimiter,
    now_ns: u64,
) {
    let name = shared.name.as_deref().unwrap_or("");
    let location = shared.location;
    let id = shared.id.0;
    let tokio_id = tokio_id.map(tracing::field::display);
    let to = change.to;
    let poll_us = cause.poll_ns / 1_000;
    if change.to > change.from {
        if !limiter.allow(now_ns) {
            return;
        }
        // A poll that used much less CPU than wall time was blocked (a
        // syscall, a lock, a sleep) rather than computing.
        let blocking = cause
            .cpu_ns
            .map(|cpu| cpu.saturating_mul(2) < cause.poll_ns);
        tracing::warn!(
            task.id = id,
            task.name = name,
            task.tokio_id = tokio_id,
            task.location = %location,
            tier = change.to.as_str(),
            from = change.from.as_str(),
            poll_us,
            cpu_us = cause.cpu_ns.map(|c| c / 1_000),
            blocking,
            "task promoted to {to}: it held its worker for {poll_us} us in one poll ({location})",
        );
    } else {
        tracing::info!(
            task.id = id,
            task.name = name,
            task.tokio_id = tokio_id,
            task.location = %location,
            tier = change.to.as_str(),
            from = change.from.as_str(),
            "task demoted to {to} after behaving",
        );
    }
}

/// Emits the event of an origin's change of starting tier: a warning when
/// its tasks will start higher (rate-limited with the tier warnings), an
/// `info` when they will start lower.
pub(crate) fn origin_changed(c: &OriginChange, limiter: &RateLimiter, now_ns: u64) {
    let (origin, to, offenders) = (&c.origin, c.change.to, c.offenders);
    if c.change.to > c.change.from {
        if !limiter.allow(now_ns) {
            return;
        }
        tracing::warn!(
            origin = %origin,
            tier = to.as_str(),
            from = c.change.from.as_str(),
            offenders,
            "new tasks from {origin} now start at {to}: {offenders} of its tasks misbehaved",
        );
    } else {
        tracing::info!(
            origin = %origin,
            tier = to.as_str(),
            from = c.change.from.as_str(),
            offenders,
            "new tasks from {origin} now start at {to} after its tasks behaved",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_caps_per_second_and_refills() {
        let l = RateLimiter::new(3);
        let s = 1_000_000_000;
        let allowed = (0..10).filter(|i| l.allow(5 * s + i)).count();
        assert_eq!(allowed, 3);
        assert!(l.allow(6 * s));
    }
}
