//! The task file (`chaos tasks FILE.toml`): the cluster, where the task list comes from, and
//! how each task runs. `docs/tasks.md` documents every field.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::{ClusterSpec, CommandLine, Dur, FaultCase, Schedule};

/// A whole task file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    /// Name (run directories are grouped by it); default: the file's stem.
    #[serde(default)]
    pub name: String,
    /// The nodes (as in scenarios).
    #[serde(default)]
    pub cluster: ClusterSpec,
    /// The tasks.
    pub tasks: TaskSpec,
    /// Fault cases injected while the tasks run: the scenario's `[[faults]]`, same fields
    /// (network families only: there is no system under test to kill or pause).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultCase>,
    /// How the fault cases are ordered and paced: the scenario's `[schedule]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

/// `[tasks]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The tasks, given inline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub list: Vec<String>,
    /// Or: a command run once on a node whose non-empty output lines are the tasks (e.g. a
    /// test binary's `--list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_from: Option<ListFrom>,
    /// The command run for each task, a template seeing `task`, `index`, `attempt` and `node`
    /// (`name`, `ip`, `root`).
    pub command: CommandLine,
    /// Bound on one attempt (default 5 minutes); the process is killed past it.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Attempts after a failed one (default 0). A task that passes after a retry is `flaky`.
    #[serde(default)]
    pub retries: u32,
    /// Tasks running at once on each node (default 1).
    #[serde(default = "default_per_node")]
    pub per_node: usize,
    /// Paths on the node (templates, like `command`) copied into the run directory after the
    /// task's last attempt, under `tasks/<index>/artifacts/`. A missing one is noted, not an
    /// error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
}

/// `[tasks.list_from]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFrom {
    /// The command (a template seeing `node`).
    pub command: CommandLine,
    /// The node it runs on (default `n1`).
    #[serde(default = "default_list_node")]
    pub node: String,
    /// Bound on it (default 1 minute).
    #[serde(default = "default_list_timeout")]
    pub timeout: Dur,
}

fn default_timeout() -> Dur {
    Dur::secs(300)
}

fn default_per_node() -> usize {
    1
}

fn default_list_node() -> String {
    "n1".into()
}

fn default_list_timeout() -> Dur {
    Dur::secs(60)
}

/// Most tasks one file may list (each gets a directory).
pub const MAX_TASKS: usize = 100_000;

/// A task file that cannot be used; the message names the file, the line when known, the field
/// and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TaskFileError(pub String);

impl TaskFile {
    /// Reads and checks `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<TaskFile, TaskFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| TaskFileError(format!("{}: cannot read: {e}", path.display())))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tasks".into());
        TaskFile::parse(&text, &path.display().to_string(), &stem)
    }

    /// Parses and checks `text` (`file` names it in errors, `stem` is the default name).
    pub fn parse(text: &str, file: &str, stem: &str) -> Result<TaskFile, TaskFileError> {
        let mut parsed: TaskFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!(":{line}")
                })
                .unwrap_or_default();
            TaskFileError(format!("{file}{at}: {}", e.message()))
        })?;
        if parsed.name.is_empty() {
            parsed.name = stem.to_string();
        }
        parsed.check(file)?;
        if let Err(errors) = parsed.fault_scenario() {
            return Err(TaskFileError(format!("{file}: {errors}")));
        }
        Ok(parsed)
    }

    /// The fault cases and schedule as a scenario without a system, for planning them from a
    /// seed and checking them exactly as a scenario's; `None` without fault cases.
    pub fn fault_scenario(&self) -> Result<Option<crate::Scenario>, crate::ScenarioErrors> {
        if self.faults.is_empty() {
            return Ok(None);
        }
        let header = format!("name = {}\n", toml::Value::String(self.name.clone()));
        let mut scenario = crate::Scenario::parse(&header, "tasks")?;
        scenario.cluster = self.cluster.clone();
        scenario.faults = self.faults.clone();
        if let Some(schedule) = &self.schedule {
            scenario.schedule = schedule.clone();
        }
        scenario.validate()?;
        Ok(Some(scenario))
    }

    fn check(&self, file: &str) -> Result<(), TaskFileError> {
        let bad = |field: &str, what: String| Err(TaskFileError(format!("{file}: field `{field}`: {what}")));
        let t = &self.tasks;
        match (t.list.is_empty(), &t.list_from) {
            (true, None) => {
                return bad(
                    "tasks",
                    "give the tasks: `list = [...]` or `[tasks.list_from]`".into(),
                );
            }
            (false, Some(_)) => {
                return bad(
                    "tasks.list_from",
                    "give either `list` or `list_from`, not both".into(),
                );
            }
            _ => {}
        }
        if t.list.len() > MAX_TASKS {
            return bad(
                "tasks.list",
                format!("{} tasks; at most {MAX_TASKS}", t.list.len()),
            );
        }
        if let Some(empty) = t.list.iter().position(|task| task.trim().is_empty()) {
            return bad(&format!("tasks.list[{empty}]"), "a task is empty".into());
        }
        if t.per_node == 0 {
            return bad("tasks.per_node", "must be at least 1".into());
        }
        if t.timeout.0.is_zero() {
            return bad("tasks.timeout", "must be more than 0".into());
        }
        if self.cluster.nodes == 0 {
            return bad("cluster.nodes", "must be at least 1".into());
        }
        if let Some(from) = &t.list_from {
            let k = from.node.strip_prefix('n').and_then(|k| k.parse::<usize>().ok());
            if !k.is_some_and(|k| (1..=self.cluster.nodes).contains(&k)) {
                return bad(
                    "tasks.list_from.node",
                    format!(
                        "no node `{}`; the nodes are n1 … n{}",
                        from.node, self.cluster.nodes
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_line_and_field() {
        let e = TaskFile::parse("[tasks]\ncomand = \"x\"\n", "t.toml", "t")
            .unwrap_err()
            .0;
        assert!(e.starts_with("t.toml:2: unknown field `comand`"), "{e}");
        let e = TaskFile::parse("[tasks]\ncommand = \"x\"\n", "t.toml", "t")
            .unwrap_err()
            .0;
        assert!(e.contains("field `tasks`: give the tasks"), "{e}");
        let e = TaskFile::parse(
            "[tasks]\ncommand = \"x\"\n[tasks.list_from]\ncommand = \"ls\"\nnode = \"n9\"\n",
            "t.toml",
            "t",
        )
        .unwrap_err()
        .0;
        assert!(e.contains("field `tasks.list_from.node`: no node `n9`"), "{e}");
        let ok = TaskFile::parse(
            "[tasks]\nlist = [\"a\"]\ncommand = \"echo {{ task }}\"\n",
            "t.toml",
            "t",
        )
        .unwrap();
        assert_eq!(ok.name, "t");
        assert_eq!(ok.tasks.per_node, 1);
    }
}
