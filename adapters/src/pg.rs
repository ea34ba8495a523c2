//! The PostgreSQL adapter's mapping of the history kinds onto SQL in autocommit, over the
//! minimal wire client of [`crate::pg_wire`] (re-exported here).
//!
//! | kind | SQL (tables created on connect if missing) |
//! |---|---|
//! | `read` / `write` / `delete` | `chaos_kv(k text primary key, v text)`: `SELECT` / upsert / `DELETE` (values as JSON text) |
//! | `cas` | `UPDATE … WHERE v = expected` (absent: `INSERT … ON CONFLICT DO NOTHING`); 0 rows is `fail` |
//! | `append` | one upsert on `chaos_kv` (atomic) editing the JSON text: a string onto absent or a string concatenates, anything else onto absent or a list is its last element (`["a",3]`), else `fail` with nothing changed |
//! | `add` / `read_set` | `chaos_set(k text, v text)`: `INSERT` / `SELECT` |
//! | `incr` / `read_counter` | `chaos_counter(k text primary key, n bigint)`: upsert adding / `SELECT` (absent = 0) |
//! | `generate` | `nextval('chaos_ids')` |
//! | `txn` | `chaos_list(k text primary key, v jsonb)`, one statement per micro-operation between `BEGIN ISOLATION LEVEL …` and `COMMIT`: `append` an upsert concatenating, `r` a `SELECT` (absent = `[]`) |
//!
//! Outcomes: a connection that cannot be made (the TCP connect and the startup exchange each
//! bounded by the timeout) or an error reply (the statement rolled back) is `fail`; a connection
//! lost or timed out after the statement was sent is `unknown` for anything that writes (an
//! `append` too) and `fail` for reads. A transaction is `fail` when anything before its `COMMIT`
//! goes wrong — a serialization failure, a deadlock, a lost connection: PostgreSQL never commits
//! a transaction whose `COMMIT` it did not receive — and `unknown` only when the connection is
//! lost while its `COMMIT` is in flight.

use std::time::Duration;

use chaos_check::{AdapterRequest, AdapterResponse, MicroOp, OpKind, micro_ops};
use serde_json::Value;

pub use crate::pg_wire::{PgConnection, QueryResult};

/// A SQL string literal (standard_conforming_strings, PostgreSQL's default since 9.1).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS chaos_kv (k text PRIMARY KEY, v text); \
    CREATE TABLE IF NOT EXISTS chaos_set (k text, v text); \
    CREATE TABLE IF NOT EXISTS chaos_counter (k text PRIMARY KEY, n bigint); \
    CREATE TABLE IF NOT EXISTS chaos_list (k text PRIMARY KEY, v jsonb NOT NULL); \
    CREATE SEQUENCE IF NOT EXISTS chaos_ids";

/// The isolation level `txn` operations run at (`BEGIN ISOLATION LEVEL …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// `READ UNCOMMITTED` (PostgreSQL runs it as read committed).
    ReadUncommitted,
    /// `READ COMMITTED`, PostgreSQL's default: allows G-single (read skew) and G2 (write skew).
    ReadCommitted,
    /// `REPEATABLE READ`, PostgreSQL's snapshot isolation: allows G2 (write skew).
    RepeatableRead,
    /// `SERIALIZABLE` (serializable snapshot isolation): no anomaly; conflicts abort with 40001.
    #[default]
    Serializable,
}

impl Isolation {
    /// Every level, weakest first.
    pub const ALL: [Isolation; 4] = [
        Isolation::ReadUncommitted,
        Isolation::ReadCommitted,
        Isolation::RepeatableRead,
        Isolation::Serializable,
    ];

    /// The name `--isolation` takes: `read-committed`, `serializable`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::ReadUncommitted => "read-uncommitted",
            Isolation::ReadCommitted => "read-committed",
            Isolation::RepeatableRead => "repeatable-read",
            Isolation::Serializable => "serializable",
        }
    }

    /// The level as SQL spells it.
    pub fn sql(self) -> &'static str {
        match self {
            Isolation::ReadUncommitted => "READ UNCOMMITTED",
            Isolation::ReadCommitted => "READ COMMITTED",
            Isolation::RepeatableRead => "REPEATABLE READ",
            Isolation::Serializable => "SERIALIZABLE",
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;

    /// Accepts the names of [`Isolation::as_str`], also with spaces or underscores and in any case
    /// (`"read committed"`, `"READ_COMMITTED"`).
    fn from_str(name: &str) -> Result<Isolation, String> {
        let wanted = name.trim().to_ascii_lowercase().replace([' ', '_'], "-");
        Isolation::ALL
            .into_iter()
            .find(|i| i.as_str() == wanted)
            .ok_or_else(|| {
                format!(
                    "unknown isolation level `{name}`; the levels are: {}",
                    Isolation::ALL.map(Isolation::as_str).join(", ")
                )
            })
    }
}

/// Why an operation did not complete, and whether it may have taken effect.
enum Failure {
    NotDone(String),
    Maybe(String),
}

/// The PostgreSQL adapter: where to connect, and the connection (made on demand).
pub struct PgAdapter {
    /// `HOST:PORT`.
    pub addr: String,
    /// Role to log in as.
    pub user: String,
    /// Database.
    pub database: String,
    /// Cleartext password, if the server asks for one.
    pub password: Option<String>,
    /// Bound on each reply.
    pub timeout: Duration,
    /// The isolation level of `txn` operations (default serializable).
    pub isolation: Isolation,
    conn: Option<PgConnection>,
}

impl PgAdapter {
    /// An adapter for the server at `addr`.
    pub fn new(
        addr: String,
        user: String,
        database: String,
        password: Option<String>,
        timeout: Duration,
    ) -> PgAdapter {
        PgAdapter {
            addr,
            user,
            database,
            password,
            timeout,
            isolation: Isolation::default(),
            conn: None,
        }
    }

    /// The same adapter, running `txn` operations at `isolation`.
    pub fn with_isolation(mut self, isolation: Isolation) -> PgAdapter {
        self.isolation = isolation;
        self
    }

    fn run(&mut self, sql: &str) -> Result<QueryResult, Failure> {
        if self.conn.is_none() {
            let mut conn = PgConnection::connect(
                &self.addr,
                &self.user,
                &self.database,
                self.password.as_deref(),
                self.timeout,
            )
            // The error names the server, the phase and the bound.
            .map_err(|e| Failure::NotDone(e.to_string()))?;
            // Concurrent first connections may race creating the schema; the loser's error is
            // harmless (the winner created it).
            let _ = conn.query(SCHEMA);
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::NotDone("no connection".into()));
        };
        match conn.query(sql) {
            Ok(r) => match r.error {
                Some(e) => Err(Failure::NotDone(format!("postgres: {e}"))),
                None => Ok(r),
            },
            Err(e) => {
                self.conn = None;
                Err(Failure::Maybe(format!("talking to {}: {e}", self.addr)))
            }
        }
    }

    /// Performs one request.
    pub fn apply(&mut self, req: AdapterRequest) -> AdapterResponse {
        let id = req.id;
        let writes = !matches!(req.kind, OpKind::Read | OpKind::ReadSet | OpKind::ReadCounter);
        match self.perform(&req) {
            Ok(value) => AdapterResponse::ok(id, value),
            Err(Failure::NotDone(e)) => AdapterResponse::fail(id, e),
            Err(Failure::Maybe(e)) if writes => AdapterResponse::unknown(id, e),
            Err(Failure::Maybe(e)) => AdapterResponse::fail(id, e),
        }
    }

    fn perform(&mut self, req: &AdapterRequest) -> Result<Option<Value>, Failure> {
        let k = literal(req.key.as_deref().unwrap_or_default());
        let v = literal(
            &req.value
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_else(|| "null".into()),
        );
        let first = |r: QueryResult| {
            r.rows
                .into_iter()
                .next()
                .and_then(|row| row.into_iter().next().flatten())
        };
        match req.kind {
            OpKind::Read => {
                let r = self.run(&format!("SELECT v FROM chaos_kv WHERE k = {k}"))?;
                Ok(Some(first(r).map(|t| parse(&t)).unwrap_or(Value::Null)))
            }
            OpKind::Write => self
                .run(&format!(
                    "INSERT INTO chaos_kv VALUES ({k}, {v}) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"
                ))
                .map(|_| None),
            OpKind::Delete => self
                .run(&format!("DELETE FROM chaos_kv WHERE k = {k}"))
                .map(|_| None),
            OpKind::Cas => {
                let r = match &req.expected {
                    None | Some(Value::Null) => self.run(&format!(
                        "INSERT INTO chaos_kv VALUES ({k}, {v}) ON CONFLICT (k) DO NOTHING"
                    ))?,
                    Some(e) => self.run(&format!(
                        "UPDATE chaos_kv SET v = {v} WHERE k = {k} AND v = {}",
                        literal(&e.to_string())
                    ))?,
                };
                if r.tag.ends_with(" 1") {
                    Ok(None)
                } else {
                    Err(Failure::NotDone(
                        "the register did not hold the expected value".into(),
                    ))
                }
            }
            OpKind::Add => self
                .run(&format!("INSERT INTO chaos_set VALUES ({k}, {v})"))
                .map(|_| None),
            OpKind::ReadSet => {
                let r = self.run(&format!("SELECT v FROM chaos_set WHERE k = {k}"))?;
                Ok(Some(Value::Array(
                    r.rows
                        .into_iter()
                        .filter_map(|row| row.into_iter().next().flatten())
                        .map(|t| parse(&t))
                        .collect(),
                )))
            }
            OpKind::Incr => {
                let by = req.value.as_ref().and_then(Value::as_i64).unwrap_or(1);
                self.run(&format!(
                    "INSERT INTO chaos_counter VALUES ({k}, {by}) ON CONFLICT (k) DO UPDATE SET n = chaos_counter.n + EXCLUDED.n"
                ))
                .map(|_| None)
            }
            OpKind::ReadCounter => {
                let r = self.run(&format!("SELECT n FROM chaos_counter WHERE k = {k}"))?;
                let n = first(r).and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
                Ok(Some(Value::from(n)))
            }
            OpKind::Generate => {
                let r = self.run("SELECT nextval('chaos_ids')")?;
                let n = first(r).and_then(|t| t.parse::<i64>().ok());
                n.map(|n| Some(Value::from(n)))
                    .ok_or_else(|| Failure::NotDone("nextval returned nothing".into()))
            }
            OpKind::Txn => self.txn(req.value.as_ref().unwrap_or(&Value::Null)),
            OpKind::Append => {
                let element = match &req.value {
                    None | Some(Value::Null) => {
                        return Err(Failure::NotDone("an append needs a value (not null)".into()));
                    }
                    Some(e) => e,
                };
                let r = self.run(&append_sql(&k, element))?;
                // `INSERT 0 0`: the row was there and the upsert's WHERE refused it.
                if r.tag.ends_with(" 1") {
                    Ok(None)
                } else {
                    Err(Failure::NotDone(format!(
                        "the register holds a value {element} cannot be appended to (a number, \
                         object or boolean{})",
                        if element.is_string() { "" } else { ", or a string" }
                    )))
                }
            }
        }
    }
}

impl PgAdapter {
    /// Runs a `txn`: `BEGIN`, a statement per micro-operation, `COMMIT`. Only a connection lost
    /// while `COMMIT` is in flight leaves the outcome open ([`Failure::Maybe`]); anything earlier
    /// means it did not commit (the server aborts a transaction whose session ends), so it is
    /// [`Failure::NotDone`], and an error reply is rolled back before the next request.
    fn txn(&mut self, value: &Value) -> Result<Option<Value>, Failure> {
        let mops = micro_ops(value).map_err(Failure::NotDone)?;
        let begin = format!("BEGIN ISOLATION LEVEL {}", self.isolation.sql());
        self.in_txn(&begin)?;
        let mut done = Vec::with_capacity(mops.len());
        for mop in &mops {
            match mop {
                MicroOp::Append { key, element } => {
                    let one = literal(&Value::Array(vec![(*element).clone()]).to_string());
                    self.in_txn(&format!(
                        "INSERT INTO chaos_list AS t VALUES ({}, {one}::jsonb) \
                         ON CONFLICT (k) DO UPDATE SET v = t.v || EXCLUDED.v",
                        literal(key)
                    ))?;
                    done.push(Value::Array(vec![
                        "append".into(),
                        key.as_ref().into(),
                        (*element).clone(),
                    ]));
                }
                MicroOp::Read { key, .. } => {
                    let r = self.in_txn(&format!(
                        "SELECT v::text FROM chaos_list WHERE k = {}",
                        literal(key)
                    ))?;
                    let list = match r
                        .rows
                        .into_iter()
                        .next()
                        .and_then(|row| row.into_iter().next().flatten())
                    {
                        None => Value::Array(Vec::new()),
                        Some(text) => match parse(&text) {
                            list @ Value::Array(_) => list,
                            other => {
                                self.rollback();
                                return Err(Failure::NotDone(format!(
                                    "chaos_list holds {other} for key {key}, not a list; was the table written by something else?"
                                )));
                            }
                        },
                    };
                    done.push(Value::Array(vec!["r".into(), key.as_ref().into(), list]));
                }
            }
        }
        match self.run("COMMIT") {
            Ok(_) => Ok(Some(Value::Array(done))),
            // An error reply to COMMIT (a serialization failure found at commit) rolled it back.
            Err(Failure::NotDone(e)) => Err(Failure::NotDone(e)),
            Err(Failure::Maybe(e)) => Err(Failure::Maybe(format!("during COMMIT: {e}"))),
        }
    }

    /// One statement inside an open transaction: an error reply rolls the transaction back, and a
    /// lost connection (which the server answers by aborting it) is not a commit either.
    fn in_txn(&mut self, sql: &str) -> Result<QueryResult, Failure> {
        match self.run(sql) {
            Ok(r) => Ok(r),
            Err(Failure::NotDone(e)) => {
                self.rollback();
                Err(Failure::NotDone(e))
            }
            Err(Failure::Maybe(e)) => Err(Failure::NotDone(format!("{e} (before COMMIT: not committed)"))),
        }
    }

    /// Ends a failed transaction so the session can serve the next request; a connection that
    /// cannot do even that is dropped (the server then aborts the transaction itself).
    fn rollback(&mut self) {
        // No connection (it could not be made): nothing to roll back, and no new one to make.
        if self.conn.is_some() && self.run("ROLLBACK").is_err() {
            self.conn = None;
        }
    }
}

/// The one statement appending `element` to the register `k` (a SQL literal), in porcupine's
/// key-value model extended to lists (docs/history.md, "Appending registers"): a string onto an
/// absent register or a string concatenates, anything else onto an absent register or a list
/// becomes its last element, and nothing else changes the register (`INSERT 0 0`).
///
/// The value is JSON text as `serde_json` writes it, so the statement edits the text rather
/// than going through `jsonb` (whose rendering differs: `[1, 2]`), keeping it the text a `write`
/// of the same value stores, which `cas` compares: a string's escaped contents concatenate as
/// its characters do, and a compact list gains `,ELEMENT` before its `]`. A stored `null` is
/// absent, as a read takes it.
fn append_sql(k: &str, element: &Value) -> String {
    let e = literal(&element.to_string());
    // Inserted when the key is absent; `EXCLUDED.v` below.
    let fresh = if element.is_string() {
        e.clone()
    } else {
        literal(&Value::Array(vec![element.clone()]).to_string())
    };
    let onto_list =
        format!("CASE WHEN t.v = '[]' THEN '[' || {e} || ']' ELSE left(t.v, -1) || ',' || {e} || ']' END");
    let (set, allowed) = if element.is_string() {
        (
            format!(
                "CASE WHEN t.v = 'null' THEN EXCLUDED.v \
                 WHEN left(t.v, 1) = '\"' THEN left(t.v, -1) || substr(EXCLUDED.v, 2) \
                 ELSE {onto_list} END"
            ),
            "t.v = 'null' OR left(t.v, 1) IN ('\"', '[')",
        )
    } else {
        (
            format!("CASE WHEN t.v = 'null' THEN EXCLUDED.v ELSE {onto_list} END"),
            "t.v = 'null' OR left(t.v, 1) = '['",
        )
    };
    format!(
        "INSERT INTO chaos_kv AS t VALUES ({k}, {fresh}) ON CONFLICT (k) DO UPDATE SET v = {set} WHERE {allowed}"
    )
}

/// A stored value: JSON when it parses, else the text.
fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg_wire::cstring;
    use std::io::{Read, Write};

    #[test]
    fn literals_escape_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn isolation_levels_parse_in_any_spelling_and_name_the_choices() {
        assert_eq!("read committed".parse(), Ok(Isolation::ReadCommitted));
        assert_eq!("REPEATABLE_READ".parse(), Ok(Isolation::RepeatableRead));
        assert_eq!("serializable".parse::<Isolation>().unwrap().sql(), "SERIALIZABLE");
        let e = "snapshot".parse::<Isolation>().unwrap_err();
        assert!(
            e.contains("`snapshot`") && e.contains("read-committed, repeatable-read"),
            "{e}"
        );
    }

    /// A scripted server: answers the startup, then each query by its first word — `ok` (an
    /// empty result), `error` (40001 and, in a transaction, the failed state) or `hang up`
    /// (closes the connection) — and records the queries it received.
    fn scripted(script: fn(&str) -> &'static str) -> (String, std::sync::mpsc::Receiver<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (seen, queries) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut len = [0u8; 4];
                if stream.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut startup = vec![0; i32::from_be_bytes(len) as usize - 4];
                let _ = stream.read_exact(&mut startup);
                let reply = |tag: u8, body: &[u8]| {
                    let mut m = vec![tag];
                    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
                    m.extend_from_slice(body);
                    m
                };
                let _ = stream.write_all(&[reply(b'R', &[0, 0, 0, 0]), reply(b'Z', b"I")].concat());
                loop {
                    let mut head = [0u8; 5];
                    if stream.read_exact(&mut head).is_err() {
                        break;
                    }
                    let mut body =
                        vec![0; i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4];
                    let _ = stream.read_exact(&mut body);
                    let sql = cstring(&body);
                    let _ = seen.send(sql.clone());
                    let answer = match script(&sql) {
                        "hang up" => break,
                        "error" => [
                            reply(b'E', b"SERROR\0C40001\0Mcould not serialize access\0\0"),
                            reply(b'Z', b"E"),
                        ]
                        .concat(),
                        _ => [reply(b'C', b"OK\0"), reply(b'Z', b"T")].concat(),
                    };
                    let _ = stream.write_all(&answer);
                }
            }
        });
        (addr, queries)
    }

    fn txn_outcome(script: fn(&str) -> &'static str) -> (AdapterResponse, Vec<String>) {
        let (addr, queries) = scripted(script);
        let mut adapter = PgAdapter::new(addr, "u".into(), "d".into(), None, Duration::from_secs(5))
            .with_isolation(Isolation::ReadCommitted);
        let response = adapter.apply(AdapterRequest {
            id: 7,
            kind: OpKind::Txn,
            key: None,
            value: Some(serde_json::json!([["append", "x", 1], ["r", "y", null]])),
            expected: None,
        });
        drop(adapter);
        (response, queries.try_iter().collect())
    }

    /// `append`, like every write, is `unknown` when the connection is lost with it in flight
    /// and `fail` when the server refuses it; the statement is one upsert on chaos_kv.
    #[test]
    fn an_append_lost_in_flight_is_unknown_and_a_refused_one_fails() {
        let append = |script: fn(&str) -> &'static str| {
            let (addr, queries) = scripted(script);
            let mut adapter = PgAdapter::new(addr, "u".into(), "d".into(), None, Duration::from_secs(5));
            let r = adapter.apply(AdapterRequest {
                id: 9,
                kind: OpKind::Append,
                key: Some("k".into()),
                value: Some(serde_json::json!("x")),
                expected: None,
            });
            drop(adapter);
            (r, queries.try_iter().collect::<Vec<_>>())
        };
        let in_flight = |sql: &str| {
            if sql.starts_with("INSERT INTO chaos_kv") {
                "hang up"
            } else {
                "ok"
            }
        };
        let (r, sent) = append(in_flight);
        assert_eq!(r.outcome, chaos_check::Outcome::Unknown, "{r:?}");
        let statement = sent
            .iter()
            .filter(|q| q.starts_with("INSERT INTO chaos_kv"))
            .count();
        assert_eq!(statement, 1, "one statement, autocommit: {sent:?}");
        assert!(!sent.iter().any(|q| q.starts_with("BEGIN")), "{sent:?}");

        let refused = |sql: &str| {
            if sql.starts_with("INSERT INTO chaos_kv") {
                "error"
            } else {
                "ok"
            }
        };
        let (r, _) = append(refused);
        assert_eq!(r.outcome, chaos_check::Outcome::Fail, "{r:?}");
        assert!(r.error.as_deref().unwrap().contains("40001"), "{r:?}");
    }

    #[test]
    fn a_txn_is_unknown_only_when_its_commit_is_in_flight() {
        let (r, sent) = txn_outcome(|sql| if sql == "COMMIT" { "hang up" } else { "ok" });
        assert_eq!(r.outcome, chaos_check::Outcome::Unknown, "{r:?}");
        assert!(r.error.as_deref().unwrap().contains("during COMMIT"), "{r:?}");
        assert!(
            sent[1].starts_with("BEGIN ISOLATION LEVEL READ COMMITTED"),
            "{sent:?}"
        );

        let (r, _) = txn_outcome(|sql| {
            if sql.starts_with("SELECT v::text") {
                "hang up"
            } else {
                "ok"
            }
        });
        assert_eq!(r.outcome, chaos_check::Outcome::Fail, "lost before COMMIT: {r:?}");

        let (r, sent) = txn_outcome(|sql| {
            if sql.starts_with("INSERT INTO chaos_list") {
                "error"
            } else {
                "ok"
            }
        });
        assert_eq!(r.outcome, chaos_check::Outcome::Fail, "{r:?}");
        assert!(r.error.as_deref().unwrap().contains("40001"), "{r:?}");
        assert_eq!(sent.last().map(String::as_str), Some("ROLLBACK"), "{sent:?}");
        assert!(!sent.iter().any(|q| q == "COMMIT"), "{sent:?}");

        let (r, _) = txn_outcome(|sql| if sql == "COMMIT" { "error" } else { "ok" });
        assert_eq!(r.outcome, chaos_check::Outcome::Fail, "refused at COMMIT: {r:?}");

        let (r, _) = txn_outcome(|_| "ok");
        assert_eq!(r.outcome, chaos_check::Outcome::Ok, "{r:?}");
        assert_eq!(
            r.value,
            Some(serde_json::json!([["append", "x", 1], ["r", "y", []]]))
        );
    }
}
