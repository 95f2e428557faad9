//! `zdmap emulator`: its flags, and serving the built-in emulator until Ctrl-C or SIGTERM.

use crate::emulator::{Emulator, EmulatorOptions, LostAnswer, OAuthClient, RuntimeKnobs, Secret};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Time from a bulk request to the end of its job, on the emulator's clock, in milliseconds
    /// (queued for the first half, working for the second).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub job_delay_ms: u64,
    /// Jobs that may be queued or working at once (Zendesk: 30).
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub job_limit: u32,
    /// The answer to a bulk request beyond the job limit: 429, 403 or 422.
    #[arg(long, value_name = "STATUS", default_value_t = 429)]
    pub job_limit_status: u16,
    /// Probability (0 to 1) that a job fails as a whole, applying nothing.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub job_fail_rate: f64,
    /// Probability (0 to 1) that a write is applied and then its answer lost.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub lost_answer_rate: f64,
    /// How a lost answer is lost: answered 500, the connection dropped, or either.
    #[arg(long, value_enum, value_name = "HOW", default_value = "either")]
    pub lost_answer: LostAnswer,
    /// Requests kept in the request log (`/__emulator/requests`), the newest; 0 keeps none.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub request_log_size: usize,
    /// The base URL the links of paged answers name (`next_page`, `links.next`), e.g.
    /// `https://example.zendesk.com`; by default the host each request was sent to.
    #[arg(long, value_name = "URL")]
    pub links_base: Option<String>,
    /// Subdomain used in the `url` field of every record.
    #[arg(long, value_name = "NAME", default_value = "example")]
    pub subdomain: String,
    /// Register an OAuth client for `/oauth/tokens` and `/oauth/authorizations/new` (repeat for
    /// more); without a secret it is a public client, which must use PKCE. With any, only
    /// issued tokens and the configured tokens are accepted.
    #[arg(long = "oauth-client", value_name = "ID[:SECRET]")]
    pub oauth_clients: Vec<OAuthClient>,
    /// Lifetime of an access token whose token request names no `expires_in`.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    pub access_token_lifetime: u64,
    /// Lifetime of a refresh token whose token request names no `refresh_token_expires_in`.
    #[arg(long, value_name = "SECS", default_value_t = 2_592_000)]
    pub refresh_token_lifetime: u64,
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
            knobs: RuntimeKnobs {
                job_delay_ms: a.job_delay_ms,
                job_limit: a.job_limit,
                job_limit_status: a.job_limit_status,
                job_fail_rate: a.job_fail_rate,
                lost_answer_rate: a.lost_answer_rate,
                lost_answer: a.lost_answer,
                request_log_size: a.request_log_size,
                links_base: a.links_base,
                oauth_clients: a.oauth_clients,
                access_token_lifetime_secs: a.access_token_lifetime,
                refresh_token_lifetime_secs: a.refresh_token_lifetime,
                ..RuntimeKnobs::default()
            },
            final_state: None,
        }
    }
}

/// `zdmap emulator`: serves until Ctrl-C or SIGTERM.
pub fn run(args: EmulatorArgs) -> ExitCode {
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
        let oauth_clients = args.oauth_clients.len();
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
            if restricted || oauth_clients > 0 {
                "configured tokens only"
            } else {
                "any well-formed credentials"
            },
            emu.url(),
            emu.url()
        );
        if oauth_clients > 0 {
            println!(
                "  OAuth clients: {oauth_clients}; tokens at {}/oauth/tokens, issued tokens only \
                 besides the configured ones; inspect: {}/__emulator/oauth",
                emu.url(),
                emu.url()
            );
        }
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
