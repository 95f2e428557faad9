//! Every mapping test case of `mappings/tests/`, delivered for real to the emulator.
//!
//! For each case that expects requests and no errors: a fresh emulator is seeded with what the
//! case's lookups need (the user, organization or ticket they name), the event is delivered,
//! and the emulator must have received each expected request (lookups replaced by real ids)
//! with nothing dead-lettered.

use serde_json::{Value, json};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use zdmap::deliver::dispatch::{DispatchOptions, RecordWait};
use zdmap::deliver::run::run;
use zdmap::deliver::setup::{ConnectOptions, connect};
use zdmap::deliver::{DeadLetterWriter, RetryPolicy, TargetOverride};
use zdmap::emulator::{Emulator, EmulatorOptions};
use zdmap::mapping::config::Config;
use zdmap::mapping::event::Event;
use zdmap::mapping::spec::CaseFile;

/// Seed data for the lookups a preview lists.
fn seed_for(preview: &Value) -> Value {
    let mut users = Vec::new();
    let mut orgs = Vec::new();
    let mut tickets = Vec::new();
    for l in preview["lookups"].as_array().into_iter().flatten() {
        let keys = &l["keys"];
        match l["resolver"].as_str() {
            Some("user") => {
                let mut u = json!({"name": "Seeded User"});
                if let Some(id) = keys["id"].as_str() {
                    u["id"] = json!(id.parse::<u64>().unwrap_or(1));
                }
                if let Some(x) = keys["external_id"].as_str() {
                    u["external_id"] = json!(x);
                }
                if let Some(e) = keys["email"].as_str() {
                    u["email"] = json!(e);
                }
                users.push(u);
            }
            Some("organization") => {
                let x = keys["external_id"].as_str().unwrap_or("x");
                orgs.push(json!({"external_id": x, "name": format!("Seeded {x}")}));
            }
            Some("ticket") => {
                let mut t = json!({"subject": "Seeded", "comment": {"body": "Seeded"}, "requester": {"email": "seed@example.com", "name": "Seed"}});
                if let Some(id) = keys["id"].as_str() {
                    t["id"] = json!(id.parse::<u64>().unwrap_or(1));
                }
                if let Some(x) = keys["external_id"].as_str() {
                    t["external_id"] = json!(x);
                }
                tickets.push(t);
            }
            _ => {}
        }
    }
    // Records the expected bodies point at: an organization_id, and the user an upsert
    // without a name updates (Zendesk needs a name only to create one).
    for r in preview["requests"].as_array().into_iter().flatten() {
        // A direct id in a path (`/api/v2/users/123/events`) names a record that must exist.
        let parts: Vec<&str> = r["path"].as_str().unwrap_or_default().split('/').collect();
        if let [_, "api", "v2", kind, id, ..] = parts.as_slice()
            && let Ok(id) = id.parse::<u64>()
        {
            match *kind {
                    "users" => users.push(json!({"id": id, "name": "Seeded User"})),
                    "tickets" => tickets.push(json!({"id": id, "subject": "Seeded", "comment": {"body": "Seeded"}, "requester": {"email": "seed@example.com", "name": "Seed"}})),
                    _ => {}
                }
        }
        let user = &r["body"]["user"];
        if let Some(oid) = user["organization_id"].as_u64() {
            orgs.push(json!({"id": oid, "name": format!("Seeded {oid}")}));
        }
        if r["path"] == "/api/v2/users/create_or_update"
            && user.is_object()
            && user.get("name").is_none()
        {
            let mut u = json!({"name": "Existing User"});
            for k in ["email", "external_id"] {
                if let Some(v) = user.get(k) {
                    u[k] = v.clone();
                }
            }
            let same = |x: &Value| {
                ["email", "external_id"]
                    .iter()
                    .any(|k| !u[*k].is_null() && x[*k] == u[*k])
            };
            if !users.iter().any(same) {
                users.push(u);
            }
        }
    }
    json!({"users": users, "organizations": orgs, "tickets": tickets})
}

/// `<...>` placeholders of an expected path match any one path segment.
fn path_matches(expected: &str, actual: &str) -> bool {
    let exp: Vec<&str> = expected.split('/').collect();
    let act: Vec<&str> = actual.trim_end_matches(".json").split('/').collect();
    exp.len() == act.len()
        && exp
            .iter()
            .zip(&act)
            .all(|(e, a)| (e.starts_with('<') && e.ends_with('>')) || e == a)
}

#[tokio::test]
async fn every_case_that_expects_requests_is_delivered_by_the_emulator() {
    let files = zdmap::mapping::cases::find(Path::new("mappings"), &[]).expect("case files");
    let mut checked = 0;
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let spec: CaseFile = serde_saphyr::from_str(&text).expect("case file");
        for case in spec.cases {
            let Some(expected) = case.expect.requests.clone() else {
                continue;
            };
            if expected.is_empty() || case.expect.errors.as_ref().is_some_and(|e| !e.is_empty()) {
                continue;
            }
            let mut set = vec!["requests_per_minute=0".to_owned()];
            set.extend(case.settings.iter().map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str().map(str::to_owned).unwrap_or(v.to_string())
                )
            }));
            let config = Config::load(Path::new("mappings"), &set).expect("mappings load");
            let event = Event::from_value(case.event.clone()).expect("event");
            let preview = serde_json::to_value(config.preview(&event)).expect("preview json");

            let emu = Emulator::start(EmulatorOptions::default())
                .await
                .expect("emulator");
            let seed = seed_for(&preview);
            let http = reqwest::Client::new();
            let seeded = http
                .post(format!("{}/__emulator/seed", emu.url()))
                .json(&seed)
                .send()
                .await
                .expect("seed");
            assert!(
                seeded.status().is_success(),
                "{}: seed {seed}: {}",
                case.name,
                seeded.text().await.unwrap_or_default()
            );

            let options = ConnectOptions {
                retry: RetryPolicy {
                    min_delay: Duration::from_millis(5),
                    max_delay: Duration::from_millis(20),
                    ..RetryPolicy::default()
                },
                ..ConnectOptions::default()
            };
            let target = TargetOverride {
                zendesk_url: Some(emu.url()),
                emulator: false,
            };
            let dest = connect(Arc::new(config), &target, options)
                .await
                .expect("connect");
            let dir = tempfile::tempdir().expect("temp");
            let writer = Arc::new(
                DeadLetterWriter::open(dir.path().join("dead.ndjson")).expect("dead letters"),
            );
            let input = serde_json::to_vec(&case.event).expect("event bytes");
            let report = run(
                dest.executor.clone(),
                Cursor::new(input),
                writer,
                dest.stats.clone(),
                DispatchOptions {
                    concurrency: 1,
                    retry_for: Duration::from_secs(2),
                    wait_for_records: RecordWait::AfterInput(Duration::ZERO),
                    ..DispatchOptions::default()
                },
            )
            .await
            .expect("run");
            if report.dead_letters > 0 {
                let letters =
                    std::fs::read_to_string(dir.path().join("dead.ndjson")).unwrap_or_default();
                problems.push(format!("{}: dead-lettered: {letters}", case.name));
            }
            let log = emu.requests();
            for want in &expected {
                let found = log.iter().any(|r| {
                    r["method"] == want.method.as_str()
                        && path_matches(&want.path, r["path"].as_str().unwrap_or_default())
                        && r["status"]
                            .as_u64()
                            .is_some_and(|s| s < 300 || s == 404 || s == 422)
                });
                if !found {
                    problems.push(format!(
                        "{}: no {} {} in {:?}",
                        case.name,
                        want.method,
                        want.path,
                        log.iter()
                            .map(|r| format!("{} {} {}", r["method"], r["path"], r["status"]))
                            .collect::<Vec<_>>()
                    ));
                }
            }
            checked += 1;
            emu.shutdown().await;
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(checked >= 25, "{checked} cases delivered");
}
