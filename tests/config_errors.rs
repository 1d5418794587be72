//! Every invalid configuration value is rejected with a message that names
//! the setter and the rule; no value, however extreme, makes the builder or
//! `reconfigure` panic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use proptest::prelude::*;
use tokio_pulse::{
    ConfigError, IsolationPriority, PollReport, PreemptionHooks, Profile, Pulse, PulseBuilder,
    PulseExt, StackCapture, TaskInfo, Tier,
};

fn rejected(b: PulseBuilder) -> (ConfigError, String) {
    let err = b.build().expect_err("invalid configuration was accepted");
    let msg = err.to_string();
    (err, msg)
}

#[test]
fn defaults_and_every_profile_build() {
    for p in [Profile::Aggressive, Profile::Balanced, Profile::Permissive] {
        Pulse::builder().profile(p).build().unwrap();
    }
}

#[test]
fn zero_durations_are_rejected_naming_the_field() {
    let cases: [(&str, PulseBuilder); 3] = [
        (
            "slow_poll_threshold",
            Pulse::builder().slow_poll_threshold(Duration::ZERO),
        ),
        ("cpu_budget", Pulse::builder().cpu_budget(Duration::ZERO)),
        (
            "budget_window",
            Pulse::builder().budget_window(Duration::ZERO),
        ),
    ];
    for (field, b) in cases {
        let (err, msg) = rejected(b);
        assert_eq!(err, ConfigError::Zero { field });
        assert_eq!(msg, format!("`{field}` must be greater than zero"));
    }
}

#[test]
fn zero_counts_are_rejected_naming_the_field() {
    let cases: [(&str, PulseBuilder); 3] = [
        (
            "slow_polls_per_window",
            Pulse::builder().slow_polls_per_window(0),
        ),
        (
            "clean_windows_to_demote",
            Pulse::builder().clean_windows_to_demote(0),
        ),
        (
            "max_warnings_per_second",
            Pulse::builder().max_warnings_per_second(0),
        ),
    ];
    for (field, b) in cases {
        let (err, msg) = rejected(b);
        assert_eq!(err, ConfigError::Zero { field });
        assert!(msg.contains(field), "{msg}");
    }
}

#[test]
fn a_budget_longer_than_its_window_is_rejected() {
    let (err, msg) = rejected(
        Pulse::builder()
            .budget_window(Duration::from_millis(50))
            .cpu_budget(Duration::from_millis(80)),
    );
    assert!(matches!(
        err,
        ConfigError::Inconsistent {
            field: "cpu_budget",
            ..
        }
    ));
    assert!(
        msg.contains("`cpu_budget`") && msg.contains("longer than its window"),
        "{msg}"
    );
}

#[test]
fn a_slow_poll_threshold_not_shorter_than_the_window_is_rejected() {
    let (err, msg) = rejected(Pulse::builder().slow_poll_threshold(Duration::from_millis(100)));
    assert!(matches!(
        err,
        ConfigError::Inconsistent {
            field: "slow_poll_threshold",
            ..
        }
    ));
    assert!(msg.contains("shorter than the window"), "{msg}");
}

#[test]
fn a_window_too_short_for_the_profiles_budget_is_blamed_on_the_window_not_the_budget() {
    // The budget is unset: it is derived from the window (a tenth of it for
    // Aggressive), which rounds to less than a nanosecond here.
    let (err, msg) = rejected(
        Pulse::builder()
            .profile(Profile::Aggressive)
            .budget_window(Duration::from_nanos(3)),
    );
    assert!(
        matches!(
            err,
            ConfigError::Inconsistent {
                field: "slow_poll_threshold",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("the window (3ns)"), "{msg}");
}

#[test]
fn a_window_over_a_minute_is_rejected() {
    let (err, msg) = rejected(
        Pulse::builder()
            .budget_window(Duration::from_secs(61))
            .cpu_budget(Duration::from_secs(1)),
    );
    assert!(matches!(
        err,
        ConfigError::OutOfRange {
            field: "budget_window",
            ..
        }
    ));
    assert!(msg.contains("at most 60s"), "{msg}");
}

#[test]
fn reconfigure_validates_and_refuses_fixed_settings() {
    let pulse = Pulse::builder().isolation_threads(2).build().unwrap();
    let err = pulse
        .reconfigure(Pulse::builder().isolation_threads(3))
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::NotReloadable {
            field: "isolation_threads"
        }
    );
    assert!(
        err.to_string().contains("`isolation_threads` is fixed"),
        "{err}"
    );
    let err = pulse
        .reconfigure(
            Pulse::builder()
                .isolation_threads(2)
                .cpu_budget(Duration::ZERO),
        )
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::Zero {
            field: "cpu_budget"
        }
    );
    pulse
        .reconfigure(
            Pulse::builder()
                .isolation_threads(2)
                .profile(Profile::Aggressive),
        )
        .unwrap();
}

#[test]
fn intervention_settings_are_validated() {
    let (err, _) = rejected(Pulse::builder().slow_lane_slots(0));
    assert_eq!(
        err,
        ConfigError::Zero {
            field: "slow_lane_slots"
        }
    );
    let (err, _) = rejected(Pulse::builder().isolation_threads(0));
    assert_eq!(
        err,
        ConfigError::Zero {
            field: "isolation_threads"
        }
    );
    let (err, msg) = rejected(Pulse::builder().isolation_threads(5000));
    assert!(
        matches!(
            err,
            ConfigError::OutOfRange {
                field: "isolation_threads",
                ..
            }
        ),
        "{msg}"
    );
    let (err, msg) =
        rejected(Pulse::builder().isolation_priority(tokio_pulse::IsolationPriority::Nice(40)));
    assert!(msg.contains("-20 to 19"), "{msg}");
    assert!(matches!(
        err,
        ConfigError::OutOfRange {
            field: "isolation_priority",
            ..
        }
    ));
    let (err, msg) = rejected(Pulse::builder().watchdog_threshold(Duration::from_micros(500)));
    assert!(
        matches!(
            err,
            ConfigError::Inconsistent {
                field: "watchdog_threshold",
                ..
            }
        ),
        "{msg}"
    );
}

/// The field an error names.
fn field_of(err: &ConfigError) -> &'static str {
    match err {
        ConfigError::Zero { field }
        | ConfigError::OutOfRange { field, .. }
        | ConfigError::NotReloadable { field }
        | ConfigError::Inconsistent { field, .. } => field,
        other => panic!("an error this test does not know: {other:?}"),
    }
}

#[test]
fn values_at_and_past_every_bound_are_rejected_naming_their_setter() {
    let ms = Duration::from_millis;
    let cases: Vec<(&str, PulseBuilder)> = vec![
        (
            "slow_poll_threshold",
            Pulse::builder().slow_poll_threshold(Duration::MAX),
        ),
        (
            "slow_poll_threshold",
            Pulse::builder().slow_poll_threshold(ms(100)),
        ),
        ("cpu_budget", Pulse::builder().cpu_budget(Duration::MAX)),
        ("cpu_budget", Pulse::builder().cpu_budget(ms(101))),
        (
            "budget_window",
            Pulse::builder().budget_window(Duration::MAX),
        ),
        (
            "budget_window",
            Pulse::builder()
                .budget_window(Duration::from_secs(60) + Duration::from_nanos(1))
                .cpu_budget(ms(1)),
        ),
        (
            "isolation_threads",
            Pulse::builder().isolation_threads(1025),
        ),
        (
            "isolation_threads",
            Pulse::builder().isolation_threads(usize::MAX),
        ),
        (
            "isolation_priority",
            Pulse::builder().isolation_priority(IsolationPriority::Nice(-21)),
        ),
        (
            "isolation_priority",
            Pulse::builder().isolation_priority(IsolationPriority::Nice(20)),
        ),
        (
            "isolation_priority",
            Pulse::builder().isolation_priority(IsolationPriority::Nice(i8::MIN)),
        ),
        (
            "isolation_priority",
            Pulse::builder().isolation_priority(IsolationPriority::Nice(i8::MAX)),
        ),
        (
            "watchdog_threshold",
            Pulse::builder().watchdog_threshold(Duration::ZERO),
        ),
        (
            "watchdog_threshold",
            Pulse::builder().watchdog_threshold(ms(1)),
        ),
        (
            "origin_memory_capacity",
            Pulse::builder().origin_memory_capacity(0),
        ),
        (
            "origin_memory_capacity",
            Pulse::builder().origin_memory_capacity(65_537),
        ),
        ("origin_clean_tasks", Pulse::builder().origin_clean_tasks(0)),
        (
            "origin_clean_tasks",
            Pulse::builder()
                .without_origin_memory()
                .origin_clean_tasks(0),
        ),
        (
            "isolation_floor",
            Pulse::builder().isolation_floor(0, ms(50)),
        ),
        (
            "isolation_floor",
            Pulse::builder().isolation_floor(51, ms(50)),
        ),
        (
            "isolation_floor",
            Pulse::builder().isolation_floor(25, ms(10) - Duration::from_nanos(1)),
        ),
        (
            "isolation_floor",
            Pulse::builder().isolation_floor(25, Duration::from_secs(10) + Duration::from_nanos(1)),
        ),
    ];
    for (field, builder) in cases {
        let (err, msg) = rejected(builder);
        assert_eq!(field_of(&err), field, "{msg}");
        assert!(msg.contains(&format!("`{field}`")), "{msg}");
    }
    // The largest values that are allowed still build.
    Pulse::builder()
        .budget_window(Duration::from_secs(60))
        .cpu_budget(Duration::from_secs(60))
        .slow_poll_threshold(Duration::from_secs(59))
        .watchdog_threshold(Duration::MAX)
        .slow_polls_per_window(u32::MAX)
        .clean_windows_to_demote(u32::MAX)
        .max_warnings_per_second(u32::MAX)
        .slow_lane_slots(usize::MAX)
        .isolation_threads(1024)
        .isolation_priority(IsolationPriority::Nice(-20))
        .origin_memory_capacity(65_536)
        .origin_clean_tasks(u32::MAX)
        .isolation_floor(50, Duration::from_secs(10))
        .build()
        .unwrap();
    Pulse::builder().isolation_floor(1, ms(10)).build().unwrap();
}

#[test]
fn an_isolation_floor_out_of_range_is_refused_with_its_rule() {
    let (err, msg) = rejected(Pulse::builder().isolation_floor(80, Duration::from_millis(50)));
    assert_eq!(
        err,
        ConfigError::OutOfRange {
            field: "isolation_floor",
            value: "80 %".into(),
            rule: "a share from 1 to 50 %",
        }
    );
    assert_eq!(
        msg,
        "`isolation_floor` is 80 %, but it must be a share from 1 to 50 %"
    );
    let (_, msg) = rejected(Pulse::builder().isolation_floor(25, Duration::from_millis(1)));
    assert!(
        msg.contains("is 1ms, but it must be a time from 10ms to 10s"),
        "{msg}"
    );
    // Reloadable, and can be turned off and on again.
    let pulse = Pulse::new();
    pulse
        .reconfigure(Pulse::builder().isolation_floor(10, Duration::from_millis(200)))
        .unwrap();
    pulse
        .reconfigure(Pulse::builder().without_isolation_floor())
        .unwrap();
    pulse.reconfigure(Pulse::builder()).unwrap();
}

#[test]
fn reconfigure_refuses_to_change_the_pool_priority_or_to_add_or_remove_the_watchdog() {
    let pulse = Pulse::new();
    let cases = [
        (
            "isolation_priority",
            Pulse::builder().isolation_priority(IsolationPriority::Inherit),
        ),
        ("without_watchdog", Pulse::builder().without_watchdog()),
        (
            "without_origin_memory",
            Pulse::builder().without_origin_memory(),
        ),
        (
            "origin_memory_capacity",
            Pulse::builder().origin_memory_capacity(64),
        ),
        (
            "stack_capture",
            Pulse::builder().stack_capture(StackCapture::Off),
        ),
    ];
    for (field, builder) in cases {
        let err = pulse.reconfigure(builder).unwrap_err();
        assert_eq!(err, ConfigError::NotReloadable { field });
        assert!(
            err.to_string().contains(&format!("`{field}` is fixed")),
            "{err}"
        );
    }
    let without = Pulse::builder().without_watchdog().build().unwrap();
    let err = without
        .reconfigure(Pulse::builder().watchdog_threshold(Duration::from_millis(50)))
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::NotReloadable {
            field: "without_watchdog"
        }
    );
}

/// Only a real-time signal can carry a stack capture: any other has a
/// meaning of its own (and the kernel's default action for it).
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[test]
fn a_stack_capture_signal_that_is_not_real_time_is_rejected_naming_the_range() {
    for signal in [0, -1, libc::SIGSEGV, libc::SIGPROF, libc::SIGRTMAX() + 1] {
        let (err, msg) = rejected(Pulse::builder().stack_capture(StackCapture::Signal(signal)));
        assert!(
            matches!(
                err,
                ConfigError::OutOfRange {
                    field: "stack_capture",
                    ..
                }
            ),
            "{err:?}"
        );
        let range = format!(
            "from SIGRTMIN ({}) to SIGRTMAX ({})",
            libc::SIGRTMIN(),
            libc::SIGRTMAX()
        );
        assert!(msg.contains(&range), "{msg}");
        assert!(
            msg.contains(&format!("StackCapture::Signal({signal})")),
            "{msg}"
        );
    }
    Pulse::builder()
        .stack_capture(StackCapture::Signal(libc::SIGRTMAX() - 2))
        .build()
        .expect("a free real-time signal");
}

#[derive(Default)]
struct SlowPolls(AtomicU64);

impl PreemptionHooks for SlowPolls {
    fn after_poll(&self, _task: &TaskInfo<'_>, poll: &PollReport) {
        self.0.fetch_add(u64::from(poll.slow), Relaxed);
    }
}

#[test]
fn a_rejected_reconfigure_changes_nothing() {
    let pulse = Pulse::builder()
        .slow_poll_threshold(Duration::from_millis(1))
        .build()
        .unwrap();
    let slow = Arc::new(SlowPolls::default());
    pulse.set_hooks(slow.clone());
    // A valid threshold that would make a 20 ms poll fine, with an invalid
    // budget: refused as a whole.
    pulse
        .reconfigure(
            Pulse::builder()
                .slow_poll_threshold(Duration::from_millis(50))
                .cpu_budget(Duration::ZERO),
        )
        .unwrap_err();
    // Blocked in a sleep, not waiting for a CPU: charged in full however
    // loaded the machine is.
    let poll_20ms = std::future::poll_fn(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::task::Poll::Ready(())
    });
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(poll_20ms.pulse(&pulse));
    assert_eq!(
        slow.0.load(Relaxed),
        1,
        "the 1 ms threshold no longer applies"
    );
}

/// One builder call, with any value.
#[derive(Clone, Debug)]
enum Set {
    Profile(Profile),
    SlowPollThreshold(Duration),
    CpuBudget(Duration),
    BudgetWindow(Duration),
    SlowPollsPerWindow(u32),
    CleanWindowsToDemote(u32),
    MaxTier(Tier),
    MaxWarningsPerSecond(u32),
    SlowLaneSlots(usize),
    IsolationThreads(usize),
    IsolationPriority(IsolationPriority),
    WatchdogThreshold(Duration),
    WithoutWatchdog,
    OriginMemoryCapacity(usize),
    OriginCleanTasks(u32),
    WithoutOriginMemory,
    IsolationFloor(u8, Duration),
    WithoutIsolationFloor,
    StackCapture(StackCapture),
}

impl Set {
    fn apply(&self, b: PulseBuilder) -> PulseBuilder {
        match *self {
            Set::Profile(p) => b.profile(p),
            Set::SlowPollThreshold(d) => b.slow_poll_threshold(d),
            Set::CpuBudget(d) => b.cpu_budget(d),
            Set::BudgetWindow(d) => b.budget_window(d),
            Set::SlowPollsPerWindow(n) => b.slow_polls_per_window(n),
            Set::CleanWindowsToDemote(n) => b.clean_windows_to_demote(n),
            Set::MaxTier(t) => b.max_tier(t),
            Set::MaxWarningsPerSecond(n) => b.max_warnings_per_second(n),
            Set::SlowLaneSlots(n) => b.slow_lane_slots(n),
            Set::IsolationThreads(n) => b.isolation_threads(n),
            Set::IsolationPriority(p) => b.isolation_priority(p),
            Set::WatchdogThreshold(d) => b.watchdog_threshold(d),
            Set::WithoutWatchdog => b.without_watchdog(),
            Set::OriginMemoryCapacity(n) => b.origin_memory_capacity(n),
            Set::OriginCleanTasks(n) => b.origin_clean_tasks(n),
            Set::WithoutOriginMemory => b.without_origin_memory(),
            Set::IsolationFloor(p, d) => b.isolation_floor(p, d),
            Set::WithoutIsolationFloor => b.without_isolation_floor(),
            Set::StackCapture(c) => b.stack_capture(c),
        }
    }

    /// The setter's name, as errors name it.
    fn field(&self) -> &'static str {
        match self {
            Set::Profile(_) => "profile",
            Set::SlowPollThreshold(_) => "slow_poll_threshold",
            Set::CpuBudget(_) => "cpu_budget",
            Set::BudgetWindow(_) => "budget_window",
            Set::SlowPollsPerWindow(_) => "slow_polls_per_window",
            Set::CleanWindowsToDemote(_) => "clean_windows_to_demote",
            Set::MaxTier(_) => "max_tier",
            Set::MaxWarningsPerSecond(_) => "max_warnings_per_second",
            Set::SlowLaneSlots(_) => "slow_lane_slots",
            Set::IsolationThreads(_) => "isolation_threads",
            Set::IsolationPriority(_) => "isolation_priority",
            Set::WatchdogThreshold(_) => "watchdog_threshold",
            Set::WithoutWatchdog => "without_watchdog",
            Set::OriginMemoryCapacity(_) => "origin_memory_capacity",
            Set::OriginCleanTasks(_) => "origin_clean_tasks",
            Set::WithoutOriginMemory => "without_origin_memory",
            Set::IsolationFloor(..) => "isolation_floor",
            Set::WithoutIsolationFloor => "without_isolation_floor",
            Set::StackCapture(_) => "stack_capture",
        }
    }
}

const SETTERS: [&str; 19] = [
    "profile",
    "slow_poll_threshold",
    "cpu_budget",
    "budget_window",
    "slow_polls_per_window",
    "clean_windows_to_demote",
    "max_tier",
    "max_warnings_per_second",
    "slow_lane_slots",
    "isolation_threads",
    "isolation_priority",
    "watchdog_threshold",
    "without_watchdog",
    "origin_memory_capacity",
    "origin_clean_tasks",
    "without_origin_memory",
    "isolation_floor",
    "without_isolation_floor",
    "stack_capture",
];

/// Durations around every bound the rules use, and the extremes.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..16).prop_map(Duration::from_nanos),
        (0u64..1_000).prop_map(Duration::from_nanos),
        (0u64..200_000_000).prop_map(Duration::from_nanos),
        (0u64..120).prop_map(Duration::from_secs),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), Just(u32::MAX), any::<u32>()]
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(1),
        1000usize..1100,
        Just(usize::MAX),
        any::<usize>()
    ]
}

fn set() -> impl Strategy<Value = Set> {
    let profile = prop_oneof![
        Just(Profile::Aggressive),
        Just(Profile::Balanced),
        Just(Profile::Permissive)
    ];
    let priority = prop_oneof![
        Just(IsolationPriority::Idle),
        Just(IsolationPriority::Inherit),
        any::<i8>().prop_map(IsolationPriority::Nice),
    ];
    prop_oneof![
        profile.prop_map(Set::Profile),
        duration().prop_map(Set::SlowPollThreshold),
        duration().prop_map(Set::CpuBudget),
        duration().prop_map(Set::BudgetWindow),
        count().prop_map(Set::SlowPollsPerWindow),
        count().prop_map(Set::CleanWindowsToDemote),
        (0usize..4).prop_map(|t| Set::MaxTier(Tier::ALL[t])),
        count().prop_map(Set::MaxWarningsPerSecond),
        size().prop_map(Set::SlowLaneSlots),
        size().prop_map(Set::IsolationThreads),
        priority.prop_map(Set::IsolationPriority),
        duration().prop_map(Set::WatchdogThreshold),
        Just(Set::WithoutWatchdog),
        prop_oneof![size(), 65_530usize..65_540].prop_map(Set::OriginMemoryCapacity),
        count().prop_map(Set::OriginCleanTasks),
        Just(Set::WithoutOriginMemory),
        (any::<u8>(), duration()).prop_map(|(p, d)| Set::IsolationFloor(p, d)),
        Just(Set::WithoutIsolationFloor),
        prop_oneof![
            Just(StackCapture::On),
            Just(StackCapture::Off),
            any::<i32>().prop_map(StackCapture::Signal),
            (30i32..70).prop_map(StackCapture::Signal),
        ]
        .prop_map(Set::StackCapture),
    ]
}

/// A refused value is blamed on a setter, in the message too. A value
/// that is invalid on its own (zero, out of range) is blamed on a setter
/// that was called; a value inconsistent with another may be blamed on a
/// default the user did not set, and its message then shows both values.
fn check_error(err: &ConfigError, calls: &[Set]) -> Result<(), TestCaseError> {
    let field = field_of(err);
    let msg = err.to_string();
    prop_assert!(SETTERS.contains(&field), "{field} is not a setter");
    prop_assert!(msg.contains(&format!("`{field}`")), "{msg}");
    let called = calls.iter().any(|c| c.field() == field);
    match err {
        ConfigError::Zero { .. } | ConfigError::OutOfRange { .. } => {
            prop_assert!(called, "blamed on `{field}`, which was not set: {msg}");
        }
        ConfigError::Inconsistent { reason, .. } => prop_assert!(!reason.is_empty()),
        _ => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES overrides, as for the other property tests.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1024),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_sequence_of_setters_panics_and_every_error_names_its_setter(
        calls in prop::collection::vec(set(), 0..12),
    ) {
        let builder = calls.iter().fold(Pulse::builder(), |b, c| c.apply(b));
        // Without a watchdog: hundreds of `Pulse`s would each start one.
        let reloadable = |b: PulseBuilder| {
            b.without_watchdog()
                .isolation_threads(2)
                .isolation_priority(IsolationPriority::Idle)
                .origin_memory_capacity(1024)
                .stack_capture(StackCapture::On)
        };
        let target = reloadable(Pulse::builder()).build().unwrap();
        match builder.clone().build() {
            Ok(pulse) => drop(pulse),
            Err(err) => check_error(&err, &calls)?,
        }
        // `reconfigure` validates the same way, then refuses changes to
        // what is fixed at build time.
        match target.reconfigure(builder.clone()) {
            Ok(()) => {}
            Err(ConfigError::NotReloadable { field }) => {
                // The target has no watchdog; the builder has one unless told otherwise.
                let changed = field == "without_watchdog" || calls.iter().any(|c| c.field() == field);
                prop_assert!(changed, "refused to change `{}`, which was not set", field);
            }
            Err(err) => check_error(&err, &calls)?,
        }
        match target.reconfigure(reloadable(builder)) {
            Ok(()) => {}
            Err(err) => {
                prop_assert!(!matches!(err, ConfigError::NotReloadable { .. }), "{err}");
                check_error(&err, &calls)?;
            }
        }
    }
}
