//! A captured stack and how it prints.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// The stack of a thread at the moment it was interrupted, innermost frame
/// first: frame 0 is the interrupted function, then its callers.
///
/// `Display` prints one line per function, numbered by frame:
///
/// ```text
///    0: __GI___clock_nanosleep at ./time/../sysdeps/unix/sysv/linux/clock_nanosleep.c:48
///    1: std::sys::thread::unix::sleep (inlined) at /rustc/…/library/std/src/sys/thread/unix.rs:579
///    1: std::thread::functions::sleep at /rustc/…/library/std/src/thread/functions.rs:289
///    2: my_service::handler::hash_everything at src/handler.rs:42
/// ```
///
/// A frame whose calls were inlined prints one line per inlined function,
/// innermost first, under the same number. An address with no symbol prints
/// as the address and the module it lies in.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stack {
    pub(crate) frames: Vec<Frame>,
    /// Why the walk stopped before the thread's entry point, when it did
    /// (a frame without unwind information, the end of the copied stack).
    pub(crate) truncated: Option<String>,
}

/// One frame of a [`Stack`].
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// For frame 0 the interrupted instruction, for the others the return
    /// address into the function.
    pub(crate) address: u64,
    /// The executable or shared library the address lies in.
    pub(crate) module: Option<Arc<str>>,
    /// What the address resolves to: several entries when calls were
    /// inlined (innermost first, the physical function last); none when
    /// the module has no symbols.
    pub(crate) symbols: Vec<Symbol>,
}

/// A function a frame's address resolved to.
#[derive(Debug, Clone)]
pub(crate) struct Symbol {
    /// Demangled, without the hash suffix.
    pub(crate) name: Option<String>,
    pub(crate) file: Option<PathBuf>,
    pub(crate) line: Option<u32>,
}

impl Stack {
    /// The index of the first frame with a function whose name contains
    /// `needle`, for callers that look for a known function.
    #[cfg(test)]
    pub(crate) fn position(&self, needle: &str) -> Option<usize> {
        self.frames.iter().position(|frame| {
            frame
                .symbols
                .iter()
                .any(|s| s.name.as_deref().is_some_and(|n| n.contains(needle)))
        })
    }
}

impl fmt::Display for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, frame) in self.frames.iter().enumerate() {
            if frame.symbols.is_empty() {
                let module = frame.module.as_deref().unwrap_or("<unknown module>");
                writeln!(f, "{index:>4}: {:#x} in {module}", frame.address)?;
                continue;
            }
            let last = frame.symbols.len() - 1;
            for (i, symbol) in frame.symbols.iter().enumerate() {
                write!(f, "{index:>4}: ")?;
                match &symbol.name {
                    Some(name) => f.write_str(name)?,
                    None => write!(f, "{:#x}", frame.address)?,
                }
                if i != last {
                    f.write_str(" (inlined)")?;
                }
                match (&symbol.file, symbol.line) {
                    (Some(file), Some(line)) => write!(f, " at {}:{line}", file.display())?,
                    (Some(file), None) => write!(f, " at {}", file.display())?,
                    _ => {}
                }
                writeln!(f)?;
            }
        }
        if let Some(reason) = &self.truncated {
            writeln!(f, "      (walk stopped: {reason})")?;
        }
        Ok(())
    }
}
