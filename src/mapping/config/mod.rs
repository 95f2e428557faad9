//! Loading `mappings/`: action files and `destination.yaml`, checked and compiled.
//!
//! Loading reads every file, checks it against the schema the files advertise
//! (`schemas/*.schema.json`, generated from [`crate::mapping::spec`]), deserializes it, and compiles its
//! triggers, JSONPaths and templates. Then come the checks across files: unique action names,
//! `after` references and cycles, names used in templates, resolvers used by steps. Every problem
//! is collected as a located [`Diagnostic`]; a directory with any problem does not load.

mod errors;
mod names;
mod planning;

pub use errors::{ErrorFormats, ErrorInfo};

pub use crate::mapping::diagnostic::{Diagnostic, Diagnostics, Format, Problems};

use crate::mapping::diagnostic::suggest;
use crate::mapping::field::Field;
use crate::mapping::path::JsonPath;
use crate::mapping::plan::batch::JobsForm;
use crate::mapping::plan::outcome::Outcomes;
use crate::mapping::plan::resolver::Resolver;
use crate::mapping::plan::{Action, ActionName, Step};
use crate::mapping::spec::char_allowed;
use crate::mapping::spec::{
    ActionSpec, AuthSpec, DestinationSpec, RetriesSpec, SettingSpec, SettingType,
};
use crate::mapping::template::{RESERVED, Templates, Text};
use crate::mapping::trigger::Trigger;
use crate::mapping::yaml::{Loc, Node};
use indexmap::IndexMap;
use names::{check_names, check_steps};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name of the destination file in a mappings directory.
pub const DESTINATION_FILE: &str = "destination.yaml";

/// Where a configuration comes from: a mappings directory and `KEY=VALUE` setting overrides.
/// Kept by a server to load the same configuration again on reload.
#[derive(Debug, Clone)]
pub struct Source {
    /// The mappings directory: action files and destination.yaml.
    pub mappings: PathBuf,
    /// Overrides of destination.yaml's settings, `KEY=VALUE`.
    pub set: Vec<String>,
    /// The server's name of the destination these mappings deliver to, when it names several
    /// (Segment's `integrations` may name it), and its filter: a trigger expression an event
    /// must match to be delivered there.
    pub routing: Routing,
}

/// What a server with several destinations says of one of them, beside its mappings.
#[derive(Clone, Debug, Default)]
pub struct Routing {
    /// The destination's name (`None`: the one destination of a server that names none).
    pub destination: Option<String>,
    /// A trigger expression (`type = "track"`); events that do not match are not delivered.
    pub filter: Option<String>,
}

/// The stack of the thread that loads mappings: the size of a main thread's, whatever thread
/// asks (a `serve` reload runs on a runtime thread, whose stack is smaller).
const LOAD_STACK: usize = 8 << 20;

impl Source {
    /// Loads the mappings on a thread of its own, so that no mappings directory can take the
    /// calling process down: a panic while loading is reported as a problem like any other.
    pub fn load(&self) -> Result<Config, Diagnostics> {
        let (dir, set) = (self.mappings.clone(), self.set.clone());
        let failed = |message: String| {
            Err(Diagnostics(vec![Diagnostic::new(
                &self.mappings,
                Loc::default(),
                message,
            )]))
        };
        let loading = std::thread::Builder::new()
            .name("zdmap-load".into())
            .stack_size(LOAD_STACK)
            .spawn(move || Config::load(&dir, &set));
        match loading.map(std::thread::JoinHandle::join) {
            Ok(Ok(result)) => result.and_then(|config| self.routed(config)),
            Ok(Err(panic)) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failed(format!("loading the mappings failed: {why}"))
            }
            Err(e) => failed(format!("cannot start loading the mappings: {e}")),
        }
    }
}

impl Source {
    /// `config` with the routing of this source: its destination's name and compiled filter.
    fn routed(&self, mut config: Config) -> Result<Config, Diagnostics> {
        config.destination = self.routing.destination.clone();
        if let Some(filter) = &self.routing.filter {
            let trigger = crate::mapping::trigger::Trigger::parse(filter).map_err(|e| {
                let name = self.routing.destination.as_deref().unwrap_or("default");
                Diagnostics(vec![Diagnostic::new(
                    &self.mappings,
                    Loc::default(),
                    format!("the filter of the destination `{name}` does not parse: {e}"),
                )])
            })?;
            config.filter = Some(trigger);
        }
        Ok(config)
    }
}

/// A loaded, checked and compiled mappings directory.
#[derive(Debug)]
pub struct Config {
    pub dir: PathBuf,
    pub name: String,
    /// Setting values (after `--set`), as a JSON object.
    pub settings: Arc<Value>,
    pub auth: AuthSpec,
    /// How the destination's error bodies are read (`errors:`).
    pub errors: Arc<ErrorFormats>,
    /// Default outcomes for every step.
    pub outcomes: Outcomes,
    /// How often a step is tried when an outcome says `retry`.
    pub retries: RetriesSpec,
    pub resolvers: IndexMap<String, Resolver>,
    /// How bulk jobs are polled and limited (`jobs:`), for steps with a `batch` form.
    pub jobs: Option<Arc<JobsForm>>,
    /// Which resolver lookups are direct ids, for previews to show them as they are.
    pub direct_ids: Arc<crate::mapping::template::DirectIds>,
    /// Actions in run order: `after` first, then by file name.
    pub actions: Vec<Action>,
    pub templates: Templates,
    /// The settings `--set` gave (their names), so a caller can tell a choice from a default.
    pub overridden: Vec<String>,
    /// What loads but is probably a mistake (`type = identify`), for `zdmap validate` to show.
    pub warnings: Diagnostics,
    /// The server's name of the destination (see [`Routing`]); `None` outside such a server.
    pub destination: Option<String>,
    /// The destination's filter: events that do not match plan nothing.
    pub filter: Option<crate::mapping::trigger::Trigger>,
}

impl Config {
    /// Loads a mappings directory, applying `KEY=VALUE` setting overrides.
    pub fn load(dir: &Path, overrides: &[String]) -> Result<Config, Diagnostics> {
        let mut diags = Diagnostics::default();
        let files = match list_yaml(dir) {
            Ok(f) => f,
            Err(e) => {
                let message = if e.kind() == std::io::ErrorKind::NotFound {
                    "no mappings directory here: give its place with `--mappings DIR`, or write \
                     the default mappings into it with `zdmap init`"
                        .to_owned()
                } else {
                    format!("cannot read the mappings directory: {e}")
                };
                diags.push(Diagnostic::new(dir, Loc::default(), message));
                return Err(diags);
            }
        };
        let dest_path = dir.join(DESTINATION_FILE);
        let mut templates = Templates::new();
        let destination = read_spec::<DestinationSpec>(
            &dest_path,
            crate::mapping::schema::destination_validator(),
            &mut diags,
        );
        let mut config = Config {
            dir: dir.to_path_buf(),
            name: String::new(),
            settings: Arc::new(Value::Object(Default::default())),
            auth: AuthSpec {
                api_token: None,
                oauth_token: None,
                oauth: None,
            },
            errors: Arc::default(),
            outcomes: Outcomes::default(),
            retries: RetriesSpec::default(),
            resolvers: IndexMap::new(),
            jobs: None,
            direct_ids: Arc::default(),
            actions: Vec::new(),
            templates: Templates::new(),
            warnings: Diagnostics::default(),
            destination: None,
            filter: None,
            overridden: overrides
                .iter()
                .filter_map(|o| o.split_once('=').map(|(name, _)| name.trim().to_string()))
                .collect(),
        };
        let mut setting_names: Vec<String> = Vec::new();
        if let Some((spec, node)) = &destination {
            let mut p = Problems::new(&dest_path, Some(node.clone()));
            setting_names = spec.settings.keys().cloned().collect();
            templates.declare_settings(setting_names.clone());
            config.name = spec.name.clone();
            config.auth = spec.auth.clone();
            config.settings = Arc::new(settings(spec, overrides, &mut p, &mut diags));
            config.outcomes = Outcomes::compile(&spec.outcomes, "/outcomes", &mut p);
            config.retries = spec.retries;
            let mut errors = ErrorFormats::default();
            for (what, paths, out) in [
                ("codes", &spec.errors.codes, &mut errors.codes),
                ("messages", &spec.errors.messages, &mut errors.messages),
            ] {
                for (i, s) in paths.iter().enumerate() {
                    if let Some(jp) = JsonPath::compile(s, &format!("/errors/{what}/{i}"), &mut p) {
                        out.push(jp);
                    }
                }
            }
            config.errors = Arc::new(errors);
            for (name, r) in &spec.resolvers {
                let at = format!("/resolvers/{name}");
                if let Some(r) = Resolver::compile(name, r, &at, &mut templates, &mut p) {
                    for (ptr, text) in r.lookups.iter().filter_map(|l| l.texts()).flatten() {
                        check_names(
                            &templates,
                            text,
                            &["key", "settings"],
                            &format!("{at}{ptr}"),
                            &mut p,
                        );
                    }
                    config.resolvers.insert(name.clone(), r);
                }
            }
            if let Some(jobs) = &spec.jobs
                && let Some(j) = JobsForm::compile(jobs, "/jobs", &mut templates, &mut p)
            {
                for (ptr, text) in j.texts() {
                    check_names(
                        &templates,
                        text,
                        &["key", "settings"],
                        &format!("/jobs{ptr}"),
                        &mut p,
                    );
                }
                config.jobs = Some(Arc::new(j));
            }
            diags.0.extend(p.into_found());
        }
        config.direct_ids = Arc::new(
            config
                .resolvers
                .iter()
                .map(|(name, r)| {
                    let order = r.lookups.iter().map(|l| (l.by.clone(), l.is_direct()));
                    (name.clone(), order.collect())
                })
                .collect(),
        );
        let mut seen: HashMap<String, PathBuf> = HashMap::new();
        for file in files
            .iter()
            .filter(|f| f.file_name().is_some_and(|n| n != DESTINATION_FILE))
        {
            let Some((spec, node)) = read_spec::<ActionSpec>(
                file,
                crate::mapping::schema::action_validator(),
                &mut diags,
            ) else {
                continue;
            };
            let mut p = Problems::new(file, Some(node));
            if let Some(first) = seen.get(&spec.name) {
                p.at(
                    "/name",
                    format!(
                        "action `{}` is already defined in {}",
                        spec.name,
                        first.display()
                    ),
                );
            }
            seen.insert(spec.name.clone(), file.clone());
            if let Some(action) = compile_action(
                &spec,
                file,
                &mut templates,
                &setting_names,
                &config.resolvers,
                config.jobs.as_deref(),
                &mut p,
            ) {
                config.actions.push(action);
            }
            diags.0.extend(p.into_found());
        }
        // An action file that did not load may be the one an `after` names: say nothing of it then.
        let action_files = files.len() - usize::from(files.contains(&dest_path));
        let all_loaded = config.actions.len() == action_files;
        order_actions(&mut config.actions, all_loaded, &mut diags);
        config.templates = templates;
        if diags.has_errors() {
            Err(diags)
        } else {
            config.warnings = diags;
            Ok(config)
        }
    }

    /// A string setting.
    pub fn setting_str(&self, name: &str) -> Option<&str> {
        self.settings.get(name).and_then(Value::as_str)
    }

    /// A numeric setting.
    pub fn setting_u64(&self, name: &str) -> Option<u64> {
        self.settings.get(name).and_then(Value::as_u64)
    }

    /// The error codes in a response body (most specific first) and its message, by the
    /// destination's `errors` paths.
    pub fn error_info(&self, body: &Value) -> (Vec<String>, Option<String>) {
        let info = self.errors.read(body);
        (info.codes, info.message)
    }
}

fn list_yaml(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads a YAML file, checks it against its schema and deserializes it.
pub(crate) fn read_spec<T: DeserializeOwned>(
    path: &Path,
    validator: &jsonschema::Validator,
    diags: &mut Diagnostics,
) -> Option<(T, Arc<Node>)> {
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            diags.push(Diagnostic::new(
                path,
                Loc::default(),
                format!("cannot read the file: {e}"),
            ));
            return None;
        }
    };
    let node = match crate::mapping::yaml::parse(&source) {
        Ok(n) => Arc::new(n),
        Err(e) => {
            diags.push(Diagnostic::new(
                path,
                e.loc,
                format!("YAML syntax error: {}", e.message),
            ));
            return None;
        }
    };
    let json = node.to_json();
    let mut p = Problems::new(path, Some(node.clone()));
    crate::mapping::schema::check(validator, &json, &mut p);
    if !p.is_empty() {
        diags.0.extend(p.into_found());
        return None;
    }
    match serde_json::from_value::<T>(json) {
        Ok(spec) => Some((spec, node)),
        Err(e) => {
            diags.push(Diagnostic::new(path, node.loc, e.to_string()));
            None
        }
    }
}

/// Setting values after `--set` overrides, each checked against its declaration.
fn settings(
    spec: &DestinationSpec,
    overrides: &[String],
    p: &mut Problems,
    diags: &mut Diagnostics,
) -> Value {
    let mut values = serde_json::Map::new();
    for (name, s) in &spec.settings {
        if let Err(e) = check_setting(s, &s.value) {
            p.at(
                &format!("/settings/{name}/value"),
                format!("setting `{name}`: {e}"),
            );
        }
        values.insert(name.clone(), s.value.clone());
    }
    for o in overrides {
        let Some((name, raw)) = o.split_once('=') else {
            diags.push(Diagnostic::new(
                Path::new("--set"),
                Loc::default(),
                format!("{o:?}: write --set NAME=VALUE"),
            ));
            continue;
        };
        let name = name.trim();
        let Some(s) = spec.settings.get(name) else {
            let hint = suggest(name, spec.settings.keys().map(String::as_str))
                .map(|h| format!("; did you mean `{h}`?"))
                .unwrap_or_default();
            diags.push(Diagnostic::new(
                Path::new("--set"),
                Loc::default(),
                format!("unknown setting `{name}`{hint}"),
            ));
            continue;
        };
        match parse_setting(s.kind, raw).and_then(|v| check_setting(s, &v).map(|()| v)) {
            Ok(v) => {
                values.insert(name.to_owned(), v);
            }
            Err(e) => diags.push(Diagnostic::new(
                Path::new("--set"),
                Loc::default(),
                format!("setting `{name}`: {e}"),
            )),
        }
    }
    Value::Object(values)
}

/// Parses a `--set` value as the setting's type.
pub(crate) fn parse_setting(kind: SettingType, raw: &str) -> Result<Value, String> {
    let raw = raw.trim();
    match kind {
        SettingType::String => Ok(Value::String(raw.to_owned())),
        SettingType::Boolean => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, got {raw:?}")),
        },
        SettingType::Integer => raw
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        SettingType::Number => raw
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("expected a number, got {raw:?}")),
    }
}

fn check_setting(s: &SettingSpec, v: &Value) -> Result<(), String> {
    let type_ok = match s.kind {
        SettingType::String => v.is_string(),
        SettingType::Boolean => v.is_boolean(),
        SettingType::Integer => v.is_i64() || v.is_u64(),
        SettingType::Number => v.is_number(),
    };
    if !type_ok {
        return Err(format!(
            "expected a {:?}, got {}",
            s.kind,
            crate::mapping::event::json_kind(v)
        )
        .to_lowercase());
    }
    if let (Some(min), Some(x)) = (s.minimum, v.as_f64())
        && x < min
    {
        return Err(format!("must be at least {min}"));
    }
    if let Some(text) = v.as_str() {
        if let Some(allowed) = &s.allowed_characters
            && let Some(bad) = text.chars().find(|c| !char_allowed(allowed, *c))
        {
            return Err(format!("{bad:?} is not allowed (only {allowed})"));
        }
        if s.forbidden.iter().any(|f| f == text) {
            return Err(format!("{text:?} is not allowed"));
        }
    }
    Ok(())
}

fn compile_action(
    spec: &ActionSpec,
    file: &Path,
    templates: &mut Templates,
    settings: &[String],
    resolvers: &IndexMap<String, Resolver>,
    jobs: Option<&JobsForm>,
    p: &mut Problems,
) -> Option<Action> {
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        p.at(
            "/name",
            "an action name is lowercase letters, digits and `_`",
        );
    }
    let byte_at = |column| crate::mapping::diagnostic::byte_offset(&spec.trigger, column);
    let trigger = match Trigger::parse(&spec.trigger) {
        Ok(t) => {
            for w in t.warnings() {
                p.warn_at_offset("/trigger", byte_at(w.column), w.message.clone());
            }
            Some(t)
        }
        Err(e) => {
            p.at_offset(
                "/trigger",
                byte_at(e.column),
                format!("bad trigger: {}", e.message),
            );
            None
        }
    };
    let mut fields = Vec::new();
    for (name, def) in &spec.fields {
        if RESERVED.contains(&name.as_str()) {
            p.at_key(
                &format!("/fields/{name}"),
                format!("`{name}` is a reserved name; choose another field name"),
            );
            continue;
        }
        if let Some(f) = Field::compile(
            name,
            def,
            &format!("/fields/{name}"),
            templates,
            settings,
            p,
        ) {
            fields.push(f);
        }
    }
    let field_names: Vec<&str> = spec.fields.keys().map(String::as_str).collect();
    let mut steps: Vec<Step> = Vec::new();
    for (i, s) in spec.steps.iter().enumerate() {
        let at = format!("/steps/{i}");
        if steps.iter().any(|x| x.name == s.name) {
            p.at(
                &format!("{at}/name"),
                format!("step `{}` is defined twice", s.name),
            );
        }
        let Some(step) = Step::compile(s, &at, templates, p) else {
            continue;
        };
        let mut names: Vec<&str> = field_names.clone();
        names.extend(["settings", "message", "steps"]);
        if step.each.is_some() {
            names.push("item");
        }
        for (ptr, text) in step.texts() {
            check_names(templates, text, &names, &format!("{at}{ptr}"), p);
            check_steps(templates, text, &steps, &format!("{at}{ptr}"), p);
            check_resolvers(text, templates, resolvers, &format!("{at}{ptr}"), p);
        }
        for (j, name) in step.forget.iter().enumerate() {
            if !resolvers.contains_key(name) {
                p.at(
                    &format!("{at}/forget/{j}"),
                    format!("unknown resolver `{name}`"),
                );
            }
        }
        for (j, l) in step.learn.iter().enumerate() {
            match resolvers.get(&l.resolver) {
                None => p.at(
                    &format!("{at}/learn/{j}/resolver"),
                    format!("unknown resolver `{}`", l.resolver),
                ),
                Some(r) if r.lookup(&l.by).is_none() => p.at(
                    &format!("{at}/learn/{j}/by"),
                    format!("resolver `{}` has no lookup by `{}`", l.resolver, l.by),
                ),
                Some(_) => {}
            }
        }
        if let Some(bs) = &s.batch {
            check_batch(s, bs, step.idempotent, jobs, &at, p);
        }
        if step.skip_unchanged.is_some() && spec.entities.is_empty() {
            p.at(
                &format!("{at}/skip_unchanged"),
                "`skip_unchanged` remembers the last write per entity: the action needs \
                 `entities`",
            );
        }
        steps.push(step);
    }
    if spec.steps.is_empty() {
        p.at("/steps", "an action needs at least one step");
    }
    let mut entities = Vec::new();
    for (i, e) in spec.entities.iter().enumerate() {
        let at = format!("/entities/{i}/key");
        if e.kind.is_empty() || e.kind.contains(':') {
            p.at(
                &format!("/entities/{i}/kind"),
                "an entity kind is a non-empty name without `:`",
            );
        }
        match templates.text(&e.key) {
            Ok(key) => {
                let mut names: Vec<&str> = field_names.clone();
                names.extend(["settings", "message"]);
                check_names(templates, &key, &names, &at, p);
                entities.push(crate::mapping::plan::Entity {
                    kind: e.kind.clone(),
                    key,
                });
            }
            Err(err) => err.report("template error", &at, p),
        }
    }
    Some(Action {
        name: ActionName::new(spec.name.clone()),
        title: spec.title.clone().unwrap_or_else(|| spec.name.clone()),
        description: spec.description.clone(),
        file: file.to_path_buf(),
        enabled: spec.enabled,
        trigger: trigger?,
        after: spec.after.clone(),
        field_names: spec.fields.keys().cloned().collect::<Vec<_>>().into(),
        fields,
        steps,
        entities,
    })
}

/// A step's bulk form must fit its step: one request per event, no headers (a bulk request
/// carries none of an item's, so a step that needs them, such as an `Idempotency-Key`, stays
/// single), a body whose `item` is there, and a way to read the results. A write that is not
/// idempotent (it has a `check`, see [`Step::compile`]) also needs the destination to list its
/// recent jobs, so that a job that may carry the write has ended before the check reads it back.
fn check_batch(
    spec: &crate::mapping::spec::StepSpec,
    batch_spec: &crate::mapping::spec::BatchSpec,
    idempotent: bool,
    jobs: Option<&JobsForm>,
    at: &str,
    p: &mut Problems,
) {
    let has_jobs = jobs.is_some();
    if !idempotent && spec.check.is_some() && !jobs.is_some_and(JobsForm::can_list) {
        p.at(
            &format!("{at}/batch"),
            "a step that is not idempotent can be batched only when destination.yaml's `jobs:` \
             says how recent jobs are listed (`list:`): after a bulk request's answer is lost, \
             its job may still be pending, and the check must wait for it before sending again",
        );
    }
    if spec.each.is_some() {
        p.at(
            &format!("{at}/batch"),
            "a step with `each` sends several requests per event and cannot be batched",
        );
    }
    if !spec.request.headers.is_empty() {
        p.at(
            &format!("{at}/batch"),
            "a bulk request carries no item's headers: a step that sends headers (an \
             Idempotency-Key) must stay single",
        );
    }
    let top = batch_spec
        .item
        .strip_prefix("$.")
        .and_then(|rest| rest.split(['.', '[']).next())
        .unwrap_or_default();
    let has_top = spec
        .request
        .body
        .as_ref()
        .and_then(Value::as_object)
        .is_some_and(|b| b.contains_key(top));
    if !has_top {
        p.at(
            &format!("{at}/batch/item"),
            format!(
                "`{}` is not in the step's request body: the item is a part of it (`$.user` for a body `user: ...`)",
                batch_spec.item
            ),
        );
    }
    if batch_spec.job && !has_jobs {
        p.at(
            &format!("{at}/batch/job"),
            "this bulk request answers with a job: declare how jobs are polled in destination.yaml (`jobs:`)",
        );
    }
}

/// `resolve('NAME', by=...)` must name a resolver that has those lookups.
fn check_resolvers(
    text: &Text,
    templates: &Templates,
    resolvers: &IndexMap<String, Resolver>,
    at: &str,
    p: &mut Problems,
) {
    for (name, keys) in templates.resolve_calls(text) {
        match resolvers.get(&name) {
            None => {
                let hint = suggest(&name, resolvers.keys().map(String::as_str))
                    .map(|h| format!("; did you mean `{h}`?"))
                    .unwrap_or_default();
                p.at(at, format!("unknown resolver `{name}`{hint}"));
            }
            Some(r) => {
                for k in keys {
                    if r.lookup(&k).is_none() {
                        p.at(at, format!("resolver `{name}` has no lookup by `{k}`"));
                    }
                }
            }
        }
    }
}

/// Sorts actions so that each runs after the actions it names in `after`; reports unknown names and
/// cycles. With an action file that did not load (`all_loaded` false) the config is refused anyway,
/// and names it may hold are not reported as unknown.
fn order_actions(actions: &mut Vec<Action>, all_loaded: bool, diags: &mut Diagnostics) {
    let names: HashSet<String> = actions.iter().map(|a| a.name.to_string()).collect();
    for a in actions.iter() {
        for dep in &a.after {
            if !names.contains(dep) && all_loaded {
                let hint = suggest(dep, names.iter().map(String::as_str))
                    .map(|h| format!("; did you mean `{h}`?"))
                    .unwrap_or_default();
                diags.push(located(
                    &a.file,
                    "/after",
                    format!("`after` names an unknown action `{dep}`{hint}"),
                ));
            }
        }
    }
    if !all_loaded
        || diags
            .0
            .iter()
            .any(|d| d.message.starts_with("`after` names"))
    {
        return;
    }
    let mut pending: Vec<Action> = std::mem::take(actions);
    while !pending.is_empty() {
        let ready = pending.iter().position(|a| {
            a.after
                .iter()
                .all(|d| actions.iter().any(|done| done.name == d.as_str()))
        });
        match ready {
            Some(i) => actions.push(pending.remove(i)),
            None => {
                let cycle: Vec<&str> = pending.iter().map(|a| a.name.as_str()).collect();
                for a in &pending {
                    diags.push(located(
                        &a.file,
                        "/after",
                        format!(
                            "`after` makes a cycle between actions: {}",
                            cycle.join(", ")
                        ),
                    ));
                }
                actions.append(&mut pending);
                return;
            }
        }
    }
}

/// A diagnostic at a pointer of a file that is read again to locate it.
fn located(file: &Path, pointer: &str, message: String) -> Diagnostic {
    let loc = std::fs::read_to_string(file)
        .ok()
        .and_then(|s| crate::mapping::yaml::parse(&s).ok())
        .map(|n| n.locate(pointer, false))
        .unwrap_or_default();
    Diagnostic::new(file, loc, message)
}
