//! One step at work: the [`StepContext`] the step's parts share (what it reads, what it
//! changes), where its action stands ([`ActionProgress`]), why a write may be in doubt
//! ([`Uncertain`]) and why the action stopped ([`Stop`]).

use super::{BatchAnswer, Executor, LearnedKey, Mode, Wait};
use crate::deliver::jobs::Awaited;
use crate::deliver::trail::{Sent, Trail};
use crate::deliver::{DeadLetter, Disposition, Response};
use crate::mapping::plan::{Plan, PlannedAction, Step};
use crate::mapping::request::Request;
use crate::mapping::template::{Answer, LookupNeed, Lookups, StepOutputs};
use indexmap::IndexMap;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// What one step of an action works with, borrowed for the step: the executor (config,
/// transport, cache), the event's plan, the action, the step and the turn's mode; and what the
/// step changes: where the action stands and the keys responses taught.
pub(super) struct StepContext<'a> {
    pub(super) executor: &'a Executor,
    pub(super) plan: &'a Plan,
    pub(super) planned: &'a PlannedAction,
    /// The action's name.
    pub(super) action: &'a str,
    pub(super) step: &'a Step,
    pub(super) mode: Mode,
    pub(super) progress: &'a mut ActionProgress,
    pub(super) learned: &'a mut Vec<LearnedKey>,
    /// Told before the first write that is not idempotent ([`super::FirstWrite`]).
    pub(super) first_write: &'a mut Option<super::FirstWrite>,
    /// Where the event's requests are recorded, if anywhere.
    pub(super) trail: Option<&'a Trail>,
}

impl StepContext<'_> {
    /// One attempt at `request` (for `what`: the step's name, `lookup` or `check`), recorded in
    /// the event's trail.
    pub(super) async fn attempt(
        &self,
        request: &Request,
        accept: &(dyn Fn(&Response) -> bool + Sync),
        what: &str,
    ) -> Disposition {
        let started = Instant::now();
        let disposition = self.executor.api.attempt(request, accept).await;
        self.witness_took(request, &disposition, what, started.elapsed(), None);
        disposition
    }

    /// Records the answer to the step's request as an item of the bulk request at `bulk` (its
    /// job, when the answer was read from one).
    pub(super) fn witness(
        &self,
        request: &Request,
        disposition: &Disposition,
        what: &str,
        bulk: Option<&str>,
    ) {
        let job = match disposition {
            Disposition::Done { response } => response.job.as_deref(),
            _ => None,
        };
        self.witness_took(
            request,
            disposition,
            what,
            std::time::Duration::ZERO,
            bulk.map(|b| (b, job)),
        );
    }

    /// Records a request of the step and its answer in the event's trail (`bulk`: the path of
    /// the bulk request it went in, and its job).
    fn witness_took(
        &self,
        request: &Request,
        disposition: &Disposition,
        what: &str,
        took: std::time::Duration,
        bulk: Option<(&str, Option<&str>)>,
    ) {
        let Some(trail) = self.trail else {
            return;
        };
        let config = &self.executor.config;
        trail.request(
            Sent {
                action: self.action,
                step: what,
                request,
                took,
                attempt: self.progress.attempts + 1,
                bulk: bulk.map(|(path, _)| path),
                job: bulk.and_then(|(_, job)| job),
            },
            disposition,
            |body| config.error_info(body).0.into_iter().next(),
        );
    }

    /// The step's dead letter for how its request (or a lookup, or a check) ended.
    pub(super) fn letter(&self, disposition: &Disposition) -> DeadLetter {
        DeadLetter::from_disposition(
            (*self.plan.event).clone(),
            self.action,
            &self.step.name,
            disposition,
            self.progress.attempts,
            &self.executor.config.errors,
        )
    }

    /// The step's dead letter without a response, saying `message`.
    pub(super) fn unanswered(&self, message: String) -> DeadLetter {
        DeadLetter::without_response(
            (*self.plan.event).clone(),
            self.action,
            &self.step.name,
            message,
        )
    }

    /// The step fails with `message`, without a response.
    pub(super) fn fail(&self, message: String) -> Stop {
        Stop::Failed(Box::new(self.unanswered(message)))
    }

    /// A request of the step (a lookup, a check) got no usable answer: refused credentials
    /// wait until they are fixed, a retryable failure is tried again later (and counted),
    /// anything else fails the step with its letter, its message as `say` puts it.
    pub(super) fn unusable(
        &self,
        disposition: Disposition,
        say: impl FnOnce(&str) -> String,
    ) -> Stop {
        if let Some((status, message)) = disposition.refusal(&self.executor.config.errors) {
            return Stop::Wait(Wait::Fatal { status, message });
        }
        let mut letter = self.letter(&disposition);
        letter.message = say(&letter.message);
        match disposition {
            Disposition::Retry { wait, scope, .. } => {
                self.executor.transport.stats().retry();
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

/// Where one action stands.
#[derive(Debug, Default)]
pub(super) struct ActionProgress {
    pub(super) step: usize,
    /// Requests of the current step already sent (an `each` step renders several).
    pub(super) sent: usize,
    pub(super) answers: HashMap<LookupNeed, Answer>,
    pub(super) outputs: IndexMap<String, IndexMap<String, Value>>,
    /// Attempts at the current request.
    pub(super) attempts: u32,
    /// Of those, answers that an outcome maps to `retry` (bounded by `retries.client_error_tries`).
    pub(super) client_retries: u32,
    /// The current request may have been applied already: check before sending it again.
    pub(super) uncertain: Option<Uncertain>,
    /// The current request was checked or sent by this delivery: a resumed event's doubt (it
    /// may have been sent before a restart) is over; its own lost answers say what is unsure.
    /// Kept apart from `attempts`, which failed lookups count too.
    pub(super) tried_here: bool,
    /// Since when the write may ride in a bulk job (its bulk answer was lost, or the event may
    /// have been under way before), and the jobs that must end before the check decides (see
    /// [`crate::deliver::jobs`]).
    pub(super) job_doubt_since: Option<Instant>,
    pub(super) awaited: Awaited,
    /// What became of the current request as a bulk item, once known.
    pub(super) batch_answer: Option<BatchAnswer>,
}

impl ActionProgress {
    /// The current request is done (applied, or found applied): on to the next one.
    pub(super) fn next_request(&mut self) {
        self.sent += 1;
        self.attempts = 0;
        self.client_retries = 0;
        self.tried_here = false;
    }

    /// The current request may have been applied: it is checked before it is sent again, once
    /// the bulk jobs that may carry it have ended (`in_job`: it went as a bulk item, or nothing
    /// says how it went).
    pub(super) fn doubt(&mut self, why: Uncertain, in_job: bool) {
        self.uncertain = Some(why);
        self.job_doubt_since = in_job.then(Instant::now);
        self.awaited = Awaited::default();
    }

    /// The outputs of the action's steps so far, for templates (`steps.NAME.OUTPUT`).
    pub(super) fn step_outputs(&self) -> Arc<StepOutputs> {
        Arc::new(StepOutputs {
            outputs: self.outputs.clone(),
            symbolic: false,
        })
    }

    /// The step's lookups answered so far, for templates.
    pub(super) fn lookups(&self) -> Arc<Lookups> {
        Arc::new(Lookups::new(self.answers.clone()))
    }
}

/// Why a write may have been applied although no answer said so.
#[derive(Debug)]
pub(super) enum Uncertain {
    /// The event may have been under way before a restart: no sign either way.
    Resumed,
    /// A dead letter replayed: its write may have been applied. A check that cannot conclude
    /// lets the write go, since replaying is the decision to send it.
    Replayed,
    /// An attempt failed ambiguously (5xx, timeout, dropped connection); `letter` says how.
    Ambiguous(Box<DeadLetter>),
}

/// Why an action stopped before its end.
pub(super) enum Stop {
    Failed(Box<DeadLetter>),
    Wait(Wait),
}
