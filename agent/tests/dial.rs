//! The TCP tunnel (`/v1/dial`).

mod common;

use bytes::Bytes;
use chaos_proto::{ApiError, ErrorKind};
use common::Agent;
use futures_util::{SinkExt, StreamExt};
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// An echo server on loopback; returns its address.
async fn echo_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn dial_tunnels_bytes_both_ways() {
    let agent = Agent::start(&[]);
    let echo = echo_server().await;
    let ws = agent
        .ws(&format!("/v1/dial?addr={echo}"))
        .await
        .expect("dial upgrade");
    let (mut sink, mut stream) = ws.split();
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(50_000) {
            sink.send(Message::binary(Bytes::copy_from_slice(chunk)))
                .await
                .unwrap();
        }
        sink
    });
    let mut back = Vec::new();
    while back.len() < data.len() {
        match tokio::time::timeout(common::WAIT, stream.next())
            .await
            .expect("echo within bound")
        {
            Some(Ok(Message::Binary(d))) => back.extend_from_slice(&d),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(back == data, "echoed bytes differ");
    let mut sink = writer.await.unwrap();
    // Closing our side closes the tunnel.
    sink.send(Message::Close(None)).await.unwrap();
    let end = tokio::time::timeout(common::WAIT, stream.next())
        .await
        .expect("close within bound");
    assert!(
        matches!(end, Some(Ok(Message::Close(_))) | None | Some(Err(_))),
        "{end:?}"
    );
}

#[tokio::test]
async fn dial_closes_when_the_server_closes() {
    let agent = Agent::start(&[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        conn.write_all(b"bye").await.unwrap();
        // Dropping closes the connection.
    });
    let mut ws = agent
        .ws(&format!("/v1/dial?addr={addr}"))
        .await
        .expect("dial upgrade");
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(common::WAIT, ws.next())
            .await
            .expect("frames within bound")
        {
            Some(Ok(Message::Binary(d))) => got.extend_from_slice(&d),
            Some(Ok(Message::Close(_))) | None => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, b"bye");
}

#[tokio::test]
async fn dial_failures_are_http_errors() {
    let agent = Agent::start(&[]);
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    match agent.ws(&format!("/v1/dial?addr={closed}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 502);
            let err: ApiError = serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(err.kind, ErrorKind::Unreachable);
            assert!(err.message.contains(&closed.to_string()), "{err}");
            assert!(err.message.to_lowercase().contains("refused"), "{err}");
        }
        other => panic!("expected HTTP 502, got {:?}", other.map(|_| "an upgraded socket")),
    }

    let (status, body) = agent
        .request(Method::GET, "/v1/dial?addr=no-port-here", Bytes::new())
        .await;
    let err: ApiError = serde_json::from_slice(&body).unwrap();
    // Without an upgrade request the upgrade is refused first.
    assert_eq!(
        (status.as_u16(), err.kind),
        (400, ErrorKind::InvalidRequest),
        "{err}"
    );
    match agent.ws("/v1/dial?addr=no-port-here").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 400),
        other => panic!("expected HTTP 400, got {:?}", other.map(|_| "an upgraded socket")),
    }
}
