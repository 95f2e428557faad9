//! Credentials for the Zendesk API: where they come from (environment variables, or files they
//! name: `ZENDESK_API_TOKEN_FILE` as a mounted secret is), how they are kept (a [`Secret`] that
//! never prints) and the `Authorization` header built from them at send time (marked sensitive,
//! so reqwest and `http` never print it either).
//!
//! Four kinds, in the order they are chosen (docs/zendesk.md, "Authentication"):
//! - an OAuth refresh-token chain that `zdmap auth login` left in a token store ([`chain`]);
//! - an OAuth client's id and secret, for the client-credentials grant;
//! - a fixed OAuth access token: `Authorization: Bearer {token}`;
//! - an API token: `Authorization: Basic base64("{email}/token:{api_token}")`. Zendesk stops
//!   every API token on [`API_TOKENS_END`].
//!
//! The two OAuth grants get their access tokens from [`endpoint`], kept valid by
//! [`authorizer`]. [`scopes`] says which scopes the mappings need; [`login`] is the
//! authorization-code flow with PKCE.

pub mod authorizer;
pub mod chain;
pub mod endpoint;
pub mod login;
pub mod scopes;

use std::sync::Arc;

use base64::Engine as _;
use reqwest::header::HeaderValue;

pub use authorizer::{AuthFailure, AuthStats, Authorization, Authorizer};
pub use chain::{Chain, ChainStore, FileStore, StoreError, Versioned};

/// The day Zendesk deactivates every API token.
pub const API_TOKENS_END: &str = "2027-04-30";

/// A secret string. `Debug` and `Display` print `[redacted]`; the value is reachable only through
/// [`Secret::expose`], which the header builder calls at send time.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call only to build a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The names of the environment variables credentials are read from, and what an OAuth
/// grant asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialVars {
    /// The agent's email, for API-token auth. Default `ZENDESK_EMAIL`.
    pub email: String,
    /// The API token, for API-token auth. Default `ZENDESK_API_TOKEN`.
    pub api_token: String,
    /// An OAuth access token. Default `ZENDESK_OAUTH_TOKEN`.
    pub oauth_token: String,
    /// An OAuth client's unique identifier. Default `ZENDESK_OAUTH_CLIENT_ID`.
    pub client_id: String,
    /// An OAuth client's secret. Default `ZENDESK_OAUTH_CLIENT_SECRET`.
    pub client_secret: String,
    /// What the OAuth grants ask for.
    pub oauth: OAuthRequest,
}

/// What an OAuth grant asks for: scopes and, if set, the access token's lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthRequest {
    /// Space-separated scopes, e.g. `read write`.
    pub scope: String,
    /// Seconds an access token should live (Zendesk's `expires_in`); `None`: the client's default.
    pub lifetime: Option<u64>,
}

impl Default for OAuthRequest {
    fn default() -> Self {
        OAuthRequest {
            scope: "read write".into(),
            lifetime: None,
        }
    }
}

impl Default for CredentialVars {
    fn default() -> Self {
        CredentialVars {
            email: "ZENDESK_EMAIL".into(),
            api_token: "ZENDESK_API_TOKEN".into(),
            oauth_token: "ZENDESK_OAUTH_TOKEN".into(),
            client_id: "ZENDESK_OAUTH_CLIENT_ID".into(),
            client_secret: "ZENDESK_OAUTH_CLIENT_SECRET".into(),
            oauth: OAuthRequest::default(),
        }
    }
}

/// The environment variables one destination's credentials are read from, each in place of
/// the one `destination.yaml` names (`None`: that one is kept). Names only, never values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialNames {
    /// In place of [`CredentialVars::email`].
    pub email: Option<String>,
    /// In place of [`CredentialVars::api_token`].
    pub api_token: Option<String>,
    /// In place of [`CredentialVars::oauth_token`].
    pub oauth_token: Option<String>,
    /// In place of [`CredentialVars::client_id`].
    pub client_id: Option<String>,
    /// In place of [`CredentialVars::client_secret`].
    pub client_secret: Option<String>,
}

impl CredentialNames {
    /// `vars` with the names given here in place of theirs.
    pub fn apply(&self, vars: CredentialVars) -> CredentialVars {
        let pick = |name: &Option<String>, default: String| name.clone().unwrap_or(default);
        CredentialVars {
            email: pick(&self.email, vars.email),
            api_token: pick(&self.api_token, vars.api_token),
            oauth_token: pick(&self.oauth_token, vars.oauth_token),
            client_id: pick(&self.client_id, vars.client_id),
            client_secret: pick(&self.client_secret, vars.client_secret),
            oauth: vars.oauth,
        }
    }
}

impl CredentialVars {
    /// The variables of an OAuth client, for messages.
    pub(crate) fn client_hint(&self) -> String {
        format!(
            "{} and {} (or their _FILE forms)",
            self.client_id, self.client_secret
        )
    }
}

/// No usable credentials in the environment. Names variables, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "no Zendesk credentials: set {client_id} and {client_secret} (an OAuth client), or run `zdmap auth login`, or set {oauth_token}, or {email} and {api_token} (each variable also as a file named by the same name with _FILE appended)"
    )]
    Missing {
        email: String,
        api_token: String,
        oauth_token: String,
        client_id: String,
        client_secret: String,
    },
    #[error("{present} is set but {missing} is not: set both, or set {oauth_token} instead")]
    Incomplete {
        present: String,
        missing: String,
        oauth_token: String,
    },
    #[error(
        "{client_id} is set but {client_secret} is not: the client-credentials grant needs both (a public client connects with `zdmap auth login` instead)"
    )]
    NoClientSecret {
        client_id: String,
        client_secret: String,
    },
    #[error(
        "{var} contains characters that cannot go in an HTTP header (control characters or non-ASCII)"
    )]
    InvalidValue { var: String },
    #[error("both {var} and {var}_FILE are set: set one")]
    Both { var: String },
    #[error("cannot read {var}_FILE ({path}): {reason}")]
    File {
        var: String,
        path: String,
        reason: String,
    },
}

/// How requests authenticate to Zendesk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// An agent's email and API token (HTTP Basic `{email}/token:{token}`).
    ApiToken { email: String, token: Secret },
    /// A fixed OAuth access token (HTTP Bearer).
    OAuth { token: Secret },
    /// An OAuth client that asks for its own access tokens (client-credentials grant).
    OAuthClient(OAuthClient),
    /// A refresh-token chain a person started with `zdmap auth login`.
    OAuthChain(ChainSource),
}

/// An OAuth client with its secret, for the client-credentials grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthClient {
    pub id: String,
    pub secret: Secret,
    pub scope: String,
    pub lifetime: Option<u64>,
    /// Which variables hold the id and secret, for messages.
    pub hint: String,
}

/// A refresh-token chain in a store, and the client's secret if it has one.
#[derive(Clone, Debug)]
pub struct ChainSource {
    pub store: Arc<dyn ChainStore>,
    pub secret: Option<Secret>,
    pub lifetime: Option<u64>,
    /// Which variable holds the secret, for messages.
    pub hint: String,
}

impl PartialEq for ChainSource {
    fn eq(&self, other: &Self) -> bool {
        self.store.place() == other.store.place()
            && self.secret == other.secret
            && self.lifetime == other.lifetime
    }
}

impl Eq for ChainSource {}

/// The email of the fixed credential used for the emulator when none are set.
pub(crate) const EMULATOR_EMAIL: &str = "emulator@zdmap.invalid";

impl Credentials {
    pub fn api_token(email: impl Into<String>, token: impl Into<String>) -> Self {
        Credentials::ApiToken {
            email: email.into(),
            token: Secret::new(token),
        }
    }

    pub fn oauth(token: impl Into<String>) -> Self {
        Credentials::OAuth {
            token: Secret::new(token),
        }
    }

    /// The fixed, non-secret credential used with the emulator when no credentials are set
    /// (the emulator accepts any well-formed credential).
    pub fn emulator_placeholder() -> Self {
        Credentials::api_token(EMULATOR_EMAIL, "emulator")
    }

    /// Reads credentials from the process environment (see [`Credentials::from_lookup`]): each
    /// variable, or the file named by the variable with `_FILE` appended (read at each call, so
    /// a reload picks up a rotated secret).
    pub fn from_env(vars: &CredentialVars) -> Result<Self, CredentialsError> {
        let mut values = std::collections::HashMap::new();
        for name in [
            &vars.email,
            &vars.api_token,
            &vars.oauth_token,
            &vars.client_id,
            &vars.client_secret,
        ] {
            if let Some(value) = env_or_file(name)? {
                values.insert(name.as_str(), value);
            }
        }
        Self::from_lookup(vars, |name| values.get(name).cloned())
    }

    /// Reads credentials through `lookup` (a variable name to its value). Empty values count as
    /// unset. An OAuth client wins over an OAuth token, which wins over an email + API token.
    pub(crate) fn from_lookup(
        vars: &CredentialVars,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CredentialsError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let credentials = if let Some(id) = get(&vars.client_id) {
            let Some(secret) = get(&vars.client_secret) else {
                return Err(CredentialsError::NoClientSecret {
                    client_id: vars.client_id.clone(),
                    client_secret: vars.client_secret.clone(),
                });
            };
            Credentials::OAuthClient(OAuthClient {
                id: id.trim().to_string(),
                secret: Secret::new(secret.trim()),
                scope: vars.oauth.scope.clone(),
                lifetime: vars.oauth.lifetime,
                hint: vars.client_hint(),
            })
        } else if let Some(token) = get(&vars.oauth_token) {
            Credentials::oauth(token.trim())
        } else {
            match (get(&vars.email), get(&vars.api_token)) {
                (Some(email), Some(token)) => Credentials::api_token(email.trim(), token.trim()),
                (None, None) => {
                    return Err(CredentialsError::Missing {
                        email: vars.email.clone(),
                        api_token: vars.api_token.clone(),
                        oauth_token: vars.oauth_token.clone(),
                        client_id: vars.client_id.clone(),
                        client_secret: vars.client_secret.clone(),
                    });
                }
                (Some(_), None) => {
                    return Err(CredentialsError::Incomplete {
                        present: vars.email.clone(),
                        missing: vars.api_token.clone(),
                        oauth_token: vars.oauth_token.clone(),
                    });
                }
                (None, Some(_)) => {
                    return Err(CredentialsError::Incomplete {
                        present: vars.api_token.clone(),
                        missing: vars.email.clone(),
                        oauth_token: vars.oauth_token.clone(),
                    });
                }
            }
        };
        // Fail now, with the variable's name, rather than on the first request. (An OAuth
        // client's id and secret travel in a JSON body, where any character goes.)
        let var = match &credentials {
            Credentials::OAuth { .. } => &vars.oauth_token,
            Credentials::ApiToken { .. } => &vars.api_token,
            Credentials::OAuthClient(_) | Credentials::OAuthChain(_) => return Ok(credentials),
        };
        if credentials.fixed_header().is_none() {
            return Err(CredentialsError::InvalidValue { var: var.clone() });
        }
        Ok(credentials)
    }

    /// The chain in `store`, with the client's secret from its variable when set (a
    /// confidential client sends it on every refresh; a public one has none).
    pub fn chain(
        store: Arc<dyn ChainStore>,
        vars: &CredentialVars,
    ) -> Result<Self, CredentialsError> {
        let secret = env_or_file(&vars.client_secret)?
            .map(|s| Secret::new(s.trim()))
            .filter(|s| !s.expose().is_empty());
        Ok(Credentials::OAuthChain(ChainSource {
            store,
            secret,
            lifetime: vars.oauth.lifetime,
            hint: format!("{} (or {}_FILE)", vars.client_secret, vars.client_secret),
        }))
    }

    /// Like [`Credentials::from_env`], but when no variable is set at all and `allow_placeholder`
    /// is true (the destination is the emulator), returns [`Credentials::emulator_placeholder`].
    pub(crate) fn from_env_or_placeholder(
        vars: &CredentialVars,
        allow_placeholder: bool,
    ) -> Result<Self, CredentialsError> {
        match Self::from_env(vars) {
            Err(CredentialsError::Missing { .. }) if allow_placeholder => {
                Ok(Self::emulator_placeholder())
            }
            other => other,
        }
    }

    /// `"Basic"` or `"Bearer"`: safe to log.
    pub fn scheme(&self) -> &'static str {
        match self {
            Credentials::ApiToken { .. } => "Basic",
            _ => "Bearer",
        }
    }

    /// What these credentials are, for logs and `zdmap auth status`: never a secret.
    pub fn describe(&self) -> String {
        match self {
            Credentials::ApiToken { email, .. } if email == EMULATOR_EMAIL => {
                "the emulator's placeholder credential".into()
            }
            Credentials::ApiToken { email, .. } => format!("an API token of {email}"),
            Credentials::OAuth { .. } => "a fixed OAuth access token".into(),
            Credentials::OAuthClient(c) => format!(
                "OAuth client credentials (client {:?}, scope {:?})",
                c.id, c.scope
            ),
            Credentials::OAuthChain(c) => format!(
                "an OAuth refresh-token chain in {}{}",
                c.store.place(),
                if c.secret.is_some() {
                    " (confidential client)"
                } else {
                    ""
                }
            ),
        }
    }

    /// Whether these are an API token a person set (Zendesk ends them on [`API_TOKENS_END`]).
    pub fn is_api_token(&self) -> bool {
        matches!(self, Credentials::ApiToken { email, .. } if email != EMULATOR_EMAIL)
    }

    /// The `Authorization` header value of a fixed credential, marked sensitive. `None` for
    /// the OAuth grants (their header comes from an [`Authorizer`]) and when a value cannot go
    /// in a header (checked up front by [`Credentials::from_lookup`]).
    pub(crate) fn fixed_header(&self) -> Option<HeaderValue> {
        let text = match self {
            Credentials::ApiToken { email, token } => {
                let user_pass = format!("{email}/token:{}", token.expose());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(user_pass)
                )
            }
            Credentials::OAuth { token } => format!("Bearer {}", token.expose()),
            Credentials::OAuthClient(_) | Credentials::OAuthChain(_) => return None,
        };
        let mut value = HeaderValue::from_str(&text).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

/// The variable `name`, else the content of the file `{name}_FILE` names. Errors name the
/// variable and the file, never the content.
pub(crate) fn env_or_file(name: &str) -> Result<Option<String>, CredentialsError> {
    let direct = std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let Some(path) = std::env::var_os(format!("{name}_FILE")).filter(|p| !p.is_empty()) else {
        return Ok(direct);
    };
    if direct.is_some() {
        return Err(CredentialsError::Both { var: name.into() });
    }
    std::fs::read_to_string(&path)
        .map(Some)
        .map_err(|e| CredentialsError::File {
            var: name.into(),
            path: std::path::Path::new(&path).display().to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn credential_names_replace_only_the_names_given() {
        let names = CredentialNames {
            email: Some("US_EMAIL".into()),
            client_secret: Some("US_CLIENT_SECRET".into()),
            ..CredentialNames::default()
        };
        let vars = names.apply(CredentialVars::default());
        assert_eq!(vars.email, "US_EMAIL");
        assert_eq!(vars.client_secret, "US_CLIENT_SECRET");
        assert_eq!(vars.api_token, "ZENDESK_API_TOKEN");
        assert_eq!(vars.client_id, "ZENDESK_OAUTH_CLIENT_ID");
        assert_eq!(
            CredentialNames::default().apply(CredentialVars::default()),
            CredentialVars::default()
        );
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn basic_header_is_email_slash_token() {
        let c = Credentials::from_lookup(
            &CredentialVars::default(),
            env(&[("ZENDESK_EMAIL", "a@b.co"), ("ZENDESK_API_TOKEN", "tok")]),
        )
        .expect("credentials");
        let header = c.fixed_header().expect("header");
        assert!(header.is_sensitive());
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("a@b.co/token:tok")
        );
        assert_eq!(header.to_str().expect("ascii"), expected);
    }

    #[test]
    fn oauth_wins_over_api_token() {
        let c = Credentials::from_lookup(
            &CredentialVars::default(),
            env(&[
                ("ZENDESK_EMAIL", "a@b.co"),
                ("ZENDESK_API_TOKEN", "tok"),
                ("ZENDESK_OAUTH_TOKEN", "oauth-secret"),
            ]),
        )
        .expect("credentials");
        assert_eq!(c.scheme(), "Bearer");
        let header = c.fixed_header().expect("header");
        assert_eq!(header.to_str().expect("ascii"), "Bearer oauth-secret");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let basic = Credentials::api_token("a@b.co", "s3cr3t-token");
        let bearer = Credentials::oauth("s3cr3t-oauth");
        for text in [
            format!("{basic:?}"),
            format!("{bearer:?}"),
            format!("{:?}", basic.fixed_header()),
            format!("{}", Secret::new("s3cr3t")),
        ] {
            assert!(!text.contains("s3cr3t"), "{text}");
        }
    }

    #[test]
    fn missing_and_incomplete_are_explained() {
        let vars = CredentialVars::default();
        let err = Credentials::from_lookup(&vars, env(&[])).expect_err("none set");
        assert!(
            err.to_string().starts_with(
                "no Zendesk credentials: set ZENDESK_OAUTH_CLIENT_ID and ZENDESK_OAUTH_CLIENT_SECRET (an OAuth client), or run `zdmap auth login`"
            ),
            "{err}"
        );
        let err = Credentials::from_lookup(&vars, env(&[("ZENDESK_API_TOKEN", "secret-value")]))
            .expect_err("no email");
        assert!(err.to_string().contains("ZENDESK_EMAIL"));
        assert!(!err.to_string().contains("secret-value"));
        let err = Credentials::from_lookup(&vars, env(&[("ZENDESK_OAUTH_TOKEN", "bad\nvalue")]))
            .expect_err("newline");
        assert!(!err.to_string().contains("bad"));
    }

    #[test]
    fn an_oauth_client_wins_and_needs_its_secret() {
        let vars = CredentialVars::default();
        let c = Credentials::from_lookup(
            &vars,
            env(&[
                ("ZENDESK_OAUTH_CLIENT_ID", "zdmap_pipeline"),
                ("ZENDESK_OAUTH_CLIENT_SECRET", " s3cr3t-client\n"),
                ("ZENDESK_OAUTH_TOKEN", "fixed"),
                ("ZENDESK_EMAIL", "a@b.co"),
                ("ZENDESK_API_TOKEN", "tok"),
            ]),
        )
        .expect("credentials");
        let Credentials::OAuthClient(client) = &c else {
            panic!("not a client: {c:?}");
        };
        assert_eq!(client.id, "zdmap_pipeline");
        assert_eq!(client.secret.expose(), "s3cr3t-client");
        assert_eq!(client.scope, "read write");
        assert!(c.fixed_header().is_none());
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(!c.describe().contains("s3cr3t"));
        let err = Credentials::from_lookup(&vars, env(&[("ZENDESK_OAUTH_CLIENT_ID", "zdmap")]))
            .expect_err("no secret");
        assert!(
            err.to_string()
                .contains("ZENDESK_OAUTH_CLIENT_SECRET is not"),
            "{err}"
        );
    }

    #[test]
    fn only_an_api_token_a_person_set_is_an_api_token() {
        assert!(Credentials::api_token("a@b.co", "t").is_api_token());
        assert!(!Credentials::emulator_placeholder().is_api_token());
        assert!(!Credentials::oauth("t").is_api_token());
    }

    #[test]
    fn placeholder_only_when_nothing_is_set() {
        let vars = CredentialVars {
            email: "ZDMAP_TEST_UNSET_EMAIL_7c1".into(),
            api_token: "ZDMAP_TEST_UNSET_TOKEN_7c1".into(),
            oauth_token: "ZDMAP_TEST_UNSET_OAUTH_7c1".into(),
            client_id: "ZDMAP_TEST_UNSET_CLIENT_7c1".into(),
            client_secret: "ZDMAP_TEST_UNSET_SECRET_7c1".into(),
            oauth: OAuthRequest::default(),
        };
        assert_eq!(
            Credentials::from_env_or_placeholder(&vars, true),
            Ok(Credentials::emulator_placeholder())
        );
        assert!(Credentials::from_env_or_placeholder(&vars, false).is_err());
    }
}
