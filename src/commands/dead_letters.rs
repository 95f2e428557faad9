//! `zdmap dead-letters`: the dead letters of a `zdmap serve` data directory, or of its NATS
//! queue (`--queue nats://...`). Safe while the server runs: a replay moves letters back into
//! its queue, and it delivers them within a second.

use crate::base::text::escape_controls;
use crate::queue::journal::{JOURNAL_FILE, Journal, JournalOptions};
use crate::queue::nats::dead_letters::NatsDeadLetters;
use crate::queue::{
    DeadLetterStore, DeadLetters, QueueError, Selection, purge_recorded, replay_recorded,
};
use std::path::PathBuf;
use std::process::ExitCode;

/// Who the delivery log says replayed or discarded a letter.
const BY: &str = "cli";

#[derive(clap::Args, Debug)]
pub struct DeadLettersArgs {
    /// The data directory of `zdmap serve`.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "zdmap-data",
        env = "ZDMAP_DATA_DIR",
        global = true
    )]
    pub data_dir: PathBuf,
    /// The NATS queue of the servers (`nats://HOST:PORT[,HOST:PORT...]`), instead of a data
    /// directory. Credentials as for `zdmap serve` (ZDMAP_NATS_USER and ZDMAP_NATS_PASSWORD,
    /// ZDMAP_NATS_TOKEN or ZDMAP_NATS_CREDS).
    #[arg(long, value_name = "URLS", env = "ZDMAP_QUEUE", global = true)]
    pub queue: Option<String>,
    /// The destination whose dead letters to read, replay or purge (a replay goes back to it
    /// only): a name of the server config's `destinations:`; `default` when it names none.
    #[arg(long, value_name = "NAME", global = true)]
    pub destination: Option<String>,
    #[command(subcommand)]
    pub command: DeadLettersCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DeadLettersCommand {
    /// One line per dead letter: id, time, action/step, status, Zendesk's code and message.
    List {
        /// Print each dead letter as a JSON line instead (with the event).
        #[arg(long)]
        json: bool,
        /// Show at most this many.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: usize,
    },
    /// Print one dead letter with its event, as JSON.
    Show { id: u64 },
    /// Put dead letters back into the queue, each for the action that failed. A letter whose
    /// change is stale (a record it changes had a newer change applied since: a later ticket
    /// update, a membership removed after it was added) stays in the dead letters and is listed,
    /// unless --force.
    Replay {
        #[command(flatten)]
        which: Which,
        /// Replay stale changes too, applying them over the newer ones.
        #[arg(long)]
        force: bool,
    },
    /// Delete dead letters for good.
    Purge(Which),
}

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// These ids.
    #[arg(value_name = "ID")]
    pub ids: Vec<u64>,
    /// All of them.
    #[arg(long)]
    pub all: bool,
}

impl Which {
    fn selection(&self) -> Selection {
        if self.all {
            Selection::All
        } else {
            Selection::Ids(self.ids.clone())
        }
    }
}

/// Exit 0 on success, 1 on a failure (or an unknown id for `show`).
pub fn dead_letters(args: &DeadLettersArgs) -> ExitCode {
    let destination = (args.destination.as_deref()).unwrap_or(crate::queue::DEFAULT_DESTINATION);
    if !crate::queue::valid_destination_name(destination) {
        eprintln!(
            "error: --destination {destination:?} is no destination's name (a-z, 0-9, _ and -, starting with a letter)"
        );
        return ExitCode::from(2);
    }
    match args.queue.as_deref().filter(|q| !q.trim().is_empty()) {
        Some(queue) => super::block_on(async {
            let options =
                crate::queue::NatsOptions::for_a_command(queue).for_destination(destination);
            let outcome = match NatsDeadLetters::open(&options).await {
                Ok(mut store) => run(&mut store, &args.command, None).await,
                Err(e) => Err(e),
            };
            exit(outcome)
        }),
        None => exit(
            DeadLetterStore::open_for(&args.data_dir, destination).and_then(|mut store| {
                // Replays and purges are recorded in the server's delivery log, when it keeps one.
                let journal = args
                    .data_dir
                    .join(JOURNAL_FILE)
                    .exists()
                    .then(|| Journal::open(&args.data_dir, JournalOptions::default()).ok())
                    .flatten();
                let outcome = futures_util::FutureExt::now_or_never(run(
                    &mut store,
                    &args.command,
                    journal.as_deref(),
                ))
                .unwrap_or_else(|| Err(QueueError::Stopped("did not answer")));
                if let Some(journal) = journal {
                    journal.close();
                }
                outcome
            }),
        ),
    }
}

fn exit(outcome: Result<ExitCode, QueueError>) -> ExitCode {
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run<S: DeadLetters>(
    store: &mut S,
    command: &DeadLettersCommand,
    journal: Option<&Journal>,
) -> Result<ExitCode, QueueError> {
    match command {
        DeadLettersCommand::List { json, limit } => {
            let letters = store.list(0, *limit).await?;
            let mut out = super::Out::new();
            for l in &letters {
                let line = if *json {
                    serde_json::to_string(l).unwrap_or_default()
                } else {
                    // Zendesk's messages echo event data: each field shown escaped, so a
                    // letter is one line and its columns stay columns.
                    let status = l.letter.status.map_or("-".into(), |s| s.to_string());
                    format!(
                        "{}\t{}\t{}/{}\t{}\t{}\t{}",
                        l.id,
                        escape_controls(&l.letter.at),
                        escape_controls(l.letter.action.as_deref().unwrap_or("-")),
                        escape_controls(&l.letter.step),
                        status,
                        escape_controls(l.letter.code.as_deref().unwrap_or("-")),
                        escape_controls(&l.letter.message)
                    )
                };
                if !out.line(line) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            let total = store.count().await?;
            if !*json {
                eprintln!(
                    "{} dead letter(s) shown, {total} in {}",
                    letters.len(),
                    store.place()
                );
            }
        }
        DeadLettersCommand::Show { id } => match store.get(*id).await? {
            Some(l) => {
                super::Out::new().line(serde_json::to_string_pretty(&l).unwrap_or_default());
            }
            None => {
                eprintln!("no dead letter {id} in {}", store.place());
                return Ok(ExitCode::from(1));
            }
        },
        DeadLettersCommand::Replay { which, force } => {
            let replayed = replay_recorded(store, &which.selection(), *force, journal, BY).await?;
            let mut out = super::Out::new();
            for s in &replayed.stale {
                let secs = |ms: i64| crate::base::time::rfc3339_from_unix_secs(ms.div_euclid(1000));
                out.line(format!(
                    "{}\t{}\tstale: {} changed at {}, a newer change (at {}) was applied{}",
                    s.id,
                    escape_controls(s.action.as_deref().unwrap_or("-")),
                    escape_controls(&s.change.entity),
                    secs(s.change.at_ms),
                    secs(s.last_ms),
                    if *force {
                        "; replayed anyway (--force)"
                    } else {
                        "; kept"
                    }
                ));
            }
            eprintln!(
                "{} dead letter(s) moved back to the queue; `zdmap serve` on {} delivers them",
                replayed.moved,
                store.place()
            );
            if !replayed.stale.is_empty() && !*force {
                eprintln!(
                    "{} stale dead letter(s) kept: replaying them would apply older changes over \
                     newer ones (--force replays them anyway)",
                    replayed.stale.len()
                );
            }
        }
        DeadLettersCommand::Purge(which) => {
            let n = purge_recorded(store, &which.selection(), journal, BY).await?;
            eprintln!("{n} dead letter(s) deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
