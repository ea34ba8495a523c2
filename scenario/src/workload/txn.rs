//! The list-append transactions of an adapter workload's `txn` operations, drawn like Jepsen's
//! list-append generator: a few micro-operations over a small pool of active keys, each a read
//! (`["r", KEY, null]`, the adapter fills in the list) or an append of the key's next element.
//!
//! The pool is shared by every client (one [`TxnKeys`] per workload), so that clients contend on
//! the same keys — contention is what makes isolation anomalies observable. Elements count up per
//! key (1, 2, 3, …), which keeps them unique per key as the list-append checker requires; a key
//! that has had `max_writes_per_key` appends is retired and a fresh key takes its slot, so lists
//! stay short and the checker's work stays linear in the history.

use std::sync::Mutex;

use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;
use serde_json::Value;

use crate::model::TxnSpec;

/// The workload's active keys and how many elements each has been given.
#[derive(Debug)]
pub(crate) struct TxnKeys {
    spec: TxnSpec,
    state: Mutex<Pool>,
}

#[derive(Debug)]
struct Pool {
    /// Active key ids with the last element appended to each (0: none yet).
    active: Vec<(u64, u64)>,
    /// The id the next fresh key gets.
    next_id: u64,
}

impl TxnKeys {
    /// `keys` active keys (`k0` …), drawn as `spec` says.
    pub(crate) fn new(spec: TxnSpec, keys: usize) -> TxnKeys {
        let keys = keys.max(1) as u64;
        TxnKeys {
            spec,
            state: Mutex::new(Pool {
                active: (0..keys).map(|id| (id, 0)).collect(),
                next_id: keys,
            }),
        }
    }

    /// The micro-operations of one transaction, e.g. `[["append","k3",7],["r","k1",null]]`.
    pub(crate) fn draw(&self, rng: &mut Xoshiro256PlusPlus) -> Value {
        let spec = &self.spec;
        let n = rng.random_range(spec.min_ops..=spec.max_ops.max(spec.min_ops));
        // A poisoned lock only means another client panicked mid-draw; the pool is still sound.
        let mut pool = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mops = (0..n)
            .map(|_| {
                let slot = rng.random_range(0..pool.active.len());
                let (id, last) = pool.active[slot];
                let key = Value::from(format!("k{id}"));
                if rng.random_range(0..100) < spec.read_percent {
                    return Value::Array(vec!["r".into(), key, Value::Null]);
                }
                let element = last + 1;
                pool.active[slot] = if element >= spec.max_writes_per_key {
                    let fresh = pool.next_id;
                    pool.next_id += 1;
                    (fresh, 0)
                } else {
                    (id, element)
                };
                Value::Array(vec!["append".into(), key, Value::from(element)])
            })
            .collect();
        Value::Array(mops)
    }

    /// A read-only transaction of every active key, for the final reads.
    pub(crate) fn read_all(&self) -> Value {
        let pool = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Value::Array(
            pool.active
                .iter()
                .map(|(id, _)| Value::Array(vec!["r".into(), format!("k{id}").into(), Value::Null]))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn elements_are_unique_per_key_keys_rotate_and_sizes_stay_in_bounds() {
        let spec = TxnSpec {
            min_ops: 2,
            max_ops: 3,
            read_percent: 30,
            max_writes_per_key: 5,
        };
        let keys = TxnKeys::new(spec, 2);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let mut seen: HashMap<String, HashSet<u64>> = HashMap::new();
        let (mut reads, mut appends) = (0, 0);
        for _ in 0..200 {
            let txn = keys.draw(&mut rng);
            let mops = chaos_check::micro_ops(&txn).unwrap();
            assert!((2..=3).contains(&mops.len()), "{txn}");
            for mop in mops {
                match mop {
                    chaos_check::MicroOp::Append { key, element } => {
                        appends += 1;
                        let e = element.as_u64().unwrap();
                        assert!((1..=5).contains(&e), "{txn}");
                        assert!(
                            seen.entry(key.to_string()).or_default().insert(e),
                            "{key} got {e} twice"
                        );
                    }
                    chaos_check::MicroOp::Read { list, .. } => {
                        reads += 1;
                        assert!(list.is_none());
                    }
                }
            }
        }
        // ~70% appends over ~500 micro-ops at 5 per key: many keys retired.
        assert!(seen.len() > 20, "only {} keys used", seen.len());
        assert!(seen.values().all(|e| e.len() <= 5));
        assert!(reads > 100 && appends > 250, "{reads} reads, {appends} appends");
        let all = keys.read_all();
        assert_eq!(chaos_check::micro_ops(&all).unwrap().len(), 2);
    }
}
