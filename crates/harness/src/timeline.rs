//! The timeline of a stress run — memory levels sampled over time, the
//! guest shrinker's eviction/restore/purge counts, scenario phases — and
//! its picture: one SVG with two stacked panels on a shared time axis.
//!
//! Drawn with plotters' SVG backend and its built-in (naive) text layout:
//! the SVG carries `<text>` elements, no font library or font file is used.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use crate::Result;

/// One sample of the memory levels, all in MiB.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the start of the run.
    pub t_s: f64,
    pub guest_free_mib: f64,
    /// The balloon target (guest memory size asked for), if known.
    pub balloon_target_mib: Option<f64>,
    /// The guest memory size the balloon driver reported, if known.
    pub balloon_actual_mib: Option<f64>,
    pub hog_mib: f64,
    /// GPU BO pages resident in the guest.
    pub resident_mib: f64,
    /// GPU BO pages evicted.
    pub evicted_mib: f64,
    pub swap_used_mib: f64,
}

/// What the guest's shrinker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Evictions,
    Restores,
    Purges,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [EventKind::Evictions, EventKind::Restores, EventKind::Purges];

    pub fn label(self) -> &'static str {
        match self {
            EventKind::Evictions => "evictions",
            EventKind::Restores => "restores",
            EventKind::Purges => "purges",
        }
    }

    fn color(self) -> RGBColor {
        match self {
            EventKind::Evictions => RGBColor(0xd6, 0x27, 0x28),
            EventKind::Restores => RGBColor(0x2c, 0xa0, 0x2c),
            EventKind::Purges => RGBColor(0x94, 0x67, 0xbd),
        }
    }
}

/// `count` events of `kind` since the previous sample, seen at `t_s`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub t_s: f64,
    pub kind: EventKind,
    pub count: u64,
}

/// A named scenario phase, e.g. "ramp", "hold", "release".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    pub start_s: f64,
    pub end_s: f64,
    pub name: String,
}

/// A span in which the guest did not answer within the run's bound.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stall {
    pub start_s: f64,
    pub end_s: f64,
    /// What went unanswered: `sampler` or `agent request OP`.
    pub what: String,
}

/// The daemon's side at one moment, from its control socket (which never
/// waits on the guest).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonSample {
    pub t_s: f64,
    pub resources: u64,
    pub host_memory_mib: f64,
    pub attaches: u64,
    pub detaches: u64,
    pub transfers: u64,
    /// The daemon process from /proc (None when it could not be read).
    pub rss_mib: Option<f64>,
    /// Its anonymous memory: heap, where host copies live.
    pub anon_mib: Option<f64>,
    pub open_fds: Option<u64>,
}

/// Everything recorded over one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timeline {
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
    pub phases: Vec<Phase>,
    pub stalls: Vec<Stall>,
    pub daemon: Vec<DaemonSample>,
}

impl Timeline {
    pub fn new() -> Timeline {
        Timeline::default()
    }

    pub fn push_sample(&mut self, sample: Sample) {
        self.samples.push(sample);
    }

    /// Records `count` events of `kind` at `t_s`; a zero count is dropped.
    pub fn push_event(&mut self, t_s: f64, kind: EventKind, count: u64) {
        if count > 0 {
            self.events.push(Event { t_s, kind, count });
        }
    }

    /// Records the three shrinker counters' increments at one sample.
    pub fn push_counts(&mut self, t_s: f64, evictions: u64, restores: u64, purges: u64) {
        self.push_event(t_s, EventKind::Evictions, evictions);
        self.push_event(t_s, EventKind::Restores, restores);
        self.push_event(t_s, EventKind::Purges, purges);
    }

    pub fn push_phase(&mut self, start_s: f64, end_s: f64, name: impl Into<String>) {
        self.phases.push(Phase {
            start_s,
            end_s,
            name: name.into(),
        });
    }

    pub fn push_stall(&mut self, start_s: f64, end_s: f64, what: impl Into<String>) {
        self.stalls.push(Stall {
            start_s,
            end_s,
            what: what.into(),
        });
    }

    /// Total events of `kind`.
    pub fn total(&self, kind: EventKind) -> u64 {
        self.events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.count)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.events.is_empty() && self.phases.is_empty()
    }
}

/// Draws `timeline` as an SVG file at `path`.
pub fn render_svg(timeline: &Timeline, title: &str, path: &Path) -> Result<()> {
    let svg = render_svg_string(timeline, title)?;
    std::fs::write(path, svg).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Draws `timeline` as an SVG document: the top panel holds the memory
/// levels in MiB, the bottom one the shrinker events per sample interval;
/// phases are shaded and named in both. Empty or partial input gives a
/// chart with a note saying what is missing, never a panic.
pub fn render_svg_string(timeline: &Timeline, title: &str) -> Result<String> {
    let mut svg = String::new();
    draw(
        SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area(),
        timeline,
        title,
    )
    .map_err(|e| format!("timeline plot: {e}"))?;
    Ok(svg)
}

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 860;
const FONT: &str = "sans-serif";

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// One line of the top panel.
struct Line {
    label: &'static str,
    color: RGBColor,
    dashed: bool,
    value: fn(&Sample) -> Option<f64>,
}

const LINES: [Line; 7] = [
    Line {
        label: "guest free",
        color: RGBColor(0x1f, 0x77, 0xb4),
        dashed: false,
        value: |s| Some(s.guest_free_mib),
    },
    Line {
        label: "balloon target",
        color: RGBColor(0x33, 0x33, 0x33),
        dashed: true,
        value: |s| s.balloon_target_mib,
    },
    Line {
        label: "balloon actual",
        color: RGBColor(0x8c, 0x8c, 0x8c),
        dashed: false,
        value: |s| s.balloon_actual_mib,
    },
    Line {
        label: "hog",
        color: RGBColor(0xff, 0x7f, 0x0e),
        dashed: false,
        value: |s| Some(s.hog_mib),
    },
    Line {
        label: "GPU BO resident",
        color: RGBColor(0x2c, 0xa0, 0x2c),
        dashed: false,
        value: |s| Some(s.resident_mib),
    },
    Line {
        label: "GPU BO evicted",
        color: RGBColor(0xd6, 0x27, 0x28),
        dashed: false,
        value: |s| Some(s.evicted_mib),
    },
    Line {
        label: "swap used",
        color: RGBColor(0x94, 0x67, 0xbd),
        dashed: false,
        value: |s| Some(s.swap_used_mib),
    },
];

const PHASE_SHADES: [RGBColor; 2] = [RGBColor(0xe8, 0xee, 0xf7), RGBColor(0xf7, 0xf0, 0xe1)];

/// Runs of consecutive finite points: a missing value breaks the line.
fn runs(samples: &[Sample], value: fn(&Sample) -> Option<f64>) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut cur = Vec::new();
    for s in samples {
        match value(s) {
            Some(v) if v.is_finite() && s.t_s.is_finite() => cur.push((s.t_s, v)),
            _ => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Events summed per (time, kind), finite times only, in time order.
fn event_bins(t: &Timeline) -> Vec<(f64, EventKind, u64)> {
    let mut bins: Vec<(f64, EventKind, u64)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for e in t.events.iter().filter(|e| e.t_s.is_finite()) {
        let i = *index.entry((e.t_s.to_bits(), e.kind)).or_insert_with(|| {
            bins.push((e.t_s, e.kind, 0));
            bins.len() - 1
        });
        bins[i].2 = bins[i].2.saturating_add(e.count);
    }
    bins.sort_by(|a, b| a.0.total_cmp(&b.0));
    bins
}

/// An axis tick label with as many decimals as the axis span needs.
fn tick(v: f64, span: f64) -> String {
    let decimals = if span >= 20.0 {
        0
    } else if span >= 2.0 {
        1
    } else {
        2
    };
    format!("{v:.decimals$}")
}

fn finite_max(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.filter(|v| v.is_finite()).reduce(f64::max)
}

fn finite_min(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.filter(|v| v.is_finite()).reduce(f64::min)
}

/// The shared time range: everything recorded, never empty.
fn time_range(t: &Timeline) -> (f64, f64) {
    let times = || {
        t.samples
            .iter()
            .map(|s| s.t_s)
            .chain(t.events.iter().map(|e| e.t_s))
            .chain(t.phases.iter().flat_map(|p| [p.start_s, p.end_s]))
            .chain(t.stalls.iter().flat_map(|s| [s.start_s, s.end_s]))
    };
    let lo = finite_min(times()).unwrap_or(0.0).min(0.0);
    let hi = finite_max(times()).unwrap_or(1.0);
    if hi - lo < 1e-9 {
        (lo, lo + 1.0)
    } else {
        (lo, hi + (hi - lo) * 0.01)
    }
}

/// The width of one event bar: a third of the typical gap between event
/// times (so the three kinds of one interval sit side by side).
fn bar_width(t: &Timeline, span: f64) -> f64 {
    let mut times: Vec<f64> = t
        .events
        .iter()
        .map(|e| e.t_s)
        .chain(t.samples.iter().map(|s| s.t_s))
        .filter(|v| v.is_finite())
        .collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    let gap = gaps.get(gaps.len() / 2).copied().unwrap_or(span / 20.0);
    (gap * 0.8 / 3.0).clamp(span / 2000.0, span / 15.0)
}

fn draw(root: DrawingArea<SVGBackend<'_>, Shift>, t: &Timeline, title: &str) -> DrawResult {
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 22))?;
    let (top, bottom) = root.split_vertically((HEIGHT as f64 * 0.58) as i32);
    let (x0, x1) = time_range(t);
    let x_fmt = |v: &f64| tick(*v, x1 - x0);

    // Notes on what is missing, drawn in the top panel.
    let mut notes = Vec::new();
    match t.samples.len() {
        0 => notes.push("no samples recorded".to_string()),
        1 => notes.push("only one sample recorded".to_string()),
        _ => {}
    }
    if !t.samples.is_empty()
        && t.samples
            .iter()
            .all(|s| s.balloon_target_mib.is_none() && s.balloon_actual_mib.is_none())
    {
        notes.push("no balloon data".to_string());
    }
    if t.events.is_empty() {
        notes.push("no shrinker events".to_string());
    }

    // Top panel: memory levels.
    let levels = || {
        LINES
            .iter()
            .flat_map(|l| t.samples.iter().filter_map(l.value))
    };
    let y_max = finite_max(levels()).unwrap_or(0.0).max(1.0) * 1.12;
    let y_min = finite_min(levels()).unwrap_or(0.0).min(0.0) * 1.12;
    let mut chart = ChartBuilder::on(&top)
        .margin(12)
        .margin_right(24)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y_min..y_max)?;
    chart
        .configure_mesh()
        .y_desc("memory (MiB)")
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v| tick(*v, y_max - y_min))
        .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
        .draw()?;
    draw_phases(&mut chart, t, (y_min, y_max), true)?;
    draw_stalls(&mut chart, t, (y_min, y_max), true)?;
    for line in &LINES {
        let runs = runs(&t.samples, line.value);
        let style = line.color.stroke_width(2);
        let label = if runs.is_empty() && !t.samples.is_empty() {
            format!("{} (no data)", line.label)
        } else {
            line.label.to_string()
        };
        // One labelled (possibly empty) series for the legend, then the
        // runs; a lone point gets a marker, since a line needs two.
        let mut first = true;
        for run in runs.iter().map(Some).chain(runs.is_empty().then_some(None)) {
            let points = run.cloned().unwrap_or_default();
            let anno = if line.dashed {
                chart.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))?
            } else {
                chart.draw_series(LineSeries::new(points.clone(), style))?
            };
            if first {
                let color = line.color;
                let dashed = line.dashed;
                anno.label(label.clone()).legend(move |(x, y)| {
                    if dashed {
                        EmptyElement::at((x, y))
                            + PathElement::new(vec![(0, 0), (7, 0)], color.stroke_width(2))
                            + PathElement::new(vec![(12, 0), (20, 0)], color.stroke_width(2))
                    } else {
                        EmptyElement::at((x, y))
                            + PathElement::new(vec![(0, 0), (20, 0)], color.stroke_width(2))
                            + PathElement::new(vec![(0, 0), (0, 0)], color.stroke_width(2))
                    }
                });
                first = false;
            }
            if points.len() == 1 {
                chart.draw_series(
                    points
                        .iter()
                        .map(|&p| Circle::new(p, 4, line.color.filled())),
                )?;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xaa, 0xaa, 0xaa))
        .label_font((FONT, 13))
        .draw()?;
    if !notes.is_empty() {
        let text = notes.join("; ");
        let mid = ((x0 + x1) / 2.0, (y_min + y_max) / 2.0);
        let style = (FONT, 18)
            .into_font()
            .color(&RGBColor(0x66, 0x66, 0x66))
            .pos(Pos::new(HPos::Center, VPos::Center));
        chart.draw_series(std::iter::once(Text::new(text, mid, style)))?;
    }

    // Bottom panel: shrinker events per sample interval.
    let bins = event_bins(t);
    let c_max = bins.iter().map(|b| b.2).max().unwrap_or(0).max(1) as f64 * 1.15;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .margin_right(24)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..c_max)?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("events per sample interval")
        .x_label_formatter(&x_fmt)
        // Counts are whole numbers: no label between them.
        .y_label_formatter(&|v| {
            if (v - v.round()).abs() < 1e-9 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
        .draw()?;
    draw_phases(&mut chart, t, (0.0, c_max), false)?;
    draw_stalls(&mut chart, t, (0.0, c_max), false)?;
    let w = bar_width(t, x1 - x0);
    for (i, kind) in EventKind::ALL.into_iter().enumerate() {
        let color = kind.color();
        let offset = (i as f64 - 1.5) * w;
        let bars = bins
            .iter()
            .filter(|b| b.1 == kind)
            .map(move |&(t_s, _, n)| {
                let l = t_s + offset;
                Rectangle::new([(l, 0.0), (l + w, n as f64)], color.filled())
            });
        chart
            .draw_series(bars)?
            .label(format!("{} (total {})", kind.label(), t.total(kind)))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xaa, 0xaa, 0xaa))
        .label_font((FONT, 13))
        .draw()?;

    root.present()?;
    Ok(())
}

/// Shades each phase across the panel; names them when `label`.
fn draw_phases(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    t: &Timeline,
    (y_min, y_max): (f64, f64),
    label: bool,
) -> DrawResult {
    let phases = t
        .phases
        .iter()
        .filter(|p| p.start_s.is_finite() && p.end_s.is_finite());
    for (i, p) in phases.enumerate() {
        let (a, b) = (p.start_s.min(p.end_s), p.start_s.max(p.end_s));
        let shade = PHASE_SHADES[i % PHASE_SHADES.len()];
        chart.draw_series(std::iter::once(Rectangle::new(
            [(a, y_min), (b, y_max)],
            shade.mix(0.7).filled(),
        )))?;
        if label {
            let font = (FONT, 13).into_font().color(&RGBColor(0x55, 0x55, 0x55));
            chart.draw_series(std::iter::once(
                EmptyElement::at((a, y_max)) + Text::new(p.name.clone(), (4, 4), font),
            ))?;
        }
    }
    Ok(())
}

/// Marks each stall across the panel in red; names it when `label`.
fn draw_stalls(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    t: &Timeline,
    (y_min, y_max): (f64, f64),
    label: bool,
) -> DrawResult {
    let red = RGBColor(0xd6, 0x27, 0x28);
    for s in t
        .stalls
        .iter()
        .filter(|s| s.start_s.is_finite() && s.end_s.is_finite())
    {
        let (a, b) = (s.start_s.min(s.end_s), s.start_s.max(s.end_s));
        chart.draw_series(std::iter::once(Rectangle::new(
            [(a, y_min), (b, y_max)],
            red.mix(0.18).filled(),
        )))?;
        if label {
            let font = (FONT, 13).into_font().color(&red);
            let text = format!("stall {:.1} s ({})", b - a, s.what);
            chart.draw_series(std::iter::once(
                EmptyElement::at((a, y_max)) + Text::new(text, (4, 20), font),
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_svg(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "gpuswap-timeline-{name}-{}.svg",
            std::process::id()
        ))
    }

    fn render(t: &Timeline, name: &str) -> String {
        let path = temp_svg(name);
        render_svg(t, &format!("test: {name}"), &path).expect("render");
        let svg = std::fs::read_to_string(&path).expect("read svg");
        if std::env::var_os("GPUSWAP_KEEP_SVG").is_none() {
            let _ = std::fs::remove_file(&path);
        }
        assert!(svg.trim_start().starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(&format!("test: {name}")));
        svg
    }

    fn synthetic() -> Timeline {
        let mut t = Timeline::new();
        t.push_phase(0.0, 20.0, "ramp");
        t.push_phase(20.0, 40.0, "hold");
        t.push_phase(40.0, 60.0, "release");
        t.push_stall(25.0, 31.5, "sampler");
        for i in 0..=60 {
            let ts = i as f64;
            let hog = if ts < 20.0 {
                ts * 20.0
            } else if ts < 40.0 {
                400.0
            } else {
                (60.0 - ts) * 20.0
            };
            let evicted = (hog - 200.0).max(0.0) / 2.0;
            t.push_sample(Sample {
                t_s: ts,
                guest_free_mib: (450.0 - hog).max(20.0),
                // Balloon data missing for a stretch: the line breaks.
                balloon_target_mib: (!(10..15).contains(&i)).then_some(512.0 - hog / 4.0),
                balloon_actual_mib: (!(10..15).contains(&i)).then_some(512.0 - hog / 5.0),
                hog_mib: hog,
                resident_mib: 256.0 - evicted,
                evicted_mib: evicted,
                swap_used_mib: evicted / 3.0,
            });
            if i > 0 {
                let ev = if (10..40).contains(&i) {
                    40 + i as u64
                } else {
                    0
                };
                let re = if i >= 40 { 30 } else { 0 };
                t.push_counts(ts, ev, re, u64::from(i % 7 == 0));
            }
        }
        t
    }

    #[test]
    fn synthetic_timeline_renders() {
        let t = synthetic();
        let svg = render(&t, "synthetic");
        for label in [
            "guest free",
            "balloon target",
            "balloon actual",
            "hog",
            "GPU BO resident",
            "GPU BO evicted",
            "swap used",
            "evictions (total",
            "restores (total",
            "purges (total",
            "ramp",
            "hold",
            "release",
            "stall 6.5 s (sampler)",
            "memory (MiB)",
            "time since start (s)",
            "events per sample interval",
        ] {
            assert!(svg.contains(label), "no {label:?} in the SVG");
        }
        assert!(svg.contains("<polyline"), "no lines drawn");
        assert!(svg.contains("<rect"), "no bars drawn");
        assert!(!svg.contains("no samples recorded"));
        assert!(!svg.contains("no balloon data"));
        // The JSON report form.
        let json = serde_json::to_value(&t).expect("serialize");
        assert_eq!(json["samples"].as_array().map(Vec::len), Some(61));
        assert_eq!(json["events"][0]["kind"], "purges");
        assert_eq!(json["events"][1]["kind"], "evictions");
        assert_eq!(json["phases"][1]["name"], "hold");
        assert!(json["samples"][12]["balloon_target_mib"].is_null());
    }

    #[test]
    fn empty_timeline_renders_a_note() {
        let svg = render(&Timeline::new(), "empty");
        assert!(svg.contains("no samples recorded"));
        assert!(svg.contains("guest free"));
        assert!(svg.contains("evictions (total 0)"));
    }

    #[test]
    fn one_sample_without_balloon_renders() {
        let mut t = Timeline::new();
        t.push_sample(Sample {
            t_s: 3.0,
            guest_free_mib: 100.0,
            balloon_target_mib: None,
            balloon_actual_mib: None,
            hog_mib: 50.0,
            resident_mib: 10.0,
            evicted_mib: 0.0,
            swap_used_mib: 0.0,
        });
        t.push_counts(3.0, 0, 0, 0);
        assert!(t.events.is_empty());
        let svg = render(&t, "one");
        assert!(svg.contains("only one sample recorded"));
        assert!(svg.contains("no balloon data"));
        assert!(svg.contains("balloon target (no data)"));
        assert!(svg.contains("<circle"), "a lone sample gets markers");
    }

    #[test]
    fn odd_values_do_not_panic() {
        let mut t = Timeline::new();
        for (i, v) in [f64::NAN, 5.0, f64::INFINITY, -3.0].into_iter().enumerate() {
            t.push_sample(Sample {
                t_s: i as f64,
                guest_free_mib: v,
                balloon_target_mib: Some(v),
                balloon_actual_mib: None,
                hog_mib: 0.0,
                resident_mib: 0.0,
                evicted_mib: 0.0,
                swap_used_mib: 0.0,
            });
        }
        // Same time twice, an inverted phase, events only.
        t.push_event(1.0, EventKind::Purges, 3);
        t.push_event(1.0, EventKind::Purges, 2);
        t.push_phase(3.0, 1.0, "backwards");
        render(&t, "odd");

        let mut only_events = Timeline::new();
        only_events.push_event(7.0, EventKind::Evictions, 1000);
        let svg = render(&only_events, "events-only");
        assert!(svg.contains("evictions (total 1000)"));
    }
}
