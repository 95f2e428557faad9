//! Segment's HTTP tracking API, as far as zdmap takes it in: what a request may carry and how it
//! becomes queued events.
//!
//! `POST /v1/identify`, `/v1/track`, `/v1/group` (and `/v1/page`, `/v1/screen`, `/v1/alias`, and
//! analytics.js' short forms `/v1/i`, `/v1/t`, `/v1/g`, `/v1/p`, `/v1/s`, `/v1/a`) take one call,
//! whose `type` comes from the path; `/v1/batch`, `/v1/import` (and `/v1/b`) take
//! `{"batch": [...]}` whose calls each carry a `type`, with the batch's `context` and
//! `integrations` applying to every call. The write key is the HTTP Basic user (or `writeKey` in
//! the body, which is never stored), compared in constant time. Limits are Segment's: 32 KB per
//! call, 500 KB per request, plus a nesting limit.
//!
//! As in Segment's API, one bad call does not lose a batch: a body that is JSON within the size
//! limit gives the calls to queue and the calls [`Refused`], each with a [`Reason`]; only a body
//! that is not JSON (or not the endpoint's shape) is refused whole.

use crate::deliver::{DeadLetter, Secret};
use crate::mapping::event::{EVENT_TYPES, Event, EventError, json_kind};
use crate::queue::NewItem;
use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

/// Largest single call, in bytes (Segment: 32 KB).
pub(crate) const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Largest request body, in bytes (Segment: 500 KB per batch).
pub(crate) const MAX_BATCH_BYTES: usize = 500 * 1024;
/// Deepest nesting of objects and arrays in a call.
pub(crate) const MAX_DEPTH: usize = 32;

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
    pub(crate) fn body_limit(self) -> usize {
        match self {
            Endpoint::Single(_) => MAX_EVENT_BYTES,
            Endpoint::Batch => MAX_BATCH_BYTES,
        }
    }

    /// The limit as messages say it.
    pub(crate) fn limit_text(self) -> &'static str {
        match self {
            Endpoint::Single(_) => "32 KB per event",
            Endpoint::Batch => "500 KB per batch",
        }
    }
}

/// Why a request was refused whole: the message goes back to the sender with a 400.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Why one call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    TooLarge,
    TooDeep,
    NotAnObject,
    NoType,
    BadType,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::TooLarge,
        Reason::TooDeep,
        Reason::NotAnObject,
        Reason::NoType,
        Reason::BadType,
    ];

    /// The `reason` label of `zdmap_events_refused_total` and the dead letter's code.
    pub fn label(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::TooDeep => "too_deep",
            Reason::NotAnObject => "not_an_object",
            Reason::NoType => "no_type",
            Reason::BadType => "bad_type",
        }
    }
}

/// A call refused at ingest. It is kept as a dead letter (step `ingest`, its reason as the
/// code) so an operator can see it; logs carry only the reason and the message.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    /// Its place in the batch (`None` for a single-call endpoint).
    pub index: Option<usize>,
    pub reason: Reason,
    pub message: String,
    /// The call as sent (an object; a call that is not one is kept under `value`).
    pub call: Map<String, Value>,
}

impl Refused {
    /// The message with the call's place in the batch.
    pub fn located(&self) -> String {
        match self.index {
            Some(i) => format!("batch[{i}]: {}", self.message),
            None => self.message.clone(),
        }
    }

    pub fn dead_letter(&self) -> DeadLetter {
        let mut letter = DeadLetter::before_any_action(
            Value::Object(self.call.clone()),
            "ingest",
            format!("refused at ingest: {}", self.located()),
        );
        letter.status = Some(400);
        letter.code = Some(self.reason.label().to_owned());
        letter
    }
}

/// A call refused: why, the message, and the call as sent.
type Refusal = (Reason, String, Value);

/// The calls of a request: those to queue and those refused.
#[derive(Debug, Default)]
pub struct Calls {
    pub accepted: Vec<NewItem>,
    pub refused: Vec<Refused>,
}

/// The write keys that may post events, each with the destinations its events go to (a
/// source). Compared in constant time; never printed.
#[derive(Clone, Debug, Default)]
pub struct WriteKeys(Vec<(Secret, Vec<String>)>);

impl WriteKeys {
    /// Keys whose events go to every destination.
    pub fn new(keys: Vec<Secret>) -> WriteKeys {
        WriteKeys(keys.into_iter().map(|k| (k, Vec::new())).collect())
    }

    /// Keys from `--write-key` values and the comma-separated `ZDMAP_WRITE_KEYS`.
    pub fn from_args_and_env(args: &[String], env: Option<&str>) -> WriteKeys {
        let from_env = env.into_iter().flat_map(|v| v.split(','));
        WriteKeys::new(
            args.iter()
                .map(String::as_str)
                .chain(from_env)
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(Secret::new)
                .collect(),
        )
    }

    /// Adds a key whose events go to `destinations` only (every destination when empty).
    pub fn add_source(&mut self, key: Secret, destinations: Vec<String>) {
        self.0.push((key, destinations));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every destination a key names.
    pub fn destinations(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .flat_map(|(_, d)| d.iter().map(String::as_str))
    }

    /// Which sender `key` is, as dedupe sees it: a short digest of the key (never the key), or
    /// `-` on a server without keys. The same `messageId` from two sources is two calls.
    pub(crate) fn source_of(&self, key: Option<&str>) -> String {
        use sha2::Digest as _;
        match key.filter(|_| !self.0.is_empty()) {
            None => "-".into(),
            Some(key) => {
                let digest = sha2::Sha256::digest(key.as_bytes());
                digest[..6].iter().map(|b| format!("{b:02x}")).collect()
            }
        }
    }

    /// Whether `candidate` is one of the keys.
    pub fn allows(&self, candidate: &str) -> bool {
        self.route(candidate).is_some()
    }

    /// The destinations the events of `candidate` go to (empty: every one); `None` when it is
    /// no key. Every key is compared, whatever matches.
    pub(crate) fn route(&self, candidate: &str) -> Option<&[String]> {
        let mut found = None;
        for (key, destinations) in &self.0 {
            let same: bool = key.expose().as_bytes().ct_eq(candidate.as_bytes()).into();
            if same && found.is_none() {
                found = Some(destinations.as_slice());
            }
        }
        found
    }
}

/// The write key of an `Authorization` header: the HTTP Basic user (`None` for another scheme
/// or a malformed value).
pub(crate) fn basic_user(authorization: &str) -> Option<String> {
    let encoded = authorization.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    Some(user.to_owned())
}

/// `writeKey` in a body (analytics.js sends it so, as `text/plain`).
pub fn body_write_key(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithKey {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    serde_json::from_slice::<WithKey>(body)
        .ok()
        .and_then(|w| w.write_key)
}

/// Turns a request body into the calls to queue and those refused, or refuses it whole (not
/// JSON, over the size limit, not the endpoint's shape).
pub fn events(endpoint: Endpoint, body: &[u8], received_at: &str) -> Result<Calls, BadRequest> {
    if body.len() > endpoint.body_limit() {
        return Err(too_large(endpoint, body.len()));
    }
    let mut calls = Calls::default();
    let mut take = |index: Option<usize>, checked: Result<Map<String, Value>, Refusal>| {
        let checked = checked.and_then(|call| accept(call, received_at));
        match checked {
            Ok(item) => calls.accepted.push(item),
            Err((reason, message, call)) => calls.refused.push(Refused {
                index,
                reason,
                message,
                call: match call {
                    Value::Object(map) => map,
                    other => Map::from_iter([("value".to_owned(), other)]),
                },
            }),
        }
    };
    match endpoint {
        Endpoint::Single(kind) => {
            let checked = if nesting_exceeds(body, MAX_DEPTH) {
                Err(too_deep(parse(body)?))
            } else {
                single(kind, parse(body)?)
            };
            take(None, checked);
        }
        Endpoint::Batch => {
            let Batch {
                batch,
                context,
                integrations,
            } = parse(body)?;
            let batch = batch.ok_or_else(|| BadRequest("the body has no `batch` array".into()))?;
            for (i, raw) in batch.into_iter().enumerate() {
                take(Some(i), in_batch(raw, &context, &integrations));
            }
        }
    }
    Ok(calls)
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

fn too_deep(call: Value) -> Refusal {
    (
        Reason::TooDeep,
        format!("the event is nested deeper than {MAX_DEPTH} levels"),
        call,
    )
}

fn parse<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, BadRequest> {
    serde_json::from_slice(body).map_err(|e| BadRequest(format!("the body is not valid JSON: {e}")))
}

/// One call from a single-call endpoint: its type is the path's.
fn single(kind: &'static str, value: Value) -> Result<Map<String, Value>, Refusal> {
    let Value::Object(mut map) = value else {
        let message = format!(
            "the body must be a JSON object, found {}",
            json_kind(&value)
        );
        return Err((Reason::NotAnObject, message, value));
    };
    let given = map.get("type").or_else(|| map.get("action"));
    match given {
        None => {
            map.insert("type".into(), Value::String(kind.into()));
        }
        Some(Value::String(t)) if t == kind => {}
        Some(other) => {
            let given = match other {
                Value::String(t) => format!("{t:?}"),
                other => json_kind(other).to_owned(),
            };
            let message =
                format!("this endpoint takes {kind} calls, but the body's type is {given}");
            return Err((Reason::BadType, message, Value::Object(map)));
        }
    }
    Ok(map)
}

#[derive(serde::Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
    context: Option<Map<String, Value>>,
    integrations: Option<Map<String, Value>>,
}

/// One call of a batch, within the per-event limits, with the batch's shared parts.
fn in_batch(
    raw: &RawValue,
    context: &Option<Map<String, Value>>,
    integrations: &Option<Map<String, Value>>,
) -> Result<Map<String, Value>, Refusal> {
    let len = raw.get().len();
    let call: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
    if len > MAX_EVENT_BYTES {
        let message = format!(
            "the event is {len} bytes; the limit is {MAX_EVENT_BYTES} bytes (32 KB) per event"
        );
        return Err((Reason::TooLarge, message, call));
    }
    if nesting_exceeds(raw.get().as_bytes(), MAX_DEPTH) {
        return Err(too_deep(call));
    }
    let Value::Object(mut map) = call else {
        let message = format!("an event must be a JSON object, found {}", json_kind(&call));
        return Err((Reason::NotAnObject, message, call));
    };
    if !map.contains_key("type") && !map.contains_key("action") {
        let message = format!(
            "the event has no `type`; expected one of {}",
            EVENT_TYPES.join(", ")
        );
        return Err((Reason::NoType, message, Value::Object(map)));
    }
    for (key, shared) in [("context", context), ("integrations", integrations)] {
        if let Some(shared) = shared {
            merge_missing(&mut map, key, shared);
        }
    }
    Ok(map)
}

/// A call that passed the endpoint's checks, as the event to queue: without a write key, with
/// what the server adds, checked as an event.
fn accept(mut map: Map<String, Value>, received_at: &str) -> Result<NewItem, Refusal> {
    map.remove("writeKey");
    let message_id = enrich(&mut map, received_at);
    match Event::from_object(map) {
        Ok(event) => Ok(NewItem {
            force: false,
            partition: event.partition_key(),
            event: event.into_value(),
            only: None,
            message_id,
            destinations: Vec::new(),
        }),
        Err((e, map)) => {
            let reason = match e {
                EventError::MissingType => Reason::NoType,
                _ => Reason::BadType,
            };
            Err((reason, e.to_string(), Value::Object(map)))
        }
    }
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
/// creation uses it as the idempotency key) and `receivedAt`. Returns the sender's own
/// `messageId`, by which a call sent again is recognised (a generated one is new by making).
fn enrich(map: &mut Map<String, Value>, received_at: &str) -> Option<String> {
    let given = match map.get("messageId") {
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        _ => None,
    };
    if given.is_none() {
        map.insert("messageId".into(), Value::String(new_message_id()));
    }
    map.entry("receivedAt")
        .or_insert_with(|| Value::String(received_at.to_owned()));
    given
}

/// `zdmap-` and 32 random hex digits.
fn new_message_id() -> String {
    let n: u128 = rand::random();
    format!("zdmap-{n:032x}")
}

/// Whether objects and arrays nest deeper than `max` (strings are skipped, escapes honoured).
pub(crate) fn nesting_exceeds(body: &[u8], max: usize) -> bool {
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

    /// The messages of the refused calls.
    fn refused(calls: &Calls) -> Vec<String> {
        calls.refused.iter().map(Refused::located).collect()
    }

    #[test]
    fn a_single_call_takes_its_type_from_the_path_and_gets_an_id() {
        let calls = events(
            Endpoint::Single("identify"),
            &body(json!({"userId": "u1", "traits": {"email": "a@b.c"}, "writeKey": "wk"})),
            AT,
        )
        .expect("accepted");
        assert_eq!(calls.accepted.len(), 1);
        let e = &calls.accepted[0].event;
        assert_eq!(e["type"], "identify");
        assert_eq!(e["receivedAt"], AT);
        assert!(e.get("writeKey").is_none(), "the write key is not stored");
        assert!(
            e["messageId"]
                .as_str()
                .is_some_and(|m| m.starts_with("zdmap-"))
        );
        assert_eq!(calls.accepted[0].message_id, None, "a generated id is new");
        assert_eq!(calls.accepted[0].partition.as_deref(), Some("user:u1"));
        let calls = events(
            Endpoint::Single("identify"),
            &body(json!({"type": "track", "userId": "u1"})),
            AT,
        )
        .expect("parsed");
        assert!(calls.accepted.is_empty());
        assert_eq!(calls.refused[0].reason, Reason::BadType);
        assert!(refused(&calls)[0].contains("takes identify calls"));
    }

    #[test]
    fn a_batch_shares_its_context_and_refuses_only_its_bad_calls() {
        let calls = events(
            Endpoint::Batch,
            &body(json!({
                "batch": [
                    {"type": "track", "userId": "u1", "event": "E", "messageId": "m1", "writeKey": "wk"},
                    {"userId": "u"},
                    {"type": "identify", "userId": "u2", "context": {"ip": "1.2.3.4"}},
                    {"type": "purchase"},
                    {"type": 3},
                    7
                ],
                "context": {"ip": "9.9.9.9", "library": {"name": "x"}}
            })),
            AT,
        )
        .expect("accepted");
        let items = &calls.accepted;
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].event["messageId"], "m1");
        assert_eq!(items[0].message_id.as_deref(), Some("m1"));
        assert!(items[0].event.get("writeKey").is_none());
        assert_eq!(items[0].event["context"]["ip"], "9.9.9.9");
        assert_eq!(items[1].event["context"]["ip"], "1.2.3.4");
        assert_eq!(items[1].event["context"]["library"]["name"], "x");
        let reasons: Vec<Reason> = calls.refused.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [
                Reason::NoType,
                Reason::BadType,
                Reason::BadType,
                Reason::NotAnObject
            ]
        );
        let messages = refused(&calls);
        assert!(messages[0].starts_with("batch[1]: the event has no `type`"));
        assert!(messages[1].starts_with("batch[3]: unknown event type"));
        assert!(messages[2].contains("must be a string"));
        assert_eq!(calls.refused[3].call["value"], 7);
        let letter = calls.refused[1].dead_letter();
        assert_eq!(
            (letter.step.as_str(), letter.code.as_deref()),
            ("ingest", Some("bad_type"))
        );
        assert_eq!(letter.event["type"], "purchase");

        let whole = [
            (b"{not json".to_vec(), "not valid JSON"),
            (body(json!({"nobatch": []})), "no `batch` array"),
        ];
        for (b, want) in whole {
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
        let calls = events(
            Endpoint::Batch,
            &body(json!({"batch": [{"type": "track", "userId": "u", "event": big}, {"type": "track", "userId": "u"}]})),
            AT,
        )
        .expect("a batch with one call too big");
        assert_eq!(calls.accepted.len(), 1);
        assert_eq!(calls.refused[0].reason, Reason::TooLarge);
        assert!(refused(&calls)[0].contains("32 KB"));
        let many: Vec<Value> = (0..20)
            .map(|_| json!({"type": "track", "userId": "u", "event": "x".repeat(30_000)}))
            .collect();
        let err = events(Endpoint::Batch, &body(json!({"batch": many})), AT).expect_err("batch");
        assert!(err.0.contains("500 KB"), "{err}");
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let calls = events(
            Endpoint::Single("track"),
            format!(r#"{{"userId":"u","properties":{{"x":{deep}}}}}"#).as_bytes(),
            AT,
        )
        .expect("parsed");
        assert_eq!(calls.refused[0].reason, Reason::TooDeep);
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
        assert_eq!(basic_user(&basic).as_deref(), Some("k2"));
        assert_eq!(basic_user("Bearer k2"), None);
        assert_eq!(
            body_write_key(br#"{"writeKey":"k3","batch":[]}"#).as_deref(),
            Some("k3")
        );
        assert_eq!(body_write_key(b"{}"), None);
        assert_eq!(format!("{keys:?}").matches("redacted").count(), 3);
    }
}
