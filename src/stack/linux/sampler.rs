//! The process-wide sampler: one handler installation per signal, one
//! capture at a time.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::ThreadHandle;
use super::signal::{self, Disposition, SlotOwner};
use super::symbolize::symbolize;
use super::unwind::Unwinder;
use crate::stack::{CaptureError, Stack, StackError};

/// The default signal is `SIGRTMIN() + 6`. Real-time signals have no
/// meaning of their own and queue instead of merging. libc keeps the raw
/// ones below `SIGRTMIN()` for itself (glibc 32 and 33 for thread
/// cancellation and `setxid`, musl up to 34), which `SIGRTMIN()` already
/// skips. Applications and examples that need one take `SIGRTMIN()` and the
/// next few first (POSIX timers, IPC), or count down from `SIGRTMAX()`
/// (which Valgrind also reserves), so the default sits clear of both ends.
/// A conflict is detected, not assumed away: see [`StackSampler::install`].
const DEFAULT_SIGNAL_OFFSET: i32 = 6;

/// Captures the stacks of other threads of this process.
///
/// Installed once per signal for the life of the process. It is never
/// uninstalled: a capture signal still queued for a thread that blocks it
/// would, once delivered to the default action, terminate the process.
///
/// If the application later installs its own handler for the signal (with
/// `sigaction` or `signal`), the sampler stops sending it: each capture
/// first checks that the handler is still ours and otherwise returns
/// [`CaptureError::HandlerReplaced`], and `install` for that signal returns
/// [`StackError::SignalInUse`]. (A handler replaced in the microseconds
/// between that check and the signal gets one signal it did not expect.)
#[derive(Debug)]
pub(crate) struct StackSampler {
    signal: i32,
}

/// The capturing side, shared by every sampler: the slot that the handler
/// fills is process-wide, so captures take turns.
struct Capturer {
    slot: SlotOwner,
    /// Created by the first capture.
    unwinder: Option<Unwinder>,
}

static CAPTURER: Mutex<Capturer> = Mutex::new(Capturer {
    // SAFETY: this is the only place a `SlotOwner` is created.
    slot: unsafe { SlotOwner::new() },
    unwinder: None,
});

/// The samplers installed so far, one per signal. Leaked: they live as
/// long as their handlers, which is the life of the process.
static INSTALLED: Mutex<Vec<&'static StackSampler>> = Mutex::new(Vec::new());

impl StackSampler {
    /// `SIGRTMIN() + 6`: see `DEFAULT_SIGNAL_OFFSET` in this file for why.
    pub(crate) fn default_signal() -> i32 {
        libc::SIGRTMIN() + DEFAULT_SIGNAL_OFFSET
    }

    /// The signals [`install`](Self::install) accepts: the real-time ones.
    pub(crate) fn signal_range() -> Option<std::ops::RangeInclusive<i32>> {
        Some(libc::SIGRTMIN()..=libc::SIGRTMAX())
    }

    /// Installs the capture handler for `signal`, a real-time signal, and
    /// returns the sampler for it. Callers asking for the same signal get
    /// the same sampler.
    ///
    /// Nothing is taken over: if the signal already has a handler, or is
    /// ignored, it is left as it was and this returns
    /// [`StackError::SignalInUse`]; the caller should then run without
    /// stack capture, or try another signal.
    pub(crate) fn install(signal: i32) -> Result<&'static Self, StackError> {
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        if !(min..=max).contains(&signal) {
            return Err(StackError::InvalidSignal { signal, min, max });
        }
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sampler) = installed.iter().find(|s| s.signal == signal) {
            return match signal::disposition(signal) {
                Ok(Disposition::Ours) => Ok(sampler),
                Ok(other) => Err(StackError::SignalInUse {
                    signal,
                    disposition: match other {
                        Disposition::Ignored => "is ignored (SIG_IGN) by the application",
                        _ => "had its stack-capture handler replaced by the application",
                    },
                }),
                Err(source) => Err(StackError::Sigaction { signal, source }),
            };
        }
        signal::install_handler(signal)?;
        let sampler: &'static Self = Box::leak(Box::new(Self { signal }));
        installed.push(sampler);
        Ok(sampler)
    }

    /// The signal this sampler sends.
    #[cfg(test)]
    pub(crate) fn signal(&self) -> i32 {
        self.signal
    }

    /// Captures `thread`'s stack as it is now.
    ///
    /// The thread is interrupted only while its handler copies its
    /// registers and the top 64 KiB of its stack; walking and symbolizing
    /// happen here, on the calling thread, afterwards. Waits at most
    /// `timeout` for the handler (plus, rarely, a short grace for a handler
    /// that started just as the timeout expired), and for a capture by
    /// another thread to finish first: captures are serialised process-wide.
    ///
    /// A thread whose poll finished meanwhile is captured doing whatever it
    /// does now. A thread blocked in a system call is captured in it: the
    /// call is restarted, or returns `EINTR` where the kernel never restarts
    /// it (`nanosleep`, `epoll_wait`; std and Tokio retry those). A thread
    /// that has exited gives [`CaptureError::ThreadExited`].
    ///
    /// The walk takes the dynamic loader's lock (`dl_iterate_phdr`) and
    /// symbolizing takes `backtrace`'s: a thread interrupted while holding
    /// either is let go before they are taken, so the capture only waits
    /// for it to release them. A thread stuck forever inside the loader
    /// (in `dlopen`, or a library constructor) would hold the capture too.
    #[cfg(test)]
    pub(crate) fn capture(
        &self,
        thread: &ThreadHandle,
        timeout: Duration,
    ) -> Result<Stack, CaptureError> {
        self.capture_if(thread, timeout, || true)
    }

    /// Like [`capture`](Self::capture), but keeps the copy only if `keep()`
    /// holds once it is made; otherwise returns
    /// [`CaptureError::MovedOn`] without unwinding it.
    ///
    /// `keep` runs after the handler has finished (its completion is read
    /// with `Acquire`, and the handler publishes it with `Release` after
    /// the copy), so everything the thread did before it was interrupted
    /// is visible to `keep`: if `keep` finds the thread still in the state
    /// it was in before the signal was sent, the copy was taken in that
    /// state.
    pub(crate) fn capture_if(
        &self,
        thread: &ThreadHandle,
        timeout: Duration,
        keep: impl FnOnce() -> bool,
    ) -> Result<Stack, CaptureError> {
        // Only send the signal while our handler is installed: under the
        // default action a real-time signal terminates the process, and
        // another handler would get a signal it does not expect.
        if !matches!(signal::disposition(self.signal), Ok(Disposition::Ours)) {
            return Err(CaptureError::HandlerReplaced {
                signal: self.signal,
            });
        }
        let walk = {
            let mut capturer = CAPTURER.lock().unwrap_or_else(PoisonError::into_inner);
            let Capturer { slot, unwinder } = &mut *capturer;
            let copy = slot.interrupt(&thread.record, self.signal, timeout)?;
            if !keep() {
                return Err(CaptureError::MovedOn);
            }
            unwinder.get_or_insert_with(Unwinder::new).walk(&copy)
        };
        Ok(symbolize(walk))
    }
}
