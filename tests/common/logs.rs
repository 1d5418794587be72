//! Everything `tracing` emits in a test process, captured as text, with a
//! way to wait for an event (the watchdog reports from its own thread, so
//! the subscriber is the global one: one per test binary).

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The text `tracing` has emitted so far, and a way to wait for more.
pub struct Logs {
    text: Mutex<String>,
    grew: Condvar,
}

/// The process's logs, installing the subscriber on first use.
pub fn logs() -> &'static Logs {
    static LOGS: OnceLock<&'static Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Logs = Box::leak(Box::new(Logs {
            text: Mutex::new(String::new()),
            grew: Condvar::new(),
        }));
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || LogWriter(logs))
            .try_init()
            .expect("no other subscriber in this test binary");
        logs
    })
}

struct LogWriter(&'static Logs);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A test that failed while holding the lock must not fail the
        // others' logging too.
        self.0
            .text
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_str(&String::from_utf8_lossy(buf));
        self.0.grew.notify_all();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Waits for the first event whose text contains every one of
    /// `needles`, and returns it (with its continuation lines: a stack
    /// prints one frame per line), waiting `within` at most.
    pub fn wait_for(&self, needles: &[&str], within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut text = self
            .text
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(event) = events(&text).find(|e| needles.iter().all(|n| e.contains(n))) {
                return event.to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no event with {needles:?} in:\n{text}");
            text = self
                .grew
                .wait_timeout(text, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// The events in `text`: each starts with a timestamp line, and lines that
/// do not (a stack's frames) belong to the event before.
fn events(text: &str) -> impl Iterator<Item = &str> {
    let starts: Vec<usize> = text
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .filter(|&i| text[i..].starts_with(|c: char| c.is_ascii_digit()))
        .chain(std::iter::once(0))
        .collect();
    let mut starts = starts;
    starts.sort_unstable();
    starts.push(text.len());
    (0..starts.len() - 1).map(move |k| &text[starts[k]..starts[k + 1]])
}
