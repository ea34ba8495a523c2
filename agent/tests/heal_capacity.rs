//! Heal never waits behind anything else: with tokio's blocking pool full of stuck work (as a
//! flood of file reads blocked on FIFOs once left it), a TTL'd pause still heals within
//! TTL + 1 s and shutdown still completes within its bound.
//!
//! The agent runs inside this test's process (`chaos_agent::serve` is a library), so the test
//! can fill the very pool the agent's runtime uses. Alone in its binary: the agent makes its
//! process a child subreaper and reaps children it did not start.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chaos_agent::{AgentConfig, Stopped};
use chaos_faults::process;
use chaos_proto::fault::{FaultInfo, FaultRequest, FaultSpec, FreezeTarget};
use chaos_proto::{OutputSpec, ProcSpec, ProcStarted};
use common::{Pki, WAIT, request_with};
use hyper::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Threads of the test runtime's blocking pool; every one of them is made to hang.
const POOL: usize = 16;

async fn call<T: DeserializeOwned>(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    method: Method,
    path: &str,
    body: &impl Serialize,
) -> T {
    let (status, reply) = request_with(
        addr,
        client,
        method,
        path,
        Bytes::from(serde_json::to_vec(body).unwrap()),
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        status.is_success(),
        "{path}: {status} {}",
        String::from_utf8_lossy(&reply)
    );
    let reply = if reply.is_empty() {
        Bytes::from_static(b"null")
    } else {
        reply
    };
    serde_json::from_slice(&reply).unwrap()
}

/// Lets the hanging blocking tasks end when dropped — also when the test panics, or dropping
/// the runtime would wait for them forever.
struct Release(Arc<AtomicBool>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// SIGKILLs a process when dropped, so a failing run leaks nothing the agent started.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = process::signal_pid(self.0 as i32, libc::SIGKILL);
    }
}

fn stopped(pid: u32) -> bool {
    process::stat(pid as i32)
        .unwrap()
        .is_some_and(|st| st.is_stopped())
}

#[test]
fn a_full_blocking_pool_delays_neither_ttl_heals_nor_shutdown() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(POOL)
        .enable_all()
        .build()
        .unwrap();
    let hold = Arc::new(AtomicBool::new(false));
    // Declared after the runtime, so dropped before it.
    let release = Release(hold.clone());
    runtime.block_on(async move {
        let pki = Pki::new();
        let root = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::new("127.0.0.1:0".parse().unwrap(), pki.node_dir.path());
        config.root_dir = root.path().to_path_buf();
        config.heartbeat_timeout = Duration::from_secs(120);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let serving = tokio::spawn(chaos_agent::serve(config, move |addr| {
            let _ = ready_tx.send(addr);
        }));
        let addr = tokio::time::timeout(WAIT, ready_rx)
            .await
            .expect("agent ready in time")
            .unwrap();
        let client = pki.client();

        let mut spec = ProcSpec::new("sleep", ["300"]);
        spec.stdout = OutputSpec::Null;
        spec.stderr = OutputSpec::Null;
        let proc: ProcStarted = call(addr, &client, Method::POST, "/v1/procs", &spec).await;
        let _kill = KillOnDrop(proc.pid);
        let ttl = Duration::from_millis(1000);
        let req = FaultRequest {
            id: None,
            ttl_ms: ttl.as_millis() as u64,
            spec: FaultSpec::Freeze(FreezeTarget::Proc { id: proc.id }),
        };
        let _: FaultInfo = call(addr, &client, Method::POST, "/v1/faults", &req).await;
        let injected = Instant::now();
        assert!(stopped(proc.pid));

        // Every blocking thread hangs (more tasks queue behind them) until the test ends.
        for _ in 0..POOL + 8 {
            let hold = hold.clone();
            tokio::task::spawn_blocking(move || {
                while !hold.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }

        // The claim under test, so no scaling: healed within TTL + 1 s, which is ample for
        // one SIGCONT and a read of /proc even on a loaded 2-core machine.
        let deadline = injected + ttl + Duration::from_secs(1);
        while stopped(proc.pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !stopped(proc.pid),
            "a {ttl:?} pause was still in place {:?} after it was injected",
            injected.elapsed()
        );
        eprintln!(
            "healed {:?} after the TTL, with every blocking thread busy",
            injected.elapsed().saturating_sub(ttl)
        );
        let listed: Vec<FaultInfo> = call(addr, &client, Method::GET, "/v1/faults", &()).await;
        assert!(listed.is_empty(), "{listed:?}");

        // Shutdown: heal (nothing left), kill the trees, close the connections — none of it
        // on the blocking pool. Its own bounds: 2 s of heal retries, 2 s to reap, 1 s for
        // replies in flight.
        let asked = Instant::now();
        let (status, _) = request_with(addr, &client, Method::POST, "/v1/shutdown", Bytes::new())
            .await
            .unwrap();
        assert!(status.is_success());
        let bound = Duration::from_secs(5);
        let stopped_as = tokio::time::timeout(bound, serving)
            .await
            .unwrap_or_else(|_| panic!("shutdown did not complete within {bound:?}"))
            .unwrap()
            .unwrap();
        assert_eq!(stopped_as, Stopped::Shutdown);
        assert!(asked.elapsed() < bound);
        assert!(
            process::stat(proc.pid as i32)
                .unwrap()
                .is_none_or(|st| st.is_dead()),
            "the agent's process survived its shutdown"
        );
    });
    drop(release);
    runtime.shutdown_timeout(Duration::from_secs(2));
}
