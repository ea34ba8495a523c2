//! Heartbeat loss: the agent kills every process tree it started and exits.

mod common;

use std::time::{Duration, Instant};

use chaos_proto::{OutputSpec, ProcInfo, ProcSpec, ProcStarted};
use common::{Agent, group_members, is_dead};

fn detached(command: &str, args: &[&str]) -> ProcSpec {
    let mut spec = ProcSpec::new(command, args.iter().copied());
    spec.stdout = OutputSpec::Null;
    spec.stderr = OutputSpec::Null;
    spec
}

/// Waits (bounded) until the process group `pgid` has `n` live members, returns them.
async fn members(pgid: u32, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = group_members(pgid);
        if found.len() >= n || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn heartbeat_loss_kills_every_tree_and_exits() {
    let mut agent = Agent::start(&["--heartbeat-timeout", "1s"]);
    let ready = Instant::now();
    // The timer starts at start-up; nothing here counts as a heartbeat.
    let started: ProcStarted = agent
        .post("/v1/procs", &detached("sh", &["-c", "sleep 100 & sleep 100"]))
        .await;
    let tree = members(started.pid, 2).await;
    assert!(
        tree.len() >= 2,
        "expected sh and its background sleep in group {}: {tree:?}",
        started.pid
    );

    let status = agent
        .wait_exit(Duration::from_secs(5))
        .expect("agent exits after heartbeat loss");
    let elapsed = ready.elapsed();
    assert_eq!(status.code(), Some(3), "exit code after heartbeat loss");
    // The timer started before the ready line, so timeout + 1 s bounds the exit from here.
    assert!(
        elapsed <= Duration::from_secs(2),
        "took {elapsed:?} (timeout 1 s)"
    );

    let deadline = Instant::now() + Duration::from_secs(2);
    while !tree.iter().all(|&pid| is_dead(pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alive: Vec<u32> = tree.iter().copied().filter(|&pid| !is_dead(pid)).collect();
    assert!(alive.is_empty(), "processes of the tree still alive: {alive:?}");
    let log = agent.stderr();
    assert!(log.contains("no heartbeat"), "{log}");
}

#[tokio::test]
async fn heartbeats_keep_the_agent_alive() {
    let mut agent = Agent::start(&["--heartbeat-timeout", "1s"]);
    let started: ProcStarted = agent.post("/v1/procs", &detached("sleep", &["100"])).await;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        let reply: chaos_proto::HeartbeatReply = agent.post("/v1/heartbeat", &()).await;
        assert_eq!(reply.timeout_ms, 1000);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "agent exited despite heartbeats:\n{}",
        agent.stderr()
    );
    let procs: Vec<ProcInfo> = agent.get("/v1/procs").await;
    assert!(
        procs.iter().any(|p| p.id == started.id && p.exit.is_none()),
        "{procs:?}"
    );

    // Stop heartbeating: now it goes.
    let status = agent
        .wait_exit(Duration::from_secs(3))
        .expect("agent exits once heartbeats stop");
    assert_eq!(status.code(), Some(3));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !is_dead(started.pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(is_dead(started.pid), "sleep {} survived the agent", started.pid);
}

#[tokio::test]
async fn heartbeat_loss_with_none_kills_trees_but_keeps_serving() {
    let agent = Agent::start(&["--heartbeat-timeout", "500ms", "--on-heartbeat-loss", "none"]);
    let started: ProcStarted = agent.post("/v1/procs", &detached("sleep", &["100"])).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !is_dead(started.pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(is_dead(started.pid), "the tree was not killed on heartbeat loss");
    let reply: chaos_proto::WaitReply = agent
        .post(&format!("/v1/procs/{}/wait?timeout_ms=2000", started.id), &())
        .await;
    assert_eq!(reply.exit.and_then(|e| e.signal), Some(9));
    // Still serving.
    let _info: chaos_proto::NodeInfo = agent.get("/v1/info").await;
    assert!(agent.stderr().contains("continuing to serve"));
}

#[tokio::test]
async fn a_heartbeat_with_grace_defers_the_loss_and_no_longer() {
    let mut agent = Agent::start(&["--heartbeat-timeout", "500ms"]);
    let granted = Instant::now();
    let reply: chaos_proto::HeartbeatReply = agent.post("/v1/heartbeat?grace_ms=1500", &()).await;
    assert_eq!(reply.timeout_ms, 500);
    // A plain heartbeat right after must not shorten the grace.
    let _: chaos_proto::HeartbeatReply = agent.post("/v1/heartbeat", &()).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "agent gave up within its grace:\n{}",
        agent.stderr()
    );
    let status = agent
        .wait_exit(Duration::from_secs(3))
        .expect("agent exits once grace and timeout passed");
    assert_eq!(status.code(), Some(3));
    let waited = granted.elapsed();
    assert!(
        waited >= Duration::from_millis(2000) && waited < Duration::from_millis(3500),
        "exited after {waited:?}, expected grace 1.5 s + timeout 0.5 s"
    );
}

#[tokio::test]
async fn a_grace_over_an_hour_is_refused() {
    let agent = Agent::start(&["--heartbeat-timeout", "5s"]);
    let (status, body) = agent
        .request(hyper::Method::POST, "/v1/heartbeat?grace_ms=3600001", Vec::new())
        .await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("grace_ms=3600001"), "{body}");
}
