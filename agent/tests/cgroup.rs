//! `--cgroup`: every process gets its own child cgroup, so descendants that left the process
//! group (setsid) are killed too.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chaos_proto::{OutputSpec, ProcSpec, ProcStarted};
use common::{Agent, is_dead};
use hyper::{Method, StatusCode};

const CGROUP2: &str = "/sys/fs/cgroup/unified";

/// A cgroup made for one test, removed (with any leftover children) on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn create() -> Option<Self> {
        let root = Path::new(CGROUP2);
        if !root.join("cgroup.procs").exists() {
            chaos_testkit::skip(
                "cgroup",
                "cgroup2",
                &format!("no cgroup v2 hierarchy at {CGROUP2}"),
            );
            return None;
        }
        let dir = root.join(format!("chaos-agent-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            chaos_testkit::skip(
                "cgroup",
                "cgroup2",
                &format!("cannot create a cgroup in {CGROUP2}: {e}"),
            );
            return None;
        }
        if !dir.join("cgroup.kill").exists() {
            let _ = std::fs::remove_dir(&dir);
            chaos_testkit::skip("cgroup", "cgroup2", &"this kernel has no cgroup.kill");
            return None;
        }
        Some(Self(dir))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    let _ = std::fs::write(entry.path().join("cgroup.kill"), "1");
                    std::thread::sleep(Duration::from_millis(50));
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn pgid(pid: u32) -> Option<u32> {
    let st = chaos_faults::process::stat(pid as i32).ok()??;
    Some(st.pgrp as u32)
}

#[tokio::test]
async fn cgroup_catches_daemonized_descendants() {
    let Some(cg) = TestCgroup::create() else { return };
    let mut agent = Agent::start(&["--cgroup", cg.0.to_str().unwrap()]);
    let mut spec = ProcSpec::new("sh", ["-c", "setsid sleep 100 & sleep 100"]);
    spec.stdout = OutputSpec::Null;
    spec.stderr = OutputSpec::Null;
    let started: ProcStarted = agent.post("/v1/procs", &spec).await;

    let child_cg = cg.0.join(format!("proc-{}", started.id));
    let deadline = Instant::now() + Duration::from_secs(5);
    let pids: Vec<u32> = loop {
        let pids: Vec<u32> = std::fs::read_to_string(child_cg.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        // Under load the forked child may not have called setsid(2) yet: wait until it has.
        let escaped = pids.iter().any(|&p| pgid(p).is_some_and(|g| g != started.pid));
        if (pids.len() >= 3 && escaped) || Instant::now() > deadline {
            break pids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        pids.len() >= 3,
        "sh, sleep and the setsid sleep should be in {}: {pids:?}",
        child_cg.display()
    );
    assert!(pids.contains(&started.pid));
    let escaped: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| pgid(p) != Some(started.pid))
        .collect();
    assert!(
        !escaped.is_empty(),
        "the setsid sleep should have left the process group: {pids:?}"
    );

    let (status, _) = agent.request(Method::POST, "/v1/shutdown", Bytes::new()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let exit = agent
        .wait_exit(Duration::from_secs(5))
        .expect("agent exits after shutdown");
    assert_eq!(exit.code(), Some(0));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pids.iter().all(|&p| is_dead(p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alive: Vec<u32> = pids.iter().copied().filter(|&p| !is_dead(p)).collect();
    assert!(alive.is_empty(), "survived the agent's shutdown: {alive:?}");
    assert!(!child_cg.exists(), "the agent removes the cgroups it created");
}

#[test]
fn a_cgroup_dir_that_is_not_one_is_refused_at_start_up() {
    let pki = common::Pki::new();
    let not_cgroup = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::agent_bin())
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(pki.node_dir.path())
        .arg("--cgroup")
        .arg(not_cgroup.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--cgroup") && stderr.contains(not_cgroup.path().to_str().unwrap()),
        "{stderr}"
    );
}
