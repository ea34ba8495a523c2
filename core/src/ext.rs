//! Conveniences built on the [`Node`] trait, once for every backend.
//!
//! ```no_run
//! # async fn demo(node: &dyn chaos::Node) -> chaos::Result<()> {
//! use chaos::NodeExt;
//! let path = format!("{}/hello", node.root_dir());
//! node.send_bytes(&path, b"Hello, world!".to_vec(), 0o644).await?;
//! let out = node.run("cat", [path.as_str()]).await?;
//! assert!(out.status.success());
//! assert_eq!(out.stdout, b"Hello, world!");
//! # Ok(()) }
//! ```

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chaos_proto::{ExitStatus, ProcSpec, Signal, StdinSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::{ByteReader, Node, Process};
use crate::{Error, Result};

/// Everything a finished process produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// All of its stdout.
    pub stdout: Vec<u8>,
    /// All of its stderr.
    pub stderr: Vec<u8>,
}

impl Output {
    /// stdout as text (lossy UTF-8).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy UTF-8).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Bounds `fut` by `after`; on expiry returns [`Error::Timeout`] naming `node` and `what`.
pub async fn with_timeout<T>(
    node: &str,
    what: &str,
    after: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            node: node.to_string(),
            what: what.to_string(),
            after,
        }),
    }
}

async fn read_all(node: &str, what: &str, reader: Option<ByteReader>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut r) = reader {
        r.read_to_end(&mut buf)
            .await
            .map_err(|e| Error::io(format!("node {node}: reading {what}"), e))?;
    }
    Ok(buf)
}

/// Feeds `stdin` to `proc`, drains its output and waits for it.
async fn collect(node: &str, proc: Process, stdin: Option<Vec<u8>>) -> Result<Output> {
    // Take everything out of `proc` first: its stdio halves are not `Sync`, so it must not be
    // borrowed across an await.
    let control = proc.control();
    let Process {
        stdin: stdin_w,
        stdout,
        stderr,
        ..
    } = proc;
    let feed = async {
        if let (Some(mut w), Some(data)) = (stdin_w, stdin) {
            // A process may exit without reading its input; a broken pipe is not an error.
            let _ = w.write_all(&data).await;
            let _ = w.shutdown().await;
        }
        Ok::<_, Error>(())
    };
    let (_, stdout, stderr) = tokio::try_join!(
        feed,
        read_all(node, "stdout", stdout),
        read_all(node, "stderr", stderr)
    )?;
    let status = control.wait().await?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Conveniences available on every [`Node`].
#[async_trait]
pub trait NodeExt {
    /// Runs `command args...` to completion and collects its output.
    async fn run<I, S>(&self, command: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S> + Send,
        S: Into<String>;

    /// Runs `spec` to completion, feeding it `stdin` (when given), and collects its output.
    async fn run_spec(&self, spec: ProcSpec, stdin: Option<Vec<u8>>) -> Result<Output>;

    /// Like [`NodeExt::run_spec`], bounded by `timeout`: on expiry the process group is killed
    /// and [`Error::Timeout`] returned.
    async fn run_timeout(&self, spec: ProcSpec, stdin: Option<Vec<u8>>, timeout: Duration) -> Result<Output>;

    /// Writes `bytes` to `path` on the node.
    async fn send_bytes(&self, path: &str, bytes: Vec<u8>, mode: u32) -> Result<u64>;

    /// Reads the whole file at `path` from the node.
    async fn read_bytes(&self, path: &str) -> Result<Vec<u8>>;

    /// Copies the local file `from` to `to` on the node, streaming, with the local file's
    /// permission bits (like `docker cp` into a container). Returns the bytes written.
    async fn upload(&self, from: &Path, to: &str) -> Result<u64>;

    /// Copies the file `from` on the node to the local path `to` (created or truncated),
    /// streaming (like `docker cp` out of a container). Returns the bytes written.
    async fn download(&self, from: &str, to: &Path) -> Result<u64>;
}

/// Buffer of [`NodeExt::upload`] and [`NodeExt::download`]: each local file operation is a
/// hop to a blocking thread, so they are made few and large.
const LOCAL_FILE_BUFFER: usize = 1 << 20;

#[async_trait]
impl<T: Node + ?Sized> NodeExt for T {
    async fn run<I, S>(&self, command: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S> + Send,
        S: Into<String>,
    {
        self.run_spec(ProcSpec::new(command, args), None).await
    }

    async fn run_spec(&self, mut spec: ProcSpec, stdin: Option<Vec<u8>>) -> Result<Output> {
        if stdin.is_some() {
            spec.stdin = StdinSpec::Pipe;
        }
        let proc = self.start(spec).await?;
        collect(self.name(), proc, stdin).await
    }

    async fn run_timeout(
        &self,
        mut spec: ProcSpec,
        stdin: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Output> {
        let what = format!("running {}", spec.command);
        if stdin.is_some() {
            spec.stdin = StdinSpec::Pipe;
        }
        let proc = self.start(spec).await?;
        let control = proc.control();
        match with_timeout(self.name(), &what, timeout, collect(self.name(), proc, stdin)).await {
            Err(e @ Error::Timeout { .. }) => {
                let _ = control.signal(Signal::KILL, true).await;
                Err(e)
            }
            other => other,
        }
    }

    async fn send_bytes(&self, path: &str, bytes: Vec<u8>, mode: u32) -> Result<u64> {
        self.send_file(path, mode, Box::pin(std::io::Cursor::new(bytes)))
            .await
    }

    async fn read_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let reader = self.read_file(path).await?;
        read_all(self.name(), path, Some(reader)).await
    }

    async fn upload(&self, from: &Path, to: &str) -> Result<u64> {
        let context = || format!("uploading {} to {}:{to}", from.display(), self.name());
        let file = tokio::fs::File::open(from)
            .await
            .map_err(|e| Error::io(context(), e))?;
        let mode = file
            .metadata()
            .await
            .map_err(|e| Error::io(context(), e))?
            .permissions()
            .mode()
            & 0o7777;
        let reader = tokio::io::BufReader::with_capacity(LOCAL_FILE_BUFFER, file);
        self.send_file(to, mode, Box::pin(reader)).await
    }

    async fn download(&self, from: &str, to: &Path) -> Result<u64> {
        let context = || format!("downloading {}:{from} to {}", self.name(), to.display());
        let mut reader = self.read_file(from).await?;
        let file = tokio::fs::File::create(to)
            .await
            .map_err(|e| Error::io(context(), e))?;
        let mut writer = tokio::io::BufWriter::with_capacity(LOCAL_FILE_BUFFER, file);
        let bytes = tokio::io::copy(&mut reader, &mut writer)
            .await
            .map_err(|e| Error::io(context(), e))?;
        writer.shutdown().await.map_err(|e| Error::io(context(), e))?;
        Ok(bytes)
    }
}
