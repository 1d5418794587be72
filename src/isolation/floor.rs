//! The progress floor: isolated work keeps moving on a busy host.
//!
//! Pool threads run at `SCHED_IDLE`, which on a quiet host costs the main
//! workers nothing and leaves isolated hogs every idle cycle. On a busy
//! host (another process on every core, or the main workers themselves
//! saturated) there are no idle cycles: a `SCHED_IDLE` thread gets the
//! kernel's smallest weight, about 0.3 % of a core against one normal
//! thread, and an isolated task next to nothing. Isolated work is real
//! work (a report, a request): it would time out, and hold its locks and
//! connections while it crawls, so whoever waits for those waits too (a
//! task on the main workers waiting for a `tokio::sync::Mutex` an isolated
//! task holds, say: priority inversion).
//!
//! So a pool thread that is starved is raised back to normal priority for
//! a while. The engine's ticker checks each pool thread every few
//! milliseconds (a fifth of `after`, at most 10 ms), from what the
//! scheduler counted for it (`schedstat`). A pool thread is **starved**
//! when all of these hold:
//!
//! - it has had isolated work in hand, without a break, for at least
//!   `after` (default 50 ms);
//! - over the last `after`, it ran for less than `percent` % of that time
//!   (default 50 %);
//! - it is runnable now: it wants a CPU (a task blocked in a system call
//!   is not starved by anyone).
//!
//! A starved thread is raised to normal priority (`SCHED_OTHER` at the
//! nice value it inherited); at the first check at which it is no longer
//! starved (it has had its share over the last `after`, has no work, or
//! is blocked) it drops back.
//!
//! # Bounds
//!
//! - **Starvation.** A pool thread with runnable work waits at most about
//!   `after` (plus one check) before it is raised, and then runs as an
//!   equal of every other normal thread on its CPU until it has had its
//!   share.
//! - **What it can take.** A thread is raised only while it has had less
//!   than `percent` % of a CPU over the last `after`, and is lowered within
//!   one check of reaching it: raised, it takes at most about `percent` %
//!   of a CPU (plus one check's worth per raise) from everyone else, main
//!   workers included. The pool as a whole takes at most `threads ×
//!   percent` % of a CPU that way: with the defaults (one thread per core,
//!   50 %), half the machine, and only while it would otherwise starve.
//!
//! Each check costs the ticker one `pread` of a `schedstat` file per pool
//! thread with work (~6 µs on a small VM) and, for a thread short of its
//! share, a read of its `stat` (~50 µs): with checks 10 ms apart, about
//! 0.06 % of a core per busy pool thread, 0.6 % per starved one. Threads
//! without work cost nothing.
//!
//! Raising a thread back from `SCHED_IDLE` (or from a higher nice value)
//! needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows the inherited nice
//! value; Linux refuses it otherwise. Each pool thread tries a raise and a
//! lower on itself when it starts; if refused, the floor is off, which is
//! said once as a `tracing` warning and shown by `Pulse::health`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::priority::Lowered;
use crate::sync::lock;
use crate::timing::as_nanos;
use crate::timing::schedstat::{SchedStatFile, runnable};

/// The floor's settings (see the module's docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FloorSettings {
    /// The share of a CPU a pool thread with work is owed, in percent.
    pub percent: u8,
    /// How long the share is measured over; also how long a thread must
    /// have had work before it can be found starved.
    pub after: Duration,
}

impl FloorSettings {
    /// 50 % after 50 ms. On a host with a busy process on every core, the
    /// main workers get half a core each, and so does a starved pool
    /// thread: isolated work keeps about what it would get on the main
    /// workers, and a lock an isolated task holds across its polls is
    /// released about as soon as under plain Tokio (with 25 %, measured
    /// 1.08-1.18x plain's p99 wait; with 50 %, 0.80-0.89x: the starvation
    /// example's lock table). It is starved for about 50 ms at most, half
    /// the watchdog's threshold.
    pub(crate) const DEFAULT: FloorSettings = FloorSettings {
        percent: 50,
        after: Duration::from_millis(50),
    };

    /// The time between checks: a fifth of `after`, at most 10 ms.
    fn check_period_ns(self) -> u64 {
        as_nanos(self.after / 5).min(10_000_000)
    }
}

/// What one pool thread shares with the floor.
#[derive(Debug, Default)]
pub(crate) struct PoolThread {
    /// What the thread lowered itself to; set once it started.
    lowered: OnceLock<Lowered>,
    /// The thread has a job in hand (or more queued).
    busy: AtomicBool,
    /// Times the thread waited for work.
    waits: AtomicU64,
}

impl PoolThread {
    /// Called by the thread itself once it has lowered its priority.
    pub(crate) fn started(&self, lowered: Lowered) {
        let _ = self.lowered.set(lowered);
    }

    /// Called by the thread when it takes a job.
    pub(crate) fn working(&self) {
        if !self.busy.load(Relaxed) {
            self.busy.store(true, Relaxed);
        }
    }

    /// Called by the thread when it is about to wait for work.
    pub(crate) fn waiting(&self) {
        self.busy.store(false, Relaxed);
        self.waits.fetch_add(1, Relaxed);
    }
}

/// What one check did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FloorCheck {
    /// Threads raised by this check.
    pub raised: u32,
    /// Some pool thread has work.
    pub busy: bool,
}

/// The floor's own state: kept by its one caller (the engine's ticker).
#[derive(Debug, Default)]
pub(crate) struct Floor {
    watches: Mutex<Vec<Watch>>,
    next_check_ns: AtomicU64,
    /// Why the OS refused to raise a pool thread, if it did: the floor is
    /// off.
    refused: OnceLock<String>,
}

/// What the floor keeps about one pool thread between checks.
#[derive(Debug, Default)]
struct Watch {
    figures: Option<Option<SchedStatFile>>,
    waits_seen: u64,
    /// Its CPU time at recent checks, while it has had work without a
    /// break: `(when, cpu_ns)`, oldest first, the oldest at or before
    /// `after` ago once there is that much.
    history: VecDeque<(u64, u64)>,
    raised: bool,
}

impl Floor {
    /// Records that the OS refused to raise a pool thread (from the
    /// thread's own try at its start, or a check): the floor is off. Said
    /// once.
    pub(crate) fn refuse(&self, error: &std::io::Error) {
        let why = format!(
            "the OS refused to raise an isolation thread back to normal priority ({error}); \
             that needs CAP_SYS_NICE or an RLIMIT_NICE allowing the inherited nice value, \
             so isolated tasks may starve on a busy host"
        );
        if self.refused.set(why).is_ok() {
            tracing::warn!(
                error = %error,
                "tokio-pulse: the isolation pool's progress floor is off: the OS refused to raise an isolation thread's priority (needs CAP_SYS_NICE or RLIMIT_NICE); isolated tasks may starve on a busy host"
            );
        }
    }

    /// Why the floor is off, if the OS refused it.
    pub(crate) fn refused(&self) -> Option<&str> {
        self.refused.get().map(String::as_str)
    }

    /// Checks `threads` at `now_ns` (at most once a check period; a no-op
    /// in between), raising the starved and lowering the rest, under
    /// `settings` (`None`: the floor is off, and any raised thread is
    /// lowered).
    pub(crate) fn check(
        &self,
        threads: &[PoolThread],
        now_ns: u64,
        settings: Option<FloorSettings>,
    ) -> FloorCheck {
        let busy = threads.iter().any(|t| t.busy.load(Relaxed));
        let period = settings.map_or(10_000_000, FloorSettings::check_period_ns);
        if now_ns < self.next_check_ns.load(Relaxed) {
            return FloorCheck { raised: 0, busy };
        }
        self.next_check_ns.store(now_ns + period, Relaxed);
        let settings = settings.filter(|_| self.refused.get().is_none());
        let mut watches = lock(&self.watches);
        watches.resize_with(threads.len(), Watch::default);
        let mut raised = 0;
        for (thread, watch) in threads.iter().zip(watches.iter_mut()) {
            let Some(lowered) = thread.lowered.get() else {
                continue; // not started (or could not be)
            };
            if !lowered.below_normal() {
                continue; // nothing to raise
            }
            let starved = settings.is_some_and(|s| watch.starved(thread, lowered.tid, now_ns, s));
            if starved == watch.raised {
                continue;
            }
            let changed = if starved {
                lowered.raise()
            } else {
                lowered.lower()
            };
            match changed {
                Ok(()) => {
                    watch.raised = starved;
                    raised += u32::from(starved);
                }
                Err(e) if starved => self.refuse(&e),
                Err(e) => {
                    // Lowering back never needs a privilege; a thread that
                    // exited cannot be lowered, and needs not be.
                    tracing::debug!(error = %e, "tokio-pulse: could not lower an isolation thread again");
                    watch.raised = false;
                }
            }
        }
        FloorCheck { raised, busy }
    }
}

impl Watch {
    /// Whether the thread (kernel id `tid`) is starved at `now_ns` under
    /// `s` (see the module's docs); notes its CPU time.
    fn starved(&mut self, thread: &PoolThread, tid: i32, now_ns: u64, s: FloorSettings) -> bool {
        let waits = thread.waits.load(Relaxed);
        let busy = thread.busy.load(Relaxed);
        if !busy || std::mem::replace(&mut self.waits_seen, waits) != waits {
            // It had no work at some point since the last check.
            self.history.clear();
            return false;
        }
        let Some(cpu_ns) = self
            .figures
            .get_or_insert_with(|| SchedStatFile::thread(tid))
            .as_ref()
            .and_then(SchedStatFile::read)
            .map(|f| f.cpu_ns)
        else {
            return false;
        };
        self.short_of_share(now_ns, cpu_ns, s) && runnable(tid) == Some(true)
    }

    /// Notes the thread's CPU time `cpu_ns` at `now_ns`; returns whether it
    /// has had work for `after` and ran less than its share of the last
    /// `after`.
    fn short_of_share(&mut self, now_ns: u64, cpu_ns: u64, s: FloorSettings) -> bool {
        self.history.push_back((now_ns, cpu_ns));
        let after_ns = as_nanos(s.after);
        let horizon = now_ns.saturating_sub(after_ns);
        while self.history.get(1).is_some_and(|&(at, _)| at <= horizon) {
            self.history.pop_front();
        }
        let Some(&(since, cpu_then)) = self.history.front() else {
            return false;
        };
        let span = now_ns - since;
        if span < after_ns {
            return false; // not had work for `after` yet
        }
        let ran = u128::from(cpu_ns.saturating_sub(cpu_then));
        ran < u128::from(span) * u128::from(s.percent) / 100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A quarter after 50 ms: the shares below are worked out for it.
    const QUARTER: FloorSettings = FloorSettings {
        percent: 25,
        after: Duration::from_millis(50),
    };

    /// What a watch over a thread finds at each `(when, cpu time)`.
    fn short_of_share(samples: &[(u64, u64)]) -> Vec<bool> {
        let mut w = Watch::default();
        samples
            .iter()
            .map(|&(now, cpu)| w.short_of_share(now, cpu, QUARTER))
            .collect()
    }

    #[test]
    fn a_thread_is_owed_its_share_over_the_last_window_only() {
        // Checks 10 ms apart. Running all the time: never short.
        let running: Vec<_> = (0..10).map(|i| (i * 10 * MS, i * 10 * MS)).collect();
        assert!(short_of_share(&running).iter().all(|short| !short));
        // Never running: short once it has had work for 50 ms.
        let starved: Vec<_> = (0..10).map(|i| (i * 10 * MS, 0)).collect();
        let found = short_of_share(&starved);
        assert_eq!(found.iter().position(|&short| short), Some(5));
        assert!(found[5..].iter().all(|&short| short));
        // Ran all the time until 90 ms, then not at all: short once the
        // last 50 ms hold less than 12.5 ms of running (at 130 ms: 10 ms).
        let mut then_starved: Vec<_> = (0..10).map(|i| (i * 10 * MS, i * 10 * MS)).collect();
        then_starved.extend((10..20).map(|i| (i * 10 * MS, 90 * MS)));
        let found = short_of_share(&then_starved);
        assert_eq!(found.iter().position(|&short| short), Some(13));
        // A quarter of the time exactly is its share.
        let quarter: Vec<_> = (0..10).map(|i| (i * 10 * MS, i * 10 * MS / 4)).collect();
        assert!(short_of_share(&quarter).iter().all(|short| !short));
    }

    #[test]
    fn a_thread_with_no_work_or_one_that_waited_for_work_is_not_starved() {
        let thread = PoolThread::default();
        let mut w = Watch::default();
        let s = QUARTER;
        assert!(!w.starved(&thread, 0, 100 * MS, s), "no work");
        thread.working();
        w.history.push_back((0, 0));
        thread.waiting();
        thread.working();
        assert!(!w.starved(&thread, 0, 100 * MS, s), "waited for work since");
        assert!(w.history.is_empty(), "its history starts again");
    }
}
