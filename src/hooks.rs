//! User callbacks on the poll path, installable at any time.
//!
//! The presence check is one atomic load of a flag, so a runtime with no
//! hooks pays about a nanosecond per poll for the feature.
//!
//! The hooks themselves sit behind [`arc_swap`], which frees a replaced hook
//! object only once nothing uses it: a bare `AtomicPtr`
//! swap either leaked the old hooks or freed them under a concurrent reader.
//! An `arc_swap` load costs two atomic read-modify-writes, though, and a
//! hooked poll calls hooks twice; so each thread keeps the
//! hooks it last used in a thread-local cache, tagged with the slot's
//! generation, and a hooked poll costs one atomic load and a compare unless
//! the hooks have changed. The price: a thread lets go of replaced hooks at
//! its next hooked poll (or when it exits), not at once.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use crossbeam_utils::CachePadded;

use crate::fault::{catch, drop_quietly, panic_message};
use crate::sync::lock;

use crate::task::TaskInfo;
use crate::tier::Tier;

/// Callbacks tokio-pulse makes as it manages tasks. Every method has a
/// no-op default; implement the ones you need.
///
/// Hooks run inline on the thread polling the task (before/after poll) or
/// changing its tier, so they must be quick and must not block.
///
/// A hook that panics cannot change what happens to the task: the panic is
/// caught, reported once as a `tracing` error, and the whole set of hooks
/// is uninstalled (a hook that panicked once would likely panic at every
/// poll); the task's output or panic reaches its `JoinHandle` as usual.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tokio_pulse::{PollReport, PreemptionHooks, Pulse, TaskInfo};
///
/// #[derive(Default)]
/// struct CountSlowPolls(AtomicU64);
///
/// impl PreemptionHooks for CountSlowPolls {
///     fn after_poll(&self, _task: &TaskInfo<'_>, poll: &PollReport) {
///         if poll.slow {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
///
/// let pulse = Pulse::builder().build().unwrap();
/// pulse.set_hooks(Arc::new(CountSlowPolls::default()));
/// ```
pub trait PreemptionHooks: Send + Sync + 'static {
    /// Before each poll of a managed task.
    fn before_poll(&self, task: &TaskInfo<'_>) {
        let _ = task;
    }

    /// After each poll, with what was measured.
    fn after_poll(&self, task: &TaskInfo<'_>, poll: &PollReport) {
        let _ = (task, poll);
    }

    /// When a task moves between tiers.
    fn on_tier_change(&self, task: &TaskInfo<'_>, from: Tier, to: Tier) {
        let _ = (task, from, to);
    }

    /// When a task ends: completed, panicked, or cancelled.
    fn on_task_end(&self, task: &TaskInfo<'_>) {
        let _ = task;
    }
}

/// What was measured of one poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PollReport {
    /// Wall time the poll held its thread, at least: exact with
    /// [`Timing::Exact`](crate::Timing::Exact); with sampled timing the
    /// poll's length to within one tick when it outlasted a tick, and zero
    /// when it did not (see [`measured`](PollReport::measured)).
    pub duration: Duration,
    /// Whether the poll was measured: always with exact timing; with
    /// sampled timing only when it outlasted a tick of the ticker (a
    /// shorter poll reads no clock).
    pub measured: bool,
    /// Whether it exceeded the slow-poll threshold.
    pub slow: bool,
    /// Whether the future completed in this poll.
    pub ready: bool,
}

/// Wrapper so a trait object can live in an `ArcSwapOption` (which needs a
/// sized type).
struct Installed(Arc<dyn PreemptionHooks>);

/// The hooks slot of one `Pulse`.
///
/// Every poll reads `installed` (and, with hooks, `generation`), and they
/// change almost never; on cache lines of their own, so that the `Pulse`'s
/// reference count and counters, written at every spawn and task end, do
/// not share them and force every worker to fetch them again.
pub(crate) struct HookSlot(CachePadded<SlotInner>);

struct SlotInner {
    installed: AtomicBool,
    /// Names the slot's current contents. Every change takes a fresh number
    /// from [`next_generation`], so a number is never reused, by this slot
    /// or any other: a thread's cache cannot mistake one slot's hooks for
    /// another's.
    generation: AtomicU64,
    hooks: ArcSwapOption<Installed>,
    /// Serialises changes, so the generation last stored always names the
    /// hooks last stored.
    writer: Mutex<()>,
}

fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The hooks this thread last used, and the generation they were loaded at.
struct Cached {
    generation: u64,
    hooks: Option<Arc<Installed>>,
}

thread_local! {
    static CACHED: RefCell<Cached> = const {
        RefCell::new(Cached {
            generation: 0,
            hooks: None,
        })
    };
}

/// Which hook is being called, for the report if it panics.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Hook {
    BeforePoll,
    AfterPoll,
    TierChange,
    TaskEnd,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::BeforePoll => "before_poll",
            Hook::AfterPoll => "after_poll",
            Hook::TierChange => "on_tier_change",
            Hook::TaskEnd => "on_task_end",
        }
    }
}

impl HookSlot {
    pub(crate) fn new() -> Self {
        HookSlot(CachePadded::new(SlotInner {
            installed: AtomicBool::new(false),
            generation: AtomicU64::new(next_generation()),
            hooks: ArcSwapOption::empty(),
            writer: Mutex::new(()),
        }))
    }

    pub(crate) fn set(&self, hooks: Arc<dyn PreemptionHooks>) {
        let s = &self.0;
        let _writer = lock(&s.writer);
        s.hooks.store(Some(Arc::new(Installed(hooks))));
        // Release: a thread that sees the new generation sees the new hooks.
        s.generation.store(next_generation(), Ordering::Release);
        s.installed.store(true, Ordering::Release);
    }

    pub(crate) fn clear(&self) {
        let _writer = lock(&self.0.writer);
        self.clear_locked();
    }

    fn clear_locked(&self) {
        let s = &self.0;
        s.installed.store(false, Ordering::Release);
        s.hooks.store(None);
        s.generation.store(next_generation(), Ordering::Release);
    }

    /// The fast check: are any hooks installed?
    #[inline(always)]
    pub(crate) fn is_installed(&self) -> bool {
        self.0.installed.load(Ordering::Acquire)
    }

    /// Runs `f` with the installed hooks, if any. Call after `is_installed`.
    ///
    /// A panic in the hook is caught here: it is reported once and the
    /// hooks are uninstalled (see [`uninstall_after_panic`](Self::uninstall_after_panic)),
    /// and the caller carries on as if the hook had returned.
    #[inline]
    pub(crate) fn call(&self, hook: Hook, f: impl FnOnce(&dyn PreemptionHooks)) {
        let generation = self.0.generation.load(Ordering::Acquire);
        let mut f = Some(f);
        let mut panicked = None;
        // The shared borrow stays valid while the hooks run, also if they
        // poll a managed future themselves (a nested shared borrow).
        let hit = CACHED.try_with(|cell| match cell.try_borrow() {
            Ok(cached) if cached.generation == generation => {
                if let (Some(installed), Some(f)) = (&cached.hooks, f.take()) {
                    panicked = catch(|| f(&*installed.0)).err();
                }
                true
            }
            _ => false,
        });
        if hit != Ok(true) {
            if let Some(f) = f {
                panicked = self.call_reloaded(generation, f);
            }
        }
        if let Some(payload) = panicked {
            self.uninstall_after_panic(generation, hook, payload);
        }
    }

    /// Loads the hooks from the slot, runs `f` with them, and caches them
    /// for this thread's next call. Returns the hook's panic, if any.
    #[cold]
    #[inline(never)]
    fn call_reloaded(
        &self,
        generation: u64,
        f: impl FnOnce(&dyn PreemptionHooks),
    ) -> Option<Box<dyn Any + Send>> {
        let hooks = self.0.hooks.load_full();
        let replaced = CACHED.try_with(|cell| {
            // Busy only when called from inside a hook running off the
            // cache; that call just goes uncached.
            let mut cached = cell.try_borrow_mut().ok()?;
            let fresh = Cached {
                generation,
                hooks: hooks.clone(),
            };
            Some(std::mem::replace(&mut *cached, fresh))
        });
        // Dropped outside the borrow: a hook's `Drop` may poll managed futures.
        drop(replaced);
        let installed = hooks?;
        catch(|| f(&*installed.0)).err()
    }

    /// A hook panicked: hooks that panic would panic again on the next
    /// poll, so the set that panicked (generation `generation`) is
    /// uninstalled, unless it was replaced meanwhile, and the panic is
    /// reported once, by the thread that uninstalled it.
    #[cold]
    #[inline(never)]
    fn uninstall_after_panic(&self, generation: u64, hook: Hook, payload: Box<dyn Any + Send>) {
        let message = panic_message(&*payload).to_owned();
        let _ = drop_quietly(payload);
        let _writer = lock(&self.0.writer);
        if self.0.generation.load(Ordering::Acquire) != generation {
            return;
        }
        self.clear_locked();
        tracing::error!(
            hook = hook.name(),
            panic = %message,
            "tokio-pulse: a PreemptionHooks::{} call panicked; the hooks are uninstalled and the task carries on unaffected",
            hook.name(),
        );
    }
}

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookSlot")
            .field("installed", &self.is_installed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts `before_poll` calls; on them, optionally calls another slot's
    /// hooks from inside, as a hook that polls a managed future would.
    #[derive(Default)]
    struct Count {
        calls: AtomicUsize,
        nested: Option<Arc<HookSlot>>,
    }

    impl PreemptionHooks for Count {
        fn before_poll(&self, task: &TaskInfo<'_>) {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if let Some(inner) = &self.nested {
                inner.call(Hook::BeforePoll, |h| h.before_poll(task));
            }
        }
    }

    fn call(slot: &HookSlot) {
        let task = crate::task::TaskShared::new(None, std::panic::Location::caller());
        slot.call(Hook::BeforePoll, |h| {
            h.before_poll(&TaskInfo { shared: &task })
        });
    }

    fn calls(c: &Count) -> usize {
        c.calls.load(Ordering::Relaxed)
    }

    #[test]
    fn two_slots_on_one_thread_each_call_their_own_hooks() {
        let (a, b) = (HookSlot::new(), HookSlot::new());
        let (ha, hb) = (Arc::new(Count::default()), Arc::new(Count::default()));
        a.set(ha.clone());
        b.set(hb.clone());
        for _ in 0..3 {
            call(&a);
            call(&b);
        }
        assert_eq!((calls(&ha), calls(&hb)), (3, 3));
    }

    #[test]
    fn replaced_hooks_are_called_no_more_and_released_at_the_next_call() {
        let slot = HookSlot::new();
        let (old, new) = (Arc::new(Count::default()), Arc::new(Count::default()));
        slot.set(old.clone());
        call(&slot);
        slot.set(new.clone());
        call(&slot);
        assert_eq!((calls(&old), calls(&new)), (1, 1));
        assert_eq!(Arc::strong_count(&old), 1, "old hooks still cached");
        slot.clear();
        call(&slot);
        assert_eq!(calls(&new), 1, "cleared hooks called");
        assert_eq!(Arc::strong_count(&new), 1, "cleared hooks still cached");
    }

    struct Panics;
    impl PreemptionHooks for Panics {
        fn before_poll(&self, _task: &TaskInfo<'_>) {
            panic!("hook bug");
        }
    }

    #[test]
    fn a_panicking_hook_set_is_uninstalled_and_the_caller_carries_on() {
        let slot = HookSlot::new();
        slot.set(Arc::new(Panics));
        call(&slot);
        assert!(!slot.is_installed(), "panicking hooks still installed");
        // Hooks installed after the panic are not uninstalled by it.
        let fresh = Arc::new(Count::default());
        slot.set(fresh.clone());
        call(&slot);
        assert_eq!(calls(&fresh), 1);
        assert!(slot.is_installed());
    }

    #[test]
    fn a_hook_may_call_another_slots_hooks_from_inside() {
        let inner = Arc::new(HookSlot::new());
        let hi = Arc::new(Count::default());
        inner.set(hi.clone());
        let outer = HookSlot::new();
        let ho = Arc::new(Count {
            calls: AtomicUsize::new(0),
            nested: Some(inner.clone()),
        });
        outer.set(ho.clone());
        for _ in 0..3 {
            call(&outer);
        }
        assert_eq!((calls(&ho), calls(&hi)), (3, 3));
    }
}
