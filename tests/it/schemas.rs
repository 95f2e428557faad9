//! `schemas/`: generated from the config types and checked in; shipped files point at them;
//! the event schema agrees with the event checks.

use std::path::Path;

#[test]
fn checked_in_schemas_match_the_types() {
    for (name, schema) in zdmap::mapping::schema::all() {
        let path = Path::new("schemas").join(name);
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk,
            zdmap::mapping::schema::render(&schema),
            "{} is out of date: run `cargo run -- schema --write schemas`",
            path.display()
        );
    }
}

#[test]
fn every_shipped_yaml_file_names_its_schema() {
    let mut files = Vec::new();
    for dir in ["mappings", "mappings/tests"] {
        for e in std::fs::read_dir(dir).expect("dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 7, "{files:?}");
    for f in files {
        let first = std::fs::read_to_string(&f)
            .expect("read")
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(
            first.starts_with("# yaml-language-server: $schema="),
            "{}: {first}",
            f.display()
        );
        let target = first.trim_start_matches("# yaml-language-server: $schema=");
        let schema = f.parent().expect("parent").join(target);
        assert!(
            schema.exists(),
            "{} points at {}",
            f.display(),
            schema.display()
        );
    }
}

#[test]
fn event_schema_agrees_with_event_checks() {
    let validator = jsonschema::validator_for(&zdmap::mapping::schema::event_schema())
        .expect("schema compiles");
    let text = std::fs::read_to_string("examples/events.ndjson").expect("examples");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        assert!(validator.is_valid(&v), "{line}");
        assert!(zdmap::mapping::event::Event::from_value(v).is_ok());
    }
    for bad in [
        serde_json::json!({"userId": "x"}),
        serde_json::json!({"type": 3}),
        serde_json::json!({"type": "nope"}),
        serde_json::json!([1]),
    ] {
        assert!(!validator.is_valid(&bad), "{bad}");
        assert!(zdmap::mapping::event::Event::from_value(bad).is_err());
    }
}

/// Strict validators (ajv `--spec=draft2020 --strict`) refuse formats the standard does not
/// define, which schemars writes for Rust number types, and union `type`s.
#[test]
fn schemas_use_only_standard_formats_and_single_types() {
    fn walk(v: &serde_json::Value, at: &str, found: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(f) = m.get("format").and_then(|f| f.as_str())
                    && !zdmap::mapping::schema::STANDARD_FORMATS.contains(&f)
                {
                    found.push(format!("{at}: format {f:?}"));
                }
                if let Some(serde_json::Value::Array(types)) = m.get("type") {
                    let non_null = types.iter().filter(|t| *t != "null").count();
                    if non_null > 1 {
                        found.push(format!("{at}: union type {types:?}"));
                    }
                }
                for (k, x) in m {
                    walk(x, &format!("{at}/{k}"), found);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    walk(x, &format!("{at}/{i}"), found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    for (name, schema) in zdmap::mapping::schema::all() {
        walk(&schema, name, &mut found);
    }
    assert!(found.is_empty(), "{found:#?}");
}
