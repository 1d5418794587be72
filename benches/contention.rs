//! Per-poll cost under contention: many threads polling managed tasks of
//! one `Pulse` at once, and many live managed tasks.
//!
//! The design document's known bottleneck was a shared map consulted on
//! every poll, which degraded past 1 000 tasks. Here the poll path touches
//! only the task's own state and read-only `Pulse` state, so the cost per
//! poll should not grow with threads or with live tasks.
//!
//! Thread counts above the machine's core count oversubscribe it, so the
//! threaded cases report each thread's own CPU time per poll (time spent
//! descheduled does not count), averaged over threads: a cost that grows
//! with threads would mean cache-line sharing between them.
//!
//! `cargo bench --bench contention`

mod common;

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::thread_time_ns;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokio_pulse::{PreemptionHooks, Pulse, PulseExt};

/// Pending forever, after a counter bump.
#[derive(Default)]
struct Ticker(u64);

impl Future for Ticker {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        self.0 = black_box(self.0 + 1);
        Poll::Pending
    }
}

#[inline]
fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>, cx: &mut Context<'_>) {
    black_box(fut.poll(cx).is_pending());
}

/// `threads` threads each poll their own future `iters` times, all at once;
/// returns the mean over threads of each thread's CPU time.
fn polls_on_threads<F, M>(threads: usize, iters: u64, make: M) -> Duration
where
    F: Future + Unpin,
    M: Fn() -> F + Sync,
{
    let start = Barrier::new(threads);
    let total_ns = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut fut = make();
                let mut cx = Context::from_waker(Waker::noop());
                start.wait();
                let t0 = thread_time_ns();
                for _ in 0..iters {
                    poll_once(Pin::new(&mut fut), &mut cx);
                }
                total_ns.fetch_add(thread_time_ns() - t0, Ordering::Relaxed);
            });
        }
    });
    Duration::from_nanos(total_ns.into_inner() / threads as u64)
}

struct NoopHooks;
impl PreemptionHooks for NoopHooks {}

fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("threads");
    let pulse = Pulse::new();
    let hooked = Pulse::new();
    hooked.set_hooks(Arc::new(NoopHooks));
    for n in [1, 2, 4, 8, 16] {
        g.bench_with_input(BenchmarkId::new("bare", n), &n, |b, &n| {
            b.iter_custom(|iters| polls_on_threads(n, iters, Ticker::default))
        });
        g.bench_with_input(BenchmarkId::new("managed", n), &n, |b, &n| {
            b.iter_custom(|iters| polls_on_threads(n, iters, || Ticker::default().pulse(&pulse)))
        });
        g.bench_with_input(BenchmarkId::new("managed_hooks", n), &n, |b, &n| {
            b.iter_custom(|iters| polls_on_threads(n, iters, || Ticker::default().pulse(&hooked)))
        });
    }
    g.finish();
}

/// A [`Ticker`] with 120 bytes of further state, the size of a small
/// `async fn`'s state machine, so that many of them take realistic memory.
#[derive(Default)]
struct Sized128 {
    ticker: Ticker,
    _state: [u64; 15],
}

impl Future for Sized128 {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.ticker).poll(cx)
    }
}

/// One poll each, in turn, over `tasks`: every poll touches a different
/// task's memory, as when a runtime works through many ready tasks.
fn round_robin<F: Future + ?Sized>(tasks: &mut [Pin<Box<F>>]) -> impl FnMut() + '_ {
    let mut cx = Context::from_waker(Waker::noop());
    let mut i = 0;
    move || {
        poll_once(tasks[i].as_mut(), &mut cx);
        i += 1;
        if i == tasks.len() {
            i = 0;
        }
    }
}

/// Time `managed` takes beyond `bare` over `iters` calls of each,
/// interleaved in runs so that both see the same machine, and measured in
/// thread CPU time so that time the thread spends descheduled (other
/// processes on a shared machine) does not count. The clock reads cost the
/// same in both arms and cancel out.
fn added_time(iters: u64, mut managed: impl FnMut(), mut bare: impl FnMut()) -> Duration {
    const RUN: u64 = 4096;
    let (mut managed_ns, mut bare_ns) = (0, 0);
    let mut left = iters;
    while left > 0 {
        let n = left.min(RUN);
        let t = thread_time_ns();
        (0..n).for_each(|_| managed());
        let u = thread_time_ns();
        (0..n).for_each(|_| bare());
        let v = thread_time_ns();
        managed_ns += u - t;
        bare_ns += v - u;
        left -= n;
    }
    Duration::from_nanos(managed_ns.saturating_sub(bare_ns))
}

/// With 1, 1 000 and 100 000 live managed tasks registered with one
/// `Pulse`, what management adds to a poll (against bare futures of the
/// same size, see `added_time`):
///
/// - `one`: one of the tasks polled over and over. Flat unless something on
///   the poll path scales with the number of tasks alive.
/// - `round_robin`: all of them polled in turn, managed against as many bare
///   futures, as when a runtime works through many ready tasks. At 100 000
///   tasks their state no longer fits in cache, and every extra cache line
///   a managed task's poll touches shows.
fn live_tasks(c: &mut Criterion) {
    let mut g = c.benchmark_group("live_tasks");
    for n in [1usize, 1_000, 100_000] {
        let pulse = Pulse::new();
        // Boxed one by one, like futures in Tokio's task cells.
        let mut managed: Vec<_> = (0..n)
            .map(|_| Box::pin(Sized128::default().pulse(&pulse)))
            .collect();
        let mut bare: Vec<_> = (0..n).map(|_| Box::pin(Sized128::default())).collect();
        assert_eq!(pulse.task_count(), n);

        g.bench_with_input(BenchmarkId::new("one", n), &n, |b, _| {
            let (mut m, mut p) = (round_robin(&mut managed[..1]), round_robin(&mut bare[..1]));
            b.iter_custom(|iters| added_time(iters, &mut m, &mut p))
        });
        g.bench_with_input(BenchmarkId::new("round_robin", n), &n, |b, _| {
            let (mut m, mut p) = (round_robin(&mut managed), round_robin(&mut bare));
            b.iter_custom(|iters| added_time(iters, &mut m, &mut p))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = threads, live_tasks
}
criterion_main!(benches);
