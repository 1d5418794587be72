//! Where is a stuck thread stuck? Captures the stack of another thread of
//! this process while that thread keeps running.
//!
//! The watchdog sees that a poll has been running for 300 ms on some worker
//! thread, but not what it is doing: a hash over a huge buffer, a blocking
//! `std::fs::read`, a lock that never comes free. Rust has no API to walk
//! another thread's stack, and the obvious shortcut (unwind from inside a
//! signal handler on the stuck thread, as `backtrace::trace` would) can
//! deadlock: the unwinder takes the dynamic loader's lock
//! (`dl_iterate_phdr`), and the interrupted thread may be the one holding
//! it, e.g. in the middle of a panic's own unwinding. Sampling profilers
//! hit this in production (pprof-rs, gperftools, libunwind users).
//!
//! So a capture is split in two halves, and only the first runs in the
//! signal handler:
//!
//! 1. **On the stuck thread** (`linux::signal`): the watchdog sends it a
//!    real-time signal with `tgkill`. The handler checks that it runs on
//!    the thread that was asked for, copies the interrupted registers (pc,
//!    sp, frame pointer, and lr on aarch64) from the signal's `ucontext`
//!    and up to 64 KiB of stack above the interrupted stack pointer into a
//!    static buffer, and publishes "done" through an atomic and a futex
//!    wake. No lock, no allocation, no unwinding: all async-signal-safe.
//!    The thread then goes on with what it was doing.
//! 2. **On the capturing thread** (`linux::unwind`, `linux::symbolize`): the copy is
//!    unwound with `framehop` from the modules' `.eh_frame` (falling back to
//!    frame pointers where a module has none), then each address is
//!    resolved with the `backtrace` crate to a demangled name and
//!    `file:line`. Frames start at the interrupted instruction, so the
//!    handler and the kernel's signal trampoline never appear.
//!
//! The stuck thread is paused for the copy only (microseconds), not for the
//! unwinding; any lock it holds is released as soon as it would have been.
//!
//! On targets other than Linux on x86-64 or aarch64 the same API exists and
//! every call returns an "unsupported" error.
//!
//! The watchdog uses it through a [`StackCapturer`] per `Pulse`
//! (`capturer`): installed when the `Pulse` is built, as its
//! [`StackCapture`] setting says, and asked for one capture per stuck poll.
//! Threads register themselves ([`ThreadHandle::current`]) when their
//! thread slot is made (`context`), once per thread.

mod capturer;
mod error;
mod trace;

pub use capturer::StackCapture;
pub(crate) use capturer::{CaptureState, StackCapturer, signal_range};
pub(crate) use error::{CaptureError, StackError};
pub(crate) use trace::Stack;

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod linux;
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub(crate) use linux::{StackSampler, ThreadHandle};
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
use trace::{Frame, Symbol};

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod unsupported;
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub(crate) use unsupported::{StackSampler, ThreadHandle};
