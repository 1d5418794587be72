//! Every invalid configuration value is rejected with a message that names
//! the setter and the rule.

use std::time::Duration;

use tokio_pulse::{ConfigError, Profile, Pulse, PulseBuilder};

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
