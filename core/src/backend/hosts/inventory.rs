//! The inventory: the machines of a `hosts` cluster, read from a TOML file (`--inventory FILE`,
//! [`crate::backend::ClusterOptions::backend_config`]). Documented field by field in
//! `docs/bare-metal.md`:
//!
//! ```toml
//! tls_dir = "/etc/chaos/ca"        # `chaos certs init` output: ca.pem, ca.key, runner.pem, runner.key
//! takeover = false                 # optional: end another runner's run instead of failing
//! keep_failed_runs = false         # optional: keep each host's run directory when a run fails
//! [[hosts]]
//! name = "rack1-a"                 # optional (default n1, n2, … by position)
//! agent = "192.0.2.10:7443"        # where the runner reaches the agent (IP:PORT)
//! address = "198.51.100.10"        # optional: the address peers use (default: the agent's IP)
//! labels = { rack = "1" }          # optional
//! interfaces = ["enp3s0f0"]        # optional: NICs experiments may touch, the main one first
//! ```
//!
//! Errors name the file, the line and the field.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::{Error, Result};

/// One machine of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Node name in scenarios and the CLI.
    pub name: String,
    /// Where the runner reaches the agent.
    pub agent: SocketAddr,
    /// The address the other nodes reach this one at.
    pub address: IpAddr,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Network interfaces experiments may touch, the main one first (empty: none named).
    pub interfaces: Vec<String>,
}

/// A parsed inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The file it was read from.
    pub path: PathBuf,
    /// The runner's TLS directory (`ca.pem`, `ca.key`, `runner.pem`, `runner.key`), resolved
    /// against the inventory's directory when relative.
    pub tls_dir: PathBuf,
    /// Whether to take over hosts another runner holds.
    pub takeover: bool,
    /// Whether a failed run's directory stays on each host (also when the runner dies and the
    /// agents stop hearing from it): `chaos run --keep-failed` for every run on this inventory.
    pub keep_failed_runs: bool,
    /// The machines, in file order.
    pub hosts: Vec<Host>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    tls_dir: Spanned<PathBuf>,
    #[serde(default)]
    takeover: bool,
    #[serde(default)]
    keep_failed_runs: bool,
    #[serde(default)]
    hosts: Vec<Spanned<RawHost>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: Option<Spanned<String>>,
    agent: Spanned<String>,
    address: Option<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    interfaces: Vec<Spanned<String>>,
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

impl Inventory {
    /// Reads and checks the inventory at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading the hosts inventory {}", path.display()), e))?;
        Self::parse(path, &text)
    }

    /// Parses inventory `text` read from `path` (named in errors, and the base of a relative
    /// `tls_dir`).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let at = |offset: usize, message: String| {
            let (line, col) = line_col(text, offset);
            Error::invalid(
                format!("hosts inventory {}:{line}:{col}", path.display()),
                message,
            )
        };
        let raw: RawInventory = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, e.message().trim().to_string())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let tls_dir = if raw.tls_dir.get_ref().is_relative() {
            base.join(raw.tls_dir.get_ref())
        } else {
            raw.tls_dir.get_ref().clone()
        };
        if raw.hosts.is_empty() {
            return Err(at(
                text.len(),
                "no [[hosts]]: list the machines that run chaos-agent, one [[hosts]] table each".into(),
            ));
        }
        let mut hosts: Vec<Host> = Vec::with_capacity(raw.hosts.len());
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, spanned) in raw.hosts.iter().enumerate() {
            let host = spanned.get_ref();
            let name = match &host.name {
                Some(name) => {
                    check_name(name.get_ref())
                        .map_err(|m| at(name.span().start, format!("field `name`: {m}")))?;
                    name.get_ref().clone()
                }
                None => format!("n{}", i + 1),
            };
            let name_at = host
                .name
                .as_ref()
                .map_or(spanned.span().start, |n| n.span().start);
            if let Some(first) = seen.insert(name.clone(), name_at) {
                let (line, _) = line_col(text, first);
                return Err(at(
                    name_at,
                    format!(
                        "field `name`: host {name:?} is listed twice (first at line {line}); names must be unique"
                    ),
                ));
            }
            let agent: SocketAddr = host.agent.get_ref().parse().map_err(|_| {
                at(
                    host.agent.span().start,
                    format!(
                        "field `agent` of host {name}: {:?} is not IP:PORT (e.g. \"192.0.2.10:7443\"); \
                         the agent's certificate must name that IP",
                        host.agent.get_ref()
                    ),
                )
            })?;
            let address = match &host.address {
                Some(a) => a.get_ref().parse().map_err(|_| {
                    at(
                        a.span().start,
                        format!(
                            "field `address` of host {name}: {:?} is not an IP address",
                            a.get_ref()
                        ),
                    )
                })?,
                None => agent.ip(),
            };
            let mut interfaces = Vec::with_capacity(host.interfaces.len());
            for nic in &host.interfaces {
                let n = nic.get_ref();
                if n.is_empty() || n.len() > 15 || n.contains(['/', ' ', '\0']) {
                    return Err(at(
                        nic.span().start,
                        format!("field `interfaces` of host {name}: {n:?} is not an interface name"),
                    ));
                }
                interfaces.push(n.clone());
            }
            hosts.push(Host {
                name,
                agent,
                address,
                labels: host.labels.clone(),
                interfaces,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            tls_dir,
            takeover: raw.takeover,
            keep_failed_runs: raw.keep_failed_runs,
            hosts,
        })
    }
}

/// Host names become node names, directory and DNS names: one DNS label.
fn check_name(name: &str) -> std::result::Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: a host name must be 1 to 63 letters, digits or '-', not starting with '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Inventory> {
        Inventory::parse(Path::new("/lab/inv.toml"), text)
    }

    #[test]
    fn a_full_inventory_parses_with_defaults() {
        let inv = parse(
            r#"tls_dir = "ca"
[[hosts]]
name = "rack1-a"
agent = "192.0.2.10:7443"
address = "198.51.100.10"
labels = { rack = "1" }
interfaces = ["enp3s0f0"]
[[hosts]]
agent = "192.0.2.11:7443"
"#,
        )
        .unwrap();
        assert_eq!(inv.tls_dir, PathBuf::from("/lab/ca"));
        assert!(!inv.takeover);
        assert!(!inv.keep_failed_runs);
        assert_eq!(inv.hosts[0].name, "rack1-a");
        assert_eq!(inv.hosts[0].address.to_string(), "198.51.100.10");
        assert_eq!(inv.hosts[0].labels["rack"], "1");
        assert_eq!(inv.hosts[0].interfaces, ["enp3s0f0"]);
        assert_eq!(inv.hosts[1].name, "n2");
        assert_eq!(inv.hosts[1].address.to_string(), "192.0.2.11");
        assert!(inv.hosts[1].interfaces.is_empty());
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let bad_agent = "tls_dir = \"/ca\"\n[[hosts]]\nagent = \"rack1:7443\"\n";
        let e = parse(bad_agent).unwrap_err().to_string();
        assert!(
            e.contains("/lab/inv.toml:3:") && e.contains("field `agent`") && e.contains("IP:PORT"),
            "{e}"
        );

        let dup = "tls_dir = \"/ca\"\n[[hosts]]\nname = \"a\"\nagent = \"192.0.2.1:1\"\n[[hosts]]\nname = \"a\"\nagent = \"192.0.2.2:1\"\n";
        let e = parse(dup).unwrap_err().to_string();
        assert!(
            e.contains(":6:") && e.contains("listed twice") && e.contains("line 3"),
            "{e}"
        );

        let unknown = "tls_dir = \"/ca\"\n[[hosts]]\nagent = \"192.0.2.1:1\"\nport = 3\n";
        let e = parse(unknown).unwrap_err().to_string();
        assert!(e.contains(":4:") && e.contains("port"), "{e}");

        let missing = "[[hosts]]\nagent = \"192.0.2.1:1\"\n";
        let e = parse(missing).unwrap_err().to_string();
        assert!(e.contains("tls_dir"), "{e}");

        let e = parse("tls_dir = \"/ca\"\n").unwrap_err().to_string();
        assert!(e.contains("no [[hosts]]"), "{e}");

        let bad_name = "tls_dir = \"/ca\"\n[[hosts]]\nname = \"a b\"\nagent = \"192.0.2.1:1\"\n";
        let e = parse(bad_name).unwrap_err().to_string();
        assert!(e.contains(":3:") && e.contains("field `name`"), "{e}");
    }
}
