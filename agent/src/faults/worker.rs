//! The fault worker: threads of the agent's own that run every fault operation (inject, heal,
//! retry, probe, node signals), so fault work never waits for tokio's shared blocking pool.
//!
//! That pool also runs file operations, which a client can make block (reads of a FIFO, a
//! stuck network file system). Were heals queued there, a TTL expiry, a heal on heartbeat loss
//! or the heal before exit could wait behind hundreds of them. Here, heal jobs go first: a
//! worker that becomes free takes the oldest heal before any other job, and with two workers a
//! long job (a freeze waiting for the kernel, a probe) leaves the other free for heals.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use chaos_proto::{ApiError, ErrorKind};
use tokio::sync::oneshot;

/// Worker threads: one can be busy with a long job while the other heals.
const THREADS: usize = 2;

/// Which queue a job goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Heals (TTL expiry, retries, heartbeat loss, shutdown, `DELETE /v1/faults`): taken first.
    Heal,
    /// Everything else: inject, probe, node signals.
    Other,
}

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    heal: VecDeque<Job>,
    other: VecDeque<Job>,
    /// Set when the owner is dropped: workers finish what is queued, then exit.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Jobs run outside the lock, so a poisoned lock still holds a consistent queue.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fault worker threads and their two queues.
pub(crate) struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    /// Starts the worker threads.
    pub(crate) fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        for i in 0..THREADS {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("chaos-fault-{i}"))
                .spawn(move || work(&shared))?;
        }
        Ok(Self { shared })
    }

    /// Runs `job` on a worker thread and returns its result. A panic in the job becomes an
    /// internal error; the worker survives it.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        lane: Lane,
        job: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(job))
                .unwrap_or_else(|_| Err(internal("a fault operation panicked (see the agent's log)")));
            // The caller may have gone away (client disconnected): the work is done anyway.
            let _ = tx.send(result);
        });
        {
            let mut queue = self.shared.lock();
            match lane {
                Lane::Heal => queue.heal.push_back(job),
                Lane::Other => queue.other.push_back(job),
            }
        }
        self.shared.ready.notify_one();
        rx.await
            .unwrap_or_else(|_| Err(internal("the fault worker stopped before answering")))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

fn internal(message: &str) -> ApiError {
    ApiError::new(ErrorKind::Internal, message)
}

fn work(shared: &Shared) {
    loop {
        let job = {
            let mut queue = shared.lock();
            loop {
                if let Some(job) = queue.heal.pop_front().or_else(|| queue.other.pop_front()) {
                    break job;
                }
                if queue.closed {
                    return;
                }
                queue = shared.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        };
        job();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn heals_jump_the_queue_and_panics_are_errors() {
        let worker = Arc::new(Worker::start().unwrap());
        let order = Arc::new(Mutex::new(Vec::new()));
        // Occupy every thread with a long job, then queue more long jobs, then one heal.
        let release = Arc::new(AtomicBool::new(false));
        let mut jobs = Vec::new();
        for _ in 0..THREADS + 2 {
            let (w, r, o) = (worker.clone(), release.clone(), order.clone());
            jobs.push(tokio::spawn(async move {
                w.run(Lane::Other, move || {
                    o.lock().unwrap().push("other");
                    while !r.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(())
                })
                .await
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let heal = {
            let (w, o) = (worker.clone(), order.clone());
            tokio::spawn(async move {
                w.run(Lane::Heal, move || {
                    o.lock().unwrap().push("heal");
                    Ok("healed")
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!heal.is_finished(), "every thread is busy");
        release.store(true, Ordering::SeqCst);
        assert_eq!(heal.await.unwrap().unwrap(), "healed");
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        // The heal, queued last, is taken by the first thread to free up.
        let order = order.lock().unwrap().clone();
        let heal_at = order.iter().position(|j| *j == "heal").unwrap();
        assert!(heal_at <= THREADS + 1, "queued behind the other jobs: {order:?}");

        let e = worker
            .run(Lane::Other, || -> Result<(), ApiError> { panic!("boom") })
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Internal);
        assert_eq!(
            worker.run(Lane::Heal, || Ok(7)).await.unwrap(),
            7,
            "the worker survived"
        );
    }
}
