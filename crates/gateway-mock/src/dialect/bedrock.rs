//! Bedrock Converse and ConverseStream: request checks (alternating roles, `toolConfig` required
//! with tool blocks), the Converse body, eventstream frames, and `{"message"}` errors typed by
//! the `x-amzn-ErrorType` header.

use bytes::Bytes;
use serde_json::{json, Value};

use super::{ErrorKind, ErrorResponse};
use crate::eventstream;
use crate::format::js;
use crate::plan::{
    chars_of, embedding, embedding_dims, text_of, tokens_for_chars, LastTurn, Output, Plan, Prompt,
    ToolChoice,
};
use crate::state::LimitKind;

/// Parses a Converse request; the model id comes from the (decoded) path.
pub(crate) fn parse(body: &Value, model: &str, stream: bool) -> Prompt {
    let mut p = Prompt::new(model.to_owned());
    p.stream = stream;
    p.include_usage = true;
    p.chars = chars_of(&body["system"]);
    if let Some(msgs) = body["messages"].as_array() {
        p.chars += msgs.iter().map(|m| chars_of(&m["content"])).sum::<usize>();
        p.last = match msgs.last() {
            Some(m) if m["role"].as_str() == Some("user") => {
                let blocks = m["content"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if let Some(tr) = blocks.iter().find_map(|b| b.get("toolResult")) {
                    LastTurn::ToolResult(text_of(&tr["content"]))
                } else {
                    LastTurn::User(
                        blocks
                            .iter()
                            .filter_map(|b| b["text"].as_str())
                            .collect::<Vec<_>>()
                            .join(""),
                    )
                }
            }
            _ => LastTurn::Other,
        };
    }
    if let Some(tools) = body["toolConfig"]["tools"].as_array() {
        p.tools = tools
            .iter()
            .filter_map(|t| t["toolSpec"]["name"].as_str().map(str::to_owned))
            .collect();
    }
    p.tool_choice = body["toolConfig"]["toolChoice"]["tool"]["name"]
        .as_str()
        .map_or(ToolChoice::Auto, |n| ToolChoice::Named(n.to_owned()));
    // Claude's extended thinking, through the model-specific fields.
    p.thinking =
        body["additionalModelRequestFields"]["thinking"]["type"].as_str() == Some("enabled");
    p
}

/// The signature of the mock's reasoning (Bedrock passes Claude's on).
const REASONING_SIGNATURE: &str = "mock-reasoning-signature";

fn bad(msg: impl Into<String>) -> Option<ErrorKind> {
    Some(ErrorKind::BadRequest(msg.into()))
}

/// Validates a Converse request as Bedrock does.
pub(crate) fn validate(body: &Value) -> Option<ErrorKind> {
    let Some(msgs) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return bad("A conversation must start with a user message. Try again with a conversation that starts with a user message.");
    };
    let mut has_tool_blocks = false;
    let mut prev_role = "";
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        if role != "user" && role != "assistant" {
            return bad(format!("1 validation error detected: Value '{role}' at 'messages.{}.member.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]", i + 1));
        }
        if i == 0 && role != "user" {
            return bad("A conversation must start with a user message. Try again with a conversation that starts with a user message.");
        }
        if role == prev_role {
            return bad("A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.");
        }
        prev_role = role;
        let Some(blocks) = m["content"].as_array() else {
            return bad(format!("1 validation error detected: Value null at 'messages.{}.member.content' failed to satisfy constraint: Member must not be null", i + 1));
        };
        for (j, b) in blocks.iter().enumerate() {
            if b.get("toolUse").is_some() || b.get("toolResult").is_some() {
                has_tool_blocks = true;
            }
            if let Some(t) = b.get("text") {
                if t.as_str().is_none_or(|s| s.trim().is_empty()) {
                    return bad(format!("The text field in the ContentBlock object at messages.{i}.content.{j} is blank. Add text to the text field, and try again."));
                }
            }
        }
    }
    if has_tool_blocks && body["toolConfig"].is_null() {
        return bad("The toolConfig field must be defined when using toolUse and toolResult content blocks.");
    }
    None
}

fn tool_use_id(plan: &Plan) -> String {
    format!("tooluse_mock{:012}", plan.seq)
}

fn usage(plan: &Plan) -> Value {
    json!({
        "inputTokens": plan.prompt_tokens,
        "outputTokens": plan.completion_tokens,
        "totalTokens": plan.total_tokens(),
        "cacheReadInputTokens": 0,
        "cacheWriteInputTokens": 0
    })
}

/// The Converse response body.
pub(crate) fn chat_json(plan: &Plan) -> String {
    let (content, stop) = match &plan.output {
        Output::Text { text, .. } => (json!([{ "text": &**text }]), "end_turn"),
        Output::Tool {
            name, arguments, ..
        } => {
            let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
            (
                json!([{ "toolUse": { "toolUseId": tool_use_id(plan), "name": name, "input": input } }]),
                "tool_use",
            )
        }
    };
    let content = match content {
        Value::Array(mut blocks) if plan.thinking => {
            blocks.insert(
                0,
                json!({ "reasoningContent": { "reasoningText": {
                    "text": super::anthropic::THINKING, "signature": REASONING_SIGNATURE } } }),
            );
            Value::Array(blocks)
        }
        other => other,
    };
    json!({
        "output": { "message": { "role": "assistant", "content": content } },
        "stopReason": stop,
        "usage": usage(plan),
        "metrics": { "latencyMs": 1 }
    })
    .to_string()
}

fn ev(event_type: &str, payload: &str) -> Bytes {
    Bytes::from(eventstream::event(event_type, payload))
}

/// The ConverseStream frames: messageStart, content block events, messageStop, metadata.
pub(crate) fn chat_stream(plan: &Plan) -> Vec<Bytes> {
    let mut out = vec![ev(
        "messageStart",
        r#"{"p":"abcdefghijkl","role":"assistant"}"#,
    )];
    // The reasoning block, when asked for, is block 0 and the answer's block 1.
    let base = usize::from(plan.thinking);
    if plan.thinking {
        out.push(ev(
            "contentBlockDelta",
            &format!(
                r#"{{"contentBlockIndex":0,"delta":{{"reasoningContent":{{"text":{}}}}},"p":"abc"}}"#,
                js(super::anthropic::THINKING)
            ),
        ));
        out.push(ev(
            "contentBlockDelta",
            &format!(
                r#"{{"contentBlockIndex":0,"delta":{{"reasoningContent":{{"signature":"{REASONING_SIGNATURE}"}}}},"p":"abc"}}"#
            ),
        ));
        out.push(ev(
            "contentBlockStop",
            r#"{"contentBlockIndex":0,"p":"abc"}"#,
        ));
    }
    let stop = match &plan.output {
        Output::Text { chunks, .. } => {
            for c in chunks.iter() {
                out.push(ev(
                    "contentBlockDelta",
                    &format!(
                        r#"{{"contentBlockIndex":{},"delta":{{"text":{}}},"p":"abcdefghijklmnopqrstu"}}"#,
                        base,
                        js(c)
                    ),
                ));
            }
            "end_turn"
        }
        Output::Tool {
            name, fragments, ..
        } => {
            out.push(ev(
                "contentBlockStart",
                &format!(
                    r#"{{"contentBlockIndex":{},"p":"abcdef","start":{{"toolUse":{{"name":{},"toolUseId":"{}"}}}}}}"#,
                    base,
                    js(name),
                    tool_use_id(plan)
                ),
            ));
            for f in fragments {
                out.push(ev(
                    "contentBlockDelta",
                    &format!(
                        r#"{{"contentBlockIndex":{},"delta":{{"toolUse":{{"input":{}}}}},"p":"abcdefghij"}}"#,
                        base,
                        js(f)
                    ),
                ));
            }
            "tool_use"
        }
    };
    out.push(ev(
        "contentBlockStop",
        &format!(r#"{{"contentBlockIndex":{base},"p":"abcdefghijklmnop"}}"#),
    ));
    out.push(ev(
        "messageStop",
        &format!(r#"{{"p":"abcdefghijklmnopqrs","stopReason":"{stop}"}}"#),
    ));
    out.push(ev(
        "metadata",
        &format!(
            r#"{{"metrics":{{"latencyMs":1}},"p":"abcdefgh","usage":{}}}"#,
            usage(plan)
        ),
    ));
    out
}

/// `InvokeModelWithResponseStream` frames for Anthropic's SSE `events`: each event's JSON, base64,
/// as the `bytes` of a `chunk` frame.
pub(crate) fn invoke_stream(events: &[Bytes]) -> Vec<Bytes> {
    use base64::Engine as _;
    events
        .iter()
        .filter_map(|e| {
            let text = std::str::from_utf8(e).ok()?;
            let data = text.lines().find_map(|l| l.strip_prefix("data: "))?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(data);
            Some(ev(
                "chunk",
                &format!(r#"{{"bytes":"{b64}","p":"abcdefgh"}}"#),
            ))
        })
        .collect()
}

/// `InvokeModel` checks for Claude: Bedrock's `anthropic_version`, no `model` or `stream` in the
/// body, then the Messages API's own.
/// Whether a Bedrock model id is an embeddings model (`InvokeModel` with its own body).
pub(crate) fn is_embed_model(model: &str) -> bool {
    model.contains("titan-embed") || model.contains("cohere.embed")
}

/// `InvokeModel` for an embeddings model, as Bedrock documents each: Titan Text Embeddings
/// (`{"inputText", "dimensions"?, "normalize"?}` → `{"embedding", "inputTextTokenCount"}`, one
/// text a call) and Cohere Embed (`{"texts", "input_type"}` → `{"embeddings", "id",
/// "response_type": "embeddings_floats", "texts"}`, at most 96). Returns the body and the input
/// tokens (Bedrock's `X-Amzn-Bedrock-Input-Token-Count`).
pub(crate) fn embed_json(model: &str, body: &Value, seq: u64) -> Result<(String, u64), ErrorKind> {
    if model.contains("titan-embed") {
        let Some(text) = body["inputText"].as_str() else {
            return Err(ErrorKind::BadRequest(
                "Malformed input request: #: required key [inputText] not found, please reformat your input and try again.".to_owned(),
            ));
        };
        if let Some(extra) = body.as_object().and_then(|o| {
            o.keys().find(|k| {
                ![
                    "inputText",
                    "dimensions",
                    "normalize",
                    "embeddingTypes",
                    "embeddingConfig",
                ]
                .contains(&k.as_str())
            })
        }) {
            return Err(ErrorKind::BadRequest(format!(
                "Malformed input request: #: extraneous key [{extra}] is not permitted, please reformat your input and try again."
            )));
        }
        let dims = match body["dimensions"].as_u64() {
            None => 1024,
            Some(d @ (256 | 512 | 1024)) => d,
            Some(d) => {
                return Err(ErrorKind::BadRequest(format!(
                    "Malformed input request: #/dimensions: {d} is not a valid enum value, please reformat your input and try again."
                )))
            }
        };
        let tokens = tokens_for_chars(text.chars().count());
        let vector = embedding(text, usize::try_from(dims).unwrap_or(1024));
        let out = json!({
            "embedding": vector,
            "inputTextTokenCount": tokens,
            "embeddingsByType": { "float": vector },
        });
        return Ok((out.to_string(), tokens));
    }
    let texts: Vec<&str> = body["texts"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if texts.is_empty() || texts.len() > 96 {
        return Err(ErrorKind::BadRequest(
            "Malformed input request: #/texts: expected between 1 and 96 texts, please reformat your input and try again.".to_owned(),
        ));
    }
    if body["input_type"].as_str().is_none() {
        return Err(ErrorKind::BadRequest(
            "Malformed input request: #: required key [input_type] not found, please reformat your input and try again.".to_owned(),
        ));
    }
    let dims = embedding_dims(None);
    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| embedding(t, dims)).collect();
    let tokens = tokens_for_chars(texts.iter().map(|t| t.chars().count()).sum());
    let out = json!({
        "embeddings": vectors,
        "id": format!("00000000-0000-4000-8000-{seq:012}"),
        "response_type": "embeddings_floats",
        "texts": texts,
    });
    Ok((out.to_string(), tokens))
}

pub(crate) fn validate_invoke(body: &Value) -> Option<ErrorKind> {
    let bad = |m: &str| Some(ErrorKind::BadRequest(m.to_owned()));
    if body["anthropic_version"].as_str() != Some("bedrock-2023-05-31") {
        return bad("anthropic_version: bedrock-2023-05-31 is required");
    }
    for extra in ["model", "stream", "fallbacks"] {
        if body.get(extra).is_some() {
            return bad(&format!("{extra}: Extra inputs are not permitted"));
        }
    }
    let mut messages = body.clone();
    messages["model"] = Value::from("bedrock");
    if let Some(o) = messages.as_object_mut() {
        o.remove("anthropic_version");
        o.remove("anthropic_beta");
    }
    super::anthropic::validate(&messages, true, false)
}

/// A frame with a corrupted message CRC (for the `malformed` fault).
pub(crate) fn malformed_frame() -> Bytes {
    let mut f = eventstream::event("messageStart", r#"{"role":"assistant"}"#);
    if let Some(last) = f.last_mut() {
        *last ^= 0xff;
    }
    Bytes::from(f)
}

fn server_exception(status: u16) -> (&'static str, &'static str) {
    match status {
        503 | 529 => (
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        ),
        408 | 504 => (
            "ModelTimeoutException",
            "Model has timed out in processing the request. Try your request again.",
        ),
        424 => (
            "ModelErrorException",
            "The system encountered an unexpected error during processing. Try your request again.",
        ),
        429 => (
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        _ => (
            "InternalServerException",
            "The system encountered an unexpected error during processing. Try your request again.",
        ),
    }
}

/// The in-band `:message-type=exception` frame.
pub(crate) fn stream_error(status: u16) -> Bytes {
    let (kind, message) = server_exception(status);
    let mut stream_kind = kind.to_owned();
    if let Some(first) = stream_kind.get_mut(..1) {
        first.make_ascii_lowercase();
    }
    if status == 424 {
        stream_kind = "modelStreamErrorException".to_owned();
    }
    Bytes::from(eventstream::exception(
        &stream_kind,
        &json!({ "message": message }).to_string(),
    ))
}

/// Bedrock error shapes: `{"message"}` plus `x-amzn-ErrorType`.
pub(crate) fn error(e: &ErrorKind) -> ErrorResponse {
    let (status, kind, message): (u16, &str, String) = match e {
        ErrorKind::MissingKey => (
            403,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token".to_owned(),
        ),
        ErrorKind::InvalidKey(_) | ErrorKind::TokenInvalid | ErrorKind::TokenExpired => (
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_owned(),
        ),
        ErrorKind::Signature(kind, msg) => (403, kind, msg.clone()),
        ErrorKind::BadRequest(msg) => (400, "ValidationException", msg.clone()),
        ErrorKind::NotFound(_) => (
            404,
            "ResourceNotFoundException",
            "Model not found.".to_owned(),
        ),
        ErrorKind::RateLimited { kind, .. } => (
            429,
            "ThrottlingException",
            match kind {
                LimitKind::Requests => "Too many requests, please wait before trying again.",
                LimitKind::Tokens => "Too many tokens, please wait before trying again.",
            }
            .to_owned(),
        ),
        ErrorKind::Quota => (
            429,
            "ThrottlingException",
            "Too many tokens per day, please wait before trying again.".to_owned(),
        ),
        ErrorKind::Server(status) => {
            let (kind, msg) = server_exception(*status);
            (*status, kind, msg.to_owned())
        }
    };
    let namespace = if matches!(e, ErrorKind::Signature(..) | ErrorKind::MissingKey) {
        "com.amazon.coral.service"
    } else {
        "com.amazon.bedrock"
    };
    ErrorResponse {
        status,
        body: json!({ "message": message }).to_string(),
        headers: vec![(
            "x-amzn-errortype",
            format!("{kind}:http://internal.amazon.com/coral/{namespace}/"),
        )],
    }
}
