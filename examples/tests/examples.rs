//! Runs every example on every backend available on this machine; backends that cannot run
//! here are skipped with a line saying why.

use chaos::backend::{Backend, registry};
use chaos_examples::{hello_world, tcp_through_proxy, with_cluster};

/// The backends to run on, printing why the others are skipped.
fn available(test: &str) -> Vec<&'static Backend> {
    registry::all()
        .iter()
        .filter(|kind| match kind.availability() {
            Ok(()) => true,
            Err(why) => {
                chaos_testkit::skip(test, kind.name, &why);
                false
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_runs_on_every_backend() {
    for kind in available("hello_world") {
        let greetings = with_cluster(kind, "example-hello", async |cluster| {
            hello_world(cluster, 5).await
        })
        .await
        .unwrap_or_else(|e| panic!("hello_world on {kind}: {e:#}"));
        let names: Vec<_> = greetings.iter().map(|g| g.node.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3", "n4", "n5"], "{kind}");
        for g in &greetings {
            assert_eq!(g.output, format!("Hello, world! from {}", g.node), "{kind}");
            assert!(g.address.is_some(), "{kind}: node {} has no address", g.node);
        }
        eprintln!("hello_world: ok on {kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_through_proxy_runs_on_every_backend() {
    for kind in available("tcp_through_proxy") {
        let report = with_cluster(kind, "example-proxy", async |cluster| {
            tcp_through_proxy(cluster).await
        })
        .await
        .unwrap_or_else(|e| panic!("tcp_through_proxy on {kind}: {e:#}"));
        assert_eq!(report.bytes, 256 * 1024, "{kind}");
        assert!(
            report.address.starts_with("127.0.0.1:"),
            "{kind}: {}",
            report.address
        );
        eprintln!("tcp_through_proxy: ok on {kind} ({:?})", report.round_trip);
    }
}
