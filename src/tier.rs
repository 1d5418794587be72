//! Tiers and the state machine that moves a task between them.
//!
//! Evidence comes from [`WindowBudget`](crate::budget::WindowBudget): each
//! bad window promotes the task one tier; `clean_windows` consecutive clean
//! windows demote it one tier. The asymmetry is the hysteresis: one bad
//! window is enough to act, but forgiveness has to be earned, so a task
//! whose behaviour alternates stays put instead of flapping.

use std::fmt;

use crate::budget::{BudgetLimits, WindowBudget, WindowVerdict};

/// How strongly tokio-pulse intervenes in a task, from least to most.
///
/// Tiers are ordered: `Tier::Monitor < Tier::Warn < Tier::Yield < Tier::Isolate`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Tier {
    /// Measured only. Every task starts here.
    #[default]
    Monitor = 0,
    /// Measured, and reported once on entry with a `tracing` warning.
    Warn = 1,
    /// Made to give way: its polls are deferred behind well-behaved work and
    /// [`checkpoint`](crate::checkpoint) yields once its slice is used.
    Yield = 2,
    /// Moved off the main workers (where the task can move; a future that is
    /// not `Send` is capped at [`Tier::Yield`]).
    Isolate = 3,
}

impl Tier {
    /// All tiers, in order.
    pub const ALL: [Tier; 4] = [Tier::Monitor, Tier::Warn, Tier::Yield, Tier::Isolate];

    /// The tier's position, 0 for `Monitor` to 3 for `Isolate`.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The tier's lower-case name, as used in events and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Monitor => "monitor",
            Tier::Warn => "warn",
            Tier::Yield => "yield",
            Tier::Isolate => "isolate",
        }
    }

    pub(crate) const fn from_u8(v: u8) -> Tier {
        match v {
            0 => Tier::Monitor,
            1 => Tier::Warn,
            2 => Tier::Yield,
            _ => Tier::Isolate,
        }
    }

    fn up(self) -> Tier {
        Tier::from_u8(self as u8 + 1)
    }

    fn down(self) -> Tier {
        Tier::from_u8((self as u8).saturating_sub(1))
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value per [`Tier`], indexed by the tier.
///
/// ```
/// use tokio_pulse::{PerTier, Tier};
///
/// let mut seen = PerTier::<u64>::default();
/// seen[Tier::Warn] += 2;
/// assert_eq!(seen[Tier::Warn], 2);
/// assert_eq!(seen[Tier::Warn.index()], 2); // also by position
/// assert_eq!(seen.iter().sum::<u64>(), 2);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PerTier<T>([T; 4]);

impl<T> PerTier<T> {
    /// A value for each tier, from `f`.
    pub fn from_fn(mut f: impl FnMut(Tier) -> T) -> Self {
        PerTier(Tier::ALL.map(&mut f))
    }

    /// The values, from `Monitor` to `Isolate`.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// Each tier with its value, from `Monitor` to `Isolate`.
    pub fn tiers(&self) -> impl Iterator<Item = (Tier, &T)> {
        Tier::ALL.into_iter().zip(&self.0)
    }
}

impl PerTier<usize> {
    /// How many of `tiers` are in each tier.
    pub(crate) fn tally(tiers: impl IntoIterator<Item = Tier>) -> Self {
        let mut counts = PerTier::default();
        tiers.into_iter().for_each(|t| counts[t] += 1);
        counts
    }
}

impl<T> std::ops::Index<Tier> for PerTier<T> {
    type Output = T;

    fn index(&self, tier: Tier) -> &T {
        &self.0[tier.index()]
    }
}

impl<T> std::ops::IndexMut<Tier> for PerTier<T> {
    fn index_mut(&mut self, tier: Tier) -> &mut T {
        &mut self.0[tier.index()]
    }
}

/// By position, as [`Tier::index`] gives it. Panics past 3, like an array.
impl<T> std::ops::Index<usize> for PerTier<T> {
    type Output = T;

    fn index(&self, index: usize) -> &T {
        &self.0[index]
    }
}

impl<'a, T> IntoIterator for &'a PerTier<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A tier change decided by [`Escalation::on_poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TierChange {
    pub from: Tier,
    pub to: Tier,
}

/// What a poll that closed a window decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A bad window moved the task up.
    Promoted(TierChange),
    /// A run of clean windows moved the task down.
    Demoted(TierChange),
    /// A bad window, with the task already at its highest tier.
    BadAtTop,
}

impl Step {
    /// The tier change, if the step made one.
    pub(crate) fn change(self) -> Option<TierChange> {
        match self {
            Step::Promoted(c) | Step::Demoted(c) => Some(c),
            Step::BadAtTop => None,
        }
    }

    /// The window was bad: the task misbehaved.
    pub(crate) fn bad(self) -> bool {
        !matches!(self, Step::Demoted(_))
    }
}

/// Everything the state machine is tuned by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EscalationPolicy {
    pub limits: BudgetLimits,
    /// Consecutive clean windows before a demotion.
    pub clean_windows: u32,
    /// The highest tier this task may reach.
    pub max_tier: Tier,
}

/// One task's position in the tier ladder and the evidence behind it.
/// `repr(C)`: the tier, read on every poll, comes first (see `TaskCore`).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct Escalation {
    tier: Tier,
    window: WindowBudget,
    clean_streak: u32,
}

impl Escalation {
    /// A task that starts at `tier` (the tier its origin earned), its
    /// first window opening at `now_ns`.
    pub(crate) fn starting_at(tier: Tier, now_ns: u64) -> Self {
        Escalation {
            tier,
            window: WindowBudget::new(now_ns),
            clean_streak: 0,
        }
    }

    pub(crate) fn tier(&self) -> Tier {
        self.tier
    }

    /// When the current window ends under `policy`: until then a poll too
    /// short to be charged cannot change anything.
    pub(crate) fn window_deadline_ns(&self, policy: &EscalationPolicy) -> u64 {
        self.window
            .start_ns()
            .saturating_add(policy.limits.window_ns)
    }

    /// Feeds one poll; returns what it decided, if anything.
    #[inline]
    pub(crate) fn on_poll(
        &mut self,
        policy: &EscalationPolicy,
        start_ns: u64,
        end_ns: u64,
    ) -> Option<Step> {
        match self.window.charge(&policy.limits, start_ns, end_ns) {
            WindowVerdict::Open => None,
            WindowVerdict::Bad => {
                self.clean_streak = 0;
                Some(if self.tier < policy.max_tier {
                    Step::Promoted(self.move_to(self.tier.up()))
                } else {
                    Step::BadAtTop
                })
            }
            WindowVerdict::Clean(windows) => {
                self.clean_streak = self.clean_streak.saturating_add(windows);
                if self.tier > Tier::Monitor && self.clean_streak >= policy.clean_windows {
                    self.clean_streak = 0;
                    Some(Step::Demoted(self.move_to(self.tier.down())))
                } else {
                    None
                }
            }
        }
    }

    /// Jumps straight to `tier` (the watchdog's escalation of a stuck
    /// task), bounded by the policy's `max_tier`.
    pub(crate) fn force(&mut self, policy: &EscalationPolicy, tier: Tier) -> Option<TierChange> {
        let tier = tier.min(policy.max_tier);
        (tier != self.tier).then(|| {
            self.clean_streak = 0;
            self.move_to(tier)
        })
    }

    fn move_to(&mut self, to: Tier) -> TierChange {
        let change = TierChange {
            from: self.tier,
            to,
        };
        self.tier = to;
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn policy(strikes: u32, clean_windows: u32, max_tier: Tier) -> EscalationPolicy {
        EscalationPolicy {
            limits: BudgetLimits {
                slow_poll_ns: MS,
                cpu_budget_ns: 30 * MS,
                charge_floor_ns: MS / 4,
                window_ns: 100 * MS,
                strikes,
            },
            clean_windows,
            max_tier,
        }
    }

    #[test]
    fn tiers_are_ordered() {
        assert!(
            Tier::Monitor < Tier::Warn && Tier::Warn < Tier::Yield && Tier::Yield < Tier::Isolate
        );
        for t in Tier::ALL {
            assert_eq!(Tier::from_u8(t as u8), t);
        }
    }

    #[test]
    fn hog_climbs_to_isolate_then_reformed_task_steps_back_down() {
        let p = policy(2, 3, Tier::Isolate);
        let mut e = Escalation::starting_at(Tier::Monitor, 0);
        let mut t = 0;
        while e.tier() < Tier::Isolate {
            e.on_poll(&p, t, t + 5 * MS);
            t += 6 * MS;
            assert!(t < 100 * MS, "hog not isolated after {t} ns");
        }
        let mut steps = Vec::new();
        while e.tier() > Tier::Monitor {
            if let Some(c) = e.on_poll(&p, t, t + 10_000).and_then(Step::change) {
                steps.push(c.to);
            }
            t += MS;
        }
        assert_eq!(steps, [Tier::Yield, Tier::Warn, Tier::Monitor]);
    }

    #[test]
    fn max_tier_caps_promotion() {
        let p = policy(1, 3, Tier::Yield);
        let mut e = Escalation::starting_at(Tier::Monitor, 0);
        for i in 0..50 {
            e.on_poll(&p, i * 10 * MS, i * 10 * MS + 5 * MS);
        }
        assert_eq!(e.tier(), Tier::Yield);
        assert_eq!(e.force(&p, Tier::Isolate), None, "forced past max_tier");
    }

    /// One poll of a generated run: idle gap before it, then its length.
    fn poll_strategy() -> impl Strategy<Value = (u64, u64)> {
        (
            prop_oneof![Just(0u64), 0..5 * MS, 0..400 * MS],
            prop_oneof![0..200_000u64, 500_000..3 * MS, 3 * MS..40 * MS],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn tier_machine_invariants_hold_for_any_poll_timings(
            polls in prop::collection::vec(poll_strategy(), 1..400),
            strikes in 1u32..5,
            clean_windows in 1u32..6,
            max_tier in 1u8..4,
        ) {
            let p = policy(strikes, clean_windows, Tier::from_u8(max_tier));
            let mut e = Escalation::starting_at(Tier::Monitor, 0);
            let mut t = 0u64;
            // Clean windows seen since the last tier change, counted the
            // same way the window accounting does, independently.
            let mut clean_since_change = 0u32;
            for (gap, len) in polls {
                let start = t + gap;
                let end = start + len;
                t = end;
                let before = e.tier();
                let window_before = e.window;
                let step = e.on_poll(&p, start, end);
                let change = step.and_then(Step::change);
                let after = e.tier();
                prop_assert!(after <= p.max_tier, "above max tier");
                // Expected verdict, recomputed from the window alone.
                let verdict = window_before.clone().charge(&p.limits, start, end);
                match change {
                    None => prop_assert_eq!(before, after),
                    Some(c) => {
                        prop_assert_eq!(c.from, before);
                        prop_assert_eq!(c.to, after);
                        let step = (after as i8 - before as i8).abs();
                        prop_assert_eq!(step, 1, "moved more than one tier");
                    }
                }
                prop_assert_eq!(
                    step.is_some_and(Step::bad),
                    verdict == WindowVerdict::Bad,
                    "a bad window not reported as one"
                );
                match verdict {
                    WindowVerdict::Bad => {
                        prop_assert!(after >= before, "demoted on a bad window");
                        clean_since_change = 0;
                    }
                    WindowVerdict::Clean(n) => {
                        prop_assert!(after <= before, "promoted on a clean window");
                        clean_since_change = clean_since_change.saturating_add(n);
                        if after < before {
                            // Hysteresis: demotion only after enough clean windows.
                            prop_assert!(clean_since_change >= p.clean_windows);
                            clean_since_change = 0;
                        }
                    }
                    WindowVerdict::Open => prop_assert_eq!(before, after),
                }
            }
        }
    }
}
