//! `/v1/files`: streamed uploads and downloads, stat, list, remove.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::body::Body;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chaos_proto::{ApiError, DirEntry, ErrorKind, FileStat, FileWritten};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;

use crate::api::Failure;
use crate::procs::{absolute, io_error};

/// Buffer between the request body and the file: large writes keep syscalls few.
const WRITE_BUFFER: usize = 1 << 20;

/// Size of the chunks a download is sent in.
const READ_CHUNK: usize = 256 * 1024;

/// Default permissions of an uploaded file.
const DEFAULT_MODE: u32 = 0o644;

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

/// An upload's temporary file, removed unless the upload completed — also when the request
/// is dropped half-way because the client went away.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
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

/// `PUT /v1/files?path=P&mode=M`: streams the body into a temporary file next to `P`, then
/// renames it over `P`, so readers never see a half-written file.
pub(crate) async fn put(
    q: Result<Query<FileQuery>, QueryRejection>,
    body: Body,
) -> Result<Json<FileWritten>, Failure> {
    let q = query(q)?;
    let path = q.path()?;
    let mode = parse_mode(q.mode.as_deref())?;
    let shown = path.display().to_string();
    let tmp = temp_path(&path)?;
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io_error(&format!("creating directory {}", parent.display()), &e))?;
    }
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .await
        .map_err(|e| io_error(&format!("creating {shown}"), &e))?;
    let mut guard = TempFile {
        path: tmp.clone(),
        keep: false,
    };
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut bytes = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("upload of {shown} was interrupted: {e}"),
            )
        })?;
        out.write_all(&chunk)
            .await
            .map_err(|e| io_error(&format!("writing {shown}"), &e))?;
        bytes += chunk.len() as u64;
    }
    out.flush()
        .await
        .map_err(|e| io_error(&format!("writing {shown}"), &e))?;
    let file = out.into_inner();
    // The umask may have narrowed the mode given at creation.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .await
        .map_err(|e| io_error(&format!("setting the mode of {shown}"), &e))?;
    drop(file);
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|e| io_error(&format!("replacing {shown}"), &e))?;
    guard.keep = true;
    tracing::debug!(path = %shown, bytes, "file written");
    Ok(Json(FileWritten { bytes }))
}

/// `GET /v1/files?path=P`: streams the file.
pub(crate) async fn get(q: Result<Query<FileQuery>, QueryRejection>) -> Result<Response, Failure> {
    let path = query(q)?.path()?;
    let shown = path.display();
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| io_error(&format!("opening {shown}"), &e))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| io_error(&format!("reading {shown}"), &e))?;
    if meta.is_dir() {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("{shown} is a directory; list it instead"),
        )
        .into());
    }
    let body = Body::from_stream(ReaderStream::with_capacity(file, READ_CHUNK));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// `DELETE /v1/files?path=P&recursive=B`.
pub(crate) async fn remove(q: Result<Query<FileQuery>, QueryRejection>) -> Result<StatusCode, Failure> {
    let q = query(q)?;
    let path = q.path()?;
    let shown = path.display();
    let meta = tokio::fs::symlink_metadata(&path)
        .await
        .map_err(|e| io_error(&format!("removing {shown}"), &e))?;
    let removed = if !meta.is_dir() {
        tokio::fs::remove_file(&path).await
    } else if q.recursive.unwrap_or(false) {
        tokio::fs::remove_dir_all(&path).await
    } else {
        tokio::fs::remove_dir(&path).await
    };
    removed.map_err(|e| match e.kind() {
        std::io::ErrorKind::DirectoryNotEmpty => ApiError::new(
            ErrorKind::Conflict,
            format!("directory {shown} is not empty; remove it with recursive=true"),
        ),
        _ => io_error(&format!("removing {shown}"), &e),
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/files/stat?path=P` (symbolic links are not followed).
pub(crate) async fn stat(q: Result<Query<FileQuery>, QueryRejection>) -> Result<Json<FileStat>, Failure> {
    let path = query(q)?.path()?;
    let meta = tokio::fs::symlink_metadata(&path)
        .await
        .map_err(|e| io_error(&format!("stat {}", path.display()), &e))?;
    Ok(Json(FileStat::from(&meta)))
}

/// `GET /v1/files/list?path=P`: entries sorted by name.
pub(crate) async fn list(
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Json<Vec<DirEntry>>, Failure> {
    let path = query(q)?.path()?;
    let shown = path.display();
    let mut dir = tokio::fs::read_dir(&path)
        .await
        .map_err(|e| io_error(&format!("listing {shown}"), &e))?;
    let mut entries = Vec::new();
    while let Some(entry) = dir
        .next_entry()
        .await
        .map_err(|e| io_error(&format!("listing {shown}"), &e))?
    {
        // Entries can vanish between readdir and stat; skip those.
        let Ok(meta) = entry.metadata().await else {
            continue;
        };
        entries.push(DirEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            stat: FileStat::from(&meta),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(entries))
}
