//! Finding and classifying dependency cycles.
//!
//! Whether a model's forbidden cycles exist is decided exactly, in time linear in the graph, by
//! strongly connected components (Tarjan, "Depth-first search and linear graph algorithms", SIAM
//! J. Comput. 1972): a cycle using only edges of some kinds, with at least one edge of kind X,
//! exists exactly when an X edge joins two nodes of one component of the graph restricted to
//! those kinds. Snapshot isolation's cycles with no two adjacent anti-dependencies are found the
//! same way in a product graph whose nodes remember whether they were entered by an rw edge (an
//! rw edge may only leave a node that was not): its cycles are exactly the closed walks of
//! (ww ∪ wr) ; rw? (Cerone & Gotsman, PODC 2016).
//!
//! Within a component, a breadth-first search from the far end of a witness edge back to its
//! start gives the shortest cycle through that edge; a few witness edges are tried
//! ([`TRIES`]) and the shortest cycle found is reported, one per class and component, so the
//! work per component stays proportional to its size.

use std::collections::{HashMap, VecDeque};

use super::anomaly::{AnomalyClass, CycleClass, Order};
use super::graph::{ALL, DEPENDENCIES, Edge, Graph, PROCESS, REALTIME, RW, WR, WW};
use super::txns::TxnId;
use crate::fxhash::FxBuildHasher;

/// Witness edges (or start nodes) tried per class and component in search of a shorter cycle.
pub(crate) const TRIES: usize = 8;

/// A cycle: indices into [`Graph::edges`], each edge's `to` the next one's `from`, the last
/// one's `to` the first one's `from`.
pub(crate) type Cycle = Vec<u32>;

/// Tarjan's algorithm, iterative, over any graph given by a successor function; its arrays are
/// reused from one call to the next (entries are valid only when their stamp is current).
pub(crate) struct Tarjan {
    index: Vec<u32>,
    low: Vec<u32>,
    stamp: Vec<u32>,
    on_stack: Vec<bool>,
    epoch: u32,
}

impl Tarjan {
    /// For graphs of up to `nodes` nodes.
    pub fn new(nodes: usize) -> Tarjan {
        Tarjan {
            index: vec![0; nodes],
            low: vec![0; nodes],
            stamp: vec![0; nodes],
            on_stack: vec![false; nodes],
            epoch: 0,
        }
    }

    /// The components of more than one node reachable from `roots`. `next(node, cursor)` yields
    /// the node's successors one by one (the cursor starts at `first(node)`).
    pub fn components(
        &mut self,
        roots: &[u32],
        first: impl Fn(u32) -> u32,
        mut next: impl FnMut(u32, &mut u32) -> Option<u32>,
    ) -> Vec<Vec<u32>> {
        self.epoch += 1;
        let epoch = self.epoch;
        let mut counter = 0u32;
        let mut stack: Vec<u32> = Vec::new();
        let mut frames: Vec<(u32, u32)> = Vec::new();
        let mut found = Vec::new();
        for &root in roots {
            if self.stamp[root as usize] == epoch {
                continue;
            }
            self.visit(root, epoch, &mut counter, &mut stack);
            frames.push((root, first(root)));
            while let Some(frame) = frames.last_mut() {
                let node = frame.0;
                match next(node, &mut frame.1) {
                    Some(succ) if self.stamp[succ as usize] != epoch => {
                        self.visit(succ, epoch, &mut counter, &mut stack);
                        frames.push((succ, first(succ)));
                    }
                    Some(succ) => {
                        if self.on_stack[succ as usize] {
                            let s = self.index[succ as usize];
                            let l = &mut self.low[node as usize];
                            *l = (*l).min(s);
                        }
                    }
                    None => {
                        frames.pop();
                        if let Some(parent) = frames.last() {
                            let l = self.low[node as usize];
                            let p = &mut self.low[parent.0 as usize];
                            *p = (*p).min(l);
                        }
                        if self.low[node as usize] == self.index[node as usize] {
                            let mut component = Vec::new();
                            while let Some(member) = stack.pop() {
                                self.on_stack[member as usize] = false;
                                component.push(member);
                                if member == node {
                                    break;
                                }
                            }
                            if component.len() > 1 {
                                found.push(component);
                            }
                        }
                    }
                }
            }
        }
        found
    }

    fn visit(&mut self, node: u32, epoch: u32, counter: &mut u32, stack: &mut Vec<u32>) {
        let n = node as usize;
        self.stamp[n] = epoch;
        self.index[n] = *counter;
        self.low[n] = *counter;
        *counter += 1;
        self.on_stack[n] = true;
        stack.push(node);
    }
}

/// Membership of nodes in the component being searched.
struct Members {
    of: HashMap<TxnId, (), FxBuildHasher>,
}

impl Members {
    fn new(nodes: &[TxnId]) -> Members {
        Members {
            of: nodes.iter().map(|n| (*n, ())).collect(),
        }
    }

    #[inline]
    fn has(&self, node: TxnId) -> bool {
        self.of.contains_key(&node)
    }
}

/// The next edge out of `node` (from `*cursor`, an index into the graph's edges) whose kind is
/// in `mask` and whose target is in the component; returns its index.
#[inline]
fn next_edge(graph: &Graph, node: TxnId, cursor: &mut u32, mask: u8, members: &Members) -> Option<u32> {
    let end = graph.start[node as usize + 1];
    while *cursor < end {
        let i = *cursor;
        *cursor += 1;
        let e = &graph.edges[i as usize];
        if e.kind & mask != 0 && members.has(e.to) {
            return Some(i);
        }
    }
    None
}

/// The shortest path of edges in `mask`, within the component, from `from` to `to` (breadth
/// first); an empty path when `from == to`.
fn shortest_path(graph: &Graph, from: TxnId, to: TxnId, mask: u8, members: &Members) -> Option<Cycle> {
    if from == to {
        return Some(Vec::new());
    }
    let mut parent: HashMap<TxnId, u32, FxBuildHasher> = HashMap::default();
    let mut queue = VecDeque::from([from]);
    while let Some(node) = queue.pop_front() {
        let mut cursor = graph.start[node as usize];
        while let Some(i) = next_edge(graph, node, &mut cursor, mask, members) {
            let succ = graph.edges[i as usize].to;
            if succ == from || parent.contains_key(&succ) {
                continue;
            }
            parent.insert(succ, i);
            if succ == to {
                let mut path = vec![i];
                let mut at = graph.edges[i as usize].from;
                while at != from {
                    let edge = parent[&at];
                    path.push(edge);
                    at = graph.edges[edge as usize].from;
                }
                path.reverse();
                return Some(path);
            }
            queue.push_back(succ);
        }
    }
    None
}

/// The shortest cycle through edge `via` using edges in `mask` (the rest of the cycle), if any.
fn cycle_through(graph: &Graph, via: u32, mask: u8, members: &Members) -> Option<Cycle> {
    let e = graph.edges[via as usize];
    let mut cycle = vec![via];
    cycle.extend(shortest_path(graph, e.to, e.from, mask, members)?);
    Some(cycle)
}

/// The shortest of the cycles through up to [`TRIES`] of these witness edges.
fn shortest_through(graph: &Graph, witnesses: &[u32], mask: u8, members: &Members) -> Option<Cycle> {
    let mut best: Option<Cycle> = None;
    for &via in witnesses.iter().take(TRIES) {
        if let Some(cycle) = cycle_through(graph, via, mask, members) {
            if best.as_ref().is_none_or(|b| cycle.len() < b.len()) {
                let shortest = cycle.len() == 2;
                best = Some(cycle);
                if shortest {
                    break;
                }
            }
        }
    }
    best
}

/// The class of a cycle, from its edges.
pub(crate) fn classify(graph: &Graph, cycle: &Cycle) -> AnomalyClass {
    let kinds: Vec<u8> = cycle.iter().map(|i| graph.edges[*i as usize].kind).collect();
    let rw = kinds.iter().filter(|k| **k == RW).count();
    let order = if kinds.contains(&REALTIME) {
        Order::Realtime
    } else if kinds.contains(&PROCESS) {
        Order::Process
    } else {
        Order::Data
    };
    let adjacent_rw = (0..kinds.len()).any(|i| kinds[i] == RW && kinds[(i + 1) % kinds.len()] == RW);
    let class = match rw {
        0 if kinds.iter().all(|k| *k != WR) => CycleClass::G0,
        0 => CycleClass::G1c,
        1 => CycleClass::GSingle,
        _ if adjacent_rw => CycleClass::G2Item,
        _ => CycleClass::GNonadjacent,
    };
    AnomalyClass::Cycle(class, order)
}

/// Edges of a kind in `kinds` with both ends in the component.
fn witnesses(graph: &Graph, nodes: &[TxnId], kinds: u8, members: &Members) -> Vec<u32> {
    let mut found = Vec::new();
    for &n in nodes {
        let mut cursor = graph.start[n as usize];
        while let Some(i) = next_edge(graph, n, &mut cursor, kinds, members) {
            found.push(i);
        }
    }
    found
}

/// Finds the cycles of each class in the graph: one (the shortest found) per class and
/// strongly connected component. `real_time`: search process and real-time edges too.
pub(crate) fn find_cycles(graph: &Graph, real_time: bool) -> Vec<(AnomalyClass, Cycle)> {
    let nodes = graph.nodes();
    let mut tarjan = Tarjan::new(nodes);
    let mut found = Vec::new();
    let mask = if real_time { ALL } else { DEPENDENCIES };
    let all: Vec<u32> = (0..nodes as u32).collect();
    // The product graph's arrays, made when a component first needs them.
    let mut product_tarjan: Option<Tarjan> = None;
    let top = {
        let first = |n: u32| graph.start[n as usize];
        let next = |n: u32, cursor: &mut u32| {
            let end = graph.start[n as usize + 1];
            while *cursor < end {
                let e = &graph.edges[*cursor as usize];
                *cursor += 1;
                if e.kind & mask != 0 {
                    return Some(e.to);
                }
            }
            None
        };
        tarjan.components(&all, first, next)
    };
    for component in top {
        let members = Members::new(&component);
        let dependency_components = if real_time {
            restricted_components(graph, &mut tarjan, &component, DEPENDENCIES, &members)
        } else {
            vec![component.clone()]
        };
        for d in dependency_components {
            let d_members = Members::new(&d);
            found.extend(dependency_cycles(
                graph,
                &mut tarjan,
                &mut product_tarjan,
                &d,
                &d_members,
            ));
        }
        if real_time {
            let ordered = witnesses(graph, &component, PROCESS | REALTIME, &members);
            let mut best: HashMap<AnomalyClass, Cycle> = HashMap::new();
            for &via in ordered.iter().take(TRIES) {
                if let Some(cycle) = cycle_through(graph, via, ALL, &members) {
                    keep_shorter(&mut best, classify(graph, &cycle), cycle);
                }
            }
            found.extend(best);
        }
    }
    found.sort_by(|a, b| (a.0, a.1.len(), &a.1).cmp(&(b.0, b.1.len(), &b.1)));
    found
}

fn keep_shorter(best: &mut HashMap<AnomalyClass, Cycle>, class: AnomalyClass, cycle: Cycle) {
    match best.get(&class) {
        Some(b) if b.len() <= cycle.len() => {}
        _ => {
            best.insert(class, cycle);
        }
    }
}

/// The components of the subgraph of `nodes` with edges in `mask`.
fn restricted_components(
    graph: &Graph,
    tarjan: &mut Tarjan,
    nodes: &[TxnId],
    mask: u8,
    members: &Members,
) -> Vec<Vec<TxnId>> {
    let first = |n: u32| graph.start[n as usize];
    let next = |n: u32, cursor: &mut u32| {
        next_edge(graph, n, cursor, mask, members).map(|i| graph.edges[i as usize].to)
    };
    tarjan.components(nodes, first, next)
}

/// The dependency cycles of one component of the ww/wr/rw graph, by class.
fn dependency_cycles(
    graph: &Graph,
    tarjan: &mut Tarjan,
    product_tarjan: &mut Option<Tarjan>,
    component: &[TxnId],
    members: &Members,
) -> Vec<(AnomalyClass, Cycle)> {
    let mut best: HashMap<AnomalyClass, Cycle> = HashMap::new();
    // G0: cycles of ww edges, tried from a few nodes of each ww component.
    for ww in restricted_components(graph, tarjan, component, WW, members) {
        let ww_members = Members::new(&ww);
        let starts = witnesses(graph, &ww, WW, &ww_members);
        if let Some(cycle) = shortest_through(graph, &starts, WW, &ww_members) {
            keep_shorter(&mut best, classify(graph, &cycle), cycle);
        }
    }
    // G1c: a wr edge inside a component of the ww/wr graph.
    for wwr in restricted_components(graph, tarjan, component, WW | WR, members) {
        let wwr_members = Members::new(&wwr);
        let via = witnesses(graph, &wwr, WR, &wwr_members);
        if let Some(cycle) = shortest_through(graph, &via, WW | WR, &wwr_members) {
            keep_shorter(&mut best, classify(graph, &cycle), cycle);
        }
    }
    let rw = witnesses(graph, component, RW, members);
    if rw.is_empty() {
        return best.into_iter().collect();
    }
    // G-single: an rw edge closed by ww/wr edges alone.
    if let Some(cycle) = shortest_through(graph, &rw, WW | WR, members) {
        keep_shorter(&mut best, classify(graph, &cycle), cycle);
    }
    // G-nonadjacent: a cycle of the product graph through an rw edge.
    let product_tarjan = product_tarjan.get_or_insert_with(|| Tarjan::new(graph.nodes() * 2));
    if let Some(cycle) = nonadjacent_cycle(graph, product_tarjan, component, members) {
        keep_shorter(&mut best, classify(graph, &cycle), cycle);
    }
    // G2-item: whatever else the rw edges close.
    for &via in rw.iter().take(TRIES) {
        if let Some(cycle) = cycle_through(graph, via, DEPENDENCIES, members) {
            keep_shorter(&mut best, classify(graph, &cycle), cycle);
        }
    }
    best.into_iter().collect()
}

/// A closed walk of ww/wr/rw edges in which no two rw edges are adjacent and at least one is
/// present, if the component has one: a cycle of the product graph whose node `2n + 1` is `n`
/// entered by an rw edge (only nodes `2n` may leave by one).
fn nonadjacent_cycle(
    graph: &Graph,
    tarjan: &mut Tarjan,
    component: &[TxnId],
    members: &Members,
) -> Option<Cycle> {
    let roots: Vec<u32> = component.iter().flat_map(|n| [2 * n, 2 * n + 1]).collect();
    let first = |p: u32| graph.start[(p / 2) as usize];
    let step = |p: u32, cursor: &mut u32| -> Option<(u32, u32)> {
        let n = p / 2;
        while let Some(i) = next_edge(graph, n, cursor, DEPENDENCIES, members) {
            let e = &graph.edges[i as usize];
            if e.kind == RW {
                if p % 2 == 0 {
                    return Some((2 * e.to + 1, i));
                }
            } else {
                return Some((2 * e.to, i));
            }
        }
        None
    };
    let components = tarjan.components(&roots, first, |p, c| step(p, c).map(|(s, _)| s));
    for product in components {
        let inside: HashMap<u32, (), FxBuildHasher> = product.iter().map(|p| (*p, ())).collect();
        // An rw edge from (u, 0) to (w, 1) inside the component closes a walk back to (u, 0).
        for &p in product.iter().filter(|p| *p % 2 == 0) {
            let mut cursor = first(p);
            while let Some((succ, i)) = step(p, &mut cursor) {
                if graph.edges[i as usize].kind == RW && inside.contains_key(&succ) {
                    let mut walk = vec![i];
                    walk.extend(product_path(graph, succ, p, &inside, &step)?);
                    return Some(walk);
                }
            }
        }
    }
    None
}

/// The shortest path between product nodes within a product component, as graph edge indices.
fn product_path(
    graph: &Graph,
    from: u32,
    to: u32,
    inside: &HashMap<u32, (), FxBuildHasher>,
    step: &impl Fn(u32, &mut u32) -> Option<(u32, u32)>,
) -> Option<Cycle> {
    if from == to {
        return Some(Vec::new());
    }
    let mut parent: HashMap<u32, (u32, u32), FxBuildHasher> = HashMap::default();
    let mut queue = VecDeque::from([from]);
    while let Some(p) = queue.pop_front() {
        let mut cursor = graph.start[(p / 2) as usize];
        while let Some((succ, i)) = step(p, &mut cursor) {
            if succ == from || !inside.contains_key(&succ) || parent.contains_key(&succ) {
                continue;
            }
            parent.insert(succ, (p, i));
            if succ == to {
                let mut path = Vec::new();
                let mut at = succ;
                while at != from {
                    let (previous, edge) = parent[&at];
                    path.push(edge);
                    at = previous;
                }
                path.reverse();
                return Some(path);
            }
            queue.push_back(succ);
        }
    }
    None
}

/// The edges of a cycle.
pub(crate) fn edges<'g>(graph: &'g Graph, cycle: &Cycle) -> Vec<&'g Edge> {
    cycle.iter().map(|i| &graph.edges[*i as usize]).collect()
}
