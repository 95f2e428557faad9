//! The trigger language: Segment's destination subscription syntax, with a real grammar.
//!
//! ```text
//! trigger    = or
//! or         = and { "or" and }
//! and        = unary { "and" unary }
//! unary      = ( "not" | "!" ) unary | primary
//! primary    = "(" or ")" | function | comparison
//! function   = ( "contains" | "match" ) "(" path "," string ")"
//! comparison = operand ( "=" | "!=" | "<" | "<=" | ">" | ">=" ) operand
//! operand    = path | string | number | "true" | "false" | "null"
//! path       = name { "." ( name | string ) }        e.g. properties."order id"
//! name       = letters, digits, `_`, `$`, `-`, and any character escaped with `\`
//! ```
//!
//! Every form of Segment's subscription syntax parses: `!contains(f, "x")` and `!match(f, "x*")`
//! (Segment's negated functions), backslash-escaped path segments (`properties.product\ 1.price`,
//! as Segment writes paths with spaces), `name`, `userId`, `context.*` and the rest.
//!
//! Nesting (parentheses and negations) is limited to [`MAX_NESTING`] levels, and `and`/`or`
//! chains are kept as lists, so no trigger can exhaust the stack while parsing, evaluating or
//! being dropped.
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

/// How deeply parentheses and negations may nest.
pub(crate) const MAX_NESTING: usize = 64;

/// A compiled trigger.
#[derive(Clone)]
pub struct Trigger {
    source: String,
    expr: Expr,
    warnings: Vec<TriggerError>,
}

/// A trigger that does not parse (the 1-based column, in characters, and what was expected), or
/// a warning about one that does.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct TriggerError {
    pub column: usize,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
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
            depth: 0,
            warnings: Vec::new(),
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
            warnings: p.warnings,
        })
    }

    /// What parses but is probably not what was meant: a bare name on the right of a
    /// comparison (`type = identify`), which is read as a field of the event, not as text.
    pub fn warnings(&self) -> &[TriggerError] {
        &self.warnings
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
        node = crate::mapping::event::member(node.as_object()?, seg)?;
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
            Expr::Or(all) => all.iter().any(|e| e.eval(event)),
            Expr::And(all) => all.iter().all(|e| e.eval(event)),
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
    Bang,
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
            Kind::Bang => f.write_str("`!`"),
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
            '!' => push(Kind::Bang, 1, &mut i),
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
            c if c.is_alphabetic() || c == '_' || c == '$' || c == '\\' => {
                let (text, len) = lex_name(&chars[i..]).map_err(|(off, m)| err(column + off, m))?;
                push(Kind::Name(text), len, &mut i);
            }
            other => return Err(err(column, format!("unexpected character {other:?}"))),
        }
    }
    Ok(out)
}

/// A name at the start of `chars` (`\` escapes the next character, as Segment writes a space or
/// a dot inside a path segment): its text and its length in characters.
fn lex_name(chars: &[char]) -> Result<(String, usize), (usize, String)> {
    let mut out = String::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            '\\' => {
                let escaped = chars.get(i + 1).ok_or((
                    i,
                    "`\\` at the end: it escapes the character after it".to_owned(),
                ))?;
                out.push(*escaped);
                i += 2;
            }
            c if c.is_alphanumeric() || matches!(c, '_' | '$' | '-') => {
                out.push(c);
                i += 1;
            }
            _ => break,
        }
    }
    Ok((out, i))
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
    /// Parentheses and negations open around the current position.
    depth: usize,
    warnings: Vec<TriggerError>,
}

/// Segment's top-level event fields: a bare name among these on the right of a comparison is
/// a deliberate field reference, anything else probably a forgotten string.
const EVENT_FIELDS: [&str; 14] = [
    "type",
    "event",
    "name",
    "userId",
    "anonymousId",
    "groupId",
    "previousId",
    "messageId",
    "timestamp",
    "receivedAt",
    "sentAt",
    "properties",
    "traits",
    "context",
];

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

    /// The column of the next token (the end when there is none).
    fn column(&self) -> usize {
        self.peek().map_or(self.end, |t| t.column)
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
        let mut all = vec![self.and()?];
        while self.eat_keyword("or") {
            all.push(self.and()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Expr::Or(all)
        })
    }

    fn and(&mut self) -> Result<Expr, TriggerError> {
        let mut all = vec![self.unary()?];
        while self.eat_keyword("and") {
            all.push(self.unary()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Expr::And(all)
        })
    }

    /// One level deeper (a parenthesis or a negation at `column`), refused past [`MAX_NESTING`].
    fn nest(&mut self, column: usize) -> Result<(), TriggerError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.error_at(
                column,
                format!("the trigger nests deeper than {MAX_NESTING} parentheses and negations"),
            ));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, TriggerError> {
        let column = self.column();
        if self.eat_keyword("not") || self.eat(&Kind::Bang) {
            self.nest(column)?;
            let e = Expr::Not(Box::new(self.unary()?));
            self.depth -= 1;
            return Ok(e);
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, TriggerError> {
        let column = self.column();
        if self.eat(&Kind::LParen) {
            self.nest(column)?;
            let e = self.or()?;
            if !self.eat(&Kind::RParen) {
                return Err(self.expected("`)`"));
            }
            self.depth -= 1;
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
        let right_at = self.column();
        let right = self.operand().map_err(|_| {
            let (column, found) = self.found();
            self.error_at(
                column,
                format!("expected a value (a field, string, number, true, false or null) after `{}`, found {found}", op_text(op)),
            )
        })?;
        if let (Operand::Path(_), Operand::Path(name)) = (&left, &right)
            && let [name] = name.as_slice()
            && !EVENT_FIELDS.contains(&name.as_str())
        {
            self.warnings.push(self.error_at(
                        right_at,
                        format!("`{name}` is read as a field of the event, not as text: write \"{name}\" to compare with the string"),
                    ));
        }
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

    /// Every trigger of Segment's own subscription tests parses, and means what Segment means.
    #[test]
    fn segment_subscription_forms() {
        let ev = json!({"type": "track", "event": "Product Added", "name": "Home", "userId": "u1",
            "properties": {"name": "Nike Air", "price": 120, "premium": "true", "foo": {"bar": "baz"}, "product 1": {"price": 3}},
            "traits": {"name": "MAX", "logins": 12, "plan": "premium", "test": true},
            "context": {"foo": "bar"}});
        for (trigger, expected) in [
            (r#"type = "track""#, true),
            (r#"type = "track" or type = "identify""#, true),
            (
                r#"type = "track" and (event = "Product Added" or event = "Order Completed")"#,
                true,
            ),
            (
                r#"event = "Product Added" and properties.price >= 100"#,
                true,
            ),
            (
                r#"event = "Product Added" and properties.price >= 100 and properties.premium = "true""#,
                true,
            ),
            (
                r#"event = "identify" and traits.logins >= 10 and traits.plan = "premium""#,
                false,
            ),
            (
                r#"(event = "identify" and traits.logins >= 100) or (event = "Product Added" and traits.logins >= 10)"#,
                true,
            ),
            (r#"contains(event, "Product")"#, true),
            (r#"!contains(event, "Nike")"#, true),
            (
                r#"event = "Product Added" and !contains(properties.name, "Nike")"#,
                false,
            ),
            (
                r#"event = "Product Added" and !contains(traits.name, "Nike")"#,
                true,
            ),
            (r#"match(event, "Product*")"#, true),
            (r#"!match(event, "*Added")"#, false),
            (
                r#"event = "Product Added" and !match(properties.name, "X*")"#,
                true,
            ),
            (
                r#"event = "Product Added" and match(traits.name, "*X")"#,
                true,
            ),
            (
                "event = \"Product Added\" and properties.name != null",
                true,
            ),
            ("event = \"Product Added\" and traits.missing = null", true),
            ("name = \"Home\"", true),
            ("name != null", true),
            ("userId != null", true),
            ("context.foo = \"bar\"", true),
            ("properties.foo.bar = \"baz\"", true),
            ("traits.test = true", true),
            ("traits.test = \"true\"", false),
            (r#"properties.product\ 1.price = 3"#, true),
            (r#"!(type = "identify")"#, true),
        ] {
            assert_eq!(m(trigger, ev.clone()), expected, "{trigger}");
        }
    }

    #[test]
    fn nesting_is_limited_with_a_located_error() {
        let deep = format!(
            "{}type = \"track\"{}",
            "(".repeat(10_000),
            ")".repeat(10_000)
        );
        let err = e(&deep);
        assert_eq!(err.column, MAX_NESTING + 1, "{err}");
        assert!(err.message.contains("nests deeper"), "{err}");
        let nots = format!("{}type = \"track\"", "not ".repeat(100_000));
        assert_eq!(e(&nots).column, 4 * MAX_NESTING + 1);
        let bangs = format!("{}contains(event, \"x\")", "!".repeat(100_000));
        assert!(e(&bangs).message.contains("nests deeper"));
        // Within the limit both parse, and long flat chains are no nesting at all.
        let ok = format!(
            "{}type = \"track\"{}",
            "(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        );
        assert!(m(&ok, json!({"type": "track"})));
        let chain = vec![r#"type = "track""#; 100_000].join(" and ");
        assert!(m(&chain, json!({"type": "track"})));
        let chain = vec![r#"type = "x""#; 100_000].join(" or ");
        assert!(!m(&chain, json!({"type": "track"})));
    }

    #[test]
    fn bare_names_on_the_right_are_warned_about() {
        let t = Trigger::parse("type = identify and event = Signed_In").unwrap();
        let w = t.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w[0].column, 8);
        assert!(w[0].message.contains("write \"identify\""), "{}", w[0]);
        assert_eq!(w[1].column, 29);
        for fine in [
            r#"type = "identify""#,
            "userId = anonymousId",
            "properties.a = properties.b",
            "traits.n > 3",
        ] {
            assert!(
                Trigger::parse(fine).unwrap().warnings().is_empty(),
                "{fine}"
            );
        }
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
