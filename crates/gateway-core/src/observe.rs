//! The `Observer` seam: telemetry sees every attempt and every finished request.
//!
//! Observers are called on the request path and must not block: gateway-telemetry counts in atomics
//! and queues records for a background writer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::ProviderError;
use crate::ratelimit::RateLimitInfo;
use crate::types::Usage;

/// W3C trace context of one request: the client's trace (or a new one) and the gateway's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 128-bit trace id.
    pub trace_id: u128,
    /// The gateway's span for this request.
    pub span_id: u64,
    /// The client's span, when it sent a `traceparent`.
    pub parent_span_id: Option<u64>,
    /// The sampled flag.
    pub sampled: bool,
}

impl TraceContext {
    /// Continues the client's `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), or starts a new trace.
    pub fn from_traceparent(header: Option<&str>, rng: &mut fastrand::Rng) -> Self {
        let span_id = rng.u64(1..);
        if let Some(h) = header {
            let parts: Vec<&str> = h.trim().split('-').collect();
            if parts.len() == 4
                && parts[0].len() == 2
                && parts[1].len() == 32
                && parts[2].len() == 16
            {
                if let (Ok(t), Ok(p), Ok(f)) = (
                    u128::from_str_radix(parts[1], 16),
                    u64::from_str_radix(parts[2], 16),
                    u8::from_str_radix(&parts[3][..parts[3].len().min(2)], 16),
                ) {
                    if t != 0 && p != 0 && parts[0] != "ff" {
                        return TraceContext {
                            trace_id: t,
                            span_id,
                            parent_span_id: Some(p),
                            sampled: f & 1 == 1,
                        };
                    }
                }
            }
        }
        TraceContext {
            trace_id: (u128::from(rng.u64(1..)) << 64) | u128::from(rng.u64(..)),
            span_id,
            parent_span_id: None,
            sampled: true,
        }
    }

    /// The `traceparent` header naming `span_id` as the parent (for an upstream call).
    pub fn traceparent_for(&self, span_id: u64) -> String {
        // `00-<32 hex>-<16 hex>-<2 hex>`, written without `format!` (once per upstream call).
        let mut b = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_digits(&mut b[3..35], self.trace_id);
        hex_digits(&mut b[36..52], u128::from(span_id));
        b[54] = if self.sampled { b'1' } else { b'0' };
        b.iter().copied().map(char::from).collect()
    }
}

/// Writes the low `out.len()` decimal digits of `v` into `out`, most significant first
/// (zero-padded).
pub fn decimal_digits(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Writes the low `out.len()` lowercase hex digits of `v` into `out`, most significant first.
pub fn hex_digits(out: &mut [u8], mut v: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// One upstream attempt, as it ended.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// Provider name.
    pub provider: Arc<str>,
    /// Provider kind.
    pub provider_kind: Arc<str>,
    /// Key name (never the secret).
    pub key: Arc<str>,
    /// Upstream model id.
    pub model: Arc<str>,
    /// `ok` or the error class ([`ProviderError::outcome`]).
    pub outcome: &'static str,
    /// The error, if any.
    pub error: Option<ProviderError>,
    /// Time until the answer (or the first chunk of a stream).
    pub latency: Duration,
    /// Time to first token, for streams.
    pub ttft: Option<Duration>,
    /// Headroom the provider reported.
    pub rate_limit: RateLimitInfo,
    /// Whether this attempt retried the same provider.
    pub is_retry: bool,
    /// The provider of the previous attempt, when this one moved to another provider.
    pub fallback_from: Option<Arc<str>>,
    /// When the attempt started.
    pub started_at: SystemTime,
    /// The attempt's span id (its `traceparent` upstream names it), when the request is traced.
    pub span_id: Option<u64>,
}

/// One client request, as it finished.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord {
    /// The gateway request id.
    pub request_id: String,
    /// Unix milliseconds when it arrived.
    pub started_at_ms: u64,
    /// The virtual key's name, if any.
    pub virtual_key: Option<String>,
    /// `chat`, `messages`, `embeddings`.
    pub endpoint: &'static str,
    /// The model the client asked for.
    pub requested_model: String,
    /// The route it resolved to, if a route.
    pub route: Option<String>,
    /// Every attempt.
    pub attempts: Vec<AttemptRecord>,
    /// Who served it in the end.
    pub provider: Option<String>,
    /// The upstream model that answered.
    pub model: Option<String>,
    /// Whether it was streamed.
    pub stream: bool,
    /// Tokens.
    pub usage: Option<Usage>,
    /// Cost in USD.
    pub cost_usd: f64,
    /// HTTP status returned to the client.
    pub status: u16,
    /// The error returned, if any.
    pub error: Option<String>,
    /// Total time.
    pub duration: Duration,
    /// Time to first byte for streams.
    pub ttft: Option<Duration>,
    /// Request and response bodies, only when content logging is on.
    pub content: Option<(String, String)>,
    /// The request's trace context.
    pub trace: Option<TraceContext>,
    /// Why admission refused the request (`unauthorized`, `forbidden`, `rate_limited`,
    /// `budget_exceeded`, `unavailable`), when it did.
    pub refusal: Option<&'static str>,
    /// The requested model names a route, provider model or served model of this gateway, though
    /// nothing was attempted (a refusal): it may label metrics like a served one.
    pub known_model: bool,
    /// The answer cache's part: `hit` (served from it, nothing attempted) or `miss` (looked up,
    /// not found); `None` when the cache was not asked.
    pub cache: Option<&'static str>,
}

/// Sees attempts and requests. Must not block.
pub trait Observer: Send + Sync + 'static {
    /// An upstream attempt ended.
    fn on_attempt(&self, record: &AttemptRecord) {
        let _ = record;
    }

    /// A client request finished.
    fn on_finish(&self, record: &RequestRecord) {
        let _ = record;
    }
}

/// An observer that does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

/// Several observers, called in order.
#[derive(Default, Clone)]
pub struct Observers(pub Vec<Arc<dyn Observer>>);

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Observers({})", self.0.len())
    }
}

impl Observer for Observers {
    fn on_attempt(&self, record: &AttemptRecord) {
        for o in &self.0 {
            o.on_attempt(record);
        }
    }

    fn on_finish(&self, record: &RequestRecord) {
        for o in &self.0 {
            o.on_finish(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_continued_or_started() {
        let mut rng = fastrand::Rng::with_seed(1);
        let t = TraceContext::from_traceparent(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            &mut rng,
        );
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.parent_span_id, Some(0x00f067aa0ba902b7));
        assert!(t.sampled);
        let child = t.traceparent_for(0xabc);
        assert_eq!(
            child,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
        let unsampled = TraceContext {
            trace_id: 1,
            span_id: 2,
            parent_span_id: None,
            sampled: false,
        };
        assert_eq!(
            unsampled.traceparent_for(u64::MAX),
            "00-00000000000000000000000000000001-ffffffffffffffff-00"
        );
        let fresh = TraceContext::from_traceparent(Some("garbage"), &mut rng);
        assert!(fresh.parent_span_id.is_none() && fresh.trace_id != 0);
    }

    #[test]
    fn decimal_digits_are_zero_padded_and_keep_the_low_ones() {
        let mut out = [0u8; 5];
        decimal_digits(&mut out, 42);
        assert_eq!(&out, b"00042");
        decimal_digits(&mut out, 1_234_567);
        assert_eq!(&out, b"34567");
    }

    #[test]
    fn hex_digits_writes_the_low_digits_most_significant_first() {
        let mut out = [0u8; 6];
        hex_digits(&mut out, 0x1234_5678_9abc);
        assert_eq!(&out, b"789abc");
        let mut out = [0u8; 12];
        hex_digits(&mut out, 0xab);
        assert_eq!(&out, b"0000000000ab");
        let mut out = [0u8; 4];
        hex_digits(&mut out, u128::from(u64::MAX));
        assert_eq!(&out, b"ffff");
        let mut out = [0u8; 32];
        hex_digits(&mut out, u128::MAX - 1);
        assert_eq!(&out, b"fffffffffffffffffffffffffffffffe");
    }
}

/// A URL with its user-info (`user:password@`) and query string replaced by `***`: fit for logs
/// and admin answers.
pub fn redact_url(u: &str) -> String {
    let mut out = u.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        if let Some(at) = rest.find('@') {
            if rest[..at].find('/').is_none() {
                out = format!("{}***@{}", &out[..scheme_end + 3], &rest[at + 1..]);
            }
        }
    }
    if let Some(q) = out.find('?') {
        out.truncate(q);
        out.push_str("?***");
    }
    out
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn user_info_and_queries_are_hidden() {
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("https://h.invalid/v1?key=s"),
            "https://h.invalid/v1?***"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        // An `@` in the path is not user-info.
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
    }
}
