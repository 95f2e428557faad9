//! Reading Zendesk's error bodies. Four incompatible envelopes (docs/zendesk.md, "Error bodies")
//! become one [`ZendeskError`] with a machine code and a readable message.
//!
//! | Envelope | `error` | `details` | `message` |
//! |---|---|---|---|
//! | `{"error":"RecordInvalid","description":"..","details":{"email":[{"error":"DuplicateValue","description":".."}]}}` | `RecordInvalid` | `email: DuplicateValue` | description, then each detail |
//! | `{"error":"RecordNotFound","description":"Not found"}` | `RecordNotFound` | | description |
//! | `{"error":"Couldn't authenticate you"}` (text, not a code) | | | the text |
//! | `{"error":{"title":"Forbidden","message":".."}}` | `Forbidden` | | message |
//! | `{"errors":[{"code":"TooManyRequests","title":".."}]}` | first `code` | later codes | titles |
//! | a job's failed item `{"index":0,"success":false,"error":"RecordInvalid","details":".."}` | `RecordInvalid` | | details |
//!
//! The last row is a bulk job's failed item (docs/zendesk.md, "Bulk writes and job statuses").
//!
//! [`ZendeskError::code`] is the **most specific** code: the first detail code when there is one
//! (`DuplicateValue` says more than `RecordInvalid`), else the top-level code. Both are kept, so
//! a mapping can match either ([`ZendeskError::has_code`]). Descriptions are localised; match on
//! codes, never on text.

use serde_json::Value;

/// One entry of `details` (or of a later `errors[]` item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorDetail {
    /// The field (`email`, `base`); empty for `errors[]` items.
    pub field: String,
    pub code: Option<String>,
    pub description: Option<String>,
}

/// A Zendesk error body, whatever its envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZendeskError {
    /// The top-level code (`RecordInvalid`, `RecordNotFound`, `Forbidden`, `TooManyRequests`).
    pub error: Option<String>,
    pub details: Vec<ErrorDetail>,
    /// A readable message: the description / message / titles, then the details.
    pub message: Option<String>,
}

/// Text bodies (an HTML 429 page) are quoted up to this many characters.
const MAX_TEXT: usize = 300;

impl ZendeskError {
    /// Reads any of the envelopes; `None` when `body` is none of them (`Null`, a success body).
    /// A text body (a JSON string) becomes a message without a code.
    pub fn parse(body: &Value) -> Option<Self> {
        match body {
            Value::String(text) if !text.trim().is_empty() => Some(ZendeskError {
                message: Some(shorten(text.trim())),
                ..Default::default()
            }),
            Value::Object(map) => {
                if let Some(error) = map.get("error") {
                    Some(Self::from_error_key(error, map))
                } else if let Some(Value::Array(errors)) = map.get("errors") {
                    Some(Self::from_errors_array(errors))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    fn from_error_key(error: &Value, map: &serde_json::Map<String, Value>) -> Self {
        let mut out = ZendeskError::default();
        let mut parts: Vec<String> = Vec::new();
        match error {
            Value::String(s) if looks_like_code(s) => out.error = Some(s.clone()),
            Value::String(s) => parts.push(s.clone()),
            Value::Object(obj) => {
                out.error = str_field(obj, "title").or_else(|| str_field(obj, "code"));
                if let Some(m) = str_field(obj, "message").or_else(|| str_field(obj, "detail")) {
                    parts.push(m);
                }
            }
            _ => {}
        }
        if let Some(d) = map.get("description").and_then(Value::as_str) {
            parts.push(d.to_string());
        }
        if let Some(Value::String(d)) = map.get("details")
            && !d.trim().is_empty()
        {
            parts.push(d.clone());
        }
        if let Some(Value::Object(details)) = map.get("details") {
            for (field, entries) in details {
                let entries = match entries {
                    Value::Array(items) => items.iter().collect(),
                    other => vec![other],
                };
                for entry in entries {
                    let detail = match entry {
                        Value::Object(e) => ErrorDetail {
                            field: field.clone(),
                            code: str_field(e, "error"),
                            description: str_field(e, "description"),
                        },
                        Value::String(s) => ErrorDetail {
                            field: field.clone(),
                            code: None,
                            description: Some(s.clone()),
                        },
                        _ => continue,
                    };
                    parts.push(describe(&detail));
                    out.details.push(detail);
                }
            }
        }
        out.message = (!parts.is_empty()).then(|| parts.join("; "));
        out
    }

    fn from_errors_array(errors: &[Value]) -> Self {
        let mut out = ZendeskError::default();
        let mut parts = Vec::new();
        for (i, item) in errors.iter().filter_map(Value::as_object).enumerate() {
            let code = str_field(item, "code");
            let title = str_field(item, "title");
            let text = [title.clone(), str_field(item, "detail")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ");
            if !text.is_empty() {
                parts.push(text);
            }
            if i == 0 {
                out.error = code;
            } else {
                out.details.push(ErrorDetail {
                    field: String::new(),
                    code,
                    description: title,
                });
            }
        }
        out.message = (!parts.is_empty()).then(|| parts.join("; "));
        out
    }

    /// The most specific code: the first detail code, else the top-level code.
    pub fn code(&self) -> Option<&str> {
        self.details
            .iter()
            .find_map(|d| d.code.as_deref())
            .or(self.error.as_deref())
    }

    /// True when `code` is the top-level code or any detail code.
    pub fn has_code(&self, code: &str) -> bool {
        self.error.as_deref() == Some(code)
            || self.details.iter().any(|d| d.code.as_deref() == Some(code))
    }
}

/// `(code, message)` of an error body: the most specific code and the readable message (see the
/// module docs). Both `None` when the body is not an error envelope.
pub fn zendesk_error(body: &Value) -> (Option<String>, Option<String>) {
    match ZendeskError::parse(body) {
        Some(e) => (e.code().map(str::to_string), e.message),
        None => (None, None),
    }
}

/// Codes are single words (`RecordInvalid`); `"Couldn't authenticate you"` is a message.
fn looks_like_code(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_whitespace)
}

fn str_field(map: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn describe(d: &ErrorDetail) -> String {
    match (&d.code, &d.description) {
        (Some(c), Some(t)) => format!("{}: {t} ({c})", d.field),
        (Some(c), None) => format!("{}: {c}", d.field),
        (None, Some(t)) => format!("{}: {t}", d.field),
        (None, None) => d.field.clone(),
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_TEXT {
        return text.to_string();
    }
    let mut out: String = text.chars().take(MAX_TEXT).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failed_job_item() {
        let body = json!({"index": 1, "action": "create_or_update", "success": false,
                          "error": "RecordInvalid", "details": "Email: x is not properly formatted"});
        let (code, message) = zendesk_error(&body);
        assert_eq!(code.as_deref(), Some("RecordInvalid"));
        assert_eq!(
            message.as_deref(),
            Some("Email: x is not properly formatted")
        );
    }

    #[test]
    fn record_invalid_with_details() {
        let body = json!({"error":"RecordInvalid","description":"Record validation errors","details":{"email":[{"description":"Email: x@y is already being used by another user","error":"DuplicateValue"}]}});
        let e = ZendeskError::parse(&body).expect("error");
        assert_eq!(e.error.as_deref(), Some("RecordInvalid"));
        assert_eq!(e.code(), Some("DuplicateValue"));
        assert!(e.has_code("RecordInvalid") && e.has_code("DuplicateValue"));
        let (code, message) = zendesk_error(&body);
        assert_eq!(code.as_deref(), Some("DuplicateValue"));
        assert_eq!(
            message.as_deref(),
            Some(
                "Record validation errors; email: Email: x@y is already being used by another user (DuplicateValue)"
            )
        );
    }

    #[test]
    fn detail_without_code_keeps_top_level_code() {
        let body = json!({"error":"RecordInvalid","details":{"status":[{"description":"closed prevents ticket update"}]}});
        assert_eq!(
            zendesk_error(&body),
            (
                Some("RecordInvalid".into()),
                Some("status: closed prevents ticket update".into())
            )
        );
    }

    #[test]
    fn string_and_description() {
        let body = json!({"error":"RecordNotFound","description":"Not found"});
        assert_eq!(
            zendesk_error(&body),
            (Some("RecordNotFound".into()), Some("Not found".into()))
        );
    }

    #[test]
    fn bare_message() {
        let body = json!({"error":"Couldn't authenticate you"});
        assert_eq!(
            zendesk_error(&body),
            (None, Some("Couldn't authenticate you".into()))
        );
    }

    #[test]
    fn object_error() {
        let body = json!({"error":{"title":"Forbidden","message":"You do not have access"}});
        assert_eq!(
            zendesk_error(&body),
            (
                Some("Forbidden".into()),
                Some("You do not have access".into())
            )
        );
    }

    #[test]
    fn errors_array() {
        let body =
            json!({"errors":[{"code":"TooManyRequests","title":"Too many requests to update"}]});
        assert_eq!(
            zendesk_error(&body),
            (
                Some("TooManyRequests".into()),
                Some("Too many requests to update".into())
            )
        );
    }

    #[test]
    fn text_and_non_errors() {
        assert_eq!(
            zendesk_error(&json!("<html>Rate limit exceeded</html>")),
            (None, Some("<html>Rate limit exceeded</html>".into()))
        );
        assert_eq!(zendesk_error(&Value::Null), (None, None));
        assert_eq!(zendesk_error(&json!({"user":{"id":1}})), (None, None));
    }
}
