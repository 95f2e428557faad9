//! Pending jobs: what must end before a write that may ride in a bulk job is read back.
//!
//! A step that is not idempotent and has a bulk form may have been sent as an item of a bulk
//! request whose answer never came (a timeout, a 5xx, a dropped connection), or by a process
//! that stopped before settling it (a redelivered event, a replayed dead letter). The job that
//! request started may not have run yet: a `check` made now would find the write missing, the
//! write would be sent again, and then the first job would apply it too. So before such a
//! check, the destination's recent jobs are listed (`jobs.list` of `destination.yaml`), and the
//! check waits until every job that was pending at the first listing after the doubt arose has
//! ended (`JobWatch::awaited`). Jobs this process polls itself and has seen end
//! ([`JobWatch::ended`]) are not waited for.
//!
//! One listing serves every delivery that asks within a poll interval (the items of one lost
//! bulk request all ask at once), so the wait costs a request per interval, not per item.

use crate::deliver::{Disposition, ZendeskApi};
use crate::mapping::config::Config;
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ended job ids remembered (the oldest are forgotten first).
const ENDED_KEPT: usize = 10_000;

/// The jobs of one destination known to have ended, and the last listing of its pending jobs.
#[derive(Debug, Default)]
pub struct JobWatch {
    ended: Mutex<Ended>,
    listing: tokio::sync::Mutex<Option<Listing>>,
}

#[derive(Debug, Default)]
struct Ended {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

/// The pending jobs a listing showed, and when it was asked for.
#[derive(Debug, Clone)]
struct Listing {
    at: Instant,
    pending: Vec<String>,
}

/// Why the pending jobs are not known.
#[derive(Debug)]
pub enum Unlisted {
    /// The listing request could not be rendered.
    Render(String),
    /// The listing request failed (how), or its answer had no list of jobs.
    Failed(Box<Disposition>),
}

/// The jobs a write waits for, from the first listing made after its doubt arose.
#[derive(Debug, Clone, Default)]
pub struct Awaited {
    ids: Option<Vec<String>>,
}

impl Awaited {
    /// How many jobs are still waited for (0 before the first listing).
    pub fn len(&self) -> usize {
        self.ids.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl JobWatch {
    /// A job this process polled has ended (done or failed): nobody waits for it.
    pub fn ended(&self, id: &str) {
        let Ok(mut ended) = self.ended.lock() else {
            return;
        };
        if ended.ids.insert(id.to_owned()) {
            ended.order.push_back(id.to_owned());
            if ended.order.len() > ENDED_KEPT
                && let Some(old) = ended.order.pop_front()
            {
                ended.ids.remove(&old);
            }
        }
    }

    fn is_ended(&self, id: &str) -> bool {
        self.ended.lock().is_ok_and(|e| e.ids.contains(id))
    }

    /// Whether the jobs `awaited` holds have all ended, by a listing made after `since` (the
    /// moment the doubt arose) and at most a poll interval old: `Ok(true)` when they have (the
    /// check may decide), `Ok(false)` while one is still pending. The first call fixes which
    /// jobs are awaited (those pending then, less those known to have ended); jobs started later
    /// cannot carry the write and are not waited for. Without `jobs.list` there is nothing to
    /// wait for. `Err` when the jobs could not be listed.
    pub async fn settled(
        &self,
        config: &Config,
        api: &dyn ZendeskApi,
        since: Instant,
        awaited: &mut Awaited,
    ) -> Result<bool, Unlisted> {
        let Some(jobs) = config.jobs.as_deref() else {
            return Ok(true);
        };
        let fresh = Duration::from_millis(jobs.poll_ms.max(1));
        let pending = {
            let mut listing = self.listing.lock().await;
            match listing.as_ref() {
                Some(l) if l.at >= since && l.at.elapsed() < fresh => l.pending.clone(),
                _ => {
                    let Some(request) = jobs.list_request(&config.templates, &config.settings)
                    else {
                        return Ok(true);
                    };
                    let request = request.map_err(|e| Unlisted::Render(e.to_string()))?;
                    let at = Instant::now();
                    let response = match api.attempt(&request, &|_| false).await {
                        Disposition::Done { response } if response.is_success() => response,
                        Disposition::Done { response } => {
                            return Err(Unlisted::Failed(Box::new(
                                Disposition::retry_after_answer(response),
                            )));
                        }
                        other => return Err(Unlisted::Failed(Box::new(other))),
                    };
                    let Some(pending) = jobs.pending_in(&response.body) else {
                        return Err(Unlisted::Failed(Box::new(Disposition::retry_after_answer(
                            response,
                        ))));
                    };
                    *listing = Some(Listing {
                        at,
                        pending: pending.clone(),
                    });
                    pending
                }
            }
        };
        let still: Vec<String> = match awaited.ids.take() {
            None => pending,
            Some(ids) => ids.into_iter().filter(|id| pending.contains(id)).collect(),
        };
        let still: Vec<String> = still.into_iter().filter(|id| !self.is_ended(id)).collect();
        let done = still.is_empty();
        awaited.ids = Some(still);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_jobs_are_remembered_up_to_a_bound() {
        let watch = JobWatch::default();
        for n in 0..=ENDED_KEPT {
            watch.ended(&n.to_string());
        }
        assert!(!watch.is_ended("0"), "the oldest is forgotten");
        assert!(watch.is_ended("1"));
        assert!(watch.is_ended(&ENDED_KEPT.to_string()));
    }
}
