//! A managed task's one allocation, [`TaskCell`], and its [`TaskCore`]:
//! everything needed to poll the task the managed way, with its escalation
//! state and the per-tier interventions.
//!
//! The core is what moves when a task is isolated: the wrapper hands it to
//! the isolation pool, which polls it with the same measuring code, and the
//! pool hands it back when the task is demoted. The future itself never
//! moves: it lies pinned in the cell, and the core is its only owner.

use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
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

/// One managed task: its shared state, its engine, and its future.
///
/// The future is owned by whoever holds the task's core (see `task_core`):
/// the wrapper while the task runs on the runtime, the isolation pool while
/// it is isolated. The core is unique and moves between them whole, so
/// the future is only ever touched by one thread at a time, and it is
/// dropped in place when the task ends.
///
/// `repr(C)`: the engine and the shared state's front (which a poll reads
/// at most once a tick) share the `Arc`'s first cache line; the future
/// follows the shared state.
#[repr(C)]
pub(crate) struct TaskCell<F> {
    pub engine: Arc<Engine>,
    pub shared: TaskShared,
    future: UnsafeCell<Option<F>>,
}

// SAFETY: the future is only accessed through the task's core, which is
// unique and `Send` only where `F` is (see `TaskCell::future`); every
// other field is `Sync`.
unsafe impl<F: Send> Sync for TaskCell<F> {}

impl<F> TaskCell<F> {
    pub(crate) fn new(shared: TaskShared, engine: Arc<Engine>, future: F) -> Self {
        TaskCell {
            shared,
            engine,
            future: UnsafeCell::new(Some(future)),
        }
    }

    /// The future, pinned where it lies; `None` once dropped.
    ///
    /// # Safety
    /// Only the holder of the task's core may call this, and only while it
    /// holds `&mut` of that core: the core is the future's unique owner.
    // A `&mut` from `&self`, as `UnsafeCell` allows, under the contract above.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn future(&self) -> Option<Pin<&mut F>> {
        // SAFETY: the caller has exclusive access (see above); the future
        // is never moved out of the cell (it is dropped in place by
        // `drop_future`), so pinning it here is sound.
        unsafe { (*self.future.get()).as_mut().map(|f| Pin::new_unchecked(f)) }
    }

    /// Where the future lies (for a prefetch: not to be dereferenced).
    #[inline(always)]
    pub(crate) fn future_addr(&self) -> *const u8 {
        self.future.get().cast_const().cast()
    }

    /// Drops the future in place.
    ///
    /// # Safety
    /// As for [`future`](Self::future).
    pub(crate) unsafe fn drop_future(&self) {
        // SAFETY: exclusive access, as the caller guarantees; assigning
        // drops the old value in place, without moving it.
        unsafe { *self.future.get() = None };
    }
}

impl<F> Drop for TaskCell<F> {
    fn drop(&mut self) {
        // A ticker may be reading the task it saw in a thread slot.
        crate::context::before_free(&self.shared);
    }
}

impl<F> fmt::Debug for TaskCell<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskCell")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// The unique owner of a task's future, with the task's escalation state.
///
/// What a poll shorter than a tick reads and writes is here, in the
/// wrapper (inside Tokio's own task, which Tokio has just touched), so that
/// such a poll touches no cache line of the task's cell but its future's:
/// the engine's address, the poll count (published to the cell at most
/// once a tick), the window's deadline, the cell's address, the tier.
/// `repr(C)` keeps those in the first 49 bytes (see `Managed`), the rest
/// after.
#[repr(C)]
pub(crate) struct TaskCore<F: Future> {
    /// `cell.engine`, without the trip through the cell.
    engine: NonNull<Engine>,
    /// Polls so far; the cell has the count as of `published_tick`.
    polls: u64,
    /// When the current window ends. Until then a poll too short to be
    /// charged changes nothing, so it needs no policy.
    window_deadline_ns: u64,
    /// The tick (its count's low bits) at which the poll count was last
    /// published, and the watchdog's requests last checked.
    published_tick: u32,
    /// The configuration generation (its low bits) the task last applied.
    generation: u32,
    cell: Arc<TaskCell<F>>,
    /// The task has waited in the slow lane, so it may be offered a slot.
    lane_user: bool,
    /// The task gave way before its last slow-lane poll: let it run now.
    deferred: bool,
    /// The highest tier this task can be in: `Yield` if it cannot move.
    max_tier: Tier,
    /// The tier machine; its first field is the tier.
    escalation: Escalation,
    /// Deficit round robin credit in the slow lane, in nanoseconds.
    deficit_ns: i64,
}

impl<F: Future> TaskCore<F> {
    /// The core of the task in `cell`, which can reach `max_tier` at most
    /// and starts at `start` (the tier its origin earned), capped at that.
    pub(crate) fn new(cell: Arc<TaskCell<F>>, max_tier: Tier, start: Tier) -> Self {
        let engine = &cell.engine;
        let (policy, generation) = engine.policy(max_tier);
        let start = start.min(policy.max_tier);
        cell.shared.set_tier(start);
        // The latest tick's time: no clock read for a spawn.
        let now = engine.ticker.latest_ns();
        // A tick the first poll cannot be at, so that it takes the
        // bookkeeping path, where a task registers (see `after_tick`).
        let never = (engine.ticker.read().count() as u32).wrapping_sub(1);
        let escalation = Escalation::starting_at(start, now);
        TaskCore {
            engine: NonNull::from(&**engine),
            polls: 0,
            published_tick: never,
            window_deadline_ns: escalation.window_deadline_ns(&policy),
            escalation,
            deficit_ns: 0,
            generation: generation as u32,
            max_tier,
            deferred: false,
            lane_user: false,
            cell,
        }
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.cell.engine
    }

    /// The engine, reached without the trip through the cell.
    #[inline(always)]
    fn fast_engine(&self) -> &Engine {
        // SAFETY: `engine` points to `self.cell.engine`'s engine, which the
        // cell keeps alive as long as `self` holds the cell.
        unsafe { self.engine.as_ref() }
    }

    /// Publishes the poll count to the cell, for snapshots and totals, and
    /// takes any request the watchdog made (at most once a tick, and after
    /// every measured poll; the watchdog only asks about a poll that ran
    /// long, so one that gets measured).
    #[cold]
    #[inline(never)]
    pub(crate) fn publish(&mut self, tick: u64) {
        self.published_tick = tick as u32;
        self.cell.shared.set_polls(self.polls);
        if let Some(forced) = self.cell.shared.take_forced_tier() {
            self.forced(forced);
        }
    }

    /// The policy of the configuration in force, for this task.
    fn policy(&self) -> EscalationPolicy {
        self.cell.engine.policy(self.max_tier).0
    }

    /// The task's tier, after applying a reconfiguration.
    ///
    /// Also asks the CPU to start fetching the future, which lies in the
    /// task's cell, away from Tokio's task: the fetch overlaps the checks
    /// and stores that come before the future is polled, instead of
    /// stalling the poll (a measured 15 % of the wrapper's cost).
    #[inline]
    pub(crate) fn tier(&mut self) -> Tier {
        prefetch(self.cell.future_addr());
        if self.fast_engine().generation(Ordering::Relaxed) as u32 != self.generation {
            self.reload_policy();
        }
        self.escalation.tier()
    }

    /// Switches to the configuration `Pulse::reconfigure` published: all
    /// of it at once, from one snapshot.
    #[cold]
    fn reload_policy(&mut self) {
        let (policy, generation) = self.cell.engine.policy(self.max_tier);
        self.generation = generation as u32;
        self.window_deadline_ns = self.escalation.window_deadline_ns(&policy);
        if self.escalation.tier() > policy.max_tier {
            self.force(&policy, policy.max_tier);
        }
    }

    /// The watchdog found a poll of the task stuck: it is moved to `tier`
    /// (isolated), and that is an offence of the task.
    #[cold]
    fn forced(&mut self, tier: Tier) {
        let policy = self.policy();
        self.force(&policy, tier);
        let engine = &self.cell.engine;
        engine.task_offended(&self.cell.shared, self.escalation.tier(), clock().now_ns());
    }

    #[cold]
    fn force(&mut self, policy: &EscalationPolicy, tier: Tier) {
        if let Some(change) = self.escalation.force(policy, tier) {
            let cause = ChangeCause {
                poll_ns: 0,
                cpu_ns: None,
            };
            self.tier_changed(change, cause, clock().now_ns());
        }
    }

    /// Polls on the main workers, applying the intervention of `tier`
    /// (from [`tier`](Self::tier), just before).
    #[inline(always)]
    pub(crate) fn poll_local(&mut self, cx: &mut Context<'_>, tier: Tier) -> Poll<F::Output> {
        if tier >= Tier::Yield || self.lane_user {
            return self.poll_local_suspect(cx, tier);
        }
        self.poll_measured(cx, tier)
    }

    /// [`poll_local`](Self::poll_local) for a task that is, or was, in the
    /// slow lane.
    #[cold]
    #[inline(never)]
    fn poll_local_suspect(&mut self, cx: &mut Context<'_>, tier: Tier) -> Poll<F::Output> {
        if tier >= Tier::Yield {
            return self.poll_in_slow_lane(cx, tier);
        }
        self.pass_lane_offer();
        self.poll_measured(cx, tier)
    }

    /// If the slow lane offered this task a slot it will not use, offers it
    /// to the next waiting task instead, so no slot is left unclaimed.
    pub(crate) fn pass_lane_offer(&self) {
        if let Some(entry) = self.cell.shared.lane_if_used() {
            if entry.take_offer() {
                self.cell.engine.lane.offer_next();
            }
        }
    }

    fn poll_in_slow_lane(&mut self, cx: &mut Context<'_>, tier: Tier) -> Poll<F::Output> {
        self.lane_user = true;
        let cell = Arc::clone(&self.cell);
        let entry = cell.shared.lane();
        let offered = entry.take_offer();
        // Give way behind other ready work first, unless the task already
        // waited in the lane's queue.
        if !offered && !self.deferred {
            self.deferred = true;
            defer(cx);
            return Poll::Pending;
        }
        self.deferred = false;
        let lane = &cell.engine.lane;
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
            None => match lane.wait(entry, cx.waker()) {
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

    #[inline(always)]
    fn poll_measured(&mut self, cx: &mut Context<'_>, tier: Tier) -> Poll<F::Output> {
        self.poll_timed(cx, tier).0
    }

    /// The managed poll: returns the future's result and how long the
    /// poll is judged to have taken, in nanoseconds (0 for a poll shorter
    /// than a tick; see `ticker`).
    ///
    /// The fast path, taken by nearly every poll: no hooks, sampled timing,
    /// and no tick since the task's last bookkeeping. It publishes the poll
    /// for the watchdog, polls, counts, and compares ticks: a poll in which
    /// no tick went by was short, and between ticks no window can end, so
    /// there is nothing more to do. Anything else goes out of line.
    #[inline(always)]
    fn poll_timed(&mut self, cx: &mut Context<'_>, tier: Tier) -> (Poll<F::Output>, u64) {
        // SAFETY: both are kept alive by `self.cell`, which `self` holds
        // throughout; taken as plain references so that `self` stays free
        // for the bookkeeping after the poll.
        let (engine, cell) = unsafe { (self.engine.as_ref(), &*Arc::as_ptr(&self.cell)) };
        if engine.hooks.is_installed() || engine.exact_timing() {
            return self.poll_attended(cx, tier);
        }
        let ticker = &engine.ticker;
        let start = ticker.read();
        if start.idle() {
            ticker.wake(start);
        }
        let (out, published) = {
            let scope = PollScope::enter(&cell.shared, ticker, start, tier >= Tier::Yield);
            (poll_future(cell, cx), scope.slot())
        };
        let end = ticker.read();
        self.polls += 1;
        if end.count() == start.count() && end.count() as u32 == self.published_tick {
            return (out, 0);
        }
        let ready = out.is_ready();
        let poll_ns = self.after_tick(start, end, 0, published, ready, false);
        (out, poll_ns)
    }

    /// [`poll_timed`](Self::poll_timed) with hooks to call, or exact timing.
    #[cold]
    #[inline(never)]
    fn poll_attended(&mut self, cx: &mut Context<'_>, tier: Tier) -> (Poll<F::Output>, u64) {
        // SAFETY: as in `poll_timed`.
        let (engine, cell) = unsafe { (self.engine.as_ref(), &*Arc::as_ptr(&self.cell)) };
        let hooks = engine.hooks.is_installed();
        if hooks {
            let info = TaskInfo {
                shared: &cell.shared,
            };
            engine
                .hooks
                .call(Hook::BeforePoll, |h| h.before_poll(&info));
        }
        let ticker = &engine.ticker;
        let exact = engine.exact_timing();
        let start = ticker.read();
        if start.idle() {
            ticker.wake(start);
        }
        let start_ns = if exact { clock().now_ns() } else { 0 };
        let (out, published) = {
            let scope = PollScope::enter(&cell.shared, ticker, start, tier >= Tier::Yield);
            (poll_future(cell, cx), scope.slot())
        };
        let end = ticker.read();
        self.polls += 1;
        let ready = out.is_ready();
        let poll_ns =
            if exact || end.count() != start.count() || end.count() as u32 != self.published_tick {
                self.after_tick(start, end, start_ns, published, ready, hooks)
            } else {
                if hooks {
                    self.report_poll(0, false, false, ready);
                }
                0
            };
        (out, poll_ns)
    }

    /// After a poll in which a tick went by (or after the first poll since
    /// one did, or after every poll with exact timing): publishes the poll
    /// count, measures the poll if it spanned a tick, and closes the window
    /// if it has run its course. Returns the length the poll is judged by.
    #[inline(never)]
    fn after_tick(
        &mut self,
        start: Tick,
        end: Tick,
        start_ns: u64,
        published: Option<(&ThreadSlot, u64)>,
        ready: bool,
        hooks: bool,
    ) -> u64 {
        self.publish(end.count());
        if !ready && !self.cell.shared.is_registered() {
            self.register();
        }
        if start_ns != 0 || end.count() != start.count() {
            return self.measured(start, end, start_ns, published, ready, hooks);
        }
        // Shorter than a tick: nothing to measure. Only a window that has
        // run its course closes, at the time of the latest tick.
        let now = self.fast_engine().ticker.latest_ns();
        if now >= self.window_deadline_ns {
            self.judge(0, None, now, now);
        }
        if hooks {
            self.report_poll(0, false, false, ready);
        }
        0
    }

    /// The rest of a poll that outlasted a tick (or of every poll, with
    /// exact timing): reads the clock, judges the poll by how long it
    /// certainly ran, and records it. Returns that length.
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
        let policy = self.policy();
        let engine = &*self.cell.engine;
        let ticker = &engine.ticker;
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
                if wall_ns >= policy.limits.charge_floor_ns =>
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
        let task = &self.cell.shared;
        if let Some(cpu) = cpu_ns {
            task.record_cpu(cpu);
        }
        // Long polls on the main workers want fine ticks; the long polls of
        // isolated tasks, on the pool, are expected, and coarse ones judge
        // them well enough.
        if poll_ns >= policy.limits.charge_floor_ns && self.escalation.tier() < Tier::Isolate {
            ticker.want_fine();
        }
        // This poll is reported here; an observing runtime hook must not
        // charge it to the task that polled this future too.
        #[cfg(all(feature = "runtime-hooks", tokio_unstable))]
        crate::runtime_hooks::managed_poll_done(poll_ns);
        let slow = poll_ns > policy.limits.slow_poll_ns;
        task.record_measured(poll_ns, busy_ns, slow);
        engine.stats.poll_measured(poll_ns);
        self.judge(poll_ns, cpu_ns, end.saturating_sub(poll_ns), end);
        if hooks {
            self.report_poll(poll_ns, true, slow, ready);
        }
        poll_ns
    }

    /// Feeds a poll that ran from `start` to `end` (in the time it is
    /// charged) to the tier machine.
    #[cold]
    #[inline(never)]
    fn judge(&mut self, poll_ns: u64, cpu_ns: Option<u64>, start: u64, end: u64) {
        let policy = self.policy();
        if let Some(step) = self.escalation.on_poll(&policy, start, end) {
            self.judged(step, ChangeCause { poll_ns, cpu_ns }, end);
        }
        self.window_deadline_ns = self.escalation.window_deadline_ns(&policy);
    }

    /// Registers the task for snapshots, at its first `Pending`: a task that
    /// completes in its first poll never shows in a snapshot, so spawning
    /// one takes no lock at all (see `registry`).
    #[cold]
    #[inline(never)]
    fn register(&self) {
        // SAFETY: the wrapper's `Drop` unregisters the task (it is
        // registered now, see `TaskShared::is_registered`) before letting go
        // of its cell, and the core holds the cell until then.
        unsafe { self.cell.engine.register(&self.cell.shared) };
    }

    /// Calls the `after_poll` hook.
    fn report_poll(&self, poll_ns: u64, measured: bool, slow: bool, ready: bool) {
        let info = TaskInfo {
            shared: &self.cell.shared,
        };
        let report = PollReport {
            duration: nanos(poll_ns),
            measured,
            slow,
            ready,
        };
        self.cell
            .engine
            .hooks
            .call(Hook::AfterPoll, |h| h.after_poll(&info, &report));
    }

    fn tier_changed(&self, change: TierChange, cause: ChangeCause, now_ns: u64) {
        self.cell
            .engine
            .tier_changed(Scope::Managed, &self.cell.shared, change, cause, now_ns);
    }

    /// A poll closed a window that changed the tier or was bad.
    #[cold]
    #[inline(never)]
    fn judged(&self, step: Step, cause: ChangeCause, now_ns: u64) {
        if let Some(change) = step.change() {
            self.tier_changed(change, cause, now_ns);
        }
        if step.bad() {
            self.cell
                .engine
                .task_offended(&self.cell.shared, self.escalation.tier(), now_ns);
        }
    }
}

/// Polls the future in `cell`.
#[inline(always)]
fn poll_future<F: Future>(cell: &TaskCell<F>, cx: &mut Context<'_>) -> Poll<F::Output> {
    // SAFETY: called by the core, this future's unique owner, while it
    // holds `&mut` of itself (see `TaskCell::future`).
    match unsafe { cell.future() } {
        Some(future) => future.poll(cx),
        None => panic!("`Managed` future polled after completion"),
    }
}

/// Starts fetching the cache line at `addr` (a hint; no effect elsewhere).
#[inline(always)]
fn prefetch(addr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint to the cache: it reads nothing the
    // program sees and cannot fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(addr.cast(), std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

// SAFETY: `engine` points to the engine the core's cell keeps alive, and
// `Engine` is `Sync`; everything else in the core is `Send` where `F` is.
unsafe impl<F: Future + Send> Send for TaskCore<F> {}

impl<F: Future> Drop for TaskCore<F> {
    fn drop(&mut self) {
        // The count is exact once the core is gone.
        self.cell.shared.set_polls(self.polls);
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
        let polled = self.poll_measured(cx, Tier::Isolate);
        // Isolated polls are few and long: keep the count exact.
        self.cell.shared.set_polls(self.polls);
        match polled {
            Poll::Ready(out) => PoolPoll::Ready(out),
            // Demoted by this very poll: go home now rather than at the
            // next wake-up.
            Poll::Pending if self.tier() < Tier::Isolate => PoolPoll::Demoted,
            Poll::Pending => PoolPoll::Pending,
        }
    }

    fn drop_future(&mut self) {
        // SAFETY: this core owns the future, and `&mut self` is held.
        unsafe { self.cell.drop_future() };
    }
}
