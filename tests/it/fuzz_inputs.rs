//! The fuzz targets' inputs as regression tests: each seed of `fuzz/seeds/TARGET/` is a valid
//! input that the target's code takes, and each input of `fuzz/regressions/TARGET/` (one that
//! once crashed or hung a target, see `fuzz/run`) now gives an answer, an error or a value,
//! without a panic. Each function here does what the fuzz target of that name does.

use std::path::{Path, PathBuf};

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new("fuzz").join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| e.expect("a directory entry").path())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read an input");
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

fn trigger(data: &[u8]) -> bool {
    let Ok(source) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(trigger) = zdmap::mapping::trigger::Trigger::parse(source) else {
        return false;
    };
    let event = serde_json::json!({
        "type": "track", "event": "Ticket Created", "userId": "u1",
        "properties": {"n": 1, "tags": ["a", "b"], "x": null}, "traits": {"email": "a@b.co"}
    });
    let _ = trigger.matches(&event);
    true
}

fn template(data: &[u8]) -> bool {
    let Ok(source) = std::str::from_utf8(data) else {
        return false;
    };
    let mut templates = zdmap::mapping::template::Templates::new();
    let text = templates.text(source).ok();
    if let Some(text) = &text {
        let _ = templates.variables(text);
    }
    let _ = templates.expression(source);
    text.is_some()
}

fn ingest(data: &[u8]) -> bool {
    use zdmap::serve::ingest::{Endpoint, body_write_key, events};
    let _ = body_write_key(data);
    // Both endpoints run on every input; the input is valid when one takes it.
    [Endpoint::Single("track"), Endpoint::Batch]
        .map(|endpoint| events(endpoint, data, "2026-01-01T00:00:00.000Z").is_ok())
        .contains(&true)
}

fn config(data: &[u8]) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, part) in data.split(|b| *b == 0).take(8).enumerate() {
        let name = match i {
            0 => "destination.yaml".to_owned(),
            n => format!("action{n}.yaml"),
        };
        std::fs::write(dir.path().join(name), part).expect("write a file");
    }
    zdmap::mapping::config::Config::load(dir.path(), &[]).is_ok()
}

/// Seeds are valid inputs; regressions run to an answer.
fn check(target: &str, run: fn(&[u8]) -> bool) {
    let seeds = inputs("seeds", target);
    assert!(!seeds.is_empty(), "fuzz/seeds/{target} has seeds");
    for (path, bytes) in seeds {
        assert!(run(&bytes), "{} is a valid input", path.display());
    }
    for (_path, bytes) in inputs("regressions", target) {
        run(&bytes);
    }
}

#[test]
fn trigger_inputs() {
    check("trigger", trigger);
}

#[test]
fn template_inputs() {
    check("template", template);
}

#[test]
fn ingest_inputs() {
    check("ingest", ingest);
}

#[test]
fn config_inputs() {
    check("config", config);
}
