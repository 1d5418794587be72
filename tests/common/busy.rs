//! A busy host, made on purpose: busy processes beside the test, and a
//! cgroup (v1 `cpu` controller) with a CPU quota. Both are cleaned up when
//! their guard drops, also when the test fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The longest a busy process may outlive a test that could not end it
/// (the test process was killed): `timeout` ends it then.
const SAFETY_NET_SECS: u32 = 60;

/// Processes that spin (`sh -c 'while :; do :; done'`), each under
/// `timeout 60` as a safety net. Each is ended by its PID when the guard
/// drops, never by name.
pub struct BusyProcesses {
    children: Vec<Child>,
}

impl BusyProcesses {
    /// One busy process per core.
    pub fn one_per_core() -> Self {
        Self::start(cores())
    }

    /// `n` busy processes.
    pub fn start(n: usize) -> Self {
        let mut busy = BusyProcesses {
            children: Vec::new(),
        };
        for _ in 0..n {
            busy.children.push(spawn_busy(false));
        }
        busy
    }

    /// How many run.
    pub fn len(&self) -> usize {
        self.children.len()
    }
}

/// Spawns `timeout 60 sh -c 'while :; do :; done'`; with `wait_for_go`, a
/// shell first waits for a line on its stdin (time to put it in a cgroup)
/// and then execs that.
fn spawn_busy(wait_for_go: bool) -> Child {
    let busy = format!("exec timeout {SAFETY_NET_SECS} sh -c 'while :; do :; done'");
    let script = if wait_for_go {
        format!("read go; {busy}")
    } else {
        busy
    };
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a busy process (sh and timeout)")
}

/// Ends `child` (a `timeout` process, or the shell about to exec one) by
/// its PID: `SIGTERM`, which `timeout` passes on to the loop it runs.
fn end(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = libc::pid_t::try_from(child.id()).expect("a PID fits pid_t");
    // SAFETY: kill has no memory preconditions; `pid` is our own child,
    // not yet reaped (try_wait above), so the PID cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // A shell still waiting on `read` ends on end of input too.
    drop(child.stdin.take());
    let _ = child.wait();
}

impl Drop for BusyProcesses {
    fn drop(&mut self) {
        for child in &mut self.children {
            end(child);
        }
    }
}

/// The available cores.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Where the cgroup v1 `cpu` controller is mounted.
const CPU_CONTROLLER: &str = "/sys/fs/cgroup/cpu";

/// A cgroup of the v1 `cpu` controller with a CPU quota, removed when
/// dropped (its processes are moved back to the root group first).
pub struct CpuCgroup {
    path: PathBuf,
}

/// What the controller counted for a cgroup (`cpu.stat`).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuStat {
    /// Quota periods in which the group was throttled.
    pub nr_throttled: u64,
    /// Total time its run queues spent throttled.
    pub throttled: Duration,
}

impl CpuCgroup {
    /// Makes the cgroup `name` with a quota of `cpus` CPUs per 100 ms
    /// period; `Err` says why it cannot be made here (not root, no v1
    /// `cpu` controller, ...).
    pub fn with_quota(name: &str, cpus: f64) -> Result<Self, String> {
        let root = Path::new(CPU_CONTROLLER);
        if !root.join("cpu.cfs_quota_us").exists() {
            return Err(format!(
                "no cgroup v1 cpu controller at {CPU_CONTROLLER} (cgroup v2 only, or not mounted)"
            ));
        }
        let path = root.join(name);
        std::fs::create_dir(&path)
            .map_err(|e| format!("cannot create {}: {e} (needs root)", path.display()))?;
        let group = CpuCgroup { path };
        let period_us = 100_000u64;
        let quota_us = (period_us as f64 * cpus) as u64;
        group
            .write("cpu.cfs_period_us", &period_us.to_string())
            .and_then(|()| group.write("cpu.cfs_quota_us", &quota_us.to_string()))
            .map_err(|e| format!("cannot set the quota of {}: {e}", group.path.display()))?;
        Ok(group)
    }

    /// Moves process `pid`, every thread of it, into the group (writing
    /// `cgroup.procs` moves the whole thread group; threads it starts
    /// later are born in it).
    pub fn add_process(&self, pid: u32) -> std::io::Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// Starts a busy process inside the group.
    pub fn spawn_busy(&self) -> BusyProcesses {
        let mut shell = spawn_busy(true);
        self.add_process(shell.id()).expect("move a busy process");
        let mut stdin = shell.stdin.take().expect("piped stdin");
        writeln!(stdin).expect("start the busy loop");
        BusyProcesses {
            children: vec![shell],
        }
    }

    /// The threads in the group now.
    pub fn threads(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("tasks"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The controller's counts for the group.
    pub fn stat(&self) -> CpuStat {
        let text = std::fs::read_to_string(self.path.join("cpu.stat")).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0u64)
        };
        CpuStat {
            nr_throttled: field("nr_throttled"),
            throttled: Duration::from_nanos(field("throttled_time")),
        }
    }

    fn write(&self, file: &str, value: &str) -> std::io::Result<()> {
        std::fs::write(self.path.join(file), value)
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        // A group with processes in it cannot be removed: move any left
        // (a test that failed before its child exited) to the root group.
        let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write(Path::new(CPU_CONTROLLER).join("cgroup.procs"), pid.trim());
        }
        // Removal fails while the kernel is still tearing down exited
        // tasks: retry briefly.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("could not remove the cgroup {}", self.path.display());
    }
}

/// Scheduler figures of thread `tid` of any process (`/proc/<tid>/schedstat`):
/// time on a CPU, and time runnable but waiting for one.
pub fn schedstat(tid: u32) -> Option<(Duration, Duration)> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/schedstat")).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((
        Duration::from_nanos(fields.next()??),
        Duration::from_nanos(fields.next()??),
    ))
}

/// The summed scheduler figures of this process's threads.
pub fn own_schedstat() -> (Duration, Duration) {
    let mut total = (Duration::ZERO, Duration::ZERO);
    for entry in std::fs::read_dir("/proc/self/task").into_iter().flatten() {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some((cpu, delay)) = schedstat(tid) {
            total.0 += cpu;
            total.1 += delay;
        }
    }
    total
}
