//! Which OAuth scopes the mappings need, and whether a token's scopes cover them.
//!
//! Zendesk's scopes are `read` (every GET), `write` (every POST, PUT, PATCH and DELETE), and
//! the same per resource, `users:read` or `tickets:write`. Which resource an API path belongs
//! to is data, not code: `destination.yaml`'s `auth.oauth.resources` maps the first segment
//! after `/api/v2/` to it. A request the token does not cover is answered 403.

use crate::deliver::http::Client;
use crate::mapping::config::Config;
use crate::mapping::plan::step::RequestTemplate;
use crate::mapping::request::{Method, Request};

/// Where Zendesk describes the access token a request carries (its scopes and expiry; never
/// the token itself in full).
pub(crate) const CURRENT_TOKEN_PATH: &str = "/api/v2/oauth/tokens/current";

/// What Zendesk says of the token in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub scopes: Vec<String>,
    /// As Zendesk writes it (ISO 8601), or `None` when it does not expire.
    pub expires_at: Option<String>,
    /// The OAuth client's resource id.
    pub client_id: Option<String>,
}

/// Asks Zendesk about the token `client` sends; `errors` reads a refusal. `Err` says why not
/// (no secret in it).
pub async fn current_token(
    client: &Client,
    errors: &crate::mapping::config::ErrorFormats,
) -> Result<TokenInfo, String> {
    let request = Request {
        method: Method::Get,
        path: CURRENT_TOKEN_PATH.into(),
        endpoint: CURRENT_TOKEN_PATH.into(),
        query: Default::default(),
        headers: Default::default(),
        body: None,
    };
    let response = client.send(&request).await.map_err(|e| e.to_string())?;
    if !response.is_success() {
        return Err(format!(
            "GET {CURRENT_TOKEN_PATH} answered {}{}",
            response.status,
            errors.read(&response.body).said()
        ));
    }
    let token = &response.body["token"];
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Ok(TokenInfo {
        scopes: token["scopes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        expires_at: text(&token["expires_at"]),
        client_id: text(&token["client_id"]),
    })
}

/// Read or write, as the scopes see a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    fn of(method: Method) -> Access {
        match method {
            Method::Get => Access::Read,
            _ => Access::Write,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// One kind of request the mappings make, and where it is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub access: Access,
    /// The resource of granular scopes, when `auth.oauth.resources` names one for the path.
    pub resource: Option<String>,
    /// The path up to its first template, e.g. `/api/v2/users/create_or_update`.
    pub path: String,
    /// Where: `action upsert_user, step upsert`, `resolver user_id`, `jobs`.
    pub place: String,
}

impl Need {
    /// The scopes any one of which covers it.
    pub(crate) fn covered_by(&self) -> Vec<String> {
        let mut scopes = vec![self.access.word().to_string()];
        if let Some(r) = &self.resource {
            scopes.push(format!("{r}:{}", self.access.word()));
        }
        scopes
    }

    /// Whether `granted` covers it.
    pub fn covered(&self, granted: &[String]) -> bool {
        self.covered_by().iter().any(|s| granted.contains(s))
    }
}

/// Every request the mappings of `config` make: steps and their checks, lookups, job polls.
pub fn needs(config: &Config) -> Vec<Need> {
    let resources = config
        .auth
        .oauth
        .as_ref()
        .map(|o| o.resources.clone())
        .unwrap_or_default();
    let need = |request: &RequestTemplate, place: String| {
        let path = request.literal_prefix();
        let first = path
            .trim_start_matches('/')
            .trim_start_matches("api/v2/")
            .split(['/', '.', '?'])
            .next()
            .unwrap_or_default()
            .to_string();
        Need {
            access: Access::of(request.method),
            resource: resources.get(&first).cloned(),
            path,
            place,
        }
    };
    let mut out = Vec::new();
    for action in config.actions.iter().filter(|a| a.enabled) {
        for step in &action.steps {
            let place = format!("action {}, step {}", action.name, step.name);
            out.push(need(&step.request, place.clone()));
            if let Some(check) = &step.check {
                out.push(need(&check.request, format!("{place} (its check)")));
            }
        }
    }
    for (name, resolver) in &config.resolvers {
        for lookup in &resolver.lookups {
            if let Some(request) = lookup.request() {
                out.push(need(
                    request,
                    format!("resolver {name}, lookup by {}", lookup.by),
                ));
            }
        }
    }
    if let Some(jobs) = &config.jobs {
        out.push(need(jobs.poll_template(), "jobs".into()));
    }
    out
}

/// The scope to ask for when `destination.yaml` names none: `read` and `write` as the
/// mappings need them (`read write` when they need nothing, as for an empty directory).
pub(crate) fn default_scope(needs: &[Need]) -> String {
    let read = needs.iter().any(|n| n.access == Access::Read);
    let write = needs.iter().any(|n| n.access == Access::Write);
    match (read, write) {
        (true, false) => "read".into(),
        (false, true) => "write".into(),
        _ => "read write".into(),
    }
}

/// The needs `granted` does not cover, one per path and access.
pub(crate) fn uncovered<'a>(needs: &'a [Need], granted: &[String]) -> Vec<&'a Need> {
    let mut out: Vec<&Need> = Vec::new();
    for n in needs.iter().filter(|n| !n.covered(granted)) {
        if !out.iter().any(|o| o.path == n.path && o.access == n.access) {
            out.push(n);
        }
    }
    out
}

/// A sentence naming what is missing, or `None` when `granted` covers every need.
pub fn missing_message(needs: &[Need], granted: &[String]) -> Option<String> {
    let missing = uncovered(needs, granted);
    if missing.is_empty() {
        return None;
    }
    let lines: Vec<String> = missing
        .iter()
        .map(|n| {
            format!(
                "  {} {} ({}) needs {}",
                n.access.word(),
                n.path,
                n.place,
                n.covered_by().join(" or ")
            )
        })
        .collect();
    Some(format!(
        "the OAuth token's scopes ({}) do not cover every request of the mappings:\n{}",
        if granted.is_empty() {
            "none".to_string()
        } else {
            granted.join(" ")
        },
        lines.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(access: Access, resource: Option<&str>, path: &str) -> Need {
        Need {
            access,
            resource: resource.map(str::to_string),
            path: path.into(),
            place: "action a, step s".into(),
        }
    }

    fn granted(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn plain_and_granular_scopes_cover_their_requests() {
        let upsert = need(
            Access::Write,
            Some("users"),
            "/api/v2/users/create_or_update",
        );
        let search = need(Access::Read, Some("users"), "/api/v2/users/search");
        let jobs = need(Access::Read, None, "/api/v2/job_statuses/");
        assert!(upsert.covered(&granted("read write")));
        assert!(upsert.covered(&granted("users:write")));
        assert!(!upsert.covered(&granted("read tickets:write")));
        assert!(search.covered(&granted("users:read")));
        assert!(!jobs.covered(&granted("users:read users:write")));
        let needs = vec![upsert, search, jobs];
        assert_eq!(default_scope(&needs), "read write");
        assert_eq!(default_scope(&needs[..1]), "write");
        let message = missing_message(&needs, &granted("read")).expect("missing");
        assert!(
            message.contains(
                "write /api/v2/users/create_or_update (action a, step s) needs write or users:write"
            ),
            "{message}"
        );
        assert!(missing_message(&needs, &granted("read write")).is_none());
    }

    #[test]
    fn the_default_mappings_need_read_and_write_and_name_their_resources() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        let config = Config::load(&dir, &[]).expect("default mappings load");
        let needs = needs(&config);
        assert_eq!(default_scope(&needs), "read write");
        let upsert = needs
            .iter()
            .find(|n| n.path == "/api/v2/users/create_or_update")
            .expect("the user upsert");
        assert_eq!(upsert.access, Access::Write);
        assert_eq!(upsert.resource.as_deref(), Some("users"));
        let membership = needs
            .iter()
            .find(|n| n.path.starts_with("/api/v2/organization_memberships"))
            .expect("a membership request");
        assert_eq!(membership.resource.as_deref(), Some("organizations"));
        let granular = granted(
            "users:read users:write organizations:read organizations:write tickets:read tickets:write read",
        );
        assert!(
            missing_message(&needs, &granular).is_none(),
            "{:?}",
            missing_message(&needs, &granular)
        );
        assert!(missing_message(&needs, &granted("read")).is_some());
    }
}
