//! The tower layer under a real axum server, driven over real HTTP: a
//! CPU-heavy route is attributed and handled by name, a fast one is not.

mod common;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::routing::get;
use common::{http, judged_then_isolated, on_pool, spin, thread_name};
use tokio_pulse::{PollReport, PreemptionHooks, Pulse, PulseLayer, TaskInfo, Tier};

/// Per-name polls, slow polls and tier changes, as the hooks report them.
#[derive(Default)]
struct ByName(Mutex<HashMap<String, Seen>>);

#[derive(Clone, Debug, Default)]
struct Seen {
    polls: u64,
    slow: u64,
    tiers: Vec<Tier>,
}

impl ByName {
    fn with(&self, task: &TaskInfo<'_>, f: impl FnOnce(&mut Seen)) {
        let name = task.name().unwrap_or("").to_owned();
        f(self.0.lock().unwrap().entry(name).or_default());
    }

    fn get(&self, name: &str) -> Seen {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

impl PreemptionHooks for ByName {
    fn after_poll(&self, task: &TaskInfo<'_>, poll: &PollReport) {
        self.with(task, |s| {
            s.polls += 1;
            s.slow += u64::from(poll.slow);
        });
    }

    fn on_tier_change(&self, task: &TaskInfo<'_>, _from: Tier, to: Tier) {
        self.with(task, |s| s.tiers.push(to));
    }
}

/// Eight 3 ms bursts of computation, yielding between them.
async fn heavy() -> &'static str {
    for _ in 0..8 {
        spin(Duration::from_millis(3));
        tokio::task::yield_now().await;
    }
    "heavy done"
}

async fn fast() -> &'static str {
    "fast done"
}

fn route_name(req: &Request) -> Cow<'static, str> {
    match req.extensions().get::<MatchedPath>() {
        Some(path) => Cow::Owned(path.as_str().to_owned()),
        None => Cow::Borrowed("unmatched"),
    }
}

async fn serve(pulse: &Pulse) -> SocketAddr {
    let app = Router::new()
        .route("/heavy", get(heavy))
        .route("/fast", get(fast))
        .route_layer(PulseLayer::new(pulse).name_with(route_name));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_heavy_route_is_attributed_and_made_to_yield_by_name() {
    let pulse = Pulse::builder()
        .slow_poll_threshold(Duration::from_millis(1))
        .build()
        .unwrap();
    let seen = Arc::new(ByName::default());
    pulse.set_hooks(seen.clone());
    let addr = serve(&pulse).await;

    let mut requests = Vec::new();
    for i in 0..23 {
        let path = if i % 8 == 0 { "/heavy" } else { "/fast" };
        requests.push(tokio::spawn(
            async move { (path, http::get(addr, path).await) },
        ));
    }
    for r in requests {
        let (path, response) = r.await.unwrap();
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.body, format!("{} done", &path[1..]));
    }

    // Requests end when hyper drops their futures, just after responding.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pulse.totals().tasks_ended < 23 {
        assert!(Instant::now() < deadline, "{:?}", pulse.totals());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let totals = pulse.totals();
    assert_eq!(totals.tasks_spawned, 23, "one managed future per request");

    let heavy = seen.get("/heavy");
    let fast = seen.get("/fast");
    // Three heavy requests, each 8 polls of 3 ms. Under sampled timing a
    // long poll while the ticker is coarse (4 ms apart here) may go unseen
    // (see `Timing`): the ticker turns fine at the first one it sees, so
    // most are judged slow, not necessarily all.
    assert!(heavy.slow >= 16, "{heavy:?}");
    assert!(
        heavy.tiers.contains(&Tier::Warn) && heavy.tiers.contains(&Tier::Yield),
        "heavy requests were not promoted: {heavy:?}"
    );
    assert!(
        heavy.tiers.contains(&Tier::Isolate),
        "heavy requests were not isolated: {heavy:?}"
    );
    // Twenty fast requests, each judged on its own: none made to yield (a
    // one-poll request could at worst be warned about, had the OS
    // descheduled it mid-poll for longer than the whole budget).
    assert!(fast.polls >= 20, "{fast:?}");
    assert!(!fast.tiers.contains(&Tier::Yield), "{fast:?}");
    assert_eq!(seen.get("unmatched").polls, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_fixed_name_and_the_layer_location_are_recorded() {
    let pulse = Pulse::new();
    let layer = PulseLayer::new(&pulse).named("reports");
    let line = line!() - 1;
    let app = Router::new()
        .route(
            "/",
            get(|| async { tokio::time::sleep(Duration::from_secs(60)).await }),
        )
        .route_layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // A request that stays in flight, so it can be seen in a snapshot.
    let client = tokio::spawn(http::get(addr, "/"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let task = loop {
        if let Some(t) = pulse.snapshot().named("reports").cloned() {
            break t;
        }
        assert!(Instant::now() < deadline, "request never seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(task.location.file(), file!());
    assert_eq!(task.location.line(), line);
    assert_eq!(task.tier, Tier::Monitor);
    client.abort();
}

/// `/heavy` computes 20 ms in one poll; `/fast` answers at once. Both
/// record the thread that ran them.
async fn serve_remembering(pulse: Pulse, seen: Arc<Mutex<Vec<(String, String)>>>) -> SocketAddr {
    let heavy_seen = seen.clone();
    let app = Router::new()
        .route(
            "/heavy",
            get(move || async move {
                spin(Duration::from_millis(20));
                heavy_seen
                    .lock()
                    .unwrap()
                    .push(("/heavy".into(), thread_name()));
                "heavy"
            }),
        )
        .route(
            "/fast",
            get(move || async move {
                seen.lock().unwrap().push(("/fast".into(), thread_name()));
                "fast"
            }),
        )
        .route_layer(PulseLayer::new(&pulse).name_with(|req: &Request| {
            match req.extensions().get::<MatchedPath>() {
                Some(path) => Cow::Owned(path.as_str().to_owned()),
                None => Cow::Borrowed("unmatched"),
            }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[test]
fn requests_to_a_route_that_blocks_in_one_poll_start_isolated_after_the_first_few() {
    let _serial = common::serial_blocking();
    let server = common::two_worker_runtime();
    let pulse = Pulse::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = server.block_on(serve_remembering(pulse.clone(), seen.clone()));
    // The client on its own thread and runtime, one request at a time.
    std::thread::spawn(move || {
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        client.block_on(async {
            for i in 0..20 {
                let path = if i % 2 == 0 { "/heavy" } else { "/fast" };
                let response = http::get(addr, path).await;
                assert_eq!(response.status, 200, "{path}");
                assert_eq!(response.body, &path[1..]);
            }
        });
    })
    .join()
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    let on = |route: &str| -> Vec<String> {
        seen.iter()
            .filter(|(r, _)| r == route)
            .map(|(_, t)| t.clone())
            .collect()
    };
    let heavy = on("/heavy");
    assert_eq!(heavy.len(), 10);
    let (judged, then_isolated) = judged_then_isolated(&heavy);
    assert!(
        (1..=4).contains(&judged) && then_isolated,
        "heavy requests not isolated from their first poll after a few: {heavy:?}"
    );
    assert!(
        on("/fast").iter().all(|t| !on_pool(t)),
        "a fast request was isolated: {seen:?}"
    );
    let snapshot = pulse.snapshot();
    let route = snapshot.origin_named("/heavy").expect("/heavy remembered");
    assert_eq!(route.starting_tier, Tier::Isolate);
    assert!(
        snapshot.origin_named("/fast").is_none(),
        "{:?}",
        snapshot.origins
    );
}
