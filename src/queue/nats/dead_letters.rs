//! The dead letters on NATS: the stream `ZDMAP_DEAD_LETTERS`, one message per dead letter on
//! its destination's subject ([`super::names::Names::dead_letters_subject`]), its id the stream
//! sequence. Any replica, or an operator's machine, lists and replays one destination's; a
//! replay publishes the event back into the events stream for that destination only (for the
//! failed action only) and then deletes the dead letter. Another destination's letters are
//! neither listed, shown, replayed nor purged.

use super::{Layout, NatsOptions};
use crate::deliver::DeadLetter;
use crate::queue::{
    DeadLetters, NewItem, QueueError, Replayed, Selection, StaleLetter, StoredDeadLetter,
};
use futures_util::StreamExt as _;
use serde_json::Value;

/// The dead letters of one destination of a NATS queue.
#[derive(Debug)]
pub struct NatsDeadLetters {
    layout: Layout,
    servers: String,
}

impl NatsDeadLetters {
    /// Opens the dead letters of `options.destination` in the queue that `zdmap serve --queue`
    /// created (nothing is created or changed).
    pub async fn open(options: &NatsOptions) -> Result<NatsDeadLetters, QueueError> {
        Ok(NatsDeadLetters {
            layout: Layout::open_existing(options).await?,
            servers: super::shown_list(&options.servers),
        })
    }

    /// The dead letters of a queue this process has open.
    pub(crate) fn of(layout: Layout, servers: String) -> NatsDeadLetters {
        NatsDeadLetters { layout, servers }
    }

    /// The destination's dead letter `id`; `None` when there is none (or it is another
    /// destination's).
    async fn read(&self, id: u64) -> Result<Option<StoredDeadLetter>, QueueError> {
        let message = self.layout.dead_letters.get_raw_message(id).await;
        letter_of(id, message, &self.subject())
    }

    /// The destination's first dead letter with an id of `from` or above.
    async fn read_from(&self, from: u64) -> Result<Option<StoredDeadLetter>, QueueError> {
        let message = self
            .layout
            .dead_letters
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(self.subject())
            .send()
            .await;
        letter_of(from, message, &self.subject())
    }

    /// The subject of the destination's dead letters.
    fn subject(&self) -> String {
        self.layout.names.dead_letters_subject()
    }

    /// The ids selected that exist.
    async fn selected(&self, which: &Selection) -> Result<Vec<u64>, QueueError> {
        Ok(match which {
            Selection::All => self
                .list(0, usize::MAX)
                .await?
                .into_iter()
                .map(|l| l.id)
                .collect(),
            Selection::Ids(ids) => {
                let mut found = Vec::new();
                for id in ids {
                    if self.read(*id).await?.is_some() {
                        found.push(*id);
                    }
                }
                found
            }
        })
    }

    async fn delete(&self, id: u64) -> Result<(), QueueError> {
        self.layout
            .dead_letters
            .delete_message(id)
            .await
            .map(drop)
            .map_err(|e| QueueError::nats(format!("cannot delete dead letter {id}"), e))
    }
}

/// The dead letter a message read for `id` (the id asked for) holds; `None` when there is no
/// message, or it is not on `subject` (another destination's).
fn letter_of(
    id: u64,
    message: Result<
        async_nats::jetstream::message::StreamMessage,
        async_nats::jetstream::stream::RawMessageError,
    >,
    subject: &str,
) -> Result<Option<StoredDeadLetter>, QueueError> {
    match message {
        Ok(message) if message.subject.as_str() != subject => Ok(None),
        Ok(message) => {
            let id = message.sequence;
            let value: Value = serde_json::from_slice(&message.payload)
                .map_err(|e| QueueError::Damaged(format!("dead letter {id} is damaged: {e}")))?;
            let letter = DeadLetter::parse(&value).ok_or_else(|| {
                QueueError::Damaged(format!("dead letter {id} is not a dead-letter record"))
            })?;
            Ok(Some(StoredDeadLetter { id, letter }))
        }
        Err(e)
            if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
        {
            Ok(None)
        }
        Err(e) => Err(QueueError::nats(format!("cannot read dead letter {id}"), e)),
    }
}

impl DeadLetters for NatsDeadLetters {
    fn place(&self) -> String {
        if self.layout.names.is_default() {
            format!("the NATS queue at {}", self.servers)
        } else {
            format!(
                "the NATS queue at {} (destination {})",
                self.servers, self.layout.names
            )
        }
    }

    async fn count(&mut self) -> Result<u64, QueueError> {
        let unreadable = |e| QueueError::nats("cannot read the dead letters", e);
        let mut subjects = self
            .layout
            .dead_letters
            .info_with_subjects(self.subject())
            .await
            .map_err(unreadable)?;
        let mut total = 0u64;
        while let Some(counted) = subjects.next().await {
            total += counted.map_err(unreadable)?.1 as u64;
        }
        Ok(total)
    }

    async fn list(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>, QueueError> {
        NatsDeadLetters::list(self, after, limit).await
    }

    async fn get(&mut self, id: u64) -> Result<Option<StoredDeadLetter>, QueueError> {
        self.read(id).await
    }

    /// As with SQLite: a letter whose change is older than the last one applied to an entity
    /// it changes (by any replica) is kept unless `force`.
    async fn replay(&mut self, which: &Selection, force: bool) -> Result<Replayed, QueueError> {
        let ids = self.selected(which).await?;
        let mut replayed = Replayed::default();
        for id in &ids {
            let Some(stored) = self.read(*id).await? else {
                continue;
            };
            let letter = stored.letter;
            let mut lasts = Vec::with_capacity(letter.changes.len());
            for change in &letter.changes {
                lasts.push(
                    super::entities::last_applied_in(
                        &self.layout.entities,
                        &self.layout.names,
                        &change.entity,
                    )
                    .await,
                );
            }
            if let Some(stale) = StaleLetter::of(*id, &letter, &lasts) {
                replayed.stale.push(stale);
                if !force {
                    continue;
                }
            }
            // For this destination only (an item naming none goes to its layout's).
            let item = NewItem::replay(letter, force);
            // Stored again first, then deleted: a failure in between replays it twice at worst.
            self.layout.publish_events(vec![item]).await?;
            self.delete(*id).await?;
            replayed.moved += 1;
        }
        Ok(replayed)
    }

    async fn purge(&mut self, which: &Selection) -> Result<u64, QueueError> {
        let ids = self.selected(which).await?;
        for id in &ids {
            self.delete(*id).await?;
        }
        Ok(ids.len() as u64)
    }
}

impl NatsDeadLetters {
    /// Up to `limit` dead letters with an id above `after`, oldest first.
    pub async fn list(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>, QueueError> {
        let mut out = Vec::new();
        let mut from = after.saturating_add(1);
        while out.len() < limit {
            let Some(letter) = self.read_from(from).await? else {
                break;
            };
            from = letter.id.saturating_add(1);
            out.push(letter);
        }
        Ok(out)
    }
}
