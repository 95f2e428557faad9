//! A small OpenAPI oracle over `tests/support/zendesk-oas.json`: the part of Zendesk Support's OAS
//! 3.0.3 spec for the operations zdmap and its emulator use, without the prose (regenerate it with
//! `cargo run --example extract_oas`).
//!
//! It finds the operation for a concrete request (`/api/v2/users/123.json` matches
//! `/api/v2/users/{user_id}`; the literal template wins over a parameter, so `users/search` is not
//! `users/{user_id}`), takes its request or response schema, turns the OAS 3.0 dialect into JSON
//! Schema (`nullable` → a null alternative, `oneOf` → `anyOf` because the spec's variants
//! overlap, unknown formats ignored) and validates with the `jsonschema` crate. `$ref`s into
//! `#/components/...` stay as they are: the reachable component schemas are copied into the root
//! of each compiled schema, so the pointers resolve.
//!
//! Use: `crate::support::oas::Oas::load()`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value, json};

/// What a validation found when it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validated {
    /// The body matches the spec's schema.
    Valid,
    /// The spec has no schema for this (operation absent, no body schema, no JSON response).
    NoSchema,
}

pub struct Oas {
    doc: Value,
    /// Path templates split into segments, e.g. `["api","v2","users","{user_id}"]`.
    templates: Vec<(String, Vec<String>)>,
    compiled: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

const SPEC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/zendesk-oas.json"
);

impl Oas {
    /// Loads and prepares the spec once per test binary.
    pub fn load() -> &'static Oas {
        static OAS: OnceLock<Oas> = OnceLock::new();
        OAS.get_or_init(|| {
            let text =
                std::fs::read_to_string(SPEC).unwrap_or_else(|e| panic!("cannot read {SPEC}: {e}"));
            let doc: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {SPEC}: {e}"));
            Oas::from_doc(doc)
        })
    }

    /// Prepares a parsed spec.
    pub fn from_doc(doc: Value) -> Oas {
        let templates = doc
            .get("paths")
            .and_then(Value::as_object)
            .map(|paths| paths.keys().map(|p| (p.clone(), segments(p))).collect())
            .unwrap_or_default();
        Oas {
            doc,
            templates,
            compiled: Mutex::new(HashMap::new()),
        }
    }

    /// The spec path template for a concrete path (query and `.json` stripped), if any.
    pub fn template_for(&self, path: &str) -> Option<&str> {
        let path = path.split('?').next().unwrap_or(path);
        let path = path.strip_suffix(".json").unwrap_or(path);
        let segs = segments(path);
        self.templates
            .iter()
            .filter(|(_, t)| {
                t.len() == segs.len()
                    && t.iter()
                        .zip(&segs)
                        .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
            })
            // The template with the most literal segments, leftmost first, wins.
            .max_by_key(|(_, t)| t.iter().map(|s| !s.starts_with('{')).collect::<Vec<bool>>())
            .map(|(p, _)| p.as_str())
    }

    fn operation(&self, method: &str, path: &str) -> Option<(&str, &Value)> {
        let tpl = self.template_for(path)?;
        let op = self
            .doc
            .get("paths")?
            .get(tpl)?
            .get(method.to_ascii_lowercase())?;
        Some((tpl, op))
    }

    /// The operationId of a request, if the spec has the operation.
    pub fn operation_id(&self, method: &str, path: &str) -> Option<&str> {
        self.operation(method, path)?.1.get("operationId")?.as_str()
    }

    /// Validates a request body against the operation's `requestBody` schema.
    pub fn validate_request(
        &self,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<Validated, Vec<String>> {
        let Some((tpl, op)) = self.operation(method, path) else {
            return Ok(Validated::NoSchema);
        };
        let Some(schema) = op
            .get("requestBody")
            .map(|b| self.deref(b))
            .and_then(json_schema_of)
        else {
            return Ok(Validated::NoSchema);
        };
        self.check(&format!("{method} {tpl} request"), schema, body)
    }

    /// Validates a response body against the operation's schema for `status` (or `default`).
    pub fn validate_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &Value,
    ) -> Result<Validated, Vec<String>> {
        let Some((tpl, op)) = self.operation(method, path) else {
            return Ok(Validated::NoSchema);
        };
        let Some(responses) = op.get("responses") else {
            return Ok(Validated::NoSchema);
        };
        let Some(resp) = responses
            .get(status.to_string())
            .or_else(|| responses.get("default"))
        else {
            return Ok(Validated::NoSchema);
        };
        let Some(schema) = json_schema_of(self.deref(resp)) else {
            return Ok(Validated::NoSchema);
        };
        self.check(&format!("{method} {tpl} {status}"), schema, body)
    }

    /// Follows a `$ref` to `#/components/...` (for responses and request bodies).
    fn deref<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
        {
            Some(pointer) => self.doc.pointer(pointer).unwrap_or(v),
            None => v,
        }
    }

    fn check(&self, key: &str, schema: &Value, body: &Value) -> Result<Validated, Vec<String>> {
        let validator = self.compile(key, schema).map_err(|e| vec![e])?;
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{key}: at {}: {e}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(Validated::Valid)
        } else {
            Err(errors)
        }
    }

    fn compile(&self, key: &str, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
        let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = cache.get(key) {
            return Ok(v.clone());
        }
        // Copy in every component schema the schema reaches, converted like the schema itself.
        let mut names = BTreeSet::new();
        let mut pending = Vec::new();
        collect_refs(schema, &mut pending);
        let mut schemas = Map::new();
        while let Some(name) = pending.pop() {
            if !names.insert(name.clone()) {
                continue;
            }
            let Some(component) = self.doc.pointer(&format!("/components/schemas/{name}")) else {
                return Err(format!(
                    "{key}: unresolved $ref #/components/schemas/{name}"
                ));
            };
            collect_refs(component, &mut pending);
            schemas.insert(name, convert(component));
        }
        let root = json!({"allOf": [convert(schema)], "components": {"schemas": schemas}});
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(false)
            .build(&root)
            .map_err(|e| format!("{key}: schema does not compile: {e}"))?;
        let validator = Arc::new(validator);
        cache.insert(key.to_string(), validator.clone());
        Ok(validator)
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `content."application/json".schema` of a response or request body.
fn json_schema_of(v: &Value) -> Option<&Value> {
    let content = v.get("content")?.as_object()?;
    let media = content.get("application/json").or_else(|| {
        content
            .iter()
            .find(|(k, _)| k.contains("json"))
            .map(|(_, v)| v)
    })?;
    media.get("schema")
}

/// Names of the component schemas a schema refers to, anywhere inside it.
fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(name) = m
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
            {
                out.push(name.to_string());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Converts an OAS 3.0 schema object to JSON Schema (draft 4), walking only schema positions so
/// that property names and examples are left alone.
fn convert(schema: &Value) -> Value {
    let Some(obj) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in obj {
        let converted = match k.as_str() {
            "properties" | "patternProperties" => match v.as_object() {
                Some(props) => {
                    Value::Object(props.iter().map(|(n, s)| (n.clone(), convert(s))).collect())
                }
                None => v.clone(),
            },
            "items" | "additionalProperties" | "not" => convert(v),
            "allOf" | "anyOf" | "oneOf" => match v.as_array() {
                Some(list) => Value::Array(list.iter().map(convert).collect()),
                None => v.clone(),
            },
            // OAS-only keywords and annotations that JSON Schema would misread.
            "nullable" | "discriminator" | "example" | "xml" | "externalDocs" | "deprecated" => {
                continue;
            }
            _ => v.clone(),
        };
        // The spec's oneOf variants overlap (JobStatusResultObject): accept when one matches.
        let key = if k == "oneOf" {
            "anyOf".to_string()
        } else {
            k.clone()
        };
        out.insert(key, converted);
    }
    if obj.get("nullable").and_then(Value::as_bool) == Some(true) {
        if let Some(Value::Array(e)) = out.get_mut("enum")
            && !e.contains(&Value::Null)
        {
            e.push(Value::Null);
        }
        match out.get("type").cloned() {
            Some(Value::String(t)) => {
                out.insert("type".into(), json!([t, "null"]));
            }
            _ => return json!({"anyOf": [Value::Object(out), {"type": "null"}]}),
        }
    }
    Value::Object(out)
}
