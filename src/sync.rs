//! Synchronisation primitives.
//!
//! The atomics and queues of the lock-free parts (the slow lane and the
//! per-task state) are swapped for `loom`'s model-checked versions when
//! built with `RUSTFLAGS="--cfg pulse_loom"`. Under that cfg only the loom
//! models run: `cargo test --lib --release loom` (see the README).
//!
//! [`lock`] and [`wait`] are the one place that takes the crate's `std` mutexes.

#[cfg(not(pulse_loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, fence,
};

#[cfg(pulse_loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicI64, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, fence,
};

use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::Waker;

/// Locks `mutex`, ignoring poisoning.
///
/// Every mutex in this crate guards data that a panic cannot leave half
/// updated: the critical sections only insert into or remove from a
/// collection, swap a value in or out, or read. A panic inside one can only
/// come from the allocator or from user code run after the data is
/// consistent again (a future's destructor, a hook), so the data is as
/// valid after a poisoning as before it, and refusing it would turn one
/// panic into a cascade across every thread that touches the lock.
#[inline]
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `condvar` with `guard`'s mutex, ignoring poisoning as [`lock`] does.
pub(crate) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar
        .wait(guard)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One registered waker, woken at most once per registration.
#[derive(Debug, Default)]
pub(crate) struct WakerSlot {
    #[cfg(not(pulse_loom))]
    inner: atomic_waker::AtomicWaker,
    #[cfg(pulse_loom)]
    inner: loom::future::AtomicWaker,
}

impl WakerSlot {
    pub(crate) fn register(&self, waker: &Waker) {
        #[cfg(not(pulse_loom))]
        self.inner.register(waker);
        #[cfg(pulse_loom)]
        self.inner.register_by_ref(waker);
    }

    pub(crate) fn wake(&self) {
        self.inner.wake();
    }
}

/// A bounded multi-producer multi-consumer FIFO queue, allocated once.
#[derive(Debug)]
pub(crate) struct BoundedQueue<T> {
    #[cfg(not(pulse_loom))]
    inner: crossbeam_queue::ArrayQueue<T>,
    #[cfg(pulse_loom)]
    inner: loom::sync::Mutex<std::collections::VecDeque<T>>,
    #[cfg(pulse_loom)]
    capacity: usize,
}

#[cfg(not(pulse_loom))]
impl<T> BoundedQueue<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        BoundedQueue {
            inner: crossbeam_queue::ArrayQueue::new(capacity),
        }
    }

    /// Appends `item`, or hands it back if the queue is full.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        self.inner.push(item)
    }

    pub(crate) fn pop(&self) -> Option<T> {
        self.inner.pop()
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}

#[cfg(pulse_loom)]
impl<T> BoundedQueue<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        BoundedQueue {
            inner: loom::sync::Mutex::new(std::collections::VecDeque::new()),
            capacity,
        }
    }

    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        let mut q = self.inner.lock().unwrap();
        if q.len() >= self.capacity {
            return Err(item);
        }
        q.push_back(item);
        Ok(())
    }

    pub(crate) fn pop(&self) -> Option<T> {
        self.inner.lock().unwrap().pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.lock().unwrap().len()
    }
}
