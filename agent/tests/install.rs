//! `chaos-agent install` / `uninstall` into a root prefix (this machine has no systemd as PID 1):
//! the generated unit passes `systemd-analyze verify` without a warning, a world-readable key is
//! refused, and uninstall removes what install wrote.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use chaos::certs::ClusterCa;
use chaos_testkit::skip;

const AGENT: &str = env!("CARGO_BIN_EXE_chaos-agent");

fn agent(args: &[&str]) -> Output {
    Command::new(AGENT).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn install_writes_a_unit_that_systemd_verifies_and_uninstall_removes_it() {
    let test = "install_writes_a_unit_that_systemd_verifies";
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        skip(
            test,
            "systemd",
            &"systemd-analyze is not installed (Debian package systemd)",
        );
        return;
    }
    let prefix = tempfile::tempdir().unwrap();
    let root = prefix.path();
    let ca = ClusterCa::generate("install-test").unwrap();
    let tls = root.join("etc/chaos/tls");
    ca.issue_node("rack1-a", &["192.0.2.10".parse().unwrap()], &[])
        .unwrap()
        .write_node_dir(&tls, ca.cert_pem())
        .unwrap();
    let prefix_arg = root.to_str().unwrap();
    let install = [
        "install",
        "--prefix",
        prefix_arg,
        "--tls-dir",
        "/etc/chaos/tls",
        "--listen",
        "192.0.2.10:7443",
        "--user",
        "chaos-agent",
    ];

    // A key others can read is refused, naming the fix.
    let key = tls.join(chaos::proto::tls_files::NODE_KEY);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent(&install);
    assert!(
        !out.status.success() && text(&out).contains("chmod 600"),
        "{}",
        text(&out)
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = agent(&install);
    assert!(out.status.success(), "{}", text(&out));
    let unit_path = root.join("etc/systemd/system/chaos-agent.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/chaos-agent --listen 192.0.2.10:7443 --tls-dir /etc/chaos/tls",
        "--on-heartbeat-loss wait",
        "Restart=on-failure",
        "User=chaos-agent",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "Delegate=yes",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(line), "{line:?} missing from\n{unit}");
    }
    let binary = root.join("usr/local/bin/chaos-agent");
    assert_eq!(
        std::fs::metadata(&binary).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert!(root.join("var/lib/chaos-agent").is_dir());

    // verify needs the system's own units (sysinit.target, …) under the root.
    let units = root.join("usr/lib/systemd");
    std::fs::create_dir_all(&units).unwrap();
    let copied = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(&units)
        .status()
        .unwrap();
    assert!(copied.success());
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(&unit_path)
        .env("SYSTEMD_LOG_LEVEL", "info")
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        text(&verify)
    );
    assert!(
        text(&verify).trim().is_empty(),
        "systemd-analyze verify warns: {}",
        text(&verify)
    );

    let out = agent(&[
        "uninstall",
        "--prefix",
        prefix_arg,
        "--purge-root-dir",
        "/var/lib/chaos-agent",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!unit_path.exists() && !binary.exists());
    assert!(!root.join("var/lib/chaos-agent").exists());
    assert!(key.exists(), "uninstall leaves the TLS directory");
}
