//! The heartbeat timer: reset by every `POST /v1/heartbeat`, started when the agent starts.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Time of the last heartbeat, shared by the handler (which resets it) and the watchdog
/// (which waits for it to grow old).
pub(crate) struct Heartbeat {
    /// The timeout in force: the configured one, or a lease's ([`Heartbeat::set_timeout`]).
    timeout: Mutex<Duration>,
    last: watch::Sender<Instant>,
}

impl Heartbeat {
    /// A timer that starts now.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout: Mutex::new(timeout),
            last: watch::Sender::new(Instant::now()),
        }
    }

    /// The timeout in force.
    pub(crate) fn timeout(&self) -> Duration {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the timeout (a lease brings its runner's) and counts this as a heartbeat, so the
    /// watchdog waits by the new timeout from now.
    pub(crate) fn set_timeout(&self, timeout: Duration) {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner()) = timeout;
        self.beat(Duration::ZERO);
    }

    /// Records a heartbeat, counted as given `grace` from now: the runner announced it will be
    /// unable to heartbeat that long. A later heartbeat never shortens an earlier grace.
    pub(crate) fn beat(&self, grace: Duration) {
        let at = Instant::now() + grace;
        self.last.send_modify(|last| *last = (*last).max(at));
    }

    /// Resolves once `timeout` has passed without a heartbeat.
    pub(crate) async fn expired(&self) {
        let mut last = self.last.subscribe();
        loop {
            let deadline = *last.borrow_and_update() + self.timeout();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                changed = last.changed() => {
                    if changed.is_err() {
                        // The sender lives as long as `self`, so this cannot happen; waiting
                        // forever is the safe reading of "no more heartbeats can arrive".
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }

    /// Resolves at the next heartbeat.
    pub(crate) async fn next_beat(&self) {
        let mut last = self.last.subscribe();
        last.borrow_and_update();
        if last.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
