//! Holds on the keys that events of different partitions share (the organization of a `group`
//! call), so that one replica at a time delivers an organization's events to a destination:
//! keys `h.<base64url of the key>` (another destination's `d.<name>.h.…`, see
//! [`super::names`]) in the bucket `zdmap_entities`, beside the entities' change times,
//! the value the holding replica and when the hold ends unless renewed (ms since the Unix
//! epoch; a lease ahead).
//!
//! - **take**: a create when the key is absent (or deleted), an update at the entry's revision
//!   when its holder's time is over (a replica that died); either fails if another replica got
//!   there first. All of an event's keys or none. Then the replica waits until its watch of the
//!   bucket has seen that revision ([`NatsClock::seen_up_to`]): the previous holder wrote its
//!   change times before letting go, so they are known here before the first turn.
//! - **renew**: every third of the lease, by revision; a hold taken over meanwhile (this replica
//!   was cut off longer than a lease) is let go and logged; one NATS could not be asked about is
//!   renewed next time.
//! - **release**: once the change times and the records of applied writes
//!   ([`super::applied`]) this replica started writing are in the bucket
//!   ([`NatsClock::written`]), a delete at the hold's revision. Graceful shutdown releases every
//!   hold at once; a replica killed leaves its holds until their time is over (a lease,
//!   `--nats-lease`, 10 s by default).

use super::entities::NatsClock;
use super::names::Names;
use crate::base::sync::lock;
use crate::deliver::holds::{Holding, KeyHolds, Taking};
use async_nats::jetstream::kv;
use base64::Engine as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How long a replica waits for its watch to see a hold it took, and for its change times to be
/// written before it lets a hold go.
pub(super) const CATCH_UP: Duration = Duration::from_secs(5);

/// The bucket key of the hold on `key` of the destination of `names`.
fn hold_key(names: &Names, key: &str) -> String {
    names.key(&format!(
        "h.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
    ))
}

/// What a hold's entry says.
#[derive(serde::Serialize, serde::Deserialize)]
struct HoldValue {
    replica: String,
    /// When the hold ends unless renewed, ms since the Unix epoch.
    until_ms: u64,
}

/// A hold of this replica.
#[derive(Clone, Copy, Debug)]
struct Held {
    revision: u64,
    /// Events holding it.
    count: usize,
}

/// The holds of one replica.
pub struct NatsHolds {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    bucket: kv::Store,
    clock: Arc<NatsClock>,
    replica: String,
    lease: Duration,
    /// By bucket key.
    held: Mutex<HashMap<String, Held>>,
    /// Let go of and being deleted, by bucket key: their revision.
    releasing: Mutex<HashMap<String, u64>>,
    /// Release tasks running.
    tasks: AtomicUsize,
    task_ended: Notify,
}

impl std::fmt::Debug for NatsHolds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsHolds")
            .field("replica", &self.inner.replica)
            .finish_non_exhaustive()
    }
}

impl NatsHolds {
    /// Holds of `replica` in `bucket` (the entities bucket, which `clock` follows), each lasting
    /// `lease` unless renewed.
    pub fn start(
        bucket: kv::Store,
        clock: Arc<NatsClock>,
        replica: String,
        lease: Duration,
    ) -> NatsHolds {
        let inner = Arc::new(Inner {
            bucket,
            clock,
            replica,
            lease,
            held: Mutex::new(HashMap::new()),
            releasing: Mutex::new(HashMap::new()),
            tasks: AtomicUsize::new(0),
            task_ended: Notify::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let renewer = tokio::spawn(renew(inner.clone(), stopped));
        NatsHolds {
            inner,
            stop,
            renewer: Mutex::new(Some(renewer)),
        }
    }

    /// Keys held now.
    pub fn held(&self) -> usize {
        lock(&self.inner.held).len()
    }

    /// Stops renewing and lets every hold go at once (graceful shutdown), once the releases
    /// under way and the change times being written are done.
    pub async fn close(&self) {
        let _ = self.stop.send(true);
        let renewer = lock(&self.renewer).take();
        if let Some(renewer) = renewer {
            let _ = renewer.await;
        }
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            let ended = inner.task_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if inner.tasks.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                break;
            }
        }
        if !inner.clock.written(CATCH_UP).await {
            tracing::warn!(
                "what was applied is still being written to NATS; letting the holds go anyway"
            );
        }
        let all: Vec<String> = {
            let mut held = lock(&inner.held);
            let mut releasing = lock(&inner.releasing);
            held.drain()
                .map(|(key, h)| {
                    releasing.insert(key.clone(), h.revision);
                    key
                })
                .collect()
        };
        inner.delete(all).await;
    }
}

impl Drop for NatsHolds {
    fn drop(&mut self) {
        if let Some(renewer) = lock(&self.renewer).take() {
            renewer.abort();
        }
    }
}

impl KeyHolds for NatsHolds {
    fn take(&self, keys: Vec<String>) -> Taking {
        let inner = self.inner.clone();
        Box::pin(async move { inner.take(keys).await })
    }

    fn release(&self, keys: Vec<String>) {
        let inner = self.inner.clone();
        let let_go = inner.count_down(keys);
        if let_go.is_empty() {
            return;
        }
        inner.tasks.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            if !inner.clock.written(CATCH_UP).await {
                tracing::warn!(
                    "change times are still being written to NATS; letting a hold go anyway"
                );
            }
            inner.delete(let_go).await;
            inner.tasks.fetch_sub(1, Ordering::AcqRel);
            inner.task_ended.notify_waiters();
        });
    }
}

fn dedup(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys.dedup();
    keys
}

/// How taking one hold went.
enum Took {
    /// At this revision.
    At(u64),
    /// Another replica holds it, or this one is letting it go.
    Elsewhere,
}

impl Inner {
    fn value(&self) -> Vec<u8> {
        let value = HoldValue {
            replica: self.replica.clone(),
            until_ms: crate::base::time::unix_millis_now()
                .saturating_add(self.lease.as_millis() as u64),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// One taking of each of `keys` ends: the bucket keys no event holds any more, moved from
    /// `held` to `releasing` (to be deleted at their revision).
    fn count_down(&self, keys: Vec<String>) -> Vec<String> {
        let mut held = lock(&self.held);
        let mut releasing = lock(&self.releasing);
        let mut let_go = Vec::new();
        for key in dedup(keys) {
            let key = hold_key(self.clock.names(), &key);
            let Some(h) = held.get_mut(&key) else {
                continue;
            };
            h.count = h.count.saturating_sub(1);
            if h.count == 0 {
                releasing.insert(key.clone(), h.revision);
                held.remove(&key);
                let_go.push(key);
            }
        }
        let_go
    }

    async fn take(self: Arc<Self>, keys: Vec<String>) -> Holding {
        let mut taken = Vec::new();
        let mut newest = 0;
        for key in dedup(keys) {
            let bucket_key = hold_key(self.clock.names(), &key);
            if let Some(h) = lock(&self.held).get_mut(&bucket_key) {
                h.count += 1;
                taken.push(key);
                continue;
            }
            match self.take_one(&bucket_key).await {
                Took::At(revision) => {
                    lock(&self.held)
                        .entry(bucket_key)
                        .and_modify(|h| h.count += 1)
                        .or_insert(Held { revision, count: 1 });
                    newest = newest.max(revision);
                    taken.push(key);
                }
                Took::Elsewhere => {
                    self.release_now(taken);
                    return Holding::Elsewhere;
                }
            }
        }
        if newest > 0 && !self.clock.seen_up_to(newest, CATCH_UP).await {
            tracing::warn!(
                "the watch of the entities bucket lags behind; an organization's events wait"
            );
            self.release_now(taken);
            return Holding::Elsewhere;
        }
        Holding::Held
    }

    /// Lets go of holds just taken (another key of the event is held elsewhere): nothing was
    /// written under them, so no change time is waited for.
    fn release_now(self: &Arc<Self>, keys: Vec<String>) {
        let let_go = self.count_down(keys);
        if !let_go.is_empty() {
            let inner = self.clone();
            tokio::spawn(async move { inner.delete(let_go).await });
        }
    }

    async fn take_one(&self, key: &str) -> Took {
        if lock(&self.releasing).contains_key(key) {
            // Being deleted: taken again once it is gone.
            return Took::Elsewhere;
        }
        let entry = match self.bucket.entry(key).await {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a hold in NATS; an organization's events wait");
                return Took::Elsewhere;
            }
        };
        let written = match entry {
            None => self.bucket.create(key, self.value().into()).await.ok(),
            Some(e) if e.operation != kv::Operation::Put => self
                .bucket
                .update(key, self.value().into(), e.revision)
                .await
                .ok(),
            Some(e) => {
                let holder = serde_json::from_slice::<HoldValue>(&e.value).ok();
                let now = crate::base::time::unix_millis_now();
                if holder.as_ref().is_some_and(|h| h.until_ms > now) {
                    return Took::Elsewhere;
                }
                let taken = self
                    .bucket
                    .update(key, self.value().into(), e.revision)
                    .await
                    .ok();
                if taken.is_some() {
                    tracing::info!(
                        previous = holder.as_ref().map(|h| h.replica.as_str()),
                        "took over an organization's hold whose replica stopped renewing it"
                    );
                }
                taken
            }
        };
        written.map_or(Took::Elsewhere, Took::At)
    }

    /// Deletes holds let go (each at its revision, which a renewal may have moved on).
    async fn delete(&self, keys: Vec<String>) {
        for key in keys {
            for attempt in 0..5u32 {
                let Some(revision) = lock(&self.releasing).get(&key).copied() else {
                    break;
                };
                match self
                    .bucket
                    .delete_expect_revision(&key, Some(revision))
                    .await
                {
                    Ok(()) => break,
                    Err(e) if attempt == 4 => {
                        tracing::warn!(error = %e, "cannot let an organization's hold go; it ends after the lease");
                    }
                    // A renewal under way moves the revision on: it says so in a moment.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            lock(&self.releasing).remove(&key);
        }
    }
}

/// Renews this replica's holds every third of the lease until `stop`.
async fn renew(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let every = (inner.lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let held: Vec<(String, u64)> = lock(&inner.held)
            .iter()
            .map(|(k, h)| (k.clone(), h.revision))
            .collect();
        for (key, revision) in held {
            match inner
                .bucket
                .update(&key, inner.value().into(), revision)
                .await
            {
                Ok(renewed) => {
                    if let Some(h) = lock(&inner.held).get_mut(&key)
                        && h.revision == revision
                    {
                        h.revision = renewed;
                    } else if let Some(r) = lock(&inner.releasing).get_mut(&key)
                        && *r == revision
                    {
                        *r = renewed;
                    }
                }
                Err(e) => {
                    // NATS out of reach: tried again next time. Changed by another replica
                    // (this one could not renew it in time): lost.
                    let Ok(entry) = inner.bucket.entry(&key).await else {
                        continue;
                    };
                    if entry.is_some_and(|e| e.revision == revision) {
                        continue;
                    }
                    let mut held = lock(&inner.held);
                    if held.get(&key).is_some_and(|h| h.revision == revision) {
                        tracing::warn!(error = %e, "an organization's hold was lost (this replica could not renew it in time); another replica may deliver its events meanwhile");
                        held.remove(&key);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_keys_are_valid_nats_keys_apart_from_entity_times() {
        for key in ["group:acme", "group:a b/c", "group:ü"] {
            let k = hold_key(&Names::default(), key);
            assert!(k.starts_with("h."), "{k}");
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=.".contains(c)),
                "{k}"
            );
        }
    }
}
