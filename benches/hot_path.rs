//! The engine's building blocks that cost more than this harness's own
//! floor, each on its own: reading a task's counters and snapshot entry,
//! and every clock this platform offers (the engine's, for polls found
//! long; the scheduler figures, for the busy-host correction). Operations
//! that measured below the floor (the hook presence check, the window
//! budget charge, the tier check: each a load and a compare or two) were
//! dropped: their cost shows in the whole-runtime figures instead.
//!
//! `RUSTFLAGS="--cfg pulse_bench" cargo bench --bench hot_path`: the
//! operations are crate-private, exposed to benches only under that cfg.

#[cfg(pulse_bench)]
fn main() {
    inner::benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}

#[cfg(not(pulse_bench))]
fn main() {
    eprintln!(
        "hot_path times crate-private operations: run it with RUSTFLAGS=\"--cfg pulse_bench\" cargo bench --bench hot_path"
    );
}

#[cfg(pulse_bench)]
mod inner {
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    use criterion::{Criterion, criterion_group};
    use tokio_pulse::bench_internals::{SchedStatReader, TaskState, wall_clock_ns};

    /// What the harness itself costs per iteration (the loop and `black_box`):
    /// figures within a few tenths of a nanosecond of it are at the limit of
    /// what this harness can resolve.
    fn floor(c: &mut Criterion) {
        let x = 0u64;
        c.bench_function("floor/black_box", |b| b.iter(|| black_box(&x)));
    }

    fn task_state(c: &mut Criterion) {
        let mut g = c.benchmark_group("task");
        let task = TaskState::new();
        g.bench_function("counters", |b| b.iter(|| black_box(&task).counters()));
        g.bench_function("snapshot", |b| b.iter(|| black_box(&task).snapshot()));
        g.finish();
    }

    fn clocks(c: &mut Criterion) {
        let mut g = c.benchmark_group("clock");
        g.bench_function("engine_wall_clock", |b| b.iter(wall_clock_ns));
        let quanta = quanta::Clock::new();
        g.bench_function("quanta_raw", |b| b.iter(|| quanta.raw()));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: RDTSC has no preconditions on x86-64.
        g.bench_function("rdtsc", |b| {
            b.iter(|| unsafe { std::arch::x86_64::_rdtsc() })
        });
        g.bench_function("instant_now", |b| b.iter(Instant::now));
        let schedstat = SchedStatReader::current_thread();
        g.bench_function("engine_schedstat", |b| b.iter(|| schedstat.read()));
        #[cfg(unix)]
        unix_clocks(&mut g);
        g.finish();
    }

    #[cfg(unix)]
    fn unix_clocks(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
        fn gettime(clock: libc::clockid_t) -> libc::timespec {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid, writable timespec for the call.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            ts
        }
        g.bench_function("clock_gettime_monotonic", |b| {
            b.iter(|| gettime(libc::CLOCK_MONOTONIC))
        });
        g.bench_function("clock_gettime_thread_cputime", |b| {
            b.iter(|| gettime(libc::CLOCK_THREAD_CPUTIME_ID))
        });
        g.bench_function("clock_gettime_process_cputime", |b| {
            b.iter(|| gettime(libc::CLOCK_PROCESS_CPUTIME_ID))
        });
        #[cfg(target_os = "linux")]
        g.bench_function("getrusage_thread", |b| {
            b.iter(|| {
                let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
                // SAFETY: `usage` is valid, writable memory for one rusage;
                // getrusage initialises it in full when it returns 0.
                unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) }
            })
        });
    }

    fn config() -> Criterion {
        Criterion::default()
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(40)
    }

    criterion_group! {
        name = benches;
        config = config();
        targets = floor, task_state, clocks
    }
}
