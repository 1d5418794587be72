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
use crate::context::{PollScope, ThreadSlot};
use crate::engine::{Engine, Scope};
use crate::hooks::{Hook, PollReport};
use crate::isolation::{Isolated, PoolPoll};
use crate::observe::ChangeCause;
use crate::slow_lane::Wait;
use crate::task::{TaskInfo, TaskShared};
use crate::ticker::Tick;
use crate::tier::{Escalation, EscalationPolicy, Step, Tier, TierChange};
use crate::timing::schedstat::charged;
use crate::timing::{clock, nanos};

pub(crate) struct TaskCore<F: Future> {
    future: Pin<Box<F>>,
    task: Arc<TaskShared>,
    engine: Arc<Engine>,
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
    /// A core for `future`, whose task can reach `max_tier` at most and
    /// starts at `start` (the tier its origin earned), capped at that.
    pub(crate) fn new(
        engine: Arc<Engine>,
        task: Arc<TaskShared>,
        future: F,
        max_tier: Tier,
        start: Tier,
    ) -> Self {
        let (policy, generation) = engine.policy(max_tier);
        let start = start.min(policy.max_tier);
        task.set_tier(start);
        TaskCore {
            future: Box::pin(future),
            policy,
            max_tier,
            generation,
            escalation: Escalation::starting_at(start, clock().now_ns()),
            task,
            engine,
            deferred: false,
            deficit_ns: 0,
            lane_user: false,
        }
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The task's tier, after applying any escalation the watchdog asked for.
    #[inline]
    pub(crate) fn tier(&mut self) -> Tier {
        if self.engine.generation(Ordering::Relaxed) != self.generation {
            self.reload_policy();
        }
        if let Some(forced) = self.task.take_forced_tier() {
            self.force(forced);
            // The watchdog found a poll stuck: an offence of the task.
            self.engine
                .task_offended(&self.task, self.escalation.tier(), clock().now_ns());
        }
        self.escalation.tier()
    }

    /// Switches to the configuration `Pulse::reconfigure` published: all
    /// of it at once, from one snapshot.
    #[cold]
    fn reload_policy(&mut self) {
        (self.policy, self.generation) = self.engine.policy(self.max_tier);
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

    /// If the slow lane offered this task a slot it will not use, offers it
    /// to the next waiting task instead, so no slot is left unclaimed.
    pub(crate) fn pass_lane_offer(&self) {
        if self.task.lane.take_offer() {
            self.engine.lane.offer_next();
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
        let engine = Arc::clone(&self.engine);
        let lane = &engine.lane;
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
                Wait::Entered(slot) => slot,
                Wait::Queued => return Poll::Pending,
                Wait::Full => {
                    // Still give way, without the lane's order.
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

    /// The managed poll: returns the future's result and how long the
    /// poll is judged to have taken, in nanoseconds (0 for a poll shorter
    /// than a tick; see `ticker`).
    #[inline]
    fn poll_timed(&mut self, cx: &mut Context<'_>, tier: Tier) -> (Poll<F::Output>, u64) {
        let hooks = self.engine.hooks.is_installed();
        if hooks {
            let info = TaskInfo { shared: &self.task };
            self.engine
                .hooks
                .call(Hook::BeforePoll, |h| h.before_poll(&info));
        }
        let engine = &*self.engine;
        let ticker = &engine.ticker;
        let exact = engine.exact_timing();
        let start_tick = ticker.read();
        if start_tick.idle() {
            ticker.wake(start_tick);
        }
        let start_ns = if exact { clock().now_ns() } else { 0 };
        let (out, published) = {
            let scope = PollScope::enter(self.task.id.0, ticker, start_tick, tier >= Tier::Yield);
            let out = self.future.as_mut().poll(cx);
            (out, scope.slot())
        };
        let end_tick = ticker.read();
        self.task.count_poll();
        let ready = out.is_ready();
        if !exact && end_tick.count() == start_tick.count() {
            // Shorter than a tick: nothing to measure. Only a window that
            // has run its course closes, at the time of the latest tick.
            let now = ticker.latest_ns();
            if let Some(step) = self.escalation.on_poll(&self.policy, now, now) {
                self.judged(
                    step,
                    ChangeCause {
                        poll_ns: 0,
                        cpu_ns: None,
                    },
                    now,
                );
            }
            if hooks {
                self.report_poll(0, false, ready);
            }
            return (out, 0);
        }
        let poll_ns = self.measured(start_tick, end_tick, start_ns, published, ready, hooks);
        (out, poll_ns)
    }

    /// The rest of a poll that outlasted a tick (or of every poll, with
    /// exact timing): reads the clock, judges the poll by how long it
    /// certainly ran, and records it. Returns that length.
    #[inline(never)]
    fn measured(
        &mut self,
        start_tick: Tick,
        end_tick: Tick,
        start_ns: u64,
        published: Option<(&ThreadSlot, u64)>,
        ready: bool,
        hooks: bool,
    ) -> u64 {
        let end = clock().now_ns();
        let ticker = &self.engine.ticker;
        let sighting = published.and_then(|(slot, seq)| slot.sightings().of(seq));
        let (wall_ns, busy_ns) = if start_ns != 0 {
            let wall_ns = end.saturating_sub(start_ns);
            (wall_ns, wall_ns)
        } else {
            // The poll was running at the first tick after it started (or
            // when the ticker first saw it, for a poll longer than the
            // ring): it ran at least from then.
            let running_since = ticker
                .time_of(start_tick.count() + 1, end_tick)
                .or(sighting.map(|s| s.first_ns))
                .unwrap_or(end);
            let wall_ns = end.saturating_sub(running_since);
            // Each tick a poll spans charges it the tick's period: the
            // expected charge of a poll of random phase is its length.
            let spanned = match (
                ticker.time_of(start_tick.count(), end_tick),
                ticker.time_of(end_tick.count(), end_tick),
            ) {
                (Some(first), Some(last)) => last.saturating_sub(first),
                _ => wall_ns,
            };
            (wall_ns, spanned)
        };
        // A long poll is charged only the time its thread could run: not
        // the time the OS gave the CPU to others (see `schedstat`).
        let (poll_ns, cpu_ns) = match (published, sighting.and_then(|s| s.stamp)) {
            (Some((slot, _)), Some((stamp_ns, before)))
                if wall_ns >= self.policy.limits.charge_floor_ns =>
            {
                match slot.own_figures() {
                    Some(now) => {
                        let c = charged(wall_ns, end.saturating_sub(stamp_ns), now.since(before));
                        (c.run_ns, c.cpu_ns)
                    }
                    None => (wall_ns, None),
                }
            }
            _ => (wall_ns, None),
        };
        if let Some(cpu) = cpu_ns {
            self.task.record_cpu(cpu);
        }
        if poll_ns >= self.policy.limits.charge_floor_ns {
            ticker.want_fine();
        }
        // This poll is reported here; an observing runtime hook must not
        // charge it to the task that polled this future too.
        #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
        crate::runtime_hooks::managed_poll_done(poll_ns);
        let slow = poll_ns > self.policy.limits.slow_poll_ns;
        self.task.record_measured(poll_ns, busy_ns, slow);
        self.engine.stats.poll_measured(poll_ns);
        let start = end.saturating_sub(poll_ns);
        if let Some(step) = self.escalation.on_poll(&self.policy, start, end) {
            self.judged(step, ChangeCause { poll_ns, cpu_ns }, end);
        }
        if hooks {
            self.report_poll(poll_ns, true, ready);
        }
        poll_ns
    }

    /// Calls the `after_poll` hook.
    fn report_poll(&self, poll_ns: u64, measured: bool, ready: bool) {
        let info = TaskInfo { shared: &self.task };
        let report = PollReport {
            duration: nanos(poll_ns),
            measured,
            slow: poll_ns > self.policy.limits.slow_poll_ns,
            ready,
        };
        self.engine
            .hooks
            .call(Hook::AfterPoll, |h| h.after_poll(&info, &report));
    }

    fn tier_changed(&self, change: TierChange, cause: ChangeCause, now_ns: u64) {
        self.engine
            .tier_changed(Scope::Managed, &self.task, change, cause, now_ns);
    }

    /// A poll closed a window that changed the tier or was bad.
    #[cold]
    #[inline(never)]
    fn judged(&self, step: Step, cause: ChangeCause, now_ns: u64) {
        if let Some(change) = step.change() {
            self.tier_changed(change, cause, now_ns);
        }
        if step.bad() {
            self.engine
                .task_offended(&self.task, self.escalation.tier(), now_ns);
        }
    }
}

impl<F: Future> Isolated for TaskCore<F> {
    type Output = F::Output;

    /// Polls on an isolation pool thread: measured as on the workers, with
    /// no further intervention there.
    fn poll_isolated(&mut self, cx: &mut Context<'_>) -> PoolPoll<F::Output> {
        if self.tier() < Tier::Isolate {
            return PoolPoll::Demoted;
        }
        match self.poll_measured(cx, Tier::Isolate) {
            Poll::Ready(out) => PoolPoll::Ready(out),
            // Demoted by this very poll: go home now rather than at the
            // next wake-up.
            Poll::Pending if self.tier() < Tier::Isolate => PoolPoll::Demoted,
            Poll::Pending => PoolPoll::Pending,
        }
    }
}
