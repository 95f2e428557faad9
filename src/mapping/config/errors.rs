//! Reading a destination's error bodies the way its `destination.yaml` says (`errors.codes`,
//! `errors.messages`): the one place zdmap learns Zendesk's error envelopes from.
//!
//! Codes are gathered from every path, most specific first (a detail's `DuplicateValue`
//! before the top-level `RecordInvalid`). A "code" with spaces in it is text, not a code
//! (`{"error": "Couldn't authenticate you"}`), and serves as the message when no path gives
//! one. A body that is text (an HTML page) is its own message.

use crate::mapping::path::{JsonPath, Selected};
use serde_json::Value;

/// Text bodies are quoted up to this many characters.
const MAX_TEXT: usize = 300;

/// The compiled `errors` paths of a destination.
#[derive(Debug, Default)]
pub struct ErrorFormats {
    pub(super) codes: Vec<JsonPath>,
    pub(super) messages: Vec<JsonPath>,
}

/// What an error body says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorInfo {
    /// Every code found, most specific first.
    pub codes: Vec<String>,
    pub message: Option<String>,
}

impl ErrorInfo {
    /// The most specific code.
    pub fn code(&self) -> Option<&str> {
        self.codes.first().map(String::as_str)
    }

    /// ` (CODE: message)`, ` (message)` or nothing, to follow a status in a sentence.
    pub fn said(&self) -> String {
        match (self.code(), &self.message) {
            (Some(c), Some(m)) => format!(" ({c}: {m})"),
            (Some(t), None) => format!(" ({t})"),
            (None, Some(t)) => format!(" ({t})"),
            (None, None) => String::new(),
        }
    }
}

impl ErrorFormats {
    /// The codes and the message of `body`.
    pub fn read(&self, body: &Value) -> ErrorInfo {
        if let Value::String(text) = body {
            let text: String = text.trim().chars().take(MAX_TEXT).collect();
            return ErrorInfo {
                codes: Vec::new(),
                message: Some(text).filter(|t| !t.is_empty()),
            };
        }
        let mut codes: Vec<String> = Vec::new();
        let mut text = None;
        for path in &self.codes {
            let found: Vec<&Value> = match path.select(body) {
                Selected::Nothing => Vec::new(),
                Selected::One(v) => vec![v],
                Selected::Many(vs) => vs,
            };
            for s in found.into_iter().filter_map(Value::as_str) {
                if s.chars().any(char::is_whitespace) {
                    text.get_or_insert_with(|| s.to_string());
                } else if !codes.iter().any(|c| c == s) {
                    codes.push(s.to_owned());
                }
            }
        }
        let message = self
            .messages
            .iter()
            .find_map(|p| p.first(body).and_then(Value::as_str).map(str::to_owned))
            .filter(|m| codes.first() != Some(m))
            .or(text)
            .map(|m| m.chars().take(MAX_TEXT).collect());
        ErrorInfo { codes, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn formats() -> std::sync::Arc<ErrorFormats> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        crate::mapping::config::Config::load(&dir, &[])
            .expect("the shipped mappings")
            .errors
    }

    fn read(body: Value) -> (Option<String>, Option<String>) {
        let info = formats().read(&body);
        (info.code().map(str::to_string), info.message)
    }

    #[test]
    fn zendesks_envelopes_as_the_shipped_destination_reads_them() {
        let invalid = json!({"error":"RecordInvalid","description":"Record validation errors","details":{"email":[{"description":"Email: x@y is already being used by another user","error":"DuplicateValue"}]}});
        let info = formats().read(&invalid);
        assert_eq!(info.codes, ["DuplicateValue", "RecordInvalid"]);
        assert_eq!(
            info.message.as_deref(),
            Some("Email: x@y is already being used by another user")
        );
        assert_eq!(
            read(
                json!({"index": 1, "success": false, "error": "RecordInvalid", "details": "Email: x is not properly formatted"})
            ),
            (
                Some("RecordInvalid".into()),
                Some("Email: x is not properly formatted".into())
            )
        );
        assert_eq!(
            read(json!({"error":"RecordNotFound","description":"Not found"})),
            (Some("RecordNotFound".into()), Some("Not found".into()))
        );
        assert_eq!(
            read(json!({"error":"Couldn't authenticate you"})),
            (None, Some("Couldn't authenticate you".into()))
        );
        assert_eq!(
            read(json!({"error":{"title":"Forbidden","message":"You do not have access"}})),
            (
                Some("Forbidden".into()),
                Some("You do not have access".into())
            )
        );
        assert_eq!(
            read(
                json!({"errors":[{"code":"TooManyRequests","title":"Too many requests to update"}]})
            ),
            (
                Some("TooManyRequests".into()),
                Some("Too many requests to update".into())
            )
        );
        assert_eq!(
            read(json!("<html>Rate limit exceeded</html>")),
            (None, Some("<html>Rate limit exceeded</html>".into()))
        );
        assert_eq!(read(Value::Null), (None, None));
        assert_eq!(read(json!({"user":{"id":1}})), (None, None));
        assert_eq!(
            formats()
                .read(&json!({"error":"RecordNotFound","description":"Not found"}))
                .said(),
            " (RecordNotFound: Not found)"
        );
    }
}
