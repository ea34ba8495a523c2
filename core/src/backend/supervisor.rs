//! Agent supervision, shared by every backend that runs `chaos-agent` (netns, docker): the runner
//! heartbeats each agent and, when one dies without being asked to, starts it again in its node.
//!
//! Why: an agent heals its faults when their TTL passes — but only while it runs. A SIGKILLed
//! agent leaves its drop rules, queue rules and frozen cgroups in place, and on `netns` nobody
//! else would ever remove them. The agent records everything in its state directory before
//! installing it and heals what a predecessor left when it starts, so restarting it in the same
//! node (same namespace, cgroup, listen address, TLS and state directory) is what makes faults
//! expire even when their agent was killed.
//!
//! One task per node (`Supervisor::watch`) does both jobs:
//! - it heartbeats the agent every interval (the agent's watchdog needs them), and
//! - it waits for the agent to end: through the backend's `AgentKeeper::agent_exited` (netns:
//!   the runner's `Child`; docker: the container's exit), or after a failed heartbeat through
//!   `AgentKeeper::exit_status`.
//!
//! A dead agent is restarted at once, unless the cluster is being cleaned up, the agent was
//! asked to shut down ([`AgentClient::shutdown_requested`]), or the backend keeps it down on
//! purpose (a Docker `container_stop` fault). Restarts are bounded: after
//! [`RestartPolicy::max_restarts`] restarts or failed attempts within
//! [`RestartPolicy::window`] the node is reported failed and left alone; between attempts the
//! wait doubles from [`RestartPolicy::first_backoff`] up to [`RestartPolicy::max_backoff`].
//!
//! Every decision is logged (`tracing`) and sent as an [`AgentEvent`] to subscribers
//! ([`crate::Cluster::agent_events`]); the scenario engine writes them to `events.jsonl`.
//!
//! A backend adds supervision by implementing the small `AgentKeeper` hook for one node — how
//! to see the agent end, whether it is down on purpose, how to start it again — and calling
//! `Supervisor::watch` once the node's agent answered its first heartbeat.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::agent_client::AgentClient;

/// How often `AgentKeeper::agent_exited`'s default implementation looks.
const EXIT_POLL: Duration = Duration::from_millis(100);

/// Events kept for a subscriber that falls behind.
const EVENT_BUFFER: usize = 256;

/// What the supervisor saw or did about a node's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The agent ended without being asked to.
    AgentDied {
        /// The node.
        node: String,
        /// How it ended (exit status, signal, container state).
        how: String,
    },
    /// The agent was started again and answers a heartbeat; it healed what its predecessor left.
    AgentRestarted {
        /// The node.
        node: String,
        /// Restarts of this node within the policy's window, this one included.
        attempt: u32,
        /// From noticing the death to the new agent answering.
        downtime_ms: u64,
    },
    /// One restart attempt failed; another follows after a backoff unless the node is failed.
    AgentRestartFailed {
        /// The node.
        node: String,
        /// Restarts of this node within the policy's window, this one included.
        attempt: u32,
        /// Why.
        error: String,
    },
    /// Too many restarts in a short time: the node is left down and reported failed.
    NodeFailed {
        /// The node.
        node: String,
        /// Why it was given up.
        reason: String,
    },
    /// Creation progress of one `create_nodes` call: `ready` of its `total` nodes answer
    /// heartbeats, `node` the latest. Sent about fifty times per call at most (and for the last
    /// node), so a thousand nodes do not flood subscribers.
    NodesReady {
        /// The node that became ready last.
        node: String,
        /// Nodes of the call ready so far.
        ready: u32,
        /// Nodes the call creates.
        total: u32,
    },
}

impl AgentEvent {
    /// The event's name, as written to `events.jsonl` (`agent_died`, `agent_restarted`, …).
    pub fn name(&self) -> &'static str {
        match self {
            AgentEvent::AgentDied { .. } => "agent_died",
            AgentEvent::AgentRestarted { .. } => "agent_restarted",
            AgentEvent::AgentRestartFailed { .. } => "agent_restart_failed",
            AgentEvent::NodeFailed { .. } => "node_failed",
            AgentEvent::NodesReady { .. } => "nodes_ready",
        }
    }

    /// The node the event is about.
    pub fn node(&self) -> &str {
        match self {
            AgentEvent::AgentDied { node, .. }
            | AgentEvent::AgentRestarted { node, .. }
            | AgentEvent::AgentRestartFailed { node, .. }
            | AgentEvent::NodeFailed { node, .. }
            | AgentEvent::NodesReady { node, .. } => node,
        }
    }
}

impl std::fmt::Display for AgentEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentEvent::AgentDied { node, how } => write!(f, "node {node}: agent died ({how})"),
            AgentEvent::AgentRestarted {
                node,
                attempt,
                downtime_ms,
            } => write!(
                f,
                "node {node}: agent restarted (restart {attempt}, down {downtime_ms} ms)"
            ),
            AgentEvent::AgentRestartFailed { node, attempt, error } => {
                write!(f, "node {node}: agent restart {attempt} failed: {error}")
            }
            AgentEvent::NodeFailed { node, reason } => write!(f, "node {node} failed: {reason}"),
            AgentEvent::NodesReady { ready, total, .. } => write!(f, "{ready}/{total} nodes ready"),
        }
    }
}

/// How hard the supervisor tries.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Restarts (successful or not) allowed within [`RestartPolicy::window`]; one more and the
    /// node is failed.
    pub max_restarts: u32,
    /// The window restarts are counted in: an agent that keeps running longer than this starts
    /// with a clean slate.
    pub window: Duration,
    /// Wait before the second restart within the window (the first one is immediate).
    pub first_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(60),
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RestartPolicy {
    /// The wait before the `n`th restart within the window (1-based): none for the first.
    fn backoff(&self, n: u32) -> Duration {
        if n <= 1 {
            return Duration::ZERO;
        }
        let doublings = (n - 2).min(16);
        (self.first_backoff * 2u32.pow(doublings)).min(self.max_backoff)
    }
}

/// What a backend tells the supervisor about one node's agent. Implementations hold no strong
/// reference to their cluster (a `Weak`, or only what they need), so a dropped cluster is
/// dropped even while its supervisor tasks run.
#[async_trait]
pub(crate) trait AgentKeeper: Send + Sync + 'static {
    /// `None` while the agent runs; how it ended once it does not.
    async fn exit_status(&self) -> Option<String>;

    /// Resolves once the agent is not running, with how it ended. The default looks every
    /// 100 ms; a backend that can be told (a container's exit) overrides it.
    async fn agent_exited(&self) -> String {
        loop {
            if let Some(how) = self.exit_status().await {
                return how;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// Whether the agent is down on purpose right now (a `container_stop` fault, a node
    /// restart in progress, the cluster being cleaned up): not restarted, looked at again later.
    fn down_on_purpose(&self) -> bool {
        false
    }

    /// Whether the node is gone (torn down, its cluster dropped): the supervisor stops
    /// watching it.
    fn torn_down(&self) -> bool {
        false
    }

    /// Starts the agent again in its node and returns once it answers a heartbeat. Must refuse
    /// (with an error) once the node is being torn down.
    async fn restart_agent(&self) -> Result<()>;
}

/// The agent supervisor of one cluster. See the [module documentation](self).
pub(crate) struct Supervisor {
    policy: RestartPolicy,
    events: broadcast::Sender<AgentEvent>,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Supervisor {
    /// A supervisor watching nothing yet.
    pub(crate) fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            events: broadcast::channel(EVENT_BUFFER).0,
            stop: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Reports creation progress ([`AgentEvent::NodesReady`]), thinned to about fifty events
    /// per call.
    pub(crate) fn node_ready(&self, node: &str, ready: u32, total: u32) {
        let step = (total / 50).max(1);
        if ready == total || ready % step == 0 {
            tracing::debug!("{ready}/{total} nodes ready");
            let _ = self.events.send(AgentEvent::NodesReady {
                node: node.to_string(),
                ready,
                total,
            });
        }
    }

    /// Events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// Heartbeats `client`'s agent every `interval` and restarts it through `keeper` when it
    /// dies, until [`Supervisor::stop`]. Call once per node, after its first heartbeat.
    pub(crate) fn watch(&self, client: Arc<AgentClient>, keeper: Arc<dyn AgentKeeper>, interval: Duration) {
        if self.stop.is_cancelled() {
            return;
        }
        let watched = Watched {
            node: client.node().to_string(),
            client,
            keeper,
            interval,
            policy: self.policy,
            events: self.events.clone(),
            stop: self.stop.clone(),
        };
        let stop = self.stop.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = watched.run() => {}
            }
        });
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Stops heartbeating and restarting, and waits until no restart is in flight. Call before
    /// tearing nodes down, so a restart never races the teardown.
    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            // Cancelled tasks end at their next await; a panic in one is not ours to propagate.
            let _ = task.await;
        }
    }

    /// [`Supervisor::stop`] without waiting, for `Drop`: every task is cancelled and aborted.
    /// Backends must still refuse restarts of torn-down nodes ([`AgentKeeper::restart_agent`]),
    /// since a task running on another thread may be mid-restart.
    pub(crate) fn stop_now(&self) {
        self.stop.cancel();
        for task in std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner())) {
            task.abort();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// One supervised node.
struct Watched {
    node: String,
    client: Arc<AgentClient>,
    keeper: Arc<dyn AgentKeeper>,
    interval: Duration,
    policy: RestartPolicy,
    events: broadcast::Sender<AgentEvent>,
    stop: CancellationToken,
}

impl Watched {
    fn emit(&self, event: AgentEvent) {
        match &event {
            AgentEvent::AgentDied { .. } | AgentEvent::AgentRestartFailed { .. } => {
                tracing::warn!(node = %self.node, "{event}");
            }
            AgentEvent::AgentRestarted { .. } => tracing::info!(node = %self.node, "{event}"),
            AgentEvent::NodeFailed { .. } => tracing::error!(node = %self.node, "{event}"),
            AgentEvent::NodesReady { .. } => tracing::debug!("{event}"),
        }
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// Whether the agent's end is expected: nothing to restart, now or later.
    fn expected_end(&self) -> bool {
        self.stop.is_cancelled() || self.client.shutdown_requested() || self.keeper.torn_down()
    }

    async fn run(self) {
        // Times of the restarts within the policy's window.
        let mut recent: VecDeque<Instant> = VecDeque::new();
        loop {
            let how = self.until_dead().await;
            if self.expected_end() {
                return;
            }
            if self.keeper.down_on_purpose() {
                // E.g. a container stopped by a fault: its heal starts it again. Look again
                // once it is no longer held down.
                while self.keeper.down_on_purpose() {
                    tokio::time::sleep(EXIT_POLL).await;
                }
                continue;
            }
            let noticed = Instant::now();
            self.emit(AgentEvent::AgentDied {
                node: self.node.clone(),
                how,
            });
            loop {
                let now = Instant::now();
                while recent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.policy.window)
                {
                    recent.pop_front();
                }
                recent.push_back(now);
                let attempt = recent.len() as u32;
                if attempt > self.policy.max_restarts {
                    self.emit(AgentEvent::NodeFailed {
                        node: self.node.clone(),
                        reason: format!(
                            "its agent needed more than {} restarts within {:?}; not restarted again",
                            self.policy.max_restarts, self.policy.window
                        ),
                    });
                    return;
                }
                tokio::time::sleep(self.policy.backoff(attempt)).await;
                if self.expected_end() {
                    return;
                }
                match self.keeper.restart_agent().await {
                    Ok(()) => {
                        self.emit(AgentEvent::AgentRestarted {
                            node: self.node.clone(),
                            attempt,
                            downtime_ms: noticed.elapsed().as_millis() as u64,
                        });
                        break;
                    }
                    Err(e) => {
                        if self.expected_end() {
                            return;
                        }
                        self.emit(AgentEvent::AgentRestartFailed {
                            node: self.node.clone(),
                            attempt,
                            error: e.to_string(),
                        });
                    }
                }
            }
        }
    }

    /// Heartbeats until the agent is seen dead; returns how it ended.
    async fn until_dead(&self) -> String {
        tokio::select! {
            how = self.keeper.agent_exited() => how,
            how = self.heartbeats() => how,
        }
    }

    /// Heartbeats every interval; after a failed one, asks the backend whether the agent still
    /// runs (a failure alone may be a network fault or a paused container).
    async fn heartbeats(&self) -> String {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) = self.client.heartbeat().await {
                tracing::warn!(node = %self.node, "heartbeat failed: {e}");
                if let Some(how) = self.keeper.exit_status().await {
                    return how;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::Error;
    use crate::certs::{self, ClusterCa};

    /// A client of an agent that is not there: every heartbeat is refused at once.
    fn client_of_nobody() -> Arc<AgentClient> {
        let ca = ClusterCa::generate("supervisor-test").unwrap();
        let tls = certs::client_config(ca.cert_pem(), &ca.issue_runner().unwrap()).unwrap();
        // Port 1 on loopback: nothing listens there.
        Arc::new(AgentClient::new("n1", "127.0.0.1:1".parse().unwrap(), tls))
    }

    /// A node whose agent is always dead and cannot be started: what a supervisor must give up on.
    struct Hopeless {
        restarts: AtomicU32,
    }

    #[async_trait]
    impl AgentKeeper for Hopeless {
        async fn exit_status(&self) -> Option<String> {
            Some("exit status: 1".into())
        }

        async fn restart_agent(&self) -> Result<()> {
            self.restarts.fetch_add(1, Ordering::SeqCst);
            Err(Error::backend("test", "the agent binary is gone"))
        }
    }

    fn quick_policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(60),
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
        }
    }

    #[tokio::test]
    async fn a_node_that_cannot_be_restarted_is_given_up_after_the_bound() {
        let supervisor = Supervisor::new(quick_policy());
        let mut events = supervisor.subscribe();
        let keeper = Arc::new(Hopeless {
            restarts: AtomicU32::new(0),
        });
        supervisor.watch(client_of_nobody(), keeper.clone(), Duration::from_millis(20));
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("the supervisor gives up in time")
                .unwrap();
            let failed = matches!(event, AgentEvent::NodeFailed { .. });
            seen.push(event.name());
            if failed {
                break;
            }
        }
        assert_eq!(
            seen,
            [
                "agent_died",
                "agent_restart_failed",
                "agent_restart_failed",
                "agent_restart_failed",
                "node_failed"
            ]
        );
        // Given up for good: no more attempts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(keeper.restarts.load(Ordering::SeqCst), 3);
        supervisor.stop().await;
    }

    #[tokio::test]
    async fn an_agent_asked_to_shut_down_or_a_stopped_supervisor_restarts_nothing() {
        let supervisor = Supervisor::new(quick_policy());
        let mut events = supervisor.subscribe();
        let keeper = Arc::new(Hopeless {
            restarts: AtomicU32::new(0),
        });
        let client = client_of_nobody();
        // Refused (nobody listens), but from now on the agent's end counts as asked for.
        let _ = client.shutdown().await;
        supervisor.watch(client, keeper.clone(), Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            events.try_recv().is_err(),
            "the supervisor acted on a requested shutdown"
        );
        assert_eq!(keeper.restarts.load(Ordering::SeqCst), 0);

        supervisor.stop().await;
        supervisor.watch(client_of_nobody(), keeper.clone(), Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(events.try_recv().is_err(), "a stopped supervisor watched a node");
        assert_eq!(keeper.restarts.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn backoff_doubles_from_the_second_restart_up_to_the_cap() {
        let policy = RestartPolicy::default();
        assert_eq!(policy.backoff(1), Duration::ZERO);
        assert_eq!(policy.backoff(2), Duration::from_millis(250));
        assert_eq!(policy.backoff(3), Duration::from_millis(500));
        assert_eq!(policy.backoff(6), Duration::from_secs(4));
        assert_eq!(policy.backoff(7), Duration::from_secs(5));
        assert_eq!(policy.backoff(200), Duration::from_secs(5));
    }

    #[test]
    fn events_serialize_with_their_name() {
        let event = AgentEvent::AgentRestarted {
            node: "n2".into(),
            attempt: 1,
            downtime_ms: 420,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event"], event.name());
        assert_eq!(json["node"], "n2");
        assert_eq!(json["downtime_ms"], 420);
        assert_eq!(
            event.to_string(),
            "node n2: agent restarted (restart 1, down 420 ms)"
        );
    }
}
