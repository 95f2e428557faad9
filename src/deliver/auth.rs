//! Credentials for the Zendesk API: where they come from (environment variables, or files they
//! name: `ZENDESK_API_TOKEN_FILE` as a mounted secret is), how they
//! are kept (a [`Secret`] that never prints) and the `Authorization` header built from them at send
//! time (marked sensitive, so reqwest and `http` never print it either).
//!
//! Two schemes (zendesk-api.md §1):
//! - API token: `Authorization: Basic base64("{email}/token:{api_token}")`;
//! - OAuth access token: `Authorization: Bearer {token}`. OAuth wins when both are set.

use base64::Engine as _;
use reqwest::header::HeaderValue;

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

/// The names of the environment variables credentials are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialVars {
    /// The agent's email, for API-token auth. Default `ZENDESK_EMAIL`.
    pub email: String,
    /// The API token, for API-token auth. Default `ZENDESK_API_TOKEN`.
    pub api_token: String,
    /// An OAuth access token. Default `ZENDESK_OAUTH_TOKEN`.
    pub oauth_token: String,
}

impl Default for CredentialVars {
    fn default() -> Self {
        CredentialVars {
            email: "ZENDESK_EMAIL".into(),
            api_token: "ZENDESK_API_TOKEN".into(),
            oauth_token: "ZENDESK_OAUTH_TOKEN".into(),
        }
    }
}

/// No usable credentials in the environment. Names variables, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "no Zendesk credentials: set {email} and {api_token}, or {oauth_token} (each also as a file named by {email}_FILE, {api_token}_FILE, {oauth_token}_FILE)"
    )]
    Missing {
        email: String,
        api_token: String,
        oauth_token: String,
    },
    #[error("{present} is set but {missing} is not: set both, or set {oauth_token} instead")]
    Incomplete {
        present: String,
        missing: String,
        oauth_token: String,
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
    /// An OAuth access token (HTTP Bearer).
    OAuth { token: Secret },
}

/// The email of the fixed credential used for the emulator when none are set.
pub const EMULATOR_EMAIL: &str = "emulator@zdmap.invalid";

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
        for name in [&vars.email, &vars.api_token, &vars.oauth_token] {
            if let Some(value) = env_or_file(name)? {
                values.insert(name.as_str(), value);
            }
        }
        Self::from_lookup(vars, |name| values.get(name).cloned())
    }

    /// Reads credentials through `lookup` (a variable name to its value). Empty values count as
    /// unset. An OAuth token wins over an email + API token.
    pub fn from_lookup(
        vars: &CredentialVars,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CredentialsError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let credentials = if let Some(token) = get(&vars.oauth_token) {
            Credentials::oauth(token.trim())
        } else {
            match (get(&vars.email), get(&vars.api_token)) {
                (Some(email), Some(token)) => Credentials::api_token(email.trim(), token.trim()),
                (None, None) => {
                    return Err(CredentialsError::Missing {
                        email: vars.email.clone(),
                        api_token: vars.api_token.clone(),
                        oauth_token: vars.oauth_token.clone(),
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
        // Fail now, with the variable's name, rather than on the first request.
        if credentials.authorization_header().is_none() {
            let var = match &credentials {
                Credentials::OAuth { .. } => vars.oauth_token.clone(),
                Credentials::ApiToken { .. } => vars.api_token.clone(),
            };
            return Err(CredentialsError::InvalidValue { var });
        }
        Ok(credentials)
    }

    /// Like [`Credentials::from_env`], but when no variable is set at all and `allow_placeholder`
    /// is true (the destination is the emulator), returns [`Credentials::emulator_placeholder`].
    pub fn from_env_or_placeholder(
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
            Credentials::OAuth { .. } => "Bearer",
        }
    }

    /// The `Authorization` header value, marked sensitive. `None` when a value cannot go in a
    /// header (checked up front by [`Credentials::from_lookup`]).
    pub fn authorization_header(&self) -> Option<HeaderValue> {
        let text = match self {
            Credentials::ApiToken { email, token } => {
                let user_pass = format!("{email}/token:{}", token.expose());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(user_pass)
                )
            }
            Credentials::OAuth { token } => format!("Bearer {}", token.expose()),
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
        let header = c.authorization_header().expect("header");
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
        let header = c.authorization_header().expect("header");
        assert_eq!(header.to_str().expect("ascii"), "Bearer oauth-secret");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let basic = Credentials::api_token("a@b.co", "s3cr3t-token");
        let bearer = Credentials::oauth("s3cr3t-oauth");
        for text in [
            format!("{basic:?}"),
            format!("{bearer:?}"),
            format!("{:?}", basic.authorization_header()),
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
                "no Zendesk credentials: set ZENDESK_EMAIL and ZENDESK_API_TOKEN, or ZENDESK_OAUTH_TOKEN (each also as a file named by ZENDESK_EMAIL_FILE,"
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
    fn placeholder_only_when_nothing_is_set() {
        let vars = CredentialVars {
            email: "ZDMAP_TEST_UNSET_EMAIL_7c1".into(),
            api_token: "ZDMAP_TEST_UNSET_TOKEN_7c1".into(),
            oauth_token: "ZDMAP_TEST_UNSET_OAUTH_7c1".into(),
        };
        assert_eq!(
            Credentials::from_env_or_placeholder(&vars, true),
            Ok(Credentials::emulator_placeholder())
        );
        assert!(Credentials::from_env_or_placeholder(&vars, false).is_err());
    }
}
