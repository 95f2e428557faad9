//! Which events may be delivered now: the delivery scheduler's state, without any I/O.
//!
//! Every event has its entity keys (the user; the organization too for a group call, see
//! [`crate::mapping::event::Event::ordering_keys`]), and each key has a **line**: its events in arrival
//! order. An event may start when it is first in the line of every key it has and none of
//! those keys has an event running. So the events of one key go in order, one at a time, and
//! different keys go in parallel.
//!
//! An event that cannot go on yet is set aside, and what happens to its keys depends on why:
//! - **waiting** ([`Scheduler::wait`]: a retry's backoff, a per-key 429, an organization
//!   another replica holds): it keeps its place at the front of its lines, so its keys' later
//!   events wait behind it, and other keys flow;
//! - **parked** ([`Scheduler::park`]: a record it needs does not exist yet): it keeps its place
//!   too, but lets pass the later events that may create that record: those that have the
//!   missing key's value among their own keys (`user:u1` may create the user whose external id
//!   is `u1`: the identify behind a track that came first; `group:acme` the organization an
//!   identify waits to join). Other events of its keys wait behind it, so a later change (a
//!   membership removed) is never applied before an earlier one (the membership added). It
//!   waits until a response teaches one of the keys it waits for ([`Scheduler::learned`]) or
//!   its timer fires.
//!
//! Keys are written `kind:value` (`user:u1`); the value is what a lookup key is compared with.
//!
//! Nothing here sleeps or sends: [`super::dispatch`] runs the events and tells the scheduler
//! how each turn ended. Timers are instants the dispatcher waits for ([`Scheduler::next_timer`],
//! [`Scheduler::fire`]).

use crate::deliver::LearnedKey;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tokio::time::Instant;

/// An event's place in arrival order (a queue id, or the input's index).
pub(crate) type EventId = u64;

/// An entity key (`user:42`, `group:acme`).
pub type Key = crate::mapping::event::OrderingKey;

/// Why an event waits, for metrics and `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// A retryable failure: backing off.
    Retry,
    /// A 429 of a per-key limit (`Retry-After`).
    RateLimited,
    /// Zendesk refuses the credentials.
    Credentials,
    /// A record it needs does not exist yet (parked).
    MissingRecord,
    /// Its request is an item of a bulk request not answered yet.
    Batch,
    /// A key it shares with events of other partitions is held by another process (another
    /// replica delivers an event of that organization): tried again shortly.
    HeldElsewhere,
    /// Its source may no longer own it (a shared queue's lease is not certainly ours): no
    /// turn starts until that is settled one way or the other.
    Fenced,
}

impl WaitReason {
    pub const ALL: [WaitReason; 7] = [
        WaitReason::Retry,
        WaitReason::RateLimited,
        WaitReason::Credentials,
        WaitReason::MissingRecord,
        WaitReason::Batch,
        WaitReason::HeldElsewhere,
        WaitReason::Fenced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Retry => "retry",
            WaitReason::RateLimited => "rate_limited",
            WaitReason::Credentials => "credentials",
            WaitReason::MissingRecord => "missing_record",
            WaitReason::Batch => "batch",
            WaitReason::HeldElsewhere => "held_elsewhere",
            WaitReason::Fenced => "fenced",
        }
    }
}

#[derive(Debug)]
enum State {
    Queued,
    Running,
    Waiting {
        until: Instant,
        reason: WaitReason,
    },
    /// Waiting with no timer, until [`Scheduler::wake`].
    Held {
        reason: WaitReason,
    },
    Parked {
        on: Vec<LearnedKey>,
        until: Instant,
    },
}

#[derive(Debug)]
struct Entry<T> {
    keys: Vec<Key>,
    /// When the event was accepted (for the age of the oldest waiting event).
    since: Instant,
    state: State,
    /// Taken out while the event runs.
    job: Option<T>,
    /// It ran while events ahead of it waited for their bulk requests, and could not join them:
    /// it starts again only once one of its lines changes.
    behind: bool,
}

/// What is held up, for metrics and `/readyz`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Status {
    /// Events in the scheduler (running, ready, waiting, parked).
    pub events: usize,
    pub running: usize,
    /// Keys held up, by reason.
    pub keys_waiting: BTreeMap<WaitReason, usize>,
    /// Age of the oldest event that waits (set aside), in seconds.
    pub oldest_waiting_seconds: f64,
    /// Bytes of the events parked (waiting for a record) whose body is in memory.
    pub parked_bytes: u64,
    /// Events parked whose body waits in the queue, not in memory.
    pub parked_in_queue: usize,
}

/// The scheduler's state over jobs of type `T` (see the module docs).
#[derive(Debug)]
pub(crate) struct Scheduler<T> {
    entries: HashMap<EventId, Entry<T>>,
    lines: HashMap<Key, BTreeSet<EventId>>,
    /// Keys with an event running.
    busy: HashSet<Key>,
    /// Events that may start, oldest first (checked again when taken).
    ready: BTreeSet<EventId>,
    timers: BTreeSet<(Instant, EventId)>,
    parked: HashMap<LearnedKey, BTreeSet<EventId>>,
    /// Every parked event, oldest first.
    parked_ids: BTreeSet<EventId>,
}

impl<T> Default for Scheduler<T> {
    fn default() -> Self {
        Scheduler {
            entries: HashMap::new(),
            lines: HashMap::new(),
            busy: HashSet::new(),
            ready: BTreeSet::new(),
            timers: BTreeSet::new(),
            parked: HashMap::new(),
            parked_ids: BTreeSet::new(),
        }
    }
}

impl<T> Scheduler<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an event behind the events already in its keys' lines. Ids must grow with arrival.
    pub fn insert(&mut self, id: EventId, keys: Vec<Key>, since: Instant, job: T) {
        for key in &keys {
            self.lines.entry(key.clone()).or_default().insert(id);
        }
        self.entries.insert(
            id,
            Entry {
                keys,
                since,
                state: State::Queued,
                job: Some(job),
                behind: false,
            },
        );
        self.consider(id);
    }

    /// The oldest event that may start now, marked running; its job is handed over.
    pub(crate) fn start_next(&mut self) -> Option<(EventId, T)> {
        while let Some(id) = self.ready.pop_first() {
            if !self.may_start(id) {
                continue;
            }
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            for key in &entry.keys {
                self.busy.insert(key.clone());
            }
            entry.state = State::Running;
            if let Some(job) = entry.job.take() {
                return Some((id, job));
            }
        }
        None
    }

    /// Every event's job that is not running, oldest first; the scheduler is left empty (a
    /// run that stops hands what it held back to its source).
    pub(crate) fn drain(&mut self) -> Vec<(EventId, T)> {
        let mut jobs: Vec<(EventId, T)> = self
            .entries
            .drain()
            .filter_map(|(id, entry)| entry.job.map(|job| (id, job)))
            .collect();
        jobs.sort_by_key(|(id, _)| *id);
        *self = Scheduler::default();
        jobs
    }

    /// A running event is settled: it leaves its lines, and the next events of its keys may go.
    pub fn finish(&mut self, id: EventId) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        for key in &entry.keys {
            self.busy.remove(key);
            if let Some(line) = self.lines.get_mut(key) {
                line.remove(&id);
                if line.is_empty() {
                    self.lines.remove(key);
                }
            }
        }
        self.consider_lines(&entry.keys);
    }

    /// A running event no longer needs `keys` (its actions that change those records are
    /// done): it leaves their lines, and the next events of those keys may go, while it keeps
    /// its place in its other lines.
    pub(crate) fn let_go(&mut self, id: EventId, keys: &[Key]) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        entry.keys.retain(|k| !keys.contains(k));
        for key in keys {
            self.busy.remove(key);
            if let Some(line) = self.lines.get_mut(key) {
                line.remove(&id);
                if line.is_empty() {
                    self.lines.remove(key);
                }
            }
        }
        self.consider_lines(keys);
    }

    /// A running event waits until `until`, at the front of its lines (its keys wait too).
    pub fn wait(&mut self, id: EventId, job: T, until: Instant, reason: WaitReason) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        entry.state = State::Waiting { until, reason };
        entry.job = Some(job);
        for key in &entry.keys {
            self.busy.remove(key);
        }
        self.timers.insert((until, id));
        let keys = entry.keys.clone();
        // Another event that came back to the front of one of these lines meanwhile may go.
        self.consider_lines(&keys);
    }

    /// A running event waits, at the front of its lines, until [`Scheduler::wake`] (its item
    /// is in a bulk request).
    pub fn hold(&mut self, id: EventId, job: T, reason: WaitReason) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        entry.state = State::Held { reason };
        entry.job = Some(job);
        for key in &entry.keys {
            self.busy.remove(key);
        }
        let keys = entry.keys.clone();
        self.consider_lines(&keys);
    }

    /// A held event may go again.
    pub fn wake(&mut self, id: EventId) {
        if let Some(entry) = self.entries.get_mut(&id)
            && matches!(entry.state, State::Held { .. })
        {
            entry.state = State::Queued;
            let keys = entry.keys.clone();
            self.consider(id);
            self.consider_lines(&keys);
        }
    }

    /// A running event that started while events ahead of it were held ([`Self::held_ahead`])
    /// sent nothing and could not join their bulk requests: it goes back to its place, and
    /// starts again once one of its lines changes.
    pub fn behind(&mut self, id: EventId, job: T) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        entry.state = State::Queued;
        entry.job = Some(job);
        for key in &entry.keys {
            self.busy.remove(key);
        }
        // The events ahead that came back while it ran may go now; it waits for a change.
        let keys = entry.keys.clone();
        self.consider_lines(&keys);
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.behind = true;
        }
        self.ready.remove(&id);
    }

    /// The held events ahead of an event in its lines: while they wait for their bulk requests,
    /// it may run only to join those (its items then go after theirs, in order).
    pub(crate) fn held_ahead(&self, id: EventId) -> Vec<EventId> {
        let Some(entry) = self.entries.get(&id) else {
            return Vec::new();
        };
        let mut out: Vec<EventId> = entry
            .keys
            .iter()
            .filter_map(|k| self.lines.get(k))
            .flat_map(|line| line.range(..id).copied())
            .filter(|a| {
                matches!(
                    self.entries.get(a).map(|e| &e.state),
                    Some(State::Held { .. })
                )
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// A running event waits until one of `on` is learned, or until `until`, letting pass the
    /// later events of its keys that may create the record (see the module docs).
    pub(crate) fn park(&mut self, id: EventId, job: T, on: Vec<LearnedKey>, until: Instant) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        for key in &entry.keys {
            self.busy.remove(key);
        }
        for k in &on {
            self.parked.entry(k.clone()).or_default().insert(id);
        }
        entry.state = State::Parked { on, until };
        entry.job = Some(job);
        self.parked_ids.insert(id);
        self.timers.insert((until, id));
        let keys = entry.keys.clone();
        self.consider_lines(&keys);
    }

    /// Responses taught these keys: the events parked on them come back to their lines.
    pub fn learned(&mut self, keys: &[LearnedKey]) {
        for k in keys {
            if let Some(ids) = self.parked.remove(k) {
                for id in ids {
                    self.unpark(id);
                }
            }
        }
    }

    /// Fires the timers due at `now`: waiting events may go again, parked events come back to
    /// their lines. Returns the parked events that came back this way (for the dispatcher to
    /// decide whether it is their last chance).
    pub(crate) fn fire(&mut self, now: Instant) -> Vec<EventId> {
        let mut woken = Vec::new();
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            match entry.state {
                State::Waiting { until, .. } if until == at => {
                    entry.state = State::Queued;
                    self.consider(id);
                }
                State::Parked { until, .. } if until == at => {
                    self.unpark(id);
                    woken.push(id);
                }
                _ => {}
            }
        }
        woken
    }

    /// When the next timer is due.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// An event's keys (empty when it is not held).
    pub fn keys(&self, id: EventId) -> &[Key] {
        self.entries.get(&id).map_or(&[], |e| &e.keys)
    }

    /// When a held event was accepted.
    pub fn since(&self, id: EventId) -> Option<Instant> {
        self.entries.get(&id).map(|e| e.since)
    }

    /// A job still in the scheduler (not running).
    pub(crate) fn job_mut(&mut self, id: EventId) -> Option<&mut T> {
        self.entries.get_mut(&id).and_then(|e| e.job.as_mut())
    }

    /// Events held (any state).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Events parked for a missing record.
    pub(crate) fn parked(&self) -> usize {
        self.parked_ids.len()
    }

    /// The parked events, oldest first.
    pub(crate) fn parked_ids(&self) -> Vec<EventId> {
        self.parked_ids.iter().copied().collect()
    }

    /// The oldest parked event.
    pub(crate) fn oldest_parked(&self) -> Option<EventId> {
        self.parked_ids.first().copied()
    }

    /// Brings a parked event back at once (its wait is over), as its timer would.
    pub(crate) fn unpark_now(&mut self, id: EventId) {
        if matches!(
            self.entries.get(&id).map(|e| &e.state),
            Some(State::Parked { .. })
        ) {
            self.unpark(id);
        }
    }

    /// What is held up now.
    pub fn status(&self, now: Instant) -> Status {
        let mut status = Status {
            events: self.entries.len(),
            ..Status::default()
        };
        let mut oldest: Option<Instant> = None;
        for entry in self.entries.values() {
            let reason = match entry.state {
                State::Running => {
                    status.running += 1;
                    continue;
                }
                State::Queued => continue,
                State::Waiting { reason, .. } | State::Held { reason } => reason,
                State::Parked { .. } => WaitReason::MissingRecord,
            };
            *status.keys_waiting.entry(reason).or_default() += entry.keys.len().max(1);
            oldest = Some(oldest.map_or(entry.since, |o| o.min(entry.since)));
        }
        status.oldest_waiting_seconds = oldest.map_or(0.0, |o| (now - o).as_secs_f64());
        status
    }

    fn unpark(&mut self, id: EventId) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let State::Parked { on, .. } = std::mem::replace(&mut entry.state, State::Queued) else {
            return;
        };
        self.parked_ids.remove(&id);
        for k in &on {
            if let Some(ids) = self.parked.get_mut(k) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.parked.remove(k);
                }
            }
        }
        self.consider(id);
    }

    /// Queued, no key busy, and in every line only parked events that let it pass ahead of it,
    /// or held ones (then it runs only to join their bulk requests).
    fn may_start(&self, id: EventId) -> bool {
        let Some(entry) = self.entries.get(&id) else {
            return false;
        };
        matches!(entry.state, State::Queued)
            && !entry.behind
            && entry.keys.iter().all(|key| {
                !self.busy.contains(key)
                    && self.lines.get(key).is_some_and(|line| {
                        line.range(..id)
                            .all(|ahead| self.lets_pass(*ahead, &entry.keys))
                    })
            })
    }

    /// Whether the event `ahead` is parked for a record that an event with `keys` may create,
    /// or held for its bulk request.
    fn lets_pass(&self, ahead: EventId, keys: &[Key]) -> bool {
        match self.entries.get(&ahead).map(|e| &e.state) {
            Some(State::Parked { on, .. }) => on
                .iter()
                .any(|missing| keys.iter().any(|k| k.value() == missing.key)),
            Some(State::Held { .. }) => true,
            _ => false,
        }
    }

    fn consider(&mut self, id: EventId) {
        if self.may_start(id) {
            self.ready.insert(id);
        }
    }

    /// Considers the first event of each line that is neither parked nor held (its line
    /// changed, so one set `behind` may try again).
    fn consider_lines(&mut self, keys: &[Key]) {
        for key in keys {
            let first = self.lines.get(key).and_then(|line| {
                line.iter().copied().find(|id| {
                    !matches!(
                        self.entries.get(id).map(|e| &e.state),
                        Some(State::Parked { .. } | State::Held { .. })
                    )
                })
            });
            if let Some(first) = first {
                if let Some(entry) = self.entries.get_mut(&first) {
                    entry.behind = false;
                }
                self.consider(first);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(k: &str) -> Key {
        Key::parse(k).expect("a key")
    }

    fn learned(resolver: &str, id: &str) -> LearnedKey {
        LearnedKey {
            resolver: resolver.into(),
            by: "external_id".into(),
            key: id.into(),
        }
    }

    fn user(id: &str) -> LearnedKey {
        learned("user", id)
    }

    fn org(id: &str) -> LearnedKey {
        learned("organization", id)
    }

    fn started(s: &mut Scheduler<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| s.start_next().map(|(_, job)| job)).collect()
    }

    #[test]
    fn one_key_in_order_different_keys_in_parallel() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        s.insert(1, vec![key("user:a")], now, "a1");
        s.insert(2, vec![key("user:b")], now, "b1");
        s.insert(3, vec![key("user:a")], now, "a2");
        s.insert(4, vec![], now, "no key");
        assert_eq!(started(&mut s), ["a1", "b1", "no key"]);
        s.finish(1);
        assert_eq!(started(&mut s), ["a2"]);
    }

    #[test]
    fn a_group_call_waits_for_both_its_keys() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        s.insert(1, vec![key("user:a")], now, "identify a");
        s.insert(2, vec![key("group:g")], now, "group g");
        s.insert(
            3,
            vec![key("group:g"), key("user:a")],
            now,
            "group g with a",
        );
        s.insert(4, vec![key("user:b")], now, "identify b");
        assert_eq!(started(&mut s), ["identify a", "group g", "identify b"]);
        s.finish(1);
        assert!(started(&mut s).is_empty(), "group g is still running");
        s.finish(2);
        assert_eq!(started(&mut s), ["group g with a"]);
    }

    #[test]
    fn a_key_let_go_lets_its_line_go_on_while_the_other_keys_wait() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        let (user_a, group_g) = (key("user:a"), key("group:g"));
        s.insert(1, vec![user_a.clone(), group_g.clone()], now, "g with a");
        s.insert(2, vec![key("user:b"), group_g.clone()], now, "g with b");
        s.insert(3, vec![user_a.clone()], now, "identify a");
        assert_eq!(started(&mut s), ["g with a"]);
        // Its organization upsert is done; it waits for its membership.
        s.let_go(1, std::slice::from_ref(&group_g));
        s.wait(
            1,
            "g with a",
            now + Duration::from_secs(5),
            WaitReason::Retry,
        );
        assert_eq!(s.keys(1), std::slice::from_ref(&user_a));
        assert_eq!(started(&mut s), ["g with b"], "the organization goes on");
        s.finish(2);
        assert!(started(&mut s).is_empty(), "its user still waits behind it");
        s.fire(now + Duration::from_secs(5));
        assert_eq!(started(&mut s), ["g with a"]);
        s.finish(1);
        assert_eq!(started(&mut s), ["identify a"]);
    }

    #[test]
    fn a_waiting_event_holds_its_key_only() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        s.insert(1, vec![key("user:a")], now, "a1");
        s.insert(2, vec![key("user:a")], now, "a2");
        s.insert(3, vec![key("user:b")], now, "b1");
        assert_eq!(started(&mut s), ["a1", "b1"]);
        s.wait(
            1,
            "a1",
            now + Duration::from_secs(5),
            WaitReason::RateLimited,
        );
        s.finish(3);
        assert!(started(&mut s).is_empty(), "a2 waits behind a1");
        let status = s.status(now);
        assert_eq!(status.keys_waiting[&WaitReason::RateLimited], 1);
        assert_eq!(s.next_timer(), Some(now + Duration::from_secs(5)));
        assert!(s.fire(now + Duration::from_secs(4)).is_empty());
        assert!(started(&mut s).is_empty());
        s.fire(now + Duration::from_secs(5));
        assert_eq!(started(&mut s), ["a1"]);
        s.finish(1);
        assert_eq!(started(&mut s), ["a2"]);
    }

    #[test]
    fn a_parked_event_lets_pass_only_the_events_that_may_create_its_record() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        s.insert(1, vec![key("user:a")], now, "track a");
        s.insert(2, vec![key("user:a")], now, "track a again");
        s.insert(3, vec![key("user:a")], now, "identify a");
        assert_eq!(started(&mut s), ["track a"]);
        s.park(1, "track a", vec![user("a")], later);
        assert_eq!(started(&mut s), ["track a again"]);
        s.park(2, "track a again", vec![user("a")], later);
        assert_eq!(started(&mut s), ["identify a"]);
        assert_eq!(s.parked(), 2);
        s.learned(&[user("a")]);
        assert_eq!(s.parked(), 0);
        assert!(started(&mut s).is_empty(), "the identify is still running");
        s.finish(3);
        assert_eq!(started(&mut s), ["track a"]);
        s.finish(1);
        assert_eq!(started(&mut s), ["track a again"]);
    }

    #[test]
    fn a_later_change_of_the_same_key_waits_behind_a_parked_event() {
        let org = org("acme");
        let mut s = Scheduler::new();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        s.insert(1, vec![key("user:b")], now, "b joins acme");
        s.insert(2, vec![key("user:b")], now, "b leaves acme");
        s.insert(3, vec![key("user:a"), key("group:acme")], now, "group acme");
        assert_eq!(started(&mut s), ["b joins acme", "group acme"]);
        s.park(1, "b joins acme", vec![org.clone()], later);
        assert!(started(&mut s).is_empty(), "the leave waits for the join");
        s.finish(3);
        s.learned(&[org]);
        assert_eq!(started(&mut s), ["b joins acme"]);
        s.finish(1);
        assert_eq!(started(&mut s), ["b leaves acme"]);
    }

    #[test]
    fn the_group_call_an_identify_waits_for_may_pass_it() {
        let org = org("acme");
        let mut s = Scheduler::new();
        let now = Instant::now();
        s.insert(1, vec![key("user:a")], now, "a joins acme");
        s.insert(
            2,
            vec![key("user:a"), key("group:acme")],
            now,
            "group acme by a",
        );
        assert_eq!(started(&mut s), ["a joins acme"]);
        s.park(
            1,
            "a joins acme",
            vec![org.clone()],
            now + Duration::from_secs(60),
        );
        assert_eq!(started(&mut s), ["group acme by a"]);
        s.learned(&[org]);
        assert!(
            started(&mut s).is_empty(),
            "the group call is still running"
        );
        s.finish(2);
        assert_eq!(started(&mut s), ["a joins acme"]);
    }

    #[test]
    fn a_parked_event_comes_back_when_its_timer_fires() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        s.insert(7, vec![key("user:a")], now, "track a");
        assert_eq!(started(&mut s), ["track a"]);
        s.park(7, "track a", vec![user("a")], now + Duration::from_secs(2));
        assert_eq!(s.parked_ids(), vec![7]);
        assert_eq!(
            s.status(now + Duration::from_secs(1)).keys_waiting[&WaitReason::MissingRecord],
            1
        );
        assert_eq!(s.fire(now + Duration::from_secs(2)), vec![7]);
        assert_eq!(started(&mut s), ["track a"]);
        // A learned key nobody waits for any more changes nothing.
        s.learned(&[user("a")]);
        s.finish(7);
        assert!(s.is_empty());
    }

    #[test]
    fn a_held_event_lets_the_next_of_its_key_run_only_to_join_it() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        s.insert(1, vec![key("user:a")], now, "a1");
        s.insert(2, vec![key("user:a")], now, "a2");
        s.insert(3, vec![key("user:a")], now, "a3");
        assert_eq!(started(&mut s), ["a1"]);
        s.hold(1, "a1", WaitReason::Batch);
        assert_eq!(s.status(now).keys_waiting.get(&WaitReason::Batch), Some(&1));
        // a2 may run, knowing a1 is held ahead of it; a3 waits behind a2.
        let (id, job) = s.start_next().expect("a2 starts");
        assert_eq!((id, job), (2, "a2"));
        assert_eq!(s.held_ahead(2), [1]);
        assert!(s.start_next().is_none());
        // It could not join: it goes back and does not run again until its line changes.
        s.behind(2, "a2");
        assert!(s.start_next().is_none());
        s.wake(1);
        assert_eq!(started(&mut s), ["a1"]);
        s.finish(1);
        assert_eq!(started(&mut s), ["a2"]);
        assert!(s.held_ahead(2).is_empty());
    }

    #[test]
    fn an_event_held_ahead_that_comes_back_while_the_next_runs_goes_when_it_is_behind() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        s.insert(1, vec![key("user:a")], now, "a1");
        s.insert(2, vec![key("user:a")], now, "a2");
        assert_eq!(started(&mut s), ["a1"]);
        s.hold(1, "a1", WaitReason::Batch);
        assert_eq!(started(&mut s), ["a2"]);
        // a1's bulk request is answered while a2 runs (its key is busy): a1 waits for it.
        s.wake(1);
        assert!(s.start_next().is_none());
        s.behind(2, "a2");
        assert_eq!(started(&mut s), ["a1"]);
    }
}
