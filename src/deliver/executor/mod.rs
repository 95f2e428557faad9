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
//!
//! One module per concern:
//! - this one: the [`Executor`], the [`Delivery`] and its turn loop (actions, then steps), and
//!   the mode its turns go in;
//! - `turn`: what a turn says ([`Turn`], [`Wait`], [`EventOutcome`]) and what it hands over
//!   ([`BatchItem`], [`LookupItem`], [`LearnedKey`]);
//! - `step`: the context one step is worked in (`StepContext`), where its action stands and
//!   why it stopped;
//! - `lookups`: lookups answered from the cache or by the resolvers' requests, and ids learned
//!   from responses;
//! - `send`: a step rendered, its request sent and the answer judged (a lost answer leaves the
//!   write in doubt);
//! - `verify`: a write in doubt checked before it is sent again;
//! - `bulk`: a step's request as an item of a bulk request;
//! - `unchanged`: a write equal to the last one applied to its entity skipped, and what a
//!   write applied is remembered (see [`crate::deliver::unchanged`]).
//!
//! Requests go out through [`ZendeskApi`]: the [`Transport`] in delivery, a script in the unit
//! tests.

mod bulk;
mod lookups;
mod send;
mod step;
#[cfg(test)]
mod tests;
mod turn;
mod unchanged;
mod verify;

pub use turn::{BatchAnswer, BatchItem, EventOutcome, LearnedKey, LookupItem, Turn, Wait};

use crate::deliver::cache::LookupCache;
use crate::deliver::order::{EntityChange, EntityClock, EventTime, MemoryClock, event_time};
use crate::deliver::schedule::Key;
use crate::deliver::trail::{Entry, Trail};
use crate::deliver::unchanged::{AppliedWrites, MemoryWrites};
use crate::deliver::{DeadLetter, PauseScope, RetryPolicy, Transport, ZendeskApi};
use crate::mapping::config::Config;
use crate::mapping::event::Event;
use crate::mapping::plan::{ActionName, Plan, PlannedAction, Rendered};
use crate::mapping::template::Answer;
use send::StepResult;
use serde_json::Value;
use std::sync::Arc;
use step::{ActionProgress, StepContext, Stop};

/// Runs plans against one destination. Share it between deliveries (`Arc`).
#[derive(Debug)]
pub struct Executor {
    config: Arc<Config>,
    transport: Transport,
    /// Where the requests of deliveries go: the transport (a script in the unit tests).
    api: Arc<dyn ZendeskApi>,
    cache: Arc<LookupCache>,
    /// The time of the last change applied per entity.
    clock: Arc<dyn EntityClock>,
    /// The last write applied per entity, for steps that skip a write that changes nothing.
    writes: Arc<dyn AppliedWrites>,
    /// Apply changes older than their entity's last applied one too (`--force`).
    force: bool,
}

impl Executor {
    pub fn new(config: Arc<Config>, transport: Transport, cache: Arc<LookupCache>) -> Executor {
        Executor {
            config,
            api: Arc::new(transport.clone()),
            transport,
            cache,
            clock: Arc::new(MemoryClock::default()),
            writes: Arc::new(MemoryWrites::default()),
            force: false,
        }
    }

    /// The same executor remembering the last write applied per entity in `writes` (a durable
    /// store in `serve`).
    pub(crate) fn with_writes(&self, writes: Arc<dyn AppliedWrites>) -> Executor {
        Executor {
            writes,
            ..self.share()
        }
    }

    /// The same executor keeping the time of the last change per entity in `clock` (a durable
    /// one in `serve`).
    pub fn with_clock(&self, clock: Arc<dyn EntityClock>) -> Executor {
        Executor {
            clock,
            ..self.share()
        }
    }

    /// The same executor; with `force`, a change older than its entity's last applied one is
    /// applied anyway (`--force`).
    pub fn with_force(&self, force: bool) -> Executor {
        Executor {
            force,
            ..self.share()
        }
    }

    /// The same destination (client, budget, stats) running another config, with an empty
    /// cache (the new config's resolvers may differ). Used when the mappings are reloaded.
    pub fn with_config(&self, config: Arc<Config>) -> Executor {
        Executor {
            config,
            cache: Arc::new(LookupCache::new()),
            ..self.share()
        }
    }

    /// Another executor sharing this one's config, destination, cache and clock.
    fn share(&self) -> Executor {
        Executor {
            config: self.config.clone(),
            transport: self.transport.clone(),
            api: self.api.clone(),
            cache: self.cache.clone(),
            clock: self.clock.clone(),
            writes: self.writes.clone(),
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
    pub fn start(self: &Arc<Self>, event: &Event, only: Option<Vec<ActionName>>) -> Delivery {
        let now_ms = i64::try_from(crate::base::time::unix_millis_now()).unwrap_or(i64::MAX);
        let time = event_time(event.value(), now_ms);
        if time.is_some_and(|t| t.clamped) {
            self.transport.stats().future_time();
        }
        let mut delivery = Delivery {
            time,
            executor: self.clone(),
            plan: self.config.plan(event),
            mode: Mode {
                check_first: only.is_some(),
                replayed: only.is_some(),
                force: self.force,
                ..Mode::default()
            },
            only,
            next: 0,
            current: None,
            letters: Vec::new(),
            ran: 0,
            learned: Vec::new(),
            first_write: None,
            reload: None,
            shed: false,
            trail: None,
        };
        delivery.fail_unresolved(event);
        delivery
    }
}

/// An event a run stopped before it was settled: what its delivery still had to do, to be
/// written as dead letters that a replay finishes (see [`Unsettled::letters`]).
#[derive(Clone, Debug)]
pub struct Unsettled {
    event: Arc<Value>,
    /// Its actions that failed already.
    letters: Vec<DeadLetter>,
    /// Its actions still to run, in order; the first may be under way.
    actions: Vec<ActionName>,
    /// Some action ran or is under way, or only some actions were asked for (a replay).
    begun: bool,
}

/// The step (stage) of a dead letter that was never tried, or not to its end, because the run
/// stopped.
const NOT_ATTEMPTED: &str = "not_attempted";

impl Unsettled {
    /// The event.
    pub(crate) fn event(&self) -> &Value {
        &self.event
    }

    /// The event as it was read, before any action.
    pub(crate) fn unstarted(event: Arc<Value>, only: Option<Vec<ActionName>>) -> Unsettled {
        Unsettled {
            event,
            letters: Vec::new(),
            begun: only.is_some(),
            actions: only.unwrap_or_default(),
        }
    }

    /// The dead letters that replay what is left: the actions that failed already, then one
    /// "not attempted" letter per action still to run (named, so that a replay runs just those
    /// and first checks whether a write under way was applied), or a single letter without an
    /// action for an event that had not begun (a replay runs it all). `why` says what stopped
    /// the run.
    pub(crate) fn letters(self, why: &str) -> Vec<DeadLetter> {
        let Unsettled {
            event,
            mut letters,
            actions,
            begun,
        } = self;
        let message =
            format!("not attempted: {why}; give this file to `zdmap send` to deliver what is left");
        if begun {
            letters.extend(actions.into_iter().map(|action| {
                DeadLetter::without_response((*event).clone(), action, NOT_ATTEMPTED, &message)
            }));
        } else {
            letters.push(DeadLetter::before_any_action(
                (*event).clone(),
                NOT_ATTEMPTED,
                message,
            ));
        }
        letters
    }
}

/// One event's way through its actions; see the module docs.
#[derive(Debug)]
pub struct Delivery {
    executor: Arc<Executor>,
    plan: Plan,
    only: Option<Vec<ActionName>>,
    /// The next planned action to run (index into `plan.actions`).
    next: usize,
    /// Where the action under way stands.
    current: Option<ActionProgress>,
    letters: Vec<DeadLetter>,
    /// Actions run or failed so far (0 at the end: nothing matched).
    ran: usize,
    learned: Vec<LearnedKey>,
    mode: Mode,
    /// The event's time for ordering its changes, read once when it starts.
    time: Option<EventTime>,
    /// Told before the first write that is not idempotent leaves; `None` once told (or when
    /// nobody asked).
    first_write: Option<FirstWrite>,
    /// Where the event can be read back from (its queue), if anywhere.
    reload: Option<Reload>,
    /// The event and its plan were let go while it waited ([`Delivery::shed`]): the next turn
    /// reads it back first.
    shed: bool,
    /// Where what happens to the event is recorded (the delivery log), if anywhere.
    trail: Option<Trail>,
}

/// A call into the event's queue that a delivery makes itself: see [`FirstWrite`] and
/// [`Reload`]. An error holds the delivery back, to be tried again.
pub struct QueueCall<T>(
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<T, String>> + Send + Sync>,
);

impl<T> QueueCall<T> {
    pub fn new(
        call: impl Fn() -> futures_util::future::BoxFuture<'static, Result<T, String>>
        + Send
        + Sync
        + 'static,
    ) -> QueueCall<T> {
        QueueCall(Arc::new(call))
    }

    async fn call(&self) -> Result<T, String> {
        (self.0)().await
    }
}

impl<T> Clone for QueueCall<T> {
    fn clone(&self) -> Self {
        QueueCall(self.0.clone())
    }
}

impl<T> std::fmt::Debug for QueueCall<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueCall")
    }
}

/// Records, durably, that a write of an event that is not idempotent is about to leave (the
/// server gives one per queued event).
pub type FirstWrite = QueueCall<()>;

/// Reads the event back from the queue, for a delivery that let go of it while it waited
/// ([`Delivery::shed`]).
pub type Reload = QueueCall<Value>;

/// How a delivery's turns go: set when it starts, and by the scheduler between turns.
#[derive(Clone, Copy, Debug, Default)]
struct Mode {
    /// Steps that are not idempotent check whether their write was applied before their first
    /// attempt (the event may have been under way before: a replay, a restart).
    check_first: bool,
    /// The event is a dead letter replayed (with `check_first`).
    replayed: bool,
    /// Apply changes older than their entity's last applied one too.
    force: bool,
    /// A record missing fails the action (its wait is over).
    last_chance: bool,
    /// Steps and lookups with a bulk form hand their request over as an item ([`Wait::Batch`],
    /// [`Wait::Lookup`]).
    batching: bool,
    /// This turn may send nothing but bulk items: no lookup request, no waiting for a record
    /// ([`Wait::Behind`] otherwise).
    join_only: bool,
}

impl Delivery {
    /// The event being delivered (`null` while it is shed).
    pub fn event(&self) -> &Arc<Value> {
        &self.plan.event
    }

    /// Actions whose fields did not resolve fail at once.
    fn fail_unresolved(&mut self, event: &Event) {
        let errors = std::mem::take(&mut self.plan.errors);
        let wanted: Vec<_> = errors
            .into_iter()
            .filter(|e| self.wants(&e.action))
            .collect();
        for e in wanted {
            self.letters.push(DeadLetter::without_response(
                event.value().clone(),
                e.action,
                e.step.unwrap_or_else(|| "fields".into()),
                e.message,
            ));
            self.ran += 1;
        }
    }

    /// The event can be read back from `reload` (its queue): while it waits for a record, the
    /// dispatcher may let it go from memory ([`Delivery::shed`]).
    pub fn reloadable(&mut self, reload: Reload) {
        self.reload = Some(reload);
    }

    /// Whether [`Delivery::shed`] may let the event go: it can be read back, and nothing of it
    /// has happened yet that reading it back would lose (no action ran, no request of its
    /// first step was sent or tried).
    pub(crate) fn can_shed(&self) -> bool {
        self.reload.is_some()
            && !self.shed
            && self.ran == 0
            && self.next == 0
            && self.letters.is_empty()
            && self.learned.is_empty()
            && self.current.as_ref().is_none_or(|p| {
                p.step == 0 && p.sent == 0 && !p.tried_here && p.uncertain.is_none()
            })
    }

    /// Lets the event and its plan go from memory (see [`Delivery::can_shed`]); its next turn
    /// reads the event back and plans it again.
    pub(crate) fn shed(&mut self) {
        if !self.can_shed() {
            return;
        }
        self.plan = Plan {
            event: Arc::new(Value::Null),
            actions: Vec::new(),
            errors: Vec::new(),
        };
        self.current = None;
        self.shed = true;
    }

    /// Whether the event was let go from memory and not read back yet.
    pub(crate) fn is_shed(&self) -> bool {
        self.shed
    }

    /// Reads a shed event back and plans it again; a turn that must wait when it cannot.
    async fn read_back(&mut self) -> Result<(), Turn> {
        let Some(reload) = self.reload.clone() else {
            return Ok(());
        };
        let read = reload
            .call()
            .await
            .and_then(|v| Event::from_value(v).map_err(|e| e.to_string()));
        match read {
            Ok(event) => {
                self.plan = self.executor.config.plan(&event);
                self.shed = false;
                self.fail_unresolved(&event);
                Ok(())
            }
            Err(e) => {
                let letter = DeadLetter::before_any_action(
                    Value::Null,
                    "deliver",
                    format!("cannot read the event back from the queue: {e}"),
                );
                // Not transient: the event is in the queue, and waits there as long as it takes.
                Err(Turn::Wait(Wait::Retry {
                    wait: None,
                    scope: PauseScope::Key,
                    transient: false,
                    letter: Box::new(letter),
                }))
            }
        }
    }

    /// How long to wait between attempts: the transport's policy.
    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        self.executor.transport.policy()
    }

    /// From now on, what happens to the event is told to `trail`, starting with the actions
    /// it matched (none: no trigger matched).
    pub fn witnessed_by(&mut self, trail: Trail) {
        let config = &self.executor.config;
        let actions = self
            .plan
            .actions
            .iter()
            .map(|planned| config.action(planned).name.clone())
            .chain(self.letters.iter().filter_map(|l| l.action.clone()))
            .filter(|name| self.wants(name))
            .map(|name| name.to_string())
            .collect();
        trail.note(Entry::Matched { actions });
        self.trail = Some(trail);
    }

    /// Records `entry` in the event's trail, if it has one.
    pub(crate) fn note(&self, entry: impl FnOnce() -> Entry) {
        if let Some(trail) = &self.trail {
            trail.note(entry());
        }
    }

    /// Runs the event's actions, from where it stopped, until it is settled or must wait; the
    /// end or the wait is recorded in its trail.
    pub async fn advance(&mut self) -> Turn {
        let turn = self.turn().await;
        if let Some(trail) = &self.trail {
            for entry in turn_entries(&turn) {
                trail.note(entry);
            }
        }
        turn
    }

    async fn turn(&mut self) -> Turn {
        if self.shed
            && let Err(wait) = self.read_back().await
        {
            return wait;
        }
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
                if !self.mode.force && self.stale(&action.name, &changes) {
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
    pub(crate) fn give_up(&mut self, mut letter: DeadLetter) {
        if let Some(planned) = self.plan.actions.get(self.next).cloned() {
            letter.changes = self.changes(&planned);
            self.letters.push(letter);
            self.ran += 1;
            self.current = None;
            self.next += 1;
        }
    }

    /// What the delivery still has to do, for a run stopped before it was settled (see
    /// [`Unsettled`]).
    pub(crate) fn unsettled(&self) -> Unsettled {
        let actions = self.plan.actions[self.next.min(self.plan.actions.len())..]
            .iter()
            .map(|planned| self.executor.config.action(planned).name.clone())
            .filter(|name| self.wants(name))
            .collect();
        Unsettled {
            event: self.plan.event.clone(),
            letters: self.letters.clone(),
            actions,
            begun: self.only.is_some() || self.ran > 0 || self.next > 0 || self.current.is_some(),
        }
    }

    /// The event may have been under way before (the queue handed it out to a process that
    /// stopped before settling it): steps that are not idempotent check whether their write was
    /// applied before sending it.
    pub fn resumed(&mut self) {
        self.mode.check_first = true;
    }

    /// Calls `mark` once, before the first request of a step that is not idempotent (a bulk
    /// item too), and waits for it: what a restart needs to tell such an event from one that
    /// never wrote anything.
    pub fn before_first_write(&mut self, mark: FirstWrite) {
        self.first_write = Some(mark);
    }

    /// Apply this event's changes even where their entity had a newer change applied.
    pub fn force(&mut self) {
        self.mode.force = true;
    }

    /// The entities a planned action changes, stamped with the event's time (none when the
    /// event has no time).
    fn changes(&self, planned: &PlannedAction) -> Vec<EntityChange> {
        let entities = self.executor.config.entities(&self.plan, planned);
        let Some(at_ms) = self.time.map(|t| t.at_ms).filter(|_| !entities.is_empty()) else {
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
        let time = |ms: i64| crate::base::time::rfc3339_from_unix_secs(ms.div_euclid(1000));
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
    pub(crate) fn last_chance(&mut self) {
        self.mode.last_chance = true;
    }

    /// Steps with a bulk form hand their request over as an item ([`Wait::Batch`]) instead of
    /// sending it (off by default).
    pub fn batching(&mut self, on: bool) {
        self.mode.batching = on;
    }

    /// For the next turn: events ahead of this one wait for their bulk requests, so it may
    /// only hand over bulk items (to join theirs: its changes go after theirs, and several
    /// upserts of one record in one window become one item). Anything else stops the turn
    /// before it is sent ([`Wait::Behind`]).
    pub(crate) fn join_only(&mut self, on: bool) {
        self.mode.join_only = on;
    }

    /// The answer to the item the delivery waits for ([`Wait::Batch`]).
    pub fn answer(&mut self, answer: BatchAnswer) {
        if let Some(progress) = &mut self.current {
            progress.batch_answer = Some(answer);
        }
    }

    /// Which of the event's ordering `keys` its actions still to run need: the first (the
    /// user's, which orders all of the user's changes) always; another (the organization of a
    /// group call) while an action still to run names that record among its `entities`, or
    /// names none (then nothing says it does not need it). So once a group call's organization
    /// upsert is done, the organization's next events need not wait for its membership.
    pub(crate) fn keys_needed(&self, keys: &[Key]) -> Vec<Key> {
        let Some((first, others)) = keys.split_first() else {
            return Vec::new();
        };
        let mut needed = vec![first.clone()];
        if self.shed {
            needed.extend(others.iter().cloned());
            return needed;
        }
        let remaining: Vec<Vec<String>> = self.plan.actions
            [self.next.min(self.plan.actions.len())..]
            .iter()
            .filter(|planned| self.wants(&self.executor.config.action(planned).name))
            .map(|planned| self.executor.config.entities(&self.plan, planned))
            .collect();
        for key in others {
            let named = |entities: &Vec<String>| {
                entities.is_empty()
                    || entities
                        .iter()
                        .any(|e| e.split_once(':').is_some_and(|(_, v)| v == key.value()))
            };
            if remaining.iter().any(named) {
                needed.push(key.clone());
            }
        }
        needed
    }

    /// Whether `action` runs: every action, or those `only` names.
    fn wants(&self, action: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|a| a == action))
    }

    /// The resolver keys that responses taught since the last call.
    pub(crate) fn take_learned(&mut self) -> Vec<LearnedKey> {
        std::mem::take(&mut self.learned)
    }

    /// Runs the action's steps from where it stopped: each request of a step is checked first
    /// when its write is in doubt, handed over as a bulk item, or sent.
    async fn run_action(&mut self, planned: &PlannedAction) -> Result<(), Stop> {
        let executor = self.executor.clone();
        let action = executor.config.action(planned);
        let progress = self.current.get_or_insert_with(ActionProgress::default);
        while let Some(step) = action.steps.get(progress.step) {
            let mut cx = StepContext {
                executor: &executor,
                plan: &self.plan,
                planned,
                action: &action.name,
                step,
                mode: self.mode,
                progress: &mut *progress,
                learned: &mut self.learned,
                first_write: &mut self.first_write,
                trail: self.trail.as_ref(),
            };
            let requests = match cx.render().await? {
                Rendered::Requests(requests) => requests,
                Rendered::Skipped => Vec::new(),
            };
            for request in requests.iter().skip(cx.progress.sent) {
                if !step.idempotent && cx.already_applied().await? {
                    executor.transport.stats().confirmed();
                    cx.progress.next_request();
                    continue;
                }
                if cx.unchanged(request).await {
                    cx.progress.next_request();
                    continue;
                }
                if cx.mode.batching
                    && cx.progress.batch_answer.is_none()
                    && let Some(item) = cx.batch_item(request)
                {
                    return Err(Stop::Wait(Wait::Batch(Box::new(item))));
                }
                if cx.mode.join_only && cx.progress.batch_answer.is_none() {
                    return Err(Stop::Wait(Wait::Behind));
                }
                match cx.send(request).await? {
                    StepResult::Ok(response) => {
                        let outputs = step.read_outputs(&response.body);
                        let learned = cx.learn(&response.body);
                        if response.is_success() {
                            cx.remember(request, &outputs, learned);
                        }
                        cx.progress.outputs.insert(step.name.clone(), outputs);
                        cx.progress.next_request();
                    }
                    StepResult::Skip => return Ok(()),
                }
            }
            if !requests.is_empty() {
                step.forget.iter().for_each(|r| executor.cache.forget(r));
            }
            cx.progress.step += 1;
            cx.progress.sent = 0;
        }
        Ok(())
    }
}

/// What the delivery log keeps of how a turn ended: the end (one entry per dead letter), or the
/// wait (none for a request handed over to a bulk request: its answer is recorded).
fn turn_entries(turn: &Turn) -> Vec<Entry> {
    let waiting =
        |reason: &str, detail: Option<String>, wait: Option<std::time::Duration>| Entry::Waiting {
            reason: reason.to_owned(),
            detail,
            seconds: wait.map(|w| w.as_secs_f64()),
        };
    match turn {
        Turn::Finished(EventOutcome::Delivered) => vec![Entry::Delivered],
        Turn::Finished(EventOutcome::Skipped) => vec![Entry::Skipped {
            reason: "no trigger matched".to_owned(),
        }],
        Turn::Finished(EventOutcome::Failed { letters }) => letters
            .iter()
            .map(|l| Entry::DeadLettered {
                action: l.action.as_ref().map(ToString::to_string),
                step: l.step.clone(),
                status: l.status,
                code: l.code.clone(),
                reason: crate::deliver::trail::trimmed(
                    &l.message,
                    crate::deliver::trail::ERROR_BODY_BYTES,
                ),
            })
            .collect(),
        Turn::Wait(Wait::Missing { need }) => {
            vec![waiting("record", Some(need.to_string()), None)]
        }
        Turn::Wait(Wait::Retry { wait, letter, .. }) => {
            let reason = if letter.status == Some(429) {
                "rate_limited"
            } else {
                "retry"
            };
            vec![waiting(reason, Some(letter.message.clone()), *wait)]
        }
        Turn::Wait(Wait::Fatal { status, message }) => vec![waiting(
            "credentials",
            Some(format!("Zendesk answered {status}: {message}")),
            None,
        )],
        Turn::Wait(Wait::Batch(_) | Wait::Lookup(_) | Wait::Behind) => Vec::new(),
    }
}
