//! Per-task time accounting within a window.
//!
//! A task is judged by what it does within a sliding-forward window of wall
//! time (`budget_window`, 100 ms by default): how many of its polls were slow
//! (strikes) and how much worker time it took in total (busy). The window is
//! private to the task's wrapper and touched only by the thread polling it,
//! so charging a poll is plain arithmetic: no atomics, no shared cache line.
//!
//! Short polls are free: only polls of at least a quarter of the slow-poll
//! threshold count towards the budget. A task that yields every few
//! microseconds is the cooperative behaviour Tokio's scheduler already keeps
//! fair, however much CPU it uses in total; a task whose polls are long but
//! each just under the threshold is the one the budget exists to catch.

/// A poll this many times the slow-poll threshold counts one extra strike.
pub(crate) const SEVERE_MULTIPLE: u64 = 8;

/// Limits a window is judged against, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BudgetLimits {
    /// A poll longer than this is a strike.
    pub slow_poll_ns: u64,
    /// Worker time a task may take within one window, in polls of at
    /// least `charge_floor_ns`.
    pub cpu_budget_ns: u64,
    /// Polls shorter than this are not charged to the budget. At most
    /// `slow_poll_ns`, so an uncharged poll is never a strike either.
    pub charge_floor_ns: u64,
    /// Length of a window.
    pub window_ns: u64,
    /// Strikes within one window that make it a bad window.
    pub strikes: u32,
}

/// What the poll just charged says about the current window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WindowVerdict {
    /// The window is still open and has not gone bad.
    Open,
    /// The window went bad (too many strikes, or over budget); it is closed
    /// early so the task can be dealt with now rather than at window end.
    Bad,
    /// One or more windows ended with no violation. Time the task spent
    /// idle counts as good behaviour, so a long gap closes several.
    Clean(u32),
}

/// The accounting of the current window.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WindowBudget {
    start_ns: u64,
    busy_ns: u64,
    strikes: u32,
}

impl WindowBudget {
    /// A window opening at `now_ns`.
    pub(crate) fn new(now_ns: u64) -> Self {
        WindowBudget {
            start_ns: now_ns,
            busy_ns: 0,
            strikes: 0,
        }
    }

    /// When the window opened.
    pub(crate) fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// Charges one poll that ran from `start_ns` to `end_ns`.
    #[inline]
    pub(crate) fn charge(
        &mut self,
        limits: &BudgetLimits,
        start_ns: u64,
        end_ns: u64,
    ) -> WindowVerdict {
        let poll_ns = end_ns.saturating_sub(start_ns);
        // Nearly every poll is short and lands in an open window: it is
        // neither charged nor a strike (the floor is below the threshold),
        // so the window is left untouched and two compares decide.
        if poll_ns < limits.charge_floor_ns
            && end_ns.saturating_sub(self.start_ns) < limits.window_ns
        {
            return WindowVerdict::Open;
        }
        self.charge_counted(limits, poll_ns, end_ns)
    }

    /// The rest of [`charge`](Self::charge): a poll that counts, or one that
    /// ends the window.
    fn charge_counted(
        &mut self,
        limits: &BudgetLimits,
        poll_ns: u64,
        end_ns: u64,
    ) -> WindowVerdict {
        if poll_ns >= limits.charge_floor_ns {
            self.busy_ns = self.busy_ns.saturating_add(poll_ns);
        }
        if poll_ns > limits.slow_poll_ns {
            // Severity counts: every further `SEVERE_MULTIPLE` thresholds a
            // poll lasts add a strike, so one egregious poll (25 ms against a
            // 1 ms threshold) makes a bad window by itself and a blocker is
            // dealt with in a few polls rather than a few windows.
            let severity = poll_ns / limits.slow_poll_ns.saturating_mul(SEVERE_MULTIPLE).max(1);
            self.strikes = self
                .strikes
                .saturating_add(1 + u32::try_from(severity).unwrap_or(u32::MAX));
        }
        if self.strikes >= limits.strikes || self.busy_ns > limits.cpu_budget_ns {
            *self = WindowBudget::new(end_ns);
            return WindowVerdict::Bad;
        }
        let elapsed = end_ns.saturating_sub(self.start_ns);
        if elapsed < limits.window_ns {
            return WindowVerdict::Open;
        }
        let windows = u32::try_from(elapsed / limits.window_ns).unwrap_or(u32::MAX);
        *self = WindowBudget::new(end_ns);
        WindowVerdict::Clean(windows)
    }

    /// Strikes counted so far in the open window.
    #[cfg(test)]
    pub(crate) fn strikes(&self) -> u32 {
        self.strikes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const LIMITS: BudgetLimits = BudgetLimits {
        slow_poll_ns: MS,
        cpu_budget_ns: 30 * MS,
        charge_floor_ns: MS / 4,
        window_ns: 100 * MS,
        strikes: 2,
    };

    #[test]
    fn fast_polls_close_clean_windows() {
        let mut w = WindowBudget::new(0);
        let mut t = 0;
        let mut verdicts = Vec::new();
        while t < 250 * MS {
            verdicts.push(w.charge(&LIMITS, t, t + 10_000));
            t += MS;
        }
        let clean: u32 = verdicts
            .iter()
            .map(|v| match v {
                WindowVerdict::Clean(n) => *n,
                WindowVerdict::Open => 0,
                WindowVerdict::Bad => panic!("fast polls made a bad window"),
            })
            .sum();
        assert_eq!(clean, 2);
    }

    #[test]
    fn second_slow_poll_in_a_window_makes_it_bad_at_once() {
        let mut w = WindowBudget::new(0);
        assert_eq!(w.charge(&LIMITS, 0, 2 * MS), WindowVerdict::Open);
        assert_eq!(w.strikes(), 1);
        assert_eq!(w.charge(&LIMITS, 3 * MS, 5 * MS), WindowVerdict::Bad);
        assert_eq!(w.strikes(), 0, "a bad window starts a fresh one");
    }

    #[test]
    fn one_egregious_poll_makes_a_bad_window_alone() {
        let mut w = WindowBudget::new(0);
        assert_eq!(w.charge(&LIMITS, 0, 7 * MS), WindowVerdict::Open);
        let mut w = WindowBudget::new(0);
        assert_eq!(w.charge(&LIMITS, 0, 8 * MS), WindowVerdict::Bad);
    }

    #[test]
    fn many_short_polls_over_budget_make_a_bad_window() {
        let mut w = WindowBudget::new(0);
        let mut t = 0;
        let verdict = loop {
            let v = w.charge(&LIMITS, t, t + MS / 2);
            if v != WindowVerdict::Open {
                break v;
            }
            t += MS / 2;
        };
        assert_eq!(verdict, WindowVerdict::Bad);
        assert!(t < 31 * MS, "budget overrun noticed late, at {t} ns");
    }

    #[test]
    fn short_polls_are_free_however_many() {
        let mut w = WindowBudget::new(0);
        let mut t = 0;
        while t < 1_000 * MS {
            assert_ne!(w.charge(&LIMITS, t, t + 20_000), WindowVerdict::Bad);
            t += 20_000;
        }
    }

    proptest::proptest! {
        #[test]
        fn the_short_poll_shortcut_agrees_with_full_accounting(
            window_start in 0..200 * MS,
            // Reachable states only: a window over budget or out of strikes
            // has already been closed as bad.
            busy in 0..=LIMITS.cpu_budget_ns,
            strikes in 0..LIMITS.strikes,
            start in 0..300 * MS,
            len in proptest::prop_oneof![0..MS / 4 + 2, 0..3 * MS],
        ) {
            let w = WindowBudget { start_ns: window_start, busy_ns: busy, strikes };
            let (mut fast, mut full) = (w, w);
            let verdict = fast.charge(&LIMITS, start, start + len);
            proptest::prop_assert_eq!(verdict, full.charge_counted(&LIMITS, len, start + len));
            proptest::prop_assert_eq!(
                (fast.start_ns, fast.busy_ns, fast.strikes),
                (full.start_ns, full.busy_ns, full.strikes)
            );
        }
    }

    #[test]
    fn idle_time_counts_as_clean_windows() {
        let mut w = WindowBudget::new(0);
        assert_eq!(
            w.charge(&LIMITS, 550 * MS, 550 * MS + 10),
            WindowVerdict::Clean(5)
        );
    }
}
