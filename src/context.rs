//! The poll in progress on this thread.
//!
//! The wrapper publishes when its poll started and how long a slice the task
//! has; [`checkpoint`](crate::checkpoint) reads it to decide whether to give
//! way. A thread-local `Cell` of plain data: no pointer into the wrapper, so
//! nothing can dangle, and a const initialiser, so access is a TLS offset.

use std::cell::Cell;

thread_local! {
    static CURRENT: Cell<CurrentPoll> = const { Cell::new(CurrentPoll::NONE) };
}

/// The managed poll running on this thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CurrentPoll {
    /// Clock reading at poll start; 0 when no managed poll is running.
    pub start_ns: u64,
    /// How long the task may run in this poll before `checkpoint` yields.
    pub slice_ns: u64,
}

impl CurrentPoll {
    const NONE: CurrentPoll = CurrentPoll {
        start_ns: 0,
        slice_ns: 0,
    };
}

/// The managed poll running on this thread, if any.
#[inline]
pub(crate) fn current() -> Option<CurrentPoll> {
    let cur = CURRENT.with(Cell::get);
    (cur.start_ns != 0).then_some(cur)
}

/// Marks a managed poll as running until dropped; restores the enclosing
/// one (managed futures nest, e.g. a managed request inside a managed task),
/// also when the poll panics.
pub(crate) struct PollScope {
    outer: CurrentPoll,
}

impl PollScope {
    #[inline]
    pub(crate) fn enter(start_ns: u64, slice_ns: u64) -> PollScope {
        let outer = CURRENT.with(|c| c.replace(CurrentPoll { start_ns, slice_ns }));
        PollScope { outer }
    }
}

impl Drop for PollScope {
    #[inline]
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.outer));
    }
}
