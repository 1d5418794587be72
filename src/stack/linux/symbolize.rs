//! Turns walked addresses into function names and `file:line`, on the
//! capturing thread.
//!
//! The `backtrace` crate does the lookup: symbol tables and DWARF of the
//! loaded modules, parsed on first use and cached (in that crate, behind
//! its own lock) for later captures. Inlined calls come back as several
//! symbols for one address, innermost first. Files under the current
//! directory are named relative to it (`src/main.rs`), as std's own
//! backtraces name them.

use std::ffi::c_void;
use std::path::Path;

use super::unwind::Walk;
use crate::stack::{Frame, Stack, Symbol};

pub(super) fn symbolize(walk: Walk) -> Stack {
    let here = std::env::current_dir().ok();
    let here = here.as_deref();
    let frames = walk
        .addresses
        .iter()
        .enumerate()
        .map(|(index, &address)| Frame {
            address,
            module: walk.modules.name_of(address),
            symbols: resolve(lookup_address(index, address), here),
        })
        .collect();
    Stack {
        frames,
        truncated: walk.truncated,
    }
}

/// `backtrace::resolve` looks up `address - 1`, because a return address
/// points after its call instruction. Frame 0 is the interrupted
/// instruction itself, so it is handed over one byte further to cancel
/// that out.
fn lookup_address(index: usize, address: u64) -> u64 {
    if index == 0 {
        address.wrapping_add(1)
    } else {
        address
    }
}

fn resolve(address: u64, here: Option<&Path>) -> Vec<Symbol> {
    let mut symbols = Vec::new();
    backtrace::resolve(address as usize as *mut c_void, |symbol| {
        symbols.push(Symbol {
            // `{:#}` leaves out the `::h0123abcd` hash suffix.
            name: symbol.name().map(|name| format!("{name:#}")),
            file: symbol.filename().map(|path| {
                here.and_then(|here| path.strip_prefix(here).ok())
                    .unwrap_or(path)
                    .to_path_buf()
            }),
            line: symbol.lineno(),
        });
    });
    symbols
}
