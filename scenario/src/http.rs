//! A small HTTP/1.1 client over a node's TCP proxy ([`Node::dial`]): the connection starts inside
//! the node, so services listening on the node's loopback are reachable and the request takes
//! the node's network position. Used by HTTP checks, the leader probe and the key-value workload.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use chaos::cluster::Node;

/// A reply: status and body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request failed, and whether it may have reached the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The connection could not be opened: the request was never sent.
    Connect(String),
    /// The request may have been sent, but no complete reply came (error or timeout).
    Indeterminate(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Connect(m) | HttpError::Indeterminate(m) => f.write_str(m),
        }
    }
}

/// One keep-alive connection from a node to `addr`, reopened after any failure.
pub struct Connection {
    node: Arc<dyn Node>,
    addr: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection from `node` to `addr` (`HOST:PORT`), opened on first use.
    pub fn new(node: Arc<dyn Node>, addr: impl Into<String>) -> Connection {
        Connection {
            node,
            addr: addr.into(),
            sender: None,
        }
    }

    async fn open(&mut self, bound: Duration) -> Result<&mut SendRequest<Full<Bytes>>, HttpError> {
        let usable = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        if !usable {
            self.sender = None;
            let what = format!("node {}: connecting to {}", self.node.name(), self.addr);
            let stream = tokio::time::timeout(bound, self.node.dial(&self.addr))
                .await
                .map_err(|_| HttpError::Connect(format!("{what}: no connection within {bound:?}")))?
                .map_err(|e| HttpError::Connect(e.to_string()))?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| HttpError::Connect(format!("{what}: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        match self.sender.as_mut() {
            Some(s) => Ok(s),
            None => Err(HttpError::Connect("no connection".into())),
        }
    }

    /// Sends one request and reads the whole reply, all within `bound`. After an error the
    /// connection is dropped (its state is unknown) and the next request opens a new one.
    pub async fn request(
        &mut self,
        method: &Method,
        path: &str,
        body: Option<Bytes>,
        bound: Duration,
    ) -> Result<Reply, HttpError> {
        let deadline = tokio::time::Instant::now() + bound;
        let host = self.addr.clone();
        let node = self.node.name().to_string();
        let sender = self.open(bound).await?;
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", host.as_str());
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let req = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| HttpError::Connect(format!("bad request {method} {path}: {e}")))?;
        let what = format!("node {node}: {method} http://{host}{path}");
        let result = tokio::time::timeout_at(deadline, async {
            sender
                .ready()
                .await
                .map_err(|e| HttpError::Connect(format!("{what}: {e}")))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| HttpError::Indeterminate(format!("{what}: {e}")))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| HttpError::Indeterminate(format!("{what}: reading the reply: {e}")))?
                .to_bytes();
            Ok(Reply { status, body })
        })
        .await
        .unwrap_or_else(|_| {
            Err(HttpError::Indeterminate(format!(
                "{what}: no reply within {bound:?}"
            )))
        });
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// One request on a fresh connection.
pub async fn request(
    node: Arc<dyn Node>,
    addr: &str,
    method: &Method,
    path: &str,
    body: Option<Bytes>,
    bound: Duration,
) -> Result<Reply, HttpError> {
    Connection::new(node, addr)
        .request(method, path, body, bound)
        .await
}
