//! The server loop: TLS accept, HTTP/1.1 with upgrades, shutdown and the heartbeat watchdog.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::api::{self, Agent};
use crate::faults::Faults;
use crate::{AgentConfig, AgentError, HeartbeatLossAction, Stopped, lease, procs, tls};

/// Bound of a TLS handshake, so a silent client cannot hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound of reading a request head — also of an idle keep-alive connection, so it must exceed
/// the runner's pool idle timeout (30 s).
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long replies in flight (such as the shutdown's own 204) may take once shutting down.
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(1);

fn check_dirs(config: &AgentConfig) -> Result<(), AgentError> {
    if !config.root_dir.is_dir() {
        return Err(AgentError::BadDir {
            what: "--root-dir",
            path: config.root_dir.clone(),
            message: "does not exist or is not a directory".into(),
        });
    }
    if let Some(dir) = &config.cgroup {
        procs::check_cgroup_dir(dir).map_err(|message| AgentError::BadDir {
            what: "--cgroup",
            path: dir.clone(),
            message,
        })?;
    }
    Ok(())
}

/// Heals every fault without closing the fault table (the agent keeps serving).
async fn heal_all(agent: &Agent, why: &str) {
    match agent.faults.heal_all(false).await {
        Ok(healed) if healed.is_empty() => {}
        Ok(healed) => tracing::info!(?healed, "{why}: healed every fault"),
        Err(e) => tracing::error!("{why}: {}", e.message),
    }
}

/// Resolves when the heartbeat is lost with an action that stops the agent. With
/// [`HeartbeatLossAction::None`] it kills the trees itself, logs, and keeps watching.
async fn watchdog(agent: &Agent, action: HeartbeatLossAction) -> HeartbeatLossAction {
    loop {
        agent.heartbeat.expired().await;
        let timeout = agent.heartbeat.timeout();
        match action {
            HeartbeatLossAction::Wait => {
                tracing::warn!(
                    "no heartbeat for {timeout:?}: ending the run and waiting for the next runner"
                );
                lease::end_run(agent, "heartbeat loss").await;
                agent.heartbeat.next_beat().await;
                tracing::info!("heartbeats resumed");
            }
            HeartbeatLossAction::None => {
                tracing::warn!(
                    "no heartbeat for {timeout:?}: healing every fault, killing every process tree and \
                     continuing to serve"
                );
                heal_all(agent, "heartbeat loss").await;
                agent.procs.kill_all(false).await;
                agent.heartbeat.next_beat().await;
                tracing::info!("heartbeats resumed");
            }
            other => {
                tracing::warn!(
                    "no heartbeat for {timeout:?}: healing every fault, killing every process tree, then {other:?}"
                );
                return other;
            }
        }
    }
}

pub(crate) async fn serve(
    config: Arc<AgentConfig>,
    ready: impl FnOnce(SocketAddr),
) -> Result<Stopped, AgentError> {
    let tls = tls::server_config(&config.tls_dir)?;
    check_dirs(&config)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| AgentError::Bind {
        addr: config.listen,
        source,
    })?;

    // Heals what a previous agent left (blocking netlink and cgroup work) before serving.
    let state_dir = config.effective_state_dir();
    let has_cgroup = config.cgroup.is_some();
    let network_faults = config.network_faults;
    let faults =
        tokio::task::spawn_blocking(move || Faults::open(&state_dir, addr, has_cgroup, network_faults))
            .await
            .map_err(|e| AgentError::Faults {
                path: config.effective_state_dir(),
                message: format!("opening the fault state failed: {e}"),
            })??;
    let agent = Arc::new(Agent::new(
        config.root_dir.clone(),
        config.cgroup.clone(),
        faults,
        config.heartbeat_timeout,
        config.on_heartbeat_loss == HeartbeatLossAction::Wait,
    ));
    if agent.persistent {
        agent.leases.remove_leftover_runs();
    }
    let service = TowerToHyperService::new(api::router(agent.clone()));
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();

    tracing::info!(%addr, heartbeat_timeout = ?config.heartbeat_timeout, "chaos-agent listening");
    ready(addr);

    let watchdog = watchdog(&agent, config.on_heartbeat_loss);
    tokio::pin!(watchdog);
    let stopped = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    if let Ok(local) = tcp.local_addr() {
                        agent.faults.note_control_addr(local);
                    }
                    let acceptor = acceptor.clone();
                    let builder = builder.clone();
                    let service = service.clone();
                    let watcher = graceful.watcher();
                    connections.spawn(async move {
                        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::warn!(%peer, "TLS handshake failed: {}", tls::handshake_error(&e));
                                return;
                            }
                            Err(_) => {
                                tracing::warn!(%peer, "TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}");
                                return;
                            }
                        };
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, "connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = agent.shutdown.notified() => break None,
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: shutting down");
                break None;
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: shutting down");
                break None;
            }
            action = &mut watchdog => break Some(action),
        }
    };
    drop(listener);
    // Heal first: it thaws frozen processes, so the kills below land at once.
    let why = if stopped.is_some() {
        "heartbeat loss"
    } else {
        "shutdown"
    };
    agent.faults.shutdown(why).await;
    agent.procs.kill_all(true).await;
    match stopped {
        None => {
            if tokio::time::timeout(GRACEFUL_TIMEOUT, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::debug!("connections still busy after {GRACEFUL_TIMEOUT:?}; closing them");
            }
            tracing::info!("shut down");
            Ok(Stopped::Shutdown)
        }
        Some(HeartbeatLossAction::PowerOff) => {
            tracing::warn!("powering off");
            nix::unistd::sync();
            match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
                Err(e) => Err(AgentError::PowerOff(e)),
                Ok(never) => match never {},
            }
        }
        Some(_) => Ok(Stopped::HeartbeatLost),
    }
}
