//! The results: a table, JSON lines, CSV, or an SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

/// One measured (workload, design, threads) cell.
#[derive(Clone, Debug)]
pub struct Row {
    pub workload: &'static str,
    pub design: &'static str,
    pub threads: usize,
    /// Operations per thread in each run.
    pub k: u64,
    /// The median over the runs.
    pub ns_per_op: f64,
    pub ops_per_s: f64,
    /// `ns_per_op` over the reference design's, at the same thread count.
    pub ratio: f64,
    /// For the workloads that time each request: the median over the runs
    /// of each run's median latency, of its 99th and of its 99.9th
    /// percentile.
    pub p50_ns: Option<f64>,
    pub p99_ns: Option<f64>,
    pub p999_ns: Option<f64>,
}

/// What the numbers were measured on.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    /// `default`, `quick` or `tiny`.
    pub mode: &'static str,
    pub runs: usize,
    /// The 1-minute load average when the run started, if known.
    pub load: Option<f64>,
}

impl Machine {
    /// The machine this runs on.
    pub fn detect(mode: &'static str, runs: usize) -> Machine {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .filter_map(|line| line.split_once(':'))
                    .find(|(key, _)| key.trim() == "model name")
                    .map(|(_, value)| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok());
        Machine {
            cpus,
            cpu_model,
            mode,
            runs,
            load,
        }
    }

    /// Whether other work already keeps the CPUs busy: numbers will be noisy,
    /// and designs that spin (waiting for a partner that is not running)
    /// suffer most.
    pub fn busy(&self) -> bool {
        self.load.is_some_and(|l| l >= 1.5 * self.cpus as f64)
    }

    /// One line: CPUs, model, load and mode.
    pub fn summary(&self) -> String {
        let runs = if self.runs == 1 {
            "1 run per row".to_owned()
        } else {
            format!("median of {} runs per row", self.runs)
        };
        let load = self
            .load
            .map(|l| format!("   load: {l:.2}"))
            .unwrap_or_default();
        format!(
            "cpus: {}   cpu: {}{load}   mode: {} ({runs})",
            self.cpus, self.cpu_model, self.mode
        )
    }
}

/// The reference design of each workload, for the note under the table.
pub struct Reference {
    pub workload: &'static str,
    pub design: &'static str,
}

/// The human-readable table, with the machine facts on top.
pub fn table(rows: &[Row], machine: &Machine, references: &[Reference]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "custody compare: a manager thread against a lock");
    let _ = writeln!(out, "{}", machine.summary());
    let _ = writeln!(out);
    let design_width = rows
        .iter()
        .map(|r| r.design.len())
        .chain(["design".len()])
        .max()
        .unwrap_or(6);
    let workload_width = rows
        .iter()
        .map(|r| r.workload.len())
        .chain(["workload".len()])
        .max()
        .unwrap_or(8);
    // The latency columns only when some row has them.
    let latencies = rows
        .iter()
        .any(|r| r.p50_ns.is_some() || r.p99_ns.is_some() || r.p999_ns.is_some());
    let latency_columns = |p50: &str, p99: &str, p999: &str| {
        if latencies {
            format!(" {p50:>10} {p99:>10} {p999:>10}")
        } else {
            String::new()
        }
    };
    let header = format!(
        "{:<workload_width$} {:<design_width$} {:>7} {:>13} {:>10} {:>8} {:>10}{}",
        "workload",
        "design",
        "threads",
        "ns/op",
        "ops/s",
        "ratio",
        "k",
        latency_columns("p50", "p99", "p99.9"),
    );
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.len()));
    let mut previous: Option<(&str, usize)> = None;
    for row in rows {
        let group = (row.workload, row.threads);
        if previous.is_some_and(|p| p != group) {
            let _ = writeln!(out);
        }
        previous = Some(group);
        let latency = |v: Option<f64>| v.map_or_else(String::new, duration);
        let _ = writeln!(
            out,
            "{:<workload_width$} {:<design_width$} {:>7} {:>13} {:>10} {:>8} {:>10}{}",
            row.workload,
            row.design,
            row.threads,
            ns(row.ns_per_op),
            si(row.ops_per_s),
            format!("{:.2}", row.ratio),
            row.k,
            latency_columns(
                &latency(row.p50_ns),
                &latency(row.p99_ns),
                &latency(row.p999_ns)
            ),
        );
    }
    let _ = writeln!(out);
    let refs: Vec<String> = references
        .iter()
        .map(|r| format!("{} for {}", r.design, r.workload))
        .collect();
    let _ = writeln!(
        out,
        "ratio = ns/op / the reference's ns/op at the same thread count (reference: {}); \
         below 1 beats the reference.",
        refs.join(", ")
    );
    let _ = writeln!(
        out,
        "k = operations per thread in each run (sized down where a run would be too long)."
    );
    if latencies {
        let _ = writeln!(
            out,
            "p50, p99, p99.9 = latency of one request (async workloads: threads are concurrent \
             tokio tasks), the median over the runs of each run's percentile."
        );
    }
    out
}

/// A latency in nanoseconds, in the unit that suits it: `850 ns`, `12.4 µs`,
/// `3.81 ms`.
fn duration(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let (scaled, unit) = if v >= 1e6 {
        (v / 1e6, "ms")
    } else if v >= 1e3 {
        (v / 1e3, "µs")
    } else {
        (v, "ns")
    };
    if scaled >= 100.0 {
        format!("{scaled:.0} {unit}")
    } else if scaled >= 10.0 {
        format!("{scaled:.1} {unit}")
    } else {
        format!("{scaled:.2} {unit}")
    }
}

/// Nanoseconds, with digit grouping and a precision that suits the size.
fn ns(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        let whole = format!("{:.0}", v);
        let mut grouped = String::new();
        for (i, c) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        grouped
    }
}

/// A rate with an SI suffix: `12.3M`, `840k`.
fn si(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let (scaled, suffix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if scaled >= 100.0 {
        format!("{scaled:.0}{suffix}")
    } else if scaled >= 10.0 {
        format!("{scaled:.1}{suffix}")
    } else {
        format!("{scaled:.2}{suffix}")
    }
}

/// A JSON number, or `null` for what JSON cannot hold.
fn json_number(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "null".to_owned()
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
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

/// One JSON object per line.
pub fn json(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows {
        let _ = writeln!(
            out,
            "{{\"workload\":{},\"design\":{},\"threads\":{},\"ns_per_op\":{},\"ops_per_s\":{},\"ratio\":{},\"p50_ns\":{},\"p99_ns\":{},\"p999_ns\":{}}}",
            json_string(row.workload),
            json_string(row.design),
            row.threads,
            json_number(row.ns_per_op, 3),
            json_number(row.ops_per_s, 1),
            json_number(row.ratio, 4),
            json_number(row.p50_ns.unwrap_or(f64::NAN), 0),
            json_number(row.p99_ns.unwrap_or(f64::NAN), 0),
            json_number(row.p999_ns.unwrap_or(f64::NAN), 0),
        );
    }
    out
}

/// A header line, then one line per row.
pub fn csv(rows: &[Row]) -> String {
    let mut out =
        String::from("workload,design,threads,ns_per_op,ops_per_s,ratio,p50_ns,p99_ns,p999_ns\n");
    for row in rows {
        let number = |v: f64, d: usize| {
            if v.is_finite() {
                format!("{v:.d$}")
            } else {
                String::new()
            }
        };
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{}",
            row.workload,
            row.design,
            row.threads,
            number(row.ns_per_op, 3),
            number(row.ops_per_s, 1),
            number(row.ratio, 4),
            number(row.p50_ns.unwrap_or(f64::NAN), 0),
            number(row.p99_ns.unwrap_or(f64::NAN), 0),
            number(row.p999_ns.unwrap_or(f64::NAN), 0),
        );
    }
    out
}

/// One panel per workload: ops/s (log scale) against threads, one line per
/// design. `workloads` gives the panels' order and each one's designs.
pub fn svg(
    path: &Path,
    rows: &[Row],
    workloads: &[(&'static str, &'static [&'static str])],
    machine: &Machine,
) -> Result<(), String> {
    draw(path, rows, workloads, machine).map_err(|e| format!("drawing {}: {e}", path.display()))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(
    path: &Path,
    rows: &[Row],
    workloads: &[(&'static str, &'static [&'static str])],
    machine: &Machine,
) -> DrawResult {
    let columns = workloads.len().clamp(1, 2);
    let lines = workloads.len().div_ceil(columns).max(1);
    let size = (700 * columns as u32, 440 * lines as u32 + 50);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "custody compare: ops/s by threads ({} cpus, {}, {} mode)",
        machine.cpus, machine.cpu_model, machine.mode
    );
    let title_size = if columns == 1 { 17 } else { 24 };
    let root = root.titled(&title, ("sans-serif", title_size))?;
    let panels = root.split_evenly((lines, columns));
    for (panel, &(workload, designs)) in panels.iter().zip(workloads) {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.workload == workload).collect();
        if mine.is_empty() {
            continue;
        }
        let (plot, legend) = panel.split_horizontally(panel.dim_in_pixel().0 as i32 - 215);
        draw_panel(&plot, workload, designs, &mine)?;
        draw_legend(&legend, designs)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel(
    panel: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    workload: &str,
    designs: &[&'static str],
    rows: &[&Row],
) -> DrawResult {
    // x is log2(threads), so 1, 2, 4, 8 are evenly spaced.
    let x_of = |threads: usize| (threads as f64).log2();
    let (mut x_min, mut x_max) = (f64::MAX, f64::MIN);
    let (mut y_min, mut y_max) = (f64::MAX, f64::MIN);
    for row in rows {
        x_min = x_min.min(x_of(row.threads));
        x_max = x_max.max(x_of(row.threads));
        if row.ops_per_s.is_finite() && row.ops_per_s > 0.0 {
            y_min = y_min.min(row.ops_per_s);
            y_max = y_max.max(row.ops_per_s);
        }
    }
    if y_min > y_max {
        (y_min, y_max) = (1.0, 10.0);
    }
    let threads: Vec<usize> = {
        let mut t: Vec<usize> = rows.iter().map(|r| r.threads).collect();
        t.sort_unstable();
        t.dedup();
        t
    };
    let x_range = (x_min - 0.35)..(x_max + 0.35);
    let y_range = (y_min / 2.0)..(y_max * 3.0);
    let mut chart = ChartBuilder::on(panel)
        .caption(workload, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, y_range.log_scale())?;
    let x_label = |x: &f64| {
        let nearest = x.round();
        let t = 2f64.powf(nearest);
        if (x - nearest).abs() < 1e-6 && threads.contains(&(t as usize)) {
            format!("{t:.0}")
        } else {
            String::new()
        }
    };
    // Log-scale ticks crowd near each power of ten: label 1, 2 and 5 only.
    let y_label = |y: &f64| {
        let mantissa = y / 10f64.powf(y.log10().floor());
        if [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6) {
            si(*y)
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc(match workload {
            "database" => "writers",
            "async-write" => "concurrent requests",
            "async-ask" => "asking tasks",
            _ => "threads",
        })
        .y_desc("ops/s (log)")
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .x_labels((x_max - x_min) as usize + 1)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, &design) in designs.iter().enumerate() {
        // With one thread count, the designs' points stand side by side
        // rather than on top of each other.
        let nudge = if threads.len() == 1 {
            (i as f64 - (designs.len() as f64 - 1.0) / 2.0) * 0.06
        } else {
            0.0
        };
        let mut points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.design == design && r.ops_per_s.is_finite() && r.ops_per_s > 0.0)
            .map(|r| (x_of(r.threads) + nudge, r.ops_per_s))
            .collect();
        if points.is_empty() {
            continue;
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart.draw_series(LineSeries::new(points, style_of(i)).point_size(4))?;
    }
    Ok(())
}

/// The line style of the `i`th design; the reference (first) is thicker.
fn style_of(i: usize) -> ShapeStyle {
    Palette99::pick(i)
        .to_rgba()
        .stroke_width(if i == 0 { 3 } else { 2 })
}

/// The designs' names beside their panel, one line each.
fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    designs: &[&'static str],
) -> DrawResult {
    let top = 70;
    for (i, &design) in designs.iter().enumerate() {
        let y = top + 22 * i as i32;
        area.draw(&PathElement::new(vec![(4, y), (26, y)], style_of(i)))?;
        area.draw(&Circle::new((15, y), 4, style_of(i)))?;
        let label = if i == 0 {
            format!("{design} (ref)")
        } else {
            design.to_owned()
        };
        area.draw(&Text::new(label, (32, y - 8), ("sans-serif", 15)))?;
    }
    Ok(())
}
