//! `chaos certs`: a cluster CA on disk and node certificates signed by it, so agents can be
//! started by hand (`chaos-agent --tls-dir DIR/nodes/NAME`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chaos::certs::ClusterCa;
use chaos::proto::tls_files;
use clap::{Args, Subcommand};

use super::BadInput;

/// `chaos certs …`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA and the runner's client certificate in DIR.
    Init(InitArgs),
    /// Issue a node's server certificate signed by the CA in DIR, as a TLS directory for the agent.
    Issue(IssueArgs),
}

/// `chaos certs init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to write ca.pem, ca.key, runner.pem and runner.key into (created if missing).
    pub dir: PathBuf,
    /// Replace an existing CA; certificates it issued stop being trusted.
    #[arg(long)]
    pub force: bool,
    /// Cluster name written into the CA certificate's subject.
    #[arg(long, default_value = "chaos")]
    pub cluster: String,
    /// Days the CA and the runner's certificate stay valid: 1 for a throwaway cluster, a year
    /// (365) for a lab of persistent agents (`--backend hosts`).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
}

/// `chaos certs issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Directory holding the CA written by `chaos certs init`.
    pub dir: PathBuf,
    /// The node's name (letters, digits and '-'); also a DNS name in its certificate.
    #[arg(long)]
    pub name: String,
    /// IP addresses the runner reaches the node's agent at.
    #[arg(long = "ip", value_name = "IP", required = true, num_args = 1..)]
    pub ips: Vec<IpAddr>,
    /// Extra DNS names for the certificate.
    #[arg(long = "dns", value_name = "NAME", num_args = 1..)]
    pub dns: Vec<String>,
    /// Where to write the node's TLS directory [default: DIR/nodes/NAME].
    #[arg(long, value_name = "OUTDIR")]
    pub out: Option<PathBuf>,
    /// Replace an existing node key in OUTDIR.
    #[arg(long)]
    pub force: bool,
    /// Days the certificate stays valid (at most as long as the CA; see `chaos certs init --days`).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
}

fn days(n: u32) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(n) * 24 * 3600)
}

/// Runs a `chaos certs` subcommand.
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init(args) => init(args),
        CertsCommand::Issue(args) => issue(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    for existing in [tls_files::CA_CERT, tls_files::CA_KEY].map(|f| dir.join(f)) {
        if existing.exists() && !args.force {
            return Err(BadInput(format!(
                "{} exists: {} already holds a CA; pass --force to replace it \
                 (certificates it issued will stop being trusted)",
                existing.display(),
                dir.display()
            ))
            .into());
        }
    }
    let ca = ClusterCa::generate_for(&args.cluster, days(args.days)).context("generating the cluster CA")?;
    ca.write(dir).context("writing the cluster CA")?;
    let (not_before, not_after) = chaos::certs::window(days(args.days));
    let runner = ca
        .issue_runner_valid(not_before, not_after)
        .context("issuing the runner's client certificate")?;
    runner
        .write_runner(dir)
        .context("writing the runner's client certificate")?;
    println!(
        "wrote the cluster CA and the runner's client certificate to {}",
        dir.display()
    );
    for file in [
        tls_files::CA_CERT,
        tls_files::CA_KEY,
        tls_files::RUNNER_CERT,
        tls_files::RUNNER_KEY,
    ] {
        println!("  {}", dir.join(file).display());
    }
    Ok(())
}

fn issue(args: IssueArgs) -> anyhow::Result<()> {
    check_node_name(&args.name)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.dir.join("nodes").join(&args.name));
    let key = out.join(tls_files::NODE_KEY);
    if key.exists() && !args.force {
        return Err(BadInput(format!(
            "{} exists: {} already holds a node identity; pass --force to replace it",
            key.display(),
            out.display()
        ))
        .into());
    }
    let ca = load_ca(&args.dir)?;
    let (not_before, not_after) = chaos::certs::window(days(args.days));
    let node = ca
        .issue_node_valid(&args.name, &args.ips, &args.dns, not_before, not_after)
        .with_context(|| format!("issuing a certificate for node {}", args.name))?;
    node.write_node_dir(&out, ca.cert_pem())
        .with_context(|| format!("writing {}", out.display()))?;
    let ips: Vec<String> = args.ips.iter().map(ToString::to_string).collect();
    println!(
        "issued a certificate for node {} ({}) into {}",
        args.name,
        ips.join(", "),
        out.display()
    );
    println!(
        "start its agent with: chaos-agent --tls-dir {} --listen {}:PORT",
        out.display(),
        ips[0]
    );
    Ok(())
}

fn load_ca(dir: &Path) -> anyhow::Result<ClusterCa> {
    ClusterCa::load(dir).with_context(|| {
        format!(
            "loading the cluster CA from {0} (create one with `chaos certs init {0}`)",
            dir.display()
        )
    })
}

/// Node names become a directory name and a DNS name: keep them to one DNS label.
fn check_node_name(name: &str) -> Result<(), BadInput> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(BadInput(format!(
            "--name {name:?}: a node name must be 1 to 63 letters, digits or '-', not starting with '-'"
        )))
    }
}
