//! The supervisor's hook for container nodes ([`crate::backend::supervisor`]): a container stops
//! when its agent (the entrypoint, under docker-init) dies, and is started again unless it was
//! stopped on purpose.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::query_parameters::WaitContainerOptionsBuilder;
use futures_util::StreamExt;

use super::{DAEMON_BOUND, Inner, backend_error, bounded, within};
use crate::Result;
use crate::agent_client::AgentClient;
use crate::backend::supervisor::AgentKeeper;

/// The supervisor's hook for one container node (see [`crate::backend::supervisor`]). Holds
/// its cluster weakly, so a dropped cluster is cleaned up while its supervisor still runs.
pub(super) struct DockerKeeper {
    pub(super) cluster: Weak<Inner>,
    pub(super) docker: Docker,
    pub(super) node: String,
    pub(super) container: String,
    pub(super) client: Arc<AgentClient>,
}

#[async_trait]
impl AgentKeeper for DockerKeeper {
    async fn exit_status(&self) -> Option<String> {
        match within(DAEMON_BOUND, self.docker.inspect_container(&self.container, None)).await {
            Ok(info) => {
                let state = info.state?;
                if state.running == Some(true) {
                    return None;
                }
                Some(format!(
                    "container {} {} with code {}",
                    self.container,
                    state
                        .status
                        .map_or_else(|| "not running".to_string(), |s| s.to_string()),
                    state.exit_code.unwrap_or_default()
                ))
            }
            Err(f) if f.status() == Some(404) => Some(format!("container {} is gone", self.container)),
            // The daemon does not answer: nothing to conclude.
            Err(_) => None,
        }
    }

    /// Docker says when a container stops; the agent is its entrypoint (under docker-init), so
    /// the container stops when the agent dies.
    async fn agent_exited(&self) -> String {
        loop {
            let options = WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build();
            let mut wait = self.docker.wait_container(&self.container, Some(options));
            match wait.next().await {
                Some(Ok(exit)) => {
                    return format!(
                        "container {} exited with code {}",
                        self.container, exit.status_code
                    );
                }
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, error })) => {
                    return format!("container {} exited with code {code} {error}", self.container)
                        .trim_end()
                        .to_string();
                }
                // The daemon connection ended or timed out: look, then wait again.
                _ => {}
            }
            if let Some(how) = self.exit_status().await {
                return how;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn down_on_purpose(&self) -> bool {
        self.cluster
            .upgrade()
            .is_some_and(|inner| inner.lock().held_down.contains(&self.node))
    }

    fn torn_down(&self) -> bool {
        self.cluster.upgrade().is_none_or(|inner| inner.lock().cleaned)
    }

    async fn restart_agent(&self) -> Result<()> {
        let inner = self
            .cluster
            .upgrade()
            .ok_or_else(|| backend_error(format!("node {}: its cluster is gone", self.node)))?;
        if inner.lock().cleaned {
            return Err(backend_error(format!(
                "node {}: cleaned up, not restarted",
                self.node
            )));
        }
        bounded(
            format!("node {}: starting container {} again", self.node, self.container),
            inner.docker.start_container(&self.container, None),
        )
        .await?;
        inner.wait_ready(&self.node, &self.container, &self.client).await
    }
}
