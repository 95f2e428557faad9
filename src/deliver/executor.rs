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

use crate::config::Config;
use crate::deliver::cache::{Cached, LookupCache};
use crate::deliver::order::{EntityChange, EntityClock, MemoryClock, event_time};
use crate::deliver::retry::PauseScope;
use crate::deliver::{DeadLetter, Disposition, Response, RetryPolicy, Transport};
use crate::event::Event;
use crate::plan::{Plan, PlannedAction, Rendered, Step};
use crate::request::Request;
use crate::spec::OutcomeKind;
use crate::template::{Answer, LookupNeed, Lookups, StepOutputs};
use indexmap::IndexMap;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
                self.last_chance,
            )
            .await?
            {
                Rendered::Requests(requests) => requests,
                Rendered::Skipped => Vec::new(),
            };
            for request in requests.iter().skip(progress.sent) {
                if !step.idempotent {
                    if self.check_first && progress.attempts == 0 && progress.uncertain.is_none() {
                        progress.uncertain = Some(Uncertain::Resumed);
                    }
                    if let Some(uncertain) = progress.uncertain.take()
                        && verify(&executor, &self.plan, planned, step, progress, uncertain).await?
                    {
                        executor.transport.stats().confirmed();
                        progress.sent += 1;
                        progress.attempts = 0;
                        progress.client_retries = 0;
                        continue;
                    }
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
                        progress.sent += 1;
                        progress.attempts = 0;
                        progress.client_retries = 0;
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

/// Renders a step, answering its lookups until it renders whole.
async fn render(
    executor: &Executor,
    plan: &Plan,
    planned: &PlannedAction,
    step: &Step,
    progress: &mut ActionProgress,
    learned: &mut Vec<LearnedKey>,
    last_chance: bool,
) -> Result<Rendered, Stop> {
    let config = &executor.config;
    let action = &config.action(planned).name;
    for _ in 0..=LOOKUP_ROUNDS {
        let lookups = Arc::new(Lookups::new(progress.answers.clone()));
        let outputs = Arc::new(StepOutputs {
            outputs: progress.outputs.clone(),
            symbolic: false,
        });
        let result = config.render_step(plan, planned, step, outputs, lookups.clone());
        let missing = lookups.missing();
        if missing.is_empty() {
            return result.map_err(|e| match lookups.first_unfound() {
                Some(need) if !last_chance => Stop::Wait(Wait::Missing { need }),
                _ => letter_without_response(plan, action, &step.name, e.to_string()),
            });
        }
        for need in missing {
            let answer =
                resolve(executor, plan, action, &step.name, &need, progress, learned).await?;
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
    let disposition = executor
        .transport
        .attempt(request, |r| executor.outcome(step, r) != OutcomeKind::Retry)
        .await;
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
            if !step.idempotent && ambiguous(last) {
                progress.uncertain = Some(Uncertain::Ambiguous(letter(&disposition)));
            }
            Err(Stop::Wait(Wait::Retry {
                wait: *wait,
                scope: *scope,
                transient: true,
                letter: letter(&disposition),
            }))
        }
        Disposition::Fatal { status, message } => Err(Stop::Wait(Wait::Fatal {
            status: *status,
            message: message.clone(),
        })),
        Disposition::Invalid { .. } => Err(Stop::Failed(letter(&disposition))),
    }
}

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
    let outputs = Arc::new(StepOutputs {
        outputs: progress.outputs.clone(),
        symbolic: false,
    });
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
                        "{}; the write may have been applied, and is not sent again: {why} \
                         (replay the dead letter to send it)",
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
    let disposition = executor.transport.attempt(&request, |_| false).await;
    progress.attempts += 1;
    match disposition {
        Disposition::Done { response } if response.is_success() => {
            let applied = check.applied(&response.body, &marker);
            tracing::debug!(action, step = %step.name, applied, "checked whether a write was applied");
            Ok(applied)
        }
        Disposition::Fatal { status, message } => {
            // Still unknown: checked again once the credentials are fixed.
            progress.uncertain = Some(uncertain);
            Err(Stop::Wait(Wait::Fatal { status, message }))
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
                    Err(Stop::Wait(Wait::Retry {
                        wait,
                        scope,
                        transient: true,
                        letter: Box::new(letter),
                    }))
                }
                _ => Err(Stop::Failed(Box::new(letter))),
            }
        }
    }
}

/// Answers a lookup: from the cache, else by the resolver's lookups in order. A key the cache
/// remembers as missing is not asked again.
async fn resolve(
    executor: &Executor,
    plan: &Plan,
    action: &str,
    step: &str,
    need: &LookupNeed,
    progress: &mut ActionProgress,
    learned: &mut Vec<LearnedKey>,
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
            Arc::new(StepOutputs {
                outputs: progress.outputs.clone(),
                symbolic: false,
            }),
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
