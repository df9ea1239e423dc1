//! The Anthropic Messages dialect at the edge: requests into canonical form, responses and streams
//! back into Anthropic's shapes, so the Anthropic SDK can reach any provider.

use bytes::Bytes;
use gateway_core::types::{
    ChatChunk, ChatRequest, ChatResponse, Content, ContentPart, FinishReason, FunctionCall,
    FunctionDef, ImageUrl, JsonSchemaFormat, Message, NamedFunction, NamedToolChoice,
    ResponseFormat, Role, Stop, Tool, ToolCall, ToolChoice, ToolChoiceMode, Usage,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::errors::ApiError;

#[derive(Deserialize)]
struct MessagesRequest {
    model: String,
    max_tokens: Option<u32>,
    messages: Vec<InMessage>,
    #[serde(default)]
    system: Option<SystemPrompt>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    tools: Option<Vec<InTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    fallbacks: Option<Vec<String>>,
    #[serde(default)]
    thinking: Option<Value>,
    /// `{"format": {"type": "json_schema", "schema"}, "effort"}`.
    #[serde(default)]
    output_config: Option<Value>,
    /// The structured-outputs beta's spelling of `output_config.format`.
    #[serde(default)]
    output_format: Option<Value>,
    #[serde(flatten)]
    _rest: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SystemPrompt {
    Text(String),
    Blocks(Vec<Value>),
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    content: InContent,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum InContent {
    Text(String),
    Blocks(Vec<Value>),
}

#[derive(Deserialize)]
struct InTool {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<Value>,
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn image_part(block: &Value) -> Option<ContentPart> {
    let src = block.get("source")?;
    let url = match src.get("type").and_then(Value::as_str)? {
        "base64" => format!(
            "data:{};base64,{}",
            src.get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("image/png"),
            src.get("data").and_then(Value::as_str).unwrap_or_default()
        ),
        "url" => src.get("url").and_then(Value::as_str)?.to_owned(),
        _ => return None,
    };
    Some(ContentPart::ImageUrl {
        image_url: ImageUrl { url, detail: None },
    })
}

/// Decodes an Anthropic Messages request into canonical form.
pub fn decode_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let req: MessagesRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))?;
    if req.model.is_empty() {
        return Err(ApiError::invalid("model: field required").param("model"));
    }
    let Some(max_tokens) = req.max_tokens else {
        return Err(ApiError::invalid("max_tokens: Field required").param("max_tokens"));
    };
    if req.messages.is_empty() {
        return Err(
            ApiError::invalid("messages: at least one message is required").param("messages"),
        );
    }
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    match req.system {
        Some(SystemPrompt::Text(t)) if !t.is_empty() => {
            messages.push(Message::text(Role::System, t))
        }
        Some(SystemPrompt::Blocks(b)) => {
            // Several system blocks are several paragraphs, not one run-on sentence.
            let t = b
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join("\n\n");
            if !t.is_empty() {
                messages.push(Message::text(Role::System, t));
            }
        }
        _ => {}
    }
    for (i, m) in req.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(format!(
                    "messages.{i}.role: unexpected role `{other}` (user or assistant)"
                )))
            }
        };
        let blocks = match m.content {
            InContent::Text(t) => {
                messages.push(Message::text(role, t));
                continue;
            }
            InContent::Blocks(b) => b,
        };
        let mut parts: Vec<ContentPart> = Vec::new();
        let mut tool_calls: Vec<ToolCall> = Vec::new();
        for block in &blocks {
            match block
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
            {
                "text" => parts.push(ContentPart::Text {
                    text: block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                }),
                "image" => {
                    if let Some(p) = image_part(block) {
                        parts.push(p);
                    }
                }
                "tool_use" => tool_calls.push(ToolCall {
                    id: block
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    kind: "function".to_owned(),
                    function: FunctionCall {
                        name: block
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        arguments: block
                            .get("input")
                            .map_or_else(|| "{}".to_owned(), Value::to_string),
                    },
                }),
                "tool_result" => {
                    let content = block.get("content").map(text_of).unwrap_or_default();
                    let is_error = block
                        .get("is_error")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let mut msg = Message::text(
                        Role::Tool,
                        if is_error {
                            format!("Error: {content}")
                        } else {
                            content
                        },
                    );
                    msg.tool_call_id = block
                        .get("tool_use_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    msg.tool_error = is_error;
                    messages.push(msg);
                }
                "document" => {
                    // Plain-text documents become text; other sources cannot cross dialects.
                    if let Some(d) = block
                        .get("source")
                        .and_then(|s| s.get("data"))
                        .and_then(Value::as_str)
                    {
                        parts.push(ContentPart::Text { text: d.to_owned() });
                    }
                }
                // Thinking blocks are the model's own; they are not replayed to other providers.
                _ => {}
            }
        }
        let only_text = parts.iter().all(|p| matches!(p, ContentPart::Text { .. }));
        let content = if parts.is_empty() {
            None
        } else if only_text {
            Some(Content::Text(
                parts
                    .iter()
                    .filter_map(|p| match p {
                        ContentPart::Text { text } => Some(text.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join(""),
            ))
        } else {
            Some(Content::Parts(parts))
        };
        if content.is_some() || !tool_calls.is_empty() {
            messages.push(Message {
                role,
                content,
                name: None,
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                tool_call_id: None,
                refusal: None,
                reasoning_content: None,
                audio: None,
                tool_error: false,
            });
        }
    }
    let tools = req.tools.map(|ts| {
        ts.into_iter()
            .map(|t| {
                Tool::function(FunctionDef {
                    name: t.name,
                    description: t.description,
                    parameters: t.input_schema,
                    strict: None,
                })
            })
            .collect::<Vec<_>>()
    });
    let mut parallel_tool_calls = None;
    let tool_choice = req.tool_choice.as_ref().and_then(|tc| {
        if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            parallel_tool_calls = Some(false);
        }
        match tc.get("type").and_then(Value::as_str)? {
            "auto" => Some(ToolChoice::Mode(ToolChoiceMode::Auto)),
            "any" => Some(ToolChoice::Mode(ToolChoiceMode::Required)),
            "none" => Some(ToolChoice::Mode(ToolChoiceMode::None)),
            "tool" => Some(ToolChoice::Named(NamedToolChoice {
                kind: "function".to_owned(),
                function: NamedFunction {
                    name: tc.get("name").and_then(Value::as_str)?.to_owned(),
                },
            })),
            _ => None,
        }
    });
    let stream = req.stream.unwrap_or(false);
    // Extended thinking, for providers other than Anthropic (which get the body as written):
    // `{"type": "enabled", "budget_tokens": N}` is a budget each adapter sends as its provider
    // takes one; `adaptive` lets the model decide (Gemini's dynamic thinking); `disabled` asks
    // for nothing. `output_config.effort` is a reasoning effort.
    let thinking_adaptive = req
        .thinking
        .as_ref()
        .is_some_and(|t| t.get("type").and_then(Value::as_str) == Some("adaptive"));
    let effort = req
        .output_config
        .as_ref()
        .and_then(|c| c.get("effort"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let thinking_budget = req
        .thinking
        .as_ref()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("enabled"))
        .and_then(|t| t.get("budget_tokens"))
        .and_then(Value::as_u64)
        .map(|b| u32::try_from(b).unwrap_or(u32::MAX));
    // Structured outputs: the schema the answer must follow, as OpenAI's `json_schema` format
    // (strict when the schema closes its objects, as Anthropic's SDK makes them), which each
    // adapter carries as its provider can.
    let response_format = req
        .output_config
        .as_ref()
        .and_then(|c| c.get("format"))
        .or(req.output_format.as_ref())
        .filter(|f| f.get("type").and_then(Value::as_str) == Some("json_schema"))
        .and_then(|f| f.get("schema"))
        .map(|schema| ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name: "output".to_owned(),
                strict: (schema.get("additionalProperties") == Some(&Value::Bool(false)))
                    .then_some(true),
                schema: Some(schema.clone()),
                description: None,
            },
        });
    Ok(ChatRequest {
        model: req.model,
        messages,
        max_tokens: Some(max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        stop: req.stop_sequences.filter(|s| !s.is_empty()).map(Stop::Many),
        user: req
            .metadata
            .as_ref()
            .and_then(|m| m.get("user_id"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        tools,
        tool_choice,
        parallel_tool_calls,
        stream,
        stream_options: stream.then_some(gateway_core::types::StreamOptions {
            include_usage: true,
        }),
        fallbacks: req.fallbacks.unwrap_or_default(),
        thinking_budget,
        thinking_adaptive,
        effort,
        response_format,
        ..ChatRequest::default()
    })
}

/// What an Anthropic client asked for that shapes the answer beyond its content.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// Extended thinking: the provider's reasoning comes back as a `thinking` block.
    pub thinking: bool,
    /// The request's stop sequence when it had exactly one: the one an answer that ended on a
    /// stop sequence ended on (providers other than Anthropic do not say which).
    pub stop_sequence: Option<String>,
}

impl Asked {
    /// What `request` (decoded from the Messages API) asked for.
    pub fn of(request: &ChatRequest) -> Self {
        let stop_sequence = match &request.stop {
            Some(Stop::One(s)) => Some(s.clone()),
            Some(Stop::Many(v)) if v.len() == 1 => v.first().cloned(),
            _ => None,
        };
        Asked {
            thinking: request.thinking_budget.is_some() || request.thinking_adaptive,
            stop_sequence,
        }
    }

    /// The `stop_sequence` member for an answer that ended with `f`.
    fn stop_sequence(&self, f: Option<FinishReason>) -> Value {
        match (f, &self.stop_sequence) {
            (Some(FinishReason::StopSequence), Some(s)) => Value::String(s.clone()),
            _ => Value::Null,
        }
    }
}

fn stop_reason(f: Option<FinishReason>) -> &'static str {
    match f {
        Some(FinishReason::Length) => "max_tokens",
        Some(FinishReason::StopSequence) => "stop_sequence",
        Some(FinishReason::ContextWindow) => "model_context_window_exceeded",
        Some(FinishReason::ToolCalls | FinishReason::FunctionCall) => "tool_use",
        Some(FinishReason::ContentFilter) => "refusal",
        Some(FinishReason::Stop) | None => "end_turn",
    }
}

fn usage_json(u: Option<Usage>) -> Value {
    let u = u.unwrap_or_default();
    let cached = u.cached_tokens();
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(cached),
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    })
}

fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else if id.is_empty() {
        format!("msg_{:016x}", fastrand::u64(..))
    } else {
        format!("msg_{id}")
    }
}

fn tool_input(arguments: &str) -> Value {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// Encodes a canonical response as an Anthropic message. With `thinking` (the client asked for
/// extended thinking), the provider's reasoning text comes first as a `thinking` block; it has
/// no signature (only Anthropic signs its thinking), so the block's `signature` is empty.
pub fn encode_response(resp: &ChatResponse, asked: &Asked) -> Bytes {
    let thinking = asked.thinking;
    let mut content = Vec::new();
    let choice = resp.choices.first();
    if let Some(c) = choice {
        if let Some(r) = c
            .message
            .reasoning_content
            .as_deref()
            .filter(|r| thinking && !r.is_empty())
        {
            content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
        }
        let text = c.message.content_text();
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        if let Some(calls) = &c.message.tool_calls {
            for call in calls {
                content.push(json!({
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.function.name,
                    "input": tool_input(&call.function.arguments),
                }));
            }
        }
    }
    let v = json!({
        "id": message_id(&resp.id),
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": stop_reason(choice.and_then(|c| c.finish_reason)),
        "stop_sequence": asked.stop_sequence(choice.and_then(|c| c.finish_reason)),
        "usage": usage_json(resp.usage),
    });
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Block {
    None,
    Thinking(usize),
    Text(usize),
    Tool { block: usize, tool: u32 },
}

/// Turns canonical chunks into Anthropic SSE events.
#[derive(Debug)]
pub struct StreamEncoder {
    started: bool,
    /// The chunks carry the upstream's own events ([`ChatChunk::raw`]), which are written as
    /// they came; the stream's framing is the upstream's too.
    raw: bool,
    next_index: usize,
    open: Block,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    input_estimate: u64,
    model: String,
    /// What the client asked for (extended thinking: reasoning deltas become a `thinking`
    /// block; its one stop sequence).
    asked: Asked,
}

fn event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

/// A `content_block_delta` event with a text delta, written straight into `out`: it is nearly every
/// event of a streamed answer, and building a `Value` for it (two maps, a copy of the text) cost
/// more than writing it. Fields in the order Anthropic sends them.
fn text_delta(out: &mut Vec<u8>, index: usize, text: &str) {
    use std::io::Write as _;
    out.extend_from_slice(
        b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
    );
    let _ = write!(out, "{index}");
    out.extend_from_slice(b",\"delta\":{\"type\":\"text_delta\",\"text\":");
    let _ = serde_json::to_writer(&mut *out, text);
    out.extend_from_slice(b"}}\n\n");
}

impl StreamEncoder {
    /// A new encoder; `input_estimate` fills `message_start.usage.input_tokens`.
    pub fn new(model: &str, input_estimate: u64) -> Self {
        StreamEncoder {
            started: false,
            raw: false,
            next_index: 0,
            open: Block::None,
            finish: None,
            usage: None,
            input_estimate,
            model: model.to_owned(),
            asked: Asked::default(),
        }
    }

    /// Encodes for what the client asked: with extended thinking, reasoning deltas are passed
    /// on as a `thinking` block (without, they are left out, as Anthropic leaves thinking out);
    /// its one stop sequence names the end of an answer that stopped on it.
    #[must_use]
    pub fn asked(mut self, asked: Asked) -> Self {
        self.asked = asked;
        self
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let index = match self.open {
            Block::None => return,
            Block::Thinking(i) => {
                // Anthropic ends a thinking block with its signature; a provider's reasoning
                // has none.
                event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": i, "delta": {"type": "signature_delta", "signature": ""}}),
                );
                i
            }
            Block::Text(i) => i,
            Block::Tool { block, .. } => block,
        };
        event(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
        self.open = Block::None;
    }

    /// The index of the open block when it is of `kind`'s kind (thinking or text), else of a new
    /// one started with `content_block` (any other open block closed first).
    fn block(&mut self, out: &mut Vec<u8>, kind: Block, content_block: Value) -> usize {
        match (self.open, kind) {
            (Block::Thinking(i), Block::Thinking(_)) | (Block::Text(i), Block::Text(_)) => i,
            _ => {
                self.close(out);
                let i = self.next_index;
                self.next_index += 1;
                event(
                    out,
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": i, "content_block": content_block}),
                );
                self.open = match kind {
                    Block::Thinking(_) => Block::Thinking(i),
                    _ => Block::Text(i),
                };
                i
            }
        }
    }

    /// Appends the events for one chunk to `out`: the upstream's own event when the chunk carries
    /// one (an Anthropic upstream in pass-through), else events encoded from its fields.
    pub fn chunk(&mut self, chunk: &ChatChunk, out: &mut Vec<u8>) {
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        if let Some(raw) = &chunk.raw {
            self.started = true;
            self.raw = true;
            out.extend_from_slice(raw);
            return;
        }
        if !self.started {
            self.started = true;
            if !chunk.model.is_empty() {
                self.model.clone_from(&chunk.model);
            }
            event(
                out,
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": message_id(&chunk.id),
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": self.input_estimate, "output_tokens": 0},
                }}),
            );
        }
        for c in &chunk.choices {
            if c.index != 0 {
                continue;
            }
            if let Some(r) = c
                .delta
                .reasoning_content
                .as_deref()
                .filter(|r| self.asked.thinking && !r.is_empty())
            {
                let index = self.block(
                    out,
                    Block::Thinking(0),
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                );
                event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": r}}),
                );
            }
            if let Some(text) = c.delta.content.as_deref().filter(|t| !t.is_empty()) {
                let index = self.block(out, Block::Text(0), json!({"type": "text", "text": ""}));
                text_delta(out, index, text);
            }
            if let Some(calls) = &c.delta.tool_calls {
                for d in calls {
                    let same = matches!(self.open, Block::Tool { tool, .. } if tool == d.index);
                    if d.id.is_some() && !same {
                        self.close(out);
                        let i = self.next_index;
                        self.next_index += 1;
                        let name = d
                            .function
                            .as_ref()
                            .and_then(|f| f.name.clone())
                            .unwrap_or_default();
                        event(
                            out,
                            "content_block_start",
                            &json!({"type": "content_block_start", "index": i, "content_block": {
                                "type": "tool_use", "id": d.id, "name": name, "input": {}
                            }}),
                        );
                        self.open = Block::Tool {
                            block: i,
                            tool: d.index,
                        };
                    }
                    if let Block::Tool { block, .. } = self.open {
                        if let Some(args) = d.function.as_ref().and_then(|f| f.arguments.as_deref())
                        {
                            if !args.is_empty() {
                                event(
                                    out,
                                    "content_block_delta",
                                    &json!({"type": "content_block_delta", "index": block, "delta": {
                                        "type": "input_json_delta", "partial_json": args
                                    }}),
                                );
                            }
                        }
                    }
                }
            }
            if c.finish_reason.is_some() {
                self.finish = c.finish_reason;
                self.close(out);
            }
        }
    }

    /// Appends the closing events to `out` (after a `message_start` if no chunk came).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.raw {
            // The upstream's own `message_delta` and `message_stop` went out with its events.
            return;
        }
        if !self.started {
            self.chunk(&ChatChunk::new("", self.model.clone(), 0), out);
        }
        self.close(out);
        let u = self.usage.unwrap_or_default();
        let cached = u.cached_tokens();
        event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(self.finish), "stop_sequence": self.asked.stop_sequence(self.finish)},
                "usage": {"input_tokens": u.prompt_tokens.saturating_sub(cached), "output_tokens": u.completion_tokens,
                          "cache_read_input_tokens": cached}}),
        );
        event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    /// The usage seen so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

/// A `POST /v1/messages/count_tokens` body, decoded as a Messages request.
pub fn decode_count_tokens(body: &[u8]) -> Result<ChatRequest, ApiError> {
    // count_tokens has no max_tokens; add one so the request decodes.
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.entry("max_tokens").or_insert(json!(1));
    }
    let bytes = serde_json::to_vec(&v).unwrap_or_default();
    decode_request(&bytes)
}

/// The `count_tokens` answer for `n` input tokens.
pub fn count_tokens_answer(n: u64) -> Bytes {
    Bytes::from(format!("{{\"input_tokens\":{n}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::types::{Delta, FunctionCallDelta, ToolCallDelta};

    /// SDKs send `null` for an optional member they were given `None` for.
    #[test]
    fn null_optional_members_are_absent_ones() {
        let body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
            "system": null, "stop_sequences": null, "temperature": null, "top_p": null, "top_k": null,
            "stream": null, "metadata": null, "tools": null, "tool_choice": null, "fallbacks": null,
            "thinking": null});
        let req = decode_request(body.to_string().as_bytes()).expect("decodes");
        assert_eq!(req.messages.len(), 1);
        assert!(req.fallbacks.is_empty() && req.tools.is_none() && !req.stream);
    }

    #[test]
    fn system_blocks_stay_apart() {
        let body = json!({"model": "m", "max_tokens": 10,
            "system": [{"type": "text", "text": "You are helpful."}, {"type": "text", "text": "Answer in French."}],
            "messages": [{"role": "user", "content": "hi"}]});
        let req = decode_request(body.to_string().as_bytes()).expect("decodes");
        assert_eq!(
            req.messages[0].content_text(),
            "You are helpful.\n\nAnswer in French."
        );
    }

    #[test]
    fn request_with_tools_and_results_decodes_to_openai_shape() {
        let body = json!({
            "model": "claude-x", "max_tokens": 100, "system": [{"type": "text", "text": "Be terse."}],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}, {"type": "text", "text": "thanks"}]}
            ],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"], "stream": true
        });
        let r = decode_request(&serde_json::to_vec(&body).unwrap()).unwrap();
        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            vec![
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::User
            ]
        );
        assert_eq!(
            r.messages[2].tool_calls.as_ref().unwrap()[0]
                .function
                .arguments,
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(
            r.tool_choice,
            Some(ToolChoice::Mode(ToolChoiceMode::Required))
        );
        assert_eq!(r.parallel_tool_calls, Some(false));
        assert_eq!(r.max_tokens, Some(100));
        assert!(r.stream && r.wants_stream_usage());
    }

    #[test]
    fn missing_max_tokens_is_a_clear_400() {
        let e = decode_request(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
            .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("max_tokens"));
        assert_eq!(decode_request(b"{not json").unwrap_err().status, 400);
    }

    #[test]
    fn a_text_delta_is_the_event_anthropic_sends() {
        for text in [
            "Hi",
            "quote \" and \\ backslash",
            "line\nbreak\ttab\u{1}\u{7f}",
            "é 🐢 \u{2028}",
        ] {
            let mut out = Vec::new();
            text_delta(&mut out, 7, text);
            let s = String::from_utf8(out).unwrap();
            let data = s
                .strip_prefix("event: content_block_delta\ndata: ")
                .and_then(|d| d.strip_suffix("\n\n"))
                .unwrap_or_else(|| panic!("one event: {s:?}"));
            assert!(!data.contains(['\n', '\r']), "{data:?}");
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(
                v,
                json!({"type": "content_block_delta", "index": 7, "delta": {"type": "text_delta", "text": text}})
            );
            assert!(
                data.starts_with(r#"{"type":"content_block_delta","index":7,"delta":{"type":"text_delta","text":"#),
                "in the order Anthropic sends: {data}"
            );
        }
    }

    /// The event names of an SSE text, in order.
    fn event_names(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect()
    }

    /// A stream that ends before any chunk still starts with `message_start` (the SDKs require
    /// it); the encoder used to build that event and drop it.
    #[test]
    fn a_stream_that_stopped_on_a_sequence_says_which() {
        let asked = |stops: &[&str]| {
            Asked::of(&ChatRequest {
                stop: Some(Stop::Many(stops.iter().map(|s| (*s).to_owned()).collect())),
                ..ChatRequest::default()
            })
        };
        for (stops, reason, want) in [
            (&["END"][..], FinishReason::StopSequence, json!("END")),
            (
                &["END", "STOP"][..],
                FinishReason::StopSequence,
                Value::Null,
            ),
            (&["END"][..], FinishReason::Stop, Value::Null),
        ] {
            let mut enc = StreamEncoder::new("m", 3).asked(asked(stops));
            let mut out = Vec::new();
            let mut chunk = ChatChunk::new("id", "m".to_owned(), 0);
            chunk.choices.push(gateway_core::types::ChunkChoice {
                index: 0,
                delta: gateway_core::types::Delta {
                    content: Some("Four".to_owned()),
                    ..Default::default()
                },
                finish_reason: Some(reason),
            });
            enc.chunk(&chunk, &mut out);
            enc.finish(&mut out);
            let text = String::from_utf8(out).unwrap();
            let delta = text
                .split("\n\n")
                .find(|e| e.starts_with("event: message_delta"))
                .and_then(|e| e.split_once("data: "))
                .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap())
                .unwrap();
            let name = if reason == FinishReason::Stop {
                "end_turn"
            } else {
                "stop_sequence"
            };
            assert_eq!(delta["delta"]["stop_reason"], name, "{text}");
            assert_eq!(delta["delta"]["stop_sequence"], want, "{stops:?}: {text}");
        }
    }

    #[test]
    fn an_empty_stream_still_starts_its_message() {
        let mut enc = StreamEncoder::new("m", 3);
        let mut out = Vec::new();
        enc.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        let names = event_names(&text);
        assert_eq!(
            names,
            vec!["message_start", "message_delta", "message_stop"]
        );
    }

    #[test]
    fn stream_events_are_well_formed() {
        let mut enc = StreamEncoder::new("m", 12);
        let base = ChatChunk::new("abc", "m", 0);
        let mut out = Vec::new();
        let text = |t: &str| Delta {
            content: Some(t.into()),
            ..Delta::default()
        };
        enc.chunk(&base.clone().with_delta(text("Hi"), None), &mut out);
        enc.chunk(
            &base.clone().with_delta(
                Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: 0,
                        id: Some("call_1".into()),
                        kind: Some("function".into()),
                        function: Some(FunctionCallDelta {
                            name: Some("f".into()),
                            arguments: Some("{\"a\"".into()),
                        }),
                    }]),
                    ..Delta::default()
                },
                None,
            ),
            &mut out,
        );
        enc.chunk(
            &base.clone().with_delta(
                Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: 0,
                        function: Some(FunctionCallDelta {
                            name: None,
                            arguments: Some(":1}".into()),
                        }),
                        ..ToolCallDelta::default()
                    }]),
                    ..Delta::default()
                },
                Some(FinishReason::ToolCalls),
            ),
            &mut out,
        );
        let mut usage_chunk = base;
        usage_chunk.usage = Some(Usage::new(12, 5, 0));
        enc.chunk(&usage_chunk, &mut out);
        enc.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        let names = event_names(&text);
        assert_eq!(
            names,
            vec![
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(text.contains("\"stop_reason\":\"tool_use\""));
        assert!(text.contains("\"output_tokens\":5"));
        assert!(text.contains("\"id\":\"msg_abc\""));
    }
}
