//! Client adapters: long-lived processes that speak chaos's JSON-lines operation protocol
//! ([`chaos_check::AdapterRequest`] in, [`chaos_check::AdapterResponse`] out; `docs/adapters.md`)
//! and perform each operation on a real system.
//!
//! * [`serve`]: the protocol loop a Rust adapter needs — read a request per line from stdin,
//!   answer it on stdout, flush.
//! * [`echo::EchoStore`]: an in-memory store for every history kind (`chaos-adapter-echo`), the
//!   reference for tests and benchmarks, with switches that make it misbehave on purpose.
//! * `chaos-adapter-redis`: Redis over RESP ([`resp`]).
//!
//! The binaries depend on nothing but this crate, `chaos-check`'s protocol types and
//! `serde_json`, so they build statically and can be shipped to any node.

pub mod echo;
pub mod pg;
pub mod pg_failover;
pub mod pg_wire;
pub mod resp;
pub mod zk;

use std::io::{BufRead, Write};

use chaos_check::{AdapterRequest, AdapterResponse};

/// Answers requests read from `input` (one JSON object per line) on `output` until `input`
/// ends. A line that is not a request is reported on stderr and skipped: the runner times the
/// operation out. `handle` returning `None` answers nothing (for adapters that simulate a
/// hang); the runner then times the operation out too.
pub fn serve<R: BufRead, W: Write>(
    input: R,
    mut output: W,
    mut handle: impl FnMut(AdapterRequest) -> Option<AdapterResponse>,
) -> std::io::Result<()> {
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let request: AdapterRequest = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("adapter: ignoring a line that is not a request ({e}): {line}");
                continue;
            }
        };
        if let Some(response) = handle(request) {
            serde_json::to_writer(&mut output, &response)?;
            output.write_all(b"\n")?;
            output.flush()?;
        }
    }
    Ok(())
}

/// Answers `--version` as the first argument: prints `<name> <version>` and exits. Each adapter
/// calls it first, so that chaos, which ships the adapter of its own version to nodes
/// (`[[setup.ship]] builtin`), can tell a stale or foreign binary from the right one.
pub fn answer_version(name: &str) {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("{name} {}", env!("CARGO_PKG_VERSION"));
        std::process::exit(0);
    }
}

/// [`serve`] on the process's stdin and stdout.
pub fn serve_stdio(handle: impl FnMut(AdapterRequest) -> Option<AdapterResponse>) -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    serve(stdin.lock(), stdout.lock(), handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaos_check::Outcome;

    #[test]
    fn serve_answers_each_request_and_skips_junk() {
        let input = b"{\"id\":1,\"kind\":\"write\",\"key\":\"k\",\"value\":5}\nnot json\n\n{\"id\":2,\"kind\":\"read\",\"key\":\"k\"}\n";
        let mut out = Vec::new();
        let mut store = echo::EchoStore::default();
        serve(&input[..], &mut out, |r| store.apply(r)).unwrap();
        let lines: Vec<AdapterResponse> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].outcome, Outcome::Ok);
        assert_eq!(lines[1].value, Some(serde_json::Value::from(5)));
    }
}
