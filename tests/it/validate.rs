//! `zdmap validate` through the binary: every kind of config problem is found, located and
//! reported at once, in each format, with the documented exit codes.

use std::path::Path;
use std::process::Command;

use crate::support::command;
use crate::support::mappings::{edit, mappings_copy};

fn validate(dir: &Path, format: &str) -> (i32, String) {
    let (code, out, _) = command::validate(dir, format);
    (code, out)
}

/// The line of `file` (1-based) where `needle` first occurs.
fn line_of(file: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(file).expect("read");
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle present")
        + 1
}

/// `file:line:` of the first line of `file` that contains `needle`, as a problem starts.
fn place_of(file: &Path, needle: &str) -> String {
    format!("{}:{}:", file.display(), line_of(file, needle))
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
    assert!(l.starts_with(&place_of(&org, "$.groupId[")), "{l}");

    let l = find(&ticket, "template error");
    assert!(l.starts_with(&place_of(&ticket, "subject | }}")), "{l}");

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

/// The column of `needle` in the line of `file` where it first occurs (1-based).
fn column_of(file: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(file).expect("read");
    let line = text.lines().find(|l| l.contains(needle)).expect("needle");
    line[..line.find(needle).expect("needle")].chars().count() + 1
}

#[test]
fn a_bare_name_compared_is_a_warning_that_leaves_the_mappings_valid() {
    let (_tmp, dir) = mappings_copy();
    let file = dir.join("upsert_user.yaml");
    edit(
        &file,
        "trigger: type = \"identify\"",
        "trigger: type = identify",
    );
    let (code, out, err) = command::validate(&dir, "text");
    assert_eq!(code, 0, "{out}{err}");
    let at = format!(
        "{}:{}:{}: warning: `identify` is read as a field of the event",
        file.display(),
        line_of(&file, "trigger:"),
        column_of(&file, "= identify") + 2
    );
    assert!(out.contains(&at), "{at}\nin:\n{out}");
    assert!(out.contains("write \"identify\""), "{out}");
    assert!(err.contains("valid, 1 warning(s)"), "{err}");
    let (code, out, _) = command::validate(&dir, "github");
    assert_eq!(code, 0);
    assert!(out.starts_with("::warning file="), "{out}");
    let (_, out, _) = command::validate(&dir, "json");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v[0]["severity"], "warning");
}

#[test]
fn mistakes_are_explained_as_an_editor_would() {
    let (_tmp, dir) = mappings_copy();
    let user = dir.join("upsert_user.yaml");
    let ticket = dir.join("create_ticket.yaml");
    let org = dir.join("upsert_organization.yaml");
    let update = dir.join("update_ticket.yaml");
    edit(
        &user,
        "phone: { first_of: [$.traits.phone, $.context.traits.phone], type: string }",
        "phone: { first_of: [$.traits.phone, $.context.traits.phone], type: str }",
    );
    edit(
        &user,
        "422/DuplicateValue: retry",
        "422/DuplicateValue: retyr",
    );
    edit(&ticket, "      method: POST", "      methd: POST");
    edit(&org, "name: \"{{ name }}\"", "name: \"{{ name | }}\"");
    let member = dir.join("update_organization_membership.yaml");
    edit(
        &member,
        "  remove:\n    first_of: [$.traits.company.remove, $.context.traits.company.remove]\n    type: boolean\n    default: false\n",
        "  remove: [a, b]\n",
    );
    edit(
        &org,
        "name: { path: $.traits.name, type: string }",
        "name: { path: \"$.traits..[name\", type: string }",
    );
    edit(
        &update,
        "status: \"{{ status | lower if status else none }}\"",
        "status: \"{{ status | lower if stauts else none }}\"",
    );
    let (code, out, _) = command::validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    let line = |file: &Path, needle: &str| -> String {
        out.lines()
            .find(|l| l.starts_with(&file.display().to_string()) && l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} for {} in:\n{out}", file.display()))
            .to_owned()
    };
    let l = line(&user, "\"str\" is not valid");
    assert!(l.contains("Valid values: \"string\", \"integer\""), "{l}");
    assert!(l.ends_with("did you mean \"string\"?"), "{l}");
    let l = line(&user, "\"retyr\" is not valid");
    assert!(
        l.contains("\"ok\", \"skip\", \"retry\", \"fail\", \"fatal\""),
        "{l}"
    );
    assert!(l.ends_with("did you mean \"retry\"?"), "{l}");
    assert!(line(&ticket, "unknown key `methd`").contains("did you mean `method`?"));
    let l = line(&org, "bad JSONPath");
    assert!(!l.contains("Failed to parse") && !l.contains("-->"), "{l}");
    assert!(l.contains("expected"), "{l}");
    let at = format!(
        "{}:{}:{}:",
        org.display(),
        line_of(&org, "..[name"),
        column_of(&org, "[name") + 1
    );
    assert!(l.starts_with(&at), "{l} (expected {at})");
    let l = line(&update, "unknown name `stauts`");
    let at = format!(
        "{}:{}:{}:",
        update.display(),
        line_of(&update, "stauts"),
        column_of(&update, "stauts")
    );
    assert!(l.starts_with(&at), "{l} (expected {at})");
    assert!(!out.contains("anyOf") && !out.contains("oneOf"), "{out}");
    let l = line(&member, "expected");
    assert!(
        l.ends_with("expected a mapping or a boolean or a number or a string, found a list"),
        "{l}"
    );
    let l = line(&org, "template error");
    let at = format!(
        "{}:{}:{}:",
        org.display(),
        line_of(&org, "name | }}"),
        column_of(&org, "| }}") + 1
    );
    assert!(l.starts_with(&at), "{l} (expected {at})");
    assert!(
        l.contains("unexpected end of the expression") && !l.contains("`)`"),
        "{l}"
    );

    // Pretty prints each problem once.
    let (_, pretty, _) = command::validate(&dir, "pretty");
    assert_eq!(
        pretty.matches("unknown name `stauts`").count(),
        1,
        "{pretty}"
    );
    assert_eq!(pretty.matches("unknown key `methd`").count(), 1, "{pretty}");
}

#[test]
fn yaml_syntax_errors_say_their_place_once() {
    let (_tmp, dir) = mappings_copy();
    let file = dir.join("create_ticket.yaml");
    edit(&file, "steps:\n", "steps: [\n");
    let (_, out, _) = command::validate(&dir, "text");
    let l = out
        .lines()
        .find(|l| l.contains("YAML syntax error"))
        .expect("a YAML error");
    assert!(!l.contains(" line ") && !l.contains(" column "), "{l}");
    // Files that did not load are no reason for more errors elsewhere.
    let (_tmp, dir) = mappings_copy();
    edit(&dir.join("upsert_user.yaml"), "steps:\n", "steps: [\n");
    let (_, out, _) = command::validate(&dir, "text");
    assert!(!out.contains("`after` names an unknown action"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn no_mappings_directory_says_what_to_do() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (code, out, _) = command::validate(&tmp.path().join("mappings"), "text");
    assert_eq!(code, 1);
    assert!(out.contains("no mappings directory"), "{out}");
    assert!(
        out.contains("--mappings") && out.contains("zdmap init"),
        "{out}"
    );
}

#[test]
fn deep_nesting_is_a_located_error_not_a_crash() {
    let (_tmp, dir) = mappings_copy();
    let file = dir.join("upsert_user.yaml");
    let deep = format!(
        "trigger: {}type = \"identify\"{}",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    edit(&file, "trigger: type = \"identify\"", &deep);
    let nots = format!("trigger: {}type = \"track\"", "not ".repeat(100_000));
    edit(
        &dir.join("track_event.yaml"),
        "trigger: type = \"track\" and event != \"Ticket Created\"",
        &nots,
    );
    let filters = format!(
        "subject: \"{{{{ subject{} }}}}\"",
        " | lower".repeat(50_000)
    );
    edit(
        &dir.join("create_ticket.yaml"),
        "subject: \"{{ subject }}\"",
        &filters,
    );
    let (code, out, err) = command::validate(&dir, "text");
    assert_eq!(code, 1, "exit 1, not a signal: {err}");
    let at = format!(
        "{}:{}:{}: bad trigger: the trigger nests deeper than 64",
        file.display(),
        line_of(&file, "trigger:"),
        10 + 64
    );
    assert!(out.contains(&at), "{at}\nin:\n{out}");
    assert!(
        out.contains("track_event.yaml:") && out.matches("nests deeper").count() == 2,
        "{out}"
    );
    assert!(
        out.contains("create_ticket.yaml:") && out.contains("more than 500 operators and filters"),
        "{out}"
    );
}

#[test]
fn idempotency_checks_and_entities_are_validated() {
    let (_tmp, dir) = mappings_copy();
    let member = dir.join("update_organization_membership.yaml");
    let ticket = dir.join("create_ticket.yaml");
    let update = dir.join("update_ticket.yaml");
    // A POST that no longer says it is idempotent and has no check: a warning.
    edit(&member, "    idempotent: true\n", "");
    // A check on a step that is idempotent: an error.
    edit(
        &ticket,
        "    idempotent: true\n",
        "    idempotent: true\n    check:\n      request: { method: GET, path: /api/v2/tickets }\n      applied: { path: \"$.tickets[*].id\", equals: \"{{ subject }}\" }\n",
    );
    // An entity key that reads no field of the action: an error.
    edit(
        &update,
        "key: \"{{ ticket_id or external_id }}\"",
        "key: \"{{ ticket_idd }}\"",
    );
    let (code, out) = validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    let warning = place_of(&member, "  - name: add");
    assert!(
        out.lines().any(|l| l.starts_with(&warning)
            && l.contains(
                "warning: step `add` is not idempotent (POST by default) and has no `check`"
            )),
        "{warning}\n{out}"
    );
    assert!(
        out.contains(&format!(
            "{}:{}:",
            ticket.display(),
            line_of(&ticket, "    check:") + 1
        )) && out.contains("a `check` is for a step that is not idempotent"),
        "{out}"
    );
    assert!(
        out.contains(&place_of(&update, "ticket_idd")) && out.contains("unknown name `ticket_idd`"),
        "{out}"
    );
}

#[test]
fn batch_forms_are_checked_with_their_place() {
    let (_tmp, dir) = mappings_copy();
    let user = dir.join("upsert_user.yaml");
    let ticket = dir.join("create_ticket.yaml");
    let destination = dir.join("destination.yaml");
    // An item that is not in the step's body, a bad coalesce template.
    edit(&user, "      item: $.user\n", "      item: $.person\n");
    edit(
        &user,
        "coalesce: \"{{ external_id }}|{{ email }}\"",
        "coalesce: \"{{ external_id | }}\"",
    );
    // Ticket creation has an Idempotency-Key: it cannot be batched.
    edit(
        &ticket,
        "    outputs:\n      id: $.ticket.id",
        "    batch:\n      request: { method: POST, path: /api/v2/tickets/create_many }\n      items: tickets\n      item: $.ticket\n      result: { body_key: ticket }\n    outputs:\n      id: $.ticket.id",
    );
    let (code, out) = validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    for (place, message) in [
        (
            place_of(&user, "item: $.person"),
            "is not in the step's request body",
        ),
        (place_of(&user, "coalesce:"), "template"),
        (
            place_of(&ticket, "path: /api/v2/tickets/create_many"),
            "must stay single",
        ),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&place) && l.contains(message)),
            "{place} {message}: {out}"
        );
    }

    // At most 100 items (the schema says so).
    let (_tmp, dir) = mappings_copy();
    let user = dir.join("upsert_user.yaml");
    edit(
        &user,
        "      items: users\n",
        "      items: users\n      max_items: 500\n",
    );
    let (code, out) = validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&place_of(&user, "max_items: 500")) && out.contains("maximum of 100"),
        "{out}"
    );

    // A bulk request answered with a job needs `jobs:` in destination.yaml.
    let (_tmp, dir) = mappings_copy();
    let destination2 = dir.join("destination.yaml");
    let text = std::fs::read_to_string(&destination2).expect("read");
    let start = text.find("jobs:").expect("jobs");
    let end = text[start..].find("\n\n").expect("end") + start;
    std::fs::write(&destination2, format!("{}{}", &text[..start], &text[end..])).expect("write");
    let (code, out) = validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("declare how jobs are polled in destination.yaml"),
        "{out}"
    );
    let _ = destination;
}

#[test]
fn a_write_that_is_not_idempotent_is_batched_only_with_a_check_and_a_job_list() {
    // The shipped ticket update is not idempotent (a comment appends), has a check reading its
    // marker back and a bulk form; destination.yaml lists recent jobs: accepted.
    let (_tmp, dir) = mappings_copy();
    let update = dir.join("update_ticket.yaml");
    let shipped = std::fs::read_to_string(&update).expect("read");
    assert!(
        shipped.contains("idempotent: false")
            && shipped.contains("check:")
            && shipped.contains("path: /api/v2/tickets/update_many")
    );
    let (code, out) = validate(&dir, "text");
    assert_eq!(code, 0, "{out}");

    // Without its check, the bulk form is refused (after a lost bulk answer nothing could
    // tell whether the comment was added).
    let (_tmp, dir) = mappings_copy();
    let update = dir.join("update_ticket.yaml");
    let text = std::fs::read_to_string(&update).expect("read");
    let start = text.find("    check:\n").expect("check");
    let end = text.find("    batch:\n").expect("batch");
    std::fs::write(&update, format!("{}{}", &text[..start], &text[end..])).expect("write");
    let (code, out) = validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    let place = place_of(&update, "path: /api/v2/tickets/update_many");
    assert!(
        out.lines().any(|l| l.starts_with(&place)
            && l.contains("a step that is not idempotent cannot be batched without a `check`")),
        "{place}\n{out}"
    );

    // Without `jobs.list` in destination.yaml, refused too (a pending job could not be waited
    // for before the check).
    let (_tmp, dir) = mappings_copy();
    let update = dir.join("update_ticket.yaml");
    let destination = dir.join("destination.yaml");
    let text = std::fs::read_to_string(&destination).expect("read");
    let start = text.find("  list:\n").expect("list");
    let end = text[start..]
        .find("    pending: [queued, working]\n")
        .expect("pending")
        + start
        + "    pending: [queued, working]\n".len();
    std::fs::write(&destination, format!("{}{}", &text[..start], &text[end..])).expect("write");
    let (code, out) = validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    let place = place_of(&update, "path: /api/v2/tickets/update_many");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&place)
                && l.contains("says how recent jobs are listed (`list:`)")),
        "{place}\n{out}"
    );
}

#[test]
fn a_checks_pages_are_checked_with_their_place() {
    let (_tmp, dir) = mappings_copy();
    let update = dir.join("update_ticket.yaml");
    let track = dir.join("track_event.yaml");
    // A next-page path that is not a JSONPath, a `more` path that does not parse.
    edit(
        &update,
        "pages: { next: $.links.next,",
        "pages: { next: links.next,",
    );
    edit(
        &track,
        "more: $.meta.has_more, most: 10",
        "more: \"$.meta[has_more\", most: 10",
    );
    let (code, out) = validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    // Each is located at its mistake: the path's start, the selector that does not parse.
    for (file, needle) in [(&update, "links.next,"), (&track, "has_more\"")] {
        let place = format!(
            "{}:{}:{}:",
            file.display(),
            line_of(file, needle),
            column_of(file, needle)
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with(&place) && l.contains("bad JSONPath")),
            "{place}: {out}"
        );
    }

    // At least one page is read.
    let (_tmp, dir) = mappings_copy();
    let update = dir.join("update_ticket.yaml");
    edit(&update, "has_more, most: 20 }", "has_more, most: 0 }");
    let (code, out) = validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&place_of(&update, "most: 0")), "{out}");
}

#[test]
fn a_subdomain_that_send_and_serve_refuse_is_refused_here_too() {
    let (code, stdout, _) = command::run(&["validate", "--set", "subdomain=-x"], "");
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("invalid Zendesk subdomain"), "{stdout}");
    let (code, _, stderr) = command::run(&["validate", "--set", "subdomain=acme-support"], "");
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_when_that_compares_with_a_lone_equals_says_to_use_two() {
    let (_dir, mappings) = mappings_copy();
    edit(
        &mappings.join("upsert_user.yaml"),
        "  - name: upsert\n",
        "  - name: upsert\n    when: \"traits.email = 1\"\n",
    );
    let (code, stdout, _) = command::validate(&mappings, "text");
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("an expression compares with `==`; `=` is the trigger language's"),
        "{stdout}"
    );
}

#[test]
fn misspelt_filters_functions_tests_settings_outputs_and_fields_are_refused_where_they_are() {
    let (_tmp, dir) = mappings_copy();
    let user = dir.join("upsert_user.yaml");
    let track = dir.join("track_event.yaml");
    let update = dir.join("update_ticket.yaml");
    let ticket = dir.join("create_ticket.yaml");
    edit(&user, "| title }}", "| titel }}");
    // In a folded block scalar (`each: >-`), on its second line.
    edit(
        &user,
        "settings.create_missing_user_fields and",
        "settings.create_missing_user_fild and",
    );
    edit(&user, "steps.upsert.id is none", "steps.upsert.idd is none");
    // A field's template, over the event.
    edit(&track, "messageId is defined", "messageId is defnied");
    edit(&update, "resolve('ticket'", "resolv('ticket'");
    edit(&ticket, "priority | lower if", "prioirty | lower if");

    let (code, out, err) = command::validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    let expected = [
        (
            &user,
            "titel",
            "unknown filter `titel`; did you mean `title`?",
        ),
        (
            &user,
            "create_missing_user_fild",
            "unknown setting `create_missing_user_fild`; did you mean `create_missing_user_fields`?",
        ),
        (
            &user,
            "idd",
            "step `upsert` has no output `idd`; did you mean `id`?",
        ),
        (
            &track,
            "defnied",
            "unknown test `defnied`; did you mean `defined`?",
        ),
        (
            &update,
            "resolv(",
            "unknown function `resolv`; did you mean `resolve`?",
        ),
        (
            &ticket,
            "prioirty",
            "unknown name `prioirty` in a template: it is not a field of this action; did you mean `priority`?",
        ),
    ];
    for (file, needle, message) in expected {
        let at = format!(
            "{}:{}:{}:",
            file.display(),
            line_of(file, needle),
            column_of(file, needle)
        );
        let line = out
            .lines()
            .find(|l| l.contains(message))
            .unwrap_or_else(|| panic!("no {message:?} in:\n{out}"));
        assert!(line.starts_with(&at), "{line} (expected {at})");
    }
    assert_eq!(
        out.lines().count(),
        expected.len(),
        "each said once:\n{out}"
    );
    assert!(err.contains("6 error(s)"), "{err}");

    // Every command that loads the mappings refuses them too.
    let (code, _, err) = command::run(
        &["preview", "--mappings", dir.to_str().expect("utf-8"), "-"],
        "{}",
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown filter `titel`"), "{err}");
}

#[test]
fn a_misspelt_setting_is_refused_in_a_fields_template() {
    let (_tmp, dir) = mappings_copy();
    let user = dir.join("upsert_user.yaml");
    edit(
        &user,
        "    required: true",
        "    required: true\n  sourced: { template: \"{{ settings.sorce }}\" }",
    );
    let (code, out, _) = command::validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    let at = format!(
        "{}:{}:{}: template error: unknown setting `sorce`; did you mean `source`?",
        user.display(),
        line_of(&user, "settings.sorce"),
        column_of(&user, "sorce")
    );
    assert!(out.contains(&at), "{at}\nin:\n{out}");
}

#[test]
fn deny_warnings_makes_a_warning_fail_validation() {
    let shipped = ["validate", "--deny-warnings", "--mappings", "mappings"];
    let (code, out, err) = command::run(&shipped, "");
    assert_eq!(code, 0, "{out}{err}");

    let (_tmp, dir) = mappings_copy();
    let file = dir.join("upsert_user.yaml");
    edit(
        &file,
        "trigger: type = \"identify\"",
        "trigger: type = identify",
    );
    let dir_arg = dir.to_str().expect("utf-8");
    let (code, _, err) = command::run(&["validate", "--mappings", dir_arg], "");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        command::run(&["validate", "--deny-warnings", "--mappings", dir_arg], "");
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("warning: `identify` is read as a field"),
        "{out}"
    );
    assert!(err.contains("denied by --deny-warnings"), "{err}");
    let json = [
        "validate",
        "--deny-warnings",
        "--format",
        "json",
        "--mappings",
        dir_arg,
    ];
    let (code, out, _) = command::run(&json, "");
    assert_eq!(code, 1, "{out}");

    edit(&file, "| title }}", "| titel }}");
    let (code, _, err) = command::run(&["validate", "--deny-warnings", "--mappings", dir_arg], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("1 error(s), 1 warning(s)"), "{err}");
}
