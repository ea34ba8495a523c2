//! The PostgreSQL adapter across a replicated cluster (Patroni, repmgr, …): given every
//! server's address, it sends each operation to the **primary** — the first server, in the
//! order given, where `SELECT pg_is_in_recovery()` answers false — and looks for it again after
//! any operation that did not succeed, since a failover shows up as an error (a connection
//! closed by a demotion, a read-only transaction on a demoted server, a timeout).
//!
//! Outcomes are [`PgAdapter`]'s: an error after a write was sent is `unknown`; no primary found
//! (every server down, or still a replica while a failover is under way) is `fail`, nothing
//! having been sent. Reads go to the primary too.
//!
//! A server that cannot be reached costs its connection attempt during discovery: the TCP
//! connect and then the startup exchange are each bounded by the timeout, so a server behind a
//! partition that drops its packets costs the timeout (not the system's TCP connect timeout,
//! minutes) and discovery moves on to the next one.

use std::time::Duration;

use chaos_check::{AdapterRequest, AdapterResponse, Outcome};

use crate::pg::{Isolation, PgAdapter, PgConnection};

/// Where to log in, shared by every server.
#[derive(Debug, Clone)]
pub struct Login {
    /// Role to log in as.
    pub user: String,
    /// Database.
    pub database: String,
    /// Cleartext password, if the servers ask for one.
    pub password: Option<String>,
    /// Bound on each reply.
    pub timeout: Duration,
    /// Isolation level of `txn` operations.
    pub isolation: Isolation,
}

/// The adapter: the servers, and the one believed to be the primary with its connection.
pub struct FailoverPg {
    hosts: Vec<String>,
    login: Login,
    primary: Option<(usize, PgAdapter)>,
}

impl FailoverPg {
    /// An adapter over `hosts` (`HOST:PORT` each), none known to be the primary yet.
    pub fn new(hosts: Vec<String>, login: Login) -> FailoverPg {
        FailoverPg {
            hosts,
            login,
            primary: None,
        }
    }

    /// The host currently believed to be the primary, if any.
    pub fn primary(&self) -> Option<&str> {
        self.primary.as_ref().map(|(i, _)| self.hosts[*i].as_str())
    }

    /// Performs one request on the primary, finding it first if need be.
    pub fn apply(&mut self, req: AdapterRequest) -> AdapterResponse {
        if self.primary.is_none()
            && let Err(why) = self.discover()
        {
            return AdapterResponse::fail(req.id, why);
        }
        let Some((_, adapter)) = self.primary.as_mut() else {
            return AdapterResponse::fail(req.id, "no primary".to_string());
        };
        let response = adapter.apply(req);
        if response.outcome != Outcome::Ok {
            // The primary may have changed: look again before the next operation, on fresh
            // connections (a connection to a server that was demoted and promoted again since
            // would only fail once more).
            self.primary = None;
        }
        response
    }

    /// Finds the first server not in recovery. The error says what each server answered.
    fn discover(&mut self) -> Result<(), String> {
        let mut seen = Vec::with_capacity(self.hosts.len());
        for (i, host) in self.hosts.iter().enumerate() {
            match self.in_recovery(host) {
                Ok(false) => {
                    // stderr is the adapter's log, which the runner keeps.
                    eprintln!("chaos-adapter-postgres: the primary is {host}");
                    self.primary = Some((
                        i,
                        PgAdapter::new(
                            host.clone(),
                            self.login.user.clone(),
                            self.login.database.clone(),
                            self.login.password.clone(),
                            self.login.timeout,
                        )
                        .with_isolation(self.login.isolation),
                    ));
                    return Ok(());
                }
                Ok(true) => seen.push(format!("{host}: a replica")),
                Err(e) => seen.push(e),
            }
        }
        Err(format!("no primary among the servers ({})", seen.join("; ")))
    }

    /// Whether the server at `host` is a replica (`pg_is_in_recovery()`).
    fn in_recovery(&self, host: &str) -> Result<bool, String> {
        let l = &self.login;
        // Bounded by the timeout, so a blackholed server costs that much and discovery moves on;
        // the error names the host already.
        let mut conn = PgConnection::connect(host, &l.user, &l.database, l.password.as_deref(), l.timeout)
            .map_err(|e| e.to_string())?;
        let r = conn
            .query("SELECT pg_is_in_recovery()")
            .map_err(|e| format!("{host}: asking pg_is_in_recovery(): {e}"))?;
        if let Some(e) = r.error {
            return Err(format!("{host}: pg_is_in_recovery(): {e}"));
        }
        match r
            .rows
            .first()
            .and_then(|row| row.first())
            .cloned()
            .flatten()
            .as_deref()
        {
            Some("f") => Ok(false),
            Some("t") => Ok(true),
            other => Err(format!("{host}: pg_is_in_recovery() answered {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaos_check::OpKind;

    fn login() -> Login {
        Login {
            user: "postgres".into(),
            database: "postgres".into(),
            password: None,
            timeout: Duration::from_millis(500),
            isolation: Isolation::default(),
        }
    }

    #[test]
    fn without_a_reachable_server_an_operation_fails_naming_every_server() {
        // Ports nobody listens on: refused at once, so nothing was sent.
        let free = |_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .to_string()
        };
        let hosts: Vec<String> = (0..2).map(free).collect();
        let mut pg = FailoverPg::new(hosts.clone(), login());
        let req: AdapterRequest =
            serde_json::from_str(r#"{"id":3,"kind":"add","key":"s","value":1}"#).unwrap();
        assert_eq!(req.kind, OpKind::Add);
        let r = pg.apply(req);
        assert_eq!(r.outcome, Outcome::Fail);
        let error = r.error.unwrap_or_default();
        assert!(
            error.contains("no primary") && hosts.iter().all(|h| error.contains(h.as_str())),
            "{error}"
        );
        assert_eq!(pg.primary(), None);
    }
}
