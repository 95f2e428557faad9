//! `zdmap preview`, `zdmap match` and the README's first command through the binary.

use crate::support::command::run;

use std::process::{Command, Stdio};

fn lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn preview_prints_one_line_per_event_in_order_with_requests() {
    let (code, out, _) = run(&["preview", "examples/events.ndjson"], "");
    assert_eq!(code, 0, "{out}");
    let previews = lines(&out);
    assert_eq!(previews.len(), 11);
    let first = &previews[0];
    assert_eq!(first["index"], 0);
    assert_eq!(first["matched"], serde_json::json!(["upsert_user"]));
    let req = &first["requests"][0];
    assert_eq!(req["method"], "POST");
    assert_eq!(req["path"], "/api/v2/users/create_or_update");
    assert_eq!(req["body"]["user"]["email"], "ada@example.com");
    assert_eq!(
        req["body"]["user"]["user_fields"],
        serde_json::json!({"plan": "pro"})
    );
    // A lookup shows its resolver and keys.
    let member = &previews[4];
    assert_eq!(
        member["matched"],
        serde_json::json!(["upsert_user", "update_organization_membership"])
    );
    let add = &member["requests"][1];
    assert_eq!(
        add["body"]["organization_membership"]["organization_id"],
        "<organization external_id=org-42>"
    );
    assert!(
        member["lookups"]
            .as_array()
            .expect("lookups")
            .iter()
            .any(|l| l["resolver"] == "organization" && l["keys"]["external_id"] == "org-42")
    );
    // A page call matches nothing.
    assert_eq!(previews[10]["matched"], serde_json::json!([]));
}

#[test]
fn preview_shows_direct_ids_in_the_path_without_a_lookup() {
    let input = "{\"type\":\"track\",\"event\":\"Signed In\",\"context\":{\"zendesk_user_id\":98765}}\n{\"type\":\"track\",\"event\":\"Ticket Updated\",\"userId\":\"u1\",\"properties\":{\"ticket_id\":4321,\"status\":\"solved\"}}\n{\"type\":\"track\",\"event\":\"Signed In\",\"userId\":\"u-9\"}\n";
    let (code, out, err) = run(&["preview", "-"], input);
    assert_eq!(code, 0, "{err}");
    let previews = lines(&out);
    assert_eq!(
        previews[0]["requests"][0]["path"],
        "/api/v2/users/98765/events"
    );
    assert!(previews[0].get("lookups").is_none(), "{}", previews[0]);
    assert_eq!(previews[1]["requests"][0]["path"], "/api/v2/tickets/4321");
    assert!(previews[1].get("lookups").is_none(), "{}", previews[1]);
    // Without a direct id the lookup stays a placeholder, and is listed.
    assert_eq!(
        previews[2]["requests"][0]["path"],
        "/api/v2/users/<user external_id=u-9>/events"
    );
    assert_eq!(previews[2]["lookups"][0]["keys"]["external_id"], "u-9");
}

#[test]
fn preview_reports_bad_events_and_goes_on() {
    let input = "{\"type\":\"identify\",\"userId\":\"a\",\"traits\":{\"email\":\"a@x.io\"}}\nnot json\n[1]\n{\"userId\":\"b\"}\n{\"type\":5}\n{\"action\":\"identify\",\"userId\":\"c\"}\n";
    let (code, out, _) = run(&["preview", "-"], input);
    assert_eq!(code, 2, "some events have errors: exit 2");
    let previews = lines(&out);
    assert_eq!(previews.len(), 6, "{out}");
    assert!(
        previews[1]["errors"][0]["message"]
            .as_str()
            .expect("msg")
            .starts_with("not JSON")
    );
    assert!(
        previews[2]["errors"][0]["message"]
            .as_str()
            .expect("msg")
            .contains("must be a JSON object")
    );
    assert!(
        previews[3]["errors"][0]["message"]
            .as_str()
            .expect("msg")
            .contains("no `type`")
    );
    assert!(
        previews[4]["errors"][0]["message"]
            .as_str()
            .expect("msg")
            .contains("must be a string")
    );
    assert_eq!(previews[5]["type"], "identify");
    assert_eq!(
        previews[5]["requests"][0]["body"]["user"]["external_id"],
        "c"
    );
}

#[test]
fn preview_reads_a_json_array() {
    let input = r#"[{"type":"group","groupId":"g1","traits":{"name":"G"}}, {"type":"page"}]"#;
    let (code, out, _) = run(&["preview"], input);
    assert_eq!(code, 0, "{out}");
    let previews = lines(&out);
    assert_eq!(previews.len(), 2);
    assert_eq!(
        previews[0]["matched"],
        serde_json::json!(["upsert_organization"])
    );
}

#[test]
fn match_prints_true_or_false_per_event() {
    let input = "{\"type\":\"track\",\"event\":\"Ticket Created\"}\n{\"type\":\"track\",\"event\":\"Other\"}\n{\"type\":\"identify\"}\n";
    let (code, out, _) = run(
        &["match", "type = \"track\" and not event = \"Other\"", "-"],
        input,
    );
    assert_eq!(code, 0);
    assert_eq!(out, "true\nfalse\nfalse\n");
}

#[test]
fn match_reports_the_column_of_a_parse_error() {
    let (code, _, err) = run(&["match", "type = \"track\" and event =="], "");
    assert_eq!(code, 1);
    assert!(err.contains("column"), "{err}");
    assert!(err.contains('^'), "{err}");
}

#[test]
fn match_takes_segments_negated_functions() {
    let input = "{\"type\":\"track\",\"event\":\"Nike Air\",\"properties\":{\"product 1\":\"x\"}}\n{\"type\":\"track\",\"event\":\"Adidas\"}\n";
    let (code, out, err) = run(
        &[
            "match",
            r#"!contains(event, "Nike") and !match(event, "X*")"#,
            "-",
        ],
        input,
    );
    assert_eq!((code, out.as_str()), (0, "false\ntrue\n"), "{err}");
    let (code, out, err) = run(&["match", r#"properties.product\ 1 = "x""#, "-"], input);
    assert_eq!((code, out.as_str()), (0, "true\nfalse\n"), "{err}");
}

#[test]
fn match_refuses_deep_nesting_with_its_column() {
    for trigger in [
        format!(
            "{}type = \"track\"{}",
            "(".repeat(10_000),
            ")".repeat(10_000)
        ),
        // One argument holds at most 128 KiB: 100 000 negations are written `!`.
        format!("{}type = \"track\"", "not ".repeat(30_000)),
        format!("{}contains(event, \"x\")", "!".repeat(100_000)),
    ] {
        let (code, _, err) = run(&["match", &trigger, "-"], "{\"type\":\"track\"}\n");
        assert_eq!(code, 1, "a located error, not a crash: {err}");
        assert!(err.contains("nests deeper than 64"), "{err}");
        assert!(err.contains("column"), "{err}");
    }
}

#[test]
fn the_emulator_command_serves_until_stopped_and_prints_no_secret() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--api-token",
            "s3cr3t-token-value",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zdmap emulator");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    let url = first.rsplit(' ').next().expect("url").to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (status, body) = rt.block_on(async {
        let r = reqwest::get(format!("{url}/__emulator/state"))
            .await
            .expect("GET state");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    });
    assert_eq!(status, 200);
    assert!(body.contains("\"users\""), "{body}");
    let denied = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("{url}/api/v2/users"))
            .basic_auth("a@example.com/token", Some("wrong"))
            .send()
            .await
            .expect("GET users")
            .status()
            .as_u16()
    });
    assert_eq!(denied, 401, "only the configured token is accepted");
    child.kill().expect("stop");
    let out = child.wait_with_output().expect("wait");
    let all = format!(
        "{first}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("s3cr3t-token-value"), "{all}");
}

/// The README's first command: every example event delivered (exit 0, whichever user the
/// emulator creates first), and the end says where the result is.
#[test]
fn send_to_the_emulator_delivers_every_example_and_says_where_the_result_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["send", "--emulator", "--mappings"])
        .arg(format!("{root}/mappings"))
        .arg(format!("{root}/examples/events.ndjson"))
        .current_dir(dir.path())
        .output()
        .expect("zdmap send");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // It ends quietly: no warning (the built-in emulator's account has bulk imports on).
    assert!(!stderr.contains("WARN"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("zdmap-emulator-state.json"), "{stderr}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("zdmap-emulator-state.json")).expect("state file"),
    )
    .expect("JSON");
    assert_eq!(state["users"].as_array().map(Vec::len), Some(3), "{state}");
    assert_eq!(state["events"].as_array().map(Vec::len), Some(2), "{state}");
    assert!(!dir.path().join("zdmap-dead-letters.ndjson").exists());
}

#[test]
fn init_writes_mappings_that_validate_and_test_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("here").join("mappings");
    let dir_arg = dir.to_str().expect("utf-8 path");
    let (code, _, err) = run(&["init", dir_arg], "");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["validate", "--mappings", dir_arg], "");
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(&["test", "--mappings", dir_arg], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.trim_end().ends_with("passed, 0 failed"), "{out}");
    // Every file's $schema line resolves inside the new directory.
    for (path, _) in zdmap::mapping::defaults::files() {
        let file = dir.join(&path);
        let text = std::fs::read_to_string(&file).expect("written");
        if let Some(target) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# yaml-language-server: $schema="))
        {
            let schema = file.parent().expect("parent").join(target);
            assert!(
                schema.is_file(),
                "{} points at {}",
                file.display(),
                schema.display()
            );
        }
    }
    // A second init refuses and changes nothing; --force overwrites.
    let user = dir.join("upsert_user.yaml");
    std::fs::write(&user, "edited").expect("edit");
    let (code, _, err) = run(&["init", dir_arg], "");
    assert_eq!(code, 1);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&user).expect("read"), "edited");
    let (code, _, _) = run(&["init", "--force", dir_arg], "");
    assert_eq!(code, 0);
    assert_ne!(std::fs::read_to_string(&user).expect("read"), "edited");
}

#[test]
fn the_embedded_mappings_are_the_repositorys() {
    let mut on_disk = Vec::new();
    for dir in ["mappings", "mappings/tests"] {
        for e in std::fs::read_dir(dir).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_file() {
                on_disk.push(p.strip_prefix("mappings").expect("inside").to_path_buf());
            }
        }
    }
    on_disk.sort();
    let mut embedded: Vec<std::path::PathBuf> = zdmap::mapping::defaults::MAPPINGS
        .iter()
        .map(|(p, _)| p.into())
        .collect();
    embedded.sort();
    assert_eq!(
        embedded, on_disk,
        "src/defaults.rs lists every file of mappings/"
    );
}

#[test]
fn a_command_line_that_does_not_parse_exits_64_and_help_exits_0() {
    let (code, _, stderr) = run(&["send", "--bogus"], "");
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("unexpected argument '--bogus'"), "{stderr}");
    let (code, stdout, _) = run(&["send", "--help"], "");
    assert_eq!(code, 0);
    assert!(
        stdout.contains("77 when a person must run `zdmap auth login`")
            || stdout.contains("--token-store"),
        "{stdout}"
    );
}
