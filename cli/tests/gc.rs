//! `chaos gc` against real leftovers: a `chaos up` SIGKILLed while its netns cluster runs, a
//! stray namespace without a state file, a state file written before owner tags, and Docker
//! containers, networks and a dangling image labelled with a dead owner. Live clusters (this process's) must survive every collection.
//!
//! The tests take one lock, because each collection looks at the whole host: one test's
//! deliberate leftovers would otherwise show up in (or be removed by) another's collection.
//! Other test binaries create clusters at the same time; their runners are alive, so gc keeps
//! them, and these tests only assert on their own resources.
//!
//! The Docker test builds its tiny image from a static busybox (no registry is needed). The
//! end-to-end test with a killed Docker runner lives with the docker backend's tests.
//!
//! (One file, past the usual size: every test shares the runner, kill-point and footprint
//! helpers below and the one lock.)

#![cfg(target_os = "linux")]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chaos::backend::gc::{GcOptions, GcReport, collect_garbage};
use chaos::backend::netns::{self, NetnsCluster};
use chaos::backend::owner::{self, OwnerTag};
use chaos::backend::{ClusterOptions, registry};
use chaos::{Cluster, NodeExt};

#[path = "../../core/tests/common/mod.rs"]
mod common;
use common::footprint::{Footprint, stdout_of};

/// One collection at a time (see the module documentation).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound on `chaos up` becoming ready (the first Docker `up` may build the static agent) and on
/// `chaos gc` finishing; stretched on a busy machine.
fn bound() -> Duration {
    chaos_testkit::scaled(Duration::from_secs(60))
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

fn dump(report: &GcReport) -> String {
    format!(
        "removed: {:#?}\nkept: {:#?}\nerrors: {:#?}",
        report.removed, report.kept, report.errors
    )
}

/// A `chaos up` to be killed. Dropping it (also when the test fails) kills it if needed and
/// collects the netns garbage of dead runners, so a failing test leaves nothing behind.
struct Runner {
    child: Child,
}

impl Runner {
    /// Starts `chaos up --backend netns` and waits until its cluster is up; returns the runner
    /// and the netns state file of its cluster.
    fn start(state_dir: &Path, nodes: u32) -> (Self, PathBuf) {
        let (runner, cluster) = Self::start_on("netns", state_dir, nodes);
        let state = cluster["backend_state_file"]
            .as_str()
            .expect("a netns cluster.json names the backend state file");
        (runner, PathBuf::from(state))
    }

    /// Starts `chaos up --backend BACKEND` and waits until its cluster is up; returns the
    /// runner and its `cluster.json`.
    fn start_on(backend: &str, state_dir: &Path, nodes: u32) -> (Self, serde_json::Value) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chaos"))
            .args(["up", "--backend", backend, "--nodes", &nodes.to_string()])
            // Agents outlive the killed runner by this much: gc must not wait for them.
            .args(["--heartbeat-timeout", "120s", "--state"])
            .arg(state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning chaos up");
        let stdout = child.stdout.take().expect("piped stdout");
        let runner = Self { child };
        // `chaos up` prints one line per node once everything is up.
        let mut lines = BufReader::new(stdout).lines();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..nodes {
                let line = lines.next();
                let _ = tx.send(line);
            }
        });
        for _ in 0..nodes {
            match rx.recv_timeout(bound()) {
                Ok(Some(Ok(_))) => {}
                other => panic!("chaos up did not print its nodes within {:?}: {other:?}", bound()),
            }
        }
        let cluster: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(state_dir.join("cluster.json")).unwrap())
                .expect("parsing cluster.json");
        (runner, cluster)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no cleanup, no graceful shutdown of the agents.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill();
        let report = netns::collect_garbage(&GcOptions::default());
        if !report.errors.is_empty() {
            eprintln!("cleanup after the killed runner: {:?}", report.errors);
        }
        // Docker leftovers too (blocking here: this may run outside a runtime, or in a panic).
        let _ = Command::new(env!("CARGO_BIN_EXE_chaos"))
            .arg("gc")
            .stdout(Stdio::null())
            .status();
    }
}

/// Runs `chaos ARGS`, bounded; returns exit code and stdout.
async fn run_chaos(args: &[&str]) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning chaos");
    let out = tokio::time::timeout(bound(), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("chaos {args:?} did not finish within {:?}", bound()))
        .expect("collecting chaos output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "chaos {args:?}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runners_netns_cluster_is_collected_and_a_live_one_kept() {
    let test = "a_killed_runners_netns_cluster_is_collected_and_a_live_one_kept";
    if !netns_available(test) {
        return;
    }
    let _serial = SERIAL.lock().await;

    // A live cluster of this process: gc must keep it, working.
    let live = NetnsCluster::new(ClusterOptions {
        name: "gc-live".into(),
        ..ClusterOptions::default()
    })
    .await
    .expect("creating the live cluster");
    let live_node = live
        .create_nodes(1)
        .await
        .expect("creating a live node")
        .remove(0);
    let live_footprint = Footprint::record(
        live.provisioner().index(),
        live.provisioner().cgroup_dir().to_path_buf(),
        live.provisioner().dir().to_path_buf(),
    );
    let live_before = live_footprint.resources();

    // A runner killed while its cluster runs.
    let tmp = tempfile::tempdir().unwrap();
    let (mut runner, state_file) = Runner::start(&tmp.path().join("state"), 2);
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let index = recorded["index"].as_u64().unwrap() as u32;
    let cluster = recorded["cluster"].as_str().unwrap().to_string();
    let tag = OwnerTag::parse(recorded["owner"].as_str().expect("the state file has an owner"))
        .expect("the owner tag parses");
    assert_eq!((tag.host.as_str(), tag.pid), (owner::hostname(), runner.pid()));
    assert_eq!(recorded["runner_pid"], runner.pid());
    let dead = Footprint::record(
        index,
        PathBuf::from(recorded["cgroup_dir"].as_str().unwrap()),
        PathBuf::from(recorded["temp_dir"].as_str().unwrap()),
    );
    let before = dead.resources();
    // Hub, two node namespaces, host link, cgroup, temp dir, state file.
    assert_eq!(before.len(), 7, "{before:?}");
    assert!(
        dead.pids.len() >= 2,
        "agents in {:?}: {:?}",
        dead.cgroup_dir,
        dead.pids
    );
    let runner_pid = runner.pid();
    runner.kill();

    // A dry run names everything and changes nothing.
    let report = collect_garbage(&GcOptions {
        dry_run: true,
        ..GcOptions::default()
    })
    .await;
    let reason = format!("(cluster {cluster}, runner pid {runner_pid} gone)");
    for name in [
        format!("namespace {}", netns::node_netns_name(index, 1)),
        format!("namespace {}", netns::node_netns_name(index, 2)),
        format!("namespace {}", netns::hub_netns_name(index)),
        format!("link {}", netns::host_link_name(index)),
        format!("cgroup {}", dead.cgroup_dir.display()),
        format!("directory {}", dead.temp_dir.display()),
        format!("state file {}", state_file.display()),
    ] {
        let line = format!("netns: {name} {reason}");
        assert!(
            report.removed.contains(&line),
            "{line:?} missing:\n{}",
            dump(&report)
        );
    }
    assert!(
        report.removed.iter().any(|l| l.starts_with("netns: processes ")
            && l.contains(&format!("in cgroup {} ", dead.cgroup_dir.display()))),
        "{}",
        dump(&report)
    );
    assert_eq!(dead.resources(), before, "a dry run removed something");
    assert_eq!(dead.living(), dead.pids, "a dry run killed something");

    // The real thing, through the command line.
    let (code, stdout) = run_chaos(&["gc"]).await;
    assert_eq!(code, Some(0), "{stdout}");
    let line = format!(
        "removed: netns: namespace {} {reason}",
        netns::node_netns_name(index, 1)
    );
    assert!(stdout.lines().any(|l| l == line), "{line:?} missing:\n{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("kept: netns: cluster #")
            && l.contains(&format!("#{} ", live.provisioner().index()))
            && l.contains(&format!("runner pid {} alive", std::process::id()))),
        "the live cluster is not reported kept:\n{stdout}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("removed ") && summary.contains(", kept "),
        "{summary}"
    );

    // Everything is gone now — the agents too, although their heartbeat timeout is far away.
    let left = dead.resources();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(dead.living(), Vec::<u32>::new(), "agents survived gc");
    let netns_list = stdout_of("ip", &["netns", "list"]);
    assert!(
        !netns_list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&netns::hub_netns_name(index))),
        "{netns_list}"
    );
    assert!(
        !Path::new("/sys/class/net")
            .join(netns::host_link_name(index))
            .exists()
    );

    // The live cluster is untouched and works.
    assert_eq!(live_footprint.resources(), live_before);
    let out = live_node
        .run("echo", ["still here"])
        .await
        .expect("running on the live node");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");
    live.cleanup().await.expect("cleaning up the live cluster");
    live_footprint.assert_gone_now();
    drop(runner);
}

/// Names of every netns-backend resource on the host, as `kind name`: namespaces, host links,
/// cluster cgroups, state and claim files, temporary directories.
fn netns_resources() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for name in names(Path::new("/run/netns")) {
        if name.starts_with("chaos-") {
            found.insert(format!("netns {name}"));
        }
    }
    for name in names(Path::new("/sys/class/net")) {
        if name.starts_with("chaos") {
            found.insert(format!("link {name}"));
        }
    }
    for name in names(&cgroup2_mount().join("chaos")) {
        if name.parse::<u32>().is_ok() {
            found.insert(format!("cgroup {name}"));
        }
    }
    for name in names(Path::new(netns::STATE_DIR)) {
        if !name.starts_with(".netns-dir") {
            found.insert(format!("state {name}"));
        }
    }
    for name in names(&std::env::temp_dir()) {
        if name.starts_with("chaos-netns-") {
            found.insert(format!("tempdir {name}"));
        }
    }
    found
}

/// The cluster index a resource line names (`netns chaos-7-n1`, `link chaos7h`, `cgroup 7`,
/// `state 7.json`, `state .claim-7-123-0`, `tempdir chaos-netns-7-ab12cd34`).
fn index_of(resource: &str) -> Option<u32> {
    let (kind, name) = resource.split_once(' ')?;
    let digits = |s: &str| -> Option<u32> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    match kind {
        "netns" => digits(name.strip_prefix("chaos-")?),
        "link" => digits(name.strip_prefix("chaos")?),
        "cgroup" => name.parse().ok(),
        "state" => digits(name.strip_prefix(".claim-").unwrap_or(name)),
        "tempdir" => digits(name.strip_prefix("chaos-netns-")?),
        _ => None,
    }
}

/// Whether cluster `index` belongs to a live runner other than `dead`, by its state file.
fn live_cluster(index: u32, dead: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(netns::state_file(index)) else {
        return false;
    };
    let record: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let Some(tag) = record["owner"].as_str().and_then(OwnerTag::parse) else {
        return false;
    };
    tag.pid != dead
        && owner::owner_state(record["owner"].as_str().unwrap_or_default()) == owner::OwnerState::Alive
}

/// Where in its life `chaos up` is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// This long after it was started.
    After(Duration),
    /// As soon as its state file (the claim) exists.
    Claimed,
    /// As soon as its hub namespace exists.
    HubMade,
    /// As soon as the namespace of node n1 exists.
    NodeNamespace,
    /// As soon as an agent runs in n1's cgroup.
    AgentRunning,
    /// Once it printed its nodes.
    Up,
    /// Tearing down: this long after SIGTERM.
    TearingDown(Duration),
}

/// The state file of the cluster `pid` claimed, if there is one yet.
fn claimed_by(pid: u32) -> Option<(u32, serde_json::Value)> {
    let dir = std::fs::read_dir(netns::STATE_DIR).ok()?;
    dir.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let index: u32 = name.strip_suffix(".json")?.parse().ok()?;
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
        (record["runner_pid"].as_u64() == Some(u64::from(pid))).then_some((index, record))
    })
}

/// Polls `ready` every millisecond until it holds; false after `bound` or when `child` exited.
fn poll(child: &mut Child, bound: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + bound;
    while std::time::Instant::now() < deadline {
        if ready() {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// `chaos up` SIGKILLed at many instants — 10, 20 and 40 ms after it starts (the hub and host
/// link existed then, before any state file), right after its claim, during node creation, once
/// up, and while tearing down — leaves nothing that plain `chaos gc` (no `--all`) does not
/// remove: namespaces, links, cgroups with their agents, temporary and node directories, state
/// and claim files. Meanwhile a live cluster of this process is untouched and keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_at_any_instant_is_collected_without_all() {
    let test = "a_runner_killed_at_any_instant_is_collected_without_all";
    if !netns_available(test) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let live = NetnsCluster::new(ClusterOptions {
        name: "gc-live-2".into(),
        ..ClusterOptions::default()
    })
    .await
    .expect("creating the live cluster");
    let live_node = live
        .create_nodes(1)
        .await
        .expect("creating a live node")
        .remove(0);
    let live_footprint = Footprint::record(
        live.provisioner().index(),
        live.provisioner().cgroup_dir().to_path_buf(),
        live.provisioner().dir().to_path_buf(),
    );
    let live_before = live_footprint.resources();

    let points = [
        KillPoint::After(Duration::from_millis(10)),
        KillPoint::After(Duration::from_millis(20)),
        KillPoint::After(Duration::from_millis(40)),
        KillPoint::After(Duration::from_millis(80)),
        KillPoint::Claimed,
        KillPoint::HubMade,
        KillPoint::NodeNamespace,
        KillPoint::AgentRunning,
        KillPoint::Up,
        KillPoint::TearingDown(Duration::from_millis(20)),
    ];
    let mut reached = Vec::new();
    for point in points {
        let before = netns_resources();
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chaos"))
            .args([
                "up",
                "--backend",
                "netns",
                "--nodes",
                "2",
                "--heartbeat-timeout",
                "120s",
                "--state",
            ])
            .arg(tmp.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning chaos up");
        let pid = child.id();
        let claim = || claimed_by(pid);
        let hit = match point {
            KillPoint::After(d) => {
                std::thread::sleep(d);
                true
            }
            KillPoint::Claimed => poll(&mut child, bound(), || claim().is_some()),
            KillPoint::HubMade => poll(&mut child, bound(), || {
                claim().is_some_and(|(i, _)| Path::new("/run/netns").join(netns::hub_netns_name(i)).exists())
            }),
            KillPoint::NodeNamespace => poll(&mut child, bound(), || {
                claim().is_some_and(|(i, _)| {
                    Path::new("/run/netns")
                        .join(netns::node_netns_name(i, 1))
                        .exists()
                })
            }),
            KillPoint::AgentRunning => poll(&mut child, bound(), || {
                claim().is_some_and(|(_, r)| {
                    let procs = Path::new(r["cgroup_dir"].as_str().unwrap_or("/nonexistent"))
                        .join("n1/agent/cgroup.procs");
                    std::fs::read_to_string(procs).is_ok_and(|p| !p.trim().is_empty())
                })
            }),
            KillPoint::Up => poll(&mut child, bound(), || {
                tmp.path().join("state/cluster.json").exists()
            }),
            KillPoint::TearingDown(d) => {
                let up = poll(&mut child, bound(), || {
                    tmp.path().join("state/cluster.json").exists()
                });
                if up {
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    )
                    .unwrap();
                    std::thread::sleep(d);
                }
                up
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        let made: Vec<String> = netns_resources().difference(&before).cloned().collect();
        reached.push(format!("{point:?}: reached {hit}, had made {made:?}"));

        let (code, stdout) = run_chaos(&["gc"]).await;
        assert_eq!(code, Some(0), "{point:?}: {stdout}");
        // What is new since before this runner started, and not a live runner's (other test
        // binaries create clusters meanwhile; one of an older version may be between making its
        // hub and its state file for a moment, hence the second look).
        let mut left = Vec::new();
        for _ in 0..50 {
            left = netns_resources()
                .difference(&before)
                .filter(|r| index_of(r).is_none_or(|i| !live_cluster(i, pid)))
                .cloned()
                .collect();
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            left.is_empty(),
            "chaos up killed at {point:?} (pid {pid}): plain `chaos gc` left {left:?}\ngc said:\n{stdout}"
        );
    }
    eprintln!("{}", reached.join("\n"));
    assert!(
        reached.iter().filter(|r| r.contains("reached true")).count() >= 8,
        "too few kill points were reached: {reached:#?}"
    );

    // The live cluster is untouched and works.
    assert_eq!(live_footprint.resources(), live_before);
    let out = live_node
        .run("echo", ["still here"])
        .await
        .expect("running on the live node");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");
    live.cleanup().await.expect("cleaning up the live cluster");
    live_footprint.assert_gone_now();
}

/// The first index with nothing of the backend on this host, from the top (where clusters are
/// rarely made).
fn unused_index() -> u32 {
    let namespaces = stdout_of("ip", &["netns", "list"]);
    (0..netns::MAX_CLUSTERS)
        .rev()
        .find(|&i| {
            let hub = netns::hub_netns_name(i);
            !netns::state_file(i).exists()
                && !Path::new("/sys/class/net")
                    .join(netns::host_link_name(i))
                    .exists()
                && !namespaces.lines().any(|l| {
                    let name = l.split_whitespace().next().unwrap_or_default();
                    name == hub || name.starts_with(&format!("{hub}-n"))
                })
        })
        .expect("a free cluster index")
}

/// Deletes a namespace made with `ip netns add` when dropped.
struct StrayNamespace(String);

impl Drop for StrayNamespace {
    fn drop(&mut self) {
        if Path::new("/run/netns").join(&self.0).exists() {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_without_a_state_file_is_kept_unless_all() {
    let test = "a_namespace_without_a_state_file_is_kept_unless_all";
    if !netns_available(test) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let index = unused_index();
    let name = netns::node_netns_name(index, 1);
    stdout_of("ip", &["netns", "add", &name]);
    let stray = StrayNamespace(name.clone());
    let exists = || Path::new("/run/netns").join(&name).exists();

    // Without --all it may be a cluster being created: kept, saying how to remove it.
    let report = collect_garbage(&GcOptions::default()).await;
    assert!(
        report
            .kept
            .iter()
            .any(|l| l.starts_with(&format!("netns: cluster #{index} (")) && l.contains("--all")),
        "{}",
        dump(&report)
    );
    assert!(
        !report.removed.iter().any(|l| l.contains(&name)),
        "{}",
        dump(&report)
    );
    assert!(exists());

    // --all would remove it. (Only as a dry run: a real --all would take down the clusters
    // other tests run at the same time.)
    let report = collect_garbage(&GcOptions {
        dry_run: true,
        all: true,
        ..GcOptions::default()
    })
    .await;
    assert!(
        report.removed.iter().any(
            |l| l.starts_with(&format!("netns: namespace {name} (no state file")) && l.ends_with("; --all)")
        ),
        "{}",
        dump(&report)
    );
    assert!(exists());
    drop(stray);
    assert!(!exists());
}

/// The cgroup2 mount point.
fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split(' ').next()? != "cgroup2" {
                return None;
            }
            left.split(' ').nth(4).map(PathBuf::from)
        })
        .expect("a cgroup2 mount")
}

/// What the old-format test made, removed when dropped if gc did not.
struct OldCluster {
    sleeper: Child,
    namespace: String,
    cgroup: PathBuf,
    state: PathBuf,
    temp: PathBuf,
}

impl Drop for OldCluster {
    fn drop(&mut self) {
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
        for dir in [
            self.cgroup.join("n1/agent"),
            self.cgroup.join("n1"),
            self.cgroup.clone(),
        ] {
            let _ = std::fs::remove_dir(dir);
        }
        let _ = std::fs::remove_file(&self.state);
        let _ = std::fs::remove_dir_all(&self.temp);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_state_file_is_judged_by_its_runner_pid() {
    let test = "an_old_state_file_is_judged_by_its_runner_pid";
    if !netns_available(test) {
        return;
    }
    let _serial = SERIAL.lock().await;
    // A pid that was alive a moment ago and is gone now.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();

    // A cluster as a runner of before owner tags left it: state file without `owner`, hub
    // namespace, a process in its cgroup, temporary directory.
    let index = unused_index();
    let temp = tempfile::Builder::new()
        .prefix(&format!("chaos-netns-{index}-"))
        .tempdir()
        .unwrap()
        .keep();
    std::fs::write(temp.join("agent.log"), "x").unwrap();
    let cgroup = cgroup2_mount().join("chaos").join(index.to_string());
    let state = netns::state_file(index);
    let namespace = netns::hub_netns_name(index);
    std::fs::create_dir_all(netns::STATE_DIR).unwrap();
    let record = serde_json::json!({
        "index": index,
        "cluster": "old-format",
        "runner_pid": dead_pid,
        "host_link": netns::host_link_name(index),
        "hub_netns": namespace,
        "node_netns": [],
        "cgroup_dir": cgroup,
        "temp_dir": temp,
    });
    std::fs::write(&state, record.to_string()).unwrap();
    let sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    let mut made = OldCluster {
        sleeper,
        namespace: namespace.clone(),
        cgroup: cgroup.clone(),
        state: state.clone(),
        temp: temp.clone(),
    };
    stdout_of("ip", &["netns", "add", &namespace]);
    std::fs::create_dir_all(cgroup.join("n1/agent")).unwrap();
    std::fs::write(
        cgroup.join("n1/agent/cgroup.procs"),
        made.sleeper.id().to_string(),
    )
    .unwrap();

    let report = collect_garbage(&GcOptions::default()).await;
    let reason = format!("(cluster old-format, runner pid {dead_pid} gone)");
    for name in [
        format!("processes {} in cgroup {}", made.sleeper.id(), cgroup.display()),
        format!("cgroup {}", cgroup.display()),
        format!("namespace {namespace}"),
        format!("directory {}", temp.display()),
        format!("state file {}", state.display()),
    ] {
        let line = format!("netns: {name} {reason}");
        assert!(
            report.removed.contains(&line),
            "{line:?} missing:\n{}",
            dump(&report)
        );
    }
    assert!(report.errors.is_empty(), "{}", dump(&report));
    // Killed by gc, not by us: SIGKILL is the cgroup's.
    let status = made.sleeper.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    for path in [&cgroup, &state, &temp, &Path::new("/run/netns").join(&namespace)] {
        assert!(!path.exists(), "{} survived gc", path.display());
    }
    drop(made);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_on_a_clean_machine_removes_nothing() {
    let _serial = SERIAL.lock().await;
    let (code, stdout) = run_chaos(&["gc", "--dry-run"]).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        !stdout
            .lines()
            .any(|l| l.starts_with("would remove:") || l.starts_with("error:")),
        "{stdout}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.starts_with("would remove 0, kept "), "{summary}");
}

#[cfg(feature = "docker")]
mod docker {
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::Duration;

    use bollard::Docker;
    use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
    use bollard::query_parameters::{
        BuildImageOptions, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
        ListNetworksOptionsBuilder, RemoveContainerOptions, RemoveImageOptions,
    };
    use chaos::backend::docker::{LABEL_CLUSTER, LABEL_IMAGE, LABEL_NODE, LABEL_OWNER};
    use chaos::backend::gc::{GcOptions, collect_garbage};
    use chaos::backend::owner;
    use futures_util::StreamExt;

    use super::{Runner, SERIAL, dump, run_chaos};

    const CALL: Duration = Duration::from_secs(30);

    async fn connect() -> Result<Docker, String> {
        let docker = Docker::connect_with_defaults()
            .map_err(|e| e.to_string())?
            .with_timeout(CALL);
        match tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version()).await {
            Ok(Ok(docker)) => Ok(docker),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5s".into()),
        }
    }

    /// Whether `path` is an ELF executable without a program interpreter (statically linked).
    fn is_static_elf(path: &str) -> bool {
        let Ok(bytes) = std::fs::read(path) else {
            return false;
        };
        // Only 64-bit little-endian ELF is worth supporting here.
        if bytes.len() < 0x40 || bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
            return false;
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
        (0..phnum).all(|i| {
            let at = phoff + i * phentsize;
            // PT_INTERP = 3
            bytes.get(at..at + 4) != Some(3u32.to_le_bytes().as_slice())
        })
    }

    /// Builds `tag` from scratch: a static busybox, labelled as a chaos image of kind `test-gc`.
    /// `generation` makes images of the same tag differ.
    async fn build(docker: &Docker, tag: &str, generation: u32) {
        let dockerfile = format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nLABEL {LABEL_IMAGE}=test-gc io.chaos.test-gc.generation={generation}\n"
        );
        let busybox = std::fs::read("/bin/busybox").unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data, mode) in [
            ("Dockerfile", dockerfile.as_bytes(), 0o644),
            ("busybox", busybox.as_slice(), 0o755),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(mode);
            header.set_cksum();
            tar.append_data(&mut header, name, data).unwrap();
        }
        let context = tar.into_inner().unwrap();
        let options = BuildImageOptions {
            t: Some(tag.to_string()),
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
        loop {
            match tokio::time::timeout(CALL, stream.next()).await {
                Ok(None) => break,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("building {tag}: {e}"),
                Err(_) => panic!("building {tag}: no progress within {CALL:?}"),
            }
        }
    }

    /// Everything the test made, removed when dropped (on a thread of its own with its own
    /// runtime, since drop cannot await), also when an assertion fails.
    #[derive(Default)]
    struct Made {
        containers: Vec<String>,
        networks: Vec<String>,
        images: Vec<String>,
    }

    impl Drop for Made {
        fn drop(&mut self) {
            let (containers, networks, images) = (
                std::mem::take(&mut self.containers),
                std::mem::take(&mut self.networks),
                std::mem::take(&mut self.images),
            );
            let cleanup = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let Ok(docker) = connect().await else { return };
                    for c in &containers {
                        let options = RemoveContainerOptions {
                            force: true,
                            v: true,
                            ..Default::default()
                        };
                        let _ = docker.remove_container(c, Some(options)).await;
                    }
                    for n in &networks {
                        let _ = docker.remove_network(n).await;
                    }
                    for i in &images {
                        let options = RemoveImageOptions {
                            force: true,
                            ..Default::default()
                        };
                        let _ = docker.remove_image(i, Some(options), None).await;
                    }
                });
            });
            let _ = cleanup.join();
        }
    }

    /// The owner tag of a process of this host that has exited.
    fn dead_tag() -> String {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let tag = owner::OwnerTag {
            host: owner::hostname().to_string(),
            pid: child.id(),
            start: 0,
        };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", tag.pid)).unwrap();
        let start: u64 = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .nth(19)
            .unwrap()
            .parse()
            .unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        format!("{}:{}:{start}", tag.host, tag.pid)
    }

    fn labels(cluster: &str, owner: &str, node: Option<&str>) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (LABEL_CLUSTER.to_string(), cluster.to_string()),
            (LABEL_OWNER.to_string(), owner.to_string()),
        ]);
        if let Some(node) = node {
            labels.insert(LABEL_NODE.to_string(), node.to_string());
        }
        labels
    }

    async fn create_container(
        docker: &Docker,
        name: &str,
        image: &str,
        labels: HashMap<String, String>,
        network: &str,
    ) -> String {
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["/bin/busybox".into(), "sleep".into(), "3600".into()]),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(network.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        docker
            .create_container(Some(options), body)
            .await
            .unwrap_or_else(|e| panic!("creating container {name}: {e}"))
            .id
    }

    fn not_found<T>(result: Result<T, bollard::errors::Error>) -> bool {
        match result {
            Ok(_) => false,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => true,
            Err(e) => panic!("asking the daemon: {e}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_owners_containers_and_networks_are_collected_and_a_live_owners_kept() {
        let test = "a_dead_owners_containers_and_networks_are_collected_and_a_live_owners_kept";
        let docker = match connect().await {
            Ok(docker) => docker,
            Err(e) => {
                chaos_testkit::skip(test, "docker", &format!("no Docker daemon reachable ({e})"));
                return;
            }
        };
        if !is_static_elf("/bin/busybox") {
            chaos_testkit::skip(
                test,
                "docker",
                &"needs a static /bin/busybox (apt-get install busybox-static)",
            );
            return;
        }
        let _serial = SERIAL.lock().await;
        let mut made = Made::default();
        let me = std::process::id();
        let tag = format!("chaos-gc-test:{me}");

        // Two builds of one tag: the first image is left dangling, as an interrupted rebuild
        // leaves it.
        build(&docker, &tag, 1).await;
        let old = docker.inspect_image(&tag).await.unwrap().id.unwrap();
        made.images.push(old.clone());
        made.images.push(tag.clone());
        build(&docker, &tag, 2).await;
        let current = docker.inspect_image(&tag).await.unwrap().id.unwrap();
        assert_ne!(old, current);

        let dead = dead_tag();
        let dead_cluster = format!("gc-test-dead-{me}");
        let live_cluster = format!("gc-test-live-{me}");
        let mut networks = Vec::new();
        for (cluster, owner) in [
            (&dead_cluster, dead.as_str()),
            (&live_cluster, &owner::current_tag()),
        ] {
            let request = NetworkCreateRequest {
                name: format!("chaos-{cluster}"),
                labels: Some(labels(cluster, owner, None)),
                ..Default::default()
            };
            let id = docker
                .create_network(request)
                .await
                .expect("creating a network")
                .id;
            made.networks.push(id.clone());
            networks.push(id);
        }
        let dead_container = create_container(
            &docker,
            &format!("chaos-{dead_cluster}-n1"),
            &tag,
            labels(&dead_cluster, &dead, Some("n1")),
            &format!("chaos-{dead_cluster}"),
        )
        .await;
        made.containers.push(dead_container.clone());
        let live_container = create_container(
            &docker,
            &format!("chaos-{live_cluster}-n1"),
            &tag,
            labels(&live_cluster, &owner::current_tag(), Some("n1")),
            &format!("chaos-{live_cluster}"),
        )
        .await;
        made.containers.push(live_container.clone());
        // Not ours: no labels. gc must never touch it, whatever its name.
        let unlabelled = {
            let body = ContainerCreateBody {
                image: Some(tag.clone()),
                cmd: Some(vec!["/bin/busybox".into(), "true".into()]),
                ..Default::default()
            };
            let name = format!("chaos-{dead_cluster}-unlabelled");
            let options = CreateContainerOptionsBuilder::default().name(&name).build();
            docker.create_container(Some(options), body).await.unwrap().id
        };
        made.containers.push(unlabelled.clone());

        let exists = async |container: &str| !not_found(docker.inspect_container(container, None).await);
        let network_exists = async |id: &str| !not_found(docker.inspect_network(id, None).await);
        let image_exists = async |id: &str| !not_found(docker.inspect_image(id).await);

        // A dry run, even with --images, names what would go and removes nothing.
        let report = collect_garbage(&GcOptions {
            dry_run: true,
            images: true,
            ..GcOptions::default()
        })
        .await;
        let reason = format!(
            "(cluster {dead_cluster}, runner pid {} gone)",
            owner::OwnerTag::parse(&dead).unwrap().pid
        );
        for line in [
            format!("docker: container chaos-{dead_cluster}-n1 {reason}"),
            format!("docker: network chaos-{dead_cluster} {reason}"),
        ] {
            assert!(
                report.removed.contains(&line),
                "{line:?} missing:\n{}",
                dump(&report)
            );
        }
        let short = |id: &str| id.trim_start_matches("sha256:")[..12].to_string();
        assert!(
            report.removed.iter().any(|l| l
                .starts_with(&format!("docker: image {} ({LABEL_IMAGE}=test-gc)", short(&old)))
                && l.contains("dangling")),
            "{}",
            dump(&report)
        );
        assert!(
            report
                .kept
                .iter()
                .any(|l| l.starts_with(&format!("docker: image {tag} "))
                    && l.ends_with("in use by a container")),
            "{}",
            dump(&report)
        );
        assert!(
            report.kept.iter().any(|l| l.starts_with(&format!(
                "docker: cluster {live_cluster} (1 container(s), 1 network(s))"
            )) && l.contains("alive")),
            "{}",
            dump(&report)
        );
        assert!(
            !report
                .removed
                .iter()
                .any(|l| l.contains(&live_cluster) || l.contains("unlabelled"))
        );
        assert!(
            exists(&dead_container).await && network_exists(&networks[0]).await && image_exists(&old).await
        );

        // The real thing (without --images: other tests use the node images right now).
        let report = collect_garbage(&GcOptions::default()).await;
        assert!(report.errors.is_empty(), "{}", dump(&report));
        assert!(!exists(&dead_container).await, "{}", dump(&report));
        assert!(!network_exists(&networks[0]).await, "{}", dump(&report));
        assert!(
            !image_exists(&old).await,
            "the dangling image survived:\n{}",
            dump(&report)
        );
        assert!(exists(&live_container).await, "{}", dump(&report));
        assert!(network_exists(&networks[1]).await, "{}", dump(&report));
        assert!(exists(&unlabelled).await, "{}", dump(&report));
        assert!(image_exists(&current).await, "{}", dump(&report));
        drop(made);
        assert!(!exists(&live_container).await && !image_exists(&current).await);
    }

    /// Containers and networks whose owner label names process `pid` of this host.
    async fn owned_by(docker: &Docker, pid: u32) -> (Vec<String>, Vec<String>) {
        let prefix = format!("{}:{pid}:", owner::hostname());
        let filters = HashMap::from([("label".to_string(), vec![LABEL_OWNER.to_string()])]);
        let containers = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap()
            .into_iter()
            .filter(|c| {
                c.labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_OWNER))
                    .is_some_and(|o| o.starts_with(&prefix))
            })
            .filter_map(|c| c.names.and_then(|n| n.first().cloned()))
            .collect();
        let networks = docker
            .list_networks(Some(ListNetworksOptionsBuilder::new().filters(&filters).build()))
            .await
            .unwrap()
            .into_iter()
            .filter(|n| {
                n.labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_OWNER))
                    .is_some_and(|o| o.starts_with(&prefix))
            })
            .filter_map(|n| n.name)
            .collect();
        (containers, networks)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_runners_docker_cluster_is_collected() {
        let test = "a_killed_runners_docker_cluster_is_collected";
        if let Err(why) = chaos::backend::registry::available("docker") {
            chaos_testkit::skip(test, "docker", &why);
            return;
        }
        let docker = connect().await.unwrap();
        let _serial = SERIAL.lock().await;
        let state = tempfile::tempdir().unwrap();
        let (mut runner, _) = Runner::start_on("docker", state.path(), 2);
        let pid = runner.pid();
        let (containers, networks) = owned_by(&docker, pid).await;
        assert_eq!(
            (containers.len(), networks.len()),
            (2, 1),
            "{containers:?} {networks:?}"
        );
        // The nodes' TLS files are bind-mounted from a host directory the network names.
        let files = docker
            .inspect_network(&networks[0], None)
            .await
            .unwrap()
            .labels
            .and_then(|l| l.get(chaos::backend::docker::LABEL_FILES).cloned())
            .expect("the network names its nodes' files");
        assert!(Path::new(&files).join("n1/tls").is_dir(), "{files}");
        runner.kill();
        // The agents would outlive the runner by their heartbeat timeout (120 s): gc must not wait.
        let (code, stdout) = run_chaos(&["gc"]).await;
        assert_eq!(code, Some(0), "{stdout}");
        assert!(!Path::new(&files).exists(), "{files} left after gc:\n{stdout}");
        assert!(stdout.contains(&files), "gc did not report {files}:\n{stdout}");
        for name in containers.iter().chain(&networks) {
            let name = name.trim_start_matches('/');
            assert!(stdout.contains(name), "gc did not report {name}:\n{stdout}");
        }
        assert_eq!(
            owned_by(&docker, pid).await,
            (Vec::new(), Vec::new()),
            "left after gc"
        );
    }
}
