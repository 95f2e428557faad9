//! Reloading the mappings while serving: on SIGHUP (wired by the command) or when a file of the
//! mappings directory changes. Changes are gathered for a moment (an editor writes several
//! files), then [`Shared::reload`] validates and swaps the config, or keeps the last good one.

use super::Shared;
use notify::{RecursiveMode, Watcher as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long changes are gathered before one reload.
const SETTLE: Duration = Duration::from_millis(300);

/// Watches a mappings directory for as long as it lives.
pub struct Watcher {
    _inner: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `dir`; each burst of changes reloads once.
pub fn watch(dir: &Path, shared: Arc<Shared>) -> notify::Result<Watcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut inner = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| e.kind.is_create() || e.kind.is_modify() || e.kind.is_remove()) {
            let _ = tx.send(());
        }
    })?;
    inner.watch(dir, RecursiveMode::Recursive)?;
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            let shared = shared.clone();
            let _ = tokio::task::spawn_blocking(move || shared.reload()).await;
        }
    });
    Ok(Watcher {
        _inner: inner,
        task,
    })
}
