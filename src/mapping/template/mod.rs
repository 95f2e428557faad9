//! Templates and expressions over event data (minijinja, strict, no loader).
//!
//! Every string in a mapping that contains `{{` is compiled once, when the files load, into a
//! [`Text`]. A string that is one expression alone (`"{{ user_id }}"`) keeps the expression's
//! type, so a body leaf can be a number, a list or an object; a string with text around its
//! expressions renders to a string. Plain references (`{{ email }}`, `{{ settings.source }}`)
//! skip minijinja entirely. Event data is only ever data: it is passed to templates as values,
//! never compiled.
//!
//! What a template can see is a [`Scope`]: the event's top-level keys (in `fields`), or the
//! action's fields, `settings`, `message` (the whole event), `steps` (outputs of earlier steps),
//! `item` (in `each`) and `key` (in resolver requests). Values that only delivery can know (a
//! lookup's answer, an earlier step's output) are [`Lookups`] and step outputs: when they are not
//! known yet, a placeholder stands in for them and the renderer reports what is needed.

mod fields;
mod native;
mod registry;
mod repeat;
mod strict;
mod uses;

use crate::mapping::diagnostic::Problems;
use crate::mapping::event::member;
pub use fields::FieldValues;
use indexmap::IndexMap;
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value as Mj};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
pub use strict::reference_offset;

/// How many operators and filters one template may chain. minijinja builds a tree as deep as a
/// chain is long and walks it recursively, so a longer one could exhaust the stack.
pub(crate) const MAX_OPERATORS: usize = 500;

/// Names a template may not use for fields: the scope's own.
pub const RESERVED: [&str; 6] = ["settings", "message", "steps", "item", "key", "__zdmap"];

/// A compiled string of a mapping.
#[derive(Clone, Debug)]
pub enum Text {
    /// No template syntax: the string itself.
    Literal(String),
    /// `{{ a.b.c }}`: looked up directly; `fallback` is the compiled expression for names the
    /// fast path does not serve (`steps`).
    Ref { path: Vec<String>, fallback: String },
    /// `{{ expr }}` alone: the expression's value, with its type; `native` when the expression
    /// is in the fast path's subset.
    Expr {
        name: String,
        native: Option<native::Native>,
    },
    /// Text with expressions: rendered to a string.
    Render { name: String },
}

/// A template that did not compile, with the offending place of the template when known, and
/// the other problems found in the same template.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub message: String,
    /// 0-based byte offset in the template source, when known.
    pub offset: Option<usize>,
    /// Further problems of the same template (unknown names after the first), in order.
    pub also: Vec<TemplateError>,
}

impl TemplateError {
    fn new(message: impl Into<String>, offset: Option<usize>) -> TemplateError {
        TemplateError {
            message: message.into(),
            offset,
            also: Vec::new(),
        }
    }

    fn at(message: impl Into<String>, offset: usize) -> TemplateError {
        TemplateError::new(message, Some(offset))
    }

    /// This problem and those of [`TemplateError::also`], in order.
    pub fn all(&self) -> impl Iterator<Item = &TemplateError> {
        std::iter::once(self).chain(self.also.iter())
    }

    /// The same problems with their offsets mapped by `f`.
    fn shifted(self, f: &dyn Fn(usize) -> usize) -> TemplateError {
        TemplateError {
            offset: self.offset.map(f),
            also: self.also.into_iter().map(|e| e.shifted(f)).collect(),
            ..self
        }
    }

    /// The same problems, in a string that holds the template `start` bytes into it.
    pub fn within(self, start: usize) -> TemplateError {
        self.shifted(&|o| o + start)
    }

    /// Reports each problem at its place inside the mapping's string at `pointer`, as `what`
    /// (`template error`).
    pub fn report(&self, what: &str, pointer: &str, problems: &mut Problems) {
        for e in self.all() {
            let message = format!("{what}: {}", e.message);
            match e.offset {
                Some(offset) => problems.at_offset(pointer, offset, message),
                None => problems.at(pointer, message),
            }
        }
    }
}

/// A template that failed while rendering for one event.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

impl From<Error> for RenderError {
    fn from(e: Error) -> Self {
        RenderError(describe(&e))
    }
}

fn describe(e: &Error) -> String {
    match e.detail() {
        Some(d) if e.kind() == ErrorKind::InvalidOperation => d.to_owned(),
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// The template environment of one loaded config: all compiled templates live here.
pub struct Templates {
    env: Environment<'static>,
    count: usize,
    /// The filters, tests and functions `env` registers, for the checks of each template.
    registry: registry::Registry,
    /// The settings a template may read (`settings.NAME`), once the destination declares them.
    settings: Option<Vec<String>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Templates({} compiled)", self.count)
    }
}

impl Default for Templates {
    fn default() -> Self {
        Templates::new()
    }
}

impl Templates {
    pub fn new() -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_recursion_limit(64);
        env.set_fuel(Some(100_000));
        // `none` renders as nothing, so "{{ a }} {{ b }}" with b missing gives "a ".
        env.set_formatter(|out, state, value| {
            if value.is_none() {
                Ok(())
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        env.add_function("resolve", |state: &State, name: &str, kwargs: Kwargs| {
            resolve(state, name, kwargs, true)
        });
        env.add_function(
            "try_resolve",
            |state: &State, name: &str, kwargs: Kwargs| resolve(state, name, kwargs, false),
        );
        env.add_filter("without", without);
        // Missing event data and none are the same thing to a mapping.
        env.add_test("none", |v: Mj| is_missing(&v));
        env.add_filter("snake_case", |s: &str| snake_case(s));
        env.add_filter("keys_as", keys_as);
        env.add_filter("field_type", |v: Mj| -> Result<&'static str, Error> {
            let v = serde_json::to_value(&v)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            Ok(field_type(std::slice::from_ref(&v)))
        });
        let registry = registry::Registry::of(&env);
        Templates {
            env,
            count: 0,
            registry,
            settings: None,
        }
    }

    /// Declares the settings templates compiled from now on may read: `settings.NAME` of another
    /// name is refused when the template compiles.
    pub(crate) fn declare_settings(&mut self, names: Vec<String>) {
        self.settings = Some(names);
    }

    /// Compiles a string of a mapping (`"{{ a }}"`, `"x {{ a }}"` or plain text).
    pub fn text(&mut self, source: &str) -> Result<Text, TemplateError> {
        if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
            return Ok(Text::Literal(source.to_owned()));
        }
        check_operators(source)?;
        if let Some(inner) = single_expression(source) {
            // Offsets in the wrapped template map back into `inner`, which is part of `source`.
            let prefix = "{% set __zdmap_value = (";
            let start = inner.as_ptr() as usize - source.as_ptr() as usize;
            let back = |o: usize| start + o.saturating_sub(prefix.len()).min(inner.len());
            // A parenthesis found at the end is the wrapper's, not the mapping's.
            let end = start + inner.len();
            let name = self
                .add(&format!("{prefix}{inner}) %}}"), back)
                .map_err(|e| match e.offset {
                    Some(o) if o == end => TemplateError {
                        message: e
                            .message
                            .replace("unexpected `)`", "unexpected end of the expression"),
                        ..e
                    },
                    _ => e,
                })?;
            if let Some(path) = plain_reference(inner) {
                return Ok(Text::Ref {
                    path,
                    fallback: name,
                });
            }
            return Ok(Text::Expr {
                name,
                native: native::compile(inner),
            });
        }
        let name = self.add(source, |o| o.min(source.len()))?;
        Ok(Text::Render { name })
    }

    /// Compiles a bare expression (`remove != true`), as used by `when` and `each`.
    pub fn expression(&mut self, source: &str) -> Result<Text, TemplateError> {
        if source.contains("{{") {
            return Err(TemplateError::new(
                "write the expression without `{{ }}`",
                source.find("{{"),
            ));
        }
        self.text(&format!("{{{{ {source} }}}}"))
            .map_err(|e| e.shifted(&|o| o.saturating_sub(3).min(source.len())))
    }

    /// Compiles `template`; `back` maps an offset in it to one in the mapping's string.
    fn add(
        &mut self,
        template: &str,
        back: impl Fn(usize) -> usize,
    ) -> Result<String, TemplateError> {
        if let Some(at) = repeat::repeated_list_literal(template) {
            return Err(TemplateError::at(
                "a list literal cannot be repeated with `*` in a mapping",
                back(at),
            ));
        }
        let name = format!("t{}", self.count);
        self.env
            .add_template_owned(name.clone(), template.to_owned())
            .map_err(|e| TemplateError::new(describe(&e), e.range().map(|r| back(r.start))))?;
        let mut problems = match self.env.get_template(&name) {
            Ok(t) => strict::check(&t, &self.registry, self.settings.as_deref(), &back),
            Err(e) => vec![TemplateError::new(describe(&e), None)],
        };
        if !problems.is_empty() {
            self.env.remove_template(&name);
            let first = problems.remove(0);
            return Err(TemplateError {
                also: problems,
                ..first
            });
        }
        self.count += 1;
        Ok(name)
    }

    /// The top-level names a text reads (for load-time checks).
    pub fn variables(&self, text: &Text) -> HashSet<String> {
        let name = match text {
            Text::Literal(_) => return HashSet::new(),
            Text::Ref { path, .. } => return path.iter().take(1).cloned().collect(),
            Text::Expr { name, .. } | Text::Render { name } => name,
        };
        let globals: HashSet<&str> = self.env.globals().map(|(n, _)| n).collect();
        match self.env.get_template(name) {
            Ok(t) => t
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| !globals.contains(v.as_str()) && v != "__zdmap_value")
                .collect(),
            Err(_) => HashSet::new(),
        }
    }

    /// The dotted names a text reads (`steps.upsert.user_id`), for load-time checks.
    pub(crate) fn nested_variables(&self, text: &Text) -> Vec<String> {
        match text {
            Text::Literal(_) => Vec::new(),
            Text::Ref { path, .. } => vec![path.join(".")],
            Text::Expr { name, .. } | Text::Render { name } => match self.env.get_template(name) {
                Ok(t) => t.undeclared_variables(true).into_iter().collect(),
                Err(_) => Vec::new(),
            },
        }
    }

    /// The `resolve('NAME', by=...)` calls of a text with literal names: the name and the keys given.
    pub(crate) fn resolve_calls(&self, text: &Text) -> Vec<(String, Vec<String>)> {
        let source = match text {
            Text::Expr { name, .. } | Text::Render { name } => match self.env.get_template(name) {
                Ok(t) => t.source().to_owned(),
                Err(_) => return Vec::new(),
            },
            _ => return Vec::new(),
        };
        resolve_calls(&source)
    }

    /// Evaluates a text in a scope. `None` means "no value": the key is dropped.
    pub fn eval(&self, text: &Text, scope: &Scope) -> Result<Option<Value>, RenderError> {
        Ok(self.eval_borrowed(text, scope)?.map(Cow::into_owned))
    }

    /// Evaluates a text for its truth (`when`).
    pub fn truthy(&self, text: &Text, scope: &Scope) -> Result<bool, RenderError> {
        Ok(native::truthy(self.eval_borrowed(text, scope)?.as_deref()))
    }

    /// Evaluates a text, borrowing what it reads from the scope or the text itself as it is.
    fn eval_borrowed<'s>(
        &self,
        text: &'s Text,
        scope: &'s Scope,
    ) -> Result<Option<Cow<'s, Value>>, RenderError> {
        match text {
            Text::Literal(s) => Ok(Some(Cow::Owned(Value::String(s.clone())))),
            Text::Ref { path, fallback } => match scope.get_path(path) {
                Some(found) => Ok(found.filter(|v| !v.is_null())),
                None => Ok(self.eval_expr(fallback, scope)?.map(Cow::Owned)),
            },
            Text::Expr { name, native } => {
                if let Some(fast) = native
                    && let Ok(result) = fast.eval(scope)
                {
                    return result.map_err(RenderError);
                }
                Ok(self.eval_expr(name, scope)?.map(Cow::Owned))
            }
            Text::Render { name } => {
                let out = self.env.get_template(name)?.render(scope.to_mj())?;
                Ok((!out.is_empty()).then_some(Cow::Owned(Value::String(out))))
            }
        }
    }

    fn eval_expr(&self, name: &str, scope: &Scope) -> Result<Option<Value>, RenderError> {
        let tmpl = self.env.get_template(name)?;
        let captured = tmpl.render_captured(scope.to_mj())?;
        let value = captured.state().lookup("__zdmap_value").unwrap_or_default();
        if is_missing(&value) {
            return Ok(None);
        }
        serde_json::to_value(&value)
            .map(Some)
            .map_err(|e| RenderError(format!("the value cannot be turned into JSON: {e}")))
    }
}

/// Refuses a template that chains more than [`MAX_OPERATORS`] operators and filters, at the first
/// one past the limit. Counted inside `{{ }}` and `{% %}`, outside string literals.
fn check_operators(source: &str) -> Result<(), TemplateError> {
    const WORDS: [&str; 7] = ["and", "or", "not", "if", "else", "is", "in"];
    let mut count = 0;
    let mut in_tag = false;
    let mut quote: Option<char> = None;
    let mut word_start: Option<usize> = None;
    let mut chars = source.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|(_, n)| *n);
        if !in_tag {
            if c == '{' && matches!(next, Some('{' | '%')) {
                in_tag = true;
                chars.next();
            }
            continue;
        }
        if let Some(q) = quote {
            if c == '\\' {
                chars.next();
            } else if c == q {
                quote = None;
            }
            continue;
        }
        let in_word = c.is_alphanumeric() || c == '_';
        match (in_word, word_start) {
            (true, None) => word_start = Some(i),
            (false, Some(start)) => {
                word_start = None;
                count += usize::from(WORDS.contains(&&source[start..i]));
            }
            _ => {}
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '}' | '%' if next == Some('}') => {
                in_tag = false;
                chars.next();
            }
            '|' | '.' | '+' | '-' | '*' | '/' | '%' | '~' | '=' | '<' | '>' | '!' | '(' | '[' => {
                count += 1
            }
            _ => {}
        }
        if count > MAX_OPERATORS {
            return Err(TemplateError::at(
                format!("the template chains more than {MAX_OPERATORS} operators and filters"),
                i,
            ));
        }
    }
    Ok(())
}

/// Finds `resolve('name', a=..., b=...)` calls in template source.
fn resolve_calls(source: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("resolve(") {
        rest = &rest[i + "resolve(".len()..];
        let trimmed = rest.trim_start();
        let Some(quote) = trimmed.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            continue;
        };
        let Some(end) = trimmed[1..].find(quote) else {
            break;
        };
        let name = trimmed[1..1 + end].to_owned();
        let mut keys = Vec::new();
        let mut depth = 1;
        let bytes: Vec<char> = trimmed[1 + end + 1..].chars().collect();
        let mut ident = String::new();
        let mut j = 0;
        while j < bytes.len() && depth > 0 {
            let c = bytes[j];
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                '=' if depth == 1
                    && bytes.get(j + 1) != Some(&'=')
                    && j > 0
                    && !"=!<>".contains(bytes[j - 1]) =>
                {
                    let k = ident.trim().to_owned();
                    if !k.is_empty() {
                        keys.push(k);
                    }
                }
                _ => {}
            }
            if c.is_alphanumeric() || c == '_' {
                ident.push(c);
            } else if c != ' ' && c != '=' {
                ident.clear();
            }
            j += 1;
        }
        out.push((name, keys));
    }
    out
}

/// `"{{ expr }}"` with nothing around it: the inner expression.
fn single_expression(source: &str) -> Option<&str> {
    let t = source.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    if inner.contains("{{") || inner.contains("}}") || t.contains("{%") || t.contains("{#") {
        return None;
    }
    Some(inner.trim())
}

/// `a.b.c` made of plain names (no keywords): a reference the fast path can serve.
fn plain_reference(expr: &str) -> Option<Vec<String>> {
    const KEYWORDS: [&str; 11] = [
        "true", "false", "none", "None", "True", "False", "and", "or", "not", "in", "is",
    ];
    let parts: Vec<&str> = expr.split('.').collect();
    let ok = parts.iter().all(|p| {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !KEYWORDS.contains(p)
    });
    ok.then(|| parts.into_iter().map(str::to_owned).collect())
}

/// `planName`, `Plan Name` and `plan-name` all become `plan_name`.
pub fn snake_case(s: &str) -> String {
    let already = !s.starts_with('_')
        && !s.ends_with('_')
        && !s.contains("__")
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if already {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 4);
    let mut prev: Option<char> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() {
            if c.is_uppercase() {
                let boundary = match prev {
                    Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                    Some(p) if p.is_uppercase() => chars.peek().is_some_and(|n| n.is_lowercase()),
                    _ => false,
                };
                if boundary && !out.is_empty() && !out.ends_with('_') {
                    out.push('_');
                }
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
        prev = Some(c);
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// `{{ traits | keys_as(existing) }}`: each key that is in `existing` is kept as it is,
/// every other key becomes snake_case. Used for custom fields whose keys may already exist.
fn keys_as(map: Mj, existing: Mj) -> Result<Mj, Error> {
    let existing: HashSet<String> = existing
        .try_iter()?
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let mut out: IndexMap<Mj, Mj> = IndexMap::new();
    for key in map.try_iter()? {
        let Some(k) = key.as_str() else { continue };
        let value = map.get_item(&key)?;
        let new_key = if existing.contains(k) {
            k.to_owned()
        } else {
            snake_case(k)
        };
        out.insert(Mj::from(new_key), value);
    }
    Ok(Mj::from_object(out))
}

/// The type of Zendesk custom field these values need: `checkbox` (all booleans), `integer`,
/// `decimal` (all numbers), `date` (all `YYYY-MM-DD`), else `text`. As a filter,
/// `{{ value | field_type }}` for one value.
pub fn field_type(values: &[Value]) -> &'static str {
    let all = |test: fn(&Value) -> bool| !values.is_empty() && values.iter().all(test);
    if all(Value::is_boolean) {
        "checkbox"
    } else if all(|v| v.is_i64() || v.is_u64()) {
        "integer"
    } else if all(Value::is_number) {
        "decimal"
    } else if all(|v| v.as_str().is_some_and(is_date)) {
        "date"
    } else {
        "text"
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// `{{ list | without(other) }}`: the elements of a list (or keys of a map) not in `other`.
fn without(items: Mj, other: Mj) -> Result<Mj, Error> {
    let other: Vec<Mj> = other.try_iter()?.collect();
    Ok(Mj::from(
        items
            .try_iter()?
            .filter(|x| !other.contains(x))
            .collect::<Vec<_>>(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Scope

/// What a template can see. Cheap to clone; built once per event (fields) or per step.
#[derive(Clone, Debug)]
pub struct Scope(Arc<ScopeData>);

#[derive(Debug, Default)]
struct ScopeData {
    /// Top-level names: the event's keys (field templates) or the action's fields (steps).
    vars: Vars,
    settings: Option<Arc<Value>>,
    message: Option<Arc<Value>>,
    steps: Option<Arc<StepOutputs>>,
    item: Option<Arc<Value>>,
    key: Option<Arc<Value>>,
    lookups: Option<Arc<Lookups>>,
}

#[derive(Debug, Default)]
enum Vars {
    #[default]
    None,
    /// An event: every top-level key is a name; a missing key is `none`.
    Event(Arc<Value>),
    /// An action's fields: a declared one without a value is `none`, an undeclared one is
    /// undefined (an error under strict undefined).
    Named(Arc<FieldValues>),
}

/// Builds a [`Scope`].
#[derive(Debug, Default)]
pub struct ScopeBuilder(ScopeData);

impl Scope {
    pub fn builder() -> ScopeBuilder {
        ScopeBuilder::default()
    }

    /// Looks a plain path up without minijinja. `None`: not served here (use the expression).
    /// `Some(None)`: no value.
    fn get_path(&self, path: &[String]) -> Option<Option<Cow<'_, Value>>> {
        let (first, rest) = path.split_first()?;
        let root: &Value = match (first.as_str(), &self.0.vars) {
            ("settings", _) => self.0.settings.as_deref()?,
            ("message", _) => self.0.message.as_deref()?,
            ("item", _) => self.0.item.as_deref()?,
            ("key", _) => self.0.key.as_deref()?,
            ("steps", _) => return self.0.steps.as_deref()?.get_path(rest),
            (name, Vars::Event(ev)) => match ev.as_object().and_then(|m| member(m, name)) {
                Some(v) => v,
                None => return Some(None),
            },
            (name, Vars::Named(fields)) => match fields.get(name)? {
                Some(v) => v,
                None => return Some(None),
            },
            (_, Vars::None) => return None,
        };
        let mut node = root;
        for seg in rest {
            node = match node {
                Value::Object(m) => match member(m, seg) {
                    Some(v) => v,
                    None => return Some(None),
                },
                _ => return Some(None),
            };
        }
        Some(Some(Cow::Borrowed(node)))
    }

    fn lookups(&self) -> Option<&Lookups> {
        self.0.lookups.as_deref()
    }

    fn to_mj(&self) -> Mj {
        Mj::from_dyn_object(Arc::new(ScopeObject(self.clone())))
    }
}

impl ScopeBuilder {
    pub fn event(mut self, event: Arc<Value>) -> Self {
        self.0.vars = Vars::Event(event);
        self
    }
    /// The action's fields for this event (declared ones without a value are `none`).
    pub fn fields(mut self, values: Arc<FieldValues>) -> Self {
        self.0.vars = Vars::Named(values);
        self
    }
    pub fn settings(mut self, settings: Arc<Value>) -> Self {
        self.0.settings = Some(settings);
        self
    }
    pub fn message(mut self, message: Arc<Value>) -> Self {
        self.0.message = Some(message);
        self
    }
    pub fn steps(mut self, steps: Arc<StepOutputs>) -> Self {
        self.0.steps = Some(steps);
        self
    }
    pub fn item(mut self, item: Value) -> Self {
        self.0.item = Some(Arc::new(item));
        self
    }
    pub fn key(mut self, key: Value) -> Self {
        self.0.key = Some(Arc::new(key));
        self
    }
    pub fn lookups(mut self, lookups: Arc<Lookups>) -> Self {
        self.0.lookups = Some(lookups);
        self
    }
    pub fn build(self) -> Scope {
        Scope(Arc::new(self.0))
    }
}

#[derive(Debug)]
struct ScopeObject(Scope);

impl Object for ScopeObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Mj) -> Option<Mj> {
        let d = &self.0.0;
        let name = key.as_str()?;
        let json = |v: &Arc<Value>| json_to_mj(Root::Json(v.clone()), Vec::new());
        match name {
            "settings" => d.settings.as_ref().map(json),
            "message" => d.message.as_ref().map(json),
            "item" => d.item.as_ref().map(json),
            "key" => d.key.as_ref().map(json),
            "steps" => d.steps.clone().map(Mj::from_dyn_object),
            "__zdmap" => d.lookups.clone().map(Mj::from_dyn_object),
            _ => match &d.vars {
                Vars::Event(ev) => Some(match ev.as_object().and_then(|m| member(m, name)) {
                    Some(_) => json_to_mj(Root::Json(ev.clone()), vec![Seg::Key(name.into())]),
                    None => Mj::from_object(Missing),
                }),
                Vars::Named(fields) => {
                    let index = fields.position(name)?;
                    Some(match fields.value_at(index) {
                        Some(_) => json_to_mj(Root::Field(fields.clone(), index), Vec::new()),
                        None => Mj::from(()),
                    })
                }
                Vars::None => None,
            },
        }
    }
}

#[derive(Clone, Debug)]
enum Seg {
    Key(Arc<str>),
    Index(usize),
}

/// Where a [`JsonRef`] starts: a shared JSON value, or one field's value.
#[derive(Clone, Debug)]
enum Root {
    Json(Arc<Value>),
    Field(Arc<FieldValues>, usize),
}

impl Root {
    fn value(&self) -> &Value {
        match self {
            Root::Json(v) => v,
            Root::Field(fields, i) => fields.value_at(*i).unwrap_or(&Value::Null),
        }
    }
}

/// A JSON node seen from minijinja without copying: a root and a path into it.
#[derive(Debug)]
struct JsonRef {
    root: Root,
    path: Vec<Seg>,
}

impl JsonRef {
    fn target(&self) -> &Value {
        let mut node = self.root.value();
        for seg in &self.path {
            node = match (seg, node) {
                (Seg::Key(k), Value::Object(m)) => member(m, k).unwrap_or(&Value::Null),
                (Seg::Index(i), Value::Array(a)) => a.get(*i).unwrap_or(&Value::Null),
                _ => &Value::Null,
            };
        }
        node
    }

    fn child(&self, seg: Seg) -> Mj {
        let mut path = self.path.clone();
        path.push(seg);
        json_to_mj(self.root.clone(), path)
    }
}

fn json_to_mj(root: Root, path: Vec<Seg>) -> Mj {
    let r = JsonRef { root, path };
    match r.target() {
        Value::Null if r.path.is_empty() => Mj::from(()),
        Value::Null => Mj::from_object(Missing),
        Value::Bool(b) => Mj::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Mj::from(i)
            } else if let Some(u) = n.as_u64() {
                Mj::from(u)
            } else {
                Mj::from(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => Mj::from(s.as_str()),
        Value::Array(_) | Value::Object(_) => Mj::from_object(r),
    }
}

impl Object for JsonRef {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.target() {
            Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &Mj) -> Option<Mj> {
        match self.target() {
            // A missing key of event data is falsy and empty, not an error: events vary.
            Value::Object(m) => {
                let k = key.as_str()?;
                Some(if member(m, k).is_some() {
                    self.child(Seg::Key(k.into()))
                } else {
                    Mj::from_object(Missing)
                })
            }
            Value::Array(a) => {
                let i = key.as_i64()?;
                let i = if i < 0 { a.len() as i64 + i } else { i };
                let i = usize::try_from(i).ok().filter(|i| *i < a.len())?;
                Some(self.child(Seg::Index(i)))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.target() {
            Value::Object(m) => {
                Enumerator::Values(m.keys().map(|k| Mj::from(k.as_str())).collect())
            }
            Value::Array(a) => Enumerator::Seq(a.len()),
            _ => Enumerator::Empty,
        }
    }
}

/// Event data that is not there (an absent key or a JSON null): false, renders as nothing, gives
/// no value as a result, and any attribute of it is missing too, so `context.traits.email` works
/// on events without `context`. (Test for it with `if x`, not `x is none`.)
#[derive(Debug)]
struct Missing;

impl Object for Missing {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }
    fn get_value(self: &Arc<Self>, _key: &Mj) -> Option<Mj> {
        Some(Mj::from_object(Missing))
    }
    fn is_true(self: &Arc<Self>) -> bool {
        false
    }
    fn render(self: &Arc<Self>, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}

fn is_missing(v: &Mj) -> bool {
    v.is_undefined() || v.is_none() || v.downcast_object_ref::<Missing>().is_some()
}

// ---------------------------------------------------------------------------------------------
// Values only delivery knows: lookups and step outputs

/// What a `resolve()` call asks for: a resolver and its keys in the order given (`by`, value).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct LookupNeed {
    pub resolver: String,
    pub keys: Vec<(String, String)>,
}

impl std::fmt::Display for LookupNeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(", self.resolver)?;
        for (i, (by, key)) in self.keys.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{by}={key:?}")?;
        }
        f.write_str(")")
    }
}

/// The answer to a lookup, once delivery has it.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Found(Value),
    NotFound,
}

/// Per resolver, its lookups in order (`by`), each with whether its key is the value itself (a
/// direct id, `by: id` without a request).
pub(crate) type DirectIds = HashMap<String, Vec<(String, bool)>>;

/// The lookups of one render: answers known so far, and what was asked without an answer.
#[derive(Debug, Default)]
pub struct Lookups {
    answers: HashMap<LookupNeed, Answer>,
    /// Lookups answered without any request: a call whose first key, in its resolver's order,
    /// is a direct id gets that id (as delivery does).
    direct: Arc<DirectIds>,
    asked: Mutex<Vec<LookupNeed>>,
    /// `resolve` calls whose answer is "not found" (an error for the render).
    unfound: Mutex<Vec<LookupNeed>>,
}

impl Lookups {
    pub fn new(answers: HashMap<LookupNeed, Answer>) -> Lookups {
        Lookups {
            answers,
            direct: Arc::default(),
            asked: Mutex::new(Vec::new()),
            unfound: Mutex::new(Vec::new()),
        }
    }

    /// The first `resolve` (not `try_resolve`) of the render whose lookup found nothing: the
    /// record the step needs does not exist (yet).
    pub fn first_unfound(&self) -> Option<LookupNeed> {
        self.unfound.lock().ok().and_then(|u| u.first().cloned())
    }

    /// No answers yet, but direct ids answer themselves (a preview).
    pub fn offline(direct: Arc<DirectIds>) -> Lookups {
        Lookups {
            direct,
            ..Lookups::default()
        }
    }

    /// The id a lookup names directly: when the first of its keys in the resolver's order is a
    /// direct id, that key (a number when it reads as one).
    fn direct_answer(&self, need: &LookupNeed) -> Option<Value> {
        let order = self.direct.get(&need.resolver)?;
        let (by, direct) = order
            .iter()
            .find(|(by, _)| need.keys.iter().any(|(k, _)| k == by))?;
        let key = &need.keys.iter().find(|(k, _)| k == by)?.1;
        direct.then(|| {
            key.parse::<u64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(key.clone()))
        })
    }

    /// The lookups asked for that have no answer yet, in order, without repeats.
    pub fn missing(&self) -> Vec<LookupNeed> {
        self.asked.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Like [`Lookups::missing`], for a last look: what was asked is handed over, not copied.
    pub(crate) fn into_missing(self) -> Vec<LookupNeed> {
        self.asked.into_inner().unwrap_or_default()
    }

    /// The placeholder that stands for a lookup without an answer.
    pub fn placeholder(index: usize) -> String {
        format!("__zdmap_lookup_{index}__")
    }

    fn ask(&self, need: LookupNeed, required: bool) -> Result<Mj, Error> {
        match self.answer(need, required) {
            Ok(Some(v)) => Ok(json_to_mj(Root::Json(Arc::new(v)), Vec::new())),
            Ok(None) => Ok(Mj::from(())),
            Err(message) => Err(Error::new(ErrorKind::InvalidOperation, message)),
        }
    }
}

impl Object for Lookups {}

/// `resolve('user', external_id=x, email=y)`: the answer, or a placeholder and a recorded need.
/// Finding nothing is an error for `resolve` and `none` for `try_resolve`.
fn resolve(state: &State, resolver: &str, kwargs: Kwargs, required: bool) -> Result<Mj, Error> {
    let mut keys = Vec::new();
    for by in kwargs.args() {
        let v: Mj = kwargs.get(by)?;
        if is_missing(&v) {
            continue;
        }
        let s = match v.as_str() {
            Some(s) => s.to_owned(),
            None => v.to_string(),
        };
        if !s.is_empty() {
            keys.push((by.to_owned(), s));
        }
    }
    if keys.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("resolve('{resolver}', ...) has no key with a value"),
        ));
    }
    let need = LookupNeed {
        resolver: resolver.to_owned(),
        keys,
    };
    let lookups = state
        .lookup("__zdmap")
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "resolve() cannot be used here"))?;
    let lookups = lookups
        .downcast_object_ref::<Lookups>()
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "resolve() cannot be used here"))?;
    lookups.ask(need, required)
}

/// Outputs of the steps that ran so far: step name → output name → value.
#[derive(Debug, Default)]
pub struct StepOutputs {
    pub outputs: IndexMap<String, IndexMap<String, Value>>,
    /// In a preview, outputs that are not known show as placeholders.
    pub symbolic: bool,
}

impl StepOutputs {
    pub fn placeholder(step: &str, output: &str) -> String {
        format!("__zdmap_step_{step}__{output}__")
    }

    /// `steps.STEP.OUTPUT` without minijinja, as [`Scope::get_path`] does for other names.
    /// `None` for what only minijinja answers (other shapes, unknown outputs).
    fn get_path(&self, path: &[String]) -> Option<Option<Cow<'_, Value>>> {
        let [step, output] = path else { return None };
        match self.outputs.get(step) {
            Some(outputs) => outputs.get(output).map(|v| Some(Cow::Borrowed(v))),
            None if self.symbolic => Some(Some(Cow::Owned(Value::String(
                StepOutputs::placeholder(step, output),
            )))),
            None => None,
        }
    }
}

impl Object for StepOutputs {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }
    fn get_value(self: &Arc<Self>, key: &Mj) -> Option<Mj> {
        let step = key.as_str()?;
        match self.outputs.get(step) {
            Some(outputs) => {
                let v = Value::Object(
                    outputs
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                );
                Some(json_to_mj(Root::Json(Arc::new(v)), Vec::new()))
            }
            None if self.symbolic => Some(Mj::from_object(SymbolicOutputs(step.to_owned()))),
            None => Some(Mj::from(())),
        }
    }
}

#[derive(Debug)]
struct SymbolicOutputs(String);

impl Object for SymbolicOutputs {
    fn get_value(self: &Arc<Self>, key: &Mj) -> Option<Mj> {
        Some(Mj::from(StepOutputs::placeholder(&self.0, key.as_str()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The fields `declared`, those in `given` with a value.
    fn field_values(declared: &[&str], given: &[(&str, Value)]) -> Arc<FieldValues> {
        let names: Arc<[String]> = declared.iter().map(|n| n.to_string()).collect();
        let mut values = FieldValues::new(names);
        for (name, value) in given {
            let at = declared.iter().position(|n| n == name).unwrap();
            values.set(at, value.clone());
        }
        Arc::new(values)
    }

    fn event_scope(v: Value) -> Scope {
        Scope::builder()
            .event(Arc::new(v))
            .settings(Arc::new(json!({"source": "zdmap"})))
            .build()
    }

    #[test]
    fn single_expressions_keep_their_type() {
        let mut t = Templates::new();
        let s = event_scope(json!({"traits": {"n": 3, "tags": ["a", "b"]}}));
        let n = t.text("{{ traits.n + 1 }}").unwrap();
        assert_eq!(t.eval(&n, &s).unwrap(), Some(json!(4)));
        let tags = t.text("{{ traits.tags }}").unwrap();
        assert!(matches!(tags, Text::Ref { .. }));
        assert_eq!(t.eval(&tags, &s).unwrap(), Some(json!(["a", "b"])));
        let mixed = t.text("n={{ traits.n }}").unwrap();
        assert_eq!(t.eval(&mixed, &s).unwrap(), Some(json!("n=3")));
    }

    #[test]
    fn missing_event_data_is_none_not_an_error() {
        let mut t = Templates::new();
        let s = event_scope(json!({"traits": {"first_name": "Ada"}}));
        let name = t
            .text("{{ [traits.first_name, traits.last_name] | select | join(' ') }}")
            .unwrap();
        assert_eq!(t.eval(&name, &s).unwrap(), Some(json!("Ada")));
        let missing = t.text("{{ traits.nope.deeper }}").unwrap();
        assert_eq!(t.eval(&missing, &s).unwrap(), None);
        let or = t.text("{{ traits.email or traits.first_name }}").unwrap();
        assert_eq!(t.eval(&or, &s).unwrap(), Some(json!("Ada")));
        let source = t.text("{{ settings.source }}").unwrap();
        assert_eq!(t.eval(&source, &s).unwrap(), Some(json!("zdmap")));
    }

    #[test]
    fn unknown_names_fail_in_named_scopes() {
        let mut t = Templates::new();
        let s = Scope::builder()
            .fields(field_values(&["email"], &[("email", json!("a@b.c"))]))
            .build();
        let bad = t.text("{{ emial ~ 'x' }}").unwrap();
        assert!(t.eval(&bad, &s).is_err());
        assert_eq!(t.variables(&bad), HashSet::from(["emial".to_owned()]));
    }

    #[test]
    fn event_data_is_never_compiled() {
        let mut t = Templates::new();
        let s = event_scope(json!({"traits": {"name": "{{ 7 * 7 }}"}}));
        let v = t.text("Hi {{ traits.name }}").unwrap();
        assert_eq!(t.eval(&v, &s).unwrap(), Some(json!("Hi {{ 7 * 7 }}")));
    }

    #[test]
    fn lookups_give_placeholders_then_answers() {
        let mut t = Templates::new();
        let text = t
            .text("{{ resolve('user', external_id=x, email=none) }}")
            .unwrap();
        let fields = field_values(&["x"], &[("x", json!("u1"))]);
        let lookups = Arc::new(Lookups::default());
        let s = Scope::builder()
            .fields(fields.clone())
            .lookups(lookups.clone())
            .build();
        assert_eq!(
            t.eval(&text, &s).unwrap(),
            Some(json!("__zdmap_lookup_0__"))
        );
        let need = LookupNeed {
            resolver: "user".into(),
            keys: vec![("external_id".into(), "u1".into())],
        };
        assert_eq!(lookups.missing(), vec![need.clone()]);
        let known = Arc::new(Lookups::new(HashMap::from([(
            need,
            Answer::Found(json!(42)),
        )])));
        let s = Scope::builder().fields(fields).lookups(known).build();
        assert_eq!(t.eval(&text, &s).unwrap(), Some(json!(42)));
    }

    /// The native fast path and minijinja agree on every supported expression.
    #[test]
    fn native_fast_path_agrees_with_minijinja() {
        let exprs = [
            "a or none",
            "a or b",
            "a and b",
            "not a",
            "true if a else none",
            "a | lower if a else none",
            "b | string",
            "a == 'X'",
            "a != b",
            "a is none",
            "b is not none",
            "(a or b) and not c",
            "resolve('user', external_id=a, email=b)",
            "try_resolve('user', external_id=a) is not none",
            "[a, b] | select | join(' ')",
            "{'email': a, 'name': b or a} if a else none",
            "([{'type': 'email', 'value': a}] if a else []) + ([{'type': 'id', 'value': b}] if b else []) or [{'type': 'x', 'value': c}]",
            "{'planName': 1, 'Tier': 2, 'X': 3} | keys_as(['Tier'])",
            "{'planName': 1, 'X': 2} | keys_as(a)",
            "{'planName': 1, 'X': 2} | keys_as(['Tier']) | without(['plan_name'])",
            "{'planName': 1, 'X': 2} | without(a)",
        ];
        let values = [
            json!(null),
            json!("X"),
            json!(""),
            json!(0),
            json!(2),
            json!(true),
            json!(false),
            json!([1]),
        ];
        let mut t = Templates::new();
        let need = |k: &str| LookupNeed {
            resolver: "user".into(),
            keys: vec![("external_id".into(), k.into())],
        };
        let answers = HashMap::from([
            (need("X"), Answer::Found(json!(7))),
            (need("2"), Answer::NotFound),
        ]);
        for src in exprs {
            let text = t.text(&format!("{{{{ {src} }}}}")).unwrap();
            let Text::Expr { name, native } = &text else {
                panic!("{src} is an expression")
            };
            assert!(native.is_some(), "{src} takes the fast path");
            for a in &values {
                for b in &values {
                    let mut given = vec![("b", b.clone())];
                    if !a.is_null() {
                        given.push(("a", a.clone()));
                    }
                    let fields = field_values(&["a", "b", "c"], &given);
                    let scope = || {
                        Scope::builder()
                            .fields(fields.clone())
                            .lookups(Arc::new(Lookups::new(answers.clone())))
                            .build()
                    };
                    let fast = t.eval(&text, &scope()).map_err(|e| e.0);
                    let slow = t.eval_expr(name, &scope()).map_err(|e| e.0);
                    match (&fast, &slow) {
                        (Ok(x), Ok(y)) => assert_eq!(x, y, "{src} with a={a} b={b}"),
                        (Err(x), Err(y)) => assert!(
                            x.contains("lookup") == y.contains("lookup"),
                            "{src}: {x} / {y}"
                        ),
                        _ => panic!("{src} with a={a} b={b}: fast {fast:?} vs minijinja {slow:?}"),
                    }
                }
            }
        }
    }

    /// `steps.STEP.OUTPUT` is read without minijinja, with minijinja's answers.
    #[test]
    fn step_outputs_take_the_fast_path_and_agree_with_minijinja() {
        let mut t = Templates::new();
        let text = t.text("{{ steps.upsert.id }}").unwrap();
        let Text::Ref { fallback, .. } = &text else {
            panic!("a plain reference")
        };
        let known = IndexMap::from([(
            "upsert".to_owned(),
            IndexMap::from([("id".to_owned(), json!(7))]),
        )]);
        let cases = [
            (known, false, json!(7)),
            (IndexMap::new(), true, json!("__zdmap_step_upsert__id__")),
        ];
        for (outputs, symbolic, expected) in cases {
            let scope = Scope::builder()
                .steps(Arc::new(StepOutputs { outputs, symbolic }))
                .build();
            let fast = scope.get_path(&["steps".into(), "upsert".into(), "id".into()]);
            assert_eq!(fast.flatten().as_deref(), Some(&expected));
            assert_eq!(t.eval(&text, &scope).unwrap(), Some(expected));
            assert_eq!(
                t.eval(&text, &scope).unwrap(),
                t.eval_expr(fallback, &scope).unwrap()
            );
        }
    }

    #[test]
    fn resolve_calls_are_found() {
        assert_eq!(
            resolve_calls(
                "{% set __zdmap_value = (resolve('user', external_id=a, email=b or c)) %}"
            ),
            vec![(
                "user".to_owned(),
                vec!["external_id".to_owned(), "email".to_owned()]
            )]
        );
    }

    #[test]
    fn snake_case_keys() {
        assert_eq!(snake_case("planName"), "plan_name");
        assert_eq!(snake_case("Plan Name"), "plan_name");
        assert_eq!(snake_case("HTTPCode"), "http_code");
        assert_eq!(snake_case("already_snake"), "already_snake");
        assert_eq!(snake_case("a-b.c"), "a_b_c");
        assert_eq!(snake_case("_a__b_"), "a_b");
        assert_eq!(snake_case("plan2Tier"), "plan2_tier");
        assert_eq!(snake_case("ÜberName"), "über_name");
    }

    #[test]
    fn long_chains_are_refused_with_their_place() {
        let mut t = Templates::new();
        let chained = format!("{{{{ a{} }}}}", " | lower".repeat(50_000));
        let err = t.text(&chained).expect_err("too long");
        assert!(err.message.contains("more than 500"), "{err}");
        let at = err.offset.expect("located");
        assert_eq!(&chained[at..at + 1], "|");
        assert_eq!(chained[..at].matches('|').count(), MAX_OPERATORS);
        assert!(t.expression(&vec!["a"; 100_000].join(" and ")).is_err());
        // Operators in text and in string literals do not count; a long mapping template fits.
        let text = format!(
            "{} {{{{ '{}' ~ a }}}}",
            "-|.".repeat(1000),
            "|".repeat(1000)
        );
        assert!(t.text(&text).is_ok());
        assert!(
            t.text(&format!("{{{{ a{} }}}}", " | lower".repeat(400)))
                .is_ok()
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        let mut t = Templates::new();
        assert!(t.text("{{ a + }}").is_err());
        assert!(t.expression("a ==").is_err());
    }
}
