//! Batching: the items of bulk requests, collected, sent, polled and answered one by one.
//!
//! A step with a bulk form (`batch:` in its YAML, [`crate::mapping::plan::batch::BatchForm`]) does not
//! send its request: its delivery stops with [`Wait::Batch`](super::Wait::Batch) and the
//! dispatcher hands the item to the [`Batcher`], while the event keeps its place at the front
//! of its keys' lines (so the events of one key still go in order). Items of one bulk request
//! are collected until `max_items` are there or the window ends (or nothing else can happen:
//! `send`'s input has ended and no turn runs); items with the same `coalesce` identity become one
//! item, later values winning field by field. Then the bulk request goes out as one attempt:
//! - a lone item goes as its step's single request (one request, no job to wait for: the bulk
//!   request would cost itself and its polls);
//! - a status the form names as a refusal (`fallback.statuses`: 403 when bulk user imports are
//!   off) turns the form off (logged once) and every item is sent as its single request, from
//!   then on too (items are still collected, so the events coalesced into one share its request);
//! - any other failure (a 429 on job creation, a 5xx, a timeout) is every item's answer, so each
//!   event retries its step like after a failed single request, and joins a new batch;
//! - a job is polled (`jobs:` of `destination.yaml`) until it is done, each poll one request
//!   under the budget; at most `jobs.limit` jobs are in flight, further bulk requests wait
//!   for one to end. A job that fails as a whole is a retry for every item. The first job's
//!   first poll comes `poll_ms` after its bulk request; later jobs are first polled when the
//!   jobs before them were seen done (`JobTimes`: an account's jobs take about as long as
//!   each other), so a job costs about one poll and is read soon after it ends.
//!
//! Each item's result is read back into the answer its step would have had for its single
//! request (`{body_key: result}` with the form's status), so the step's `outcomes`, `outputs`
//! and `learn` apply unchanged, and an item that failed fails only its own event. Answers go
//! back to the dispatcher, which hands each delivery its own ([`super::Delivery::answer`]).
//!
//! Lookups whose resolver declares a bulk form (`show_many?external_ids=`) are collected the same
//! way, per resolver and key kind, up to `max_keys`: one request answers them all into the cache
//! (found, or not found), and each event goes on from there.
//!
//! A job still running when the process stops is not remembered: its events were never
//! settled, so they are delivered again at the next start. Upserts are simply sent again; a
//! step that is not idempotent checks first, once the jobs that may carry its write have
//! ended ([`super::jobs`]).

use crate::deliver::LearnedKey;
use crate::deliver::executor::{BatchAnswer, BatchItem, LookupItem};
use crate::deliver::schedule::EventId;
use crate::deliver::{Disposition, Response, ResponseHeaders, Transport};
use crate::mapping::config::Config;
use crate::mapping::plan::batch::{BatchForm, JobState, coalesce_into};
use crate::mapping::request::Request;
use indexmap::IndexMap;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Polls of one job that may fail in a row before its items are tried again.
const POLL_FAILURES: u32 = 8;

/// The soonest a job is polled after its bulk request, or again after a poll that found it
/// running while [`JobTimes`] expected it done.
const SOONEST_POLL: Duration = Duration::from_millis(20);

/// How long jobs took to be seen done lately, so that a job is first polled about when it
/// ends: polled too soon it costs more polls, too late its events wait.
#[derive(Debug, Default)]
struct JobTimes {
    /// Milliseconds from a bulk request's answer to its first poll; 0 until a job was seen done.
    first_poll_ms: AtomicU64,
}

impl JobTimes {
    /// When to poll a job first, as learned (`None` until a job was seen done), at most
    /// `longest` after its bulk request.
    fn first_poll(&self, longest: Duration) -> Option<Duration> {
        match self.first_poll_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms).clamp(SOONEST_POLL, longest.max(SOONEST_POLL))),
        }
    }

    /// A job was seen done by a poll `after` its bulk request's answer. Seen at its first poll,
    /// it may have ended sooner: the next first poll comes a tenth sooner. Seen later, it ended
    /// between the last two polls: the next first poll comes when this one was seen done.
    fn seen_done(&self, after: Duration, first_poll: bool) {
        let next = if first_poll { after * 9 / 10 } else { after };
        let ms = u64::try_from(next.as_millis()).unwrap_or(u64::MAX).max(1);
        self.first_poll_ms.store(ms, Ordering::Relaxed);
    }
}

/// Collects items into bulk requests and runs them; see the module docs.
#[derive(Debug)]
pub(crate) struct Batcher {
    window: Duration,
    open: IndexMap<String, Open>,
    /// Lookups being collected, by resolver and key kind.
    lookups: IndexMap<String, OpenLookup>,
    tasks: JoinSet<Answers>,
    /// The events of each running bulk request (to answer them if its task fails).
    running: HashMap<tokio::task::Id, Vec<EventId>>,
    /// Jobs in flight at once (`jobs.limit`), made with the first job.
    jobs: Option<Arc<Semaphore>>,
    /// How long jobs take to be seen done.
    job_times: Arc<JobTimes>,
}

/// A bulk request being collected.
#[derive(Debug)]
struct Open {
    deadline: Instant,
    form: Arc<BatchForm>,
    config: Arc<Config>,
    transport: Transport,
    slots: Vec<Slot>,
}

/// What a bulk request (or lookup) ended with: each event's answer, and the resolver keys it
/// taught (so that events waiting for those records wake up).
#[derive(Debug, Default)]
pub struct Answers {
    pub answers: Vec<(EventId, BatchAnswer)>,
    pub learned: Vec<LearnedKey>,
}

/// Keys being collected for one bulk lookup.
#[derive(Debug)]
struct OpenLookup {
    deadline: Instant,
    first: LookupItem,
    /// Each key (as given) and the events that wait for it.
    keys: IndexMap<String, Vec<EventId>>,
}

/// One item of a bulk request and the events it answers.
#[derive(Debug)]
struct Slot {
    coalesce: Option<String>,
    item: Value,
    /// The single request of its last event (with the coalesced item, when the bulk form is
    /// not allowed).
    single: Request,
    events: Vec<EventId>,
}

impl Batcher {
    /// Items wait at most `window` for more to join them.
    pub fn new(window: Duration) -> Batcher {
        Batcher {
            window,
            open: IndexMap::new(),
            lookups: IndexMap::new(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            jobs: None,
            job_times: Arc::default(),
        }
    }

    /// Adds an event's item; sends its bulk request when it is full.
    pub fn add(&mut self, id: EventId, item: BatchItem, now: Instant) {
        let group = format!("{:p} {}", Arc::as_ptr(&item.config), item.form.group());
        let open = self.open.entry(group.clone()).or_insert_with(|| Open {
            deadline: now + self.window,
            form: item.form.clone(),
            config: item.config.clone(),
            transport: item.transport.clone(),
            slots: Vec::new(),
        });
        let same = item.coalesce.as_ref().and_then(|c| {
            open.slots
                .iter_mut()
                .find(|s| s.coalesce.as_ref() == Some(c))
        });
        match same {
            Some(slot) => {
                coalesce_into(&mut slot.item, &item.item);
                slot.single = item.single;
                slot.events.push(id);
            }
            None => open.slots.push(Slot {
                coalesce: item.coalesce,
                item: item.item,
                single: item.single,
                events: vec![id],
            }),
        }
        if open.slots.len() >= open.form.max_items {
            self.send(&group);
        }
    }

    /// Adds the item of an event that ran while the events `ahead` of it waited for their bulk
    /// requests: only into a bulk request one of them is in and that is still being collected
    /// (so its items go after theirs). `false` when there is none.
    pub fn join(&mut self, id: EventId, item: BatchItem, ahead: &[EventId], now: Instant) -> bool {
        let group = group_of(&item);
        let joinable = self.open.get(&group).is_some_and(|o| {
            o.slots
                .iter()
                .any(|s| s.events.iter().any(|e| ahead.contains(e)))
        });
        if joinable {
            self.add(id, item, now);
        }
        joinable
    }

    /// Adds an event's lookup; sends the bulk lookup when it is full.
    pub(crate) fn add_lookup(&mut self, id: EventId, item: LookupItem, now: Instant) {
        let group = format!(
            "{:p} {} {}",
            Arc::as_ptr(&item.config),
            item.resolver,
            item.by
        );
        let key = item.key.clone();
        let open = self
            .lookups
            .entry(group.clone())
            .or_insert_with(|| OpenLookup {
                deadline: now + self.window,
                first: item,
                keys: IndexMap::new(),
            });
        open.keys.entry(key).or_default().push(id);
        if open.keys.len() >= open.first.form.max_keys {
            self.send_lookup(&group);
        }
    }

    /// When the next window ends.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.open
            .values()
            .map(|o| o.deadline)
            .chain(self.lookups.values().map(|o| o.deadline))
            .min()
    }

    /// Sends the bulk requests whose window has ended.
    pub(crate) fn send_due(&mut self, now: Instant) {
        let due: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(g, _)| g.clone())
            .collect();
        for group in due {
            self.send(&group);
        }
        let due: Vec<String> = self
            .lookups
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(g, _)| g.clone())
            .collect();
        for group in due {
            self.send_lookup(&group);
        }
    }

    /// Sends every bulk request being collected (nothing else can join them).
    pub(crate) fn send_all(&mut self) {
        let groups: Vec<String> = self.open.keys().cloned().collect();
        for group in groups {
            self.send(&group);
        }
        let groups: Vec<String> = self.lookups.keys().cloned().collect();
        for group in groups {
            self.send_lookup(&group);
        }
    }

    /// Whether bulk requests are out.
    pub(crate) fn has_running(&self) -> bool {
        !self.tasks.is_empty()
    }

    /// The answers of the next bulk request that ends: one per event.
    pub async fn answered(&mut self) -> Answers {
        match self.tasks.join_next_with_id().await {
            Some(Ok((task, answers))) => {
                self.running.remove(&task);
                answers
            }
            Some(Err(e)) => {
                // A bulk request that panicked (a bug): its events send their single requests.
                tracing::error!(error = %e, "a bulk request failed");
                Answers {
                    answers: self
                        .running
                        .remove(&e.id())
                        .unwrap_or_default()
                        .into_iter()
                        .map(|id| (id, BatchAnswer::Single))
                        .collect(),
                    learned: Vec::new(),
                }
            }
            None => Answers::default(),
        }
    }

    fn send_lookup(&mut self, group: &str) {
        let Some(open) = self.lookups.shift_remove(group) else {
            return;
        };
        let events: Vec<EventId> = open.keys.values().flatten().copied().collect();
        let handle = self.tasks.spawn(async move {
            let learned = look_up(&open).await;
            // Each event goes on: its lookup is in the cache now, or asked on its own.
            Answers {
                answers: open
                    .keys
                    .into_values()
                    .flatten()
                    .map(|e| (e, BatchAnswer::Single))
                    .collect(),
                learned,
            }
        });
        self.running.insert(handle.id(), events);
    }

    fn send(&mut self, group: &str) {
        let Some(open) = self.open.shift_remove(group) else {
            return;
        };
        if open.slots.is_empty() {
            return;
        }
        let limit = match (&open.config.jobs, open.form.job) {
            (Some(jobs), true) => Some(
                self.jobs
                    .get_or_insert_with(|| Arc::new(Semaphore::new(jobs.limit)))
                    .clone(),
            ),
            _ => None,
        };
        let events: Vec<EventId> = open.slots.iter().flat_map(|s| s.events.clone()).collect();
        let times = self.job_times.clone();
        let handle = self.tasks.spawn(async move {
            let answers = run(&open, limit, &times).await;
            Answers {
                answers: open
                    .slots
                    .into_iter()
                    .zip(answers)
                    .flat_map(|(slot, answer)| {
                        slot.events.into_iter().map(move |e| (e, answer.clone()))
                    })
                    .collect(),
                learned: Vec::new(),
            }
        });
        self.running.insert(handle.id(), events);
    }
}

/// Looks the keys up in one request and caches what it says: the value of each key found, and
/// "not found" for the others. On a failure nothing is cached (each event asks on its own).
async fn look_up(open: &OpenLookup) -> Vec<LearnedKey> {
    let item = &open.first;
    let keys: Vec<String> = open.keys.keys().cloned().collect();
    let request = item.form.request(&keys);
    let Disposition::Done { response } = item.transport.attempt(&request, |_| false).await else {
        return Vec::new();
    };
    if !response.is_success() {
        return Vec::new();
    }
    let found = item.form.found(&response.body);
    let mut learned = Vec::new();
    for key in keys {
        match found.get(&key.to_lowercase()) {
            Some(value) => {
                item.cache.put(
                    &item.resolver,
                    item.ttl,
                    item.capacity,
                    &item.by,
                    &key,
                    value.clone(),
                );
                learned.push(LearnedKey {
                    resolver: item.resolver.clone(),
                    by: item.by.clone(),
                    key,
                });
            }
            None => item.cache.mark_missing(&item.resolver, &item.by, &key),
        }
    }
    learned
}

/// Which bulk request an item joins: its form's, under the config it was rendered with.
fn group_of(item: &BatchItem) -> String {
    format!("{:p} {}", Arc::as_ptr(&item.config), item.form.group())
}

/// Sends one bulk request, polls its job, and gives each item its answer (in slot order).
async fn run(open: &Open, limit: Option<Arc<Semaphore>>, times: &JobTimes) -> Vec<BatchAnswer> {
    let (form, config, transport) = (&open.form, &open.config, &open.transport);
    let n = open.slots.len();
    let all = |a: BatchAnswer| vec![a; n];
    if let [slot] = open.slots.as_slice() {
        // A lone item: its single request costs one request and no job to wait for, where the
        // bulk request costs itself and its polls. One event sends its step's own request;
        // events coalesced into the item share one.
        return if slot.events.len() == 1 {
            vec![BatchAnswer::Single]
        } else {
            singles(open).await
        };
    }
    if form.is_refused() {
        return singles(open).await;
    }
    // Held from the bulk request until its job ends.
    let _permit = match limit {
        Some(s) => s.acquire_owned().await.ok(),
        None => None,
    };
    let request = form.bulk_request(open.slots.iter().map(|s| s.item.clone()).collect());
    let response = match transport
        .attempt(&request, |r| form.is_refusal(r.status))
        .await
    {
        Disposition::Done { response } if form.is_refusal(response.status) => {
            if form.refuse() {
                let (_, message) = config.error_info(&response.body);
                tracing::warn!(
                    endpoint = %form.path,
                    status = response.status,
                    message = message.as_deref().unwrap_or_default(),
                    "the bulk request is not allowed on this account: its items are sent as single requests from now on"
                );
            }
            return singles(open).await;
        }
        Disposition::Done { response } if response.is_success() => response,
        other => return all(BatchAnswer::Answered(Box::new(other))),
    };
    let job = form
        .job
        .then(|| {
            config
                .jobs
                .as_ref()
                .and_then(|jobs| jobs.job_id(&response.body))
        })
        .flatten();
    let results: Vec<Value> = if form.job {
        match poll(open, &response, times).await {
            Ok(results) => results,
            Err(d) => return all(BatchAnswer::Answered(Box::new(d))),
        }
    } else {
        match form.results_in(&response.body) {
            Some(r) => r.to_vec(),
            None => {
                return all(BatchAnswer::Answered(Box::new(
                    Disposition::retry_after_answer(response),
                )));
            }
        }
    };
    open.slots
        .iter()
        .enumerate()
        .map(
            |(place, slot)| match form.result_for(&results, place, &slot.item) {
                Some(result) => {
                    let (codes, _) = config.error_info(result);
                    let answer = form.answer(result, &codes);
                    if answer.send_single {
                        return BatchAnswer::Single;
                    }
                    BatchAnswer::Answered(Box::new(Disposition::Done {
                        response: Response {
                            status: answer.status,
                            headers: ResponseHeaders::default(),
                            body: answer.body,
                            elapsed: Duration::ZERO,
                            job: job.clone(),
                        },
                    }))
                }
                // No result for it: the item is tried again (the batched steps are upserts).
                None => BatchAnswer::Answered(Box::new(Disposition::retry_after_answer(
                    response.clone(),
                ))),
            },
        )
        .collect()
}

/// The bulk form is not allowed: each item goes as its single request (one per item, so the
/// events coalesced into it share one request), answering its events.
async fn singles(open: &Open) -> Vec<BatchAnswer> {
    let mut answers = Vec::with_capacity(open.slots.len());
    for slot in &open.slots {
        let request = open.form.single_with(&slot.single, &slot.item);
        let d = open.transport.attempt(&request, |_| false).await;
        answers.push(BatchAnswer::Answered(Box::new(d)));
    }
    answers
}

/// Polls the job a bulk answer started until it is done: its results, or how it failed.
async fn poll(
    open: &Open,
    started: &Response,
    times: &JobTimes,
) -> Result<Vec<Value>, Disposition> {
    let (config, transport) = (&open.config, &open.transport);
    let Some(jobs) = &config.jobs else {
        return Err(Disposition::retry_after_answer(started.clone()));
    };
    let Some(id) = jobs.job_id(&started.body) else {
        return Err(Disposition::retry_after_answer(started.clone()));
    };
    let request = jobs
        .poll_request(&config.templates, &config.settings, &id)
        .map_err(|_| Disposition::retry_after_answer(started.clone()))?;
    let answered = Instant::now();
    let longest = Duration::from_millis(jobs.poll_max_ms);
    let learned = times.first_poll(longest);
    let mut wait = learned.unwrap_or(Duration::from_millis(jobs.poll_ms));
    let mut polls = 0u32;
    let mut failures = 0;
    loop {
        tokio::time::sleep(wait).await;
        polls += 1;
        wait = match learned {
            // Expected done by now and still running: it ends soon.
            Some(first) if polls == 1 => (first / 4).max(SOONEST_POLL),
            _ => (wait * 3 / 2).min(longest),
        };
        match transport.attempt(&request, |_| false).await {
            Disposition::Done { response } if response.is_success() => {
                failures = 0;
                let state = jobs.state(&response.body);
                if state != JobState::Running {
                    // Nobody checking a write waits for this job any more.
                    transport.jobs().ended(&id);
                }
                match state {
                    JobState::Running => {}
                    JobState::Done(results) => {
                        // When the poll went out (a wait for the request budget not counted).
                        let sent = answered.elapsed().saturating_sub(response.elapsed);
                        times.seen_done(sent, polls == 1);
                        return Ok(results.to_vec());
                    }
                    JobState::Failed(status) => {
                        tracing::info!(job = %id, status = %status, "a bulk job failed: its items are tried again");
                        return Err(Disposition::retry_after_answer(response));
                    }
                }
            }
            Disposition::Retry { wait: after, .. } if failures + 1 < POLL_FAILURES => {
                failures += 1;
                if let Some(after) = after {
                    wait = wait.max(after);
                }
            }
            // The job is unknown (expired), its polls keep failing, or the credentials were
            // refused: what it applied is not known. Its items are answered as by a job that
            // gave them no result, so a write that is not idempotent is checked (once the
            // pending jobs ended) before it is sent again.
            Disposition::Retry { wait, scope, .. } => {
                return Err(Disposition::Retry {
                    last: Ok(started.clone()),
                    wait,
                    scope,
                });
            }
            Disposition::Done { .. } | Disposition::Fatal { .. } | Disposition::Invalid { .. } => {
                return Err(Disposition::retry_after_answer(started.clone()));
            }
        }
    }
}
