//! Walks a copied stack into return addresses, on the capturing thread.
//!
//! `framehop` does the walk from the interrupted registers, reading stack
//! words from the copy and unwind rules from each module's `.eh_frame`
//! (indexed by `.eh_frame_hdr`); where a module has none it falls back to
//! frame pointers. The module list comes from `dl_iterate_phdr`, and the
//! unwind sections are copied out of memory while its callback runs, which
//! is when the loader guarantees the module stays mapped. The list, the
//! copied sections and framehop's rule cache are kept across captures, and
//! rebuilt only when the loader's load/unload counters (`dlpi_adds`,
//! `dlpi_subs`) say a library came or went.

use std::ffi::{CStr, c_int, c_void};
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use framehop::{
    CacheNative, Error as WalkError, ExplicitModuleSectionInfo, MayAllocateDuringUnwind, Module,
    Unwinder as _, UnwinderNative,
};

use super::signal::{Interrupted, STACK_COPY_BYTES};

/// Frames kept at most: deeper stacks are cut, and say so. A stuck poll's
/// interesting frames are the innermost ones.
const MAX_FRAMES: usize = 128;

/// A loaded executable or library, for naming addresses without symbols.
#[derive(Debug)]
pub(super) struct ModuleInfo {
    /// The union of its executable segments.
    pub(super) code: Range<u64>,
    /// Its file name (`libc.so.6`, the executable's name, `linux-vdso.so.1`).
    pub(super) name: Arc<str>,
}

/// The loaded modules, sorted by address.
#[derive(Debug, Default)]
pub(super) struct Modules(Vec<ModuleInfo>);

impl Modules {
    /// The module whose code contains `address`.
    pub(super) fn name_of(&self, address: u64) -> Option<Arc<str>> {
        let index = self.0.partition_point(|m| m.code.start <= address);
        let module = self.0.get(index.checked_sub(1)?)?;
        module.code.contains(&address).then(|| module.name.clone())
    }
}

/// A walked stack: addresses only, before symbolization.
#[derive(Debug)]
pub(super) struct Walk {
    /// Frame 0 is the interrupted instruction; the rest are return
    /// addresses.
    pub(super) addresses: Vec<u64>,
    pub(super) truncated: Option<String>,
    pub(super) modules: Arc<Modules>,
}

/// The module list and framehop's state, kept across captures.
pub(super) struct Unwinder {
    /// The loader's (adds, subs) counters when the list was read.
    generation: Option<(u64, u64)>,
    unwinder: UnwinderNative<Vec<u8>, MayAllocateDuringUnwind>,
    cache: CacheNative<MayAllocateDuringUnwind>,
    modules: Arc<Modules>,
}

impl Unwinder {
    pub(super) fn new() -> Self {
        Self {
            generation: None,
            unwinder: UnwinderNative::new(),
            cache: CacheNative::new(),
            modules: Arc::default(),
        }
    }

    /// Walks the copy the handler made.
    pub(super) fn walk(&mut self, copy: &Interrupted<'_>) -> Walk {
        self.refresh();
        let registers = copy.registers;
        let (start, stack) = (copy.stack_start, copy.stack);
        let mut read_stack = |address: u64| -> Result<u64, ()> {
            let offset = address.checked_sub(start).ok_or(())?;
            if offset % 8 != 0 {
                return Err(());
            }
            let index = usize::try_from(offset / 8).map_err(drop)?;
            stack.get(index).copied().ok_or(())
        };
        #[cfg(target_arch = "x86_64")]
        let unwind_registers =
            framehop::x86_64::UnwindRegsX86_64::new(registers.pc, registers.sp, registers.fp);
        // Return addresses signed by pointer authentication (glibc built
        // with -mbranch-protection) carry a hash in their top bits; strip
        // every bit above the highest loaded code address.
        #[cfg(target_arch = "aarch64")]
        let unwind_registers = framehop::aarch64::UnwindRegsAarch64::new_with_ptr_auth_mask(
            framehop::aarch64::PtrAuthMask::from_max_known_address(
                self.unwinder.max_known_code_address(),
            ),
            registers.lr,
            registers.sp,
            registers.fp,
        );

        let mut frames = self.unwinder.iter_frames(
            registers.pc,
            unwind_registers,
            &mut self.cache,
            &mut read_stack,
        );
        let mut addresses = Vec::new();
        let truncated = loop {
            if addresses.len() == MAX_FRAMES {
                break Some(format!(
                    "more than {MAX_FRAMES} frames; the outermost are left out"
                ));
            }
            match frames.next() {
                Ok(Some(frame)) => addresses.push(frame.address()),
                Ok(None) => break None,
                Err(error) => break Some(describe(error, start, stack.len())),
            }
        };
        Walk {
            addresses,
            truncated,
            modules: self.modules.clone(),
        }
    }

    /// Re-reads the module list if a library was loaded or unloaded since
    /// the last capture.
    fn refresh(&mut self) {
        let now = scan(true).generation;
        if now.is_some() && now == self.generation {
            return;
        }
        let scan = scan(false);
        let mut unwinder = UnwinderNative::new();
        let mut modules = Vec::with_capacity(scan.modules.len());
        for loaded in scan.modules {
            if let Some(module) = loaded.unwind {
                unwinder.add_module(module);
            }
            modules.push(loaded.info);
        }
        modules.sort_by_key(|m| m.code.start);
        self.generation = scan.generation;
        self.unwinder = unwinder;
        self.modules = Arc::new(Modules(modules));
    }
}

/// Why a walk stopped early, in words.
fn describe(error: WalkError, start: u64, words: usize) -> String {
    match error {
        WalkError::CouldNotReadStack(address) if words == 0 => format!(
            "the stack pointer was outside the thread's stack, so only the interrupted \
             instruction is known (read of {address:#x})"
        ),
        WalkError::CouldNotReadStack(address)
            if address >= start + (words as u64) * 8 && words * 8 >= STACK_COPY_BYTES - 8 =>
        {
            format!(
                "reached the end of the {} KiB of stack copied",
                STACK_COPY_BYTES / 1024
            )
        }
        other => other.to_string(),
    }
}

/// A module as found by the scan.
struct Loaded {
    info: ModuleInfo,
    /// Absent when the module has no `.eh_frame_hdr` we can read: framehop
    /// then walks its frames by frame pointer.
    unwind: Option<Module<Vec<u8>>>,
}

struct Scan {
    /// Stop after reading the counters from the first module.
    counters_only: bool,
    main_program: Arc<str>,
    generation: Option<(u64, u64)>,
    modules: Vec<Loaded>,
}

fn scan(counters_only: bool) -> Scan {
    let main_program = if counters_only {
        Arc::from("")
    } else {
        std::env::current_exe()
            .ok()
            .and_then(|path| Some(path.file_name()?.to_string_lossy().into()))
            .unwrap_or_else(|| Arc::from("<main program>"))
    };
    let mut scan = Scan {
        counters_only,
        main_program,
        generation: None,
        modules: Vec::new(),
    };
    // SAFETY: `visit` matches the callback signature and only uses `data`
    // as the `&mut Scan` passed here, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut scan).cast::<c_void>()) };
    scan
}

unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, size: usize, data: *mut c_void) -> c_int {
    // SAFETY: `data` is the `&mut Scan` that `scan` passed, exclusively
    // ours for the duration of dl_iterate_phdr.
    let scan = unsafe { &mut *data.cast::<Scan>() };
    // SAFETY: dl_iterate_phdr passes a valid `dl_phdr_info` of at least
    // `size` bytes, alive for the duration of this callback.
    let info = unsafe { &*info };
    if scan.generation.is_none() {
        scan.generation = counters(info, size);
        if scan.counters_only {
            return 1;
        }
    }
    // A panic must not cross this extern "C" frame (it would abort): stop
    // the scan instead, with the modules read so far.
    let loaded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called within the callback; see `read_module`.
        unsafe { read_module(info, &scan.main_program) }
    }));
    match loaded {
        Ok(Some(loaded)) => {
            scan.modules.push(loaded);
            0
        }
        Ok(None) => 0,
        Err(_) => 1,
    }
}

/// The loader's load and unload counters, when this libc provides them.
fn counters(info: &libc::dl_phdr_info, size: usize) -> Option<(u64, u64)> {
    let needed = std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs)
        + std::mem::size_of::<libc::c_ulonglong>();
    (size >= needed).then_some((info.dlpi_adds, info.dlpi_subs))
}

/// Reads one module's code range and copies its unwind sections.
///
/// # Safety
/// Must be called from a `dl_iterate_phdr` callback with the `info` it was
/// given: the loader holds its lock, so the module stays mapped while its
/// memory is read.
unsafe fn read_module(info: &libc::dl_phdr_info, main_program: &Arc<str>) -> Option<Loaded> {
    if info.dlpi_phdr.is_null() {
        return None;
    }
    let bias = info.dlpi_addr;
    // SAFETY: the loader's program headers of this module: `dlpi_phnum`
    // entries at `dlpi_phdr`, mapped while the callback runs.
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let code = headers
        .iter()
        .filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_X != 0)
        .map(|h| bias.wrapping_add(h.p_vaddr)..bias.wrapping_add(h.p_vaddr + h.p_memsz))
        .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end))?;
    let name = module_name(info, main_program);
    let unwind = headers
        .iter()
        .find(|h| h.p_type == libc::PT_GNU_EH_FRAME)
        // SAFETY: within the callback, per this function's contract.
        .and_then(|eh_frame_hdr| unsafe {
            unwind_module(headers, bias, eh_frame_hdr, &name, &code)
        });
    Some(Loaded {
        info: ModuleInfo { code, name },
        unwind,
    })
}

/// Copies `.eh_frame_hdr` and `.eh_frame` and builds framehop's module.
///
/// # Safety
/// As `read_module`: `headers` and `bias` describe a module the loader
/// keeps mapped for the duration of the call.
unsafe fn unwind_module(
    headers: &[libc::Elf64_Phdr],
    bias: u64,
    eh_frame_hdr: &libc::Elf64_Phdr,
    name: &str,
    code: &Range<u64>,
) -> Option<Module<Vec<u8>>> {
    // Only read inside the file-backed part of a readable PT_LOAD segment:
    // that much is mapped, whatever the section headers (not loaded) said.
    let readable_end = |address: u64| {
        headers
            .iter()
            .filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_R != 0)
            .map(|h| bias.wrapping_add(h.p_vaddr)..bias.wrapping_add(h.p_vaddr + h.p_filesz))
            .find(|segment| segment.contains(&address))
            .map(|segment| segment.end)
    };
    let hdr_address = bias.wrapping_add(eh_frame_hdr.p_vaddr);
    let hdr_end = hdr_address.checked_add(eh_frame_hdr.p_memsz)?;
    if hdr_end > readable_end(hdr_address)? {
        return None;
    }
    // SAFETY: `[hdr_address, hdr_end)` lies in a mapped, readable segment
    // (checked above) that the loader keeps mapped during the callback.
    let hdr = unsafe { memory(hdr_address, hdr_end) }.to_vec();
    let eh_frame_address = eh_frame_address(&hdr, hdr_address, bias)?;
    let segment_end = readable_end(eh_frame_address)?;
    // SAFETY: as above, for the rest of the segment holding `.eh_frame`.
    let rest = unsafe { memory(eh_frame_address, segment_end) };
    let eh_frame = rest[..eh_frame_len(rest)].to_vec();
    let eh_frame_svma = eh_frame_address - bias;
    let hdr_svma = hdr_address - bias;
    Some(Module::new(
        name.to_owned(),
        code.clone(),
        bias,
        ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: Some(code.start - bias..code.end - bias),
            eh_frame_svma: Some(eh_frame_svma..eh_frame_svma + eh_frame.len() as u64),
            eh_frame: Some(eh_frame),
            eh_frame_hdr_svma: Some(hdr_svma..hdr_svma + hdr.len() as u64),
            eh_frame_hdr: Some(hdr),
            ..Default::default()
        },
    ))
}

/// # Safety
/// `[start, end)` must be mapped and readable, and stay so while the
/// returned slice is used.
unsafe fn memory<'a>(start: u64, end: u64) -> &'a [u8] {
    let len = usize::try_from(end.saturating_sub(start)).unwrap_or(0);
    // SAFETY: per the contract.
    unsafe { std::slice::from_raw_parts(start as usize as *const u8, len) }
}

fn module_name(info: &libc::dl_phdr_info, main_program: &Arc<str>) -> Arc<str> {
    if info.dlpi_name.is_null() {
        return main_program.clone();
    }
    // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by
    // the loader, valid during the callback; we copy it.
    let path = unsafe { CStr::from_ptr(info.dlpi_name) }.to_string_lossy();
    if path.is_empty() {
        // glibc and musl give the main program an empty name.
        return main_program.clone();
    }
    let file = path.rsplit('/').next().unwrap_or(&path);
    Arc::from(file)
}

/// Where `.eh_frame` starts, from the `eh_frame_ptr` field of
/// `.eh_frame_hdr` (version 1: version, three encodings, then the pointer).
fn eh_frame_address(hdr: &[u8], hdr_address: u64, bias: u64) -> Option<u64> {
    let (&[version, encoding, _, _], field) = hdr.split_first_chunk::<4>()?;
    if version != 1 {
        return None;
    }
    let value = read_encoded(field, encoding)?;
    match encoding & 0x70 {
        // An absolute pointer in a read-only section is not relocated: it
        // is the linked address, to which the load bias applies.
        0x00 => Some(value.wrapping_add(bias)),
        // pc-relative: relative to the field itself, 4 bytes in.
        0x10 => Some((hdr_address + 4).wrapping_add(value)),
        // data-relative: relative to the start of `.eh_frame_hdr`.
        0x30 => Some(hdr_address.wrapping_add(value)),
        _ => None,
    }
}

/// Reads a DWARF exception-header-encoded value (`DW_EH_PE_*`), sign
/// extended into a `u64` for wrapping arithmetic.
fn read_encoded(field: &[u8], encoding: u8) -> Option<u64> {
    fn bytes<const N: usize>(field: &[u8]) -> Option<[u8; N]> {
        field.first_chunk::<N>().copied()
    }
    Some(match encoding & 0x0f {
        0x00 | 0x04 => u64::from_ne_bytes(bytes(field)?),
        0x02 => u64::from(u16::from_ne_bytes(bytes(field)?)),
        0x03 => u64::from(u32::from_ne_bytes(bytes(field)?)),
        0x0a => i16::from_ne_bytes(bytes(field)?) as u64,
        0x0b => i32::from_ne_bytes(bytes(field)?) as u64,
        0x0c => i64::from_ne_bytes(bytes(field)?) as u64,
        _ => return None,
    })
}

/// The length of `.eh_frame` at the start of `bytes`: its records up to
/// and including the zero terminator, or to the end of `bytes` if there is
/// none. (`.eh_frame_hdr` gives the start only.)
fn eh_frame_len(bytes: &[u8]) -> usize {
    let mut offset = 0usize;
    loop {
        let Some(length) = bytes.get(offset..).and_then(|b| b.first_chunk::<4>()) else {
            return offset.min(bytes.len());
        };
        let length = u32::from_ne_bytes(*length);
        let next = match length {
            0 => return offset + 4,
            // 64-bit DWARF: the real length follows.
            0xffff_ffff => bytes
                .get(offset + 4..)
                .and_then(|b| b.first_chunk::<8>())
                .and_then(|l| usize::try_from(u64::from_ne_bytes(*l)).ok())
                .and_then(|l| (offset + 12).checked_add(l)),
            length => (offset + 4).checked_add(length as usize),
        };
        match next {
            Some(next) if next <= bytes.len() => offset = next,
            _ => return offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eh_frame_len_stops_at_the_terminator() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&8u32.to_ne_bytes());
        bytes.extend_from_slice(&[0xaa; 8]);
        bytes.extend_from_slice(&4u32.to_ne_bytes());
        bytes.extend_from_slice(&[0xbb; 4]);
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&[0xcc; 32]); // the next section
        assert_eq!(eh_frame_len(&bytes), 12 + 8 + 4);
    }

    #[test]
    fn eh_frame_len_never_runs_past_the_segment() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&8u32.to_ne_bytes());
        bytes.extend_from_slice(&[0xaa; 8]);
        bytes.extend_from_slice(&100u32.to_ne_bytes()); // claims more than there is
        bytes.extend_from_slice(&[0xbb; 4]);
        assert_eq!(eh_frame_len(&bytes), 12);
    }

    #[test]
    fn eh_frame_pointer_decodes_pc_relative_and_data_relative() {
        // pc-relative sdata4: the field sits at hdr + 4.
        let mut hdr = vec![1, 0x1b, 0x03, 0x3b];
        hdr.extend_from_slice(&(-0x100i32).to_ne_bytes());
        assert_eq!(eh_frame_address(&hdr, 0x1000, 0), Some(0x1004 - 0x100));
        // data-relative udata4.
        let mut hdr = vec![1, 0x33, 0x03, 0x3b];
        hdr.extend_from_slice(&0x40u32.to_ne_bytes());
        assert_eq!(eh_frame_address(&hdr, 0x1000, 0), Some(0x1040));
        // Unknown version.
        assert_eq!(
            eh_frame_address(&[2, 0x1b, 0, 0, 0, 0, 0, 0], 0x1000, 0),
            None
        );
    }

    #[test]
    fn every_code_address_of_this_test_lies_in_a_named_module() {
        let mut unwinder = Unwinder::new();
        unwinder.refresh();
        let here =
            every_code_address_of_this_test_lies_in_a_named_module as *const () as usize as u64;
        let malloc = libc::malloc as *const () as usize as u64;
        assert!(
            unwinder.modules.name_of(here).is_some(),
            "{:?}",
            unwinder.modules
        );
        assert!(
            unwinder.modules.name_of(malloc).is_some(),
            "{:?}",
            unwinder.modules
        );
        assert_eq!(unwinder.modules.name_of(0), None);
    }
}
