//! Operation histories and the checkers that judge them.
//!
//! A run records what its clients saw as a [`History`] (JSON lines, see `docs/history.md`): every
//! operation with its invocation and completion time and outcome, and every fault injected or
//! healed. Checkers are pure functions of a history ([`Checker`]): [`Linearizability`] of per-key
//! registers (appending ones too), isolation anomalies of transactions ([`ListAppend`], Elle's
//! list-append inference), lost acknowledged writes ([`SetChecker`]), [`CounterChecker`],
//! [`UniqueIdsChecker`], and [`AvailabilityChecker`] (availability per fault case and recovery per
//! fault). [`Compose`] runs several. [`write_report`] renders a self-contained `report.html`, SVG plots and a JUnit
//! file.
//!
//! ```
//! use chaos_check::{History, check_history};
//! let text = r#"{"type":"header","version":1}
//! {"type":"op","id":1,"client":0,"kind":"write","key":"x","value":1,"invoke_us":0,"complete_us":10,"outcome":"ok"}
//! {"type":"op","id":2,"client":1,"kind":"read","key":"x","value":1,"invoke_us":20,"complete_us":30,"outcome":"ok"}
//! "#;
//! let history = History::parse(text, "example").unwrap();
//! let report = check_history(&history, &[]).unwrap();
//! assert_eq!(report.verdict.valid, chaos_check::Validity::Valid);
//! ```

mod adapter;
mod anomaly_report;
mod availability;
mod checker;
mod counter;
mod elle;
mod fxhash;
mod history;
mod linearizability;
mod report;
mod set;
mod svg;
mod unique_ids;

use std::path::{Path, PathBuf};

pub use adapter::{AdapterRequest, AdapterResponse};
pub use availability::{
    AvailabilityChecker, AvailabilityOptions, AvailabilityReport, CaseResult, FaultWindow, OpCounts, analyze,
};
pub use checker::{Checker, Compose, Validity, Verdict};
pub use counter::CounterChecker;
pub use elle::{ConsistencyModel, ListAppend};
pub use history::{
    CutTail, FaultEvent, FaultPhase, HISTORY_VERSION, Header, History, HistoryError, HistoryWriter,
    MICRO_OP_NAMES, MeasurementEvent, MicroOp, Op, OpKind, Outcome, Record, WarningEvent, micro_ops,
};
pub use linearizability::{Budget, Linearizability, Minimize};
pub use report::{ReportFiles, write_report};
pub use set::SetChecker;
pub use svg::esc as escape_markup;
pub use unique_ids::UniqueIdsChecker;

/// One checker as the crate offers it: its name, whether a history has anything for it, and how
/// to make it. Adding a checker is its module plus one line in [`checkers!`]'s invocation below.
struct Entry {
    name: &'static str,
    applies: fn(&History) -> bool,
    make: fn(&CheckOptions) -> Box<dyn Checker>,
}

fn has(history: &History, pred: fn(OpKind) -> bool) -> bool {
    history.ops.iter().any(|o| pred(o.kind))
}

/// Defines [`CHECKER_NAMES`] and the table behind [`checker_with_options`] and
/// [`default_checker_names`] from one list, so a checker is named once.
macro_rules! checkers {
    ($($name:literal => applies $applies:expr, make $make:expr;)*) => {
        /// The names `chaos check --checker NAME` accepts, in the order they run.
        pub const CHECKER_NAMES: &[&str] = &[$($name),*];
        const CHECKERS: &[Entry] = &[$(Entry { name: $name, applies: $applies, make: $make }),*];
    };
}

checkers! {
    "linearizability" => applies |h| has(h, OpKind::is_register), make |o| Box::new(Linearizability {
        minimize: o.minimize,
        ..Linearizability::default()
    });
    "list-append" => applies |h| has(h, |k| k == OpKind::Txn), make |o| Box::new(ListAppend::new(o.consistency_model));
    "set" => applies |h| has(h, |k| matches!(k, OpKind::Add | OpKind::ReadSet)), make |_| Box::new(SetChecker);
    "counter" => applies |h| has(h, |k| matches!(k, OpKind::Incr | OpKind::ReadCounter)), make |_| Box::new(CounterChecker);
    "unique-ids" => applies |h| has(h, |k| k == OpKind::Generate), make |_| Box::new(UniqueIdsChecker);
    "availability" => applies |h| !h.faults.is_empty(), make |_| Box::new(AvailabilityChecker::default());
}

/// Errors of the check entry points.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The history file is unreadable or malformed (names the file, line and field).
    #[error(transparent)]
    History(#[from] HistoryError),
    /// A checker name that does not exist.
    #[error("unknown checker `{name}`; the checkers are: {}", CHECKER_NAMES.join(", "))]
    UnknownChecker {
        /// The name given.
        name: String,
    },
    /// A report file could not be written.
    #[error("{}: cannot write the report: {cause}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error (part of the message, so not also the `source()`).
        cause: std::io::Error,
    },
}

/// The outcome of checking a history.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// The combined verdict; `children` holds one verdict per checker.
    pub verdict: Verdict,
    /// Availability per fault case (always computed, for the report's case table).
    pub availability: AvailabilityReport,
}

/// Settings of the checkers that have any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// How far linearizability shrinks a violation (never changes a verdict).
    pub minimize: Minimize,
    /// The model the list-append checker holds transactions to.
    pub consistency_model: ConsistencyModel,
}

/// The checker called `name` (one of [`CHECKER_NAMES`]), with default settings.
pub fn checker_by_name(name: &str) -> Result<Box<dyn Checker>, CheckError> {
    checker_with_options(name, &CheckOptions::default())
}

/// The checker called `name` (one of [`CHECKER_NAMES`]), with these settings.
pub fn checker_with_options(name: &str, options: &CheckOptions) -> Result<Box<dyn Checker>, CheckError> {
    CHECKERS
        .iter()
        .find(|e| e.name == name)
        .map(|e| (e.make)(options))
        .ok_or_else(|| CheckError::UnknownChecker {
            name: name.to_string(),
        })
}

/// The checkers that have something to check in this history: linearizability if it has register
/// operations, list-append if it has transactions, set / counter / unique-ids if it has theirs,
/// availability if it has fault events.
pub fn default_checker_names(history: &History) -> Vec<&'static str> {
    CHECKERS
        .iter()
        .filter(|e| (e.applies)(history))
        .map(|e| e.name)
        .collect()
}

/// Runs the named checkers (all that apply, see [`default_checker_names`], when `checkers` is
/// empty) on a history, with default settings.
pub fn check_history(history: &History, checkers: &[String]) -> Result<CheckReport, CheckError> {
    check_history_with(history, checkers, &CheckOptions::default())
}

/// Runs the named checkers (all that apply when `checkers` is empty) on a history, with these
/// settings.
pub fn check_history_with(
    history: &History,
    checkers: &[String],
    options: &CheckOptions,
) -> Result<CheckReport, CheckError> {
    let names: Vec<String> = if checkers.is_empty() {
        default_checker_names(history)
            .into_iter()
            .map(str::to_string)
            .collect()
    } else {
        checkers.to_vec()
    };
    let selected = names
        .iter()
        .map(|n| checker_with_options(n, options))
        .collect::<Result<Vec<_>, _>>()?;
    let verdict = Compose::new(selected).check(history);
    let availability = analyze(history, &AvailabilityOptions::from_history(history));
    Ok(CheckReport {
        verdict,
        availability,
    })
}

/// Reads a history file and runs the named checkers on it (see [`check_history`]). Returns the
/// history too, for [`write_report`].
pub fn check_history_file(path: &Path, checkers: &[String]) -> Result<(History, CheckReport), CheckError> {
    check_history_file_with(path, checkers, &CheckOptions::default())
}

/// [`check_history_file`] with settings.
pub fn check_history_file_with(
    path: &Path,
    checkers: &[String],
    options: &CheckOptions,
) -> Result<(History, CheckReport), CheckError> {
    let history = History::read_file(path)?;
    let report = check_history_with(&history, checkers, options)?;
    Ok((history, report))
}
