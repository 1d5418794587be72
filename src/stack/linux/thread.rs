//! What a capture needs to know about its target thread, recorded by that
//! thread itself: its kernel thread id, the bounds of its stack, and
//! whether it is still alive.

use std::cell::OnceCell;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::stack::StackError;

/// A thread that can be captured later, from any thread.
///
/// Created by [`ThreadHandle::current`] on the thread itself (a worker
/// registers once when it starts). Holding a handle does not keep the
/// thread alive: capturing a thread that has exited returns
/// [`CaptureError::ThreadExited`](crate::stack::CaptureError::ThreadExited).
#[derive(Debug, Clone)]
pub(crate) struct ThreadHandle {
    pub(super) record: Arc<ThreadRecord>,
}

/// Shared between the handle, the thread's own thread-local (which clears
/// `alive` when the thread exits) and, during a capture, the signal handler.
#[derive(Debug)]
pub(super) struct ThreadRecord {
    pub(super) tid: i32,
    /// Lowest address of the thread's stack.
    pub(super) stack_low: usize,
    /// One past the highest address of the thread's stack: the handler
    /// never copies at or beyond it.
    pub(super) stack_high: usize,
    /// Cleared by the thread's thread-local destructor, before the thread
    /// exits and before its kernel id can be given to another thread. The
    /// handler checks it, so a signal that reaches a new thread with a
    /// reused id copies nothing.
    pub(super) alive: AtomicBool,
}

/// Marks the record dead when the thread's thread-locals are destroyed.
struct Registration(Arc<ThreadRecord>);

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

thread_local! {
    static REGISTRATION: OnceCell<Registration> = const { OnceCell::new() };
}

impl ThreadHandle {
    /// A handle to the calling thread. The first call on a thread reads its
    /// stack bounds (`pthread_getattr_np`, which for the main thread parses
    /// `/proc/self/maps`); later calls on the same thread clone that record.
    pub(crate) fn current() -> Result<Self, StackError> {
        REGISTRATION
            .try_with(|cell| {
                if let Some(registration) = cell.get() {
                    return Ok(registration.0.clone());
                }
                let record = Arc::new(ThreadRecord::of_current_thread()?);
                let _ = cell.set(Registration(record.clone()));
                Ok(record)
            })
            .map_err(|_| StackError::ThreadExiting)?
            .map(|record| Self { record })
    }

    /// The thread's kernel id (as `gettid` returns it).
    #[cfg(test)]
    pub(crate) fn tid(&self) -> i32 {
        self.record.tid
    }

    /// Whether the thread was alive when this was called.
    #[cfg(test)]
    pub(crate) fn is_alive(&self) -> bool {
        self.record.alive.load(Ordering::Acquire)
    }
}

impl ThreadRecord {
    fn of_current_thread() -> Result<Self, StackError> {
        let (stack_low, stack_high) = current_stack_bounds()?;
        // A thread running on a stack its thread library does not know
        // about (a coroutine, a `stacker` segment) would be copied from the
        // wrong range; refuse it here rather than copy nothing later.
        let here = std::ptr::addr_of!(stack_low) as usize;
        if !(stack_low..stack_high).contains(&here) {
            return Err(StackError::ForeignStack);
        }
        Ok(Self {
            tid: gettid(),
            stack_low,
            stack_high,
            alive: AtomicBool::new(true),
        })
    }
}

/// The calling thread's kernel id. A raw syscall, so it is also usable in
/// the signal handler (and works on glibc older than 2.30, which has no
/// `gettid` wrapper).
pub(super) fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments, cannot fail and touches no memory.
    // The kernel's pid_t is an i32, so the narrowing is exact.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// `[low, high)` of the calling thread's stack.
fn current_stack_bounds() -> Result<(usize, usize), StackError> {
    let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread
    // when it returns 0; we only read it after that.
    let rc = unsafe { libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) };
    if rc != 0 {
        return Err(StackError::StackBounds(std::io::Error::from_raw_os_error(
            rc,
        )));
    }
    let mut addr = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: `attr` was initialised above; the out-pointers are valid
    // locals. The attribute object is destroyed exactly once, after use.
    let rc = unsafe {
        let rc = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        rc
    };
    if rc != 0 {
        return Err(StackError::StackBounds(std::io::Error::from_raw_os_error(
            rc,
        )));
    }
    let low = addr as usize;
    Ok((low, low.saturating_add(size)))
}
