//! How a loaded [`Config`] plans an event: which actions its triggers match, their field values,
//! and the requests their steps render (the types of the result are in [`crate::mapping::plan`]).
//!
//! [`Config::plan`] evaluates every trigger and, for the actions that match, every field.
//! Steps render lazily with [`Config::render_step`], because a step may need what only delivery
//! knows: a lookup's answer or an earlier step's output. `zdmap preview` renders with
//! placeholders for those; the sender renders, resolves what is missing, and renders again.

use super::Config;
use crate::mapping::event::Event;
use crate::mapping::field::Input;
use crate::mapping::plan::{
    Action, Offline, OfflineRequest, Plan, PlanError, PlannedAction, Preview, PreviewBatch,
    PreviewLookup, PreviewRequest, Rendered, Step,
};
use crate::mapping::request::Request;
use crate::mapping::template::{FieldValues, Lookups, RenderError, Scope, StepOutputs};
use indexmap::IndexMap;
use serde_json::Value;
use std::sync::Arc;

impl Config {
    /// Evaluates triggers and fields for one event.
    pub fn plan(&self, event: &Event) -> Plan {
        let value = event.shared_value();
        let mut plan = Plan {
            event: value.clone(),
            actions: Vec::new(),
            errors: Vec::new(),
        };
        // Segment's `integrations` may keep the event from this destination, and the server's
        // filter of the destination may: then nothing matches.
        let integration = self.setting_str("integration_name").unwrap_or("Zendesk");
        let sent = match &self.destination {
            Some(name) => event.sent_to_destination(name, integration),
            None => event.sent_to(integration),
        };
        if !sent || self.filter.as_ref().is_some_and(|f| !f.matches(&value)) {
            return plan;
        }
        let scope_cell = std::cell::OnceCell::new();
        let make_scope = || {
            scope_cell
                .get_or_init(|| {
                    Scope::builder()
                        .event(value.clone())
                        .settings(self.settings.clone())
                        .build()
                })
                .clone()
        };
        let input = Input {
            event: &value,
            settings: &self.settings,
            templates: &self.templates,
            scope: &make_scope,
        };
        for (index, action) in self.actions.iter().enumerate() {
            if !action.enabled || !action.trigger.matches(&value) {
                continue;
            }
            let mut fields = FieldValues::new(action.field_names.clone());
            let mut failed = false;
            for (i, field) in action.fields.iter().enumerate() {
                match field.eval(&input) {
                    Ok(Some(v)) => fields.set(i, v),
                    Ok(None) => {}
                    Err(e) => {
                        plan.errors.push(PlanError {
                            action: action.name.to_string(),
                            step: None,
                            message: e.to_string(),
                        });
                        failed = true;
                    }
                }
            }
            if !failed {
                plan.actions.push(PlannedAction {
                    action: index,
                    fields: Arc::new(fields),
                });
            }
        }
        plan
    }

    /// Renders one step of a planned action, with the outputs of earlier steps and the lookups
    /// known so far. Lookups without an answer leave placeholders and are listed by `lookups.missing()`.
    pub fn render_step(
        &self,
        plan: &Plan,
        planned: &PlannedAction,
        step: &Step,
        outputs: Arc<StepOutputs>,
        lookups: Arc<Lookups>,
    ) -> Result<Rendered, RenderError> {
        let base = || self.step_scope(plan, planned, outputs.clone(), lookups.clone());
        let render = |scope: Scope, requests: &mut Vec<Request>| -> Result<(), RenderError> {
            if let Some(when) = &step.when
                && !self.templates.truthy(when, &scope)?
            {
                return Ok(());
            }
            requests.push(step.request.render(&self.templates, &scope)?);
            Ok(())
        };
        let mut requests = Vec::new();
        match &step.each {
            None => render(base().build(), &mut requests)?,
            Some(each) => {
                let items: Vec<Value> = match self.templates.eval(each, &base().build())? {
                    None => Vec::new(),
                    Some(Value::Array(items)) => items,
                    Some(Value::Object(map)) => {
                        map.into_iter().map(|(k, _)| Value::String(k)).collect()
                    }
                    Some(other) => {
                        return Err(RenderError(format!(
                            "`each` must give a list, gave {}",
                            crate::mapping::event::json_kind(&other)
                        )));
                    }
                };
                for item in items {
                    render(base().item(item).build(), &mut requests)?;
                }
            }
        }
        Ok(if requests.is_empty() {
            Rendered::Skipped
        } else {
            Rendered::Requests(requests)
        })
    }

    /// The check of a step that is not idempotent, rendered for its `index`th request (the
    /// item of an `each` step): the request, and the marker the write carries. `None` when the
    /// step has no check or the marker has no value.
    pub fn render_check(
        &self,
        plan: &Plan,
        planned: &PlannedAction,
        step: &Step,
        index: usize,
        outputs: Arc<StepOutputs>,
        lookups: Arc<Lookups>,
    ) -> Result<Option<(Request, Value)>, RenderError> {
        let Some(check) = &step.check else {
            return Ok(None);
        };
        let base = || self.step_scope(plan, planned, outputs.clone(), lookups.clone());
        let mut scope = base();
        if let Some(each) = &step.each {
            let items = match self.templates.eval(each, &base().build())? {
                Some(Value::Array(items)) => items,
                Some(Value::Object(map)) => {
                    map.into_iter().map(|(k, _)| Value::String(k)).collect()
                }
                _ => Vec::new(),
            };
            let Some(item) = items.into_iter().nth(index) else {
                return Ok(None);
            };
            scope = scope.item(item);
        }
        let scope = scope.build();
        let Some(marker) = self.templates.eval(&check.equals, &scope)? else {
            return Ok(None);
        };
        Ok(Some((
            check.request.render(&self.templates, &scope)?,
            marker,
        )))
    }

    /// The entities a planned action changes, as `kind:key` (those whose key has a value).
    pub fn entities(&self, plan: &Plan, planned: &PlannedAction) -> Vec<String> {
        let action = self.action(planned);
        if action.entities.is_empty() {
            return Vec::new();
        }
        let scope = self
            .step_scope(
                plan,
                planned,
                Arc::new(StepOutputs::default()),
                Arc::new(Lookups::new(Default::default())),
            )
            .build();
        action
            .entities
            .iter()
            .filter_map(|e| match self.templates.eval(&e.key, &scope) {
                Ok(Some(Value::String(k))) if !k.is_empty() => Some(format!("{}:{k}", e.kind)),
                Ok(Some(Value::String(_) | Value::Null) | None) | Err(_) => None,
                Ok(Some(other)) => Some(format!("{}:{other}", e.kind)),
            })
            .collect()
    }

    /// The entities a planned action changes as one key (`user:u1`; several joined by `,`):
    /// what the last write applied to them is remembered by (`skip_unchanged`). `None` when
    /// the action names none.
    pub(crate) fn entity_key(&self, plan: &Plan, planned: &PlannedAction) -> Option<String> {
        let entities = self.entities(plan, planned);
        (!entities.is_empty()).then(|| entities.join(","))
    }

    /// The scope a step's templates see: the action's fields, settings, the event, earlier
    /// steps' outputs and the lookups known so far.
    pub fn step_scope(
        &self,
        plan: &Plan,
        planned: &PlannedAction,
        outputs: Arc<StepOutputs>,
        lookups: Arc<Lookups>,
    ) -> crate::mapping::template::ScopeBuilder {
        Scope::builder()
            .fields(planned.fields.clone())
            .settings(self.settings.clone())
            .message(plan.event.clone())
            .steps(outputs)
            .lookups(lookups)
    }

    /// The action of a planned action.
    pub fn action(&self, planned: &PlannedAction) -> &Action {
        &self.actions[planned.action]
    }

    /// What an event would do, without any network: matched actions, their requests in order
    /// (lookups and earlier steps' outputs as `<...>` placeholders) and the errors.
    pub fn preview(&self, event: &Event) -> Preview {
        self.preview_knowing(event, &|_, _, _| false)
    }

    /// [`Config::preview`], told by `unchanged(entity, request, span)` whether a request of a
    /// step with `skip_unchanged` equals the last write applied to its action's entity (as a
    /// store of applied writes knows it): such a request is marked `unchanged, skipped`. A
    /// request that needs a lookup (a placeholder in it) is never found unchanged.
    pub fn preview_knowing(
        &self,
        event: &Event,
        unchanged: &dyn Fn(&str, &Request, std::time::Duration) -> bool,
    ) -> Preview {
        let offline = self.render_offline(event);
        let mut out = Preview {
            kind: event.kind().to_owned(),
            matched: Vec::new(),
            requests: Vec::new(),
            lookups: Vec::new(),
            errors: offline.errors,
        };
        let erred: Vec<&str> = out.errors.iter().map(|e| e.action.as_str()).collect();
        for (i, action) in self.actions.iter().enumerate() {
            if offline.plan.actions.iter().any(|p| p.action == i)
                || erred.contains(&action.name.as_str())
            {
                out.matched.push(action.name.to_string());
            }
        }
        for (action, lookups) in offline.lookups {
            let name = &self.actions[action].name;
            let texts: Vec<String> = lookups.iter().map(placeholder_text).collect();
            for r in offline.requests.iter().filter(|r| r.action == action) {
                let mut request = r.request.clone();
                describe_placeholders(&mut request, &texts);
                let step = &self.actions[action].steps[r.step];
                let planned = offline.plan.actions.iter().find(|p| p.action == action);
                let batch = planned
                    .and_then(|planned| self.preview_batch(&offline.plan, planned, step, &request));
                let skipped = step
                    .skip_unchanged
                    .zip(planned)
                    .filter(|(span, planned)| {
                        self.entity_key(&offline.plan, planned)
                            .is_some_and(|entity| unchanged(&entity, &r.request, *span))
                    })
                    .map(|_| crate::mapping::plan::UNCHANGED_SKIPPED);
                out.requests.push(PreviewRequest {
                    action: name.to_string(),
                    step: step.name.clone(),
                    request,
                    batch,
                    skipped,
                });
            }
            out.lookups
                .extend(lookups.into_iter().map(|n| PreviewLookup {
                    action: name.to_string(),
                    resolver: n.resolver,
                    keys: n.keys.into_iter().collect(),
                }));
        }
        out
    }

    /// The bulk request a step's rendered request would join (its form's `when` holding).
    fn preview_batch(
        &self,
        plan: &Plan,
        planned: &PlannedAction,
        step: &Step,
        request: &Request,
    ) -> Option<PreviewBatch> {
        let form = step.batch.as_ref()?;
        let scope = self
            .step_scope(
                plan,
                planned,
                Arc::new(StepOutputs {
                    outputs: IndexMap::new(),
                    symbolic: true,
                }),
                Arc::new(Lookups::offline(self.direct_ids.clone())),
            )
            .build();
        if let Some(when) = &form.when
            && !self.templates.truthy(when, &scope).unwrap_or(false)
        {
            return None;
        }
        let coalesce = form
            .coalesce
            .as_ref()
            .and_then(|c| self.templates.eval(c, &scope).ok().flatten())
            .map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            });
        Some(PreviewBatch {
            method: form.method,
            path: form.path.clone(),
            items: form.items.clone(),
            item: form.item_of(request, &self.templates, &scope)?,
            coalesce,
        })
    }

    /// Every request an event's steps render without any network, in order: lookups and earlier
    /// steps' outputs are placeholders. This is the whole mapping path the benches measure.
    pub fn render_offline(&self, event: &Event) -> Offline {
        let mut plan = self.plan(event);
        let mut requests = Vec::new();
        let mut lookups_needed = Vec::new();
        let mut errors = std::mem::take(&mut plan.errors);
        for planned in &plan.actions {
            let action = self.action(planned);
            let lookups = Arc::new(Lookups::offline(self.direct_ids.clone()));
            let outputs = Arc::new(StepOutputs {
                outputs: IndexMap::new(),
                symbolic: true,
            });
            for (index, step) in action.steps.iter().enumerate() {
                match self.render_step(&plan, planned, step, outputs.clone(), lookups.clone()) {
                    Ok(Rendered::Skipped) => {}
                    Ok(Rendered::Requests(reqs)) => {
                        requests.extend(reqs.into_iter().map(|request| OfflineRequest {
                            action: planned.action,
                            step: index,
                            request,
                        }));
                    }
                    Err(e) => {
                        errors.push(PlanError {
                            action: action.name.to_string(),
                            step: Some(step.name.clone()),
                            message: e.to_string(),
                        });
                        break;
                    }
                }
            }
            let missing = Arc::try_unwrap(lookups)
                .map(Lookups::into_missing)
                .unwrap_or_else(|shared| shared.missing());
            lookups_needed.push((planned.action, missing));
        }
        Offline {
            plan,
            requests,
            lookups: lookups_needed,
            errors,
        }
    }
}

fn placeholder_text(need: &crate::mapping::template::LookupNeed) -> String {
    let keys: Vec<String> = need
        .keys
        .iter()
        .map(|(by, k)| format!("{by}={k}"))
        .collect();
    format!("<{} {}>", need.resolver, keys.join(" "))
}

/// Replaces lookup and step-output placeholders with readable `<...>` text.
fn describe_placeholders(r: &mut Request, lookups: &[String]) {
    let fix = |s: &str| -> Option<String> {
        if !s.contains("__zdmap_") {
            return None;
        }
        let mut out = s.to_owned();
        for (i, name) in lookups.iter().enumerate() {
            out = out.replace(&Lookups::placeholder(i), name);
        }
        while let Some(start) = out.find("__zdmap_step_") {
            let rest = &out[start + "__zdmap_step_".len()..];
            let Some(mid) = rest.find("__") else { break };
            let step = rest[..mid].to_owned();
            let after = &rest[mid + 2..];
            let Some(end) = after.find("__") else { break };
            let output = after[..end].to_owned();
            let total = "__zdmap_step_".len() + mid + 2 + end + 2;
            out.replace_range(start..start + total, &format!("<steps.{step}.{output}>"));
        }
        Some(out)
    };
    if let Some(p) = fix(&r.path) {
        r.path = p;
    }
    for v in r.query.values_mut().chain(r.headers.values_mut()) {
        if let Some(x) = fix(v) {
            *v = x;
        }
    }
    if let Some(body) = &mut r.body {
        walk_strings(body, &fix);
    }
}

fn walk_strings(v: &mut Value, fix: &impl Fn(&str) -> Option<String>) {
    match v {
        Value::String(s) => {
            if let Some(x) = fix(s) {
                *s = x;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| walk_strings(x, fix)),
        Value::Object(o) => o.values_mut().for_each(|x| walk_strings(x, fix)),
        _ => {}
    }
}
