//! The user's handle: spawning managed tasks, snapshots, hooks. A thin
//! `Arc` over the [`Engine`], where all the work is done.

use std::borrow::Cow;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;

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
    engine: Arc<Engine>,
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
        let task = Arc::new(TaskShared::new(name, location));
        Managed::new(Arc::clone(&self.engine), task, future, isolator)
    }

    /// The state of every live managed task. Takes each registry shard's
    /// lock briefly; never blocks the poll path.
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
    /// of their own, are up. See [`Health`] for what is lost when the OS
    /// refused one of them its threads.
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

    /// Live managed tasks, without building a snapshot.
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
/// Such a future may not be `Send`, so it can never move to the isolation
/// pool: its tier is capped at [`Tier::Yield`](crate::Tier::Yield).
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
}

impl<F: Future> PulseExt for F {}
