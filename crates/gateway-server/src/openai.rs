//! The OpenAI dialect at the edge. The canonical types are OpenAI-shaped, so this is mostly
//! validation and SSE framing.

use base64::Engine as _;
use bytes::Bytes;
use gateway_core::types::{
    ChatChunk, ChatRequest, EmbeddingRequest, EmbeddingResponse, ModelInfo, NativeApi,
    NativeRequest,
};
use serde_json::{json, Value};

use crate::errors::ApiError;

fn json_error(e: &serde_json::Error) -> ApiError {
    let msg = e.to_string();
    let mut err = ApiError::invalid(format!("invalid request body: {msg}"));
    // Name the offending field where serde says it.
    for field in [
        "messages",
        "model",
        "tools",
        "tool_choice",
        "stop",
        "response_format",
        "input",
    ] {
        if msg.contains(&format!("`{field}`")) {
            err = err.param(field);
            break;
        }
    }
    err
}

/// The index of a function tool without a function name: other kinds of tool (`custom`) need
/// none, but a function tool is only its function.
fn unnamed_function(req: &ChatRequest) -> Option<usize> {
    req.tools
        .iter()
        .flatten()
        .position(|t| t.is_function() && t.function.name.is_empty())
}

/// What the gateway reads of a Responses request (`POST /v1/responses`); the rest goes upstream
/// as it came.
#[derive(serde::Deserialize)]
struct ResponsesHead {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    fallbacks: Option<Vec<String>>,
}

/// Decodes a Responses request: `model`, `stream`, `max_output_tokens` and the gateway's
/// `fallbacks` are read; the body itself rides along in [`ChatRequest::native`]
/// ([`NativeApi::OpenAiResponses`]), for the providers that speak the Responses API.
pub fn decode_responses(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let head: ResponsesHead = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
    let model = match head.model {
        Some(m) if !m.is_empty() => m,
        _ => return Err(ApiError::invalid("you must provide a model parameter").param("model")),
    };
    Ok(ChatRequest {
        model,
        stream: head.stream.unwrap_or(false),
        max_tokens: head.max_output_tokens,
        fallbacks: head.fallbacks.unwrap_or_default(),
        native: Some(NativeRequest {
            body: Bytes::copy_from_slice(body),
            headers: Vec::new(),
            api: NativeApi::OpenAiResponses,
        }),
        ..ChatRequest::default()
    })
}

/// Decodes and validates a chat-completions body.
pub fn decode_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    // The common case parses once; only a failure pays for a second look to name the problem.
    if let Ok(req) = serde_json::from_slice::<ChatRequest>(body) {
        if !req.model.is_empty()
            && !req.messages.is_empty()
            && req.temperature.is_none_or(|t| (0.0..=2.0).contains(&t))
            && unnamed_function(&req).is_none()
        {
            return Ok(req);
        }
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
    if !value.is_object() {
        return Err(ApiError::invalid("request body must be a JSON object"));
    }
    match value.get("model") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => return Err(ApiError::invalid("you must provide a model parameter").param("model")),
    }
    match value.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => {}
        Some(Value::Array(_)) => {
            return Err(
                ApiError::invalid("messages: must contain at least one message").param("messages"),
            )
        }
        _ => {
            return Err(
                ApiError::invalid("messages: a list of messages is required").param("messages"),
            )
        }
    }
    let req: ChatRequest = serde_json::from_value(value).map_err(|e| json_error(&e))?;
    if let Some(i) = unnamed_function(&req) {
        return Err(ApiError::invalid(format!(
            "tools[{i}].function: a function tool needs its `function` with a `name`"
        ))
        .param(&format!("tools[{i}].function")));
    }
    if let Some(t) = req.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(
                ApiError::invalid(format!("temperature: {t} is not between 0 and 2"))
                    .param("temperature"),
            );
        }
    }
    Ok(req)
}

/// Decodes and validates an embeddings body.
pub fn decode_embeddings(body: &[u8]) -> Result<EmbeddingRequest, ApiError> {
    let req: EmbeddingRequest = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
    if req.model.is_empty() {
        return Err(ApiError::invalid("you must provide a model parameter").param("model"));
    }
    if let Some(f) = &req.encoding_format {
        if f != "float" && f != "base64" {
            return Err(ApiError::invalid(format!(
                "encoding_format: `{f}` is not float or base64"
            ))
            .param("encoding_format"));
        }
    }
    Ok(req)
}

/// Appends one SSE event for a chunk to `out`. When the caller did not ask for usage, the
/// usage-only chunk is skipped (returns `false`) and usage is left off the others. A chunk the
/// upstream sent in this format ([`ChatChunk::raw`], one chunk or a run of them) goes out as it
/// came.
pub fn encode_chunk(chunk: &ChatChunk, include_usage: bool, out: &mut Vec<u8>) -> bool {
    if let Some(raw) = &chunk.raw {
        out.reserve(raw.len() + 8);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(raw);
        out.extend_from_slice(b"\n\n");
        return true;
    }
    if !include_usage && chunk.choices.is_empty() {
        return false;
    }
    let start = out.len();
    out.extend_from_slice(b"data: ");
    let written = if include_usage || chunk.usage.is_none() {
        serde_json::to_writer(&mut *out, chunk)
    } else {
        let mut c = chunk.clone();
        c.usage = None;
        serde_json::to_writer(&mut *out, &c)
    };
    if written.is_err() {
        out.truncate(start);
        return false;
    }
    out.extend_from_slice(b"\n\n");
    true
}

/// The end of an OpenAI stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// Encodes an embeddings response, as base64 when the caller asked for it.
pub fn encode_embeddings(resp: &EmbeddingResponse, base64: bool) -> Bytes {
    if !base64 {
        return Bytes::from(serde_json::to_vec(resp).unwrap_or_default());
    }
    let data: Vec<Value> = resp
        .data
        .iter()
        .map(|e| {
            let mut raw = Vec::with_capacity(e.embedding.len() * 4);
            for f in &e.embedding {
                raw.extend_from_slice(&f.to_le_bytes());
            }
            json!({
                "object": "embedding",
                "index": e.index,
                "embedding": base64::engine::general_purpose::STANDARD.encode(raw),
            })
        })
        .collect();
    let usage = resp
        .usage
        .map(|u| json!({"prompt_tokens": u.prompt_tokens, "total_tokens": u.total_tokens}));
    Bytes::from(
        serde_json::to_vec(
            &json!({"object": "list", "data": data, "model": resp.model, "usage": usage}),
        )
        .unwrap_or_default(),
    )
}

/// `GET /v1/models` in a shape both the OpenAI and the Anthropic SDKs read.
pub fn encode_models(models: &[ModelInfo]) -> Bytes {
    let data: Vec<Value> = models.iter().map(model_json).collect();
    let first = models.first().map(|m| m.id.clone());
    let last = models.last().map(|m| m.id.clone());
    Bytes::from(
        serde_json::to_vec(&json!({
            "object": "list",
            "data": data,
            "has_more": false,
            "first_id": first,
            "last_id": last,
        }))
        .unwrap_or_default(),
    )
}

/// One model in both SDKs' shapes.
pub fn model_json(m: &ModelInfo) -> Value {
    json!({
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": m.owned_by,
        "type": "model",
        "display_name": m.id,
        "created_at": "1970-01-01T00:00:00Z",
    })
}

/// A Responses stream's `error` event for a failure after the stream began (the SDKs raise
/// it): `event: error` with the error's `code`, `message` and `param`.
pub fn responses_error_event(err: &ApiError, out: &mut Vec<u8>) {
    let data = json!({
        "type": "error",
        "code": err.code.as_deref().unwrap_or("upstream_error"),
        "message": err.message,
        "param": err.param,
        "sequence_number": 0,
    });
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::types::Embedding;

    #[test]
    fn validation_names_the_field() {
        assert_eq!(decode_chat(b"{").unwrap_err().status, 400);
        assert_eq!(
            decode_chat(br#"{"messages":[]}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("model")
        );
        assert_eq!(
            decode_chat(br#"{"model":"m","messages":[]}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("messages")
        );
        let e = decode_chat(br#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#)
            .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            decode_chat(br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#).is_ok()
        );
    }

    #[test]
    fn base64_embeddings_are_little_endian_f32() {
        let resp = EmbeddingResponse {
            object: "list".into(),
            data: vec![Embedding {
                object: "embedding".into(),
                index: 0,
                embedding: vec![1.0, -2.5],
            }],
            model: "e".into(),
            usage: None,
        };
        let v: Value = serde_json::from_slice(&encode_embeddings(&resp, true)).unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let floats: Vec<f32> = raw
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(floats, vec![1.0, -2.5]);
    }
}
