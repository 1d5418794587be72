//! Thin, public wrappers around crate-private hot-path operations, so the
//! criterion benches in `benches/` can time each one on its own.
//!
//! Compiled only with `RUSTFLAGS="--cfg pulse_bench"` and hidden from the docs:
//! nothing here is API. Every wrapper is `#[inline]` so that a bench times the
//! operation as it is compiled into the poll path, not a call into this module.

use std::panic::Location;
use std::sync::Arc;

use crate::budget::{BudgetLimits, WindowBudget, WindowVerdict};
use crate::config::Config;
use crate::hooks::{HookSlot, PreemptionHooks};
use crate::snapshot::TaskSnapshot;
use crate::task::TaskShared;
use crate::tier::{Escalation, EscalationPolicy, Tier};
use crate::timing::clock;

/// Wall-clock nanoseconds from the engine's clock (TSC through quanta), as
/// read twice per managed poll.
#[inline]
pub fn wall_clock_ns() -> u64 {
    clock().now_ns()
}

/// The calling thread's scheduler figures (CPU time and run delay), as a
/// long poll reads them when it ends (Linux; `None` elsewhere).
pub struct SchedStatReader(Option<crate::timing::schedstat::SchedStatFile>);

impl SchedStatReader {
    /// Opens the calling thread's figures.
    pub fn current_thread() -> Self {
        SchedStatReader(crate::timing::schedstat::SchedStatFile::current_thread())
    }

    /// Reads them: (CPU time, run delay) in nanoseconds.
    #[inline]
    pub fn read(&self) -> Option<(u64, u64)> {
        let s = self.0.as_ref()?.read()?;
        Some((s.cpu_ns, s.delay_ns))
    }
}

/// The hooks slot of a `Pulse`, empty or holding hooks that do nothing.
pub struct Hooks(HookSlot);

struct NoHooks;
impl PreemptionHooks for NoHooks {}

impl Hooks {
    /// A slot with hooks installed when `installed` is true.
    pub fn new(installed: bool) -> Self {
        let slot = HookSlot::new();
        if installed {
            slot.set(Arc::new(NoHooks));
        }
        Hooks(slot)
    }

    /// The presence check made on every poll.
    #[inline]
    pub fn is_installed(&self) -> bool {
        self.0.is_installed()
    }
}

/// The default configuration's per-task policy, as a `Pulse::spawn`ed task gets it.
fn default_policy() -> EscalationPolicy {
    Config::default().escalation_policy(Tier::Isolate)
}

/// One task's window accounting, judged against the default limits.
pub struct Budget {
    limits: BudgetLimits,
    window: WindowBudget,
}

impl Budget {
    /// A window opening at `now_ns`.
    pub fn new(now_ns: u64) -> Self {
        Budget {
            limits: default_policy().limits,
            window: WindowBudget::new(now_ns),
        }
    }

    /// Charges one poll; true when it made the window bad.
    #[inline]
    pub fn charge(&mut self, start_ns: u64, end_ns: u64) -> bool {
        self.window.charge(&self.limits, start_ns, end_ns) == WindowVerdict::Bad
    }
}

/// One task's tier state machine, with the default policy.
pub struct TierMachine {
    policy: EscalationPolicy,
    escalation: Escalation,
}

impl TierMachine {
    /// A task at `Monitor`, its first window opening at `now_ns`.
    pub fn new(now_ns: u64) -> Self {
        TierMachine {
            policy: default_policy(),
            escalation: Escalation::starting_at(Tier::Monitor, now_ns),
        }
    }

    /// The tier the poll path branches on before polling.
    #[inline]
    pub fn tier(&self) -> Tier {
        self.escalation.tier()
    }

    /// Feeds one poll to the state machine; true when it closed a window
    /// that changed the tier or was bad.
    #[inline]
    pub fn on_poll(&mut self, start_ns: u64, end_ns: u64) -> bool {
        self.escalation
            .on_poll(&self.policy, start_ns, end_ns)
            .is_some()
    }
}

/// One task's shared state, as the wrapper and the registry hold it.
pub struct TaskState(Arc<TaskShared>);

impl TaskState {
    /// A fresh, unnamed task.
    #[track_caller]
    pub fn new() -> Self {
        TaskState(Arc::new(TaskShared::new(None, Location::caller())))
    }

    /// The per-poll counter update made after every poll.
    #[inline]
    pub fn record_poll(&self, poll_ns: u64, slow: bool) {
        self.0.count_poll();
        self.0.record_measured(poll_ns, poll_ns, slow);
    }

    /// The task's tier as other threads read it.
    #[inline]
    pub fn tier(&self) -> Tier {
        self.0.tier()
    }

    /// A copy of the task's counters, as `Pulse::totals` reads them.
    #[inline]
    pub fn counters(&self) -> impl Copy + std::fmt::Debug {
        self.0.counters()
    }

    /// The task's entry in a `Snapshot`.
    #[inline]
    pub fn snapshot(&self) -> TaskSnapshot {
        TaskSnapshot::of(&self.0)
    }
}

impl Default for TaskState {
    #[track_caller]
    fn default() -> Self {
        TaskState::new()
    }
}
