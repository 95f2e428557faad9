//! Field mappings: the named values an action reads from an event.
//!
//! A field's source is a JSONPath, a template, a literal, a setting, the first non-empty of
//! several sources, or an object built from the entries of event objects (custom traits for
//! `user_fields`). Then come `default`, type conversion and `required`. A field that resolves to
//! nothing is simply absent: the keys that use it drop out of the request. A required field that
//! resolves to nothing is an error for that event, naming the field and the sources tried.

use crate::mapping::diagnostic::Problems;
use crate::mapping::path::{JsonPath, Selected};
use crate::mapping::spec::{EntriesSpec, EntryValues, FieldDef, FieldSpec, KeyCase, ValueType};
use crate::mapping::template::{Scope, Templates, Text, snake_case};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// A compiled field.
#[derive(Debug)]
pub struct Field {
    pub name: String,
    source: Source,
    kind: Option<ValueType>,
    required: bool,
    default: Option<Value>,
}

#[derive(Debug)]
enum Source {
    Path(JsonPath),
    Template(Text, String),
    Literal(Value),
    Setting(String),
    FirstOf(Vec<Source>),
    Entries(Entries),
}

#[derive(Debug)]
struct Entries {
    from: Vec<JsonPath>,
    except: HashSet<String>,
    key_case: KeyCase,
    values: EntryValues,
}

/// A field that could not be given a value for one event.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// What a field's evaluation can read.
pub struct Input<'a> {
    pub event: &'a Value,
    pub settings: &'a Value,
    pub templates: &'a Templates,
    /// The scope for template sources, built on first use.
    pub scope: &'a dyn Fn() -> Scope,
}

impl Field {
    /// Compiles a field definition; problems are reported at `pointer` (e.g. `/fields/email`).
    pub fn compile(
        name: &str,
        def: &FieldDef,
        pointer: &str,
        templates: &mut Templates,
        settings: &[String],
        problems: &mut Problems,
    ) -> Option<Field> {
        let (source, spec) = match def {
            FieldDef::Short(s) => (
                compile_short(&s.to_json(), pointer, templates, problems)?,
                None,
            ),
            FieldDef::Full(spec) => (
                compile_spec(spec, pointer, templates, settings, problems)?,
                Some(spec),
            ),
        };
        Some(Field {
            name: name.to_owned(),
            source,
            kind: spec.and_then(|s| s.kind),
            required: spec.is_some_and(|s| s.required),
            default: spec.and_then(|s| s.default.clone()),
        })
    }

    /// The field's value for one event; `Ok(None)` when it has none.
    pub fn eval(&self, input: &Input) -> Result<Option<Value>, FieldError> {
        let err = |message: String| FieldError {
            field: self.name.clone(),
            message,
        };
        let value = self.source.eval(input).map_err(err)?;
        let value = value.or_else(|| self.default.clone());
        let value = match (value, self.kind) {
            (Some(v), Some(kind)) => Some(coerce(v, kind).map_err(err)?),
            (v, _) => v,
        };
        if value.is_none() && self.required {
            return Err(err(format!(
                "required, but no value was found (tried {})",
                self.source.describe()
            )));
        }
        Ok(value)
    }
}

fn compile_short(
    value: &Value,
    pointer: &str,
    templates: &mut Templates,
    problems: &mut Problems,
) -> Option<Source> {
    match value {
        Value::String(s) if s.starts_with('$') => {
            JsonPath::compile(s, pointer, problems).map(Source::Path)
        }
        Value::String(s) if s.contains("{{") || s.contains("{%") => match templates.text(s) {
            Ok(t) => Some(Source::Template(t, s.clone())),
            Err(e) => {
                e.report("template error", pointer, problems);
                None
            }
        },
        other => Some(Source::Literal(other.clone())),
    }
}

fn compile_spec(
    spec: &FieldSpec,
    pointer: &str,
    templates: &mut Templates,
    settings: &[String],
    problems: &mut Problems,
) -> Option<Source> {
    let given: Vec<&str> = [
        ("path", spec.path.is_some()),
        ("template", spec.template.is_some()),
        ("value", spec.value.is_some()),
        ("setting", spec.setting.is_some()),
        ("first_of", spec.first_of.is_some()),
        ("entries", spec.entries.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    if given.len() != 1 {
        let msg = if given.is_empty() {
            "a field needs one source: `path`, `template`, `value`, `setting`, `first_of` or `entries`".to_owned()
        } else {
            format!("a field has one source, found {}", given.join(" and "))
        };
        problems.at(pointer, msg);
        return None;
    }
    if let Some(p) = &spec.path {
        return JsonPath::compile(p, &format!("{pointer}/path"), problems).map(Source::Path);
    }
    if let Some(t) = &spec.template {
        return match templates.text(t) {
            Ok(text) => Some(Source::Template(text, t.clone())),
            Err(e) => {
                e.report("template error", &format!("{pointer}/template"), problems);
                None
            }
        };
    }
    if let Some(v) = &spec.value {
        return Some(Source::Literal(v.clone()));
    }
    if let Some(s) = &spec.setting {
        if !settings.iter().any(|k| k == s) {
            let hint = crate::mapping::diagnostic::suggest(s, settings.iter().map(String::as_str))
                .map(|h| format!("; did you mean `{h}`?"))
                .unwrap_or_default();
            problems.at(
                &format!("{pointer}/setting"),
                format!("unknown setting `{s}`{hint}"),
            );
            return None;
        }
        return Some(Source::Setting(s.clone()));
    }
    if let Some(list) = &spec.first_of {
        let mut sources = Vec::new();
        for (i, def) in list.iter().enumerate() {
            let p = format!("{pointer}/first_of/{i}");
            let s = match def {
                FieldDef::Short(s) => compile_short(&s.to_json(), &p, templates, problems),
                FieldDef::Full(spec) => compile_spec(spec, &p, templates, settings, problems),
            };
            sources.push(s?);
        }
        if sources.is_empty() {
            problems.at(
                &format!("{pointer}/first_of"),
                "`first_of` needs at least one source",
            );
            return None;
        }
        return Some(Source::FirstOf(sources));
    }
    let e: &EntriesSpec = spec.entries.as_ref()?;
    let mut from = Vec::new();
    for (i, p) in e.from.iter().enumerate() {
        from.push(JsonPath::compile(
            p,
            &format!("{pointer}/entries/from/{i}"),
            problems,
        )?);
    }
    Some(Source::Entries(Entries {
        from,
        except: e.except.iter().cloned().collect(),
        key_case: e.key_case,
        values: e.values,
    }))
}

/// Null, an empty string, an empty list and an empty object give no value in `first_of`.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

impl Source {
    fn eval(&self, input: &Input) -> Result<Option<Value>, String> {
        Ok(match self {
            Source::Path(p) => match p.select(input.event) {
                Selected::Nothing | Selected::One(Value::Null) => None,
                Selected::One(v) => Some(v.clone()),
                Selected::Many(vs) => Some(Value::Array(vs.into_iter().cloned().collect())),
            },
            Source::Template(t, _) => input
                .templates
                .eval(t, &(input.scope)())
                .map_err(|e| format!("template failed: {e}"))?,
            Source::Literal(v) => Some(v.clone()),
            Source::Setting(s) => input.settings.get(s).filter(|v| !v.is_null()).cloned(),
            Source::FirstOf(sources) => {
                for s in sources {
                    if let Some(v) = s.eval(input)?
                        && !is_empty(&v)
                    {
                        return Ok(Some(v));
                    }
                }
                None
            }
            Source::Entries(e) => e.eval(input.event),
        })
    }

    fn describe(&self) -> String {
        match self {
            Source::Path(p) => p.source().to_owned(),
            Source::Template(_, src) => format!("template {src:?}"),
            Source::Literal(_) => "a literal".into(),
            Source::Setting(s) => format!("setting `{s}`"),
            Source::FirstOf(list) => list
                .iter()
                .map(Source::describe)
                .collect::<Vec<_>>()
                .join(", "),
            Source::Entries(e) => e
                .from
                .iter()
                .map(|p| p.source())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

impl Entries {
    fn eval(&self, event: &Value) -> Option<Value> {
        let mut out = Map::new();
        for path in &self.from {
            let Some(Value::Object(obj)) = path.first(event) else {
                continue;
            };
            for (k, v) in obj {
                let keep = match self.values {
                    EntryValues::Scalars => {
                        matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
                    }
                    EntryValues::Any => !v.is_null(),
                };
                if !keep || self.except.contains(k) {
                    continue;
                }
                let key = match self.key_case {
                    KeyCase::AsIs => k.clone(),
                    KeyCase::SnakeCase => snake_case(k),
                };
                if key.is_empty() || self.except.contains(&key) {
                    continue;
                }
                out.insert(key, v.clone());
            }
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }
}

/// Converts a value to a type; a value that cannot be converted is an error.
pub fn coerce(v: Value, kind: ValueType) -> Result<Value, String> {
    let fail = |v: &Value| {
        Err(format!(
            "cannot convert {} to {kind:?}",
            crate::mapping::event::json_kind(v)
        )
        .to_lowercase())
    };
    match (kind, v) {
        (ValueType::Any, v) => Ok(v),
        (ValueType::String, Value::String(s)) => Ok(Value::String(s)),
        (ValueType::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (ValueType::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (ValueType::Integer, Value::Number(n)) => match n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }) {
            Some(i) => Ok(Value::from(i)),
            None => fail(&Value::Number(n)),
        },
        (ValueType::Integer, Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(i) => Ok(Value::from(i)),
            Err(_) => Err(format!("cannot convert {s:?} to an integer")),
        },
        (ValueType::Number, Value::Number(n)) => Ok(Value::Number(n)),
        (ValueType::Number, Value::String(s)) => match s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            Some(n) => Ok(Value::Number(n)),
            None => Err(format!("cannot convert {s:?} to a number")),
        },
        (ValueType::Boolean, Value::Bool(b)) => Ok(Value::Bool(b)),
        (ValueType::Boolean, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "0" | "" => Ok(Value::Bool(false)),
            _ => Err(format!("cannot convert {s:?} to a boolean")),
        },
        (ValueType::Boolean, Value::Number(n)) => Ok(Value::Bool(n.as_f64() != Some(0.0))),
        (ValueType::Array, Value::Array(a)) => Ok(Value::Array(a)),
        (ValueType::Array, v) => Ok(Value::Array(vec![v])),
        (ValueType::Object, Value::Object(o)) => Ok(Value::Object(o)),
        (_, v) => fail(&v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn coercions() {
        assert_eq!(coerce(json!("42"), ValueType::Integer), Ok(json!(42)));
        assert_eq!(coerce(json!(42.0), ValueType::Integer), Ok(json!(42)));
        assert_eq!(coerce(json!(7), ValueType::String), Ok(json!("7")));
        assert_eq!(coerce(json!("true"), ValueType::Boolean), Ok(json!(true)));
        assert_eq!(coerce(json!("x"), ValueType::Array), Ok(json!(["x"])));
        assert!(coerce(json!({"a": 1}), ValueType::String).is_err());
        assert!(coerce(json!("4.5x"), ValueType::Number).is_err());
    }
}
