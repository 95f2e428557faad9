//! Writes in doubt: a step that is not idempotent whose answer was lost (or whose event may have
//! been under way before) asks its `check` whether the write was applied before it is sent
//! again, once the bulk jobs that may carry it have ended. A check that cannot decide leaves the
//! write in doubt (checked again later) or dead-letters it, never sent again.

use super::Wait;
use super::step::{StepContext, Stop, Uncertain};
use crate::deliver::jobs::Unlisted;
use crate::deliver::retry::PauseScope;
use crate::deliver::{DeadLetter, Disposition};
use crate::mapping::plan::step::NextPage;
use crate::mapping::request::Request;
use indexmap::IndexMap;

/// What the dead letter of a write that may have been applied says (a replay checks it first).
pub(super) const NOT_SENT_AGAIN: &str = "the write may have been applied, and is not sent again";

impl StepContext<'_> {
    /// Before a request of a step that is not idempotent goes out: whether its write was
    /// applied already (then it is not sent again). A resumed event doubts its first attempt.
    pub(super) async fn already_applied(&mut self) -> Result<bool, Stop> {
        if !self.mode.check_first {
            self.mark_first_write().await?;
        } else if !self.progress.tried_here && self.progress.uncertain.is_none() {
            let why = if self.mode.replayed {
                Uncertain::Replayed
            } else {
                Uncertain::Resumed
            };
            self.progress.doubt(why, true);
        }
        let progress = &mut *self.progress;
        progress.tried_here = true;
        match progress.uncertain.take() {
            Some(uncertain) => self.verify(uncertain).await,
            None => Ok(false),
        }
    }

    /// Before anything that could apply a write twice leaves, the queue records that it may
    /// ([`super::FirstWrite`]): a restart then checks this event, and only this kind, first.
    async fn mark_first_write(&mut self) -> Result<(), Stop> {
        let Some(mark) = self.first_write.clone() else {
            return Ok(());
        };
        if let Err(e) = mark.call().await {
            let letter = self.unanswered(format!(
                "the queue cannot record that the event's write is leaving: {e}"
            ));
            return Err(Stop::Wait(Wait::Retry {
                wait: None,
                scope: PauseScope::Key,
                transient: true,
                letter: Box::new(letter),
            }));
        }
        *self.first_write = None;
        Ok(())
    }

    /// Asks the step's `check` whether the write of the current request was applied: `true`
    /// when it was (the step goes on without sending it again), `false` when it was not (send
    /// it). Without a check (or a marker), an ambiguous failure dead-letters the step rather
    /// than risk applying the write twice; a resumed event is sent, as nothing says it was
    /// applied.
    async fn verify(&mut self, uncertain: Uncertain) -> Result<bool, Stop> {
        let (executor, action, step) = (self.executor, self.action, self.step);
        let lookups = self.progress.lookups();
        let rendered = executor.config.render_check(
            self.plan,
            self.planned,
            step,
            self.progress.sent,
            self.progress.step_outputs(),
            lookups.clone(),
        );
        let (request, marker) = match rendered {
            Ok(Some(r)) if lookups.missing().is_empty() => r,
            other => {
                return match uncertain {
                    Uncertain::Resumed | Uncertain::Replayed => Ok(false),
                    Uncertain::Ambiguous(mut letter) => {
                        let why = match other {
                            Err(e) => format!("its check could not be rendered: {e}"),
                            Ok(Some(_)) => "its check needs a lookup the write did not".into(),
                            Ok(None) if step.check.is_some() => {
                                "its check's marker has no value (an event without a messageId)"
                                    .into()
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
        let mut disposition = match self.jobs_settled(&uncertain).await {
            Ok(true) => self.attempt(&request, &|_| false, "check").await,
            Ok(false) => {
                let letter = self.waiting_letter(&uncertain);
                self.progress.uncertain = Some(uncertain);
                return Err(Stop::Wait(Wait::Retry {
                    wait: None,
                    scope: PauseScope::Key,
                    transient: true,
                    letter: Box::new(letter),
                }));
            }
            Err(Unlisted::Render(e)) => {
                let mut letter = self.unanswered(format!(
                    "{NOT_SENT_AGAIN}: the jobs it may ride in cannot be listed ({e})"
                ));
                letter.attempts = self.progress.attempts;
                return Err(Stop::Failed(Box::new(letter)));
            }
            Err(Unlisted::Failed(d)) => *d,
        };
        // Each page is one request, judged as the first: the check reads on until the marker is
        // found or the answer ends; an end it cannot reach leaves the write in doubt.
        let mut read = 0;
        loop {
            self.progress.attempts += 1;
            let response = match disposition {
                Disposition::Done { response } if response.is_success() => response,
                other => return Err(self.check_failed(uncertain, other)),
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
                Err(why) if matches!(uncertain, Uncertain::Replayed) => {
                    tracing::warn!(action, step = %step.name, "a replayed write is sent although its check could not conclude: {why}");
                    return Ok(false);
                }
                Err(why) => {
                    let letter = self.doubt_letter(
                        &uncertain,
                        format!(
                            "{why}; {NOT_SENT_AGAIN} (replay the dead letter to check it again)"
                        ),
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
            disposition = self.attempt(&page, &|_| false, "check").await;
        }
    }

    /// The check's request (a page of it, or the jobs listing before it) got no usable answer:
    /// the write is still in doubt. A retryable failure checks again later; a fatal one waits
    /// for the credentials; anything else dead-letters the step, not sent again.
    fn check_failed(&mut self, uncertain: Uncertain, disposition: Disposition) -> Stop {
        let stop = self.unusable(disposition, |m| {
            format!("checking whether the write was applied: {m}; the write may have been applied")
        });
        if let Stop::Wait(_) = stop {
            // Still unknown: checked again after the wait.
            self.progress.uncertain = Some(uncertain);
        }
        stop
    }

    /// Whether the bulk jobs that may carry the current write have ended (always, for a step
    /// without a bulk form or a write sent as a single request); see [`crate::deliver::jobs`].
    async fn jobs_settled(&mut self, uncertain: &Uncertain) -> Result<bool, Unlisted> {
        let (executor, step) = (self.executor, self.step);
        let Some(since) = self
            .progress
            .job_doubt_since
            .filter(|_| step.batch.is_some())
        else {
            // A single request's lost answer: no job carries it.
            return Ok(true);
        };
        let settled = executor
            .transport
            .jobs()
            .settled(
                &executor.config,
                &*executor.api,
                since,
                &mut self.progress.awaited,
            )
            .await?;
        if !settled {
            let why = match uncertain {
                Uncertain::Resumed => "it may have been under way before",
                Uncertain::Replayed => "it is a dead letter replayed",
                Uncertain::Ambiguous(_) => "its answer was lost",
            };
            tracing::debug!(
                action = self.action,
                step = %step.name,
                message_id = self.plan.event.get("messageId").and_then(serde_json::Value::as_str),
                jobs = self.progress.awaited.len(),
                "a write that may ride in a bulk job waits for the pending jobs to end before it is checked ({why})"
            );
        }
        Ok(settled)
    }

    /// The dead letter of a write still waiting for the jobs that may carry it, should its
    /// time run out: it may have been applied, and is not sent again.
    fn waiting_letter(&self, uncertain: &Uncertain) -> DeadLetter {
        let waiting = format!(
            "{} bulk job(s) that may carry the write had not ended; {NOT_SENT_AGAIN} (replay the \
             dead letter to check it again)",
            self.progress.awaited.len()
        );
        self.doubt_letter(uncertain, waiting)
    }

    /// The dead letter of a write in doubt (its answer lost, or its event under way before)
    /// that cannot be settled, saying `why`.
    fn doubt_letter(&self, uncertain: &Uncertain, why: String) -> DeadLetter {
        match uncertain {
            Uncertain::Ambiguous(letter) => {
                let mut letter = (**letter).clone();
                letter.message = format!("{}; {why}", letter.message);
                letter
            }
            Uncertain::Resumed | Uncertain::Replayed => {
                let mut letter =
                    self.unanswered(format!("the event may have been under way before: {why}"));
                letter.attempts = self.progress.attempts;
                letter
            }
        }
    }
}
