//! Segment's HTTP tracking API, as far as zdmap takes it in: what a request may carry and how it
//! becomes queued events.
//!
//! `POST /v1/identify`, `/v1/track`, `/v1/group` (and `/v1/page`, `/v1/screen`, `/v1/alias`) take
//! one call, whose `type` comes from the path; `/v1/batch` and `/v1/import` take
//! `{"batch": [...]}` whose calls each carry a `type`, with the batch's `context` and
//! `integrations` applying to every call. The write key is the HTTP Basic user (or `writeKey` in
//! the body), compared in constant time. Limits are Segment's: 32 KB per call, 500 KB per
//! request, plus a nesting limit; a request breaking any rule is refused whole with a message.

use crate::deliver::Secret;
use crate::event::{EVENT_TYPES, Event};
use crate::queue::NewItem;
use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

/// Largest single call, in bytes (Segment: 32 KB).
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Largest request body, in bytes (Segment: 500 KB per batch).
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// Deepest nesting of objects and arrays in a request.
pub const MAX_DEPTH: usize = 32;

/// What a request path takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// One call of this type.
    Single(&'static str),
    /// `{"batch": [...]}` (`/v1/batch`, `/v1/import`).
    Batch,
}

impl Endpoint {
    /// The largest body this endpoint takes.
    pub fn body_limit(self) -> usize {
        match self {
            Endpoint::Single(_) => MAX_EVENT_BYTES,
            Endpoint::Batch => MAX_BATCH_BYTES,
        }
    }
}

/// Why a request was refused: the message goes back to the sender with a 400.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// The write keys that may post events. Compared in constant time; never printed.
#[derive(Clone, Debug, Default)]
pub struct WriteKeys(Vec<Secret>);

impl WriteKeys {
    pub fn new(keys: Vec<Secret>) -> WriteKeys {
        WriteKeys(keys)
    }

    /// Keys from `--write-key` values and the comma-separated `ZDMAP_WRITE_KEYS`.
    pub fn from_args_and_env(args: &[String], env: Option<&str>) -> WriteKeys {
        let from_env = env.into_iter().flat_map(|v| v.split(','));
        WriteKeys(
            args.iter()
                .map(String::as_str)
                .chain(from_env)
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(Secret::new)
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `candidate` is one of the keys. Every key is compared, whatever matches.
    pub fn allows(&self, candidate: &str) -> bool {
        let mut found = subtle::Choice::from(0);
        for key in &self.0 {
            found |= key.expose().as_bytes().ct_eq(candidate.as_bytes());
        }
        found.into()
    }
}

/// The write key of a request: the HTTP Basic user, else `writeKey` in the body.
pub fn write_key(authorization: Option<&str>, body: &[u8]) -> Option<String> {
    if let Some(encoded) = authorization.and_then(|h| h.strip_prefix("Basic ")) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
        return Some(user.to_owned());
    }
    #[derive(serde::Deserialize)]
    struct WithKey {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    serde_json::from_slice::<WithKey>(body)
        .ok()
        .and_then(|w| w.write_key)
}

/// Turns a request body into the events to queue, or refuses it whole.
pub fn events(
    endpoint: Endpoint,
    body: &[u8],
    received_at: &str,
) -> Result<Vec<NewItem>, BadRequest> {
    if body.len() > endpoint.body_limit() {
        return Err(too_large(endpoint, body.len()));
    }
    if nesting_exceeds(body, MAX_DEPTH) {
        return Err(BadRequest(format!(
            "the JSON is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let calls = match endpoint {
        Endpoint::Single(kind) => {
            let value: Value = parse(body)?;
            vec![single(kind, value)?]
        }
        Endpoint::Batch => batch(body)?,
    };
    calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            let at = |m: String| match endpoint {
                Endpoint::Batch => BadRequest(format!("batch[{i}]: {m}")),
                Endpoint::Single(_) => BadRequest(m),
            };
            let mut call = call;
            if let Value::Object(map) = &mut call {
                enrich(map, received_at);
            }
            let event = Event::from_value(call).map_err(|e| at(e.to_string()))?;
            let partition = event.partition_key();
            Ok(NewItem {
                event: event.into_value(),
                partition,
                only: None,
            })
        })
        .collect()
}

fn too_large(endpoint: Endpoint, len: usize) -> BadRequest {
    match endpoint {
        Endpoint::Single(_) => BadRequest(format!(
            "the event is {len} bytes; the limit is {MAX_EVENT_BYTES} bytes (32 KB) per event"
        )),
        Endpoint::Batch => BadRequest(format!(
            "the batch is {len} bytes; the limit is {MAX_BATCH_BYTES} bytes (500 KB) per batch"
        )),
    }
}

fn parse<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, BadRequest> {
    serde_json::from_slice(body).map_err(|e| BadRequest(format!("the body is not valid JSON: {e}")))
}

/// One call from a single-call endpoint: its type is the path's.
fn single(kind: &'static str, value: Value) -> Result<Value, BadRequest> {
    let Value::Object(mut map) = value else {
        return Err(BadRequest("the body must be a JSON object".into()));
    };
    let given = map.get("type").or_else(|| map.get("action"));
    match given {
        None => {
            map.insert("type".into(), Value::String(kind.into()));
        }
        Some(Value::String(t)) if t == kind => {}
        Some(other) => {
            return Err(BadRequest(format!(
                "this endpoint takes {kind} calls, but the body's type is {other}"
            )));
        }
    }
    Ok(Value::Object(map))
}

#[derive(serde::Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
    context: Option<Map<String, Value>>,
    integrations: Option<Map<String, Value>>,
}

/// The calls of a batch, each within the per-event limit, with the batch's shared parts.
fn batch(body: &[u8]) -> Result<Vec<Value>, BadRequest> {
    let Batch {
        batch,
        context,
        integrations,
    } = parse(body)?;
    let batch = batch.ok_or_else(|| BadRequest("the body has no `batch` array".into()))?;
    let mut calls = Vec::with_capacity(batch.len());
    for (i, raw) in batch.into_iter().enumerate() {
        let len = raw.get().len();
        if len > MAX_EVENT_BYTES {
            return Err(BadRequest(format!(
                "batch[{i}]: the event is {len} bytes; the limit is {MAX_EVENT_BYTES} bytes (32 KB) per event"
            )));
        }
        let mut call: Value =
            serde_json::from_str(raw.get()).map_err(|e| BadRequest(format!("batch[{i}]: {e}")))?;
        let Value::Object(map) = &mut call else {
            return Err(BadRequest(format!(
                "batch[{i}]: an event must be a JSON object"
            )));
        };
        if !map.contains_key("type") && !map.contains_key("action") {
            return Err(BadRequest(format!(
                "batch[{i}]: the event has no `type`; expected one of {}",
                EVENT_TYPES.join(", ")
            )));
        }
        for (key, shared) in [("context", &context), ("integrations", &integrations)] {
            if let Some(shared) = shared {
                merge_missing(map, key, shared);
            }
        }
        calls.push(call);
    }
    Ok(calls)
}

/// Fills `map[key]` with the entries of `shared` it does not have.
fn merge_missing(map: &mut Map<String, Value>, key: &str, shared: &Map<String, Value>) {
    let slot = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(own) = slot {
        for (k, v) in shared {
            if !own.contains_key(k) {
                own.insert(k.clone(), v.clone());
            }
        }
    }
}

/// What the server adds, as Segment does: a `messageId` when the sender gave none (ticket
/// creation uses it as the idempotency key) and `receivedAt`.
fn enrich(map: &mut Map<String, Value>, received_at: &str) {
    if !map.get("messageId").is_some_and(|m| m.is_string()) {
        map.insert("messageId".into(), Value::String(new_message_id()));
    }
    map.entry("receivedAt")
        .or_insert_with(|| Value::String(received_at.to_owned()));
}

/// `zdmap-` and 32 random hex digits.
fn new_message_id() -> String {
    let n: u128 = rand::random();
    format!("zdmap-{n:032x}")
}

/// Whether objects and arrays nest deeper than `max` (strings are skipped, escapes honoured).
pub fn nesting_exceeds(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const AT: &str = "2026-11-25T10:00:00Z";

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).expect("json")
    }

    #[test]
    fn a_single_call_takes_its_type_from_the_path_and_gets_an_id() {
        let items = events(
            Endpoint::Single("identify"),
            &body(json!({"userId": "u1", "traits": {"email": "a@b.c"}})),
            AT,
        )
        .expect("accepted");
        assert_eq!(items.len(), 1);
        let e = &items[0].event;
        assert_eq!(e["type"], "identify");
        assert_eq!(e["receivedAt"], AT);
        assert!(
            e["messageId"]
                .as_str()
                .is_some_and(|m| m.starts_with("zdmap-"))
        );
        assert_eq!(items[0].partition.as_deref(), Some("user:u1"));
        let err = events(
            Endpoint::Single("identify"),
            &body(json!({"type": "track", "userId": "u1"})),
            AT,
        )
        .expect_err("type mismatch");
        assert!(err.0.contains("takes identify calls"), "{err}");
    }

    #[test]
    fn a_batch_shares_its_context_and_is_refused_whole_for_one_bad_call() {
        let items = events(
            Endpoint::Batch,
            &body(json!({
                "batch": [
                    {"type": "track", "userId": "u1", "event": "E", "messageId": "m1"},
                    {"type": "identify", "userId": "u2", "context": {"ip": "1.2.3.4"}}
                ],
                "context": {"ip": "9.9.9.9", "library": {"name": "x"}}
            })),
            AT,
        )
        .expect("accepted");
        assert_eq!(items[0].event["messageId"], "m1");
        assert_eq!(items[0].event["context"]["ip"], "9.9.9.9");
        assert_eq!(items[1].event["context"]["ip"], "1.2.3.4");
        assert_eq!(items[1].event["context"]["library"]["name"], "x");

        let cases = [
            (b"{not json".to_vec(), "not valid JSON"),
            (body(json!({"nobatch": []})), "no `batch` array"),
            (
                body(json!({"batch": [{"userId": "u"}]})),
                "batch[0]: the event has no `type`",
            ),
            (
                body(json!({"batch": [{"type": "track"}, {"type": "purchase"}]})),
                "batch[1]: unknown event type",
            ),
            (
                body(json!({"batch": [{"type": 3}]})),
                "batch[0]: the event's `type` must be a string",
            ),
            (
                body(json!({"batch": [7]})),
                "batch[0]: an event must be a JSON object",
            ),
        ];
        for (b, want) in cases {
            let err = events(Endpoint::Batch, &b, AT).expect_err(want);
            assert!(err.0.contains(want), "{err} / {want}");
        }
    }

    #[test]
    fn limits_are_segments() {
        let big = "x".repeat(MAX_EVENT_BYTES);
        let err = events(
            Endpoint::Single("track"),
            &body(json!({"userId": "u", "event": big})),
            AT,
        )
        .expect_err("too big");
        assert!(err.0.contains("32 KB"), "{err}");
        let err = events(
            Endpoint::Batch,
            &body(json!({"batch": [{"type": "track", "userId": "u", "event": big}]})),
            AT,
        )
        .expect_err("too big in a batch");
        assert!(
            err.0.contains("batch[0]") && err.0.contains("32 KB"),
            "{err}"
        );
        let calls: Vec<Value> = (0..20)
            .map(|_| json!({"type": "track", "userId": "u", "event": "x".repeat(30_000)}))
            .collect();
        let err = events(Endpoint::Batch, &body(json!({"batch": calls})), AT).expect_err("batch");
        assert!(err.0.contains("500 KB"), "{err}");
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let err = events(
            Endpoint::Single("track"),
            format!(r#"{{"userId":"u","properties":{{"x":{deep}}}}}"#).as_bytes(),
            AT,
        )
        .expect_err("deep");
        assert!(err.0.contains("nested deeper"), "{err}");
        assert!(!nesting_exceeds(
            br#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"["}"#,
            2
        ));
    }

    #[test]
    fn write_keys_come_from_basic_auth_or_the_body() {
        let keys = WriteKeys::from_args_and_env(&["k1".into()], Some(" k2 , ,k3"));
        assert!(keys.allows("k1") && keys.allows("k2") && keys.allows("k3"));
        assert!(!keys.allows("k") && !keys.allows("") && !keys.allows("k22"));
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("k2:")
        );
        assert_eq!(write_key(Some(&basic), b"{}").as_deref(), Some("k2"));
        assert_eq!(
            write_key(None, br#"{"writeKey":"k3","batch":[]}"#).as_deref(),
            Some("k3")
        );
        assert_eq!(write_key(None, b"{}"), None);
        assert_eq!(format!("{keys:?}").matches("redacted").count(), 3);
    }
}
