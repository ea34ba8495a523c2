//! Which processes belong to the node: the rule every process fault of the agent keeps
//! (`POST /v1/signal`, freezes of a `process_tree` or a `cgroup`).
//!
//! netns nodes share the host's PID namespace, so "any process on the node" would be every
//! process on the host. The agent therefore decides membership itself:
//!
//! - with `--cgroup DIR` (the netns backend puts the agent in `DIR/agent` and each process it
//!   starts in `DIR/proc-<id>`), a process is the node's iff its cgroup v2 path — from
//!   `/proc/<pid>/cgroup`, relative to the cgroup2 root — is `DIR` or below it. Cgroup
//!   membership is inherited by every fork and only root can move a process out, so a daemon
//!   started on the node stays the node's, and nothing of another node or of the host is;
//! - without it (docker containers, a bare agent on a host), a process is the node's iff it
//!   descends from the agent. The agent is a child subreaper (see `orphans`), so daemonized
//!   descendants (setsid and a double fork) are reparented to it and stay descendants.
//!
//! The agent itself is never a target, whatever the rule says.

use std::path::{Path, PathBuf};

use chaos_faults::{cgroup, process};
use chaos_proto::{ApiError, ErrorKind};

/// Bound of an ancestry walk (deeper than any real process tree).
const MAX_DEPTH: usize = 4096;

/// The node's processes, as the agent tells them apart.
#[derive(Debug, Clone)]
pub(crate) enum NodeScope {
    /// `--cgroup DIR`: the processes in `DIR`'s subtree.
    Cgroup {
        /// `DIR`, canonical.
        dir: PathBuf,
        /// `DIR`'s path in the cgroup2 hierarchy, as `/proc/<pid>/cgroup` shows it.
        path: String,
    },
    /// No `--cgroup`: the agent's descendants.
    Descendants {
        /// The agent's pid.
        agent: i32,
    },
    /// `--cgroup DIR` whose place in the cgroup2 hierarchy could not be found: every process
    /// fault outside the agent's own table is refused, saying why.
    Unknown {
        /// `DIR` as given.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// What [`NodeScope::membership`] found out about a pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Membership {
    /// A process of the node.
    Node,
    /// A process outside the node, and why.
    Outside(String),
    /// No such process.
    Gone,
}

fn internal(e: chaos_faults::Error) -> ApiError {
    ApiError::new(
        ErrorKind::Internal,
        format!("telling the node's processes apart: {e}"),
    )
}

impl NodeScope {
    /// The scope of an agent started with `cgroup` (its `--cgroup`).
    pub(crate) fn new(cgroup: Option<&Path>) -> Self {
        let Some(dir) = cgroup else {
            return Self::Descendants {
                agent: std::process::id() as i32,
            };
        };
        match hierarchy_path(dir) {
            Ok((canonical, path)) => Self::Cgroup { dir: canonical, path },
            Err(reason) => {
                tracing::error!(
                    "--cgroup {}: {reason}; process faults beyond the agent's own processes are refused",
                    dir.display()
                );
                Self::Unknown {
                    dir: dir.to_path_buf(),
                    reason,
                }
            }
        }
    }

    /// Which processes are the node's, in words.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Cgroup { path, .. } => format!("the processes in cgroup {path} and below"),
            Self::Descendants { agent } => format!("the descendants of the agent (pid {agent})"),
            Self::Unknown { dir, .. } => format!("the processes in cgroup {}", dir.display()),
        }
    }

    fn unknown(dir: &Path, reason: &str) -> ApiError {
        ApiError::new(
            ErrorKind::Internal,
            format!(
                "cannot tell this node's processes apart: --cgroup {}: {reason}",
                dir.display()
            ),
        )
    }

    /// Whether `pid` is a process of the node.
    pub(crate) fn membership(&self, pid: i32) -> Result<Membership, ApiError> {
        match self {
            Self::Cgroup { path, .. } => Ok(match cgroup::cgroup_of(pid).map_err(internal)? {
                None => Membership::Gone,
                Some(p) if inside(&p, path) => Membership::Node,
                Some(p) => {
                    Membership::Outside(format!("it runs in cgroup {p}, outside the node's cgroup {path}"))
                }
            }),
            Self::Descendants { agent } => descends(pid, *agent),
            Self::Unknown { dir, reason } => Err(Self::unknown(dir, reason)),
        }
    }

    /// Fails unless `pid` is a process of the node, with an error naming the pid and why.
    pub(crate) fn check_pid(&self, pid: i32) -> Result<(), ApiError> {
        match self.membership(pid)? {
            Membership::Node => Ok(()),
            Membership::Gone => Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no process with pid {pid} on this node"),
            )),
            Membership::Outside(why) => Err(self.outside(pid, &why)),
        }
    }

    /// The error for a pid outside the node.
    pub(crate) fn outside(&self, pid: i32, why: &str) -> ApiError {
        ApiError::new(
            ErrorKind::PermissionDenied,
            format!(
                "pid {pid} is not a process of this node: {why}; the agent only acts on {}",
                self.describe()
            ),
        )
    }

    /// Fails unless the cgroup directory `path` is the node's: inside `--cgroup DIR`. Without
    /// `--cgroup` no cgroup is the node's (a cgroup's members can join from anywhere).
    pub(crate) fn check_cgroup(&self, path: &str) -> Result<(), ApiError> {
        match self {
            Self::Cgroup { dir, .. } => {
                let canonical = std::fs::canonicalize(path).map_err(|e| {
                    ApiError::new(
                        if e.kind() == std::io::ErrorKind::NotFound {
                            ErrorKind::NotFound
                        } else {
                            ErrorKind::Internal
                        },
                        format!("cgroup directory {path}: {e}"),
                    )
                })?;
                if canonical.starts_with(dir) {
                    Ok(())
                } else {
                    Err(ApiError::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "cgroup {path} is not this node's: only cgroups inside the node's cgroup {} \
                             belong to it",
                            dir.display()
                        ),
                    ))
                }
            }
            Self::Descendants { .. } => Err(ApiError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "cgroup {path}: this agent runs without --cgroup, so no cgroup belongs to its node \
                     (any process on the host could be in it); freeze a process of the node instead \
                     (`proc`, `all_procs` or a `process_tree`)"
                ),
            )),
            Self::Unknown { dir, reason } => Err(Self::unknown(dir, reason)),
        }
    }

    /// Fails unless `pid` and every descendant of it are processes of the node.
    pub(crate) fn check_tree(&self, pid: i32) -> Result<(), ApiError> {
        self.check_pid(pid)?;
        let tree = process::tree(pid).map_err(|e| match e {
            chaos_faults::Error::NotFound(_) => ApiError::new(
                ErrorKind::NotFound,
                format!("no process with pid {pid} on this node"),
            ),
            e => internal(e),
        })?;
        for (member, _) in tree.into_iter().skip(1) {
            if let Membership::Outside(why) = self.membership(member)? {
                return Err(self.outside(member, &format!("{why} (a descendant of pid {pid})")));
            }
        }
        Ok(())
    }
}

/// Whether cgroup `p` is `node` or below it.
fn inside(p: &str, node: &str) -> bool {
    let node = node.trim_end_matches('/');
    node.is_empty() || p == node || p.strip_prefix(node).is_some_and(|rest| rest.starts_with('/'))
}

/// `dir` made canonical, and its path in the cgroup2 hierarchy.
fn hierarchy_path(dir: &Path) -> Result<(PathBuf, String), String> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| format!("cannot resolve it: {e}"))?;
    let mount = cgroup::cgroup_mount_of(&canonical, true)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "it is not on a cgroup2 filesystem mounted in this mount namespace".to_string())?;
    let rel = canonical
        .strip_prefix(&mount)
        .map_err(|_| format!("it is not below the cgroup2 mount {}", mount.display()))?;
    let rel = rel.to_str().ok_or_else(|| "its path is not UTF-8".to_string())?;
    Ok((canonical.clone(), format!("/{rel}")))
}

/// Whether `pid` descends from `agent`, following parent pids.
fn descends(pid: i32, agent: i32) -> Result<Membership, ApiError> {
    let Some(first) = process::stat(pid).map_err(internal)? else {
        return Ok(Membership::Gone);
    };
    let mut parent = first.ppid;
    for _ in 0..MAX_DEPTH {
        if parent == agent {
            return Ok(Membership::Node);
        }
        if parent <= 1 {
            break;
        }
        match process::stat(parent).map_err(internal)? {
            Some(st) => parent = st.ppid,
            // An ancestor exited mid-walk: the process was reparented; its new parent decides.
            None => match process::stat(pid).map_err(internal)? {
                Some(st) if st.ppid != first.ppid => return descends(pid, agent),
                Some(_) => break,
                None => return Ok(Membership::Gone),
            },
        }
    }
    Ok(Membership::Outside(format!(
        "it does not descend from the agent (its parent is pid {})",
        first.ppid
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_are_inside_by_whole_components() {
        assert!(inside("/chaos/3/n1", "/chaos/3/n1"));
        assert!(inside("/chaos/3/n1/proc-4", "/chaos/3/n1"));
        assert!(inside("/chaos/3/n1/proc-4", "/chaos/3/n1/"));
        assert!(
            !inside("/chaos/3/n10/proc-4", "/chaos/3/n1"),
            "a sibling sharing a prefix"
        );
        assert!(!inside("/chaos/3", "/chaos/3/n1"));
        assert!(!inside("/", "/chaos/3/n1"));
        assert!(inside("/anything", "/"));
    }

    #[test]
    fn descendants_of_this_process_are_its_own_and_others_are_not() {
        let me = std::process::id() as i32;
        let scope = NodeScope::Descendants { agent: me };
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert_eq!(scope.membership(child.id() as i32).unwrap(), Membership::Node);
        // Our parent is not our descendant; pid 1 neither.
        let parent = std::os::unix::process::parent_id() as i32;
        assert!(matches!(
            scope.membership(parent).unwrap(),
            Membership::Outside(_)
        ));
        let e = scope.check_pid(1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        assert!(
            e.message
                .starts_with("pid 1 is not a process of this node: it does not descend from the agent"),
            "{e}"
        );
        assert_eq!(scope.check_pid(i32::MAX).unwrap_err().kind, ErrorKind::NotFound);
        let e = scope.check_cgroup("/sys/fs/cgroup").unwrap_err();
        assert!(e.message.contains("without --cgroup"), "{e}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
