//! Resolvers: named lookups (`resolve('user', email=...)`) and the requests that answer them.
//!
//! A resolver lists ways to find a value by a key (`by: external_id`, `by: email`), each a
//! request template over `key` and a JSONPath into the response, or no request at all when the
//! key already is the value (`by: id`). A lookup may declare what its keys can be (`key:`, e.g.
//! a positive integer), and must when it has no request, since such a key goes into paths as it
//! is; a key that does not fit is an error for the event. Delivery tries the keys a template gave
//! in the resolver's order and caches answers; this module only compiles, checks and renders.

use crate::mapping::diagnostic::Problems;
use crate::mapping::path::JsonPath;
use crate::mapping::plan::step::RequestTemplate;
use crate::mapping::request::Request;
use crate::mapping::spec::char_allowed;
use crate::mapping::spec::{CacheSpec, KeySpec, KeyType, ResolverSpec};
use crate::mapping::template::{RenderError, Scope, Templates};
use serde_json::Value;
use std::sync::Arc;

/// A compiled resolver.
#[derive(Debug)]
pub struct Resolver {
    pub name: String,
    pub lookups: Vec<Lookup>,
    pub cache: CacheSpec,
}

/// One way of looking a value up.
#[derive(Debug)]
pub struct Lookup {
    pub by: String,
    request: Option<RequestTemplate>,
    result: Option<JsonPath>,
    key: Option<KeySpec>,
    /// Its bulk form, if it has one.
    pub batch: Option<Arc<crate::mapping::plan::batch::LookupBatch>>,
}

impl Resolver {
    pub fn compile(
        name: &str,
        spec: &ResolverSpec,
        pointer: &str,
        templates: &mut Templates,
        problems: &mut Problems,
    ) -> Option<Resolver> {
        let mut lookups = Vec::new();
        for (i, l) in spec.lookups.iter().enumerate() {
            let at = format!("{pointer}/lookups/{i}");
            let request = match &l.request {
                Some(r) => Some(RequestTemplate::compile(
                    r,
                    &format!("{at}/request"),
                    templates,
                    problems,
                )?),
                None => None,
            };
            let result = match &l.result {
                Some(p) => Some(JsonPath::compile(p, &format!("{at}/result"), problems)?),
                None => None,
            };
            if request.is_some() && result.is_none() {
                problems.at(&at, "a lookup with a `request` needs a `result` path");
            }
            match &l.key {
                Some(key) => check_key_spec(key, &format!("{at}/key"), problems),
                None if request.is_none() => problems.at(
                    &at,
                    "a lookup without a `request` gives its key as the value: say what a key \
                     can be with `key:` (for an id, `key: { type: integer, minimum: 1 }`)",
                ),
                None => {}
            }
            if lookups.iter().any(|x: &Lookup| x.by == l.by) {
                problems.at(
                    &format!("{at}/by"),
                    format!("`by: {}` is given twice", l.by),
                );
            }
            let batch = l.batch.as_ref().and_then(|b| {
                crate::mapping::plan::batch::LookupBatch::compile(
                    b,
                    &format!("{at}/batch"),
                    problems,
                )
                .map(Arc::new)
            });
            if l.batch.is_some() && request.is_none() {
                problems.at(
                    &format!("{at}/batch"),
                    "a lookup without a request has nothing to batch",
                );
            }
            lookups.push(Lookup {
                by: l.by.clone(),
                request,
                result,
                key: l.key.clone(),
                batch,
            });
        }
        Some(Resolver {
            name: name.to_owned(),
            lookups,
            cache: spec.cache.clone(),
        })
    }

    pub fn lookup(&self, by: &str) -> Option<&Lookup> {
        self.lookups.iter().find(|l| l.by == by)
    }

    /// The keys a call gave, in the order the resolver tries them.
    pub fn order<'k>(&self, keys: &'k [(String, String)]) -> Vec<(&Lookup, &'k str)> {
        self.lookups
            .iter()
            .filter_map(|l| {
                keys.iter()
                    .find(|(by, _)| *by == l.by)
                    .map(|(_, k)| (l, k.as_str()))
            })
            .collect()
    }
}

impl Lookup {
    /// The request template, or `None` when the key is the value itself.
    pub fn request(&self) -> Option<&RequestTemplate> {
        self.request.as_ref()
    }

    /// The request that looks `key` up, or `None` when the key is the value itself.
    pub fn render(
        &self,
        templates: &Templates,
        settings: &Arc<Value>,
        key: &str,
    ) -> Result<Option<Request>, RenderError> {
        if let Some(spec) = &self.key {
            check_key(spec, key)
                .map_err(|e| RenderError(format!("the `by: {}` key {key:?} {e}", self.by)))?;
        }
        let Some(req) = &self.request else {
            return Ok(None);
        };
        let scope = Scope::builder()
            .settings(settings.clone())
            .key(Value::String(key.to_owned()))
            .build();
        req.render(templates, &scope).map(Some)
    }

    /// Whether the key is the value itself (`by: id` without a request).
    pub fn is_direct(&self) -> bool {
        self.request.is_none()
    }

    /// The compiled strings of the lookup's request, with pointers relative to the lookup.
    pub fn texts(&self) -> Option<crate::mapping::plan::step::Texts<'_>> {
        let req = self.request.as_ref()?;
        Some(
            req.texts()
                .into_iter()
                .map(|(p, t)| (format!("/request{p}"), t))
                .collect(),
        )
    }

    /// A definite path (`$.users[0].id`) gives its value; any other path (`$.fields[*].key`)
    /// gives the list of all matches, possibly empty, which is an answer too.
    pub fn extract(&self, body: &Value) -> Option<Value> {
        let path = self.result.as_ref()?;
        if path.is_definite() {
            return path.first(body).filter(|v| !v.is_null()).cloned();
        }
        Some(match path.select(body) {
            crate::mapping::path::Selected::Nothing => Value::Array(Vec::new()),
            crate::mapping::path::Selected::One(v) => Value::Array(vec![v.clone()]),
            crate::mapping::path::Selected::Many(vs) => {
                Value::Array(vs.into_iter().cloned().collect())
            }
        })
    }
}

/// Problems with a `key:` declaration itself.
fn check_key_spec(spec: &KeySpec, at: &str, problems: &mut Problems) {
    match spec.kind {
        KeyType::Integer if spec.allowed_characters.is_some() => problems.at(
            &format!("{at}/allowed_characters"),
            "`allowed_characters` is for `type: string` keys",
        ),
        KeyType::String if spec.minimum.is_some() => problems.at(
            &format!("{at}/minimum"),
            "`minimum` is for `type: integer` keys",
        ),
        KeyType::String if spec.allowed_characters.as_deref() == Some("") => problems.at(
            &format!("{at}/allowed_characters"),
            "`allowed_characters` allows nothing",
        ),
        _ => {}
    }
}

/// Whether `key` has the declared form; the message says how it does not.
fn check_key(spec: &KeySpec, key: &str) -> Result<(), String> {
    match spec.kind {
        KeyType::Integer => {
            let n = key
                .parse::<i64>()
                .ok()
                .filter(|n| n.to_string() == key)
                .ok_or("is not an integer")?;
            match spec.minimum {
                Some(min) if n < min => Err(format!("is less than {min}")),
                _ => Ok(()),
            }
        }
        KeyType::String => match &spec.allowed_characters {
            Some(class) if key.is_empty() || !key.chars().all(|c| char_allowed(class, c)) => {
                Err(format!("has characters other than {class}"))
            }
            _ => Ok(()),
        },
    }
}
