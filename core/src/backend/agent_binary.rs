//! Finding the `chaos-agent` binary on this host, for every backend that starts agents. One
//! environment variable, [`AGENT_BIN_ENV`], names it explicitly for all of them (a statically
//! linked agent serves every backend; `docker` needs one — see `docker::image::static_agent`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Environment variable naming the agent binary explicitly.
pub const AGENT_BIN_ENV: &str = "CHAOS_AGENT_BIN";

/// The agent binary's file name.
const AGENT_NAME: &str = "chaos-agent";

pub(crate) fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the `chaos-agent` binary: `$CHAOS_AGENT_BIN`; else next to the running executable or in
/// its parent directory (tests run from `target/<profile>/deps`, the agent is built into
/// `target/<profile>`); else on `PATH`. Any backend that launches agents on this host uses it.
pub fn find_agent_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(AGENT_BIN_ENV) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(Error::invalid(
                "the chaos-agent binary",
                format!("{AGENT_BIN_ENV}={}: not an executable file", path.display()),
            ))
        };
    }
    let beside_exe = std::env::current_exe().ok().into_iter().flat_map(|exe| {
        let dir = exe.parent().map(Path::to_path_buf);
        let parent = dir.as_deref().and_then(Path::parent).map(Path::to_path_buf);
        [dir, parent].into_iter().flatten()
    });
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    beside_exe.chain(on_path).map(|dir| dir.join(AGENT_NAME)).find(|p| is_executable(p)).ok_or_else(|| {
        Error::invalid(
            "the chaos-agent binary",
            format!("{AGENT_NAME} not found: build it with `cargo build -p chaos-agent` or set {AGENT_BIN_ENV}"),
        )
    })
}
