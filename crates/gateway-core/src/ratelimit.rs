//! Rate-limit headroom reported by providers.

use std::time::Duration;

/// Tokens one request is assumed to need when deciding how long an exhausted token bucket rests.
pub const TYPICAL_REQUEST_TOKENS: u64 = 1_000;

/// What a provider said about a key's remaining capacity, from its response headers.
///
/// Resets are relative to the moment the response was received. Unknown values are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitInfo {
    /// Requests allowed in the window.
    pub limit_requests: Option<u64>,
    /// Requests left in the window.
    pub remaining_requests: Option<u64>,
    /// When the request window resets.
    pub reset_requests: Option<Duration>,
    /// Tokens allowed in the window.
    pub limit_tokens: Option<u64>,
    /// Tokens left in the window.
    pub remaining_tokens: Option<u64>,
    /// When the token window resets.
    pub reset_tokens: Option<Duration>,
    /// An explicit wait hint (`retry-after`, `retry-after-ms`).
    pub retry_after: Option<Duration>,
}

impl RateLimitInfo {
    /// Whether nothing was reported.
    pub fn is_empty(&self) -> bool {
        *self == RateLimitInfo::default()
    }

    /// The fraction of capacity left, the smaller of requests and tokens (1.0 when unknown).
    pub fn headroom(&self) -> f64 {
        fn frac(rem: Option<u64>, lim: Option<u64>) -> f64 {
            match (rem, lim) {
                (Some(r), Some(l)) if l > 0 => (r as f64 / l as f64).clamp(0.0, 1.0),
                (Some(0), _) => 0.0,
                _ => 1.0,
            }
        }
        frac(self.remaining_requests, self.limit_requests)
            .min(frac(self.remaining_tokens, self.limit_tokens))
    }

    /// How long until an exhausted key can take a request again, if it is exhausted.
    ///
    /// OpenAI, Azure, Groq and Anthropic describe their limits as token buckets whose `reset`
    /// header is the time until the bucket is *full* again; one request's worth frees up after
    /// `reset / limit` of that (for tokens, [`TYPICAL_REQUEST_TOKENS`]' worth). Resting until
    /// the full reset would leave a key idle for most of a minute while it could serve.
    pub fn exhausted_for(&self) -> Option<Duration> {
        fn one_unit(reset: Option<Duration>, limit: Option<u64>, unit: u64) -> Duration {
            let reset = reset.unwrap_or(Duration::from_secs(1));
            match limit {
                Some(l) if l > unit => {
                    let part = reset.mul_f64(unit as f64 / l as f64);
                    part.max(Duration::from_millis(1))
                }
                _ => reset,
            }
        }
        let mut out: Option<Duration> = None;
        if self.remaining_requests == Some(0) {
            out = out.max(Some(one_unit(self.reset_requests, self.limit_requests, 1)));
        }
        if self.remaining_tokens == Some(0) {
            out = out.max(Some(one_unit(
                self.reset_tokens,
                self.limit_tokens,
                TYPICAL_REQUEST_TOKENS,
            )));
        }
        out
    }

    /// The largest wait hint that applies.
    pub fn wait_hint(&self) -> Option<Duration> {
        self.retry_after.max(self.exhausted_for())
    }
}

/// Parses a Go-style duration as OpenAI and Groq send in `x-ratelimit-reset-*`: `20ms`, `1s`,
/// `6m0s`, `1h2m3.5s`, `2m59.56s`; a bare number is taken as seconds (Azure).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(
            parse_go_duration("2m59.56s"),
            Some(Duration::from_secs_f64(179.56))
        );
        assert_eq!(parse_go_duration("55"), Some(Duration::from_secs(55)));
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn headroom_and_exhaustion() {
        let info = RateLimitInfo {
            limit_requests: Some(100),
            remaining_requests: Some(10),
            limit_tokens: Some(1000),
            remaining_tokens: Some(0),
            reset_tokens: Some(Duration::from_secs(7)),
            ..RateLimitInfo::default()
        };
        assert_eq!(info.headroom(), 0.0);
        // Token bucket of 1000 tokens refilled in 7 s: a typical request's worth frees in 7 s.
        assert_eq!(info.exhausted_for(), Some(Duration::from_secs(7)));
        let requests = RateLimitInfo {
            limit_requests: Some(60),
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_secs(60)),
            ..RateLimitInfo::default()
        };
        assert_eq!(
            requests.exhausted_for(),
            Some(Duration::from_secs(1)),
            "one request frees after reset/limit, not after the full refill"
        );
        assert!(RateLimitInfo::default().is_empty());
        assert_eq!(RateLimitInfo::default().headroom(), 1.0);
    }
}
