//! Sending one [`Request`] once: the pooled reqwest client, the standard headers, the
//! `Authorization` header (from the [`Authorizer`], marked sensitive), and the [`Response`] with
//! the headers delivery cares about and the body as JSON.
//!
//! A 401 on an OAuth access token that should still work renews the token and sends the request
//! once more: a token Zendesk dropped early is not the event's failure. When no token can be
//! had because Zendesk refused the OAuth client or the refresh-token chain is spent, the answer
//! is a 401 made here (`{"error": "oauth", "description": ...}`), so delivery waits as it
//! does for refused credentials; a token endpoint that does not answer is a connection error,
//! tried again later, and the request was not sent.
//!
//! Retries, budgets and what a status means live elsewhere ([`super::retry`], [`super::budget`]).
//! Redirects are not followed (the API does not redirect; a `Location` is reported instead), so a
//! request never leaves the [`Target`]'s host.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::auth::endpoint::TokenEndpoint;
use super::auth::{AuthFailure, Authorizer, Credentials};
use super::target::Target;
use crate::mapping::request::{Method, Request};

/// The default per-request timeout (connect, send and read the whole body).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Non-JSON bodies (e.g. a 429's HTML page) are kept up to this many bytes.
const MAX_TEXT_BODY: usize = 4096;

/// Request headers a mapping may not set: the transport owns them.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// The response headers delivery uses. Unparseable values read as absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeaders {
    /// `Retry-After`, in delta-seconds (Zendesk sends an integer; HTTP dates are ignored).
    pub retry_after: Option<Duration>,
    /// `X-Rate-Limit`: the account's requests per minute.
    pub rate_limit: Option<u32>,
    /// `X-Rate-Limit-Remaining`.
    pub rate_limit_remaining: Option<u32>,
    /// `ratelimit-limit` (Ticketing APIs).
    pub ratelimit_limit: Option<u32>,
    /// `ratelimit-remaining` (Ticketing APIs).
    pub ratelimit_remaining: Option<u32>,
    /// `ratelimit-reset`: time until the window resets.
    pub ratelimit_reset: Option<Duration>,
    /// `x-idempotency-lookup`: `miss` or `hit` when an `Idempotency-Key` was sent
    /// (docs/zendesk.md, "Tickets").
    pub idempotency_lookup: Option<String>,
    /// `Location`.
    pub location: Option<String>,
    /// True when a `Zendesk-RateLimit-<name>` endpoint bucket says `remaining=0`: the limit hit
    /// is that endpoint's (often per user or per ticket), not the account's.
    pub endpoint_limit_exhausted: bool,
}

impl ResponseHeaders {
    pub(crate) fn from_header_map(headers: &HeaderMap) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let number = |name: &str| text(name).and_then(|v| v.parse::<u32>().ok());
        let seconds = |name: &str| {
            text(name)
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs)
        };
        ResponseHeaders {
            retry_after: seconds("retry-after"),
            rate_limit: number("x-rate-limit"),
            rate_limit_remaining: number("x-rate-limit-remaining"),
            ratelimit_limit: number("ratelimit-limit"),
            ratelimit_remaining: number("ratelimit-remaining"),
            ratelimit_reset: seconds("ratelimit-reset"),
            idempotency_lookup: text("x-idempotency-lookup").map(str::to_string),
            location: text("location").map(str::to_string),
            endpoint_limit_exhausted: headers.iter().any(|(name, value)| {
                name.as_str().starts_with("zendesk-ratelimit-")
                    && value.to_str().is_ok_and(bucket_exhausted)
            }),
        }
    }
}

/// `total=5; remaining=0; resets=42` → true when `remaining` is 0.
fn bucket_exhausted(value: &str) -> bool {
    value.split(';').any(|part| {
        part.split_once('=')
            .is_some_and(|(k, v)| k.trim() == "remaining" && v.trim() == "0")
    })
}

/// One HTTP response, read whole.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: ResponseHeaders,
    /// The body: `Null` when empty, the parsed JSON, or (when not JSON, e.g. an HTML 429 page)
    /// a JSON string of the text, cut to 4 KiB.
    pub body: serde_json::Value,
    /// From sending the request to having read the body.
    pub elapsed: Duration,
    /// The bulk job whose results this answer was read from (a bulk item's answer).
    pub job: Option<String>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A request that got no HTTP response. Messages carry the URL (which never holds credentials:
/// they travel in a header) and never a header value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("{method} {url} timed out after {after:?}")]
    Timeout {
        method: Method,
        url: String,
        after: Duration,
    },
    #[error("{method} {url}: could not connect: {message}")]
    Connect {
        method: Method,
        url: String,
        message: String,
    },
    #[error("{method} {url} failed: {message}")]
    Other {
        method: Method,
        url: String,
        message: String,
    },
    /// The request cannot be sent as rendered (bad path, reserved or malformed header). Not
    /// worth retrying.
    #[error("request not sent: {message}")]
    InvalidRequest { message: String },
}

impl TransportError {
    /// Timeouts and connection errors are worth retrying; an invalid request is not. Other
    /// failures (a reset connection, a broken body) are retried too.
    pub(crate) fn is_retryable(&self) -> bool {
        !matches!(self, TransportError::InvalidRequest { .. })
    }

    /// A short label for counters: `timeout`, `connect`, `error` or `invalid`.
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Timeout { .. } => "timeout",
            TransportError::Connect { .. } => "connect",
            TransportError::Other { .. } => "error",
            TransportError::InvalidRequest { .. } => "invalid",
        }
    }
}

/// Settings of the HTTP client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Per-request timeout (connect + send + read). Default 30 s.
    pub timeout: Duration,
    /// Connect timeout. Default 10 s.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A pooled HTTP client bound to one [`Target`] and one [`Authorizer`] (its credentials are
/// replaced on a reload; clones share them). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    target: Target,
    auth: Arc<Authorizer>,
    timeout: Duration,
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("could not set up the HTTP client: {0}")]
pub struct ClientBuildError(String);

impl Client {
    pub fn new(
        target: Target,
        credentials: Credentials,
        options: ClientOptions,
    ) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("zdmap/", env!("CARGO_PKG_VERSION")))
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| ClientBuildError(error_chain(&e)))?;
        let endpoint =
            TokenEndpoint::new(http.clone(), target.base_url()).map_err(ClientBuildError)?;
        Ok(Client {
            http,
            target,
            auth: Arc::new(Authorizer::new(endpoint, credentials)),
            timeout: options.timeout,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends later requests with `credentials` (read again on a reload).
    pub fn set_credentials(&self, credentials: Credentials) {
        self.auth.set(credentials);
    }

    /// The credentials and their tokens.
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.auth
    }

    /// Sends `req` and reads the whole response; once more with a new access token when Zendesk
    /// answers 401 to an OAuth token that should still work.
    pub async fn send(&self, req: &Request) -> Result<Response, TransportError> {
        let mut renewed = false;
        loop {
            let authorization = match self.auth.authorize().await {
                Ok(a) => a,
                Err(AuthFailure::Unavailable(message)) => {
                    return Err(TransportError::Connect {
                        method: req.method,
                        url: self.auth.endpoint().url().to_string(),
                        message: format!(
                            "no OAuth access token, the request was not sent: {message}"
                        ),
                    });
                }
                Err(refused) => return Ok(refused_answer(&refused)),
            };
            let response = self.send_with(req, authorization.header.clone()).await?;
            if response.status == 401 && !renewed && self.auth.rejected(&authorization) {
                renewed = true;
                continue;
            }
            return Ok(response);
        }
    }

    /// Sends `req` once with `authorization` and reads the whole response.
    async fn send_with(
        &self,
        req: &Request,
        authorization: HeaderValue,
    ) -> Result<Response, TransportError> {
        let invalid = |message: String| TransportError::InvalidRequest { message };
        let url = self
            .target
            .url_for(&req.path_and_query())
            .map_err(|e| invalid(e.to_string()))?;
        let mut headers = self.headers_for(req)?;
        headers.insert(AUTHORIZATION, authorization);
        let method = match req.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self.http.request(method, url.clone()).headers(headers);
        if let Some(body) = &req.body {
            let bytes = serde_json::to_vec(body)
                .map_err(|e| invalid(format!("body is not serializable: {e}")))?;
            builder = builder.body(bytes);
        }

        let started = tokio::time::Instant::now();
        let classify = |e: reqwest::Error| {
            let url = url.to_string();
            if e.is_timeout() {
                TransportError::Timeout {
                    method: req.method,
                    url,
                    after: self.timeout,
                }
            } else if e.is_connect() {
                TransportError::Connect {
                    method: req.method,
                    url,
                    message: error_chain(&e),
                }
            } else {
                TransportError::Other {
                    method: req.method,
                    url,
                    message: error_chain(&e),
                }
            }
        };
        let response = builder.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let headers = ResponseHeaders::from_header_map(response.headers());
        let bytes = response.bytes().await.map_err(classify)?;
        Ok(Response {
            status,
            headers,
            body: parse_body(&bytes),
            elapsed: started.elapsed(),
            job: None,
        })
    }

    fn headers_for(&self, req: &Request) -> Result<HeaderMap, TransportError> {
        let invalid = |message: String| TransportError::InvalidRequest { message };
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if req.body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in &req.headers {
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(invalid(format!(
                    "the header {name} is set by the transport, not by a mapping"
                )));
            }
            let name = HeaderName::from_bytes(lower.as_bytes())
                .map_err(|_| invalid(format!("invalid header name {name:?}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("invalid value for header {name}")))?;
            headers.insert(name, value);
        }
        Ok(headers)
    }
}

/// The 401 delivery sees when no access token can be had (see the module docs).
fn refused_answer(failure: &AuthFailure) -> Response {
    Response {
        status: 401,
        headers: ResponseHeaders::default(),
        body: serde_json::json!({"error": "oauth", "description": failure.message()}),
        elapsed: Duration::ZERO,
        job: None,
    }
}

/// `Null` for an empty body, the JSON value when it parses, else the text as a JSON string.
pub(crate) fn parse_body(bytes: &[u8]) -> serde_json::Value {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return serde_json::Value::Null;
    }
    if let Ok(value) = serde_json::from_slice(bytes) {
        return value;
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_TEXT_BODY)]);
    serde_json::Value::String(text.trim().to_string())
}

/// An error and its sources, joined with `: ` (reqwest's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(parse_body(b""), serde_json::Value::Null);
        assert_eq!(parse_body(b"  \n"), serde_json::Value::Null);
        assert_eq!(parse_body(br#"{"a":1}"#), serde_json::json!({"a":1}));
        assert_eq!(
            parse_body(b"<html>Rate limit exceeded</html>\n"),
            serde_json::json!("<html>Rate limit exceeded</html>")
        );
    }

    #[test]
    fn headers() {
        let mut map = HeaderMap::new();
        map.insert("retry-after", HeaderValue::from_static("7"));
        map.insert("x-rate-limit", HeaderValue::from_static("700"));
        map.insert("x-rate-limit-remaining", HeaderValue::from_static("699"));
        map.insert("ratelimit-reset", HeaderValue::from_static("41"));
        map.insert("x-idempotency-lookup", HeaderValue::from_static("hit"));
        map.insert("ratelimit-remaining", HeaderValue::from_static("oops"));
        let h = ResponseHeaders::from_header_map(&map);
        assert_eq!(h.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(h.rate_limit, Some(700));
        assert_eq!(h.rate_limit_remaining, Some(699));
        assert_eq!(h.ratelimit_remaining, None);
        assert_eq!(h.ratelimit_reset, Some(Duration::from_secs(41)));
        assert_eq!(h.idempotency_lookup.as_deref(), Some("hit"));
        assert!(!h.endpoint_limit_exhausted);

        map.insert(
            "zendesk-ratelimit-create-update-user",
            HeaderValue::from_static("total=5; remaining=0; resets=42"),
        );
        assert!(ResponseHeaders::from_header_map(&map).endpoint_limit_exhausted);
        map.insert(
            "zendesk-ratelimit-create-update-user",
            HeaderValue::from_static("total=5; remaining=3; resets=42"),
        );
        assert!(!ResponseHeaders::from_header_map(&map).endpoint_limit_exhausted);
    }
}
