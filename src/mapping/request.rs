//! The HTTP request a step renders: method, path, query, headers and a JSON body.
//!
//! A [`Request`] is plain data. The planner builds it from a step of an action file,
//! the sender sends it, `zdmap preview` prints it and the emulator's tests compare it.
//! It carries no base URL and no credentials: those belong to the sender.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// An HTTP method a step may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rendered HTTP request, relative to the destination's base URL.
///
/// `path` is already URL-encoded segment by segment (template parts are encoded,
/// the literal slashes of the action file are kept). `query` values are raw: the
/// sender encodes them. `endpoint` is the path with every template part as `{id}`
/// (`/api/v2/users/{id}/events`): what counters and metrics name, so they never carry event
/// data; empty for a request not rendered from a template.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub method: Method,
    pub path: String,
    #[serde(skip)]
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub query: IndexMap<String, String>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

impl Request {
    /// The path and the encoded query string, as sent on the wire (`/api/v2/x?a=b`).
    pub fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            return self.path.clone();
        }
        let mut out = self.path.clone();
        for (i, (k, v)) in self.query.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(&encode_query_component(k));
            out.push('=');
            out.push_str(&encode_query_component(v));
        }
        out
    }
}

const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one query key or value (RFC 3986 unreserved characters are kept).
pub(crate) fn encode_query_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY).to_string()
}

/// Appends `s` to `path` as one percent-encoded path segment: a value spliced into a path can
/// never add a `/`, `?` or `#`.
pub(crate) fn push_path_segment(path: &mut String, s: &str) {
    path.extend(percent_encoding::utf8_percent_encode(s, QUERY));
}

/// A segment that would move the request to another endpoint rather than name something in
/// it: empty, `.` or `..`, also in their percent-encoded forms (`%2e`, `%2E%2e`, `%252e`...),
/// which URL parsers and servers resolve as dot segments.
pub(crate) fn is_moving_segment(segment: &str) -> bool {
    let mut text = std::borrow::Cow::Borrowed(segment);
    // Each decoding undoes one layer of encoding; three covers a proxy decoding twice.
    for _ in 0..3 {
        if matches!(text.as_ref(), "" | "." | "..") {
            return true;
        }
        let decoded = percent_encoding::percent_decode_str(&text).decode_utf8_lossy();
        if decoded == text {
            return false;
        }
        text = std::borrow::Cow::Owned(decoded.into_owned());
    }
    matches!(text.as_ref(), "" | "." | "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_encoded() {
        let mut r = Request {
            method: Method::Get,
            path: "/api/v2/users/search".into(),
            endpoint: String::new(),
            query: IndexMap::new(),
            headers: IndexMap::new(),
            body: None,
        };
        r.query.insert("query".into(), "email:\"a+b@x.com\"".into());
        assert_eq!(
            r.path_and_query(),
            "/api/v2/users/search?query=email%3A%22a%2Bb%40x.com%22"
        );
    }

    #[test]
    fn path_segment_cannot_escape() {
        let mut path = "/users/".to_owned();
        push_path_segment(&mut path, "../a/b?c d");
        assert_eq!(path, "/users/..%2Fa%2Fb%3Fc%20d");
    }

    #[test]
    fn dot_segments_in_any_encoding_move() {
        for s in [
            "",
            ".",
            "..",
            "%2e",
            "%2E",
            ".%2e",
            "%2e.",
            "%2E%2e",
            "%252e%252E",
        ] {
            assert!(is_moving_segment(s), "{s}");
        }
        for s in ["...", "a..", "123", "%2e%2e%2e", "%2f", "a%2e"] {
            assert!(!is_moving_segment(s), "{s}");
        }
    }
}
