//! The dead letters on NATS: the stream `ZDMAP_DEAD_LETTERS`, one message per dead letter, its
//! id the stream sequence. Any replica, or an operator's machine, lists and replays them; a
//! replay publishes the event back into the events stream (for the failed action only) and then
//! deletes the dead letter.

use super::{Layout, NatsOptions};
use crate::deliver::DeadLetter;
use crate::queue::{
    DeadLetters, NewItem, QueueError, Replayed, Selection, StaleLetter, StoredDeadLetter,
};
use serde_json::Value;

/// The dead letters of a NATS queue.
#[derive(Debug)]
pub struct NatsDeadLetters {
    layout: Layout,
    servers: String,
}

impl NatsDeadLetters {
    /// Opens the dead letters of the queue that `zdmap serve --queue` created (nothing is
    /// created or changed).
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

    /// The first and last sequence of the stream (`None` when empty).
    async fn bounds(&self) -> Result<Option<(u64, u64)>, QueueError> {
        let info = self
            .layout
            .dead_letters
            .get_info()
            .await
            .map_err(|e| QueueError::nats("cannot read the dead letters", e))?;
        Ok((info.state.messages > 0)
            .then_some((info.state.first_sequence, info.state.last_sequence)))
    }

    async fn read(&self, id: u64) -> Result<Option<StoredDeadLetter>, QueueError> {
        match self.layout.dead_letters.get_raw_message(id).await {
            Ok(message) => {
                let value: Value = serde_json::from_slice(&message.payload).map_err(|e| {
                    QueueError::Damaged(format!("dead letter {id} is damaged: {e}"))
                })?;
                let letter = DeadLetter::parse(&value).ok_or_else(|| {
                    QueueError::Damaged(format!("dead letter {id} is not a dead-letter record"))
                })?;
                Ok(Some(StoredDeadLetter { id, letter }))
            }
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
            {
                Ok(None)
            }
            Err(e) => Err(QueueError::nats(format!("cannot read dead letter {id}"), e)),
        }
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

impl DeadLetters for NatsDeadLetters {
    fn place(&self) -> String {
        format!("the NATS queue at {}", self.servers)
    }

    async fn count(&mut self) -> Result<u64, QueueError> {
        Ok(self
            .layout
            .dead_letters
            .get_info()
            .await
            .map_err(|e| QueueError::nats("cannot read the dead letters", e))?
            .state
            .messages)
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
                    super::entities::last_applied_in(&self.layout.entities, &change.entity).await,
                );
            }
            if let Some(stale) = StaleLetter::of(*id, &letter, &lasts) {
                replayed.stale.push(stale);
                if !force {
                    continue;
                }
            }
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
        let Some((first, last)) = self.bounds().await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut id = first.max(after.saturating_add(1));
        while id <= last && out.len() < limit {
            if let Some(l) = self.read(id).await? {
                out.push(l);
            }
            id += 1;
        }
        Ok(out)
    }
}
