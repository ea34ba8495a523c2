//! Capability probe: which fault mechanisms this node supports, each with a reason when absent.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Whether one capability is present, and why not when it is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// Present and usable.
    pub available: bool,
    /// How it was determined, or what is missing.
    pub detail: String,
}

impl Capability {
    fn new((available, detail): (bool, String)) -> Self {
        Self { available, detail }
    }

    /// What a report from an older probe says about a capability it did not know.
    fn unknown() -> Self {
        Self {
            available: false,
            detail: "not probed (an older agent)".into(),
        }
    }
}

/// Whether nftables rules can match on the wall clock (`meta time`, Linux ≥ 5.4), which is how
/// network faults expire in the kernel. Read once from the running kernel's release.
pub fn kernel_expiry() -> Capability {
    static CACHED: std::sync::OnceLock<Capability> = std::sync::OnceLock::new();
    CACHED
        .get_or_init(|| {
            let release = nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default();
            Capability::new(kernel_at_least(&release, (5, 4)))
        })
        .clone()
}

fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> (bool, String) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) if (a, b) >= (major, minor) => (
            true,
            format!("kernel {release} has nftables `meta time` (≥ {major}.{minor})"),
        ),
        (Some(_), Some(_)) => (
            false,
            format!("kernel {release} predates nftables `meta time` ({major}.{minor})"),
        ),
        _ => (false, format!("cannot read the kernel version from {release:?}")),
    }
}

/// The iptables flavour installed, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IptablesBackend {
    /// `iptables` over nf_tables (`iptables vX (nf_tables)`).
    Nft,
    /// Legacy x_tables.
    Legacy,
    /// No `iptables` binary found.
    Absent,
}

/// What the probe found. Network entries describe the calling thread's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// nftables reachable over netlink (partition, loss): we can list tables.
    pub nftables_netlink: Capability,
    /// `numgen` expression (kernel-side random loss).
    pub nft_numgen: Capability,
    /// Native nft `queue` statement (CONFIG_NFT_QUEUE). Not needed: we use the compat target.
    pub nft_queue: Capability,
    /// xtables `NFQUEUE` target usable from nf_tables (CONFIG_NFT_COMPAT + xt_NFQUEUE), which
    /// our delay/duplicate/corrupt/reorder path uses.
    pub nfqueue: Capability,
    /// The netem qdisc.
    pub netem: Capability,
    /// The tbf qdisc (bandwidth).
    pub tbf: Capability,
    /// cgroup v2 freezer (`cgroup.freeze`) on this host.
    pub cgroup_v2_freeze: Capability,
    /// cgroup v1 freezer controller.
    pub cgroup_v1_freezer: Capability,
    /// cgroup v2 `cgroup.kill`.
    pub cgroup_kill: Capability,
    /// nftables `meta time` (Linux 5.4): network rules carry their own deadline, so partition,
    /// loss and packet faults stop at their TTL even when no agent is alive to heal them.
    #[serde(default = "Capability::unknown")]
    pub nft_kernel_expiry: Capability,
    /// iptables binary and its backend (informational; we never need it).
    pub iptables: IptablesBackend,
    /// External binaries the fault mechanisms need: none (every fault is netlink, /proc, /sys
    /// or a syscall). The probe itself runs `zcat /proc/config.gz` when both exist, only to
    /// explain absent kernel features; without it the details fall back to /sys/module.
    pub external_binaries: Vec<String>,
}

/// The kernel config from `/proc/config.gz`. Decompressed with `zcat` when present: this is
/// informational probing only, never a fault mechanism, so it does not justify a gzip crate.
fn kernel_config() -> Option<String> {
    let o = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Whether a kernel feature is built in or loadable: `/sys/module/<module>`, the kernel config,
/// or a module file under `/lib/modules/$(uname -r)`.
pub(crate) fn kernel_feature(config: &str, module: &str) -> (bool, String) {
    if Path::new("/sys/module").join(module).exists() {
        return (true, format!("module {module} loaded"));
    }
    if let Some(cfg) = kernel_config() {
        for line in cfg.lines() {
            if let Some(v) = line.strip_prefix(config).and_then(|r| r.strip_prefix('=')) {
                return match v {
                    "y" => (true, format!("{config}=y (built in)")),
                    "m" => (true, format!("{config}=m (module)")),
                    _ => (false, format!("{config}={v}")),
                };
            }
        }
        return (false, format!("{config} is not set in /proc/config.gz"));
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = Path::new("/lib/modules").join(&release);
    let found = walk_for(&dir, module, 6);
    if found {
        (true, format!("{module}.ko found under {}", dir.display()))
    } else {
        (
            false,
            format!(
                "{module} not loaded, no kernel config, no module file under {}",
                dir.display()
            ),
        )
    }
}

fn walk_for(dir: &Path, module: &str, depth: u32) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{module}.ko")) {
            return true;
        }
        if depth > 0 && p.is_dir() && walk_for(&p, module, depth - 1) {
            return true;
        }
    }
    false
}

fn cgroup_capabilities() -> (Capability, Capability, Capability) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut v2: Option<String> = None;
    let mut v1: Option<String> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        if f[2] == "cgroup2" && v2.is_none() {
            v2 = Some(f[1].to_string());
        }
        if f[2] == "cgroup" && f[3].split(',').any(|o| o == "freezer") {
            v1 = Some(f[1].to_string());
        }
    }
    let v2_file = |file: &str| match &v2 {
        None => (false, "no cgroup2 mount in /proc/self/mounts".to_string()),
        Some(m) => {
            // The root cgroup has no cgroup.freeze/kill; look for any child that has it.
            let has = std::fs::read_dir(m)
                .map(|rd| rd.flatten().any(|e| e.path().join(file).exists()))
                .unwrap_or(false)
                || Path::new(m).join(file).exists();
            if has {
                (true, format!("cgroup2 at {m} has {file}"))
            } else {
                (false, format!("cgroup2 at {m} has no {file} (kernel too old?)"))
            }
        }
    };
    let v1cap = match v1 {
        Some(m) => (true, format!("v1 freezer mounted at {m}")),
        None => (
            false,
            "no v1 freezer cgroup mount in /proc/self/mounts".to_string(),
        ),
    };
    (
        Capability::new(v2_file("cgroup.freeze")),
        Capability::new(v1cap),
        Capability::new(v2_file("cgroup.kill")),
    )
}

fn iptables_backend() -> IptablesBackend {
    match std::process::Command::new("iptables").arg("-V").output() {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("nf_tables") => IptablesBackend::Nft,
        Ok(o) if o.status.success() => IptablesBackend::Legacy,
        _ => IptablesBackend::Absent,
    }
}

/// Probes the node. Network checks run in the calling thread's network namespace and leave
/// nothing behind (they only list).
pub fn probe() -> Capabilities {
    let nft = match crate::nft::Nft::open().and_then(|mut n| n.table_exists()) {
        Ok(_) => (true, "nf_tables answered over netlink".to_string()),
        Err(e) => (false, e.to_string()),
    };
    let compat = kernel_feature("CONFIG_NFT_COMPAT", "nft_compat");
    let xt_nfq = kernel_feature("CONFIG_NETFILTER_XT_TARGET_NFQUEUE", "xt_NFQUEUE");
    let nfnl_q = kernel_feature("CONFIG_NETFILTER_NETLINK_QUEUE", "nfnetlink_queue");
    let nfqueue = if compat.0 && xt_nfq.0 && nfnl_q.0 {
        (true, format!("{}; {}; {}", compat.1, xt_nfq.1, nfnl_q.1))
    } else {
        let missing: Vec<String> = [compat, xt_nfq, nfnl_q]
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, d)| d)
            .collect();
        (false, missing.join("; "))
    };
    let (v2, v1, kill) = cgroup_capabilities();
    Capabilities {
        nftables_netlink: Capability::new(nft),
        nft_numgen: Capability::new(kernel_feature("CONFIG_NFT_NUMGEN", "nft_numgen")),
        nft_queue: Capability::new(kernel_feature("CONFIG_NFT_QUEUE", "nft_queue")),
        nfqueue: Capability::new(nfqueue),
        netem: Capability::new(kernel_feature("CONFIG_NET_SCH_NETEM", "sch_netem")),
        tbf: Capability::new(kernel_feature("CONFIG_NET_SCH_TBF", "sch_tbf")),
        cgroup_v2_freeze: v2,
        cgroup_v1_freezer: v1,
        cgroup_kill: kill,
        nft_kernel_expiry: kernel_expiry(),
        iptables: iptables_backend(),
        external_binaries: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_are_compared_by_major_and_minor() {
        assert!(kernel_at_least("6.18.0-chaos", (5, 4)).0);
        assert!(kernel_at_least("5.4.0", (5, 4)).0);
        assert!(kernel_at_least("5.10.209-1-cloud-amd64", (5, 4)).0);
        assert!(!kernel_at_least("5.3.18", (5, 4)).0);
        assert!(!kernel_at_least("4.19.0", (5, 4)).0);
        let (ok, detail) = kernel_at_least("weird", (5, 4));
        assert!(!ok && detail.contains("weird"), "{detail}");
    }
}
