//! `chaos-agent install` / `uninstall` (part of the binary, not the library): the agent as a
//! systemd service in its persistent mode (`--on-heartbeat-loss wait`), for the `hosts`
//! backend. See `docs/bare-metal.md`.
//!
//! The unit restarts the agent on failure, kills everything it started with it
//! (`KillMode=control-group`), delegates its cgroup subtree (freeze and kill faults), and is
//! hardened as far as faults allow: no new privileges, read-only `/usr`, `/boot`, `/etc` and
//! home directories, a private `/tmp`, no clock, hostname or kernel-log changes, only the
//! address families faults and workloads use (`AF_NETLINK` for nftables, qdiscs, links and
//! queues). It keeps `CAP_NET_ADMIN` (network faults), `CAP_KILL` (signals), write access to
//! cgroups (`Delegate=yes`, no `ProtectControlGroups`) and `/proc/sys` (no
//! `ProtectKernelTunables`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

/// The unit's file name.
pub const UNIT_NAME: &str = "chaos-agent.service";

/// Files the agent's TLS directory must hold.
const TLS_FILES: [&str; 3] = [
    chaos_proto::tls_files::CA_CERT,
    chaos_proto::tls_files::NODE_CERT,
    chaos_proto::tls_files::NODE_KEY,
];

/// Where things go: shared by install and uninstall.
#[derive(Debug, Args)]
pub struct Layout {
    /// Directory the binary is installed into.
    #[arg(long, value_name = "DIR", default_value = "/usr/local/bin")]
    pub bin_dir: PathBuf,
    /// Directory of the systemd unit.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// Install into (remove from) this root instead of `/`: every path above is taken below it,
    /// the unit still names the paths as given, and systemctl is not run (for images, packages
    /// and tests).
    #[arg(long, value_name = "DIR")]
    pub prefix: Option<PathBuf>,
    /// Do not run systemctl (daemon-reload, enable --now / disable --now).
    #[arg(long)]
    pub no_systemctl: bool,
}

impl Layout {
    /// `path` below the prefix.
    fn under(&self, path: &Path) -> PathBuf {
        match &self.prefix {
            Some(prefix) => prefix.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }

    fn binary(&self) -> PathBuf {
        self.bin_dir.join("chaos-agent")
    }

    fn unit(&self) -> PathBuf {
        self.unit_dir.join(UNIT_NAME)
    }

    fn systemctl(&self) -> bool {
        self.prefix.is_none() && !self.no_systemctl
    }
}

/// `chaos-agent install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The agent's TLS directory on this machine (ca.pem, node.pem, node.key from `chaos certs
    /// issue`; node.key must be 0600).
    #[arg(long, value_name = "DIR")]
    pub tls_dir: PathBuf,
    /// Address to listen on (IP:PORT): an address the runner reaches, named in node.pem.
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Run the agent as this user (with CAP_NET_ADMIN, CAP_NET_RAW and CAP_KILL) instead of
    /// root. Processes then run as that user too.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The agent's root directory: run directories are made below it.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/chaos-agent")]
    pub root_dir: PathBuf,
    /// How long the agent waits for a runner's heartbeat while no lease says otherwise.
    #[arg(long, value_name = "DUR", default_value = "30s")]
    pub heartbeat_timeout: humantime::Duration,
    #[command(flatten)]
    pub layout: Layout,
}

/// `chaos-agent uninstall`.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Also remove the agent's root directory (run directories, fault state).
    #[arg(long, value_name = "DIR")]
    pub purge_root_dir: Option<PathBuf>,
    #[command(flatten)]
    pub layout: Layout,
}

/// The unit file for `args`.
pub fn unit_text(args: &InstallArgs) -> String {
    let binary = args.layout.binary();
    let root = args.root_dir.display();
    let timeout: Duration = args.heartbeat_timeout.into();
    let exec = format!(
        "{} --listen {} --tls-dir {} --root-dir {root} --state-dir {root}/.agent-state \
         --on-heartbeat-loss wait --heartbeat-timeout {}",
        binary.display(),
        args.listen,
        args.tls_dir.display(),
        humantime::format_duration(timeout).to_string().replace(' ', "")
    );
    let user = match &args.user {
        Some(user) => format!(
            "User={user}\n\
             # Network faults, raw sockets of the traffic probes, signals to the node's processes.\n\
             AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_KILL\n"
        ),
        None => String::new(),
    };
    format!(
        "# Written by `chaos-agent install`; remove with `chaos-agent uninstall`.\n\
[Unit]\n\
Description=chaos node agent (runs processes and injects faults for one chaos runner at a time, over mTLS)\n\
After=network-online.target\n\
Wants=network-online.target\n\
\n\
[Service]\n\
Type=simple\n\
ExecStart={exec}\n\
{user}\
Restart=on-failure\n\
RestartSec=2s\n\
# Everything the agent started dies with it; a restarted agent heals what its predecessor recorded.\n\
KillMode=control-group\n\
# Its own cgroup subtree: per-process cgroups, freeze and kill faults.\n\
Delegate=yes\n\
LimitNOFILE=65536\n\
ReadWritePaths={root}\n\
# Hardening that leaves what faults need (CAP_NET_ADMIN, netlink, cgroups, /proc/sys).\n\
NoNewPrivileges=yes\n\
ProtectSystem=full\n\
ProtectHome=read-only\n\
PrivateTmp=yes\n\
ProtectClock=yes\n\
ProtectHostname=yes\n\
ProtectKernelLogs=yes\n\
LockPersonality=yes\n\
RestrictRealtime=yes\n\
RestrictSUIDSGID=yes\n\
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET\n\
SystemCallArchitectures=native\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n"
    )
}

/// Writes `contents` to `path` with `mode` through a temporary file and a rename (a running
/// binary cannot be overwritten in place).
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a path without a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl").args(args).status().with_context(|| {
        format!(
            "running systemctl {} (is systemd running here? use --no-systemctl)",
            args.join(" ")
        )
    })?;
    if !status.success() {
        bail!("systemctl {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Checks the TLS directory holds the agent's files and its key is private.
fn check_tls(dir: &Path, shown: &Path) -> anyhow::Result<()> {
    for file in TLS_FILES {
        let path = dir.join(file);
        let meta = std::fs::metadata(&path).with_context(|| {
            format!(
                "--tls-dir {}: {file} is missing; issue it with `chaos certs issue CA_DIR --name HOST --ip IP` \
                 and copy the node directory here (or use `chaos hosts push`)",
                shown.display()
            )
        })?;
        if file == chaos_proto::tls_files::NODE_KEY && meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "--tls-dir {}: {file} is readable by others (mode {:o}); chmod 600 it",
                shown.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    Ok(())
}

/// `chaos-agent install`.
pub fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let layout = &args.layout;
    check_tls(&layout.under(&args.tls_dir), &args.tls_dir)?;
    if let Some(user) = &args.user
        && layout.prefix.is_none()
        && nix::unistd::User::from_name(user).ok().flatten().is_none()
    {
        bail!("--user {user}: no such user on this machine");
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let binary = layout.under(&layout.binary());
    if std::fs::canonicalize(&binary).ok() != std::fs::canonicalize(&exe).ok() {
        let bytes = std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
        write_atomically(&binary, &bytes, 0o755)?;
    }
    let root = layout.under(&args.root_dir);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    if let Some(user) = &args.user
        && layout.prefix.is_none()
        && let Ok(Some(u)) = nix::unistd::User::from_name(user)
    {
        nix::unistd::chown(&root, Some(u.uid), Some(u.gid))
            .with_context(|| format!("giving {} to {user}", root.display()))?;
    }
    let unit = layout.under(&layout.unit());
    write_atomically(&unit, unit_text(args).as_bytes(), 0o644)?;
    println!("installed {} and {}", binary.display(), unit.display());
    if layout.systemctl() {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", UNIT_NAME])?;
        println!("started {UNIT_NAME}: it listens on {}", args.listen);
    }
    Ok(())
}

/// `chaos-agent uninstall`.
pub fn uninstall(args: &UninstallArgs) -> anyhow::Result<()> {
    let layout = &args.layout;
    let unit = layout.under(&layout.unit());
    if layout.systemctl() && unit.exists() {
        systemctl(&["disable", "--now", UNIT_NAME])?;
    }
    for path in [unit, layout.under(&layout.binary())] {
        match std::fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    if layout.systemctl() {
        systemctl(&["daemon-reload"])?;
    }
    if let Some(root) = &args.purge_root_dir {
        let path = layout.under(root);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    println!("the TLS directory was left in place: remove it yourself when the host leaves the lab");
    Ok(())
}
