//! The connection slots: which connections hold one, what each is doing, and which one gives
//! its slot up when the cap is reached.
//!
//! A connection is [`Phase::Waiting`] from its accept until the head of its first request is
//! complete, [`Phase::Busy`] while a request is in flight (from its head to the end of its
//! answer), and [`Phase::Idle`] between requests. Only a busy connection is doing work that
//! someone waits for: a waiting one may be a client that is slow or one that never sends, an
//! idle one has been answered.
//!
//! So when a connection arrives and the cap is reached, it takes the slot of one that has no
//! request in flight instead of being refused: the oldest waiting connection first (in accept
//! order; a real client sends its request as soon as it connects, so among the waiting ones the
//! oldest are the least likely to be one), then the connection idle the longest. A busy
//! connection is never evicted; when every slot is busy, the newcomer is refused. A few hundred
//! clients that send nothing, or a byte at a time, thus cannot keep anyone out: each newcomer
//! pushes the oldest of them out, and the header deadline closes the rest.
//!
//! Each connection watches its [`Phase`]: its deadline follows from it (see
//! [`super::connections`]), and [`Phase::Evicted`] tells it to close. Taking a slot back (an
//! eviction, a deadline) and starting a request are decided under one lock, so a connection
//! whose request has started is never evicted or closed by its deadline, and one that was
//! evicted starts no request.

use crate::base::sync::lock;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// What a connection is doing, as its own task sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepted at `since`; the head of its first request is not complete yet.
    Waiting { since: Instant },
    /// At least one request is in flight.
    Busy,
    /// Its last answer ended at `since`; the next request's head is not complete yet.
    Idle { since: Instant },
    /// Its slot went to another connection (or its deadline passed): it closes now.
    Evicted,
}

/// The slots of a server's connections, at most `cap` taken at once.
pub(crate) struct Slots {
    cap: usize,
    table: Mutex<Table>,
}

/// Why a connection got no slot: every slot holds a request in flight.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

/// A slot taken by an accepted connection; dropping it frees the slot.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    phase: watch::Receiver<Phase>,
}

/// A request in flight on a connection; dropping it ends the request (at the end of its
/// answer).
pub(crate) struct InFlight {
    slots: Arc<Slots>,
    id: u64,
}

/// The connections that hold a slot, and the order in which they give it up.
#[derive(Default)]
struct Table {
    /// The next connection's id, and the next order of an idle connection: one counter, so
    /// both orders follow time.
    next: u64,
    open: HashMap<u64, Entry>,
    /// Waiting connections by id, that is in accept order.
    waiting: BTreeSet<u64>,
    /// Idle connections: the order they became idle in, to their id.
    idle: BTreeMap<u64, u64>,
}

struct Entry {
    state: State,
    phase: watch::Sender<Phase>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Busy { requests: u32 },
    Idle { order: u64 },
}

impl Slots {
    /// Slots for at most `cap` connections (at least one).
    pub(crate) fn new(cap: usize) -> Arc<Slots> {
        Arc::new(Slots {
            cap: cap.max(1),
            table: Mutex::new(Table::default()),
        })
    }

    /// A slot for a connection accepted now. When every slot is taken, the oldest waiting
    /// connection, else the one idle the longest, is evicted (told to close, its slot given
    /// to this one), and `true` says so; `Full` when every slot holds a request in flight.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<(Slot, bool), Full> {
        let mut table = lock(&self.table);
        let evicted = if table.open.len() >= self.cap {
            match table.oldest_without_request() {
                Some(victim) => {
                    table.take_back(victim);
                    true
                }
                None => return Err(Full),
            }
        } else {
            false
        };
        let id = table.tick();
        let (phase, watched) = watch::channel(Phase::Waiting {
            since: Instant::now(),
        });
        table.open.insert(
            id,
            Entry {
                state: State::Waiting,
                phase,
            },
        );
        table.waiting.insert(id);
        Ok((
            Slot {
                slots: self.clone(),
                id,
                phase: watched,
            },
            evicted,
        ))
    }

    /// Connections holding a slot.
    #[cfg(test)]
    fn taken(&self) -> usize {
        lock(&self.table).open.len()
    }
}

impl Slot {
    /// The connection's phase, to watch.
    pub(crate) fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.clone()
    }

    /// A request's head is complete: the connection is busy until the returned value is
    /// dropped. `None` when the connection was evicted or timed out just before: its request
    /// must not start.
    pub(crate) fn start_request(&self) -> Option<InFlight> {
        let mut table = lock(&self.slots.table);
        let table = &mut *table;
        let entry = table.open.get_mut(&self.id)?;
        match entry.state {
            State::Waiting => {
                table.waiting.remove(&self.id);
            }
            State::Idle { order } => {
                table.idle.remove(&order);
            }
            State::Busy { .. } => {}
        }
        entry.state = match entry.state {
            State::Busy { requests } => State::Busy {
                requests: requests.saturating_add(1),
            },
            State::Waiting | State::Idle { .. } => {
                entry.phase.send_replace(Phase::Busy);
                State::Busy { requests: 1 }
            }
        };
        Some(InFlight {
            slots: self.slots.clone(),
            id: self.id,
        })
    }

    /// Takes the slot back because the connection's deadline passed, unless a request started
    /// meanwhile (then `false`: the connection goes on).
    pub(crate) fn expire(&self) -> bool {
        let mut table = lock(&self.slots.table);
        match table.open.get(&self.id).map(|e| e.state) {
            Some(State::Busy { .. }) => false,
            Some(_) => {
                table.take_back(self.id);
                true
            }
            None => true,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = lock(&self.slots.table);
        if let Some(entry) = table.open.remove(&self.id) {
            table.forget(self.id, entry.state);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut table = lock(&self.slots.table);
        let order = table.tick();
        let table = &mut *table;
        let Some(entry) = table.open.get_mut(&self.id) else {
            return;
        };
        if let State::Busy { requests } = entry.state {
            if requests > 1 {
                entry.state = State::Busy {
                    requests: requests - 1,
                };
            } else {
                entry.state = State::Idle { order };
                table.idle.insert(order, self.id);
                entry.phase.send_replace(Phase::Idle {
                    since: Instant::now(),
                });
            }
        }
    }
}

impl Table {
    fn tick(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// The connection that gives its slot up first: the oldest waiting one, else the one idle
    /// the longest; none when every connection has a request in flight.
    fn oldest_without_request(&self) -> Option<u64> {
        self.waiting
            .first()
            .copied()
            .or_else(|| self.idle.values().next().copied())
    }

    /// Removes connection `id` and tells it to close.
    fn take_back(&mut self, id: u64) {
        if let Some(entry) = self.open.remove(&id) {
            self.forget(id, entry.state);
            entry.phase.send_replace(Phase::Evicted);
        }
    }

    fn forget(&mut self, id: u64, state: State) {
        match state {
            State::Waiting => {
                self.waiting.remove(&id);
            }
            State::Idle { order } => {
                self.idle.remove(&order);
            }
            State::Busy { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evicted(slot: &Slot) -> bool {
        *slot.phase.borrow() == Phase::Evicted
    }

    fn admit(slots: &Arc<Slots>) -> (Slot, bool) {
        slots.admit().expect("a slot")
    }

    #[test]
    fn under_the_cap_nobody_is_evicted() {
        let slots = Slots::new(3);
        let all: Vec<(Slot, bool)> = (0..3).map(|_| admit(&slots)).collect();
        assert!(all.iter().all(|(slot, e)| !e && !evicted(slot)));
        assert!(matches!(*all[0].0.phase.borrow(), Phase::Waiting { .. }));
        assert_eq!(slots.taken(), 3);
    }

    #[test]
    fn over_the_cap_the_oldest_waiting_connection_goes_first() {
        let slots = Slots::new(3);
        let (a, _) = admit(&slots);
        let (b, _) = admit(&slots);
        let (c, _) = admit(&slots);
        let (d, was_evicted) = admit(&slots);
        assert!(was_evicted);
        assert!(evicted(&a) && !evicted(&b) && !evicted(&c) && !evicted(&d));
        let (_e, _) = admit(&slots);
        assert!(evicted(&b) && !evicted(&c));
        assert_eq!(slots.taken(), 3, "the cap holds");
        // An evicted connection starts no request.
        assert!(a.start_request().is_none());
    }

    #[test]
    fn a_connection_with_a_request_in_flight_is_never_evicted() {
        let slots = Slots::new(2);
        let (a, _) = admit(&slots);
        let (b, _) = admit(&slots);
        let _a_request = a.start_request().expect("started");
        assert_eq!(*a.phase.borrow(), Phase::Busy);
        // b is younger but waiting: it goes, a stays.
        let (c, _) = admit(&slots);
        assert!(evicted(&b) && !evicted(&a));
        let _c_request = c.start_request().expect("started");
        // Every slot busy: the newcomer is refused and nobody is evicted.
        assert_eq!(slots.admit().err(), Some(Full));
        assert!(!evicted(&a) && !evicted(&c));
        // Nor does a deadline close a busy connection.
        assert!(!a.expire());
        assert!(!evicted(&a));
    }

    #[test]
    fn waiting_connections_go_before_idle_ones_and_the_longest_idle_first() {
        let slots = Slots::new(2);
        let (a, _) = admit(&slots);
        let (b, _) = admit(&slots);
        drop(b.start_request());
        drop(a.start_request());
        // Both answered; b has been idle longer than a.
        assert!(matches!(*a.phase.borrow(), Phase::Idle { .. }));
        let (c, _) = admit(&slots);
        assert!(evicted(&b), "no one waits: the longest idle goes");
        assert!(!evicted(&a) && !evicted(&c));
        let (_d, _) = admit(&slots);
        assert!(evicted(&c), "the waiting one goes before the idle one");
        assert!(!evicted(&a));
    }

    #[test]
    fn a_connection_busy_with_two_requests_stays_busy_until_both_end() {
        let slots = Slots::new(2);
        let (a, _) = admit(&slots);
        let first = a.start_request().expect("first");
        let second = a.start_request().expect("second");
        drop(first);
        assert_eq!(*a.phase.borrow(), Phase::Busy);
        let (b, _) = admit(&slots);
        let (_c, was_evicted) = admit(&slots);
        assert!(was_evicted && evicted(&b), "b goes");
        assert!(!evicted(&a), "a stays");
        drop(second);
        assert!(matches!(*a.phase.borrow(), Phase::Idle { .. }));
    }

    #[test]
    fn a_closed_or_expired_connection_frees_its_slot() {
        let slots = Slots::new(2);
        let (a, _) = admit(&slots);
        let (b, _) = admit(&slots);
        drop(a);
        assert!(b.expire());
        assert!(evicted(&b));
        assert_eq!(slots.taken(), 0);
        let (_c, was_evicted) = admit(&slots);
        assert!(!was_evicted);
        drop(b);
        assert_eq!(slots.taken(), 1);
    }
}
