//! `zdmap auth`: log in with OAuth (authorization code and PKCE), and say which credentials
//! are in use and whether their scopes cover the mappings.
//!
//! The token store is found the way `zdmap serve` finds it: `--token-store FILE`, else the NATS
//! key-value bucket of `--queue`, else `oauth-tokens.json` in `--data-dir`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::args::{ConfigArgs, TargetArgs};
use crate::deliver::auth::chain::STORE_FILE;
use crate::deliver::auth::login::Login;
use crate::deliver::auth::{ChainStore, Credentials, FileStore, scopes};
use crate::deliver::setup::{credential_vars, credentials};
use crate::deliver::{Client, ClientOptions, Target, TargetChoice};

/// Exit code when a person must log in again (sysexits' EX_NOPERM).
pub const EXIT_LOGIN_NEEDED: u8 = 77;

#[derive(clap::Args, Debug)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum AuthCommand {
    /// Approve zdmap once in a browser (OAuth authorization code with PKCE) and keep the
    /// tokens in the token store; `serve` and `send` then refresh them on their own.
    Login(LoginArgs),
    /// Which credentials are in use, and the token's scopes and expiry as Zendesk states them
    /// (never a secret).
    Status(StatusArgs),
    /// Like `status`, then exit 1 naming each request of the mappings the token's scopes do
    /// not cover.
    Check(StatusArgs),
}

/// Where the refresh-token chain is kept.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// The token store file (default: oauth-tokens.json in --data-dir).
    #[arg(long, value_name = "FILE", env = "ZDMAP_TOKEN_STORE")]
    pub token_store: Option<PathBuf>,
    /// The data directory of `zdmap serve`, whose oauth-tokens.json is the token store.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "zdmap-data",
        env = "ZDMAP_DATA_DIR"
    )]
    pub data_dir: PathBuf,
    /// The NATS servers of `zdmap serve --queue`: the chain is kept in their key-value bucket
    /// `zdmap_oauth`, shared by every replica.
    #[arg(long, value_name = "URLS", env = "ZDMAP_QUEUE")]
    pub queue: Option<String>,
    /// The destination of the server config's `destinations:` whose chain this is: each has
    /// its own (oauth-tokens.NAME.json in --data-dir, or its own key in zdmap_oauth).
    #[arg(long, value_name = "NAME", env = "ZDMAP_DESTINATION")]
    pub destination: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The OAuth client's unique identifier (default: the variable destination.yaml names,
    /// ZENDESK_OAUTH_CLIENT_ID). A confidential client's secret is read from its variable.
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// The scopes to ask for (default: auth.oauth.scope, else what the mappings need).
    #[arg(long, value_name = "SCOPES")]
    pub scope: Option<String>,
    /// Where the browser is sent back: a loopback address whose URL
    /// (http://ADDR/callback) is a redirect URL of the OAuth client.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8857")]
    pub listen: SocketAddr,
    /// Print the URL only; do not try to open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// How long to wait for the approval.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = super::serve::parse_duration)]
    pub wait: Duration,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs `zdmap auth ...`.
pub fn auth(args: &AuthArgs) -> ExitCode {
    crate::serve::logs::init_at(crate::serve::logs::LogFormat::Text, "warn");
    super::block_on(async {
        match &args.command {
            AuthCommand::Login(a) => login(a).await,
            AuthCommand::Status(a) => status(a, false).await,
            AuthCommand::Check(a) => status(a, true).await,
        }
    })
}

/// The token store `args` name: a file, or NATS key-value.
/// `nats_destination`: whose chain it is in NATS key-value, by destination name (`None`: the
/// default destination's, at the key it always had); a file store is the file named.
/// `nats_wait`: how long NATS is waited for (`serve` waits for a server starting beside it; a
/// command a person runs says at once that it is not there).
pub async fn open_store(
    token_store: Option<&Path>,
    data_dir: &Path,
    queue: Option<&str>,
    destination: Option<&str>,
    nats_wait: std::time::Duration,
) -> Result<Arc<dyn ChainStore>, String> {
    let destination = destination.filter(|d| *d != crate::queue::DEFAULT_DESTINATION);
    if let Some(name) = destination
        && !crate::queue::valid_destination_name(name)
    {
        return Err(format!(
            "--destination {name:?} is no destination's name (a-z, 0-9, _ and -, starting with a letter)"
        ));
    }
    if let Some(path) = token_store {
        return Ok(Arc::new(FileStore::new(path)));
    }
    match queue.map(str::trim).filter(|q| !q.is_empty()) {
        Some(q) if crate::queue::nats::is_nats(q) => {
            let mut options = crate::queue::NatsOptions {
                first_connection: nats_wait,
                ..crate::queue::NatsOptions::new(q)
            };
            if let Some(destination) = destination {
                options = options.for_destination(destination);
            }
            let store = crate::queue::nats::tokens::KvChainStore::open(&options)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
        Some(q) => Err(format!(
            "--queue {q:?} is not a NATS address like nats://127.0.0.1:4222"
        )),
        None => Ok(Arc::new(FileStore::new(data_dir.join(match destination {
            Some(name) => store_file_of(name),
            None => STORE_FILE.to_owned(),
        })))),
    }
}

/// The token store file in the data directory of a destination other than the default.
fn store_file_of(destination: &str) -> String {
    match STORE_FILE.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{destination}.{ext}"),
        None => format!("{STORE_FILE}.{destination}"),
    }
}

/// The target of `args`; the in-process emulator is refused (it would be gone with the command).
fn target(config: &crate::mapping::config::Config, args: &TargetArgs) -> Result<Target, String> {
    match Target::resolve(&args.wanted(), config.setting_str("subdomain")).map_err(|e| e.to_string())? {
        TargetChoice::Remote(t) => Ok(t),
        TargetChoice::Emulator => Err(
            "--emulator starts an emulator that ends with this command: start `zdmap emulator` and pass its --zendesk-url"
                .into(),
        ),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(1)
}

/// What every `auth` subcommand works on: the mappings, the account and the token store.
async fn open(
    config: &ConfigArgs,
    target_args: &TargetArgs,
    store: &StoreArgs,
) -> Result<(crate::mapping::config::Config, Target, Arc<dyn ChainStore>), ExitCode> {
    let config = super::load_config(config)?;
    let target = target(&config, target_args).map_err(fail)?;
    let store = open_store(
        store.token_store.as_deref(),
        &store.data_dir,
        store.queue.as_deref(),
        store.destination.as_deref(),
        crate::queue::nats::COMMAND_WAIT,
    )
    .await
    .map_err(fail)?;
    Ok((config, target, store))
}

async fn login(args: &LoginArgs) -> ExitCode {
    let (config, target, store) = match open(&args.config, &args.target, &args.store).await {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let vars = credential_vars(&config);
    let client_id = match args.client_id.clone().or_else(|| {
        crate::deliver::auth::env_or_file(&vars.client_id)
            .ok()
            .flatten()
            .map(|s| s.trim().to_string())
    }) {
        Some(id) if !id.is_empty() => id,
        _ => {
            return fail(format!(
                "no OAuth client: pass --client-id or set {} (the client's unique identifier in Admin Center)",
                vars.client_id
            ));
        }
    };
    let secret = match crate::deliver::auth::env_or_file(&vars.client_secret) {
        Ok(s) => s.map(|s| crate::deliver::Secret::new(s.trim())),
        Err(e) => return fail(e),
    };
    let scope = args.scope.clone().unwrap_or(vars.oauth.scope.clone());
    let client = match Client::new(
        target.clone(),
        Credentials::oauth("none"),
        ClientOptions::default(),
    ) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let pending = match Login::start(target.base_url(), &client_id, &scope, args.listen).await {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    println!("Open this URL to approve zdmap for {}:", target.base_url());
    println!("{}", pending.url());
    println!(
        "Waiting up to {:?} for the approval at http://{}/callback ...",
        args.wait,
        pending.redirect_addr()
    );
    if !args.no_browser {
        open_browser(pending.url().as_str());
    }
    let chain = match pending
        .finish(
            client.authorizer().endpoint(),
            secret.as_ref(),
            vars.oauth.lifetime,
            args.wait,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = store.write(&chain, None).await {
        return fail(format!(
            "Zendesk issued the tokens but they could not be kept ({e}); run `zdmap auth login` again"
        ));
    }
    println!(
        "Logged in: the tokens are in {} (scope {:?}); `zdmap serve` and `zdmap send --token-store` refresh them from now on.",
        store.place(),
        chain.scope
    );
    ExitCode::SUCCESS
}

/// Opens `url` in a browser where there is a desktop to show it; says nothing when not.
fn open_browser(url: &str) {
    let desktop = std::env::var_os("DISPLAY").is_some()
        || std::env::var_os("WAYLAND_DISPLAY").is_some()
        || cfg!(target_os = "macos");
    if !desktop {
        return;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

async fn status(args: &StatusArgs, check: bool) -> ExitCode {
    let (config, target, store) = match open(&args.config, &args.target, &args.store).await {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let vars = credential_vars(&config);
    let credentials =
        match credentials(&vars, Some(&store), target.allows_placeholder_credentials()).await {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
    println!("zendesk:     {}", target.base_url());
    println!("credentials: {}", credentials.describe());
    let oauth = !matches!(credentials, Credentials::ApiToken { .. });
    if credentials.is_api_token() {
        println!(
            "warning:     Zendesk deactivates every API token on {}; move to OAuth (README, \"Connecting to Zendesk\")",
            crate::deliver::auth::API_TOKENS_END
        );
    }
    let client = match Client::new(target, credentials, ClientOptions::default()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if !oauth {
        return ExitCode::SUCCESS;
    }
    let info = scopes::current_token(&client, &config.errors).await;
    let stats = client.authorizer().stats();
    if stats
        .login_needed
        .load(std::sync::atomic::Ordering::Relaxed)
        == 1
    {
        if let Err(e) = &info {
            eprintln!("error: {e}");
        }
        return ExitCode::from(EXIT_LOGIN_NEEDED);
    }
    let info = match info {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    println!("scopes:      {}", info.scopes.join(" "));
    println!(
        "expires at:  {}",
        info.expires_at.as_deref().unwrap_or("never")
    );
    if let Some(id) = &info.client_id {
        println!("client:      {id}");
    }
    if !check {
        return ExitCode::SUCCESS;
    }
    match scopes::missing_message(&scopes::needs(&config), &info.scopes) {
        None => {
            println!("check:       the scopes cover every request of the mappings");
            ExitCode::SUCCESS
        }
        Some(problem) => fail(problem),
    }
}
