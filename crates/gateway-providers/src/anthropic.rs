//! Anthropic Messages API (`POST {base}/v1/messages`), translated to and from the canonical
//! OpenAI-shaped types (wire-formats §9.1–9.3).
//!
//! Requests: `system`/`developer` messages join into the top-level `system`; `max_tokens` is always
//! sent (the caller's limit, else [`default_max_tokens`]); `stop` becomes `stop_sequences`;
//! `temperature` is clamped to 0..1; `top_p`/`top_k` pass through; `user` becomes
//! `metadata.user_id`; assistant tool calls become `tool_use` blocks (arguments parsed, `{}` if
//! invalid); tool messages become `tool_result` blocks in a user turn (consecutive results and the
//! user text after them merge into one turn, results first; other same-role runs merge too);
//! `data:` image URLs become base64 sources and other URLs `url` sources; empty text is dropped;
//! `tool_choice` maps to `auto`/`any`/`none`/`tool`, and `parallel_tool_calls: false` to
//! `disable_parallel_tool_use`; `reasoning_effort` becomes `thinking.budget_tokens` (low 1024,
//! medium 4096, high 16384; `max_tokens` is raised above the budget and `temperature`/`top_k` are
//! dropped, as the API requires). `n`, `seed`, penalties, `logprobs` and `logit_bias` have no
//! Anthropic equivalent and are dropped.
//!
//! `response_format` is best effort: Anthropic has no JSON mode, so an instruction to answer with a
//! single JSON object (matching the schema, when one is given) is appended to `system`. The answer is
//! not validated.
//!
//! Responses: text blocks join into `content`, `tool_use` blocks become `tool_calls`, thinking
//! becomes `reasoning_content`; `stop_reason` maps to `finish_reason`; usage counts cache reads and
//! writes as prompt tokens (`cached_tokens` = cache reads). Streams map event by event (§9.3), with
//! tools numbered from 0 and a final usage chunk with no choices.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use gateway_core::types::{
    ChatChunk, ChatRequest, ChatResponse, Choice, Content, ContentPart, Delta, FinishReason,
    FunctionCall, FunctionCallDelta, Message, ModelInfo, NativeRequest, ResponseFormat, Role,
    ToolCall, ToolCallDelta, ToolChoice, ToolChoiceMode, Usage,
};
use gateway_core::{
    Call, Credential, Passthrough, Provider, ProviderError, ProviderResponse, ProviderStream,
};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::classify::{classify, classify_stream_error};
use crate::headers::{parse_rfc3339, rate_limit_info};
use crate::http::{header_value, join_url, json_request, HttpClient};
use crate::openai::{accept_event_stream, push_traceparent, unsupported_credential};
use crate::signatures::SignatureStore;
use crate::skim::Skim;
use crate::sse::{SseEvent, SseStream};
use crate::stream::{decode_stream, StreamDecoder};

/// The `anthropic-version` header sent unless configured otherwise.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Settings of an Anthropic provider.
#[derive(Debug, Clone)]
pub struct AnthropicConfig {
    /// The host root, `https://api.anthropic.com`.
    pub base_url: String,
    /// Extra headers (`anthropic-beta`, or an `anthropic-version` override).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The Anthropic Messages API.
#[derive(Debug, Clone)]
pub struct AnthropicProvider {
    messages_url: String,
    count_tokens_url: String,
    models_url: String,
    headers: Arc<[(HeaderName, HeaderValue)]>,
    client: HttpClient,
    /// Thinking blocks that preceded each `tool_use`, for OpenAI-format clients, which have no
    /// place for them ([`messages_body_with`]).
    thinking: Arc<SignatureStore>,
}

impl AnthropicProvider {
    /// A provider for `config`, sending through `client`.
    pub fn new(config: AnthropicConfig, client: HttpClient) -> Self {
        let mut headers = vec![(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(ANTHROPIC_VERSION),
        )];
        headers.extend(config.headers);
        let base = crate::http::without_version(&config.base_url, &["v1"]);
        AnthropicProvider {
            messages_url: join_url(base, "/v1/messages"),
            count_tokens_url: join_url(base, "/v1/messages/count_tokens"),
            models_url: join_url(base, "/v1/models?limit=1000"),
            headers: headers.into(),
            client,
            thinking: Arc::new(SignatureStore::new()),
        }
    }

    fn request_headers(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, ProviderError> {
        let mut headers = self.headers.to_vec();
        if let Some(native) = native(call, request) {
            merge_betas(&mut headers, native)?;
        }
        match call.credential.as_ref() {
            Credential::ApiKey(key) => {
                let key = key.expose();
                if key.starts_with("Bearer ") {
                    headers.push((AUTHORIZATION, header_value(key, true)?));
                } else if !key.is_empty() {
                    headers.push((
                        HeaderName::from_static("x-api-key"),
                        header_value(key, true)?,
                    ));
                }
            }
            Credential::None => {}
            other => return Err(unsupported_credential("anthropic", other)),
        }
        push_traceparent(&mut headers, call)?;
        Ok(headers)
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
    fn kind(&self) -> &str {
        "anthropic"
    }

    fn supports(&self, _model: &str, request: &ChatRequest) -> Result<(), ProviderError> {
        crate::one_answer_only("anthropic", request)
    }

    async fn chat(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderResponse<ChatResponse>, ProviderError> {
        let body = upstream_body(call, request, false, &self.thinking)?;
        let req = json_request(
            Method::POST,
            &self.messages_url,
            &self.request_headers(call, request)?,
            body,
        )?;
        let resp = self.client.fetch(req, call.timeout, classify).await?;
        // A client that takes the answer as it came keeps its thinking blocks itself.
        let passthrough = call.passthrough == Passthrough::AnthropicMessages;
        let remember = (!passthrough).then_some(&*self.thinking);
        let mut body = parse_message_with(resp.body(), remember)?;
        if passthrough {
            body.raw = Some(resp.body().clone());
        }
        Ok(ProviderResponse {
            body,
            rate_limit: rate_limit_info(resp.headers()),
        })
    }

    async fn chat_stream(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderStream, ProviderError> {
        let body = upstream_body(call, request, true, &self.thinking)?;
        let mut req = json_request(
            Method::POST,
            &self.messages_url,
            &self.request_headers(call, request)?,
            body,
        )?;
        accept_event_stream(&mut req);
        let resp = self.client.open_stream(req, call.timeout, classify).await?;
        let rate_limit = rate_limit_info(resp.headers());
        let passthrough = call.passthrough == Passthrough::AnthropicMessages;
        let events = SseStream::new(resp.into_body()).idle_timeout(call.timeout);
        let events = if passthrough {
            events.named_runs()
        } else {
            events
        };
        Ok(ProviderStream {
            chunks: decode_stream(
                events,
                MessageStreamDecoder::new()
                    .passthrough(passthrough)
                    .remember_thinking((!passthrough).then(|| Arc::clone(&self.thinking))),
            ),
            rate_limit,
        })
    }

    async fn count_tokens(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<Option<u64>, ProviderError> {
        let body = match native(call, request) {
            Some(native) => native_body(&native.body, &call.model, false)?,
            None => encode(&count_tokens_body(request, &call.model, &self.thinking))?,
        };
        let req = json_request(
            Method::POST,
            &self.count_tokens_url,
            &self.request_headers(call, request)?,
            body,
        )?;
        let resp = self.client.fetch(req, call.timeout, classify).await?;
        parse_count(resp.body()).map(Some)
    }

    async fn list_models(&self, call: &Call) -> Result<Vec<ModelInfo>, ProviderError> {
        let req = json_request(
            Method::GET,
            &self.models_url,
            &self.request_headers(call, &ChatRequest::default())?,
            Bytes::new(),
        )?;
        let resp = self.client.fetch(req, call.timeout, classify).await?;
        parse_models(resp.body())
    }
}

/// `POST /v1/messages/count_tokens`'s answer.
#[derive(Deserialize)]
struct CountedTokens {
    input_tokens: u64,
}

/// The `input_tokens` of a `count_tokens` answer.
pub(crate) fn parse_count(body: &[u8]) -> Result<u64, ProviderError> {
    serde_json::from_slice::<CountedTokens>(body)
        .map(|c| c.input_tokens)
        .map_err(|e| ProviderError::Protocol(format!("invalid token count: {e}")))
}

/// Members of a Messages body that `count_tokens` takes (it refuses the others).
const COUNTED_MEMBERS: [&str; 6] = [
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
];

/// The `count_tokens` body for `request`: its Messages body without the members that only
/// shape the answer.
pub fn count_tokens_body(request: &ChatRequest, model: &str, thinking: &SignatureStore) -> Value {
    let mut body = messages_body_with(request, model, false, Some(thinking));
    if let Value::Object(o) = &mut body {
        o.retain(|k, _| COUNTED_MEMBERS.contains(&k.as_str()));
    }
    body
}

/// The client's own Messages request, when it wrote one and takes answers as they come.
pub(crate) fn native<'r>(call: &Call, request: &'r ChatRequest) -> Option<&'r NativeRequest> {
    request
        .native
        .as_ref()
        .filter(|_| call.passthrough == Passthrough::AnthropicMessages)
}

/// The body sent upstream: the client's own ([`native`]), else one encoded from the canonical
/// fields.
fn upstream_body(
    call: &Call,
    request: &ChatRequest,
    stream: bool,
    thinking: &SignatureStore,
) -> Result<Bytes, ProviderError> {
    match native(call, request) {
        Some(native) => native_body(&native.body, &call.model, stream),
        None => encode(&messages_body_with(
            request,
            &call.model,
            stream,
            Some(thinking),
        )),
    }
}

/// The beta features a client's `anthropic-beta` headers name (comma-separated, each header).
pub(crate) fn client_betas(native: &NativeRequest) -> impl Iterator<Item = &str> {
    native
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("anthropic-beta"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|b| !b.is_empty())
}

/// Adds the client's `anthropic-beta` features to `headers`, after those the provider is
/// configured with, each once.
fn merge_betas(
    headers: &mut Vec<(HeaderName, HeaderValue)>,
    native: &NativeRequest,
) -> Result<(), ProviderError> {
    let name = HeaderName::from_static("anthropic-beta");
    let mut betas: Vec<String> = Vec::new();
    let configured = headers
        .iter()
        .filter(|(n, _)| *n == name)
        .filter_map(|(_, v)| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|b| !b.is_empty());
    for beta in configured.chain(client_betas(native)) {
        if !betas.iter().any(|b| b == beta) {
            betas.push(beta.to_owned());
        }
    }
    if betas.is_empty() {
        return Ok(());
    }
    headers.retain(|(n, _)| *n != name);
    headers.push((name, header_value(&betas.join(","), false)?));
    Ok(())
}

/// Members of a client's Messages body that the gateway reads itself and the API does not take
/// (it refuses unknown members).
const GATEWAY_MEMBERS: [&[u8]; 1] = [b"fallbacks"];

/// A client's own Messages body for the upstream: `model` set to the upstream model id, `stream`
/// set as this call streams, the gateway's own members ([`GATEWAY_MEMBERS`]) left out, and every
/// other member as the client wrote it, byte for byte (cache breakpoints, thinking blocks and
/// their signatures, server tools, members this gateway has never heard of).
///
/// The top level is skimmed, so the members' values are not parsed again; a body the skim
/// refuses (a key spelled with escapes) is parsed and written again instead. The body must be
/// one JSON object.
pub fn native_body(body: &[u8], model: &str, stream: bool) -> Result<Bytes, ProviderError> {
    let mut lead = b"\"model\":".to_vec();
    serde_json::to_writer(&mut lead, model)
        .map_err(|e| ProviderError::Protocol(format!("encoding the request: {e}")))?;
    rewrite_native(body, &lead, stream)
}

/// [`native_body`] with `lead` (the text of one or more members) in place of the model.
/// `model`, `stream`, `anthropic_version` and the gateway's own members are left out of the
/// client's.
pub(crate) fn rewrite_native(
    body: &[u8],
    lead: &[u8],
    stream: bool,
) -> Result<Bytes, ProviderError> {
    rewrite_native_without(body, lead, stream, &[])
}

/// [`rewrite_native`], leaving out the client's `also` members too (the lead writes them).
pub(crate) fn rewrite_native_without(
    body: &[u8],
    lead: &[u8],
    stream: bool,
    also: &[&[u8]],
) -> Result<Bytes, ProviderError> {
    let skip = |key: &[u8]| {
        matches!(key, b"model" | b"stream" | b"anthropic_version")
            || GATEWAY_MEMBERS.contains(&key)
            || also.contains(&key)
    };
    let mut out = Vec::with_capacity(body.len() + lead.len() + 16);
    out.push(b'{');
    out.extend_from_slice(lead);
    let mut sk = Skim::new(body);
    let skimmed = sk
        .object(|sk, key| {
            let value = sk.span()?;
            if !skip(key) {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(key);
                out.extend_from_slice(b"\":");
                out.extend_from_slice(value);
            }
            Some(())
        })
        .filter(|()| sk.at_end());
    if skimmed.is_none() {
        let mut v: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| ProviderError::Protocol(format!("the client's body: {e}")))?;
        v.retain(|k, _| !skip(k.as_bytes()));
        out.truncate(1 + lead.len());
        for (k, value) in &v {
            out.push(b',');
            serde_json::to_writer(&mut out, k)
                .and_then(|()| {
                    out.push(b':');
                    serde_json::to_writer(&mut out, value)
                })
                .map_err(|e| ProviderError::Protocol(format!("encoding the request: {e}")))?;
        }
    }
    if stream {
        out.extend_from_slice(b",\"stream\":true");
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

fn encode(v: &Value) -> Result<Bytes, ProviderError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ProviderError::Protocol(format!("encoding the request: {e}")))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// Requests

/// The output limit used when the caller gives none: 8192 for Claude 3.5 and later, else 4096.
pub fn default_max_tokens(model: &str) -> u32 {
    const LARGER: [&str; 6] = [
        "claude-3-5",
        "claude-3-7",
        "claude-sonnet-4",
        "claude-opus-4",
        "claude-haiku-4",
        "claude-4",
    ];
    if LARGER.iter().any(|p| model.contains(p)) {
        8192
    } else {
        4096
    }
}

/// The thinking budget of an OpenAI client's `reasoning_effort` for Claude. OpenAI's output
/// limits count reasoning tokens: a client's limit holds the thinking too (three quarters of it
/// at most), and a limit too small for Anthropic's least budget (1,024) leaves thinking off
/// rather than raising what the client pays for.
pub(crate) fn effort_budget(request: &ChatRequest) -> Option<u32> {
    let budget = thinking_budget(request.reasoning_effort.as_deref()?)?;
    let budget = match request.output_limit() {
        Some(limit) => budget.min(limit - limit / 4),
        None => budget,
    };
    (budget >= 1024).then_some(budget)
}

fn thinking_budget(effort: &str) -> Option<u32> {
    match effort {
        "minimal" | "low" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16384),
        _ => None,
    }
}

/// `response_format` for an API without a JSON mode (the Messages API, Bedrock's Converse): an
/// instruction for the system prompt.
pub(crate) fn json_instruction(format: Option<&ResponseFormat>) -> Option<String> {
    match format? {
        ResponseFormat::JsonObject => {
            Some("Respond with a single valid JSON object and nothing else.".into())
        }
        ResponseFormat::JsonSchema { json_schema } => {
            let mut s = String::from("Respond with a single valid JSON object and nothing else.");
            if let Some(schema) = &json_schema.schema {
                s.push_str(" It must match this JSON schema: ");
                s.push_str(&schema.to_string());
            }
            Some(s)
        }
        ResponseFormat::Text => None,
    }
}

/// The Messages API body for `request`, with `model` as the upstream model id.
pub fn messages_body(request: &ChatRequest, model: &str, stream: bool) -> Value {
    messages_body_with(request, model, stream, None)
}

/// [`messages_body`], and with thinking on, an assistant turn whose tool calls `thinking` knows
/// starts with the thinking blocks that preceded them when the model made them: the API refuses
/// a tool-use turn without them when thinking is on, and an OpenAI-format client has no place to
/// keep them.
pub fn messages_body_with(
    request: &ChatRequest,
    model: &str,
    stream: bool,
    thinking_blocks: Option<&SignatureStore>,
) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), model.into());

    // System: every system/developer message, joined.
    let mut system: Vec<String> = request
        .messages
        .iter()
        .filter(|m| matches!(m.role, Role::System | Role::Developer))
        .map(Message::content_text)
        .filter(|t| !t.is_empty())
        .collect();
    system.extend(json_instruction(request.response_format.as_ref()));

    let mut max_tokens = request
        .output_limit()
        .unwrap_or_else(|| default_max_tokens(model));
    let thinking = request.extra.get("thinking").cloned().or_else(|| {
        // An Anthropic client's own budget, when its body is not sent as written, else an
        // OpenAI client's effort.
        let budget = request.thinking_budget.or_else(|| effort_budget(request))?;
        Some(json!({"type": "enabled", "budget_tokens": budget}))
    });
    let thinking_on = thinking
        .as_ref()
        .is_some_and(|t| t.get("type").and_then(Value::as_str) == Some("enabled"));
    if let Some(budget) = thinking
        .as_ref()
        .and_then(|t| t.get("budget_tokens"))
        .and_then(Value::as_u64)
    {
        let budget = u32::try_from(budget).unwrap_or(u32::MAX);
        if max_tokens <= budget {
            max_tokens = budget.saturating_add(max_tokens);
        }
    }
    body.insert("max_tokens".into(), max_tokens.into());
    body.insert(
        "messages".into(),
        Value::Array(convert_messages(
            &request.messages,
            thinking_blocks.filter(|_| thinking_on),
        )),
    );
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n\n").into());
    }
    if let Some(stop) = &request.stop {
        let stops: Vec<String> = stop
            .to_vec()
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        if !stops.is_empty() {
            body.insert("stop_sequences".into(), stops.into());
        }
    }
    if !thinking_on {
        if let Some(t) = request.temperature {
            body.insert("temperature".into(), t.clamp(0.0, 1.0).into());
        }
        if let Some(k) = request.top_k {
            body.insert("top_k".into(), k.into());
        }
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), p.into());
    }
    if let Some(user) = &request.user {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }
    if let Some(t) = thinking {
        body.insert("thinking".into(), t);
    }
    if let Some(tools) = request
        .tools
        .as_ref()
        .filter(|t| t.iter().any(gateway_core::types::Tool::is_function))
    {
        let tools: Vec<Value> = tools
            .iter()
            .filter(|t| t.is_function())
            .map(|t| {
                let mut o = Map::new();
                o.insert("name".into(), t.function.name.clone().into());
                if let Some(d) = &t.function.description {
                    o.insert("description".into(), d.clone().into());
                }
                o.insert(
                    "input_schema".into(),
                    t.function
                        .parameters
                        .clone()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                );
                Value::Object(o)
            })
            .collect();
        body.insert("tools".into(), tools.into());
        let mut choice = match &request.tool_choice {
            Some(ToolChoice::Mode(ToolChoiceMode::Auto)) => Some(json!({"type": "auto"})),
            Some(ToolChoice::Mode(ToolChoiceMode::Required)) => Some(json!({"type": "any"})),
            Some(ToolChoice::Mode(ToolChoiceMode::None)) => Some(json!({"type": "none"})),
            Some(ToolChoice::Named(n)) => Some(json!({"type": "tool", "name": n.function.name})),
            // OpenAI-only forms (`allowed_tools`...): the model decides.
            Some(ToolChoice::Other(_)) | None => None,
        };
        if request.parallel_tool_calls == Some(false) {
            let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
            if c["type"] != "none" {
                c["disable_parallel_tool_use"] = true.into();
            }
        }
        if let Some(c) = choice {
            body.insert("tool_choice".into(), c);
        }
    }
    if stream {
        body.insert("stream".into(), true.into());
    }
    Value::Object(body)
}

fn convert_messages(messages: &[Message], thinking: Option<&SignatureStore>) -> Vec<Value> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in messages {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => continue,
            Role::User => ("user", content_blocks(m.content.as_ref())),
            Role::Assistant => {
                let mut blocks = content_blocks(m.content.as_ref());
                let earlier = thinking.and_then(|t| {
                    let known = m.tool_calls.iter().flatten().find_map(|c| t.get(&c.id))?;
                    serde_json::from_str::<Vec<Value>>(&known).ok()
                });
                if let Some(earlier) = earlier {
                    blocks.splice(0..0, earlier);
                }
                for call in m.tool_calls.iter().flatten() {
                    let input = serde_json::from_str::<Value>(&call.function.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.function.name,
                        "input": input,
                    }));
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                let content = match &m.content {
                    Some(Content::Parts(parts)) => {
                        let blocks = content_blocks(Some(&Content::Parts(parts.clone())));
                        Value::Array(blocks)
                    }
                    other => Value::String(other.as_ref().map(Content::text).unwrap_or_default()),
                };
                let mut result = json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                    "content": content,
                });
                if m.tool_error {
                    result["is_error"] = Value::Bool(true);
                }
                match turns.last_mut() {
                    Some(("user", blocks)) => {
                        // Results go before any user text already in the turn.
                        let at = blocks
                            .iter()
                            .position(|b| b["type"] != "tool_result")
                            .unwrap_or(blocks.len());
                        blocks.insert(at, result);
                    }
                    _ => turns.push(("user", vec![result])),
                }
                continue;
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    turns
        .into_iter()
        .map(|(role, mut blocks)| {
            let content = if blocks.len() == 1 && blocks[0]["type"] == "text" {
                blocks.swap_remove(0)["text"].take()
            } else {
                Value::Array(blocks)
            };
            json!({"role": role, "content": content})
        })
        .collect()
}

fn content_blocks(content: Option<&Content>) -> Vec<Value> {
    match content {
        None => Vec::new(),
        Some(Content::Text(t)) if t.is_empty() => Vec::new(),
        Some(Content::Text(t)) => vec![json!({"type": "text", "text": t})],
        Some(Content::Parts(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                ContentPart::Text { text } if text.is_empty() => None,
                ContentPart::Text { text } => Some(json!({"type": "text", "text": text})),
                ContentPart::ImageUrl { image_url } => Some(match image_url.as_data() {
                    Some((mime, data)) => json!({
                        "type": "image",
                        "source": {"type": "base64", "media_type": mime, "data": data},
                    }),
                    None => json!({
                        "type": "image",
                        "source": {"type": "url", "url": image_url.url},
                    }),
                }),
                // Anthropic-native blocks (documents...) pass through; other dialects' parts
                // (audio, files) have no equivalent.
                ContentPart::Other(v) => match v.get("type").and_then(Value::as_str) {
                    Some("image" | "document" | "search_result") => Some(v.clone()),
                    _ => None,
                },
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Maps Anthropic's `stop_reason`.
pub fn map_stop_reason(s: &str) -> FinishReason {
    match s {
        "max_tokens" => FinishReason::Length,
        "model_context_window_exceeded" => FinishReason::ContextWindow,
        "stop_sequence" => FinishReason::StopSequence,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Input tokens including cache reads and writes.
    fn prompt(&self) -> u64 {
        self.input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    RedactedThinking,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

fn arguments_of(input: &Value) -> String {
    match input {
        Value::Null => "{}".into(),
        v => v.to_string(),
    }
}

/// Parses a Messages API response into the canonical form.
pub fn parse_message(body: &[u8]) -> Result<ChatResponse, ProviderError> {
    parse_message_with(body, None)
}

/// [`parse_message`], remembering in `thinking` the thinking blocks that preceded each
/// `tool_use` (see [`messages_body_with`]).
pub fn parse_message_with(
    body: &[u8],
    thinking: Option<&SignatureStore>,
) -> Result<ChatResponse, ProviderError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Protocol(format!("invalid message: {e}")))?;
    if v.get("type").and_then(Value::as_str) == Some("error") {
        return Err(classify_stream_error(&v));
    }
    if let (Some(store), Some(blocks)) = (thinking, v.get("content").and_then(Value::as_array)) {
        let mut before = Vec::new();
        for b in blocks {
            match b.get("type").and_then(Value::as_str) {
                Some("thinking" | "redacted_thinking") => before.push(b),
                Some("tool_use") if !before.is_empty() => {
                    if let Some(id) = b.get("id").and_then(Value::as_str) {
                        let earlier: Vec<Value> = before.iter().map(|b| (*b).clone()).collect();
                        store.insert(id, &Value::from(earlier).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let wire: WireMessage = serde_json::from_value(v)
        .map_err(|e| ProviderError::Protocol(format!("invalid message: {e}")))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for block in wire.content {
        match block {
            WireBlock::Text { text: t } => text.push_str(&t),
            WireBlock::ToolUse { id, name, input } => calls.push(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall {
                    name,
                    arguments: arguments_of(&input),
                },
            }),
            WireBlock::Thinking { thinking } => reasoning.push_str(&thinking),
            WireBlock::RedactedThinking | WireBlock::Other => {}
        }
    }
    let u = wire.usage;
    let usage = Usage::new(
        u.prompt(),
        u.output_tokens.unwrap_or(0),
        u.cache_read_input_tokens.unwrap_or(0),
    );
    Ok(ChatResponse {
        id: wire.id,
        object: "chat.completion".into(),
        created: now_secs(),
        model: wire.model,
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: Role::Assistant,
                content: (!text.is_empty()).then_some(Content::Text(text)),
                name: None,
                tool_calls: (!calls.is_empty()).then_some(calls),
                tool_call_id: None,
                refusal: None,
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                audio: None,
                tool_error: false,
            },
            finish_reason: wire.stop_reason.as_deref().map(map_stop_reason),
            logprobs: None,
        }],
        usage: Some(usage),
        extra: Map::new(),
        raw: None,
    })
}

#[derive(Deserialize)]
struct WireModel {
    id: String,
    #[serde(default)]
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct WireModels {
    data: Vec<WireModel>,
}

/// Parses `GET /v1/models`.
pub fn parse_models(body: &[u8]) -> Result<Vec<ModelInfo>, ProviderError> {
    let wire: WireModels = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Protocol(format!("invalid models list: {e}")))?;
    Ok(wire
        .data
        .into_iter()
        .map(|m| ModelInfo {
            id: m.id,
            owned_by: "anthropic".into(),
            created: m
                .created_at
                .as_deref()
                .and_then(parse_rfc3339)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Streams

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        #[serde(default)]
        text: String,
    },
    InputJsonDelta {
        #[serde(default)]
        partial_json: String,
    },
    ThinkingDelta {
        #[serde(default)]
        thinking: String,
    },
    SignatureDelta {
        #[serde(default)]
        signature: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: WireBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: WireDelta,
    },
    ContentBlockStop,
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Ping,
    Error,
    #[serde(other)]
    Unknown,
}

/// The text of a `content_block_delta` event that is a text delta and nothing more, read with a
/// skim. Nearly every event of a streamed answer is one, and serde reads an internally tagged
/// enum by buffering the whole event first. `None` for anything else (other events, other or
/// repeated members), which serde then reads: when this returns a text, serde reads the same.
fn skim_text_delta(data: &[u8]) -> Option<String> {
    let quoted = skim_text_delta_span(data)?;
    let inner = quoted.get(1..quoted.len().checked_sub(1)?)?;
    if memchr::memchr(b'\\', inner).is_none() {
        return std::str::from_utf8(inner).ok().map(str::to_owned);
    }
    serde_json::from_slice(quoted).ok()
}

/// The text of a text-delta event as [`skim_text_delta`] finds it: the JSON string, quotes and
/// escapes included (its bytes are not checked to be UTF-8).
fn skim_text_delta_span(data: &[u8]) -> Option<&[u8]> {
    let mut sk = Skim::new(data);
    let (mut kind, mut index, mut text) = (false, false, None);
    sk.object(|sk, key| match key {
        b"type" if !kind => {
            kind = true;
            (sk.plain_str()? == "content_block_delta").then_some(())
        }
        b"index" if !index => {
            index = true;
            u32::try_from(sk.u64()?).ok().map(|_| ())
        }
        b"delta" if text.is_none() => {
            let (mut delta_kind, mut value) = (false, None);
            sk.object(|sk, key| match key {
                b"type" if !delta_kind => {
                    delta_kind = true;
                    (sk.plain_str()? == "text_delta").then_some(())
                }
                b"text" if value.is_none() => {
                    if sk.peek()? != b'"' {
                        return None;
                    }
                    value = Some(sk.span()?);
                    Some(())
                }
                _ => None,
            })?;
            text = value.filter(|_| delta_kind);
            text.map(|_| ())
        }
        _ => None,
    })?;
    if !(sk.at_end() && kind && index) {
        return None;
    }
    text
}

/// The `type` of an event's data, read with a skim (for an upstream that leaves out `event:`).
pub(crate) fn skim_type(data: &[u8]) -> Option<&str> {
    let mut sk = Skim::new(data);
    let mut kind = None;
    sk.object(|sk, key| {
        if key == b"type" && kind.is_none() {
            kind = Some(sk.plain_str()?);
            Some(())
        } else {
            sk.skip()
        }
    })?;
    kind
}

/// The SSE text of an event named `name` with `data`, as Anthropic writes it: `event:`, then
/// each line of the data after `data: `, then a blank line.
pub(crate) fn sse_text(name: &[u8], data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(name.len() + data.len() + 17);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name);
    out.extend_from_slice(b"\ndata: ");
    for (i, line) in data.split(|c| *c == b'\n').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\ndata: ");
        }
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The `message_stop` event, for a stream that ended after its `message_delta` without one.
const MESSAGE_STOP: &[u8] = b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

/// Decodes a Messages API event stream into canonical chunks (wire-formats §9.3).
#[derive(Debug, Default)]
pub struct MessageStreamDecoder {
    id: String,
    model: String,
    created: u64,
    usage: WireUsage,
    /// Content block index → tool index, for tool_use blocks.
    tools: Vec<(u32, u32)>,
    finished: bool,
    sent_usage: bool,
    /// Every event goes out as it came ([`Passthrough::AnthropicMessages`]).
    passthrough: bool,
    /// Where the thinking blocks before a `tool_use` are remembered, if anywhere.
    remember: Option<Arc<SignatureStore>>,
    /// The thinking blocks of this answer so far (only kept with `remember`).
    thinking: Vec<Value>,
}

impl MessageStreamDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        MessageStreamDecoder {
            created: now_secs(),
            ..MessageStreamDecoder::default()
        }
    }

    /// With `on`, each event becomes one chunk whose [`ChatChunk::raw`] is the event's SSE text,
    /// with only its usage and finish reason decoded: for a caller that writes the Anthropic
    /// format, so that thinking blocks, signatures, citations and server tool blocks reach it as
    /// the upstream sent them. Every event is still read (and a malformed one is still an
    /// error). Only a decoder in pass-through takes runs of events
    /// ([`SseStream::named_runs`](crate::sse::SseStream::named_runs)): it hands each run on as
    /// one chunk.
    pub fn passthrough(mut self, on: bool) -> Self {
        self.passthrough = on;
        self
    }

    /// Remembers in `store`, if any, the thinking blocks (text and signature) that preceded each
    /// `tool_use`, for the next turn of a client that cannot send them back
    /// ([`messages_body_with`]).
    pub fn remember_thinking(mut self, store: Option<Arc<SignatureStore>>) -> Self {
        self.remember = store;
        self
    }

    fn chunk(&self, delta: Delta, finish: Option<FinishReason>) -> ChatChunk {
        ChatChunk::new(self.id.clone(), self.model.clone(), self.created).with_delta(delta, finish)
    }

    fn tool_index(&self, block: u32) -> Option<u32> {
        self.tools
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, t)| *t)
    }

    fn usage_chunk(&mut self, out: &mut VecDeque<ChatChunk>) {
        if self.sent_usage {
            return;
        }
        self.sent_usage = true;
        let u = self.usage;
        let mut c = ChatChunk::new(self.id.clone(), self.model.clone(), self.created);
        c.usage = Some(Usage::new(
            u.prompt(),
            u.output_tokens.unwrap_or(0),
            u.cache_read_input_tokens.unwrap_or(0),
        ));
        out.push_back(c);
    }
}

impl StreamDecoder<SseEvent> for MessageStreamDecoder {
    fn event(
        &mut self,
        ev: SseEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, ProviderError> {
        let data = ev.data.trim_ascii();
        if data.is_empty() {
            return Ok(false);
        }
        if self.passthrough {
            return self.pass(&ev, out);
        }
        if let Some(text) = skim_text_delta(data) {
            out.push_back(self.chunk(
                Delta {
                    content: Some(text),
                    ..Delta::default()
                },
                None,
            ));
            return Ok(false);
        }
        self.decode(data, out)
    }

    fn end(&mut self, out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError> {
        if self.finished {
            let at = out.len();
            self.usage_chunk(out);
            if self.passthrough {
                // The client gets the `message_stop` the upstream left out.
                if let Some(c) = out.get_mut(at) {
                    c.raw = Some(Bytes::from_static(MESSAGE_STOP));
                }
            }
            Ok(())
        } else {
            Err(ProviderError::Connect(
                "upstream closed the stream before message_stop".into(),
            ))
        }
    }
}

impl MessageStreamDecoder {
    /// One event in pass-through, or a run of them: one chunk carrying their text.
    fn pass(
        &mut self,
        ev: &SseEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, ProviderError> {
        if ev.run {
            return self.pass_run(&ev.data, out);
        }
        let data = ev.data.trim_ascii();
        if std::str::from_utf8(data).is_err() {
            return Err(ProviderError::Protocol(
                "invalid stream event: not UTF-8".into(),
            ));
        }
        let mut chunk = ChatChunk::new(String::new(), String::new(), self.created);
        let done = self.absorb(data, out, &mut chunk)?;
        let name = match ev.event.as_deref().filter(|e| !e.is_empty()) {
            Some(name) => name,
            None => skim_type(data)
                .ok_or_else(|| ProviderError::Protocol("stream event without a type".into()))?
                .as_bytes(),
        };
        chunk.raw = Some(sse_text(name, data));
        out.push_back(chunk);
        Ok(done)
    }

    /// A run of named events ([`SseParser::with_named_runs`](crate::sse::SseParser)): each read
    /// as [`absorb`](Self::absorb) reads it, and the text of those up to the stream's end or an
    /// error handed on as one chunk (then the error).
    fn pass_run(
        &mut self,
        text: &Bytes,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, ProviderError> {
        const DATA: usize = b"data: ".len();
        if std::str::from_utf8(text).is_err() {
            return Err(ProviderError::Protocol(
                "invalid stream event: not UTF-8".into(),
            ));
        }
        let mut chunk = ChatChunk::new(String::new(), String::new(), self.created);
        let (mut pos, mut result) = (0, Ok(false));
        while pos < text.len() {
            // `event: <name>\n`, `data: <value>\n`, `\n`, as the parser guarantees.
            let line = |from: usize| memchr::memchr(b'\n', text.get(from..)?).map(|i| from + i);
            let span = line(pos)
                .map(|name_end| name_end + 1 + DATA)
                .and_then(|start| Some((start, line(start)?)));
            let Some((data_start, data_end)) = span else {
                result = Err(ProviderError::Protocol("malformed run of events".into()));
                break;
            };
            match self.absorb(text[data_start..data_end].trim_ascii(), out, &mut chunk) {
                Ok(done) => {
                    pos = data_end + 2;
                    if done {
                        result = Ok(true);
                        break;
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if pos > 0 {
            chunk.raw = Some(text.slice(..pos.min(text.len())));
            out.push_back(chunk);
        }
        result
    }

    /// Reads one event for pass-through: decoded as usual (a text delta only checked), and what
    /// that gives folded into `into`: its usage, and the choices that finish.
    fn absorb(
        &mut self,
        data: &[u8],
        out: &mut VecDeque<ChatChunk>,
        into: &mut ChatChunk,
    ) -> Result<bool, ProviderError> {
        let at = out.len();
        let done = match skim_text_delta_span(data) {
            Some(_) => Ok(false),
            None => self.decode(data, out),
        };
        for c in out.drain(at..) {
            if c.usage.is_some() {
                into.usage = c.usage;
            }
            into.choices
                .extend(c.choices.into_iter().filter(|c| c.finish_reason.is_some()));
        }
        done
    }

    /// One event, fully decoded.
    fn decode(
        &mut self,
        data: &[u8],
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, ProviderError> {
        let parsed: WireEvent = serde_json::from_slice(data)
            .map_err(|e| ProviderError::Protocol(format!("invalid stream event: {e}")))?;
        match parsed {
            WireEvent::MessageStart { message } => {
                self.id = message.id;
                self.model = message.model;
                self.usage = message.usage;
                out.push_back(self.chunk(
                    Delta {
                        role: Some(Role::Assistant),
                        content: Some(String::new()),
                        ..Delta::default()
                    },
                    None,
                ));
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                WireBlock::RedactedThinking if self.remember.is_some() => {
                    let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
                    self.thinking.push(v["content_block"].clone());
                }
                WireBlock::Text { text } if !text.is_empty() => {
                    out.push_back(self.chunk(
                        Delta {
                            content: Some(text),
                            ..Delta::default()
                        },
                        None,
                    ));
                }
                WireBlock::ToolUse { id, name, input } => {
                    if let Some(store) =
                        self.remember.as_ref().filter(|_| !self.thinking.is_empty())
                    {
                        store.insert(&id, &Value::from(self.thinking.clone()).to_string());
                    }
                    let k = u32::try_from(self.tools.len()).unwrap_or(u32::MAX);
                    self.tools.push((index, k));
                    // The input normally streams as deltas; a non-empty one here is complete.
                    let arguments = match &input {
                        Value::Object(o) if !o.is_empty() => input.to_string(),
                        _ => String::new(),
                    };
                    out.push_back(self.chunk(
                        Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index: k,
                                id: Some(id),
                                kind: Some("function".into()),
                                function: Some(FunctionCallDelta {
                                    name: Some(name),
                                    arguments: Some(arguments),
                                }),
                            }]),
                            ..Delta::default()
                        },
                        None,
                    ));
                }
                WireBlock::Thinking { thinking } => {
                    if self.remember.is_some() {
                        self.thinking.push(
                            json!({"type": "thinking", "thinking": thinking, "signature": ""}),
                        );
                    }
                    if thinking.is_empty() {
                        return Ok(false);
                    }
                    out.push_back(self.chunk(
                        Delta {
                            reasoning_content: Some(thinking),
                            ..Delta::default()
                        },
                        None,
                    ));
                }
                _ => {}
            },
            WireEvent::ContentBlockDelta { index, delta } => match delta {
                WireDelta::TextDelta { text } => out.push_back(self.chunk(
                    Delta {
                        content: Some(text),
                        ..Delta::default()
                    },
                    None,
                )),
                WireDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                    let k = self.tool_index(index).ok_or_else(|| {
                        ProviderError::Protocol(format!(
                            "input_json_delta for block {index}, which is not a tool_use block"
                        ))
                    })?;
                    out.push_back(self.chunk(
                        Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index: k,
                                function: Some(FunctionCallDelta {
                                    name: None,
                                    arguments: Some(partial_json),
                                }),
                                ..ToolCallDelta::default()
                            }]),
                            ..Delta::default()
                        },
                        None,
                    ));
                }
                WireDelta::ThinkingDelta { thinking } => {
                    if let Some(Value::String(t)) =
                        self.thinking.last_mut().map(|b| &mut b["thinking"])
                    {
                        t.push_str(&thinking);
                    }
                    out.push_back(self.chunk(
                        Delta {
                            reasoning_content: Some(thinking),
                            ..Delta::default()
                        },
                        None,
                    ));
                }
                WireDelta::SignatureDelta { signature } => {
                    if let Some(b) = self.thinking.last_mut() {
                        b["signature"] = Value::from(signature);
                    }
                }
                _ => {}
            },
            WireEvent::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    // Output tokens are cumulative; newer servers repeat the input counts.
                    self.usage.output_tokens = u.output_tokens.or(self.usage.output_tokens);
                    self.usage.input_tokens = u.input_tokens.or(self.usage.input_tokens);
                    self.usage.cache_read_input_tokens = u
                        .cache_read_input_tokens
                        .or(self.usage.cache_read_input_tokens);
                    self.usage.cache_creation_input_tokens = u
                        .cache_creation_input_tokens
                        .or(self.usage.cache_creation_input_tokens);
                }
                let finish = delta
                    .stop_reason
                    .as_deref()
                    .map_or(FinishReason::Stop, map_stop_reason);
                self.finished = true;
                out.push_back(self.chunk(Delta::default(), Some(finish)));
            }
            WireEvent::MessageStop => {
                self.usage_chunk(out);
                return Ok(true);
            }
            WireEvent::Error => {
                let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
                return Err(classify_stream_error(&v));
            }
            WireEvent::ContentBlockStop | WireEvent::Ping | WireEvent::Unknown => {}
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits() {
        assert_eq!(default_max_tokens("claude-3-haiku-20240307"), 4096);
        assert_eq!(default_max_tokens("claude-3-5-sonnet-latest"), 8192);
        assert_eq!(default_max_tokens("claude-sonnet-4-5"), 8192);
    }

    /// Absurd counts from an upstream saturate rather than overflow.
    #[test]
    fn huge_usage_counts_saturate() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn",
            "usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":5,
                     "output_tokens":18446744073709551615}}"#;
        let r = parse_message(body).expect("parsed");
        let u = r.usage.expect("usage");
        assert_eq!(u.prompt_tokens, u64::MAX);
        assert_eq!(u.total_tokens, u64::MAX);
    }

    #[test]
    fn native_body_sets_the_model_and_stream_and_keeps_every_other_member_as_written() {
        let client = br#"{ "model" : "my-route", "max_tokens": 2048, "stream": false,
            "system": [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "fallbacks": ["oai/gpt-4o-mini"],
            "messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "x\n", "signature": "EqA=="}]}],
            "future_member": 1.50 }"#;
        let out = native_body(client, "claude-sonnet-4-5", true).expect("a body");
        assert_eq!(
            std::str::from_utf8(&out).expect("utf-8"),
            concat!(
                r#"{"model":"claude-sonnet-4-5","max_tokens":2048,"#,
                r#""system":[{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],"#,
                r#""thinking":{"type": "enabled", "budget_tokens": 1024},"#,
                r#""messages":[{"role": "assistant", "content": [{"type": "thinking", "thinking": "x\n", "signature": "EqA=="}]}],"#,
                r#""future_member":1.50,"stream":true}"#,
            )
        );
        let out = native_body(br#"{"model":"a","stream":true,"messages":[]}"#, "b", false)
            .expect("a body");
        assert_eq!(&out[..], br#"{"model":"b","messages":[]}"#);
    }

    #[test]
    fn reasoning_effort_thinks_within_the_clients_limit() {
        let body = |limit: Option<u32>| {
            let mut req: ChatRequest = serde_json::from_value(json!({
                "model": "m", "reasoning_effort": "high",
                "messages": [{"role": "user", "content": "hi"}]
            }))
            .expect("request");
            req.max_completion_tokens = limit;
            messages_body(&req, "claude-sonnet-4-5", false)
        };
        let b = body(Some(3000));
        assert_eq!(b["max_tokens"], 3000, "the client's limit is kept: {b}");
        assert_eq!(b["thinking"]["budget_tokens"], 2250, "{b}");
        let b = body(Some(1000));
        assert_eq!(b["max_tokens"], 1000);
        assert!(b.get("thinking").is_none(), "too small to think: {b}");
        let b = body(None);
        assert_eq!(b["thinking"]["budget_tokens"], 16384, "{b}");
        assert!(b["max_tokens"].as_u64().unwrap() > 16384, "{b}");
    }

    #[test]
    fn count_tokens_body_keeps_what_is_counted_only() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 4096, "temperature": 0.5, "stop": ["x"], "user": "u",
            "stream": true, "reasoning_effort": "low",
            "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "required"
        }))
        .expect("request");
        let body = count_tokens_body(&req, "claude-x", &SignatureStore::new());
        let mut keys: Vec<&str> = body
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "messages",
                "model",
                "system",
                "thinking",
                "tool_choice",
                "tools"
            ]
        );
        assert_eq!(body["model"], "claude-x");
    }

    #[test]
    fn client_betas_join_the_configured_ones_once_each() {
        let beta = HeaderName::from_static("anthropic-beta");
        let mut headers = vec![
            (
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(ANTHROPIC_VERSION),
            ),
            (
                beta.clone(),
                HeaderValue::from_static("prompt-caching-2024-07-31,a"),
            ),
        ];
        let native = NativeRequest {
            body: Bytes::new(),
            headers: vec![
                ("anthropic-beta".into(), "a, files-api-2025-04-14".into()),
                ("anthropic-beta".into(), "context-1m-2025-08-07".into()),
                ("x-other".into(), "not a beta".into()),
            ],
            api: gateway_core::types::NativeApi::AnthropicMessages,
        };
        merge_betas(&mut headers, &native).expect("merged");
        let betas: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| *n == beta)
            .map(|(_, v)| v.to_str().expect("text"))
            .collect();
        assert_eq!(
            betas,
            ["prompt-caching-2024-07-31,a,files-api-2025-04-14,context-1m-2025-08-07"]
        );
        assert_eq!(headers.len(), 2, "{headers:?}");

        // None asked, none configured: no header.
        let mut headers = Vec::new();
        merge_betas(&mut headers, &NativeRequest::default()).expect("merged");
        assert!(headers.is_empty());
    }

    #[test]
    fn native_body_with_escaped_keys_is_parsed_and_written_again() {
        // `mo\u0064el` is `model`: the skim refuses escaped keys, serde reads it, and it is
        // replaced like any other spelling.
        let out = native_body(
            br#"{"mo\u0064el":"a","max_tokens":5,"fallb\u0061cks":[],"x":"\u00e9"}"#,
            "b\"c",
            true,
        )
        .expect("a body");
        let v: Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(
            v,
            json!({"model": "b\"c", "max_tokens": 5, "x": "\u{e9}", "stream": true})
        );
        assert!(native_body(b"[1]", "m", false).is_err());
        assert!(native_body(b"{\"model\":", "m", false).is_err());
    }

    #[test]
    fn stop_reasons() {
        let got: Vec<FinishReason> = [
            "end_turn",
            "stop_sequence",
            "pause_turn",
            "max_tokens",
            "model_context_window_exceeded",
            "tool_use",
            "refusal",
        ]
        .iter()
        .map(|s| map_stop_reason(s))
        .collect();
        assert_eq!(
            got,
            [
                FinishReason::Stop,
                FinishReason::StopSequence,
                FinishReason::Stop,
                FinishReason::Length,
                FinishReason::ContextWindow,
                FinishReason::ToolCalls,
                FinishReason::ContentFilter
            ]
        );
    }
}

#[cfg(test)]
mod skim_text_delta_tests {
    use super::*;
    use proptest::prelude::*;

    /// What serde makes of an event: the text of a text delta, or nothing.
    fn by_serde(data: &str) -> Option<String> {
        match serde_json::from_str::<WireEvent>(data) {
            Ok(WireEvent::ContentBlockDelta {
                delta: WireDelta::TextDelta { text },
                ..
            }) => Some(text),
            _ => None,
        }
    }

    #[test]
    fn the_usual_text_delta_is_skimmed() {
        for (data, text) in [
            (
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
                "Hello",
            ),
            (
                r#"{ "delta" : { "text" : "a\"b\\c\u00e9\n" , "type" : "text_delta" } , "index" : 3 , "type" : "content_block_delta" }"#,
                "a\"b\\cé\n",
            ),
            (
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"🐢 é"}}"#,
                "🐢 é",
            ),
        ] {
            assert_eq!(
                skim_text_delta(data.as_bytes()).as_deref(),
                Some(text),
                "{data}"
            );
            assert_eq!(by_serde(data).as_deref(), Some(text), "{data}");
        }
    }

    #[test]
    fn anything_else_is_left_to_serde() {
        for data in [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","x":1}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}"#,
            r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"a"}}"#,
            r#"{"type":"content_block_delta","index":4294967296,"delta":{"type":"text_delta","text":"a"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"},"type":"x"}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}} x"#,
        ] {
            assert_eq!(skim_text_delta(data.as_bytes()), None, "{data}");
        }
    }

    fn event() -> impl Strategy<Value = String> {
        let text = crate::skim::json_text(8);
        let kind = prop_oneof![
            4 => Just(r#""content_block_delta""#.to_owned()),
            1 => Just(r#""content_block_start""#.to_owned()),
            1 => Just(r#""content_\u0062lock_delta""#.to_owned()),
            1 => Just("1".to_owned()),
        ];
        let index = prop_oneof![
            4 => Just("0".to_owned()),
            1 => Just("4294967296".to_owned()),
            1 => Just("-1".to_owned()),
            1 => Just(r#""2""#.to_owned()),
            1 => Just("1.5".to_owned()),
        ];
        let delta_kind = prop_oneof![
            4 => Just(r#""text_delta""#.to_owned()),
            1 => Just(r#""thinking_delta""#.to_owned()),
            1 => Just("null".to_owned()),
        ];
        let text_value =
            prop_oneof![4 => text.clone(), 1 => Just("null".to_owned()), 1 => Just("7".to_owned())];
        (
            kind,
            index,
            delta_kind,
            text_value,
            any::<bool>(),
            proptest::option::weighted(0.2, text),
            proptest::sample::select(vec!["", " ", "\n"]),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(kind, index, dk, tv, flip, extra, ws, drop)| {
                let delta_members = if flip {
                    vec![format!(r#""text":{tv}"#), format!(r#""type":{dk}"#)]
                } else {
                    vec![format!(r#""type":{dk}"#), format!(r#""text":{tv}"#)]
                };
                let mut members = vec![
                    format!(r#""type":{kind}"#),
                    format!(r#""index":{index}"#),
                    format!(r#""delta":{{{}}}"#, delta_members.join(",")),
                ];
                if let Some(extra) = extra {
                    // A repeated member: the same tag, or another value.
                    let again = if extra.len() % 2 == 0 {
                        r#""content_block_delta""#.to_owned()
                    } else {
                        extra
                    };
                    members.push(format!(r#""type":{again}"#));
                }
                if drop.index(8) == 0 {
                    members.remove(drop.index(members.len()));
                }
                format!("{{{ws}{}{ws}}}", members.join(&format!(",{ws}")))
            })
    }

    proptest! {
        /// A text the skim reads is the text serde reads.
        #[test]
        fn the_skim_never_disagrees_with_serde(data in event()) {
            if let Some(text) = skim_text_delta(data.as_bytes()) {
                prop_assert_eq!(Some(text), by_serde(&data), "{}", data);
            }
        }
    }
}

#[cfg(test)]
mod native_body_tests {
    use super::*;
    use proptest::prelude::*;

    /// A Messages-like object: any members, often the ones the rewrite replaces or drops.
    fn body() -> impl Strategy<Value = Map<String, Value>> {
        let key = prop_oneof![
            Just("model".to_owned()),
            Just("stream".to_owned()),
            Just("fallbacks".to_owned()),
            Just("anthropic_version".to_owned()),
            Just("messages".to_owned()),
            ".*",
        ];
        proptest::collection::btree_map(key, crate::skim::json_value(), 0..8)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        /// Whichever way the body is read (a skim, or serde for keys with escapes), the upstream
        /// gets the client's members but `model`, `stream`, `anthropic_version` and `fallbacks`,
        /// with the model and the stream flag as the call has them.
        #[test]
        fn the_upstream_gets_the_clients_members_and_the_calls_model(
            m in body(),
            pretty in any::<bool>(),
            stream in any::<bool>(),
            model in ".*",
        ) {
            let doc = if pretty {
                serde_json::to_vec_pretty(&m).expect("json")
            } else {
                serde_json::to_vec(&m).expect("json")
            };
            let out = native_body(&doc, &model, stream).expect("a body");
            let got: Map<String, Value> = serde_json::from_slice(&out).expect("JSON");
            // What the client's text says (numbers as serde reads them, both sides alike).
            let mut want: Map<String, Value> = serde_json::from_slice(&doc).expect("JSON");
            for k in ["model", "stream", "fallbacks", "anthropic_version"] {
                want.remove(k);
            }
            want.insert("model".into(), Value::from(model.clone()));
            if stream {
                want.insert("stream".into(), Value::Bool(true));
            }
            prop_assert_eq!(got, want);
        }
    }
}
