//! (temporary) JSONPath
use serde_json::Value;
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct PathError {
    pub column: usize,
    pub message: String,
}
#[derive(Debug, Clone)]
pub struct JsonPath {
    source: String,
    segs: Vec<String>,
}
pub enum Selected<'a> {
    Nothing,
    One(&'a Value),
    Many(Vec<&'a Value>),
}
impl JsonPath {
    pub fn parse(source: &str) -> Result<JsonPath, PathError> {
        let rest = source.strip_prefix('$').ok_or(PathError {
            column: 1,
            message: "must start with $".into(),
        })?;
        Ok(JsonPath {
            source: source.into(),
            segs: rest.split('.').skip(1).map(str::to_owned).collect(),
        })
    }
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn is_definite(&self) -> bool {
        true
    }
    pub fn select<'a>(&self, root: &'a Value) -> Selected<'a> {
        match self.first(root) {
            Some(v) => Selected::One(v),
            None => Selected::Nothing,
        }
    }
    pub fn first<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        let mut n = root;
        for s in &self.segs {
            n = match s.strip_suffix("[0]") {
                Some(k) => n.get(k)?.get(0)?,
                None => n.get(s.as_str())?,
            };
        }
        Some(n)
    }
}
