//! Where requests go: the base URL of the destination and the rule that every request stays on it.
//!
//! The base URL is either `https://{subdomain}.zendesk.com`, with the subdomain checked (one DNS
//! label: lowercase letters, digits and hyphens inside, as in `acme-support`), or an explicit override (`--zendesk-url` /
//! `ZDMAP_ZENDESK_URL`, e.g. the emulator) that must be a bare `http(s)://host[:port]`. Every
//! request URL is built by [`Target::url_for`], which refuses a path that would leave that host, so
//! no setting and no rendered path can send credentials elsewhere. Errors never echo the input,
//! which may contain credentials (`https://user:token@host`).

use reqwest::Url;

use super::TargetOverride;

/// A checked destination base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    base: Url,
    kind: TargetKind,
}

/// What kind of destination a [`Target`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// A real Zendesk account, `https://{subdomain}.zendesk.com`.
    Zendesk,
    /// An explicit base URL (`--zendesk-url`): the emulator, a proxy, a test server.
    Override,
}

/// What `TargetOverride` ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetChoice {
    /// Send to this base URL.
    Remote(Target),
    /// Start the built-in emulator and send to it (then [`Target::emulator`] with its address).
    Emulator,
}

/// A base URL or a request path that was refused. Never contains the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "no Zendesk subdomain set: set `subdomain` in destination.yaml (e.g. `--set subdomain=acme`) or pass --zendesk-url"
    )]
    NoSubdomain,
    #[error(
        "invalid Zendesk subdomain: use only lowercase letters, digits and hyphens inside the name (as in acme or acme-support for https://acme-support.zendesk.com)"
    )]
    InvalidSubdomain,
    #[error("invalid --zendesk-url / ZDMAP_ZENDESK_URL: {reason}")]
    InvalidUrl { reason: &'static str },
    #[error("request path refused: {reason}")]
    InvalidPath { reason: &'static str },
}

impl Target {
    /// `https://{subdomain}.zendesk.com`. A leading `https://` and a trailing `.zendesk.com` (and
    /// `/`) are stripped; what is left must be one DNS label: lowercase ASCII letters, digits and
    /// hyphens, neither first nor last. Uppercase is lowered (hostnames are case-insensitive).
    /// With no `.`, `/`, `@` or `:` possible, the host is always a subdomain of `zendesk.com`.
    pub fn zendesk(subdomain: &str) -> Result<Target, TargetError> {
        let mut s = subdomain.trim().to_ascii_lowercase();
        if let Some(rest) = s.strip_prefix("https://") {
            s = rest.to_string();
        }
        if let Some(rest) = s.strip_suffix('/') {
            s = rest.to_string();
        }
        if let Some(rest) = s.strip_suffix(".zendesk.com") {
            s = rest.to_string();
        }
        let label = !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if !label {
            return Err(TargetError::InvalidSubdomain);
        }
        let host = format!("{s}.zendesk.com");
        let base = Url::parse(&format!("https://{host}"))
            .ok()
            .filter(|u| u.host_str() == Some(host.as_str()))
            .ok_or(TargetError::InvalidSubdomain)?;
        Ok(Target {
            base,
            kind: TargetKind::Zendesk,
        })
    }

    /// An explicit base URL: `http` or `https`, a host, an optional port, and nothing else (no
    /// user name or password, no path but `/`, no query, no fragment).
    pub(crate) fn from_url(url: &str) -> Result<Target, TargetError> {
        let invalid = |reason| TargetError::InvalidUrl { reason };
        let parsed = Url::parse(url.trim()).map_err(|_| invalid("not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "credentials in the URL are not allowed; use environment variables",
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid("no host"));
        }
        if parsed.path() != "/" && !parsed.path().is_empty() {
            return Err(invalid(
                "a path is not allowed: give only scheme, host and port",
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("a query or fragment is not allowed"));
        }
        Ok(Target {
            base: parsed,
            kind: TargetKind::Override,
        })
    }

    /// The emulator listening on `addr`.
    pub fn emulator(addr: std::net::SocketAddr) -> Target {
        let base = Url::parse(&format!("http://{addr}/"))
            .unwrap_or_else(|_| unreachable!("a socket address always makes a valid http URL"));
        Target {
            base,
            kind: TargetKind::Override,
        }
    }

    /// Resolves the command-line choice: `--emulator`, else `--zendesk-url`, else the subdomain
    /// from destination.yaml.
    pub fn resolve(
        args: &TargetOverride,
        subdomain: Option<&str>,
    ) -> Result<TargetChoice, TargetError> {
        if args.emulator {
            return Ok(TargetChoice::Emulator);
        }
        if let Some(url) = args.zendesk_url.as_deref().filter(|u| !u.trim().is_empty()) {
            return Target::from_url(url).map(TargetChoice::Remote);
        }
        match subdomain.filter(|s| !s.trim().is_empty()) {
            Some(s) => Target::zendesk(s).map(TargetChoice::Remote),
            None => Err(TargetError::NoSubdomain),
        }
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    /// True for an explicit URL (the emulator or a test server), where a placeholder credential
    /// may stand in for missing ones.
    pub fn allows_placeholder_credentials(&self) -> bool {
        self.kind == TargetKind::Override
    }

    /// The full URL of a request: the base URL followed by `path_and_query`, which must start
    /// with a single `/`. The result is checked to have the base URL's scheme, host and port.
    pub(crate) fn url_for(&self, path_and_query: &str) -> Result<Url, TargetError> {
        let invalid = |reason| TargetError::InvalidPath { reason };
        if !path_and_query.starts_with('/') {
            return Err(invalid("the path must start with /"));
        }
        if path_and_query.starts_with("//") {
            return Err(invalid("the path must not start with //"));
        }
        if path_and_query
            .chars()
            .any(|c| c.is_ascii_control() || c == '\\' || c == '#')
        {
            return Err(invalid("the path contains a control character, \\ or #"));
        }
        let origin = self.base.as_str().trim_end_matches('/');
        let url = Url::parse(&format!("{origin}{path_and_query}"))
            .map_err(|_| invalid("the path does not make a valid URL"))?;
        if !self.holds(&url) {
            return Err(invalid("the path would leave the destination host"));
        }
        Ok(url)
    }
}

impl Target {
    /// The path and query of `link`, a full URL an answer gave (a next page), when it is on
    /// this destination: the base URL's scheme, host and port, and no user name or password.
    /// The result goes through [`Target::url_for`] like any rendered path.
    pub(crate) fn path_of_link(&self, link: &str) -> Result<String, TargetError> {
        let invalid = |reason| TargetError::InvalidPath { reason };
        let url = Url::parse(link).map_err(|_| invalid("the link is not a full URL"))?;
        if !self.holds(&url) {
            return Err(invalid("the link is not on the destination host"));
        }
        Ok(match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        })
    }

    /// Whether `url` has the base URL's scheme, host and port, and no user name or password.
    fn holds(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host() == self.base.host()
            && url.port_or_known_default() == self.base.port_or_known_default()
            && url.username().is_empty()
            && url.password().is_none()
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.base.as_str().trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
        for ok in [
            "acme",
            "acme.zendesk.com",
            "https://acme.zendesk.com",
            "https://acme.zendesk.com/",
            "ACME",
        ] {
            let t = Target::zendesk(ok).expect(ok);
            assert_eq!(t.base_url().as_str(), "https://acme.zendesk.com/", "{ok}");
        }
        assert!(Target::zendesk("acme2").is_ok());
        for (name, url) in [
            ("acme-support", "https://acme-support.zendesk.com/"),
            ("d3v-foo.zendesk.com", "https://d3v-foo.zendesk.com/"),
            ("xn--cme-4na", "https://xn--cme-4na.zendesk.com/"),
        ] {
            let t = Target::zendesk(name).expect(name);
            assert_eq!(t.base_url().as_str(), url, "{name}");
        }
        for bad in [
            "",
            "evil.com/",
            "-acme",
            "acme-",
            "-",
            "acme-.zendesk.com",
            "evil-com.evil.com",
            "a-b.c",
            &"a".repeat(64),
            "a.b",
            "a_b",
            "user@host",
            "user:pw@acme",
            "acme.zendesk.com.evil.com",
            "http://acme.zendesk.com",
            "acme/x",
            "ac me",
            "äcme",
        ] {
            assert_eq!(
                Target::zendesk(bad),
                Err(TargetError::InvalidSubdomain),
                "{bad}"
            );
        }
    }

    #[test]
    fn override_urls() {
        assert!(Target::from_url("http://127.0.0.1:8080").is_ok());
        assert!(Target::from_url("https://proxy.example.com/").is_ok());
        for bad in [
            "ftp://x.com",
            "http://user:secrettoken@x.com",
            "http://x.com/api",
            "http://x.com/?a=b",
            "x.com",
            "file:///etc/passwd",
        ] {
            let err = Target::from_url(bad).expect_err(bad);
            assert!(!err.to_string().contains("secrettoken"));
        }
    }

    #[test]
    fn links_are_followed_only_on_the_host() {
        let t = Target::from_url("http://127.0.0.1:8080").expect("target");
        assert_eq!(
            t.path_of_link("http://127.0.0.1:8080/api/v2/tickets/1/audits?page[after]=x")
                .as_deref(),
            Ok("/api/v2/tickets/1/audits?page[after]=x")
        );
        for off in [
            "https://127.0.0.1:8080/api/v2/x",
            "http://127.0.0.1:8081/api/v2/x",
            "http://127.0.0.2:8080/api/v2/x",
            "http://user:pw@127.0.0.1:8080/api/v2/x",
            "http://evil.example/api/v2/x",
            "/api/v2/x",
        ] {
            assert!(t.path_of_link(off).is_err(), "{off}");
        }
        let z = Target::zendesk("acme").expect("target");
        assert_eq!(
            z.path_of_link("https://acme.zendesk.com:443/api/v2/x")
                .as_deref(),
            Ok("/api/v2/x")
        );
        assert!(
            z.path_of_link("https://acme.zendesk.com.evil.com/api/v2/x")
                .is_err()
        );
    }

    #[test]
    fn paths_stay_on_the_host() {
        let t = Target::zendesk("acme").expect("valid");
        assert_eq!(
            t.url_for("/api/v2/users/search?query=a%40b")
                .expect("ok")
                .as_str(),
            "https://acme.zendesk.com/api/v2/users/search?query=a%40b"
        );
        for bad in [
            "//evil.com/x",
            "@evil.com/x",
            "api/v2",
            "/\\evil.com",
            "/a\r\nHost: x",
        ] {
            assert!(t.url_for(bad).is_err(), "{bad}");
        }
        let local = Target::from_url("http://127.0.0.1:9").expect("valid");
        assert_eq!(
            local.url_for("/api/v2/tickets").expect("ok").as_str(),
            "http://127.0.0.1:9/api/v2/tickets"
        );
    }

    #[test]
    fn resolve_prefers_emulator_then_url_then_subdomain() {
        let mut args = TargetOverride::default();
        assert_eq!(Target::resolve(&args, None), Err(TargetError::NoSubdomain));
        assert_eq!(
            Target::resolve(&args, Some("acme")),
            Ok(TargetChoice::Remote(
                Target::zendesk("acme").expect("valid")
            ))
        );
        args.zendesk_url = Some("http://localhost:1234".into());
        assert!(matches!(
            Target::resolve(&args, Some("acme")),
            Ok(TargetChoice::Remote(t)) if t.kind() == TargetKind::Override
        ));
        args.emulator = true;
        assert_eq!(Target::resolve(&args, None), Ok(TargetChoice::Emulator));
    }
}
