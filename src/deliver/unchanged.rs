//! Writes that would change nothing: the last write applied per entity, as a digest.
//!
//! A step that declares `skip_unchanged` (an upsert) is not sent when its rendered request has
//! the same digest as the last write applied to the action's entity (`user:u1`), within the
//! step's span: Zendesk already holds exactly that. What the write's answer taught is kept
//! beside the digest (the step's outputs, the ids learned), so that a skipped write gives later
//! steps and lookups what a sent one would have; a step whose outputs the record does not all
//! have is sent.
//!
//! Only a write that was answered with success is remembered. Before any write to an entity
//! goes out, what was remembered of it is forgotten: a write that fails in doubt (a timeout,
//! a 5xx), or a different write to the same entity (another step, another action), leaves no
//! digest to skip the next one by.
//!
//! [`MemoryWrites`] keeps the records in memory (`zdmap send`, a run); the SQLite queue keeps
//! them in the data directory for `zdmap serve`. Both are bounded in entries (the least
//! recently written entity goes first), and a record is never larger than
//! [`MAX_RECORD_BYTES`].

use crate::base::sync::lock;
use crate::mapping::request::Request;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest as _;
use std::sync::Mutex;

/// Entities remembered by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The largest record kept, serialized (a write whose answer teaches more is not remembered).
pub const MAX_RECORD_BYTES: usize = 1024;

/// What is remembered of the last write applied to an entity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppliedWrite {
    /// The digest of the write ([`digest`]).
    pub digest: String,
    /// When it was applied (wall clock), ms since the Unix epoch.
    pub at_ms: i64,
    /// The step's outputs read from its answer.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub outputs: IndexMap<String, Value>,
    /// The ids its answer taught the lookups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned: Vec<LearnedId>,
}

/// An id a write's answer taught: `resolver` by `by` of `key` is `value`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LearnedId {
    pub resolver: String,
    pub by: String,
    pub key: String,
    pub value: Value,
}

impl AppliedWrite {
    /// The record as stored, unless it is larger than [`MAX_RECORD_BYTES`].
    pub fn encode(&self) -> Option<String> {
        serde_json::to_string(self)
            .ok()
            .filter(|s| s.len() <= MAX_RECORD_BYTES)
    }

    /// A record read back; `None` when it does not read as one.
    pub fn decode(text: &str) -> Option<AppliedWrite> {
        serde_json::from_str(text).ok()
    }

    /// Whether it is the same write as `digest`, applied less than `span` before `now_ms`.
    pub(crate) fn holds(&self, digest: &str, span: std::time::Duration, now_ms: i64) -> bool {
        let span_ms = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
        self.digest == digest && now_ms.saturating_sub(self.at_ms) < span_ms
    }
}

/// The digest of a write: the method, the path and query, and the body (16 bytes of SHA-256,
/// in hex). Which step sends it does not count: the same request to the same entity is the
/// same write (a group call's membership and an identify's of the same user and organization).
pub(crate) fn digest(request: &Request) -> String {
    let mut hash = sha2::Sha256::new();
    for part in [request.method.as_str(), &request.path_and_query()] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    if let Some(body) = &request.body {
        hash.update(body.to_string().as_bytes());
    }
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Now, as [`AppliedWrite::at_ms`] counts.
pub(crate) fn now_ms() -> i64 {
    i64::try_from(crate::base::time::unix_millis_now()).unwrap_or(i64::MAX)
}

/// A forgetting under way ([`AppliedWrites::forgetting`]): `true` once it is done.
pub type Forgetting = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

/// Where the last write applied per entity is remembered.
pub trait AppliedWrites: Send + Sync + std::fmt::Debug {
    /// The last write applied to `entity`, if it is remembered.
    fn last_write(&self, entity: &str) -> Option<AppliedWrite>;
    /// `write` was applied to `entity` (a record too large is not kept).
    fn write_applied(&self, entity: &str, write: &AppliedWrite);
    /// A write to `entity` is going out: what was remembered no longer says what Zendesk holds.
    fn forget_write(&self, entity: &str);
    /// [`AppliedWrites::forget_write`], done once every instance that may read the record
    /// next (the replicas of a shared queue) reads none: a write to `entity` goes out after it.
    /// `false` when that could not be made sure of.
    fn forgetting(&self, entity: &str) -> Forgetting {
        self.forget_write(entity);
        Box::pin(std::future::ready(true))
    }
}

/// [`AppliedWrites`] in memory, bounded: the least recently written entity goes first. An
/// entity forgotten is kept as known to have no record (until it is pushed out), so that a
/// store behind it ([`MemoryWrites::known`]) is not asked while its own forgetting may not be
/// written yet.
#[derive(Debug)]
pub struct MemoryWrites {
    capacity: usize,
    records: Mutex<IndexMap<String, Option<AppliedWrite>>>,
}

impl MemoryWrites {
    pub fn new(capacity: usize) -> MemoryWrites {
        MemoryWrites {
            capacity: capacity.max(1),
            records: Mutex::new(IndexMap::new()),
        }
    }

    /// What is known of `entity`: its record, or that it has none (`Some(None)`); `None` when
    /// nothing is known.
    pub(crate) fn known(&self, entity: &str) -> Option<Option<AppliedWrite>> {
        lock(&self.records).get(entity).cloned()
    }

    fn set(&self, entity: &str, record: Option<AppliedWrite>) {
        let mut records = lock(&self.records);
        records.shift_remove(entity);
        records.insert(entity.to_owned(), record);
        while records.len() > self.capacity {
            records.shift_remove_index(0);
        }
    }
}

impl Default for MemoryWrites {
    fn default() -> Self {
        MemoryWrites::new(DEFAULT_CAPACITY)
    }
}

impl AppliedWrites for MemoryWrites {
    fn last_write(&self, entity: &str) -> Option<AppliedWrite> {
        self.known(entity).flatten()
    }

    fn write_applied(&self, entity: &str, write: &AppliedWrite) {
        let kept = write.encode().is_some().then(|| write.clone());
        self.set(entity, kept);
    }

    fn forget_write(&self, entity: &str) {
        self.set(entity, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::request::Method;
    use std::time::Duration;

    fn write(digest: &str, at_ms: i64) -> AppliedWrite {
        AppliedWrite {
            digest: digest.into(),
            at_ms,
            outputs: IndexMap::from([("id".to_owned(), Value::from(7))]),
            learned: Vec::new(),
        }
    }

    #[test]
    fn a_record_holds_for_the_same_write_within_its_span() {
        let w = write("d", 1_000);
        assert!(w.holds("d", Duration::from_secs(10), 10_999));
        assert!(!w.holds("d", Duration::from_secs(10), 11_000), "expired");
        assert!(
            !w.holds("e", Duration::from_secs(10), 2_000),
            "another write"
        );
    }

    #[test]
    fn the_digest_tells_bodies_apart_and_nothing_else() {
        let request = |body: Value| Request {
            method: Method::Post,
            path: "/api/v2/users/create_or_update".into(),
            endpoint: "users/create_or_update".into(),
            query: IndexMap::new(),
            headers: IndexMap::new(),
            body: Some(body),
        };
        let a = request(serde_json::json!({"user": {"email": "a@x", "name": "A"}}));
        let b = request(serde_json::json!({"user": {"email": "a@x", "name": "B"}}));
        assert_eq!(digest(&a), digest(&a.clone()));
        assert_ne!(digest(&a), digest(&b));
        let mut elsewhere = a.clone();
        elsewhere.path = "/api/v2/organizations/create_or_update".into();
        assert_ne!(digest(&a), digest(&elsewhere));
        assert_eq!(digest(&a).len(), 32);
    }

    #[test]
    fn memory_forgets_the_least_recently_written_and_what_a_write_replaces() {
        let m = MemoryWrites::new(2);
        m.write_applied("user:1", &write("a", 1));
        m.write_applied("user:2", &write("b", 1));
        m.write_applied("user:1", &write("c", 2));
        m.write_applied("user:3", &write("d", 3));
        assert_eq!(
            m.last_write("user:2"),
            None,
            "the least recently written goes"
        );
        assert_eq!(m.last_write("user:1").map(|w| w.digest), Some("c".into()));
        m.forget_write("user:1");
        assert_eq!(m.last_write("user:1"), None);
        assert_eq!(m.known("user:1"), Some(None), "known to have none");
        assert_eq!(m.known("user:9"), None, "not known");
        let mut big = write("e", 4);
        big.outputs
            .insert("blob".into(), Value::from("x".repeat(MAX_RECORD_BYTES)));
        m.write_applied("user:3", &big);
        assert_eq!(
            m.last_write("user:3"),
            None,
            "a record too large is not kept"
        );
    }
}
