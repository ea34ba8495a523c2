//! What the reads say about each key's history, before any graph: who appended each element,
//! each key's version order, each transaction's external reads, and the anomalies visible without
//! a cycle.
//!
//! Lists make versions traceable (Elle, §4): a read of `[1, 2, 3]` shows the versions `[]`,
//! `[1]`, `[1, 2]` and `[1, 2, 3]` in that order, and since every element is appended once, each
//! element names the transaction that installed its version. All committed reads of a key must
//! therefore be prefixes of the longest one ("prefix consistency"); that longest read is the
//! key's version order. Two reads neither of which is a prefix of the other cannot both be
//! versions of one list: an incompatible order.
//!
//! A transaction's *external* read of a key is what it saw of other transactions' work: its first
//! read of the key, without its own appends at the end. Its later reads must repeat that view
//! (plus its own appends): fewer elements or a different order are internal inconsistency, more
//! elements from others are a non-repeatable read.

use std::collections::HashMap;

use super::Findings;
use super::anomaly::AnomalyClass;
use super::explain::{label, list_of};
use super::txns::{Elem, KeyId, Mop, TxnId, Txns};
use crate::fxhash::FxBuildHasher;
use crate::history::Outcome;

/// Who appended an element to a key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Writer {
    pub txn: TxnId,
    /// The transaction appended to the same key again afterwards: a version ending here was
    /// never meant to be seen by others.
    pub intermediate: bool,
}

/// A transaction's external read of a key.
#[derive(Debug, Clone)]
pub(crate) struct ExternalRead {
    pub txn: TxnId,
    pub key: KeyId,
    /// The micro-operation it comes from.
    pub mop: u32,
    /// How many elements of that read are external (the rest are the transaction's own).
    pub len: u32,
    /// Whether those elements are a prefix of the key's version order.
    pub in_order: bool,
}

/// A key appended to twice with the same element: the checker cannot tell which append a read saw.
#[derive(Debug, Clone)]
pub(crate) struct DuplicateAppend {
    pub key: KeyId,
    pub elem: Elem,
    pub first: TxnId,
    pub second: TxnId,
}

/// The result of reading the reads.
#[derive(Debug, Default)]
pub(crate) struct Inference {
    /// Per key, the version order: the longest committed read.
    pub orders: Vec<Vec<Elem>>,
    pub writers: HashMap<(KeyId, Elem), Writer, FxBuildHasher>,
    pub external_reads: Vec<ExternalRead>,
    pub duplicate_appends: Vec<DuplicateAppend>,
}

impl Inference {
    /// The writer of an element, if some transaction appended it.
    pub fn writer(&self, key: KeyId, elem: Elem) -> Option<Writer> {
        self.writers.get(&(key, elem)).copied()
    }

    /// The list a micro-operation read (empty if it is not a read with a known result).
    pub fn read_list(txns: &Txns, txn: TxnId, mop: u32) -> &[Elem] {
        match txns.txns[txn as usize].mops.get(mop as usize) {
            Some(Mop::Read { list: Some(list), .. }) => list,
            _ => &[],
        }
    }
}

/// A committed read usable for the version order.
struct Candidate {
    txn: TxnId,
    mop: u32,
}

/// Reads the reads; non-cycle anomalies go to `findings`.
pub(crate) fn infer(txns: &Txns, findings: &mut Findings) -> Inference {
    let mut inference = Inference {
        orders: vec![Vec::new(); txns.keys.len()],
        ..Inference::default()
    };
    record_writers(txns, &mut inference);
    let mut candidates: Vec<Vec<Candidate>> = (0..txns.keys.len()).map(|_| Vec::new()).collect();
    for (t, txn) in txns.txns.iter().enumerate() {
        if txn.outcome == Outcome::Ok {
            read_one_transaction(txns, t as TxnId, &mut inference, &mut candidates, findings);
        }
    }
    // The version order of each key, and the reads that disagree with it.
    for (key, reads) in candidates.iter().enumerate() {
        let Some(longest) = reads.iter().max_by_key(|c| {
            (
                Inference::read_list(txns, c.txn, c.mop).len(),
                std::cmp::Reverse(c.txn),
            )
        }) else {
            continue;
        };
        let order = Inference::read_list(txns, longest.txn, longest.mop);
        for c in reads {
            let list = Inference::read_list(txns, c.txn, c.mop);
            if !order.starts_with(list) {
                findings.add(AnomalyClass::IncompatibleOrder, || {
                    let at = list.iter().zip(order).take_while(|(a, b)| a == b).count();
                    (
                        vec![c.txn, longest.txn],
                        format!(
                            "{} read {} = {} and {} read it as {}: they differ at position {}, so they \
                             cannot both be versions of one list",
                            label(txns, c.txn),
                            txns.key(key as KeyId),
                            txns.show_list(list),
                            label(txns, longest.txn),
                            txns.show_list(order),
                            at + 1
                        ),
                    )
                });
            }
        }
        inference.orders[key] = order.to_vec();
    }
    for read in &mut inference.external_reads {
        let list = Inference::read_list(txns, read.txn, read.mop);
        let ext = &list[..read.len as usize];
        read.in_order = inference.orders[read.key as usize].starts_with(ext);
    }
    aborted_and_garbage_reads(txns, &inference, findings);
    intermediate_reads(txns, &inference, findings);
    inference
}

/// Who appended what; a second append of the same element to a key is recorded, not trusted.
fn record_writers(txns: &Txns, inference: &mut Inference) {
    for (t, txn) in txns.txns.iter().enumerate() {
        for (i, mop) in txn.mops.iter().enumerate() {
            let Mop::Append { key, elem } = *mop else { continue };
            let intermediate = txn.mops[i + 1..]
                .iter()
                .any(|m| matches!(m, Mop::Append { key: k, .. } if *k == key));
            let writer = Writer {
                txn: t as TxnId,
                intermediate,
            };
            if let Some(first) = inference.writers.insert((key, elem), writer) {
                inference.writers.insert((key, elem), first);
                inference.duplicate_appends.push(DuplicateAppend {
                    key,
                    elem,
                    first: first.txn,
                    second: t as TxnId,
                });
            }
        }
    }
}

/// A transaction's first read of a key: the micro-operation, and how many elements are external.
type FirstRead = (u32, usize);

/// One committed transaction's reads, in order: duplicates, internal consistency, its external
/// reads, and the reads that may vouch for version orders.
fn read_one_transaction(
    txns: &Txns,
    t: TxnId,
    inference: &mut Inference,
    candidates: &mut [Vec<Candidate>],
    findings: &mut Findings,
) {
    let txn = &txns.txns[t as usize];
    // Per key this transaction touched: its own appends so far, and its first read of the key.
    let mut seen: Vec<(KeyId, Vec<Elem>, Option<FirstRead>)> = Vec::new();
    for (i, mop) in txn.mops.iter().enumerate() {
        let (key, list) = match mop {
            Mop::Append { key, elem } => {
                match seen.iter_mut().find(|s| s.0 == *key) {
                    Some(s) => s.1.push(*elem),
                    None => seen.push((*key, vec![*elem], None)),
                }
                continue;
            }
            Mop::Read {
                key,
                list: Some(list),
            } => (*key, list),
            Mop::Read { list: None, .. } => continue,
        };
        if let Some(elem) = first_duplicate(list) {
            findings.add(AnomalyClass::DuplicateElements, || {
                (
                    vec![t],
                    format!(
                        "{} read {} = {}, which holds {} more than once",
                        label(txns, t),
                        txns.key(key),
                        txns.show_list(list),
                        txns.show(elem)
                    ),
                )
            });
            continue;
        }
        let state = match seen.iter().position(|s| s.0 == key) {
            Some(p) => p,
            None => {
                seen.push((key, Vec::new(), None));
                seen.len() - 1
            }
        };
        let own = &seen[state].1;
        if !list.ends_with(own) {
            findings.add(AnomalyClass::Internal, || {
                (
                    vec![t],
                    format!(
                        "{} appended {} to {} and then read it as {}, which does not end with its own \
                         appends",
                        label(txns, t),
                        list_of(txns, own),
                        txns.key(key),
                        txns.show_list(list)
                    ),
                )
            });
            continue;
        }
        let ext = &list[..list.len() - own.len()];
        if let Some(&future) = ext
            .iter()
            .find(|e| inference.writer(key, **e).is_some_and(|w| w.txn == t))
        {
            findings.add(AnomalyClass::Internal, || {
                (
                    vec![t],
                    format!(
                        "{} read {} = {}, which holds {}, an element the transaction itself appends \
                         only later",
                        label(txns, t),
                        txns.key(key),
                        txns.show_list(list),
                        txns.show(future)
                    ),
                )
            });
            continue;
        }
        match seen[state].2 {
            Some((first, first_len)) => {
                let before = &Inference::read_list(txns, t, first)[..first_len];
                if !ext.starts_with(before) {
                    findings.add(AnomalyClass::Internal, || {
                        (
                            vec![t],
                            format!(
                                "{} read {} as {} and later, in the same transaction, as {}: the later \
                                 read lost or reordered elements",
                                label(txns, t),
                                txns.key(key),
                                txns.show_list(before),
                                txns.show_list(list)
                            ),
                        )
                    });
                    continue;
                }
                if ext.len() > before.len() {
                    findings.add(AnomalyClass::NonRepeatableRead, || {
                        (
                            vec![t],
                            format!(
                                "{} read {} as {} and later, in the same transaction, as {}: other \
                                 transactions' elements appeared in between",
                                label(txns, t),
                                txns.key(key),
                                txns.show_list(before),
                                txns.show_list(list)
                            ),
                        )
                    });
                }
            }
            None => {
                seen[state].2 = Some((i as u32, ext.len()));
                inference.external_reads.push(ExternalRead {
                    txn: t,
                    key,
                    mop: i as u32,
                    len: ext.len() as u32,
                    in_order: false,
                });
            }
        }
        // A read that shows the transaction's own appends where they belong is a version too.
        candidates[key as usize].push(Candidate {
            txn: t,
            mop: i as u32,
        });
    }
}

fn first_duplicate(list: &[Elem]) -> Option<Elem> {
    if list.len() < 2 {
        return None;
    }
    let mut sorted = list.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// Elements read that a failed transaction appended (G1a), or that nobody appended.
fn aborted_and_garbage_reads(txns: &Txns, inference: &Inference, findings: &mut Findings) {
    for (t, txn) in txns.txns.iter().enumerate() {
        if txn.outcome != Outcome::Ok {
            continue;
        }
        for mop in &txn.mops {
            let Mop::Read {
                key,
                list: Some(list),
            } = mop
            else {
                continue;
            };
            for &elem in list {
                match inference.writer(*key, elem) {
                    None => findings.add(AnomalyClass::GarbageRead, || {
                        (
                            vec![t as TxnId],
                            format!(
                                "{} read {} = {}, which holds {}, an element no operation appended",
                                label(txns, t as TxnId),
                                txns.key(*key),
                                txns.show_list(list),
                                txns.show(elem)
                            ),
                        )
                    }),
                    Some(w) if txns.txns[w.txn as usize].outcome == Outcome::Fail => {
                        findings.add(AnomalyClass::G1a, || {
                            (
                                vec![w.txn, t as TxnId],
                                format!(
                                    "{} read {} = {}, which holds {}, appended by {}, which failed \
                                     (aborted read)",
                                    label(txns, t as TxnId),
                                    txns.key(*key),
                                    txns.show_list(list),
                                    txns.show(elem),
                                    label(txns, w.txn)
                                ),
                            )
                        })
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// External reads that end at an element its writer appended to the key again later (G1b).
fn intermediate_reads(txns: &Txns, inference: &Inference, findings: &mut Findings) {
    for read in &inference.external_reads {
        let list = Inference::read_list(txns, read.txn, read.mop);
        let Some(&last) = list[..read.len as usize].last() else {
            continue;
        };
        let Some(w) = inference.writer(read.key, last) else {
            continue;
        };
        if w.txn == read.txn || !w.intermediate || txns.txns[w.txn as usize].outcome == Outcome::Fail {
            continue;
        }
        findings.add(AnomalyClass::G1b, || {
            (
                vec![w.txn, read.txn],
                format!(
                    "{} read {} = {}, ending at {}, which {} appended before appending to {} again: it saw \
                     that transaction's intermediate state (intermediate read)",
                    label(txns, read.txn),
                    txns.key(read.key),
                    txns.show_list(list),
                    txns.show(last),
                    label(txns, w.txn),
                    txns.key(read.key)
                ),
            )
        });
    }
}
