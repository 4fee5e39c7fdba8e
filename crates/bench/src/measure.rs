//! Samples, percentiles, and how a figure is printed: value and unit, the ratio to a baseline
//! measured in the same run, and whether the target is met.

use std::{fmt, time::Duration};

/// Durations, sorted once for percentiles (nearest-rank).
#[derive(Debug, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self(samples)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The smallest sample that at least `p` percent of the samples do not exceed.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }
}

/// What a figure is compared with.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
}

/// One measured number.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// A reference measured in the same run: its description and value (same unit).
    pub baseline: Option<(String, f64)>,
    pub target: Option<Target>,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            name: name.into(),
            value,
            unit,
            baseline: None,
            target: None,
        }
    }

    pub fn millis(name: impl Into<String>, value: Duration) -> Self {
        Self::new(name, value.as_secs_f64() * 1000.0, "ms")
    }

    pub fn baseline(mut self, what: impl Into<String>, value: f64) -> Self {
        self.baseline = Some((what.into(), value));
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }
}

fn number(value: f64) -> String {
    match value.abs() {
        v if v >= 1000.0 => format!("{value:.0}"),
        v if v >= 100.0 => format!("{value:.1}"),
        v if v >= 1.0 => format!("{value:.2}"),
        _ => format!("{value:.3}"),
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  {:<44} {:>10} {:<7}",
            self.name,
            number(self.value),
            self.unit
        )?;
        if let Some((what, baseline)) = &self.baseline
            && *baseline > 0.0
        {
            write!(
                f,
                " {}x {what} ({} {})",
                number(self.value / baseline),
                number(*baseline),
                self.unit
            )?;
        }
        if let Some(target) = self.target {
            let (met, text) = match target {
                Target::AtMost(limit) => (self.value <= limit, format!("<= {}", number(limit))),
                Target::AtLeast(limit) => (self.value >= limit, format!(">= {}", number(limit))),
            };
            write!(
                f,
                "  [target {text} {}: {}]",
                self.unit,
                if met { "met" } else { "MISSED" }
            )?;
        }
        Ok(())
    }
}

/// Prints a titled group of figures.
pub fn print_section(title: &str, figures: &[Figure]) {
    println!("\n{title}");
    for figure in figures {
        println!("{figure}");
    }
}

/// A progress line on stderr, so stdout holds only results.
pub fn step(what: impl fmt::Display) {
    eprintln!("==> {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples = Samples::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(samples.percentile(50.0), Duration::from_millis(50));
        assert_eq!(samples.percentile(99.0), Duration::from_millis(99));
        assert_eq!(samples.percentile(100.0), Duration::from_millis(100));
        assert_eq!(samples.percentile(0.0), Duration::from_millis(1));
    }

    #[test]
    fn a_figure_shows_its_ratio_and_whether_the_target_is_met() {
        let figure = Figure::new("throughput", 500.0, "jobs/s")
            .baseline("bare spawns", 1000.0)
            .target(Target::AtLeast(1000.0));
        let text = figure.to_string();
        assert!(text.contains("500.0 jobs/s"), "{text}");
        assert!(text.contains("0.500x bare spawns (1000 jobs/s)"), "{text}");
        assert!(text.contains("MISSED"), "{text}");
    }
}
