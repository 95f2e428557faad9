//! The shapes of the config files, as written: action files, `destination.yaml` and test cases.
//!
//! These types are what the YAML deserializes into and what `schemas/*.schema.json` are
//! generated from (schemars), so the editor schema and the loader never disagree. They hold
//! source text only; `config` compiles them into the compiled runtime types.

use crate::mapping::request::Method;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn yes() -> bool {
    true
}

/// One action: when it runs (trigger), what it reads (fields) and what it sends (steps).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "zdmap action")]
pub(crate) struct ActionSpec {
    /// Unique name of the action (lowercase letters, digits and `_`), used by `after` and in reports.
    pub name: String,
    /// Human title, e.g. "Upsert User".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A disabled action is loaded and checked but never triggered.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// When the action runs, in Segment's subscription syntax: `type = "track" and event = "Ticket Created"`.
    pub trigger: String,
    /// Actions that must run before this one when one event triggers both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Named values read from the event. Steps use them by name in templates.
    #[serde(default)]
    pub fields: IndexMap<String, FieldDef>,
    /// The requests, in order.
    pub steps: Vec<StepSpec>,
    /// The records this action changes, each a kind and a key (templates over the fields).
    /// zdmap keeps the time of the last change applied to each; a change older than that (a
    /// replayed dead letter, a late retry) is skipped and reported instead of applied over the
    /// newer one. A key without a value leaves its entity out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<EntitySpec>,
}

/// A record an action changes, for ordering changes by the event's time.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntitySpec {
    /// What kind of record it is: `user`, `organization`, `ticket`, `membership`, ...
    pub kind: String,
    /// Template giving the record's key among its kind, e.g. `"{{ external_id or email }}"`.
    pub key: String,
}

/// A field: a JSONPath (`$.traits.email`), a template (`"{{ traits.name }}"`), a literal, or a full definition.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum FieldDef {
    Full(Box<FieldSpec>),
    Short(Scalar),
}

/// A scalar YAML value.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Number(serde_json::Number),
    String(String),
}

impl Scalar {
    pub fn to_json(&self) -> Value {
        match self {
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Number(n) => Value::Number(n.clone()),
            Scalar::String(s) => Value::String(s.clone()),
        }
    }
}

/// A field with one source (`path`, `template`, `value`, `setting`, `first_of` or `entries`) and options.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// A JSONPath into the event, e.g. `$.traits.email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A minijinja template over the event's top-level keys and `settings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// A literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The value of a destination setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
    /// The first of these sources that gives a value that is not null or an empty string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_of: Option<Vec<FieldDef>>,
    /// An object built from the entries of one or more objects in the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<EntriesSpec>,
    /// Convert the value to this type; a value that cannot be converted is an error for the event.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ValueType>,
    /// A missing required field is an error for the event, naming the field and the paths tried.
    #[serde(default)]
    pub required: bool,
    /// Used when the source gives nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Builds an object from the entries of event objects, e.g. custom traits for `user_fields`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntriesSpec {
    /// JSONPaths of objects to merge; later ones win on equal keys.
    pub from: Vec<String>,
    /// Keys to leave out (compared before and after key conversion).
    #[serde(default)]
    pub except: Vec<String>,
    /// How to convert the keys.
    #[serde(default)]
    pub key_case: KeyCase,
    /// Which values to keep.
    #[serde(default)]
    pub values: EntryValues,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyCase {
    /// Keep keys as they are.
    #[default]
    AsIs,
    /// `planName` and `Plan Name` become `plan_name`.
    SnakeCase,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EntryValues {
    /// Strings, numbers and booleans only (objects, arrays and nulls are left out).
    #[default]
    Scalars,
    /// Every non-null value.
    Any,
}

/// The type a value is converted to.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
    Any,
}

/// One HTTP request of an action.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Name of the step, unique in the action; later steps read its outputs as `steps.NAME.OUTPUT`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A minijinja expression; the step runs only when it is true (e.g. `remove != true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// A minijinja expression giving a list; the step runs once per element, available as `item`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub each: Option<String>,
    pub request: RequestSpec,
    /// What a response status means, overriding the destination's defaults. Keys: `404`,
    /// `4xx`, `422/DuplicateValue` (status and error code).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub outcomes: IndexMap<String, OutcomeKind>,
    /// Values read from the response body by JSONPath, for later steps.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub outputs: IndexMap<String, String>,
    /// Resolver cache entries filled from the response, so later lookups cost no request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learn: Vec<LearnSpec>,
    /// Resolvers whose cached answers this step makes stale (e.g. after creating a field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forget: Vec<String>,
    /// Whether sending the request again does no more than sending it once (an upsert, a
    /// request with an idempotency key, a write whose repeat is an error an outcome accepts).
    /// Default: true for GET, PUT and DELETE, false for POST and PATCH. After an ambiguous
    /// failure (a 5xx, a timeout, a dropped connection: the write may have been applied), a step
    /// that is not idempotent is tried again only when its `check` says the write was not
    /// applied; without a `check` it is dead-lettered instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// For a step that is not idempotent: how to tell whether its write was applied, by a marker
    /// the write carries and the check reads back. Runs only after an ambiguous failure (and
    /// before the first attempt of a replayed or resumed event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSpec>,
    /// The step's bulk form: the request of several events goes out as one bulk request, each
    /// event's part of it an item, and each event is answered by its item's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
    /// For how long a write that would change nothing is skipped (`24h`, `30m`, `90s`, `7d`):
    /// when the rendered request equals the last one applied to the action's entity within
    /// this span, it is not sent, and its outputs and learned ids are those of that last write.
    /// Only for an idempotent write of an action with `entities`, one request per step (no
    /// `each`), and never for a removal (`DELETE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)$"))]
    pub skip_unchanged: Option<String>,
}

/// How to tell whether a write was applied: a request (usually a GET of what the write adds),
/// and the JSONPath of values in its answer, one of which equals the write's marker when the
/// write was applied.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub request: RequestSpec,
    /// The write was applied when a value at `path` in the answer equals `equals`.
    pub applied: AppliedSpec,
    /// How to read the answer's later pages, for a list that may not fit in one (audits,
    /// events): without it only the first page is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<PagesSpec>,
}

/// How a [`CheckSpec`] follows the pages of its answer: the next page's link is followed while
/// the answer says there is more, until the marker is found or `most` pages were read. A check
/// that reads `most` pages without reaching the end cannot tell, and the step is dead-lettered
/// (it may have been applied). Links are followed only on the destination's own host.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagesSpec {
    /// JSONPath to the next page's link (a full URL) in an answer: `$.links.next` (cursor
    /// pagination) or `$.next_page` (offset pagination). No link (or `null`): the last page.
    pub next: String,
    /// JSONPath to whether there are more pages (`$.meta.has_more`). When it says `false` the
    /// page is the last whatever its link; when it says `true` the answer must have a link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more: Option<String>,
    /// Most pages read, the first included.
    #[serde(default = "default_most_pages")]
    #[schemars(range(min = 1, max = 1000))]
    pub most: usize,
}

fn default_most_pages() -> usize {
    10
}

/// The condition of a [`CheckSpec`] over its answer.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppliedSpec {
    /// JSONPath to the markers in the answer, e.g. `$.events[*].properties.zdmap_marker`.
    pub path: String,
    /// Template giving the marker the write carries, e.g. `"{{ marker }}"`. Without a value
    /// (an event without a `messageId`) the check cannot tell, and the step is dead-lettered.
    pub equals: String,
}

/// A step's bulk form (see docs/delivery.md, "Batching"). The step's own request is what a single event
/// sends when batching is off or the bulk form is not allowed.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// The bulk request, shared by every item (no templates).
    pub request: BulkRequestSpec,
    /// The key of the list of items in the bulk request's body (`users`).
    pub items: String,
    /// A JSONPath into the step's request body giving its item (`$.user`).
    pub item: String,
    /// Most items in one bulk request.
    #[serde(default = "default_max_items")]
    #[schemars(range(min = 1, max = 100))]
    pub max_items: usize,
    /// Keys added to the item, each a template over the step's scope (`id: "{{ resolve('ticket', ...) }}"`
    /// for an update whose single request names the record in its path); a key without a value
    /// is left out.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub set: IndexMap<String, String>,
    /// A minijinja expression over the step's scope; the step is batched only when it is true
    /// (otherwise its single request is sent). A lookup it needs is answered from the cache
    /// only: a record not known yet goes single.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// A template giving the identity of the record an item writes (`{{ external_id or email }}`):
    /// items with the same identity in one batch become one item, later values winning field
    /// by field, and each of their events is answered by that item's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce: Option<String>,
    /// The bulk request answers with a job (polled as `destination.yaml`'s `jobs` says); `false`:
    /// the results are in the answer itself, at `results`.
    #[serde(default = "yes")]
    pub job: bool,
    /// Without a job: a JSONPath to the list of results in the bulk answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<String>,
    /// How a result is read back.
    #[serde(default)]
    pub result: BatchResultSpec,
    /// When not to use the bulk form.
    #[serde(default)]
    pub fallback: BatchFallbackSpec,
}

/// The bulk request of a batch form.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequestSpec {
    pub method: Method,
    /// The path (`/api/v2/users/create_or_update_many`).
    pub path: String,
}

/// How each item's result is found and what the step sees as its response.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchResultSpec {
    /// How a result finds its item: `index` (the result's `index`, else its place in the list)
    /// or `id` (the result's `id` equals the item's `id`).
    #[serde(default, rename = "match")]
    pub by: ResultMatch,
    /// JSONPath to a result's index (for `match: index`).
    #[serde(default = "default_index_path")]
    pub index: String,
    /// JSONPath to a result's id, and to an item's id (for `match: id`).
    #[serde(default = "default_id_path")]
    pub id: String,
    /// JSONPath to whether an item succeeded; a result without it succeeded unless it has an `error`.
    #[serde(default = "default_success_path")]
    pub success: String,
    /// The step sees `{BODY_KEY: result}` as its response body (`user`: `$.user.id` is the
    /// result's `id`), so its `outputs`, `learn` and `outcomes` read it as a single answer.
    pub body_key: String,
    /// The status the step sees for an item that succeeded.
    #[serde(default = "default_ok_status")]
    pub ok_status: u16,
    /// The status the step sees for an item that failed (its body is the result, with the
    /// destination's error codes and messages read from it).
    #[serde(default = "default_failed_status")]
    pub failed_status: u16,
}

impl Default for BatchResultSpec {
    fn default() -> Self {
        BatchResultSpec {
            by: ResultMatch::default(),
            index: default_index_path(),
            id: default_id_path(),
            success: default_success_path(),
            body_key: String::new(),
            ok_status: default_ok_status(),
            failed_status: default_failed_status(),
        }
    }
}

/// How a result finds its item.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResultMatch {
    #[default]
    Index,
    Id,
}

/// When items go as single requests instead.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchFallbackSpec {
    /// Statuses of the bulk request meaning the bulk form is not allowed on this account (403:
    /// bulk user imports are off): said once in the log, and the step sends single requests
    /// from then on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<u16>,
    /// Error codes of an item's result that its single request answers better (the single
    /// request is sent and its answer judged by the step's outcomes: `422/DuplicateValue: ok`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub item_errors: Vec<String>,
}

fn default_max_items() -> usize {
    100
}
fn default_index_path() -> String {
    "$.index".into()
}
fn default_id_path() -> String {
    "$.id".into()
}
fn default_success_path() -> String {
    "$.success".into()
}
fn default_ok_status() -> u16 {
    200
}
fn default_failed_status() -> u16 {
    422
}

/// How bulk jobs are polled and limited (`destination.yaml`'s `jobs`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobsSpec {
    /// JSONPath to the job's id in a bulk answer (`$.job_status.id`).
    pub id: String,
    /// The request that reads a job, with `{{ id }}` (`GET /api/v2/job_statuses/{{ id }}`).
    pub poll: RequestSpec,
    /// JSONPath to the job's status in the poll's answer.
    pub status: String,
    /// Statuses of a job that is done (its results are read).
    pub done: Vec<String>,
    /// Statuses of a job that failed as a whole (its items are tried again, like a failed request).
    #[serde(default)]
    pub failed: Vec<String>,
    /// JSONPath to the list of results in the poll's answer.
    pub results: String,
    /// Most jobs queued or running at once (Zendesk: 30).
    #[serde(default = "default_job_limit")]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: usize,
    /// The first job's first poll comes this long after its bulk request; later jobs are first
    /// polled when the jobs before them were seen done (learned as they go). A job still running
    /// is polled again, each wait half as long again as the one before, up to `poll_max_ms`.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    #[serde(default = "default_poll_max_ms")]
    pub poll_max_ms: u64,
    /// How the account's recent jobs are listed. Needed to batch a step that is not
    /// idempotent: before its `check` reads back a write that may have gone out in a bulk
    /// request, the jobs still pending are waited out (one of them may carry the write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<JobListSpec>,
}

/// How the account's recent jobs are listed (`jobs.list`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobListSpec {
    /// The request listing the most recent jobs (`GET /api/v2/job_statuses`), one page holding
    /// every job the destination lists.
    pub request: RequestSpec,
    /// JSONPath to the list of jobs in its answer (`$.job_statuses`).
    pub jobs: String,
    /// JSONPath to a job's id, within one listed job (`$.id`).
    pub id: String,
    /// JSONPath to a job's status, within one listed job (`$.status`).
    pub status: String,
    /// Statuses of a job that has not ended yet (`queued`, `working`).
    pub pending: Vec<String>,
}

fn default_job_limit() -> usize {
    30
}
fn default_poll_ms() -> u64 {
    250
}
fn default_poll_max_ms() -> u64 {
    5000
}

/// A request template. Strings may be templates; missing values drop their key.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    pub method: Method,
    /// The path; template parts are URL-encoded (`/api/v2/users/{{ user_id }}/events`).
    pub path: String,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub query: IndexMap<String, Scalar>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, Scalar>,
    /// The JSON body as a YAML tree; leaves may be templates. `"{{ expr }}"` alone keeps the expression's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// What a response means for the event.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Success: go on with the next step.
    Ok,
    /// Success, but the action's remaining steps do not run.
    Skip,
    /// Try the step again later (backoff; `Retry-After` is honoured).
    Retry,
    /// The event failed: it goes to the dead letters with the status and error.
    Fail,
    /// The destination is misconfigured (e.g. credentials): delivery stops, events are kept.
    Fatal,
}

/// A cache entry learned from a response: `resolver` by `by` = `key` is the value at `value`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LearnSpec {
    pub resolver: String,
    pub by: String,
    /// Template giving the lookup key, e.g. `"{{ external_id }}"`.
    pub key: String,
    /// JSONPath into the response body, e.g. `$.user.id`.
    pub value: String,
}

/// `destination.yaml`: settings, credentials, error envelopes, default outcomes and resolvers.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "zdmap destination")]
pub(crate) struct DestinationSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Settings, each overridable with `--set NAME=VALUE`. `subdomain` and `requests_per_minute` are read by delivery.
    pub settings: IndexMap<String, SettingSpec>,
    pub auth: AuthSpec,
    #[serde(default)]
    pub errors: ErrorsSpec,
    /// Default meaning of response statuses for every step (steps may override).
    #[serde(default)]
    pub outcomes: IndexMap<String, OutcomeKind>,
    /// How often a step is tried when an outcome says `retry`.
    #[serde(default)]
    pub retries: RetriesSpec,
    /// Named lookups, used in templates as `resolve('NAME', by=key, ...)`.
    #[serde(default)]
    pub resolvers: IndexMap<String, ResolverSpec>,
    /// How the jobs of bulk requests (steps' `batch` forms) are polled and limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<JobsSpec>,
}

/// One setting: its value and how to check an override.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettingSpec {
    pub value: Value,
    #[serde(rename = "type")]
    pub kind: SettingType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A regular-expression-free check for strings: the characters allowed (`a-z0-9`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_characters: Option<String>,
    /// Values a string setting may not take.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forbidden: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SettingType {
    String,
    Boolean,
    Integer,
    Number,
}

/// Where credentials come from: names of environment variables, never the secrets themselves.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// HTTP Basic `{email}/token:{token}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<ApiTokenAuth>,
    /// `Authorization: Bearer {token}`; used when its variable is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_token: Option<OAuthAuth>,
    /// An OAuth client: its id and secret (the client-credentials grant, or the client of
    /// `zdmap auth login`), the scopes asked for, and which scope covers which API path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthClientAuth>,
}

/// An OAuth client's variables and what its tokens are asked for with.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthClientAuth {
    /// The variable holding the client's unique identifier.
    pub client_id_env: String,
    /// The variable holding the client's secret (also read from `{name}_FILE`).
    pub client_secret_env: String,
    /// The scopes asked for, space-separated (e.g. `read write`, or `users:write read`).
    /// Default: what the mappings need, `read` for their lookups and checks and `write` for
    /// their writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Seconds an access token should live (the token request's `expires_in`); default: the
    /// OAuth client's own setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub access_token_lifetime: Option<u64>,
    /// Which resource of granular scopes (`users:write`) an API path falls under, by the path's
    /// first segment after `/api/v2/` (e.g. `organization_memberships: organizations`). A path
    /// not listed is covered only by plain `read` or `write`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub resources: IndexMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenAuth {
    pub email_env: String,
    pub token_env: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthAuth {
    pub token_env: String,
}

/// How often a step is tried when an outcome says `retry`. Server errors, timeouts and 429s
/// are retried with backoff for as long as delivery's `--retry-for` allows; a client error (4xx)
/// mapped to `retry` (two first creates of one user racing) has a bounded number of tries.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetriesSpec {
    /// Tries in all of a step whose 4xx answer an outcome maps to `retry`; then the event is
    /// dead-lettered with Zendesk's error.
    #[serde(default = "default_client_error_tries")]
    #[schemars(range(min = 1, max = 100))]
    pub client_error_tries: u32,
}

impl Default for RetriesSpec {
    fn default() -> Self {
        RetriesSpec {
            client_error_tries: default_client_error_tries(),
        }
    }
}

fn default_client_error_tries() -> u32 {
    3
}

/// Where error codes and messages are found in the destination's error bodies (JSONPaths).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorsSpec {
    /// Paths to error codes, most specific first, e.g. `$.details.*[*].error`, `$.error`.
    #[serde(default)]
    pub codes: Vec<String>,
    /// Paths to a human message; the first found is used.
    #[serde(default)]
    pub messages: Vec<String>,
}

/// A named lookup: ways to find a value (e.g. a user id) by a key, tried in order, with a cache.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolverSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub lookups: Vec<LookupSpec>,
    #[serde(default)]
    pub cache: CacheSpec,
}

/// One way to look a value up: `by` names the key (`email`); `request` (with `{{ key }}`) and
/// `result` (a JSONPath into the response) say how. Without a request the key is the value itself,
/// and `key` must say what such a value can be.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupSpec {
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// What a key must be (`{ type: integer, minimum: 1 }`); a key that is not is an error for
    /// the event. Required on a lookup without a request, whose key goes into paths as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeySpec>,
    /// The lookup's bulk form: the keys looked up in one window go out as one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<LookupBatchSpec>,
}

/// A lookup of many keys at once (`GET /api/v2/users/show_many?external_ids=a,b`): the records
/// found answer their keys, and a key without a record is not found.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupBatchSpec {
    /// The request (no templates); the keys go in `query`.
    pub request: BulkRequestSpec,
    /// The query parameter that takes the keys, comma-separated (`external_ids`).
    pub query: String,
    /// Most keys in one request.
    #[serde(default = "default_max_items")]
    #[schemars(range(min = 1, max = 100))]
    pub max_keys: usize,
    /// JSONPath to the list of records in the answer (`$.users`).
    pub records: String,
    /// JSONPath to a record's key (`$.external_id`), compared without regard to case.
    pub key: String,
    /// JSONPath to the value a record gives its key (`$.id`).
    pub value: String,
}

/// The form of a lookup key, e.g. a Zendesk id: `{ type: integer, minimum: 1 }`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    #[serde(rename = "type")]
    pub kind: KeyType,
    /// For `integer`: the smallest value allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<i64>,
    /// For `string`: the characters allowed (`a-z0-9_-`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_characters: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    /// Digits with an optional leading `-`, written as the number is (no `+`, no leading zeros).
    Integer,
    String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
    #[serde(default = "default_capacity")]
    pub capacity: usize,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            ttl_seconds: default_ttl(),
            capacity: default_capacity(),
        }
    }
}

fn default_ttl() -> u64 {
    900
}
fn default_capacity() -> usize {
    10_000
}

/// A file of mapping test cases under `mappings/tests/`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "zdmap mapping test cases")]
pub struct CaseFile {
    pub cases: Vec<CaseSpec>,
}

/// One test case: an event, setting overrides, and what must come out.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseSpec {
    pub name: String,
    pub event: Value,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub settings: IndexMap<String, Value>,
    pub expect: ExpectSpec,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    /// The actions that must match, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
    /// The requests, in order (lookups shown as in `zdmap preview`). Given keys are compared exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Vec<ExpectedRequest>>,
    /// Errors that must be reported for the event (each by a part of its message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ExpectedError>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedRequest {
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub method: Method,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<IndexMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<IndexMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The bulk request the event joins (as `zdmap preview` shows it: `method`, `path`,
    /// `items`, `item`, `coalesce`), or `false` for a request that goes single. Given keys are
    /// compared exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Value>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    pub contains: String,
}

/// Whether `c` is in a character class like `a-z0-9_`.
pub(crate) fn char_allowed(class: &str, c: char) -> bool {
    let chars: Vec<char> = class.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if i + 2 < chars.len() && chars[i + 1] == '-' {
            if (chars[i]..=chars[i + 2]).contains(&c) {
                return true;
            }
            i += 3;
        } else {
            if chars[i] == c {
                return true;
            }
            i += 1;
        }
    }
    false
}
