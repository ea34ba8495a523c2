//! Task fan-out, kubetest's job on chaos backends: a list of tasks (inline, or the output lines
//! of a command run once on a node) spread over a cluster's nodes, `per_node` at a time, each a
//! templated command with a timeout and retries; artifacts collected per task; a JSON summary
//! in kubetest's spirit and a JUnit file. `docs/tasks.md` documents the file.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use chaos_scenario::tasks::{TaskFile, TaskRunner};
//! let file = TaskFile::from_file("tests.toml")?;
//! let outcome = TaskRunner::new(file).out_dir("runs").run().await?;
//! assert!(outcome.passed(), "{:?}", outcome.summary.failure_count);
//! # Ok(()) }
//! ```
//!
//! Run directory: `<out>/<name>/<timestamp>-tasks/` with `summary.json`, `junit.xml` and
//! `tasks/<index>/` per task (`attempt-<n>.log`: the command, its exit and output;
//! `artifacts/`). Progress goes to a [`TaskObserver`]; nothing here draws on a terminal.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos::backend::ClusterOptions;
use chaos::{Cluster, Node, NodeExt, ProcSpec};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::model::{Backend, CommandLine};
use crate::plan::Plan;
use crate::template::Templates;

mod faults;
mod model;
mod report;

pub use faults::FaultRecord;

pub use model::{ListFrom, MAX_TASKS, TaskFile, TaskFileError, TaskSpec};

/// How one task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Its first attempt passed.
    Passed,
    /// A later attempt passed after one failed.
    Flaky,
    /// Every attempt failed.
    Failed,
    /// Never run (interrupted, or the cluster failed first).
    NotRun,
}

/// One attempt of a task.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// 1-based.
    pub attempt: u32,
    /// Exit code, when the process exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed (exit code, signal, timeout, the node's error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its duration.
    pub elapsed_ms: u64,
}

/// One task in `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    /// Position in the list (0-based; also its directory, `tasks/<index>`).
    pub index: usize,
    /// The task as listed.
    pub name: String,
    /// The node it ran on.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// How it ended.
    pub status: TaskStatus,
    /// Every attempt.
    pub attempts: Vec<Attempt>,
    /// From its first attempt's start to its last's end.
    pub elapsed_ms: u64,
    /// Artifacts copied into the run directory (relative to it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<PathBuf>,
    /// Artifacts that could not be copied, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_artifacts: Vec<String>,
}

/// `summary.json`, in kubetest's spirit: status, elapsed, counts, details per task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    /// The task file's name.
    pub name: String,
    /// `passed` (every task passed, possibly after retries), `failed`, `interrupted` or `error`
    /// (the cluster or the task list could not be made).
    pub status: &'static str,
    /// Why, for `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The backend.
    pub backend: String,
    /// Nodes.
    pub nodes: usize,
    /// Tasks at once per node.
    pub per_node: usize,
    /// Wall-clock start (RFC 3339, UTC).
    pub started_at: String,
    /// The whole run.
    pub elapsed_ms: u64,
    /// Tasks listed.
    pub task_count: usize,
    /// Tasks that passed (flaky ones included).
    pub success_count: usize,
    /// Tasks that passed only after a retry.
    pub flaky_count: usize,
    /// Tasks that failed every attempt.
    pub failure_count: usize,
    /// Tasks never run.
    pub not_run_count: usize,
    /// The seed the fault plan was drawn from (with fault cases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Every task, in list order.
    pub tasks: Vec<TaskResult>,
    /// The faults injected while the tasks ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultRecord>,
}

/// A finished task run.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    /// What `summary.json` holds.
    pub summary: TaskSummary,
    /// The run directory.
    pub dir: PathBuf,
}

impl TaskOutcome {
    /// Whether every task passed (flaky ones included).
    pub fn passed(&self) -> bool {
        self.summary.status == "passed"
    }

    /// 0 passed, 1 a task failed, 2 error, 130 interrupted.
    pub fn exit_code(&self) -> u8 {
        match self.summary.status {
            "passed" => 0,
            "failed" => 1,
            "interrupted" => 130,
            _ => 2,
        }
    }
}

/// Receives progress. Called from the run's tasks: keep it quick.
pub trait TaskObserver: Send + Sync {
    /// What the run does now ("creating 5 local nodes", "listing tasks on n1").
    fn doing(&self, _what: &str) {}
    /// A task ended; `done` of `total`.
    fn finished(&self, result: &TaskResult, done: usize, total: usize);
}

/// Why a task run could not start (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The run directory could not be written.
    #[error("{context}: {source}")]
    Io {
        /// What was being written.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Runs a task file: `TaskRunner::new(file).run().await`.
pub struct TaskRunner {
    file: TaskFile,
    backend: Option<Backend>,
    backend_config: Option<PathBuf>,
    out_dir: PathBuf,
    observer: Option<Arc<dyn TaskObserver>>,
    cancel: CancellationToken,
    seed: Option<u64>,
}

impl std::fmt::Debug for TaskRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRunner")
            .field("name", &self.file.name)
            .field("out_dir", &self.out_dir)
            .finish_non_exhaustive()
    }
}

/// What a task's templates see.
#[derive(Serialize)]
struct TaskVars<'a> {
    task: &'a str,
    index: usize,
    attempt: u32,
    node: NodeVars,
}

#[derive(Serialize, Clone)]
struct NodeVars {
    name: String,
    ip: String,
    root: String,
}

impl NodeVars {
    fn of(node: &dyn Node) -> NodeVars {
        NodeVars {
            name: node.name().to_string(),
            ip: node
                .addresses()
                .first()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            root: node.root_dir().to_string(),
        }
    }
}

impl TaskRunner {
    /// A runner of `file`, writing under `runs`.
    pub fn new(file: TaskFile) -> TaskRunner {
        TaskRunner {
            file,
            backend: None,
            backend_config: None,
            out_dir: PathBuf::from("runs"),
            observer: None,
            cancel: CancellationToken::new(),
            seed: None,
        }
    }

    /// The seed the fault cases are planned from (drawn when absent).
    pub fn seed(mut self, seed: Option<u64>) -> TaskRunner {
        self.seed = seed;
        self
    }

    /// Overrides `cluster.backend`.
    pub fn backend(mut self, backend: Option<Backend>) -> TaskRunner {
        self.backend = backend;
        self
    }

    /// The backend's own settings file (`ClusterOptions::backend_config`).
    pub fn backend_config(mut self, path: Option<PathBuf>) -> TaskRunner {
        self.backend_config = path;
        self
    }

    /// Where run directories go.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> TaskRunner {
        self.out_dir = dir.into();
        self
    }

    /// Receives progress.
    pub fn observer(mut self, observer: Arc<dyn TaskObserver>) -> TaskRunner {
        self.observer = Some(observer);
        self
    }

    /// Fires to interrupt: running tasks are killed with the cluster, the rest are `not_run`.
    pub fn cancel(mut self, token: CancellationToken) -> TaskRunner {
        self.cancel = token;
        self
    }

    /// Runs every task and writes the run directory. `Err` only when the directory cannot be
    /// written; a cluster or task list that cannot be made ends in an `error` summary.
    pub async fn run(self) -> Result<TaskOutcome, TaskError> {
        let mut file = self.file.clone();
        if let Some(b) = self.backend {
            file.cluster.backend = b;
        }
        let dir = create_dir(&self.out_dir, &file.name).map_err(|source| TaskError::Io {
            context: format!("creating a run directory under {}", self.out_dir.display()),
            source,
        })?;
        let (_, started_at) = crate::rundir::timestamps();
        let start = Instant::now();
        let as_run = toml::to_string(&file).unwrap_or_default();
        std::fs::write(dir.join("tasks.toml"), as_run).map_err(|source| TaskError::Io {
            context: "writing tasks.toml".into(),
            source,
        })?;
        let n = file.cluster.nodes;
        self.doing(&format!("creating {n} {} nodes", file.cluster.backend));
        let options = ClusterOptions {
            name: format!("tasks-{}", file.name),
            backend_config: self.backend_config.clone(),
            image_include: file.cluster.docker.include.iter().map(Into::into).collect(),
            ..ClusterOptions::default()
        };
        let mut summary = TaskSummary {
            name: file.name.clone(),
            status: "error",
            reason: None,
            backend: file.cluster.backend.to_string(),
            nodes: n,
            per_node: file.tasks.per_node,
            started_at,
            elapsed_ms: 0,
            task_count: 0,
            success_count: 0,
            flaky_count: 0,
            failure_count: 0,
            not_run_count: 0,
            seed: None,
            tasks: Vec::new(),
            faults: Vec::new(),
        };
        let plan = match file.fault_scenario() {
            Ok(Some(scenario)) => {
                let seed = self.seed.unwrap_or_else(crate::draw_seed);
                summary.seed = Some(seed);
                let plan = Plan::generate(&scenario, seed);
                let _ = std::fs::write(dir.join("plan.txt"), plan.to_text());
                Some((scenario, plan))
            }
            Ok(None) => None,
            Err(errors) => {
                summary.reason = Some(errors.to_string());
                None
            }
        };
        let made = if let Some(reason) = &summary.reason {
            Err(reason.clone())
        } else {
            tokio::select! {
            made = make_cluster(&file, options) => made,
            _ = self.cancel.cancelled() => Err("interrupted while creating the cluster".into()),
            }
        };
        match made {
            Ok((cluster, nodes)) => {
                let result = self.run_on(&file, &nodes, &dir, plan).await;
                self.doing("cleaning up the cluster");
                if let Err(e) = cluster.cleanup().await {
                    tracing::warn!(target: "chaos_scenario", "tasks {}: cleanup: {e}", file.name);
                }
                match result {
                    Ok((tasks, faults)) => {
                        summary.faults = faults;
                        let count = |s: TaskStatus| tasks.iter().filter(|t| t.status == s).count();
                        summary.task_count = tasks.len();
                        summary.flaky_count = count(TaskStatus::Flaky);
                        summary.success_count = count(TaskStatus::Passed) + summary.flaky_count;
                        summary.failure_count = count(TaskStatus::Failed);
                        summary.not_run_count = count(TaskStatus::NotRun);
                        summary.status = if summary.failure_count > 0 {
                            "failed"
                        } else if summary.not_run_count > 0 {
                            "interrupted"
                        } else {
                            "passed"
                        };
                        summary.tasks = tasks;
                    }
                    Err(why) => summary.reason = Some(why),
                }
            }
            Err(why) => summary.reason = Some(why),
        }
        summary.elapsed_ms = start.elapsed().as_millis() as u64;
        report::write(&dir, &summary).map_err(|source| TaskError::Io {
            context: format!("writing summary.json and junit.xml in {}", dir.display()),
            source,
        })?;
        Ok(TaskOutcome { summary, dir })
    }

    fn doing(&self, what: &str) {
        if let Some(o) = &self.observer {
            o.doing(what);
        }
    }

    /// Lists the tasks and runs them over `nodes`.
    async fn run_on(
        &self,
        file: &TaskFile,
        nodes: &[Arc<dyn Node>],
        dir: &Path,
        plan: Option<(crate::Scenario, Plan)>,
    ) -> Result<(Vec<TaskResult>, Vec<FaultRecord>), String> {
        let spec = &file.tasks;
        let nemeses = match &plan {
            Some((scenario, _)) => {
                let nemeses = faults::nemeses(nodes);
                faults::check(scenario, &nemeses).await?;
                Some(nemeses)
            }
            None => None,
        };
        let list = match &spec.list_from {
            None => spec.list.clone(),
            Some(from) => {
                self.doing(&format!("listing tasks on {}", from.node));
                let node = nodes
                    .iter()
                    .find(|n| n.name() == from.node)
                    .ok_or_else(|| format!("tasks.list_from.node: no node {}", from.node))?;
                list_tasks(node.as_ref(), from).await?
            }
        };
        let total = list.len();
        let queue: Arc<Mutex<VecDeque<(usize, String)>>> =
            Arc::new(Mutex::new(list.into_iter().enumerate().collect()));
        let results: Arc<Mutex<Vec<Option<TaskResult>>>> = Arc::new(Mutex::new(vec![None; total]));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        self.doing(&format!("running {total} tasks on {} nodes", nodes.len()));
        let tasks_done = CancellationToken::new();
        let nemesis = match (plan, nemeses) {
            (Some((_, plan)), Some(nemeses)) => Some(tokio::spawn(faults::run(
                plan,
                nodes.to_vec(),
                nemeses,
                tasks_done.clone(),
            ))),
            _ => None,
        };
        let mut workers = tokio::task::JoinSet::new();
        for node in nodes {
            for _ in 0..spec.per_node {
                let worker = Worker {
                    node: node.clone(),
                    spec: spec.clone(),
                    dir: dir.to_path_buf(),
                    queue: queue.clone(),
                    results: results.clone(),
                    done: done.clone(),
                    total,
                    observer: self.observer.clone(),
                };
                workers.spawn(worker.run());
            }
        }
        tokio::select! {
            _ = async { while workers.join_next().await.is_some() {} } => {}
            _ = self.cancel.cancelled() => workers.abort_all(),
        }
        tasks_done.cancel();
        let fault_records = match nemesis {
            Some(handle) => handle.await.unwrap_or_default(),
            None => Vec::new(),
        };
        let pending: Vec<(usize, String)> = queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        let mut results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
        for (index, name) in pending {
            results[index] = Some(not_run(index, name));
        }
        let results = results
            .into_iter()
            .enumerate()
            .map(|(index, r)| r.unwrap_or_else(|| not_run(index, String::new())))
            .collect();
        Ok((results, fault_records))
    }
}

fn not_run(index: usize, name: String) -> TaskResult {
    TaskResult {
        index,
        name,
        node: String::new(),
        status: TaskStatus::NotRun,
        attempts: Vec::new(),
        elapsed_ms: 0,
        artifacts: Vec::new(),
        missing_artifacts: Vec::new(),
    }
}

/// Creates `base/<name>/<timestamp>-tasks/` (adding `-2`, `-3`… if it exists).
fn create_dir(base: &Path, name: &str) -> std::io::Result<PathBuf> {
    let parent = base.join(name);
    std::fs::create_dir_all(&parent)?;
    let (stamp, _) = crate::rundir::timestamps();
    let mut id = format!("{stamp}-tasks");
    let mut n = 2;
    loop {
        match std::fs::create_dir(parent.join(&id)) {
            Ok(()) => return Ok(parent.join(id)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                id = format!("{stamp}-tasks-{n}");
                n += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn make_cluster(
    file: &TaskFile,
    options: ClusterOptions,
) -> Result<(Arc<dyn Cluster>, Vec<Arc<dyn Node>>), String> {
    let backend = file.cluster.backend;
    backend
        .entry()
        .availability()
        .map_err(|why| format!("backend {backend}: {why}"))?;
    let cluster = backend
        .entry()
        .create(options)
        .await
        .map_err(|e| format!("creating the cluster: {e}"))?;
    match cluster.create_nodes(file.cluster.nodes).await {
        Ok(nodes) => Ok((cluster, nodes)),
        Err(e) => {
            let _ = cluster.cleanup().await;
            Err(format!("creating {} nodes: {e}", file.cluster.nodes))
        }
    }
}

/// Runs `list_from`'s command on its node: its non-empty output lines are the tasks.
async fn list_tasks(node: &dyn Node, from: &ListFrom) -> Result<Vec<String>, String> {
    let vars = serde_json::json!({ "node": NodeVars::of(node) });
    let argv = render_argv(&from.command, &vars).map_err(|e| format!("tasks.list_from.command: {e}"))?;
    let out = node
        .run_timeout(
            ProcSpec::new(argv[0].clone(), argv[1..].iter().cloned()),
            None,
            from.timeout.0,
        )
        .await
        .map_err(|e| format!("tasks.list_from: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tasks.list_from: `{}` on {} ended with {}: {}",
            argv.join(" "),
            node.name(),
            out.status,
            out.stderr_str().trim()
        ));
    }
    let tasks: Vec<String> = out
        .stdout_str()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if tasks.is_empty() {
        return Err(format!(
            "tasks.list_from: `{}` on {} listed no task",
            argv.join(" "),
            node.name()
        ));
    }
    if tasks.len() > MAX_TASKS {
        return Err(format!(
            "tasks.list_from: {} tasks listed; at most {MAX_TASKS}",
            tasks.len()
        ));
    }
    Ok(tasks)
}

fn render_argv<T: Serialize>(command: &CommandLine, vars: &T) -> Result<Vec<String>, String> {
    let templates = Templates::new();
    command
        .argv()
        .iter()
        .map(|part| templates.render_with(part, vars))
        .collect()
}

/// One slot on one node: takes tasks from the queue until it is empty.
struct Worker {
    node: Arc<dyn Node>,
    spec: TaskSpec,
    dir: PathBuf,
    queue: Arc<Mutex<VecDeque<(usize, String)>>>,
    results: Arc<Mutex<Vec<Option<TaskResult>>>>,
    done: Arc<std::sync::atomic::AtomicUsize>,
    total: usize,
    observer: Option<Arc<dyn TaskObserver>>,
}

impl Worker {
    async fn run(self) {
        loop {
            let next = self.queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            let Some((index, name)) = next else { return };
            let result = self.run_task(index, name).await;
            let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if let Some(o) = &self.observer {
                o.finished(&result, done, self.total);
            }
            self.results.lock().unwrap_or_else(|p| p.into_inner())[index] = Some(result);
        }
    }

    async fn run_task(&self, index: usize, name: String) -> TaskResult {
        let task_dir = self.dir.join("tasks").join(index.to_string());
        let _ = std::fs::create_dir_all(&task_dir);
        let started = Instant::now();
        let node_vars = NodeVars::of(self.node.as_ref());
        let mut attempts = Vec::new();
        let mut passed_at = None;
        for attempt in 1..=self.spec.retries.saturating_add(1) {
            let vars = TaskVars {
                task: &name,
                index,
                attempt,
                node: node_vars.clone(),
            };
            let began = Instant::now();
            let (outcome, log) = self.attempt(&vars).await;
            let elapsed_ms = began.elapsed().as_millis() as u64;
            let _ = std::fs::write(task_dir.join(format!("attempt-{attempt}.log")), log);
            let (exit_code, error) = outcome;
            let ok = error.is_none();
            attempts.push(Attempt {
                attempt,
                exit_code,
                error,
                elapsed_ms,
            });
            if ok {
                passed_at = Some(attempt);
                break;
            }
        }
        let last_vars = TaskVars {
            task: &name,
            index,
            attempt: attempts.len() as u32,
            node: node_vars,
        };
        let (artifacts, missing_artifacts) = self.collect(&last_vars, &task_dir).await;
        TaskResult {
            index,
            name: name.clone(),
            node: self.node.name().to_string(),
            status: match passed_at {
                Some(1) => TaskStatus::Passed,
                Some(_) => TaskStatus::Flaky,
                None => TaskStatus::Failed,
            },
            attempts,
            elapsed_ms: started.elapsed().as_millis() as u64,
            artifacts: artifacts
                .into_iter()
                .filter_map(|p| p.strip_prefix(&self.dir).ok().map(Path::to_path_buf))
                .collect(),
            missing_artifacts,
        }
    }

    /// One attempt: `((exit code, error), log text)`.
    async fn attempt(&self, vars: &TaskVars<'_>) -> ((Option<i32>, Option<String>), String) {
        let argv = match render_argv(&self.spec.command, vars) {
            Ok(argv) => argv,
            Err(e) => {
                return (
                    (None, Some(format!("tasks.command: {e}"))),
                    format!("tasks.command: {e}\n"),
                );
            }
        };
        let mut log = format!("$ {}\n", argv.join(" "));
        let result = self
            .node
            .run_timeout(
                ProcSpec::new(argv[0].clone(), argv[1..].iter().cloned()),
                None,
                self.spec.timeout.0,
            )
            .await;
        let outcome = match result {
            Ok(out) => {
                log.push_str(&format!(
                    "exit: {}\n--- stdout\n{}\n--- stderr\n{}\n",
                    out.status,
                    out.stdout_str(),
                    out.stderr_str()
                ));
                if out.status.success() {
                    (out.status.code, None)
                } else {
                    (out.status.code, Some(format!("ended with {}", out.status)))
                }
            }
            Err(e) => {
                log.push_str(&format!("error: {e}\n"));
                (None, Some(e.to_string()))
            }
        };
        (outcome, log)
    }

    /// Copies the task's artifacts into `task_dir/artifacts/`.
    async fn collect(&self, vars: &TaskVars<'_>, task_dir: &Path) -> (Vec<PathBuf>, Vec<String>) {
        let (mut got, mut missing) = (Vec::new(), Vec::new());
        if self.spec.artifacts.is_empty() {
            return (got, missing);
        }
        let dest_dir = task_dir.join("artifacts");
        let _ = std::fs::create_dir_all(&dest_dir);
        let templates = Templates::new();
        for source in &self.spec.artifacts {
            let path = match templates.render_with(source, vars) {
                Ok(p) => p,
                Err(e) => {
                    missing.push(format!("{source}: {e}"));
                    continue;
                }
            };
            let base = Path::new(&path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "artifact".into());
            let dest = dest_dir.join(&base);
            let bound = Duration::from_secs(60);
            match chaos::ext::with_timeout(
                self.node.name(),
                "collecting an artifact",
                bound,
                self.node.download(&path, &dest),
            )
            .await
            {
                Ok(_) => got.push(dest),
                Err(e) => {
                    let _ = std::fs::remove_file(&dest);
                    missing.push(format!("{path}: {e}"));
                }
            }
        }
        (got, missing)
    }
}
