//! The user's handle: spawning managed tasks, snapshots, hooks. A thin
//! `Arc` over the [`Engine`], where all the work is done.

use std::borrow::Cow;
use std::future::Future;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::task::JoinHandle;

use crate::config::{ConfigError, PulseBuilder};
use crate::engine::{Engine, Health};
use crate::hooks::PreemptionHooks;
use crate::managed::{Isolator, Managed, isolator};
use crate::snapshot::Snapshot;
use crate::stats::Totals;
use crate::task::TaskShared;

/// Manages tasks: measures their polls, classifies them into [`Tier`](crate::Tier)s, and
/// intervenes against the ones that hog their workers.
///
/// Cheap to clone (one `Arc`); clones manage the same set of tasks.
///
/// ```
/// use tokio_pulse::{Pulse, Tier};
///
/// # #[tokio::main]
/// # async fn main() {
/// let pulse = Pulse::new();
/// let handle = pulse.spawn_named("answer", async { 6 * 7 });
/// assert_eq!(handle.await.unwrap(), 42);
///
/// let snapshot = pulse.snapshot();
/// assert_eq!(snapshot.count(Tier::Isolate), 0);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Pulse {
    pub(crate) engine: Arc<Engine>,
}

impl PulseBuilder {
    /// Validates the configuration and creates the [`Pulse`].
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first value that breaks a rule.
    pub fn build(self) -> Result<Pulse, ConfigError> {
        Ok(Pulse {
            engine: Engine::start(self.config()?),
        })
    }
}

impl Pulse {
    /// A builder, starting from the [`Balanced`](crate::Profile::Balanced) profile.
    pub fn builder() -> PulseBuilder {
        PulseBuilder::new()
    }

    /// A `Pulse` with the default configuration.
    pub fn new() -> Pulse {
        Pulse {
            engine: Engine::start(crate::config::Config::default()),
        }
    }

    #[cfg(feature = "metrics")]
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Spawns `future` as a managed task on the current Tokio runtime.
    ///
    /// The same contract as [`tokio::spawn`]: same bounds, same
    /// `JoinHandle`, and it panics when called outside a runtime. The
    /// caller's location is recorded as the task's spawn site.
    #[track_caller]
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(self.manage(None, Location::caller(), future, Some(isolator::<F>())))
    }

    /// Like [`spawn`](Pulse::spawn), with a name that shows in snapshots and events.
    #[track_caller]
    pub fn spawn_named<F>(
        &self,
        name: impl Into<Cow<'static, str>>,
        future: F,
    ) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(self.manage(
            Some(name.into()),
            Location::caller(),
            future,
            Some(isolator::<F>()),
        ))
    }

    pub(crate) fn manage<F: Future>(
        &self,
        name: Option<Cow<'static, str>>,
        location: &'static Location<'static>,
        future: F,
        isolator: Option<Isolator<F>>,
    ) -> Managed<F> {
        let task = TaskShared::new(name, location);
        Managed::new(Arc::clone(&self.engine), task, future, isolator)
    }

    /// The state of the live managed tasks (those that have returned
    /// `Pending` at least once: see [`Snapshot::tasks`]). Takes each
    /// registry shard's lock briefly; never blocks the poll path.
    pub fn snapshot(&self) -> Snapshot {
        self.engine.snapshot()
    }

    /// What all managed tasks, live and ended, have done since this `Pulse`
    /// was built: polls, poll-time histogram, promotions and demotions.
    /// Cheaper than [`snapshot`](Pulse::snapshot): nothing is allocated per task.
    pub fn totals(&self) -> Totals {
        self.engine.totals()
    }

    /// Whether the watchdog and the isolation pool, which run on threads
    /// of their own, are up, whether the pool's progress floor can raise
    /// its threads, and whether the watchdog captures stuck threads'
    /// stacks. See [`Health`] for what is lost when the OS refused one of
    /// them, or the application uses the capture's signal.
    pub fn health(&self) -> Health {
        self.engine.health()
    }

    /// Replaces the configuration while tasks run.
    ///
    /// The new values are validated first; nothing changes if any is
    /// invalid. Each task switches to the whole new configuration at its next
    /// poll, never to a mix of old and new values. Tier thresholds, the slow
    /// lane's slots, the warning rate and the watchdog threshold can change;
    /// the isolation pool's size and priority, and whether there is a
    /// watchdog at all, are fixed when the `Pulse` is built, and a change to
    /// them is refused with [`ConfigError::NotReloadable`].
    ///
    /// A task already above a lowered `max_tier` is moved down to it at
    /// its next poll.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio_pulse::{Profile, Pulse};
    ///
    /// let pulse = Pulse::new();
    /// pulse.reconfigure(Pulse::builder().profile(Profile::Permissive))?;
    /// assert!(pulse.reconfigure(Pulse::builder().isolation_threads(64)).is_err());
    /// # Ok::<(), tokio_pulse::ConfigError>(())
    /// ```
    ///
    /// # Errors
    /// A [`ConfigError`] for an invalid value or a change that cannot be
    /// made while running.
    pub fn reconfigure(&self, builder: PulseBuilder) -> Result<(), ConfigError> {
        self.engine.reconfigure(builder.config()?)
    }

    /// Live managed tasks (spawned or wrapped, and not ended), without
    /// building a snapshot.
    pub fn task_count(&self) -> usize {
        self.engine.task_count()
    }

    /// Installs `hooks`, replacing any installed before. Callable from any
    /// thread at any time; a poll already running may make its remaining
    /// calls to either. Each thread caches the hooks it last called and lets
    /// go of replaced ones at its next hooked poll or when it exits, so they
    /// are dropped some time after the change, not at once.
    pub fn set_hooks(&self, hooks: Arc<dyn PreemptionHooks>) {
        self.engine.hooks.set(hooks);
    }

    /// Removes the installed hooks, if any. Threads that called them let go
    /// of them as described at [`set_hooks`](Pulse::set_hooks).
    pub fn clear_hooks(&self) {
        self.engine.hooks.clear();
    }
}

#[cfg(all(feature = "runtime-hooks", tokio_unstable))]
impl Pulse {
    /// Hooks that observe every task of a runtime; see [`RuntimeHooks`](crate::RuntimeHooks).
    pub fn runtime_hooks(&self) -> crate::RuntimeHooks {
        crate::runtime_hooks::RuntimeHooks::new(Arc::clone(&self.engine))
    }

    /// Like [`totals`](Pulse::totals), for the tasks observed through
    /// [`RuntimeHooks`](crate::RuntimeHooks). A managed task's runtime task is counted here too,
    /// charged only the time outside its managed future.
    pub fn runtime_totals(&self) -> Totals {
        self.engine.runtime.totals()
    }
}

impl Default for Pulse {
    fn default() -> Self {
        Pulse::new()
    }
}

/// Wraps any future so that it is managed by a [`Pulse`] while some other
/// spawner runs it: a `LocalSet`, a `JoinSet`, `block_on`, a `select!`.
///
/// [`pulse`](PulseExt::pulse) takes any future, `Send` or not, and never
/// moves it: its tier is capped at [`Tier::Yield`](crate::Tier::Yield).
/// [`pulse_send`](PulseExt::pulse_send) takes a `Send + 'static` future,
/// which can move to the isolation pool like a task spawned with
/// [`Pulse::spawn`]: whatever polls the wrapper (a `JoinSet`, a `select!`)
/// then waits while the pool polls the future, and gets its output, panic
/// or cancellation as if it had polled it itself.
///
/// ```
/// use tokio_pulse::{Pulse, PulseExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pulse = Pulse::new();
/// let local = tokio::task::LocalSet::new();
/// let rc = std::rc::Rc::new(5); // not Send
/// let out = local
///     .run_until(async move {
///         tokio::task::spawn_local(async move { *rc * 2 }.pulse(&pulse)).await
///     })
///     .await
///     .unwrap();
/// assert_eq!(out, 10);
/// # }
/// ```
pub trait PulseExt: Future + Sized {
    /// Manages this future under `pulse`.
    #[track_caller]
    fn pulse(self, pulse: &Pulse) -> Managed<Self> {
        pulse.manage(None, Location::caller(), self, None)
    }

    /// Manages this future under `pulse`, with a name.
    #[track_caller]
    fn pulse_named(self, pulse: &Pulse, name: impl Into<Cow<'static, str>>) -> Managed<Self> {
        pulse.manage(Some(name.into()), Location::caller(), self, None)
    }

    /// Manages this `Send` future under `pulse`, able to move to the
    /// isolation pool (up to [`Tier::Isolate`](crate::Tier::Isolate)).
    ///
    /// ```
    /// use tokio_pulse::{Pulse, PulseExt};
    ///
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() {
    /// let pulse = Pulse::new();
    /// let mut set = tokio::task::JoinSet::new();
    /// set.spawn(async { 6 * 7 }.pulse_send(&pulse));
    /// assert_eq!(set.join_next().await.unwrap().unwrap(), 42);
    /// # }
    /// ```
    #[track_caller]
    fn pulse_send(self, pulse: &Pulse) -> Managed<Self>
    where
        Self: Send + 'static,
        Self::Output: Send + 'static,
    {
        pulse.manage(None, Location::caller(), self, Some(isolator::<Self>()))
    }

    /// Like [`pulse_send`](PulseExt::pulse_send), with a name.
    #[track_caller]
    fn pulse_send_named(self, pulse: &Pulse, name: impl Into<Cow<'static, str>>) -> Managed<Self>
    where
        Self: Send + 'static,
        Self::Output: Send + 'static,
    {
        pulse.manage(
            Some(name.into()),
            Location::caller(),
            self,
            Some(isolator::<Self>()),
        )
    }
}

impl<F: Future> PulseExt for F {}

/// The process-wide default `Pulse`, used by [`spawn`] and [`spawn_named`].
static GLOBAL_DEFAULT: OnceLock<Pulse> = OnceLock::new();

/// [`Pulse::set_global_default`] was called when a default was set already.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetDefaultError;

impl std::fmt::Display for SetDefaultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "a global default Pulse is already set; `Pulse::set_global_default` succeeds once per process",
        )
    }
}

impl std::error::Error for SetDefaultError {}

impl Pulse {
    /// Makes this `Pulse` (a clone of the handle) the process-wide default
    /// that [`tokio_pulse::spawn`](spawn) and [`spawn_named`] use. Call it
    /// once, at start-up, before the first spawn.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// let pulse = tokio_pulse::Pulse::new();
    /// pulse.set_global_default().expect("set once");
    /// // Anywhere in the program, where `tokio::spawn` was:
    /// let answer = tokio_pulse::spawn(async { 6 * 7 });
    /// assert_eq!(answer.await.unwrap(), 42);
    /// assert_eq!(pulse.totals().tasks_spawned, 1);
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`SetDefaultError`] if a default was set before; it stays in place.
    pub fn set_global_default(&self) -> Result<(), SetDefaultError> {
        let mut ours = Some(self.clone());
        GLOBAL_DEFAULT.get_or_init(|| ours.take().expect("taken once"));
        match ours {
            None => Ok(()),
            Some(_) => Err(SetDefaultError),
        }
    }

    /// The process-wide default, if [`set_global_default`](Pulse::set_global_default)
    /// was called.
    pub fn global_default() -> Option<&'static Pulse> {
        GLOBAL_DEFAULT.get()
    }
}

/// Spawns `future` as a managed task of the global default [`Pulse`]: a
/// drop-in replacement for [`tokio::spawn`] (same bounds, same
/// `JoinHandle`, and it panics outside a runtime as `tokio::spawn` does).
///
/// With no default set (see [`Pulse::set_global_default`]) it spawns with
/// `tokio::spawn`, unmanaged, and says so once per process with a
/// `tracing` warning, so that a missing set-up shows without breaking
/// anything. The caller's location is the task's spawn site.
#[track_caller]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match Pulse::global_default() {
        Some(pulse) => pulse.spawn(future),
        None => spawn_unmanaged(future),
    }
}

/// Like [`spawn`], with a name that shows in snapshots and events and that
/// the task's behaviour is remembered by (see [`Origin`](crate::Origin)).
#[track_caller]
pub fn spawn_named<F>(name: impl Into<Cow<'static, str>>, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match Pulse::global_default() {
        Some(pulse) => pulse.spawn_named(name, future),
        None => spawn_unmanaged(future),
    }
}

#[track_caller]
fn spawn_unmanaged<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            location = %Location::caller(),
            "tokio_pulse::spawn: no global default Pulse is set, so tasks are spawned unmanaged with tokio::spawn; call Pulse::set_global_default at start-up"
        );
    }
    tokio::spawn(future)
}

#[cfg(test)]
mod clock_reads {
    use crate::timing::reads_on_this_thread;
    use crate::{Pulse, PulseExt, Timing};
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    /// Pending `left` times (waking itself), then ready: a poll that does
    /// nothing.
    struct Polls {
        left: u32,
    }

    impl Future for Polls {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.left == 0 {
                return Poll::Ready(());
            }
            self.left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    const POLLS: u64 = 10_000;

    /// Clock readings on this thread over polls 100 to 10 100 of a task of
    /// `pulse` whose polls do nothing, and the ticks that went by meanwhile.
    fn clock_reads_over_short_polls(pulse: &Pulse) -> (u64, u64) {
        let mut fut = std::pin::pin!(Polls { left: 20_000 }.pulse(pulse));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..100 {
            let _ = fut.as_mut().poll(&mut cx);
        }
        let ticker = &pulse.engine.ticker;
        let (reads, ticks) = (reads_on_this_thread(), ticker.read().count());
        for _ in 0..POLLS {
            let _ = fut.as_mut().poll(&mut cx);
        }
        (
            reads_on_this_thread() - reads,
            ticker.read().count() - ticks,
        )
    }

    /// A poll reads the clock only if a tick went by while it ran, to
    /// measure itself: at most once per tick, whatever the number of polls.
    #[test]
    fn a_short_poll_reads_no_clock_under_sampled_timing() {
        let pulse = Pulse::new();
        let (reads, ticks) = clock_reads_over_short_polls(&pulse);
        assert!(reads <= ticks, "{reads} clock reads, {ticks} ticks");
        assert!(ticks < POLLS / 10, "{ticks} ticks over {POLLS} polls");
    }

    /// The counter the test above relies on does count: exact timing reads
    /// the clock at the start and end of every poll.
    #[test]
    fn exact_timing_reads_the_clock_twice_a_poll() {
        let pulse = Pulse::builder().timing(Timing::Exact).build().unwrap();
        assert!(clock_reads_over_short_polls(&pulse).0 >= 2 * POLLS);
    }
}
