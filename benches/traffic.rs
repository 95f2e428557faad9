//! Requests per event on traffic the project's own mix does not show: (a) the users of a few
//! organizations, each with its own group call, as a backfill exports them (by type: group
//! calls, then identifies, then tracks and tickets); (b) sessions that repeat identical identify
//! and group calls, as browser SDKs send them. Each is delivered by `zdmap send` (batched, window
//! 2 s) to the built-in emulator with no rate limit (jobs taking 500 ms), with the shipped
//! mappings and with the same mappings without `skip_unchanged`, and reported against its
//! floor: the requests that have no bulk form (user events, ticket creations, new
//! organizations), plus for (b) the writes that change something. The time at 700 requests a
//! minute follows from the requests. Run: `cargo bench --bench traffic`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test or bench says what it expected

use std::time::Duration;

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/emulated.rs"]
mod emulated;
#[path = "support/mix.rs"]
mod mix;

/// The shipped mappings without `skip_unchanged`, in a temp dir.
fn mappings_without_skips() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp");
    for entry in std::fs::read_dir("mappings").expect("mappings") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("read");
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("skip_unchanged:"))
                .collect();
            let name = path.file_name().expect("name");
            std::fs::write(dir.path().join(name), kept.join("\n") + "\n").expect("write");
        }
    }
    dir
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let without = mappings_without_skips();
    let mixes = [
        (
            "(a) members' group calls, backfill",
            mix::members_backfill(30, 10),
            true,
        ),
        (
            "(b) repeating sessions",
            mix::repeating_sessions(300, 30),
            false,
        ),
    ];
    for (name, traffic, bulk_import) in &mixes {
        let events = mix::ndjson(&traffic.events);
        let n = traffic.events.len();
        let floor = (traffic.singles + traffic.changed) as f64 / n as f64;
        for (mappings, skips) in [
            (None, "shipped"),
            (Some(without.path()), "without skip_unchanged"),
        ] {
            let batching = emulated::Batching {
                window: Some(Duration::from_secs(2)),
                bulk_import: *bulk_import,
                job_delay_ms: 500,
                mappings: mappings.map(std::path::Path::to_path_buf),
            };
            let o = rt.block_on(emulated::deliver_with(b"", &events, &batching));
            let requests = o.stats.requests_total;
            let per_event = requests as f64 / n as f64;
            println!(
                "traffic {name}, {skips} mappings, bulk user imports {}: {n} events, {requests} requests ({per_event:.3} per event; floor {floor:.3}: {:.2}× it), {} unchanged skipped, {:.1} s, {} dead letters; at 700 requests/minute {:.1} min",
                if *bulk_import { "on" } else { "off" },
                per_event / floor,
                o.stats.unchanged,
                o.seconds,
                o.dead_letters.len(),
                requests as f64 / 700.0
            );
            for (endpoint, statuses) in &o.stats.requests {
                println!("    {endpoint}: {statuses:?}");
            }
        }
    }
}
