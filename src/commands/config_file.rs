//! The config file of `zdmap serve`: `--config FILE` (or `ZDMAP_CONFIG`), else `zdmap.yaml` in
//! the working directory when there is one.
//!
//! Each key is a serve flag's long name with `_` for `-` (`listen`, `data_dir`, `write_key`).
//! A file value becomes that flag's default, so clap's own order gives the precedence: the
//! command line, then the flag's `ZDMAP_*` variable, then the file, then the built-in default;
//! and every value goes through the flag's own parser. `set` is merged per setting instead
//! (see [`ConfigArgs::source`](super::args::ConfigArgs::source)).
//!
//! `destinations` and `sources` name several Zendesk accounts behind one server and which write
//! key's events go to which: [`super::destinations`] reads them.
//!
//! String values may name environment variables, `${NAME}` (an unset one is an error at its
//! place); `$${` writes a literal `${`.

use super::destinations::{self, DESTINATIONS_KEY, DestinationSpec, SOURCES_KEY, SourceSpec};
use crate::mapping::diagnostic::did_you_mean;
use crate::mapping::yaml::{self, Loc, Node, NodeValue};
use clap::ArgAction;
use std::path::{Path, PathBuf};

/// The file `zdmap serve` reads from the working directory when no `--config` is given.
pub(crate) const DEFAULT_FILE: &str = "zdmap.yaml";

/// The id of the `--config` flag itself (no key of the file).
pub(crate) const CONFIG_ARG: &str = "config_file";

/// The keys a flag other than the serve flags' own takes in the file: `set`, as a map.
const SET_KEY: &str = "set";

/// A loaded config file: the flags it gives, as the command line would spell their values.
#[derive(Debug, Default)]
pub(crate) struct ConfigFile {
    /// The arg id and its values.
    pub(crate) flags: Vec<(String, Vec<String>)>,
    /// `NAME=VALUE` settings of its `set`.
    pub(crate) set: Vec<String>,
    /// Its `destinations`, in the file's order (empty: one destination, the server's).
    pub(crate) destinations: Vec<DestinationSpec>,
    /// Its `sources`: which write key's events go to which destinations.
    pub(crate) sources: Vec<SourceSpec>,
}

impl ConfigFile {
    /// The values the file gives the flag whose arg id is `id`.
    pub(crate) fn flag(&self, id: &str) -> Option<&[String]> {
        self.flags
            .iter()
            .find(|(flag, _)| flag == id)
            .map(|(_, values)| values.as_slice())
    }
}

/// Why a config file cannot be used: `FILE:LINE:COL: message` (or `FILE: message`). Never
/// holds the value of an environment variable.
#[derive(Debug)]
pub(crate) struct FileError(pub(crate) String);

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The file to read: `explicit`, else [`DEFAULT_FILE`] in the working directory if present.
pub(crate) fn chosen(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Path::new(DEFAULT_FILE)
            .is_file()
            .then(|| PathBuf::from(DEFAULT_FILE)),
    }
}

/// The key of the file that sets `arg`: its long name with `_` for `-`.
fn key_of(arg: &clap::Arg) -> Option<String> {
    if arg.get_id() == CONFIG_ARG {
        return None;
    }
    arg.get_long()
        .filter(|l| *l != "help" && *l != "version")
        .map(|l| l.replace('-', "_"))
}

/// Every key the file may hold for `serve`, sorted.
pub(crate) fn keys(serve: &clap::Command) -> Vec<String> {
    let mut keys: Vec<String> = serve.get_arguments().filter_map(key_of).collect();
    keys.sort();
    keys
}

/// Reads and checks `path` against the flags of `serve`, interpolating `${NAME}` from `env`.
pub(crate) fn load(
    path: &Path,
    serve: &clap::Command,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ConfigFile, FileError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| FileError(format!("{shown}: cannot read the config file: {e}")))?;
    let root = yaml::parse(&text)
        .map_err(|e| FileError(format!("{shown}:{}: {}", place(e.loc), e.message)))?;
    let at = |loc: Loc, message: String| FileError(format!("{shown}:{}: {message}", place(loc)));
    let entries = match root.value {
        NodeValue::Null => return Ok(ConfigFile::default()),
        NodeValue::Map(entries) => entries,
        _ => {
            return Err(at(
                root.loc,
                "the config file must be a mapping of serve flags (`listen: 0.0.0.0:8088`)".into(),
            ));
        }
    };
    let mut known = keys(serve);
    known.extend([DESTINATIONS_KEY.to_owned(), SOURCES_KEY.to_owned()]);
    let mut file = ConfigFile::default();
    let (mut destinations, mut sources) = (None, None);
    for (key, node) in &entries {
        let value_at = |message: String| at(node.loc, format!("`{}`: {message}", key.name));
        if key.name == SET_KEY {
            file.set = settings(node, env).map_err(value_at)?;
            continue;
        }
        if key.name == DESTINATIONS_KEY {
            destinations = Some((key, node));
            continue;
        }
        if key.name == SOURCES_KEY {
            sources = Some((key, node));
            continue;
        }
        let Some(arg) = serve
            .get_arguments()
            .find(|a| key_of(a).as_deref() == Some(key.name.as_str()))
        else {
            let mut hint = did_you_mean(&key.name, known.iter().map(String::as_str));
            if hint.is_empty() {
                hint = " (the keys are the long names of `zdmap serve --help`'s flags, with `_` for `-`)".into();
            }
            return Err(at(key.loc, format!("unknown key `{}`{hint}", key.name)));
        };
        let many = matches!(arg.get_action(), ArgAction::Append);
        let values = match &node.value {
            NodeValue::Seq(items) if many => items
                .iter()
                .map(|item| {
                    scalar(item, env).map_err(|m| at(item.loc, format!("`{}`: {m}", key.name)))
                })
                .collect::<Result<Vec<_>, _>>()?,
            NodeValue::Seq(_) => return Err(value_at("takes one value, not a list".into())),
            _ => vec![scalar(node, env).map_err(value_at)?],
        };
        for v in &values {
            check(arg, v).map_err(|e| value_at(clap_reason(&e)))?;
        }
        file.flags.push((arg.get_id().to_string(), values));
    }
    (file.destinations, file.sources) =
        destinations::parse(destinations, sources, env).map_err(|e| at(e.loc, e.message))?;
    Ok(file)
}

/// `set` as `NAME: VALUE` pairs, or as a list of `NAME=VALUE`.
pub(super) fn settings(
    node: &Node,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    match &node.value {
        NodeValue::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| scalar(v, env).map(|v| format!("{}={v}", k.name)))
            .collect(),
        NodeValue::Seq(items) => items
            .iter()
            .map(|item| {
                let s = scalar(item, env)?;
                if s.contains('=') {
                    Ok(s)
                } else {
                    Err(format!("{s:?} is not NAME=VALUE"))
                }
            })
            .collect(),
        _ => Err("a mapping of settings (`subdomain: acme`)".into()),
    }
}

/// A scalar as the command line would give it, its `${NAME}`s replaced.
pub(super) fn scalar(node: &Node, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    match &node.value {
        NodeValue::Str(s) => interpolate(s, env),
        NodeValue::Bool(b) => Ok(b.to_string()),
        NodeValue::Int(i) => Ok(i.to_string()),
        NodeValue::Float(f) => Ok(f.to_string()),
        NodeValue::Null => Err("no value (leave the key out for the default)".into()),
        NodeValue::Seq(_) | NodeValue::Map(_) => Err("expected a single value".into()),
    }
}

/// Replaces each `${NAME}` of `text` by the variable's value; `$${` is a literal `${`. The
/// error names the variable, never a value.
pub(crate) fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err("`${` without its `}` (write `$${` for a literal `${`)".into());
            };
            let name = &after[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a variable name (write `$${{` for a literal `${{`)"
                ));
            }
            match env(name) {
                Some(value) => out.push_str(&value),
                None => return Err(format!("the environment variable `{name}` is not set")),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `value` with `arg`'s own parser (on an arg of its own: a file value must not wait
/// for clap to find it wrong as a default).
fn check(arg: &clap::Arg, value: &str) -> Result<(), clap::Error> {
    let long = arg.get_long().unwrap_or_default().to_owned();
    let mut probe = clap::Arg::new("value")
        .long(long.clone())
        .action(ArgAction::Set)
        .value_parser(arg.get_value_parser().clone());
    if let Some(names) = arg.get_value_names() {
        probe = probe.value_names(names.iter().cloned());
    }
    clap::Command::new("check")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from([format!("--{long}={value}")])
        .map(drop)
}

/// `LINE:COL`.
fn place(loc: Loc) -> String {
    format!("{}:{}", loc.line, loc.column)
}

/// What clap says is wrong with a value, without its `error: ` and usage lines.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default().trim();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// `command` with the file's values as the defaults of the `serve` flags they set.
pub(crate) fn apply(command: clap::Command, file: &ConfigFile) -> clap::Command {
    command.mut_subcommand("serve", |serve| {
        file.flags.iter().fold(serve, |serve, (id, values)| {
            serve.mut_arg(id.as_str(), |arg| arg.default_values(values.clone()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("nats.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_are_interpolated_and_escaped() {
        assert_eq!(
            interpolate("nats://${HOST}:4222", &env).as_deref(),
            Ok("nats://nats.internal:4222")
        );
        assert_eq!(interpolate("a${EMPTY}b", &env).as_deref(), Ok("ab"));
        assert_eq!(
            interpolate("$${HOST} $5 $", &env).as_deref(),
            Ok("${HOST} $5 $")
        );
        assert_eq!(
            interpolate("${NOPE}", &env),
            Err("the environment variable `NOPE` is not set".into())
        );
        assert!(interpolate("${HOST", &env).is_err_and(|e| e.contains("without its `}`")));
        assert!(interpolate("${1X}", &env).is_err_and(|e| e.contains("not a variable name")));
    }

    fn serve_command() -> clap::Command {
        let mut cli = super::super::Cli::command();
        cli.build();
        cli.find_subcommand("serve").cloned().unwrap_or_default()
    }

    fn load_text(text: &str) -> Result<ConfigFile, FileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zdmap.yaml");
        std::fs::write(&path, text).unwrap();
        load(&path, &serve_command(), &env)
            .map_err(|e| FileError(e.0.replace(&path.display().to_string(), "zdmap.yaml")))
    }

    #[test]
    fn every_serve_flag_has_a_key_and_a_variable() {
        let serve = serve_command();
        let keys = keys(&serve);
        for key in [
            "listen",
            "data_dir",
            "queue",
            "write_key",
            "write_key_file",
            "set",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
        }
        for arg in serve.get_arguments() {
            let Some(key) = key_of(arg) else { continue };
            let var = arg
                .get_env()
                .and_then(std::ffi::OsStr::to_str)
                .unwrap_or_default();
            if key == "set" {
                continue; // ZDMAP_SET, read by ConfigArgs::source, merged per setting
            }
            assert!(var.starts_with("ZDMAP_"), "--{key} has no ZDMAP_ variable");
        }
    }

    #[test]
    fn values_become_flags() {
        let file = load_text(
            "listen: 0.0.0.0:8080\nqueue: nats://${HOST}:4222\nconcurrency: 4\nno_batch: true\n\
             write_key: [a, b]\nset:\n  subdomain: acme\n  requests_per_minute: 400\n",
        )
        .unwrap();
        assert_eq!(
            file.flags,
            vec![
                ("listen".to_owned(), vec!["0.0.0.0:8080".to_owned()]),
                (
                    "queue".to_owned(),
                    vec!["nats://nats.internal:4222".to_owned()]
                ),
                ("concurrency".to_owned(), vec!["4".to_owned()]),
                ("no_batch".to_owned(), vec!["true".to_owned()]),
                (
                    "write_keys".to_owned(),
                    vec!["a".to_owned(), "b".to_owned()]
                ),
            ]
        );
        assert_eq!(file.set, ["subdomain=acme", "requests_per_minute=400"]);
    }

    #[test]
    fn problems_are_placed() {
        let err = |text: &str| load_text(text).err().map(|e| e.0).unwrap_or_default();
        assert_eq!(
            err("listen: 0.0.0.0:8080\nlisten_adr: x\n"),
            "zdmap.yaml:2:1: unknown key `listen_adr`; did you mean `listen`?"
        );
        assert_eq!(
            err("data-dir: /x\n"),
            "zdmap.yaml:1:1: unknown key `data-dir`; did you mean `data_dir`?"
        );
        assert_eq!(
            err("\nqueue: nats://${NOPE}:4222\n"),
            "zdmap.yaml:2:8: `queue`: the environment variable `NOPE` is not set"
        );
        assert!(
            err("concurrency: many\n")
                .starts_with("zdmap.yaml:1:14: `concurrency`: invalid value 'many'")
        );
        assert!(err("colour: red\n").contains("long names of `zdmap serve --help`'s flags"));
        assert!(err("listen: [a, b]\n").contains("takes one value, not a list"));
        assert!(err("- listen\n").contains("must be a mapping"));
    }

    #[test]
    fn destinations_and_sources_are_read_beside_the_flags() {
        let file = load_text(
            "listen: 0.0.0.0:8080\ndestinations:\n  eu: {subdomain: acme-eu}\n  us: {}\n\
             sources:\n  - {write_key_env: HOST, destinations: [us]}\nset: {subdomain: acme}\n",
        )
        .unwrap();
        assert_eq!(
            file.flags,
            [("listen".to_owned(), vec!["0.0.0.0:8080".to_owned()])]
        );
        assert_eq!(file.set, ["subdomain=acme"]);
        let names: Vec<&str> = file.destinations.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["eu", "us"]);
        assert_eq!(file.sources[0].destinations, ["us"]);
        assert_eq!(file.sources[0].key.expose(), "nats.internal");

        let err = |text: &str| load_text(text).err().map(|e| e.0).unwrap_or_default();
        assert_eq!(
            err("destination:\n  eu: {}\n"),
            "zdmap.yaml:1:1: unknown key `destination`; did you mean `destinations`?"
        );
        assert_eq!(
            err("listen: 0.0.0.0:8080\ndestinations:\n  eu:\n    filter: type =\n"),
            "zdmap.yaml:4:13: `destinations.eu.filter`: \"type =\": column 7: expected a value (a field, string, number, true, false or null) after `=`, found the end"
        );
    }
}
