//! The full managed-poll cycle against a bare poll of the same future.
//!
//! The future does almost nothing (a counter bump, then `Pending`), so the
//! difference between `poll/bare` and each `poll/managed_*` case is what
//! tokio-pulse adds to one poll; `overhead/managed_*` measures that
//! difference directly, interleaving the two in thread CPU time (see
//! `added_time`), which a busy machine disturbs far less. Polled by
//! hand with a no-op waker: no runtime, no scheduler, nothing else in the
//! measurement.
//!
//! - `managed_monitor`: a well-behaved task, no hooks. The wall clock (TSC)
//!   is read twice; thread CPU time is not read ("CPU timing off"). This is
//!   what nearly every poll costs.
//! - `managed_hooks`: the same with no-op hooks installed.
//! - `managed_suspect_short`: a task held at `Warn` whose polls are short:
//!   its CPU time is not read either.
//! - `managed_suspect_cpu`: a task held at `Warn` whose every poll counts
//!   as long, so thread CPU time is read twice per poll ("CPU timing on"):
//!   what a suspect's long poll costs on top of its length.
//!
//! `cargo bench --bench managed_poll`

mod common;

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::thread_time_ns;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio_pulse::{PreemptionHooks, Pulse, PulseExt, Tier};

/// Pending forever; its first poll may spin, to get a task promoted.
struct Ticker {
    ticks: u64,
    first_poll_spin: Duration,
}

impl Ticker {
    fn new() -> Self {
        Ticker {
            ticks: 0,
            first_poll_spin: Duration::ZERO,
        }
    }
}

impl Future for Ticker {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.ticks == 0 {
            let t = Instant::now();
            while t.elapsed() < self.first_poll_spin {
                std::hint::spin_loop();
            }
        }
        self.ticks = black_box(self.ticks + 1);
        Poll::Pending
    }
}

/// Benches polls of `fut` as `poll/<name>`, and what they add to a bare
/// poll as `overhead/<name>`.
fn bench_polls<F: Future + Unpin>(c: &mut Criterion, name: &str, mut fut: F) {
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function(&format!("poll/{name}"), |b| {
        b.iter(|| Pin::new(&mut fut).poll(&mut cx).is_pending())
    });
    let mut bare = Ticker::new();
    c.bench_function(&format!("overhead/{name}"), |b| {
        b.iter_custom(|iters| added_time(iters, &mut fut, &mut bare))
    });
}

/// Time `fut`'s polls take beyond a bare future's, over `iters` polls of
/// each, interleaved in runs so that both see the same machine, and
/// measured in thread CPU time so that time the thread spends descheduled
/// does not count: on a shared machine, load shifts within seconds and
/// would skew two separate wall-clock measurements by more than the
/// difference being measured. The clock reads cost the same in both arms
/// and cancel out.
fn added_time<F: Future + Unpin>(iters: u64, fut: &mut F, bare: &mut Ticker) -> Duration {
    const RUN: u64 = 4096;
    let mut cx = Context::from_waker(Waker::noop());
    let (mut managed_ns, mut bare_ns) = (0, 0);
    let mut left = iters;
    while left > 0 {
        let n = left.min(RUN);
        let t = thread_time_ns();
        for _ in 0..n {
            black_box(Pin::new(&mut *fut).poll(&mut cx).is_pending());
        }
        let u = thread_time_ns();
        for _ in 0..n {
            black_box(Pin::new(&mut *bare).poll(&mut cx).is_pending());
        }
        let v = thread_time_ns();
        managed_ns += u - t;
        bare_ns += v - u;
        left -= n;
    }
    Duration::from_nanos(managed_ns.saturating_sub(bare_ns))
}

struct NoopHooks;
impl PreemptionHooks for NoopHooks {}

fn managed_poll(c: &mut Criterion) {
    c.bench_function("poll/bare", |b| {
        let mut fut = Ticker::new();
        let mut cx = Context::from_waker(Waker::noop());
        b.iter(|| Pin::new(&mut fut).poll(&mut cx).is_pending())
    });

    let pulse = Pulse::new();
    bench_polls(c, "managed_monitor", Ticker::new().pulse(&pulse));

    let hooked = Pulse::new();
    hooked.set_hooks(Arc::new(NoopHooks));
    bench_polls(c, "managed_hooks", Ticker::new().pulse(&hooked));

    // One slow first poll makes a bad window; the task then stays at Warn
    // (never demoted, never promoted further) for the whole measurement.
    // Its polls are short, so its CPU time is not read.
    let strict = Pulse::builder()
        .slow_poll_threshold(Duration::from_micros(50))
        .slow_polls_per_window(1)
        .clean_windows_to_demote(u32::MAX)
        .max_tier(Tier::Warn)
        .build()
        .expect("valid configuration");
    bench_polls(c, "managed_suspect_short", suspect(&strict));

    // With a 4 ns threshold every poll is long enough to be charged, so
    // CPU time is read around each one: a suspect's long poll, minus the
    // length of the poll itself.
    let cpu_timed = Pulse::builder()
        .slow_poll_threshold(Duration::from_nanos(4))
        .slow_polls_per_window(1)
        .clean_windows_to_demote(u32::MAX)
        .max_tier(Tier::Warn)
        .build()
        .expect("valid configuration");
    bench_polls(c, "managed_suspect_cpu", suspect(&cpu_timed));
}

/// A task of `pulse`, polled once slowly so it is at `Warn`.
fn suspect(pulse: &Pulse) -> impl Future<Output = ()> + Unpin {
    let mut task = Ticker {
        ticks: 0,
        first_poll_spin: Duration::from_micros(200),
    }
    .pulse(pulse);
    let _ = Pin::new(&mut task).poll(&mut Context::from_waker(Waker::noop()));
    assert_eq!(pulse.snapshot().count(Tier::Warn), 1, "task not at Warn");
    task
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = managed_poll
}
criterion_main!(benches);
