//! The drivers: tasks that heal a fault at its TTL and retry failed heals with backoff, and
//! the one that retries what a previous agent left. They only wait; the heals themselves run
//! on the fault worker.

use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::Notify;

use super::worker::Lane;
use super::{RETRY_FIRST, Shared, heal_leftover_ids, heal_locked, next_backoff};

/// The driver of one fault installation: heals it when its TTL expires — or, woken by a heal
/// that failed elsewhere, after a backoff — and retries failed heals with a backoff doubling
/// from [`RETRY_FIRST`] to [`super::RETRY_MAX`] until the fault is healed and verified, or gone.
pub(super) async fn drive(
    shared: Weak<Shared>,
    id: String,
    serial: u64,
    due: Instant,
    retry_now: Arc<Notify>,
) {
    // The first heal is timed by the fault worker itself, at the TTL (`due`, taken when the
    // fault was installed): it does not wait for a runtime worker to wake a timer. A heal that
    // failed elsewhere wakes us earlier; the timed heal then still runs at the TTL and finds
    // nothing (or the same failure) — heals are idempotent. The job holds the state weakly, so
    // a pending deadline never keeps a stopped agent's fault table alive.
    let first = {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let (job_shared, job_id) = (shared.clone(), id.clone());
        let timed = strong.worker.run_at(due, move || match job_shared.upgrade() {
            Some(state) => state.with_state(|state| heal_locked(state, &job_id, Some(serial), true)),
            None => Ok(false),
        });
        drop(strong);
        tokio::select! {
            result = timed => Some(result),
            () = retry_now.notified() => None,
        }
    };
    let expired = first.is_some();
    let mut pending = first;
    let mut backoff = RETRY_FIRST;
    let mut attempt: u32 = 0;
    loop {
        let result = match pending.take() {
            Some(result) => result,
            None => {
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
                let Some(strong) = shared.upgrade() else {
                    return;
                };
                let (job_shared, job_id) = (strong.clone(), id.clone());
                strong
                    .worker
                    .run(Lane::Heal, move || {
                        job_shared.with_state(|state| heal_locked(state, &job_id, Some(serial), true))
                    })
                    .await
            }
        };
        attempt += 1;
        let why = if expired {
            "TTL expired"
        } else {
            "retrying a failed heal"
        };
        match result {
            Ok(true) if attempt == 1 && expired => {
                tracing::info!(fault = %id, "TTL expired: healed");
                return;
            }
            Ok(true) => {
                tracing::info!(fault = %id, attempt, "{why}: healed and verified");
                return;
            }
            Ok(false) => return,
            Err(e) => tracing::error!(
                fault = %id,
                attempt,
                retry_in = ?backoff,
                "{why}: healing failed, the fault stays listed: {}",
                e.message
            ),
        }
    }
}

/// Retries what a previous agent left and could not be healed, with the drivers' backoff,
/// until nothing is left.
pub(super) async fn retry_leftovers(shared: Weak<Shared>) {
    let mut backoff = RETRY_FIRST;
    let mut attempt: u32 = 0;
    loop {
        tokio::time::sleep(backoff).await;
        backoff = next_backoff(backoff);
        attempt += 1;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let job_shared = strong.clone();
        let result = strong
            .worker
            .run(Lane::Heal, move || {
                Ok(job_shared.with_state(|state| {
                    let result = heal_leftover_ids(state);
                    if result.is_ok() {
                        state.leftovers_driver = None;
                    }
                    result
                }))
            })
            .await;
        match result {
            Ok(Ok(healed)) => {
                if !healed.is_empty() {
                    tracing::warn!(?healed, attempt, "healed the faults a previous agent left");
                }
                return;
            }
            Ok(Err(failed)) => tracing::error!(
                attempt,
                retry_in = ?backoff,
                "faults left by a previous agent are still not healed: {failed}"
            ),
            Err(e) => tracing::error!(attempt, "retrying a previous agent's faults: {}", e.message),
        }
    }
}
