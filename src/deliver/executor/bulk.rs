//! A step's request as an item of a bulk request ([`BatchItem`]), when the step has a bulk
//! form: the item its form takes from the request's body, and the identity of the record it
//! writes, for coalescing. The bulk requests themselves are sent by [`crate::deliver::batch`].

use super::BatchItem;
use super::step::StepContext;
use crate::mapping::request::Request;
use crate::mapping::template::{Answer, LookupNeed, Lookups};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

impl StepContext<'_> {
    /// The step's request as a bulk item, when the step has a bulk form that is allowed, its
    /// `when` holds and the request's body has the item; else the request goes single.
    pub(super) fn batch_item(&self, request: &Request) -> Option<BatchItem> {
        let form = self.step.batch.as_ref()?;
        let executor = self.executor;
        let config = &executor.config;
        // The step's own answers, and what the cache knows of the lookups only the form needs.
        let mut answers = self.progress.answers.clone();
        let scope = |answers: &HashMap<LookupNeed, Answer>| {
            let lookups = Arc::new(Lookups::new(answers.clone()));
            let scope = config
                .step_scope(
                    self.plan,
                    self.planned,
                    self.progress.step_outputs(),
                    lookups.clone(),
                )
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
}
