//! Who delivers which partition: leases in the `zdmap_leases` bucket.
//!
//! Each destination's partitions are leased on their own, by the replicas delivering to it,
//! under the destination's keys ([`super::names::Names::key`]: the default's as below,
//! another's `d.<name>.p.<partition>` and `d.<name>.r.<replica>`), and read by consumers of its
//! own ([`super::names::Names::consumer_prefix`]): a partition of `eu` and the same partition
//! of `us` are owned and handed over independently.
//!
//! Every tick (a fifth of the lease time, at most a second) each replica:
//! 1. writes its heartbeat (`r.<replica>`), which expires with the bucket's max age, so the
//!    replicas alive are the heartbeats present;
//! 2. renews each lease it holds (`p.<partition>`), by revision, so a lease that expired and was
//!    taken by another replica is never overwritten: the replica lets that partition go;
//! 3. takes free partitions (a create, which fails if another replica got there first) up to its
//!    fair share, `ceil(partitions / replicas alive)`, and hands back the ones above it, so a
//!    replica that joins gets some. A partition handed back stops taking events at once and is
//!    released once its events taken so far are settled, so no two replicas ever hold the same
//!    key's events.
//!
//! A partition is handed back once the entities bucket has what this replica applied (its
//! change times and records of applied writes, [`NatsClock::written`]), and a replica taking
//! it reads its first event once its watch of that bucket has come as far as the bucket
//! ([`NatsClock::caught_up`]): the last write applied to a user is known to whichever replica
//! delivers the user's next event.
//!
//! A replica taking a partition deletes the previous owner's consumer and starts its own from
//! the oldest unacknowledged event (a work-queue stream keeps only those): what a dead replica
//! had taken is delivered again, in order, and a replica that lost its lease without noticing
//! yet (cut off from NATS) can read no further events of it. A replica killed without a word
//! loses its leases after the lease time; a replica that shuts down deletes them at once.
//!
//! Fencing: a replica cut off from NATS cannot renew its leases, and after the lease time
//! another replica takes its partitions and delivers their unsettled events again. So each
//! lease is certainly ours only until a moment reckoned on our own clock (`Tenure`'s
//! `sure_until`, see `sure_until`); past it the workers start no delivery turn of the
//! partition's events ([`crate::queue::Queue::ownership`]). A renewal that succeeds later
//! (the lease was still ours) lets them go on in order; a lease lost ends the tenure, and its
//! events are dropped here unsettled (the new owner has them from JetStream). What the fence
//! cannot stop is a request sent before that moment that reaches Zendesk late.

use super::entities::NatsClock;
use super::names::Names;
use super::{Layout, Local, NatsMetrics, Received};
use crate::base::sync::lock;
use async_nats::jetstream::consumer::{self, pull};
use futures_util::StreamExt as _;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

/// A lease held.
struct Held {
    revision: u64,
    /// When the last renewal that succeeded (or the take) was sent.
    renewed: Instant,
    /// The tenure's epoch ([`super::Tenure::epoch`]).
    epoch: u64,
    /// The partition's consumer task; `None` once the partition is being handed back.
    consumer: Option<(tokio::task::JoinHandle<()>, watch::Sender<bool>)>,
}

/// The lease keeper of one replica.
pub(crate) struct Manager {
    layout: Layout,
    clock: Arc<NatsClock>,
    replica: String,
    lease: Duration,
    handover: mpsc::Sender<Received>,
    local: Arc<Mutex<Local>>,
    added: Arc<Notify>,
    metrics: Arc<NatsMetrics>,
    held: HashMap<u32, Held>,
}

/// Leases are renewed, and partitions balanced, at least this often.
const MAX_TICK: Duration = Duration::from_secs(1);

/// The bucket key of the lease of the destination's `partition`.
fn lease_key(names: &Names, partition: u32) -> String {
    names.key(&format!("p.{partition}"))
}

/// The bucket key of the heartbeat of `replica` for the destination.
fn heartbeat_key(names: &Names, replica: &str) -> String {
    names.key(&format!("r.{}", key_safe(replica)))
}

/// Until when a lease written (taken or renewed) at `sent` is certainly ours: `sent` is read
/// on the local monotonic clock before the write is sent, and NATS expires the key `lease`
/// after it stored the write, which is later; so no other replica can take the partition
/// before `sent + lease` as long as clocks run at the same rate. A fifth of the lease is kept
/// back from that: a turn that starts just before the moment still sends its requests (a
/// lookup, a write) a little after it; the clocks of this machine and of the NATS server may
/// drift apart a little; and the replica taking over acts on its own tick. Leases are renewed
/// every fifth of the lease at most, so a replica that NATS answers is never near the moment
/// (three fifths of the lease ahead at least), while one cut off stops at four fifths of it, a
/// fifth before anyone else may start. A larger share would stop a replica on a slow NATS for
/// nothing; a smaller one would leave too little for a turn under way to end.
fn sure_until(sent: Instant, lease: Duration) -> Instant {
    sent + lease - lease / 5
}

impl Manager {
    pub(crate) fn new(
        layout: Layout,
        clock: Arc<NatsClock>,
        handover: mpsc::Sender<Received>,
        local: Arc<Mutex<Local>>,
        added: Arc<Notify>,
        metrics: Arc<NatsMetrics>,
    ) -> Manager {
        let replica = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        let lease = layout.lease();
        Manager {
            layout,
            clock,
            replica,
            lease,
            handover,
            local,
            added,
            metrics,
            held: HashMap::new(),
        }
    }

    pub(crate) fn replica(&self) -> &str {
        &self.replica
    }

    /// Keeps the leases until `stop`; then deletes them (the others take the partitions at
    /// their next tick).
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let tick = (self.lease / 5).clamp(Duration::from_millis(100), MAX_TICK);
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tokio::select! {
                _ = interval.tick() => self.tick().await,
                _ = stop.changed() => {}
            }
        }
        self.hand_back_all().await;
    }

    async fn tick(&mut self) {
        let heartbeat = heartbeat_key(&self.layout.names, &self.replica);
        if let Err(e) = self
            .layout
            .leases
            .put(&heartbeat, self.replica.clone().into())
            .await
        {
            tracing::warn!(error = %e, "cannot write this replica's heartbeat to NATS");
        }
        self.renew().await;
        self.restart_stopped_consumers();
        self.release_settled().await;
        let Some((alive, leased)) = self.survey().await else {
            return;
        };
        self.metrics
            .replicas_alive
            .store(alive as u64, Ordering::Relaxed);
        let partitions = self.layout.partitions;
        let share = partitions.div_ceil(alive.max(1) as u32) as usize;
        let active: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, h)| h.consumer.is_some())
            .map(|(p, _)| *p)
            .collect();
        if active.len() > share {
            let mut extra = active;
            extra.sort_unstable();
            for p in extra.into_iter().skip(share) {
                self.stop_consuming(p);
                tracing::info!(
                    partition = p,
                    "handing a partition to a replica that joined"
                );
            }
            self.release_settled().await;
        } else if active.len() < share {
            let mut wanted = share - active.len();
            // Start at a place of our own, so replicas do not all race for the same partition.
            let start = super::partition_of(&self.replica, partitions);
            for i in 0..partitions {
                if wanted == 0 {
                    break;
                }
                let p = (start + i) % partitions;
                if leased.contains(&p) || self.held.contains_key(&p) {
                    continue;
                }
                if self.take(p).await {
                    wanted -= 1;
                }
            }
        }
        self.metrics
            .partitions_owned
            .store(self.held.len() as u64, Ordering::Relaxed);
    }

    /// Replicas alive and the partitions leased by anyone, from the bucket's keys of this
    /// destination.
    async fn survey(&self) -> Option<(usize, HashSet<u32>)> {
        let keys = match self.layout.leases.keys().await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the leases from NATS");
                return None;
            }
        };
        // A key written while the listing runs may come twice: count each once.
        let keys: HashSet<String> = keys.filter_map(|k| async { k.ok() }).collect().await;
        let names = &self.layout.names;
        let ours = || keys.iter().filter_map(|k| names.own_key(k));
        let alive = ours().filter(|k| k.starts_with("r.")).count().max(1);
        let leased = ours()
            .filter_map(|k| k.strip_prefix("p.")?.parse().ok())
            .collect();
        Some((alive, leased))
    }

    /// Renews every lease held; lets go of those renewed too long ago or taken by another.
    /// The writes of a round go out together, so it takes one round trip (or one JetStream
    /// timeout, cut off from NATS), not one per partition.
    async fn renew(&mut self) {
        let (leases, names, replica) = (&self.layout.leases, &self.layout.names, &self.replica);
        let renewals = self.held.iter().map(|(&p, held)| {
            let revision = held.revision;
            async move {
                let sent = Instant::now();
                let result = leases
                    .update(lease_key(names, p), replica.clone().into(), revision)
                    .await;
                (p, sent, result)
            }
        });
        let mut failed = Vec::new();
        for (p, sent, result) in futures_util::future::join_all(renewals).await {
            match result {
                Ok(revision) => {
                    if let Some(h) = self.held.get_mut(&p) {
                        h.revision = revision;
                        h.renewed = sent;
                    }
                    self.renewed(p, sent);
                }
                Err(e) => failed.push((p, e)),
            }
        }
        // Expired (NATS was away longer than the lease): taken again where free.
        let (leases, names, replica) = (&self.layout.leases, &self.layout.names, &self.replica);
        let regains = failed.into_iter().map(|(p, e)| async move {
            let sent = Instant::now();
            let regained = leases
                .create(lease_key(names, p), replica.clone().into())
                .await;
            (p, e, sent, regained)
        });
        for (p, e, sent, regained) in futures_util::future::join_all(regains).await {
            match regained {
                Ok(revision) => {
                    // Another replica may have held it meanwhile: what was read under the old
                    // lease is not ours any more. A new tenure reads the partition again from
                    // its oldest unsettled event.
                    tracing::warn!(
                        partition = p,
                        "the lease of a partition had expired; took it again, its unsettled events are read again"
                    );
                    let handing_back = self.held.get(&p).is_some_and(|h| h.consumer.is_none());
                    self.stop_consuming(p);
                    lock(&self.local).end(p);
                    self.held.remove(&p);
                    self.begin(p, revision, sent, !handing_back);
                }
                Err(_) => {
                    let expired = self
                        .held
                        .get(&p)
                        .is_some_and(|h| h.renewed.elapsed() >= self.lease);
                    let taken = matches!(
                        e.kind(),
                        async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
                    );
                    if expired || taken {
                        tracing::warn!(partition = p, error = %e, "lost the lease of a partition; another replica delivers it");
                        self.drop_partition(p);
                    }
                }
            }
        }
    }

    /// Takes a free partition and starts its consumer from the oldest unsettled event.
    async fn take(&mut self, p: u32) -> bool {
        let sent = Instant::now();
        let Ok(revision) = self
            .layout
            .leases
            .create(
                lease_key(&self.layout.names, p),
                self.replica.clone().into(),
            )
            .await
        else {
            return false;
        };
        self.begin(p, revision, sent, true);
        self.metrics.lease_changes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(partition = p, destination = %self.layout.names, "took a partition");
        true
    }

    /// A tenure of `p` starts: its lease (written at `sent`) is held, and its consumer runs
    /// unless `consuming` is false (a partition being handed back: released at once).
    fn begin(&mut self, p: u32, revision: u64, sent: Instant, consuming: bool) {
        let epoch = lock(&self.local).begin(p, sure_until(sent, self.lease));
        self.held.insert(
            p,
            Held {
                revision,
                renewed: sent,
                epoch,
                consumer: consuming.then(|| self.start_consumer(p, epoch)),
            },
        );
    }

    /// A renewal of `p` sent at `sent` succeeded: the fence moves on.
    fn renewed(&mut self, p: u32, sent: Instant) {
        let mut local = lock(&self.local);
        if let Some(tenure) = local.tenures.get_mut(&p) {
            tenure.sure_until = sure_until(sent, self.lease);
            if std::mem::take(&mut tenure.fenced) {
                tracing::info!(
                    partition = p,
                    "renewed the lease of a partition in time; its events are delivered again"
                );
            }
        }
    }

    fn start_consumer(
        &self,
        p: u32,
        epoch: u64,
    ) -> (tokio::task::JoinHandle<()>, watch::Sender<bool>) {
        let (stop, mut stopped) = watch::channel(false);
        let reading = Reading {
            partition: p,
            epoch,
        };
        let (layout, clock, local) = (self.layout.clone(), self.clock.clone(), self.local.clone());
        let (replica, handover, added) = (
            self.replica.clone(),
            self.handover.clone(),
            self.added.clone(),
        );
        let task = tokio::spawn(async move {
            if caught_up(&clock, &layout, reading, &local, &mut stopped).await {
                consume(layout, reading, replica, handover, local, added, stopped).await;
            }
        });
        (task, stop)
    }

    /// A consumer that stopped while its lease is held (another replica held the partition
    /// for a while, when NATS was away) starts again.
    fn restart_stopped_consumers(&mut self) {
        let stopped: Vec<(u32, u64)> = self
            .held
            .iter()
            .filter(|(_, h)| h.consumer.as_ref().is_some_and(|(t, _)| t.is_finished()))
            .map(|(p, h)| (*p, h.epoch))
            .collect();
        for (p, epoch) in stopped {
            let consumer = self.start_consumer(p, epoch);
            if let Some(h) = self.held.get_mut(&p) {
                h.consumer = Some(consumer);
            }
        }
    }

    /// Stops taking events of `p` (those taken are settled, then the lease is released).
    fn stop_consuming(&mut self, p: u32) {
        // The task stops at its next step (not aborted: an event it is handing over is
        // either handed over or forgotten, never left counted as taken).
        if let Some(held) = self.held.get_mut(&p)
            && let Some((_task, stop)) = held.consumer.take()
        {
            let _ = stop.send(true);
        }
    }

    /// Forgets a partition whose lease is gone.
    fn drop_partition(&mut self, p: u32) {
        self.stop_consuming(p);
        self.held.remove(&p);
        lock(&self.local).end(p);
        self.metrics.lease_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Releases the partitions handed back whose events are all settled.
    async fn release_settled(&mut self) {
        let done: Vec<(u32, u64)> = {
            let local = lock(&self.local);
            self.held
                .iter()
                .filter(|(p, h)| {
                    h.consumer.is_none() && local.unsettled.get(p).is_none_or(HashMap::is_empty)
                })
                .map(|(p, h)| (*p, h.revision))
                .collect()
        };
        if !done.is_empty() && !self.clock.written(self.lease / 5).await {
            tracing::warn!(
                "what was applied is still being written to NATS; handing a partition back anyway"
            );
        }
        for (p, revision) in done {
            let _ = self
                .layout
                .leases
                .delete_expect_revision(lease_key(&self.layout.names, p), Some(revision))
                .await;
            self.held.remove(&p);
            lock(&self.local).end(p);
            self.metrics.lease_changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Shutting down: stops every consumer and deletes the leases and the heartbeat.
    async fn hand_back_all(&mut self) {
        let partitions: Vec<u32> = self.held.keys().copied().collect();
        for p in &partitions {
            self.stop_consuming(*p);
        }
        if !self.clock.written(super::holds::CATCH_UP).await {
            tracing::warn!(
                "what was applied is still being written to NATS; handing the partitions over anyway"
            );
        }
        for (p, held) in std::mem::take(&mut self.held) {
            lock(&self.local).end(p);
            let _ = self
                .layout
                .leases
                .delete_expect_revision(lease_key(&self.layout.names, p), Some(held.revision))
                .await;
        }
        let _ = self
            .layout
            .leases
            .delete(heartbeat_key(&self.layout.names, &self.replica))
            .await;
        self.metrics.partitions_owned.store(0, Ordering::Relaxed);
        tracing::info!(
            partitions = partitions.len(),
            "handed this replica's partitions over"
        );
    }
}

/// What a consumer reads: a partition, under a tenure of its lease.
#[derive(Clone, Copy)]
struct Reading {
    partition: u32,
    /// [`super::Tenure::epoch`], given to each event it hands over.
    epoch: u64,
}

/// Waits until the watch of the entities bucket has come as far as the bucket, so that what the
/// partition's previous owner wrote there (the last writes applied to its users) is known here
/// before its first event is read. `false` when the tenure ended or the consumer was stopped
/// meanwhile.
async fn caught_up(
    clock: &NatsClock,
    layout: &Layout,
    Reading {
        partition: p,
        epoch,
    }: Reading,
    local: &Mutex<Local>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    while !clock.caught_up(&layout.js, super::holds::CATCH_UP).await {
        tracing::warn!(
            partition = p,
            "the watch of the entities bucket lags behind; a partition's events wait"
        );
        if !lock(local).lasts(p, epoch) {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return false,
        }
    }
    true
}

/// Reads a partition's events from the oldest unacknowledged one and hands them to the workers,
/// until stopped, or until another replica took the partition over (it deletes this replica's
/// consumer: a replica that lost its lease without noticing yet cannot read on).
async fn consume(
    layout: Layout,
    Reading {
        partition: p,
        epoch,
    }: Reading,
    replica: String,
    handover: mpsc::Sender<Received>,
    local: Arc<Mutex<Local>>,
    added: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    // One consumer per owner: `p<N>-<replica>` (another destination's `<name>@p<N>-<replica>`).
    // A work-queue stream takes one consumer per subject, so the previous owner's is deleted
    // first.
    let prefix = layout.names.consumer_prefix(p);
    let name = format!("{prefix}{}", key_safe(&replica));
    let config = pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: layout.names.events_subject(p),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        // Redelivery to the same consumer is not how events come back (a new consumer is):
        // an event may wait long for its turn.
        ack_wait: Duration::from_secs(3600),
        max_ack_pending: 20_000,
        ..Default::default()
    };
    // Events up to this sequence were handed out by an earlier consumer of the partition.
    let mut handed_out = 0u64;
    // A consumer per connection: events the server sent while the connection broke wait for
    // their acknowledgement until `ack_wait`, so after a reconnection a new consumer reads them
    // again (those still here are not handed over twice).
    'connection: loop {
        // A tenure that ended while the connection was away is another replica's now: its
        // consumer is not deleted from here.
        if !lock(&local).lasts(p, epoch) {
            return;
        }
        let connects = layout.connects();
        let consumer = loop {
            let created = async {
                let names: Vec<String> = layout
                    .events
                    .consumer_names()
                    .filter_map(|n| async { n.ok() })
                    .collect()
                    .await;
                for old in names.iter().filter(|n| n.starts_with(&prefix)) {
                    if let Ok(info) = layout.events.consumer_info(old).await {
                        handed_out = handed_out.max(info.delivered.stream_sequence);
                    }
                    layout
                        .events
                        .delete_consumer(old)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                // A new consumer starts at the oldest event left (acknowledged ones are removed).
                layout
                    .events
                    .create_consumer(config.clone())
                    .await
                    .map_err(|e| e.to_string())
            };
            match created.await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "cannot start a partition's consumer; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        let mut reconnection = tokio::time::interval(RECONNECTION_CHECK);
        loop {
            let mut messages = match consumer.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(partition = p, error = %e, "a partition's consumer stopped; trying again");
                    if taken_over(&layout, &name).await {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    next = messages.next() => next,
                    _ = stop.changed() => return,
                    _ = reconnection.tick() => {
                        if layout.connects() != connects {
                            continue 'connection;
                        }
                        continue;
                    }
                };
                let message = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::debug!(partition = p, error = %e, "reading a partition");
                        if taken_over(&layout, &name).await {
                            return;
                        }
                        continue;
                    }
                    None => break,
                };
                let Ok((sequence, deliveries)) =
                    message.info().map(|i| (i.stream_sequence, i.delivered))
                else {
                    continue;
                };
                let message = match hand_over_once(&local, p, epoch, sequence, message) {
                    HandOver::Fresh(message) => *message,
                    HandOver::InHand => continue,
                    HandOver::TenureEnded => return,
                };
                let received = Received {
                    partition: p,
                    sequence,
                    epoch,
                    message,
                    redelivered: sequence <= handed_out || deliveries > 1,
                };
                tokio::select! {
                    sent = handover.send(received) => if sent.is_err() { return },
                    _ = stop.changed() => {
                        if let Some(set) = lock(&local).unsettled_under(p, epoch) {
                            set.remove(&sequence);
                        }
                        return;
                    }
                }
                added.notify_one();
            }
        }
    }
}

/// How often a consumer checks whether the connection was made again.
const RECONNECTION_CHECK: Duration = Duration::from_millis(500);

/// What becomes of a message a consumer read.
enum HandOver {
    /// Handed to the workers.
    Fresh(Box<async_nats::jetstream::Message>),
    /// Its event is in this replica's hands already; the message's acknowledgement is kept for
    /// when it is settled (this consumer may be the only one left that can remove it).
    InHand,
    /// The tenure the consumer reads under has ended: the consumer stops, and its events are
    /// not counted under the tenure that follows (they would never leave it).
    TenureEnded,
}

fn hand_over_once(
    local: &Mutex<Local>,
    p: u32,
    epoch: u64,
    sequence: u64,
    message: async_nats::jetstream::Message,
) -> HandOver {
    let mut local = lock(local);
    if !local.lasts(p, epoch) {
        return HandOver::TenureEnded;
    }
    match local.unsettled.entry(p).or_default().entry(sequence) {
        Entry::Vacant(slot) => {
            slot.insert(None);
            HandOver::Fresh(Box::new(message))
        }
        Entry::Occupied(mut slot) => {
            slot.insert(Some(message.split().1));
            HandOver::InHand
        }
    }
}

/// Whether this replica's consumer was deleted (by a replica that took the partition).
async fn taken_over(layout: &Layout, name: &str) -> bool {
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    matches!(
        layout
            .events
            .consumer_info(name)
            .await
            .map_err(|e| e.kind()),
        Err(ConsumerInfoErrorKind::NotFound)
    )
}

/// A key token: NATS keys take `[-/_=.a-zA-Z0-9]`.
fn key_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| key_safe(h.trim()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "zdmap".into())
}
