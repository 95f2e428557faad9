//! Running deliveries under the [`Scheduler`]: the loop that `zdmap send` and `zdmap serve`
//! share.
//!
//! [`dispatch`] takes events from a channel (the input file's reader, or the queue's fetcher),
//! starts up to `concurrency` turns at once ([`Delivery::advance`], each a task), and reads how
//! each ended:
//! - settled → handed to the [`Sink`] (stats and dead letters, or the queue);
//! - a missing record → parked until a response teaches it, re-checked now and then (`serve`:
//!   after 1 s, doubling up to a minute; `send`: when the input ends; the cache remembers "not
//!   found" meanwhile, so a recheck costs at most one lookup per key), and given a last chance
//!   when its wait is over (`serve`: after `wait_for_records`; `send`: that long after the input
//!   ends), then dead-lettered naming the lookup that failed;
//! - a retryable failure → that event (and so its keys) waits: `Retry-After` when Zendesk gave
//!   one, else a backoff (the transport's [`crate::deliver::RetryPolicy`]: 200 ms doubling up to a
//!   minute, with jitter); transient failures are tried for as long as `retry_for` allows since
//!   the event was accepted;
//! - credentials refused → the sink decides: stop the run (`send`), or hold every event and try
//!   again after a pause that grows to a minute (`serve`);
//! - a bulk item or lookup → handed to the [`Batcher`] while the event is held at the front of
//!   its lines; the next events of its keys may run meanwhile, but only to join its bulk request
//!   (else they go back behind it); each answer wakes its event. While delivery keeps up with
//!   the input (`serve`: no event waits to be read), an event that has waited for a bulk request
//!   already (its own, or an earlier event's of its keys while it waited behind) sends its next
//!   requests single, so that bulk requests in turn do not add up in one key's line; a backlog
//!   keeps batching.
//!
//! An event with keys that other processes deliver events of too (its `shared` keys: the
//! organization of a `group` call, when replicas share a queue) takes a hold on them
//! ([`KeyHolds`]) before its first turn, all or none, and keeps them until it is settled, also
//! while it waits or is parked; a key held elsewhere makes it wait at the front of its lines and
//! try again shortly (50 ms, doubling up to a second). A process that delivers alone holds every
//! key already ([`crate::deliver::holds::OneProcess`]): nothing is taken.
//!
//! Before a turn starts, the sink says whether the event is still its source's to deliver
//! ([`Sink::ownership`]; a shared queue whose lease of the event's partition is not certainly
//! its own says no): if unsure, the event waits, keeping its place in its lines, and is asked
//! again shortly; once lost, it leaves unsettled ([`Sink::dropped`]).
//!
//! No task sleeps while holding a slot: waiting is a timer in the scheduler. Events held are
//! bounded, so memory stays flat whatever the input: no more input is taken while `max_active`
//! events wait that are not parked, unless a slot is free and events wait for records (then
//! the records may be further on in the input: events that waited behind a parked one would
//! otherwise stop the reading for good); past `max_held` events in all, the oldest parked event
//! gets its last chance early.

use crate::deliver::batch::{Answers, Batcher};
use crate::deliver::executor::{BatchAnswer, Delivery, EventOutcome, Turn, Unsettled, Wait};
use crate::deliver::holds::{Holding, KeyHolds, OneProcess, Taking};
use crate::deliver::schedule::{EventId, Key, Scheduler, Status, WaitReason};
use crate::deliver::{DeadLetter, LearnedKey, PauseScope};
use backon::ExponentialBackoff;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How the dispatcher runs.
#[derive(Clone, Debug)]
pub struct DispatchOptions {
    /// Turns running at once (keys delivered in parallel).
    pub concurrency: usize,
    /// How long an event keeps being tried after transient failures, from when it was accepted.
    pub retry_for: Duration,
    /// How long an event waits for a record it needs (see [`RecordWait`]).
    pub wait_for_records: RecordWait,
    /// Events held that are not parked; no more are taken from the input past this while every
    /// slot is busy or nothing is parked.
    pub max_active: usize,
    /// Events held at most; past it, the oldest parked event gets its last chance.
    pub max_held: usize,
    /// Bytes of the events parked (waiting for a record) kept in memory at most; past it, a
    /// parked event its queue can give back lets its body go and is read back when it comes
    /// out ([`Delivery::shed`]). Unbounded by default (`send` reads a file it cannot go back
    /// in).
    pub max_parked_bytes: usize,
    /// After a stop, how long running turns may take to finish (then they are dropped, and
    /// their events are delivered again by whoever reads the input next).
    pub drain: Duration,
    /// Steps with a bulk form send their requests as items of bulk requests, each waiting at
    /// most this long for more items ([`super::batch`]); `None`: every request goes single.
    pub batch_window: Option<Duration>,
    /// Also send the items collected as soon as nothing else runs and no input waits (`serve`:
    /// a quiet stream is not slowed by the window, a busy one fills its bulk requests).
    pub batch_when_idle: bool,
    /// Where the holds on the keys events share across processes are taken (see the module
    /// docs); [`OneProcess`] by default.
    pub holds: Arc<dyn KeyHolds>,
    /// Set by the input's source while it has more events to hand over than the channel shows
    /// (`serve`: its last read of the queue was full): delivery is behind, not keeping up.
    pub input_behind: Arc<AtomicBool>,
}

/// How long a parked event waits for its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordWait {
    /// This long after it was first parked (`serve`).
    For(Duration),
    /// Until the input has ended, plus this long (`send`: a backfill's later events may create
    /// the record).
    AfterInput(Duration),
}

impl Default for DispatchOptions {
    fn default() -> Self {
        DispatchOptions {
            concurrency: 8,
            retry_for: Duration::from_secs(24 * 3600),
            wait_for_records: RecordWait::For(Duration::from_secs(15 * 60)),
            max_active: 4096,
            max_held: 100_000,
            max_parked_bytes: usize::MAX,
            drain: Duration::from_secs(30),
            batch_window: None,
            batch_when_idle: false,
            holds: Arc::new(OneProcess),
            input_behind: Arc::default(),
        }
    }
}

/// An event to deliver.
pub struct Incoming<T> {
    /// Increasing with arrival.
    pub id: EventId,
    pub delivery: Delivery,
    pub keys: Vec<Key>,
    /// The keys among `keys` that events in other partitions of a shared queue have too
    /// (`Event::shared_keys`): held across processes while it is delivered.
    pub shared: Vec<String>,
    /// When it was accepted.
    pub since: Instant,
    /// What the sink needs to settle it (a queue id).
    pub ticket: T,
    /// Its size in the queue (bytes of its body), for [`DispatchOptions::max_parked_bytes`].
    pub size: usize,
}

/// Where settled events go.
pub trait Sink: Send {
    type Ticket: Send + 'static;

    /// An event is settled. `false` stops the dispatcher (the sink cannot take more).
    fn settled(&mut self, ticket: Self::Ticket, outcome: EventOutcome) -> bool;

    /// Zendesk refused the credentials (401/403). `true`: hold every event and try again later;
    /// `false`: stop (events not settled stay unsettled).
    fn refused(&mut self, status: u16, message: &str) -> bool;

    /// Zendesk took a request again after refusing the credentials.
    fn accepted(&mut self) {}

    /// An event is set aside to be tried again (a retry, a record that does not exist yet).
    fn deferred(&mut self) {}

    /// An event waits because another process holds one of its shared keys.
    fn held_elsewhere(&mut self) {}

    /// What is held up, now and then (at most once a second).
    fn status(&mut self, _status: Status) {}

    /// Whether the event may still be delivered here, asked before each of its turns starts.
    /// `zdmap send` and a queue of one process own everything they read.
    fn ownership(&mut self, _ticket: &Self::Ticket) -> Ownership {
        Ownership::Ours
    }

    /// An event whose ownership was [`Ownership::Lost`] left the dispatcher unsettled: the
    /// source forgets it (whoever owns it now delivers it).
    fn dropped(&mut self, _ticket: Self::Ticket) {}

    /// The dispatcher stopped (told to, or the credentials were refused) before this event
    /// was settled: `left` says what it still had to do. Called once per such event, oldest
    /// first, the events still in the input channel last. By default nothing is done (a queue
    /// keeps what it did not settle).
    fn left(&mut self, _ticket: Self::Ticket, _left: Unsettled) {}
}

/// Whether an event's source still owns it (see [`Sink::ownership`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Deliver it.
    Ours,
    /// Not certainly ours any more (a shared queue's lease that was not renewed in time): no
    /// turn starts, and it keeps its place in its lines; asked again shortly.
    Unsure,
    /// Another process delivers it now: it leaves here unsettled, and so do the events behind
    /// it as their turns come (they have the same source).
    Lost,
}

/// How a dispatch ended.
#[derive(Debug, Default)]
pub struct DispatchReport {
    /// Why it stopped early (credentials refused), if it did.
    pub fatal: Option<String>,
}

struct Job<T> {
    delivery: Delivery,
    meta: Meta<T>,
}

/// A job's data besides its delivery: kept by the dispatcher while the delivery runs.
struct Meta<T> {
    ticket: T,
    backoff: ExponentialBackoff,
    /// The next recheck interval while parked.
    recheck: Duration,
    /// When a parked event's wait for its record ends.
    deadline: Option<Instant>,
    /// The held events ahead of it when its turn started (it may only join their bulk requests).
    ahead: Vec<EventId>,
    /// The keys to hold across processes before its first turn (empty when holds are free).
    shared: Vec<String>,
    /// How long it waits next when a shared key is held elsewhere.
    hold_wait: Duration,
    /// It has waited for a bulk request already: its own item's, or one of an earlier event of
    /// its keys while it waited behind (see [`Dispatcher::late`]).
    after_bulk: bool,
    /// Its size in the queue ([`Incoming::size`]).
    size: usize,
    /// Parked with its body in memory: counted in [`Dispatcher::parked_bytes`].
    parked_in_memory: bool,
}

/// How a task of the dispatcher ended.
enum Ran {
    /// The holds of the event's shared keys were taken (`true`) or are held elsewhere.
    Holds(bool),
    /// A turn of its delivery.
    Turn(Turn),
}

const FIRST_RECHECK: Duration = Duration::from_secs(1);
/// A timer that the end of the input comes before (a year).
const UNTIL_INPUT_ENDS: Duration = Duration::from_secs(365 * 24 * 3600);
const LONGEST_RECHECK: Duration = Duration::from_secs(60);
/// How often the sink hears what is held up.
const STATUS_EVERY: Duration = Duration::from_secs(1);
const FIRST_HOLD: Duration = Duration::from_secs(1);
const LONGEST_HOLD: Duration = Duration::from_secs(60);
/// Keys whose last bulk answer is remembered before the older ones (a minute) are let go.
const BULK_ANSWERS_KEPT: usize = 10_000;
const BULK_ANSWER_KEPT_FOR: Duration = Duration::from_secs(60);
/// The first wait for a shared key held elsewhere, and the longest.
const FIRST_HOLD_WAIT: Duration = Duration::from_millis(50);
const LONGEST_HOLD_WAIT: Duration = Duration::from_secs(1);
/// How often an event whose ownership is unsure is asked about again.
const FENCE_RECHECK: Duration = Duration::from_millis(200);

/// Delivers what `input` brings until it closes and everything is settled, or until `stop`
/// turns true (then running turns get `options.drain` to finish; what is unsettled stays with
/// the input's source).
pub async fn dispatch<S: Sink>(
    mut input: mpsc::Receiver<Incoming<S::Ticket>>,
    sink: &mut S,
    options: &DispatchOptions,
    mut stop: watch::Receiver<bool>,
) -> DispatchReport {
    let mut d = Dispatcher {
        scheduler: Scheduler::new(),
        running: JoinSet::new(),
        tasks: HashMap::new(),
        options,
        input_done: false,
        held_until: None,
        hold: FIRST_HOLD,
        refused: false,
        fatal: None,
        last_status: None,
        reported_busy: false,
        batcher: options.batch_window.map(Batcher::new),
        holding: HashMap::new(),
        keeping_up: false,
        bulk_answered: HashMap::new(),
        parked_bytes: 0,
        shed: 0,
    };
    let mut draining: Option<Instant> = None;
    // Told to stop (not a sink that could take no more, nor refused credentials).
    let mut stopped = false;
    loop {
        if draining.is_none() && d.fatal.is_none() {
            // Nothing waits to be read (`serve`): the items collected go once no turn runs,
            // and while the source is not behind either, late items go single.
            let idle = options.batch_when_idle && input.is_empty();
            d.keeping_up = idle && !options.input_behind.load(Ordering::Relaxed);
            d.start_turns(sink);
            // Nothing else can join the items being collected: send them now.
            if d.running.is_empty()
                && (d.input_done || idle)
                && let Some(b) = &mut d.batcher
            {
                b.send_all();
            }
        }
        if d.input_done && d.scheduler.is_empty() && d.running.is_empty() {
            break;
        }
        if (draining.is_some() || d.fatal.is_some()) && d.running.is_empty() {
            break;
        }
        d.report_status(sink);
        let take_input =
            !d.input_done && draining.is_none() && d.fatal.is_none() && d.wants_input();
        // The next timer, a hold ending, or the next status report while events are held.
        let status_due = (!d.scheduler.is_empty())
            .then(|| d.last_status.map(|at| at + STATUS_EVERY))
            .flatten();
        let timer = match draining {
            Some(end) => Some(end),
            None => [
                d.scheduler.next_timer(),
                d.held_until,
                status_due,
                d.batcher.as_ref().and_then(Batcher::next_deadline),
            ]
            .into_iter()
            .flatten()
            .min(),
        };
        let batches_out = d.batcher.as_ref().is_some_and(Batcher::has_running);
        tokio::select! {
            changed = stop.changed(), if draining.is_none() => {
                if changed.is_err() || *stop.borrow() {
                    stopped = changed.is_ok();
                    draining = Some(Instant::now() + options.drain);
                }
            }
            Some(done) = d.running.join_next_with_id(), if !d.running.is_empty() => {
                if !d.turn_ended(done, sink) {
                    draining = Some(Instant::now() + options.drain);
                }
            }
            answers = answered(&mut d.batcher), if batches_out => d.answered(answers),
            item = input.recv(), if take_input => match item {
                Some(incoming) => {
                    d.admit(incoming);
                    d.give_up_oldest_if_full();
                }
                None => d.input_ended(),
            },
            () = sleep_until(timer), if timer.is_some() => {
                let now = Instant::now();
                if draining.is_some_and(|end| end <= now) {
                    d.running.abort_all();
                    break;
                }
                if d.held_until.is_some_and(|h| h <= now) {
                    d.held_until = None;
                }
                if let Some(b) = &mut d.batcher {
                    b.send_due(now);
                }
                d.fire(now);
            }
        }
    }
    // What is not settled stays with the input's source: its holds go now, so that whoever
    // delivers it next (another replica) need not wait for them to expire.
    for (_, keys) in d.holding.drain() {
        options.holds.release(keys);
    }
    // The sink hears what each unsettled event had left, oldest first: the events the
    // scheduler held, those whose turn was cut short, then (after a stop) the input not taken.
    let mut left: Vec<(EventId, S::Ticket, Unsettled)> = d
        .scheduler
        .drain()
        .into_iter()
        .map(|(id, job)| (id, job.meta.ticket, job.delivery.unsettled()))
        .chain(
            d.tasks
                .drain()
                .map(|(_, (id, meta, left))| (id, meta.ticket, left)),
        )
        .collect();
    left.sort_by_key(|(id, _, _)| *id);
    for (_, ticket, unsettled) in left {
        sink.left(ticket, unsettled);
    }
    if stopped {
        input.close();
        while let Some(incoming) = input.recv().await {
            sink.left(incoming.ticket, incoming.delivery.unsettled());
        }
    }
    DispatchReport { fatal: d.fatal }
}

async fn answered(batcher: &mut Option<Batcher>) -> Answers {
    match batcher {
        Some(b) => b.answered().await,
        None => Answers::default(),
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

struct Dispatcher<'o, T> {
    scheduler: Scheduler<Job<T>>,
    running: JoinSet<(Delivery, Ran)>,
    /// Running tasks → their event, the rest of its job, and what it had left to do when its
    /// turn started (its data settles it if the task fails; the rest is told to the sink if
    /// the turn is cut short by a stop).
    tasks: HashMap<tokio::task::Id, (EventId, Meta<T>, Unsettled)>,
    options: &'o DispatchOptions,
    input_done: bool,
    /// No turn starts before this (credentials refused).
    held_until: Option<Instant>,
    hold: Duration,
    /// The last answer was a refusal of the credentials.
    refused: bool,
    fatal: Option<String>,
    last_status: Option<Instant>,
    /// The last status reported held events: once none are held, that is said at once, so no
    /// gauge stays up after the work is done.
    reported_busy: bool,
    /// Items of bulk requests (when batching is on).
    batcher: Option<Batcher>,
    /// Events holding their shared keys (see [`KeyHolds`]), until they are settled.
    holding: HashMap<EventId, Vec<String>>,
    /// Delivery keeps up with the input (`batch_when_idle`, no event waits to be read and the
    /// source is not behind).
    keeping_up: bool,
    /// When an event of each key last had its bulk request answered (kept for a minute).
    bulk_answered: HashMap<Key, Instant>,
    /// Bytes of the parked events whose body is in memory.
    parked_bytes: usize,
    /// Parked events whose body waits in the queue (shed).
    shed: usize,
}

impl<T: Send + 'static> Dispatcher<'_, T> {
    fn start_turns<S: Sink<Ticket = T>>(&mut self, sink: &mut S) {
        if self.held_until.is_some() {
            return;
        }
        while self.running.len() < self.options.concurrency.max(1) {
            let Some((id, mut job)) = self.scheduler.start_next() else {
                return;
            };
            self.unparked(&mut job);
            // No turn starts for an event its source may no longer own.
            let Some(Job {
                mut delivery,
                mut meta,
            }) = self.owned(id, job, sink)
            else {
                continue;
            };
            meta.ahead = self.scheduler.held_ahead(id);
            delivery.join_only(!meta.ahead.is_empty());
            if !meta.after_bulk
                && let Some(since) = self.scheduler.since(id)
            {
                // Accepted before a bulk request of its keys was answered: it waited behind it.
                meta.after_bulk = self
                    .scheduler
                    .keys(id)
                    .iter()
                    .any(|k| self.bulk_answered.get(k).is_some_and(|at| *at >= since));
            }
            let taking = (!meta.shared.is_empty() && !self.holding.contains_key(&id))
                .then(|| self.options.holds.take(meta.shared.clone()));
            self.spawn(id, Job { delivery, meta }, taking);
        }
    }

    /// The job back when its source still owns the event; else it waits (unsure) or leaves
    /// unsettled (lost).
    fn owned<S: Sink<Ticket = T>>(
        &mut self,
        id: EventId,
        job: Job<T>,
        sink: &mut S,
    ) -> Option<Job<T>> {
        match sink.ownership(&job.meta.ticket) {
            Ownership::Ours => Some(job),
            Ownership::Unsure => {
                let until = Instant::now() + FENCE_RECHECK;
                self.scheduler.wait(id, job, until, WaitReason::Fenced);
                None
            }
            Ownership::Lost => {
                self.finish(id);
                sink.dropped(job.meta.ticket);
                None
            }
        }
    }

    /// Runs an event's turn, or takes its holds first.
    fn spawn(&mut self, id: EventId, job: Job<T>, taking: Option<Taking>) {
        let Job { mut delivery, meta } = job;
        let left = delivery.unsettled();
        let handle = self.running.spawn(async move {
            if let Some(taking) = taking {
                let held = taking.await == Holding::Held;
                return (delivery, Ran::Holds(held));
            }
            let turn = delivery.advance().await;
            (delivery, Ran::Turn(turn))
        });
        self.tasks.insert(handle.id(), (id, meta, left));
    }

    /// An event is settled: it leaves the scheduler and lets go of its holds.
    fn finish(&mut self, id: EventId) {
        self.scheduler.finish(id);
        if let Some(keys) = self.holding.remove(&id) {
            self.options.holds.release(keys);
        }
    }

    /// The keys an event's actions still to run no longer need ([`Delivery::keys_needed`]: a
    /// group call whose organization upsert is done) leave its lines, so that the next events of
    /// the organization go on while it waits (for its membership's bulk request, say); a hold
    /// taken across processes on such a key is released too.
    fn let_go(&mut self, id: EventId, job: &mut Job<T>) {
        let keys = self.scheduler.keys(id);
        if keys.len() < 2 {
            return;
        }
        let needed = job.delivery.keys_needed(keys);
        let done: Vec<Key> = keys
            .iter()
            .filter(|k| !needed.contains(k))
            .cloned()
            .collect();
        if done.is_empty() {
            return;
        }
        self.scheduler.let_go(id, &done);
        let names: Vec<String> = done.iter().map(Key::to_string).collect();
        job.meta.shared.retain(|k| !names.contains(k));
        if let Some(held) = self.holding.get_mut(&id) {
            let (released, kept): (Vec<String>, Vec<String>) =
                held.drain(..).partition(|k| names.contains(k));
            *held = kept;
            if !released.is_empty() {
                self.options.holds.release(released);
            }
        }
    }

    /// Bulk requests answered: each event gets its item's answer and may go on.
    fn answered(&mut self, answers: Answers) {
        if !answers.learned.is_empty() {
            self.scheduler.learned(&answers.learned);
        }
        let now = Instant::now();
        if self.bulk_answered.len() > BULK_ANSWERS_KEPT {
            self.bulk_answered
                .retain(|_, at| now.saturating_duration_since(*at) < BULK_ANSWER_KEPT_FOR);
        }
        for (id, answer) in answers.answers {
            // A lone item sent as its single request waited for no bulk request.
            let waited = matches!(answer, BatchAnswer::Answered(_));
            if let Some(job) = self.scheduler.job_mut(id) {
                job.delivery.answer(answer);
                job.meta.after_bulk |= waited;
            }
            if waited {
                for key in self.scheduler.keys(id) {
                    self.bulk_answered.insert(key.clone(), now);
                }
            }
            self.scheduler.wake(id);
        }
    }

    fn admit(&mut self, mut incoming: Incoming<T>) {
        incoming.delivery.batching(self.batcher.is_some());
        let keys = incoming.keys;
        let backoff = incoming.delivery.retry_policy().backoff();
        let mut shared = incoming.shared;
        if self.options.holds.every_key_held() {
            shared.clear();
        }
        let job = Job {
            delivery: incoming.delivery,
            meta: Meta {
                ticket: incoming.ticket,
                backoff,
                recheck: FIRST_RECHECK,
                deadline: None,
                ahead: Vec::new(),
                shared,
                hold_wait: FIRST_HOLD_WAIT,
                after_bulk: false,
                size: incoming.size,
                parked_in_memory: false,
            },
        };
        self.scheduler
            .insert(incoming.id, keys, incoming.since, job);
    }

    /// The input has ended: parked events get their deadline (`send`), so they come back now
    /// to take it.
    fn input_ended(&mut self) {
        self.input_done = true;
        for id in self.scheduler.parked_ids() {
            self.scheduler.unpark_now(id);
        }
    }

    fn fire(&mut self, now: Instant) {
        for id in self.scheduler.fire(now) {
            if let Some(job) = self.scheduler.job_mut(id)
                && job.meta.deadline.is_some_and(|d| d <= now)
            {
                job.delivery.last_chance();
            }
        }
    }

    /// Whether an event's bulk item or lookup goes single because another bulk request would
    /// make it late: delivery keeps up with the input, and the event has waited for a bulk
    /// request already (its own item's, or one of an earlier event of its keys). A backlog
    /// keeps batching (there the requests per event are what bounds delivery); a stream that
    /// keeps up is not slowed by one bulk request after another in a key's line.
    fn late(&self, meta: &Meta<T>) -> bool {
        self.keeping_up && meta.after_bulk
    }

    /// Applies how a turn ended. `false` when the sink cannot take more.
    fn turn_ended<S: Sink<Ticket = T>>(
        &mut self,
        done: Result<(tokio::task::Id, (Delivery, Ran)), tokio::task::JoinError>,
        sink: &mut S,
    ) -> bool {
        let (id, mut job, ran) = match done {
            Ok((task, (delivery, ran))) => {
                let Some((id, meta, _)) = self.tasks.remove(&task) else {
                    return true;
                };
                (id, Job { delivery, meta }, ran)
            }
            Err(e) => {
                // A turn that panicked (a bug): its event is settled as failed, not lost.
                let Some((id, meta, left)) = self.tasks.remove(&e.id()) else {
                    return true;
                };
                tracing::error!(event_id = id, error = %e, "a delivery turn failed");
                self.finish(id);
                if left.event().is_null() {
                    // Shed, and not read back: it stays in its queue rather than be settled
                    // without its body.
                    sink.dropped(meta.ticket);
                    return true;
                }
                let letter = DeadLetter::before_any_action(
                    left.event().clone(),
                    "deliver",
                    format!("delivery failed: {e}"),
                );
                let outcome = EventOutcome::Failed {
                    letters: vec![letter],
                };
                return sink.settled(meta.ticket, outcome);
            }
        };
        let turn = match ran {
            Ran::Turn(turn) => turn,
            Ran::Holds(true) => {
                self.holding.insert(id, job.meta.shared.clone());
                job.meta.hold_wait = FIRST_HOLD_WAIT;
                if self.fatal.is_some() {
                    // No turn starts any more: it stays unsettled.
                    self.scheduler
                        .wait(id, job, Instant::now(), WaitReason::Credentials);
                } else if let Some(job) = self.owned(id, job, sink) {
                    // Its keys stay busy: the turn goes on at once.
                    self.spawn(id, job, None);
                }
                return true;
            }
            Ran::Holds(false) => {
                let pause = job.meta.hold_wait;
                job.meta.hold_wait = (pause * 2).min(LONGEST_HOLD_WAIT);
                tracing::debug!(event_id = id, keys = %job.meta.shared.join(","), "a key is held by another replica; waiting");
                sink.held_elsewhere();
                job.delivery.note(|| crate::deliver::trail::Entry::Waiting {
                    reason: "fenced".to_owned(),
                    detail: Some("another replica holds one of its keys".to_owned()),
                    seconds: Some(pause.as_secs_f64()),
                });
                self.scheduler
                    .wait(id, job, Instant::now() + pause, WaitReason::HeldElsewhere);
                return true;
            }
        };
        if !matches!(turn, Turn::Finished(_)) {
            self.let_go(id, &mut job);
        }
        let learned: Vec<LearnedKey> = job.delivery.take_learned();
        if !learned.is_empty() {
            self.scheduler.learned(&learned);
        }
        let now = Instant::now();
        if !matches!(turn, Turn::Wait(Wait::Fatal { .. })) && self.refused {
            self.refused = false;
            self.hold = FIRST_HOLD;
            sink.accepted();
        }
        match turn {
            Turn::Finished(outcome) => {
                self.finish(id);
                sink.settled(job.meta.ticket, outcome)
            }
            Turn::Wait(Wait::Missing { need }) => {
                let deadline = match (job.meta.deadline, self.options.wait_for_records) {
                    (Some(d), _) => Some(d),
                    (None, RecordWait::For(wait)) => Some(now + wait),
                    (None, RecordWait::AfterInput(grace)) if self.input_done => Some(now + grace),
                    // Not before the input has ended.
                    (None, RecordWait::AfterInput(_)) => None,
                };
                job.meta.deadline = deadline;
                let until = match deadline {
                    Some(d) => d.min(now + job.meta.recheck),
                    // `send` looks again when the input ends (see `input_ended`): the record
                    // is most likely further on in the input.
                    None => now + UNTIL_INPUT_ENDS,
                };
                job.meta.recheck = (job.meta.recheck * 2).min(LONGEST_RECHECK);
                tracing::debug!(event_id = id, lookup = %need, "waiting for a record that does not exist yet");
                sink.deferred();
                self.parking(&mut job);
                self.scheduler
                    .park(id, job, LearnedKey::of_need(&need), until);
                self.give_up_oldest_if_full();
                true
            }
            Turn::Wait(Wait::Retry {
                wait,
                scope,
                transient,
                letter,
            }) => {
                let since = self.scheduler.since(id).unwrap_or(now);
                if transient && now.saturating_duration_since(since) >= self.options.retry_for {
                    // Out of time: this action is dead-lettered, the event's others go on.
                    job.delivery.give_up(*letter);
                    self.scheduler.wait(id, job, now, WaitReason::Retry);
                    return true;
                }
                sink.deferred();
                let rate_limited = wait.is_some() && scope == PauseScope::Key;
                let pause = wait
                    .or_else(|| job.meta.backoff.next())
                    .unwrap_or(LONGEST_HOLD);
                if rate_limited {
                    tracing::info!(
                        keys = %self.scheduler.keys(id).iter().map(Key::as_str).collect::<Vec<_>>().join(","),
                        seconds = pause.as_secs_f64(),
                        "a per-key rate limit: these keys wait, the others go on"
                    );
                }
                let reason = if rate_limited {
                    WaitReason::RateLimited
                } else {
                    WaitReason::Retry
                };
                self.scheduler.wait(id, job, now + pause, reason);
                true
            }
            // (A turn that may only join the bulk requests ahead of it joins them or goes back
            // behind them, as below: it never goes single before them.)
            Turn::Wait(Wait::Batch(_) | Wait::Lookup(_))
                if job.meta.ahead.is_empty() && self.late(&job.meta) =>
            {
                job.delivery.answer(BatchAnswer::Single);
                self.scheduler.wait(id, job, now, WaitReason::Retry);
                true
            }
            Turn::Wait(Wait::Batch(item)) => match &mut self.batcher {
                Some(b) if job.meta.ahead.is_empty() => {
                    b.add(id, *item, now);
                    self.scheduler.hold(id, job, WaitReason::Batch);
                    true
                }
                Some(b) => {
                    if b.join(id, *item, &job.meta.ahead, now) {
                        self.scheduler.hold(id, job, WaitReason::Batch);
                    } else {
                        self.scheduler.behind(id, job);
                    }
                    true
                }
                None => {
                    job.delivery.answer(BatchAnswer::Single);
                    self.scheduler.wait(id, job, now, WaitReason::Retry);
                    true
                }
            },
            Turn::Wait(Wait::Lookup(item)) => {
                match &mut self.batcher {
                    Some(b) => {
                        b.add_lookup(id, *item, now);
                        self.scheduler.hold(id, job, WaitReason::Batch);
                    }
                    None => {
                        job.delivery.answer(BatchAnswer::Single);
                        self.scheduler.wait(id, job, now, WaitReason::Retry);
                    }
                }
                true
            }
            Turn::Wait(Wait::Behind) => {
                self.scheduler.behind(id, job);
                true
            }
            Turn::Wait(Wait::Fatal { status, message }) => {
                self.refused = true;
                if sink.refused(status, &message) {
                    let until = now + self.hold;
                    self.hold = (self.hold * 2).min(LONGEST_HOLD);
                    self.held_until = Some(self.held_until.map_or(until, |h| h.max(until)));
                    self.scheduler.wait(id, job, until, WaitReason::Credentials);
                } else {
                    self.finish(id);
                    self.fatal.get_or_insert(format!(
                        "Zendesk answered {status}: {message}. Check the credentials (the OAuth client's ZENDESK_OAUTH_CLIENT_ID and ZENDESK_OAUTH_CLIENT_SECRET, the token store of `zdmap auth login`, ZENDESK_OAUTH_TOKEN, or ZENDESK_EMAIL and ZENDESK_API_TOKEN) and the agent's permissions; the events from this one on were not sent"
                    ));
                }
                true
            }
        }
    }

    /// A job is parked: its body stays in memory within [`DispatchOptions::max_parked_bytes`],
    /// else it is let go when its queue can give it back.
    fn parking(&mut self, job: &mut Job<T>) {
        let size = job.meta.size;
        if self.parked_bytes.saturating_add(size) > self.options.max_parked_bytes
            && job.delivery.can_shed()
        {
            job.delivery.shed();
            self.shed += 1;
        } else if !job.delivery.is_shed() {
            self.parked_bytes += size;
            job.meta.parked_in_memory = true;
        }
    }

    /// A job leaves the scheduler's waiting for a turn (a shed one reads its body back then).
    fn unparked(&mut self, job: &mut Job<T>) {
        if job.meta.parked_in_memory {
            job.meta.parked_in_memory = false;
            self.parked_bytes = self.parked_bytes.saturating_sub(job.meta.size);
        }
        if job.delivery.is_shed() {
            self.shed = self.shed.saturating_sub(1);
        }
    }

    /// Whether to take more input (see the module docs).
    fn wants_input(&self) -> bool {
        let held = self.scheduler.len();
        let free_slot = self.running.len() < self.options.concurrency.max(1);
        held - self.scheduler.parked() < self.options.max_active
            || (free_slot && self.scheduler.parked() > 0 && held < self.options.max_held)
    }

    /// Past `max_held` events, the oldest parked one gets its last chance now.
    fn give_up_oldest_if_full(&mut self) {
        if self.scheduler.len() <= self.options.max_held {
            return;
        }
        let Some(oldest) = self.scheduler.oldest_parked() else {
            return;
        };
        tracing::warn!(
            held = self.scheduler.len(),
            "too many events wait for records that do not exist; the oldest is given up early"
        );
        if let Some(job) = self.scheduler.job_mut(oldest) {
            job.delivery.last_chance();
        }
        self.scheduler.unpark_now(oldest);
    }

    fn report_status<S: Sink>(&mut self, sink: &mut S) {
        let now = Instant::now();
        let done = self.scheduler.is_empty() && self.reported_busy;
        if !done
            && self
                .last_status
                .is_some_and(|at| now.duration_since(at) < STATUS_EVERY)
        {
            return;
        }
        self.last_status = Some(now);
        let mut status = self.scheduler.status(now);
        status.parked_bytes = self.parked_bytes as u64;
        status.parked_in_queue = self.shed;
        self.reported_busy = status.events > 0;
        sink.status(status);
    }
}
