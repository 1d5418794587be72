//! The full managed-poll cycle against a bare poll of the same future.
//!
//! The future does almost nothing (a counter bump, then `Pending`), so the
//! difference between `bare` and each `managed_*` case is what tokio-pulse
//! adds to one poll. Polled by hand with a no-op waker: no runtime, no
//! scheduler, nothing else in the measurement.
//!
//! - `managed_monitor`: a well-behaved task, no hooks. The wall clock (TSC)
//!   is read twice; thread CPU time is not read ("CPU timing off"). This is
//!   what nearly every poll costs.
//! - `managed_hooks`: the same with no-op hooks installed.
//! - `managed_warn`: a task held at `Warn`, whose polls also read thread CPU
//!   time twice ("CPU timing on"): what a suspect's poll costs.
//!
//! `cargo bench --bench managed_poll`

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

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

fn bench_polls<F: Future + Unpin>(c: &mut Criterion, name: &str, mut fut: F) {
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function(name, |b| {
        b.iter(|| Pin::new(&mut fut).poll(&mut cx).is_pending())
    });
}

struct NoopHooks;
impl PreemptionHooks for NoopHooks {}

fn managed_poll(c: &mut Criterion) {
    bench_polls(c, "poll/bare", Ticker::new());

    let pulse = Pulse::new();
    bench_polls(c, "poll/managed_monitor", Ticker::new().pulse(&pulse));

    let hooked = Pulse::new();
    hooked.set_hooks(Arc::new(NoopHooks));
    bench_polls(c, "poll/managed_hooks", Ticker::new().pulse(&hooked));

    // One slow first poll makes a bad window; the task then stays at Warn
    // (never demoted, never promoted further) for the whole measurement.
    let strict = Pulse::builder()
        .slow_poll_threshold(Duration::from_micros(50))
        .slow_polls_per_window(1)
        .clean_windows_to_demote(u32::MAX)
        .max_tier(Tier::Warn)
        .build()
        .expect("valid configuration");
    let mut suspect = Ticker {
        ticks: 0,
        first_poll_spin: Duration::from_micros(200),
    }
    .pulse(&strict);
    let _ = Pin::new(&mut suspect).poll(&mut Context::from_waker(Waker::noop()));
    assert_eq!(strict.snapshot().count(Tier::Warn), 1, "task not at Warn");
    bench_polls(c, "poll/managed_warn", suspect);
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
