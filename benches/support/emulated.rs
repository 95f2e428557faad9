//! The built-in emulator with no rate limit, and delivery set up to it with the shipped mappings.
#![allow(dead_code)] // each bench uses part of it

use std::path::Path;
use std::sync::Arc;
use zdmap::deliver::TargetOverride;
use zdmap::deliver::setup::{ConnectOptions, Destination, connect};
use zdmap::emulator::{Emulator, EmulatorOptions};
use zdmap::mapping::config::{Config, Routing, Source};
use zdmap::serve::ingest::WriteKeys;
use zdmap::serve::{IngestOptions, Outlet, ServeOptions, WorkerOptions};

/// The setting that lifts zdmap's own request budget.
pub const UNLIMITED: &str = "requests_per_minute=0";

/// A fresh emulator and a destination delivering to it.
pub async fn emulated_destination() -> (Emulator, Destination) {
    emulated_destination_with(&Batching::default()).await
}

/// How a measured run batches, and the account it meets.
#[derive(Clone, Debug, Default)]
pub struct Batching {
    /// The batch window (`None`: every request single, as `--no-batch`).
    pub window: Option<std::time::Duration>,
    /// Bulk user imports on at the emulator.
    pub bulk_import: bool,
    /// How long the emulator's jobs take.
    pub job_delay_ms: u64,
    /// The mappings delivered with (`None`: the shipped `mappings/`).
    pub mappings: Option<std::path::PathBuf>,
}

/// A fresh emulator (with bulk user imports and job delay as `batching` says) and a destination
/// delivering to it.
pub async fn emulated_destination_with(batching: &Batching) -> (Emulator, Destination) {
    let emu = Emulator::start(EmulatorOptions {
        bulk_import: batching.bulk_import,
        ..EmulatorOptions::default()
    })
    .await
    .expect("emulator");
    emu.configure(|k| k.job_delay_ms = batching.job_delay_ms);
    let mappings = batching
        .mappings
        .as_deref()
        .unwrap_or(Path::new("mappings"));
    let dest = destination_with_mappings(&emu, mappings).await;
    (emu, dest)
}

/// Delivery with the shipped mappings, unbudgeted, to `emu`.
pub async fn destination_to(emu: &Emulator) -> Destination {
    destination_with_mappings(emu, Path::new("mappings")).await
}

/// Delivery with the mappings of `mappings`, unbudgeted, to `emu`.
pub async fn destination_with_mappings(emu: &Emulator, mappings: &Path) -> Destination {
    let config = Config::load(mappings, &[UNLIMITED.to_owned()]).expect("mappings");
    let target = TargetOverride {
        zendesk_url: Some(emu.url()),
        emulator: false,
    };
    connect(Arc::new(config), &target, ConnectOptions::default())
        .await
        .expect("connect")
}

/// A server on a free loopback port with its SQLite queue in `data_dir`, taking `write_keys`,
/// delivering with the shipped mappings, unbudgeted, its workers as by default; no file watch,
/// no delivery log (set `journal` for one).
pub fn serve_options(data_dir: &Path, write_keys: WriteKeys) -> ServeOptions {
    ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: data_dir.to_path_buf(),
        nats: None,
        write_keys,
        workers: WorkerOptions::default(),
        config: Source {
            mappings: "mappings".into(),
            set: vec![UNLIMITED.to_owned()],
            routing: Routing::default(),
        },
        watch: false,
        log_events: false,
        shutdown_timeout: std::time::Duration::from_secs(30),
        ingest: IngestOptions::default(),
        admin: None,
        journal: None,
    }
}

/// The destination `name` of a server with several ([`zdmap::serve::Server::start_outlets`]):
/// delivery with the shipped mappings, unbudgeted, to `emu`, its workers as `workers` says.
pub async fn outlet(name: &str, emu: &Emulator, workers: WorkerOptions) -> Outlet {
    Outlet {
        name: name.to_owned(),
        config: Source {
            mappings: "mappings".into(),
            set: vec![UNLIMITED.to_owned()],
            routing: Routing {
                destination: Some(name.to_owned()),
                filter: None,
            },
        },
        workers,
        destination: destination_to(emu).await,
    }
}

/// What a measured `zdmap send` run did.
pub struct Delivered {
    pub seconds: f64,
    pub stats: zdmap::deliver::StatsSnapshot,
    pub dead_letters: Vec<zdmap::deliver::DeadLetter>,
}

/// `zdmap send` of `setup` (not measured: the records the events refer to), then of `events`
/// (measured), NDJSON both, to a fresh emulator.
pub async fn deliver(setup: &[u8], events: &[u8]) -> Delivered {
    deliver_with(setup, events, &Batching::default()).await
}

/// [`deliver`], batching as `batching` says.
pub async fn deliver_with(setup: &[u8], events: &[u8], batching: &Batching) -> Delivered {
    use zdmap::deliver::dispatch::{DispatchOptions, RecordWait};
    use zdmap::deliver::{DeadLetter, DeadLetterWriter, Stats, run::run};
    let (emu, dest) = emulated_destination_with(batching).await;
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("dead.ndjson");
    let writer = Arc::new(DeadLetterWriter::open(&path).expect("dead letters"));
    let options = DispatchOptions {
        concurrency: 8,
        wait_for_records: RecordWait::AfterInput(std::time::Duration::from_secs(30)),
        batch_window: batching.window,
        ..DispatchOptions::default()
    };
    let run_on = |input: &[u8], stats: Arc<Stats>| {
        run(
            dest.executor.clone(),
            std::io::Cursor::new(input.to_vec()),
            writer.clone(),
            stats,
            options.clone(),
        )
    };
    run_on(setup, Arc::new(Stats::new())).await.expect("setup");
    let start = std::time::Instant::now();
    run_on(events, dest.stats.clone()).await.expect("run");
    let seconds = start.elapsed().as_secs_f64();
    let dead_letters = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| DeadLetter::parse(&serde_json::from_str(l).ok()?))
        .collect();
    let stats = dest.stats.snapshot();
    emu.shutdown().await;
    Delivered {
        seconds,
        stats,
        dead_letters,
    }
}
