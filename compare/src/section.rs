//! Workloads with a report of their own: their rows have columns the main
//! table has not (phases of a run, peak memory, a child process's figures),
//! so each prints a small table of its own after the main one, or JSON
//! lines with the same keys.

use std::fmt::Write as _;

/// How much of a section to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The smallest sizes, one run each (a smoke test for CI).
    pub tiny: bool,
    /// Fewer runs than the default.
    pub quick: bool,
}

impl Settings {
    /// Runs per row; the row reports their median.
    pub fn runs(self) -> usize {
        if self.tiny {
            1
        } else if self.quick {
            3
        } else {
            5
        }
    }
}

/// One cell of a section's row.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Text(String),
    /// A number and the decimals it is printed with.
    Number(f64, usize),
    /// Not measured (a missing tool, a skipped row).
    Missing,
}

impl Value {
    fn table(&self) -> String {
        match self {
            Value::Text(text) => text.clone(),
            Value::Number(v, decimals) => group(*v, *decimals),
            Value::Missing => "-".to_owned(),
        }
    }

    fn json(&self) -> String {
        match self {
            Value::Text(text) => json_string(text),
            Value::Number(v, decimals) if v.is_finite() => format!("{v:.decimals$}"),
            Value::Number(..) | Value::Missing => "null".to_owned(),
        }
    }
}

/// A section's report: a title, columns, rows and notes.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub workload: &'static str,
    pub title: String,
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Value>>,
    /// Printed under the table (and to stderr with `--json`).
    pub notes: Vec<String>,
}

impl Report {
    /// An aligned text table: text left, numbers right.
    pub fn table(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| row.iter().map(Value::table).collect())
            .collect();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(c, name)| {
                cells
                    .iter()
                    .map(|row| row.get(c).map_or(0, String::len))
                    .chain([name.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let left = |c: usize| {
            self.rows
                .first()
                .and_then(|row| row.get(c))
                .is_some_and(|v| matches!(v, Value::Text(_)))
        };
        let line = |values: &[String]| {
            let mut out = String::new();
            for (c, value) in values.iter().enumerate() {
                if c > 0 {
                    out.push_str("  ");
                }
                if left(c) {
                    let _ = write!(out, "{value:<w$}", w = widths[c]);
                } else {
                    let _ = write!(out, "{value:>w$}", w = widths[c]);
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = format!("\n{}\n\n", self.title);
        let header: Vec<String> = self.columns.iter().map(|c| (*c).to_owned()).collect();
        let header = line(&header);
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "{}", "-".repeat(header.len()));
        for row in &cells {
            let _ = writeln!(out, "{}", line(row));
        }
        for note in &self.notes {
            let _ = writeln!(out, "{note}");
        }
        out
    }

    /// One JSON object per row, keyed by column, with the workload's name.
    pub fn json(&self) -> String {
        let mut out = String::new();
        for row in &self.rows {
            let _ = write!(out, "{{\"workload\":{}", json_string(self.workload));
            for (name, value) in self.columns.iter().zip(row) {
                let _ = write!(out, ",{}:{}", json_string(name), value.json());
            }
            out.push_str("}\n");
        }
        out
    }
}

/// `v` with `decimals` decimals and thousands separators in its integer part.
fn group(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let text = format!("{v:.decimals$}");
    let (int, frac) = text
        .split_once('.')
        .map_or((&*text, None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    match frac {
        Some(frac) => format!("{sign}{grouped}.{frac}"),
        None => format!("{sign}{grouped}"),
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The median of `values` (sorted in place); NaN when empty.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// A field of `/proc/self/status` in KiB (`VmHWM`, `VmRSS`), if readable.
pub fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(1234567.891, 1), "1,234,567.9");
        assert_eq!(group(999.0, 0), "999");
        assert_eq!(group(-1000.0, 0), "-1,000");
        assert_eq!(group(f64::NAN, 2), "-");
    }

    #[test]
    fn json_rows_carry_the_columns() {
        let report = Report {
            workload: "w",
            title: "t".to_owned(),
            columns: vec!["design", "ns"],
            rows: vec![vec![Value::Text("a\"b".to_owned()), Value::Number(1.5, 1)]],
            notes: vec![],
        };
        assert_eq!(
            report.json(),
            "{\"workload\":\"w\",\"design\":\"a\\\"b\",\"ns\":1.5}\n"
        );
        let missing = Report {
            rows: vec![vec![Value::Text("x".to_owned()), Value::Missing]],
            ..report
        };
        assert!(missing.json().contains("\"ns\":null"));
        assert!(missing.table().contains('-'));
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn reads_its_own_peak_rss() {
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(status_kib("VmHWM").is_some_and(|kib| kib > 0));
        }
        assert_eq!(status_kib("NoSuchField"), None);
    }
}
