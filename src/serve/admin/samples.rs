//! The overview's charts: the server's counters sampled every few seconds, kept one sample a
//! minute (the minute's last) for the last hour, and drawn as small SVG lines on the server, so
//! the page needs no chart library.

use std::collections::VecDeque;
use std::sync::Mutex;

/// What is charted, in this order.
pub(crate) const SERIES: [&str; 5] = [
    "accepted",
    "delivered",
    "dead_lettered",
    "requests",
    "rate_limited",
];

/// Counter values at one moment, in the order of [`SERIES`].
pub(crate) type Counters = [u64; SERIES.len()];

/// Minutes kept: the last hour and the one before it, for its first difference.
const MINUTES: usize = 61;

/// The samples of the last hour.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    minutes: Mutex<VecDeque<(u64, Counters)>>,
}

impl Samples {
    /// Records the counters at `minute` (minutes since the Unix epoch).
    pub(crate) fn record(&self, minute: u64, counters: Counters) {
        let mut minutes = crate::base::sync::lock(&self.minutes);
        match minutes.back_mut() {
            Some((last, values)) if *last == minute => *values = counters,
            Some((last, _)) if *last > minute => {}
            _ => minutes.push_back((minute, counters)),
        }
        while minutes
            .front()
            .is_some_and(|(m, _)| *m + MINUTES as u64 <= minute)
        {
            minutes.pop_front();
        }
    }

    /// For each of the last 60 minutes up to `minute`, oldest first: how much each series
    /// grew in it, from the last sample before it (the counters start at zero with the
    /// process); 0 where no sample tells.
    pub(crate) fn per_minute(&self, minute: u64) -> Vec<Counters> {
        let minutes = crate::base::sync::lock(&self.minutes);
        (0..MINUTES as u64 - 1)
            .rev()
            .map(|back| {
                let m = minute.saturating_sub(back);
                let Some(now) = minutes.iter().find(|(s, _)| *s == m).map(|(_, c)| c) else {
                    return [0; SERIES.len()];
                };
                let before = minutes
                    .iter()
                    .rev()
                    .find(|(s, _)| *s < m)
                    .map_or([0; SERIES.len()], |(_, c)| *c);
                std::array::from_fn(|i| now[i].saturating_sub(before[i]))
            })
            .collect()
    }
}

/// A small line chart of `values` (an SVG element made of numbers only).
pub(crate) fn sparkline(values: &[u64]) -> String {
    const WIDTH: f64 = 240.0;
    const HEIGHT: f64 = 40.0;
    let top = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = WIDTH / (values.len().max(2) - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = i as f64 * step;
            let y = HEIGHT - 2.0 - (*v as f64 / top) * (HEIGHT - 4.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        r#"<svg class="spark" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img"><polyline fill="none" stroke-width="1.5" points="{}"/></svg>"#,
        points.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_minute_counts_what_its_counters_grew() {
        let samples = Samples::default();
        samples.record(100, [1, 0, 0, 0, 0]);
        samples.record(101, [3, 1, 0, 2, 0]);
        samples.record(101, [5, 2, 0, 4, 1]);
        samples.record(103, [9, 2, 1, 6, 1]);
        let minutes = samples.per_minute(103);
        assert_eq!(minutes.len(), 60);
        assert_eq!(minutes[56], [1, 0, 0, 0, 0], "minute 100: from zero");
        assert_eq!(minutes[57], [4, 2, 0, 4, 1], "minute 101");
        assert_eq!(minutes[58], [0; 5], "minute 102: no sample");
        assert_eq!(
            minutes[59],
            [4, 0, 1, 2, 0],
            "minute 103: from minute 101's last"
        );
        samples.record(200, [9, 2, 1, 6, 1]);
        assert_eq!(crate::base::sync::lock(&samples.minutes).len(), 1);
        let line = sparkline(&[0, 5, 10]);
        assert!(
            line.starts_with("<svg") && line.contains("points=\"0.0,38.0 120.0,20.0 240.0,2.0\""),
            "{line}"
        );
    }
}
