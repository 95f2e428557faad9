//! Executing plans: render each step, resolve what it needs, send it, judge the response.
//!
//! [`Executor::start`] plans one event and returns its [`Delivery`]: the event's progress
//! through its actions, in order. [`Delivery::advance`] runs it as far as it can go and says why
//! it stopped ([`Turn`]): the event is settled, or it must wait ([`Wait`]) for a record that does
//! not exist yet, for a retry, or for the credentials to be fixed. Nothing here sleeps: the
//! scheduler ([`super::schedule`]) sets the event aside and calls `advance` again later, and the
//! delivery resumes at the step (and the request of an `each` step) where it stopped.
//!
//! A step is rendered; the lookups it asks for (`resolve('user', email=...)`) are answered from
//! the [`LookupCache`] or by the resolver's requests, and the step is rendered again with the
//! answers. The request goes out through the [`Transport`] (one attempt); the response status,
//! read against the step's and the destination's outcome rules, says whether the action goes
//! on, stops, is tried again, fails (a [`DeadLetter`]) or whether the destination itself is
//! broken (fatal). Ids that responses already carry are learned into the cache, and the keys
//! learned are reported so that events waiting for them wake up.
//!
//! With batching on ([`Delivery::batching`]), a step whose request has a bulk form is not sent:
//! the delivery stops with [`Wait::Batch`] and its item, and resumes with the item's answer
//! ([`Delivery::answer`]), judged like a response to the single request; a lookup with a bulk
//! form stops with [`Wait::Lookup`] and resumes from the cache. A turn that may only join the
//! bulk requests of the events ahead of it ([`Delivery::join_only`]) stops with [`Wait::Behind`]
//! before anything else would be sent.

use crate::config::Config;
use crate::deliver::cache::{Cached, LookupCache};
use crate::deliver::jobs::{Awaited, Unlisted};
use crate::deliver::order::{EntityChange, EntityClock, MemoryClock, event_time};
use crate::deliver::retry::PauseScope;
use crate::deliver::{DeadLetter, Disposition, Response, RetryPolicy, Transport};
use crate::event::Event;
use crate::plan::batch::{BatchForm, LookupBatch};
use crate::plan::step::NextPage;
use crate::plan::{Plan, PlannedAction, Rendered, Step};
use crate::request::Request;
use crate::spec::OutcomeKind;
use crate::template::{Answer, LookupNeed, Lookups, StepOutputs};
use indexmap::IndexMap;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What became of one event.
#[derive(Debug)]
pub enum EventOutcome {
    /// Every action it triggered is done.
    Delivered,
    /// No action matched.
    Skipped,
    /// Some actions failed (the others are done): one dead letter per failed action.
    Failed { letters: Vec<DeadLetter> },
}

/// Why [`Delivery::advance`] stopped.
#[derive(Debug)]
pub enum Turn {
    /// The event is settled.
    Finished(EventOutcome),
    /// The event cannot go on yet; call `advance` again after the wait.
    Wait(Wait),
}

/// What an event waits for.
#[derive(Debug)]
pub enum Wait {
    /// A `resolve(...)` found nothing: the record may not exist yet. Wait until a response
    /// teaches one of `need`'s keys ([`Delivery::take_learned`] of another event), or give up.
    Missing { need: LookupNeed },
    /// Try again later: after `wait` when Zendesk said (`Retry-After`), else after a backoff.
    /// `transient` failures (server errors, timeouts, 429s) are tried for as long as delivery's
    /// `--retry-for` allows; others (a 4xx an outcome maps to `retry`) have a bounded number of
    /// tries, counted here. `letter` is the dead letter if it is given up.
    Retry {
        wait: Option<Duration>,
        scope: PauseScope,
        transient: bool,
        letter: Box<DeadLetter>,
    },
    /// The destination refused the credentials or permissions (401/403).
    Fatal { status: u16, message: String },
    /// The step's request goes out as an item of a bulk request ([`super::batch`]): hand the
    /// delivery its [`BatchAnswer`] ([`Delivery::answer`]) and call `advance` again.
    Batch(Box<BatchItem>),
    /// A lookup goes out with others of its window as one request ([`super::batch`]); its
    /// answer lands in the cache. Hand the delivery [`BatchAnswer::Single`] and call `advance`
    /// again.
    Lookup(Box<LookupItem>),
    /// In a turn that may only join bulk requests ([`Delivery::join_only`]), the next request
    /// is not a bulk item: nothing was sent; call `advance` again once the events ahead are on.
    Behind,
}

/// A step's request as an item of a bulk request.
#[derive(Debug)]
pub struct BatchItem {
    pub form: Arc<BatchForm>,
    pub config: Arc<Config>,
    pub transport: Transport,
    /// The item (the part of the step's request body the form names).
    pub item: Value,
    /// The step's single request (sent instead when the bulk form is not allowed).
    pub single: Request,
    /// The identity of the record it writes, when the form coalesces.
    pub coalesce: Option<String>,
}

/// A key a lookup's bulk form looks up with others.
#[derive(Debug)]
pub struct LookupItem {
    pub form: Arc<LookupBatch>,
    pub resolver: String,
    pub by: String,
    pub key: String,
    /// How the answer is cached.
    pub ttl: Duration,
    pub capacity: usize,
    pub cache: Arc<LookupCache>,
    pub config: Arc<Config>,
    pub transport: Transport,
}

/// What became of a batched item, for the step that waits for it.
#[derive(Debug, Clone)]
pub enum BatchAnswer {
    /// As if the step's single request had been answered so: the item's result, how the bulk
    /// request itself ended (a 429, a 5xx, a failed job: tried again like any request), or
    /// the answer to the item's single request (the bulk form is not allowed).
    Answered(Box<Disposition>),
    /// Send the step's single request (the bulk form is not allowed, or the item's error is
    /// one its single request answers better).
    Single,
}

/// A resolver cache entry a response taught: `resolver` by `by` = `key`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LearnedKey {
    pub resolver: String,
    pub by: String,
    pub key: String,
}

impl LearnedKey {
    /// The keys of a lookup need, as the cache stores them.
    pub fn of_need(need: &LookupNeed) -> Vec<LearnedKey> {
        need.keys
            .iter()
            .map(|(by, key)| LearnedKey {
                resolver: need.resolver.clone(),
                by: by.clone(),
                key: key.clone(),
            })
            .collect()
    }
}

/// Runs plans against one destination. Share it between deliveries (`Arc`).
#[derive(Debug)]
pub struct Executor {
    config: Arc<Config>,
    transport: Transport,
    cache: Arc<LookupCache>,
    /// The time of the last change applied per entity.
    clock: Arc<dyn EntityClock>,
    /// Apply changes older than their entity's last applied one too (`--force`).
    force: bool,
}

/// How many render → resolve rounds one step may take.
const LOOKUP_ROUNDS: usize = 8;

impl Executor {
    pub fn new(config: Arc<Config>, transport: Transport, cache: Arc<LookupCache>) -> Executor {
        Executor {
            config,
            transport,
            cache,
            clock: Arc::new(MemoryClock::default()),
            force: false,
        }
    }

    /// The same executor keeping the time of the last change per entity in `clock` (a durable
    /// one in `serve`).
    pub fn with_clock(&self, clock: Arc<dyn EntityClock>) -> Executor {
        Executor {
            config: self.config.clone(),
            transport: self.transport.clone(),
            cache: self.cache.clone(),
            clock,
            force: self.force,
        }
    }

    /// The same executor; with `force`, a change older than its entity's last applied one is
    /// applied anyway (`--force`).
    pub fn with_force(&self, force: bool) -> Executor {
        Executor {
            force,
            ..self.with_clock(self.clock.clone())
        }
    }

    /// The same destination (client, budget, stats) running another config, with an empty
    /// cache (the new config's resolvers may differ). Used when the mappings are reloaded.
    pub fn with_config(&self, config: Arc<Config>) -> Executor {
        Executor {
            config,
            transport: self.transport.clone(),
            cache: Arc::new(LookupCache::new()),
            clock: self.clock.clone(),
            force: self.force,
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub fn cache(&self) -> &Arc<LookupCache> {
        &self.cache
    }

    pub fn clock(&self) -> &Arc<dyn EntityClock> {
        &self.clock
    }

    /// Plans one event. With `only`, just those actions run (a dead letter being replayed:
    /// its steps that are not idempotent check first whether their write was applied, see
    /// [`Delivery::resumed`]). The delivery keeps this executor (and so its config) until it
    /// is settled.
    pub fn start(self: &Arc<Self>, event: &Event, only: Option<Vec<String>>) -> Delivery {
        let mut delivery = Delivery {
            executor: self.clone(),
            plan: self.config.plan(event),
            check_first: only.is_some(),
            force: self.force,
            only,
            next: 0,
            current: None,
            letters: Vec::new(),
            ran: 0,
            learned: Vec::new(),
            last_chance: false,
            batching: false,
            join_only: false,
        };
        // Actions whose fields did not resolve fail at once.
        let errors = std::mem::take(&mut delivery.plan.errors);
        let wanted: Vec<_> = errors
            .into_iter()
            .filter(|e| delivery.wants(&e.action))
            .collect();
        for e in wanted {
            delivery.letters.push(DeadLetter::without_response(
                event.value().clone(),
                e.action,
                e.step.unwrap_or_else(|| "fields".into()),
                e.message,
            ));
            delivery.ran += 1;
        }
        delivery
    }

    /// The cache's answer to a lookup, if it has one (found, or known missing for every key).
    fn cached(&self, need: &LookupNeed) -> Option<Answer> {
        let resolver = self.config.resolvers.get(&need.resolver)?;
        let mut all_missing = true;
        for (lookup, key) in resolver.order(&need.keys) {
            match self.cache.lookup(&resolver.name, &lookup.by, key) {
                Cached::Found(v) => return Some(Answer::Found(v)),
                Cached::Missing => {}
                Cached::Unknown if lookup.is_direct() => return Some(Answer::Found(id_value(key))),
                Cached::Unknown => all_missing = false,
            }
        }
        all_missing.then_some(Answer::NotFound)
    }

    /// Whether the cache answers a lookup (found, or known missing for every key).
    fn is_cached(&self, need: &LookupNeed) -> bool {
        self.cached(need).is_some()
    }

    /// The outcome of a response for a step: the step's rules, then the destination's, then 2xx = ok.
    fn outcome(&self, step: &Step, response: &Response) -> OutcomeKind {
        let (codes, _) = self.config.error_info(&response.body);
        step.outcomes
            .decide(response.status, &codes)
            .or_else(|| self.config.outcomes.decide(response.status, &codes))
            .unwrap_or(if response.is_success() {
                OutcomeKind::Ok
            } else {
                OutcomeKind::Fail
            })
    }
}

/// One event's way through its actions; see the module docs.
#[derive(Debug)]
pub struct Delivery {
    executor: Arc<Executor>,
    plan: Plan,
    only: Option<Vec<String>>,
    /// The next planned action to run (index into `plan.actions`).
    next: usize,
    /// Where the action under way stands.
    current: Option<ActionProgress>,
    letters: Vec<DeadLetter>,
    /// Actions run or failed so far (0 at the end: nothing matched).
    ran: usize,
    learned: Vec<LearnedKey>,
    last_chance: bool,
    /// Steps that are not idempotent check whether their write was applied before their first
    /// attempt (the event may have been under way before: a replay, a restart).
    check_first: bool,
    /// Apply changes older than their entity's last applied one too.
    force: bool,
    /// Steps with a bulk form hand their request over as an item ([`Wait::Batch`]).
    batching: bool,
    /// This turn may send nothing but bulk items ([`Wait::Behind`] otherwise).
    join_only: bool,
}

/// Where one action stands.
#[derive(Debug, Default)]
struct ActionProgress {
    step: usize,
    /// Requests of the current step already sent (an `each` step renders several).
    sent: usize,
    answers: HashMap<LookupNeed, Answer>,
    outputs: IndexMap<String, IndexMap<String, Value>>,
    /// Attempts at the current request.
    attempts: u32,
    /// Of those, answers that an outcome maps to `retry` (bounded by `retries.client_error_tries`).
    client_retries: u32,
    /// The current request may have been applied already: check before sending it again.
    uncertain: Option<Uncertain>,
    /// The current request was checked or sent by this delivery: a resumed event's doubt (it
    /// may have been sent before a restart) is over; its own lost answers say what is unsure.
    /// Kept apart from `attempts`, which failed lookups count too.
    tried_here: bool,
    /// Since when the write may ride in a bulk job (its bulk answer was lost, or the event may
    /// have been under way before), and the jobs that must end before the check decides (see
    /// [`crate::deliver::jobs`]).
    job_doubt_since: Option<Instant>,
    awaited: Awaited,
    /// What became of the current request as a bulk item, once known.
    batch_answer: Option<BatchAnswer>,
}

impl ActionProgress {
    /// The current request is done (applied, or found applied): on to the next one.
    fn next_request(&mut self) {
        self.sent += 1;
        self.attempts = 0;
        self.client_retries = 0;
        self.tried_here = false;
    }

    /// The current request may have been applied: it is checked before it is sent again, once
    /// the bulk jobs that may carry it have ended (`in_job`: it went as a bulk item, or nothing
    /// says how it went).
    fn doubt(&mut self, why: Uncertain, in_job: bool) {
        self.uncertain = Some(why);
        self.job_doubt_since = in_job.then(Instant::now);
        self.awaited = Awaited::default();
    }

    /// The outputs of the action's steps so far, for templates (`steps.NAME.OUTPUT`).
    fn step_outputs(&self) -> Arc<StepOutputs> {
        Arc::new(StepOutputs {
            outputs: self.outputs.clone(),
            symbolic: false,
        })
    }
}

/// Why a write may have been applied although no answer said so.
#[derive(Debug)]
enum Uncertain {
    /// The event may have been under way before (a replay, a restart): no sign either way.
    Resumed,
    /// An attempt failed ambiguously (5xx, timeout, dropped connection); `letter` says how.
    Ambiguous(Box<DeadLetter>),
}

/// Why an action stopped before its end.
enum Stop {
    Failed(Box<DeadLetter>),
    Wait(Wait),
}

enum StepResult {
    Ok(Box<Response>),
    Skip,
}

impl Delivery {
    /// The event being delivered.
    pub fn event(&self) -> &Arc<Value> {
        &self.plan.event
    }

    /// How long to wait between attempts: the transport's policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        self.executor.transport.policy()
    }

    /// Runs the event's actions, from where it stopped, until it is settled or must wait.
    pub async fn advance(&mut self) -> Turn {
        // A lookup that found nothing is asked again when the event comes back.
        if let Some(progress) = &mut self.current {
            progress
                .answers
                .retain(|_, a| matches!(a, Answer::Found(_)));
        }
        while self.next < self.plan.actions.len() {
            let planned = self.plan.actions[self.next].clone();
            let action = self.executor.config.action(&planned);
            if self.wants(&action.name) {
                // Asked again each time the action resumes: while it waited for a retry, an event
                // of another key may have applied a newer change of the same record.
                let changes = self.changes(&planned);
                if !self.force && self.stale(&action.name, &changes) {
                    self.ran += 1;
                    self.current = None;
                    self.next += 1;
                    continue;
                }
                match self.run_action(&planned).await {
                    Ok(()) => {
                        let clock = &self.executor.clock;
                        changes
                            .iter()
                            .for_each(|c| clock.applied(&c.entity, c.at_ms));
                    }
                    Err(Stop::Failed(mut letter)) => {
                        letter.changes = changes;
                        self.letters.push(*letter);
                    }
                    Err(Stop::Wait(wait)) => return Turn::Wait(wait),
                }
                self.ran += 1;
            }
            self.current = None;
            self.next += 1;
        }
        Turn::Finished(match (self.ran, self.letters.is_empty()) {
            (0, _) => EventOutcome::Skipped,
            (_, true) => EventOutcome::Delivered,
            (_, false) => EventOutcome::Failed {
                letters: std::mem::take(&mut self.letters),
            },
        })
    }

    /// The action under way fails with `letter` (its retries ran out); the next `advance`
    /// goes on with the event's other actions.
    pub fn give_up(&mut self, mut letter: DeadLetter) {
        if let Some(planned) = self.plan.actions.get(self.next).cloned() {
            letter.changes = self.changes(&planned);
            self.letters.push(letter);
            self.ran += 1;
            self.current = None;
            self.next += 1;
        }
    }

    /// The event may have been under way before (the queue handed it out to a process that
    /// stopped before settling it): steps that are not idempotent check whether their write was
    /// applied before sending it.
    pub fn resumed(&mut self) {
        self.check_first = true;
    }

    /// Apply this event's changes even where their entity had a newer change applied.
    pub fn force(&mut self) {
        self.force = true;
    }

    /// The entities a planned action changes, stamped with the event's time (none when the
    /// event has no time).
    fn changes(&self, planned: &PlannedAction) -> Vec<EntityChange> {
        let entities = self.executor.config.entities(&self.plan, planned);
        let Some(at_ms) = event_time(&self.plan.event).filter(|_| !entities.is_empty()) else {
            return Vec::new();
        };
        entities
            .into_iter()
            .map(|entity| EntityChange { entity, at_ms })
            .collect()
    }

    /// Whether one of `changes` is older than its entity's last applied change: then the
    /// action is skipped, logged and counted.
    fn stale(&self, action: &str, changes: &[EntityChange]) -> bool {
        let clock = &*self.executor.clock;
        let Some(stale) = changes.iter().find(|c| c.is_stale(clock)) else {
            return false;
        };
        let last = clock.last_applied(&stale.entity).unwrap_or_default();
        let time = |ms: i64| crate::time::rfc3339_from_unix_secs(ms.div_euclid(1000));
        // The entity's key may be event data (an email): the kind and the messageId say which
        // change it was; the key itself is logged at debug level only.
        let kind = stale.entity.split(':').next().unwrap_or_default();
        tracing::warn!(
            action,
            entity_kind = kind,
            message_id = self.plan.event.get("messageId").and_then(serde_json::Value::as_str),
            event_time = %time(stale.at_ms),
            last_applied = %time(last),
            "stale change skipped: a newer change of the record was applied (--force applies it)"
        );
        tracing::debug!(action, entity = %stale.entity, "stale change skipped");
        self.executor.transport.stats().stale();
        true
    }

    /// From now on a record that is missing fails the action instead of waiting for it.
    pub fn last_chance(&mut self) {
        self.last_chance = true;
    }

    /// Steps with a bulk form hand their request over as an item ([`Wait::Batch`]) instead of
    /// sending it (off by default).
    pub fn batching(&mut self, on: bool) {
        self.batching = on;
    }

    /// For the next turn: events ahead of this one wait for their bulk requests, so it may
    /// only hand over bulk items (to join theirs: its changes go after theirs, and several
    /// upserts of one record in one window become one item). Anything else stops the turn
    /// before it is sent ([`Wait::Behind`]).
    pub fn join_only(&mut self, on: bool) {
        self.join_only = on;
    }

    /// The answer to the item the delivery waits for ([`Wait::Batch`]).
    pub fn answer(&mut self, answer: BatchAnswer) {
        if let Some(progress) = &mut self.current {
            progress.batch_answer = Some(answer);
        }
    }

    /// Whether `action` runs: every action, or those `only` names.
    fn wants(&self, action: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|a| a == action))
    }

    /// The resolver keys that responses taught since the last call.
    pub fn take_learned(&mut self) -> Vec<LearnedKey> {
        std::mem::take(&mut self.learned)
    }

    async fn run_action(&mut self, planned: &PlannedAction) -> Result<(), Stop> {
        let executor = self.executor.clone();
        let action = executor.config.action(planned);
        let progress = self.current.get_or_insert_with(ActionProgress::default);
        while let Some(step) = action.steps.get(progress.step) {
            let requests = match render(
                &executor,
                &self.plan,
                planned,
                step,
                progress,
                &mut self.learned,
                Mode {
                    last_chance: self.last_chance,
                    join_only: self.join_only,
                    batching: self.batching,
                },
            )
            .await?
            {
                Rendered::Requests(requests) => requests,
                Rendered::Skipped => Vec::new(),
            };
            for request in requests.iter().skip(progress.sent) {
                if !step.idempotent {
                    if self.check_first && !progress.tried_here && progress.uncertain.is_none() {
                        progress.doubt(Uncertain::Resumed, true);
                    }
                    progress.tried_here = true;
                    if let Some(uncertain) = progress.uncertain.take()
                        && verify(&executor, &self.plan, planned, step, progress, uncertain).await?
                    {
                        executor.transport.stats().confirmed();
                        progress.next_request();
                        continue;
                    }
                }
                if self.batching
                    && progress.batch_answer.is_none()
                    && let Some(item) =
                        batch_item(&executor, &self.plan, planned, step, request, progress)
                {
                    return Err(Stop::Wait(Wait::Batch(Box::new(item))));
                }
                if self.join_only && progress.batch_answer.is_none() {
                    return Err(Stop::Wait(Wait::Behind));
                }
                match send_step(&executor, &self.plan, &action.name, step, request, progress)
                    .await?
                {
                    StepResult::Ok(response) => {
                        progress
                            .outputs
                            .insert(step.name.clone(), step.read_outputs(&response.body));
                        learn(
                            &executor,
                            &self.plan,
                            planned,
                            step,
                            progress,
                            &response.body,
                            &mut self.learned,
                        );
                        progress.next_request();
                    }
                    StepResult::Skip => return Ok(()),
                }
            }
            if !requests.is_empty() {
                step.forget.iter().for_each(|r| executor.cache.forget(r));
            }
            progress.step += 1;
            progress.sent = 0;
        }
        Ok(())
    }
}

fn letter_without_response(plan: &Plan, action: &str, step: &str, message: String) -> Stop {
    Stop::Failed(Box::new(DeadLetter::without_response(
        (*plan.event).clone(),
        action,
        step,
        message,
    )))
}

/// How a turn treats a record that is not there.
#[derive(Clone, Copy)]
struct Mode {
    /// A record missing fails the action (its wait is over).
    last_chance: bool,
    /// The turn may only join bulk requests: no lookup request, no waiting for a record.
    join_only: bool,
    /// Lookups with a bulk form go out with others ([`Wait::Lookup`]).
    batching: bool,
}

/// Renders a step, answering its lookups until it renders whole.
async fn render(
    executor: &Executor,
    plan: &Plan,
    planned: &PlannedAction,
    step: &Step,
    progress: &mut ActionProgress,
    learned: &mut Vec<LearnedKey>,
    mode: Mode,
) -> Result<Rendered, Stop> {
    let Mode {
        last_chance,
        join_only,
        batching,
    } = mode;
    let config = &executor.config;
    let action = &config.action(planned).name;
    for _ in 0..=LOOKUP_ROUNDS {
        let lookups = Arc::new(Lookups::new(progress.answers.clone()));
        let outputs = progress.step_outputs();
        let result = config.render_step(plan, planned, step, outputs, lookups.clone());
        let missing = lookups.missing();
        if missing.is_empty() {
            return result.map_err(|e| match lookups.first_unfound() {
                // The events ahead may be creating it.
                Some(_) if join_only => Stop::Wait(Wait::Behind),
                Some(need) if !last_chance => Stop::Wait(Wait::Missing { need }),
                _ => letter_without_response(plan, action, &step.name, e.to_string()),
            });
        }
        for need in missing {
            if join_only && !executor.is_cached(&need) {
                // A lookup request is more than a turn that may only join bulk requests sends.
                return Err(Stop::Wait(Wait::Behind));
            }
            let answer = resolve(
                executor,
                plan,
                (action, &step.name),
                &need,
                progress,
                learned,
                batching,
            )
            .await?;
            progress.answers.insert(need, answer);
        }
    }
    Err(letter_without_response(
        plan,
        action,
        &step.name,
        "lookups did not settle".into(),
    ))
}

/// Sends one request of a step (one attempt) and judges the answer.
async fn send_step(
    executor: &Executor,
    plan: &Plan,
    action: &str,
    step: &Step,
    request: &Request,
    progress: &mut ActionProgress,
) -> Result<StepResult, Stop> {
    let (disposition, in_bulk) = match progress.batch_answer.take() {
        Some(BatchAnswer::Answered(d)) => (*d, true),
        Some(BatchAnswer::Single) | None => (
            executor
                .transport
                .attempt(request, |r| executor.outcome(step, r) != OutcomeKind::Retry)
                .await,
            false,
        ),
    };
    progress.attempts += 1;
    let letter = |d: &Disposition| {
        Box::new(DeadLetter::from_disposition(
            (*plan.event).clone(),
            action,
            &step.name,
            d,
            progress.attempts,
        ))
    };
    match &disposition {
        Disposition::Done { response } => match executor.outcome(step, response) {
            OutcomeKind::Ok => Ok(StepResult::Ok(Box::new(response.clone()))),
            OutcomeKind::Skip => Ok(StepResult::Skip),
            OutcomeKind::Fail => Err(Stop::Failed(letter(&disposition))),
            OutcomeKind::Fatal => {
                let (_, message) = executor.config.error_info(&response.body);
                Err(Stop::Wait(Wait::Fatal {
                    status: response.status,
                    message: message.unwrap_or_else(|| format!("HTTP {}", response.status)),
                }))
            }
            OutcomeKind::Retry
                if progress.client_retries + 1 < executor.config.retries.client_error_tries =>
            {
                progress.client_retries += 1;
                executor.transport.stats().retry();
                Err(Stop::Wait(Wait::Retry {
                    wait: response.headers.retry_after,
                    scope: PauseScope::Key,
                    transient: false,
                    letter: letter(&disposition),
                }))
            }
            OutcomeKind::Retry => Err(Stop::Failed(letter(&disposition))),
        },
        Disposition::Retry { wait, scope, last } => {
            executor.transport.stats().retry();
            // A bulk request whose job failed, or gave the item no result, answered 200: the
            // job may have applied some of its items.
            let job_unclear = in_bulk && last.as_ref().is_ok_and(Response::is_success);
            let mut retry_letter = letter(&disposition);
            if !step.idempotent && (ambiguous(last) || job_unclear) {
                progress.doubt(Uncertain::Ambiguous(retry_letter.clone()), in_bulk);
                // Given up before it is checked: it is not sent again.
                retry_letter.message = format!(
                    "{}; {NOT_SENT_AGAIN} unchecked (replay the dead letter to check it and \
                     send it if it was not)",
                    retry_letter.message
                );
            }
            Err(Stop::Wait(Wait::Retry {
                wait: *wait,
                scope: *scope,
                transient: true,
                letter: retry_letter,
            }))
        }
        Disposition::Fatal { status, message } => Err(Stop::Wait(Wait::Fatal {
            status: *status,
            message: message.clone(),
        })),
        Disposition::Invalid { .. } => Err(Stop::Failed(letter(&disposition))),
    }
}

/// What the dead letter of a write that may have been applied says (a replay checks it first).
const NOT_SENT_AGAIN: &str = "the write may have been applied, and is not sent again";

/// Whether a failed attempt may have been applied: a server error, a timeout or a connection
/// lost after sending (not a 429 or 408, which say it was not, nor a connection never made).
fn ambiguous(last: &Result<Response, crate::deliver::TransportError>) -> bool {
    match last {
        Ok(response) => response.status >= 500,
        Err(crate::deliver::TransportError::Connect { .. }) => false,
        Err(_) => true,
    }
}

/// Asks the step's `check` whether the write of the current request was applied: `true` when
/// it was (the step goes on without sending it again), `false` when it was not (send it).
/// Without a check (or a marker), an ambiguous failure dead-letters the step rather than risk
/// applying the write twice; a resumed event is sent, as nothing says it was applied.
async fn verify(
    executor: &Executor,
    plan: &Plan,
    planned: &PlannedAction,
    step: &Step,
    progress: &mut ActionProgress,
    uncertain: Uncertain,
) -> Result<bool, Stop> {
    let config = &executor.config;
    let action = &config.action(planned).name;
    let lookups = Arc::new(Lookups::new(progress.answers.clone()));
    let outputs = progress.step_outputs();
    let rendered =
        config.render_check(plan, planned, step, progress.sent, outputs, lookups.clone());
    let (request, marker) = match rendered {
        Ok(Some(r)) if lookups.missing().is_empty() => r,
        other => {
            return match uncertain {
                Uncertain::Resumed => Ok(false),
                Uncertain::Ambiguous(mut letter) => {
                    let why = match other {
                        Err(e) => format!("its check could not be rendered: {e}"),
                        Ok(Some(_)) => "its check needs a lookup the write did not".into(),
                        Ok(None) if step.check.is_some() => {
                            "its check's marker has no value (an event without a messageId)".into()
                        }
                        Ok(None) => "the step is not idempotent and declares no check".into(),
                    };
                    letter.message = format!(
                        "{}; {NOT_SENT_AGAIN}: {why} (replay the dead letter to send it)",
                        letter.message
                    );
                    Err(Stop::Failed(letter))
                }
            };
        }
    };
    let Some(check) = &step.check else {
        return Ok(false);
    };
    // A write that may ride in a bulk job is read back only once the jobs pending since the
    // doubt arose have ended: until then the check could find it missing and send it again.
    let mut disposition =
        match jobs_settled(executor, plan, action, step, progress, &uncertain).await {
            Ok(true) => executor.transport.attempt(&request, |_| false).await,
            Ok(false) => {
                let letter = waiting_letter(plan, action, step, progress, &uncertain);
                progress.uncertain = Some(uncertain);
                return Err(Stop::Wait(Wait::Retry {
                    wait: None,
                    scope: PauseScope::Key,
                    transient: true,
                    letter: Box::new(letter),
                }));
            }
            Err(Unlisted::Render(e)) => {
                let mut letter = DeadLetter::without_response(
                    (*plan.event).clone(),
                    action,
                    &step.name,
                    format!("{NOT_SENT_AGAIN}: the jobs it may ride in cannot be listed ({e})"),
                );
                letter.attempts = progress.attempts;
                return Err(Stop::Failed(Box::new(letter)));
            }
            Err(Unlisted::Failed(d)) => *d,
        };
    // Each page is one request, judged as the first: the check reads on until the marker is
    // found or the answer ends; an end it cannot reach leaves the write in doubt.
    let mut read = 0;
    loop {
        progress.attempts += 1;
        let response = match disposition {
            Disposition::Done { response } if response.is_success() => response,
            other => {
                return Err(check_failed(
                    executor, plan, action, step, progress, uncertain, other,
                ));
            }
        };
        read += 1;
        let applied = check.applied(&response.body, &marker);
        let after = check
            .pages
            .as_ref()
            .map_or(NextPage::End, |p| p.after(&response.body));
        if applied || after == NextPage::End {
            tracing::debug!(action, step = %step.name, applied, pages = read, "checked whether a write was applied");
            return Ok(applied);
        }
        let most = check.pages.as_ref().map_or(1, |p| p.most);
        let next = match after {
            NextPage::Link(_) if read >= most => Err(format!(
                "its check read {read} page(s) of the answer (its most) without reaching the end"
            )),
            NextPage::Link(link) => executor
                .transport
                .client()
                .target()
                .path_of_link(&link)
                .map_err(|e| format!("its check's next page is not followed ({e})")),
            _ => Err(format!(
                "page {read} of its check's answer says there is more but gives no link to it"
            )),
        };
        let path = match next {
            Ok(path) => path,
            Err(why) => {
                let letter = doubt_letter(
                    plan,
                    action,
                    step,
                    progress,
                    &uncertain,
                    format!("{why}; {NOT_SENT_AGAIN} (replay the dead letter to check it again)"),
                );
                return Err(Stop::Failed(Box::new(letter)));
            }
        };
        // Counted under the check's endpoint: a page's path and cursor are not a counter name.
        let page = Request {
            path,
            query: IndexMap::new(),
            ..request.clone()
        };
        disposition = executor.transport.attempt(&page, |_| false).await;
    }
}

/// The check's request (a page of it, or the jobs listing before it) got no usable answer: the
/// write is still in doubt. A retryable failure checks again later; a fatal one waits for the
/// credentials; anything else dead-letters the step, not sent again.
fn check_failed(
    executor: &Executor,
    plan: &Plan,
    action: &str,
    step: &Step,
    progress: &mut ActionProgress,
    uncertain: Uncertain,
    disposition: Disposition,
) -> Stop {
    match disposition {
        Disposition::Fatal { status, message } => {
            // Still unknown: checked again once the credentials are fixed.
            progress.uncertain = Some(uncertain);
            Stop::Wait(Wait::Fatal { status, message })
        }
        d => {
            let mut letter = DeadLetter::from_disposition(
                (*plan.event).clone(),
                action,
                &step.name,
                &d,
                progress.attempts,
            );
            letter.message = format!(
                "checking whether the write was applied: {}; the write may have been applied",
                letter.message
            );
            match d {
                Disposition::Retry { wait, scope, .. } => {
                    executor.transport.stats().retry();
                    progress.uncertain = Some(uncertain);
                    Stop::Wait(Wait::Retry {
                        wait,
                        scope,
                        transient: true,
                        letter: Box::new(letter),
                    })
                }
                _ => Stop::Failed(Box::new(letter)),
            }
        }
    }
}

/// Whether the bulk jobs that may carry the current write have ended (always, for a step
/// without a bulk form or a write sent as a single request); see [`crate::deliver::jobs`].
async fn jobs_settled(
    executor: &Executor,
    plan: &Plan,
    action: &str,
    step: &Step,
    progress: &mut ActionProgress,
    uncertain: &Uncertain,
) -> Result<bool, Unlisted> {
    let Some(since) = progress.job_doubt_since.filter(|_| step.batch.is_some()) else {
        // A single request's lost answer: no job carries it.
        return Ok(true);
    };
    let settled = executor
        .transport
        .jobs()
        .settled(
            &executor.config,
            &executor.transport,
            since,
            &mut progress.awaited,
        )
        .await?;
    if !settled {
        let why = match uncertain {
            Uncertain::Resumed => "it may have been under way before",
            Uncertain::Ambiguous(_) => "its answer was lost",
        };
        tracing::debug!(
            action,
            step = %step.name,
            message_id = plan.event.get("messageId").and_then(serde_json::Value::as_str),
            jobs = progress.awaited.len(),
            "a write that may ride in a bulk job waits for the pending jobs to end before it is checked ({why})"
        );
    }
    Ok(settled)
}

/// The dead letter of a write still waiting for the jobs that may carry it, should its time
/// run out: it may have been applied, and is not sent again.
fn waiting_letter(
    plan: &Plan,
    action: &str,
    step: &Step,
    progress: &ActionProgress,
    uncertain: &Uncertain,
) -> DeadLetter {
    let waiting = format!(
        "{} bulk job(s) that may carry the write had not ended; {NOT_SENT_AGAIN} (replay the \
         dead letter to check it again)",
        progress.awaited.len()
    );
    doubt_letter(plan, action, step, progress, uncertain, waiting)
}

/// The dead letter of a write in doubt (its answer lost, or its event under way before) that
/// cannot be settled, saying `why`.
fn doubt_letter(
    plan: &Plan,
    action: &str,
    step: &Step,
    progress: &ActionProgress,
    uncertain: &Uncertain,
    why: String,
) -> DeadLetter {
    match uncertain {
        Uncertain::Ambiguous(letter) => {
            let mut letter = (**letter).clone();
            letter.message = format!("{}; {why}", letter.message);
            letter
        }
        Uncertain::Resumed => {
            let mut letter = DeadLetter::without_response(
                (*plan.event).clone(),
                action,
                &step.name,
                format!("the event may have been under way before: {why}"),
            );
            letter.attempts = progress.attempts;
            letter
        }
    }
}

/// The step's request as a bulk item, when the step has a bulk form that is allowed, its `when`
/// holds and the request's body has the item; else the request goes single.
fn batch_item(
    executor: &Executor,
    plan: &Plan,
    planned: &PlannedAction,
    step: &Step,
    request: &Request,
    progress: &ActionProgress,
) -> Option<BatchItem> {
    let form = step.batch.as_ref()?;
    let config = &executor.config;
    // The step's own answers, and what the cache knows of the lookups only the form needs.
    let mut answers = progress.answers.clone();
    let scope = |answers: &HashMap<LookupNeed, Answer>| {
        let lookups = Arc::new(Lookups::new(answers.clone()));
        let scope = config
            .step_scope(plan, planned, progress.step_outputs(), lookups.clone())
            .build();
        (scope, lookups)
    };
    if let Some(when) = &form.when {
        let (s, lookups) = scope(&answers);
        let _ = config.templates.truthy(when, &s);
        for need in lookups.missing() {
            let answer = executor.cached(&need).unwrap_or(Answer::NotFound);
            answers.insert(need, answer);
        }
        if !config
            .templates
            .truthy(when, &scope(&answers).0)
            .unwrap_or(false)
        {
            return None;
        }
    }
    let (scope, _) = scope(&answers);
    let coalesce = match &form.coalesce {
        Some(t) => match config.templates.eval(t, &scope).ok()? {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(Value::Null) | None => None,
            Some(Value::String(_)) => None,
            Some(other) => Some(other.to_string()),
        },
        None => None,
    };
    Some(BatchItem {
        form: form.clone(),
        config: config.clone(),
        transport: executor.transport.clone(),
        item: form.item_of(request, &config.templates, &scope)?,
        single: request.clone(),
        coalesce,
    })
}

/// Answers a lookup: from the cache, else by the resolver's lookups in order. A key the cache
/// remembers as missing is not asked again.
async fn resolve(
    executor: &Executor,
    plan: &Plan,
    (action, step): (&str, &str),
    need: &LookupNeed,
    progress: &mut ActionProgress,
    learned: &mut Vec<LearnedKey>,
    batching: bool,
) -> Result<Answer, Stop> {
    let what = format!("lookup {need}");
    let config = &executor.config;
    let Some(resolver) = config.resolvers.get(&need.resolver) else {
        return Err(letter_without_response(
            plan,
            action,
            step,
            format!("{what}: no such resolver"),
        ));
    };
    let ttl = Duration::from_secs(resolver.cache.ttl_seconds);
    let cache = &executor.cache;
    for (lookup, key) in resolver.order(&need.keys) {
        match cache.lookup(&resolver.name, &lookup.by, key) {
            Cached::Found(v) => return Ok(Answer::Found(v)),
            Cached::Missing => continue,
            Cached::Unknown => {}
        }
        let request = lookup
            .render(&config.templates, &config.settings, key)
            .map_err(|e| letter_without_response(plan, action, step, format!("{what}: {e}")))?;
        if batching
            && request.is_some()
            && let Some(form) = lookup.batch.as_ref().filter(|f| f.takes(key))
        {
            match progress.batch_answer {
                // Looked up with others: still unknown, so it is asked on its own.
                Some(BatchAnswer::Single) => progress.batch_answer = None,
                None => {
                    return Err(Stop::Wait(Wait::Lookup(Box::new(LookupItem {
                        form: form.clone(),
                        resolver: resolver.name.clone(),
                        by: lookup.by.clone(),
                        key: key.to_owned(),
                        ttl,
                        capacity: resolver.cache.capacity,
                        cache: cache.clone(),
                        config: config.clone(),
                        transport: executor.transport.clone(),
                    }))));
                }
                Some(BatchAnswer::Answered(_)) => {}
            }
        }
        let found = match request {
            None => Some(id_value(key)),
            Some(request) => {
                let d = executor.transport.attempt(&request, |_| false).await;
                progress.attempts += 1;
                match d {
                    Disposition::Done { response } if response.is_success() => {
                        lookup.extract(&response.body)
                    }
                    Disposition::Fatal { status, message } => {
                        return Err(Stop::Wait(Wait::Fatal { status, message }));
                    }
                    d => {
                        let mut letter = DeadLetter::from_disposition(
                            (*plan.event).clone(),
                            action,
                            step,
                            &d,
                            progress.attempts,
                        );
                        letter.message = format!("{what}: {}", letter.message);
                        return Err(match d {
                            Disposition::Retry { wait, scope, .. } => {
                                executor.transport.stats().retry();
                                Stop::Wait(Wait::Retry {
                                    wait,
                                    scope,
                                    transient: true,
                                    letter: Box::new(letter),
                                })
                            }
                            _ => Stop::Failed(Box::new(letter)),
                        });
                    }
                }
            }
        };
        match found {
            Some(value) => {
                cache.put(
                    &resolver.name,
                    ttl,
                    resolver.cache.capacity,
                    &lookup.by,
                    key,
                    value.clone(),
                );
                learned.push(LearnedKey {
                    resolver: resolver.name.clone(),
                    by: lookup.by.clone(),
                    key: key.to_owned(),
                });
                progress.attempts = 0;
                return Ok(Answer::Found(value));
            }
            None => cache.mark_missing(&resolver.name, &lookup.by, key),
        }
    }
    progress.attempts = 0;
    Ok(Answer::NotFound)
}

/// Fills the cache from a response, as the step's `learn` entries say.
fn learn(
    executor: &Executor,
    plan: &Plan,
    planned: &PlannedAction,
    step: &Step,
    progress: &ActionProgress,
    body: &Value,
    learned: &mut Vec<LearnedKey>,
) {
    if step.learn.is_empty() {
        return;
    }
    let (config, cache) = (&executor.config, &executor.cache);
    let scope = config
        .step_scope(
            plan,
            planned,
            progress.step_outputs(),
            Arc::new(Lookups::new(progress.answers.clone())),
        )
        .build();
    for l in &step.learn {
        let Some(resolver) = config.resolvers.get(&l.resolver) else {
            continue;
        };
        let Ok(Some(key)) = config.templates.eval(&l.key, &scope) else {
            continue;
        };
        let key = match key {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if let Some(value) = l.value.first(body).filter(|v| !v.is_null()) {
            let ttl = Duration::from_secs(resolver.cache.ttl_seconds);
            cache.put(
                &resolver.name,
                ttl,
                resolver.cache.capacity,
                &l.by,
                &key,
                value.clone(),
            );
            learned.push(LearnedKey {
                resolver: resolver.name.clone(),
                by: l.by.clone(),
                key,
            });
        }
    }
}

/// A key that is the value itself (`by: id`): a number when it reads as one.
fn id_value(key: &str) -> Value {
    key.parse::<u64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::String(key.to_owned()))
}
