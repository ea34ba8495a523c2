//! A started process's standard streams, the errors of a failed start, and its exit status.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use chaos_proto::{ApiError, ErrorKind, ExitStatus, OutputSpec, StdinSpec};

use super::{CGROUP_MOVE_FAILED, PIPE_SIZE, absolute, err, io_error};

pub(super) fn output_stdio(field: &str, spec: &OutputSpec) -> Result<Stdio, ApiError> {
    Ok(match spec {
        OutputSpec::Pipe => Stdio::piped(),
        OutputSpec::Null => Stdio::null(),
        OutputSpec::File { path, append } => {
            let path = absolute(field, path)?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| io_error(&format!("creating {} for {field}", parent.display()), &e))?;
            }
            let mut opts = OpenOptions::new();
            opts.create(true).mode(0o644).custom_flags(libc::O_NONBLOCK);
            if *append {
                opts.append(true);
            } else {
                opts.write(true).truncate(true);
            }
            let file = open_stdio(&opts, &path)
                .map_err(|e| io_error(&format!("opening {field} {}", path.display()), &e))?;
            Stdio::from(file)
        }
    })
}

pub(super) fn stdin_stdio(spec: &StdinSpec) -> Result<Stdio, ApiError> {
    Ok(match spec {
        StdinSpec::Pipe => Stdio::piped(),
        StdinSpec::Null => Stdio::null(),
        StdinSpec::File { path } => {
            let path = absolute("stdin", path)?;
            let file = open_stdio(
                OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK),
                &path,
            )
            .map_err(|e| io_error(&format!("opening stdin {}", path.display()), &e))?;
            Stdio::from(file)
        }
    })
}

/// Stdio files are opened with `O_NONBLOCK` because `open` runs on a runtime worker thread: a
/// FIFO without a peer would otherwise block that thread (two such requests froze the agent).
/// A FIFO is then refused — opened non-blocking its read end would give the child an immediate
/// EOF, which is not what a FIFO on stdin means — with the way to get the usual behaviour; any
/// other file is handed to the child as an ordinary blocking descriptor.
fn open_stdio(opts: &OpenOptions, path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::FileTypeExt;

    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let fifo = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a fifo, which the agent does not open for a process (opening one blocks until \
             its peer appears); let the process open it, e.g. `sh -c 'exec cmd < FIFO'`",
        )
    };
    // The write end of a FIFO nobody reads fails non-blocking with ENXIO.
    let file = opts.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENXIO) {
            fifo()
        } else {
            e
        }
    })?;
    if file.metadata()?.file_type().is_fifo() {
        return Err(fifo());
    }
    let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL)?);
    fcntl(&file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(file)
}

pub(super) fn spawn_error(command: &str, cgroup: Option<&Path>, e: &io::Error) -> ApiError {
    match e.raw_os_error() {
        Some(CGROUP_MOVE_FAILED) => err(
            ErrorKind::Internal,
            format!(
                "starting `{command}`: could not move it into cgroup {} (is it a writable cgroup v2 directory?)",
                cgroup.map(|p| p.display().to_string()).unwrap_or_default()
            ),
        ),
        Some(libc::ENOENT) if command.contains('/') => err(
            ErrorKind::CommandNotFound,
            format!("command `{command}` does not exist on the node"),
        ),
        Some(libc::ENOENT) => err(
            ErrorKind::CommandNotFound,
            format!("command `{command}` not found in PATH on the node"),
        ),
        Some(libc::EACCES) => err(
            ErrorKind::CommandNotFound,
            format!("command `{command}` is not executable (permission denied)"),
        ),
        Some(libc::ENOEXEC) => err(
            ErrorKind::CommandNotFound,
            format!("command `{command}` is not a valid executable (exec format error)"),
        ),
        _ => err(ErrorKind::Internal, format!("starting `{command}`: {e}")),
    }
}

/// Asks for a larger pipe buffer; a failure only costs throughput.
pub(super) fn enlarge_pipe(fd: impl std::os::fd::AsFd) {
    if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        tracing::debug!("could not enlarge an output pipe: {e}");
    }
}

pub(super) fn exit_status(status: io::Result<std::process::ExitStatus>, started: Instant) -> ExitStatus {
    let duration_us = started.elapsed().as_micros() as u64;
    match status {
        Ok(s) => ExitStatus {
            code: s.code(),
            signal: s.signal(),
            duration_us,
        },
        Err(e) => {
            tracing::error!("waiting for a child failed: {e}");
            ExitStatus {
                code: None,
                signal: None,
                duration_us,
            }
        }
    }
}
