//! Process faults on the system under test: kill (started again at heal), pause (thawed at
//! heal) and restart (stopped gracefully, started again at heal).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chaos::cluster::Node;
use chaos_proto::Fault;
use chaos_proto::kinds::{Family, Kill, Pause, ProcessTarget};

use super::network::inject_each;
use super::{Active, Nemesis, Probes, Refusal};
use crate::sut::Suts;

/// How long a killed system may take to be reaped.
const REAP: Duration = Duration::from_secs(10);

/// Kill, pause and restart of the system `[setup.start]` runs on each node.
pub(crate) struct ProcessNemesis {
    nodes: Vec<Arc<dyn Node>>,
    probes: Arc<Probes>,
    suts: Arc<Suts>,
    /// Scales the grace of a restart like every other timeout of the scenario.
    multiplier: f64,
}

impl ProcessNemesis {
    /// A nemesis over the cluster's `nodes` and the system on them.
    pub fn new(nodes: Vec<Arc<dyn Node>>, probes: Arc<Probes>, suts: Arc<Suts>, multiplier: f64) -> Self {
        Self {
            nodes,
            probes,
            suts,
            multiplier,
        }
    }
}

/// The system (or one service of it) taken down on `nodes`; started again at heal.
pub(crate) struct Down {
    pub nodes: Vec<usize>,
    /// The service taken down (`None`: every service, as with a stopped machine).
    pub svc: Option<usize>,
    pub suts: Arc<Suts>,
    pub detail: String,
}

impl Down {
    /// Starts what went down again on every node; the first error.
    pub async fn restart(suts: &Suts, nodes: &[usize], svc: Option<usize>) -> Result<(), String> {
        let mut error = None;
        for &i in nodes {
            let started = match svc {
                Some(s) if suts.running(i, s).is_none() => suts.start_service(i, s).await,
                Some(_) => Ok(()),
                None => suts.start(i).await,
            };
            if let Err(e) = started {
                error.get_or_insert(e);
            }
        }
        error.map_or(Ok(()), Err)
    }
}

#[async_trait]
impl Active for Down {
    fn nodes(&self) -> &[usize] {
        &self.nodes
    }

    fn detail(&self) -> String {
        self.detail.clone()
    }

    async fn heal(self: Box<Self>) -> Result<(), String> {
        Down::restart(&self.suts, &self.nodes, self.svc).await
    }
}

#[async_trait]
impl Nemesis for ProcessNemesis {
    fn handles(&self, fault: &Fault) -> bool {
        fault.family() == Family::Process
    }

    async fn supports(&self, fault: &Fault) -> Result<(), String> {
        let Some(kind) = fault.agent_kind() else {
            // Every node signals and restarts the processes it started.
            return Ok(());
        };
        for (node, report) in self.probes.reports().await {
            // A node that cannot report (no agent) answers when asked to pause.
            if let Ok(report) = report
                && !report.supports(kind)
            {
                let why = report
                    .kind(kind)
                    .and_then(|k| k.missing.clone())
                    .unwrap_or_default();
                return Err(format!("node {node} cannot pause processes: {why}"));
            }
        }
        Ok(())
    }

    async fn inject(
        &self,
        fault: &Fault,
        targets: &[usize],
        service: Option<&str>,
        ttl: Duration,
    ) -> Result<Box<dyn Active>, Refusal> {
        let Some(svc) = self.suts.service_index(service) else {
            return Err(Refusal::Failed(match service {
                Some(name) => format!("no service `{name}` in [[setup.services]]"),
                None => "no [setup.start] or [[setup.services]] process to act on".to_string(),
            }));
        };
        let (running, down): (Vec<usize>, Vec<usize>) = targets
            .iter()
            .partition(|&&i| self.suts.running(i, svc).is_some());
        if running.is_empty() {
            let names: Vec<&str> = down.iter().map(|&i| self.nodes[i].name()).collect();
            let what = crate::sut::shown_service(service.unwrap_or("system"));
            return Err(Refusal::Skip(format!(
                "{what} is not running on {}",
                names.join(", ")
            )));
        }
        let proc_of = |i: usize| self.suts.running(i, svc).map(ProcessTarget::Proc);
        match fault {
            Fault::Pause(_) => {
                inject_each(&self.nodes, &running, ttl, |i| {
                    Fault::Pause(Pause { process: proc_of(i) })
                })
                .await
            }
            Fault::Kill(kill) => {
                let mut error = None;
                for &i in &running {
                    let fault = Fault::Kill(Kill {
                        signal: kill.signal,
                        process: proc_of(i),
                    });
                    if let Err(e) = chaos::faults::inject(&self.nodes, &self.nodes[i], &fault, ttl).await {
                        error.get_or_insert(format!("{}: {e}", self.nodes[i].name()));
                    }
                    self.suts.take_down(i, Some(svc), REAP).await;
                }
                if let Some(e) = error {
                    // A kill that failed half-way may have taken processes down: bring them back.
                    if let Err(again) = Down::restart(&self.suts, &running, Some(svc)).await {
                        tracing::warn!("{again}");
                    }
                    return Err(Refusal::Failed(e));
                }
                Ok(Box::new(Down {
                    nodes: running,
                    svc: Some(svc),
                    suts: self.suts.clone(),
                    detail: kill.signal.to_string(),
                }))
            }
            Fault::Restart(restart) => {
                let grace = restart.grace.0.mul_f64(self.multiplier);
                for &i in &running {
                    self.suts
                        .stop_service(i, svc, Some(restart.signal), Some(grace))
                        .await;
                }
                Ok(Box::new(Down {
                    nodes: running,
                    svc: Some(svc),
                    suts: self.suts.clone(),
                    detail: format!("stopped ({})", restart.signal),
                }))
            }
            other => Err(Refusal::Failed(format!("not a process fault: {}", other.kind()))),
        }
    }
}
