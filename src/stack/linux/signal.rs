//! The half of a capture that runs on the target thread: the signal, the
//! handler, and the one request slot they share with the capturing thread.
//!
//! # The slot
//!
//! A single static slot holds the request and the copy: the registers and
//! up to [`STACK_COPY_BYTES`] of stack. It is never freed, so a handler that
//! runs late can never write into freed memory. Its `request` word moves
//! through four phases, and whoever moves it owns what the phase says:
//!
//! | phase | set by | meaning |
//! |---|---|---|
//! | `IDLE` | capturer | no request; a signal that arrives now does nothing |
//! | `ARMED(tid)` | capturer | thread `tid` is asked for a copy |
//! | `WRITING(tid)` | the handler on `tid`, by compare-and-swap from `ARMED(tid)` | that handler alone writes the copy |
//! | `DONE(tid)` | that handler | the copy is complete; the capturer alone reads it |
//!
//! The handler's compare-and-swap includes the thread id, so a stale
//! signal (from an earlier, withdrawn request) or one the application sends
//! finds no request for its thread and returns. A capture that times out
//! withdraws its request with the opposite compare-and-swap, `ARMED` →
//! `IDLE`; exactly one of the two wins. If the handler won, the capturer
//! waits for `DONE`: the copy takes microseconds and cannot block.
//!
//! # The signal
//!
//! Installed with `SA_SIGINFO` (the handler reads the `ucontext`),
//! `SA_RESTART` (a `read` or `write` the signal interrupts is restarted by
//! the kernel instead of failing with `EINTR`) and `SA_ONSTACK`. Without an
//! alternate stack the kernel pushes the signal frame (2 to 11 KiB on
//! x86-64, `AT_MINSIGSTKSZ`) onto the interrupted thread's own stack; a
//! thread deep in recursion near its guard page would then overflow because
//! of the capture. With `SA_ONSTACK` the frame goes on the thread's
//! alternate signal stack, which std gives each of its threads for its
//! stack-overflow report (a thread without one, e.g. created from C, gets
//! the frame on its own stack). The test
//! `captures_a_thread_at_the_edge_of_its_stack_without_overflowing_it`
//! fails without the flag.
//!
//! Calls the kernel never restarts (`nanosleep`, `epoll_wait`, `poll`,
//! `futex` waits with a timeout) return `EINTR`; std's `thread::sleep`, mio
//! and Tokio retry them, code that treats `EINTR` as fatal would not. That
//! is the one visible effect of a capture, paid once per stuck poll.

use std::cell::UnsafeCell;
use std::ffi::{c_int, c_void};
use std::io;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::thread::{ThreadRecord, gettid};
use crate::stack::{CaptureError, StackError};

/// How much stack a capture copies, upwards from the interrupted stack
/// pointer. 64 KiB holds a few hundred ordinary frames, enough to reach
/// from a stuck function up through Tokio's poll to the worker's entry;
/// the copy takes a few microseconds. Frames above it are cut off, and the
/// stack says so.
pub(super) const STACK_COPY_BYTES: usize = 64 * 1024;
const STACK_COPY_WORDS: usize = STACK_COPY_BYTES / 8;

/// How long a capturer waits for a handler that has taken its request just
/// as the capture timed out. The handler copies at most 64 KiB and makes a
/// single non-blocking syscall, so this only covers its thread being
/// descheduled mid-copy.
const HANDLER_GRACE: Duration = Duration::from_millis(100);

const IDLE: u32 = 0;
const ARMED: u32 = 1;
const WRITING: u32 = 2;
const DONE: u32 = 3;

/// What the handler found, in `Slot::outcome`.
const COPIED: u32 = 0;
/// The interrupted stack pointer lay outside the thread's recorded stack
/// (an alternate signal stack, a coroutine): registers only.
const OFF_STACK: u32 = 1;
/// The thread had already marked itself exited: the signal reached a new
/// thread that was given the old one's id. Nothing copied.
const NOT_ALIVE: u32 = 2;

/// The phase in the low half, the thread id in the high half, so one
/// compare-and-swap checks both.
const fn request(phase: u32, tid: i32) -> u64 {
    phase as u64 | ((tid as u32 as u64) << 32)
}

const fn phase(word: u64) -> u32 {
    word as u32
}

/// The interrupted thread's registers that unwinding starts from.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Registers {
    pub(super) pc: u64,
    pub(super) sp: u64,
    /// rbp on x86-64, x29 on aarch64.
    pub(super) fp: u64,
    /// x30 on aarch64; 0 on x86-64, where the return address is on the stack.
    pub(super) lr: u64,
}

struct Slot {
    request: AtomicU64,
    /// Incremented by each handler that finishes, and the futex word the
    /// capturer sleeps on.
    completions: AtomicU32,
    /// The record of the requested thread; valid while `request` is not
    /// `IDLE`, because the capturer keeps an `Arc` of it until then.
    target: AtomicPtr<ThreadRecord>,
    outcome: AtomicU32,
    pc: AtomicU64,
    sp: AtomicU64,
    fp: AtomicU64,
    lr: AtomicU64,
    /// Address of the first copied word (the stack pointer, rounded up to 8).
    stack_start: AtomicU64,
    stack_words: AtomicUsize,
    stack: UnsafeCell<[u64; STACK_COPY_WORDS]>,
}

// SAFETY: `stack` is written only by the handler that moved `request` to
// `WRITING`, and read only by the one `SlotOwner` after it saw `DONE`
// (Acquire, pairing with the handler's Release); the phases make the two
// exclusive. Every other field is atomic.
unsafe impl Sync for Slot {}

static SLOT: Slot = Slot {
    request: AtomicU64::new(request(IDLE, 0)),
    completions: AtomicU32::new(0),
    target: AtomicPtr::new(ptr::null_mut()),
    outcome: AtomicU32::new(COPIED),
    pc: AtomicU64::new(0),
    sp: AtomicU64::new(0),
    fp: AtomicU64::new(0),
    lr: AtomicU64::new(0),
    stack_start: AtomicU64::new(0),
    stack_words: AtomicUsize::new(0),
    stack: UnsafeCell::new([0; STACK_COPY_WORDS]),
};

/// The signal handler. Async-signal-safe: atomics, plain loads and stores,
/// and two raw syscalls (`gettid`, `futex`).
extern "C" fn on_signal(_signal: c_int, _info: *mut libc::siginfo_t, context: *mut c_void) {
    // The interrupted code may be between a failing call and its read of
    // errno; leave errno as it was.
    // SAFETY: __errno_location returns the calling thread's errno slot,
    // valid for the thread's lifetime.
    let errno = unsafe { *libc::__errno_location() };
    serve(context);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn serve(context: *mut c_void) {
    let tid = gettid();
    if SLOT
        .request
        .compare_exchange(
            request(ARMED, tid),
            request(WRITING, tid),
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return; // not asked for this thread: stale, or the application's own signal
    }
    // SAFETY: the capturer stored `target` before arming (Release, paired
    // with the Acquire above) and keeps its `Arc` alive until the phase we
    // now hold is moved on by `DONE`; we do not touch it after that.
    let record = unsafe { &*SLOT.target.load(Ordering::Relaxed) };
    let outcome = if record.alive.load(Ordering::Acquire) {
        // SAFETY: with SA_SIGINFO the kernel passes the interrupted
        // context as the third argument.
        let registers = unsafe { interrupted_registers(context) };
        SLOT.pc.store(registers.pc, Ordering::Relaxed);
        SLOT.sp.store(registers.sp, Ordering::Relaxed);
        SLOT.fp.store(registers.fp, Ordering::Relaxed);
        SLOT.lr.store(registers.lr, Ordering::Relaxed);
        copy_stack(registers.sp, record)
    } else {
        NOT_ALIVE
    };
    SLOT.outcome.store(outcome, Ordering::Relaxed);
    SLOT.request.store(request(DONE, tid), Ordering::Release);
    SLOT.completions.fetch_add(1, Ordering::Release);
    futex_wake(&SLOT.completions);
}

/// Copies `[sp, min(sp + 64 KiB, stack end))` of the calling thread's own
/// stack into the slot.
fn copy_stack(sp: u64, record: &ThreadRecord) -> u32 {
    let sp = sp as usize;
    if !(record.stack_low..record.stack_high).contains(&sp) {
        return OFF_STACK;
    }
    let Some(start) = sp.checked_next_multiple_of(8) else {
        return OFF_STACK;
    };
    let end = record
        .stack_high
        .min(start.saturating_add(STACK_COPY_BYTES))
        & !7;
    let words = end.saturating_sub(start) / 8;
    let source = start as *const u64;
    let destination = SLOT.stack.get().cast::<u64>();
    for i in 0..words {
        // SAFETY: the handler runs on the thread whose record this is (the
        // request named its id and the record says it is alive), so
        // `[sp, stack_high)` is the live part of the stack we are running
        // on, mapped and readable; `[start, end)` lies inside it. Volatile,
        // because these bytes belong to the interrupted code, not to us.
        // The destination has `STACK_COPY_WORDS >= words` words, and only
        // this handler writes it (it holds `WRITING`).
        unsafe { destination.add(i).write(ptr::read_volatile(source.add(i))) };
    }
    SLOT.stack_start.store(start as u64, Ordering::Relaxed);
    SLOT.stack_words.store(words, Ordering::Relaxed);
    COPIED
}

/// # Safety
/// `context` must be the `ucontext_t` the kernel passed to an `SA_SIGINFO`
/// handler.
#[cfg(target_arch = "x86_64")]
unsafe fn interrupted_registers(context: *mut c_void) -> Registers {
    let context = context.cast::<libc::ucontext_t>();
    // SAFETY: per the contract; fields are read through the raw pointer,
    // without a reference to the whole (libc's type is larger than the
    // kernel's frame).
    unsafe {
        Registers {
            pc: (*context).uc_mcontext.gregs[libc::REG_RIP as usize] as u64,
            sp: (*context).uc_mcontext.gregs[libc::REG_RSP as usize] as u64,
            fp: (*context).uc_mcontext.gregs[libc::REG_RBP as usize] as u64,
            lr: 0,
        }
    }
}

/// # Safety
/// `context` must be the `ucontext_t` the kernel passed to an `SA_SIGINFO`
/// handler.
#[cfg(target_arch = "aarch64")]
unsafe fn interrupted_registers(context: *mut c_void) -> Registers {
    let context = context.cast::<libc::ucontext_t>();
    // SAFETY: per the contract; fields are read through the raw pointer.
    unsafe {
        Registers {
            pc: (*context).uc_mcontext.pc,
            sp: (*context).uc_mcontext.sp,
            fp: (*context).uc_mcontext.regs[29],
            lr: (*context).uc_mcontext.regs[30],
        }
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address to find waiters; `word` is
    // a live static. It cannot fail in a way that matters: at worst no one
    // is woken, and the capturer re-checks the slot when its wait ends.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

/// Sleeps while `word` still holds `seen`, at most `timeout`. Every way it
/// ends (a wake, the value having changed already, the timeout, `EINTR`)
/// sends the caller back to re-check the slot.
fn futex_wait(word: &AtomicU32, seen: u32, timeout: Duration) {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // SAFETY: FUTEX_WAIT reads the 32-bit word at a live, aligned address
    // and the timespec we pass by reference; it writes nothing.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seen,
            &timeout as *const libc::timespec,
        );
    }
}

fn tgkill(tid: i32, signal: c_int) -> io::Result<()> {
    // SAFETY: sends a signal, nothing else; passing our own process id
    // confines it to this process's threads, whatever `tid` is.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------
// Installing the handler

/// Who handles a signal now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disposition {
    Default,
    Ignored,
    Ours,
    Other,
}

impl Disposition {
    /// How `StackError::SignalInUse` describes it.
    fn describe(self) -> &'static str {
        match self {
            Self::Ignored => "is ignored (SIG_IGN) by the application",
            _ => "already has a handler installed by the application or another library",
        }
    }
}

fn handler_address() -> libc::sighandler_t {
    on_signal as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as libc::sighandler_t
}

fn classify(action: &libc::sigaction) -> Disposition {
    match action.sa_sigaction {
        libc::SIG_DFL => Disposition::Default,
        libc::SIG_IGN => Disposition::Ignored,
        handler if handler == handler_address() && action.sa_flags & libc::SA_SIGINFO != 0 => {
            Disposition::Ours
        }
        _ => Disposition::Other,
    }
}

/// The current disposition of `signal`.
pub(super) fn disposition(signal: c_int) -> io::Result<Disposition> {
    let mut current = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action only queries; `current` is a valid out
    // pointer, fully written when sigaction returns 0.
    let rc = unsafe { libc::sigaction(signal, ptr::null(), current.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: written by the successful sigaction above (and zeroed before).
    Ok(classify(unsafe { current.assume_init_ref() }))
}

/// Installs the handler for `signal` unless someone else handles or ignores
/// it. The caller serialises calls (the sampler registry's lock).
pub(super) fn install_handler(signal: c_int) -> Result<(), StackError> {
    let sigaction_error = |source| StackError::Sigaction { signal, source };
    match disposition(signal).map_err(sigaction_error)? {
        Disposition::Default => {}
        Disposition::Ours => return Ok(()),
        other => {
            return Err(StackError::SignalInUse {
                signal,
                disposition: other.describe(),
            });
        }
    }
    // SAFETY: sigaction is a plain C struct for which all-zero is valid
    // (no handler, no flags, empty mask).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler_address();
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
    let mut previous = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: `action` is fully initialised and names a handler with the
    // SA_SIGINFO signature; `previous` is a valid out pointer. Swapping
    // (rather than only setting) tells us what we replaced.
    let rc = unsafe { libc::sigaction(signal, &action, previous.as_mut_ptr()) };
    if rc != 0 {
        return Err(sigaction_error(io::Error::last_os_error()));
    }
    // SAFETY: written by the successful sigaction above.
    let previous = unsafe { previous.assume_init() };
    match classify(&previous) {
        Disposition::Default | Disposition::Ours => Ok(()),
        other => {
            // Someone installed theirs between our check and our swap: put
            // it back and step aside.
            // SAFETY: restores the action the kernel just handed us.
            unsafe { libc::sigaction(signal, &previous, ptr::null_mut()) };
            Err(StackError::SignalInUse {
                signal,
                disposition: other.describe(),
            })
        }
    }
}

// ---------------------------------------------------------------------------
// The capturing side

/// The capturing side of the slot: arms requests and reads copies. There
/// is one, behind the sampler's capture lock, so requests never overlap.
pub(super) struct SlotOwner {
    /// The record `SLOT.target` points at, kept alive while a handler may
    /// still read it (a request that timed out while its handler was
    /// writing keeps it until the next capture reclaims the slot).
    target: Option<Arc<ThreadRecord>>,
}

/// A completed copy, readable until dropped; dropping it frees the slot.
pub(super) struct Interrupted<'a> {
    owner: &'a mut SlotOwner,
    pub(super) registers: Registers,
    /// The address of `stack[0]`.
    pub(super) stack_start: u64,
    /// The copied stack; empty when the stack pointer was outside the
    /// thread's recorded stack.
    pub(super) stack: &'a [u64],
}

impl Drop for Interrupted<'_> {
    fn drop(&mut self) {
        self.owner.release();
    }
}

impl SlotOwner {
    /// # Safety
    /// At most one `SlotOwner` may exist in the process.
    pub(super) const unsafe fn new() -> Self {
        Self { target: None }
    }

    /// Interrupts `thread` with `signal` and waits, at most `timeout`, for
    /// its handler to copy its registers and stack.
    pub(super) fn interrupt(
        &mut self,
        thread: &Arc<ThreadRecord>,
        signal: c_int,
        timeout: Duration,
    ) -> Result<Interrupted<'_>, CaptureError> {
        let tid = thread.tid;
        let deadline = Instant::now().checked_add(timeout);
        self.reclaim(deadline)?;
        if !thread.alive.load(Ordering::Acquire) {
            return Err(CaptureError::ThreadExited { tid });
        }
        SLOT.target
            .store(Arc::as_ptr(thread).cast_mut(), Ordering::Relaxed);
        self.target = Some(thread.clone());
        SLOT.request.store(request(ARMED, tid), Ordering::Release);

        if let Err(source) = tgkill(tid, signal) {
            // No signal of ours is on its way; withdraw the request (a
            // stale one could still take it, so withdraw properly).
            if self.withdraw(tid) {
                drop(self.take_copy());
            }
            return Err(match source.raw_os_error() {
                Some(libc::ESRCH) => CaptureError::ThreadExited { tid },
                _ => CaptureError::Signal { tid, source },
            });
        }
        if !wait_for_handler(deadline) && !self.withdraw(tid) {
            return Err(CaptureError::Timeout {
                tid,
                waited: timeout,
            });
        }
        self.take_copy()
    }

    /// Withdraws an armed request for `tid`. Returns whether a handler took
    /// it first and has finished (the copy is then ready); `false` when the
    /// request was withdrawn, or when its handler is still writing after
    /// [`HANDLER_GRACE`] (the slot then stays taken until a later capture
    /// reclaims it).
    fn withdraw(&mut self, tid: i32) -> bool {
        let withdrawn = SLOT.request.compare_exchange(
            request(ARMED, tid),
            request(IDLE, 0),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if withdrawn.is_ok() {
            self.target = None;
            SLOT.target.store(ptr::null_mut(), Ordering::Relaxed);
            return false;
        }
        // The handler moved the request on (WRITING or DONE): it copies
        // without blocking, so it finishes shortly.
        wait_for_handler(Instant::now().checked_add(HANDLER_GRACE))
    }

    /// Makes the slot idle. A handler still writing for an earlier request
    /// that timed out is waited for until `deadline`.
    fn reclaim(&mut self, deadline: Option<Instant>) -> Result<(), CaptureError> {
        loop {
            let word = SLOT.request.load(Ordering::Acquire);
            match phase(word) {
                IDLE => return Ok(()),
                DONE => self.release(),
                WRITING => {
                    if !wait_for_handler(deadline) {
                        return Err(CaptureError::Busy);
                    }
                }
                _ => {
                    // ARMED: every path of `interrupt` withdraws or
                    // completes its request, so this is unreachable; should
                    // it happen, withdraw it the safe way.
                    let _ = SLOT.request.compare_exchange(
                        word,
                        request(IDLE, 0),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
            }
        }
    }

    /// Frees the slot. Only called in `DONE` or after a withdrawal, when no
    /// handler can be writing.
    fn release(&mut self) {
        SLOT.target.store(ptr::null_mut(), Ordering::Relaxed);
        SLOT.request.store(request(IDLE, 0), Ordering::Release);
        self.target = None;
    }

    /// Reads the copy of a `DONE` request.
    fn take_copy(&mut self) -> Result<Interrupted<'_>, CaptureError> {
        let tid = self.target.as_ref().map_or(0, |t| t.tid);
        let registers = Registers {
            pc: SLOT.pc.load(Ordering::Relaxed),
            sp: SLOT.sp.load(Ordering::Relaxed),
            fp: SLOT.fp.load(Ordering::Relaxed),
            lr: SLOT.lr.load(Ordering::Relaxed),
        };
        let (stack_start, words) = match SLOT.outcome.load(Ordering::Relaxed) {
            COPIED => (
                SLOT.stack_start.load(Ordering::Relaxed),
                SLOT.stack_words.load(Ordering::Relaxed),
            ),
            OFF_STACK => (0, 0),
            _ => {
                self.release();
                return Err(CaptureError::ThreadExited { tid });
            }
        };
        // SAFETY: the request is DONE (seen with Acquire, pairing with the
        // handler's Release), so the handler's writes are visible and no
        // handler can write again until this owner re-arms, which needs
        // `&mut self`, borrowed by the returned copy. `words` is at most
        // STACK_COPY_WORDS.
        let stack = unsafe {
            std::slice::from_raw_parts(
                SLOT.stack.get().cast::<u64>().cast_const(),
                words.min(STACK_COPY_WORDS),
            )
        };
        Ok(Interrupted {
            owner: self,
            registers,
            stack_start,
            stack,
        })
    }
}

/// Waits until the request is `DONE`, at most until `deadline` (forever
/// when `None`). Returns whether it is.
fn wait_for_handler(deadline: Option<Instant>) -> bool {
    loop {
        // Read the futex word before the phase: a handler that finishes in
        // between changes the word, so the wait below returns at once.
        let seen = SLOT.completions.load(Ordering::Acquire);
        if phase(SLOT.request.load(Ordering::Acquire)) == DONE {
            return true;
        }
        let wait = match deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left,
                _ => return false,
            },
            None => Duration::from_secs(1),
        };
        futex_wait(&SLOT.completions, seen, wait);
    }
}
