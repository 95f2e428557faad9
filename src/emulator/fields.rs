//! Custom user and organization fields (docs/zendesk.md, "Custom user and organization fields"):
//! list, show, create (key rule `^(?![0-9]+$)[A-Za-z0-9_]+$`, 422 `DuplicateValue` on a taken
//! key), and the filtering and type checking of `user_fields` / `organization_fields` values on
//! records. Keys with no defined field are dropped. Values of the wrong type give 422
//! `InvalidValue` under `base`.

use serde_json::{Map, Value, json};

use super::errors::{ApiError, ApiResult, Invalid, Reply};
use super::router::{ApiRequest, World, whole_list};
use super::state::{FieldDef, Kind, Store, opt_id, opt_str};

/// Field types Zendesk knows.
const TYPES: [&str; 10] = [
    "text",
    "textarea",
    "checkbox",
    "date",
    "integer",
    "decimal",
    "regexp",
    "dropdown",
    "lookup",
    "multiselect",
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Family {
    User,
    Organization,
}

impl Family {
    /// The path segment and plural body key (`user_fields`).
    fn plural(self) -> &'static str {
        match self {
            Family::User => "user_fields",
            Family::Organization => "organization_fields",
        }
    }

    /// The singular body key (`user_field`).
    fn singular(self) -> &'static str {
        match self {
            Family::User => "user_field",
            Family::Organization => "organization_field",
        }
    }

    fn defs(self, s: &Store) -> &Vec<FieldDef> {
        match self {
            Family::User => &s.user_fields,
            Family::Organization => &s.organization_fields,
        }
    }

    fn defs_mut(self, s: &mut Store) -> &mut Vec<FieldDef> {
        match self {
            Family::User => &mut s.user_fields,
            Family::Organization => &mut s.organization_fields,
        }
    }
}

pub(crate) fn list(w: &mut World, fam: Family) -> ApiResult {
    let s = &w.store;
    let items: Vec<Value> = fam
        .defs(s)
        .iter()
        .map(|f| s.render_field(fam.plural(), f))
        .collect();
    Ok(whole_list(fam.plural(), items))
}

pub(crate) fn show(w: &mut World, fam: Family, id: u64) -> ApiResult {
    let s = &w.store;
    let f = fam
        .defs(s)
        .iter()
        .find(|f| f.id == id)
        .ok_or_else(ApiError::not_found)?;
    Ok(Reply::ok(
        json!({fam.singular(): s.render_field(fam.plural(), f)}),
    ))
}

pub(crate) fn create(w: &mut World, req: &ApiRequest, fam: Family) -> ApiResult {
    let obj = req.wrapped(fam.singular())?;
    let id = create_field(&mut w.store, fam, obj)?;
    let s = &w.store;
    let f = fam
        .defs(s)
        .iter()
        .find(|f| f.id == id)
        .ok_or_else(ApiError::not_found)?;
    Ok(Reply::json(
        201,
        json!({fam.singular(): s.render_field(fam.plural(), f)}),
    ))
}

/// Zendesk's key rule: letters, digits and underscores, not only digits.
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.chars().all(|c| c.is_ascii_digit())
}

/// Creates a field definition; also used by seeding.
pub(crate) fn create_field(
    s: &mut Store,
    fam: Family,
    obj: &Map<String, Value>,
) -> Result<u64, ApiError> {
    let key = opt_str(obj, "key").unwrap_or_default();
    let title = opt_str(obj, "title").unwrap_or_default();
    let kind = opt_str(obj, "type").unwrap_or_else(|| "text".into());
    let options: Vec<Value> = obj
        .get("custom_field_options")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut inv = Invalid::new();
    if key.is_empty() {
        inv = inv.add("key", "BlankValue", "Key: cannot be blank");
    } else if !valid_key(&key) {
        inv = inv.add(
            "key",
            "InvalidValue",
            "Key: must consist of only letters, numbers, and underscores, and can't be only numbers",
        );
    } else if fam.defs(s).iter().any(|f| f.key == key) {
        inv = inv.add(
            "key",
            "DuplicateValue",
            format!("Key: {key} has already been taken"),
        );
    }
    if title.trim().is_empty() {
        inv = inv.add("title", "BlankValue", "Title: cannot be blank");
    }
    if !TYPES.contains(&kind.as_str()) {
        inv = inv.add(
            "type",
            "InvalidValue",
            format!("Type: {kind} is not a valid field type"),
        );
    } else if matches!(kind.as_str(), "dropdown" | "multiselect") && options.is_empty() {
        inv = inv.add(
            "custom_field_options",
            "BlankValue",
            "Field options: cannot be blank",
        );
    }
    inv.into_result()?;
    let id = opt_id(obj, "id")
        .filter(|i| !fam.defs(s).iter().any(|f| f.id == *i))
        .unwrap_or_else(|| s.ids.next(Kind::Field));
    s.ids.observe(Kind::Field, id);
    let now = s.now();
    let position = fam.defs(s).len() as u64;
    let def = FieldDef {
        id,
        key,
        kind,
        title,
        description: opt_str(obj, "description").unwrap_or_default(),
        position: obj
            .get("position")
            .and_then(Value::as_u64)
            .unwrap_or(position),
        active: obj.get("active").and_then(Value::as_bool).unwrap_or(true),
        regexp_for_validation: opt_str(obj, "regexp_for_validation"),
        custom_field_options: options,
        created_at: now.clone(),
        updated_at: now,
    };
    fam.defs_mut(s).push(def);
    Ok(id)
}

/// Keeps the values whose key is a defined field, checking each value's type; problems are
/// added to `inv` under `base` with the field's id as `field_key`.
pub(crate) fn clean_values(
    defs: &[FieldDef],
    given: Option<&Value>,
    inv: &mut Invalid,
) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(Value::Object(given)) = given else {
        return out;
    };
    for (key, value) in given {
        let Some(def) = defs.iter().find(|f| &f.key == key) else {
            continue;
        };
        match coerce(def, value) {
            Some(v) => {
                out.insert(key.clone(), v);
            }
            None => {
                let taken = std::mem::take(inv);
                *inv = taken.add_field_value(def.id, format!("{}: is invalid", def.title));
            }
        }
    }
    out
}

/// The stored form of a value for a field, or `None` when the value does not fit the type.
fn coerce(def: &FieldDef, value: &Value) -> Option<Value> {
    if value.is_null() {
        return Some(Value::Null);
    }
    let as_text = || match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match def.kind.as_str() {
        "checkbox" => match value {
            Value::Bool(b) => Some(json!(b)),
            Value::String(s) if s == "true" || s == "false" => Some(json!(s == "true")),
            _ => None,
        },
        "integer" => match value {
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(value.clone()),
            Value::String(s) => s.trim().parse::<i64>().ok().map(|n| json!(n)),
            _ => None,
        },
        "decimal" => match value {
            Value::Number(_) => Some(value.clone()),
            Value::String(s) => s.trim().parse::<f64>().ok().map(|n| json!(n)),
            _ => None,
        },
        "date" => {
            let s = value.as_str()?;
            let date = s.get(..10)?;
            let b = date.as_bytes();
            let shape = b.len() == 10
                && b[4] == b'-'
                && b[7] == b'-'
                && b.iter()
                    .enumerate()
                    .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
            shape.then(|| json!(date))
        }
        "dropdown" => {
            let v = as_text()?;
            def.custom_field_options
                .iter()
                .any(|o| o.get("value").and_then(Value::as_str) == Some(v.as_str()))
                .then(|| json!(v))
        }
        "regexp" => as_text().map(Value::String),
        _ => as_text().map(Value::String),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rule() {
        assert!(valid_key("planName"));
        assert!(valid_key("plan_2"));
        assert!(!valid_key("123"));
        assert!(!valid_key("plan-name"));
        assert!(!valid_key("plan name"));
        assert!(!valid_key(""));
    }
}
