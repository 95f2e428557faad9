//! Dead letters: events that could not be delivered, with why, as NDJSON records that `zdmap send`
//! can read back as input.
//!
//! One record per line:
//! `{"dead_letter":{"action":..,"step":..,"status":..,"code":..,"message":..,"attempts":..,"at":..},"event":{..}}`.
//! [`unwrap_dead_letter`] turns such a record back into its event, so a dead-letter file replays
//! as is. Records hold the event (the customer's data) but never credentials: messages come from
//! Zendesk's error body or a [`super::http::TransportError`], neither of which carries a header.

use crate::base::time::rfc3339_utc;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::order::EntityChange;
use super::retry::Disposition;
use crate::mapping::config::ErrorFormats;
use crate::mapping::plan::ActionName;

/// One event that could not be delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "DeadLetterRecord", into = "DeadLetterRecord")]
pub struct DeadLetter {
    /// The event as received.
    pub event: Value,
    /// The action whose step failed (`identify_user`); `None` when the event failed before any
    /// action (refused at ingest, unreadable input, a delivery turn that broke).
    pub action: Option<ActionName>,
    /// The step that failed (`create_or_update`), or the stage that refused the event
    /// (`ingest`, `input`, `deliver`).
    pub step: String,
    /// The last HTTP status, if a response came back.
    pub status: Option<u16>,
    /// Zendesk's error code (the most specific `errors.codes` finds), or the transport failure kind
    /// (`timeout`, `connect`, ...).
    pub code: Option<String>,
    pub message: String,
    pub attempts: u32,
    /// When it was dead-lettered, RFC 3339 UTC (`2026-05-01T12:00:00Z`).
    pub at: String,
    /// The entities the action changes and the event's time, so that a replay can tell a
    /// stale change (see [`crate::deliver::order`]).
    pub changes: Vec<EntityChange>,
}

#[derive(Serialize, Deserialize)]
struct DeadLetterRecord {
    dead_letter: DeadLetterInfo,
    event: Value,
}

#[derive(Serialize, Deserialize)]
struct DeadLetterInfo {
    /// `null` before any action (older records have `""`).
    #[serde(default)]
    action: Option<String>,
    step: String,
    status: Option<u16>,
    code: Option<String>,
    message: String,
    attempts: u32,
    at: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    changes: Vec<EntityChange>,
}

impl From<DeadLetterRecord> for DeadLetter {
    fn from(r: DeadLetterRecord) -> Self {
        let i = r.dead_letter;
        DeadLetter {
            event: r.event,
            action: i.action.filter(|a| !a.is_empty()).map(ActionName::new),
            step: i.step,
            status: i.status,
            code: i.code,
            message: i.message,
            attempts: i.attempts,
            at: i.at,
            changes: i.changes,
        }
    }
}

impl From<DeadLetter> for DeadLetterRecord {
    fn from(d: DeadLetter) -> Self {
        DeadLetterRecord {
            dead_letter: DeadLetterInfo {
                action: d.action.map(String::from),
                step: d.step,
                status: d.status,
                code: d.code,
                message: d.message,
                attempts: d.attempts,
                at: d.at,
                changes: d.changes,
            },
            event: d.event,
        }
    }
}

impl DeadLetter {
    /// A dead letter for `event`, whose `action`'s `step` ended in `disposition` after
    /// `attempts` attempts, stamped now. Status, code and message come from the response (read
    /// by the destination's `errors`), or from the transport failure when there was none.
    pub fn from_disposition(
        event: Value,
        action: impl Into<String>,
        step: impl Into<String>,
        disposition: &Disposition,
        attempts: u32,
        errors: &ErrorFormats,
    ) -> Self {
        let (status, code, message) = match disposition {
            Disposition::Done { response }
            | Disposition::Retry {
                last: Ok(response), ..
            } => {
                let info = errors.read(&response.body);
                let message = info
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("HTTP {}", response.status));
                (
                    Some(response.status),
                    info.code().map(str::to_owned),
                    message,
                )
            }
            Disposition::Retry {
                last: Err(error), ..
            }
            | Disposition::Invalid { error } => {
                (None, Some(error.kind().to_string()), error.to_string())
            }
            fatal @ Disposition::Fatal { response } => {
                let code = errors.read(&response.body).code().map(str::to_owned);
                let (status, message) = fatal.refusal(errors).unwrap_or_default();
                (Some(status), code, message)
            }
        };
        DeadLetter {
            event,
            action: Some(ActionName::new(action)),
            step: step.into(),
            status,
            code,
            message,
            attempts,
            at: rfc3339_utc(SystemTime::now()),
            changes: Vec::new(),
        }
    }

    /// A dead letter for a failure of an action before any request (e.g. a step that could not
    /// be rendered).
    pub fn without_response(
        event: Value,
        action: impl Into<String>,
        step: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DeadLetter {
            action: Some(ActionName::new(action)),
            ..DeadLetter::before_any_action(event, step, message)
        }
    }

    /// A dead letter for an event that failed before any action: refused by `stage` (`ingest`,
    /// `input`, `deliver`).
    pub fn before_any_action(
        event: Value,
        stage: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DeadLetter {
            event,
            action: None,
            step: stage.into(),
            status: None,
            code: None,
            message: message.into(),
            attempts: 0,
            at: rfc3339_utc(SystemTime::now()),
            changes: Vec::new(),
        }
    }

    /// The NDJSON line, without the newline.
    pub fn to_line(&self) -> String {
        // Serializing `Value`s and plain fields to a string cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl DeadLetter {
    /// Reads a dead-letter record back (as written by [`DeadLetter::to_line`]); `None` when
    /// `value` is not one (see [`unwrap_dead_letter`] for the rule).
    pub fn parse(value: &Value) -> Option<DeadLetter> {
        let Value::Object(map) = value else {
            return None;
        };
        if map.len() != 2
            || !map.get("dead_letter").is_some_and(Value::is_object)
            || !map.get("event").is_some_and(Value::is_object)
        {
            return None;
        }
        serde_json::from_value::<DeadLetterRecord>(value.clone())
            .ok()
            .map(DeadLetter::from)
    }
}

/// Returns the event inside a dead-letter record, or `value` unchanged when it is not one.
/// A record is an object with exactly the keys `dead_letter` (an object) and `event` (an object),
/// so a Segment `track` event (whose `event` is a string) is never mistaken for one.
pub fn unwrap_dead_letter(value: Value) -> Value {
    match value {
        Value::Object(mut map)
            if map.len() == 2
                && map.get("dead_letter").is_some_and(Value::is_object)
                && map.get("event").is_some_and(Value::is_object) =>
        {
            map.remove("event").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// Could not write a dead letter. Carries the file path, never the record.
#[derive(Debug, thiserror::Error)]
#[error("could not write dead letters to {path}: {source}")]
pub struct DeadLetterError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Appends dead letters to an NDJSON file, one flushed line per record. Shared by workers.
#[derive(Debug)]
pub struct DeadLetterWriter {
    path: PathBuf,
    file: Mutex<BufWriter<File>>,
}

impl DeadLetterWriter {
    /// Opens `path` for appending, creating it and its parent directories.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DeadLetterError> {
        let path = path.as_ref().to_path_buf();
        let err = |source| DeadLetterError {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        Ok(DeadLetterWriter {
            file: Mutex::new(BufWriter::new(file)),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and flushes it to the file.
    pub fn write(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let mut line = letter.to_line();
        line.push('\n');
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|source| DeadLetterError {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::http::{Response, ResponseHeaders};
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn line_shape_and_round_trip() {
        let event = json!({"type":"track","event":"Order Completed","userId":"u1"});
        let disposition = Disposition::Done {
            response: Response {
                status: 422,
                headers: ResponseHeaders::default(),
                body: json!({"error":"RecordInvalid","details":{"email":[{"error":"DuplicateValue","description":"taken"}]}}),
                elapsed: Duration::ZERO,
                job: None,
            },
        };
        let mappings = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        let config = crate::mapping::config::Config::load(&mappings, &[]).expect("mappings");
        let letter = DeadLetter::from_disposition(
            event.clone(),
            "track_event",
            "send",
            &disposition,
            1,
            &config.errors,
        );
        assert_eq!(letter.status, Some(422));
        assert_eq!(letter.code.as_deref(), Some("DuplicateValue"));
        let line = letter.to_line();
        let value: Value = serde_json::from_str(&line).expect("json");
        let keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["dead_letter", "event"]);
        assert_eq!(value["dead_letter"]["action"], "track_event");
        assert_eq!(value["dead_letter"]["attempts"], 1);
        let back: DeadLetter = serde_json::from_value(value.clone()).expect("parses");
        assert_eq!(back, letter);
        assert_eq!(unwrap_dead_letter(value), event);
        // A plain track event stays as it is.
        assert_eq!(unwrap_dead_letter(event.clone()), event);
    }
}
