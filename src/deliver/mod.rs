//! Delivery to Zendesk: sending each rendered [`Request`] well, and recording what happened.
//!
//! One module per concern:
//! - [`auth`]: credentials from environment variables; a redacted [`Secret`]; the
//!   `Authorization` header, built at send time and marked sensitive.
//! - [`target`]: the base URL (checked subdomain or explicit override) and the rule that every
//!   request stays on that host.
//! - [`http`]: the pooled HTTP client: one attempt, one [`Response`] or [`TransportError`].
//! - [`budget`]: the destination-wide request budget, 429 pause and header-driven pacing.
//! - [`retry`]: one attempt and what its outcome means ([`Disposition`]); backoff delays.
//! - [`executor`]: one event's way through its actions and steps ([`Delivery`]), resumable.
//! - [`batch`]: items of bulk requests collected, sent, their jobs polled, each answered.
//! - [`jobs`]: the pending jobs a write that may ride in one waits for before it is checked.
//! - [`schedule`]: which events may go now: order per entity key, keys set aside while they
//!   wait (a missing record, a backoff, a per-key 429); [`dispatch`] runs it for `send` and
//!   `serve`, with the events in flight bounded.
//! - [`order`]: the time of the last change applied per entity, so an older change is not
//!   applied over a newer one; [`holds`]: keys that several processes deliver, held by one at a
//!   time.
//! - [`dead_letter`]: undeliverable events as NDJSON records, and reading them back.
//! - [`stats`]: the run's counters and summary; [`progress`]: the terminal progress line.
//! - [`run`]: `zdmap send` over a stream of events.
//! - [`trail`]: what a delivery tells the delivery log of `serve` (requests, waits, ends).
//!
//! [`Transport`] bundles a client, a budget, a retry policy and the stats for the executor,
//! which sends through [`ZendeskApi`] (the transport, or a script in its unit tests).

pub mod account_fields;
pub mod auth;
pub mod batch;
pub mod budget;
pub mod cache;
pub mod dead_letter;
pub mod dispatch;
pub mod executor;
pub mod holds;
pub mod http;
pub mod jobs;
pub mod order;
pub mod progress;
pub mod retry;
pub mod run;
pub mod schedule;
pub mod setup;
pub mod stats;
pub mod target;
pub mod trail;
pub mod unchanged;

use std::sync::Arc;

use futures_util::future::BoxFuture;

pub use auth::{CredentialNames, CredentialVars, Credentials, CredentialsError, Secret};
pub use budget::Budget;
pub use cache::LookupCache;
pub use dead_letter::{DeadLetter, DeadLetterError, DeadLetterWriter, unwrap_dead_letter};
pub use executor::{
    BatchAnswer, BatchItem, Delivery, EventOutcome, Executor, FirstWrite, LearnedKey, Reload, Turn,
    Unsettled, Wait,
};
pub use http::{Client, ClientOptions, Response, ResponseHeaders, TransportError};
pub use progress::Progress;
pub use retry::{Disposition, PauseScope, RetryPolicy};
pub use stats::{Stats, StatsSnapshot, normalize_endpoint};
pub use target::{Target, TargetChoice, TargetError, TargetKind};

use crate::mapping::request::Request;

/// Where requests go instead of the subdomain of destination.yaml: an explicit URL, or the
/// built-in emulator.
#[derive(Debug, Clone, Default)]
pub struct TargetOverride {
    /// This base URL instead of https://{subdomain}.zendesk.com (e.g. a local emulator).
    pub zendesk_url: Option<String>,
    /// The built-in Zendesk emulator, started in-process.
    pub emulator: bool,
}

/// Everything needed to send requests to one destination: the client, the shared budget, the
/// retry policy, the run's stats and the jobs known to have ended. Cheap to clone; clones share
/// the budget, the stats and the jobs.
#[derive(Clone, Debug)]
pub struct Transport {
    client: Client,
    budget: Arc<Budget>,
    policy: RetryPolicy,
    stats: Arc<Stats>,
    jobs: Arc<jobs::JobWatch>,
}

impl Transport {
    pub fn new(
        client: Client,
        budget: Arc<Budget>,
        policy: RetryPolicy,
        stats: Arc<Stats>,
    ) -> Self {
        Transport {
            client,
            budget,
            policy,
            stats,
            jobs: Arc::default(),
        }
    }

    /// One attempt at `req` (see [`retry`]): waits for the budget, sends, and says what the
    /// outcome means. A response `accept` takes is final before any retry or fatal check (a
    /// step that expects a 404, or treats a 409 as done).
    pub async fn attempt(&self, req: &Request, accept: impl Fn(&Response) -> bool) -> Disposition {
        retry::attempt(
            &self.client,
            &self.budget,
            &self.policy,
            &self.stats,
            req,
            accept,
        )
        .await
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The destination's bulk jobs known to have ended, and the listing of those pending.
    pub fn jobs(&self) -> &Arc<jobs::JobWatch> {
        &self.jobs
    }
}

/// Zendesk as the delivery core ([`executor`]) sees it: one attempt at a request, and what
/// its outcome means. The [`Transport`] sends it (budget, stats, what a status means); the
/// executor's unit tests answer from a script.
pub trait ZendeskApi: std::fmt::Debug + Send + Sync {
    /// One attempt at `req`; a response `accept` takes is final (see [`Transport::attempt`]).
    fn attempt<'a>(
        &'a self,
        req: &'a Request,
        accept: &'a (dyn Fn(&Response) -> bool + Sync),
    ) -> BoxFuture<'a, Disposition>;
}

impl ZendeskApi for Transport {
    fn attempt<'a>(
        &'a self,
        req: &'a Request,
        accept: &'a (dyn Fn(&Response) -> bool + Sync),
    ) -> BoxFuture<'a, Disposition> {
        Box::pin(Transport::attempt(self, req, accept))
    }
}
