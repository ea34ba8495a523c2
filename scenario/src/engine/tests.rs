//! The schedule's logic — timeline, overlap, heal, skip, errors, time limit, capability checks —
//! against in-memory nodes and a recording nemesis: no root, no cluster, real (short) time.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chaos::cluster::{BoxStream, ByteReader, Node, Process};
use chaos_proto::{DirEntry, FileStat, ProcSpec};

use super::RunOptions;
use super::run::{Abort, Run};
use super::schedule::{groups, timeline};
use crate::checks::System;
use crate::model::Scenario;
use crate::nemesis::{Active, Nemesis, Refusal};
use crate::plan::{Plan, PlannedTarget, Step};
use crate::rundir::{RunDir, StepStatus};
use crate::template::Templates;
use chaos_proto::Fault;

/// A node that only has a name: the schedule never asks it for anything else.
struct MemNode {
    name: String,
}

fn nothing<T>() -> chaos::Result<T> {
    Err(chaos::Error::invalid(
        "in-memory node",
        "has no processes, files or network",
    ))
}

#[async_trait]
impl Node for MemNode {
    fn name(&self) -> &str {
        &self.name
    }
    fn addresses(&self) -> &[IpAddr] {
        &[]
    }
    fn root_dir(&self) -> &str {
        "/nonexistent"
    }
    async fn start(&self, _: ProcSpec) -> chaos::Result<Process> {
        nothing()
    }
    async fn send_file(&self, _: &str, _: u32, _: ByteReader) -> chaos::Result<u64> {
        nothing()
    }
    async fn read_file(&self, _: &str) -> chaos::Result<ByteReader> {
        nothing()
    }
    async fn stat(&self, _: &str) -> chaos::Result<FileStat> {
        nothing()
    }
    async fn list_dir(&self, _: &str) -> chaos::Result<Vec<DirEntry>> {
        nothing()
    }
    async fn remove(&self, _: &str, _: bool) -> chaos::Result<()> {
        nothing()
    }
    async fn dial(&self, _: &str) -> chaos::Result<BoxStream> {
        nothing()
    }
    async fn stop(&self) -> chaos::Result<()> {
        Ok(())
    }
}

/// What the nemesis was asked, with the time since the test's start.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Inject { kind: &'static str, nodes: Vec<usize> },
    Heal { kind: &'static str },
}

/// The calls a [`Recorder`] saw.
type Calls = Arc<Mutex<Vec<(Duration, Call)>>>;

/// A nemesis for every kind that records what it is asked; `partition` has nobody to act on,
/// `link` cannot be injected, `delay` cannot be healed, `machine` is not offered.
struct Recorder {
    calls: Calls,
    t0: Instant,
}

struct Recorded {
    kind: &'static str,
    nodes: Vec<usize>,
    calls: Calls,
    t0: Instant,
}

#[async_trait]
impl Active for Recorded {
    fn nodes(&self) -> &[usize] {
        &self.nodes
    }
    fn detail(&self) -> String {
        "in memory".into()
    }
    async fn heal(self: Box<Self>) -> Result<(), String> {
        let call = Call::Heal { kind: self.kind };
        self.calls.lock().unwrap().push((self.t0.elapsed(), call));
        if self.kind == "delay" {
            return Err("the delay stuck".into());
        }
        Ok(())
    }
}

#[async_trait]
impl Nemesis for Recorder {
    fn handles(&self, _: &Fault) -> bool {
        true
    }
    async fn supports(&self, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::Machine(_) => Err("this cluster offers no machine faults".into()),
            _ => Ok(()),
        }
    }
    async fn inject(
        &self,
        fault: &Fault,
        targets: &[usize],
        _service: Option<&str>,
        _: Duration,
    ) -> Result<Box<dyn Active>, Refusal> {
        let kind = fault.kind();
        match kind {
            "partition" => return Err(Refusal::Skip("nobody on the other side".into())),
            "link" => return Err(Refusal::Failed("no such interface".into())),
            _ => {}
        }
        let call = Call::Inject {
            kind,
            nodes: targets.to_vec(),
        };
        self.calls.lock().unwrap().push((self.t0.elapsed(), call));
        Ok(Box::new(Recorded {
            kind,
            nodes: targets.to_vec(),
            calls: self.calls.clone(),
            t0: self.t0,
        }))
    }
}

const SCENARIO: &str = r#"
[setup.start]
command = "sleep 100"
[[faults]]
name = "loss"
kind = "loss"
percent = 10
target = "one"
[[faults]]
name = "kill"
kind = "kill"
target = "one"
[[faults]]
name = "cut"
kind = "partition"
target = "all"
[[faults]]
name = "link"
kind = "link"
interface = "eth0"
up = false
target = "one"
[[faults]]
name = "delay"
kind = "delay"
delay = "10ms"
target = "one"
[[faults]]
name = "stop"
kind = "machine"
action = "stop"
target = "one"
weight = 0
"#;

fn step(number: usize, case: &str, nodes: &[&str], duration_ms: u64, pause_ms: u64, overlap: bool) -> Step {
    let scenario = Scenario::parse(SCENARIO, "mem.toml").unwrap();
    let fault = scenario
        .faults
        .iter()
        .find(|c| c.name == case)
        .map(|c| c.fault.clone())
        .unwrap();
    Step {
        number,
        round: 1,
        case: case.into(),
        target: PlannedTarget::Nodes(nodes.iter().map(|n| n.to_string()).collect()),
        duration_ms,
        pause_ms,
        overlap,
        fault,
        service: None,
    }
}

/// A run over three in-memory nodes whose only nemesis is a [`Recorder`].
fn run(steps: Vec<Step>, edit: impl FnOnce(&mut Scenario)) -> (Run, Calls, tempfile::TempDir) {
    let mut scenario = Scenario::parse(SCENARIO, "mem.toml").unwrap();
    edit(&mut scenario);
    let out = tempfile::tempdir().unwrap();
    let dir = RunDir::create(out.path(), &scenario.name, 1).unwrap();
    let plan = Plan {
        scenario: scenario.name.clone(),
        seed: 1,
        nodes: scenario.node_names(),
        rounds: 1,
        workload_seed: 1,
        steps,
    };
    let nodes: Vec<Arc<dyn Node>> = scenario
        .node_names()
        .into_iter()
        .map(|name| Arc::new(MemNode { name }) as Arc<dyn Node>)
        .collect();
    let mut run = Run::new(
        scenario.clone(),
        plan,
        RunOptions::default(),
        dir,
        "replay".into(),
        1,
    );
    run.system = Some(Arc::new(System {
        scenario: Arc::new(scenario),
        log_paths: vec![String::new(); nodes.len()],
        nodes,
        vars: Vec::new(),
        templates: Templates::new(),
        runner_bin: Default::default(),
        measurements: Default::default(),
    }));
    let calls = Arc::new(Mutex::new(Vec::new()));
    run.nemeses = vec![Box::new(Recorder {
        calls: calls.clone(),
        t0: Instant::now(),
    })];
    (run, calls, out)
}

fn statuses(run: &Run) -> Vec<StepStatus> {
    run.verdict.steps.iter().map(|s| s.status).collect()
}

#[test]
fn overlapping_steps_form_groups_whose_heals_come_first_at_equal_times() {
    let steps = vec![
        step(1, "loss", &["n1"], 100, 50, true),
        step(2, "kill", &["n2"], 50, 20, false),
        step(3, "loss", &["n3"], 30, 10, false),
    ];
    assert_eq!(groups(&steps), vec![vec![0, 1], vec![2]]);
    // Step 2 starts 50 ms in (step 1's pause) and heals at 100 ms, with step 1: heals first.
    assert_eq!(
        timeline(&steps, &[0, 1]),
        vec![(0, false, 0), (50, false, 1), (100, true, 0), (100, true, 1)]
    );
    let mut equal = steps.clone();
    equal[0].duration_ms = 50;
    assert_eq!(
        timeline(&equal, &[0, 1]),
        vec![(0, false, 0), (50, true, 0), (50, false, 1), (100, true, 1)]
    );
}

#[tokio::test]
async fn steps_are_injected_on_their_targets_and_healed_after_their_duration() {
    let steps = vec![
        step(1, "loss", &["n1"], 120, 40, true),
        step(2, "kill", &["n2", "n3"], 40, 10, false),
        step(3, "loss", &["n3"], 30, 0, false),
    ];
    let (mut run, calls, _out) = run(steps, |_| {});
    run.schedule().await.map_err(|_| "aborted").unwrap();
    let calls = calls.lock().unwrap().clone();
    let order: Vec<Call> = calls.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(
        order,
        vec![
            Call::Inject {
                kind: "loss",
                nodes: vec![0]
            },
            Call::Inject {
                kind: "kill",
                nodes: vec![1, 2]
            },
            Call::Heal { kind: "kill" },
            Call::Heal { kind: "loss" },
            Call::Inject {
                kind: "loss",
                nodes: vec![2]
            },
            Call::Heal { kind: "loss" },
        ]
    );
    // The timeline is kept from the group's start (the recorder's clock started before it):
    // step 2 starts after step 1's pause, each heals after its duration, and the next group
    // waits for the previous one's pause.
    let at = |i: usize| calls[i].0;
    let ms = Duration::from_millis;
    assert!(at(1) >= ms(40), "overlap after the pause: {calls:?}");
    assert!(at(2) >= ms(40 + 40), "kill healed after its duration: {calls:?}");
    assert!(at(3) >= ms(120), "loss healed after its duration: {calls:?}");
    assert!(at(4) >= ms(120 + 10), "{calls:?}");
    assert_eq!(statuses(&run), vec![StepStatus::Passed; 3]);
    assert_eq!(run.verdict.steps[1].nodes, ["n2", "n3"]);
    assert!(
        run.verdict
            .steps
            .iter()
            .all(|s| s.fault_ms.is_some() && s.recovery_ms.is_some())
    );
    assert!(run.active.is_empty() && run.verdict.env_error.is_none());
}

#[tokio::test]
async fn steps_with_nobody_to_act_on_are_skipped_and_the_schedule_goes_on() {
    let steps = vec![
        step(1, "cut", &["n1", "n2", "n3"], 10, 0, false),
        step(2, "loss", &[], 10, 0, false),
        step(3, "kill", &["n1"], 10, 0, false),
    ];
    let (mut run, calls, _out) = run(steps, |_| {});
    run.schedule().await.map_err(|_| "aborted").unwrap();
    assert_eq!(
        statuses(&run),
        vec![StepStatus::Skipped, StepStatus::Skipped, StepStatus::Passed]
    );
    assert_eq!(
        run.verdict.steps[0].reason.as_deref(),
        Some("nobody on the other side")
    );
    assert!(
        run.verdict.steps[1]
            .reason
            .as_deref()
            .unwrap()
            .contains("picked no node")
    );
    assert_eq!(
        calls.lock().unwrap().len(),
        2,
        "only the kill was injected and healed"
    );
    assert!(run.verdict.env_error.is_none());
}

#[tokio::test]
async fn a_fault_that_cannot_be_injected_stops_the_schedule() {
    let steps = vec![
        step(1, "link", &["n1"], 10, 0, false),
        step(2, "loss", &["n1"], 10, 0, false),
    ];
    let (mut run, calls, _out) = run(steps, |_| {});
    run.schedule().await.map_err(|_| "aborted").unwrap();
    assert_eq!(statuses(&run), vec![StepStatus::Error, StepStatus::NotRun]);
    assert_eq!(
        run.verdict.steps[0].reason.as_deref(),
        Some("injecting: no such interface")
    );
    assert!(
        run.verdict
            .env_error
            .as_deref()
            .unwrap()
            .contains("step 1 (link) could not be injected")
    );
    assert!(calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_fault_that_cannot_be_healed_is_an_error_and_stops_the_schedule() {
    let steps = vec![
        step(1, "delay", &["n2"], 10, 0, false),
        step(2, "loss", &["n1"], 10, 0, false),
    ];
    let (mut run, calls, _out) = run(steps, |_| {});
    run.schedule().await.map_err(|_| "aborted").unwrap();
    assert_eq!(statuses(&run), vec![StepStatus::Error, StepStatus::NotRun]);
    assert_eq!(
        run.verdict.steps[0].reason.as_deref(),
        Some("healing: the delay stuck")
    );
    assert_eq!(calls.lock().unwrap().len(), 2);
    assert!(run.active.is_empty());
}

#[tokio::test]
async fn the_time_limit_skips_the_rest_with_the_reason() {
    let steps = vec![
        step(1, "loss", &["n1"], 30, 0, false),
        step(2, "kill", &["n1"], 10, 0, false),
        step(3, "kill", &["n2"], 10, 0, false),
    ];
    let (mut run, _calls, _out) = run(steps, |s| {
        s.schedule.time_limit = Some(crate::model::Dur::millis(20));
    });
    run.schedule().await.map_err(|_| "aborted").unwrap();
    assert_eq!(
        statuses(&run),
        vec![StepStatus::Passed, StepStatus::Skipped, StepStatus::Skipped]
    );
    assert!(
        run.verdict.steps[2]
            .reason
            .as_deref()
            .unwrap()
            .contains("time limit")
    );
}

#[tokio::test]
async fn an_interrupted_schedule_heals_what_is_in_place() {
    let steps = vec![step(1, "loss", &["n1"], 10_000, 0, false)];
    let (mut run, calls, _out) = run(steps, |_| {});
    let cancel = run.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
    });
    let started = Instant::now();
    assert!(matches!(run.schedule().await, Err(Abort::Interrupted)));
    assert!(started.elapsed() < Duration::from_secs(5));
    let calls: Vec<Call> = calls.lock().unwrap().iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(calls.last(), Some(&Call::Heal { kind: "loss" }));
    assert!(run.active.is_empty());
}

#[tokio::test]
async fn cases_the_cluster_cannot_carry_out_are_refused_before_the_schedule() {
    let (mut run, _calls, _out) = run(Vec::new(), |_| {});
    // The machine case has weight 0: not asked.
    run.check_capabilities().await.map_err(|_| "refused").unwrap();
    let (mut run, _calls, _out) = run_with_machine_weight();
    let Err(Abort::Setup(why)) = run.check_capabilities().await else {
        panic!("a machine fault was accepted by a cluster that offers none");
    };
    assert!(
        why.contains("fault case `stop` (machine)") && why.contains("offers no machine faults"),
        "{why}"
    );
}

fn run_with_machine_weight() -> (Run, Calls, tempfile::TempDir) {
    run(Vec::new(), |s| {
        for case in &mut s.faults {
            case.weight = 1;
        }
    })
}

#[tokio::test]
async fn process_faults_skip_nodes_where_the_system_is_not_running() {
    use crate::nemesis::Probes;
    use crate::nemesis::process::ProcessNemesis;
    use crate::sut::Suts;

    let (run, _calls, _out) = run(Vec::new(), |_| {});
    let system = run.system.clone().unwrap();
    let suts = Arc::new(Suts::new(system.clone(), run.dir.clone()));
    let nemesis = ProcessNemesis::new(system.nodes.clone(), Probes::new(system.nodes.clone()), suts, 1.0);
    let kill = Fault::Kill(chaos_proto::kinds::Kill::default());
    assert!(nemesis.handles(&kill));
    // In-memory nodes cannot report probes: kill needs none, and they are asked at injection.
    nemesis.supports(&kill).await.unwrap();
    let refusal = nemesis
        .inject(&kill, &[0, 2], None, Duration::from_secs(1))
        .await
        .err()
        .expect("nothing runs on in-memory nodes");
    assert_eq!(
        refusal,
        Refusal::Skip("the system is not running on n1, n3".into())
    );
}

/// A scenario declaring one value of each scalar type.
fn with_values() -> Scenario {
    Scenario::parse(
        "[values]\nisolation = \"serializable\"\nsynchronous = true\nport = 5432\nratio = 0.5\n\
         [workload]\ntype = \"kv\"\naddr = \"127.0.0.1:1\"\n",
        "v.toml",
    )
    .expect("valid scenario")
}

#[test]
fn value_overrides_take_the_declared_type_and_name_what_is_wrong() {
    let s = with_values();
    assert_eq!(
        s.parse_value("isolation", "read-committed").unwrap(),
        toml::Value::String("read-committed".into())
    );
    assert_eq!(
        s.parse_value("synchronous", "false").unwrap(),
        toml::Value::Boolean(false)
    );
    assert_eq!(s.parse_value("port", "6543").unwrap(), toml::Value::Integer(6543));
    assert_eq!(s.parse_value("ratio", "0.25").unwrap(), toml::Value::Float(0.25));
    let wrong = s.parse_value("synchronous", "off").unwrap_err().to_string();
    assert!(
        wrong.contains("values.synchronous") && wrong.contains("boolean") && wrong.contains("`off`"),
        "{wrong}"
    );
    let unknown = s.parse_value("isolaton", "x").unwrap_err().to_string();
    assert!(
        unknown.contains("no `isolaton`") && unknown.contains("isolation, port, ratio, synchronous"),
        "{unknown}"
    );

    let mut overridden = with_values();
    let values = BTreeMap::from([("synchronous".to_string(), toml::Value::Boolean(false))]);
    overridden.override_values(&values).unwrap();
    assert_eq!(overridden.values["synchronous"], toml::Value::Boolean(false));
    let typed_wrong = BTreeMap::from([("port".to_string(), toml::Value::String("x".into()))]);
    let e = overridden.override_values(&typed_wrong).unwrap_err().to_string();
    assert!(e.contains("integer, not a string"), "{e}");
    assert_eq!(
        overridden.values["port"],
        toml::Value::Integer(5432),
        "nothing applied on error"
    );
}

#[test]
fn the_replay_command_repeats_value_overrides_quoted_for_a_shell() {
    let s = with_values();
    let options = RunOptions {
        scenario_file: Some("scenarios/pg.toml".into()),
        rounds: Some(1),
        values: BTreeMap::from([
            (
                "isolation".to_string(),
                toml::Value::String("read committed".into()),
            ),
            ("synchronous".to_string(), toml::Value::Boolean(false)),
        ]),
        ..RunOptions::default()
    };
    assert_eq!(
        super::replay_command(&s, &options, 7),
        "chaos run scenarios/pg.toml --seed 7 --rounds 1 --value 'isolation=read committed' --value synchronous=false"
    );
    assert_eq!(
        super::replay_plan_command(&s, &options, std::path::Path::new("runs/x/plan.json")),
        "chaos run scenarios/pg.toml --plan runs/x/plan.json --value 'isolation=read committed' --value synchronous=false"
    );
}
