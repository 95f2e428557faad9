//! Wall-clock time as zdmap writes it: RFC 3339 UTC timestamps with seconds
//! (`2011-05-05T10:38:52Z`, as Zendesk and Segment write them) and milliseconds since the Unix
//! epoch (what the queue stores).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_from_unix_secs(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `time` as `YYYY-MM-DDTHH:MM:SSZ` (times before the epoch are written as the epoch).
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    rfc3339_from_unix_secs(secs)
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(1_304_591_932)),
            "2011-05-05T10:38:52Z"
        );
        assert_eq!(rfc3339_from_unix_secs(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_from_unix_secs(-86_400), "1969-12-31T00:00:00Z");
    }

    #[test]
    fn millis_are_after_the_epoch_and_advance() {
        let a = unix_millis_now();
        assert!(a > 1_700_000_000_000);
        assert!(unix_millis_now() >= a);
    }
}
