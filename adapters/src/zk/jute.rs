//! The ZooKeeper wire protocol (jute over TCP) as far as the adapter needs it: a blocking
//! client with one session at a time, no watches — connect handshake, create, getData,
//! setData, getChildren, sync, `multi` with `check`, ping and closeSession — every call bounded.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

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
pub enum Failure {
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
    pub fn call(&mut self, op: i32, body: &[u8]) -> Result<(i32, Vec<u8>), Failure> {
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
