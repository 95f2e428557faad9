//! `zdmap send`: deliver events to Zendesk (or the emulator), with a summary at the end.
//!
//! `--destination NAME` delivers as `zdmap serve` would to that destination of its config file
//! (see [`choose_destination`]).

use super::args::{ConfigArgs, TargetArgs};
use super::config_file::{self, FileError};
use super::destinations::{DestinationSpec, destination_args, names_of};
use crate::deliver::CredentialNames;
use crate::deliver::dispatch::{DispatchOptions, RecordWait};
use crate::deliver::run::{RunStop, run_until};
use crate::deliver::{DeadLetterWriter, Progress};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// With --destination: the config file of `zdmap serve` that names the destination.
    /// Default: zdmap.yaml in the working directory, when there is one. Without
    /// --destination it is not read.
    #[arg(
        id = "config_file",
        long = "config",
        value_name = "FILE",
        env = "ZDMAP_CONFIG"
    )]
    pub config_file: Option<PathBuf>,
    /// Deliver as `zdmap serve` would to this destination of the config file's
    /// `destinations:`: its mappings, settings, subdomain, target, credential variables and
    /// token store, over the file's top-level keys and the environment (ZDMAP_MAPPINGS,
    /// ZDMAP_SET, ZDMAP_ZENDESK_URL, ZDMAP_TOKEN_STORE...). What is given on the command line
    /// (--mappings, --set, --zendesk-url, --emulator, --token-store) wins over the
    /// destination. Delivery options (--concurrency, --retry-for...) stay send's own.
    #[arg(long, value_name = "NAME", env = "ZDMAP_DESTINATION")]
    pub destination: Option<String>,
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Events: a JSON object, a JSON array or NDJSON (a dead-letter file is fine too); `-` or
    /// nothing reads standard input. Streamed: memory stays flat on any size.
    pub events: Option<PathBuf>,
    /// Where events that could not be delivered go (NDJSON; give it back to `zdmap send` to replay).
    #[arg(long, value_name = "FILE", default_value = "zdmap-dead-letters.ndjson")]
    pub dead_letter: PathBuf,
    /// How many events are delivered at once. The events of one user (or one organization)
    /// always go in order; a user that must wait (a retry, a rate limit, a record that does
    /// not exist yet) is set aside while the others go on.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,
    /// How long an event keeps being tried while Zendesk fails (server errors, timeouts, 429s)
    /// before it is dead-lettered, e.g. `90s`, `30m`, `1h`.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = super::serve::parse_duration)]
    pub retry_for: Duration,
    /// An event that needs a record that does not exist yet (a track before its user's
    /// identify) waits for it: until another event creates it, or until this long after the
    /// input has ended; then it is dead-lettered with the lookup that failed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::serve::parse_duration)]
    pub wait_for_records: Duration,
    /// Apply changes even where a record they change (a user, an organization, a ticket, a
    /// membership: the action's `entities`) already had a newer change applied in this run.
    /// Without it such a stale change (an older dead letter replayed after newer events) is
    /// skipped, logged and counted in the summary.
    #[arg(long)]
    pub force: bool,
    /// How long an item of a bulk request waits for others to join it (steps with a `batch`
    /// form: users, organizations, memberships upserted up to 100 per request). Bulk
    /// requests also go out when full, or when the input has ended and nothing else runs.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = super::serve::parse_duration)]
    pub batch_window: Duration,
    /// Send every request on its own: no bulk requests, no jobs.
    #[arg(long)]
    pub no_batch: bool,
    /// After SIGINT or SIGTERM, how long the requests under way may take to finish before
    /// what is left is written to the dead-letter file as not attempted.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = super::serve::parse_duration)]
    pub stop_grace: Duration,
    /// Also print the summary as JSON on standard output.
    #[arg(long)]
    pub json: bool,
    /// Never show the progress bar (it shows only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// A token store from `zdmap auth login`: its OAuth refresh-token chain is used (and kept
    /// refreshed) instead of the credentials of the environment.
    #[arg(long, value_name = "FILE", env = "ZDMAP_TOKEN_STORE")]
    pub token_store: Option<PathBuf>,
    /// The variables the credentials are read from, in place of those of destination.yaml
    /// (a destination's `credentials`).
    #[arg(skip)]
    pub credential_names: CredentialNames,
}

/// Applies the destination `args.destination` of the config file to `args`: as `zdmap serve`
/// runs it (the file's top-level `mappings`, `set`, target and `token_store` under the
/// environment, then the destination's own), with what `matches` shows was given on the
/// command line on top. `serve` is the serve command, whose flags the file's keys are.
pub(crate) fn choose_destination(
    args: &mut SendArgs,
    matches: &clap::ArgMatches,
    serve: &clap::Command,
) -> Result<(), FileError> {
    let Some(name) = args.destination.clone() else {
        return Ok(());
    };
    let Some(path) = config_file::chosen(args.config_file.as_deref()) else {
        return Err(FileError(format!(
            "--destination {name}: no config file names it: give --config FILE (or ZDMAP_CONFIG), or run where zdmap.yaml is"
        )));
    };
    let file = config_file::load(&path, serve, &|var| std::env::var(var).ok())?;
    let shown = path.display();
    let spec = find(&file.destinations, &name)
        .map_err(|problem| FileError(format!("{shown}: {problem}")))?;
    let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let above_file = |id: &str| {
        matches
            .value_source(id)
            .is_some_and(|s| s != clap::parser::ValueSource::DefaultValue)
    };
    let one = |id: &str| file.flag(id).and_then(|v| v.first()).cloned();

    let mut base = args.config.clone();
    if !above_file("mappings")
        && let Some(dir) = one("mappings")
    {
        base.mappings = PathBuf::from(dir);
    }
    base.file_set = file.set.clone();
    base.set = Vec::new();
    let mut base_target = args.target.clone();
    if !above_file("zendesk_url") && !above_file("emulator") {
        base_target = TargetArgs {
            zendesk_url: one("zendesk_url"),
            emulator: one("emulator").as_deref() == Some("true"),
        };
    }
    let (mut config, mut target) = destination_args(spec, &base, &base_target);
    if given("mappings") {
        config.mappings = args.config.mappings.clone();
    }
    config.set.extend(args.config.set.iter().cloned());
    if given("zendesk_url") || given("emulator") {
        target = args.target.clone();
    }
    args.token_store = if given("token_store") {
        args.token_store.clone()
    } else {
        spec.token_store
            .clone()
            .or_else(|| args.token_store.clone())
            .or_else(|| one("token_store").map(PathBuf::from))
    };
    args.config = config;
    args.target = target;
    args.credential_names = spec.credentials.clone();
    Ok(())
}

/// The destination called `name`, or why there is none (naming those there are).
fn find<'a>(specs: &'a [DestinationSpec], name: &str) -> Result<&'a DestinationSpec, String> {
    if specs.is_empty() {
        return Err(format!(
            "--destination {name}: the file has no `destinations:`"
        ));
    }
    specs.iter().find(|s| s.name == name).ok_or_else(|| {
        let hint =
            crate::mapping::diagnostic::did_you_mean(name, specs.iter().map(|s| s.name.as_str()));
        format!(
            "--destination {name}: no such destination{hint} (the destinations: {})",
            names_of(specs)
        )
    })
}

/// Exit 0 when everything was delivered, 2 when some events were dead-lettered, 1 on a fatal
/// error, 77 when a person must run `zdmap auth login` again (the OAuth chain is spent), 130
/// (SIGINT) or 143 (SIGTERM) when a signal stopped the run with events left: they are in the
/// dead-letter file as not attempted. A second signal ends the process at once, with the
/// same code.
pub fn send(args: &SendArgs) -> ExitCode {
    crate::serve::logs::init_at(crate::serve::logs::LogFormat::Text, "warn");
    super::block_on(send_async(args))
}

async fn send_async(args: &SendArgs) -> ExitCode {
    let destination = match super::load_and_connect(
        &args.config,
        &args.target,
        args.token_store.as_deref(),
        &args.credential_names,
    )
    .await
    {
        Ok(d) => d,
        Err(code) => return code,
    };
    if let Some(emulator) = &destination.emulator {
        super::say(format!("emulator: listening on {}", emulator.url()));
    }
    let input = match super::open_input(&args.events) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let existed = args.dead_letter.exists();
    let writer = match DeadLetterWriter::open(&args.dead_letter) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            super::say(format!("error: {e}"));
            return ExitCode::from(1);
        }
    };
    let progress = Progress::with_visibility(
        destination.stats.clone(),
        !args.no_progress && std::io::stderr().is_terminal(),
    );
    let options = DispatchOptions {
        concurrency: args.concurrency,
        retry_for: args.retry_for,
        wait_for_records: RecordWait::AfterInput(args.wait_for_records),
        batch_window: (!args.no_batch).then_some(args.batch_window),
        drain: args.stop_grace,
        ..DispatchOptions::default()
    };
    let stop = RunStop::new();
    let caught = Arc::new(AtomicU8::new(0));
    stop_on_signals(&stop, &caught, args);
    let result = run_until(
        Arc::new(destination.executor.with_force(args.force)),
        input,
        writer,
        destination.stats.clone(),
        options,
        &stop,
    )
    .await;
    progress.finish();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            super::say(format!("error: {e}"));
            return ExitCode::from(1);
        }
    };
    if report.dead_letters == 0 && !existed {
        let _ = std::fs::remove_file(&args.dead_letter);
    }
    let snapshot = destination.stats.snapshot();
    super::say(snapshot.summary());
    if report.dead_letters > 0 {
        super::say(format!(
            "{} dead letter(s) written to {}; fix the cause, then run `zdmap send {}` to replay them",
            report.dead_letters,
            args.dead_letter.display(),
            args.dead_letter.display()
        ));
    }
    if let Some(emulator) = &destination.emulator {
        super::say(format!(
            "emulator state: {}",
            emulator_counts(&emulator.state())
        ));
    }
    if args.json {
        super::Out::new().line(serde_json::to_string(&snapshot).unwrap_or_default());
    }
    if let Some(fatal) = report.fatal {
        super::say(format!("error: {fatal}"));
        let login_needed = destination
            .executor
            .transport()
            .client()
            .authorizer()
            .stats()
            .login_needed
            .load(std::sync::atomic::Ordering::Relaxed);
        if login_needed == 1 {
            return ExitCode::from(super::auth::EXIT_LOGIN_NEEDED);
        }
        return ExitCode::from(1);
    }
    let signal = caught.load(Ordering::Relaxed);
    if signal != 0 && snapshot.not_attempted > 0 {
        return ExitCode::from(EXIT_SIGNALLED + signal);
    }
    if report.dead_letters > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// A run stopped by a signal exits with this plus the signal's number, as a shell reports a
/// command that a signal ended (130 for SIGINT, 143 for SIGTERM).
const EXIT_SIGNALLED: u8 = 128;

/// The first SIGINT or SIGTERM stops the run (see [`crate::deliver::run`]), its number kept in
/// `caught`; a second ends the process at once. The handlers are in place when this returns.
fn stop_on_signals(stop: &RunStop, caught: &Arc<AtomicU8>, args: &SendArgs) {
    let stop = stop.clone();
    let caught = caught.clone();
    let grace = humantime_secs(args.stop_grace);
    let file = args.dead_letter.display().to_string();
    let on_signal = move |name: &str, number: u8| {
        if caught.load(Ordering::Relaxed) != 0 {
            super::say(format!(
                "{name} again: stopping at once; what was not written is not in {file}"
            ));
            std::process::exit(i32::from(EXIT_SIGNALLED + number));
        }
        caught.store(number, Ordering::Relaxed);
        super::say(format!(
            "{name}: no more events are taken; the requests under way get {grace} to finish, \
             then what is left goes to {file} as not attempted (send it again to finish); \
             a second signal stops at once"
        ));
        stop.stop(format!("zdmap send was stopped by {name}"));
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            super::say(
                "warning: the signal handlers could not be set: a signal ends the run at once",
            );
            return;
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = int.recv() => on_signal("SIGINT", 2),
                    Some(()) = term.recv() => on_signal("SIGTERM", 15),
                    else => return,
                }
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            on_signal("Ctrl-C", 2);
        }
    });
}

/// `5 s`, `1.5 s`.
fn humantime_secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// "3 users, 1 organizations, ..." from the emulator's state.
fn emulator_counts(state: &serde_json::Value) -> String {
    let Some(map) = state.as_object() else {
        return "unavailable".into();
    };
    map.iter()
        .filter_map(|(k, v)| v.as_array().map(|a| format!("{} {k}", a.len())))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::super::{Command, Unparsed, parse};
    use super::*;

    /// The send arguments of `zdmap send ARGS`, the config file applied.
    fn send_args(args: &[&str]) -> Result<SendArgs, String> {
        let line = ["zdmap", "send"]
            .iter()
            .chain(args)
            .map(Into::into)
            .collect();
        match parse(line) {
            Ok(cli) => match cli.command {
                Command::Send(send) => Ok(send),
                other => Err(format!("not send: {other:?}")),
            },
            Err(Unparsed::Clap(e)) => Err(e.to_string()),
            Err(Unparsed::File(e)) => Err(e.0),
        }
    }

    #[test]
    fn the_destination_comes_between_the_file_and_the_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("serve.yaml");
        std::fs::write(
            &file,
            "mappings: /srv/mappings\nzendesk_url: http://127.0.0.1:9000\nset: {integration_name: Z}\n\
             destinations:\n  eu:\n    subdomain: acme-eu\n    settings: {requests_per_minute: 5}\n    \
             credentials: {api_token_env: EU_API_TOKEN}\n    token_store: /srv/eu-tokens.json\n  \
             lab: {mappings: /srv/lab, emulator: true}\n",
        )
        .expect("write");
        let config = file.display().to_string();

        let eu = send_args(&["--config", &config, "--destination", "eu"]).expect("eu");
        assert_eq!(
            eu.config.mappings,
            PathBuf::from("/srv/mappings"),
            "the file's"
        );
        assert_eq!(eu.config.file_set, ["integration_name=Z"]);
        assert_eq!(
            eu.config.set,
            ["requests_per_minute=5", "subdomain=acme-eu"]
        );
        assert_eq!(
            eu.target.zendesk_url.as_deref(),
            Some("http://127.0.0.1:9000"),
            "the file's"
        );
        assert_eq!(
            eu.credential_names.api_token.as_deref(),
            Some("EU_API_TOKEN")
        );
        assert_eq!(eu.token_store, Some(PathBuf::from("/srv/eu-tokens.json")));

        let lab = send_args(&["--config", &config, "--destination", "lab"]).expect("lab");
        assert_eq!(lab.config.mappings, PathBuf::from("/srv/lab"));
        assert!(lab.target.emulator && lab.target.zendesk_url.is_none());
        assert_eq!(lab.credential_names, CredentialNames::default());

        let given = send_args(&[
            "--config",
            &config,
            "--destination",
            "eu",
            "--mappings",
            "/here",
            "--set",
            "subdomain=other",
            "--emulator",
            "--token-store",
            "/here/tokens.json",
        ])
        .expect("eu");
        assert_eq!(given.config.mappings, PathBuf::from("/here"));
        assert_eq!(
            given.config.set.last().map(String::as_str),
            Some("subdomain=other")
        );
        assert!(given.target.emulator && given.target.zendesk_url.is_none());
        assert_eq!(given.token_store, Some(PathBuf::from("/here/tokens.json")));

        let plain = send_args(&["--config", &config]).expect("no destination");
        assert_eq!(
            plain.config.mappings,
            PathBuf::from("mappings"),
            "no file read"
        );
        assert!(plain.config.file_set.is_empty() && plain.target.zendesk_url.is_none());

        let unknown = send_args(&["--config", &config, "--destination", "staging"]);
        assert_eq!(
            unknown.err().as_deref(),
            Some(
                format!(
                    "{config}: --destination staging: no such destination (the destinations: eu, lab)"
                )
                .as_str()
            )
        );
    }
}
