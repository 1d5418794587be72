//! Property: a program run with `pulse.spawn` ends exactly as it does with
//! `tokio::spawn`, whatever the program does and whichever tiers it passes
//! through on the way (slow lane, isolation pool and back).
//!
//! Each generated program is a sequence of steps (hog a poll, sleep, yield)
//! and an end: return a value, panic (three payload types), wait to be
//! aborted in a loop of further steps, or return after the test dropped its
//! `JoinHandle`. The same program runs once under each spawner, at the same
//! time; what is compared is the `JoinHandle`'s result (value, panic payload,
//! cancellation) and the future's fate (completed, unwound by its panic, or
//! dropped unfinished by the abort).
//!
//! The `Pulse` is tuned so that tasks change tier within milliseconds: one
//! slow poll (over 500 µs) in a 5 ms window promotes, one clean window
//! demotes. Three hog steps in a row reach `Isolate`; a sleep longer than
//! the window brings a task back. The case count defaults to 32 (a few
//! seconds in debug); `PROPTEST_CASES=1000 cargo test --test semantics`
//! runs more.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::spin;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_pulse::{IsolationPriority, PreemptionHooks, Pulse, TaskInfo, Tier};

/// One step of a program; each ends at an `.await`.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Computes for this many milliseconds in one poll, then yields.
    Hog(u8),
    /// Sleeps this many milliseconds.
    Sleep(u8),
    /// Yields once.
    Yield,
}

#[derive(Clone, Debug)]
enum End {
    Return(u32),
    /// `panic!` with a literal: a `&'static str` payload.
    PanicStr,
    /// `panic!` with formatting: a `String` payload.
    PanicString(u32),
    /// `panic_any` with a number.
    PanicAny(u32),
    /// Tells the test it got here, then runs `again` in a loop until the
    /// test aborts it.
    AbortHere {
        again: Vec<Step>,
    },
    /// Returns this value; the test dropped the `JoinHandle` at spawn.
    Detached(u32),
}

#[derive(Clone, Debug)]
struct Program {
    steps: Vec<Step>,
    end: End,
}

/// How a run ended, as its `JoinHandle` saw it.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Returned(u32),
    Panicked(Payload),
    Cancelled,
    /// The handle was dropped: nothing to see through it.
    Detached,
}

#[derive(Clone, Debug, PartialEq)]
enum Payload {
    Str(&'static str),
    String(String),
    U32(u32),
    Other,
}

/// What happened to the future itself.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    Completed(u32),
    /// Dropped while its own panic unwound.
    Unwound,
    /// Dropped before completing, without a panic: cancelled.
    DroppedUnfinished,
}

#[derive(Debug, PartialEq)]
struct Observed {
    outcome: Outcome,
    fate: Fate,
}

/// Lives inside the future; reports its fate when dropped.
struct FateGuard {
    completed: Option<u32>,
    tx: Option<oneshot::Sender<Fate>>,
}

impl Drop for FateGuard {
    fn drop(&mut self) {
        let fate = match self.completed {
            _ if std::thread::panicking() => Fate::Unwound,
            Some(v) => Fate::Completed(v),
            None => Fate::DroppedUnfinished,
        };
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(fate);
        }
    }
}

async fn run_step(step: Step) {
    match step {
        Step::Hog(ms) => {
            spin(Duration::from_millis(ms.into()));
            tokio::task::yield_now().await;
        }
        Step::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms.into())).await,
        Step::Yield => tokio::task::yield_now().await,
    }
}

const PANIC_STR: &str = "program panicked";

async fn body(program: Program, fate: oneshot::Sender<Fate>, reached: oneshot::Sender<()>) -> u32 {
    let mut guard = FateGuard {
        completed: None,
        tx: Some(fate),
    };
    for step in &program.steps {
        run_step(*step).await;
    }
    match program.end {
        End::Return(v) | End::Detached(v) => {
            guard.completed = Some(v);
            v
        }
        End::PanicStr => panic!("program panicked"),
        End::PanicString(n) => panic!("program panicked with {n}"),
        End::PanicAny(n) => std::panic::panic_any(n),
        End::AbortHere { again } => {
            let _ = reached.send(());
            loop {
                for step in &again {
                    run_step(*step).await;
                }
            }
        }
    }
}

fn payload(err: tokio::task::JoinError) -> Payload {
    let p = err.into_panic();
    if let Some(s) = p.downcast_ref::<&'static str>() {
        Payload::Str(s)
    } else if let Some(s) = p.downcast_ref::<String>() {
        Payload::String(s.clone())
    } else if let Some(n) = p.downcast_ref::<u32>() {
        Payload::U32(*n)
    } else {
        Payload::Other
    }
}

/// Runs `program` with `spawn`, aborting or detaching it as its end says.
async fn observe(
    program: Program,
    spawn: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = u32> + Send>>) -> JoinHandle<u32>,
) -> Observed {
    let (fate_tx, fate_rx) = oneshot::channel();
    let (reached_tx, reached_rx) = oneshot::channel();
    let end = program.end.clone();
    let handle = spawn(Box::pin(body(program, fate_tx, reached_tx)));
    let outcome = match end {
        End::Detached(_) => {
            drop(handle);
            Outcome::Detached
        }
        _ => {
            if let End::AbortHere { .. } = end {
                reached_rx
                    .await
                    .expect("the program ended before its abort point");
                handle.abort();
            }
            match handle.await {
                Ok(v) => Outcome::Returned(v),
                Err(e) if e.is_cancelled() => Outcome::Cancelled,
                Err(e) => Outcome::Panicked(payload(e)),
            }
        }
    };
    // An aborted isolated future is dropped on the pool, at its job's next
    // turn: possibly after the JoinHandle has reported the cancellation.
    let fate = fate_rx.await.expect("the future's fate was never reported");
    Observed { outcome, fate }
}

/// The tiers each named task went through.
#[derive(Default)]
struct TierTrail(Mutex<HashMap<String, Trail>>);

#[derive(Clone, Copy, Debug, Default)]
struct Trail {
    isolated: bool,
    came_back: bool,
    final_tier: Option<Tier>,
}

impl TierTrail {
    fn update(&self, task: &TaskInfo<'_>, f: impl FnOnce(&mut Trail)) {
        let name = task.name().unwrap_or_default().to_owned();
        f(self.0.lock().unwrap().entry(name).or_default());
    }

    fn take(&self, name: &str) -> Trail {
        self.0.lock().unwrap().remove(name).unwrap_or_default()
    }
}

impl PreemptionHooks for TierTrail {
    fn on_tier_change(&self, task: &TaskInfo<'_>, from: Tier, to: Tier) {
        self.update(task, |t| {
            t.isolated |= to == Tier::Isolate;
            t.came_back |= from == Tier::Isolate;
        });
    }

    fn on_task_end(&self, task: &TaskInfo<'_>) {
        let tier = task.tier();
        self.update(task, |t| t.final_tier = Some(tier));
    }
}

/// Which of the interesting paths the run has taken at least once.
#[derive(Debug, Default)]
struct Coverage {
    returned_from_the_pool: u32,
    returned_after_moving_back: u32,
    panicked_on_the_pool: u32,
    aborted_on_the_pool: u32,
    detached: u32,
}

impl Coverage {
    fn record(&mut self, outcome: &Outcome, trail: Trail) {
        let on_pool = trail.final_tier == Some(Tier::Isolate);
        match outcome {
            Outcome::Returned(_) if on_pool => self.returned_from_the_pool += 1,
            Outcome::Returned(_) if trail.came_back => self.returned_after_moving_back += 1,
            Outcome::Panicked(_) if on_pool => self.panicked_on_the_pool += 1,
            Outcome::Cancelled if on_pool => self.aborted_on_the_pool += 1,
            Outcome::Detached => self.detached += 1,
            _ => {}
        }
    }
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1u8..=3).prop_map(Step::Hog),
        2 => (0u8..=8).prop_map(Step::Sleep),
        1 => Just(Step::Yield),
    ]
}

fn program_strategy() -> impl Strategy<Value = Program> {
    let end = prop_oneof![
        3 => any::<u32>().prop_map(End::Return),
        1 => Just(End::PanicStr),
        1 => any::<u32>().prop_map(End::PanicString),
        1 => any::<u32>().prop_map(End::PanicAny),
        2 => prop::collection::vec(step_strategy(), 1..4).prop_map(|again| End::AbortHere { again }),
        1 => any::<u32>().prop_map(End::Detached),
    ];
    (prop::collection::vec(step_strategy(), 0..10), end)
        .prop_map(|(steps, end)| Program { steps, end })
}

/// Programs that take each interesting path for sure, run before the
/// generated ones.
fn fixed_programs() -> Vec<Program> {
    let hogs = || vec![Step::Hog(2); 8];
    let then = |more: &[Step]| [hogs(), more.to_vec()].concat();
    vec![
        Program {
            steps: hogs(),
            end: End::Return(1),
        },
        Program {
            steps: then(&[Step::Sleep(12); 6]),
            end: End::Return(2),
        },
        Program {
            steps: hogs(),
            end: End::PanicString(3),
        },
        Program {
            steps: hogs(),
            end: End::AbortHere {
                again: vec![Step::Hog(1)],
            },
        },
        Program {
            steps: then(&[Step::Sleep(12)]),
            end: End::Detached(5),
        },
    ]
}

/// Panics the programs raise on purpose are expected; keep them out of the
/// test output. Others still print.
fn silence_program_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let ours = p.is::<u32>()
            || p.downcast_ref::<&str>()
                .is_some_and(|s| s.starts_with(PANIC_STR))
            || p.downcast_ref::<String>()
                .is_some_and(|s| s.starts_with(PANIC_STR));
        if !ours {
            default(info);
        }
    }));
}

#[test]
fn managed_tasks_end_exactly_like_tokio_tasks_through_every_tier() {
    silence_program_panics();
    let rt = common::two_worker_runtime();
    let pulse = Pulse::builder()
        .slow_poll_threshold(Duration::from_micros(500))
        .budget_window(Duration::from_millis(5))
        .slow_polls_per_window(1)
        .clean_windows_to_demote(1)
        // What is compared here does not depend on the pool's priority;
        // normal priority keeps the run's length independent of whatever
        // else the machine is doing.
        .isolation_priority(IsolationPriority::Inherit)
        .build()
        .unwrap();
    let trail = Arc::new(TierTrail::default());
    pulse.set_hooks(trail.clone());
    let coverage = Mutex::new(Coverage::default());
    let next_name = std::sync::atomic::AtomicU64::new(0);

    // Runs programs side by side under both spawners, compares each pair.
    let run_case = |programs: Vec<Program>| -> Result<(), TestCaseError> {
        let observed = rt.block_on(async {
            let mut runs = Vec::new();
            for program in programs {
                let name = format!(
                    "p{}",
                    next_name.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                let plain = tokio::spawn(observe(program.clone(), tokio::spawn));
                let (p, n) = (pulse.clone(), name.clone());
                let managed = tokio::spawn(observe(program.clone(), move |f| p.spawn_named(n, f)));
                runs.push((program, name, plain, managed));
            }
            let mut observed = Vec::new();
            for (program, name, plain, managed) in runs {
                let within = Duration::from_secs(30);
                let plain = tokio::time::timeout(within, plain).await;
                let managed = tokio::time::timeout(within, managed).await;
                observed.push((program, name, plain, managed));
            }
            observed
        });
        for (program, name, plain, managed) in observed {
            let plain = plain.expect("hung under tokio::spawn").unwrap();
            let managed = managed
                .unwrap_or_else(|_| panic!("hung under pulse.spawn: {program:?}"))
                .unwrap();
            prop_assert_eq!(&managed, &plain, "{:?}", program);
            coverage
                .lock()
                .unwrap()
                .record(&managed.outcome, trail.take(&name));
        }
        // Every managed task's state is freed once it has ended.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pulse.task_count() > 0 {
            prop_assert!(std::time::Instant::now() < deadline, "task state leaked");
            std::thread::yield_now();
        }
        Ok(())
    };

    run_case(fixed_programs()).unwrap();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(program_strategy(), 1..4), run_case);
    if let Err(e) = result {
        panic!("{e}");
    }

    let coverage = coverage.into_inner().unwrap();
    println!("{coverage:?}; {:?}", pulse.totals());
    assert!(coverage.returned_from_the_pool > 0, "{coverage:?}");
    assert!(coverage.returned_after_moving_back > 0, "{coverage:?}");
    assert!(coverage.panicked_on_the_pool > 0, "{coverage:?}");
    assert!(coverage.aborted_on_the_pool > 0, "{coverage:?}");
    assert!(coverage.detached > 0, "{coverage:?}");
}
