//! Mapping test cases (`zdmap test`): an event, setting overrides, and the requests or errors
//! that must come out, run through the same planner as `zdmap preview`.
//!
//! Case files live under `mappings/tests/` and follow `schemas/cases.schema.json`. Expected
//! requests are compared key by key: the keys a case gives (`query`, `headers`, `body`) must
//! be equal; lookups appear as in a preview (`<user external_id=abc>`).

use crate::config::{Config, Diagnostics};
use crate::event::Event;
use crate::plan::Preview;
use crate::spec::{CaseFile, CaseSpec, ExpectSpec};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The result of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub file: PathBuf,
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

/// Runs every case of the files against the mappings (`overrides` apply to all cases).
pub fn run(
    mappings: &Path,
    overrides: &[String],
    files: &[PathBuf],
) -> Result<Report, Diagnostics> {
    let mut report = Report::default();
    let mut configs: HashMap<Vec<String>, Config> = HashMap::new();
    let mut diags = Diagnostics::default();
    for file in files {
        let Some((spec, _)) = crate::config::read_spec::<CaseFile>(
            file,
            crate::schema::cases_validator(),
            &mut diags,
        ) else {
            continue;
        };
        for case in &spec.cases {
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

fn setting_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs one case; the failures (empty when it passed).
pub fn check_case(config: &Config, case: &CaseSpec) -> Vec<String> {
    let preview = match Event::from_value(case.event.clone()) {
        Ok(event) => config.preview(&event),
        Err(e) => Preview {
            kind: String::new(),
            matched: Vec::new(),
            requests: Vec::new(),
            lookups: Vec::new(),
            errors: vec![crate::plan::PlanError {
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
    if let Some(actions) = &expect.actions {
        if actions != &got.matched {
            failures.push(format!(
                "actions: expected {actions:?}, got {:?}",
                got.matched
            ));
        }
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
            if let Some(q) = &want.query {
                diff("query", json(q), json(&have.request.query));
            }
            if let Some(h) = &want.headers {
                diff("headers", json(h), json(&have.request.headers));
            }
            if let Some(b) = &want.body {
                diff(
                    "body",
                    json(b),
                    json(&have.request.body.clone().unwrap_or(Value::Null)),
                );
            }
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

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
