//! JSONPath, compiled once: plain paths walk the value directly, the rest go to jsonpath-rust.
//!
//! A plain path (`$`, `$.a.b[0]`, `$['a b'].c`, `$.list[-1]`) names at most one value; it is
//! parsed here into segments and evaluated without allocating. Any other path (wildcards,
//! filters, slices, `..`, unions) is parsed by jsonpath-rust when the mappings load and
//! evaluated by it. A property test checks that both give the same answers on plain paths.
//! A JSON `null` found at a path is returned as a value; callers decide what it means.
//!
//! The work of a query is bounded when it is parsed, so an event can never make one explode:
//! at most one `..` (each multiplies the work by the size of the document) and never `..*`
//! (every node, each with all it holds), unions that repeat
//! a node at most [`MAX_FAN_OUT`] times over the whole path, and filters that read only single
//! values (names and indices). Within these, a query selects at most `MAX_FAN_OUT` times as many
//! values as the document has, in time of the same order.

use crate::mapping::diagnostic::{Problems, byte_offset};
use jsonpath_rust::parser::model::{
    Comparable, Filter, FilterAtom, FnArg, JpQuery, Segment as QuerySegment, Selector, Test,
    TestFunction,
};
use serde_json::Value;
use std::fmt;

/// A compiled JSONPath.
#[derive(Clone)]
pub struct JsonPath {
    source: String,
    compiled: Compiled,
}

#[derive(Clone)]
enum Compiled {
    Plain(Vec<Segment>),
    Query(Box<JpQuery>),
}

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Name(String),
    Index(i64),
}

/// A path that does not parse: the 1-based column (in characters) and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct PathError {
    pub column: usize,
    pub message: String,
}

impl PathError {
    /// Reports the error at its column inside the path `source`, the string at `pointer`.
    pub fn report(&self, source: &str, pointer: &str, problems: &mut Problems) {
        problems.at_offset(
            pointer,
            byte_offset(source, self.column),
            format!("bad JSONPath {source:?}: {}", self.message),
        );
    }
}

/// What the parser expected, in words, from its report (`= expected selector` gives
/// "expected a selector"); its raw text is not for users.
fn expected(report: &str) -> String {
    let Some(rules) = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("= expected "))
    else {
        return "not a valid JSONPath".into();
    };
    let words = rules
        .replace("ALPHA", "a name")
        .replace("DIGIT", "a digit")
        .replace('_', " ");
    format!("expected {words} here")
}

/// What a path selects.
#[derive(Debug, PartialEq)]
pub enum Selected<'a> {
    Nothing,
    One(&'a Value),
    Many(Vec<&'a Value>),
}

impl JsonPath {
    /// `source` compiled as a configuration's path: a mistake is reported at its column inside
    /// the string at `pointer`, and gives `None`.
    pub fn compile(source: &str, pointer: &str, problems: &mut Problems) -> Option<JsonPath> {
        JsonPath::parse(source)
            .map_err(|e| e.report(source, pointer, problems))
            .ok()
    }

    pub fn parse(source: &str) -> Result<JsonPath, PathError> {
        if !source.starts_with('$') {
            return Err(PathError {
                column: 1,
                message: "a JSONPath starts with `$`".into(),
            });
        }
        if let Some(segments) = parse_plain(source) {
            return Ok(JsonPath {
                source: source.to_owned(),
                compiled: Compiled::Plain(segments),
            });
        }
        match jsonpath_rust::parser::parse_json_path(source) {
            Ok(q) => {
                if let Some(e) = unbounded(source, &q) {
                    return Err(e);
                }
                Ok(JsonPath {
                    source: source.to_owned(),
                    compiled: Compiled::Query(Box::new(q)),
                })
            }
            Err(e) => {
                let text = e.to_string();
                Err(PathError {
                    column: pest_column(&text).unwrap_or(1),
                    message: expected(&text),
                })
            }
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Only names and indices: the path selects at most one value.
    pub(crate) fn is_definite(&self) -> bool {
        matches!(self.compiled, Compiled::Plain(_))
    }

    pub fn select<'a>(&self, root: &'a Value) -> Selected<'a> {
        match &self.compiled {
            Compiled::Plain(segments) => match walk(root, segments) {
                Some(v) => Selected::One(v),
                None => Selected::Nothing,
            },
            Compiled::Query(q) => match jsonpath_rust::query::js_path_process(q, root) {
                Ok(refs) if !refs.is_empty() => {
                    Selected::Many(refs.into_iter().map(|r| r.val()).collect())
                }
                _ => Selected::Nothing,
            },
        }
    }

    /// The first value selected.
    pub fn first<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        match self.select(root) {
            Selected::Nothing => None,
            Selected::One(v) => Some(v),
            Selected::Many(vs) => vs.into_iter().next(),
        }
    }
}

impl fmt::Debug for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonPath({:?})", self.source)
    }
}

fn walk<'a>(root: &'a Value, segments: &[Segment]) -> Option<&'a Value> {
    let mut node = root;
    for seg in segments {
        node = match (seg, node) {
            (Segment::Name(n), Value::Object(m)) => crate::mapping::event::member(m, n)?,
            (Segment::Index(i), Value::Array(a)) => {
                let i = if *i < 0 { a.len() as i64 + i } else { *i };
                a.get(usize::try_from(i).ok()?)?
            }
            _ => return None,
        };
    }
    Some(node)
}

/// Parses `$`, `.name`, `['name']`, `["name"]` and `[index]` segments; `None` for anything else.
fn parse_plain(source: &str) -> Option<Vec<Segment>> {
    let chars: Vec<char> = source.chars().collect();
    let mut i = 1;
    let mut out = Vec::new();
    while i < chars.len() {
        match chars[i] {
            '.' => {
                let start = i + 1;
                let mut j = start;
                if j >= chars.len() || !(chars[j].is_ascii_alphabetic() || chars[j] == '_') {
                    return None;
                }
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                out.push(Segment::Name(chars[start..j].iter().collect()));
                i = j;
            }
            '[' => {
                let close = chars[i..].iter().position(|c| *c == ']')? + i;
                let inner: String = chars[i + 1..close].iter().collect();
                let quoted =
                    |q: char| inner.len() >= 2 && inner.starts_with(q) && inner.ends_with(q);
                if quoted('\'') || quoted('"') {
                    let name = &inner[1..inner.len() - 1];
                    if name.contains(['\\', '\'', '"']) {
                        return None;
                    }
                    out.push(Segment::Name(name.to_owned()));
                } else {
                    let valid = !inner.is_empty()
                        && (inner == "0" || !inner.trim_start_matches('-').starts_with('0'))
                        && inner != "-"
                        && inner
                            .trim_start_matches('-')
                            .chars()
                            .all(|c| c.is_ascii_digit())
                        && inner.matches('-').count() <= 1
                        && (!inner.contains('-') || inner.starts_with('-'));
                    if !valid || inner == "-0" {
                        return None;
                    }
                    out.push(Segment::Index(inner.parse().ok()?));
                }
                i = close + 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// How many times over a query may select one node through its unions (`[0,0]`, `['a','a']`).
pub(crate) const MAX_FAN_OUT: u64 = 16;

/// Why a query could take work out of proportion to the document it reads, if it could.
fn unbounded(source: &str, query: &JpQuery) -> Option<PathError> {
    let column_of = |needle: &str, nth: usize| {
        source
            .match_indices(needle)
            .nth(nth)
            .map_or(1, |(i, _)| source[..i].chars().count() + 1)
    };
    let mut descendants = 0;
    let mut fan_out: u64 = 1;
    for segment in &query.segments {
        let selectors = match segment {
            QuerySegment::Descendant(inner) => {
                descendants += 1;
                if descendants > 1 {
                    return Some(PathError {
                        column: column_of("..", 1),
                        message: "a JSONPath may use `..` once: each one multiplies the work by \
                                  the size of the event"
                            .into(),
                    });
                }
                let inner = selectors(inner);
                if inner.iter().any(|s| matches!(s, Selector::Wildcard)) {
                    return Some(PathError {
                        column: column_of("..", 0),
                        message: "`..*` selects every node of the event, each with all it holds, \
                                  so its work grows with the event's size times its depth: name \
                                  what to find (`$..email`)"
                            .into(),
                    });
                }
                inner
            }
            other => selectors(other),
        };
        fan_out = fan_out.saturating_mul(selectors.len().max(1) as u64);
        let filters_ok = selectors.iter().all(|s| match s {
            Selector::Filter(f) => filter_reads_single_values(f),
            _ => true,
        });
        if !filters_ok {
            return Some(PathError {
                column: column_of("?", 0),
                message: "a filter may only read single values (names and indices): no `*`, \
                          `..`, slices or filters inside it, which would run once per node"
                    .into(),
            });
        }
    }
    (fan_out > MAX_FAN_OUT).then(|| PathError {
        column: column_of(",", 0),
        message: format!(
            "the unions of this JSONPath select each node up to {fan_out} times; at most \
             {MAX_FAN_OUT} is allowed"
        ),
    })
}

fn selectors(segment: &QuerySegment) -> &[Selector] {
    match segment {
        QuerySegment::Selector(s) => std::slice::from_ref(s),
        QuerySegment::Selectors(v) => v,
        // The parser never nests descendants; if it did, count the inner one as nothing selected.
        QuerySegment::Descendant(_) => &[],
    }
}

fn filter_reads_single_values(filter: &Filter) -> bool {
    match filter {
        Filter::Or(fs) | Filter::And(fs) => fs.iter().all(filter_reads_single_values),
        Filter::Atom(FilterAtom::Filter { expr, .. }) => filter_reads_single_values(expr),
        Filter::Atom(FilterAtom::Test { expr, .. }) => test_reads_single_values(expr),
        Filter::Atom(FilterAtom::Comparison(c)) => {
            let (left, right) = c.vals();
            [left, right].into_iter().all(|side| match side {
                Comparable::Literal(_) | Comparable::SingularQuery(_) => true,
                Comparable::Function(f) => function_reads_single_values(f),
            })
        }
    }
}

fn test_reads_single_values(test: &Test) -> bool {
    let singular = |segments: &[QuerySegment]| {
        segments.iter().all(|s| {
            matches!(
                s,
                QuerySegment::Selector(Selector::Name(_) | Selector::Index(_))
            )
        })
    };
    match test {
        Test::RelQuery(segments) => singular(segments),
        Test::AbsQuery(q) => singular(&q.segments),
        Test::Function(f) => function_reads_single_values(f),
    }
}

fn function_reads_single_values(f: &TestFunction) -> bool {
    let arg_ok = |a: &FnArg| match a {
        FnArg::Literal(_) => true,
        FnArg::Test(t) => test_reads_single_values(t),
        FnArg::Filter(f) => filter_reads_single_values(f),
    };
    match f {
        TestFunction::Custom(_, args) => args.iter().all(arg_ok),
        TestFunction::Length(a) => arg_ok(a),
        TestFunction::Value(a) | TestFunction::Count(a) => arg_ok(a),
        TestFunction::Search(a, b) | TestFunction::Match(a, b) => arg_ok(a) && arg_ok(b),
    }
}

/// The column of a pest error message (` --> 1:7`).
fn pest_column(text: &str) -> Option<usize> {
    let at = text.find("--> ")?;
    let rest = &text[at + 4..];
    let (_, col) = rest.split_once(':')?;
    col.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn plain_paths_take_the_fast_path() {
        let doc = json!({"a": {"b c": [1, {"d": 2}]}, "x": null});
        for (path, want) in [
            ("$.a['b c'][0]", Some(json!(1))),
            ("$.a[\"b c\"][-1].d", Some(json!(2))),
            ("$.a['b c'][5]", None),
            ("$.x", Some(Value::Null)),
            ("$", Some(doc.clone())),
        ] {
            let p = JsonPath::parse(path).unwrap();
            assert!(p.is_definite(), "{path}");
            assert_eq!(p.first(&doc).cloned(), want, "{path}");
        }
    }

    #[test]
    fn other_paths_are_compiled_queries() {
        let doc = json!({"fields": [{"key": "a"}, {"key": "b"}], "details": {"email": [{"error": "DuplicateValue"}]}});
        let keys = JsonPath::parse("$.fields[*].key").unwrap();
        assert!(!keys.is_definite());
        assert_eq!(
            keys.select(&doc),
            Selected::Many(vec![&json!("a"), &json!("b")])
        );
        let codes = JsonPath::parse("$.details.*[*].error").unwrap();
        assert_eq!(codes.first(&doc), Some(&json!("DuplicateValue")));
        let filtered = JsonPath::parse("$.fields[?@.key == 'b'].key").unwrap();
        assert_eq!(filtered.select(&doc), Selected::Many(vec![&json!("b")]));
        assert_eq!(
            JsonPath::parse("$.nothing[*]").unwrap().select(&doc),
            Selected::Nothing
        );
    }

    #[test]
    fn work_is_bounded_when_parsing() {
        for (path, column) in [
            ("$..*..*..*..*..*..*..*..*", 2),
            ("$..a..b", 5),
            ("$.a[?@..b]", 5),
            ("$.a[?@.b[*]]", 5),
            ("$.a[?count(@.*) > 1]", 5),
            ("$[0,0,0,0][0,0,0,0][0,0]", 4),
            ("$..*", 2),
            ("$.a..[*]", 4),
        ] {
            let e = JsonPath::parse(path).expect_err(path);
            assert_eq!(e.column, column, "{path}: {e}");
        }
        for path in [
            "$..email",
            "$.details.*[*].error",
            "$.fields[?@.key == 'b'].key",
            "$[0,1,2,3][0,1,2,3]",
        ] {
            assert!(JsonPath::parse(path).is_ok(), "{path}");
        }
    }

    #[test]
    fn one_descendant_on_a_deep_event_selects_each_node_once() {
        let mut doc = json!({"b": [1, 2, 3]});
        for _ in 0..30 {
            doc = json!({"a": doc, "b": [1, 2, 3]});
        }
        let Selected::Many(all) = JsonPath::parse("$..b").unwrap().select(&doc) else {
            panic!("selects values")
        };
        // One `b` at each of the 31 levels.
        assert_eq!(all.len(), 31);
    }

    #[test]
    fn errors_have_a_column() {
        let e = JsonPath::parse("$.a[").unwrap_err();
        assert!(e.column >= 1, "{e}");
        assert_eq!(JsonPath::parse("traits.email").unwrap_err().column, 1);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("a".to_owned()),
                        Just("b c".to_owned()),
                        Just("_x1".to_owned())
                    ],
                    inner,
                    0..3
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_path() -> impl Strategy<Value = String> {
        let seg = prop_oneof![
            Just(".a".to_owned()),
            Just("._x1".to_owned()),
            Just("['b c']".to_owned()),
            Just("[\"a\"]".to_owned()),
            (-4i64..4).prop_map(|i| format!("[{i}]")),
        ];
        prop::collection::vec(seg, 0..4).prop_map(|s| format!("${}", s.concat()))
    }

    proptest! {
        /// The fast path answers exactly as jsonpath-rust does on plain paths.
        #[test]
        fn fast_path_agrees_with_jsonpath_rust(doc in arb_json(), path in arb_path()) {
            let p = JsonPath::parse(&path).unwrap();
            prop_assert!(p.is_definite(), "{}", path);
            let fast: Vec<&Value> = p.first(&doc).into_iter().collect();
            let slow = jsonpath_rust::query::js_path_vals(&path, &doc).unwrap();
            prop_assert_eq!(fast, slow, "{}", path);
        }
    }
}
