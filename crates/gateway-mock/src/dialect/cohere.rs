//! Cohere v2 Chat and Embed: the chat body with `finish_reason` and `usage{billed_units,tokens}`,
//! the `event:`-framed stream (`tool_calls` is an object in tool-call events) and `{"id","message"}`
//! errors.

use bytes::Bytes;
use serde_json::{json, Value};

use super::{sse_event, ErrorKind, ErrorResponse};
use crate::format::js;
use crate::plan::{embedding, embedding_dims, tokens_for_chars, Output, Plan};

fn usage(plan: &Plan) -> Value {
    json!({
        "billed_units": { "input_tokens": plan.prompt_tokens, "output_tokens": plan.completion_tokens },
        "tokens": { "input_tokens": plan.prompt_tokens, "output_tokens": plan.completion_tokens }
    })
}

fn chat_id(plan: &Plan) -> String {
    format!("00000000-0000-4000-8000-{:012}", plan.seq)
}

fn tool_call_id(name: &str, plan: &Plan) -> String {
    format!("{name}_mock{:08}", plan.seq)
}

/// Validates a v2 chat request.
pub(crate) fn validate(body: &Value) -> Option<ErrorKind> {
    if body["model"].as_str().is_none() {
        return Some(ErrorKind::BadRequest(
            "invalid request: model must be specified".to_owned(),
        ));
    }
    if body["messages"].as_array().is_none_or(Vec::is_empty) {
        return Some(ErrorKind::BadRequest(
            "invalid request: messages cannot be empty.".to_owned(),
        ));
    }
    match body["tool_choice"].as_str() {
        None | Some("REQUIRED" | "NONE") => None,
        Some(other) => Some(ErrorKind::BadRequest(format!(
            "invalid request: tool_choice must be one of REQUIRED, NONE, got {other}."
        ))),
    }
}

/// The non-streamed v2 chat body.
pub(crate) fn chat_json(plan: &Plan) -> String {
    let (message, finish) = match &plan.output {
        Output::Text { text, .. } => (
            json!({ "role": "assistant", "content": [{ "type": "text", "text": &**text }] }),
            "COMPLETE",
        ),
        Output::Tool {
            name, arguments, ..
        } => (
            json!({
                "role": "assistant",
                "tool_plan": format!("I will call {name}."),
                "tool_calls": [{
                    "id": tool_call_id(name, plan),
                    "type": "function",
                    "function": { "name": name, "arguments": arguments }
                }]
            }),
            "TOOL_CALL",
        ),
    };
    json!({ "id": chat_id(plan), "finish_reason": finish, "message": message, "usage": usage(plan) })
        .to_string()
}

/// The streamed v2 events, `message-start` to `message-end`.
pub(crate) fn chat_stream(plan: &Plan) -> Vec<Bytes> {
    let mut out = vec![sse_event(
        "message-start",
        &format!(
            r#"{{"id":"{}","type":"message-start","delta":{{"message":{{"role":"assistant","content":[],"tool_plan":"","tool_calls":[],"citations":[]}}}}}}"#,
            chat_id(plan)
        ),
    )];
    let finish = match &plan.output {
        Output::Text { chunks, .. } => {
            out.push(sse_event(
                "content-start",
                r#"{"type":"content-start","index":0,"delta":{"message":{"content":{"type":"text","text":""}}}}"#,
            ));
            for c in chunks.iter() {
                out.push(sse_event(
                    "content-delta",
                    &format!(
                        r#"{{"type":"content-delta","index":0,"delta":{{"message":{{"content":{{"text":{}}}}}}}}}"#,
                        js(c)
                    ),
                ));
            }
            out.push(sse_event(
                "content-end",
                r#"{"type":"content-end","index":0}"#,
            ));
            "COMPLETE"
        }
        Output::Tool {
            name, fragments, ..
        } => {
            out.push(sse_event(
                "tool-plan-delta",
                &format!(
                    r#"{{"type":"tool-plan-delta","delta":{{"message":{{"tool_plan":{}}}}}}}"#,
                    js(&format!("I will call {name}."))
                ),
            ));
            out.push(sse_event(
                "tool-call-start",
                &format!(
                    r#"{{"type":"tool-call-start","index":0,"delta":{{"message":{{"tool_calls":{{"id":{},"type":"function","function":{{"name":{},"arguments":""}}}}}}}}}}"#,
                    js(&tool_call_id(name, plan)),
                    js(name)
                ),
            ));
            for f in fragments {
                out.push(sse_event(
                    "tool-call-delta",
                    &format!(
                        r#"{{"type":"tool-call-delta","index":0,"delta":{{"message":{{"tool_calls":{{"function":{{"arguments":{}}}}}}}}}}}"#,
                        js(f)
                    ),
                ));
            }
            out.push(sse_event(
                "tool-call-end",
                r#"{"type":"tool-call-end","index":0}"#,
            ));
            "TOOL_CALL"
        }
    };
    out.push(sse_event(
        "message-end",
        &format!(
            r#"{{"type":"message-end","delta":{{"finish_reason":"{finish}","usage":{}}}}}"#,
            usage(plan)
        ),
    ));
    out
}

/// The in-band error: a `message-end` with `finish_reason: ERROR`.
pub(crate) fn stream_error(status: u16) -> Bytes {
    sse_event(
        "message-end",
        &json!({
            "type": "message-end",
            "delta": { "finish_reason": "ERROR", "error": server_message(status) }
        })
        .to_string(),
    )
}

/// `POST /v2/embed`.
pub(crate) fn embed_json(body: &Value, seq: u64) -> Result<String, ErrorKind> {
    let texts: Vec<String> = body["texts"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if texts.is_empty() {
        return Err(ErrorKind::BadRequest(
            "invalid request: texts must not be empty.".to_owned(),
        ));
    }
    let dims = embedding_dims(body["output_dimension"].as_u64());
    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| embedding(t, dims)).collect();
    let types: Vec<String> = body["embedding_types"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .filter(|t: &Vec<String>| !t.is_empty())
        .unwrap_or_else(|| vec!["float".to_owned()]);
    let mut embeddings = serde_json::Map::new();
    for t in types {
        embeddings.insert(t, json!(vectors));
    }
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    Ok(json!({
        "id": format!("00000000-0000-4000-8000-{seq:012}"),
        "embeddings": embeddings,
        "texts": texts,
        "meta": {
            "api_version": { "version": "2" },
            "billed_units": { "input_tokens": tokens_for_chars(chars) }
        },
        "response_type": "embeddings_by_type"
    })
    .to_string())
}

fn server_message(status: u16) -> &'static str {
    match status {
        503 => "service unavailable",
        504 => "gateway timeout",
        _ => "internal server error, this has been reported to our developers",
    }
}

/// Cohere error shapes.
pub(crate) fn error(e: &ErrorKind, seq: u64) -> ErrorResponse {
    let (status, message) = match e {
        ErrorKind::MissingKey => (401, "no api key supplied".to_owned()),
        ErrorKind::InvalidKey(_)
        | ErrorKind::TokenInvalid
        | ErrorKind::TokenExpired
        | ErrorKind::Signature(..) => (401, "invalid api token".to_owned()),
        ErrorKind::BadRequest(msg) => (400, msg.clone()),
        ErrorKind::NotFound(what) => (404, format!("model '{what}' not found, make sure the correct model ID was used and that you have access to the model.")),
        ErrorKind::RateLimited { .. } => (
            429,
            "You are past the per minute request limit, please wait and try again later.".to_owned(),
        ),
        ErrorKind::Quota => (
            429,
            "You are using a Trial key, which is limited to 1000 API calls / month. You can continue to use the Trial key for free or upgrade to a Production key with higher rate limits at 'https://dashboard.cohere.com/api-keys'. Contact us on 'https://discord.gg/XW44jPfYJu' or email us at support@cohere.com with any questions".to_owned(),
        ),
        ErrorKind::Server(status) => (*status, server_message(*status).to_owned()),
    };
    ErrorResponse {
        status,
        body: json!({ "id": format!("00000000-0000-4000-8000-{seq:012}"), "message": message })
            .to_string(),
        headers: Vec::new(),
    }
}
