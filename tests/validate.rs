//! `zdmap validate` through the binary: every kind of config problem is found, located and
//! reported at once, in each format, with the documented exit codes.

use std::path::Path;
use std::process::Command;

#[path = "support/mappings.rs"]
mod mappings;
use mappings::{edit, mappings_copy};

fn validate(dir: &Path, format: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["validate", "--format", format, "--mappings"])
        .arg(dir)
        .output()
        .expect("run zdmap");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The line of `file` (1-based) where `needle` first occurs.
fn line_of(file: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(file).expect("read");
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle present")
        + 1
}

#[test]
fn shipped_mappings_are_valid() {
    let (code, out) = validate(Path::new("mappings"), "text");
    assert_eq!(code, 0, "{out}");
    let (code, out) = validate(Path::new("mappings"), "json");
    assert_eq!((code, out.trim()), (0, "[]"));
}

#[test]
fn every_problem_is_reported_at_once_with_its_place() {
    let (_tmp, dir) = mappings_copy();
    let user = dir.join("upsert_user.yaml");
    let org = dir.join("upsert_organization.yaml");
    let track = dir.join("track_event.yaml");
    let ticket = dir.join("create_ticket.yaml");
    let update = dir.join("update_ticket.yaml");
    let member = dir.join("update_organization_membership.yaml");
    // unknown key with a suggestion
    edit(&user, "    required: true", "    requried: true");
    // bad trigger
    edit(
        &track,
        "trigger: type = \"track\" and event != \"Ticket Created\"",
        "trigger: type = \"track\" and event !! \"Ticket Created\"",
    );
    // bad JSONPath
    edit(
        &org,
        "external_id: { path: $.groupId,",
        "external_id: { path: \"$.groupId[\",",
    );
    // template syntax error
    edit(
        &ticket,
        "subject: \"{{ subject }}\"",
        "subject: \"{{ subject | }}\"",
    );
    // reference to an undefined field
    edit(
        &update,
        "status: \"{{ status | lower if status else none }}\"",
        "status: \"{{ stauts }}\"",
    );
    // missing required key
    edit(&member, "trigger: >-\n", "trigge: >-\n");

    let (code, out) = validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let find = |file: &Path, needle: &str| -> String {
        lines
            .iter()
            .find(|l| l.starts_with(&file.display().to_string()) && l.contains(needle))
            .unwrap_or_else(|| {
                panic!(
                    "no line for {} containing {needle:?} in:\n{out}",
                    file.display()
                )
            })
            .to_string()
    };

    let l = find(&user, "unknown key `requried`");
    assert!(l.contains("did you mean `required`?"), "{l}");
    assert!(
        l.starts_with(&format!(
            "{}:{}:5:",
            user.display(),
            line_of(&user, "requried")
        )),
        "{l}"
    );

    let l = find(&track, "bad trigger");
    let col = line_of(&track, "!!");
    let text = std::fs::read_to_string(&track).expect("read");
    let column = text
        .lines()
        .nth(col - 1)
        .expect("line")
        .find("!!")
        .expect("!!")
        + 1;
    assert!(
        l.starts_with(&format!("{}:{col}:{column}:", track.display())),
        "{l} (expected column {column})"
    );

    let l = find(&org, "bad JSONPath");
    assert!(l.contains("$.groupId["), "{l}");
    assert!(
        l.starts_with(&format!(
            "{}:{}:",
            org.display(),
            line_of(&org, "$.groupId[")
        )),
        "{l}"
    );

    let l = find(&ticket, "template error");
    assert!(
        l.starts_with(&format!(
            "{}:{}:",
            ticket.display(),
            line_of(&ticket, "subject | }}")
        )),
        "{l}"
    );

    let l = find(&update, "unknown name `stauts`");
    assert!(l.contains("did you mean `status`?"), "{l}");

    let l = find(&member, "trigge");
    assert!(
        l.contains("unknown key `trigge`") || l.contains("missing required key `trigger`"),
        "{l}"
    );
    find(&member, "missing required key `trigger`");
}

#[test]
fn yaml_syntax_errors_are_located() {
    let (_tmp, dir) = mappings_copy();
    let file = dir.join("create_ticket.yaml");
    edit(&file, "steps:\n", "steps: [\n");
    let (code, out) = validate(&dir, "text");
    assert_eq!(code, 1);
    assert!(
        out.contains("create_ticket.yaml:") && out.contains("YAML syntax error"),
        "{out}"
    );
}

#[test]
fn cross_file_problems_are_found() {
    let (_tmp, dir) = mappings_copy();
    // a cycle through `after`, and an unknown resolver
    edit(
        &dir.join("upsert_user.yaml"),
        "trigger: type = \"identify\"",
        "trigger: type = \"identify\"\nafter: [update_organization_membership]",
    );
    edit(
        &dir.join("track_event.yaml"),
        "resolve('user',",
        "resolve('usr',",
    );
    let (code, out) = validate(&dir, "text");
    assert_eq!(code, 1);
    assert!(out.contains("cycle"), "{out}");
    assert!(
        out.contains("unknown resolver `usr`; did you mean `user`?"),
        "{out}"
    );
}

#[test]
fn github_and_json_formats() {
    let (_tmp, dir) = mappings_copy();
    let file = dir.join("upsert_user.yaml");
    edit(&file, "    required: true", "    requried: true");
    let (code, out) = validate(&dir, "github");
    assert_eq!(code, 1);
    let line = line_of(&file, "requried");
    assert!(
        out.lines().any(|l| l.starts_with(&format!(
            "::error file={},line={line},col=5::unknown key",
            file.display()
        ))),
        "{out}"
    );
    let (code, out) = validate(&dir, "json");
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json output");
    assert_eq!(v[0]["line"], line);
    assert_eq!(v[0]["column"], 5);
}

#[test]
fn settings_overrides_are_checked() {
    let out = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args([
            "validate",
            "--set",
            "subdomain=evil.com/x",
            "--set",
            "requests_per_minit=5",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("setting `subdomain`"), "{text}");
    assert!(
        text.contains("did you mean `requests_per_minute`?"),
        "{text}"
    );
}
