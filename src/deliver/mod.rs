//! Delivery to Zendesk: sending each rendered [`Request`] well, and recording what happened.
//!
//! One module per concern:
//! - [`auth`]: credentials from environment variables; a redacted [`Secret`]; the
//!   `Authorization` header, built at send time and marked sensitive.
//! - [`target`]: the base URL (checked subdomain or explicit override) and the rule that every
//!   request stays on that host.
//! - [`http`]: the pooled HTTP client: one attempt, one [`Response`] or [`TransportError`].
//! - [`budget`]: the destination-wide request budget, 429 pause and header-driven pacing.
//! - [`retry`]: which outcomes are retried and how; the final [`Disposition`].
//! - [`error_body`]: Zendesk's four error envelopes → code and message.
//! - [`dead_letter`]: undeliverable events as NDJSON records, and reading them back.
//! - [`stats`]: the run's counters and summary; [`progress`]: the terminal progress line.
//!
//! [`Transport`] bundles a client, a budget, a retry policy and the stats for the plan executor.

pub mod auth;
pub mod budget;
pub mod cache;
pub mod dead_letter;
pub mod error_body;
pub mod executor;
pub mod http;
pub mod progress;
pub mod retry;
pub mod run;
pub mod setup;
pub mod stats;
pub mod target;

use std::sync::Arc;

pub use auth::{CredentialVars, Credentials, CredentialsError, Secret};
pub use budget::Budget;
pub use cache::LookupCache;
pub use dead_letter::{DeadLetter, DeadLetterError, DeadLetterWriter, unwrap_dead_letter};
pub use error_body::{ZendeskError, zendesk_error};
pub use executor::{EventOutcome, Executor};
pub use http::{Client, ClientOptions, Response, ResponseHeaders, TransportError};
pub use progress::Progress;
pub use retry::{Disposition, RetryPolicy, send_with_retries};
pub use stats::{Stats, StatsSnapshot, normalize_endpoint};
pub use target::{Target, TargetChoice, TargetError, TargetKind};

use crate::request::Request;

/// Where requests go: Zendesk itself (the default), an explicit URL, or the built-in emulator.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Send to this base URL instead of https://{subdomain}.zendesk.com (e.g. a local emulator).
    #[arg(long, value_name = "URL", env = "ZDMAP_ZENDESK_URL")]
    pub zendesk_url: Option<String>,
    /// Start the built-in Zendesk emulator in-process and send to it.
    #[arg(long, conflicts_with = "zendesk_url")]
    pub emulator: bool,
}

/// Everything needed to send requests to one destination: the client, the shared budget, the
/// retry policy and the run's stats. Cheap to clone; clones share the budget and the stats.
#[derive(Clone, Debug)]
pub struct Transport {
    client: Client,
    budget: Arc<Budget>,
    policy: RetryPolicy,
    stats: Arc<Stats>,
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
        }
    }

    /// Sends `req` with retries (see [`retry`]). Non-2xx statuses that are not retried come back
    /// as [`Disposition::Done`] for the caller to judge.
    pub async fn send(&self, req: &Request) -> Disposition {
        self.send_accepting(req, |_| false).await
    }

    /// Like [`Transport::send`], but a response `accept` takes is final before any retry or
    /// fatal check (a step that expects a 404, or treats a 409 as done).
    pub async fn send_accepting(
        &self,
        req: &Request,
        accept: impl Fn(&Response) -> bool,
    ) -> Disposition {
        // Counted under the request's endpoint (template parts as `{id}`), never its path: event
        // data must not become a counter's name.
        let counted = if req.endpoint.is_empty() {
            &req.path
        } else {
            &req.endpoint
        };
        retry::run_with_retries(
            &self.budget,
            &self.policy,
            &self.stats,
            req.method,
            counted,
            accept,
            || self.client.send(req),
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
}
