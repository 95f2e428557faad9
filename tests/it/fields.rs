//! `zdmap fields check [--create]` through the binary, against the emulator: the custom field
//! keys the mappings would send that the account lacks, and creating them.

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use zdmap::emulator::{Emulator, EmulatorOptions};

fn fields_check(url: &str, events: &Path, create: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zdmap"));
    cmd.args(["fields", "check", "--zendesk-url", url, "--events"])
        .arg(events);
    if create {
        cmd.arg("--create");
    }
    let out = cmd.output().expect("run zdmap");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn user_fields(emu: &Emulator) -> Vec<Value> {
    emu.state()["user_fields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_fields_are_listed_with_their_events_then_created_with_inferred_types() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let url = emu.url();
    let dir = tempfile::tempdir().expect("tmp");

    // The account already has `plan_name`.
    let first = dir.path().join("first.ndjson");
    std::fs::write(
        &first,
        "{\"type\":\"identify\",\"userId\":\"u-1\",\"traits\":{\"email\":\"a@example.com\",\"planName\":\"pro\"}}\n",
    )
    .expect("write");
    let (code, out) = fields_check(&url, &first, true);
    assert_eq!(code, 0, "{out}");
    assert_eq!(user_fields(&emu).len(), 1, "{out}");

    let events = dir.path().join("events.ndjson");
    std::fs::write(
        &events,
        [
            r#"{"type":"identify","userId":"u-1","traits":{"email":"a@example.com","planName":"pro","seats":3,"vip":true}}"#,
            r#"{"type":"identify","userId":"u-2","traits":{"email":"b@example.com","seats":12,"renewal_date":"2027-01-31"}}"#,
            r#"{"type":"track","event":"Nothing"}"#,
        ]
        .join("\n"),
    )
    .expect("write");
    let (code, out) = fields_check(&url, &events, false);
    assert_eq!(code, 1, "missing fields fail the check: {out}");
    let line = |key: &str| -> String {
        out.lines()
            .find(|l| l.contains(&format!("user field `{key}`")))
            .unwrap_or_else(|| panic!("no line for {key} in:\n{out}"))
            .to_owned()
    };
    let seats = line("seats");
    assert!(seats.contains("(integer)"), "{seats}");
    assert!(
        seats.contains(&format!("{}:1", events.display()))
            && seats.contains(&format!("{}:2", events.display())),
        "both events that carry it: {seats}"
    );
    assert!(line("vip").contains("(checkbox)"));
    assert!(line("renewal_date").contains("(date)"));
    assert!(!out.contains("`plan_name`"), "the account has it: {out}");
    assert!(out.contains("--create"), "{out}");
    assert_eq!(user_fields(&emu).len(), 1, "a check creates nothing");

    let (code, out) = fields_check(&url, &events, true);
    assert_eq!(code, 0, "{out}");
    let created = user_fields(&emu);
    let field = |key: &str| -> Value {
        created
            .iter()
            .find(|f| f["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} created: {created:?}"))
    };
    assert_eq!(field("seats")["type"], "integer");
    assert_eq!(field("vip")["type"], "checkbox");
    assert_eq!(field("renewal_date")["type"], "date");
    assert_eq!(field("renewal_date")["title"], "Renewal Date");

    let (code, out) = fields_check(&url, &events, false);
    assert_eq!(code, 0, "nothing missing any more: {out}");
    assert!(out.contains("0 missing"), "{out}");
    emu.shutdown().await;
}

fn send(url: &str, events: &Path, set: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zdmap"));
    cmd.args([
        "send",
        "--zendesk-url",
        url,
        "--set",
        "requests_per_minute=0",
    ]);
    for s in set {
        cmd.args(["--set", s]);
    }
    let dir = events.parent().expect("dir");
    cmd.arg("--dead-letter")
        .arg(dir.join("dead.ndjson"))
        .arg(events);
    let out = cmd.output().expect("run zdmap send");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_missing_user_fields_makes_the_values_stick() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let url = emu.url();
    let dir = tempfile::tempdir().expect("tmp");
    let user = |external_id: &str| -> Value {
        emu.state()["users"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["external_id"] == external_id)
            .cloned()
            .unwrap_or_else(|| panic!("user {external_id}"))
    };

    // Off (the default): Zendesk drops the values of fields it does not have.
    let off = dir.path().join("off.ndjson");
    std::fs::write(
        &off,
        r#"{"type":"identify","userId":"u-off","traits":{"email":"off@example.com","name":"Off","planName":"pro"}}"#,
    )
    .expect("write");
    let (code, err) = send(&url, &off, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(user("u-off")["user_fields"].get("plan_name").is_none());
    assert!(user_fields(&emu).is_empty());

    // On: the fields are created first, typed by their values, and the values stay.
    let on = dir.path().join("on.ndjson");
    std::fs::write(
        &on,
        r#"{"type":"identify","userId":"u-on","traits":{"email":"on@example.com","name":"On","planName":"pro","seats":3}}"#,
    )
    .expect("write");
    let (code, err) = send(&url, &on, &["create_missing_user_fields=true"]);
    assert_eq!(code, 0, "{err}");
    let fields = user("u-on")["user_fields"].clone();
    assert_eq!(fields["plan_name"], "pro", "{fields}");
    assert_eq!(fields["seats"], 3, "{fields}");
    let types: Vec<(Value, Value)> = user_fields(&emu)
        .iter()
        .map(|f| (f["key"].clone(), f["type"].clone()))
        .collect();
    assert!(
        types.contains(&("seats".into(), "integer".into())),
        "{types:?}"
    );
    assert!(
        types.contains(&("plan_name".into(), "text".into())),
        "{types:?}"
    );
    emu.shutdown().await;
}
