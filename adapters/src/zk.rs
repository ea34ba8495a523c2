//! A minimal ZooKeeper client (the jute wire protocol over TCP, blocking, no watches) and the
//! ZooKeeper adapter's mapping of the history kinds onto znodes — std only, so the adapter
//! builds statically like the others.
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

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use chaos_check::{AdapterRequest, AdapterResponse, OpKind};
use serde_json::Value;

/// ZooKeeper operation codes (`org.apache.zookeeper.ZooDefs.OpCode`) this client uses.
pub mod op {
    /// `create`.
    pub const CREATE: i32 = 1;
    /// `getData`.
    pub const GET_DATA: i32 = 4;
    /// `setData`.
    pub const SET_DATA: i32 = 5;
    /// `getChildren`.
    pub const GET_CHILDREN: i32 = 8;
    /// `sync`.
    pub const SYNC: i32 = 9;
    /// `ping` (sent with xid -2).
    pub const PING: i32 = 11;
    /// `check` (only inside a `multi`).
    pub const CHECK: i32 = 13;
    /// `multi`.
    pub const MULTI: i32 = 14;
    /// `closeSession`.
    pub const CLOSE_SESSION: i32 = -11;
}

/// ZooKeeper error codes (`KeeperException.Code`) the adapter tells apart.
pub mod code {
    /// `NONODE`.
    pub const NO_NODE: i32 = -101;
    /// `BADVERSION`.
    pub const BAD_VERSION: i32 = -103;
    /// `NODEEXISTS`.
    pub const NODE_EXISTS: i32 = -110;
}

/// The name of a ZooKeeper error code, for messages.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        -1 => "SYSTEMERROR",
        -2 => "RUNTIMEINCONSISTENCY",
        -4 => "CONNECTIONLOSS",
        -7 => "OPERATIONTIMEOUT",
        -8 => "BADARGUMENTS",
        -101 => "NONODE",
        -102 => "NOAUTH",
        -103 => "BADVERSION",
        -108 => "NOCHILDRENFOREPHEMERALS",
        -110 => "NODEEXISTS",
        -111 => "NOTEMPTY",
        -112 => "SESSIONEXPIRED",
        -114 => "INVALIDACL",
        -118 => "SESSIONMOVED",
        -119 => "NOTREADONLY",
        _ => "an error",
    }
}

/// Largest frame accepted from a server: far above anything this client asks for, low enough
/// that a garbage length cannot make it allocate gigabytes.
const MAX_FRAME: usize = 16 << 20;

/// Serialises jute records: big-endian integers, length-prefixed strings and buffers.
#[derive(Debug, Default, Clone)]
pub struct Encoder(pub Vec<u8>);

impl Encoder {
    /// A 32-bit integer.
    pub fn int(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A 64-bit integer.
    pub fn long(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A boolean (one byte).
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.0.push(u8::from(v));
        self
    }
    /// A byte buffer: its length, then its bytes.
    pub fn buffer(&mut self, v: &[u8]) -> &mut Self {
        self.int(v.len() as i32);
        self.0.extend_from_slice(v);
        self
    }
    /// A UTF-8 string, encoded like a buffer.
    pub fn string(&mut self, v: &str) -> &mut Self {
        self.buffer(v.as_bytes())
    }
    /// The ACL list `world:anyone` with every permission (`OPEN_ACL_UNSAFE`).
    pub fn open_acl(&mut self) -> &mut Self {
        self.int(1).int(31).string("world").string("anyone")
    }
}

/// Reads jute records from a reply body; running past its end is an error, not a panic.
#[derive(Debug)]
pub struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// A reply that does not decode as the record expected.
fn malformed(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("malformed reply: {what}"),
    )
}

impl<'a> Decoder<'a> {
    /// A decoder at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder { bytes, pos: 0 }
    }
    fn take(&mut self, n: usize, what: &str) -> std::io::Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| malformed(&format!("{what} runs past the end")))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    /// A 32-bit integer.
    pub fn int(&mut self) -> std::io::Result<i32> {
        let b = self.take(4, "an int")?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A 64-bit integer.
    pub fn long(&mut self) -> std::io::Result<i64> {
        let b = self.take(8, "a long")?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    /// A boolean.
    pub fn bool(&mut self) -> std::io::Result<bool> {
        Ok(self.take(1, "a boolean")?[0] != 0)
    }
    /// A buffer (`None`: length -1, the null buffer).
    pub fn buffer(&mut self) -> std::io::Result<Option<&'a [u8]>> {
        let n = self.int()?;
        if n < 0 {
            return Ok(None);
        }
        self.take(n as usize, "a buffer").map(Some)
    }
    /// A string (the null string reads as empty).
    pub fn string(&mut self) -> std::io::Result<String> {
        Ok(String::from_utf8_lossy(self.buffer()?.unwrap_or_default()).into_owned())
    }
    /// A znode's `Stat`.
    pub fn stat(&mut self) -> std::io::Result<Stat> {
        Ok(Stat {
            czxid: self.long()?,
            mzxid: self.long()?,
            ctime: self.long()?,
            mtime: self.long()?,
            version: self.int()?,
            cversion: self.int()?,
            aversion: self.int()?,
            ephemeral_owner: self.long()?,
            data_length: self.int()?,
            num_children: self.int()?,
            pzxid: self.long()?,
        })
    }
    /// Whether bytes remain.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }
}

/// A znode's metadata, as every data reply carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)] // ZooKeeper's own field names
pub struct Stat {
    pub czxid: i64,
    pub mzxid: i64,
    pub ctime: i64,
    pub mtime: i64,
    /// Incremented by every `setData`; what `setData`/`check` with a version compare.
    pub version: i32,
    pub cversion: i32,
    pub aversion: i32,
    pub ephemeral_owner: i64,
    pub data_length: i32,
    pub num_children: i32,
    pub pzxid: i64,
}

/// The `ConnectRequest` that opens a new session.
pub fn connect_request(last_zxid_seen: i64, session_timeout_ms: i32) -> Vec<u8> {
    let mut e = Encoder::default();
    e.int(0) // protocol version
        .long(last_zxid_seen)
        .int(session_timeout_ms)
        .long(0) // no session to resume
        .buffer(&[0; 16]) // its password
        .bool(false); // not read-only: a server outside a quorum must refuse us
    e.0
}

/// A request: its header (`xid`, operation) followed by its body.
pub fn request(xid: i32, op: i32, body: &[u8]) -> Vec<u8> {
    let mut e = Encoder::default();
    e.int(xid).int(op);
    e.0.extend_from_slice(body);
    e.0
}

/// A `multi` whose operations are all `check`s of (path, version).
pub fn multi_check(checks: &[(&str, i32)]) -> Vec<u8> {
    let mut e = Encoder::default();
    for (path, version) in checks {
        e.int(op::CHECK).bool(false).int(-1).string(path).int(*version);
    }
    e.int(-1).bool(true).int(-1);
    e.0
}

/// The first error code among a `multi` reply's results (0: every operation succeeded).
pub fn multi_error(body: &[u8]) -> std::io::Result<i32> {
    let mut d = Decoder::new(body);
    loop {
        let kind = d.int()?;
        let done = d.bool()?;
        let err = d.int()?;
        if done {
            return Ok(0);
        }
        match kind {
            -1 => {
                let code = d.int()?;
                if code != 0 {
                    return Ok(code);
                }
            }
            op::CHECK => {}
            _ => {
                return Err(malformed(&format!(
                    "multi result of type {kind} (err {err}) to a multi of checks"
                )));
            }
        }
    }
}

/// Why a call did not complete, and whether it may have taken effect.
#[derive(Debug)]
enum Failure {
    /// Nothing was sent.
    NotSent(String),
    /// Sent, then the connection broke or timed out.
    Maybe(String),
}

/// An open session.
struct Session {
    stream: TcpStream,
    server: String,
    session_timeout: Duration,
    last_io: Instant,
}

/// A blocking ZooKeeper client: one session at a time, made on demand, on the first server of
/// the list that grants one.
pub struct ZkClient {
    servers: Vec<String>,
    timeout: Duration,
    session_timeout_ms: i32,
    session: Option<Session>,
    xid: i32,
    last_zxid: i64,
}

impl ZkClient {
    /// A client for `servers` (`HOST:PORT`, tried in order), each call bounded by `timeout`
    /// (connecting included), asking for sessions of `session_timeout`.
    pub fn new(servers: Vec<String>, timeout: Duration, session_timeout: Duration) -> ZkClient {
        ZkClient {
            servers,
            timeout,
            session_timeout_ms: session_timeout.as_millis().min(i32::MAX as u128) as i32,
            session: None,
            xid: 0,
            last_zxid: 0,
        }
    }

    /// Opens a session on the first server that grants one before `deadline`.
    fn connect(&mut self, deadline: Instant) -> Result<(), Failure> {
        let mut errors = Vec::new();
        for server in &self.servers {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                errors.push(format!("{server}: no time left"));
                break;
            }
            match handshake(server, left, self.last_zxid, self.session_timeout_ms) {
                Ok(session) => {
                    self.session = Some(session);
                    return Ok(());
                }
                Err(e) => errors.push(format!("{server}: {}", io_text(&e, self.timeout))),
            }
        }
        Err(Failure::NotSent(format!(
            "no ZooKeeper session: {}",
            errors.join("; ")
        )))
    }

    /// Sends one request and returns the reply's error code and body. A session idle for a
    /// third of its timeout is pinged first (and replaced when the ping fails), so a request
    /// is only ever sent on a live session.
    fn call(&mut self, op: i32, body: &[u8]) -> Result<(i32, Vec<u8>), Failure> {
        let deadline = Instant::now() + self.timeout;
        let idle = self
            .session
            .as_ref()
            .is_some_and(|s| s.last_io.elapsed() > s.session_timeout / 3);
        if idle {
            let ping = request(-2, op::PING, &[]);
            match self.session.as_mut() {
                Some(s) if exchange(s, &ping, -2, deadline).is_ok() => s.last_io = Instant::now(),
                _ => self.session = None,
            }
        }
        if self.session.is_none() {
            self.connect(deadline)?;
        }
        let Some(session) = self.session.as_mut() else {
            return Err(Failure::NotSent("no session".into()));
        };
        self.xid = self.xid.wrapping_add(1).max(1);
        let result = exchange(session, &request(self.xid, op, body), self.xid, deadline);
        match result {
            Ok((zxid, err, reply)) => {
                session.last_io = Instant::now();
                if zxid > 0 {
                    self.last_zxid = self.last_zxid.max(zxid);
                }
                Ok((err, reply))
            }
            Err(e) => {
                let server = session.server.clone();
                self.session = None;
                Err(Failure::Maybe(format!(
                    "talking to {server}: {}",
                    io_text(&e, self.timeout)
                )))
            }
        }
    }

    /// Ends the session politely (best effort: the server expires it anyway).
    pub fn close(&mut self) {
        if let Some(s) = self.session.take() {
            let deadline = Instant::now() + self.timeout.min(Duration::from_millis(500));
            let _ = exchange(&s, &request(1, op::CLOSE_SESSION, &[]), 1, deadline);
        }
    }
}

/// Connects to `server` and opens a session.
fn handshake(server: &str, within: Duration, last_zxid: i64, timeout_ms: i32) -> std::io::Result<Session> {
    let addr = server
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, within)?;
    stream.set_nodelay(true)?;
    let mut session = Session {
        stream,
        server: server.to_string(),
        session_timeout: Duration::from_millis(timeout_ms.max(0) as u64),
        last_io: Instant::now(),
    };
    let deadline = start + within;
    write_frame(
        &mut session.stream,
        &connect_request(last_zxid, timeout_ms),
        deadline,
    )?;
    let reply = read_frame(&mut session.stream, deadline).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            // What a server outside a quorum, or one behind our last zxid, does.
            std::io::Error::new(e.kind(), "the server closed the connection (not serving)")
        } else {
            e
        }
    })?;
    let mut d = Decoder::new(&reply);
    let _protocol = d.int()?;
    let negotiated = d.int()?;
    if negotiated <= 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "session refused",
        ));
    }
    session.session_timeout = Duration::from_millis(negotiated as u64);
    Ok(session)
}

/// Writes `frame` and reads replies until the one for `xid` (skipping watch events and stray
/// ping replies); returns its zxid, error code and body.
fn exchange(s: &Session, frame: &[u8], xid: i32, deadline: Instant) -> std::io::Result<(i64, i32, Vec<u8>)> {
    let mut stream = &s.stream;
    write_frame(&mut stream, frame, deadline)?;
    loop {
        let reply = read_frame(&mut stream, deadline)?;
        let mut d = Decoder::new(&reply);
        let got = d.int()?;
        let zxid = d.long()?;
        let err = d.int()?;
        if got == xid {
            return Ok((zxid, err, reply[16..].to_vec()));
        }
        if got >= 0 {
            return Err(malformed(&format!(
                "reply to request {got} while waiting for {xid}"
            )));
        }
    }
}

/// An I/O error as text; a socket timeout (which reads as "Resource temporarily unavailable")
/// says what it is.
fn io_text(e: &std::io::Error, bound: Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no reply within {} ms", bound.as_millis())
        }
        _ => e.to_string(),
    }
}

fn remaining(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"));
    }
    Ok(left)
}

/// Writes a length-prefixed frame.
fn write_frame(stream: &mut impl Bounded, payload: &[u8], deadline: Instant) -> std::io::Result<()> {
    stream.set_timeout(remaining(deadline)?)?;
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    stream.write_all(&bytes)?;
    stream.flush()
}

/// Reads a length-prefixed frame.
fn read_frame(stream: &mut impl Bounded, deadline: Instant) -> std::io::Result<Vec<u8>> {
    let mut len = [0; 4];
    stream.set_timeout(remaining(deadline)?)?;
    stream.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(malformed(&format!("a frame of {n} bytes")));
    }
    let mut buf = vec![0; n];
    stream.set_timeout(remaining(deadline)?)?;
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

/// A stream whose reads and writes can be bounded (a `TcpStream`, or a reference to one).
trait Bounded: Read + Write {
    fn set_timeout(&self, t: Duration) -> std::io::Result<()>;
}

impl Bounded for TcpStream {
    fn set_timeout(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Bounded for &TcpStream {
    fn set_timeout(&self, t: Duration) -> std::io::Result<()> {
        (*self).set_read_timeout(Some(t))?;
        (*self).set_write_timeout(Some(t))
    }
}

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
