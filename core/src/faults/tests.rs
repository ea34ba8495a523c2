//! Fault values: parsing, serialization and their translation into node requests, against real
//! (local) nodes for name resolution.

use std::net::{IpAddr, Ipv4Addr};

use chaos_proto::fault::{Distribution, Protocol};

use super::*;
use crate::backend::ClusterOptions;
use crate::backend::local::LocalCluster;
use crate::cluster::Cluster;

/// `n` local nodes (agents on this host); `None`, skipping `test`, when the agent is not built.
async fn local_nodes(test: &str, n: usize) -> Option<(LocalCluster, Vec<Arc<dyn Node>>)> {
    if let Err(e) = crate::backend::agent_binary::find_agent_binary() {
        chaos_testkit::skip(test, "agent", &e.to_string());
        return None;
    }
    let cluster = LocalCluster::new(ClusterOptions::default()).await.unwrap();
    let nodes = cluster.create_nodes(n).await.unwrap();
    Some((cluster, nodes))
}

#[test]
fn peers_parse_as_nodes_or_networks() {
    assert_eq!("n2".parse::<Peer>().unwrap(), Peer::Node("n2".into()));
    assert_eq!(
        "10.0.0.7".parse::<Peer>().unwrap(),
        Peer::Net(IpNet::host(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))))
    );
    assert_eq!("fd00::/64".parse::<Peer>().unwrap().to_string(), "fd00::/64");
    assert_eq!("10.0.0.7".parse::<Peer>().unwrap().to_string(), "10.0.0.7");
    for bad in ["", "10.0.0.0/40", "n 2", "fd00::zz"] {
        let err = bad.parse::<Peer>().unwrap_err();
        assert!(err.contains("neither a node name"), "{bad:?}: {err}");
    }
}

#[test]
fn faults_serialize_as_tagged_readable_values() {
    let fault = Fault::Delay(Delay {
        traffic: Traffic::nodes(["n3"]).protocol(Protocol::Udp),
        delay: Dur::millis(100),
        jitter: Dur::millis(10),
        distribution: Distribution::Normal,
    });
    let json = serde_json::to_value(&fault).unwrap();
    assert_eq!(json["kind"], "delay");
    assert_eq!(json["traffic"]["peers"][0], "n3");
    assert_eq!(json["delay"], "100ms");
    assert_eq!(json["traffic"]["protocol"], "udp");
    assert_eq!(serde_json::from_value::<Fault>(json).unwrap(), fault);

    let parsed: Fault =
        serde_json::from_str(r#"{"kind":"loss","traffic":{"peers":["n2","10.1.0.0/16"]},"percent":30}"#)
            .unwrap();
    let Fault::Loss(loss) = &parsed else {
        panic!("{parsed:?}");
    };
    assert_eq!(loss.traffic.direction, Direction::Both);
    assert_eq!(loss.traffic.peers.len(), 2);
    assert_eq!((loss.percent, loss.correlation), (30.0, 0.0));

    let kill: Fault = serde_json::from_str(r#"{"kind":"kill","process":"proc:3"}"#).unwrap();
    assert_eq!(
        kill,
        Fault::Kill(Kill {
            signal: chaos_proto::Signal::KILL,
            process: Some(ProcessTarget::Proc(3))
        })
    );
    assert!(!kill.is_lasting());
    let pause: Fault = serde_json::from_str(r#"{"kind":"pause","process":"all"}"#).unwrap();
    assert_eq!(
        pause,
        Fault::Pause(Pause {
            process: Some(ProcessTarget::All)
        })
    );
    let bw: Fault = serde_json::from_str(r#"{"kind":"bandwidth","rate_bps":8000000}"#).unwrap();
    assert!(matches!(bw, Fault::Bandwidth(ref b) if b.interface.is_empty()));

    let err = serde_json::from_str::<Fault>(r#"{"kind":"delay","delay":"soon"}"#).unwrap_err();
    assert!(err.to_string().contains("not a duration"), "{err}");
    let err =
        serde_json::from_str::<Fault>(r#"{"kind":"partition","traffic":{"peers":["a b"]}}"#).unwrap_err();
    assert!(err.to_string().contains("neither a node name"), "{err}");
}

#[tokio::test]
async fn node_names_resolve_to_addresses_and_unknown_names_list_the_known_ones() {
    let Some((cluster, nodes)) = local_nodes("node_names_resolve_to_addresses", 3).await else {
        return;
    };
    let fault = Fault::Partition(Partition {
        traffic: Traffic::with(["n2".parse().unwrap(), "10.9.0.0/16".parse().unwrap()])
            .direction(Direction::In),
    });
    let spec = to_spec(&fault, "n1", &nodes).unwrap().unwrap();
    let FaultSpec::Partition { scope } = spec else {
        panic!("{spec:?}");
    };
    let peers: Vec<String> = scope.peers.iter().map(|p| p.to_string()).collect();
    assert_eq!(peers, ["10.9.0.0/16", "127.0.0.1/32"]);
    assert_eq!(scope.direction, Direction::In);

    let unknown = Fault::Partition(Partition {
        traffic: Traffic::nodes(["n9"]),
    });
    let err = to_spec(&unknown, "n1", &nodes).unwrap_err().to_string();
    assert!(err.contains("\"n9\""), "{err}");
    assert!(err.contains("n1, n2, n3"), "{err}");
    assert!(err.contains("partition fault on n1"), "{err}");
    cluster.cleanup().await.unwrap();
}

#[tokio::test]
async fn specs_follow_the_fault_and_bad_values_are_refused_before_any_node_is_asked() {
    let Some((cluster, nodes)) = local_nodes("specs_follow_the_fault", 2).await else {
        return;
    };
    let spec = |f: Fault| to_spec(&f, "n1", &nodes);

    let plain = spec(Fault::Loss(Loss {
        traffic: Traffic::all(),
        percent: 30.0,
        correlation: 0.0,
    }))
    .unwrap()
    .unwrap();
    assert!(matches!(plain, FaultSpec::Loss { percent, .. } if percent == 30.0));
    let bursty = spec(Fault::Loss(Loss {
        traffic: Traffic::all(),
        percent: 30.0,
        correlation: 50.0,
    }))
    .unwrap()
    .unwrap();
    assert!(
        matches!(&bursty, FaultSpec::Packet { effects, .. } if effects.loss_correlation == 50.0),
        "{bursty:?}"
    );
    let delay = spec(Fault::Delay(Delay {
        traffic: Traffic::nodes(["n2"]),
        delay: Dur(Duration::from_millis(100)),
        jitter: Dur(Duration::from_millis(5)),
        distribution: Distribution::Uniform,
    }))
    .unwrap()
    .unwrap();
    assert!(
        matches!(&delay, FaultSpec::Packet { effects, .. } if effects.delay_us == 100_000 && effects.jitter_us == 5_000),
        "{delay:?}"
    );
    assert_eq!(
        spec(Fault::Pause(Pause {
            process: Some(ProcessTarget::Proc(4)),
        }))
        .unwrap(),
        Some(FaultSpec::Freeze(FreezeTarget::Proc { id: 4 }))
    );
    assert_eq!(
        spec(Fault::Kill(Kill {
            signal: chaos_proto::Signal::TERM,
            process: Some(ProcessTarget::Name("etcd".into())),
        }))
        .unwrap(),
        None
    );

    let refused = [
        (
            Fault::Loss(Loss {
                traffic: Traffic::all(),
                percent: 130.0,
                correlation: 0.0,
            }),
            "loss_percent",
        ),
        (
            Fault::Partition(Partition {
                traffic: Traffic::all().protocol(Protocol::Icmp).ports([80]),
            }),
            "ICMP has no ports",
        ),
        (
            Fault::Delay(Delay {
                traffic: Traffic::all(),
                delay: Dur(Duration::ZERO),
                jitter: Dur(Duration::ZERO),
                distribution: Distribution::Uniform,
            }),
            "delay must be greater than zero",
        ),
        (
            Fault::Bandwidth(Bandwidth {
                interface: "eth0".into(),
                rate_bps: 0,
                burst_bytes: 0,
                limit_bytes: 0,
                exempt_tcp_ports: Vec::new(),
            }),
            "rate_bps",
        ),
        (
            Fault::Pause(Pause {
                process: Some(ProcessTarget::Name("etcd".into())),
            }),
            "cannot pause",
        ),
        (
            Fault::Kill(Kill {
                signal: chaos_proto::Signal::KILL,
                process: Some(ProcessTarget::Cgroup("/sys/fs/cgroup/x".into())),
            }),
            "only paused",
        ),
    ];
    for (fault, needle) in refused {
        let err = spec(fault.clone()).unwrap_err().to_string();
        assert!(err.contains(needle), "{fault:?}: {err}");
    }

    // A zero TTL is refused by the runner, not sent.
    let err = inject(
        &nodes,
        &nodes[0],
        &Fault::Pause(Pause {
            process: Some(ProcessTarget::All),
        }),
        Duration::ZERO,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("ttl"), "{err}");
    cluster.cleanup().await.unwrap();
}

#[test]
fn fault_ids_are_distinct_and_valid_on_the_wire() {
    let ids: std::collections::BTreeSet<String> = (0..1000).map(|_| new_id("partition")).collect();
    assert_eq!(ids.len(), 1000);
    for id in ids.iter().take(5) {
        assert!(id.len() <= 64);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
