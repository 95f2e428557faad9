//! The emulator's clock: real time plus an offset tests can advance, so rate-limit windows
//! (a minute, ten minutes) can be crossed without sleeping. Also formats ISO-8601 `Z` timestamps.

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
        let wall = self.started_wall + self.elapsed();
        wall.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Now, as Zendesk writes it: `2011-05-05T10:38:52Z`.
    pub(crate) fn iso_now(&self) -> String {
        iso8601(self.unix_secs())
    }
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub(crate) fn iso8601(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_304_591_932), "2011-05-05T10:38:52Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
    }
}
