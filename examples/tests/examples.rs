//! Runs every example on every registered backend, one named test per backend
//! (`hello_world_runs::netns`, …); backends that cannot run here are skipped with a line saying
//! why.

use std::sync::Arc;

use chaos::Cluster;
use chaos_examples::netlab::{FlapPlan, link_flap_under_load};
use chaos_examples::{hello_world, tcp_through_proxy};

chaos::backend_tests!(
    hello_world_runs,
    tcp_through_proxy_runs,
    link_flap_under_load_runs
);

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

async fn link_flap_under_load_runs(cluster: Arc<dyn Cluster>) {
    let kind = cluster.backend();
    let backend = chaos::backend::registry::find(kind).unwrap();
    if !backend.isolated_network {
        // Nodes sharing the host's network have no link of their own: the example must say so.
        let e = link_flap_under_load(&*cluster, FlapPlan::default())
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("no network interface"), "{kind}: {e:#}");
        return;
    }
    let report = link_flap_under_load(&*cluster, FlapPlan::default())
        .await
        .unwrap_or_else(|e| panic!("link_flap_under_load on {kind}: {e:#}"));
    for line in report.lines() {
        eprintln!("{kind}: {line}");
    }
    let loss = |m: &chaos::net::Measurement| m.report.loss_percent;
    let (before, during, after) = (loss(&report.before), loss(&report.during), loss(&report.after));
    // Down for half of 2 s out of 3 s of sending: at least a third is lost (more: after each
    // link up the route and the neighbour come back first), yet some datagrams get through.
    assert!(
        during > 15.0 && report.during.report.datagrams_received > 0,
        "{kind}: {during:.1} % lost while the link flapped ({} received)",
        report.during.report.datagrams_received
    );
    assert!(
        before < 5.0 && after < 5.0,
        "{kind}: {before:.1} % / {after:.1} % lost without the flap"
    );
    assert!(
        report.fault_time >= report.plan.period * report.plan.count,
        "{kind}: healed after {:?}, before the flapping could end",
        report.fault_time
    );
}
