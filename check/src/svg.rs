//! SVG plots, built as strings: the run timeline (fault lanes per node, operation latency, throughput,
//! error rate, all on one time axis) and, in `swimlane`, the picture of a linearizability violation.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write;

use crate::availability::FaultWindow;
use crate::history::{History, Op, OpKind, Outcome, describe_txn, show};

mod marks;
mod swimlane;
pub(crate) use marks::{MEASUREMENT_COLOR, WARNING_COLOR};
pub(crate) use swimlane::violation_svg;

/// At most this many operation markers are drawn; beyond it `ok` operations are thinned evenly
/// (failed, unknown and offending ones are always drawn).
const MAX_POINTS: usize = 20_000;
/// Buckets of the throughput and error-rate plots.
const BUCKETS: usize = 120;

pub(crate) const OK_COLOR: &str = "#2e7d32";
pub(crate) const FAIL_COLOR: &str = "#c62828";
pub(crate) const UNKNOWN_COLOR: &str = "#ef8f00";
pub(crate) const OFFENDING_COLOR: &str = "#6a1b9a";
const FAULT_PALETTE: &[&str] = &[
    "#e57373", "#64b5f6", "#ffb74d", "#81c784", "#ba68c8", "#4db6ac", "#f06292", "#a1887f",
];

/// Escapes text for XML/HTML content and attribute values (control characters but newline and
/// tab are dropped: XML 1.0 cannot carry them).
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// Seconds with a precision that suits the magnitude.
pub(crate) fn secs(us: u64) -> String {
    let s = us as f64 / 1e6;
    if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

/// A latency in the unit that suits it.
pub(crate) fn latency(us: f64) -> String {
    let (value, unit) = if us >= 1e6 {
        (format!("{:.2}", us / 1e6), "s")
    } else if us >= 1e3 {
        (format!("{:.1}", us / 1e3), "ms")
    } else {
        (format!("{us:.0}"), "µs")
    };
    let value = if value.contains('.') {
        value.trim_end_matches('0').trim_end_matches('.')
    } else {
        &value
    };
    format!("{value} {unit}")
}

/// A step of 1, 2 or 5 × 10^k giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// The horizontal layout shared by every panel of the timeline.
struct TimeAxis {
    end_us: u64,
    left: f64,
    right: f64,
}

impl TimeAxis {
    fn x(&self, us: u64) -> f64 {
        self.left + (us.min(self.end_us) as f64 / self.end_us as f64) * (self.right - self.left)
    }

    fn width(&self) -> f64 {
        self.right - self.left
    }

    /// Tick positions (µs) and labels.
    fn ticks(&self) -> Vec<(u64, String)> {
        let span = self.end_us as f64 / 1e6;
        let step = nice_step(span, 10.0);
        let mut ticks = Vec::new();
        let mut i = 0u64;
        loop {
            let t = step * i as f64;
            if t > span * 1.0001 {
                break;
            }
            let label = if step >= 1.0 {
                format!("{t:.0} s")
            } else if step >= 0.001 {
                format!("{:.0} ms", t * 1e3)
            } else {
                format!("{:.0} µs", t * 1e6)
            };
            ticks.push(((t * 1e6).round() as u64, label));
            i += 1;
        }
        ticks
    }
}

/// Everything the timeline panels share.
pub(crate) struct Timeline<'a> {
    history: &'a History,
    windows: Vec<&'a FaultWindow>,
    offending: HashSet<u64>,
    axis: TimeAxis,
    width: f64,
    kind_colors: BTreeMap<String, &'static str>,
}

impl<'a> Timeline<'a> {
    pub(crate) fn new(
        history: &'a History,
        windows: Vec<&'a FaultWindow>,
        offending: &[u64],
    ) -> Timeline<'a> {
        let width = 1100.0;
        let kinds: BTreeSet<&str> = windows.iter().map(|w| w.kind.as_str()).collect();
        let kind_colors = kinds
            .into_iter()
            .zip(FAULT_PALETTE.iter().cycle())
            .map(|(k, c)| (k.to_string(), *c))
            .collect();
        Timeline {
            history,
            windows,
            offending: offending.iter().copied().collect(),
            axis: TimeAxis {
                end_us: history.end_us().max(1),
                left: 110.0,
                right: width - 20.0,
            },
            width,
            kind_colors,
        }
    }

    /// The colour of each fault kind, for the legend.
    pub(crate) fn kind_colors(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.kind_colors.iter().map(|(k, c)| (k.as_str(), *c))
    }

    /// The full timeline for the HTML report: fault lanes, latency, throughput, error rate.
    pub(crate) fn full(&self) -> String {
        let mut body = String::new();
        let mut y = 10.0;
        y += self.fault_lanes(&mut body, y);
        y += self.marks(&mut body, y + 4.0);
        y += self.latency(&mut body, y + 10.0, 280.0) + 10.0;
        y += self.throughput(&mut body, y + 10.0, 110.0) + 10.0;
        y += self.error_rate(&mut body, y + 10.0, 90.0) + 10.0;
        y += self.time_axis(&mut body, y);
        self.wrap(
            "timeline",
            &body,
            y + 10.0,
            "Run timeline: faults per node, latency, throughput, errors",
        )
    }

    /// Fault lanes and latency, as a standalone file.
    pub(crate) fn latency_file(&self) -> String {
        let mut body = String::new();
        let mut y = 10.0;
        y += self.fault_lanes(&mut body, y);
        y += self.latency(&mut body, y + 10.0, 320.0) + 10.0;
        y += self.time_axis(&mut body, y);
        self.wrap(
            "latency",
            &body,
            y + 10.0,
            "Operation latency over time, with fault windows",
        )
    }

    /// Throughput and error rate, as a standalone file.
    pub(crate) fn throughput_file(&self) -> String {
        let mut body = String::new();
        let mut y = 10.0;
        y += self.fault_lanes(&mut body, y);
        y += self.throughput(&mut body, y + 10.0, 200.0) + 10.0;
        y += self.error_rate(&mut body, y + 10.0, 120.0) + 10.0;
        y += self.time_axis(&mut body, y);
        self.wrap(
            "throughput",
            &body,
            y + 10.0,
            "Throughput and error rate over time, with fault windows",
        )
    }

    fn wrap(&self, id: &str, body: &str, height: f64, title: &str) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"{id}-svg\" viewBox=\"0 0 {w} {height:.0}\" \
             width=\"{w}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\">\
             <title>{}</title><rect width=\"{w}\" height=\"{height:.0}\" fill=\"#fff\"/>{body}</svg>",
            esc(title),
            w = self.width
        )
    }

    /// The node lanes: one row per node, each fault shaded over its window.
    fn fault_lanes(&self, out: &mut String, top: f64) -> f64 {
        const LANE: f64 = 16.0;
        let mut lanes: Vec<String> = self.history.header.nodes.clone();
        let mut extra: BTreeSet<String> = BTreeSet::new();
        let mut cluster_wide = false;
        for w in &self.windows {
            if w.nodes.is_empty() {
                cluster_wide = true;
            }
            extra.extend(w.nodes.iter().filter(|n| !lanes.contains(n)).cloned());
        }
        lanes.extend(extra);
        if cluster_wide {
            lanes.push("(cluster)".to_string());
        }
        if lanes.is_empty() {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#666\">no fault events</text>",
                self.axis.left,
                top + 12.0
            );
            return 18.0;
        }
        let _ = write!(out, "<g class=\"fault-lanes\">");
        for (i, lane) in lanes.iter().enumerate() {
            let y = top + i as f64 * (LANE + 2.0);
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
                 <rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{LANE}\" fill=\"#f3f3f3\"/>",
                self.axis.left - 6.0,
                y + 12.0,
                esc(lane),
                self.axis.left,
                self.axis.width()
            );
            for w in &self.windows {
                let on_lane = if w.nodes.is_empty() {
                    lane == "(cluster)"
                } else {
                    w.nodes.contains(lane)
                };
                if !on_lane {
                    continue;
                }
                let x0 = self.axis.x(w.injected_us);
                let x1 = self.axis.x(w.healed_us.unwrap_or(self.axis.end_us));
                let color = self.kind_colors.get(&w.kind).copied().unwrap_or("#999");
                let _ = write!(
                    out,
                    "<rect class=\"fault\" x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{LANE}\" \
                     fill=\"{color}\"><title>{}</title></rect>",
                    (x1 - x0).max(1.0),
                    esc(&window_title(w))
                );
                if x1 - x0 > 60.0 {
                    let _ = write!(
                        out,
                        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#222\" pointer-events=\"none\">{}</text>",
                        x0 + 3.0,
                        y + 12.0,
                        esc(&w.kind)
                    );
                }
            }
        }
        let _ = write!(out, "</g>");
        lanes.len() as f64 * (LANE + 2.0)
    }

    /// Vertical bands over every fault window, behind a panel.
    fn fault_bands(&self, out: &mut String, top: f64, height: f64) {
        for w in &self.windows {
            let x0 = self.axis.x(w.injected_us);
            let x1 = self.axis.x(w.healed_us.unwrap_or(self.axis.end_us));
            let color = self.kind_colors.get(&w.kind).copied().unwrap_or("#999");
            let _ = write!(
                out,
                "<rect x=\"{x0:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"{color}\" \
                 fill-opacity=\"0.13\"/>",
                (x1 - x0).max(1.0)
            );
        }
    }

    fn frame(&self, out: &mut String, top: f64, height: f64, label: &str) {
        let _ = write!(
            out,
            "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"none\" \
             stroke=\"#999\"/><text x=\"12\" y=\"{:.1}\" font-weight=\"bold\">{}</text>",
            self.axis.left,
            self.axis.width(),
            top + 12.0,
            esc(label)
        );
    }

    fn vertical_grid(&self, out: &mut String, top: f64, height: f64) {
        for (t, _) in self.axis.ticks() {
            let x = self.axis.x(t);
            let _ = write!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
                top + height
            );
        }
    }

    fn time_axis(&self, out: &mut String, top: f64) -> f64 {
        for (t, label) in self.axis.ticks() {
            let x = self.axis.x(t);
            let _ = write!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#666\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                top + 4.0,
                top + 16.0,
                esc(&label)
            );
        }
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">time since the start of the run</text>",
            self.axis.left + self.axis.width() / 2.0,
            top + 32.0
        );
        36.0
    }

    /// Which operations get a marker.
    fn drawn_ops(&self) -> (Vec<&Op>, usize) {
        let mut ops: Vec<&Op> = self.history.ops.iter().collect();
        ops.sort_by_key(|o| (o.invoke_us, o.id));
        let total = ops.len();
        if total <= MAX_POINTS {
            return (ops, total);
        }
        let ok = ops
            .iter()
            .filter(|o| o.outcome == Outcome::Ok && !self.offending.contains(&o.id))
            .count();
        let budget = MAX_POINTS.saturating_sub(total - ok).max(1);
        let every = ok.div_ceil(budget).max(1);
        let mut seen_ok = 0usize;
        let kept = ops
            .into_iter()
            .filter(|o| {
                if o.outcome != Outcome::Ok || self.offending.contains(&o.id) {
                    return true;
                }
                seen_ok += 1;
                seen_ok % every == 0
            })
            .collect();
        (kept, total)
    }

    /// Latency scatter (log scale) by invocation time, coloured by outcome, with the offending
    /// operations of a violation drawn as bars from invocation to completion.
    fn latency(&self, out: &mut String, top: f64, height: f64) -> f64 {
        const NO_REPLY: f64 = 20.0;
        let plot_top = top + NO_REPLY;
        let plot_height = height - NO_REPLY;
        self.fault_bands(out, top, height);
        self.vertical_grid(out, top, height);
        self.frame(out, top, height, "latency");
        let latencies: Vec<f64> = self
            .history
            .ops
            .iter()
            .filter_map(|o| o.latency_us())
            .map(|l| l.max(1) as f64)
            .collect();
        let (mut low, mut high) = latencies
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &l| (lo.min(l), hi.max(l)));
        if latencies.is_empty() {
            (low, high) = (1.0, 10.0);
        }
        let (low_exp, mut high_exp) = (low.log10().floor(), high.log10().ceil());
        if high_exp <= low_exp {
            high_exp = low_exp + 1.0;
        }
        let y = |l: f64| {
            plot_top + plot_height - (l.max(1.0).log10() - low_exp) / (high_exp - low_exp) * plot_height
        };
        let _ = write!(
            out,
            "<line x1=\"{:.1}\" y1=\"{plot_top:.1}\" x2=\"{:.1}\" y2=\"{plot_top:.1}\" stroke=\"#ddd\" \
             stroke-dasharray=\"3 3\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#666\">no reply</text>",
            self.axis.left,
            self.axis.right,
            self.axis.left - 6.0,
            top + 10.0
        );
        let mut e = low_exp;
        while e <= high_exp {
            let yy = y(10f64.powf(e));
            let _ = write!(
                out,
                "<line x1=\"{:.1}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                self.axis.left,
                self.axis.right,
                self.axis.left - 6.0,
                yy + 4.0,
                latency(10f64.powf(e))
            );
            e += 1.0;
        }
        let (ops, total) = self.drawn_ops();
        let _ = write!(out, "<g class=\"ops\">");
        for op in &ops {
            let (class, color) = outcome_style(op.outcome);
            let title = esc(&op_title(op));
            let x = self.axis.x(op.invoke_us);
            match op.latency_us() {
                Some(l) => {
                    let _ = write!(
                        out,
                        "<circle class=\"op {class}\" cx=\"{x:.1}\" cy=\"{:.1}\" r=\"2.2\" fill=\"{color}\" \
                         fill-opacity=\"0.75\"><title>{title}</title></circle>",
                        y(l as f64)
                    );
                }
                None => {
                    let cy = top + 7.0;
                    let _ = write!(
                        out,
                        "<path class=\"op {class}\" d=\"M{:.1} {:.1}l5 5m0 -5l-5 5\" stroke=\"{color}\" \
                         stroke-width=\"1.5\"><title>{title}</title></path>",
                        x - 2.5,
                        cy - 2.5
                    );
                }
            }
        }
        let _ = write!(out, "</g>");
        if !self.offending.is_empty() {
            let _ = write!(out, "<g class=\"offending\">");
            for op in self.history.ops.iter().filter(|o| self.offending.contains(&o.id)) {
                let x0 = self.axis.x(op.invoke_us);
                let (x1, yy) = match op.latency_us() {
                    Some(l) => (self.axis.x(op.complete_us.unwrap_or(op.invoke_us)), y(l as f64)),
                    None => (self.axis.right, top + 7.0),
                };
                let _ = write!(
                    out,
                    "<line x1=\"{x0:.1}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"{OFFENDING_COLOR}\" \
                     stroke-width=\"3\"/><circle cx=\"{x0:.1}\" cy=\"{yy:.1}\" r=\"5\" fill=\"none\" \
                     stroke=\"{OFFENDING_COLOR}\" stroke-width=\"2\"><title>{}</title></circle>\
                     <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{OFFENDING_COLOR}\" font-weight=\"bold\">#{}</text>",
                    (x1).max(x0 + 2.0),
                    esc(&op_title(op)),
                    x0 + 6.0,
                    yy - 6.0,
                    op.id
                );
            }
            let _ = write!(out, "</g>");
        }
        if ops.len() < total {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#666\">{} of {} operations drawn</text>",
                self.axis.right - 4.0,
                top + height - 6.0,
                ops.len(),
                total
            );
        }
        height
    }

    /// Operations per bucket: (completed ok, invoked, invoked and not ok).
    fn buckets(&self) -> (f64, Vec<(u64, u64, u64)>) {
        let width = (self.axis.end_us as f64 / BUCKETS as f64).max(1.0);
        let mut buckets = vec![(0u64, 0u64, 0u64); BUCKETS];
        let index = |t: u64| ((t as f64 / width) as usize).min(BUCKETS - 1);
        for op in &self.history.ops {
            if let (Outcome::Ok, Some(c)) = (op.outcome, op.complete_us) {
                buckets[index(c)].0 += 1;
            }
            let b = &mut buckets[index(op.invoke_us)];
            b.1 += 1;
            if op.outcome != Outcome::Ok {
                b.2 += 1;
            }
        }
        (width, buckets)
    }

    fn throughput(&self, out: &mut String, top: f64, height: f64) -> f64 {
        self.fault_bands(out, top, height);
        self.vertical_grid(out, top, height);
        self.frame(out, top, height, "ok ops/s");
        let (width_us, buckets) = self.buckets();
        let rates: Vec<f64> = buckets.iter().map(|b| b.0 as f64 / (width_us / 1e6)).collect();
        let max = rates.iter().copied().fold(0.0, f64::max).max(1.0);
        let step = nice_step(max, 4.0);
        let top_value = (max / step).ceil() * step;
        let y = |v: f64| top + height - v / top_value * (height - 14.0);
        let mut v = 0.0;
        while v <= top_value + step * 0.01 {
            let _ = write!(
                out,
                "<line x1=\"{:.1}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                self.axis.left,
                self.axis.right,
                self.axis.left - 6.0,
                y(v) + 4.0,
                compact(v),
                yy = y(v)
            );
            v += step;
        }
        let mut points = String::new();
        for (i, r) in rates.iter().enumerate() {
            let x0 = self.axis.x((i as f64 * width_us) as u64);
            let x1 = self.axis.x(((i + 1) as f64 * width_us) as u64);
            let _ = write!(points, "{x0:.1},{:.1} {x1:.1},{:.1} ", y(*r), y(*r));
        }
        let _ = write!(
            out,
            "<polyline class=\"throughput\" points=\"{}\" fill=\"none\" stroke=\"#1565c0\" stroke-width=\"1.5\"/>",
            points.trim_end()
        );
        height
    }

    fn error_rate(&self, out: &mut String, top: f64, height: f64) -> f64 {
        self.fault_bands(out, top, height);
        self.vertical_grid(out, top, height);
        self.frame(out, top, height, "errors");
        let (width_us, buckets) = self.buckets();
        let y = |f: f64| top + height - f * (height - 14.0);
        for f in [0.0, 0.5, 1.0] {
            let _ = write!(
                out,
                "<line x1=\"{:.1}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0} %</text>",
                self.axis.left,
                self.axis.right,
                self.axis.left - 6.0,
                y(f) + 4.0,
                f * 100.0,
                yy = y(f)
            );
        }
        for (i, &(_, invoked, failed)) in buckets.iter().enumerate() {
            if invoked == 0 || failed == 0 {
                continue;
            }
            let fraction = failed as f64 / invoked as f64;
            let x0 = self.axis.x((i as f64 * width_us) as u64);
            let x1 = self.axis.x(((i + 1) as f64 * width_us) as u64);
            let _ = write!(
                out,
                "<rect class=\"error-bar\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
                 fill=\"{FAIL_COLOR}\" fill-opacity=\"0.7\"><title>{failed} of {invoked} operations failed or \
                 timed out</title></rect>",
                y(fraction),
                (x1 - x0).max(0.5),
                top + height - y(fraction)
            );
        }
        height
    }
}

fn compact(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn outcome_style(outcome: Outcome) -> (&'static str, &'static str) {
    match outcome {
        Outcome::Ok => ("ok", OK_COLOR),
        Outcome::Fail => ("fail", FAIL_COLOR),
        Outcome::Unknown => ("unknown", UNKNOWN_COLOR),
    }
}

/// The hover text of an operation marker.
pub(crate) fn op_title(op: &Op) -> String {
    let mut text = op.describe();
    let _ = write!(text, "\ninvoked {}", secs(op.invoke_us));
    if let Some(c) = op.complete_us {
        let _ = write!(
            text,
            ", completed {} ({})",
            secs(c),
            latency(c.saturating_sub(op.invoke_us) as f64)
        );
    }
    if let Some(node) = &op.node {
        let _ = write!(text, "\nnode {node}");
    }
    if let Some(error) = &op.error {
        let _ = write!(text, "\nerror: {error}");
    }
    text
}

fn window_title(w: &FaultWindow) -> String {
    let mut text = format!("case {}: {}", w.case, w.kind);
    if !w.nodes.is_empty() {
        let _ = write!(text, " on {}", w.nodes.join(", "));
    }
    let _ = write!(text, "\ninjected {}", secs(w.injected_us));
    match w.healed_us {
        Some(h) => {
            let _ = write!(text, ", healed {}", secs(h));
        }
        None => text.push_str(", never healed"),
    }
    if let Some(r) = w.recovery_us {
        let _ = write!(text, "\nrecovered {} after the heal", latency(r as f64));
    }
    if let Some(d) = &w.detail {
        let _ = write!(text, "\n{d}");
    }
    text
}
