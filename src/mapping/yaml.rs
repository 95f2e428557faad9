//! YAML documents as trees that remember where each node came from.
//!
//! Config files are read in two passes: this module parses YAML into a [`Node`] tree whose
//! nodes and keys carry their line and column; the tree is then checked against the schema
//! and turned into typed values through plain JSON. When a later check fails at a JSON path
//! (`/steps/0/request/path`), [`Node::locate`] finds the line and column to report.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;
use std::fmt;

/// A 1-based line and column in a file (0 when unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loc {
    pub line: usize,
    pub column: usize,
}

impl Loc {
    fn of<T>(s: &Spanned<T>) -> Loc {
        Loc {
            line: usize::try_from(s.referenced.line()).unwrap_or(0),
            column: usize::try_from(s.referenced.column()).unwrap_or(0),
        }
    }
}

/// A YAML node and where it starts.
#[derive(Clone, Debug)]
pub struct Node {
    pub loc: Loc,
    pub value: NodeValue,
}

#[derive(Clone, Debug)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key and where it stands.
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub loc: Loc,
}

/// A YAML syntax error with its place.
#[derive(Clone, Debug)]
pub struct SyntaxError {
    pub loc: Loc,
    pub message: String,
}

/// Parses a YAML document into a located tree.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    let spanned: Spanned<Raw> = serde_saphyr::from_str(source).map_err(|e| {
        let loc = e
            .location()
            .map(|l| Loc {
                line: usize::try_from(l.line()).unwrap_or(0),
                column: usize::try_from(l.column()).unwrap_or(0),
            })
            .unwrap_or_default();
        SyntaxError {
            loc,
            message: first_line(&e.to_string()),
        }
    })?;
    Ok(Node {
        loc: Loc::of(&spanned),
        value: spanned.value.0,
    })
}

/// The first line of serde-saphyr's message, without the place it writes in (`error: line L
/// column C: ` before, ` at line L column C` after): the place is reported separately, once.
fn first_line(s: &str) -> String {
    let mut line = s.lines().next().unwrap_or(s).trim();
    line = line.strip_prefix("error: ").unwrap_or(line);
    if let Some(rest) = line.strip_prefix("line ")
        && let Some((place, message)) = rest.split_once(": ")
        && place.split(" column ").all(|n| n.parse::<u64>().is_ok())
    {
        line = message;
    }
    match line.find(" at line ") {
        Some(i) => line[..i].to_owned(),
        None => line.to_owned(),
    }
}

impl Node {
    /// The node as plain JSON (locations dropped).
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::Number((*i).into()),
            NodeValue::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => {
                let mut m = Map::with_capacity(entries.len());
                for (k, v) in entries {
                    m.insert(k.name.clone(), v.to_json());
                }
                Value::Object(m)
            }
        }
    }

    /// The child at a mapping key.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            NodeValue::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The location of the node at a JSON pointer (`/steps/0/name`), or of the deepest node on the
    /// way there. With `key = true`, a final mapping key's own location is given instead of its value's.
    pub(crate) fn locate(&self, pointer: &str, key: bool) -> Loc {
        match self.walk(pointer) {
            Walk::Found(_, Some(key_loc)) if key => key_loc,
            Walk::Found(node, _) | Walk::Deepest(node) => node.loc,
        }
    }

    /// The node at a JSON pointer, when there is one.
    pub fn find(&self, pointer: &str) -> Option<&Node> {
        match self.walk(pointer) {
            Walk::Found(node, _) => Some(node),
            Walk::Deepest(_) => None,
        }
    }

    fn walk(&self, pointer: &str) -> Walk<'_> {
        let mut node = self;
        let mut key_loc = None;
        for seg in pointer.split('/').skip(1) {
            let seg = seg.replace("~1", "/").replace("~0", "~");
            let child = match &node.value {
                NodeValue::Map(entries) => entries
                    .iter()
                    .find(|(k, _)| k.name == seg)
                    .map(|(k, v)| (v, Some(k.loc))),
                NodeValue::Seq(items) => seg
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get(i))
                    .map(|v| (v, None)),
                _ => None,
            };
            match child {
                Some((v, k)) => {
                    node = v;
                    key_loc = k;
                }
                None => return Walk::Deepest(node),
            }
        }
        Walk::Found(node, key_loc)
    }
}

/// Where a JSON pointer leads: its node (and the location of its last key, when that is a
/// mapping key), or the deepest node on the way when it leads nowhere.
enum Walk<'a> {
    Found(&'a Node, Option<Loc>),
    Deepest(&'a Node),
}

/// The value of a node, deserialized with `deserialize_any` so every YAML shape is kept.
struct Raw(NodeValue);

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor).map(Raw)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = NodeValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_none<E>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<NodeValue, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_bool<E>(self, v: bool) -> Result<NodeValue, E> {
        Ok(NodeValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<NodeValue, E> {
        Ok(NodeValue::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeValue, E> {
        i64::try_from(v)
            .map(NodeValue::Int)
            .or(Ok(NodeValue::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<NodeValue, E> {
        Ok(NodeValue::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<NodeValue, E> {
        Ok(NodeValue::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<NodeValue, E> {
        Ok(NodeValue::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(Node {
                loc: Loc::of(&item),
                value: item.value.0,
            });
        }
        Ok(NodeValue::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeValue, A::Error> {
        let mut entries: Vec<(Key, Node)> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Raw>>()? {
            let key_loc = Loc::of(&key);
            let name = match key.value.0 {
                NodeValue::Str(s) => s,
                NodeValue::Int(i) => i.to_string(),
                NodeValue::Bool(b) => b.to_string(),
                NodeValue::Float(f) => f.to_string(),
                NodeValue::Null => "null".to_owned(),
                NodeValue::Seq(_) | NodeValue::Map(_) => {
                    return Err(de::Error::custom("a mapping key must be a plain scalar"));
                }
            };
            let value = map.next_value::<Spanned<Raw>>()?;
            let key = Key { name, loc: key_loc };
            if entries.iter().any(|(k, _)| k.name == key.name) {
                return Err(de::Error::custom(format!("duplicate key `{}`", key.name)));
            }
            entries.push((
                key,
                Node {
                    loc: Loc::of(&value),
                    value: value.value.0,
                },
            ));
        }
        Ok(NodeValue::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_place() {
        let doc = "name: x\nsteps:\n  - name: a\n    request:\n      method: GET\n";
        let node = parse(doc).unwrap();
        assert_eq!(
            node.locate("/steps/0/request/method", false),
            Loc {
                line: 5,
                column: 15
            }
        );
        assert_eq!(
            node.locate("/steps/0/name", true),
            Loc { line: 3, column: 5 }
        );
        assert_eq!(node.to_json()["steps"][0]["request"]["method"], "GET");
    }

    #[test]
    fn syntax_errors_have_a_place() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.loc.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }
}
