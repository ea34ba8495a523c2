//! `chaos check HISTORY.jsonl [--checker NAME...] [--consistency-model MODEL] [--minimize
//! off|STEPS|DURATION] [--report DIR] [--json]`: re-run the checkers offline on a stored history
//! (e.g. `runs/<scenario>/latest/history.jsonl`).

use std::path::PathBuf;

use chaos_check::{CHECKER_NAMES, CheckOptions, ConsistencyModel, Minimize, Validity, Verdict};
use serde_json::Value;

/// Arguments of `chaos check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The history file (JSON lines, see docs/history.md).
    pub history: PathBuf,
    /// A checker to run (repeatable): linearizability, list-append, set, counter, unique-ids,
    /// availability. Default: every checker whose operations appear in the history.
    #[arg(long = "checker", value_name = "NAME")]
    pub checkers: Vec<String>,
    /// The consistency model the list-append checker holds transactions to: read-committed,
    /// snapshot-isolation, serializable or strict-serializable.
    #[arg(
        long,
        value_name = "MODEL",
        default_value = "strict-serializable",
        value_parser = |s: &str| s.parse::<ConsistencyModel>()
    )]
    pub consistency_model: ConsistencyModel,
    /// How much work goes into shrinking a linearizability violation to the operations it needs:
    /// `off`, a number of search steps per key (default 20000000), or a time for the whole check
    /// (`250ms`, `2s`). It never changes a verdict, only how short the list shown is.
    #[arg(long, value_name = "off|STEPS|DURATION", value_parser = |s: &str| s.parse::<Minimize>())]
    pub minimize: Option<Minimize>,
    /// Also write report.html, SVG plots and junit.xml into this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Print the verdict as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Prints the verdict. Exit code 0 when valid, 1 when invalid, 3 when the checkers could not
/// decide (e.g. a search budget ran out), 2 for a bad history file or checker name.
pub fn run(args: CheckArgs) -> anyhow::Result<u8> {
    let options = CheckOptions {
        minimize: args.minimize.unwrap_or_default(),
        consistency_model: args.consistency_model,
    };
    let (history, report) =
        match chaos_check::check_history_file_with(&args.history, &args.checkers, &options) {
            Ok(checked) => checked,
            Err(e) => {
                eprintln!("error: {e}");
                if args.checkers.iter().any(|c| !CHECKER_NAMES.contains(&c.as_str())) {
                    eprintln!("the checkers are: {}", CHECKER_NAMES.join(", "));
                }
                return Ok(2);
            }
        };
    if let Some(cut) = &history.cut_tail {
        eprintln!(
            "note: {} line {} is cut mid-record ({} bytes, no newline): the run was killed while \
             writing it; it is left out and the {} operations before it are judged",
            args.history.display(),
            cut.line,
            cut.bytes,
            history.ops.len()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.verdict)?);
    } else {
        print_verdict(&report.verdict);
    }
    if let Some(dir) = &args.report {
        let files = chaos_check::write_report(dir, &history, &report)?;
        eprintln!("report: {}", files.html.display());
    }
    Ok(match report.verdict.valid {
        Validity::Valid => 0,
        Validity::Invalid => 1,
        Validity::Unknown => 3,
    })
}

/// The combined verdict first (`verdict: …`), then each checker's, indented.
fn print_verdict(v: &Verdict) {
    if v.children.is_empty() {
        print_one(v, 0);
        return;
    }
    println!("verdict: {} — {}", v.valid.as_str(), v.explanation);
    for child in &v.children {
        print_one(child, 1);
    }
}

fn print_one(v: &Verdict, depth: usize) {
    let indent = "  ".repeat(depth);
    println!("{indent}{}: {} — {}", v.checker, v.valid.as_str(), v.explanation);
    let ids = |value: &Value| -> String {
        let ids: Vec<u64> = value
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        list(&ids)
    };
    // Linearizability, per bad key: the operations that cannot be ordered, and the context
    // operations counted as "may or may not have taken effect" alongside them.
    let keys = v.details.get("invalid").and_then(Value::as_array);
    match keys {
        Some(keys) if v.checker == "linearizability" && !keys.is_empty() => {
            for key in keys {
                let name = key.get("key").and_then(Value::as_str).unwrap_or("?");
                println!("{indent}  key {name:?}: operations: {}", ids(&key["ops"]));
                let context = ids(&key["context_ops"]);
                if !context.is_empty() {
                    println!(
                        "{indent}  key {name:?}: context, counted as may or may not have taken effect: {context}"
                    );
                }
                let minimizing = key
                    .get("minimizing")
                    .and_then(Value::as_str)
                    .unwrap_or("complete");
                if minimizing != "complete" {
                    println!(
                        "{indent}  key {name:?}: these lists are not minimal (minimizing {minimizing}); the \
                         violation itself is certain"
                    );
                }
            }
        }
        _ if !v.ops.is_empty() => println!("{indent}  operations: {}", list(&v.ops)),
        _ => {}
    }
}

/// Operation ids, the first [`LISTED`] of them (all are in `--json`).
fn list(ids: &[u64]) -> String {
    const LISTED: usize = 40;
    let mut text: Vec<String> = ids.iter().take(LISTED).map(u64::to_string).collect();
    if ids.len() > LISTED {
        text.push(format!("… and {} more (all in --json)", ids.len() - LISTED));
    }
    text.join(", ")
}
