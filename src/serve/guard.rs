//! Who may call a server that listens on loopback only: the web pages of allowed origins, and
//! requests addressed to the listener's own names.
//!
//! A server on `127.0.0.1` with no write key trusts whoever reaches it. A web page the
//! developer visits reaches it too: its browser posts a `text/plain` body cross-site (no CORS
//! preflight), or a name the attacker controls resolves to `127.0.0.1` (DNS rebinding). So,
//! whatever the write-key setting:
//! - a request with an `Origin` header is refused unless `--cors-origin` allows that origin;
//! - a request whose `Host` is not a loopback name (`localhost`, `127.x.y.z`, `[::1]`) or an
//!   `--allowed-host` is refused.
//!
//! A server that listens beyond loopback needs write keys, and is not guarded here.

use axum::http::{HeaderMap, header};
use std::net::SocketAddr;

/// The checks of a loopback server; `None` for a server that listens beyond loopback.
#[derive(Clone, Debug)]
pub(crate) struct Guard {
    /// Origins allowed by `--cors-origin`, without a trailing `/`; `any` for `*`.
    origins: Vec<String>,
    any_origin: bool,
    /// Host names allowed besides the loopback names, lowercase.
    hosts: Vec<String>,
}

impl Guard {
    /// The guard of a server listening on `listen`.
    pub fn new(
        listen: SocketAddr,
        cors_origins: &[String],
        allowed_hosts: &[String],
    ) -> Option<Guard> {
        listen.ip().is_loopback().then(|| Guard {
            any_origin: cors_origins.iter().any(|o| o == "*"),
            origins: cors_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            hosts: allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        })
    }

    /// Why a request with `headers` is refused, if it is.
    pub fn refusal(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin
                .to_str()
                .unwrap_or("")
                .trim_end_matches('/')
                .to_ascii_lowercase();
            if !self.any_origin && !self.origins.contains(&origin) {
                return Some(format!(
                    "a web page of {} may not post here: this server listens on loopback and allows only the origins of --cors-origin",
                    shown(&origin)
                ));
            }
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !self.host_allowed(host) {
            return Some(format!(
                "the Host {} is not a name of this server (it listens on loopback; add the name with --allowed-host)",
                shown(host)
            ));
        }
        None
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        // `[::1]:8088`, `localhost:8088`, `127.0.0.1`.
        let name = if let Some(rest) = host.strip_prefix('[') {
            rest.split(']').next().unwrap_or("")
        } else {
            host.rsplit_once(':').map_or(host.as_str(), |(name, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    name
                } else {
                    host.as_str()
                }
            })
        };
        let loopback_ip = name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        loopback_ip
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.hosts.iter().any(|h| h == name)
    }
}

/// A header's text as a log or an answer may show it: quoted, at most 100 characters, no
/// control characters.
fn shown(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).take(100).collect();
    format!("{clean:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_loopback_server_refuses_other_origins_and_other_hosts() {
        let listen: SocketAddr = "127.0.0.1:8088".parse().expect("addr");
        let guard = Guard::new(
            listen,
            &["https://app.example.com".into()],
            &["zdmap.internal".into()],
        )
        .expect("loopback");
        for ok in [
            headers(&[("host", "127.0.0.1:8088")]),
            headers(&[("host", "localhost:8088")]),
            headers(&[("host", "[::1]:8088")]),
            headers(&[("host", "zdmap.internal:8088")]),
            headers(&[("host", "localhost"), ("origin", "https://app.example.com")]),
        ] {
            assert_eq!(guard.refusal(&ok), None, "{ok:?}");
        }
        for refused in [
            headers(&[
                ("host", "127.0.0.1:8088"),
                ("origin", "https://evil.example"),
            ]),
            headers(&[("host", "127.0.0.1:8088"), ("origin", "null")]),
            headers(&[("host", "evil.example:8088")]),
            headers(&[("host", "127.0.0.1.evil.example")]),
            headers(&[]),
        ] {
            assert!(guard.refusal(&refused).is_some(), "{refused:?}");
        }
        let any = Guard::new(listen, &["*".into()], &[]).expect("loopback");
        assert_eq!(
            any.refusal(&headers(&[
                ("host", "localhost"),
                ("origin", "https://x.example")
            ])),
            None
        );
    }

    #[test]
    fn a_server_beyond_loopback_is_not_guarded_here() {
        assert!(Guard::new("0.0.0.0:8088".parse().expect("addr"), &[], &[]).is_none());
    }
}
