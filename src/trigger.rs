//! (temporary) trigger
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct TriggerError {
    pub column: usize,
    pub message: String,
}
#[derive(Debug, Clone)]
pub struct Trigger {
    source: String,
}
impl Trigger {
    pub fn parse(source: &str) -> Result<Trigger, TriggerError> {
        Ok(Trigger {
            source: source.into(),
        })
    }
    pub fn matches(&self, event: &serde_json::Value) -> bool {
        let t = event.get("type").and_then(|v| v.as_str()).unwrap_or("");
        self.source.contains(&format!("\"{t}\""))
    }
    pub fn source(&self) -> &str {
        &self.source
    }
}
