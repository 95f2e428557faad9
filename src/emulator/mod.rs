//! `zdmap emulator`: a stateful, in-memory Zendesk Support API for tests and local work.
//!
//! It behaves like Zendesk where zdmap can notice (zendesk-api.md §7): upserts with 201/200,
//! Zendesk's error envelopes, per-minute budgets and endpoint limits with their headers, closed
//! tickets, idempotency keys, the Sunshine events API. Start it from the CLI
//! (`zdmap emulator --listen 127.0.0.1:8089`) or in-process from a test:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use zdmap::emulator::{Emulator, EmulatorOptions};
//! let emu = Emulator::start(EmulatorOptions::default()).await?; // port 0
//! let base = emu.url(); // http://127.0.0.1:PORT
//! # let _ = base; emu.shutdown().await; Ok(()) }
//! ```
//!
//! Map of the module:
//! - [`router`]: the request pipeline (faults → auth → budget → body → route table) and the request log.
//! - `auth`: Basic `email/token:TOKEN` and Bearer, 401 otherwise.
//! - [`limits`]: runtime knobs, account budget, endpoint buckets, faults, latency.
//! - `errors`: Zendesk's error envelopes.
//! - `state`: the data model and how records render as Zendesk JSON.
//! - `users`, `organizations`, `memberships`, `fields`, `tickets`, `events`: one per resource.
//! - `inspect`: `/__emulator/*` (state, request log, reset, seed, config).
//! - `clock`: the clock tests can advance instead of sleeping.

mod auth;
mod clock;
mod errors;
mod events;
mod fields;
mod inspect;
pub mod limits;
mod memberships;
mod organizations;
pub(crate) mod router;
mod state;
mod tickets;
mod users;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub use auth::Secret;
pub use limits::{ForcedFault, RuntimeKnobs};

use router::{Shared, World, lock};

/// Options of `zdmap emulator`.
#[derive(clap::Args, Debug, Clone)]
pub struct EmulatorArgs {
    /// Address to listen on (use port 0 for any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// Account-wide requests per minute before 429 (default: unlimited; Zendesk plans allow
    /// 200 to 2500).
    #[arg(long, value_name = "N")]
    pub rpm: Option<u32>,
    /// Probability (0 to 1) that an API request fails with 500 or 503.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Delay added to every API answer, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub latency_ms: u64,
    /// Seed for the random choices (faults, job and profile ids), so runs repeat exactly.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Accept only this API token (Basic `email/token:TOKEN`); by default any well-formed
    /// credentials are accepted.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ZDMAP_EMULATOR_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<Secret>,
    /// Accept only this OAuth access token (`Authorization: Bearer TOKEN`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ZDMAP_EMULATOR_OAUTH_TOKEN",
        hide_env_values = true
    )]
    pub oauth_token: Option<Secret>,
    /// Load this JSON file into the emulator at start (and on reset): the shape of
    /// `GET /__emulator/state`, any subset of users, organizations, memberships, tickets,
    /// user_fields, organization_fields.
    #[arg(long, value_name = "FILE")]
    pub seed_state: Option<PathBuf>,
    /// Enable bulk user imports (`users/create_or_update_many`); Zendesk answers 403 by default.
    #[arg(long)]
    pub bulk_import: bool,
    /// Subdomain used in the `url` field of every record.
    #[arg(long, value_name = "NAME", default_value = "example")]
    pub subdomain: String,
}

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
    /// A JSON file to load at start (see [`EmulatorArgs::seed_state`]).
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

impl From<EmulatorArgs> for EmulatorOptions {
    fn from(a: EmulatorArgs) -> Self {
        EmulatorOptions {
            listen: a.listen,
            rpm: a.rpm,
            fail_rate: a.fail_rate,
            latency_ms: a.latency_ms,
            seed: a.seed,
            api_token: a.api_token,
            oauth_token: a.oauth_token,
            bulk_import: a.bulk_import,
            subdomain: a.subdomain,
            seed_state: a.seed_state,
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
        if !(0.0..=1.0).contains(&knobs.fail_rate) {
            return Err(invalid(format!(
                "fail rate must be between 0 and 1, not {}",
                knobs.fail_rate
            )));
        }
        let clock = clock::Clock::new();
        let mut world = World {
            store: state::Store::new(&opts.subdomain, opts.seed, clock),
            limits: limits::Limits::new(knobs, opts.seed),
            log: Vec::new(),
            auth: auth::AuthPolicy {
                api_token: opts.api_token.clone(),
                oauth_token: opts.oauth_token.clone(),
            },
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
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router::router(shared.clone());
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

    /// The same JSON as `GET /__emulator/state`.
    pub fn state(&self) -> Value {
        inspect::state_json(&lock(&self.shared).store)
    }

    /// The same entries as `GET /__emulator/requests`.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared).log.clone()
    }

    /// Changes the runtime knobs (budget, faults, latency, endpoint limits, bulk import).
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

/// `zdmap emulator`: serves until Ctrl-C or SIGTERM.
pub fn run_cli(args: EmulatorArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zdmap emulator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let restricted = args.api_token.is_some() || args.oauth_token.is_some();
        let emu = match Emulator::start(args.into()).await {
            Ok(emu) => emu,
            Err(e) => {
                eprintln!("zdmap emulator: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("zdmap emulator listening on {}", emu.url());
        println!(
            "  auth: {}; inspect: {}/__emulator/state, {}/__emulator/requests",
            if restricted {
                "configured tokens only"
            } else {
                "any well-formed credentials"
            },
            emu.url(),
            emu.url()
        );
        wait_for_shutdown_signal().await;
        println!("zdmap emulator stopping");
        emu.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
