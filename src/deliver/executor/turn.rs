//! What a turn of a delivery says: the event settled ([`EventOutcome`]) or what it waits for
//! ([`Wait`]), with what it hands over to wait for it (a bulk item, a lookup key) and the keys
//! responses taught ([`LearnedKey`]).

use crate::deliver::cache::LookupCache;
use crate::deliver::retry::PauseScope;
use crate::deliver::{DeadLetter, Disposition, Transport};
use crate::mapping::config::Config;
use crate::mapping::plan::batch::{BatchForm, LookupBatch};
use crate::mapping::request::Request;
use crate::mapping::template::LookupNeed;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// What became of one event.
#[derive(Debug)]
pub enum EventOutcome {
    /// Every action it triggered is done.
    Delivered,
    /// No action matched.
    Skipped,
    /// Some actions failed (the others are done): one dead letter per failed action.
    Failed { letters: Vec<DeadLetter> },
}

/// Why [`Delivery::advance`](super::Delivery::advance) stopped.
#[derive(Debug)]
pub enum Turn {
    /// The event is settled.
    Finished(EventOutcome),
    /// The event cannot go on yet; call `advance` again after the wait.
    Wait(Wait),
}

/// What an event waits for.
#[derive(Debug)]
pub enum Wait {
    /// A `resolve(...)` found nothing: the record may not exist yet. Wait until a response
    /// teaches one of `need`'s keys ([`Delivery::take_learned`](super::Delivery::take_learned)
    /// of another event), or give up.
    Missing { need: LookupNeed },
    /// Try again later: after `wait` when Zendesk said (`Retry-After`), else after a backoff.
    /// `transient` failures (server errors, timeouts, 429s) are tried for as long as delivery's
    /// `--retry-for` allows; others (a 4xx an outcome maps to `retry`) have a bounded number of
    /// tries, counted here. `letter` is the dead letter if it is given up.
    Retry {
        wait: Option<Duration>,
        scope: PauseScope,
        transient: bool,
        letter: Box<DeadLetter>,
    },
    /// The destination refused the credentials or permissions (401/403).
    Fatal { status: u16, message: String },
    /// The step's request goes out as an item of a bulk request ([`crate::deliver::batch`]):
    /// hand the delivery its [`BatchAnswer`] ([`Delivery::answer`](super::Delivery::answer))
    /// and call `advance` again.
    Batch(Box<BatchItem>),
    /// A lookup goes out with others of its window as one request ([`crate::deliver::batch`]);
    /// its answer lands in the cache. Hand the delivery [`BatchAnswer::Single`] and call
    /// `advance` again.
    Lookup(Box<LookupItem>),
    /// In a turn that may only join bulk requests
    /// ([`Delivery::join_only`](super::Delivery::join_only)), the next request is not a bulk
    /// item: nothing was sent; call `advance` again once the events ahead are on.
    Behind,
}

/// A step's request as an item of a bulk request.
#[derive(Debug)]
pub struct BatchItem {
    pub form: Arc<BatchForm>,
    pub config: Arc<Config>,
    pub transport: Transport,
    /// The item (the part of the step's request body the form names).
    pub item: Value,
    /// The step's single request (sent instead when the bulk form is not allowed).
    pub single: Request,
    /// The identity of the record it writes, when the form coalesces.
    pub coalesce: Option<String>,
}

/// A key a lookup's bulk form looks up with others.
#[derive(Debug)]
pub struct LookupItem {
    pub form: Arc<LookupBatch>,
    pub resolver: String,
    pub by: String,
    pub key: String,
    /// How the answer is cached.
    pub ttl: Duration,
    pub capacity: usize,
    pub cache: Arc<LookupCache>,
    pub config: Arc<Config>,
    pub transport: Transport,
}

/// What became of a batched item, for the step that waits for it.
#[derive(Debug, Clone)]
pub enum BatchAnswer {
    /// As if the step's single request had been answered so: the item's result, how the bulk
    /// request itself ended (a 429, a 5xx, a failed job: tried again like any request), or
    /// the answer to the item's single request (the bulk form is not allowed).
    Answered(Box<Disposition>),
    /// Send the step's single request (the bulk form is not allowed, or the item's error is
    /// one its single request answers better).
    Single,
}

/// A resolver cache entry a response taught: `resolver` by `by` = `key`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LearnedKey {
    pub resolver: String,
    pub by: String,
    pub key: String,
}

impl LearnedKey {
    /// The keys of a lookup need, as the cache stores them.
    pub(crate) fn of_need(need: &LookupNeed) -> Vec<LearnedKey> {
        need.keys
            .iter()
            .map(|(by, key)| LearnedKey {
                resolver: need.resolver.clone(),
                by: by.clone(),
                key: key.clone(),
            })
            .collect()
    }
}
