//! The anomaly classes the list-append checker reports, and which consistency model forbids which.
//!
//! Cycle classes follow Adya's definitions (Adya, "Weak Consistency: A Generalized Theory and
//! Optimistic Implementations for Distributed Transactions", MIT PhD thesis, 1999, ch. 3–4; Adya,
//! Liskov & O'Neil, "Generalized Isolation Level Definitions", ICDE 2000), over the direct
//! serialization graph's write-write (ww), write-read (wr) and read-write (rw, anti-dependency)
//! edges:
//!
//! - G0, write cycle: ww edges only;
//! - G1c, circular information flow: ww and wr edges, at least one wr;
//! - G-single, read skew: exactly one rw edge;
//! - G2-item, anti-dependency cycle: two or more rw edges (on items, not predicates).
//!
//! Elle (Kingsbury & Alvaro, VLDB 2020) adds G-nonadjacent: a cycle with rw edges of which no two
//! are adjacent. Snapshot isolation forbids it (Cerone & Gotsman, "Analysing Snapshot Isolation",
//! PODC 2016: a history is SI exactly when (ww ∪ wr) ; rw? is acyclic), and write skew — two
//! adjacent rw edges — is the G2-item it allows. A cycle that needs a process (same client) or
//! real-time edge gets a `-process` or `-realtime` suffix; only strict serializability forbids
//! those. The non-cycle classes: G1a (aborted read), G1b (intermediate read), and from Elle,
//! garbage reads, duplicate elements, incompatible orders and internal inconsistency; plus
//! non-repeatable reads within one transaction, which read committed allows.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A consistency model a list-append history can be checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsistencyModel {
    /// Adya's PL-2: no G0, G1a, G1b, G1c.
    ReadCommitted,
    /// Adya's PL-SI, in Cerone & Gotsman's characterization: also no G-single, no
    /// G-nonadjacent, and a transaction's reads repeat.
    SnapshotIsolation,
    /// Adya's PL-3 (conflict serializability): no dependency cycle at all.
    Serializable,
    /// Adya's PL-SS: serializable, in an order that respects real time (and so each client's order).
    #[default]
    StrictSerializable,
}

impl ConsistencyModel {
    /// Every model, weakest first.
    pub const ALL: [ConsistencyModel; 4] = [
        ConsistencyModel::ReadCommitted,
        ConsistencyModel::SnapshotIsolation,
        ConsistencyModel::Serializable,
        ConsistencyModel::StrictSerializable,
    ];

    /// The model's name, as `--consistency-model` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsistencyModel::ReadCommitted => "read-committed",
            ConsistencyModel::SnapshotIsolation => "snapshot-isolation",
            ConsistencyModel::Serializable => "serializable",
            ConsistencyModel::StrictSerializable => "strict-serializable",
        }
    }

    /// Whether real-time and process order count (strict serializability only).
    pub(crate) fn uses_real_time(self) -> bool {
        self == ConsistencyModel::StrictSerializable
    }
}

impl fmt::Display for ConsistencyModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ConsistencyModel {
    type Err = String;

    fn from_str(name: &str) -> Result<ConsistencyModel, String> {
        ConsistencyModel::ALL
            .into_iter()
            .find(|m| m.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "unknown consistency model `{name}`; the models are: {}",
                    ConsistencyModel::ALL.map(ConsistencyModel::as_str).join(", ")
                )
            })
    }
}

/// What a dependency cycle is made of, by Adya's (and Elle's) classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum CycleClass {
    G0,
    G1c,
    GSingle,
    GNonadjacent,
    G2Item,
}

/// Which order edges besides ww, wr and rw a cycle needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Order {
    /// Dependencies alone.
    Data,
    /// Also a client's own order (and no real-time edge).
    Process,
    /// Also real-time order.
    Realtime,
}

/// An anomaly class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum AnomalyClass {
    /// A dependency cycle.
    Cycle(CycleClass, Order),
    /// A committed read saw an element a failed transaction appended.
    G1a,
    /// A committed read ended at an element its writer appended to the same key again later.
    G1b,
    /// A read saw an element no operation appended.
    GarbageRead,
    /// A read saw an element twice.
    DuplicateElements,
    /// Two reads of a key neither of which is a prefix of the other.
    IncompatibleOrder,
    /// A transaction's read contradicts its own earlier appends or reads.
    Internal,
    /// A transaction read a key twice and the second read has other transactions' elements.
    NonRepeatableRead,
}

impl AnomalyClass {
    /// Every class, most severe first within its kind (the order verdicts list them in).
    pub(crate) fn all() -> Vec<AnomalyClass> {
        let mut all = Vec::new();
        for order in [Order::Data, Order::Process, Order::Realtime] {
            for class in [
                CycleClass::G0,
                CycleClass::G1c,
                CycleClass::GSingle,
                CycleClass::GNonadjacent,
                CycleClass::G2Item,
            ] {
                all.push(AnomalyClass::Cycle(class, order));
            }
            if order == Order::Data {
                all.extend([
                    AnomalyClass::G1a,
                    AnomalyClass::G1b,
                    AnomalyClass::GarbageRead,
                    AnomalyClass::DuplicateElements,
                    AnomalyClass::IncompatibleOrder,
                    AnomalyClass::Internal,
                    AnomalyClass::NonRepeatableRead,
                ]);
            }
        }
        all
    }

    /// The class's name, as Elle spells it (`G-single-realtime`, `incompatible-order`, …).
    pub(crate) fn name(self) -> String {
        match self {
            AnomalyClass::Cycle(class, order) => {
                let base = match class {
                    CycleClass::G0 => "G0",
                    CycleClass::G1c => "G1c",
                    CycleClass::GSingle => "G-single",
                    CycleClass::GNonadjacent => "G-nonadjacent",
                    CycleClass::G2Item => "G2-item",
                };
                match order {
                    Order::Data => base.to_string(),
                    Order::Process => format!("{base}-process"),
                    Order::Realtime => format!("{base}-realtime"),
                }
            }
            AnomalyClass::G1a => "G1a".into(),
            AnomalyClass::G1b => "G1b".into(),
            AnomalyClass::GarbageRead => "garbage-read".into(),
            AnomalyClass::DuplicateElements => "duplicate-elements".into(),
            AnomalyClass::IncompatibleOrder => "incompatible-order".into(),
            AnomalyClass::Internal => "internal".into(),
            AnomalyClass::NonRepeatableRead => "non-repeatable-read".into(),
        }
    }

    /// A few words on what the class means.
    pub(crate) fn meaning(self) -> &'static str {
        match self {
            AnomalyClass::Cycle(CycleClass::G0, _) => "write cycle",
            AnomalyClass::Cycle(CycleClass::G1c, _) => "circular information flow",
            AnomalyClass::Cycle(CycleClass::GSingle, _) => "read skew: a cycle with one anti-dependency",
            AnomalyClass::Cycle(CycleClass::GNonadjacent, _) => {
                "a cycle whose anti-dependencies are never adjacent"
            }
            AnomalyClass::Cycle(CycleClass::G2Item, _) => {
                "anti-dependency cycle with adjacent anti-dependencies, as in write skew"
            }
            AnomalyClass::G1a => "aborted read",
            AnomalyClass::G1b => "intermediate read",
            AnomalyClass::GarbageRead => "a read of an element nobody appended",
            AnomalyClass::DuplicateElements => "an element read twice in one list",
            AnomalyClass::IncompatibleOrder => "two reads that cannot be versions of one list",
            AnomalyClass::Internal => "a transaction contradicting its own earlier operations",
            AnomalyClass::NonRepeatableRead => "a key read twice in one transaction with different results",
        }
    }

    /// Whether `model` forbids this class.
    pub(crate) fn forbidden_by(self, model: ConsistencyModel) -> bool {
        use ConsistencyModel::*;
        match self {
            AnomalyClass::Cycle(class, order) => {
                if order != Order::Data {
                    return model == StrictSerializable;
                }
                match class {
                    CycleClass::G0 | CycleClass::G1c => true,
                    CycleClass::GSingle | CycleClass::GNonadjacent => model != ReadCommitted,
                    CycleClass::G2Item => matches!(model, Serializable | StrictSerializable),
                }
            }
            AnomalyClass::NonRepeatableRead => model != ReadCommitted,
            AnomalyClass::G1a
            | AnomalyClass::G1b
            | AnomalyClass::GarbageRead
            | AnomalyClass::DuplicateElements
            | AnomalyClass::IncompatibleOrder
            | AnomalyClass::Internal => true,
        }
    }

    /// The classes `model` forbids, by name, in [`AnomalyClass::all`] order; the process and
    /// real-time variants are summed up as one entry each.
    pub(crate) fn forbidden_names(model: ConsistencyModel) -> Vec<String> {
        let mut names: Vec<String> = AnomalyClass::all()
            .into_iter()
            .filter(|c| c.forbidden_by(model))
            .filter(|c| !matches!(c, AnomalyClass::Cycle(_, Order::Process | Order::Realtime)))
            .map(AnomalyClass::name)
            .collect();
        if model.uses_real_time() {
            names.push("every cycle's -process and -realtime variant".to_string());
        }
        names
    }
}
