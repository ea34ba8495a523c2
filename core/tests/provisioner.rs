//! A backend written outside the `chaos` crate, against its public API only: a [`Provisioner`]
//! whose machines are agent processes on this host (listening on 127.0.0.1), wrapped in the
//! generic [`AgentCluster`]. It shows that a backend is only what differs — making a machine and
//! starting its agent — and tests what `AgentCluster` does once for every backend: numbering,
//! the ready wait, supervision (a killed agent is restarted), machine faults with a TTL (here a
//! pause is SIGSTOP of the agent process), releasing a machine whose agent never answers, and
//! cleanup.

#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chaos::backend::agent_binary::find_agent_binary;
use chaos::backend::supervisor::AgentEvent;
use chaos::backend::{AgentCluster, ClusterOptions, Limits, Machine, MachineRequest, Provisioner};
use chaos::{Cluster, Error, MachineFault, NodeExt, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Agents as processes of this host. Not isolated at all: only for tests of the generic cluster.
struct HostAgents {
    binary: PathBuf,
    dir: tempfile::TempDir,
    /// Per node: its agent process and how to start it again.
    agents: Mutex<HashMap<String, (Child, Vec<String>)>>,
    /// `n<k>` whose agent is given a TLS directory it cannot use, so it never answers.
    broken: Option<String>,
}

impl HostAgents {
    fn new(broken: Option<&str>) -> Option<Self> {
        let binary = match find_agent_binary() {
            Ok(binary) => binary,
            Err(e) => {
                chaos_testkit::skip("provisioner", "agent", &e.to_string());
                return None;
            }
        };
        Some(Self {
            binary,
            dir: tempfile::tempdir().unwrap(),
            agents: Mutex::new(HashMap::new()),
            broken: broken.map(str::to_string),
        })
    }

    /// Starts the agent with `args`, waits for its ready line and returns it with its address.
    async fn spawn(&self, node: &str, args: &[String]) -> Result<(Child, SocketAddr)> {
        let mut child = Command::new(&self.binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(format!("node {node}: starting the agent"), e))?;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix(chaos::proto::READY_LINE_PREFIX) {
                    return addr.trim().parse::<SocketAddr>().ok();
                }
            }
            None
        };
        let addr = tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| Error::invalid(format!("node {node}"), "the agent did not announce itself"))?;
        // Keep draining stdout so the agent never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((child, addr))
    }

    fn pid(&self, node: &str) -> Option<i32> {
        let agents = self.agents.lock().unwrap();
        agents
            .get(node)
            .and_then(|(child, _)| child.id())
            .map(|p| p as i32)
    }

    fn signal(&self, node: &str, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self
            .pid(node)
            .ok_or_else(|| Error::invalid(format!("node {node}"), "no agent"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| Error::io(format!("node {node}: {signal}"), e.into()))
    }
}

#[async_trait]
impl Provisioner for HostAgents {
    fn name(&self) -> &'static str {
        "host-agents"
    }

    fn limits(&self) -> Limits {
        Limits {
            max_nodes: 3,
            provision_time: Duration::from_secs(10),
        }
    }

    async fn provision(&self, request: MachineRequest<'_>) -> Result<Machine> {
        let node = request.name.clone();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let dir = self.dir.path().join(&node);
        let root = dir.join("root");
        std::fs::create_dir_all(&root).map_err(|e| Error::io("creating the root directory", e))?;
        let tls = dir.join("tls");
        request
            .issue_identity(&[ip], &[])?
            .write_node_dir(&tls, request.ca_pem())?;
        let broken = self.broken.as_deref() == Some(node.as_str());
        let tls_arg = if broken {
            // Another cluster's CA: the agent starts, but refuses the runner's certificate.
            let other = chaos::certs::ClusterCa::generate("other").unwrap();
            let other_tls = dir.join("other-tls");
            other
                .issue_node(&node, &[ip], &[])
                .unwrap()
                .write_node_dir(&other_tls, other.cert_pem())
                .unwrap();
            other_tls
        } else {
            tls
        };
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--tls-dir".into(),
            tls_arg.display().to_string(),
            "--root-dir".into(),
            root.display().to_string(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--heartbeat-timeout".into(),
            format!("{}ms", request.heartbeat_timeout.as_millis()),
        ];
        let (child, addr) = self.spawn(&node, &args).await?;
        // A restarted agent listens where its predecessor did.
        args[1] = addr.to_string();
        self.agents.lock().unwrap().insert(node, (child, args));
        Ok(Machine {
            agent: addr,
            ips: vec![ip],
            interfaces: vec!["lo".into()],
            root_dir: root.display().to_string(),
        })
    }

    async fn release(&self, node: &str) -> Result<()> {
        let removed = self.agents.lock().unwrap().remove(node);
        if let Some((mut child, _)) = removed {
            let _ = child.kill().await;
        }
        Ok(())
    }

    async fn teardown(&self) -> Result<()> {
        self.teardown_now();
        Ok(())
    }

    fn teardown_now(&self) {
        for (_, (mut child, _)) in self.agents.lock().unwrap().drain() {
            let _ = child.start_kill();
        }
    }

    async fn agent_status(&self, node: &str) -> Option<String> {
        let mut agents = self.agents.lock().unwrap();
        match agents.get_mut(node).map(|(child, _)| child.try_wait()) {
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(status.to_string()),
            _ => Some("no agent".into()),
        }
    }

    async fn restart_agent(&self, node: &str) -> Result<()> {
        let args = {
            let agents = self.agents.lock().unwrap();
            let (_, args) = agents
                .get(node)
                .ok_or_else(|| Error::invalid(format!("node {node}"), "released"))?;
            args.clone()
        };
        let (child, _) = self.spawn(node, &args).await?;
        self.agents
            .lock()
            .unwrap()
            .insert(node.to_string(), (child, args));
        Ok(())
    }

    fn machine_faults(&self) -> Vec<MachineFault> {
        vec![MachineFault::Pause]
    }

    async fn apply_machine_fault(&self, node: &str, _fault: MachineFault) -> Result<()> {
        self.signal(node, nix::sys::signal::Signal::SIGSTOP)
    }

    async fn undo_machine_fault(&self, node: &str, _fault: MachineFault) -> Result<()> {
        self.signal(node, nix::sys::signal::Signal::SIGCONT)
    }
}

fn options(name: &str) -> ClusterOptions {
    ClusterOptions {
        name: name.into(),
        heartbeat_timeout: Duration::from_secs(3),
        node_ready_timeout: chaos_testkit::scaled(Duration::from_secs(5)),
        ..ClusterOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioner_outside_the_crate_is_a_whole_backend() {
    let Some(provisioner) = HostAgents::new(None) else {
        return;
    };
    let cluster = AgentCluster::with_provisioner(provisioner, options("host-agents")).unwrap();
    let nodes = cluster.create_nodes(2).await.unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.name()).collect();
    assert_eq!(names, ["n1", "n2"]);
    assert_eq!(
        nodes[0].interfaces(),
        ["lo"],
        "interfaces come from the provisioner"
    );
    let out = nodes[1].run("sh", ["-c", "echo hi from $PWD"]).await.unwrap();
    assert_eq!(
        out.stdout_str().trim(),
        format!("hi from {}", nodes[1].root_dir())
    );
    // The limit is the provisioner's.
    let err = cluster.create_nodes(2).await.unwrap_err().to_string();
    assert!(err.contains("at most 3"), "{err}");

    // Supervision: a killed agent is started again and answers.
    let mut events = cluster.agent_events().unwrap();
    cluster
        .provisioner()
        .signal("n1", nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let deadline = Instant::now() + chaos_testkit::scaled(Duration::from_secs(15));
    loop {
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .expect("the agent is restarted in time")
            .unwrap();
        if matches!(&event, AgentEvent::AgentRestarted { node, .. } if node == "n1") {
            break;
        }
    }
    assert!(
        nodes[0]
            .run("true", Vec::<String>::new())
            .await
            .unwrap()
            .status
            .success()
    );

    // Machine faults: offered by the provisioner, with the cluster's TTL and bookkeeping.
    assert_eq!(cluster.machine_faults(), [MachineFault::Pause]);
    let refused = cluster
        .inject_machine_fault("n2", MachineFault::Stop, Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("stop"), "{refused}");
    let fault = cluster
        .inject_machine_fault("n2", MachineFault::Pause, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!((fault.node(), fault.fault()), ("n2", MachineFault::Pause));
    assert_eq!(cluster.list_machine_faults().len(), 1);
    let paused = tokio::time::timeout(
        Duration::from_millis(500),
        nodes[1].run("true", Vec::<String>::new()),
    )
    .await;
    assert!(paused.is_err(), "a paused agent answered");
    // The TTL heals it; the paused agent was told to expect the silence, so it is still there.
    let deadline = Instant::now() + chaos_testkit::scaled(Duration::from_secs(15));
    while !cluster.list_machine_faults().is_empty() {
        assert!(Instant::now() < deadline, "the pause outlived its TTL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!fault.heal().await.unwrap(), "healed twice");
    assert!(
        nodes[1]
            .run("true", Vec::<String>::new())
            .await
            .unwrap()
            .status
            .success()
    );

    cluster.cleanup().await.unwrap();
    assert!(cluster.provisioner().agents.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_whose_agent_never_answers_is_released() {
    let Some(provisioner) = HostAgents::new(Some("n2")) else {
        return;
    };
    let mut options = options("host-agents-broken");
    options.node_ready_timeout = Duration::from_secs(2);
    let cluster = AgentCluster::with_provisioner(provisioner, options).unwrap();
    let err = cluster.create_nodes(2).await.unwrap_err().to_string();
    assert!(err.contains("node n2") && err.contains("not ready"), "{err}");
    // n1 was made and is kept (cleanup releases it); n2 is released at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = cluster
            .provisioner()
            .agents
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        if left == ["n1"] {
            break;
        }
        assert!(Instant::now() < deadline, "left: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.cleanup().await.unwrap();
    assert!(cluster.provisioner().agents.lock().unwrap().is_empty());
}
