//! Request bodies must keep moving: every request body is wrapped so that it fails once the
//! agent has waited [`BODY_IDLE_TIMEOUT_MS`] for it without receiving [`BODY_MIN_PROGRESS`]
//! bytes (or its end). The handler reading it then answers with an error naming both limits,
//! and since the body was not read to its end, the connection is closed.
//!
//! Why a minimum progress rather than a plain idle timeout: a client trickling one byte every
//! 5 s is never silent for 30 s, so an idle timeout would hold its connection (and an upload's
//! temporary file) forever. A total time limit would cut off a large upload on a slow link.
//! Requiring 16 KiB per 30 s of waiting (about 550 B/s) keeps any real transfer alive, however
//! long, and makes holding a connection cost a client bandwidth.
//!
//! Only the time the agent spends *waiting* for the client counts: while a handler is busy
//! elsewhere (writing the previous chunk to disk, waiting for a file-operation slot), bytes pile
//! up in the socket and the client is not behind.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use chaos_proto::limits::{BODY_IDLE_TIMEOUT_MS, BODY_MIN_PROGRESS};
use hyper::body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error a stalled body fails with.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body stalled: fewer than {BODY_MIN_PROGRESS} bytes (BODY_MIN_PROGRESS) arrived in \
     {BODY_IDLE_TIMEOUT_MS} ms (BODY_IDLE_TIMEOUT_MS) of waiting for it"
)]
pub(crate) struct BodyStalled;

/// A request body that fails with [`BodyStalled`] when it stops making progress.
pub(crate) struct ProgressBody {
    inner: Body,
    /// The longest the agent waits per [`BODY_MIN_PROGRESS`] bytes.
    window: Duration,
    /// Bytes received in the current window.
    received: usize,
    /// Time spent waiting in the current window, before the wait in progress.
    waited: Duration,
    /// When the wait in progress began, if the last poll found no data.
    waiting_since: Option<Instant>,
    /// Fires when the current window runs out; armed when a wait begins.
    deadline: Pin<Box<Sleep>>,
}

impl ProgressBody {
    fn new(inner: Body, window: Duration) -> Self {
        Self {
            inner,
            window,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            deadline: Box::pin(tokio::time::sleep(window)),
        }
    }
}

impl HttpBody for ProgressBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(Ok(frame)) = &frame
                    && let Some(data) = frame.data_ref()
                {
                    this.received += data.len();
                    if this.received >= BODY_MIN_PROGRESS {
                        this.received = 0;
                        this.waited = Duration::ZERO;
                    }
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if this.waiting_since.is_none() {
                    let now = Instant::now();
                    this.waiting_since = Some(now);
                    let left = this.window.saturating_sub(this.waited);
                    this.deadline.as_mut().reset(now + left);
                }
                match this.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::info!("{BodyStalled}; dropping the request");
                        Poll::Ready(Some(Err(axum::Error::new(BodyStalled))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: wraps every request's body in a [`ProgressBody`].
pub(crate) async fn require_progress(request: Request) -> Request {
    let window = Duration::from_millis(BODY_IDLE_TIMEOUT_MS);
    request.map(|body| Body::new(ProgressBody::new(body, window)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// A body fed by the test through a channel.
    fn fed() -> (tokio::sync::mpsc::Sender<Bytes>, ProgressBody) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
        });
        (
            tx,
            ProgressBody::new(Body::from_stream(stream), Duration::from_secs(30)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails_after_the_window_and_progress_resets_it() {
        let (tx, body) = fed();
        let mut stream = Body::new(body).into_data_stream();
        // Progress: a full BODY_MIN_PROGRESS every 20 s keeps it alive well past 30 s.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            tx.send(Bytes::from(vec![0u8; BODY_MIN_PROGRESS])).await.unwrap();
            assert!(stream.next().await.unwrap().is_ok());
        }
        // A trickle: one byte every 5 s, never silent for long, still fails at 30 s of waiting.
        let started = Instant::now();
        let trickle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let err = loop {
            match stream.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("the body ended"),
            }
        };
        trickle.abort();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
            "failed after {waited:?}"
        );
        assert!(err.to_string().contains("BODY_MIN_PROGRESS"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_spends_elsewhere_does_not_count() {
        let (tx, body) = fed();
        let mut stream = Body::new(body).into_data_stream();
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(stream.next().await.unwrap().is_ok());
        // The handler is busy for longer than the window; the next bytes are already there.
        tx.send(Bytes::from_static(b"b")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(stream.next().await.unwrap().is_ok());
        drop(tx);
        assert!(stream.next().await.is_none());
    }
}
