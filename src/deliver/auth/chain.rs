//! A refresh-token chain and where it is kept.
//!
//! Zendesk rotates a chain on every refresh: the answer holds a new access token and a new
//! refresh token, and the previous pair stops working at once. So the pair is state that must
//! survive a crash and that every process using the chain must share:
//! - [`Chain`] is the pair, its expiry, and what this process knows about it (a refresh whose
//!   answer was lost, a chain Zendesk refused, a refresh under way elsewhere).
//! - [`ChainStore`] keeps one chain with a revision, and writes it only if the revision is
//!   still the one read (compare-and-set). [`FileStore`] is a file written whole (temporary
//!   file, fsync, rename, mode 0600) under a lock file; the NATS queue has a key-value one.
//!
//! The tokens are secrets: [`Chain`] holds them in [`Secret`]s, and only the stores'
//! serialized form ([`StoredChain`]) carries them in the clear, to the file or the bucket.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::Secret;

/// The name of the token store in a data directory.
pub const STORE_FILE: &str = "oauth-tokens.json";

/// The form a store's content is written in.
const FORMAT: &str = "zdmap-oauth-chain/1";

/// One refresh-token chain: the current pair and what is known about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The OAuth client's unique identifier (not a secret).
    pub client_id: String,
    /// The scopes the chain was granted, space-separated.
    pub scope: String,
    pub access_token: Secret,
    /// When the access token stops working; `None`: it does not expire.
    pub access_expires_at: Option<SystemTime>,
    pub refresh_token: Secret,
    /// When the refresh token stops working; `None`: not said.
    pub refresh_expires_at: Option<SystemTime>,
    /// When the pair was issued.
    pub issued_at: SystemTime,
    /// Zendesk refused the refresh token: why, and that a person must log in again.
    pub login_needed: Option<String>,
    /// A refresh was sent and its answer lost: Zendesk may have rotated the chain already.
    pub in_doubt: bool,
    /// A process is refreshing the chain: who, and until when the others leave it to it.
    pub refreshing: Option<Claim>,
}

/// A process's claim to refresh a chain, so that one refresh goes out at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub holder: String,
    pub until: SystemTime,
}

impl Chain {
    /// Whether another process holds a claim on the chain that has not run out at `now`.
    pub(crate) fn claimed_by_other(&self, holder: &str, now: SystemTime) -> bool {
        self.refreshing
            .as_ref()
            .is_some_and(|c| c.holder != holder && c.until > now)
    }
}

/// A chain and the revision it was read at.
#[derive(Clone, Debug)]
pub struct Versioned {
    pub chain: Chain,
    pub revision: u64,
}

/// Why a store could not be read or written. Never carries a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The chain changed since it was read (another process wrote it).
    #[error("the token store changed since it was read")]
    Conflict,
    #[error("the token store {place} cannot be used: {reason}")]
    Unusable { place: String, reason: String },
}

/// Where a chain is kept. Writes are compare-and-set on the revision read.
pub trait ChainStore: Send + Sync + std::fmt::Debug {
    /// The chain, or `None` when nobody has logged in.
    fn read(&self) -> BoxFuture<'_, Result<Option<Versioned>, StoreError>>;
    /// Writes `chain` if the store is still at `expected` (`None`: whatever it holds) and
    /// returns the new revision; [`StoreError::Conflict`] otherwise.
    fn write<'a>(
        &'a self,
        chain: &'a Chain,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// Where the chain is, for messages: a path or a bucket, never a token.
    fn place(&self) -> String;
}

/// The chain as a store writes it: tokens in the clear, times in Unix seconds.
#[derive(Serialize, Deserialize)]
pub struct StoredChain {
    format: String,
    client_id: String,
    scope: String,
    access_token: String,
    #[serde(default)]
    access_expires_at: Option<u64>,
    refresh_token: String,
    #[serde(default)]
    refresh_expires_at: Option<u64>,
    issued_at: u64,
    #[serde(default)]
    login_needed: Option<String>,
    #[serde(default)]
    in_doubt: bool,
    #[serde(default)]
    refreshing: Option<StoredClaim>,
}

#[derive(Serialize, Deserialize)]
struct StoredClaim {
    holder: String,
    /// Unix milliseconds.
    until_ms: u64,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_secs(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

impl StoredChain {
    pub fn from_chain(c: &Chain) -> StoredChain {
        StoredChain {
            format: FORMAT.to_string(),
            client_id: c.client_id.clone(),
            scope: c.scope.clone(),
            access_token: c.access_token.expose().to_string(),
            access_expires_at: c.access_expires_at.map(unix_secs),
            refresh_token: c.refresh_token.expose().to_string(),
            refresh_expires_at: c.refresh_expires_at.map(unix_secs),
            issued_at: unix_secs(c.issued_at),
            login_needed: c.login_needed.clone(),
            in_doubt: c.in_doubt,
            refreshing: c.refreshing.as_ref().map(|claim| StoredClaim {
                holder: claim.holder.clone(),
                until_ms: unix_ms(claim.until),
            }),
        }
    }

    pub(crate) fn into_chain(self) -> Result<Chain, String> {
        if self.format != FORMAT {
            return Err(format!("written in form {:?}, not {FORMAT:?}", self.format));
        }
        Ok(Chain {
            client_id: self.client_id,
            scope: self.scope,
            access_token: Secret::new(self.access_token),
            access_expires_at: self.access_expires_at.map(from_secs),
            refresh_token: Secret::new(self.refresh_token),
            refresh_expires_at: self.refresh_expires_at.map(from_secs),
            issued_at: from_secs(self.issued_at),
            login_needed: self.login_needed,
            in_doubt: self.in_doubt,
            refreshing: self.refreshing.map(|c| Claim {
                holder: c.holder,
                until: UNIX_EPOCH + Duration::from_millis(c.until_ms),
            }),
        })
    }

    /// The JSON bytes a store keeps.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Reads a store's bytes; the reason never quotes them (they hold tokens).
    pub fn from_bytes(bytes: &[u8]) -> Result<Chain, String> {
        serde_json::from_slice::<StoredChain>(bytes)
            .map_err(|e| {
                format!(
                    "not a token store ({} at line {})",
                    e.classify_name(),
                    e.line()
                )
            })?
            .into_chain()
    }
}

/// `serde_json`'s error kinds by name (its messages may quote the input).
trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "fields missing or of the wrong type",
            serde_json::error::Category::Eof => "cut short",
        }
    }
}

/// A chain in a file of its own. The revision is the file's: a write under the lock file
/// compares it, then replaces the file whole, so a reader (or a crash at any moment) sees the
/// old pair or the new one, never half of either.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

/// The file with its revision.
#[derive(Serialize, Deserialize)]
struct FileContent {
    revision: u64,
    #[serde(flatten)]
    chain: StoredChain,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unusable(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Unusable {
            place: self.path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    fn read_now(&self) -> Result<Option<Versioned>, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.unusable(e)),
        };
        let content: FileContent = serde_json::from_slice(&bytes).map_err(|e| {
            self.unusable(format!(
                "not a token store ({} at line {})",
                e.classify_name(),
                e.line()
            ))
        })?;
        let chain = content
            .chain
            .into_chain()
            .map_err(|reason| self.unusable(reason))?;
        Ok(Some(Versioned {
            chain,
            revision: content.revision,
        }))
    }

    fn write_now(&self, chain: &Chain, expected: Option<u64>) -> Result<u64, StoreError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| self.unusable(e))?;
        let _lock = self.lock()?;
        let current = self.read_now()?.map_or(0, |v| v.revision);
        if expected.is_some_and(|e| e != current) {
            return Err(StoreError::Conflict);
        }
        let revision = current + 1;
        let content = FileContent {
            revision,
            chain: StoredChain::from_chain(chain),
        };
        let bytes = serde_json::to_vec_pretty(&content).map_err(|e| self.unusable(e))?;
        let name = self
            .path
            .file_name()
            .map_or_else(|| "tokens".into(), |n| n.to_string_lossy().into_owned());
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let written = (|| -> std::io::Result<()> {
            let mut file = private_file(&temp)?;
            file.write_all(&bytes)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)?;
            // The rename itself is durable only once the directory is.
            std::fs::File::open(&dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(self.unusable(e));
        }
        Ok(revision)
    }

    /// An exclusive lock on `PATH.lock`, held while a write compares and replaces.
    fn lock(&self) -> Result<std::fs::File, StoreError> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(name))
            .map_err(|e| self.unusable(e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.unusable(e))?;
        Ok(file)
    }
}

/// A new file only its owner may read and write (0600), truncated if it was there.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::File::options();
    options.create(true).write(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

impl ChainStore for FileStore {
    fn read(&self) -> BoxFuture<'_, Result<Option<Versioned>, StoreError>> {
        let store = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.read_now())
                .await
                .unwrap_or_else(|e| {
                    Err(StoreError::Unusable {
                        place: "the token store".into(),
                        reason: e.to_string(),
                    })
                })
        })
    }

    fn write<'a>(
        &'a self,
        chain: &'a Chain,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let store = self.clone();
        let chain = chain.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.write_now(&chain, expected))
                .await
                .unwrap_or_else(|e| {
                    Err(StoreError::Unusable {
                        place: "the token store".into(),
                        reason: e.to_string(),
                    })
                })
        })
    }

    fn place(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(access: &str) -> Chain {
        Chain {
            client_id: "zdmap".into(),
            scope: "read write".into(),
            access_token: Secret::new(access),
            access_expires_at: Some(from_secs(2_000_000_000)),
            refresh_token: Secret::new(format!("refresh-{access}")),
            refresh_expires_at: None,
            issued_at: from_secs(1_900_000_000),
            login_needed: None,
            in_doubt: false,
            refreshing: Some(Claim {
                holder: "replica-a".into(),
                until: UNIX_EPOCH + Duration::from_millis(1_900_000_000_123),
            }),
        }
    }

    #[tokio::test]
    async fn a_file_store_compares_the_revision_and_keeps_the_file_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path().join("sub").join(STORE_FILE));
        assert!(store.read().await.expect("read").is_none());
        let first = store.write(&chain("a1"), Some(0)).await.expect("create");
        assert_eq!(first, 1);
        assert_eq!(
            store.write(&chain("a2"), Some(0)).await,
            Err(StoreError::Conflict)
        );
        let second = store.write(&chain("a2"), Some(1)).await.expect("update");
        let read = store.read().await.expect("read").expect("there");
        assert_eq!(read.revision, second);
        assert_eq!(read.chain, chain("a2"));
        let unconditional = store.write(&chain("a3"), None).await.expect("put");
        assert_eq!(unconditional, 3);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(store.path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn a_broken_store_is_reported_without_its_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STORE_FILE);
        std::fs::write(
            &path,
            "{\"revision\": 1, \"access_token\": \"s3cr3t-value\"",
        )
        .expect("w");
        let err = FileStore::new(&path).read().await.expect_err("broken");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    #[test]
    fn a_chain_debug_shows_no_token() {
        let text = format!("{:?}", chain("s3cr3t-access"));
        assert!(!text.contains("s3cr3t"), "{text}");
    }
}
