//! Keeps a Tokio runtime responsive when some of its tasks misbehave.
//!
//! Tokio schedules cooperatively: a task runs until its future returns
//! `Pending`. A task that computes for milliseconds between `.await`s, or
//! blocks its thread, holds a worker, and every task queued behind it waits.
//! Timers fire late, request latency grows, health checks time out.
//!
//! ```no_run
//! # async fn f() {
//! // Holds a worker for ~50 ms per poll: every other task on that worker waits.
//! tokio::spawn(async {
//!     loop {
//!         let _hash = expensive_hash_of_a_big_buffer(); // 50 ms, no .await inside
//!         tokio::task::yield_now().await;
//!     }
//! });
//! # }
//! # fn expensive_hash_of_a_big_buffer() {}
//! ```
//!
//! tokio-pulse times every poll of the tasks it manages, judges each task
//! over short windows, and moves it through tiers of intervention:
//!
//! | [`Tier`] | what happens |
//! |---|---|
//! | `Monitor` | polls are measured, nothing more |
//! | `Warn` | one structured `tracing` warning on entry; CPU time is sampled |
//! | `Yield` | the task is deferred behind well-behaved work; [`checkpoint`] yields sooner |
//! | `Isolate` | the task is kept away from the main workers |
//!
//! A bad window (too many slow polls, or more worker time than the budget)
//! promotes a task one tier; a run of clean windows demotes it one tier.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tokio_pulse::{Pulse, Tier};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() {
//! let pulse = Pulse::builder()
//!     .slow_poll_threshold(Duration::from_millis(1))
//!     .build()
//!     .expect("valid configuration");
//!
//! // A hog: 5 ms of work per poll.
//! let hog = pulse.spawn_named("hog", async {
//!     for _ in 0..40 {
//!         let t = std::time::Instant::now();
//!         while t.elapsed() < Duration::from_millis(5) {}
//!         tokio::task::yield_now().await;
//!     }
//! });
//! hog.await.unwrap();
//! # }
//! ```
//!
//! # Costs
//!
//! Per poll of a well-behaved managed task, under the default
//! [`Timing::Sampled`]: no clock read (the poll compares the tick a ticker
//! thread advances), a few relaxed loads and stores on the task's own
//! state and its thread's slot; no allocation, lock or map lookup. Only a
//! poll that outlasted a tick reads the clock, and the scheduler's figures
//! (CPU time, time spent waiting for a CPU) are read only for polls found
//! long. Measured figures are in BENCHMARKS.md.
//!
//! # Seeing it in a service
//!
//! Tier changes are `tracing` events (target `tokio_pulse::observe`; fields
//! `task.id`, `task.name`, `task.location`, `tier`, `poll_us`, ...). With
//! `tokio_pulse::task` at `DEBUG`, each managed task also runs inside a
//! `pulse.task` span, so events from inside it name it:
//!
//! ```
//! tracing_subscriber::fmt()
//!     .with_env_filter("info,tokio_pulse::task=debug")
//!     .init();
//! ```
//!
//! Opt-in integrations, one cargo feature each: `metrics` (`MetricsPublisher`,
//! counters and gauges through the `metrics` facade), `tower` (`PulseLayer`,
//! each request a managed future named by its route) and `runtime-hooks`
//! (`RuntimeHooks`, every task of a runtime observed through Tokio's task
//! hooks; needs `--cfg tokio_unstable`).

mod budget;
mod checkpoint;
mod config;
mod context;
mod engine;
mod fault;
mod histogram;
mod hooks;
#[cfg(any(feature = "metrics", feature = "tower"))]
mod integrations;
mod isolation;
mod managed;
mod observe;
mod origins;
mod pulse;
mod registry;
#[cfg(all(feature = "runtime-hooks", tokio_unstable))]
mod runtime_hooks;
#[cfg(all(feature = "runtime-hooks", tokio_unstable))]
mod runtime_tasks;
mod sharded;
mod slow_lane;
mod snapshot;
mod stack;
mod stats;
mod sync;
mod task;
mod task_core;
mod task_memory;
mod ticker;
mod tier;
mod timing;
mod watchdog;

/// Crate-private hot-path operations, public for the criterion benches
/// only: built with `RUSTFLAGS="--cfg pulse_bench"`, never by a dependent
/// crate's normal build. Not API.
#[cfg(pulse_bench)]
#[doc(hidden)]
pub mod bench_internals;

pub use checkpoint::{Checkpoint, checkpoint};
pub use config::{ConfigError, DEFAULT_WATCHDOG_THRESHOLD, Profile, PulseBuilder, Timing};
pub use engine::{Component, Health};
pub use histogram::PollHistogram;
pub use hooks::{PollReport, PreemptionHooks};
#[cfg(feature = "metrics")]
pub use integrations::metrics::{MetricsPublisher, PublisherError, PublisherHandle};
#[cfg(feature = "tower")]
pub use integrations::tower::{Fixed, Isolating, Local, NameRequest, PulseLayer, PulseService};
pub use isolation::IsolationPriority;
pub use managed::Managed;
pub use origins::{Origin, OriginSnapshot};
pub use pulse::{Pulse, PulseExt, SetDefaultError, spawn, spawn_named};
#[cfg(all(feature = "runtime-hooks", tokio_unstable))]
pub use runtime_hooks::RuntimeHooks;
pub use snapshot::{Snapshot, StuckPoll, TaskSnapshot};
pub use stack::StackCapture;
pub use stats::Totals;
pub use task::{TaskId, TaskInfo};
pub use tier::{PerTier, Tier};

#[cfg(all(feature = "runtime-hooks", not(tokio_unstable)))]
compile_error!(
    "tokio-pulse's `runtime-hooks` feature uses Tokio's unstable task hooks: build with \
     RUSTFLAGS=\"--cfg tokio_unstable\" (and RUSTDOCFLAGS=\"--cfg tokio_unstable\" for doctests), \
     or in .cargo/config.toml: [build] rustflags = [\"--cfg\", \"tokio_unstable\"]"
);

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
