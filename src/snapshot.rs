//! Point-in-time views of the managed tasks.

use std::borrow::Cow;
use std::panic::Location;
use std::time::Duration;

use crate::origins::OriginSnapshot;
use crate::task::{TaskId, TaskShared};
use crate::tier::{PerTier, Tier};
use crate::timing::nanos;

/// The state of every live managed task at one moment, from
/// [`Pulse::snapshot`](crate::Pulse::snapshot).
///
/// Counters are read one task at a time without stopping the runtime, so a
/// snapshot is consistent per task, not across tasks.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Snapshot {
    /// One entry per live task, in no particular order: every task that
    /// has returned `Pending` at least once and not ended. A task not
    /// polled yet, or still in its first poll, is not listed (a task that
    /// completes in its first poll never takes the registry's lock); a
    /// first poll that runs too long is still in [`stuck`](Snapshot::stuck).
    pub tasks: Vec<TaskSnapshot>,
    /// Every live task of the runtimes observed through runtime hooks
    /// (feature `runtime-hooks`), as Tokio sees them: libraries' tasks
    /// included, each with its [`tokio_id`](TaskSnapshot::tokio_id). Empty
    /// without those hooks. A task spawned with [`Pulse::spawn`](crate::Pulse::spawn)
    /// on such a runtime is in both lists; here it is charged only the
    /// time spent outside its managed future.
    pub runtime_tasks: Vec<TaskSnapshot>,
    /// Polls running now for longer than the watchdog threshold, charged
    /// as the watchdog charges them (net of time their threads waited for
    /// a CPU), and polls the watchdog has reported that are still running.
    pub stuck: Vec<StuckPoll>,
    /// Every origin (spawn site or task name) remembered because some of
    /// its tasks misbehaved, with the tier its new tasks start at. Empty
    /// when origin memory is off.
    pub origins: Vec<OriginSnapshot>,
}

/// A poll the watchdog would report: running now, past its threshold.
///
/// It names the task itself: a task still in its first poll is not in
/// [`Snapshot::tasks`] yet.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StuckPoll {
    /// The task being polled.
    pub task: TaskId,
    /// The task's name, if it has one.
    pub name: Option<Cow<'static, str>>,
    /// Where the task was spawned (or wrapped).
    pub location: &'static Location<'static>,
    /// How long the poll has been running.
    pub running_for: Duration,
    /// The name of the thread it runs on.
    pub thread: Option<String>,
    /// Where the thread is stuck: its stack, captured when the watchdog
    /// first reported this poll, innermost frame first, one line per
    /// function (`   3: my_app::parse at src/parse.rs:42`). Functions
    /// inlined into a frame get a line each under the frame's number,
    /// innermost first, marked `(inlined)`; `file:line` appears where the
    /// binary has debug information, and an address with no symbol prints
    /// as the address and the library it lies in. The capture's own
    /// machinery (the signal handler) never appears.
    ///
    /// `None` until the watchdog has reported the poll (a snapshot may
    /// list it a little earlier), when stack capture is off or not
    /// supported on this platform (see [`StackCapture`](crate::StackCapture)),
    /// or when the capture failed (the watchdog's `tracing` error then
    /// says why, in its `stack_error` field).
    pub stack: Option<String>,
}

impl Snapshot {
    /// Live tasks in `tier`.
    pub fn count(&self, tier: Tier) -> usize {
        PerTier::tally(self.tasks.iter().map(|t| t.tier))[tier]
    }

    /// The task with this id, if it is still alive.
    pub fn task(&self, id: TaskId) -> Option<&TaskSnapshot> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// The first live task with this name.
    pub fn named(&self, name: &str) -> Option<&TaskSnapshot> {
        self.tasks.iter().find(|t| t.name.as_deref() == Some(name))
    }

    /// The remembered origin named `name` (a task name or route), if any.
    pub fn origin_named(&self, name: &str) -> Option<&OriginSnapshot> {
        self.origins
            .iter()
            .find(|o| matches!(&o.origin, crate::origins::Origin::Name(n) if n == name))
    }

    /// The `n` tasks that have held workers longest in total, worst first.
    pub fn worst(&self, n: usize) -> Vec<&TaskSnapshot> {
        worst(&self.tasks, n)
    }

    /// Live runtime-wide tasks in `tier` (see [`runtime_tasks`](Snapshot::runtime_tasks)).
    pub fn runtime_count(&self, tier: Tier) -> usize {
        PerTier::tally(self.runtime_tasks.iter().map(|t| t.tier))[tier]
    }

    /// The runtime-wide task with this Tokio id, if it is still alive.
    pub fn runtime_task(&self, id: tokio::task::Id) -> Option<&TaskSnapshot> {
        self.runtime_tasks.iter().find(|t| t.tokio_id == Some(id))
    }

    /// Like [`worst`](Snapshot::worst), among the runtime-wide tasks.
    pub fn worst_runtime(&self, n: usize) -> Vec<&TaskSnapshot> {
        worst(&self.runtime_tasks, n)
    }
}

fn worst(tasks: &[TaskSnapshot], n: usize) -> Vec<&TaskSnapshot> {
    let mut tasks: Vec<&TaskSnapshot> = tasks.iter().collect();
    tasks.sort_by_key(|t| std::cmp::Reverse(t.total_poll_time));
    tasks.truncate(n);
    tasks
}

/// One managed task as seen by a [`Snapshot`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TaskSnapshot {
    /// The task's id.
    pub id: TaskId,
    /// The name given at spawn, if any.
    pub name: Option<Cow<'static, str>>,
    /// Tokio's id for the task: set for runtime-wide tasks, `None` for
    /// managed ones.
    pub tokio_id: Option<tokio::task::Id>,
    /// Where the task was spawned (or wrapped with `PulseExt::pulse`).
    pub location: &'static Location<'static>,
    /// Current tier.
    pub tier: Tier,
    /// Polls of the task's future so far (see [`Timing`](crate::Timing)
    /// for what each figure means under the default sampled timing).
    pub polls: u64,
    /// Polls judged longer than the slow-poll threshold.
    pub slow_polls: u64,
    /// Time spent in the task's polls (under sampled timing, an unbiased
    /// estimate). Divide by `polls` for the mean.
    pub total_poll_time: Duration,
    /// The longest single poll (under sampled timing, as judged: at most
    /// a tick short of the truth; zero if no poll outlasted a tick).
    pub max_poll_time: Duration,
    /// Thread CPU time of the task's long polls (those of at least a
    /// quarter of the slow-poll threshold), from when the ticker first saw
    /// each running to its end, from the scheduler's own figures (Linux;
    /// zero elsewhere). Zero for a task whose polls were all short. Much
    /// less than the wall time of the same polls means the task was
    /// blocking its worker rather than computing.
    /// Not measured for runtime-wide tasks.
    pub cpu_time: Duration,
    /// Times the watchdog reported one of this task's polls as stuck.
    pub stuck_reports: u64,
}

impl TaskSnapshot {
    pub(crate) fn of(task: &TaskShared) -> Self {
        let c = task.counters();
        TaskSnapshot {
            id: task.id,
            name: task.name.clone(),
            tokio_id: None,
            location: task.location,
            tier: task.tier(),
            polls: c.polls,
            slow_polls: c.slow_polls,
            total_poll_time: nanos(c.busy_ns),
            max_poll_time: nanos(c.max_poll_ns),
            cpu_time: nanos(c.cpu_ns),
            stuck_reports: c.stuck_reports,
        }
    }
}
