//! Lookups: a step's `resolve(...)` answered from the [`LookupCache`](crate::deliver::LookupCache)
//! or by the resolver's requests in order (a key remembered as missing is not asked again), and
//! the ids responses carry learned into the cache (a step's `learn`), each key learned reported
//! so that events waiting for it wake up.

use super::step::{StepContext, Stop};
use super::{BatchAnswer, Executor, LearnedKey, LookupItem, Wait};
use crate::deliver::Disposition;
use crate::deliver::cache::Cached;
use crate::deliver::unchanged::LearnedId;
use crate::mapping::template::{Answer, LookupNeed};
use serde_json::Value;
use std::time::Duration;

impl Executor {
    /// The cache's answer to a lookup, if it has one (found, or known missing for every key).
    pub(super) fn cached(&self, need: &LookupNeed) -> Option<Answer> {
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
    pub(super) fn is_cached(&self, need: &LookupNeed) -> bool {
        self.cached(need).is_some()
    }
}

impl StepContext<'_> {
    /// Answers a lookup of the step: from the cache, else by the resolver's lookups in order. A
    /// key the cache remembers as missing is not asked again. With batching, a lookup with a
    /// bulk form is handed over as an item ([`Wait::Lookup`]) rather than sent.
    pub(super) async fn resolve(&mut self, need: &LookupNeed) -> Result<Answer, Stop> {
        let executor = self.executor;
        let what = format!("lookup {need}");
        let config = &executor.config;
        let Some(resolver) = config.resolvers.get(&need.resolver) else {
            return Err(self.fail(format!("{what}: no such resolver")));
        };
        let ttl = Duration::from_secs(resolver.cache.ttl_seconds);
        let cache = &executor.cache;
        for (lookup, key) in resolver.order(&need.keys) {
            match cache.lookup(&resolver.name, &lookup.by, key) {
                Cached::Found(v) => {
                    // A bulk lookup that found nothing left its answer ("ask on your own"); the
                    // record is known now (an event waiting for it was woken), so that answer
                    // is spent: the step's own request may still join a bulk request.
                    if lookup.batch.is_some()
                        && matches!(self.progress.batch_answer, Some(BatchAnswer::Single))
                    {
                        self.progress.batch_answer = None;
                    }
                    return Ok(Answer::Found(v));
                }
                Cached::Missing => continue,
                Cached::Unknown => {}
            }
            let request = lookup
                .render(&config.templates, &config.settings, key)
                .map_err(|e| self.fail(format!("{what}: {e}")))?;
            if self.mode.batching
                && request.is_some()
                && let Some(form) = lookup.batch.as_ref().filter(|f| f.takes(key))
            {
                match self.progress.batch_answer {
                    // Looked up with others: still unknown, so it is asked on its own.
                    Some(BatchAnswer::Single) => self.progress.batch_answer = None,
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
                    let d = self.attempt(&request, &|_| false, "lookup").await;
                    self.progress.attempts += 1;
                    match d {
                        Disposition::Done { response } if response.is_success() => {
                            lookup.extract(&response.body)
                        }
                        d => return Err(self.unusable(d, |m| format!("{what}: {m}"))),
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
                    self.learned.push(LearnedKey {
                        resolver: resolver.name.clone(),
                        by: lookup.by.clone(),
                        key: key.to_owned(),
                    });
                    self.progress.attempts = 0;
                    return Ok(Answer::Found(value));
                }
                None => cache.mark_missing(&resolver.name, &lookup.by, key),
            }
        }
        self.progress.attempts = 0;
        Ok(Answer::NotFound)
    }

    /// Fills the cache from a response to the step, as the step's `learn` entries say; the
    /// ids learned are handed back (to be remembered with the write, see `unchanged`).
    pub(super) fn learn(&mut self, body: &Value) -> Vec<LearnedId> {
        let (executor, step) = (self.executor, self.step);
        if step.learn.is_empty() {
            return Vec::new();
        }
        let config = &executor.config;
        let scope = config
            .step_scope(
                self.plan,
                self.planned,
                self.progress.step_outputs(),
                self.progress.lookups(),
            )
            .build();
        let mut learned = Vec::new();
        for l in &step.learn {
            if !config.resolvers.contains_key(&l.resolver) {
                continue;
            }
            let Ok(Some(key)) = config.templates.eval(&l.key, &scope) else {
                continue;
            };
            let key = match key {
                Value::String(s) => s,
                other => other.to_string(),
            };
            if let Some(value) = l.value.first(body).filter(|v| !v.is_null()) {
                let id = LearnedId {
                    resolver: l.resolver.clone(),
                    by: l.by.clone(),
                    key,
                    value: value.clone(),
                };
                self.put_learned(&id);
                learned.push(id);
            }
        }
        learned
    }

    /// Puts a learned id into the cache, and says which key was learned (events waiting for
    /// it wake up).
    pub(super) fn put_learned(&mut self, id: &LearnedId) {
        let Some(resolver) = self.executor.config.resolvers.get(&id.resolver) else {
            return;
        };
        let ttl = Duration::from_secs(resolver.cache.ttl_seconds);
        self.executor.cache.put(
            &resolver.name,
            ttl,
            resolver.cache.capacity,
            &id.by,
            &id.key,
            id.value.clone(),
        );
        self.learned.push(LearnedKey {
            resolver: resolver.name.clone(),
            by: id.by.clone(),
            key: id.key.clone(),
        });
    }
}

/// A key that is the value itself (`by: id`): a number when it reads as one.
fn id_value(key: &str) -> Value {
    key.parse::<u64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::String(key.to_owned()))
}
