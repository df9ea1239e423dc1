//! Measuring: per-key and per-target health and load signals.
//!
//! This module measures; [`crate::strategy`] chooses (tower separates `Load` from `p2c` the same
//! way). Every field is an atomic so that many requests update and read a [`Signals`] at once without
//! locks. Time is nanoseconds since the [`Clock`]'s origin, so tests can run on paused tokio time.
//!
//! - **Peak-EWMA latency** (Finagle, tower `PeakEwma`): a sample above the current estimate replaces
//!   it at once; below it, the estimate decays towards it with a time constant. A degrading key shows
//!   up on its first slow answer.
//! - **Error rate**: an EWMA of 0/1 outcomes.
//! - **Ejection** with hysteresis (pingora `Health`): `eject_after` consecutive failures take the
//!   candidate out for `eject_for`; after that one request at a time is let through (half-open) and a
//!   success brings it back.
//! - **Resting** after a 429 until the provider's reset hint (not a fixed guess).
//! - **Headroom**: the remaining/limit fractions the provider reported, and a local count of requests
//!   in the current minute against the key's configured `rpm`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::ratelimit::RateLimitInfo;

/// A monotonic clock in nanoseconds, injectable for tests.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since this clock's origin.
    fn now_nanos(&self) -> u64;
}

/// The default clock: `tokio::time::Instant`, so paused time in tests moves it.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_nanos(&self) -> u64 {
        // Starts at 1 so that 0 can mean "never".
        (tokio::time::Instant::now()
            .duration_since(self.origin)
            .as_nanos() as u64)
            .saturating_add(1)
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock at time 1 ns.
    pub fn new() -> Self {
        ManualClock(AtomicU64::new(1))
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
}

/// Tuning of health tracking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// Consecutive failures that eject a candidate.
    pub eject_after: u32,
    /// How long an ejected candidate stays out before a half-open probe.
    pub eject_for: Duration,
    /// The longest an ejection may grow to when probes keep failing.
    pub max_eject_for: Duration,
    /// Time constant of the latency and error-rate EWMAs.
    pub decay: Duration,
    /// How long a key rests after a 429 that carried no wait hint.
    pub default_rest: Duration,
    /// How long a key whose quota is exhausted (or whose credential was refused) stays out.
    pub disable_for: Duration,
    /// The latency a failed attempt counts as, at least: failing fast must not look attractive.
    pub failure_penalty: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            eject_after: 3,
            eject_for: Duration::from_secs(5),
            max_eject_for: Duration::from_secs(60),
            decay: Duration::from_secs(10),
            default_rest: Duration::from_secs(1),
            disable_for: Duration::from_secs(300),
            failure_penalty: Duration::from_secs(1),
        }
    }
}

/// The state of a candidate as strategies see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Can be picked.
    Available,
    /// Ejected after failures, or disabled, until the given time (ns).
    Ejected {
        /// When it may be probed again.
        until: u64,
    },
    /// Resting after a rate limit until the given time (ns).
    Resting {
        /// When the limit resets.
        until: u64,
    },
    /// Its ejection ended and a probe request is already in flight.
    Probing,
}

impl Availability {
    /// Whether a pick may choose it.
    pub fn is_available(self) -> bool {
        matches!(self, Availability::Available)
    }

    /// When it comes back, for unavailable states with a known time.
    pub fn until(self) -> Option<u64> {
        match self {
            Availability::Ejected { until } | Availability::Resting { until } => Some(until),
            _ => None,
        }
    }
}

/// Live signals of one key or one route target. Cheap to read; updated with atomics.
#[derive(Debug)]
pub struct Signals {
    in_flight: AtomicU32,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: AtomicU64,
    /// Out of service until then (ns): a refused credential or an exhausted quota. Never tried
    /// before, unlike an ejection after failures ([`Signals::ejected_for_failures`]).
    disabled_until: AtomicU64,
    /// When the current ejection began (ns; 0 when none): a failure of an attempt that started
    /// before it is news of the outage that caused it, not a failed probe.
    ejected_at: AtomicU64,
    probing: AtomicBool,
    resting_until: AtomicU64,
    /// f64 bits of the peak-EWMA latency in nanoseconds (0 = no sample yet).
    latency_ewma: AtomicU64,
    /// f64 bits of the error-rate EWMA.
    error_ewma: AtomicU64,
    last_update: AtomicU64,
    // Provider-reported headroom.
    limit_requests: AtomicU64,
    remaining_requests: AtomicU64,
    reset_requests_at: AtomicU64,
    limit_tokens: AtomicU64,
    remaining_tokens: AtomicU64,
    reset_tokens_at: AtomicU64,
    // Local minute window for configured limits.
    window_start: AtomicU64,
    window_requests: AtomicU64,
    window_tokens: AtomicU64,
    // Totals for share-of-traffic reporting.
    picks: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    /// Woken when an attempt of a key with a concurrency cap ends ([`Signals::try_start`]).
    freed: tokio::sync::Notify,
}

const UNKNOWN: u64 = u64::MAX;
const MINUTE: u64 = 60_000_000_000;

impl Default for Signals {
    fn default() -> Self {
        Signals {
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            disabled_until: AtomicU64::new(0),
            ejected_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            resting_until: AtomicU64::new(0),
            latency_ewma: AtomicU64::new(0),
            error_ewma: AtomicU64::new(0f64.to_bits()),
            last_update: AtomicU64::new(0),
            limit_requests: AtomicU64::new(UNKNOWN),
            remaining_requests: AtomicU64::new(UNKNOWN),
            reset_requests_at: AtomicU64::new(0),
            limit_tokens: AtomicU64::new(UNKNOWN),
            remaining_tokens: AtomicU64::new(UNKNOWN),
            reset_tokens_at: AtomicU64::new(0),
            window_start: AtomicU64::new(0),
            window_requests: AtomicU64::new(0),
            window_tokens: AtomicU64::new(0),
            picks: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            freed: tokio::sync::Notify::new(),
        }
    }
}

/// A point-in-time copy of [`Signals`], for admin and telemetry.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SignalsSnapshot {
    /// Requests in flight.
    pub in_flight: u32,
    /// Consecutive failures.
    pub consecutive_failures: u32,
    /// Peak-EWMA latency in milliseconds (`None` before the first sample).
    pub latency_ms: Option<f64>,
    /// Error-rate EWMA, 0..1.
    pub error_rate: f64,
    /// Provider-reported remaining requests.
    pub remaining_requests: Option<u64>,
    /// Provider-reported remaining tokens.
    pub remaining_tokens: Option<u64>,
    /// Fraction of capacity left (provider headers and configured limits).
    pub headroom: f64,
    /// Requests sent in the current minute.
    pub minute_requests: u64,
    /// Times this candidate was picked.
    pub picks: u64,
    /// Successful attempts.
    pub successes: u64,
    /// Failed attempts.
    pub failures: u64,
}

fn load_f64(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

fn opt(v: u64) -> Option<u64> {
    (v != UNKNOWN).then_some(v)
}

impl Signals {
    /// Fresh signals.
    pub fn new() -> Arc<Self> {
        Arc::new(Signals::default())
    }

    /// Where this candidate stands at `now`.
    pub fn availability(&self, now: u64) -> Availability {
        let disabled = self.disabled_until.load(Ordering::Acquire);
        if now < disabled {
            return Availability::Ejected { until: disabled };
        }
        let ejected = self.ejected_until.load(Ordering::Acquire);
        if ejected != 0 {
            if now < ejected {
                return Availability::Ejected { until: ejected };
            }
            if self.probing.load(Ordering::Acquire) {
                return Availability::Probing;
            }
        }
        let resting = self.resting_until.load(Ordering::Acquire);
        if now < resting {
            return Availability::Resting { until: resting };
        }
        Availability::Available
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Peak-EWMA latency in ns, decayed to `now`; `None` before the first sample.
    pub fn latency_nanos(&self, now: u64, decay: Duration) -> Option<f64> {
        let v = load_f64(&self.latency_ewma);
        if v == 0.0 {
            return None;
        }
        let last = self.last_update.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(last) as f64;
        // Without fresh samples the estimate relaxes towards zero so an idle candidate is retried.
        let w = (-elapsed / decay.as_nanos() as f64).exp();
        Some(v * w)
    }

    /// Error-rate EWMA, 0..1.
    pub fn error_rate(&self) -> f64 {
        load_f64(&self.error_ewma)
    }

    /// Fraction of capacity left, 0..1, from the provider's headers and the configured limits.
    pub fn headroom(&self, now: u64, rpm: Option<u64>, tpm: Option<u64>) -> f64 {
        let mut h = 1.0f64;
        let frac = |rem: u64, lim: u64, reset_at: u64| -> f64 {
            if rem == UNKNOWN || (reset_at != 0 && now >= reset_at) {
                1.0
            } else if lim == UNKNOWN || lim == 0 {
                if rem == 0 {
                    0.0
                } else {
                    1.0
                }
            } else {
                (rem as f64 / lim as f64).clamp(0.0, 1.0)
            }
        };
        h = h.min(frac(
            self.remaining_requests.load(Ordering::Relaxed),
            self.limit_requests.load(Ordering::Relaxed),
            self.reset_requests_at.load(Ordering::Relaxed),
        ));
        h = h.min(frac(
            self.remaining_tokens.load(Ordering::Relaxed),
            self.limit_tokens.load(Ordering::Relaxed),
            self.reset_tokens_at.load(Ordering::Relaxed),
        ));
        let window_fresh = now.saturating_sub(self.window_start.load(Ordering::Relaxed)) < MINUTE;
        if window_fresh {
            if let Some(rpm) = rpm.filter(|r| *r > 0) {
                let used = self.window_requests.load(Ordering::Relaxed);
                h = h.min(1.0 - (used as f64 / rpm as f64).min(1.0));
            }
            if let Some(tpm) = tpm.filter(|t| *t > 0) {
                let used = self.window_tokens.load(Ordering::Relaxed);
                h = h.min(1.0 - (used as f64 / tpm as f64).min(1.0));
            }
        }
        h
    }

    /// Whether the configured per-minute limits leave room for one more request.
    pub fn under_configured_limits(&self, now: u64, rpm: Option<u64>, tpm: Option<u64>) -> bool {
        if now.saturating_sub(self.window_start.load(Ordering::Relaxed)) >= MINUTE {
            return true;
        }
        let rq_ok = rpm.is_none_or(|r| self.window_requests.load(Ordering::Relaxed) < r);
        let tk_ok = tpm.is_none_or(|t| self.window_tokens.load(Ordering::Relaxed) < t);
        rq_ok && tk_ok
    }

    /// When the configured minute window resets (ns), if it is full.
    pub fn window_reset(&self) -> u64 {
        self.window_start
            .load(Ordering::Relaxed)
            .saturating_add(MINUTE)
    }

    /// Marks the start of an attempt; the returned guard records its end.
    pub fn start(self: &Arc<Self>, now: u64, est_tokens: u64) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started(now, est_tokens, false)
    }

    /// [`Signals::start`] for a key that may have at most `cap` attempts in flight: `None`,
    /// and nothing counted, when it already has them. Its guard wakes the waiters of
    /// [`Signals::freed`] when it ends.
    pub fn try_start(self: &Arc<Self>, now: u64, est_tokens: u64, cap: u32) -> Option<InFlight> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()?;
        Some(self.started(now, est_tokens, true))
    }

    /// Woken (all waiters) when an attempt started by [`Signals::try_start`] ends.
    pub fn freed(&self) -> &tokio::sync::Notify {
        &self.freed
    }

    fn started(self: &Arc<Self>, now: u64, est_tokens: u64, capped: bool) -> InFlight {
        self.picks.fetch_add(1, Ordering::Relaxed);
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= MINUTE
            && self
                .window_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.window_requests.store(0, Ordering::Relaxed);
            self.window_tokens.store(0, Ordering::Relaxed);
        }
        self.window_requests.fetch_add(1, Ordering::Relaxed);
        self.window_tokens.fetch_add(est_tokens, Ordering::Relaxed);
        // A request that starts while the ejection is over is the half-open probe.
        let ejected = self.ejected_until.load(Ordering::Acquire);
        if ejected != 0 && now >= ejected {
            self.probing.store(true, Ordering::Release);
        }
        InFlight {
            signals: Arc::clone(self),
            started: now,
            done: false,
            capped,
        }
    }

    fn update_ewma(&self, now: u64, decay: Duration, latency: Option<f64>, error: bool) {
        let last = self.last_update.swap(now, Ordering::Relaxed);
        let elapsed = now.saturating_sub(last) as f64;
        let w = (-elapsed / decay.as_nanos() as f64).exp();
        if let Some(sample) = latency {
            let _ = self
                .latency_ewma
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                    let cur = f64::from_bits(bits);
                    let next = if cur == 0.0 || sample > cur {
                        sample
                    } else {
                        cur * w + sample * (1.0 - w)
                    };
                    Some(next.to_bits())
                });
        }
        let sample = if error { 1.0 } else { 0.0 };
        // Error rate uses a per-event weight so that a burst moves it even within one instant.
        let alpha = (1.0 - w).max(0.1);
        let _ = self
            .error_ewma
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let cur = f64::from_bits(bits);
                Some((cur * (1.0 - alpha) + sample * alpha).to_bits())
            });
    }

    fn on_success(&self, now: u64, latency: u64, cfg: &HealthConfig) {
        self.successes.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.ejected_until.load(Ordering::Acquire) != 0 {
            self.ejected_until.store(0, Ordering::Release);
            self.ejected_at.store(0, Ordering::Release);
            self.ejections.store(0, Ordering::Relaxed);
        }
        self.probing.store(false, Ordering::Release);
        self.update_ewma(now, cfg.decay, Some(latency as f64), false);
    }

    fn on_failure(&self, now: u64, latency: u64, started: u64, cfg: &HealthConfig) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        // Attempts in flight when the candidate was ejected fail after it: they neither extend
        // the ejection nor count as its half-open probe (which may be under way).
        let ejected_at = self.ejected_at.load(Ordering::Acquire);
        let stale = ejected_at != 0 && started < ejected_at;
        let was_probing = !stale && self.probing.swap(false, Ordering::AcqRel);
        if was_probing || (n >= cfg.eject_after && !stale) {
            let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(6);
            let d = (cfg.eject_for * 2u32.pow(k)).min(cfg.max_eject_for);
            self.ejected_at.store(now.max(1), Ordering::Release);
            self.ejected_until
                .store(now.saturating_add(d.as_nanos() as u64), Ordering::Release);
        }
        // A failure counts as slow: it pushes the peak-EWMA up so adaptive picks shy away.
        let sample = latency.max(cfg.failure_penalty.as_nanos() as u64);
        self.update_ewma(now, cfg.decay, Some(sample as f64), true);
    }

    /// Records the rate-limit headroom reported on a response.
    pub fn record_rate_limit(&self, now: u64, info: &RateLimitInfo) {
        let at = |d: Option<Duration>| d.map_or(0, |d| now.saturating_add(d.as_nanos() as u64));
        if let Some(v) = info.limit_requests {
            self.limit_requests.store(v, Ordering::Relaxed);
        }
        if let Some(v) = info.remaining_requests {
            self.remaining_requests.store(v, Ordering::Relaxed);
            self.reset_requests_at
                .store(at(info.reset_requests), Ordering::Relaxed);
        }
        if let Some(v) = info.limit_tokens {
            self.limit_tokens.store(v, Ordering::Relaxed);
        }
        if let Some(v) = info.remaining_tokens {
            self.remaining_tokens.store(v, Ordering::Relaxed);
            self.reset_tokens_at
                .store(at(info.reset_tokens), Ordering::Relaxed);
        }
        // Exhausted: rest until the window resets, before the provider has to say 429.
        if let Some(wait) = info.exhausted_for() {
            self.rest_until(now.saturating_add(wait.as_nanos() as u64));
        }
    }

    /// Rests the candidate until `until` (ns), keeping the later of two rests.
    pub fn rest_until(&self, until: u64) {
        self.resting_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Takes the candidate out until `until` (ns) (quota exhausted, credential refused).
    pub fn disable_until(&self, until: u64) {
        self.disabled_until.fetch_max(until, Ordering::AcqRel);
    }

    /// When an ejection after failures ends (ns; `now` while its half-open probe is in flight),
    /// if that is all that keeps it out: not disabled, not resting after a rate limit. Such a
    /// candidate may still be tried as a last resort, when nothing else can serve.
    pub fn ejected_for_failures(&self, now: u64) -> Option<u64> {
        if now < self.disabled_until.load(Ordering::Acquire)
            || now < self.resting_until.load(Ordering::Acquire)
        {
            return None;
        }
        match self.availability(now) {
            Availability::Ejected { until } => Some(until),
            Availability::Probing => Some(now),
            _ => None,
        }
    }

    /// Records the actual tokens of a finished request against the local window.
    pub fn settle_tokens(&self, estimated: u64, actual: u64) {
        if actual >= estimated {
            self.window_tokens
                .fetch_add(actual - estimated, Ordering::Relaxed);
        } else {
            let _ = self
                .window_tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(estimated - actual))
                });
        }
    }

    /// A copy for reporting.
    pub fn snapshot(
        &self,
        now: u64,
        decay: Duration,
        rpm: Option<u64>,
        tpm: Option<u64>,
    ) -> SignalsSnapshot {
        let fresh = now.saturating_sub(self.window_start.load(Ordering::Relaxed)) < MINUTE;
        SignalsSnapshot {
            in_flight: self.in_flight(),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            latency_ms: self.latency_nanos(now, decay).map(|n| n / 1e6),
            error_rate: self.error_rate(),
            remaining_requests: opt(self.remaining_requests.load(Ordering::Relaxed)),
            remaining_tokens: opt(self.remaining_tokens.load(Ordering::Relaxed)),
            headroom: self.headroom(now, rpm, tpm),
            minute_requests: if fresh {
                self.window_requests.load(Ordering::Relaxed)
            } else {
                0
            },
            picks: self.picks.load(Ordering::Relaxed),
            successes: self.successes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

/// How an attempt ended, as health tracking sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// It worked.
    Success,
    /// The provider or key failed (counts towards ejection).
    Failure,
    /// Neither: the caller's error, a rate limit handled by resting, or a cancellation.
    Neutral,
}

/// An in-flight attempt. Dropping it without [`InFlight::finish`] records a neutral end (the
/// request was cancelled), so in-flight counts never leak (tower's `peak_ewma::Handle`).
#[derive(Debug)]
pub struct InFlight {
    signals: Arc<Signals>,
    started: u64,
    done: bool,
    /// Started under a concurrency cap: its end wakes those waiting for a slot.
    capped: bool,
}

impl InFlight {
    /// Records the end of the attempt.
    pub fn finish(mut self, now: u64, outcome: AttemptOutcome, cfg: &HealthConfig) {
        self.done = true;
        self.release();
        let latency = now.saturating_sub(self.started);
        match outcome {
            AttemptOutcome::Success => self.signals.on_success(now, latency, cfg),
            AttemptOutcome::Failure => {
                self.signals.on_failure(now, latency, self.started, cfg);
            }
            AttemptOutcome::Neutral => {
                self.signals.probing.store(false, Ordering::Release);
            }
        }
    }

    /// When the attempt started (ns).
    pub fn started(&self) -> u64 {
        self.started
    }

    fn release(&self) {
        self.signals.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.capped {
            self.signals.freed.notify_waiters();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.release();
            self.signals.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn ejects_after_consecutive_failures_and_returns_through_half_open() {
        let cfg = HealthConfig::default();
        let s = Signals::new();
        let mut now = 1;
        for _ in 0..2 {
            s.start(now, 0)
                .finish(now + MS, AttemptOutcome::Failure, &cfg);
            now += 2 * MS;
            assert!(
                s.availability(now).is_available(),
                "two failures do not eject"
            );
        }
        s.start(now, 0)
            .finish(now + MS, AttemptOutcome::Failure, &cfg);
        now += 2 * MS;
        assert!(matches!(s.availability(now), Availability::Ejected { .. }));
        now += cfg.eject_for.as_nanos() as u64;
        assert!(
            s.availability(now).is_available(),
            "half-open after eject_for"
        );
        let probe = s.start(now, 0);
        assert_eq!(
            s.availability(now),
            Availability::Probing,
            "one probe at a time"
        );
        probe.finish(now + MS, AttemptOutcome::Success, &cfg);
        assert!(s.availability(now + 2 * MS).is_available());
        assert_eq!(
            s.snapshot(now, cfg.decay, None, None).consecutive_failures,
            0
        );
    }

    #[test]
    fn failures_of_attempts_begun_before_an_ejection_do_not_extend_it() {
        let cfg = HealthConfig::default();
        let s = Signals::new();
        let start = 1;
        // Ten attempts under way when the upstream dies: the first three eject it.
        let mut under_way: Vec<InFlight> = (0..10).map(|_| s.start(start, 0)).collect();
        let ejected_at = start + 2 * MS;
        for a in under_way.drain(..3) {
            a.finish(ejected_at, AttemptOutcome::Failure, &cfg);
        }
        let first = match s.availability(ejected_at) {
            Availability::Ejected { until } => until,
            other => panic!("expected ejection, got {other:?}"),
        };
        assert_eq!(first - ejected_at, cfg.eject_for.as_nanos() as u64);
        // The other seven fail after it: the ejection stays as it was.
        for a in under_way {
            a.finish(ejected_at + MS, AttemptOutcome::Failure, &cfg);
        }
        assert_eq!(
            s.availability(ejected_at + MS),
            Availability::Ejected { until: first },
            "stale failures neither extend the ejection nor double the next"
        );
        // Its half-open probe still doubles it when it fails.
        let probe_at = first;
        s.start(probe_at, 0)
            .finish(probe_at + MS, AttemptOutcome::Failure, &cfg);
        match s.availability(probe_at + MS) {
            Availability::Ejected { until } => assert_eq!(
                until - (probe_at + MS),
                2 * cfg.eject_for.as_nanos() as u64,
                "the second ejection is twice the first, not more"
            ),
            other => panic!("expected ejection, got {other:?}"),
        }
    }

    #[test]
    fn failed_probe_ejects_again_for_longer() {
        let cfg = HealthConfig::default();
        let s = Signals::new();
        let mut now = 1;
        for _ in 0..3 {
            s.start(now, 0).finish(now, AttemptOutcome::Failure, &cfg);
        }
        now += cfg.eject_for.as_nanos() as u64;
        s.start(now, 0).finish(now, AttemptOutcome::Failure, &cfg);
        match s.availability(now) {
            Availability::Ejected { until } => {
                assert!(
                    until - now > cfg.eject_for.as_nanos() as u64,
                    "backoff grows"
                )
            }
            other => panic!("expected ejection, got {other:?}"),
        }
    }

    #[test]
    fn rate_limit_headers_rest_the_key_until_one_request_frees() {
        let s = Signals::new();
        let info = RateLimitInfo {
            limit_requests: Some(10),
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_secs(3)),
            ..RateLimitInfo::default()
        };
        s.record_rate_limit(1, &info);
        // Ten requests refill in 3 s: one frees after 300 ms.
        assert_eq!(
            s.availability(2),
            Availability::Resting {
                until: 1 + 300 * MS
            }
        );
        assert!(s.availability(1 + 300 * MS).is_available());
        assert_eq!(s.headroom(2, None, None), 0.0);
        assert_eq!(
            s.headroom(1 + 300 * MS, None, None),
            0.0,
            "still nearly empty"
        );
        assert_eq!(s.headroom(1 + 3_000 * MS, None, None), 1.0, "reset passed");
    }

    #[test]
    fn dropped_guard_releases_in_flight() {
        let s = Signals::new();
        let g = s.start(1, 0);
        assert_eq!(s.in_flight(), 1);
        drop(g);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let cfg = HealthConfig::default();
        let s = Signals::new();
        s.start(0, 0).finish(10 * MS, AttemptOutcome::Success, &cfg);
        assert_eq!(s.latency_nanos(10 * MS, cfg.decay), Some(10.0 * MS as f64));
        s.start(10 * MS, 0)
            .finish(110 * MS, AttemptOutcome::Success, &cfg);
        let peak = s.latency_nanos(110 * MS, cfg.decay).unwrap_or_default();
        assert!(
            (peak - 100.0 * MS as f64).abs() < 1.0,
            "peak taken at once: {peak}"
        );
        s.start(110 * MS, 0)
            .finish(111 * MS, AttemptOutcome::Success, &cfg);
        let after = s.latency_nanos(111 * MS, cfg.decay).unwrap_or_default();
        assert!(
            after > 90.0 * MS as f64,
            "a fast sample decays slowly: {after}"
        );
    }

    #[test]
    fn configured_rpm_counts_in_a_minute_window() {
        let s = Signals::new();
        for _ in 0..3 {
            drop(s.start(1, 10));
        }
        assert!(!s.under_configured_limits(2, Some(3), None));
        assert!(s.under_configured_limits(2, Some(4), None));
        assert!(!s.under_configured_limits(2, None, Some(30)));
        assert!(
            s.under_configured_limits(1 + MINUTE, Some(3), None),
            "window rolls over"
        );
        assert!((s.headroom(2, Some(6), None) - 0.5).abs() < 1e-9);
    }
}
