//! Google Gemini through AI Studio (`generativelanguage.googleapis.com`), kind `gemini`.
//!
//! Converts the canonical (OpenAI-shaped) request into a `generateContent` body and back, following
//! the rules python-genai and the gateways (Portkey, LiteLLM) use:
//!
//! - `system`/`developer` messages become `systemInstruction`; `assistant` becomes role `model`;
//!   tool results become `functionResponse` parts of a `user` turn, named by looking the call id up
//!   in the conversation; same-role turns are merged.
//! - Gemini returns no tool-call ids, so the adapter synthesizes `call_<uuid>` ids and remembers each
//!   call's `thoughtSignature` in a bounded [`SignatureStore`], so that the signature can be echoed
//!   back when the client sends the call in a later turn (Gemini 3 rejects calls without one).
//! - `response_format` becomes `responseMimeType`/`responseSchema`, and every JSON schema (tools and
//!   structured output) is reduced to the OpenAPI subset Gemini accepts ([`clean_schema`]).
//! - `finishReason` `STOP` becomes `tool_calls` when the answer calls a function; safety reasons and a
//!   prompt `blockReason` become `content_filter`.
//! - Streams are SSE (`?alt=sse`) with `data:` lines only and no sentinel; `usageMetadata` is
//!   cumulative, so the last one is sent on a final `choices: []` chunk when the stream ends.
//!
//! Vertex AI ([`crate::vertex`]) uses the same body and reuses these conversions.
//!
//! ```
//! use gateway_core::types::{ChatRequest, Message, Role};
//! use gateway_providers::gemini::{encode_request, SignatureStore};
//!
//! let req = ChatRequest {
//!     model: "gemini-2.5-flash".into(),
//!     messages: vec![Message::text(Role::System, "Be terse."), Message::text(Role::User, "Hi")],
//!     max_tokens: Some(64),
//!     ..ChatRequest::default()
//! };
//! let body = encode_request(&req, "gemini-2.5-flash", &SignatureStore::new())?;
//! assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be terse.");
//! assert_eq!(body["contents"][0]["role"], "user");
//! assert_eq!(body["generationConfig"]["maxOutputTokens"], 64);
//! # Ok::<(), gateway_core::ProviderError>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use gateway_core::ratelimit::parse_go_duration;
use gateway_core::types::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, CompletionTokensDetails, Content,
    ContentPart, Delta, Embedding, EmbeddingRequest, EmbeddingResponse, FinishReason, FunctionCall,
    FunctionCallDelta, Message, ModelInfo, ResponseFormat, Role, ToolCall, ToolCallDelta,
    ToolChoice, ToolChoiceMode, Usage,
};
use gateway_core::{
    Call, Credential, Provider, ProviderError, ProviderResponse, ProviderStream, RateLimitInfo,
    RateLimitScope,
};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::headers::retry_after;
use crate::http::{header_value, join_url, json_request, HttpClient};
use crate::openai::{accept_event_stream, push_traceparent, unsupported_credential};
use crate::sse::{SseEvent, SseStream};
use crate::stream::{decode_stream, StreamDecoder};

/// The AI Studio host root; paths start with `/v1beta/`.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// The signature Google documents for replaying function calls whose real signature is unknown
/// (history from another model or another gateway instance).
const DUMMY_SIGNATURE: &str = "skip_thought_signature_validator";

pub use crate::signatures::{SignatureStore, SIGNATURE_CAPACITY};

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

/// Gemini's `logprobsResult` in OpenAI's `logprobs` shape: each chosen token with its log
/// probability, its UTF-8 bytes and the top candidates at its step.
fn openai_logprobs(result: &Value) -> Value {
    let entry = |c: &Value| {
        let token = c.get("token").and_then(Value::as_str).unwrap_or_default();
        json!({
            "token": token,
            "logprob": c.get("logProbability").and_then(Value::as_f64).unwrap_or(0.0),
            "bytes": token.as_bytes(),
        })
    };
    let top = result.get("topCandidates").and_then(Value::as_array);
    let content: Vec<Value> = result
        .get("chosenCandidates")
        .and_then(Value::as_array)
        .map(|chosen| {
            chosen
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut e = entry(c);
                    let alternatives: Vec<Value> = top
                        .and_then(|t| t.get(i))
                        .and_then(|t| t.get("candidates"))
                        .and_then(Value::as_array)
                        .map(|cs| cs.iter().map(entry).collect())
                        .unwrap_or_default();
                    e["top_logprobs"] = Value::Array(alternatives);
                    e
                })
                .collect()
        })
        .unwrap_or_default();
    json!({ "content": content, "refusal": null })
}

/// Whether `model` is a Gemini 3 model (thinking levels, mandatory thought signatures).
fn is_gemini_3(model: &str) -> bool {
    model.contains("gemini-3")
}

/// Converts a canonical request into a `generateContent` body for `model` (the upstream model id).
///
/// Thought signatures of earlier function calls are looked up in `signatures`.
pub fn encode_request(
    req: &ChatRequest,
    model: &str,
    signatures: &SignatureStore,
) -> Result<Value, ProviderError> {
    // Tool results name their function through the call id: find the names in the history.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for m in &req.messages {
        for c in m.tool_calls.iter().flatten() {
            call_names.insert(c.id.as_str(), c.function.name.as_str());
        }
    }

    let mut system_parts: Vec<Value> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer => {
                let text = m.content_text();
                if !text.is_empty() {
                    system_parts.push(json!({ "text": text }));
                }
            }
            Role::User => {
                let parts = match &m.content {
                    Some(c) => content_parts(c, i)?,
                    None => Vec::new(),
                };
                push_turn(&mut contents, "user", parts);
            }
            Role::Assistant => {
                let mut parts = Vec::new();
                let text = m.content_text();
                if !text.is_empty() {
                    parts.push(json!({ "text": text }));
                }
                for (k, call) in m.tool_calls.iter().flatten().enumerate() {
                    let args = match serde_json::from_str::<Value>(&call.function.arguments) {
                        Ok(v @ Value::Object(_)) => v,
                        _ => json!({}),
                    };
                    let mut part = json!({
                        "functionCall": { "name": call.function.name, "args": args }
                    });
                    let signature = signatures.get(&call.id).or_else(|| {
                        (k == 0 && is_gemini_3(model)).then(|| DUMMY_SIGNATURE.to_owned())
                    });
                    if let (Some(sig), Value::Object(obj)) = (signature, &mut part) {
                        obj.insert("thoughtSignature".into(), Value::String(sig));
                    }
                    parts.push(part);
                }
                push_turn(&mut contents, "model", parts);
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let name = call_names
                    .get(id)
                    .copied()
                    .or(m.name.as_deref())
                    .unwrap_or(id);
                let part = json!({
                    "functionResponse": {
                        "name": name,
                        "response": { "result": m.content_text() }
                    }
                });
                push_turn(&mut contents, "user", vec![part]);
            }
        }
    }

    let mut body = Map::new();
    body.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, parts)| json!({ "role": role, "parts": parts }))
                .collect(),
        ),
    );
    if !system_parts.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system_parts }));
    }

    if let Some(tools) = req
        .tools
        .as_ref()
        .filter(|t| t.iter().any(gateway_core::types::Tool::is_function))
    {
        let decls: Vec<Value> = tools
            .iter()
            .filter(|t| t.is_function())
            .map(|t| {
                let mut d = Map::new();
                d.insert("name".into(), Value::String(t.function.name.clone()));
                if let Some(desc) = &t.function.description {
                    d.insert("description".into(), Value::String(desc.clone()));
                }
                if let Some(params) = &t.function.parameters {
                    let cleaned = clean_schema(params);
                    // Gemini rejects an object schema without properties.
                    let empty = cleaned
                        .get("properties")
                        .and_then(Value::as_object)
                        .is_none_or(Map::is_empty);
                    if !empty {
                        d.insert("parameters".into(), cleaned);
                    }
                }
                Value::Object(d)
            })
            .collect();
        body.insert("tools".into(), json!([{ "functionDeclarations": decls }]));
        if let Some(choice) = &req.tool_choice {
            let config = match choice {
                ToolChoice::Mode(ToolChoiceMode::Auto) | ToolChoice::Other(_) => {
                    json!({ "mode": "AUTO" })
                }
                ToolChoice::Mode(ToolChoiceMode::None) => json!({ "mode": "NONE" }),
                ToolChoice::Mode(ToolChoiceMode::Required) => json!({ "mode": "ANY" }),
                ToolChoice::Named(n) => {
                    json!({ "mode": "ANY", "allowedFunctionNames": [n.function.name] })
                }
            };
            body.insert(
                "toolConfig".into(),
                json!({ "functionCallingConfig": config }),
            );
        }
    }

    let generation = generation_config(req, model);
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    Ok(Value::Object(body))
}

/// Appends a turn, merging it into the previous one when the role is the same.
fn push_turn(
    contents: &mut Vec<(&'static str, Vec<Value>)>,
    role: &'static str,
    parts: Vec<Value>,
) {
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some((last, existing)) if *last == role => existing.extend(parts),
        _ => contents.push((role, parts)),
    }
}

/// The parts of a user message: text, images (inline or by URI), audio and files.
fn content_parts(content: &Content, index: usize) -> Result<Vec<Value>, ProviderError> {
    let parts = match content {
        Content::Text(t) if t.is_empty() => Vec::new(),
        Content::Text(t) => vec![json!({ "text": t })],
        Content::Parts(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                match p {
                    ContentPart::Text { text } if text.is_empty() => {}
                    ContentPart::Text { text } => out.push(json!({ "text": text })),
                    ContentPart::ImageUrl { image_url } => match image_url.as_data() {
                        Some((mime, data)) => out.push(json!({
                            "inlineData": { "mimeType": mime, "data": data }
                        })),
                        None => out.push(json!({
                            "fileData": {
                                "mimeType": mime_from_url(&image_url.url),
                                "fileUri": image_url.url
                            }
                        })),
                    },
                    ContentPart::Other(v) => {
                        if let Some(part) = other_part(v) {
                            out.push(part);
                        } else {
                            return Err(bad_request(
                                format!(
                                    "content part type `{}` is not supported by gemini",
                                    v.get("type").and_then(Value::as_str).unwrap_or("?")
                                ),
                                &format!("messages[{index}].content"),
                            ));
                        }
                    }
                }
            }
            out
        }
    };
    Ok(parts)
}

/// OpenAI `input_audio` and `file` parts as Gemini inline data.
fn other_part(v: &Value) -> Option<Value> {
    match v.get("type")?.as_str()? {
        "input_audio" => {
            let audio = v.get("input_audio")?;
            let data = audio.get("data")?.as_str()?;
            let format = audio.get("format").and_then(Value::as_str).unwrap_or("wav");
            Some(json!({ "inlineData": { "mimeType": format!("audio/{format}"), "data": data } }))
        }
        "file" => {
            let file = v.get("file")?;
            let url = file.get("file_data")?.as_str()?;
            let rest = url.strip_prefix("data:")?;
            let (meta, data) = rest.split_once(',')?;
            let mime = meta.strip_suffix(";base64")?;
            Some(json!({ "inlineData": { "mimeType": mime, "data": data } }))
        }
        _ => None,
    }
}

/// A media type guessed from a URL's extension (Gemini's `fileData` requires one).
fn mime_from_url(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "txt" => "text/plain",
        _ => "image/jpeg",
    }
}

fn generation_config(req: &ChatRequest, model: &str) -> Map<String, Value> {
    let mut g = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            g.insert(k.to_owned(), v);
        }
    };
    put("maxOutputTokens", req.output_limit().map(Value::from));
    put("temperature", req.temperature.map(Value::from));
    put("topP", req.top_p.map(Value::from));
    put("topK", req.top_k.map(Value::from));
    put(
        "stopSequences",
        req.stop.as_ref().map(|s| Value::from(s.to_vec())),
    );
    put("candidateCount", req.n.map(Value::from));
    put("seed", req.seed.map(Value::from));
    put("presencePenalty", req.presence_penalty.map(Value::from));
    put("frequencyPenalty", req.frequency_penalty.map(Value::from));
    // OpenAI's `logprobs` and `top_logprobs` (request members the canonical form keeps aside).
    if req.extra.get("logprobs").and_then(Value::as_bool) == Some(true) {
        put("responseLogprobs", Some(Value::Bool(true)));
        put(
            "logprobs",
            req.extra
                .get("top_logprobs")
                .and_then(Value::as_u64)
                .filter(|n| *n > 0)
                .map(Value::from),
        );
    }
    match &req.response_format {
        Some(ResponseFormat::JsonObject) => {
            put("responseMimeType", Some(Value::from("application/json")));
        }
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            put("responseMimeType", Some(Value::from("application/json")));
            put(
                "responseSchema",
                json_schema.schema.as_ref().map(clean_schema),
            );
        }
        Some(ResponseFormat::Text) | None => {}
    }
    if let Some(effort) = &req.reasoning_effort {
        put(
            "thinkingConfig",
            Some(thinking_config(effort, model, req.output_limit())),
        );
    } else if (req.thinking_budget.is_some() || req.thinking_adaptive) && thinks(model) {
        put(
            "thinkingConfig",
            Some(budget_config(
                req.thinking_budget,
                req.thinking_effort(),
                model,
            )),
        );
    } else if let Some(effort) = req.thinking_effort().filter(|_| thinks(model)) {
        put(
            "thinkingConfig",
            Some(thinking_config(effort, model, req.output_limit())),
        );
    }
    g
}

/// Whether `model` can think (Gemini 2.5 and later); earlier models refuse a `thinkingConfig`.
fn thinks(model: &str) -> bool {
    is_gemini_3(model) || model.contains("2.5") || model.contains("thinking")
}

/// An Anthropic client's thinking as a `thinkingConfig` that also asks for the thoughts back
/// (`includeThoughts`): its budget, within what the model takes (Flash up to 24,576, Pro 128 to
/// 32,768), or without one (adaptive thinking: the model decides) Gemini's dynamic budget, `-1`;
/// on Gemini 3 the level of its effort.
fn budget_config(budget: Option<u32>, effort: Option<&str>, model: &str) -> Value {
    if is_gemini_3(model) {
        let level = match effort {
            Some("low") => "low",
            _ => "high",
        };
        return json!({ "thinkingLevel": level, "includeThoughts": true });
    }
    let budget = match budget {
        None => -1,
        Some(b) if model.contains("pro") => i64::from(b.clamp(128, 32_768)),
        Some(b) => i64::from(b.min(24_576)),
    };
    json!({ "thinkingBudget": budget, "includeThoughts": true })
}

/// `reasoning_effort` as a `thinkingConfig`: a thinking level on Gemini 3, a token budget before.
///
/// A budget fits inside the client's output limit (`maxOutputTokens` counts thinking, as
/// OpenAI's limits count reasoning): at most three quarters of it. `none` is 0, except on the
/// 2.5 Pro models, which cannot stop thinking: their least, 128.
fn thinking_config(effort: &str, model: &str, limit: Option<u32>) -> Value {
    if is_gemini_3(model) {
        let level = match effort {
            "medium" | "high" | "xhigh" => "high",
            _ => "low",
        };
        json!({ "thinkingLevel": level })
    } else {
        let always_thinks = model.contains("2.5-pro");
        let budget: u32 = match effort {
            "none" if always_thinks => 128,
            "none" => 0,
            "minimal" => 512,
            "low" => 1024,
            "medium" => 8192,
            _ => 24_576,
        };
        let budget = match limit {
            Some(l) if budget > 0 => budget
                .min(l - l / 4)
                .max(if always_thinks { 128 } else { 0 }),
            _ => budget,
        };
        json!({ "thinkingBudget": budget })
    }
}

/// Schema keywords Gemini's OpenAPI subset accepts.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// Reduces a JSON schema to the subset Gemini accepts: unknown keywords (`additionalProperties`,
/// `$schema`, `strict`...) are dropped, local `$ref`s into `$defs`/`definitions` are inlined (to a
/// bounded depth), `type: [T, "null"]` becomes `type: T, nullable: true`, `const` becomes a
/// one-value `enum`, and string formats other than `enum` and `date-time` are dropped.
pub fn clean_schema(schema: &Value) -> Value {
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .and_then(Value::as_object);
    clean_node(schema, defs, 0)
}

fn clean_node(node: &Value, defs: Option<&Map<String, Value>>, depth: usize) -> Value {
    let Some(obj) = node.as_object() else {
        return node.clone();
    };
    if depth > 16 {
        return json!({ "type": "object" });
    }
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/$defs/")
            .or_else(|| r.strip_prefix("#/definitions/"));
        if let Some(target) = name.and_then(|n| defs.and_then(|d| d.get(n))) {
            let mut resolved = clean_node(target, defs, depth + 1);
            if let (Some(desc), Value::Object(m)) = (obj.get("description"), &mut resolved) {
                m.insert("description".into(), desc.clone());
            }
            return resolved;
        }
        return json!({ "type": "object" });
    }
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "type" => match v {
                Value::Array(types) => {
                    let non_null: Vec<&Value> = types
                        .iter()
                        .filter(|t| t.as_str() != Some("null"))
                        .collect();
                    if let Some(t) = non_null.first() {
                        out.insert("type".into(), (*t).clone());
                    }
                    if non_null.len() < types.len() {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                }
                _ => {
                    out.insert("type".into(), v.clone());
                }
            },
            "const" => {
                out.insert("enum".into(), json!([v]));
            }
            "properties" => {
                if let Some(props) = v.as_object() {
                    let cleaned: Map<String, Value> = props
                        .iter()
                        .map(|(name, s)| (name.clone(), clean_node(s, defs, depth + 1)))
                        .collect();
                    out.insert("properties".into(), Value::Object(cleaned));
                }
            }
            "items" => {
                out.insert("items".into(), clean_node(v, defs, depth + 1));
            }
            "anyOf" | "oneOf" => {
                if let Some(list) = v.as_array() {
                    let cleaned: Vec<Value> = list
                        .iter()
                        .map(|s| clean_node(s, defs, depth + 1))
                        .collect();
                    out.insert("anyOf".into(), Value::Array(cleaned));
                }
            }
            k if SCHEMA_KEYS.contains(&k) => {
                out.insert(k.to_owned(), v.clone());
            }
            _ => {}
        }
    }
    let is_string = out.get("type").and_then(Value::as_str) == Some("string");
    if is_string
        && !matches!(
            out.get("format").and_then(Value::as_str),
            None | Some("enum" | "date-time")
        )
    {
        out.remove("format");
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// A `generateContent` response (also one chunk of a stream). Unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WireResponse {
    /// The answers.
    pub candidates: Vec<WireCandidate>,
    /// Set when the prompt itself was blocked.
    pub prompt_feedback: Option<WirePromptFeedback>,
    /// Token counts (cumulative in streams).
    pub usage_metadata: Option<WireUsage>,
    /// The model that answered.
    pub model_version: Option<String>,
    /// The response id.
    pub response_id: Option<String>,
}

/// One candidate answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WireCandidate {
    /// The content, absent when blocked.
    pub content: Option<WireContent>,
    /// Why generation stopped.
    pub finish_reason: Option<String>,
    /// The candidate's position.
    pub index: Option<u32>,
    /// Token log probabilities, when asked for (`responseLogprobs`).
    pub logprobs_result: Option<Value>,
}

/// A turn's parts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WireContent {
    /// The parts.
    pub parts: Vec<WirePart>,
}

/// One part of a turn (only the kinds the gateway reads).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WirePart {
    /// Text.
    pub text: Option<String>,
    /// Whether the text is a thought summary.
    pub thought: Option<bool>,
    /// The opaque signature to echo back.
    pub thought_signature: Option<String>,
    /// A function call.
    pub function_call: Option<WireFunctionCall>,
}

/// A function call.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WireFunctionCall {
    /// Its id, rarely set.
    pub id: Option<String>,
    /// The function's name.
    pub name: String,
    /// The arguments object.
    pub args: Option<Value>,
}

/// Why a prompt was blocked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WirePromptFeedback {
    /// `SAFETY`, `OTHER`, `BLOCKLIST`, `PROHIBITED_CONTENT`...
    pub block_reason: Option<String>,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WireUsage {
    /// Input tokens, cached included.
    pub prompt_token_count: u64,
    /// Output tokens, thoughts excluded.
    pub candidates_token_count: u64,
    /// Thinking tokens.
    pub thoughts_token_count: u64,
    /// Everything.
    pub total_token_count: u64,
    /// Input tokens served from the cache.
    pub cached_content_token_count: u64,
}

impl WireUsage {
    /// As canonical usage: thoughts count as completion tokens and as reasoning tokens.
    pub fn to_usage(self) -> Usage {
        let completion = self
            .candidates_token_count
            .saturating_add(self.thoughts_token_count);
        let mut usage = Usage::new(
            self.prompt_token_count,
            completion,
            self.cached_content_token_count,
        );
        if self.total_token_count > 0 {
            usage.total_tokens = self.total_token_count;
        }
        if self.thoughts_token_count > 0 {
            usage.completion_tokens_details = Some(CompletionTokensDetails {
                reasoning_tokens: self.thoughts_token_count,
            });
        }
        usage
    }
}

/// Maps a `finishReason`; `called_tool` turns `STOP` into `tool_calls`.
pub fn map_finish_reason(reason: &str, called_tool: bool) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "LANGUAGE" => {
            FinishReason::ContentFilter
        }
        r if r.starts_with("IMAGE_") => FinishReason::ContentFilter,
        _ if called_tool => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// A fresh synthesized tool-call id.
fn new_call_id() -> String {
    format!("call_{}", uuid::Uuid::new_v4().simple())
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The text, thoughts and calls of one candidate's parts; signatures are remembered.
struct PartsOut {
    text: String,
    thoughts: String,
    calls: Vec<ToolCall>,
}

fn read_parts(parts: &[WirePart], signatures: &SignatureStore) -> PartsOut {
    let mut out = PartsOut {
        text: String::new(),
        thoughts: String::new(),
        calls: Vec::new(),
    };
    for p in parts {
        if let Some(fc) = &p.function_call {
            let id = fc
                .id
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(new_call_id);
            if let Some(sig) = &p.thought_signature {
                signatures.insert(&id, sig);
            }
            let args = fc.args.clone().unwrap_or_else(|| json!({}));
            out.calls.push(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall {
                    name: fc.name.clone(),
                    arguments: args.to_string(),
                },
            });
        } else if let Some(t) = &p.text {
            if p.thought == Some(true) {
                out.thoughts.push_str(t);
            } else {
                out.text.push_str(t);
            }
        }
    }
    out
}

/// Converts a `generateContent` response. `model` is used when the response names none;
/// `created` is the Unix time to stamp.
pub fn decode_response(
    wire: WireResponse,
    model: &str,
    created: u64,
    signatures: &SignatureStore,
) -> ChatResponse {
    let mut choices = Vec::with_capacity(wire.candidates.len().max(1));
    for (pos, cand) in wire.candidates.iter().enumerate() {
        let parts = cand
            .content
            .as_ref()
            .map(|c| c.parts.as_slice())
            .unwrap_or_default();
        let out = read_parts(parts, signatures);
        let called = !out.calls.is_empty();
        let finish = cand
            .finish_reason
            .as_deref()
            .map(|r| map_finish_reason(r, called));
        let tool_calls = called.then_some(out.calls);
        choices.push(Choice {
            index: cand.index.unwrap_or(u32::try_from(pos).unwrap_or(0)),
            message: Message {
                role: Role::Assistant,
                content: (!out.text.is_empty() || tool_calls.is_none())
                    .then_some(Content::Text(out.text)),
                name: None,
                tool_calls,
                tool_call_id: None,
                refusal: None,
                reasoning_content: (!out.thoughts.is_empty()).then_some(out.thoughts),
                audio: None,
                tool_error: false,
            },
            finish_reason: finish,
            logprobs: cand.logprobs_result.as_ref().map(openai_logprobs),
        });
    }
    if choices.is_empty() {
        let blocked = wire
            .prompt_feedback
            .as_ref()
            .and_then(|f| f.block_reason.as_ref())
            .is_some();
        choices.push(Choice {
            index: 0,
            message: Message::text(Role::Assistant, ""),
            finish_reason: Some(if blocked {
                FinishReason::ContentFilter
            } else {
                FinishReason::Stop
            }),
            logprobs: None,
        });
    }
    let mut extra = Map::new();
    if let Some(reason) = wire.prompt_feedback.and_then(|f| f.block_reason) {
        extra.insert("block_reason".into(), Value::String(reason));
    }
    ChatResponse {
        id: wire
            .response_id
            .unwrap_or_else(|| format!("gen-{}", uuid::Uuid::new_v4().simple())),
        object: "chat.completion".into(),
        created,
        model: wire.model_version.unwrap_or_else(|| model.to_owned()),
        choices,
        usage: wire.usage_metadata.map(WireUsage::to_usage),
        extra,
        raw: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------------------------

/// Turns the `data:` payloads of a `streamGenerateContent?alt=sse` stream into canonical chunks.
///
/// Feed each payload to [`GeminiStream::on_data`]; when the upstream closes, [`GeminiStream::finish`]
/// yields the usage chunk (`choices: []`) from the last, cumulative `usageMetadata`.
#[derive(Debug)]
pub struct GeminiStream {
    id: Option<String>,
    model: String,
    created: u64,
    candidates: Vec<CandidateState>,
    usage: Option<Usage>,
    saw_finish: bool,
    finished: bool,
    signatures: Arc<SignatureStore>,
    api: GoogleApi,
}

#[derive(Debug, Clone, Default)]
struct CandidateState {
    role_sent: bool,
    tools: u32,
    called_tool: bool,
}

impl GeminiStream {
    /// A new stream for `model` (used until the upstream names its model version). Thought
    /// signatures of function calls are remembered in `signatures`; `api` picks the error rules
    /// for in-band errors.
    pub fn new(model: &str, created: u64, signatures: Arc<SignatureStore>, api: GoogleApi) -> Self {
        GeminiStream {
            id: None,
            model: model.to_owned(),
            created,
            candidates: Vec::new(),
            usage: None,
            saw_finish: false,
            finished: false,
            signatures,
            api,
        }
    }

    /// Converts one `data:` payload into zero or more chunks. A payload with an `error` object is
    /// an upstream failure after the 200 and is classified.
    pub fn on_data(&mut self, data: &str) -> Result<Vec<ChatChunk>, ProviderError> {
        let value: Value = serde_json::from_str(data).map_err(|e| {
            ProviderError::Protocol(format!("gemini stream chunk is not JSON: {e}"))
        })?;
        if let Some(err) = value.get("error") {
            let status = err
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(500);
            return Err(classify_error_value(status, &value, None, self.api));
        }
        let wire: WireResponse = serde_json::from_value(value)
            .map_err(|e| ProviderError::Protocol(format!("gemini stream chunk: {e}")))?;
        if self.id.is_none() {
            self.id = Some(
                wire.response_id
                    .clone()
                    .unwrap_or_else(|| format!("gen-{}", uuid::Uuid::new_v4().simple())),
            );
        }
        if let Some(m) = &wire.model_version {
            self.model.clone_from(m);
        }
        if let Some(u) = wire.usage_metadata {
            self.usage = Some(u.to_usage());
        }
        let mut chunk = ChatChunk::new(
            self.id.clone().unwrap_or_default(),
            self.model.clone(),
            self.created,
        );
        for (pos, cand) in wire.candidates.iter().enumerate() {
            let index = cand.index.unwrap_or(u32::try_from(pos).unwrap_or(0));
            let slot = usize::try_from(index).unwrap_or(0).min(64);
            if self.candidates.len() <= slot {
                self.candidates.resize(slot + 1, CandidateState::default());
            }
            let state = &mut self.candidates[slot];
            let parts = cand
                .content
                .as_ref()
                .map(|c| c.parts.as_slice())
                .unwrap_or_default();
            let out = read_parts(parts, &self.signatures);
            let mut delta = Delta::default();
            if !state.role_sent {
                delta.role = Some(Role::Assistant);
                state.role_sent = true;
            }
            if !out.text.is_empty() {
                delta.content = Some(out.text);
            }
            if !out.thoughts.is_empty() {
                delta.reasoning_content = Some(out.thoughts);
            }
            if !out.calls.is_empty() {
                state.called_tool = true;
                let mut deltas = Vec::with_capacity(out.calls.len());
                for call in out.calls {
                    deltas.push(ToolCallDelta {
                        index: state.tools,
                        id: Some(call.id),
                        kind: Some("function".into()),
                        function: Some(FunctionCallDelta {
                            name: Some(call.function.name),
                            arguments: Some(call.function.arguments),
                        }),
                    });
                    state.tools += 1;
                }
                delta.tool_calls = Some(deltas);
            }
            let finish = cand
                .finish_reason
                .as_deref()
                .map(|r| map_finish_reason(r, state.called_tool));
            if finish.is_some() {
                self.saw_finish = true;
            }
            if delta != Delta::default() || finish.is_some() {
                chunk.choices.push(ChunkChoice {
                    index,
                    delta,
                    finish_reason: finish,
                });
            }
        }
        if wire.candidates.is_empty()
            && wire
                .prompt_feedback
                .as_ref()
                .and_then(|f| f.block_reason.as_ref())
                .is_some()
        {
            self.saw_finish = true;
            chunk.choices.push(ChunkChoice {
                index: 0,
                delta: Delta {
                    role: Some(Role::Assistant),
                    ..Delta::default()
                },
                finish_reason: Some(FinishReason::ContentFilter),
            });
        }
        Ok(if chunk.choices.is_empty() {
            Vec::new()
        } else {
            vec![chunk]
        })
    }

    /// Call when the upstream closed: the final usage chunk, if any usage was reported.
    pub fn finish(&mut self) -> Option<ChatChunk> {
        if self.finished {
            return None;
        }
        self.finished = true;
        let usage = self.usage?;
        let mut chunk = ChatChunk::new(
            self.id.clone().unwrap_or_default(),
            self.model.clone(),
            self.created,
        );
        chunk.usage = Some(usage);
        Some(chunk)
    }
}

impl StreamDecoder<SseEvent> for GeminiStream {
    fn event(
        &mut self,
        event: SseEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, ProviderError> {
        let data = event
            .data_str()
            .ok_or_else(|| ProviderError::Protocol("gemini stream event is not UTF-8".into()))?;
        if data.trim().is_empty() || data.trim() == "[DONE]" {
            return Ok(false);
        }
        out.extend(self.on_data(data)?);
        Ok(false)
    }

    fn end(&mut self, out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError> {
        // Gemini has no end marker: a stream without a finish reason was cut off.
        if !self.saw_finish {
            return Err(ProviderError::Connect(
                "gemini stream ended before a finish reason".into(),
            ));
        }
        out.extend(self.finish());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings and models
// ---------------------------------------------------------------------------------------------

/// The `batchEmbedContents` body for `texts`.
pub fn encode_embeddings(model: &str, texts: &[String], dimensions: Option<u32>) -> Value {
    let requests: Vec<Value> = texts
        .iter()
        .map(|t| {
            let mut r = json!({
                "model": format!("models/{model}"),
                "content": { "parts": [{ "text": t }] }
            });
            if let (Some(d), Value::Object(m)) = (dimensions, &mut r) {
                m.insert("outputDimensionality".into(), Value::from(d));
            }
            r
        })
        .collect();
    json!({ "requests": requests })
}

/// A `batchEmbedContents` response.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WireEmbeddings {
    /// One per input.
    pub embeddings: Vec<WireEmbedding>,
}

/// One embedding.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WireEmbedding {
    /// The vector.
    pub values: Vec<f32>,
}

/// Converts a `batchEmbedContents` answer into the OpenAI shape (Gemini reports no usage).
pub fn decode_embeddings(wire: WireEmbeddings, model: &str) -> EmbeddingResponse {
    EmbeddingResponse {
        object: "list".into(),
        data: wire
            .embeddings
            .into_iter()
            .enumerate()
            .map(|(i, e)| Embedding {
                object: "embedding".into(),
                index: u32::try_from(i).unwrap_or(u32::MAX),
                embedding: e.values,
            })
            .collect(),
        model: model.to_owned(),
        usage: None,
    }
}

/// A page of `GET /v1beta/models`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WireModels {
    /// The models.
    pub models: Vec<WireModel>,
    /// Set when more pages exist.
    pub next_page_token: Option<String>,
}

/// One model entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WireModel {
    /// `models/<id>`.
    pub name: String,
}

// ---------------------------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------------------------

/// The path of a model: `models/{id}` unless the id already names a collection (`tunedModels/...`).
/// The `countTokens` body for `request`: `{"generateContentRequest": {model, contents,
/// systemInstruction, tools...}}`, without generation settings.
pub fn count_tokens_body(
    request: &ChatRequest,
    model: &str,
    signatures: &SignatureStore,
) -> Result<Value, ProviderError> {
    let mut inner = encode_request(request, model, signatures)?;
    if let Value::Object(o) = &mut inner {
        o.remove("generationConfig");
        o.remove("safetySettings");
        o.insert("model".to_owned(), Value::String(model_path(model)));
    }
    Ok(serde_json::json!({ "generateContentRequest": inner }))
}

/// The `totalTokens` of a `countTokens` answer.
pub(crate) fn parse_count(body: &[u8]) -> Result<u64, ProviderError> {
    #[derive(Deserialize)]
    struct Counted {
        #[serde(rename = "totalTokens", default)]
        total_tokens: u64,
    }
    serde_json::from_slice::<Counted>(body)
        .map(|c| c.total_tokens)
        .map_err(|e| ProviderError::Protocol(format!("gemini token count: {e}")))
}

pub(crate) fn model_path(model: &str) -> String {
    if model.contains('/') {
        model.to_owned()
    } else {
        format!("models/{model}")
    }
}

/// Serializes a JSON body.
pub(crate) fn to_bytes(v: &Value) -> Result<Bytes, ProviderError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ProviderError::Protocol(format!("encoding the request: {e}")))
}

/// Parses a `generateContent` answer.
pub(crate) fn parse_response(body: &[u8]) -> Result<WireResponse, ProviderError> {
    serde_json::from_slice(body)
        .map_err(|e| ProviderError::Protocol(format!("gemini response: {e}")))
}

/// Settings of a Gemini (AI Studio) provider.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GeminiConfig {
    /// The host root; `None` for [`DEFAULT_BASE_URL`].
    pub base_url: Option<String>,
}

/// The Gemini AI Studio adapter (`x-goog-api-key` authentication).
#[derive(Debug, Clone)]
pub struct GeminiProvider {
    base_url: Arc<str>,
    client: HttpClient,
    signatures: Arc<SignatureStore>,
}

impl GeminiProvider {
    /// A provider for `config`, sending through `client`.
    pub fn new(config: &GeminiConfig, client: HttpClient) -> Self {
        let base = config
            .base_url
            .as_deref()
            .filter(|b| !b.trim().is_empty())
            .unwrap_or(DEFAULT_BASE_URL);
        GeminiProvider {
            base_url: crate::http::without_version(base, &["v1beta", "v1"]).into(),
            client,
            signatures: Arc::new(SignatureStore::new()),
        }
    }

    /// The URL of `method` (`generateContent`, `streamGenerateContent?alt=sse`...) for `model`.
    pub fn url(&self, model: &str, method: &str) -> String {
        join_url(
            &self.base_url,
            &format!("/v1beta/{}:{method}", model_path(model)),
        )
    }

    fn headers(&self, call: &Call) -> Result<Vec<(HeaderName, HeaderValue)>, ProviderError> {
        let mut headers = Vec::with_capacity(2);
        match call.credential.as_ref() {
            Credential::ApiKey(key) => headers.push((
                HeaderName::from_static("x-goog-api-key"),
                header_value(key.expose(), true)?,
            )),
            other => return Err(unsupported_credential("gemini", other)),
        }
        push_traceparent(&mut headers, call)?;
        Ok(headers)
    }
}

#[async_trait]
impl Provider for GeminiProvider {
    fn kind(&self) -> &str {
        "gemini"
    }

    async fn chat(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderResponse<ChatResponse>, ProviderError> {
        let body = to_bytes(&encode_request(request, &call.model, &self.signatures)?)?;
        let url = self.url(&call.model, "generateContent");
        let req = json_request(Method::POST, &url, &self.headers(call)?, body)?;
        let resp = self
            .client
            .fetch(req, call.timeout, classify_ai_studio)
            .await?;
        let wire = parse_response(resp.body())?;
        Ok(ProviderResponse {
            body: decode_response(wire, &call.model, unix_now(), &self.signatures),
            rate_limit: RateLimitInfo::default(),
        })
    }

    /// Gemini's `countTokens`, asked with the whole `generateContentRequest` (system
    /// instruction and tools count too).
    async fn count_tokens(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<Option<u64>, ProviderError> {
        let body = to_bytes(&count_tokens_body(request, &call.model, &self.signatures)?)?;
        let url = self.url(&call.model, "countTokens");
        let req = json_request(Method::POST, &url, &self.headers(call)?, body)?;
        let resp = self
            .client
            .fetch(req, call.timeout, classify_ai_studio)
            .await?;
        parse_count(resp.body()).map(Some)
    }

    async fn chat_stream(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderStream, ProviderError> {
        let body = to_bytes(&encode_request(request, &call.model, &self.signatures)?)?;
        let url = self.url(&call.model, "streamGenerateContent?alt=sse");
        let mut req = json_request(Method::POST, &url, &self.headers(call)?, body)?;
        accept_event_stream(&mut req);
        let resp = self
            .client
            .open_stream(req, call.timeout, classify_ai_studio)
            .await?;
        let events = SseStream::new(resp.into_body()).idle_timeout(call.timeout);
        let decoder = GeminiStream::new(
            &call.model,
            unix_now(),
            Arc::clone(&self.signatures),
            GoogleApi::AiStudio,
        );
        Ok(ProviderStream {
            chunks: decode_stream(events, decoder),
            rate_limit: RateLimitInfo::default(),
        })
    }

    async fn embed(
        &self,
        call: &Call,
        request: &EmbeddingRequest,
    ) -> Result<ProviderResponse<EmbeddingResponse>, ProviderError> {
        let texts = request.input.texts();
        if texts.is_empty() {
            return Err(bad_request(
                "gemini embeddings take text input, not token arrays",
                "input",
            ));
        }
        let url = self.url(&call.model, "batchEmbedContents");
        let headers = self.headers(call)?;
        // `batchEmbedContents` takes at most 100 requests.
        crate::embed_in_batches(&texts, 100, |batch| {
            let (url, headers) = (&url, &headers);
            async move {
                let body = to_bytes(&encode_embeddings(&call.model, batch, request.dimensions))?;
                let req = json_request(Method::POST, url, headers, body)?;
                let resp = self
                    .client
                    .fetch(req, call.timeout, classify_ai_studio)
                    .await?;
                let wire: WireEmbeddings = serde_json::from_slice(resp.body())
                    .map_err(|e| ProviderError::Protocol(format!("gemini embeddings: {e}")))?;
                Ok(ProviderResponse {
                    body: decode_embeddings(wire, &call.model),
                    rate_limit: RateLimitInfo::default(),
                })
            }
        })
        .await
    }

    async fn list_models(&self, call: &Call) -> Result<Vec<ModelInfo>, ProviderError> {
        let url = join_url(&self.base_url, "/v1beta/models?pageSize=1000");
        let req = json_request(Method::GET, &url, &self.headers(call)?, Bytes::new())?;
        let resp = self
            .client
            .fetch(req, call.timeout, classify_ai_studio)
            .await?;
        let wire: WireModels = serde_json::from_slice(resp.body())
            .map_err(|e| ProviderError::Protocol(format!("gemini models: {e}")))?;
        Ok(wire
            .models
            .into_iter()
            .map(|m| ModelInfo {
                id: m.name.strip_prefix("models/").unwrap_or(&m.name).to_owned(),
                owned_by: "google".into(),
                created: 0,
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Which Google API answered: AI Studio and Vertex share the error body but not the quota model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoogleApi {
    /// AI Studio: quota per project, so a key of another project helps.
    AiStudio,
    /// Vertex AI: "Resource exhausted" is shared capacity.
    Vertex,
}

/// Classifies an AI Studio error answer (see [`classify_error`]).
pub fn classify_ai_studio(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    classify_error(status, headers, body, GoogleApi::AiStudio)
}

/// Classifies a Vertex AI error answer (see [`classify_error`]).
pub fn classify_vertex(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    classify_error(status, headers, body, GoogleApi::Vertex)
}

/// Classifies a Google error answer (`{"error":{"code","message","status","details"}}`, possibly
/// wrapped in an array): `RetryInfo.retryDelay` (or `retry-after`) is the wait, a `PerDay` quota id
/// exhausts the key, `API_KEY_INVALID` (a 400) refuses it, and a token-count message is a context
/// overflow.
pub fn classify_error(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    api: GoogleApi,
) -> ProviderError {
    let hint = retry_after(headers);
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let value = match value {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        v => v,
    };
    let mut err = classify_error_value(status, &value, hint, api);
    if let ProviderError::Server { message, .. } | ProviderError::BadRequest { message, .. } =
        &mut err
    {
        if message.is_empty() {
            *message = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        }
    }
    err
}

/// Classifies a parsed Google error body.
pub(crate) fn classify_error_value(
    status: u16,
    value: &Value,
    retry_after: Option<Duration>,
    api: GoogleApi,
) -> ProviderError {
    let err = value.get("error").unwrap_or(&Value::Null);
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let grpc_status = err
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut reasons: Vec<&str> = Vec::new();
    let mut quota_ids: Vec<&str> = Vec::new();
    let mut retry_delay: Option<Duration> = None;
    for d in err
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = d.get("@type").and_then(Value::as_str).unwrap_or_default();
        if kind.ends_with("ErrorInfo") {
            if let Some(r) = d.get("reason").and_then(Value::as_str) {
                reasons.push(r);
            }
        } else if kind.ends_with("QuotaFailure") {
            for v in d
                .get("violations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(q) = v.get("quotaId").and_then(Value::as_str) {
                    quota_ids.push(q);
                }
            }
        } else if kind.ends_with("RetryInfo") {
            retry_delay = d
                .get("retryDelay")
                .and_then(Value::as_str)
                .and_then(parse_go_duration);
        }
    }
    let lower = message.to_ascii_lowercase();
    let context_overflow = lower.contains("exceeds the maximum number of tokens")
        || (lower.contains("token") && lower.contains("exceed") && lower.contains("input"));
    let key_invalid = reasons.iter().any(|r| {
        matches!(
            *r,
            "API_KEY_INVALID" | "API_KEY_EXPIRED" | "API_KEY_SERVICE_BLOCKED"
        )
    }) || lower.contains("api key not valid")
        || lower.contains("api key expired");

    match status {
        429 => {
            let per_day = quota_ids.iter().any(|q| q.contains("PerDay"));
            let scope = if per_day {
                RateLimitScope::Quota
            } else {
                match api {
                    GoogleApi::AiStudio => RateLimitScope::Key,
                    GoogleApi::Vertex => RateLimitScope::Provider,
                }
            };
            ProviderError::RateLimited {
                retry_after: retry_delay.max(retry_after),
                remaining: None,
                scope,
                message,
            }
        }
        401 | 403 => ProviderError::Auth { status, message },
        400 if key_invalid => ProviderError::Auth { status, message },
        400 if grpc_status == "FAILED_PRECONDITION" => ProviderError::Auth { status, message },
        400 | 413 | 422 if context_overflow => ProviderError::ContextLengthExceeded { message },
        404 => ProviderError::NotFound { message },
        503 => ProviderError::Overloaded {
            retry_after: retry_delay.max(retry_after),
            message,
        },
        s if s >= 500 => ProviderError::Server { status, message },
        408 => ProviderError::Server { status, message },
        _ => ProviderError::BadRequest {
            status,
            message,
            param: None,
            code: (!grpc_status.is_empty()).then(|| grpc_status.to_owned()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_asked_for_and_come_back_in_openais_shape() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "logprobs": true, "top_logprobs": 2
        }))
        .unwrap();
        let g = generation_config(&req, "gemini-2.5-flash");
        assert_eq!(g["responseLogprobs"], true);
        assert_eq!(g["logprobs"], 2);
        let wire: WireResponse = serde_json::from_value(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]},
                "finishReason": "STOP", "index": 0,
                "logprobsResult": {
                    "chosenCandidates": [{"token": "Hi", "tokenId": 5, "logProbability": -0.25}],
                    "topCandidates": [{"candidates": [
                        {"token": "Hi", "tokenId": 5, "logProbability": -0.25},
                        {"token": "Hello", "tokenId": 6, "logProbability": -1.5}]}]}}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}
        }))
        .unwrap();
        let r = decode_response(wire, "gemini-2.5-flash", 1, &SignatureStore::new());
        assert_eq!(
            r.choices[0].logprobs,
            Some(
                json!({"content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105],
                "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                                 {"token": "Hello", "logprob": -1.5, "bytes": [72, 101, 108, 108, 111]}]}],
                "refusal": null})
            )
        );
        let plain: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap();
        assert!(generation_config(&plain, "gemini-2.5-flash")
            .get("responseLogprobs")
            .is_none());
    }

    #[test]
    fn anthropic_adaptive_thinking_and_effort() {
        let config = |adaptive: bool, effort: Option<&str>, model: &str| {
            let req = ChatRequest {
                model: model.to_owned(),
                messages: vec![Message::text(Role::User, "hi")],
                thinking_adaptive: adaptive,
                effort: effort.map(str::to_owned),
                ..ChatRequest::default()
            };
            generation_config(&req, model)
                .get("thinkingConfig")
                .cloned()
        };
        assert_eq!(
            config(true, None, "gemini-2.5-flash"),
            Some(json!({"thinkingBudget": -1, "includeThoughts": true})),
            "the model decides"
        );
        assert_eq!(
            config(true, Some("low"), "gemini-3-pro-preview"),
            Some(json!({"thinkingLevel": "low", "includeThoughts": true}))
        );
        assert_eq!(
            config(false, Some("low"), "gemini-2.5-flash"),
            Some(json!({"thinkingBudget": 1024})),
            "an effort alone: a budget, the thoughts not asked back"
        );
        assert_eq!(
            config(false, Some("max"), "gemini-2.5-flash"),
            Some(json!({"thinkingBudget": 24576}))
        );
        assert_eq!(config(true, Some("high"), "gemini-2.0-flash"), None);
    }

    #[test]
    fn thinking_budgets_fit_the_model_and_the_limit() {
        assert_eq!(
            thinking_config("none", "gemini-2.5-flash", None),
            json!({"thinkingBudget": 0})
        );
        assert_eq!(
            thinking_config("none", "gemini-2.5-pro", None),
            json!({"thinkingBudget": 128})
        );
        assert_eq!(
            thinking_config("high", "gemini-2.5-flash", Some(3000)),
            json!({"thinkingBudget": 2250})
        );
        assert_eq!(
            thinking_config("high", "gemini-2.5-flash", None),
            json!({"thinkingBudget": 24576})
        );
        assert_eq!(
            thinking_config("xhigh", "gemini-3-pro-preview", None),
            json!({"thinkingLevel": "high"})
        );
    }
    use expect_test::{expect, Expect};
    use gateway_core::types::StreamAccumulator;
    use gateway_core::FailoverScope;

    fn request(raw: Value) -> ChatRequest {
        serde_json::from_value(raw).expect("a valid canonical request")
    }

    fn check_request(req: Value, model: &str, store: &SignatureStore, expected: Expect) {
        let body = encode_request(&request(req), model, store).expect("converts");
        expected.assert_eq(&serde_json::to_string_pretty(&body).expect("json"));
    }

    /// Replaces synthesized call ids by `call_0`, `call_1`... in order of appearance.
    pub(crate) fn stable_ids(text: &str) -> String {
        let mut out = text.to_owned();
        let mut n = 0;
        while let Some(start) = out.find("call_") {
            let rest = &out[start + 5..];
            let len = rest.chars().take_while(char::is_ascii_hexdigit).count();
            if len != 32 {
                // Not synthesized: rename so the loop moves on.
                out.replace_range(start..start + 5, "CALL_");
                continue;
            }
            let id = out[start..start + 5 + len].to_owned();
            out = out.replace(&id, &format!("CALL_{n}"));
            n += 1;
        }
        out.replace("CALL_", "call_")
    }

    #[test]
    fn request_with_tools_history_images_and_options() {
        let store = SignatureStore::new();
        store.insert("call_abc", "CiQBsig");
        check_request(
            json!({
                "model": "gemini",
                "messages": [
                    {"role": "system", "content": "Be terse."},
                    {"role": "developer", "content": "Answer in French."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Weather here?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.webp"}}
                    ]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_def", "type": "function", "function": {"name": "get_time", "arguments": "not json"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_abc", "content": "18C sunny"},
                    {"role": "tool", "tool_call_id": "call_def", "content": "noon"},
                    {"role": "user", "content": "Thanks"}
                ],
                "tools": [
                    {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                        "parameters": {"type": "object", "additionalProperties": false, "$schema": "x",
                            "properties": {"city": {"type": ["string", "null"], "format": "uri"}}, "required": ["city"]}}},
                    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
                ],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "max_completion_tokens": 256,
                "temperature": 0.2,
                "top_p": 0.9,
                "top_k": 40,
                "n": 1,
                "stop": "END",
                "seed": 7,
                "presence_penalty": 0.5,
                "reasoning_effort": "low",
                "response_format": {"type": "json_schema", "json_schema": {"name": "w", "strict": true, "schema": {
                    "type": "object", "additionalProperties": false,
                    "properties": {"t": {"$ref": "#/$defs/temp"}, "kind": {"const": "weather"}},
                    "$defs": {"temp": {"type": "number", "description": "celsius"}}
                }}}
            }),
            "gemini-2.5-flash",
            &store,
            expect![[r#"
                {
                  "contents": [
                    {
                      "parts": [
                        {
                          "text": "Weather here?"
                        },
                        {
                          "inlineData": {
                            "data": "AAAA",
                            "mimeType": "image/png"
                          }
                        },
                        {
                          "fileData": {
                            "fileUri": "https://example.com/a.webp",
                            "mimeType": "image/webp"
                          }
                        }
                      ],
                      "role": "user"
                    },
                    {
                      "parts": [
                        {
                          "functionCall": {
                            "args": {
                              "city": "Paris"
                            },
                            "name": "get_weather"
                          },
                          "thoughtSignature": "CiQBsig"
                        },
                        {
                          "functionCall": {
                            "args": {},
                            "name": "get_time"
                          }
                        }
                      ],
                      "role": "model"
                    },
                    {
                      "parts": [
                        {
                          "functionResponse": {
                            "name": "get_weather",
                            "response": {
                              "result": "18C sunny"
                            }
                          }
                        },
                        {
                          "functionResponse": {
                            "name": "get_time",
                            "response": {
                              "result": "noon"
                            }
                          }
                        },
                        {
                          "text": "Thanks"
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "generationConfig": {
                    "candidateCount": 1,
                    "maxOutputTokens": 256,
                    "presencePenalty": 0.5,
                    "responseMimeType": "application/json",
                    "responseSchema": {
                      "properties": {
                        "kind": {
                          "enum": [
                            "weather"
                          ]
                        },
                        "t": {
                          "description": "celsius",
                          "type": "number"
                        }
                      },
                      "type": "object"
                    },
                    "seed": 7,
                    "stopSequences": [
                      "END"
                    ],
                    "temperature": 0.2,
                    "thinkingConfig": {
                      "thinkingBudget": 192
                    },
                    "topK": 40,
                    "topP": 0.9
                  },
                  "systemInstruction": {
                    "parts": [
                      {
                        "text": "Be terse."
                      },
                      {
                        "text": "Answer in French."
                      }
                    ]
                  },
                  "toolConfig": {
                    "functionCallingConfig": {
                      "allowedFunctionNames": [
                        "get_weather"
                      ],
                      "mode": "ANY"
                    }
                  },
                  "tools": [
                    {
                      "functionDeclarations": [
                        {
                          "description": "Weather by city",
                          "name": "get_weather",
                          "parameters": {
                            "properties": {
                              "city": {
                                "nullable": true,
                                "type": "string"
                              }
                            },
                            "required": [
                              "city"
                            ],
                            "type": "object"
                          }
                        },
                        {
                          "name": "get_time"
                        }
                      ]
                    }
                  ]
                }"#]],
        );
    }

    #[test]
    fn gemini_3_gets_levels_and_placeholder_signatures() {
        check_request(
            json!({
                "model": "g",
                "messages": [
                    {"role": "user", "content": "Time?"},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "now", "arguments": "{}"}},
                        {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "noon"},
                    {"role": "tool", "tool_call_id": "toolu_2", "content": "noon"}
                ],
                "tool_choice": "required",
                "reasoning_effort": "high"
            }),
            "gemini-3-pro-preview",
            &SignatureStore::new(),
            expect![[r#"
                {
                  "contents": [
                    {
                      "parts": [
                        {
                          "text": "Time?"
                        }
                      ],
                      "role": "user"
                    },
                    {
                      "parts": [
                        {
                          "text": "Checking."
                        },
                        {
                          "functionCall": {
                            "args": {},
                            "name": "now"
                          },
                          "thoughtSignature": "skip_thought_signature_validator"
                        },
                        {
                          "functionCall": {
                            "args": {},
                            "name": "now"
                          }
                        }
                      ],
                      "role": "model"
                    },
                    {
                      "parts": [
                        {
                          "functionResponse": {
                            "name": "now",
                            "response": {
                              "result": "noon"
                            }
                          }
                        },
                        {
                          "functionResponse": {
                            "name": "now",
                            "response": {
                              "result": "noon"
                            }
                          }
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "generationConfig": {
                    "thinkingConfig": {
                      "thinkingLevel": "high"
                    }
                  }
                }"#]],
        );
    }

    #[test]
    fn unsupported_part_is_a_bad_request() {
        let req = request(json!({"model": "g", "messages": [
            {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}
        ]}));
        let err = encode_request(&req, "gemini-2.5-flash", &SignatureStore::new()).unwrap_err();
        assert_eq!(err.scope(), FailoverScope::Caller, "{err}");
    }

    const TOOL_RESPONSE: &str = r#"{
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me think.", "thought": true},
            {"text": "Checking."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "SIG1"}
        ]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 8, "thoughtsTokenCount": 22,
            "totalTokenCount": 70, "cachedContentTokenCount": 10},
        "modelVersion": "gemini-2.5-flash", "responseId": "resp-1"
    }"#;

    fn decode(raw: &str, store: &SignatureStore) -> ChatResponse {
        let wire: WireResponse = serde_json::from_str(raw).expect("wire response");
        decode_response(wire, "fallback-model", 1_730_000_000, store)
    }

    #[test]
    fn response_with_thoughts_and_a_function_call() {
        let store = SignatureStore::new();
        let resp = decode(TOOL_RESPONSE, &store);
        let id = resp.choices[0].message.tool_calls.as_ref().expect("a call")[0]
            .id
            .clone();
        assert_eq!(
            store.get(&id).as_deref(),
            Some("SIG1"),
            "signature remembered by call id"
        );
        let text = stable_ids(&serde_json::to_string_pretty(&resp).expect("json"));
        expect![[r#"
            {
              "id": "resp-1",
              "object": "chat.completion",
              "created": 1730000000,
              "model": "gemini-2.5-flash",
              "choices": [
                {
                  "index": 0,
                  "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                      {
                        "id": "call_0",
                        "type": "function",
                        "function": {
                          "name": "get_weather",
                          "arguments": "{\"city\":\"Paris\"}"
                        }
                      }
                    ],
                    "reasoning_content": "Let me think."
                  },
                  "finish_reason": "tool_calls"
                }
              ],
              "usage": {
                "prompt_tokens": 40,
                "completion_tokens": 30,
                "total_tokens": 70,
                "prompt_tokens_details": {
                  "cached_tokens": 10
                },
                "completion_tokens_details": {
                  "reasoning_tokens": 22
                }
              }
            }"#]]
        .assert_eq(&text);

        // The signature comes back when the client replays the call.
        let req = request(json!({"model": "g", "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": id, "content": "sunny"}
        ]}));
        let body = encode_request(&req, "gemini-3-flash", &store).expect("converts");
        assert_eq!(body["contents"][1]["parts"][0]["thoughtSignature"], "SIG1");
    }

    #[test]
    fn finish_reasons_and_blocked_prompts() {
        let cases = [
            ("STOP", false, FinishReason::Stop),
            ("STOP", true, FinishReason::ToolCalls),
            ("MAX_TOKENS", true, FinishReason::Length),
            ("SAFETY", false, FinishReason::ContentFilter),
            ("RECITATION", false, FinishReason::ContentFilter),
            ("PROHIBITED_CONTENT", false, FinishReason::ContentFilter),
            ("IMAGE_SAFETY", false, FinishReason::ContentFilter),
            ("OTHER", false, FinishReason::Stop),
            ("MALFORMED_FUNCTION_CALL", false, FinishReason::Stop),
        ];
        for (reason, called, want) in cases {
            assert_eq!(
                map_finish_reason(reason, called),
                want,
                "{reason} (called {called})"
            );
        }
        let resp = decode(
            r#"{"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5}}"#,
            &SignatureStore::new(),
        );
        assert_eq!(
            resp.choices[0].finish_reason,
            Some(FinishReason::ContentFilter)
        );
        assert_eq!(resp.model, "fallback-model");
        assert_eq!(resp.extra["block_reason"], "SAFETY");
    }

    /// Runs SSE `data:` payloads through the stream converter and returns the chunks.
    fn run_stream(events: &[&str], store: &Arc<SignatureStore>) -> Vec<ChatChunk> {
        let mut s = GeminiStream::new(
            "fallback-model",
            1_730_000_000,
            Arc::clone(store),
            GoogleApi::AiStudio,
        );
        let mut out = VecDeque::new();
        for e in events {
            out.extend(s.on_data(e).expect("valid chunk"));
        }
        StreamDecoder::<SseEvent>::end(&mut s, &mut out).expect("complete stream");
        out.into_iter().collect()
    }

    #[test]
    fn stream_assembles_to_the_same_message_as_the_response() {
        let events = [
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Let me think.","thought":true}]},"index":0}],"usageMetadata":{"promptTokenCount":40,"totalTokenCount":40},"modelVersion":"gemini-2.5-flash","responseId":"resp-1"}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Check"}]},"index":0}],"usageMetadata":{"promptTokenCount":40,"candidatesTokenCount":2,"totalTokenCount":42},"modelVersion":"gemini-2.5-flash","responseId":"resp-1"}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"ing."}]},"index":0}],"modelVersion":"gemini-2.5-flash","responseId":"resp-1"}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"SIG1"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":40,"candidatesTokenCount":8,"thoughtsTokenCount":22,"totalTokenCount":70,"cachedContentTokenCount":10},"modelVersion":"gemini-2.5-flash","responseId":"resp-1"}"#,
        ];
        let store = Arc::new(SignatureStore::new());
        let chunks = run_stream(&events, &store);
        assert_eq!(store.len(), 1, "stream signatures are remembered too");
        let last = chunks.last().expect("chunks");
        assert!(
            last.choices.is_empty() && last.usage.is_some(),
            "final usage chunk"
        );

        let lines: Vec<String> = chunks
            .iter()
            .map(|c| serde_json::to_string(c).expect("json"))
            .collect();
        expect![[r#"
            {"id":"resp-1","object":"chat.completion.chunk","created":1730000000,"model":"gemini-2.5-flash","choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"Let me think."},"finish_reason":null}],"usage":null}
            {"id":"resp-1","object":"chat.completion.chunk","created":1730000000,"model":"gemini-2.5-flash","choices":[{"index":0,"delta":{"content":"Check"},"finish_reason":null}],"usage":null}
            {"id":"resp-1","object":"chat.completion.chunk","created":1730000000,"model":"gemini-2.5-flash","choices":[{"index":0,"delta":{"content":"ing."},"finish_reason":null}],"usage":null}
            {"id":"resp-1","object":"chat.completion.chunk","created":1730000000,"model":"gemini-2.5-flash","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_0","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],"usage":null}
            {"id":"resp-1","object":"chat.completion.chunk","created":1730000000,"model":"gemini-2.5-flash","choices":[],"usage":{"prompt_tokens":40,"completion_tokens":30,"total_tokens":70,"prompt_tokens_details":{"cached_tokens":10},"completion_tokens_details":{"reasoning_tokens":22}}}"#]]
        .assert_eq(&stable_ids(&lines.join("\n")));

        let mut acc = StreamAccumulator::default();
        for c in &chunks {
            acc.push(c);
        }
        let streamed = acc.into_response();
        let direct = decode(TOOL_RESPONSE, &SignatureStore::new());
        let (s, d) = (&streamed.choices[0], &direct.choices[0]);
        assert_eq!(s.message.content, d.message.content, "same text");
        assert_eq!(s.finish_reason, d.finish_reason, "same finish reason");
        assert_eq!(streamed.usage, direct.usage, "same usage");
        let names = |m: &Message| -> Vec<(String, String)> {
            m.tool_calls
                .iter()
                .flatten()
                .map(|c| (c.function.name.clone(), c.function.arguments.clone()))
                .collect()
        };
        assert_eq!(names(&s.message), names(&d.message), "same tool calls");
    }

    #[test]
    fn stream_blocked_prompt_and_mid_stream_error() {
        let chunks = run_stream(
            &[
                r#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},"usageMetadata":{"promptTokenCount":3,"totalTokenCount":3}}"#,
            ],
            &Arc::new(SignatureStore::new()),
        );
        assert_eq!(chunks.len(), 2, "a finish chunk and a usage chunk");
        assert_eq!(
            chunks[0].choices[0].finish_reason,
            Some(FinishReason::ContentFilter)
        );

        let mut s = GeminiStream::new("m", 0, Arc::new(SignatureStore::new()), GoogleApi::AiStudio);
        let err = s
            .on_data(
                r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
            )
            .unwrap_err();
        assert!(matches!(err, ProviderError::Overloaded { .. }), "{err:?}");

        // No finish reason before the close: cut off.
        let mut s = GeminiStream::new("m", 0, Arc::new(SignatureStore::new()), GoogleApi::AiStudio);
        s.on_data(r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}]}}]}"#)
            .expect("valid chunk");
        let err = StreamDecoder::<SseEvent>::end(&mut s, &mut VecDeque::new()).unwrap_err();
        assert!(matches!(err, ProviderError::Connect(_)), "{err:?}");
    }

    #[test]
    fn error_classification_table() {
        let rate_limited_day = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"m","quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"47s"}]}}"#;
        let rate_limited_min = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel"}]},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"0.5s"}]}}"#;
        let key_invalid = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[
            {"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        let overflow = r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
        let bad = r#"{"error":{"code":400,"message":"Invalid JSON payload received.","status":"INVALID_ARGUMENT"}}"#;
        let unavailable = r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#;
        let vertex_exhausted = r#"{"error":{"code":429,"message":"Resource exhausted. Please try again later.","status":"RESOURCE_EXHAUSTED"}}"#;
        let wrapped = r#"[{"error":{"code":500,"message":"Internal error","status":"INTERNAL"}}]"#;

        let describe = |e: ProviderError| -> String {
            match e {
                ProviderError::RateLimited {
                    retry_after, scope, ..
                } => {
                    format!("RateLimited {scope:?} {retry_after:?}")
                }
                ProviderError::Overloaded { .. } => "Overloaded".into(),
                ProviderError::Server { status, .. } => format!("Server {status}"),
                ProviderError::Auth { status, .. } => format!("Auth {status}"),
                ProviderError::NotFound { .. } => "NotFound".into(),
                ProviderError::BadRequest { status, code, .. } => {
                    format!("BadRequest {status} {code:?}")
                }
                ProviderError::ContextLengthExceeded { .. } => "ContextLengthExceeded".into(),
                other => format!("{other:?}"),
            }
        };
        let table = [
            (429, rate_limited_day, GoogleApi::AiStudio),
            (429, rate_limited_min, GoogleApi::AiStudio),
            (429, vertex_exhausted, GoogleApi::Vertex),
            (400, key_invalid, GoogleApi::AiStudio),
            (400, overflow, GoogleApi::AiStudio),
            (400, bad, GoogleApi::AiStudio),
            (
                401,
                r#"{"error":{"code":401,"status":"UNAUTHENTICATED","message":"expired"}}"#,
                GoogleApi::Vertex,
            ),
            (
                403,
                r#"{"error":{"code":403,"status":"PERMISSION_DENIED","message":"denied"}}"#,
                GoogleApi::AiStudio,
            ),
            (
                404,
                r#"{"error":{"code":404,"status":"NOT_FOUND","message":"no model"}}"#,
                GoogleApi::AiStudio,
            ),
            (503, unavailable, GoogleApi::AiStudio),
            (500, wrapped, GoogleApi::AiStudio),
            (
                504,
                r#"{"error":{"code":504,"status":"DEADLINE_EXCEEDED","message":"slow"}}"#,
                GoogleApi::AiStudio,
            ),
            (502, "<html>bad gateway</html>", GoogleApi::AiStudio),
        ];
        let got: Vec<String> = table
            .iter()
            .map(|(status, body, api)| {
                format!(
                    "{status} {api:?} -> {}",
                    describe(classify_error(
                        *status,
                        &HeaderMap::new(),
                        body.as_bytes(),
                        *api
                    ))
                )
            })
            .collect();
        expect![[r#"
            429 AiStudio -> RateLimited Quota Some(47s)
            429 AiStudio -> RateLimited Key Some(500ms)
            429 Vertex -> RateLimited Provider None
            400 AiStudio -> Auth 400
            400 AiStudio -> ContextLengthExceeded
            400 AiStudio -> BadRequest 400 Some("INVALID_ARGUMENT")
            401 Vertex -> Auth 401
            403 AiStudio -> Auth 403
            404 AiStudio -> NotFound
            503 AiStudio -> Overloaded
            500 AiStudio -> Server 500
            504 AiStudio -> Server 504
            502 AiStudio -> Server 502"#]]
        .assert_eq(&got.join("\n"));
    }

    #[test]
    fn embeddings_body() {
        let body = encode_embeddings("text-embedding-004", &["a".into(), "b".into()], Some(256));
        expect![[r#"{"requests":[{"content":{"parts":[{"text":"a"}]},"model":"models/text-embedding-004","outputDimensionality":256},{"content":{"parts":[{"text":"b"}]},"model":"models/text-embedding-004","outputDimensionality":256}]}"#]]
        .assert_eq(&body.to_string());
    }

    #[test]
    fn signature_store_is_bounded() {
        let store = SignatureStore::new();
        for i in 0..SIGNATURE_CAPACITY + 5 {
            store.insert(&format!("c{i}"), "s");
        }
        assert_eq!(store.len(), SIGNATURE_CAPACITY);
        assert!(store.get("c0").is_none(), "the oldest is forgotten first");
        assert!(store.get(&format!("c{}", SIGNATURE_CAPACITY + 4)).is_some());
    }
}
