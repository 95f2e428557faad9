//! The resolver cache: answers of lookups (`user` by `email` = x → 123), bounded and with a TTL.
//!
//! One cache per run (or per server), shared by all workers. Each resolver has its own capacity
//! and TTL from `destination.yaml`; when a resolver's part is full, the oldest entry goes.
//! Entries come from lookups and from responses that already carry the id (`learn`).

use indexmap::IndexMap;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bounded TTL cache keyed by (resolver, by, key).
#[derive(Debug, Default)]
pub struct LookupCache {
    parts: Mutex<HashMap<String, Part>>,
}

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
        let mut parts = self
            .parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        if capacity == 0 || ttl.is_zero() {
            return;
        }
        let mut parts = self
            .parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        let mut parts = self
            .parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        parts.remove(resolver);
    }

    /// Number of entries (all resolvers).
    pub fn len(&self) -> usize {
        let parts = self
            .parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        parts.values().map(|p| p.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
}
