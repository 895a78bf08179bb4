//! Timing helpers shared by the benchmark suites: std-only, medians and percentiles.

use std::time::Duration;

pub mod cluster;
pub mod core;
pub mod plot;
pub mod sqldiff;
pub mod timings;

/// Options common to every suite, parsed from the command line after the suite name.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Run a few iterations only: CI checks the suite still runs; the numbers mean nothing.
    pub quick: bool,
    /// Options the common parser does not know, in order, for the suite to parse
    /// (`--name value` pairs or flags).
    pub rest: Vec<String>,
}

impl Options {
    /// Parses the arguments after the suite name.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options::default();
        for arg in args {
            match arg.as_str() {
                "--quick" => options.quick = true,
                _ => options.rest.push(arg.clone()),
            }
        }
        Ok(options)
    }

    /// The value after `--name` in the suite's own options, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        let position = self.rest.iter().position(|arg| arg == name)?;
        self.rest.get(position + 1).map(String::as_str)
    }
}

/// Latency samples of one case, with order statistics.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    durations: Vec<Duration>,
}

impl Samples {
    /// An empty set, with room for `capacity` samples (reserve up front: no allocation while
    /// timing).
    pub fn with_capacity(capacity: usize) -> Samples {
        Samples {
            durations: Vec::with_capacity(capacity),
        }
    }

    /// Records one sample.
    pub fn push(&mut self, duration: Duration) {
        self.durations.push(duration);
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.durations.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.durations.is_empty()
    }

    /// The samples, in no particular order.
    pub fn into_durations(self) -> Vec<Duration> {
        self.durations
    }

    /// The `percent`-th percentile (nearest rank), or zero without samples.
    pub fn percentile(&mut self, percent: f64) -> Duration {
        assert!((0.0..=100.0).contains(&percent));
        if self.durations.is_empty() {
            return Duration::ZERO;
        }
        self.durations.sort_unstable();
        let rank = ((percent / 100.0) * self.durations.len() as f64).ceil() as usize;
        self.durations[rank.clamp(1, self.durations.len()) - 1]
    }
}

/// The median of `values` (the mean of the two middle ones for an even count); 0 if empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        let mut samples = Samples::with_capacity(100);
        for micros in (1..=100).rev() {
            samples.push(Duration::from_micros(micros));
        }
        assert_eq!(samples.percentile(50.0), Duration::from_micros(50));
        assert_eq!(samples.percentile(99.0), Duration::from_micros(99));
        assert_eq!(samples.percentile(100.0), Duration::from_micros(100));
        assert_eq!(samples.percentile(0.0), Duration::from_micros(1));
    }

    #[test]
    fn test_options_parse_quick_and_values() {
        let args: Vec<String> = ["--quick", "--nodes", "3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let options = Options::parse(&args).unwrap();
        assert!(options.quick);
        assert_eq!(options.value("--nodes"), Some("3"));
        assert_eq!(options.value("--workers"), None);
    }
}
