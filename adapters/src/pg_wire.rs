//! The PostgreSQL wire client the PostgreSQL adapter ([`crate::pg`]) speaks: frontend/backend
//! protocol 3, simple queries, trust or cleartext password authentication, blocking, every wait
//! bounded — small enough to read, so the adapter needs no client crate and builds statically.

use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What one simple query returned.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct QueryResult {
    /// Rows, each a list of columns (`None` = SQL NULL), as text.
    pub rows: Vec<Vec<Option<String>>>,
    /// The command tag of the last statement, e.g. `UPDATE 1`.
    pub tag: String,
    /// The server's error (`SQLSTATE: message`), if the query failed.
    pub error: Option<String>,
}

/// A connection speaking protocol 3.
pub struct PgConnection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

fn io_error(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// A TCP connection to `addr` (`HOST:PORT`, resolved), trying each address it resolves to in
/// turn within `timeout` altogether. `TcpStream::connect` has no bound but the system's, which
/// is minutes when SYNs are dropped.
fn tcp_connect(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    for socket in addr.to_socket_addrs()? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&socket, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if e.kind() != std::io::ErrorKind::TimedOut => e,
        Some(_) => std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        ),
        // Resolving used up the bound before any attempt.
        None if Instant::now() >= deadline => std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("resolving the address took the whole {timeout:?}"),
        ),
        None => io_error("the address resolves to nothing"),
    })
}

impl PgConnection {
    /// Connects and authenticates as `user` to `database` (trust, or cleartext `password`).
    ///
    /// Each phase is bounded by `timeout`: the TCP connect (over every address `addr` resolves
    /// to, together), so that a server behind a partition that drops packets costs `timeout`
    /// rather than the system's TCP connect timeout (minutes), and then the startup and
    /// authentication exchange, so that a paused server costs no more. `timeout` also bounds each
    /// reply afterwards. Every error names `addr` and what was under way; an expired bound is
    /// [`std::io::ErrorKind::TimedOut`] and names it.
    pub fn connect(
        addr: &str,
        user: &str,
        database: &str,
        password: Option<&str>,
        timeout: Duration,
    ) -> std::io::Result<PgConnection> {
        let context = |what: &str, e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("connecting to {addr}: {what}: {e}"))
        };
        let stream = tcp_connect(addr, timeout).map_err(|e| context("TCP connect", e))?;
        let mut conn = PgConnection {
            reader: BufReader::new(stream.try_clone().map_err(|e| context("TCP connect", e))?),
            writer: stream,
        };
        conn.startup(user, database, password, timeout).map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connecting to {addr}: the startup/authentication exchange got no reply within {timeout:?}"
                    ),
                )
            } else {
                context("startup/authentication", e)
            }
        })?;
        Ok(conn)
    }

    /// The startup message and the authentication that follows, all within `timeout`; leaves
    /// the socket's read timeout at `timeout` for the replies to come.
    fn startup(
        &mut self,
        user: &str,
        database: &str,
        password: Option<&str>,
        timeout: Duration,
    ) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        self.writer.set_write_timeout(Some(timeout))?;
        self.writer.set_nodelay(true)?;
        let mut body = 196608i32.to_be_bytes().to_vec();
        for s in ["user", user, "database", database] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend(body);
        self.writer.write_all(&msg)?;
        loop {
            // The bound is on the whole exchange, not on each message of it.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            self.writer.set_read_timeout(Some(left))?;
            let (tag, payload) = self.message()?;
            match tag {
                b'R' => match payload
                    .get(..4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                {
                    Some(0) => {}
                    Some(3) => {
                        let Some(password) = password else {
                            return Err(io_error("the server asks for a password; give --password"));
                        };
                        let mut p = password.as_bytes().to_vec();
                        p.push(0);
                        self.send(b'p', &p)?;
                    }
                    other => {
                        return Err(io_error(format!(
                            "authentication method {other:?} is not supported (trust or password only)"
                        )));
                    }
                },
                b'E' => return Err(io_error(error_text(&payload))),
                b'Z' => return self.writer.set_read_timeout(Some(timeout)),
                _ => {}
            }
        }
    }

    fn send(&mut self, tag: u8, body: &[u8]) -> std::io::Result<()> {
        let mut msg = vec![tag];
        msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        msg.extend_from_slice(body);
        self.writer.write_all(&msg)
    }

    fn message(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.reader.read_exact(&mut head)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if !(4..=(64 << 20)).contains(&len) {
            return Err(io_error(format!("bad message length {len}")));
        }
        let mut payload = vec![0; len as usize - 4];
        self.reader.read_exact(&mut payload)?;
        Ok((head[0], payload))
    }

    /// Runs `sql` (one or more statements) as a simple query.
    pub fn query(&mut self, sql: &str) -> std::io::Result<QueryResult> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(b'Q', &body)?;
        let mut result = QueryResult::default();
        loop {
            let (tag, payload) = self.message()?;
            match tag {
                b'D' => result.rows.push(data_row(&payload)?),
                b'C' => result.tag = cstring(&payload),
                b'E' => result.error = Some(error_text(&payload)),
                b'Z' => return Ok(result),
                _ => {} // RowDescription, notices, parameter status
            }
        }
    }
}

pub(crate) fn cstring(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `SQLSTATE: message` from an ErrorResponse.
fn error_text(payload: &[u8]) -> String {
    let (mut code, mut message) = (String::new(), String::new());
    let mut rest = payload;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let value = cstring(tail);
        rest = &tail[(value.len() + 1).min(tail.len())..];
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    format!("{code}: {message}")
}

fn data_row(payload: &[u8]) -> std::io::Result<Vec<Option<String>>> {
    let bad = || io_error("truncated data row");
    let n = u16::from_be_bytes([
        *payload.first().ok_or_else(bad)?,
        *payload.get(1).ok_or_else(bad)?,
    ]);
    let mut at = 2;
    let mut row = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len_bytes = payload.get(at..at + 4).ok_or_else(bad)?;
        let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        at += 4;
        if len < 0 {
            row.push(None);
        } else {
            let v = payload.get(at..at + len as usize).ok_or_else(bad)?;
            row.push(Some(String::from_utf8_lossy(v).into_owned()));
            at += len as usize;
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_errors_decode() {
        let row = [0, 2, 0, 0, 0, 2, b'4', b'2', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(data_row(&row).unwrap(), vec![Some("42".into()), None]);
        assert!(data_row(&[0, 1, 0, 0]).is_err());
        let err = b"SERROR\0C23505\0Mduplicate key\0\0";
        assert_eq!(error_text(err), "23505: duplicate key");
    }

    /// A server that accepts the connection but never answers (paused, say) costs the timeout,
    /// and the error says where, in which phase and after how long; a refused one says so.
    #[test]
    fn a_silent_server_costs_the_timeout_and_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Accepted and held open, never answered.
        let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
        let bound = Duration::from_millis(300);
        let e = match PgConnection::connect(&addr, "u", "d", None, bound) {
            Ok(_) => panic!("{addr} never answers the startup message, yet the connect succeeded"),
            Err(e) => e,
        };
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&addr) && text.contains("startup/authentication") && text.contains("300ms"),
            "{text}"
        );
        drop(held.join());

        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .to_string();
        let e = PgConnection::connect(&refused, "u", "d", None, bound)
            .err()
            .unwrap_or_else(|| panic!("nothing listens on {refused}"));
        let text = e.to_string();
        assert!(text.contains(&refused) && text.contains("TCP connect"), "{text}");
    }
}
