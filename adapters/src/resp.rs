//! A minimal Redis client (RESP2 over TCP, blocking) and the Redis adapter's mapping of the
//! history kinds onto Redis commands — small enough to read in one sitting, so the adapter needs
//! no client crate and builds statically.
//!
//! | kind | Redis |
//! |---|---|
//! | `read` / `write` / `delete` | `GET` / `SET` / `DEL` of `PREFIX r:KEY` (values as JSON text) |
//! | `cas` | a Lua script: `SET` only if the current value is `expected` (absent = `null`) |
//! | `add` / `read_set` | `SADD` / `SMEMBERS` of `PREFIX s:KEY` |
//! | `incr` / `read_counter` | `INCRBY` / `GET` of `PREFIX c:KEY` (absent = 0) |
//! | `generate` | `INCR PREFIX ids` |
//! | `txn` | `MULTI`, `RPUSH` / `LRANGE` of `PREFIX l:KEY` per micro-operation, `EXEC` |
//!
//! Outcomes: a connection that cannot be made, an error reply, or an `append` (not offered) is
//! `fail`; a connection lost or timed out after the request was sent is `unknown` for anything
//! that writes (and `fail` for reads, which change nothing). A lost connection is made again at
//! the next operation.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use chaos_check::{AdapterRequest, AdapterResponse, OpKind};
use serde_json::Value;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR …`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$n …` (`None`: the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*n …` (`None`: the null array, e.g. an aborted `EXEC`).
    Array(Option<Vec<Reply>>),
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply.
pub fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed mid-reply",
        ));
    }
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let bad =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad {what}: {text}"));
    match line[0] {
        b'+' => Ok(Reply::Simple(text)),
        b'-' => Ok(Reply::Error(text)),
        b':' => text.parse().map(Reply::Int).map_err(|_| bad("integer")),
        b'$' => {
            let n: i64 = text.parse().map_err(|_| bad("length"))?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Ok(Reply::Bulk(Some(buf)))
        }
        b'*' => {
            let n: i64 = text.parse().map_err(|_| bad("length"))?;
            if n < 0 {
                return Ok(Reply::Array(None));
            }
            (0..n)
                .map(|_| read_reply(r))
                .collect::<Result<_, _>>()
                .map(|v| Reply::Array(Some(v)))
        }
        _ => Err(bad("reply type")),
    }
}

/// Why an operation did not complete, and whether it may have taken effect.
enum Failure {
    /// Nothing was sent, or Redis refused it.
    NotDone(String),
    /// Sent, then the connection broke or timed out.
    Maybe(String),
}

/// The Redis adapter: a connection (made on demand) and the key prefix.
pub struct RedisAdapter {
    addr: String,
    prefix: String,
    timeout: Duration,
    conn: Option<(BufReader<TcpStream>, TcpStream)>,
}

/// Compare-and-set: ARGV[1] the expected JSON ('' = absent), ARGV[2] the new value.
const CAS_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
    if (v == false and ARGV[1] == '') or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end \
    return 0";

impl RedisAdapter {
    /// An adapter for the server at `addr` (`HOST:PORT`), keys under `prefix`, each reply
    /// awaited at most `timeout`.
    pub fn new(addr: impl Into<String>, prefix: impl Into<String>, timeout: Duration) -> RedisAdapter {
        RedisAdapter {
            addr: addr.into(),
            prefix: prefix.into(),
            timeout,
            conn: None,
        }
    }

    /// Sends commands (pipelined) and reads one reply each.
    fn send(&mut self, commands: &[Vec<Vec<u8>>]) -> Result<Vec<Reply>, Failure> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .and_then(|s| {
                    s.set_read_timeout(Some(self.timeout))?;
                    s.set_write_timeout(Some(self.timeout))?;
                    s.set_nodelay(true)?;
                    Ok(s)
                })
                .map_err(|e| Failure::NotDone(format!("connecting to {}: {e}", self.addr)))?;
            let reader = stream
                .try_clone()
                .map_err(|e| Failure::NotDone(format!("connecting to {}: {e}", self.addr)))?;
            self.conn = Some((BufReader::new(reader), stream));
        }
        let Some((reader, writer)) = self.conn.as_mut() else {
            return Err(Failure::NotDone("no connection".into()));
        };
        let mut bytes = Vec::new();
        for c in commands {
            let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            bytes.extend(encode(&args));
        }
        let result = writer
            .write_all(&bytes)
            .and_then(|_| (0..commands.len()).map(|_| read_reply(reader)).collect());
        result.map_err(|e| {
            self.conn = None;
            Failure::Maybe(format!("talking to {}: {e}", self.addr))
        })
    }

    fn one(&mut self, args: &[&[u8]]) -> Result<Reply, Failure> {
        let mut replies = self.send(&[args.iter().map(|a| a.to_vec()).collect()])?;
        match replies.pop() {
            Some(Reply::Error(e)) => Err(Failure::NotDone(format!("redis: {e}"))),
            Some(r) => Ok(r),
            None => Err(Failure::Maybe("no reply".into())),
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
        let key = req.key.clone().unwrap_or_default();
        let json = |v: &Option<Value>| v.as_ref().map(Value::to_string).unwrap_or_else(|| "null".into());
        let p = self.prefix.clone();
        let k = |space: &str| format!("{p}{space}:{key}").into_bytes();
        match req.kind {
            OpKind::Read => match self.one(&[b"GET", &k("r")])? {
                Reply::Bulk(b) => Ok(Some(b.map(|b| parse(&b)).unwrap_or(Value::Null))),
                other => Err(unexpected(other)),
            },
            OpKind::Write => self
                .one(&[b"SET", &k("r"), json(&req.value).as_bytes()])
                .map(|_| None),
            OpKind::Delete => self.one(&[b"DEL", &k("r")]).map(|_| None),
            OpKind::Cas => {
                let expected = match &req.expected {
                    None | Some(Value::Null) => String::new(),
                    Some(v) => v.to_string(),
                };
                match self.one(&[
                    b"EVAL",
                    CAS_SCRIPT.as_bytes(),
                    b"1",
                    &k("r"),
                    expected.as_bytes(),
                    json(&req.value).as_bytes(),
                ])? {
                    Reply::Int(1) => Ok(None),
                    Reply::Int(_) => Err(Failure::NotDone(
                        "the register did not hold the expected value".into(),
                    )),
                    other => Err(unexpected(other)),
                }
            }
            OpKind::Append => Err(Failure::NotDone("this adapter does not offer `append`".into())),
            OpKind::Add => self
                .one(&[b"SADD", &k("s"), json(&req.value).as_bytes()])
                .map(|_| None),
            OpKind::ReadSet => match self.one(&[b"SMEMBERS", &k("s")])? {
                Reply::Array(Some(items)) => Ok(Some(Value::Array(
                    items
                        .into_iter()
                        .filter_map(|i| match i {
                            Reply::Bulk(Some(b)) => Some(parse(&b)),
                            _ => None,
                        })
                        .collect(),
                ))),
                other => Err(unexpected(other)),
            },
            OpKind::Incr => {
                let by = req
                    .value
                    .as_ref()
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
                    .to_string();
                self.one(&[b"INCRBY", &k("c"), by.as_bytes()]).map(|_| None)
            }
            OpKind::ReadCounter => match self.one(&[b"GET", &k("c")])? {
                Reply::Bulk(None) => Ok(Some(Value::from(0))),
                Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b)
                    .parse::<i64>()
                    .map(|n| Some(Value::from(n)))
                    .map_err(|_| Failure::NotDone("the counter is not an integer".into())),
                other => Err(unexpected(other)),
            },
            OpKind::Generate => match self.one(&[b"INCR", format!("{p}ids").as_bytes()])? {
                Reply::Int(n) => Ok(Some(Value::from(n))),
                other => Err(unexpected(other)),
            },
            OpKind::Txn => self.txn(req.value.as_ref()),
        }
    }

    /// A list-append transaction in one `MULTI`/`EXEC`.
    fn txn(&mut self, micro: Option<&Value>) -> Result<Option<Value>, Failure> {
        let ops = micro.and_then(Value::as_array).cloned().unwrap_or_default();
        let mut commands = vec![vec![b"MULTI".to_vec()]];
        for op in &ops {
            let parts = op.as_array().cloned().unwrap_or_default();
            let key = parts.get(1).and_then(Value::as_str).unwrap_or_default();
            let list = format!("{}l:{key}", self.prefix).into_bytes();
            match parts.first().and_then(Value::as_str) {
                Some("append") => commands.push(vec![
                    b"RPUSH".to_vec(),
                    list,
                    parts
                        .get(2)
                        .map(Value::to_string)
                        .unwrap_or_default()
                        .into_bytes(),
                ]),
                Some("r") => commands.push(vec![b"LRANGE".to_vec(), list, b"0".to_vec(), b"-1".to_vec()]),
                _ => return Err(Failure::NotDone(format!("not a micro-operation: {op}"))),
            }
        }
        commands.push(vec![b"EXEC".to_vec()]);
        let replies = self.send(&commands)?;
        let Some(Reply::Array(Some(results))) = replies.last().cloned() else {
            return Err(Failure::NotDone(format!(
                "the transaction was not executed: {:?}",
                replies.last()
            )));
        };
        let mut done = Vec::with_capacity(ops.len());
        for (op, result) in ops.into_iter().zip(results) {
            match result {
                Reply::Array(Some(items)) => {
                    let key = op.get(1).cloned().unwrap_or(Value::Null);
                    let list = items
                        .into_iter()
                        .filter_map(|i| match i {
                            Reply::Bulk(Some(b)) => Some(parse(&b)),
                            _ => None,
                        })
                        .collect();
                    done.push(Value::Array(vec!["r".into(), key, Value::Array(list)]));
                }
                Reply::Error(e) => return Err(Failure::Maybe(format!("redis, inside the transaction: {e}"))),
                _ => done.push(op),
            }
        }
        Ok(Some(Value::Array(done)))
    }
}

fn unexpected(reply: Reply) -> Failure {
    Failure::NotDone(format!("unexpected reply {reply:?}"))
}

/// A stored value: JSON when it parses, else the text.
fn parse(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        let mut input: &[u8] = b"+OK\r\n-ERR no\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n$1\r\nx\r\n*-1\r\n";
        let mut r = BufReader::new(&mut input);
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Simple("OK".into()));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Error("ERR no".into()));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Int(42));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Bulk(Some(b"abc".to_vec())));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Bulk(None));
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply::Array(Some(vec![Reply::Int(1), Reply::Bulk(Some(b"x".to_vec()))]))
        );
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Array(None));
        assert!(read_reply(&mut r).is_err(), "end of input");
        assert_eq!(encode(&[b"GET", b"k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
