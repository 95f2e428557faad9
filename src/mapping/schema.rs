//! The JSON Schemas of `schemas/`: generated from the config types, and used to check files.
//!
//! `schemas/action.schema.json`, `destination.schema.json` and `cases.schema.json` are generated
//! from [`crate::mapping::spec`] with schemars, so editors (through the `yaml-language-server`
//! line at the top of every shipped file) and the loader check the same thing. The event schema
//! describes what an incoming event must be. `zdmap schema --write` regenerates the files; a test
//! fails when the checked-in files drift from the types.

use crate::mapping::diagnostic::Problems;
use crate::mapping::diagnostic::suggest;
use crate::mapping::spec::{ActionSpec, CaseFile, DestinationSpec};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{JsonType, ValidationError, Validator};
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::OnceLock;

fn generate<T: schemars::JsonSchema>(id: &str) -> Value {
    let schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    let mut v = serde_json::to_value(schema).unwrap_or_default();
    drop_unknown_formats(&mut v);
    if let Value::Object(m) = &mut v {
        m.shift_insert(
            1,
            "$id".into(),
            json!(format!("https://zdmap.dev/schemas/{id}")),
        );
    }
    v
}

/// The `format`s JSON Schema 2020-12 defines. schemars also writes formats of its own (`uint64`,
/// `double`), which strict validators refuse; those are dropped.
pub const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

fn drop_unknown_formats(schema: &mut Value) {
    match schema {
        Value::Object(m) => {
            let unknown = m
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| !STANDARD_FORMATS.contains(&f));
            if unknown {
                m.shift_remove("format");
            }
            m.values_mut().for_each(drop_unknown_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_unknown_formats),
        _ => {}
    }
}

/// The schema of action files.
pub fn action_schema() -> Value {
    generate::<ActionSpec>("action.schema.json")
}

/// The schema of `destination.yaml`.
pub(crate) fn destination_schema() -> Value {
    generate::<DestinationSpec>("destination.schema.json")
}

/// The schema of mapping test case files.
pub(crate) fn cases_schema() -> Value {
    generate::<CaseFile>("cases.schema.json")
}

/// The schema of one incoming event (what `Event::from_value` accepts; `action` is an alias of `type`).
pub fn event_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://zdmap.dev/schemas/event.schema.json",
        "title": "zdmap event",
        "description": "A Segment-spec event. `action` is accepted as an alias of `type` (the product documentation's spelling).",
        "type": "object",
        "properties": {
            "type": { "enum": crate::mapping::event::EVENT_TYPES },
            "action": { "enum": crate::mapping::event::EVENT_TYPES },
            "event": { "type": "string", "description": "The event name of a track call." },
            "userId": id_or_null(),
            "anonymousId": id_or_null(),
            "groupId": id_or_null(),
            "messageId": { "type": "string" },
            "timestamp": { "type": "string" },
            "traits": { "type": "object" },
            "properties": { "type": "object" },
            "context": {
                "type": "object",
                "properties": {
                    "traits": { "type": "object" },
                    "zendesk_user_id": { "anyOf": [{ "type": "string" }, { "type": "integer" }] }
                }
            },
            "integrations": { "type": "object" }
        },
        // Each branch names the property it requires, as strict validators want.
        "anyOf": [
            { "properties": { "type": true }, "required": ["type"] },
            { "properties": { "action": true }, "required": ["action"] }
        ]
    })
}

/// A user, anonymous or group id: a string, a number or null (as alternatives rather than a
/// union `type`, which strict validators refuse).
fn id_or_null() -> Value {
    json!({ "anyOf": [{ "type": "string" }, { "type": "number" }, { "type": "null" }] })
}

/// Every schema file of `schemas/` and its content.
pub fn all() -> Vec<(&'static str, Value)> {
    vec![
        ("action.schema.json", action_schema()),
        ("destination.schema.json", destination_schema()),
        ("cases.schema.json", cases_schema()),
        ("event.schema.json", event_schema()),
    ]
}

/// The file text of a schema (pretty JSON, newline at the end).
pub fn render(schema: &Value) -> String {
    let mut s = serde_json::to_string_pretty(schema).unwrap_or_default();
    s.push('\n');
    s
}

/// Writes every schema into `dir`.
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, schema) in all() {
        std::fs::write(dir.join(name), render(&schema))?;
    }
    Ok(())
}

#[allow(
    clippy::panic,
    reason = "the schemas are generated from this crate's own types, not from input; the schemas tests compile each"
)]
fn validator(cell: &'static OnceLock<Validator>, schema: fn() -> Value) -> &'static Validator {
    cell.get_or_init(|| match jsonschema::validator_for(&schema()) {
        Ok(v) => v,
        // The schemas are generated from our own types: a failure here is a bug in this crate.
        Err(e) => panic!("generated schema does not compile: {e}"),
    })
}

pub(crate) fn action_validator() -> &'static Validator {
    static CELL: OnceLock<Validator> = OnceLock::new();
    validator(&CELL, action_schema)
}

pub(crate) fn destination_validator() -> &'static Validator {
    static CELL: OnceLock<Validator> = OnceLock::new();
    validator(&CELL, destination_schema)
}

pub(crate) fn cases_validator() -> &'static Validator {
    static CELL: OnceLock<Validator> = OnceLock::new();
    validator(&CELL, cases_schema)
}

/// Checks a document against a schema, reporting every problem at its place.
pub fn check(validator: &Validator, doc: &Value, problems: &mut Problems) {
    for e in validator.iter_errors(doc) {
        report(&e, doc, problems);
    }
}

fn report(e: &ValidationError, doc: &Value, problems: &mut Problems) {
    let at = e.instance_path().as_str().to_owned();
    match e.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let known = known_properties(e.instance_path().as_str(), doc, e);
            for key in unexpected {
                let hint = suggest(key, known.iter().map(String::as_str))
                    .map(|h| format!("; did you mean `{h}`?"))
                    .unwrap_or_else(|| {
                        if known.is_empty() {
                            String::new()
                        } else {
                            format!("; expected one of: {}", known.join(", "))
                        }
                    });
                problems.at_key(
                    &format!("{at}/{}", escape(key)),
                    format!("unknown key `{key}`{hint}"),
                );
            }
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // A value that must be one of a set: name the set and the closest member.
            let valid: Vec<&Value> = context.iter().flatten().flat_map(valid_values).collect();
            if !valid.is_empty() {
                problems.at(&at, not_valid(e.instance(), &valid));
                return;
            }
            // For a mapping, report the errors of the alternative that is a mapping too.
            let instance_is_object = e.instance().is_object();
            let branch = context.iter().find(|errs| {
                instance_is_object
                    && !errs.iter().any(|x| {
                        matches!(x.kind(), ValidationErrorKind::Type { .. })
                            && x.instance_path().as_str() == at
                    })
            });
            match branch {
                Some(errs) if !errs.is_empty() => {
                    errs.iter().for_each(|x| report(x, doc, problems))
                }
                _ => {
                    // A value of a shape no alternative takes: name the shapes they take.
                    let wanted = types_wanted(e);
                    let message = if wanted.is_empty() {
                        e.masked().to_string()
                    } else {
                        wrong_type(&wanted, e.instance())
                    };
                    problems.at(&at, message);
                }
            }
        }
        ValidationErrorKind::Type { .. } => {
            problems.at(&at, wrong_type(&types_wanted(e), e.instance()));
        }
        ValidationErrorKind::Enum { .. } | ValidationErrorKind::Constant { .. } => {
            problems.at(&at, not_valid(e.instance(), &valid_values(e)));
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            problems.at(&at, format!("missing required key `{name}`"));
        }
        _ => problems.at(&at, e.to_string()),
    }
}

/// The types a `type` error wants, or the alternatives of an `anyOf`/`oneOf` error at the
/// same place want.
fn types_wanted(e: &ValidationError) -> Vec<JsonType> {
    match e.kind() {
        ValidationErrorKind::Type {
            kind: TypeKind::Single(t),
        } => vec![*t],
        ValidationErrorKind::Type {
            kind: TypeKind::Multiple(set),
        } => set.iter().collect(),
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            context
                .iter()
                .flatten()
                .filter(|x| x.instance_path() == e.instance_path())
                .flat_map(types_wanted)
                .collect()
        }
        _ => Vec::new(),
    }
}

/// `expected a list, found a number` (`null` is left out: it stands for a key left out).
fn wrong_type(wanted: &[JsonType], value: &Value) -> String {
    let name = |t: JsonType| match t {
        JsonType::Null => "nothing",
        JsonType::Array => "a list",
        JsonType::Object => "a mapping",
        JsonType::String => "a string",
        JsonType::Integer => "an integer",
        JsonType::Number => "a number",
        JsonType::Boolean => "a boolean",
    };
    let mut names: Vec<&str> = Vec::new();
    for t in wanted.iter().filter(|t| **t != JsonType::Null) {
        if !names.contains(&name(*t)) {
            names.push(name(*t));
        }
    }
    let found = match value {
        Value::Null => JsonType::Null,
        Value::Bool(_) => JsonType::Boolean,
        Value::Number(_) => JsonType::Number,
        Value::String(_) => JsonType::String,
        Value::Array(_) => JsonType::Array,
        Value::Object(_) => JsonType::Object,
    };
    format!("expected {}, found {}", names.join(" or "), name(found))
}

/// The values an `enum` or `const` error allows.
fn valid_values<'e>(e: &'e ValidationError) -> Vec<&'e Value> {
    match e.kind() {
        ValidationErrorKind::Enum { options } => options
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        ValidationErrorKind::Constant { expected_value } => vec![expected_value.as_ref()],
        _ => Vec::new(),
    }
}

/// `"str" is not valid. Valid values: "string", "integer", ...; did you mean "string"?`
fn not_valid(value: &Value, valid: &[&Value]) -> String {
    let names: Vec<String> = valid.iter().map(|v| v.to_string()).collect();
    let hint = value
        .as_str()
        .and_then(|s| suggest(s, valid.iter().filter_map(|v| v.as_str())))
        .map(|h| format!("; did you mean {h:?}?"))
        .unwrap_or_default();
    format!(
        "{value} is not valid. Valid values: {}{hint}",
        names.join(", ")
    )
}

/// Property names allowed at the place of an `additionalProperties` error, for suggestions.
fn known_properties(_instance_path: &str, _doc: &Value, e: &ValidationError) -> Vec<String> {
    let schema_path = e.schema_path().as_str();
    let parent = schema_path.rsplit_once('/').map_or("", |(p, _)| p);
    for root in [action_schema(), destination_schema(), cases_schema()] {
        if let Some(Value::Object(props)) =
            resolve(&root, parent).and_then(|s| s.get("properties").cloned())
        {
            return props.keys().cloned().collect();
        }
    }
    Vec::new()
}

/// Follows a schema pointer through `$ref`s.
fn resolve<'a>(root: &'a Value, pointer: &str) -> Option<&'a Value> {
    let mut node = root;
    for seg in pointer.split('/').skip(1) {
        if seg == "$ref" {
            let target = node.get("$ref")?.as_str()?.strip_prefix('#')?;
            node = root.pointer(target)?;
            continue;
        }
        let seg = seg.replace("~1", "/").replace("~0", "~");
        node = match node {
            Value::Object(m) => m.get(&seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
        if let Some(Value::String(r)) = node.get("$ref")
            && node.get("properties").is_none()
            && let Some(t) = r.strip_prefix('#').and_then(|t| root.pointer(t))
        {
            node = t;
        }
    }
    Some(node)
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}
