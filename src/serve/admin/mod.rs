//! The admin listener of `zdmap serve`: its own address (loopback by default), its own token,
//! never opened by a write key. It serves the JSON API under `/api/` ([`api`]) for the CLI and
//! for tooling.
//!
//! Who may come in is decided in one place, [`AdminState::authorized`]: a request carrying
//! `Authorization: Bearer TOKEN` with the admin token. On a loopback address the listener also
//! answers only to loopback host names (see [`super::guard`]), so no web page can reach it
//! through a name of its own.

pub(crate) mod api;

use super::Shared;
use super::guard::Guard;
use crate::queue::Queue;
use crate::queue::journal::Journal;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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
    /// The delivery log (none: off): [`Journal::search`], [`Journal::record`],
    /// [`Journal::entries`] read it, [`Journal::note`] records a replay or a discard.
    pub(crate) journal: Option<Arc<Journal>>,
    token: AdminToken,
}

impl<Q> AdminState<Q> {
    pub(crate) fn new(queue: Arc<Q>, shared: Arc<Shared>, token: AdminToken) -> Self {
        AdminState {
            queue,
            journal: shared.journal.clone(),
            shared,
            token,
        }
    }

    /// Whether the request's headers open the admin listener.
    pub(crate) fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| self.token.matches(given.trim()))
    }
}

/// An admin answer with a JSON `{"error": ...}` body.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The admin listener's routes, behind the token (and on loopback the host guard).
pub(crate) fn router<Q: Queue>(state: Arc<AdminState<Q>>, guard: Option<Guard>) -> Router {
    let api = api::routes::<Q>().layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_token::<Q>,
    ));
    let router = Router::new().nest("/api", api).with_state(state);
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

async fn require_token<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    request: Request,
    next: Next,
) -> Response {
    if state.authorized(request.headers()) {
        return next.run(request).await;
    }
    let mut answer = error(
        StatusCode::UNAUTHORIZED,
        "the admin API needs Authorization: Bearer with the admin token (ZDMAP_ADMIN_TOKEN); write keys do not open it",
    );
    answer
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    answer
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
