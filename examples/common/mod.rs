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

/// The calling thread's CPU time (wall time where the platform cannot
/// tell).
pub fn thread_cpu() -> Duration {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    #[cfg(not(unix))]
    {
        use std::sync::OnceLock;
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

/// Burns `d` of CPU time on the calling thread, without yielding: a hog's
/// poll that does the same work however busy the machine is (a spin timed
/// by the wall clock would count time the OS ran something else).
pub fn spin_cpu(d: Duration) {
    let start = thread_cpu();
    while thread_cpu() - start < d {
        std::hint::spin_loop();
    }
}

/// One busy process per core (`sh -c 'while :; do :; done'`, each under
/// `timeout 60` as a safety net), ended by PID when dropped: a busy host.
pub struct BusyProcesses(Vec<std::process::Child>);

impl BusyProcesses {
    /// Starts them.
    pub fn one_per_core() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let children = (0..cores)
            .map(|_| {
                std::process::Command::new("timeout")
                    .args(["60", "sh", "-c", "while :; do :; done"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("start a busy process (needs `timeout` and `sh`)")
            })
            .collect();
        BusyProcesses(children)
    }
}

impl Drop for BusyProcesses {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                #[cfg(unix)]
                if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                    // SAFETY: no memory is passed; `pid` is our own child,
                    // not reaped yet, so the PID is still its. `timeout`
                    // passes SIGTERM on to the loop it runs.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
                #[cfg(not(unix))]
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
