//! Examples of the chaos runner library, written once against the [`Cluster`] and [`Node`]
//! traits so that the same code runs on every backend. The binaries in `examples/` run them from
//! the command line; `tests/examples.rs` runs them on every backend available.
//!
//! * [`hello_world`]: send a file to each of N nodes in parallel, `cat` it back, check the
//!   output and exit code.
//! * [`tcp_through_proxy`]: start a TCP echo server on a node's loopback and talk to it from the
//!   runner through [`Node::dial`].
//! * [`netlab::link_flap_under_load`]: flap a node's link while it sends to another node, and
//!   report throughput before, during and after, with the built-in measurement.

pub mod netlab;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chaos::backend::{Backend, ClusterOptions, registry};
use chaos::proto::{ErrorKind, OutputSpec};
use chaos::{Cluster, Node, NodeExt, ProcSpec, Process, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on running one short command on a node.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What one node answered in [`hello_world`].
#[derive(Debug, Clone)]
pub struct Greeting {
    /// The node's name.
    pub node: String,
    /// The node's first address, if it has one.
    pub address: Option<IpAddr>,
    /// What `cat` printed: the file's content.
    pub output: String,
    /// Time to send the file and read it back with `cat`.
    pub elapsed: Duration,
}

/// The seeds' hello world on `nodes` nodes at once: on every node, write `Hello, world! from
/// <node>` to a file under its root directory, `cat` the file, and check that `cat` exited with
/// code 0 and printed exactly what was written. Returns one [`Greeting`] per node, in node order.
pub async fn hello_world(cluster: &dyn Cluster, nodes: usize) -> anyhow::Result<Vec<Greeting>> {
    ensure!(nodes > 0, "hello_world needs at least one node");
    let nodes = cluster.create_nodes(nodes).await.context("creating the nodes")?;
    let mut greetings = tokio::task::JoinSet::new();
    for node in nodes {
        greetings.spawn(async move { greet(&*node).await });
    }
    let mut all = Vec::new();
    while let Some(joined) = greetings.join_next().await {
        all.push(joined.context("a hello_world task panicked")??);
    }
    // Node names are n1, n2, …: sort numerically, not as text.
    all.sort_by_key(|g| (g.node.len(), g.node.clone()));
    Ok(all)
}

async fn greet(node: &dyn Node) -> anyhow::Result<Greeting> {
    let started = Instant::now();
    let name = node.name();
    // Node layouts differ between backends: build paths from the node's root directory.
    let path = format!("{}/hello", node.root_dir());
    let text = format!("Hello, world! from {name}");
    node.send_bytes(&path, text.clone().into_bytes(), 0o644)
        .await
        .with_context(|| format!("node {name}: sending {path}"))?;
    let out = node
        .run_timeout(ProcSpec::new("cat", [path.as_str()]), None, COMMAND_TIMEOUT)
        .await
        .with_context(|| format!("node {name}: running cat {path}"))?;
    ensure!(
        out.status.success(),
        "node {name}: cat {path} ended with {} (stderr: {:?})",
        out.status,
        out.stderr_str()
    );
    ensure!(
        out.stdout == text.as_bytes(),
        "node {name}: cat printed {:?}, expected {text:?}",
        out.stdout_str()
    );
    Ok(Greeting {
        node: name.to_string(),
        address: node.addresses().first().copied(),
        output: out.stdout_str(),
        elapsed: started.elapsed(),
    })
}

/// What [`tcp_through_proxy`] did.
#[derive(Debug, Clone)]
pub struct EchoReport {
    /// The node the server ran on.
    pub node: String,
    /// The address dialled on the node (its loopback).
    pub address: String,
    /// Bytes sent and echoed back.
    pub bytes: usize,
    /// Time from dialling to the last echoed byte.
    pub round_trip: Duration,
}

/// Bytes sent through the echo server: enough to span several buffers and frames.
const ECHO_BYTES: usize = 256 * 1024;

/// Bound on the echo server starting to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a TCP echo server (`busybox nc`) on a new node, listening on the node's loopback, waits
/// until it accepts connections, then dials it from the runner with [`Node::dial`] and checks
/// that 256 KiB sent come back unchanged. The dial is tunnelled through the node's agent (on
/// `local`, to this host's loopback).
///
/// Needs `busybox` on the node (Debian: `apt-get install busybox-static`).
pub async fn tcp_through_proxy(cluster: &dyn Cluster) -> anyhow::Result<EchoReport> {
    let node = cluster
        .create_nodes(1)
        .await
        .context("creating a node")?
        .remove(0);
    // `local` nodes share this host's ports, and tests run in parallel: take a port that is free
    // right now, and try another if someone grabs it first.
    for _ in 0..3 {
        let port = free_port()?;
        match echo_server(&node, port).await? {
            Some(server) => {
                let result = echo(&*node, port).await;
                stop(&*node, server).await?;
                return result;
            }
            None => continue, // The port was taken meanwhile.
        }
    }
    bail!(
        "node {}: could not find a free port for the echo server in 3 attempts",
        node.name()
    )
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr().context("finding a free port")?.port())
}

/// Starts `busybox nc` echoing every connection on `port` and waits until it accepts
/// connections. `None` when the port turned out to be in use.
async fn echo_server(node: &Arc<dyn Node>, port: u16) -> anyhow::Result<Option<Process>> {
    let name = node.name();
    // `-ll`: keep listening after each connection (so probing does not use the server up);
    // `-e cat`: each connection is served by `cat`, which echoes it.
    let mut spec = ProcSpec::new("busybox", ["nc", "-ll", "-p", &port.to_string(), "-e", "cat"]);
    spec.stdout = OutputSpec::Null;
    let mut server = node.start(spec).await.map_err(|e| {
        let hint = if e.kind() == Some(ErrorKind::CommandNotFound) {
            " (the echo server needs busybox on the node: apt-get install busybox-static)"
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!("node {name}: starting the echo server{hint}"))
    })?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        // Probe the server's state without blocking (`timeout` polls the wait once first).
        if let Ok(status) = tokio::time::timeout(Duration::ZERO, server.wait()).await {
            let status = status.with_context(|| format!("node {name}: waiting for the echo server"))?;
            let mut stderr = String::new();
            if let Some(mut err) = server.stderr.take() {
                let _ = tokio::time::timeout(Duration::from_secs(5), err.read_to_string(&mut stderr)).await;
            }
            if stderr.contains("in use") {
                return Ok(None);
            }
            bail!(
                "node {name}: the echo server on port {port} ended with {status}: {}",
                stderr.trim()
            );
        }
        match node.dial(&addr).await {
            Ok(probe) => {
                drop(probe);
                return Ok(Some(server));
            }
            Err(e) if e.kind() == Some(ErrorKind::Unreachable) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                let _ = server.signal_group(Signal::KILL).await;
                return Err(e).context(format!("node {name}: the echo server never listened on {addr}"));
            }
        }
    }
}

/// Sends [`ECHO_BYTES`] to the server on `port` and checks they come back unchanged.
async fn echo(node: &dyn Node, port: u16) -> anyhow::Result<EchoReport> {
    let name = node.name();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let stream = node
        .dial(&addr)
        .await
        .with_context(|| format!("node {name}: dialling {addr}"))?;
    let payload: Vec<u8> = (0..ECHO_BYTES).map(|i| (i * 7 + i / 251) as u8).collect();
    let (mut rx, mut tx) = tokio::io::split(stream);
    // Write and read at once: the echo fills buffers on the way back while we still send.
    let send = async {
        tx.write_all(&payload).await?;
        tx.flush().await
    };
    let receive = async {
        let mut back = vec![0u8; payload.len()];
        rx.read_exact(&mut back).await.map(|_| back)
    };
    let exchange = async { tokio::try_join!(send, receive) };
    let (_, back) = tokio::time::timeout(COMMAND_TIMEOUT, exchange)
        .await
        .with_context(|| format!("node {name}: no full echo from {addr} within {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("node {name}: talking to {addr}"))?;
    let round_trip = started.elapsed();
    if let Some(i) = back.iter().zip(&payload).position(|(a, b)| a != b) {
        bail!("node {name}: the echo from {addr} differs from what was sent at byte {i}");
    }
    let _ = tx.shutdown().await;
    Ok(EchoReport {
        node: name.to_string(),
        address: addr,
        bytes: payload.len(),
        round_trip,
    })
}

/// Kills the server and every connection handler it forked.
async fn stop(node: &dyn Node, server: Process) -> anyhow::Result<()> {
    server
        .signal_group(Signal::KILL)
        .await
        .with_context(|| format!("node {}: stopping the echo server", node.name()))?;
    tokio::time::timeout(COMMAND_TIMEOUT, server.wait())
        .await
        .with_context(|| format!("node {}: the echo server did not exit after SIGKILL", node.name()))??;
    Ok(())
}

/// Parses a backend name against the registry.
fn parse_backend(s: &str) -> Result<&'static Backend, String> {
    registry::find(s).map_err(|e| e.to_string())
}

/// Command-line options shared by the example binaries.
#[derive(Debug, clap::Parser)]
pub struct ExampleArgs {
    /// Backend to run on (a name from the backend registry: local, netns, docker, hosts; ec2 with its feature).
    #[arg(long, default_value = "netns", value_parser = parse_backend)]
    pub backend: &'static Backend,
    /// Number of nodes.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub nodes: u32,
}

/// Creates a cluster for an example, runs `example` on it and cleans it up, whatever happened.
/// The example's error comes first; a cleanup failure is reported too.
pub async fn with_cluster<T>(
    kind: &'static Backend,
    name: &str,
    example: impl AsyncFnOnce(&dyn Cluster) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let options = ClusterOptions {
        name: name.to_string(),
        ..ClusterOptions::default()
    };
    let cluster = kind
        .create(options)
        .await
        .with_context(|| format!("creating a {kind} cluster"))?;
    let result = example(&*cluster).await;
    let cleaned = cluster
        .cleanup()
        .await
        .with_context(|| format!("cleaning up the {kind} cluster"));
    match (result, cleaned) {
        (Ok(value), Ok(())) => Ok(value),
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(c)) => Err(c),
        (Err(e), Err(c)) => Err(anyhow::anyhow!("{e:#} (and then {c:#})")),
    }
}
