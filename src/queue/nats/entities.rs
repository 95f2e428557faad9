//! The time of the last change applied per entity, shared by the replicas: the bucket
//! `zdmap_entities`, one key per entity (`e.<base64url of kind:key>`, the value the event time in
//! ms), bounded like the SQLite table (past [`DEFAULT_CAPACITY`] keys the oldest written go).
//!
//! Each replica keeps the times in memory ([`MemoryClock`]), fed by a watch on the bucket, so a
//! check costs no round trip; a change applied is written to the bucket at once (by
//! compare-and-set, so the later time wins) and reaches the other replicas within milliseconds.
//!
//! The holds on shared keys live in the same bucket ([`super::holds`]), so that one revision
//! orders both: a replica that takes a hold waits until its watch has come that far
//! ([`NatsClock::seen_up_to`]), and so knows every change the previous holder wrote before
//! letting go ([`NatsClock::written`]).

use crate::base::sync::lock;
use crate::deliver::order::{DEFAULT_CAPACITY, EntityClock, MemoryClock};
use async_nats::jetstream::kv;
use base64::Engine as _;
use futures_util::StreamExt as _;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// The bucket.
pub(crate) const ENTITIES_BUCKET: &str = "zdmap_entities";

/// Entities kept in the bucket at most.
pub(crate) const CAPACITY: i64 = DEFAULT_CAPACITY as i64;

fn key(entity: &str) -> String {
    format!(
        "e.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(entity)
    )
}

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

/// The last change time of `entity` in the bucket (for `zdmap dead-letters replay`).
pub(crate) async fn last_applied_in(bucket: &kv::Store, entity: &str) -> Option<i64> {
    bucket
        .get(key(entity))
        .await
        .ok()
        .flatten()
        .and_then(|v| time_of(&v))
}

/// The entity clock of one replica.
pub struct NatsClock {
    memory: MemoryClock,
    bucket: kv::Store,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The bucket's last revision the watch has seen.
    seen: watch::Sender<u64>,
    writes: Arc<Writes>,
}

/// Writes of change times to the bucket: numbered as they start, each removed when it ends.
#[derive(Default)]
struct Writes {
    next: AtomicU64,
    pending: Mutex<BTreeSet<u64>>,
    ended: Notify,
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
    /// Starts following the bucket.
    pub fn start(bucket: kv::Store) -> Arc<NatsClock> {
        let clock = Arc::new(NatsClock {
            memory: MemoryClock::default(),
            bucket: bucket.clone(),
            watcher: Mutex::new(None),
            seen: watch::Sender::new(0),
            writes: Arc::default(),
        });
        let watcher = tokio::spawn(follow(bucket, Arc::downgrade(&clock)));
        *lock(&clock.watcher) = Some(watcher);
        clock
    }

    /// Waits (up to `limit`) until the watch has seen the bucket's revision `revision`, so that
    /// every change time written before it is known here. `false` when it has not.
    pub(crate) async fn seen_up_to(&self, revision: u64, limit: Duration) -> bool {
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(limit, seen.wait_for(|at| *at >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits (up to `limit`) until the change times this replica started writing before now
    /// are in the bucket (or given up). `false` when some are not yet.
    pub async fn written(&self, limit: Duration) -> bool {
        let writes = &self.writes;
        let before = writes.next.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ended = writes.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if lock(&writes.pending).first().is_none_or(|w| *w >= before) {
                return true;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return false;
            }
        }
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
        let key = key(entity);
        let writing = {
            let mut pending = lock(&self.writes.pending);
            let number = self.writes.next.fetch_add(1, Ordering::AcqRel);
            pending.insert(number);
            Writing {
                number,
                writes: self.writes.clone(),
            }
        };
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

/// Feeds the times every replica writes into `clock`'s memory.
async fn follow(bucket: kv::Store, clock: Weak<NatsClock>) {
    loop {
        if let Ok(mut watch) = bucket.watch_all().await {
            while let Some(Ok(entry)) = watch.next().await {
                let Some(clock) = clock.upgrade() else {
                    return;
                };
                clock.seen.send_if_modified(|seen| {
                    let later = entry.revision > *seen;
                    *seen = (*seen).max(entry.revision);
                    later
                });
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                if let (Some(entity), Some(at)) = (entity_of(&entry.key), time_of(&entry.value)) {
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
            let k = key(entity);
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=./".contains(c)),
                "{k}"
            );
            assert_eq!(entity_of(&k).as_deref(), Some(entity));
        }
    }
}
