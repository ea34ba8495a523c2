//! `chaos gc` for the netns backend: finds what crashed runners left on this host — namespaces,
//! host links, cgroups (with the agents and processes still in them), temporary directories and
//! state files — and removes it.
//!
//! Everything a cluster holds is named after its index (see the [module documentation](super)),
//! so leftovers are found by listing `/run/netns`, the host's links and the cgroup directories,
//! grouped by index, and judged by the index's state file: its owner tag (or, in files written
//! before the tag existed, its `runner_pid`) says whether the runner still runs. The backend
//! creates the state file before anything else of a cluster and removes it after everything else
//! ([`super::claim`]), so the leftovers of a runner killed at any instant — while creating its
//! cluster, or while tearing it down — are covered by a state file whose owner is dead. An index
//! whose resources exist without a state file was not made by this version of chaos (older
//! versions created the hub before the state file) or by hand; such *strays* are only removed
//! with `--all`. A claim file a runner was killed before linking into place is removed once its
//! owner is gone.
//!
//! Blocking code: call it from `spawn_blocking`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{cgroup, host_link_name, hub_netns_name, links, namespace, node_netns_name, state_file};
use crate::backend::gc::{GcOptions, GcReport};
use crate::backend::owner;

/// Bound on the killed processes of one cluster exiting (their cgroups cannot be removed
/// before).
const KILL_BOUND: Duration = Duration::from_secs(3);

/// The fields of a state file gc reads; all optional, so older or truncated files still say
/// what they can.
#[derive(Debug, Default, Deserialize)]
struct Recorded {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    runner_pid: Option<u32>,
    #[serde(default)]
    cgroup_dir: Option<PathBuf>,
    #[serde(default)]
    temp_dir: Option<PathBuf>,
}

/// The state file of an index, as found.
#[derive(Debug)]
enum StateEntry {
    Read(Recorded),
    Unreadable(String),
}

/// Everything found on the host for one cluster index.
#[derive(Debug, Default)]
struct Found {
    /// Claim files (`.claim-<index>-<pid>-<n>`): path, writer's pid, the owner tag inside if
    /// readable.
    claims: Vec<(PathBuf, u32, Option<String>)>,
    state: Option<StateEntry>,
    /// A `<index>.json.tmp` left by a write that never got renamed.
    tmp_state: bool,
    hub: bool,
    /// Numbers `k` of the node namespaces `chaos-<index>-n<k>`.
    nodes: Vec<u32>,
    /// The host link `chaos<index>`.
    link: bool,
    /// Its peer `chaos<index>h` still on the host (a runner died before moving it to the hub).
    peer: bool,
    /// `<cgroup2>/chaos/<index>`.
    cgroup: Option<PathBuf>,
}

impl Found {
    /// Nothing but claim files.
    fn is_empty(&self) -> bool {
        self.state.is_none()
            && !self.tmp_state
            && !self.hub
            && self.nodes.is_empty()
            && !self.link
            && !self.peer
            && self.cgroup.is_none()
    }

    /// What exists apart from the state files, for kept lines.
    fn summary(&self, index: u32) -> String {
        let mut parts = Vec::new();
        if self.hub {
            parts.push(format!("namespace {}", hub_netns_name(index)));
        }
        if !self.nodes.is_empty() {
            parts.push(format!("{} node namespace(s)", self.nodes.len()));
        }
        if self.link || self.peer {
            parts.push(format!("link {}", host_link_name(index)));
        }
        if let Some(dir) = &self.cgroup {
            parts.push(format!("cgroup {}", dir.display()));
        }
        if parts.is_empty() {
            "state file only".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// Whether the cluster of an index is garbage, and the words that say why.
struct Verdict {
    collect: bool,
    /// Goes in parentheses after each removed thing, or after the kept cluster.
    reason: String,
}

/// Collects the netns backend's garbage on this host. Blocking: call it from `spawn_blocking`.
///
/// A cluster is removed when its runner is gone (or, with [`GcOptions::all`], always); its
/// processes are killed through its cgroup first, so gc never waits for agents to notice the
/// missing heartbeats. The state file goes last, so an interrupted or failed collection is
/// picked up again by the next one.
pub fn collect_garbage(options: &GcOptions) -> GcReport {
    let mut report = GcReport::default();
    let found = scan(&mut report);
    let mut doomed = Vec::new();
    for (index, mut found) in found {
        for (path, pid, owner) in std::mem::take(&mut found.claims) {
            collect_claim(&path, pid, owner.as_deref(), options, &mut report);
        }
        if found.is_empty() {
            continue;
        }
        let verdict = judge(index, &found, options.all);
        if verdict.collect {
            doomed.push((index, found, verdict.reason));
        } else {
            report.kept.push(format!(
                "netns: cluster #{index} ({}): {}",
                found.summary(index),
                verdict.reason
            ));
        }
    }
    // Kill every doomed cluster's processes first, so they all exit in parallel.
    let mut cgroups: BTreeMap<u32, Vec<PathBuf>> = BTreeMap::new();
    for (index, found, reason) in &doomed {
        let dirs = cgroup_dirs(*index, found, &mut report);
        for dir in &dirs {
            let pids = cgroup::pids(dir);
            if pids.is_empty() {
                continue;
            }
            let list: Vec<String> = pids.iter().map(ToString::to_string).collect();
            let line = format!(
                "netns: processes {} in cgroup {} ({reason})",
                list.join(", "),
                dir.display()
            );
            if options.dry_run {
                report.removed.push(line);
                continue;
            }
            match cgroup::kill(dir) {
                Ok(()) => report.removed.push(line),
                Err(e) => report.errors.push(format!("netns: cluster #{index}: {e}")),
            }
        }
        cgroups.insert(*index, dirs);
    }
    for (index, found, reason) in doomed {
        let dirs = cgroups.remove(&index).unwrap_or_default();
        remove_cluster(index, &found, &dirs, &reason, options.dry_run, &mut report);
    }
    report
}

/// Lists state files, namespaces, host links and cgroups, grouped by index.
fn scan(report: &mut GcReport) -> BTreeMap<u32, Found> {
    let mut found: BTreeMap<u32, Found> = BTreeMap::new();
    for name in dir_names(Path::new(super::STATE_DIR), report) {
        if let Some((index, pid)) = super::claim::parse_claim_file(&name) {
            let path = Path::new(super::STATE_DIR).join(&name);
            let owner = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Recorded>(&b).ok())
                .and_then(|r| r.owner);
            found.entry(index).or_default().claims.push((path, pid, owner));
        } else if let Some(index) = name.strip_suffix(".json.tmp").and_then(parse_index) {
            found.entry(index).or_default().tmp_state = true;
        } else if let Some(index) = name.strip_suffix(".json").and_then(parse_index) {
            let path = state_file(index);
            let entry = match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<Recorded>(&bytes) {
                    Ok(recorded) => StateEntry::Read(recorded),
                    Err(e) => StateEntry::Unreadable(format!("{}: {e}", path.display())),
                },
                // Removed by its runner meanwhile: nothing to judge.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => StateEntry::Unreadable(format!("{}: {e}", path.display())),
            };
            found.entry(index).or_default().state = Some(entry);
        }
    }
    for name in dir_names(Path::new(namespace::NETNS_DIR), report) {
        match parse_netns_name(&name) {
            Some((index, None)) => found.entry(index).or_default().hub = true,
            Some((index, Some(k))) => found.entry(index).or_default().nodes.push(k),
            None => {}
        }
    }
    for name in host_links(report) {
        let Some(rest) = name.strip_prefix("chaos") else {
            continue;
        };
        if let Some(index) = parse_index(rest) {
            found.entry(index).or_default().link = true;
        } else if let Some(index) = rest.strip_suffix('h').and_then(parse_index) {
            found.entry(index).or_default().peer = true;
        }
    }
    if let Some(mount) = cgroup::cgroup2_mount() {
        let root = mount.join("chaos");
        for name in dir_names(&root, report) {
            if let Some(index) = parse_index(&name) {
                found.entry(index).or_default().cgroup = Some(root.join(name));
            }
        }
    }
    for f in found.values_mut() {
        f.nodes.sort_unstable();
    }
    found
}

/// The names in `dir`; a missing directory holds nothing, another error is reported.
fn dir_names(dir: &Path, report: &mut GcReport) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            report
                .errors
                .push(format!("netns: listing {}: {e}", dir.display()));
            Vec::new()
        }
    }
}

/// The links of the host's (the caller's) network namespace.
fn host_links(report: &mut GcReport) -> Vec<String> {
    match nix::net::if_::if_nameindex() {
        Ok(list) => list
            .iter()
            .map(|i| i.name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => {
            report
                .errors
                .push(format!("netns: listing the host's links: {e}"));
            Vec::new()
        }
    }
}

/// Cluster indices chaos versions with one /24 per cluster used (up to 4,000): gc still collects
/// what such a runner left.
const LEGACY_MAX_CLUSTERS: u32 = 4000;

/// An index written the way the backend writes it: decimal digits, no sign, no leading zero,
/// below [`super::MAX_CLUSTERS`] (or an older version's bound) — so the names gc acts on are
/// exactly the backend's.
pub(super) fn parse_index(s: &str) -> Option<u32> {
    let index: u32 = s.parse().ok()?;
    let bound = super::MAX_CLUSTERS.max(LEGACY_MAX_CLUSTERS);
    (s.bytes().all(|b| b.is_ascii_digit()) && index.to_string() == s && index < bound).then_some(index)
}

/// `chaos-<i>` → `(i, None)`, `chaos-<i>-n<k>` → `(i, Some(k))`.
fn parse_netns_name(name: &str) -> Option<(u32, Option<u32>)> {
    let rest = name.strip_prefix("chaos-")?;
    match rest.split_once("-n") {
        None => Some((parse_index(rest)?, None)),
        Some((index, k)) => {
            let (index, k) = (parse_index(index)?, k.parse::<u32>().ok()?);
            (node_netns_name(index, k) == name).then_some((index, Some(k)))
        }
    }
}

/// Removes a claim file a runner was killed before linking into place (nothing else of the
/// cluster exists then) once that runner is gone. A live runner's claim lasts microseconds and
/// is not mentioned.
fn collect_claim(path: &Path, pid: u32, owner: Option<&str>, options: &GcOptions, report: &mut GcReport) {
    let (garbage, why) = match owner {
        Some(tag) => owner::verdict(tag),
        // Cut off while being written: the pid in its name is all there is.
        None if owner::process_alive(pid, 0) => (false, format!("runner pid {pid} alive")),
        None => (true, format!("runner pid {pid} gone")),
    };
    if !garbage && !options.all {
        return;
    }
    let why = if garbage { why } else { format!("{why}; --all") };
    act(
        report,
        options.dry_run,
        format!("claim file {}", path.display()),
        &why,
        || match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    );
}

/// Judges the cluster of `index` from its state file.
fn judge(index: u32, found: &Found, all: bool) -> Verdict {
    let (garbage, why) = match &found.state {
        Some(StateEntry::Read(recorded)) => {
            let (garbage, owner) = owner_verdict(recorded);
            let cluster = recorded.cluster.as_deref().unwrap_or("?");
            (garbage, format!("cluster {cluster}, {owner}"))
        }
        Some(StateEntry::Unreadable(e)) => (false, format!("state file unreadable ({e})")),
        None => (
            false,
            format!(
                "no state file {}: not made by this version of chaos (which claims the index \
                 with its state file first), or by hand",
                state_file(index).display()
            ),
        ),
    };
    let needs_all = !garbage && !matches!(found.state, Some(StateEntry::Read(_)));
    match (garbage, all) {
        (true, _) => Verdict {
            collect: true,
            reason: why,
        },
        (false, true) => Verdict {
            collect: true,
            reason: format!("{why}; --all"),
        },
        (false, false) if needs_all => Verdict {
            collect: false,
            reason: format!("{why}; `chaos gc --all` removes it"),
        },
        (false, false) => Verdict {
            collect: false,
            reason: why,
        },
    }
}

/// Whether the runner that wrote `recorded` is gone, and the words for it.
fn owner_verdict(recorded: &Recorded) -> (bool, String) {
    if let Some(tag) = &recorded.owner {
        return owner::verdict(tag);
    }
    // Written before owner tags: the pid alone (a reused pid keeps the cluster, the safe side).
    match recorded.runner_pid {
        Some(pid) if owner::process_alive(pid, 0) => (false, format!("runner pid {pid} alive")),
        Some(pid) => (true, format!("runner pid {pid} gone")),
        None => (false, "no owner recorded".to_string()),
    }
}

/// The cgroup directories of a doomed cluster: the one found by index, and the one its state
/// file names if that is a chaos cluster cgroup of the same index.
fn cgroup_dirs(index: u32, found: &Found, report: &mut GcReport) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = found.cgroup.iter().cloned().collect();
    if let Some(StateEntry::Read(Recorded {
        cgroup_dir: Some(dir),
        ..
    })) = &found.state
        && !dirs.contains(dir)
        && dir.exists()
    {
        let ours = dir.is_absolute()
            && dir.file_name() == Some(OsStr::new(&index.to_string()))
            && dir.parent().and_then(Path::file_name) == Some(OsStr::new("chaos"));
        if ours {
            dirs.push(dir.clone());
        } else {
            report.kept.push(format!(
                "netns: cgroup {} named by {}: not a chaos cluster cgroup, left alone",
                dir.display(),
                state_file(index).display()
            ));
        }
    }
    dirs
}

/// Does (or, in a dry run, only reports) one removal: a `removed` line on success, an `errors`
/// line on failure.
fn act(
    report: &mut GcReport,
    dry_run: bool,
    what: String,
    reason: &str,
    remove: impl FnOnce() -> io::Result<()>,
) {
    if dry_run {
        report.removed.push(format!("netns: {what} ({reason})"));
        return;
    }
    match remove() {
        Ok(()) => report.removed.push(format!("netns: {what} ({reason})")),
        Err(e) => report.errors.push(format!("netns: {what}: {e}")),
    }
}

/// Removes what is left of cluster `index`, whose processes were killed already: cgroups, node
/// namespaces, host link, hub, temporary directory, and — only when all that worked — the
/// state file.
fn remove_cluster(
    index: u32,
    found: &Found,
    cgroups: &[PathBuf],
    reason: &str,
    dry_run: bool,
    report: &mut GcReport,
) {
    let errors_before = report.errors.len();
    let deadline = Instant::now() + KILL_BOUND;
    for dir in cgroups {
        act(
            report,
            dry_run,
            format!("cgroup {}", dir.display()),
            reason,
            || cgroup::remove_tree(dir, deadline),
        );
    }
    for &k in &found.nodes {
        let name = node_netns_name(index, k);
        act(report, dry_run, format!("namespace {name}"), reason, || {
            namespace::remove(&name)
        });
    }
    // Deleting the host end also deletes its peer, wherever it is.
    let link = host_link_name(index);
    if found.link {
        act(report, dry_run, format!("link {link}"), reason, || {
            links::delete_link_blocking(&link)
        });
    }
    if found.peer {
        let peer = format!("{link}h");
        act(report, dry_run, format!("link {peer}"), reason, || {
            links::delete_link_blocking(&peer)
        });
    }
    if found.hub {
        let hub = hub_netns_name(index);
        act(report, dry_run, format!("namespace {hub}"), reason, || {
            namespace::remove(&hub)
        });
    }
    if let Some(StateEntry::Read(Recorded {
        temp_dir: Some(dir), ..
    })) = &found.state
        && dir.exists()
    {
        let prefix = format!("chaos-netns-{index}-");
        let ours = dir.is_absolute()
            && dir
                .file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with(&prefix));
        if ours {
            act(
                report,
                dry_run,
                format!("directory {}", dir.display()),
                reason,
                || std::fs::remove_dir_all(dir),
            );
        } else {
            report.kept.push(format!(
                "netns: directory {} named by {}: not a chaos-netns directory, left alone",
                dir.display(),
                state_file(index).display()
            ));
        }
    }
    if report.errors.len() > errors_before {
        report.kept.push(format!(
            "netns: state file {} kept so a later `chaos gc` retries cluster #{index}",
            state_file(index).display()
        ));
        return;
    }
    let state = state_file(index);
    let tmp = state.with_extension("json.tmp");
    let remove_file = |path: &Path| match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    if found.tmp_state {
        act(
            report,
            dry_run,
            format!("state file {}", tmp.display()),
            reason,
            || remove_file(&tmp),
        );
    }
    if found.state.is_some() {
        act(
            report,
            dry_run,
            format!("state file {}", state.display()),
            reason,
            || remove_file(&state),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_backends_own_names_are_recognised() {
        assert_eq!(parse_netns_name("chaos-3"), Some((3, None)));
        assert_eq!(parse_netns_name("chaos-3-n12"), Some((3, Some(12))));
        for other in [
            "chaos-03",
            "chaos-+3",
            "chaos-3-n",
            "chaos-3-n01",
            "chaos-3-x1",
            "chaos-",
            "chaos3",
            "chaos-99999",
            "foo-3",
            "chaos-3-n1-x",
        ] {
            assert_eq!(parse_netns_name(other), None, "{other}");
        }
        assert_eq!(parse_index("0"), Some(0));
        assert_eq!(parse_index("3999"), Some(3999));
        assert_eq!(parse_index("4000"), None);
        assert_eq!(parse_index("-1"), None);
    }

    #[test]
    fn strays_and_unreadable_state_are_kept_unless_all() {
        let stray = Found {
            hub: true,
            ..Found::default()
        };
        let verdict = judge(7, &stray, false);
        assert!(!verdict.collect);
        assert!(verdict.reason.contains("--all"), "{}", verdict.reason);
        let verdict = judge(7, &stray, true);
        assert!(verdict.collect);
        assert!(verdict.reason.ends_with("; --all"), "{}", verdict.reason);

        let unreadable = Found {
            state: Some(StateEntry::Unreadable("bad json".into())),
            ..Found::default()
        };
        assert!(!judge(7, &unreadable, false).collect);
    }

    #[test]
    fn old_state_files_are_judged_by_the_runner_pid() {
        let mine = Recorded {
            cluster: Some("c".into()),
            runner_pid: Some(std::process::id()),
            ..Recorded::default()
        };
        assert!(!owner_verdict(&mine).0);
        let gone = Recorded {
            runner_pid: Some((1 << 22) + 1),
            ..Recorded::default()
        };
        assert!(owner_verdict(&gone).0);
        assert!(!owner_verdict(&Recorded::default()).0);
        let found = Found {
            state: Some(StateEntry::Read(gone)),
            ..Found::default()
        };
        let verdict = judge(7, &found, false);
        assert!(verdict.collect);
        assert!(verdict.reason.contains("gone"), "{}", verdict.reason);
    }

    #[test]
    fn a_tagged_owner_wins_over_the_pid() {
        let recorded = Recorded {
            owner: Some(owner::current_tag()),
            runner_pid: Some((1 << 22) + 1),
            ..Recorded::default()
        };
        assert!(!owner_verdict(&recorded).0);
        let elsewhere = Recorded {
            owner: Some("elsewhere.invalid:1:1".into()),
            ..Recorded::default()
        };
        let (garbage, why) = owner_verdict(&elsewhere);
        assert!(!garbage && why.contains("elsewhere.invalid"), "{why}");
    }
}
