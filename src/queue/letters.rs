//! What both queues keep of dead letters and answer about them: a letter with its id, which
//! letters a command means, and what a replay did.

use crate::deliver::DeadLetter;
use crate::deliver::order::EntityChange;
use crate::mapping::plan::ActionName;

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
