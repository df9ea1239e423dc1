//! What the mock answers: a deterministic plan computed from the request.
//!
//! Every dialect parses its request into a [`Prompt`] (text size, last turn, tools); the
//! [`Plan`] then decides between the configured reply text, a tool call (when tools are offered
//! and the last turn is user text) or `Tool said: <result>` (when the last turn is a tool
//! result). Token counts are the same for the streamed and the non-streamed answer:
//! prompt tokens = characters / 4 (at least 1), completion tokens = number of chunks.

use std::sync::Arc;

use serde_json::Value;

/// The last turn of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LastTurn {
    /// A user message with this text.
    User(String),
    /// A tool result with this text.
    ToolResult(String),
    /// Anything else (assistant turn, empty conversation).
    Other,
}

/// Which tool the request asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToolChoice {
    /// Model's choice (`auto`, `required`, `any`): the mock picks the first tool.
    Auto,
    /// Tools must not be called.
    None,
    /// This named tool.
    Named(String),
}

/// The dialect-neutral view of a chat request.
#[derive(Debug, Clone)]
pub(crate) struct Prompt {
    pub model: String,
    pub chars: usize,
    pub last: LastTurn,
    pub tools: Vec<String>,
    pub tool_choice: ToolChoice,
    pub stream: bool,
    pub include_usage: bool,
    /// Extended thinking asked for (Anthropic `thinking`): the answer starts with a thinking
    /// block.
    pub thinking: bool,
    /// Answers asked for (OpenAI `n`); the non-streamed OpenAI answer has this many choices.
    pub choices: u32,
    /// Structured output asked for (OpenAI `response_format.json_schema`, Gemini
    /// `responseSchema`, Cohere `response_format`, Anthropic `output_config.format`): the
    /// answer is a JSON value of that schema ([`example_of`]).
    pub schema: Option<serde_json::Value>,
}

impl Prompt {
    pub(crate) fn new(model: String) -> Self {
        Self {
            model,
            chars: 0,
            last: LastTurn::Other,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            stream: false,
            include_usage: false,
            thinking: false,
            choices: 1,
            schema: None,
        }
    }
}

/// The answer: text in chunks, or one tool call.
#[derive(Debug, Clone)]
pub(crate) enum Output {
    Text {
        text: Arc<str>,
        chunks: Arc<[String]>,
    },
    Tool {
        name: String,
        /// JSON object text, `{"query":"..."}`.
        arguments: String,
        /// `arguments` split into at least two fragments for streaming.
        fragments: Vec<String>,
    },
}

/// The planned answer and its usage.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub output: Output,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Unique per request, used to build ids.
    pub seq: u64,
    /// Start with a thinking block ([`Prompt::thinking`]).
    pub thinking: bool,
    /// [`Prompt::choices`]; `completion_tokens` counts them all.
    pub choices: u32,
}

impl Plan {
    pub(crate) fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// The configured default reply, split once at start.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub text: Arc<str>,
    pub chunks: Arc<[String]>,
    /// 0 = one chunk per word.
    pub stream_chunks: usize,
}

impl Reply {
    pub(crate) fn new(text: &str, stream_chunks: usize) -> Self {
        Self {
            text: Arc::from(text),
            chunks: split_chunks(text, stream_chunks).into(),
            stream_chunks,
        }
    }
}

/// Tokens for a text size: characters / 4, at least 1.
pub(crate) fn tokens_for_chars(chars: usize) -> u64 {
    u64::try_from(chars / 4).unwrap_or(u64::MAX).max(1)
}

/// Splits text into `n` pieces of near-equal character length, or one piece per word (each word
/// keeps its trailing whitespace) when `n == 0`. Never returns an empty list.
pub(crate) fn split_chunks(text: &str, n: usize) -> Vec<String> {
    if text.is_empty() {
        return vec![String::new()];
    }
    if n == 0 {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut in_space = false;
        for c in text.chars() {
            if !c.is_whitespace() && in_space {
                out.push(std::mem::take(&mut cur));
                in_space = false;
            }
            if c.is_whitespace() {
                in_space = true;
            }
            cur.push(c);
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        return out;
    }
    let chars: Vec<char> = text.chars().collect();
    let n = n.min(chars.len());
    let base = chars.len() / n;
    let extra = chars.len() % n;
    let mut out = Vec::with_capacity(n);
    let mut pos = 0;
    for i in 0..n {
        let len = base + usize::from(i < extra);
        out.push(chars[pos..pos + len].iter().collect());
        pos += len;
    }
    out
}

/// A value that a JSON schema accepts, as a model asked for structured output writes one:
/// every property (required or not) filled, strings `"mock"` (or the first `enum` value),
/// numbers 1, booleans true, arrays of one item. `$ref`s into `$defs` are followed.
pub(crate) fn example_of(schema: &serde_json::Value, depth: usize) -> serde_json::Value {
    example_in(schema, schema, depth).unwrap_or_else(|| serde_json::json!({}))
}

fn example_in(
    root: &serde_json::Value,
    schema: &serde_json::Value,
    depth: usize,
) -> Option<serde_json::Value> {
    use serde_json::{json, Value};
    if depth > 8 {
        return Some(Value::Null);
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next()?;
        let target = root
            .get("$defs")
            .or_else(|| root.get("definitions"))
            .and_then(|d| d.get(name))?;
        return example_in(root, target, depth + 1);
    }
    if let Some(v) = schema.get("enum").and_then(|e| e.get(0)) {
        return Some(v.clone());
    }
    if let Some(v) = schema.get("const") {
        return Some(v.clone());
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema.get(key).and_then(|a| a.get(0)) {
            return example_in(root, first, depth + 1);
        }
    }
    let ty = match schema.get("type") {
        Some(Value::Array(types)) => types
            .iter()
            .find_map(|t| t.as_str().filter(|t| *t != "null")),
        Some(t) => t.as_str(),
        None if schema.get("properties").is_some() => Some("object"),
        None => None,
    };
    Some(match ty.map(str::to_ascii_lowercase).as_deref() {
        Some("object") => {
            let mut out = serde_json::Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    out.insert(k.clone(), example_in(root, p, depth + 1)?);
                }
            }
            Value::Object(out)
        }
        Some("array") => {
            let item = schema
                .get("items")
                .and_then(|i| example_in(root, i, depth + 1))
                .unwrap_or(Value::Null);
            json!([item])
        }
        Some("integer") => json!(1),
        Some("number") => json!(1.0),
        Some("boolean") => json!(true),
        Some("null") => Value::Null,
        _ => json!("mock"),
    })
}

/// Decides the answer for a chat request.
pub(crate) fn plan(reply: &Reply, prompt: &Prompt, seq: u64) -> Plan {
    let prompt_tokens = tokens_for_chars(prompt.chars);
    let tool = match (&prompt.last, &prompt.tool_choice) {
        (LastTurn::User(_), ToolChoice::None) => None,
        (LastTurn::User(text), ToolChoice::Named(name)) if !prompt.tools.is_empty() => {
            Some((name.clone(), text))
        }
        (LastTurn::User(text), _) => prompt.tools.first().map(|n| (n.clone(), text)),
        _ => None,
    };
    let output = if let Some((name, text)) = tool {
        let arguments = serde_json::json!({ "query": text }).to_string();
        let fragments = split_chunks(&arguments, 3);
        Output::Tool {
            name,
            arguments,
            fragments,
        }
    } else if let LastTurn::ToolResult(result) = &prompt.last {
        let text = format!("Tool said: {result}");
        let chunks = split_chunks(&text, reply.stream_chunks);
        Output::Text {
            text: Arc::from(text.as_str()),
            chunks: chunks.into(),
        }
    } else if let Some(schema) = &prompt.schema {
        let text = example_of(schema, 0).to_string();
        let chunks = split_chunks(&text, reply.stream_chunks);
        Output::Text {
            text: Arc::from(text.as_str()),
            chunks: chunks.into(),
        }
    } else {
        Output::Text {
            text: reply.text.clone(),
            chunks: reply.chunks.clone(),
        }
    };
    let completion_tokens = match &output {
        Output::Text { chunks, .. } => chunks.len(),
        Output::Tool { fragments, .. } => fragments.len(),
    };
    let choices = prompt.choices.max(1);
    Plan {
        output,
        prompt_tokens,
        completion_tokens: u64::try_from(completion_tokens)
            .unwrap_or(1)
            .max(1)
            .saturating_mul(u64::from(choices)),
        seq,
        thinking: prompt.thinking,
        choices,
    }
}

/// Text found in a JSON value: strings, `text` fields, nested `content`, arrays concatenated;
/// other objects as their JSON text.
pub(crate) fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text_of).collect::<Vec<_>>().join(""),
        Value::Object(map) => {
            if let Some(Value::String(t)) = map.get("text") {
                t.clone()
            } else if let Some(c) = map.get("content") {
                text_of(c)
            } else if let Some(j) = map.get("json") {
                j.to_string()
            } else {
                v.to_string()
            }
        }
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Characters of all text in a JSON value (strings anywhere, recursively).
pub(crate) fn chars_of(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items.iter().map(chars_of).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "type" | "role" | "id" | "tool_call_id" | "tool_use_id" | "toolUseId"
                )
            })
            .map(|(_, v)| chars_of(v))
            .sum(),
        _ => 0,
    }
}

/// A deterministic unit vector for `text` with `dims` dimensions (FNV-1a seed, xorshift64*).
pub(crate) fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut state = h | 1;
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            // 24 random bits to [-1, 1)
            (r as f32 / 8_388_608.0) - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

/// Default embedding size when the request names none.
pub(crate) const DEFAULT_EMBEDDING_DIMS: usize = 8;

/// Clamps a requested embedding size to something sane.
pub(crate) fn embedding_dims(requested: Option<u64>) -> usize {
    requested
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| *d > 0)
        .map_or(DEFAULT_EMBEDDING_DIMS, |d| d.min(8192))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_split_is_one_chunk_per_word() {
        assert_eq!(
            split_chunks("Hello from the mock upstream.", 0),
            vec!["Hello ", "from ", "the ", "mock ", "upstream."]
        );
    }

    #[test]
    fn n_split_covers_text_in_n_pieces() {
        let text = "abcdefghij";
        let chunks = split_chunks(text, 3);
        assert_eq!(chunks, vec!["abcd", "efg", "hij"]);
        assert_eq!(
            split_chunks("ab", 5),
            vec!["a", "b"],
            "never more chunks than chars"
        );
        assert_eq!(split_chunks("", 0), vec![""], "never empty");
    }

    #[test]
    fn tools_with_user_last_turn_give_a_call_of_the_first_or_named_tool() {
        let reply = Reply::new("Hi there", 0);
        let mut p = Prompt::new("m".into());
        p.chars = 40;
        p.last = LastTurn::User("weather?".into());
        p.tools = vec!["a".into(), "b".into()];
        let plan1 = plan(&reply, &p, 1);
        match &plan1.output {
            Output::Tool {
                name,
                arguments,
                fragments,
            } => {
                assert_eq!(name, "a");
                assert_eq!(arguments, r#"{"query":"weather?"}"#);
                assert!(fragments.len() >= 2, "arguments are split");
                assert_eq!(fragments.concat(), *arguments);
            }
            other => panic!("expected a tool call, got {other:?}"),
        }
        assert_eq!(plan1.prompt_tokens, 10);
        p.tool_choice = ToolChoice::Named("b".into());
        assert!(matches!(plan(&reply, &p, 2).output, Output::Tool { ref name, .. } if name == "b"));
        p.tool_choice = ToolChoice::None;
        assert!(matches!(plan(&reply, &p, 3).output, Output::Text { .. }));
    }

    #[test]
    fn tool_result_last_turn_is_echoed() {
        let reply = Reply::new("Hi", 0);
        let mut p = Prompt::new("m".into());
        p.last = LastTurn::ToolResult("18C sunny".into());
        p.tools = vec!["a".into()];
        let pl = plan(&reply, &p, 1);
        match pl.output {
            Output::Text { text, chunks } => {
                assert_eq!(&*text, "Tool said: 18C sunny");
                assert_eq!(pl.completion_tokens, chunks.len() as u64);
            }
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding("hello", 8);
        assert_eq!(a, embedding("hello", 8));
        assert_ne!(a, embedding("world", 8));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit norm, got {norm}");
    }
}
