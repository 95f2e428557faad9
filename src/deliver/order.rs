//! Changes in the order they happened: the time of the last change applied to each entity.
//!
//! An action names the records it changes (`entities:` in its YAML: `ticket:123`,
//! `membership:u1/acme`). Once it is applied, the event's time is recorded for each of them in
//! an [`EntityClock`]; a later change of the same entity whose event is older (a replayed dead
//! letter, a retry that comes late) is skipped and reported instead of being applied over the
//! newer one. The event's time is its `timestamp`, else `originalTimestamp`, else `receivedAt`
//! (set by `zdmap serve`), else `sentAt`; an event with none is never held back nor recorded.
//!
//! [`MemoryClock`] keeps the times in memory (`zdmap send`); a durable queue keeps them on disk
//! for `zdmap serve` (the SQLite queue implements the trait). Both are bounded:
//! past their capacity the least recently changed entity is forgotten.

use crate::sync::lock;
use crate::time::parse_rfc3339;
use indexmap::IndexMap;
use serde_json::Value;
use std::sync::Mutex;

/// Entities remembered by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// A change of an entity by an event at a time: what a dead letter records of its action, so
/// that a replay can tell whether a newer change was applied since.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntityChange {
    /// `kind:key`, e.g. `ticket:123`.
    pub entity: String,
    /// The event's time, ms since the Unix epoch.
    pub at_ms: i64,
}

impl EntityChange {
    /// Whether a newer change of the entity was applied, by `clock`.
    pub fn is_stale(&self, clock: &dyn EntityClock) -> bool {
        clock
            .last_applied(&self.entity)
            .is_some_and(|last| last > self.at_ms)
    }
}

/// Where the time of the last change applied per entity is kept.
pub trait EntityClock: Send + Sync + std::fmt::Debug {
    /// The event time (ms since the Unix epoch) of the last change applied to `entity`.
    fn last_applied(&self, entity: &str) -> Option<i64>;
    /// A change of `entity` from an event at `at_ms` was applied; the later time is kept.
    fn applied(&self, entity: &str, at_ms: i64);
}

/// An [`EntityClock`] in memory, bounded: the least recently changed entity goes first.
#[derive(Debug)]
pub struct MemoryClock {
    capacity: usize,
    times: Mutex<IndexMap<String, i64>>,
}

impl MemoryClock {
    pub fn new(capacity: usize) -> MemoryClock {
        MemoryClock {
            capacity: capacity.max(1),
            times: Mutex::new(IndexMap::new()),
        }
    }
}

impl Default for MemoryClock {
    fn default() -> Self {
        MemoryClock::new(DEFAULT_CAPACITY)
    }
}

impl EntityClock for MemoryClock {
    fn last_applied(&self, entity: &str) -> Option<i64> {
        lock(&self.times).get(entity).copied()
    }

    fn applied(&self, entity: &str, at_ms: i64) {
        let mut times = lock(&self.times);
        let at = times
            .shift_remove(entity)
            .map_or(at_ms, |known| known.max(at_ms));
        times.insert(entity.to_owned(), at);
        while times.len() > self.capacity {
            times.shift_remove_index(0);
        }
    }
}

/// The time of an event's change (ms since the Unix epoch): see the module docs.
pub fn event_time(event: &Value) -> Option<i64> {
    ["timestamp", "originalTimestamp", "receivedAt", "sentAt"]
        .iter()
        .find_map(|k| event.get(k).and_then(Value::as_str).and_then(parse_rfc3339))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_event_time_falls_back_to_the_received_time() {
        let e = json!({"timestamp": "bad", "receivedAt": "1970-01-01T00:00:02Z"});
        assert_eq!(event_time(&e), Some(2000));
        assert_eq!(event_time(&json!({"type": "track"})), None);
    }

    #[test]
    fn the_clock_keeps_the_latest_time_and_forgets_the_least_recently_changed() {
        let clock = MemoryClock::new(2);
        clock.applied("ticket:1", 20);
        clock.applied("ticket:1", 10);
        assert_eq!(clock.last_applied("ticket:1"), Some(20));
        clock.applied("ticket:2", 5);
        clock.applied("ticket:1", 30);
        clock.applied("ticket:3", 1);
        assert_eq!(
            clock.last_applied("ticket:2"),
            None,
            "the least recently changed goes"
        );
        assert_eq!(clock.last_applied("ticket:1"), Some(30));
        assert_eq!(clock.last_applied("ticket:3"), Some(1));
    }
}
