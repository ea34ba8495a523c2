//! The swimlane picture of a linearizability violation: one lane per client, each operation a
//! bar from invocation to completion.

#[allow(unused_imports)]
use super::*;

/// A short label for an operation bar: `write 3`, `read → 3`, `cas 1→2`, `delete`.
fn op_label(op: &Op) -> String {
    let v = |v: &Option<serde_json::Value>| v.as_ref().map(show).unwrap_or_else(|| "?".into());
    let label = match op.kind {
        OpKind::Read => format!("read → {}", v(&op.value)),
        OpKind::Write => format!("write {}", v(&op.value)),
        OpKind::Cas => format!("cas {}→{}", v(&op.expected), v(&op.value)),
        OpKind::Delete => "delete".to_string(),
        OpKind::Append => format!("append {}", v(&op.value)),
        OpKind::Txn => op
            .value
            .as_ref()
            .map(|value| describe_txn(value, 60))
            .unwrap_or_else(|| "txn".into()),
        other => other.as_str().to_string(),
    };
    format!("#{} {label}", op.id)
}

/// The swimlane picture of a violation: one lane per client, each operation a bar from invocation
/// to completion. `core` operations are the ones that cannot be linearized together; `context`
/// ones may or may not have taken effect (drawn dashed, open-ended if they never completed).
pub(crate) fn violation_svg(
    history: &History,
    core: &[u64],
    context: &[u64],
    until_us: u64,
    title: &str,
) -> String {
    let core_set: HashSet<u64> = core.iter().copied().collect();
    let mut ops: Vec<&Op> = history
        .ops
        .iter()
        .filter(|o| core_set.contains(&o.id) || context.contains(&o.id))
        .collect();
    ops.sort_by_key(|o| (o.invoke_us, o.id));
    let clients: BTreeSet<u64> = ops.iter().map(|o| o.client).collect();
    let lane_of: BTreeMap<u64, usize> = clients.iter().enumerate().map(|(i, c)| (*c, i)).collect();
    let start = ops.iter().map(|o| o.invoke_us).min().unwrap_or(0);
    let mut end = ops
        .iter()
        .map(|o| o.complete_us.unwrap_or(o.invoke_us).max(o.invoke_us))
        .max()
        .unwrap_or(start);
    if ops.iter().any(|o| o.complete_us.is_none()) {
        end = end.max(until_us);
    }
    let end = end.max(start + 1);
    let (width, left, right) = (1000.0, 90.0, 980.0);
    // An ordinal time axis: every invocation and completion gets its own evenly spaced slot. Real
    // time order, all that linearizability depends on, is kept, and a violation spread over
    // minutes stays readable (exact times are in each bar's hover title).
    let mut events: Vec<u64> = ops
        .iter()
        .flat_map(|o| [o.invoke_us, o.complete_us.unwrap_or(end)])
        .chain([start, end])
        .collect();
    events.sort_unstable();
    events.dedup();
    let slots = (events.len().max(2) - 1) as f64;
    let x = |t: u64| left + events.partition_point(|&e| e < t) as f64 / slots * (right - left);
    const LANE: f64 = 36.0;
    let height = 30.0 + clients.len() as f64 * LANE + 24.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"violation\" viewBox=\"0 0 {width} {height:.0}\" \
         width=\"{width}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\">\
         <title>{}</title><rect width=\"{width}\" height=\"{height:.0}\" fill=\"#fff\"/>",
        esc(title)
    );
    for (client, lane) in &lane_of {
        let y = 20.0 + *lane as f64 * LANE;
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">client {client}</text>\
             <line x1=\"{left}\" y1=\"{:.1}\" x2=\"{right}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            left - 8.0,
            y + 18.0,
            y + LANE - 2.0,
            y + LANE - 2.0
        );
    }
    for op in &ops {
        let lane = lane_of.get(&op.client).copied().unwrap_or(0);
        let y = 20.0 + lane as f64 * LANE + 4.0;
        let x0 = x(op.invoke_us);
        let open = op.complete_us.is_none() || !core_set.contains(&op.id);
        let x1 = x(op.complete_us.unwrap_or(end)).max(x0 + 3.0);
        let (fill, stroke, dash) = if core_set.contains(&op.id) {
            ("#ede7f6", OFFENDING_COLOR, "")
        } else {
            ("#fafafa", "#888", " stroke-dasharray=\"4 3\"")
        };
        // Labels that do not fit their bar shrink to the id, or go (the hover title has it all).
        let suffix = if open && op.complete_us.is_none() {
            " (no reply)"
        } else if open {
            " (maybe)"
        } else {
            ""
        };
        let fits = |text: &str| text.chars().count() as f64 * 6.2 + 8.0 <= x1 - x0;
        let full = format!("{}{suffix}", op_label(op));
        let short = format!("#{}", op.id);
        let label = if fits(&full) {
            full
        } else if fits(&short) {
            short
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"22\" rx=\"3\" fill=\"{fill}\" \
             stroke=\"{stroke}\" stroke-width=\"1.5\"{dash}><title>{}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#111\" pointer-events=\"none\">{}</text>",
            x1 - x0,
            esc(&op_title(op)),
            x0 + 4.0,
            y + 15.0,
            esc(&label),
        );
    }
    let _ = write!(
        out,
        "<text x=\"{left}\" y=\"{:.1}\" fill=\"#444\">{}</text><text x=\"{right}\" y=\"{:.1}\" \
         text-anchor=\"end\" fill=\"#444\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" \
         fill=\"#888\">events evenly spaced in time order</text></svg>",
        height - 6.0,
        secs(start),
        height - 6.0,
        secs(end),
        (left + right) / 2.0,
        height - 6.0
    );
    out
}
