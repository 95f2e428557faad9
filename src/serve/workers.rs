//! Delivery from the queue: a fetcher reads stored events in acceptance order and hands them to
//! the delivery scheduler ([`crate::deliver::dispatch`]), which keeps each entity key's events
//! in order and runs different keys in parallel; a key that must wait is set aside while the
//! others flow.
//!
//! Each event is settled in the queue once the scheduler is done with it: delivered or skipped
//! (removed), or failed for good (moved to the dead letters, in the same step). An event Zendesk
//! cannot take yet (server errors, timeouts, 429s) waits with backoff for up to `retry_for`
//! since it was accepted; one that needs a record that does not exist yet waits up to
//! `wait_for_records` for an event that creates it. While Zendesk refuses the credentials every
//! event waits and `/readyz` says why. An organization's events that other replicas deliver too
//! (a shared queue) wait while another replica holds it ([`crate::deliver::holds`]). No turn
//! starts for an event the queue may no longer own ([`Queue::ownership`]: a shared queue's
//! lease not renewed in time): it waits, or leaves unsettled once another replica owns it. On
//! shutdown the events being sent get `drain` to finish; whatever is not settled stays in the
//! queue for the next start.

use super::Shared;
use crate::deliver::dispatch::{DispatchOptions, Incoming, Ownership, RecordWait, Sink, dispatch};
use crate::deliver::schedule::Status;
use crate::deliver::trail::{Entry, Trail, Witness};
use crate::deliver::{DeadLetter, EventOutcome, FirstWrite, Reload};
use crate::mapping::event::Event;
use crate::queue::{Item, ItemId, Queue};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How delivery from the queue runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Events delivered at once (different keys).
    pub concurrency: usize,
    /// How long an event that Zendesk cannot take yet keeps being tried before it is
    /// dead-lettered.
    pub retry_for: Duration,
    /// How long an event waits for a record it needs that does not exist yet.
    pub wait_for_records: Duration,
    /// Bytes of the events waiting for a record kept in memory at most; past it their bodies
    /// wait in the queue and are read again when they come out.
    pub max_parked_bytes: usize,
    /// How often the queue is read when nothing signals new events (other processes add some).
    pub poll: Duration,
    /// On shutdown, how long the events being sent may take to finish.
    pub drain: Duration,
    /// How long an item of a bulk request waits for others (`None`: no batching).
    pub batch_window: Option<Duration>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 8,
            retry_for: Duration::from_secs(24 * 3600),
            wait_for_records: Duration::from_secs(15 * 60),
            max_parked_bytes: 64 << 20,
            poll: Duration::from_secs(1),
            batch_window: Some(Duration::from_millis(500)),
            drain: Duration::from_secs(30),
        }
    }
}

/// Items read from the queue at once.
const FETCH: usize = 256;

/// A queued event's ticket: its queue id and when it was accepted (ms since the epoch).
type Ticket = (ItemId, u64);

/// Runs the fetcher and the scheduler until `stop` turns true and the events being sent are
/// put down.
pub async fn run<Q: Queue>(
    queue: Arc<Q>,
    shared: Arc<Shared>,
    options: WorkerOptions,
    stop: watch::Receiver<bool>,
) {
    let (tx, rx) = mpsc::channel(FETCH);
    let behind = Arc::new(AtomicBool::new(false));
    let fetcher = tokio::spawn(fetch(
        queue.clone(),
        shared.clone(),
        options.poll,
        tx,
        behind.clone(),
        stop.clone(),
    ));
    let dispatch_options = DispatchOptions {
        concurrency: options.concurrency,
        retry_for: options.retry_for,
        wait_for_records: RecordWait::For(options.wait_for_records),
        max_parked_bytes: options.max_parked_bytes,
        drain: options.drain,
        batch_window: options.batch_window,
        batch_when_idle: true,
        holds: queue.holds(),
        input_behind: behind,
        ..DispatchOptions::default()
    };
    let mut sink = QueueSink {
        queue,
        shared: shared.clone(),
        refusal: None,
    };
    dispatch(rx, &mut sink, &dispatch_options, stop).await;
    fetcher.abort();
    let _ = fetcher.await;
}

/// Reads the queue from the oldest event on and hands each to the scheduler; `behind` is set
/// while a read finds as many events as it asks for (more are waiting).
async fn fetch<Q: Queue>(
    queue: Arc<Q>,
    shared: Arc<Shared>,
    poll: Duration,
    tx: mpsc::Sender<Incoming<Ticket>>,
    behind: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut cursor = ItemId::default();
    while !*stop.borrow() {
        let items = match queue.fetch(cursor, FETCH).await {
            Ok(items) => {
                shared.health.set_queue(None);
                items
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the queue; trying again");
                shared.health.set_queue(Some(e.to_string()));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        behind.store(items.len() >= FETCH, Ordering::Relaxed);
        if items.is_empty() {
            tokio::select! {
                () = queue.changed(poll) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        for item in items {
            cursor = item.id;
            let Some(incoming) = incoming(&item, &queue, &shared) else {
                continue;
            };
            tokio::select! {
                sent = tx.send(incoming) => if sent.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }
}

/// A stored item as the scheduler takes it; `None` when it is not an event (then it is
/// dead-lettered at once). A redelivered item may have been under way before a restart: its
/// steps that are not idempotent check whether their write was applied before sending it.
fn incoming<Q: Queue + 'static>(
    item: &Item,
    queue: &Arc<Q>,
    shared: &Shared,
) -> Option<Incoming<Ticket>> {
    let event = match Event::from_value(item.event.clone()) {
        Ok(e) => e,
        Err(e) => {
            let letter =
                DeadLetter::before_any_action(as_object(&item.event), "input", e.to_string());
            shared.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
            if let Some(journal) = &shared.journal
                && let Some(message_id) = item.event.get("messageId").and_then(Value::as_str)
            {
                journal.note_from(
                    shared.named(),
                    message_id,
                    crate::base::time::unix_millis_now(),
                    Entry::DeadLettered {
                        action: None,
                        step: letter.step.clone(),
                        status: None,
                        code: None,
                        reason: letter.message.clone(),
                    },
                );
            }
            settle_in_queue(&**queue, shared, item.id, vec![letter]);
            return None;
        }
    };
    let age = Duration::from_millis(
        crate::base::time::unix_millis_now().saturating_sub(item.accepted_at_ms),
    );
    let now = Instant::now();
    let mut delivery = shared
        .executor()
        .start(&event, item.only.clone().map(|a| vec![a]));
    if item.redelivered {
        delivery.resumed();
    } else {
        let (queue, id) = (queue.clone(), item.id);
        delivery.before_first_write(FirstWrite::new(move || {
            let queue = queue.clone();
            Box::pin(async move { queue.started(id).await.map_err(|e| e.to_string()) })
        }));
    }
    if item.force {
        delivery.force();
    }
    if let Some(journal) = &shared.journal
        && let Some(message_id) = event.value().get("messageId").and_then(Value::as_str)
    {
        let witness: Arc<dyn Witness> = journal.witness_for(shared.named());
        delivery.witnessed_by(Trail::new(witness, message_id));
    }
    if queue.rereads() {
        let (queue, id) = (queue.clone(), item.id);
        delivery.reloadable(Reload::new(move || {
            let queue = queue.clone();
            Box::pin(async move { queue.reread(id).await.map_err(|e| e.to_string()) })
        }));
    }
    Some(Incoming {
        id: item.id.0,
        keys: event.ordering_keys(),
        shared: event.shared_keys(),
        delivery,
        since: now.checked_sub(age).unwrap_or(now),
        ticket: (item.id, item.accepted_at_ms),
        size: item.size,
    })
}

/// Settles events in the queue and tells the server's health and metrics.
struct QueueSink<Q> {
    queue: Arc<Q>,
    shared: Arc<Shared>,
    /// The refusal last logged, so that a refusal that goes on is logged once.
    refusal: Option<String>,
}

impl<Q: Queue> Sink for QueueSink<Q> {
    type Ticket = Ticket;

    fn settled(&mut self, (id, accepted_at_ms): Ticket, outcome: EventOutcome) -> bool {
        let metrics = &self.shared.metrics;
        let letters = match outcome {
            EventOutcome::Delivered => {
                let latency_ms =
                    crate::base::time::unix_millis_now().saturating_sub(accepted_at_ms);
                metrics
                    .delivery_latency
                    .observe(Duration::from_millis(latency_ms));
                tracing::debug!(queue_id = id.0, latency_ms, "event delivered");
                metrics.delivered.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            }
            EventOutcome::Skipped => {
                metrics.skipped.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            }
            EventOutcome::Failed { letters } => {
                for l in &letters {
                    tracing::warn!(
                        queue_id = id.0,
                        action = l.action.as_deref().unwrap_or(""),
                        step = %l.step,
                        status = l.status,
                        code = l.code.as_deref(),
                        zendesk_message = %l.message,
                        event = self.shared.log_events.then(|| l.event.to_string()),
                        "event dead-lettered"
                    );
                }
                metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                letters
            }
        };
        settle_in_queue(&*self.queue, &self.shared, id, letters)
    }

    fn refused(&mut self, status: u16, message: &str) -> bool {
        let problem = format!(
            "Zendesk answered {status}: {message}; delivery waits until the credentials (or the agent's permissions) are fixed"
        );
        if self.refusal.as_deref() != Some(problem.as_str()) {
            tracing::error!(status, "{problem}");
            self.refusal = Some(problem.clone());
        }
        self.shared.health.set_zendesk_auth(Some(problem));
        self.shared.metrics.deferred.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn accepted(&mut self) {
        if self.refusal.take().is_some() {
            tracing::info!("Zendesk takes the credentials again; the waiting events go on");
        }
        self.shared.health.set_zendesk_auth(None);
    }

    fn deferred(&mut self) {
        self.shared.metrics.deferred.fetch_add(1, Ordering::Relaxed);
    }

    fn held_elsewhere(&mut self) {
        self.shared
            .metrics
            .held_elsewhere
            .fetch_add(1, Ordering::Relaxed);
    }

    fn status(&mut self, status: Status) {
        self.shared.metrics.set_delivery(status);
    }

    fn ownership(&mut self, (id, _): &Ticket) -> Ownership {
        self.queue.ownership(*id)
    }

    fn dropped(&mut self, (id, _): Ticket) {
        self.queue.forget(id);
    }
}

/// Settles the item in the queue (removed, with its dead letters). `false` when the queue is
/// closed: delivery stops and the item is delivered again at the next start.
fn settle_in_queue<Q: Queue>(
    queue: &Q,
    shared: &Shared,
    id: ItemId,
    letters: Vec<DeadLetter>,
) -> bool {
    match queue.finish(id, letters) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(queue_id = id.0, error = %e, "cannot settle an event in the queue");
            shared.health.set_queue(Some(e.to_string()));
            false
        }
    }
}

fn as_object(v: &Value) -> Value {
    if v.is_object() {
        v.clone()
    } else {
        serde_json::json!({ "value": v })
    }
}
