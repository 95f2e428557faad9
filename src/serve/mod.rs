//! `zdmap serve`: the long-running service. CDPs and apps post events to a Segment-compatible
//! ingest API; each accepted event is stored durably before the answer, then delivered to
//! Zendesk by workers reading the queue.
//!
//! - [`ingest`]: what a request may carry and how it becomes queued events.
//! - [`workers`]: delivery from the queue, in order per user, until each event is settled.
//! - [`metrics`]: `/metrics` (Prometheus text) and the readiness behind `/readyz`.
//! - [`reload`]: swapping in a changed config (SIGHUP, or a file of the mappings changing).
//!
//! [`Server::start`] wires them over a [`SqliteQueue`] in the data directory; [`Server::shutdown`]
//! stops taking requests, lets workers put down their current event and flushes the queue.

pub mod ingest;
pub mod metrics;
pub mod reload;
pub mod workers;

use crate::config::{ConfigArgs, Diagnostics};
use crate::deliver::setup::Destination;
use crate::deliver::{Executor, Stats};
use crate::queue::{Queue, SqliteQueue};
use crate::time::rfc3339_utc;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ingest::{Endpoint, WriteKeys};
use metrics::{Health, Metrics};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
pub use workers::WorkerOptions;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Where the queue and the dead letters are kept.
    pub data_dir: PathBuf,
    pub write_keys: WriteKeys,
    pub workers: WorkerOptions,
    /// Where the config was loaded from, to load it again on reload.
    pub config: ConfigArgs,
    /// Reload when a file of the mappings directory changes (SIGHUP reloads in any case).
    pub watch: bool,
    /// Put whole events in the logs of dead letters (off: they may hold personal data).
    pub log_events: bool,
    /// How long shutdown waits for workers to put down their current event.
    pub shutdown_timeout: Duration,
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
}

/// What every part of the server shares: the current executor (swapped on reload), health,
/// counters.
pub struct Shared {
    executor: RwLock<Arc<Executor>>,
    pub health: Health,
    pub metrics: Metrics,
    pub stats: Arc<Stats>,
    pub log_events: bool,
    config: ConfigArgs,
    reloading: std::sync::Mutex<()>,
}

impl Shared {
    /// The executor of the current config.
    pub fn executor(&self) -> Arc<Executor> {
        self.executor
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Loads the mappings again; a valid config replaces the running one, a broken one is
    /// refused (the running one stays) and reported by `/readyz` until a good one loads.
    pub fn reload(&self) -> Result<(), Diagnostics> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.config.load() {
            Ok(config) => {
                let actions = config.actions.len();
                let next = Arc::new(self.executor().with_config(Arc::new(config)));
                *self
                    .executor
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
                self.health.set_config(None);
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(actions, "mappings reloaded");
                Ok(())
            }
            Err(diags) => {
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                self.health.set_config(Some(format!(
                    "the mappings do not load; the last good config keeps running:\n{diags}"
                )));
                tracing::error!(
                    problems = %diags,
                    "the changed mappings are not valid; the last good config keeps running"
                );
                Err(diags)
            }
        }
    }
}

/// The ingest side's state.
struct App<Q> {
    queue: Arc<Q>,
    shared: Arc<Shared>,
    keys: WriteKeys,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    queue: Arc<SqliteQueue>,
    stop: watch::Sender<bool>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    workers: tokio::task::JoinHandle<()>,
    _watcher: Option<reload::Watcher>,
    destination: Destination,
    shutdown_timeout: Duration,
}

impl Server {
    /// Opens the queue, starts listening and delivering. `destination` is the delivery set up
    /// for the config that `options.config` says where to load from (see
    /// [`crate::deliver::setup::connect`]).
    pub async fn start(
        options: ServeOptions,
        destination: Destination,
    ) -> Result<Server, ServeError> {
        if options.write_keys.is_empty() && !options.listen.ip().is_loopback() {
            return Err(ServeError::NoWriteKey(options.listen));
        }
        let queue = Arc::new(SqliteQueue::open(&options.data_dir)?);
        let shared = Arc::new(Shared {
            executor: RwLock::new(destination.executor.clone()),
            health: Health::default(),
            metrics: Metrics::default(),
            stats: destination.stats.clone(),
            log_events: options.log_events,
            config: options.config.clone(),
            reloading: std::sync::Mutex::new(()),
        });
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
        let app = Arc::new(App {
            queue: queue.clone(),
            shared: shared.clone(),
            keys: options.write_keys.clone(),
        });
        let mut http_stop = stopped.clone();
        let http = tokio::spawn(async move {
            axum::serve(listener, router(app))
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                })
                .await
        });
        let workers = tokio::spawn(workers::run(
            queue.clone(),
            shared.clone(),
            options.workers.clone(),
            stopped,
        ));
        let watcher = if options.watch {
            match reload::watch(&options.config.mappings, shared.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the mappings directory; reload with SIGHUP");
                    None
                }
            }
        } else {
            None
        };
        let depth = queue.depth().await.unwrap_or(0);
        tracing::info!(
            listen = %addr,
            data_dir = %options.data_dir.display(),
            queued = depth,
            "zdmap serve started"
        );
        Ok(Server {
            addr,
            shared,
            queue,
            stop,
            http,
            workers,
            _watcher: watcher,
            destination,
            shutdown_timeout: options.shutdown_timeout,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The built-in emulator, when delivering to it.
    pub fn emulator(&self) -> Option<&crate::emulator::Emulator> {
        self.destination.emulator.as_ref()
    }

    /// Stops taking requests (those in progress are answered), lets the workers put down their
    /// current event (up to the shutdown timeout; what is not settled stays queued) and flushes
    /// the queue.
    pub async fn shutdown(self) {
        tracing::info!("shutting down: no new events; finishing the ones being sent");
        let _ = self.stop.send(true);
        if let Ok(Err(e)) = self.http.await {
            tracing::error!(error = %e, "the HTTP server stopped with an error");
        }
        let mut workers = self.workers;
        if tokio::time::timeout(self.shutdown_timeout, &mut workers)
            .await
            .is_err()
        {
            tracing::warn!(
                "workers did not stop in time; their events stay queued for the next start"
            );
            workers.abort();
            let _ = workers.await;
        }
        let queue = self.queue;
        let _ = tokio::task::spawn_blocking(move || queue.close()).await;
        if let Some(emulator) = self.destination.emulator {
            emulator.shutdown().await;
        }
        tracing::info!("stopped");
    }
}

fn router<Q: Queue>(app: Arc<App<Q>>) -> Router {
    let single = |kind: &'static str| {
        post(
            move |state: State<Arc<App<Q>>>, headers: HeaderMap, body: Body| {
                accept(state, Endpoint::Single(kind), headers, body)
            },
        )
    };
    let batch = || {
        post(
            |state: State<Arc<App<Q>>>, headers: HeaderMap, body: Body| {
                accept(state, Endpoint::Batch, headers, body)
            },
        )
    };
    Router::new()
        .route("/v1/identify", single("identify"))
        .route("/v1/track", single("track"))
        .route("/v1/group", single("group"))
        .route("/v1/page", single("page"))
        .route("/v1/screen", single("screen"))
        .route("/v1/alias", single("alias"))
        .route("/v1/batch", batch())
        .route("/v1/import", batch())
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<Q>))
        .route("/metrics", get(metrics_text::<Q>))
        .with_state(app)
}

fn answer(status: StatusCode, message: Option<String>) -> Response {
    let body = match message {
        None => json!({ "success": true }),
        Some(m) => json!({ "success": false, "message": m }),
    };
    (status, axum::Json(body)).into_response()
}

/// One ingest request: key, limits, parse, store; 200 only once stored.
async fn accept<Q: Queue>(
    State(app): State<Arc<App<Q>>>,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let metrics = &app.shared.metrics;
    let response = async {
        let limit = endpoint.body_limit();
        let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
            metrics.rejected_bad_request.fetch_add(1, Ordering::Relaxed);
            let what = match endpoint {
                Endpoint::Single(_) => "32 KB per event",
                Endpoint::Batch => "500 KB per batch",
            };
            return answer(
                StatusCode::BAD_REQUEST,
                Some(format!("the request body is larger than the limit of {what}")),
            );
        };
        if !app.keys.is_empty() {
            let auth = headers
                .get(header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok());
            let key = ingest::write_key(auth, &bytes);
            if !key.is_some_and(|k| app.keys.allows(&k)) {
                metrics.rejected_unauthorized.fetch_add(1, Ordering::Relaxed);
                return answer(
                    StatusCode::UNAUTHORIZED,
                    Some("invalid or missing write key (send it as the HTTP Basic user)".into()),
                );
            }
        }
        let items = match ingest::events(endpoint, &bytes, &rfc3339_utc(SystemTime::now())) {
            Ok(items) => items,
            Err(e) => {
                metrics.rejected_bad_request.fetch_add(1, Ordering::Relaxed);
                return answer(StatusCode::BAD_REQUEST, Some(e.0));
            }
        };
        let n = items.len() as u64;
        match app.queue.push(items).await {
            Ok(()) => {
                app.shared.health.set_queue(None);
                metrics.accepted.fetch_add(n, Ordering::Relaxed);
                answer(StatusCode::OK, None)
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
    .await;
    metrics.ingest_latency.observe(started.elapsed());
    response
}

/// The server's health with the queue's own word on writes.
fn health<Q: Queue>(app: &App<Q>) -> metrics::HealthState {
    let mut state = app.shared.health.state();
    state.queue_write = app.queue.write_problem();
    state
}

async fn readyz<Q: Queue>(State(app): State<Arc<App<Q>>>) -> Response {
    let state = health(&app);
    let status = if state.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({ "ready": state.ready(), "problems": state })),
    )
        .into_response()
}

async fn metrics_text<Q: Queue>(State(app): State<Arc<App<Q>>>) -> Response {
    let depth = app.queue.depth().await.ok();
    let ready = health(&app).ready();
    let text = metrics::render(&app.shared.metrics, &app.shared.stats, depth, ready);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
