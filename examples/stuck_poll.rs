//! What the watchdog reports about a poll that is stuck: the task, where it
//! was spawned, the thread, and where that thread is stuck (its stack).
//!
//! A handler blocks its worker on a `std::sync::Mutex` that another thread
//! holds for a second, a classic way to stall a runtime. The watchdog's
//! `tracing` error is printed as it happens, then the snapshot's entry.
//!
//! Run with `cargo run --example stuck_poll` (file:line for every frame:
//! a debug build has full debug information), or `--release` (a release
//! build without `debug = "line-tables-only"` names functions only).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_pulse::Pulse;

/// Settings shared with a thread that refreshes them, holding the lock
/// while it does.
type Settings = Arc<Mutex<Vec<String>>>;

/// Reads the settings: blocks the worker for as long as the refresher
/// holds the lock.
#[inline(never)]
fn load_settings(settings: &Settings) -> usize {
    settings.lock().unwrap().len()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt().with_target(false).init();
    let pulse = Pulse::new();

    let settings: Settings = Arc::default();
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let refresher = std::thread::spawn({
        let settings = settings.clone();
        move || {
            let mut guard = settings.lock().unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(1)); // a slow refresh
            guard.push("refreshed".into());
        }
    });
    locked.recv().unwrap();

    let handler = pulse.spawn_named("GET /settings", async move { load_settings(&settings) });

    // The snapshot lists the poll while it is stuck, with its stack once
    // the watchdog has reported it. (The first capture of a process loads
    // debug information, which on a busy machine can take longer than
    // this poll is stuck: the watchdog's error above has the stack then.)
    loop {
        let snapshot = pulse.snapshot();
        if let Some(stuck) = snapshot.stuck.into_iter().find(|s| s.stack.is_some()) {
            println!(
                "\nSnapshot::stuck: task {} ({}), spawned at {}, running for {:?} on {}, stack:\n{}",
                stuck.task,
                stuck.name.as_deref().unwrap_or("unnamed"),
                stuck.location,
                stuck.running_for,
                stuck.thread.as_deref().unwrap_or("an unnamed thread"),
                stuck.stack.as_deref().unwrap_or_default(),
            );
            break;
        }
        if handler.is_finished() {
            println!("\nthe poll ended before its stack was ready");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handler.await.unwrap();
    refresher.join().unwrap();
}
