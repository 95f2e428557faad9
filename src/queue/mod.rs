//! The durable queue behind `zdmap serve`: accepted events wait here until Zendesk has them.
//!
//! [`Queue`] is what the server needs from a queue; [`SqliteQueue`] is the embedded backend
//! (SQLite in WAL mode in the data directory). An event is stored before the ingest API answers
//! 200 and removed only once delivered, or moved to the dead letters in the same transaction,
//! so nothing accepted is lost. Items come back in the order they were accepted; the server
//! keeps each user's events in that order.
//!
//! The dead letters of the data directory ([`DeadLetterStore`]) live in the same database so
//! that "failed" is one atomic step; `zdmap dead-letters` reads and replays them. So does the
//! time of the last change applied per entity (the queue is an [`EntityClock`]), so that a
//! replay never applies an older change over a newer one, across restarts too.
//!
//! [`NatsQueue`] is the shared backend: NATS JetStream, for several replicas on several
//! machines ([`nats`]); its dead letters are [`nats::dead_letters::NatsDeadLetters`]. Both
//! kinds of dead letters are read through [`DeadLetters`].
//!
//! [`journal`] is the delivery log of `serve`: what became of each event, kept apart from the
//! queue.

pub mod journal;
mod letters;
pub mod lock;
pub mod nats;
pub mod sqlite;

use crate::deliver::DeadLetter;
use crate::deliver::dispatch::Ownership;
use crate::deliver::holds::{KeyHolds, OneProcess};
use crate::deliver::order::EntityClock;
use crate::deliver::unchanged::AppliedWrites;
use crate::mapping::plan::ActionName;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;

pub use letters::{
    Replayed, Selection, StaleLetter, StoredDeadLetter, purge_recorded, replay_recorded,
};
pub use nats::{NatsOptions, NatsQueue};
pub use sqlite::{AppliedWritesFile, DeadLetterStore, SqliteQueue};

/// The name of the one destination of a server whose config names none (`destinations:`).
/// Its records keep the names they had before destinations existed (no prefix).
pub const DEFAULT_DESTINATION: &str = "default";

/// Whether `name` may name a destination: 1 to 32 of `a-z`, `0-9`, `_` and `-`, starting with a
/// letter (it becomes part of NATS subjects, keys and metric labels).
pub fn valid_destination_name(name: &str) -> bool {
    name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// How long a sender's `messageId` is remembered by default, to drop the same call sent again
/// (Segment's window: 24 hours).
pub const DEFAULT_DEDUPE_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// An event to store.
#[derive(Clone, Debug)]
pub struct NewItem {
    /// The event, as it will be delivered.
    pub event: Value,
    /// Its ordering key (the user); `None` when it has none (ordered with nothing).
    pub partition: Option<String>,
    /// Deliver only this action (a replayed dead letter).
    pub only: Option<ActionName>,
    /// Apply it even where an entity it changes had a newer change applied (`replay --force`).
    pub force: bool,
    /// The sender's `messageId`, by which the same call sent again is recognised and dropped
    /// (`None`: the id was generated at ingest, or the item is a replay).
    pub message_id: Option<String>,
    /// The destinations it goes to, by name, each delivering it on its own; empty: the
    /// destination of the queue it is pushed to.
    pub destinations: Vec<String>,
}

impl NewItem {
    /// A dead letter sent again: its event, for its failed action only; with `force`, applied
    /// even where a record it changes had a newer change applied since.
    pub fn replay(letter: DeadLetter, force: bool) -> NewItem {
        NewItem {
            force,
            partition: crate::mapping::event::Event::from_value(letter.event.clone())
                .ok()
                .and_then(|e| e.partition_key()),
            only: letter.action,
            event: letter.event,
            message_id: None,
            destinations: Vec::new(),
        }
    }
}

/// What a push stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Items dropped because their `messageId` was accepted within the deduplication window.
    pub duplicates: u64,
}

/// The id of an item of a queue: increasing in the order the queue hands items out, never
/// reused. (For NATS it is this replica's own count, not a stream sequence.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemId(pub u64);

impl std::fmt::Display for ItemId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A stored event waiting for delivery.
#[derive(Clone, Debug)]
pub struct Item {
    pub id: ItemId,
    pub event: Value,
    pub partition: Option<String>,
    pub only: Option<ActionName>,
    /// Apply it even where an entity it changes had a newer change applied.
    pub force: bool,
    /// A process that stopped before settling it may have sent a write of it that is not
    /// idempotent (SQLite: [`Queue::started`] was recorded; NATS: the queue handed it out
    /// before), so such writes check first whether they were applied.
    pub redelivered: bool,
    /// When it was accepted (milliseconds since the Unix epoch).
    pub accepted_at_ms: u64,
    /// Bytes of its body as stored.
    pub size: usize,
}

/// The cause of a failure that came from another library, kept for `source()`.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a queue could not do what was asked. Each variant keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A file or directory of the data directory could not be created, opened or locked.
    #[error("queue: cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process delivers from the data directory.
    #[error(
        "queue: the data directory {} is in use by another zdmap process (it holds a lock on the directory); stop that one first, or give this one another --data-dir",
        dir.display()
    )]
    InUse { dir: std::path::PathBuf },
    /// A data directory that holds no queue.
    #[error(
        "queue: {} holds no zdmap data (no {}): give the --data-dir of `zdmap serve`",
        dir.display(),
        sqlite::DATABASE_FILE
    )]
    NoData { dir: std::path::PathBuf },
    /// The database file could not be opened.
    #[error("queue: cannot open {}: {source}", path.display())]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite failed.
    #[error("queue: {0}")]
    Database(#[from] rusqlite::Error),
    /// The queue was closed, or its writer stopped.
    #[error("queue: the queue {0}")]
    Stopped(&'static str),
    /// An item asked for again is not there (settled meanwhile), or the queue cannot read items
    /// again.
    #[error("queue: item {id}: {why}")]
    NotThere { id: ItemId, why: &'static str },
    /// Something stored does not read back (a damaged database or record); says what to do.
    #[error("queue: {0}")]
    Damaged(String),
    /// One failure answered to every write of a group.
    #[error(transparent)]
    Shared(std::sync::Arc<QueueError>),
    /// NATS refused, failed or was not reached; `context` says what was being done.
    #[error("queue: NATS: {context}{}", source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    Nats {
        context: String,
        #[source]
        source: Option<Cause>,
    },
}

impl QueueError {
    /// A NATS failure while doing `context`, caused by `source`.
    pub fn nats(context: impl Into<String>, source: impl Into<Cause>) -> QueueError {
        QueueError::Nats {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A NATS problem that has no cause of its own (a setting, a missing answer).
    pub(crate) fn nats_says(context: impl Into<String>) -> QueueError {
        QueueError::Nats {
            context: context.into(),
            source: None,
        }
    }
}

/// What the server needs from a durable queue. Another backend (a broker shared by several
/// instances) implements the same operations, and keeps the entities' last change times
/// ([`EntityClock`]) where its instances share them.
pub trait Queue: EntityClock + AppliedWrites + Send + Sync + 'static {
    /// Where this queue keeps its dead letters.
    type Letters: DeadLetters + Send + 'static;

    /// Its dead letters, opened for the admin API (beside delivery, as `zdmap dead-letters`
    /// opens them).
    fn dead_letters(&self) -> impl Future<Output = Result<Self::Letters, QueueError>> + Send;

    /// Stores `items` durably, in order, and the dead letters of calls refused at ingest, in one
    /// step; resolves once they would survive a crash. An item whose `message_id` was accepted
    /// within the deduplication window is not stored again.
    fn push(
        &self,
        items: Vec<NewItem>,
        refused: Vec<DeadLetter>,
    ) -> impl Future<Output = Result<Pushed, QueueError>> + Send;

    /// Up to `limit` items with an id above `after`, oldest first. Those a stopped process may
    /// have begun writing ([`Queue::started`]) come back marked `redelivered`.
    fn fetch(
        &self,
        after: ItemId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Item>, QueueError>> + Send;

    /// A write of the item that is not idempotent is about to leave: the queue records it
    /// (durably, before answering), so that after a restart the item comes back `redelivered`
    /// and checks whether that write was applied before sending it again. An item never
    /// started is sent as if new. (A queue whose redelivery says as much by itself need not
    /// record anything.)
    fn started(&self, _id: ItemId) -> impl Future<Output = Result<(), QueueError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Whether [`Queue::reread`] gives items back, so that delivery may let a waiting item's
    /// body go from memory.
    fn rereads(&self) -> bool {
        false
    }

    /// The event of an item not settled yet, read again from the queue.
    fn reread(&self, id: ItemId) -> impl Future<Output = Result<Value, QueueError>> + Send {
        std::future::ready(Err(QueueError::NotThere {
            id,
            why: "this queue does not read items again",
        }))
    }

    /// The item is settled: removes it and stores its dead letters (none when delivered), in one
    /// step, so a failed event is never both gone and not dead-lettered. Returns at once: the
    /// change is committed shortly after (with other writes), and a crash before that only means
    /// the event is delivered again. Fails only when the queue is closed.
    fn finish(&self, id: ItemId, letters: Vec<DeadLetter>) -> Result<(), QueueError>;

    /// Whether a fetched item may still be delivered by this process, asked before each of
    /// its delivery turns starts. A queue of one process owns every item; a shared queue owns
    /// an item while it certainly holds the lease of its partition ([`NatsQueue`]: unsure once
    /// a renewal is late, lost once another replica took the partition).
    fn ownership(&self, _id: ItemId) -> Ownership {
        Ownership::Ours
    }

    /// Forgets an item that is [`Ownership::Lost`] here without settling it: it stays in the
    /// queue for its new owner.
    fn forget(&self, _id: ItemId) {}

    /// How many items wait (delivered ones excluded).
    fn depth(&self) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Resolves when items may have been added since the last call, or after `max_wait` (other
    /// processes, such as `zdmap dead-letters replay`, add items too).
    fn changed(&self, max_wait: std::time::Duration) -> impl Future<Output = ()> + Send;

    /// Why the queue cannot be written, from the last failed write until a write succeeds again
    /// (a successful read says nothing about writes).
    fn write_problem(&self) -> Option<String> {
        None
    }

    /// Lines this backend adds to `/metrics` (Prometheus text); `depth` is [`Queue::depth`].
    fn metrics_text(&self, _depth: Option<u64>) -> String {
        String::new()
    }

    /// What `/readyz` shows of the backend.
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// A destination removed from a running server stops using this handle: a queue that holds
    /// something of its own for it (NATS: its partitions' leases and consumers) lets it go, so
    /// that another process may deliver what waits. The handle is not used again.
    fn retire(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// Makes `budget` (a destination's requests a minute) one budget for every process that
    /// delivers from this queue to the same destination. A queue of one process has nothing
    /// to share.
    fn share_budget(&self, _budget: &Arc<crate::deliver::Budget>) {}

    /// Where the holds on keys that events of different partitions share are taken: one
    /// process delivers everything of a queue of its own, so it holds every key
    /// ([`OneProcess`]); a queue shared by several processes holds them where they all see.
    fn holds(&self) -> Arc<dyn KeyHolds> {
        Arc::new(OneProcess)
    }
}

/// What `zdmap dead-letters` and the admin API need from where dead letters are kept.
pub trait DeadLetters {
    /// Where they are, for messages (a data directory, a NATS address).
    fn place(&self) -> String;

    fn count(&mut self) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Up to `limit` dead letters with an id above `after`, oldest first.
    fn list(
        &mut self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredDeadLetter>, QueueError>> + Send;

    fn get(
        &mut self,
        id: u64,
    ) -> impl Future<Output = Result<Option<StoredDeadLetter>, QueueError>> + Send;

    /// Moves the selected dead letters back into the queue, each for the action that failed;
    /// a letter whose change is older than one applied since is kept unless `force`.
    fn replay(
        &mut self,
        which: &Selection,
        force: bool,
    ) -> impl Future<Output = Result<Replayed, QueueError>> + Send;

    /// Deletes the selected dead letters. Returns how many were deleted.
    fn purge(&mut self, which: &Selection) -> impl Future<Output = Result<u64, QueueError>> + Send;
}
