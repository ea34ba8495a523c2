//! Obtaining a binary of this workspace — the agent, a built-in client adapter — at this
//! library's version, with nothing for the user to do, whether `chaos` is used from its own
//! workspace or as a path, git or registry dependency of another project.
//!
//! A [`WorkspaceBinary`] names one binary: its cargo package, binary name and directory in the
//! workspace. [`AGENT`] is the agent every backend starts ([`crate::backend::agent_binary`]);
//! [`BUILTIN_ADAPTERS`] are the client adapters a scenario ships by name (`[[setup.ship]]
//! builtin = "chaos-adapter-postgres"`).
//!
//! # Where a binary comes from
//!
//! 1. Its environment variable ([`WorkspaceBinary::env_var`]: `CHAOS_AGENT_BIN`,
//!    `CHAOS_ADAPTER_POSTGRES_BIN`, …). A binary named there must be this library's version,
//!    else the lookup fails saying both.
//! 2. A build already on disk: next to the running executable or its parent (tests run from
//!    `target/<profile>/deps`, the workspace's binaries are built into `target/<profile>`), on
//!    `PATH`, under a cargo target directory's `x86_64-unknown-linux-gnu/{release,debug}`, or in
//!    the cache (below). An implicitly found binary of another version is passed over, saying so
//!    in the log; one older than its sources (when they are at hand) too.
//! 3. Otherwise it is **built once into the cache**, `$XDG_CACHE_HOME/chaos/<cache>-<version>`
//!    (default `~/.cache/chaos/agent-<version>` for the agent, `adapters-<version>` for the
//!    adapters, see [`WorkspaceBinary::cache_dir`]): statically linked, so the one build serves
//!    `netns` (anything runs there) and `docker` (a `FROM scratch` image needs a static binary)
//!    alike. The sources are those of this very library: cargo checks out path and git
//!    dependencies whole, so `<this crate>/../agent` is the agent of the same commit; a registry
//!    download has only this crate, so the binary is `cargo install`ed from the registry at
//!    exactly this version. See `build.rs` here for the commands and why cargo's own locks make
//!    parallel tests build once.
//!
//! Linkage matters only where nodes may not share the runner's libraries ([`Linkage::Static`]);
//! a dynamically linked binary found first is fine for `netns` and `local`.

pub(crate) mod build;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::backend::elf::{ElfLinkage, elf_linkage};
use crate::{Error, Result};

/// The version every workspace binary must have to serve this library: the library's own (they
/// are released together; the agent's protocol and the adapters' options change without notice
/// between versions).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The target triple of static builds: node containers and machines run this kernel's ABI.
pub(crate) const TARGET: &str = "x86_64-unknown-linux-gnu";

/// What the place a binary runs needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Linkage {
    /// Anything that runs on this host (`netns`, `local`: nodes share the runner's files).
    Any,
    /// Statically linked: it runs in any container or machine with this kernel (`docker`,
    /// `ec2`, `hosts`).
    Static,
}

/// One binary of this workspace, obtained at [`VERSION`] by [`WorkspaceBinary::obtain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkspaceBinary {
    /// Its cargo package (`chaos-agent`, `chaos-adapters`): what `cargo install` fetches.
    pub package: &'static str,
    /// The binary's name (`chaos-agent`, `chaos-adapter-postgres`); `<bin> --version` prints
    /// `<bin> <version>`.
    pub bin: &'static str,
    /// The package's directory in the workspace (`agent`, `adapters`).
    pub dir: &'static str,
    /// The workspace directories of the crates it is built from (its own included): a binary
    /// older than any of their sources is stale.
    pub sources: &'static [&'static str],
    /// The first part of its cache's name (`agent`, `adapters`): binaries of one package share a
    /// cache, so their common dependencies build once.
    pub cache: &'static str,
}

/// The agent every backend starts on its nodes.
pub const AGENT: WorkspaceBinary = WorkspaceBinary {
    package: "chaos-agent",
    bin: "chaos-agent",
    dir: "agent",
    sources: &["agent", "proto", "faults"],
    cache: "agent",
};

/// A client adapter of the `chaos-adapters` package.
const fn adapter(bin: &'static str) -> WorkspaceBinary {
    WorkspaceBinary {
        package: "chaos-adapters",
        bin,
        dir: "adapters",
        sources: &["adapters", "check"],
        cache: "adapters",
    }
}

/// The client adapters shipped with chaos (`docs/adapters.md`), which a scenario names in
/// `[[setup.ship]] builtin`.
pub const BUILTIN_ADAPTERS: [WorkspaceBinary; 4] = [
    adapter("chaos-adapter-echo"),
    adapter("chaos-adapter-redis"),
    adapter("chaos-adapter-postgres"),
    adapter("chaos-adapter-zookeeper"),
];

/// The built-in adapter named `name`, if there is one.
pub fn builtin_adapter(name: &str) -> Option<WorkspaceBinary> {
    BUILTIN_ADAPTERS.iter().copied().find(|a| a.bin == name)
}

/// The names of [`BUILTIN_ADAPTERS`], for messages (`a, b, c`).
pub fn builtin_adapter_names() -> String {
    BUILTIN_ADAPTERS.map(|a| a.bin).join(", ")
}

pub(crate) fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What each binary was found or built as in this process, by binary and linkage: each is
/// looked for (and built) once.
type Cells = HashMap<(&'static str, Linkage), Arc<tokio::sync::OnceCell<PathBuf>>>;
static CELLS: Mutex<Option<Cells>> = Mutex::new(None);

impl WorkspaceBinary {
    /// The variable naming this binary explicitly: its name in capitals, `-` as `_`, then
    /// `_BIN` (`CHAOS_AGENT_BIN`, `CHAOS_ADAPTER_POSTGRES_BIN`).
    pub fn env_var(&self) -> String {
        format!("{}_BIN", self.bin.to_ascii_uppercase().replace('-', "_"))
    }

    /// `the chaos-agent binary`, for messages.
    fn what(&self) -> String {
        format!("the {} binary", self.bin)
    }

    /// The binary for `linkage`, at [`VERSION`]: found (see the [module documentation](self))
    /// or, when none is, built once into the cache. The first build takes minutes; later calls,
    /// in this process or any other, find it in about a millisecond. Errors are one line saying
    /// what to run by hand.
    pub async fn obtain(&self, linkage: Linkage) -> Result<PathBuf> {
        if let Some(path) = self.explicit(linkage)? {
            return Ok(path);
        }
        let cell = CELLS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_default()
            .entry((self.bin, linkage))
            .or_default()
            .clone();
        let this = *self;
        cell.get_or_try_init(|| async move {
            let found = tokio::task::spawn_blocking(move || this.search(linkage))
                .await
                .map_err(|e| Error::invalid(this.what(), format!("the search task failed: {e}")))?;
            match found {
                Some(path) => Ok(path),
                None => this.build().await,
            }
        })
        .await
        .cloned()
    }

    /// The binary when one is already on disk (no build): its variable, else the search of the
    /// [module documentation](self). Fails, saying how to get one, when there is none.
    pub fn find(&self) -> Result<PathBuf> {
        if let Some(path) = self.explicit(Linkage::Any)? {
            return Ok(path);
        }
        self.search(Linkage::Any).ok_or_else(|| {
            Error::invalid(
                self.what(),
                format!(
                    "none of version {VERSION} is built yet; {}",
                    self.manual_command()
                ),
            )
        })
    }

    /// Whether the binary is at hand or can be built here: `Err` is one line saying what to do.
    pub fn obtainable(&self) -> Result<(), String> {
        if self.explicit(Linkage::Any).map_err(|e| e.to_string())?.is_some()
            || self.search(Linkage::Any).is_some()
        {
            return Ok(());
        }
        self.plan().map(drop).map_err(|e| e.to_string())
    }

    /// Its variable, checked: `None` when unset, or set to a dynamically linked binary while a
    /// static one is needed (passed over, saying so in the log, so the search finds a static
    /// one).
    fn explicit(&self, linkage: Linkage) -> Result<Option<PathBuf>> {
        let var = self.env_var();
        let Some(path) = std::env::var_os(&var).map(PathBuf::from) else {
            return Ok(None);
        };
        let what = || format!("{var}={}", path.display());
        if !is_executable(&path) {
            return Err(Error::invalid(
                what(),
                format!("not an executable file; unset it to let chaos build {}", self.bin),
            ));
        }
        if linkage == Linkage::Static {
            match elf_linkage(&path)? {
                ElfLinkage::Static => {}
                ElfLinkage::Dynamic => {
                    tracing::info!(
                        "{} is dynamically linked, which a container cannot run; looking for a static {}",
                        what(),
                        self.bin
                    );
                    return Ok(None);
                }
                ElfLinkage::NotElf64 => {
                    return Err(Error::invalid(
                        what(),
                        format!("not an ELF64 executable; a container needs a static {}", self.bin),
                    ));
                }
            }
        }
        self.version_matches(&path)
            .map_err(|message| Error::invalid(what(), message))?;
        Ok(Some(path))
    }

    /// Looks on disk, without building: every candidate of the [module documentation](self)
    /// that runs, has the right linkage and version and is not older than its sources.
    fn search(&self, linkage: Linkage) -> Option<PathBuf> {
        let sources = self.sources_root();
        let newest_source = sources.as_deref().and_then(|root| self.newest_source(root));
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
            candidates.extend(dirs.map(|d| d.join(self.bin)));
        }
        for target in build::target_dirs(sources.as_deref()) {
            candidates.extend(self.static_candidates(&target));
        }
        candidates.push(self.cached_binary());
        if linkage == Linkage::Any
            && let Some(path) = std::env::var_os("PATH")
        {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join(self.bin)));
        }
        candidates.into_iter().find(|path| {
            if !is_executable(path) || !linkage_ok(path) {
                return false;
            }
            if !fresh(path) {
                tracing::debug!(binary = %path.display(), "passed over: older than its sources");
                return false;
            }
            match self.version_matches(path) {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!(binary = %path.display(), "passed over: {why}");
                    false
                }
            }
        })
    }

    /// Where a statically linked build by hand lands under the cargo target directory `target`.
    pub fn static_candidates(&self, target: &Path) -> [PathBuf; 2] {
        [
            target.join(TARGET).join("release").join(self.bin),
            target.join(TARGET).join("debug").join(self.bin),
        ]
    }

    /// Checks that the binary at `path` is [`VERSION`], asking it (`<bin> --version` prints
    /// `<bin> <version>`). Each path is asked once per process; `Err` says both versions and the
    /// fix.
    pub fn version_matches(&self, path: &Path) -> Result<(), String> {
        /// The answers so far, by path and modification time (a rebuilt binary is asked again).
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
        let answer = self.ask_version(path);
        ASKED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_default()
            .insert(key, answer.clone());
        answer
    }

    fn ask_version(&self, path: &Path) -> Result<(), String> {
        let bin = self.bin;
        let output = std::process::Command::new(path)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `{} --version`: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = text
            .trim()
            .strip_prefix(bin)
            .map(str::trim)
            .filter(|v| output.status.success() && !v.is_empty() && !v.contains(char::is_whitespace));
        match version {
            Some(v) if v == VERSION => Ok(()),
            Some(v) => Err(format!(
                "this is {bin} {v}, but the chaos library is {VERSION} and needs {} of the same \
                 version; unset {} to let chaos build it, or point it at a {bin} {VERSION}",
                self.article(),
                self.env_var()
            )),
            None => Err(format!(
                "`{} --version` did not print `{bin} <version>` (it printed {:?}); is it a {bin}?",
                path.display(),
                text.trim()
            )),
        }
    }

    /// `an agent`, `an adapter`: what it is, for messages.
    fn article(&self) -> &'static str {
        if self.package == AGENT.package {
            "an agent"
        } else {
            "an adapter"
        }
    }

    /// The newest modification time among its sources under the source tree `root`: the crates
    /// of [`WorkspaceBinary::sources`]. About a millisecond, so a fresh binary costs no cargo run
    /// at all. The workspace manifest and lock are left out: editing them seldom changes the
    /// binary, and cargo then leaves it untouched, which would make it look stale for good (the
    /// version, the part of the manifest that matters, is checked by asking the binary).
    pub(crate) fn newest_source(&self, root: &Path) -> Option<SystemTime> {
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
        for krate in self.sources {
            walk(&root.join(krate).join("src"), &mut newest);
            newest = newest.max(mtime(&root.join(krate).join("Cargo.toml")));
        }
        newest
    }
}

/// Modification time of `path`, if it exists.
pub(crate) fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests;
