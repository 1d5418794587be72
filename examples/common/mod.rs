//! Helpers shared by the examples.
#![allow(dead_code)] // each example uses some of them

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Burns CPU on the calling thread until the wall clock has advanced by
/// `d`, without yielding: a hog's poll, as a user's code would write it.
pub fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Rounds of [`work`]'s loop per microsecond on this machine.
static ROUNDS_PER_US: AtomicU64 = AtomicU64::new(0);

/// Computes for about `d` of CPU time: a fixed amount of work, calibrated
/// by [`calibrate`], rather than a spin until the wall clock says `d`
/// (which would finish early, in CPU terms, on a thread the OS preempts).
/// Use it where throughputs are compared.
#[inline(never)] // the same machine code for every caller: a fair unit of work
pub fn work(d: Duration) {
    let rounds = ROUNDS_PER_US.load(Relaxed) * d.as_nanos() as u64 / 1_000;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..rounds {
        x = std::hint::black_box(x.rotate_left(5) ^ 0xA5A5_A5A5).wrapping_mul(3);
    }
    std::hint::black_box(x);
}

/// Calibrates [`work`]: the fastest of a few timed runs, the one the OS
/// least interrupted.
pub fn calibrate() {
    const PROBE: u64 = 1_000;
    ROUNDS_PER_US.store(PROBE, Relaxed);
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        work(Duration::from_millis(1));
        best = best.min(t.elapsed());
    }
    let per_us = PROBE as f64 * 1e-3 / best.as_secs_f64();
    ROUNDS_PER_US.store(per_us.max(1.0) as u64, Relaxed);
}

/// CPU time used so far by this process's threads whose name starts with
/// `prefix` (Linux: the scheduler's own nanosecond count from
/// `/proc/self/task/*/schedstat`; `None` elsewhere).
pub fn threads_cpu(prefix: &str) -> Option<Duration> {
    let mut total_ns = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = entry.ok()?.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.trim_end().starts_with(prefix) {
            continue;
        }
        let schedstat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        total_ns += schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(Duration::from_nanos(total_ns))
}

/// The process's resident set size, in bytes (Linux: from /proc).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The median of `xs`.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}
