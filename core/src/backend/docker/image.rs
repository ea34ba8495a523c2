//! Node images without a registry: the statically linked agent (found or built), and the
//! default node image built locally from it, cached by content hash.
//!
//! The default image is `FROM scratch` holding:
//! - `/chaos/chaos-agent` (the static agent; [`AGENT_PATH`]), the entrypoint;
//! - `/bin/busybox` (static, from the host's busybox-static) with a symlink per applet in `/bin`
//!   (so `sh`, `cat`, `sleep`, … work) and `/usr/bin/env`;
//! - the host's glibc runtime (dynamic loader, libc, libm, libpthread, libdl, librt, libresolv
//!   where present) at their host paths, so binaries built on or shipped from the runner host
//!   that link only glibc run unchanged (etcd from Debian does);
//! - every file of `include` at its host path, with the shared libraries `ldd` lists for it;
//!   a directory of `include` with everything under it (links kept as links);
//! - `/tmp` (1777), `/chaos/root`, `/root`, `/etc/passwd` + `/etc/group` with root.
//!
//! The image has no `/etc/ld.so.cache`, so a library `ldd` finds outside the loader's default
//! directories (`/lib/x86_64-linux-gnu`, `/usr/lib/x86_64-linux-gnu`, `/lib`, `/usr/lib`)
//! puts its directory on the image's `LD_LIBRARY_PATH`.
//!
//! Its tag is `chaos-node:<first 16 hex of the SHA-256 of everything above>` ([`IMAGE_REPO`]),
//! labelled [`super::LABEL_IMAGE`]`=node`; an existing tag is reused without building.
//!
//! Nothing is ever pulled (there may be no registry). The image is written by hand in the
//! `docker save` format and handed to the daemon's load endpoint (bollard's `import_image`)
//! rather than built from a Dockerfile; see [`node_image`] for why.
//!
//! An earlier file never loses to a later one: the agent, then `include` and its libraries, then
//! the glibc runtime, then busybox and its applets, then `/etc` and the empty directories. So an
//! included `/bin/ls` is kept and busybox's `ls` applet is not linked over it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use bollard::Docker;
use bollard::query_parameters::ImportImageOptions;
use futures_util::StreamExt;
use ring::digest::{Context, SHA256};

use crate::{Error, Result};

/// Where the agent binary lives inside every node container.
pub const AGENT_PATH: &str = "/chaos/chaos-agent";

/// Environment variable naming a statically linked agent binary explicitly.
pub const STATIC_AGENT_ENV: &str = "CHAOS_AGENT_STATIC_BIN";

/// Repository part of the node image's reference (`chaos-node:<16 hex>`).
pub const IMAGE_REPO: &str = "chaos-node";

/// Value of [`super::LABEL_IMAGE`] on the default node image.
pub const IMAGE_KIND_NODE: &str = "node";

/// The static busybox the image's shell and tools come from (Debian's `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

/// The working directory of every process in a node container (empty, owned by root).
pub const NODE_WORKDIR: &str = "/chaos/root";

/// `PATH` in the node image: the usual one, so included binaries and applets are found.
pub const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The target triple the static agent is built for: the image runs on this host's kernel.
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Bound on building the static agent (the first build takes 2–3 minutes on 2 cores).
const AGENT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// Bound on handing a built image to the daemon.
const IMAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// How many lines of cargo's output a failed build error shows.
const BUILD_LOG_TAIL: usize = 40;

/// Modification time of every file in the image layer. Fixed, as are owners, so the layer and
/// hence the image ID are a function of the content alone.
const LAYER_MTIME: u64 = 0;

/// Creation time written into the image config: the Unix epoch, for the same reason (as
/// reproducible-image tools like ko and Bazel's rules do). `docker images` shows it as old.
const IMAGE_CREATED: &str = "1970-01-01T00:00:00Z";

/// Directories the glibc loader searches without `/etc/ld.so.cache` (which the image lacks).
/// A library `ldd` finds elsewhere gets its directory into the image's `LD_LIBRARY_PATH`.
const LOADER_SYSTEM_DIRS: [&str; 4] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
];

/// The glibc runtime libraries copied into every image, where the host has them.
const GLIBC_LIBS: [&str; 6] = [
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libresolv.so.2",
];

/// The x86-64 glibc dynamic loader's fixed path (every dynamic executable names it).
const GLIBC_LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// Where to look for the glibc libraries, first match wins.
const GLIBC_DIRS: [&str; 4] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
];

// ---------------------------------------------------------------------------------------------
// ELF

/// Whether `path` is a statically linked ELF64 executable: it has no `PT_INTERP` program
/// header, so it needs no dynamic loader (`static-pie` included). `Ok(false)` for a dynamically
/// linked ELF64 file; an error for anything else (missing, unreadable, not ELF64), naming the
/// file.
pub fn is_static_elf(path: &Path) -> Result<bool> {
    match elf_linkage(path)? {
        ElfLinkage::Static => Ok(true),
        ElfLinkage::Dynamic => Ok(false),
        ElfLinkage::NotElf64 => Err(Error::invalid(
            path.display().to_string(),
            "not an ELF64 executable",
        )),
    }
}

/// What the ELF reader tells about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ElfLinkage {
    /// ELF64 without `PT_INTERP`.
    Static,
    /// ELF64 with `PT_INTERP`: needs the dynamic loader it names.
    Dynamic,
    /// Not an ELF64 file (a script, data, a 32-bit binary…).
    NotElf64,
}

/// Reads the ELF64 header and program headers of `path` (a few hundred bytes) and reports
/// whether there is a `PT_INTERP` entry.
fn elf_linkage(path: &Path) -> Result<ElfLinkage> {
    let io_err = |e| Error::io(format!("reading {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    // Program headers sit right after the 64-byte header in every linker's output, so the
    // first 4 KiB almost always hold them; a table beyond is read with a seek below.
    let mut head = Vec::with_capacity(4096);
    file.by_ref().take(4096).read_to_end(&mut head).map_err(io_err)?;
    let Some(header) = Elf64Header::parse(&head) else {
        return Ok(ElfLinkage::NotElf64);
    };
    let table_len = usize::from(header.phentsize) * usize::from(header.phnum);
    let table_end = header.phoff.checked_add(table_len as u64);
    let table = match table_end {
        Some(end) if end <= head.len() as u64 => head[header.phoff as usize..end as usize].to_vec(),
        Some(_) => {
            use std::io::{Seek, SeekFrom};
            let mut table = vec![0; table_len];
            file.seek(SeekFrom::Start(header.phoff)).map_err(io_err)?;
            file.read_exact(&mut table).map_err(io_err)?;
            table
        }
        None => return Ok(ElfLinkage::NotElf64),
    };
    Ok(header.linkage(&table))
}

/// The fields of an ELF64 file header the linkage check needs.
#[derive(Debug)]
struct Elf64Header {
    /// Byte order: true for little-endian (`ELFDATA2LSB`).
    little: bool,
    /// File offset of the program header table.
    phoff: u64,
    /// Size of one program header.
    phentsize: u16,
    /// Number of program headers.
    phnum: u16,
}

impl Elf64Header {
    /// `PT_INTERP`: the program header naming the dynamic loader.
    const PT_INTERP: u32 = 3;
    /// Size of an ELF64 program header.
    const PHENT_SIZE: u16 = 56;

    /// Parses the first 64 bytes; `None` unless they are an ELF64 header with a sane
    /// program header size.
    fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 64 || bytes[..4] != *b"\x7fELF" || bytes[4] != 2 {
            return None;
        }
        let little = match bytes[5] {
            1 => true,
            2 => false,
            _ => return None,
        };
        let u16_at = |at: usize| {
            let b = [bytes[at], bytes[at + 1]];
            if little {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            }
        };
        let mut b8 = [0; 8];
        b8.copy_from_slice(&bytes[0x20..0x28]);
        let phoff = if little {
            u64::from_le_bytes(b8)
        } else {
            u64::from_be_bytes(b8)
        };
        let header = Self {
            little,
            phoff,
            phentsize: u16_at(0x36),
            phnum: u16_at(0x38),
        };
        // An ELF64 program header is 56 bytes. Insisting on it also bounds the table a
        // malformed file can make us read (65535 × 56 bytes).
        (header.phnum == 0 || header.phentsize == Self::PHENT_SIZE).then_some(header)
    }

    /// Scans the program header `table` for `PT_INTERP`.
    fn linkage(&self, table: &[u8]) -> ElfLinkage {
        if self.phnum == 0 {
            return ElfLinkage::Static;
        }
        let interp = table.chunks_exact(usize::from(self.phentsize)).any(|ph| {
            let b = [ph[0], ph[1], ph[2], ph[3]];
            let p_type = if self.little {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            };
            p_type == Self::PT_INTERP
        });
        if interp {
            ElfLinkage::Dynamic
        } else {
            ElfLinkage::Static
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The static agent

/// The discovered (or built) agent, so one process looks and builds once.
static AGENT: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();

/// Finds a statically linked `chaos-agent`, building it when none is found and a workspace
/// and cargo are at hand. Errors say exactly how to build one by hand.
///
/// In order:
/// 1. `$CHAOS_AGENT_STATIC_BIN` ([`STATIC_AGENT_ENV`]): used as is; it must exist and be a
///    static ELF, else this is an error (an explicit choice is never silently replaced).
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
    if let Some(explicit) = std::env::var_os(STATIC_AGENT_ENV) {
        let path = PathBuf::from(explicit);
        return match is_static_elf(&path) {
            Ok(true) => Ok(path),
            Ok(false) => Err(Error::backend(
                "docker",
                format!(
                    "{STATIC_AGENT_ENV}={} is dynamically linked; it must be static, built with: {}",
                    path.display(),
                    manual_build_command()
                ),
            )),
            Err(e) => Err(Error::backend("docker", format!("{STATIC_AGENT_ENV}: {e}"))),
        };
    }
    AGENT.get_or_try_init(find_or_build_agent).await.cloned()
}

/// What to run by hand to get a static agent.
fn manual_build_command() -> String {
    format!(
        "RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p chaos-agent --target \
         {AGENT_TARGET} (then it is found under target/{AGENT_TARGET}/release), or set \
         {STATIC_AGENT_ENV}=/path/to/static/chaos-agent"
    )
}

/// The agent's workspace, when this crate is used from its source tree: the parent of
/// `core/` whose manifest declares `[workspace]` and which holds `agent/`.
fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).ok()?;
    let declares = manifest.lines().any(|l| l.trim() == "[workspace]");
    (declares && root.join("agent/Cargo.toml").is_file()).then(|| root.to_path_buf())
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

/// Every cargo target directory worth searching, without duplicates.
fn target_dirs(workspace: Option<&Path>) -> Vec<PathBuf> {
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
fn static_target_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("static-agent")
}

/// Every place a static agent may be, for `target`.
fn agent_candidates(target: &Path) -> [PathBuf; 3] {
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
fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest statically linked agent among `candidates`, with its modification time.
fn newest_static(candidates: impl IntoIterator<Item = PathBuf>) -> Option<(PathBuf, SystemTime)> {
    candidates
        .into_iter()
        .filter_map(|p| Some((mtime(&p)?, p)))
        .filter(|(_, p)| matches!(elf_linkage(p), Ok(ElfLinkage::Static)))
        .max_by_key(|(t, _)| *t)
        .map(|(t, p)| (p, t))
}

/// The newest modification time among the agent's sources in `workspace`.
fn newest_source(workspace: &Path) -> Option<SystemTime> {
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
        walk(&workspace.join(krate).join("src"), &mut newest);
        newest = newest.max(mtime(&workspace.join(krate).join("Cargo.toml")));
    }
    for file in ["Cargo.toml", "Cargo.lock"] {
        newest = newest.max(mtime(&workspace.join(file)));
    }
    newest
}

/// What [`static_agent`] decided after looking on disk.
enum AgentSearch {
    /// A static agent at least as new as its sources.
    Found(PathBuf),
    /// Build in this workspace with this cargo.
    Build { workspace: PathBuf, cargo: PathBuf },
}

/// Looks for a usable agent; decides whether to build. Blocking (file system only).
fn search_agent() -> Result<AgentSearch> {
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
fn display_list(paths: &[PathBuf]) -> String {
    let names: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// Searches, and builds when needed; the body of [`static_agent`] after the explicit override.
async fn find_or_build_agent() -> Result<PathBuf> {
    let search = tokio::task::spawn_blocking(search_agent)
        .await
        .map_err(|e| Error::backend("docker", format!("searching for the static agent: {e}")))??;
    match search {
        AgentSearch::Found(path) => Ok(path),
        AgentSearch::Build { workspace, cargo } => build_agent(&workspace, &cargo).await,
    }
}

/// Runs the static build of the agent in `workspace`, bounded, and returns the binary.
async fn build_agent(workspace: &Path, cargo: &Path) -> Result<PathBuf> {
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
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// ldd

/// The shared libraries of `ldd`'s `output`: every `name => /path` and the absolute loader
/// line, in order. Libraries ldd could not find are the error, by name. Static executables and
/// non-executables (`not a dynamic executable`, `statically linked`) have none.
fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, Vec<String>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for line in output.lines().map(str::trim) {
        // Drop the load address: `/path (0x...)`.
        let strip = |s: &str| s.split(" (0x").next().unwrap_or_default().trim().to_string();
        if let Some((name, target)) = line.split_once("=>") {
            let target = target.trim();
            if target.starts_with("not found") {
                missing.push(name.trim().to_string());
            } else if target.starts_with('/') {
                found.push(PathBuf::from(strip(target)));
            }
            // `linux-vdso.so.1 =>  (0x…)` (older glibc): in the kernel, nothing to copy.
        } else if line.starts_with('/') {
            found.push(PathBuf::from(strip(line)));
        }
    }
    if missing.is_empty() {
        Ok(found)
    } else {
        Err(missing)
    }
}

/// The shared libraries `file` needs on this host (none unless it is a dynamic ELF file).
fn shared_libraries(file: &Path) -> Result<Vec<PathBuf>> {
    if elf_linkage(file)? == ElfLinkage::Static {
        return Ok(Vec::new());
    }
    // Scripts and data have no libraries, and ldd only says so; 32-bit or foreign ELF files
    // fall through to ldd too, which knows more than the ELF64 reader.
    let mut head = [0u8; 4];
    let is_elf = std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == *b"\x7fELF");
    if !is_elf {
        return Ok(Vec::new());
    }
    let key = FileKey::of(file)?;
    if let Some(libs) = memo_get(&LDD_MEMO, file, &key) {
        return Ok(libs);
    }
    let output = std::process::Command::new("ldd")
        .arg(file)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Error::io(
                format!("running ldd {} (is libc-bin installed?)", file.display()),
                e,
            )
        })?;
    // ldd exits non-zero for "not a dynamic executable", on stderr: parse both, judge by text.
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let libs = parse_ldd(&text).map_err(|missing| {
        Error::backend(
            "docker",
            format!(
                "include {}: needs shared libraries this host lacks: {}; install them or leave the \
                 file out",
                file.display(),
                missing.join(", ")
            ),
        )
    })?;
    memo_put(&LDD_MEMO, file, key, libs.clone());
    Ok(libs)
}

// ---------------------------------------------------------------------------------------------
// Memos: a file's digest, libraries and applets are computed once per process and content
// version, so asking for a cached image again costs a few stats and one daemon round trip.
// Digests are also kept on disk (see `DIGEST_CACHE_FILE`), since hashing the agent and the
// included binaries (~75 MB) is most of the cost of a process's first call (~150 ms).

/// Identifies one version of a file's content without reading it. The change time is in it
/// because no write can leave it untouched (unlike the modification time, which `touch` sets).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    /// The key of `path`'s content (following symlinks).
    fn of(path: &Path) -> Result<Self> {
        let m = std::fs::metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// A memo from path to a value computed from that path's content.
type Memo<T> = Mutex<Option<HashMap<PathBuf, (FileKey, T)>>>;

/// SHA-256 of files' contents.
static DIGEST_MEMO: Memo<[u8; 32]> = Mutex::new(None);
/// `ldd` results.
static LDD_MEMO: Memo<Vec<PathBuf>> = Mutex::new(None);
/// `busybox --list` results.
static APPLET_MEMO: Memo<Vec<String>> = Mutex::new(None);

fn memo_get<T: Clone>(memo: &Memo<T>, path: &Path, key: &FileKey) -> Option<T> {
    let guard = memo.lock().unwrap_or_else(|e| e.into_inner());
    let (k, v) = guard.as_ref()?.get(path)?;
    (k == key).then(|| v.clone())
}

fn memo_put<T>(memo: &Memo<T>, path: &Path, key: FileKey, value: T) {
    let mut guard = memo.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .get_or_insert_with(HashMap::new)
        .insert(path.to_path_buf(), (key, value));
}

/// Set when a digest was computed since the digest cache was last saved.
static DIGESTS_CHANGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The digest cache's file under the user's cache directory.
const DIGEST_CACHE_FILE: &str = "chaos/file-digests.json";

/// The digest cache as stored: path → content version and SHA-256 (hex).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct DiskDigests {
    /// Format version; a file of another version is ignored.
    version: u32,
    /// The digests.
    files: BTreeMap<PathBuf, (FileKey, String)>,
}

impl DiskDigests {
    /// The format this code writes.
    const VERSION: u32 = 1;
}

/// `$XDG_CACHE_HOME/chaos/file-digests.json`, else under `$HOME/.cache`.
fn digest_cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| Some(PathBuf::from(std::env::var_os("HOME")?).join(".cache")))?;
    Some(base.join(DIGEST_CACHE_FILE))
}

/// Fills the digest memo from the cache at `cache`, once per process. Best effort: a missing
/// or unreadable cache only means hashing again.
fn load_digest_cache(cache: &Path) {
    let mut guard = DIGEST_MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_some() {
        return;
    }
    let memo = guard.get_or_insert_with(HashMap::new);
    let Ok(text) = std::fs::read(cache) else { return };
    let Ok(stored) = serde_json::from_slice::<DiskDigests>(&text) else {
        tracing::debug!(cache = %cache.display(), "ignoring an unreadable digest cache");
        return;
    };
    if stored.version != DiskDigests::VERSION {
        return;
    }
    for (path, (key, hex_digest)) in stored.files {
        if let Some(digest) = from_hex(&hex_digest) {
            memo.entry(path).or_insert((key, digest));
        }
    }
}

/// Writes the digest memo to the cache at `cache` (0600, by rename, so concurrent writers and
/// readers never see half a file), keeping only entries that still describe their file.
/// Best effort, like the load.
fn save_digest_cache(cache: &Path) {
    if !DIGESTS_CHANGED.swap(false, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let entries: Vec<(PathBuf, FileKey, [u8; 32])> = {
        let guard = DIGEST_MEMO.lock().unwrap_or_else(|e| e.into_inner());
        let Some(memo) = guard.as_ref() else { return };
        memo.iter()
            .map(|(p, (k, d))| (p.clone(), k.clone(), *d))
            .collect()
    };
    let files = entries
        .into_iter()
        .filter(|(path, key, _)| FileKey::of(path).is_ok_and(|now| now == *key))
        .map(|(path, key, digest)| (path, (key, hex(&digest))))
        .collect();
    let stored = DiskDigests {
        version: DiskDigests::VERSION,
        files,
    };
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = cache.parent().ok_or(std::io::ErrorKind::InvalidInput)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let temp = cache.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&serde_json::to_vec(&stored)?)?;
        drop(file);
        std::fs::rename(&temp, cache).inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })
    };
    if let Err(e) = write() {
        tracing::debug!(cache = %cache.display(), error = %e, "could not save the digest cache");
    }
}

/// Parses 64 hex digits.
fn from_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of `path`'s content, memoized per content version.
fn file_digest(path: &Path) -> Result<[u8; 32]> {
    let key = FileKey::of(path)?;
    if let Some(d) = memo_get(&DIGEST_MEMO, path, &key) {
        return Ok(d);
    }
    let io_err = |e| Error::io(format!("reading {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let digest = to_array(ctx.finish().as_ref());
    memo_put(&DIGEST_MEMO, path, key, digest);
    DIGESTS_CHANGED.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(digest)
}

/// A SHA-256 output as an array.
fn to_array(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(bytes);
    out
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// SHA-256 of `bytes`.
fn sha256(bytes: &[u8]) -> [u8; 32] {
    to_array(ring::digest::digest(&SHA256, bytes).as_ref())
}

/// The applets of the static busybox at [`BUSYBOX`], by running `busybox --list`.
fn busybox_applets() -> Result<Vec<String>> {
    let missing = || {
        Error::backend(
            "docker",
            format!("the node image needs a static busybox at {BUSYBOX}: apt-get install busybox-static"),
        )
    };
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        return Err(missing());
    }
    match elf_linkage(busybox)? {
        ElfLinkage::Static => {}
        _ => {
            return Err(Error::backend(
                "docker",
                format!(
                    "{BUSYBOX} is dynamically linked and would not run in the node image: \
                     apt-get install busybox-static"
                ),
            ));
        }
    }
    let key = FileKey::of(busybox)?;
    if let Some(applets) = memo_get(&APPLET_MEMO, busybox, &key) {
        return Ok(applets);
    }
    let output = std::process::Command::new(busybox)
        .arg("--list")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("running {BUSYBOX} --list"), e))?;
    if !output.status.success() {
        return Err(Error::backend(
            "docker",
            format!(
                "{BUSYBOX} --list failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    let applets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        // An applet name becomes a file name in /bin: refuse anything that is not one.
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "." && *a != ".." && *a != "busybox")
        .map(str::to_string)
        .collect();
    memo_put(&APPLET_MEMO, busybox, key, applets.clone());
    Ok(applets)
}

// ---------------------------------------------------------------------------------------------
// The image's content

/// One entry of the image's file system.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A directory.
    Dir { mode: u32 },
    /// A copy of a host file (its content at `source`, hashed when planned).
    File {
        source: PathBuf,
        mode: u32,
        size: u64,
        digest: [u8; 32],
    },
    /// A small file written from memory (`/etc/passwd`…).
    Data { mode: u32, bytes: Vec<u8> },
    /// A symbolic link.
    Symlink { target: String },
}

/// Everything the image will hold, by absolute path, and its configuration. The canonical
/// listing of it is what the tag hashes.
#[derive(Debug, Clone, Default)]
struct Plan {
    /// Image path → entry. Sorted, so parents come before children in the layer.
    entries: BTreeMap<String, Entry>,
    /// Directories outside the loader's default search path that libraries live in.
    library_dirs: BTreeSet<String>,
    /// Value of [`super::LABEL_IMAGE`].
    kind: &'static str,
}

impl Plan {
    /// An empty plan for an image of `kind`.
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            ..Self::default()
        }
    }

    /// The image path of host path `path`: absolute, without `.`/`..`, as UTF-8.
    fn image_path(path: &Path) -> Result<String> {
        let invalid = |why: &str| Error::invalid(format!("include {}", path.display()), why.to_string());
        let absolute =
            std::path::absolute(path).map_err(|e| Error::io(format!("resolving {}", path.display()), e))?;
        let mut out = String::new();
        for c in absolute.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => {
                    out.push('/');
                    out.push_str(name.to_str().ok_or_else(|| invalid("the path is not UTF-8"))?);
                }
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(invalid("write the path without `..`"));
                }
            }
        }
        if out.is_empty() {
            return Err(invalid("`/` is not a file"));
        }
        Ok(out)
    }

    /// Adds the directories above `path`, as 0755 unless already present; refuses to put
    /// anything under a non-directory.
    fn add_parents(&mut self, path: &str) -> Result<()> {
        let mut at = 0;
        while let Some(slash) = path[at + 1..].find('/') {
            at += 1 + slash;
            let dir = &path[..at];
            match self.entries.get(dir) {
                None => {
                    self.entries.insert(dir.to_string(), Entry::Dir { mode: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(_) => {
                    return Err(Error::invalid(
                        format!("node image path {path}"),
                        format!("{dir} is already a file in the image"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Adds `entry` at `path` unless something is there already (earlier entries win).
    /// Returns whether it was added.
    fn add(&mut self, path: &str, entry: Entry) -> Result<bool> {
        if self.entries.contains_key(path) {
            return Ok(false);
        }
        self.add_parents(path)?;
        self.entries.insert(path.to_string(), entry);
        Ok(true)
    }

    /// Adds the host file `source` at image path `path` (content of the symlink's target).
    fn add_host_file(&mut self, path: &str, source: &Path) -> Result<bool> {
        if self.entries.contains_key(path) {
            return Ok(false);
        }
        let meta =
            std::fs::metadata(source).map_err(|e| Error::io(format!("reading {}", source.display()), e))?;
        if !meta.is_file() {
            return Err(Error::invalid(
                format!("include {}", source.display()),
                "not a regular file; include files one by one",
            ));
        }
        let digest = file_digest(source)?;
        self.add(
            path,
            Entry::File {
                source: source.to_path_buf(),
                mode: meta.mode() & 0o7777,
                size: meta.len(),
                digest,
            },
        )
    }

    /// Adds the host file at its own path, with its shared libraries.
    fn add_with_libraries(&mut self, file: &Path) -> Result<()> {
        let path = Self::image_path(file)?;
        self.add_host_file(&path, file)?;
        for lib in shared_libraries(file)? {
            let lib_path = Self::image_path(&lib)?;
            self.add_host_file(&lib_path, &lib)?;
            // The loader itself is named by PT_INTERP, not searched; every other library must
            // be where the loader looks without a cache.
            if lib_path != GLIBC_LOADER
                && let Some(dir) = Path::new(&lib_path).parent().and_then(Path::to_str)
                && !LOADER_SYSTEM_DIRS.contains(&dir)
            {
                self.library_dirs.insert(dir.to_string());
            }
        }
        Ok(())
    }

    /// Adds one `include`: a file at its own path with its shared libraries, or a directory
    /// tree at its own path — its files with their libraries, its subdirectories with their
    /// modes, and its symbolic links as links (not followed, so a tree cannot loop). Sockets,
    /// FIFOs and devices in a tree are skipped: they are not content.
    fn add_include(&mut self, include: &Path) -> Result<()> {
        let io_err = |e| Error::io(format!("include {}", include.display()), e);
        if std::fs::metadata(include).map_err(io_err)?.is_dir() {
            self.add_tree(include)
        } else {
            self.add_with_libraries(include)
        }
    }

    /// Adds the host directory `dir` and everything under it, in name order.
    fn add_tree(&mut self, dir: &Path) -> Result<()> {
        let io_err = |e| Error::io(format!("include {}", dir.display()), e);
        let mode = std::fs::metadata(dir).map_err(io_err)?.mode() & 0o7777;
        self.add(&Self::image_path(dir)?, Entry::Dir { mode })?;
        let mut children = std::fs::read_dir(dir)
            .map_err(io_err)?
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(io_err)?;
        children.sort_by_key(std::fs::DirEntry::file_name);
        for child in children {
            let path = child.path();
            let kind = child
                .file_type()
                .map_err(|e| Error::io(format!("include {}", path.display()), e))?;
            if kind.is_symlink() {
                let target = std::fs::read_link(&path)
                    .map_err(|e| Error::io(format!("include {}", path.display()), e))?;
                let target = target.to_str().ok_or_else(|| {
                    Error::invalid(
                        format!("include {}", path.display()),
                        "the link target is not UTF-8",
                    )
                })?;
                self.add(
                    &Self::image_path(&path)?,
                    Entry::Symlink {
                        target: target.to_string(),
                    },
                )?;
            } else if kind.is_dir() {
                self.add_tree(&path)?;
            } else if kind.is_file() {
                self.add_with_libraries(&path)?;
            }
        }
        Ok(())
    }

    /// The image's environment.
    fn env(&self) -> Vec<String> {
        let mut env = vec![format!("PATH={NODE_PATH}")];
        if !self.library_dirs.is_empty() {
            let dirs: Vec<&str> = self.library_dirs.iter().map(String::as_str).collect();
            env.push(format!("LD_LIBRARY_PATH={}", dirs.join(":")));
        }
        env
    }

    /// The image config's `config` object (what `docker inspect` shows as `Config`).
    fn container_config(&self) -> serde_json::Value {
        serde_json::json!({
            "Env": self.env(),
            "Entrypoint": [AGENT_PATH],
            "WorkingDir": NODE_WORKDIR,
            "Labels": { super::LABEL_IMAGE: self.kind },
        })
    }

    /// The canonical listing: a format line, then one line per entry in path order (kind, path,
    /// mode in octal, content SHA-256 or link target), then the container config. Equal
    /// listings mean equal images.
    fn listing(&self) -> String {
        let mut out = String::from("chaos-node-image v1\n");
        for (path, entry) in &self.entries {
            let _ = match entry {
                Entry::Dir { mode } => writeln!(out, "dir {path} {mode:o}"),
                Entry::File { mode, digest, .. } => writeln!(out, "file {path} {mode:o} {}", hex(digest)),
                Entry::Data { mode, bytes } => writeln!(out, "file {path} {mode:o} {}", hex(&sha256(bytes))),
                Entry::Symlink { target } => writeln!(out, "link {path} {target}"),
            };
        }
        let _ = writeln!(out, "config {}", self.container_config());
        out
    }

    /// `<repo>:<first 16 hex of the listing's SHA-256>`.
    fn tag(&self, repo: &str) -> String {
        format!("{repo}:{}", &hex(&sha256(self.listing().as_bytes()))[..16])
    }
}

/// Plans the default node image: see the module docs for its content. Blocking (reads and
/// hashes files, runs `ldd` and `busybox --list`).
fn plan_node_image(agent: &Path, include: &[PathBuf]) -> Result<Plan> {
    // Fail on a missing include before any other work, naming it.
    for file in include {
        if !file.exists() {
            return Err(Error::invalid(
                format!("include {}", file.display()),
                "no such file on this host; install it or leave it out of the node image",
            ));
        }
    }
    match elf_linkage(agent)? {
        ElfLinkage::Static => {}
        _ => {
            return Err(Error::backend(
                "docker",
                format!(
                    "agent {} is not a statically linked executable and would not run in a \
                     FROM scratch image; use static_agent() or build one with: {}",
                    agent.display(),
                    manual_build_command()
                ),
            ));
        }
    }
    let applets = busybox_applets()?;

    let mut plan = Plan::new(IMAGE_KIND_NODE);
    plan.add_host_file(AGENT_PATH, agent)?;
    for file in include {
        plan.add_include(file)?;
    }
    if Path::new(GLIBC_LOADER).is_file() {
        plan.add_host_file(GLIBC_LOADER, Path::new(GLIBC_LOADER))?;
        if let Some(dir) = GLIBC_DIRS
            .iter()
            .find(|d| Path::new(d).join("libc.so.6").is_file())
        {
            for lib in GLIBC_LIBS {
                let source = Path::new(dir).join(lib);
                if source.is_file() {
                    plan.add_host_file(&format!("{dir}/{lib}"), &source)?;
                }
            }
        }
    }
    plan.add_host_file(BUSYBOX, Path::new(BUSYBOX))?;
    for applet in &applets {
        plan.add(
            &format!("/bin/{applet}"),
            Entry::Symlink {
                target: "busybox".into(),
            },
        )?;
    }
    plan.add(
        "/usr/bin/env",
        Entry::Symlink {
            target: BUSYBOX.into(),
        },
    )?;
    plan.add(
        "/etc/passwd",
        Entry::Data {
            mode: 0o644,
            bytes: b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        },
    )?;
    plan.add(
        "/etc/group",
        Entry::Data {
            mode: 0o644,
            bytes: b"root:x:0:\n".to_vec(),
        },
    )?;
    plan.add("/root", Entry::Dir { mode: 0o700 })?;
    plan.add("/tmp", Entry::Dir { mode: 0o1777 })?;
    plan.add(NODE_WORKDIR, Entry::Dir { mode: 0o755 })?;
    Ok(plan)
}

// ---------------------------------------------------------------------------------------------
// Writing and loading the image

/// The layer tar of `plan` (paths relative to `/`, owner root, fixed times) and its SHA-256
/// (the layer's diff ID). Re-reads every host file and checks it still has the planned content,
/// so the image never differs from what its tag names.
fn write_layer(plan: &Plan) -> Result<(Vec<u8>, [u8; 32])> {
    let tar_err = |path: &str, e| Error::io(format!("packing {path} into the node image"), e);
    let mut layer = tar::Builder::new(Vec::new());
    for (path, entry) in &plan.entries {
        let rel = path.trim_start_matches('/');
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(LAYER_MTIME);
        match entry {
            Entry::Dir { mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                layer
                    .append_data(&mut header, format!("{rel}/"), std::io::empty())
                    .map_err(|e| tar_err(path, e))?;
            }
            Entry::File {
                source,
                mode,
                size,
                digest,
            } => {
                let bytes = std::fs::read(source)
                    .map_err(|e| Error::io(format!("reading {}", source.display()), e))?;
                if bytes.len() as u64 != *size || sha256(&bytes) != *digest {
                    return Err(Error::backend(
                        "docker",
                        format!(
                            "{} changed while the node image was being built; try again",
                            source.display()
                        ),
                    ));
                }
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(*size);
                layer
                    .append_data(&mut header, rel, bytes.as_slice())
                    .map_err(|e| tar_err(path, e))?;
            }
            Entry::Data { mode, bytes } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(bytes.len() as u64);
                layer
                    .append_data(&mut header, rel, bytes.as_slice())
                    .map_err(|e| tar_err(path, e))?;
            }
            Entry::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                layer
                    .append_link(&mut header, rel, target)
                    .map_err(|e| tar_err(path, e))?;
            }
        }
    }
    let bytes = layer.into_inner().map_err(|e| tar_err("the layer", e))?;
    let digest = sha256(&bytes);
    Ok((bytes, digest))
}

/// The `docker load` archive of `plan` tagged `tag`: `manifest.json`, the config named by its
/// own SHA-256 (which becomes the image ID) and the one layer.
fn write_archive(plan: &Plan, tag: &str) -> Result<Vec<u8>> {
    let (layer, diff_id) = write_layer(plan)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": IMAGE_CREATED,
        "config": plan.container_config(),
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", hex(&diff_id))] },
        "history": [{ "created": IMAGE_CREATED, "created_by": format!("chaos {tag}") }],
    });
    let config = serde_json::to_vec(&config).map_err(|e| Error::backend("docker", e.to_string()))?;
    let config_name = format!("{}.json", hex(&sha256(&config)));
    let layer_name = format!("{}/layer.tar", hex(&diff_id));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [tag],
        "Layers": [layer_name],
    }]);
    let manifest = serde_json::to_vec(&manifest).map_err(|e| Error::backend("docker", e.to_string()))?;

    let tar_err = |e| Error::io("packing the node image archive", e);
    let mut archive = tar::Builder::new(Vec::with_capacity(layer.len() + 64 * 1024));
    for (name, bytes) in [
        (layer_name.as_str(), layer.as_slice()),
        (config_name.as_str(), config.as_slice()),
        ("manifest.json", manifest.as_slice()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(LAYER_MTIME);
        header.set_size(bytes.len() as u64);
        archive.append_data(&mut header, name, bytes).map_err(tar_err)?;
    }
    archive.into_inner().map_err(tar_err)
}

/// Whether the daemon has `reference`. Errors other than "no such image" are the daemon's.
async fn image_exists(docker: &Docker, reference: &str) -> Result<bool> {
    match docker.inspect_image(reference).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
        Err(e) => Err(Error::backend(
            "docker",
            format!("inspecting image {reference}: {e} (is the Docker daemon running and reachable?)"),
        )),
    }
}

/// One build per process at a time, so concurrent callers in one process build once.
static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes `plan` as image `tag` and loads it into the daemon, bounded by
/// [`IMAGE_LOAD_TIMEOUT`]. Loading the same plan twice, even from two processes at once, is
/// harmless: the image ID and layer are content-addressed, so the second load finds both and
/// only re-points the tag at the same image.
async fn load_image(docker: &Docker, plan: Plan, tag: String) -> Result<()> {
    let started = Instant::now();
    let archive = {
        let tag_ = tag.clone();
        tokio::task::spawn_blocking(move || write_archive(&plan, &tag_))
            .await
            .map_err(|e| Error::backend("docker", format!("packing image {tag}: {e}")))??
    };
    let size = archive.len();
    let mut messages = Vec::new();
    let load = async {
        let options = ImportImageOptions {
            quiet: true,
            ..Default::default()
        };
        let mut stream = docker.import_image(options, bollard::body_full(archive.into()), None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => messages.extend(info.stream.or(info.status)),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    };
    let outcome = tokio::time::timeout(IMAGE_LOAD_TIMEOUT, load).await;
    let said = || {
        let text = messages.concat();
        if text.trim().is_empty() {
            String::new()
        } else {
            format!("; the daemon said: {}", text.trim())
        }
    };
    match outcome {
        Err(_) => {
            return Err(Error::backend(
                "docker",
                format!(
                    "loading image {tag} did not finish within {IMAGE_LOAD_TIMEOUT:?}{}",
                    said()
                ),
            ));
        }
        Ok(Err(e)) => {
            return Err(Error::backend(
                "docker",
                format!("loading image {tag} failed: {e}{}", said()),
            ));
        }
        Ok(Ok(())) => {}
    }
    if !image_exists(docker, &tag).await? {
        return Err(Error::backend(
            "docker",
            format!(
                "loading image {tag} reported success but the daemon does not have it{}",
                said()
            ),
        ));
    }
    tracing::info!(image = %tag, bytes = size, elapsed = ?started.elapsed(), "node image loaded");
    Ok(())
}

/// Ensures the image of `plan` exists as `<repo>:<hash>`; returns that reference.
async fn ensure_image(docker: &Docker, plan: Plan, repo: &str) -> Result<String> {
    let tag = plan.tag(repo);
    if image_exists(docker, &tag).await? {
        return Ok(tag);
    }
    let _one_build = BUILD_LOCK.lock().await;
    if image_exists(docker, &tag).await? {
        return Ok(tag);
    }
    load_image(docker, plan, tag.clone()).await?;
    Ok(tag)
}

/// Ensures the default node image for `agent` and `include` exists; returns its reference.
///
/// `agent` must be a statically linked agent (see [`static_agent`]); each `include` file is
/// placed at its own path with the shared libraries `ldd` reports for it, each `include`
/// directory with everything under it. A missing include
/// file, a dynamic agent or a missing static busybox is an error naming it, before anything is
/// sent to the daemon. When the daemon already has the image's tag this returns after hashing
/// the content — hashes are memoized per process and in `~/.cache/chaos/file-digests.json`
/// (`$XDG_CACHE_HOME` honoured), keyed by device, inode, size and modification and change
/// times, so a lookup costs a few stats, an `ldd` per included binary and one inspect.
///
/// Why `docker load` of a hand-written image rather than a `FROM scratch` Dockerfile build:
/// the image config is ours, so its creation time is fixed and the image ID is a pure function
/// of the content. Two processes building the same image at once then produce the very same
/// image and the second load only re-points the tag; with the classic builder each build would
/// stamp its own time, and the loser's image would be left dangling (a leak). It is also
/// faster: one layer unpacked once, no intermediate containers or images, no build cache.
pub async fn node_image(docker: &Docker, agent: &Path, include: &[PathBuf]) -> Result<String> {
    let (agent, include) = (agent.to_path_buf(), include.to_vec());
    let plan = tokio::task::spawn_blocking(move || {
        let cache = digest_cache_path();
        if let Some(cache) = &cache {
            load_digest_cache(cache);
        }
        let plan = plan_node_image(&agent, &include);
        if let Some(cache) = &cache {
            save_digest_cache(cache);
        }
        plan
    })
    .await
    .map_err(|e| Error::backend("docker", format!("planning the node image: {e}")))??;
    ensure_image(docker, plan, IMAGE_REPO).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_is_static_and_ls_is_dynamic() {
        if !Path::new(BUSYBOX).is_file() {
            eprintln!("skipped: no {BUSYBOX} (apt-get install busybox-static)");
            return;
        }
        assert!(is_static_elf(Path::new(BUSYBOX)).unwrap(), "{BUSYBOX} is static");
        assert!(
            !is_static_elf(Path::new("/bin/ls")).unwrap(),
            "/bin/ls is dynamic"
        );
    }

    #[test]
    fn non_elf_files_are_not_elf64() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(elf_linkage(&script).unwrap(), ElfLinkage::NotElf64);
        let err = is_static_elf(&script).unwrap_err().to_string();
        assert!(err.contains("script") && err.contains("not an ELF64"), "{err}");
        assert!(is_static_elf(&dir.path().join("missing")).is_err());
        // A truncated header is not ELF64 either, and does not panic.
        std::fs::write(&script, b"\x7fELF\x02\x01").unwrap();
        assert_eq!(elf_linkage(&script).unwrap(), ElfLinkage::NotElf64);
    }

    /// A minimal ELF64 file: the header, then `types` as program headers.
    fn elf(little: bool, types: &[u32], phentsize: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = if little { 1 } else { 2 };
        let (phoff, entsize, num) = if little {
            (
                64u64.to_le_bytes(),
                phentsize.to_le_bytes(),
                (types.len() as u16).to_le_bytes(),
            )
        } else {
            (
                64u64.to_be_bytes(),
                phentsize.to_be_bytes(),
                (types.len() as u16).to_be_bytes(),
            )
        };
        b[0x20..0x28].copy_from_slice(&phoff);
        b[0x36..0x38].copy_from_slice(&entsize);
        b[0x38..0x3a].copy_from_slice(&num);
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&if little { t.to_le_bytes() } else { t.to_be_bytes() });
            b.extend(ph);
        }
        b
    }

    #[test]
    fn synthetic_elf_headers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("elf");
        let check = |bytes: Vec<u8>| {
            std::fs::write(&file, bytes).unwrap();
            elf_linkage(&file).unwrap()
        };
        assert_eq!(check(elf(true, &[1, 3, 1], 56)), ElfLinkage::Dynamic);
        assert_eq!(check(elf(true, &[1, 2, 1], 56)), ElfLinkage::Static);
        assert_eq!(check(elf(false, &[6, 3], 56)), ElfLinkage::Dynamic);
        assert_eq!(check(elf(true, &[], 0)), ElfLinkage::Static);
        // A bogus entry size is not trusted; a table past the end of the file is an error.
        assert_eq!(check(elf(true, &[3], 8)), ElfLinkage::NotElf64);
        let mut truncated = elf(true, &[1, 3], 56);
        truncated[0x38] = 200;
        std::fs::write(&file, truncated).unwrap();
        assert!(elf_linkage(&file).is_err());
    }

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd1b5f1000)\n\
                    \tlibselinux.so.1 => /lib/x86_64-linux-gnu/libselinux.so.1 (0x00007f56012ad000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f56010cb000)\n\
                    \tlinux-gate.so.1 =>  (0x00007f0000000000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f5601314000)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libselinux.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").unwrap().is_empty());
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n").unwrap_err(),
            ["libfoo.so.1"]
        );
    }

    #[test]
    fn ldd_of_host_binaries() {
        assert!(
            shared_libraries(Path::new("/bin/ls"))
                .unwrap()
                .iter()
                .any(|p| p.ends_with("libc.so.6"))
        );
        if Path::new(BUSYBOX).is_file() {
            assert!(shared_libraries(Path::new(BUSYBOX)).unwrap().is_empty());
        }
    }

    fn data(text: &str) -> Entry {
        Entry::Data {
            mode: 0o644,
            bytes: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_tag_hashes_content_not_insertion_order() {
        let mut a = Plan::new("node");
        a.add("/etc/a", data("1")).unwrap();
        a.add(
            "/bin/sh",
            Entry::Symlink {
                target: "busybox".into(),
            },
        )
        .unwrap();
        let mut b = Plan::new("node");
        b.add(
            "/bin/sh",
            Entry::Symlink {
                target: "busybox".into(),
            },
        )
        .unwrap();
        b.add("/etc/a", data("1")).unwrap();
        assert_eq!(a.listing(), b.listing());
        assert_eq!(a.tag("r"), b.tag("r"));
        assert!(
            a.tag("r").starts_with("r:") && a.tag("r").len() == 2 + 16,
            "{}",
            a.tag("r")
        );
        // Parents are listed, before their children.
        let paths: Vec<_> = a.entries.keys().cloned().collect();
        assert_eq!(paths, ["/bin", "/bin/sh", "/etc", "/etc/a"]);

        // Content, mode, link target, kind and config each change the tag.
        let mut c = b.clone();
        c.entries.insert("/etc/a".into(), data("2"));
        assert_ne!(c.tag("r"), a.tag("r"));
        let mut c = b.clone();
        c.entries.insert(
            "/etc/a".into(),
            Entry::Data {
                mode: 0o600,
                bytes: b"1".to_vec(),
            },
        );
        assert_ne!(c.tag("r"), a.tag("r"));
        let mut c = b.clone();
        c.entries.insert(
            "/bin/sh".into(),
            Entry::Symlink {
                target: "dash".into(),
            },
        );
        assert_ne!(c.tag("r"), a.tag("r"));
        let mut c = b.clone();
        c.kind = "test";
        assert_ne!(c.tag("r"), a.tag("r"));
        let mut c = b.clone();
        c.library_dirs.insert("/opt/lib".into());
        assert_ne!(c.tag("r"), a.tag("r"));
        // And the tag is pinned: this listing format is what existing caches are keyed by.
        assert_eq!(a.tag("r"), a.clone().tag("r"));
    }

    #[test]
    fn earlier_entries_win_and_files_do_not_hold_directories() {
        let mut plan = Plan::new("node");
        assert!(plan.add("/bin/ls", data("included")).unwrap());
        assert!(
            !plan
                .add(
                    "/bin/ls",
                    Entry::Symlink {
                        target: "busybox".into()
                    }
                )
                .unwrap()
        );
        assert_eq!(plan.entries["/bin/ls"], data("included"));
        let err = plan.add("/bin/ls/x", data("")).unwrap_err().to_string();
        assert!(err.contains("/bin/ls"), "{err}");
    }

    #[test]
    fn image_paths_are_absolute_and_plain() {
        assert_eq!(
            Plan::image_path(Path::new("/usr/./bin/etcd")).unwrap(),
            "/usr/bin/etcd"
        );
        assert!(Plan::image_path(Path::new("/usr/../bin/x")).is_err());
        assert!(Plan::image_path(Path::new("/")).is_err());
        let rel = Plan::image_path(Path::new("x")).unwrap();
        assert!(rel.starts_with('/') && rel.ends_with("/x"), "{rel}");
    }

    #[test]
    fn the_layer_is_deterministic_and_checks_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "one").unwrap();
        let mut plan = Plan::new("test");
        plan.add_host_file("/opt/f", &file).unwrap();
        plan.add("/opt/l", Entry::Symlink { target: "f".into() }).unwrap();
        plan.add("/tmp", Entry::Dir { mode: 0o1777 }).unwrap();
        let (first, digest) = write_layer(&plan).unwrap();
        let (second, _) = write_layer(&plan).unwrap();
        assert_eq!(first, second);
        assert_eq!(digest, sha256(&first));
        let mut archive = tar::Archive::new(first.as_slice());
        let listed: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("opt/".into(), 0o755),
                ("opt/f".into(), 0o644),
                ("opt/l".into(), 0o777),
                ("tmp/".into(), 0o1777)
            ]
        );
        // The file changed after planning: refused rather than mislabelled.
        std::fs::write(&file, "two").unwrap();
        let err = write_layer(&plan).unwrap_err().to_string();
        assert!(err.contains("changed while"), "{err}");
    }

    #[test]
    fn digests_survive_the_process_in_the_cache_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache/chaos/file-digests.json");
        let file = dir.path().join("content");
        std::fs::write(&file, "one").unwrap();
        let digest = file_digest(&file).unwrap();
        assert_eq!(digest, sha256(b"one"));
        DIGESTS_CHANGED.store(true, std::sync::atomic::Ordering::Relaxed);
        save_digest_cache(&cache);
        let mode = std::fs::metadata(&cache).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        let stored: DiskDigests = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
        assert_eq!(stored.files[&file].1, hex(&digest));
        assert_eq!(from_hex(&hex(&digest)), Some(digest));
        assert_eq!(from_hex("zz"), None);

        // A changed file drops out of the cache when it is next written.
        std::fs::write(&file, "two").unwrap();
        DIGESTS_CHANGED.store(true, std::sync::atomic::Ordering::Relaxed);
        save_digest_cache(&cache);
        let stored: DiskDigests = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
        assert!(!stored.files.contains_key(&file));
        assert_eq!(file_digest(&file).unwrap(), sha256(b"two"));
    }

    /// The build step itself, run from inside `cargo test` (whose environment it must scrub),
    /// when the static agent was already built: cargo finds it fresh and returns it.
    #[tokio::test]
    async fn the_static_build_reuses_a_fresh_agent() {
        let (Some(workspace), Some(cargo)) = (workspace_root(), find_cargo()) else {
            eprintln!("skipped: no workspace or no cargo here");
            return;
        };
        let built = static_target_dir(&workspace)
            .join(AGENT_TARGET)
            .join("release/chaos-agent");
        if !built.is_file() {
            eprintln!("skipped: the static agent was not built yet (static_agent() builds it)");
            return;
        }
        let started = Instant::now();
        let agent = build_agent(&workspace, &cargo).await.unwrap();
        eprintln!("static agent build, fresh: {:?}", started.elapsed());
        assert_eq!(agent, built);
        assert!(is_static_elf(&agent).unwrap());
    }

    #[test]
    fn the_agent_is_looked_for_in_every_target_directory() {
        let candidates = agent_candidates(Path::new("/t"));
        assert_eq!(
            candidates,
            [
                "/t/x86_64-unknown-linux-gnu/release/chaos-agent",
                "/t/x86_64-unknown-linux-gnu/debug/chaos-agent",
                "/t/static-agent/x86_64-unknown-linux-gnu/release/chaos-agent",
            ]
            .map(PathBuf::from)
        );
        // This test binary runs from <target>/debug/deps: its target directory is found.
        let exe = std::env::current_exe().unwrap();
        let dirs = target_dirs(None);
        assert!(
            dirs.iter().any(|d| exe.starts_with(d)),
            "{dirs:?} vs {}",
            exe.display()
        );
        // Dynamic binaries never count, however new.
        assert!(newest_static([PathBuf::from("/bin/ls")]).is_none());
        if Path::new(BUSYBOX).is_file() {
            let found = newest_static([PathBuf::from("/bin/ls"), PathBuf::from(BUSYBOX)]);
            assert_eq!(found.map(|(p, _)| p), Some(PathBuf::from(BUSYBOX)));
        }
    }

    #[test]
    fn build_logs_keep_their_tail() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    /// The daemon, or why not.
    async fn docker() -> Result<Docker, String> {
        let connect = async {
            let docker = Docker::connect_with_defaults().map_err(|e| e.to_string())?;
            let docker = docker.negotiate_version().await.map_err(|e| e.to_string())?;
            docker.ping().await.map_err(|e| e.to_string())?;
            Ok(docker)
        };
        tokio::time::timeout(Duration::from_secs(3), connect)
            .await
            .unwrap_or_else(|_| Err("no answer within 3s".into()))
    }

    /// Two loads of one new image at once (as two test binaries may do) both succeed and leave
    /// one image, which this test then removes.
    #[tokio::test]
    async fn concurrent_loads_of_one_image_both_succeed() {
        let docker = match docker().await {
            Ok(d) => d,
            Err(why) => {
                eprintln!("skipped: no Docker daemon: {why}");
                return;
            }
        };
        let mut plan = Plan::new("test");
        // A marker unique to this run, so the image is surely new.
        let marker = format!("{:?} {}", SystemTime::now(), std::process::id());
        plan.add("/marker", data(&marker)).unwrap();
        plan.add("/tmp", Entry::Dir { mode: 0o1777 }).unwrap();
        let tag = plan.tag("chaos-node-test");
        let (a, b) = tokio::join!(
            load_image(&docker, plan.clone(), tag.clone()),
            load_image(&docker, plan.clone(), tag.clone())
        );
        let inspected = docker.inspect_image(&tag).await;
        let removed = docker
            .remove_image(&tag, None::<bollard::query_parameters::RemoveImageOptions>, None)
            .await;
        a.unwrap();
        b.unwrap();
        let inspected = inspected.unwrap();
        let labels = inspected.config.and_then(|c| c.labels).unwrap_or_default();
        assert_eq!(
            labels.get(super::super::LABEL_IMAGE).map(String::as_str),
            Some("test")
        );
        assert_eq!(
            inspected.created.as_deref().map(|c| c.starts_with("1970-01-01")),
            Some(true)
        );
        removed.unwrap();
        assert!(!image_exists(&docker, &tag).await.unwrap());
    }
}
