//! Partition shapes (Jepsen's nemeses) as pure functions: a [`Shape`] and the cluster's node
//! names give [`Cuts`], the relation "packets from A to B are dropped". Nothing here touches a
//! node; [`super::partition`] installs the result.
//!
//! Random shapes take a seed and are fully determined by it (and by the node names, in order),
//! so a scheduler can log a shape and replay exactly the same partition.

use std::collections::{BTreeMap, BTreeSet};

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A partition of the whole cluster, named by its shape. Every shape but [`Shape::OneWay`] is
/// symmetric: when A cannot reach B, B cannot reach A.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "shape", rename_all = "kebab-case")]
pub enum Shape {
    /// One node cut off from all the others.
    Isolate {
        /// The isolated node.
        node: String,
    },
    /// One node, picked by the seed, cut off from all the others.
    IsolateRandom {
        /// Picks the node.
        seed: u64,
    },
    /// The nodes in the given order split in two: the first ⌊n/2⌋ and the rest.
    Halves,
    /// Like [`Shape::Halves`] after a shuffle determined by the seed.
    RandomHalves {
        /// Determines the shuffle.
        seed: u64,
    },
    /// A random minority of ⌊(n−1)/2⌋ nodes cut off from the majority; unlike halves, the larger
    /// side is a strict majority for an even number of nodes too.
    MajorityMinority {
        /// Determines the minority.
        seed: u64,
    },
    /// The nodes form a ring (given order, or shuffled by the seed); each node sees the nodes
    /// within distance k on the ring, with k the least that makes that a majority. Every node
    /// sees a majority, and no two nodes see the same one. Needs at least 4 nodes (with 3,
    /// symmetric links cannot do it: use [`Shape::Bridge`]).
    MajoritiesRing {
        /// Shuffles the ring's order when present.
        #[serde(default)]
        seed: Option<u64>,
    },
    /// Two halves cut from each other, except one node of the second half (its first) that
    /// still sees everyone. Needs at least 3 nodes.
    Bridge {
        /// Shuffles the nodes first when present.
        #[serde(default)]
        seed: Option<u64>,
    },
    /// Explicit components: nodes of different groups cannot talk; nodes in no group are not
    /// affected (they see everyone).
    Groups {
        /// The components; each node in at most one.
        groups: Vec<Vec<String>>,
    },
    /// Asymmetric: packets from every `from` node to every `to` node are dropped, the reverse
    /// direction passes (so TCP between them fails both ways, UDP flows one way).
    OneWay {
        /// Senders whose packets are dropped.
        from: Vec<String>,
        /// Receivers that drop them.
        to: Vec<String>,
    },
}

impl Shape {
    /// A short name for logs and errors (`"majorities-ring"`).
    pub fn name(&self) -> &'static str {
        match self {
            Shape::Isolate { .. } => "isolate",
            Shape::IsolateRandom { .. } => "isolate-random",
            Shape::Halves => "halves",
            Shape::RandomHalves { .. } => "random-halves",
            Shape::MajorityMinority { .. } => "majority-minority",
            Shape::MajoritiesRing { .. } => "majorities-ring",
            Shape::Bridge { .. } => "bridge",
            Shape::Groups { .. } => "groups",
            Shape::OneWay { .. } => "one-way",
        }
    }

    /// The cuts this shape makes among `nodes` (the cluster's node names, in order).
    pub fn cuts(&self, nodes: &[String]) -> Result<Cuts> {
        let what = format!("partition {}", self.name());
        let invalid = |message: String| Error::invalid(&what, message);
        let mut seen = BTreeSet::new();
        if let Some(dup) = nodes.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(invalid(format!("node {dup} is listed twice")));
        }
        let n = nodes.len();
        let need = |min: usize, why: &str| {
            if n < min {
                Err(invalid(format!(
                    "needs at least {min} nodes ({why}), the cluster has {n}: {}",
                    nodes.join(", ")
                )))
            } else {
                Ok(())
            }
        };
        let known = |name: &str| {
            if nodes.iter().any(|n| n == name) {
                Ok(())
            } else {
                Err(invalid(format!(
                    "unknown node {name:?}; the cluster's nodes are {}",
                    nodes.join(", ")
                )))
            }
        };
        let mut cuts = Cuts::new(nodes);
        match self {
            Shape::Isolate { node } => {
                known(node)?;
                need(2, "one to isolate and one other")?;
                cuts.separate(std::slice::from_ref(node), &others(nodes, &[node.as_str()]));
            }
            Shape::IsolateRandom { seed } => {
                need(2, "one to isolate and one other")?;
                let order = shuffled(nodes, *seed);
                cuts.separate(&order[..1], &order[1..]);
            }
            Shape::Halves => {
                need(2, "two halves")?;
                let (a, b) = nodes.split_at(n / 2);
                cuts.separate(a, b);
            }
            Shape::RandomHalves { seed } => {
                need(2, "two halves")?;
                let order = shuffled(nodes, *seed);
                let (a, b) = order.split_at(n / 2);
                cuts.separate(a, b);
            }
            Shape::MajorityMinority { seed } => {
                need(3, "a minority of at least one node and a strict majority")?;
                let order = shuffled(nodes, *seed);
                let (minority, majority) = order.split_at((n - 1) / 2);
                cuts.separate(minority, majority);
            }
            Shape::MajoritiesRing { seed } => {
                need(
                    4,
                    "with 3 nodes no symmetric cut gives every node a different majority",
                )?;
                let ring = seed.map_or_else(|| nodes.to_vec(), |s| shuffled(nodes, s));
                let reach = ring_reach(n);
                for i in 0..n {
                    for j in i + 1..n {
                        let distance = (j - i).min(n - (j - i));
                        if distance > reach {
                            cuts.cut_both(&ring[i], &ring[j]);
                        }
                    }
                }
            }
            Shape::Bridge { seed } => {
                need(3, "two sides and a bridge node")?;
                let order = seed.map_or_else(|| nodes.to_vec(), |s| shuffled(nodes, s));
                let (a, b) = order.split_at(n / 2);
                // The bridge is the first node of the larger half: it stays connected to both.
                cuts.separate(a, &b[1..]);
            }
            Shape::Groups { groups } => {
                let mut placed = BTreeSet::new();
                for name in groups.iter().flatten() {
                    known(name)?;
                    if !placed.insert(name.as_str()) {
                        return Err(invalid(format!("node {name} is in more than one group")));
                    }
                }
                for (i, a) in groups.iter().enumerate() {
                    for b in &groups[i + 1..] {
                        cuts.separate(a, b);
                    }
                }
            }
            Shape::OneWay { from, to } => {
                for name in from.iter().chain(to) {
                    known(name)?;
                }
                if let Some(both) = from.iter().find(|f| to.contains(f)) {
                    return Err(invalid(format!("node {both} is both in `from` and in `to`")));
                }
                for f in from {
                    for t in to {
                        cuts.cut(f, t);
                    }
                }
            }
        }
        Ok(cuts)
    }
}

/// The ring distance within which nodes still see each other in a majorities ring of `n`: the
/// least `k` such that the `2k + 1` nodes around a node are a majority.
fn ring_reach(n: usize) -> usize {
    (n / 2).div_ceil(2)
}

/// `nodes` shuffled by a generator seeded with `seed`. Xoshiro256++ is a fixed algorithm
/// (unlike `StdRng`), so the seed keeps meaning the same permutation; a test pins it.
fn shuffled(nodes: &[String], seed: u64) -> Vec<String> {
    let mut order = nodes.to_vec();
    order.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(seed));
    order
}

fn others(nodes: &[String], except: &[&str]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| !except.contains(&n.as_str()))
        .cloned()
        .collect()
}

/// Who cannot send to whom: a set of directed pairs `(from, to)` whose packets are dropped,
/// over a cluster's node names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cuts {
    nodes: Vec<String>,
    dropped: BTreeSet<(String, String)>,
}

impl Cuts {
    /// No cuts among `nodes`.
    pub fn new(nodes: &[String]) -> Self {
        Self {
            nodes: nodes.to_vec(),
            dropped: BTreeSet::new(),
        }
    }

    /// Drops packets from `from` to `to`.
    pub fn cut(&mut self, from: &str, to: &str) {
        if from != to {
            self.dropped.insert((from.to_string(), to.to_string()));
        }
    }

    /// Drops packets between `a` and `b`, both ways.
    pub fn cut_both(&mut self, a: &str, b: &str) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Cuts every node of `a` from every node of `b`, both ways.
    pub fn separate(&mut self, a: &[String], b: &[String]) {
        for x in a {
            for y in b {
                self.cut_both(x, y);
            }
        }
    }

    /// The node names, in the cluster's order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Every `(from, to)` pair whose packets are dropped.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.dropped.iter().map(|(a, b)| (a.as_str(), b.as_str()))
    }

    /// True when nothing is cut.
    pub fn is_empty(&self) -> bool {
        self.dropped.is_empty()
    }

    /// Whether packets from `from` to `to` are dropped.
    pub fn is_cut(&self, from: &str, to: &str) -> bool {
        self.dropped.contains(&(from.to_string(), to.to_string()))
    }

    /// Whether `a` and `b` exchange packets both ways (so TCP between them works).
    pub fn connected(&self, a: &str, b: &str) -> bool {
        !self.is_cut(a, b) && !self.is_cut(b, a)
    }

    /// The nodes `node` is connected to both ways, itself included.
    pub fn sees(&self, node: &str) -> BTreeSet<&str> {
        self.nodes
            .iter()
            .map(String::as_str)
            .filter(|other| self.connected(node, other))
            .collect()
    }

    /// The senders whose packets `to` must drop, in the cluster's order.
    pub fn dropped_at(&self, to: &str) -> Vec<&str> {
        self.nodes
            .iter()
            .map(String::as_str)
            .filter(|from| self.is_cut(from, to))
            .collect()
    }

    /// True when every cut goes both ways.
    pub fn is_symmetric(&self) -> bool {
        self.dropped.iter().all(|(a, b)| self.is_cut(b, a))
    }

    /// Jepsen's "grudge": each node mapped to the nodes whose packets it drops (nodes that drop
    /// nothing are left out).
    pub fn grudges(&self) -> BTreeMap<&str, Vec<&str>> {
        self.nodes
            .iter()
            .map(|n| (n.as_str(), self.dropped_at(n)))
            .filter(|(_, from)| !from.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    fn set<'a>(items: &[&'a str]) -> BTreeSet<&'a str> {
        items.iter().copied().collect()
    }

    fn is_majority(seen: &BTreeSet<&str>, n: usize) -> bool {
        seen.len() > n / 2
    }

    #[test]
    fn isolate_cuts_one_node_from_all_others_both_ways() {
        let nodes = names(4);
        let cuts = Shape::Isolate { node: "n3".into() }.cuts(&nodes).unwrap();
        assert!(cuts.is_symmetric());
        assert_eq!(cuts.sees("n3"), set(&["n3"]));
        for other in ["n1", "n2", "n4"] {
            assert_eq!(cuts.sees(other), set(&["n1", "n2", "n4"]));
        }
        assert_eq!(cuts.dropped_at("n3"), vec!["n1", "n2", "n4"]);
        assert_eq!(cuts.dropped_at("n1"), vec!["n3"]);
    }

    #[test]
    fn halves_put_the_smaller_half_first() {
        let cuts = Shape::Halves.cuts(&names(5)).unwrap();
        assert_eq!(cuts.sees("n1"), set(&["n1", "n2"]));
        assert_eq!(cuts.sees("n5"), set(&["n3", "n4", "n5"]));
        assert!(cuts.is_symmetric());
        assert_eq!(cuts.pairs().count(), 2 * 2 * 3);
    }

    #[test]
    fn random_halves_are_determined_by_the_seed() {
        let nodes = names(7);
        let a = Shape::RandomHalves { seed: 42 }.cuts(&nodes).unwrap();
        let b = Shape::RandomHalves { seed: 42 }.cuts(&nodes).unwrap();
        assert_eq!(a, b);
        // Some other seed gives another split: the seed matters.
        let differs = (0..20u64).any(|s| Shape::RandomHalves { seed: s }.cuts(&nodes).unwrap() != a);
        assert!(differs, "20 seeds all gave the same halves");
        // Whatever the seed, it is two halves of sizes 3 and 4 with no link between them.
        for seed in 0..50 {
            let cuts = Shape::RandomHalves { seed }.cuts(&nodes).unwrap();
            assert!(cuts.is_symmetric());
            let sizes: BTreeSet<usize> = nodes.iter().map(|n| cuts.sees(n).len()).collect();
            assert_eq!(sizes, BTreeSet::from([3, 4]));
            assert_eq!(cuts.pairs().count(), 2 * 3 * 4);
        }
    }

    /// Pins what a seed means, so that a logged shape replays the same partition after a
    /// dependency upgrade; if the generator or the shuffle changes, this test says so.
    #[test]
    fn seeds_keep_their_meaning() {
        let nodes = names(6);
        assert_eq!(shuffled(&nodes, 7), PINNED_SHUFFLE_OF_6_WITH_SEED_7);
        let cuts = Shape::RandomHalves { seed: 7 }.cuts(&nodes).unwrap();
        let first_half: BTreeSet<&str> = PINNED_SHUFFLE_OF_6_WITH_SEED_7[..3].iter().copied().collect();
        assert_eq!(cuts.sees(PINNED_SHUFFLE_OF_6_WITH_SEED_7[0]), first_half);
    }

    const PINNED_SHUFFLE_OF_6_WITH_SEED_7: [&str; 6] = ["n5", "n6", "n4", "n3", "n1", "n2"];

    #[test]
    fn majority_minority_leaves_a_strict_majority() {
        for n in 3..=9 {
            let nodes = names(n);
            let cuts = Shape::MajorityMinority { seed: n as u64 }.cuts(&nodes).unwrap();
            assert!(cuts.is_symmetric());
            let majority = nodes.iter().filter(|x| is_majority(&cuts.sees(x), n)).count();
            assert_eq!(majority, n - (n - 1) / 2, "n = {n}");
            assert!(majority > n / 2, "n = {n}: the larger side is a strict majority");
        }
        assert!(Shape::MajorityMinority { seed: 1 }.cuts(&names(2)).is_err());
    }

    #[test]
    fn majorities_ring_gives_every_node_a_different_majority() {
        for n in 4..=15 {
            let nodes = names(n);
            for seed in [None, Some(3), Some(99)] {
                let cuts = Shape::MajoritiesRing { seed }.cuts(&nodes).unwrap();
                assert!(cuts.is_symmetric(), "n = {n}");
                assert!(!cuts.is_empty(), "n = {n}");
                let mut majorities = BTreeSet::new();
                for node in &nodes {
                    let seen = cuts.sees(node);
                    assert!(is_majority(&seen, n), "n = {n}: {node} sees only {seen:?}");
                    assert!(seen.len() < n, "n = {n}: {node} sees everyone");
                    assert!(majorities.insert(seen.clone()), "n = {n}: {seen:?} twice");
                }
            }
        }
    }

    #[test]
    fn majorities_ring_on_five_nodes_is_each_node_and_its_two_neighbours() {
        let cuts = Shape::MajoritiesRing { seed: None }.cuts(&names(5)).unwrap();
        assert_eq!(cuts.sees("n1"), set(&["n5", "n1", "n2"]));
        assert_eq!(cuts.sees("n3"), set(&["n2", "n3", "n4"]));
        let err = Shape::MajoritiesRing { seed: None }.cuts(&names(3)).unwrap_err();
        assert!(err.to_string().contains("at least 4 nodes"), "{err}");
        assert!(err.to_string().contains("bridge") || err.to_string().contains("symmetric"));
    }

    #[test]
    fn bridge_node_sees_everyone_and_the_sides_do_not_see_each_other() {
        for n in 3..=9 {
            let nodes = names(n);
            for seed in [None, Some(5)] {
                let cuts = Shape::Bridge { seed }.cuts(&nodes).unwrap();
                assert!(cuts.is_symmetric());
                let bridges: Vec<&String> = nodes.iter().filter(|x| cuts.sees(x).len() == n).collect();
                assert_eq!(bridges.len(), 1, "n = {n}: exactly one node sees all");
                let bridge = bridges[0].as_str();
                let sides: BTreeSet<BTreeSet<&str>> = nodes
                    .iter()
                    .filter(|x| x.as_str() != bridge)
                    .map(|x| cuts.sees(x))
                    .collect();
                assert_eq!(sides.len(), 2, "n = {n}: two sides");
                for side in &sides {
                    assert!(side.contains(bridge));
                }
                let [a, b]: [&BTreeSet<&str>; 2] = sides.iter().collect::<Vec<_>>().try_into().unwrap();
                assert_eq!(a.intersection(b).copied().collect::<Vec<_>>(), vec![bridge]);
            }
        }
        assert!(Shape::Bridge { seed: None }.cuts(&names(2)).is_err());
    }

    #[test]
    fn one_way_cuts_only_one_direction() {
        let cuts = Shape::OneWay {
            from: vec!["n1".into()],
            to: vec!["n2".into(), "n3".into()],
        }
        .cuts(&names(3))
        .unwrap();
        assert!(!cuts.is_symmetric());
        assert!(cuts.is_cut("n1", "n2") && !cuts.is_cut("n2", "n1"));
        assert_eq!(cuts.dropped_at("n2"), vec!["n1"]);
        assert!(cuts.dropped_at("n1").is_empty());
        assert!(cuts.connected("n2", "n3"));
    }

    #[test]
    fn groups_leave_unlisted_nodes_connected() {
        let cuts = Shape::Groups {
            groups: vec![vec!["n1".into()], vec!["n2".into(), "n3".into()]],
        }
        .cuts(&names(4))
        .unwrap();
        assert_eq!(cuts.sees("n4").len(), 4);
        assert_eq!(cuts.sees("n1"), set(&["n1", "n4"]));
        assert_eq!(cuts.sees("n2"), set(&["n2", "n3", "n4"]));
    }

    #[test]
    fn bad_shapes_say_what_is_wrong() {
        let nodes = names(3);
        let err = Shape::Isolate { node: "n9".into() }
            .cuts(&nodes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"n9\"") && err.contains("n1, n2, n3"), "{err}");
        let err = Shape::Groups {
            groups: vec![vec!["n1".into()], vec!["n1".into()]],
        }
        .cuts(&nodes)
        .unwrap_err()
        .to_string();
        assert!(err.contains("n1 is in more than one group"), "{err}");
        let err = Shape::OneWay {
            from: vec!["n1".into()],
            to: vec!["n1".into()],
        }
        .cuts(&nodes)
        .unwrap_err()
        .to_string();
        assert!(err.contains("both"), "{err}");
        assert!(Shape::Halves.cuts(&names(1)).is_err());
    }

    #[test]
    fn shapes_round_trip_through_json() {
        let shapes = [
            Shape::Isolate { node: "n2".into() },
            Shape::RandomHalves { seed: 9 },
            Shape::MajoritiesRing { seed: None },
            Shape::Halves,
        ];
        for shape in shapes {
            let json = serde_json::to_string(&shape).unwrap();
            assert_eq!(serde_json::from_str::<Shape>(&json).unwrap(), shape, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&Shape::RandomHalves { seed: 9 }).unwrap(),
            r#"{"shape":"random-halves","seed":9}"#
        );
    }
}
