//! Choosing: strategies that pick one candidate among keys of a provider or targets of a route.
//!
//! A strategy only compares numbers that [`crate::signals`] measured; it is synchronous, does no I/O
//! and takes no lock. The caller vetoes candidates (already tried, model not allowed) by leaving them
//! out of the slice, so no strategy can pick one twice.
//!
//! | strategy | what it does | when to use |
//! |---|---|---|
//! | [`RoundRobin`] | exact rotation over usable candidates | identical keys, predictable tests |
//! | [`Weighted`] | weighted random, shares converge to the weights, blind to health | keys of different size |
//! | [`Health`] | weighted, skipping ejected, resting and full candidates | the safe baseline |
//! | [`Adaptive`] | health plus power of two choices over peak-EWMA latency, in-flight count, error rate and rate-limit headroom | the default |
//!
//! `Adaptive` follows Mitzenmacher's power of two choices as tower's `p2c` balancer and Finagle's
//! peak-EWMA use it, extended with the providers' rate-limit headroom so traffic moves off a key
//! before it starts answering 429.
//!
//! ```
//! use gateway_core::signals::{HealthConfig, Signals};
//! use gateway_core::strategy::{Candidate, PickContext, RoundRobin, Strategy};
//!
//! let signals = [Signals::new(), Signals::new()];
//! let candidates: Vec<Candidate<'_>> = signals
//!     .iter()
//!     .map(|s| Candidate { weight: 1, signals: s, rpm: None, tpm: None })
//!     .collect();
//! let health = HealthConfig::default();
//! let ctx = PickContext { now: 1, health: &health };
//! let rr = RoundRobin::default();
//! let mut rng = fastrand::Rng::with_seed(1);
//! assert_eq!(rr.pick(&candidates, &ctx, &mut rng), Some(0));
//! assert_eq!(rr.pick(&candidates, &ctx, &mut rng), Some(1));
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::signals::{HealthConfig, Signals};

/// One candidate as a strategy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Configured weight (0 is treated as 1).
    pub weight: u32,
    /// Live signals.
    pub signals: &'a Signals,
    /// Configured requests per minute, if known.
    pub rpm: Option<u64>,
    /// Configured tokens per minute, if known.
    pub tpm: Option<u64>,
}

impl Candidate<'_> {
    fn weight(&self) -> f64 {
        f64::from(self.weight.max(1))
    }

    /// Whether health and limits allow picking it at `now`.
    pub fn is_usable(&self, now: u64) -> bool {
        self.signals.availability(now).is_available()
            && self
                .signals
                .under_configured_limits(now, self.rpm, self.tpm)
    }

    /// When it becomes usable again, if it is resting or ejected (ns).
    pub fn back_at(&self, now: u64) -> Option<u64> {
        let a = self.signals.availability(now).until();
        let w = (!self
            .signals
            .under_configured_limits(now, self.rpm, self.tpm))
        .then(|| self.signals.window_reset());
        match (a, w) {
            (Some(a), Some(w)) => Some(a.max(w)),
            (a, w) => a.or(w),
        }
    }
}

/// What a pick may read besides the candidates.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// Now, in the clock's nanoseconds.
    pub now: u64,
    /// Health tuning (EWMA decay).
    pub health: &'a HealthConfig,
}

/// A way to choose among candidates.
pub trait Strategy: Send + Sync + fmt::Debug {
    /// The strategy's configuration name.
    fn name(&self) -> &'static str;

    /// Picks one candidate's index, or `None` if none may be picked.
    fn pick(
        &self,
        candidates: &[Candidate<'_>],
        ctx: &PickContext<'_>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize>;
}

/// The strategy names accepted in configuration.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// [`RoundRobin`].
    RoundRobin,
    /// [`Weighted`].
    Weighted,
    /// [`Health`].
    Health,
    /// [`Adaptive`].
    #[default]
    Adaptive,
}

impl StrategyKind {
    /// Every kind, for benchmarks and comparisons.
    pub const ALL: [StrategyKind; 4] = [
        StrategyKind::RoundRobin,
        StrategyKind::Weighted,
        StrategyKind::Health,
        StrategyKind::Adaptive,
    ];

    /// A fresh strategy of this kind.
    pub fn build(self) -> Box<dyn Strategy> {
        match self {
            StrategyKind::RoundRobin => Box::new(RoundRobin::default()),
            StrategyKind::Weighted => Box::new(Weighted),
            StrategyKind::Health => Box::new(Health),
            StrategyKind::Adaptive => Box::new(Adaptive::default()),
        }
    }

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::Weighted => "weighted",
            StrategyKind::Health => "health",
            StrategyKind::Adaptive => "adaptive",
        }
    }
}

impl FromStr for StrategyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round_robin" | "round-robin" | "roundrobin" => Ok(StrategyKind::RoundRobin),
            "weighted" => Ok(StrategyKind::Weighted),
            "health" | "health_aware" => Ok(StrategyKind::Health),
            "adaptive" => Ok(StrategyKind::Adaptive),
            other => Err(format!(
                "unknown strategy `{other}` (expected round_robin, weighted, health or adaptive)"
            )),
        }
    }
}

/// Exact rotation over the usable candidates (resting and ejected ones are skipped).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Strategy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn pick(
        &self,
        candidates: &[Candidate<'_>],
        ctx: &PickContext<'_>,
        _rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        let usable = candidates.iter().filter(|c| c.is_usable(ctx.now)).count();
        if usable == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % usable;
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_usable(ctx.now))
            .nth(n)
            .map(|(i, _)| i)
    }
}

/// Weighted random choice; shares converge to the weights.
#[derive(Debug, Default, Clone, Copy)]
pub struct Weighted;

fn weighted_index<'a>(
    candidates: &[Candidate<'a>],
    rng: &mut fastrand::Rng,
    keep: impl Fn(usize) -> bool,
) -> Option<usize> {
    weighted_index_by(candidates, rng, keep, Candidate::weight)
}

/// [`weighted_index`] by `weight_of` instead of the configured weight.
fn weighted_index_by<'a>(
    candidates: &[Candidate<'a>],
    rng: &mut fastrand::Rng,
    keep: impl Fn(usize) -> bool,
    weight_of: impl Fn(&Candidate<'a>) -> f64,
) -> Option<usize> {
    let total: f64 = candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, c)| weight_of(c))
        .sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = rng.f64() * total;
    let mut last = None;
    for (i, c) in candidates.iter().enumerate() {
        if !keep(i) {
            continue;
        }
        last = Some(i);
        x -= weight_of(c);
        if x < 0.0 {
            return Some(i);
        }
    }
    last
}

impl Strategy for Weighted {
    fn name(&self) -> &'static str {
        "weighted"
    }

    fn pick(
        &self,
        candidates: &[Candidate<'_>],
        _ctx: &PickContext<'_>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        weighted_index(candidates, rng, |_| true)
    }
}

/// Weighted choice among candidates that are neither ejected, resting nor at their configured limit.
#[derive(Debug, Default, Clone, Copy)]
pub struct Health;

impl Strategy for Health {
    fn name(&self) -> &'static str {
        "health"
    }

    fn pick(
        &self,
        candidates: &[Candidate<'_>],
        ctx: &PickContext<'_>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        weighted_index(candidates, rng, |i| candidates[i].is_usable(ctx.now))
    }
}

/// Health plus live load: power of two choices (drawn by configured weight) compared on a cost made
/// of peak-EWMA latency, in-flight requests, error rate and rate-limit headroom. Candidates that
/// cost the same share traffic by weight; one that costs twice as much as the other never wins,
/// and between the two the weights count less the more the costs differ.
#[derive(Debug, Clone, Copy)]
pub struct Adaptive {
    /// Latency assumed for a candidate without samples (ns): tiny, so every new candidate is tried
    /// once and then judged on its own numbers (a fast upstream must not starve an untried key).
    pub default_latency_nanos: f64,
    /// How strongly the error rate raises the cost.
    pub error_penalty: f64,
    /// Latencies below this count as this (ns): differences under a millisecond are the noise
    /// of a fast network, not a signal about an LLM provider.
    pub latency_floor_nanos: f64,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            default_latency_nanos: 1.0,
            error_penalty: 20.0,
            latency_floor_nanos: 1_000_000.0,
        }
    }
}

impl Adaptive {
    /// The cost of sending one more request to a candidate; lower is better.
    pub fn cost(&self, c: &Candidate<'_>, ctx: &PickContext<'_>) -> f64 {
        let s = c.signals;
        let latency = s
            .latency_nanos(ctx.now, ctx.health.decay)
            .unwrap_or(self.default_latency_nanos)
            .max(self.latency_floor_nanos)
            .max(1.0);
        // In flight per unit of weight: under load, requests in flight settle in proportion
        // to the weights, and so does the traffic of equally fast candidates.
        let load = 1.0 + f64::from(s.in_flight()) / c.weight();
        let errors = 1.0 + self.error_penalty * s.error_rate();
        let headroom = s.headroom(ctx.now, c.rpm, c.tpm);
        // 1/(h+0.05): keys close to their limit get expensive well before they are full.
        let scarcity = 1.0 / (headroom + 0.05);
        // Weights shape which two candidates are drawn; the comparison itself is on live cost,
        // so a tenfold slower candidate loses even when it carries more weight.
        latency * load * errors * scarcity
    }

    /// Whether `a` wins against `b`: the cheaper when one costs at least twice the other;
    /// between closer costs a coin weighted by their weights and the sixth power of the cost
    /// ratio (equal costs: the weights alone).
    fn first_wins(a: (f64, f64), b: (f64, f64), rng: &mut fastrand::Rng) -> bool {
        let ((wa, ca), (wb, cb)) = (a, b);
        let r = cb / ca;
        if !(0.8..=1.25).contains(&r) {
            return r > 1.0;
        }
        let r3 = r * r * r;
        let sa = wa * r3 * r3;
        rng.f64() < sa / (sa + wb)
    }
}

impl Strategy for Adaptive {
    fn name(&self) -> &'static str {
        "adaptive"
    }

    fn pick(
        &self,
        candidates: &[Candidate<'_>],
        ctx: &PickContext<'_>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        let usable = |i: usize| candidates[i].is_usable(ctx.now);
        // Two distinct candidates drawn by the square root of their weight, then a coin weighted
        // by their weights: while costs are equal, each is picked in proportion to its weight
        // (exactly for two candidates, within a percent or so for more).
        let sqrt = |c: &Candidate<'_>| c.weight().sqrt();
        let a = weighted_index_by(candidates, rng, usable, sqrt)?;
        let b = match weighted_index_by(candidates, rng, |i| i != a && usable(i), sqrt) {
            Some(b) => b,
            None => return Some(a),
        };
        let (ca, cb) = (
            self.cost(&candidates[a], ctx),
            self.cost(&candidates[b], ctx),
        );
        let (wa, wb) = (candidates[a].weight(), candidates[b].weight());
        Some(if Self::first_wins((wa, ca), (wb, cb), rng) {
            a
        } else {
            b
        })
    }
}

/// When no candidate is usable: the one ejected after failures (and within its configured
/// limits) that comes back first, to try anyway rather than refuse a request that no other
/// candidate can serve; `None` when every candidate is resting, disabled or over its limits.
pub fn last_resort(candidates: &[Candidate<'_>], now: u64) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.signals.under_configured_limits(now, c.rpm, c.tpm))
        .filter_map(|(i, c)| c.signals.ejected_for_failures(now).map(|at| (at, i)))
        .min()
        .map(|(_, i)| i)
}

/// The earliest time (ns) any candidate comes back, if all are unusable for a known time.
pub fn earliest_return(candidates: &[Candidate<'_>], now: u64) -> Option<u64> {
    candidates.iter().filter_map(|c| c.back_at(now)).min()
}

/// [`earliest_return`] split by why candidates are out: `(rate limited, out of service)`. The
/// first is resting after a rate limit or over configured limits (the client should retry
/// then); the second is ejected after failures or disabled (a refused credential, an exhausted
/// quota), which is not the client's rate limit and not worth a short retry.
pub fn earliest_returns(candidates: &[Candidate<'_>], now: u64) -> (Option<u64>, Option<u64>) {
    let (mut limited, mut out): (Option<u64>, Option<u64>) = (None, None);
    let earliest = |slot: &mut Option<u64>, at: u64| *slot = Some(slot.map_or(at, |s| s.min(at)));
    for c in candidates {
        match c.signals.availability(now) {
            crate::signals::Availability::Ejected { until } => earliest(&mut out, until),
            _ => {
                if let Some(at) = c.back_at(now) {
                    earliest(&mut limited, at);
                }
            }
        }
    }
    (limited, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::AttemptOutcome;
    use proptest::prelude::{any, prop_assert, proptest};
    use std::sync::Arc;
    use std::time::Duration;

    fn cands(signals: &[Arc<Signals>], weights: &[u32]) -> Vec<Candidate<'static>> {
        // Leak for 'static in tests only: tiny and bounded.
        let signals: &'static [Arc<Signals>] = Box::leak(signals.to_vec().into_boxed_slice());
        signals
            .iter()
            .zip(weights)
            .map(|(s, w)| Candidate {
                weight: *w,
                signals: s,
                rpm: None,
                tpm: None,
            })
            .collect()
    }

    fn sigs(n: usize) -> Vec<Arc<Signals>> {
        (0..n).map(|_| Signals::new()).collect()
    }

    const HC: HealthConfig = HealthConfig {
        eject_after: 3,
        eject_for: Duration::from_secs(5),
        max_eject_for: Duration::from_secs(60),
        decay: Duration::from_secs(10),
        default_rest: Duration::from_secs(1),
        disable_for: Duration::from_secs(300),
        failure_penalty: Duration::from_secs(1),
    };

    fn ctx(now: u64) -> PickContext<'static> {
        PickContext { now, health: &HC }
    }

    #[test]
    fn round_robin_is_an_exact_rotation() {
        let s = sigs(3);
        let c = cands(&s, &[1, 5, 1]);
        let rr = RoundRobin::default();
        let mut rng = fastrand::Rng::with_seed(0);
        let picks: Vec<_> = (0..7)
            .map(|_| rr.pick(&c, &ctx(1), &mut rng).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn health_skips_resting_and_ejected() {
        let s = sigs(3);
        s[0].rest_until(1_000);
        s[1].disable_until(1_000);
        let c = cands(&s, &[10, 10, 1]);
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..100 {
            assert_eq!(Health.pick(&c, &ctx(10), &mut rng), Some(2));
            assert_eq!(Adaptive::default().pick(&c, &ctx(10), &mut rng), Some(2));
        }
        s[2].rest_until(500);
        assert_eq!(Health.pick(&c, &ctx(10), &mut rng), None);
        assert_eq!(earliest_return(&c, 10), Some(500));
        assert_eq!(earliest_returns(&c, 10), (Some(500), Some(1_000)));
        s[0].rest_until(2_000);
        s[2].disable_until(800);
        assert_eq!(earliest_returns(&c, 10), (Some(2_000), Some(800)));
    }

    #[test]
    fn adaptive_prefers_the_fast_and_the_roomy() {
        let s = sigs(2);
        // Key 0 answered in 200 ms, key 1 in 5 ms.
        s[0].start(1, 0)
            .finish(200_000_001, AttemptOutcome::Success, &HC);
        s[1].start(1, 0)
            .finish(5_000_001, AttemptOutcome::Success, &HC);
        let c = cands(&s, &[1, 1]);
        let ad = Adaptive::default();
        let mut rng = fastrand::Rng::with_seed(9);
        let fast = (0..1000)
            .filter(|_| ad.pick(&c, &ctx(200_000_002), &mut rng) == Some(1))
            .count();
        assert!(
            fast > 990,
            "p2c with two candidates always compares both: {fast}"
        );

        // Same latency, but key 1 reports 2% headroom left.
        let s = sigs(2);
        s[1].record_rate_limit(
            1,
            &crate::ratelimit::RateLimitInfo {
                limit_requests: Some(100),
                remaining_requests: Some(2),
                reset_requests: Some(Duration::from_secs(30)),
                ..Default::default()
            },
        );
        let c = cands(&s, &[1, 1]);
        let roomy = (0..1000)
            .filter(|_| ad.pick(&c, &ctx(2), &mut rng) == Some(0))
            .count();
        assert!(roomy > 990, "near-empty key avoided: {roomy}");
    }

    /// Equally fast candidates share traffic by weight under `adaptive` too: with nothing in
    /// flight (sequential traffic), and under load, where requests in flight in proportion to
    /// the weights cost the same; latencies under a millisecond are all alike.
    #[test]
    fn adaptive_shares_equal_candidates_by_weight() {
        let s = sigs(3);
        // 0.2 ms and 0.6 ms: noise of a fast local upstream, not a difference.
        s[0].start(1, 0)
            .finish(200_001, AttemptOutcome::Success, &HC);
        s[1].start(1, 0)
            .finish(600_001, AttemptOutcome::Success, &HC);
        s[2].start(1, 0)
            .finish(400_001, AttemptOutcome::Success, &HC);
        let c = cands(&s, &[6, 3, 1]);
        let ad = Adaptive::default();
        let mut rng = fastrand::Rng::with_seed(5);
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[ad.pick(&c, &ctx(600_002), &mut rng).unwrap()] += 1;
        }
        let shares: Vec<f64> = counts.iter().map(|&k| k as f64 / n as f64).collect();
        for (got, want) in shares.iter().zip([0.6, 0.3, 0.1]) {
            assert!((got - want).abs() < 0.03, "{shares:?}");
        }
        // Under load: 6, 3 and 1 in flight cost the same per weight.
        let guards: Vec<_> = [6, 3, 1]
            .iter()
            .enumerate()
            .flat_map(|(i, &k)| (0..k).map(move |_| i))
            .map(|i| s[i].start(600_002, 0))
            .collect();
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[ad.pick(&c, &ctx(600_003), &mut rng).unwrap()] += 1;
        }
        drop(guards);
        let shares: Vec<f64> = counts.iter().map(|&k| k as f64 / n as f64).collect();
        for (got, want) in shares.iter().zip([0.6, 0.3, 0.1]) {
            assert!((got - want).abs() < 0.03, "{shares:?}");
        }
    }

    proptest! {
        #[test]
        fn weighted_shares_converge_to_weights(weights in proptest::collection::vec(1u32..20, 2..6), seed in any::<u64>()) {
            let s = sigs(weights.len());
            let c = cands(&s, &weights);
            let mut rng = fastrand::Rng::with_seed(seed);
            let n = 20_000;
            let mut counts = vec![0usize; weights.len()];
            for _ in 0..n {
                counts[Weighted.pick(&c, &ctx(1), &mut rng).unwrap()] += 1;
            }
            let total: u32 = weights.iter().sum();
            for (i, w) in weights.iter().enumerate() {
                let want = f64::from(*w) / f64::from(total);
                let got = counts[i] as f64 / n as f64;
                prop_assert!((want - got).abs() < 0.025, "candidate {} wanted {:.3} got {:.3}", i, want, got);
            }
        }

        #[test]
        fn unusable_candidates_are_never_picked(n in 2usize..8, bad in proptest::collection::vec(any::<bool>(), 8), seed in any::<u64>()) {
            let s = sigs(n);
            for (i, b) in bad.iter().take(n).enumerate() {
                if *b { if i % 2 == 0 { s[i].rest_until(1_000_000) } else { s[i].disable_until(1_000_000) } }
            }
            let c = cands(&s, &vec![3; n]);
            let any_good = bad.iter().take(n).any(|b| !b);
            let mut rng = fastrand::Rng::with_seed(seed);
            for strat in [StrategyKind::Health.build(), StrategyKind::Adaptive.build()] {
                for _ in 0..50 {
                    match strat.pick(&c, &ctx(10), &mut rng) {
                        Some(i) => prop_assert!(!bad[i], "{} picked unusable candidate {}", strat.name(), i),
                        None => prop_assert!(!any_good, "{} found nothing although one was usable", strat.name()),
                    }
                }
            }
        }
    }
}
