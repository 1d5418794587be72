//! Thin, public wrappers around crate-private hot-path operations, so the
//! criterion benches in `benches/` can time each one on its own.
//!
//! Compiled only with `RUSTFLAGS="--cfg pulse_bench"` and hidden from the docs:
//! nothing here is API. Every wrapper is `#[inline]` so that a bench times the
//! operation as it is compiled into the poll path, not a call into this module.

use std::panic::Location;
use std::sync::Arc;

use crate::snapshot::TaskSnapshot;
use crate::task::TaskShared;
use crate::timing::clock;

/// Wall-clock nanoseconds from the engine's clock (TSC through quanta), as
/// read after a poll that spanned a tick (and by the ticker).
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

/// One task's shared state, as the wrapper and the registry hold it.
pub struct TaskState(Arc<TaskShared>);

impl TaskState {
    /// A fresh, unnamed task.
    #[track_caller]
    pub fn new() -> Self {
        TaskState(Arc::new(TaskShared::new(None, Location::caller())))
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
