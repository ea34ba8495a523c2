//! The endpoint paths of the agent's API, defined once: the agent routes them and the runner's
//! client requests them. Paths holding `{id}` are route templates; [`with_id`] fills them.

/// `GET`: [`crate::NodeInfo`].
pub const INFO: &str = "/v1/info";
/// `POST ?grace_ms=G&run=ID`: [`crate::HeartbeatReply`]; with `run`, `409` unless that run
/// holds the lease ([`crate::lease`]).
pub const HEARTBEAT: &str = "/v1/heartbeat";
/// `POST ?run=ID`: the agent kills its process trees and exits (a persistent agent ends run
/// `ID`, or the current run, instead).
pub const SHUTDOWN: &str = "/v1/shutdown";
/// `PUT`/`GET`/`DELETE ?path=P…`: file contents.
pub const FILES: &str = "/v1/files";
/// `GET ?path=P`: [`crate::FileStat`].
pub const FILES_STAT: &str = "/v1/files/stat";
/// `GET ?path=P`: directory entries.
pub const FILES_LIST: &str = "/v1/files/list";
/// `GET`: the process table; `POST`: start a process.
pub const PROCS: &str = "/v1/procs";
/// `GET`: WebSocket of an interactive process ([`crate::exec`]).
pub const PROCS_EXEC: &str = "/v1/procs/exec";
/// `POST`: signal process `{id}`.
pub const PROC_SIGNAL: &str = "/v1/procs/{id}/signal";
/// `POST ?timeout_ms=T`: wait for process `{id}`.
pub const PROC_WAIT: &str = "/v1/procs/{id}/wait";
/// `POST`: restart process `{id}`.
pub const PROC_RESTART: &str = "/v1/procs/{id}/restart";
/// `POST`: signal every process tree of the node.
pub const PROCS_KILL_ALL: &str = "/v1/procs/kill-all";
/// `POST`: signal processes matched by pid, group or name.
pub const SIGNAL: &str = "/v1/signal";
/// `GET`: active faults; `POST`: inject; `DELETE`: heal all.
pub const FAULTS: &str = "/v1/faults";
/// `DELETE`: heal fault `{id}`.
pub const FAULT: &str = "/v1/faults/{id}";
/// `GET`: what fault kinds and mechanisms the node supports.
pub const PROBE: &str = "/v1/probe";
/// `POST`: take the lease; `GET`: the lease in force; `DELETE ?run=ID`: end the run
/// ([`crate::lease`]).
pub const LEASE: &str = "/v1/lease";
/// `GET ?addr=HOST:PORT`: WebSocket of a TCP connection from the node ([`crate::dial`]).
pub const DIAL: &str = "/v1/dial";

/// `POST`: start a measurement server ([`crate::measure`]).
pub const MEASURE_SERVE: &str = "/v1/measure/serve";
/// `POST`: measure towards a measurement server ([`crate::measure`]).
pub const MEASURE_RUN: &str = "/v1/measure/run";

/// `template` with `{id}` replaced by `id` (which the caller has made path-safe).
pub fn with_id(template: &str, id: &str) -> String {
    template.replacen("{id}", id, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_under_the_api_prefix_and_templates_fill() {
        for path in [
            INFO,
            HEARTBEAT,
            SHUTDOWN,
            FILES,
            FILES_STAT,
            FILES_LIST,
            PROCS,
            PROCS_EXEC,
            PROC_SIGNAL,
            PROC_WAIT,
            PROC_RESTART,
            PROCS_KILL_ALL,
            SIGNAL,
            FAULTS,
            FAULT,
            PROBE,
            DIAL,
            MEASURE_SERVE,
            MEASURE_RUN,
            LEASE,
        ] {
            assert!(path.starts_with(crate::API_PREFIX), "{path}");
        }
        assert_eq!(with_id(PROC_SIGNAL, "p7"), "/v1/procs/p7/signal");
        assert_eq!(with_id(FAULT, "f-1"), "/v1/faults/f-1");
    }
}
