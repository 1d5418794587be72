//! A `Pulse`'s side of stack capture: the setting, the sampler it
//! installed, and whether capture still works.

use std::sync::OnceLock;
use std::time::Duration;

use super::{CaptureError, StackError, StackSampler, ThreadHandle};

/// Whether the watchdog captures the stack of a thread whose poll it
/// reports as stuck, and with which signal. Set with
/// [`PulseBuilder::stack_capture`](crate::PulseBuilder::stack_capture);
/// fixed once the `Pulse` is built.
///
/// A capture happens once per stuck poll, when the watchdog first reports
/// it. The watchdog sends the stuck thread a real-time signal; the handler
/// (no lock, no allocation) copies the thread's registers and the top
/// 64 KiB of its stack, and the thread goes on. The watchdog's thread then
/// unwinds the copy and resolves each frame to a demangled function name
/// and `file:line`, and the report carries the result:
/// [`StuckPoll::stack`](crate::StuckPoll::stack) and the `stack` field of
/// the watchdog's `tracing` error.
///
/// Only on Linux on x86-64 and aarch64. Elsewhere every setting means
/// [`Off`](StackCapture::Off): stacks are `None` and
/// [`Health::stack_capture`](crate::Health::stack_capture) says
/// `Disabled`.
///
/// What the application may notice: the stuck thread pauses for the copy
/// (microseconds). A system call it is blocked in and that the kernel
/// restarts (`read`, `write`) is restarted; one the kernel never restarts
/// (`nanosleep`, `epoll_wait`, `poll`) returns `EINTR`, which std's
/// `thread::sleep`, mio and Tokio retry. The signal's handler stays
/// installed for the life of the process.
///
/// Nothing is taken over: if the application (or another library) already
/// handles or ignores the signal when the `Pulse` is built, its handler is
/// left alone, capture is off for that `Pulse`, a `tracing` warning says
/// so, and [`Health::stack_capture`](crate::Health::stack_capture) is
/// `Failed` with the reason. If the application installs its own handler
/// later, capture stops at the next stuck poll, the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StackCapture {
    /// The default: capture with signal `SIGRTMIN() + 6` (40 with glibc,
    /// 41 with musl), clear of the first real-time signals that
    /// applications and libraries usually take and of `SIGRTMAX()`, which
    /// Valgrind reserves.
    #[default]
    On,
    /// Capture with this real-time signal, from `libc::SIGRTMIN()` to
    /// `libc::SIGRTMAX()`: for an application that uses the default one.
    Signal(i32),
    /// No capture: stacks are `None`, and no signal handler is installed.
    Off,
}

/// The real-time signals a capture may use, where capture is supported.
pub(crate) fn signal_range() -> Option<std::ops::RangeInclusive<i32>> {
    StackSampler::signal_range()
}

/// How long a capture waits for the stuck thread's handler. A thread that
/// is running, or blocked in a system call, answers in microseconds; a
/// runnable one waits for a CPU first. On an idle host the scheduler grants
/// one within a few milliseconds (CFS's latency target is 6 ms, more on
/// many cores), but a container over its CPU quota runs nothing until the
/// next quota period (100 ms by default), and on an overloaded host waits
/// grow likewise: with a 50 ms wait, one run of this crate's tests on a
/// busy two-core host reported a stuck thread without its stack. A
/// thread that has not answered after this blocks the signal or is starved
/// (a `SCHED_IDLE` isolation thread on a saturated host), and the report
/// goes without a stack. The watchdog's thread waits this long at most,
/// once per stuck poll.
const CAPTURE_TIMEOUT: Duration = Duration::from_millis(200);

/// Whether a `Pulse`'s stack capture runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CaptureState {
    Running,
    /// Turned off, unsupported here, or no watchdog to capture for.
    Off,
    /// The signal was not free, or stopped being ours; the reason.
    Failed(String),
}

/// A `Pulse`'s stack capture: the sampler it installed at build time, if
/// capture is on and its signal was free.
#[derive(Debug)]
pub(crate) struct StackCapturer {
    sampler: Option<&'static StackSampler>,
    /// [`CAPTURE_TIMEOUT`], but for tests.
    timeout: Duration,
    /// Why capture could not start.
    refused: Option<String>,
    /// Why capture stopped after it started: the application replaced the
    /// handler. Set once.
    stopped: OnceLock<String>,
}

impl StackCapturer {
    /// No capture.
    pub(crate) fn off() -> Self {
        StackCapturer {
            sampler: None,
            timeout: CAPTURE_TIMEOUT,
            refused: None,
            stopped: OnceLock::new(),
        }
    }

    /// Installs the sampler for `setting`. A signal the application uses
    /// is left alone: capture is then off, with a `tracing` warning.
    pub(crate) fn start(setting: StackCapture) -> Self {
        let signal = match setting {
            StackCapture::Off => return Self::off(),
            StackCapture::On => StackSampler::default_signal(),
            StackCapture::Signal(signal) => signal,
        };
        match StackSampler::install(signal) {
            Ok(sampler) => StackCapturer {
                sampler: Some(sampler),
                ..Self::off()
            },
            Err(StackError::Unsupported) => Self::off(),
            Err(error) => {
                tracing::warn!(
                    signal,
                    error = %error,
                    "tokio-pulse: stack capture is off for this Pulse: {error}",
                );
                StackCapturer {
                    refused: Some(error.to_string()),
                    ..Self::off()
                }
            }
        }
    }

    /// The same, waiting up to `timeout` for each capture's handler.
    #[cfg(test)]
    pub(crate) fn with_timeout(self, timeout: Duration) -> Self {
        StackCapturer { timeout, ..self }
    }

    pub(crate) fn state(&self) -> CaptureState {
        if let Some(reason) = self.stopped.get().or(self.refused.as_ref()) {
            CaptureState::Failed(reason.clone())
        } else if self.sampler.is_some() {
            CaptureState::Running
        } else {
            CaptureState::Off
        }
    }

    /// Captures `thread`'s stack, formatted one line per frame, if
    /// `still_same()` holds once the copy is made (and `thread` could be
    /// registered). `None` when capture is off: nothing was attempted.
    ///
    /// `still_same` runs after the stuck thread's handler has finished its
    /// copy (and is seen to have, with `Acquire`), so whatever the thread
    /// did before it was interrupted is visible to it: a caller that
    /// checks the thread's poll sequence there knows the copy was taken
    /// inside that poll.
    pub(crate) fn capture(
        &self,
        thread: &Result<ThreadHandle, StackError>,
        still_same: impl FnOnce() -> bool,
    ) -> Option<Result<String, CaptureError>> {
        let sampler = self.sampler.filter(|_| self.stopped.get().is_none())?;
        let thread = match thread {
            Ok(thread) => thread,
            Err(error) => return Some(Err(CaptureError::Unregistered(error.to_string()))),
        };
        let captured = sampler.capture_if(thread, self.timeout, still_same);
        if let Err(error @ CaptureError::HandlerReplaced { signal }) = &captured {
            let reason = error.to_string();
            if self.stopped.set(reason.clone()).is_ok() {
                tracing::warn!(
                    signal,
                    "tokio-pulse: stack capture stopped for this Pulse: {reason}",
                );
            }
        }
        Some(captured.map(|stack| stack.to_string().trim_end().to_owned()))
    }
}
