//! `zdmap serve`: the long-running service. CDPs, apps and web pages post events to a
//! Segment-compatible ingest API; each accepted event is stored durably before the answer, then
//! delivered to Zendesk by workers reading the queue.
//!
//! - [`ingest`]: what a request may carry and how it becomes queued events (or refused calls).
//! - [`body`]: reading a request body: time and size limits, gzip and deflate.
//! - [`connections`]: the connection cap, header and idle timeouts, the graceful stop.
//! - [`slots`]: who holds a connection slot, and who gives it up when the cap is reached.
//! - [`guard`]: on loopback, no web page of another origin and no foreign `Host`.
//! - [`workers`]: delivery from the queue, in order per user, until each event is settled.
//! - [`metrics`]: `/metrics` (Prometheus text) and the readiness behind `/readyz`.
//! - [`reload`]: swapping in a changed config (SIGHUP, or a file of the mappings changing).
//! - [`logs`]: how the server logs (text or one JSON object per line).
//! - [`admin`]: the admin listener: its token, the JSON API under `/api/` and the web console
//!   (the delivery log, [`crate::queue::journal`], is read there).
//!
//! [`Server::start`] wires them over a [`SqliteQueue`] in the data directory, or over a
//! [`NatsQueue`] shared with other replicas (`--queue nats://...`); [`Server::shutdown`] stops
//! taking requests, lets workers put down their current event and flushes the queue (on NATS,
//! hands the replica's partitions over at once).

pub mod admin;
pub mod body;
pub mod connections;
mod fleet;
pub mod guard;
pub mod ingest;
pub mod logs;
pub mod metrics;
pub mod reload;
pub(crate) mod slots;
pub mod workers;

use crate::base::sync::lock;
use crate::base::time::rfc3339_utc;
use crate::deliver::setup::{Destination, reread_credentials};
use crate::deliver::trail::Entry;
use crate::deliver::{CredentialsError, Executor, Stats};
use crate::mapping::config::{Diagnostics, Source};
use crate::queue::journal::{Facts, Journal, JournalOptions};
use crate::queue::{NatsOptions, NatsQueue, Queue, SqliteQueue};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use body::{BodyError, BodyLimits};
use connections::ConnectionLimits;
pub use fleet::Outlet;
use fleet::{Destinations, Fleet, LaneOf};
use ingest::{Endpoint, Refused, WriteKeys};
use metrics::{Health, Metrics};
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, CorsLayer};
pub use workers::WorkerOptions;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Where the queue and the dead letters are kept.
    pub data_dir: PathBuf,
    /// Keep them in NATS JetStream instead, shared with other replicas (the data directory then
    /// keeps this replica's copy of the delivery log only).
    pub nats: Option<NatsOptions>,
    pub write_keys: WriteKeys,
    pub workers: WorkerOptions,
    /// Where the config was loaded from, to load it again on reload.
    pub config: Source,
    /// Reload when a file of the mappings directory changes (SIGHUP reloads in any case).
    pub watch: bool,
    /// Put whole events in the logs of dead letters (off: they may hold personal data).
    pub log_events: bool,
    /// How long shutdown waits for workers to put down their current event.
    pub shutdown_timeout: Duration,
    pub ingest: IngestOptions,
    /// The admin listener (none: not started).
    pub admin: Option<admin::AdminOptions>,
    /// The delivery log, kept in the data directory, or in JetStream with `nats` (none: off).
    pub journal: Option<JournalOptions>,
}

/// How the ingest API takes requests.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Origins whose web pages may post events (CORS), like `https://www.example.com`; `*` for
    /// any. Empty: no CORS.
    pub cors_origins: Vec<String>,
    /// Host names a loopback server answers besides its loopback names (see [`guard`]).
    pub allowed_hosts: Vec<String>,
    /// How long a sender's `messageId` is remembered, so the same call sent again is dropped
    /// (zero: never dropped).
    pub dedupe_window: Duration,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    pub connections: ConnectionLimits,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            dedupe_window: crate::queue::DEFAULT_DEDUPE_WINDOW,
            body_timeout: Duration::from_secs(30),
            connections: ConnectionLimits::default(),
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "no write key: set --write-key or ZDMAP_WRITE_KEYS, or listen on a loopback address only (listening on {0})"
    )]
    NoWriteKey(SocketAddr),
    #[error("{0}")]
    Queue(#[from] crate::queue::QueueError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--cors-origin {0:?} is not an origin like https://www.example.com (or *)")]
    CorsOrigin(String),
    #[error("no destination to deliver to")]
    NoDestination,
    #[error("the destination `{0}` is named twice")]
    DuplicateDestination(String),
    #[error("a write key names the destination `{0}`, which the config does not have")]
    UnknownDestination(String),
}

/// Why a reload was refused (the running config and credentials stay).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Mappings(Diagnostics),
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
}

/// What the delivery to one destination shares: the current executor (swapped on reload),
/// health, counters. The first destination's also counts the ingest's requests.
pub struct Shared {
    /// The destination's name.
    pub destination: String,
    /// Whether the server's config names its destinations (`destinations:`): what this one
    /// shows (metrics, logs, the delivery log's entries) then carries its name.
    pub labeled: bool,
    executor: RwLock<Arc<Executor>>,
    pub health: Health,
    pub metrics: Metrics,
    pub stats: Arc<Stats>,
    pub log_events: bool,
    /// The delivery log, when it is on.
    pub journal: Option<Arc<Journal>>,
    /// Where the config loads from (a reload of the server's config file may change it).
    config: RwLock<Source>,
    /// Whether the emulator's placeholder credential may stand in when none are set.
    placeholder_credentials: bool,
    /// The variables the destination's credentials are read from, in place of its mappings'.
    credential_names: crate::deliver::CredentialNames,
    reloading: std::sync::Mutex<()>,
}

impl Shared {
    /// The delivery to `outlet`, its executor keeping its records of entities in `lane`.
    fn new<Q: Queue>(
        outlet: &Outlet,
        lane: Arc<Q>,
        journal: Option<Arc<Journal>>,
        log_events: bool,
        labeled: bool,
    ) -> Shared {
        let destination = &outlet.destination;
        let placeholder_credentials = destination.emulator.is_some()
            || destination
                .executor
                .transport()
                .client()
                .target()
                .allows_placeholder_credentials();
        Shared {
            destination: outlet.name.clone(),
            labeled,
            executor: RwLock::new(Arc::new(
                destination
                    .executor
                    .with_clock(lane.clone())
                    .with_writes(lane),
            )),
            health: Health::default(),
            metrics: Metrics::default(),
            stats: destination.stats.clone(),
            log_events,
            journal,
            config: RwLock::new(outlet.config.clone()),
            placeholder_credentials,
            credential_names: destination.credential_names.clone(),
            reloading: std::sync::Mutex::new(()),
        }
    }

    /// The destination's name where the server's config names its destinations (what its
    /// logs and the delivery log's entries say); `None` on a server with one unnamed.
    pub fn named(&self) -> Option<&str> {
        self.labeled.then_some(self.destination.as_str())
    }

    /// The executor of the current config.
    pub fn executor(&self) -> Arc<Executor> {
        self.executor
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Where the config loads from from now on (the server's config file changed the
    /// destination's mappings, settings or filter); [`Shared::reload`] loads it.
    pub fn set_source(&self, source: Source) {
        *write(&self.config) = source;
    }

    /// Loads the mappings and reads the credentials again (from their variables or files); a
    /// valid config replaces the running one, a broken one is refused (the running one stays)
    /// and reported by `/healthz`, `/readyz` and a metric until a good one loads. The server
    /// stays ready: one typo must not take every replica out of a load balancer.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let source = read(&self.config).clone();
        let loaded = source
            .load()
            .map_err(ReloadError::Mappings)
            .and_then(|config| {
                let current = self
                    .executor()
                    .transport()
                    .client()
                    .authorizer()
                    .credentials();
                reread_credentials(
                    &config,
                    &self.credential_names,
                    &current,
                    self.placeholder_credentials,
                )
                .map(|credentials| (config, credentials))
                .map_err(ReloadError::from)
            });
        match loaded {
            Ok((config, credentials)) => {
                let actions = config.actions.len();
                let next = Arc::new(self.executor().with_config(Arc::new(config)));
                next.transport().client().set_credentials(credentials);
                *self
                    .executor
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
                self.health.set_config(None);
                self.metrics.note_reload(true);
                tracing::info!(actions, "mappings reloaded; credentials read again");
                Ok(())
            }
            Err(e) => {
                self.metrics.note_reload(false);
                let what = match e {
                    ReloadError::Mappings(_) => "the mappings do not load",
                    ReloadError::Credentials(_) => "the credentials do not load",
                };
                self.health.set_config(Some(format!(
                    "{what}; the last good config keeps running:\n{e}"
                )));
                tracing::error!(
                    problems = %e,
                    "{what}; the last good config keeps running"
                );
                Err(e)
            }
        }
    }
}

/// The destinations of a server, each with its handle of the queue (a snapshot: a reload
/// swaps in another).
type Lanes<Q> = Arc<Vec<(Arc<Shared>, Arc<Q>)>>;

/// The ingest side's state.
struct App<Q> {
    /// Where events are stored (the first destination's handle of the queue).
    queue: Arc<Q>,
    /// The first destination's, which counts the ingest's requests.
    shared: Arc<Shared>,
    /// Whether the config names its destinations (`destinations:`): events are routed by name,
    /// and metrics, `/readyz` and logs say each destination's.
    named: bool,
    /// Every destination, in the order they were added, with its handle of the queue.
    destinations: RwLock<Lanes<Q>>,
    keys: RwLock<Arc<WriteKeys>>,
    body_timeout: Duration,
}

impl<Q> App<Q> {
    fn destinations(&self) -> Lanes<Q> {
        read(&self.destinations).clone()
    }

    fn keys(&self) -> Arc<WriteKeys> {
        read(&self.keys).clone()
    }

    fn add_destination(&self, shared: Arc<Shared>, lane: Arc<Q>) {
        let mut destinations = write(&self.destinations);
        let mut next = Vec::clone(&destinations);
        next.push((shared, lane));
        *destinations = Arc::new(next);
    }

    fn remove_destination(&self, name: &str) {
        let mut destinations = write(&self.destinations);
        let next = (destinations.iter())
            .filter(|(shared, _)| shared.destination != name)
            .cloned()
            .collect();
        *destinations = Arc::new(next);
    }

    /// Which write keys feed which destinations from now on; each name must be a destination's.
    fn set_write_keys(&self, keys: WriteKeys) -> Result<(), ServeError> {
        let destinations = self.destinations();
        if let Some(unknown) = keys
            .destinations()
            .find(|name| !destinations.iter().any(|(s, _)| s.destination == *name))
        {
            return Err(ServeError::UnknownDestination(unknown.to_owned()));
        }
        *write(&self.keys) = Arc::new(keys);
        Ok(())
    }

    /// The destinations of the events of write key `key`: those its source names, else every
    /// one (none named: the queue's own, on a server with one destination).
    fn route(&self, keys: &WriteKeys, key: Option<&str>) -> Vec<String> {
        if !self.named {
            return Vec::new();
        }
        match key.and_then(|k| keys.route(k)) {
            Some(named) if !named.is_empty() => named.to_vec(),
            _ => (self.destinations().iter())
                .map(|(shared, _)| shared.destination.clone())
                .collect(),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Closes the queue on shutdown.
type Closer = Box<dyn FnOnce() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A running server.
pub struct Server {
    addr: SocketAddr,
    close: Closer,
    stop: watch::Sender<bool>,
    http: tokio::task::JoinHandle<()>,
    admin: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    /// The first destination's delivery, which counts the ingest's requests too.
    first: Arc<Shared>,
    fleet: Arc<dyn Destinations>,
    emulator_url: Option<String>,
    shutdown_timeout: Duration,
}

impl Server {
    /// Opens the queue, starts listening and delivering to one destination. `destination` is
    /// the delivery set up for the config that `options.config` says where to load from (see
    /// [`crate::deliver::setup::connect`]).
    pub async fn start(
        options: ServeOptions,
        destination: Destination,
    ) -> Result<Server, ServeError> {
        let outlet = Outlet {
            name: crate::queue::DEFAULT_DESTINATION.to_owned(),
            config: options.config.clone(),
            workers: options.workers.clone(),
            destination,
        };
        Self::start_with(options, vec![outlet], false).await
    }

    /// Opens the queue, starts listening and delivering to each of the destinations the config
    /// names (at least one; `options.config` and `options.workers` are theirs to say). An event
    /// goes to the destinations its write key names ([`WriteKeys::add_source`]), else to every
    /// one; metrics, `/readyz`, logs and the delivery log name each destination.
    pub async fn start_outlets(
        options: ServeOptions,
        outlets: Vec<Outlet>,
    ) -> Result<Server, ServeError> {
        Self::start_with(options, outlets, true).await
    }

    async fn start_with(
        options: ServeOptions,
        outlets: Vec<Outlet>,
        named: bool,
    ) -> Result<Server, ServeError> {
        if options.write_keys.is_empty() && !options.listen.ip().is_loopback() {
            return Err(ServeError::NoWriteKey(options.listen));
        }
        let Some(first) = outlets.first() else {
            return Err(ServeError::NoDestination);
        };
        match &options.nats {
            Some(nats) => {
                let nats = NatsOptions {
                    dedupe_window: options.ingest.dedupe_window,
                    ..nats.clone()
                };
                let opened: Arc<std::sync::Mutex<Vec<Arc<NatsQueue>>>> = Arc::default();
                let lane_of: LaneOf<NatsQueue> = {
                    let (nats, opened) = (nats.clone(), opened.clone());
                    Box::new(move |name: String| {
                        let nats = nats.clone().for_destination(&name);
                        let opened = opened.clone();
                        Box::pin(async move {
                            let queue = Arc::new(NatsQueue::open(&nats).await?);
                            lock(&opened).push(queue.clone());
                            Ok(queue)
                        })
                    })
                };
                let ingest = lane_of(first.name.clone()).await?;
                let close: Closer = Box::new(move || {
                    Box::pin(async move {
                        let all = std::mem::take(&mut *lock(&opened));
                        for queue in all {
                            queue.close().await;
                        }
                    })
                });
                let place = format!("NATS {}", crate::queue::nats::shown_list(&nats.servers));
                let journal = match &options.journal {
                    Some(journal) => {
                        crate::queue::nats::journal::open(
                            ingest.layout(),
                            &options.data_dir,
                            journal.clone(),
                        )
                        .await?
                    }
                    None => None,
                };
                let start = Start {
                    ingest,
                    lane_of,
                    journal,
                    close,
                    place,
                    named,
                };
                start.run(options, outlets).await
            }
            None => {
                let queue = Arc::new(
                    SqliteQueue::open(&options.data_dir)?
                        .with_dedupe_window(options.ingest.dedupe_window),
                );
                warn_of_orphan_lanes(&queue, &outlets).await;
                let ingest = Arc::new(queue.lane(&first.name));
                let lanes = queue.clone();
                let lane_of: LaneOf<SqliteQueue> = Box::new(move |name: String| {
                    let lane = Arc::new(lanes.lane(&name));
                    Box::pin(async move { Ok(lane) })
                });
                let close: Closer = Box::new(move || {
                    Box::pin(async move {
                        let _ = tokio::task::spawn_blocking(move || queue.close()).await;
                    })
                });
                let journal = match &options.journal {
                    Some(journal) => Some(Journal::open(&options.data_dir, journal.clone())?),
                    None => None,
                };
                let start = Start {
                    ingest,
                    lane_of,
                    journal,
                    close,
                    place: options.data_dir.display().to_string(),
                    named,
                };
                start.run(options, outlets).await
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT` of the admin listener, when it runs.
    pub fn admin_url(&self) -> Option<String> {
        self.admin
            .as_ref()
            .map(|(addr, _)| format!("http://{addr}"))
    }

    /// What the first destination's delivery shares (the ingest's counters are there too).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.first
    }

    /// What each destination's delivery shares, in the order they were added.
    pub fn destinations(&self) -> Vec<Arc<Shared>> {
        self.fleet.shared()
    }

    /// Starts delivering to another destination; it receives the events accepted from now on
    /// (a reload that names a new destination).
    pub async fn add_destination(&self, outlet: Outlet) -> Result<(), ServeError> {
        self.fleet.add(outlet).await
    }

    /// Stops delivering to the destination `name` (a reload that no longer names it): its
    /// workers put down their events, and what waits for it, and its dead letters, stay.
    pub async fn remove_destination(&self, name: &str) -> Result<(), ServeError> {
        self.fleet.remove(name, self.shutdown_timeout).await
    }

    /// Which write keys feed which destinations, from now on.
    pub fn set_write_keys(&self, keys: WriteKeys) -> Result<(), ServeError> {
        self.fleet.set_write_keys(keys)
    }

    /// The URL of the built-in emulator the first destination delivers to, when it does.
    pub fn emulator_url(&self) -> Option<&str> {
        self.emulator_url.as_deref()
    }

    /// Stops taking requests (those in progress are answered), lets the workers put down their
    /// current event (up to the shutdown timeout; what is not settled stays queued) and flushes
    /// the queue.
    pub async fn shutdown(self) {
        tracing::info!("shutting down: no new events; finishing the ones being sent");
        let _ = self.stop.send(true);
        if let Err(e) = self.http.await {
            tracing::error!(error = %e, "the HTTP server stopped with an error");
        }
        if let Some((_, admin)) = self.admin
            && let Err(e) = admin.await
        {
            tracing::error!(error = %e, "the admin listener stopped with an error");
        }
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let emulators = self.fleet.stop_all(deadline).await;
        (self.close)().await;
        if let Some(journal) = self.first.journal.clone() {
            let _ = tokio::task::spawn_blocking(move || journal.close()).await;
        }
        for emulator in emulators {
            emulator.shutdown().await;
        }
        tracing::info!("stopped");
    }
}

/// A queue opened, ready for the server to start on.
struct Start<Q> {
    /// The first destination's handle, which the ingest stores through.
    ingest: Arc<Q>,
    lane_of: LaneOf<Q>,
    journal: Option<Arc<Journal>>,
    close: Closer,
    /// Where the queue is, for the start line.
    place: String,
    named: bool,
}

impl<Q: Queue> Start<Q> {
    async fn run(self, options: ServeOptions, outlets: Vec<Outlet>) -> Result<Server, ServeError> {
        let cors = cors(&options.ingest.cors_origins)?;
        let mut outlets = outlets.into_iter();
        let Some(first) = outlets.next() else {
            return Err(ServeError::NoDestination);
        };
        let emulator_url = first.destination.emulator.as_ref().map(|e| e.url());
        let first_shared = Arc::new(Shared::new(
            &first,
            self.ingest.clone(),
            self.journal.clone(),
            options.log_events,
            self.named,
        ));
        let app = Arc::new(App {
            queue: self.ingest.clone(),
            shared: first_shared.clone(),
            named: self.named,
            destinations: RwLock::new(Arc::new(Vec::new())),
            keys: RwLock::new(Arc::new(WriteKeys::default())),
            body_timeout: options.ingest.body_timeout,
        });
        let fleet = Arc::new(Fleet::new(
            app.clone(),
            self.lane_of,
            self.journal.clone(),
            options.log_events,
            options.watch,
            options.nats.is_some(),
        ));
        let mut described = vec![
            fleet
                .launch_with(first, first_shared.clone(), self.ingest)
                .await?,
        ];
        for outlet in outlets {
            described.push(fleet.launch(outlet).await?);
        }
        app.set_write_keys(options.write_keys.clone())?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: options.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: options.listen,
            source,
        })?;
        let (stop, stopped) = watch::channel(false);
        let http = tokio::spawn(connections::serve(
            listener,
            router(
                app.clone(),
                cors,
                guard::Guard::new(
                    options.listen,
                    &options.ingest.cors_origins,
                    &options.ingest.allowed_hosts,
                ),
            ),
            options.ingest.connections,
            first_shared.clone(),
            stopped.clone(),
        ));
        let admin = match &options.admin {
            Some(admin) => {
                let each = if app.named {
                    (app.destinations().iter())
                        .map(|(shared, lane)| (shared.clone(), lane.clone()))
                        .collect()
                } else {
                    Vec::new()
                };
                start_admin(
                    admin,
                    app.queue.clone(),
                    first_shared.clone(),
                    each,
                    stopped,
                )
                .await?
            }
            None => None,
        };
        if let [one] = described.as_slice() {
            tracing::info!(
                listen = %addr,
                zendesk = %one.zendesk,
                queue = %self.place,
                budget = %one.budget,
                queued = one.queued,
                max_connections = options.ingest.connections.max_connections,
                "zdmap serve started"
            );
        } else {
            for d in &described {
                tracing::info!(
                    destination = %d.name,
                    zendesk = %d.zendesk,
                    budget = %d.budget,
                    queued = d.queued,
                    "delivering"
                );
            }
            tracing::info!(
                listen = %addr,
                queue = %self.place,
                destinations = described.len(),
                max_connections = options.ingest.connections.max_connections,
                "zdmap serve started"
            );
        }
        Ok(Server {
            addr,
            close: self.close,
            stop,
            http,
            admin,
            first: first_shared,
            fleet,
            emulator_url,
            shutdown_timeout: options.shutdown_timeout,
        })
    }
}

/// Says at start which destinations that the config no longer names have events waiting
/// (kept, and delivered if the destination comes back).
async fn warn_of_orphan_lanes(queue: &SqliteQueue, outlets: &[Outlet]) {
    match queue.lanes().await {
        Ok(lanes) => {
            for (name, waiting) in lanes {
                if !outlets.iter().any(|o| o.name == name) {
                    tracing::warn!(
                        destination = %name,
                        waiting,
                        "events wait for a destination the config does not name; they are kept, and delivered if it is named again"
                    );
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read which destinations have events waiting"),
    }
}

/// Where events go, as the start line says it: the Zendesk URL (without any `user:password@`),
/// or the built-in emulator.
fn shown_target(target: &crate::deliver::Target, emulator: bool) -> String {
    let mut url = target.base_url().clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if emulator {
        format!("the built-in emulator at {url}")
    } else {
        url.to_string()
    }
}

/// Segment's single-call endpoints (`/v1/identify`), each with analytics.js' short form (`/v1/i`).
const SINGLE_CALLS: [(&str, &str); 6] = [
    ("identify", "i"),
    ("track", "t"),
    ("group", "g"),
    ("page", "p"),
    ("screen", "s"),
    ("alias", "a"),
];

/// Most refused calls of one request kept as dead letters; a request with more is refused
/// whole, so that a flood of invalid calls costs a few lines, not one of each per call.
const MAX_REFUSED_KEPT: usize = 100;

/// Refused calls an answer lists; the rest are counted.
const REFUSALS_SHOWN: usize = 10;

/// The batch endpoints: Segment's, and analytics.js' short form.
const BATCH_PATHS: [&str; 3] = ["/v1/batch", "/v1/import", "/v1/b"];

/// Stores accepted events, and the dead letters of calls refused at ingest, in the queue. The
/// delivery log records them first, so that an event's acceptance comes before anything its
/// delivery records, however soon it starts; events the queue could not store end there
/// `refused` (`not_stored`).
pub(crate) async fn store<Q: Queue>(
    queue: &Q,
    shared: &Shared,
    accepted: Vec<crate::queue::NewItem>,
    refused: &[Refused],
    source: &str,
) -> Result<crate::queue::Pushed, crate::queue::QueueError> {
    let journal = shared.journal.as_deref();
    let recorded: Vec<String> = match journal {
        Some(journal) => {
            for r in refused {
                let call = Value::Object(r.call.clone());
                let facts = Facts::of(&call, json_size(&call), source);
                journal.refused(facts, r.reason.label(), &r.located());
            }
            let facts: Vec<Facts> = accepted
                .iter()
                .map(|item| Facts::of(&item.event, json_size(&item.event), source))
                .collect();
            let ids = facts.iter().map(|f| f.message_id.clone()).collect();
            journal.accepted(facts);
            ids
        }
        None => Vec::new(),
    };
    let letters = refused.iter().map(Refused::dead_letter).collect();
    let pushed = queue.push(accepted, letters).await;
    if let (Err(e), Some(journal)) = (&pushed, journal) {
        for id in &recorded {
            journal.note(
                id,
                Entry::Refused {
                    reason: "not_stored".to_owned(),
                    message: format!(
                        "the queue could not store it ({e}); the sender was asked to send it again"
                    ),
                },
            );
        }
    }
    pushed
}

/// Binds and serves the admin listener until `stopped`; `None` when its default address is
/// taken (the server runs without it, and says so).
async fn start_admin<Q: Queue>(
    options: &admin::AdminOptions,
    queue: Arc<Q>,
    shared: Arc<Shared>,
    destinations: Vec<(Arc<Shared>, Arc<Q>)>,
    mut stopped: watch::Receiver<bool>,
) -> Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>, ServeError> {
    let listen = options.listen;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(source) if !options.required => {
            tracing::warn!(
                admin_listen = %listen,
                error = %source,
                "the admin listener's default address is taken; running without it (choose one with --admin-listen)"
            );
            return Ok(None);
        }
        Err(source) => {
            return Err(ServeError::Listen {
                addr: listen,
                source,
            });
        }
    };
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: listen,
        source,
    })?;
    let each: Vec<(String, Arc<admin::AdminState<Q>>)> = (destinations.into_iter())
        .map(|(shared, lane)| {
            let name = shared.destination.clone();
            let state = admin::AdminState::new(lane, shared, options.token.clone());
            (name, Arc::new(state))
        })
        .collect();
    let state = Arc::new(
        admin::AdminState::new(queue, shared, options.token.clone())
            .with_destinations(each.clone()),
    );
    let router = admin::router(
        state.clone(),
        each,
        admin::guard(listen, &options.allowed_hosts),
    );
    let mut sampling = stopped.clone();
    tokio::spawn(async move {
        // The console's charts: the counters a minute at a time.
        loop {
            state.sample();
            tokio::select! {
                _ = tokio::time::sleep(admin::console::SAMPLE_EVERY) => {}
                _ = sampling.wait_for(|stop| *stop) => return,
            }
        }
    });
    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "the admin listener failed");
        }
    });
    Ok(Some((addr, task)))
}

fn router<Q: Queue>(
    app: Arc<App<Q>>,
    cors: Option<CorsLayer>,
    guard: Option<guard::Guard>,
) -> Router {
    let singles = SINGLE_CALLS.into_iter().flat_map(|(kind, short)| {
        [kind, short].map(|path| (format!("/v1/{path}"), Endpoint::Single(kind)))
    });
    let batches = BATCH_PATHS.map(|path| (path.to_owned(), Endpoint::Batch));
    let mut router = Router::new();
    for (path, endpoint) in singles.chain(batches) {
        router = router.route(
            &path,
            post(
                move |state: State<Arc<App<Q>>>, headers: HeaderMap, body: Body| {
                    accept(state, endpoint, headers, body)
                },
            ),
        );
    }
    let router = router
        .route("/healthz", get(healthz::<Q>))
        .route("/readyz", get(readyz::<Q>))
        .route("/metrics", get(metrics_text::<Q>))
        .with_state(app);
    let router = match guard {
        Some(guard) => {
            let guard = Arc::new(guard);
            router.layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let refusal = guard.refusal(request.headers());
                    async move {
                        match refusal {
                            Some(why) => answer(StatusCode::FORBIDDEN, Some(why)),
                            None => next.run(request).await,
                        }
                    }
                },
            ))
        }
        None => router,
    };
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for the configured origins, so a web page can post straight to zdmap.
fn cors(origins: &[String]) -> Result<Option<CorsLayer>, ServeError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                let origin = o.trim_end_matches('/');
                let (scheme, host) = origin.split_once("://").unwrap_or_default();
                let valid =
                    matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/');
                valid
                    .then(|| HeaderValue::from_str(origin).ok())
                    .flatten()
                    .ok_or_else(|| ServeError::CorsOrigin(o.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::CONTENT_ENCODING,
            ])
            .max_age(Duration::from_secs(24 * 3600)),
    ))
}

fn answer(status: StatusCode, message: Option<String>) -> Response {
    let body = match message {
        None => json!({ "success": true }),
        Some(m) => json!({ "success": false, "message": m }),
    };
    (status, axum::Json(body)).into_response()
}

/// One ingest request, timed.
async fn accept<Q: Queue>(
    State(app): State<Arc<App<Q>>>,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = take(&app, endpoint, &headers, body).await;
    app.shared.metrics.ingest_latency.observe(started.elapsed());
    response
}

/// Key, body, calls, store; 200 only once stored. A key in the `Authorization` header is checked
/// before the body is read, so a wrong one costs no upload (and gets no `100 Continue`).
async fn take<Q: Queue>(
    app: &App<Q>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let metrics = &app.shared.metrics;
    let bad_request = |status: StatusCode, message: String| {
        Metrics::add(&metrics.rejected_bad_request, 1);
        answer(status, Some(message))
    };
    let unauthorized = || {
        Metrics::add(&metrics.rejected_unauthorized, 1);
        answer(
            StatusCode::UNAUTHORIZED,
            Some(
                "invalid or missing write key: send one of this server's write keys \
                 (--write-key, ZDMAP_WRITE_KEYS) as the HTTP Basic user, or as writeKey in the body"
                    .into(),
            ),
        )
    };
    let header_key = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(ingest::basic_user);
    let keys = app.keys();
    let keyed = !keys.is_empty();
    if keyed && header_key.as_ref().is_some_and(|k| !keys.allows(k)) {
        return unauthorized();
    }
    let limits = BodyLimits {
        max_bytes: endpoint.body_limit(),
        what: endpoint.limit_text(),
        timeout: app.body_timeout,
    };
    let bytes = match body::read(body, headers, limits).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let status = match e {
                BodyError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
                _ => StatusCode::BAD_REQUEST,
            };
            return bad_request(status, e.to_string());
        }
    };
    let key = match header_key {
        Some(key) => Some(key),
        None => ingest::body_write_key(&bytes),
    };
    if keyed && !key.as_deref().is_some_and(|k| keys.allows(k)) {
        return unauthorized();
    }
    let mut calls = match ingest::events(endpoint, &bytes, &rfc3339_utc(SystemTime::now())) {
        Ok(calls) => calls,
        Err(e) => return bad_request(StatusCode::BAD_REQUEST, e.0),
    };
    // A sender's messageId names a call among that sender's calls only.
    let source = keys.source_of(key.as_deref());
    let destinations = app.route(&keys, key.as_deref());
    for item in &mut calls.accepted {
        if let Some(id) = item.message_id.take() {
            item.message_id = Some(format!("{source}/{id}"));
        }
        item.destinations.clone_from(&destinations);
    }
    for r in &calls.refused {
        Metrics::add(&metrics.events_refused[r.reason as usize], 1);
    }
    if calls.refused.len() > MAX_REFUSED_KEPT {
        // A flood of bad calls is answered in a few lines, and nothing of it is kept.
        let total = calls.refused.len() + calls.accepted.len();
        tracing::warn!(
            refused = calls.refused.len(),
            total,
            first = %calls.refused[0].located(),
            "a request with too many invalid calls was refused whole"
        );
        let first: Vec<String> = calls
            .refused
            .iter()
            .take(REFUSALS_SHOWN)
            .map(Refused::located)
            .collect();
        return bad_request(
            StatusCode::BAD_REQUEST,
            format!(
                "{} of {total} calls are invalid (more than {MAX_REFUSED_KEPT}); nothing was stored. The first {}: {}",
                calls.refused.len(),
                first.len(),
                first.join("; ")
            ),
        );
    }
    if let Some(first) = calls.refused.first() {
        // One line a request, however many of its calls were refused.
        tracing::warn!(
            refused = calls.refused.len(),
            reason = first.reason.label(),
            first = %first.located(),
            "calls were refused at ingest and kept in the dead letters"
        );
    }
    let offered = calls.accepted.len() as u64;
    match store(
        &*app.queue,
        &app.shared,
        calls.accepted,
        &calls.refused,
        &source,
    )
    .await
    {
        Ok(pushed) => {
            app.shared.health.set_queue(None);
            Metrics::add(&metrics.accepted, offered - pushed.duplicates);
            Metrics::add(&metrics.duplicates, pushed.duplicates);
            if offered == 0 && !calls.refused.is_empty() {
                Metrics::add(&metrics.rejected_bad_request, 1);
            }
            with_refusals(&calls.refused, offered > 0)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store events; the sender is asked to send them again");
            app.shared.health.set_queue(Some(e.to_string()));
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("the events could not be stored; send them again".into()),
            )
        }
    }
}

/// Bytes of `value` as JSON, counted without writing it out.
pub(crate) fn json_size(value: &Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The answer to a request whose calls were stored: 200, listing the refused calls if any; 400
/// when none was valid.
fn with_refusals(refused: &[Refused], any_accepted: bool) -> Response {
    if refused.is_empty() {
        return answer(StatusCode::OK, None);
    }
    let listed: Vec<_> = refused
        .iter()
        .take(REFUSALS_SHOWN)
        .map(|r| json!({"index": r.index, "reason": r.reason.label(), "message": r.message}))
        .collect();
    let (status, body) = if any_accepted {
        (
            StatusCode::OK,
            json!({"success": true, "refused": listed, "refused_count": refused.len()}),
        )
    } else {
        let message: Vec<String> = refused
            .iter()
            .take(REFUSALS_SHOWN)
            .map(Refused::located)
            .collect();
        let body = json!({"success": false, "message": message.join("; "), "refused": listed, "refused_count": refused.len()});
        (StatusCode::BAD_REQUEST, body)
    };
    (status, axum::Json(body)).into_response()
}

/// The process is up; what is wrong without making it unready (a broken reload) is in the
/// details.
async fn healthz<Q: Queue>(State(app): State<Arc<App<Q>>>) -> Response {
    // The same state as /readyz, so the two never disagree on `ready`.
    let state = health(&app.shared, &*app.queue);
    let ready = ready(&app);
    axum::Json(json!({ "status": "ok", "ready": ready, "problems": state })).into_response()
}

/// A destination's health with its queue's own word on writes.
fn health<Q: Queue>(shared: &Shared, queue: &Q) -> metrics::HealthState {
    let mut state = shared.health.state();
    state.queue_write = queue.write_problem();
    state
}

/// Whether the server is ready. With one destination, as its health says. With named ones, while
/// the queue takes and gives events: one destination refusing its credentials must not take
/// the others' events out of a load balancer (each destination says its own readiness).
fn ready<Q: Queue>(app: &App<Q>) -> bool {
    if !app.named {
        return health(&app.shared, &*app.queue).ready();
    }
    app.destinations().iter().all(|(shared, queue)| {
        let state = health(shared, &**queue);
        state.queue.is_none() && state.queue_write.is_none()
    })
}

async fn readyz<Q: Queue>(State(app): State<Arc<App<Q>>>) -> Response {
    let ready = ready(&app);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "ready": ready,
        "problems": health(&app.shared, &*app.queue),
        "delivery": app.shared.metrics.delivery(),
        "queue": app.queue.describe(),
    });
    if app.named {
        let destinations: serde_json::Map<String, Value> = (app.destinations().iter())
            .map(|(shared, queue)| {
                let state = health(shared, &**queue);
                let entry = json!({
                    "ready": state.ready(),
                    "problems": state,
                    "delivery": shared.metrics.delivery(),
                    "queue": queue.describe(),
                });
                (shared.destination.clone(), entry)
            })
            .collect();
        body["destinations"] = Value::Object(destinations);
    }
    (status, axum::Json(body)).into_response()
}

/// One destination's metrics: its delivery, its credentials, its queue.
async fn destination_metrics<Q: Queue>(shared: &Shared, queue: &Q, ready: bool) -> String {
    let depth = queue.depth().await.ok();
    let mut text = metrics::render(&shared.metrics, &shared.stats, depth, ready);
    let executor = shared.executor();
    metrics::render_oauth(
        &mut text,
        executor.transport().client().authorizer().stats(),
    );
    text.push_str(&queue.metrics_text(depth));
    text
}

async fn metrics_text<Q: Queue>(State(app): State<Arc<App<Q>>>) -> Response {
    let ready = ready(&app);
    let mut text = if !app.named {
        destination_metrics(&app.shared, &*app.queue, ready).await
    } else {
        let destinations = app.destinations();
        let mut texts = Vec::with_capacity(destinations.len());
        for (shared, queue) in destinations.iter() {
            let text = destination_metrics(shared, &**queue, ready).await;
            texts.push((shared.destination.as_str(), text));
        }
        metrics::by_destination(&texts)
    };
    if let Some(journal) = &app.shared.journal {
        metrics::render_journal(&mut text, journal);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_takes_origins_and_refuses_what_is_not_one() {
        assert!(cors(&[]).expect("none").is_none());
        assert!(cors(&["*".into()]).expect("any").is_some());
        let origins = [
            "https://shop.example.com/".into(),
            "http://localhost:3000".into(),
        ];
        assert!(cors(&origins).expect("origins").is_some());
        for bad in [
            "shop.example.com",
            "https://shop.example.com/page",
            "ftp://x",
            "https://",
        ] {
            let err = cors(&[bad.to_owned()]).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
