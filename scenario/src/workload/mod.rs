//! Workloads: clients that load the system during the faults and record every operation they
//! invoke — client id, kind, key, value, invocation and completion time, outcome — into the
//! run's history (`chaos_check` format), next to the fault events.
//!
//! * [`kv`]: the built-in key-value workload over etcd's v3 HTTP/JSON gateway.
//! * [`command`]: a templated command per operation.
//! * [`adapter`]: a long-lived adapter process per client, speaking JSON lines
//!   (`docs/adapters.md`).
//!
//! Clients pace themselves to the target rate, pick keys, values and operation kinds from their
//! own random stream derived from the plan's workload seed, and hold a read lock of the
//! workload's gate during each operation, so [`Workload::quiesce`] can wait for operations in
//! flight and hold new ones while a check needs a quiet system.

pub mod adapter;
pub mod command;
pub mod kv;
mod txn;

pub use kv::FINAL_READS_CLIENT;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chaos_check::{
    FaultEvent, Header, HistoryWriter, MeasurementEvent, Op, OpKind, Outcome, Record, WarningEvent,
};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::checks::System;
use super::model::{CommandOpKind, Dur, WorkloadSpec, WorkloadType};

/// Default bound on one operation.
pub const DEFAULT_OP_TIMEOUT: Dur = Dur::secs(2);

/// Operation counts so far.
#[derive(Debug, Default)]
pub struct Counts {
    /// `ok` operations.
    pub ok: AtomicU64,
    /// `fail` operations.
    pub fail: AtomicU64,
    /// `unknown` operations.
    pub unknown: AtomicU64,
}

impl Counts {
    /// (ok, fail, unknown).
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.fail.load(Ordering::Relaxed),
            self.unknown.load(Ordering::Relaxed),
        )
    }
}

enum Msg {
    Record(Box<Record>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Appends operations and fault events to `history.jsonl` from a writer thread, so clients never
/// block on the disk. Times are microseconds since the recorder was created.
pub struct Recorder {
    start: Instant,
    next_id: AtomicU64,
    tx: std::sync::Mutex<Option<std::sync::mpsc::Sender<Msg>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<std::io::Result<()>>>>,
    /// Per node the operations went to: when the latest `ok` one was invoked (µs), if any.
    latest_ok: std::sync::Mutex<HashMap<String, Option<u64>>>,
    /// Counts by outcome.
    pub counts: Counts,
}

impl Recorder {
    /// Creates `path` and writes the header.
    pub fn create(path: &Path, header: &Header) -> std::io::Result<Arc<Recorder>> {
        let file = std::fs::File::create(path)?;
        // No buffering: each record is written and flushed as it arrives, so a killed run's
        // history holds every operation that completed (HistoryWriter::record).
        let mut writer = HistoryWriter::new(file, header)?;
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new().name("chaos-history".into()).spawn(
            move || -> std::io::Result<()> {
                for msg in rx {
                    match msg {
                        Msg::Record(r) => writer.record(&r)?,
                        Msg::Flush(done) => {
                            writer.flush()?;
                            let _ = done.send(());
                        }
                    }
                }
                writer.flush()
            },
        )?;
        Ok(Arc::new(Recorder {
            start: Instant::now(),
            next_id: AtomicU64::new(1),
            tx: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
            latest_ok: std::sync::Mutex::new(HashMap::new()),
            counts: Counts::default(),
        }))
    }

    /// Microseconds since the start of the run.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// A fresh operation id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn send(&self, msg: Msg) {
        if let Ok(guard) = self.tx.lock()
            && let Some(tx) = guard.as_ref()
        {
            let _ = tx.send(msg);
        }
    }

    /// Records a completed operation.
    pub fn op(&self, op: Op) {
        let counter = match op.outcome {
            Outcome::Ok => &self.counts.ok,
            Outcome::Fail => &self.counts.fail,
            Outcome::Unknown => &self.counts.unknown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(node) = &op.node
            && let Ok(mut latest) = self.latest_ok.lock()
        {
            let entry = latest.entry(node.clone()).or_default();
            if op.outcome == Outcome::Ok {
                *entry = (*entry).max(Some(op.invoke_us));
            }
        }
        self.send(Msg::Record(Box::new(Record::Op(op))));
    }

    /// Whether operations went to `node` and one invoked at or after `since_us` succeeded —
    /// what the availability checker calls recovery after a heal at `since_us`. `None` when no
    /// operation went to `node` (the workload does not say, or has no client there).
    pub fn ok_since(&self, node: &str, since_us: u64) -> Option<bool> {
        let latest = self.latest_ok.lock().ok()?;
        latest.get(node).map(|ok| ok.is_some_and(|t| t >= since_us))
    }

    /// Records a fault event.
    pub fn fault(&self, event: FaultEvent) {
        self.send(Msg::Record(Box::new(Record::Fault(event))));
    }

    /// Records a warning.
    pub fn warning(&self, event: WarningEvent) {
        self.send(Msg::Record(Box::new(Record::Warning(event))));
    }

    /// Records measurement `m`, which ended at `at` (one from before the recorder existed, a
    /// start check's, is at 0), made by `source`.
    pub fn measurement(&self, at: Instant, source: &str, m: &chaos::net::Measurement) {
        let r = &m.report;
        let rtt = r.rtt.as_ref().filter(|rtt| rtt.answered > 0);
        let event = MeasurementEvent {
            time_us: at.saturating_duration_since(self.start).as_micros() as u64,
            from: m.from.clone(),
            to: m.to.clone(),
            address: m.address.to_string(),
            protocol: r.protocol.to_string(),
            seconds: r.seconds,
            throughput_bps: r.throughput_bps,
            loss_percent: r.loss_percent,
            rtt_median_us: rtt.map(|rtt| rtt.median_us),
            rtt_min_us: rtt.map(|rtt| rtt.min_us),
            rtt_max_us: rtt.map(|rtt| rtt.max_us),
            source: (!source.is_empty()).then(|| source.to_string()),
        };
        self.send(Msg::Record(Box::new(Record::Measurement(event))));
    }

    /// Waits until everything recorded so far is on disk (bounded).
    pub fn flush(&self) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.send(Msg::Flush(done_tx));
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
    }

    /// Stops the writer thread and returns its result. Later records are dropped.
    pub fn close(&self) -> std::io::Result<()> {
        if let Ok(mut guard) = self.tx.lock() {
            guard.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        match thread {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the history writer panicked"))),
            None => Ok(()),
        }
    }
}

/// Everything a client needs.
pub struct ClientCtx {
    /// The running system.
    pub system: Arc<System>,
    /// The workload's settings.
    pub spec: WorkloadSpec,
    /// Where operations go.
    pub recorder: Arc<Recorder>,
    /// Held (read) during each operation.
    pub gate: Arc<RwLock<()>>,
    /// Fires when the workload stops.
    pub stop: CancellationToken,
    /// Bound of one operation (scaled).
    pub op_timeout: Duration,
    /// The keys `txn` operations draw from, shared by every client (when the workload has any).
    pub(crate) txn_keys: Option<txn::TxnKeys>,
}

impl ClientCtx {
    /// The random stream of client `client`, derived from the workload seed.
    pub fn rng(seed: u64, client: u64) -> Xoshiro256PlusPlus {
        Xoshiro256PlusPlus::seed_from_u64(seed ^ (client + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The interval between one client's operations.
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(self.spec.concurrency as f64 / self.spec.rate)
    }
}

/// A running workload.
pub struct Workload {
    ctx: Arc<ClientCtx>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts `spec.concurrency` clients.
    pub fn start(system: Arc<System>, spec: &WorkloadSpec, seed: u64, recorder: Arc<Recorder>) -> Workload {
        let op_timeout = system
            .scenario
            .scaled(spec.timeout.unwrap_or(DEFAULT_OP_TIMEOUT).0);
        let ctx = Arc::new(ClientCtx {
            system,
            spec: spec.clone(),
            recorder,
            gate: Arc::new(RwLock::new(())),
            stop: CancellationToken::new(),
            op_timeout,
            txn_keys: spec
                .ops
                .iter()
                .any(|o| o.kind == CommandOpKind::Txn)
                .then(|| txn::TxnKeys::new(spec.txn.unwrap_or_default(), spec.keys)),
        });
        let tasks = (0..spec.concurrency as u64)
            .map(|client| {
                let ctx = ctx.clone();
                let rng = ClientCtx::rng(seed, client);
                match spec.kind {
                    WorkloadType::Kv => tokio::spawn(kv::run_client(ctx, client, rng)),
                    WorkloadType::Command => tokio::spawn(command::run_client(ctx, client, rng)),
                    WorkloadType::Adapter => tokio::spawn(adapter::run_client(ctx, client, rng)),
                }
            })
            .collect();
        Workload { ctx, tasks }
    }

    /// Waits for operations in flight and holds new ones until the guard is dropped.
    pub async fn quiesce(&self) -> OwnedRwLockWriteGuard<()> {
        self.ctx.gate.clone().write_owned().await
    }

    /// Stops the clients, waits for them (bounded by an operation's timeout), then, with
    /// `final_reads`, reads every key once more with each read kind the workload has.
    pub async fn stop(self, final_reads: bool) {
        self.ctx.stop.cancel();
        let bound = self.ctx.op_timeout + Duration::from_secs(5);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(bound, task).await.is_err() {
                abort.abort();
            }
        }
        if final_reads && self.ctx.spec.final_reads {
            match self.ctx.spec.kind {
                WorkloadType::Kv => kv::final_reads(&self.ctx).await,
                WorkloadType::Command => command::final_reads(&self.ctx).await,
                WorkloadType::Adapter => adapter::final_reads(&self.ctx).await,
            }
        }
    }
}

/// What one operation of a `command` or `adapter` client returned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Done {
    /// How it ended.
    pub outcome: Outcome,
    /// What a read, `generate` or `txn` returned (`read_set`: an array of the elements).
    pub result: Option<serde_json::Value>,
    /// What went wrong.
    pub error: Option<String>,
}

impl Done {
    /// Definitely not done.
    pub fn fail(error: impl Into<String>) -> Done {
        Done {
            outcome: Outcome::Fail,
            result: None,
            error: Some(error.into()),
        }
    }

    /// Maybe done.
    pub fn unknown(error: impl Into<String>) -> Done {
        Done {
            outcome: Outcome::Unknown,
            result: None,
            error: Some(error.into()),
        }
    }
}

/// Records one operation of a `command` or `adapter` client: `written` is what a write, add,
/// `cas` or `txn` sent (`expected`, what a `cas` compared with), `done` what came back.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    ctx: &ClientCtx,
    id: u64,
    client: u64,
    kind: OpKind,
    invoke: u64,
    node_index: usize,
    key: &str,
    (written, expected): (serde_json::Value, Option<serde_json::Value>),
    done: Done,
) {
    let mut op = Op::new(id, client, kind, invoke, done.outcome)
        .complete(ctx.recorder.now_us())
        .node(ctx.system.nodes[node_index].name());
    if !matches!(kind, OpKind::Generate | OpKind::Txn) {
        op = op.key(key);
    }
    op.error = done.error;
    let ok = done.outcome == Outcome::Ok;
    op = match (kind, done.result) {
        (OpKind::Write | OpKind::Add | OpKind::Append, _) => op.value(written),
        (OpKind::Cas, _) => op
            .value(written)
            .expected(expected.unwrap_or(serde_json::Value::Null)),
        (OpKind::Incr, _) => op.value(1),
        (OpKind::ReadSet, Some(serde_json::Value::Array(values))) if ok => op.values(values),
        (OpKind::Txn, Some(result)) if ok => op.value(result),
        (OpKind::Txn, _) => op.value(written),
        (OpKind::Read | OpKind::ReadCounter | OpKind::Generate, Some(v)) if ok => op.value(v),
        _ => op,
    };
    ctx.recorder.op(op);
}

/// The read kinds among a workload's operations, each once, in a fixed order.
pub(crate) fn read_kinds(spec: &WorkloadSpec) -> Vec<CommandOpKind> {
    [
        CommandOpKind::Read,
        CommandOpKind::ReadSet,
        CommandOpKind::ReadCounter,
    ]
    .into_iter()
    .filter(|k| spec.ops.iter().any(|o| o.kind == *k))
    .collect()
}

/// Sleeps until the next tick of a client's pacing, or returns false when the workload stops.
pub(crate) async fn pace(ticker: &mut tokio::time::Interval, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = ticker.tick() => !stop.is_cancelled(),
        _ = stop.cancelled() => false,
    }
}

/// A pacing interval with a per-client phase so clients do not fire together.
pub(crate) fn ticker(period: Duration, client: u64, clients: u64) -> tokio::time::Interval {
    let phase = period.mul_f64(client as f64 / clients.max(1) as f64);
    let mut t = tokio::time::interval_at(
        tokio::time::Instant::now() + phase,
        period.max(Duration::from_millis(1)),
    );
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Index drawn with probability proportional to `weights` (not all 0).
pub(crate) fn weighted(rng: &mut Xoshiro256PlusPlus, weights: &[u32]) -> usize {
    use rand::RngExt;
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    if total == 0 {
        return 0;
    }
    let mut r = rng.random_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if r < w as u64 {
            return i;
        }
        r -= w as u64;
    }
    weights.len() - 1
}
