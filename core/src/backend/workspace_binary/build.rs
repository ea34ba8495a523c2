//! Building a workspace binary once into its per-version cache.
//!
//! The build is always the statically linked release binary (`RUSTFLAGS=-C
//! target-feature=+crt-static`, `--target x86_64-unknown-linux-gnu`, no line tables: the agent
//! is 15 MB instead of 50 MB, copied into every image), because it serves every backend:
//!
//! * sources at hand (this crate in its workspace, or a path or git dependency, whose checkout
//!   cargo keeps whole): `cargo build --release --manifest-path <root>/<dir>/Cargo.toml --bin
//!   <bin>`, run in `<root>` so the workspace's own lock and config apply;
//! * a registry download (only this crate's files): `cargo install <package> --bin <bin>
//!   --version =<version> --locked --root <cache>`, run where the caller runs so its source
//!   replacement (vendoring, mirrors) applies.
//!
//! Both use `<cache>/target` as their target directory — never the caller's, so the build never
//! waits on or invalidates the user's own — and cargo's lock on it (and on the install root)
//! serializes concurrent callers: parallel test processes run one build, and the others wait
//! for it, then find the work done in about a second. Within a process a `OnceCell` per binary
//! and linkage asks once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{TARGET, VERSION, WorkspaceBinary};
use crate::backend::elf::{ElfLinkage, elf_linkage};
use crate::{Error, Result};

/// Bound on one build (the agent's first build takes 2–3 minutes on 2 cores, more when cargo
/// must first download its dependencies or another build holds the machine).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// How many lines of cargo's output a failed build error shows.
const BUILD_LOG_TAIL: usize = 40;

/// The RUSTFLAGS of the static build.
const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// 32-bit FNV-1a: a short name for a path that stays the same across toolchains (unlike std's
/// hasher), so a cache survives a compiler update.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0x811c_9dc5, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// The cargo to build with: `$CARGO` (set when running under cargo), else `cargo` on `PATH`.
fn find_cargo() -> Option<PathBuf> {
    if let Some(cargo) = std::env::var_os("CARGO").map(PathBuf::from)
        && cargo.is_file()
    {
        return Some(cargo);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("cargo"))
        .find(|p| p.is_file())
}

/// Every cargo target directory worth searching for a binary built by hand, without
/// duplicates: `$CARGO_TARGET_DIR`, the running executable's, the source tree's `target/`.
pub(crate) fn target_dirs(sources: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(std::path::absolute(PathBuf::from(dir)).unwrap_or_default());
    }
    // Tests run from target/<profile>/deps, the CLI from target/<profile>, examples from
    // target/<profile>/examples, all possibly under a target triple: the target directory is
    // the nearest ancestor cargo marked with CACHEDIR.TAG.
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe
            .ancestors()
            .skip(1)
            .take(4)
            .find(|d| d.join("CACHEDIR.TAG").is_file())
    {
        dirs.push(dir.to_path_buf());
    }
    if let Some(root) = sources {
        dirs.push(root.join("target"));
    }
    let mut seen = BTreeSet::new();
    dirs.retain(|d| !d.as_os_str().is_empty() && seen.insert(d.clone()));
    dirs
}

/// The command that builds (or installs) a binary here, with where it runs and what it makes.
pub(super) struct Plan {
    cargo: PathBuf,
    args: Vec<String>,
    dir: Option<PathBuf>,
    target_dir: PathBuf,
    binary: PathBuf,
}

impl Plan {
    /// The command as one shell line (what the user runs by hand when the automatic build fails).
    fn shown(&self) -> String {
        let cd = self
            .dir
            .as_ref()
            .map(|d| format!("cd {} && ", d.display()))
            .unwrap_or_default();
        format!(
            "{cd}CARGO_TARGET_DIR={} CARGO_PROFILE_RELEASE_DEBUG=false RUSTFLAGS='{STATIC_RUSTFLAGS}' {} {}",
            self.target_dir.display(),
            self.cargo.display(),
            self.args.join(" ")
        )
    }
}

impl WorkspaceBinary {
    /// The cache of this library's version for this binary's package:
    /// `$XDG_CACHE_HOME/chaos/<cache>-<version>`, else `$HOME/.cache/chaos/<cache>-<version>`,
    /// else under the temporary directory. Built from a source tree, the name also carries a
    /// hash of the tree's path (`agent-<version>-<hash>`): two checkouts of one version
    /// (branches, worktrees) may hold different binaries, and must not use each other's. Its
    /// `target/` is cargo's target directory for the build, `bin/` the install root's binaries;
    /// deleting it is always safe (the next use builds again).
    pub fn cache_dir(&self) -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        let name = match self.sources_root() {
            Some(root) => format!(
                "{}-{VERSION}-{:08x}",
                self.cache,
                fnv1a(root.as_os_str().as_encoded_bytes())
            ),
            None => format!("{}-{VERSION}", self.cache),
        };
        base.join("chaos").join(name)
    }

    /// Where the binary of [`WorkspaceBinary::cache_dir`] is once built.
    pub(super) fn cached_binary(&self) -> PathBuf {
        match self.sources_root() {
            Some(_) => self
                .cache_dir()
                .join("target")
                .join(TARGET)
                .join("release")
                .join(self.bin),
            None => self.cache_dir().join("bin").join(self.bin),
        }
    }

    /// The binary's source tree (the workspace holding its package and the crates it builds
    /// from) when this crate was compiled from one: its own workspace, or a path or git
    /// dependency. `None` for a registry download, which holds this crate alone.
    pub(crate) fn sources_root(&self) -> Option<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).ok()?;
        let declares = manifest.lines().any(|l| l.trim() == "[workspace]");
        (declares && root.join(self.dir).join("Cargo.toml").is_file()).then(|| root.to_path_buf())
    }

    /// What to run here to build the binary, or an error saying why nothing can be.
    pub(super) fn plan(&self) -> Result<Plan> {
        let bin = self.bin;
        let Some(cargo) = find_cargo() else {
            return Err(Error::invalid(
                self.what(),
                format!(
                    "none of version {VERSION} found and cargo is not on PATH to build one; \
                     install Rust (https://rustup.rs) or set {}=/path/to/{bin}",
                    self.env_var()
                ),
            ));
        };
        let target = ["--target", TARGET].map(String::from);
        let bin_arg = ["--bin", bin].map(String::from);
        let target_dir = self.cache_dir().join("target");
        Ok(match self.sources_root() {
            Some(root) => Plan {
                cargo,
                args: ["build", "--release", "--manifest-path"]
                    .map(String::from)
                    .into_iter()
                    .chain([root.join(self.dir).join("Cargo.toml").display().to_string()])
                    .chain(bin_arg)
                    .chain(target)
                    .collect(),
                dir: Some(root),
                target_dir,
                binary: self.cached_binary(),
            },
            None => Plan {
                cargo,
                args: ["install", self.package]
                    .map(String::from)
                    .into_iter()
                    .chain(bin_arg)
                    .chain(["--version".into(), format!("={VERSION}"), "--locked".into()])
                    .chain(["--root".into(), self.cache_dir().display().to_string()])
                    .chain(target)
                    .collect(),
                dir: None,
                target_dir,
                binary: self.cached_binary(),
            },
        })
    }

    /// The one command that builds the binary by hand, or says how to point chaos at one.
    pub fn manual_command(&self) -> String {
        match self.plan() {
            Ok(plan) => format!("build it with: {}", plan.shown()),
            Err(e) => e.to_string(),
        }
    }

    /// Builds the static binary into the cache, bounded, and returns it.
    pub(super) async fn build(&self) -> Result<PathBuf> {
        let bin = self.bin;
        let plan = self.plan()?;
        let shown = plan.shown();
        let fail = |message: String| Error::invalid(format!("building {}", self.what()), message);
        let target_dir = &plan.target_dir;
        std::fs::create_dir_all(target_dir)
            .map_err(|e| Error::io(format!("creating the cache {}", target_dir.display()), e))?;
        tracing::warn!(
            command = %shown,
            "building {bin} {VERSION} once into {} (minutes; later runs reuse it)",
            self.cache_dir().display()
        );
        let started = Instant::now();
        let mut command = tokio::process::Command::new(&plan.cargo);
        command
            .args(&plan.args)
            .env("CARGO_TARGET_DIR", target_dir)
            .env("RUSTFLAGS", STATIC_RUSTFLAGS)
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            // Under `cargo test` these describe the caller's build: the encoded flags would win
            // over RUSTFLAGS, and the jobserver belongs to the parent cargo.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_MAKEFLAGS")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = &plan.dir {
            command.current_dir(dir);
        }
        // What cargo sets for a running test or binary describes *that* package. Build scripts
        // (ring's) track CARGO_MANIFEST_DIR, so inheriting it made every call from a test
        // rebuild ring and everything above it (~2.5 minutes), and the next call from a shell
        // rebuild again.
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if CARGO_RUN_VARS.contains(&name) || CARGO_RUN_PREFIXES.iter().any(|p| name.starts_with(p)) {
                command.env_remove(name);
            }
        }
        let output = match tokio::time::timeout(BUILD_TIMEOUT, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(Error::io(format!("running {shown}"), e)),
            Err(_) => {
                return Err(fail(format!(
                    "not finished within {BUILD_TIMEOUT:?}; run it by hand to see why: {shown}"
                )));
            }
        };
        if !output.status.success() {
            let mut log = String::from_utf8_lossy(&output.stderr).into_owned();
            log.push_str(&String::from_utf8_lossy(&output.stdout));
            return Err(fail(format!(
                "{} (run it by hand to retry: {shown})\n{}",
                output.status,
                tail(&log, BUILD_LOG_TAIL)
            )));
        }
        let binary = plan.binary;
        if elf_linkage(&binary)? != ElfLinkage::Static {
            return Err(fail(format!(
                "{shown} produced {}, which is not statically linked (does a .cargo/config \
                 target.{TARGET}.rustflags override RUSTFLAGS?)",
                binary.display()
            )));
        }
        self.version_matches(&binary)
            .map_err(|why| fail(format!("{}: {why}", binary.display())))?;
        tracing::info!(binary = %binary.display(), elapsed = ?started.elapsed(), "{bin} ready");
        Ok(binary)
    }
}

/// Variables cargo sets for the process it runs (a test, `cargo run`), removed from the nested
/// build's environment; see [`build`].
const CARGO_RUN_VARS: [&str; 8] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// Prefixes of such variables (`CARGO_PKG_NAME`, `CARGO_BIN_EXE_chaos`, …).
const CARGO_RUN_PREFIXES: [&str; 2] = ["CARGO_PKG_", "CARGO_BIN_EXE_"];

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
