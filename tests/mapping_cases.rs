//! The mapping test cases of `mappings/tests/`, run through the library and through `zdmap test`.

use std::path::Path;

#[test]
fn every_shipped_case_passes() {
    let files = zdmap::cases::find(Path::new("mappings"), &[]).expect("case files");
    assert!(files.len() >= 7, "{files:?}");
    let report =
        zdmap::cases::run(Path::new("mappings"), &[], &files).unwrap_or_else(|d| panic!("{d}"));
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
    let report =
        zdmap::cases::run(Path::new("mappings"), &[], std::slice::from_ref(&file)).expect("runs");
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
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .arg("test")
        .output()
        .expect("run zdmap test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
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
