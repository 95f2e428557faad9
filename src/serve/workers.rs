//! Delivery from the queue: a dispatcher reads stored events in acceptance order and hands each to
//! one of N workers by its partition key (the user), so one user's events go in order and
//! different users in parallel.
//!
//! A worker settles each event before it takes the next: delivered or skipped (removed from the
//! queue), failed for good (moved to the dead letters), or not deliverable yet: Zendesk
//! unavailable after the transport's own retries, or refusing the credentials. Then the worker
//! waits (backing off up to a minute) and tries again only the actions that did not go through,
//! keeping that user's later events behind it, until `retry_for` has passed since the event was
//! accepted; then it is dead-lettered. On shutdown a worker finishes the event it is sending and
//! stops; what it has not settled stays in the queue for the next start.

use super::Shared;
use crate::deliver::{DeadLetter, EventOutcome};
use crate::event::Event;
use crate::queue::{Item, Queue};
use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How the workers run.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Users delivered in parallel.
    pub concurrency: usize,
    /// How long an event that cannot be delivered yet keeps being tried before it is
    /// dead-lettered.
    pub retry_for: Duration,
    /// The first pause before trying an event again; doubles up to `max_pause`.
    pub first_pause: Duration,
    pub max_pause: Duration,
    /// How often the queue is read when nothing signals new events (other processes add some).
    pub poll: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 8,
            retry_for: Duration::from_secs(24 * 3600),
            first_pause: Duration::from_secs(1),
            max_pause: Duration::from_secs(60),
            poll: Duration::from_secs(1),
        }
    }
}

/// Items handed to a worker and not yet taken, per worker.
const WORKER_BACKLOG: usize = 64;
/// Items read from the queue at once.
const FETCH: usize = 256;

/// Runs the dispatcher and the workers until `stop` turns true; then waits for the workers to
/// put down their current event.
pub async fn run<Q: Queue>(
    queue: Arc<Q>,
    shared: Arc<Shared>,
    options: WorkerOptions,
    stop: watch::Receiver<bool>,
) {
    let n = options.concurrency.max(1);
    let mut senders = Vec::with_capacity(n);
    let mut workers = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::channel::<Item>(WORKER_BACKLOG);
        senders.push(tx);
        workers.push(tokio::spawn(worker(
            rx,
            queue.clone(),
            shared.clone(),
            options.clone(),
            stop.clone(),
        )));
    }
    dispatch(&*queue, &shared, &options, &senders, stop).await;
    drop(senders);
    for w in workers {
        let _ = w.await;
    }
}

async fn dispatch<Q: Queue>(
    queue: &Q,
    shared: &Shared,
    options: &WorkerOptions,
    senders: &[mpsc::Sender<Item>],
    mut stop: watch::Receiver<bool>,
) {
    let mut cursor = 0u64;
    while !*stop.borrow() {
        let items = match queue.fetch(cursor, FETCH).await {
            Ok(items) => {
                shared.health.set_queue(None);
                items
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the queue; trying again");
                shared.health.set_queue(Some(e.to_string()));
                pause(options.max_pause.min(Duration::from_secs(5)), &mut stop).await;
                continue;
            }
        };
        if items.is_empty() {
            tokio::select! {
                () = queue.changed(options.poll) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        for item in items {
            cursor = item.id;
            let worker = match &item.partition {
                Some(key) => {
                    let mut h = DefaultHasher::new();
                    key.hash(&mut h);
                    (h.finish() % senders.len() as u64) as usize
                }
                None => (item.id % senders.len() as u64) as usize,
            };
            tokio::select! {
                sent = senders[worker].send(item) => if sent.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }
}

async fn worker<Q: Queue>(
    mut rx: mpsc::Receiver<Item>,
    queue: Arc<Q>,
    shared: Arc<Shared>,
    options: WorkerOptions,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let item = tokio::select! {
            item = rx.recv() => match item { Some(i) => i, None => return },
            _ = stop.changed() => return,
        };
        if *stop.borrow() {
            return;
        }
        if !settle(&item, &*queue, &shared, &options, &mut stop).await {
            return;
        }
    }
}

/// Delivers one item until it is settled. `false` when stopped before that (it stays queued).
async fn settle<Q: Queue>(
    item: &Item,
    queue: &Q,
    shared: &Shared,
    options: &WorkerOptions,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let event = match Event::from_value(item.event.clone()) {
        Ok(e) => e,
        Err(e) => {
            let letter =
                DeadLetter::without_response(as_object(&item.event), "", "input", e.to_string());
            return finish(queue, shared, item, vec![letter]);
        }
    };
    let mut pending: Option<Vec<String>> = item.only.clone().map(|a| vec![a]);
    let mut wait = options.first_pause;
    loop {
        let executor = shared.executor();
        let outcome = executor.deliver(&event, pending.as_deref()).await;
        let retry = match outcome {
            EventOutcome::Delivered | EventOutcome::Skipped => {
                shared.health.set_zendesk_auth(None);
                let counter = if matches!(outcome, EventOutcome::Delivered) {
                    shared
                        .metrics
                        .delivery_latency
                        .observe(since(item.accepted_at_ms));
                    &shared.metrics.delivered
                } else {
                    &shared.metrics.skipped
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return finish(queue, shared, item, Vec::new());
            }
            EventOutcome::Failed {
                letters,
                transient: true,
            } if since(item.accepted_at_ms) < options.retry_for => {
                shared.health.set_zendesk_auth(None);
                let first = letters.first();
                tracing::warn!(
                    queue_id = item.id,
                    action = first.map(|l| l.action.as_str()),
                    step = first.map(|l| l.step.as_str()),
                    status = first.and_then(|l| l.status),
                    message = first.map(|l| l.message.as_str()),
                    "Zendesk is not taking this event yet; it waits and is tried again"
                );
                pending = Some(letters.into_iter().map(|l| l.action).collect());
                true
            }
            EventOutcome::Failed { letters, .. } => {
                for l in &letters {
                    tracing::warn!(
                        queue_id = item.id,
                        action = %l.action,
                        step = %l.step,
                        status = l.status,
                        code = l.code.as_deref(),
                        message = %l.message,
                        event = shared.log_events.then(|| l.event.to_string()),
                        "event dead-lettered"
                    );
                }
                shared.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                return finish(queue, shared, item, letters);
            }
            EventOutcome::Fatal { status, message } => {
                let problem = format!(
                    "Zendesk answered {status}: {message}; delivery waits until the credentials (or the agent's permissions) are fixed"
                );
                tracing::error!(status, "{problem}");
                shared.health.set_zendesk_auth(Some(problem));
                true
            }
        };
        if retry {
            shared.metrics.deferred.fetch_add(1, Ordering::Relaxed);
            if !pause(wait, stop).await {
                return false;
            }
            wait = (wait * 2).min(options.max_pause);
        }
    }
}

/// Settles the item in the queue (removed, with its dead letters). `false` when the queue is
/// closed: the worker stops and the item is delivered again at the next start.
fn finish<Q: Queue>(queue: &Q, shared: &Shared, item: &Item, letters: Vec<DeadLetter>) -> bool {
    match queue.finish(item.id, letters) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(queue_id = item.id, error = %e, "cannot settle an event in the queue");
            shared.health.set_queue(Some(e.to_string()));
            false
        }
    }
}

/// Sleeps for `d` unless `stop` turns true first; `false` when stopped.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        _ = stop.changed() => !*stop.borrow(),
    }
}

fn since(ms: u64) -> Duration {
    Duration::from_millis(crate::time::unix_millis_now().saturating_sub(ms))
}

fn as_object(v: &Value) -> Value {
    if v.is_object() {
        v.clone()
    } else {
        serde_json::json!({ "value": v })
    }
}
