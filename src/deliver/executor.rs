//! Executing plans: render each step, resolve what it needs, send it, judge the response.
//!
//! For one event, [`Executor::deliver`] plans it, then runs its actions in order. A step is
//! rendered; the lookups it asks for (`resolve('user', email=...)`) are answered from the
//! [`LookupCache`] or by the resolver's requests, and the step is rendered again with the
//! answers. The request goes out through the [`Transport`] (budget, retries); the response
//! status, read against the step's and the destination's outcome rules, says whether the action
//! goes on, stops, fails (a [`DeadLetter`]) or whether the destination itself is broken (fatal).
//! Ids that responses already carry are learned into the cache.

use crate::config::Config;
use crate::config::spec::OutcomeKind;
use crate::deliver::cache::LookupCache;
use crate::deliver::{DeadLetter, Disposition, Response, Transport};
use crate::event::Event;
use crate::plan::{Plan, PlannedAction, Rendered, Step};
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
    /// `transient` when a failure may go away by itself (Zendesk down, timeouts, 429s).
    Failed {
        letters: Vec<DeadLetter>,
        transient: bool,
    },
    /// The destination refused our credentials or permissions: stop, keep the event.
    Fatal { status: u16, message: String },
}

enum ActionError {
    Failed {
        letter: Box<DeadLetter>,
        transient: bool,
    },
    Fatal {
        status: u16,
        message: String,
    },
}

/// Runs plans against one destination. Share it between workers (`Arc`).
#[derive(Debug)]
pub struct Executor {
    config: Arc<Config>,
    transport: Transport,
    cache: Arc<LookupCache>,
    not_found_pauses: Vec<Duration>,
}

/// Pauses before a lookup that found nothing is tried again.
const DEFAULT_NOT_FOUND_PAUSES: [Duration; 2] =
    [Duration::from_millis(500), Duration::from_secs(2)];

/// How often a step whose outcome says `retry` is tried when the transport would not retry it.
const OUTCOME_RETRIES: u32 = 3;
/// How many render → resolve rounds one step may take.
const LOOKUP_ROUNDS: usize = 8;

impl Executor {
    pub fn new(config: Arc<Config>, transport: Transport, cache: Arc<LookupCache>) -> Executor {
        Executor {
            config,
            transport,
            cache,
            not_found_pauses: DEFAULT_NOT_FOUND_PAUSES.to_vec(),
        }
    }

    /// The pauses before looking again when a lookup finds nothing (default 0.5 s, then 2 s).
    pub fn with_not_found_pauses(mut self, pauses: Vec<Duration>) -> Executor {
        self.not_found_pauses = pauses;
        self
    }

    /// The same destination (client, budget, stats, pauses) running another config, with an
    /// empty cache (the new config's resolvers may differ). Used when the mappings are reloaded.
    pub fn with_config(&self, config: Arc<Config>) -> Executor {
        Executor {
            config,
            transport: self.transport.clone(),
            cache: Arc::new(LookupCache::new()),
            not_found_pauses: self.not_found_pauses.clone(),
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

    /// Delivers one event. With `only`, runs just those actions (a dead letter being replayed,
    /// or the actions of an event that did not go through last time).
    pub async fn deliver(&self, event: &Event, only: Option<&[String]>) -> EventOutcome {
        let plan = self.config.plan(event);
        let wanted = |name: &str| only.is_none_or(|o| o.iter().any(|a| a == name));
        let mut letters = Vec::new();
        let mut transient = false;
        let mut ran = 0;
        for e in plan.errors.iter().filter(|e| wanted(&e.action)) {
            ran += 1;
            letters.push(DeadLetter::without_response(
                event.value().clone(),
                e.action.clone(),
                e.step.clone().unwrap_or_else(|| "fields".into()),
                e.message.clone(),
            ));
        }
        for planned in &plan.actions {
            let action = self.config.action(planned);
            if !wanted(&action.name) {
                continue;
            }
            ran += 1;
            match self.run_action(&plan, planned).await {
                Ok(()) => {}
                Err(ActionError::Failed {
                    letter,
                    transient: t,
                }) => {
                    letters.push(*letter);
                    transient |= t;
                }
                Err(ActionError::Fatal { status, message }) => {
                    return EventOutcome::Fatal { status, message };
                }
            }
        }
        match (ran, letters.is_empty()) {
            (0, _) => EventOutcome::Skipped,
            (_, true) => EventOutcome::Delivered,
            (_, false) => EventOutcome::Failed { letters, transient },
        }
    }

    async fn run_action(&self, plan: &Plan, planned: &PlannedAction) -> Result<(), ActionError> {
        let action = self.config.action(planned);
        let mut answers: HashMap<LookupNeed, Answer> = HashMap::new();
        let mut outputs: IndexMap<String, IndexMap<String, Value>> = IndexMap::new();
        let fail = |step: &str, message: String, transient: bool| ActionError::Failed {
            letter: Box::new(DeadLetter::without_response(
                (*plan.event).clone(),
                action.name.clone(),
                step.to_owned(),
                message,
            )),
            transient,
        };
        for step in &action.steps {
            let mut round = 0;
            let rendered = loop {
                let lookups = Arc::new(Lookups::new(answers.clone()));
                let step_outputs = Arc::new(StepOutputs {
                    outputs: outputs.clone(),
                    symbolic: false,
                });
                let result =
                    self.config
                        .render_step(plan, planned, step, step_outputs, lookups.clone());
                let missing = lookups.missing();
                if missing.is_empty() {
                    break result.map_err(|e| fail(&step.name, e.to_string(), false))?;
                }
                round += 1;
                if round > LOOKUP_ROUNDS {
                    return Err(fail(&step.name, "lookups did not settle".into(), false));
                }
                for need in missing {
                    let answer = self.resolve(plan, &action.name, &step.name, &need).await?;
                    answers.insert(need, answer);
                }
            };
            let Rendered::Requests(requests) = rendered else {
                continue;
            };
            let sent = !requests.is_empty();
            for request in requests {
                match self.send_step(plan, &action.name, step, &request).await? {
                    StepResult::Ok(response) => {
                        outputs.insert(step.name.clone(), step.read_outputs(&response.body));
                        self.learn(plan, planned, step, &outputs, &answers, &response.body);
                    }
                    StepResult::Skip => return Ok(()),
                }
            }
            if sent {
                step.forget.iter().for_each(|r| self.cache.forget(r));
            }
        }
        Ok(())
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

    async fn send_step(
        &self,
        plan: &Plan,
        action: &str,
        step: &Step,
        request: &crate::request::Request,
    ) -> Result<StepResult, ActionError> {
        let mut extra = 0;
        loop {
            let disposition = self
                .transport
                .send_accepting(request, |r| self.outcome(step, r) != OutcomeKind::Retry)
                .await;
            let letter = |d: &Disposition| {
                Box::new(DeadLetter::from_disposition(
                    (*plan.event).clone(),
                    action,
                    &step.name,
                    d,
                ))
            };
            match &disposition {
                Disposition::Done { response, .. } => match self.outcome(step, response) {
                    OutcomeKind::Ok => return Ok(StepResult::Ok(Box::new(response.clone()))),
                    OutcomeKind::Skip => return Ok(StepResult::Skip),
                    OutcomeKind::Fail => {
                        return Err(ActionError::Failed {
                            letter: letter(&disposition),
                            transient: false,
                        });
                    }
                    OutcomeKind::Fatal => {
                        let (_, message) = self.config.error_info(&response.body);
                        return Err(ActionError::Fatal {
                            status: response.status,
                            message: message.unwrap_or_else(|| format!("HTTP {}", response.status)),
                        });
                    }
                    OutcomeKind::Retry if extra < OUTCOME_RETRIES => {
                        extra += 1;
                        self.transport.stats().retry();
                        tokio::time::sleep(Duration::from_millis(200 << extra)).await;
                    }
                    OutcomeKind::Retry => {
                        return Err(ActionError::Failed {
                            letter: letter(&disposition),
                            transient: true,
                        });
                    }
                },
                Disposition::Fatal { status, message } => {
                    return Err(ActionError::Fatal {
                        status: *status,
                        message: message.clone(),
                    });
                }
                Disposition::GaveUp { .. } => {
                    return Err(ActionError::Failed {
                        letter: letter(&disposition),
                        transient: true,
                    });
                }
            }
        }
    }

    /// Answers a lookup: from the cache, else by the resolver's lookups in order.
    async fn resolve(
        &self,
        plan: &Plan,
        action: &str,
        step: &str,
        need: &LookupNeed,
    ) -> Result<Answer, ActionError> {
        let what = format!("lookup {need}");
        let Some(resolver) = self.config.resolvers.get(&need.resolver) else {
            return Err(ActionError::Failed {
                letter: Box::new(DeadLetter::without_response(
                    (*plan.event).clone(),
                    action,
                    step,
                    format!("{what}: no such resolver"),
                )),
                transient: false,
            });
        };
        let ttl = Duration::from_secs(resolver.cache.ttl_seconds);
        // Nothing found may only mean "not yet": the record can be in flight on another
        // worker, or not yet in Zendesk's search index. Look again after a pause or two.
        let mut pauses = self.not_found_pauses.iter();
        loop {
            for (lookup, key) in resolver.order(&need.keys) {
                if let Some(v) = self.cache.get(&resolver.name, &lookup.by, key) {
                    return Ok(Answer::Found(v));
                }
                let request = lookup
                    .render(&self.config.templates, &self.config.settings, key)
                    .map_err(|e| ActionError::Failed {
                        letter: Box::new(DeadLetter::without_response(
                            (*plan.event).clone(),
                            action,
                            step,
                            format!("{what}: {e}"),
                        )),
                        transient: false,
                    })?;
                let found = match request {
                    None => Some(id_value(key)),
                    Some(request) => match self.transport.send(&request).await {
                        Disposition::Done { response, .. } if response.is_success() => {
                            lookup.extract(&response.body)
                        }
                        Disposition::Fatal { status, message } => {
                            return Err(ActionError::Fatal { status, message });
                        }
                        d => {
                            let transient = matches!(d, Disposition::GaveUp { .. });
                            let mut letter = DeadLetter::from_disposition(
                                (*plan.event).clone(),
                                action,
                                step,
                                &d,
                            );
                            letter.message = format!("{what}: {}", letter.message);
                            return Err(ActionError::Failed {
                                letter: Box::new(letter),
                                transient,
                            });
                        }
                    },
                };
                if let Some(value) = found {
                    self.cache.put(
                        &resolver.name,
                        ttl,
                        resolver.cache.capacity,
                        &lookup.by,
                        key,
                        value.clone(),
                    );
                    return Ok(Answer::Found(value));
                }
            }
            match pauses.next() {
                Some(pause) => tokio::time::sleep(*pause).await,
                None => return Ok(Answer::NotFound),
            }
        }
    }

    /// Fills the cache from a response, as the step's `learn` entries say.
    fn learn(
        &self,
        plan: &Plan,
        planned: &PlannedAction,
        step: &Step,
        outputs: &IndexMap<String, IndexMap<String, Value>>,
        answers: &HashMap<LookupNeed, Answer>,
        body: &Value,
    ) {
        if step.learn.is_empty() {
            return;
        }
        let scope = self
            .config
            .step_scope(
                plan,
                planned,
                Arc::new(StepOutputs {
                    outputs: outputs.clone(),
                    symbolic: false,
                }),
                Arc::new(Lookups::new(answers.clone())),
            )
            .build();
        for l in &step.learn {
            let Some(resolver) = self.config.resolvers.get(&l.resolver) else {
                continue;
            };
            let Ok(Some(key)) = self.config.templates.eval(&l.key, &scope) else {
                continue;
            };
            let key = match key {
                Value::String(s) => s,
                other => other.to_string(),
            };
            if let Some(value) = l.value.first(body).filter(|v| !v.is_null()) {
                let ttl = Duration::from_secs(resolver.cache.ttl_seconds);
                self.cache.put(
                    &resolver.name,
                    ttl,
                    resolver.cache.capacity,
                    &l.by,
                    &key,
                    value.clone(),
                );
            }
        }
    }
}

enum StepResult {
    Ok(Box<Response>),
    Skip,
}

/// A key that is the value itself (`by: id`): a number when it reads as one.
fn id_value(key: &str) -> Value {
    key.parse::<u64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::String(key.to_owned()))
}
