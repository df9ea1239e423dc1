//! The request log record: one [`LogEntry`] per client request, with its [`AttemptEntry`]s.
//!
//! Built from gateway-core's [`RequestRecord`] off nothing but names and numbers: key names, never
//! secrets; error strings go through [`crate::scrub::scrub`]; content only when content logging is
//! on *and* the server filled it. The same shape is stored, served by `GET /admin/logs` and printed
//! as one JSON line on stdout.

use gateway_core::observe::{AttemptRecord, RequestRecord};
use gateway_core::ProviderError;
use serde::{Deserialize, Serialize};

use crate::scrub::scrub;
use crate::time::{format_rfc3339_ms, system_ms};

/// Tokens of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// Input tokens, cached ones included.
    pub prompt: u64,
    /// Output tokens.
    pub completion: u64,
    /// Input tokens served from the provider's cache.
    pub cached: u64,
}

/// One upstream attempt of a logged request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptEntry {
    /// Provider name.
    pub provider: String,
    /// Provider kind (`openai`, `anthropic`...).
    pub provider_kind: String,
    /// Key name (never the secret).
    pub key: String,
    /// Upstream model id.
    pub model: String,
    /// `ok` or the error class (`rate_limited`, `server_error`, `cancelled`...).
    pub outcome: String,
    /// HTTP status the upstream answered, when there was an answer.
    pub status: Option<u16>,
    /// The error, scrubbed.
    pub error: Option<String>,
    /// Milliseconds until the answer (or the first chunk of a stream).
    pub latency_ms: f64,
    /// Milliseconds to the first token, for streams.
    pub ttft_ms: Option<f64>,
    /// Whether this attempt retried the same provider.
    pub is_retry: bool,
    /// The provider of the previous attempt, when this one failed over from it.
    pub fallback_from: Option<String>,
    /// Unix milliseconds when the attempt started.
    pub started_at_ms: u64,
    /// The attempt's span id (16 hex digits), when traced.
    pub span_id: Option<String>,
}

/// Prompt and completion, logged only with `[logging] content = true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Content {
    /// The request body.
    pub request: String,
    /// The response body.
    pub response: String,
}

/// One client request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The gateway request id.
    pub id: String,
    /// Unix milliseconds when it arrived.
    pub timestamp_ms: u64,
    /// The same instant in RFC 3339.
    pub time: String,
    /// The virtual key's name, if any.
    pub virtual_key: Option<String>,
    /// `chat`, `messages`, `embeddings`.
    pub endpoint: String,
    /// The model the client asked for.
    pub requested_model: String,
    /// The route it resolved to.
    pub route: Option<String>,
    /// Who served it in the end.
    pub provider: Option<String>,
    /// The upstream model that answered.
    pub model: Option<String>,
    /// Whether it was streamed.
    pub stream: bool,
    /// HTTP status returned to the client.
    pub status: u16,
    /// The error returned, scrubbed.
    pub error: Option<String>,
    /// Total milliseconds.
    pub duration_ms: f64,
    /// Milliseconds to the first byte, for streams.
    pub ttft_ms: Option<f64>,
    /// Tokens.
    pub tokens: Tokens,
    /// Cost in USD.
    pub cost_usd: f64,
    /// Trace id (32 hex digits).
    pub trace_id: Option<String>,
    /// The gateway's span id for this request (16 hex digits).
    pub span_id: Option<String>,
    /// Every upstream attempt, in order.
    pub attempts: Vec<AttemptEntry>,
    /// `hit` when the answer came from the answer cache, `miss` when it was looked up there
    /// and not found; absent when the cache was not asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// Prompt and completion, only with content logging on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
}

/// The HTTP status behind an attempt's outcome, when the upstream answered.
pub fn attempt_status(a: &AttemptRecord) -> Option<u16> {
    match &a.error {
        None => Some(200),
        Some(e) => match e {
            ProviderError::RateLimited { .. } => Some(429),
            ProviderError::Overloaded { .. } => Some(503),
            ProviderError::Server { status, .. }
            | ProviderError::Auth { status, .. }
            | ProviderError::BadRequest { status, .. } => Some(*status),
            ProviderError::NotFound { .. } => Some(404),
            ProviderError::ContextLengthExceeded { .. } | ProviderError::ContentFiltered { .. } => {
                Some(400)
            }
            ProviderError::Protocol(_) => Some(200),
            // Refused by the adapter: nothing was sent.
            ProviderError::Unsupported { .. } => None,
            ProviderError::Timeout | ProviderError::Connect(_) | ProviderError::Cancelled => None,
        },
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl AttemptEntry {
    /// The log form of one attempt.
    pub fn from_attempt(a: &AttemptRecord) -> Self {
        AttemptEntry {
            provider: a.provider.to_string(),
            provider_kind: a.provider_kind.to_string(),
            key: a.key.to_string(),
            model: a.model.to_string(),
            outcome: a.outcome.to_owned(),
            status: attempt_status(a),
            error: a.error.as_ref().map(|e| scrub(&e.to_string()).into_owned()),
            latency_ms: ms(a.latency),
            ttft_ms: a.ttft.map(ms),
            is_retry: a.is_retry,
            fallback_from: a.fallback_from.as_deref().map(str::to_owned),
            started_at_ms: system_ms(a.started_at),
            span_id: a.span_id.map(|s| format!("{s:016x}")),
        }
    }
}

impl Tokens {
    /// Tokens of a finished request (zero when the provider reported none).
    pub fn of(record: &RequestRecord) -> Self {
        record.usage.map_or_else(Tokens::default, |u| Tokens {
            prompt: u.prompt_tokens,
            completion: u.completion_tokens,
            cached: u.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
        })
    }
}

impl LogEntry {
    /// The log form of a finished request; `content` only when `log_content`.
    pub fn from_record(r: &RequestRecord, log_content: bool) -> Self {
        LogEntry {
            id: r.request_id.clone(),
            timestamp_ms: r.started_at_ms,
            time: format_rfc3339_ms(r.started_at_ms),
            virtual_key: r.virtual_key.clone(),
            endpoint: r.endpoint.to_owned(),
            requested_model: r.requested_model.clone(),
            route: r.route.clone(),
            provider: r.provider.clone(),
            model: r.model.clone(),
            stream: r.stream,
            status: r.status,
            error: r.error.as_deref().map(|e| scrub(e).into_owned()),
            duration_ms: ms(r.duration),
            ttft_ms: r.ttft.map(ms),
            tokens: Tokens::of(r),
            cost_usd: r.cost_usd,
            trace_id: r.trace.map(|t| format!("{:032x}", t.trace_id)),
            span_id: r.trace.map(|t| format!("{:016x}", t.span_id)),
            attempts: r.attempts.iter().map(AttemptEntry::from_attempt).collect(),
            cache: r.cache.map(str::to_owned),
            content: if log_content {
                r.content.as_ref().map(|(req, resp)| Content {
                    request: scrub(req).into_owned(),
                    response: scrub(resp).into_owned(),
                })
            } else {
                None
            },
        }
    }

    /// The index of the attempt that served the request (the last one that succeeded; a stream
    /// that broke after its first chunk still consumed tokens there).
    pub fn serving_attempt(&self) -> Option<usize> {
        self.attempts.iter().rposition(|a| a.outcome == "ok")
    }
}
