//! Changes in the order they happened: the time of the last change applied to each entity.
//!
//! An action names the records it changes (`entities:` in its YAML: `ticket:123`,
//! `membership:u1/acme`). Once it is applied, the event's time is recorded for each of them in
//! an [`EntityClock`]; a later change of the same entity whose event is older (a replayed dead
//! letter, a retry that comes late) is skipped and reported instead of being applied over the
//! newer one. The event's time is its `timestamp`, else `originalTimestamp`, else `receivedAt`
//! (set by `zdmap serve`), else `sentAt`; an event with none is never held back nor recorded.
//! A sender's time more than [`MAX_FUTURE_SKEW_MS`] past the time the event was received (its
//! `receivedAt`, else now) is not believed: the event is ordered by its receive time, so one
//! event stamped `9999-12-31` cannot freeze a record for good.
//!
//! [`MemoryClock`] keeps the times in memory (`zdmap send`); a durable queue keeps them on disk
//! for `zdmap serve` (the SQLite queue implements the trait). Both are bounded:
//! past their capacity the least recently changed entity is forgotten.

use crate::base::sync::lock;
use crate::base::time::parse_rfc3339;
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
    pub(crate) fn is_stale(&self, clock: &dyn EntityClock) -> bool {
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

/// How far past its receive time a sender's clock is believed (Segment corrects clocks too).
pub(crate) const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

/// An event's time for ordering its changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EventTime {
    /// Ms since the Unix epoch.
    pub at_ms: i64,
    /// The sender's time was too far in the future and the receive time stands in for it.
    pub clamped: bool,
}

/// The time of an event's change: see the module docs. `now_ms` stands in for the receive
/// time of an event that has no `receivedAt` (`zdmap send`).
pub(crate) fn event_time(event: &Value, now_ms: i64) -> Option<EventTime> {
    let field = |k: &str| event.get(k).and_then(Value::as_str).and_then(parse_rfc3339);
    let received = field("receivedAt");
    let stated = ["timestamp", "originalTimestamp"]
        .into_iter()
        .find_map(field)
        .or(received)
        .or_else(|| field("sentAt"))?;
    let receive = received.unwrap_or(now_ms);
    Some(if stated > receive.saturating_add(MAX_FUTURE_SKEW_MS) {
        EventTime {
            at_ms: receive,
            clamped: true,
        }
    } else {
        EventTime {
            at_ms: stated,
            clamped: false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_event_time_falls_back_to_the_received_time() {
        let at = |ms| {
            Some(EventTime {
                at_ms: ms,
                clamped: false,
            })
        };
        let e = json!({"timestamp": "bad", "receivedAt": "1970-01-01T00:00:02Z"});
        assert_eq!(event_time(&e, 0), at(2000));
        assert_eq!(event_time(&json!({"type": "track"}), 0), None);
    }

    #[test]
    fn a_sender_time_far_in_the_future_gives_way_to_the_receive_time() {
        let received = "2026-12-06T10:00:00Z";
        let received_ms = parse_rfc3339(received).expect("time");
        let far = json!({"timestamp": "9999-12-31T23:59:59Z", "receivedAt": received});
        assert_eq!(
            event_time(&far, 0),
            Some(EventTime {
                at_ms: received_ms,
                clamped: true
            })
        );
        // A few minutes ahead is a clock's skew, and believed.
        let near = json!({"timestamp": "2026-12-06T10:04:00Z", "receivedAt": received});
        assert_eq!(event_time(&near, 0).map(|t| t.clamped), Some(false));
        // Without receivedAt (`zdmap send`), now stands in.
        let sent = json!({"timestamp": "9999-12-31T23:59:59Z"});
        assert_eq!(
            event_time(&sent, received_ms),
            Some(EventTime {
                at_ms: received_ms,
                clamped: true
            })
        );
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
