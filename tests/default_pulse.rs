//! Drop-in adoption: `tokio_pulse::spawn` where `tokio::spawn` was. With no
//! default `Pulse` it spawns unmanaged and says so once; once a default is
//! set, it manages every task. One test: the default is process-wide.

mod common;

use common::Captured;
use tokio_pulse::{Pulse, SetDefaultError};

#[test]
fn free_spawn_runs_unmanaged_until_a_default_is_set_then_manages_every_task() {
    let log = Captured::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .finish(),
    )
    .unwrap();
    let rt = common::two_worker_runtime();

    // No default: tasks run, like tokio::spawn, and one warning says why
    // they are not managed.
    assert!(Pulse::global_default().is_none());
    let outputs = rt.block_on(async {
        let a = tokio_pulse::spawn(async { 1 });
        let b = tokio_pulse::spawn_named("named", async { 2 });
        (a.await.unwrap(), b.await.unwrap())
    });
    assert_eq!(outputs, (1, 2));
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        text.matches("no global default Pulse is set").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains(file!()),
        "the warning names the call site: {text}"
    );

    // With a default: managed, with the caller's site and name.
    let pulse = Pulse::new();
    pulse.set_global_default().unwrap();
    let err: SetDefaultError = Pulse::new().set_global_default().unwrap_err();
    assert!(err.to_string().contains("already set"), "{err}");
    let (line, seen) = rt.block_on(async {
        let line = line!() + 1;
        let task = tokio_pulse::spawn(async { tokio::task::yield_now().await });
        let named = tokio_pulse::spawn_named("report", std::future::pending::<()>());
        let seen = loop {
            let snapshot = pulse.snapshot();
            if let Some(t) = snapshot.named("report") {
                break t.clone();
            }
            tokio::task::yield_now().await;
        };
        task.await.unwrap();
        named.abort();
        (line, seen)
    });
    assert_eq!(seen.location.file(), file!());
    assert_eq!(seen.location.line(), line + 1);
    let totals = pulse.totals();
    assert_eq!(totals.tasks_spawned, 2, "{totals:?}");
}
