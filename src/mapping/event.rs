//! Incoming events: reading a JSON object, a JSON array or NDJSON, and checking each event.
//!
//! An [`Event`] is a Segment-spec message that passed the checks every later stage relies on:
//! it is a JSON object and its `type` is one of Segment's call types. The product's documentation
//! writes `"action": "identify"` where Segment writes `"type"`; [`Event::from_value`] accepts both.
//! Everything else about the event is left as it came: mappings decide what they read.

use serde::de::{Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

/// The Segment call types zdmap accepts.
pub const EVENT_TYPES: [&str; 6] = ["identify", "track", "group", "page", "screen", "alias"];

/// A checked Segment-spec event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    value: Arc<Value>,
}

/// Why one event was refused. Other events in the same input still run.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("not JSON: {message} (line {line}, column {column})")]
    NotJson {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("an event must be a JSON object, found {found}")]
    NotObject { found: &'static str },
    #[error("the event has no `type` (or `action`) field")]
    MissingType,
    #[error("the event's `type` must be a string, found {found}")]
    TypeNotString { found: &'static str },
    #[error(
        "unknown event type {found:?}: expected one of identify, track, group, page, screen, alias"
    )]
    UnknownType { found: String },
}

/// The JSON kind of a value, for error messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The member `key` of a JSON object.
///
/// Most objects of an event are small, and for a handful of keys comparing them in order is
/// cheaper than hashing the key, which is what `Map::get` does (measured with
/// `cargo bench --bench engine`: 8 keys was the better bound of 4, 8 and 16). The mapping engine's
/// reads of event data by name (paths, triggers, template references) go through here.
pub fn member<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    const LINEAR_UP_TO: usize = 8;
    if map.len() <= LINEAR_UP_TO {
        // The first byte rules out most keys of the same length without a call to memcmp.
        let first = key.as_bytes().first();
        map.iter()
            .find(|(k, _)| k.len() == key.len() && k.as_bytes().first() == first && *k == key)
            .map(|(_, v)| v)
    } else {
        map.get(key)
    }
}

impl Event {
    /// Checks a parsed JSON value and turns it into an event (`action` is taken as `type`).
    pub fn from_value(value: Value) -> Result<Event, EventError> {
        let Value::Object(map) = value else {
            return Err(EventError::NotObject {
                found: json_kind(&value),
            });
        };
        Event::from_object(map).map_err(|(e, _)| e)
    }

    /// Checks a JSON object and turns it into an event; a refused object comes back with the
    /// error (the ingest API keeps refused calls for the operator).
    pub fn from_object(
        mut map: Map<String, Value>,
    ) -> Result<Event, (EventError, Map<String, Value>)> {
        if !map.contains_key("type")
            && let Some(action) = map.remove("action")
        {
            map.insert("type".to_owned(), action);
        }
        match check_type(&map) {
            Ok(()) => Ok(Event {
                value: Arc::new(Value::Object(map)),
            }),
            Err(e) => Err((e, map)),
        }
    }

    /// Parses and checks one event from JSON bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Event, EventError> {
        let value: Value = serde_json::from_slice(bytes).map_err(not_json)?;
        Event::from_value(value)
    }

    /// The event's call type (`identify`, `track`, ...).
    pub fn kind(&self) -> &str {
        self.value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The whole event as JSON.
    pub fn value(&self) -> &Value {
        &self.value
    }

    pub fn into_value(self) -> Value {
        Arc::try_unwrap(self.value).unwrap_or_else(|shared| (*shared).clone())
    }

    /// The event as a shared value, for stages that keep it (templates, plans).
    pub(crate) fn shared_value(&self) -> Arc<Value> {
        self.value.clone()
    }

    /// Whether Segment's `integrations` object lets the event reach the destination `name`:
    /// `{"Zendesk": false}` turns it off, `{"All": false}` turns off every destination it does
    /// not turn on by name (`true`, or an object of options). Names compare without case.
    pub(crate) fn sent_to(&self, name: &str) -> bool {
        let Some(integrations) = self.value.get("integrations").and_then(Value::as_object) else {
            return true;
        };
        let named = integrations
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v);
        let on = |v: &Value| !matches!(v, Value::Bool(false));
        match named {
            Some(v) => on(v),
            None => integrations.get("All").is_none_or(on),
        }
    }

    /// Whether `integrations` lets the event reach the destination a server calls `name`
    /// (delivering with the integration name `integration`): named, its own value decides
    /// (`{"All": false, "eu": true}`, `{"us": false}`); not named, as [`Event::sent_to`] says of
    /// `integration`.
    pub(crate) fn sent_to_destination(&self, name: &str, integration: &str) -> bool {
        let named = (self.value.get("integrations").and_then(Value::as_object))
            .and_then(|i| i.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| !matches!(v, Value::Bool(false)));
        named.unwrap_or_else(|| self.sent_to(integration))
    }

    /// The keys that order delivery: events that share a key are delivered in order, one at
    /// a time; events with no key in common go in parallel.
    ///
    /// A call is keyed by its user: `userId`, else `anonymousId`. A `group` call is keyed by its
    /// organization (`groupId`) too, so the group calls of one organization go in order whoever
    /// sends them, and one with a `userId` (which adds that user to the organization) is ordered
    /// with that user's events as well.
    pub fn ordering_keys(&self) -> Vec<OrderingKey> {
        let non_empty = |k: &str| match self.value.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let user = non_empty("userId")
            .map(|u| OrderingKey::new(KeyKind::User, &u))
            .or_else(|| non_empty("anonymousId").map(|a| OrderingKey::new(KeyKind::Anonymous, &a)));
        let group = (self.kind() == "group")
            .then(|| non_empty("groupId").map(|g| OrderingKey::new(KeyKind::Group, &g)))
            .flatten();
        user.into_iter().chain(group).collect()
    }

    /// The keys of [`Event::ordering_keys`] that events in different partitions of a queue
    /// share (the organization of a `group` call: its calls come from many users), so that a
    /// queue shared by several processes holds them across processes (see `deliver::holds`).
    pub fn shared_keys(&self) -> Vec<String> {
        self.ordering_keys()
            .into_iter()
            .filter(|k| k.kind() == KeyKind::Group)
            .map(|k| k.to_string())
            .collect()
    }

    /// The first of [`Event::ordering_keys`] (the user, else the organization), as the text a
    /// queue partitions by.
    pub fn partition_key(&self) -> Option<String> {
        self.ordering_keys()
            .into_iter()
            .next()
            .map(|k| k.to_string())
    }
}

/// What an [`OrderingKey`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyKind {
    /// A `userId`.
    User,
    /// An `anonymousId` (a call without a `userId`).
    Anonymous,
    /// A `groupId` (an organization).
    Group,
}

impl KeyKind {
    fn prefix(self) -> &'static str {
        match self {
            KeyKind::User => "user",
            KeyKind::Anonymous => "anon",
            KeyKind::Group => "group",
        }
    }
}

/// A key that orders delivery: a user, an anonymous visitor or an organization. Written
/// `user:u1`, `anon:a1`, `group:acme` where it is stored or shown. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderingKey {
    kind: KeyKind,
    /// The whole text, `user:u1`.
    text: std::sync::Arc<str>,
}

impl OrderingKey {
    pub fn new(kind: KeyKind, value: &str) -> OrderingKey {
        OrderingKey {
            kind,
            text: format!("{}:{value}", kind.prefix()).into(),
        }
    }

    /// `user:u1` → the user `u1`; `None` for text that is not a key.
    pub fn parse(text: &str) -> Option<OrderingKey> {
        let (prefix, value) = text.split_once(':')?;
        let kind = [KeyKind::User, KeyKind::Anonymous, KeyKind::Group]
            .into_iter()
            .find(|k| k.prefix() == prefix)?;
        Some(OrderingKey::new(kind, value))
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The id it names: `u1` of `user:u1`.
    pub fn value(&self) -> &str {
        &self.text[self.kind.prefix().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for OrderingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn check_type(map: &Map<String, Value>) -> Result<(), EventError> {
    match map.get("type") {
        None => Err(EventError::MissingType),
        Some(Value::String(t)) if EVENT_TYPES.contains(&t.as_str()) => Ok(()),
        Some(Value::String(t)) => Err(EventError::UnknownType { found: t.clone() }),
        Some(other) => Err(EventError::TypeNotString {
            found: json_kind(other),
        }),
    }
}

fn not_json(e: serde_json::Error) -> EventError {
    EventError::NotJson {
        message: strip_position(&e.to_string()),
        line: e.line(),
        column: e.column(),
    }
}

/// serde_json appends " at line L column C"; the error carries those as fields.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// One item read from an input: its position and the event or the reason it was refused.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// 0-based index of the event in the input.
    pub index: usize,
    /// 1-based line where the event starts, when the input is line-oriented.
    pub line: Option<usize>,
    pub event: Result<Event, EventError>,
}

/// Reads events from `input`, calling `sink` for each in order, without holding more than one in memory.
///
/// The input may be a single JSON object (pretty-printed or not), a JSON array of objects, or
/// NDJSON (one object per line; blank lines are ignored). In NDJSON a line that is not JSON is
/// one failed event and reading goes on; in an array a syntax error ends the input, after an
/// error item that says where. `sink` returns `false` to stop early.
pub fn read_events<R: Read>(
    input: R,
    mut sink: impl FnMut(Incoming) -> bool,
) -> std::io::Result<()> {
    read_values(input, |raw| {
        sink(Incoming {
            index: raw.index,
            line: raw.line,
            event: raw.value.and_then(Event::from_value),
        })
    })
}

/// One JSON value read from an input, before it is checked as an event.
#[derive(Clone, Debug)]
pub struct RawItem {
    pub index: usize,
    pub line: Option<usize>,
    /// The value, or `EventError::NotJson`.
    pub value: Result<Value, EventError>,
}

/// Gives an event object without a `messageId` one derived from its content and its place in
/// the input (`zdmap-` and 32 hex digits), so that reading the same input again gives the same
/// ids: ticket creation's `Idempotency-Key` and the markers that checks read back stay the same
/// when a run is repeated after a crash. Anything else is left as it is.
pub fn ensure_message_id(value: &mut Value, index: usize) {
    let Value::Object(map) = value else {
        return;
    };
    if map.get("messageId").is_some_and(|m| !m.is_null()) {
        return;
    }
    let text = serde_json::to_string(&*map).unwrap_or_default();
    // FNV-1a, twice with different offsets: stable across builds and platforms.
    let fnv = |offset: u64| {
        let mut h = offset;
        for b in text.bytes().chain(index.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let id = format!(
        "zdmap-{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4)
    );
    map.insert("messageId".into(), Value::String(id));
}

/// Like [`read_events`], but hands over each JSON value unchecked (for inputs that may hold
/// other records, such as dead letters).
pub fn read_values<R: Read>(
    input: R,
    mut sink: impl FnMut(RawItem) -> bool,
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let first = loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let b = buf[i];
                reader.consume(i);
                break b;
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    if first == b'[' {
        read_array(reader, &mut sink)
    } else {
        read_lines(reader, &mut sink)
    }
}

fn read_lines<R: BufRead>(
    mut reader: R,
    sink: &mut impl FnMut(RawItem) -> bool,
) -> std::io::Result<()> {
    let mut index = 0;
    let mut line_no = 0;
    let mut pending = String::new();
    let mut pending_start = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if pending.is_empty() {
            if line.trim().is_empty() {
                continue;
            }
            pending_start = line_no;
        }
        pending.push_str(&line);
        match serde_json::from_str::<Value>(&pending) {
            Ok(v) => {
                let item = RawItem {
                    index,
                    line: Some(pending_start),
                    value: Ok(v),
                };
                index += 1;
                pending.clear();
                if !sink(item) {
                    return Ok(());
                }
            }
            // A pretty-printed object spans lines: keep reading until it is complete.
            Err(e) if e.is_eof() => {}
            Err(e) => {
                let item = RawItem {
                    index,
                    line: Some(pending_start),
                    value: Err(EventError::NotJson {
                        message: strip_position(&e.to_string()),
                        line: pending_start + e.line() - 1,
                        column: e.column(),
                    }),
                };
                index += 1;
                pending.clear();
                if !sink(item) {
                    return Ok(());
                }
            }
        }
    }
    if !pending.trim().is_empty() {
        let e = serde_json::from_str::<Value>(&pending).err();
        let (message, line, column) = match e {
            Some(e) => (
                strip_position(&e.to_string()),
                pending_start + e.line() - 1,
                e.column(),
            ),
            None => ("unexpected end of input".into(), pending_start, 1),
        };
        sink(RawItem {
            index,
            line: Some(pending_start),
            value: Err(EventError::NotJson {
                message,
                line,
                column,
            }),
        });
    }
    Ok(())
}

fn read_array<R: Read>(reader: R, sink: &mut impl FnMut(RawItem) -> bool) -> std::io::Result<()> {
    struct Elements<'s, F> {
        sink: &'s mut F,
        index: usize,
    }
    impl<'de, F: FnMut(RawItem) -> bool> Visitor<'de> for Elements<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON array of events")
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            while let Some(v) = seq.next_element::<Value>()? {
                let item = RawItem {
                    index: self.index,
                    line: None,
                    value: Ok(v),
                };
                self.index += 1;
                if !(self.sink)(item) {
                    return Err(serde::de::Error::custom(STOPPED));
                }
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
            Err(serde::de::Error::custom("expected an array"))
        }
    }
    const STOPPED: &str = "\u{0}stopped";
    let mut count = 0usize;
    let result = {
        let mut counting = |item: RawItem| {
            count = item.index + 1;
            sink(item)
        };
        let mut de = serde_json::Deserializer::from_reader(reader);
        de.deserialize_seq(Elements {
            sink: &mut counting,
            index: 0,
        })
        .and_then(|()| de.end())
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().starts_with(STOPPED) => Ok(()),
        Err(e) if e.is_io() => Err(std::io::Error::other(e)),
        Err(e) => {
            sink(RawItem {
                index: count,
                line: Some(e.line()),
                value: Err(not_json(e)),
            });
            Ok(())
        }
    }
}

/// Reads all events of a byte slice into memory.
#[cfg(test)]
fn read_all(input: &[u8]) -> Vec<Incoming> {
    let mut out = Vec::new();
    // Reading from a slice cannot fail with an I/O error.
    let _ = read_events(input, |i| {
        out.push(i);
        true
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn action_is_an_alias_of_type() {
        let e = Event::from_value(json!({"action": "identify", "userId": "u1"})).unwrap();
        assert_eq!(e.kind(), "identify");
        assert_eq!(e.value()["type"], "identify");
    }

    #[test]
    fn bad_events_are_refused_with_a_reason() {
        assert_eq!(
            Event::from_value(json!([1])).unwrap_err(),
            EventError::NotObject { found: "an array" }
        );
        assert_eq!(
            Event::from_value(json!({"userId": "x"})).unwrap_err(),
            EventError::MissingType
        );
        assert_eq!(
            Event::from_value(json!({"type": 3})).unwrap_err(),
            EventError::TypeNotString { found: "a number" }
        );
        assert!(matches!(
            Event::from_value(json!({"type": "boom"})).unwrap_err(),
            EventError::UnknownType { .. }
        ));
        assert!(matches!(
            Event::from_slice(b"{nope").unwrap_err(),
            EventError::NotJson { .. }
        ));
    }

    #[test]
    fn reads_ndjson_array_and_pretty_objects() {
        let nd = read_all(b"{\"type\":\"track\"}\n\nnot json\n{\"type\":\"identify\"}\n");
        assert_eq!(nd.len(), 3);
        assert!(nd[0].event.is_ok());
        assert!(matches!(
            nd[1].event,
            Err(EventError::NotJson { line: 3, .. })
        ));
        assert_eq!(nd[2].line, Some(4));
        assert_eq!(nd[2].event.as_ref().unwrap().kind(), "identify");

        let arr = read_all(b" [ {\"type\":\"track\"}, 5, {\"type\":\"group\"} ]");
        assert_eq!(arr.len(), 3);
        assert!(matches!(arr[1].event, Err(EventError::NotObject { .. })));
        assert_eq!(arr[2].index, 2);

        let pretty =
            read_all(b"{\n  \"type\": \"track\",\n  \"event\": \"x\"\n}\n{\n\"type\":\"group\"}");
        assert_eq!(pretty.len(), 2);
        assert!(pretty.iter().all(|i| i.event.is_ok()));

        let broken = read_all(b"[{\"type\":\"track\"}, {\"type\": ");
        assert_eq!(broken.len(), 2);
        assert!(matches!(broken[1].event, Err(EventError::NotJson { .. })));
    }

    #[test]
    fn partition_keys() {
        let e = Event::from_value(json!({"type": "group", "groupId": "g", "userId": "u"})).unwrap();
        assert_eq!(e.partition_key().as_deref(), Some("user:u"));
        let keys: Vec<String> = e.ordering_keys().iter().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["user:u", "group:g"]);
        assert_eq!(e.ordering_keys()[1].kind(), KeyKind::Group);
        assert_eq!(e.ordering_keys()[1].value(), "g");
        assert_eq!(e.shared_keys(), ["group:g"]);
        let e =
            Event::from_value(json!({"type": "identify", "groupId": "g", "userId": 7})).unwrap();
        assert_eq!(e.ordering_keys(), [OrderingKey::new(KeyKind::User, "7")]);
        assert_eq!(
            OrderingKey::parse("user:7"),
            Some(OrderingKey::new(KeyKind::User, "7"))
        );
        assert_eq!(
            OrderingKey::parse("anon:a:b").map(|k| k.value().to_string()),
            Some("a:b".into())
        );
        assert_eq!(OrderingKey::parse("ticket:7"), None);
        assert!(e.shared_keys().is_empty());
        let e = Event::from_value(json!({"type": "group", "groupId": "g"})).unwrap();
        assert_eq!(e.partition_key().as_deref(), Some("group:g"));
        assert_eq!(
            e.shared_keys(),
            ["group:g"],
            "held too: user group calls share it"
        );
        let e = Event::from_value(json!({"type": "track", "anonymousId": "a"})).unwrap();
        assert_eq!(e.partition_key().as_deref(), Some("anon:a"));
    }

    #[test]
    fn segments_integrations_object_turns_a_destination_off_or_on() {
        let with = |integrations: Value| {
            Event::from_value(
                json!({"type": "track", "event": "x", "userId": "u", "integrations": integrations}),
            )
            .expect("event")
        };
        assert!(with(json!({})).sent_to("Zendesk"));
        assert!(!with(json!({"Zendesk": false})).sent_to("Zendesk"));
        assert!(!with(json!({"zendesk": false})).sent_to("Zendesk"));
        assert!(!with(json!({"All": false})).sent_to("Zendesk"));
        assert!(with(json!({"All": false, "Zendesk": true})).sent_to("Zendesk"));
        assert!(with(json!({"All": false, "Zendesk": {"some": "option"}})).sent_to("Zendesk"));
        assert!(with(json!({"Intercom": false})).sent_to("Zendesk"));
        assert!(!with(json!({"Zendesk EU": false})).sent_to("Zendesk EU"));
    }
}
