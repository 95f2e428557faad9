//! What both queues keep of dead letters and answer about them: a letter with its id, which
//! letters a command means, and what a replay did; and how a replay or a discard (by `zdmap
//! dead-letters` or the admin listener) is recorded in the delivery log.

use crate::deliver::DeadLetter;
use crate::deliver::order::EntityChange;
use crate::deliver::trail::Entry;
use crate::mapping::plan::ActionName;
use crate::queue::journal::Journal;
use crate::queue::{DeadLetters, QueueError};

/// A dead letter as a queue keeps it, with its id there.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StoredDeadLetter {
    pub id: u64,
    #[serde(flatten)]
    pub letter: DeadLetter,
}

/// What a replay did.
#[derive(Clone, Debug, Default)]
pub struct Replayed {
    /// Letters moved back into the queue.
    pub moved: u64,
    /// Letters whose change is older than the last one applied to an entity it changes (kept,
    /// unless forced).
    pub stale: Vec<StaleLetter>,
}

/// A dead letter whose change is stale.
#[derive(Clone, Debug)]
pub struct StaleLetter {
    pub id: u64,
    pub action: Option<ActionName>,
    /// The change (entity and event time) that is older...
    pub change: EntityChange,
    /// ...than the last one applied to the entity (ms).
    pub last_ms: i64,
}

impl StaleLetter {
    /// The first change of `letter` older than the last one applied to its entity, if any;
    /// `lasts` holds those last times, one per change of `letter.changes`.
    pub fn of(id: u64, letter: &DeadLetter, lasts: &[Option<i64>]) -> Option<StaleLetter> {
        letter.changes.iter().zip(lasts).find_map(|(change, last)| {
            last.filter(|&l| l > change.at_ms)
                .map(|last_ms| StaleLetter {
                    id,
                    action: letter.action.clone(),
                    change: change.clone(),
                    last_ms,
                })
        })
    }
}

/// Which dead letters a command applies to.
#[derive(Clone, Debug)]
pub enum Selection {
    All,
    Ids(Vec<u64>),
}

/// Replays `which` (see [`DeadLetters::replay`]) and records `replayed` by `by` in the delivery
/// log for each letter moved back (a stale letter kept is not), as of when the replay began.
pub async fn replay_recorded<S: DeadLetters>(
    store: &mut S,
    which: &Selection,
    force: bool,
    journal: Option<&Journal>,
    by: &str,
) -> Result<Replayed, QueueError> {
    let mut letters = selected_for_log(store, which, journal).await?;
    let began = crate::base::time::unix_millis_now();
    let replayed = store.replay(which, force).await?;
    if !force {
        letters.retain(|l| replayed.stale.iter().all(|s| s.id != l.id));
    }
    record_in_log(journal, &letters, began, |action| Entry::Replayed {
        action,
        by: by.to_owned(),
    });
    Ok(replayed)
}

/// Deletes `which` (see [`DeadLetters::purge`]) and records `discarded` by `by` in the delivery
/// log for each letter, as of when the discard began. Returns how many were deleted.
pub async fn purge_recorded<S: DeadLetters>(
    store: &mut S,
    which: &Selection,
    journal: Option<&Journal>,
    by: &str,
) -> Result<u64, QueueError> {
    let letters = selected_for_log(store, which, journal).await?;
    let began = crate::base::time::unix_millis_now();
    let n = store.purge(which).await?;
    record_in_log(journal, &letters, began, |action| Entry::Discarded {
        action,
        by: by.to_owned(),
    });
    Ok(n)
}

/// The letters `which` selects, read before a replay or a discard so the delivery log can name
/// their events (none without a log).
async fn selected_for_log<S: DeadLetters>(
    store: &mut S,
    which: &Selection,
    journal: Option<&Journal>,
) -> Result<Vec<StoredDeadLetter>, QueueError> {
    if journal.is_none() {
        return Ok(Vec::new());
    }
    match which {
        Selection::All => store.list(0, usize::MAX).await,
        Selection::Ids(ids) => {
            let mut letters = Vec::with_capacity(ids.len());
            for id in ids {
                letters.extend(store.get(*id).await?);
            }
            Ok(letters)
        }
    }
}

/// Records `entry` (made for the letter's action) for each letter's event in the log, as of
/// `at_ms` (when the replay or discard began).
fn record_in_log(
    journal: Option<&Journal>,
    letters: &[StoredDeadLetter],
    at_ms: u64,
    entry: impl Fn(Option<String>) -> Entry,
) {
    let Some(journal) = journal else { return };
    for l in letters {
        if let Some(message_id) = l.letter.event.get("messageId").and_then(|v| v.as_str()) {
            let action = l.letter.action.as_ref().map(ToString::to_string);
            journal.note_at(message_id, at_ms, entry(action));
        }
    }
}
