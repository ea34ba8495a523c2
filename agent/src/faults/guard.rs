//! What the agent refuses before installing a fault: ids the injector would not take, and
//! freezes that would include the agent itself.

use std::path::{Path, PathBuf};

use chaos_faults::process;
use chaos_proto::fault::{FaultSpec, FreezeTarget};
use chaos_proto::{ApiError, ErrorKind};

use super::{err, fault_error};

/// Fault ids: what the injector accepts, checked early for a clear message.
pub(super) fn validate_id(id: &str) -> Result<(), ApiError> {
    chaos_proto::validate_fault_id(id).map_err(|message| err(ErrorKind::InvalidRequest, message))
}

/// A freeze that would include the agent would leave nobody to heal it (nor to answer the
/// runner): refuse it.
pub(super) fn refuse_freezing_self(spec: &FaultSpec) -> Result<(), ApiError> {
    let me = std::process::id();
    match spec {
        FaultSpec::Freeze(FreezeTarget::ProcessTree { pid }) => {
            let tree = process::tree(*pid).map_err(fault_error)?;
            if tree.iter().any(|(p, _)| *p as u32 == me) {
                return Err(err(
                    ErrorKind::InvalidRequest,
                    format!(
                        "freeze process_tree {pid}: the tree includes the agent itself (pid {me}), which \
                         could then neither answer nor heal; freeze a subtree instead"
                    ),
                ));
            }
        }
        FaultSpec::Freeze(FreezeTarget::Cgroup { path }) => {
            if let Some(holder) = cgroup_holding(Path::new(path), me, 32) {
                return Err(err(
                    ErrorKind::InvalidRequest,
                    format!(
                        "freeze cgroup {path}: it contains the agent itself (pid {me} in {}), which \
                         could then neither answer nor heal; freeze a child cgroup instead",
                        holder.display()
                    ),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The cgroup under `dir` (itself or a descendant) whose `cgroup.procs` lists `pid`.
fn cgroup_holding(dir: &Path, pid: u32, depth: u32) -> Option<PathBuf> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    if procs.lines().any(|l| l.trim().parse::<u32>() == Ok(pid)) {
        return Some(dir.to_path_buf());
    }
    if depth == 0 {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| cgroup_holding(&e.path(), pid, depth - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_anything_is_installed() {
        assert!(validate_id("f-1.a_B").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            let e = validate_id(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest, "{bad:?}");
        }
    }

    #[test]
    fn the_agent_never_freezes_itself() {
        let me = std::process::id();
        let spec = FaultSpec::Freeze(FreezeTarget::ProcessTree { pid: me as i32 });
        let e = refuse_freezing_self(&spec).unwrap_err();
        assert!(e.message.contains("agent itself"), "{e}");
    }
}
