//! The embedded queue: one SQLite database (`zdmap.sqlite3`, WAL mode) in the data directory.
//!
//! Writes go through one writer thread that takes every command waiting for it and commits them
//! in a single transaction (group commit): many concurrent `push`es cost one sync to disk, and
//! each caller hears back only after that commit. Reads use their own connection, which WAL
//! lets run beside the writer. Other processes (`zdmap dead-letters`) open the same file; SQLite
//! serializes them with the server.
//!
//! Tables: `events` (waiting items, each stored once; `AUTOINCREMENT` so an id is never reused
//! and a reader's cursor never skips a new item), `lanes` (which destination still has to
//! deliver which event: one row per destination an event goes to, removed when that
//! destination settles it; the event goes with its last lane), `dead_letters` (one dead-letter
//! record per row, with its destination) and
//! `message_ids` (the senders' `messageId`s accepted within the deduplication window, so a batch
//! sent again is not queued twice, across restarts too; older ones are forgotten as pushes come)
//! and `entity_times` (the event time of the last change applied per entity, bounded to
//! [`ENTITY_CAPACITY`] by forgetting the least recently changed; see
//! [`crate::deliver::order`]); the per-entity records of a destination other than the default
//! are keyed `NAME/ENTITY`, since each destination is another Zendesk account. A lane's `started` column says a write of it that is not
//! idempotent may have left (set, and committed, before the first such request goes out): at
//! the next start only those come back `redelivered` and check before they write. An event
//! that waited in memory and never reached Zendesk is sent as if new. (`marks` held, in older
//! databases, the highest item id handed out; it is read once to mark those items started.)
//!
//! Storage faults: a database whose pages are damaged is refused at open (SQLite's quick check),
//! since it would take events and never give them back. When a write fails (disk full, read-only
//! file system), the queue reports it ([`Queue::write_problem`]) until a write succeeds again;
//! the settling of delivered events is kept and tried again every [`RETRY_WRITES`] (with a
//! probe write when nothing waits) so that, once there is room again, they are not delivered a
//! second time after a restart. Only if zdmap stops before that are they delivered again.

use super::{
    DEFAULT_DESTINATION, DeadLetters, Item, ItemId, NewItem, Pushed, Queue, QueueError, Replayed,
    Selection, StaleLetter, StoredDeadLetter,
};
use crate::base::sync::lock;
use crate::base::time::unix_millis_now;
use crate::deliver::DeadLetter;
use crate::deliver::order::{EntityClock, MemoryClock};
use crate::deliver::unchanged::{AppliedWrite, AppliedWrites, MemoryWrites};
use crate::mapping::plan::ActionName;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "zdmap.sqlite3";

/// Commands handled together in one transaction, at most.
const GROUP_LIMIT: usize = 1024;

/// How often the writer tries again after a failed write.
pub(crate) const RETRY_WRITES: Duration = Duration::from_secs(1);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    partition TEXT,
    only_action TEXT,
    accepted_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
-- Small, so that counting the queue (`depth`) reads this index rather than every body.
CREATE INDEX IF NOT EXISTS events_by_acceptance ON events (accepted_at);
-- Which destination still has to deliver which event: an event is stored once, counts its
-- lanes left (`events.pending`), and is removed with its last one.
CREATE TABLE IF NOT EXISTS lanes (
    destination TEXT NOT NULL,
    event INTEGER NOT NULL,
    started INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (destination, event)
) WITHOUT ROWID;
DROP INDEX IF EXISTS lanes_by_event;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS message_ids (
    message_id TEXT PRIMARY KEY,
    accepted_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS message_ids_by_age ON message_ids (accepted_at);
CREATE TABLE IF NOT EXISTS entity_times (
    entity TEXT PRIMARY KEY,
    at INTEGER NOT NULL,
    touched INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_times_by_touch ON entity_times (touched);
CREATE TABLE IF NOT EXISTS applied_writes (
    entity TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    touched INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS applied_writes_by_touch ON applied_writes (touched);
CREATE TABLE IF NOT EXISTS marks (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The mark of the highest item id handed out for delivery, in older databases.
const HANDED_OUT: &str = "handed_out";

/// Entities whose last change time is kept on disk at most (the least recently changed go).
pub(crate) const ENTITY_CAPACITY: usize = 1_000_000;

/// Entities whose last change time is also kept in memory.
const ENTITY_MEMORY: usize = 100_000;

/// Entities whose last write applied is kept on disk at most (the least recently written go).
pub(crate) const WRITES_CAPACITY: usize = 1_000_000;

/// Entities whose last write applied (or that they have none) is also kept in memory.
const WRITES_MEMORY: usize = 100_000;

/// Entity times recorded between two trims of the table to [`ENTITY_CAPACITY`].
const TRIM_EVERY: u64 = 4096;

/// Opens (creating) the database of `data_dir` with the settings every connection needs.
fn open_connection(data_dir: &Path) -> Result<Connection, QueueError> {
    std::fs::create_dir_all(data_dir).map_err(|source| QueueError::Io {
        what: "create the data directory",
        path: data_dir.to_path_buf(),
        source,
    })?;
    let path = data_dir.join(DATABASE_FILE);
    let conn = Connection::open(&path).map_err(|source| QueueError::Open {
        path: path.clone(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk before the ingest API answers, even across a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    let had_lanes = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'lanes'")?
        .exists([])?;
    conn.execute_batch(SCHEMA)?;
    // `force` and `started` came after the first release: add them to an older database.
    add_column(&conn, "events", "force")?;
    if add_column(&conn, "events", "started")? {
        // What an older version handed out may have been under way: it checks before writing.
        conn.execute(
            "UPDATE events SET started = 1 WHERE id <= \
             (SELECT coalesce(max(value), 0) FROM marks WHERE name = ?1)",
            params![HANDED_OUT],
        )?;
    }
    add_text_column(&conn, "dead_letters", "destination")?;
    if !had_lanes {
        // A database from before destinations: its waiting events are the default
        // destination's.
        conn.execute(
            "INSERT OR IGNORE INTO lanes (destination, event, started) \
             SELECT ?1, id, started FROM events",
            params![DEFAULT_DESTINATION],
        )?;
    }
    if add_column(&conn, "events", "pending")? {
        // Each waiting event counts the lanes it has left.
        conn.execute(
            "UPDATE events SET pending = (SELECT count(*) FROM lanes WHERE lanes.event = events.id)",
            [],
        )?;
    }
    Ok(conn)
}

/// Adds the flag column `name` to `table` when it lacks it; `true` when it was added here.
fn add_column(conn: &Connection, table: &str, name: &str) -> Result<bool, QueueError> {
    add_column_as(conn, table, name, "INTEGER NOT NULL DEFAULT 0")
}

/// Adds the text column `name` (null where unset) to `table` when it lacks it.
fn add_text_column(conn: &Connection, table: &str, name: &str) -> Result<bool, QueueError> {
    add_column_as(conn, table, name, "TEXT")
}

fn add_column_as(
    conn: &Connection,
    table: &str,
    name: &str,
    kind: &str,
) -> Result<bool, QueueError> {
    let has = conn
        .prepare(&format!(
            "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
        ))?
        .exists(params![name])?;
    if has {
        return Ok(false);
    }
    match conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {kind}")) {
        Ok(()) => Ok(true),
        // Another process added it meanwhile.
        Err(e) if e.to_string().contains("duplicate column") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

enum Command {
    Push {
        /// Each with the destinations it goes to (never empty here).
        items: Vec<NewItem>,
        refused: Vec<DeadLetter>,
        /// The destination of the refused calls' dead letters.
        destination: Arc<str>,
        /// Remember `messageId`s accepted since this time (ms); `None`: no deduplication.
        dedupe_since: Option<u64>,
        /// Set by `apply`: items dropped as already accepted.
        duplicates: AtomicU64,
        done: oneshot::Sender<Result<Pushed, QueueError>>,
    },
    Finish {
        destination: Arc<str>,
        id: u64,
        letters: Vec<DeadLetter>,
    },
    /// A write of item `id` that is not idempotent is about to leave, for `destination`.
    Started {
        destination: Arc<str>,
        id: u64,
        done: oneshot::Sender<Result<(), QueueError>>,
    },
    /// A change of `entity` at `at` (ms) was applied; with `trim`, the table is cut to
    /// [`ENTITY_CAPACITY`] first.
    Applied { entity: String, at: i64, trim: bool },
    /// The last write applied to `entity` is `record` (`None`: forgotten); with `trim`, the
    /// table is cut to [`WRITES_CAPACITY`] first.
    Wrote {
        entity: String,
        record: Option<String>,
        trim: bool,
    },
}

impl Command {
    fn apply(&self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        match self {
            Command::Push {
                items,
                refused,
                destination,
                dedupe_since,
                duplicates,
                ..
            } => {
                let accepted = unix_millis_now();
                if let Some(since) = dedupe_since {
                    tx.prepare_cached("DELETE FROM message_ids WHERE accepted_at < ?1")?
                        .execute(params![*since as i64])?;
                }
                let mut dropped = 0;
                for item in items {
                    if dedupe_since.is_some() && !first_time(tx, item, accepted)? {
                        dropped += 1;
                        continue;
                    }
                    insert_item(tx, item, accepted)?;
                }
                for letter in refused {
                    insert_letter(tx, letter, destination)?;
                }
                duplicates.store(dropped, Ordering::Relaxed);
            }
            Command::Finish {
                destination,
                id,
                letters,
            } => {
                for letter in letters {
                    insert_letter(tx, letter, destination)?;
                }
                let settled = tx
                    .prepare_cached("DELETE FROM lanes WHERE destination = ?1 AND event = ?2")?
                    .execute(params![&**destination, *id as i64])?;
                if settled == 1 {
                    // The event goes with its last lane.
                    tx.prepare_cached("UPDATE events SET pending = pending - 1 WHERE id = ?1")?
                        .execute(params![*id as i64])?;
                    tx.prepare_cached("DELETE FROM events WHERE id = ?1 AND pending <= 0")?
                        .execute(params![*id as i64])?;
                }
            }
            Command::Started {
                destination, id, ..
            } => {
                tx.prepare_cached(
                    "UPDATE lanes SET started = 1 WHERE destination = ?1 AND event = ?2",
                )?
                .execute(params![&**destination, *id as i64])?;
            }
            Command::Applied { entity, at, trim } => {
                if *trim {
                    tx.prepare_cached(
                        "DELETE FROM entity_times WHERE entity IN (SELECT entity FROM entity_times \
                         ORDER BY touched LIMIT max(0, (SELECT count(*) FROM entity_times) - ?1))",
                    )?
                    .execute(params![ENTITY_CAPACITY as i64])?;
                }
                tx.prepare_cached(
                    "INSERT INTO entity_times (entity, at, touched) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (entity) DO UPDATE SET at = max(at, excluded.at), touched = excluded.touched",
                )?
                .execute(params![entity, at, unix_millis_now() as i64])?;
            }
            Command::Wrote {
                entity,
                record,
                trim,
            } => {
                if *trim {
                    tx.prepare_cached(
                        "DELETE FROM applied_writes WHERE entity IN (SELECT entity FROM applied_writes \
                         ORDER BY touched LIMIT max(0, (SELECT count(*) FROM applied_writes) - ?1))",
                    )?
                    .execute(params![WRITES_CAPACITY as i64])?;
                }
                match record {
                    Some(record) => tx
                        .prepare_cached(
                            "INSERT INTO applied_writes (entity, record, touched) VALUES (?1, ?2, ?3) \
                             ON CONFLICT (entity) DO UPDATE SET record = excluded.record, touched = excluded.touched",
                        )?
                        .execute(params![entity, record, unix_millis_now() as i64])?,
                    None => tx
                        .prepare_cached("DELETE FROM applied_writes WHERE entity = ?1")?
                        .execute(params![entity])?,
                };
            }
        }
        Ok(())
    }

    fn is_push(&self) -> bool {
        matches!(self, Command::Push { .. })
    }

    /// A settlement: kept and tried again when it cannot be written.
    fn is_finish(&self) -> bool {
        matches!(self, Command::Finish { .. } | Command::Applied { .. })
    }

    fn reply(self, result: Result<(), QueueError>) {
        match self {
            Command::Push {
                done, duplicates, ..
            } => {
                let _ = done.send(result.map(|()| Pushed {
                    duplicates: duplicates.into_inner(),
                }));
            }
            Command::Started { done, .. } => {
                let _ = done.send(result);
            }
            Command::Applied { entity, .. } => {
                if let Err(e) = result {
                    tracing::error!(%entity, error = %e, "cannot record the time of an entity's last change");
                }
            }
            Command::Wrote { entity, .. } => {
                if let Err(e) = result {
                    tracing::error!(%entity, error = %e, "cannot record the last write applied to an entity");
                }
            }
            Command::Finish { id, .. } => {
                if let Err(e) = result {
                    // The event stays queued and is delivered again at the next start.
                    tracing::error!(queue_id = id, error = %e, "cannot remove a settled event from the queue");
                }
            }
        }
    }
}

/// The SQLite queue, as one destination sees it: the events of its lane, its dead letters, its
/// records of entities. [`SqliteQueue::lane`] gives another destination's view of the same
/// database. Cheap to share (`Arc`); dropping the last handle of the database lets the writer
/// finish what it was given and stop.
pub struct SqliteQueue {
    store: Arc<Store>,
    /// The destination whose lane this handle reads and settles.
    destination: Arc<str>,
    dedupe_window: Duration,
    /// The last count of pushes this handle has seen ([`Queue::changed`]).
    seen: tokio::sync::Mutex<watch::Receiver<u64>>,
}

/// The database behind every lane: its writer, its reader and the memory of entity records.
struct Store {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<Command>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    reader: Arc<Mutex<Connection>>,
    /// Counts the pushes committed, so that every lane's reader wakes.
    added: watch::Sender<u64>,
    /// Why the last write failed, until one succeeds again.
    write_problem: Arc<Mutex<Option<String>>>,
    /// Held until the queue is closed: only this process delivers from the data directory.
    dir_lock: Mutex<Option<super::lock::DataDirLock>>,
    /// The entity times recorded or read lately (the table is the whole of them).
    entity_memory: MemoryClock,
    /// Entity times recorded, to trim the table now and then.
    entity_writes: AtomicU64,
    /// The last writes applied lately, and the entities known to have none (the table is the
    /// whole of them).
    writes_memory: MemoryWrites,
    /// Writes remembered, to trim their table now and then.
    writes_recorded: AtomicU64,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue")
            .field("path", &self.store.path)
            .field("destination", &self.destination)
            .finish()
    }
}

impl SqliteQueue {
    /// Opens the queue in `data_dir` (created if needed) and starts its writer; the handle is
    /// the default destination's ([`SqliteQueue::lane`] gives the others').
    /// Fails when another process has the directory open (see [`super::lock`]).
    pub fn open(data_dir: &Path) -> Result<SqliteQueue, QueueError> {
        let dir_lock = super::lock::DataDirLock::acquire(data_dir)?;
        check_integrity(&data_dir.join(DATABASE_FILE))?;
        let mut writer_conn = open_connection(data_dir)?;
        let reader = open_connection(data_dir)?;
        let (added, seen) = watch::channel(0u64);
        let (tx, rx) = mpsc::channel::<Command>();
        let notify = added.clone();
        let write_problem = Arc::new(Mutex::new(None));
        let problem = write_problem.clone();
        let thread = std::thread::Builder::new()
            .name("zdmap-queue-writer".into())
            .spawn(move || write_loop(&mut writer_conn, &rx, &notify, &problem))
            .map_err(|source| QueueError::Io {
                what: "start the writer thread of",
                path: data_dir.join(DATABASE_FILE),
                source,
            })?;
        let store = Store {
            path: data_dir.join(DATABASE_FILE),
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            reader: Arc::new(Mutex::new(reader)),
            added,
            write_problem,
            dir_lock: Mutex::new(Some(dir_lock)),
            entity_memory: MemoryClock::new(ENTITY_MEMORY),
            entity_writes: AtomicU64::new(0),
            writes_memory: MemoryWrites::new(WRITES_MEMORY),
            writes_recorded: AtomicU64::new(0),
        };
        Ok(SqliteQueue {
            store: Arc::new(store),
            destination: DEFAULT_DESTINATION.into(),
            dedupe_window: super::DEFAULT_DEDUPE_WINDOW,
            seen: tokio::sync::Mutex::new(seen),
        })
    }

    /// The same database as `destination` sees it.
    pub fn lane(&self, destination: &str) -> SqliteQueue {
        SqliteQueue {
            store: self.store.clone(),
            destination: destination.into(),
            dedupe_window: self.dedupe_window,
            seen: tokio::sync::Mutex::new(self.store.added.subscribe()),
        }
    }

    /// The destination whose lane this is.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The destinations that have events waiting, with how many, by name.
    pub async fn lanes(&self) -> Result<Vec<(String, u64)>, QueueError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT destination, count(*) FROM lanes GROUP BY destination ORDER BY destination",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut lanes = Vec::new();
            for row in rows {
                let (name, n) = row?;
                lanes.push((name, n as u64));
            }
            Ok(lanes)
        })
        .await
    }

    /// How long a sender's `messageId` is remembered (zero: calls are never deduplicated).
    pub fn with_dedupe_window(mut self, window: Duration) -> SqliteQueue {
        self.dedupe_window = window;
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.store.path
    }

    /// Stops taking writes (of every lane), waits until everything given to the writer is
    /// committed, and lets another process have the data directory.
    pub fn close(&self) {
        self.store.close();
    }

    /// Hands a command to the writer.
    fn send(&self, command: Command) -> Result<(), QueueError> {
        let writer = lock(&self.store.writer);
        let Some(writer) = writer.as_ref() else {
            return Err(QueueError::Stopped("is closed"));
        };
        writer
            .send(command)
            .map_err(|_| QueueError::Stopped("writer stopped"))
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let reader = self.store.reader.clone();
        tokio::task::spawn_blocking(move || f(&lock(&reader)))
            .await
            .map_err(|_| QueueError::Stopped("reader stopped"))?
    }

    /// This destination's key of `entity`.
    fn key<'a>(&self, entity: &'a str) -> std::borrow::Cow<'a, str> {
        entity_key(&self.destination, entity)
    }
}

impl Store {
    fn close(&self) {
        drop(lock(&self.writer).take());
        if let Some(thread) = lock(&self.writer_thread).take() {
            let _ = thread.join();
        }
        drop(lock(&self.dir_lock).take());
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// Stores one waiting event (a push, or a replayed dead letter) once, with a lane for each of
/// the destinations it names.
fn insert_item(conn: &Connection, item: &NewItem, accepted_ms: u64) -> rusqlite::Result<()> {
    let body = serde_json::to_string(&item.event).unwrap_or_default();
    let mut destinations: Vec<&str> = item.destinations.iter().map(String::as_str).collect();
    destinations.sort_unstable();
    destinations.dedup();
    conn.prepare_cached(
        "INSERT INTO events (partition, only_action, accepted_at, body, force, pending) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        item.partition,
        item.only.as_deref(),
        accepted_ms as i64,
        body,
        item.force,
        destinations.len() as i64
    ])?;
    let event = conn.last_insert_rowid();
    let mut lane = conn.prepare_cached("INSERT INTO lanes (destination, event) VALUES (?1, ?2)")?;
    for destination in destinations {
        lane.execute(params![destination, event])?;
    }
    Ok(())
}

/// Records the item's `messageId`; false when it was accepted within the window already (the
/// window's older ids are deleted before). An item without a sender's id is always new.
fn first_time(conn: &Connection, item: &NewItem, accepted_ms: u64) -> rusqlite::Result<bool> {
    let Some(id) = &item.message_id else {
        return Ok(true);
    };
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO message_ids (message_id, accepted_at) VALUES (?1, ?2)",
        )?
        .execute(params![id, accepted_ms as i64])?;
    Ok(inserted == 1)
}

fn insert_letter(
    conn: &Connection,
    letter: &DeadLetter,
    destination: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO dead_letters (record, destination) VALUES (?1, ?2)")?
        .execute(params![letter.to_line(), destination])
        .map(drop)
}

/// The key of `entity` in the tables of per-entity records for `destination`: the entity
/// itself for the default destination (as before destinations), else prefixed by the name.
fn entity_key<'a>(destination: &str, entity: &'a str) -> std::borrow::Cow<'a, str> {
    if destination == DEFAULT_DESTINATION {
        std::borrow::Cow::Borrowed(entity)
    } else {
        std::borrow::Cow::Owned(format!("{destination}/{entity}"))
    }
}

/// Refuses a database with damaged pages (a missing one is fine: it is created). Runs before
/// anything writes to the file.
fn check_integrity(path: &Path) -> Result<(), QueueError> {
    if !path.exists() {
        return Ok(());
    }
    let damaged = |detail: String| {
        QueueError::Damaged(format!(
            "the queue database {} is damaged ({detail}); zdmap will not start on it, since it \
             could take events and never deliver them: move the file aside (`sqlite3 FILE \
             .recover` saves what can still be read) and start again",
            path.display()
        ))
    };
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|source| QueueError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let problems = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(|e| damaged(e.to_string()))?;
    if problems == ["ok"] {
        Ok(())
    } else {
        Err(damaged(problems.join("; ")))
    }
}

/// The writer: takes all waiting commands, applies them in one transaction, commits, answers.
///
/// A group that stores new events is synced to disk before anyone hears back (`synchronous =
/// FULL`). A group that only settles events (removals, dead letters) is not synced by itself
/// (`NORMAL`: WAL mode still survives a process crash; a power cut may forget the last ones,
/// which are then delivered again, harmlessly): syncing every acknowledgement would cap delivery
/// at a few hundred events per second.
///
/// A failed write sets `problem` until a write succeeds. Settlements that failed are kept and
/// tried again with the next group, or after [`RETRY_WRITES`]; with nothing to retry, a probe
/// write tells when the storage takes writes again.
fn write_loop(
    conn: &mut Connection,
    rx: &mpsc::Receiver<Command>,
    added: &watch::Sender<u64>,
    problem: &Mutex<Option<String>>,
) {
    let mut synced = true;
    let mut unsettled: Vec<Command> = Vec::new();
    loop {
        let failing = lock(problem).is_some();
        let first = if failing || !unsettled.is_empty() {
            match rx.recv_timeout(RETRY_WRITES) {
                Ok(c) => Some(c),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            }
        };
        let mut group = std::mem::take(&mut unsettled);
        group.extend(first);
        while group.len() < GROUP_LIMIT {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let failed = if group.is_empty() {
            probe_write(conn).err().map(|e| e.to_string())
        } else {
            let pushed = group.iter().any(Command::is_push);
            if pushed != synced {
                let level = if pushed { "FULL" } else { "NORMAL" };
                if conn.pragma_update(None, "synchronous", level).is_ok() {
                    synced = pushed;
                }
            }
            let failed = write_group(conn, group, &mut unsettled);
            if pushed {
                added.send_modify(|n| *n = n.wrapping_add(1));
            }
            failed
        };
        match (&failed, failing) {
            (Some(e), false) => tracing::error!(
                error = %e,
                unsettled = unsettled.len(),
                "cannot write the queue; delivered events are settled once it can be written again"
            ),
            (None, true) => tracing::info!("the queue can be written again"),
            _ => {}
        }
        *lock(problem) = failed;
    }
    // Closing: one last try for what is still unsettled.
    if !unsettled.is_empty() {
        let result = apply_all(conn, &unsettled).map_err(std::sync::Arc::new);
        for c in unsettled {
            c.reply(result.clone().map_err(QueueError::Shared));
        }
    }
}

/// Applies a group in one transaction, else command by command, and answers each. A settlement
/// that cannot be written goes to `unsettled`, to be tried again. Gives the last error, if any.
fn write_group(
    conn: &mut Connection,
    group: Vec<Command>,
    unsettled: &mut Vec<Command>,
) -> Option<String> {
    if apply_all(conn, &group).is_ok() {
        group.into_iter().for_each(|c| c.reply(Ok(())));
        return None;
    }
    // One bad command must not fail the others: apply them one by one.
    let mut failed = None;
    for c in group {
        match apply_all(conn, std::slice::from_ref(&c)) {
            Ok(()) => c.reply(Ok(())),
            Err(e) => {
                failed = Some(e.to_string());
                if c.is_finish() {
                    unsettled.push(c);
                } else {
                    c.reply(Err(e));
                }
            }
        }
    }
    failed
}

/// A write that changes nothing of the queue: does the storage take writes?
fn probe_write(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS write_probe (at INTEGER NOT NULL);
         DELETE FROM write_probe;
         INSERT INTO write_probe (at) VALUES (unixepoch());
         COMMIT;",
    )
    .inspect_err(|_| {
        let _ = conn.execute_batch("ROLLBACK");
    })
}

fn apply_all(conn: &mut Connection, group: &[Command]) -> Result<(), QueueError> {
    let tx = conn.transaction()?;
    for c in group {
        c.apply(&tx)?;
    }
    tx.commit()?;
    Ok(())
}

impl Queue for SqliteQueue {
    type Letters = DeadLetterStore;

    async fn dead_letters(&self) -> Result<DeadLetterStore, QueueError> {
        let dir = self.path().parent().unwrap_or(Path::new(".")).to_path_buf();
        let destination = self.destination.to_string();
        tokio::task::spawn_blocking(move || DeadLetterStore::open_for(&dir, &destination))
            .await
            .map_err(|_| QueueError::Stopped("could not open its dead letters"))?
    }

    async fn push(
        &self,
        mut items: Vec<NewItem>,
        refused: Vec<DeadLetter>,
    ) -> Result<Pushed, QueueError> {
        if items.is_empty() && refused.is_empty() {
            return Ok(Pushed::default());
        }
        for item in &mut items {
            if item.destinations.is_empty() {
                item.destinations.push(self.destination.to_string());
            }
        }
        let window = u64::try_from(self.dedupe_window.as_millis()).unwrap_or(u64::MAX);
        let dedupe_since = (window > 0).then(|| unix_millis_now().saturating_sub(window));
        let (done, answer) = oneshot::channel();
        self.send(Command::Push {
            items,
            refused,
            destination: self.destination.clone(),
            dedupe_since,
            duplicates: AtomicU64::new(0),
            done,
        })?;
        answer
            .await
            .map_err(|_| QueueError::Stopped("writer stopped"))?
    }

    async fn fetch(&self, after: ItemId, limit: usize) -> Result<Vec<Item>, QueueError> {
        let destination = self.destination.clone();
        let items = self
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT e.id, e.partition, e.only_action, e.accepted_at, e.body, e.force, \
                     l.started FROM lanes l JOIN events e ON e.id = l.event \
                     WHERE l.destination = ?1 AND l.event > ?2 ORDER BY l.event LIMIT ?3",
                )?;
                let rows = stmt.query_map(
                    params![&*destination, after.0 as i64, limit as i64],
                    |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, Option<String>>(1)?,
                            row.get::<_, Option<String>>(2)?,
                            row.get::<_, i64>(3)?,
                            row.get::<_, String>(4)?,
                            row.get::<_, bool>(5)?,
                            row.get::<_, bool>(6)?,
                        ))
                    },
                )?;
                let mut items = Vec::new();
                for row in rows {
                    let (id, partition, only, accepted, body, force, started) = row?;
                    // A body that does not parse (edited by hand) is kept visible as a string.
                    let body_len = body.len();
                    let event = serde_json::from_str(&body).unwrap_or(Value::String(body));
                    items.push(Item {
                        size: body_len,
                        id: ItemId(id as u64),
                        event,
                        partition,
                        only: only.map(ActionName::new),
                        force,
                        redelivered: started,
                        accepted_at_ms: accepted as u64,
                    });
                }
                Ok(items)
            })
            .await?;
        Ok(items)
    }

    fn rereads(&self) -> bool {
        true
    }

    async fn reread(&self, id: ItemId) -> Result<Value, QueueError> {
        let body = self
            .read(move |conn| {
                Ok(conn
                    .prepare_cached("SELECT body FROM events WHERE id = ?1")?
                    .query_row(params![id.0 as i64], |r| r.get::<_, String>(0))
                    .optional()?)
            })
            .await?;
        match body {
            Some(body) => Ok(serde_json::from_str(&body).unwrap_or(Value::String(body))),
            None => Err(QueueError::NotThere {
                id,
                why: "no longer in the queue",
            }),
        }
    }

    async fn started(&self, id: ItemId) -> Result<(), QueueError> {
        let (done, answer) = oneshot::channel();
        self.send(Command::Started {
            destination: self.destination.clone(),
            id: id.0,
            done,
        })?;
        answer
            .await
            .map_err(|_| QueueError::Stopped("writer stopped"))?
    }

    fn finish(&self, id: ItemId, letters: Vec<DeadLetter>) -> Result<(), QueueError> {
        self.send(Command::Finish {
            destination: self.destination.clone(),
            id: id.0,
            letters,
        })
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        let destination = self.destination.clone();
        self.read(move |conn| {
            let n: i64 = conn
                .prepare_cached("SELECT count(*) FROM lanes WHERE destination = ?1")?
                .query_row(params![&*destination], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }

    async fn changed(&self, max_wait: Duration) {
        let mut seen = self.seen.lock().await;
        let _ = tokio::time::timeout(max_wait, seen.changed()).await;
    }

    fn write_problem(&self) -> Option<String> {
        lock(&self.store.write_problem).clone()
    }
}

impl EntityClock for SqliteQueue {
    fn last_applied(&self, entity: &str) -> Option<i64> {
        let key = self.key(entity);
        let store = &self.store;
        if let Some(at) = store.entity_memory.last_applied(&key) {
            return Some(at);
        }
        let at = entity_time(&lock(&store.reader), &key)
            .inspect_err(
                |e| tracing::warn!(%entity, error = %e, "cannot read an entity's last change time"),
            )
            .ok()
            .flatten()?;
        store.entity_memory.applied(&key, at);
        Some(at)
    }

    fn applied(&self, entity: &str, at_ms: i64) {
        let key = self.key(entity);
        self.store.entity_memory.applied(&key, at_ms);
        let n = self.store.entity_writes.fetch_add(1, Ordering::Relaxed) + 1;
        let command = Command::Applied {
            entity: key.into_owned(),
            at: at_ms,
            trim: n.is_multiple_of(TRIM_EVERY),
        };
        if let Err(e) = self.send(command) {
            tracing::error!(%entity, error = %e, "cannot record the time of an entity's last change");
        }
    }
}

impl SqliteQueue {
    /// Writes what is now the last write applied to the entity of `key` (`None`: none is
    /// known).
    fn wrote(&self, key: String, record: Option<String>) {
        let n = self.store.writes_recorded.fetch_add(1, Ordering::Relaxed) + 1;
        let command = Command::Wrote {
            entity: key,
            record,
            trim: n.is_multiple_of(TRIM_EVERY),
        };
        if let Err(e) = self.send(command) {
            tracing::error!(error = %e, "cannot record the last write applied to an entity");
        }
    }
}

impl AppliedWrites for SqliteQueue {
    fn last_write(&self, entity: &str) -> Option<AppliedWrite> {
        let key = self.key(entity);
        let memory = &self.store.writes_memory;
        if let Some(known) = memory.known(&key) {
            return known;
        }
        let record = applied_write(&lock(&self.store.reader), &key)
            .inspect_err(
                |e| tracing::warn!(%entity, error = %e, "cannot read the last write applied to an entity"),
            )
            .ok()
            .flatten();
        match &record {
            Some(write) => memory.write_applied(&key, write),
            None => memory.forget_write(&key),
        }
        record
    }

    fn write_applied(&self, entity: &str, write: &AppliedWrite) {
        let key = self.key(entity);
        self.store.writes_memory.write_applied(&key, write);
        self.wrote(key.into_owned(), write.encode());
    }

    fn forget_write(&self, entity: &str) {
        let key = self.key(entity);
        let memory = &self.store.writes_memory;
        if memory.known(&key) == Some(None) {
            return;
        }
        memory.forget_write(&key);
        self.wrote(key.into_owned(), None);
    }
}

/// The time of the last change applied to `entity` in the table.
fn entity_time(conn: &Connection, entity: &str) -> Result<Option<i64>, QueueError> {
    Ok(conn
        .prepare_cached("SELECT at FROM entity_times WHERE entity = ?1")?
        .query_row(params![entity], |r| r.get::<_, i64>(0))
        .optional()?)
}

/// The last writes a `zdmap serve` applied, read from its data directory (for `zdmap preview`).
/// Safe to use while the server runs.
pub struct AppliedWritesFile {
    conn: Connection,
}

impl AppliedWritesFile {
    /// The applied writes of the data directory of a `zdmap serve`; a directory that holds no
    /// queue is refused.
    pub fn open(data_dir: &Path) -> Result<AppliedWritesFile, QueueError> {
        if !data_dir.join(DATABASE_FILE).is_file() {
            return Err(QueueError::NoData {
                dir: data_dir.to_path_buf(),
            });
        }
        Ok(AppliedWritesFile {
            conn: open_connection(data_dir)?,
        })
    }

    /// The last write applied to `entity`, if the directory remembers it.
    pub fn last_write(&self, entity: &str) -> Result<Option<AppliedWrite>, QueueError> {
        applied_write(&self.conn, entity)
    }
}

/// The last write applied to `entity` in the table.
fn applied_write(conn: &Connection, entity: &str) -> Result<Option<AppliedWrite>, QueueError> {
    let record = conn
        .prepare_cached("SELECT record FROM applied_writes WHERE entity = ?1")?
        .query_row(params![entity], |r| r.get::<_, String>(0))
        .optional()?;
    Ok(record.and_then(|text| AppliedWrite::decode(&text)))
}

/// The dead letters of one destination of a data directory: list, show, replay (back into the
/// queue, for that destination only), purge. Safe to use while `zdmap serve` runs on the same
/// directory.
pub struct DeadLetterStore {
    conn: Connection,
    data_dir: PathBuf,
    destination: String,
}

/// Selects the dead letters of destination `?1` (those from before destinations are the
/// default destination's).
const OF_DESTINATION: &str = "coalesce(destination, 'default') = ?1";

impl DeadLetterStore {
    /// The default destination's dead letters of the data directory of a `zdmap serve`; a
    /// directory that holds no queue (a typo) is refused rather than answered "0 dead letters".
    pub fn open(data_dir: &Path) -> Result<DeadLetterStore, QueueError> {
        DeadLetterStore::open_for(data_dir, DEFAULT_DESTINATION)
    }

    /// The dead letters of `destination` in the data directory of a `zdmap serve`.
    pub fn open_for(data_dir: &Path, destination: &str) -> Result<DeadLetterStore, QueueError> {
        if !data_dir.join(DATABASE_FILE).is_file() {
            return Err(QueueError::NoData {
                dir: data_dir.to_path_buf(),
            });
        }
        Ok(DeadLetterStore {
            conn: open_connection(data_dir)?,
            data_dir: data_dir.to_path_buf(),
            destination: destination.to_owned(),
        })
    }

    pub fn count(&self) -> Result<u64, QueueError> {
        let n: i64 = self.conn.query_row(
            &format!("SELECT count(*) FROM dead_letters WHERE {OF_DESTINATION}"),
            params![self.destination],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Up to `limit` dead letters with an id above `after`, oldest first.
    pub fn list(&self, after: u64, limit: usize) -> Result<Vec<StoredDeadLetter>, QueueError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, record FROM dead_letters WHERE {OF_DESTINATION} AND id > ?2 \
             ORDER BY id LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![self.destination, after as i64, limit as i64],
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, record) = row?;
            out.push(stored(id, &record)?);
        }
        Ok(out)
    }

    pub fn get(&self, id: u64) -> Result<Option<StoredDeadLetter>, QueueError> {
        let record: Option<String> = self
            .conn
            .query_row(
                &format!("SELECT record FROM dead_letters WHERE {OF_DESTINATION} AND id = ?2"),
                params![self.destination, id as i64],
                |r| r.get(0),
            )
            .optional()?;
        record.map(|r| stored(id as i64, &r)).transpose()
    }

    /// Moves the selected dead letters back into the queue (each for its failed action only), in
    /// one transaction. A letter whose change is stale (an entity it changes had a newer change
    /// applied since) stays, and is reported, unless `force`: then it is moved, marked to be
    /// applied anyway.
    pub fn replay(&mut self, which: &Selection, force: bool) -> Result<Replayed, QueueError> {
        let tx = self.conn.transaction()?;
        let ids = selected_ids(&tx, which, &self.destination)?;
        let accepted = unix_millis_now();
        let mut replayed = Replayed::default();
        for id in &ids {
            let record: Option<String> = tx
                .query_row(
                    "SELECT record FROM dead_letters WHERE id = ?1",
                    params![*id as i64],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(record) = record else { continue };
            let letter = stored(*id as i64, &record)?.letter;
            let lasts = (letter.changes.iter())
                .map(|c| entity_time(&tx, &entity_key(&self.destination, &c.entity)))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(stale) = StaleLetter::of(*id, &letter, &lasts) {
                replayed.stale.push(stale);
                if !force {
                    continue;
                }
            }
            let item = NewItem {
                destinations: vec![self.destination.clone()],
                ..NewItem::replay(letter, force)
            };
            insert_item(&tx, &item, accepted)?;
            delete_letter(&tx, *id)?;
            replayed.moved += 1;
        }
        tx.commit()?;
        Ok(replayed)
    }

    /// Deletes the selected dead letters. Returns how many were deleted.
    pub fn purge(&mut self, which: &Selection) -> Result<u64, QueueError> {
        let tx = self.conn.transaction()?;
        let ids = selected_ids(&tx, which, &self.destination)?;
        for id in &ids {
            delete_letter(&tx, *id)?;
        }
        tx.commit()?;
        Ok(ids.len() as u64)
    }
}

impl DeadLetters for DeadLetterStore {
    fn place(&self) -> String {
        if self.destination == DEFAULT_DESTINATION {
            self.data_dir.display().to_string()
        } else {
            format!(
                "{} (destination {})",
                self.data_dir.display(),
                self.destination
            )
        }
    }

    async fn count(&mut self) -> Result<u64, QueueError> {
        DeadLetterStore::count(self)
    }

    async fn list(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>, QueueError> {
        DeadLetterStore::list(self, after, limit)
    }

    async fn get(&mut self, id: u64) -> Result<Option<StoredDeadLetter>, QueueError> {
        DeadLetterStore::get(self, id)
    }

    async fn replay(&mut self, which: &Selection, force: bool) -> Result<Replayed, QueueError> {
        DeadLetterStore::replay(self, which, force)
    }

    async fn purge(&mut self, which: &Selection) -> Result<u64, QueueError> {
        DeadLetterStore::purge(self, which)
    }
}

fn delete_letter(conn: &Connection, id: u64) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM dead_letters WHERE id = ?1", params![id as i64])
        .map(drop)
}

/// The ids of `which` that exist among `destination`'s dead letters.
fn selected_ids(
    conn: &Connection,
    which: &Selection,
    destination: &str,
) -> Result<Vec<u64>, QueueError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT id FROM dead_letters WHERE {OF_DESTINATION} ORDER BY id"
    ))?;
    let existing = stmt
        .query_map(params![destination], |r| r.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(existing
        .into_iter()
        .map(|i| i as u64)
        .filter(|id| match which {
            Selection::All => true,
            Selection::Ids(ids) => ids.contains(id),
        })
        .collect())
}

fn stored(id: i64, record: &str) -> Result<StoredDeadLetter, QueueError> {
    let value: Value = serde_json::from_str(record)
        .map_err(|e| QueueError::Damaged(format!("dead letter {id} is damaged: {e}")))?;
    let letter = DeadLetter::parse(&value).ok_or_else(|| {
        QueueError::Damaged(format!("dead letter {id} is not a dead-letter record"))
    })?;
    Ok(StoredDeadLetter {
        id: id as u64,
        letter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(user: &str, n: u64) -> NewItem {
        NewItem {
            event: json!({"type": "track", "userId": user, "event": "E", "properties": {"n": n}}),
            partition: Some(user.into()),
            only: None,
            force: false,
            message_id: None,
            destinations: Vec::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_pushes_are_all_stored_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = Arc::new(SqliteQueue::open(dir.path()).expect("open"));
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..50 {
                    queue.push(vec![item(&format!("u{w}"), n)], vec![]).await?;
                }
                Ok::<_, QueueError>(())
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("push");
        }
        assert_eq!(queue.depth().await.expect("depth"), 400);
        queue.close();
        drop(queue);

        let queue = SqliteQueue::open(dir.path()).expect("reopen");
        let items = queue.fetch(ItemId(0), 1000).await.expect("fetch");
        assert_eq!(items.len(), 400);
        assert!(items.windows(2).all(|w| w[0].id < w[1].id));
        // Each user's events come back in the order they were pushed.
        for w in 0..8 {
            let user = format!("u{w}");
            let ns: Vec<u64> = items
                .iter()
                .filter(|i| i.partition.as_deref() == Some(user.as_str()))
                .filter_map(|i| i.event["properties"]["n"].as_u64())
                .collect();
            assert_eq!(ns, (0..50).collect::<Vec<_>>(), "{user}");
        }
    }

    #[tokio::test]
    async fn a_message_id_is_remembered_for_the_window_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sent = |id: &str| NewItem {
            message_id: Some(id.into()),
            ..item("a", 1)
        };
        let queue = SqliteQueue::open(dir.path()).expect("open");
        let pushed = queue
            .push(
                vec![sent("m1"), sent("m2"), sent("m1"), item("a", 2)],
                vec![],
            )
            .await
            .expect("push");
        assert_eq!(pushed.duplicates, 1);
        queue.close();
        drop(queue);
        let queue = SqliteQueue::open(dir.path())
            .expect("reopen")
            .with_dedupe_window(Duration::ZERO);
        let pushed = queue.push(vec![sent("m1")], vec![]).await.expect("push");
        assert_eq!(pushed.duplicates, 0, "a zero window remembers nothing");
        queue.close();
        drop(queue);
        let queue = SqliteQueue::open(dir.path())
            .expect("reopen")
            .with_dedupe_window(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(20));
        let pushed = queue.push(vec![sent("m2")], vec![]).await.expect("push");
        assert_eq!(
            pushed.duplicates, 0,
            "an id older than the window is forgotten"
        );
        assert_eq!(queue.depth().await.expect("depth"), 5);
    }

    #[tokio::test]
    async fn finishing_removes_the_item_and_keeps_its_dead_letters_for_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = SqliteQueue::open(dir.path()).expect("open");
        queue
            .push(vec![item("a", 1), item("b", 2)], vec![])
            .await
            .expect("push");
        let items = queue.fetch(ItemId(0), 10).await.expect("fetch");
        queue.finish(items[0].id, vec![]).expect("delivered");
        let letter = DeadLetter::without_response(
            items[1].event.clone(),
            "track_event",
            "send",
            "no such user",
        );
        queue
            .finish(items[1].id, vec![letter])
            .expect("dead-lettered");
        // Settling is committed shortly after `finish` returns.
        settled(&queue, 0).await;

        let mut store = DeadLetterStore::open(dir.path()).expect("store");
        let letters = store.list(0, 10).expect("list");
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].letter.action.as_deref(), Some("track_event"));
        assert_eq!(
            store.get(letters[0].id).expect("get").map(|l| l.id),
            Some(letters[0].id)
        );
        assert_eq!(
            store.replay(&Selection::All, false).expect("replay").moved,
            1
        );
        assert_eq!(store.count().expect("count"), 0);
        let again = queue.fetch(items[1].id, 10).await.expect("fetch");
        assert_eq!(again.len(), 1, "a replayed letter gets a new, higher id");
        assert_eq!(again[0].only.as_deref(), Some("track_event"));
        assert_eq!(again[0].partition.as_deref(), Some("user:b"));
        assert_eq!(again[0].event, items[1].event);
        assert_eq!(store.purge(&Selection::Ids(vec![999])).expect("purge"), 0);
    }

    /// Waits until the writer has committed what `finish` handed it.
    async fn settled(queue: &SqliteQueue, depth: u64) {
        for _ in 0..500 {
            if queue.depth().await.expect("depth") == depth {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(queue.depth().await.expect("depth"), depth);
    }

    #[tokio::test]
    async fn an_event_for_two_destinations_is_stored_once_and_settled_by_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let eu = SqliteQueue::open(dir.path()).expect("open").lane("eu");
        let us = eu.lane("us");
        let both = NewItem {
            destinations: vec!["eu".into(), "us".into()],
            ..item("a", 1)
        };
        let eu_only = NewItem {
            destinations: vec!["eu".into()],
            ..item("a", 2)
        };
        eu.push(vec![both, eu_only], vec![]).await.expect("push");
        let stored: i64 = lock(&eu.store.reader)
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count");
        assert_eq!(stored, 2, "each event once, however many destinations");
        let at_eu = eu.fetch(ItemId(0), 10).await.expect("fetch eu");
        let at_us = us.fetch(ItemId(0), 10).await.expect("fetch us");
        assert_eq!(at_eu.len(), 2);
        assert_eq!(at_us.len(), 1);
        assert_eq!(at_us[0].id, at_eu[0].id);

        // `eu` dead-letters the first event and delivers the second; `us` still has the first.
        let letter =
            DeadLetter::without_response(at_eu[0].event.clone(), "track_event", "send", "no");
        us.started(at_us[0].id).await.expect("started");
        eu.finish(at_eu[0].id, vec![letter]).expect("finish");
        eu.finish(at_eu[1].id, vec![]).expect("finish");
        settled(&eu, 0).await;
        let again = us.fetch(ItemId(0), 10).await.expect("fetch us");
        assert_eq!(again.len(), 1);
        assert!(again[0].redelivered, "`us` had started it");
        assert_eq!(again[0].event, at_eu[0].event);
        us.finish(again[0].id, vec![]).expect("finish");
        settled(&us, 0).await;
        let left: i64 = lock(&eu.store.reader)
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count");
        assert_eq!(left, 0, "removed with its last lane");

        // The letter is `eu`'s: `us` does not see it, and replaying it reaches `eu` only.
        let mut us_letters = DeadLetterStore::open_for(dir.path(), "us").expect("us letters");
        assert_eq!(us_letters.count().expect("count"), 0);
        assert_eq!(
            us_letters
                .replay(&Selection::All, false)
                .expect("replay")
                .moved,
            0
        );
        let mut eu_letters = eu.dead_letters().await.expect("eu letters");
        assert_eq!(eu_letters.count().expect("count"), 1);
        assert_eq!(
            eu_letters
                .replay(&Selection::All, false)
                .expect("replay")
                .moved,
            1
        );
        assert_eq!(eu.fetch(ItemId(0), 10).await.expect("fetch").len(), 1);
        assert!(us.fetch(ItemId(0), 10).await.expect("fetch").is_empty());
        assert_eq!(eu.lanes().await.expect("lanes"), [("eu".to_owned(), 1)]);
    }

    #[tokio::test]
    async fn each_destination_keeps_its_own_records_of_entities() {
        let dir = tempfile::tempdir().expect("tempdir");
        let default = SqliteQueue::open(dir.path()).expect("open");
        let eu = default.lane("eu");
        default.applied("user:a", 10);
        eu.applied("user:a", 20);
        assert_eq!(default.last_applied("user:a"), Some(10));
        assert_eq!(eu.last_applied("user:a"), Some(20));
        assert_eq!(default.lane("us").last_applied("user:a"), None);
    }

    #[tokio::test]
    async fn the_waiting_events_of_a_database_from_before_destinations_are_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let conn = Connection::open(dir.path().join(DATABASE_FILE)).expect("create");
            conn.execute_batch(
                "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, partition TEXT, \
                 only_action TEXT, accepted_at INTEGER NOT NULL, body TEXT NOT NULL, \
                 force INTEGER NOT NULL DEFAULT 0, started INTEGER NOT NULL DEFAULT 0); \
                 INSERT INTO events (partition, accepted_at, body, started) \
                 VALUES ('user:a', 1, '{\"type\":\"track\"}', 1); \
                 CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL);",
            )
            .expect("old schema");
        }
        let queue = SqliteQueue::open(dir.path()).expect("open");
        let items = queue.fetch(ItemId(0), 10).await.expect("fetch");
        assert_eq!(items.len(), 1);
        assert!(items[0].redelivered);
        assert!(
            queue
                .lane("eu")
                .fetch(ItemId(0), 10)
                .await
                .expect("fetch")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn only_items_started_before_a_restart_come_back_redelivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let queue = SqliteQueue::open(dir.path()).expect("open");
            let items = (0..3).map(|n| item("a", n)).collect();
            queue.push(items, vec![]).await.expect("push");
            let first = queue.fetch(ItemId(0), 3).await.expect("fetch");
            assert!(first.iter().all(|i| !i.redelivered), "new in this run");
            // The second began a write; the others were only handed out.
            queue.started(first[1].id).await.expect("started");
            queue.close();
        }
        let queue = SqliteQueue::open(dir.path()).expect("reopen");
        queue.push(vec![item("a", 3)], vec![]).await.expect("push");
        let items = queue.fetch(ItemId(0), 10).await.expect("fetch");
        assert_eq!(
            items.iter().map(|i| i.redelivered).collect::<Vec<_>>(),
            [false, true, false, false],
            "the one that began a write before the restart"
        );
    }

    #[tokio::test]
    async fn entity_times_keep_the_latest_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let queue = SqliteQueue::open(dir.path()).expect("open");
            queue.applied("ticket:1", 20);
            queue.applied("ticket:1", 10);
            assert_eq!(queue.last_applied("ticket:1"), Some(20));
            queue.close();
        }
        let queue = SqliteQueue::open(dir.path()).expect("reopen");
        assert_eq!(queue.last_applied("ticket:1"), Some(20));
        assert_eq!(queue.last_applied("ticket:2"), None);
    }

    #[tokio::test]
    async fn the_last_writes_survive_reopening_and_a_forgotten_one_stays_forgotten() {
        use crate::deliver::unchanged::{AppliedWrite, AppliedWrites};
        let write = |digest: &str| AppliedWrite {
            digest: digest.into(),
            at_ms: 1,
            outputs: indexmap::IndexMap::from([("id".to_owned(), Value::from(7))]),
            learned: Vec::new(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let queue = SqliteQueue::open(dir.path()).expect("open");
            queue.write_applied("user:1", &write("a"));
            queue.write_applied("user:2", &write("b"));
            queue.forget_write("user:2");
            assert_eq!(queue.last_write("user:2"), None);
            queue.close();
        }
        let queue = SqliteQueue::open(dir.path()).expect("reopen");
        assert_eq!(queue.last_write("user:1"), Some(write("a")));
        assert_eq!(queue.last_write("user:2"), None);
        assert_eq!(queue.last_write("user:3"), None);
    }

    #[tokio::test]
    async fn a_database_from_before_the_force_and_started_columns_gets_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).expect("create");
        conn.execute_batch(
            "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, partition TEXT, \
             only_action TEXT, accepted_at INTEGER NOT NULL, body TEXT NOT NULL);
             CREATE TABLE marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO events (partition, only_action, accepted_at, body) VALUES ('a', NULL, 1, '{}');
             INSERT INTO events (partition, only_action, accepted_at, body) VALUES ('a', NULL, 1, '{}');
             INSERT INTO marks (name, value) VALUES ('handed_out', 1);",
        )
        .expect("an old schema");
        drop(conn);
        let queue = SqliteQueue::open(dir.path()).expect("open");
        let forced = NewItem {
            force: true,
            ..item("a", 2)
        };
        queue.push(vec![forced], vec![]).await.expect("push");
        let items = queue.fetch(ItemId(0), 10).await.expect("fetch");
        assert_eq!(
            items.iter().map(|i| i.force).collect::<Vec<_>>(),
            [false, false, true]
        );
        // What the older version handed out may have been under way.
        assert_eq!(
            items.iter().map(|i| i.redelivered).collect::<Vec<_>>(),
            [true, false, false]
        );
    }
}
