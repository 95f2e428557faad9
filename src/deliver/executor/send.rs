//! Sending a step: rendered (its lookups answered until it renders whole), its request sent
//! once (or its bulk item's answer taken) and the answer judged by the step's and the
//! destination's outcome rules. An answer lost after the request may have been applied (a 5xx,
//! a timeout, a dropped connection) leaves the write of a step that is not idempotent in doubt:
//! it is checked before it is sent again (see `verify`).

use super::step::{StepContext, Stop, Uncertain};
use super::verify::NOT_SENT_AGAIN;
use super::{BatchAnswer, Executor, Wait};
use crate::deliver::retry::PauseScope;
use crate::deliver::{Disposition, Response, TransportError};
use crate::mapping::plan::{Rendered, Step};
use crate::mapping::request::Request;
use crate::mapping::spec::OutcomeKind;

/// How many render → resolve rounds one step may take.
const LOOKUP_ROUNDS: usize = 8;

/// How a request of a step ended, when the action goes on.
pub(super) enum StepResult {
    /// Done: its response (outputs are read from it, ids learned).
    Ok(Box<Response>),
    /// The step's outcome is `skip`: the action ends here.
    Skip,
}

impl Executor {
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

impl StepContext<'_> {
    /// Renders the step, answering its lookups until it renders whole.
    pub(super) async fn render(&mut self) -> Result<Rendered, Stop> {
        let executor = self.executor;
        for _ in 0..=LOOKUP_ROUNDS {
            let lookups = self.progress.lookups();
            let outputs = self.progress.step_outputs();
            let result = executor.config.render_step(
                self.plan,
                self.planned,
                self.step,
                outputs,
                lookups.clone(),
            );
            let missing = lookups.missing();
            if missing.is_empty() {
                return result.map_err(|e| match lookups.first_unfound() {
                    // The events ahead may be creating it.
                    Some(_) if self.mode.join_only => Stop::Wait(Wait::Behind),
                    Some(need) if !self.mode.last_chance => Stop::Wait(Wait::Missing { need }),
                    _ => self.fail(e.to_string()),
                });
            }
            for need in missing {
                if self.mode.join_only && !executor.is_cached(&need) {
                    // A lookup request is more than a turn that may only join bulk requests sends.
                    return Err(Stop::Wait(Wait::Behind));
                }
                let answer = self.resolve(&need).await?;
                self.progress.answers.insert(need, answer);
            }
        }
        Err(self.fail("lookups did not settle".into()))
    }

    /// Sends one request of the step (one attempt), or takes its bulk item's answer, and judges
    /// the answer.
    pub(super) async fn send(&mut self, request: &Request) -> Result<StepResult, Stop> {
        let (executor, step) = (self.executor, self.step);
        let (disposition, in_bulk) = match self.progress.batch_answer.take() {
            Some(BatchAnswer::Answered(d)) => {
                let bulk = step.batch.as_ref().map(|form| form.path.as_str());
                self.witness(request, &d, &step.name, bulk);
                (*d, true)
            }
            Some(BatchAnswer::Single) | None => (
                self.attempt(
                    request,
                    &|r| executor.outcome(step, r) != OutcomeKind::Retry,
                    &step.name,
                )
                .await,
                false,
            ),
        };
        self.progress.attempts += 1;
        match &disposition {
            Disposition::Done { response } => match executor.outcome(step, response) {
                OutcomeKind::Ok => Ok(StepResult::Ok(Box::new(response.clone()))),
                OutcomeKind::Skip => Ok(StepResult::Skip),
                OutcomeKind::Fail => Err(Stop::Failed(Box::new(self.letter(&disposition)))),
                OutcomeKind::Fatal => {
                    let (_, message) = executor.config.error_info(&response.body);
                    Err(Stop::Wait(Wait::Fatal {
                        status: response.status,
                        message: message.unwrap_or_else(|| format!("HTTP {}", response.status)),
                    }))
                }
                OutcomeKind::Retry
                    if self.progress.client_retries + 1
                        < executor.config.retries.client_error_tries =>
                {
                    self.progress.client_retries += 1;
                    executor.transport.stats().retry();
                    Err(Stop::Wait(Wait::Retry {
                        wait: response.headers.retry_after,
                        scope: PauseScope::Key,
                        transient: false,
                        letter: Box::new(self.letter(&disposition)),
                    }))
                }
                OutcomeKind::Retry => Err(Stop::Failed(Box::new(self.letter(&disposition)))),
            },
            Disposition::Retry { wait, scope, last } => {
                executor.transport.stats().retry();
                // A bulk request whose job failed, or gave the item no result, answered 200: the
                // job may have applied some of its items.
                let job_unclear = in_bulk && last.as_ref().is_ok_and(Response::is_success);
                let mut letter = Box::new(self.letter(&disposition));
                if !step.idempotent && (ambiguous(last) || job_unclear) {
                    self.progress
                        .doubt(Uncertain::Ambiguous(letter.clone()), in_bulk);
                    // Given up before it is checked: it is not sent again.
                    letter.message = format!(
                        "{}; {NOT_SENT_AGAIN} unchecked (replay the dead letter to check it and \
                         send it if it was not)",
                        letter.message
                    );
                }
                Err(Stop::Wait(Wait::Retry {
                    wait: *wait,
                    scope: *scope,
                    transient: true,
                    letter,
                }))
            }
            Disposition::Fatal { .. } => {
                let (status, message) = disposition
                    .refusal(&self.executor.config.errors)
                    .unwrap_or_default();
                Err(Stop::Wait(Wait::Fatal { status, message }))
            }
            Disposition::Invalid { .. } => Err(Stop::Failed(Box::new(self.letter(&disposition)))),
        }
    }
}

/// Whether a failed attempt may have been applied: a server error, a timeout or a connection
/// lost after sending (not a 429 or 408, which say it was not, nor a connection never made).
fn ambiguous(last: &Result<Response, TransportError>) -> bool {
    match last {
        Ok(response) => response.status >= 500,
        Err(TransportError::Connect { .. }) => false,
        Err(_) => true,
    }
}
