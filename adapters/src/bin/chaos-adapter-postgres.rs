//! `chaos-adapter-postgres [--addr HOST:PORT] [--user U] [--database D] [--password P]
//! [--timeout-ms N] [--isolation LEVEL] [--hosts H1:P,H2:P,…]`: the PostgreSQL adapter
//! (`chaos_adapters::pg` says how each kind maps onto SQL). Defaults: `127.0.0.1:5432`, user and
//! database `postgres`, 2000 ms per reply (and for the TCP connect, and again for the startup
//! exchange), `txn` operations at `serializable` (or `read-committed`, `repeatable-read`,
//! `read-uncommitted`). `--hosts` instead of `--addr`: a replicated cluster, each operation sent
//! to the current primary (`chaos_adapters::pg_failover`).

use std::time::Duration;

use chaos_adapters::pg::{Isolation, PgAdapter};
use chaos_adapters::pg_failover::{FailoverPg, Login};

const USAGE: &str = "usage: chaos-adapter-postgres [--addr HOST:PORT] [--user U] [--database D] [--password P] [--timeout-ms N] [--isolation LEVEL] [--hosts H1:P,H2:P,...]";

fn main() {
    chaos_adapters::answer_version("chaos-adapter-postgres");
    let mut addr = "127.0.0.1:5432".to_string();
    let mut user = "postgres".to_string();
    let mut database = "postgres".to_string();
    let mut password = None;
    let mut timeout_ms = 2000u64;
    let mut isolation = Isolation::default();
    let mut hosts: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--addr", Some(v)) => addr = v,
            ("--user", Some(v)) => user = v,
            ("--database", Some(v)) => database = v,
            ("--password", Some(v)) => password = Some(v),
            ("--hosts", Some(v)) => {
                hosts = v.split(',').filter(|h| !h.is_empty()).map(String::from).collect()
            }
            ("--timeout-ms", Some(v)) => match v.parse() {
                Ok(n) => timeout_ms = n,
                Err(_) => fail(&format!("--timeout-ms takes milliseconds, not `{v}`")),
            },
            ("--isolation", Some(v)) => match v.parse() {
                Ok(level) => isolation = level,
                Err(e) => fail(&format!("--isolation: {e}")),
            },
            (other, _) => fail(&format!("unknown or incomplete argument `{other}`; {USAGE}")),
        }
    }
    let timeout = Duration::from_millis(timeout_ms);
    let served = if hosts.is_empty() {
        let mut adapter = PgAdapter::new(addr, user, database, password, timeout).with_isolation(isolation);
        chaos_adapters::serve_stdio(|r| Some(adapter.apply(r)))
    } else {
        let login = Login {
            user,
            database,
            password,
            timeout,
            isolation,
        };
        let mut adapter = FailoverPg::new(hosts, login);
        chaos_adapters::serve_stdio(|r| Some(adapter.apply(r)))
    };
    if let Err(e) = served {
        fail(&e.to_string());
    }
}

fn fail(message: &str) -> ! {
    eprintln!("chaos-adapter-postgres: {message}");
    std::process::exit(2)
}
