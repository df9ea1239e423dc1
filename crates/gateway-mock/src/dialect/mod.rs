//! Per-provider rendering: request parsing, success bodies, stream events, errors and headers.
//!
//! Each submodule turns the dialect's request into a [`Prompt`](crate::plan::Prompt) and renders
//! a [`Plan`](crate::plan::Plan) in that provider's exact shape; this module dispatches on
//! [`Dialect`].

pub(crate) mod anthropic;
pub(crate) mod bedrock;
pub(crate) mod cohere;
pub(crate) mod completions;
pub(crate) mod google;
pub(crate) mod openai;
pub(crate) mod responses;

use std::time::Duration;

use bytes::Bytes;

use crate::state::{LimitKind, RateSnapshot};
use crate::Dialect;

/// A refusal, rendered in the dialect's own error shape.
#[derive(Debug, Clone)]
pub(crate) enum ErrorKind {
    /// No credential at all.
    MissingKey,
    /// A key that is not registered (Bedrock: unknown access key id); the key as sent.
    InvalidKey(String),
    /// Vertex: unknown token.
    TokenInvalid,
    /// Vertex: expired token.
    TokenExpired,
    /// Bedrock SigV4 refusal: (exception type, message).
    Signature(&'static str, String),
    /// A validation error (400).
    BadRequest(String),
    /// Unknown model, deployment or route (404).
    NotFound(String),
    /// Per-key limit hit (or `rate_limit_always`).
    RateLimited {
        kind: LimitKind,
        limit: u64,
        used: u64,
        requested: u64,
        retry_after: Duration,
    },
    /// Quota or billing exhausted.
    Quota,
    /// An injected server error with this status.
    Server(u16),
}

impl ErrorKind {
    pub(crate) fn rate_limited(snap: &RateSnapshot, kind: LimitKind) -> Self {
        let (limit, used, requested) = match kind {
            LimitKind::Requests => (snap.req_limit, snap.req_used, 1),
            LimitKind::Tokens => (snap.tok_limit, snap.tok_used, snap.requested_tokens),
        };
        Self::RateLimited {
            kind,
            limit,
            used,
            requested,
            retry_after: snap.reset.max(Duration::from_millis(1)),
        }
    }
}

/// A rendered error: status, JSON body and extra headers.
#[derive(Debug)]
pub(crate) struct ErrorResponse {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

/// What a renderer needs besides the plan.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub dialect: Dialect,
    pub model: &'a str,
    pub created: u64,
    pub include_usage: bool,
    /// Gemini streams: SSE (`alt=sse`) or a streamed JSON array.
    pub sse: bool,
    /// Bedrock `InvokeModel`: Anthropic's body and events.
    pub invoke: bool,
    /// OpenAI Responses API: the request, whose settings the answer echoes.
    pub responses: Option<&'a serde_json::Value>,
    /// OpenAI's legacy Completions API.
    pub completions: bool,
}

/// Renders an error in the dialect's shape.
pub(crate) fn error(d: Dialect, e: &ErrorKind, seq: u64) -> ErrorResponse {
    match d {
        Dialect::OpenAi => openai::error(e),
        Dialect::Azure => openai::azure_error(e),
        Dialect::Anthropic => anthropic::error(e, seq),
        Dialect::Gemini => google::error(e, false),
        Dialect::Vertex => google::error(e, true),
        Dialect::Bedrock => bedrock::error(e),
        Dialect::Cohere => cohere::error(e, seq),
    }
}

/// The in-band error event sent mid-stream.
pub(crate) fn stream_error(ctx: &Ctx<'_>, status: u16, sent: usize) -> Bytes {
    match ctx.dialect {
        Dialect::OpenAi | Dialect::Azure if ctx.responses.is_some() => {
            responses::stream_error(status, sent)
        }
        Dialect::OpenAi | Dialect::Azure => openai::stream_error(status),
        Dialect::Anthropic => anthropic::stream_error(status),
        Dialect::Gemini | Dialect::Vertex => google::stream_error(status, ctx.sse, sent),
        Dialect::Bedrock => bedrock::stream_error(status),
        Dialect::Cohere => cohere::stream_error(status),
    }
}

/// Headers every response of the dialect carries (request ids and the like).
pub(crate) fn common_headers(d: Dialect, seq: u64, out: &mut Vec<(&'static str, String)>) {
    match d {
        Dialect::OpenAi => {
            out.push(("x-request-id", format!("req_mock{seq:020}")));
            out.push(("openai-processing-ms", "1".to_owned()));
        }
        Dialect::Azure => {
            out.push((
                "apim-request-id",
                format!("00000000-0000-4000-8000-{seq:012}"),
            ));
            out.push(("x-request-id", format!("00000000-0000-4000-8000-{seq:012}")));
            out.push(("x-ms-region", "Mock Region".to_owned()));
        }
        Dialect::Anthropic => out.push(("request-id", format!("req_mock{seq:020}"))),
        Dialect::Bedrock => out.push((
            "x-amzn-requestid",
            format!("00000000-0000-4000-8000-{seq:012}"),
        )),
        Dialect::Cohere => out.push(("x-request-id", format!("mock-{seq}"))),
        Dialect::Gemini | Dialect::Vertex => {}
    }
}

/// Rate-limit headers (every response of the dialects that send them).
pub(crate) fn rate_headers(d: Dialect, s: &RateSnapshot, out: &mut Vec<(&'static str, String)>) {
    match d {
        Dialect::OpenAi | Dialect::Azure => {
            let reset = crate::format::go_duration(s.reset);
            out.push(("x-ratelimit-limit-requests", s.req_limit.to_string()));
            out.push((
                "x-ratelimit-remaining-requests",
                s.req_remaining.to_string(),
            ));
            out.push(("x-ratelimit-reset-requests", reset.clone()));
            out.push(("x-ratelimit-limit-tokens", s.tok_limit.to_string()));
            out.push(("x-ratelimit-remaining-tokens", s.tok_remaining.to_string()));
            out.push(("x-ratelimit-reset-tokens", reset));
        }
        Dialect::Anthropic => {
            let reset = crate::format::rfc3339(s.reset_unix);
            out.push((
                "anthropic-ratelimit-requests-limit",
                s.req_limit.to_string(),
            ));
            out.push((
                "anthropic-ratelimit-requests-remaining",
                s.req_remaining.to_string(),
            ));
            out.push(("anthropic-ratelimit-requests-reset", reset.clone()));
            for (limit, remaining, reset_name) in [
                (
                    "anthropic-ratelimit-tokens-limit",
                    "anthropic-ratelimit-tokens-remaining",
                    "anthropic-ratelimit-tokens-reset",
                ),
                (
                    "anthropic-ratelimit-input-tokens-limit",
                    "anthropic-ratelimit-input-tokens-remaining",
                    "anthropic-ratelimit-input-tokens-reset",
                ),
                (
                    "anthropic-ratelimit-output-tokens-limit",
                    "anthropic-ratelimit-output-tokens-remaining",
                    "anthropic-ratelimit-output-tokens-reset",
                ),
            ] {
                out.push((limit, s.tok_limit.to_string()));
                out.push((remaining, s.tok_remaining.to_string()));
                out.push((reset_name, reset.clone()));
            }
        }
        Dialect::Gemini | Dialect::Vertex | Dialect::Bedrock | Dialect::Cohere => {}
    }
}

/// `data: <json>\n\n`
pub(crate) fn sse_data(json: &str) -> Bytes {
    let mut s = String::with_capacity(json.len() + 8);
    s.push_str("data: ");
    s.push_str(json);
    s.push_str("\n\n");
    Bytes::from(s)
}

/// `event: <name>\ndata: <json>\n\n`
pub(crate) fn sse_event(name: &str, json: &str) -> Bytes {
    let mut s = String::with_capacity(json.len() + name.len() + 16);
    s.push_str("event: ");
    s.push_str(name);
    s.push_str("\ndata: ");
    s.push_str(json);
    s.push_str("\n\n");
    Bytes::from(s)
}

/// A key shown in error messages the way providers redact it.
pub(crate) fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "****".to_owned();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}
