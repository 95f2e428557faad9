//! Steps and request templates: the compiled form of `steps:` and what they render to.
//!
//! A [`RequestTemplate`] is a YAML request with its strings compiled. Rendering it in a scope
//! gives a [`Request`]: path template parts are URL-encoded, query and header values that have
//! no value are dropped, and body leaves that have no value drop their key. The body is built as
//! JSON values, never as JSON text, so event data can never add structure.

use crate::mapping::diagnostic::Problems;
use crate::mapping::path::JsonPath;
use crate::mapping::plan::outcome::Outcomes;
use crate::mapping::request::{Method, Request, is_moving_segment, push_path_segment};
use crate::mapping::spec::{CheckSpec, LearnSpec, PagesSpec, RequestSpec, StepSpec};
use crate::mapping::template::{RenderError, Scope, Templates, Text};
use indexmap::IndexMap;
use serde_json::{Map, Value};

/// One compiled step of an action.
#[derive(Debug)]
pub struct Step {
    pub name: String,
    pub when: Option<Text>,
    pub each: Option<Text>,
    pub request: RequestTemplate,
    pub outcomes: Outcomes,
    pub outputs: Vec<(String, JsonPath)>,
    pub learn: Vec<Learn>,
    pub forget: Vec<String>,
    /// Sending the request again does no more than sending it once (see [`StepSpec::idempotent`]).
    pub idempotent: bool,
    /// How to tell whether the write of a step that is not idempotent was applied.
    pub check: Option<Check>,
    /// The step's bulk form, if it has one.
    pub batch: Option<std::sync::Arc<crate::mapping::plan::batch::BatchForm>>,
    /// For how long a write equal to the last one applied to the action's entity is skipped
    /// (see [`StepSpec::skip_unchanged`]).
    pub skip_unchanged: Option<std::time::Duration>,
}

/// A compiled `check`: a request, and the JSONPath of markers in its answer, one of which equals
/// the write's marker when the write was applied.
#[derive(Debug)]
pub struct Check {
    pub request: RequestTemplate,
    pub path: JsonPath,
    pub equals: Text,
    /// How to follow the answer's pages; `None` reads the first page only.
    pub pages: Option<Pages>,
}

/// A compiled `check.pages`: where an answer says whether there is a next page, and its link.
#[derive(Debug)]
pub struct Pages {
    pub next: JsonPath,
    pub more: Option<JsonPath>,
    /// Most pages read, the first included.
    pub most: usize,
}

/// What a page of a check's answer says comes after it.
#[derive(Debug, PartialEq, Eq)]
pub enum NextPage {
    /// It is the last page.
    End,
    /// The link of the next page.
    Link(String),
    /// It says there is more but gives no link to it.
    Unreachable,
}

impl Pages {
    fn compile(spec: &PagesSpec, pointer: &str, problems: &mut Problems) -> Option<Pages> {
        let path = |src: &str, at: &str, problems: &mut Problems| {
            JsonPath::compile(src, &format!("{pointer}/{at}"), problems)
        };
        let next = path(&spec.next, "next", problems);
        let more = spec.more.as_ref().map(|src| path(src, "more", problems));
        let most = (1..=1000).contains(&spec.most);
        if !most {
            problems.at(
                &format!("{pointer}/most"),
                format!("a check reads 1 to 1000 pages, not {}", spec.most),
            );
        }
        Some(Pages {
            next: next?,
            more: match more {
                Some(compiled) => Some(compiled?),
                None => None,
            },
            most: most.then_some(spec.most)?,
        })
    }

    /// What `body` (one page of the answer) says comes after it: the last page when `more`
    /// says `false`, or when there is no link and `more` does not say `true`.
    pub fn after(&self, body: &Value) -> NextPage {
        use crate::mapping::path::Selected;
        let more = self.more.as_ref().and_then(|p| match p.select(body) {
            Selected::One(Value::Bool(b)) => Some(*b),
            _ => None,
        });
        if more == Some(false) {
            return NextPage::End;
        }
        match self.next.select(body) {
            Selected::One(Value::String(link)) if !link.trim().is_empty() => {
                NextPage::Link(link.trim().to_string())
            }
            _ if more == Some(true) => NextPage::Unreachable,
            _ => NextPage::End,
        }
    }
}

impl Check {
    fn compile(
        spec: &CheckSpec,
        pointer: &str,
        templates: &mut Templates,
        problems: &mut Problems,
    ) -> Option<Check> {
        let request = RequestTemplate::compile(
            &spec.request,
            &format!("{pointer}/request"),
            templates,
            problems,
        );
        let path = JsonPath::compile(
            &spec.applied.path,
            &format!("{pointer}/applied/path"),
            problems,
        );
        let equals = templates
            .text(&spec.applied.equals)
            .map_err(|e| {
                e.report(
                    "template error",
                    &format!("{pointer}/applied/equals"),
                    problems,
                )
            })
            .ok();
        let pages = spec
            .pages
            .as_ref()
            .map(|p| Pages::compile(p, &format!("{pointer}/pages"), problems));
        Some(Check {
            request: request?,
            path: path?,
            equals: equals?,
            pages: match pages {
                Some(compiled) => Some(compiled?),
                None => None,
            },
        })
    }

    /// Whether a value at the check's path in `body` equals `marker`.
    pub fn applied(&self, body: &Value, marker: &Value) -> bool {
        use crate::mapping::path::Selected;
        match self.path.select(body) {
            Selected::Nothing => false,
            Selected::One(v) => v == marker,
            Selected::Many(vs) => vs.into_iter().any(|v| v == marker),
        }
    }
}

/// A resolver cache entry to learn from a response.
#[derive(Debug)]
pub struct Learn {
    pub resolver: String,
    pub by: String,
    pub key: Text,
    pub value: JsonPath,
}

/// A compiled request.
#[derive(Debug)]
pub struct RequestTemplate {
    pub method: Method,
    path: Vec<PathPart>,
    query: Vec<(String, Text)>,
    headers: Vec<(String, Text)>,
    body: Option<Body>,
}

#[derive(Debug)]
enum PathPart {
    Literal(String),
    Value(Text, String),
}

#[derive(Debug)]
enum Body {
    /// A subtree with no templates in it.
    Fixed(Value),
    Text(Text),
    Object(Vec<(String, Body)>),
    Array(Vec<Body>),
}

/// Every compiled string of a step, with the JSON pointer it came from (for load-time checks).
pub(crate) type Texts<'a> = Vec<(String, &'a Text)>;

impl Step {
    pub fn compile(
        spec: &StepSpec,
        pointer: &str,
        templates: &mut Templates,
        problems: &mut Problems,
    ) -> Option<Step> {
        let mut expression = |src: &Option<String>,
                              key: &str,
                              problems: &mut Problems|
         -> Result<Option<Text>, ()> {
            match src {
                None => Ok(None),
                Some(s) => templates.expression(s).map(Some).map_err(|e| {
                    // Triggers compare with `=`; expressions, as minijinja, with `==`.
                    let hint = if e.message.starts_with("syntax error") && lone_equals(s) {
                        " (an expression compares with `==`; `=` is the trigger language's)"
                    } else {
                        ""
                    };
                    let what = format!("bad expression in `{key}`{hint}");
                    e.report(&what, &format!("{pointer}/{key}"), problems);
                }),
            }
        };
        let when = expression(&spec.when, "when", problems);
        let each = expression(&spec.each, "each", problems);
        let request = RequestTemplate::compile(
            &spec.request,
            &format!("{pointer}/request"),
            templates,
            problems,
        );
        let outcomes = Outcomes::compile(&spec.outcomes, &format!("{pointer}/outcomes"), problems);
        let mut outputs = Vec::new();
        for (name, path) in &spec.outputs {
            if let Some(p) = JsonPath::compile(path, &format!("{pointer}/outputs/{name}"), problems)
            {
                outputs.push((name.clone(), p));
            }
        }
        let idempotent = spec
            .idempotent
            .unwrap_or(!matches!(spec.request.method, Method::Post | Method::Patch));
        let check = match &spec.check {
            None => None,
            Some(_) if idempotent => {
                problems.at(
                    &format!("{pointer}/check"),
                    "a `check` is for a step that is not idempotent: add `idempotent: false`, \
                     or remove the check",
                );
                None
            }
            Some(c) => Some(Check::compile(
                c,
                &format!("{pointer}/check"),
                templates,
                problems,
            )?),
        };
        if !idempotent && spec.check.is_none() {
            problems.warn_at(
                &format!("{pointer}/name"),
                format!(
                    "step `{}` is not idempotent ({} by default) and has no `check`: after an \
                     ambiguous failure (5xx, timeout) it is dead-lettered rather than sent again; \
                     declare `idempotent: true` if sending it twice is harmless, or a `check`",
                    spec.name, spec.request.method
                ),
            );
        }
        let mut learn = Vec::new();
        for (i, l) in spec.learn.iter().enumerate() {
            if let Some(l) = Learn::compile(l, &format!("{pointer}/learn/{i}"), templates, problems)
            {
                learn.push(l);
            }
        }
        // A write that is not idempotent is batched only when each item can be read back after
        // a lost bulk answer (its `check`; the destination's `jobs.list` is checked with the
        // action, see `config`).
        let batchable = idempotent || spec.check.is_some();
        if spec.batch.is_some() && !batchable {
            problems.at(
                &format!("{pointer}/batch"),
                "a step that is not idempotent cannot be batched without a `check`: after a bulk \
                 request's answer is lost, each item must be read back before it is sent again \
                 (add a `check`, or send it single)",
            );
        }
        // A form with problems (reported) leaves the step single, so the step's own checks run.
        let batch = spec.batch.as_ref().filter(|_| batchable).and_then(|b| {
            crate::mapping::plan::batch::BatchForm::compile(
                b,
                &format!("{pointer}/batch"),
                templates,
                problems,
            )
            .map(std::sync::Arc::new)
        });
        let skip_unchanged = spec.skip_unchanged.as_deref().and_then(|text| {
            let at = format!("{pointer}/skip_unchanged");
            let refusal = if !idempotent {
                Some("a write that is not idempotent is never skipped as unchanged")
            } else if spec.request.method == Method::Delete {
                Some("a removal is never skipped as unchanged: the record may have come back since")
            } else if spec.each.is_some() {
                Some("`skip_unchanged` is for a step with one request (no `each`)")
            } else {
                None
            };
            if let Some(refusal) = refusal {
                problems.at(&at, refusal);
                return None;
            }
            let span = parse_span(text);
            if span.is_none() {
                problems.at(
                    &at,
                    format!(
                        "`{text}` is not a duration: a number and a unit, ms, s, m, h or d \
                         (`24h`), more than zero"
                    ),
                );
            }
            span
        });
        Some(Step {
            name: spec.name.clone(),
            batch,
            skip_unchanged,
            when: when.ok()?,
            each: each.ok()?,
            request: request?,
            outcomes,
            outputs,
            learn,
            forget: spec.forget.clone(),
            idempotent,
            check,
        })
    }

    /// Every compiled string of the step with its pointer (relative to the step).
    pub fn texts(&self) -> Texts<'_> {
        let mut out: Texts = Vec::new();
        if let Some(w) = &self.when {
            out.push(("/when".into(), w));
        }
        if let Some(e) = &self.each {
            out.push(("/each".into(), e));
        }
        for (p, t) in self.request.texts() {
            out.push((format!("/request{p}"), t));
        }
        for (i, l) in self.learn.iter().enumerate() {
            out.push((format!("/learn/{i}/key"), &l.key));
        }
        if let Some(c) = &self.check {
            for (p, t) in c.request.texts() {
                out.push((format!("/check/request{p}"), t));
            }
            out.push(("/check/applied/equals".into(), &c.equals));
        }
        if let Some(b) = &self.batch {
            out.extend(b.texts());
        }
        out
    }

    /// Values of the step's outputs read from a response body (absent ones are left out).
    pub fn read_outputs(&self, body: &Value) -> IndexMap<String, Value> {
        self.outputs
            .iter()
            .filter_map(|(name, path)| {
                path.first(body)
                    .filter(|v| !v.is_null())
                    .map(|v| (name.clone(), v.clone()))
            })
            .collect()
    }
}

impl Learn {
    fn compile(
        spec: &LearnSpec,
        pointer: &str,
        templates: &mut Templates,
        problems: &mut Problems,
    ) -> Option<Learn> {
        let key = templates
            .text(&spec.key)
            .map_err(|e| e.report("template error", &format!("{pointer}/key"), problems))
            .ok();
        let value = JsonPath::compile(&spec.value, &format!("{pointer}/value"), problems);
        Some(Learn {
            resolver: spec.resolver.clone(),
            by: spec.by.clone(),
            key: key?,
            value: value?,
        })
    }
}

/// Whether `source` has an `=` that is no part of `==`, `!=`, `<=` or `>=` (outside quotes).
fn lone_equals(source: &str) -> bool {
    let chars: Vec<char> = source.chars().collect();
    let mut quote = None;
    for (i, c) in chars.iter().enumerate() {
        match (quote, c) {
            (Some(q), c) if *c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(*c),
            (None, '=') => {
                let before = i.checked_sub(1).and_then(|j| chars.get(j));
                let after = chars.get(i + 1);
                let paired = matches!(before, Some('=' | '!' | '<' | '>')) || after == Some(&'=');
                if !paired {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

impl RequestTemplate {
    /// The path up to its first template, e.g. `/api/v2/users/` of `/api/v2/users/{{ id }}`.
    pub fn literal_prefix(&self) -> String {
        self.path
            .iter()
            .map_while(|part| match part {
                PathPart::Literal(text) => Some(text.as_str()),
                PathPart::Value(..) => None,
            })
            .collect()
    }

    pub fn compile(
        spec: &RequestSpec,
        pointer: &str,
        templates: &mut Templates,
        problems: &mut Problems,
    ) -> Option<RequestTemplate> {
        let mut ok = true;
        let mut path = Vec::new();
        if !spec.path.starts_with('/') {
            problems.at(&format!("{pointer}/path"), "a path starts with `/`");
        }
        for part in split_path(&spec.path) {
            match part {
                Ok(lit) => path.push(PathPart::Literal(lit.to_owned())),
                Err(expr) => {
                    // A part is compiled alone: its problems are placed in the whole path.
                    let start = expr.as_ptr() as usize - spec.path.as_ptr() as usize;
                    match templates.text(expr) {
                        Ok(t) => path.push(PathPart::Value(t, expr.to_owned())),
                        Err(e) => {
                            e.within(start).report(
                                "template error",
                                &format!("{pointer}/path"),
                                problems,
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
        let mut text = |s: &str, at: String, problems: &mut Problems| match templates.text(s) {
            Ok(t) => Some(t),
            Err(e) => {
                e.report("template error", &at, problems);
                ok = false;
                None
            }
        };
        let mut pairs = |map: &IndexMap<String, crate::mapping::spec::Scalar>,
                         what: &str,
                         problems: &mut Problems| {
            let mut out = Vec::new();
            for (k, v) in map {
                let src = match v.to_json() {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                if let Some(t) = text(&src, format!("{pointer}/{what}/{k}"), problems) {
                    out.push((k.clone(), t));
                }
            }
            out
        };
        let query = pairs(&spec.query, "query", problems);
        let headers = pairs(&spec.headers, "headers", problems);
        let body = spec
            .body
            .as_ref()
            .map(|b| compile_body(b, &format!("{pointer}/body"), templates, problems));
        (ok && body.as_ref().is_none_or(Option::is_some)).then(|| RequestTemplate {
            method: spec.method,
            path,
            query,
            headers,
            body: body.flatten(),
        })
    }

    /// Renders the request in a scope.
    pub fn render(&self, templates: &Templates, scope: &Scope) -> Result<Request, RenderError> {
        let mut path = String::with_capacity(64);
        let mut endpoint = String::with_capacity(64);
        // The unencoded text of the segment being built, and the template part in it, if any.
        let mut segment = String::new();
        let mut templated: Option<&str> = None;
        let check = |segment: &str, templated: Option<&str>| match templated {
            Some(src) if is_moving_segment(segment) => Err(RenderError(format!(
                "the path part {src:?} gives the path segment {segment:?}, which would change the \
                 endpoint (empty, `.` and `..`, also percent-encoded, are refused)"
            ))),
            _ => Ok(()),
        };
        for part in &self.path {
            match part {
                PathPart::Literal(s) => {
                    path.push_str(s);
                    endpoint.push_str(s);
                    for (i, piece) in s.split('/').enumerate() {
                        if i > 0 {
                            check(&segment, templated.take())?;
                            segment.clear();
                        }
                        segment.push_str(piece);
                    }
                }
                PathPart::Value(t, src) => match templates.eval(t, scope)? {
                    Some(v) => {
                        let text = scalar_text(v);
                        push_path_segment(&mut path, &text);
                        endpoint.push_str("{id}");
                        segment.push_str(&text);
                        templated = Some(src);
                    }
                    None => return Err(RenderError(format!("the path part {src:?} has no value"))),
                },
            }
        }
        check(&segment, templated)?;
        let pairs = |list: &[(String, Text)]| -> Result<IndexMap<String, String>, RenderError> {
            let mut out = IndexMap::new();
            for (k, t) in list {
                if let Some(v) = templates.eval(t, scope)? {
                    out.insert(k.clone(), scalar_text(v));
                }
            }
            Ok(out)
        };
        let body = match &self.body {
            None => None,
            Some(b) => Some(render_body(b, templates, scope)?.unwrap_or(Value::Null)),
        };
        Ok(Request {
            method: self.method,
            path,
            endpoint,
            query: pairs(&self.query)?,
            headers: pairs(&self.headers)?,
            body,
        })
    }

    /// Every compiled string with its pointer relative to the request.
    pub fn texts(&self) -> Texts<'_> {
        let mut out: Texts = Vec::new();
        for p in &self.path {
            if let PathPart::Value(t, _) = p {
                out.push(("/path".into(), t));
            }
        }
        for (k, t) in &self.query {
            out.push((format!("/query/{k}"), t));
        }
        for (k, t) in &self.headers {
            out.push((format!("/headers/{k}"), t));
        }
        if let Some(b) = &self.body {
            body_texts(b, "/body".into(), &mut out);
        }
        out
    }
}

fn body_texts<'a>(b: &'a Body, at: String, out: &mut Texts<'a>) {
    match b {
        Body::Fixed(_) => {}
        Body::Text(t) => out.push((at, t)),
        Body::Object(entries) => {
            for (k, v) in entries {
                body_texts(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Body::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                body_texts(v, format!("{at}/{i}"), out);
            }
        }
    }
}

/// A scalar as text for paths, queries and headers (strings as they are; others as JSON).
fn scalar_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Splits `/a/{{ x }}/b` into literal parts (`Ok`) and expression sources (`Err`).
fn split_path(path: &str) -> Vec<Result<&str, &str>> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Ok(&rest[..start]));
        }
        match rest[start..].find("}}") {
            Some(end) => {
                out.push(Err(&rest[start..start + end + 2]));
                rest = &rest[start + end + 2..];
            }
            None => {
                out.push(Err(&rest[start..]));
                rest = "";
            }
        }
    }
    if !rest.is_empty() {
        out.push(Ok(rest));
    }
    out
}

fn has_template(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("{{") || s.contains("{%"),
        Value::Array(a) => a.iter().any(has_template),
        Value::Object(o) => o.values().any(has_template),
        _ => false,
    }
}

fn compile_body(
    v: &Value,
    pointer: &str,
    templates: &mut Templates,
    problems: &mut Problems,
) -> Option<Body> {
    if !has_template(v) {
        return Some(Body::Fixed(v.clone()));
    }
    match v {
        Value::String(s) => match templates.text(s) {
            Ok(t) => Some(Body::Text(t)),
            Err(e) => {
                e.report("template error", pointer, problems);
                None
            }
        },
        Value::Array(items) => {
            let compiled: Vec<Option<Body>> = items
                .iter()
                .enumerate()
                .map(|(i, x)| compile_body(x, &format!("{pointer}/{i}"), templates, problems))
                .collect();
            compiled
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .map(Body::Array)
        }
        Value::Object(map) => {
            let compiled: Vec<Option<(String, Body)>> = map
                .iter()
                .map(|(k, x)| {
                    let p = format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1"));
                    compile_body(x, &p, templates, problems).map(|b| (k.clone(), b))
                })
                .collect();
            compiled
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .map(Body::Object)
        }
        other => Some(Body::Fixed(other.clone())),
    }
}

fn render_body(
    b: &Body,
    templates: &Templates,
    scope: &Scope,
) -> Result<Option<Value>, RenderError> {
    Ok(match b {
        Body::Fixed(v) => Some(v.clone()),
        Body::Text(t) => templates.eval(t, scope)?,
        Body::Object(entries) => {
            let mut m = Map::with_capacity(entries.len());
            for (k, v) in entries {
                if let Some(x) = render_body(v, templates, scope)? {
                    m.insert(k.clone(), x);
                }
            }
            Some(Value::Object(m))
        }
        Body::Array(items) => {
            let mut a = Vec::with_capacity(items.len());
            for v in items {
                if let Some(x) = render_body(v, templates, scope)? {
                    a.push(x);
                }
            }
            Some(Value::Array(a))
        }
    })
}

/// A span written as a number and a unit (`500ms`, `90s`, `30m`, `24h`, `7d`); `None` when it
/// is not one, or is zero.
fn parse_span(text: &str) -> Option<std::time::Duration> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let seconds = |per: u64| n.checked_mul(per).map(std::time::Duration::from_secs);
    let span = match unit {
        "ms" => Some(std::time::Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => None,
    }?;
    (!span.is_zero()).then_some(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_a_number_and_a_unit() {
        use std::time::Duration;
        assert_eq!(parse_span("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_span("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_span("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_span("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_span("500ms"), Some(Duration::from_millis(500)));
        for bad in [
            "",
            "h",
            "24",
            "0h",
            "1w",
            "-1h",
            "1.5h",
            " 1h",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_span(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_lone_equals_sign_is_told_from_comparisons() {
        assert!(lone_equals("status = 'open'"));
        assert!(lone_equals("a=1"));
        for fine in [
            "status == 'open'",
            "a != b",
            "a <= 1 and b >= 2",
            "x == '='",
            "y in ['=']",
        ] {
            assert!(!lone_equals(fine), "{fine}");
        }
    }

    #[test]
    fn paths_split_into_literals_and_expressions() {
        assert_eq!(
            split_path("/api/v2/users/{{ id }}/events"),
            vec![Ok("/api/v2/users/"), Err("{{ id }}"), Ok("/events")]
        );
        assert_eq!(split_path("/a"), vec![Ok("/a")]);
    }

    #[test]
    fn a_page_says_what_comes_after_it() {
        let spec = |more: Option<&str>| PagesSpec {
            next: "$.links.next".into(),
            more: more.map(str::to_owned),
            most: 5,
        };
        let mut problems = Problems::detached();
        let cursor =
            Pages::compile(&spec(Some("$.meta.has_more")), "/p", &mut problems).expect("compiles");
        let offset = Pages::compile(&spec(None), "/p", &mut problems).expect("compiles");
        let page = |more: Value, next: Value| serde_json::json!({"meta": {"has_more": more}, "links": {"next": next}});
        let link = || Value::from("https://acme.zendesk.com/api/v2/x?page[after]=a");
        let next = NextPage::Link("https://acme.zendesk.com/api/v2/x?page[after]=a".into());
        assert_eq!(cursor.after(&page(true.into(), link())), next);
        assert_eq!(cursor.after(&page(false.into(), link())), NextPage::End);
        assert_eq!(
            cursor.after(&page(true.into(), Value::Null)),
            NextPage::Unreachable
        );
        assert_eq!(cursor.after(&page(Value::Null, Value::Null)), NextPage::End);
        assert_eq!(offset.after(&page(Value::Null, link())), next);
        assert_eq!(offset.after(&page(Value::Null, "".into())), NextPage::End);
        assert_eq!(offset.after(&serde_json::json!({})), NextPage::End);

        assert!(problems.is_empty());
        let bad = PagesSpec {
            most: 0,
            ..spec(Some("meta"))
        };
        assert!(Pages::compile(&bad, "/p", &mut problems).is_none());
        assert_eq!(
            problems.len(),
            2,
            "the `more` path and `most` are both reported"
        );
    }
}
