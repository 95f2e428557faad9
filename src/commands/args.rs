//! Flags several commands share, and the command-line names of the library's choices: the
//! library's types know nothing of clap, so what the command line parses is turned into them
//! here.

use crate::deliver::TargetOverride;
use crate::emulator::LostAnswer;
use crate::mapping::config::{Config, Diagnostics, Format, Source};
use crate::serve::logs::LogFormat;
use clap::ValueEnum;
use clap::builder::PossibleValue;
use std::path::PathBuf;

/// Options every command that loads the mappings takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// The mappings directory: action files and destination.yaml.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "mappings",
        env = "ZDMAP_MAPPINGS"
    )]
    pub mappings: PathBuf,
    /// Override a setting of destination.yaml, e.g. `--set subdomain=acme` (repeatable; also
    /// ZDMAP_SET, comma-separated, whose settings --set overrides one by one).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The settings of `serve`'s config file, below ZDMAP_SET and --set.
    #[arg(skip)]
    pub file_set: Vec<String>,
}

/// The variable whose comma-separated `NAME=VALUE`s apply before `--set`.
pub(crate) const SET_VAR: &str = "ZDMAP_SET";

impl ConfigArgs {
    /// The mappings and the settings, merged setting by setting: a config file's, then
    /// ZDMAP_SET's, then --set's (a later one of a name wins).
    pub fn source(&self) -> Source {
        let from_env = std::env::var(SET_VAR).unwrap_or_default();
        let from_env = from_env
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        Source {
            mappings: self.mappings.clone(),
            set: self
                .file_set
                .iter()
                .cloned()
                .chain(from_env)
                .chain(self.set.iter().cloned())
                .collect(),
            routing: Default::default(),
        }
    }

    /// Loads the mappings (see [`Source::load`]).
    pub fn load(&self) -> Result<Config, Diagnostics> {
        self.source().load()
    }
}

/// Where requests go: Zendesk itself (the default), an explicit URL, or the built-in emulator.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Send to this base URL instead of https://{subdomain}.zendesk.com (e.g. a local emulator).
    #[arg(long, value_name = "URL", env = "ZDMAP_ZENDESK_URL")]
    pub zendesk_url: Option<String>,
    /// Start the built-in Zendesk emulator in-process and send to it.
    #[arg(long, conflicts_with = "zendesk_url", env = "ZDMAP_EMULATOR")]
    pub emulator: bool,
}

impl TargetArgs {
    pub fn wanted(&self) -> TargetOverride {
        TargetOverride {
            zendesk_url: self.zendesk_url.clone(),
            emulator: self.emulator,
        }
    }
}

/// A choice named on the command line: its name and its help.
fn named(name: &'static str, help: &'static str) -> Option<PossibleValue> {
    Some(PossibleValue::new(name).help(help))
}

impl ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[LogFormat::Text, LogFormat::Json]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        match self {
            LogFormat::Text => named("text", "One line per event, for a person"),
            LogFormat::Json => named("json", "One JSON object per line, for a log collector"),
        }
    }
}

impl ValueEnum for Format {
    fn value_variants<'a>() -> &'a [Self] {
        &[Format::Text, Format::Json, Format::Github, Format::Pretty]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        match self {
            Format::Text => named("text", "`file:line:col: message`, one per line"),
            Format::Json => named("json", "One JSON object per problem, in a JSON array"),
            Format::Github => named(
                "github",
                "GitHub Actions annotations: `::error file=…,line=…,col=…::message`",
            ),
            Format::Pretty => named(
                "pretty",
                "Rendered snippets of the files, with the place marked",
            ),
        }
    }
}

impl ValueEnum for LostAnswer {
    fn value_variants<'a>() -> &'a [Self] {
        &[LostAnswer::Error500, LostAnswer::Drop, LostAnswer::Either]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        match self {
            LostAnswer::Error500 => named("500", "Answer 500 as if the write had failed"),
            LostAnswer::Drop => named("drop", "Close the connection without answering"),
            LostAnswer::Either => named("either", "One or the other, drawn per lost answer"),
        }
    }
}
