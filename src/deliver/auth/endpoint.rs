//! Zendesk's token endpoint, `POST {base}/oauth/tokens`: the three grants zdmap uses and what
//! their answers mean.
//!
//! Zendesk documents the request body as JSON and the success as `201` with `access_token`,
//! `token_type`, `scope`, `expires_in` (and, for the code and refresh grants, `refresh_token`
//! and `refresh_token_expires_in`). Failures use OAuth's envelope, `{"error": "invalid_grant",
//! "error_description": "..."}`. The `oauth2` crate's token exchange sends form bodies and
//! takes only `200`, so the exchange is this small JSON request; `oauth2` still builds the
//! authorization URL and the PKCE pair (see `login`).
//!
//! Nothing here logs or returns a token in an error: messages carry the grant, the status and
//! Zendesk's error code and description.

use std::time::{Duration, SystemTime};

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Secret;

/// How long a token request may take.
pub(crate) const TOKEN_TIMEOUT: Duration = Duration::from_secs(20);

/// The grants zdmap asks tokens with.
#[derive(Clone, Debug)]
pub enum Grant<'a> {
    /// A pipeline's own client: id and secret, no person.
    ClientCredentials { scope: &'a str },
    /// The code a person's approval redirected with, and the PKCE verifier it was asked with.
    AuthorizationCode {
        code: &'a Secret,
        redirect_uri: &'a str,
        verifier: &'a Secret,
        scope: &'a str,
    },
    /// The chain's current refresh token.
    RefreshToken { refresh_token: &'a Secret },
}

impl Grant<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Grant::ClientCredentials { .. } => "client_credentials",
            Grant::AuthorizationCode { .. } => "authorization_code",
            Grant::RefreshToken { .. } => "refresh_token",
        }
    }
}

/// A token Zendesk issued.
#[derive(Clone, Debug)]
pub struct Issued {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub scope: String,
    pub expires_at: Option<SystemTime>,
    pub refresh_expires_at: Option<SystemTime>,
    pub issued_at: SystemTime,
}

/// Why no token came back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Zendesk answered and said no (`invalid_client`, `invalid_grant`, ...): asking again the
    /// same way will not help.
    #[error("Zendesk refused the {grant} grant: {status} {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        grant: &'static str,
        status: u16,
        code: String,
        description: Option<String>,
    },
    /// No usable answer (a server error, a timeout, a dropped connection, an unreadable body).
    /// `maybe_applied`: the request may have reached Zendesk, so a refresh may have rotated
    /// the chain.
    #[error("the {grant} token request failed: {message}")]
    Unavailable {
        grant: &'static str,
        message: String,
        maybe_applied: bool,
    },
}

/// The token endpoint of one account.
#[derive(Clone, Debug)]
pub struct TokenEndpoint {
    http: reqwest::Client,
    url: Url,
}

#[derive(Deserialize)]
struct Answer {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token_expires_in: Option<u64>,
}

impl TokenEndpoint {
    /// The endpoint at `{base}/oauth/tokens`.
    pub fn new(http: reqwest::Client, base: &Url) -> Result<TokenEndpoint, String> {
        let url = base
            .join("/oauth/tokens")
            .map_err(|e| format!("no token endpoint under {base}: {e}"))?;
        Ok(TokenEndpoint { http, url })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Asks for a token with `grant` as the client `client_id` (with `secret` when it has one).
    /// `lifetime` asks for an access token that lives that long (Zendesk's `expires_in`).
    pub async fn request(
        &self,
        grant: &Grant<'_>,
        client_id: &str,
        secret: Option<&Secret>,
        lifetime: Option<u64>,
    ) -> Result<Issued, TokenError> {
        let name = grant.name();
        let mut body = Map::new();
        body.insert("grant_type".into(), json!(name));
        body.insert("client_id".into(), json!(client_id));
        if let Some(secret) = secret {
            body.insert("client_secret".into(), json!(secret.expose()));
        }
        match grant {
            Grant::ClientCredentials { scope } => {
                body.insert("scope".into(), json!(scope));
            }
            Grant::AuthorizationCode {
                code,
                redirect_uri,
                verifier,
                scope,
            } => {
                body.insert("code".into(), json!(code.expose()));
                body.insert("redirect_uri".into(), json!(redirect_uri));
                body.insert("code_verifier".into(), json!(verifier.expose()));
                body.insert("scope".into(), json!(scope));
            }
            Grant::RefreshToken { refresh_token } => {
                body.insert("refresh_token".into(), json!(refresh_token.expose()));
            }
        }
        if let Some(seconds) = lifetime {
            body.insert("expires_in".into(), json!(seconds));
        }
        let unavailable = |message: String, maybe_applied: bool| TokenError::Unavailable {
            grant: name,
            message,
            maybe_applied,
        };
        let issued_at = SystemTime::now();
        let response = self
            .http
            .post(self.url.clone())
            .timeout(TOKEN_TIMEOUT)
            .json(&Value::Object(body))
            .send()
            .await
            .map_err(|e| {
                let what = if e.is_timeout() {
                    format!("no answer within {TOKEN_TIMEOUT:?}")
                } else if e.is_connect() {
                    "could not connect".to_string()
                } else {
                    "the connection failed".to_string()
                };
                unavailable(format!("POST {}: {what}", self.url), !e.is_connect())
            })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|_| unavailable(format!("POST {}: the answer was cut off", self.url), true))?;
        if (200..300).contains(&status) {
            let answer: Answer = serde_json::from_slice(&bytes).map_err(|_| {
                unavailable(
                    format!("POST {} answered {status} without a token", self.url),
                    true,
                )
            })?;
            let at = |seconds: Option<u64>| seconds.map(|s| issued_at + Duration::from_secs(s));
            return Ok(Issued {
                access_token: Secret::new(answer.access_token),
                refresh_token: answer.refresh_token.map(Secret::new),
                scope: answer.scope.unwrap_or_default(),
                expires_at: at(answer.expires_in),
                refresh_expires_at: at(answer.refresh_token_expires_in),
                issued_at,
            });
        }
        let said: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let code = said.get("error").and_then(Value::as_str);
        if status == 429 || status >= 500 || code.is_none() {
            return Err(unavailable(
                format!("POST {} answered {status}", self.url),
                status != 429,
            ));
        }
        Err(TokenError::Refused {
            grant: name,
            status,
            code: short(code.unwrap_or_default(), 60),
            description: said
                .get("error_description")
                .and_then(Value::as_str)
                .map(|d| short(d, 300)),
        })
    }
}

/// `text` cut to `max` characters, control characters dropped (it goes into log lines).
fn short(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}
