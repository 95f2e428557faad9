//! The `Authorization` header of each request, kept valid.
//!
//! An [`Authorizer`] holds the credentials a client sends with. A fixed credential (an API
//! token, a pasted OAuth access token) is one header. An OAuth grant is a [`Renewer`]: it asks
//! Zendesk's token endpoint for an access token and asks again before the token expires:
//! - the token is renewed when a fifth of its lifetime is left (at most five minutes before it
//!   expires), plus a random part, so replicas and restarts do not renew together;
//! - one renewal is under way at a time. While it runs, requests go on with the old token if
//!   it still works, and wait for the new one if it does not;
//! - a 401 on a token that should still work ([`Authorizer::rejected`]) renews once; the caller
//!   sends again once;
//! - a refused client or a spent chain is remembered, so Zendesk is not asked again in a loop
//!   (whoever waits on it says it once: serve's delivery, send's summary, `zdmap auth`); a spent chain waits for a person to log in again (the store is read
//!   again on each try, so a new login is picked up without a restart).
//!
//! A refresh-token chain lives in a [`ChainStore`](super::ChainStore) shared by every process that uses it. A
//! process claims the chain in the store (compare-and-set) before it refreshes; the others read
//! the new pair from the store. The new pair is written to the store before it is used.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng as _;
use reqwest::header::HeaderValue;

use super::chain::{Chain, Claim, StoreError};
use super::endpoint::{Grant, Issued, TokenEndpoint, TokenError};
use super::{ChainSource, Credentials, OAuthClient, Secret};

/// How long a process's claim to refresh a chain keeps the others away.
const CLAIM_FOR: Duration = Duration::from_secs(30);
/// After a refusal, how long the same answer is given without asking Zendesk again.
const REFUSAL_REMEMBERED: Duration = Duration::from_secs(5);
/// How long a token that still works is used before a failed renewal is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(2);
/// How often a process waiting for another's refresh reads the store again.
const CLAIM_POLL: Duration = Duration::from_millis(100);

/// Counters of token requests and the state of the credentials, for `/metrics`.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Token requests answered with a token.
    pub issued: AtomicU64,
    /// Token requests Zendesk refused (wrong client, spent chain, ...).
    pub refused: AtomicU64,
    /// Token requests with no usable answer.
    pub failed: AtomicU64,
    /// Requests answered 401 whose token was renewed and which were sent again.
    pub renewed_after_401: AtomicU64,
    /// Refresh-token chains found spent (`invalid_grant`).
    pub invalid_grant: AtomicU64,
    /// 1 while a person must log in again.
    pub login_needed: AtomicU64,
    /// 1 while Zendesk refuses the OAuth client.
    pub client_refused: AtomicU64,
    /// When the access token in use expires (Unix seconds; 0: none or not expiring).
    pub expires_at: AtomicU64,
}

/// Why no `Authorization` header can be had now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// Zendesk refused the OAuth client (its id or secret): fix them.
    Refused(String),
    /// The refresh-token chain is gone: a person must run `zdmap auth login` again.
    LoginNeeded(String),
    /// The token endpoint gave no usable answer: try again later.
    Unavailable(String),
}

impl AuthFailure {
    pub fn message(&self) -> &str {
        match self {
            AuthFailure::Refused(m) | AuthFailure::LoginNeeded(m) | AuthFailure::Unavailable(m) => {
                m
            }
        }
    }
}

/// A header to send, and which token it carries (to report a 401 on it).
#[derive(Clone, Debug)]
pub struct Authorization {
    pub header: HeaderValue,
    lease: Option<(Arc<Renewer>, u64)>,
}

/// The credentials a client sends with; replaced on a reload.
#[derive(Debug)]
pub struct Authorizer {
    endpoint: TokenEndpoint,
    source: RwLock<Source>,
    stats: Arc<AuthStats>,
}

#[derive(Clone, Debug)]
enum Source {
    Fixed {
        credentials: Credentials,
        header: Option<HeaderValue>,
    },
    Renewed {
        credentials: Credentials,
        renewer: Arc<Renewer>,
    },
}

impl Source {
    fn credentials(&self) -> &Credentials {
        match self {
            Source::Fixed { credentials, .. } | Source::Renewed { credentials, .. } => credentials,
        }
    }
}

impl Authorizer {
    /// Credentials for the account at `endpoint`.
    pub fn new(endpoint: TokenEndpoint, credentials: Credentials) -> Authorizer {
        let stats = Arc::new(AuthStats::default());
        let source = Self::source(&endpoint, &stats, credentials);
        Authorizer {
            endpoint,
            source: RwLock::new(source),
            stats,
        }
    }

    fn source(
        endpoint: &TokenEndpoint,
        stats: &Arc<AuthStats>,
        credentials: Credentials,
    ) -> Source {
        let grant = match &credentials {
            Credentials::OAuthClient(client) => Some(Kind::Client(client.clone())),
            Credentials::OAuthChain(chain) => Some(Kind::Chain(chain.clone())),
            Credentials::ApiToken { .. } | Credentials::OAuth { .. } => None,
        };
        match grant {
            Some(kind) => Source::Renewed {
                credentials,
                renewer: Arc::new(Renewer::new(kind, endpoint.clone(), stats.clone())),
            },
            None => Source::Fixed {
                header: credentials.fixed_header(),
                credentials,
            },
        }
    }

    /// Sends later requests with `credentials`. The same credentials again (a reload that
    /// changed nothing) keep the token in hand.
    pub fn set(&self, credentials: Credentials) {
        let mut source = self
            .source
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *source.credentials() != credentials {
            *source = Self::source(&self.endpoint, &self.stats, credentials);
        }
    }

    /// The credentials in use.
    pub fn credentials(&self) -> Credentials {
        self.current().credentials().clone()
    }

    pub fn stats(&self) -> &Arc<AuthStats> {
        &self.stats
    }

    /// Whether Zendesk now refuses the OAuth client or the chain is spent.
    pub fn refused(&self) -> bool {
        self.stats.client_refused.load(Ordering::Relaxed) == 1
            || self.stats.login_needed.load(Ordering::Relaxed) == 1
    }

    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    fn current(&self) -> Source {
        self.source
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The header for the next request, renewing the token first when it is due.
    pub async fn authorize(&self) -> Result<Authorization, AuthFailure> {
        match self.current() {
            Source::Fixed { header, .. } => header
                .map(|header| Authorization {
                    header,
                    lease: None,
                })
                .ok_or_else(|| {
                    AuthFailure::Refused(
                        "the credentials cannot go in an Authorization header".into(),
                    )
                }),
            Source::Renewed { renewer, .. } => renewer.authorize().await,
        }
    }

    /// Zendesk answered 401 to a request sent with `authorization`: true when its token was
    /// renewable, so the next [`Authorizer::authorize`] gets a new one and the request may be
    /// sent once more.
    pub(crate) fn rejected(&self, authorization: &Authorization) -> bool {
        let Some((renewer, generation)) = &authorization.lease else {
            return false;
        };
        renewer.rejected(*generation);
        self.stats.renewed_after_401.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// What a renewer asks tokens with.
#[derive(Clone, Debug)]
enum Kind {
    Client(OAuthClient),
    Chain(ChainSource),
}

/// The token in hand.
#[derive(Clone, Debug)]
struct Held {
    token: Secret,
    header: HeaderValue,
    renew_at: SystemTime,
    expires_at: Option<SystemTime>,
    generation: u64,
}

/// One OAuth grant's access tokens, renewed before they expire.
#[derive(Debug)]
pub(crate) struct Renewer {
    kind: Kind,
    endpoint: TokenEndpoint,
    held: Mutex<Option<Held>>,
    renewing: tokio::sync::Mutex<()>,
    /// The last refusal and when it came.
    refused: Mutex<Option<(AuthFailure, Instant)>>,
    /// This process, in claims on a shared chain.
    holder: String,
    generation: AtomicU64,
    stats: Arc<AuthStats>,
}

/// How long before expiry a token of `lifetime` is renewed, before the random part.
fn margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(300))
}

impl Renewer {
    fn new(kind: Kind, endpoint: TokenEndpoint, stats: Arc<AuthStats>) -> Renewer {
        let holder = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            rand::rng().random::<u32>()
        );
        Renewer {
            kind,
            endpoint,
            held: Mutex::new(None),
            renewing: tokio::sync::Mutex::new(()),
            refused: Mutex::new(None),
            holder,
            generation: AtomicU64::new(0),
            stats,
        }
    }

    fn held(&self) -> Option<Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn authorization(self: &Arc<Self>, held: &Held) -> Authorization {
        Authorization {
            header: held.header.clone(),
            lease: Some((self.clone(), held.generation)),
        }
    }

    async fn authorize(self: &Arc<Self>) -> Result<Authorization, AuthFailure> {
        let now = SystemTime::now();
        let held = self.held();
        if let Some(h) = &held {
            if now < h.renew_at {
                return Ok(self.authorization(h));
            }
            let alive = h.expires_at.is_none_or(|e| now < e);
            if alive {
                // Due but still working: one request renews, the others go on with it.
                let Ok(_renewing) = self.renewing.try_lock() else {
                    return Ok(self.authorization(h));
                };
                return match self.renew(Some(&h.token)).await {
                    Ok(new) => Ok(self.authorization(&new)),
                    Err(AuthFailure::Unavailable(_)) => {
                        // The token endpoint is down: the token in hand serves meanwhile, and
                        // the next try waits a little, not for every request.
                        self.renew_later(h.generation);
                        Ok(self.authorization(h))
                    }
                    Err(e) => Err(e),
                };
            }
        }
        let _renewing = self.renewing.lock().await;
        if let Some(h) = self.held()
            && SystemTime::now() < h.renew_at
        {
            return Ok(self.authorization(&h));
        }
        let stale = held.map(|h| h.token);
        self.renew(stale.as_ref())
            .await
            .map(|new| self.authorization(&new))
    }

    /// Puts off renewing the token of `generation` by [`RENEW_RETRY`].
    fn renew_later(&self, generation: u64) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = held.as_mut()
            && h.generation == generation
        {
            h.renew_at = SystemTime::now() + RENEW_RETRY;
        }
    }

    fn rejected(&self, generation: u64) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = held.as_mut()
            && h.generation == generation
        {
            h.renew_at = UNIX_EPOCH;
            h.expires_at = Some(UNIX_EPOCH);
        }
    }

    /// Gets a new token (the caller holds `renewing`). `stale`: the token found due or refused.
    async fn renew(&self, stale: Option<&Secret>) -> Result<Held, AuthFailure> {
        if let Some((failure, at)) = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            && at.elapsed() < REFUSAL_REMEMBERED
        {
            return Err(failure);
        }
        let result = match &self.kind {
            Kind::Client(client) => self.client_credentials(client).await,
            Kind::Chain(chain) => self.refresh(chain, stale).await,
        };
        self.note(&result);
        result
    }

    /// Logs a change of state once, and remembers a refusal.
    fn note(&self, result: &Result<Held, AuthFailure>) {
        let mut refused = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = refused.as_ref().map(|(f, _)| f.clone());
        match result {
            Ok(held) => {
                if before.is_some() {
                    tracing::info!("Zendesk issued an OAuth access token again; delivery goes on");
                }
                *refused = None;
                self.stats.login_needed.store(0, Ordering::Relaxed);
                self.stats.client_refused.store(0, Ordering::Relaxed);
                let expires = held
                    .expires_at
                    .and_then(|e| e.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                self.stats.expires_at.store(expires, Ordering::Relaxed);
            }
            Err(failure @ (AuthFailure::Refused(m) | AuthFailure::LoginNeeded(m))) => {
                // Said once by whoever waits on it (serve's delivery, send's summary, `auth`).
                if before.as_ref() != Some(failure) {
                    tracing::debug!("{m}");
                }
                let gauge = match failure {
                    AuthFailure::LoginNeeded(_) => &self.stats.login_needed,
                    _ => &self.stats.client_refused,
                };
                gauge.store(1, Ordering::Relaxed);
                *refused = Some((failure.clone(), Instant::now()));
            }
            Err(AuthFailure::Unavailable(m)) => {
                tracing::warn!("no OAuth access token now, delivery will try again: {m}");
            }
        }
    }

    /// Puts `token` in hand, renewed at a random point of the last part of its life.
    fn hold(&self, token: &Secret, issued_at: SystemTime, expires_at: Option<SystemTime>) -> Held {
        let renew_at = match expires_at {
            None => SystemTime::now() + Duration::from_secs(365 * 86_400),
            Some(expires) => {
                let lifetime = expires.duration_since(issued_at).unwrap_or_default();
                let spread = (lifetime / 10).min(Duration::from_secs(60));
                let jitter = spread.mul_f64(rand::rng().random::<f64>());
                expires
                    .checked_sub(margin(lifetime) + jitter)
                    .unwrap_or(issued_at)
            }
        };
        let mut header = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
        header.set_sensitive(true);
        let held = Held {
            token: token.clone(),
            header,
            renew_at,
            expires_at,
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
        };
        *self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(held.clone());
        held
    }

    async fn client_credentials(&self, client: &OAuthClient) -> Result<Held, AuthFailure> {
        let grant = Grant::ClientCredentials {
            scope: &client.scope,
        };
        match self
            .endpoint
            .request(&grant, &client.id, Some(&client.secret), client.lifetime)
            .await
        {
            Ok(issued) => {
                self.stats.issued.fetch_add(1, Ordering::Relaxed);
                Ok(self.hold(&issued.access_token, issued.issued_at, issued.expires_at))
            }
            Err(e @ TokenError::Refused { .. }) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(client_refused(&e, &client.id, &client.hint))
            }
            Err(e @ TokenError::Unavailable { .. }) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                Err(AuthFailure::Unavailable(e.to_string()))
            }
        }
    }

    /// Refreshes a shared chain: adopts a pair another process wrote, or claims the chain,
    /// refreshes it, and writes the new pair before using it.
    async fn refresh(
        &self,
        source: &ChainSource,
        stale: Option<&Secret>,
    ) -> Result<Held, AuthFailure> {
        let store = &source.store;
        let unusable = |e: StoreError| AuthFailure::Unavailable(e.to_string());
        let waited_until = Instant::now() + CLAIM_FOR + Duration::from_secs(5);
        loop {
            let now = SystemTime::now();
            let Some(read) = store.read().await.map_err(unusable)? else {
                return Err(AuthFailure::LoginNeeded(format!(
                    "no OAuth tokens in {}: a person must run `zdmap auth login` first",
                    store.place()
                )));
            };
            let chain = read.chain;
            if let Some(why) = &chain.login_needed {
                return Err(AuthFailure::LoginNeeded(why.clone()));
            }
            if Some(&chain.access_token) != stale && fresh(&chain, now) {
                return Ok(self.hold(
                    &chain.access_token,
                    chain.issued_at,
                    chain.access_expires_at,
                ));
            }
            if chain.claimed_by_other(&self.holder, now) {
                if Instant::now() > waited_until {
                    return Err(AuthFailure::Unavailable(format!(
                        "another process has been refreshing the OAuth tokens in {} for over {CLAIM_FOR:?}",
                        store.place()
                    )));
                }
                tokio::time::sleep(CLAIM_POLL).await;
                continue;
            }
            let mut claimed = chain.clone();
            claimed.refreshing = Some(Claim {
                holder: self.holder.clone(),
                until: now + CLAIM_FOR,
            });
            let revision = match store.write(&claimed, Some(read.revision)).await {
                Ok(r) => r,
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(unusable(e)),
            };
            let grant = Grant::RefreshToken {
                refresh_token: &chain.refresh_token,
            };
            let answer = self
                .endpoint
                .request(
                    &grant,
                    &chain.client_id,
                    source.secret.as_ref(),
                    source.lifetime,
                )
                .await;
            return self.settle(source, chain, revision, answer).await;
        }
    }

    /// Writes what a refresh came to, then answers with the new token or the failure.
    async fn settle(
        &self,
        source: &ChainSource,
        chain: Chain,
        revision: u64,
        answer: Result<Issued, TokenError>,
    ) -> Result<Held, AuthFailure> {
        let store = &source.store;
        let mut next = chain.clone();
        next.refreshing = None;
        let failure = match answer {
            Ok(issued) => {
                self.stats.issued.fetch_add(1, Ordering::Relaxed);
                next = Chain {
                    client_id: chain.client_id.clone(),
                    scope: if issued.scope.is_empty() {
                        chain.scope.clone()
                    } else {
                        issued.scope
                    },
                    access_token: issued.access_token,
                    access_expires_at: issued.expires_at,
                    // Zendesk always sends a new one; without it the old one is all there is.
                    refresh_token: issued.refresh_token.unwrap_or(chain.refresh_token),
                    refresh_expires_at: issued.refresh_expires_at.or(chain.refresh_expires_at),
                    issued_at: issued.issued_at,
                    login_needed: None,
                    in_doubt: false,
                    refreshing: None,
                };
                // The old pair is gone at Zendesk: the new one is kept before it is used. A
                // conflict means our claim ran out and someone wrote meanwhile; ours is the
                // live pair all the same.
                let saved = match store.write(&next, Some(revision)).await {
                    Err(StoreError::Conflict) => store.write(&next, None).await,
                    other => other,
                };
                if let Err(e) = saved {
                    tracing::error!(
                        "the new OAuth tokens could not be saved ({e}); they are used from memory, and a restart before they are saved needs a new `zdmap auth login`"
                    );
                }
                return Ok(self.hold(&next.access_token, next.issued_at, next.access_expires_at));
            }
            Err(TokenError::Refused { code, .. }) if code == "invalid_grant" => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                self.stats.invalid_grant.fetch_add(1, Ordering::Relaxed);
                let why = if chain.in_doubt {
                    "the answer to an earlier refresh of the OAuth tokens was lost after Zendesk had rotated them, so the chain is gone"
                } else {
                    "Zendesk refused the OAuth refresh token (spent, revoked or expired)"
                };
                let message = format!(
                    "{why}: a person must run `zdmap auth login` again (token store {}); a new login is picked up without a restart",
                    store.place()
                );
                next.login_needed = Some(message.clone());
                AuthFailure::LoginNeeded(message)
            }
            Err(e @ TokenError::Refused { .. }) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                client_refused(&e, &chain.client_id, &source.hint)
            }
            Err(e @ TokenError::Unavailable { maybe_applied, .. }) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                next.in_doubt |= maybe_applied;
                AuthFailure::Unavailable(e.to_string())
            }
        };
        if let Err(e) = store.write(&next, Some(revision)).await {
            tracing::warn!("the OAuth token store could not be updated: {e}");
        }
        Err(failure)
    }
}

/// Zendesk refused the OAuth client `id` as `refusal` says; `hint` names what to check.
fn client_refused(refusal: &TokenError, id: &str, hint: &str) -> AuthFailure {
    AuthFailure::Refused(format!(
        "{refusal}; the OAuth client is {id:?}: check {hint}"
    ))
}

/// Whether a chain's access token is good for more than its renewal margin at `now`.
fn fresh(chain: &Chain, now: SystemTime) -> bool {
    match chain.access_expires_at {
        None => true,
        Some(expires) => {
            let lifetime = expires.duration_since(chain.issued_at).unwrap_or_default();
            now + margin(lifetime) < expires
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "zdmap".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::auth::FileStore;
    use std::sync::atomic::AtomicUsize;

    /// A token endpoint that answers every request with a new token of `lifetime` seconds (or
    /// `status` with an OAuth error), counting the requests and the refresh tokens it saw.
    struct FakeEndpoint {
        url: Url,
        requests: Arc<AtomicUsize>,
        refreshes: Arc<Mutex<Vec<String>>>,
    }

    use reqwest::Url;

    async fn fake(lifetime: u64, status: u16, delay: Duration) -> FakeEndpoint {
        let requests = Arc::new(AtomicUsize::new(0));
        let refreshes = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (requests.clone(), refreshes.clone());
        let app = axum::Router::new().route(
            "/oauth/tokens",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(r) = body["refresh_token"].as_str() {
                    seen.lock().expect("lock").push(r.to_string());
                }
                async move {
                    tokio::time::sleep(delay).await;
                    let code = axum::http::StatusCode::from_u16(status).expect("status");
                    let body = if status < 300 {
                        serde_json::json!({"access_token": format!("access-{n}"), "refresh_token": format!("refresh-{n}"), "token_type": "bearer", "scope": "read write", "expires_in": lifetime})
                    } else {
                        serde_json::json!({"error": "invalid_client", "error_description": "Client authentication failed"})
                    };
                    (code, axum::Json(body))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url =
            Url::parse(&format!("http://{}", listener.local_addr().expect("addr"))).expect("url");
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeEndpoint {
            url,
            requests,
            refreshes,
        }
    }

    fn authorizer(endpoint: &FakeEndpoint, credentials: Credentials) -> Arc<Authorizer> {
        let endpoint = TokenEndpoint::new(reqwest::Client::new(), &endpoint.url).expect("endpoint");
        Arc::new(Authorizer::new(endpoint, credentials))
    }

    fn client() -> Credentials {
        Credentials::OAuthClient(OAuthClient {
            id: "pipeline".into(),
            secret: Secret::new("s3cr3t"),
            scope: "read write".into(),
            lifetime: None,
            hint: "the test's variables".into(),
        })
    }

    async fn authorize_all(
        auth: &Arc<Authorizer>,
        n: usize,
    ) -> Vec<Result<Authorization, AuthFailure>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.authorize().await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    }

    #[tokio::test]
    async fn many_requests_at_once_wait_for_one_token_request() {
        let endpoint = fake(3600, 201, Duration::from_millis(50)).await;
        let auth = authorizer(&endpoint, client());
        let all = authorize_all(&auth, 40).await;
        assert!(all.iter().all(Result::is_ok));
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 1);
        let header = all[0].as_ref().expect("ok").header.clone();
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().expect("ascii"), "Bearer access-1");
    }

    #[tokio::test]
    async fn a_401_renews_once_for_every_request_that_carried_the_token() {
        let endpoint = fake(3600, 201, Duration::ZERO).await;
        let auth = authorizer(&endpoint, client());
        let first = auth.authorize().await.expect("token");
        // Two requests with the same token come back 401: one renewal.
        assert!(auth.rejected(&first));
        assert!(auth.rejected(&first));
        let all = authorize_all(&auth, 10).await;
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 2);
        assert!(all.iter().all(|a| {
            a.as_ref()
                .is_ok_and(|a| a.header.to_str().ok() == Some("Bearer access-2"))
        }));
        assert_eq!(auth.stats().renewed_after_401.load(Ordering::SeqCst), 2);
        // A fixed credential has nothing to renew.
        let fixed = authorizer(&endpoint, Credentials::oauth("fixed"));
        let a = fixed.authorize().await.expect("fixed");
        assert!(!fixed.rejected(&a));
    }

    #[tokio::test]
    async fn a_token_endpoint_that_is_down_is_not_asked_by_every_request() {
        // Tokens of 10 s are due for renewal at once (their margin is most of their life)
        // while they still work; the endpoint then fails.
        let endpoint = fake(3, 201, Duration::ZERO).await;
        let auth = authorizer(&endpoint, client());
        auth.authorize().await.expect("first token");
        let down = fake(3, 503, Duration::ZERO).await;
        let auth_down = {
            let endpoint = TokenEndpoint::new(reqwest::Client::new(), &down.url).expect("url");
            let source = auth.current();
            let Source::Renewed { renewer, .. } = source else {
                panic!("renewed")
            };
            // The same token in hand, the endpoint down.
            let moved = Renewer::new(renewer.kind.clone(), endpoint, auth.stats.clone());
            *moved.held.lock().expect("lock") = renewer.held();
            Arc::new(moved)
        };
        for _ in 0..5 {
            if let Some(h) = auth_down.held.lock().expect("lock").as_mut() {
                h.renew_at = UNIX_EPOCH;
            }
            auth_down.authorize().await.expect("the old token serves");
            // Without the retry delay every request would ask again.
            for _ in 0..10 {
                auth_down.authorize().await.expect("the old token serves");
            }
        }
        assert_eq!(
            down.requests.load(Ordering::SeqCst),
            5,
            "one try per due time, not per request"
        );
    }

    #[tokio::test]
    async fn a_refused_client_is_said_once_and_not_asked_again_at_once() {
        let endpoint = fake(3600, 401, Duration::ZERO).await;
        let auth = authorizer(&endpoint, client());
        let all = authorize_all(&auth, 20).await;
        for a in &all {
            let Err(AuthFailure::Refused(message)) = a else {
                panic!("not refused: {a:?}");
            };
            assert!(message.contains("invalid_client"), "{message}");
            assert!(!message.contains("s3cr3t"), "{message}");
        }
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 1);
        assert_eq!(auth.stats().client_refused.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_chain_is_refreshed_once_written_before_use_and_shared_with_a_second_process() {
        let endpoint = fake(3600, 201, Duration::from_millis(20)).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn super::super::ChainStore> =
            Arc::new(FileStore::new(dir.path().join("t.json")));
        let now = SystemTime::now();
        let expired = Chain {
            client_id: "app".into(),
            scope: "read write".into(),
            access_token: Secret::new("access-0"),
            access_expires_at: Some(now - Duration::from_secs(1)),
            refresh_token: Secret::new("refresh-0"),
            refresh_expires_at: None,
            issued_at: now - Duration::from_secs(3600),
            login_needed: None,
            in_doubt: false,
            refreshing: None,
        };
        store.write(&expired, None).await.expect("seed");
        let chain = |store: &Arc<dyn super::super::ChainStore>| {
            Credentials::OAuthChain(ChainSource {
                store: store.clone(),
                secret: None,
                lifetime: None,
                hint: "the secret's variable".into(),
            })
        };
        // Two processes (two authorizers) over one store.
        let a = authorizer(&endpoint, chain(&store));
        let b = authorizer(&endpoint, chain(&store));
        let (ra, rb) = tokio::join!(authorize_all(&a, 10), authorize_all(&b, 10));
        assert!(ra.iter().chain(&rb).all(Result::is_ok));
        assert_eq!(
            endpoint.requests.load(Ordering::SeqCst),
            1,
            "one refresh for both"
        );
        assert_eq!(
            *endpoint.refreshes.lock().expect("lock"),
            vec!["refresh-0".to_string()]
        );
        let saved = store.read().await.expect("read").expect("chain").chain;
        assert_eq!(saved.refresh_token.expose(), "refresh-1");
        assert_eq!(saved.access_token.expose(), "access-1");
        assert!(saved.refreshing.is_none());
        // A 401 on the new token makes one of them refresh with the new refresh token.
        let token = a.authorize().await.expect("token");
        assert!(a.rejected(&token));
        a.authorize().await.expect("renewed");
        assert_eq!(
            *endpoint.refreshes.lock().expect("lock"),
            vec!["refresh-0".to_string(), "refresh-1".to_string()]
        );
    }
}
