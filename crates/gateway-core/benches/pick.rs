//! One pick per strategy over 2, 16 and 256 candidates.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gateway_core::signals::{AttemptOutcome, HealthConfig, Signals};
use gateway_core::strategy::{Candidate, PickContext, StrategyKind};

fn bench_pick(c: &mut Criterion) {
    let health = HealthConfig::default();
    let mut group = c.benchmark_group("pick");
    for n in [2usize, 16, 256] {
        let signals: Vec<Arc<Signals>> = (0..n).map(|_| Signals::new()).collect();
        // Give every candidate some history so adaptive reads real numbers.
        for (i, s) in signals.iter().enumerate() {
            s.start(1, 0).finish(
                1 + (i as u64 + 1) * 1_000_000,
                AttemptOutcome::Success,
                &health,
            );
        }
        let cands: Vec<Candidate<'_>> = signals
            .iter()
            .enumerate()
            .map(|(i, s)| Candidate {
                weight: 1 + (i as u32 % 4),
                signals: s,
                rpm: Some(1000),
                tpm: None,
            })
            .collect();
        let ctx = PickContext {
            now: Duration::from_secs(1).as_nanos() as u64,
            health: &health,
        };
        for kind in StrategyKind::ALL {
            let strategy = kind.build();
            let mut rng = fastrand::Rng::with_seed(42);
            group.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |b, _| {
                b.iter(|| black_box(strategy.pick(black_box(&cands), &ctx, &mut rng)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
