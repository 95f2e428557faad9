//! The admin listener of `zdmap serve`: its own address (loopback by default), its own token,
//! never opened by a write key. It serves the JSON API under `/api/` ([`api`]) for the CLI and
//! for tooling, and the web console at `/` ([`console`]) for people.
//!
//! Who may come in is decided in one place, [`AdminState::access`]: a request carrying
//! `Authorization: Bearer TOKEN` with the admin token, or the cookie of a console session
//! ([`session`]: logged in with that token). A state-changing request that a cookie authorizes
//! must also carry the session's CSRF token (a form's `csrf` field or the `X-CSRF-Token`
//! header), checked in [`require_admin`]. On a loopback address the listener also answers only
//! to loopback host names (see [`super::guard`]), so no web page can reach it through a name of
//! its own. Every answer carries a strict `Content-Security-Policy`: the pages run only the
//! console's own script.

pub(crate) mod api;
pub(crate) mod console;
pub(crate) mod letters;
pub(crate) mod samples;
pub(crate) mod session;

use super::Shared;
use super::guard::Guard;
use crate::queue::Queue;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// The address the admin listener takes when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8089";

/// The file in the data directory that keeps a generated admin token.
pub const TOKEN_FILE: &str = "admin-token";

/// How the admin listener runs.
#[derive(Clone, Debug)]
pub struct AdminOptions {
    pub listen: SocketAddr,
    pub token: AdminToken,
    /// Whether the server must not start when the address cannot be taken (an address the
    /// operator chose); the default address is taken if free, else the server runs without.
    pub required: bool,
    /// Host names a loopback admin listener answers besides its loopback names.
    pub allowed_hosts: Vec<String>,
}

/// The admin token: compared in constant time, never shown.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl AdminToken {
    /// A token of at least 16 characters; `None` for a shorter one.
    pub fn new(token: &str) -> Option<AdminToken> {
        let token = token.trim();
        (token.len() >= 16).then(|| AdminToken(token.into()))
    }

    /// A fresh random token (32 hex digits).
    pub fn generate() -> AdminToken {
        use std::fmt::Write as _;
        let bytes: [u8; 16] = rand::random();
        let mut text = String::with_capacity(32);
        for b in bytes {
            let _ = write!(text, "{b:02x}");
        }
        AdminToken(text.into())
    }

    /// Whether `given` is this token (in time that does not depend on where they differ).
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The token itself, to write it to its file.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// What the admin routes share.
pub(crate) struct AdminState<Q> {
    pub(crate) queue: Arc<Q>,
    pub(crate) shared: Arc<Shared>,
    token: AdminToken,
    pub(crate) sessions: session::Sessions,
    pub(crate) pages: console::Pages,
    pub(crate) samples: samples::Samples,
    /// On a server with named destinations, each one's state by name (the console's dead
    /// letters pages take `?destination=NAME`); empty otherwise.
    pub(crate) destinations: Vec<(String, Arc<AdminState<Q>>)>,
}

/// How a request came in.
#[derive(Clone, Debug)]
pub(crate) enum Access {
    /// With the admin token as a bearer token: no CSRF token needed (no browser sends it by
    /// itself).
    Bearer,
    /// With a console session's cookie.
    Session(session::Session),
}

impl Access {
    /// The CSRF token the pages put in their forms (none for a bearer token).
    pub(crate) fn csrf(&self) -> &str {
        match self {
            Access::Bearer => "",
            Access::Session(s) => &s.csrf,
        }
    }
}

impl<Q> AdminState<Q> {
    pub(crate) fn new(queue: Arc<Q>, shared: Arc<Shared>, token: AdminToken) -> Self {
        AdminState {
            queue,
            shared,
            token,
            sessions: session::Sessions::default(),
            pages: console::Pages::new(),
            samples: samples::Samples::default(),
            destinations: Vec::new(),
        }
    }

    /// With the states of each named destination, for the pages that take one.
    pub(crate) fn with_destinations(mut self, each: Vec<(String, Arc<AdminState<Q>>)>) -> Self {
        self.destinations = each;
        self
    }

    /// The state of the destination `name` (`None`: this one); `None` when there is no such
    /// destination.
    pub(crate) fn at(self: &Arc<Self>, name: Option<&str>) -> Option<Arc<Self>> {
        match name.filter(|n| Some(*n) != self.shared.named()) {
            None => Some(self.clone()),
            Some(name) => (self.destinations.iter())
                .find(|(n, _)| n == name)
                .map(|(_, state)| state.clone()),
        }
    }

    /// Whether `given` is the admin token.
    pub(crate) fn is_token(&self, given: &str) -> bool {
        self.token.matches(given.trim())
    }

    /// How the request's headers open the admin listener, if they do.
    pub(crate) fn access(&self, headers: &HeaderMap) -> Option<Access> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some_and(|given| self.is_token(given)) {
            return Some(Access::Bearer);
        }
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(session::cookie_value)
            .find_map(|id| self.sessions.get(id))
            .map(Access::Session)
    }
}

/// An admin answer with a JSON `{"error": ...}` body.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The admin listener's routes: the API and the console pages behind the token or a session,
/// the login page and the console's assets open (and on loopback the host guard).
pub(crate) fn router<Q: Queue>(
    state: Arc<AdminState<Q>>,
    destinations: Vec<(String, Arc<AdminState<Q>>)>,
    guard: Option<Guard>,
) -> Router {
    let api_gate = axum::middleware::from_fn_with_state(state.clone(), require_admin::<Q, true>);
    let page_gate = axum::middleware::from_fn_with_state(state.clone(), require_admin::<Q, false>);
    let mut router = Router::new();
    // A server with named destinations: each one's API under /api/destinations/NAME/ (the
    // bearer token opens them; /api/ itself is the first destination's).
    for (name, each) in destinations {
        let gate = axum::middleware::from_fn_with_state(each.clone(), require_admin::<Q, true>);
        let api = api::routes::<Q>().layer(gate).with_state(each);
        router = router.nest_service(&format!("/api/destinations/{name}"), api);
    }
    let router = router
        .nest("/api", api::routes::<Q>().layer(api_gate))
        .merge(console::pages::<Q>().layer(page_gate))
        .merge(console::open::<Q>())
        .with_state(state)
        .layer(axum::middleware::map_response(security_headers));
    match guard {
        Some(guard) => {
            let guard = Arc::new(guard);
            router.layer(axum::middleware::from_fn(
                move |request: Request, next: Next| {
                    let refusal = guard.refusal(request.headers());
                    async move {
                        match refusal {
                            Some(why) => error(StatusCode::FORBIDDEN, why),
                            None => next.run(request).await,
                        }
                    }
                },
            ))
        }
        None => router,
    }
}

/// The policy of every answer: only the console's own script, styles and images, in no frame.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

async fn security_headers(mut answer: Response) -> Response {
    let headers = answer.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    answer
}

/// The most a form posted with a session cookie may hold (an event pasted into the tester).
const MAX_FORM_BYTES: usize = 256 * 1024;

/// Lets in a request with the admin token, or with a session cookie (then a state-changing
/// one must carry the session's CSRF token); the [`Access`] goes to the handlers as an
/// extension. Without either: 401 for the API (`API`) and for posts, the login page for a page.
async fn require_admin<Q: Queue, const API: bool>(
    State(state): State<Arc<AdminState<Q>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(access) = state.access(request.headers()) else {
        if !API && request.method() == Method::GET {
            return Redirect::to("/login").into_response();
        }
        let mut answer = error(
            StatusCode::UNAUTHORIZED,
            "the admin API needs Authorization: Bearer with the admin token (ZDMAP_ADMIN_TOKEN), or a console session; write keys do not open it",
        );
        answer
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return answer;
    };
    let mut request = request;
    if let Access::Session(session) = &access
        && !request.method().is_safe()
    {
        request = match csrf_checked(request, &session.csrf).await {
            Ok(request) => request,
            Err(answer) => return answer,
        };
    }
    request.extensions_mut().insert(access);
    next.run(request).await
}

/// The request if it carries `csrf` (in the `X-CSRF-Token` header, or as the `csrf` field of a
/// form, whose body is read and put back); 403 if not.
async fn csrf_checked(request: Request, csrf: &str) -> Result<Request, Response> {
    let refused = || {
        error(
            StatusCode::FORBIDDEN,
            "this request needs the CSRF token of its console session (reload the page)",
        )
    };
    let given = request
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok());
    if let Some(given) = given {
        return if session::same(given, csrf) {
            Ok(request)
        } else {
            Err(refused())
        };
    }
    let form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return Err(refused());
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large"))?;
    let fields = console::form_fields(&bytes);
    match fields.iter().find(|(name, _)| name == "csrf") {
        Some((_, given)) if session::same(given, csrf) => {
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        _ => Err(refused()),
    }
}

/// The guard of an admin listener on `listen`: on loopback, only loopback host names and
/// `allowed_hosts`; any origin (the console's own pages post to it, and the token or the CSRF
/// token decides).
pub(crate) fn guard(listen: SocketAddr, allowed_hosts: &[String]) -> Option<Guard> {
    Guard::new(listen, &["*".to_owned()], allowed_hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_only_itself_and_never_shows() {
        let token = AdminToken::new("0123456789abcdef-admin").expect("long enough");
        assert!(token.matches("0123456789abcdef-admin"));
        assert!(!token.matches("0123456789abcdef-admiN"));
        assert!(!token.matches("0123456789abcdef"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "AdminToken(***)");
        assert!(AdminToken::new("short").is_none());
        let generated = AdminToken::generate();
        assert_eq!(generated.reveal().len(), 32);
        assert!(!generated.matches(AdminToken::generate().reveal()));
    }
}
