//! The in-memory reference store behind the adapter protocol (`chaos_adapters::echo`), three ways:
//!
//! * `chaos-adapter-echo`: an adapter with its own store (one client per store: benchmarks,
//!   protocol tests);
//! * `chaos-adapter-echo --serve HOST:PORT`: the store as a server (a system under test), shared
//!   by every connection, speaking the same JSON lines over TCP;
//! * `chaos-adapter-echo --connect HOST:PORT`: an adapter that forwards each operation to such a
//!   server — `unknown` when the connection breaks after the request was sent, `fail` when it
//!   could not be sent.
//!
//! `--lose-every N` makes the store acknowledge every Nth write (add, incr, append) and drop it: a
//! deliberately buggy system. `--test-keys` makes the adapter misbehave on a few keys (see
//! `chaos_adapters::echo`).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chaos_adapters::echo::{EchoStore, test_key};
use chaos_check::{AdapterRequest, AdapterResponse};

const USAGE: &str =
    "usage: chaos-adapter-echo [--serve HOST:PORT | --connect HOST:PORT] [--lose-every N] [--test-keys]";

fn main() {
    chaos_adapters::answer_version("chaos-adapter-echo");
    let mut store = EchoStore::default();
    let mut serve_addr = None;
    let mut connect_addr = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--lose-every" => store.lose_every = args.next().and_then(|n| n.parse().ok()),
            "--test-keys" => store.test_keys = true,
            "--serve" => serve_addr = args.next(),
            "--connect" => connect_addr = args.next(),
            other => fail(&format!("unknown argument `{other}`; {USAGE}")),
        }
    }
    let result = match (serve_addr, connect_addr) {
        (Some(addr), None) => serve(&addr, store),
        (None, Some(addr)) => {
            let test_keys = store.test_keys;
            let mut conn = Forward { addr, stream: None };
            chaos_adapters::serve_stdio(|r| {
                if test_keys && let Some(handled) = test_key(&r) {
                    return handled;
                }
                Some(conn.call(r))
            })
        }
        (None, None) => chaos_adapters::serve_stdio(|r| store.apply(r)),
        (Some(_), Some(_)) => fail(&format!("--serve and --connect exclude each other; {USAGE}")),
    };
    if let Err(e) = result {
        fail(&e.to_string());
    }
}

fn fail(message: &str) -> ! {
    eprintln!("chaos-adapter-echo: {message}");
    std::process::exit(2)
}

/// The store as a TCP server: a thread per connection, one store for all.
fn serve(addr: &str, store: EchoStore) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    eprintln!("chaos-adapter-echo: serving on {}", listener.local_addr()?);
    let store = Arc::new(Mutex::new(store));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let store = store.clone();
        std::thread::spawn(move || {
            let Ok(reader) = stream.try_clone() else { return };
            let _ = chaos_adapters::serve(BufReader::new(reader), stream, |r| {
                let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
                Some(s.perform_now(r))
            });
        });
    }
    Ok(())
}

/// A connection to a `--serve` store, made again after it breaks.
struct Forward {
    addr: String,
    stream: Option<(BufReader<TcpStream>, TcpStream)>,
}

impl Forward {
    fn call(&mut self, req: AdapterRequest) -> AdapterResponse {
        let id = req.id;
        if self.stream.is_none() {
            match TcpStream::connect(&self.addr).and_then(|s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                Ok((BufReader::new(s.try_clone()?), s))
            }) {
                Ok(pair) => self.stream = Some(pair),
                Err(e) => return AdapterResponse::fail(id, format!("connecting to {}: {e}", self.addr)),
            }
        }
        let Some((reader, writer)) = self.stream.as_mut() else {
            return AdapterResponse::fail(id, "no connection");
        };
        let mut line = serde_json::to_string(&req).unwrap_or_default();
        line.push('\n');
        if let Err(e) = writer.write_all(line.as_bytes()) {
            self.stream = None;
            return AdapterResponse::unknown(id, format!("sending to {}: {e}", self.addr));
        }
        let mut answer = String::new();
        match reader.read_line(&mut answer) {
            Ok(n) if n > 0 => match serde_json::from_str(&answer) {
                Ok(resp) => resp,
                Err(e) => {
                    self.stream = None;
                    AdapterResponse::unknown(id, format!("bad answer from {}: {e}", self.addr))
                }
            },
            Ok(_) => {
                self.stream = None;
                AdapterResponse::unknown(id, format!("{} closed the connection", self.addr))
            }
            Err(e) => {
                self.stream = None;
                AdapterResponse::unknown(id, format!("waiting for {}: {e}", self.addr))
            }
        }
    }
}
