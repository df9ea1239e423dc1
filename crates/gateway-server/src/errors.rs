//! Errors as clients see them, in the shape of the API they called.

use std::time::Duration;

use bytes::Bytes;
use gateway_core::{EngineError, ProviderError, Refusal};
use serde_json::json;

/// Which client API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI chat completions, embeddings, models.
    OpenAi,
    /// Anthropic messages.
    Anthropic,
}

/// The class of an error, mapped to each dialect's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400.
    InvalidRequest,
    /// 401.
    Authentication,
    /// 402.
    BudgetExceeded,
    /// 403.
    Permission,
    /// 404.
    NotFound,
    /// 413.
    TooLarge,
    /// 429.
    RateLimit,
    /// 500/502.
    Upstream,
    /// 503.
    Overloaded,
    /// 504.
    Timeout,
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Class.
    pub kind: ErrorKind,
    /// Human-readable message (never a secret).
    pub message: String,
    /// OpenAI `code`.
    pub code: Option<String>,
    /// OpenAI `param`.
    pub param: Option<String>,
    /// `retry-after` to send.
    pub retry_after: Option<Duration>,
    /// Send `x-should-retry: false`.
    pub no_retry: bool,
}

impl ApiError {
    /// A new error.
    pub fn new(status: u16, kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            code: None,
            param: None,
            retry_after: None,
            no_retry: false,
        }
    }

    /// Sets the OpenAI `code`.
    pub fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    /// Sets the OpenAI `param`.
    pub fn param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    /// 400 for a body that is not what the endpoint takes.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(400, ErrorKind::InvalidRequest, message)
    }

    /// The dialect's `type` string.
    pub fn type_name(&self, dialect: Dialect) -> &'static str {
        match (dialect, self.kind) {
            (_, ErrorKind::BudgetExceeded) => "budget_exceeded",
            (
                Dialect::OpenAi,
                ErrorKind::InvalidRequest | ErrorKind::NotFound | ErrorKind::TooLarge,
            ) => "invalid_request_error",
            (Dialect::OpenAi, ErrorKind::Authentication) => "authentication_error",
            (Dialect::OpenAi, ErrorKind::Permission) => "permission_error",
            (Dialect::OpenAi, ErrorKind::RateLimit) => "rate_limit_error",
            (Dialect::OpenAi, ErrorKind::Upstream | ErrorKind::Overloaded | ErrorKind::Timeout) => {
                "server_error"
            }
            (Dialect::Anthropic, ErrorKind::InvalidRequest) => "invalid_request_error",
            (Dialect::Anthropic, ErrorKind::Authentication) => "authentication_error",
            (Dialect::Anthropic, ErrorKind::Permission) => "permission_error",
            (Dialect::Anthropic, ErrorKind::NotFound) => "not_found_error",
            (Dialect::Anthropic, ErrorKind::TooLarge) => "request_too_large",
            (Dialect::Anthropic, ErrorKind::RateLimit) => "rate_limit_error",
            (Dialect::Anthropic, ErrorKind::Upstream) => "api_error",
            (Dialect::Anthropic, ErrorKind::Overloaded) => "overloaded_error",
            (Dialect::Anthropic, ErrorKind::Timeout) => "timeout_error",
        }
    }

    /// The HTTP status for a dialect: the same for both. Anthropic's own overload status, 529,
    /// is not used: when the gateway gives up on every candidate it answers 502/503/504, and a
    /// 503 with `overloaded_error` is what Anthropic's SDK reads as overloaded too.
    pub fn status_for(&self, _dialect: Dialect) -> u16 {
        self.status
    }

    /// The JSON body in the dialect's shape.
    pub fn body(&self, dialect: Dialect, request_id: &str) -> Bytes {
        let v = match dialect {
            Dialect::OpenAi => json!({
                "error": {
                    "message": self.message,
                    "type": self.type_name(dialect),
                    "param": self.param,
                    "code": self.code,
                }
            }),
            Dialect::Anthropic => json!({
                "type": "error",
                "error": { "type": self.type_name(dialect), "message": self.message },
                "request_id": request_id,
            }),
        };
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }

    /// The in-band stream error event in the dialect's SSE framing.
    pub fn sse_event(&self, dialect: Dialect, request_id: &str) -> Bytes {
        let body = self.body(dialect, request_id);
        let mut out = Vec::with_capacity(body.len() + 32);
        if dialect == Dialect::Anthropic {
            out.extend_from_slice(b"event: error\n");
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&body);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

/// Upstream messages can quote the key they were sent ("Incorrect API key provided: sk-..."): the
/// same scrubber the request logs use keeps them out of client-facing errors.
fn strip_secrets(msg: &str) -> String {
    gateway_telemetry::scrub::scrub(msg).into_owned()
}

fn from_provider(e: &ProviderError, status: u16) -> ApiError {
    match e {
        ProviderError::BadRequest {
            status,
            message,
            param,
            code,
        } => {
            let mut a = ApiError::new(*status, ErrorKind::InvalidRequest, strip_secrets(message));
            a.param.clone_from(param);
            a.code.clone_from(code);
            if *status == 413 {
                a.kind = ErrorKind::TooLarge;
            }
            a
        }
        ProviderError::ContextLengthExceeded { message } => {
            ApiError::new(400, ErrorKind::InvalidRequest, strip_secrets(message))
                .code("context_length_exceeded")
                .param("messages")
        }
        ProviderError::ContentFiltered { message } => {
            ApiError::new(400, ErrorKind::InvalidRequest, strip_secrets(message))
                .code("content_filter")
        }
        ProviderError::NotFound { message } => {
            ApiError::new(404, ErrorKind::NotFound, strip_secrets(message)).code("model_not_found")
        }
        ProviderError::Unsupported { message, param } => {
            let mut a = ApiError::new(400, ErrorKind::InvalidRequest, message.clone())
                .code("unsupported_parameter");
            a.param.clone_from(param);
            a
        }
        other => {
            let kind = match status {
                429 => ErrorKind::RateLimit,
                503 => ErrorKind::Overloaded,
                504 => ErrorKind::Timeout,
                _ => ErrorKind::Upstream,
            };
            ApiError::new(status, kind, strip_secrets(&other.to_string()))
        }
    }
}

impl From<&EngineError> for ApiError {
    fn from(e: &EngineError) -> Self {
        let status = e.http_status();
        let mut a = match e {
            EngineError::UnknownModel(m) => ApiError::new(
                404,
                ErrorKind::NotFound,
                format!("The model `{m}` does not exist or is not served by this gateway"),
            )
            .code("model_not_found")
            .param("model"),
            EngineError::InvalidRequest(m) => ApiError::new(403, ErrorKind::Permission, m.clone()),
            EngineError::AllRateLimited { retry_after } => ApiError::new(
                503,
                ErrorKind::Overloaded,
                format!(
                    "every upstream key for this model is rate limited; the first resets in {} s",
                    retry_after.as_secs().max(1)
                ),
            )
            .code("upstream_rate_limited"),
            EngineError::Unavailable { retry_after } => ApiError::new(
                503,
                ErrorKind::Upstream,
                format!(
                    "every upstream key for this model is out of service (credential refused, quota exhausted, or ejected after failures); the first may be tried again in {} s",
                    retry_after.as_secs().max(1)
                ),
            )
            .code("upstream_unavailable"),
            EngineError::Caller(p) => from_provider(p, status),
            EngineError::Exhausted { attempts, last } => {
                let mut a = from_provider(last, status);
                if !matches!(
                    last,
                    ProviderError::NotFound { .. } | ProviderError::Unsupported { .. }
                ) {
                    a.message = format!(
                        "all {attempts} upstream attempt(s) failed; last error: {}",
                        a.message
                    );
                    a.code = Some(
                        match last {
                            ProviderError::RateLimited { .. } => "upstream_rate_limited",
                            _ => "upstream_error",
                        }
                        .to_owned(),
                    );
                }
                a
            }
            EngineError::DeadlineExceeded { attempts } => ApiError::new(
                504,
                ErrorKind::Timeout,
                format!("request deadline exceeded after {attempts} upstream attempt(s)"),
            ),
            EngineError::Cancelled => ApiError::new(499, ErrorKind::Upstream, "request cancelled"),
        };
        a.retry_after = e.retry_after();
        a
    }
}

impl From<&Refusal> for ApiError {
    fn from(r: &Refusal) -> Self {
        match r {
            Refusal::Unauthorized(m) => {
                ApiError::new(401, ErrorKind::Authentication, m.clone()).code("invalid_api_key")
            }
            Refusal::Forbidden(m) => {
                ApiError::new(403, ErrorKind::Permission, m.clone()).code("forbidden")
            }
            Refusal::RateLimited {
                message,
                retry_after,
            } => {
                let mut a = ApiError::new(429, ErrorKind::RateLimit, message.clone())
                    .code("rate_limit_exceeded");
                a.retry_after = Some(*retry_after);
                a
            }
            Refusal::BudgetExceeded { message, .. } => {
                let mut a = ApiError::new(402, ErrorKind::BudgetExceeded, message.clone())
                    .code("budget_exceeded");
                a.no_retry = true;
                a
            }
            Refusal::Unavailable(m) => ApiError::new(503, ErrorKind::Overloaded, m.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_per_dialect() {
        let e = ApiError::invalid("bad json").param("messages");
        let o: serde_json::Value = serde_json::from_slice(&e.body(Dialect::OpenAi, "r1")).unwrap();
        assert_eq!(o["error"]["type"], "invalid_request_error");
        assert_eq!(o["error"]["param"], "messages");
        let a: serde_json::Value =
            serde_json::from_slice(&e.body(Dialect::Anthropic, "r1")).unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "invalid_request_error");
        let over = ApiError::new(503, ErrorKind::Overloaded, "busy");
        assert_eq!(over.status_for(Dialect::Anthropic), 503);
        let a: serde_json::Value =
            serde_json::from_slice(&over.body(Dialect::Anthropic, "r1")).unwrap();
        assert_eq!(a["error"]["type"], "overloaded_error");
        assert_eq!(over.status_for(Dialect::OpenAi), 503);
    }

    #[test]
    fn upstream_messages_lose_quoted_keys() {
        let e = EngineError::Exhausted {
            attempts: 1,
            last: ProviderError::Auth {
                status: 401,
                message: "Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz."
                    .to_owned(),
            },
        };
        let a = ApiError::from(&e);
        assert_eq!(a.status, 502);
        assert!(!a.message.contains("abcdefghijklmnop"), "{}", a.message);
    }
}
