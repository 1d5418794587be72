//! User callbacks on the poll path, installable at any time.
//!
//! The presence check is one atomic load of a flag, so a runtime with no
//! hooks pays about a nanosecond per poll for the feature. The hooks
//! themselves sit behind [`arc_swap`], which gives lock-free reads and frees
//! a replaced hook object only after the last poll using it has finished:
//! the design document's bare `AtomicPtr` swap either leaked the old hooks or
//! freed them under a concurrent reader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::task::TaskInfo;
use crate::tier::Tier;

/// Callbacks tokio-pulse makes as it manages tasks. Every method has a
/// no-op default; implement the ones you need.
///
/// Hooks run inline on the thread polling the task (before/after poll) or
/// changing its tier, so they must be quick and must not block.
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
    /// Wall time the poll held its thread.
    pub duration: Duration,
    /// Whether it exceeded the slow-poll threshold.
    pub slow: bool,
    /// Whether the future completed in this poll.
    pub ready: bool,
}

/// Wrapper so a trait object can live in an `ArcSwapOption` (which needs a
/// sized type).
struct Installed(Arc<dyn PreemptionHooks>);

/// The hooks slot of one `Pulse`.
pub(crate) struct HookSlot {
    installed: AtomicBool,
    hooks: ArcSwapOption<Installed>,
}

impl HookSlot {
    pub(crate) fn new() -> Self {
        HookSlot {
            installed: AtomicBool::new(false),
            hooks: ArcSwapOption::empty(),
        }
    }

    pub(crate) fn set(&self, hooks: Arc<dyn PreemptionHooks>) {
        self.hooks.store(Some(Arc::new(Installed(hooks))));
        self.installed.store(true, Ordering::Release);
    }

    pub(crate) fn clear(&self) {
        self.installed.store(false, Ordering::Release);
        self.hooks.store(None);
    }

    /// The fast check: are any hooks installed?
    #[inline(always)]
    pub(crate) fn is_installed(&self) -> bool {
        self.installed.load(Ordering::Acquire)
    }

    /// Runs `f` with the installed hooks, if any. Call after `is_installed`.
    #[inline]
    pub(crate) fn with(&self, f: impl FnOnce(&dyn PreemptionHooks)) {
        if let Some(installed) = &*self.hooks.load() {
            f(&*installed.0);
        }
    }
}

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookSlot")
            .field("installed", &self.is_installed())
            .finish()
    }
}
