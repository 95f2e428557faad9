//! The OAuth refresh-token chain of every replica, in the key-value bucket `zdmap_oauth`: one
//! chain per destination (Zendesk account), the default's at the key `chain`, another's at
//! `d.<name>.chain` ([`super::names::Names::key`]).
//!
//! Zendesk rotates a chain on every refresh and drops the pair before it, so replicas that
//! refreshed on their own would lock each other out. They share the chain here instead: a
//! write names the revision it read (JetStream's compare-and-set), so one replica claims the
//! chain and refreshes it, and the others read the new pair. The value is the same JSON a
//! token-store file holds; it carries the tokens, so the NATS account must be protected like
//! the secrets themselves (credentials, TLS).

use futures_util::future::BoxFuture;

use super::names::Names;
use super::{Bucket, NatsOptions, connect, ensure_bucket};
use crate::deliver::auth::chain::{Chain, ChainStore, StoreError, StoredChain, Versioned};
use crate::queue::QueueError;
use async_nats::jetstream::{self, kv};

/// The bucket of the chain.
pub(crate) const TOKENS_BUCKET: &str = "zdmap_oauth";
/// The chain's key, before its destination's prefix.
const CHAIN_KEY: &str = "chain";

/// The chain of one destination in NATS.
#[derive(Clone)]
pub struct KvChainStore {
    store: kv::Store,
    /// The destination's key.
    key: String,
    place: String,
}

impl std::fmt::Debug for KvChainStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvChainStore")
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

impl KvChainStore {
    /// Connects and opens the bucket, creating it when missing, for the chain of
    /// `options.destination`.
    pub async fn open(options: &NatsOptions) -> Result<KvChainStore, QueueError> {
        let names = Names::of(&options.destination)?;
        let client = connect(options).await?;
        let js = jetstream::new(client);
        let store = ensure_bucket(
            &js,
            Bucket {
                name: TOKENS_BUCKET,
                max_age: std::time::Duration::ZERO,
                max_keys: 0,
                replicas: options.replicas,
            },
        )
        .await?;
        let key = names.key(CHAIN_KEY);
        let place = if names.is_default() {
            format!(
                "the NATS key-value bucket {TOKENS_BUCKET} ({})",
                super::shown_list(&options.servers)
            )
        } else {
            format!(
                "the NATS key-value bucket {TOKENS_BUCKET}, key {key} ({})",
                super::shown_list(&options.servers)
            )
        };
        Ok(KvChainStore { store, key, place })
    }

    fn unusable(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Unusable {
            place: self.place.clone(),
            reason: reason.to_string(),
        }
    }
}

impl ChainStore for KvChainStore {
    fn read(&self) -> BoxFuture<'_, Result<Option<Versioned>, StoreError>> {
        Box::pin(async move {
            let Some(entry) = self
                .store
                .entry(&self.key)
                .await
                .map_err(|e| self.unusable(e))?
            else {
                return Ok(None);
            };
            if !matches!(entry.operation, kv::Operation::Put) {
                return Ok(None);
            }
            let chain = StoredChain::from_bytes(&entry.value).map_err(|r| self.unusable(r))?;
            Ok(Some(Versioned {
                chain,
                revision: entry.revision,
            }))
        })
    }

    fn write<'a>(
        &'a self,
        chain: &'a Chain,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let bytes = StoredChain::from_chain(chain).to_bytes();
            match expected {
                None => self
                    .store
                    .put(&self.key, bytes.into())
                    .await
                    .map_err(|e| self.unusable(e)),
                Some(0) => self
                    .store
                    .create(&self.key, bytes.into())
                    .await
                    .map_err(|e| match e.kind() {
                        kv::CreateErrorKind::AlreadyExists => StoreError::Conflict,
                        _ => self.unusable(e),
                    }),
                Some(revision) => self
                    .store
                    .update(&self.key, bytes.into(), revision)
                    .await
                    .map_err(|e| match e.kind() {
                        kv::UpdateErrorKind::WrongLastRevision => StoreError::Conflict,
                        _ => self.unusable(e),
                    }),
            }
        })
    }

    fn place(&self) -> String {
        self.place.clone()
    }
}
