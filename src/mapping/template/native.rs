//! A fast path for the common small expressions of mappings, evaluated without minijinja.
//!
//! `{{ x or none }}`, `{{ true if verified else none }}`, `{{ status | lower if status else none }}`,
//! `{{ resolve('user', external_id=external_id, email=email) }}`, `not remove`,
//! `remove and try_resolve(...) is not none`: expressions made only of names, literals, `and`,
//! `or`, `not`, `if`/`else`, `==`/`!=`, `is [not] none`, the filters `lower`, `upper`, `trim` and
//! `string`, and `resolve`/`try_resolve` calls compile to a small tree evaluated directly on JSON
//! values. Anything else, or any value the fast path is unsure of at run time, goes to minijinja,
//! so results are always minijinja's; a test checks both agree.

use super::{Answer, LookupNeed, Lookups, Scope};
use serde_json::Value;
use std::borrow::Cow;

/// A compiled expression of the supported subset.
#[derive(Clone, Debug, PartialEq)]
pub enum Native {
    Name(Vec<String>),
    Literal(Value),
    Or(Box<Native>, Box<Native>),
    And(Box<Native>, Box<Native>),
    Not(Box<Native>),
    If {
        then: Box<Native>,
        cond: Box<Native>,
        otherwise: Option<Box<Native>>,
    },
    Eq(Box<Native>, Box<Native>, bool),
    IsNone(Box<Native>, bool),
    Filter(Box<Native>, Filter),
    Filter2(Box<Native>, Filter2, Box<Native>),
    List(Vec<Native>),
    Dict(Vec<(String, Native)>),
    Concat(Box<Native>, Box<Native>),
    Resolve {
        resolver: String,
        keys: Vec<(String, Native)>,
        required: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Filter {
    Lower,
    Upper,
    Trim,
    String,
    /// `select`: the truthy elements of a list.
    Select,
    /// `join(sep)`: the elements of a list of strings, joined.
    Join(&'static str),
}

/// Filters that take an expression argument.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter2 {
    /// `keys_as(existing)`: keys in `existing` stay, the others become snake_case.
    KeysAs,
    /// `without(other)`: the elements (or keys) not in `other`.
    Without,
}

/// The fast path cannot decide: evaluate with minijinja.
#[derive(Debug)]
pub struct Fallback;

/// An evaluation result: a value, or an error message for the event. Values read from the
/// scope or the expression are borrowed; only what an expression computes is owned.
pub(crate) type Evaluated<'s> = Result<Result<Option<Cow<'s, Value>>, String>, Fallback>;

/// Jinja's truth of a value: none, false, 0, and empty strings, lists and maps are false.
pub fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Bool(true)) => true,
    }
}

fn owned<'s>(v: Value) -> Option<Cow<'s, Value>> {
    Some(Cow::Owned(v))
}

impl Native {
    pub fn eval<'s>(&'s self, scope: &'s Scope) -> Evaluated<'s> {
        Ok(Ok(match self {
            Native::Name(path) => match scope.get_path(path) {
                Some(v) => v.filter(|v| !v.is_null()),
                None => return Err(Fallback),
            },
            Native::Literal(v) => Some(Cow::Borrowed(v)).filter(|v| !v.is_null()),
            Native::Or(a, b) => {
                let x = ok!(a.eval(scope)?);
                if truthy(x.as_deref()) {
                    x
                } else {
                    ok!(b.eval(scope)?)
                }
            }
            Native::And(a, b) => {
                let x = ok!(a.eval(scope)?);
                if !truthy(x.as_deref()) {
                    x
                } else {
                    ok!(b.eval(scope)?)
                }
            }
            Native::Not(a) => owned(Value::Bool(!truthy(ok!(a.eval(scope)?).as_deref()))),
            Native::If {
                then,
                cond,
                otherwise,
            } => {
                if truthy(ok!(cond.eval(scope)?).as_deref()) {
                    ok!(then.eval(scope)?)
                } else {
                    match otherwise {
                        Some(o) => ok!(o.eval(scope)?),
                        None => None,
                    }
                }
            }
            Native::Eq(a, b, negate) => {
                let (x, y) = (ok!(a.eval(scope)?), ok!(b.eval(scope)?));
                let eq = match (x.as_deref(), y.as_deref()) {
                    (Some(Value::Number(p)), Some(Value::Number(q))) => p.as_f64() == q.as_f64(),
                    (Some(Value::Array(_) | Value::Object(_)), _)
                    | (_, Some(Value::Array(_) | Value::Object(_)))
                    | (Some(Value::Bool(_)), Some(Value::Number(_)))
                    | (Some(Value::Number(_)), Some(Value::Bool(_))) => return Err(Fallback),
                    (x, y) => x == y,
                };
                owned(Value::Bool(eq != *negate))
            }
            Native::IsNone(a, negate) => {
                owned(Value::Bool(ok!(a.eval(scope)?).is_none() != *negate))
            }
            Native::Filter(a, f) => {
                let x = ok!(a.eval(scope)?);
                match (x.as_deref(), f) {
                    (Some(Value::String(s)), Filter::Lower) => {
                        owned(Value::String(s.to_lowercase()))
                    }
                    (Some(Value::String(s)), Filter::Upper) => {
                        owned(Value::String(s.to_uppercase()))
                    }
                    (Some(Value::String(s)), Filter::Trim) => {
                        owned(Value::String(s.trim().to_owned()))
                    }
                    (Some(Value::String(_)), Filter::String) => x,
                    (Some(Value::Number(n)), Filter::String) if n.is_i64() || n.is_u64() => {
                        owned(Value::String(n.to_string()))
                    }
                    (Some(Value::Array(items)), Filter::Select) => owned(Value::Array(
                        items.iter().filter(|v| truthy(Some(v))).cloned().collect(),
                    )),
                    (Some(Value::Array(items)), Filter::Join(sep)) => {
                        let mut parts = Vec::with_capacity(items.len());
                        for v in items {
                            match v {
                                Value::String(s) => parts.push(s.as_str()),
                                _ => return Err(Fallback),
                            }
                        }
                        owned(Value::String(parts.join(sep)))
                    }
                    _ => return Err(Fallback),
                }
            }
            Native::Filter2(a, f, arg) => {
                let (x, y) = (ok!(a.eval(scope)?), ok!(arg.eval(scope)?));
                let others = match y.as_deref() {
                    Some(Value::Array(items)) => Others::List(items),
                    Some(Value::String(s)) => Others::Chars(s),
                    _ => return Err(Fallback),
                };
                match (f, x.as_deref()) {
                    (Filter2::KeysAs, Some(Value::Object(map))) => {
                        let mut out = serde_json::Map::with_capacity(map.len());
                        for (k, v) in map {
                            let key = if others.has_string(k) {
                                k.clone()
                            } else {
                                super::snake_case(k)
                            };
                            out.insert(key, v.clone());
                        }
                        owned(Value::Object(out))
                    }
                    (Filter2::Without, Some(Value::Object(map))) => owned(Value::Array(
                        map.keys()
                            .filter(|k| !others.has_string(k))
                            .map(|k| Value::String(k.clone()))
                            .collect(),
                    )),
                    (Filter2::Without, Some(Value::Array(items))) => {
                        let all_strings = |list: &[Value]| list.iter().all(Value::is_string);
                        if !all_strings(items)
                            || matches!(others, Others::List(o) if !all_strings(o))
                        {
                            return Err(Fallback);
                        }
                        owned(Value::Array(
                            items
                                .iter()
                                .filter(|i| !i.as_str().is_some_and(|s| others.has_string(s)))
                                .cloned()
                                .collect(),
                        ))
                    }
                    _ => return Err(Fallback),
                }
            }
            Native::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    out.push(ok!(i.eval(scope)?).map_or(Value::Null, Cow::into_owned));
                }
                owned(Value::Array(out))
            }
            Native::Dict(entries) => {
                let mut out = serde_json::Map::with_capacity(entries.len());
                for (k, v) in entries {
                    let v = ok!(v.eval(scope)?).map_or(Value::Null, Cow::into_owned);
                    out.insert(k.clone(), v);
                }
                owned(Value::Object(out))
            }
            Native::Concat(a, b) => {
                let (x, y) = (ok!(a.eval(scope)?), ok!(b.eval(scope)?));
                match (x.map(Cow::into_owned), y.map(Cow::into_owned)) {
                    (Some(Value::Array(mut x)), Some(Value::Array(y))) => {
                        x.extend(y);
                        owned(Value::Array(x))
                    }
                    _ => return Err(Fallback),
                }
            }
            Native::Resolve {
                resolver,
                keys,
                required,
            } => {
                let Some(lookups) = scope.lookups() else {
                    return Err(Fallback);
                };
                let mut given = Vec::new();
                for (by, expr) in keys {
                    let v = ok!(expr.eval(scope)?);
                    match v.as_deref() {
                        None => {}
                        Some(Value::String(s)) if s.is_empty() => {}
                        Some(Value::String(s)) => given.push((by.clone(), s.clone())),
                        Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                            given.push((by.clone(), v.to_string()))
                        }
                        Some(_) => return Err(Fallback),
                    }
                }
                if given.is_empty() {
                    return Ok(Err(format!(
                        "resolve('{resolver}', ...) has no key with a value"
                    )));
                }
                let need = LookupNeed {
                    resolver: resolver.clone(),
                    keys: given,
                };
                match lookups.answer(need, *required) {
                    Ok(v) => v.map(Cow::Owned),
                    Err(message) => return Ok(Err(message)),
                }
            }
        }))
    }
}

/// The argument of `keys_as` and `without`: a list, or a string, which minijinja iterates
/// by its characters.
enum Others<'a> {
    List(&'a [Value]),
    Chars(&'a str),
}

impl Others<'_> {
    /// Whether the string `s` is one of the elements.
    fn has_string(&self, s: &str) -> bool {
        match self {
            Others::List(items) => items.iter().any(|o| o.as_str() == Some(s)),
            Others::Chars(text) => {
                let mut chars = s.chars();
                matches!((chars.next(), chars.next()), (Some(c), None) if text.contains(c))
            }
        }
    }
}

/// Unwraps an inner `Result<_, String>` or returns it as the evaluation's error.
macro_rules! ok {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(message) => return Ok(Err(message)),
        }
    };
}
use ok;

impl Lookups {
    /// The value for a lookup: its answer, a placeholder (recorded as missing), or an error.
    pub(super) fn answer(&self, need: LookupNeed, required: bool) -> Result<Option<Value>, String> {
        match self.answers.get(&need) {
            Some(Answer::Found(v)) => Ok(Some(v.clone())),
            Some(Answer::NotFound) if !required => Ok(None),
            Some(Answer::NotFound) => {
                let message = format!("lookup found nothing: {need}");
                if let Ok(mut unfound) = self.unfound.lock() {
                    unfound.push(need);
                }
                Err(message)
            }
            None => {
                if let Some(id) = self.direct_answer(&need) {
                    return Ok(Some(id));
                }
                let mut asked = self
                    .asked
                    .lock()
                    .map_err(|_| "lookup state poisoned".to_owned())?;
                let index = match asked.iter().position(|n| *n == need) {
                    Some(i) => i,
                    None => {
                        asked.push(need);
                        asked.len() - 1
                    }
                };
                Ok(Some(Value::String(Lookups::placeholder(index))))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compiling the subset

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Name(String),
    Str(String),
    Num(serde_json::Number),
    Sym(&'static str),
}

fn lex(src: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Name(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            out.push(Tok::Num(text.parse::<i64>().ok()?.into()));
        } else if c == '\'' || c == '"' {
            let end = chars[i + 1..].iter().position(|x| *x == c)? + i + 1;
            let s: String = chars[i + 1..end].iter().collect();
            if s.contains('\\') {
                return None;
            }
            out.push(Tok::Str(s));
            i = end + 1;
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let sym = match (two.as_str(), c) {
                ("==", _) => "==",
                ("!=", _) => "!=",
                (_, '(') => "(",
                (_, ')') => ")",
                (_, ',') => ",",
                (_, '.') => ".",
                (_, '|') => "|",
                (_, '=') => "=",
                (_, '[') => "[",
                (_, ']') => "]",
                (_, '{') => "{",
                (_, '}') => "}",
                (_, ':') => ":",
                (_, '+') => "+",
                _ => return None,
            };
            i += sym.len();
            out.push(Tok::Sym(sym));
        }
    }
    Some(out)
}

/// Compiles an expression of the supported subset; `None` for anything else.
pub fn compile(src: &str) -> Option<Native> {
    let mut p = P {
        toks: lex(src)?,
        pos: 0,
    };
    let e = p.ternary()?;
    (p.pos == p.toks.len()).then_some(e)
}

struct P {
    toks: Vec<Tok>,
    pos: usize,
}

impl P {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn word(&mut self, w: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Name(n)) if n == w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn ternary(&mut self) -> Option<Native> {
        let then = self.or()?;
        if !self.word("if") {
            return Some(then);
        }
        let cond = self.or()?;
        let otherwise = if self.word("else") {
            Some(Box::new(self.ternary()?))
        } else {
            None
        };
        Some(Native::If {
            then: Box::new(then),
            cond: Box::new(cond),
            otherwise,
        })
    }
    fn or(&mut self) -> Option<Native> {
        let mut l = self.and()?;
        while self.word("or") {
            l = Native::Or(Box::new(l), Box::new(self.and()?));
        }
        Some(l)
    }
    fn and(&mut self) -> Option<Native> {
        let mut l = self.not()?;
        while self.word("and") {
            l = Native::And(Box::new(l), Box::new(self.not()?));
        }
        Some(l)
    }
    fn not(&mut self) -> Option<Native> {
        if self.word("not") {
            return Some(Native::Not(Box::new(self.not()?)));
        }
        self.compare()
    }
    fn compare(&mut self) -> Option<Native> {
        let l = self.concat()?;
        if self.sym("==") {
            return Some(Native::Eq(Box::new(l), Box::new(self.concat()?), false));
        }
        if self.sym("!=") {
            return Some(Native::Eq(Box::new(l), Box::new(self.concat()?), true));
        }
        if self.word("is") {
            let negate = self.word("not");
            if !self.word("none") {
                return None;
            }
            return Some(Native::IsNone(Box::new(l), negate));
        }
        Some(l)
    }
    fn concat(&mut self) -> Option<Native> {
        let mut l = self.filtered()?;
        while self.sym("+") {
            l = Native::Concat(Box::new(l), Box::new(self.filtered()?));
        }
        Some(l)
    }

    fn filtered(&mut self) -> Option<Native> {
        let mut e = self.primary()?;
        while self.sym("|") {
            let f = match self.peek() {
                Some(Tok::Name(n)) if n == "lower" => Filter::Lower,
                Some(Tok::Name(n)) if n == "upper" => Filter::Upper,
                Some(Tok::Name(n)) if n == "trim" => Filter::Trim,
                Some(Tok::Name(n)) if n == "string" => Filter::String,
                Some(Tok::Name(n)) if n == "select" => Filter::Select,
                Some(Tok::Name(n)) if n == "keys_as" || n == "without" => {
                    let f = if n == "keys_as" {
                        Filter2::KeysAs
                    } else {
                        Filter2::Without
                    };
                    self.pos += 1;
                    if !self.sym("(") {
                        return None;
                    }
                    let arg = self.ternary()?;
                    if !self.sym(")") {
                        return None;
                    }
                    e = Native::Filter2(Box::new(e), f, Box::new(arg));
                    continue;
                }
                Some(Tok::Name(n)) if n == "join" => {
                    self.pos += 1;
                    if !self.sym("(") {
                        return None;
                    }
                    let sep: &'static str = match self.peek() {
                        Some(Tok::Str(s)) if s == " " => " ",
                        Some(Tok::Str(s)) if s == ", " => ", ",
                        Some(Tok::Str(s)) if s.is_empty() => "",
                        _ => return None,
                    };
                    self.pos += 1;
                    if !self.sym(")") {
                        return None;
                    }
                    e = Native::Filter(Box::new(e), Filter::Join(sep));
                    continue;
                }
                _ => return None,
            };
            self.pos += 1;
            e = Native::Filter(Box::new(e), f);
        }
        Some(e)
    }
    fn primary(&mut self) -> Option<Native> {
        let tok = self.peek()?.clone();
        self.pos += 1;
        match tok {
            Tok::Str(s) => Some(Native::Literal(Value::String(s))),
            Tok::Num(n) => Some(Native::Literal(Value::Number(n))),
            Tok::Sym("(") => {
                let e = self.ternary()?;
                self.sym(")").then_some(e)
            }
            Tok::Sym("[") => {
                let mut items = Vec::new();
                if !self.sym("]") {
                    loop {
                        items.push(self.ternary()?);
                        if self.sym("]") {
                            break;
                        }
                        if !self.sym(",") {
                            return None;
                        }
                    }
                }
                Some(Native::List(items))
            }
            Tok::Sym("{") => {
                let mut entries = Vec::new();
                if !self.sym("}") {
                    loop {
                        let Some(Tok::Str(k)) = self.peek().cloned() else {
                            return None;
                        };
                        self.pos += 1;
                        if !self.sym(":") {
                            return None;
                        }
                        entries.push((k, self.ternary()?));
                        if self.sym("}") {
                            break;
                        }
                        if !self.sym(",") {
                            return None;
                        }
                    }
                }
                Some(Native::Dict(entries))
            }
            Tok::Name(n) => match n.as_str() {
                "true" | "True" => Some(Native::Literal(Value::Bool(true))),
                "false" | "False" => Some(Native::Literal(Value::Bool(false))),
                "none" | "None" => Some(Native::Literal(Value::Null)),
                "and" | "or" | "not" | "if" | "else" | "is" | "in" => None,
                "resolve" | "try_resolve" if self.sym("(") => self.call(n == "resolve"),
                _ => {
                    let mut path = vec![n];
                    while self.sym(".") {
                        match self.peek()?.clone() {
                            Tok::Name(x) => {
                                self.pos += 1;
                                path.push(x);
                            }
                            _ => return None,
                        }
                    }
                    if self.peek() == Some(&Tok::Sym("(")) {
                        return None;
                    }
                    Some(Native::Name(path))
                }
            },
            Tok::Sym(_) => None,
        }
    }
    fn call(&mut self, required: bool) -> Option<Native> {
        let Some(Tok::Str(resolver)) = self.peek().cloned() else {
            return None;
        };
        self.pos += 1;
        let mut keys = Vec::new();
        while self.sym(",") {
            let Some(Tok::Name(by)) = self.peek().cloned() else {
                return None;
            };
            self.pos += 1;
            if !self.sym("=") {
                return None;
            }
            keys.push((by, self.ternary()?));
        }
        self.sym(")").then_some(Native::Resolve {
            resolver,
            keys,
            required,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subset_compiles_and_the_rest_does_not() {
        for ok in [
            "x or none",
            "true if verified else none",
            "status | lower if status else none",
            "resolve('user', external_id=external_id, email=email)",
            "remove and try_resolve('organization', external_id=o) is not none",
            "not remove",
            "a == 'b' and c != 2",
            "steps.upsert.id",
        ] {
            assert!(compile(ok).is_some(), "{ok}");
        }
        for more in [
            "[a, b] | select | join(' ')",
            "{'a': 1, 'b': c}",
            "([{'t': 'e'}] if a else []) + []",
        ] {
            assert!(compile(more).is_some(), "{more}");
        }
        for no in [
            "x | default('y')",
            "x ~ 'y'",
            "range(3)",
            "a[0]",
            "[a] | join('-')",
        ] {
            assert!(compile(no).is_none(), "{no}");
        }
    }
}
