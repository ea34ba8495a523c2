//! The ZooKeeper adapter: its mapping of the history kinds onto znodes, over the small
//! client in [`jute`] — std only, so the adapter builds statically like the others.
//!
//! | kind | ZooKeeper (`ROOT` defaults to `/chaos`) |
//! |---|---|
//! | `write` / `delete` | `setData ROOT/KEY` (a `create` when absent); a delete writes `null` |
//! | `read` | `getData ROOT/KEY`, **confirmed** by a `multi` holding one `check` of the version read (a `create` of `null` when absent) |
//! | `cas` | `getData`, then `setData` with the version read (or `create` when `expected` is `null` and the node is absent) |
//! | `incr` / `read_counter` | versioned `setData` retried on `BadVersion` / a confirmed read of `ROOT/counter-KEY` |
//! | `add` / `read_set` | `create ROOT/set-KEY/VALUE` / `sync` then `getChildren` |
//! | `generate` | a sequential `create ROOT/ids/id-` (its sequence number is the id) |
//!
//! **Reads are linearizable, not just sequentially consistent.** A ZooKeeper read is answered
//! by whichever server the session is connected to, from its local state, which may lag the
//! leader; `sync` narrows that gap but is not a quorum operation (a leader that was deposed
//! without knowing it yet can still answer it). So a register or counter read here is a
//! `getData` followed by a `multi` with one `check` of the version it saw: the `multi` is a
//! write, ordered by the leader among all writes and committed by a quorum, and it succeeds
//! only if the znode still has that version — so the value read was the current one at that
//! point of the total order, inside the operation's interval. The adapter never deletes a
//! znode (a delete writes the value `null`), so a version names one value. A read that finds
//! no znode confirms the absence the same way, by creating it with `null`. That is what makes
//! the linearizability checker's verdict on a ZooKeeper history real. Set reads (`read_set`)
//! use `sync` first: the set checker judges only what the final reads contain.
//!
//! Outcomes: nothing sent (no server reachable, every server refused the session) or an error
//! code in the reply (`BadVersion`, `NoNode`, `NodeExists` where the kind cannot proceed) is
//! `fail`; a connection lost or timed out after a write was sent is `unknown`, for reads
//! `fail`. The adapter tries the servers in the order given (put the node-local one first),
//! keeps its session alive with a ping when it was idle for a third of the session timeout,
//! and after a broken connection starts a new session at the next operation.

pub mod jute;

use chaos_check::{AdapterRequest, AdapterResponse, OpKind};
use serde_json::Value;

pub use jute::*;

/// How an adapter-level step ended short of success.
enum Outcome {
    /// Definitely not applied.
    Fail(String),
    /// Possibly applied.
    Unknown(String),
}

impl From<Failure> for Outcome {
    fn from(f: Failure) -> Outcome {
        match f {
            Failure::NotSent(e) => Outcome::Fail(e),
            Failure::Maybe(e) => Outcome::Unknown(e),
        }
    }
}

/// How often a step that lost a race (a version that changed, a node created meanwhile) is
/// tried again before the operation answers `fail`.
const ATTEMPTS: usize = 5;

/// The ZooKeeper adapter: a client and the root under which it keeps its znodes.
pub struct ZkAdapter {
    client: ZkClient,
    root: String,
    root_made: bool,
    plain_reads: bool,
}

impl ZkAdapter {
    /// An adapter keeping its znodes under `root` (e.g. `/chaos`).
    pub fn new(client: ZkClient, root: impl Into<String>) -> ZkAdapter {
        let root = root.into();
        ZkAdapter {
            client,
            root: root.trim_end_matches('/').to_string(),
            root_made: false,
            plain_reads: false,
        }
    }

    /// Reads registers and counters with a plain `getData`, unconfirmed: what a typical
    /// ZooKeeper client does, sequentially consistent only — for seeing the linearizability
    /// checker catch the stale reads that the confirmation prevents.
    pub fn plain_reads(mut self, plain: bool) -> ZkAdapter {
        self.plain_reads = plain;
        self
    }

    /// Ends the session.
    pub fn close(&mut self) {
        self.client.close();
    }

    /// Performs one request.
    pub fn apply(&mut self, req: AdapterRequest) -> AdapterResponse {
        let id = req.id;
        let reads = matches!(req.kind, OpKind::Read | OpKind::ReadSet | OpKind::ReadCounter);
        match self.perform(&req) {
            Ok(value) => AdapterResponse::ok(id, value),
            Err(Outcome::Fail(e)) => AdapterResponse::fail(id, e),
            // A read changes nothing: if it may not have completed, it did not happen.
            Err(Outcome::Unknown(e)) if reads => AdapterResponse::fail(id, e),
            Err(Outcome::Unknown(e)) => AdapterResponse::unknown(id, e),
        }
    }

    fn perform(&mut self, req: &AdapterRequest) -> Result<Option<Value>, Outcome> {
        if !self.root_made {
            // Before anything that matters was sent: a failure here is a plain `fail`.
            self.make_path(&self.root.clone())
                .map_err(|e| Outcome::Fail(describe(e)))?;
            self.root_made = true;
        }
        let key = match (&req.kind, req.key.as_deref()) {
            (OpKind::Generate | OpKind::Txn, _) => String::new(),
            (_, Some(k)) if !k.is_empty() && !k.contains('/') => k.to_string(),
            (_, k) => return Err(Outcome::Fail(format!("key {k:?} is not a znode name"))),
        };
        let register = format!("{}/{key}", self.root);
        let counter = format!("{}/counter-{key}", self.root);
        match req.kind {
            OpKind::Read => self.confirmed_read(&register).map(Some),
            OpKind::Write => self.write(&register, req.value.clone().unwrap_or(Value::Null)),
            OpKind::Delete => self.write(&register, Value::Null),
            OpKind::Cas => self.cas(
                &register,
                req.expected.clone().unwrap_or(Value::Null),
                req.value.clone(),
            ),
            OpKind::Incr => self.incr(&counter, req.value.as_ref().and_then(Value::as_i64).unwrap_or(1)),
            OpKind::ReadCounter => match self.confirmed_read(&counter)? {
                Value::Null => Ok(Some(Value::from(0))),
                n if n.is_i64() => Ok(Some(n)),
                other => Err(Outcome::Fail(format!("{counter} holds {other}, not a counter"))),
            },
            OpKind::Add => self.add(&format!("{}/set-{key}", self.root), req.value.as_ref()),
            OpKind::ReadSet => self.read_set(&format!("{}/set-{key}", self.root)),
            OpKind::Generate => self.generate(),
            OpKind::Append | OpKind::Txn => Err(Outcome::Fail(format!(
                "this adapter does not offer `{}`",
                req.kind.as_str()
            ))),
        }
    }

    /// A call whose error code the caller interprets.
    fn call(&mut self, op: i32, body: &[u8]) -> Result<(i32, Vec<u8>), Outcome> {
        self.client.call(op, body).map_err(Outcome::from)
    }

    /// `create path data` (persistent or sequential): the error code and the created path.
    fn create(&mut self, path: &str, data: &[u8], sequential: bool) -> Result<(i32, String), Outcome> {
        let mut e = Encoder::default();
        e.string(path)
            .buffer(data)
            .open_acl()
            .int(if sequential { 2 } else { 0 });
        let (err, body) = self.call(op::CREATE, &e.0)?;
        let created = if err == 0 {
            Decoder::new(&body)
                .string()
                .map_err(|e| Outcome::Unknown(e.to_string()))?
        } else {
            String::new()
        };
        Ok((err, created))
    }

    /// `getData path`: `None` when the znode does not exist.
    fn get_data(&mut self, path: &str) -> Result<Option<(Value, Stat)>, Outcome> {
        let mut e = Encoder::default();
        e.string(path).bool(false);
        let (err, body) = self.call(op::GET_DATA, &e.0)?;
        match err {
            0 => {
                let mut d = Decoder::new(&body);
                let data = d.buffer().map_err(|e| Outcome::Fail(e.to_string()))?;
                let stat = d.stat().map_err(|e| Outcome::Fail(e.to_string()))?;
                Ok(Some((parse(data.unwrap_or_default()), stat)))
            }
            code::NO_NODE => Ok(None),
            e => Err(Outcome::Fail(format!("getData {path}: {}", code_name(e)))),
        }
    }

    /// `setData path value` at `version` (-1: any): the error code.
    fn set_data(&mut self, path: &str, value: &Value, version: i32) -> Result<i32, Outcome> {
        let mut e = Encoder::default();
        e.string(path).buffer(value.to_string().as_bytes()).int(version);
        Ok(self.call(op::SET_DATA, &e.0)?.0)
    }

    /// Creates `path` and its ancestors where missing.
    fn make_path(&mut self, path: &str) -> Result<(), Outcome> {
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at.push('/');
            at.push_str(part);
            match self.create(&at, b"", false)?.0 {
                0 | code::NODE_EXISTS => {}
                e => return Err(Outcome::Fail(format!("create {at}: {}", code_name(e)))),
            }
        }
        Ok(())
    }

    /// A read made linearizable by a quorum write that confirms it (the module docs say why).
    fn confirmed_read(&mut self, path: &str) -> Result<Value, Outcome> {
        if self.plain_reads {
            return Ok(self.get_data(path)?.map_or(Value::Null, |(value, _)| value));
        }
        for _ in 0..ATTEMPTS {
            match self.get_data(path)? {
                Some((value, stat)) => {
                    let (err, body) = self.call(op::MULTI, &multi_check(&[(path, stat.version)]))?;
                    let err = if err == 0 {
                        multi_error(&body).map_err(|e| Outcome::Fail(e.to_string()))?
                    } else {
                        err
                    };
                    match err {
                        0 => return Ok(value),
                        code::BAD_VERSION | code::NO_NODE => continue,
                        e => return Err(Outcome::Fail(format!("confirming {path}: {}", code_name(e)))),
                    }
                }
                // Absent: confirmed if creating it (with the value absence means) succeeds.
                None => match self.create(path, b"null", false)?.0 {
                    0 => return Ok(Value::Null),
                    code::NODE_EXISTS => continue,
                    e => {
                        return Err(Outcome::Fail(format!(
                            "confirming {path} absent: {}",
                            code_name(e)
                        )));
                    }
                },
            }
        }
        Err(Outcome::Fail(format!(
            "{path} changed under each of {ATTEMPTS} confirmations in a row"
        )))
    }

    fn write(&mut self, path: &str, value: Value) -> Result<Option<Value>, Outcome> {
        for _ in 0..ATTEMPTS {
            match self.set_data(path, &value, -1)? {
                0 => return Ok(None),
                code::NO_NODE => match self.create(path, value.to_string().as_bytes(), false)?.0 {
                    0 => return Ok(None),
                    code::NODE_EXISTS => continue,
                    e => return Err(Outcome::Fail(format!("create {path}: {}", code_name(e)))),
                },
                e => return Err(Outcome::Fail(format!("setData {path}: {}", code_name(e)))),
            }
        }
        Err(Outcome::Fail(format!(
            "{path} was created and removed under {ATTEMPTS} writes"
        )))
    }

    fn cas(&mut self, path: &str, expected: Value, new: Option<Value>) -> Result<Option<Value>, Outcome> {
        let new = new.unwrap_or(Value::Null);
        match self.get_data(path)? {
            Some((current, _)) if current != expected => Err(Outcome::Fail(format!(
                "{path} holds {current}, not the expected {expected}"
            ))),
            Some((_, stat)) => match self.set_data(path, &new, stat.version)? {
                0 => Ok(None),
                e => Err(Outcome::Fail(format!(
                    "setData {path} at version {}: {}",
                    stat.version,
                    code_name(e)
                ))),
            },
            None if expected.is_null() => match self.create(path, new.to_string().as_bytes(), false)?.0 {
                0 => Ok(None),
                e => Err(Outcome::Fail(format!("create {path}: {}", code_name(e)))),
            },
            None => Err(Outcome::Fail(format!(
                "{path} is absent, not the expected {expected}"
            ))),
        }
    }

    fn incr(&mut self, path: &str, by: i64) -> Result<Option<Value>, Outcome> {
        for _ in 0..ATTEMPTS {
            let Some((current, stat)) = self.get_data(path)? else {
                // Creating the counter at 0 changes no count: its outcome cannot be `unknown`.
                match self.create(path, b"0", false) {
                    Ok(_) => continue,
                    Err(Outcome::Unknown(e) | Outcome::Fail(e)) => return Err(Outcome::Fail(e)),
                }
            };
            let n = match current {
                Value::Null => 0,
                v => v
                    .as_i64()
                    .ok_or_else(|| Outcome::Fail(format!("{path} holds {v}, not a counter")))?,
            };
            match self.set_data(path, &Value::from(n + by), stat.version)? {
                0 => return Ok(None),
                code::BAD_VERSION => continue,
                e => return Err(Outcome::Fail(format!("setData {path}: {}", code_name(e)))),
            }
        }
        Err(Outcome::Fail(format!(
            "{path} changed under each of {ATTEMPTS} increments in a row"
        )))
    }

    fn add(&mut self, set: &str, value: Option<&Value>) -> Result<Option<Value>, Outcome> {
        let name = value.map(Value::to_string).unwrap_or_else(|| "null".into());
        if name.contains('/') || name == "." || name == ".." {
            return Err(Outcome::Fail(format!("{name} cannot name a znode")));
        }
        let member = format!("{set}/{name}");
        for _ in 0..2 {
            match self.create(&member, b"", false)?.0 {
                // Already a member: adding it again leaves the set as an add would.
                0 | code::NODE_EXISTS => return Ok(None),
                code::NO_NODE => match self.create(set, b"", false)?.0 {
                    0 | code::NODE_EXISTS => continue,
                    e => return Err(Outcome::Fail(format!("create {set}: {}", code_name(e)))),
                },
                e => return Err(Outcome::Fail(format!("create {member}: {}", code_name(e)))),
            }
        }
        Err(Outcome::Fail(format!("{set} vanished while adding to it")))
    }

    fn read_set(&mut self, set: &str) -> Result<Option<Value>, Outcome> {
        let mut e = Encoder::default();
        e.string(set);
        match self.call(op::SYNC, &e.0)?.0 {
            0 | code::NO_NODE => {}
            e => return Err(Outcome::Fail(format!("sync {set}: {}", code_name(e)))),
        }
        let mut e = Encoder::default();
        e.string(set).bool(false);
        let (err, body) = self.call(op::GET_CHILDREN, &e.0)?;
        match err {
            0 => {}
            code::NO_NODE => return Ok(Some(Value::Array(Vec::new()))),
            e => return Err(Outcome::Fail(format!("getChildren {set}: {}", code_name(e)))),
        }
        let mut d = Decoder::new(&body);
        let n = d.int().map_err(|e| Outcome::Fail(e.to_string()))?;
        let mut members = Vec::new();
        for _ in 0..n.max(0) {
            let name = d.string().map_err(|e| Outcome::Fail(e.to_string()))?;
            members.push(parse(name.as_bytes()));
        }
        Ok(Some(Value::Array(members)))
    }

    fn generate(&mut self) -> Result<Option<Value>, Outcome> {
        let parent = format!("{}/ids", self.root);
        for _ in 0..2 {
            match self.create(&format!("{parent}/id-"), b"", true)? {
                (0, created) => {
                    let seq = created.rsplit("id-").next().unwrap_or_default();
                    return seq
                        .parse::<i64>()
                        .map(|n| Some(Value::from(n)))
                        .map_err(|_| Outcome::Unknown(format!("created {created}: no sequence number")));
                }
                (code::NO_NODE, _) => match self.create(&parent, b"", false)?.0 {
                    0 | code::NODE_EXISTS => continue,
                    e => return Err(Outcome::Fail(format!("create {parent}: {}", code_name(e)))),
                },
                (e, _) => return Err(Outcome::Fail(format!("create {parent}/id-: {}", code_name(e)))),
            }
        }
        Err(Outcome::Fail(format!("{parent} vanished while creating an id")))
    }
}

fn describe(o: Outcome) -> String {
    match o {
        Outcome::Fail(e) | Outcome::Unknown(e) => e,
    }
}

/// A stored value: JSON when it parses, else the text (an empty znode reads as `null`).
fn parse(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    let text = String::from_utf8_lossy(bytes);
    serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connect_request_matches_the_jute_layout() {
        let bytes = connect_request(0x0102, 4000);
        let mut expected = vec![0, 0, 0, 0]; // protocol version
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]); // last zxid seen
        expected.extend_from_slice(&4000i32.to_be_bytes());
        expected.extend_from_slice(&[0; 8]); // session id
        expected.extend_from_slice(&[0, 0, 0, 16]);
        expected.extend_from_slice(&[0; 16]); // password
        expected.push(0); // read-only
        assert_eq!(bytes, expected);
    }

    #[test]
    fn requests_and_records_encode_big_endian_with_length_prefixes() {
        let mut e = Encoder::default();
        e.string("/a").buffer(b"xy").open_acl().int(2);
        let mut want = vec![
            0, 0, 0, 2, b'/', b'a', 0, 0, 0, 2, b'x', b'y', 0, 0, 0, 1, 0, 0, 0, 31,
        ];
        want.extend_from_slice(&[0, 0, 0, 5]);
        want.extend_from_slice(b"world");
        want.extend_from_slice(&[0, 0, 0, 6]);
        want.extend_from_slice(b"anyone");
        want.extend_from_slice(&[0, 0, 0, 2]);
        assert_eq!(e.0, want);
        assert_eq!(request(7, op::GET_DATA, &[9]), vec![0, 0, 0, 7, 0, 0, 0, 4, 9]);
        assert_eq!(
            request(-2, op::PING, &[]),
            vec![0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 11]
        );
    }

    #[test]
    fn a_multi_of_checks_ends_with_the_done_header() {
        let bytes = multi_check(&[("/k", 3)]);
        let mut want = vec![
            0, 0, 0, 13, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 2, b'/', b'k', 0, 0, 0, 3,
        ];
        want.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 1, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn multi_replies_give_the_first_error() {
        let mut ok = Encoder::default();
        ok.int(op::CHECK).bool(false).int(0).int(-1).bool(true).int(-1);
        assert_eq!(multi_error(&ok.0).unwrap(), 0);
        let mut bad = Encoder::default();
        bad.int(-1)
            .bool(false)
            .int(code::BAD_VERSION)
            .int(code::BAD_VERSION);
        bad.int(-1).bool(true).int(-1);
        assert_eq!(multi_error(&bad.0).unwrap(), code::BAD_VERSION);
        assert!(multi_error(&[0, 0]).is_err(), "truncated");
    }

    #[test]
    fn data_replies_decode_with_their_stat_and_truncation_is_an_error() {
        let mut e = Encoder::default();
        e.buffer(b"42");
        for v in [1i64, 2, 3, 4] {
            e.long(v);
        }
        e.int(7).int(0).int(0).long(0).int(2).int(0).long(5);
        let mut d = Decoder::new(&e.0);
        assert_eq!(d.buffer().unwrap(), Some(&b"42"[..]));
        let stat = d.stat().unwrap();
        assert_eq!(
            (stat.czxid, stat.mzxid, stat.version, stat.data_length, stat.pzxid),
            (1, 2, 7, 2, 5)
        );
        assert!(d.is_empty());
        assert!(Decoder::new(&e.0[..20]).stat().is_err());
        let mut null = Encoder::default();
        null.int(-1);
        assert_eq!(Decoder::new(&null.0).buffer().unwrap(), None);
        assert!(
            Decoder::new(&[0, 0, 0, 9, 1]).buffer().is_err(),
            "length past the end"
        );
        assert_eq!(parse(b""), Value::Null);
        assert_eq!(parse(b"null"), Value::Null);
        assert_eq!(parse(b"17"), Value::from(17));
    }
}
