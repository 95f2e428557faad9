//! The shared queue: NATS JetStream, so that several `zdmap serve` replicas (on several
//! machines) take events, deliver them and keep the dead letters and the request budget together.
//!
//! Several destinations (Zendesk accounts) share the account: a [`NatsQueue`] is one
//! destination's, and each delivers every event routed to it on its own. What is a
//! destination's own is named by [`names::Names`]; the default destination keeps the names
//! from before destinations existed (those below), another `D` has its own (`zdmap.events.D.…`,
//! keys `d.D.…`, see there).
//!
//! What lives in the NATS account (created by the first replica, shared by the others):
//! - the stream `ZDMAP_EVENTS` (work-queue retention, file storage): accepted events on the
//!   subjects `zdmap.events.<partition>` (another destination's `zdmap.events.D.<partition>`),
//!   the partition a hash of the event's ordering key (its user, else its organization), so one
//!   key's events are in one partition, in order. An event routed to two destinations is
//!   stored once on each one's subject. The sender's `messageId` is the publish's `Nats-Msg-Id`
//!   (`<messageId>@D` for another destination): JetStream drops the same id within the stream's
//!   duplicate window. An event is acknowledged (and so removed) once its destination settled it.
//! - the stream `ZDMAP_DEAD_LETTERS`: one message per dead letter, on its destination's subject
//!   (`zdmap.dead_letters`, `zdmap.dead_letters.D`); its id is the stream sequence
//!   ([`dead_letters`]).
//! - the key-value bucket `zdmap_leases` (keys expire after the lease time): who owns which
//!   partition of each destination, and which replicas of it are alive ([`partitions`]). One
//!   replica at a time delivers a partition of a destination, so one key's events are never
//!   delivered to a destination by two replicas at once.
//! - the key-value bucket `zdmap`: the partition count (fixed by the first replica, one for
//!   every destination) and each destination's shared request budget ([`budget`]).
//! - the key-value bucket `zdmap_entities`, each destination's under its own keys: the time of
//!   the last change applied per entity ([`entities`]), so a late retry or a replay never
//!   applies an older change over a newer one, whichever replica made it; the last write
//!   applied per entity, so a write that would change nothing (`skip_unchanged`) is skipped
//!   whichever replica applied the last one ([`applied`]); and the holds on the keys that
//!   events of different partitions share ([`holds`]: the organization of a `group` call, whose
//!   calls come from many users), so that one replica at a time delivers an organization's
//!   events, in the order of their times.
//!
//! - the key-value bucket `zdmap_oauth`: the OAuth refresh-token chain every replica of a
//!   destination shares ([`tokens`]).
//!
//! A replica that takes a partition starts its consumer again from the oldest event not yet
//! acknowledged: a replica that died leaves nothing behind, and its events are delivered in the
//! order they were accepted.

mod applied;
pub mod budget;
pub mod dead_letters;
pub mod entities;
pub mod holds;
pub mod journal;
pub mod names;
pub mod partitions;
pub mod tokens;

use super::{Item, ItemId, NewItem, Pushed, Queue, QueueError};
use crate::base::sync::lock;
use crate::deliver::DeadLetter;
use crate::deliver::auth::env_or_file;
use crate::deliver::dispatch::Ownership;
use crate::mapping::plan::ActionName;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

/// The events stream.
pub(crate) const EVENTS_STREAM: &str = "ZDMAP_EVENTS";
/// The dead-letters stream.
pub(crate) const DEAD_LETTERS_STREAM: &str = "ZDMAP_DEAD_LETTERS";
/// The bucket of leases and replicas' heartbeats.
pub(crate) const LEASES_BUCKET: &str = "zdmap_leases";
/// The bucket of the settings every replica shares and the request budget.
pub(crate) const SETTINGS_BUCKET: &str = "zdmap";
const PARTITIONS_KEY: &str = "partitions";

/// The header carrying the event's ordering key.
const KEY_HEADER: &str = "Zdmap-Key";
/// The header carrying the only action to run (a replayed dead letter).
const ONLY_HEADER: &str = "Zdmap-Only";
/// The header marking a replay forced over newer changes.
const FORCE_HEADER: &str = "Zdmap-Force";

/// Partitions when the first replica does not say.
pub const DEFAULT_PARTITIONS: u32 = 32;
/// How long a lease lasts without being renewed, by default.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Where a key's events go: FNV-1a of the key, so every replica agrees.
pub(crate) fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// How to reach NATS and lay out the queue.
#[derive(Clone)]
pub struct NatsOptions {
    /// `nats://host:port` of one or more servers of the cluster.
    pub servers: Vec<String>,
    /// Copies JetStream keeps of each stream and bucket (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// Partitions of the events stream, used when the stream is created (the first replica's
    /// setting holds for all).
    pub partitions: u32,
    /// How long a partition stays with a replica that stopped renewing its lease.
    pub lease: Duration,
    /// The duplicate window of `messageId`s (zero: not deduplicated).
    pub dedupe_window: Duration,
    /// How long the first connection is waited for: a server starting beside `zdmap serve` may
    /// take a while; a command a person runs says at once that NATS is not there.
    pub first_connection: Duration,
    /// The destination whose queue this is ([`names::Names`]); by default
    /// [`DEFAULT_DESTINATION`](super::DEFAULT_DESTINATION).
    pub destination: String,
}

/// How long a command a person runs waits for NATS before it says it is not there.
pub const COMMAND_WAIT: Duration = Duration::from_secs(5);

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOptions")
            .field("servers", &shown_list(&self.servers))
            .field("replicas", &self.replicas)
            .field("partitions", &self.partitions)
            .field("lease", &self.lease)
            .field("dedupe_window", &self.dedupe_window)
            .field("first_connection", &self.first_connection)
            .field("destination", &self.destination)
            .finish()
    }
}

impl NatsOptions {
    /// `nats://a:4222,nats://b:4222` (or `a:4222,b:4222`).
    pub fn new(servers: &str) -> NatsOptions {
        NatsOptions {
            servers: servers
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            replicas: 1,
            partitions: DEFAULT_PARTITIONS,
            lease: DEFAULT_LEASE,
            dedupe_window: super::DEFAULT_DEDUPE_WINDOW,
            first_connection: SERVE_WAIT,
            destination: super::DEFAULT_DESTINATION.to_owned(),
        }
    }

    /// The same, for the destination called `destination`.
    pub fn for_destination(self, destination: &str) -> NatsOptions {
        NatsOptions {
            destination: destination.to_owned(),
            ..self
        }
    }

    /// The same servers, waited for [`COMMAND_WAIT`] only (`dead-letters`, `auth`).
    pub fn for_a_command(servers: &str) -> NatsOptions {
        NatsOptions {
            first_connection: COMMAND_WAIT,
            ..NatsOptions::new(servers)
        }
    }
}

/// A server address as shown in logs, errors and `/readyz`: without a `user:password@` part.
pub fn shown(server: &str) -> String {
    match (server.find("://"), server.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &server[..scheme + 3], &server[at + 1..])
        }
        (None, Some(at)) => server[at + 1..].to_owned(),
        _ => server.to_owned(),
    }
}

/// The servers as shown (see [`shown`]), comma-separated.
pub fn shown_list(servers: &[String]) -> String {
    servers
        .iter()
        .map(|s| shown(s))
        .collect::<Vec<_>>()
        .join(",")
}

/// Is `queue` (the `--queue` setting) a NATS address list?
pub fn is_nats(queue: &str) -> bool {
    queue.trim_start().starts_with("nats://") || queue.trim_start().starts_with("tls://")
}

/// The environment variables of the NATS credentials (each also as `NAME_FILE`).
pub(crate) const NATS_USER: &str = "ZDMAP_NATS_USER";
pub(crate) const NATS_PASSWORD: &str = "ZDMAP_NATS_PASSWORD";
pub(crate) const NATS_TOKEN: &str = "ZDMAP_NATS_TOKEN";
/// A creds file (a user JWT and its NKey seed), by path.
pub(crate) const NATS_CREDS: &str = "ZDMAP_NATS_CREDS";

/// How a connection authenticates, read from the environment.
enum Auth {
    None,
    UserPassword(String, String),
    Token(String),
    CredsFile(String),
}

impl Auth {
    fn from_env() -> Result<Auth, QueueError> {
        let var = |name: &str| {
            env_or_file(name)
                .map(|v| v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()))
                .map_err(|e| QueueError::nats("cannot read its credentials", e))
        };
        let creds = std::env::var(NATS_CREDS).ok().filter(|p| !p.is_empty());
        match (
            var(NATS_USER)?,
            var(NATS_PASSWORD)?,
            var(NATS_TOKEN)?,
            creds,
        ) {
            (None, None, None, Some(path)) => Ok(Auth::CredsFile(path)),
            (Some(user), Some(password), None, None) => Ok(Auth::UserPassword(user, password)),
            (None, None, Some(token), None) => Ok(Auth::Token(token)),
            (None, None, None, None) => Ok(Auth::None),
            _ => Err(QueueError::nats_says(format!(
                "set {NATS_USER} and {NATS_PASSWORD}, or {NATS_TOKEN}, or {NATS_CREDS}: one way to log in"
            ))),
        }
    }

    async fn options(&self) -> Result<async_nats::ConnectOptions, QueueError> {
        let options = async_nats::ConnectOptions::new()
            .name("zdmap")
            .connection_timeout(Duration::from_secs(5));
        Ok(match self {
            Auth::None => options,
            Auth::UserPassword(user, password) => {
                options.user_and_password(user.clone(), password.clone())
            }
            Auth::Token(token) => options.token(token.clone()),
            Auth::CredsFile(path) => options
                .credentials_file(path)
                .await
                .map_err(|e| QueueError::nats(format!("cannot read {NATS_CREDS} ({path})"), e))?,
        })
    }
}

/// How long `zdmap serve` waits for its first connection (a server starting beside it).
pub const SERVE_WAIT: Duration = Duration::from_secs(60);

/// Opens a connection with the credentials of the environment. A server down at start is
/// waited for up to a minute, a refused login is not; once connected, the client reconnects by
/// itself whenever a server comes back.
pub async fn connect(options: &NatsOptions) -> Result<async_nats::Client, QueueError> {
    use async_nats::ConnectErrorKind as Kind;
    let auth = Auth::from_env()?;
    if options.servers.is_empty() {
        return Err(QueueError::nats_says("no server address given"));
    }
    let servers: Vec<async_nats::ServerAddr> = options
        .servers
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e| QueueError::nats(format!("{:?} is not a server address", shown(s)), e))
        })
        .collect::<Result<_, _>>()?;
    let list = shown_list(&options.servers);
    let deadline = tokio::time::Instant::now() + options.first_connection;
    loop {
        match auth.options().await?.connect(servers.clone()).await {
            Ok(client) => return Ok(client),
            Err(e)
                if matches!(
                    e.kind(),
                    Kind::Authentication | Kind::AuthorizationViolation
                ) =>
            {
                return Err(QueueError::nats_says(format!(
                    "{list} refused the login ({e}); check {NATS_USER}/{NATS_PASSWORD}, {NATS_TOKEN} or {NATS_CREDS}"
                )));
            }
            Err(e) if matches!(e.kind(), Kind::ServerParse | Kind::Tls) => {
                return Err(QueueError::nats(list, e));
            }
            Err(e) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(QueueError::nats(
                        format!(
                            "no server of {list} answered within {:?}",
                            options.first_connection
                        ),
                        e,
                    ));
                }
                tracing::warn!(servers = %list, error = %e, "waiting for NATS");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What of the NATS queue every process of a destination needs: the JetStream context, the
/// streams and buckets, and the names of the destination's records in them.
#[derive(Clone)]
pub struct Layout {
    /// The destination's names.
    pub names: names::Names,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub events: stream::Stream,
    pub dead_letters: stream::Stream,
    pub leases: kv::Store,
    pub settings: kv::Store,
    /// The last change time per entity.
    pub entities: kv::Store,
    /// The partition count every replica uses.
    pub partitions: u32,
    pub dedupe: bool,
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layout")
            .field("destination", &self.names.destination())
            .field("partitions", &self.partitions)
            .finish()
    }
}

fn nats_error<E: Into<super::Cause>>(what: &str) -> impl Fn(E) -> QueueError + '_ {
    move |e| QueueError::nats(what, e)
}

impl Layout {
    /// How many times the client has connected: a change means it connected again.
    pub(crate) fn connects(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::Relaxed)
    }

    /// Connects and creates what does not exist yet (or reads it).
    pub async fn open(options: &NatsOptions) -> Result<Layout, QueueError> {
        Self::connect(options, true).await
    }

    /// Opens what a server created, changing nothing (`zdmap dead-letters`).
    pub(crate) async fn open_existing(options: &NatsOptions) -> Result<Layout, QueueError> {
        Self::connect(options, false).await
    }

    async fn connect(options: &NatsOptions, create: bool) -> Result<Layout, QueueError> {
        let names = names::Names::of(&options.destination)?;
        let client = connect(options).await?;
        let js = jetstream::new(client.clone());
        let replicas = options.replicas.max(1);
        let dedupe = !options.dedupe_window.is_zero();
        let events_config = stream::Config {
            name: EVENTS_STREAM.into(),
            subjects: names::EVENTS_SUBJECTS.map(String::from).into(),
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: if dedupe {
                options.dedupe_window
            } else {
                Duration::from_secs(120)
            },
            ..Default::default()
        };
        if !create {
            return Self::existing(client, js, names).await;
        }
        let events = ensure_stream(&js, events_config).await?;
        let dead_letters = ensure_stream(
            &js,
            stream::Config {
                name: DEAD_LETTERS_STREAM.into(),
                subjects: names::DEAD_LETTERS_SUBJECTS.map(String::from).into(),
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let bucket = |name: &'static str| Bucket {
            name,
            max_age: Duration::ZERO,
            max_keys: 0,
            replicas,
        };
        let leases = ensure_bucket(
            &js,
            Bucket {
                max_age: options.lease,
                ..bucket(LEASES_BUCKET)
            },
        )
        .await?;
        let settings = ensure_bucket(&js, bucket(SETTINGS_BUCKET)).await?;
        let entities = ensure_bucket(
            &js,
            Bucket {
                max_keys: entities::CAPACITY,
                ..bucket(entities::ENTITIES_BUCKET)
            },
        )
        .await?;
        let partitions = shared_partitions(&settings, options.partitions).await?;
        Ok(Layout {
            names,
            client,
            js,
            events,
            dead_letters,
            leases,
            settings,
            entities,
            partitions,
            dedupe,
        })
    }

    async fn existing(
        client: async_nats::Client,
        js: jetstream::Context,
        names: names::Names,
    ) -> Result<Layout, QueueError> {
        let missing = |what: &str| {
            QueueError::nats_says(format!(
                "no zdmap queue there ({what} is missing): `zdmap serve --queue` creates it"
            ))
        };
        let events = js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|_| missing(EVENTS_STREAM))?;
        let dead_letters = js
            .get_stream(DEAD_LETTERS_STREAM)
            .await
            .map_err(|_| missing(DEAD_LETTERS_STREAM))?;
        let leases = js
            .get_key_value(LEASES_BUCKET)
            .await
            .map_err(|_| missing(LEASES_BUCKET))?;
        let settings = js
            .get_key_value(SETTINGS_BUCKET)
            .await
            .map_err(|_| missing(SETTINGS_BUCKET))?;
        let entities = js
            .get_key_value(entities::ENTITIES_BUCKET)
            .await
            .map_err(|_| missing(entities::ENTITIES_BUCKET))?;
        let partitions = settings
            .get(PARTITIONS_KEY)
            .await
            .ok()
            .flatten()
            .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u32>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| missing("the partition count"))?;
        Ok(Layout {
            names,
            client,
            js,
            events,
            dead_letters,
            leases,
            settings,
            entities,
            partitions,
            // What is published from here (replays) carries no sender's messageId.
            dedupe: false,
        })
    }

    /// The lease time of the bucket (the first replica's setting).
    pub fn lease(&self) -> Duration {
        let max_age = self.leases.stream.cached_info().config.max_age;
        if max_age.is_zero() {
            DEFAULT_LEASE
        } else {
            max_age
        }
    }

    /// Stores events, each in its key's partition of every destination it names (none: this
    /// layout's destination), in order; resolves once JetStream has them all. Returns how many
    /// were dropped as duplicates of a `messageId` within the window: an item is one when each
    /// of its destinations had it already (a sender's retry after a crash between the
    /// publishes of one item stores it for the destinations that lacked it only).
    async fn publish_events(&self, items: Vec<NewItem>) -> Result<u64, QueueError> {
        let mut acks = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let destinations = if item.destinations.is_empty() {
                vec![self.names.clone()]
            } else {
                item.destinations
                    .iter()
                    .map(|d| names::Names::of(d))
                    .collect::<Result<Vec<_>, _>>()?
            };
            let key = item.partition.clone().unwrap_or_else(|| {
                // Ordered with nothing: any partition, spread by its id.
                item.message_id.clone().unwrap_or_else(|| {
                    format!("{}", crate::base::time::unix_millis_now() ^ index as u64)
                })
            });
            let partition = partition_of(&key, self.partitions);
            let payload = serde_json::to_vec(&item.event).unwrap_or_default();
            for names in &destinations {
                let mut headers = HeaderMap::new();
                if let Some(k) = &item.partition {
                    headers.insert(KEY_HEADER, k.as_str());
                }
                if let Some(only) = &item.only {
                    headers.insert(ONLY_HEADER, only.as_str());
                }
                if item.force {
                    headers.insert(FORCE_HEADER, "1");
                }
                if self.dedupe
                    && let Some(id) = &item.message_id
                {
                    headers.insert(
                        async_nats::header::NATS_MESSAGE_ID,
                        names.message_id(id).as_str(),
                    );
                }
                let ack = self
                    .js
                    .publish_with_headers(
                        names.events_subject(partition),
                        headers,
                        payload.clone().into(),
                    )
                    .await
                    .map_err(|e| {
                        QueueError::nats(
                            format!("cannot store an event for destination {names}"),
                            e,
                        )
                    })?;
                acks.push((index, ack));
            }
        }
        // Whether each item was a duplicate for every destination so far.
        let mut duplicate = vec![true; items.len()];
        for (index, ack) in acks {
            let ack = ack
                .await
                .map_err(nats_error("an event was not acknowledged"))?;
            duplicate[index] &= ack.duplicate;
        }
        Ok(duplicate.into_iter().filter(|d| *d).count() as u64)
    }

    /// Stores dead letters of this layout's destination; resolves once JetStream has them all.
    pub(crate) async fn publish_dead_letters(
        &self,
        letters: &[DeadLetter],
    ) -> Result<(), QueueError> {
        let subject = self.names.dead_letters_subject();
        let mut acks = Vec::with_capacity(letters.len());
        for letter in letters {
            acks.push(
                self.js
                    .publish(subject.clone(), letter.to_line().into_bytes().into())
                    .await
                    .map_err(nats_error("cannot store a dead letter"))?,
            );
        }
        for ack in acks {
            ack.await
                .map_err(nats_error("a dead letter was not acknowledged"))?;
        }
        Ok(())
    }

    /// How many events of this layout's destination wait in the stream (all replicas
    /// together).
    pub(crate) async fn waiting(&self) -> Result<u64, QueueError> {
        let mut subjects = self
            .events
            .info_with_subjects(self.names.events_filter())
            .await
            .map_err(nats_error("cannot read the events stream"))?;
        let mut total = 0u64;
        while let Some(counted) = subjects.next().await {
            let (_, count) = counted.map_err(nats_error("cannot read the events stream"))?;
            total += count as u64;
        }
        Ok(total)
    }
}

/// Gets a stream, creating it when missing; a changed duplicate window is applied, and
/// subjects of `config` the stream lacks are added.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, QueueError> {
    match js.get_stream(&config.name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(nats_error("cannot read a stream"))?;
            let mut updated = info.config.clone();
            if info.config.duplicate_window != config.duplicate_window
                && info.config.retention == stream::RetentionPolicy::WorkQueue
            {
                updated.duplicate_window = config.duplicate_window;
            }
            // A stream of a deployment from before destinations takes the default's subjects
            // only: the others' are added (every replica adds the same ones).
            for subject in &config.subjects {
                if !updated.subjects.contains(subject) {
                    updated.subjects.push(subject.clone());
                }
            }
            if updated != info.config {
                js.update_stream(updated).await.map_err(|e| {
                    QueueError::nats(
                        format!(
                            "cannot change the stream {} (its duplicate window, or its subjects: {})",
                            config.name,
                            config.subjects.join(", ")
                        ),
                        e,
                    )
                })?;
            }
            Ok(existing)
        }
        Err(_) => js.get_or_create_stream(config).await.map_err(|e| {
            nats_error("cannot create the streams (is JetStream enabled: nats-server -js?)")(e)
        }),
    }
}

/// A key-value bucket of single values (history 1) on file.
struct Bucket {
    name: &'static str,
    /// How long a value lives (zero: until it is replaced or deleted).
    max_age: Duration,
    /// Above zero, the bucket's bound: past it, the keys written longest ago go.
    max_keys: i64,
    replicas: usize,
}

/// Gets a key-value bucket, creating its stream when missing. The stream is laid out as the
/// client's own `create_key_value` would, without the account query it starts with (whose
/// answer nats-server 2.9 words differently).
async fn ensure_bucket(js: &jetstream::Context, bucket: Bucket) -> Result<kv::Store, QueueError> {
    if let Ok(store) = js.get_key_value(bucket.name).await {
        return Ok(store);
    }
    let bounded = bucket.max_keys > 0;
    let stream = stream::Config {
        name: format!("KV_{}", bucket.name),
        subjects: vec![format!("$KV.{}.>", bucket.name)],
        max_messages_per_subject: 1,
        max_age: bucket.max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: bucket.replicas.max(1),
        max_messages: if bounded { bucket.max_keys } else { -1 },
        discard: if bounded {
            stream::DiscardPolicy::Old
        } else {
            stream::DiscardPolicy::New
        },
        ..Default::default()
    };
    let created = js.get_or_create_stream(stream).await;
    js.get_key_value(bucket.name).await.map_err(|e| {
        let why = created.err().map_or(e.to_string(), |c| c.to_string());
        nats_error("cannot create a key-value bucket")(why)
    })
}

/// The partition count: the stored one, or ours when we are first.
async fn shared_partitions(settings: &kv::Store, wanted: u32) -> Result<u32, QueueError> {
    let wanted = wanted.max(1);
    let stored = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|n| *n > 0)
    };
    if let Ok(Some(value)) = settings.get(PARTITIONS_KEY).await
        && let Some(n) = stored(&value)
    {
        return Ok(n);
    }
    match settings
        .create(PARTITIONS_KEY, wanted.to_string().into())
        .await
    {
        Ok(_) => Ok(wanted),
        Err(_) => settings
            .get(PARTITIONS_KEY)
            .await
            .ok()
            .flatten()
            .and_then(|v| stored(&v))
            .ok_or_else(|| QueueError::nats_says("cannot read the partition count")),
    }
}

/// An event as stored in the stream; a body that does not parse is kept visible as a string.
fn event_of(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(payload).into_owned())
    })
}

/// An event handed over by a partition's consumer, not yet taken by the workers.
pub(crate) struct Received {
    pub partition: u32,
    pub sequence: u64,
    /// The tenure of the partition it was read under ([`Tenure::epoch`]).
    pub epoch: u64,
    pub message: jetstream::Message,
    /// Handed out before, to a consumer that did not settle it (a replica that stopped).
    pub redelivered: bool,
}

/// An event the workers have, until it is settled.
struct Taken {
    partition: u32,
    sequence: u64,
    epoch: u64,
    acker: jetstream::message::Acker,
}

/// What this replica holds of the queue.
#[derive(Default)]
pub(crate) struct Local {
    next_id: u64,
    taken: HashMap<ItemId, Taken>,
    /// Stream sequences of each partition handed over and not settled. A redelivery of one of
    /// these is not handed over again; when it comes from a newer consumer of the partition
    /// (made after a reconnection) its acknowledgement is kept here, since only the consumer
    /// that delivered an event last can remove it.
    pub(crate) unsettled: HashMap<u32, HashMap<u64, Option<jetstream::message::Acker>>>,
    /// The leases held, by partition: what the workers ask before a turn starts.
    pub(crate) tenures: HashMap<u32, Tenure>,
    /// The last tenure's epoch.
    pub(crate) epochs: u64,
}

/// A partition's lease as this replica holds it, from a take to a loss or a release.
pub(crate) struct Tenure {
    /// Which take of the partition this is: events handed over under an earlier one are not
    /// this replica's any more (another replica may have delivered them since).
    pub(crate) epoch: u64,
    /// Until when the lease is certainly this replica's ([`partitions`] says how it is
    /// reckoned): past it, no delivery turn of the partition's events starts.
    pub(crate) sure_until: tokio::time::Instant,
    /// Past `sure_until` and told in the log (once, until the next renewal).
    pub(crate) fenced: bool,
}

impl Local {
    /// A new tenure of `p`, certainly ours until `sure_until`; returns its epoch.
    pub(crate) fn begin(&mut self, p: u32, sure_until: tokio::time::Instant) -> u64 {
        self.epochs += 1;
        let epoch = self.epochs;
        self.tenures.insert(
            p,
            Tenure {
                epoch,
                sure_until,
                fenced: false,
            },
        );
        epoch
    }

    /// An event handed over left this replica (settled, or forgotten): it no longer keeps its
    /// partition here. (A later tenure of the partition has its own events unsettled.)
    fn left(&mut self, taken: &Taken) {
        if let Some(set) = self.unsettled_of(taken) {
            set.remove(&taken.sequence);
        }
    }

    /// The acknowledgement of a newer consumer that delivered the event again, if any.
    fn newer_acker(&mut self, taken: &Taken) -> Option<jetstream::message::Acker> {
        self.unsettled_of(taken)?.get_mut(&taken.sequence)?.take()
    }

    /// The unsettled events of the partition `taken` came from, while its tenure lasts.
    fn unsettled_of(
        &mut self,
        taken: &Taken,
    ) -> Option<&mut HashMap<u64, Option<jetstream::message::Acker>>> {
        self.unsettled_under(taken.partition, taken.epoch)
    }

    /// The unsettled events of `p` while its tenure `epoch` lasts.
    pub(crate) fn unsettled_under(
        &mut self,
        p: u32,
        epoch: u64,
    ) -> Option<&mut HashMap<u64, Option<jetstream::message::Acker>>> {
        if self.lasts(p, epoch) {
            self.unsettled.get_mut(&p)
        } else {
            None
        }
    }

    /// Whether the tenure `epoch` of `p` is the one this replica holds.
    pub(crate) fn lasts(&self, p: u32, epoch: u64) -> bool {
        self.tenures.get(&p).is_some_and(|t| t.epoch == epoch)
    }

    /// The tenure of `p` ended (lost, released): its events handed over are forgotten, and
    /// are not ours to deliver any more.
    pub(crate) fn end(&mut self, p: u32) {
        self.tenures.remove(&p);
        self.unsettled.remove(&p);
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct NatsMetrics {
    pub partitions_owned: AtomicU64,
    pub lease_changes: AtomicU64,
    pub replicas_alive: AtomicU64,
    /// Turns held back because the lease of their partition was not certainly ours.
    pub fenced: AtomicU64,
}

/// The JetStream queue of one destination in one replica: its consumers, leases, records and
/// dead letters ([`names::Names`]); a replica with several destinations opens one each.
pub struct NatsQueue {
    layout: Layout,
    clock: Arc<entities::NatsClock>,
    holds: Arc<holds::NatsHolds>,
    local: Arc<Mutex<Local>>,
    received: tokio::sync::Mutex<mpsc::Receiver<Received>>,
    added: Arc<Notify>,
    write_problem: Arc<Mutex<Option<String>>>,
    metrics: Arc<NatsMetrics>,
    /// Acknowledgements (and dead letters) being written.
    settling: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    manager: Mutex<Option<tokio::task::JoinHandle<()>>>,
    servers: Vec<String>,
}

impl std::fmt::Debug for NatsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsQueue")
            .field("servers", &self.servers)
            .field("partitions", &self.layout.partitions)
            .finish()
    }
}

/// Events handed over and not yet taken by the workers, at most.
const HANDOVER: usize = 1024;

impl NatsQueue {
    /// Connects, creates the streams and buckets if needed, and starts taking partitions of
    /// `options.destination`.
    pub async fn open(options: &NatsOptions) -> Result<NatsQueue, QueueError> {
        let layout = Layout::open(options).await?;
        let (tx, rx) = mpsc::channel(HANDOVER);
        let local = Arc::new(Mutex::new(Local::default()));
        let added = Arc::new(Notify::new());
        let metrics = Arc::new(NatsMetrics::default());
        let (stop, stopped) = watch::channel(false);
        let clock = entities::NatsClock::start(layout.entities.clone(), layout.names.clone());
        let manager = partitions::Manager::new(
            layout.clone(),
            clock.clone(),
            tx,
            local.clone(),
            added.clone(),
            metrics.clone(),
        );
        let replica = manager.replica().to_owned();
        let handle = tokio::spawn(manager.run(stopped));
        let holds = Arc::new(holds::NatsHolds::start(
            layout.entities.clone(),
            clock.clone(),
            replica.clone(),
            layout.lease(),
        ));
        tracing::info!(
            replica = %replica,
            destination = %layout.names,
            partitions = layout.partitions,
            lease_seconds = layout.lease().as_secs_f64(),
            "queue on NATS JetStream"
        );
        Ok(NatsQueue {
            clock,
            holds,
            layout,
            local,
            received: tokio::sync::Mutex::new(rx),
            added,
            write_problem: Arc::new(Mutex::new(None)),
            metrics,
            settling: Arc::new(AtomicUsize::new(0)),
            stop,
            manager: Mutex::new(Some(handle)),
            servers: options.servers.iter().map(|s| shown(s)).collect(),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Hands this replica's partitions and holds over at once (the leases and holds are
    /// deleted, not left to expire) and waits for the settlements being written.
    pub async fn close(&self) {
        self.holds.close().await;
        let _ = self.stop.send(true);
        let manager = lock(&self.manager).take();
        if let Some(manager) = manager {
            let _ = manager.await;
        }
        for _ in 0..100 {
            if self.settling.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.layout.client.flush().await;
    }

    /// Lines for `/metrics`.
    fn metrics_lines(&self, stream_lag: Option<u64>) -> String {
        let m = &self.metrics;
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        gauge(
            "zdmap_nats_partitions_owned",
            "Partitions of the events stream this replica delivers.",
            "gauge",
            m.partitions_owned.load(Ordering::Relaxed),
        );
        gauge(
            "zdmap_nats_partitions",
            "Partitions of the events stream.",
            "gauge",
            u64::from(self.layout.partitions),
        );
        gauge(
            "zdmap_nats_replicas_alive",
            "Replicas with a live heartbeat, as last seen.",
            "gauge",
            m.replicas_alive.load(Ordering::Relaxed),
        );
        gauge(
            "zdmap_nats_holds",
            "Organizations this replica holds: events of theirs under way here.",
            "gauge",
            self.holds.held() as u64,
        );
        gauge(
            "zdmap_nats_fenced_total",
            "Delivery turns held back because the lease of their partition was not certainly this replica's (renewals late: cut off from NATS).",
            "counter",
            m.fenced.load(Ordering::Relaxed),
        );
        gauge(
            "zdmap_nats_lease_changes_total",
            "Partitions this replica took or handed over.",
            "counter",
            m.lease_changes.load(Ordering::Relaxed),
        );
        if let Some(lag) = stream_lag {
            gauge(
                "zdmap_nats_stream_lag",
                "Events of this destination in the stream not yet settled, all replicas together.",
                "gauge",
                lag,
            );
        }
        out
    }

    /// Whether the connection is up, for `/readyz`.
    pub(crate) fn connection_problem(&self) -> Option<String> {
        match self.layout.client.connection_state() {
            async_nats::connection::State::Connected => None,
            state => Some(format!(
                "NATS ({}) is not connected ({state:?}); the client reconnects by itself",
                self.servers.join(",")
            )),
        }
    }
}

impl crate::deliver::order::EntityClock for NatsQueue {
    fn last_applied(&self, entity: &str) -> Option<i64> {
        self.clock.last_applied(entity)
    }

    fn applied(&self, entity: &str, at_ms: i64) {
        self.clock.applied(entity, at_ms);
    }
}

/// The records of applied writes every replica shares ([`entities`], [`applied`]).
impl crate::deliver::unchanged::AppliedWrites for NatsQueue {
    fn last_write(&self, entity: &str) -> Option<crate::deliver::unchanged::AppliedWrite> {
        self.clock.last_write(entity)
    }

    fn write_applied(&self, entity: &str, write: &crate::deliver::unchanged::AppliedWrite) {
        self.clock.write_applied(entity, write);
    }

    fn forget_write(&self, entity: &str) {
        tokio::spawn(self.clock.forgetting(entity));
    }

    fn forgetting(&self, entity: &str) -> crate::deliver::unchanged::Forgetting {
        self.clock.forgetting(entity)
    }
}

impl Drop for NatsQueue {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Queue for NatsQueue {
    async fn retire(&self) {
        self.close().await;
    }

    fn share_budget(&self, budget: &Arc<crate::deliver::Budget>) {
        budget::NatsAllowance::share(self.layout.settings.clone(), &self.layout.names, budget);
    }

    type Letters = dead_letters::NatsDeadLetters;

    async fn dead_letters(&self) -> Result<dead_letters::NatsDeadLetters, QueueError> {
        Ok(dead_letters::NatsDeadLetters::of(
            self.layout.clone(),
            self.servers.join(","),
        ))
    }

    async fn push(
        &self,
        items: Vec<NewItem>,
        refused: Vec<DeadLetter>,
    ) -> Result<Pushed, QueueError> {
        let result = async {
            let duplicates = self.layout.publish_events(items).await?;
            self.layout.publish_dead_letters(&refused).await?;
            Ok(Pushed { duplicates })
        }
        .await;
        *lock(&self.write_problem) = result.as_ref().err().map(|e: &QueueError| e.to_string());
        result
    }

    /// The events handed over by the partitions this replica owns (`after` is not needed: an
    /// event is handed over once).
    async fn fetch(&self, _after: ItemId, limit: usize) -> Result<Vec<Item>, QueueError> {
        let mut rx = self.received.lock().await;
        let mut items = Vec::new();
        while items.len() < limit {
            let Ok(received) = rx.try_recv() else { break };
            let accepted_at_ms = received
                .message
                .info()
                .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as u64)
                .unwrap_or_else(|_| crate::base::time::unix_millis_now());
            let (message, acker) = received.message.split();
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            let size = message.payload.len();
            let event = event_of(&message.payload);
            let mut local = lock(&self.local);
            local.next_id += 1;
            let id = ItemId(local.next_id);
            local.taken.insert(
                id,
                Taken {
                    partition: received.partition,
                    sequence: received.sequence,
                    epoch: received.epoch,
                    acker,
                },
            );
            items.push(Item {
                id,
                event,
                partition: header(KEY_HEADER),
                only: header(ONLY_HEADER).map(ActionName::new),
                force: header(FORCE_HEADER).is_some(),
                redelivered: received.redelivered,
                accepted_at_ms,
                size,
            });
        }
        Ok(items)
    }

    fn rereads(&self) -> bool {
        true
    }

    /// The event read again from the stream, by the sequence it was handed over with.
    async fn reread(&self, id: ItemId) -> Result<serde_json::Value, QueueError> {
        let sequence =
            lock(&self.local)
                .taken
                .get(&id)
                .map(|t| t.sequence)
                .ok_or(QueueError::NotThere {
                    id,
                    why: "not held by this replica",
                })?;
        let message = self
            .layout
            .events
            .get_raw_message(sequence)
            .await
            .map_err(nats_error("cannot read an event again"))?;
        Ok(event_of(&message.payload))
    }

    /// Dead letters first (once JetStream has them), then the acknowledgement that removes the
    /// event. A failure leaves the event unacknowledged: delivered again when its partition
    /// changes hands or a replica starts.
    fn finish(&self, id: ItemId, letters: Vec<DeadLetter>) -> Result<(), QueueError> {
        let Some(taken) = lock(&self.local).taken.remove(&id) else {
            return Ok(());
        };
        let layout = self.layout.clone();
        let local = self.local.clone();
        let settling = self.settling.clone();
        let problem = self.write_problem.clone();
        settling.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let mut result = Ok(());
            if !letters.is_empty() {
                for attempt in 0..5u32 {
                    result = layout.publish_dead_letters(&letters).await;
                    if result.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(attempt)).await;
                }
            }
            match result {
                Ok(()) => {
                    let newest = lock(&local).newer_acker(&taken);
                    let acker = newest.as_ref().unwrap_or(&taken.acker);
                    if let Err(e) = acker.ack().await {
                        tracing::warn!(error = %e, sequence = taken.sequence, "cannot acknowledge a settled event; it is delivered again later");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, sequence = taken.sequence, "cannot store dead letters; the event stays in the queue");
                    *lock(&problem) = Some(e.to_string());
                }
            }
            // Only now may its partition be handed over: the next owner starts after it.
            lock(&local).left(&taken);
            settling.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(())
    }

    /// Ours while the tenure the item was read under lasts and its lease is certainly ours;
    /// unsure past that moment until a renewal succeeds; lost once the tenure ended.
    fn ownership(&self, id: ItemId) -> Ownership {
        let mut local = lock(&self.local);
        let Some((p, epoch)) = local.taken.get(&id).map(|t| (t.partition, t.epoch)) else {
            return Ownership::Lost;
        };
        let Some(tenure) = local.tenures.get_mut(&p).filter(|t| t.epoch == epoch) else {
            return Ownership::Lost;
        };
        if tokio::time::Instant::now() < tenure.sure_until {
            return Ownership::Ours;
        }
        if !tenure.fenced {
            tenure.fenced = true;
            tracing::warn!(
                partition = p,
                "the lease of a partition was not renewed in time (NATS unreachable?): its events wait until it is renewed, or are left to the replica that takes it"
            );
        }
        self.metrics.fenced.fetch_add(1, Ordering::Relaxed);
        Ownership::Unsure
    }

    fn forget(&self, id: ItemId) {
        let mut local = lock(&self.local);
        if let Some(taken) = local.taken.remove(&id) {
            local.left(&taken);
        }
    }

    /// The events of this queue's destination waiting, all replicas together.
    async fn depth(&self) -> Result<u64, QueueError> {
        self.layout.waiting().await
    }

    async fn changed(&self, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.added.notified()).await;
    }

    fn write_problem(&self) -> Option<String> {
        self.connection_problem()
            .or_else(|| lock(&self.write_problem).clone())
    }

    fn metrics_text(&self, depth: Option<u64>) -> String {
        self.metrics_lines(depth)
    }

    fn holds(&self) -> Arc<dyn crate::deliver::holds::KeyHolds> {
        self.holds.clone()
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "nats",
            "servers": self.servers,
            "destination": self.layout.names.destination(),
            "connected": self.connection_problem().is_none(),
            "partitions": self.layout.partitions,
            "partitions_owned": self.metrics.partitions_owned.load(Ordering::Relaxed),
            "replicas_alive": self.metrics.replicas_alive.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_goes_to_the_same_partition_and_keys_spread() {
        assert_eq!(partition_of("user:a", 32), partition_of("user:a", 32));
        let used: std::collections::HashSet<u32> = (0..1000)
            .map(|n| partition_of(&format!("user:{n}"), 32))
            .collect();
        assert_eq!(used.len(), 32);
        assert!(used.iter().all(|p| *p < 32));
        assert_eq!(partition_of("x", 0), 0);
    }

    #[test]
    fn passwords_in_server_addresses_are_not_shown() {
        assert_eq!(shown("nats://zdmap:s3cret@n1:4222"), "nats://n1:4222");
        assert_eq!(shown("tok3n@n1:4222"), "n1:4222");
        assert_eq!(shown("nats://n1:4222"), "nats://n1:4222");
        let queue = NatsOptions::new("nats://u:p@a:1,nats://b:2");
        assert_eq!(shown_list(&queue.servers), "nats://a:1,nats://b:2");
        assert!(!format!("{queue:?}").contains("u:p"));
    }

    #[test]
    fn servers_are_split_on_commas() {
        let o = NatsOptions::new("nats://a:4222, nats://b:4222,");
        assert_eq!(o.servers, ["nats://a:4222", "nats://b:4222"]);
        assert!(is_nats("nats://a:1"));
        assert!(!is_nats("zdmap-data"));
    }
}
