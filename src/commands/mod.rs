//! The CLI: argument definitions and one library function per command.
//!
//! `main.rs` calls [`main`]; each command lives in its own module and returns an exit code.
//! Commands that only read mappings (validate, preview, match, test, schema) are in
//! [`inspect`].

mod args;
pub mod auth;
mod config_file;
pub mod dead_letters;
mod destinations;
pub mod emulator;
pub mod events;
pub mod fields;
mod generate;
mod healthcheck;
pub mod init;
pub mod inspect;
pub mod junit;
mod reconfigure;
pub mod send;
pub mod serve;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// zdmap: a Zendesk destination for customer-data pipelines.
///
/// Segment-spec events (identify, track, group) go in; Zendesk Support API calls come out, as the
/// YAML files of the mappings directory say.
#[derive(Parser, Debug)]
#[command(name = "zdmap", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the default mappings, their test cases and the JSON Schemas into a new mappings
    /// directory (default `mappings`); refuses to overwrite without --force.
    Init(init::InitArgs),
    /// Check the mappings: schema, triggers, JSONPaths, templates, references. Exit 1 when invalid
    /// (or, with --deny-warnings, when there are warnings).
    Validate(inspect::ValidateArgs),
    /// Show what events would do (actions matched, requests in order, errors), without any network.
    Preview(inspect::PreviewArgs),
    /// Evaluate a trigger against events: prints `true` or `false` per event.
    Match(inspect::MatchArgs),
    /// Run the mapping test cases of mappings/tests/ (or the given files).
    Test(inspect::TestArgs),
    /// Check the account's custom user and organization fields against the keys the mappings
    /// send (`fields check`), and create the missing ones (`--create`).
    Fields(fields::FieldsArgs),
    /// Print or write the JSON Schemas of the config files and events.
    Schema(inspect::SchemaArgs),
    /// Deliver events to Zendesk (or the built-in emulator) with retries, a request budget,
    /// lookups and dead letters. Exit 0 when all were delivered, 2 when some were dead-lettered,
    /// 1 on a fatal error, 64 on a usage error, 77 when a person must run `zdmap auth login`,
    /// 130 (SIGINT) or 143 (SIGTERM) when a signal stopped it with events left: the requests
    /// under way finish (`--stop-grace`), the summary is printed, and the events left are in
    /// the dead-letter file as not attempted (send it again to finish); a second signal ends
    /// it at once. `--destination NAME` delivers as `serve` would to that destination of its
    /// config file.
    Send(send::SendArgs),
    /// Run the built-in Zendesk emulator: a stateful local Zendesk Support API for tests and
    /// for developing mappings (inspect it at /__emulator/state).
    Emulator(emulator::EmulatorArgs),
    /// Run the ingest server: a Segment-compatible HTTP API whose events are stored durably
    /// (SQLite) and delivered to Zendesk; /healthz, /readyz, /metrics; SIGHUP reloads.
    Serve(Box<serve::ServeArgs>),
    /// List, show, replay or purge the dead letters of a `zdmap serve` data directory.
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Read the delivery log of a running `zdmap serve` through its admin API: `show
    /// MESSAGE_ID` (one event's record: accepted, actions, requests, waits, end), `tail`
    /// (follow new entries).
    Events(events::EventsArgs),
    /// Connect to Zendesk with OAuth: `login` (approve once in a browser; the tokens are kept
    /// and refreshed), `status` (the credentials in use, the token's scopes and expiry),
    /// `check` (exit 1 when the scopes miss a request of the mappings).
    Auth(auth::AuthArgs),
    /// Ask a running server's /healthz: exit 0 when it answers 200, 1 otherwise (a container's
    /// HEALTHCHECK, where there is no curl).
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Print the completion script of a shell (bash, zsh, fish, elvish, powershell).
    Completions(generate::CompletionsArgs),
    /// Print the man page (roff), or write a page per command into a directory.
    Man(generate::ManArgs),
}

/// Writes a line to standard error; a reader that has gone (`2>&1 | head`) is no error.
pub fn say(text: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// The exit code of a command line that does not parse.
pub const EXIT_USAGE: u8 = 64;

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    // Usage errors exit 64 (sysexits' EX_USAGE), apart from `send`'s 2 (some dead-lettered).
    let cli = match parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(Unparsed::Clap(e)) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(Unparsed::File(e)) => {
            say(format!("error: {e}"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Init(a) => init::init(&a),
        Command::Validate(a) => inspect::validate(&a),
        Command::Preview(a) => inspect::preview(&a),
        Command::Match(a) => inspect::match_trigger(&a),
        Command::Test(a) => inspect::test(&a),
        Command::Schema(a) => inspect::schema(&a),
        Command::Fields(a) => fields::fields(&a),
        Command::Send(a) => send::send(&a),
        Command::Emulator(a) => emulator::run(a),
        Command::Serve(a) => serve::serve(&a),
        Command::DeadLetters(a) => dead_letters::dead_letters(&a),
        Command::Events(a) => events::events(&a),
        Command::Auth(a) => auth::auth(&a),
        Command::Healthcheck(a) => healthcheck::healthcheck(&a),
        Command::Completions(a) => generate::completions(&a),
        Command::Man(a) => generate::man(&a),
    }
}

/// Why the command line gave no command.
enum Unparsed {
    Clap(clap::Error),
    File(config_file::FileError),
}

/// Parses `args`; for `serve`, with the values of its config file as the defaults of its flags
/// (see [`config_file`]); for `send --destination`, with that destination of the file applied
/// (see [`send::choose_destination`]).
fn parse(args: Vec<OsString>) -> Result<Cli, Unparsed> {
    let mut command = Cli::command();
    let matches = command
        .try_get_matches_from_mut(args.iter())
        .map_err(Unparsed::Clap)?;
    if let Some(("send", send_matches)) = matches.subcommand() {
        let mut cli = Cli::from_arg_matches(&matches).map_err(Unparsed::Clap)?;
        if let (Command::Send(send_args), Some(serve_command)) =
            (&mut cli.command, command.find_subcommand("serve"))
        {
            send::choose_destination(send_args, send_matches, serve_command)
                .map_err(Unparsed::File)?;
        }
        return Ok(cli);
    }
    let Some(("serve", serve)) = matches.subcommand() else {
        return Cli::from_arg_matches(&matches).map_err(Unparsed::Clap);
    };
    let explicit = serve.get_one::<PathBuf>(config_file::CONFIG_ARG);
    let Some(path) = config_file::chosen(explicit.map(PathBuf::as_path)) else {
        return Cli::from_arg_matches(&matches).map_err(Unparsed::Clap);
    };
    let Some(serve_command) = command.find_subcommand("serve") else {
        return Cli::from_arg_matches(&matches).map_err(Unparsed::Clap);
    };
    let file = config_file::load(&path, serve_command, &|name| std::env::var(name).ok())
        .map_err(Unparsed::File)?;
    let matches = config_file::apply(Cli::command(), &file)
        .try_get_matches_from(args.iter())
        .map_err(Unparsed::Clap)?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(Unparsed::Clap)?;
    if let (Command::Serve(serve_args), Some(("serve", serve))) =
        (&mut cli.command, matches.subcommand())
    {
        serve_args.config.file_set = file.set;
        serve_args.destinations = file.destinations;
        serve_args.sources = file.sources;
        // The file's choice of target gives way to the other one given above it.
        use clap::parser::ValueSource::DefaultValue;
        let from_file = |id: &str| serve.value_source(id) == Some(DefaultValue);
        let above_file = |id: &str| serve.value_source(id).is_some_and(|s| s != DefaultValue);
        if from_file("emulator") && above_file("zendesk_url") {
            serve_args.target.emulator = false;
        }
        if from_file("zendesk_url") && above_file("emulator") && serve_args.target.emulator {
            serve_args.target.zendesk_url = None;
        }
    }
    Ok(cli)
}

/// The serve config file at `path`, read again (a reload), its `${VAR}`s from the environment.
fn read_serve_file(
    path: &std::path::Path,
) -> Result<config_file::ConfigFile, config_file::FileError> {
    let command = Cli::command();
    let serve = command
        .find_subcommand("serve")
        .ok_or_else(|| config_file::FileError("no serve command".into()))?;
    config_file::load(path, serve, &|name| std::env::var(name).ok())
}

/// An input argument: a file, or `-` (or nothing) for standard input; says why on standard
/// error when it cannot be opened.
pub fn open_input(path: &Option<PathBuf>) -> Result<Box<dyn std::io::Read + Send>, ExitCode> {
    match path {
        None => Ok(Box::new(std::io::stdin())),
        Some(p) if p.as_os_str() == "-" => Ok(Box::new(std::io::stdin())),
        Some(p) => std::fs::File::open(p)
            .map(|f| Box::new(f) as Box<dyn std::io::Read + Send>)
            .map_err(|e| {
                eprintln!("error: {}: {e}", p.display());
                ExitCode::from(1)
            }),
    }
}

/// Loads the mappings, saying on standard error why they do not load.
pub fn load_config(args: &args::ConfigArgs) -> Result<crate::mapping::config::Config, ExitCode> {
    args.load().map_err(|diags| {
        if args.mappings.is_dir() {
            eprintln!("{}", invalid_mappings(&diags));
        } else {
            eprintln!("{diags}");
        }
        ExitCode::from(1)
    })
}

fn invalid_mappings(diags: &crate::mapping::config::Diagnostics) -> String {
    format!("{diags}\nthe mappings are not valid; run `zdmap validate` for details")
}

/// Standard output for listings. A reader that has gone (`| head`) ends the listing quietly.
pub struct Out {
    out: std::io::StdoutLock<'static>,
    closed: bool,
}

impl Out {
    pub fn new() -> Out {
        Out {
            out: std::io::stdout().lock(),
            closed: false,
        }
    }

    /// Writes one line; `false` once the reader has gone (nothing more is written).
    pub fn line(&mut self, text: impl std::fmt::Display) -> bool {
        use std::io::Write as _;
        if !self.closed && writeln!(self.out, "{text}").is_err() {
            self.closed = true;
        }
        !self.closed
    }
}

impl Default for Out {
    fn default() -> Self {
        Out::new()
    }
}

/// Runs a command's async body on a multi-threaded runtime; exit 1 when none can start.
pub fn block_on(body: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(body),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// Where `zdmap send --emulator` leaves the emulator's final state.
pub const EMULATOR_STATE_FILE: &str = "zdmap-emulator-state.json";

/// Loads the mappings and sets up delivery to the chosen target for `zdmap send`, saying why on
/// standard error when it cannot. The built-in emulator leaves its final state in
/// [`EMULATOR_STATE_FILE`], so the result of a run can be seen after it.
pub async fn load_and_connect(
    config: &args::ConfigArgs,
    target: &args::TargetArgs,
    token_store: Option<&std::path::Path>,
    credential_names: &crate::deliver::CredentialNames,
) -> Result<crate::deliver::setup::Destination, ExitCode> {
    let options = crate::deliver::setup::ConnectOptions {
        emulator_final_state: Some(EMULATOR_STATE_FILE.into()),
        token_store: token_store.map(|p| {
            std::sync::Arc::new(crate::deliver::auth::FileStore::new(p))
                as std::sync::Arc<dyn crate::deliver::auth::ChainStore>
        }),
        credential_names: credential_names.clone(),
        ..Default::default()
    };
    try_load_and_connect(config, target, options)
        .await
        .map_err(|problem| {
            eprintln!("{problem}");
            ExitCode::from(1)
        })
}

/// Loads the mappings and sets up delivery to the chosen target, or says why it cannot.
pub async fn try_load_and_connect(
    config: &args::ConfigArgs,
    target: &args::TargetArgs,
    options: crate::deliver::setup::ConnectOptions,
) -> Result<crate::deliver::setup::Destination, String> {
    let config = config.load().map_err(|diags| invalid_mappings(&diags))?;
    crate::deliver::setup::connect(std::sync::Arc::new(config), &target.wanted(), options)
        .await
        .map_err(|e| format!("error: {e}"))
}
