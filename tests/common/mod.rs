//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_pulse::{PreemptionHooks, TaskInfo, Tier};

/// Burns `d` of CPU time on the calling thread, without yielding: a hog's
/// poll. Counted in the thread's CPU time, not the wall clock's, so a hog is
/// as big a hog on a loaded machine (where the OS also runs other things
/// while it spins, which tokio-pulse does not blame it for) as on a quiet
/// one.
pub fn spin(d: Duration) {
    let start = thread_cpu();
    while thread_cpu() - start < d {
        std::hint::spin_loop();
    }
}

/// The calling thread's CPU time (wall time where the platform cannot tell).
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

/// One tier change seen by [`TierEvents`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub from: Tier,
    pub to: Tier,
}

/// Hooks that forward every tier change to a channel, so tests wait for the
/// event itself instead of sleeping and hoping.
pub struct TierEvents(mpsc::UnboundedSender<Change>);

impl TierEvents {
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Change>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(TierEvents(tx)), rx)
    }
}

impl PreemptionHooks for TierEvents {
    fn on_tier_change(&self, task: &TaskInfo<'_>, from: Tier, to: Tier) {
        let _ = self.0.send(Change {
            name: task.name().unwrap_or("").to_owned(),
            from,
            to,
        });
    }
}

/// Waits (up to `within`) for the first change of task `name` matching `pred`.
pub async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<Change>,
    within: Duration,
    name: &str,
    pred: impl Fn(&Change) -> bool,
) -> Change {
    tokio::time::timeout(within, async {
        loop {
            let c = rx.recv().await.expect("hooks dropped");
            if c.name == name && pred(&c) {
                return c;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching tier change for {name} within {within:?}"))
}

pub mod busy;
pub mod http;
pub mod logs;
pub mod prometheus;

/// Sleeps to 1 ms deadlines for `run`, returning how late each wake-up was,
/// ignoring the first `settle` (while hogs are being classified).
pub async fn probe_lateness(run: Duration, settle: Duration) -> Vec<Duration> {
    let start = Instant::now();
    let mut lateness = Vec::new();
    while start.elapsed() < run {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1);
        tokio::time::sleep_until(deadline).await;
        if start.elapsed() >= settle {
            lateness.push(tokio::time::Instant::now() - deadline);
        }
    }
    lateness
}

/// The `p`-th quantile (0.0 to 1.0) of `samples`.
pub fn quantile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p) as usize]
}

/// Names of this process's threads (Linux: from /proc).
#[cfg(target_os = "linux")]
pub fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim_end().to_owned())
        .collect()
}

/// Serialises the tests that hold it: tests whose assertions about a
/// well-behaved task would be skewed by other tests' hogs competing for the
/// same two cores.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// The calling thread's name ("" if it has none).
pub fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

/// Whether a thread of that name belongs to an isolation pool.
pub fn on_pool(thread_name: &str) -> bool {
    thread_name.starts_with("pulse-isolate-")
}

/// How many of `threads` (the threads successive tasks ran on) come before
/// the first pool thread, and whether every one from there on is a pool
/// thread.
pub fn judged_then_isolated(threads: &[String]) -> (usize, bool) {
    let judged = threads.iter().take_while(|t| !on_pool(t)).count();
    (judged, threads[judged..].iter().all(|t| on_pool(t)))
}

/// Like [`serial`], for tests that are not async.
pub fn serial_blocking() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A multi-thread runtime with two workers (this project's machines have two
/// cores) and every driver enabled.
pub fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Formatted output of a `tracing_subscriber::fmt` subscriber, kept in memory.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}
