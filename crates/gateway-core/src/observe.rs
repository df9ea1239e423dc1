//! The `Observer` seam: telemetry sees every attempt and every finished request.
//!
//! Observers are called on the request path and must not block: gateway-telemetry counts in atomics
//! and queues records for a background writer.

use std::sync::Arc;
use std::time::Duration;

use crate::error::ProviderError;
use crate::ratelimit::RateLimitInfo;
use crate::types::Usage;

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
