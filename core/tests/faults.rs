//! Faults driven through the runner API, measured with real traffic between real nodes.
//!
//! Network tests run on every agent backend available here (`netns`, `docker`, `hosts` over its test bed; each skipped,
//! saying why, when it cannot run); process tests run on every available backend. Traffic is generated and measured by a small
//! Perl script (`IO::Socket::INET`, `Time::HiRes`) that every node runs from its root directory:
//! TCP listeners and connect probes, a paced UDP sender and counting receiver, a TCP source and
//! a sink that times the bytes it receives.
//!
//! (One file, past the usual size: every test shares the traffic probe and its helpers.)

#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "docker")]
use chaos::backend::docker::{DockerCluster, DockerOptions};
use chaos::backend::{Backend, ClusterOptions, registry};
use chaos::faults::{
    self, Bandwidth, Delay, Dur, Effect, Fault, Kill, Loss, Partition, Pause, Peer, ProcessTarget, Restart,
    Shape, Traffic,
};
use chaos::proto::fault::{Direction, Distribution, Mechanism};
use chaos::proto::{ErrorKind, OutputSpec};
use chaos::{Cluster, Node, NodeExt, ProcSpec, Process, Signal};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Bound on anything that should be quick.
const QUICK: Duration = Duration::from_secs(20);

/// TTL of faults the tests heal themselves: long enough never to expire during a test, short
/// enough that a failed test's faults go away soon.
const TTL: Duration = Duration::from_secs(60);

/// Port of the TCP listeners used to probe reachability.
const PROBE_PORT: u16 = 7801;

/// How long a connect probe waits before it calls a peer unreachable.
const PROBE_TIMEOUT_S: &str = "1";

const TOOL: &str = r#"
use strict; use warnings;
use IO::Socket::INET; use IO::Select; use Time::HiRes qw(time usleep);
$| = 1;
my $mode = shift @ARGV;
if ($mode eq 'listen') {
    my ($port) = @ARGV;
    my $s = IO::Socket::INET->new(LocalPort => $port, Listen => 128, ReuseAddr => 1, Proto => 'tcp')
        or die "listen on $port: $!";
    print "ready\n";
    while (1) { my $c = $s->accept or next; close $c; }
} elsif ($mode eq 'connect') {
    my ($host, $port, $timeout) = @ARGV;
    my $c = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp', Timeout => $timeout);
    if ($c) { print "connected\n"; exit 0; }
    my $why = "$@ $!";
    print "failed: $why\n";
    exit($why =~ /timeout|timed out/i ? 1 : 2);
} elsif ($mode eq 'udp-recv') {
    my ($port, $idle, $deadline) = @ARGV;
    my $s = IO::Socket::INET->new(LocalPort => $port, Proto => 'udp') or die "udp bind $port: $!";
    my $sel = IO::Select->new($s);
    print "ready\n";
    my (%seen, $buf);
    my $end = time + $deadline;
    while ((my $left = $end - time) > 0) {
        my $wait = %seen ? ($idle < $left ? $idle : $left) : $left;
        last unless $sel->can_read($wait);
        defined $s->recv($buf, 2048) or next;
        $seen{$buf} = 1;
    }
    print scalar(keys %seen), "\n";
} elsif ($mode eq 'udp-send') {
    my ($host, $port, $count) = @ARGV;
    my $s = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'udp') or die "udp: $!";
    for my $i (1 .. $count) {
        $s->send("$i");
        usleep(1000) if $i % 20 == 0;
    }
} elsif ($mode eq 'sink') {
    my ($port) = @ARGV;
    my $s = IO::Socket::INET->new(LocalPort => $port, Listen => 1, ReuseAddr => 1, Proto => 'tcp')
        or die "listen on $port: $!";
    print "ready\n";
    my $c = $s->accept or die "accept: $!";
    my ($bytes, $first, $last, $buf) = (0, undef, undef, '');
    while (my $n = sysread($c, $buf, 65536)) {
        $first //= time;
        $bytes += $n;
        $last = time;
    }
    printf "%d %.6f\n", $bytes, ($last // 0) - ($first // 0);
} elsif ($mode eq 'source') {
    my ($host, $port, $bytes) = @ARGV;
    my $c = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp', Timeout => 5)
        or die "connect $host:$port: $@";
    my $chunk = 'x' x 65536;
    while ($bytes > 0) {
        my $w = syswrite($c, $chunk, $bytes < 65536 ? $bytes : 65536);
        die "write: $!" unless defined $w;
        $bytes -= $w;
    }
    close $c;
} else {
    die "unknown mode $mode";
}
"#;

/// Whether Perl with the modules the tool needs is installed; prints why not.
fn perl_available(test: &str) -> bool {
    let ok = std::process::Command::new("perl")
        .args(["-MIO::Socket::INET", "-MIO::Select", "-MTime::HiRes", "-e", "1"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        chaos_testkit::skip(
            test,
            "perl",
            &"the traffic tool needs perl with IO::Socket::INET and Time::HiRes",
        );
    }
    ok
}

/// The registered backends whose nodes have their own network stack, where network faults are
/// measured.
fn network_backends() -> impl Iterator<Item = &'static Backend> {
    registry::all().iter().filter(|b| b.isolated_network)
}

/// Runs `check` on a fresh cluster of `n` nodes, with the traffic tool on each, of every
/// [`network_backends`] backend available here, and cleans each up. Skips, saying why, what
/// cannot run.
async fn on_network_backends<F, Fut>(test: &str, n: usize, check: F)
where
    F: Fn(&'static Backend, Vec<Arc<dyn Node>>) -> Fut,
    Fut: Future<Output = ()>,
{
    if !perl_available(test) {
        return;
    }
    for kind in network_backends() {
        let Some(TestCluster { cluster, bed }) = agent_cluster(test, kind).await else {
            continue;
        };
        let nodes = cluster.create_nodes(n).await.expect("creating nodes");
        for node in &nodes {
            node.send_bytes(&tool(node.as_ref()), TOOL.as_bytes().to_vec(), 0o644)
                .await
                .expect("sending the traffic tool");
        }
        eprintln!("{test}: on the {kind} backend");
        check(kind, nodes).await;
        finish(cluster, bed, test).await;
    }
}

/// An empty cluster of `kind`, or `None` (having said why). Docker nodes get an image with
/// perl in it, for the traffic tool.
async fn agent_cluster(test: &str, kind: &'static Backend) -> Option<TestCluster> {
    if let Err(why) = registry::available_for_tests(kind.name) {
        chaos_testkit::skip(test, kind.name, &why);
        return None;
    }
    // A backend whose machines exist before the runner (hosts) gets its test bed here.
    let (options, bed) = registry::test_bed(kind.name, test)
        .await
        .unwrap_or_else(|e| panic!("{test}: making the {kind} test bed: {e}"));
    let cluster: Arc<dyn Cluster> = match kind.name {
        #[cfg(feature = "docker")]
        "docker" => {
            let docker = DockerOptions {
                include: perl_include(),
                ..DockerOptions::default()
            };
            Arc::new(
                DockerCluster::new(options, docker)
                    .await
                    .unwrap_or_else(|e| panic!("{test}: creating a docker cluster: {e}")),
            )
        }
        _ => kind
            .create(options)
            .await
            .unwrap_or_else(|e| panic!("{test}: creating a {kind} cluster: {e}")),
    };
    Some(TestCluster { cluster, bed })
}

/// A test's cluster and what it runs on besides its backend ([`registry::TestBed`]).
struct TestCluster {
    cluster: Arc<dyn Cluster>,
    bed: Option<registry::TestBed>,
}

/// What the traffic tool needs in a container, from the host's perl: the interpreter, the
/// module tree of Debian's perl-base (where `strict` and `IO::Socket::INET` live), and
/// Time::HiRes with its compiled part.
#[cfg(feature = "docker")]
fn perl_include() -> Vec<PathBuf> {
    let out = std::process::Command::new("perl")
        .args([
            "-MTime::HiRes",
            "-e",
            r#"print "$^X\n$INC{'strict.pm'}\n$INC{'Time/HiRes.pm'}\n""#,
        ])
        .output()
        .expect("asking perl where its modules are");
    let text = String::from_utf8(out.stdout).expect("perl paths are UTF-8");
    let [interpreter, strict, hires] = text.lines().collect::<Vec<_>>()[..] else {
        panic!("unexpected answer from perl: {text:?}");
    };
    let base = Path::new(strict).parent().expect("strict.pm has a directory");
    let hires_root = hires
        .strip_suffix("Time/HiRes.pm")
        .expect("Time/HiRes.pm under a module directory");
    vec![
        PathBuf::from(interpreter),
        base.to_path_buf(),
        PathBuf::from(hires),
        Path::new(hires_root).join("auto/Time/HiRes"),
    ]
}

fn tool(node: &dyn Node) -> String {
    format!("{}/traffic.pl", node.root_dir())
}

fn ip(node: &dyn Node) -> String {
    let addr: IpAddr = node.addresses()[0];
    addr.to_string()
}

fn tool_spec(node: &dyn Node, args: &[&str]) -> ProcSpec {
    let mut all = vec![tool(node)];
    all.extend(args.iter().map(|a| a.to_string()));
    ProcSpec::new("perl", all)
}

/// Starts a long-running tool mode and waits for its `ready` line; returns the process and the
/// rest of its stdout.
async fn start_ready(
    node: &dyn Node,
    args: &[&str],
) -> (Process, tokio::io::Lines<BufReader<chaos::cluster::ByteReader>>) {
    let mut process = node
        .start(tool_spec(node, args))
        .await
        .expect("starting the tool");
    let stdout = process.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(QUICK, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{}: tool {args:?} not ready within {QUICK:?}", node.name()))
        .expect("reading the tool's output");
    assert_eq!(first.as_deref(), Some("ready"), "{}: tool {args:?}", node.name());
    (process, lines)
}

/// Starts a TCP listener on every node.
async fn listeners(nodes: &[Arc<dyn Node>]) -> Vec<Process> {
    let mut out = Vec::new();
    for node in nodes {
        out.push(
            start_ready(node.as_ref(), &["listen", &PROBE_PORT.to_string()])
                .await
                .0,
        );
    }
    out
}

/// Whether a TCP connection from `from` to `to`'s listener succeeds (a timeout means no);
/// any other failure fails the test.
async fn tcp_reaches(from: &dyn Node, to: &dyn Node) -> bool {
    let spec = tool_spec(
        from,
        &["connect", &ip(to), &PROBE_PORT.to_string(), PROBE_TIMEOUT_S],
    );
    let out = from
        .run_timeout(spec, None, QUICK)
        .await
        .expect("running a connect probe");
    match out.status.code {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "connect probe {} -> {} failed oddly: {} {}{}",
            from.name(),
            to.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// TCP reachability of every ordered pair of distinct nodes, probed concurrently.
async fn reachability(nodes: &[Arc<dyn Node>]) -> BTreeSet<(String, String)> {
    let mut probes = Vec::new();
    for a in nodes {
        for b in nodes {
            if a.name() != b.name() {
                probes.push(async move {
                    (
                        a.name().to_string(),
                        b.name().to_string(),
                        tcp_reaches(a.as_ref(), b.as_ref()).await,
                    )
                });
            }
        }
    }
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .filter(|(_, _, ok)| *ok)
        .map(|(a, b, _)| (a, b))
        .collect()
}

/// Sends `count` UDP datagrams from `from` to `to` and returns how many distinct ones arrived.
async fn udp_delivered(from: &dyn Node, to: &dyn Node, port: u16, count: usize) -> usize {
    let (mut receiver, mut lines) = start_ready(to, &["udp-recv", &port.to_string(), "0.5", "15"]).await;
    let sent = from
        .run_timeout(
            tool_spec(
                from,
                &["udp-send", &ip(to), &port.to_string(), &count.to_string()],
            ),
            None,
            QUICK,
        )
        .await
        .expect("sending datagrams");
    assert!(
        sent.status.success(),
        "udp-send: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let line = tokio::time::timeout(QUICK, lines.next_line())
        .await
        .expect("receiver result in time")
        .expect("reading the receiver")
        .expect("a count line");
    receiver.stdout = None;
    receiver.wait().await.expect("receiver exit");
    line.trim().parse().expect("a count")
}

fn node_names(nodes: &[Arc<dyn Node>]) -> Vec<String> {
    nodes.iter().map(|n| n.name().to_string()).collect()
}

async fn finish(cluster: Arc<dyn Cluster>, bed: Option<registry::TestBed>, test: &str) {
    cluster
        .cleanup()
        .await
        .unwrap_or_else(|e| panic!("{test}: cleaning up: {e}"));
    if let Some(bed) = bed {
        bed.cleanup()
            .await
            .unwrap_or_else(|e| panic!("{test}: removing the test bed: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_between_two_of_three_nodes_then_full_isolation_keeps_the_agent_reachable() {
    let test = "faults_partition_two_of_three";
    on_network_backends(test, 3, |_kind, nodes| async move {
        let _listeners = listeners(&nodes).await;
        let (n1, n2, n3) = (nodes[0].as_ref(), nodes[1].as_ref(), nodes[2].as_ref());
        assert!(tcp_reaches(n1, n2).await, "before any fault, n1 reaches n2");

        let shape = Shape::Groups {
            groups: vec![vec!["n1".into()], vec!["n2".into()]],
        };
        let handle = faults::partition(&nodes, &shape, TTL)
            .await
            .expect("partitioning");
        assert_eq!(
            handle.faults().len(),
            2,
            "n1 and n2 each drop the other; n3 drops nothing"
        );
        for f in handle.faults() {
            assert_eq!(f.mechanism(), &Mechanism::NftablesNetlink);
        }
        let reach = reachability(&nodes).await;
        let expected: BTreeSet<(String, String)> = [("n1", "n3"), ("n3", "n1"), ("n2", "n3"), ("n3", "n2")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(
            reach, expected,
            "n1 and n2 cut from each other, both still reach n3"
        );

        handle.heal().await.expect("healing");
        handle.heal().await.expect("healing twice is fine");
        assert!(
            tcp_reaches(n1, n2).await && tcp_reaches(n2, n1).await,
            "heal restores n1 <-> n2"
        );
        for node in &nodes {
            assert!(node.list_faults().await.unwrap().is_empty(), "{}", node.name());
        }

        // Everything in and out of n3 dropped, both ways: its peers are cut, the runner is not.
        let isolated = faults::inject(
            &nodes,
            &nodes[2],
            &Fault::Partition(Partition {
                traffic: Traffic::all(),
            }),
            TTL,
        )
        .await
        .expect("isolating n3");
        assert!(!tcp_reaches(n1, n3).await, "n1 cannot reach the isolated n3");
        assert!(!tcp_reaches(n3, n2).await, "the isolated n3 cannot reach n2");
        let out = n3
            .run("echo", ["still", "here"])
            .await
            .expect("the runner still drives n3's agent");
        assert_eq!(out.stdout_str().trim(), "still here");
        let listed = n3.list_faults().await.expect("listing n3's faults");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, isolated.id());
        assert!(isolated.heal().await.expect("healing n3"));
        assert!(
            !isolated.heal().await.expect("healing again"),
            "a second heal finds nothing"
        );
        assert!(tcp_reaches(n1, n3).await, "n3 is back");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_partition_passes_udp_one_way_and_heals_itself_at_its_ttl() {
    let test = "faults_one_way";
    on_network_backends(test, 2, |_kind, nodes| async move {
        let (n1, n2) = (nodes[0].as_ref(), nodes[1].as_ref());
        // n2 drops what arrives from n1: n1 -> n2 is cut, n2 -> n1 is not.
        let ttl = Duration::from_secs(3);
        let fault = Fault::Partition(Partition {
            traffic: Traffic::nodes(["n1"]).direction(Direction::In),
        });
        let handle = faults::inject(&nodes, &nodes[1], &fault, ttl)
            .await
            .expect("one-way partition");
        let (forward, backward) =
            tokio::join!(udp_delivered(n1, n2, 7811, 200), udp_delivered(n2, n1, 7812, 200));
        assert_eq!(forward, 0, "n1 -> n2 must be dropped");
        assert!(backward >= 190, "n2 -> n1 must pass: {backward} of 200 arrived");

        // Not healed by us: the node heals it when the TTL ends.
        let expires = handle.expires();
        let wait = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        assert!(wait <= ttl, "expiry {wait:?} away, TTL {ttl:?}");
        tokio::time::sleep(wait + Duration::from_millis(300)).await;
        assert!(n2.list_faults().await.unwrap().is_empty(), "the fault expired");
        assert!(
            udp_delivered(n1, n2, 7813, 200).await >= 190,
            "n1 -> n2 passes after the TTL"
        );
        assert!(!handle.heal().await.unwrap(), "nothing left to heal");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_delay_and_bandwidth_measure_as_asked() {
    let test = "faults_measured";
    on_network_backends(test, 2, |_kind, nodes| async move {
        let (n1, n2) = (nodes[0].as_ref(), nodes[1].as_ref());

        // 30 % loss of what n2 receives from n1, over 2000 datagrams.
        let loss = Fault::Loss(Loss {
            traffic: Traffic::nodes(["n1"]).direction(Direction::In),
            percent: 30.0,
            correlation: 0.0,
        });
        let handle = faults::inject(&nodes, &nodes[1], &loss, TTL).await.expect("loss");
        let sent = 2000;
        let got = udp_delivered(n1, n2, 7821, sent).await;
        let measured = 100.0 * (sent - got) as f64 / sent as f64;
        eprintln!("{test}: loss 30 % -> {got} of {sent} datagrams arrived, {measured:.1} % lost");
        assert!((20.0..=40.0).contains(&measured), "measured loss {measured:.1} %");
        assert!(handle.heal().await.unwrap());

        // 100 ms on what n1 sends to n2: the round trip takes 100 ms more.
        let probe = n1.probe().await.expect("probing n1");
        let delay = Fault::Delay(Delay {
            traffic: Traffic::nodes(["n2"]).direction(Direction::Out),
            delay: Dur(Duration::from_millis(100)),
            jitter: Dur(Duration::ZERO),
            distribution: Distribution::Uniform,
        });
        let handle = faults::inject(&nodes, &nodes[0], &delay, TTL)
            .await
            .expect("delay");
        if !probe.has("netem") {
            assert!(
                matches!(handle.mechanism(), Mechanism::NfqueueUserspace { .. }),
                "without netem, delay goes through the userspace path: {:?}",
                handle.mechanism()
            );
        }
        let ping = n1
            .run_timeout(
                ProcSpec::new("busybox", ["ping", "-c", "10", "-i", "0.1", "-q", &ip(n2)]),
                None,
                QUICK,
            )
            .await
            .expect("ping");
        assert!(
            ping.status.success(),
            "ping: {}{}",
            ping.stdout_str(),
            String::from_utf8_lossy(&ping.stderr)
        );
        let (min, avg) = round_trip(&ping.stdout_str());
        eprintln!("{test}: delay 100 ms -> round trip min {min} ms, avg {avg} ms");
        assert!(min >= 100.0 && avg <= 150.0, "round trip min {min} avg {avg} ms");
        assert!(handle.heal().await.unwrap());

        // 8 Mbit/s out of n1: a TCP transfer to n2 runs at that rate.
        let rate_bps = 8_000_000u64;
        let bandwidth = Fault::Bandwidth(Bandwidth {
            interface: String::new(),
            rate_bps,
            burst_bytes: 0,
            limit_bytes: 0,
            exempt_tcp_ports: Vec::new(),
        });
        let handle = faults::inject(&nodes, &nodes[0], &bandwidth, TTL)
            .await
            .expect("bandwidth");
        let (mut sink, mut lines) = start_ready(n2, &["sink", "7822"]).await;
        let bytes = 2_500_000;
        let source = n1
            .run_timeout(
                tool_spec(n1, &["source", &ip(n2), "7822", &bytes.to_string()]),
                None,
                QUICK,
            )
            .await
            .expect("source");
        assert!(
            source.status.success(),
            "source: {}",
            String::from_utf8_lossy(&source.stderr)
        );
        let line = tokio::time::timeout(QUICK, lines.next_line())
            .await
            .expect("sink result in time")
            .unwrap()
            .expect("a result line");
        sink.stdout = None;
        sink.wait().await.unwrap();
        let mut fields = line.split_whitespace();
        let received: f64 = fields.next().unwrap().parse().unwrap();
        let seconds: f64 = fields.next().unwrap().parse().unwrap();
        assert_eq!(received as usize, bytes, "every byte arrived");
        let measured = received * 8.0 / seconds;
        eprintln!(
            "{test}: bandwidth 8 Mbit/s -> {:.2} Mbit/s measured",
            measured / 1e6
        );
        let ratio = measured / rate_bps as f64;
        assert!(
            (0.75..=1.25).contains(&ratio),
            "measured {measured:.0} bit/s for {rate_bps}"
        );
        assert!(handle.heal().await.unwrap());

        // Interfaces: only those the node reports, and never its control interface unforced.
        let flap = |interface: &str, force: bool| {
            Fault::Flap(chaos::faults::Flap {
                interface: interface.into(),
                period: chaos::faults::Dur(Duration::from_millis(200)),
                count: 1,
                force,
            })
        };
        let e = faults::inject(&nodes, &nodes[0], &flap("nope0", false), TTL)
            .await
            .expect_err("an interface the node does not report");
        assert!(
            e.to_string().contains("nope0") && e.to_string().contains("allows"),
            "{e}"
        );
        let e = faults::inject(&nodes, &nodes[0], &flap("", false), TTL)
            .await
            .expect_err("the main interface carries the control traffic");
        assert!(
            e.to_string().contains("control") && e.to_string().contains("force"),
            "{e}"
        );
    })
    .await;
}

/// `(min, avg)` from busybox ping's `round-trip min/avg/max = a/b/c ms`.
fn round_trip(output: &str) -> (f64, f64) {
    let line = output
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .unwrap_or_else(|| panic!("no round-trip line in {output:?}"));
    let values: Vec<f64> = line
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches("ms")
        .trim()
        .split('/')
        .map(|v| v.parse().unwrap())
        .collect();
    (values[0], values[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_on_five_nodes_match_real_reachability() {
    let test = "faults_shapes";
    on_network_backends(test, 5, |_kind, nodes| async move {
        let _listeners = listeners(&nodes).await;
        let names = node_names(&nodes);
        for shape in [
            Shape::MajoritiesRing { seed: Some(11) },
            Shape::Isolate { node: "n3".into() },
        ] {
            let handle = faults::partition(&nodes, &shape, TTL)
                .await
                .expect("partitioning");
            let expected: BTreeSet<(String, String)> = names
                .iter()
                .flat_map(|a| names.iter().map(move |b| (a.clone(), b.clone())))
                .filter(|(a, b)| a != b && handle.cuts().connected(a, b))
                .collect();
            let measured = reachability(&nodes).await;
            assert_eq!(
                measured, expected,
                "{shape:?}: TCP reachability follows the shape"
            );
            if let Shape::MajoritiesRing { .. } = shape {
                for name in &names {
                    let sees = 1 + measured.iter().filter(|(a, _)| a == name).count();
                    assert!(
                        sees >= 3,
                        "{name} reaches a majority (itself and {} others)",
                        sees - 1
                    );
                }
            }
            handle.heal().await.expect("healing");
            assert_eq!(
                reachability(&nodes).await.len(),
                20,
                "{shape:?}: healed, everyone reaches everyone"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_faults_name_what_is_missing() {
    let test = "faults_unsupported";
    if let Err(why) = chaos::backend::registry::available("local") {
        chaos_testkit::skip(test, "agent", &why);
        return;
    }
    // The local backend cannot isolate one node's traffic and says so.
    let local = chaos::backend::new_cluster("local", ClusterOptions::default())
        .await
        .unwrap();
    let local_nodes = local.create_nodes(2).await.unwrap();
    let err = faults::inject(
        &local_nodes,
        &local_nodes[0],
        &Fault::Partition(Partition {
            traffic: Traffic::nodes(["n2"]),
        }),
        TTL,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Unsupported), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("partition faults are refused")
            && message.contains("--no-network-faults")
            && message.contains("local backend"),
        "{message}"
    );
    assert!(message.contains("netns"), "{message}");
    local.cleanup().await.unwrap();

    // A cgroup outside the node (here a host cgroup of a v1 hierarchy, made for this check and
    // removed after it) is refused: a node's faults reach only its own processes. (A cgroup
    // without a freezer is named as such by chaos-faults' own tests.)
    let Some(TestCluster { cluster, bed }) = agent_cluster(
        test,
        registry::find("netns").expect("netns is compiled in on Linux"),
    )
    .await
    else {
        return;
    };
    let nodes = cluster.create_nodes(1).await.expect("creating a node");
    match NoFreezerCgroup::create() {
        Some(cgroup) => {
            let err = faults::inject(
                &nodes,
                &nodes[0],
                &Fault::Pause(Pause {
                    process: Some(ProcessTarget::Cgroup(cgroup.0.display().to_string())),
                }),
                TTL,
            )
            .await
            .unwrap_err();
            assert_eq!(err.kind(), Some(ErrorKind::PermissionDenied), "{err}");
            assert!(err.to_string().contains("is not this node's"), "{err}");
            eprintln!("{test}: {err}");
        }
        None => eprintln!("{test}: no cgroup v1 hierarchy without a freezer here; that check skipped"),
    }
    // The probe names what the kernel lacks, e.g. netem on this machine.
    let probe = nodes[0].probe().await.expect("probe");
    for (name, detail) in probe.missing() {
        eprintln!("{test}: node lacks {name}: {detail}");
        assert!(!detail.is_empty());
    }
    if !probe.has("netem") {
        let detail = &probe.features["netem"].detail;
        assert!(detail.to_uppercase().contains("NETEM"), "{detail}");
    }
    assert!(nodes[0].list_faults().await.unwrap().is_empty());
    finish(cluster, bed, test).await;
}

/// A child cgroup made in a cgroup v1 hierarchy that has no freezer (pids, cpu or memory),
/// removed on drop.
struct NoFreezerCgroup(std::path::PathBuf);

impl NoFreezerCgroup {
    fn create() -> Option<Self> {
        let hierarchy = [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/cpu",
            "/sys/fs/cgroup/memory",
        ]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| {
            p.join("cgroup.procs").exists()
                && !p.join("cgroup.freeze").exists()
                && !p.join("freezer.state").exists()
        })?;
        let dir = hierarchy.join(format!("chaos-faults-test-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        Some(Self(dir))
    }
}

impl Drop for NoFreezerCgroup {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
    }
}

/// Size of `path` on `node` (0 when missing).
async fn size(node: &dyn Node, path: &str) -> u64 {
    match node.stat(path).await {
        Ok(stat) => stat.size,
        Err(e) if e.is_not_found() => 0,
        Err(e) => panic!("stat {path}: {e}"),
    }
}

/// Whether the file at `path` grows within `bound`.
async fn grows(node: &dyn Node, path: &str, bound: Duration) -> bool {
    let start = size(node, path).await;
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if size(node, path).await > start {
            return true;
        }
    }
    false
}

/// Whether the file at `path` stays the same size for `quiet`, after `settle` for writes under
/// way to land.
async fn still(node: &dyn Node, path: &str, settle: Duration, quiet: Duration) -> bool {
    tokio::time::sleep(settle).await;
    let before = size(node, path).await;
    tokio::time::sleep(quiet).await;
    size(node, path).await == before
}

chaos::backend_tests!(pause_resume_ttl_and_kill_of_a_process_tree);
async fn pause_resume_ttl_and_kill_of_a_process_tree(cluster: Arc<dyn Cluster>) {
    {
        let nodes = cluster.create_nodes(1).await.unwrap();
        let node = &nodes[0];
        let file = format!("{}/ticks", node.root_dir());
        // The writer is a child of the started shell: pausing must reach the whole tree.
        let script = format!("(while :; do echo x >> {file}; sleep 0.02; done) & wait");
        let mut spec = ProcSpec::new("sh", ["-c", script.as_str()]);
        spec.stdout = OutputSpec::Null;
        spec.stderr = OutputSpec::Null;
        let process = node.start(spec).await.unwrap();
        assert!(grows(node.as_ref(), &file, QUICK).await, "the writer writes");

        let pause = Fault::Pause(Pause {
            process: Some(ProcessTarget::Proc(process.id)),
        });
        let handle = faults::inject(&nodes, node, &pause, TTL).await.expect("pause");
        eprintln!("{}: pause via {:?}", cluster.backend(), handle.mechanism());
        let quiet = Duration::from_millis(500);
        assert!(
            still(node.as_ref(), &file, Duration::from_millis(150), quiet).await,
            "paused: no writes"
        );
        assert_eq!(node.list_faults().await.unwrap().len(), 1);
        assert!(handle.heal().await.unwrap(), "resumed");
        assert!(
            grows(node.as_ref(), &file, QUICK).await,
            "writes again after resume"
        );

        // A pause with a short TTL ends by itself.
        let short = faults::inject(&nodes, node, &pause, Duration::from_millis(800))
            .await
            .expect("short pause");
        assert!(
            still(
                node.as_ref(),
                &file,
                Duration::from_millis(150),
                Duration::from_millis(400)
            )
            .await
        );
        assert!(
            grows(node.as_ref(), &file, Duration::from_secs(5)).await,
            "the TTL resumed it"
        );
        assert!(
            node.list_faults().await.unwrap().is_empty(),
            "expired pauses are not listed"
        );
        assert!(!short.heal().await.unwrap());

        // Node-level crash: every process tree gets SIGKILL.
        let kill = Fault::Kill(Kill {
            signal: Signal::KILL,
            process: Some(ProcessTarget::All),
        });
        let killed = faults::inject(&nodes, node, &kill, TTL).await.expect("kill");
        assert_eq!(
            killed.record().effect,
            Effect::SignalledProcs {
                procs: vec![process.id]
            }
        );
        let status = tokio::time::timeout(QUICK, process.wait())
            .await
            .expect("exit in time")
            .unwrap();
        assert_eq!(status.signal, Some(9), "{status}");
        assert!(
            still(
                node.as_ref(),
                &file,
                Duration::from_millis(100),
                Duration::from_millis(300)
            )
            .await,
            "the child died with its parent"
        );
        assert!(!killed.heal().await.unwrap(), "a kill has nothing to heal");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_by_network_and_unknown_names() {
    let test = "faults_peers";
    on_network_backends(test, 2, |_kind, nodes| async move {
        let _listeners = listeners(&nodes).await;
        let err = faults::inject(
            &nodes,
            &nodes[0],
            &Fault::Partition(Partition {
                traffic: Traffic::nodes(["n7"]),
            }),
            TTL,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"n7\"") && err.contains("n1, n2"), "{err}");
        // The same cut written as an address.
        let peer: Peer = ip(nodes[1].as_ref()).parse().unwrap();
        let handle = faults::inject(
            &nodes,
            &nodes[0],
            &Fault::Partition(Partition {
                traffic: Traffic::with([peer]).direction(Direction::In),
            }),
            TTL,
        )
        .await
        .unwrap();
        assert!(!tcp_reaches(nodes[1].as_ref(), nodes[0].as_ref()).await);
        let healed = faults::heal_all(&nodes).await.unwrap();
        assert_eq!(healed["n1"], vec![handle.id().to_string()]);
        assert!(healed["n2"].is_empty());
        assert!(tcp_reaches(nodes[1].as_ref(), nodes[0].as_ref()).await);
    })
    .await;
}

chaos::backend_tests!(restart_and_kill_by_name);
async fn restart_and_kill_by_name(cluster: Arc<dyn Cluster>) {
    {
        let nodes = cluster.create_nodes(1).await.unwrap();
        let node = &nodes[0];
        let backend = cluster.backend();

        // Restart: the old process is asked to stop, the same spec starts again.
        let mut spec = ProcSpec::new("sleep", ["300"]);
        spec.stdout = OutputSpec::Null;
        let first = node.start(spec).await.unwrap();
        let restart = Fault::Restart(Restart {
            process: Some(first.id),
            signal: Signal::TERM,
            grace: Dur(Duration::from_secs(2)),
        });
        let handle = faults::inject(&nodes, node, &restart, TTL)
            .await
            .expect("restart");
        let Effect::Restarted { started } = handle.record().effect.clone() else {
            panic!("{:?}", handle.record());
        };
        assert_ne!(started.id, first.id);
        assert_ne!(started.pid, first.pid);
        let status = tokio::time::timeout(QUICK, first.wait())
            .await
            .expect("old exits")
            .unwrap();
        assert_eq!(status.signal, Some(15), "{backend}: {status}");
        assert!(
            common::alive_on(node.as_ref(), started.pid).await,
            "{backend}: the new process runs"
        );

        // Kill by name: agent nodes match any process of the node by its command name, so the
        // test runs a copy of sleep under a name nothing else has.
        let name = format!("chz{}", std::process::id() % 1_000_000);
        let copy = format!("{}/{name}", node.root_dir());
        let sleep = std::fs::read("/bin/sleep").expect("reading /bin/sleep");
        node.send_bytes(&copy, sleep, 0o755).await.unwrap();
        let mut spec = ProcSpec::new(copy.as_str(), ["300"]);
        spec.stdout = OutputSpec::Null;
        let named = node.start(spec).await.unwrap();
        let kill = Fault::Kill(Kill {
            signal: Signal::KILL,
            process: Some(ProcessTarget::Name(name.clone())),
        });
        match faults::inject(&nodes, node, &kill, TTL).await {
            Ok(handle) => {
                assert_eq!(
                    handle.record().effect,
                    Effect::Signalled {
                        pids: vec![named.pid]
                    },
                    "{backend}"
                );
                let status = tokio::time::timeout(QUICK, named.wait())
                    .await
                    .expect("exit")
                    .unwrap();
                assert_eq!(status.signal, Some(9), "{backend}: {status}");
            }
            Err(e) => {
                // Local nodes share the host's process table and refuse, saying so.
                assert_eq!(backend, "local", "{e}");
                assert_eq!(e.kind(), Some(ErrorKind::Unsupported), "{e}");
                assert!(e.to_string().contains("process table"), "{e}");
            }
        }
        node.stop().await.unwrap();
    }
}
