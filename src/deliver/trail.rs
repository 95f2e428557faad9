//! The trail of one event through delivery: what its delivery tells the delivery log as it goes
//! (the actions matched, each request with its answer, the waits, the end).
//!
//! Delivery knows no log: a [`Delivery`](super::Delivery) given a [`Trail`] (by `serve`, for each
//! queued event) hands each [`Entry`] to the trail's [`Witness`], which must take it at once and
//! never wait (the delivery log of `serve` puts it on a bounded channel and drops it when the log
//! falls behind). Without a trail nothing is recorded and nothing is built.
//!
//! Entries hold what an operator needs to follow an event, never the event's body nor a
//! credential; an error body from Zendesk is kept trimmed to [`ERROR_BODY_BYTES`].

use crate::base::time::unix_millis_now;
use crate::deliver::{Disposition, TransportError};
use crate::mapping::request::Request;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Bytes of an error answer's body kept in an entry.
pub const ERROR_BODY_BYTES: usize = 500;

/// One thing that happened to an event, as the delivery log keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// The event was accepted at ingest and stored.
    Accepted {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// Bytes of the event as stored.
        size: u64,
        /// Which write key sent it: a fingerprint of the key (`-` without keys), never the key.
        source: String,
    },
    /// The call was refused at ingest (kept as a dead letter).
    Refused { reason: String, message: String },
    /// The actions whose trigger matched (empty: no trigger matched).
    Matched { actions: Vec<String> },
    /// One request the event caused, with its answer.
    Request(Box<RequestEntry>),
    /// A write not sent: its step skips unchanged writes, and it equals the last write applied
    /// to its record (`skip_unchanged`).
    Unchanged {
        action: String,
        step: String,
        method: String,
        path: String,
    },
    /// The event waits: for a record (`record`), a retry (`retry`), a 429 (`rate_limited`), the
    /// credentials (`credentials`), or another replica holding one of its keys (`fenced`).
    Waiting {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// How long it waits, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seconds: Option<f64>,
    },
    /// Every action it triggered is done.
    Delivered,
    /// Nothing to do: no trigger matched, or every change it carried was older than one
    /// applied.
    Skipped { reason: String },
    /// An action failed for good: its dead letter.
    DeadLettered {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        reason: String,
    },
    /// Its dead letter was sent again (`action`: for that action only).
    Replayed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        /// Who replayed it: `api`, `cli`.
        by: String,
    },
    /// Its dead letter was discarded.
    Discarded {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        by: String,
    },
}

/// A request an event caused and how it was answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestEntry {
    pub action: String,
    /// The step, or `lookup`/`check` for a lookup's or a check's request.
    pub step: String,
    pub method: String,
    pub path: String,
    /// The status, when an answer came (`None`: a timeout, a connection failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub duration_ms: u64,
    /// The attempt of this step's request (1 for the first).
    pub attempt: u32,
    /// The bulk request it joined (its path), when it went as an item of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk: Option<String>,
    /// The job of that bulk request, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Zendesk's error code, or the transport failure's kind (`timeout`, `connect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The error answer's body, trimmed to [`ERROR_BODY_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Entry {
    /// The state an event is in once this entry is its latest.
    pub fn state(&self) -> &'static str {
        match self {
            Entry::Accepted { .. } => "accepted",
            Entry::Refused { .. } => "refused",
            Entry::Matched { .. } | Entry::Request(_) | Entry::Unchanged { .. } => "delivering",
            Entry::Waiting { .. } => "waiting",
            Entry::Delivered => "delivered",
            Entry::Skipped { .. } => "skipped",
            Entry::DeadLettered { .. } => "dead_lettered",
            Entry::Replayed { .. } => "replayed",
            Entry::Discarded { .. } => "discarded",
        }
    }
}

/// Takes the entries of events' trails. Must not wait: it is called on delivery's path.
pub trait Witness: Send + Sync {
    /// `entry` happened to the event whose `messageId` is `message_id`, at `at_ms` (ms since
    /// the Unix epoch).
    fn note(&self, message_id: &str, at_ms: u64, entry: Entry);
}

/// Where one event's entries go: its `messageId` and the witness.
#[derive(Clone)]
pub struct Trail {
    witness: Arc<dyn Witness>,
    message_id: Arc<str>,
}

impl std::fmt::Debug for Trail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trail")
            .field("message_id", &self.message_id)
            .finish_non_exhaustive()
    }
}

impl Trail {
    pub fn new(witness: Arc<dyn Witness>, message_id: &str) -> Trail {
        Trail {
            witness,
            message_id: message_id.into(),
        }
    }

    /// Records `entry` now.
    pub fn note(&self, entry: Entry) {
        self.witness
            .note(&self.message_id, unix_millis_now(), entry);
    }

    /// Records a request and how it ended: `error_code` reads Zendesk's error code from an
    /// answer's body.
    pub(crate) fn request(
        &self,
        sent: Sent<'_>,
        disposition: &Disposition,
        error_code: impl Fn(&serde_json::Value) -> Option<String>,
    ) {
        let (status, code, error) = answer_of(disposition, error_code);
        self.note(Entry::Request(Box::new(RequestEntry {
            action: sent.action.to_owned(),
            step: sent.step.to_owned(),
            method: sent.request.method.to_string(),
            path: sent.request.path.clone(),
            status,
            duration_ms: u64::try_from(sent.took.as_millis()).unwrap_or(u64::MAX),
            attempt: sent.attempt,
            bulk: sent.bulk.map(str::to_owned),
            job: sent.job.map(str::to_owned),
            code,
            error,
        })));
    }
}

/// What was sent, for [`Trail::request`].
pub(crate) struct Sent<'a> {
    pub(crate) action: &'a str,
    pub(crate) step: &'a str,
    pub(crate) request: &'a Request,
    pub(crate) took: std::time::Duration,
    pub(crate) attempt: u32,
    pub(crate) bulk: Option<&'a str>,
    pub(crate) job: Option<&'a str>,
}

/// The status, the error code and the trimmed error body of an answer (no body for a success).
fn answer_of(
    disposition: &Disposition,
    error_code: impl Fn(&serde_json::Value) -> Option<String>,
) -> (Option<u16>, Option<String>, Option<String>) {
    let response = match disposition {
        Disposition::Done { response } | Disposition::Fatal { response } => Ok(response),
        Disposition::Retry { last, .. } => last.as_ref(),
        Disposition::Invalid { error } => Err(error),
    };
    match response {
        Ok(r) if r.is_success() => (Some(r.status), None, None),
        Ok(r) => (
            Some(r.status),
            error_code(&r.body),
            Some(trimmed(&r.body.to_string(), ERROR_BODY_BYTES)),
        ),
        Err(e) => (
            None,
            Some(transport_kind(e).to_owned()),
            Some(trimmed(&e.to_string(), ERROR_BODY_BYTES)),
        ),
    }
}

fn transport_kind(e: &TransportError) -> &'static str {
    match e {
        TransportError::Connect { .. } => "connect",
        TransportError::Timeout { .. } => "timeout",
        _ => "transport",
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), with `…` when cut.
pub fn trimmed(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_as_tagged_json_and_back() {
        let entry = Entry::DeadLettered {
            action: Some("upsert_user".into()),
            step: "create_or_update".into(),
            status: Some(422),
            code: Some("RecordInvalid".into()),
            reason: "Email is invalid".into(),
        };
        let json = serde_json::to_value(&entry).expect("serializes");
        assert_eq!(json["kind"], "dead_lettered");
        assert_eq!(json["code"], "RecordInvalid");
        let back: Entry = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, entry);
        assert_eq!(back.state(), "dead_lettered");
    }

    #[test]
    fn a_long_body_is_trimmed_at_a_character_boundary() {
        let text = "é".repeat(400);
        let cut = trimmed(&text, 501);
        assert!(cut.len() <= 501 + "…".len());
        assert!(cut.ends_with('…'));
        assert_eq!(trimmed("short", 10), "short");
    }
}
