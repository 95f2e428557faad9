//! Zendesk's OAuth as a client meets it: the token endpoint (`POST /oauth/tokens`), the
//! authorization endpoint (`GET /oauth/authorizations/new`, approved at once since nobody is
//! there to ask), the tokens they issue, how an API request carrying one is judged (lifetime,
//! rotation, scopes), `GET /api/v2/oauth/tokens/current`, and the counts behind
//! `GET /__emulator/oauth`.
//!
//! What Zendesk does, and so the emulator:
//! - Three grants. `client_credentials`: a confidential client's id and secret buy an access
//!   token (no refresh token), `read` unless a scope is named. `authorization_code`: a code is
//!   good once, for 120 seconds, for the client it was issued to and with the `redirect_uri` of
//!   its authorization; a code issued with a PKCE challenge (S256 only) wants the matching
//!   `code_verifier`, and then the client's secret may be left out. `refresh_token`: a live
//!   refresh token of the same client. The last two also answer a refresh token: a chain
//!   starts with the code, and each refresh issues a new pair and deletes the pair it
//!   replaces, so a refresh token works exactly once.
//! - A token answer is 201 `{access_token, token_type: "bearer", scope, expires_in}`, plus
//!   `refresh_token` and `refresh_token_expires_in` for the chains. Refusals use the OAuth
//!   envelope `{error, error_description}`: 401 `invalid_client`, 400 `invalid_grant`,
//!   `unsupported_grant_type` (also for a missing grant type), `invalid_request`.
//! - On the API, `read` covers GET and `write` the other methods; `users:read`,
//!   `tickets:write`… do the same on one resource. A scope word Zendesk does not know is kept on
//!   the token and grants nothing (Zendesk issues the token anyway). `users/me` and
//!   `oauth/tokens/current` need no scope. Beyond its scopes a token gets 403; past its
//!   lifetime or replaced by a refresh, Zendesk's 401.
//!
//! Tokens and codes are kept by the SHA-256 of their text, never the text, so no dump or
//! `Debug` can show one; of an access token only the first 10 characters, which Zendesk itself
//! shows in `tokens/current`, are kept. The tables are bounded: entries dead for a week of the
//! emulator's clock are forgotten, and at most [`CAP`] of each kind are kept (the oldest go).
//! The random texts come from an RNG seeded with `--seed`, so runs repeat.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::http::{HeaderMap, Uri};
use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::auth::Principal;
use super::errors::{ApiError, ApiResult, Reply, ReplyBody};
use super::limits::{OAuthClient, RuntimeKnobs};
use super::router::{ApiRequest, World, parse_query};

/// Most entries kept per table (access tokens, refresh tokens, codes).
const CAP: usize = 100_000;
/// How long a revoked or expired token is remembered (and answered 401 as such).
const KEEP_DEAD: Duration = Duration::from_secs(7 * 86_400);
/// The forgetting above runs at most this often, unless a table is full.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Zendesk's authorization codes are good for 120 seconds.
const CODE_LIFETIME: Duration = Duration::from_secs(120);
/// Longest lifetime a token request (or knob) may ask for: ten years.
pub(crate) const MAX_LIFETIME_SECS: u64 = 315_360_000;
/// Length of every token and code the emulator draws.
const TEXT_LEN: usize = 40;
/// What `tokens/current` shows of a token.
const PREFIX_LEN: usize = 10;
/// The user every token belongs to, as `tokens/current` says.
const TOKEN_USER_ID: u64 = 1;
/// Mixed into `--seed`, so the texts are not the same draws as the account's ids.
const RNG_STREAM: u64 = 0x006f_6175_7468;

const INVALID_CLIENT: &str = "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method.";
const INVALID_GRANT: &str = "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client.";
const UNSUPPORTED_GRANT_TYPE: &str =
    "The authorization grant type is not supported by the authorization server.";

/// Parameters of `/oauth/...` requests whose values the request log never shows.
const SECRET_PARAMS: &[&str] = &[
    "client_secret",
    "code",
    "code_verifier",
    "refresh_token",
    "access_token",
];

type Digest = [u8; 32];

fn digest(text: &str) -> Digest {
    Sha256::digest(text.as_bytes()).into()
}

/// Records found by the digest of their secret text, numbered in the order they were made.
#[derive(Debug)]
struct Ledger<T> {
    ids: HashMap<Digest, u64>,
    records: BTreeMap<u64, (Digest, T)>,
    next: u64,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Ledger {
            ids: HashMap::new(),
            records: BTreeMap::new(),
            next: 1,
        }
    }
}

impl<T> Ledger<T> {
    /// Keeps `record` under the digest of `text`; gives its number.
    fn insert(&mut self, text: &str, record: T) -> u64 {
        let id = self.next;
        self.next += 1;
        let d = digest(text);
        if let Some(old) = self.ids.insert(d, id) {
            self.records.remove(&old);
        }
        self.records.insert(id, (d, record));
        id
    }

    fn find(&self, text: &str) -> Option<u64> {
        self.ids.get(&digest(text)).copied()
    }

    fn get(&self, id: u64) -> Option<&T> {
        self.records.get(&id).map(|(_, r)| r)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        self.records.get_mut(&id).map(|(_, r)| r)
    }

    fn remove(&mut self, id: u64) -> Option<T> {
        let (d, record) = self.records.remove(&id)?;
        self.ids.remove(&d);
        Some(record)
    }

    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let ids = &mut self.ids;
        self.records.retain(|_, (d, record)| {
            let kept = keep(record);
            if !kept {
                ids.remove(d);
            }
            kept
        });
    }

    /// Forgets the oldest records beyond `cap`.
    fn trim(&mut self, cap: usize) {
        while self.records.len() > cap {
            let Some((_, (d, _))) = self.records.pop_first() else {
                break;
            };
            self.ids.remove(&d);
        }
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.records.values().map(|(_, r)| r)
    }
}

/// An access token the emulator issued. Times are on the emulator's clock.
#[derive(Debug, Clone)]
struct Access {
    client: String,
    client_number: u64,
    /// The first characters of the token, which `tokens/current` shows.
    prefix: String,
    scopes: Vec<String>,
    issued: Duration,
    expires: Duration,
    revoked: Option<Duration>,
    used: Option<Duration>,
}

/// A refresh token, with the access token issued beside it (its pair in the chain).
#[derive(Debug, Clone)]
struct Refresh {
    client: String,
    scopes: Vec<String>,
    expires: Duration,
    revoked: Option<Duration>,
    access: u64,
}

/// An authorization code waiting to be exchanged.
#[derive(Debug, Clone)]
struct Code {
    client: String,
    redirect_uri: String,
    scopes: Vec<String>,
    /// The PKCE S256 challenge, when the authorization sent one.
    challenge: Option<String>,
    issued: Duration,
}

fn live(revoked: Option<Duration>, expires: Duration, now: Duration) -> bool {
    revoked.is_none() && now < expires
}

fn dead_since(revoked: Option<Duration>, expires: Duration) -> Duration {
    revoked.map_or(expires, |r| r.min(expires))
}

/// Why a token request is refused, one per OAuth error code.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    InvalidClient,
    InvalidGrant,
    UnsupportedGrantType,
    InvalidRequest(String),
}

impl Refusal {
    fn reply(&self) -> Reply {
        let err = match self {
            Refusal::InvalidClient => ApiError::oauth(401, "invalid_client", INVALID_CLIENT),
            Refusal::InvalidGrant => ApiError::oauth(400, "invalid_grant", INVALID_GRANT),
            Refusal::UnsupportedGrantType => {
                ApiError::oauth(400, "unsupported_grant_type", UNSUPPORTED_GRANT_TYPE)
            }
            Refusal::InvalidRequest(why) => ApiError::oauth(400, "invalid_request", why.clone()),
        };
        err.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    ClientCredentials,
    AuthorizationCode,
    RefreshToken,
}

/// What `/__emulator/oauth` counts.
#[derive(Debug, Default, Clone)]
struct Counts {
    client_credentials: u64,
    authorization_code: u64,
    refresh_token: u64,
    invalid_client: u64,
    invalid_grant: u64,
    unsupported_grant_type: u64,
    invalid_request: u64,
    expired: u64,
    revoked: u64,
    out_of_scope: u64,
}

impl Counts {
    fn refused(&mut self, refusal: &Refusal) {
        let n = match refusal {
            Refusal::InvalidClient => &mut self.invalid_client,
            Refusal::InvalidGrant => &mut self.invalid_grant,
            Refusal::UnsupportedGrantType => &mut self.unsupported_grant_type,
            Refusal::InvalidRequest(_) => &mut self.invalid_request,
        };
        *n += 1;
    }
}

/// How an API request's bearer token fares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judgement {
    /// Issued here and live: the access token's id.
    Live(u64),
    /// Issued here, but expired, replaced by a refresh, or its client is gone: 401.
    Refused,
    /// Not issued here: the static policy decides.
    Unknown,
}

/// The parameters of a token request (JSON or form body). Empty values count as absent.
#[derive(Debug, Default)]
struct Params(HashMap<String, String>);

impl Params {
    fn parse(headers: &HeaderMap, bytes: &[u8]) -> Result<Params, String> {
        if is_form(headers) {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| "The request body is not UTF-8".to_string())?;
            return Ok(Params(parse_query(text).into_iter().collect()));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Params::default());
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("The request body is not valid JSON: {e}"))?;
        let Value::Object(obj) = value else {
            return Err("The request body must be a JSON object".into());
        };
        let mut params = HashMap::new();
        for (key, value) in obj {
            let text = match value {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                // `scope` may come as a list of words.
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
                Value::Null | Value::Object(_) => continue,
            };
            params.insert(key, text);
        }
        Ok(Params(params))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    fn need(&self, key: &str) -> Result<&str, Refusal> {
        self.get(key)
            .ok_or_else(|| Refusal::InvalidRequest(format!("Missing required parameter: {key}.")))
    }

    /// A lifetime in seconds (`expires_in`, `refresh_token_expires_in`), when asked for.
    fn lifetime(&self, key: &str) -> Result<Option<u64>, Refusal> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIFETIME_SECS).contains(n))
                    .ok_or_else(|| {
                        Refusal::InvalidRequest(format!(
                            "{key} must be a whole number of seconds from 1 to {MAX_LIFETIME_SECS}."
                        ))
                    })
            })
            .transpose()
    }
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

/// The words of a `scope` parameter, each once, in order.
fn scopes_of(text: &str) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        if !scopes.iter().any(|s| s == word) {
            scopes.push(word.to_string());
        }
    }
    scopes
}

/// Whether `verifier` answers the S256 `challenge`: BASE64URL-NOPAD(SHA256(verifier)).
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    computed.as_bytes().ct_eq(challenge.as_bytes()).into()
}

/// The resource a granular scope names for an API path, from its first segment.
fn resource_of(first_segment: &str) -> Option<&'static str> {
    match first_segment {
        "users" | "user_fields" => Some("users"),
        "organizations" | "organization_fields" | "organization_memberships" => {
            Some("organizations")
        }
        "tickets" => Some("tickets"),
        _ => None,
    }
}

/// Whether `scopes` cover `method` on the API path `segments` (after `/api/v2/`).
fn permits(scopes: &[String], method: &str, segments: &[String]) -> bool {
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    if method == "GET" && (segs == ["users", "me"] || segs == ["oauth", "tokens", "current"]) {
        return true;
    }
    let action = if matches!(method, "GET" | "HEAD") {
        "read"
    } else {
        "write"
    };
    let resource = segs.first().and_then(|s| resource_of(s));
    scopes.iter().any(|scope| {
        scope == action || resource.is_some_and(|r| scope.split_once(':') == Some((r, action)))
    })
}

/// The bearer token of an `Authorization` header, if it is one.
pub(crate) fn bearer(header: Option<&str>) -> Option<&str> {
    let (scheme, rest) = header?.trim().split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The account's OAuth state: codes, tokens, counts.
pub(crate) struct OAuth {
    seed: u64,
    rng: StdRng,
    codes: Ledger<Code>,
    access: Ledger<Access>,
    refresh: Ledger<Refresh>,
    /// The integer id each client is shown by (`tokens/current`), given on its first token.
    client_numbers: BTreeMap<String, u64>,
    counts: Counts,
    last_sweep: Duration,
}

impl OAuth {
    pub(crate) fn new(seed: u64) -> OAuth {
        OAuth {
            seed,
            rng: StdRng::seed_from_u64(seed ^ RNG_STREAM),
            codes: Ledger::default(),
            access: Ledger::default(),
            refresh: Ledger::default(),
            client_numbers: BTreeMap::new(),
            counts: Counts::default(),
            last_sweep: Duration::ZERO,
        }
    }

    /// Forgets codes, tokens and counts (`POST /__emulator/reset`) and draws from the seed
    /// again; the clients (knobs) keep their numbers.
    pub(crate) fn reset(&mut self) {
        let numbers = std::mem::take(&mut self.client_numbers);
        *self = OAuth::new(self.seed);
        self.client_numbers = numbers;
    }

    fn random_text(&mut self) -> String {
        const ALPHANUMERIC: &[u8] =
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        (0..TEXT_LEN)
            .map(|_| ALPHANUMERIC[self.rng.random_range(0..ALPHANUMERIC.len())] as char)
            .collect()
    }

    fn client_number(&mut self, client: &str) -> u64 {
        let next = self.client_numbers.len() as u64 + 1;
        *self
            .client_numbers
            .entry(client.to_string())
            .or_insert(next)
    }

    /// Forgets what is long dead and keeps each table under [`CAP`], leaving room for one more.
    fn sweep(&mut self, now: Duration) {
        let full = [self.access.len(), self.refresh.len(), self.codes.len()]
            .iter()
            .any(|n| *n >= CAP);
        if !full && now.saturating_sub(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        let gone = |dead: Duration| now.saturating_sub(dead) >= KEEP_DEAD;
        self.access
            .retain(|a| !gone(dead_since(a.revoked, a.expires)));
        self.refresh
            .retain(|r| !gone(dead_since(r.revoked, r.expires)));
        self.codes
            .retain(|c| now.saturating_sub(c.issued) <= CODE_LIFETIME);
        self.access.trim(CAP - 1);
        self.refresh.trim(CAP - 1);
        self.codes.trim(CAP - 1);
    }

    // ---- the token endpoint ----

    /// `POST /oauth/tokens`: 201 with the tokens, or the refusal (counted either way).
    fn token_request(
        &mut self,
        headers: &HeaderMap,
        bytes: &[u8],
        knobs: &RuntimeKnobs,
        now: Duration,
    ) -> Reply {
        let answer = Params::parse(headers, bytes)
            .map_err(Refusal::InvalidRequest)
            .and_then(|params| self.token(&params, knobs, now));
        match answer {
            // The answer carries credentials: no cache may keep it (RFC 6749 §5.1).
            Ok(body) => Reply::json(201, body)
                .header("Cache-Control", "no-store")
                .header("Pragma", "no-cache"),
            Err(refusal) => {
                self.counts.refused(&refusal);
                refusal.reply()
            }
        }
    }

    /// One token request: the answer's JSON, or why it is refused.
    fn token(
        &mut self,
        params: &Params,
        knobs: &RuntimeKnobs,
        now: Duration,
    ) -> Result<Value, Refusal> {
        let grant = match params.get("grant_type") {
            Some("client_credentials") => Grant::ClientCredentials,
            Some("authorization_code") => Grant::AuthorizationCode,
            Some("refresh_token") => Grant::RefreshToken,
            _ => return Err(Refusal::UnsupportedGrantType),
        };
        *match grant {
            Grant::ClientCredentials => &mut self.counts.client_credentials,
            Grant::AuthorizationCode => &mut self.counts.authorization_code,
            Grant::RefreshToken => &mut self.counts.refresh_token,
        } += 1;
        self.sweep(now);
        let (client, secret_sent) = authenticate(params, &knobs.oauth_clients)?;
        let access_secs = params
            .lifetime("expires_in")?
            .unwrap_or(knobs.access_token_lifetime_secs);
        let refresh_secs = params
            .lifetime("refresh_token_expires_in")?
            .unwrap_or(knobs.refresh_token_lifetime_secs);
        match grant {
            Grant::ClientCredentials => {
                // Only a client that proves itself with its secret.
                if !secret_sent {
                    return Err(Refusal::InvalidClient);
                }
                let scopes = scopes_of(params.get("scope").unwrap_or("read"));
                let (text, _) = self.issue_access(&client.id, scopes.clone(), access_secs, now);
                Ok(token_json(&text, &scopes, access_secs))
            }
            Grant::AuthorizationCode => {
                let text = params.need("code")?;
                let redirect_uri = params.need("redirect_uri")?;
                let id = self.codes.find(text).ok_or(Refusal::InvalidGrant)?;
                let code = self.codes.get(id).ok_or(Refusal::InvalidGrant)?;
                let good = now.saturating_sub(code.issued) <= CODE_LIFETIME
                    && code.client == client.id
                    && code.redirect_uri == redirect_uri;
                if !good {
                    return Err(Refusal::InvalidGrant);
                }
                match &code.challenge {
                    Some(challenge) => {
                        let verifier = params.get("code_verifier").ok_or(Refusal::InvalidGrant)?;
                        if !pkce_matches(verifier, challenge) {
                            return Err(Refusal::InvalidGrant);
                        }
                    }
                    // Without PKCE the client must prove itself with its secret.
                    None if !secret_sent => return Err(Refusal::InvalidClient),
                    None => {}
                }
                let scopes = params
                    .get("scope")
                    .map(scopes_of)
                    .unwrap_or_else(|| code.scopes.clone());
                self.codes.remove(id);
                Ok(self.issue_pair(&client.id, scopes, access_secs, refresh_secs, now))
            }
            Grant::RefreshToken => {
                let text = params.need("refresh_token")?;
                let id = self.refresh.find(text).ok_or(Refusal::InvalidGrant)?;
                let old = self
                    .refresh
                    .get_mut(id)
                    .filter(|r| live(r.revoked, r.expires, now) && r.client == client.id)
                    .ok_or(Refusal::InvalidGrant)?;
                // Rotation: the pair being replaced stops working now.
                old.revoked = Some(now);
                let (scopes, paired) = (old.scopes.clone(), old.access);
                if let Some(access) = self.access.get_mut(paired) {
                    access.revoked.get_or_insert(now);
                }
                Ok(self.issue_pair(&client.id, scopes, access_secs, refresh_secs, now))
            }
        }
    }

    fn issue_access(
        &mut self,
        client: &str,
        scopes: Vec<String>,
        secs: u64,
        now: Duration,
    ) -> (String, u64) {
        let text = self.random_text();
        let client_number = self.client_number(client);
        let record = Access {
            client: client.to_string(),
            client_number,
            prefix: text.chars().take(PREFIX_LEN).collect(),
            scopes,
            issued: now,
            expires: now.saturating_add(Duration::from_secs(secs)),
            revoked: None,
            used: None,
        };
        let id = self.access.insert(&text, record);
        (text, id)
    }

    /// An access token and a refresh token beside it: the answer's JSON.
    fn issue_pair(
        &mut self,
        client: &str,
        scopes: Vec<String>,
        access_secs: u64,
        refresh_secs: u64,
        now: Duration,
    ) -> Value {
        let (access_text, access) = self.issue_access(client, scopes.clone(), access_secs, now);
        let refresh_text = self.random_text();
        let mut body = token_json(&access_text, &scopes, access_secs);
        self.refresh.insert(
            &refresh_text,
            Refresh {
                client: client.to_string(),
                scopes,
                expires: now.saturating_add(Duration::from_secs(refresh_secs)),
                revoked: None,
                access,
            },
        );
        body["refresh_token"] = json!(refresh_text);
        body["refresh_token_expires_in"] = json!(refresh_secs);
        body
    }

    // ---- the authorization endpoint ----

    /// `GET /oauth/authorizations/new`: approved at once, a 302 to `redirect_uri` with the code
    /// (and the `state` sent); a request Zendesk would not show a person is 400.
    fn authorize(
        &mut self,
        query: &[(String, String)],
        clients: &[OAuthClient],
        now: Duration,
    ) -> Reply {
        let q = |key: &str| {
            query
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let refuse = |error: &str, why: &str| ApiError::oauth(400, error, why).0;
        if q("response_type") != Some("code") {
            return refuse("unsupported_response_type", "response_type must be code.");
        }
        let Some(client) = q("client_id").and_then(|id| clients.iter().find(|c| c.id == id)) else {
            return refuse("invalid_client", "Unknown client_id.");
        };
        let Some(redirect_uri) = q("redirect_uri") else {
            return refuse(
                "invalid_request",
                "Missing required parameter: redirect_uri.",
            );
        };
        if !redirect_uri.bytes().all(|b| b.is_ascii_graphic()) || redirect_uri.contains('#') {
            return refuse(
                "invalid_request",
                "redirect_uri must be an absolute URI without a fragment.",
            );
        }
        let challenge = q("code_challenge");
        match (challenge, q("code_challenge_method")) {
            (Some(_), Some("S256")) | (None, None) => {}
            (None, Some(_)) => {
                return refuse(
                    "invalid_request",
                    "Missing required parameter: code_challenge.",
                );
            }
            (Some(_), _) => {
                return refuse("invalid_request", "code_challenge_method must be S256.");
            }
        }
        if client.secret.is_none() && challenge.is_none() {
            return refuse(
                "invalid_request",
                "A client without a secret must send a code_challenge (PKCE).",
            );
        }
        self.sweep(now);
        let text = self.random_text();
        self.codes.insert(
            &text,
            Code {
                client: client.id.clone(),
                redirect_uri: redirect_uri.to_string(),
                scopes: scopes_of(q("scope").unwrap_or("read")),
                challenge: challenge.map(str::to_string),
                issued: now,
            },
        );
        let joiner = if redirect_uri.contains('?') { '&' } else { '?' };
        let mut location = format!("{redirect_uri}{joiner}code={text}");
        if let Some(state) = q("state") {
            location.push_str("&state=");
            location.push_str(&enc(state));
        }
        Reply {
            status: 302,
            headers: vec![("Location".to_string(), location)],
            body: ReplyBody::Empty,
        }
    }

    // ---- API requests carrying a token ----

    /// Judges the bearer token of an API request at `now` (counting refusals), and marks a
    /// live one used.
    pub(crate) fn judge(
        &mut self,
        bearer: &str,
        clients: &[OAuthClient],
        now: Duration,
    ) -> Judgement {
        let Some(id) = self.access.find(bearer) else {
            return Judgement::Unknown;
        };
        let Some(token) = self.access.get_mut(id) else {
            return Judgement::Unknown;
        };
        // Zendesk deletes a client's tokens with the client.
        if token.revoked.is_some() || !clients.iter().any(|c| c.id == token.client) {
            self.counts.revoked += 1;
            return Judgement::Refused;
        }
        if now >= token.expires {
            self.counts.expired += 1;
            return Judgement::Refused;
        }
        token.used = Some(now);
        Judgement::Live(id)
    }

    /// Whether the issued access token `id` may make this API request (a refusal is counted).
    pub(crate) fn allows(&mut self, id: u64, method: &str, segments: &[String]) -> bool {
        let ok = self
            .access
            .get(id)
            .is_some_and(|token| permits(&token.scopes, method, segments));
        if !ok {
            self.counts.out_of_scope += 1;
        }
        ok
    }

    /// The JSON of `GET /__emulator/oauth`.
    pub(crate) fn stats(&self, now: Duration) -> Value {
        let c = &self.counts;
        json!({
            "token_requests": {
                "client_credentials": c.client_credentials,
                "authorization_code": c.authorization_code,
                "refresh_token": c.refresh_token,
            },
            "refused": {
                "invalid_client": c.invalid_client,
                "invalid_grant": c.invalid_grant,
                "unsupported_grant_type": c.unsupported_grant_type,
                "invalid_request": c.invalid_request,
            },
            "expired_token_rejections": c.expired,
            "revoked_token_rejections": c.revoked,
            "scope_rejections": c.out_of_scope,
            "live_access_tokens": self.access.values().filter(|a| live(a.revoked, a.expires, now)).count(),
            "live_refresh_tokens": self.refresh.values().filter(|r| live(r.revoked, r.expires, now)).count(),
        })
    }
}

/// Which registered client the request names, with the secret sent (if any) checked against
/// its own: the client and whether a secret was sent.
fn authenticate<'k>(
    params: &Params,
    clients: &'k [OAuthClient],
) -> Result<(&'k OAuthClient, bool), Refusal> {
    let id = params.get("client_id").ok_or(Refusal::InvalidClient)?;
    let client = clients
        .iter()
        .find(|c| c.id == id)
        .ok_or(Refusal::InvalidClient)?;
    match (params.get("client_secret"), &client.secret) {
        (None, _) => Ok((client, false)),
        (Some(sent), Some(secret)) if secret.matches(sent) => Ok((client, true)),
        (Some(_), _) => Err(Refusal::InvalidClient),
    }
}

fn token_json(access_token: &str, scopes: &[String], expires_in: u64) -> Value {
    json!({
        "access_token": access_token,
        "token_type": "bearer",
        "scope": scopes.join(" "),
        "expires_in": expires_in,
    })
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn enc(s: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, RESERVED).to_string()
}

/// `/oauth/...`, outside the API: the token and authorization endpoints.
pub(crate) fn endpoint(
    w: &mut World,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Reply {
    let now = w.store.clock.elapsed();
    match (method, uri.path()) {
        ("POST", "/oauth/tokens") => w.oauth.token_request(headers, bytes, &w.limits.knobs, now),
        ("GET", "/oauth/authorizations/new") => {
            let query = parse_query(uri.query().unwrap_or(""));
            w.oauth
                .authorize(&query, &w.limits.knobs.oauth_clients, now)
        }
        _ => ApiError::invalid_endpoint().0,
    }
}

/// `GET /api/v2/oauth/tokens/current`: the token the request was made with, shown by its first
/// characters only. A bearer the emulator did not issue reads and writes and never expires;
/// Basic auth has no token (404).
pub(crate) fn current(w: &mut World, req: &ApiRequest) -> ApiResult {
    let store = &w.store;
    let now = store.clock.elapsed();
    let token = match req.principal {
        Some(Principal::OAuth(Some(id))) => {
            let t = w.oauth.access.get(id).ok_or_else(ApiError::not_found)?;
            json!({
                "id": id,
                "client_id": t.client_number,
                "user_id": TOKEN_USER_ID,
                "token": t.prefix,
                "scopes": t.scopes,
                "created_at": store.clock.iso_at(t.issued),
                "expires_at": store.clock.iso_at(t.expires),
                "used_at": store.clock.iso_at(t.used.unwrap_or(now)),
                "url": store.url("oauth/tokens", id),
            })
        }
        Some(Principal::OAuth(None)) => {
            let prefix: String = bearer(req.header("authorization"))
                .unwrap_or("")
                .chars()
                .take(PREFIX_LEN)
                .collect();
            // Not in the emulator's table: shown with the id 0 and full access.
            json!({
                "id": 0,
                "client_id": 0,
                "user_id": TOKEN_USER_ID,
                "token": prefix,
                "scopes": ["read", "write"],
                "created_at": store.now(),
                "expires_at": null,
                "used_at": store.now(),
                "url": store.url("oauth/tokens", 0),
            })
        }
        _ => return Err(ApiError::not_found()),
    };
    Ok(Reply::ok(json!({ "token": token })))
}

/// A `/oauth/...` request body as the request log shows it: a JSON object or a form (shown as
/// an object of its fields) with the values of secret parameters replaced by `"[redacted]"`;
/// anything else is `"[redacted]"` as a whole.
pub(crate) fn redacted_body(headers: &HeaderMap, bytes: &[u8]) -> Value {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    if is_form(headers) {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return json!("[redacted]");
        };
        let mut fields = Map::new();
        for (key, value) in parse_query(text) {
            let shown = if SECRET_PARAMS.contains(&key.as_str()) {
                "[redacted]".to_string()
            } else {
                value
            };
            fields.insert(key, Value::String(shown));
        }
        return Value::Object(fields);
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(mut value @ Value::Object(_)) => {
            redact_json(&mut value);
            value
        }
        _ => json!("[redacted]"),
    }
}

fn redact_json(value: &mut Value) {
    match value {
        Value::Object(obj) => {
            for (key, v) in obj.iter_mut() {
                if SECRET_PARAMS.contains(&key.as_str()) {
                    *v = json!("[redacted]");
                } else {
                    redact_json(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

/// A `/oauth/...` query string as the request log shows it: secret parameters' values
/// replaced by `[redacted]`, the rest as sent.
pub(crate) fn redacted_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let name = parse_query(key)
                .into_iter()
                .next()
                .map(|(k, _)| k)
                .unwrap_or_default();
            if SECRET_PARAMS.contains(&name.as_str()) {
                format!("{key}=[redacted]")
            } else {
                pair.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::clock::Clock;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    /// RFC 7636 appendix B: the S256 challenge of the verifier above.
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn knobs() -> RuntimeKnobs {
        RuntimeKnobs {
            oauth_clients: vec![
                OAuthClient::confidential("zdmap", "client-secret-1"),
                OAuthClient::public("app"),
            ],
            ..RuntimeKnobs::default()
        }
    }

    /// Parameters as a token request carries them.
    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn segs(path: &str) -> Vec<String> {
        path.split('/').map(str::to_string).collect()
    }

    /// Authorizes `client` and gives the code the redirect carries.
    fn code(o: &mut OAuth, client: &str, challenge: Option<&str>, now: Duration) -> String {
        let mut query = vec![
            ("response_type".to_string(), "code".to_string()),
            ("client_id".to_string(), client.to_string()),
            (
                "redirect_uri".to_string(),
                "https://app.example/cb".to_string(),
            ),
            ("scope".to_string(), "read write".to_string()),
        ];
        if let Some(c) = challenge {
            query.push(("code_challenge".into(), c.into()));
            query.push(("code_challenge_method".into(), "S256".into()));
        }
        let reply = o.authorize(&query, &knobs().oauth_clients, now);
        assert_eq!(reply.status, 302, "{:?}", reply.body_json());
        let location = &reply.headers[0].1;
        let (_, code) = location.split_once("?code=").expect("a code");
        code.to_string()
    }

    fn exchange(
        o: &mut OAuth,
        code: &str,
        extra: &[(&str, &str)],
        now: Duration,
    ) -> Result<Value, Refusal> {
        let mut p = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", "https://app.example/cb"),
        ];
        p.extend_from_slice(extra);
        o.token(&params(&p), &knobs(), now)
    }

    fn refresh(o: &mut OAuth, token: &str, now: Duration) -> Result<Value, Refusal> {
        let p = params(&[
            ("grant_type", "refresh_token"),
            ("client_id", "zdmap"),
            ("refresh_token", token),
        ]);
        o.token(&p, &knobs(), now)
    }

    fn text(v: &Value, key: &str) -> String {
        v[key].as_str().expect(key).to_string()
    }

    #[test]
    fn pkce_s256_is_checked_against_the_verifier() {
        assert!(pkce_matches(VERIFIER, CHALLENGE));
        assert!(!pkce_matches(
            "another-verifier-another-verifier-another",
            CHALLENGE
        ));
        let mut o = OAuth::new(0);
        let t = Duration::ZERO;
        let c = code(&mut o, "app", Some(CHALLENGE), t);
        let wrong = [("client_id", "app"), ("code_verifier", "not-the-verifier")];
        assert_eq!(exchange(&mut o, &c, &wrong, t), Err(Refusal::InvalidGrant));
        assert_eq!(
            exchange(&mut o, &c, &[("client_id", "app")], t),
            Err(Refusal::InvalidGrant),
            "a challenge wants a verifier"
        );
        let right = [("client_id", "app"), ("code_verifier", VERIFIER)];
        let answer = exchange(&mut o, &c, &right, t).expect("the verifier matches");
        assert_eq!(answer["scope"], "read write");
        assert!(answer["refresh_token"].is_string());
        assert_eq!(
            exchange(&mut o, &c, &right, t),
            Err(Refusal::InvalidGrant),
            "a code works once"
        );
    }

    #[test]
    fn codes_are_bound_to_client_redirect_secret_and_age() {
        let mut o = OAuth::new(0);
        let t = Duration::ZERO;
        let c = code(&mut o, "zdmap", None, t);
        let without_secret = [("client_id", "zdmap")];
        assert_eq!(
            exchange(&mut o, &c, &without_secret, t),
            Err(Refusal::InvalidClient)
        );
        let wrong_secret = [("client_id", "zdmap"), ("client_secret", "nope")];
        assert_eq!(
            exchange(&mut o, &c, &wrong_secret, t),
            Err(Refusal::InvalidClient)
        );
        let other_client = [("client_id", "app")];
        assert_eq!(
            exchange(&mut o, &c, &other_client, t),
            Err(Refusal::InvalidGrant)
        );
        let p = params(&[
            ("grant_type", "authorization_code"),
            ("code", &c),
            ("redirect_uri", "https://app.example/other"),
            ("client_id", "zdmap"),
            ("client_secret", "client-secret-1"),
        ]);
        assert_eq!(o.token(&p, &knobs(), t), Err(Refusal::InvalidGrant));
        let good = [("client_id", "zdmap"), ("client_secret", "client-secret-1")];
        let other = code(&mut o, "zdmap", None, t);
        assert!(
            exchange(&mut o, &c, &good, t + CODE_LIFETIME).is_ok(),
            "120 s is still good"
        );
        let late = t + CODE_LIFETIME + Duration::from_secs(1);
        assert_eq!(
            exchange(&mut o, &other, &good, late),
            Err(Refusal::InvalidGrant),
            "too old"
        );
    }

    #[test]
    fn a_refresh_rotates_the_chain_and_a_spent_refresh_token_is_invalid_grant() {
        let mut o = OAuth::new(0);
        let clients = knobs().oauth_clients;
        let t = Duration::from_secs(5);
        let c = code(&mut o, "zdmap", None, t);
        let good = [("client_id", "zdmap"), ("client_secret", "client-secret-1")];
        let first = exchange(&mut o, &c, &good, t).expect("exchanged");
        let (a1, r1) = (text(&first, "access_token"), text(&first, "refresh_token"));
        assert!(a1.len() >= 32 && a1.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(matches!(o.judge(&a1, &clients, t), Judgement::Live(_)));

        let second = refresh(&mut o, &r1, t).expect("refreshed");
        let (a2, r2) = (
            text(&second, "access_token"),
            text(&second, "refresh_token"),
        );
        assert_ne!((&a1, &r1), (&a2, &r2));
        assert_eq!(
            o.judge(&a1, &clients, t),
            Judgement::Refused,
            "the old access token"
        );
        assert!(matches!(o.judge(&a2, &clients, t), Judgement::Live(_)));
        assert_eq!(
            refresh(&mut o, &r1, t),
            Err(Refusal::InvalidGrant),
            "reused"
        );
        // Another client cannot spend this chain's refresh token.
        let p = params(&[
            ("grant_type", "refresh_token"),
            ("client_id", "app"),
            ("refresh_token", &r2),
        ]);
        assert_eq!(o.token(&p, &knobs(), t), Err(Refusal::InvalidGrant));
        assert!(refresh(&mut o, &r2, t).is_ok());
        let stats = o.stats(t);
        assert_eq!(
            (
                stats["live_access_tokens"].as_u64(),
                stats["live_refresh_tokens"].as_u64()
            ),
            (Some(1), Some(1))
        );
        assert_eq!(stats["revoked_token_rejections"], 1);
    }

    #[test]
    fn tokens_expire_on_the_emulator_clock() {
        let mut clock = Clock::new();
        let mut o = OAuth::new(0);
        let clients = knobs().oauth_clients;
        let p = params(&[
            ("grant_type", "client_credentials"),
            ("client_id", "zdmap"),
            ("client_secret", "client-secret-1"),
            ("expires_in", "60"),
        ]);
        let answer = o.token(&p, &knobs(), clock.elapsed()).expect("issued");
        assert_eq!(
            (answer["expires_in"].as_u64(), answer["scope"].as_str()),
            (Some(60), Some("read"))
        );
        assert!(
            answer.get("refresh_token").is_none(),
            "client_credentials has no refresh token"
        );
        let token = text(&answer, "access_token");
        assert!(matches!(
            o.judge(&token, &clients, clock.elapsed()),
            Judgement::Live(_)
        ));
        clock.advance(Duration::from_secs(61));
        assert_eq!(
            o.judge(&token, &clients, clock.elapsed()),
            Judgement::Refused
        );
        assert_eq!(o.stats(clock.elapsed())["expired_token_rejections"], 1);
        assert_eq!(
            o.judge("never-issued", &clients, clock.elapsed()),
            Judgement::Unknown
        );

        // A refresh token lives its own lifetime.
        let c = code(&mut o, "zdmap", None, clock.elapsed());
        let good = [
            ("client_id", "zdmap"),
            ("client_secret", "client-secret-1"),
            ("refresh_token_expires_in", "3600"),
        ];
        let chain = exchange(&mut o, &c, &good, clock.elapsed()).expect("exchanged");
        assert_eq!(chain["expires_in"], 1800, "the knob's default");
        clock.advance(Duration::from_secs(3600));
        let r = text(&chain, "refresh_token");
        assert_eq!(
            refresh(&mut o, &r, clock.elapsed()),
            Err(Refusal::InvalidGrant)
        );
    }

    #[test]
    fn scopes_decide_by_method_and_resource() {
        let s = |list: &str| scopes_of(list);
        assert!(permits(&s("read"), "GET", &segs("tickets/1")));
        assert!(!permits(&s("read"), "PUT", &segs("tickets/1")));
        assert!(permits(
            &s("write"),
            "POST",
            &segs("users/create_or_update")
        ));
        assert!(!permits(&s("write"), "GET", &segs("users")));
        assert!(permits(&s("tickets:read"), "GET", &segs("tickets")));
        assert!(!permits(&s("tickets:read"), "GET", &segs("users")));
        assert!(!permits(&s("tickets:read"), "PUT", &segs("tickets/2")));
        assert!(permits(&s("users:write"), "POST", &segs("user_fields")));
        assert!(permits(
            &s("organizations:write"),
            "POST",
            &segs("organization_memberships")
        ));
        assert!(permits(
            &s("organizations:read"),
            "GET",
            &segs("organization_fields")
        ));
        assert!(
            !permits(&s("users:read"), "GET", &segs("job_statuses")),
            "generic only"
        );
        assert!(permits(&s("read"), "GET", &segs("job_statuses")));
        // Unknown words grant nothing, except what needs no scope.
        assert!(!permits(&s("impersonate fancy"), "GET", &segs("tickets")));
        assert!(permits(&s("fancy"), "GET", &segs("users/me")));
        assert!(permits(&s(""), "GET", &segs("oauth/tokens/current")));
        assert_eq!(s("read  write read"), ["read", "write"]);
    }

    #[test]
    fn grant_and_parameter_refusals() {
        let mut o = OAuth::new(0);
        let t = Duration::ZERO;
        let k = knobs();
        let refused = |o: &mut OAuth, p: &[(&str, &str)]| o.token(&params(p), &k, t).err();
        assert_eq!(refused(&mut o, &[]), Some(Refusal::UnsupportedGrantType));
        assert_eq!(
            refused(&mut o, &[("grant_type", "password")]),
            Some(Refusal::UnsupportedGrantType)
        );
        let cc = |secret: &'static str| {
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "zdmap"),
                ("client_secret", secret),
            ]
        };
        assert_eq!(refused(&mut o, &cc("wrong")), Some(Refusal::InvalidClient));
        assert_eq!(
            refused(
                &mut o,
                &[("grant_type", "client_credentials"), ("client_id", "app")]
            ),
            Some(Refusal::InvalidClient),
            "a public client has no secret to prove itself with"
        );
        let mut zero = cc("client-secret-1");
        zero.push(("expires_in", "0"));
        assert!(matches!(
            refused(&mut o, &zero),
            Some(Refusal::InvalidRequest(_))
        ));
        assert!(matches!(
            refused(
                &mut o,
                &[("grant_type", "refresh_token"), ("client_id", "zdmap")]
            ),
            Some(Refusal::InvalidRequest(_))
        ));
        assert!(refused(&mut o, &cc("client-secret-1")).is_none());
    }

    #[test]
    fn authorization_refuses_what_zendesk_would_not_show() {
        let mut o = OAuth::new(0);
        let clients = knobs().oauth_clients;
        let ask = |o: &mut OAuth, pairs: &[(&str, &str)]| {
            let q: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            o.authorize(&q, &clients, Duration::ZERO)
        };
        let base = [
            ("response_type", "code"),
            ("client_id", "zdmap"),
            ("redirect_uri", "https://a.example/cb?x=1"),
        ];
        let ok = ask(&mut o, &[&base[..], &[("state", "s 1&2")]].concat());
        assert_eq!(ok.status, 302);
        let location = &ok.headers[0].1;
        assert!(
            location.starts_with("https://a.example/cb?x=1&code="),
            "{location}"
        );
        assert!(location.ends_with("&state=s%201%262"), "{location}");
        for bad in [
            vec![
                ("response_type", "token"),
                ("client_id", "zdmap"),
                ("redirect_uri", "https://a/cb"),
            ],
            vec![
                ("response_type", "code"),
                ("client_id", "nobody"),
                ("redirect_uri", "https://a/cb"),
            ],
            vec![("response_type", "code"), ("client_id", "zdmap")],
            vec![
                ("response_type", "code"),
                ("client_id", "app"),
                ("redirect_uri", "https://a/cb"),
            ],
            vec![
                ("response_type", "code"),
                ("client_id", "app"),
                ("redirect_uri", "https://a/cb"),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "plain"),
            ],
        ] {
            let reply = ask(&mut o, &bad);
            assert_eq!(reply.status, 400, "{bad:?}");
            assert!(reply.body_json()["error"].is_string());
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let draw = |seed: u64| {
            let mut o = OAuth::new(seed);
            let p = params(&[
                ("grant_type", "client_credentials"),
                ("client_id", "zdmap"),
                ("client_secret", "client-secret-1"),
            ]);
            o.token(&p, &knobs(), Duration::ZERO)
                .map(|v| text(&v, "access_token"))
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn tables_forget_the_long_dead_and_stay_bounded() {
        let mut ledger: Ledger<u32> = Ledger::default();
        for i in 0..5 {
            ledger.insert(&format!("t{i}"), i);
        }
        ledger.trim(2);
        assert_eq!(
            ledger.values().copied().collect::<Vec<_>>(),
            [3, 4],
            "the newest"
        );
        assert_eq!((ledger.find("t0"), ledger.find("t4")), (None, Some(5)));

        let mut o = OAuth::new(0);
        let p = params(&[
            ("grant_type", "client_credentials"),
            ("client_id", "zdmap"),
            ("client_secret", "client-secret-1"),
            ("expires_in", "10"),
        ]);
        let first = o
            .token(&p, &knobs(), Duration::ZERO)
            .map(|v| text(&v, "access_token"));
        let first = first.expect("issued");
        let later = KEEP_DEAD + Duration::from_secs(11);
        assert!(o.token(&p, &knobs(), later).is_ok());
        assert_eq!(o.access.len(), 1, "the token dead for a week is forgotten");
        assert_eq!(
            o.judge(&first, &knobs().oauth_clients, later),
            Judgement::Unknown
        );
    }

    #[test]
    fn the_log_sees_no_secret_values() {
        let mut form = HeaderMap::new();
        form.insert(
            "content-type",
            axum::http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let body =
            b"grant_type=refresh_token&client_id=zdmap&refresh_token=R3fresh&client_secret=S3cret";
        let shown = redacted_body(&form, body);
        assert_eq!(
            shown,
            json!({"grant_type": "refresh_token", "client_id": "zdmap", "refresh_token": "[redacted]", "client_secret": "[redacted]"})
        );
        let json_body =
            br#"{"grant_type":"authorization_code","code":"C0de","code_verifier":"V3rifier"}"#;
        let shown = redacted_body(&HeaderMap::new(), json_body).to_string();
        assert!(
            !shown.contains("C0de") && !shown.contains("V3rifier"),
            "{shown}"
        );
        assert_eq!(
            redacted_body(&HeaderMap::new(), b"not json S3cret"),
            json!("[redacted]")
        );
        assert_eq!(
            redacted_query("client_id=a&client_secret=S3cret&code=C0de"),
            "client_id=a&client_secret=[redacted]&code=[redacted]"
        );
    }
}
