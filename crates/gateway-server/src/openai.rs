//! The OpenAI dialect at the edge. The canonical types are OpenAI-shaped, so this is mostly
//! validation and SSE framing.

use base64::Engine as _;
use bytes::Bytes;
use gateway_core::types::{
    ChatChunk, ChatRequest, EmbeddingRequest, EmbeddingResponse, ModelInfo, NativeApi,
    NativeRequest,
};
use serde::Deserialize as _;
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
/// ([`NativeApi::OpenAiResponses`]), for the providers that speak the Responses API, and what
/// it asks is read as chat messages when it can be ([`crate::responses::to_chat`]), for the
/// others.
pub fn decode_responses(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
    let head = ResponsesHead::deserialize(&value).map_err(|e| json_error(&e))?;
    let model = required_model(head.model)?;
    // Read as chat too, when it can be, for the providers that do not speak it.
    let chat = crate::responses::to_chat(&value).unwrap_or_default();
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
        ..chat
    })
}

/// The `model` a request must name.
fn required_model(model: Option<String>) -> Result<String, ApiError> {
    match model {
        Some(m) if !m.is_empty() => Ok(m),
        _ => Err(ApiError::invalid("you must provide a model parameter").param("model")),
    }
}

/// What the gateway reads of a legacy Completions request (`POST /v1/completions`).
#[derive(serde::Deserialize)]
struct CompletionsHead {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    fallbacks: Option<Vec<String>>,
    #[serde(default)]
    prompt: Option<serde::de::IgnoredAny>,
}

/// Decodes a legacy Completions request: `model`, `stream`, `max_tokens` and `fallbacks` are
/// read, `prompt` must be there; the body rides along in [`ChatRequest::native`]
/// ([`NativeApi::OpenAiCompletions`]).
pub fn decode_completions(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let head: CompletionsHead = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
    let model = required_model(head.model)?;
    if head.prompt.is_none() {
        return Err(ApiError::invalid("you must provide a prompt").param("prompt"));
    }
    Ok(ChatRequest {
        model,
        stream: head.stream.unwrap_or(false),
        max_tokens: head.max_tokens,
        fallbacks: head.fallbacks.unwrap_or_default(),
        native: Some(NativeRequest {
            body: Bytes::copy_from_slice(body),
            headers: Vec::new(),
            api: NativeApi::OpenAiCompletions,
        }),
        ..ChatRequest::default()
    })
}

/// Decodes and validates a chat-completions body.
pub fn decode_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    decode_chat_legacy(body).map(|(req, _)| req)
}

/// [`decode_chat`], and whether the body used the legacy function-calling API (`functions`,
/// `function_call`, `role: "function"`; deprecated by OpenAI, still accepted), which is read as
/// tools ([`legacy_functions_to_tools`]): such a client wants its answers in the legacy form too
/// ([`tools_to_legacy_functions`]).
pub fn decode_chat_legacy(body: &[u8]) -> Result<(ChatRequest, bool), ApiError> {
    // The common case parses once; only a failure pays for a second look to name the problem.
    if let Ok(req) = serde_json::from_slice::<ChatRequest>(body) {
        if !req.model.is_empty()
            && !req.messages.is_empty()
            && req.temperature.is_none_or(|t| (0.0..=2.0).contains(&t))
            && unnamed_function(&req).is_none()
            && !req.extra.contains_key("functions")
            && !req.extra.contains_key("function_call")
        {
            return Ok((req, false));
        }
    }
    let mut value: Value = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
    let legacy = match value.as_object_mut() {
        Some(obj) => legacy_functions_to_tools(obj),
        None => return Err(ApiError::invalid("request body must be a JSON object")),
    };
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
    Ok((req, legacy))
}

/// Rewrites the legacy function-calling API into tools, in place: `functions` → `tools`,
/// `function_call` → `tool_choice`, an assistant turn's `function_call` → one `tool_calls` entry
/// with a made-up id (`call_legacy_<turn>`), and a `function` turn → the `tool` turn answering
/// the latest call of that name. Returns whether anything was legacy.
pub fn legacy_functions_to_tools(req: &mut serde_json::Map<String, Value>) -> bool {
    let mut legacy = false;
    if let Some(functions) = req.remove("functions") {
        legacy = true;
        if !req.contains_key("tools") {
            if let Value::Array(fs) = functions {
                let tools = fs
                    .into_iter()
                    .map(|f| json!({"type": "function", "function": f}))
                    .collect();
                req.insert("tools".to_owned(), Value::Array(tools));
                // The legacy API makes one call at a time.
                req.entry("parallel_tool_calls").or_insert(json!(false));
            }
        }
    }
    if let Some(choice) = req.remove("function_call") {
        legacy = true;
        if !req.contains_key("tool_choice") {
            let choice = match choice {
                Value::Object(o) => {
                    json!({"type": "function", "function": {"name": o.get("name")}})
                }
                other => other,
            };
            req.insert("tool_choice".to_owned(), choice);
        }
    }
    if let Some(Value::Array(messages)) = req.get_mut("messages") {
        let mut calls: Vec<(String, String)> = Vec::new();
        for (i, m) in messages.iter_mut().enumerate() {
            let Some(m) = m.as_object_mut() else { continue };
            if let Some(call) = m.remove("function_call") {
                legacy = true;
                let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
                let id = format!("call_legacy_{i}");
                calls.push((name.to_owned(), id.clone()));
                m.insert(
                    "tool_calls".to_owned(),
                    json!([{"id": id, "type": "function", "function": call}]),
                );
            }
            if m.get("role").and_then(Value::as_str) == Some("function") {
                legacy = true;
                let name = m.remove("name");
                let name = name.as_ref().and_then(Value::as_str).unwrap_or_default();
                let id = calls
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map_or_else(|| format!("call_legacy_{name}"), |(_, id)| id.clone());
                m.insert("role".to_owned(), json!("tool"));
                m.insert("tool_call_id".to_owned(), json!(id));
            }
        }
    }
    legacy
}

/// Rewrites an answer (a `chat.completion` or one of its chunks, as JSON) for a client of the
/// legacy function-calling API: each choice's first tool call becomes its `function_call` (in a
/// chunk, `delta.function_call`) and the `tool_calls` finish reason `function_call`.
pub fn tools_to_legacy_functions(answer: &mut Value) {
    let Some(Value::Array(choices)) = answer.get_mut("choices") else {
        return;
    };
    for c in choices {
        let Some(c) = c.as_object_mut() else { continue };
        if c.get("finish_reason").and_then(Value::as_str) == Some("tool_calls") {
            c.insert("finish_reason".to_owned(), json!("function_call"));
        }
        for part in ["message", "delta"] {
            let Some(Value::Object(m)) = c.get_mut(part) else {
                continue;
            };
            if let Some(Value::Array(calls)) = m.remove("tool_calls") {
                if let Some(f) = calls
                    .into_iter()
                    .next()
                    .and_then(|mut t| t.get_mut("function").map(Value::take))
                {
                    m.insert("function_call".to_owned(), f);
                }
            }
        }
    }
}

/// [`encode_chunk`] for a client of the legacy function-calling API.
pub fn encode_legacy_chunk(chunk: &ChatChunk, include_usage: bool, out: &mut Vec<u8>) -> bool {
    if !include_usage && chunk.choices.is_empty() {
        return false;
    }
    let Ok(mut v) = serde_json::to_value(chunk) else {
        return false;
    };
    if !include_usage {
        if let Some(o) = v.as_object_mut() {
            o.remove("usage");
        }
    }
    tools_to_legacy_functions(&mut v);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    true
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
    if !include_usage && chunk.choices.is_empty() && (chunk.usage.is_some() || chunk.raw.is_none())
    {
        // The usage-only chunk the gateway asked for (`stream_options.include_usage`) and the
        // client did not.
        return false;
    }
    if let Some(raw) = &chunk.raw {
        out.reserve(raw.len() + 8);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(raw);
        out.extend_from_slice(b"\n\n");
        return true;
    }
    // OpenAI ends a choice with a chunk of its own (`"delta": {}` and the finish reason), and
    // the SDK's stream helper relies on it: a finish reason on the chunk of the last tool call
    // leaves that call without its `arguments.done` event. A translated chunk that carries both
    // is written as the two chunks OpenAI would have sent.
    let finishes_with_delta = chunk
        .choices
        .iter()
        .any(|c| c.finish_reason.is_some() && !delta_is_empty(&c.delta));
    if finishes_with_delta {
        let mut body = chunk.clone();
        body.usage = None;
        for c in &mut body.choices {
            c.finish_reason = None;
        }
        let mut end = chunk.clone();
        end.choices.retain(|c| c.finish_reason.is_some());
        for c in &mut end.choices {
            c.delta = gateway_core::types::Delta::default();
        }
        return write_chunk(&body, include_usage, out) && write_chunk(&end, include_usage, out);
    }
    write_chunk(chunk, include_usage, out)
}

/// Whether a delta adds nothing.
fn delta_is_empty(d: &gateway_core::types::Delta) -> bool {
    d.content.as_deref().is_none_or(str::is_empty)
        && d.reasoning_content.as_deref().is_none_or(str::is_empty)
        && d.refusal.is_none()
        && d.tool_calls.as_ref().is_none_or(Vec::is_empty)
}

/// One `data:` event for a canonical chunk, usage left off unless the caller asked for it.
fn write_chunk(chunk: &ChatChunk, include_usage: bool, out: &mut Vec<u8>) -> bool {
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
    encode_model_page(models, false)
}

fn encode_model_page(models: &[ModelInfo], has_more: bool) -> Bytes {
    let data: Vec<Value> = models.iter().map(model_json).collect();
    let first = models.first().map(|m| m.id.clone());
    let last = models.last().map(|m| m.id.clone());
    Bytes::from(
        serde_json::to_vec(&json!({
            "object": "list",
            "data": data,
            "has_more": has_more,
            "first_id": first,
            "last_id": last,
        }))
        .unwrap_or_default(),
    )
}

/// The page of `GET /v1/models` a caller asked for. OpenAI's list has no pages; Anthropic's
/// takes `limit` (1 to 1,000, default 20), `after_id` and `before_id` and answers `has_more`,
/// `first_id` and `last_id`. A request with the `anthropic-version` header or any of those
/// parameters is paged the Anthropic way; any other gets the whole list.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModelPage {
    limit: Option<usize>,
    after_id: Option<String>,
    before_id: Option<String>,
}

impl ModelPage {
    /// Anthropic's default page size.
    const DEFAULT_LIMIT: usize = 20;
    const MAX_LIMIT: usize = 1000;

    /// Reads the query string; a `limit` out of range or not a number is the caller's mistake.
    pub fn from_query(query: &str, anthropic: bool) -> Result<Self, ApiError> {
        let mut page = Self::default();
        let mut paged = anthropic;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode_query(v);
            match k {
                "limit" => {
                    let n = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=Self::MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid(format!(
                                "limit: must be an integer from 1 to {}, got `{v}`",
                                Self::MAX_LIMIT
                            ))
                            .param("limit")
                        })?;
                    page.limit = Some(n);
                    paged = true;
                }
                "after_id" if !v.is_empty() => {
                    page.after_id = Some(v);
                    paged = true;
                }
                "before_id" if !v.is_empty() => {
                    page.before_id = Some(v);
                    paged = true;
                }
                _ => {}
            }
        }
        if page.after_id.is_some() && page.before_id.is_some() {
            return Err(ApiError::invalid(
                "after_id and before_id cannot be given together".to_owned(),
            ));
        }
        if paged && page.limit.is_none() {
            page.limit = Some(Self::DEFAULT_LIMIT);
        }
        Ok(page)
    }

    /// The page's body. An `after_id` or `before_id` the list does not hold gives an empty
    /// page.
    pub fn encode(&self, models: &[ModelInfo]) -> Result<Bytes, ApiError> {
        let Some(limit) = self.limit else {
            return Ok(encode_models(models));
        };
        let position = |id: &str| models.iter().position(|m| m.id == id);
        let (page, has_more) = if let Some(after) = &self.after_id {
            match position(after) {
                Some(i) => {
                    let rest = &models[i + 1..];
                    let n = rest.len().min(limit);
                    (&rest[..n], rest.len() > n)
                }
                None => (&models[..0], false),
            }
        } else if let Some(before) = &self.before_id {
            match position(before) {
                Some(i) => {
                    let start = i.saturating_sub(limit);
                    (&models[start..i], start > 0)
                }
                None => (&models[..0], false),
            }
        } else {
            let n = models.len().min(limit);
            (&models[..n], models.len() > n)
        };
        Ok(encode_model_page(page, has_more))
    }
}

/// `+` and `%XX` of a query value.
fn percent_decode_query(v: &str) -> String {
    percent_encoding::percent_decode_str(&v.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
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

    /// Anthropic's paging over the model list: `limit` (default 20 once paged), `after_id`,
    /// `before_id`; OpenAI's request gets everything.
    #[test]
    fn model_pages() {
        let models: Vec<ModelInfo> = (0..25)
            .map(|i| ModelInfo {
                id: format!("m{i:02}"),
                owned_by: "gateway".to_owned(),
                created: 0,
            })
            .collect();
        let ids = |page: &ModelPage| -> (Vec<String>, bool) {
            let v: Value = serde_json::from_slice(&page.encode(&models).unwrap()).unwrap();
            let ids = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect();
            (ids, v["has_more"].as_bool().unwrap())
        };
        let whole = ModelPage::from_query("", false).unwrap();
        assert_eq!(ids(&whole).0.len(), 25);
        assert!(!ids(&whole).1);
        let (first, more) = ids(&ModelPage::from_query("", true).unwrap());
        assert_eq!((first.len(), more), (20, true));
        let (next, more) = ids(&ModelPage::from_query("after_id=m19", false).unwrap());
        assert_eq!(next, ["m20", "m21", "m22", "m23", "m24"]);
        assert!(!more);
        let (before, more) = ids(&ModelPage::from_query("limit=3&before_id=m05", true).unwrap());
        assert_eq!(before, ["m02", "m03", "m04"]);
        assert!(more);
        let (before, more) = ids(&ModelPage::from_query("limit=10&before_id=m05", true).unwrap());
        assert_eq!(before.len(), 5);
        assert!(!more);
        let (none, more) = ids(&ModelPage::from_query("after_id=zzz", true).unwrap());
        assert!(none.is_empty() && !more);
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "after_id=m01&before_id=m03",
        ] {
            assert_eq!(
                ModelPage::from_query(bad, true).unwrap_err().status,
                400,
                "{bad}"
            );
        }
    }

    /// A legacy function-calling conversation reads as tools: calls get ids their results
    /// answer (the latest call of the same name), the choice and the one-call-at-a-time rule
    /// carry over; a modern body is not legacy.
    #[test]
    fn legacy_functions_read_as_tools() {
        let body = json!({
            "model": "m",
            "functions": [{"name": "f", "parameters": {"type": "object"}}],
            "function_call": {"name": "f"},
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": "{\"a\":1}"}},
                {"role": "function", "name": "f", "content": "one"},
                {"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": "{}"}},
                {"role": "function", "name": "f", "content": "two"}
            ]
        });
        let (req, legacy) = decode_chat_legacy(body.to_string().as_bytes()).unwrap();
        assert!(legacy);
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v["tools"][0],
            json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}})
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(v["parallel_tool_calls"], false);
        assert!(v.get("functions").is_none() && v.get("function_call").is_none());
        let m = &v["messages"];
        assert_eq!(m[1]["tool_calls"][0]["id"], "call_legacy_1");
        assert_eq!(m[1]["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(
            (m[2]["role"].as_str(), m[2]["tool_call_id"].as_str()),
            (Some("tool"), Some("call_legacy_1"))
        );
        assert_eq!(m[4]["tool_call_id"], "call_legacy_3");
        let (_, legacy) = decode_chat_legacy(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
        )
        .unwrap();
        assert!(!legacy);
        // `function_call: "auto"` alone is legacy too.
        let (req, legacy) = decode_chat_legacy(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"function_call":"none"}"#,
        )
        .unwrap();
        assert!(legacy);
        assert_eq!(serde_json::to_value(&req).unwrap()["tool_choice"], "none");
    }

    #[test]
    fn answers_go_back_in_the_legacy_form() {
        let mut answer = json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]});
        tools_to_legacy_functions(&mut answer);
        assert_eq!(answer["choices"][0]["finish_reason"], "function_call");
        assert_eq!(
            answer["choices"][0]["message"]["function_call"],
            json!({"name": "f", "arguments": "{}"})
        );
        assert!(answer["choices"][0]["message"].get("tool_calls").is_none());
        let mut chunk = json!({"choices": [{"index": 0, "finish_reason": null, "delta": {
            "tool_calls": [{"index": 0, "function": {"arguments": "{\"q"}}]}}]});
        tools_to_legacy_functions(&mut chunk);
        assert_eq!(
            chunk["choices"][0]["delta"],
            json!({"function_call": {"arguments": "{\"q"}})
        );
        // Text answers are left alone.
        let mut text =
            json!({"choices": [{"finish_reason": "stop", "message": {"content": "hi"}}]});
        let before = text.clone();
        tools_to_legacy_functions(&mut text);
        assert_eq!(text, before);
    }

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
