//! `/v1/files`: streamed uploads and downloads, stat, list, remove.
//!
//! Nothing a client asks here can pin a thread. Opening a FIFO blocks until its other end is
//! opened, and a thread blocked in `open()` stays there after the client has gone; reading a
//! device or a kernel pseudo-file (`/dev/zero`, `/proc/kmsg`) never ends or blocks. So only
//! regular files are read or replaced: anything else is refused with its type named, before it
//! is opened; reads open with `O_NONBLOCK` (a path swapped for a FIFO in between cannot block
//! the `open()`, and a pseudo-file whose reads would block fails instead); uploads write a new
//! temporary file and rename it, never opening what is at the path.
//!
//! All blocking filesystem work goes through one [`FileGate`]: at most
//! [`MAX_BLOCKING_FILE_OPS`] operations run at once on the blocking pool, the rest wait
//! asynchronously (holding no thread), and a request whose client leaves while it waits gives
//! up its place. Whatever the filesystem does, file requests cannot take the blocking pool from
//! the rest of the agent.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use chaos_proto::limits::MAX_BLOCKING_FILE_OPS;
use chaos_proto::{ApiError, DirEntry, ErrorKind, FileStat, FileWritten};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::api::{Agent, Failure};
use crate::procs::{absolute, io_error};

/// Bytes of an upload collected before they are written: few syscalls and gate passes per MiB,
/// little memory per upload.
const WRITE_CHUNK: usize = 256 * 1024;

/// Size of the chunks a download is read and sent in.
const READ_CHUNK: usize = 256 * 1024;

/// Default permissions of an uploaded file.
const DEFAULT_MODE: u32 = 0o644;

/// Admits at most a fixed number of blocking file operations at once (see the module docs).
#[derive(Clone)]
pub(crate) struct FileGate {
    slots: Arc<Semaphore>,
}

impl FileGate {
    /// The agent's gate: [`MAX_BLOCKING_FILE_OPS`] slots.
    pub(crate) fn new() -> Self {
        Self::with_slots(MAX_BLOCKING_FILE_OPS)
    }

    fn with_slots(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots)),
        }
    }

    /// Runs `op` on the blocking pool once a slot is free. The wait for a slot holds no thread
    /// and ends if the caller is dropped; the slot is held until `op` returns, even when the
    /// caller has gone by then.
    pub(crate) async fn run<T, F>(&self, op: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::new(ErrorKind::Internal, "file operations are shut down"))?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            op()
        })
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("a file operation failed: {e}")))?
    }
}

/// Query of every `/v1/files` endpoint.
#[derive(Debug, Deserialize)]
pub(crate) struct FileQuery {
    path: String,
    mode: Option<String>,
    recursive: Option<bool>,
}

impl FileQuery {
    fn path(&self) -> Result<PathBuf, ApiError> {
        absolute("path", &self.path)
    }
}

fn query(q: Result<Query<FileQuery>, QueryRejection>) -> Result<FileQuery, Failure> {
    Ok(q?.0)
}

type AppState = State<Arc<Agent>>;

/// Parses an octal mode such as `644`, `0644` or `0o644`.
fn parse_mode(mode: Option<&str>) -> Result<u32, ApiError> {
    let Some(text) = mode else { return Ok(DEFAULT_MODE) };
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("mode {text:?} is not an octal permission like 644 or 0755"),
        )),
    }
}

/// What a file type is, with its article, for messages.
fn describe(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Refuses anything but a regular file; `done` is what would have been done to it (`read`,
/// `written`).
fn require_regular(path: &Path, meta: &Metadata, done: &str) -> Result<(), ApiError> {
    let file_type = meta.file_type();
    if file_type.is_file() {
        return Ok(());
    }
    let hint = if file_type.is_dir() && done == "read" {
        " (list a directory instead)"
    } else {
        ""
    };
    Err(ApiError::new(
        ErrorKind::Conflict,
        format!(
            "{} is {}: only regular files can be {done}{hint}",
            path.display(),
            describe(file_type)
        ),
    ))
}

/// Opens a regular file for reading without ever blocking in `open()`, and reads its first
/// chunk (so a file that cannot be read is an error reply, not a broken download).
fn open_for_download(path: &Path) -> Result<(File, Bytes), ApiError> {
    let shown = path.display();
    // Refused before it is opened: opening a device can have effects of its own.
    let meta = std::fs::metadata(path).map_err(|e| io_error(&format!("opening {shown}"), &e))?;
    require_regular(path, &meta, "read")?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io_error(&format!("opening {shown}"), &e))?;
    // The path may have been replaced between the two looks: judge what was opened.
    let meta = file
        .metadata()
        .map_err(|e| io_error(&format!("reading {shown}"), &e))?;
    require_regular(path, &meta, "read")?;
    // O_NONBLOCK stays set: regular files on disk ignore it, and a kernel pseudo-file whose
    // read would wait for an event (`/proc/kmsg`, tracefs pipes) fails at once instead of
    // holding a thread for as long as the event takes.
    let first = read_chunk(&file, 0, path)?;
    Ok((file, first))
}

/// Reads up to [`READ_CHUNK`] bytes at `offset`; empty at the end of the file.
fn read_chunk(file: &File, offset: u64, path: &Path) -> Result<Bytes, ApiError> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match file.read_at(&mut buf, offset) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Bytes::from(buf));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "{} is a pseudo-file whose reads wait for events: only regular files with \
                         contents can be read",
                        path.display()
                    ),
                ));
            }
            Err(e) => return Err(io_error(&format!("reading {}", path.display()), &e)),
        }
    }
}

/// `GET /v1/files?path=P`: streams the file.
pub(crate) async fn get(
    State(agent): AppState,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let path = Arc::new(query(q)?.path()?);
    let gate = agent.files.clone();
    let (file, first) = {
        let path = path.clone();
        gate.run(move || open_for_download(&path)).await?
    };
    let offset = first.len() as u64;
    let rest = futures_util::stream::unfold(Some((Arc::new(file), offset)), move |state| {
        let gate = gate.clone();
        let path = path.clone();
        async move {
            let (file, offset) = state?;
            let reader = file.clone();
            let read = gate.run(move || read_chunk(&reader, offset, &path)).await;
            match read {
                Ok(chunk) if chunk.is_empty() => None,
                Ok(chunk) => {
                    let next = offset + chunk.len() as u64;
                    Some((Ok(chunk), Some((file, next))))
                }
                // The reply has started: all that is left is to break the download.
                Err(e) => Some((Err(io::Error::other(e.message)), None)),
            }
        }
    });
    let done = first.is_empty();
    let first = futures_util::stream::once(async move { Ok::<_, io::Error>(first) });
    let body = if done {
        Body::empty()
    } else {
        Body::from_stream(first.chain(rest))
    };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// An upload's temporary file, removed unless the upload completed — also when the request
/// is dropped half-way because the client went away.
struct TempFile {
    path: PathBuf,
    kept: bool,
}

impl TempFile {
    /// The upload completed: the file (renamed by now) stays.
    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let path = std::mem::take(&mut self.path);
        // Off the runtime's workers when there is a runtime: an unlink can block too.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || {
                    let _ = std::fs::remove_file(path);
                });
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn temp_path(path: &Path) -> Result<PathBuf, ApiError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("path {} does not name a file", path.display()),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".chaos-upload-{}-{n}", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Checks what is at an upload's target and creates its temporary file. Only a regular file
/// (or a symbolic link, which the rename replaces) may be replaced; nothing at the path is
/// opened. The guard is made here, on the blocking thread, so that a temporary file created
/// for a request that has gone meanwhile is removed when the result is dropped.
fn create_upload(path: &Path, tmp: PathBuf, mode: u32) -> Result<(File, TempFile), ApiError> {
    let shown = path.display();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| io_error(&format!("creating directory {}", parent.display()), &e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {}
        Ok(meta) => require_regular(path, &meta, "written")?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&format!("writing {shown}"), &e)),
    }
    // O_EXCL: a new regular file, never something that appeared at this name.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_error(&format!("creating {shown}"), &e))?;
    Ok((
        file,
        TempFile {
            path: tmp,
            kept: false,
        },
    ))
}

/// Writes `data` to the upload's temporary file through the gate.
async fn write_chunk(
    gate: &FileGate,
    file: &Arc<File>,
    data: Bytes,
    shown: &Arc<str>,
) -> Result<(), ApiError> {
    let (file, shown) = (file.clone(), shown.clone());
    gate.run(move || {
        (&*file)
            .write_all(&data)
            .map_err(|e| io_error(&format!("writing {shown}"), &e))
    })
    .await
}

/// `PUT /v1/files?path=P&mode=M`: streams the body into a temporary file next to `P`, then
/// renames it over `P`, so readers never see a half-written file.
pub(crate) async fn put(
    State(agent): AppState,
    q: Result<Query<FileQuery>, QueryRejection>,
    body: Body,
) -> Result<Json<FileWritten>, Failure> {
    let q = query(q)?;
    let path = q.path()?;
    let mode = parse_mode(q.mode.as_deref())?;
    let shown: Arc<str> = path.display().to_string().into();
    let tmp = temp_path(&path)?;
    let gate = &agent.files;
    let (file, mut upload) = {
        let path = path.clone();
        gate.run(move || create_upload(&path, tmp, mode)).await?
    };
    let file = Arc::new(file);
    let mut pending = BytesMut::new();
    let mut bytes = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("upload of {shown} was interrupted: {e}"),
            )
        })?;
        bytes += chunk.len() as u64;
        pending.extend_from_slice(&chunk);
        if pending.len() >= WRITE_CHUNK {
            write_chunk(gate, &file, pending.split().freeze(), &shown).await?;
        }
    }
    if !pending.is_empty() {
        write_chunk(gate, &file, pending.freeze(), &shown).await?;
    }
    {
        let shown = shown.clone();
        gate.run(move || {
            // The umask may have narrowed the mode given at creation.
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_error(&format!("setting the mode of {shown}"), &e))?;
            drop(file);
            std::fs::rename(&upload.path, &path).map_err(|e| io_error(&format!("replacing {shown}"), &e))?;
            upload.keep();
            Ok(())
        })
        .await?;
    }
    tracing::debug!(path = %shown, bytes, "file written");
    Ok(Json(FileWritten { bytes }))
}

/// `DELETE /v1/files?path=P&recursive=B`.
pub(crate) async fn remove(
    State(agent): AppState,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<StatusCode, Failure> {
    let q = query(q)?;
    let path = q.path()?;
    let recursive = q.recursive.unwrap_or(false);
    agent
        .files
        .run(move || {
            let shown = path.display();
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| io_error(&format!("removing {shown}"), &e))?;
            let removed = if !meta.is_dir() {
                std::fs::remove_file(&path)
            } else if recursive {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_dir(&path)
            };
            removed.map_err(|e| match e.kind() {
                io::ErrorKind::DirectoryNotEmpty => ApiError::new(
                    ErrorKind::Conflict,
                    format!("directory {shown} is not empty; remove it with recursive=true"),
                ),
                _ => io_error(&format!("removing {shown}"), &e),
            })
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/files/stat?path=P` (symbolic links are not followed).
pub(crate) async fn stat(
    State(agent): AppState,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Json<FileStat>, Failure> {
    let path = query(q)?.path()?;
    let stat = agent
        .files
        .run(move || {
            std::fs::symlink_metadata(&path)
                .map(|meta| FileStat::from(&meta))
                .map_err(|e| io_error(&format!("stat {}", path.display()), &e))
        })
        .await?;
    Ok(Json(stat))
}

/// `GET /v1/files/list?path=P`: entries sorted by name.
pub(crate) async fn list(
    State(agent): AppState,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Json<Vec<DirEntry>>, Failure> {
    let path = query(q)?.path()?;
    let entries = agent
        .files
        .run(move || {
            let shown = path.display();
            let listing = |e: &io::Error| io_error(&format!("listing {shown}"), e);
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(&path).map_err(|e| listing(&e))? {
                let entry = entry.map_err(|e| listing(&e))?;
                // Entries can vanish between readdir and stat; skip those. (Not followed.)
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                entries.push(DirEntry {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    stat: FileStat::from(&meta),
                });
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        })
        .await?;
    Ok(Json(entries))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// Requests beyond the gate's slots wait without a thread, and one dropped while waiting
    /// never runs and gives its place up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_gate_bounds_blocking_work_and_forgets_dropped_waiters() {
        let gate = FileGate::with_slots(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let op = |hold: bool| {
            let (running, most, ran, release_rx) =
                (running.clone(), most.clone(), ran.clone(), release_rx.clone());
            move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                ran.fetch_add(1, Ordering::SeqCst);
                if hold {
                    let _ = release_rx.lock().unwrap().recv();
                }
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        };
        let holders: Vec<_> = (0..2)
            .map(|_| {
                let (gate, op) = (gate.clone(), op(true));
                tokio::spawn(async move { gate.run(op).await })
            })
            .collect();
        while running.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A third request waits; its client goes away.
        let waiter = {
            let (gate, op) = (gate.clone(), op(false));
            tokio::spawn(async move { gate.run(op).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ran.load(Ordering::SeqCst), 2, "the waiter ran past the gate");
        waiter.abort();
        let _ = waiter.await;
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        for h in holders {
            h.await.unwrap().unwrap();
        }
        // Both slots are free again, and the dropped waiter never ran.
        assert_eq!(gate.slots.available_permits(), 2);
        gate.run(op(false)).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 3);
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
