//! `chaos hosts push user@host…`: make machines into `hosts` backend hosts over the system's
//! `ssh`/`scp` — issue each a certificate from the lab's CA, copy the agent, its certificate
//! and key (0600, in files, never on a command line) and run `chaos-agent install` there.

use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use chaos::certs::ClusterCa;
use chaos::proto::tls_files;
use clap::{Args, Subcommand};

use super::BadInput;

/// `chaos hosts …`.
#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Install chaos-agent as a service on machines over ssh, each with its own certificate.
    Push(PushArgs),
}

/// `chaos hosts push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Machines to install, as ssh destinations (`root@192.0.2.10`, `admin@rack1-a`).
    #[arg(required = true, value_name = "USER@HOST")]
    pub targets: Vec<String>,
    /// The lab's CA directory (`chaos certs init DIR --days 365`).
    #[arg(long, value_name = "DIR")]
    pub ca: PathBuf,
    /// Port the agents listen on.
    #[arg(long, default_value_t = 7443)]
    pub port: u16,
    /// The agent binary to copy [default: the chaos-agent of this version, as the backends find
    /// it].
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Days the hosts' certificates stay valid.
    #[arg(long, value_name = "N", default_value_t = 365)]
    pub days: u32,
    /// Where the agent's TLS directory goes on each host.
    #[arg(long, value_name = "DIR", default_value = "/etc/chaos/tls")]
    pub tls_dir: PathBuf,
    /// Run the agents as this user instead of root (`chaos-agent install --user`).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Install below this directory on each host instead of `/`, without starting the service
    /// (`chaos-agent install --prefix`; for images and tests).
    #[arg(long, value_name = "DIR")]
    pub remote_root: Option<PathBuf>,
    /// ssh port of the hosts.
    #[arg(long, value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// ssh identity file (`ssh -i`).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Extra ssh option (`ssh -o OPTION`), repeatable.
    #[arg(long = "ssh-option", value_name = "OPTION")]
    pub ssh_options: Vec<String>,
}

/// Runs a `chaos hosts` subcommand.
pub fn run(cmd: HostsCommand) -> anyhow::Result<()> {
    match cmd {
        HostsCommand::Push(args) => push(&args),
    }
}

/// `'text'` for a POSIX shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The host part of `user@host`.
fn host_of(target: &str) -> &str {
    target.rsplit_once('@').map_or(target, |(_, host)| host)
}

/// The address the certificate names and the agent listens on.
fn resolve(host: &str) -> anyhow::Result<IpAddr> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse() {
        return Ok(ip);
    }
    let addrs = (host, 0)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?;
    let mut addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
    addrs.sort_by_key(IpAddr::is_ipv6);
    addrs
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("{host} has no address"))
}

/// A node name (one DNS label) from a host name or address.
fn node_name(host: &str) -> String {
    let name: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    name.trim_matches('-').to_string()
}

impl PushArgs {
    fn ssh_common(&self, cmd: &mut Command) {
        // Never prompt; bound every network wait.
        cmd.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]);
        cmd.args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]);
        if let Some(identity) = &self.identity {
            cmd.arg("-i").arg(identity);
        }
        for option in &self.ssh_options {
            cmd.args(["-o", option]);
        }
    }

    fn ssh(&self, target: &str, script: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new("ssh");
        self.ssh_common(&mut cmd);
        if let Some(port) = self.ssh_port {
            cmd.args(["-p", &port.to_string()]);
        }
        cmd.arg(target).arg("--").arg(script);
        run_tool(cmd, &format!("ssh {target}"))
    }

    fn scp(&self, target: &str, files: &[PathBuf], dir: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new("scp");
        // -p keeps the modes (the key stays 0600), -q no progress meter.
        cmd.args(["-p", "-q"]);
        self.ssh_common(&mut cmd);
        if let Some(port) = self.ssh_port {
            cmd.args(["-P", &port.to_string()]);
        }
        cmd.args(files).arg(format!("{target}:{dir}/"));
        run_tool(cmd, &format!("scp to {target}")).map(drop)
    }
}

fn run_tool(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!(
            "{what}: running {:?} (is openssh-client installed?)",
            cmd.get_program()
        )
    })?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn push(args: &PushArgs) -> anyhow::Result<()> {
    let ca = ClusterCa::load(&args.ca).with_context(|| {
        format!(
            "loading the lab's CA from {0} (create one with `chaos certs init {0} --days 365`)",
            args.ca.display()
        )
    })?;
    let agent = match &args.agent {
        Some(path) => path.clone(),
        None => chaos::backend::agent_binary::find_agent_binary()
            .context("finding chaos-agent to copy (build it, or pass --agent PATH)")?,
    };
    if !agent.is_file() {
        return Err(BadInput(format!("--agent {}: no such file", agent.display())).into());
    }
    let mut failed = Vec::new();
    for target in &args.targets {
        match push_one(args, &ca, &agent, target) {
            Ok(listen) => println!("{target}: chaos-agent installed, listening on {listen}"),
            Err(e) => {
                eprintln!("{target}: {e:#}");
                failed.push(target.as_str());
            }
        }
    }
    if !failed.is_empty() {
        bail!("pushing to {} failed", failed.join(", "));
    }
    println!("add them to your inventory as agent = \"IP:{}\"", args.port);
    Ok(())
}

fn push_one(args: &PushArgs, ca: &ClusterCa, agent: &Path, target: &str) -> anyhow::Result<String> {
    let host = host_of(target);
    let ip = resolve(host)?;
    let name = node_name(host);
    let dns: Vec<String> = if host.parse::<IpAddr>().is_err() {
        vec![host.to_string()]
    } else {
        Vec::new()
    };
    let (not_before, not_after) =
        chaos::certs::window(std::time::Duration::from_secs(u64::from(args.days) * 24 * 3600));
    let identity = ca
        .issue_node_valid(&name, &[ip], &dns, not_before, not_after)
        .with_context(|| format!("issuing a certificate for {host}"))?;
    // A private local directory: the key is written 0600 and travels as a file.
    let local = tempfile::Builder::new()
        .prefix("chaos-push-")
        .tempdir()
        .context("creating a temporary directory")?;
    identity
        .write_node_dir(local.path(), ca.cert_pem())
        .context("writing the host's TLS files")?;
    let remote_tmp = args
        .ssh(target, "mktemp -d /tmp/chaos-push.XXXXXX")?
        .trim()
        .to_string();
    if !remote_tmp.starts_with("/tmp/chaos-push.") {
        bail!("mktemp on {target} answered {remote_tmp:?}");
    }
    let mut files: Vec<PathBuf> = [tls_files::CA_CERT, tls_files::NODE_CERT, tls_files::NODE_KEY]
        .iter()
        .map(|f| local.path().join(f))
        .collect();
    files.push(agent.to_path_buf());
    let copied = args.scp(target, &files, &remote_tmp);
    let listen = format!(
        "{}:{}",
        if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        },
        args.port
    );
    let root = args.remote_root.as_deref().map(|r| r.display().to_string());
    let tls_on_host = match &root {
        Some(root) => format!(
            "{}/{}",
            root.trim_end_matches('/'),
            args.tls_dir.display().to_string().trim_start_matches('/')
        ),
        None => args.tls_dir.display().to_string(),
    };
    let agent_file = agent
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "chaos-agent".into());
    let mut install = format!(
        "\"$d\"/{} install --tls-dir {} --listen {}",
        quote(&agent_file),
        quote(&args.tls_dir.display().to_string()),
        quote(&listen)
    );
    if let Some(user) = &args.user {
        install.push_str(&format!(" --user {}", quote(user)));
    }
    if let Some(root) = &root {
        install.push_str(&format!(" --prefix {}", quote(root)));
    }
    let script = format!(
        "set -e; d={tmp}; trap 'rm -rf \"$d\"' EXIT; t={tls}; \
         install -d -m 700 \"$t\"; install -m 644 \"$d/{ca}\" \"$d/{cert}\" \"$t/\"; \
         install -m 600 \"$d/{key}\" \"$t/\"; {install}",
        tmp = quote(&remote_tmp),
        tls = quote(&tls_on_host),
        ca = tls_files::CA_CERT,
        cert = tls_files::NODE_CERT,
        key = tls_files::NODE_KEY,
    );
    match copied {
        Ok(()) => {
            args.ssh(target, &script)?;
        }
        Err(e) => {
            let _ = args.ssh(target, &format!("rm -rf {}", quote(&remote_tmp)));
            return Err(e);
        }
    }
    Ok(listen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_quotes_and_hosts() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
        assert_eq!(host_of("root@192.0.2.1"), "192.0.2.1");
        assert_eq!(host_of("rack1-a"), "rack1-a");
        assert_eq!(node_name("192.0.2.1"), "192-0-2-1");
        assert_eq!(resolve("192.0.2.1").unwrap().to_string(), "192.0.2.1");
    }
}
