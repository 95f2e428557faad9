//! What the replicas share per entity, in the bucket `zdmap_entities`: the time of the last
//! change applied (`e.<base64url of kind:key>`, the value the event time in ms) and the last
//! write applied, for `skip_unchanged` ([`super::applied`], keys `w.…`). Each destination has
//! its own, under its keys ([`Names::key`]: the default's as above, another's `d.<name>.e.…`):
//! a change applied to one Zendesk account says nothing of another. The bucket is bounded
//! (past [`CAPACITY`] keys, all kinds and destinations together, the oldest written go).
//!
//! Each clock follows the whole bucket (so that the revisions it has seen are the bucket's),
//! and keeps its destination's keys only.
//!
//! Each replica keeps both in memory ([`MemoryClock`], [`MemoryWrites`]), fed by one watch on
//! the bucket, so a check costs no round trip; a change applied is written to the bucket at once
//! (by compare-and-set, so the later time wins) and reaches the other replicas within
//! milliseconds. The records of applied writes in memory are fed by the watch alone, in the
//! bucket's order, and their memory is as large as the bucket: an entity with no record in
//! memory has none in the bucket, as far as the watch has come.
//!
//! The holds on shared keys live in the same bucket ([`super::holds`]), so that one revision
//! orders both: a replica that takes a hold waits until its watch has come that far
//! ([`NatsClock::seen_up_to`]), and so knows every change and every record the previous holder
//! wrote before letting go ([`NatsClock::written`]). A replica that takes a partition waits the
//! same way for the bucket's last revision ([`NatsClock::caught_up`]; the previous owner let go
//! once its events were settled and its writes written, or died).
//!
//! Why a record read is never older than the last write applied to its entity: the writes to
//! one entity are made by one replica at a time (a user's and its memberships' by the events of
//! the user's partition, an organization's by the `group` calls holding it), each new holder
//! reads only once its watch has seen what the previous one wrote, and a record is forgotten
//! in the bucket, and that seen by the watch, before any write to its entity goes out
//! ([`NatsClock::forgetting`]): a replica that dies with a write in doubt leaves no record to
//! skip the next one by. A record is written after the write was answered, in the background;
//! lost (a replica killed first), the next identical write is sent again. An entity that
//! events of several partitions write without a hold (a mapping of one's own upserting an
//! organization from an identify's traits) has no such order, for its change times either.

use super::applied;
use super::names::Names;
use crate::base::sync::lock;
use crate::deliver::order::{DEFAULT_CAPACITY, EntityClock, MemoryClock};
use crate::deliver::unchanged::{AppliedWrite, AppliedWrites as _, Forgetting, MemoryWrites};
use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use futures_util::StreamExt as _;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// The bucket.
pub(crate) const ENTITIES_BUCKET: &str = "zdmap_entities";

/// Entities kept in the bucket at most.
pub(crate) const CAPACITY: i64 = DEFAULT_CAPACITY as i64;

/// The bucket key of `entity`'s change time for the destination of `names`.
fn key(names: &Names, entity: &str) -> String {
    names.key(&format!(
        "e.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(entity)
    ))
}

/// The entity whose change time `key` (a destination's key, without its prefix) is.
fn entity_of(key: &str) -> Option<String> {
    let encoded = key.strip_prefix("e.")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn time_of(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The last change time of `entity` applied to the destination of `names`, in the bucket (for
/// `zdmap dead-letters replay`).
pub(crate) async fn last_applied_in(
    bucket: &kv::Store,
    names: &Names,
    entity: &str,
) -> Option<i64> {
    bucket
        .get(key(names, entity))
        .await
        .ok()
        .flatten()
        .and_then(|v| time_of(&v))
}

/// The entity clock and the records of applied writes of one destination in one replica.
pub struct NatsClock {
    /// The destination whose keys these are.
    names: Names,
    memory: MemoryClock,
    /// Fed by the watch alone; as many entries as the bucket has keys.
    records: MemoryWrites,
    bucket: kv::Store,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The bucket's last revision the watch has seen.
    seen: watch::Sender<u64>,
    writes: Arc<Writes>,
}

/// Writes to the bucket (change times, records): numbered as they start, each removed when it
/// ends; a record's names its entity.
#[derive(Default)]
struct Writes {
    next: AtomicU64,
    pending: Mutex<BTreeMap<u64, Option<String>>>,
    ended: Notify,
}

impl Writes {
    /// A write starts (of `entity`'s record, if named).
    fn start(self: &Arc<Self>, entity: Option<&str>) -> Writing {
        let mut pending = lock(&self.pending);
        let number = self.next.fetch_add(1, Ordering::AcqRel);
        pending.insert(number, entity.map(str::to_owned));
        Writing {
            number,
            writes: self.clone(),
        }
    }

    /// Whether a record of `entity` is being written.
    fn recording(&self, entity: &str) -> bool {
        lock(&self.pending)
            .values()
            .any(|e| e.as_deref() == Some(entity))
    }

    /// Waits (up to `deadline`) until no write `until` says is pending is. `false` when one is.
    async fn ended(&self, deadline: tokio::time::Instant, until: impl Fn(&Self) -> bool) -> bool {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if until(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return false;
            }
        }
    }
}

/// Ends a write when dropped (however its task ends).
struct Writing {
    number: u64,
    writes: Arc<Writes>,
}

impl Drop for Writing {
    fn drop(&mut self) {
        lock(&self.writes.pending).remove(&self.number);
        self.writes.ended.notify_waiters();
    }
}

impl std::fmt::Debug for NatsClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsClock").finish_non_exhaustive()
    }
}

impl NatsClock {
    /// Starts following the bucket, for the destination of `names`.
    pub fn start(bucket: kv::Store, names: Names) -> Arc<NatsClock> {
        let clock = Arc::new(NatsClock {
            names,
            memory: MemoryClock::default(),
            records: MemoryWrites::new(DEFAULT_CAPACITY),
            bucket: bucket.clone(),
            watcher: Mutex::new(None),
            seen: watch::Sender::new(0),
            writes: Arc::default(),
        });
        let watcher = tokio::spawn(follow(bucket, Arc::downgrade(&clock)));
        *lock(&clock.watcher) = Some(watcher);
        clock
    }

    /// The destination whose keys the clock keeps.
    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    /// Waits (up to `limit`) until the watch has seen the bucket's revision `revision`, so that
    /// every change time written before it is known here. `false` when it has not.
    pub(crate) async fn seen_up_to(&self, revision: u64, limit: Duration) -> bool {
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(limit, seen.wait_for(|at| *at >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits (up to `limit`) until the watch has seen the bucket's last revision now (a
    /// partition taken: what its previous owner wrote is known here). `false` when it has not,
    /// or the bucket could not be asked.
    pub(crate) async fn caught_up(&self, js: &jetstream::Context, limit: Duration) -> bool {
        let last = match js.get_stream(format!("KV_{ENTITIES_BUCKET}")).await {
            Ok(stream) => stream.cached_info().state.last_sequence,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask NATS how far the entities bucket goes");
                return false;
            }
        };
        self.seen_up_to(last, limit).await
    }

    /// Waits (up to `limit`) until the change times and records this replica started writing
    /// before now are in the bucket (or given up). `false` when some are not yet.
    pub async fn written(&self, limit: Duration) -> bool {
        let before = self.writes.next.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + limit;
        self.writes
            .ended(deadline, |w| {
                lock(&w.pending)
                    .first_key_value()
                    .is_none_or(|(n, _)| *n >= before)
            })
            .await
    }

    /// The last write applied to `entity`, as far as the watch has come.
    pub(crate) fn last_write(&self, entity: &str) -> Option<AppliedWrite> {
        self.records.last_write(entity)
    }

    /// `write` was applied to `entity`: its record is written to the bucket (in the background;
    /// one too large is not, the entity stays forgotten).
    pub(crate) fn write_applied(&self, entity: &str, write: &AppliedWrite) {
        let Some(value) = write.encode() else {
            return;
        };
        let writing = self.writes.start(Some(entity));
        let bucket = self.bucket.clone();
        let key = applied::key(&self.names, entity);
        let mut seen = self.seen.subscribe();
        tokio::spawn(async move {
            // Ends once the watch has seen it too: a record not being written is in memory.
            let _writing = writing;
            match bucket.put(&key, value.into()).await {
                Ok(revision) => {
                    let seen = seen.wait_for(|at| *at >= revision);
                    let _ = tokio::time::timeout(super::holds::CATCH_UP, seen).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the last write applied to an entity in NATS; the next identical write is sent");
                }
            }
        });
    }

    /// Forgets `entity`'s record: once this replica's own record of it being written has
    /// landed (and been seen by the watch), an empty value is written and seen by the watch.
    /// Nothing is written when the entity has no record (as far as the watch has come) and none
    /// is being written. `true` once it is forgotten everywhere.
    pub(crate) fn forgetting(self: &Arc<Self>, entity: &str) -> Forgetting {
        if self.records.last_write(entity).is_none() && !self.writes.recording(entity) {
            return Box::pin(std::future::ready(true));
        }
        let clock = self.clone();
        let entity = entity.to_owned();
        let forgotten = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + super::holds::CATCH_UP;
            let recorded = clock
                .writes
                .ended(deadline, |w| !w.recording(&entity))
                .await;
            if !recorded {
                tracing::warn!(%entity, "an entity's record is still being written to NATS");
                return false;
            }
            let _writing = clock.writes.start(None);
            let key = applied::key(&clock.names, &entity);
            for _ in 0..3 {
                match clock.bucket.put(&key, Vec::new().into()).await {
                    Ok(revision) => {
                        return clock.seen_up_to(revision, super::holds::CATCH_UP).await;
                    }
                    Err(e) => {
                        tracing::warn!(%entity, error = %e, "cannot forget an entity's record in NATS; trying again");
                    }
                }
            }
            false
        });
        Box::pin(async move { forgotten.await.unwrap_or(false) })
    }
}

impl Drop for NatsClock {
    fn drop(&mut self) {
        if let Some(w) = lock(&self.watcher).take() {
            w.abort();
        }
    }
}

impl EntityClock for NatsClock {
    fn last_applied(&self, entity: &str) -> Option<i64> {
        self.memory.last_applied(entity)
    }

    fn applied(&self, entity: &str, at_ms: i64) {
        self.memory.applied(entity, at_ms);
        let bucket = self.bucket.clone();
        let key = key(&self.names, entity);
        let writing = self.writes.start(None);
        tokio::spawn(async move {
            let _writing = writing;
            for _ in 0..10 {
                let entry = match bucket.entry(&key).await {
                    Ok(e) => e.filter(|e| e.operation == kv::Operation::Put),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read an entity's last change time from NATS");
                        return;
                    }
                };
                if entry
                    .as_ref()
                    .and_then(|e| time_of(&e.value))
                    .is_some_and(|known| known >= at_ms)
                {
                    return;
                }
                let value = at_ms.to_string();
                let written = match entry {
                    Some(e) => bucket.update(&key, value.into(), e.revision).await.is_ok(),
                    None => bucket.create(&key, value.into()).await.is_ok(),
                };
                if written {
                    return;
                }
            }
        });
    }
}

/// Feeds the bucket into `clock`'s memory: each key's last value, then every change any
/// replica writes, in the bucket's order.
async fn follow(bucket: kv::Store, clock: Weak<NatsClock>) {
    loop {
        if let Ok(mut watch) = bucket.watch_with_history(">").await {
            while let Some(Ok(entry)) = watch.next().await {
                let Some(clock) = clock.upgrade() else {
                    return;
                };
                clock.seen.send_if_modified(|seen| {
                    let later = entry.revision > *seen;
                    *seen = (*seen).max(entry.revision);
                    later
                });
                // Another destination's key: seen (its revision counts), not kept.
                let Some(key) = clock.names.own_key(&entry.key) else {
                    continue;
                };
                if let Some(entity) = applied::entity_of(key) {
                    match applied::record_of(&entry.value)
                        .filter(|_| entry.operation == kv::Operation::Put)
                    {
                        Some(record) => clock.records.write_applied(&entity, &record),
                        None => clock.records.forget_write(&entity),
                    }
                    continue;
                }
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                if let (Some(entity), Some(at)) = (entity_of(key), time_of(&entry.value)) {
                    clock.memory.applied(&entity, at);
                }
            }
        }
        if clock.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_keys_are_valid_nats_keys_and_read_back() {
        for entity in ["ticket:123", "membership:u1/acme", "user:a b@c.d"] {
            let k = key(&Names::default(), entity);
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=./".contains(c)),
                "{k}"
            );
            assert_eq!(entity_of(&k).as_deref(), Some(entity));
            let eu = Names::of("eu").expect("a name");
            let k = key(&eu, entity);
            assert_eq!(eu.own_key(&k).and_then(entity_of).as_deref(), Some(entity));
            assert_eq!(entity_of(&k), None);
        }
    }
}
