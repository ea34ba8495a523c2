//! The timeline's "notes" lane: a mark at each measurement and warning of the run, so the
//! figures and the doubts sit on the same time axis as the faults they concern.

use std::fmt::Write;

use super::{Timeline, esc};

/// Colour of a measurement mark.
pub(crate) const MEASUREMENT_COLOR: &str = "#1565c0";
/// Colour of a warning mark.
pub(crate) const WARNING_COLOR: &str = "#ef6c00";

impl Timeline<'_> {
    /// One lane of marks (measurements as circles, warnings as triangles, each with its figures
    /// or text as a tooltip); nothing when the run has neither. Returns the height used.
    pub(super) fn marks(&self, out: &mut String, top: f64) -> f64 {
        const LANE: f64 = 16.0;
        let (measurements, warnings) = (&self.history.measurements, &self.history.warnings);
        if measurements.is_empty() && warnings.is_empty() {
            return 0.0;
        }
        let x = |us: u64| self.axis.x(us.min(self.axis.end_us));
        let mid = top + LANE / 2.0;
        let _ = write!(
            out,
            "<g class=\"marks\"><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">notes</text>\
             <rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{LANE}\" fill=\"#f3f3f3\"/>",
            self.axis.left - 6.0,
            top + 12.0,
            self.axis.left,
            self.axis.width()
        );
        for m in measurements {
            let _ = write!(
                out,
                "<circle class=\"measurement\" cx=\"{:.1}\" cy=\"{mid:.1}\" r=\"5\" fill=\"{MEASUREMENT_COLOR}\">\
                 <title>measurement {} → {} ({}) {}: {:.2} Mbit/s, loss {:.1} %</title></circle>",
                x(m.time_us),
                esc(&m.from),
                esc(&m.to),
                esc(&m.address),
                esc(&m.protocol),
                m.throughput_bps / 1e6,
                m.loss_percent
            );
        }
        for w in warnings {
            let cx = x(w.time_us);
            let _ = write!(
                out,
                "<polygon class=\"warning\" points=\"{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}\" fill=\"{WARNING_COLOR}\">\
                 <title>warning{}: {}</title></polygon>",
                cx,
                top + 2.0,
                cx - 6.0,
                top + LANE - 2.0,
                cx + 6.0,
                top + LANE - 2.0,
                w.case
                    .as_deref()
                    .map(|c| format!(" ({})", esc(c)))
                    .unwrap_or_default(),
                esc(&w.message)
            );
        }
        out.push_str("</g>");
        LANE + 4.0
    }
}
