//! `chaos-adapter-redis [--addr HOST:PORT] [--prefix PREFIX] [--timeout-ms N]`: the Redis
//! adapter (`chaos_adapters::resp` says how each kind maps onto Redis commands). Defaults:
//! `127.0.0.1:6379`, prefix `chaos:`, 1000 ms per reply.

use std::time::Duration;

use chaos_adapters::resp::RedisAdapter;

const USAGE: &str = "usage: chaos-adapter-redis [--addr HOST:PORT] [--prefix PREFIX] [--timeout-ms N]";

fn main() {
    chaos_adapters::answer_version("chaos-adapter-redis");
    let mut addr = "127.0.0.1:6379".to_string();
    let mut prefix = "chaos:".to_string();
    let mut timeout_ms = 1000u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--addr", Some(v)) => addr = v,
            ("--prefix", Some(v)) => prefix = v,
            ("--timeout-ms", Some(v)) => match v.parse() {
                Ok(n) => timeout_ms = n,
                Err(_) => fail(&format!("--timeout-ms takes milliseconds, not `{v}`")),
            },
            (other, _) => fail(&format!("unknown or incomplete argument `{other}`; {USAGE}")),
        }
    }
    let mut adapter = RedisAdapter::new(addr, prefix, Duration::from_millis(timeout_ms));
    if let Err(e) = chaos_adapters::serve_stdio(|r| Some(adapter.apply(r))) {
        fail(&e.to_string());
    }
}

fn fail(message: &str) -> ! {
    eprintln!("chaos-adapter-redis: {message}");
    std::process::exit(2)
}
