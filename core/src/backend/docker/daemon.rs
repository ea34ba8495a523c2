//! Talking to the Docker daemon: connecting, bounding every call, saying what failed.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bollard::Docker;

use super::{DAEMON_BOUND, backend_error};
use crate::{Error, Result};

/// A daemon call that failed, or did not answer within its bound.
#[derive(Debug)]
pub(crate) enum CallFailure {
    /// The daemon (or the connection to it) said no.
    Daemon(bollard::errors::Error),
    /// No answer within this bound.
    NoAnswer(Duration),
}

impl CallFailure {
    /// The HTTP status of the daemon's refusal, when it sent one.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            CallFailure::Daemon(bollard::errors::Error::DockerResponseServerError {
                status_code, ..
            }) => Some(*status_code),
            _ => None,
        }
    }

    /// The daemon's own message when it sent one.
    pub(super) fn daemon_message(&self) -> Option<&str> {
        match self {
            CallFailure::Daemon(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                Some(message)
            }
            _ => None,
        }
    }

    /// One line: what was being done (`context`), then why it failed.
    pub(crate) fn describe(&self, context: &str) -> String {
        match self {
            CallFailure::Daemon(bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            }) => {
                format!("{context}: {message} (HTTP {status_code})")
            }
            CallFailure::Daemon(e) => format!("{context}: {e}"),
            CallFailure::NoAnswer(bound) => {
                format!("{context}: the Docker daemon did not answer within {bound:?}")
            }
        }
    }
}

/// Runs one daemon call within `bound`.
pub(crate) async fn within<T>(
    bound: Duration,
    call: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, CallFailure> {
    match tokio::time::timeout(bound, call).await {
        Ok(result) => result.map_err(CallFailure::Daemon),
        Err(_) => Err(CallFailure::NoAnswer(bound)),
    }
}

/// Runs one daemon call within [`DAEMON_BOUND`]; the error says what was being done.
pub(super) async fn bounded<T>(
    context: impl AsRef<str>,
    call: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T> {
    within(DAEMON_BOUND, call)
        .await
        .map_err(|f| backend_error(f.describe(context.as_ref())))
}

/// Whether starting a container failed because the host port it publishes is taken.
pub(super) fn is_port_taken(e: &Error) -> bool {
    let text = e.to_string();
    text.contains("port is already allocated") || text.contains("address already in use")
}

/// Where the daemon is, for messages.
pub(crate) fn daemon_address() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string())
}

/// Connects to the daemon `DOCKER_HOST` names (a unix socket by default; `tcp://` with
/// `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` for TLS), negotiating the API version, within a
/// few seconds.
pub async fn connect() -> Result<Docker> {
    let unreachable = |why: String| {
        backend_error(format!(
            "no Docker daemon reachable at {} ({why}); start one, or set DOCKER_HOST",
            daemon_address()
        ))
    };
    let docker = Docker::connect_with_defaults().map_err(|e| unreachable(e.to_string()))?;
    let bound = Duration::from_secs(5);
    let docker = tokio::time::timeout(bound, docker.negotiate_version())
        .await
        .map_err(|_| unreachable(format!("no answer within {bound:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::time::timeout(bound, docker.ping())
        .await
        .map_err(|_| unreachable(format!("no answer within {bound:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
}

/// Whether the docker backend can run here: `Err` holds one line saying what is missing and what
/// to do, without the backend's name (the caller's error adds it once).
///
/// Asks the daemon for a ping, on a thread of its own so it works inside and outside a runtime.
pub fn availability() -> Result<(), String> {
    let ping = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting a runtime: {e}"))?;
        runtime.block_on(connect()).map(drop).map_err(|e| match e {
            Error::Backend { message, .. } => message,
            other => other.to_string(),
        })
    });
    ping.join()
        .unwrap_or_else(|_| Err("the availability check panicked".into()))
}

/// Where the runner dials published agent ports: the host part of `DOCKER_HOST=tcp://HOST:PORT`
/// (resolved), or loopback for a local daemon.
pub(super) async fn daemon_host_ip() -> Result<IpAddr> {
    let address = daemon_address();
    let Some(rest) = address.strip_prefix("tcp://") else {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:2376")
    };
    let mut found = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(&with_port))
        .await
        .map_err(|_| backend_error(format!("resolving DOCKER_HOST {address}: no answer within 5s")))?
        .map_err(|e| Error::io(format!("resolving DOCKER_HOST {address}"), e))?;
    found
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| backend_error(format!("DOCKER_HOST {address} resolves to no address")))
}

/// Whether the daemon runs on this host, so it can bind-mount files the runner writes: its
/// name (the host name of the machine it runs on) is this host's. A socket forwarded from
/// another machine, or a daemon in a VM (Docker Desktop), answers with another name.
pub(super) async fn shares_file_system(docker: &Docker) -> bool {
    within(DAEMON_BOUND, docker.info())
        .await
        .is_ok_and(|info| info.name.as_deref() == Some(crate::backend::owner::hostname()))
}

/// Fails with a clear message when `name` is not an image the daemon has.
pub(super) async fn check_user_image(docker: &Docker, name: &str) -> Result<()> {
    match within(DAEMON_BOUND, docker.inspect_image(name)).await {
        Ok(_) => Ok(()),
        Err(f) if f.status() == Some(404) => Err(backend_error(format!(
            "image {name:?} not found on the Docker daemon at {}: chaos never pulls images; build \
             or load it there first (`docker build -t {name} …`, `docker load`), check `docker \
             images`, or leave the image unset to use the default node image",
            daemon_address()
        ))),
        Err(f) => Err(backend_error(f.describe(&format!("inspecting image {name:?}")))),
    }
}
