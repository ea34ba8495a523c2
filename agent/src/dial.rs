//! `GET /v1/dial?addr=HOST:PORT`: a TCP connection from the node, tunnelled over a WebSocket
//! (see [`chaos_proto::dial`]).
//!
//! Messages are bounded like exec's ([`crate::exec::configure`]). Unlike exec there is no
//! first-message timeout: a tunnel may rightly stay silent (a server that speaks first, an idle
//! pooled connection), and what it holds is one TCP connection the client asked for, whose
//! silence the peer decides.

use std::time::Duration;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::{BufMut, BytesMut};
use chaos_proto::{ApiError, ErrorKind};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::Failure;

/// Bound of the TCP connect (name resolution included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest chunk read from the TCP connection per frame.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
pub(crate) struct DialQuery {
    addr: String,
}

/// Connects first, so a failure is a plain HTTP error instead of a WebSocket that closes at
/// once; upgrades only on success.
pub(crate) async fn handler(
    q: Result<Query<DialQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Failure> {
    let Query(DialQuery { addr }) = q?;
    let ws = ws?;
    let unreachable = |cause: String| {
        Failure(ApiError::new(
            ErrorKind::Unreachable,
            format!("dialing {addr}: {cause}"),
        ))
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str())).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(Failure(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("addr {addr:?} is not HOST:PORT: {e}"),
            )));
        }
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable(format!("no connection within {CONNECT_TIMEOUT:?}"))),
    };
    let _ = tcp.set_nodelay(true);
    tracing::debug!(%addr, "dialed");
    Ok(crate::exec::configure(ws).on_upgrade(move |socket| pump(socket, tcp)))
}

/// Moves bytes both ways until either side closes, then closes the other.
async fn pump(socket: WebSocket, tcp: TcpStream) {
    let (mut sink, mut stream) = socket.split();
    let (mut tcp_rd, mut tcp_wr) = tcp.into_split();
    let upstream = async {
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            if tcp_wr.write_all(&data).await.is_err() {
                break;
            }
        }
    };
    let downstream = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(CHUNK);
            match tcp_rd.read_buf(&mut (&mut buf).limit(CHUNK)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if sink.send(Message::Binary(buf.split().freeze())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = upstream => {},
        () = downstream => {},
    }
    let _ = tcp_wr.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), sink.close()).await;
}
