//! Bulk forms: the compiled form of a step's `batch:` and of `destination.yaml`'s `jobs:`.
//!
//! A [`BatchForm`] says how the request a step renders for one event becomes one item of a
//! bulk request (the part of its body at `item`), how many items one bulk request takes, which
//! items are one record (`coalesce`), and how each item's result is read back into the answer
//! the step would have had for its single request. A [`JobsForm`] says how the job a bulk
//! request starts is polled, when it is done or failed, where its results are, and how the
//! recent jobs are listed (to wait for those pending before a write is read back). Delivery
//! (`deliver::batch`) collects, sends and polls; this module only compiles, checks and
//! reads.

use crate::mapping::diagnostic::Problems;
use crate::mapping::path::JsonPath;
use crate::mapping::plan::step::RequestTemplate;
use crate::mapping::request::{Method, Request};
use crate::mapping::spec::{BatchSpec, JobListSpec, JobsSpec, LookupBatchSpec, ResultMatch};
use crate::mapping::template::{RenderError, Scope, Templates, Text};
use serde_json::{Map, Value, json};
use std::sync::atomic::{AtomicBool, Ordering};

/// A compiled `batch:` form of a step.
#[derive(Debug)]
pub struct BatchForm {
    pub method: Method,
    pub path: String,
    /// The key of the list of items in the bulk body.
    pub items: String,
    /// Where the item is in the step's request body, as a JSON pointer (`$.user` is `/user`).
    item: String,
    pub max_items: usize,
    pub when: Option<Text>,
    pub coalesce: Option<Text>,
    /// Keys added to the item (templates).
    pub set: Vec<(String, Text)>,
    /// The answer is a job to poll (else the results are in the answer, at `results`).
    pub job: bool,
    results: Option<JsonPath>,
    by: ResultMatch,
    index: JsonPath,
    id: JsonPath,
    success: JsonPath,
    body_key: String,
    ok_status: u16,
    failed_status: u16,
    fallback_statuses: Vec<u16>,
    item_errors: Vec<String>,
    /// The bulk request was refused as not allowed (a `fallback` status): single requests now.
    refused: AtomicBool,
}

/// What a result says about its item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemAnswer {
    /// The status and body the step reads, as if its single request had been answered.
    pub status: u16,
    pub body: Value,
    /// The item failed with an error its single request answers better (`fallback.item_errors`).
    pub send_single: bool,
}

impl BatchForm {
    pub fn compile(
        spec: &BatchSpec,
        pointer: &str,
        templates: &mut Templates,
        problems: &mut Problems,
    ) -> Option<BatchForm> {
        let mut ok = true;
        let mut path = |src: &str, at: &str, problems: &mut Problems| {
            let compiled = JsonPath::compile(src, &format!("{pointer}/{at}"), problems);
            ok &= compiled.is_some();
            compiled
        };
        let results = spec
            .results
            .as_deref()
            .and_then(|r| path(r, "results", problems));
        let index = path(&spec.result.index, "result/index", problems);
        let id = path(&spec.result.id, "result/id", problems);
        let success = path(&spec.result.success, "result/success", problems);
        let item = item_pointer(&spec.item);
        if item.is_none() {
            problems.at(
                &format!("{pointer}/item"),
                format!(
                    "`{}`: the item is named by keys from the body's root, like `$.user`",
                    spec.item
                ),
            );
        }

        let mut expression =
            |src: &Option<String>, at: &str, text: bool, problems: &mut Problems| {
                let src = src.as_deref()?;
                let compiled = if text {
                    templates.text(src)
                } else {
                    templates.expression(src)
                };
                compiled
                    .map_err(|e| e.report("template error", &format!("{pointer}/{at}"), problems))
                    .ok()
            };
        let when = expression(&spec.when, "when", false, problems);
        let coalesce = expression(&spec.coalesce, "coalesce", true, problems);
        let mut set = Vec::new();
        for (key, src) in &spec.set {
            match expression(&Some(src.clone()), &format!("set/{key}"), true, problems) {
                Some(t) => set.push((key.clone(), t)),
                None => ok = false,
            }
        }
        if spec.when.is_some() && when.is_none()
            || spec.coalesce.is_some() && coalesce.is_none()
            || item.is_none()
        {
            ok = false;
        }
        if !spec.request.path.starts_with('/') {
            problems.at(&format!("{pointer}/request/path"), "a path starts with `/`");
        }
        if spec.request.path.contains("{{") || spec.request.path.contains('?') {
            problems.at(
                &format!("{pointer}/request/path"),
                "a bulk request is shared by every item: its path has no template and no query",
            );
        }
        if spec.items.is_empty() {
            problems.at(
                &format!("{pointer}/items"),
                "name the key of the list of items in the bulk body (`users`)",
            );
        }
        if !(1..=100).contains(&spec.max_items) {
            problems.at(
                &format!("{pointer}/max_items"),
                format!(
                    "a bulk request takes 1 to 100 items, not {}",
                    spec.max_items
                ),
            );
        }
        if spec.job == spec.results.is_some() {
            let message = if spec.job {
                "a bulk request answered with a job reads its results from the job (`jobs` in destination.yaml): leave `results` out"
            } else {
                "without a job, say where the results are in the bulk answer (`results: $.results`)"
            };
            problems.at(&format!("{pointer}/results"), message);
        }
        if spec.result.body_key.is_empty() {
            problems.at(
                &format!("{pointer}/result"),
                "say under which key the step reads an item's result (`body_key: user` gives `$.user.id`)",
            );
        }
        Some(BatchForm {
            method: spec.request.method,
            path: spec.request.path.clone(),
            items: spec.items.clone(),
            item: item.unwrap_or_default(),
            max_items: spec.max_items.clamp(1, 100),
            when,
            coalesce,
            set,
            job: spec.job,
            results,
            by: spec.result.by,
            index: index?,
            id: id?,
            success: success?,
            body_key: spec.result.body_key.clone(),
            ok_status: spec.result.ok_status,
            failed_status: spec.result.failed_status,
            fallback_statuses: spec.fallback.statuses.clone(),
            item_errors: spec.fallback.item_errors.clone(),
            refused: AtomicBool::new(false),
        })
        .filter(|_| ok)
    }

    /// Every compiled string of the form with its pointer (relative to the step).
    pub fn texts(&self) -> Vec<(String, &Text)> {
        let mut out = Vec::new();
        if let Some(w) = &self.when {
            out.push(("/batch/when".to_owned(), w));
        }
        if let Some(c) = &self.coalesce {
            out.push(("/batch/coalesce".to_owned(), c));
        }
        for (k, t) in &self.set {
            out.push((format!("/batch/set/{k}"), t));
        }
        out
    }

    /// Which bulk request an item joins: items of every step with the same bulk request and
    /// item key go out together.
    pub fn group(&self) -> String {
        format!("{} {} {}", self.method.as_str(), self.path, self.items)
    }

    /// The item of a step's rendered request: the part of its body at `item`, with the `set`
    /// keys evaluated in `scope`. `None` when the body has no such object or a key fails.
    pub fn item_of(&self, single: &Request, templates: &Templates, scope: &Scope) -> Option<Value> {
        let mut item = single
            .body
            .as_ref()
            .and_then(|b| b.pointer(&self.item))
            .filter(|v| v.is_object())
            .cloned()?;
        for (key, text) in &self.set {
            if let Some(v) = templates.eval(text, scope).ok()?
                && let Some(obj) = item.as_object_mut()
            {
                obj.insert(key.clone(), v);
            }
        }
        Some(item)
    }

    /// A step's single request with `item` (several events' items coalesced) in its place.
    pub fn single_with(&self, single: &Request, item: &Value) -> Request {
        let mut request = single.clone();
        if let Some(body) = request.body.as_mut()
            && let Some(slot) = body.pointer_mut(&self.item)
        {
            *slot = item.clone();
        }
        request
    }

    /// The bulk request carrying `items`.
    pub fn bulk_request(&self, items: Vec<Value>) -> Request {
        let mut body = Map::new();
        body.insert(self.items.clone(), Value::Array(items));
        Request {
            method: self.method,
            path: self.path.clone(),
            endpoint: self.path.clone(),
            query: Default::default(),
            headers: Default::default(),
            body: Some(Value::Object(body)),
        }
    }

    /// Whether a status of the bulk request means the form is not allowed here.
    pub fn is_refusal(&self, status: u16) -> bool {
        self.fallback_statuses.contains(&status)
    }

    /// The bulk form was refused: single requests from now on. `true` the first time.
    pub fn refuse(&self) -> bool {
        !self.refused.swap(true, Ordering::Relaxed)
    }

    pub fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// The results of a bulk answer that is not a job.
    pub fn results_in<'a>(&self, body: &'a Value) -> Option<&'a [Value]> {
        self.results
            .as_ref()
            .and_then(|p| p.first(body))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
    }

    /// The result of the item at `place` (whose body is `item`) among `results`.
    pub fn result_for<'a>(
        &self,
        results: &'a [Value],
        place: usize,
        item: &Value,
    ) -> Option<&'a Value> {
        match self.by {
            ResultMatch::Index => results
                .iter()
                .find(|r| {
                    self.index
                        .first(r)
                        .and_then(Value::as_u64)
                        .is_some_and(|i| i as usize == place)
                })
                .or_else(|| {
                    results
                        .get(place)
                        .filter(|r| self.index.first(r).is_none_or(Value::is_null))
                }),
            ResultMatch::Id => {
                let want = self.id.first(item).filter(|v| !v.is_null())?;
                results
                    .iter()
                    .find(|r| self.id.first(r).is_some_and(|v| same_id(v, want)))
            }
        }
    }

    /// The answer the step reads for an item's result.
    pub fn answer(&self, result: &Value, error_codes: &[String]) -> ItemAnswer {
        let succeeded = match self.success.first(result) {
            Some(Value::Bool(b)) => *b,
            _ => result.get("error").is_none_or(Value::is_null),
        };
        if succeeded {
            return ItemAnswer {
                status: self.ok_status,
                body: json!({ self.body_key.clone(): result }),
                send_single: false,
            };
        }
        ItemAnswer {
            status: self.failed_status,
            body: result.clone(),
            send_single: error_codes
                .iter()
                .any(|c| self.item_errors.iter().any(|e| e == c)),
        }
    }
}

/// `$.user.profile` as the JSON pointer `/user/profile`; `None` for anything but keys.
fn item_pointer(path: &str) -> Option<String> {
    let rest = path.strip_prefix("$.")?;
    let keys: Vec<&str> = rest.split('.').collect();
    keys.iter()
        .all(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| keys.iter().map(|k| format!("/{k}")).collect())
}

/// Ids compare as numbers or as text (`42` and `"42"` are one id).
fn same_id(a: &Value, b: &Value) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text(a) == text(b)
}

/// Merges `later` into `earlier`, field by field: later values win, objects merge key by key.
pub fn coalesce_into(earlier: &mut Value, later: &Value) {
    match (earlier, later) {
        (Value::Object(e), Value::Object(l)) => {
            for (k, v) in l {
                match e.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => coalesce_into(slot, v),
                    _ => {
                        e.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (e, l) => *e = l.clone(),
    }
}

/// A compiled bulk form of a resolver's lookup.
#[derive(Debug)]
pub struct LookupBatch {
    pub method: Method,
    pub path: String,
    query: String,
    pub max_keys: usize,
    records: JsonPath,
    key: JsonPath,
    value: JsonPath,
}

impl LookupBatch {
    pub fn compile(
        spec: &LookupBatchSpec,
        pointer: &str,
        problems: &mut Problems,
    ) -> Option<LookupBatch> {
        let path = |src: &str, at: &str, problems: &mut Problems| {
            JsonPath::compile(src, &format!("{pointer}/{at}"), problems)
        };
        let records = path(&spec.records, "records", problems);
        let key = path(&spec.key, "key", problems);
        let value = path(&spec.value, "value", problems);
        if !spec.request.path.starts_with('/')
            || spec.request.path.contains("{{")
            || spec.request.path.contains('?')
        {
            problems.at(
                &format!("{pointer}/request/path"),
                "a bulk lookup's path starts with `/` and has no template and no query (the keys go in `query`)",
            );
        }
        if spec.query.is_empty() {
            problems.at(
                &format!("{pointer}/query"),
                "name the query parameter that takes the keys (`external_ids`)",
            );
        }
        Some(LookupBatch {
            method: spec.request.method,
            path: spec.request.path.clone(),
            query: spec.query.clone(),
            max_keys: spec.max_keys.clamp(1, 100),
            records: records?,
            key: key?,
            value: value?,
        })
    }

    /// Whether a key can go in the comma-separated list.
    pub fn takes(&self, key: &str) -> bool {
        !key.is_empty() && !key.contains(',')
    }

    /// The request looking `keys` up.
    pub fn request(&self, keys: &[String]) -> Request {
        let mut query = indexmap::IndexMap::new();
        query.insert(self.query.clone(), keys.join(","));
        Request {
            method: self.method,
            path: self.path.clone(),
            endpoint: self.path.clone(),
            query,
            headers: Default::default(),
            body: None,
        }
    }

    /// The value each record of an answer gives its key (keys lowercased).
    pub fn found(&self, body: &Value) -> std::collections::HashMap<String, Value> {
        self.records
            .first(body)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let key = match self.key.first(r)? {
                    Value::String(s) => s.to_lowercase(),
                    Value::Null => return None,
                    other => other.to_string(),
                };
                let value = self.value.first(r).filter(|v| !v.is_null())?.clone();
                Some((key, value))
            })
            .collect()
    }
}

/// A compiled `jobs:` form of the destination.
#[derive(Debug)]
pub struct JobsForm {
    id: JsonPath,
    poll: RequestTemplate,
    status: JsonPath,
    done: Vec<String>,
    failed: Vec<String>,
    results: JsonPath,
    pub limit: usize,
    pub poll_ms: u64,
    pub poll_max_ms: u64,
    /// How recent jobs are listed (`list`), if the destination says.
    list: Option<JobList>,
}

/// A compiled `jobs.list`: the request listing recent jobs, and how to read it.
#[derive(Debug)]
struct JobList {
    request: RequestTemplate,
    jobs: JsonPath,
    id: JsonPath,
    status: JsonPath,
    pending: Vec<String>,
}

impl JobList {
    fn compile(
        spec: &JobListSpec,
        pointer: &str,
        templates: &mut Templates,
        problems: &mut Problems,
    ) -> Option<JobList> {
        let path = |src: &str, at: &str, problems: &mut Problems| {
            JsonPath::compile(src, &format!("{pointer}/{at}"), problems)
        };
        let jobs = path(&spec.jobs, "jobs", problems);
        let id = path(&spec.id, "id", problems);
        let status = path(&spec.status, "status", problems);
        let request = RequestTemplate::compile(
            &spec.request,
            &format!("{pointer}/request"),
            templates,
            problems,
        );
        if spec.pending.is_empty() {
            problems.at(
                &format!("{pointer}/pending"),
                "name the statuses of a job that has not ended (`queued`, `working`)",
            );
        }
        Some(JobList {
            request: request?,
            jobs: jobs?,
            id: id?,
            status: status?,
            pending: spec.pending.clone(),
        })
    }
}

/// Where a job stands.
#[derive(Debug, PartialEq)]
pub enum JobState<'a> {
    Running,
    Done(&'a [Value]),
    Failed(String),
}

impl JobsForm {
    /// The template of the request that polls a job.
    pub fn poll_template(&self) -> &RequestTemplate {
        &self.poll
    }

    pub fn compile(
        spec: &JobsSpec,
        pointer: &str,
        templates: &mut Templates,
        problems: &mut Problems,
    ) -> Option<JobsForm> {
        let path = |src: &str, at: &str, problems: &mut Problems| {
            JsonPath::compile(src, &format!("{pointer}/{at}"), problems)
        };
        let id = path(&spec.id, "id", problems);
        let status = path(&spec.status, "status", problems);
        let results = path(&spec.results, "results", problems);
        let poll =
            RequestTemplate::compile(&spec.poll, &format!("{pointer}/poll"), templates, problems);
        let list = match &spec.list {
            Some(l) => Some(JobList::compile(
                l,
                &format!("{pointer}/list"),
                templates,
                problems,
            )?),
            None => None,
        };
        if spec.done.is_empty() {
            problems.at(
                &format!("{pointer}/done"),
                "name the status of a job that is done (`completed`)",
            );
        }
        if !(1..=1000).contains(&spec.limit) {
            problems.at(
                &format!("{pointer}/limit"),
                format!("at most 1 to 1000 jobs at once, not {}", spec.limit),
            );
        }
        Some(JobsForm {
            id: id?,
            poll: poll?,
            status: status?,
            done: spec.done.clone(),
            failed: spec.failed.clone(),
            results: results?,
            limit: spec.limit.clamp(1, 1000),
            poll_ms: spec.poll_ms,
            poll_max_ms: spec.poll_max_ms.max(spec.poll_ms),
            list,
        })
    }

    /// The compiled strings of the poll and list requests, with pointers relative to `jobs`.
    pub fn texts(&self) -> Vec<(String, &Text)> {
        let list = self.list.iter().flat_map(|l| {
            l.request
                .texts()
                .into_iter()
                .map(|(p, t)| (format!("/list/request{p}"), t))
        });
        self.poll
            .texts()
            .into_iter()
            .map(|(p, t)| (format!("/poll{p}"), t))
            .chain(list)
            .collect()
    }

    /// Whether recent jobs can be listed (`list`).
    pub(crate) fn can_list(&self) -> bool {
        self.list.is_some()
    }

    /// The request listing recent jobs; `None` without `list`.
    pub fn list_request(
        &self,
        templates: &Templates,
        settings: &std::sync::Arc<Value>,
    ) -> Option<Result<Request, RenderError>> {
        let list = self.list.as_ref()?;
        let scope = Scope::builder().settings(settings.clone()).build();
        Some(list.request.render(templates, &scope))
    }

    /// The ids of the listed jobs that have not ended; `None` when the answer has no list.
    pub fn pending_in(&self, body: &Value) -> Option<Vec<String>> {
        let list = self.list.as_ref()?;
        let jobs = list.jobs.first(body)?.as_array()?;
        Some(
            jobs.iter()
                .filter(|j| {
                    list.status
                        .first(j)
                        .and_then(Value::as_str)
                        .is_some_and(|s| list.pending.iter().any(|p| p == s))
                })
                .filter_map(|j| match list.id.first(j)? {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect(),
        )
    }

    /// The job id in a bulk answer.
    pub fn job_id(&self, body: &Value) -> Option<String> {
        match self.id.first(body)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The request that reads a job (`key` is its id).
    pub fn poll_request(
        &self,
        templates: &Templates,
        settings: &std::sync::Arc<Value>,
        id: &str,
    ) -> Result<Request, RenderError> {
        let scope = Scope::builder()
            .settings(settings.clone())
            .key(Value::String(id.to_owned()))
            .build();
        self.poll.render(templates, &scope)
    }

    /// Where the job a poll answered stands.
    pub fn state<'a>(&self, body: &'a Value) -> JobState<'a> {
        let status = self
            .status
            .first(body)
            .and_then(Value::as_str)
            .unwrap_or_default();
        if self.failed.iter().any(|f| f == status) {
            return JobState::Failed(status.to_owned());
        }
        if self.done.iter().any(|d| d == status) {
            let results = self
                .results
                .first(body)
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            return JobState::Done(results);
        }
        JobState::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_values_win_field_by_field() {
        let mut a = json!({"name": "Ada", "user_fields": {"plan": "free", "tier": "gold"}});
        coalesce_into(
            &mut a,
            &json!({"phone": "1", "user_fields": {"plan": "pro"}}),
        );
        assert_eq!(
            a,
            json!({"name": "Ada", "phone": "1", "user_fields": {"plan": "pro", "tier": "gold"}})
        );
    }
}
