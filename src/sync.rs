//! The synchronisation primitives of the lock-free parts (the slow lane and
//! the per-task state), swapped for `loom`'s model-checked versions when
//! built with `RUSTFLAGS="--cfg pulse_loom"`. Under that cfg only the loom
//! models run: `cargo test --lib --release loom` (see the README).

#[cfg(not(pulse_loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, fence,
};

#[cfg(pulse_loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, fence,
};

use std::task::Waker;

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
