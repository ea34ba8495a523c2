//! `chaos check HISTORY.jsonl [--checker NAME...] [--report DIR] [--json]`: re-run the checkers
//! offline on a stored history (e.g. `runs/<scenario>/latest/history.jsonl`).

use std::path::PathBuf;

use chaos_check::{CHECKER_NAMES, Validity, Verdict};

/// Arguments of `chaos check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The history file (JSON lines, see docs/history.md).
    pub history: PathBuf,
    /// A checker to run (repeatable): linearizability, set, counter, unique-ids, availability.
    /// Default: every checker whose operations appear in the history.
    #[arg(long = "checker", value_name = "NAME")]
    pub checkers: Vec<String>,
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
    let (history, report) = match chaos_check::check_history_file(&args.history, &args.checkers) {
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
        print_verdict(&report.verdict, 0);
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

fn print_verdict(v: &Verdict, depth: usize) {
    let indent = "  ".repeat(depth);
    println!("{indent}{}: {} — {}", v.checker, v.valid.as_str(), v.explanation);
    if !v.ops.is_empty() {
        let ops: Vec<String> = v.ops.iter().map(u64::to_string).collect();
        println!("{indent}  operations: {}", ops.join(", "));
    }
    for child in &v.children {
        print_verdict(child, depth + 1);
    }
}
