//! Obtaining the `chaos-agent` binary, at this library's version, for every backend that starts
//! agents — with nothing for the user to do, whether `chaos` is used from its own workspace or
//! as a path, git or registry dependency of another project.
//!
//! The agent is one [workspace binary](crate::backend::workspace_binary::WorkspaceBinary)
//! ([`AGENT`]); where it comes from is the [workspace
//! binary search](crate::backend::workspace_binary): `$CHAOS_AGENT_BIN` ([`AGENT_BIN_ENV`], the
//! one variable every backend reads), a build already on disk (next to the running executable,
//! cargo target directories, the agent cache, `PATH`), else **built once into the agent
//! cache**, `$XDG_CACHE_HOME/chaos/agent-<version>` (default `~/.cache/chaos/agent-<version>`,
//! see [`cache_dir`]), statically linked so that the one build serves every backend.
//!
//! Linkage matters only for nodes that do not share the runner's libraries
//! ([`Linkage::Static`]); a dynamically linked agent found first is fine for `netns`.

use std::path::{Path, PathBuf};

use crate::Result;
use crate::backend::workspace_binary::AGENT;

pub use crate::backend::workspace_binary::Linkage;

/// Environment variable naming the agent binary explicitly (`AGENT.env_var()`).
pub const AGENT_BIN_ENV: &str = "CHAOS_AGENT_BIN";

/// The version an agent must have to serve this library: the library's own (they are released
/// together, and the protocol between them changes without notice between versions).
pub const AGENT_VERSION: &str = crate::backend::workspace_binary::VERSION;

/// The agent binary for `linkage`, at [`AGENT_VERSION`]: found (see the [module
/// documentation](self)) or, when none is, built once into the agent cache. The first build
/// takes 2–3 minutes; later calls, in this process or any other, find it in about a millisecond.
/// Errors are one line saying what to run by hand.
pub async fn agent_binary(linkage: Linkage) -> Result<PathBuf> {
    AGENT.obtain(linkage).await
}

/// The agent binary when one is already on disk (no build): `$CHAOS_AGENT_BIN`, else the search
/// of the [module documentation](self). Fails, saying how to get one, when there is none.
pub fn find_agent_binary() -> Result<PathBuf> {
    AGENT.find()
}

/// Whether an agent is at hand or can be built here: `Err` is one line saying what to do.
pub fn obtainable() -> Result<(), String> {
    AGENT.obtainable()
}

/// Checks that the agent at `path` is [`AGENT_VERSION`], asking it (`chaos-agent --version`
/// prints `chaos-agent <version>`). Each path is asked once per process; `Err` says both
/// versions and the fix.
pub fn version_matches(path: &Path) -> Result<(), String> {
    AGENT.version_matches(path)
}

/// The agent cache of this library's version ([`WorkspaceBinary::cache_dir`](crate::backend::workspace_binary::WorkspaceBinary::cache_dir) of [`AGENT`]).
pub fn cache_dir() -> PathBuf {
    AGENT.cache_dir()
}

/// The one command that builds the agent by hand, or says how to point chaos at one.
pub fn manual_command() -> String {
    AGENT.manual_command()
}

#[cfg(test)]
mod tests;
