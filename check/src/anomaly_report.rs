//! The report's list-append section: each anomaly found, explained, with its transactions on a
//! swimlane timeline (like a linearizability violation) and, for a dependency cycle, a diagram of
//! the cycle — the transactions around a circle, each edge labelled with why one must precede the
//! next. Everything is inline SVG, built from the verdict's details (so a stored `verdict.json`
//! could be rendered the same way).

use std::f64::consts::PI;
use std::fmt::Write as _;

use serde_json::Value;

use crate::checker::Verdict;
use crate::history::History;
use crate::svg::{esc, op_title, violation_svg};

/// At most this many anomalies are drawn (`verdict.json` has every example kept).
const DRAWN: usize = 20;
/// At most this many transactions of a cycle are drawn around the circle.
const CYCLE_NODES: usize = 16;

/// Colour of an edge kind in cycle diagrams.
fn kind_color(kind: &str) -> &'static str {
    match kind {
        "ww" => "#1565c0",
        "wr" => "#2e7d32",
        "rw" => "#c62828",
        "process" => "#6a1b9a",
        _ => "#616161",
    }
}

const KINDS: [(&str, &str); 5] = [
    ("ww", "write → write: the later append follows in the key's order"),
    ("wr", "write → read: the read saw the append"),
    ("rw", "read → write: the read missed the append that came next"),
    ("process", "the same client, one after the other"),
    ("realtime", "one completed before the other began"),
];

/// Renders the list-append verdict's anomalies into `h`.
pub(crate) fn render_list_append(h: &mut String, history: &History, v: &Verdict) {
    let anomalies = v
        .details
        .get("anomalies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let model = v.details.get("model").and_then(Value::as_str).unwrap_or("?");
    let forbidden = v
        .details
        .get("forbidden")
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let _ = writeln!(
        h,
        "<h3>list-append under {}</h3>\n<p>{} forbids: {}.</p>\n<p class=\"legend\">Cycle edges: {}</p>",
        esc(model),
        esc(model),
        esc(&forbidden),
        KINDS
            .iter()
            .map(|(kind, meaning)| format!(
                "<span><i class=\"swatch\" style=\"background:{}\"></i><b>{kind}</b> {}</span>",
                kind_color(kind),
                esc(meaning)
            ))
            .collect::<String>()
    );
    let mut shown_allowed_heading = false;
    for (index, anomaly) in anomalies.iter().enumerate() {
        if index >= DRAWN {
            let _ = writeln!(
                h,
                "<p>… and {} more examples (see verdict.json)</p>",
                anomalies.len() - DRAWN
            );
            break;
        }
        let class = anomaly.get("class").and_then(Value::as_str).unwrap_or("?");
        let meaning = anomaly.get("meaning").and_then(Value::as_str).unwrap_or("");
        let is_forbidden = anomaly.get("forbidden").and_then(Value::as_bool).unwrap_or(false);
        if !is_forbidden && !shown_allowed_heading {
            shown_allowed_heading = true;
            let _ = writeln!(h, "<h3>Also found, which {} allows</h3>", esc(model));
        }
        let ops: Vec<u64> = anomaly
            .get("ops")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let explanation = anomaly.get("explanation").and_then(Value::as_str).unwrap_or("");
        let _ = writeln!(
            h,
            "<h4 class=\"anomaly\">{} — {}{}</h4>\n<p>{}</p>",
            esc(class),
            esc(meaning),
            if is_forbidden { "" } else { " (allowed)" },
            esc(explanation)
        );
        let steps = anomaly
            .get("cycle")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        h.push_str("<div class=\"violation-box\">");
        if !steps.is_empty() {
            h.push_str(&cycle_svg(&steps, index));
        }
        let until = ops
            .iter()
            .filter_map(|id| history.op(*id))
            .map(|o| o.complete_us.unwrap_or(o.invoke_us))
            .max()
            .unwrap_or(0);
        h.push_str(&violation_svg(
            history,
            &ops,
            &[],
            until,
            "The anomaly's transactions, one lane per client",
        ));
        h.push_str("</div>\n<ol>");
        for id in &ops {
            if let Some(op) = history.op(*id) {
                let _ = write!(h, "<li>{}</li>", esc(&op_title(op)));
            }
        }
        h.push_str("</ol>\n");
    }
}

/// A dependency cycle as a diagram: transactions on a circle, clockwise in cycle order, each
/// edge an arrow labelled with its kind and key (hover for the reason). `uid` keeps the arrow
/// markers' ids unique within the page.
pub(crate) fn cycle_svg(steps: &[Value], uid: usize) -> String {
    let text = |step: &Value, field: &str| step.get(field).and_then(Value::as_str).unwrap_or("").to_string();
    let nodes: Vec<u64> = steps
        .iter()
        .take(CYCLE_NODES)
        .filter_map(|s| s.get("from").and_then(Value::as_u64))
        .collect();
    let n = nodes.len().max(1);
    let radius = 70.0 + 22.0 * n as f64;
    let (width, height) = (2.0 * radius + 260.0, 2.0 * radius + 90.0);
    let (cx, cy) = (width / 2.0, height / 2.0 + 5.0);
    let position = |i: usize| {
        // The first transaction on top, the rest clockwise.
        let angle = -PI / 2.0 + 2.0 * PI * i as f64 / n as f64;
        (cx + radius * angle.cos(), cy + radius * angle.sin())
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"cycle\" viewBox=\"0 0 {width:.0} {height:.0}\" \
         width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\">\
         <title>A dependency cycle: each transaction must precede the next</title>\
         <rect width=\"{width:.0}\" height=\"{height:.0}\" fill=\"#fff\"/><defs>"
    );
    for (kind, _) in KINDS {
        let _ = write!(
            out,
            "<marker id=\"arrow-{uid}-{kind}\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" \
             markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0 0L10 5L0 10z\" fill=\"{}\"/></marker>",
            kind_color(kind)
        );
    }
    out.push_str("</defs>");
    const NODE_W: f64 = 64.0;
    const NODE_H: f64 = 26.0;
    let truncated = steps.len() > CYCLE_NODES;
    for (i, step) in steps.iter().take(CYCLE_NODES).enumerate() {
        let last = i + 1 == steps.len().min(CYCLE_NODES);
        if last && truncated {
            break; // its far end is not drawn
        }
        let (x0, y0) = position(i);
        let (x1, y1) = position(if last { 0 } else { i + 1 });
        let kind = text(step, "kind");
        // A curve bowing away from the centre, stopping at the node boxes' edges.
        let (mx, my) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        let (dx, dy) = (x1 - x0, y1 - y0);
        let length = (dx * dx + dy * dy).sqrt().max(1.0);
        let (mut nx, mut ny) = (-dy / length, dx / length);
        if (mx + nx - cx).powi(2) + (my + ny - cy).powi(2) < (mx - cx).powi(2) + (my - cy).powi(2) {
            (nx, ny) = (-nx, -ny);
        }
        let bow = if n == 2 { 55.0 } else { 18.0 + 4.0 * n as f64 };
        let (qx, qy) = (mx + nx * bow, my + ny * bow);
        let shrink = |(px, py): (f64, f64), (tx, ty): (f64, f64)| {
            let (ux, uy) = (tx - px, ty - py);
            let l = (ux * ux + uy * uy).sqrt().max(1.0);
            // Leave the box: far enough along the tangent to clear half a node.
            let t = ((NODE_W / 2.0) * (ux / l).abs()).max((NODE_H / 2.0) * (uy / l).abs()) + 4.0;
            (px + ux / l * t, py + uy / l * t)
        };
        let (sx, sy) = shrink((x0, y0), (qx, qy));
        let (ex, ey) = shrink((x1, y1), (qx, qy));
        let key = text(step, "key");
        let label = if key.is_empty() {
            kind.clone()
        } else {
            format!("{kind} {key}")
        };
        let label: String = label.chars().take(24).collect();
        // The curve passes half the bow out from the chord's middle; the label sits just beyond.
        let (lx, ly) = (mx + nx * (bow * 0.5 + 8.0), my + ny * (bow * 0.5 + 8.0));
        let anchor = if nx > 0.3 {
            "start"
        } else if nx < -0.3 {
            "end"
        } else {
            "middle"
        };
        let color = kind_color(&kind);
        let _ = write!(
            out,
            "<g class=\"edge {kind}\"><title>{}</title><path d=\"M{sx:.1} {sy:.1}Q{qx:.1} {qy:.1} {ex:.1} {ey:.1}\" \
             fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{} marker-end=\"url(#arrow-{uid}-{kind})\"/>\
             <text x=\"{lx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"{color}\" font-weight=\"bold\">{}</text></g>",
            esc(&text(step, "why")),
            if kind == "realtime" || kind == "process" {
                " stroke-dasharray=\"5 3\""
            } else {
                ""
            },
            ly + 4.0,
            esc(&label)
        );
    }
    for (i, id) in nodes.iter().enumerate() {
        let (x, y) = position(i);
        let _ = write!(
            out,
            "<g class=\"txn\"><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"5\" \
             fill=\"#ede7f6\" stroke=\"#6a1b9a\" stroke-width=\"1.5\"/><text x=\"{x:.1}\" y=\"{:.1}\" \
             text-anchor=\"middle\" font-weight=\"bold\">#{id}</text></g>",
            x - NODE_W / 2.0,
            y - NODE_H / 2.0,
            y + 4.0
        );
    }
    if steps.len() > CYCLE_NODES {
        let _ = write!(
            out,
            "<text x=\"10\" y=\"{:.1}\" fill=\"#666\">{} more transactions in the cycle are not drawn; the \
             text lists them all</text>",
            height - 8.0,
            steps.len() - CYCLE_NODES
        );
    }
    out.push_str("</svg>");
    out
}
