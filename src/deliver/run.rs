//! A delivery run over a stream of events (`zdmap send`), under the delivery scheduler.
//!
//! A reader thread parses the input one event at a time into a bounded channel, so memory stays
//! flat however long the input. Each event becomes a [`crate::deliver::Delivery`] and goes to
//! [`dispatch`], which orders it with the other events of its entity keys and runs different
//! keys in parallel; a key that must wait (a record that does not exist yet, a retry, a per-key
//! 429) is set aside while the others flow. Failed actions become dead letters; a dead-letter
//! record in the input is replayed for its failed action only. An event without a `messageId`
//! gets one derived from its content and place in the input, the same when the input is sent
//! again. Credentials refused (401/403) stop the run.
//!
//! A run told to stop ([`RunStop::stop`]: `zdmap send` on SIGINT or SIGTERM) takes no more
//! events, lets the turns under way finish for `DispatchOptions::drain`, and then writes what
//! is left as "not attempted" dead letters ([`Unsettled::letters`]), oldest first: the events
//! it held, those whose turn was cut short, then the rest of the input, read to its end; so
//! that sending the dead-letter file finishes the work, in order.

use crate::base::sync::lock;
use crate::deliver::dispatch::{DispatchOptions, DispatchReport, Incoming, Sink, dispatch};
use crate::deliver::schedule::Status;
use crate::deliver::{DeadLetter, DeadLetterWriter, EventOutcome, Executor, Stats, Unsettled};
use crate::mapping::event::{Event, RawItem, read_values};
use serde_json::{Value, json};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How a run ended.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Dead letters written.
    pub dead_letters: u64,
    /// Why the run stopped early (credentials refused), if it did.
    pub fatal: Option<String>,
}

/// Stops a run from outside (a signal): see the module docs. Clones stop the same run.
#[derive(Clone, Debug)]
pub struct RunStop {
    tx: Arc<watch::Sender<bool>>,
    why: Arc<Mutex<Option<String>>>,
}

impl Default for RunStop {
    fn default() -> Self {
        RunStop {
            tx: Arc::new(watch::channel(false).0),
            why: Arc::default(),
        }
    }
}

impl RunStop {
    pub fn new() -> RunStop {
        RunStop::default()
    }

    /// Stops the run; `why` (`interrupted by SIGINT`) goes into the "not attempted" dead
    /// letters. Only the first call counts.
    pub fn stop(&self, why: impl Into<String>) {
        lock(&self.why).get_or_insert_with(|| why.into());
        self.tx.send_replace(true);
    }

    /// Why the run was stopped, if it was.
    pub fn reason(&self) -> Option<String> {
        lock(&self.why).clone()
    }
}

/// Delivers every event of `input`, writing failures to `dead_letters`.
pub async fn run<R: Read + Send + 'static>(
    executor: Arc<Executor>,
    input: R,
    dead_letters: Arc<DeadLetterWriter>,
    stats: Arc<Stats>,
    options: DispatchOptions,
) -> std::io::Result<RunReport> {
    run_until(
        executor,
        input,
        dead_letters,
        stats,
        options,
        &RunStop::new(),
    )
    .await
}

/// [`run`], until `stop` is told to stop (see the module docs).
pub async fn run_until<R: Read + Send + 'static>(
    executor: Arc<Executor>,
    input: R,
    dead_letters: Arc<DeadLetterWriter>,
    stats: Arc<Stats>,
    options: DispatchOptions,
    stop: &RunStop,
) -> std::io::Result<RunReport> {
    let mut sink = RunSink {
        record: Recorder {
            writer: dead_letters,
            letters: Arc::new(AtomicU64::new(0)),
            write_error: Arc::new(Mutex::new(None)),
        },
        stats: stats.clone(),
        stopped: Arc::new(AtomicBool::new(false)),
        stop: stop.clone(),
    };

    // Reader: a blocking thread, one parsed value at a time, until the run stops.
    let (raw_tx, mut raw_rx) = mpsc::channel::<RawItem>(1024);
    let stopped = sink.stopped.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_values(input, |item| {
            !stopped.load(Ordering::Relaxed) && raw_tx.blocking_send(item).is_ok()
        })
    });

    // Each value becomes a delivery; what cannot be read as an event is a dead letter at once.
    let (events_tx, events_rx) = mpsc::channel::<Incoming<()>>(256);
    // Set once the dispatcher has handed over what it held (after a stop): the intake writes
    // the rest of the input behind it.
    let (handed_over, mut after_dispatch) = watch::channel(false);
    let intake = {
        let record = sink.record.clone();
        let stats = stats.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut next_id = 0;
            while let Some(item) = raw_rx.recv().await {
                stats.event_read();
                let Some((event, only)) = read_event(item, &record) else {
                    stats.event_failed();
                    continue;
                };
                next_id += 1;
                let incoming = Incoming {
                    id: next_id,
                    keys: event.ordering_keys(),
                    shared: event.shared_keys(),
                    delivery: executor.start(&event, only),
                    since: Instant::now(),
                    ticket: (),
                    // Nothing is shed here (no queue to read it back from): not counted.
                    size: 0,
                };
                let Err(mpsc::error::SendError(incoming)) = events_tx.send(incoming).await else {
                    continue;
                };
                // The dispatcher has stopped: after a stop, this event and the rest of the
                // input are written as not attempted, behind what the dispatcher held.
                let Some(why) = stop.reason() else {
                    break;
                };
                let _ = after_dispatch.wait_for(|done| *done).await;
                let left = incoming.delivery.unsettled();
                record.not_attempted(left, &why, &stats);
                while let Some(item) = raw_rx.recv().await {
                    stats.event_read();
                    match read_event(item, &record) {
                        Some((event, only)) => {
                            let left = Unsettled::unstarted(Arc::new(event.into_value()), only);
                            record.not_attempted(left, &why, &stats);
                        }
                        None => stats.event_failed(),
                    }
                }
                break;
            }
        })
    };

    let DispatchReport { fatal } =
        dispatch(events_rx, &mut sink, &options, stop.tx.subscribe()).await;
    handed_over.send_replace(true);
    if stop.reason().is_some() {
        // The intake writes the rest of the input and ends with it.
        let _ = intake.await;
    } else {
        sink.stopped.store(true, Ordering::Relaxed);
        intake.abort();
        let _ = intake.await;
    }
    let read_result = reader.await.map_err(std::io::Error::other)?;
    read_result?;
    if let Some(e) = lock(&sink.record.write_error).take() {
        return Err(e);
    }
    Ok(RunReport {
        dead_letters: sink.record.letters.load(Ordering::Relaxed),
        fatal,
    })
}

/// Settles `send`'s events: counts them, writes their dead letters.
struct RunSink {
    record: Recorder,
    stats: Arc<Stats>,
    /// Set when the reader is to stop (credentials refused, or the run is over).
    stopped: Arc<AtomicBool>,
    stop: RunStop,
}

/// Writes dead letters, counting them and keeping the first write error.
#[derive(Clone)]
struct Recorder {
    writer: Arc<DeadLetterWriter>,
    letters: Arc<AtomicU64>,
    write_error: Arc<Mutex<Option<std::io::Error>>>,
}

impl Recorder {
    /// Writes what an event had left as "not attempted" dead letters, and counts it.
    fn not_attempted(&self, left: Unsettled, why: &str, stats: &Stats) {
        let letters = left.letters(why);
        if letters.is_empty() {
            // Nothing was left to do (a replayed action that no longer matches).
            stats.event_skipped();
            return;
        }
        stats.event_not_attempted();
        letters.iter().for_each(|l| self.record(l));
    }

    fn record(&self, letter: &DeadLetter) {
        self.letters.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.writer.write(letter) {
            lock(&self.write_error).get_or_insert(std::io::Error::other(e.to_string()));
        }
    }
}

impl Sink for RunSink {
    type Ticket = ();

    fn settled(&mut self, (): (), outcome: EventOutcome) -> bool {
        match outcome {
            EventOutcome::Delivered => self.stats.event_delivered(),
            EventOutcome::Skipped => self.stats.event_skipped(),
            EventOutcome::Failed { letters } => {
                self.stats.event_failed();
                letters.iter().for_each(|l| self.record.record(l));
            }
        }
        true
    }

    fn status(&mut self, status: Status) {
        let waiting: usize = status.keys_waiting.values().sum();
        self.stats.set_keys_waiting(waiting as u64);
    }

    fn refused(&mut self, _status: u16, _message: &str) -> bool {
        self.stopped.store(true, Ordering::Relaxed);
        false
    }

    fn left(&mut self, (): (), left: Unsettled) {
        // After refused credentials the events from the first refused one on are not sent
        // and not written (the run says so); after a stop they are written to be replayed.
        if let Some(why) = self.stop.reason() {
            self.record.not_attempted(left, &why, &self.stats);
        }
    }
}

/// The event of an input item (a dead-letter record stands for its event and failed action),
/// or `None` after recording why it is not one.
fn read_event(
    item: RawItem,
    record: &Recorder,
) -> Option<(Event, Option<Vec<crate::mapping::plan::ActionName>>)> {
    let (value, only) = match item.value {
        Ok(v) => match DeadLetter::parse(&v) {
            Some(letter) => (letter.event, letter.action.map(|a| vec![a])),
            None => {
                let mut v = v;
                crate::mapping::event::ensure_message_id(&mut v, item.index);
                (v, None)
            }
        },
        Err(e) => {
            let at = json!({"index": item.index, "line": item.line});
            record.record(&DeadLetter::before_any_action(at, "input", e.to_string()));
            return None;
        }
    };
    match Event::from_value(value.clone()) {
        Ok(event) => Some((event, only)),
        Err(e) => {
            record.record(&DeadLetter::before_any_action(
                as_object(value),
                "input",
                e.to_string(),
            ));
            None
        }
    }
}

/// Dead letters hold an object; anything else is wrapped so it is kept.
fn as_object(v: Value) -> Value {
    if v.is_object() {
        v
    } else {
        json!({ "value": v })
    }
}
