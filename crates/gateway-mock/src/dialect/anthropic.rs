//! Anthropic Messages: request checks (`anthropic-version`, `max_tokens`, roles, tool pairing),
//! the message body, the `event:`-framed stream and the `{"type":"error"}` shapes.

use std::collections::HashSet;

use bytes::Bytes;
use serde_json::{json, Value};

use super::{sse_event, Ctx, ErrorKind, ErrorResponse};
use crate::format::{ceil_secs, js};
use crate::plan::{chars_of, text_of, LastTurn, Output, Plan, Prompt, ToolChoice};
use crate::state::LimitKind;

/// Parses a Messages request.
pub(crate) fn parse(body: &Value) -> Prompt {
    let mut p = Prompt::new(body["model"].as_str().unwrap_or_default().to_owned());
    p.chars = chars_of(&body["system"]);
    if let Some(msgs) = body["messages"].as_array() {
        p.chars += msgs.iter().map(|m| chars_of(&m["content"])).sum::<usize>();
        p.last = match msgs.last() {
            Some(m) if m["role"].as_str() == Some("user") => match &m["content"] {
                Value::Array(blocks) => {
                    if let Some(tr) = blocks
                        .iter()
                        .find(|b| b["type"].as_str() == Some("tool_result"))
                    {
                        LastTurn::ToolResult(text_of(&tr["content"]))
                    } else {
                        LastTurn::User(
                            blocks
                                .iter()
                                .filter(|b| b["type"].as_str() == Some("text"))
                                .map(|b| b["text"].as_str().unwrap_or_default())
                                .collect::<Vec<_>>()
                                .join(""),
                        )
                    }
                }
                other => LastTurn::User(text_of(other)),
            },
            _ => LastTurn::Other,
        };
    }
    if let Some(tools) = body["tools"].as_array() {
        p.tools = tools
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
    }
    p.tool_choice = match body["tool_choice"]["type"].as_str() {
        Some("none") => ToolChoice::None,
        Some("tool") => body["tool_choice"]["name"]
            .as_str()
            .map_or(ToolChoice::Auto, |n| ToolChoice::Named(n.to_owned())),
        _ => ToolChoice::Auto,
    };
    p.stream = body["stream"].as_bool().unwrap_or(false);
    p.thinking = matches!(
        body["thinking"]["type"].as_str(),
        Some("enabled" | "adaptive")
    );
    // Structured outputs: `output_config.format` (and the beta's `output_format`).
    p.schema = [&body["output_config"]["format"], &body["output_format"]]
        .into_iter()
        .find(|f| f["type"].as_str() == Some("json_schema"))
        .and_then(|f| f.get("schema"))
        .cloned();
    p
}

/// What the mock thinks, when asked to.
pub(crate) const THINKING: &str = "The user wants an answer. Let me think it through.";

/// The signature of a thinking block with `text`: the real API signs its thinking so that it can
/// check a replayed block was not altered; the mock's is a hash of the text.
pub(crate) fn signature(text: &str) -> String {
    // FNV-1a, 64 bits.
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("EqMock{h:016x}")
}

/// Thinking blocks replayed in `msgs` must carry the signature their text was given, and with
/// thinking on, the assistant turn whose tool calls the last turn answers must start with one.
fn check_thinking(body: &Value, msgs: &[Value]) -> Option<ErrorKind> {
    for (i, m) in msgs.iter().enumerate() {
        for (j, b) in m["content"].as_array().into_iter().flatten().enumerate() {
            if b["type"].as_str() == Some("thinking") {
                let text = b["thinking"].as_str().unwrap_or_default();
                if b["signature"].as_str() != Some(signature(text).as_str()) {
                    return bad(format!(
                        "messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
                    ));
                }
            }
        }
    }
    let on = matches!(
        body["thinking"]["type"].as_str(),
        Some("enabled" | "adaptive")
    );
    let answers_tools = msgs.last().is_some_and(|m| {
        m["role"] == "user" && !tool_ids(&m["content"], "tool_result", "tool_use_id").is_empty()
    });
    if on && answers_tools && msgs.len() >= 2 {
        let i = msgs.len() - 2;
        let first = msgs[i]["content"][0]["type"].as_str().unwrap_or("text");
        if !matches!(first, "thinking" | "redacted_thinking") {
            return bad(format!("messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{first}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid this requirement, disable `thinking`."));
        }
    }
    None
}

fn bad(msg: impl Into<String>) -> Option<ErrorKind> {
    Some(ErrorKind::BadRequest(msg.into()))
}

fn tool_ids<'a>(content: &'a Value, block_type: &str, id_field: &str) -> Vec<&'a str> {
    content
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| b["type"].as_str() == Some(block_type))
                .filter_map(|b| b[id_field].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// Validates a Messages request the way the API does (the checks a translating gateway is most
/// likely to trip).
pub(crate) fn validate(body: &Value, has_version: bool, count_tokens: bool) -> Option<ErrorKind> {
    if !has_version {
        return bad("anthropic-version: header is required");
    }
    if !body.is_object() {
        return bad("Input should be a valid dictionary or object to extract fields from");
    }
    if body["model"].as_str().is_none() {
        return bad("model: Field required");
    }
    if !count_tokens && body["max_tokens"].as_u64().is_none() {
        return bad("max_tokens: Field required");
    }
    let Some(msgs) = body["messages"].as_array() else {
        return bad("messages: Field required");
    };
    // The API refuses members it does not know; a gateway's own must not reach it.
    if body.get("fallbacks").is_some() {
        return bad("fallbacks: Extra inputs are not permitted");
    }
    if let Some(e) = check_thinking(body, msgs) {
        return Some(e);
    }
    for (i, m) in msgs.iter().enumerate() {
        match m["role"].as_str() {
            Some("user" | "assistant") => {}
            Some("system") => {
                return bad("messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.")
            }
            _ => return bad(format!("messages.{i}.role: Input should be 'user' or 'assistant'")),
        }
        let last = i + 1 == msgs.len();
        match &m["content"] {
            Value::String(s) if s.is_empty() && !(last && m["role"] == "assistant") => {
                return bad(format!("messages.{i}: all messages must have non-empty content except for the optional final assistant message"));
            }
            Value::Array(blocks) => {
                for (j, b) in blocks.iter().enumerate() {
                    if b["type"].as_str() == Some("text")
                        && b["text"].as_str().is_none_or(str::is_empty)
                    {
                        return bad(format!(
                            "messages.{i}.content.{j}.text: text content blocks must be non-empty"
                        ));
                    }
                }
            }
            Value::String(_) => {}
            _ => return bad(format!("messages.{i}.content: Field required")),
        }
        // tool_result blocks must answer the tool_use blocks of the previous message.
        let results = tool_ids(&m["content"], "tool_result", "tool_use_id");
        if !results.is_empty() {
            let prev: HashSet<&str> = i
                .checked_sub(1)
                .and_then(|p| msgs.get(p))
                .filter(|p| p["role"] == "assistant")
                .map(|p| {
                    tool_ids(&p["content"], "tool_use", "id")
                        .into_iter()
                        .collect()
                })
                .unwrap_or_default();
            if let Some(id) = results.iter().find(|id| !prev.contains(*id)) {
                return bad(format!("messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."));
            }
        }
        let uses = tool_ids(&m["content"], "tool_use", "id");
        if !uses.is_empty() {
            if let Some(next) = msgs.get(i + 1) {
                let answered: HashSet<&str> =
                    tool_ids(&next["content"], "tool_result", "tool_use_id")
                        .into_iter()
                        .collect();
                if let Some(id) = uses.iter().find(|id| !answered.contains(*id)) {
                    return bad(format!("messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {id}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.", i + 1));
                }
            }
        }
    }
    None
}

fn message_id(plan: &Plan) -> String {
    format!("msg_mock{:016}", plan.seq)
}

fn tool_id(plan: &Plan) -> String {
    format!("toolu_mock{:014}", plan.seq)
}

/// The non-streamed message body.
pub(crate) fn chat_json(ctx: &Ctx<'_>, plan: &Plan) -> String {
    let (mut content, stop) = match &plan.output {
        Output::Text { text, .. } => (json!([{ "type": "text", "text": &**text }]), "end_turn"),
        Output::Tool {
            name, arguments, ..
        } => {
            let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
            (
                json!([{ "type": "tool_use", "id": tool_id(plan), "name": name, "input": input }]),
                "tool_use",
            )
        }
    };
    if plan.thinking {
        if let Value::Array(blocks) = &mut content {
            blocks.insert(
                0,
                json!({"type": "thinking", "thinking": THINKING, "signature": signature(THINKING)}),
            );
        }
    }
    json!({
        "id": message_id(plan),
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": {
            "input_tokens": plan.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": plan.completion_tokens,
            "service_tier": "standard"
        }
    })
    .to_string()
}

/// The streamed events, `message_start` to `message_stop`.
pub(crate) fn chat_stream(ctx: &Ctx<'_>, plan: &Plan) -> Vec<Bytes> {
    let mut out = Vec::new();
    out.push(sse_event(
        "message_start",
        &format!(
            r#"{{"type":"message_start","message":{{"id":"{}","type":"message","role":"assistant","model":{},"content":[],"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":{},"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}}}}"#,
            message_id(plan),
            js(ctx.model),
            plan.prompt_tokens
        ),
    ));
    let ping = || sse_event("ping", r#"{"type": "ping"}"#);
    // With thinking on, the thinking block comes first (in two deltas, then its signature).
    let b = usize::from(plan.thinking);
    if plan.thinking {
        out.push(sse_event(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
        ));
        let (head, tail) = THINKING.split_at(THINKING.len() / 2);
        for part in [head, tail] {
            out.push(sse_event(
                "content_block_delta",
                &format!(
                    r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"thinking_delta","thinking":{}}}}}"#,
                    js(part)
                ),
            ));
        }
        out.push(sse_event(
            "content_block_delta",
            &format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"signature_delta","signature":"{}"}}}}"#,
                signature(THINKING)
            ),
        ));
        out.push(sse_event(
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ));
    }
    let stop = match &plan.output {
        Output::Text { chunks, .. } => {
            out.push(sse_event(
                "content_block_start",
                &format!(
                    r#"{{"type":"content_block_start","index":{b},"content_block":{{"type":"text","text":""}}}}"#
                ),
            ));
            out.push(ping());
            for c in chunks.iter() {
                out.push(sse_event(
                    "content_block_delta",
                    &format!(
                        r#"{{"type":"content_block_delta","index":{b},"delta":{{"type":"text_delta","text":{}}}}}"#,
                        js(c)
                    ),
                ));
            }
            "end_turn"
        }
        Output::Tool {
            name, fragments, ..
        } => {
            out.push(sse_event(
                "content_block_start",
                &format!(
                    r#"{{"type":"content_block_start","index":{b},"content_block":{{"type":"tool_use","id":"{}","name":{},"input":{{}}}}}}"#,
                    tool_id(plan),
                    js(name)
                ),
            ));
            out.push(ping());
            let first = std::iter::once("");
            for f in first.chain(fragments.iter().map(String::as_str)) {
                out.push(sse_event(
                    "content_block_delta",
                    &format!(
                        r#"{{"type":"content_block_delta","index":{b},"delta":{{"type":"input_json_delta","partial_json":{}}}}}"#,
                        js(f)
                    ),
                ));
            }
            "tool_use"
        }
    };
    out.push(sse_event(
        "content_block_stop",
        &format!(r#"{{"type":"content_block_stop","index":{b}}}"#),
    ));
    out.push(sse_event(
        "message_delta",
        &format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{stop}","stop_sequence":null}},"usage":{{"output_tokens":{}}}}}"#,
            plan.completion_tokens
        ),
    ));
    out.push(sse_event("message_stop", r#"{"type":"message_stop"}"#));
    out
}

fn server_error(status: u16) -> (&'static str, &'static str) {
    match status {
        529 => ("overloaded_error", "Overloaded"),
        504 => ("timeout_error", "Request timeout"),
        _ => ("api_error", "Internal server error"),
    }
}

/// The in-band `event: error`.
pub(crate) fn stream_error(status: u16) -> Bytes {
    let (kind, message) = server_error(status);
    sse_event(
        "error",
        &json!({ "type": "error", "error": { "type": kind, "message": message } }).to_string(),
    )
}

/// `GET /v1/models` (when `anthropic-version` is sent).
pub(crate) fn models_json() -> String {
    json!({
        "data": [
            { "type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z" },
            { "type": "model", "id": "claude-3-5-haiku-20241022", "display_name": "Claude Haiku 3.5", "created_at": "2024-10-22T00:00:00Z" }
        ],
        "has_more": false,
        "first_id": "claude-sonnet-4-5-20250929",
        "last_id": "claude-3-5-haiku-20241022"
    })
    .to_string()
}

/// `POST /v1/messages/count_tokens`.
pub(crate) fn count_tokens_json(plan: &Plan) -> String {
    json!({ "input_tokens": plan.prompt_tokens }).to_string()
}

/// Anthropic error shapes.
pub(crate) fn error(e: &ErrorKind, seq: u64) -> ErrorResponse {
    let mut headers = Vec::new();
    let (status, kind, message) = match e {
        ErrorKind::MissingKey => (
            401,
            "authentication_error",
            "x-api-key header is required".to_owned(),
        ),
        ErrorKind::InvalidKey(_)
        | ErrorKind::TokenInvalid
        | ErrorKind::TokenExpired
        | ErrorKind::Signature(..) => (401, "authentication_error", "invalid x-api-key".to_owned()),
        ErrorKind::BadRequest(msg) => (400, "invalid_request_error", msg.clone()),
        ErrorKind::NotFound(what) => (404, "not_found_error", format!("model: {what}")),
        ErrorKind::RateLimited {
            kind,
            limit,
            retry_after,
            ..
        } => {
            headers.push(("retry-after", ceil_secs(*retry_after).to_string()));
            let what = match kind {
                LimitKind::Requests => "requests",
                LimitKind::Tokens => "input tokens",
            };
            (
                429,
                "rate_limit_error",
                format!("This request would exceed the rate limit for your organization (mock-org) of {limit} {what} per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase."),
            )
        }
        ErrorKind::Quota => (
            400,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.".to_owned(),
        ),
        ErrorKind::Server(status) => {
            let (kind, message) = server_error(*status);
            (*status, kind, message.to_owned())
        }
    };
    ErrorResponse {
        status,
        body: json!({
            "type": "error",
            "error": { "type": kind, "message": message },
            "request_id": format!("req_mock{seq:020}")
        })
        .to_string(),
        headers,
    }
}
