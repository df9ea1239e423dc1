//! Canonical request and response types.
//!
//! They follow the OpenAI chat-completions schema, which is the richest common denominator of the
//! providers, with a few additions (for example `top_k`) so that Anthropic, Gemini, Bedrock Converse
//! and Cohere requests convert into them and back without losing fields that matter. Fields the
//! gateway does not know are kept in `extra` and passed through to OpenAI-shaped upstreams.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The newer name OpenAI uses for system instructions.
    Developer,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

/// A message's content: plain text or a list of parts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Text and image parts.
    Parts(Vec<ContentPart>),
}

impl Content {
    /// All text parts joined (images are skipped).
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => {
                let mut out = String::new();
                for p in parts {
                    if let ContentPart::Text { text } = p {
                        out.push_str(text);
                    }
                }
                out
            }
        }
    }

    /// Number of bytes of text, used for token estimates.
    pub fn text_len(&self) -> usize {
        match self {
            Content::Text(t) => t.len(),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match p {
                    ContentPart::Text { text } => text.len(),
                    ContentPart::ImageUrl { .. } => 0,
                    ContentPart::Other(v) => v.to_string().len(),
                })
                .sum(),
        }
    }
}

/// One part of a multi-part message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// A text part.
    Text {
        /// The text.
        text: String,
    },
    /// An image given by URL or `data:` URL.
    ImageUrl {
        /// The image reference.
        image_url: ImageUrl,
    },
    /// Any other part type (audio, files...), kept as is.
    #[serde(untagged)]
    Other(Value),
}

/// An image reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUrl {
    /// `https://...` or `data:<mime>;base64,<data>`.
    pub url: String,
    /// `auto`, `low` or `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ImageUrl {
    /// Splits a `data:` URL into media type and base64 data.
    pub fn as_data(&self) -> Option<(&str, &str)> {
        let rest = self.url.strip_prefix("data:")?;
        let (meta, data) = rest.split_once(',')?;
        let mime = meta.strip_suffix(";base64")?;
        Some((mime, data))
    }
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its content; `None` for an assistant turn that only calls tools.
    #[serde(default)]
    pub content: Option<Content>,
    /// Optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls made by the assistant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// For `role: tool`, the call this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A refusal message from the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Reasoning text some providers return (never sent back upstream by adapters that reject it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// An assistant turn's earlier audio answer (`{"id": ...}`), which OpenAI needs back to
    /// continue an audio conversation; passed to OpenAI-format upstreams, ignored by the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<Value>,
    /// A tool result that reports a failure (Anthropic's `tool_result.is_error`; its text also
    /// starts with `Error: `): Bedrock's `toolResult.status: "error"`. Not an OpenAI field.
    #[serde(skip)]
    pub tool_error: bool,
}

impl Message {
    /// A message with text content.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: Some(Content::Text(text.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            refusal: None,
            reasoning_content: None,
            audio: None,
            tool_error: false,
        }
    }

    /// The text of the content, empty if none.
    pub fn content_text(&self) -> String {
        self.content.as_ref().map(Content::text).unwrap_or_default()
    }
}

/// A function call made by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call id, echoed by the tool result.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The function and its arguments.
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_owned()
}

/// A function name and its JSON-encoded arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// The arguments as a JSON string (as OpenAI sends them).
    #[serde(default)]
    pub arguments: String,
}

/// A tool the model may call: a function, or another kind of tool an OpenAI-format upstream may
/// know (`custom` tools), kept as the client wrote it.
///
/// Deserialisation is hand-written (see [`de`]): serde's `flatten` would buffer every tool,
/// schema and all, before reading it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tool {
    /// `function`, or another kind (`custom`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The function's declaration; empty for other kinds of tool.
    #[serde(default, skip_serializing_if = "FunctionDef::is_empty")]
    pub function: FunctionDef,
    /// The tool's other members (a `custom` tool's `custom`), passed to OpenAI-format upstreams;
    /// other adapters send only function tools ([`Tool::is_function`]).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Tool {
    /// A function tool.
    pub fn function(function: FunctionDef) -> Self {
        Tool {
            kind: function_type(),
            function,
            other: Map::new(),
        }
    }

    /// Whether it is a function tool, the one kind every provider knows.
    pub fn is_function(&self) -> bool {
        self.kind == "function"
    }
}

/// A function declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FunctionDef {
    /// Its name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Structured-output strictness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl FunctionDef {
    /// Whether nothing declares it (the function of a tool that is not one).
    pub fn is_empty(&self) -> bool {
        self.name.is_empty()
            && self.description.is_none()
            && self.parameters.is_none()
            && self.strict.is_none()
    }
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `none`, `auto` or `required`.
    Mode(ToolChoiceMode),
    /// A named function.
    Named(NamedToolChoice),
    /// Any other form (OpenAI's `allowed_tools`, a named `custom` tool), kept as the client
    /// wrote it for OpenAI-format upstreams; other adapters treat it as `auto`.
    Other(Value),
}

/// The string forms of `tool_choice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceMode {
    /// Never call a tool.
    None,
    /// The model decides.
    Auto,
    /// Call at least one tool.
    Required,
}

/// `{"type":"function","function":{"name":..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedToolChoice {
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The function to call.
    pub function: NamedFunction,
}

/// The name of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedFunction {
    /// Its name.
    pub name: String,
}

impl ToolChoice {
    /// The named function, if the choice names one.
    pub fn function_name(&self) -> Option<&str> {
        match self {
            ToolChoice::Named(n) => Some(&n.function.name),
            ToolChoice::Mode(_) | ToolChoice::Other(_) => None,
        }
    }
}

/// Stop sequences: one string or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// A single sequence.
    One(String),
    /// Several sequences.
    Many(Vec<String>),
}

impl Stop {
    /// As a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Plain text.
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// `{name, schema, strict}`.
        json_schema: JsonSchemaFormat,
    },
}

/// A named JSON schema for structured output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    /// The schema's name.
    pub name: String,
    /// The schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// Strict mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `stream_options`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StreamOptions {
    /// Send a final chunk with usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// A chat request in canonical form.
///
/// Deserialisation is hand-written (see [`de`]): one pass over the JSON object, known fields into
/// their slots and unknown ones into `extra`, without serde's `flatten` buffering.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ChatRequest {
    /// The public model name: a route, `provider/model`, or a bare model.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Legacy output limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Output limit (o-series name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k sampling (Anthropic, Gemini, Cohere; not OpenAI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Number of choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Presence penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// End-user identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// Tool choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Whether several tools may be called at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Output format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Reasoning effort (`low`, `medium`, `high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// A thinking budget in tokens, as an Anthropic client asks for it (`thinking.budget_tokens`).
    /// It also asks for the reasoning back. An adapter whose provider thinks by budget sends it
    /// as its own field (Gemini's `thinkingBudget`, Claude's `thinking` on Bedrock); one whose
    /// provider takes an effort sends [`ChatRequest::thinking_effort`], and only to models that
    /// reason; others leave it out. Not an OpenAI field: never serialized.
    #[serde(skip)]
    pub thinking_budget: Option<u32>,
    /// An Anthropic client's adaptive thinking (`thinking: {"type": "adaptive"}`): the model
    /// decides how much to think, and the reasoning comes back. Never serialized.
    #[serde(skip)]
    pub thinking_adaptive: bool,
    /// An Anthropic client's `output_config.effort` (`low`, `medium`, `high`, `xhigh`, `max`):
    /// sent as a reasoning effort where a provider takes one, to models that reason
    /// ([`ChatRequest::thinking_effort`]). Never serialized.
    #[serde(skip)]
    pub effort: Option<String>,
    /// Stream the answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Stream options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Gateway extension: models to try when the primary fails (`provider/model` or routes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// Fields this type does not model; passed through to OpenAI-shaped upstreams.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The client's own request, as it came, in a format this type does not model in full
    /// (Anthropic Messages: cache breakpoints, thinking blocks and their signatures, server
    /// tools...). A caller that keeps it also asks for pass-through in that format
    /// ([`Call::passthrough`](crate::provider::Call::passthrough)), and an adapter whose upstream
    /// speaks it sends this body with the model replaced instead of encoding the fields above.
    /// Never serialized.
    #[serde(skip)]
    pub native: Option<NativeRequest>,
}

/// A client's own request in a format [`ChatRequest`] does not model in full
/// ([`ChatRequest::native`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NativeRequest {
    /// The body, as it came.
    pub body: bytes::Bytes,
    /// Request headers of that format that change what the body means, lowercase names: for
    /// Anthropic Messages, `anthropic-beta` (the beta features the body's members belong to).
    pub headers: Vec<(String, String)>,
    /// The API the body is written for.
    pub api: NativeApi,
}

/// The API a [`NativeRequest`] is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NativeApi {
    /// Anthropic Messages. The request is decoded in full too ([`ChatRequest::messages`]...), so
    /// any provider can serve it; Anthropic ones get the body itself.
    #[default]
    AnthropicMessages,
    /// OpenAI Responses (`POST /v1/responses`). Only `model`, `stream`, `max_output_tokens` and
    /// `fallbacks` are decoded: only providers that speak it can serve it (the rest are passed
    /// over, see [`ChatRequest::openai_only`]).
    OpenAiResponses,
    /// OpenAI's legacy Completions (`POST /v1/completions`, a `prompt` to continue; what vLLM,
    /// Ollama and fill-in-the-middle clients use). Decoded and served like
    /// [`NativeApi::OpenAiResponses`].
    OpenAiCompletions,
}

impl ChatRequest {
    /// Whether this is an OpenAI Responses request: its body is only in [`Self::native`].
    pub fn is_responses(&self) -> bool {
        self.openai_only() == Some(NativeApi::OpenAiResponses)
    }

    /// The OpenAI API this request is written for when only OpenAI-format providers can serve
    /// it (Responses, legacy Completions): its body is only in [`Self::native`].
    pub fn openai_only(&self) -> Option<NativeApi> {
        self.native
            .as_ref()
            .map(|n| n.api)
            .filter(|a| matches!(a, NativeApi::OpenAiResponses | NativeApi::OpenAiCompletions))
    }

    /// The output limit the caller asked for, whichever field carried it.
    pub fn output_limit(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// The reasoning effort this request asks for: its own `reasoning_effort`, else an
    /// Anthropic client's [`effort`](ChatRequest::effort) (`xhigh` and `max` as `high`), else the
    /// effort of its [`thinking budget`](ChatRequest::thinking_budget) (below 4,096 tokens
    /// `low`, below 16,384 `medium`, else `high`).
    pub fn thinking_effort(&self) -> Option<&str> {
        if let Some(e) = self.reasoning_effort.as_deref() {
            return Some(e);
        }
        if let Some(e) = self.effort.as_deref() {
            return Some(match e {
                "low" => "low",
                "medium" => "medium",
                _ => "high",
            });
        }
        Some(match self.thinking_budget? {
            0..=4095 => "low",
            4096..=16383 => "medium",
            _ => "high",
        })
    }

    /// A cheap estimate of input tokens (about four bytes per token, plus per-message overhead).
    pub fn estimate_input_tokens(&self) -> u64 {
        if let Some(n) = self
            .native
            .as_ref()
            .filter(|_| self.openai_only().is_some())
        {
            return (n.body.len() as u64).div_ceil(4).max(1);
        }
        let mut bytes = 0usize;
        for m in &self.messages {
            bytes += 16;
            if let Some(c) = &m.content {
                bytes += c.text_len();
            }
            if let Some(calls) = &m.tool_calls {
                for c in calls {
                    bytes += c.function.name.len() + c.function.arguments.len();
                }
            }
        }
        if let Some(tools) = &self.tools {
            for t in tools {
                bytes += t.function.name.len()
                    + t.function.description.as_ref().map_or(0, String::len)
                    + t.function
                        .parameters
                        .as_ref()
                        .map_or(0, |p| p.to_string().len());
            }
        }
        (bytes as u64).div_ceil(4)
    }

    /// Whether the caller asked for a usage chunk at the end of a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end (or a stop sequence, from a provider that does not say which).
    Stop,
    /// Output limit reached.
    Length,
    /// The model called tools.
    ToolCalls,
    /// Content was filtered.
    ContentFilter,
    /// Legacy function call.
    FunctionCall,
    /// One of the request's stop sequences, from a provider that says so (Anthropic, Bedrock,
    /// Cohere): OpenAI's `stop`, Anthropic's `stop_sequence`.
    #[serde(rename = "stop", skip_deserializing)]
    StopSequence,
    /// The model's context window filled up before the output limit (Anthropic's and Bedrock's
    /// `model_context_window_exceeded`): OpenAI's `length`.
    #[serde(rename = "length", skip_deserializing)]
    ContextWindow,
}

impl FinishReason {
    /// Whether the answer was cut short by a limit (OpenAI's `length`).
    pub fn is_length(self) -> bool {
        matches!(self, FinishReason::Length | FinishReason::ContextWindow)
    }
}

/// Token usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Usage {
    /// Input tokens, cached ones included.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens, reasoning included.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Sum of the two.
    #[serde(default)]
    pub total_tokens: u64,
    /// Details of the prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Details of the completion tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

/// Cached-token accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PromptTokensDetails {
    /// Input tokens served from the provider's cache.
    #[serde(default)]
    pub cached_tokens: u64,
}

/// Reasoning-token accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CompletionTokensDetails {
    /// Output tokens spent on reasoning.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Usage from prompt, completion and cached counts.
    pub fn new(prompt: u64, completion: u64, cached: u64) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            prompt_tokens_details: (cached > 0).then_some(PromptTokensDetails {
                cached_tokens: cached,
            }),
            completion_tokens_details: None,
        }
    }

    /// Cached input tokens.
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
}

/// One answer of a chat response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Position among the choices.
    pub index: u32,
    /// The assistant's message.
    pub message: Message,
    /// Why it stopped.
    pub finish_reason: Option<FinishReason>,
    /// Token log probabilities, when asked for and the provider gives them (OpenAI's shape,
    /// kept as it came).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
}

/// A chat response in canonical form (hand-written deserialisation, like [`ChatRequest`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatResponse {
    /// Response id.
    pub id: String,
    /// Always `chat.completion`.
    #[serde(default = "chat_completion")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The answers.
    pub choices: Vec<Choice>,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Provider-specific extras, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The upstream's own body, passed on as it came, when the call asked for it
    /// ([`Call::passthrough`](crate::provider::Call::passthrough)) and the upstream speaks the
    /// format it named. A consumer that writes that format sends these bytes.
    ///
    /// OpenAI chat completions: a complete `chat.completion`, and the decoded fields are
    /// partial: `id`, `created`, `model`, `usage` and each choice's `index` and `finish_reason`
    /// are filled, messages are empty assistant turns, `extra` is empty; a consumer that needs
    /// the content must not ask for passthrough. Anthropic Messages: a complete `message`, and
    /// the decoded fields are complete. Never serialized.
    #[serde(skip)]
    pub raw: Option<bytes::Bytes>,
}

fn chat_completion() -> String {
    "chat.completion".to_owned()
}

fn chat_completion_chunk() -> String {
    "chat.completion.chunk".to_owned()
}

/// A fragment of a tool call in a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ToolCallDelta {
    /// Which call this fragment belongs to.
    pub index: u32,
    /// Present on the first fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function` on the first fragment.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name and argument fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCallDelta>,
}

/// Fragment of a function call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FunctionCallDelta {
    /// The name, on the first fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A piece of the JSON arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// What a stream chunk adds to the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Delta {
    /// `assistant` on the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Text to append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Reasoning text to append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Refusal text to append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Tool-call fragments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// One choice of a stream chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Position among the choices.
    pub index: u32,
    /// What this chunk adds.
    #[serde(default)]
    pub delta: Delta,
    /// Set on the last chunk of this choice.
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
}

/// A streamed chunk in canonical (OpenAI) form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// Response id, the same on every chunk.
    #[serde(default)]
    pub id: String,
    /// Always `chat.completion.chunk`.
    #[serde(default = "chat_completion_chunk")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answers.
    #[serde(default)]
    pub model: String,
    /// Choice deltas; empty on the usage chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Usage, on the last chunk.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The upstream's own text for this chunk, passed on as it came, when the call asked for raw
    /// chunks ([`Call::passthrough`](crate::provider::Call::passthrough)) and the upstream speaks
    /// the format it named.
    ///
    /// OpenAI chat completions: it is a complete `chat.completion.chunk` without usage (usage always comes
    /// decoded, on its own chunk), and the decoded fields are partial: each choice has its
    /// `index` and `finish_reason` but an empty delta, and `id` and `model` may be empty. A
    /// consumer that writes the OpenAI format sends these bytes instead of encoding the chunk;
    /// a consumer that needs the content must not ask for raw chunks. Never serialized.
    ///
    /// It may also be a *run*: several such chunks that came one after the other, joined by
    /// `\n\ndata: `, so that `data: {raw}\n\n` is their SSE text, exactly as the upstream sent
    /// it. A run's `choices` are only those of its chunks that carry a finish reason.
    ///
    /// Anthropic Messages ([`Passthrough::AnthropicMessages`](crate::provider::Passthrough)):
    /// the whole SSE text of one upstream event, `event: {name}\ndata: {json}\n\n`, or of
    /// several that came together; every event of the stream (pings and block boundaries
    /// included) in order. Its decoded fields are partial: `usage` when its events carried it
    /// (the stream's final one comes with `message_stop`), and a choice with an empty delta for
    /// the `finish_reason` of `message_delta`.
    #[serde(skip)]
    pub raw: Option<bytes::Bytes>,
}

/// Whether an OpenAI chunk's JSON is a lone opening chunk: a role, content empty or null, no
/// tool call, refusal or reasoning.
fn openai_role_only(json: &str) -> bool {
    let empty_after = |key: &str| match json.find(key) {
        None => true,
        Some(at) => {
            let rest = json[at + key.len()..].trim_start();
            let rest = rest.strip_prefix(':').map_or(rest, str::trim_start);
            rest.starts_with("\"\"") || rest.starts_with("null")
        }
    };
    !json.contains("\n\ndata:")
        && json.contains("\"role\"")
        && !json.contains("\"tool_calls\"")
        && !json.contains("\"reasoning")
        && empty_after("\"content\"")
        && empty_after("\"refusal\"")
}

/// Events an Anthropic stream opens with before any content.
const ANTHROPIC_PREAMBLE: [&str; 2] = ["message_start", "ping"];

impl ChatChunk {
    /// Whether it opens a stream without saying anything yet: a role with no content (OpenAI's
    /// first chunk), Anthropic's `message_start` and `ping`. An upstream that fails right after
    /// such a start has still sent the client nothing it can use, so the request may go
    /// elsewhere ([`crate::engine::Engine::chat_stream`] holds these chunks until content).
    pub fn is_preamble(&self) -> bool {
        if let Some(raw) = &self.raw {
            // Anthropic's events pass as their SSE text: every event of it must be a preamble
            // one. An OpenAI raw chunk (JSON, or a run of them) is one only when it is a lone
            // role chunk with empty content.
            let Ok(text) = std::str::from_utf8(raw) else {
                return false;
            };
            if !text.starts_with("event:") {
                return openai_role_only(text)
                    && self.choices.iter().all(|c| c.finish_reason.is_none());
            }
            let mut events = text
                .lines()
                .filter_map(|l| l.strip_prefix("event:"))
                .map(str::trim)
                .peekable();
            return events.peek().is_some() && events.all(|e| ANTHROPIC_PREAMBLE.contains(&e));
        }
        let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
        self.usage.is_none()
            && self.choices.iter().all(|c| {
                c.finish_reason.is_none()
                    && empty(&c.delta.content)
                    && empty(&c.delta.reasoning_content)
                    && empty(&c.delta.refusal)
                    && c.delta.tool_calls.as_ref().is_none_or(Vec::is_empty)
            })
    }
}

impl ChatChunk {
    /// An empty chunk with the given identity.
    pub fn new(id: impl Into<String>, model: impl Into<String>, created: u64) -> Self {
        ChatChunk {
            id: id.into(),
            object: chat_completion_chunk(),
            created,
            model: model.into(),
            choices: Vec::new(),
            usage: None,
            raw: None,
        }
    }

    /// The same identity with one choice carrying `delta` and `finish_reason`.
    pub fn with_delta(mut self, delta: Delta, finish_reason: Option<FinishReason>) -> Self {
        self.choices.push(ChunkChoice {
            index: 0,
            delta,
            finish_reason,
        });
        self
    }
}

/// Builds the final message back from stream chunks (used by tests and for logging usage).
#[derive(Debug, Default, Clone)]
pub struct StreamAccumulator {
    /// Response id.
    pub id: String,
    /// Model.
    pub model: String,
    /// Text so far.
    pub content: String,
    /// Tool calls so far.
    pub tool_calls: Vec<ToolCall>,
    /// The finish reason, once seen.
    pub finish_reason: Option<FinishReason>,
    /// Usage, once seen.
    pub usage: Option<Usage>,
    /// Number of chunks seen.
    pub chunks: usize,
}

impl StreamAccumulator {
    /// Adds one chunk.
    pub fn push(&mut self, chunk: &ChatChunk) {
        self.chunks += 1;
        if self.id.is_empty() {
            self.id.clone_from(&chunk.id);
        }
        if self.model.is_empty() {
            self.model.clone_from(&chunk.model);
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        for c in &chunk.choices {
            if let Some(t) = &c.delta.content {
                self.content.push_str(t);
            }
            if let Some(calls) = &c.delta.tool_calls {
                for d in calls {
                    let i = d.index as usize;
                    while self.tool_calls.len() <= i {
                        self.tool_calls.push(ToolCall {
                            id: String::new(),
                            kind: function_type(),
                            function: FunctionCall {
                                name: String::new(),
                                arguments: String::new(),
                            },
                        });
                    }
                    let call = &mut self.tool_calls[i];
                    if let Some(id) = &d.id {
                        call.id.clone_from(id);
                    }
                    if let Some(f) = &d.function {
                        if let Some(n) = &f.name {
                            call.function.name.push_str(n);
                        }
                        if let Some(a) = &f.arguments {
                            call.function.arguments.push_str(a);
                        }
                    }
                }
            }
            if c.finish_reason.is_some() {
                self.finish_reason = c.finish_reason;
            }
        }
    }

    /// The assembled response.
    pub fn into_response(self) -> ChatResponse {
        let tool_calls = (!self.tool_calls.is_empty()).then_some(self.tool_calls);
        ChatResponse {
            id: self.id,
            object: chat_completion(),
            created: 0,
            model: self.model,
            choices: vec![Choice {
                index: 0,
                message: Message {
                    role: Role::Assistant,
                    content: (!self.content.is_empty() || tool_calls.is_none())
                        .then_some(Content::Text(self.content)),
                    name: None,
                    tool_calls,
                    tool_call_id: None,
                    refusal: None,
                    reasoning_content: None,
                    audio: None,
                    tool_error: false,
                },
                finish_reason: self.finish_reason,
                logprobs: None,
            }],
            usage: self.usage,
            extra: Map::new(),
            raw: None,
        }
    }
}

/// Embedding input: one string, several, or token arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One string.
    One(String),
    /// Several strings.
    Many(Vec<String>),
    /// One token array.
    Tokens(Vec<u32>),
    /// Several token arrays.
    ManyTokens(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// The inputs as strings (token arrays are not supported by non-OpenAI providers).
    pub fn texts(&self) -> Vec<String> {
        match self {
            EmbeddingInput::One(s) => vec![s.clone()],
            EmbeddingInput::Many(v) => v.clone(),
            EmbeddingInput::Tokens(_) | EmbeddingInput::ManyTokens(_) => Vec::new(),
        }
    }

    /// Estimated tokens.
    pub fn estimate_tokens(&self) -> u64 {
        match self {
            EmbeddingInput::One(s) => (s.len() as u64).div_ceil(4),
            EmbeddingInput::Many(v) => v.iter().map(|s| (s.len() as u64).div_ceil(4)).sum(),
            EmbeddingInput::Tokens(t) => t.len() as u64,
            EmbeddingInput::ManyTokens(t) => t.iter().map(|t| t.len() as u64).sum(),
        }
    }
}

/// An embeddings request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRequest {
    /// The public model name.
    pub model: String,
    /// What to embed.
    pub input: EmbeddingInput,
    /// `float` or `base64`; the adapters always fetch floats, the server encodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    /// Output dimensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// End-user identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Gateway extension: fallbacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// Cohere's `input_type` (`search_query`, `search_document`, `classification`,
    /// `clustering`), read by the providers that take it and never sent to others.
    #[serde(default, skip_serializing)]
    pub input_type: Option<String>,
}

/// One embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// Always `embedding`.
    #[serde(default = "embedding_object")]
    pub object: String,
    /// Position in the input.
    pub index: u32,
    /// The vector.
    pub embedding: Vec<f32>,
}

fn embedding_object() -> String {
    "embedding".to_owned()
}

/// An embeddings response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingResponse {
    /// Always `list`.
    #[serde(default = "list_object")]
    pub object: String,
    /// The vectors.
    pub data: Vec<Embedding>,
    /// The model that answered.
    pub model: String,
    /// Token usage.
    #[serde(default)]
    pub usage: Option<Usage>,
}

fn list_object() -> String {
    "list".to_owned()
}

/// A model a provider serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Its id.
    pub id: String,
    /// Who owns it.
    #[serde(default)]
    pub owned_by: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
}

/// Hand-written deserialisers of the hot-path types.
mod de {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;

    use super::{ChatRequest, ChatResponse, Content, ContentPart, FunctionDef, Tool};

    /// An object key, borrowed from the input when it has no escapes.
    struct Key<'de>(Cow<'de, str>);

    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct KeyVisitor;
            impl<'de> Visitor<'de> for KeyVisitor {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a field name")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(v.to_owned())))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(v)))
                }
            }
            d.deserialize_str(KeyVisitor)
        }
    }

    impl<'de> Deserialize<'de> for Content {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct ContentVisitor;
            impl<'de> Visitor<'de> for ContentVisitor {
                type Value = Content;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string or an array of content parts")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
                    Ok(Content::Text(v.to_owned()))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Content, E> {
                    Ok(Content::Text(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                    let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                    while let Some(p) = seq.next_element::<ContentPart>()? {
                        parts.push(p);
                    }
                    Ok(Content::Parts(parts))
                }
            }
            d.deserialize_any(ContentVisitor)
        }
    }

    impl<'de> Deserialize<'de> for Tool {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct ToolVisitor;
            impl<'de> Visitor<'de> for ToolVisitor {
                type Value = Tool;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a tool object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tool, A::Error> {
                    let mut tool = Tool::function(FunctionDef::default());
                    while let Some(Key(key)) = map.next_key()? {
                        match &*key {
                            "type" => tool.kind = map.next_value()?,
                            "function" => tool.function = map.next_value()?,
                            _ => {
                                tool.other.insert(key.into_owned(), map.next_value()?);
                            }
                        }
                    }
                    Ok(tool)
                }
            }
            d.deserialize_map(ToolVisitor)
        }
    }

    impl<'de> Deserialize<'de> for ChatRequest {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct RequestVisitor;
            impl<'de> Visitor<'de> for RequestVisitor {
                type Value = ChatRequest;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a chat completion request object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChatRequest, A::Error> {
                    let mut r = ChatRequest::default();
                    let (mut has_model, mut has_messages) = (false, false);
                    while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                        match key.as_ref() {
                            "model" => {
                                r.model = map.next_value()?;
                                has_model = true;
                            }
                            "messages" => {
                                r.messages = map.next_value()?;
                                has_messages = true;
                            }
                            "max_tokens" => r.max_tokens = map.next_value()?,
                            "max_completion_tokens" => {
                                r.max_completion_tokens = map.next_value()?
                            }
                            "temperature" => r.temperature = map.next_value()?,
                            "top_p" => r.top_p = map.next_value()?,
                            "top_k" => r.top_k = map.next_value()?,
                            "n" => r.n = map.next_value()?,
                            "stop" => r.stop = map.next_value()?,
                            "presence_penalty" => r.presence_penalty = map.next_value()?,
                            "frequency_penalty" => r.frequency_penalty = map.next_value()?,
                            "seed" => r.seed = map.next_value()?,
                            "user" => r.user = map.next_value()?,
                            "tools" => r.tools = map.next_value()?,
                            "tool_choice" => r.tool_choice = map.next_value()?,
                            "parallel_tool_calls" => r.parallel_tool_calls = map.next_value()?,
                            "response_format" => r.response_format = map.next_value()?,
                            "reasoning_effort" => r.reasoning_effort = map.next_value()?,
                            "stream" => {
                                r.stream = map.next_value::<Option<bool>>()?.unwrap_or(false)
                            }
                            "stream_options" => r.stream_options = map.next_value()?,
                            "fallbacks" => {
                                r.fallbacks =
                                    map.next_value::<Option<Vec<String>>>()?.unwrap_or_default()
                            }
                            _ => {
                                let v = map.next_value()?;
                                r.extra.insert(key.into_owned(), v);
                            }
                        }
                    }
                    if !has_model {
                        return Err(de::Error::missing_field("model"));
                    }
                    if !has_messages {
                        return Err(de::Error::missing_field("messages"));
                    }
                    Ok(r)
                }
            }
            d.deserialize_map(RequestVisitor)
        }
    }

    impl<'de> Deserialize<'de> for ChatResponse {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct ResponseVisitor;
            impl<'de> Visitor<'de> for ResponseVisitor {
                type Value = ChatResponse;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a chat completion object")
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<ChatResponse, A::Error> {
                    let mut r = ChatResponse {
                        id: String::new(),
                        object: super::chat_completion(),
                        created: 0,
                        model: String::new(),
                        choices: Vec::new(),
                        usage: None,
                        extra: serde_json::Map::new(),
                        raw: None,
                    };
                    let (mut has_id, mut has_model, mut has_choices) = (false, false, false);
                    while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                        match key.as_ref() {
                            "id" => {
                                r.id = map.next_value()?;
                                has_id = true;
                            }
                            "object" => r.object = map.next_value()?,
                            "created" => r.created = map.next_value::<Option<u64>>()?.unwrap_or(0),
                            "model" => {
                                r.model = map.next_value()?;
                                has_model = true;
                            }
                            "choices" => {
                                r.choices = map.next_value()?;
                                has_choices = true;
                            }
                            "usage" => r.usage = map.next_value()?,
                            _ => {
                                let v = map.next_value()?;
                                r.extra.insert(key.into_owned(), v);
                            }
                        }
                    }
                    for (present, name) in [
                        (has_id, "id"),
                        (has_model, "model"),
                        (has_choices, "choices"),
                    ] {
                        if !present {
                            return Err(de::Error::missing_field(name));
                        }
                    }
                    Ok(r)
                }
            }
            d.deserialize_map(ResponseVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_of_every_kind_read_and_write_as_they_came() {
        for text in [
            r#"{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object"},"strict":true}}"#,
            r#"{"type":"custom","custom":{"name":"code_exec","format":{"type":"grammar","grammar":{"syntax":"lark","definition":"x"}}}}"#,
            r#"{"type":"function","function":{"name":"g"},"cache_control":{"type":"ephemeral"}}"#,
        ] {
            let tool: Tool = serde_json::from_str(text).expect("a tool");
            let back: Value = serde_json::to_value(&tool).expect("json");
            assert_eq!(
                back,
                serde_json::from_str::<Value>(text).expect("json"),
                "{text}"
            );
        }
        let custom: Tool =
            serde_json::from_str(r#"{"type":"custom","custom":{"name":"x"}}"#).expect("a tool");
        assert!(!custom.is_function() && custom.function.is_empty());
        let bare: Tool = serde_json::from_str(r#"{"function":{"name":"f"}}"#).expect("a tool");
        assert!(bare.is_function(), "a tool without a type is a function");
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        let e = serde_json::from_str::<ChatRequest>(r#"{"messages":[]}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `model`"), "{e}");
        let e = serde_json::from_str::<ChatRequest>(r#"{"model":"m"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `messages`"), "{e}");
        let e = serde_json::from_str::<ChatRequest>(r#"{"model":"m","messages":[{"role":"x"}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
        let r: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[],"stream":null,"fallbacks":null,"x\u0079":1}"#,
        )
        .unwrap();
        assert!(!r.stream && r.fallbacks.is_empty());
        assert_eq!(
            r.extra.get("xy"),
            Some(&serde_json::json!(1)),
            "escaped keys work"
        );
        let resp: ChatResponse = serde_json::from_str(
            r#"{"id":"a","model":"m","choices":[],"created":null,"system_fingerprint":"fp"}"#,
        )
        .unwrap();
        assert_eq!(resp.object, "chat.completion");
        assert_eq!(
            resp.extra.get("system_fingerprint"),
            Some(&serde_json::json!("fp"))
        );
    }

    #[test]
    fn openai_request_round_trips_with_unknown_fields() {
        let raw = serde_json::json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
            "stop": "END",
            "seed": 7,
            "stream": true,
            "stream_options": {"include_usage": true},
            "logit_bias": {"50256": -100}
        });
        let req: ChatRequest = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(req.messages.len(), 4);
        assert_eq!(
            req.tool_choice.as_ref().and_then(|c| c.function_name()),
            Some("f")
        );
        assert!(req.wants_stream_usage());
        assert!(
            req.extra.contains_key("logit_bias"),
            "unknown fields are kept"
        );
        let back = serde_json::to_value(&req).unwrap();
        assert_eq!(
            back, raw,
            "canonical form serialises back to the same OpenAI body"
        );
    }

    #[test]
    fn accumulator_rebuilds_tool_calls() {
        let mut acc = StreamAccumulator::default();
        let c = ChatChunk::new("x", "m", 0);
        acc.push(&c.clone().with_delta(
            Delta {
                tool_calls: Some(vec![ToolCallDelta {
                    index: 0,
                    id: Some("call_1".into()),
                    kind: Some("function".into()),
                    function: Some(FunctionCallDelta {
                        name: Some("f".into()),
                        arguments: Some(String::new()),
                    }),
                }]),
                ..Delta::default()
            },
            None,
        ));
        for part in ["{\"a\"", ":1}"] {
            acc.push(&c.clone().with_delta(
                Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: 0,
                        function: Some(FunctionCallDelta {
                            name: None,
                            arguments: Some(part.into()),
                        }),
                        ..ToolCallDelta::default()
                    }]),
                    ..Delta::default()
                },
                None,
            ));
        }
        acc.push(&c.with_delta(Delta::default(), Some(FinishReason::ToolCalls)));
        let resp = acc.into_response();
        let msg = &resp.choices[0].message;
        let calls = msg.tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].function.arguments, "{\"a\":1}");
        assert_eq!(resp.choices[0].finish_reason, Some(FinishReason::ToolCalls));
        assert!(msg.content.is_none());
    }
}

#[cfg(test)]
mod preamble_tests {
    use super::*;

    fn raw(text: &str) -> ChatChunk {
        let mut c: ChatChunk = serde_json::from_str("{}").unwrap();
        c.raw = Some(bytes::Bytes::from(text.to_owned()));
        c
    }

    #[test]
    fn opening_chunks_without_content_are_preambles() {
        assert!(raw(r#"{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"finish_reason":null}]}"#).is_preamble());
        assert!(
            raw(r#"{"choices":[{"delta":{"role": "assistant", "content": null}}]}"#).is_preamble()
        );
        assert!(
            !raw(r#"{"choices":[{"delta":{"role":"assistant","content":"Hi"}}]}"#).is_preamble()
        );
        assert!(!raw(r#"{"choices":[{"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0}]}}]}"#).is_preamble());
        // A run of chunks carries content.
        assert!(!raw("{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}").is_preamble());
        assert!(raw("event: message_start\ndata: {}\n\nevent: ping\ndata: {}\n\n").is_preamble());
        assert!(
            !raw("event: message_start\ndata: {}\n\nevent: content_block_delta\ndata: {}\n\n")
                .is_preamble()
        );
        // Decoded chunks.
        let mut c: ChatChunk = serde_json::from_str(
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        )
        .unwrap();
        assert!(c.is_preamble());
        c.choices[0].delta.content = Some("x".into());
        assert!(!c.is_preamble());
    }
}
