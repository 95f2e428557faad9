//! The stages of `src/` and the rules between them, checked: a stage imports only the stages on
//! the floors below it (ARCHITECTURE.md draws them), the modules of the mapping engine do not
//! import each other in a circle, and only the command line knows clap.
//!
//! The check reads the source: every `crate::STAGE` a file names, in code or in a doc link,
//! counts as an import of that stage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each stage (a folder of `src/`) and its floor.
const FLOORS: &[(&str, u8)] = &[
    ("base", 0),
    ("mapping", 1),
    ("emulator", 1),
    ("deliver", 2),
    ("queue", 3),
    ("serve", 4),
    ("commands", 5),
];

fn floor(stage: &str) -> Option<u8> {
    FLOORS.iter().find(|(s, _)| *s == stage).map(|(_, f)| *f)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The names `text` reaches through `prefix` (`crate::deliver::x` → `deliver`).
fn named_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.insert(name);
        }
    }
    names
}

/// `src/STAGE/...` → `STAGE`; files at the top of `src/` have none.
fn stage_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let mut parts = relative.components();
    let first = parts.next()?.as_os_str().to_str()?.to_string();
    parts.next().map(|_| first)
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_stage_imports_only_the_stages_below_it() {
    let src = src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut stages_seen = BTreeSet::new();
    for file in &files {
        let Some(stage) = stage_of(&src, file) else {
            continue;
        };
        let own = floor(&stage).unwrap_or_else(|| panic!("{stage} is not a stage of FLOORS"));
        stages_seen.insert(stage.clone());
        let text = std::fs::read_to_string(file).expect("source");
        for other in named_after(&text, "crate::") {
            let Some(theirs) = floor(&other) else {
                continue;
            };
            if other != stage && theirs >= own {
                wrong.push(format!(
                    "{} (stage {stage}, floor {own}) names crate::{other} (floor {theirs})",
                    file.strip_prefix(&src).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports up or across:\n{}",
        wrong.join("\n")
    );
    let expected: BTreeSet<String> = FLOORS.iter().map(|(s, _)| s.to_string()).collect();
    assert_eq!(stages_seen, expected, "every stage is a folder of src/");
}

#[test]
fn only_the_command_line_knows_clap() {
    let src = src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let knowing: Vec<String> = files
        .iter()
        .filter(|f| stage_of(&src, f).is_some_and(|s| s != "commands"))
        .filter(|f| {
            let text = std::fs::read_to_string(f).expect("source");
            text.contains("clap::") || text.contains("use clap")
        })
        .map(|f| f.strip_prefix(&src).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        knowing.is_empty(),
        "clap named outside commands/: {knowing:?}"
    );
}

#[test]
fn the_top_of_src_holds_only_the_crate_root_and_the_binary() {
    let mut top: Vec<String> = std::fs::read_dir(src())
        .expect("src")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["lib.rs", "main.rs", "stages.rs"]);
    let main = std::fs::read_to_string(src().join("main.rs")).expect("main.rs");
    assert_eq!(
        named_after(&main, "zdmap::"),
        BTreeSet::from(["commands".to_string()])
    );
}

#[test]
fn the_modules_of_the_mapping_engine_import_each_other_in_no_circle() {
    let mapping = src().join("mapping");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    rust_files(&mapping, &mut files);
    for file in &files {
        let Some(module) = stage_of(&mapping, file).or_else(|| {
            file.file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| *s != "mod")
                .map(str::to_string)
        }) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("source");
        let named = named_after(&text, "crate::mapping::");
        let entry = edges.entry(module.clone()).or_default();
        entry.extend(named.into_iter().filter(|n| *n != module));
    }
    // Depth-first search for a circle.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(circle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!("a circle in the mapping engine: {}", circle.join(" → "));
        }
    }
    assert!(edges.len() > 5, "{edges:?}");
}
