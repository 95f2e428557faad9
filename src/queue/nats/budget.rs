//! One request budget for all replicas of a destination (a Zendesk account), in the `zdmap`
//! bucket: each destination has its own keys ([`Names::key`]: the default's as below,
//! another's `d.<name>.budget` and `d.<name>.pause`), so one account's requests and pauses
//! never hold up another's.
//!
//! - `budget`: a token bucket for the whole account (`{"tokens": T, "at_ms": MS}`): it fills at
//!   `requests_per_minute` a minute up to a sixth of a minute's worth, as the budget of one
//!   process does ([`crate::deliver::budget`]). A replica takes a few tokens at a time by
//!   compare-and-set on the key's revision, so together the replicas stay within the budget
//!   however many there are. Tokens a replica took and did not use within a second are dropped.
//! - `pause`: the end of a pause (ms since the epoch). A replica that gets a 429 with
//!   `Retry-After` writes it (it only ever moves later); every replica watches the key and
//!   pauses too.
//!
//! When NATS cannot be reached for a few seconds, a replica goes on within its own budget.

use super::names::Names;
use crate::base::sync::lock;
use crate::deliver::Budget;
use crate::deliver::budget::SharedAllowance;
use async_nats::jetstream::kv;
use futures_util::StreamExt as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

const BUDGET_KEY: &str = "budget";
const PAUSE_KEY: &str = "pause";
/// Tokens taken and not used within this are dropped (they would make a burst later).
const HOLD_TOKENS: Duration = Duration::from_secs(1);

#[derive(serde::Serialize, serde::Deserialize)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// The shared allowance of one destination in one replica.
pub struct NatsAllowance {
    settings: kv::Store,
    /// The destination's token bucket key.
    budget_key: String,
    /// The destination's pause key.
    pause_key: String,
    requests_per_minute: Option<u32>,
    held: Mutex<(u32, Instant)>,
    taking: tokio::sync::Mutex<()>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for NatsAllowance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAllowance")
            .field("requests_per_minute", &self.requests_per_minute)
            .finish()
    }
}

fn now_ms() -> u64 {
    crate::base::time::unix_millis_now()
}

impl NatsAllowance {
    /// Shares `budget`, the budget of the destination of `names`, with the other replicas: its
    /// requests take tokens of the destination's common bucket, its pauses are told to them and
    /// theirs heard.
    pub fn share(settings: kv::Store, names: &Names, budget: &Arc<Budget>) -> Arc<NatsAllowance> {
        let pause_key = names.key(PAUSE_KEY);
        let allowance = Arc::new(NatsAllowance {
            settings: settings.clone(),
            budget_key: names.key(BUDGET_KEY),
            pause_key: pause_key.clone(),
            requests_per_minute: budget.requests_per_minute(),
            held: Mutex::new((0, Instant::now())),
            taking: tokio::sync::Mutex::new(()),
            watcher: Mutex::new(None),
        });
        let watcher = tokio::spawn(watch_pauses(settings, pause_key, Arc::downgrade(budget)));
        *lock(&allowance.watcher) = Some(watcher);
        budget.share(allowance.clone());
        allowance
    }

    /// Takes one token held, if any is left and fresh.
    fn take_held(&self) -> bool {
        let mut held = lock(&self.held);
        if held.0 > 0 && held.1.elapsed() < HOLD_TOKENS {
            held.0 -= 1;
            true
        } else {
            false
        }
    }

    /// Takes a chunk from the common bucket: `Ok(n)` tokens, or how long to wait for them.
    async fn take_chunk(&self, rpm: u32) -> Result<Result<u32, Duration>, String> {
        let capacity = f64::from((rpm / 6).max(1));
        let per_ms = f64::from(rpm) / 60_000.0;
        // A tenth of a second's worth, at least one, at most the burst.
        let chunk = f64::from((rpm / 600).max(1)).min(capacity);
        loop {
            let entry = self
                .settings
                .entry(&self.budget_key)
                .await
                .map_err(|e| e.to_string())?
                .filter(|e| e.operation == kv::Operation::Put);
            let now = now_ms();
            let (tokens, revision) = match &entry {
                Some(e) => {
                    let b: Option<Bucket> = serde_json::from_slice(&e.value).ok();
                    let tokens = b.map_or(capacity, |b| {
                        let elapsed = now.saturating_sub(b.at_ms) as f64;
                        (b.tokens + elapsed * per_ms).min(capacity)
                    });
                    (tokens, Some(e.revision))
                }
                None => (capacity, None),
            };
            if tokens < chunk {
                let wait = ((chunk - tokens) / per_ms).ceil().max(1.0) as u64;
                return Ok(Err(Duration::from_millis(wait)));
            }
            let value = serde_json::to_vec(&Bucket {
                tokens: tokens - chunk,
                at_ms: now,
            })
            .unwrap_or_default();
            let written = match revision {
                Some(r) => self
                    .settings
                    .update(&self.budget_key, value.into(), r)
                    .await
                    .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
                None => self
                    .settings
                    .create(&self.budget_key, value.into())
                    .await
                    .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
            };
            match written {
                Ok(_) => return Ok(Ok(chunk as u32)),
                // Another replica took tokens meanwhile: read again.
                Err(true) => continue,
                Err(false) => return Err("cannot write the shared budget".into()),
            }
        }
    }
}

impl Drop for NatsAllowance {
    fn drop(&mut self) {
        if let Some(w) = lock(&self.watcher).take() {
            w.abort();
        }
    }
}

impl SharedAllowance for NatsAllowance {
    fn take(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let Some(rpm) = self.requests_per_minute else {
                return;
            };
            let mut failures = 0;
            loop {
                if self.take_held() {
                    return;
                }
                let _one_at_a_time = self.taking.lock().await;
                if self.take_held() {
                    return;
                }
                match self.take_chunk(rpm).await {
                    Ok(Ok(n)) => {
                        *lock(&self.held) = (n.saturating_sub(1), Instant::now());
                        return;
                    }
                    Ok(Err(wait)) => {
                        drop(_one_at_a_time);
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures >= 5 {
                            tracing::warn!(error = %e, "the shared request budget cannot be read; this replica goes on within its own");
                            return;
                        }
                        drop(_one_at_a_time);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
    }

    fn pause_until(&self, until: SystemTime) {
        let until_ms = until
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (settings, key) = (self.settings.clone(), self.pause_key.clone());
        tokio::spawn(async move {
            for _ in 0..10 {
                let entry = settings.entry(&key).await.ok().flatten();
                let current = entry
                    .as_ref()
                    .filter(|e| e.operation == kv::Operation::Put)
                    .and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<u64>().ok());
                if current.is_some_and(|c| c >= until_ms) {
                    return;
                }
                let value = until_ms.to_string();
                let written = match entry {
                    Some(e) => settings
                        .update(&key, value.into(), e.revision)
                        .await
                        .is_ok(),
                    None => settings.create(&key, value.into()).await.is_ok(),
                };
                if written {
                    return;
                }
            }
        });
    }
}

/// Pauses this replica's destination whenever another replica writes a later pause of it (at
/// `key`).
async fn watch_pauses(settings: kv::Store, key: String, budget: Weak<Budget>) {
    loop {
        if let Ok(mut watch) = settings.watch(&key).await {
            while let Some(Ok(entry)) = watch.next().await {
                let Some(budget) = budget.upgrade() else {
                    return;
                };
                let until = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                let left = until.saturating_sub(now_ms());
                if left > 0 {
                    tracing::info!(
                        seconds = left as f64 / 1000.0,
                        "a replica was told to wait (429): pausing too"
                    );
                    budget.pause_here(Instant::now() + Duration::from_millis(left));
                }
            }
        }
        if budget.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
