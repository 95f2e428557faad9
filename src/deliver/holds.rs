//! Keys held by one process at a time, across processes: what keeps the events of an entity
//! key that several replicas may deliver (an organization whose `group` calls come from users in
//! partitions owned by different replicas) from being delivered by two of them at once.
//!
//! An event's keys beyond the one its queue partitions by ([`crate::mapping::event::Event::shared_keys`])
//! are held from before its first turn until it is settled ([`super::dispatch`]); while a key is
//! held elsewhere the event waits, at the front of its lines, and tries again shortly. With the
//! entity clock ([`super::order`]) this makes the writes of one organization land in event
//! order: the next holder sees every change the previous one applied, and skips an older one
//! as stale.
//!
//! [`OneProcess`] is the hold of a process that delivers alone (`zdmap send`, `zdmap serve` on
//! SQLite): every key is held at once, without I/O. The NATS queue keeps holds in JetStream
//! (`queue::nats::holds`).

use std::future::Future;
use std::pin::Pin;

/// Whether a set of holds was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holding {
    /// Every key is held by this process (until released).
    Held,
    /// A key is held by another process (or could not be checked): none was taken.
    Elsewhere,
}

/// A taking of holds under way.
pub type Taking = Pin<Box<dyn Future<Output = Holding> + Send + 'static>>;

/// Where holds on keys are taken and released.
pub trait KeyHolds: Send + Sync + std::fmt::Debug {
    /// Every key is always held by this process: nothing to take or release.
    fn every_key_held(&self) -> bool {
        false
    }

    /// Takes a hold on each of `keys` for this process, all or none. A key this process holds
    /// already is held once more (each take is released once).
    fn take(&self, keys: Vec<String>) -> Taking;

    /// Releases holds taken by [`KeyHolds::take`]; returns at once.
    fn release(&self, keys: Vec<String>);
}

/// The holds of a process that delivers alone: every key, always.
#[derive(Clone, Copy, Debug, Default)]
pub struct OneProcess;

impl KeyHolds for OneProcess {
    fn every_key_held(&self) -> bool {
        true
    }

    fn take(&self, _keys: Vec<String>) -> Taking {
        Box::pin(std::future::ready(Holding::Held))
    }

    fn release(&self, _keys: Vec<String>) {}
}
