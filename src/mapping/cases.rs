//! Mapping test cases (`zdmap test`): an event, setting overrides, and the requests or errors
//! that must come out, run through the same planner as `zdmap preview`.
//!
//! Case files live under `mappings/tests/` and follow `schemas/cases.schema.json`; [`check`]
//! finds what is wrong with them without running them (`zdmap validate`). Expected requests are
//! compared key by key: the keys a case gives (`query`, `headers`, `body`) must be equal, and a
//! failure names each path that differs (`body.user.name`) with both values; lookups appear as in
//! a preview (`<user external_id=abc>`).

use crate::mapping::config::{Config, Diagnostics};
use crate::mapping::diagnostic::{Diagnostic, Problems, suggest};
use crate::mapping::event::Event;
use crate::mapping::plan::Preview;
use crate::mapping::spec::{CaseFile, CaseSpec, ExpectSpec};
use crate::mapping::yaml::Node;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The result of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub file: PathBuf,
    /// The line where the case starts in its file.
    pub line: usize,
    pub name: String,
    /// Empty when the case passed.
    pub failures: Vec<String>,
}

/// All results of a run.
#[derive(Debug, Default)]
pub struct Report {
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.failures.is_empty())
            .count()
    }
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }
}

/// Finds case files: the given files and directories, or `mappings/tests/` of the mappings dir.
pub fn find(mappings: &Path, paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let roots = if paths.is_empty() {
        vec![mappings.join("tests")]
    } else {
        paths.to_vec()
    };
    let mut files = Vec::new();
    for root in roots {
        if root.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&root)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            found.sort();
            files.extend(found);
        } else if root.is_file() {
            files.push(root);
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{}: no such file or directory", root.display()),
            ));
        }
    }
    Ok(files)
}

/// Runs the cases of the files whose name contains `only` (all without it) against the
/// mappings (`overrides` apply to all cases).
pub fn run(
    mappings: &Path,
    overrides: &[String],
    files: &[PathBuf],
    only: Option<&str>,
) -> Result<Report, Diagnostics> {
    let mut report = Report::default();
    let mut configs: HashMap<Vec<String>, Config> = HashMap::new();
    let mut diags = Diagnostics::default();
    for file in files {
        let Some((spec, node)) = crate::mapping::config::read_spec::<CaseFile>(
            file,
            crate::mapping::schema::cases_validator(),
            &mut diags,
        ) else {
            continue;
        };
        for (index, case) in spec.cases.iter().enumerate() {
            if only.is_some_and(|name| !case.name.contains(name)) {
                continue;
            }
            let mut set = overrides.to_vec();
            set.extend(
                case.settings
                    .iter()
                    .map(|(k, v)| format!("{k}={}", setting_text(v))),
            );
            if !configs.contains_key(&set) {
                let config = Config::load(mappings, &set)?;
                configs.insert(set.clone(), config);
            }
            let failures = match configs.get(&set) {
                Some(config) => check_case(config, case),
                None => vec!["the mappings did not load".into()],
            };
            report.results.push(CaseResult {
                file: file.clone(),
                line: node.locate(&format!("/cases/{index}"), false).line,
                name: case.name.clone(),
                failures,
            });
        }
    }
    if diags.is_empty() {
        Ok(report)
    } else {
        Err(diags)
    }
}

/// The case files of a mappings directory's `tests/` that read and have the right shape, with
/// their YAML trees; the problems of the others go to `diags`. No `tests/` is no case files.
fn read_case_files(
    mappings: &Path,
    diags: &mut Diagnostics,
) -> Vec<(PathBuf, CaseFile, Arc<Node>)> {
    let files = match find(mappings, &[]) {
        Ok(files) => files,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            diags.push(Diagnostic::new(
                &mappings.join("tests"),
                Default::default(),
                format!("cannot read the test cases: {e}"),
            ));
            Vec::new()
        }
    };
    files
        .into_iter()
        .filter_map(|file| {
            let (spec, node) = crate::mapping::config::read_spec::<CaseFile>(
                &file,
                crate::mapping::schema::cases_validator(),
                diags,
            )?;
            Some((file, spec, node))
        })
        .collect()
}

/// The events of the test cases of a mappings directory that are valid events, each labelled
/// `FILE::CASE`: sample events for checks that need some (`zdmap fields check`).
pub fn events(mappings: &Path) -> Result<Vec<(String, Event)>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut events = Vec::new();
    for (file, spec, _) in read_case_files(mappings, &mut diags) {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        for case in spec.cases {
            if let Ok(event) = Event::from_value(case.event) {
                events.push((format!("{name}::{}", case.name), event));
            }
        }
    }
    if diags.is_empty() {
        Ok(events)
    } else {
        Err(diags)
    }
}

/// The problems of the case files of a mappings directory (`tests/`), without running them: their
/// shape (unknown keys, wrong types) and, with the loaded mappings, the names of actions and
/// settings they use.
pub fn check(mappings: &Path, config: Option<&Config>) -> Diagnostics {
    let mut diags = Diagnostics::default();
    for (file, spec, node) in read_case_files(mappings, &mut diags) {
        let Some(config) = config else { continue };
        let mut p = Problems::new(&file, Some(node));
        let actions: Vec<&str> = config.actions.iter().map(|a| a.name.as_str()).collect();
        let settings: Vec<&str> = config
            .settings
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        for (i, case) in spec.cases.iter().enumerate() {
            let at = format!("/cases/{i}");
            for name in case.settings.keys() {
                if !settings.contains(&name.as_str()) {
                    p.at_key(
                        &format!("{at}/settings/{name}"),
                        format!("unknown setting `{name}`{}", hint(name, &settings)),
                    );
                }
            }
            let expect = &case.expect;
            let named =
                expect
                    .actions
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(j, a)| (format!("{at}/expect/actions/{j}"), Some(a)))
                    .chain(expect.requests.iter().flatten().enumerate().map(|(j, r)| {
                        (format!("{at}/expect/requests/{j}/action"), Some(&r.action))
                    }))
                    .chain(expect.errors.iter().flatten().enumerate().map(|(j, e)| {
                        (format!("{at}/expect/errors/{j}/action"), e.action.as_ref())
                    }));
            for (pointer, name) in named {
                if let Some(name) = name.filter(|n| !actions.contains(&n.as_str())) {
                    p.at(
                        &pointer,
                        format!("unknown action `{name}`{}", hint(name, &actions)),
                    );
                }
            }
        }
        diags.0.extend(p.into_found());
    }
    diags
}

fn hint(name: &str, known: &[&str]) -> String {
    suggest(name, known.iter().copied())
        .map(|h| format!("; did you mean `{h}`?"))
        .unwrap_or_default()
}

fn setting_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs one case; the failures (empty when it passed).
pub(crate) fn check_case(config: &Config, case: &CaseSpec) -> Vec<String> {
    let preview = match Event::from_value(case.event.clone()) {
        Ok(event) => config.preview(&event),
        Err(e) => Preview {
            kind: String::new(),
            matched: Vec::new(),
            requests: Vec::new(),
            lookups: Vec::new(),
            errors: vec![crate::mapping::plan::PlanError {
                action: String::new(),
                step: None,
                message: e.to_string(),
            }],
        },
    };
    compare(&case.expect, &preview)
}

fn compare(expect: &ExpectSpec, got: &Preview) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(actions) = &expect.actions
        && actions != &got.matched
    {
        failures.push(format!(
            "actions: expected {actions:?}, got {:?}",
            got.matched
        ));
    }
    if let Some(requests) = &expect.requests {
        if requests.len() != got.requests.len() {
            failures.push(format!(
                "expected {} request(s), got {}: {}",
                requests.len(),
                got.requests.len(),
                got.requests
                    .iter()
                    .map(|r| format!("{} {} {}", r.action, r.request.method, r.request.path))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        for (i, (want, have)) in requests.iter().zip(&got.requests).enumerate() {
            let mut diff = |what: &str, w: String, h: String| {
                if w != h {
                    failures.push(format!("request {}: {what}: expected {w}, got {h}", i + 1));
                }
            };
            diff("action", want.action.clone(), have.action.clone());
            if let Some(step) = &want.step {
                diff("step", step.clone(), have.step.clone());
            }
            diff(
                "method",
                want.method.to_string(),
                have.request.method.to_string(),
            );
            diff("path", want.path.clone(), have.request.path.clone());
            let mut differences = Vec::new();
            if let Some(q) = &want.query {
                differ(
                    "query",
                    &to_value(q),
                    Some(&to_value(&have.request.query)),
                    &mut differences,
                );
            }
            if let Some(h) = &want.headers {
                differ(
                    "headers",
                    &to_value(h),
                    Some(&to_value(&have.request.headers)),
                    &mut differences,
                );
            }
            if let Some(b) = &want.body {
                differ("body", b, have.request.body.as_ref(), &mut differences);
            }
            match (&want.batch, &have.batch) {
                (None, _) | (Some(Value::Bool(false)), None) => {}
                (Some(Value::Bool(false)), Some(b)) => differences.push(format!(
                    "batch: expected a single request, got an item of {} {}",
                    b.method, b.path
                )),
                (Some(w), have) => {
                    let have = have.as_ref().map(to_value);
                    differ("batch", w, have.as_ref(), &mut differences);
                }
            }
            failures.extend(
                differences
                    .into_iter()
                    .map(|d| format!("request {}: {d}", i + 1)),
            );
        }
    }
    match &expect.errors {
        Some(errors) => {
            for e in errors {
                let found = got.errors.iter().any(|g| {
                    e.action.as_ref().is_none_or(|a| *a == g.action)
                        && g.to_string().contains(&e.contains)
                });
                if !found {
                    failures.push(format!(
                        "expected an error containing {:?}{}, got: {}",
                        e.contains,
                        e.action
                            .as_ref()
                            .map(|a| format!(" in action `{a}`"))
                            .unwrap_or_default(),
                        describe_errors(got)
                    ));
                }
            }
            if errors.is_empty() && !got.errors.is_empty() {
                failures.push(format!("expected no errors, got: {}", describe_errors(got)));
            }
        }
        None if !got.errors.is_empty() => {
            failures.push(format!("unexpected errors: {}", describe_errors(got)))
        }
        None => {}
    }
    failures
}

fn describe_errors(p: &Preview) -> String {
    if p.errors.is_empty() {
        return "none".into();
    }
    p.errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// The places where `got` differs from `want`, each as `path: expected X, got Y`: objects key by
/// key (a key `want` lacks is a difference too), lists of the same length element by element.
fn differ(path: &str, want: &Value, got: Option<&Value>, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Some(Value::Object(g))) => {
            for (k, v) in w {
                differ(&format!("{path}.{k}"), v, g.get(k), out);
            }
            for (k, v) in g.iter().filter(|(k, _)| !w.contains_key(*k)) {
                out.push(format!("{path}.{k}: not expected, got {v}"));
            }
        }
        (Value::Array(w), Some(Value::Array(g))) if w.len() == g.len() => {
            for (i, (w, g)) in w.iter().zip(g).enumerate() {
                differ(&format!("{path}[{i}]"), w, Some(g), out);
            }
        }
        (w, Some(g)) if w == g => {}
        (w, Some(g)) => out.push(format!("{path}: expected {w}, got {g}")),
        (w, None) => out.push(format!("{path}: expected {w}, got nothing")),
    }
}
