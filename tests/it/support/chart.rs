//! The Helm chart's templates rendered as `helm template` would, for the few forms they use:
//! `{{ .Values.a.b }}`, `{{ .Release.Name }}`, `{{ .Chart.Name }}`, each optionally
//! `| quote`, and `{{- if [not] .Values.a }}` / `{{- else }}` / `{{- end }}` on lines of their
//! own. Anything else fails the test, so the chart stays within what this renders.

use serde_json::Value;

/// The release name the tests render with.
pub const RELEASE: &str = "zdmap";

/// `template` with `values` (values.yaml's, as JSON) substituted.
pub fn render(template: &str, values: &Value) -> String {
    let mut out = String::new();
    // Whether each enclosing `if` (and its `else`) renders.
    let mut shown: Vec<bool> = Vec::new();
    for line in template.lines() {
        let trimmed = line.trim();
        if let Some(cond) = directive(trimmed, "if") {
            let (negate, path) = match cond.strip_prefix("not ") {
                Some(rest) => (true, rest.trim()),
                None => (false, cond),
            };
            shown.push(truthy(&lookup(path, values)) != negate);
            continue;
        }
        if directive(trimmed, "else").is_some() {
            let last = shown.pop().expect("an else inside an if");
            shown.push(!last);
            continue;
        }
        if directive(trimmed, "end").is_some() {
            shown.pop().expect("an end closing an if");
            continue;
        }
        if shown.iter().all(|s| *s) {
            out.push_str(&substitute(line, values));
            out.push('\n');
        }
    }
    assert!(shown.is_empty(), "an if without its end");
    out
}

/// The rest of `{{- WORD rest }}` (or `{{ WORD rest }}`), when the line is that directive.
fn directive<'a>(line: &'a str, word: &str) -> Option<&'a str> {
    let inner = line.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.trim_start_matches('-').trim_end_matches('-').trim();
    let rest = inner.strip_prefix(word)?;
    (rest.is_empty() || rest.starts_with(' ')).then(|| rest.trim())
}

fn substitute(line: &str, values: &Value) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("}} closing {{") + start;
        let expr = rest[start + 2..end].trim();
        let (path, quote) = match expr.split_once('|') {
            Some((path, filter)) => {
                assert_eq!(filter.trim(), "quote", "unsupported filter in {line}");
                (path.trim(), true)
            }
            None => (expr, false),
        };
        let value = lookup(path, values);
        let text = match &value {
            Value::String(s) => s.clone(),
            Value::Null => panic!("{path} has no value ({line})"),
            other => other.to_string(),
        };
        if quote {
            out.push_str(&Value::String(text).to_string());
        } else {
            out.push_str(&text);
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

fn lookup(path: &str, values: &Value) -> Value {
    match path {
        ".Release.Name" => Value::String(RELEASE.into()),
        ".Chart.Name" => Value::String("zdmap".into()),
        _ => {
            let keys = path
                .strip_prefix(".Values.")
                .unwrap_or_else(|| panic!("unsupported template expression {path}"));
            keys.split('.').fold(values, |v, k| &v[k]).clone()
        }
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}
