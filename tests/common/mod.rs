//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_pulse::{PreemptionHooks, TaskInfo, Tier};

/// Burns CPU on the calling thread for `d`, without yielding: a hog's poll.
pub fn spin(d: Duration) {
    let started = Instant::now();
    while started.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// One tier change seen by [`TierEvents`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub from: Tier,
    pub to: Tier,
}

/// Hooks that forward every tier change to a channel, so tests wait for the
/// event itself instead of sleeping and hoping.
pub struct TierEvents(mpsc::UnboundedSender<Change>);

impl TierEvents {
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Change>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(TierEvents(tx)), rx)
    }
}

impl PreemptionHooks for TierEvents {
    fn on_tier_change(&self, task: &TaskInfo<'_>, from: Tier, to: Tier) {
        let _ = self.0.send(Change {
            name: task.name().unwrap_or("").to_owned(),
            from,
            to,
        });
    }
}

/// Waits (up to `within`) for the first change of task `name` matching `pred`.
pub async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<Change>,
    within: Duration,
    name: &str,
    pred: impl Fn(&Change) -> bool,
) -> Change {
    tokio::time::timeout(within, async {
        loop {
            let c = rx.recv().await.expect("hooks dropped");
            if c.name == name && pred(&c) {
                return c;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching tier change for {name} within {within:?}"))
}

pub mod http;
pub mod prometheus;
