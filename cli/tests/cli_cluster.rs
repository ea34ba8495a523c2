//! The ad-hoc cluster commands, run as a user would: `chaos up` in the background, then
//! `chaos exec`, `chaos fault`, `chaos probe` and `chaos down` against its state directory.
//!
//! The netns tests skip (saying why) when the backend cannot run here; the local-backend tests
//! always run. Other tests create clusters at the same time, so leak checks look only at the
//! resources of the cluster under test.
//!
//! (One file, past the usual size: the tests share the `Up` fixture and the exec/fault helpers.)

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chaos::backend::registry;

#[path = "../../core/tests/common/mod.rs"]
mod common;
use common::alive_here;
use common::footprint::Footprint;

/// Bound on `chaos up` becoming ready, and on anything else that should be quick.
const BOUND: Duration = Duration::from_secs(60);

fn chaos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chaos"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `chaos ARGS` with stdin closed and a bound, and returns its output.
fn run(args: &[&str]) -> Output {
    let child = chaos()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running chaos");
    finish(child, args)
}

/// Waits (bounded) for a spawned `chaos` and collects its output; kills it on expiry.
fn finish(mut child: Child, args: &[&str]) -> Output {
    let deadline = Instant::now() + BOUND;
    while child.try_wait().expect("waiting for chaos").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collecting chaos output");
            panic!(
                "chaos {args:?} did not finish within {BOUND:?}; stderr: {}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collecting chaos output")
}

/// `chaos exec --state DIR NODE -- CMD...` with stdin closed.
fn exec(dir: &Path, node: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["exec", "--state", dir.to_str().unwrap(), node, "--"];
    args.extend_from_slice(cmd);
    run(&args)
}

/// `chaos exec` fed `input` on stdin.
fn exec_with_stdin(dir: &Path, node: &str, cmd: &[&str], input: &[u8]) -> Output {
    let mut args = vec!["exec", "--state", dir.to_str().unwrap(), node, "--"];
    args.extend_from_slice(cmd);
    let mut child = chaos()
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running chaos exec");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = finish(child, &args);
    feeder.join().unwrap();
    out
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// A `chaos up` running in the background. Dropping it stops the cluster (SIGTERM, bounded
/// wait, then SIGKILL), so a failing test does not leave it running.
struct Up {
    child: Child,
    dir: PathBuf,
    /// The lines `chaos up` printed: `NAME IP`.
    nodes: Vec<(String, String)>,
    _stdout: BufReader<ChildStdout>,
}

impl Up {
    fn start(backend: &str, nodes: usize, dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(backend, nodes, dir, extra, &[])
    }

    fn start_with_env(backend: &str, nodes: usize, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = chaos()
            .envs(env.iter().copied())
            .args([
                "up",
                "--backend",
                backend,
                "--nodes",
                &nodes.to_string(),
                "--state",
            ])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group, like a job a shell starts: a test can Ctrl-C it.
            .process_group(0)
            .spawn()
            .expect("spawning chaos up");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let cluster_file = dir.join("cluster.json");
        let deadline = Instant::now() + BOUND;
        while !cluster_file.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "chaos up exited with {status} before writing {}",
                    cluster_file.display()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chaos up did not write {} within {BOUND:?}",
                    cluster_file.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // cluster.json is written before the node lines are printed: read them (bounded by the
        // process, which prints them right after).
        let mut lines = Vec::new();
        for _ in 0..nodes {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("reading chaos up output");
            let mut words = line.split_whitespace();
            let (Some(name), Some(ip)) = (words.next(), words.next()) else {
                panic!("chaos up printed {line:?}, expected `NAME IP`");
            };
            lines.push((name.to_string(), ip.to_string()));
        }
        Self {
            child,
            dir: dir.to_path_buf(),
            nodes: lines,
            _stdout: stdout,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn cluster(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.join("cluster.json")).expect("reading cluster.json");
        serde_json::from_str(&text).expect("parsing cluster.json")
    }

    /// Waits (bounded) for `chaos up` to exit and returns whether it succeeded.
    fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "chaos up did not exit within {BOUND:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // A test that stopped it and then failed must not leave it stopped.
        signal(self.pid(), libc::SIGCONT);
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + BOUND;
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn signal(pid: i32, sig: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::try_from(sig).unwrap(),
    )
    .unwrap_or_else(|e| panic!("signalling {pid}: {e}"));
}

fn netns_available(test: &str) -> bool {
    match registry::available("netns") {
        Ok(_) => true,
        Err(why) => {
            chaos_testkit::skip(test, "netns", &why);
            false
        }
    }
}

/// Records what the netns cluster of a running `chaos up` holds, from the backend's own state
/// file.
fn footprint_of(up: &Up) -> Footprint {
    let cluster = up.cluster();
    let record = cluster["backend_state_file"]
        .as_str()
        .expect("a netns cluster.json names the backend state file");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record).expect("reading the backend state file"))
            .expect("parsing the backend state file");
    let footprint = Footprint::record(
        record["index"].as_u64().unwrap() as u32,
        PathBuf::from(record["cgroup_dir"].as_str().unwrap()),
        PathBuf::from(record["temp_dir"].as_str().unwrap()),
    );
    assert!(
        !footprint.pids.is_empty(),
        "no agent processes found in {:?}",
        footprint.cgroup_dir
    );
    assert!(!footprint.resources().is_empty());
    footprint
}

/// The files `chaos up` leaves in its state directory while it runs.
fn state_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn netns_up_exec_down() {
    if !netns_available("netns_up_exec_down") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let mut up = Up::start("netns", 3, &dir, &["--heartbeat-timeout", "6s"]);
    let names: Vec<&str> = up.nodes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    assert_eq!(
        state_files(&dir),
        [
            "ca.pem",
            "cluster.json",
            "control.sock",
            "runner.key",
            "runner.pem",
            "up.pid"
        ]
    );
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("runner.key")).unwrap().permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    let cluster = up.cluster();
    assert_eq!(cluster["backend"], "netns");
    assert_eq!(cluster["owner"]["pid"], up.pid());
    let footprint = footprint_of(&up);

    // The command runs on the node: it sees the node's own address, printed by `chaos up`.
    let (n2, ip2) = &up.nodes[1];
    let out = exec(&dir, n2, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("inet {ip2}/22")),
        "{}",
        text(&out.stdout)
    );

    // stdout and stderr go to their own streams; exit codes and signal deaths pass through.
    let out = exec(&dir, "n1", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(code(&out), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    let out = exec(&dir, "n1", &["sh", "-c", "kill -9 $$"]);
    assert_eq!(code(&out), Some(128 + 9));

    // stdin is streamed, and its end reaches the command.
    let out = exec_with_stdin(&dir, "n3", &["cat"], b"hello\nworld\n");
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\nworld\n");
    let big = vec![b'x'; 3 << 20];
    let out = exec_with_stdin(&dir, "n3", &["wc", "-c"], &big);
    assert_eq!(text(&out.stdout).trim(), (3 << 20).to_string());

    // A command that does not read stdin finishes although stdin stays open.
    let mut args = vec!["exec", "--state", dir.to_str().unwrap(), "n1", "--", "true"];
    let mut child = chaos()
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let open_stdin = child.stdin.take();
    let out = finish(child, &args);
    drop(open_stdin);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));

    // Bad input: one line, exit 2, naming what exists.
    let out = exec(&dir, "n9", &["true"]);
    assert_eq!(code(&out), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("n9") && err.contains("n1, n2, n3"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = exec(&dir, "n1", &["no-such-command-here"]);
    assert_eq!(code(&out), Some(127), "{}", text(&out.stderr));

    // Signals to `chaos exec` reach the command; a closed stdout sends it SIGPIPE.
    signals_and_pipes(&dir);

    // A detached process, paused and killed through its node process id.
    let root = up.cluster()["nodes"][0]["root_dir"].as_str().unwrap().to_string();
    pause_and_kill_a_detached_process(&dir, &root);

    // Faults: a partition from n1 to n2 cuts exactly that path, is listed, and heals.
    faults_inject_list_heal(&dir, &up.nodes);

    // The probe reports every fault kind, readable and as JSON.
    let out = run(&["probe", "--state", dir.to_str().unwrap(), "n1"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    for kind in ["partition", "loss", "packet", "bandwidth", "link", "freeze"] {
        assert!(
            report.contains(&format!("  {kind} ")),
            "{kind} missing from {report}"
        );
    }
    let out = run(&["probe", "--state", dir.to_str().unwrap(), "n3", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe --json prints JSON");
    assert_eq!(json["kinds"].as_array().map(Vec::len), Some(6), "{json}");

    // A second `chaos up` on the same directory is refused and leaves the first alone.
    args = vec![
        "up",
        "--backend",
        "netns",
        "--nodes",
        "1",
        "--state",
        dir.to_str().unwrap(),
    ];
    let out = run(&args);
    assert_eq!(code(&out), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("running cluster") && err.contains(&up.pid().to_string()),
        "{err}"
    );
    assert!(dir.join("cluster.json").exists());

    // `chaos down` stops `chaos up`, which cleans everything up.
    let out = run(&["down", "--state", dir.to_str().unwrap()]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert!(up.wait_exit(), "chaos up failed while stopping");
    assert_eq!(state_files(&dir), Vec::<String>::new());
    footprint.assert_gone_within(Duration::from_secs(10));

    // Nothing left to stop, nothing to exec on.
    let out = run(&["down", "--state", dir.to_str().unwrap()]);
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
    let out = exec(&dir, "n1", &["true"]);
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("chaos up --state"),
        "{}",
        text(&out.stderr)
    );
}

/// Spawns `chaos exec --state DIR NODE -- CMD...` with stdout piped and waits for its first
/// line, so the command surely runs.
fn exec_until_first_line(dir: &Path, node: &str, cmd: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child = chaos()
        .args(["exec", "--state", dir.to_str().unwrap(), node, "--"])
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running chaos exec");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reading chaos exec output");
    assert!(!line.is_empty(), "chaos exec {cmd:?} printed nothing");
    (child, stdout)
}

fn signals_and_pipes(dir: &Path) {
    let (child, _stdout) = exec_until_first_line(dir, "n1", &["sh", "-c", "echo ready; exec sleep 600"]);
    signal(child.id() as i32, libc::SIGTERM);
    let out = finish(child, &["exec", "sleep 600"]);
    assert_eq!(code(&out), Some(128 + libc::SIGTERM), "{}", text(&out.stderr));

    let (child, stdout) = exec_until_first_line(dir, "n2", &["yes"]);
    drop(stdout);
    let out = finish(child, &["exec", "yes"]);
    assert_eq!(code(&out), Some(128 + libc::SIGPIPE), "{}", text(&out.stderr));
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

fn pause_and_kill_a_detached_process(dir: &Path, root: &str) {
    let state = dir.to_str().unwrap();
    let ticks = Path::new(root).join("ticks");
    let script = format!("while :; do echo x >> {}; sleep 0.02; done", ticks.display());
    let out = run(&[
        "exec", "--state", state, "--detach", "n1", "--", "sh", "-c", &script,
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let (proc_id, pid) = printed.trim().split_once(' ').expect("`ID PID`");
    let pid: u32 = pid.parse().unwrap();
    let grows = || {
        let before = line_count(&ticks);
        std::thread::sleep(Duration::from_millis(300));
        line_count(&ticks) > before
    };
    assert!(grows(), "the detached process does not write");
    let target = format!("proc:{proc_id}");

    let out = run(&[
        "fault",
        "inject",
        "--state",
        state,
        "n1",
        "pause",
        "--process",
        &target,
        "--ttl",
        "30s",
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let fault = text(&out.stdout).trim().to_string();
    assert!(text(&out.stderr).contains("freeze"), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!grows(), "the paused process still writes");
    let out = run(&["fault", "heal", "--state", state, "n1", &fault]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert!(grows(), "the process does not resume after heal");

    let out = run(&[
        "fault",
        "inject",
        "--state",
        state,
        "n1",
        "kill",
        "--process",
        &target,
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let deadline = Instant::now() + BOUND;
    while alive_here(pid) {
        assert!(Instant::now() < deadline, "pid {pid} survived the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `from` reaches `to_ip` with one ping, bounded by a second.
fn pings(dir: &Path, from: &str, to_ip: &str) -> bool {
    let out = exec(dir, from, &["busybox", "ping", "-c1", "-W1", to_ip]);
    code(&out) == Some(0)
}

fn faults_inject_list_heal(dir: &Path, nodes: &[(String, String)]) {
    let state = dir.to_str().unwrap();
    let (ip2, ip3) = (&nodes[1].1, &nodes[2].1);
    assert!(
        pings(dir, "n1", ip2) && pings(dir, "n1", ip3),
        "no connectivity before the fault"
    );

    let out = run(&[
        "fault",
        "inject",
        "--state",
        state,
        "n1",
        "partition",
        "--peers",
        "n2",
        "--ttl",
        "30s",
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert!(
        id.starts_with("partition-") && !id.contains(char::is_whitespace),
        "{id:?}"
    );
    assert!(text(&out.stderr).contains("nftables"), "{}", text(&out.stderr));
    assert!(
        !pings(dir, "n1", ip2),
        "n1 still reaches n2 through the partition"
    );
    assert!(pings(dir, "n1", ip3), "the partition from n2 also cut n3");

    // A second fault on another node, with a chosen id; both are listed.
    let out = run(&[
        "fault",
        "inject",
        "--state",
        state,
        "n3",
        "loss",
        "--percent",
        "30",
        "--ttl",
        "30s",
        "--id",
        "my-loss",
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "my-loss");
    let out = run(&["fault", "list", "--state", state]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = |id: &str| table.lines().find(|l| l.contains(id)).map(str::to_string);
    let partition_row = row(&id).unwrap_or_else(|| panic!("{id} not listed: {table}"));
    assert!(
        partition_row.starts_with("n1 ") && partition_row.contains(ip2),
        "{partition_row}"
    );
    assert!(
        row("my-loss").is_some_and(|r| r.starts_with("n3 ") && r.contains("30% loss")),
        "{table}"
    );
    let out = run(&["fault", "list", "--state", state, "n3", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fault list --json prints JSON");
    assert_eq!(json["n3"][0]["id"], "my-loss", "{json}");
    assert!(json.get("n1").is_none(), "{json}");

    // Bad input names what is wrong, with exit 2.
    let out = run(&[
        "fault",
        "inject",
        "--state",
        state,
        "n1",
        "partition",
        "--peers",
        "n7",
        "--ttl",
        "5s",
    ]);
    assert_eq!(code(&out), Some(2));
    assert!(text(&out.stderr).contains("\"n7\""), "{}", text(&out.stderr));
    let out = run(&[
        "fault",
        "inject",
        "--state",
        state,
        "n1",
        "partition",
        "--peers",
        "n2",
    ]);
    assert_eq!(code(&out), Some(2));
    assert!(text(&out.stderr).contains("--ttl"), "{}", text(&out.stderr));
    let out = run(&[
        "fault",
        "inject",
        "--state",
        state,
        "n1",
        "partition",
        "--rate",
        "8mbit",
        "--ttl",
        "5s",
    ]);
    assert_eq!(code(&out), Some(2));

    // Heal one by id (found on its node), then everything.
    let out = run(&["fault", "heal", "--state", state, &id]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("n1 {id}"));
    assert!(pings(dir, "n1", ip2), "n1 does not reach n2 after healing");
    let out = run(&["fault", "heal", "--state", state, "--all"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "n3 my-loss");
    let out = run(&["fault", "list", "--state", state, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json.as_object()
            .unwrap()
            .values()
            .all(|v| v.as_array().unwrap().is_empty()),
        "{json}"
    );
    // Healing again is not an error.
    let out = run(&["fault", "heal", "--state", state, "n1", &id]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not active"), "{}", text(&out.stderr));
}

/// Forwards TCP connections on a loopback port to the unix socket `socket`, for as long as the
/// test process lives; returns the port.
fn forward_tcp_to_unix(socket: PathBuf) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(unix) = std::os::unix::net::UnixStream::connect(&socket) else {
                continue;
            };
            let (mut tcp_r, mut unix_w) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            let (mut unix_r, mut tcp_w) = (unix, tcp);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut tcp_r, &mut unix_w);
                let _ = unix_w.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut unix_r, &mut tcp_w);
                let _ = tcp_w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// `chaos up/exec/fault/down` on docker, with the daemon reached over `DOCKER_HOST=tcp://…` as
/// a remote one would be (a loopback port forwarded to the local socket): node files are
/// copied in, agents are reached at ports published on the daemon's host, and `chaos exec` and
/// `chaos fault` find them there from the state directory alone.
/// The Docker state (`running`, `paused`, …) of node `node`'s container in the cluster of runner
/// `owner`.
fn container_state(node: &str, owner: u32) -> String {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=io.chaos.node={node}"),
            "--format",
            "{{.State}} {{.Label \"io.chaos.owner\"}}",
        ])
        .output()
        .unwrap();
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, tag)| chaos::backend::owner::OwnerTag::parse(tag).is_some_and(|t| t.pid == owner))
        .map(|(state, _)| state.to_string())
        .unwrap_or_else(|| panic!("no container of {node} owned by {owner}"))
}

/// Machine faults are the cluster's, held by `chaos up`: `chaos fault` injects, lists and heals
/// them through its control socket, and one whose TTL passes heals with no one asking.
fn machine_faults_through_chaos_up(dir: &Path, owner: u32) {
    let state = dir.to_str().unwrap();
    let out = run(&[
        "fault", "inject", "--state", state, "n2", "machine", "--action", "pause",
    ]);
    assert_eq!(
        code(&out),
        Some(2),
        "a machine fault needs a TTL: {}",
        text(&out.stderr)
    );

    let inject = |ttl: &str| {
        let out = run(&[
            "fault", "inject", "--state", state, "n2", "machine", "--action", "pause", "--ttl", ttl,
        ]);
        assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let id = inject("60s");
    assert!(id.starts_with("machine-"), "{id:?}");
    assert_eq!(container_state("n2", owner), "paused");
    let out = run(&["fault", "list", "--state", state]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("n2 ") && l.contains(&id) && l.contains("docker pause")),
        "{table}"
    );
    let out = run(&["fault", "heal", "--state", state, &id]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), id);
    assert_eq!(container_state("n2", owner), "running");

    // A short TTL: healed by `chaos up` itself.
    let id = inject("1s");
    let deadline = std::time::Instant::now() + chaos_testkit::scaled(Duration::from_secs(20));
    while container_state("n2", owner) == "paused" {
        assert!(
            std::time::Instant::now() < deadline,
            "{id} still paused after its TTL"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run(&["fault", "list", "--state", state, "--json"]);
    assert!(!text(&out.stdout).contains(&id), "{}", text(&out.stdout));
    // The node's agent answers again.
    let out = exec(dir, "n2", &["true"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
}

#[test]
fn docker_up_exec_fault_down_with_a_daemon_over_tcp() {
    let test = "docker_up_exec_fault_down_with_a_daemon_over_tcp";
    if let Err(why) = registry::available("docker") {
        chaos_testkit::skip(test, "docker", &why);
        return;
    }
    let socket = match std::env::var("DOCKER_HOST") {
        Err(_) => PathBuf::from("/var/run/docker.sock"),
        Ok(host) => match host.strip_prefix("unix://") {
            Some(path) => PathBuf::from(path),
            None => {
                eprintln!("{test}: skipped: DOCKER_HOST={host} is not a unix socket to forward");
                return;
            }
        },
    };
    let port = forward_tcp_to_unix(socket);
    let host = format!("tcp://127.0.0.1:{port}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let mut up = Up::start_with_env("docker", 3, &dir, &[], &[("DOCKER_HOST", host.as_str())]);
    let cluster = up.cluster();
    assert_eq!(cluster["backend"], "docker");
    let owner = u32::try_from(up.pid()).unwrap();
    for node in cluster["nodes"].as_array().unwrap() {
        let agent: std::net::SocketAddr = node["agent"].as_str().unwrap().parse().unwrap();
        assert!(
            agent.ip().is_loopback() && agent.port() != 7700,
            "the agent should be at a published port of the daemon's host: {node}"
        );
    }
    let out = exec(&dir, "n1", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(code(&out), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    // The nodes reach each other by name on the cluster network.
    let out = exec(&dir, "n1", &["busybox", "ping", "-c1", "-W2", "n3"]);
    assert_eq!(code(&out), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    faults_inject_list_heal(&dir, &up.nodes);
    machine_faults_through_chaos_up(&dir, owner);

    let out = run(&["down", "--state", dir.to_str().unwrap()]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert!(up.wait_exit(), "chaos up did not exit cleanly");
    assert!(!dir.join("control.sock").exists(), "control socket left behind");
    let left = common::containers_owned_by(owner);
    assert!(left.is_empty(), "containers left: {left:?}");
}

#[test]
fn netns_ctrl_c_cleans_up() {
    if !netns_available("netns_ctrl_c_cleans_up") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let mut up = Up::start("netns", 2, &dir, &[]);
    let footprint = footprint_of(&up);
    let out = exec(&dir, "n2", &["sh", "-c", "sleep 600 & echo started"]);
    assert_eq!(text(&out.stdout), "started\n", "{}", text(&out.stderr));
    // A terminal's Ctrl-C: SIGINT to the whole process group, which the agents are not in.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(up.pid()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(up.wait_exit(), "chaos up failed after SIGINT");
    assert_eq!(state_files(&dir), Vec::<String>::new());
    footprint.assert_gone_within(Duration::from_secs(10));
}

/// The pid of `node`'s agent, from the cgroup the backend's state file names.
fn agent_pid(up: &Up, node: &str) -> u32 {
    let cluster = up.cluster();
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cluster["backend_state_file"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let procs = Path::new(record["cgroup_dir"].as_str().unwrap())
        .join(node)
        .join("agent/cgroup.procs");
    let pids: Vec<u32> = std::fs::read_to_string(&procs)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "{}: {pids:?}", procs.display());
    pids[0]
}

/// A node whose agent is dead does not hide the others: `fault list` and `fault heal` print
/// every node that answered and name the one that did not, exiting 1. (`chaos up` is stopped
/// meanwhile, so its supervisor cannot restart the agent; once it runs again, it does.)
#[test]
fn fault_list_and_heal_report_a_dead_node_and_print_the_rest() {
    if !netns_available("fault_list_and_heal_report_a_dead_node_and_print_the_rest") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let up = Up::start("netns", 3, &dir, &["--heartbeat-timeout", "60s"]);
    let footprint = footprint_of(&up);
    let state = dir.to_str().unwrap();
    for (node, id) in [("n1", "cut-n1"), ("n3", "cut-n3")] {
        let out = run(&[
            "fault",
            "inject",
            "--state",
            state,
            node,
            "partition",
            "--peers",
            "n2",
            "--ttl",
            "60s",
            "--id",
            id,
        ]);
        assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    }

    signal(up.pid(), libc::SIGSTOP);
    let n2_agent = agent_pid(&up, "n2");
    signal(n2_agent as i32, libc::SIGKILL);
    let deadline = Instant::now() + BOUND;
    while alive_here(n2_agent) {
        assert!(Instant::now() < deadline, "n2's agent survived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }

    let out = run(&["fault", "list", "--state", state]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(code(&out), Some(1), "{stdout}{stderr}");
    for (node, id) in [("n1", "cut-n1"), ("n3", "cut-n3")] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{node} ")) && l.contains(id)),
            "{id} of {node} not listed:\n{stdout}{stderr}"
        );
    }
    assert!(
        stderr.lines().any(|l| l.starts_with("n2: "))
            && stderr.contains("1 of 3 node(s) did not answer (n2)"),
        "{stderr}"
    );
    let out = run(&["fault", "list", "--state", state, "--json"]);
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON of the nodes that answered");
    assert_eq!(json["n1"][0]["id"], "cut-n1", "{json}");
    assert_eq!(json["n3"][0]["id"], "cut-n3", "{json}");
    assert!(json.get("n2").is_none(), "{json}");

    // Healing by id reaches the node that has it, and says which node did not answer.
    let out = run(&["fault", "heal", "--state", state, "cut-n1"]);
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "n1 cut-n1\n");
    assert!(text(&out.stderr).contains("(n2)"), "{}", text(&out.stderr));
    let out = run(&["fault", "heal", "--state", state, "--all"]);
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "n3 cut-n3\n");
    assert!(
        text(&out.stderr).contains("did not answer (n2)"),
        "{}",
        text(&out.stderr)
    );

    // `chaos up` runs again: its supervisor restarts n2's agent, and the list is whole.
    signal(up.pid(), libc::SIGCONT);
    let deadline = Instant::now() + BOUND;
    loop {
        let out = run(&["fault", "list", "--state", state, "--json"]);
        if code(&out) == Some(0) {
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(json.as_object().unwrap().len(), 3, "{json}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 was not restarted within {BOUND:?}: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(agent_pid(&up, "n2"), n2_agent);
    drop(up);
    footprint.assert_gone_within(Duration::from_secs(10));
}

#[test]
fn local_up_exec_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let mut up = Up::start("local", 2, &dir, &[]);
    assert_eq!(
        up.nodes,
        [
            ("n1".into(), "127.0.0.1".into()),
            ("n2".into(), "127.0.0.1".into())
        ]
    );
    let cluster = up.cluster();
    let root = cluster["nodes"][1]["root_dir"].as_str().unwrap().to_string();
    assert!(Path::new(&root).is_dir());
    // Local nodes are agents on this host: the TLS material to reach them is there.
    assert_eq!(
        state_files(&dir),
        [
            "ca.pem",
            "cluster.json",
            "control.sock",
            "runner.key",
            "runner.pem",
            "up.pid"
        ]
    );

    // The command runs in the node's root directory, with its own exit code and stdio.
    let out = exec_with_stdin(&dir, "n2", &["sh", "-c", "pwd; cat; exit 4"], b"in\n");
    assert_eq!(code(&out), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{root}\nin\n"));
    let out = exec(&dir, "n3", &["true"]);
    assert_eq!(code(&out), Some(2));
    assert!(text(&out.stderr).contains("n1, n2"), "{}", text(&out.stderr));
    let out = exec(&dir, "n1", &["no-such-command-here"]);
    assert_eq!(code(&out), Some(127), "{}", text(&out.stderr));
    // Network faults are refused (every node is 127.0.0.1), saying why; the probe says the same.
    let out = run(&[
        "fault",
        "inject",
        "--state",
        dir.to_str().unwrap(),
        "n1",
        "partition",
        "--ttl",
        "5s",
    ]);
    assert_ne!(code(&out), Some(0));
    assert!(
        text(&out.stderr).contains("--no-network-faults"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["probe", "--state", dir.to_str().unwrap(), "n1", "--json"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe --json prints JSON");
    let kinds = json["kinds"].as_array().unwrap();
    let supported: Vec<&str> = kinds
        .iter()
        .filter(|k| !k["mechanism"].is_null())
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(supported, ["freeze"], "{json}");
    // Process faults work, on the node's own processes.
    let out = run(&[
        "exec",
        "--state",
        dir.to_str().unwrap(),
        "--detach",
        "n1",
        "--",
        "sleep",
        "100",
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).split_whitespace().next().unwrap().to_string();
    let target = format!("proc:{id}");
    let out = run(&[
        "fault",
        "inject",
        "--state",
        dir.to_str().unwrap(),
        "n1",
        "pause",
        "--process",
        &target,
        "--ttl",
        "30s",
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));

    let out = run(&["down", "--state", dir.to_str().unwrap()]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert!(up.wait_exit());
    assert_eq!(state_files(&dir), Vec::<String>::new());
    assert!(
        !Path::new(&root).exists(),
        "the local cluster's directory is left: {root}"
    );
}

#[test]
fn a_stale_state_directory_is_reported_and_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    // A `chaos up` that died without cleaning up: a pid that cannot be running.
    std::fs::write(dir.join("up.pid"), "4194305 1\n").unwrap();

    let out = run(&["down", "--state", dir.to_str().unwrap()]);
    assert_eq!(code(&out), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("4194305") && err.contains("not running"), "{err}");

    let mut child = chaos()
        .args([
            "up",
            "--backend",
            "local",
            "--nodes",
            "1",
            "--state",
            dir.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "n1 127.0.0.1\n");
    signal(child.id() as i32, libc::SIGTERM);
    let out = finish(child, &["up"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("stale") && err.contains("4194305"), "{err}");
    assert_eq!(state_files(&dir), Vec::<String>::new());
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    for args in [
        vec!["up", "--backend", "ec2", "--state", dir],
        vec!["up", "--backend", "local", "--nodes", "0", "--state", dir],
        vec![
            "up",
            "--backend",
            "local",
            "--heartbeat-timeout",
            "0s",
            "--state",
            dir,
        ],
        vec!["exec", "--state", dir, "n1", "--", "true"],
    ] {
        let out = run(&args);
        assert_eq!(code(&out), Some(2), "{args:?}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        // Our own errors are one line; clap adds a line pointing to --help.
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(
            err.lines().filter(|l| !l.trim().is_empty()).count() <= 2,
            "{args:?}: {err}"
        );
    }
    assert_eq!(state_files(tmp.path()), Vec::<String>::new());
}

/// `chaos net measure` in JSON: the measurements' throughputs (bit/s) and loss percentages.
fn measure(dir: &Path, args: &[&str]) -> Vec<(f64, f64)> {
    let state = dir.to_str().unwrap();
    let mut argv = vec!["net", "measure", "--state", state, "--json"];
    argv.extend_from_slice(args);
    let out = run(&argv);
    assert_eq!(code(&out), Some(0), "{argv:?}: {}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("measure prints JSON");
    json.as_array()
        .expect("an array of measurements")
        .iter()
        .map(|m| {
            let r = &m["report"];
            (
                r["throughput_bps"].as_f64().unwrap(),
                r["loss_percent"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn net_measure_reports_a_bandwidth_limit() {
    if !netns_available("net_measure_reports_a_bandwidth_limit") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let up = Up::start("netns", 2, &dir, &[]);
    let state = dir.to_str().unwrap();
    let out = run(&[
        "fault",
        "inject",
        "--state",
        state,
        "n1",
        "bandwidth",
        "--rate",
        "8mbit",
        "--ttl",
        "2m",
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let tcp = measure(&dir, &["n1", "n2", "--duration", "3s"]);
    let mbit = tcp[0].0 / 1e6;
    assert!(
        (6.0..=10.0).contains(&mbit),
        "TCP {mbit:.2} Mbit/s is not 8 ± 25 %"
    );
    // UDP at 20 Mbit/s through an 8 Mbit/s limit: the receiver sees 8, more than a third is lost.
    let udp = measure(
        &dir,
        &[
            "n1",
            "n2",
            "--protocol",
            "udp",
            "--udp-rate",
            "20mbit",
            "--duration",
            "2s",
        ],
    );
    let (bps, loss) = udp[0];
    assert!((6.0..=10.0).contains(&(bps / 1e6)), "UDP {:.2} Mbit/s", bps / 1e6);
    assert!(loss > 35.0, "UDP loss {loss:.1} % at 2.5× the limit");
    // The other direction is not limited.
    let back = measure(&dir, &["n2", "n1", "--duration", "1s", "--probes", "5"]);
    assert!(back[0].0 / 1e6 > 20.0, "n2 → n1 {:.2} Mbit/s", back[0].0 / 1e6);
    let bad = run(&["net", "measure", "--state", state, "n1", "n9"]);
    assert_eq!(code(&bad), Some(2), "{}", text(&bad.stderr));
    assert!(text(&bad.stderr).contains("n9"), "{}", text(&bad.stderr));
    drop(up);
}
