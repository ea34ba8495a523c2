//! Obtaining the `chaos-agent` binary, at this library's version, for every backend that starts
//! agents — with nothing for the user to do, whether `chaos` is used from its own workspace or
//! as a path, git or registry dependency of another project.
//!
//! # Where an agent comes from
//!
//! 1. `$CHAOS_AGENT_BIN` ([`AGENT_BIN_ENV`], the one variable every backend reads). An agent
//!    named there must be this library's version, else [`agent_binary`] fails saying both.
//! 2. A build already on disk: next to the running executable or its parent (tests run from
//!    `target/<profile>/deps`, the workspace's agent is built into `target/<profile>`), on
//!    `PATH`, under a cargo target directory's `x86_64-unknown-linux-gnu/{release,debug}`, or in
//!    the agent cache (below). An implicitly found agent of another version is passed over,
//!    saying so in the log; one older than the agent's sources (when they are at hand) too.
//! 3. Otherwise it is **built once into the agent cache**, `$XDG_CACHE_HOME/chaos/agent-<version>`
//!    (default `~/.cache/chaos/agent-<version>`, see [`cache_dir`]): statically linked, so the
//!    one build serves `netns` (any agent runs there) and `docker` (a `FROM scratch` image needs a
//!    static one) alike. The sources are those of this very library: cargo checks out path and
//!    git dependencies whole, so `<this crate>/../agent` is the agent of the same commit; a
//!    registry download has only this crate, so the agent is `cargo install`ed from the
//!    registry at exactly this version. See `build.rs` here for the commands and why cargo's own
//!    locks make parallel tests build once.
//!
//! Linkage matters only for `docker` ([`Linkage::Static`]); a dynamically linked agent found
//! first is fine for `netns`.

mod build;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::backend::elf::{ElfLinkage, elf_linkage};
use crate::{Error, Result};

pub use build::{cache_dir, manual_command};

/// Environment variable naming the agent binary explicitly.
pub const AGENT_BIN_ENV: &str = "CHAOS_AGENT_BIN";

/// The version an agent must have to serve this library: the library's own (they are released
/// together, and the protocol between them changes without notice between versions).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The agent binary's file name.
const AGENT_NAME: &str = "chaos-agent";

/// The target triple of the static agent: node containers run on this host's kernel.
pub(crate) const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// What a backend needs of the agent binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    /// Anything that runs on this host (`netns`).
    Any,
    /// Statically linked: it runs in any container or machine with this kernel (`docker`).
    Static,
}

pub(crate) fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The agent binary for `linkage`, at [`AGENT_VERSION`]: found (see the [module
/// documentation](self)) or, when none is, built once into the agent cache. The first build
/// takes 2–3 minutes; later calls, in this process or any other, find it in about a millisecond.
/// Errors are one line saying what to run by hand.
pub async fn agent_binary(linkage: Linkage) -> Result<PathBuf> {
    if let Some(path) = explicit(linkage)? {
        return Ok(path);
    }
    let cell = match linkage {
        Linkage::Any => &build::ANY,
        Linkage::Static => &build::STATIC,
    };
    cell.get_or_try_init(|| async move {
        let found = tokio::task::spawn_blocking(move || search(linkage))
            .await
            .map_err(|e| Error::invalid("the chaos-agent binary", format!("the search task failed: {e}")))?;
        match found {
            Some(path) => Ok(path),
            None => build::build().await,
        }
    })
    .await
    .cloned()
}

/// The agent binary when one is already on disk (no build): `$CHAOS_AGENT_BIN`, else the search
/// of the [module documentation](self). Fails, saying how to get one, when there is none.
pub fn find_agent_binary() -> Result<PathBuf> {
    if let Some(path) = explicit(Linkage::Any)? {
        return Ok(path);
    }
    search(Linkage::Any).ok_or_else(|| {
        Error::invalid(
            "the chaos-agent binary",
            format!(
                "none of version {AGENT_VERSION} is built yet; {}",
                manual_command()
            ),
        )
    })
}

/// Whether an agent is at hand or can be built here: `Err` is one line saying what to do.
pub fn obtainable() -> Result<(), String> {
    if explicit(Linkage::Any).map_err(|e| e.to_string())?.is_some() || search(Linkage::Any).is_some() {
        return Ok(());
    }
    build::plan().map(drop).map_err(|e| e.to_string())
}

/// `$CHAOS_AGENT_BIN`, checked: `None` when unset, or set to a dynamically linked agent while a
/// static one is needed (passed over, saying so in the log, so the search finds a static one).
fn explicit(linkage: Linkage) -> Result<Option<PathBuf>> {
    let Some(path) = std::env::var_os(AGENT_BIN_ENV).map(PathBuf::from) else {
        return Ok(None);
    };
    let what = || format!("{AGENT_BIN_ENV}={}", path.display());
    if !is_executable(&path) {
        return Err(Error::invalid(
            what(),
            "not an executable file; unset it to let chaos build the agent",
        ));
    }
    if linkage == Linkage::Static {
        match elf_linkage(&path)? {
            ElfLinkage::Static => {}
            ElfLinkage::Dynamic => {
                tracing::info!(
                    "{} is dynamically linked, which a container cannot run; looking for a static agent",
                    what()
                );
                return Ok(None);
            }
            ElfLinkage::NotElf64 => {
                return Err(Error::invalid(
                    what(),
                    "not an ELF64 executable; a container needs a static agent",
                ));
            }
        }
    }
    version_matches(&path).map_err(|message| Error::invalid(what(), message))?;
    Ok(Some(path))
}

/// Looks on disk, without building: every candidate of the [module documentation](self) that
/// runs, has the right linkage and version and is not older than the agent's sources.
fn search(linkage: Linkage) -> Option<PathBuf> {
    let sources = build::sources_root();
    let newest_source = sources.as_deref().and_then(newest_source);
    let fresh = |path: &Path| match (newest_source, mtime(path)) {
        (Some(source), Some(built)) => built >= source,
        _ => true,
    };
    let linkage_ok = |path: &Path| match linkage {
        Linkage::Any => true,
        Linkage::Static => matches!(elf_linkage(path), Ok(ElfLinkage::Static)),
    };
    let mut candidates = Vec::new();
    if linkage == Linkage::Any {
        let exe = std::env::current_exe().ok();
        let dirs = exe.iter().flat_map(|e| e.ancestors().skip(1).take(2));
        candidates.extend(dirs.map(|d| d.join(AGENT_NAME)));
    }
    for target in build::target_dirs(sources.as_deref()) {
        candidates.extend(static_candidates(&target));
    }
    candidates.push(build::cached_binary());
    if linkage == Linkage::Any
        && let Some(path) = std::env::var_os("PATH")
    {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(AGENT_NAME)));
    }
    candidates.into_iter().find(|path| {
        if !is_executable(path) || !linkage_ok(path) {
            return false;
        }
        if !fresh(path) {
            tracing::debug!(agent = %path.display(), "passed over: older than the agent's sources");
            return false;
        }
        match version_matches(path) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(agent = %path.display(), "passed over: {why}");
                false
            }
        }
    })
}

/// Where a statically linked agent built by hand lands under the cargo target directory `target`.
pub(crate) fn static_candidates(target: &Path) -> [PathBuf; 2] {
    [
        target.join(AGENT_TARGET).join("release").join(AGENT_NAME),
        target.join(AGENT_TARGET).join("debug").join(AGENT_NAME),
    ]
}

/// Checks that the agent at `path` is [`AGENT_VERSION`], asking it (`chaos-agent --version`
/// prints `chaos-agent <version>`). Each path is asked once per process; `Err` says both
/// versions and the fix.
pub fn version_matches(path: &Path) -> Result<(), String> {
    /// The answers so far, by path and modification time (a rebuilt agent is asked again).
    type Answers = HashMap<(PathBuf, Option<SystemTime>), Result<(), String>>;
    static ASKED: Mutex<Option<Answers>> = Mutex::new(None);
    let key = (path.to_path_buf(), mtime(path));
    if let Some(known) = ASKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_default()
        .get(&key)
    {
        return known.clone();
    }
    let answer = ask_version(path);
    ASKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_default()
        .insert(key, answer.clone());
    answer
}

fn ask_version(path: &Path) -> Result<(), String> {
    let output = std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{} --version`: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .trim()
        .strip_prefix(AGENT_NAME)
        .map(str::trim)
        .filter(|v| output.status.success() && !v.is_empty() && !v.contains(char::is_whitespace));
    match version {
        Some(v) if v == AGENT_VERSION => Ok(()),
        Some(v) => Err(format!(
            "this is chaos-agent {v}, but the chaos library is {AGENT_VERSION} and needs an agent of \
             the same version; unset {AGENT_BIN_ENV} to let chaos build it, or point it at a \
             chaos-agent {AGENT_VERSION}"
        )),
        None => Err(format!(
            "`{} --version` did not print `{AGENT_NAME} <version>` (it printed {:?}); is it a chaos-agent?",
            path.display(),
            text.trim()
        )),
    }
}

/// Modification time of `path`, if it exists.
pub(crate) fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time among the agent's sources under the source tree `root`: the
/// agent and the crates it builds from. About a millisecond, so a fresh agent costs no cargo run
/// at all. The workspace manifest and lock are left out: editing them seldom changes the agent,
/// and cargo then leaves its binary untouched, which would make it look stale for good (the
/// version, the part of the manifest that matters, is checked by asking the agent).
pub(crate) fn newest_source(root: &Path) -> Option<SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<SystemTime>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                walk(&entry.path(), newest);
            } else if let Ok(t) = meta.modified() {
                *newest = (*newest).max(Some(t));
            }
        }
    }
    let mut newest = None;
    for krate in ["agent", "proto", "faults"] {
        walk(&root.join(krate).join("src"), &mut newest);
        newest = newest.max(mtime(&root.join(krate).join("Cargo.toml")));
    }
    newest
}

#[cfg(test)]
mod tests;
