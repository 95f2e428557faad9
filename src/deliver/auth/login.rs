//! `zdmap auth login`: the authorization-code flow with PKCE, for accounts whose admin
//! approves an app once.
//!
//! 1. [`Login::start`] listens on a loopback address and builds the authorization URL
//!    (`/oauth/authorizations/new` with the client id, the redirect URL, the scopes, a random
//!    `state` and the PKCE challenge, S256). The `oauth2` crate makes the URL and the pair.
//! 2. A person opens the URL and approves; Zendesk redirects the browser to the loopback
//!    listener with `code` and `state`.
//! 3. [`Login::finish`] checks the state, exchanges the code (with the PKCE verifier) at the
//!    token endpoint and returns the new [`Chain`]; the caller writes it to a token store.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use reqwest::Url;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::Secret;
use super::chain::Chain;
use super::endpoint::{Grant, TokenEndpoint, TokenError};

/// The path of the loopback redirect.
pub(crate) const REDIRECT_PATH: &str = "/callback";

/// Why a login did not end with tokens. Never carries a code, verifier or token.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("cannot listen for the redirect on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the authorization URL: {0}")]
    Url(String),
    #[error("no approval came back within {0:?}; run `zdmap auth login` again")]
    TimedOut(Duration),
    #[error("the approval was refused: {0}")]
    Denied(String),
    #[error(
        "the redirect's state does not match this login (a stale or forged redirect); run `zdmap auth login` again"
    )]
    State,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("Zendesk issued no refresh token: the OAuth client may not allow refresh tokens")]
    NoRefreshToken,
}

/// What the redirect carried.
#[derive(Deserialize)]
struct Redirect {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// A login under way: the URL to open and the listener waiting for the redirect.
pub struct Login {
    url: Url,
    redirect_uri: String,
    client_id: String,
    scope: String,
    verifier: Secret,
    state: Secret,
    redirects: mpsc::Receiver<Redirect>,
    stop: watch::Sender<bool>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("redirect_uri", &self.redirect_uri)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Login {
    /// Listens on `listen` (a loopback address; port 0 picks one) and builds the URL that asks
    /// the account at `base` to approve `client_id` for `scope`.
    pub async fn start(
        base: &Url,
        client_id: &str,
        scope: &str,
        listen: SocketAddr,
    ) -> Result<Login, LoginError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| LoginError::Listen {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| LoginError::Listen {
            addr: listen,
            source,
        })?;
        let redirect_uri = format!("http://{addr}{REDIRECT_PATH}");
        let authorize = base
            .join("/oauth/authorizations/new")
            .map_err(|e| LoginError::Url(e.to_string()))?;
        let client = oauth2::basic::BasicClient::new(ClientId::new(client_id.to_string()))
            .set_auth_uri(
                AuthUrl::new(authorize.to_string()).map_err(|e| LoginError::Url(e.to_string()))?,
            )
            .set_redirect_uri(
                RedirectUrl::new(redirect_uri.clone())
                    .map_err(|e| LoginError::Url(e.to_string()))?,
            );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(scope.split_whitespace().map(|s| Scope::new(s.to_string())))
            .set_pkce_challenge(challenge)
            .url();
        let (sender, redirects) = mpsc::channel(4);
        let (stop, stopped) = watch::channel(false);
        let app = axum::Router::new().route(
            REDIRECT_PATH,
            axum::routing::get(
                move |axum::extract::Query(redirect): axum::extract::Query<Redirect>| {
                    let sender = sender.clone();
                    async move {
                        let approved = redirect.code.is_some();
                        let _ = sender.send(redirect).await;
                        axum::response::Html(if approved {
                            "<!doctype html><title>zdmap</title><p>zdmap has the approval. You can close this page.</p>"
                        } else {
                            "<!doctype html><title>zdmap</title><p>The approval was not given. See the terminal.</p>"
                        })
                    }
                },
            ),
        );
        tokio::spawn(async move {
            let mut stopped = stopped;
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(Login {
            url,
            redirect_uri,
            client_id: client_id.to_string(),
            scope: scope.to_string(),
            verifier: Secret::new(verifier.secret().clone()),
            state: Secret::new(state.secret().clone()),
            redirects,
            stop,
            addr,
        })
    }

    /// The URL a person opens to approve.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Where the redirect comes back.
    pub fn redirect_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits up to `wait` for the redirect, then exchanges its code at `endpoint` (with
    /// `secret` for a confidential client) for the first pair of the chain.
    pub async fn finish(
        mut self,
        endpoint: &TokenEndpoint,
        secret: Option<&Secret>,
        lifetime: Option<u64>,
        wait: Duration,
    ) -> Result<Chain, LoginError> {
        let redirect = tokio::time::timeout(wait, self.redirects.recv()).await;
        let _ = self.stop.send(true);
        let redirect = match redirect {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return Err(LoginError::TimedOut(wait)),
        };
        if redirect.state.as_deref() != Some(self.state.expose()) {
            return Err(LoginError::State);
        }
        let Some(code) = redirect.code else {
            let said = [redirect.error, redirect.error_description]
                .into_iter()
                .flatten()
                .map(|s| {
                    s.chars()
                        .filter(|c| !c.is_control())
                        .take(200)
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join(": ");
            return Err(LoginError::Denied(if said.is_empty() {
                "no code in the redirect".into()
            } else {
                said
            }));
        };
        let code = Secret::new(code);
        let grant = Grant::AuthorizationCode {
            code: &code,
            redirect_uri: &self.redirect_uri,
            verifier: &self.verifier,
            scope: &self.scope,
        };
        let issued = endpoint
            .request(&grant, &self.client_id, secret, lifetime)
            .await?;
        let refresh_token = issued.refresh_token.ok_or(LoginError::NoRefreshToken)?;
        Ok(Chain {
            client_id: self.client_id,
            scope: if issued.scope.is_empty() {
                self.scope
            } else {
                issued.scope
            },
            access_token: issued.access_token,
            access_expires_at: issued.expires_at,
            refresh_token,
            refresh_expires_at: issued.refresh_expires_at,
            issued_at: SystemTime::now().min(issued.issued_at),
            login_needed: None,
            in_doubt: false,
            refreshing: None,
        })
    }
}
