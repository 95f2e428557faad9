//! The delivery log of `zdmap serve`: for every event it accepts (or refuses at ingest), the
//! record of its way: the accepted facts, the actions matched, every request it caused with its
//! answer, its waits and its end. Read from `journal.sqlite3` in the data directory (WAL), a
//! file of its own so that its writes never contend with the queue's transactions. Two modes:
//! - with a data directory queue ([`Journal::open`]) that file is the log;
//! - with a NATS queue ([`crate::queue::nats::journal`]) the log is a JetStream stream shared
//!   by the replicas, and the file is this replica's copy, rebuilt from the stream at start and
//!   following it, so any replica answers for any event.
//!
//! Recording never waits: [`Journal::accepted`], [`Journal::refused`] and the [`Witness`] that
//! deliveries tell ([`crate::deliver::trail`]) put a note on a bounded channel, and a writer
//! thread writes what is waiting at once: one transaction ([`Pruning::apply`], which a NATS
//! replica's copy applies the stream's messages with too), or a few messages of the stream.
//! When the writer falls behind (the channel is full) or NATS does not take the notes, they are
//! dropped and counted ([`Journal::dropped`], `zdmap_journal_dropped_total`) rather than slowing
//! ingest or delivery. The database is pruned by age (events accepted more than `max_age` ago)
//! and by size (the oldest events go while the pages in use exceed `max_bytes`); the stream
//! has the same bounds.
//!
//! Reading, for the admin API and the console (each call reads the database; run it off the
//! async threads):
//! - [`Journal::search`]`(&Query) -> Page`: events by `messageId`, user, email, event name,
//!   state and time, newest first, with a cursor for the next page;
//! - [`Journal::record`]`(message_id) -> Option<Record>`: one event's whole record;
//! - [`Journal::entries`]`(after, &Query, limit) -> Vec<Noted>`: the entries recorded after a
//!   sequence number (or the last ones), oldest first, for following the log (`zdmap events
//!   tail`);
//! - [`Journal::note`]: records an entry for an event (a dead letter replayed or discarded).
//!
//! Tables: `events` (one row per `messageId`, in the order they were accepted: the accepted
//! facts, the state, indexed by message id, user, anonymous id, email, event name and state) and `entries` (one row
//! per entry: its event, its time and the entry as compact JSON). The write key is never
//! stored: an event's `source` is the key's fingerprint. The event's body is not stored.

use super::QueueError;
use crate::base::time::{rfc3339_from_unix_secs, unix_millis_now};
use crate::deliver::trail::{Entry, Witness};
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// The delivery log's file in the data directory.
pub const JOURNAL_FILE: &str = "journal.sqlite3";

/// Notes waiting for the writer at most; more are dropped (and counted).
const BACKLOG: usize = 65_536;

/// Notes committed in one transaction at most.
const GROUP_LIMIT: usize = 4096;

/// How often the writer prunes, at least.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// The writer thread's niceness: when the CPU is short it gives way to ingest and delivery,
/// whose notes wait on the channel meanwhile (up to [`BACKLOG`]).
const WRITER_NICENESS: i32 = 10;

/// Lowers the calling thread's priority to [`WRITER_NICENESS`] (on Linux a thread's niceness is
/// its own; elsewhere the writer keeps the process's).
fn yield_to_delivery() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, WRITER_NICENESS) {
        tracing::debug!(error = %e, "the delivery log's writer keeps its priority");
    }
}

/// Events read per page at most.
pub const MAX_PAGE: usize = 500;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    type TEXT,
    user_id TEXT,
    anonymous_id TEXT,
    email TEXT,
    event TEXT,
    source TEXT,
    size INTEGER,
    state TEXT NOT NULL,
    accepted_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_anonymous_id ON events (anonymous_id) WHERE anonymous_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_email ON events (email) WHERE email IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_name ON events (event) WHERE event IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_state ON events (state);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event INTEGER NOT NULL,
    at INTEGER NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_event ON entries (event);
";

/// How long and how much the delivery log keeps.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// Events accepted longer ago are forgotten.
    pub max_age: Duration,
    /// The oldest events are forgotten while the log takes more than this.
    pub max_bytes: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
        }
    }
}

/// What the log knows of an event when it is accepted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    pub message_id: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    /// `traits.email`, or `context.traits.email`.
    pub email: Option<String>,
    /// A `track` call's event name.
    pub event: Option<String>,
    /// Which write key sent it (a fingerprint, `-` without keys).
    pub source: Option<String>,
    /// Bytes of the event.
    pub size: Option<u64>,
}

impl Facts {
    /// The facts of an event (a Segment call as stored), `size` bytes, sent with the key
    /// whose fingerprint is `source`.
    pub fn of(event: &Value, size: u64, source: &str) -> Facts {
        let text = |v: Option<&Value>| match v {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let email = text(event.pointer("/traits/email"))
            .or_else(|| text(event.pointer("/context/traits/email")));
        Facts {
            message_id: text(event.get("messageId")).unwrap_or_default(),
            kind: text(event.get("type")),
            user_id: text(event.get("userId")),
            anonymous_id: text(event.get("anonymousId")),
            email,
            event: text(event.get("event")),
            source: Some(source.to_owned()),
            size: Some(size),
        }
    }
}

/// What to look for: every field set must match (a user matches `userId` or `anonymousId`).
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub message_id: Option<String>,
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub event: Option<String>,
    pub state: Option<String>,
    /// Accepted at or after (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Accepted before (ms since the Unix epoch).
    pub until_ms: Option<u64>,
    /// Events of a page (at most [`MAX_PAGE`]).
    pub limit: usize,
    /// From [`Page::next_cursor`]: the page after the one that gave it.
    pub cursor: Option<u64>,
}

/// An event as a search lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub facts: Facts,
    pub state: String,
    pub accepted_at: String,
    pub updated_at: String,
}

/// A page of a search, newest first; `next_cursor` reads the next one (`None`: no more).
#[derive(Clone, Debug, Serialize)]
pub struct Page {
    pub events: Vec<Summary>,
    pub next_cursor: Option<String>,
}

/// An entry as the log kept it: when, and its sequence number in the log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Noted {
    pub seq: u64,
    pub at: String,
    /// The event's `messageId` (in [`Journal::entries`]; inside a record it is the record's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The destination it happened at, on a server with several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(flatten)]
    pub entry: Entry,
}

/// One event's whole record: its facts and state, the actions it matched, and every entry.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    #[serde(flatten)]
    pub summary: Summary,
    /// The actions the last planning matched (empty: no trigger matched; `None`: not planned
    /// yet).
    pub actions: Option<Vec<String>>,
    pub timeline: Vec<Noted>,
}

/// What is written to the log: the part of a note that goes to the database (and, with a
/// NATS queue, through the shared stream).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Written {
    /// Events' facts, at a time, each with its first entry: `accepted` (`None`) or `refused`.
    Accepted(Vec<Facts>, u64, Option<Entry>),
    Entry {
        message_id: String,
        at: u64,
        entry: Entry,
        /// The destination it happened at, on a server with several.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        destination: Option<String>,
    },
}

/// An entry as its row keeps it: the entry, and the destination it happened at (on a server
/// with several).
#[derive(Serialize, Deserialize)]
struct Kept {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
    #[serde(flatten)]
    entry: Entry,
}

/// What the writer is handed.
enum Note {
    Written(Written),
    /// Answered once everything before it is written.
    Flush(mpsc::Sender<()>),
    /// Write what came before, then stop.
    Stop,
}

/// Where a replica's writer puts the notes of a NATS queue's log: one message of the shared
/// stream per call, `Err` when it cannot (those notes are then dropped and counted).
pub(crate) trait Publish: Send {
    fn publish(&mut self, message: Vec<u8>) -> Result<(), String>;
}

/// Where the writer puts what it is handed.
enum Sink {
    /// The database itself (a data directory queue).
    Database(Connection, Pruning),
    /// The shared stream, which every replica's database follows (a NATS queue).
    Shared(Box<dyn Publish>),
}

/// Bytes of notes in one message of the shared stream, about at most (NATS takes 1 MiB by
/// default).
const MESSAGE_BYTES: usize = 256 * 1024;

/// The delivery log: see the module docs.
pub struct Journal {
    path: PathBuf,
    notes: mpsc::SyncSender<Note>,
    /// Set by [`Journal::close`]: later notes are dropped.
    closed: std::sync::atomic::AtomicBool,
    reader: Mutex<Connection>,
    dropped: Arc<AtomicU64>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// With a NATS queue: stops what applies the shared stream to this replica's database.
    follower: Mutex<Option<StopFollowing>>,
}

/// Stops applying the shared stream to a replica's copy, and waits until it has.
pub(crate) type StopFollowing = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn open_connection(path: &Path) -> Result<Connection, QueueError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| QueueError::Io {
            what: "create the data directory",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let conn = Connection::open(path).map_err(|source| QueueError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // A log: a crash may lose its last moments, never the queue's.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

impl Journal {
    /// Opens (creating) the delivery log of `data_dir` and starts its writer.
    pub fn open(data_dir: &Path, options: JournalOptions) -> Result<Arc<Journal>, QueueError> {
        let path = data_dir.join(JOURNAL_FILE);
        let writer = open_connection(&path)?;
        let reader = open_connection(&path)?;
        Self::start(path, reader, Sink::Database(writer, Pruning::new(options)))
    }

    /// Opens the delivery log of a NATS queue: notes go to the shared stream through
    /// `publish`, and `follow` is handed this replica's database, emptied (it is rebuilt from
    /// the stream), to apply the stream to with [`Pruning::apply`]; it answers how to stop doing so.
    pub(crate) fn open_shared(
        data_dir: &Path,
        publish: Box<dyn Publish>,
        follow: impl FnOnce(Connection) -> Result<StopFollowing, QueueError>,
    ) -> Result<Arc<Journal>, QueueError> {
        let path = data_dir.join(JOURNAL_FILE);
        for file in [
            path.clone(),
            data_dir.join(format!("{JOURNAL_FILE}-wal")),
            data_dir.join(format!("{JOURNAL_FILE}-shm")),
        ] {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(QueueError::Io {
                        what: "empty the delivery log's copy",
                        path: file,
                        source,
                    });
                }
            }
        }
        let applier = open_connection(&path)?;
        let reader = open_connection(&path)?;
        let stop = follow(applier)?;
        let journal = Self::start(path, reader, Sink::Shared(publish))?;
        *crate::base::sync::lock(&journal.follower) = Some(stop);
        Ok(journal)
    }

    fn start(path: PathBuf, reader: Connection, sink: Sink) -> Result<Arc<Journal>, QueueError> {
        let (tx, rx) = mpsc::sync_channel(BACKLOG);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("zdmap-journal".into())
            .spawn(move || {
                yield_to_delivery();
                write(sink, rx, &counted)
            })
            .map_err(|source| QueueError::Io {
                what: "start the writer of",
                path: path.clone(),
                source,
            })?;
        Ok(Arc::new(Journal {
            path,
            notes: tx,
            closed: std::sync::atomic::AtomicBool::new(false),
            reader: Mutex::new(reader),
            dropped,
            writer: Mutex::new(Some(thread)),
            follower: Mutex::new(None),
        }))
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notes dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Hands `note` (counting `entries`) to the writer, or drops it when the writer is behind.
    fn send(&self, note: Note, entries: usize) {
        let sent = !self.closed.load(Ordering::Relaxed) && self.notes.try_send(note).is_ok();
        if !sent {
            self.dropped.fetch_add(entries as u64, Ordering::Relaxed);
        }
    }

    /// Events are accepted (recorded before they are stored, so that their acceptance comes
    /// before what their delivery records). An event whose `messageId` the log has already (the
    /// same call sent again, dropped as a duplicate) keeps its record as it is.
    pub fn accepted(&self, facts: Vec<Facts>) {
        if !facts.is_empty() {
            let n = facts.len();
            self.send(
                Note::Written(Written::Accepted(facts, unix_millis_now(), None)),
                n,
            );
        }
    }

    /// Records `entry` for the event `message_id`, now.
    pub fn note(&self, message_id: &str, entry: Entry) {
        self.note_at(message_id, unix_millis_now(), entry);
    }

    /// Records `entry` for the event `message_id` as of `at` (ms since the Unix epoch): an
    /// event's state is that of its latest entry by time, so a replay noted after the fact
    /// with the time it began does not hide what the replayed event did since.
    pub fn note_at(&self, message_id: &str, at: u64, entry: Entry) {
        self.note_from(None, message_id, at, entry);
    }

    /// Records `entry` for the event `message_id`, as of `at`, at `destination` (on a server
    /// with several; `None` on one with one).
    pub fn note_from(&self, destination: Option<&str>, message_id: &str, at: u64, entry: Entry) {
        self.send(
            Note::Written(Written::Entry {
                message_id: message_id.to_owned(),
                at,
                entry,
                destination: destination.map(str::to_owned),
            }),
            1,
        );
    }

    /// What the delivery to `destination` notes its events' entries with: this log, each
    /// entry saying the destination (`None`: a server with one destination says none).
    pub fn witness_for(self: &Arc<Self>, destination: Option<&str>) -> Arc<dyn Witness> {
        match destination {
            None => self.clone(),
            Some(name) => Arc::new(AtDestination {
                journal: self.clone(),
                destination: name.to_owned(),
            }),
        }
    }

    /// A call was refused at ingest: recorded under its `messageId` (a generated one when it
    /// has none), with the facts it has.
    pub fn refused(&self, mut facts: Facts, reason: &str, message: &str) {
        if facts.message_id.is_empty() {
            let n: u64 = rand::random();
            facts.message_id = format!("refused-{n:016x}");
        }
        let refused = Entry::Refused {
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        self.send(
            Note::Written(Written::Accepted(
                vec![facts],
                unix_millis_now(),
                Some(refused),
            )),
            1,
        );
    }

    /// Waits until every note recorded before is committed (with a NATS queue: published).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if !self.closed.load(Ordering::Relaxed) && self.notes.send(Note::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Commits what is waiting and stops the writer; later notes are dropped.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        let _ = self.notes.send(Note::Stop);
        if let Some(thread) = crate::base::sync::lock(&self.writer).take() {
            let _ = thread.join();
        }
        let follower = crate::base::sync::lock(&self.follower).take();
        if let Some(stop) = follower {
            stop();
        }
    }

    /// A page of the events `query` finds, newest first.
    pub fn search(&self, query: &Query) -> Result<Page, QueueError> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let (mut sql, mut args) = conditions(query);
        if let Some(cursor) = query.cursor {
            sql.push_str(" AND id < ?");
            args.push(SqlValue::Integer(i64::try_from(cursor).unwrap_or(i64::MAX)));
        }
        let sql = format!(
            "SELECT id, {SUMMARY_COLUMNS} FROM events WHERE {sql} ORDER BY id DESC LIMIT {}",
            limit + 1
        );
        let conn = crate::base::sync::lock(&self.reader);
        let mut statement = conn.prepare_cached(&sql)?;
        let mut rows = statement.query(params_from_iter(args))?;
        let mut events = Vec::new();
        let mut last = None;
        while let Some(row) = rows.next()? {
            if events.len() == limit {
                return Ok(Page {
                    events,
                    next_cursor: last.map(|id: i64| id.to_string()),
                });
            }
            last = Some(row.get(0)?);
            events.push(summary(row, 1)?);
        }
        Ok(Page {
            events,
            next_cursor: None,
        })
    }

    /// The whole record of the event `message_id`, if the log has it.
    pub fn record(&self, message_id: &str) -> Result<Option<Record>, QueueError> {
        let conn = crate::base::sync::lock(&self.reader);
        let found = conn
            .query_row(
                &format!("SELECT id, {SUMMARY_COLUMNS} FROM events WHERE message_id = ?1"),
                [message_id],
                |row| Ok((row.get::<_, i64>(0)?, summary(row, 1)?)),
            )
            .optional()?;
        let Some((id, summary)) = found else {
            return Ok(None);
        };
        let mut statement = conn
            .prepare_cached("SELECT id, at, entry FROM entries WHERE event = ?1 ORDER BY at, id")?;
        let mut rows = statement.query([id])?;
        let mut timeline = Vec::new();
        while let Some(row) = rows.next()? {
            if let Some(noted) = noted(row, None)? {
                timeline.push(noted);
            }
        }
        let actions = timeline.iter().rev().find_map(|n| match &n.entry {
            Entry::Matched { actions } => Some(actions.clone()),
            _ => None,
        });
        Ok(Some(Record {
            summary,
            actions,
            timeline,
        }))
    }

    /// Up to `limit` entries recorded after `after` (a [`Noted::seq`]), oldest first, of the
    /// events `query` finds (its cursor and limit are not used); without `after`, the last
    /// `limit` entries.
    pub fn entries(
        &self,
        after: Option<u64>,
        query: &Query,
        limit: usize,
    ) -> Result<Vec<Noted>, QueueError> {
        let (conditions, mut args) = conditions(query);
        let from = after.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX));
        args.insert(0, SqlValue::Integer(from));
        let order = if after.is_some() { "" } else { "DESC" };
        let sql = format!(
            "SELECT n.id, n.at, n.entry, e.message_id FROM entries n JOIN events e ON e.id = n.event \
             WHERE n.id > ? AND e.id IN (SELECT id FROM events WHERE {conditions}) \
             ORDER BY n.id {order} LIMIT {}",
            limit.clamp(1, MAX_PAGE)
        );
        let conn = crate::base::sync::lock(&self.reader);
        let mut statement = conn.prepare_cached(&sql)?;
        let mut rows = statement.query(params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            if let Some(n) = noted(row, Some(row.get(3)?))? {
                out.push(n);
            }
        }
        if after.is_none() {
            out.reverse();
        }
        Ok(out)
    }
}

impl Witness for Journal {
    fn note(&self, message_id: &str, at_ms: u64, entry: Entry) {
        self.note_at(message_id, at_ms, entry);
    }
}

/// The log as the delivery to one of several destinations notes in it.
struct AtDestination {
    journal: Arc<Journal>,
    destination: String,
}

impl Witness for AtDestination {
    fn note(&self, message_id: &str, at_ms: u64, entry: Entry) {
        (self.journal).note_from(Some(&self.destination), message_id, at_ms, entry);
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

type SqlValue = rusqlite::types::Value;

const SUMMARY_COLUMNS: &str = "message_id, type, user_id, anonymous_id, email, event, source, size, state, accepted_at, updated_at";

/// The `WHERE` conditions of a query, with their arguments.
fn conditions(query: &Query) -> (String, Vec<SqlValue>) {
    let mut sql = String::from("1");
    let mut args = Vec::new();
    let mut text = |column: &str, value: &Option<String>| {
        if let Some(v) = value {
            sql.push_str(&format!(" AND {column}"));
            args.push(SqlValue::Text(v.clone()));
        }
    };
    text("message_id = ?", &query.message_id);
    text("email = ?", &query.email);
    text("event = ?", &query.event);
    text("state = ?", &query.state);
    if let Some(user) = &query.user_id {
        sql.push_str(" AND (user_id = ? OR anonymous_id = ?)");
        args.push(SqlValue::Text(user.clone()));
        args.push(SqlValue::Text(user.clone()));
    }
    let ms = |v: u64| SqlValue::Integer(i64::try_from(v).unwrap_or(i64::MAX));
    if let Some(since) = query.since_ms {
        sql.push_str(" AND accepted_at >= ?");
        args.push(ms(since));
    }
    if let Some(until) = query.until_ms {
        sql.push_str(" AND accepted_at < ?");
        args.push(ms(until));
    }
    (sql, args)
}

/// A summary from the row's columns from `at` on (in [`SUMMARY_COLUMNS`] order).
fn summary(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Summary> {
    let size: Option<i64> = row.get(at + 7)?;
    Ok(Summary {
        facts: Facts {
            message_id: row.get(at)?,
            kind: row.get(at + 1)?,
            user_id: row.get(at + 2)?,
            anonymous_id: row.get(at + 3)?,
            email: row.get(at + 4)?,
            event: row.get(at + 5)?,
            source: row.get(at + 6)?,
            size: size.and_then(|s| u64::try_from(s).ok()),
        },
        state: row.get(at + 8)?,
        accepted_at: time_of(row.get(at + 9)?),
        updated_at: time_of(row.get(at + 10)?),
    })
}

/// An entry row (`id, at, entry`); `None` for an entry this version does not read.
fn noted(row: &rusqlite::Row<'_>, message_id: Option<String>) -> rusqlite::Result<Option<Noted>> {
    let text: String = row.get(2)?;
    let Ok(kept) = serde_json::from_str::<Kept>(&text) else {
        return Ok(None);
    };
    Ok(Some(Noted {
        seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or_default(),
        at: time_of(row.get(1)?),
        message_id,
        destination: kept.destination,
        entry: kept.entry,
    }))
}

/// ms since the Unix epoch as RFC 3339 with milliseconds (`2026-05-01T12:00:00.123Z`).
pub fn time_of(ms: i64) -> String {
    let seconds = rfc3339_from_unix_secs(ms.div_euclid(1000));
    format!(
        "{}.{:03}Z",
        seconds.trim_end_matches('Z'),
        ms.rem_euclid(1000)
    )
}

/// When the database is pruned: every [`GROUP_LIMIT`] notes or [`PRUNE_EVERY`], at least.
pub(crate) struct Pruning {
    options: JournalOptions,
    last: std::time::Instant,
    since: usize,
}

impl Pruning {
    pub(crate) fn new(options: JournalOptions) -> Pruning {
        Pruning {
            options,
            last: std::time::Instant::now(),
            since: 0,
        }
    }

    /// Writes `notes` to the database in one transaction, and prunes it when it is time.
    pub(crate) fn apply(&mut self, conn: &mut Connection, notes: Vec<Written>) {
        self.since += notes.len();
        if let Err(e) = commit(conn, notes) {
            tracing::warn!(error = %e, "cannot write the delivery log; these entries are lost");
        }
        if self.since >= GROUP_LIMIT || self.last.elapsed() >= PRUNE_EVERY {
            if let Err(e) = prune(conn, &self.options, unix_millis_now()) {
                tracing::warn!(error = %e, "cannot prune the delivery log");
            }
            self.last = std::time::Instant::now();
            self.since = 0;
        }
    }
}

/// The writer: writes what waits at once (one transaction, or messages of the shared stream),
/// until it is stopped or every sender is gone.
fn write(mut sink: Sink, notes: mpsc::Receiver<Note>, dropped: &AtomicU64) {
    let mut stop = false;
    while !stop && let Ok(first) = notes.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_LIMIT {
            match notes.try_recv() {
                Ok(note) => group.push(note),
                Err(_) => break,
            }
        }
        let mut written = Vec::with_capacity(group.len());
        let mut flushed = Vec::new();
        for note in group {
            match note {
                Note::Written(w) => written.push(w),
                Note::Flush(done) => flushed.push(done),
                Note::Stop => stop = true,
            }
        }
        match &mut sink {
            Sink::Database(conn, pruning) => pruning.apply(conn, written),
            Sink::Shared(publish) => {
                for (message, count) in messages(&written) {
                    if let Err(e) = publish.publish(message) {
                        dropped.fetch_add(count, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cannot publish to the delivery log; these entries are lost");
                    }
                }
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// Notes as messages of the shared stream (a JSON array each, about [`MESSAGE_BYTES`] at
/// most), each with the entries it carries.
fn messages(written: &[Written]) -> Vec<(Vec<u8>, u64)> {
    let mut out = Vec::new();
    let mut message = Vec::new();
    let mut count = 0u64;
    for w in written {
        let Ok(text) = serde_json::to_vec(w) else {
            continue;
        };
        if !message.is_empty() && message.len() + text.len() > MESSAGE_BYTES {
            message.push(b']');
            out.push((std::mem::take(&mut message), std::mem::take(&mut count)));
        }
        message.push(if message.is_empty() { b'[' } else { b',' });
        message.extend_from_slice(&text);
        count += match w {
            Written::Accepted(facts, ..) => facts.len() as u64,
            Written::Entry { .. } => 1,
        };
    }
    if !message.is_empty() {
        message.push(b']');
        out.push((message, count));
    }
    out
}

/// The notes of a message of the shared stream.
pub(crate) fn decode(message: &[u8]) -> Result<Vec<Written>, serde_json::Error> {
    serde_json::from_slice(message)
}

/// Commits a group of notes in one transaction. An event's row is looked up once per group, and
/// its state written once, after its entries.
fn commit(conn: &mut Connection, group: Vec<Written>) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut accept = tx.prepare_cached(
            "INSERT INTO events (message_id, type, user_id, anonymous_id, email, event, source, size, state, accepted_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10, ?9, ?9) \
             ON CONFLICT (message_id) DO UPDATE SET type = excluded.type, user_id = excluded.user_id, \
             anonymous_id = excluded.anonymous_id, email = excluded.email, event = excluded.event, \
             source = excluded.source, size = excluded.size, accepted_at = excluded.accepted_at \
             WHERE events.source IS NULL \
             RETURNING id",
        )?;
        let mut find = tx.prepare_cached("SELECT id FROM events WHERE message_id = ?1")?;
        let mut bare = tx.prepare_cached(
            "INSERT INTO events (message_id, state, accepted_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
        )?;
        let mut add =
            tx.prepare_cached("INSERT INTO entries (event, at, entry) VALUES (?1, ?2, ?3)")?;
        let mut set_state = tx.prepare_cached(
            "UPDATE events SET state = ?2, updated_at = ?3 WHERE id = ?1 AND updated_at <= ?3",
        )?;
        // The rows of this group's events, and the latest state of each (by time).
        let mut ids: HashMap<String, i64> = HashMap::new();
        let mut states: HashMap<i64, (&'static str, i64)> = HashMap::new();
        let mut add_entry = |id: i64, at: i64, kept: &Kept| -> rusqlite::Result<()> {
            if let Ok(text) = serde_json::to_string(kept) {
                add.execute(rusqlite::params![id, at, text])?;
            }
            Ok(())
        };
        for note in group {
            match note {
                Written::Accepted(all, at, first) => {
                    let at = i64::try_from(at).unwrap_or(i64::MAX);
                    for facts in all {
                        let entry = first.clone().unwrap_or_else(|| Entry::Accepted {
                            kind: facts.kind.clone().unwrap_or_default(),
                            event: facts.event.clone(),
                            size: facts.size.unwrap_or_default(),
                            source: facts.source.clone().unwrap_or_default(),
                        });
                        // A new row, or one an entry made before its acceptance arrived (with
                        // a NATS queue, another replica may publish an event's delivery before
                        // the accepting one publishes its acceptance): it takes the facts.
                        let row: Option<i64> = accept
                            .query_row(
                                rusqlite::params![
                                    facts.message_id,
                                    facts.kind,
                                    facts.user_id,
                                    facts.anonymous_id,
                                    facts.email,
                                    facts.event,
                                    facts.source,
                                    facts.size.and_then(|s| i64::try_from(s).ok()),
                                    at,
                                    entry.state(),
                                ],
                                |r| r.get(0),
                            )
                            .optional()?;
                        if let Some(id) = row {
                            let kept = Kept {
                                destination: None,
                                entry,
                            };
                            add_entry(id, at, &kept)?;
                            ids.insert(facts.message_id, id);
                        }
                    }
                }
                Written::Entry {
                    message_id,
                    at,
                    entry,
                    destination,
                } => {
                    let at = i64::try_from(at).unwrap_or(i64::MAX);
                    let state = entry.state();
                    let id = match ids.get(&message_id) {
                        Some(id) => *id,
                        None => {
                            let id = match find.query_row([&message_id], |r| r.get(0)).optional()? {
                                Some(id) => id,
                                None => {
                                    // Accepted before the log was on, its record was pruned, or its
                                    // acceptance is still on its way.
                                    bare.execute(rusqlite::params![message_id, state, at])?;
                                    tx.last_insert_rowid()
                                }
                            };
                            ids.insert(message_id, id);
                            id
                        }
                    };
                    add_entry(id, at, &Kept { destination, entry })?;
                    let latest = states.entry(id).or_insert((state, at));
                    if at >= latest.1 {
                        *latest = (state, at);
                    }
                }
            }
        }
        for (id, (state, at)) in states {
            set_state.execute(rusqlite::params![id, state, at])?;
        }
    }
    tx.commit()
}

/// Forgets the events accepted more than `max_age` ago, then the oldest while the pages in use
/// exceed `max_bytes`.
fn prune(conn: &Connection, options: &JournalOptions, now_ms: u64) -> rusqlite::Result<()> {
    let age_ms = u64::try_from(options.max_age.as_millis()).unwrap_or(u64::MAX);
    let cutoff = i64::try_from(now_ms.saturating_sub(age_ms)).unwrap_or(i64::MAX);
    // Rows come in the order events were accepted: the old ones are those before the first
    // young one (read from the oldest on, so only what goes is read).
    let first_young: Option<i64> = conn
        .query_row(
            "SELECT id FROM events WHERE accepted_at >= ?1 ORDER BY id LIMIT 1",
            [cutoff],
            |r| r.get(0),
        )
        .optional()?;
    let first_young = first_young.unwrap_or(i64::MAX);
    conn.execute("DELETE FROM entries WHERE event < ?1", [first_young])?;
    conn.execute("DELETE FROM events WHERE id < ?1", [first_young])?;
    let max = i64::try_from(options.max_bytes).unwrap_or(i64::MAX);
    while used_bytes(conn)? > max {
        let events: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
        if events == 0 {
            break;
        }
        // A tenth of the events at a time, the oldest first.
        let batch = (events / 10).max(1);
        conn.execute(
            "DELETE FROM entries WHERE event IN (SELECT id FROM events ORDER BY id LIMIT ?1)",
            [batch],
        )?;
        conn.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?1)",
            [batch],
        )?;
    }
    Ok(())
}

/// Bytes of the database's pages in use (freed pages are reused before the file grows).
fn used_bytes(conn: &Connection) -> rusqlite::Result<i64> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok((pages - free) * size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts(id: &str, user: &str) -> Facts {
        Facts::of(
            &json!({"type": "identify", "messageId": id, "userId": user, "traits": {"email": format!("{user}@example.com")}}),
            100,
            "abc123",
        )
    }

    fn query(limit: usize) -> Query {
        Query {
            limit,
            ..Query::default()
        }
    }

    #[test]
    fn a_record_keeps_its_facts_and_entries_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = Journal::open(dir.path(), JournalOptions::default()).expect("opens");
        journal.accepted(vec![facts("m1", "u1")]);
        journal.note(
            "m1",
            Entry::Matched {
                actions: vec!["upsert_user".into()],
            },
        );
        journal.note("m1", Entry::Delivered);
        journal.flush();
        let record = journal.record("m1").expect("reads").expect("found");
        assert_eq!(record.summary.state, "delivered");
        assert_eq!(
            record.summary.facts.email.as_deref(),
            Some("u1@example.com")
        );
        assert_eq!(record.actions, Some(vec!["upsert_user".to_string()]));
        let kinds: Vec<_> = record.timeline.iter().map(|n| n.entry.state()).collect();
        assert_eq!(kinds, ["accepted", "delivering", "delivered"]);
        assert!(journal.record("m2").expect("reads").is_none());
    }

    #[test]
    fn an_event_sent_again_keeps_its_record() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = Journal::open(dir.path(), JournalOptions::default()).expect("opens");
        journal.accepted(vec![facts("m1", "u1")]);
        journal.note("m1", Entry::Delivered);
        journal.accepted(vec![facts("m1", "u1")]);
        journal.flush();
        let record = journal.record("m1").expect("reads").expect("found");
        let kinds: Vec<_> = record.timeline.iter().map(|n| n.entry.state()).collect();
        assert_eq!(kinds, ["accepted", "delivered"]);
        assert_eq!(record.summary.state, "delivered");
    }

    #[test]
    fn an_acceptance_written_after_its_delivery_fills_in_the_record() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = Journal::open(dir.path(), JournalOptions::default()).expect("opens");
        let accepted_at = unix_millis_now();
        journal.note_at("m1", accepted_at + 10, Entry::Delivered);
        journal.flush();
        journal.send(
            Note::Written(Written::Accepted(
                vec![facts("m1", "u1")],
                accepted_at,
                None,
            )),
            1,
        );
        journal.flush();
        let record = journal.record("m1").expect("reads").expect("found");
        assert_eq!(record.summary.state, "delivered");
        assert_eq!(record.summary.facts.user_id.as_deref(), Some("u1"));
        let kinds: Vec<_> = record.timeline.iter().map(|n| n.entry.state()).collect();
        assert_eq!(kinds, ["accepted", "delivered"]);
        let found = journal
            .search(&Query {
                user_id: Some("u1".into()),
                ..query(10)
            })
            .expect("searches");
        assert_eq!(found.events.len(), 1);
    }

    #[test]
    fn notes_go_through_the_shared_stream_as_they_would_to_the_database() {
        let written = vec![
            Written::Accepted(vec![facts("m1", "u1"), facts("m2", "u2")], 5, None),
            Written::Entry {
                message_id: "m1".into(),
                at: 6,
                entry: Entry::Delivered,
                destination: Some("eu".into()),
            },
        ];
        let messages = messages(&written);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].1, 3, "two acceptances and an entry");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut conn = open_connection(&dir.path().join(JOURNAL_FILE)).expect("opens");
        let notes = decode(&messages[0].0).expect("decodes");
        Pruning::new(JournalOptions::default()).apply(&mut conn, notes);
        let state: String = conn
            .query_row(
                "SELECT state FROM events WHERE message_id = 'm1'",
                [],
                |r| r.get(0),
            )
            .expect("reads");
        assert_eq!(state, "delivered");
        let many: Vec<Written> = (0..5000)
            .map(|i| Written::Entry {
                message_id: format!("message-{i}"),
                at: i,
                entry: Entry::Delivered,
                destination: None,
            })
            .collect();
        let split = self::messages(&many);
        assert!(split.len() > 1, "bounded messages");
        assert!(split.iter().all(|(m, _)| m.len() <= MESSAGE_BYTES));
        assert_eq!(split.iter().map(|(_, n)| n).sum::<u64>(), 5000);
    }

    #[test]
    fn notes_the_writer_cannot_take_are_dropped_and_counted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = Journal::open(dir.path(), JournalOptions::default()).expect("opens");
        journal.accepted(vec![facts("m1", "u1"), facts("m2", "u2")]);
        journal.close();
        assert_eq!(journal.dropped(), 0);
        journal.note("m1", Entry::Delivered);
        journal.accepted(vec![facts("m3", "u3"), facts("m4", "u4")]);
        assert_eq!(journal.dropped(), 3, "one entry and two acceptances");
        let record = journal.record("m1").expect("reads").expect("found");
        assert_eq!(
            record.summary.state, "accepted",
            "what came before the close is kept"
        );
    }

    #[test]
    fn a_search_pages_with_its_cursor_newest_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = Journal::open(dir.path(), JournalOptions::default()).expect("opens");
        for i in 0..5 {
            let user = if i % 2 == 0 { "even" } else { "odd" };
            journal.accepted(vec![facts(&format!("m{i}"), user)]);
        }
        journal.flush();
        let mut q = Query {
            user_id: Some("even".into()),
            ..query(2)
        };
        let first = journal.search(&q).expect("searches");
        let ids: Vec<_> = first
            .events
            .iter()
            .map(|e| e.facts.message_id.as_str())
            .collect();
        assert_eq!(ids, ["m4", "m2"]);
        q.cursor = first.next_cursor.as_deref().and_then(|c| c.parse().ok());
        let second = journal.search(&q).expect("searches");
        let ids: Vec<_> = second
            .events
            .iter()
            .map(|e| e.facts.message_id.as_str())
            .collect();
        assert_eq!(ids, ["m0"]);
        assert_eq!(second.next_cursor, None);
    }

    #[test]
    fn pruning_forgets_old_events_and_keeps_the_log_under_its_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = Journal::open(dir.path(), JournalOptions::default()).expect("opens");
        for i in 0..2000 {
            journal.accepted(vec![facts(&format!("m{i}"), &format!("user-{i}"))]);
            journal.note(&format!("m{i}"), Entry::Delivered);
        }
        journal.flush();
        journal.close();
        let conn = open_connection(&dir.path().join(JOURNAL_FILE)).expect("opens");
        let count = |conn: &Connection| -> i64 {
            conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                .expect("counts")
        };
        assert_eq!(count(&conn), 2000);
        // By size: a quarter of what the log takes now.
        let used = used_bytes(&conn).expect("size");
        let by_size = JournalOptions {
            max_bytes: u64::try_from(used / 4).expect("positive"),
            ..JournalOptions::default()
        };
        prune(&conn, &by_size, unix_millis_now()).expect("prunes");
        assert!(used_bytes(&conn).expect("size") <= used / 4);
        let left = count(&conn);
        assert!(left > 0 && left < 2000, "{left}");
        let oldest: String = conn
            .query_row(
                "SELECT message_id FROM events ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .expect("reads");
        assert_ne!(oldest, "m0", "the oldest go first");
        let orphans: i64 = conn
            .query_row(
                "SELECT count(*) FROM entries WHERE event NOT IN (SELECT id FROM events)",
                [],
                |r| r.get(0),
            )
            .expect("counts");
        assert_eq!(orphans, 0);
        // By age: a day later, with a day's age, nothing is left.
        let by_age = JournalOptions {
            max_age: Duration::from_secs(3600),
            ..JournalOptions::default()
        };
        prune(&conn, &by_age, unix_millis_now() + 24 * 3600 * 1000).expect("prunes");
        assert_eq!(count(&conn), 0);
    }
}
