//! A managed task's one allocation, [`TaskCell`], and its [`TaskCore`]:
//! everything needed to poll the task the managed way, with its escalation
//! state and the per-tier interventions.
//!
//! The cell holds everything of the task: the core, the future, the state
//! other threads read, the engine. Tokio's own task holds only the wrapper
//! (`Managed`), a few words, so that managing a task grows Tokio's
//! allocation as little as possible: a larger future costs every spawn in
//! copies, and can cost it a larger allocation class.
//!
//! Neither the core nor the future ever moves: what moves, when a task is
//! isolated, is the right to use them. The wrapper holds it while the task
//! runs on the runtime; a [`PoolCore`] carries it to the isolation pool,
//! which polls the core with the same measuring code, and back when the
//! task is demoted.

use std::alloc::Layout;
use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::ptr::{NonNull, addr_of_mut};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::task::{Context, Poll};

use crate::checkpoint::defer;
use crate::context::{PollScope, ThreadSlot};
use crate::engine::{Engine, Scope};
use crate::hooks::{Hook, PollReport};
use crate::isolation::{self, Handoff, Isolated, PoolPoll};
use crate::observe::ChangeCause;
use crate::slow_lane::Wait;
use crate::task::{TaskInfo, TaskShared};
use crate::task_memory;
use crate::ticker::Tick;
use crate::tier::{Escalation, EscalationPolicy, Step, Tier, TierChange};
use crate::timing::schedstat::charged;
use crate::timing::{clock, nanos};

/// One managed task: its core, its future, its shared state, its engine.
///
/// The core and the future are used only by the holder of the right to
/// (see the module's documentation): the wrapper while the task runs on
/// the runtime, the isolation pool while it is isolated, never both, so
/// they are only ever touched by one thread at a time. The future is
/// dropped in place, when it completes or with the cell.
///
/// Held through [`CellRef`]s; its memory comes from `task_memory`.
///
/// `repr(C)`: the count of holds and the core's hot fields come first, in
/// the allocation's first cache line, and a small future right after them.
#[repr(C)]
pub(crate) struct TaskCell<F: Future> {
    /// The `CellRef`s to this cell: the wrapper's, and the pool's while
    /// the task is isolated.
    holds: AtomicUsize,
    core: UnsafeCell<TaskCore<F>>,
    future: UnsafeCell<Option<F>>,
    pub shared: TaskShared,
    pub engine: Arc<Engine>,
}

// SAFETY: the core and the future are only used by the holder of the right
// to (see `TaskCell::core`), which moves between threads only where `F`
// is `Send`; every other field is `Sync`.
unsafe impl<F: Future + Send> Sync for TaskCell<F> {}

impl<F: Future> TaskCell<F> {
    /// The task's core.
    ///
    /// # Safety
    /// Only the holder of the right to use the core (the wrapper while the
    /// task is not isolated, else its `PoolCore`) may call this, and the
    /// reference must be its only one to the core while it lives.
    // A `&mut` from `&self`, as `UnsafeCell` allows, under the contract above.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub(crate) unsafe fn core(&self) -> &mut TaskCore<F> {
        // SAFETY: exclusive, as the caller guarantees.
        unsafe { &mut *self.core.get() }
    }

    /// The future, pinned where it lies; `None` once dropped.
    ///
    /// # Safety
    /// As for [`core`](Self::core): only the core's holder, and only
    /// while it holds `&mut` of the core.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn future(&self) -> Option<Pin<&mut F>> {
        // SAFETY: the caller has exclusive access (see above); the future
        // is never moved out of the cell (it is dropped in place by
        // `drop_future`), so pinning it here is sound.
        unsafe { (*self.future.get()).as_mut().map(|f| Pin::new_unchecked(f)) }
    }

    /// Where the future lies (for a prefetch: not to be dereferenced).
    #[inline(always)]
    fn future_addr(&self) -> *const u8 {
        self.future.get().cast_const().cast()
    }

    /// Drops the future in place.
    ///
    /// # Safety
    /// As for [`future`](Self::future).
    unsafe fn drop_future(&self) {
        // SAFETY: exclusive access, as the caller guarantees; assigning
        // drops the old value in place, without moving it.
        unsafe { *self.future.get() = None };
    }
}

impl<F: Future> Drop for TaskCell<F> {
    fn drop(&mut self) {
        // A ticker may be reading the task it saw in a thread slot.
        crate::context::before_free(&self.shared);
    }
}

/// A hold of a task's cell, as an `Arc` would be, but with the cell's
/// memory recycled (see `task_memory`), and no atomic write to let go of a
/// cell that was never shared (most are not: only isolation shares one).
pub(crate) struct CellRef<F: Future> {
    cell: NonNull<TaskCell<F>>,
}

impl<F: Future> CellRef<F> {
    /// A task from `shared`, managed by `engine`, that can reach
    /// `max_tier` at most, moved to the pool by `isolator` (if it can move)
    /// and starting at `start` (the tier its origin earned).
    ///
    /// Built in place in its allocation: a cell is hundreds of bytes, and
    /// building it on the stack first would copy them all once more.
    pub(crate) fn new(
        shared: TaskShared,
        engine: Arc<Engine>,
        future: F,
        isolator: Option<Isolator<F>>,
        start: Tier,
    ) -> Self {
        let max_tier = if isolator.is_some() {
            Tier::Isolate
        } else {
            Tier::Yield
        };
        let mut core = TaskCore::new(&engine, max_tier, start, isolator);
        shared.set_tier(core.escalation.tier());
        let cell = task_memory::allocate(Layout::new::<TaskCell<F>>()).cast::<TaskCell<F>>();
        core.cell = cell;
        let raw = cell.as_ptr();
        // SAFETY: `raw` is fresh memory for a `TaskCell<F>` (size and
        // alignment from its layout), held by nothing else; each field is
        // written once, through raw pointers (no reference to the
        // uninitialised value is made), before the cell is handed out.
        unsafe {
            addr_of_mut!((*raw).holds).write(AtomicUsize::new(1));
            addr_of_mut!((*raw).core).write(UnsafeCell::new(core));
            addr_of_mut!((*raw).future).write(UnsafeCell::new(Some(future)));
            addr_of_mut!((*raw).shared).write(shared);
            addr_of_mut!((*raw).engine).write(engine);
        }
        CellRef { cell }
    }

    /// Another hold of the same cell.
    fn share(&self) -> Self {
        // Relaxed, as in `Arc::clone`: a new hold is made from an existing
        // one, which keeps the cell alive meanwhile.
        self.holds.fetch_add(1, Ordering::Relaxed);
        CellRef { cell: self.cell }
    }
}

impl<F: Future> Deref for CellRef<F> {
    type Target = TaskCell<F>;

    #[inline(always)]
    fn deref(&self) -> &TaskCell<F> {
        // SAFETY: a hold keeps the cell alive (see `Drop`).
        unsafe { self.cell.as_ref() }
    }
}

impl<F: Future> Drop for CellRef<F> {
    fn drop(&mut self) {
        // The only hold: no other can be made (only a hold makes one), so
        // no atomic write is needed. Acquire pairs with the release below,
        // made by a hold let go of on another thread.
        if self.holds.load(Ordering::Acquire) != 1
            && self.holds.fetch_sub(1, Ordering::Release) != 1
        {
            return;
        }
        fence(Ordering::Acquire);
        let raw = self.cell.as_ptr();
        // SAFETY: this was the last hold: nothing else refers to the cell,
        // which was made by `TaskCell::new` with this layout; it is dropped
        // once, then its memory released, and never used again.
        unsafe {
            std::ptr::drop_in_place(raw);
            task_memory::release(self.cell.cast(), Layout::new::<TaskCell<F>>());
        }
    }
}

// SAFETY: as for `Arc<TaskCell<F>>`: the cell is `Send + Sync` where `F`
// is `Send` (see `TaskCell`), and a hold only shares it.
unsafe impl<F: Future + Send> Send for CellRef<F> {}
// SAFETY: as above.
unsafe impl<F: Future + Send> Sync for CellRef<F> {}

impl<F: Future> fmt::Debug for TaskCell<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskCell")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// Moves a task's core to the isolation pool, or hands it back if there is
/// no pool. A function pointer, instantiated where the future is known to
/// be `Send`: the core of a future that is not holds none, and never moves.
pub(crate) type Isolator<F> = fn(PoolCore<F>) -> Result<Arc<Handoff<PoolCore<F>>>, PoolCore<F>>;

/// The isolator for futures that can move between threads.
pub(crate) fn isolator<F>() -> Isolator<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    isolate::<F>
}

// The error hands the core back by value on a path taken at most once per
// task (the pool failed to start); boxing it would cost more than it saves.
#[allow(clippy::result_large_err)]
fn isolate<F>(core: PoolCore<F>) -> Result<Arc<Handoff<PoolCore<F>>>, PoolCore<F>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let engine = Arc::clone(&core.0.engine);
    match engine.isolation_pool() {
        Some(pool) => Ok(isolation::isolate(pool, core, engine.stats.isolated())),
        None => Err(core),
    }
}

/// The right to use a task's core and future, carried to the isolation
/// pool (and back), with a hold of the cell.
pub(crate) struct PoolCore<F: Future>(CellRef<F>);

impl<F: Future> PoolCore<F> {
    /// Takes the right to use `cell`'s core from its wrapper, which must
    /// not use the core again until this comes back (see `Managed`).
    fn new(cell: CellRef<F>) -> Self {
        PoolCore(cell)
    }

    fn core(&mut self) -> &mut TaskCore<F> {
        // SAFETY: this carries the right to use the core (see `new`), and
        // `&mut self` makes this its only use.
        unsafe { self.0.core() }
    }
}

/// The task's escalation state, with what a poll shorter than a tick
/// reads and writes first: the engine's address, the poll count (published
/// to the shared state at most once a tick), the window's deadline, the
/// tick and generation last seen, the tier. `repr(C)` keeps those in the
/// cell's first cache line (see `TaskCell`), the rest after.
#[repr(C)]
pub(crate) struct TaskCore<F: Future> {
    /// `cell.engine`, without the trip through the cell.
    engine: NonNull<Engine>,
    /// Polls so far; the shared state has the count as of `published_tick`.
    polls: u64,
    /// When the current window ends. Until then a poll too short to be
    /// charged changes nothing, so it needs no policy.
    window_deadline_ns: u64,
    /// The tick (its count's low bits) at which the poll count was last
    /// published, and the watchdog's requests last checked.
    published_tick: u32,
    /// The configuration generation (its low bits) the task last applied.
    generation: u32,
    /// The task has waited in the slow lane, so it may be offered a slot.
    lane_user: bool,
    /// The task gave way before its last slow-lane poll: let it run now.
    deferred: bool,
    /// The highest tier this task can be in: `Yield` if it cannot move.
    max_tier: Tier,
    /// The tier machine; its first field is the tier.
    escalation: Escalation,
    /// The cell this core lies in.
    cell: NonNull<TaskCell<F>>,
    /// Deficit round robin credit in the slow lane, in nanoseconds.
    deficit_ns: i64,
    /// Moves the core to the isolation pool; `None` for futures that are
    /// not `Send`, which stay on their thread (capped at `Tier::Yield`),
    /// and once the pool failed to start.
    isolator: Option<Isolator<F>>,
}

impl<F: Future> TaskCore<F> {
    /// The core of a task under `engine` that can reach `max_tier` at
    /// most and starts at `start` (the tier its origin earned), capped at
    /// that; its `cell` is set once the cell exists.
    fn new(engine: &Engine, max_tier: Tier, start: Tier, isolator: Option<Isolator<F>>) -> Self {
        let terms = engine.spawn_terms(max_tier);
        let start = start.min(terms.max_tier);
        // The latest tick's time: no clock read for a spawn.
        let now = engine.ticker.latest_ns();
        // A tick the first poll cannot be at, so that it takes the
        // bookkeeping path, where a task registers (see `after_tick`).
        let never = (engine.ticker.read().count() as u32).wrapping_sub(1);
        TaskCore {
            engine: NonNull::from(engine),
            polls: 0,
            published_tick: never,
            window_deadline_ns: now.saturating_add(terms.window_ns),
            escalation: Escalation::starting_at(start, now),
            deficit_ns: 0,
            generation: terms.generation as u32,
            max_tier,
            deferred: false,
            lane_user: false,
            cell: NonNull::dangling(),
            isolator,
        }
    }

    /// The cell this core lies in.
    #[inline(always)]
    fn cell(&self) -> &TaskCell<F> {
        // SAFETY: set by `TaskCell::new` to the cell the core lies in,
        // which outlives any borrow of the core; the reference reaches the
        // core itself only through its `UnsafeCell`, which it never uses.
        unsafe { self.cell.as_ref() }
    }

    /// The cell, for a caller that goes on to change the core.
    ///
    /// # Safety
    /// The caller must not use the reference past its hold of the core.
    #[inline(always)]
    unsafe fn cell_apart<'a>(&self) -> &'a TaskCell<F> {
        // SAFETY: as in `cell`; the caller bounds the lifetime.
        unsafe { &*self.cell.as_ptr() }
    }

    /// The engine, reached without the trip through the cell.
    #[inline(always)]
    fn engine_apart<'a>(&self) -> &'a Engine {
        // SAFETY: `engine` points to the cell's engine, which the cell
        // keeps alive; the core is used only while its cell is held, and
        // the cell outlives every use of the core.
        unsafe { &*self.engine.as_ptr() }
    }

    /// Whether the core can still move to the isolation pool.
    pub(crate) fn can_move(&self) -> bool {
        self.isolator.is_some()
    }

    /// Moves the core of `cell` (the wrapper's hold of it) to the
    /// isolation pool. `None` if it cannot move, or the pool could not
    /// start: the core then stays with the wrapper, for good.
    ///
    /// # Safety
    /// The caller (the wrapper) must hold the right to use the core, and
    /// hands it over: on `Some`, it must not touch the core or the future
    /// until the returned handoff gives it back.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn isolate(cell: &CellRef<F>) -> Option<Arc<Handoff<PoolCore<F>>>> {
        let isolate = {
            // SAFETY: the caller holds the right to use the core; this
            // use of it ends before the right is handed over.
            let core = unsafe { cell.core() };
            let isolate = core.isolator?;
            core.pass_lane_offer();
            isolate
        };
        match isolate(PoolCore::new(cell.share())) {
            Ok(handoff) => Some(handoff),
            Err(mut back) => {
                // Never submitted: the right is back with the caller.
                back.core().isolator = None;
                None
            }
        }
    }

    /// The future completed: drops it in place now, as Tokio drops a
    /// task's future as soon as it completes.
    pub(crate) fn completed(&mut self) {
        // SAFETY: `&mut self` is the holder's use of the core, which
        // carries the right to use the future.
        unsafe { self.cell().drop_future() };
    }

    /// The task ended while its core was here: publishes the final poll
    /// count, which `task_ended` adds to the totals.
    pub(crate) fn finish(&self) {
        self.cell().shared.set_polls(self.polls);
    }

    /// Publishes the poll count to the cell, for snapshots and totals, and
    /// takes any request the watchdog made (at most once a tick, and after
    /// every measured poll; the watchdog only asks about a poll that ran
    /// long, so one that gets measured).
    #[cold]
    #[inline(never)]
    pub(crate) fn publish(&mut self, tick: u64) {
        self.published_tick = tick as u32;
        self.cell().shared.set_polls(self.polls);
        if let Some(forced) = self.cell().shared.take_forced_tier() {
            self.forced(forced);
        }
    }

    /// The policy of the configuration in force, for this task.
    fn policy(&self) -> EscalationPolicy {
        self.cell().engine.policy(self.max_tier).0
    }

    /// The task's tier, after applying a reconfiguration.
    ///
    /// Also asks the CPU to start fetching the future, which lies in the
    /// task's cell, away from Tokio's task: the fetch overlaps the checks
    /// and stores that come before the future is polled, instead of
    /// stalling the poll (a measured 15 % of the wrapper's cost).
    #[inline]
    pub(crate) fn tier(&mut self) -> Tier {
        prefetch(self.cell().future_addr());
        if self.engine_apart().generation(Ordering::Relaxed) as u32 != self.generation {
            self.reload_policy();
        }
        self.escalation.tier()
    }

    /// Switches to the configuration `Pulse::reconfigure` published: all
    /// of it at once, from one snapshot.
    #[cold]
    fn reload_policy(&mut self) {
        let (policy, generation) = self.cell().engine.policy(self.max_tier);
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
        let engine = &self.cell().engine;
        engine.task_offended(
            &self.cell().shared,
            self.escalation.tier(),
            clock().now_ns(),
        );
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
        if let Some(entry) = self.cell().shared.lane_if_used() {
            if entry.take_offer() {
                self.cell().engine.lane.offer_next();
            }
        }
    }

    fn poll_in_slow_lane(&mut self, cx: &mut Context<'_>, tier: Tier) -> Poll<F::Output> {
        self.lane_user = true;
        // SAFETY: used only within this poll, while the core is held.
        let cell = unsafe { self.cell_apart() };
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
        // SAFETY: used only within this poll, while the core is held;
        // taken apart from `self` so that it stays free for the
        // bookkeeping after the poll.
        let (engine, cell) = (self.engine_apart(), unsafe { self.cell_apart() });
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
        let (engine, cell) = (self.engine_apart(), unsafe { self.cell_apart() });
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
        if !ready && !self.cell().shared.is_registered() {
            self.register();
        }
        if start_ns != 0 || end.count() != start.count() {
            return self.measured(start, end, start_ns, published, ready, hooks);
        }
        // Shorter than a tick: nothing to measure. Only a window that has
        // run its course closes, at the time of the latest tick.
        let now = self.engine_apart().ticker.latest_ns();
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
        let engine = &*self.cell().engine;
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
        let task = &self.cell().shared;
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
        unsafe { self.cell().engine.register(&self.cell().shared) };
    }

    /// Calls the `after_poll` hook.
    fn report_poll(&self, poll_ns: u64, measured: bool, slow: bool, ready: bool) {
        let info = TaskInfo {
            shared: &self.cell().shared,
        };
        let report = PollReport {
            duration: nanos(poll_ns),
            measured,
            slow,
            ready,
        };
        self.cell()
            .engine
            .hooks
            .call(Hook::AfterPoll, |h| h.after_poll(&info, &report));
    }

    fn tier_changed(&self, change: TierChange, cause: ChangeCause, now_ns: u64) {
        self.cell()
            .engine
            .tier_changed(Scope::Managed, &self.cell().shared, change, cause, now_ns);
    }

    /// A poll closed a window that changed the tier or was bad.
    #[cold]
    #[inline(never)]
    fn judged(&self, step: Step, cause: ChangeCause, now_ns: u64) {
        if let Some(change) = step.change() {
            self.tier_changed(change, cause, now_ns);
        }
        if step.bad() {
            self.cell()
                .engine
                .task_offended(&self.cell().shared, self.escalation.tier(), now_ns);
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

// SAFETY: `engine` and `cell` point into the cell the core lies in, which
// is `Sync` (and its engine too); everything else in the core is `Send`
// where `F` is.
unsafe impl<F: Future + Send> Send for TaskCore<F> {}

// SAFETY: carries an `Arc` of a cell that is `Send + Sync` where `F` is
// `Send` (the core's right of use moves with it; see `TaskCell`).
unsafe impl<F: Future + Send> Send for PoolCore<F> {}

impl<F: Future> Isolated for PoolCore<F> {
    type Output = F::Output;

    /// Polls on an isolation pool thread: measured as on the workers, with
    /// no further intervention there.
    fn poll_isolated(&mut self, cx: &mut Context<'_>) -> PoolPoll<F::Output> {
        let core = self.core();
        if core.tier() < Tier::Isolate {
            return PoolPoll::Demoted;
        }
        let polled = core.poll_measured(cx, Tier::Isolate);
        // Isolated polls are few and long: keep the count exact.
        core.finish();
        match polled {
            Poll::Ready(out) => PoolPoll::Ready(out),
            // Demoted by this very poll: go home now rather than at the
            // next wake-up.
            Poll::Pending if core.tier() < Tier::Isolate => PoolPoll::Demoted,
            Poll::Pending => PoolPoll::Pending,
        }
    }

    fn drop_future(&mut self) {
        // SAFETY: this carries the right to use the future, and `&mut self`
        // is held.
        unsafe { self.0.drop_future() };
    }
}
