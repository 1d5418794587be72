//! Captures of real threads: sleeping, spinning, reading, exited, blocking
//! the signal, and hundreds while they allocate and unwind.
//!
//! The tests share the default signal's sampler, as two watchdogs in one
//! process would. Tests that install foreign handlers use signals of their
//! own, so they never disturb the others.
//!
//! Valgrind: run memcheck over these tests with
//! `--skip hundreds_of_captures`. Under memcheck the stress test draws
//! "invalid read/write" reports inside its busy threads' own leaf frames
//! (their red zone, below the stack pointer), which nothing but those
//! frames touches natively: the handler writes only its static slot, and
//! the busy threads check their own results. A 40-line program whose
//! `SA_ONSTACK` handler only wakes a futex on a static word draws the same
//! reports, so they are memcheck's view of signal delivery, not ours.

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::thread::ThreadRecord;
use super::{StackSampler, ThreadHandle};
use crate::stack::{CaptureError, Stack, StackError};

/// How long a capture may wait for its handler before the test fails. A
/// bound on an event, not a pause: captures answer in microseconds.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(10);

/// The sleeping thread sleeps this long: a stuck poll of the kind the
/// watchdog reports (its threshold is 100 ms).
const STUCK_FOR: Duration = Duration::from_millis(600);

fn sampler() -> &'static StackSampler {
    StackSampler::install(StackSampler::default_signal())
        .expect("the default signal is free in the test process")
}

/// Starts `body` on a new thread and returns once the thread has
/// registered itself for capture.
fn spawn_registered<T: Send + 'static>(
    body: impl FnOnce() -> T + Send + 'static,
) -> (ThreadHandle, JoinHandle<T>) {
    let (registered, handle) = mpsc::channel();
    let join = thread::Builder::new()
        .name("pulse-stack-test".into())
        .spawn(move || {
            registered
                .send(ThreadHandle::current().expect("a std thread can register"))
                .expect("the test waits for the handle");
            body()
        })
        .expect("spawn a test thread");
    (handle.recv().expect("the thread registers"), join)
}

/// Waits until another thread sets `flag`.
fn wait_for(flag: &AtomicBool) {
    let give_up = Instant::now() + CAPTURE_TIMEOUT;
    while !flag.load(Ordering::Acquire) {
        assert!(Instant::now() < give_up, "the thread never got there");
        thread::yield_now();
    }
}

fn capture(handle: &ThreadHandle) -> Stack {
    sampler()
        .capture(handle, CAPTURE_TIMEOUT)
        .unwrap_or_else(|error| panic!("capture failed: {error}"))
}

/// The handler and the kernel's trampoline never show: the walk starts
/// from the interrupted registers.
fn assert_no_capture_machinery(stack: &Stack) {
    for needle in ["on_signal", "stack::signal::serve", "__restore_rt"] {
        assert_eq!(stack.position(needle), None, "{needle} in\n{stack}");
    }
}

#[inline(never)]
fn pulse_stack_test_sleeping_here(entered: &Barrier) {
    entered.wait();
    thread::sleep(STUCK_FOR);
    // Keeps the sleep from becoming a tail call in release builds, which
    // would take this function off the stack.
    black_box(entered);
}

#[test]
fn captures_a_thread_stuck_in_sleep() {
    let entered = Arc::new(Barrier::new(2));
    let (handle, join) = spawn_registered({
        let entered = entered.clone();
        move || pulse_stack_test_sleeping_here(&entered)
    });
    entered.wait();
    // glibc sleeps with clock_nanosleep, older libcs with nanosleep.
    wait_until_blocked_in(
        handle.tid(),
        &[libc::SYS_clock_nanosleep, libc::SYS_nanosleep],
    );
    let stack = capture(&handle);
    join.join().expect("the sleeper finishes its sleep");

    // Printed with `--nocapture`; the README's example comes from here.
    eprintln!("captured while sleeping:\n{stack}");
    assert!(
        stack.position("pulse_stack_test_sleeping_here").is_some(),
        "{stack}"
    );
    // Frame 0 is the interrupted function: glibc's sleep, blocked in its
    // system call. (musl blocks in a generic syscall stub instead.)
    if cfg!(target_env = "gnu") {
        assert_eq!(stack.position("nanosleep"), Some(0), "{stack}");
    }
    assert_no_capture_machinery(&stack);
}

#[inline(never)]
fn pulse_stack_test_spinning_here(spinning: &AtomicBool, stop: &AtomicBool) -> u64 {
    let started = Instant::now();
    spinning.store(true, Ordering::Release);
    let mut turns = 0u64;
    // Spins until the test has captured it; the clock is read rarely, as a
    // safety stop, so the thread is nearly always in this very function.
    while !stop.load(Ordering::Relaxed) {
        turns = black_box(turns.wrapping_add(1));
        if turns % (1 << 20) == 0 && started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    turns
}

#[test]
fn captures_a_thread_spinning_on_the_cpu() {
    let spinning = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (handle, join) = spawn_registered({
        let (spinning, stop) = (spinning.clone(), stop.clone());
        move || pulse_stack_test_spinning_here(&spinning, &stop)
    });
    wait_for(&spinning);
    let stack = capture(&handle);
    stop.store(true, Ordering::Relaxed);
    join.join().expect("the spinner stops");

    // Frame 0 is the spinning function itself, or what it calls in the
    // loop (the atomic load, in a debug build).
    let position = stack.position("pulse_stack_test_spinning_here");
    assert!(matches!(position, Some(0..=3)), "{stack}");
    assert_no_capture_machinery(&stack);
}

#[inline(never)]
fn pulse_stack_test_reading_here(fd: i32) -> isize {
    let mut byte = 0u8;
    // SAFETY: reads one byte into a live local from a pipe the caller owns.
    let read = unsafe { libc::read(fd, (&raw mut byte).cast(), 1) };
    black_box(byte);
    read
}

/// Waits until thread `tid` of this process is blocked in one of
/// `syscalls`, as the kernel reports it in `/proc/self/task/<tid>/syscall`
/// (the number of the call a blocked thread is in).
fn wait_until_blocked_in(tid: i32, syscalls: &[libc::c_long]) {
    let path = format!("/proc/self/task/{tid}/syscall");
    let give_up = Instant::now() + CAPTURE_TIMEOUT;
    loop {
        let report = std::fs::read_to_string(&path).expect("read the thread's syscall");
        let number = report
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok());
        if number.is_some_and(|n| syscalls.contains(&n)) {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "thread {tid} never blocked in {syscalls:?}; last report: {report}"
        );
        thread::yield_now();
    }
}

/// A pipe's read and write ends (`std::io::pipe` is newer than the
/// crate's minimum Rust).
fn pipe() -> (OwnedFd, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors into the array on success;
    // each is then owned by exactly one `OwnedFd`.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0, "pipe failed");
        (
            OwnedFd::from_raw_fd(fds[0]),
            File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    }
}

#[test]
fn a_read_interrupted_by_a_capture_is_restarted_not_failed() {
    let (reader, mut writer) = pipe();
    let (handle, join) =
        spawn_registered(move || pulse_stack_test_reading_here(reader.as_raw_fd()));
    wait_until_blocked_in(handle.tid(), &[libc::SYS_read]);
    let stack = capture(&handle);
    writer.write_all(b"x").expect("write to the pipe");
    let read = join.join().expect("the reader finishes");

    assert!(
        stack.position("pulse_stack_test_reading_here").is_some(),
        "{stack}"
    );
    // SA_RESTART: the interrupted read went on and got the byte, instead
    // of failing with EINTR.
    assert_eq!(read, 1, "the read returned {read}");
}

/// Stack left below the deepest frame of the edge test: far less than the
/// kernel needs to push a signal frame (`AT_MINSIGSTKSZ`, 2 to 11 KiB on
/// x86-64), enough for the spin loop's own calls.
const EDGE_LEFT: usize = 1024;

#[inline(never)]
fn pulse_stack_test_at_the_edge_here(low: usize, ready: &AtomicBool, stop: &AtomicBool) -> usize {
    let pad = black_box([0u8; 256]);
    let here = pad.as_ptr() as usize;
    if here.saturating_sub(low) > EDGE_LEFT {
        // Not a tail call: the sum needs this frame's `pad` afterwards.
        return pulse_stack_test_at_the_edge_here(low, ready, stop) + usize::from(pad[0]);
    }
    ready.store(true, Ordering::Release);
    while !stop.load(Ordering::Relaxed) {
        std::hint::spin_loop();
    }
    here - low
}

/// Turns off the calling thread's alternate signal stack.
fn disable_alternate_signal_stack() {
    let disable = libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: libc::SS_DISABLE,
        ss_size: 0,
    };
    // SAFETY: disabling needs no memory; the old stack is not asked for.
    // std unmaps its stack at thread exit whether or not it is enabled.
    assert_eq!(
        unsafe { libc::sigaltstack(&disable, std::ptr::null_mut()) },
        0
    );
}

/// Whether the calling thread has an alternate signal stack.
fn has_alternate_signal_stack() -> bool {
    // SAFETY: a null new stack only queries; the out pointer is a local.
    unsafe {
        let mut current: libc::stack_t = std::mem::zeroed();
        assert_eq!(libc::sigaltstack(std::ptr::null(), &mut current), 0);
        current.ss_flags & libc::SS_DISABLE == 0
    }
}

#[test]
fn captures_a_thread_at_the_edge_of_its_stack_without_overflowing_it() {
    let (ready, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (registered, handle) = mpsc::channel();
    let join = thread::Builder::new()
        .name("pulse-stack-edge".into())
        .stack_size(256 * 1024)
        .spawn({
            let (ready, stop) = (ready.clone(), stop.clone());
            move || {
                // std gives its threads one, for its stack-overflow report.
                assert!(
                    has_alternate_signal_stack(),
                    "the premise: an alternate signal stack"
                );
                let me = ThreadHandle::current().expect("registers");
                let low = me.record.stack_low;
                registered.send(me).unwrap();
                pulse_stack_test_at_the_edge_here(low, &ready, &stop)
            }
        })
        .expect("spawn");
    let handle = handle.recv().expect("the thread registers");
    wait_for(&ready);

    // Without SA_ONSTACK the kernel could not push the signal frame here:
    // the thread would die of a stack overflow (and the process with it).
    let stack = capture(&handle);
    stop.store(true, Ordering::Relaxed);
    let left = join.join().expect("the thread survives the capture");

    // The kernel reports its frame size in AT_MINSIGSTKSZ (Linux 5.14+;
    // not under Valgrind); MINSIGSTKSZ, 2 KiB, is the floor.
    // SAFETY: getauxval only reads the auxiliary vector.
    let reported = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
    let kernel_frame = reported.max(libc::MINSIGSTKSZ);
    assert!(
        left < kernel_frame,
        "only {left} bytes were left, the kernel needs {kernel_frame}"
    );
    assert!(
        matches!(
            stack.position("pulse_stack_test_at_the_edge_here"),
            Some(0..=2)
        ),
        "{stack}"
    );
}

#[test]
fn capturing_an_exited_thread_is_an_error() {
    let (handle, join) = spawn_registered(|| ());
    join.join().expect("the thread exits");
    assert!(!handle.is_alive());

    match sampler().capture(&handle, CAPTURE_TIMEOUT) {
        Err(CaptureError::ThreadExited { tid }) => assert_eq!(tid, handle.tid()),
        other => panic!("expected ThreadExited, got {other:?}"),
    }
}

#[test]
fn capturing_a_thread_gone_without_notice_is_an_error_and_leaves_no_request() {
    let (exited, join) = spawn_registered(|| ());
    join.join().expect("the thread exits");
    // A record still claiming the thread is alive, as if it had exited
    // without running its thread-local destructors: the signal itself
    // finds no thread.
    let stale = ThreadHandle {
        record: Arc::new(ThreadRecord {
            tid: exited.tid(),
            stack_low: exited.record.stack_low,
            stack_high: exited.record.stack_high,
            alive: AtomicBool::new(true),
        }),
    };
    match sampler().capture(&stale, CAPTURE_TIMEOUT) {
        Err(CaptureError::ThreadExited { tid }) => assert_eq!(tid, exited.tid()),
        other => panic!("expected ThreadExited, got {other:?}"),
    }

    // The failed request was withdrawn: the next capture works.
    let stop = Arc::new(AtomicBool::new(false));
    let spinning = Arc::new(AtomicBool::new(false));
    let (live, join) = spawn_registered({
        let (spinning, stop) = (spinning.clone(), stop.clone());
        move || pulse_stack_test_spinning_here(&spinning, &stop)
    });
    wait_for(&spinning);
    let stack = capture(&live);
    stop.store(true, Ordering::Relaxed);
    join.join().expect("the spinner stops");
    assert!(
        stack.position("pulse_stack_test_spinning_here").is_some(),
        "{stack}"
    );
}

fn set_signal_mask(signal: i32, how: libc::c_int) {
    // SAFETY: a zeroed sigset_t is a valid argument to sigemptyset, which
    // initialises it; pthread_sigmask only changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        assert_eq!(libc::pthread_sigmask(how, &set, std::ptr::null_mut()), 0);
    }
}

/// Says it is here, then waits: a capture after the first message finds
/// the thread in this function, whether still sending or already waiting.
#[inline(never)]
fn pulse_stack_test_waiting_here(here: &mpsc::Sender<()>, release: &mpsc::Receiver<()>) {
    here.send(()).expect("the test listens");
    release.recv().expect("the test releases the thread");
    black_box(release);
}

#[test]
fn a_thread_blocking_the_signal_times_out_and_its_late_signal_is_harmless() {
    let signal = sampler().signal();
    let (blocked_tx, blocked) = mpsc::channel();
    let (unblock, unblock_rx) = mpsc::channel();
    let (unblocked_tx, unblocked) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let (handle, join) = spawn_registered(move || {
        set_signal_mask(signal, libc::SIG_BLOCK);
        blocked_tx.send(()).unwrap();
        unblock_rx.recv().unwrap();
        // The signal left pending by the timed-out capture is delivered
        // before this call returns; its handler must find no request.
        set_signal_mask(signal, libc::SIG_UNBLOCK);
        pulse_stack_test_waiting_here(&unblocked_tx, &release_rx);
    });
    blocked.recv().unwrap();

    let timeout = Duration::from_millis(200);
    match sampler().capture(&handle, timeout) {
        Err(CaptureError::Timeout { tid, waited }) => {
            assert_eq!((tid, waited), (handle.tid(), timeout));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    unblock.send(()).unwrap();
    unblocked.recv().unwrap();
    // The late handler touched nothing; a new capture works and finds the
    // thread where it waits now.
    let stack = capture(&handle);
    release.send(()).unwrap();
    join.join().expect("the thread finishes");
    assert!(
        stack.position("pulse_stack_test_waiting_here").is_some(),
        "{stack}"
    );
}

#[inline(never)]
fn pulse_stack_test_churning_here(stop: &AtomicBool) -> u64 {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut strings: Vec<String> = (0..32).map(|i| format!("{round}-{i}")).collect();
        strings.sort_unstable();
        // Would catch a capture that corrupted this thread's stack: the
        // sort's work lives in its frames and red zone.
        assert!(
            black_box(&strings).is_sorted(),
            "round {round}: {strings:?}"
        );
        if round % 4 == 0 {
            // A real unwind through the system unwinder (which takes the
            // loader's lock to find unwind tables) without the panic hook's
            // noise: the handler must not care what it interrupts.
            let caught = std::panic::catch_unwind(|| std::panic::resume_unwind(Box::new(round)));
            assert!(caught.is_err());
        }
        round += 1;
    }
    round
}

#[test]
fn hundreds_of_captures_of_threads_that_allocate_and_unwind() {
    const BUSY_THREADS: usize = 4;
    const CAPTURING_THREADS: usize = 2;
    const CAPTURES_EACH: usize = 150;

    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(BUSY_THREADS + 1));
    let (handles, joins): (Vec<_>, Vec<_>) = (0..BUSY_THREADS)
        .map(|_| {
            let (stop, started) = (stop.clone(), started.clone());
            spawn_registered(move || {
                // These threads take the handler on their own stacks, as
                // threads created outside std do; the other tests' threads
                // take it on std's alternate stack.
                disable_alternate_signal_stack();
                started.wait();
                pulse_stack_test_churning_here(&stop)
            })
        })
        .unzip();
    started.wait();

    // Two capturing threads, as two watchdogs would: their captures take
    // turns on the one slot.
    let results: Vec<Result<Stack, CaptureError>> = thread::scope(|scope| {
        let capturers: Vec<_> = (0..CAPTURING_THREADS)
            .map(|c| {
                let handles = &handles;
                scope.spawn(move || {
                    (0..CAPTURES_EACH)
                        .map(|i| {
                            let target = &handles[(c + i) % handles.len()];
                            sampler().capture(target, CAPTURE_TIMEOUT)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        capturers
            .into_iter()
            .flat_map(|c| c.join().expect("a capturing thread"))
            .collect()
    });
    stop.store(true, Ordering::Relaxed);
    for join in joins {
        join.join().expect("a busy thread survives being captured");
    }

    let total = results.len();
    let mut captured = 0;
    let mut in_churn = 0;
    for result in &results {
        match result {
            Ok(stack) => {
                captured += 1;
                if stack.position("pulse_stack_test_churning_here").is_some() {
                    in_churn += 1;
                }
            }
            // A slow scheduler may time out; anything else is a bug.
            Err(CaptureError::Timeout { .. }) => {}
            Err(other) => panic!("capture failed: {other}"),
        }
    }
    assert!(
        captured * 10 >= total * 9,
        "{captured} of {total} captures succeeded"
    );
    assert!(
        in_churn * 10 >= captured * 9,
        "only {in_churn} of {captured} stacks reached the busy function"
    );
}

extern "C" fn foreign_handler(_signal: libc::c_int) {}

/// Installs `handler` (an address or `SIG_IGN`) for `signal`, as an
/// application would.
fn set_disposition(signal: i32, handler: libc::sighandler_t) {
    // SAFETY: all-zero is a valid sigaction; the handler is a valid
    // `extern "C" fn(c_int)` or SIG_IGN.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        assert_eq!(libc::sigaction(signal, &action, std::ptr::null_mut()), 0);
    }
}

/// The handler installed for `signal` now.
fn current_handler(signal: i32) -> libc::sighandler_t {
    // SAFETY: a null new action only queries; the out pointer is a valid
    // local.
    unsafe {
        let mut now: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(signal, std::ptr::null(), &mut now), 0);
        now.sa_sigaction
    }
}

fn foreign_handler_address() -> libc::sighandler_t {
    foreign_handler as extern "C" fn(libc::c_int) as libc::sighandler_t
}

#[test]
fn install_leaves_a_signal_the_application_handles_or_ignores_alone() {
    // Signals of this test's own: the other tests use the default one.
    let handled = libc::SIGRTMIN() + 9;
    set_disposition(handled, foreign_handler_address());
    let error = StackSampler::install(handled).expect_err("the signal is taken");
    assert!(
        matches!(error, StackError::SignalInUse { signal, .. } if signal == handled),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&format!("signal {handled} ")),
        "{error}"
    );
    // Still the application's handler.
    assert_eq!(current_handler(handled), foreign_handler_address());

    let ignored = libc::SIGRTMIN() + 11;
    set_disposition(ignored, libc::SIG_IGN);
    let error = StackSampler::install(ignored).expect_err("the signal is ignored");
    assert!(error.to_string().contains("SIG_IGN"), "{error}");
    assert_eq!(current_handler(ignored), libc::SIG_IGN);
}

#[test]
fn captures_stop_once_the_application_replaces_the_handler() {
    let signal = libc::SIGRTMIN() + 10;
    let sampler = StackSampler::install(signal).expect("the signal is free");
    let here = ThreadHandle::current().expect("the test thread registers");
    set_disposition(signal, foreign_handler_address());

    match sampler.capture(&here, CAPTURE_TIMEOUT) {
        Err(CaptureError::HandlerReplaced { signal: s }) => assert_eq!(s, signal),
        other => panic!("expected HandlerReplaced, got {other:?}"),
    }
    let error = StackSampler::install(signal).expect_err("the handler is no longer ours");
    assert!(matches!(error, StackError::SignalInUse { .. }), "{error:?}");
}

#[test]
fn install_shares_one_sampler_per_signal() {
    let first = sampler();
    let second = StackSampler::install(StackSampler::default_signal()).expect("installed");
    assert!(std::ptr::eq(first, second));
    assert_eq!(first.signal(), libc::SIGRTMIN() + 6);
}

#[test]
fn install_rejects_signals_that_are_not_real_time() {
    for signal in [0, libc::SIGSEGV, libc::SIGPROF, libc::SIGRTMAX() + 1] {
        match StackSampler::install(signal) {
            Err(StackError::InvalidSignal { signal: s, .. }) => assert_eq!(s, signal),
            other => panic!("signal {signal}: expected InvalidSignal, got {other:?}"),
        }
    }
}

#[test]
fn a_thread_registers_once_with_its_own_id_and_stack() {
    let first = ThreadHandle::current().expect("registers");
    let second = ThreadHandle::current().expect("registers again");
    assert!(Arc::ptr_eq(&first.record, &second.record));
    assert_eq!(first.tid(), super::thread::gettid());
    let local = 0u8;
    let here = std::ptr::addr_of!(local) as usize;
    assert!((first.record.stack_low..first.record.stack_high).contains(&here));
    assert!(first.is_alive());
}
