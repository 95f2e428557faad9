//! The delivery log of a NATS queue ([`crate::queue::journal`]): the stream `ZDMAP_JOURNAL`
//! is the log, kept `--journal-max-age` and `--journal-max-mb` at most. Every replica
//! publishes its notes there (a message per group of notes) and follows the stream from its
//! start into its own `journal.sqlite3`, rebuilt at each start, so any replica answers for any
//! event, whichever replica accepted or delivered it.

use super::Layout;
use crate::queue::QueueError;
use crate::queue::journal::{self, Journal, JournalOptions, Pruning, Publish, StopFollowing};
use crate::queue::lock::DataDirLock;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The stream of the delivery log.
pub(crate) const JOURNAL_STREAM: &str = "ZDMAP_JOURNAL";
const JOURNAL_SUBJECT: &str = "zdmap.journal";

/// How long a publication waits for the stream's answer.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// Opens the delivery log of the queue `layout` in `data_dir`: the stream is created (or its
/// bounds brought to `options`), and this replica's copy is rebuilt from it. `None` (with a
/// warning) when another process holds `data_dir`: its copy is not this replica's to rebuild.
pub async fn open(
    layout: &Layout,
    data_dir: &Path,
    options: JournalOptions,
) -> Result<Option<Arc<Journal>>, QueueError> {
    let held = match DataDirLock::acquire(data_dir) {
        Ok(held) => held,
        Err(QueueError::InUse { dir }) => {
            tracing::warn!(
                data_dir = %dir.display(),
                "another process uses this data directory: the delivery log is off on this replica (give each replica its own --data-dir)"
            );
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let stream = ensure_stream(layout, &options).await?;
    let handle = tokio::runtime::Handle::current();
    let publisher = Publisher {
        js: layout.js.clone(),
        handle: handle.clone(),
    };
    let consumer: consumer::OrderedPushConsumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: layout.client.new_inbox(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| QueueError::nats("cannot follow the delivery log", e.to_string()))?;
    let start_following = move |conn: Connection| -> Result<StopFollowing, QueueError> {
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("zdmap-journal-follower".into())
            .spawn(move || follow(handle, consumer, conn, Pruning::new(options), stopped))
            .map_err(|source| QueueError::Io {
                what: "start the follower of",
                path: journal::JOURNAL_FILE.into(),
                source,
            })?;
        Ok(Box::new(move || {
            let _ = stop.send(true);
            let _ = thread.join();
            drop(held);
        }))
    };
    Journal::open_shared(data_dir, Box::new(publisher), start_following).map(Some)
}

/// The stream, created with `options`' bounds, or changed to them.
async fn ensure_stream(
    layout: &Layout,
    options: &JournalOptions,
) -> Result<stream::Stream, QueueError> {
    let config = stream::Config {
        name: JOURNAL_STREAM.into(),
        subjects: vec![JOURNAL_SUBJECT.into()],
        storage: stream::StorageType::File,
        num_replicas: layout.events.cached_info().config.num_replicas.max(1),
        max_age: options.max_age,
        max_bytes: i64::try_from(options.max_bytes).unwrap_or(i64::MAX),
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    let mut stream = layout
        .js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| QueueError::nats("cannot create the delivery log's stream", e.to_string()))?;
    let current = stream
        .info()
        .await
        .map_err(|e| QueueError::nats("cannot read the delivery log's stream", e.to_string()))?
        .config
        .clone();
    if current.max_age != config.max_age || current.max_bytes != config.max_bytes {
        let changed = stream::Config {
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            ..current
        };
        if let Err(e) = layout.js.update_stream(changed).await {
            tracing::warn!(error = %e, "cannot change the bounds of the delivery log's stream");
        }
    }
    Ok(stream)
}

/// Publishes a replica's notes, waiting for the stream to take them (on the writer's thread).
struct Publisher {
    js: jetstream::Context,
    handle: tokio::runtime::Handle,
}

impl Publish for Publisher {
    fn publish(&mut self, message: Vec<u8>) -> Result<(), String> {
        let js = self.js.clone();
        self.handle.block_on(async move {
            let published = async {
                js.publish(JOURNAL_SUBJECT, message.into())
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(PUBLISH_WAIT, published).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("NATS did not answer in time".to_owned()),
            }
        })
    }
}

/// Applies the stream's messages to this replica's copy, in order, until stopped.
fn follow(
    handle: tokio::runtime::Handle,
    consumer: consumer::OrderedPushConsumer,
    mut conn: Connection,
    mut pruning: Pruning,
    mut stopped: watch::Receiver<bool>,
) {
    let messages = handle.block_on(async {
        tokio::select! {
            m = consumer.messages() => Some(m),
            _ = stopped.changed() => None,
        }
    });
    let mut messages = match messages {
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot follow the delivery log");
            return;
        }
        None => return,
    };
    loop {
        // `None`: stopped.
        let next = handle.block_on(async {
            tokio::select! {
                next = messages.next() => Some(next),
                _ = stopped.changed() => None,
            }
        });
        match next {
            Some(Some(Ok(message))) => match journal::decode(&message.payload) {
                Ok(notes) => pruning.apply(&mut conn, notes),
                Err(e) => {
                    tracing::debug!(error = %e, "a delivery log message this version does not read")
                }
            },
            Some(Some(Err(e))) => tracing::debug!(error = %e, "following the delivery log"),
            Some(None) => {
                tracing::warn!(
                    "the delivery log's stream ended: this replica's copy no longer follows it"
                );
                return;
            }
            None => return,
        }
    }
}
