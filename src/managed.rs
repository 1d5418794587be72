//! The wrapper around every managed future: the poll path.
//!
//! Per poll, with no hooks and a well-behaved task, it costs two clock reads
//! (TSC, ~10 ns each), a thread-local write and restore, and a handful of
//! relaxed loads and stores on the task's own state: no allocation, no lock,
//! no lookup. Everything else (tier changes, events, CPU time) is off that
//! path, taken only by tasks that have already misbehaved.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::checkpoint::defer;
use crate::context::PollScope;
use crate::hooks::PollReport;
use crate::observe::{self, ChangeCause};
use crate::pulse::PulseShared;
use crate::task::{TaskInfo, TaskShared};
use crate::tier::{Escalation, EscalationPolicy, Tier, TierChange};
use crate::timing::{clock, cpu::thread_cpu_ns, nanos};

/// A future under tokio-pulse management.
///
/// Created by [`Pulse::spawn`](crate::Pulse::spawn) (which spawns it) or by
/// [`PulseExt::pulse`](crate::PulseExt::pulse) (which hands it back for you to
/// run under any executor). Its output is the wrapped future's output; a
/// panic in the wrapped future propagates unchanged.
#[must_use = "futures do nothing unless polled"]
pub struct Managed<F: Future> {
    future: Pin<Box<F>>,
    task: Arc<TaskShared>,
    pulse: Arc<PulseShared>,
    escalation: Escalation,
    policy: EscalationPolicy,
    /// The task gave way at the start of its last poll: run it this time.
    deferred: bool,
    /// Entered around every poll, so that events from inside the task carry
    /// its identity. `None` unless a subscriber enabled it when the task
    /// was created (`tokio_pulse::task` at `DEBUG`): a disabled `Span` is
    /// still 40 bytes, and moving it in and out of the wrapper cost ~6 ns a
    /// poll, where checking an `Option<Box<_>>` costs nothing measurable
    /// (33.2 ns per managed poll with this field, 33.5 without; best of 30
    /// runs of 2M polls).
    span: Option<Box<tracing::Span>>,
}

impl<F: Future> Managed<F> {
    pub(crate) fn new(
        pulse: Arc<PulseShared>,
        task: Arc<TaskShared>,
        future: F,
        max_tier: Tier,
    ) -> Self {
        pulse.registry.insert(Arc::clone(&task));
        pulse.stats.task_spawned();
        let span = tracing::debug_span!(
            target: "tokio_pulse::task",
            "pulse.task",
            task.id = task.id.0,
            task.name = task.name.as_deref(),
            task.location = %task.location,
        );
        Managed {
            span: (!span.is_disabled()).then(|| Box::new(span)),
            future: Box::pin(future),
            policy: pulse.config.escalation_policy(max_tier),
            escalation: Escalation::new(clock().now_ns()),
            task,
            pulse,
            deferred: false,
        }
    }

    /// Intervention for tasks at `Yield` and above: returns `true` when the
    /// task must give way now instead of running.
    ///
    /// Seam for the stronger interventions: the slow lane (share-capped
    /// admission) and the isolation pool plug in here.
    fn must_give_way(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deferred {
            self.deferred = false;
            return false;
        }
        self.deferred = true;
        defer(cx);
        true
    }

    #[inline(always)]
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        let tier = self.escalation.tier();
        if tier >= Tier::Yield && self.must_give_way(cx) {
            return Poll::Pending;
        }
        self.poll_measured(cx, tier)
    }

    #[inline]
    fn poll_measured(&mut self, cx: &mut Context<'_>, tier: Tier) -> Poll<F::Output> {
        let hooks = self.pulse.hooks.is_installed();
        if hooks {
            let info = TaskInfo { shared: &self.task };
            self.pulse.hooks.with(|h| h.before_poll(&info));
        }
        // Only suspects pay for a CPU-time read (see `timing`).
        let cpu_start = if tier >= Tier::Warn {
            thread_cpu_ns()
        } else {
            None
        };
        let slice_ns = self.policy.limits.slow_poll_ns >> if tier >= Tier::Yield { 2 } else { 1 };
        let clock = clock();
        let start = clock.now_ns();
        let out = {
            let _scope = PollScope::enter(start, slice_ns);
            self.future.as_mut().poll(cx)
        };
        let end = clock.now_ns();
        let cpu_ns = cpu_start.and_then(|c0| Some(thread_cpu_ns()?.saturating_sub(c0)));
        self.account(start, end, cpu_ns, out.is_ready(), hooks);
        out
    }

    #[inline]
    fn account(&mut self, start: u64, end: u64, cpu_ns: Option<u64>, ready: bool, hooks: bool) {
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

impl<F: Future> Future for Managed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // `Managed` is `Unpin`: the wrapped future is pinned in its own box.
        let this = self.get_mut();
        if this.span.is_none() {
            // The common case, kept free of writes: `take` below stores
            // into the wrapper, which measurably costs ~3 ns a poll.
            return this.poll_inner(cx);
        }
        let span = this.span.take();
        let out = match &span {
            Some(span) => span.in_scope(|| this.poll_inner(cx)),
            None => this.poll_inner(cx),
        };
        this.span = span;
        out
    }
}

impl<F: Future> Drop for Managed<F> {
    fn drop(&mut self) {
        self.pulse.registry.remove(self.task.id);
        self.pulse.stats.task_ended(&self.task.counters());
        if self.pulse.hooks.is_installed() {
            let info = TaskInfo { shared: &self.task };
            self.pulse.hooks.with(|h| h.on_task_end(&info));
        }
    }
}

impl<F: Future> std::fmt::Debug for Managed<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Managed")
            .field("task", &TaskInfo { shared: &self.task })
            .finish_non_exhaustive()
    }
}
