//! The same API on platforms without stack capture: every call says so.

use std::time::Duration;

use super::{CaptureError, Stack, StackError};

/// See the Linux `ThreadHandle`; here it cannot be created.
#[derive(Debug, Clone)]
pub(crate) struct ThreadHandle {
    _private: (),
}

impl ThreadHandle {
    pub(crate) fn current() -> Result<Self, StackError> {
        Err(StackError::Unsupported)
    }
}

/// See the Linux `StackSampler`; here it cannot be installed.
#[derive(Debug)]
pub(crate) struct StackSampler {
    _private: (),
}

impl StackSampler {
    pub(crate) fn default_signal() -> i32 {
        0
    }

    pub(crate) fn signal_range() -> Option<std::ops::RangeInclusive<i32>> {
        None
    }

    pub(crate) fn install(_signal: i32) -> Result<&'static Self, StackError> {
        Err(StackError::Unsupported)
    }

    pub(crate) fn capture_if(
        &self,
        _thread: &ThreadHandle,
        _timeout: Duration,
        _keep: impl FnOnce() -> bool,
    ) -> Result<Stack, CaptureError> {
        Err(CaptureError::Unsupported)
    }
}
