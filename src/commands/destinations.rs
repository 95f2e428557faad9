//! The destinations of the serve config file: its `destinations:` (several Zendesk accounts
//! behind one server, each with its mappings, settings, target, credentials and delivery
//! options) and its `sources:` (which write key's events go to which destinations), read into
//! [`DestinationSpec`]s and [`SourceSpec`]s and checked at their place; and the command-line
//! arguments one destination runs with ([`destination_args`]).
//!
//! ```yaml
//! destinations:
//!   eu: { subdomain: acme-eu, mappings: mappings }
//!   us: { subdomain: acme-us, credentials: { api_token_env: US_API_TOKEN } }
//! sources:
//!   - { write_key_env: WK_WEB, destinations: [eu, us] }
//! ```
//!
//! A file without `destinations:` has one destination, [`crate::queue::DEFAULT_DESTINATION`],
//! made of the server's flags.

use super::args::{ConfigArgs, TargetArgs};
use super::config_file::{scalar, settings};
use super::serve::parse_duration;
use crate::deliver::{CredentialNames, Secret};
use crate::mapping::diagnostic::did_you_mean;
use crate::mapping::trigger::Trigger;
use crate::mapping::yaml::{Key, Loc, Node, NodeValue};
use crate::queue::valid_destination_name;
use std::path::PathBuf;
use std::time::Duration;

/// The file's key of the destinations.
pub(crate) const DESTINATIONS_KEY: &str = "destinations";

/// The file's key of the sources.
pub(crate) const SOURCES_KEY: &str = "sources";

/// One destination of `destinations:`: a Zendesk account and how its events are delivered.
/// What it leaves out is the server's (its flags and `set`).
#[derive(Clone, Debug, Default)]
pub(crate) struct DestinationSpec {
    /// Its name (a key of `destinations:`, checked by [`valid_destination_name`]).
    pub(crate) name: String,
    /// Its mappings directory, else the server's `--mappings`.
    pub(crate) mappings: Option<PathBuf>,
    /// The account's subdomain: the setting `subdomain`, over the server's and `settings`'.
    pub(crate) subdomain: Option<String>,
    /// Send to this base URL instead of the account's (exclusive with `emulator`).
    pub(crate) zendesk_url: Option<String>,
    /// Send to a built-in emulator of its own.
    pub(crate) emulator: bool,
    /// `NAME=VALUE` settings of destination.yaml, over the server's.
    pub(crate) settings: Vec<String>,
    /// The variables its credentials are read from (default: those its mappings name).
    pub(crate) credentials: CredentialNames,
    /// The token store of its OAuth refresh-token chain.
    pub(crate) token_store: Option<PathBuf>,
    /// Only the events this trigger matches go to it (`type = "track"`); `None`: all.
    pub(crate) filter: Option<Trigger>,
    /// How many of its events are delivered at once.
    pub(crate) concurrency: Option<usize>,
    /// How long an event Zendesk cannot take yet keeps being tried.
    pub(crate) retry_for: Option<Duration>,
    /// How long an event waits for a record that does not exist yet.
    pub(crate) wait_for_records: Option<Duration>,
    /// How long an item of a bulk request waits for others.
    pub(crate) batch_window: Option<Duration>,
    /// Whether every request goes on its own (no bulk requests).
    pub(crate) no_batch: Option<bool>,
}

/// One source of `sources:`: the events sent with its write key go to its destinations.
#[derive(Clone, Debug)]
pub(crate) struct SourceSpec {
    /// The write key (read at load; shown as `[redacted]`).
    pub(crate) key: Secret,
    /// Where the key was read from, for messages: the variable's name or the file's path.
    pub(crate) from: String,
    /// The names of its destinations, each one of `destinations:`.
    pub(crate) destinations: Vec<String>,
}

/// What is wrong at a place of the file (the caller adds the file's name).
#[derive(Debug, PartialEq)]
pub(crate) struct Placed {
    pub(crate) loc: Loc,
    pub(crate) message: String,
}

fn placed(loc: Loc, message: impl Into<String>) -> Placed {
    Placed {
        loc,
        message: message.into(),
    }
}

/// The keys of a destination.
const DESTINATION_KEYS: &[&str] = &[
    "mappings",
    "subdomain",
    "zendesk_url",
    "emulator",
    "settings",
    "credentials",
    "token_store",
    "filter",
    "concurrency",
    "retry_for",
    "wait_for_records",
    "batch_window",
    "no_batch",
];

/// The keys of a destination's `credentials`.
const CREDENTIAL_KEYS: &[&str] = &[
    "email_env",
    "api_token_env",
    "oauth_token_env",
    "client_id_env",
    "client_secret_env",
];

/// The keys of a source.
const SOURCE_KEYS: &[&str] = &["write_key_env", "write_key_file", "destinations"];

/// Reads `destinations:` and `sources:` (either may be absent), `${NAME}`s and write keys taken
/// from `env`, write key files from the disk.
pub(crate) fn parse(
    destinations: Option<(&Key, &Node)>,
    sources: Option<(&Key, &Node)>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<DestinationSpec>, Vec<SourceSpec>), Placed> {
    let specs = match destinations {
        Some((_, node)) => parse_destinations(node, env)?,
        None => Vec::new(),
    };
    let sources = match sources {
        None => Vec::new(),
        Some((key, _)) if specs.is_empty() => {
            return Err(placed(
                key.loc,
                format!("`{SOURCES_KEY}` needs `{DESTINATIONS_KEY}:` to name where its events go"),
            ));
        }
        Some((_, node)) => parse_sources(node, &specs, env)?,
    };
    Ok((specs, sources))
}

fn parse_destinations(
    node: &Node,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<DestinationSpec>, Placed> {
    let entries = match &node.value {
        NodeValue::Map(entries) if !entries.is_empty() => entries,
        NodeValue::Map(_) | NodeValue::Null => {
            return Err(placed(
                node.loc,
                format!(
                    "`{DESTINATIONS_KEY}` names no destination (leave it out for one, made of the server's flags)"
                ),
            ));
        }
        _ => {
            return Err(placed(
                node.loc,
                format!(
                    "`{DESTINATIONS_KEY}`: a mapping of destination names to their keys (`eu: {{subdomain: acme-eu}}`)"
                ),
            ));
        }
    };
    let mut specs: Vec<DestinationSpec> = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        if !valid_destination_name(&key.name) {
            return Err(placed(
                key.loc,
                format!(
                    "`{DESTINATIONS_KEY}`: `{}` is not a destination name (1 to 32 of a-z, 0-9, `_` and `-`, starting with a letter)",
                    key.name
                ),
            ));
        }
        if specs.iter().any(|s| s.name == key.name) {
            return Err(placed(
                key.loc,
                format!("`{DESTINATIONS_KEY}`: `{}` is named twice", key.name),
            ));
        }
        specs.push(destination(&key.name, value, env)?);
    }
    Ok(specs)
}

/// The fields of a mapping node, each key checked against `known` (`what` names the node in
/// messages); a null node has none.
fn fields<'a>(
    node: &'a Node,
    what: &str,
    known: &[&str],
    shape: &str,
) -> Result<&'a [(Key, Node)], Placed> {
    let entries: &[(Key, Node)] = match &node.value {
        NodeValue::Map(entries) => entries,
        NodeValue::Null => &[],
        _ => return Err(placed(node.loc, format!("`{what}`: {shape}"))),
    };
    for (key, _) in entries {
        if !known.contains(&key.name.as_str()) {
            let mut hint = did_you_mean(&key.name, known.iter().copied());
            if hint.is_empty() {
                hint = format!(" (the keys: {})", known.join(", "));
            }
            return Err(placed(
                key.loc,
                format!("`{what}`: unknown key `{}`{hint}", key.name),
            ));
        }
    }
    Ok(entries)
}

fn destination(
    name: &str,
    node: &Node,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<DestinationSpec, Placed> {
    let what = format!("{DESTINATIONS_KEY}.{name}");
    let entries = fields(
        node,
        &what,
        DESTINATION_KEYS,
        "a mapping of the destination's keys (`subdomain: acme-eu`)",
    )?;
    let mut spec = DestinationSpec {
        name: name.to_owned(),
        ..DestinationSpec::default()
    };
    let mut emulator_at = None;
    for (key, value) in entries {
        let field = format!("{what}.{}", key.name);
        let at = |message: String| placed(value.loc, format!("`{field}`: {message}"));
        let text = || scalar(value, env).map_err(at);
        match key.name.as_str() {
            "mappings" => spec.mappings = Some(PathBuf::from(text()?)),
            "subdomain" => spec.subdomain = Some(text()?),
            "zendesk_url" => {
                let url = text()?;
                match reqwest::Url::parse(&url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    _ => return Err(at(format!("{url:?} is not an http:// or https:// URL"))),
                }
                spec.zendesk_url = Some(url);
            }
            "emulator" => {
                spec.emulator = boolean(&text()?).map_err(at)?;
                emulator_at = Some(key.loc);
            }
            "settings" => spec.settings = settings(value, env).map_err(at)?,
            "credentials" => spec.credentials = credentials(&field, value, env)?,
            "token_store" => spec.token_store = Some(PathBuf::from(text()?)),
            "filter" => spec.filter = Some(filter(&text()?).map_err(at)?),
            "concurrency" => {
                let n = text()?;
                spec.concurrency = Some(
                    n.parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| at(format!("{n:?} is not a number of at least 1")))?,
                );
            }
            "retry_for" => spec.retry_for = Some(parse_duration(&text()?).map_err(at)?),
            "wait_for_records" => {
                spec.wait_for_records = Some(parse_duration(&text()?).map_err(at)?);
            }
            "batch_window" => spec.batch_window = Some(parse_duration(&text()?).map_err(at)?),
            "no_batch" => spec.no_batch = Some(boolean(&text()?).map_err(at)?),
            _ => {}
        }
    }
    if let (Some(loc), true, Some(_)) = (emulator_at, spec.emulator, &spec.zendesk_url) {
        return Err(placed(
            loc,
            format!("`{what}`: `zendesk_url` and `emulator: true` exclude each other"),
        ));
    }
    if spec.subdomain.is_some()
        && let Some((key, _)) = entries.iter().find(|(k, _)| k.name == "settings")
        && spec.settings.iter().any(|s| s.starts_with("subdomain="))
    {
        return Err(placed(
            key.loc,
            format!("`{what}`: the subdomain is given twice, as `subdomain` and in `settings`"),
        ));
    }
    Ok(spec)
}

/// `true` or `false`.
fn boolean(text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{text:?} is not `true` or `false`")),
    }
}

/// A trigger that parses with no warning: a filter that cannot match what it reads as would
/// keep every event from its destination without a word.
fn filter(text: &str) -> Result<Trigger, String> {
    let trigger = Trigger::parse(text).map_err(|e| format!("{text:?}: {e}"))?;
    if let Some(w) = trigger.warnings().first() {
        return Err(format!("{text:?}: {w}"));
    }
    Ok(trigger)
}

/// Whether `name` may name an environment variable.
fn variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn credentials(
    what: &str,
    node: &Node,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CredentialNames, Placed> {
    let entries = fields(
        node,
        what,
        CREDENTIAL_KEYS,
        "a mapping of the variables that hold the credentials (`api_token_env: US_API_TOKEN`)",
    )?;
    let mut names = CredentialNames::default();
    for (key, value) in entries {
        let at = |message: String| placed(value.loc, format!("`{what}.{}`: {message}", key.name));
        let name = scalar(value, env).map_err(at)?;
        if !variable_name(&name) {
            return Err(at(format!(
                "{name:?} is not an environment variable's name"
            )));
        }
        let slot = match key.name.as_str() {
            "email_env" => &mut names.email,
            "api_token_env" => &mut names.api_token,
            "oauth_token_env" => &mut names.oauth_token,
            "client_id_env" => &mut names.client_id,
            _ => &mut names.client_secret,
        };
        *slot = Some(name);
    }
    Ok(names)
}

fn parse_sources(
    node: &Node,
    specs: &[DestinationSpec],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<SourceSpec>, Placed> {
    let items = match &node.value {
        NodeValue::Seq(items) if !items.is_empty() => items,
        _ => {
            return Err(placed(
                node.loc,
                format!(
                    "`{SOURCES_KEY}`: a list of sources (`- {{write_key_env: WK_WEB, destinations: [eu]}}`)"
                ),
            ));
        }
    };
    let mut sources: Vec<SourceSpec> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let what = format!("{SOURCES_KEY}[{i}]");
        let source = source(&what, item, specs, env)?;
        if let Some(same) = sources.iter().find(|s| s.key == source.key) {
            return Err(placed(
                item.loc,
                format!(
                    "`{what}`: its write key ({}) is also the key of {} (a key goes to one list of destinations)",
                    source.from, same.from
                ),
            ));
        }
        sources.push(source);
    }
    Ok(sources)
}

fn source(
    what: &str,
    node: &Node,
    specs: &[DestinationSpec],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SourceSpec, Placed> {
    let entries = fields(
        node,
        what,
        SOURCE_KEYS,
        "a mapping (`{write_key_env: WK_WEB, destinations: [eu]}`)",
    )?;
    let mut key = None;
    let mut destinations = None;
    for (name, value) in entries {
        let field = format!("{what}.{}", name.name);
        let at = |message: String| placed(value.loc, format!("`{field}`: {message}"));
        match name.name.as_str() {
            "destinations" => destinations = Some(source_destinations(&field, value, specs, env)?),
            kind => {
                if key.is_some() {
                    return Err(placed(
                        name.loc,
                        format!("`{what}`: one of `write_key_env` and `write_key_file`, not both"),
                    ));
                }
                let text = scalar(value, env).map_err(at)?;
                key = Some(if kind == "write_key_env" {
                    key_of_variable(&text, env).map_err(at)?
                } else {
                    key_of_file(&text).map_err(at)?
                });
            }
        }
    }
    let Some((key, from)) = key else {
        return Err(placed(
            node.loc,
            format!("`{what}`: its write key is missing (`write_key_env` or `write_key_file`)"),
        ));
    };
    let Some(destinations) = destinations else {
        return Err(placed(
            node.loc,
            format!("`{what}`: `destinations` is missing (the names its events go to)"),
        ));
    };
    Ok(SourceSpec {
        key,
        from,
        destinations,
    })
}

/// The write key of the variable `name` (trimmed) and where it is from. The error names the
/// variable, never a value.
fn key_of_variable(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Secret, String), String> {
    if !variable_name(name) {
        return Err(format!("{name:?} is not an environment variable's name"));
    }
    let value = env(name).ok_or_else(|| format!("the environment variable `{name}` is not set"))?;
    let key =
        single_key(&value).map_err(|why| format!("the environment variable `{name}` {why}"))?;
    Ok((key, name.to_owned()))
}

/// The write key of the file `path` (trimmed) and where it is from. The error names the file,
/// never its content.
fn key_of_file(path: &str) -> Result<(Secret, String), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the write key file {path}: {e}"))?;
    let key = single_key(&text).map_err(|why| format!("the write key file {path} {why}"))?;
    Ok((key, path.to_owned()))
}

/// One write key, trimmed.
fn single_key(text: &str) -> Result<Secret, &'static str> {
    let key = text.trim();
    if key.is_empty() {
        Err("is empty")
    } else if key.contains(char::is_whitespace) || key.contains(',') {
        Err("holds more than one key (a source has one)")
    } else {
        Ok(Secret::new(key))
    }
}

fn source_destinations(
    what: &str,
    node: &Node,
    specs: &[DestinationSpec],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, Placed> {
    let items = match &node.value {
        NodeValue::Seq(items) if !items.is_empty() => items,
        _ => {
            return Err(placed(
                node.loc,
                format!("`{what}`: a list of destination names (`[eu, us]`)"),
            ));
        }
    };
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let at = |message: String| placed(item.loc, format!("`{what}`: {message}"));
        let name = scalar(item, env).map_err(at)?;
        if !specs.iter().any(|s| s.name == name) {
            let hint = did_you_mean(&name, specs.iter().map(|s| s.name.as_str()));
            return Err(at(format!(
                "no destination `{name}`{hint} (the destinations: {})",
                names_of(specs)
            )));
        }
        if names.contains(&name) {
            return Err(at(format!("`{name}` is named twice")));
        }
        names.push(name);
    }
    Ok(names)
}

/// `eu, us`.
pub(crate) fn names_of(specs: &[DestinationSpec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The mappings, settings and target `spec` runs with on a server of `base` and `base_target`:
/// its mappings directory, else the server's; the server's settings (its file's `set`,
/// `ZDMAP_SET`, `--set`), then the destination's `settings`, then its `subdomain`; its
/// target (`zendesk_url` or `emulator: true`), else the server's. Its credentials are
/// [`DestinationSpec::credentials`], for [`crate::deliver::setup::ConnectOptions`].
pub(crate) fn destination_args(
    spec: &DestinationSpec,
    base: &ConfigArgs,
    base_target: &TargetArgs,
) -> (ConfigArgs, TargetArgs) {
    let mut set = base.set.clone();
    set.extend(spec.settings.iter().cloned());
    if let Some(subdomain) = &spec.subdomain {
        set.push(format!("subdomain={subdomain}"));
    }
    let config = ConfigArgs {
        mappings: spec
            .mappings
            .clone()
            .unwrap_or_else(|| base.mappings.clone()),
        set,
        file_set: base.file_set.clone(),
    };
    let target = if let Some(url) = &spec.zendesk_url {
        TargetArgs {
            zendesk_url: Some(url.clone()),
            emulator: false,
        }
    } else if spec.emulator {
        TargetArgs {
            zendesk_url: None,
            emulator: true,
        }
    } else {
        base_target.clone()
    };
    (config, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::yaml;

    const KEY_WEB: &str = "wk-web-0123456789";
    const KEY_APP: &str = "wk-app-9876543210";

    fn env(name: &str) -> Option<String> {
        match name {
            "WK_WEB" => Some(format!("  {KEY_WEB}\n")),
            "WK_EU_APP" => Some(KEY_APP.into()),
            "WK_EMPTY" => Some(" \n".into()),
            "US_HOST" => Some("127.0.0.1:9100".into()),
            _ => None,
        }
    }

    /// `destinations:` and `sources:` of `text`.
    fn read(text: &str) -> Result<(Vec<DestinationSpec>, Vec<SourceSpec>), Placed> {
        let root = yaml::parse(text).expect("YAML");
        let NodeValue::Map(entries) = &root.value else {
            panic!("a mapping")
        };
        let find = |name: &str| {
            entries
                .iter()
                .find(|(k, _)| k.name == name)
                .map(|(k, v)| (k, v))
        };
        parse(find(DESTINATIONS_KEY), find(SOURCES_KEY), &env)
    }

    /// `LINE:COL: message` of the error of `text`.
    fn error(text: &str) -> String {
        match read(text) {
            Ok(specs) => panic!("{text} was taken: {specs:?}"),
            Err(e) => format!("{}:{}: {}", e.loc.line, e.loc.column, e.message),
        }
    }

    const GOOD: &str = "\
destinations:
  eu: { subdomain: acme-eu, mappings: mappings }
  us:
    subdomain: acme-us
    zendesk_url: \"http://${US_HOST}\"
    settings: { requests_per_minute: 0 }
    credentials: { email_env: US_EMAIL, api_token_env: US_API_TOKEN }
    token_store: /var/lib/zdmap/us-tokens.json
    filter: type = \"track\"
    concurrency: 4
    retry_for: 2h
    wait_for_records: 90s
    batch_window: 250ms
    no_batch: true
  lab: { emulator: true }
sources:
  - { write_key_env: WK_WEB, destinations: [eu, us] }
  - { write_key_env: WK_EU_APP, destinations: [eu] }
";

    #[test]
    fn a_good_file_gives_its_specs() {
        let (specs, sources) = read(GOOD).expect("taken");
        assert_eq!(names_of(&specs), "eu, us, lab");
        let eu = &specs[0];
        assert_eq!(eu.subdomain.as_deref(), Some("acme-eu"));
        assert_eq!(eu.mappings, Some(PathBuf::from("mappings")));
        assert_eq!(eu.credentials, CredentialNames::default());
        assert!(eu.filter.is_none() && eu.zendesk_url.is_none() && !eu.emulator);
        assert_eq!(eu.concurrency, None);
        let us = &specs[1];
        assert_eq!(us.zendesk_url.as_deref(), Some("http://127.0.0.1:9100"));
        assert_eq!(us.settings, ["requests_per_minute=0"]);
        assert_eq!(us.credentials.email.as_deref(), Some("US_EMAIL"));
        assert_eq!(us.credentials.api_token.as_deref(), Some("US_API_TOKEN"));
        assert_eq!(us.credentials.client_id, None);
        assert_eq!(
            us.token_store,
            Some(PathBuf::from("/var/lib/zdmap/us-tokens.json"))
        );
        let filter = us.filter.as_ref().expect("a filter");
        assert!(filter.matches(&serde_json::json!({"type": "track"})));
        assert!(!filter.matches(&serde_json::json!({"type": "identify"})));
        assert_eq!(us.concurrency, Some(4));
        assert_eq!(us.retry_for, Some(Duration::from_secs(7200)));
        assert_eq!(us.wait_for_records, Some(Duration::from_secs(90)));
        assert_eq!(us.batch_window, Some(Duration::from_millis(250)));
        assert_eq!(us.no_batch, Some(true));
        assert!(specs[2].emulator);

        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].key.expose(), KEY_WEB, "trimmed");
        assert_eq!(sources[0].from, "WK_WEB");
        assert_eq!(sources[0].destinations, ["eu", "us"]);
        assert_eq!(sources[1].key.expose(), KEY_APP);
        assert_eq!(sources[1].destinations, ["eu"]);
    }

    #[test]
    fn no_destinations_no_specs() {
        let (specs, sources) = read("listen: 127.0.0.1:0\n").expect("taken");
        assert!(specs.is_empty() && sources.is_empty());
    }

    #[test]
    fn a_write_key_comes_from_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("web-key");
        std::fs::write(&file, format!("{KEY_WEB}\n")).expect("write");
        let shown = file.display().to_string();
        let (_, sources) = read(&format!(
            "destinations: {{eu: {{}}}}\nsources:\n  - {{write_key_file: {shown}, destinations: [eu]}}\n"
        ))
        .expect("taken");
        assert_eq!(sources[0].key.expose(), KEY_WEB);
        assert_eq!(sources[0].from, shown);

        let missing = dir.path().join("nope").display().to_string();
        let e = error(&format!(
            "destinations: {{eu: {{}}}}\nsources:\n  - {{write_key_file: {missing}, destinations: [eu]}}\n"
        ));
        assert!(
            e.starts_with(&format!(
                "3:22: `sources[0].write_key_file`: cannot read the write key file {missing}: "
            )),
            "{e}"
        );
        std::fs::write(&file, format!("{KEY_WEB}\n{KEY_APP}\n")).expect("write");
        let e = error(&format!(
            "destinations: {{eu: {{}}}}\nsources:\n  - {{write_key_file: {shown}, destinations: [eu]}}\n"
        ));
        assert!(
            e.ends_with("holds more than one key (a source has one)"),
            "{e}"
        );
        assert!(!e.contains(KEY_WEB), "{e}");
    }

    #[test]
    fn debug_shows_no_write_key() {
        let (specs, sources) = read(GOOD).expect("taken");
        let shown = format!("{specs:?}{sources:?}");
        assert!(
            !shown.contains(KEY_WEB) && !shown.contains(KEY_APP),
            "{shown}"
        );
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(shown.contains("WK_WEB"), "where it came from: {shown}");
    }

    #[test]
    fn each_problem_is_said_at_its_place() {
        let d = "destinations:\n  eu: {}\n";
        let cases: &[(String, &str)] = &[
            (
                "destinations:\n  EU: {}\n".into(),
                "2:3: `destinations`: `EU` is not a destination name (1 to 32 of a-z, 0-9, `_` and `-`, starting with a letter)",
            ),
            (
                "destinations: {}\n".into(),
                "1:15: `destinations` names no destination (leave it out for one, made of the server's flags)",
            ),
            (
                "destinations: [eu]\n".into(),
                "1:15: `destinations`: a mapping of destination names to their keys (`eu: {subdomain: acme-eu}`)",
            ),
            (
                "destinations:\n  eu:\n    subdomian: acme\n".into(),
                "3:5: `destinations.eu`: unknown key `subdomian`; did you mean `subdomain`?",
            ),
            (
                "destinations:\n  eu:\n    retry_for: soon\n".into(),
                "3:16: `destinations.eu.retry_for`: \"soon\" is not a duration like 90s, 30m, 24h",
            ),
            (
                "destinations:\n  eu:\n    filter: type = \n".into(),
                "3:13: `destinations.eu.filter`: \"type =\": column 7: expected a value (a field, string, number, true, false or null) after `=`, found the end",
            ),
            (
                "destinations:\n  eu:\n    filter: type = track\n".into(),
                "3:13: `destinations.eu.filter`: \"type = track\": column 8: `track` is read as a field of the event, not as text: write \"track\" to compare with the string",
            ),
            (
                "destinations:\n  eu:\n    zendesk_url: http://x\n    emulator: true\n".into(),
                "4:5: `destinations.eu`: `zendesk_url` and `emulator: true` exclude each other",
            ),
            (
                "destinations:\n  eu:\n    subdomain: ${NO_SUCH}\n".into(),
                "3:16: `destinations.eu.subdomain`: the environment variable `NO_SUCH` is not set",
            ),
            (
                "destinations:\n  eu:\n    concurrency: 0\n".into(),
                "3:18: `destinations.eu.concurrency`: \"0\" is not a number of at least 1",
            ),
            (
                "destinations:\n  eu:\n    credentials: { api_token: X }\n".into(),
                "3:20: `destinations.eu.credentials`: unknown key `api_token`; did you mean `api_token_env`?",
            ),
            (
                "destinations:\n  eu:\n    credentials: { api_token_env: not-a-name }\n".into(),
                "3:35: `destinations.eu.credentials.api_token_env`: \"not-a-name\" is not an environment variable's name",
            ),
            (
                "sources:\n  - { write_key_env: WK_WEB, destinations: [eu] }\n".into(),
                "1:1: `sources` needs `destinations:` to name where its events go",
            ),
            (
                format!("{d}sources:\n  - {{ destinations: [eu] }}\n"),
                "4:5: `sources[0]`: its write key is missing (`write_key_env` or `write_key_file`)",
            ),
            (
                format!("{d}sources:\n  - {{ write_key_env: WK_WEB }}\n"),
                "4:5: `sources[0]`: `destinations` is missing (the names its events go to)",
            ),
            (
                format!("{d}sources:\n  - {{ write_key_env: WK_WEB, destinations: [] }}\n"),
                "4:44: `sources[0].destinations`: a list of destination names (`[eu, us]`)",
            ),
            (
                format!("{d}sources:\n  - {{ write_key_env: WK_WEB, destinations: [ue] }}\n"),
                "4:45: `sources[0].destinations`: no destination `ue`; did you mean `eu`? (the destinations: eu)",
            ),
            (
                format!(
                    "{d}sources:\n  - {{ write_key_env: WK_WEB, write_key_file: /k, destinations: [eu] }}\n"
                ),
                "4:30: `sources[0]`: one of `write_key_env` and `write_key_file`, not both",
            ),
            (
                format!("{d}sources:\n  - {{ write_key_env: WK_NOPE, destinations: [eu] }}\n"),
                "4:22: `sources[0].write_key_env`: the environment variable `WK_NOPE` is not set",
            ),
            (
                format!("{d}sources:\n  - {{ write_key_env: WK_EMPTY, destinations: [eu] }}\n"),
                "4:22: `sources[0].write_key_env`: the environment variable `WK_EMPTY` is empty",
            ),
            (
                format!(
                    "{d}sources:\n  - {{ write_key_env: WK_WEB, destinations: [eu] }}\n  - {{ write_key_env: WK_WEB, destinations: [eu] }}\n"
                ),
                "5:5: `sources[1]`: its write key (WK_WEB) is also the key of WK_WEB (a key goes to one list of destinations)",
            ),
            (
                format!(
                    "{d}sources:\n  - {{ write_key_env: WK_WEB, destinations: [eu], typo: 1 }}\n"
                ),
                "4:50: `sources[0]`: unknown key `typo` (the keys: write_key_env, write_key_file, destinations)",
            ),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|(text, expected)| {
                let got = error(text);
                (got != *expected)
                    .then(|| format!("{text}\n  got      {got}\n  expected {expected}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_destination_runs_with_its_own_then_the_servers() {
        let base = ConfigArgs {
            mappings: PathBuf::from("server-mappings"),
            set: vec!["subdomain=server".into(), "requests_per_minute=100".into()],
            file_set: vec!["integration_name=Zendesk".into()],
        };
        let server_target = TargetArgs {
            zendesk_url: Some("http://127.0.0.1:9000".into()),
            emulator: false,
        };
        let (specs, _) = read(GOOD).expect("taken");
        let (config, target) = destination_args(&specs[0], &base, &server_target);
        assert_eq!(config.mappings, PathBuf::from("mappings"));
        assert_eq!(
            config.set,
            [
                "subdomain=server",
                "requests_per_minute=100",
                "subdomain=acme-eu"
            ]
        );
        assert_eq!(config.file_set, base.file_set);
        assert_eq!(
            target.zendesk_url, server_target.zendesk_url,
            "the server's"
        );

        let (config, target) = destination_args(&specs[1], &base, &server_target);
        assert_eq!(
            config.set[2..],
            ["requests_per_minute=0", "subdomain=acme-us"]
        );
        assert_eq!(target.zendesk_url.as_deref(), Some("http://127.0.0.1:9100"));

        let (config, target) = destination_args(&specs[2], &base, &server_target);
        assert_eq!(config.mappings, base.mappings, "the server's");
        assert!(target.emulator && target.zendesk_url.is_none());
    }
}
