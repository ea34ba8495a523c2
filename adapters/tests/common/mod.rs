//! A real PostgreSQL 15 for the adapter tests: whether this machine can run one, a fresh data
//! directory (initdb, trust authentication) that the `postgres` user owns, and a server on it.

#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chaos_adapters::pg::PgConnection;

/// Debian's PostgreSQL 15 binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Whether `test` can run a PostgreSQL server here; when not, reports why through
/// `chaos_testkit::skip` (which fails the test when the capability is required) and says no.
pub fn can_run_postgres(test: &str) -> bool {
    if !Path::new(PG_BIN).join("postgres").is_file() {
        chaos_testkit::skip(
            test,
            "postgres",
            &format!("{PG_BIN}/postgres is missing (apt-get install postgresql)"),
        );
        return false;
    }
    if effective_uid() != 0 {
        chaos_testkit::skip(
            test,
            "root",
            &"PostgreSQL runs as the postgres user, which needs root to switch to",
        );
        return false;
    }
    true
}

/// Creates `dir/pg/data` with initdb (trust authentication, user `postgres`) and returns it.
/// `dir` is made traversable, since the data directory belongs to postgres.
pub fn initdb(dir: &Path) -> PathBuf {
    let pg = dir.join("pg");
    std::fs::create_dir(&pg).unwrap();
    for (program, args) in [
        ("chmod", vec!["755", dir.to_str().unwrap()]),
        ("chown", vec!["postgres", pg.to_str().unwrap()]),
    ] {
        let status = std::process::Command::new(program).args(&args).status().unwrap();
        assert!(status.success(), "{program} {args:?}: {status}");
    }
    let data = pg.join("data");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
        .arg(Path::new(PG_BIN).join("initdb"))
        .args([
            "-D",
            data.to_str().unwrap(),
            "--auth=trust",
            "-U",
            "postgres",
            "-N",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb -D {}: {}",
        data.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    data
}

/// The `setpriv … postgres …` command line that starts a server on `data` listening on
/// 127.0.0.1:`port` (fsync off: a test's data need not survive the machine; deadlocks found
/// after 20 ms). `setpriv` execs the
/// server, unlike `runuser`, which waits on its child and, seeing it stopped, stops itself again
/// after a pause's SIGCONT (util-linux su-common).
pub fn server_argv(data: &Path, port: u16) -> Vec<String> {
    let data = data.to_str().unwrap().to_string();
    let port = port.to_string();
    [
        "setpriv",
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
        &format!("{PG_BIN}/postgres"),
        "-D",
        &data,
        "-p",
        &port,
        "-k",
        &data,
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=off",
        // Contended transactions deadlock often; the default 1 s before detection would make
        // each deadlock cost a second.
        "-c",
        "deadlock_timeout=20ms",
    ]
    .map(str::to_string)
    .to_vec()
}

pub use chaos_testkit::free_port;

/// The effective user id, from /proc (no libc dependency here).
pub fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// A PostgreSQL server, a child of the test, stopped (fast shutdown) when dropped.
pub struct Server {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// initdb in a fresh directory, then the server on a free port, accepting connections
    /// (bounded).
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = initdb(dir.path());
        let port = free_port();
        let argv = server_argv(&data, port);
        let child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            addr: format!("127.0.0.1:{port}"),
            _dir: dir,
        };
        let bound = chaos_testkit::scaled(Duration::from_secs(30));
        let start = Instant::now();
        loop {
            let conn =
                PgConnection::connect(&server.addr, "postgres", "postgres", None, Duration::from_secs(2));
            match conn {
                Ok(_) => return server,
                Err(e) if start.elapsed() > bound => {
                    panic!(
                        "postgres on {} did not accept connections within {bound:?}: {e}",
                        server.addr
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: the postmaster ends its backends, then itself.
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
