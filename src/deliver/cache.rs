//! The resolver cache: answers of lookups (`user` by `email` = x → 123), bounded and with a TTL.
//!
//! One cache per run (or per server), shared by all workers. Each resolver has its own capacity
//! and TTL from `destination.yaml`; when a resolver's part is full, the oldest entry goes.
//! Entries come from lookups and from responses that already carry the id (`learn`).
//!
//! A lookup that found nothing is remembered too, for a short while ([`LookupCache::mark_missing`]):
//! while events wait for a record that does not exist yet, the others that need it wait without
//! asking Zendesk again. The mark lasts 1 s, then twice as long each time the record is still
//! missing, up to a minute; an answer (a lookup or `learn`) clears it at once.

use crate::base::sync::lock;
use indexmap::IndexMap;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bounded TTL cache keyed by (resolver, by, key).
#[derive(Debug, Default)]
pub struct LookupCache {
    parts: Mutex<HashMap<String, Part>>,
    /// (resolver, by, key) → the record was not found; oldest first.
    missing: Mutex<IndexMap<(String, String, String), Miss>>,
}

/// What the cache knows of a key.
#[derive(Clone, Debug, PartialEq)]
pub enum Cached {
    Found(Value),
    /// Looked up a moment ago and not found.
    Missing,
    Unknown,
}

#[derive(Debug)]
struct Miss {
    until: Instant,
    ttl: Duration,
}

/// How long a first "not found" is remembered, and the longest.
const FIRST_MISS: Duration = Duration::from_secs(1);
const LONGEST_MISS: Duration = Duration::from_secs(60);
/// Keys remembered as missing at most (the oldest go first).
const MISSING_CAPACITY: usize = 100_000;

#[derive(Debug)]
struct Part {
    ttl: Duration,
    capacity: usize,
    /// (by, key) → (value, stored at), oldest first.
    entries: IndexMap<(String, String), (Value, Instant)>,
}

impl LookupCache {
    pub fn new() -> LookupCache {
        LookupCache::default()
    }

    /// A cached value that has not expired.
    pub fn get(&self, resolver: &str, by: &str, key: &str) -> Option<Value> {
        let mut parts = lock(&self.parts);
        let part = parts.get_mut(resolver)?;
        let k = (by.to_owned(), key.to_owned());
        match part.entries.get(&k) {
            Some((v, at)) if at.elapsed() < part.ttl => Some(v.clone()),
            Some(_) => {
                part.entries.shift_remove(&k);
                None
            }
            None => None,
        }
    }

    /// A cached value, a recent "not found", or nothing known.
    pub fn lookup(&self, resolver: &str, by: &str, key: &str) -> Cached {
        if let Some(v) = self.get(resolver, by, key) {
            return Cached::Found(v);
        }
        let missing = lock(&self.missing);
        match missing.get(&triple(resolver, by, key)) {
            Some(miss) if miss.until > Instant::now() => Cached::Missing,
            _ => Cached::Unknown,
        }
    }

    /// Remembers that a lookup found nothing (see the module docs).
    pub(crate) fn mark_missing(&self, resolver: &str, by: &str, key: &str) {
        let mut missing = lock(&self.missing);
        let k = triple(resolver, by, key);
        let ttl = missing
            .shift_remove(&k)
            .map_or(FIRST_MISS, |m| (m.ttl * 2).min(LONGEST_MISS));
        while missing.len() >= MISSING_CAPACITY {
            missing.shift_remove_index(0);
        }
        missing.insert(
            k,
            Miss {
                until: Instant::now() + ttl,
                ttl,
            },
        );
    }

    /// Stores a value; the oldest entries of the resolver go when it is full.
    pub fn put(
        &self,
        resolver: &str,
        ttl: Duration,
        capacity: usize,
        by: &str,
        key: &str,
        value: Value,
    ) {
        lock(&self.missing).shift_remove(&triple(resolver, by, key));
        if capacity == 0 || ttl.is_zero() {
            return;
        }
        let mut parts = lock(&self.parts);
        let part = parts.entry(resolver.to_owned()).or_insert_with(|| Part {
            ttl,
            capacity,
            entries: IndexMap::new(),
        });
        let k = (by.to_owned(), key.to_owned());
        part.entries.shift_remove(&k);
        while part.entries.len() >= part.capacity {
            part.entries.shift_remove_index(0);
        }
        part.entries.insert(k, (value, Instant::now()));
    }

    /// Drops every cached answer of a resolver.
    pub fn forget(&self, resolver: &str) {
        let mut parts = lock(&self.parts);
        parts.remove(resolver);
    }

    /// Number of entries (all resolvers).
    pub fn len(&self) -> usize {
        let parts = lock(&self.parts);
        parts.values().map(|p| p.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn triple(resolver: &str, by: &str, key: &str) -> (String, String, String) {
    (resolver.to_owned(), by.to_owned(), key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bounded_and_expiring() {
        let c = LookupCache::new();
        let ttl = Duration::from_secs(60);
        c.put("user", ttl, 2, "email", "a", json!(1));
        c.put("user", ttl, 2, "email", "b", json!(2));
        c.put("user", ttl, 2, "email", "c", json!(3));
        assert_eq!(c.get("user", "email", "a"), None, "oldest evicted");
        assert_eq!(c.get("user", "email", "c"), Some(json!(3)));
        assert_eq!(c.len(), 2);
        c.put(
            "org",
            Duration::from_millis(1),
            10,
            "external_id",
            "x",
            json!(9),
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.get("org", "external_id", "x"), None, "expired");
    }

    #[test]
    fn a_missing_mark_is_short_and_an_answer_clears_it() {
        let c = LookupCache::new();
        assert_eq!(c.lookup("user", "email", "a"), Cached::Unknown);
        c.mark_missing("user", "email", "a");
        assert_eq!(c.lookup("user", "email", "a"), Cached::Missing);
        assert_eq!(c.lookup("user", "email", "b"), Cached::Unknown);
        c.put("user", Duration::from_secs(60), 10, "email", "a", json!(5));
        assert_eq!(c.lookup("user", "email", "a"), Cached::Found(json!(5)));
    }
}
