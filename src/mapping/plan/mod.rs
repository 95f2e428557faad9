//! The compiled mappings and what planning an event gives.
//!
//! - [`Action`] and its [`step`]s, [`resolver`]s, [`outcome`]s and [`batch`] forms: the
//!   mappings as the config loads them, each compiled once with its problems located.
//! - [`Plan`]: what one event will do. It is plain data: the matched actions in their run
//!   order with their field values, plus the per-event errors (a missing required field).
//!   [`Preview`] and [`Offline`] are what `zdmap preview` shows of it.
//!
//! The loaded config makes plans (`Config::plan`, `Config::render_step`); this module knows
//! nothing of the config, so the config can be built from it.

pub mod batch;
pub mod outcome;
pub mod resolver;
pub mod step;

use crate::mapping::field::Field;
use crate::mapping::request::Request;
use crate::mapping::template::FieldValues;
use crate::mapping::trigger::Trigger;
use indexmap::IndexMap;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
pub use step::Step;

/// The name of an action (`upsert_user`): what a dead letter names as failed, and what a
/// replay delivers alone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ActionName(String);

impl ActionName {
    pub fn new(name: impl Into<String>) -> ActionName {
        ActionName(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ActionName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ActionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for ActionName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ActionName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<&str> for ActionName {
    fn from(name: &str) -> ActionName {
        ActionName(name.to_owned())
    }
}

impl From<ActionName> for String {
    fn from(name: ActionName) -> String {
        name.0
    }
}

/// A compiled action.
#[derive(Debug)]
pub struct Action {
    pub name: ActionName,
    pub title: String,
    /// What the action does, as its file says (`description:`), for people reading the console.
    pub description: Option<String>,
    pub file: PathBuf,
    pub enabled: bool,
    pub trigger: Trigger,
    pub after: Vec<String>,
    pub fields: Vec<Field>,
    /// The names of `fields`, for template scopes (a field without a value is `none`).
    pub field_names: Arc<[String]>,
    pub steps: Vec<Step>,
    /// The records the action changes (`entities:`), for ordering changes by event time.
    pub entities: Vec<Entity>,
}

/// A record an action changes: its kind and the template of its key.
#[derive(Debug)]
pub struct Entity {
    pub kind: String,
    pub key: crate::mapping::template::Text,
}

/// What one event will do.
#[derive(Debug)]
pub struct Plan {
    pub event: Arc<Value>,
    /// Matched actions whose fields all resolved, in run order.
    pub actions: Vec<PlannedAction>,
    /// Matched actions that cannot run for this event, and why.
    pub errors: Vec<PlanError>,
}

/// A matched action and its field values.
#[derive(Clone, Debug)]
pub struct PlannedAction {
    /// Index into the config's actions.
    pub action: usize,
    pub fields: Arc<FieldValues>,
}

/// Why an action failed for an event: the action, the step or field, and a message.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[error("action `{action}`{}: {message}", step.as_ref().map(|s| format!(", step `{s}`")).unwrap_or_default())]
pub struct PlanError {
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub message: String,
}

/// What a step renders to.
#[derive(Debug)]
pub enum Rendered {
    /// `when` was false (for every item of `each`).
    Skipped,
    /// The requests to send, in order (one, or one per item of `each`).
    Requests(Vec<Request>),
}

/// What an event renders to without any network.
#[derive(Debug)]
pub struct Offline {
    pub plan: Plan,
    pub requests: Vec<OfflineRequest>,
    /// Per planned action (index into the config's actions): the lookups its steps need.
    pub lookups: Vec<(usize, Vec<crate::mapping::template::LookupNeed>)>,
    pub errors: Vec<PlanError>,
}

/// A request of an offline render, with the indices of its action and step.
#[derive(Debug)]
pub struct OfflineRequest {
    pub action: usize,
    pub step: usize,
    pub request: Request,
}

/// Serialized as the request alone (the indices are for the caller).
impl Serialize for OfflineRequest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.request.serialize(serializer)
    }
}

/// The preview of one event.
#[derive(Debug, Serialize)]
pub struct Preview {
    #[serde(rename = "type")]
    pub kind: String,
    pub matched: Vec<String>,
    pub requests: Vec<PreviewRequest>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lookups: Vec<PreviewLookup>,
    pub errors: Vec<PlanError>,
}

#[derive(Debug, Serialize)]
pub struct PreviewRequest {
    pub action: String,
    pub step: String,
    #[serde(flatten)]
    pub request: Request,
    /// The bulk request the event joins instead, when the step is batched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<PreviewBatch>,
    /// Why it would not be sent: `unchanged, skipped` when it equals the last write applied to
    /// its entity (`skip_unchanged`, as the store a preview is given knows it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<&'static str>,
}

/// What a preview says of a write skipped as unchanged.
pub const UNCHANGED_SKIPPED: &str = "unchanged, skipped";

/// The bulk request a step's request joins as an item.
#[derive(Debug, Serialize)]
pub struct PreviewBatch {
    pub method: crate::mapping::request::Method,
    pub path: String,
    /// The key of the list of items in the bulk body.
    pub items: String,
    /// This event's item.
    pub item: Value,
    /// The identity items are coalesced by, when the form says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesce: Option<String>,
}

/// A lookup a preview needs: the resolver and its keys.
#[derive(Debug, Serialize)]
pub struct PreviewLookup {
    pub action: String,
    pub resolver: String,
    pub keys: IndexMap<String, String>,
}

impl Preview {
    pub fn to_json(&self, index: usize) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        if let Value::Object(m) = &mut v {
            m.shift_insert(0, "index".into(), json!(index));
        }
        v
    }
}
