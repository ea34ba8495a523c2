//! The tests a user of chaos writes: hello on every backend, one fault, and a property test over
//! seeded fault schedules. Plain `cargo test`; backends that cannot run here are skipped, saying
//! why (`CHAOS_REQUIRE=netns,docker` turns such a skip into a failure).

use std::sync::Arc;
use std::time::Duration;

use chaos::backend::{ClusterOptions, registry};
use chaos::faults::{Cuts, partition_cuts};
use chaos::{Cluster, Node, NodeExt};
use chaos_external_example::{elect, expected_leader};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

// One test per backend: `hello::local`, `hello::netns`, `hello::docker`.
chaos::backend_tests!(hello);

/// README's library example.
async fn hello(cluster: Arc<dyn Cluster>) {
    let nodes = cluster.create_nodes(3).await.unwrap();
    for node in &nodes {
        let path = format!("{}/hello", node.root_dir());
        node.send_bytes(&path, b"Hello, world!".to_vec(), 0o644)
            .await
            .unwrap();
        let out = node.run("cat", [path.as_str()]).await.unwrap();
        assert_eq!(out.stdout, b"Hello, world!", "{}", cluster.backend());
    }
}

/// A cluster of `nodes` on the first backend of `backends` that runs here, or `None` (skipped).
async fn cluster_on(
    test: &str,
    backend: &str,
    nodes: usize,
) -> Option<(Arc<dyn Cluster>, Vec<Arc<dyn Node>>)> {
    let entry = match registry::available(backend) {
        Ok(entry) => entry,
        Err(why) => {
            chaos_testkit::skip(test, backend, &why);
            return None;
        }
    };
    let options = ClusterOptions {
        name: test.replace("::", "-"),
        ..ClusterOptions::default()
    };
    let cluster = entry.create(options).await.unwrap();
    let nodes = cluster.create_nodes(nodes).await.unwrap();
    Some((cluster, nodes))
}

fn names(nodes: &[Arc<dyn Node>]) -> Vec<String> {
    nodes.iter().map(|n| n.name().to_string()).collect()
}

/// Installs `cuts`, runs an election round on every node and compares it with the model.
async fn check_election(nodes: &[Arc<dyn Node>], cuts: &Cuts) -> Result<(), String> {
    let partition = partition_cuts(nodes, cuts, Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    let mut wrong = Vec::new();
    for node in nodes {
        let got = elect(&**node, nodes).await.map_err(|e| e.to_string())?;
        let want = expected_leader(cuts, node.name());
        if got.as_deref() != Some(want.as_str()) {
            wrong.push(format!("{} elected {got:?}, the model says {want}", node.name()));
        }
    }
    partition.heal().await.map_err(|e| e.to_string())?;
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// One fault: n1 cut off from the others. n1 stays its own leader; n2 and n3 follow n2.
async fn isolated_node_elects_itself(backend: &str) {
    let test = format!("isolated_node_elects_itself::{backend}");
    let Some((cluster, nodes)) = cluster_on(&test, backend, 3).await else {
        return;
    };
    let mut cuts = Cuts::new(&names(&nodes));
    cuts.cut_both("n1", "n2");
    cuts.cut_both("n1", "n3");
    assert_eq!(expected_leader(&cuts, "n3"), "n2");
    let result = check_election(&nodes, &cuts).await;
    // Healed: everyone follows n1 again.
    let healed = check_election(&nodes, &Cuts::new(&names(&nodes))).await;
    cluster.cleanup().await.unwrap();
    result.unwrap();
    healed.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_node_elects_itself_netns() {
    isolated_node_elects_itself("netns").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_node_elects_itself_docker() {
    isolated_node_elects_itself("docker").await;
}

/// Seeded fault schedules: proptest picks which pairs of 3 nodes to cut, from a fixed seed (so
/// a failure replays exactly), and shrinks a failing schedule to the fewest cuts.
#[test]
fn elections_follow_the_model_under_seeded_partitions() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let test = "elections_follow_the_model_under_seeded_partitions";
    let Some((cluster, nodes)) = rt.block_on(cluster_on(test, "netns", 3)) else {
        return;
    };
    let all = names(&nodes);
    let pairs: Vec<(String, String)> = vec![
        ("n1".into(), "n2".into()),
        ("n1".into(), "n3".into()),
        ("n2".into(), "n3".into()),
    ];
    let schedule = proptest::sample::subsequence(pairs, 0..=3);
    let seed = [7u8; 32];
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 4,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    );
    let result = runner.run(&schedule, |cut_pairs| {
        let mut cuts = Cuts::new(&all);
        for (a, b) in &cut_pairs {
            cuts.cut_both(a, b);
        }
        rt.block_on(check_election(&nodes, &cuts))
            .map_err(|e| TestCaseError::fail(format!("cuts {cut_pairs:?}: {e}")))
    });
    rt.block_on(cluster.cleanup()).unwrap();
    result.unwrap();
}
