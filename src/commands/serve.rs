//! `zdmap serve`: arguments, logs and signals around [`crate::serve::Server`].
//!
//! SIGHUP reloads the mappings and reads the credentials again; SIGTERM and Ctrl-C shut down
//! gracefully.

use super::args::{ConfigArgs, TargetArgs};
use super::destinations::{self, DestinationSpec, SourceSpec};
use crate::deliver::setup::{ConnectOptions, Destination};
use crate::mapping::config::{Routing, Source};
use crate::queue::journal::JournalOptions;
use crate::serve::admin::{self, AdminOptions, AdminToken};
use crate::serve::connections::ConnectionLimits;
use crate::serve::ingest::WriteKeys;
use crate::serve::logs::{self, LogFormat};
use crate::serve::{IngestOptions, Outlet, ServeOptions, Server, WorkerOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A YAML file of these flags by their long names (`listen: 0.0.0.0:8088`, `data_dir`,
    /// `write_key_file`, `set: {subdomain: acme}`), `${VAR}` taken from the environment.
    /// Default: zdmap.yaml in the working directory, when there is one. A flag on the command
    /// line comes first, then its ZDMAP_* variable, then the file.
    #[arg(
        id = "config_file",
        long = "config",
        value_name = "FILE",
        env = "ZDMAP_CONFIG"
    )]
    pub config_file: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Address of the ingest API (Segment's HTTP tracking API: /v1/identify, /v1/track,
    /// /v1/group, /v1/batch, /v1/import), plus /healthz, /readyz and /metrics.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8088",
        env = "ZDMAP_LISTEN"
    )]
    pub listen: SocketAddr,
    /// Where the durable queue and the dead letters are kept (created if needed; with --queue,
    /// only this replica's copy of the delivery log).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "zdmap-data",
        env = "ZDMAP_DATA_DIR"
    )]
    pub data_dir: PathBuf,
    /// Keep the queue, the dead letters and the request budget in NATS JetStream instead of
    /// the data directory, shared by every replica given the same servers:
    /// `nats://HOST:PORT[,HOST:PORT...]`. Credentials come from ZDMAP_NATS_USER and
    /// ZDMAP_NATS_PASSWORD, or ZDMAP_NATS_TOKEN (each also from the file named by the same
    /// variable with _FILE appended), or a creds file whose path is ZDMAP_NATS_CREDS.
    #[arg(long, value_name = "URLS", env = "ZDMAP_QUEUE", hide_env_values = true)]
    pub queue: Option<String>,
    /// The token store of an OAuth refresh-token chain from `zdmap auth login` (default:
    /// oauth-tokens.json in --data-dir; with --queue, the NATS key-value bucket zdmap_oauth,
    /// shared by every replica).
    #[arg(long, value_name = "FILE", env = "ZDMAP_TOKEN_STORE")]
    pub token_store: Option<PathBuf>,
    /// With --queue: copies JetStream keeps of the streams and buckets (1 on a single server,
    /// 3 on a three-node cluster). Applies when they are created.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        env = "ZDMAP_NATS_REPLICAS"
    )]
    pub nats_replicas: usize,
    /// With --queue: partitions of the events stream; each is delivered by one replica at a
    /// time, so more partitions spread the work more evenly. Fixed by the first replica that
    /// creates the queue.
    #[arg(long, value_name = "N", default_value_t = crate::queue::nats::DEFAULT_PARTITIONS, env = "ZDMAP_NATS_PARTITIONS")]
    pub nats_partitions: u32,
    /// With --queue: how long a replica that stopped (killed, cut off) keeps its partitions,
    /// and the organizations whose events it was delivering, before the others take them;
    /// leases are renewed every fifth of it (at least every second), holds on organizations
    /// every third. A replica that cannot renew a lease (cut off from NATS) starts no delivery
    /// of that partition's events four fifths of it after the last renewal, before another
    /// replica may take it. Fixed by the first replica that creates the queue.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, env = "ZDMAP_NATS_LEASE")]
    pub nats_lease: Duration,
    /// A write key senders must give as the HTTP Basic user (repeatable, or comma-separated).
    /// Required unless listening on loopback only.
    #[arg(
        long = "write-key",
        value_name = "KEY",
        env = "ZDMAP_WRITE_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub write_keys: Vec<String>,
    /// A file of write keys, one a line (or comma-separated), read at start: a mounted secret.
    /// Its keys are taken besides those of --write-key.
    #[arg(long, value_name = "FILE", env = "ZDMAP_WRITE_KEYS_FILE")]
    pub write_key_file: Option<PathBuf>,
    /// How many events are delivered at once. The events of one user (or one organization)
    /// always go in order; a user that must wait (a retry, a rate limit, a record that does
    /// not exist yet) is set aside while the others go on.
    #[arg(long, value_name = "N", default_value_t = 8, env = "ZDMAP_CONCURRENCY")]
    pub concurrency: usize,
    /// How long an event Zendesk cannot take yet (server errors, timeouts, 429s) keeps being
    /// tried before it is dead-lettered, e.g. `90s`, `30m`, `24h`. While Zendesk refuses the
    /// credentials, events wait however long it takes.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration, env = "ZDMAP_RETRY_FOR")]
    pub retry_for: Duration,
    /// How long an event that needs a record that does not exist yet (a track before its
    /// user's identify) waits for another event to create it before it is dead-lettered with
    /// the lookup that failed.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration, env = "ZDMAP_WAIT_FOR_RECORDS")]
    pub wait_for_records: Duration,
    /// Memory for the events that wait for a record, in MiB. Past it, such an event keeps only
    /// a small stub in memory: its body waits in the queue (SQLite or JetStream) and is read
    /// again when its record appears or its wait ends.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 64,
        env = "ZDMAP_MAX_PARKED_MB"
    )]
    pub max_parked_mb: usize,
    /// How long an item of a bulk request waits for others to join it (steps with a `batch`
    /// form). Bulk requests also go out when full, and as soon as nothing else runs and no event
    /// waits to be read, so a quiet stream is not slowed.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration, env = "ZDMAP_BATCH_WINDOW")]
    pub batch_window: Duration,
    /// Send every request on its own: no bulk requests, no jobs.
    #[arg(long, env = "ZDMAP_NO_BATCH")]
    pub no_batch: bool,
    /// How long shutdown waits for events being sent; the rest stay queued for the next start.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, env = "ZDMAP_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Duration,
    /// Do not reload when a file of the mappings directory changes (SIGHUP still reloads).
    #[arg(long, env = "ZDMAP_NO_WATCH")]
    pub no_watch: bool,
    /// Log format on standard error. The level comes from ZDMAP_LOG (default `info`).
    #[arg(long, value_enum, default_value = "text", env = "ZDMAP_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Include whole events in the logs of dead letters (off by default: events hold personal
    /// data).
    #[arg(long, env = "ZDMAP_LOG_EVENTS")]
    pub log_events: bool,
    /// An origin whose web pages may post events (CORS), e.g. `https://www.example.com`, or `*`
    /// for any (repeatable; off by default). A server on loopback refuses the requests of web
    /// pages of any other origin, write key or not.
    #[arg(
        long = "cors-origin",
        value_name = "ORIGIN",
        env = "ZDMAP_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// A host name a loopback server answers besides localhost, 127.0.0.1 and `[::1]`
    /// (repeatable). Requests naming another Host are refused, so that no web page can reach
    /// a local server through a name of its own (DNS rebinding).
    #[arg(
        long = "allowed-host",
        value_name = "NAME",
        env = "ZDMAP_ALLOWED_HOST",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// How long a sender's messageId is remembered: the same call sent again within it is
    /// dropped (`0` turns that off).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration, env = "ZDMAP_DEDUPE_WINDOW")]
    pub dedupe_window: Duration,
    /// Connections open at once [default: half the limit of open files (`ulimit -n`), at most
    /// 15000]. When they are all open, a new connection takes the place of the oldest one with
    /// no request in flight (one that has not sent a whole request head yet, else the one idle
    /// the longest); it is closed only when every connection has a request in flight.
    #[arg(long, value_name = "N", env = "ZDMAP_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long a connection may take to send a request's headers, counted from its accept
    /// (and, on a kept-alive connection, from the end of its last answer): one that sends
    /// nothing, or too little, is closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, env = "ZDMAP_HEADER_TIMEOUT")]
    pub header_timeout: Duration,
    /// How long a connection may pass no bytes before it is closed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration, env = "ZDMAP_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,
    /// How long a request body may take to arrive.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, env = "ZDMAP_BODY_TIMEOUT")]
    pub body_timeout: Duration,
    /// Address of the admin listener: the admin API under /api/ (for `zdmap events` and
    /// tooling). It takes the admin token only (ZDMAP_ADMIN_TOKEN, or the file of
    /// --admin-token-file; without either, one is made and kept in admin-token of --data-dir),
    /// never a write key. [default: 127.0.0.1:8089, skipped with a warning when taken]
    #[arg(long, value_name = "ADDR", env = "ZDMAP_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// A file holding the admin token (a mounted secret), read at start.
    #[arg(long, value_name = "FILE", env = "ZDMAP_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The destinations of the config file's `destinations:` (none: the one these flags set).
    #[arg(skip)]
    pub(crate) destinations: Vec<DestinationSpec>,
    /// The sources of the config file's `sources:`: which write key feeds which destinations.
    #[arg(skip)]
    pub(crate) sources: Vec<SourceSpec>,
    /// Start no admin listener.
    #[arg(long, env = "ZDMAP_NO_ADMIN", conflicts_with = "admin_listen")]
    pub no_admin: bool,
    /// How long the delivery log keeps an event after it was accepted (journal.sqlite3 in
    /// --data-dir, or with --queue the stream ZDMAP_JOURNAL; read with `zdmap events` and the
    /// admin API).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration, env = "ZDMAP_JOURNAL_MAX_AGE")]
    pub journal_max_age: Duration,
    /// Disk the delivery log may take, in MiB; the oldest events go first.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 1024,
        env = "ZDMAP_JOURNAL_MAX_MB"
    )]
    pub journal_max_mb: u64,
    /// Keep no delivery log.
    #[arg(long, env = "ZDMAP_NO_JOURNAL")]
    pub no_journal: bool,
}

/// The variable that holds the admin token.
pub(crate) const ADMIN_TOKEN_VAR: &str = "ZDMAP_ADMIN_TOKEN";

/// The admin token of ZDMAP_ADMIN_TOKEN, else of `file`, else of admin-token in `data_dir`;
/// `None` when none is set anywhere.
pub(crate) fn read_admin_token(
    file: Option<&Path>,
    data_dir: &Path,
) -> Result<Option<AdminToken>, String> {
    let short = |place: &str| {
        format!("the admin token of {place} is too short: use at least 16 characters")
    };
    if let Some(token) = std::env::var(ADMIN_TOKEN_VAR)
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return AdminToken::new(&token)
            .map(Some)
            .ok_or_else(|| short(ADMIN_TOKEN_VAR));
    }
    let (path, named) = match file {
        Some(path) => (path.to_path_buf(), true),
        None => (data_dir.join(admin::TOKEN_FILE), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => AdminToken::new(&text)
            .map(Some)
            .ok_or_else(|| short(&path.display().to_string())),
        Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read the admin token of {}: {e}",
            path.display()
        )),
    }
}

/// The admin listener of `args`: its token read, or made and kept in the data directory (only
/// its owner may read that file).
fn admin_options(args: &ServeArgs) -> Result<Option<AdminOptions>, String> {
    if args.no_admin {
        return Ok(None);
    }
    let token = match read_admin_token(args.admin_token_file.as_deref(), &args.data_dir)? {
        Some(token) => token,
        None => {
            let token = AdminToken::generate();
            let path = args.data_dir.join(admin::TOKEN_FILE);
            write_private(&path, token.reveal())
                .map_err(|e| format!("cannot keep the admin token in {}: {e}", path.display()))?;
            tracing::info!(file = %path.display(), "made an admin token");
            token
        }
    };
    let listen = match args.admin_listen {
        Some(addr) => addr,
        None => admin::DEFAULT_LISTEN
            .parse()
            .map_err(|e| format!("the default admin address: {e}"))?,
    };
    Ok(Some(AdminOptions {
        listen,
        token,
        required: args.admin_listen.is_some(),
        allowed_hosts: args.allowed_hosts.clone(),
    }))
}

/// Writes `text` to a new file at `path` that only its owner may read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// `90s`, `30m`, `24h`, `2d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 24h"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

/// Runs until SIGTERM or Ctrl-C. Exit 0 after a graceful shutdown, 1 when it cannot start.
pub fn serve(args: &ServeArgs) -> ExitCode {
    logs::init(args.log_format);
    super::block_on(serve_async(args))
}

/// Why the server cannot start, in the log (so with `--log-format json` it is a JSON line too).
fn cannot_start(problem: &str) -> ExitCode {
    tracing::error!("{problem}");
    ExitCode::from(1)
}

/// The write keys of --write-key and of --write-key-file.
pub(super) fn write_keys(args: &ServeArgs) -> Result<WriteKeys, String> {
    let mut keys = args.write_keys.clone();
    if let Some(path) = &args.write_key_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the write keys of --write-key-file {}: {e}",
                path.display()
            )
        })?;
        keys.extend(
            text.split(['\n', ','])
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned),
        );
    }
    Ok(WriteKeys::from_args_and_env(&keys, None))
}

async fn serve_async(args: &ServeArgs) -> ExitCode {
    let mut write_keys = match write_keys(args) {
        Ok(keys) => keys,
        Err(problem) => return cannot_start(&problem),
    };
    for source in &args.sources {
        write_keys.add_source(source.key.clone(), source.destinations.clone());
    }
    let admin = match admin_options(args) {
        Ok(admin) => admin,
        Err(problem) => return cannot_start(&problem),
    };
    let workers = WorkerOptions {
        concurrency: args.concurrency,
        retry_for: args.retry_for,
        wait_for_records: args.wait_for_records,
        max_parked_bytes: args.max_parked_mb.saturating_mul(1 << 20),
        drain: args.shutdown_timeout,
        batch_window: (!args.no_batch).then_some(args.batch_window),
        ..WorkerOptions::default()
    };
    // The config's destinations, each set up on its own; without any, the one of the flags.
    let mut outlets = Vec::with_capacity(args.destinations.len());
    for spec in &args.destinations {
        match outlet(args, spec, &workers).await {
            Ok(outlet) => outlets.push(outlet),
            Err(problem) => return cannot_start(&problem),
        }
    }
    let reconfigure = super::reconfigure::Reconfigure::new(args, &workers);
    let single = if outlets.is_empty() {
        match default_destination(args).await {
            Ok(destination) => Some(destination),
            Err(problem) => return cannot_start(&problem),
        }
    } else {
        None
    };
    let options = ServeOptions {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        nats: match args.queue.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(q) if crate::queue::nats::is_nats(q) => Some(crate::queue::NatsOptions {
                replicas: args.nats_replicas.max(1),
                partitions: args.nats_partitions.max(1),
                lease: args.nats_lease.max(Duration::from_secs(1)),
                ..crate::queue::NatsOptions::new(q)
            }),
            Some(q) => {
                return cannot_start(&format!(
                    "--queue {q:?} is not a NATS address like nats://127.0.0.1:4222 (leave it out to keep the queue in --data-dir)"
                ));
            }
        },
        write_keys,
        workers,
        config: args.config.source(),
        watch: !args.no_watch,
        log_events: args.log_events,
        journal: (!args.no_journal).then(|| JournalOptions {
            max_age: args.journal_max_age,
            max_bytes: args.journal_max_mb.saturating_mul(1 << 20),
        }),
        shutdown_timeout: args.shutdown_timeout,
        ingest: IngestOptions {
            cors_origins: args.cors_origins.clone(),
            allowed_hosts: args.allowed_hosts.clone(),
            dedupe_window: args.dedupe_window,
            body_timeout: args.body_timeout,
            connections: ConnectionLimits {
                max_connections: args
                    .max_connections
                    .unwrap_or_else(crate::serve::connections::default_max_connections)
                    .max(1),
                header_timeout: args.header_timeout,
                idle_timeout: args.idle_timeout,
            },
        },
        admin,
    };
    let started = match single {
        Some(destination) => Server::start(options, destination).await,
        None => Server::start_outlets(options, outlets).await,
    };
    let server = match started {
        Ok(s) => s,
        Err(e) => return cannot_start(&e.to_string()),
    };
    // Listening for signals before saying so: a SIGTERM sent as soon as the line is read
    // shuts down gracefully.
    let signals = Signals::new();
    // Standard output may be closed once its first line was read: no panic for that.
    let mut out = super::Out::new();
    out.line(format_args!("zdmap serve listening on {}", server.url()));
    if let Some(url) = server.emulator_url() {
        out.line(format_args!(
            "  delivering to the built-in emulator at {url}"
        ));
    }
    if let Some(url) = server.admin_url() {
        out.line(format_args!(
            "  admin API at {url}/api/ (the admin token opens it)"
        ));
    }
    drop(out);
    for shared in server.destinations() {
        let span = match shared.named() {
            Some(name) => tracing::info_span!("destination", name = %name),
            None => tracing::Span::none(),
        };
        tokio::spawn(tracing::Instrument::instrument(check_scopes(shared), span));
    }
    signals.wait(&server, args, reconfigure).await;
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// The one destination of a server whose config names none: the flags' mappings, account and
/// credentials, with the token store of `--token-store` (or the data directory's, or NATS').
async fn default_destination(args: &ServeArgs) -> Result<Destination, String> {
    let token_store = super::auth::open_store(
        args.token_store.as_deref(),
        &args.data_dir,
        args.queue.as_deref(),
        None,
        crate::queue::nats::SERVE_WAIT,
    )
    .await?;
    let connect = ConnectOptions {
        token_store: Some(token_store),
        ..Default::default()
    };
    super::try_load_and_connect(&args.config, &args.target, connect).await
}

/// Where a destination's config loads from (its mappings and settings over the server's, its
/// name and filter), and its target.
pub(super) fn destination_source(args: &ServeArgs, spec: &DestinationSpec) -> (Source, TargetArgs) {
    let (config_args, target_args) =
        destinations::destination_args(spec, &args.config, &args.target);
    let mut source = config_args.source();
    source.routing = Routing {
        destination: Some(spec.name.clone()),
        filter: spec.filter.as_ref().map(|f| f.source().to_owned()),
    };
    (source, target_args)
}

/// A destination the config names, set up on its own: its mappings, settings, account,
/// credentials and token store (its own file or key unless it names one), its filter, and its
/// workers' settings over the server's.
pub(super) async fn outlet(
    args: &ServeArgs,
    spec: &DestinationSpec,
    workers: &WorkerOptions,
) -> Result<Outlet, String> {
    let (source, target_args) = destination_source(args, spec);
    let config = source.load().map_err(|diags| {
        format!(
            "destination `{}`: {}",
            spec.name,
            super::invalid_mappings(&diags)
        )
    })?;
    let token_store = super::auth::open_store(
        spec.token_store.as_deref(),
        &args.data_dir,
        args.queue.as_deref(),
        Some(&spec.name),
        crate::queue::nats::SERVE_WAIT,
    )
    .await
    .map_err(|e| format!("destination `{}`: {e}", spec.name))?;
    let connect = ConnectOptions {
        token_store: Some(token_store),
        credential_names: spec.credentials.clone(),
        ..Default::default()
    };
    let destination =
        crate::deliver::setup::connect(Arc::new(config), &target_args.wanted(), connect)
            .await
            .map_err(|e| format!("destination `{}`: {e}", spec.name))?;
    let no_batch = spec.no_batch.unwrap_or(args.no_batch);
    Ok(Outlet {
        name: spec.name.clone(),
        config: source,
        workers: WorkerOptions {
            concurrency: spec.concurrency.unwrap_or(workers.concurrency),
            retry_for: spec.retry_for.unwrap_or(workers.retry_for),
            wait_for_records: spec.wait_for_records.unwrap_or(workers.wait_for_records),
            batch_window: (!no_batch).then(|| spec.batch_window.unwrap_or(args.batch_window)),
            ..workers.clone()
        },
        destination,
    })
}

/// Logs whether the OAuth token's scopes cover every request of the mappings (the check of
/// `zdmap auth check`), once at start.
async fn check_scopes(shared: std::sync::Arc<crate::serve::Shared>) {
    use crate::deliver::auth::scopes;
    let executor = shared.executor();
    let client = executor.transport().client();
    if matches!(
        client.authorizer().credentials(),
        crate::deliver::Credentials::ApiToken { .. }
    ) {
        return;
    }
    match scopes::current_token(client, &executor.config().errors).await {
        Ok(info) => {
            match scopes::missing_message(&scopes::needs(executor.config()), &info.scopes) {
                None => tracing::info!(
                    scopes = %info.scopes.join(" "),
                    "the OAuth token's scopes cover every request of the mappings"
                ),
                Some(problem) => tracing::error!("{problem}"),
            }
        }
        // A refused client or a spent chain is said by delivery, once.
        Err(_) if client.authorizer().refused() => {}
        Err(e) => tracing::warn!("the OAuth token's scopes could not be read: {e}"),
    }
}

/// SIGHUP, SIGTERM and Ctrl-C, listened for from their creation on.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                unix: signal(SignalKind::hangup())
                    .and_then(|hup| Ok((hup, signal(SignalKind::terminate())?)))
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Reloads on SIGHUP (the config file's destinations and sources too, when it names
    /// them); returns on SIGTERM or Ctrl-C.
    async fn wait(
        self,
        server: &Server,
        args: &ServeArgs,
        mut reconfigure: Option<super::reconfigure::Reconfigure>,
    ) {
        #[cfg(unix)]
        {
            let Some((mut hup, mut term)) = self.unix else {
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading the mappings and the credentials");
                        if let Some(reconfigure) = &mut reconfigure
                            && let Err(problem) = reconfigure.apply(args, server).await
                        {
                            tracing::error!(
                                problem = %problem,
                                "the config file's destinations and sources do not apply; the running ones stay"
                            );
                        }
                        for shared in server.destinations() {
                            let shared = shared.clone();
                            let _ = tokio::task::spawn_blocking(move || shared.reload()).await;
                        }
                    }
                    _ = term.recv() => return,
                    _ = tokio::signal::ctrl_c() => return,
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (server, args, reconfigure);
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
