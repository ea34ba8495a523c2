//! `chaos-adapter-zookeeper [--servers HOST:PORT[,HOST:PORT…]] [--root /chaos] [--timeout-ms N]
//! [--session-timeout-ms N] [--plain-reads]`: the ZooKeeper adapter (`chaos_adapters::zk` says how each kind
//! maps onto znodes and why its reads are linearizable). Servers are tried in order — put the
//! node-local one first. Defaults: `127.0.0.1:2181`, root `/chaos`, 1000 ms per call (connecting
//! included), sessions of 6000 ms. `--plain-reads` skips the read confirmation (sequentially
//! consistent reads, as most clients make): only for watching the checker catch stale reads.

use std::time::Duration;

use chaos_adapters::zk::{ZkAdapter, ZkClient};

const USAGE: &str = "usage: chaos-adapter-zookeeper [--servers HOST:PORT[,HOST:PORT...]] [--root /chaos] [--timeout-ms N] [--session-timeout-ms N] [--plain-reads]";

fn main() {
    chaos_adapters::answer_version("chaos-adapter-zookeeper");
    let mut servers = vec!["127.0.0.1:2181".to_string()];
    let mut root = "/chaos".to_string();
    let mut timeout_ms = 1000u64;
    let mut session_ms = 6000u64;
    let mut plain_reads = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--plain-reads" {
            plain_reads = true;
            continue;
        }
        let value = args.next();
        match (arg.as_str(), value) {
            ("--servers", Some(v)) => {
                servers = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if servers.is_empty() {
                    fail("--servers takes a comma-separated list of HOST:PORT, got nothing");
                }
            }
            ("--root", Some(v)) if v.starts_with('/') && v.len() > 1 => root = v,
            ("--root", Some(v)) => fail(&format!(
                "--root takes an absolute znode path other than /, not `{v}`"
            )),
            ("--timeout-ms", Some(v)) => timeout_ms = millis("--timeout-ms", &v),
            ("--session-timeout-ms", Some(v)) => session_ms = millis("--session-timeout-ms", &v),
            (other, _) => fail(&format!("unknown or incomplete argument `{other}`; {USAGE}")),
        }
    }
    let client = ZkClient::new(
        servers,
        Duration::from_millis(timeout_ms),
        Duration::from_millis(session_ms),
    );
    let mut adapter = ZkAdapter::new(client, root).plain_reads(plain_reads);
    let served = chaos_adapters::serve_stdio(|r| Some(adapter.apply(r)));
    adapter.close();
    if let Err(e) = served {
        fail(&e.to_string());
    }
}

fn millis(flag: &str, v: &str) -> u64 {
    match v.parse() {
        Ok(n) if n > 0 => n,
        _ => fail(&format!(
            "{flag} takes a positive number of milliseconds, not `{v}`"
        )),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("chaos-adapter-zookeeper: {message}");
    std::process::exit(2)
}
