//! The trigger language: Segment's destination subscription syntax, with a real grammar.
//!
//! ```text
//! trigger    = or
//! or         = and { "or" and }
//! and        = unary { "and" unary }
//! unary      = "not" unary | primary
//! primary    = "(" or ")" | function | comparison
//! function   = ( "contains" | "match" ) "(" path "," string ")"
//! comparison = operand ( "=" | "!=" | "<" | "<=" | ">" | ">=" ) operand
//! operand    = path | string | number | "true" | "false" | "null"
//! path       = name { "." ( name | string ) }        e.g. properties."order id"
//! ```
//!
//! Keywords are case-insensitive. Semantics:
//! - `f = null` is true when `f` is absent or JSON null; `f != null` is its negation.
//! - `a != b` is `not (a = b)`. Equality is type-aware: a number never equals a string
//!   (`"1" = 1` is false); numbers compare numerically (`1 = 1.0`).
//! - `<`, `<=`, `>`, `>=` compare two numbers, or two strings (lexicographically); anything
//!   else is false.
//! - `contains(f, "x")`: `f` is a string containing `x`, or an array with an element equal to `x`.
//! - `match(f, "x*")`: `f` is a string matching the glob (`*` any run, `?` one character).
//!
//! Where this deliberately differs from Segment's parser: Segment's ignores `not`, has no
//! precedence (it reads left to right) and treats single-quoted strings literally. Here `not`
//! binds tighter than `and`, which binds tighter than `or`, and single quotes are an error that
//! suggests double quotes. A literal may stand on either side of a comparison.

use serde_json::Value;
use std::fmt;

/// A compiled trigger.
#[derive(Clone)]
pub struct Trigger {
    source: String,
    expr: Expr,
}

/// A trigger that does not parse: the 1-based column (in characters) and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct TriggerError {
    pub column: usize,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare(Operand, Op, Operand),
    Contains(Vec<String>, String),
    Match(Vec<String>, String),
}

#[derive(Clone, Debug, PartialEq)]
enum Operand {
    Path(Vec<String>),
    Literal(Value),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Trigger {
    pub fn parse(source: &str) -> Result<Trigger, TriggerError> {
        let tokens = lex(source)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end: source.chars().count() + 1,
        };
        let expr = p.or()?;
        if let Some(t) = p.peek() {
            return Err(p.error_at(
                t.column,
                format!("expected `and`, `or` or the end, found {}", t.kind),
            ));
        }
        Ok(Trigger {
            source: source.to_owned(),
            expr,
        })
    }

    /// Whether the event matches.
    pub fn matches(&self, event: &Value) -> bool {
        self.expr.eval(event)
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

impl std::str::FromStr for Trigger {
    type Err = TriggerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Trigger::parse(s)
    }
}

impl fmt::Debug for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Trigger({:?})", self.source)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

fn lookup<'a>(event: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut node = event;
    for seg in path {
        node = crate::event::member(node.as_object()?, seg)?;
    }
    Some(node)
}

impl Operand {
    fn resolve<'a>(&'a self, event: &'a Value) -> Option<&'a Value> {
        match self {
            Operand::Path(p) => lookup(event, p),
            Operand::Literal(v) => Some(v),
        }
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl Expr {
    fn eval(&self, event: &Value) -> bool {
        match self {
            Expr::Or(a, b) => a.eval(event) || b.eval(event),
            Expr::And(a, b) => a.eval(event) && b.eval(event),
            Expr::Not(a) => !a.eval(event),
            Expr::Compare(l, op, r) => {
                let (a, b) = (l.resolve(event), r.resolve(event));
                match op {
                    Op::Eq => equal(a, b),
                    Op::Ne => !equal(a, b),
                    _ => match (a, b) {
                        (Some(Value::Number(x)), Some(Value::Number(y))) => {
                            match (x.as_f64(), y.as_f64()) {
                                (Some(x), Some(y)) => order(op, x.partial_cmp(&y)),
                                _ => false,
                            }
                        }
                        (Some(Value::String(x)), Some(Value::String(y))) => {
                            order(op, Some(x.cmp(y)))
                        }
                        _ => false,
                    },
                }
            }
            Expr::Contains(path, needle) => match lookup(event, path) {
                Some(Value::String(s)) => s.contains(needle.as_str()),
                Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(needle)),
                _ => false,
            },
            Expr::Match(path, glob) => match lookup(event, path) {
                Some(Value::String(s)) => glob_match(glob, s),
                _ => false,
            },
        }
    }
}

/// `=` with null meaning "absent or null".
fn equal(a: Option<&Value>, b: Option<&Value>) -> bool {
    let is_null = |v: Option<&Value>| v.is_none_or(Value::is_null);
    match (a, b) {
        _ if is_null(a) || is_null(b) => is_null(a) && is_null(b),
        (Some(x), Some(y)) => json_eq(x, y),
        _ => false,
    }
}

fn order(op: &Op, ord: Option<std::cmp::Ordering>) -> bool {
    use std::cmp::Ordering::*;
    matches!(
        (op, ord),
        (Op::Lt, Some(Less))
            | (Op::Le, Some(Less | Equal))
            | (Op::Gt, Some(Greater))
            | (Op::Ge, Some(Greater | Equal))
    )
}

/// Glob matching with `*` (any run) and `?` (one character).
fn glob_match(glob: &str, text: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut gi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some(gi);
            mark = ti;
            gi += 1;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

// ---------------------------------------------------------------------------------------------
// Lexing

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Name(String),
    Str(String),
    Num(serde_json::Number),
    Op(Op),
    LParen,
    RParen,
    Comma,
    Dot,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Name(n) => write!(f, "`{n}`"),
            Kind::Str(s) => write!(f, "the string {s:?}"),
            Kind::Num(n) => write!(f, "the number {n}"),
            Kind::Op(op) => write!(f, "`{}`", op_text(*op)),
            Kind::LParen => f.write_str("`(`"),
            Kind::RParen => f.write_str("`)`"),
            Kind::Comma => f.write_str("`,`"),
            Kind::Dot => f.write_str("`.`"),
        }
    }
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
    }
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    column: usize,
}

fn lex(source: &str) -> Result<Vec<Token>, TriggerError> {
    let chars: Vec<char> = source.chars().collect();
    let err = |column: usize, message: String| TriggerError { column, message };
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let next = chars.get(i + 1).copied();
        let mut push = |kind: Kind, len: usize, i: &mut usize| {
            out.push(Token { kind, column });
            *i += len;
        };
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => push(Kind::LParen, 1, &mut i),
            ')' => push(Kind::RParen, 1, &mut i),
            ',' => push(Kind::Comma, 1, &mut i),
            '.' if !next.is_some_and(|n| n.is_ascii_digit()) => push(Kind::Dot, 1, &mut i),
            '=' if next == Some('=') => {
                return Err(err(column, "unknown operator `==`: write `=`".into()));
            }
            '=' => push(Kind::Op(Op::Eq), 1, &mut i),
            '!' if next == Some('=') => push(Kind::Op(Op::Ne), 2, &mut i),
            '<' if next == Some('=') => push(Kind::Op(Op::Le), 2, &mut i),
            '>' if next == Some('=') => push(Kind::Op(Op::Ge), 2, &mut i),
            '<' if next == Some('>') => {
                return Err(err(column, "unknown operator `<>`: write `!=`".into()));
            }
            '<' => push(Kind::Op(Op::Lt), 1, &mut i),
            '>' => push(Kind::Op(Op::Gt), 1, &mut i),
            '&' | '|' => {
                let word = if c == '&' { "and" } else { "or" };
                return Err(err(
                    column,
                    format!("unknown operator `{c}`: write `{word}`"),
                ));
            }
            '\'' => {
                return Err(err(
                    column,
                    "strings are written in double quotes: \"...\"".into(),
                ));
            }
            '"' => {
                let (s, len) = lex_string(&chars[i..]).map_err(|(off, m)| err(column + off, m))?;
                push(Kind::Str(s), len, &mut i);
            }
            c if c.is_ascii_digit() || c == '-' || c == '.' => {
                let start = i;
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_ascii_digit()
                        || matches!(chars[j], '.' | 'e' | 'E' | '+' | '-'))
                {
                    if matches!(chars[j], '+' | '-') && !matches!(chars[j - 1], 'e' | 'E') {
                        break;
                    }
                    j += 1;
                }
                let text: String = chars[start..j].iter().collect();
                let num = text
                    .parse::<i64>()
                    .ok()
                    .map(serde_json::Number::from)
                    .or_else(|| {
                        text.parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                    })
                    .ok_or_else(|| err(column, format!("{text:?} is not a number")))?;
                push(Kind::Num(num), j - start, &mut i);
            }
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                let start = i;
                let mut j = i;
                while j < chars.len()
                    && (chars[j].is_alphanumeric()
                        || chars[j] == '_'
                        || chars[j] == '$'
                        || chars[j] == '-')
                {
                    j += 1;
                }
                let text: String = chars[start..j].iter().collect();
                push(Kind::Name(text), j - start, &mut i);
            }
            other => return Err(err(column, format!("unexpected character {other:?}"))),
        }
    }
    Ok(out)
}

/// A double-quoted string at the start of `chars`: its value and its length in characters.
fn lex_string(chars: &[char]) -> Result<(String, usize), (usize, String)> {
    let mut out = String::new();
    let mut i = 1;
    while i < chars.len() {
        match chars[i] {
            '"' => return Ok((out, i + 1)),
            '\\' => {
                let esc = chars
                    .get(i + 1)
                    .ok_or((i, "unterminated string".to_owned()))?;
                match esc {
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    '/' => out.push('/'),
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'u' => {
                        let hex: String = chars
                            .get(i + 2..i + 6)
                            .map(|h| h.iter().collect())
                            .unwrap_or_default();
                        let c = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or((i, "bad \\u escape: write \\uXXXX".to_owned()))?;
                        out.push(c);
                        i += 4;
                    }
                    other => return Err((i, format!("unknown escape `\\{other}`"))),
                }
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err((0, "unterminated string: a `\"` is missing".to_owned()))
}

// ---------------------------------------------------------------------------------------------
// Parsing

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
}

fn keyword(t: &Token, word: &str) -> bool {
    matches!(&t.kind, Kind::Name(n) if n.eq_ignore_ascii_case(word))
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn error_at(&self, column: usize, message: String) -> TriggerError {
        TriggerError { column, message }
    }

    fn found(&self) -> (usize, String) {
        match self.peek() {
            Some(t) => (t.column, t.kind.to_string()),
            None => (self.end, "the end".into()),
        }
    }

    fn expected(&self, what: &str) -> TriggerError {
        let (column, found) = self.found();
        self.error_at(column, format!("expected {what}, found {found}"))
    }

    fn eat_keyword(&mut self, word: &str) -> bool {
        if self.peek().is_some_and(|t| keyword(t, word)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat(&mut self, kind: &Kind) -> bool {
        if self.peek().is_some_and(|t| &t.kind == kind) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, TriggerError> {
        let mut left = self.and()?;
        while self.eat_keyword("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, TriggerError> {
        let mut left = self.unary()?;
        while self.eat_keyword("and") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, TriggerError> {
        if self.eat_keyword("not") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, TriggerError> {
        if self.eat(&Kind::LParen) {
            let e = self.or()?;
            if !self.eat(&Kind::RParen) {
                return Err(self.expected("`)`"));
            }
            return Ok(e);
        }
        let is_call = self
            .tokens
            .get(self.pos + 1)
            .is_some_and(|t| t.kind == Kind::LParen);
        if let (
            Some(Token {
                kind: Kind::Name(name),
                column,
            }),
            true,
        ) = (self.peek().cloned(), is_call)
        {
            let lower = name.to_ascii_lowercase();
            if lower != "contains" && lower != "match" {
                return Err(self.error_at(
                    column,
                    format!("unknown function `{name}`: expected `contains` or `match`"),
                ));
            }
            self.pos += 2;
            let path = self.path()?;
            if !self.eat(&Kind::Comma) {
                return Err(self.expected("`,`"));
            }
            let arg = match self.peek().map(|t| t.kind.clone()) {
                Some(Kind::Str(s)) => {
                    self.pos += 1;
                    s
                }
                _ => return Err(self.expected("a string")),
            };
            if !self.eat(&Kind::RParen) {
                return Err(self.expected("`)`"));
            }
            return Ok(if lower == "contains" {
                Expr::Contains(path, arg)
            } else {
                Expr::Match(path, arg)
            });
        }
        let left = self.operand()?;
        let op = match self.peek().map(|t| t.kind.clone()) {
            Some(Kind::Op(op)) => {
                self.pos += 1;
                op
            }
            _ => return Err(self.expected("a comparison (`=`, `!=`, `<`, `<=`, `>`, `>=`)")),
        };
        let right = self.operand().map_err(|_| {
            let (column, found) = self.found();
            self.error_at(
                column,
                format!("expected a value (a field, string, number, true, false or null) after `{}`, found {found}", op_text(op)),
            )
        })?;
        Ok(Expr::Compare(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, TriggerError> {
        let Some(t) = self.peek().cloned() else {
            return Err(self.expected("a field or a value"));
        };
        match t.kind {
            Kind::Str(s) => {
                self.pos += 1;
                Ok(Operand::Literal(Value::String(s)))
            }
            Kind::Num(n) => {
                self.pos += 1;
                Ok(Operand::Literal(Value::Number(n)))
            }
            Kind::Name(ref n)
                if n.eq_ignore_ascii_case("true") || n.eq_ignore_ascii_case("false") =>
            {
                self.pos += 1;
                Ok(Operand::Literal(Value::Bool(
                    n.eq_ignore_ascii_case("true"),
                )))
            }
            Kind::Name(ref n) if n.eq_ignore_ascii_case("null") => {
                self.pos += 1;
                Ok(Operand::Literal(Value::Null))
            }
            Kind::Name(ref n)
                if ["and", "or", "not"]
                    .iter()
                    .any(|k| n.eq_ignore_ascii_case(k)) =>
            {
                Err(self.expected("a field or a value"))
            }
            Kind::Name(_) => self.path().map(Operand::Path),
            _ => Err(self.expected("a field or a value")),
        }
    }

    fn path(&mut self) -> Result<Vec<String>, TriggerError> {
        let mut segments = match self.peek().map(|t| t.kind.clone()) {
            Some(Kind::Name(n)) => {
                self.pos += 1;
                vec![n]
            }
            _ => return Err(self.expected("a field name")),
        };
        while self.eat(&Kind::Dot) {
            match self.peek().map(|t| t.kind.clone()) {
                Some(Kind::Name(n)) | Some(Kind::Str(n)) => {
                    self.pos += 1;
                    segments.push(n);
                }
                Some(Kind::Num(n)) => {
                    self.pos += 1;
                    segments.push(n.to_string());
                }
                _ => return Err(self.expected("a field name after `.`")),
            }
        }
        Ok(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn m(trigger: &str, event: Value) -> bool {
        Trigger::parse(trigger)
            .unwrap_or_else(|e| panic!("{trigger}: {e}"))
            .matches(&event)
    }

    fn e(trigger: &str) -> TriggerError {
        Trigger::parse(trigger).expect_err(trigger)
    }

    #[test]
    fn precedence_not_and_or() {
        let ev = json!({"type": "track", "event": "A"});
        // or binds looser than and: true or (false and false)
        assert!(m(
            r#"type = "track" or event = "B" and event = "C""#,
            ev.clone()
        ));
        // not binds tighter than and: (not false) and true
        assert!(m(r#"not event = "B" and type = "track""#, ev.clone()));
        assert!(!m(r#"not (event = "A" and type = "track")"#, ev.clone()));
        assert!(m(
            r#"(type = "identify" or type = "track") AND NOT event = "Z""#,
            ev
        ));
    }

    #[test]
    fn null_means_absent_or_null() {
        let ev = json!({"traits": {"company": {"id": "c1"}, "gone": null}});
        assert!(m("traits.company.id != null", ev.clone()));
        assert!(m("traits.gone = null", ev.clone()));
        assert!(m("traits.missing = null", ev.clone()));
        assert!(!m("traits.missing != null", ev.clone()));
        assert!(m("null = traits.nothing.deeper", ev));
    }

    #[test]
    fn comparisons_are_type_aware() {
        let ev = json!({"properties": {"n": 1, "s": "1", "total": 99.5, "name": "bob"}});
        assert!(!m(r#"properties.s = 1"#, ev.clone()));
        assert!(m(r#"properties.s = "1""#, ev.clone()));
        assert!(m("properties.n = 1.0", ev.clone()));
        assert!(m("properties.total > 99", ev.clone()));
        assert!(!m(r#"properties.s < 5"#, ev.clone()));
        assert!(m(r#"properties.name >= "alice""#, ev.clone()));
        assert!(m(r#"properties.missing != "x""#, ev));
    }

    #[test]
    fn functions_and_quoted_segments() {
        let ev = json!({"properties": {"order id": "o-1", "tags": ["vip", "eu"], "a.b": true}, "event": "Order Completed"});
        assert!(m(r#"properties."order id" = "o-1""#, ev.clone()));
        assert!(m(r#"properties."a.b" = true"#, ev.clone()));
        assert!(m(r#"contains(properties.tags, "vip")"#, ev.clone()));
        assert!(m(r#"contains(event, "Comp")"#, ev.clone()));
        assert!(m(r#"match(event, "Order *")"#, ev.clone()));
        assert!(m(r#"match(event, "Order Complete?")"#, ev.clone()));
        assert!(!m(r#"match(event, "Ticket*")"#, ev));
    }

    #[test]
    fn errors_point_at_the_column() {
        assert_eq!(e(r#"type == "track""#).column, 6);
        assert!(e(r#"type == "track""#).message.contains("write `=`"));
        let err = e(r#"type = "track" and event ="#);
        assert_eq!(err.column, 27);
        assert!(err.message.contains("expected a value"), "{err}");
        assert!(err.message.contains("found the end"), "{err}");
        assert_eq!(e("type = 'track'").column, 8);
        assert!(e("type = 'track'").message.contains("double quotes"));
        assert_eq!(e(r#"(type = "track""#).column, 16);
        assert!(e(r#"(type = "track""#).message.contains("`)`"));
        assert!(
            e(r#"type = "track" event = "x""#)
                .message
                .contains("expected `and`, `or`")
        );
        assert!(
            e(r#"starts(event, "x")"#)
                .message
                .contains("unknown function")
        );
        assert!(
            e(r#"type = "unterminated"#)
                .message
                .contains("unterminated")
        );
        assert!(
            e(r#"type "track""#)
                .message
                .contains("expected a comparison")
        );
        assert!(e(r#"a && b"#).message.contains("write `and`"));
    }

    #[test]
    fn shows_its_source() {
        let t = Trigger::parse(r#"type = "identify""#).unwrap();
        assert_eq!(t.to_string(), r#"type = "identify""#);
        assert_eq!(format!("{t:?}"), r#"Trigger("type = \"identify\"")"#);
    }

    fn arb_expr() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just(r#"type = "track""#.to_owned()),
            Just(r#"event != "A""#.to_owned()),
            Just("properties.n > 2".to_owned()),
            Just("traits.x = null".to_owned()),
            Just(r#"contains(properties.tags, "vip")"#.to_owned()),
        ];
        leaf.prop_recursive(4, 32, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} and {b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} or {b})")),
                inner.prop_map(|a| format!("not ({a})")),
            ]
        })
    }

    proptest! {
        /// Parenthesised expressions evaluate like the same logic written in Rust.
        #[test]
        fn logic_matches_rust(src in arb_expr(), n in 0i64..5, tag in any::<bool>(), kind in any::<bool>()) {
            let ev = json!({"type": if kind {"track"} else {"identify"}, "event": "A",
                            "properties": {"n": n, "tags": if tag {vec!["vip"]} else {vec![]}}});
            let t = Trigger::parse(&src).unwrap();
            // Re-evaluate with a tiny independent evaluator over the same text.
            let expected = eval_text(&src, kind, n, tag);
            prop_assert_eq!(t.matches(&ev), expected, "{}", src);
        }
    }

    /// An independent evaluator for the fully parenthesised expressions of `arb_expr`.
    fn eval_text(src: &str, kind: bool, n: i64, tag: bool) -> bool {
        let s = src.trim();
        if let Some(rest) = s.strip_prefix("not (") {
            return !eval_text(&rest[..rest.len() - 1], kind, n, tag);
        }
        if s.starts_with('(') && s.ends_with(')') {
            let inner = &s[1..s.len() - 1];
            let mut depth = 0;
            let bytes: Vec<char> = inner.chars().collect();
            for i in 0..bytes.len() {
                match bytes[i] {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ' ' if depth == 0 => {
                        let rest: String = bytes[i..].iter().collect();
                        if let Some(r) = rest.strip_prefix(" and ") {
                            let l: String = bytes[..i].iter().collect();
                            return eval_text(&l, kind, n, tag) && eval_text(r, kind, n, tag);
                        }
                        if let Some(r) = rest.strip_prefix(" or ") {
                            let l: String = bytes[..i].iter().collect();
                            return eval_text(&l, kind, n, tag) || eval_text(r, kind, n, tag);
                        }
                    }
                    _ => {}
                }
            }
        }
        match s {
            r#"type = "track""# => kind,
            r#"event != "A""# => false,
            "properties.n > 2" => n > 2,
            "traits.x = null" => true,
            r#"contains(properties.tags, "vip")"# => tag,
            other => panic!("unexpected leaf {other}"),
        }
    }
}
