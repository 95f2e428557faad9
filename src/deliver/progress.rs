//! The progress line of a delivery run: a spinner on stderr with events/s and the delivered /
//! failed counts, read from [`Stats`]. Shown only when stderr is a terminal; hidden (and free)
//! when output is piped or logged, so it never mixes into NDJSON or CI logs.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::stats::Stats;

const REFRESH: Duration = Duration::from_millis(200);

/// A progress spinner fed by [`Stats`].
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    stats: Arc<Stats>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Shows the spinner when stderr is a terminal, and refreshes it in the background when
    /// called inside a tokio runtime (otherwise call [`Progress::update`]).
    pub fn start(stats: Arc<Stats>) -> Self {
        Self::with_visibility(stats, std::io::stderr().is_terminal())
    }

    /// Like [`Progress::start`], shown or hidden as told.
    pub fn with_visibility(stats: Arc<Stats>, visible: bool) -> Self {
        let bar = if visible {
            let style = ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            let bar =
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(style);
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        } else {
            ProgressBar::hidden()
        };
        let refresher = (visible)
            .then(tokio::runtime::Handle::try_current)
            .and_then(Result::ok)
            .map(|runtime| {
                let bar = bar.clone();
                let stats = Arc::clone(&stats);
                runtime.spawn(async move {
                    let mut tick = tokio::time::interval(REFRESH);
                    loop {
                        tick.tick().await;
                        bar.set_message(message(&stats));
                    }
                })
            });
        Progress {
            bar,
            stats,
            refresher,
        }
    }

    #[cfg(test)]
    fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }

    /// Redraws the counts now.
    pub fn update(&self) {
        if !self.bar.is_hidden() {
            self.bar.set_message(message(&self.stats));
        }
    }

    /// Stops and clears the spinner (print [`Stats::summary`] after).
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(task) = self.refresher.take() {
            task.abort();
        }
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

fn message(stats: &Stats) -> String {
    let s = stats.snapshot();
    let waiting = match stats.keys_waiting() {
        0 => String::new(),
        n => format!("; {n} users or organizations waiting (a retry, a rate limit, a record)"),
    };
    format!(
        "{} events ({:.0}/s): {} delivered, {} skipped, {} failed; {} requests, {} retries{waiting}",
        s.events_read,
        s.events_per_second,
        s.delivered,
        s.skipped,
        s.failed,
        s.requests_total,
        s.retries
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hidden_progress_is_inert() {
        let stats = Arc::new(Stats::new());
        let progress = Progress::with_visibility(Arc::clone(&stats), false);
        assert!(progress.is_hidden());
        stats.event_read();
        progress.update();
        progress.finish();
    }

    #[test]
    fn message_reads_the_counts() {
        let stats = Stats::new();
        stats.event_read();
        stats.event_delivered();
        assert!(message(&stats).starts_with("1 events"));
        assert!(message(&stats).contains("1 delivered"));
        assert!(!message(&stats).contains("waiting"));
        stats.set_keys_waiting(3);
        assert!(message(&stats).contains("3 users or organizations waiting"));
    }
}
