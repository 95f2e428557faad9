//! Authentication as Zendesk does it (docs/zendesk.md, "Authentication"). Zendesk takes
//! `Authorization: Basic base64("{email}/token:{api_token}")` or `Authorization: Bearer
//! {oauth_token}`. Anything else is 401 `{"error":"Couldn't authenticate you"}`. By default any
//! well-formed credentials pass. When an API token or OAuth token is configured, or an OAuth
//! client is registered, only those pass.
//! Bearer tokens the emulator issued itself are judged by `oauth` before this policy is asked.
//! Tokens are held in [`Secret`], whose `Debug` and serialized form never show them, and
//! compared in constant time.

use base64::Engine;
use subtle::ConstantTimeEq;

/// A credential that never shows itself in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// Whether `candidate` is this secret (compared in constant time).
    pub(crate) fn matches(&self, candidate: &str) -> bool {
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

/// Serialized as `"[redacted]"`: the knobs (`GET /__emulator/config`) show that a secret is
/// set, never what it is.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Which credentials the emulator accepts.
#[derive(Clone, Debug, Default)]
pub(crate) struct AuthPolicy {
    pub api_token: Option<Secret>,
    pub oauth_token: Option<Secret>,
}

/// Who is calling, after a successful check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Principal {
    /// `email/token:…` Basic auth, with the agent's email.
    Agent(String),
    /// A Bearer token: the id of the access token when the emulator issued it (`oauth`),
    /// `None` for a bearer it did not issue.
    OAuth(Option<u64>),
}

impl AuthPolicy {
    /// Checks an `Authorization` header value; `None` means 401. With `oauth_clients` (any
    /// registered OAuth client) the policy counts as restricted even without static tokens:
    /// only the configured api_token / oauth_token pass besides the tokens `oauth` issued.
    pub(crate) fn check(&self, header: Option<&str>, oauth_clients: bool) -> Option<Principal> {
        let restricted = oauth_clients || self.api_token.is_some() || self.oauth_token.is_some();
        let header = header?.trim();
        let (scheme, rest) = header.split_once(' ')?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            if rest.is_empty() {
                return None;
            }
            let ok = match &self.oauth_token {
                Some(t) => t.matches(rest),
                None => !restricted,
            };
            return ok.then_some(Principal::OAuth(None));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, token) = decoded.split_once(':')?;
        // Password Basic auth is disabled on most accounts: only `{email}/token` is accepted.
        let email = user.strip_suffix("/token")?;
        if !email.contains('@') || token.is_empty() {
            return None;
        }
        let ok = match &self.api_token {
            Some(t) => t.matches(token),
            None => !restricted,
        };
        ok.then(|| Principal::Agent(email.to_string()))
    }
}

/// The `Authorization` value as the request log shows it: the scheme, never the credentials.
pub(crate) fn redact(header: &str) -> String {
    match header.trim().split_once(' ') {
        Some((scheme, _)) => format!("{scheme} [redacted]"),
        None => "[redacted]".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn open_policy_accepts_well_formed_credentials_only() {
        let p = AuthPolicy::default();
        let check = |h: Option<&str>| p.check(h, false);
        assert_eq!(
            check(Some(&basic("a@b.co/token:xyz"))),
            Some(Principal::Agent("a@b.co".into()))
        );
        assert_eq!(check(Some("Bearer abc")), Some(Principal::OAuth(None)));
        assert_eq!(check(Some(&basic("a@b.co:password"))), None);
        assert_eq!(check(Some(&basic("nobody/token:xyz"))), None);
        assert_eq!(check(Some("Basic !!!")), None);
        assert_eq!(check(Some("Token abc")), None);
        assert_eq!(check(None), None);
        // A registered OAuth client closes the door to credentials nobody configured.
        assert_eq!(p.check(Some("Bearer abc"), true), None);
        assert_eq!(p.check(Some(&basic("a@b.co/token:xyz")), true), None);
    }

    #[test]
    fn restricted_policy_checks_the_token() {
        let p = AuthPolicy {
            api_token: Some(Secret::new("right")),
            oauth_token: None,
        };
        assert!(p.check(Some(&basic("a@b.co/token:right")), false).is_some());
        assert!(p.check(Some(&basic("a@b.co/token:right")), true).is_some());
        assert!(p.check(Some(&basic("a@b.co/token:wrong")), false).is_none());
        assert!(p.check(Some("Bearer right"), false).is_none());
        assert_eq!(format!("{:?}", p.api_token), "Some(Secret([redacted]))");
        assert_eq!(
            serde_json::to_string(&p.api_token).unwrap_or_default(),
            r#""[redacted]""#
        );
        assert_eq!(redact("Basic abc"), "Basic [redacted]");
    }
}
