//! A managed future together with everything needed to poll it the managed
//! way: its escalation state, its policy, and the per-tier interventions.
//!
//! The core is what moves when a task is isolated: the wrapper hands it to
//! the isolation pool, which polls it with the same measuring code, and the
//! pool hands it back when the task is demoted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use crate::checkpoint::defer;
use crate::context::{CurrentPoll, PollScope};
use crate::hooks::PollReport;
use crate::observe::{self, ChangeCause};
use crate::pulse::PulseShared;
use crate::task::{TaskInfo, TaskShared};
use crate::tier::{Escalation, EscalationPolicy, Tier, TierChange};
use crate::timing::{clock, cpu::thread_cpu_ns, nanos};

pub(crate) struct TaskCore<F: Future> {
    future: Pin<Box<F>>,
    task: Arc<TaskShared>,
    pulse: Arc<PulseShared>,
    escalation: Escalation,
    policy: EscalationPolicy,
    /// The task gave way before its last slow-lane poll: let it run now.
    deferred: bool,
    /// Deficit round robin credit in the slow lane, in nanoseconds.
    deficit_ns: i64,
    /// The task has waited in the slow lane, so it may be offered a slot.
    lane_user: bool,
    /// The highest tier this task can be in: `Yield` if it cannot move.
    max_tier: Tier,
    /// The configuration generation `policy` was derived from.
    generation: u64,
}

impl<F: Future> TaskCore<F> {
    pub(crate) fn new(
        pulse: Arc<PulseShared>,
        task: Arc<TaskShared>,
        future: F,
        max_tier: Tier,
    ) -> Self {
        let generation = pulse.generation.load(Ordering::Acquire);
        TaskCore {
            future: Box::pin(future),
            policy: pulse.config.load().escalation_policy(max_tier),
            max_tier,
            generation,
            escalation: Escalation::new(clock().now_ns()),
            task,
            pulse,
            deferred: false,
            deficit_ns: 0,
            lane_user: false,
        }
    }

    pub(crate) fn pulse(&self) -> &Arc<PulseShared> {
        &self.pulse
    }

    /// The task's tier, after applying any escalation the watchdog asked for.
    #[inline]
    pub(crate) fn tier(&mut self) -> Tier {
        if self.pulse.generation.load(Ordering::Relaxed) != self.generation {
            self.reload_policy();
        }
        if let Some(forced) = self.task.take_forced_tier() {
            self.force(forced);
        }
        self.escalation.tier()
    }

    /// Switches to the configuration `Pulse::reconfigure` published: all
    /// of it at once, from one snapshot.
    #[cold]
    fn reload_policy(&mut self) {
        self.generation = self.pulse.generation.load(Ordering::Acquire);
        self.policy = self.pulse.config.load().escalation_policy(self.max_tier);
        if self.escalation.tier() > self.policy.max_tier {
            self.force(self.policy.max_tier);
        }
    }

    #[cold]
    fn force(&mut self, tier: Tier) {
        if let Some(change) = self.escalation.force(&self.policy, tier) {
            let cause = ChangeCause {
                poll_ns: 0,
                cpu_ns: None,
            };
            self.tier_changed(change, cause, clock().now_ns());
        }
    }

    /// Polls on the main workers, applying the intervention of `tier`
    /// (from [`tier`](Self::tier), just before).
    #[inline]
    pub(crate) fn poll_local(&mut self, cx: &mut Context<'_>, tier: Tier) -> Poll<F::Output> {
        if tier >= Tier::Yield {
            return self.poll_in_slow_lane(cx, tier);
        }
        if self.lane_user {
            self.pass_lane_offer();
        }
        self.poll_measured(cx, tier)
    }

    /// Polls on an isolation pool thread: no further intervention there.
    pub(crate) fn poll_isolated(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.poll_measured(cx, Tier::Isolate)
    }

    /// If the slow lane offered this task a slot it will not use, offers it
    /// to the next waiting task instead, so no slot is left unclaimed.
    pub(crate) fn pass_lane_offer(&self) {
        if self.task.lane.take_offer() {
            self.pulse.lane.offer_next();
        }
    }

    fn poll_in_slow_lane(&mut self, cx: &mut Context<'_>, tier: Tier) -> Poll<F::Output> {
        self.lane_user = true;
        let offered = self.task.lane.take_offer();
        // Give way behind other ready work first, unless the task already
        // waited in the lane's queue.
        if !offered && !self.deferred {
            self.deferred = true;
            defer(cx);
            return Poll::Pending;
        }
        self.deferred = false;
        let pulse = Arc::clone(&self.pulse);
        let lane = &pulse.lane;
        if self.deficit_ns <= 0 {
            self.deficit_ns += lane.quantum_ns();
            if self.deficit_ns <= 0 {
                // In debt from earlier long polls: pass this turn on.
                if offered {
                    lane.offer_next();
                }
                self.deferred = true;
                defer(cx);
                return Poll::Pending;
            }
        }
        let slot = match lane.try_enter() {
            Some(slot) => slot,
            None => match lane.wait(&self.task, cx.waker()) {
                Ok(Some(slot)) => slot,
                Ok(None) => return Poll::Pending,
                Err(()) => {
                    // Queue full: still give way, without the lane's order.
                    defer(cx);
                    return Poll::Pending;
                }
            },
        };
        let (out, poll_ns) = self.poll_timed(cx, tier);
        self.deficit_ns -= i64::try_from(poll_ns).unwrap_or(i64::MAX);
        drop(slot);
        out
    }

    #[inline]
    fn poll_measured(&mut self, cx: &mut Context<'_>, tier: Tier) -> Poll<F::Output> {
        self.poll_timed(cx, tier).0
    }

    /// The measured poll: returns the future's result and the poll's
    /// wall time in nanoseconds.
    #[inline]
    fn poll_timed(&mut self, cx: &mut Context<'_>, tier: Tier) -> (Poll<F::Output>, u64) {
        let hooks = self.pulse.hooks.is_installed();
        if hooks {
            let info = TaskInfo { shared: &self.task };
            self.pulse.hooks.with(|h| h.before_poll(&info));
        }
        // Only suspects pay for a CPU-time read (see `Escalation::measures_cpu`).
        let cpu_start = if self.escalation.measures_cpu() {
            thread_cpu_ns()
        } else {
            None
        };
        let slice_ns = self.policy.limits.slow_poll_ns >> if tier >= Tier::Yield { 2 } else { 1 };
        let clock = clock();
        let start = clock.now_ns();
        let out = {
            let _scope = PollScope::enter(CurrentPoll {
                start_ns: start,
                slice_ns,
                task_id: self.task.id.0,
                pulse_id: self.pulse.id,
            });
            self.future.as_mut().poll(cx)
        };
        let end = clock.now_ns();
        let cpu_ns = cpu_start.and_then(|c0| Some(thread_cpu_ns()?.saturating_sub(c0)));
        let poll_ns = self.account(start, end, cpu_ns, out.is_ready(), hooks);
        (out, poll_ns)
    }

    #[inline]
    /// Records one poll; returns its wall time in nanoseconds.
    fn account(
        &mut self,
        start: u64,
        end: u64,
        cpu_ns: Option<u64>,
        ready: bool,
        hooks: bool,
    ) -> u64 {
        let poll_ns = end.saturating_sub(start);
        // This poll is reported here; an observing runtime hook must not
        // charge it to the task that polled this future too.
        #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
        crate::runtime_hooks::managed_poll_done(poll_ns);
        let slow = poll_ns > self.policy.limits.slow_poll_ns;
        self.task.record_poll(poll_ns, slow);
        if let Some(cpu) = cpu_ns {
            self.task.record_cpu(cpu);
        }
        if let Some(change) = self.escalation.on_poll(&self.policy, start, end) {
            self.tier_changed(change, ChangeCause { poll_ns, cpu_ns }, end);
        }
        if hooks {
            let info = TaskInfo { shared: &self.task };
            let report = PollReport {
                duration: nanos(poll_ns),
                slow,
                ready,
            };
            self.pulse.hooks.with(|h| h.after_poll(&info, &report));
        }
        poll_ns
    }

    #[cold]
    #[inline(never)]
    fn tier_changed(&self, change: TierChange, cause: ChangeCause, now_ns: u64) {
        self.task.set_tier(change.to);
        self.pulse.stats.tier_changed(change.from, change.to);
        observe::tier_changed(&self.task, change, cause, &self.pulse.warnings, now_ns);
        if self.pulse.hooks.is_installed() {
            let info = TaskInfo { shared: &self.task };
            self.pulse
                .hooks
                .with(|h| h.on_tier_change(&info, change.from, change.to));
        }
    }
}
