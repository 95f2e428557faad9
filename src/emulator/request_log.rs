//! The request log behind `GET /__emulator/requests`: a ring of the last `request_log_size`
//! API requests (method, path, query, headers with `Authorization` redacted, body, status, and
//! `lost_answer` when the answer was lost after the write was applied), numbered by `seq` from
//! the start, so its cost stays the same however long the emulator runs. Requests to
//! `/oauth/...` carry credentials in their body and query: those values are shown as
//! `"[redacted]"` (see `oauth::redacted_body`).

use std::collections::VecDeque;

use axum::body::Bytes;
use axum::http::request::Parts;
use serde_json::{Map, Value, json};

use super::auth::redact;
use super::errors::Reply;
use super::limits::LostAnswer;
use super::oauth;

#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    entries: VecDeque<Value>,
    /// Requests seen since the last clear (the `seq` of the newest entry).
    seen: u64,
}

impl RequestLog {
    /// Appends a request answered at `at` on the emulator's clock, dropping the oldest entries
    /// beyond `capacity`.
    pub(crate) fn record(
        &mut self,
        capacity: usize,
        at: std::time::Duration,
        request: &Parts,
        bytes: &Bytes,
        reply: &Reply,
        lost: Option<LostAnswer>,
    ) {
        self.seen += 1;
        while self.entries.len() >= capacity.max(1) {
            self.entries.pop_front();
        }
        if capacity == 0 {
            return;
        }
        let mut hs = Map::new();
        for (name, value) in &request.headers {
            let value = value.to_str().unwrap_or("<binary>");
            let shown = if name == "authorization" {
                redact(value)
            } else {
                value.to_string()
            };
            hs.insert(name.as_str().to_string(), Value::String(shown));
        }
        let path = request.uri.path();
        let oauth = path.starts_with("/oauth/");
        let query = request.uri.query().unwrap_or("");
        let query = if oauth {
            oauth::redacted_query(query)
        } else {
            query.to_string()
        };
        let body = if oauth {
            oauth::redacted_body(&request.headers, bytes)
        } else if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
        };
        let mut entry = json!({
            "seq": self.seen,
            "method": request.method.as_str(),
            "path": path,
            "query": query,
            "headers": hs,
            "body": body,
            "status": reply.status,
            "at_ms": u64::try_from(at.as_millis()).unwrap_or(u64::MAX),
        });
        if let Some(lost) = lost {
            entry["lost_answer"] = json!(lost);
        }
        self.entries.push_back(entry);
    }

    pub(crate) fn entries(&self) -> Vec<Value> {
        self.entries.iter().cloned().collect()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.seen = 0;
    }
}
