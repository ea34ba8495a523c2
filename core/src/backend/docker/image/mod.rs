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
//! - every file of `include` at its host path, with the shared libraries `ldd` lists for it
//!   (executables and shared libraries alike); a directory of `include` with everything under
//!   it (links kept as links); a link of `include` as a link, with what it points to. Paths
//!   with `..` — what ldd prints for a `$ORIGIN/../lib` run path, or what a user writes — are
//!   resolved first (`host_path.rs`). A library ldd cannot find is fine when an include
//!   holds a file of that name (the JVM loads `libjvm.so` by path), else an error for an
//!   include the user named and a warning for a file inside an included directory
//!   (`Plan::check_unresolved`);
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
//! rather than built from a Dockerfile (`load.rs`); see [`node_image`] for why.
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
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::ImportImageOptions;
use futures_util::StreamExt;
use ring::digest::{Context, SHA256};

use crate::{Error, Result};

mod digest;
mod host_path;
mod ldd;
mod load;

pub use crate::backend::elf::is_static_elf;
use crate::backend::elf::*;
use digest::*;
use host_path::*;
use ldd::*;
use load::*;

/// The statically linked agent at this library's version, found or built once into the agent
/// cache ([`crate::backend::agent_binary`]): a node image runs it `FROM scratch`.
pub async fn static_agent() -> Result<PathBuf> {
    crate::backend::agent_binary::agent_binary(crate::backend::agent_binary::Linkage::Static).await
}

/// Where the agent binary lives inside every node container.
pub const AGENT_PATH: &str = "/chaos/chaos-agent";

/// Environment variable naming a statically linked agent binary explicitly.
pub use crate::backend::agent_binary::AGENT_BIN_ENV;

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

/// Bound on handing a built image to the daemon.
const IMAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(120);

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

/// Most symbolic links followed from one named include (the kernel's own limit is 40).
const MAX_LINK_HOPS: usize = 40;

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
    /// Included files with libraries `ldd` could not find on this host, judged once every
    /// include is in ([`Plan::check_unresolved`]). Not part of the image.
    unresolved: Vec<Unresolved>,
}

/// An included file some of whose libraries `ldd` could not find.
#[derive(Debug, Clone)]
struct Unresolved {
    /// The file (plain host path).
    file: PathBuf,
    /// Whether the user named it (rather than it being inside an included directory).
    named: bool,
    /// The libraries' names.
    libraries: Vec<String>,
}

impl Plan {
    /// An empty plan for an image of `kind`.
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            ..Self::default()
        }
    }

    /// The image path of host path `path`, which must be absolute and plain (see
    /// [`plain_host_path`]), as UTF-8.
    fn image_path(path: &Path) -> Result<String> {
        let invalid = |why: &str| Error::invalid(format!("include {}", path.display()), why.to_string());
        let mut out = String::new();
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => {
                    out.push('/');
                    out.push_str(name.to_str().ok_or_else(|| invalid("the path is not UTF-8"))?);
                }
                // plain_host_path resolved these; a path that still has one is a bug here.
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(invalid("the path still holds `..` after resolving it"));
                }
            }
        }
        if !path.is_absolute() {
            return Err(invalid("the path is not absolute"));
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

    /// Adds the host file at its own path, with its shared libraries. Libraries `ldd` cannot
    /// find are noted for [`Plan::check_unresolved`]; `named` says whether the user named the
    /// file (else it is inside an included directory).
    fn add_with_libraries(&mut self, file: &Path, named: bool) -> Result<()> {
        let file = plain_host_path(file)?;
        let path = Self::image_path(&file)?;
        self.add_host_file(&path, &file)?;
        let libraries = shared_libraries(&file)?;
        for lib in &libraries.found {
            let lib = plain_host_path(lib)?;
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
        if !libraries.missing.is_empty() {
            self.unresolved.push(Unresolved {
                file,
                named,
                libraries: libraries.missing,
            });
        }
        Ok(())
    }

    /// Judges the libraries `ldd` could not find for included files, once every include is in.
    /// A library some include holds (a file or link of that name anywhere in the plan) is
    /// fine: programs like the JVM load it by path or through a run path ldd does not follow
    /// (the JDK's `lib/*.so` need `libjvm.so`, which the launcher loads from `lib/server/`).
    /// Otherwise a file the user named is an error naming it and the libraries; a file inside
    /// an included directory only a warning — trees hold plugins for things the system under
    /// test may never load (the JDK's AWT libraries want X11).
    fn check_unresolved(&mut self) -> Result<()> {
        if self.unresolved.is_empty() {
            return Ok(());
        }
        let held: BTreeSet<&str> = self
            .entries
            .iter()
            .filter(|(_, e)| !matches!(e, Entry::Dir { .. }))
            .filter_map(|(p, _)| p.rsplit('/').next())
            .collect();
        // Library name → the tree files that need it and no include holds.
        let mut warn: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        let mut in_includes = 0;
        for u in &self.unresolved {
            let lacking: Vec<&String> = u
                .libraries
                .iter()
                .filter(|l| !held.contains(l.as_str()))
                .collect();
            if lacking.is_empty() {
                in_includes += 1;
            } else if u.named {
                return Err(Error::invalid(
                    format!("include {}", u.file.display()),
                    format!(
                        "needs shared libraries that ldd cannot find on this host and no include \
                         holds: {}; install them, include them (or the directory holding them), or \
                         leave the file out",
                        lacking.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            } else {
                for lib in lacking {
                    warn.entry(lib.clone()).or_default().push(u.file.clone());
                }
            }
        }
        tracing::debug!(
            files = in_includes,
            "node image: included files whose libraries ldd cannot find, all held by the includes"
        );
        for (lib, files) in warn {
            tracing::warn!(
                "node image: {} included file(s) need {lib}, which ldd cannot find on this host and \
                 no include holds (first: {}); they fail in the node if something loads them",
                files.len(),
                files[0].display()
            );
        }
        self.unresolved.clear();
        Ok(())
    }

    /// Adds one `include`: a file at its own path with its shared libraries, or a directory
    /// tree at its own path — its files with their libraries, its subdirectories with their
    /// modes, and its symbolic links as links (not followed, so a tree cannot loop). Sockets,
    /// FIFOs and devices in a tree are skipped: they are not content. A named symbolic link
    /// stays a link, and what it points to is included in turn ([`MAX_LINK_HOPS`] at most).
    fn add_include(&mut self, include: &Path) -> Result<()> {
        let mut include = plain_host_path(include)?;
        for _ in 0..=MAX_LINK_HOPS {
            let io_err = |e| Error::io(format!("include {}", include.display()), e);
            let meta = std::fs::symlink_metadata(&include).map_err(io_err)?;
            if !meta.file_type().is_symlink() {
                return if meta.is_dir() {
                    self.add_tree(&include)
                } else {
                    self.add_with_libraries(&include, true)
                };
            }
            // Kept a link, not copied as a file: a program that finds its own files from its
            // path (the JDK's launcher, through /proc/self/exe and $ORIGIN) then works when
            // started through the link, as on the host (/usr/bin/java → /etc/alternatives/java
            // → the JDK's bin/java).
            let target = std::fs::read_link(&include).map_err(io_err)?;
            let text = target.to_str().ok_or_else(|| {
                Error::invalid(
                    format!("include {}", include.display()),
                    "the link target is not UTF-8",
                )
            })?;
            self.add(
                &Self::image_path(&include)?,
                Entry::Symlink {
                    target: text.to_string(),
                },
            )?;
            let next = match include.parent() {
                Some(dir) if target.is_relative() => dir.join(&target),
                _ => target,
            };
            include = plain_host_path(&next)?;
        }
        Err(Error::invalid(
            format!("include {}", include.display()),
            format!("more than {MAX_LINK_HOPS} symbolic links in a row"),
        ))
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
                self.add_with_libraries(&path, false)?;
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
                     FROM scratch image; use static_agent(), or {}",
                    agent.display(),
                    crate::backend::agent_binary::manual_command()
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
    plan.check_unresolved()?;
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
mod tests;
