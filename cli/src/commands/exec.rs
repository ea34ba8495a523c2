//! `chaos exec`: runs a command on a node of a cluster started by `chaos up`, like `ssh host cmd`:
//! this process's stdin is streamed to it, its stdout and stderr to this process's, and its
//! exit code becomes this process's (128 + N when signal N killed it). SIGINT, SIGTERM, SIGHUP
//! and SIGQUIT received here are forwarded to the command's process group.
//!
//! With `--detach` the command runs in the background and its node process id is printed, for
//! process faults (`chaos fault inject … pause --process proc:ID`).

use std::io::Read;
use std::path::PathBuf;

use chaos::agent_client::AgentClient;
use chaos::cluster::{ByteReader, ByteWriter, ProcessControl};
use chaos::proto::{ErrorKind, ExitStatus, OutputSpec, ProcSpec, StdinSpec};
use chaos::{Process, Signal};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::BadInput;
use super::state::StateDir;

/// Exit code when the command does not exist on the node, as in shells.
const COMMAND_NOT_FOUND: u8 = 127;

/// `chaos exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// State directory given to `chaos up`.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// Do not forward stdin: the command reads /dev/null (for `chaos exec … &` in a terminal).
    #[arg(short = 'n', long)]
    pub no_stdin: bool,
    /// Set an environment variable for the command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory on the node [default: the node's root directory].
    #[arg(long, value_name = "PATH")]
    pub cwd: Option<String>,
    /// Start the command in the background and print its node process id and pid (for
    /// `chaos fault inject … pause|kill --process proc:ID`, `restart --proc ID`); stdin is /dev/null, output goes to
    /// --log or is discarded. The node kills it when the cluster stops.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// With --detach: append the command's stdout and stderr to this file on the node.
    #[arg(long, value_name = "PATH", requires = "detach")]
    pub log: Option<String>,
    /// The node to run on (n1, n2, …).
    pub node: String,
    /// The command and its arguments, after `--`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// Runs `chaos exec`; returns the exit code to leave with.
pub async fn run(args: ExecArgs) -> anyhow::Result<u8> {
    let dir = StateDir::new(&args.state);
    let state = dir.load_running()?;
    let node = state.node(&args.node)?;
    let (command, rest) = args
        .command
        .split_first()
        .ok_or_else(|| BadInput("no command given: chaos exec --state DIR NODE -- CMD ARGS...".into()))?;
    let client = dir.client(node)?;
    let mut spec = ProcSpec::new(command.clone(), rest.iter().cloned());
    spec.env = args.env.iter().cloned().collect();
    spec.cwd = args.cwd.clone();
    if args.detach {
        return start_detached(&client, spec, args.log.clone()).await;
    }
    spec.stdin = if args.no_stdin {
        StdinSpec::Null
    } else {
        StdinSpec::Pipe
    };
    let process = match client.exec(spec).await {
        Ok(p) => p,
        Err(e) if e.kind() == Some(ErrorKind::CommandNotFound) => {
            eprintln!("chaos exec: {e}");
            return Ok(COMMAND_NOT_FOUND);
        }
        Err(e) => return Err(e.into()),
    };
    let status = stream(process).await?;
    Ok(exit_code(&status))
}

/// Starts `spec` in the background (stdin null, output to `log` or discarded) and prints its
/// node process id and pid.
async fn start_detached(client: &AgentClient, mut spec: ProcSpec, log: Option<String>) -> anyhow::Result<u8> {
    let output = match log {
        Some(path) => OutputSpec::File { path, append: true },
        None => OutputSpec::Null,
    };
    spec.stdout = output.clone();
    spec.stderr = output;
    match client.start_detached(&spec).await {
        Ok(started) => {
            println!("{} {}", started.id, started.pid);
            Ok(0)
        }
        Err(e) if e.kind() == Some(ErrorKind::CommandNotFound) => {
            eprintln!("chaos exec: {e}");
            Ok(COMMAND_NOT_FOUND)
        }
        Err(e) => Err(e.into()),
    }
}

/// The shell convention: the exit code, or 128 + the signal that killed the process.
fn exit_code(status: &ExitStatus) -> u8 {
    match (status.code, status.signal) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

/// Streams stdio between this process and `process`, forwarding stop signals, until it exits.
async fn stream(process: Process) -> anyhow::Result<ExitStatus> {
    let control = process.control();
    let Process {
        stdin,
        stdout,
        stderr,
        ..
    } = process;
    if let Some(stdin) = stdin {
        forward_stdin(stdin);
    }
    let mut forward = ForwardedSignals::install()?;
    let outputs = async {
        tokio::join!(
            copy_out(stdout, tokio::io::stdout(), &*control),
            copy_out(stderr, tokio::io::stderr(), &*control),
        )
    };
    tokio::pin!(outputs);
    loop {
        tokio::select! {
            _ = &mut outputs => break,
            sig = forward.recv() => forward_signal(&*control, sig).await,
        }
    }
    loop {
        tokio::select! {
            status = control.wait() => return Ok(status?),
            sig = forward.recv() => forward_signal(&*control, sig).await,
        }
    }
}

async fn forward_signal(control: &dyn ProcessControl, signal: Signal) {
    if let Err(e) = control.signal(signal, true).await {
        eprintln!("chaos exec: forwarding {signal}: {e}");
    }
}

/// Copies one output stream to ours. If ours is closed (`chaos exec … | head -1`), the remote
/// process group gets SIGPIPE, as a local pipeline would.
async fn copy_out(
    reader: Option<ByteReader>,
    mut out: impl AsyncWrite + Unpin,
    control: &dyn ProcessControl,
) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if out.write_all(&buf[..n]).await.is_err() || out.flush().await.is_err() {
            let _ = control.signal(Signal(libc::SIGPIPE), true).await;
            return;
        }
    }
    let _ = out.flush().await;
}

/// Streams this process's stdin into `writer`, then closes it.
///
/// The reading happens on a plain thread, not a tokio blocking task: a terminal read may block
/// forever, and the runtime waits for its blocking tasks on shutdown but not for threads.
fn forward_stdin(mut writer: ByteWriter) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let spawned = std::thread::Builder::new()
        .name("chaos-exec-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("chaos exec: cannot read stdin ({e}); the command gets end of file");
    }
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            // The process may exit without reading its input: stop quietly.
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
}

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT, caught to be forwarded to the remote command.
struct ForwardedSignals(Vec<(Signal, tokio::signal::unix::Signal)>);

impl ForwardedSignals {
    fn install() -> anyhow::Result<Self> {
        let mut signals = Vec::new();
        for (number, kind) in [
            (libc::SIGINT, SignalKind::interrupt()),
            (libc::SIGTERM, SignalKind::terminate()),
            (libc::SIGHUP, SignalKind::hangup()),
            (libc::SIGQUIT, SignalKind::quit()),
        ] {
            let handler = signal(kind)
                .map_err(|e| anyhow::anyhow!("installing a handler for {}: {e}", Signal(number)))?;
            signals.push((Signal(number), handler));
        }
        Ok(Self(signals))
    }

    async fn recv(&mut self) -> Signal {
        let waits = self
            .0
            .iter_mut()
            .map(|(number, s)| Box::pin(async move { s.recv().await.map(|_| *number) }));
        let (got, _, _) = futures_util::future::select_all(waits).await;
        match got {
            Some(signal) => signal,
            // Signal streams never end while the runtime runs.
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let status = |code, signal| ExitStatus {
            code,
            signal,
            duration_us: 0,
        };
        assert_eq!(exit_code(&status(Some(0), None)), 0);
        assert_eq!(exit_code(&status(Some(3), None)), 3);
        assert_eq!(exit_code(&status(None, Some(9))), 137);
        assert_eq!(exit_code(&status(None, Some(15))), 143);
    }

    #[test]
    fn env_needs_a_name() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}
