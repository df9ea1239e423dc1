//! OpenAI chat completions, embeddings and models, and every OpenAI-compatible upstream.
//!
//! The canonical types already are OpenAI's schema, so a request goes upstream almost as is: the
//! model becomes the upstream id, the gateway-only `fallbacks` field and outgoing
//! `reasoning_content` are dropped, and streams always ask for `stream_options.include_usage`.
//! Per-upstream quirks ([`Quirks`], wire-formats §7) are small edits of that body.
//!
//! Answers are parsed leniently (unknown fields ignored, unknown `finish_reason` values mapped,
//! tool-call `arguments` sent as objects stringified). Streams are decoded by [`ChunkDecoder`],
//! which tolerates Azure's `choices: []` first chunk, chunks without `delta`, comment lines, usage
//! before a trailing chunk (xAI) or in `x_groq.usage` (Groq), and in-band `{"error":..}` payloads,
//! and always ends a stream that reported usage with one usage chunk whose `choices` is empty.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use gateway_core::types::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Content, Delta, Embedding,
    EmbeddingRequest, EmbeddingResponse, FinishReason, FunctionCall, FunctionCallDelta, Message,
    ModelInfo, Role, ToolCall, ToolCallDelta, Usage,
};
use gateway_core::{
    Call, Credential, Passthrough, Provider, ProviderError, ProviderResponse, ProviderStream,
};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Response};
use hyper::body::Incoming;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::classify::{classify, classify_stream_error};
use crate::completions;
use crate::escape;
use crate::headers::rate_limit_info;
use crate::http::{
    bearer, header_value, join_url, json_request, read_body, HttpClient, DEFAULT_MAX_BODY,
};
use crate::responses;
use crate::skim::Skim;
use crate::sse::{SseEvent, SseStream};
use crate::stream::{decode_stream, response_to_chunks, StreamDecoder};

/// Small per-upstream differences from OpenAI's own API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Mistral: `tool_choice: "required"` is `"any"`, `seed` is `random_seed`, and tool-call ids must
    /// be 9 alphanumerics (other ids are mapped, deterministically, to such ids).
    pub mistral: bool,
    /// The upstream rejects `top_k` (OpenAI, Azure and a few others): drop it.
    pub drop_top_k: bool,
    /// The upstream gives one answer per request (Groq: `n` must be 1): a request for several
    /// is passed over to a target that can.
    pub one_answer: bool,
    /// OpenAI's reasoning models (`o1`, `o3`, `o4-mini`, `gpt-5`...; OpenAI and Azure): they
    /// refuse `max_tokens`, so a request's limit goes as `max_completion_tokens`, and an
    /// Anthropic client's thinking budget goes as `reasoning_effort`.
    pub reasoning_models: bool,
}

impl Quirks {
    /// The quirks of a provider kind.
    pub fn for_kind(kind: &str) -> Quirks {
        Quirks {
            mistral: kind == "mistral",
            drop_top_k: matches!(
                kind,
                "openai" | "azure" | "mistral" | "groq" | "deepseek" | "xai" | "cerebras"
            ),
            one_answer: kind == "groq",
            reasoning_models: matches!(kind, "openai" | "azure"),
        }
    }
}

/// Settings of an OpenAI-shaped provider.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// The provider kind (`openai`, `groq`, `vllm`...).
    pub kind: String,
    /// The base URL including the API version (`https://api.openai.com/v1`).
    pub base_url: String,
    /// Extra headers sent on every request (OpenRouter `HTTP-Referer`, `X-Title`...).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The upstream's quirks.
    pub quirks: Quirks,
}

/// An OpenAI-compatible upstream.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    kind: Arc<str>,
    chat_url: String,
    completions_url: String,
    responses_url: String,
    embeddings_url: String,
    models_url: String,
    /// The base URL, for the endpoints passed on ([`Provider::forward`]).
    base_url: String,
    headers: Arc<[(HeaderName, HeaderValue)]>,
    quirks: Quirks,
    client: HttpClient,
}

impl OpenAiProvider {
    /// A provider for `config`, sending through `client`.
    pub fn new(config: OpenAiConfig, client: HttpClient) -> Self {
        OpenAiProvider {
            chat_url: join_url(&config.base_url, "/chat/completions"),
            responses_url: join_url(&config.base_url, "/responses"),
            completions_url: join_url(&config.base_url, "/completions"),
            embeddings_url: join_url(&config.base_url, "/embeddings"),
            models_url: join_url(&config.base_url, "/models"),
            base_url: config.base_url.clone(),
            kind: config.kind.into(),
            headers: config.headers.into(),
            quirks: config.quirks,
            client,
        }
    }

    fn request_headers(
        &self,
        call: &Call,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, ProviderError> {
        let mut headers = self.headers.to_vec();
        match call.credential.as_ref() {
            Credential::ApiKey(key) if !key.is_empty() => {
                headers.push((AUTHORIZATION, bearer(key.expose())?))
            }
            Credential::ApiKey(_) | Credential::None => {}
            other => return Err(unsupported_credential(&self.kind, other)),
        }
        push_traceparent(&mut headers, call)?;
        Ok(headers)
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn kind(&self) -> &str {
        &self.kind
    }

    /// Everything, the Responses API included: a compatible server without it answers 404,
    /// and failover moves on.
    fn supports(&self, _model: &str, request: &ChatRequest) -> Result<(), ProviderError> {
        match request.n {
            Some(n) if n > 1 && self.quirks.one_answer => Err(ProviderError::Unsupported {
                message: format!(
                    "`n` = {n} asks for several answers; the {} API gives one per request",
                    self.kind
                ),
                param: Some("n".to_owned()),
            }),
            _ => Ok(()),
        }
    }

    async fn chat(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderResponse<ChatResponse>, ProviderError> {
        if request.is_responses() {
            let headers = self.request_headers(call)?;
            return responses::fetch(
                &self.client,
                &self.responses_url,
                &headers,
                request,
                &call.model,
                call.timeout,
            )
            .await;
        }
        if request.openai_only().is_some() {
            let (body, _) = completions::completions_body(request, &call.model, false)?;
            let req = json_request(
                Method::POST,
                &self.completions_url,
                &self.request_headers(call)?,
                body,
            )?;
            let resp = self.client.fetch(req, call.timeout, classify).await?;
            return Ok(ProviderResponse {
                body: completions::parse_completion(resp.body())?,
                rate_limit: rate_limit_info(resp.headers()),
            });
        }
        let body = chat_body(request, &call.model, false, self.quirks)?;
        let req = json_request(
            Method::POST,
            &self.chat_url,
            &self.request_headers(call)?,
            body,
        )?;
        let resp = self.client.fetch(req, call.timeout, classify).await?;
        Ok(ProviderResponse {
            body: if call.passthrough == Passthrough::OpenAiChat {
                pass_chat_response(resp.body())?
            } else {
                parse_chat_response(resp.body())?
            },
            rate_limit: rate_limit_info(resp.headers()),
        })
    }

    async fn chat_stream(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderStream, ProviderError> {
        if request.is_responses() {
            let headers = self.request_headers(call)?;
            return responses::open_stream(
                &self.client,
                &self.responses_url,
                &headers,
                request,
                &call.model,
                call.timeout,
            )
            .await;
        }
        if request.openai_only().is_some() {
            let (body, wants_usage) = completions::completions_body(request, &call.model, true)?;
            let mut req = json_request(
                Method::POST,
                &self.completions_url,
                &self.request_headers(call)?,
                body,
            )?;
            accept_event_stream(&mut req);
            let resp = self.client.open_stream(req, call.timeout, classify).await?;
            let rate_limit = rate_limit_info(resp.headers());
            let events = SseStream::new(resp.into_body()).idle_timeout(call.timeout);
            let decoder = completions::CompletionsStreamDecoder::new(wants_usage);
            return Ok(ProviderStream {
                chunks: decode_stream(events, decoder),
                rate_limit,
            });
        }
        let body = chat_body(request, &call.model, true, self.quirks)?;
        let mut req = json_request(
            Method::POST,
            &self.chat_url,
            &self.request_headers(call)?,
            body,
        )?;
        accept_event_stream(&mut req);
        open_chunk_stream(
            &self.client,
            req,
            call.timeout,
            call.passthrough == Passthrough::OpenAiChat,
        )
        .await
    }

    async fn embed(
        &self,
        call: &Call,
        request: &EmbeddingRequest,
    ) -> Result<ProviderResponse<EmbeddingResponse>, ProviderError> {
        let body = embeddings_body(request, &call.model)?;
        let req = json_request(
            Method::POST,
            &self.embeddings_url,
            &self.request_headers(call)?,
            body,
        )?;
        let resp = self.client.fetch(req, call.timeout, classify).await?;
        Ok(ProviderResponse {
            body: parse_embeddings(resp.body())?,
            rate_limit: rate_limit_info(resp.headers()),
        })
    }

    /// Moderations, image generation and speech: the client's body with `model` rewritten to
    /// `{base_url}{path}`, the answer as it came (a streamed one, read whole).
    async fn forward(
        &self,
        call: &Call,
        request: &gateway_core::ForwardRequest,
    ) -> Result<ProviderResponse<gateway_core::ForwardAnswer>, ProviderError> {
        let url = join_url(&self.base_url, request.path);
        let headers = self.request_headers(call)?;
        forward_json(
            &self.client,
            &url,
            &headers,
            &call.model,
            request,
            call.timeout,
        )
        .await
    }

    async fn stored_response(
        &self,
        call: &Call,
        op: &gateway_core::StoredResponseOp,
    ) -> Result<ProviderResponse<Bytes>, ProviderError> {
        let headers = self.request_headers(call)?;
        responses::stored(
            &self.client,
            &self.responses_url,
            &headers,
            op,
            call.timeout,
        )
        .await
    }

    async fn list_models(&self, call: &Call) -> Result<Vec<ModelInfo>, ProviderError> {
        let req = json_request(
            Method::GET,
            &self.models_url,
            &self.request_headers(call)?,
            Bytes::new(),
        )?;
        let resp = self.client.fetch(req, call.timeout, classify).await?;
        parse_models(resp.body())
    }
}

/// The error for a credential kind an adapter cannot use (a configuration mistake: the key is
/// taken out of rotation).
pub fn unsupported_credential(kind: &str, credential: &Credential) -> ProviderError {
    let what = match credential {
        Credential::None => "no credential",
        Credential::ApiKey(_) => "an API key",
        Credential::Aws { .. } => "AWS credentials",
        Credential::ServiceAccount(_) => "a service account",
    };
    ProviderError::Auth {
        status: 401,
        message: format!("provider kind `{kind}` cannot authenticate with {what}"),
    }
}

/// Adds `traceparent` when the call carries one.
pub fn push_traceparent(
    headers: &mut Vec<(HeaderName, HeaderValue)>,
    call: &Call,
) -> Result<(), ProviderError> {
    if let Some(tp) = &call.traceparent {
        headers.push((
            HeaderName::from_static("traceparent"),
            header_value(tp, false)?,
        ));
    }
    Ok(())
}

/// Asks for an event stream instead of JSON.
pub fn accept_event_stream(req: &mut http::Request<crate::http::Body>) {
    req.headers_mut().insert(
        http::header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
}

/// Sends a streaming chat request and decodes the OpenAI SSE answer. An upstream that answers with
/// JSON instead is accepted too (its response is replayed as chunks).
///
/// With `passthrough` (the caller honours [`ChatChunk::raw`]), chunks that need no normalisation
/// pass on as they came, decoded only as far as their finish reasons (see [`ChunkDecoder::raw`]).
pub async fn open_chunk_stream(
    client: &HttpClient,
    req: http::Request<crate::http::Body>,
    timeout: Duration,
    passthrough: bool,
) -> Result<ProviderStream, ProviderError> {
    let started = tokio::time::Instant::now();
    let resp = client.open_stream(req, timeout, classify).await?;
    let rate_limit = rate_limit_info(resp.headers());
    if is_json(&resp) {
        let left = timeout.saturating_sub(started.elapsed());
        let body = tokio::time::timeout(left, read_body(resp.into_body(), DEFAULT_MAX_BODY))
            .await
            .map_err(|_| ProviderError::Timeout)??;
        let parsed = parse_chat_response(&body)?;
        let chunks: Vec<Result<ChatChunk, ProviderError>> =
            response_to_chunks(&parsed).into_iter().map(Ok).collect();
        return Ok(ProviderStream {
            chunks: Box::pin(futures_util::stream::iter(chunks)),
            rate_limit,
        });
    }
    let events = SseStream::new(resp.into_body()).idle_timeout(timeout);
    // Runs only help a consumer that passes chunks on as they came.
    let events = if passthrough { events.runs() } else { events };
    Ok(ProviderStream {
        chunks: decode_stream(
            events,
            if passthrough {
                ChunkDecoder::raw()
            } else {
                ChunkDecoder::new()
            },
        ),
        rate_limit,
    })
}

/// A passed-on request ([`Provider::forward`]) to `url`: the client's JSON body with `model`
/// set to `model` (its `stream` kept), the answer as it came with its content type, and the
/// usage it reports, if any.
pub(crate) async fn forward_json(
    client: &HttpClient,
    url: &str,
    headers: &[(HeaderName, HeaderValue)],
    model: &str,
    request: &gateway_core::ForwardRequest,
    timeout: std::time::Duration,
) -> Result<ProviderResponse<gateway_core::ForwardAnswer>, ProviderError> {
    #[derive(Deserialize, Default)]
    struct Head {
        #[serde(default)]
        stream: Option<bool>,
    }
    let bad = |message: String| ProviderError::BadRequest {
        status: 400,
        message,
        param: None,
        code: None,
    };
    let req = if let Some(ct) = &request.content_type {
        // An upload: its `model` field set to the upstream's, every other byte as it came.
        let boundary = crate::multipart::boundary(ct)
            .ok_or_else(|| bad(format!("`{ct}` is not multipart/form-data with a boundary")))?;
        let range = crate::multipart::field(&request.body, boundary, "model")
            .ok_or_else(|| bad("model: field required".to_owned()))?;
        let body = crate::multipart::replace(&request.body, range, model);
        let mut headers = headers.to_vec();
        headers.push((
            CONTENT_TYPE,
            HeaderValue::from_str(ct).map_err(|e| bad(format!("content-type: {e}")))?,
        ));
        json_request(Method::POST, url, &headers, body)?
    } else {
        let stream = serde_json::from_slice::<Head>(&request.body)
            .map_err(|e| bad(format!("the request body: {e}")))?
            .stream
            .unwrap_or(false);
        let mut lead = b"\"model\":".to_vec();
        serde_json::to_writer(&mut lead, model)
            .map_err(|e| ProviderError::Protocol(format!("encoding the request: {e}")))?;
        let body = crate::anthropic::rewrite_native_without(&request.body, &lead, stream, &[])?;
        json_request(Method::POST, url, headers, body)?
    };
    let resp = client.fetch(req, timeout, classify).await?;
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let usage = content_type
        .starts_with("application/json")
        .then(|| forwarded_usage(resp.body()))
        .flatten();
    Ok(ProviderResponse {
        rate_limit: rate_limit_info(resp.headers()),
        body: gateway_core::ForwardAnswer {
            content_type,
            body: resp.body().clone(),
            usage,
        },
    })
}

/// The usage of a forwarded answer that reports one (image generation by token-priced models:
/// `{"input_tokens", "output_tokens"}`).
fn forwarded_usage(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Tokens {
        #[serde(default)]
        input_tokens: u64,
        #[serde(default)]
        output_tokens: u64,
    }
    #[derive(Deserialize)]
    struct Answer {
        usage: Option<Tokens>,
    }
    let t = serde_json::from_slice::<Answer>(body).ok()?.usage?;
    Some(Usage::new(t.input_tokens, t.output_tokens, 0))
}

fn is_json(resp: &Response<Incoming>) -> bool {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Whether `model` is one of OpenAI's reasoning models (by name: `o1`, `o3`, `o4-mini`,
/// `gpt-5`, not `gpt-5-chat`), which refuse `max_tokens` and take `reasoning_effort`.
pub fn is_reasoning_model(model: &str) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model);
    let o_series = m.len() >= 2
        && m.as_bytes()[0] == b'o'
        && m.as_bytes()[1].is_ascii_digit()
        && !m.starts_with("o2");
    o_series || (m.starts_with("gpt-5") && !m.contains("chat"))
}

/// The OpenAI request body for `request`, with `model` as the upstream model id.
pub fn chat_body(
    request: &ChatRequest,
    model: &str,
    stream: bool,
    quirks: Quirks,
) -> Result<Bytes, ProviderError> {
    // A reasoning model refuses `max_tokens` (an Anthropic client always sends one) and takes
    // a thinking budget as an effort. Rare enough that the request is copied to say so.
    let adjusted;
    let request = if quirks.reasoning_models
        && (request.max_tokens.is_some()
            || ((request.thinking_budget.is_some() || request.effort.is_some())
                && request.reasoning_effort.is_none()))
        && is_reasoning_model(model)
    {
        adjusted = ChatRequest {
            max_completion_tokens: request.max_completion_tokens.or(request.max_tokens),
            max_tokens: None,
            reasoning_effort: request.thinking_effort().map(str::to_owned),
            ..request.clone()
        };
        &adjusted
    } else {
        request
    };
    let encoded = if quirks.mistral
        || request
            .messages
            .iter()
            .any(|m| m.reasoning_content.is_some())
    {
        // Rare shapes are edited as a JSON value.
        serde_json::to_vec(&chat_body_value(request, model, stream, quirks)?)
    } else {
        // The common case is written straight from the canonical request.
        let mut out = Vec::with_capacity(512);
        write_direct_body(&mut out, request, model, stream, quirks.drop_top_k).map(|()| out)
    };
    encoded
        .map(Bytes::from)
        .map_err(|e| ProviderError::Protocol(format!("encoding the request: {e}")))
}

/// Request fields [`write_direct_body`] writes itself; `extra` entries with these names are
/// skipped.
const DIRECT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "user",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "stream",
    "stream_options",
    "fallbacks",
];

/// The OpenAI body of a request whose messages need no editing, written directly: the same JSON
/// as [`chat_body_value`] without building a `Value` tree. Message text, the bulk of a request,
/// is escaped by [`escape::write_str`] rather than `serde_json`'s byte-at-a-time loop.
fn write_direct_body(
    out: &mut Vec<u8>,
    r: &ChatRequest,
    model: &str,
    stream: bool,
    drop_top_k: bool,
) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"model\":");
    escape::write_str(out, model);
    out.extend_from_slice(b",\"messages\":[");
    for (i, m) in r.messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_message(out, m)?;
    }
    out.push(b']');
    macro_rules! opt {
        ($($name:literal => $field:ident),* $(,)?) => {$(
            if let Some(v) = &r.$field {
                out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes());
                serde_json::to_writer(&mut *out, v)?;
            }
        )*};
    }
    opt!(
        "max_tokens" => max_tokens,
        "max_completion_tokens" => max_completion_tokens,
        "temperature" => temperature,
        "top_p" => top_p,
        "n" => n,
        "stop" => stop,
        "presence_penalty" => presence_penalty,
        "frequency_penalty" => frequency_penalty,
        "seed" => seed,
        "user" => user,
        "tools" => tools,
        "tool_choice" => tool_choice,
        "parallel_tool_calls" => parallel_tool_calls,
        "response_format" => response_format,
        "reasoning_effort" => reasoning_effort,
    );
    if !drop_top_k {
        opt!("top_k" => top_k);
    }
    for (k, v) in &r.extra {
        if !DIRECT_FIELDS.contains(&k.as_str()) {
            out.push(b',');
            escape::write_str(out, k);
            out.push(b':');
            serde_json::to_writer(&mut *out, v)?;
        }
    }
    if stream {
        out.extend_from_slice(b",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
    }
    out.push(b'}');
    Ok(())
}

/// One message: a plain text message by hand, anything else by its `Serialize`.
fn write_message(out: &mut Vec<u8>, m: &Message) -> serde_json::Result<()> {
    // Every field is named, so a field added to `Message` fails to compile here rather than
    // being dropped from the fast path.
    let Message {
        role,
        content: Some(Content::Text(text)),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        refusal: None,
        reasoning_content: None,
        audio: None,
        // Not an OpenAI field: the text says it.
        tool_error: _,
    } = m
    else {
        return serde_json::to_writer(&mut *out, m);
    };
    out.extend_from_slice(b"{\"role\":");
    serde_json::to_writer(&mut *out, role)?;
    out.extend_from_slice(b",\"content\":");
    escape::write_str(out, text);
    out.push(b'}');
    Ok(())
}

/// [`chat_body`] as a JSON value (for tests and adapters that edit it further).
pub fn chat_body_value(
    request: &ChatRequest,
    model: &str,
    stream: bool,
    quirks: Quirks,
) -> Result<Value, ProviderError> {
    let mut body = serde_json::to_value(request)
        .map_err(|e| ProviderError::Protocol(format!("encoding the request: {e}")))?;
    let Some(obj) = body.as_object_mut() else {
        return Err(ProviderError::Protocol("request is not an object".into()));
    };
    obj.insert("model".into(), Value::String(model.to_owned()));
    obj.remove("fallbacks");
    if stream {
        obj.insert("stream".into(), Value::Bool(true));
        obj.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
    } else {
        obj.remove("stream");
        obj.remove("stream_options");
    }
    if quirks.drop_top_k {
        obj.remove("top_k");
    }
    if let Some(Value::Array(messages)) = obj.get_mut("messages") {
        for m in messages.iter_mut() {
            if let Some(m) = m.as_object_mut() {
                m.remove("reasoning_content");
                if quirks.mistral {
                    mistral_message_ids(m);
                }
            }
        }
    }
    if quirks.mistral {
        if obj.get("tool_choice").and_then(Value::as_str) == Some("required") {
            obj.insert("tool_choice".into(), Value::String("any".into()));
        }
        if let Some(seed) = obj.remove("seed") {
            obj.insert("random_seed".into(), seed);
        }
        if let Some(limit) = obj.remove("max_completion_tokens") {
            obj.entry("max_tokens").or_insert(limit);
        }
        // Mistral answers 422 to a field it does not know (`extra_forbidden`), among them
        // OpenAI's `stream_options`, `user`, `logprobs`, `logit_bias`: its stream carries usage
        // in the last chunk without being asked.
        obj.retain(|field, _| MISTRAL_FIELDS.contains(&field.as_str()));
    }
    Ok(body)
}

/// The fields of Mistral's chat completion request.
const MISTRAL_FIELDS: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "stream",
    "stop",
    "random_seed",
    "response_format",
    "tools",
    "tool_choice",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "prediction",
    "parallel_tool_calls",
    "prompt_mode",
    "safe_prompt",
];

fn mistral_message_ids(m: &mut Map<String, Value>) {
    // Mistral takes `name` on tool messages only; elsewhere it is an unknown field (422).
    if m.get("role").and_then(Value::as_str) != Some("tool") {
        m.remove("name");
    }
    if let Some(Value::String(id)) = m.get_mut("tool_call_id") {
        *id = mistral_tool_id(id);
    }
    if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
        for c in calls {
            if let Some(Value::String(id)) = c.get_mut("id") {
                *id = mistral_tool_id(id);
            }
        }
    }
}

/// Mistral accepts only 9-alphanumeric tool-call ids: keep such ids, map others deterministically
/// (so a call and its result keep matching).
pub fn mistral_tool_id(id: &str) -> String {
    if id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return id.to_owned();
    }
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut h = crate::fnv1a(id.as_bytes());
    (0..9)
        .map(|_| {
            let c = ALPHABET[(h % 62) as usize] as char;
            h /= 62;
            c
        })
        .collect()
}

/// The embeddings request body; floats are always asked for (the server encodes base64 itself).
pub fn embeddings_body(request: &EmbeddingRequest, model: &str) -> Result<Bytes, ProviderError> {
    let mut body = serde_json::json!({
        "model": model,
        "input": request.input,
        "encoding_format": "float",
    });
    if let Some(d) = request.dimensions {
        body["dimensions"] = d.into();
    }
    if let Some(u) = &request.user {
        body["user"] = u.as_str().into();
    }
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| ProviderError::Protocol(format!("encoding the request: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Maps any provider's stop reason to the canonical one. `None` for an empty value; unknown
/// values count as a normal stop.
pub fn map_finish_reason(s: &str) -> Option<FinishReason> {
    // The usual spellings without lowercasing a copy.
    match s {
        "stop" => return Some(FinishReason::Stop),
        "length" => return Some(FinishReason::Length),
        "tool_calls" => return Some(FinishReason::ToolCalls),
        _ => {}
    }
    Some(match s.to_ascii_lowercase().as_str() {
        "" | "null" => return None,
        "length" | "max_tokens" => FinishReason::Length,
        "model_context_window_exceeded" => FinishReason::ContextWindow,
        "tool_calls" | "tool_use" | "tool_call" => FinishReason::ToolCalls,
        "function_call" => FinishReason::FunctionCall,
        "content_filter" | "refusal" | "safety" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    })
}

/// A string field that may be anything else, which then counts as absent; borrowed from the
/// input when it has no escapes.
struct LenientStr<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for LenientStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v))))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

fn lenient_finish<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FinishReason>, D::Error> {
    Ok(LenientStr::deserialize(d)?
        .0
        .and_then(|s| map_finish_reason(&s)))
}

fn lenient_role<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Role>, D::Error> {
    Ok(match LenientStr::deserialize(d)?.0.as_deref() {
        Some("assistant" | "model") => Some(Role::Assistant),
        Some("system") => Some(Role::System),
        Some("developer") => Some(Role::Developer),
        Some("user") => Some(Role::User),
        Some("tool") => Some(Role::Tool),
        _ => None,
    })
}

fn arguments_text(v: Option<Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<gateway_core::types::PromptTokensDetails>,
    #[serde(default)]
    completion_tokens_details: Option<gateway_core::types::CompletionTokensDetails>,
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

impl WireUsage {
    /// The usage object at the cursor (consumed), read by the skimmer, when every field it knows
    /// is a plain count (or a null detail), none repeats and the keys have no escapes; `None`
    /// leaves the object to serde, which then reads it (or refuses it) as before. A usage with
    /// its details cost about 5 k instructions through serde.
    fn skim_at(sk: &mut Skim<'_>) -> Option<WireUsage> {
        let mut w = WireUsage::default();
        let mut seen = 0u8;
        let mut once = |bit: u8| {
            let first = seen & bit == 0;
            seen |= bit;
            first.then_some(())
        };
        sk.object(|sk, key| {
            match key {
                b"prompt_tokens" => {
                    once(1)?;
                    w.prompt_tokens = sk.u64()?;
                }
                b"completion_tokens" => {
                    once(2)?;
                    w.completion_tokens = sk.u64()?;
                }
                b"total_tokens" => {
                    once(4)?;
                    w.total_tokens = sk.u64()?;
                }
                b"prompt_tokens_details" => {
                    once(8)?;
                    w.prompt_tokens_details =
                        skim_detail(sk, b"cached_tokens")?.map(|cached_tokens| {
                            gateway_core::types::PromptTokensDetails { cached_tokens }
                        });
                }
                b"completion_tokens_details" => {
                    once(16)?;
                    w.completion_tokens_details =
                        skim_detail(sk, b"reasoning_tokens")?.map(|reasoning_tokens| {
                            gateway_core::types::CompletionTokensDetails { reasoning_tokens }
                        });
                }
                b"prompt_cache_hit_tokens" => {
                    once(32)?;
                    w.prompt_cache_hit_tokens = if sk.null() { None } else { Some(sk.u64()?) };
                }
                _ => sk.skip()?,
            }
            Some(())
        })?;
        Some(w)
    }

    fn into_usage(self) -> Usage {
        let mut u = Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens,
            prompt_tokens_details: self.prompt_tokens_details,
            completion_tokens_details: self.completion_tokens_details,
        };
        if u.total_tokens == 0 {
            u.total_tokens = u.prompt_tokens.saturating_add(u.completion_tokens);
        }
        if u.prompt_tokens_details.is_none() {
            if let Some(hit) = self.prompt_cache_hit_tokens.filter(|h| *h > 0) {
                u.prompt_tokens_details =
                    Some(gateway_core::types::PromptTokensDetails { cached_tokens: hit });
            }
        }
        u
    }
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default, deserialize_with = "lenient_role")]
    role: Option<Role>,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<Value>,
    #[serde(default)]
    audio: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default, deserialize_with = "lenient_finish")]
    finish_reason: Option<FinishReason>,
    #[serde(default)]
    logprobs: Option<Value>,
}

#[derive(Default)]
struct WireResponse {
    id: String,
    created: u64,
    model: String,
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
    error: Option<Value>,
    extra: Map<String, Value>,
}

// Hand-written: one pass, unknown fields into `extra` (serde's `flatten` would buffer the whole
// body first, on every response).
impl<'de> Deserialize<'de> for WireResponse {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = WireResponse;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a chat completion object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<WireResponse, A::Error> {
                let mut w = WireResponse::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "id" => w.id = map.next_value::<Option<String>>()?.unwrap_or_default(),
                        "created" => w.created = map.next_value::<Option<u64>>()?.unwrap_or(0),
                        "model" => {
                            w.model = map.next_value::<Option<String>>()?.unwrap_or_default()
                        }
                        "choices" => {
                            w.choices = map
                                .next_value::<Option<Vec<WireChoice>>>()?
                                .unwrap_or_default()
                        }
                        "usage" => w.usage = map.next_value()?,
                        "error" => w.error = map.next_value()?,
                        _ => {
                            let v = map.next_value()?;
                            w.extra.insert(key.into_owned(), v);
                        }
                    }
                }
                Ok(w)
            }
        }
        d.deserialize_map(V)
    }
}

/// The top-level members of an answer or chunk that [`pass_chat_response`] and
/// [`ChunkDecoder::raw`] read while skimming it ([`Skim`]); `choices` is read by each of them.
#[derive(Default)]
struct Light<'a> {
    /// The stream's identity is known already: `id`, `model` and `created` are skipped.
    skip_identity: bool,
    id: Option<&'a str>,
    /// Raw bytes (compared, never shown).
    object: Option<&'a [u8]>,
    created: Option<u64>,
    model: Option<&'a str>,
    /// The `usage` value's bytes, when it is not null.
    usage: Option<&'a [u8]>,
}

impl<'a> Light<'a> {
    /// Reads one top-level member other than `choices`; `None` refuses the document for the
    /// pass-through (an error, or Groq's usage, or a field of an unexpected type).
    fn member(&mut self, sk: &mut Skim<'a>, key: &[u8]) -> Option<()> {
        match key {
            b"id" | b"model" | b"created" if self.skip_identity => sk.skip()?,
            b"id" => self.id = Some(sk.plain_str()?),
            b"object" => self.object = Some(sk.string()?.0),
            b"created" => self.created = Some(sk.u64()?),
            b"model" => self.model = Some(sk.plain_str()?),
            b"usage" => {
                if !sk.null() {
                    self.usage = Some(sk.span()?);
                }
            }
            b"error" => {
                if !sk.null() {
                    return None;
                }
            }
            b"x_groq" => {
                sk.object(|sk, key| {
                    if key == b"usage" && !sk.null() {
                        return None;
                    }
                    sk.skip()
                })?;
            }
            _ => sk.skip()?,
        }
        Some(())
    }
}

/// A details object of a usage: `Some(None)` for null, `Some(Some(n))` for an object whose
/// `field` is `n` (0 when absent; other members skipped), `None` for anything else.
fn skim_detail(sk: &mut Skim<'_>, field: &[u8]) -> Option<Option<u64>> {
    if sk.null() {
        return Some(None);
    }
    let (mut n, mut seen) = (0, false);
    sk.object(|sk, key| {
        if key == field {
            if seen {
                return None;
            }
            seen = true;
            n = sk.u64()?;
            Some(())
        } else {
            sk.skip()
        }
    })?;
    Some(Some(n))
}

/// A `finish_reason`: null, or one the OpenAI format defines as it spells it (`None` otherwise).
fn skim_finish(sk: &mut Skim<'_>) -> Option<Option<FinishReason>> {
    if sk.null() {
        return Some(None);
    }
    standard_finish(sk.plain_str()?).map(Some)
}

/// One choice of an answer (text in `message`) or chunk (text in `delta`): its index, its finish
/// reason and whether the text member was an object; `None` when anything in it refuses the
/// pass-through.
/// The members of a stream chunk for [`ChunkDecoder::pass_raw`], from the start (`resume` false)
/// or from the value of `choices`: top-level ones into `light`, each choice's index and finish
/// reason into `decoded`, its string-valued texts into `spans`. Returns where the first `choices`
/// value began, if there was one.
fn chunk_members<'a>(
    sk: &mut Skim<'a>,
    resume: bool,
    light: &mut Light<'a>,
    decoded: &mut Vec<ChunkChoice>,
    spans: &mut TextSpans,
) -> Option<Option<usize>> {
    let mut choices_at = None;
    let member = |sk: &mut Skim<'a>, key: &'a [u8]| -> Option<()> {
        if key != b"choices" {
            return light.member(sk, key);
        }
        choices_at.get_or_insert(sk.pos());
        if sk.null() {
            return Some(());
        }
        sk.array(|sk| {
            let (index, finish_reason, has_delta) = skim_choice(sk, b"delta", spans)?;
            // A choice without `delta` (Azure's content-filter annotations) goes through the
            // full decode, which writes `"delta": {}`: SDKs read `choices[0].delta` unguarded.
            if !has_delta {
                return None;
            }
            decoded.push(ChunkChoice {
                index,
                delta: Delta::default(),
                finish_reason,
            });
            Some(())
        })
    };
    if resume {
        sk.object_from(b"choices", member)?;
    } else {
        sk.object(member)?;
    }
    Some(choices_at)
}

/// The string-valued text members (`content`, `refusal`, `reasoning_content`) a skim crossed:
/// how many, and the span of the last one (from its opening quote to past its closing one).
#[derive(Debug, Default, Clone, Copy)]
struct TextSpans {
    count: u32,
    last: (usize, usize),
}

impl TextSpans {
    /// The span of the only string-valued text member, if there was exactly one.
    fn only(&self) -> Option<(usize, usize)> {
        (self.count == 1).then_some(self.last)
    }
}

fn skim_choice(
    sk: &mut Skim<'_>,
    text: &[u8],
    spans: &mut TextSpans,
) -> Option<(u32, Option<FinishReason>, bool)> {
    let (mut index, mut finish, mut present) = (0, None, false);
    sk.object(|sk, key| match key {
        b"index" => {
            index = u32::try_from(sk.u64()?).ok()?;
            Some(())
        }
        b"finish_reason" => {
            finish = skim_finish(sk)?;
            Some(())
        }
        k if k == text => {
            present = sk.peek()? == b'{';
            skim_text_message(sk, spans)
        }
        _ => sk.skip(),
    })?;
    Some((index, finish, present))
}

/// A message or delta of assistant text only: any other member (tool calls, a `reasoning`
/// object, audio...) refuses it.
fn skim_text_message(sk: &mut Skim<'_>, spans: &mut TextSpans) -> Option<()> {
    if sk.null() {
        return Some(());
    }
    sk.object(|sk, key| match key {
        b"role" => {
            if sk.null() || sk.plain_str()? == "assistant" {
                Some(())
            } else {
                None
            }
        }
        b"content" | b"refusal" | b"reasoning_content" => {
            let string = sk.peek()? == b'"';
            let start = sk.pos();
            sk.skip()?;
            if string {
                spans.count += 1;
                spans.last = (start, sk.pos());
            }
            Some(())
        }
        b"annotations" => sk.skip(),
        _ => None,
    })
}

/// A finish reason the OpenAI format defines, as it is spelled there (`None` for any other).
fn standard_finish(s: &str) -> Option<FinishReason> {
    match s {
        "stop" => Some(FinishReason::Stop),
        "length" => Some(FinishReason::Length),
        "tool_calls" => Some(FinishReason::ToolCalls),
        "content_filter" => Some(FinishReason::ContentFilter),
        "function_call" => Some(FinishReason::FunctionCall),
        _ => None,
    }
}

/// [`parse_chat_response`] for a caller that honours [`ChatResponse::raw`]: an answer of
/// assistant text with standard finish reasons and no error passes as it came (`raw` set, the
/// decoded fields partial as documented there); any other answer is decoded fully.
pub fn pass_chat_response(body: &Bytes) -> Result<ChatResponse, ProviderError> {
    match light_response(body) {
        Some(r) => Ok(r),
        None => parse_chat_response(body),
    }
}

fn light_response(body: &Bytes) -> Option<ChatResponse> {
    std::str::from_utf8(body).ok()?;
    let mut light = Light::default();
    let mut choices: Vec<Choice> = Vec::new();
    let mut usage = None;
    let mut sk = Skim::new(body);
    sk.object(|sk, key| {
        match key {
            // Read in place when it is plain; otherwise `Light` keeps its bytes for serde. A
            // second usage leaves the answer to the full parse.
            b"usage" => {
                if !sk.null() {
                    if usage.is_some() || light.usage.is_some() {
                        return None;
                    }
                    let mut probe = sk.clone();
                    match WireUsage::skim_at(&mut probe) {
                        Some(u) => {
                            *sk = probe;
                            usage = Some(u);
                        }
                        None => light.usage = Some(sk.span()?),
                    }
                }
            }
            b"choices" => sk.array(|sk| {
                let (index, finish_reason, has_message) =
                    skim_choice(sk, b"message", &mut TextSpans::default())?;
                let c = Choice {
                    index,
                    message: Message {
                        role: Role::Assistant,
                        content: None,
                        name: None,
                        tool_calls: None,
                        tool_call_id: None,
                        refusal: None,
                        reasoning_content: None,
                        audio: None,
                        tool_error: false,
                    },
                    finish_reason,
                    logprobs: None,
                };
                has_message.then(|| choices.push(c))
            })?,
            _ => light.member(sk, key)?,
        }
        Some(())
    })?;
    if !sk.at_end() || light.object != Some(&b"chat.completion"[..]) || choices.is_empty() {
        return None;
    }
    let id = light.id.filter(|i| !i.is_empty())?;
    let model = light.model.filter(|m| !m.is_empty())?;
    let usage = match (usage, light.usage) {
        (Some(u), _) => Some(u.into_usage()),
        (None, Some(raw)) => Some(serde_json::from_slice::<WireUsage>(raw).ok()?.into_usage()),
        (None, None) => None,
    };
    Some(ChatResponse {
        id: id.to_owned(),
        object: "chat.completion".into(),
        created: light.created.unwrap_or(0),
        model: model.to_owned(),
        choices,
        usage,
        extra: Map::new(),
        raw: Some(body.clone()),
    })
}

/// Parses an OpenAI chat completion (leniently). A 200 whose body is an error payload is
/// classified like an in-band stream error.
pub fn parse_chat_response(body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Protocol(format!("invalid chat completion: {e}")))?;
    if wire.error.as_ref().is_some_and(|e| !e.is_null())
        || wire.extra.get("object").and_then(Value::as_str) == Some("error")
    {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        return Err(classify_stream_error(&v));
    }
    if wire.choices.is_empty() {
        return Err(ProviderError::Protocol(
            "chat completion without choices".into(),
        ));
    }
    let mut extra = wire.extra;
    extra.remove("object");
    let choices = wire
        .choices
        .into_iter()
        .map(|c| {
            let m = c.message.unwrap_or(WireMessage {
                role: None,
                content: None,
                tool_calls: None,
                refusal: None,
                reasoning_content: None,
                reasoning: None,
                audio: None,
            });
            let tool_calls = m.tool_calls.filter(|t| !t.is_empty()).map(|calls| {
                calls
                    .into_iter()
                    .map(|t| {
                        let f = t.function.unwrap_or(WireFunction {
                            name: None,
                            arguments: None,
                        });
                        ToolCall {
                            id: t.id.unwrap_or_default(),
                            kind: t.kind.unwrap_or_else(|| "function".into()),
                            function: FunctionCall {
                                name: f.name.unwrap_or_default(),
                                arguments: arguments_text(f.arguments).unwrap_or_default(),
                            },
                        }
                    })
                    .collect()
            });
            Choice {
                index: c.index,
                message: Message {
                    role: m.role.unwrap_or(Role::Assistant),
                    content: m.content,
                    name: None,
                    tool_calls,
                    tool_call_id: None,
                    refusal: m.refusal,
                    reasoning_content: m.reasoning_content.or_else(|| reasoning_text(m.reasoning)),
                    audio: m.audio,
                    tool_error: false,
                },
                finish_reason: c.finish_reason,
                logprobs: c.logprobs.filter(|l| !l.is_null()),
            }
        })
        .collect();
    Ok(ChatResponse {
        id: wire.id,
        object: "chat.completion".into(),
        created: wire.created,
        model: wire.model,
        choices,
        usage: wire.usage.map(WireUsage::into_usage),
        extra,
        raw: None,
    })
}

fn reasoning_text(v: Option<Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

#[derive(Deserialize)]
struct WireEmbedding {
    #[serde(default)]
    index: u32,
    embedding: Value,
}

#[derive(Deserialize)]
struct WireEmbeddings {
    data: Vec<WireEmbedding>,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Parses an embeddings response, decoding base64 vectors (little-endian f32) if a server sends
/// them despite `encoding_format: "float"`.
pub fn parse_embeddings(body: &[u8]) -> Result<EmbeddingResponse, ProviderError> {
    let wire: WireEmbeddings = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Protocol(format!("invalid embeddings response: {e}")))?;
    let data = wire
        .data
        .into_iter()
        .map(|e| {
            Ok(Embedding {
                object: "embedding".into(),
                index: e.index,
                embedding: decode_vector(e.embedding)?,
            })
        })
        .collect::<Result<Vec<_>, ProviderError>>()?;
    Ok(EmbeddingResponse {
        object: "list".into(),
        data,
        model: wire.model,
        usage: wire.usage.map(WireUsage::into_usage),
    })
}

/// A vector given as a JSON array of numbers or as base64 of little-endian f32.
pub fn decode_vector(v: Value) -> Result<Vec<f32>, ProviderError> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|x| {
                x.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| ProviderError::Protocol("embedding holds a non-number".into()))
            })
            .collect(),
        Value::String(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| ProviderError::Protocol(format!("invalid base64 embedding: {e}")))?;
            if bytes.len() % 4 != 0 {
                return Err(ProviderError::Protocol(
                    "base64 embedding is not a whole number of f32".into(),
                ));
            }
            Ok(bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        }
        _ => Err(ProviderError::Protocol(
            "embedding is neither array nor base64".into(),
        )),
    }
}

#[derive(Deserialize)]
struct WireModel {
    id: String,
    #[serde(default)]
    owned_by: Option<String>,
    #[serde(default)]
    created: Option<u64>,
}

#[derive(Deserialize)]
struct WireModels {
    data: Vec<WireModel>,
}

/// Parses `GET /models`.
pub fn parse_models(body: &[u8]) -> Result<Vec<ModelInfo>, ProviderError> {
    let wire: WireModels = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Protocol(format!("invalid models list: {e}")))?;
    Ok(wire
        .data
        .into_iter()
        .map(|m| ModelInfo {
            id: m.id,
            owned_by: m.owned_by.unwrap_or_default(),
            created: m.created.unwrap_or_default(),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Streams

#[derive(Deserialize)]
struct WireDelta {
    #[serde(default, deserialize_with = "lenient_role")]
    role: Option<Role>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<Value>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default, deserialize_with = "lenient_finish")]
    finish_reason: Option<FinishReason>,
}

#[derive(Deserialize)]
struct XGroq {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    id: String,
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Option<Vec<WireChunkChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    x_groq: Option<XGroq>,
    #[serde(default)]
    error: Option<Value>,
}

/// What [`ChunkDecoder::check_raw`] found an event to be.
enum Pass {
    /// No choices and nothing else to pass: the event is left out.
    Nothing,
    /// The template with another text: the template's choices.
    Template,
    /// These choices (index and finish reason).
    Choices(Vec<ChunkChoice>),
}

/// Decodes an OpenAI chat-completions SSE stream into canonical chunks.
///
/// Usage is held back and sent as the last chunk (`choices: []`), whatever chunk the upstream put
/// it on. The stream is complete at `[DONE]`; a body that ends after a `finish_reason` but without
/// `[DONE]` is accepted, one that ends before any `finish_reason` is an error.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    id: String,
    model: String,
    created: u64,
    usage: Option<Usage>,
    /// With [`ChunkDecoder::raw`]: the upstream's own usage chunk (no choices, no error) when the
    /// usage came in one, passed on as it came at the end.
    usage_raw: Option<bytes::Bytes>,
    finished: bool,
    /// Tool calls seen per choice, for servers that omit `index` on tool-call deltas.
    tool_calls_seen: u32,
    /// Pass chunks that need no normalisation on as they came ([`ChatChunk::raw`]).
    raw: bool,
    /// The bytes before the `choices` value of the last chunk passed on as it came (empty when
    /// there is none): a chunk that begins with them is skimmed from its choices on.
    prefix: Vec<u8>,
    /// The last chunk passed on as it came if it had one choice with one string-valued text
    /// (empty otherwise), that string's span in it, and its choices: a chunk that is the same but
    /// for that string is passed on with the same choices, the string alone checked.
    template: Vec<u8>,
    hole: (usize, usize),
    template_choices: Vec<ChunkChoice>,
}

impl ChunkDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        ChunkDecoder::default()
    }

    /// A decoder whose consumer honours [`ChatChunk::raw`]: a chunk with plain text deltas (role
    /// `assistant`, `content`, `refusal`, `reasoning_content`), a standard finish reason, no
    /// usage and no error passes on as it came, decoded only as far as each choice's index and
    /// finish reason; any other chunk is decoded fully, as [`ChunkDecoder::new`] does.
    pub fn raw() -> Self {
        ChunkDecoder {
            raw: true,
            ..ChunkDecoder::default()
        }
    }

    /// The raw path: `Some` when the chunk was handled here (passed on, or nothing to pass),
    /// `None` when it needs the full decode.
    fn pass_raw(
        &mut self,
        ev: &SseEvent,
        data: &[u8],
        out: &mut VecDeque<ChatChunk>,
    ) -> Option<()> {
        if ev.event.is_some() {
            return None;
        }
        match self.check_raw(data)? {
            Pass::Nothing => {}
            Pass::Template => {
                let choices = self.template_choices.clone();
                self.push_raw(ev, data, choices, out);
            }
            Pass::Choices(choices) => self.push_raw(ev, data, choices, out),
        }
        Some(())
    }

    /// Whether the data of an unnamed event passes on as it came (`None`: it needs the full
    /// decode), and with which choices. Learns the stream's identity, prefix and template.
    fn check_raw(&mut self, data: &[u8]) -> Option<Pass> {
        if self.same_but_text(data).is_some() {
            return Some(Pass::Template);
        }
        let mut light = Light {
            skip_identity: !self.id.is_empty() && !self.model.is_empty() && self.created != 0,
            ..Light::default()
        };
        let mut decoded: Vec<ChunkChoice> = Vec::with_capacity(1);
        let mut spans = TextSpans::default();
        // Chunks of one stream usually begin with the same bytes up to their choices (id,
        // object, created, model, fingerprint). When this one begins as the last passed one did,
        // those members would be read to the same effect: the skim resumes at the choices.
        let known = !self.prefix.is_empty() && data.starts_with(&self.prefix);
        let at = if known { self.prefix.len() } else { 0 };
        // A known prefix ends with an ASCII `:` and was valid UTF-8: the rest decides.
        std::str::from_utf8(&data[at..]).ok()?;
        let mut sk = Skim::resumed(data, at);
        let choices_at = chunk_members(&mut sk, known, &mut light, &mut decoded, &mut spans)?;
        if !sk.at_end() {
            return None;
        }
        if light.usage.is_some() || light.object == Some(&b"error"[..]) {
            return None;
        }
        if !known {
            self.prefix.clear();
            if let Some(at) = choices_at {
                self.prefix.extend_from_slice(&data[..at]);
            }
        }
        match spans.only().filter(|_| decoded.len() == 1) {
            Some(hole) => {
                self.template.clear();
                self.template.extend_from_slice(data);
                self.hole = hole;
                self.template_choices.clone_from(&decoded);
            }
            None => self.template.clear(),
        }
        if self.id.is_empty() {
            if let Some(id) = light.id.filter(|i| !i.is_empty()) {
                self.id = id.to_owned();
            }
        }
        if self.model.is_empty() {
            if let Some(m) = light.model.filter(|m| !m.is_empty()) {
                self.model = m.to_owned();
            }
        }
        if self.created == 0 {
            self.created = light.created.unwrap_or(0);
        }
        Some(if decoded.is_empty() {
            Pass::Nothing
        } else {
            Pass::Choices(decoded)
        })
    }

    /// A run of events ([`SseEvent::run`]): those that pass on as they came go out together,
    /// as one chunk whose `raw` is their part of the run (the choices it keeps are those with a
    /// finish reason); any other is handled on its own, as [`StreamDecoder::event`] does, in its
    /// place in the order.
    fn run(&mut self, ev: &SseEvent, out: &mut VecDeque<ChatChunk>) -> Result<bool, ProviderError> {
        const JOIN: usize = b"\n\ndata: ".len();
        let all = &ev.data[..];
        let mut passing: Option<(usize, usize)> = None;
        let mut finishing: Vec<ChunkChoice> = Vec::new();
        let mut start = 0;
        loop {
            let end = memchr::memchr(b'\n', &all[start..]).map_or(all.len(), |i| start + i);
            let data = &all[start..end];
            // An event with blanks around its data goes alone: it passes trimmed.
            let verdict = if self.raw && data.trim_ascii().len() == data.len() && data != b"[DONE]"
            {
                self.check_raw(data)
            } else {
                None
            };
            match verdict {
                // Nothing to pass: the event is left out, so the run is cut there.
                Some(Pass::Nothing) => self.push_run(ev, passing.take(), &mut finishing, out),
                Some(pass) => {
                    let choices = match &pass {
                        Pass::Choices(c) => c,
                        _ => &self.template_choices,
                    };
                    if choices.iter().any(|c| c.finish_reason.is_some()) {
                        self.finished = true;
                        finishing.extend(
                            choices
                                .iter()
                                .filter(|c| c.finish_reason.is_some())
                                .cloned(),
                        );
                    }
                    passing = Some((passing.map_or(start, |(s, _)| s), end));
                }
                None => {
                    self.push_run(ev, passing.take(), &mut finishing, out);
                    if self.single(ev, data.trim_ascii(), out)? {
                        return Ok(true);
                    }
                }
            }
            if end >= all.len() {
                break;
            }
            start = end + JOIN;
        }
        self.push_run(ev, passing, &mut finishing, out);
        Ok(false)
    }

    /// Queues the part `range` of a run to go out as it came.
    fn push_run(
        &mut self,
        ev: &SseEvent,
        range: Option<(usize, usize)>,
        finishing: &mut Vec<ChunkChoice>,
        out: &mut VecDeque<ChatChunk>,
    ) {
        if let Some((start, end)) = range {
            out.push_back(ChatChunk {
                id: String::new(),
                object: String::new(),
                created: self.created,
                model: String::new(),
                choices: std::mem::take(finishing),
                usage: None,
                raw: Some(ev.data.slice(start..end)),
            });
        }
    }

    /// Queues `data` (a slice of `ev`) to go out as it came, with the choices read from it.
    fn push_raw(
        &mut self,
        ev: &SseEvent,
        data: &[u8],
        choices: Vec<ChunkChoice>,
        out: &mut VecDeque<ChatChunk>,
    ) {
        if choices.iter().any(|c| c.finish_reason.is_some()) {
            self.finished = true;
        }
        out.push_back(ChatChunk {
            id: String::new(),
            object: String::new(),
            created: self.created,
            model: String::new(),
            choices,
            usage: None,
            raw: Some(ev.data.slice_ref(data)),
        });
    }

    /// `Some` if `data` is [`ChunkDecoder::template`] with another valid string in the hole (it
    /// then has the template's choices). Everything else a skim would read is the same bytes,
    /// already read to the same effect: the skim of a string does not depend on what it says.
    fn same_but_text(&self, data: &[u8]) -> Option<()> {
        if self.template.is_empty() {
            return None;
        }
        let (start, end) = self.hole;
        let tail = self.template.get(end..)?;
        let mid_end = data.len().checked_sub(tail.len())?;
        if mid_end < start + 2
            || !data.ends_with(tail)
            || !data.starts_with(self.template.get(..start)?)
        {
            return None;
        }
        let mid = &data[start..mid_end];
        // The hole begins and ends at an ASCII quote: this string decides the document's UTF-8.
        std::str::from_utf8(mid).ok()?;
        let mut sk = Skim::new(mid);
        sk.string()?;
        (sk.pos() == mid.len()).then_some(())
    }

    fn flush_usage(&mut self, out: &mut VecDeque<ChatChunk>) {
        if let Some(usage) = self.usage.take() {
            let mut c = ChatChunk::new(self.id.clone(), self.model.clone(), self.created);
            c.usage = Some(usage);
            c.raw = self.usage_raw.take();
            out.push_back(c);
        }
    }

    fn tool_delta(&mut self, t: WireToolCall) -> ToolCallDelta {
        let index = match t.index {
            Some(i) => {
                self.tool_calls_seen = self.tool_calls_seen.max(i + 1);
                i
            }
            None if t.id.is_some() => {
                self.tool_calls_seen += 1;
                self.tool_calls_seen - 1
            }
            None => self.tool_calls_seen.saturating_sub(1),
        };
        ToolCallDelta {
            index,
            id: t.id,
            kind: t.kind,
            function: t.function.map(|f| FunctionCallDelta {
                name: f.name,
                arguments: arguments_text(f.arguments),
            }),
        }
    }
}

impl ChunkDecoder {
    /// One event's (trimmed) data, `data` a slice of `ev.data`.
    fn single(
        &mut self,
        ev: &SseEvent,
        data: &[u8],
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, ProviderError> {
        if data.is_empty() {
            return Ok(false);
        }
        if data == b"[DONE]" {
            self.finished = true;
            self.flush_usage(out);
            return Ok(true);
        }
        if self.raw && self.pass_raw(ev, data, out).is_some() {
            return Ok(false);
        }
        let wire: WireChunk = serde_json::from_slice(data)
            .map_err(|e| ProviderError::Protocol(format!("invalid stream chunk: {e}")))?;
        if wire.error.as_ref().is_some_and(|e| !e.is_null())
            || wire.object.as_deref() == Some("error")
            || ev.event_name() == Some("error")
        {
            let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
            return Err(classify_stream_error(&v));
        }
        if self.id.is_empty() && !wire.id.is_empty() {
            self.id = wire.id;
        }
        if self.model.is_empty() && !wire.model.is_empty() {
            self.model = wire.model;
        }
        if self.created == 0 {
            self.created = wire.created;
        }
        let plain_usage = wire.usage.is_some()
            && wire.x_groq.is_none()
            && wire.choices.as_ref().is_some_and(Vec::is_empty);
        if let Some(u) = wire.usage.or_else(|| wire.x_groq.and_then(|x| x.usage)) {
            self.usage = Some(u.into_usage());
            // OpenAI's own usage chunk: its other members (`system_fingerprint`,
            // `service_tier`, the usage's details) reach a client of this format as they came.
            self.usage_raw = (self.raw && plain_usage).then(|| ev.data.slice_ref(data));
        }
        let choices = wire.choices.unwrap_or_default();
        if choices.is_empty() {
            return Ok(false);
        }
        let mut chunk = ChatChunk::new(self.id.clone(), self.model.clone(), self.created);
        chunk.choices.reserve(choices.len());
        for c in choices {
            if c.finish_reason.is_some() {
                self.finished = true;
            }
            let delta = match c.delta {
                Some(d) => Delta {
                    role: d.role,
                    content: d.content,
                    reasoning_content: d.reasoning_content.or_else(|| reasoning_text(d.reasoning)),
                    refusal: d.refusal,
                    tool_calls: d
                        .tool_calls
                        .map(|calls| calls.into_iter().map(|t| self.tool_delta(t)).collect()),
                },
                None => Delta::default(),
            };
            chunk.choices.push(ChunkChoice {
                index: c.index,
                delta,
                finish_reason: c.finish_reason,
            });
        }
        out.push_back(chunk);
        Ok(false)
    }
}

impl StreamDecoder<SseEvent> for ChunkDecoder {
    fn event(
        &mut self,
        ev: SseEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, ProviderError> {
        if ev.run {
            return self.run(&ev, out);
        }
        self.single(&ev, ev.data.trim_ascii(), out)
    }

    fn end(&mut self, out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError> {
        if self.finished {
            self.flush_usage(out);
            Ok(())
        } else {
            Err(ProviderError::Connect(
                "upstream closed the stream before it finished".into(),
            ))
        }
    }
}

#[cfg(test)]
mod usage_skim_tests {
    use super::*;
    use proptest::prelude::*;

    fn by_serde(raw: &str) -> Option<Usage> {
        serde_json::from_str::<WireUsage>(raw)
            .ok()
            .map(WireUsage::into_usage)
    }

    fn by_skim(raw: &str) -> Option<Usage> {
        let mut sk = Skim::new(raw.as_bytes());
        let w = WireUsage::skim_at(&mut sk)?;
        sk.at_end().then(|| w.into_usage())
    }

    #[test]
    fn an_openai_usage_is_skimmed_as_serde_reads_it() {
        let raw = r#"{"completion_tokens":50,"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":7,"rejected_prediction_tokens":0},"prompt_tokens":12,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":3},"total_tokens":62}"#;
        let u = by_skim(raw).expect("skimmed");
        assert_eq!(Some(u), by_serde(raw));
        assert_eq!(u.total_tokens, 62);
        assert_eq!(u.prompt_tokens_details.map(|d| d.cached_tokens), Some(3));
        assert_eq!(
            u.completion_tokens_details.map(|d| d.reasoning_tokens),
            Some(7)
        );
        let deepseek = r#"{"prompt_tokens":9,"completion_tokens":1,"prompt_cache_hit_tokens":4,"prompt_cache_miss_tokens":5}"#;
        assert_eq!(by_skim(deepseek), by_serde(deepseek));
        assert_eq!(by_skim(deepseek).map(|u| u.total_tokens), Some(10));
    }

    /// An upstream's absurd counts must not overflow (a panic in debug builds, a wrapped total in
    /// release): the total saturates.
    #[test]
    fn huge_counts_saturate_the_total() {
        let raw =
            r#"{"prompt_tokens":10492059081701312644,"completion_tokens":7954684992008238972}"#;
        let u = by_skim(raw).expect("skimmed");
        assert_eq!(Some(u), by_serde(raw));
        assert_eq!(u.total_tokens, u64::MAX);
    }

    #[test]
    fn unusual_usages_are_left_to_serde() {
        for raw in [
            r#"{"prompt_tokens":1.0}"#,
            r#"{"prompt_tokens":null}"#,
            r#"{"prompt_tokens":-1}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":2}}"#,
            r#"{"prompt_tokens_details":3}"#,
            r#"{"prompt_tok\u0065ns":3}"#,
            r#"{"prompt_tokens":99999999999999999999999}"#,
        ] {
            assert_eq!(by_skim(raw), None, "{raw}");
        }
    }

    fn member() -> impl Strategy<Value = (String, String)> {
        let key = prop_oneof![
            Just("prompt_tokens"),
            Just("completion_tokens"),
            Just("total_tokens"),
            Just("prompt_tokens_details"),
            Just("completion_tokens_details"),
            Just("prompt_cache_hit_tokens"),
            Just("cached_tokens"),
            Just("reasoning_tokens"),
            Just("audio_tokens"),
        ]
        .prop_map(str::to_owned);
        let leaf = prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            (0u64..100).prop_map(|n| n.to_string()),
            Just("null".to_owned()),
            Just("1.5".to_owned()),
            Just("-3".to_owned()),
            Just("\"7\"".to_owned()),
            Just("[]".to_owned()),
        ];
        let inner = proptest::collection::vec((key.clone(), leaf.clone()), 0..4).prop_map(|m| {
            let body: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(","))
        });
        (key, prop_oneof![leaf, inner])
    }

    proptest! {
        /// Whatever the skimmer reads, serde reads the same.
        #[test]
        fn the_skim_never_disagrees_with_serde(members in proptest::collection::vec(member(), 0..8)) {
            let body: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let raw = format!("{{{}}}", body.join(","));
            if let Some(u) = by_skim(&raw) {
                prop_assert_eq!(Some(u), by_serde(&raw), "{}", raw);
            }
        }
    }
}

#[cfg(test)]
mod direct_body_tests {
    use super::*;

    #[test]
    fn a_decoded_answer_keeps_its_logprobs() {
        let body = Bytes::from(serde_json::json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls",
                "logprobs": {"content": [{"token": "x", "logprob": -0.1, "bytes": [120], "top_logprobs": []}]},
                "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]
        }).to_string());
        // A tool-call answer is decoded (not passed as it came), and re-encoded with its logprobs.
        let r = pass_chat_response(&body).expect("answer");
        assert!(r.raw.is_none());
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(
            v["choices"][0]["logprobs"]["content"][0]["token"], "x",
            "{v}"
        );
        let plain = parse_chat_response(br#"{"id":"c","model":"m","choices":[{"index":0,"finish_reason":"stop","logprobs":null,"message":{"role":"assistant","content":"hi"}}]}"#).expect("answer");
        assert!(serde_json::to_value(&plain).expect("json")["choices"][0]
            .get("logprobs")
            .is_none());
    }

    #[test]
    fn direct_body_equals_the_value_path() {
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "route", "messages": [{"role": "user", "content": "hi"},
                {"role": "system", "content": "be \"brief\"\n\ttab \u{1}\\ é 🐢 and a long enough run of plain text"},
                {"role": "user", "name": "bob", "content": "named"},
                {"role": "user", "content": [{"type": "text", "text": "part \"one\""}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
            "temperature": 0.5, "top_k": 3, "stop": ["x"], "seed": 1, "logit_bias": {"1": 2},
            "fallbacks": ["a/b"], "stream": true, "stream_options": {"include_usage": false},
            "odd \"key\"\n": {"nested": "v\u{2}"},
            "tools": [{"type": "function", "function": {"name": "f"}}]
        }))
        .unwrap();
        for stream in [false, true] {
            for drop_top_k in [false, true] {
                let q = Quirks {
                    mistral: false,
                    drop_top_k,
                    one_answer: false,
                    reasoning_models: false,
                };
                let fast: Value =
                    serde_json::from_slice(&chat_body(&req, "up", stream, q).unwrap()).unwrap();
                let slow = chat_body_value(&req, "up", stream, q).unwrap();
                assert_eq!(fast, slow, "stream={stream} drop_top_k={drop_top_k}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn reasoning_models_by_name() {
        for m in [
            "o1",
            "o1-mini",
            "o3",
            "o3-pro",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
            "openai/o3",
        ] {
            assert!(is_reasoning_model(m), "{m}");
        }
        for m in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-5-chat-latest",
            "gpt-4.1",
            "omni-moderation",
            "o",
        ] {
            assert!(!is_reasoning_model(m), "{m}");
        }
    }

    #[test]
    fn mistral_ids_are_nine_alphanumerics() {
        assert_eq!(
            mistral_tool_id("abcDEF123"),
            "abcDEF123",
            "valid ids are kept"
        );
        let a = mistral_tool_id("call_abc123");
        assert_eq!(a.len(), 9);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(a, mistral_tool_id("call_abc123"), "deterministic");
        assert_ne!(a, mistral_tool_id("call_abc124"));
    }

    #[test]
    fn finish_reasons_are_lenient() {
        let got: Vec<_> = [
            "stop",
            "length",
            "tool_calls",
            "content_filter",
            "eos",
            "",
            "MAX_TOKENS",
        ]
        .iter()
        .map(|s| map_finish_reason(s))
        .collect();
        expect![[r#"[Some(Stop), Some(Length), Some(ToolCalls), Some(ContentFilter), Some(Stop), None, Some(Length)]"#]]
            .assert_eq(&format!("{got:?}"));
    }

    #[test]
    fn base64_vectors() {
        let floats = [1.5f32, -0.25];
        let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(
            decode_vector(Value::String(b64)).ok(),
            Some(floats.to_vec())
        );
        assert!(
            decode_vector(Value::String("AAA=".into())).is_err(),
            "3 bytes is not an f32"
        );
    }
}

#[cfg(test)]
mod prefix_resume_tests {
    use super::*;
    use crate::sse::SseParser;
    use proptest::prelude::*;

    fn event(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: Bytes::from(data.to_owned()),
            id: None,
            run: false,
        }
    }

    /// What a decoder made of a stream: each event's result and chunks, then its end.
    fn run(chunks: &[String], resume: bool) -> String {
        let mut d = ChunkDecoder::raw();
        let mut log = String::new();
        for c in chunks {
            if !resume {
                d.prefix.clear();
                d.template.clear();
            }
            let mut out = VecDeque::new();
            let r = d.event(event(c), &mut out);
            log.push_str(&format!("{r:?} {out:?}\n"));
        }
        let mut out = VecDeque::new();
        let r = d.end(&mut out);
        log.push_str(&format!("end {r:?} {out:?}"));
        log
    }

    fn stream() -> impl Strategy<Value = Vec<String>> {
        let head = prop_oneof![
            Just(
                r#"{"id":"c1","object":"chat.completion.chunk","created":5,"model":"m","system_fingerprint":"fp","choices":"#
            ),
            Just(
                r#"{"id":"c2","object":"chat.completion.chunk","created":5,"model":"m","choices":"#
            ),
            Just(r#"{"id":"c1","object":"error","created":5,"model":"m","choices":"#),
            Just(r#"{"id":"c1","usage":{"prompt_tokens":1,"completion_tokens":2},"choices":"#),
            Just(r#"{ "id" : "c1" , "choices" :"#),
            Just(r#"{"choices":"#),
            Just(r#"{"id":"c\u0031","model":"m","choices":"#),
        ];
        // Texts that vary from chunk to chunk, escaped as JSON or put in raw (quotes, backslashes
        // and control characters then break the document).
        let text = crate::skim::json_text(6);
        let varying = (text, 0u8..4).prop_map(|(t, shape)| match shape {
            0 => format!(r#"[{{"index":0,"delta":{{"content":{t}}},"logprobs":null,"finish_reason":null}}]"#),
            1 => format!(r#"[{{"index":0,"delta":{{"reasoning_content":{t},"content":null}},"finish_reason":null}}]"#),
            2 => format!(r#"[{{"index":0,"delta":{{"content":{t},"refusal":{t}}},"finish_reason":null}}]"#),
            _ => format!(r#"[{{"index":0,"delta":{{"content":{t}}},"finish_reason":null}},{{"index":1,"delta":{{"content":{t}}},"finish_reason":null}}]"#),
        });
        let choices = prop_oneof![
            varying.clone(),
            varying.clone(),
            varying,
            Just(r#"[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]"#.to_owned()),
            Just(r#"[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]"#.to_owned()),
            Just(r#"[{"index":0,"delta":{},"finish_reason":"stop"}]"#.to_owned()),
            Just(r#"[{"index":1,"delta":{"content":"x"},"finish_reason":"weird"}]"#.to_owned()),
            Just(
                r#"[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":null}]"#
                    .to_owned()
            ),
            Just("[]".to_owned()),
            Just("null".to_owned()),
        ];
        let tail = prop_oneof![
            Just("}"),
            Just(r#","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#),
            Just(r#","error":{"message":"boom"}}"#),
            Just(r#","id":"zz","model":"other"}"#),
            Just(r#","choices":[{"index":2,"delta":{"content":"y"},"finish_reason":"length"}]}"#),
            Just(r#","x":1}"#),
            Just(r#"} trailing"#),
        ];
        // Most chunks of a stream share its head and tail; some differ.
        let part = (
            proptest::option::weighted(0.2, head.clone()),
            choices,
            proptest::option::weighted(0.2, tail.clone()),
            any::<prop::sample::Index>(),
            any::<u8>(),
            proptest::bool::weighted(0.15),
        );
        (head, tail, proptest::collection::vec(part, 1..10)).prop_map(|(head, tail, parts)| {
            parts
                .into_iter()
                .map(|(h, c, t, at, byte, corrupt)| {
                    let mut b =
                        format!("{}{c}{}", h.unwrap_or(head), t.unwrap_or(tail)).into_bytes();
                    if corrupt {
                        let i = at.index(b.len());
                        b[i] = byte;
                    }
                    String::from_utf8_lossy(&b).into_owned()
                })
                .collect()
        })
    }

    /// What a client is sent for a stream given as SSE text in two reads, with or without runs:
    /// the chunks' bytes as the server writes them (`data: {raw}` for those passed as they
    /// came), the finish reasons kept, the usage, how the stream ended, and the chunk count.
    fn client_view(
        sse: &str,
        split: usize,
        runs: bool,
    ) -> (String, Vec<(u32, FinishReason)>, String, usize) {
        let mut p = if runs {
            SseParser::with_runs()
        } else {
            SseParser::new()
        };
        let mut d = ChunkDecoder::raw();
        let (mut sent, mut finishes, mut count) = (String::new(), Vec::new(), 0);
        let mut out = VecDeque::new();
        let mut end = None;
        let split = split.min(sse.len());
        'reads: for (i, part) in [&sse.as_bytes()[..split], &sse.as_bytes()[split..]]
            .into_iter()
            .enumerate()
        {
            p.push(part);
            loop {
                let ev = match p.next_event() {
                    Some(ev) => ev,
                    None if i == 1 => match p.finish() {
                        Some(ev) => ev,
                        None => break,
                    },
                    None => break,
                };
                match d.event(ev, &mut out) {
                    Ok(false) => {}
                    Ok(true) => {
                        end = Some("done".to_owned());
                        break 'reads;
                    }
                    Err(e) => {
                        end = Some(format!("error {e}"));
                        break 'reads;
                    }
                }
            }
        }
        let end = match end {
            Some(e) => e,
            None => format!("end {:?}", d.end(&mut out).map_err(|e| e.to_string())),
        };
        for c in &out {
            count += 1;
            match &c.raw {
                Some(raw) => sent.push_str(&format!("data: {}\n\n", String::from_utf8_lossy(raw))),
                None => sent.push_str(&format!("data: {}\n\n", serde_json::to_string(c).unwrap())),
            }
            finishes.extend(
                c.choices
                    .iter()
                    .filter_map(|c| Some((c.index, c.finish_reason?))),
            );
        }
        (sent, finishes, format!("{end} usage {:?}", d.usage), count)
    }

    /// The stream of `chunks` (then `[DONE]` if `done`), split in two reads at `at`: with runs,
    /// the client gets the same bytes, finish reasons and end as one by one, in no more chunks.
    fn same_with_runs(
        chunks: &[String],
        done: bool,
        at: prop::sample::Index,
    ) -> Result<(), TestCaseError> {
        let mut sse: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        if done {
            sse.push_str("data: [DONE]\n\n");
        }
        let split = at.index(sse.len() + 1);
        let one_by_one = client_view(&sse, split, false);
        let with_runs = client_view(&sse, split, true);
        prop_assert_eq!(&with_runs.0, &one_by_one.0);
        prop_assert_eq!(&with_runs.1, &one_by_one.1);
        prop_assert_eq!(&with_runs.2, &one_by_one.2);
        prop_assert!(with_runs.3 <= one_by_one.3);
        Ok(())
    }

    proptest! {
        /// Runs of events send the client the same bytes, keep the same finish reasons and end
        /// the same way as events one by one, wherever the reads split the stream.
        #[test]
        fn runs_change_nothing_the_client_sees(chunks in stream(), done in any::<bool>(), at in any::<prop::sample::Index>()) {
            same_with_runs(&chunks, done, at)?;
        }
    }

    /// Streams of well-formed chunks of every kind a run meets: text that passes, chunks with
    /// nothing to pass, usage, finish reasons standard or not, tool calls, blanks around the data.
    fn valid_stream() -> impl Strategy<Value = Vec<String>> {
        const HEAD: &str =
            r#"{"id":"c1","object":"chat.completion.chunk","created":5,"model":"m","choices":"#;
        let text = "[a-z \u{e9}\"]{0,6}".prop_map(|t| {
            format!(
                r#"{HEAD}[{{"index":0,"delta":{{"content":{}}},"finish_reason":null}}]}}"#,
                serde_json::to_string(&t).unwrap()
            )
        });
        let kind = prop_oneof![
            6 => text,
            1 => Just(format!("{HEAD}[]}}")),
            1 => Just(format!(r#"{HEAD}[],"prompt_filter_results":[]}}"#)),
            1 => Just(format!(
                r#"{HEAD}[],"usage":{{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}}}"#
            )),
            1 => Just(format!(r#"{HEAD}[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}"#)),
            1 => Just(format!(r#"{HEAD}[{{"index":1,"delta":{{"content":"x"}},"finish_reason":"weird"}}]}}"#)),
            1 => Just(format!(
                r#"{HEAD}[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"id":"t","type":"function","function":{{"name":"f","arguments":"{{}}"}}}}]}},"finish_reason":null}}]}}"#
            )),
            1 => Just(format!(r#" {HEAD}[{{"index":0,"delta":{{"content":"pad"}},"finish_reason":null}}]}} "#)),
        ];
        proptest::collection::vec(kind, 1..30)
    }

    proptest! {
        /// The same as `runs_change_nothing_the_client_sees`, over streams that run their whole
        /// length.
        #[test]
        fn runs_change_nothing_in_streams_of_valid_chunks(
            chunks in valid_stream(),
            done in any::<bool>(),
            at in any::<prop::sample::Index>(),
        ) {
            same_with_runs(&chunks, done, at)?;
        }
    }

    #[test]
    fn a_chunk_with_nothing_to_pass_cuts_a_run() {
        let text = |t: &str| {
            format!(
                r#"{{"id":"c1","object":"chat.completion.chunk","created":5,"model":"m","choices":[{{"index":0,"delta":{{"content":"{t}"}},"finish_reason":null}}]}}"#
            )
        };
        let empty = r#"{"id":"c1","object":"chat.completion.chunk","created":5,"model":"m","choices":[],"prompt_filter_results":[]}"#;
        let sse: String = [text("a"), text("b"), empty.to_owned(), text("c"), text("d")]
            .iter()
            .map(|c| format!("data: {c}\n\n"))
            .collect();
        let one_by_one = client_view(&sse, sse.len(), false);
        let with_runs = client_view(&sse, sse.len(), true);
        assert_eq!(with_runs.0, one_by_one.0);
        assert!(
            !with_runs.0.contains("prompt_filter_results"),
            "{}",
            with_runs.0
        );
        assert_eq!(with_runs.3, 3, "the first chunk, then b, then c and d");
    }

    #[test]
    fn a_stream_of_text_passes_in_runs() {
        let chunk = |delta: &str, finish: &str| {
            format!(
                r#"{{"id":"c1","object":"chat.completion.chunk","created":5,"model":"m","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#
            )
        };
        let mut sse = format!(
            "data: {}\n\n",
            chunk(r#"{"role":"assistant","content":""}"#, "null")
        );
        for i in 0..20 {
            sse.push_str(&format!(
                "data: {}\n\n",
                chunk(&format!(r#"{{"content":"w{i} "}}"#), "null")
            ));
        }
        sse.push_str(&format!("data: {}\n\n", chunk("{}", r#""stop""#)));
        sse.push_str(r#"data: {"id":"c1","object":"chat.completion.chunk","created":5,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":21,"total_tokens":24}}"#);
        sse.push_str("\n\ndata: [DONE]\n\n");
        let one_by_one = client_view(&sse, sse.len(), false);
        let with_runs = client_view(&sse, sse.len(), true);
        assert_eq!(with_runs.0, one_by_one.0);
        assert_eq!(with_runs.1, vec![(0, FinishReason::Stop)]);
        assert_eq!(
            with_runs.2, "done usage None",
            "the usage went out at [DONE]"
        );
        assert!(
            with_runs.0.contains(r#""total_tokens":24"#),
            "{}",
            with_runs.0
        );
        assert_eq!(one_by_one.3, 22 + 1, "each chunk, then the usage");
        assert_eq!(
            with_runs.3,
            1 + 1 + 1,
            "the first chunk, one run, the usage"
        );
        // Every byte but the usage chunk's went out as it came.
        let usage_at = sse.find(r#"data: {"id":"c1","object":"chat.completion.chunk","created":5,"model":"m","choices":[],"#).unwrap();
        assert!(with_runs.0.starts_with(&sse[..usage_at]));
    }

    proptest! {
        /// Resuming at the choices of a chunk that begins as the last passed one did, and
        /// passing a chunk that is the last passed one but for its text, decide every chunk as
        /// reading it whole does.
        #[test]
        fn resuming_at_the_choices_changes_nothing(chunks in stream()) {
            prop_assert_eq!(run(&chunks, true), run(&chunks, false));
        }
    }

    #[test]
    fn a_chunk_that_differs_only_in_its_text_takes_the_last_ones_choices() {
        let chunk = |text: &str| {
            format!(
                r#"{{"id":"c1","object":"chat.completion.chunk","created":5,"model":"m","choices":[{{"index":3,"delta":{{"content":{text}}},"logprobs":null,"finish_reason":null}}]}}"#
            )
        };
        let mut d = ChunkDecoder::raw();
        let mut out = VecDeque::new();
        d.event(event(&chunk(r#""one""#)), &mut out).unwrap();
        let first = chunk(r#""one""#);
        let at = first.find(r#""one""#).unwrap();
        assert_eq!(d.hole, (at, at + 5), "the text's span, quotes included");
        let second = chunk(r#""two \"quoted\" \u00e9 🐢""#);
        d.event(event(&second), &mut out).unwrap();
        assert_eq!(out[1].raw.as_deref(), Some(second.as_bytes()));
        assert_eq!(out[1].choices.len(), 1);
        assert_eq!(out[1].choices[0].index, 3);
        // A bare quote in the text is not a string: the chunk is read whole, and refused.
        let broken = chunk(r#""a"b""#);
        assert!(d.event(event(&broken), &mut out).is_err());
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_repeated_prefix_is_resumed_and_a_changed_one_is_read_whole() {
        let a = r#"{"id":"c1","object":"chat.completion.chunk","created":5,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#;
        let b = r#"{"id":"c1","object":"chat.completion.chunk","created":5,"model":"m","choices":[{"index":0,"delta":{"content":"b"},"finish_reason":"stop"}]}"#;
        let mut d = ChunkDecoder::raw();
        let mut out = VecDeque::new();
        d.event(event(a), &mut out).unwrap();
        let cut = a.find(r#""choices":"#).unwrap() + r#""choices":"#.len();
        assert_eq!(
            d.prefix,
            a.as_bytes()[..cut],
            "the bytes before the choices are kept"
        );
        d.event(event(b), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].raw.as_deref(), Some(b.as_bytes()));
        assert_eq!(out[1].choices[0].finish_reason, Some(FinishReason::Stop));
        assert!(d.finished);
        // The same prefix with usage after the choices is not passed: it is decoded whole.
        let with_usage = r#"{"id":"c1","object":"chat.completion.chunk","created":5,"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        d.event(event(with_usage), &mut out).unwrap();
        assert_eq!(out.len(), 2, "usage is held for the end");
        assert_eq!(d.usage.map(|u| u.total_tokens), Some(3));
    }
}
