//! The live progress of `chaos run` (and of a campaign: `CampaignBar`): the engine's [`Progress`] reports drawn as a spinner line on
//! stderr (what the run does now, with the workload's counts and rate) and one line on stdout per
//! step outcome — the only place that knows about the terminal.

use std::sync::Mutex;
use std::time::Duration;

use chaos_scenario::campaign::{CampaignObserver, SeedResult, SeedVerdict};
use chaos_scenario::{Progress, RunObserver};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Draws a run's progress.
pub struct Spinner {
    bar: ProgressBar,
    line: Mutex<Line>,
}

/// What the spinner line shows.
#[derive(Default)]
struct Line {
    doing: String,
    ops: Option<String>,
}

impl Line {
    fn render(&self) -> String {
        match &self.ops {
            Some(ops) => format!("{} | {ops}", self.doing),
            None => self.doing.clone(),
        }
    }
}

impl Spinner {
    /// A spinner on stderr, ticking on its own.
    pub fn new() -> Spinner {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Spinner {
            bar,
            line: Mutex::new(Line::default()),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Line)) {
        let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut line);
        self.bar.set_message(line.render());
    }
}

impl RunObserver for Spinner {
    fn progress(&self, progress: Progress) {
        match progress {
            Progress::Doing(what) => self.update(|l| l.doing = what),
            Progress::Ops {
                ok,
                fail,
                unknown,
                rate,
            } => {
                let rate = rate.map(|x| format!("{x:.0} ops/s, ")).unwrap_or_default();
                self.update(|l| l.ops = Some(format!("{rate}ok {ok}, fail {fail}, unknown {unknown}")));
            }
            Progress::Line(line) => self.bar.suspend(|| println!("{line}")),
            Progress::Finished => self.bar.finish_and_clear(),
        }
    }
}

/// Draws a campaign's progress: a bar of seeds done with the failures so far on stderr, and one
/// line per finished seed on stdout.
pub struct CampaignBar {
    bar: ProgressBar,
}

impl CampaignBar {
    /// A bar of `total` seeds on stderr.
    pub fn new(total: usize) -> CampaignBar {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} seeds done {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message("(0 failed)");
        bar.enable_steady_tick(Duration::from_millis(500));
        CampaignBar { bar }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl CampaignObserver for CampaignBar {
    fn finished(&self, result: &SeedResult, done: usize, failed: usize, total: usize) {
        self.bar.set_position(done as u64);
        self.bar.set_message(format!("({failed} failed)"));
        let reason = result
            .reason
            .as_deref()
            .filter(|_| result.verdict != SeedVerdict::Passed)
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        self.bar.suspend(|| {
            println!(
                "[{done}/{total}] seed {} {} in {:.1}s{reason}",
                result.seed,
                result.verdict,
                result.elapsed_ms as f64 / 1000.0
            )
        });
    }
}

/// Draws node creation progress (`AgentEvent::NodesReady`) as a bar on stderr, and other lines
/// above it.
#[derive(Default)]
pub struct NodesBar {
    bar: Mutex<Option<ProgressBar>>,
}

impl NodesBar {
    /// `ready` of `total` nodes answer heartbeats; the bar goes away when all do.
    pub fn ready(&self, ready: u32, total: u32) {
        let mut slot = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        let bar = slot.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(u64::from(total)), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} nodes ready")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        bar.set_length(u64::from(total));
        bar.set_position(u64::from(ready));
        if ready >= total {
            bar.finish_and_clear();
            *slot = None;
        }
    }

    /// Prints `line` on stderr, above the bar when one is drawn.
    pub fn line(&self, line: &str) {
        match &*self.bar.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}
