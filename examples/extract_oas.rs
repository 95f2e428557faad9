//! Regenerates `tests/support/zendesk-oas.json`, the part of Zendesk's OpenAPI spec that the tests'
//! oracle (`tests/it/support/oas.rs`) validates requests and responses against.
//!
//! ```sh
//! cargo run --example extract_oas                    # reads ../shared/zendesk-oas.yaml
//! cargo run --example extract_oas -- SPEC.yaml OUT.json
//! ```
//!
//! It keeps every path of the resources zdmap and its emulator use (users and their identities and
//! memberships, organizations, organization memberships, tickets, user and organization fields,
//! job statuses; the bulk `*_many` endpoints and `show_many` with them, and the sibling paths,
//! so a concrete path matches the same template as in the whole spec), their operations'
//! `operationId`, request bodies and responses, and the components these reach. Prose
//! (`description`, `summary`, examples, tags, `x-` extensions) and parameters are left out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test or bench says what it expected

use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::process::ExitCode;

/// The first path segment after `/api/v2/` of the resources kept.
const RESOURCES: [&str; 7] = [
    "users",
    "organizations",
    "organization_memberships",
    "tickets",
    "user_fields",
    "organization_fields",
    "job_statuses",
];

/// What an operation keeps.
const OPERATION_KEYS: [&str; 3] = ["operationId", "requestBody", "responses"];

/// Keys that are prose or examples wherever a schema, response or body has them.
fn is_prose(key: &str) -> bool {
    matches!(
        key,
        "description" | "summary" | "example" | "examples" | "externalDocs" | "tags"
    ) || key.starts_with("x-")
}

fn main() -> ExitCode {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut args = std::env::args().skip(1);
    let spec = args
        .next()
        .unwrap_or_else(|| format!("{root}/../shared/zendesk-oas.yaml"));
    let out = args
        .next()
        .unwrap_or_else(|| format!("{root}/tests/support/zendesk-oas.json"));
    match extract(&spec).and_then(|doc| write(&out, &doc)) {
        Ok(()) => {
            println!("wrote {out} from {spec}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn write(out: &str, doc: &Value) -> Result<(), String> {
    let mut text = serde_json::to_string_pretty(doc).map_err(|e| e.to_string())?;
    text.push('\n');
    std::fs::write(out, text).map_err(|e| format!("{out}: {e}"))
}

fn extract(spec: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(spec).map_err(|e| format!("{spec}: {e}"))?;
    let doc: Value = serde_saphyr::from_str(&text).map_err(|e| format!("{spec}: {e}"))?;
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("the spec has no paths")?;
    let mut kept = Map::new();
    for (path, item) in paths {
        let resource = path
            .strip_prefix("/api/v2/")
            .and_then(|rest| rest.split('/').next());
        if !resource.is_some_and(|r| RESOURCES.contains(&r)) {
            continue;
        }
        let operations: Map<String, Value> = item
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(method, _)| {
                ["get", "put", "post", "patch", "delete"].contains(&method.as_str())
            })
            .map(|(method, op)| (method.clone(), operation(op)))
            .collect();
        kept.insert(path.clone(), Value::Object(operations));
    }
    let mut components = Map::new();
    let mut pending = Vec::new();
    refs(&Value::Object(kept.clone()), &mut pending);
    let mut seen = BTreeSet::new();
    while let Some(pointer) = pending.pop() {
        if !seen.insert(pointer.clone()) {
            continue;
        }
        let target = doc
            .pointer(&pointer)
            .ok_or_else(|| format!("unresolved $ref #{pointer}"))?;
        let target = without_prose(target);
        refs(&target, &mut pending);
        // `/components/KIND/NAME`
        let mut parts = pointer.trim_start_matches('/').splitn(3, '/').skip(1);
        let (Some(kind), Some(name)) = (parts.next(), parts.next()) else {
            return Err(format!("unexpected $ref #{pointer}"));
        };
        let section = components
            .entry(kind.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(section) = section {
            section.insert(name.to_owned(), target);
        }
    }
    for section in components.values_mut() {
        if let Value::Object(map) = section {
            map.sort_keys();
        }
    }
    let mut out = Map::new();
    out.insert(
        "openapi".into(),
        doc.get("openapi").cloned().unwrap_or_default(),
    );
    out.insert(
        "info".into(),
        serde_json::json!({
            "title": "Zendesk Support API: the operations zdmap and its emulator use",
            "x-extracted-by": "cargo run --example extract_oas",
            "version": doc.pointer("/info/version").cloned().unwrap_or_default(),
        }),
    );
    out.insert("paths".into(), Value::Object(kept));
    out.insert("components".into(), Value::Object(components));
    Ok(Value::Object(out))
}

fn operation(op: &Value) -> Value {
    let kept: Map<String, Value> = op
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| OPERATION_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), without_prose(v)))
        .collect();
    Value::Object(kept)
}

/// `v` without prose keys. Under `properties` (and `patternProperties`, `responses`, `content`)
/// the keys are names, not keywords, so they stay.
fn without_prose(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !is_prose(k))
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        (
                            "properties" | "patternProperties" | "responses" | "content",
                            Value::Object(named),
                        ) => Value::Object(
                            named
                                .iter()
                                .map(|(name, s)| (name.clone(), without_prose(s)))
                                .collect(),
                        ),
                        _ => without_prose(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_prose).collect()),
        other => other.clone(),
    }
}

/// The JSON pointers (`/components/...`) of every `$ref` inside `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(pointer) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix('#'))
            {
                out.push(pointer.to_owned());
            }
            map.values().for_each(|x| refs(x, out));
        }
        Value::Array(items) => items.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}
