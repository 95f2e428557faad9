//! What a reload (SIGHUP) changes of a server whose config file names its destinations: the
//! file is read again, and the server's destinations and sources follow its `destinations:`
//! and `sources:`.
//!
//! - A destination the file adds is set up and started; it receives the events accepted from
//!   then on.
//! - A destination the file no longer names is stopped; the events still waiting for it and
//!   its dead letters stay (named again, it delivers what waits).
//! - A destination kept takes its new mappings, settings and filter (loaded by the reload of
//!   each destination's mappings that follows). Its account, credentials' variables, token
//!   store and workers' settings stay as they started until a restart.
//! - Renaming is refused (the whole change is then refused): a destination's name keys its
//!   events, records and dead letters, so a new name for the same account would start it
//!   afresh and leave the old name's events behind.
//!
//! The file's other keys (the serve flags) take effect at the next start.

use super::config_file;
use super::destinations::DestinationSpec;
use super::serve::{ServeArgs, destination_source, outlet, write_keys};
use crate::serve::{Server, WorkerOptions};
use std::path::PathBuf;

/// The config file a running server reads again on reload, and the destinations it named last.
pub(super) struct Reconfigure {
    path: PathBuf,
    current: Vec<DestinationSpec>,
    /// The workers' settings of the server's flags, under each destination's own.
    workers: WorkerOptions,
}

impl Reconfigure {
    /// For a server started with the destinations of its config file; `None` otherwise (a
    /// reload then changes the mappings and credentials only).
    pub(super) fn new(args: &ServeArgs, workers: &WorkerOptions) -> Option<Reconfigure> {
        if args.destinations.is_empty() {
            return None;
        }
        Some(Reconfigure {
            path: config_file::chosen(args.config_file.as_deref())?,
            current: args.destinations.clone(),
            workers: workers.clone(),
        })
    }

    /// Reads the file again and makes the server's destinations and sources what it says; on
    /// any problem nothing changes and the problem is given.
    pub(super) async fn apply(&mut self, args: &ServeArgs, server: &Server) -> Result<(), String> {
        let file = super::read_serve_file(&self.path).map_err(|e| e.to_string())?;
        let next = file.destinations;
        if next.is_empty() {
            return Err(format!(
                "{}: the file names no destinations any more; a server started with destinations keeps them until it is restarted",
                self.path.display()
            ));
        }
        let removed: Vec<&DestinationSpec> = (self.current.iter())
            .filter(|old| !next.iter().any(|new| new.name == old.name))
            .collect();
        let added: Vec<&DestinationSpec> = (next.iter())
            .filter(|new| !self.current.iter().any(|old| old.name == new.name))
            .collect();
        for old in &removed {
            if let Some(new) = added.iter().find(|new| same_account(old, new)) {
                return Err(format!(
                    "{}: renaming the destination `{}` to `{}` is refused: a destination's name keys its events, records and dead letters. Keep the name, or add `{}` beside `{}` and remove `{}` once its dead letters are handled",
                    self.path.display(),
                    old.name,
                    new.name,
                    new.name,
                    old.name,
                    old.name
                ));
            }
        }
        let mut keys = write_keys(args)?;
        for source in &file.sources {
            keys.add_source(source.key.clone(), source.destinations.clone());
        }
        // Set up what is added before anything changes, so a destination that cannot start
        // leaves the server as it was.
        let mut outlets = Vec::with_capacity(added.len());
        for spec in &added {
            outlets.push(outlet(args, spec, &self.workers).await?);
        }
        for outlet in outlets {
            server
                .add_destination(outlet)
                .await
                .map_err(|e| e.to_string())?;
        }
        server.set_write_keys(keys).map_err(|e| e.to_string())?;
        for old in &removed {
            server
                .remove_destination(&old.name)
                .await
                .map_err(|e| e.to_string())?;
        }
        for spec in &next {
            let Some(shared) =
                (server.destinations().into_iter()).find(|s| s.destination == spec.name)
            else {
                continue;
            };
            if let Some(old) = self.current.iter().find(|old| old.name == spec.name)
                && !same_account(old, spec)
            {
                tracing::warn!(
                    destination = %spec.name,
                    "the destination's account changed in the config file; it takes effect at the next start"
                );
            }
            shared.set_source(destination_source(args, spec).0);
        }
        tracing::info!(
            added = added.len(),
            removed = removed.len(),
            destinations = next.len(),
            "the config file's destinations and sources applied"
        );
        self.current = next;
        Ok(())
    }
}

/// Whether two destinations name the same Zendesk account (the same subdomain, or the same
/// URL); two built-in emulators are never the same.
fn same_account(a: &DestinationSpec, b: &DestinationSpec) -> bool {
    let (a, b) = (account(a), account(b));
    a.is_some() && a == b
}

/// The account a destination names: its URL, else its subdomain (its own, or of its
/// `settings`).
fn account(spec: &DestinationSpec) -> Option<String> {
    let subdomain = || {
        (spec.subdomain.clone()).or_else(|| {
            (spec.settings.iter()).find_map(|s| s.strip_prefix("subdomain=").map(str::to_owned))
        })
    };
    spec.zendesk_url.clone().or_else(subdomain)
}
