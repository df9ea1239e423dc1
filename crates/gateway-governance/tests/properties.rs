//! Properties: whatever the interleaving of admissions, settlements and failures, a spent budget
//! admits nothing, a budget is passed by one request's cost at most and never by a concurrent
//! burst (when requests cost at most their estimate), and the concurrency limit is never exceeded.

mod common;

use std::collections::VecDeque;

use common::*;
use gateway_core::admission::Permit;
use gateway_governance::LimitsSpec;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Admit a request of this many input (and as many output) tokens.
    Admit(u64),
    /// Settle the oldest permit at this share (0..=100 %) of its estimated cost.
    Settle(u8),
    /// The oldest request fails: its permit is dropped.
    Fail,
}

/// The largest estimate of one request: 199 + 199 tokens at $1 per 1000.
const MAX_COST: f64 = 2.0 * 199.0 / 1000.0;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..200).prop_map(Op::Admit),
        2 => (0u8..=100).prop_map(Op::Settle),
        1 => Just(Op::Fail),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn budgets_and_concurrency_are_never_overshot(ops in proptest::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let spec = LimitsSpec { budget_usd: Some(1.0), max_concurrent: Some(4), ..key("k") };
            let gov = open(config(&dir, vec![spec]), &clock()).await;
            let s = secret("k");
            let mut in_flight: VecDeque<(Box<dyn Permit>, u64)> = VecDeque::new();
            let mut spent = 0.0;
            for op in ops {
                match op {
                    Op::Admit(t) => {
                        let reserved: f64 =
                            in_flight.iter().map(|(_, t)| 2.0 * *t as f64 / 1000.0).sum();
                        let cost = 2.0 * t as f64 / 1000.0;
                        if let Ok(p) = Req::new(Some(&s)).tokens(t, t).admit(&gov).await {
                            prop_assert!(spent < 1.0, "admitted with the budget spent: ${spent}");
                            prop_assert!(
                                in_flight.is_empty() || spent + reserved + cost <= 1.0 + 1e-9,
                                "admitted beside requests in flight past the budget: \
                                 ${spent} + ${reserved} + ${cost}"
                            );
                            in_flight.push_back((p, t));
                        }
                        prop_assert!(in_flight.len() <= 4, "more than max_concurrent in flight");
                    }
                    Op::Settle(share) => {
                        if let Some((p, t)) = in_flight.pop_front() {
                            // $1 per 1000 tokens; the estimate is 2t tokens.
                            let cost = 2.0 * t as f64 / 1000.0 * f64::from(share) / 100.0;
                            spent += cost;
                            p.settle(&usage(t, t * u64::from(share) / 100), cost);
                        }
                    }
                    Op::Fail => {
                        in_flight.pop_front();
                    }
                }
                prop_assert!(spent <= 1.0 + MAX_COST + 1e-9, "budget overshot: ${spent}");
            }
            // Everything still in flight now costs its full estimate: still within the budget.
            for (p, t) in in_flight {
                let cost = 2.0 * t as f64 / 1000.0;
                spent += cost;
                p.settle(&usage(t, t), cost);
            }
            prop_assert!(
                spent <= 1.0 + MAX_COST + 1e-9,
                "budget overshot once all settled: ${spent}"
            );
            Ok(())
        })?;
    }
}
