//! `zdmap emulator`: a stateful, in-memory Zendesk Support API for tests and local work.
//!
//! It behaves like Zendesk where zdmap can notice (docs/zendesk.md, "What the emulator models"):
//! upserts with 201/200, Zendesk's error envelopes, per-minute budgets and endpoint limits with
//! their headers, closed tickets, idempotency keys, the Sunshine events API, bulk writes answered
//! with job statuses. Start it from the CLI (`zdmap emulator --listen 127.0.0.1:8089`) or
//! in-process from a test:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use zdmap::emulator::{Emulator, EmulatorOptions};
//! let emu = Emulator::start(EmulatorOptions::default()).await?; // port 0
//! let base = emu.url(); // http://127.0.0.1:PORT
//! # let _ = base; emu.shutdown().await; Ok(()) }
//! ```
//!
//! The runtime knobs ([`RuntimeKnobs`]), set by `POST /__emulator/config` with the names below,
//! by `Emulator::configure` in-process, and at start by the `zdmap emulator` flag of the same
//! name with dashes where there is one (all but the endpoint limits and `forced_faults`):
//! - `rpm`, `rate_window_secs`: the account budget; `upsert_user_per_window`,
//!   `ticket_updates_per_window`, `ticket_update_window_secs`: the endpoint limits.
//! - `fail_rate`, `forced_faults`, `latency_ms`: requests that fail, or answer late.
//! - `lost_answer_rate` (0 to 1) and `lost_answer` (`"500"`, `"drop"` or `"either"`): a write
//!   (POST, PUT, PATCH, DELETE) that succeeded is applied and then answered 500, or its
//!   connection closed without an answer; the request log marks it `lost_answer`.
//! - `bulk_import`: whether `users/create_or_update_many` is enabled (off, as on a new account).
//! - `job_delay_ms`: from a bulk request to its job's end on the emulator's clock (0);
//!   `job_fail_rate`: jobs that fail as a whole (0); `job_limit`: jobs queued or working at once
//!   (30); `job_limit_status`: the answer beyond it, 429 (with `Retry-After`), 403 or 422.
//! - `request_log_size`: requests kept by `/__emulator/requests` (10 000, the newest).
//! - `links_base`: the base URL the links of paged answers name (none: the host each request
//!   was sent to).
//! - `oauth_clients` (flag `--oauth-client ID[:SECRET]`, repeated): the OAuth clients
//!   (`{"id", "secret"}`, no secret for a public client). With any, the API takes only tokens
//!   the emulator issued and the configured `--api-token` / `--oauth-token`.
//! - `access_token_lifetime_secs` (1800) and `refresh_token_lifetime_secs` (30 days), flags
//!   `--access-token-lifetime` and `--refresh-token-lifetime`: token lifetimes when the token
//!   request names none.
//! - `oauth_latency_ms`: delay added to `/oauth/tokens` answers; `oauth_lost_answers`: the next
//!   N successful token answers are issued and then lost, as `lost_answer` says.
//!
//! Every random choice (faults, lost answers, failed jobs, ids, tokens) comes from `--seed`, so
//! a run repeats exactly when the requests do.
//!
//! Map of the module:
//! - `router`: the request pipeline (jobs due → faults → auth → budget → body → route table →
//!   request log → lost answer).
//! - `connection`: the listener whose connections can be cut (lost answers).
//! - `auth`: Basic `email/token:TOKEN` and Bearer, 401 otherwise.
//! - `oauth`: `POST /oauth/tokens` (client_credentials, authorization_code with PKCE,
//!   refresh_token with rotation), `GET /oauth/authorizations/new` (approved at once), the
//!   issued tokens' lifetime and scopes on the API, `GET /api/v2/oauth/tokens/current`.
//! - [`limits`]: runtime knobs, account budget, endpoint buckets, faults, latency.
//! - `errors`: Zendesk's error envelopes.
//! - `state`: the data model and how records render as Zendesk JSON; `table`: records with the
//!   indexes behind every lookup.
//! - `users`, `organizations`, `memberships`, `fields`, `tickets`, `events`: one per resource.
//! - `bulk`: the `*_many` writes; `jobs`: job statuses, the job limit.
//! - `inspect`: `/__emulator/*` (state, request log, reset, seed, config, oauth);
//!   `request_log`: the bounded log, OAuth credentials redacted.
//! - `clock`: the clock tests can advance instead of sleeping.

mod auth;
mod bulk;
mod clock;
mod connection;
mod errors;
mod events;
mod fields;
mod inspect;
mod jobs;
pub mod limits;
mod memberships;
mod oauth;
mod organizations;
mod request_log;
pub(crate) mod router;
mod state;
mod table;
mod tickets;
mod users;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub use auth::Secret;
pub use limits::{ForcedFault, LostAnswer, OAuthClient, RuntimeKnobs};

use router::{Shared, World, lock};

/// How to start an [`Emulator`].
#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    pub listen: SocketAddr,
    pub rpm: Option<u32>,
    pub fail_rate: f64,
    pub latency_ms: u64,
    pub seed: u64,
    pub api_token: Option<Secret>,
    pub oauth_token: Option<Secret>,
    pub bulk_import: bool,
    pub subdomain: String,
    /// A JSON file to load at start: the shape of `GET /__emulator/state`.
    pub seed_state: Option<PathBuf>,
    /// State to load at start, like `seed_state` but given inline.
    pub seed_json: Option<Value>,
    /// All other runtime knobs (windows, endpoint limits); `rpm`, `fail_rate`, `latency_ms` and
    /// `bulk_import` above take precedence over the same fields here.
    pub knobs: RuntimeKnobs,
    /// Where to write the state (the JSON of `/__emulator/state`) when the emulator goes away,
    /// saying so on standard error, so what an in-process emulator received can still be seen.
    pub final_state: Option<PathBuf>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            rpm: None,
            fail_rate: 0.0,
            latency_ms: 0,
            seed: 0,
            api_token: None,
            oauth_token: None,
            bulk_import: false,
            subdomain: "example".to_string(),
            seed_state: None,
            seed_json: None,
            knobs: RuntimeKnobs::default(),
            final_state: None,
        }
    }
}

/// A running emulator.
pub struct Emulator {
    addr: SocketAddr,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    final_state: Option<PathBuf>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let Some(path) = self.final_state.take() else {
            return;
        };
        let text = serde_json::to_string_pretty(&self.state()).unwrap_or_default();
        match std::fs::write(&path, text + "\n") {
            Ok(()) => eprintln!(
                "emulator: its final state (users, organizations, memberships, tickets, events) is in {0}; \
                 `zdmap emulator --seed-state {0}` serves it again at /__emulator/state",
                path.display()
            ),
            Err(e) => eprintln!(
                "emulator: cannot write its final state to {}: {e}",
                path.display()
            ),
        }
    }
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Binds the listen address, loads the seed state and spawns the server task.
    pub async fn start(opts: EmulatorOptions) -> std::io::Result<Emulator> {
        let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
        let mut seed = opts.seed_json.clone();
        if let Some(path) = &opts.seed_state {
            let text = std::fs::read_to_string(path)?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| invalid(format!("{}: not JSON: {e}", path.display())))?;
            seed = Some(value);
        }
        let mut knobs = opts.knobs.clone();
        knobs.rpm = opts.rpm.or(knobs.rpm);
        knobs.fail_rate = if opts.fail_rate > 0.0 {
            opts.fail_rate
        } else {
            knobs.fail_rate
        };
        knobs.latency_ms = opts.latency_ms.max(knobs.latency_ms);
        knobs.bulk_import |= opts.bulk_import;
        knobs.check().map_err(invalid)?;
        let clock = clock::Clock::new();
        let mut world = World {
            store: state::Store::new(&opts.subdomain, opts.seed, clock),
            limits: limits::Limits::new(knobs, opts.seed),
            log: request_log::RequestLog::default(),
            auth: auth::AuthPolicy {
                api_token: opts.api_token.clone(),
                oauth_token: opts.oauth_token.clone(),
            },
            oauth: oauth::OAuth::new(opts.seed),
            initial_seed: seed.clone(),
            subdomain: opts.subdomain.clone(),
            seed: opts.seed,
        };
        if let Some(seed) = &seed {
            inspect::load_seed(&mut world.store, seed).map_err(invalid)?;
        }
        let shared: Shared = Arc::new(Mutex::new(world));
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let listener = connection::CuttableListener(listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router::router(shared.clone())
            .into_make_service_with_connect_info::<connection::Cutter>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!("emulator server stopped: {e}");
            }
        });
        Ok(Emulator {
            addr,
            shared,
            stop: Some(stop),
            task,
            final_state: opts.final_state.clone(),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:8089`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same JSON as `GET /__emulator/state` (due jobs run first).
    pub fn state(&self) -> Value {
        let mut w = lock(&self.shared);
        w.catch_up();
        inspect::state_json(&w.store)
    }

    /// The same entries as `GET /__emulator/requests`.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared).log.entries()
    }

    /// The same JSON as `GET /__emulator/oauth`: `token_requests` (by grant type), `refused` (by
    /// OAuth error), `expired_token_rejections`, `revoked_token_rejections`,
    /// `scope_rejections`, `live_access_tokens`, `live_refresh_tokens`.
    pub fn oauth_stats(&self) -> Value {
        let w = lock(&self.shared);
        w.oauth.stats(w.store.clock.elapsed())
    }

    /// Changes the runtime knobs (budget, faults, latency, endpoint limits, bulk import, OAuth).
    pub fn configure(&self, f: impl FnOnce(&mut RuntimeKnobs)) {
        f(&mut lock(&self.shared).limits.knobs);
    }

    /// Moves the emulator's clock forward, so rate-limit windows pass without sleeping.
    pub fn advance_clock(&self, by: Duration) {
        lock(&self.shared).store.clock.advance(by);
    }

    /// Stops serving and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}
