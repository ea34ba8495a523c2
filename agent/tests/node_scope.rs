//! A node's process faults reach only that node's processes: signals by name, pid or group
//! and freezes of a process tree or cgroup, from an agent with a cgroup (netns) and from one
//! without (docker, a bare agent) — with real processes of another "node" (another agent with
//! its own cgroup) and of the host sharing the name. Daemonized descendants stay the node's,
//! and the orphans the agent adopts are reaped.

mod common;
mod fault_agent;

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chaos::agent_client::AgentClient;
use chaos_faults::process;
use chaos_proto::fault::{FaultRequest, FaultSpec, FreezeTarget, HealReply, Mechanism};
use chaos_proto::{ErrorKind, NodeSignalRequest, ProcSpec, Signal, SignalTarget};
use common::WAIT;
use fault_agent::{Pki, TestAgent, TestCgroup, quiet, wait_until};
use hyper::Method;

/// A copy of `sleep` reachable under `name` (a symlink: `/proc/<pid>/comm` is the link's name),
/// so no other process on the machine matches it.
fn named_sleep(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a sleep binary");
    std::os::unix::fs::symlink(sleep, &link).unwrap();
    link
}

fn unique_name(tag: &str) -> String {
    format!("{tag}{}", std::process::id() % 1_000_000)
}

/// A host process — no agent started it — killed on drop.
struct HostProcess(Child);

impl HostProcess {
    fn start(program: &Path) -> Self {
        let child = Command::new(program)
            .arg("300")
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawning a host process");
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

fn stopped(pid: u32) -> bool {
    process::stat(pid as i32)
        .unwrap()
        .is_some_and(|st| st.is_stopped())
}

/// Alive and not a zombie.
fn running(pid: u32) -> bool {
    process::stat(pid as i32).unwrap().is_some_and(|st| !st.is_dead())
}

fn ppid(pid: u32) -> Option<u32> {
    process::stat(pid as i32).unwrap().map(|st| st.ppid as u32)
}

fn by_name(signal: Signal, name: &str) -> NodeSignalRequest {
    NodeSignalRequest {
        signal,
        target: SignalTarget::Name(name.to_string()),
    }
}

fn to(signal: Signal, target: SignalTarget) -> NodeSignalRequest {
    NodeSignalRequest { signal, target }
}

fn freeze(target: FreezeTarget) -> FaultRequest {
    FaultRequest {
        id: None,
        ttl_ms: 30_000,
        spec: FaultSpec::Freeze(target),
    }
}

/// The pids of the cgroup `dir`.
fn cgroup_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[tokio::test]
async fn an_agent_with_a_cgroup_reaches_only_the_processes_of_its_cgroup() {
    if !nix::unistd::geteuid().is_root() {
        chaos_testkit::skip("node_scope (cgroup)", "root", &"creating cgroups needs root");
        return;
    }
    let (Some(cg1), Some(cg2)) = (TestCgroup::create(), TestCgroup::create()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (root1, root2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let n1 = TestAgent::start(&pki, root1.path(), &["--cgroup", cg1.0.to_str().unwrap()]);
    let n2 = TestAgent::start(&pki, root2.path(), &["--cgroup", cg2.0.to_str().unwrap()]);
    let name = unique_name("cns");
    let program = named_sleep(dir.path(), &name);
    let spec = quiet(ProcSpec::new(program.to_str().unwrap(), ["300"]));
    let mine = n1.start_proc(&spec).await;
    let theirs = n2.start_proc(&spec).await;
    let host = HostProcess::start(&program);
    let all = [mine.pid, theirs.pid, host.pid()];
    assert!(
        wait_until(WAIT, || all.iter().all(|&p| comm(p) == name)).await,
        "{all:?} never all ran as {name}"
    );

    // By name: only n1's process, though three match.
    let pids: Vec<u32> = n1
        .ok(Method::POST, "/v1/signal", &by_name(Signal::STOP, &name))
        .await;
    assert_eq!(pids, [mine.pid]);
    assert!(wait_until(WAIT, || stopped(mine.pid)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !stopped(theirs.pid) && !stopped(host.pid()),
        "a pause by name escaped the node"
    );
    let pids: Vec<u32> = n1
        .ok(Method::POST, "/v1/signal", &by_name(Signal::CONT, &name))
        .await;
    assert_eq!(pids, [mine.pid]);

    // By pid, by group: another node's and the host's processes are refused, by pid.
    for (pid, cgroup) in [(theirs.pid, Some(&cg2.0)), (host.pid(), None)] {
        let e = n1
            .fails(
                Method::POST,
                "/v1/signal",
                &to(Signal::STOP, SignalTarget::Pid(pid)),
            )
            .await;
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
        assert!(
            e.message.starts_with(&format!(
                "pid {pid} is not a process of this node: it runs in cgroup"
            )),
            "{e}"
        );
        if let Some(cg) = cgroup {
            let theirs = cg.file_name().unwrap().to_str().unwrap();
            assert!(e.message.contains(theirs), "names the cgroup it runs in: {e}");
        }
        let e = n1
            .fails(
                Method::POST,
                "/v1/signal",
                &to(Signal::STOP, SignalTarget::Group(pid)),
            )
            .await;
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
        assert!(
            e.message
                .contains(&format!("member pid {pid} is not a process of this node")),
            "{e}"
        );
        let e = n1
            .fails(
                Method::POST,
                "/v1/faults",
                &freeze(FreezeTarget::ProcessTree { pid: pid as i32 }),
            )
            .await;
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
        assert!(
            e.message
                .contains(&format!("pid {pid} is not a process of this node")),
            "{e}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!stopped(theirs.pid) && !stopped(host.pid()));

    // Cgroups: only inside the node's.
    let their_cgroup = cg2.0.join(format!("proc-{}", theirs.id));
    let e = n1
        .fails(
            Method::POST,
            "/v1/faults",
            &freeze(FreezeTarget::Cgroup {
                path: their_cgroup.to_str().unwrap().into(),
            }),
        )
        .await;
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert!(e.message.contains("is not this node's"), "{e}");
    assert_eq!(
        std::fs::read_to_string(their_cgroup.join("cgroup.freeze"))
            .unwrap()
            .trim(),
        "0"
    );
    let my_cgroup = cg1.0.join(format!("proc-{}", mine.id));
    let frozen: chaos_proto::fault::FaultInfo = n1
        .ok(
            Method::POST,
            "/v1/faults",
            &freeze(FreezeTarget::Cgroup {
                path: my_cgroup.to_str().unwrap().into(),
            }),
        )
        .await;
    assert_eq!(frozen.mechanism, Mechanism::CgroupV2Freeze);
    let _: HealReply = n1
        .ok(Method::DELETE, &format!("/v1/faults/{}", frozen.id), &())
        .await;

    // A daemon (setsid and a double fork) of a node process is still the node's.
    let script = format!("(setsid '{}' 301 >/dev/null 2>&1 &); exit 0", program.display());
    let starter = n1
        .start_proc(&quiet(ProcSpec::new("sh", ["-c", script.as_str()])))
        .await;
    let starter_cgroup = cg1.0.join(format!("proc-{}", starter.id));
    let mut daemon = None;
    assert!(
        wait_until(WAIT, || {
            daemon = cgroup_pids(&starter_cgroup)
                .into_iter()
                .find(|&p| comm(p) == name);
            daemon.is_some()
        })
        .await,
        "the daemon never showed up in {}",
        starter_cgroup.display()
    );
    let daemon = daemon.unwrap();
    assert_ne!(
        process::stat(daemon as i32).unwrap().unwrap().pgrp as u32,
        starter.pid,
        "it left the group"
    );
    let mut pids: Vec<u32> = n1
        .ok(Method::POST, "/v1/signal", &by_name(Signal::KILL, &name))
        .await;
    pids.sort_unstable();
    let mut expected = vec![mine.pid, daemon];
    expected.sort_unstable();
    assert_eq!(pids, expected, "the node's two processes of that name, no more");
    assert!(wait_until(WAIT, || !running(mine.pid) && !running(daemon)).await);
    assert!(
        running(theirs.pid) && running(host.pid()),
        "a kill by name escaped the node"
    );
    drop((n1, n2));
}

#[tokio::test]
async fn an_agent_without_a_cgroup_reaches_its_descendants_and_reaps_its_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let root = tempfile::tempdir().unwrap();
    let mut agent = TestAgent::start(&pki, root.path(), &[]);
    let agent_pid = agent.child.id();
    let name = unique_name("cnd");
    let program = named_sleep(dir.path(), &name);
    let host = HostProcess::start(&program);

    // A daemon started on the node: it leaves its session and its parents exit, so the
    // agent (a child subreaper) adopts it and it stays the node's.
    let script = format!("(setsid '{}' 300 >/dev/null 2>&1 &); exit 0", program.display());
    agent
        .start_proc(&quiet(ProcSpec::new("sh", ["-c", script.as_str()])))
        .await;
    let mut daemon = None;
    assert!(
        wait_until(WAIT, || {
            daemon = process::pids_by_name(&name)
                .unwrap()
                .into_iter()
                .map(|p| p as u32)
                .find(|&p| p != host.pid() && ppid(p) == Some(agent_pid));
            daemon.is_some()
        })
        .await,
        "no process named {name} was adopted by the agent (pid {agent_pid})"
    );
    let daemon = daemon.unwrap();
    let pids: Vec<u32> = agent
        .ok(Method::POST, "/v1/signal", &by_name(Signal::STOP, &name))
        .await;
    assert_eq!(
        pids,
        [daemon],
        "the daemon, not the host's process of the same name"
    );
    assert!(wait_until(WAIT, || stopped(daemon)).await);
    assert!(!stopped(host.pid()));

    let e = agent
        .fails(
            Method::POST,
            "/v1/signal",
            &to(Signal::KILL, SignalTarget::Pid(host.pid())),
        )
        .await;
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    // Through the runner's client: the node is named, then the pid, then why.
    let client = AgentClient::new("n1", agent.addr, agent.client.clone());
    let e = client
        .signal_target(Signal::KILL, SignalTarget::Pid(host.pid()))
        .await
        .unwrap_err()
        .to_string();
    let expected = format!(
        "node n1: pid {} is not a process of this node: it does not descend from the agent",
        host.pid()
    );
    assert!(e.starts_with(&expected), "{e}");
    assert!(running(host.pid()));

    // Killed by name, the adopted daemon is reaped by the agent: no zombie is left.
    let pids: Vec<u32> = agent
        .ok(Method::POST, "/v1/signal", &by_name(Signal::KILL, &name))
        .await;
    assert_eq!(pids, [daemon]);
    assert!(
        wait_until(WAIT, || process::stat(daemon as i32).unwrap().is_none()).await,
        "the killed daemon was not reaped: {:?}",
        process::stat(daemon as i32)
    );

    // Orphans by the dozen: each is reaped once it exits (PID 1 here does not reap).
    let pid_file = root.path().join("orphans");
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do (sleep 0.2 & echo $! >> '{}'); done; exit 0",
        pid_file.display()
    );
    agent
        .start_proc(&quiet(ProcSpec::new("sh", ["-c", script.as_str()])))
        .await;
    let read_orphans = || -> Vec<u32> {
        std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    assert!(wait_until(WAIT, || read_orphans().len() == 12).await);
    let orphans = read_orphans();
    assert!(
        wait_until(WAIT, || orphans
            .iter()
            .all(|&p| process::stat(p as i32).unwrap().is_none()))
        .await,
        "zombies left: {:?}",
        orphans
            .iter()
            .filter_map(|&p| process::stat(p as i32).unwrap().map(|st| (p, st)))
            .collect::<Vec<_>>()
    );

    // A daemon is killed when the agent shuts down, like everything it started.
    let script = format!("(setsid '{}' 302 >/dev/null 2>&1 &); exit 0", program.display());
    agent
        .start_proc(&quiet(ProcSpec::new("sh", ["-c", script.as_str()])))
        .await;
    let mut second = None;
    assert!(
        wait_until(WAIT, || {
            second = process::pids_by_name(&name)
                .unwrap()
                .into_iter()
                .map(|p| p as u32)
                .find(|&p| p != host.pid() && ppid(p) == Some(agent_pid));
            second.is_some()
        })
        .await
    );
    let second = second.unwrap();
    let (status, _) = agent
        .call(Method::POST, "/v1/shutdown", bytes::Bytes::new())
        .await;
    assert!(status.is_success());
    assert!(
        agent.wait_exit(Duration::from_secs(10)).is_some(),
        "the agent exits"
    );
    assert!(
        wait_until(WAIT, || !running(second)).await,
        "the adopted daemon {second} survived the agent's shutdown"
    );
    assert!(running(host.pid()), "the host's process is not the node's");
}
