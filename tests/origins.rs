//! Origin memory: tasks from a spawn site or name whose earlier tasks
//! hogged their workers start at the tier the origin earned, so a task
//! that blocks in its very first poll runs that poll off the main workers.

mod common;

use std::time::Duration;

use common::{judged_then_isolated, on_pool, spin, thread_name};
use tokio_pulse::{Origin, Profile, Pulse, PulseExt, Tier};

#[test]
fn tasks_from_one_site_that_block_20ms_in_one_poll_start_isolated_after_the_first_few() {
    let _serial = common::serial_blocking();
    let rt = common::two_worker_runtime();
    let pulse = Pulse::new();
    let mut threads = Vec::new();
    let mut site = None;
    rt.block_on(async {
        for _ in 0..10 {
            let task = pulse.spawn(async {
                spin(Duration::from_millis(20));
                thread_name()
            });
            threads.push(task.await.unwrap());
            if site.is_none() {
                site = pulse.snapshot().origins.first().map(|o| o.origin.clone());
            }
        }
    });
    let (judged, then_isolated) = judged_then_isolated(&threads);
    assert!(
        (1..=4).contains(&judged) && then_isolated,
        "not judged a few times, then isolated from the first poll: {threads:?}"
    );
    let snapshot = pulse.snapshot();
    let origin = snapshot.origins.first().expect("the site is remembered");
    assert!(
        matches!(&origin.origin, Origin::Site(l) if l.file() == file!()),
        "{origin:?}"
    );
    assert_eq!(Some(&origin.origin), site.as_ref());
    assert_eq!(origin.starting_tier, Tier::Isolate);
    assert!(origin.offenders >= judged as u64, "{origin:?}");
    assert_eq!(origin.tasks_seen, 10);
}

#[test]
fn a_flood_of_distinct_offending_names_keeps_origin_memory_bounded() {
    let _serial = common::serial_blocking();
    let rt = common::two_worker_runtime();
    // 250 µs threshold: a 3 ms poll is a bad window on its own.
    let pulse = Pulse::builder()
        .profile(Profile::Aggressive)
        .origin_memory_capacity(32)
        .build()
        .unwrap();
    let mut most = 0;
    rt.block_on(async {
        for i in 0..300 {
            let name = format!("/user/{i}");
            pulse
                .spawn_named(name, async { spin(Duration::from_millis(3)) })
                .await
                .unwrap();
            most = most.max(pulse.snapshot().origins.len());
        }
    });
    assert!(most >= 16, "offending names were not remembered: {most}");
    assert!(most <= 32, "{most} origins remembered, capacity 32");
}

#[test]
fn well_behaved_names_are_not_remembered_at_all() {
    let rt = common::two_worker_runtime();
    let pulse = Pulse::builder()
        .slow_poll_threshold(Duration::from_millis(50))
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..2_000 {
            pulse
                .spawn_named(format!("/user/{i}"), async {
                    tokio::task::yield_now().await;
                })
                .await
                .unwrap();
        }
    });
    assert!(pulse.snapshot().origins.is_empty());
}

#[test]
fn a_send_future_run_by_a_join_set_can_be_isolated_and_keeps_its_output() {
    let _serial = common::serial_blocking();
    let rt = common::two_worker_runtime();
    let pulse = Pulse::new();
    let threads = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        set.spawn(
            async {
                let mut threads = Vec::new();
                for _ in 0..8 {
                    spin(Duration::from_millis(10));
                    threads.push(thread_name());
                    tokio::task::yield_now().await;
                }
                threads
            }
            .pulse_send(&pulse),
        );
        set.join_next().await.unwrap().unwrap()
    });
    assert!(
        on_pool(threads.last().unwrap()),
        "never moved to the pool: {threads:?}"
    );
    assert!(pulse.totals().promotions[Tier::Isolate] >= 1);
}

#[test]
fn a_future_that_is_not_send_is_managed_but_never_moved() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let pulse = Pulse::new();
    let local = tokio::task::LocalSet::new();
    let rc = std::rc::Rc::new(());
    let out = local.block_on(&rt, async {
        // Repeated offences from one name: its origin climbs to `Isolate`,
        // but a future that cannot move starts (and stays) at `Yield`.
        // (Six: a lone long poll while the ticker is idle may be judged
        // short; see `Timing::Sampled`.)
        for _ in 0..6 {
            let rc = rc.clone();
            async move {
                spin(Duration::from_millis(10));
                tokio::task::yield_now().await;
                drop(rc);
            }
            .pulse_named(&pulse, "local")
            .await;
        }
        let probe = async { thread_name() }.pulse_named(&pulse, "local");
        probe.await
    });
    assert!(!on_pool(&out));
    assert_eq!(
        pulse
            .snapshot()
            .origin_named("local")
            .unwrap()
            .starting_tier,
        Tier::Isolate
    );
    assert_eq!(pulse.totals().promotions[Tier::Isolate], 0);
}
