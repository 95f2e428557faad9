//! A write that would change nothing, skipped: a step with `skip_unchanged` whose request has
//! the digest of the last write applied to the action's entity (within the step's span) is not
//! sent, and the outputs and ids of that write stand for its answer (only when it has every
//! output the step reads). Before any write to an entity goes out, what was remembered of the
//! entity is forgotten; a write answered with success is remembered if its step skips unchanged
//! writes (see [`crate::deliver::unchanged`]).

use super::step::StepContext;
use crate::deliver::trail::Entry;
use crate::deliver::unchanged::{AppliedWrite, LearnedId, digest, now_ms};
use crate::mapping::request::{Method, Request};
use indexmap::IndexMap;
use serde_json::Value;

impl StepContext<'_> {
    /// Whether `request` is skipped as unchanged (its outputs and ids restored, counted). A
    /// write that is not skipped and is about to go out first makes the entity's record
    /// forgotten.
    pub(super) async fn unchanged(&mut self, request: &Request) -> bool {
        if request.method == Method::Get || self.progress.batch_answer.is_some() {
            return false;
        }
        let Some(entity) = self.executor.config.entity_key(self.plan, self.planned) else {
            return false;
        };
        let writes = self.executor.writes.clone();
        if let Some(span) = self.step.skip_unchanged
            && let Some(last) = writes.last_write(&entity)
            && last.holds(&digest(request), span, now_ms())
            && self
                .step
                .outputs
                .iter()
                .all(|(name, _)| last.outputs.contains_key(name))
        {
            for id in &last.learned {
                self.put_learned(id);
            }
            self.progress
                .outputs
                .insert(self.step.name.clone(), last.outputs);
            self.executor.transport.stats().unchanged();
            if let Some(trail) = self.trail {
                trail.note(Entry::Unchanged {
                    action: self.action.to_string(),
                    step: self.step.name.clone(),
                    method: request.method.to_string(),
                    path: request.path.clone(),
                });
            }
            tracing::debug!(
                action = self.action,
                step = %self.step.name,
                "unchanged, skipped: the last write applied to the entity was the same"
            );
            return true;
        }
        if !writes.forgetting(&entity).await {
            tracing::warn!(
                action = self.action,
                %entity,
                "the last write applied to the entity may not be forgotten everywhere; sent anyway"
            );
        }
        false
    }

    /// `request` was applied (answered with success): remembered, with what its answer taught,
    /// if its step skips unchanged writes.
    pub(super) fn remember(
        &self,
        request: &Request,
        outputs: &IndexMap<String, Value>,
        learned: Vec<LearnedId>,
    ) {
        if self.step.skip_unchanged.is_none() {
            return;
        }
        let Some(entity) = self.executor.config.entity_key(self.plan, self.planned) else {
            return;
        };
        let write = AppliedWrite {
            digest: digest(request),
            at_ms: now_ms(),
            outputs: outputs.clone(),
            learned,
        };
        self.executor.writes.write_applied(&entity, &write);
    }
}
