//! The statically linked agent for node images: found on disk or built with cargo.

#[allow(unused_imports)]
use super::*;

/// The discovered (or built) agent, so one process looks and builds once.
pub(super) static AGENT: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();

/// Finds a statically linked `chaos-agent`, building it when none is found and a workspace
/// and cargo are at hand. Errors say exactly how to build one by hand.
///
/// In order:
/// 1. `$CHAOS_AGENT_BIN` ([`AGENT_BIN_ENV`], the one variable every backend reads) when it names
///    a static ELF; a dynamically linked one (fine for `netns`) cannot run in a node image and
///    is passed over, saying so in the log; one that is not an ELF file is an error.
/// 2. The newest static binary among `<target>/x86_64-unknown-linux-gnu/{release,debug}/` and
///    `<target>/static-agent/x86_64-unknown-linux-gnu/release/`, for every `<target>` of
///    `$CARGO_TARGET_DIR`, the running executable's target directory and the workspace's
///    `target/` — provided it is newer than every source of the agent (`agent/`, `proto/`,
///    `faults/`, the workspace manifest and lock) when the workspace is at hand.
/// 3. Otherwise, in the workspace, `cargo build --release -p chaos-agent --target
///    x86_64-unknown-linux-gnu` with `RUSTFLAGS=-C target-feature=+crt-static` into
///    `<workspace>/target/static-agent`: a target directory of its own, so it never waits on
///    or invalidates the caller's build. Cargo's lock on that directory serializes concurrent
///    callers; the loser finds the work done and returns in about a second.
///
/// The staleness check is a walk over the sources' modification times (about a millisecond),
/// so a fresh agent costs no cargo run at all; when anything is newer, cargo decides. The
/// dynamically linked agent of a normal build is never used: it would not run in a
/// `FROM scratch` image.
pub async fn static_agent() -> Result<PathBuf> {
    if let Some(explicit) = std::env::var_os(AGENT_BIN_ENV) {
        let path = PathBuf::from(explicit);
        match is_static_elf(&path) {
            Ok(true) => return Ok(path),
            Ok(false) => tracing::info!(
                "{AGENT_BIN_ENV}={} is dynamically linked, which a node image cannot run; \
                 looking for a static agent",
                path.display()
            ),
            Err(e) => return Err(Error::backend("docker", format!("{AGENT_BIN_ENV}: {e}"))),
        }
    }
    AGENT.get_or_try_init(find_or_build_agent).await.cloned()
}

/// What to run by hand to get a static agent.
pub(super) fn manual_build_command() -> String {
    format!(
        "RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p chaos-agent --target \
         {AGENT_TARGET} (then it is found under target/{AGENT_TARGET}/release), or set \
         {AGENT_BIN_ENV}=/path/to/static/chaos-agent (a static agent serves every backend)"
    )
}

/// The agent's workspace, when this crate is used from its source tree: the parent of
/// `core/` whose manifest declares `[workspace]` and which holds `agent/`.
pub(super) fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).ok()?;
    let declares = manifest.lines().any(|l| l.trim() == "[workspace]");
    (declares && root.join("agent/Cargo.toml").is_file()).then(|| root.to_path_buf())
}

/// The cargo to build with: `$CARGO` (set when running under cargo), else `cargo` on `PATH`.
pub(super) fn find_cargo() -> Option<PathBuf> {
    if let Some(cargo) = std::env::var_os("CARGO").map(PathBuf::from)
        && cargo.is_file()
    {
        return Some(cargo);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("cargo"))
        .find(|p| p.is_file())
}

/// Every cargo target directory worth searching, without duplicates.
pub(super) fn target_dirs(workspace: Option<&Path>) -> Vec<PathBuf> {
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
    if let Some(ws) = workspace {
        dirs.push(ws.join("target"));
    }
    let mut seen = BTreeSet::new();
    dirs.retain(|d| !d.as_os_str().is_empty() && seen.insert(d.clone()));
    dirs
}

/// Where the build of [`static_agent`] puts its output.
pub(super) fn static_target_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("static-agent")
}

/// Every place a static agent may be, for `target`.
pub(super) fn agent_candidates(target: &Path) -> [PathBuf; 3] {
    [
        target.join(AGENT_TARGET).join("release/chaos-agent"),
        target.join(AGENT_TARGET).join("debug/chaos-agent"),
        target
            .join("static-agent")
            .join(AGENT_TARGET)
            .join("release/chaos-agent"),
    ]
}

/// Modification time of `path`, if it exists.
pub(super) fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest statically linked agent among `candidates`, with its modification time.
pub(super) fn newest_static(candidates: impl IntoIterator<Item = PathBuf>) -> Option<(PathBuf, SystemTime)> {
    candidates
        .into_iter()
        .filter_map(|p| Some((mtime(&p)?, p)))
        .filter(|(_, p)| matches!(elf_linkage(p), Ok(ElfLinkage::Static)))
        .max_by_key(|(t, _)| *t)
        .map(|(t, p)| (p, t))
}

/// The newest modification time among the agent's sources in `workspace`.
pub(super) fn newest_source(workspace: &Path) -> Option<SystemTime> {
    pub(super) fn walk(dir: &Path, newest: &mut Option<SystemTime>) {
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
        walk(&workspace.join(krate).join("src"), &mut newest);
        newest = newest.max(mtime(&workspace.join(krate).join("Cargo.toml")));
    }
    for file in ["Cargo.toml", "Cargo.lock"] {
        newest = newest.max(mtime(&workspace.join(file)));
    }
    newest
}

/// What [`static_agent`] decided after looking on disk.
pub(super) enum AgentSearch {
    /// A static agent at least as new as its sources.
    Found(PathBuf),
    /// Build in this workspace with this cargo.
    Build { workspace: PathBuf, cargo: PathBuf },
}

/// Looks for a usable agent; decides whether to build. Blocking (file system only).
pub(super) fn search_agent() -> Result<AgentSearch> {
    let workspace = workspace_root();
    let targets = target_dirs(workspace.as_deref());
    let newest = newest_static(targets.iter().flat_map(|t| agent_candidates(t)));
    let Some(workspace) = workspace else {
        return match newest {
            Some((path, _)) => Ok(AgentSearch::Found(path)),
            None => Err(Error::backend(
                "docker",
                format!(
                    "no statically linked chaos-agent found (looked under {}); build one with: {}",
                    display_list(&targets),
                    manual_build_command()
                ),
            )),
        };
    };
    let sources = newest_source(&workspace);
    match (newest, find_cargo()) {
        (Some((path, built)), _) if sources.is_none_or(|s| s <= built) => Ok(AgentSearch::Found(path)),
        (_, Some(cargo)) => Ok(AgentSearch::Build { workspace, cargo }),
        (Some((path, _)), None) => {
            tracing::warn!(
                agent = %path.display(),
                "the static chaos-agent is older than its sources and cargo is not found to rebuild it; using it anyway"
            );
            Ok(AgentSearch::Found(path))
        }
        (None, None) => Err(Error::backend(
            "docker",
            format!(
                "no statically linked chaos-agent found (looked under {}) and cargo is not on PATH \
                 to build one; build it with: {}",
                display_list(&targets),
                manual_build_command()
            ),
        )),
    }
}

/// `a, b, c` of paths.
pub(super) fn display_list(paths: &[PathBuf]) -> String {
    let names: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// Searches, and builds when needed; the body of [`static_agent`] after the explicit override.
pub(super) async fn find_or_build_agent() -> Result<PathBuf> {
    let search = tokio::task::spawn_blocking(search_agent)
        .await
        .map_err(|e| Error::backend("docker", format!("searching for the static agent: {e}")))??;
    match search {
        AgentSearch::Found(path) => Ok(path),
        AgentSearch::Build { workspace, cargo } => build_agent(&workspace, &cargo).await,
    }
}

/// Runs the static build of the agent in `workspace`, bounded, and returns the binary.
pub(super) async fn build_agent(workspace: &Path, cargo: &Path) -> Result<PathBuf> {
    let target_dir = static_target_dir(workspace);
    let args = [
        "build",
        "--release",
        "-p",
        "chaos-agent",
        "--bin",
        "chaos-agent",
        "--target",
        AGENT_TARGET,
    ];
    let shown = format!(
        "CARGO_TARGET_DIR={} CARGO_PROFILE_RELEASE_DEBUG=false RUSTFLAGS='-C target-feature=+crt-static' {} {}",
        target_dir.display(),
        cargo.display(),
        args.join(" ")
    );
    tracing::info!(
        command = %shown,
        "building a statically linked chaos-agent for the docker node image (the first build takes 2–3 minutes)"
    );
    let started = Instant::now();
    let mut command = tokio::process::Command::new(cargo);
    command
        .args(args)
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // No line tables: 15 MB instead of 50 MB, copied into every image and (for a user's
        // image) every container. Its own target dir, so this never rebuilds the caller's.
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
    // What cargo sets for a running test or binary describes *that* package. Build scripts
    // (ring's) track CARGO_MANIFEST_DIR, so inheriting it made every call from a test rebuild
    // ring and everything above it (~2.5 minutes), and the next call from a shell rebuild again.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if CARGO_RUN_VARS.contains(&name) || CARGO_RUN_PREFIXES.iter().any(|p| name.starts_with(p)) {
            command.env_remove(name);
        }
    }
    let output = match tokio::time::timeout(AGENT_BUILD_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(Error::io(format!("running {shown}"), e)),
        Err(_) => {
            return Err(Error::backend(
                "docker",
                format!(
                    "building the static chaos-agent did not finish within {AGENT_BUILD_TIMEOUT:?}; \
                     run it by hand to see why: {shown}"
                ),
            ));
        }
    };
    if !output.status.success() {
        let mut log = String::from_utf8_lossy(&output.stderr).into_owned();
        log.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(Error::backend(
            "docker",
            format!(
                "building the static chaos-agent failed ({}): {shown}\n{}",
                output.status,
                tail(&log, BUILD_LOG_TAIL)
            ),
        ));
    }
    let binary = target_dir.join(AGENT_TARGET).join("release/chaos-agent");
    match elf_linkage(&binary)? {
        ElfLinkage::Static => {
            tracing::info!(agent = %binary.display(), elapsed = ?started.elapsed(), "static chaos-agent ready");
            Ok(binary)
        }
        _ => Err(Error::backend(
            "docker",
            format!(
                "{shown} produced {}, which is not statically linked (is RUSTFLAGS overridden by a \
                 .cargo/config build.rustflags?)",
                binary.display()
            ),
        )),
    }
}

/// Variables cargo sets for the process it runs (a test, `cargo run`), removed from the nested
/// build's environment; see [`build_agent`].
pub(super) const CARGO_RUN_VARS: [&str; 8] = [
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
pub(super) const CARGO_RUN_PREFIXES: [&str; 2] = ["CARGO_PKG_", "CARGO_BIN_EXE_"];

/// The last `lines` lines of `text`.
pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
