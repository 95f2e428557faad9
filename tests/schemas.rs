//! `schemas/`: generated from the config types and checked in; shipped files point at them;
//! the event schema agrees with the event checks.

use std::path::Path;

#[test]
fn checked_in_schemas_match_the_types() {
    for (name, schema) in zdmap::schema::all() {
        let path = Path::new("schemas").join(name);
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk,
            zdmap::schema::render(&schema),
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
    let validator =
        jsonschema::validator_for(&zdmap::schema::event_schema()).expect("schema compiles");
    let text = std::fs::read_to_string("examples/events.ndjson").expect("examples");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        assert!(validator.is_valid(&v), "{line}");
        assert!(zdmap::event::Event::from_value(v).is_ok());
    }
    for bad in [
        serde_json::json!({"userId": "x"}),
        serde_json::json!({"type": 3}),
        serde_json::json!({"type": "nope"}),
        serde_json::json!([1]),
    ] {
        assert!(!validator.is_valid(&bad), "{bad}");
        assert!(zdmap::event::Event::from_value(bad).is_err());
    }
}
