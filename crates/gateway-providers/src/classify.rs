//! Upstream failures into [`ProviderError`] classes (wire-formats §8.2).
//!
//! [`parse_error_body`] reads whatever error body a provider sends: OpenAI and compatibles
//! (`{"error":{"message","type","param","code"}}`, with string or integer codes as Azure and
//! OpenRouter send), Anthropic (`{"type":"error","error":{"type","message"}}`), vLLM
//! (`{"object":"error","message","type","code"}`), Gemini-style `{"error":{"code","message",
//! "status","details"}}`, a bare `{"message"}` or `{"error":"..."}`, or plain text.
//! [`classify_details`] then decides the class from the status, the headers and the details:
//!
//! | signal | class |
//! |---|---|
//! | context overflow (`context_length_exceeded`, "prompt is too long", "maximum context length", "input is too long", "exceeds the maximum number of tokens") | `ContextLengthExceeded` |
//! | `content_filter`, `ResponsibleAIPolicyViolation` | `ContentFiltered` |
//! | 402, `insufficient_quota`, `billing_error`, "credit balance is too low", "exceeded your current quota", a 429 asking to wait a day or more | `RateLimited { scope: Quota }` |
//! | other 429 | `RateLimited { scope: Key }`, wait from `retry-after(-ms)`, the message ("try again in 644ms", "retry after 6 seconds") or the exhausted window |
//! | 401, 403, 498, `API_KEY_INVALID` | `Auth` |
//! | 404, `model_not_found`, `DeploymentNotFound` | `NotFound` |
//! | 503, 529, `overloaded_error` | `Overloaded` |
//! | 408, 409, other 5xx | `Server` |
//! | other 4xx | `BadRequest { status, message, param, code }` |
//!
//! `x-should-retry: true` turns a caller error into `Server` (retry); `x-should-retry: false` turns
//! `Server` into `Overloaded` (do not retry here, go to another provider).
//!
//! Adapters for other dialects (Gemini, Bedrock, Cohere) can parse their own body into
//! [`ErrorDetails`] and reuse [`classify_details`].

use std::time::Duration;

use gateway_core::ratelimit::parse_go_duration;
use gateway_core::{ProviderError, RateLimitScope};
use http::HeaderMap;
use serde_json::Value;

use crate::headers::{rate_limit_info, retry_after, should_retry};

/// A retry hint of a day or more on a 429 means the daily quota is gone (Azure "retry after 86400
/// seconds").
pub const QUOTA_WAIT: Duration = Duration::from_secs(86_400);

/// What an error body says, in any dialect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetails {
    /// The human-readable message (may be empty).
    pub message: String,
    /// The error type: OpenAI `type`, Anthropic `error.type`, Gemini `status`.
    pub kind: Option<String>,
    /// The error code, as text even when the provider sends a number.
    pub code: Option<String>,
    /// The offending parameter.
    pub param: Option<String>,
    /// A nested code: Azure `innererror.code`, or the first Gemini `details[].reason`.
    pub inner_code: Option<String>,
}

impl ErrorDetails {
    /// Details with just a message.
    pub fn message(message: impl Into<String>) -> Self {
        ErrorDetails {
            message: message.into(),
            ..ErrorDetails::default()
        }
    }

    fn code_is(&self, want: &str) -> bool {
        [&self.code, &self.kind, &self.inner_code]
            .into_iter()
            .flatten()
            .any(|c| c.eq_ignore_ascii_case(want))
    }
}

/// Reads an error body of any known shape. Non-JSON bodies become the message (trimmed and cut to
/// 500 bytes).
pub fn parse_error_body(body: &[u8]) -> ErrorDetails {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => error_details(&v),
        _ => {
            let text = String::from_utf8_lossy(body);
            ErrorDetails::message(truncate(text.trim(), 500))
        }
    }
}

/// Reads error details from a parsed body or in-band stream error.
pub fn error_details(v: &Value) -> ErrorDetails {
    let obj = match v.get("error") {
        Some(Value::String(s)) => {
            return ErrorDetails {
                message: s.clone(),
                kind: str_field(v, "type"),
                code: code_field(v),
                ..ErrorDetails::default()
            }
        }
        Some(e @ Value::Object(_)) => e,
        _ => v,
    };
    let inner_code = obj
        .get("innererror")
        .and_then(|i| i.get("code"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            obj.get("details")
                .and_then(Value::as_array)
                .and_then(|d| d.iter().find_map(|x| x.get("reason")?.as_str()))
                .map(str::to_owned)
        });
    ErrorDetails {
        message: message_text(obj),
        kind: str_field(obj, "type").or_else(|| str_field(obj, "status")),
        code: code_field(obj),
        param: str_field(obj, "param"),
        inner_code,
    }
}

/// An error's text: its `message` string, or a validation error's `detail` (FastAPI-style, as
/// Mistral and vLLM send: `{"detail": [{"loc": [..], "msg": ".."}]}`, at the top or inside
/// `message`), so a 422 names the field it is about.
fn message_text(obj: &Value) -> String {
    let detail = |v: &Value| -> Option<String> {
        match v.get("detail")? {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .take(5)
                    .map(|item| {
                        let msg = item.get("msg").and_then(Value::as_str).unwrap_or("invalid");
                        let loc: Vec<String> = item
                            .get("loc")
                            .and_then(Value::as_array)
                            .map(|l| {
                                l.iter()
                                    .map(|p| match p {
                                        Value::String(s) => s.clone(),
                                        other => other.to_string(),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        if loc.is_empty() {
                            msg.to_owned()
                        } else {
                            format!("{}: {msg}", loc.join("."))
                        }
                    })
                    .collect();
                (!parts.is_empty()).then(|| parts.join("; "))
            }
            _ => None,
        }
    };
    match obj.get("message") {
        Some(Value::String(s)) => s.clone(),
        Some(m @ Value::Object(_)) => detail(m).unwrap_or_else(|| m.to_string()),
        _ => detail(obj).unwrap_or_default(),
    }
}

/// Classifies a non-success response from its status, headers and raw body.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    classify_details(status, headers, &parse_error_body(body))
}

/// Classifies a non-success response from its status, headers and parsed details.
pub fn classify_details(status: u16, headers: &HeaderMap, details: &ErrorDetails) -> ProviderError {
    let err = classify_inner(status, headers, details);
    match (should_retry(headers), err) {
        (
            Some(true),
            ProviderError::BadRequest {
                status, message, ..
            },
        ) => ProviderError::Server { status, message },
        (Some(false), ProviderError::Server { message, .. }) => ProviderError::Overloaded {
            retry_after: retry_after(headers),
            message,
        },
        (_, err) => err,
    }
}

/// Classifies an error that arrived inside a stream after a 200: OpenAI `data: {"error":{..}}`,
/// Anthropic `event: error`, vLLM `{"object":"error",..}`. The status is taken from a numeric
/// `code` when there is one, else inferred from the error type (unknown types count as 500).
pub fn classify_stream_error(value: &Value) -> ProviderError {
    let details = error_details(value);
    let status = details
        .code
        .as_deref()
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (400..=599).contains(c))
        .unwrap_or_else(|| status_for_type(&details));
    classify_details(status, &HeaderMap::new(), &details)
}

/// Whether a stream payload is an in-band error rather than a chunk.
pub fn is_stream_error(value: &Value) -> bool {
    value.get("error").is_some_and(|e| !e.is_null())
        || value.get("object").and_then(Value::as_str) == Some("error")
        || value.get("type").and_then(Value::as_str) == Some("error")
}

/// A wait hint written in an error message: "Please try again in 644ms", "try again in 1.5s",
/// "Please retry after 6 seconds".
pub fn message_retry_hint(message: &str) -> Option<Duration> {
    let lc = message.to_ascii_lowercase();
    if let Some(i) = lc.find("try again in ") {
        let rest = &lc[i + "try again in ".len()..];
        let token: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect();
        let token = token.trim_end_matches('.');
        if let Some(d) = parse_go_duration(token) {
            return Some(d);
        }
        if let Some(secs) = leading_number(rest) {
            if rest[secs.1..].trim_start().starts_with("second") {
                return Some(Duration::from_secs_f64(secs.0));
            }
        }
    }
    if let Some(i) = lc.find("retry after ") {
        let rest = &lc[i + "retry after ".len()..];
        if let Some((n, _)) = leading_number(rest) {
            return Some(Duration::from_secs_f64(n));
        }
    }
    None
}

fn leading_number(s: &str) -> Option<(f64, usize)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let n: f64 = s[..end].trim_end_matches('.').parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some((n, end))
}

fn classify_inner(status: u16, headers: &HeaderMap, d: &ErrorDetails) -> ProviderError {
    let message = if d.message.is_empty() {
        format!("upstream answered HTTP {status}")
    } else {
        d.message.clone()
    };
    let lc = d.message.to_ascii_lowercase();
    let client_status = (400..500).contains(&status) && status != 429;

    if d.code_is("model_not_found") || d.code_is("DeploymentNotFound") || status == 404 {
        return ProviderError::NotFound { message };
    }
    if client_status && is_context_overflow(d, &lc) {
        return ProviderError::ContextLengthExceeded { message };
    }
    if (400..500).contains(&status)
        && status != 429
        && (d.code_is("content_filter")
            || d.code_is("ResponsibleAIPolicyViolation")
            || d.code_is("content_policy_violation"))
    {
        return ProviderError::ContentFiltered { message };
    }
    if status == 402
        || d.code_is("insufficient_quota")
        || d.code_is("billing_error")
        || lc.contains("credit balance is too low")
        || lc.contains("exceeded your current quota")
    {
        return rate_limited(headers, d, RateLimitScope::Quota, message);
    }
    if d.code_is("overloaded_error") || status == 503 || status == 529 {
        return ProviderError::Overloaded {
            retry_after: retry_after(headers),
            message,
        };
    }
    if matches!(status, 401 | 403 | 498) || d.code_is("API_KEY_INVALID") {
        return ProviderError::Auth { status, message };
    }
    match status {
        429 => rate_limited(headers, d, RateLimitScope::Key, message),
        408 | 409 | 500..=599 => ProviderError::Server { status, message },
        400..=499 => ProviderError::BadRequest {
            status,
            message,
            param: d.param.clone(),
            code: d.code.clone().or_else(|| d.kind.clone()),
        },
        _ => ProviderError::Protocol(format!("unexpected HTTP {status}: {message}")),
    }
}

fn rate_limited(
    headers: &HeaderMap,
    d: &ErrorDetails,
    scope: RateLimitScope,
    message: String,
) -> ProviderError {
    let info = rate_limit_info(headers);
    let explicit = retry_after(headers).max(message_retry_hint(&d.message));
    let wait = explicit.or_else(|| info.wait_hint());
    let scope = match scope {
        RateLimitScope::Key if wait.is_some_and(|w| w >= QUOTA_WAIT) => RateLimitScope::Quota,
        s => s,
    };
    ProviderError::RateLimited {
        retry_after: wait,
        remaining: (!info.is_empty()).then(|| Box::new(info)),
        scope,
        message,
    }
}

fn is_context_overflow(d: &ErrorDetails, lc: &str) -> bool {
    d.code_is("context_length_exceeded")
        || lc.contains("prompt is too long")
        || lc.contains("maximum context length")
        || lc.contains("context length exceeded")
        || lc.contains("context_length_exceeded")
        || lc.contains("input is too long")
        || lc.contains("exceeds the maximum number of tokens")
        || lc.contains("exceeds the context window")
}

fn status_for_type(d: &ErrorDetails) -> u16 {
    let t = d
        .kind
        .as_deref()
        .or(d.code.as_deref())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match t.as_str() {
        "rate_limit_error"
        | "rate_limit_exceeded"
        | "tokens"
        | "requests"
        | "insufficient_quota"
        | "resource_exhausted" => 429,
        "overloaded_error" | "unavailable" => 529,
        "authentication_error" | "invalid_api_key" | "unauthenticated" => 401,
        "permission_error" | "permission_denied" => 403,
        "not_found_error" | "model_not_found" | "not_found" => 404,
        "invalid_request_error" | "invalid_argument" | "bad_request" => 400,
        "request_too_large" => 413,
        "billing_error" => 402,
        "timeout_error" | "deadline_exceeded" => 504,
        _ => 500,
    }
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn code_field(v: &Value) -> Option<String> {
    match v.get("code")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::RateLimitInfo;
    use http::HeaderValue;
    use serde_json::json;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        m
    }

    fn class(status: u16, headers: &HeaderMap, body: Value) -> ProviderError {
        classify(status, headers, body.to_string().as_bytes())
    }

    /// One row of §8.2: a short name of the expected class.
    fn short(e: &ProviderError) -> String {
        match e {
            ProviderError::RateLimited { scope, .. } => format!("RateLimited({scope:?})"),
            ProviderError::Overloaded { .. } => "Overloaded".into(),
            ProviderError::Server { status, .. } => format!("Server({status})"),
            ProviderError::Auth { status, .. } => format!("Auth({status})"),
            ProviderError::NotFound { .. } => "NotFound".into(),
            ProviderError::BadRequest { status, .. } => format!("BadRequest({status})"),
            ProviderError::ContextLengthExceeded { .. } => "ContextLength".into(),
            ProviderError::ContentFiltered { .. } => "ContentFiltered".into(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn validation_details_name_the_field() {
        let mistral = json!({"object": "error", "type": "invalid_request_error",
            "message": {"detail": [{"type": "extra_forbidden", "loc": ["body", "messages", 0, "user", "name"], "msg": "Extra inputs are not permitted"}]}});
        let e = classify(422, &HeaderMap::new(), mistral.to_string().as_bytes());
        assert!(
            matches!(&e, ProviderError::BadRequest { status: 422, message, .. } if message == "body.messages.0.user.name: Extra inputs are not permitted"),
            "{e:?}"
        );
        let fastapi =
            json!({"detail": [{"loc": ["body", "n"], "msg": "too big"}, {"loc": [], "msg": "x"}]});
        assert_eq!(error_details(&fastapi).message, "body.n: too big; x");
        assert_eq!(
            error_details(&json!({"detail": "Not authenticated"})).message,
            "Not authenticated"
        );
    }

    #[test]
    fn decision_matrix() {
        let none = HeaderMap::new();
        let rows: Vec<(&str, u16, Value, &str)> = vec![
            (
                "openai 429 rate limit",
                429,
                json!({"error":{"message":"Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000. Please try again in 644ms.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}),
                "RateLimited(Key)",
            ),
            (
                "openai 429 quota",
                429,
                json!({"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}),
                "RateLimited(Quota)",
            ),
            (
                "anthropic 429",
                429,
                json!({"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}),
                "RateLimited(Key)",
            ),
            (
                "azure 429 short",
                429,
                json!({"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds."}}),
                "RateLimited(Key)",
            ),
            (
                "azure 429 daily",
                429,
                json!({"error":{"code":"429","message":"Requests ... have exceeded call rate limit of your current pricing tier. Please retry after 86400 seconds."}}),
                "RateLimited(Quota)",
            ),
            (
                "anthropic credit",
                400,
                json!({"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}),
                "RateLimited(Quota)",
            ),
            (
                "anthropic 402",
                402,
                json!({"type":"error","error":{"type":"billing_error","message":"billing"}}),
                "RateLimited(Quota)",
            ),
            (
                "deepseek 402",
                402,
                json!({"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}),
                "RateLimited(Quota)",
            ),
            (
                "openrouter 402",
                402,
                json!({"error":{"code":402,"message":"Insufficient credits","metadata":{}}}),
                "RateLimited(Quota)",
            ),
            (
                "openai 401",
                401,
                json!({"error":{"message":"Incorrect API key provided: sk-xx.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}),
                "Auth(401)",
            ),
            (
                "azure 401",
                401,
                json!({"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint."}}),
                "Auth(401)",
            ),
            (
                "anthropic 403",
                403,
                json!({"type":"error","error":{"type":"permission_error","message":"no"}}),
                "Auth(403)",
            ),
            (
                "openai 404",
                404,
                json!({"error":{"message":"The model `gpt-9` does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}}),
                "NotFound",
            ),
            (
                "azure 404",
                404,
                json!({"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}),
                "NotFound",
            ),
            (
                "openai context",
                400,
                json!({"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}),
                "ContextLength",
            ),
            (
                "anthropic context",
                400,
                json!({"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208656 tokens > 200000 maximum"}}),
                "ContextLength",
            ),
            (
                "vllm context",
                400,
                json!({"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens","type":"BadRequestError","param":null,"code":400}),
                "ContextLength",
            ),
            (
                "azure content filter",
                400,
                json!({"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{}}}}),
                "ContentFiltered",
            ),
            (
                "openai validation",
                400,
                json!({"error":{"message":"Invalid value for 'temperature'","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}),
                "BadRequest(400)",
            ),
            (
                "anthropic 413",
                413,
                json!({"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum allowed number of bytes."}}),
                "BadRequest(413)",
            ),
            (
                "mistral 422",
                422,
                json!({"object":"error","message":{"detail":[]},"type":"invalid_request_error","param":null,"code":null}),
                "BadRequest(422)",
            ),
            (
                "vllm shape",
                400,
                json!({"object":"error","message":"[{'type': 'missing'}]","type":"BadRequestError","param":null,"code":400}),
                "BadRequest(400)",
            ),
            (
                "anthropic 529",
                529,
                json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
                "Overloaded",
            ),
            (
                "openai 503",
                503,
                json!({"error":{"message":"The engine is currently overloaded","type":"server_error"}}),
                "Overloaded",
            ),
            (
                "anthropic 500",
                500,
                json!({"type":"error","error":{"type":"api_error","message":"Internal server error"}}),
                "Server(500)",
            ),
            (
                "502",
                502,
                json!({"error":{"message":"Bad gateway"}}),
                "Server(502)",
            ),
            (
                "anthropic 504",
                504,
                json!({"type":"error","error":{"type":"timeout_error","message":"timeout"}}),
                "Server(504)",
            ),
            ("408", 408, json!({}), "Server(408)"),
            (
                "gemini key invalid",
                400,
                json!({"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}),
                "Auth(400)",
            ),
        ];
        let mut failures = Vec::new();
        for (name, status, body, want) in rows {
            let got = short(&class(status, &none, body));
            if got != want {
                failures.push(format!("{name}: want {want}, got {got}"));
            }
        }
        assert!(
            failures.is_empty(),
            "misclassified rows:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn rate_limit_wait_hints() {
        let body =
            json!({"error":{"message":"Please try again in 644ms.","code":"rate_limit_exceeded"}});
        match class(429, &HeaderMap::new(), body) {
            ProviderError::RateLimited {
                retry_after,
                remaining,
                ..
            } => {
                assert_eq!(
                    retry_after,
                    Some(Duration::from_millis(644)),
                    "from the message"
                );
                assert_eq!(remaining, None, "no headers, no remaining info");
            }
            e => panic!("expected RateLimited, got {e:?}"),
        }
        let headers = h(&[
            ("retry-after", "20"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-limit-requests", "100"),
            ("x-ratelimit-reset-requests", "1m0s"),
        ]);
        match class(
            429,
            &headers,
            json!({"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}),
        ) {
            ProviderError::RateLimited {
                retry_after,
                remaining,
                scope,
                ..
            } => {
                assert_eq!(scope, RateLimitScope::Key);
                assert_eq!(
                    retry_after,
                    Some(Duration::from_secs(20)),
                    "explicit header wins"
                );
                assert_eq!(
                    remaining,
                    Some(Box::new(RateLimitInfo {
                        limit_requests: Some(100),
                        remaining_requests: Some(0),
                        reset_requests: Some(Duration::from_secs(60)),
                        retry_after: Some(Duration::from_secs(20)),
                        ..RateLimitInfo::default()
                    }))
                );
            }
            e => panic!("expected RateLimited, got {e:?}"),
        }
        // Only the window: the reset is the hint.
        let headers = h(&[
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "7s"),
        ]);
        assert_eq!(
            class(429, &headers, json!({})).retry_after(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            class(429, &h(&[("retry-after", "86400")]), json!({})).scope(),
            gateway_core::FailoverScope::Key,
            "quota disables the key (Key failover scope)"
        );
        assert!(matches!(
            class(429, &h(&[("retry-after", "86400")]), json!({})),
            ProviderError::RateLimited {
                scope: RateLimitScope::Quota,
                ..
            }
        ));
    }

    #[test]
    fn bad_request_keeps_message_param_and_code() {
        let e = class(
            400,
            &HeaderMap::new(),
            json!({"error":{"message":"Invalid value for 'temperature'","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}),
        );
        match e {
            ProviderError::BadRequest {
                status,
                message,
                param,
                code,
            } => {
                assert_eq!(status, 400);
                assert_eq!(message, "Invalid value for 'temperature'");
                assert_eq!(param.as_deref(), Some("temperature"));
                assert_eq!(code.as_deref(), Some("invalid_value"));
            }
            e => panic!("expected BadRequest, got {e:?}"),
        }
    }

    #[test]
    fn should_retry_overrides() {
        let e = class(
            409,
            &h(&[("x-should-retry", "false")]),
            json!({"error":{"message":"conflict"}}),
        );
        assert!(matches!(e, ProviderError::Overloaded { .. }), "{e:?}");
        let e = class(
            400,
            &h(&[("x-should-retry", "true")]),
            json!({"error":{"message":"try again"}}),
        );
        assert!(
            matches!(e, ProviderError::Server { status: 400, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn plain_text_and_empty_bodies() {
        let e = classify(502, &HeaderMap::new(), b"<html>Bad Gateway</html>");
        assert!(
            matches!(&e, ProviderError::Server { status: 502, message } if message == "<html>Bad Gateway</html>"),
            "{e:?}"
        );
        let e = classify(500, &HeaderMap::new(), b"");
        assert!(
            matches!(&e, ProviderError::Server { message, .. } if message == "upstream answered HTTP 500"),
            "{e:?}"
        );
        let e = classify(400, &HeaderMap::new(), br#"{"error":"model is required"}"#);
        assert!(
            matches!(&e, ProviderError::BadRequest { message, .. } if message == "model is required"),
            "{e:?}"
        );
    }

    #[test]
    fn stream_errors() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"error":{"message":"The server had an error","type":"server_error"}}),
                "Server(500)",
            ),
            (
                json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
                "Overloaded",
            ),
            (
                json!({"error":{"code":502,"message":"Provider returned error"}}),
                "Server(502)",
            ),
            (
                json!({"object":"error","message":"bad","type":"BadRequestError","code":400}),
                "BadRequest(400)",
            ),
            (
                json!({"type":"error","error":{"type":"rate_limit_error","message":"slow"}}),
                "RateLimited(Key)",
            ),
        ];
        for (v, want) in cases {
            assert!(is_stream_error(&v), "{v} is an error payload");
            assert_eq!(short(&classify_stream_error(&v)), want, "{v}");
        }
        assert!(!is_stream_error(
            &json!({"id":"x","choices":[],"error":null})
        ));
    }

    #[test]
    fn message_hints() {
        assert_eq!(
            message_retry_hint("Please try again in 1.5s."),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            message_retry_hint("Please try again in 6m0s."),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            message_retry_hint("Please try again in 20 seconds."),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            message_retry_hint("Please retry after 6 seconds."),
            Some(Duration::from_secs(6))
        );
        assert_eq!(message_retry_hint("nothing here"), None);
    }
}
