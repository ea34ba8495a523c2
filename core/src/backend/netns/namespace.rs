//! Named network namespaces, created without forking.
//!
//! A namespace is created the way `ip netns add` does it — an empty file in `/run/netns`, a
//! bind mount of a namespace onto it — except that the unshare happens on a dedicated thread
//! instead of a forked child. That thread never runs anything else and exits right after, since
//! a thread whose namespace changed must never be handed back to a pool.

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use rtnetlink::sys::Socket;
use rtnetlink::sys::protocols::NETLINK_ROUTE;

/// Where named network namespaces live (the iproute2 convention).
pub const NETNS_DIR: &str = "/run/netns";

/// Directory of the backend's own state (state files, the lock guarding `/run/netns` setup).
pub const STATE_DIR: &str = "/run/chaos/netns";

/// A freshly created named namespace: its file descriptor, and optionally a netlink socket
/// opened inside it (a socket stays bound to the namespace it was created in).
pub struct NewNamespace {
    /// `/proc/thread-self/ns/net` of the creating thread, opened read-only.
    pub fd: File,
    /// An rtnetlink socket that operates inside the namespace.
    pub netlink: Option<Socket>,
    /// Removes the namespace unless the caller takes ownership of it.
    pub guard: RemoveOnDrop,
}

/// Removes a named namespace when dropped, unless [`RemoveOnDrop::disarm`]ed. Keeps a
/// namespace from leaking when its creator is cancelled between creating and recording it.
pub struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    /// The caller now owns the namespace and will remove it.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = remove_path(&path)
        {
            tracing::warn!("removing an abandoned namespace: {e}");
        }
    }
}

/// Path of the namespace named `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Makes `/run/netns` exist and be a shared mount point, like iproute2 does, so namespace
/// mounts propagate between mount namespaces. Done once per process; a file lock keeps
/// concurrent runner processes from stacking two bind mounts on it.
fn ensure_netns_dir() -> io::Result<()> {
    static DONE: OnceLock<()> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    if DONE.get().is_some() {
        return Ok(());
    }
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if DONE.get().is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(STATE_DIR)?;
    let lock_file = File::create(Path::new(STATE_DIR).join(".netns-dir.lock"))?;
    let _flock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
    std::fs::create_dir_all(NETNS_DIR)?;
    let mut made_mount = false;
    loop {
        match nix::mount::mount(
            None::<&str>,
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => break,
            // Not a mount point yet: make it one by binding it onto itself, then retry.
            Err(Errno::EINVAL) if !made_mount => {
                nix::mount::mount(
                    Some(NETNS_DIR),
                    NETNS_DIR,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| io::Error::other(format!("bind-mounting {NETNS_DIR} onto itself: {e}")))?;
                made_mount = true;
            }
            Err(e) => {
                return Err(io::Error::other(format!(
                    "making {NETNS_DIR} a shared mount: {e}"
                )));
            }
        }
    }
    let _ = DONE.set(());
    Ok(())
}

/// Creates the named namespace `name` (visible to `ip netns`), on a dedicated thread, and
/// returns its descriptor and, with `with_netlink`, a netlink socket bound to it.
/// Fails with `AlreadyExists` when the name is taken.
pub async fn create(name: &str, with_netlink: bool) -> io::Result<NewNamespace> {
    ensure_netns_dir()?;
    let path = netns_path(name);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("chaos-netns".into())
        .spawn(move || {
            // If the caller was cancelled meanwhile, the unsent namespace is dropped, which
            // removes it (see `RemoveOnDrop`).
            let _ = tx.send(create_on_this_thread(&path, with_netlink));
            // The thread ends here: it is inside the new namespace and must never run anything else.
        })?;
    rx.await.map_err(|_| io::Error::other("namespace thread died"))?
}

/// The body of [`create`]; runs on a thread of its own, which it moves into the new namespace.
fn create_on_this_thread(path: &Path, with_netlink: bool) -> io::Result<NewNamespace> {
    let context = |what: &str, e: Errno| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"));
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| context(&format!("creating {}", path.display()), e))?;
    drop(fd);
    let result = (|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| context("unshare(CLONE_NEWNET)", e))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            path,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| context(&format!("bind-mounting the namespace onto {}", path.display()), e))?;
        let fd = File::open("/proc/thread-self/ns/net")?;
        let netlink = if with_netlink {
            Some(Socket::new(NETLINK_ROUTE)?)
        } else {
            None
        };
        Ok(NewNamespace {
            fd,
            netlink,
            guard: RemoveOnDrop(Some(path.to_path_buf())),
        })
    })();
    if result.is_err() {
        let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Removes the named namespace `name`: detaches its mount and deletes the file. The kernel
/// frees the namespace (and the links inside it) once nothing else refers to it. Missing
/// namespaces are not an error.
pub fn remove(name: &str) -> io::Result<()> {
    remove_path(&netns_path(name))
}

fn remove_path(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(io::Error::other(format!("unmounting {}: {e}", path.display()))),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("removing {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

/// Moves the calling process into the network namespace `ns_fd`.
///
/// Meant for `pre_exec`: it only calls `setns(2)`, which is async-signal-safe, and allocates
/// nothing.
pub fn enter(ns_fd: RawFd) -> io::Result<()> {
    // SAFETY: setns has no memory-safety preconditions; an invalid fd makes it fail with EBADF.
    if unsafe { libc::setns(ns_fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process may create network namespaces (tried once, on a throwaway thread).
pub fn can_unshare() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            std::thread::spawn(|| nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()))
                .join()
                .unwrap_or_else(|_| Err("probe thread panicked".into()))
        })
        .clone()
}
