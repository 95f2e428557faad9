//! The destinations a server delivers to, and changing them while it runs.
//!
//! Each destination ([`Outlet`]) is one Zendesk account: its own workers read its own handle of
//! the queue (its lane: the events routed to it), with its own executor, request budget,
//! retries, counters and health ([`Shared`]), so that one account down, paused or slow does not
//! hold up another. A reload may add a destination (it gets the events accepted from then on),
//! remove one (its workers stop; the events still waiting for it and its dead letters stay in
//! the queue, delivered if it is named again) or change which write keys feed which.

use super::{App, Shared, reload, shown_target, workers};
use crate::deliver::setup::Destination;
use crate::mapping::config::Source;
use crate::queue::Queue;
use crate::queue::journal::Journal;
use crate::serve::ServeError;
use crate::serve::ingest::WriteKeys;
use crate::serve::workers::WorkerOptions;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;

/// One destination of a server: a Zendesk account, with the config it delivers with and how
/// its workers run. Each delivers every event routed to it on its own: its own progress in the
/// queue, request budget, retries, dead letters and order per user.
pub struct Outlet {
    /// Its name ([`crate::queue::DEFAULT_DESTINATION`] for a server with one).
    pub name: String,
    /// Where its config loads from, to load it again on reload.
    pub config: Source,
    pub workers: WorkerOptions,
    /// Its delivery, set up for that config (see [`crate::deliver::setup::connect`]).
    pub destination: Destination,
}

/// A boxed future, for what the server asks of its fleet whatever its queue.
pub(super) type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens a destination's handle of the queue, by name.
pub(super) type LaneOf<Q> =
    Box<dyn Fn(String) -> Pending<'static, Result<Arc<Q>, ServeError>> + Send + Sync>;

/// A destination being delivered to.
struct Running<Q> {
    shared: Arc<Shared>,
    lane: Arc<Q>,
    /// Turns true to stop its workers (shutdown, or removed by a reload).
    stop: watch::Sender<bool>,
    workers: tokio::task::JoinHandle<()>,
    _watcher: Option<reload::Watcher>,
    destination: Destination,
}

/// A destination as the start lines say it.
pub(super) struct Described {
    pub(super) name: String,
    pub(super) zendesk: String,
    pub(super) budget: String,
    pub(super) queued: u64,
}

impl Described {
    async fn of<Q: Queue>(outlet: &Outlet, lane: &Q, shared_budget: bool) -> Described {
        let transport = outlet.destination.executor.transport();
        let shared = if shared_budget {
            ", shared by the replicas"
        } else {
            ""
        };
        Described {
            name: outlet.name.clone(),
            zendesk: shown_target(
                transport.client().target(),
                outlet.destination.emulator.is_some(),
            ),
            budget: match transport.budget().requests_per_minute() {
                Some(rpm) => format!("{rpm} requests a minute{shared}"),
                None => "none".to_owned(),
            },
            queued: lane.depth().await.unwrap_or(0),
        }
    }
}

/// The destinations of a server over the queue `Q`.
pub(super) struct Fleet<Q> {
    pub(super) app: Arc<App<Q>>,
    pub(super) lane_of: LaneOf<Q>,
    pub(super) journal: Option<Arc<Journal>>,
    pub(super) log_events: bool,
    /// Reload a destination when a file of its mappings changes.
    pub(super) watch: bool,
    /// The request budgets are shared by replicas (NATS), as the start lines say.
    pub(super) shared_budget: bool,
    running: tokio::sync::Mutex<Vec<Running<Q>>>,
}

impl<Q: Queue> Fleet<Q> {
    pub(super) fn new(
        app: Arc<App<Q>>,
        lane_of: LaneOf<Q>,
        journal: Option<Arc<Journal>>,
        log_events: bool,
        watch: bool,
        shared_budget: bool,
    ) -> Fleet<Q> {
        Fleet {
            app,
            lane_of,
            journal,
            log_events,
            watch,
            shared_budget,
            running: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Starts delivering to `outlet` over its lane: from then on the ingest routes events to it.
    pub(super) async fn launch(&self, outlet: Outlet) -> Result<Described, ServeError> {
        let lane = (self.lane_of)(outlet.name.clone()).await?;
        let shared = Arc::new(Shared::new(
            &outlet,
            lane.clone(),
            self.journal.clone(),
            self.log_events,
            self.app.named,
        ));
        self.launch_with(outlet, shared, lane).await
    }

    /// Starts delivering to `outlet` over `lane`, with `shared` made for it.
    pub(super) async fn launch_with(
        &self,
        outlet: Outlet,
        shared: Arc<Shared>,
        lane: Arc<Q>,
    ) -> Result<Described, ServeError> {
        let mut running = self.running.lock().await;
        if running.iter().any(|r| r.shared.destination == outlet.name) {
            return Err(ServeError::DuplicateDestination(outlet.name));
        }
        lane.share_budget(outlet.destination.executor.transport().budget());
        let described = Described::of(&outlet, &*lane, self.shared_budget).await;
        let (stop, stopped) = watch::channel(false);
        let span = if self.app.named {
            tracing::info_span!("destination", name = %outlet.name)
        } else {
            tracing::Span::none()
        };
        let workers = tokio::spawn(tracing::Instrument::instrument(
            workers::run(
                lane.clone(),
                shared.clone(),
                outlet.workers.clone(),
                stopped,
            ),
            span,
        ));
        let watcher = if self.watch {
            match reload::watch(&outlet.config.mappings, shared.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the mappings directory; reload with SIGHUP");
                    None
                }
            }
        } else {
            None
        };
        self.app.add_destination(shared.clone(), lane.clone());
        running.push(Running {
            shared,
            lane,
            stop,
            workers,
            _watcher: watcher,
            destination: outlet.destination,
        });
        Ok(described)
    }

    /// Stops delivering to the destination `name`: the ingest routes nothing more to it, its
    /// workers put down their events (up to `drain`), and what waits for it stays queued.
    pub(super) async fn remove(
        &self,
        name: &str,
        drain: std::time::Duration,
    ) -> Result<(), ServeError> {
        let removed = {
            let mut running = self.running.lock().await;
            let Some(at) = running.iter().position(|r| r.shared.destination == name) else {
                return Err(ServeError::UnknownDestination(name.to_owned()));
            };
            if running.len() == 1 {
                return Err(ServeError::NoDestination);
            }
            self.app.remove_destination(name);
            running.remove(at)
        };
        let deadline = tokio::time::Instant::now() + drain;
        let lane = removed.lane.clone();
        if let Some(emulator) = stop(removed, deadline).await {
            emulator.shutdown().await;
        }
        // The ingest stores through the first destination's handle: that one stays open.
        if !Arc::ptr_eq(&lane, &self.app.queue) {
            lane.retire().await;
        }
        Ok(())
    }

    /// Stops every destination's workers, waiting for them until `deadline`; gives the
    /// emulators they delivered to, to shut down once the queue is closed.
    pub(super) async fn stop_all(
        &self,
        deadline: tokio::time::Instant,
    ) -> Vec<crate::emulator::Emulator> {
        let all = std::mem::take(&mut *self.running.lock().await);
        for running in &all {
            let _ = running.stop.send(true);
        }
        let mut emulators = Vec::new();
        for running in all {
            emulators.extend(stop(running, deadline).await);
        }
        emulators
    }
}

/// Stops a destination's workers, waiting for them until `deadline`; gives its emulator.
async fn stop<Q>(
    running: Running<Q>,
    deadline: tokio::time::Instant,
) -> Option<crate::emulator::Emulator> {
    let _ = running.stop.send(true);
    let mut workers = running.workers;
    if tokio::time::timeout_at(deadline, &mut workers)
        .await
        .is_err()
    {
        tracing::warn!(
            destination = %running.shared.destination,
            "workers did not stop in time; their events stay queued for the next start"
        );
        workers.abort();
        let _ = workers.await;
    }
    running.destination.emulator
}

/// What the server asks of its destinations, whatever its queue.
pub(super) trait Destinations: Send + Sync {
    /// Starts delivering to another destination.
    fn add(&self, outlet: Outlet) -> Pending<'_, Result<(), ServeError>>;
    /// Stops delivering to a destination (see [`Fleet::remove`]).
    fn remove<'a>(
        &'a self,
        name: &'a str,
        drain: std::time::Duration,
    ) -> Pending<'a, Result<(), ServeError>>;
    /// Which write keys feed which destinations, from now on.
    fn set_write_keys(&self, keys: WriteKeys) -> Result<(), ServeError>;
    /// What each destination's delivery shares, in the order they were added.
    fn shared(&self) -> Vec<Arc<Shared>>;
    fn stop_all(
        &self,
        deadline: tokio::time::Instant,
    ) -> Pending<'_, Vec<crate::emulator::Emulator>>;
}

impl<Q: Queue> Destinations for Fleet<Q> {
    fn add(&self, outlet: Outlet) -> Pending<'_, Result<(), ServeError>> {
        Box::pin(async move {
            let described = self.launch(outlet).await?;
            tracing::info!(
                destination = %described.name,
                zendesk = %described.zendesk,
                budget = %described.budget,
                "a destination was added; it receives the events accepted from now on"
            );
            Ok(())
        })
    }

    fn remove<'a>(
        &'a self,
        name: &'a str,
        drain: std::time::Duration,
    ) -> Pending<'a, Result<(), ServeError>> {
        Box::pin(async move {
            Fleet::remove(self, name, drain).await?;
            tracing::info!(
                destination = %name,
                "a destination was removed; the events waiting for it and its dead letters are kept"
            );
            Ok(())
        })
    }

    fn set_write_keys(&self, keys: WriteKeys) -> Result<(), ServeError> {
        self.app.set_write_keys(keys)
    }

    fn shared(&self) -> Vec<Arc<Shared>> {
        self.app
            .destinations()
            .iter()
            .map(|(s, _)| s.clone())
            .collect()
    }

    fn stop_all(
        &self,
        deadline: tokio::time::Instant,
    ) -> Pending<'_, Vec<crate::emulator::Emulator>> {
        Box::pin(Fleet::stop_all(self, deadline))
    }
}
