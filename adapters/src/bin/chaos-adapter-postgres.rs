//! `chaos-adapter-postgres [--addr HOST:PORT] [--user U] [--database D] [--password P]
//! [--timeout-ms N] [--isolation LEVEL]`: the PostgreSQL adapter (`chaos_adapters::pg` says how
//! each kind maps onto SQL). Defaults: `127.0.0.1:5432`, user and database `postgres`, 2000 ms per
//! reply, `txn` operations at `serializable` (or `read-committed`, `repeatable-read`,
//! `read-uncommitted`).

use std::time::Duration;

use chaos_adapters::pg::{Isolation, PgAdapter};

const USAGE: &str = "usage: chaos-adapter-postgres [--addr HOST:PORT] [--user U] [--database D] [--password P] [--timeout-ms N] [--isolation LEVEL]";

fn main() {
    let mut addr = "127.0.0.1:5432".to_string();
    let mut user = "postgres".to_string();
    let mut database = "postgres".to_string();
    let mut password = None;
    let mut timeout_ms = 2000u64;
    let mut isolation = Isolation::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--addr", Some(v)) => addr = v,
            ("--user", Some(v)) => user = v,
            ("--database", Some(v)) => database = v,
            ("--password", Some(v)) => password = Some(v),
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
    let mut adapter = PgAdapter::new(addr, user, database, password, Duration::from_millis(timeout_ms))
        .with_isolation(isolation);
    if let Err(e) = chaos_adapters::serve_stdio(|r| Some(adapter.apply(r))) {
        fail(&e.to_string());
    }
}

fn fail(message: &str) -> ! {
    eprintln!("chaos-adapter-postgres: {message}");
    std::process::exit(2)
}
