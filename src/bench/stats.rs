//! Order statistics of latency samples, a candidate's measurements, and
//! the table they print as.

use std::time::Duration;

/// What one candidate measured: its samples and their summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
}

/// The `q` quantile (0..=1) of sorted samples, interpolated linearly
/// between the two nearest ranks (the definition R and NumPy use by default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "quantile of no samples");
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl Summary {
    /// Summary of samples in any unit; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Summary { n: s.len(), median: quantile(&s, 0.5), p90: quantile(&s, 0.9), min: s[0], max: s[s.len() - 1] })
    }

    pub fn of_durations(samples: &[Duration]) -> Option<Summary> {
        Summary::of(&samples.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>())
    }
}

/// `a / b` as `12.3×`, or `-` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".into()
    } else if a / b >= 100.0 {
        format!("{:.0}×", a / b)
    } else {
        format!("{:.2}×", a / b)
    }
}

/// A figure with a precision that suits its size: `0.912`, `12.3`, `233`.
pub fn figure(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// A Markdown table: header, alignment row, rows; columns padded so the
/// text reads as well in a terminal.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(width[i].saturating_sub(c.chars().count()))))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out += &line(width.iter().map(|w| "-".repeat(*w)).collect());
    for r in rows {
        let mut cells = r.clone();
        cells.resize(cols, String::new());
        out += &line(cells);
    }
    out
}

/// One measured candidate: a name, its samples (ms, or MB/s for
/// throughput) and their summary.
#[derive(Debug, Clone)]
pub struct Measured {
    pub name: String,
    pub samples: Vec<f64>,
    pub summary: Summary,
}

impl Measured {
    pub fn new(name: &str, samples: Vec<f64>) -> Measured {
        let summary = Summary::of(&samples).unwrap_or(Summary { n: 0, median: f64::NAN, p90: f64::NAN, min: f64::NAN, max: f64::NAN });
        Measured { name: name.to_string(), samples, summary }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_ranks() {
        let s = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&s, 0.5), 2.5);
        assert_eq!(quantile(&s, 0.0), 1.0);
        assert_eq!(quantile(&s, 1.0), 4.0);
        assert!((quantile(&s, 0.9) - 3.7).abs() < 1e-9);
        assert_eq!(quantile(&[7.0], 0.9), 7.0);
    }

    #[test]
    fn a_summary_ignores_sample_order() {
        let s = Summary::of(&[5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        assert_eq!(s, Summary { n: 5, median: 3.0, p90: 4.6, min: 1.0, max: 5.0 });
        assert_eq!(Summary::of(&[]), None);
        let d = Summary::of_durations(&[Duration::from_millis(2), Duration::from_millis(4)]).unwrap();
        assert_eq!(d.median, 3.0);
    }

    #[test]
    fn ratios_and_figures_read_well() {
        assert_eq!(ratio(5.0, 2.0), "2.50×");
        assert_eq!(ratio(500.0, 2.0), "250×");
        assert_eq!(ratio(1.0, 0.0), "-");
        assert_eq!(figure(0.91234), "0.912");
        assert_eq!(figure(12.34), "12.3");
        assert_eq!(figure(233.4), "233");
    }

    #[test]
    fn tables_pad_columns_and_fill_short_rows() {
        let t = markdown_table(&["a", "bb"], &[vec!["long".into(), "1".into()], vec!["x".into()]]);
        assert_eq!(t, "| a    | bb |\n| ---- | -- |\n| long | 1  |\n| x    |    |\n");
    }
}
