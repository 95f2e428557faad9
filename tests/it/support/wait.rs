//! Waiting for what a test cannot be told of (a server's metrics, a process's log, the
//! emulator's state): one poll loop with a deadline.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// How long a check rests before it is tried again.
const POLL: Duration = Duration::from_millis(50);

/// What a check gives: done, with a value, or not yet, with what to say if time runs out
/// (`false` and `None` say nothing more; `Err` says the last state seen).
pub trait Outcome {
    type Value;
    fn done(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn done(self) -> Result<(), String> {
        if self { Ok(()) } else { Err(String::new()) }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: Display> Outcome for Result<T, E> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Tries `check` until it is done and gives its value; panics naming `what` (and what the last
/// try said) once `limit` has passed. A deadline, not a measurement: a loaded machine only
/// makes the wait longer.
pub async fn eventually<R: Outcome>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> R,
) -> R::Value {
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await.done() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            let sep = if last.is_empty() { "" } else { "\n" };
            panic!("timed out after {limit:?} waiting for: {what}{sep}{last}");
        }
        tokio::time::sleep(POLL).await;
    }
}
