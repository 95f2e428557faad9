//! A delivery run over a stream of events (`zdmap send`): ordered per user, parallel across users.
//!
//! A reader thread parses the input one event at a time into a bounded channel, so memory stays
//! flat however long the input. A dispatcher hands each event to one of N workers chosen by its
//! partition key (the user), so one user's events are delivered in order while different users
//! go in parallel. Failed actions become dead letters; a dead-letter record in the input is
//! replayed for its failed action only. A fatal answer (401/403) stops the run.

use crate::deliver::{DeadLetter, DeadLetterWriter, EventOutcome, Executor, Stats};
use crate::event::{Event, RawItem, read_values};
use serde_json::{Value, json};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Options of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Workers delivering in parallel (different users).
    pub concurrency: usize,
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Dead letters written.
    pub dead_letters: u64,
    /// Why the run stopped early (credentials refused), if it did.
    pub fatal: Option<String>,
}

struct Job {
    event: Event,
    only: Option<String>,
}

/// Delivers every event of `input`, writing failures to `dead_letters`.
pub async fn run<R: Read + Send + 'static>(
    executor: Arc<Executor>,
    input: R,
    dead_letters: Arc<DeadLetterWriter>,
    stats: Arc<Stats>,
    options: RunOptions,
) -> std::io::Result<RunReport> {
    let workers = options.concurrency.max(1);
    let fatal: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let letters = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let write_error: Arc<Mutex<Option<std::io::Error>>> = Arc::new(Mutex::new(None));

    // Reader: a blocking thread, one parsed value at a time.
    let (raw_tx, mut raw_rx) = mpsc::channel::<RawItem>(1024);
    let stop_reading = fatal.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_values(input, |item| {
            let stopped = stop_reading.lock().map(|f| f.is_some()).unwrap_or(true);
            !stopped && raw_tx.blocking_send(item).is_ok()
        })
    });

    let record = {
        let dead_letters = dead_letters.clone();
        let letters = letters.clone();
        let write_error = write_error.clone();
        move |letter: &DeadLetter| {
            letters.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = dead_letters.write(letter) {
                if let Ok(mut slot) = write_error.lock() {
                    slot.get_or_insert(std::io::Error::other(e.to_string()));
                }
            }
        }
    };

    // Workers: each delivers its jobs in order.
    let mut senders = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, mut rx) = mpsc::channel::<Job>(64);
        senders.push(tx);
        let executor = executor.clone();
        let stats = stats.clone();
        let fatal = fatal.clone();
        let record = record.clone();
        handles.push(tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                if fatal.lock().map(|f| f.is_some()).unwrap_or(true) {
                    continue;
                }
                match executor
                    .deliver(&job.event, job.only.as_ref().map(std::slice::from_ref))
                    .await
                {
                    EventOutcome::Delivered => stats.event_delivered(),
                    EventOutcome::Skipped => stats.event_skipped(),
                    EventOutcome::Failed { letters, .. } => {
                        stats.event_failed();
                        letters.iter().for_each(&record);
                    }
                    EventOutcome::Fatal { status, message } => {
                        if let Ok(mut f) = fatal.lock() {
                            f.get_or_insert(format!(
                                "Zendesk answered {status}: {message}. Check the credentials (ZENDESK_EMAIL and ZENDESK_API_TOKEN, or ZENDESK_OAUTH_TOKEN) and the agent's permissions; the events from this one on were not sent"
                            ));
                        }
                    }
                }
            }
        }));
    }

    // Dispatcher: by partition key, so one user's events stay in order.
    while let Some(item) = raw_rx.recv().await {
        stats.event_read();
        if fatal.lock().map(|f| f.is_some()).unwrap_or(true) {
            break;
        }
        let (value, only) = match item.value {
            Ok(v) => match DeadLetter::parse(&v) {
                Some(letter) => (letter.event, Some(letter.action).filter(|a| !a.is_empty())),
                None => (v, None),
            },
            Err(e) => {
                stats.event_failed();
                let at = json!({"index": item.index, "line": item.line});
                record(&DeadLetter::without_response(
                    at,
                    "",
                    "input",
                    e.to_string(),
                ));
                continue;
            }
        };
        let event = match Event::from_value(value.clone()) {
            Ok(ev) => ev,
            Err(e) => {
                stats.event_failed();
                record(&DeadLetter::without_response(
                    as_object(value),
                    "",
                    "input",
                    e.to_string(),
                ));
                continue;
            }
        };
        let worker = match event.partition_key() {
            Some(k) => {
                let mut h = DefaultHasher::new();
                k.hash(&mut h);
                (h.finish() % workers as u64) as usize
            }
            None => item.index % workers,
        };
        if senders[worker].send(Job { event, only }).await.is_err() {
            break;
        }
    }
    drop(senders);
    for h in handles {
        let _ = h.await;
    }
    drop(raw_rx);
    let read_result = reader.await.map_err(std::io::Error::other)?;
    read_result?;
    if let Some(e) = write_error.lock().ok().and_then(|mut e| e.take()) {
        return Err(e);
    }
    Ok(RunReport {
        dead_letters: letters.load(std::sync::atomic::Ordering::Relaxed),
        fatal: fatal.lock().ok().and_then(|f| f.clone()),
    })
}

/// Dead letters hold an object; anything else is wrapped so it is kept.
fn as_object(v: Value) -> Value {
    if v.is_object() {
        v
    } else {
        json!({ "value": v })
    }
}
