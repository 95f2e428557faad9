//! The emulator's clock: real time plus an offset tests can advance, so rate-limit windows
//! (a minute, ten minutes) can be crossed without sleeping.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub(crate) struct Clock {
    started: Instant,
    started_wall: SystemTime,
    offset: Duration,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            offset: Duration::ZERO,
        }
    }

    /// Time elapsed since the emulator started, including any advance.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed() + self.offset
    }

    /// Moves the clock forward (for tests that want a rate-limit window to pass).
    pub(crate) fn advance(&mut self, by: Duration) {
        self.offset += by;
    }

    /// Seconds since the Unix epoch, as the emulator sees it.
    pub(crate) fn unix_secs(&self) -> u64 {
        self.unix_secs_at(self.elapsed())
    }

    /// Seconds since the Unix epoch at `at` (a time from [`Clock::elapsed`]).
    pub(crate) fn unix_secs_at(&self, at: Duration) -> u64 {
        self.started_wall
            .checked_add(at)
            .and_then(|wall| wall.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    }

    /// Now, as Zendesk writes it: `2011-05-05T10:38:52Z`.
    pub(crate) fn iso_now(&self) -> String {
        self.iso_at(self.elapsed())
    }

    /// `at` (a time from [`Clock::elapsed`]) as Zendesk writes it.
    pub(crate) fn iso_at(&self, at: Duration) -> String {
        crate::base::time::rfc3339_from_unix_secs(
            i64::try_from(self.unix_secs_at(at)).unwrap_or(i64::MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_the_written_time() {
        let mut clock = Clock::new();
        let before = clock.unix_secs();
        clock.advance(Duration::from_secs(86_400));
        let after = clock.unix_secs();
        assert!(after >= before + 86_400);
        let now = clock.iso_now();
        let written = |s: u64| crate::base::time::rfc3339_from_unix_secs(s as i64);
        assert!(now == written(after) || now == written(after + 1), "{now}");
    }
}
