//! On a busy host tokio-pulse blames tasks only for what they did: a poll
//! whose thread waited for a CPU (other processes on every core, a CPU
//! quota throttling the cgroup) is charged only the time it could run.
//!
//! Each scenario runs with a busy host made on purpose: one busy process
//! per core beside the test, or a cgroup v1 `cpu` controller with a 1-CPU
//! quota (that test skips itself, saying why, where no cgroup can be made:
//! not root, no v1 `cpu` controller). The busy processes and the cgroup are
//! removed by guards, also when a test fails. The scenarios run one at a
//! time: each is the only load it claims to be.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::busy::{BusyProcesses, CpuCgroup, own_schedstat, schedstat};
use common::spin;
use tokio_pulse::{Pulse, Tier, Totals};

/// How long each well-behaved scenario runs.
const RUN: Duration = Duration::from_secs(4);

/// Set in the child process the cgroup test starts.
const CHILD_ENV: &str = "TOKIO_PULSE_BUSY_HOST_CHILD";

/// What the observer saw of the well-behaved tasks.
#[derive(Debug)]
struct Observed {
    snapshots: usize,
    /// Tasks seen at `Yield` or above, with the tier.
    escalated: Vec<(String, Tier)>,
    /// Tasks seen in `Snapshot::stuck`.
    stuck: Vec<String>,
    /// The most tasks seen at `Warn` at once.
    most_at_warn: usize,
    totals: Totals,
    /// This process's threads over the run: time on a CPU, and time
    /// runnable but waiting for one.
    ran: Duration,
    waited: Duration,
}

/// 20 well-behaved managed tasks on 2 workers for `run`: 50 µs of CPU
/// work per poll, then `yield_now` (half of them) or a 200 µs sleep (the
/// other half). A thread off the runtime takes a snapshot every 20 ms.
fn well_behaved_tasks(run: Duration) -> Observed {
    let rt = common::two_worker_runtime();
    let pulse = Pulse::new();
    let stop = Arc::new(AtomicBool::new(false));
    let before = own_schedstat();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let stop = stop.clone();
            let _in_runtime = rt.enter();
            if i % 2 == 0 {
                pulse.spawn_named(format!("yielder-{i}"), async move {
                    while !stop.load(Relaxed) {
                        spin(Duration::from_micros(50));
                        tokio::task::yield_now().await;
                    }
                })
            } else {
                pulse.spawn_named(format!("sleeper-{i}"), async move {
                    while !stop.load(Relaxed) {
                        spin(Duration::from_micros(50));
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                })
            }
        })
        .collect();
    let mut seen = Observed {
        snapshots: 0,
        escalated: Vec::new(),
        stuck: Vec::new(),
        most_at_warn: 0,
        totals: Totals::default(),
        ran: Duration::ZERO,
        waited: Duration::ZERO,
    };
    let started = Instant::now();
    while started.elapsed() < run {
        let snapshot = pulse.snapshot();
        seen.snapshots += 1;
        seen.most_at_warn = seen.most_at_warn.max(snapshot.count(Tier::Warn));
        for task in snapshot.tasks.iter().filter(|t| t.tier >= Tier::Yield) {
            let name = task.name.as_deref().unwrap_or("").to_owned();
            seen.escalated.push((name, task.tier));
        }
        for stuck in &snapshot.stuck {
            seen.stuck
                .push(stuck.name.as_deref().unwrap_or("").to_owned());
        }
        // The observer's pace, not a wait for anything.
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = own_schedstat();
    (seen.ran, seen.waited) = (after.0 - before.0, after.1 - before.1);
    stop.store(true, Relaxed);
    for task in tasks {
        rt.block_on(task).expect("a well-behaved task failed");
    }
    seen.totals = pulse.totals();
    seen
}

/// None of the tasks reached `Yield` or `Isolate`, and the watchdog said
/// nothing about them.
fn assert_never_escalated(seen: &Observed, host: &str) {
    let t = &seen.totals;
    println!(
        "{host}: the process ran {:?} and waited {:?} for a CPU; {} polls, {} slow, \
         {} snapshots, at most {} of 20 at Warn at once, promotions to Yield {} / Isolate {}, \
         watchdog reports {}",
        seen.ran,
        seen.waited,
        t.polls,
        t.slow_polls,
        seen.snapshots,
        seen.most_at_warn,
        t.promotions[Tier::Yield],
        t.promotions[Tier::Isolate],
        t.watchdog_reports,
    );
    assert!(t.polls > 1_000, "{host}: the tasks hardly ran: {t:?}");
    assert!(
        seen.escalated.is_empty(),
        "{host}: well-behaved tasks seen at Yield or above: {:?}",
        &seen.escalated[..seen.escalated.len().min(10)]
    );
    assert_eq!(
        (t.promotions[Tier::Yield], t.promotions[Tier::Isolate]),
        (0, 0),
        "{host}: well-behaved tasks promoted to Yield / Isolate"
    );
    assert!(
        seen.stuck.is_empty(),
        "{host}: snapshots listed well-behaved tasks as stuck: {:?}",
        seen.stuck
    );
    assert_eq!(
        t.watchdog_reports, 0,
        "{host}: the watchdog reported well-behaved tasks"
    );
}

#[test]
fn well_behaved_tasks_beside_one_busy_process_per_core_are_never_deferred_nor_isolated() {
    let _one_at_a_time = common::serial_blocking();
    let busy = BusyProcesses::one_per_core();
    let seen = well_behaved_tasks(RUN);
    drop(busy);
    assert_never_escalated(&seen, "beside busy processes");
}

/// Run by the cgroup test in a child process it puts into the cgroup
/// (every thread of a process must be in the group, and the test harness's
/// own threads run other tests). Run directly, it is the same scenario on
/// whatever the host is doing.
#[test]
#[ignore = "run in a child process by well_behaved_tasks_under_a_one_cpu_quota_are_never_deferred_nor_isolated"]
fn well_behaved_tasks_in_a_child_process() {
    let host = std::env::var(CHILD_ENV).unwrap_or_else(|_| "this host".into());
    let seen = well_behaved_tasks(RUN);
    assert_never_escalated(&seen, &host);
}

/// Runs `test` of this test binary in a child process inside `group`;
/// returns whether it passed, and its output.
fn run_child_in(group: &CpuCgroup, test: &str, host: &str) -> (bool, String) {
    let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, host)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the child test");
    // Ends the child if this test fails before it does.
    struct Reap(Option<std::process::Child>);
    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(child) = &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let mut child = Reap(Some(child));
    let pid = child.0.as_ref().map(std::process::Child::id).unwrap_or(0);
    group
        .add_process(pid)
        .expect("move the child into the cgroup");
    let output = child
        .0
        .take()
        .expect("the child")
        .wait_with_output()
        .expect("the child's output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Says why a test is skipped, on the terminal: straight to stderr,
/// which the test harness does not capture, so a CI log shows it.
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// A cgroup for this test, or `None` (said why) where none can be made.
fn cgroup(what: &str, cpus: f64) -> Option<CpuCgroup> {
    let name = format!("tokio-pulse-test-{}-{what}", std::process::id());
    match CpuCgroup::with_quota(&name, cpus) {
        Ok(group) => Some(group),
        Err(why) => {
            skipped(&why);
            None
        }
    }
}

#[test]
fn well_behaved_tasks_under_a_one_cpu_quota_are_never_deferred_nor_isolated() {
    let _one_at_a_time = common::serial_blocking();
    let Some(group) = cgroup("quota", 1.0) else {
        return;
    };
    let (passed, output) = run_child_in(
        &group,
        "well_behaved_tasks_in_a_child_process",
        "under a 1-CPU quota",
    );
    let stat = group.stat();
    println!("{output}\nthe quota throttled the group {stat:?}");
    assert!(passed, "the scenario failed under the quota:\n{output}");
    if stat.nr_throttled == 0 {
        // The host was busy enough that the scenario never used a CPU's
        // worth: it ran under contention instead.
        println!("note: the quota never throttled the scenario this time");
    }
}

/// What charging polls net of run delay rests on under a quota: while the
/// cgroup is throttled, its threads are runnable and their run delay grows.
#[test]
fn a_thread_throttled_by_a_cpu_quota_accrues_run_delay() {
    let _one_at_a_time = common::serial_blocking();
    let Some(group) = cgroup("delay", 0.1) else {
        return;
    };
    let busy = group.spawn_busy();
    // The busy loop is the child `timeout` starts: wait for it to appear
    // in the group (the shell and `timeout` itself mostly sleep).
    let deadline = Instant::now() + Duration::from_secs(10);
    let figures = |group: &CpuCgroup| {
        group
            .threads()
            .into_iter()
            .filter_map(schedstat)
            .fold((Duration::ZERO, Duration::ZERO), |a, f| {
                (a.0 + f.0, a.1 + f.1)
            })
    };
    while group.threads().len() < 2 {
        assert!(Instant::now() < deadline, "the busy loop never started");
        std::thread::yield_now();
    }
    let (stat0, figures0) = (group.stat(), figures(&group));
    while group.stat().nr_throttled < stat0.nr_throttled + 5 {
        assert!(
            Instant::now() < deadline,
            "a 10 % quota never throttled a busy loop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (stat1, figures1) = (group.stat(), figures(&group));
    drop(busy);
    let throttled = stat1.throttled - stat0.throttled;
    let (cpu, delay) = (figures1.0 - figures0.0, figures1.1 - figures0.1);
    println!("throttled for {throttled:?}; the loop ran {cpu:?} and waited {delay:?}");
    assert!(
        delay >= throttled / 2,
        "time throttled ({throttled:?}) is not counted as run delay ({delay:?}): \
         charging polls net of run delay does not see a quota on this kernel"
    );
}

/// A hog isolated on the pool: polls of 2 ms of CPU time, with `yield_now`
/// between them, for as long as `stop` is unset. Each poll that runs on a
/// pool thread is counted in `pool_polls`, and the longest such poll's
/// wall time kept in `longest_ms`; `saw_normal` is set if one ran at
/// normal priority (raised by the floor).
#[derive(Default)]
struct HogRecord {
    pool_polls: std::sync::atomic::AtomicU64,
    longest_ms: std::sync::atomic::AtomicU64,
    saw_normal: AtomicBool,
}

impl HogRecord {
    /// One poll's worth of work: 2 ms of CPU, noted.
    fn work(&self) {
        let started = Instant::now();
        spin(Duration::from_millis(2));
        if common::on_pool(&common::thread_name()) {
            self.pool_polls.fetch_add(1, Relaxed);
            let ms = started.elapsed().as_millis() as u64;
            self.longest_ms.fetch_max(ms, Relaxed);
            // SAFETY: pid 0 names the calling thread; no memory is passed.
            let policy = unsafe { libc::sched_getscheduler(0) };
            if policy != libc::SCHED_IDLE {
                self.saw_normal.store(true, Relaxed);
            }
        }
    }

    fn pool_polls(&self) -> u64 {
        self.pool_polls.load(Relaxed)
    }
}

/// Waits (up to `within`) until `done`, asking every 5 ms.
fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(5)); // the poller's pace
    }
}

/// The policy of each isolation pool thread of this process.
fn pool_threads_idle() -> Vec<bool> {
    let mut idle = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").into_iter().flatten() {
        let Ok(entry) = entry else { continue };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if common::on_pool(name.trim_end()) {
            // SAFETY: no memory is passed; `tid` is a thread of this
            // process (or the call fails).
            idle.push(unsafe { libc::sched_getscheduler(tid) } == libc::SCHED_IDLE);
        }
    }
    idle
}

#[test]
fn a_starved_isolated_task_is_raised_keeps_making_progress_and_drops_back_after() {
    let _one_at_a_time = common::serial_blocking();
    let busy = BusyProcesses::one_per_core();
    let rt = common::two_worker_runtime();
    let pulse = Pulse::new();
    let hog = Arc::new(HogRecord::default());
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (hog, stop) = (hog.clone(), stop.clone());
        let _in_runtime = rt.enter();
        pulse.spawn_named("hog", async move {
            while !stop.load(Relaxed) {
                hog.work();
                tokio::task::yield_now().await;
            }
        })
    };
    wait_until(Duration::from_secs(30), "isolated", || hog.pool_polls() > 0);
    if let tokio_pulse::Component::Failed(why) = pulse.health().isolation_floor {
        stop.store(true, Relaxed);
        skipped(&why);
        return;
    }
    // 100 ms of CPU on the pool: about 33 s at SCHED_IDLE's share of a
    // core beside a busy process; well under a second at the floor's.
    let started = Instant::now();
    let before = hog.pool_polls();
    wait_until(Duration::from_secs(60), "50 polls on the pool", || {
        hog.pool_polls() >= before + 50
    });
    let took = started.elapsed();
    stop.store(true, Relaxed);
    rt.block_on(task).unwrap();
    let t = pulse.totals();
    println!(
        "50 isolated polls of 2 ms took {took:?} beside {} busy processes; floor raises {}",
        busy.len(),
        t.isolation_floor_raises
    );
    assert!(t.isolation_floor_raises > 0, "never raised: {t:?}");
    assert!(
        hog.saw_normal.load(Relaxed),
        "no poll ran at normal priority"
    );
    assert_eq!(
        t.watchdog_reports, 0,
        "the watchdog blamed the isolated task"
    );
    // With no work left, every pool thread drops back to SCHED_IDLE.
    wait_until(
        Duration::from_secs(10),
        "pool threads back at SCHED_IDLE",
        || pool_threads_idle().iter().all(|&idle| idle),
    );
    drop(busy);
}

#[test]
fn the_watchdog_does_not_blame_an_isolated_task_for_its_pool_threads_low_priority() {
    let _one_at_a_time = common::serial_blocking();
    let _busy = BusyProcesses::one_per_core();
    let rt = common::two_worker_runtime();
    let pulse = Pulse::builder().without_isolation_floor().build().unwrap();
    let hog = Arc::new(HogRecord::default());
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (hog, stop) = (hog.clone(), stop.clone());
        let _in_runtime = rt.enter();
        pulse.spawn_named("starved", async move {
            while !stop.load(Relaxed) {
                hog.work();
                tokio::task::yield_now().await;
            }
        })
    };
    // Its polls on the pool take far longer than the watchdog threshold
    // (100 ms) of wall time: the thread waits for a CPU.
    let mut listed_stuck = Vec::new();
    wait_until(Duration::from_secs(30), "a starved poll", || {
        listed_stuck.extend(pulse.snapshot().stuck.into_iter().map(|s| s.running_for));
        hog.longest_ms.load(Relaxed) >= 300 && hog.pool_polls() >= 2
    });
    stop.store(true, Relaxed);
    rt.block_on(task).unwrap();
    println!(
        "the longest isolated poll of 2 ms of CPU took {} ms",
        hog.longest_ms.load(Relaxed)
    );
    assert!(
        listed_stuck.is_empty(),
        "snapshots listed it as stuck: {listed_stuck:?}"
    );
    assert_eq!(pulse.totals().watchdog_reports, 0, "the watchdog blamed it");
}

/// Priority inversion: a task on the main workers waits for a lock an
/// isolated task holds across its polls. (How its wait compares with plain
/// Tokio's is a timing claim: `cargo run --release --example starvation --
/// --busy` prints it.)
#[test]
fn a_task_waiting_for_a_mutex_an_isolated_hog_holds_across_polls_gets_it_on_a_busy_host() {
    let _one_at_a_time = common::serial_blocking();
    let _busy = BusyProcesses::one_per_core();
    let rt = common::two_worker_runtime();
    let pulse = Pulse::new();
    let lock = Arc::new(tokio::sync::Mutex::new(0u64));
    let hog = Arc::new(HogRecord::default());
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let (lock, hog, stop) = (lock.clone(), hog.clone(), stop.clone());
        let _in_runtime = rt.enter();
        pulse.spawn_named("holder", async move {
            while !stop.load(Relaxed) {
                let guard = lock.lock().await;
                for _ in 0..5 {
                    hog.work();
                    tokio::task::yield_now().await;
                }
                drop(guard);
                tokio::task::yield_now().await;
            }
        })
    };
    wait_until(Duration::from_secs(30), "isolated", || hog.pool_polls() > 0);
    if let tokio_pulse::Component::Failed(why) = pulse.health().isolation_floor {
        stop.store(true, Relaxed);
        skipped(&why);
        return;
    }
    const TIMES: u64 = 20;
    let started = Instant::now();
    let polls_before = hog.pool_polls();
    let waiter = rt.spawn(async move {
        for _ in 0..TIMES {
            *lock.lock().await += 1;
        }
    });
    // Generous: each wait is for at most one critical section of 10 ms of
    // CPU, which the floor gets through in a fraction of a second.
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), waiter).await })
        .expect("the waiter did not get the lock 20 times within 60 s")
        .unwrap();
    let took = started.elapsed();
    let held_on_pool = hog.pool_polls() - polls_before;
    stop.store(true, Relaxed);
    rt.block_on(holder).unwrap();
    println!(
        "got the lock {TIMES} times in {took:?}; the holder made {held_on_pool} polls on the pool meanwhile"
    );
    assert!(held_on_pool > 0, "the holder never ran isolated meanwhile");
    assert_eq!(pulse.totals().watchdog_reports, 0);
}
