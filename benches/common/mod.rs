//! Helpers shared by the benches.

/// CPU time of the calling thread, or wall time where the platform cannot
/// tell. Measuring in thread CPU time keeps other load on the machine out of
/// the figures.
#[cfg(unix)]
pub fn thread_time_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall time since first use: this platform has no thread CPU clock here.
#[cfg(not(unix))]
pub fn thread_time_ns() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
