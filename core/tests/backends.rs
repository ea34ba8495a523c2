//! The backend test suite: the same checks on every backend available on this machine (see
//! `chaos::backend_tests!`: one test per backend, e.g. `stdio_round_trips_binary_data::netns`), plus checks specific to `local`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chaos::backend::ClusterOptions;
use chaos::backend::local::LocalCluster;
use chaos::proto::{ErrorKind, FileType, OutputSpec, StdinSpec};
use chaos::{Cluster, Error, Node, NodeExt, ProcSpec, Signal};
use common::{PseudoRandomReader, StreamHash, alive_here, alive_on, gone_within, hash_reader, one_node};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Bound on anything in these tests that should be quick.
const QUICK: Duration = Duration::from_secs(10);

fn sh(script: &str) -> ProcSpec {
    ProcSpec::new("sh", ["-c", script])
}

/// Reads lines from a process's stdout until `n` were read.
async fn read_lines(reader: &mut BufReader<chaos::cluster::ByteReader>, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..n {
        let mut line = String::new();
        tokio::time::timeout(QUICK, reader.read_line(&mut line))
            .await
            .expect("a line within bound")
            .unwrap();
        lines.push(line.trim().to_string());
    }
    lines
}

chaos::backend_tests!(stdio_round_trips_binary_data);
async fn stdio_round_trips_binary_data(cluster: Arc<dyn Cluster>) {
    {
        let node = one_node(&*cluster).await;
        // Every byte value, several times, so a text/UTF-8 conversion anywhere would show.
        let data: Vec<u8> = (0..4).flat_map(|_| 0..=255u8).collect();
        let out = node
            .run_spec(ProcSpec::new("cat", Vec::<String>::new()), Some(data.clone()))
            .await
            .unwrap();
        assert!(out.status.success(), "{:?}", out.status);
        assert_eq!(out.stdout, data);
        assert!(out.stderr.is_empty());

        // stdout and stderr at once, kept apart.
        let out = node
            .run_spec(sh("cat; printf 'e\\000\\377' >&2"), Some(data.clone()))
            .await
            .unwrap();
        assert_eq!(out.stdout, data);
        assert_eq!(out.stderr, b"e\0\xff");
        let out = node.run_spec(sh("cat >&2"), Some(data.clone())).await.unwrap();
        assert!(out.stdout.is_empty());
        assert_eq!(out.stderr, data);
    }
}

/// The bytes `seq 1 n` prints, hashed.
fn seq_hash(n: u64) -> StreamHash {
    let mut hash = StreamHash::new();
    let mut digits = b"0".to_vec();
    let mut chunk = Vec::with_capacity(1 << 20);
    for _ in 0..n {
        // Increment the decimal counter in place.
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
        chunk.extend_from_slice(&digits);
        chunk.push(b'\n');
        if chunk.len() >= (1 << 20) - 16 {
            hash.update(&chunk);
            chunk.clear();
        }
    }
    hash.update(&chunk);
    hash
}

chaos::backend_tests!(stdout_streams_100_mb);
async fn stdout_streams_100_mb(cluster: Arc<dyn Cluster>) {
    const N: u64 = 12_500_000; // `seq 1 N` prints 101.4 MB.
    let expected = seq_hash(N);
    assert!(expected.len() >= 100_000_000);
    {
        let node = one_node(&*cluster).await;
        let mut proc = node
            .start(ProcSpec::new("seq", ["1".to_string(), N.to_string()]))
            .await
            .unwrap();
        let stdout = proc.stdout.take().unwrap();
        // Hashed while streaming: the 100 MB are never held.
        let got = tokio::time::timeout(Duration::from_secs(120), hash_reader(stdout))
            .await
            .unwrap()
            .unwrap();
        let status = tokio::time::timeout(QUICK, proc.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status:?}");
        assert_eq!(got.len(), expected.len());
        assert_eq!(got.finish(), expected.finish(), "stdout differs from `seq 1 {N}`");
    }
}

chaos::backend_tests!(exit_codes_and_signals_are_reported);
async fn exit_codes_and_signals_are_reported(cluster: Arc<dyn Cluster>) {
    {
        let node = one_node(&*cluster).await;
        let out = node.run_spec(sh("exit 7"), None).await.unwrap();
        assert_eq!((out.status.code, out.status.signal), (Some(7), None));
        assert!(!out.status.success());

        let proc = node.start(ProcSpec::new("sleep", ["100"])).await.unwrap();
        proc.signal(Signal::TERM).await.unwrap();
        let status = tokio::time::timeout(QUICK, proc.wait()).await.unwrap().unwrap();
        assert_eq!((status.code, status.signal), (None, Some(15)));
        assert!(status.duration_us < 10_000_000, "{status:?}");

        // Any signal, real-time ones included (their default action terminates).
        let proc = node.start(ProcSpec::new("sleep", ["100"])).await.unwrap();
        let rt: Signal = "SIGRTMIN+2".parse().unwrap();
        proc.signal(rt).await.unwrap();
        // Waiting concurrently and repeatedly gives the same status every time.
        let (a, b) = tokio::join!(proc.wait(), proc.wait());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.signal, Some(rt.0));
        assert_eq!(a, b);
        assert_eq!(proc.wait().await.unwrap(), a);
    }
}

chaos::backend_tests!(signal_group_kills_the_whole_tree);
async fn signal_group_kills_the_whole_tree(cluster: Arc<dyn Cluster>) {
    {
        let node = one_node(&*cluster).await;
        let mut proc = node
            .start(sh("sleep 100 & echo $!; sleep 100 & echo $!; wait"))
            .await
            .unwrap();
        let mut stdout = BufReader::new(proc.stdout.take().unwrap());
        let children: Vec<u32> = read_lines(&mut stdout, 2)
            .await
            .iter()
            .map(|l| l.parse().unwrap())
            .collect();
        for &pid in &children {
            assert!(
                alive_on(&*node, pid).await,
                "child {pid} should run before the signal"
            );
        }
        proc.signal_group(Signal::TERM).await.unwrap();
        let status = tokio::time::timeout(QUICK, proc.wait()).await.unwrap().unwrap();
        assert_eq!(status.signal, Some(15), "{status:?}");
        // The children held stdout open: EOF means they are all gone.
        let mut rest = Vec::new();
        tokio::time::timeout(QUICK, stdout.read_to_end(&mut rest))
            .await
            .expect("stdout closes")
            .unwrap();
        for pid in children {
            assert!(!alive_on(&*node, pid).await, "child {pid} survived signal_group");
        }
    }
}

chaos::backend_tests!(file_of_1_gib_round_trips);
async fn file_of_1_gib_round_trips(cluster: Arc<dyn Cluster>) {
    const LEN: u64 = 1 << 30;
    {
        let node = one_node(&*cluster).await;
        let path = format!("{}/big/file.bin", node.root_dir());
        let source = PseudoRandomReader::new(0x5eed, LEN);
        let sent_hash = source.hash();
        let written = node.send_file(&path, 0o600, Box::pin(source)).await.unwrap();
        assert_eq!(written, LEN);
        let stat = node.stat(&path).await.unwrap();
        assert_eq!(
            (stat.size, stat.mode, stat.file_type),
            (LEN, 0o600, FileType::File)
        );
        let back = hash_reader(node.read_file(&path).await.unwrap()).await.unwrap();
        let sent = sent_hash.lock().unwrap().clone();
        assert_eq!(back.len(), LEN);
        assert_eq!(
            back.finish(),
            sent.finish(),
            "the file read back differs from the file sent"
        );
        node.remove(&path, false).await.unwrap();
    }
}

chaos::backend_tests!(local_files_upload_and_download_with_their_mode);
async fn local_files_upload_and_download_with_their_mode(cluster: Arc<dyn Cluster>) {
    use std::os::unix::fs::PermissionsExt;
    {
        let node = one_node(&*cluster).await;
        let local = tempfile::tempdir().unwrap();
        let source = local.path().join("tool.sh");
        // More than one buffer's worth, not a multiple of it.
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&source, &data).unwrap();
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o750)).unwrap();
        let remote = format!("{}/up/tool.sh", node.root_dir());
        assert_eq!(node.upload(&source, &remote).await.unwrap(), data.len() as u64);
        let stat = node.stat(&remote).await.unwrap();
        assert_eq!((stat.size, stat.mode), (data.len() as u64, 0o750));
        let back = local.path().join("back.bin");
        assert_eq!(node.download(&remote, &back).await.unwrap(), data.len() as u64);
        assert!(std::fs::read(&back).unwrap() == data, "downloaded bytes differ");

        let err = node
            .download(&format!("{}/missing", node.root_dir()), &back)
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
        let err = node
            .upload(&local.path().join("missing"), &remote)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}

chaos::backend_tests!(files_can_be_listed_stated_and_removed);
async fn files_can_be_listed_stated_and_removed(cluster: Arc<dyn Cluster>) {
    {
        let node = one_node(&*cluster).await;
        let dir = format!("{}/a/b", node.root_dir());
        node.send_bytes(&format!("{dir}/x"), b"12345".to_vec(), 0o640)
            .await
            .unwrap();
        node.send_bytes(&format!("{dir}/y"), Vec::new(), 0o755)
            .await
            .unwrap();
        // Overwriting replaces the content and the mode.
        node.send_bytes(&format!("{dir}/x"), b"123".to_vec(), 0o644)
            .await
            .unwrap();
        assert_eq!(node.read_bytes(&format!("{dir}/x")).await.unwrap(), b"123");

        let entries = node.list_dir(&dir).await.unwrap();
        let names: Vec<_> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.stat.size, e.stat.mode))
            .collect();
        assert_eq!(names, [("x", 3, 0o644), ("y", 0, 0o755)]);
        assert_eq!(node.stat(&dir).await.unwrap().file_type, FileType::Dir);

        let parent = format!("{}/a", node.root_dir());
        let err = node.remove(&parent, false).await.unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::Conflict), "{err}");
        node.remove(&parent, true).await.unwrap();
        assert!(node.stat(&parent).await.unwrap_err().is_not_found());
    }
}

chaos::backend_tests!(missing_things_are_not_found);
async fn missing_things_are_not_found(cluster: Arc<dyn Cluster>) {
    {
        let node = one_node(&*cluster).await;
        let missing = format!("{}/no/such/file", node.root_dir());
        let read = tokio::time::timeout(QUICK, node.read_file(&missing))
            .await
            .unwrap();
        let err = read.err().expect("reading a missing file fails");
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains(&missing), "{err}");
        assert!(node.stat(&missing).await.unwrap_err().is_not_found());
        assert!(node.list_dir(&missing).await.unwrap_err().is_not_found());
        assert!(node.remove(&missing, true).await.unwrap_err().is_not_found());
    }
}

chaos::backend_tests!(missing_command_is_named_without_hanging);
async fn missing_command_is_named_without_hanging(cluster: Arc<dyn Cluster>) {
    {
        let node = one_node(&*cluster).await;
        let started = tokio::time::timeout(QUICK, node.start(ProcSpec::new("chaos-no-such-command", ["x"])))
            .await
            .expect("a missing command fails quickly");
        let err = started.expect_err("starting a missing command fails");
        assert_eq!(err.kind(), Some(ErrorKind::CommandNotFound), "{err}");
        assert!(err.to_string().contains("chaos-no-such-command"), "{err}");

        let mut spec = ProcSpec::new("true", Vec::<String>::new());
        spec.cwd = Some(format!("{}/no-such-dir", node.root_dir()));
        let err = node.start(spec).await.expect_err("a missing cwd fails");
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }
}

chaos::backend_tests!(process_spec_options_are_honoured);
async fn process_spec_options_are_honoured(cluster: Arc<dyn Cluster>) {
    {
        let node = one_node(&*cluster).await;
        let root = node.root_dir().to_string();

        // The working directory defaults to the node's root directory.
        let out = node.run("pwd", Vec::<String>::new()).await.unwrap();
        assert_eq!(out.stdout_str().trim(), root);

        let mut spec = sh("echo \"$CHAOS_T:${HOME:-unset}\"; pwd");
        spec.env.insert("CHAOS_T".into(), "v1".into());
        spec.cwd = Some("/".into());
        let out = node.run_spec(spec.clone(), None).await.unwrap();
        let lines: Vec<String> = out.stdout_str().lines().map(String::from).collect();
        assert!(lines[0].starts_with("v1:") && lines[0] != "v1:unset", "{lines:?}");
        assert_eq!(lines[1], "/");
        spec.env_clear = true;
        spec.command = "/bin/sh".into();
        let out = node.run_spec(spec, None).await.unwrap();
        assert!(out.stdout_str().starts_with("v1:unset\n"), "{}", out.stdout_str());

        // Output to files (parents created; append or truncate), input from a file.
        let log = format!("{root}/logs/deep/out.log");
        for (text, append) in [("one", false), ("two", true)] {
            let mut spec = ProcSpec::new("echo", [text]);
            spec.stdout = OutputSpec::File {
                path: log.clone(),
                append,
            };
            let out = node.run_spec(spec, None).await.unwrap();
            assert!(out.status.success() && out.stdout.is_empty());
        }
        assert_eq!(node.read_bytes(&log).await.unwrap(), b"one\ntwo\n");
        let mut spec = ProcSpec::new("tr", ["a-z", "A-Z"]);
        spec.stdin = StdinSpec::File { path: log.clone() };
        spec.stderr = OutputSpec::Null;
        assert_eq!(node.run_spec(spec, None).await.unwrap().stdout, b"ONE\nTWO\n");
        let mut spec = ProcSpec::new("echo", ["three"]);
        spec.stdout = OutputSpec::File {
            path: log.clone(),
            append: false,
        };
        node.run_spec(spec, None).await.unwrap();
        assert_eq!(node.read_bytes(&log).await.unwrap(), b"three\n");
    }
}

chaos::backend_tests!(run_timeout_kills_the_process);
async fn run_timeout_kills_the_process(cluster: Arc<dyn Cluster>) {
    {
        let node = one_node(&*cluster).await;
        let pid_file = format!("{}/pid", node.root_dir());
        let spec = sh(&format!("echo $$ > {pid_file}; exec sleep 100"));
        let started = std::time::Instant::now();
        let err = node
            .run_timeout(spec, None, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(err.to_string().contains(node.name()), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: u32 = String::from_utf8(node.read_bytes(&pid_file).await.unwrap())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            gone_within(QUICK, async || alive_on(&*node, pid).await).await,
            "pid {pid} survived the timeout"
        );
    }
}

chaos::backend_tests!(dialing_a_closed_port_is_unreachable);
async fn dialing_a_closed_port_is_unreachable(cluster: Arc<dyn Cluster>) {
    {
        let node = one_node(&*cluster).await;
        // A port that was just free on the runner's loopback (and so on any node's).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let dialed = tokio::time::timeout(Duration::from_secs(15), node.dial(&addr))
            .await
            .unwrap();
        let err = dialed.err().expect("nothing listens");
        assert_eq!(err.kind(), Some(ErrorKind::Unreachable), "{err}");
        assert!(err.to_string().contains(&addr), "{err}");
    }
}

chaos::backend_tests!(cleanup_leaves_no_process_or_directory_behind);
async fn cleanup_leaves_no_process_or_directory_behind(cluster: Arc<dyn Cluster>) {
    {
        if !matches!(cluster.backend(), "local" | "netns" | "hosts") {
            eprintln!(
                "skipping: {} nodes do not share this host's pid namespace",
                cluster.backend()
            );
            return;
        }
        let nodes = cluster.create_nodes(2).await.unwrap();
        let mut pids = Vec::new();
        let mut pipes = Vec::new();
        for node in &nodes {
            let mut proc = node
                .start(sh("sleep 100 & echo $!; exec sleep 100"))
                .await
                .unwrap();
            let mut stdout = BufReader::new(proc.stdout.take().unwrap());
            let child: u32 = read_lines(&mut stdout, 1).await[0].parse().unwrap();
            pids.extend([proc.pid, child]);
            pipes.push(stdout);
        }
        for &pid in &pids {
            assert!(alive_here(pid), "pid {pid} should run before cleanup");
        }
        let dirs: Vec<String> = nodes.iter().map(|n| n.root_dir().to_string()).collect();
        cluster.cleanup().await.unwrap();
        for pid in pids {
            assert!(
                gone_within(QUICK, async || alive_here(pid)).await,
                "pid {pid} survived cleanup"
            );
        }
        for dir in dirs {
            assert!(!std::path::Path::new(&dir).exists(), "{dir} survived cleanup");
        }
    }
}

// ---- local only ----------------------------------------------------------------------------

/// A local cluster; `None`, skipping the test, when `local` cannot run here (no agent built).
async fn local_cluster(name: &str) -> Option<Arc<LocalCluster>> {
    if let Err(why) = chaos::backend::registry::available("local") {
        chaos_testkit::skip(name, "agent", &why);
        return None;
    }
    let options = ClusterOptions {
        name: name.into(),
        ..ClusterOptions::default()
    };
    Some(Arc::new(LocalCluster::new(options).await.unwrap()))
}

/// Starts a process tree (a leader and a child) on `node`; returns both pids.
async fn start_tree(node: &dyn Node) -> [u32; 2] {
    let mut proc = node
        .start(sh("sleep 100 & echo $!; exec sleep 100"))
        .await
        .unwrap();
    let mut stdout = BufReader::new(proc.stdout.take().unwrap());
    let child: u32 = read_lines(&mut stdout, 1).await[0].parse().unwrap();
    [proc.pid, child]
}

#[tokio::test]
async fn local_nodes_are_named_in_order_and_own_their_root_dirs() {
    let Some(cluster) = local_cluster("naming").await else {
        return;
    };
    let dir = cluster.dir().unwrap();
    let mut nodes = cluster.create_nodes(2).await.unwrap();
    nodes.extend(cluster.create_nodes(3).await.unwrap());
    let names: Vec<_> = nodes.iter().map(|n| n.name().to_string()).collect();
    assert_eq!(names, ["n1", "n2", "n3", "n4", "n5"]);
    for node in &nodes {
        assert_eq!(
            node.addresses(),
            ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(std::path::Path::new(node.root_dir()), dir.join(node.name()));
        assert!(std::path::Path::new(node.root_dir()).is_dir());
    }
    // Process ids count per node.
    let a = nodes[0]
        .start(ProcSpec::new("true", Vec::<String>::new()))
        .await
        .unwrap();
    let b = nodes[0]
        .start(ProcSpec::new("true", Vec::<String>::new()))
        .await
        .unwrap();
    assert_eq!(b.id, a.id + 1);

    nodes[1].stop().await.unwrap();
    let err = nodes[1]
        .start(ProcSpec::new("true", Vec::<String>::new()))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), Some(ErrorKind::Conflict), "{err}");

    cluster.cleanup().await.unwrap();
    cluster.cleanup().await.unwrap();
    assert!(!dir.exists());
    assert!(cluster.create_nodes(1).await.is_err());
}

#[tokio::test]
async fn local_paths_must_be_absolute() {
    let Some(cluster) = local_cluster("paths").await else {
        return;
    };
    let node = one_node(&*cluster).await;
    let err = node
        .send_bytes("relative/file", b"x".to_vec(), 0o644)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::InvalidRequest), "{err}");
    assert!(err.to_string().contains("relative/file"), "{err}");
    cluster.cleanup().await.unwrap();
}

#[tokio::test]
async fn local_drop_without_cleanup_kills_processes_and_removes_the_directory() {
    let Some(cluster) = local_cluster("drop").await else {
        return;
    };
    let dir = cluster.dir().unwrap();
    let nodes = cluster.create_nodes(2).await.unwrap();
    let mut pids = Vec::new();
    for node in &nodes {
        pids.extend(start_tree(&**node).await);
    }
    assert!(pids.iter().all(|&p| alive_here(p)));
    drop(nodes);
    drop(cluster);
    assert!(!dir.exists(), "{} survived drop", dir.display());
    for pid in pids {
        assert!(
            gone_within(QUICK, async || alive_here(pid)).await,
            "pid {pid} survived drop"
        );
    }
}

#[tokio::test]
async fn local_panicking_test_leaks_nothing() {
    // Checked here: the task must not end before it sends.
    let Some(cluster) = local_cluster("panic").await else {
        return;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let node = one_node(&*cluster).await;
        let pids = start_tree(&*node).await;
        tx.send((pids, cluster.dir().unwrap())).unwrap();
        panic!("a test failing while its cluster is up");
    });
    let ((pids, dir), joined) = (rx.await.unwrap(), task.await);
    assert!(joined.unwrap_err().is_panic());
    assert!(!dir.exists(), "{} survived the panic", dir.display());
    for pid in pids {
        assert!(
            gone_within(QUICK, async || alive_here(pid)).await,
            "pid {pid} survived the panic"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_agent_killed_is_restarted_and_network_faults_are_refused() {
    let Some(cluster) = local_cluster("restart").await else {
        return;
    };
    let node = one_node(&*cluster).await;
    // The node's processes are the agent's children: their parent is the agent.
    let out = node.run("sh", ["-c", "echo $PPID"]).await.unwrap();
    let agent: i32 = out.stdout_str().trim().parse().unwrap();
    assert!(alive_here(agent as u32), "agent pid {agent}");
    // What the killed agent started outlives it (no agent knows it any more) until cleanup.
    let orphan = start_tree(&*node).await;
    let mut events = cluster.agent_events().unwrap();
    // SAFETY: kill(2) on a pid this test just read; it touches no memory.
    assert_eq!(unsafe { libc::kill(agent, libc::SIGKILL) }, 0);
    let restarted = async {
        loop {
            if let chaos::backend::supervisor::AgentEvent::AgentRestarted { node, .. } =
                events.recv().await.unwrap()
            {
                break node;
            }
        }
    };
    let restarted = tokio::time::timeout(chaos_testkit::scaled(Duration::from_secs(15)), restarted)
        .await
        .expect("the killed agent is restarted");
    assert_eq!(restarted, "n1");
    assert_eq!(
        node.run("true", Vec::<String>::new()).await.unwrap().status.code,
        Some(0)
    );

    // Every node is 127.0.0.1: the agent refuses network faults and says why; the probe agrees.
    let report = node.probe().await.unwrap();
    assert!(report.supports(chaos::proto::fault::FaultKind::Freeze));
    assert!(!report.supports(chaos::proto::fault::FaultKind::Partition));
    assert!(orphan.iter().all(|&p| alive_here(p)));
    cluster.cleanup().await.unwrap();
    for pid in orphan {
        assert!(
            gone_within(QUICK, async || alive_here(pid)).await,
            "pid {pid} of the killed agent survived cleanup"
        );
    }
}
