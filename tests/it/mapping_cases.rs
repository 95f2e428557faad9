//! The mapping test cases of `mappings/tests/`, run through the library and through `zdmap test`.

use crate::support::command::{self, run};

use std::path::Path;

#[test]
fn every_shipped_case_passes() {
    let files = zdmap::mapping::cases::find(Path::new("mappings"), &[]).expect("case files");
    assert!(files.len() >= 7, "{files:?}");
    let report = zdmap::mapping::cases::run(Path::new("mappings"), &[], &files, None)
        .unwrap_or_else(|d| panic!("{d}"));
    let failures: Vec<String> = report
        .results
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| {
            format!(
                "{} ({}):\n  {}",
                r.name,
                r.file.display(),
                r.failures.join("\n  ")
            )
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(report.passed() >= 35, "{} cases", report.passed());
}

#[test]
fn a_wrong_expectation_fails_with_the_difference() {
    let dir = tempfile::tempdir().expect("temp");
    let file = dir.path().join("wrong.yaml");
    std::fs::write(
        &file,
        r#"cases:
  - name: wrong name
    event: { type: identify, userId: u-1, traits: { email: a@example.com, name: Right } }
    expect:
      requests:
        - { action: upsert_user, method: POST, path: /api/v2/users/create_or_update, body: { user: { email: a@example.com, name: Wrong, external_id: u-1 } } }
  - name: missing error
    event: { type: identify, userId: u-1 }
    expect:
      errors: [{ contains: "this error never happens" }]
  - name: wrong actions
    event: { type: group, groupId: g }
    expect:
      actions: [upsert_user]
"#,
    )
    .expect("write");
    let report = zdmap::mapping::cases::run(
        Path::new("mappings"),
        &[],
        std::slice::from_ref(&file),
        None,
    )
    .expect("runs");
    assert_eq!(report.failed(), 3);
    let body = &report.results[0].failures;
    assert!(
        body.iter()
            .any(|f| f.contains("body") && f.contains("\"Wrong\"") && f.contains("\"Right\"")),
        "{body:?}"
    );
    assert!(report.results[1].failures[0].contains("this error never happens"));
    assert!(report.results[2].failures[0].contains("actions"));
}

#[test]
fn zdmap_test_reports_like_a_test_runner() {
    let (code, text, _) = run(&["test"], "");
    assert_eq!(code, 0, "{text}");
    let last = text.lines().last().unwrap_or_default();
    let passed: usize = last
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 35 && last.ends_with("passed, 0 failed"), "{last}");
    assert!(
        text.contains(
            "test upsert_user.yaml::identify with first_name and last_name joined ... ok"
        )
    );
}

/// `zdmap test` over a case file of its own, with more arguments.
fn zdmap_test(cases: &Path, more: &[&str]) -> (i32, String) {
    let cases = cases.to_str().expect("a UTF-8 path");
    let (code, out, _) = run(&[&["test", cases], more].concat(), "");
    (code, out)
}

const FAILING: &str = r#"cases:
  - name: right name
    event: { type: identify, userId: u-1, traits: { email: a@example.com, name: Right } }
    expect:
      requests:
        - { action: upsert_user, method: POST, path: /api/v2/users/create_or_update, body: { user: { email: a@example.com, name: Right, external_id: u-1 } } }

  - name: wrong name
    event: { type: identify, userId: u-1, traits: { email: a@example.com, name: Right, phone: "1" } }
    expect:
      requests:
        - { action: upsert_user, method: POST, path: /api/v2/users/create_or_update, body: { user: { email: a@example.com, name: Wrong, external_id: u-1 } } }
"#;

#[test]
fn a_failing_case_names_the_keys_that_differ_and_annotates_for_github() {
    let dir = tempfile::tempdir().expect("temp");
    let file = dir.path().join("cases.yaml");
    std::fs::write(&file, FAILING).expect("write");
    let (code, out) = zdmap_test(&file, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(r#"request 1: body.user.name: expected "Wrong", got "Right""#),
        "{out}"
    );
    assert!(
        out.contains(r#"request 1: body.user.phone: not expected, got "1""#),
        "{out}"
    );
    assert!(out.trim_end().ends_with("1 passed, 1 failed"), "{out}");

    let (code, out) = zdmap_test(&file, &["--format", "github"]);
    assert_eq!(code, 1);
    let annotation = format!(
        "::error file={},line=8,col=1::case `wrong name` failed:%0Arequest 1: body.user.name",
        file.display()
    );
    assert!(out.contains(&annotation), "{annotation}\nin:\n{out}");
    assert_eq!(out.matches("::error").count(), 1, "{out}");

    let (code, out) = zdmap_test(&file, &["-k", "right"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("running 1 mapping test case(s)"), "{out}");
    assert!(out.trim_end().ends_with("1 passed, 0 failed"), "{out}");
}

/// `zdmap validate` on a mappings directory that must be invalid: what it printed.
fn validate_fails(mappings: &Path) -> String {
    let (code, text, _) = command::validate(mappings, "text");
    assert_eq!(code, 1, "{text}");
    text
}

#[test]
fn validate_checks_the_test_cases_too() {
    let dir = tempfile::tempdir().expect("temp");
    let mappings = dir.path().join("mappings");
    std::fs::create_dir_all(mappings.join("tests")).expect("mkdir");
    for e in std::fs::read_dir("mappings").expect("mappings") {
        let p = e.expect("entry").path();
        if p.is_file() {
            std::fs::copy(&p, mappings.join(p.file_name().expect("name"))).expect("copy");
        }
    }
    let case = mappings.join("tests").join("mine.yaml");
    std::fs::write(
        &case,
        r#"cases:
  - name: typo in a key
    event: { type: identify, userId: u-1 }
    expct: { actions: [upsert_user] }
  - name: names that do not exist
    settings: { create_user_as_verified: true }
    event: { type: identify, userId: u-1 }
    expect:
      actions: [upsert_usr]
      requests: 3
"#,
    )
    .expect("write");
    let text = validate_fails(&mappings);
    let at = |line: usize| format!("{}:{line}:", case.display());
    let has = |text: &str, line: usize, what: &str| {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&at(line)) && l.contains(what)),
            "{what} at line {line} in:\n{text}"
        )
    };
    has(&text, 4, "unknown key `expct`; did you mean `expect`?");
    has(&text, 10, "expected a list, found a number");
    // Once the shape is right, the names are checked against the mappings.
    let fixed = std::fs::read_to_string(&case)
        .expect("read")
        .replace("expct", "expect")
        .replace("      requests: 3\n", "");
    std::fs::write(&case, fixed).expect("write");
    let text = validate_fails(&mappings);
    has(
        &text,
        6,
        "unknown setting `create_user_as_verified`; did you mean `create_users_as_verified`?",
    );
    has(
        &text,
        9,
        "unknown action `upsert_usr`; did you mean `upsert_user`?",
    );
}

/// `zdmap test --format junit`: the document alone on standard output, parsed.
fn junit(cases: &Path) -> (i32, String) {
    let (code, out) = zdmap_test(cases, &["--format", "junit"]);
    roxmltree::Document::parse(&out).unwrap_or_else(|e| panic!("not XML ({e}):\n{out}"));
    (code, out)
}

#[test]
fn junit_has_one_testsuite_and_one_testcase_per_case() {
    let (code, out, _) = run(&["test", "--format", "junit"], "");
    assert_eq!(code, 0, "{out}");
    let doc = roxmltree::Document::parse(&out).expect("XML");
    let suite = doc.root_element();
    assert_eq!(suite.tag_name().name(), "testsuite");
    let cases: Vec<_> = suite.children().filter(|n| n.is_element()).collect();
    assert!(cases.len() >= 35, "{out}");
    assert!(cases.iter().all(|c| c.tag_name().name() == "testcase"));
    assert_eq!(
        suite.attribute("tests"),
        Some(cases.len().to_string().as_str())
    );
    assert_eq!(suite.attribute("failures"), Some("0"));
    assert!(cases.iter().any(|c| {
        c.attribute("classname") == Some("upsert_user.yaml")
            && c.attribute("name") == Some("identify with first_name and last_name joined")
    }));
    assert!(cases.iter().all(|c| c.children().all(|n| !n.is_element())));
}

#[test]
fn junit_says_each_failure_with_its_message_escaped() {
    let dir = tempfile::tempdir().expect("temp");
    let file = dir.path().join("cases.yaml");
    let cases = FAILING.replace(
        "name: wrong name",
        "name: \"wrong <name> & 'quotes' \\\"\\u001b\\\"\"",
    );
    std::fs::write(&file, cases).expect("write");
    let (code, out) = junit(&file);
    assert_eq!(code, 1, "{out}");
    let doc = roxmltree::Document::parse(&out).expect("XML");
    let suite = doc.root_element();
    assert_eq!(
        (suite.attribute("tests"), suite.attribute("failures")),
        (Some("2"), Some("1"))
    );
    let cases: Vec<_> = suite.children().filter(|n| n.is_element()).collect();
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0].attribute("name"), Some("right name"));
    assert!(!cases[0].children().any(|n| n.is_element()));
    assert_eq!(
        cases[1].attribute("name"),
        Some("wrong <name> & 'quotes' \"\\u{1b}\"")
    );
    assert_eq!(cases[1].attribute("line"), Some("8"));
    let failures: Vec<_> = cases[1].children().filter(|n| n.is_element()).collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].tag_name().name(), "failure");
    let message = failures[0].attribute("message").expect("a message");
    assert_eq!(
        message,
        r#"request 1: body.user.name: expected "Wrong", got "Right""#
    );
    let text = failures[0].text().expect("the failures");
    assert!(text.contains(message), "{text}");
    assert!(
        text.contains(r#"request 1: body.user.phone: not expected, got "1""#),
        "{text}"
    );
}
