//! The `hosts` backend through the CLI, on a simulated lab of hosts (network namespaces, each
//! running a persistent agent started as a service would be): `chaos run scenarios/raft.toml
//! --backend hosts --inventory FILE` (a real 3-member etcd cluster through one round of faults,
//! leaving every host clean), `chaos up`/`exec`/`down` on an inventory, and `chaos hosts push`
//! against an sshd in a namespace installing a working agent.

#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chaos::backend::hosts::lab::Lab;
use chaos_testkit::skip;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_runs_on_an_inventory_of_hosts_and_leaves_them_clean() {
    let test = "raft_runs_on_an_inventory_of_hosts";
    if let Err(why) = chaos::backend::hosts::lab::availability() {
        skip(test, "hosts", &why);
        return;
    }
    for bin in ["etcd", "etcdctl"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
        if !found {
            skip(
                test,
                "etcd",
                &format!("`{bin}` is not on PATH (apt-get install etcd-server etcd-client)"),
            );
            return;
        }
    }
    let lab = Lab::start("raft-hosts", 3, Duration::from_secs(30))
        .await
        .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let raft = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/raft.toml");
    let inventory = lab.inventory().to_path_buf();
    let out_path = out_dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_chaos"))
            .arg("run")
            .arg(&raft)
            .args(["--backend", "hosts", "--inventory"])
            .arg(&inventory)
            .args(["--rounds", "1", "--out"])
            .arg(&out_path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chaos run failed:\n{stdout}\n{stderr}");
    for host in lab.hosts() {
        let runs = host.root_dir.join("runs");
        let left: Vec<_> = std::fs::read_dir(&runs)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "host {}: run directories left: {left:?}",
            host.name
        );
    }
    lab.cleanup().await.unwrap();
}

/// The `/tmp/chaos-push.*` directories that exist (the "remote" host shares this file system).
fn push_dirs() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("chaos-push."))
        .collect()
}

use chaos_testkit::free_port;

/// Waits until something accepts connections at `addr`, within `bound`.
async fn wait_listening(addr: std::net::SocketAddr, bound: Duration, what: &str) {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not listen at {addr} within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_over_ssh_installs_a_working_agent() {
    use chaos::NodeExt;

    let test = "push_over_ssh_installs_a_working_agent";
    if let Err(why) = chaos::backend::registry::available("netns") {
        skip(test, "hosts", &why);
        return;
    }
    if !Path::new("/usr/sbin/sshd").exists() || Command::new("ssh").arg("-V").output().is_err() {
        skip(
            test,
            "sshd",
            &"sshd or ssh is missing (apt-get install openssh-server openssh-client)",
        );
        return;
    }
    let bound = chaos_testkit::scaled(Duration::from_secs(20));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Throwaway keys: the server's host key and the client's identity.
    for key in ["host_key", "client_key"] {
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", test, "-f"])
            .arg(d.join(key))
            .status()
            .unwrap();
        assert!(made.success());
    }
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();

    // The "host": a network namespace, with sshd on a free port in its own mount namespace (a
    // private /run holds the privilege separation directory sshd insists on).
    let netns = chaos::backend::new_cluster(
        "netns",
        chaos::backend::ClusterOptions {
            name: "hosts-push".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let node = netns.create_nodes(1).await.unwrap().remove(0);
    let ip = node.addresses()[0];
    let ssh_port = free_port();
    let config = d.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress {ip}:{ssh_port}\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile none\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n",
            d = d.display()
        ),
    )
    .unwrap();
    let sshd = format!(
        "mount -t tmpfs chaos-test-run /run && mkdir -m 755 /run/sshd && exec /usr/sbin/sshd -D -e -f {}",
        config.display()
    );
    node.start(chaos::ProcSpec {
        stdout: chaos::proto::OutputSpec::File {
            path: d.join("sshd.log").display().to_string(),
            append: true,
        },
        stderr: chaos::proto::OutputSpec::File {
            path: d.join("sshd.log").display().to_string(),
            append: true,
        },
        ..chaos::ProcSpec::new(
            "unshare",
            ["--mount", "--propagation", "private", "sh", "-c", &sshd],
        )
    })
    .await
    .unwrap();
    wait_listening(std::net::SocketAddr::new(ip, ssh_port), bound, "sshd").await;

    // The lab's CA, then the push.
    let ca = d.join("ca");
    let init = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["certs", "init", "--days", "30"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let remote_root = d.join("remote-root");
    let agent_bin = chaos::backend::agent_binary::find_agent_binary().unwrap();
    let before = push_dirs();
    let push = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["hosts", "push", &format!("root@{ip}"), "--ca"])
        .arg(&ca)
        .arg("--agent")
        .arg(&agent_bin)
        .arg("--remote-root")
        .arg(&remote_root)
        .args(["--ssh-port", &ssh_port.to_string(), "--identity"])
        .arg(d.join("client_key"))
        .args([
            "--ssh-option",
            "StrictHostKeyChecking=no",
            "--ssh-option",
            "UserKnownHostsFile=/dev/null",
        ])
        .output()
        .unwrap();
    let log = std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default();
    assert!(
        push.status.success(),
        "push failed: {}{}\nsshd log: {log}",
        String::from_utf8_lossy(&push.stdout),
        String::from_utf8_lossy(&push.stderr)
    );
    let tls = remote_root.join("etc/chaos/tls");
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(tls.join("node.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600, "the key arrives private");
    let unit = std::fs::read_to_string(remote_root.join("etc/systemd/system/chaos-agent.service")).unwrap();
    assert!(unit.contains(&format!("--listen {ip}:7443")), "{unit}");
    let after = push_dirs();
    assert!(
        after.is_subset(&before),
        "remote temporary directories left: {:?}",
        after.difference(&before)
    );

    // The pushed agent works: start it as its unit says (paths below the root) and use it.
    let root = remote_root.join("var/lib/chaos-agent");
    let agent_log = d.join("agent.log");
    node.start(chaos::ProcSpec {
        stdout: chaos::proto::OutputSpec::File {
            path: agent_log.display().to_string(),
            append: true,
        },
        stderr: chaos::proto::OutputSpec::File {
            path: agent_log.display().to_string(),
            append: true,
        },
        ..chaos::ProcSpec::new(
            remote_root
                .join("usr/local/bin/chaos-agent")
                .display()
                .to_string(),
            [
                "--listen".to_string(),
                format!("{ip}:7443"),
                "--tls-dir".into(),
                tls.display().to_string(),
                "--root-dir".into(),
                root.display().to_string(),
                "--on-heartbeat-loss".into(),
                "wait".into(),
            ],
        )
    })
    .await
    .unwrap();
    wait_listening(std::net::SocketAddr::new(ip, 7443), bound, "the pushed agent").await;
    let inventory = d.join("inventory.toml");
    std::fs::write(
        &inventory,
        format!("tls_dir = \"ca\"\n[[hosts]]\nagent = \"{ip}:7443\"\n"),
    )
    .unwrap();
    let cluster = chaos::backend::new_cluster(
        "hosts",
        chaos::backend::ClusterOptions {
            name: "pushed".into(),
            backend_config: Some(inventory),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let nodes = cluster.create_nodes(1).await.unwrap();
    let out = nodes[0].run("sh", ["-c", "pwd"]).await.unwrap();
    assert!(
        out.stdout_str().starts_with(&root.display().to_string()),
        "{}",
        out.stdout_str()
    );
    cluster.cleanup().await.unwrap();
    netns.cleanup().await.unwrap();
}

/// `chaos up --backend hosts --inventory INVENTORY --state STATE EXTRA…`, its stdout piped (the
/// node lines it prints once the cluster is up).
fn spawn_up(inventory: &Path, state: &Path, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["up", "--backend", "hosts"])
        .args(extra)
        .arg("--inventory")
        .arg(inventory)
        .arg("--state")
        .arg(state)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_exec_down_on_an_inventory_of_hosts() {
    use std::io::BufRead;

    let test = "up_exec_down_on_an_inventory_of_hosts";
    if let Err(why) = chaos::backend::hosts::lab::availability() {
        skip(test, "hosts", &why);
        return;
    }
    let lab = Lab::start("up-hosts", 2, Duration::from_secs(30)).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let chaos = env!("CARGO_BIN_EXE_chaos");
    let mut up = spawn_up(lab.inventory(), state.path(), &["--nodes", "2"]);
    let stdout = up.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut lines = Vec::new();
        for _ in 0..2 {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            lines.push(line);
        }
        (lines, reader)
    });
    let (lines, _reader) = tokio::time::timeout(chaos_testkit::scaled(Duration::from_secs(30)), lines)
        .await
        .expect("chaos up printed its nodes in time")
        .unwrap();
    assert!(
        lines[0].starts_with("n1 ") && lines[1].starts_with("n2 "),
        "{lines:?}"
    );

    let state_arg = state.path().to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(chaos)
            .args(["exec", "--state", &state_arg, "n2", "--", "pwd"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let pwd = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let runs = lab.hosts()[1].root_dir.join("runs");
    assert!(
        out.status.success() && pwd.starts_with(&*runs.to_string_lossy()),
        "{pwd}"
    );

    let down = chaos_down(state.path()).await;
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    let _ = up.wait();
    assert!(
        !Path::new(&pwd).exists(),
        "chaos down ends the run: {pwd} removed"
    );
    lab.cleanup().await.unwrap();
}

/// Runs `chaos down --state STATE` (off the runtime's threads).
async fn chaos_down(state: &Path) -> std::process::Output {
    let state = state.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_chaos"))
            .arg("down")
            .arg("--state")
            .arg(state)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `chaos up --label k=v` makes nodes only on the hosts carrying the label, like a scenario's
/// `[cluster] labels`; a malformed or contradictory label is refused before anything is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_selects_hosts_by_label() {
    use std::io::BufRead;

    let test = "up_selects_hosts_by_label";
    let chaos = env!("CARGO_BIN_EXE_chaos");
    let state = tempfile::tempdir().unwrap();
    for (labels, says) in [
        (vec!["--label", "rack"], "\"rack\": give a label as KEY=VALUE"),
        (
            vec!["--label", "rack=1", "--label", "rack=2"],
            "--label rack=1 and --label rack=2",
        ),
    ] {
        let out = Command::new(chaos)
            .args([
                "up",
                "--backend",
                "hosts",
                "--inventory",
                "/nonexistent.toml",
                "--state",
            ])
            .arg(state.path().join("bad"))
            .args(&labels)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(2) && stderr.contains(says),
            "{test}: {labels:?}: status {:?}: {stderr}",
            out.status.code()
        );
        assert!(
            !state.path().join("bad").exists(),
            "{test}: {labels:?} made the state dir"
        );
    }

    if let Err(why) = chaos::backend::hosts::lab::availability() {
        skip(test, "hosts", &why);
        return;
    }
    let lab = Lab::start("up-label", 2, Duration::from_secs(30)).await.unwrap();
    // Host 1 in rack 2, host 2 in rack 1.
    let text = std::fs::read_to_string(lab.inventory()).unwrap();
    let mut rack = ["2", "1"].into_iter();
    let labelled: String = text
        .split_inclusive('\n')
        .map(|line| match line {
            "[[hosts]]\n" => format!("{line}labels = {{ rack = \"{}\" }}\n", rack.next().unwrap()),
            _ => line.to_string(),
        })
        .collect();
    let inventory = lab.inventory().with_file_name("labelled.toml");
    std::fs::write(&inventory, labelled).unwrap();
    let mut up = spawn_up(&inventory, state.path(), &["--nodes", "1", "--label", "rack=1"]);
    let stdout = up.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let bound = chaos_testkit::scaled(Duration::from_secs(30));
    let line = tokio::time::timeout(bound, line).await;
    let leased: Vec<bool> = {
        let mut leased = Vec::new();
        for host in lab.hosts() {
            let ca = chaos::certs::ClusterCa::load(lab.tls_dir()).unwrap();
            let runner = chaos::certs::Identity::load_runner(lab.tls_dir()).unwrap();
            let tls = chaos::certs::client_config(ca.cert_pem(), &runner).unwrap();
            let client = chaos::agent_client::AgentClient::new(host.name.clone(), host.agent, tls);
            leased.push(client.lease().await.unwrap().is_some());
        }
        leased
    };
    let down = chaos_down(state.path()).await;
    let _ = up.wait();
    lab.cleanup().await.unwrap();
    let line = line
        .unwrap_or_else(|_| panic!("{test}: chaos up printed no node within {bound:?}"))
        .unwrap();
    assert!(line.starts_with("n2 "), "{test}: the rack=1 host is n2: {line}");
    assert_eq!(
        leased,
        vec![false, true],
        "{test}: only the rack=1 host is leased"
    );
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
}
