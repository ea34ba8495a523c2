//! Property tests of the list-append checker: histories generated from a serial execution (with
//! random timing, unknown and failed transactions) pass under every model; the same histories
//! with one injected anomaly are always caught, by the class injected, under a model that forbids
//! it; and the order of records does not matter.

#[path = "common/model.rs"]
mod model;
#[path = "common/txn_model.rs"]
mod txn_model;

use chaos_check::{Checker, ConsistencyModel, History, ListAppend, Validity};
use proptest::prelude::*;
use txn_model::{INJECTABLE, TxnParams, inject, list_append_history};

fn params() -> impl Strategy<Value = TxnParams> {
    (
        1usize..8,
        1usize..150,
        1usize..6,
        1usize..6,
        1usize..12,
        0.0..1.0f64,
        0.0..0.3f64,
        0.0..0.2f64,
        0u64..300,
        1u64..500,
    )
        .prop_map(
            |(
                clients,
                txns,
                mops,
                active_keys,
                appends_per_key,
                read_fraction,
                unknown,
                fail,
                max_gap_us,
                max_latency_us,
            )| {
                TxnParams {
                    clients,
                    txns,
                    mops,
                    vary_length: true,
                    active_keys,
                    appends_per_key,
                    read_fraction,
                    unknown,
                    fail,
                    max_gap_us,
                    max_latency_us,
                }
            },
        )
}

fn found(h: &History, model: ConsistencyModel) -> (Validity, Vec<String>, String) {
    let v = ListAppend::new(model).check(h);
    let classes = v.details["found"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    (v.valid, classes, v.explanation)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn histories_from_a_serial_execution_pass(seed in any::<u64>(), p in params()) {
        let h = list_append_history(seed, &p);
        for model in ConsistencyModel::ALL {
            let (valid, classes, explanation) = found(&h, model);
            prop_assert_eq!(valid, Validity::Valid, "{}: {}", model, explanation);
            prop_assert!(classes.is_empty(), "{}: found {:?}: {}", model, classes, explanation);
        }
    }

    #[test]
    fn an_injected_anomaly_is_always_caught(seed in any::<u64>(), p in params(), which in 0..INJECTABLE.len()) {
        let class = INJECTABLE[which];
        let mut h = list_append_history(seed, &p);
        let involved = inject(&mut h, class, seed);
        let model = if class.ends_with("-realtime") {
            ConsistencyModel::StrictSerializable
        } else {
            ConsistencyModel::Serializable
        };
        let v = ListAppend::new(model).check(&h);
        prop_assert_eq!(v.valid, Validity::Invalid, "{} under {}: {}", class, model, v.explanation);
        let (_, classes, _) = found(&h, model);
        prop_assert!(classes.contains(&class.to_string()), "{} not in {:?}: {}", class, classes, v.explanation);
        // The offending operations include those the injection involved.
        for id in &involved {
            prop_assert!(v.ops.contains(id), "#{} not in {:?} ({}): {}", id, v.ops, class, v.explanation);
        }
    }

    #[test]
    fn the_order_of_records_does_not_matter(seed in any::<u64>(), p in params(), which in 0..INJECTABLE.len()) {
        let mut h = list_append_history(seed, &p);
        inject(&mut h, INJECTABLE[which], seed);
        let checker = ListAppend::new(ConsistencyModel::StrictSerializable);
        let before = checker.check(&h);
        h.ops.reverse();
        prop_assert_eq!(checker.check(&h), before);
    }
}
