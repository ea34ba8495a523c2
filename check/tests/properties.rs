//! Property tests: histories generated from a sequential register model with random concurrent
//! timing are always accepted; the same histories with one injected stale or phantom read are
//! always rejected, and the violation reported always includes that read.

#[path = "common/model.rs"]
mod model;

use chaos_check::{Checker, History, Linearizability, OpKind, Outcome, Validity, Verdict};
use model::{Params, inject_violation, register_history};
use proptest::prelude::*;

fn params() -> impl Strategy<Value = Params> {
    (
        1usize..8,
        1usize..4,
        1usize..120,
        0.0..0.3f64,
        0.0..0.2f64,
        0u64..300,
        1u64..500,
        any::<bool>(),
    )
        .prop_map(
            |(clients, keys, ops, unknown, fail, max_gap_us, max_latency_us, unique_values)| Params {
                clients,
                keys,
                ops,
                unknown,
                fail,
                max_gap_us,
                max_latency_us,
                unique_values,
            },
        )
}

fn checker() -> Linearizability {
    Linearizability {
        threads: 1,
        ..Linearizability::default()
    }
}

/// The reported certificate of the first bad key: the core operations as recorded plus the context
/// ones as "unknown outcome", optionally with one core operation relaxed too.
fn certificate(h: &History, v: &Verdict, relaxed: Option<u64>) -> History {
    let first = &v.details["invalid"][0];
    let ids = |f: &str| -> Vec<u64> {
        first[f]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let (core, context) = (ids("ops"), ids("context_ops"));
    let mut c = History::new(h.header.clone());
    for op in h
        .ops
        .iter()
        .filter(|o| core.contains(&o.id) || context.contains(&o.id))
    {
        let relax = !core.contains(&op.id) || Some(op.id) == relaxed;
        match (relax, op.kind) {
            (false, _) => c.ops.push(op.clone()),
            (true, OpKind::Read) => {}
            (true, _) => c.ops.push(chaos_check::Op {
                outcome: Outcome::Unknown,
                ..op.clone()
            }),
        }
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn histories_from_the_model_are_accepted(seed in any::<u64>(), p in params()) {
        let h = register_history(seed, &p);
        let v = checker().check(&h);
        prop_assert_eq!(v.valid, Validity::Valid, "{}", v.explanation);
    }

    #[test]
    fn the_order_of_records_does_not_matter(seed in any::<u64>(), p in params()) {
        let mut h = register_history(seed, &p);
        let before = checker().check(&h);
        h.ops.reverse();
        prop_assert_eq!(checker().check(&h), before);
    }

    #[test]
    fn an_injected_stale_or_phantom_read_is_rejected(seed in any::<u64>(), p in params()) {
        let p = Params { unique_values: true, ..p };
        let mut h = register_history(seed, &p);
        let bad = inject_violation(&mut h, seed);
        let v = checker().check(&h);
        prop_assert_eq!(v.valid, Validity::Invalid, "injected #{}: {}", bad, v.explanation);
        // The rest of the history is linearizable, so the changed read must be in every certificate.
        prop_assert!(v.ops.contains(&bad), "#{} not in {:?}: {}", bad, v.ops, v.explanation);
        // The certificate is sound (still invalid on its own) and minimal (relaxing any one of its
        // acknowledged operations makes it linearizable).
        prop_assert_eq!(checker().check(&certificate(&h, &v, None)).valid, Validity::Invalid);
        for id in &v.ops {
            let relaxed = certificate(&h, &v, Some(*id));
            if !relaxed.ops.is_empty() {
                prop_assert_eq!(checker().check(&relaxed).valid, Validity::Valid, "relaxing #{}", id);
            }
        }
    }

    #[test]
    fn histories_survive_a_round_trip_through_json_lines(seed in any::<u64>(), p in params()) {
        let h = register_history(seed, &p);
        let mut text = Vec::new();
        h.write_jsonl(&mut text).unwrap();
        let back = History::parse(std::str::from_utf8(&text).unwrap(), "round-trip").unwrap();
        prop_assert_eq!(back.ops.len(), h.ops.len());
        prop_assert_eq!(checker().check(&back), checker().check(&h));
    }
}
