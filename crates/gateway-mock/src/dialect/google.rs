//! Gemini (AI Studio) and Vertex AI `generateContent`: camelCase bodies (snake_case accepted),
//! whole function calls without ids and `finishReason: STOP`, cumulative `usageMetadata`, SSE
//! with `\r\n\r\n` separators and no sentinel (or a streamed JSON array without `alt=sse`),
//! and `google.rpc.Status` errors with `ErrorInfo`, `QuotaFailure` and `RetryInfo` details.

use bytes::Bytes;
use serde_json::{json, Value};

use super::{Ctx, ErrorKind, ErrorResponse};
use crate::format::ceil_secs;
use crate::plan::{
    chars_of, embedding, embedding_dims, text_of, tokens_for_chars, LastTurn, Output, Plan, Prompt,
    ToolChoice,
};
use crate::state::LimitKind;

/// A field by its camelCase or snake_case name.
fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> &'a Value {
    match v.get(camel) {
        Some(x) => x,
        None => &v[snake],
    }
}

fn function_response_text(fr: &Value) -> String {
    let resp = &fr["response"];
    for k in ["result", "output", "content"] {
        if let Some(v) = resp.get(k) {
            return text_of(v);
        }
    }
    match resp {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses a `generateContent` request; the model comes from the path.
pub(crate) fn parse(body: &Value, model: &str, stream: bool) -> Prompt {
    let mut p = Prompt::new(model.to_owned());
    p.stream = stream;
    p.include_usage = true;
    p.chars = chars_of(&field(body, "systemInstruction", "system_instruction")["parts"]);
    if let Some(contents) = body["contents"].as_array() {
        p.chars += contents
            .iter()
            .map(|c| chars_of(&c["parts"]))
            .sum::<usize>();
        p.last = match contents.last() {
            Some(c) if c["role"].as_str() != Some("model") => {
                let parts = c["parts"].as_array().map(Vec::as_slice).unwrap_or_default();
                if let Some(fr) = parts
                    .iter()
                    .map(|pt| field(pt, "functionResponse", "function_response"))
                    .find(|fr| !fr.is_null())
                {
                    LastTurn::ToolResult(function_response_text(fr))
                } else {
                    LastTurn::User(
                        parts
                            .iter()
                            .filter_map(|pt| pt["text"].as_str())
                            .collect::<Vec<_>>()
                            .join(""),
                    )
                }
            }
            _ => LastTurn::Other,
        };
    }
    if let Some(tools) = body["tools"].as_array() {
        p.tools = tools
            .iter()
            .filter_map(|t| field(t, "functionDeclarations", "function_declarations").as_array())
            .flatten()
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect();
    }
    let fcc = field(
        field(body, "toolConfig", "tool_config"),
        "functionCallingConfig",
        "function_calling_config",
    );
    p.tool_choice = match fcc["mode"].as_str() {
        Some("NONE") => ToolChoice::None,
        _ => field(fcc, "allowedFunctionNames", "allowed_function_names")[0]
            .as_str()
            .map_or(ToolChoice::Auto, |n| ToolChoice::Named(n.to_owned())),
    };
    // Thought summaries come back only when asked for (`includeThoughts`).
    let thinking = field(
        field(body, "generationConfig", "generation_config"),
        "thinkingConfig",
        "thinking_config",
    );
    p.thinking = field(thinking, "includeThoughts", "include_thoughts")
        .as_bool()
        .unwrap_or(false);
    let config = field(body, "generationConfig", "generation_config");
    p.schema = [
        field(config, "responseSchema", "response_schema"),
        field(config, "responseJsonSchema", "response_json_schema"),
    ]
    .into_iter()
    .find(|s| s.is_object())
    .cloned();
    p
}

/// A thought-summary part (`"thought": true`), first in an answer that asked for thoughts.
fn thought_part() -> Value {
    json!({ "text": super::anthropic::THINKING, "thought": true })
}

/// Validates a `generateContent` request (Vertex also requires a role on every content).
pub(crate) fn validate(body: &Value, vertex: bool) -> Option<ErrorKind> {
    let Some(contents) = body["contents"].as_array().filter(|c| !c.is_empty()) else {
        return Some(ErrorKind::BadRequest(
            "* GenerateContentRequest.contents: contents is not specified\n".to_owned(),
        ));
    };
    for c in contents {
        match c["role"].as_str() {
            Some("user" | "model") => {}
            None if !vertex => {}
            Some(_) | None => {
                return Some(ErrorKind::BadRequest(
                    "Please use a valid role: user, model.".to_owned(),
                ))
            }
        }
        if c["parts"].as_array().is_none_or(Vec::is_empty) {
            return Some(ErrorKind::BadRequest(
                "* GenerateContentRequest.contents.parts: contents.parts must not be empty.\n"
                    .to_owned(),
            ));
        }
    }
    None
}

fn usage(plan: &Plan, candidates: u64) -> Value {
    json!({
        "promptTokenCount": plan.prompt_tokens,
        "candidatesTokenCount": candidates,
        "totalTokenCount": plan.prompt_tokens + candidates,
        "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": plan.prompt_tokens }]
    })
}

fn response_id(plan: &Plan) -> String {
    format!("mockresp{:012}", plan.seq)
}

fn envelope(ctx: &Ctx<'_>, plan: &Plan, candidate: Value, candidates_tokens: u64) -> Value {
    let mut v = json!({
        "candidates": [candidate],
        "usageMetadata": usage(plan, candidates_tokens),
        "modelVersion": ctx.model,
        "responseId": response_id(plan),
    });
    if ctx.dialect == crate::Dialect::Vertex {
        v["createTime"] = json!(crate::format::rfc3339(ctx.created));
    }
    v
}

fn function_call_part(name: &str, arguments: &str) -> Value {
    let args: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
    json!({ "functionCall": { "name": name, "args": args } })
}

/// The non-streamed `GenerateContentResponse`.
pub(crate) fn chat_json(ctx: &Ctx<'_>, plan: &Plan) -> String {
    let part = match &plan.output {
        Output::Text { text, .. } => json!({ "text": &**text }),
        Output::Tool {
            name, arguments, ..
        } => function_call_part(name, arguments),
    };
    let parts = if plan.thinking {
        vec![thought_part(), part]
    } else {
        vec![part]
    };
    let candidate = json!({
        "content": { "role": "model", "parts": parts },
        "finishReason": "STOP",
        "index": 0
    });
    envelope(ctx, plan, candidate, plan.completion_tokens).to_string()
}

fn frame(ctx: &Ctx<'_>, json: &str, index: usize) -> Bytes {
    if ctx.sse {
        Bytes::from(format!("data: {json}\r\n\r\n"))
    } else if index == 0 {
        Bytes::from(format!("[{json}"))
    } else {
        Bytes::from(format!(",\r\n{json}"))
    }
}

/// The streamed chunks; usage is cumulative on every chunk and the last has `finishReason`.
pub(crate) fn chat_stream(ctx: &Ctx<'_>, plan: &Plan) -> Vec<Bytes> {
    let mut out = Vec::new();
    if plan.thinking {
        let candidate =
            json!({ "content": { "role": "model", "parts": [thought_part()] }, "index": 0 });
        let v = envelope(ctx, plan, candidate, 0);
        out.push(frame(ctx, &v.to_string(), 0));
    }
    let first = out.len();
    match &plan.output {
        Output::Text { chunks, .. } => {
            let n = chunks.len();
            for (i, c) in chunks.iter().enumerate() {
                let mut candidate = json!({
                    "content": { "role": "model", "parts": [{ "text": js_raw(c) }] },
                    "index": 0
                });
                if i + 1 == n {
                    candidate["finishReason"] = json!("STOP");
                }
                let so_far = u64::try_from(i + 1).unwrap_or(u64::MAX);
                let v = envelope(ctx, plan, candidate, so_far);
                out.push(frame(ctx, &v.to_string(), first + i));
            }
        }
        Output::Tool {
            name, arguments, ..
        } => {
            let candidate = json!({
                "content": { "role": "model", "parts": [function_call_part(name, arguments)] },
                "finishReason": "STOP",
                "index": 0
            });
            let v = envelope(ctx, plan, candidate, plan.completion_tokens);
            out.push(frame(ctx, &v.to_string(), first));
        }
    }
    if !ctx.sse {
        out.push(Bytes::from_static(b"]"));
    }
    out
}

fn js_raw(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "NOT_IMPLEMENTED",
        502 | 503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

fn server_message(code: u16) -> &'static str {
    match code {
        503 | 529 | 502 => "The model is overloaded. Please try again later.",
        504 => "Deadline expired before operation could complete.",
        _ => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    }
}

fn status_body(code: u16, message: &str, details: Option<Value>) -> String {
    let mut err = json!({ "code": code, "message": message, "status": status_name(code) });
    if let Some(d) = details {
        err["details"] = d;
    }
    json!({ "error": err }).to_string()
}

/// The in-band error: an SSE `data:` event (or array element) carrying a `google.rpc.Status`.
pub(crate) fn stream_error(status: u16, sse: bool, sent: usize) -> Bytes {
    let body = status_body(status, server_message(status), None);
    if sse {
        Bytes::from(format!("data: {body}\r\n\r\n"))
    } else if sent == 0 {
        Bytes::from(format!("[{body}]"))
    } else {
        Bytes::from(format!(",\r\n{body}]"))
    }
}

fn error_info(reason: &str, service: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": { "service": service }
    })
}

/// Gemini / Vertex error shapes.
pub(crate) fn error(e: &ErrorKind, vertex: bool) -> ErrorResponse {
    let service = if vertex {
        "aiplatform.googleapis.com"
    } else {
        "generativelanguage.googleapis.com"
    };
    let (status, body) = match e {
        ErrorKind::MissingKey if vertex => (
            401,
            status_body(
                401,
                "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                Some(json!([error_info("CREDENTIALS_MISSING", service)])),
            ),
        ),
        ErrorKind::MissingKey => (
            403,
            status_body(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                None,
            ),
        ),
        ErrorKind::TokenInvalid | ErrorKind::TokenExpired | ErrorKind::Signature(..) => {
            let reason = if matches!(e, ErrorKind::TokenExpired) {
                "ACCESS_TOKEN_EXPIRED"
            } else {
                "ACCESS_TOKEN_TYPE_UNSUPPORTED"
            };
            (
                401,
                status_body(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                    Some(json!([error_info(reason, service)])),
                ),
            )
        }
        ErrorKind::InvalidKey(_) => (
            400,
            status_body(
                400,
                "API key not valid. Please pass a valid API key.",
                Some(json!([
                    error_info("API_KEY_INVALID", service),
                    { "@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": "API key not valid. Please pass a valid API key." }
                ])),
            ),
        ),
        ErrorKind::BadRequest(msg) => (400, status_body(400, msg, None)),
        ErrorKind::NotFound(what) => (
            404,
            status_body(
                404,
                &format!("models/{what} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."),
                None,
            ),
        ),
        ErrorKind::RateLimited {
            kind,
            limit,
            retry_after,
            ..
        } if !vertex => {
            let (metric, quota_id) = match kind {
                LimitKind::Requests => (
                    "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                ),
                LimitKind::Tokens => (
                    "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
                    "GenerateContentInputTokensPerModelPerMinute-FreeTier",
                ),
            };
            (
                429,
                quota_body(metric, quota_id, *limit, &format!("{}s", ceil_secs(*retry_after))),
            )
        }
        ErrorKind::RateLimited { .. } => (
            429,
            status_body(
                429,
                "Resource exhausted. Please try again later. Please refer to https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
                None,
            ),
        ),
        ErrorKind::Quota if !vertex => (
            429,
            quota_body(
                "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                250,
                "43200s",
            ),
        ),
        ErrorKind::Quota => (
            429,
            status_body(
                429,
                "Quota exceeded for aiplatform.googleapis.com/generate_content_requests_per_minute_per_project_per_base_model with base model: gemini. Please submit a quota increase request. https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai.",
                None,
            ),
        ),
        ErrorKind::Server(code) => (*code, status_body(*code, server_message(*code), None)),
    };
    ErrorResponse {
        status,
        body,
        headers: Vec::new(),
    }
}

fn quota_body(metric: &str, quota_id: &str, limit: u64, retry_delay: &str) -> String {
    status_body(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
        Some(json!([
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": metric,
                    "quotaId": quota_id,
                    "quotaDimensions": { "location": "global", "model": "mock-model" },
                    "quotaValue": limit.to_string()
                }]
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{ "description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits" }]
            },
            { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay }
        ])),
    )
}

fn content_text(content: &Value) -> String {
    content["parts"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("")
        })
        .unwrap_or_default()
}

fn output_dims(req: &Value) -> usize {
    embedding_dims(field(req, "outputDimensionality", "output_dimensionality").as_u64())
}

/// `:embedContent`.
pub(crate) fn embed_json(body: &Value) -> String {
    let v = embedding(&content_text(&body["content"]), output_dims(body));
    json!({ "embedding": { "values": v } }).to_string()
}

/// `:batchEmbedContents`.
pub(crate) fn batch_embed_json(body: &Value) -> Result<String, ErrorKind> {
    let Some(reqs) = body["requests"].as_array() else {
        return Err(ErrorKind::BadRequest(
            "* BatchEmbedContentsRequest.requests: requests is not specified\n".to_owned(),
        ));
    };
    let embeddings: Vec<Value> = reqs
        .iter()
        .map(|r| json!({ "values": embedding(&content_text(&r["content"]), output_dims(r)) }))
        .collect();
    Ok(json!({ "embeddings": embeddings }).to_string())
}

/// `:countTokens`.
pub(crate) fn count_tokens_json(body: &Value) -> String {
    let chars = chars_of(&body["contents"])
        + chars_of(&field(body, "generateContentRequest", "generate_content_request")["contents"]);
    json!({ "totalTokens": tokens_for_chars(chars) }).to_string()
}

/// `GET /v1beta/models`.
pub(crate) fn models_json() -> String {
    json!({
        "models": [
            {
                "name": "models/gemini-2.5-flash",
                "version": "001",
                "displayName": "Gemini 2.5 Flash",
                "inputTokenLimit": 1_048_576,
                "outputTokenLimit": 65_536,
                "supportedGenerationMethods": ["generateContent", "countTokens"]
            },
            {
                "name": "models/text-embedding-004",
                "version": "004",
                "displayName": "Text Embedding 004",
                "inputTokenLimit": 2048,
                "outputTokenLimit": 1,
                "supportedGenerationMethods": ["embedContent"]
            }
        ]
    })
    .to_string()
}
