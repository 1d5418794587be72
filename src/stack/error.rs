//! Why a sampler could not be installed, or a capture could not be made.

use std::fmt;
use std::io;
use std::time::Duration;

/// Setting up stack capture failed: installing the signal handler, or
/// recording a thread. The caller should run without stack capture.
// Elsewhere than Linux only `Unsupported` is made.
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )),
    allow(dead_code)
)]
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum StackError {
    /// This platform has no stack capture (only Linux on x86-64 and aarch64).
    // Constructed on the other platforms only.
    #[cfg_attr(
        all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        ),
        allow(dead_code)
    )]
    Unsupported,
    /// The signal is not a real-time signal this process may use.
    InvalidSignal { signal: i32, min: i32, max: i32 },
    /// The application (or another library) already handles, or ignores,
    /// this signal; stack capture left it as it was.
    SignalInUse {
        signal: i32,
        disposition: &'static str,
    },
    /// `sigaction` itself failed.
    Sigaction { signal: i32, source: io::Error },
    /// The calling thread's stack bounds could not be read.
    StackBounds(io::Error),
    /// The calling thread runs on a stack other than the one its thread
    /// library reports (a coroutine or a segmented stack): it cannot be
    /// captured safely.
    ForeignStack,
    /// The calling thread is already exiting (its thread-locals are gone).
    ThreadExiting,
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported => f.write_str(
                "stack capture is only supported on Linux on x86-64 and aarch64; \
                 run without it on this platform",
            ),
            Self::InvalidSignal { signal, min, max } => write!(
                f,
                "signal {signal} cannot be used for stack capture: pick a real-time signal \
                 between SIGRTMIN ({min}) and SIGRTMAX ({max}) that the application does not use"
            ),
            Self::SignalInUse {
                signal,
                disposition,
            } => write!(
                f,
                "signal {signal} is not free for stack capture: it {disposition}; \
                 stack capture left it alone. Configure another real-time signal for \
                 stack capture, or disable it"
            ),
            Self::Sigaction { signal, source } => write!(
                f,
                "could not install the stack-capture handler for signal {signal}: {source}"
            ),
            Self::StackBounds(source) => write!(
                f,
                "could not read this thread's stack bounds (pthread_getattr_np): {source}; \
                 this thread cannot be captured"
            ),
            Self::ForeignStack => f.write_str(
                "this thread runs on a stack other than the one its thread library reports \
                 (a coroutine or segmented stack); it cannot be captured safely",
            ),
            Self::ThreadExiting => f.write_str(
                "this thread is exiting (its thread-locals are destroyed); it cannot be captured",
            ),
        }
    }
}

impl std::error::Error for StackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Sigaction { source, .. } | Self::StackBounds(source) => Some(source),
            _ => None,
        }
    }
}

/// One capture failed. The sampler stays usable: later captures may succeed.
// Elsewhere than Linux only `Unsupported` is made.
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )),
    allow(dead_code)
)]
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum CaptureError {
    /// This platform has no stack capture.
    // Constructed on the other platforms only.
    #[cfg_attr(
        all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        ),
        allow(dead_code)
    )]
    Unsupported,
    /// The thread has exited; there is nothing to capture.
    ThreadExited { tid: i32 },
    /// The application installed its own handler for the sampler's signal
    /// after the sampler was installed, so the signal is no longer sent.
    HandlerReplaced { signal: i32 },
    /// The thread did not run the handler in time: it blocks the signal,
    /// or it was not scheduled. The request was withdrawn; a late signal
    /// finds none and does nothing.
    Timeout { tid: i32, waited: Duration },
    /// A handler interrupted by a previous, timed-out capture is still
    /// copying (its thread was descheduled mid-copy); try again later.
    Busy,
    /// `tgkill` failed for another reason than the thread being gone.
    Signal { tid: i32, source: io::Error },
    /// The copy was made, but the thread had moved on by then (the
    /// caller's check failed): it was discarded.
    MovedOn,
    /// The thread could not be registered for capture when it started
    /// (see [`StackError`]); the reason.
    Unregistered(String),
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported => {
                f.write_str("stack capture is only supported on Linux on x86-64 and aarch64")
            }
            Self::ThreadExited { tid } => {
                write!(f, "thread {tid} has exited; there is no stack to capture")
            }
            Self::HandlerReplaced { signal } => write!(
                f,
                "the stack-capture handler for signal {signal} was replaced by another \
                 handler after it was installed; configure stack capture with a signal \
                 the application does not use"
            ),
            Self::Timeout { tid, waited } => write!(
                f,
                "thread {tid} did not answer the stack-capture signal within {waited:?} \
                 (it may block the signal, or not have been scheduled); the request was withdrawn"
            ),
            Self::Busy => {
                f.write_str("a previous stack capture's handler is still copying; try again later")
            }
            Self::Signal { tid, source } => {
                write!(
                    f,
                    "could not signal thread {tid} for a stack capture: {source}"
                )
            }
            Self::MovedOn => f.write_str(
                "the thread had moved on (its stuck poll ended) before its stack was copied; \
                 the copy was discarded",
            ),
            Self::Unregistered(reason) => {
                write!(f, "this thread cannot be captured: {reason}")
            }
        }
    }
}

impl std::error::Error for CaptureError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Signal { source, .. } => Some(source),
            _ => None,
        }
    }
}
