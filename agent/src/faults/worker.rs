//! The fault worker: threads of the agent's own that run every fault operation (inject, heal,
//! retry, probe, node signals), so fault work never waits for tokio's shared blocking pool.
//!
//! That pool also runs file operations, which a client can make block (reads of a FIFO, a
//! stuck network file system). Were heals queued there, a TTL expiry, a heal on heartbeat loss
//! or the heal before exit could wait behind hundreds of them. Here, heal jobs go first: a
//! worker that becomes free takes the oldest heal before any other job, and with two workers a
//! long job (a freeze waiting for the kernel, a probe) leaves the other free for heals.
//!
//! TTL heals are also *timed* here ([`Worker::run_at`]): the worker threads keep the deadlines
//! and run the heal when it is due, so an expiry does not wait for a tokio worker to wake a
//! timer either — under a storm of requests (hundreds of TLS handshakes on two runtime workers,
//! a busy machine) the runtime's timers fire late, the worker's do not.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

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

/// A heal job due at a moment: ordered by its deadline (then by when it was queued).
struct Timed {
    due: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Default)]
struct Queue {
    heal: VecDeque<Job>,
    other: VecDeque<Job>,
    /// Heals waiting for their deadline, earliest first.
    timed: BinaryHeap<Reverse<Timed>>,
    next_seq: u64,
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
                .spawn(move || {
                    raise_priority();
                    work(&shared)
                })?;
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
        let (job, rx) = answering(job);
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

    /// Runs the heal `job` on a worker thread once `due` has come — the worker keeps the time,
    /// not the async runtime — and returns its result. Dropping the future does not cancel the
    /// job: it still runs at `due` (heals are idempotent), only its result is dropped.
    ///
    /// The job is queued at once; the returned future only waits for its answer and borrows
    /// nothing.
    pub(crate) fn run_at<T: Send + 'static>(
        &self,
        due: Instant,
        job: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> impl Future<Output = Result<T, ApiError>> + Send + 'static {
        let (job, rx) = answering(job);
        {
            let mut queue = self.shared.lock();
            let seq = queue.next_seq;
            queue.next_seq += 1;
            queue.timed.push(Reverse(Timed { due, seq, job }));
        }
        // Every thread may be sleeping until a later deadline: wake them all to look again.
        self.shared.ready.notify_all();
        async move {
            rx.await
                .unwrap_or_else(|_| Err(internal("the fault worker stopped before answering")))
        }
    }
}

/// Wraps `job` so that its result (or its panic, as an internal error) goes to the receiver.
fn answering<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> (Job, oneshot::Receiver<Result<T, ApiError>>) {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let result = catch_unwind(AssertUnwindSafe(job))
            .unwrap_or_else(|_| Err(internal("a fault operation panicked (see the agent's log)")));
        // The caller may have gone away (client disconnected): the work is done anyway.
        let _ = tx.send(result);
    });
    (job, rx)
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

/// Nice value of the fault threads: a heal should not queue behind the agent's own file
/// transfers or the node's workload for CPU (on a loaded 2-core machine, at equal priority, a
/// due heal waited up to ~0.5 s for a CPU while the agent served 600 downloads).
const FAULT_THREAD_NICE: i32 = -10;

/// Gives the calling thread [`FAULT_THREAD_NICE`]. Best effort: without CAP_SYS_NICE (an agent
/// not run as root) the thread keeps the default priority.
fn raise_priority() {
    // SAFETY: gettid and setpriority take no pointers; on Linux PRIO_PROCESS with a thread id
    // changes only that thread's nice value.
    let done = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, FAULT_THREAD_NICE)
    };
    if done != 0 {
        tracing::debug!(
            "fault thread keeps its priority: {}",
            std::io::Error::last_os_error()
        );
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
                // A due timed heal is a heal like any other: it goes before the rest.
                let due = queue
                    .timed
                    .peek()
                    .is_some_and(|Reverse(t)| t.due <= Instant::now());
                if due && let Some(Reverse(timed)) = queue.timed.pop() {
                    break timed.job;
                }
                if let Some(job) = queue.heal.pop_front().or_else(|| queue.other.pop_front()) {
                    break job;
                }
                if queue.closed {
                    return;
                }
                queue = match queue.timed.peek().map(|Reverse(t)| t.due) {
                    Some(due) => {
                        let wait = due.saturating_duration_since(Instant::now());
                        shared
                            .ready
                            .wait_timeout(queue, wait)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    None => shared.ready.wait(queue).unwrap_or_else(|p| p.into_inner()),
                };
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

    /// A timed heal runs at its deadline even while the async runtime cannot run anything (here
    /// its only thread sleeps): the worker keeps the time. Deadlines run in order.
    #[tokio::test(flavor = "current_thread")]
    async fn timed_heals_run_at_their_deadline_without_the_runtime() {
        let worker = Worker::start().unwrap();
        let start = Instant::now();
        let ran = Arc::new(Mutex::new(Vec::new()));
        let (late, early) = {
            let (r1, r2) = (ran.clone(), ran.clone());
            (
                worker.run_at(start + Duration::from_millis(150), move || {
                    r1.lock().unwrap().push(("late", start.elapsed()));
                    Ok(2)
                }),
                worker.run_at(start + Duration::from_millis(50), move || {
                    r2.lock().unwrap().push(("early", start.elapsed()));
                    Ok(1)
                }),
            )
        };
        // Block the runtime's only thread well past both deadlines.
        std::thread::sleep(Duration::from_millis(400));
        let ran = ran.lock().unwrap().clone();
        assert_eq!(ran.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["early", "late"]);
        assert!(ran[0].1 >= Duration::from_millis(50) && ran[1].1 >= Duration::from_millis(150));
        // Generous against a loaded machine, yet far below the 400 ms the runtime was blocked.
        assert!(ran[1].1 < Duration::from_millis(350), "ran late: {ran:?}");
        assert_eq!((early.await.unwrap(), late.await.unwrap()), (1, 2));
    }

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
