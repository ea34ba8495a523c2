//! Leases: one runner at a time on a persistent agent (a machine of the `hosts` backend that runs
//! `chaos-agent` as a service).
//!
//! A runner takes the lease with `POST /v1/lease` ([`LeaseRequest`]) before it uses the agent;
//! the agent creates the run's directory, [`run_dir`] under its root directory, and answers with
//! the [`Lease`]. While the lease is held, another runner's request is refused with
//! [`crate::ErrorKind::Conflict`] and the message "in use by runner WHO since WHEN" (the runner
//! prefixes the host's name), unless it asks to take over ([`LeaseRequest::takeover`]): then the
//! agent first ends the current run. A lease lives as long as heartbeats arrive within
//! [`LeaseRequest::heartbeat_timeout_ms`]: an agent started with `--on-heartbeat-loss wait`
//! that stops hearing from its runner ends the run, so a crashed runner never locks a machine.
//!
//! The runner names its run in heartbeats (`POST /v1/heartbeat?run=ID`): such a heartbeat is
//! refused with [`crate::ErrorKind::Conflict`] once that run no longer holds the lease, so a
//! runner whose run ended learns it, and a taken-over runner keeps no other run alive.
//!
//! **Ending a run** (`DELETE /v1/lease?run=ID`, `POST /v1/shutdown?run=ID` on a persistent
//! agent, heartbeat loss, takeover) heals every fault, kills every process tree the agent started,
//! removes the run directory and releases the lease; the agent keeps serving.
//!
//! **Keeping a run's directory** (a failed run the user wants to look at): `keep=true` on the
//! release or shutdown (`DELETE /v1/lease?run=ID&keep=true`) ends the run the same way but
//! leaves its directory, and so do heartbeat loss and a takeover when the lease asked for it
//! ([`LeaseRequest::keep_on_heartbeat_loss`]: the runner is presumed gone). A kept directory is marked by an empty file
//! [`kept_marker`] beside it, so a restarted agent (which removes its predecessor's run
//! directories) leaves it too; removing a kept directory is the user's job.
//!
//! | method | path | request | reply |
//! |---|---|---|---|
//! | `POST` | `/v1/lease` | [`LeaseRequest`] | [`Lease`]; `409` when held by another run |
//! | `GET` | `/v1/lease` | – | `Option<`[`Lease`]`>`: the lease in force |
//! | `DELETE` | `/v1/lease?run=ID[&keep=true]` | – | `204`; ends run `ID` (no-op when it holds no lease), keeping its directory with `keep=true` |

use serde::{Deserialize, Serialize};

/// Longest run id.
pub const MAX_RUN_ID_LEN: usize = 64;

/// Directory, relative to the agent's root directory, under which run directories live.
pub const RUNS_DIR: &str = "runs";

/// `POST /v1/lease` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// Who asks, as shown to a refused runner: e.g. `alice@laptop pid 4242`.
    pub runner: String,
    /// The run's id ([`validate_run_id`]): names the run directory. Asking again with the id of
    /// the run holding the lease renews it (same directory).
    pub run: String,
    /// End whatever run holds the lease and take it.
    #[serde(default)]
    pub takeover: bool,
    /// How long the agent waits without a heartbeat before it ends the run (and, for an agent
    /// that is not persistent, acts as `--on-heartbeat-loss` says). Replaces the agent's own
    /// `--heartbeat-timeout` while the lease is held.
    pub heartbeat_timeout_ms: u64,
    /// Keep the run directory when the run ends by heartbeat loss or a takeover (the runner
    /// is presumed dead: its user may want to look at what it left). Releases and shutdowns
    /// say for themselves.
    #[serde(default)]
    pub keep_on_heartbeat_loss: bool,
}

/// The lease in force: `POST /v1/lease` reply and `GET /v1/lease` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// [`LeaseRequest::runner`] of the holder.
    pub runner: String,
    /// [`LeaseRequest::run`] of the holder.
    pub run: String,
    /// When the lease was granted, in milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// The run's directory on the machine (absolute): the nodes' root directory.
    pub run_dir: String,
    /// [`LeaseRequest::keep_on_heartbeat_loss`] of the holder.
    #[serde(default)]
    pub keep_on_heartbeat_loss: bool,
}

/// Checks a run id: 1 to [`MAX_RUN_ID_LEN`] characters from `[A-Za-z0-9_.-]`, not starting
/// with `.` (it becomes a directory name). The error is one line naming the id and the rule.
pub fn validate_run_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_RUN_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "run id {id:?}: use 1-{MAX_RUN_ID_LEN} characters from [A-Za-z0-9_.-], not starting with '.'"
        ))
    }
}

/// The directory of run `run` under the agent's root directory `root`.
pub fn run_dir(root: &str, run: &str) -> String {
    format!("{}/{RUNS_DIR}/{run}", root.trim_end_matches('/'))
}

/// The marker of a kept run directory `run_dir` ([`run_dir`]): an empty file beside it,
/// `.kept.RUN` (no run id starts with `.`, so no run directory has that name).
pub fn kept_marker(run_dir: &str) -> String {
    let dir = run_dir.trim_end_matches('/');
    match dir.rsplit_once('/') {
        Some((parent, run)) => format!("{parent}/.kept.{run}"),
        None => format!(".kept.{dir}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_plain_names() {
        assert!(validate_run_id("r-1.a_B").is_ok());
        for bad in ["", ".", "..", ".x", "a/b", "a b", &"x".repeat(MAX_RUN_ID_LEN + 1)] {
            let e = validate_run_id(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert_eq!(run_dir("/var/lib/chaos/", "r1"), "/var/lib/chaos/runs/r1");
        assert_eq!(
            kept_marker("/var/lib/chaos/runs/r1"),
            "/var/lib/chaos/runs/.kept.r1"
        );
    }

    #[test]
    fn lease_request_denies_unknown_fields() {
        let e = serde_json::from_str::<LeaseRequest>(
            r#"{"runner":"a","run":"r","heartbeat_timeout_ms":1,"x":1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("x"), "{e}");
    }
}
