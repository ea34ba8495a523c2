//! Runs every example on every registered backend, one named test per backend
//! (`hello_world_runs::netns`, …); backends that cannot run here are skipped with a line saying
//! why.

use std::sync::Arc;

use chaos::Cluster;
use chaos_examples::{hello_world, tcp_through_proxy};

chaos::backend_tests!(hello_world_runs, tcp_through_proxy_runs);

async fn hello_world_runs(cluster: Arc<dyn Cluster>) {
    let kind = cluster.backend();
    let greetings = hello_world(&*cluster, 5)
        .await
        .unwrap_or_else(|e| panic!("hello_world on {kind}: {e:#}"));
    let names: Vec<_> = greetings.iter().map(|g| g.node.as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3", "n4", "n5"], "{kind}");
    for g in &greetings {
        assert_eq!(g.output, format!("Hello, world! from {}", g.node), "{kind}");
        assert!(g.address.is_some(), "{kind}: node {} has no address", g.node);
    }
}

async fn tcp_through_proxy_runs(cluster: Arc<dyn Cluster>) {
    let kind = cluster.backend();
    let report = tcp_through_proxy(&*cluster)
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
