//! AWS Bedrock through the Converse API, kind `bedrock`.
//!
//! `POST {base}/model/{modelId}/converse` and `/converse-stream`, with the base defaulting to
//! `https://bedrock-runtime.{region}.amazonaws.com`. The model id (a base id such as
//! `anthropic.claude-3-5-sonnet-20240620-v1:0`, an inference profile or an ARN) is percent-encoded as
//! one path segment, and requests are signed with SigV4 (signing name `bedrock`, the canonical URI
//! encoded a second time, as every AWS service but S3 expects) using the `aws-sigv4` crate. A
//! [`Credential::ApiKey`] is sent as a Bedrock API key (`Authorization: Bearer`).
//!
//! Conversion follows botocore's `bedrock-runtime` model and the gateways' rules: `system` messages
//! become `system` blocks, roles alternate (same-role turns are merged, tool results go into a user
//! turn), `tool_calls` become `toolUse` blocks, tool names are sanitized to `[a-zA-Z][a-zA-Z0-9_]*`
//! (at most 64 characters) with a reverse map for the answer ([`ToolNames`]), and `top_k` goes into
//! `additionalModelRequestFields`. `temperature` is clamped to Bedrock's 0–1; `n`, `seed`, the
//! penalties and `response_format` have no Converse field and are not sent; for a Claude model
//! that thinks, an Anthropic client's thinking budget or an OpenAI client's `reasoning_effort`
//! goes into `additionalModelRequestFields.thinking` ([`with_thinking`]), and the answer's
//! `reasoningContent` comes back as reasoning.
//! Images must be `data:` URLs (sent as bytes) or `s3://` locations. ConverseStream answers with `application/vnd.amazon.eventstream`
//! frames ([`crate::eventstream`]) that [`BedrockStream`] turns into canonical chunks; usage only
//! arrives in the final `metadata` event and is sent on a `choices: []` chunk.
//!
//! With `claude_invoke` on, an Anthropic client's own request for a Claude model (a model id with
//! `anthropic.` in it) goes to `InvokeModel` instead (`/invoke`, `/invoke-with-response-stream`):
//! its Messages body as it came, without `model` and `stream`, with `"anthropic_version":
//! "bedrock-2023-05-31"` and its `anthropic-beta` features as `anthropic_beta`; the answer is Anthropic's message and the stream
//! Anthropic's events (each the base64 `bytes` of a `chunk` frame), passed on as they came
//! ([`InvokeStream`]).
//!
//! Errors carry their type in `x-amzn-ErrorType` (`ThrottlingException:http://internal...`) and a
//! `{"message"}` body; [`classify_error`] maps them. Throttling is per account and region, so it is
//! a provider-scope rate limit: another key of the same account does not help.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use gateway_core::types::{
    ChatChunk, ChatRequest, ChatResponse, Choice, Content, ContentPart, Delta, Embedding,
    EmbeddingRequest, EmbeddingResponse, FinishReason, FunctionCall, FunctionCallDelta, Message,
    NativeRequest, Role, ToolCall, ToolCallDelta, ToolChoice, ToolChoiceMode, Usage,
};
use gateway_core::{
    Call, Credential, Provider, ProviderError, ProviderResponse, ProviderStream, RateLimitInfo,
    RateLimitScope,
};
use http::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION};
use http::{HeaderMap, Method};
use hyper::body::Body as HttpBody;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::time::{Instant, Sleep};

use base64::Engine as _;

use crate::anthropic::{self, parse_message, rewrite_native, MessageStreamDecoder};
use crate::eventstream::{Frame, FrameDecoder};
use crate::gemini::unix_now;
use crate::http::{bearer, header_value, join_url, json_request, Body, HttpClient};
use crate::openai::push_traceparent;
use crate::sse::SseEvent;
use crate::stream::{decode_stream, StreamDecoder};

/// The SigV4 signing name of the Bedrock runtime.
pub const SIGNING_NAME: &str = "bedrock";

/// The region used when none is configured or found in the base URL.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The region of a `https://bedrock-runtime[-fips].{region}.amazonaws.com` URL.
pub fn region_from_url(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split(['/', ':']).next()?;
    let rest = host
        .strip_prefix("bedrock-runtime.")
        .or_else(|| host.strip_prefix("bedrock-runtime-fips."))?;
    let region = rest.split('.').next()?;
    (!region.is_empty()).then(|| region.to_owned())
}

/// The default endpoint of `region`.
pub fn default_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// Characters left as is in a path segment: RFC 3986 unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a model id as one path segment (`:` is `%3A`, `/` is `%2F`).
pub fn encode_model_id(model: &str) -> String {
    utf8_percent_encode(model, SEGMENT).to_string()
}

// ---------------------------------------------------------------------------------------------
// Tool names
// ---------------------------------------------------------------------------------------------

/// The longest tool name Bedrock accepts.
const MAX_TOOL_NAME: usize = 64;

/// Tool names as sent to Bedrock and back.
///
/// Names matching `[a-zA-Z][a-zA-Z0-9_]*` of at most 64 characters are sent unchanged; others are
/// sanitized (invalid characters become `_`, a leading non-letter gets a `t_` prefix, the result is
/// truncated, and a numeric suffix keeps distinct names distinct). The reverse map restores the
/// caller's names in the answer.
#[derive(Debug, Clone, Default)]
pub struct ToolNames {
    to_wire: HashMap<String, String>,
    from_wire: HashMap<String, String>,
}

impl ToolNames {
    /// The wire name of `name`, registering it on first use.
    pub fn wire(&mut self, name: &str) -> String {
        if let Some(w) = self.to_wire.get(name) {
            return w.clone();
        }
        let base = sanitize_tool_name(name);
        let mut candidate = base.clone();
        let mut n = 2;
        while self.from_wire.contains_key(&candidate) {
            let suffix = format!("_{n}");
            let keep = MAX_TOOL_NAME.saturating_sub(suffix.len()).min(base.len());
            candidate = format!("{}{suffix}", &base[..keep]);
            n += 1;
        }
        self.to_wire.insert(name.to_owned(), candidate.clone());
        self.from_wire.insert(candidate.clone(), name.to_owned());
        candidate
    }

    /// The caller's name for a wire name (the wire name itself when unknown).
    pub fn original(&self, wire: &str) -> String {
        self.from_wire
            .get(wire)
            .cloned()
            .unwrap_or_else(|| wire.to_owned())
    }
}

fn sanitize_tool_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert_str(0, "t_");
    }
    out.truncate(MAX_TOOL_NAME);
    out
}

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

fn bad_request(message: impl Into<String>, param: &str) -> ProviderError {
    ProviderError::BadRequest {
        status: 400,
        message: message.into(),
        param: Some(param.to_owned()),
        code: None,
    }
}

/// The embeddings models Bedrock serves through `InvokeModel`, each with its own body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EmbedFamily {
    /// Amazon Titan Text Embeddings (and the multimodal Titan, for text): one text a call.
    Titan,
    /// Cohere Embed v3 and v4: up to 96 texts a call.
    Cohere,
}

impl EmbedFamily {
    fn of(model: &str) -> Option<Self> {
        if model.contains("amazon.titan-embed") {
            Some(Self::Titan)
        } else if model.contains("cohere.embed") {
            Some(Self::Cohere)
        } else {
            None
        }
    }
}

/// The `InvokeModel` body of a Titan embeddings model for one text: `dimensions` on Text
/// Embeddings V2, `embeddingConfig.outputEmbeddingLength` on the multimodal model; V1 takes
/// the text alone.
pub fn titan_embed_body(model: &str, text: &str, dimensions: Option<u32>) -> Value {
    let mut body = json!({ "inputText": text });
    match dimensions {
        Some(d) if model.contains("titan-embed-text-v2") => body["dimensions"] = json!(d),
        Some(d) if model.contains("titan-embed-image") => {
            body["embeddingConfig"] = json!({ "outputEmbeddingLength": d });
        }
        _ => {}
    }
    body
}

/// The `InvokeModel` body of a Cohere Embed model: the texts and what they are for
/// (`input_type`, required; documents for search unless the request says), and on Embed v4
/// the output dimension.
pub fn cohere_embed_body(
    model: &str,
    texts: &[String],
    input_type: Option<&str>,
    dimensions: Option<u32>,
) -> Value {
    let mut body = json!({
        "texts": texts,
        "input_type": input_type.unwrap_or("search_document"),
    });
    if let Some(d) = dimensions.filter(|_| model.contains("embed-v4")) {
        body["output_dimension"] = json!(d);
    }
    body
}

/// The vectors of a Cohere Embed answer: `embeddings` as a list of vectors
/// (`embeddings_floats`) or by type (`{"float": [...]}`, Embed v4 and requests with
/// `embedding_types`).
fn cohere_vectors(v: &Value) -> Option<Vec<Vec<f32>>> {
    let list = match &v["embeddings"] {
        Value::Array(a) => a,
        Value::Object(o) => o.get("float")?.as_array()?,
        _ => return None,
    };
    list.iter()
        .map(|e| serde_json::from_value::<Vec<f32>>(e.clone()).ok())
        .collect()
}

/// The input tokens Bedrock counted (`X-Amzn-Bedrock-Input-Token-Count`).
fn input_token_header(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("x-amzn-bedrock-input-token-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a Bedrock model id is a Claude model that thinks (Claude 3.7 and the models named
/// `claude-{family}-{version}`, from Claude 4 on); earlier Claude models refuse `thinking`.
fn claude_thinks(model: &str) -> bool {
    model.contains("anthropic.claude")
        && (model.contains("claude-3-7")
            || ["claude-sonnet-", "claude-opus-", "claude-haiku-"]
                .iter()
                .any(|f| model.contains(f)))
}

/// Extended thinking for a Claude model through Converse: the budget an Anthropic client asked
/// for, or the budget of an OpenAI client's `reasoning_effort` (as the `anthropic` kind sends
/// it: within three quarters of the client's limit, at least 1,024), in
/// `additionalModelRequestFields.thinking`. With thinking on, Claude takes no `temperature`
/// or `top_k`, and `maxTokens` must exceed the budget. Other models are left as they are.
pub fn with_thinking(body: &mut Value, req: &ChatRequest, model: &str) {
    // A tool-use turn in the history would have to start with the thinking that preceded it
    // (with its signature), which a translated conversation does not have: thinking stays off.
    if !claude_thinks(model) || req.messages.iter().any(|m| m.tool_calls.is_some()) {
        return;
    }
    let budget = req
        .thinking_budget
        .or_else(|| crate::anthropic::effort_budget(req));
    let (Some(budget), Some(body)) = (budget, body.as_object_mut()) else {
        return;
    };
    if let Some(Value::Object(inference)) = body.get_mut("inferenceConfig") {
        inference.remove("temperature");
        let max = inference.get("maxTokens").and_then(Value::as_u64);
        match max {
            Some(m) if m <= u64::from(budget) => {
                inference.insert("maxTokens".into(), Value::from(m + u64::from(budget)));
            }
            Some(_) => {}
            None => {
                inference.insert("maxTokens".into(), Value::from(u64::from(budget) + 4096));
            }
        }
    } else {
        body.insert(
            "inferenceConfig".into(),
            json!({ "maxTokens": u64::from(budget) + 4096 }),
        );
    }
    let extra = body
        .entry("additionalModelRequestFields")
        .or_insert_with(|| json!({}));
    if let Some(extra) = extra.as_object_mut() {
        extra.remove("top_k");
        extra.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
    }
}

/// Converts a canonical request into a Converse body. Tool names are registered in `names`, which
/// the caller keeps to translate the answer.
pub fn encode_request(req: &ChatRequest, names: &mut ToolNames) -> Result<Value, ProviderError> {
    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut history_has_tools = false;
    let mut history_tool_names: Vec<String> = Vec::new();

    for (i, m) in req.messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer => {
                let text = m.content_text();
                if !text.trim().is_empty() {
                    system.push(json!({ "text": text }));
                }
            }
            Role::User => {
                let blocks = match &m.content {
                    Some(c) => content_blocks(c, i)?,
                    None => Vec::new(),
                };
                push_turn(&mut messages, "user", blocks);
            }
            Role::Assistant => {
                let mut blocks = Vec::new();
                let text = m.content_text();
                if !text.trim().is_empty() {
                    blocks.push(json!({ "text": text }));
                }
                for call in m.tool_calls.iter().flatten() {
                    history_has_tools = true;
                    let input = match serde_json::from_str::<Value>(&call.function.arguments) {
                        Ok(v @ Value::Object(_)) => v,
                        _ => json!({}),
                    };
                    let name = names.wire(&call.function.name);
                    if !history_tool_names.contains(&name) {
                        history_tool_names.push(name.clone());
                    }
                    blocks.push(json!({
                        "toolUse": { "toolUseId": tool_use_id(&call.id), "name": name, "input": input }
                    }));
                }
                push_turn(&mut messages, "assistant", blocks);
            }
            Role::Tool => {
                history_has_tools = true;
                let mut content = match &m.content {
                    Some(c) => tool_result_content(c, i)?,
                    None => Vec::new(),
                };
                if content.is_empty() {
                    content.push(json!({ "json": {} }));
                }
                let block = json!({
                    "toolResult": {
                        "toolUseId": tool_use_id(m.tool_call_id.as_deref().unwrap_or_default()),
                        "content": content,
                        "status": if m.tool_error { "error" } else { "success" }
                    }
                });
                push_turn(&mut messages, "user", vec![block]);
            }
        }
    }
    // Tool results come first in a user turn that also has text.
    for (role, blocks) in &mut messages {
        if *role == "user" {
            blocks.sort_by_key(|b| u8::from(b.get("toolResult").is_none()));
        }
    }

    // Converse refuses a conversation that starts with the assistant ("A conversation must
    // start with a user message"), which OpenAI's API takes (a greeting before the first
    // question): a minimal user turn goes first.
    if messages
        .first()
        .is_some_and(|(role, _)| *role == "assistant")
    {
        messages.insert(0, ("user", vec![json!({ "text": "." })]));
    }
    let mut body = Map::new();
    body.insert(
        "messages".into(),
        Value::Array(
            messages
                .into_iter()
                .map(|(role, content)| json!({ "role": role, "content": content }))
                .collect(),
        ),
    );
    // Converse has no JSON mode: `response_format` becomes an instruction, as for Anthropic.
    if let Some(text) = crate::anthropic::json_instruction(req.response_format.as_ref()) {
        system.push(json!({ "text": text }));
    }
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }

    let mut inference = Map::new();
    if let Some(max) = req.output_limit() {
        inference.insert("maxTokens".into(), Value::from(max));
    }
    if let Some(t) = req.temperature {
        inference.insert("temperature".into(), Value::from(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = req.top_p {
        inference.insert("topP".into(), Value::from(p));
    }
    if let Some(stop) = &req.stop {
        inference.insert("stopSequences".into(), Value::from(stop.to_vec()));
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(k) = req.top_k {
        body.insert("additionalModelRequestFields".into(), json!({ "top_k": k }));
    }

    let tools: Vec<&gateway_core::types::Tool> = req
        .tools
        .iter()
        .flatten()
        .filter(|t| t.is_function())
        .collect();
    let choice_none = matches!(
        req.tool_choice,
        Some(ToolChoice::Mode(ToolChoiceMode::None))
    );
    let mut specs: Vec<Value> = Vec::new();
    if !tools.is_empty() && (!choice_none || history_has_tools) {
        for t in tools {
            let mut spec = Map::new();
            spec.insert("name".into(), Value::String(names.wire(&t.function.name)));
            if let Some(d) = t.function.description.as_ref().filter(|d| !d.is_empty()) {
                spec.insert("description".into(), Value::String(d.clone()));
            }
            let schema = t
                .function
                .parameters
                .clone()
                .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
            spec.insert("inputSchema".into(), json!({ "json": schema }));
            specs.push(json!({ "toolSpec": spec }));
        }
    }
    if specs.is_empty() && history_has_tools {
        // Bedrock requires a toolConfig whenever the history holds tool blocks.
        for name in &history_tool_names {
            specs.push(json!({ "toolSpec": {
                "name": name,
                "inputSchema": { "json": { "type": "object", "properties": {} } }
            }}));
        }
        if specs.is_empty() {
            specs.push(json!({ "toolSpec": {
                "name": "unused_tool",
                "inputSchema": { "json": { "type": "object", "properties": {} } }
            }}));
        }
    }
    if !specs.is_empty() {
        let mut config = Map::new();
        config.insert("tools".into(), Value::Array(specs));
        let choice = match &req.tool_choice {
            Some(ToolChoice::Mode(ToolChoiceMode::Auto)) => Some(json!({ "auto": {} })),
            Some(ToolChoice::Mode(ToolChoiceMode::Required)) => Some(json!({ "any": {} })),
            Some(ToolChoice::Named(n)) => {
                Some(json!({ "tool": { "name": names.wire(&n.function.name) } }))
            }
            Some(ToolChoice::Mode(ToolChoiceMode::None) | ToolChoice::Other(_)) | None => None,
        };
        if let Some(c) = choice {
            config.insert("toolChoice".into(), c);
        }
        body.insert("toolConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(body))
}

fn push_turn(
    messages: &mut Vec<(&'static str, Vec<Value>)>,
    role: &'static str,
    blocks: Vec<Value>,
) {
    if blocks.is_empty() {
        return;
    }
    match messages.last_mut() {
        Some((last, existing)) if *last == role => existing.extend(blocks),
        _ => messages.push((role, blocks)),
    }
}

fn content_blocks(content: &Content, index: usize) -> Result<Vec<Value>, ProviderError> {
    match content {
        Content::Text(t) if t.trim().is_empty() => Ok(Vec::new()),
        Content::Text(t) => Ok(vec![json!({ "text": t })]),
        Content::Parts(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                match p {
                    ContentPart::Text { text } if text.trim().is_empty() => {}
                    ContentPart::Text { text } => out.push(json!({ "text": text })),
                    ContentPart::ImageUrl { image_url } => {
                        out.push(image_block(&image_url.url, index)?);
                    }
                    ContentPart::Other(v) => {
                        return Err(bad_request(
                            format!(
                                "content part type `{}` is not supported by bedrock",
                                v.get("type").and_then(Value::as_str).unwrap_or("?")
                            ),
                            &format!("messages[{index}].content"),
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}

fn tool_result_content(content: &Content, index: usize) -> Result<Vec<Value>, ProviderError> {
    match content {
        Content::Text(t) if t.is_empty() => Ok(Vec::new()),
        Content::Text(t) => Ok(vec![json!({ "text": t })]),
        Content::Parts(_) => content_blocks(content, index),
    }
}

/// An image block: bytes from a `data:` URL, or an `s3://` location. Bedrock fetches no http URLs.
fn image_block(url: &str, index: usize) -> Result<Value, ProviderError> {
    let param = format!("messages[{index}].content");
    let format_of = |mime_or_ext: &str| -> Option<&'static str> {
        match mime_or_ext.to_ascii_lowercase().as_str() {
            "image/png" | "png" => Some("png"),
            "image/jpeg" | "image/jpg" | "jpeg" | "jpg" => Some("jpeg"),
            "image/gif" | "gif" => Some("gif"),
            "image/webp" | "webp" => Some("webp"),
            _ => None,
        }
    };
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| bad_request("malformed data: URL", &param))?;
        let mime = meta
            .strip_suffix(";base64")
            .ok_or_else(|| bad_request("data: URLs must be base64", &param))?;
        let format = format_of(mime).ok_or_else(|| {
            bad_request(
                format!("image type `{mime}` is not supported by bedrock"),
                &param,
            )
        })?;
        return Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }));
    }
    if url.starts_with("s3://") {
        let ext = url.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
        let format = format_of(ext).unwrap_or("png");
        return Ok(
            json!({ "image": { "format": format, "source": { "s3Location": { "uri": url } } } }),
        );
    }
    Err(bad_request(
        "bedrock accepts images only as data: URLs (base64) or s3:// locations",
        &param,
    ))
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// A Converse response. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WireResponse {
    /// `{"message": {...}}`.
    pub output: WireOutput,
    /// Why generation stopped.
    pub stop_reason: Option<String>,
    /// Token counts.
    pub usage: Option<WireUsage>,
}

/// The output union.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WireOutput {
    /// The assistant message.
    pub message: Option<WireMessage>,
}

/// A message with content blocks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WireMessage {
    /// `text`, `toolUse`, `reasoningContent`... blocks, as JSON.
    pub content: Vec<Value>,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WireUsage {
    /// Input tokens, cache reads and writes excluded.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write_input_tokens: u64,
}

impl WireUsage {
    /// As canonical usage: prompt tokens include cache reads and writes.
    pub fn to_usage(self) -> Usage {
        Usage::new(
            self.input_tokens
                .saturating_add(self.cache_read_input_tokens)
                .saturating_add(self.cache_write_input_tokens),
            self.output_tokens,
            self.cache_read_input_tokens,
        )
    }
}

/// Maps a `stopReason`.
pub fn map_stop_reason(reason: &str) -> FinishReason {
    match reason {
        "tool_use" => FinishReason::ToolCalls,
        "max_tokens" => FinishReason::Length,
        "model_context_window_exceeded" => FinishReason::ContextWindow,
        "stop_sequence" => FinishReason::StopSequence,
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// Converts a Converse response. Bedrock returns no id: `id` is used (the request id).
pub fn decode_response(
    wire: WireResponse,
    id: &str,
    model: &str,
    created: u64,
    names: &ToolNames,
) -> ChatResponse {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for block in wire.output.message.map(|m| m.content).unwrap_or_default() {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(tu) = block.get("toolUse") {
            let input = tu.get("input").cloned().unwrap_or_else(|| json!({}));
            calls.push(ToolCall {
                id: tu
                    .get("toolUseId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                kind: "function".into(),
                function: FunctionCall {
                    name: names
                        .original(tu.get("name").and_then(Value::as_str).unwrap_or_default()),
                    arguments: input.to_string(),
                },
            });
        } else if let Some(t) = block
            .pointer("/reasoningContent/reasoningText/text")
            .and_then(Value::as_str)
        {
            reasoning.push_str(t);
        }
    }
    let tool_calls = (!calls.is_empty()).then_some(calls);
    ChatResponse {
        id: id.to_owned(),
        object: "chat.completion".into(),
        created,
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: Role::Assistant,
                content: (!text.is_empty() || tool_calls.is_none()).then_some(Content::Text(text)),
                name: None,
                tool_calls,
                tool_call_id: None,
                refusal: None,
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                audio: None,
                tool_error: false,
            },
            finish_reason: wire.stop_reason.as_deref().map(map_stop_reason),
            logprobs: None,
        }],
        usage: wire.usage.map(WireUsage::to_usage),
        extra: Map::new(),
        raw: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------------------------

/// Turns ConverseStream frames into canonical chunks.
#[derive(Debug)]
pub struct BedrockStream {
    id: String,
    model: String,
    created: u64,
    names: ToolNames,
    /// Content block index → tool-call index.
    tools: HashMap<u64, u32>,
    role_sent: bool,
    stopped: bool,
}

impl BedrockStream {
    /// A converter for one stream; `names` is the map used to encode the request.
    pub fn new(id: &str, model: &str, created: u64, names: ToolNames) -> Self {
        BedrockStream {
            id: id.to_owned(),
            model: model.to_owned(),
            created,
            names,
            tools: HashMap::new(),
            role_sent: false,
            stopped: false,
        }
    }

    fn chunk(&mut self, mut delta: Delta, finish: Option<FinishReason>) -> ChatChunk {
        if !self.role_sent {
            delta.role = Some(Role::Assistant);
            self.role_sent = true;
        }
        ChatChunk::new(self.id.clone(), self.model.clone(), self.created).with_delta(delta, finish)
    }

    /// Converts one frame. Exception and error frames become classified errors.
    pub fn on_frame(&mut self, frame: &Frame) -> Result<Vec<ChatChunk>, ProviderError> {
        frame_error(frame)?;
        let event = frame.header_str(":event-type").unwrap_or_default();
        if !matches!(
            event,
            "messageStart" | "contentBlockStart" | "contentBlockDelta" | "messageStop" | "metadata"
        ) {
            // An event this decoder does not read: whatever its payload, nothing to do.
            return Ok(Vec::new());
        }
        let payload: Value = serde_json::from_slice(&frame.payload).map_err(|e| {
            ProviderError::Protocol(format!("bedrock `{event}` event is not JSON: {e}"))
        })?;
        let block_index = payload
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let out = match event {
            "messageStart" => vec![self.chunk(
                Delta {
                    content: Some(String::new()),
                    ..Delta::default()
                },
                None,
            )],
            "contentBlockStart" => match payload.pointer("/start/toolUse") {
                Some(tu) => {
                    let index = u32::try_from(self.tools.len()).unwrap_or(u32::MAX);
                    self.tools.insert(block_index, index);
                    let name = self
                        .names
                        .original(tu.get("name").and_then(Value::as_str).unwrap_or_default());
                    let id = tu
                        .get("toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    vec![self.chunk(
                        Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index,
                                id: Some(id),
                                kind: Some("function".into()),
                                function: Some(FunctionCallDelta {
                                    name: Some(name),
                                    arguments: Some(String::new()),
                                }),
                            }]),
                            ..Delta::default()
                        },
                        None,
                    )]
                }
                None => Vec::new(),
            },
            "contentBlockDelta" => {
                let delta = payload.get("delta").unwrap_or(&Value::Null);
                if let Some(t) = delta.get("text").and_then(Value::as_str) {
                    vec![self.chunk(
                        Delta {
                            content: Some(t.to_owned()),
                            ..Delta::default()
                        },
                        None,
                    )]
                } else if let Some(input) = delta.pointer("/toolUse/input").and_then(Value::as_str)
                {
                    let index = *self.tools.get(&block_index).ok_or_else(|| {
                        ProviderError::Protocol(format!(
                            "bedrock tool input for block {block_index} before its start"
                        ))
                    })?;
                    vec![self.chunk(
                        Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index,
                                function: Some(FunctionCallDelta {
                                    name: None,
                                    arguments: Some(input.to_owned()),
                                }),
                                ..ToolCallDelta::default()
                            }]),
                            ..Delta::default()
                        },
                        None,
                    )]
                } else if let Some(t) = delta
                    .pointer("/reasoningContent/text")
                    .and_then(Value::as_str)
                {
                    vec![self.chunk(
                        Delta {
                            reasoning_content: Some(t.to_owned()),
                            ..Delta::default()
                        },
                        None,
                    )]
                } else {
                    Vec::new()
                }
            }
            "messageStop" => {
                let reason = payload
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                self.stopped = true;
                vec![self.chunk(Delta::default(), Some(map_stop_reason(reason)))]
            }
            "metadata" => match payload.get("usage") {
                Some(u) => {
                    let usage: WireUsage = serde_json::from_value(u.clone()).map_err(|e| {
                        ProviderError::Protocol(format!("bedrock metadata usage: {e}"))
                    })?;
                    let mut chunk =
                        ChatChunk::new(self.id.clone(), self.model.clone(), self.created);
                    chunk.usage = Some(usage.to_usage());
                    vec![chunk]
                }
                None => Vec::new(),
            },
            // contentBlockStop and anything newer carry nothing the canonical stream needs.
            _ => Vec::new(),
        };
        Ok(out)
    }
}

/// Frames from a response body, reassembled across reads. A broken connection is
/// [`ProviderError::Connect`]; no bytes for `idle` is [`ProviderError::Timeout`].
pub struct FrameStream<B> {
    body: Pin<Box<B>>,
    decoder: FrameDecoder,
    done: bool,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl<B> FrameStream<B> {
    /// Wraps a body.
    pub fn new(body: B, idle: Duration) -> Self {
        FrameStream {
            body: Box::pin(body),
            decoder: FrameDecoder::new(),
            done: false,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl<B> Stream for FrameStream<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    type Item = Result<Frame, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decoder.next_frame() {
                Ok(Some(f)) => return Poll::Ready(Some(Ok(f))),
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.decoder.push(&data);
                        let deadline = Instant::now() + this.idle;
                        this.sleep.as_mut().reset(deadline);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(ProviderError::Connect(format!(
                        "stream broke: {e}"
                    )))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if this.decoder.buffered() > 0 {
                        return Poll::Ready(Some(Err(ProviderError::Protocol(
                            "bedrock stream ended inside a frame".into(),
                        ))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if std::future::Future::poll(this.sleep.as_mut(), cx).is_ready() {
                        this.done = true;
                        return Poll::Ready(Some(Err(ProviderError::Timeout)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// An exception or error frame as a classified error.
fn frame_error(frame: &Frame) -> Result<(), ProviderError> {
    match frame.header_str(":message-type") {
        Some("event") | None => Ok(()),
        Some("exception") => {
            let kind = frame.header_str(":exception-type").unwrap_or("exception");
            let message = serde_json::from_slice::<Value>(&frame.payload)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&frame.payload).into_owned());
            Err(classify_named(
                status_of_exception(kind),
                kind,
                message,
                None,
            ))
        }
        Some(other) => {
            let code = frame.header_str(":error-code").unwrap_or(other);
            let message = frame
                .header_str(":error-message")
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&frame.payload).into_owned());
            Err(classify_named(
                status_of_exception(code),
                code,
                message,
                None,
            ))
        }
    }
}

/// `InvokeModelWithResponseStream` for Claude in pass-through: each `chunk` frame's payload is
/// `{"bytes": <base64 of one Anthropic event>}`, handed to a pass-through
/// [`MessageStreamDecoder`].
pub struct InvokeStream {
    inner: MessageStreamDecoder,
}

impl InvokeStream {
    /// A stream at its start.
    pub fn new() -> Self {
        InvokeStream {
            inner: MessageStreamDecoder::new().passthrough(true),
        }
    }
}

impl Default for InvokeStream {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Deserialize)]
struct InvokeChunk {
    bytes: String,
}

impl StreamDecoder<Frame> for InvokeStream {
    fn event(
        &mut self,
        frame: Frame,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, ProviderError> {
        frame_error(&frame)?;
        if frame
            .header_str(":event-type")
            .is_some_and(|t| t != "chunk")
        {
            return Ok(false);
        }
        let chunk: InvokeChunk = serde_json::from_slice(&frame.payload)
            .map_err(|e| ProviderError::Protocol(format!("bedrock `chunk` event: {e}")))?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(chunk.bytes.as_bytes())
            .map_err(|e| ProviderError::Protocol(format!("bedrock `chunk` bytes: {e}")))?;
        self.inner.event(
            SseEvent {
                event: None,
                data: Bytes::from(data),
                id: None,
                run: false,
            },
            out,
        )
    }

    fn end(&mut self, out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError> {
        self.inner.end(out)
    }
}

/// Whether `model` (a base id, an inference profile or an ARN) is one of Anthropic's.
pub fn is_claude(model: &str) -> bool {
    model.contains("anthropic.")
}

/// The `InvokeModel` body of a client's own Messages request: its members as written, without
/// `model` and `stream`, with Bedrock's `anthropic_version` and the client's betas.
pub fn claude_invoke_body(native: &NativeRequest) -> Result<Bytes, ProviderError> {
    let mut lead = format!("\"anthropic_version\":\"{BEDROCK_ANTHROPIC_VERSION}\"");
    let betas: Vec<&str> = anthropic::client_betas(native).collect();
    if !betas.is_empty() {
        lead.push_str(",\"anthropic_beta\":");
        lead.push_str(&Value::from(betas).to_string());
    }
    rewrite_native(&native.body, lead.as_bytes(), false)
}

/// The `anthropic_version` Bedrock expects in Claude's `InvokeModel` bodies.
pub const BEDROCK_ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

impl StreamDecoder<Frame> for BedrockStream {
    fn event(
        &mut self,
        frame: Frame,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, ProviderError> {
        out.extend(self.on_frame(&frame)?);
        Ok(false)
    }

    fn end(&mut self, _out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError> {
        if self.stopped {
            Ok(())
        } else {
            Err(ProviderError::Connect(
                "bedrock stream ended before messageStop".into(),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The HTTP status Bedrock uses for an exception type (for stream exceptions, which have none).
fn status_of_exception(kind: &str) -> u16 {
    match normalize_kind(kind).as_str() {
        "throttling" | "modelnotready" => 429,
        "validation" | "servicequotaexceeded" => 400,
        "accessdenied" | "unrecognizedclient" | "invalidsignature" | "expiredtoken" => 403,
        "resourcenotfound" => 404,
        "modeltimeout" => 408,
        "modelerror" | "modelstreamerror" => 424,
        "serviceunavailable" => 503,
        _ => 500,
    }
}

/// `ThrottlingException:http://...`, `com.amazon...#ValidationException` or `throttlingException`
/// to `throttling`.
fn normalize_kind(kind: &str) -> String {
    let kind = kind.split(':').next().unwrap_or(kind);
    let kind = kind.rsplit('#').next().unwrap_or(kind);
    let lower = kind.trim().to_ascii_lowercase();
    lower
        .strip_suffix("exception")
        .map(str::to_owned)
        .unwrap_or(lower)
}

/// Classifies a Bedrock error answer from its status, `x-amzn-ErrorType` header and body.
pub fn classify_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = parsed
        .get("message")
        .or_else(|| parsed.get("Message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
    let kind = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            parsed
                .get("__type")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    classify_named(status, &kind, message, crate::headers::retry_after(headers))
}

/// Classifies by exception type, falling back to the status.
fn classify_named(
    status: u16,
    kind: &str,
    message: String,
    retry_after: Option<Duration>,
) -> ProviderError {
    let lower = message.to_ascii_lowercase();
    match normalize_kind(kind).as_str() {
        "throttling" | "servicequotaexceeded" => ProviderError::RateLimited {
            retry_after,
            remaining: None,
            scope: RateLimitScope::Provider,
            message,
        },
        "modelnotready" | "serviceunavailable" => ProviderError::Overloaded {
            retry_after,
            message,
        },
        "validation" => {
            if lower.contains("input is too long")
                || lower.contains("too many tokens")
                || lower.contains("too many input tokens")
                || lower.contains("prompt is too long")
                || lower.contains("context window")
                || lower.contains("maximum context length")
            {
                ProviderError::ContextLengthExceeded { message }
            } else {
                ProviderError::BadRequest {
                    status: 400,
                    message,
                    param: None,
                    code: Some("ValidationException".into()),
                }
            }
        }
        "accessdenied"
        | "unrecognizedclient"
        | "invalidsignature"
        | "expiredtoken"
        | "incompletesignature"
        | "missingauthenticationtoken"
        | "invalidclienttokenid" => ProviderError::Auth {
            status: if status == 401 { 401 } else { 403 },
            message,
        },
        "resourcenotfound" => ProviderError::NotFound { message },
        "modeltimeout" => ProviderError::Server {
            status: 408,
            message,
        },
        "modelerror" | "modelstreamerror" => ProviderError::Server {
            status: 424,
            message,
        },
        "internalserver" => ProviderError::Server {
            status: 500,
            message,
        },
        _ => {
            let mut headers = HeaderMap::new();
            if let Some(d) = retry_after {
                if let Ok(v) = HeaderValue::from_str(&d.as_secs().to_string()) {
                    headers.insert("retry-after", v);
                }
            }
            match status {
                429 => ProviderError::RateLimited {
                    retry_after,
                    remaining: None,
                    scope: RateLimitScope::Provider,
                    message,
                },
                _ => crate::classify::classify_details(
                    status,
                    &headers,
                    &crate::classify::ErrorDetails::message(message),
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SigV4
// ---------------------------------------------------------------------------------------------

/// AWS credentials for signing.
#[derive(Debug, Clone, Copy)]
pub struct AwsKeys<'a> {
    /// Access key id.
    pub access_key_id: &'a str,
    /// Secret access key.
    pub secret_access_key: &'a str,
    /// Session token of temporary credentials.
    pub session_token: Option<&'a str>,
}

/// Where and when a signature applies.
#[derive(Debug, Clone, Copy)]
pub struct SigningScope<'a> {
    /// The AWS region.
    pub region: &'a str,
    /// The signing name (`bedrock`).
    pub service: &'a str,
    /// The signing time.
    pub time: SystemTime,
}

/// Signs a request with SigV4 and returns the headers to add (`authorization`, `x-amz-date`,
/// `x-amz-security-token`). `headers` are the request's headers to cover (besides `host`, which is
/// taken from `url`); the path of `url` must already be percent-encoded once, and is encoded a second
/// time in the canonical request.
pub fn sigv4_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    keys: AwsKeys<'_>,
    scope: SigningScope<'_>,
) -> Result<Vec<(HeaderName, HeaderValue)>, ProviderError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;

    let identity = aws_credential_types::Credentials::new(
        keys.access_key_id,
        keys.secret_access_key,
        keys.session_token.map(str::to_owned),
        None,
        "gateway",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(scope.region)
        .name(scope.service)
        .time(scope.time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| ProviderError::Protocol(format!("sigv4 parameters: {e}")))?
        .into();
    let signable = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| ProviderError::Protocol(format!("sigv4 request: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| ProviderError::Protocol(format!("sigv4 signing: {e}")))?
        .into_parts();
    let (new_headers, _params) = instructions.into_parts();
    let mut out = Vec::with_capacity(new_headers.len());
    for h in new_headers {
        let name = HeaderName::from_static(h.name());
        let value = header_value(h.value(), h.sensitive())?;
        out.push((name, value));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------------------------

/// Settings of a Bedrock provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BedrockConfig {
    /// The AWS region, e.g. `us-east-1` (also the signing region).
    pub region: String,
    /// The endpoint; `None` for `https://bedrock-runtime.{region}.amazonaws.com`.
    pub base_url: Option<String>,
    /// An Anthropic client's requests for Claude models go to `InvokeModel` with its own body
    /// (thinking, cache breakpoints, betas; see the module docs) instead of Converse.
    pub claude_invoke: bool,
}

/// The Bedrock Converse adapter.
#[derive(Debug, Clone)]
pub struct BedrockProvider {
    http: HttpClient,
    base_url: Arc<str>,
    region: Arc<str>,
    claude_invoke: bool,
}

impl BedrockProvider {
    /// A provider for `config`, sending through `http`.
    pub fn new(config: &BedrockConfig, client: HttpClient) -> Self {
        let base = config
            .base_url
            .clone()
            .filter(|b| !b.trim().is_empty())
            .unwrap_or_else(|| default_base_url(&config.region));
        BedrockProvider {
            http: client,
            base_url: base.trim_end_matches('/').into(),
            region: config.region.as_str().into(),
            claude_invoke: config.claude_invoke,
        }
    }

    /// The URL of `operation` (`converse` or `converse-stream`) for `model`.
    pub fn url(&self, model: &str, operation: &str) -> String {
        join_url(
            &self.base_url,
            &format!("/model/{}/{operation}", encode_model_id(model)),
        )
    }

    /// The client's own Messages request, when it goes to `InvokeModel`: `claude_invoke` is on,
    /// the model is Claude, and the client writes Anthropic's format.
    fn invoke<'r>(&self, call: &Call, request: &'r ChatRequest) -> Option<&'r NativeRequest> {
        anthropic::native(call, request).filter(|_| self.claude_invoke && is_claude(&call.model))
    }

    /// A signed (or bearer-authenticated) POST of `body` to `url`.
    fn request(
        &self,
        call: &Call,
        url: &str,
        body: Bytes,
        accept: &'static str,
    ) -> Result<http::Request<Body>, ProviderError> {
        let mut extra = vec![(ACCEPT, HeaderValue::from_static(accept))];
        push_traceparent(&mut extra, call)?;
        match call.credential.as_ref() {
            Credential::ApiKey(key) => {
                extra.push((AUTHORIZATION, bearer(key.expose())?));
                json_request(Method::POST, url, &extra, body)
            }
            Credential::Aws {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                let mut req = json_request(Method::POST, url, &extra, body.clone())?;
                let signed: Vec<(String, String)> = req
                    .headers()
                    .iter()
                    .filter(|(n, _)| *n != http::header::USER_AGENT)
                    .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect();
                let signed_refs: Vec<(&str, &str)> = signed
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let add = sigv4_headers(
                    "POST",
                    url,
                    &signed_refs,
                    &body,
                    AwsKeys {
                        access_key_id,
                        secret_access_key: secret_access_key.expose(),
                        session_token: session_token.as_ref().map(|t| t.expose()),
                    },
                    SigningScope {
                        region: &self.region,
                        service: SIGNING_NAME,
                        time: SystemTime::now(),
                    },
                )?;
                for (n, v) in add {
                    req.headers_mut().insert(n, v);
                }
                Ok(req)
            }
            Credential::None | Credential::ServiceAccount(_) => Err(ProviderError::Auth {
                status: 401,
                message: "bedrock needs AWS access keys or a Bedrock API key".into(),
            }),
        }
    }
}

/// The request id Bedrock returned, as a response id.
fn response_id(headers: &HeaderMap) -> String {
    headers
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
        .map(|v| format!("bedrock-{v}"))
        .unwrap_or_else(|| format!("bedrock-{}", uuid::Uuid::new_v4().simple()))
}

#[async_trait]
impl Provider for BedrockProvider {
    fn kind(&self) -> &str {
        "bedrock"
    }

    fn supports(&self, _model: &str, request: &ChatRequest) -> Result<(), ProviderError> {
        crate::one_answer_only("bedrock", request)
    }

    async fn chat(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderResponse<ChatResponse>, ProviderError> {
        if let Some(native) = self.invoke(call, request) {
            let url = self.url(&call.model, "invoke");
            let req = self.request(call, &url, claude_invoke_body(native)?, "application/json")?;
            let resp = self.http.fetch(req, call.timeout, classify_error).await?;
            let mut body = parse_message(resp.body())?;
            body.raw = Some(resp.body().clone());
            return Ok(ProviderResponse {
                body,
                rate_limit: RateLimitInfo::default(),
            });
        }
        let mut names = ToolNames::default();
        let mut body = encode_request(request, &mut names)?;
        with_thinking(&mut body, request, &call.model);
        let body =
            Bytes::from(serde_json::to_vec(&body).map_err(|e| {
                ProviderError::Protocol(format!("encoding the bedrock request: {e}"))
            })?);
        let url = self.url(&call.model, "converse");
        let req = self.request(call, &url, body, "application/json")?;
        let resp = self.http.fetch(req, call.timeout, classify_error).await?;
        let wire: WireResponse = serde_json::from_slice(resp.body())
            .map_err(|e| ProviderError::Protocol(format!("bedrock response: {e}")))?;
        let id = response_id(resp.headers());
        Ok(ProviderResponse {
            body: decode_response(wire, &id, &call.model, unix_now(), &names),
            rate_limit: RateLimitInfo::default(),
        })
    }

    /// Bedrock's `CountTokens` (`/model/{id}/count-tokens`), asked with the request as
    /// Converse would send it (`messages`, `system`, `toolConfig`,
    /// `additionalModelRequestFields`). Only some models count (Claude, not Nova, not
    /// inference profiles); the others' `ValidationException` makes the gateway estimate.
    /// Embeddings through `InvokeModel`: Titan Text Embeddings one text a call (up to eight
    /// calls at once, answered in input order), Cohere Embed in batches of 96. Usage is the
    /// tokens Bedrock counted.
    async fn embed(
        &self,
        call: &Call,
        request: &EmbeddingRequest,
    ) -> Result<ProviderResponse<EmbeddingResponse>, ProviderError> {
        let Some(family) = EmbedFamily::of(&call.model) else {
            return Err(ProviderError::Unsupported {
                message: format!(
                    "bedrock embeddings take a Titan Text Embeddings or Cohere Embed model, not `{}`",
                    call.model
                ),
                param: Some("model".to_owned()),
            });
        };
        let texts = request.input.texts();
        if texts.is_empty() {
            return Err(bad_request(
                "bedrock embeddings take text input, not token arrays",
                "input",
            ));
        }
        let url = self.url(&call.model, "invoke");
        let invoke = |body: Value| {
            let url = &url;
            async move {
                let body = Bytes::from(serde_json::to_vec(&body).map_err(|e| {
                    ProviderError::Protocol(format!("encoding the bedrock request: {e}"))
                })?);
                let req = self.request(call, url, body, "application/json")?;
                let resp = self.http.fetch(req, call.timeout, classify_error).await?;
                let counted = input_token_header(resp.headers());
                let v: Value = serde_json::from_slice(resp.body())
                    .map_err(|e| ProviderError::Protocol(format!("bedrock embeddings: {e}")))?;
                Ok::<_, ProviderError>((v, counted))
            }
        };
        let answer = |data: Vec<Vec<f32>>, tokens: Option<u64>| ProviderResponse {
            body: EmbeddingResponse {
                object: "list".into(),
                data: data
                    .into_iter()
                    .enumerate()
                    .map(|(i, embedding)| Embedding {
                        object: "embedding".into(),
                        index: u32::try_from(i).unwrap_or(u32::MAX),
                        embedding,
                    })
                    .collect(),
                model: call.model.to_string(),
                usage: tokens.map(|n| Usage::new(n, 0, 0)),
            },
            rate_limit: RateLimitInfo::default(),
        };
        match family {
            EmbedFamily::Titan => {
                let mut answers: Vec<(Value, Option<u64>)> = Vec::with_capacity(texts.len());
                for group in texts.chunks(8) {
                    let calls: Vec<_> = group
                        .iter()
                        .map(|t| invoke(titan_embed_body(&call.model, t, request.dimensions)))
                        .collect();
                    answers.extend(futures_util::future::try_join_all(calls).await?);
                }
                let mut data = Vec::with_capacity(answers.len());
                let mut tokens = 0u64;
                for (v, counted) in answers {
                    let vector: Vec<f32> =
                        serde_json::from_value(v["embedding"].clone()).map_err(|e| {
                            ProviderError::Protocol(format!("bedrock titan embedding: {e}"))
                        })?;
                    data.push(vector);
                    tokens += v["inputTextTokenCount"].as_u64().or(counted).unwrap_or(0);
                }
                Ok(answer(data, Some(tokens)))
            }
            EmbedFamily::Cohere => {
                crate::embed_in_batches(&texts, 96, |batch| {
                    let body = cohere_embed_body(
                        &call.model,
                        batch,
                        request.input_type.as_deref(),
                        request.dimensions,
                    );
                    let invoke = &invoke;
                    let answer = &answer;
                    async move {
                        let (v, counted) = invoke(body).await?;
                        let data = cohere_vectors(&v).ok_or_else(|| {
                            ProviderError::Protocol(
                                "bedrock cohere embeddings: no float embeddings in the answer"
                                    .into(),
                            )
                        })?;
                        Ok(answer(data, counted))
                    }
                })
                .await
            }
        }
    }

    async fn count_tokens(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<Option<u64>, ProviderError> {
        let mut names = ToolNames::default();
        let Value::Object(mut converse) = encode_request(request, &mut names)? else {
            return Ok(None);
        };
        converse.retain(|k, _| {
            matches!(
                k.as_str(),
                "messages" | "system" | "toolConfig" | "additionalModelRequestFields"
            )
        });
        let body = serde_json::to_vec(&json!({ "input": { "converse": converse } }))
            .map_err(|e| ProviderError::Protocol(format!("encoding the count request: {e}")))?;
        let url = self.url(&call.model, "count-tokens");
        let req = self.request(call, &url, Bytes::from(body), "application/json")?;
        let resp = self.http.fetch(req, call.timeout, classify_error).await?;
        #[derive(Deserialize)]
        struct Counted {
            #[serde(rename = "inputTokens")]
            input_tokens: u64,
        }
        let counted: Counted = serde_json::from_slice(resp.body())
            .map_err(|e| ProviderError::Protocol(format!("bedrock count: {e}")))?;
        Ok(Some(counted.input_tokens))
    }

    async fn chat_stream(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderStream, ProviderError> {
        if let Some(native) = self.invoke(call, request) {
            let url = self.url(&call.model, "invoke-with-response-stream");
            let body = claude_invoke_body(native)?;
            let req = self.request(call, &url, body, "application/vnd.amazon.eventstream")?;
            let resp = self
                .http
                .open_stream(req, call.timeout, classify_error)
                .await?;
            let frames = FrameStream::new(resp.into_body(), call.timeout);
            return Ok(ProviderStream {
                chunks: decode_stream(frames, InvokeStream::new()),
                rate_limit: RateLimitInfo::default(),
            });
        }
        let mut names = ToolNames::default();
        let mut body = encode_request(request, &mut names)?;
        with_thinking(&mut body, request, &call.model);
        let body =
            Bytes::from(serde_json::to_vec(&body).map_err(|e| {
                ProviderError::Protocol(format!("encoding the bedrock request: {e}"))
            })?);
        let url = self.url(&call.model, "converse-stream");
        let req = self.request(call, &url, body, "application/vnd.amazon.eventstream")?;
        let resp = self
            .http
            .open_stream(req, call.timeout, classify_error)
            .await?;
        let id = response_id(resp.headers());
        let conv = BedrockStream::new(&id, &call.model, unix_now(), names);
        let frames = FrameStream::new(resp.into_body(), call.timeout);
        Ok(ProviderStream {
            chunks: decode_stream(frames, conv),
            rate_limit: RateLimitInfo::default(),
        })
    }
}

/// A tool-call id as Bedrock takes it (`[a-zA-Z0-9_-]+`, at most 64 characters): kept when it
/// is one, else mapped deterministically (so a call and its result still match), as ids made
/// by other providers can hold `.` or `:` (`functions.get_weather:0`).
fn tool_use_id(id: &str) -> std::borrow::Cow<'_, str> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        return std::borrow::Cow::Borrowed(id);
    }
    let h = crate::fnv1a(id.as_bytes());
    let kept: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(40)
        .collect();
    std::borrow::Cow::Owned(format!("{kept}_{h:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstream::{encode_frame, HeaderValue as EvHeader};
    use expect_test::expect;
    use gateway_core::types::StreamAccumulator;

    /// Each embeddings family's body as Bedrock documents it, and both shapes of Cohere's answer.
    #[test]
    fn embeddings_bodies_and_answers() {
        assert_eq!(
            titan_embed_body("amazon.titan-embed-text-v2:0", "hi", Some(256)),
            json!({"inputText": "hi", "dimensions": 256})
        );
        assert_eq!(
            titan_embed_body("amazon.titan-embed-text-v1", "hi", Some(256)),
            json!({"inputText": "hi"})
        );
        assert_eq!(
            titan_embed_body("amazon.titan-embed-image-v1", "hi", Some(384)),
            json!({"inputText": "hi", "embeddingConfig": {"outputEmbeddingLength": 384}})
        );
        let texts = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(
            cohere_embed_body("cohere.embed-english-v3", &texts, None, Some(512)),
            json!({"texts": ["a", "b"], "input_type": "search_document"})
        );
        assert_eq!(
            cohere_embed_body("cohere.embed-v4:0", &texts, Some("search_query"), Some(512)),
            json!({"texts": ["a", "b"], "input_type": "search_query", "output_dimension": 512})
        );
        let floats =
            json!({"embeddings": [[0.5, 1.0], [2.0, 0.25]], "response_type": "embeddings_floats"});
        let by_type = json!({"embeddings": {"float": [[0.5, 1.0], [2.0, 0.25]]}, "response_type": "embeddings_by_type"});
        for v in [floats, by_type] {
            assert_eq!(
                cohere_vectors(&v),
                Some(vec![vec![0.5, 1.0], vec![2.0, 0.25]]),
                "{v}"
            );
        }
        assert_eq!(
            cohere_vectors(&json!({"embeddings": {"int8": [[1]]}})),
            None
        );
        assert_eq!(EmbedFamily::of("amazon.nova-pro-v1:0"), None);
    }

    /// A Claude model that thinks gets the thinking budget in `additionalModelRequestFields`,
    /// without `temperature` and `top_k` and with room for an answer beside the budget; older
    /// Claude models, other models and conversations with tool calls are left as they were.
    #[test]
    fn thinking_for_claude_models_that_think() {
        let req = |extra: Value| -> ChatRequest {
            let mut v = json!({"model": "m", "max_tokens": 2000, "temperature": 0.3, "top_k": 5,
                "messages": [{"role": "user", "content": "hi"}]});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            serde_json::from_value(v).unwrap()
        };
        let body = |r: &ChatRequest, model: &str| {
            let mut b = encode_request(r, &mut ToolNames::default()).unwrap();
            with_thinking(&mut b, r, model);
            b
        };
        let mut budget = req(json!({}));
        budget.thinking_budget = Some(3000);
        let b = body(&budget, "us.anthropic.claude-sonnet-4-20250514-v1:0");
        assert_eq!(
            b["additionalModelRequestFields"],
            json!({"thinking": {"type": "enabled", "budget_tokens": 3000}}),
            "{b}"
        );
        assert_eq!(b["inferenceConfig"], json!({"maxTokens": 5000}), "{b}");
        let effort = req(json!({"reasoning_effort": "medium", "max_tokens": 16000}));
        let b = body(&effort, "anthropic.claude-3-7-sonnet-20250219-v1:0");
        assert_eq!(
            b["additionalModelRequestFields"]["thinking"]["budget_tokens"], 4096,
            "{b}"
        );
        assert_eq!(b["inferenceConfig"]["maxTokens"], 16000, "{b}");
        for model in [
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "amazon.nova-pro-v1:0",
        ] {
            let b = body(&budget, model);
            assert!(
                b["additionalModelRequestFields"].get("thinking").is_none(),
                "{model}: {b}"
            );
            assert_eq!(b["inferenceConfig"]["temperature"], 0.3, "{model}: {b}");
        }
        let mut tools = req(json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
                "function": {"name": "w", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "sunny"}]}));
        tools.thinking_budget = Some(3000);
        let b = body(&tools, "us.anthropic.claude-sonnet-4-20250514-v1:0");
        assert!(
            b["additionalModelRequestFields"].get("thinking").is_none(),
            "{b}"
        );
    }

    fn request(raw: Value) -> ChatRequest {
        serde_json::from_value(raw).expect("a valid canonical request")
    }

    #[test]
    fn regions_from_endpoints() {
        assert_eq!(
            region_from_url("https://bedrock-runtime.eu-west-3.amazonaws.com").as_deref(),
            Some("eu-west-3")
        );
        assert_eq!(
            region_from_url("https://bedrock-runtime-fips.us-east-1.amazonaws.com/").as_deref(),
            Some("us-east-1")
        );
        assert_eq!(region_from_url("http://127.0.0.1:9"), None);
    }

    #[test]
    fn model_ids_are_one_segment() {
        assert_eq!(
            encode_model_id("anthropic.claude-3-5-sonnet-20240620-v1:0"),
            "anthropic.claude-3-5-sonnet-20240620-v1%3A0"
        );
        assert_eq!(
            encode_model_id("arn:aws:bedrock:us-east-1:123:inference-profile/us.x-v1:0"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fus.x-v1%3A0"
        );
    }

    #[test]
    fn tool_names_are_sanitized_and_reversible() {
        let mut names = ToolNames::default();
        assert_eq!(
            names.wire("get_weather"),
            "get_weather",
            "valid names are kept"
        );
        assert_eq!(names.wire("web-search.v2"), "web_search_v2");
        assert_eq!(
            names.wire("web_search-v2"),
            "web_search_v2_2",
            "collisions get a suffix"
        );
        assert_eq!(names.wire("1st"), "t_1st");
        let long = "x".repeat(100);
        assert_eq!(names.wire(&long).len(), 64);
        assert_eq!(names.original("web_search_v2"), "web-search.v2");
        assert_eq!(names.original("web_search_v2_2"), "web_search-v2");
        assert_eq!(names.original("unknown"), "unknown");
    }

    #[test]
    fn request_conversion() {
        let mut names = ToolNames::default();
        let body = encode_request(
            &request(json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "Be terse."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is in this image, and the weather?"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AA=="}}
                    ]},
                    {"role": "user", "content": "Paris."},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [
                        {"id": "tooluse_1", "type": "function", "function": {"name": "get-weather", "arguments": "{\"city\":\"Paris\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "tooluse_1", "content": "18C sunny"},
                    {"role": "user", "content": "And tomorrow?"}
                ],
                "tools": [{"type": "function", "function": {"name": "get-weather", "description": "Weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                "tool_choice": {"type": "function", "function": {"name": "get-weather"}},
                "max_tokens": 512,
                "temperature": 1.5,
                "top_p": 0.9,
                "top_k": 50,
                "stop": ["END"]
            })),
            &mut names,
        )
        .expect("converts");
        expect![[r#"
            {
              "additionalModelRequestFields": {
                "top_k": 50
              },
              "inferenceConfig": {
                "maxTokens": 512,
                "stopSequences": [
                  "END"
                ],
                "temperature": 1.0,
                "topP": 0.9
              },
              "messages": [
                {
                  "content": [
                    {
                      "text": "What is in this image, and the weather?"
                    },
                    {
                      "image": {
                        "format": "jpeg",
                        "source": {
                          "bytes": "/9j/AA=="
                        }
                      }
                    },
                    {
                      "text": "Paris."
                    }
                  ],
                  "role": "user"
                },
                {
                  "content": [
                    {
                      "text": "Checking."
                    },
                    {
                      "toolUse": {
                        "input": {
                          "city": "Paris"
                        },
                        "name": "get_weather",
                        "toolUseId": "tooluse_1"
                      }
                    }
                  ],
                  "role": "assistant"
                },
                {
                  "content": [
                    {
                      "toolResult": {
                        "content": [
                          {
                            "text": "18C sunny"
                          }
                        ],
                        "status": "success",
                        "toolUseId": "tooluse_1"
                      }
                    },
                    {
                      "text": "And tomorrow?"
                    }
                  ],
                  "role": "user"
                }
              ],
              "system": [
                {
                  "text": "Be terse."
                }
              ],
              "toolConfig": {
                "toolChoice": {
                  "tool": {
                    "name": "get_weather"
                  }
                },
                "tools": [
                  {
                    "toolSpec": {
                      "description": "Weather",
                      "inputSchema": {
                        "json": {
                          "properties": {
                            "city": {
                              "type": "string"
                            }
                          },
                          "type": "object"
                        }
                      },
                      "name": "get_weather"
                    }
                  }
                ]
              }
            }"#]]
        .assert_eq(&serde_json::to_string_pretty(&body).expect("json"));
    }

    #[test]
    fn tool_config_rules() {
        let history = json!([
            {"role": "user", "content": "Time?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": ""}
        ]);
        // No tools declared but tool blocks in the history: a toolConfig is synthesized.
        let body = encode_request(
            &request(json!({"model": "m", "messages": history})),
            &mut ToolNames::default(),
        )
        .expect("converts");
        assert_eq!(body["toolConfig"]["tools"][0]["toolSpec"]["name"], "now");
        assert_eq!(
            body["messages"][2]["content"][0]["toolResult"]["content"][0],
            json!({"json": {}}),
            "an empty tool result is sent as an empty JSON object"
        );
        // tool_choice none without tool history drops the toolConfig.
        let body = encode_request(
            &request(
                json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}),
            ),
            &mut ToolNames::default(),
        )
        .expect("converts");
        assert!(body.get("toolConfig").is_none(), "{body}");
        // required → any.
        let body = encode_request(
            &request(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"})),
            &mut ToolNames::default(),
        )
        .expect("converts");
        assert_eq!(body["toolConfig"]["toolChoice"], json!({"any": {}}));
        assert_eq!(
            body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
            json!({"type": "object", "properties": {}}),
            "a tool without parameters gets an empty object schema"
        );
        // http image URLs cannot be sent.
        let err = encode_request(
            &request(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
            ),
            &mut ToolNames::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ProviderError::BadRequest { .. }), "{err:?}");
    }

    const RESPONSE: &str = r#"{"output":{"message":{"role":"assistant","content":[
        {"text":"Checking."},
        {"toolUse":{"toolUseId":"tooluse_1","name":"get_weather","input":{"city":"Paris"}}}]}},
        "stopReason":"tool_use",
        "usage":{"inputTokens":412,"outputTokens":57,"totalTokens":469,"cacheReadInputTokens":100,"cacheWriteInputTokens":0},
        "metrics":{"latencyMs":812}}"#;

    fn names_with(original: &str) -> ToolNames {
        let mut names = ToolNames::default();
        names.wire(original);
        names
    }

    #[test]
    fn response_conversion() {
        let wire: WireResponse = serde_json::from_str(RESPONSE).expect("wire");
        let resp = decode_response(
            wire,
            "bedrock-req1",
            "m",
            1_730_000_000,
            &names_with("get-weather"),
        );
        expect![[r#"
            {
              "id": "bedrock-req1",
              "object": "chat.completion",
              "created": 1730000000,
              "model": "m",
              "choices": [
                {
                  "index": 0,
                  "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                      {
                        "id": "tooluse_1",
                        "type": "function",
                        "function": {
                          "name": "get-weather",
                          "arguments": "{\"city\":\"Paris\"}"
                        }
                      }
                    ]
                  },
                  "finish_reason": "tool_calls"
                }
              ],
              "usage": {
                "prompt_tokens": 512,
                "completion_tokens": 57,
                "total_tokens": 569,
                "prompt_tokens_details": {
                  "cached_tokens": 100
                }
              }
            }"#]]
        .assert_eq(&serde_json::to_string_pretty(&resp).expect("json"));
        for (reason, want) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::StopSequence),
            ("tool_use", FinishReason::ToolCalls),
            ("max_tokens", FinishReason::Length),
            ("model_context_window_exceeded", FinishReason::ContextWindow),
            ("guardrail_intervened", FinishReason::ContentFilter),
            ("content_filtered", FinishReason::ContentFilter),
        ] {
            assert_eq!(map_stop_reason(reason), want, "{reason}");
        }
    }

    fn event(kind: &str, payload: &str) -> Frame {
        Frame {
            headers: vec![
                (":event-type".into(), EvHeader::String(kind.into())),
                (
                    ":content-type".into(),
                    EvHeader::String("application/json".into()),
                ),
                (":message-type".into(), EvHeader::String("event".into())),
            ],
            payload: Bytes::from(payload.to_owned()),
        }
    }

    pub(crate) const STREAM: &[(&str, &str)] = &[
        ("messageStart", r#"{"role":"assistant","p":"abcd"}"#),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Check"}}"#,
        ),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"ing."}}"#,
        ),
        ("contentBlockStop", r#"{"contentBlockIndex":0}"#),
        (
            "contentBlockStart",
            r#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"tooluse_1","name":"get_weather"}}}"#,
        ),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"city\":"}}}"#,
        ),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"\"Paris\"}"}}}"#,
        ),
        ("contentBlockStop", r#"{"contentBlockIndex":1}"#),
        ("messageStop", r#"{"stopReason":"tool_use"}"#),
        (
            "metadata",
            r#"{"usage":{"inputTokens":412,"outputTokens":57,"totalTokens":469,"cacheReadInputTokens":100},"metrics":{"latencyMs":812}}"#,
        ),
    ];

    #[test]
    fn a_conversation_starting_with_the_assistant_gets_a_user_turn_first() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [
                {"role": "system", "content": "Be kind."},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Weather?"}]
        }))
        .expect("request");
        let body = encode_request(&req, &mut ToolNames::default()).expect("body");
        let roles: Vec<&str> = body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["role"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
    }

    #[test]
    fn response_format_becomes_a_system_instruction() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
        }))
        .expect("request");
        let body = encode_request(&req, &mut ToolNames::default()).expect("body");
        let system = body["system"].as_array().expect("system blocks");
        assert_eq!(system[0]["text"], "Be terse.");
        let last = system
            .last()
            .and_then(|b| b["text"].as_str())
            .unwrap_or_default();
        assert!(
            last.contains("valid JSON object") && last.contains(r#"{"type":"object"}"#),
            "{last}"
        );
    }

    #[test]
    fn foreign_tool_ids_are_made_valid_and_stay_matched() {
        assert_eq!(tool_use_id("tooluse_1-A"), "tooluse_1-A");
        let a = tool_use_id("functions.get_weather:0");
        assert!(
            a.len() <= 64
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{a}"
        );
        assert_eq!(a, tool_use_id("functions.get_weather:0"), "deterministic");
        assert_ne!(a, tool_use_id("functions.get_weather:1"));
        assert!(tool_use_id(&"x".repeat(80)).len() <= 64);
    }

    #[test]
    fn events_the_decoder_does_not_read_need_no_json() {
        let mut conv = BedrockStream::new("r", "m", 1, names_with("f"));
        for (kind, payload) in [("contentBlockStop", ""), ("someNewEvent", "\u{1}binary")] {
            let chunks = conv
                .on_frame(&event(kind, payload))
                .expect("ignored, not an error");
            assert!(chunks.is_empty(), "{kind}: {chunks:?}");
        }
        let bad = conv.on_frame(&event("contentBlockDelta", "not json"));
        assert!(matches!(bad, Err(ProviderError::Protocol(_))), "{bad:?}");
    }

    #[test]
    fn stream_assembles_to_the_same_message_as_the_response() {
        // Through the byte decoder, one byte per read, to cover reassembly too.
        let mut bytes = Vec::new();
        for (kind, payload) in STREAM {
            let f = event(kind, payload);
            bytes.extend(encode_frame(&f.headers, &f.payload));
        }
        let mut decoder = FrameDecoder::new();
        let mut conv = BedrockStream::new(
            "bedrock-req1",
            "m",
            1_730_000_000,
            names_with("get-weather"),
        );
        let mut chunks = Vec::new();
        for b in &bytes {
            decoder.push(std::slice::from_ref(b));
            while let Some(frame) = decoder.next_frame().expect("valid frames") {
                chunks.extend(conv.on_frame(&frame).expect("valid events"));
            }
        }
        let lines: Vec<String> = chunks
            .iter()
            .map(|c| serde_json::to_string(c).expect("json"))
            .collect();
        expect![[r#"
            {"id":"bedrock-req1","object":"chat.completion.chunk","created":1730000000,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}
            {"id":"bedrock-req1","object":"chat.completion.chunk","created":1730000000,"model":"m","choices":[{"index":0,"delta":{"content":"Check"},"finish_reason":null}],"usage":null}
            {"id":"bedrock-req1","object":"chat.completion.chunk","created":1730000000,"model":"m","choices":[{"index":0,"delta":{"content":"ing."},"finish_reason":null}],"usage":null}
            {"id":"bedrock-req1","object":"chat.completion.chunk","created":1730000000,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"tooluse_1","type":"function","function":{"name":"get-weather","arguments":""}}]},"finish_reason":null}],"usage":null}
            {"id":"bedrock-req1","object":"chat.completion.chunk","created":1730000000,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}],"usage":null}
            {"id":"bedrock-req1","object":"chat.completion.chunk","created":1730000000,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":null}],"usage":null}
            {"id":"bedrock-req1","object":"chat.completion.chunk","created":1730000000,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":null}
            {"id":"bedrock-req1","object":"chat.completion.chunk","created":1730000000,"model":"m","choices":[],"usage":{"prompt_tokens":512,"completion_tokens":57,"total_tokens":569,"prompt_tokens_details":{"cached_tokens":100}}}"#]]
        .assert_eq(&lines.join("\n"));

        let mut acc = StreamAccumulator::default();
        for c in &chunks {
            acc.push(c);
        }
        let streamed = acc.into_response();
        let wire: WireResponse = serde_json::from_str(RESPONSE).expect("wire");
        let direct = decode_response(wire, "bedrock-req1", "m", 0, &names_with("get-weather"));
        assert_eq!(
            streamed.choices[0].message.content,
            direct.choices[0].message.content
        );
        assert_eq!(
            streamed.choices[0].message.tool_calls,
            direct.choices[0].message.tool_calls
        );
        assert_eq!(
            streamed.choices[0].finish_reason,
            direct.choices[0].finish_reason
        );
        assert_eq!(streamed.usage, direct.usage);
    }

    #[test]
    fn invoke_stream_frames() {
        use base64::Engine as _;
        let chunk = |json: &str| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(json);
            event("chunk", &format!(r#"{{"bytes":"{b64}"}}"#))
        };
        let mut s = InvokeStream::new();
        let mut out = VecDeque::new();
        let start = r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":3,"output_tokens":1}}}"#;
        assert!(!s.event(chunk(start), &mut out).expect("an event"));
        let raw = out.pop_front().and_then(|c| c.raw).expect("raw");
        assert_eq!(
            &raw[..],
            format!("event: message_start\ndata: {start}\n\n").as_bytes()
        );
        // Other event types carry nothing for the client.
        assert!(!s.event(event("metadata", "{}"), &mut out).expect("ignored"));
        assert!(out.is_empty());
        // Bad bytes, and exceptions, are errors.
        let bad = s.event(event("chunk", r#"{"bytes":"***"}"#), &mut out);
        assert!(matches!(bad, Err(ProviderError::Protocol(_))), "{bad:?}");
        let mut throttled = event("throttlingException", r#"{"message":"Too many requests"}"#);
        throttled.headers = vec![
            (
                ":exception-type".into(),
                EvHeader::String("throttlingException".into()),
            ),
            (":message-type".into(), EvHeader::String("exception".into())),
        ];
        let err = s.event(throttled, &mut out).expect_err("an exception");
        assert_eq!(err.outcome(), "rate_limited", "{err:?}");
        // The end, without message_stop, is a cut stream.
        assert!(s.end(&mut out).is_err());
    }

    #[test]
    fn exception_frames_are_classified() {
        let mut conv = BedrockStream::new("id", "m", 0, ToolNames::default());
        let frame = Frame {
            headers: vec![
                (
                    ":exception-type".into(),
                    EvHeader::String("throttlingException".into()),
                ),
                (
                    ":content-type".into(),
                    EvHeader::String("application/json".into()),
                ),
                (":message-type".into(), EvHeader::String("exception".into())),
            ],
            payload: Bytes::from_static(
                br#"{"message":"Too many tokens, please wait before trying again."}"#,
            ),
        };
        let err = conv.on_frame(&frame).unwrap_err();
        assert!(
            matches!(
                err,
                ProviderError::RateLimited {
                    scope: RateLimitScope::Provider,
                    ..
                }
            ),
            "{err:?}"
        );
        let frame = Frame {
            headers: vec![
                (":message-type".into(), EvHeader::String("exception".into())),
                (
                    ":exception-type".into(),
                    EvHeader::String("modelStreamErrorException".into()),
                ),
            ],
            payload: Bytes::from_static(br#"{"message":"boom"}"#),
        };
        let err = conv.on_frame(&frame).unwrap_err();
        assert!(
            matches!(err, ProviderError::Server { status: 424, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn error_classification_table() {
        let cases: &[(u16, &str, &str)] = &[
            (
                429,
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                "Too many requests, please wait before trying again.",
            ),
            (429, "ModelNotReadyException", "Model is not ready"),
            (503, "ServiceUnavailableException", "Service unavailable"),
            (
                400,
                "ValidationException",
                "Input is too long for requested model.",
            ),
            (
                400,
                "ValidationException",
                "The model returned the following errors: too many tokens",
            ),
            (400, "ValidationException", "Malformed input request"),
            (400, "ServiceQuotaExceededException", "quota"),
            (
                403,
                "AccessDeniedException",
                "You don't have access to the model",
            ),
            (
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ),
            (
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match",
            ),
            (
                403,
                "ExpiredTokenException",
                "The security token included in the request is expired",
            ),
            (
                404,
                "ResourceNotFoundException",
                "Could not resolve the foundation model",
            ),
            (408, "ModelTimeoutException", "timeout"),
            (424, "ModelErrorException", "model error"),
            (500, "InternalServerException", "internal"),
            (502, "", "bad gateway"),
            (429, "", "throttled"),
        ];
        let mut lines = Vec::new();
        for (status, kind, message) in cases {
            let mut headers = HeaderMap::new();
            if !kind.is_empty() {
                headers.insert(
                    "x-amzn-errortype",
                    HeaderValue::from_str(kind).expect("ascii"),
                );
            }
            let body = json!({ "message": message }).to_string();
            let err = classify_error(*status, &headers, body.as_bytes());
            let class = match &err {
                ProviderError::RateLimited { scope, .. } => format!("RateLimited {scope:?}"),
                ProviderError::Overloaded { .. } => "Overloaded".into(),
                ProviderError::Server { status, .. } => format!("Server {status}"),
                ProviderError::Auth { status, .. } => format!("Auth {status}"),
                ProviderError::NotFound { .. } => "NotFound".into(),
                ProviderError::BadRequest { status, .. } => format!("BadRequest {status}"),
                ProviderError::ContextLengthExceeded { .. } => "ContextLengthExceeded".into(),
                other => format!("{other:?}"),
            };
            lines.push(format!(
                "{status} {} -> {class}",
                kind.split(':').next().unwrap_or_default()
            ));
        }
        expect![[r#"
            429 ThrottlingException -> RateLimited Provider
            429 ModelNotReadyException -> Overloaded
            503 ServiceUnavailableException -> Overloaded
            400 ValidationException -> ContextLengthExceeded
            400 ValidationException -> ContextLengthExceeded
            400 ValidationException -> BadRequest 400
            400 ServiceQuotaExceededException -> RateLimited Provider
            403 AccessDeniedException -> Auth 403
            403 UnrecognizedClientException -> Auth 403
            403 InvalidSignatureException -> Auth 403
            403 ExpiredTokenException -> Auth 403
            404 ResourceNotFoundException -> NotFound
            408 ModelTimeoutException -> Server 408
            424 ModelErrorException -> Server 424
            500 InternalServerException -> Server 500
            502  -> Server 502
            429  -> RateLimited Provider"#]]
        .assert_eq(&lines.join("\n"));
    }

    /// AWS SigV4 test suite (`aws-signing-test-suite/v4/post-vanilla` and
    /// `get-vanilla-with-session-token`): known answers for the AWS example credentials.
    #[test]
    fn sigv4_known_answers() {
        let keys = AwsKeys {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token: None,
        };
        // 2015-08-30T12:36:00Z
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let headers = sigv4_headers(
            "POST",
            "https://example.amazonaws.com/",
            &[],
            b"",
            keys,
            SigningScope {
                region: "us-east-1",
                service: "service",
                time,
            },
        )
        .expect("signs");
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .and_then(|(_, v)| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(get("x-amz-date"), "20150830T123600Z");
        assert_eq!(
            get("authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );

        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let headers = sigv4_headers(
            "GET",
            "https://example.amazonaws.com/",
            &[],
            b"",
            AwsKeys {
                session_token: Some(token),
                ..keys
            },
            SigningScope {
                region: "us-east-1",
                service: "service",
                time,
            },
        )
        .expect("signs");
        let auth = headers
            .iter()
            .find(|(n, _)| n == AUTHORIZATION)
            .and_then(|(_, v)| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            auth.ends_with(
                "Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
            ),
            "{auth}"
        );
        assert!(
            headers
                .iter()
                .any(|(n, v)| n == "x-amz-security-token" && v == token),
            "the session token is sent"
        );
    }
}
