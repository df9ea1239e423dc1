//! The OpenAI Responses API for providers that do not speak it: the request read as a chat
//! request, the answer and the stream written back as Responses objects and events.
//!
//! An OpenAI-format provider gets the client's body as written and its answer goes back as it
//! came (`gateway_providers::responses`); this module is for the others (Anthropic, Gemini,
//! Bedrock, Cohere...), so a Responses request can fail over to them. What has no chat
//! equivalent (`previous_response_id`, `background`, built-in tools, file inputs, item
//! references) leaves the request untranslated: only OpenAI-format providers can serve it then.

use gateway_core::types::{ChatChunk, ChatRequest, ChatResponse, FinishReason, Usage};
use serde_json::{json, Map, Value};

/// The chat request a Responses body asks for, or `None` when it asks for something a chat
/// request cannot carry.
pub fn to_chat(body: &Value) -> Option<ChatRequest> {
    let b = body.as_object()?;
    if b.get("previous_response_id").is_some_and(|v| !v.is_null())
        || b.get("background").and_then(Value::as_bool) == Some(true)
        || b.get("prompt").is_some_and(|v| !v.is_null())
        || b.get("conversation").is_some_and(|v| !v.is_null())
    {
        return None;
    }
    let mut messages = Vec::new();
    if let Some(i) = b.get("instructions").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": i}));
    }
    match b.get("input")? {
        Value::String(s) => messages.push(json!({"role": "user", "content": s})),
        Value::Array(items) => {
            for item in items {
                input_item(item, &mut messages)?;
            }
        }
        _ => return None,
    }
    let mut chat = Map::new();
    chat.insert("model".into(), b.get("model")?.clone());
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = b.get("tools").and_then(Value::as_array) {
        let mut out = Vec::new();
        for t in tools {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return None;
            }
            let mut f = Map::new();
            for k in ["name", "description", "parameters", "strict"] {
                if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                    f.insert(k.into(), v.clone());
                }
            }
            out.push(json!({"type": "function", "function": f}));
        }
        if !out.is_empty() {
            chat.insert("tools".into(), Value::Array(out));
        }
    }
    match b.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            chat.insert("tool_choice".into(), json!(s));
        }
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            chat.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": o.get("name")?}}),
            );
        }
        Some(_) => return None,
    }
    for (from, to) in [
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("user", "user"),
        ("stream", "stream"),
    ] {
        if let Some(v) = b.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.into(), v.clone());
        }
    }
    if let Some(e) = b.get("reasoning").and_then(|r| r.get("effort")) {
        chat.insert("reasoning_effort".into(), e.clone());
    }
    if let Some(f) = b.get("text").and_then(|t| t.get("format")) {
        match f.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let mut s = Map::new();
                for k in ["name", "schema", "strict", "description"] {
                    if let Some(v) = f.get(k).filter(|v| !v.is_null()) {
                        s.insert(k.into(), v.clone());
                    }
                }
                chat.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": s}),
                );
            }
            Some("json_object") => {
                chat.insert("response_format".into(), json!({"type": "json_object"}));
            }
            _ => {}
        }
    }
    serde_json::from_value(Value::Object(chat)).ok()
}

/// Appends the chat messages of one input item; `None` for an item with no chat equivalent.
fn input_item(item: &Value, messages: &mut Vec<Value>) -> Option<()> {
    let kind = match item.get("type").and_then(Value::as_str) {
        Some(t) => t,
        None if item.get("role").is_some() => "message",
        None => return None,
    };
    match kind {
        "message" => {
            let role = item.get("role")?.as_str()?;
            let content = match item.get("content")? {
                Value::String(s) => json!(s),
                Value::Array(parts) => {
                    let mut out = Vec::new();
                    for p in parts {
                        match p.get("type").and_then(Value::as_str)? {
                            "input_text" | "output_text" => {
                                out.push(json!({"type": "text", "text": p.get("text")?}));
                            }
                            "input_image" => {
                                let url = p.get("image_url")?.as_str()?;
                                let mut image = json!({"url": url});
                                if let Some(d) = p.get("detail") {
                                    image["detail"] = d.clone();
                                }
                                out.push(json!({"type": "image_url", "image_url": image}));
                            }
                            "refusal" => {}
                            _ => return None,
                        }
                    }
                    Value::Array(out)
                }
                _ => return None,
            };
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call = json!({
                "id": item.get("call_id")?,
                "type": "function",
                "function": {"name": item.get("name")?, "arguments": item.get("arguments")?}
            });
            // Calls that follow one another belong to one assistant turn.
            match messages.last_mut() {
                Some(m)
                    if m["role"] == "assistant"
                        && m.get("tool_calls").is_some_and(Value::is_array) =>
                {
                    if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
                        calls.push(call);
                    }
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let output = match item.get("output")? {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            messages.push(json!({
                "role": "tool", "tool_call_id": item.get("call_id")?, "content": output
            }));
        }
        // Reasoning of an earlier turn: another provider cannot use it.
        "reasoning" => {}
        _ => return None,
    }
    Some(())
}

/// The client's Responses body, read back from [`ChatRequest::native`] (`Null` when there is
/// none): what an answer written by the gateway echoes.
pub fn client_body(request: &ChatRequest) -> Value {
    request
        .native
        .as_ref()
        .and_then(|n| serde_json::from_slice(&n.body).ok())
        .unwrap_or_default()
}

/// The settings of the request a Responses object echoes.
fn echo(request: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, default) in [
        ("instructions", Value::Null),
        ("max_output_tokens", Value::Null),
        ("temperature", json!(1.0)),
        ("top_p", json!(1.0)),
        ("tool_choice", json!("auto")),
        ("tools", json!([])),
        ("parallel_tool_calls", json!(true)),
        ("metadata", json!({})),
    ] {
        m.insert(
            k.into(),
            request
                .get(k)
                .filter(|v| !v.is_null())
                .cloned()
                .unwrap_or(default),
        );
    }
    m
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.prompt_tokens_details.map_or(0, |d| d.cached_tokens)},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.completion_tokens_details.map_or(0, |d| d.reasoning_tokens)},
        "total_tokens": u.total_tokens.max(u.prompt_tokens + u.completion_tokens)
    })
}

/// Which response an object is.
struct Ident<'a> {
    id: &'a str,
    created: u64,
    model: &'a str,
}

/// A Responses object: `output` and `usage` as given, `status` from the finish reason.
fn response_object(
    request: &Value,
    Ident { id, created, model }: Ident<'_>,
    output: Vec<Value>,
    finish: Option<FinishReason>,
    usage: Option<&Usage>,
    in_progress: bool,
) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(id));
    o.insert("object".into(), json!("response"));
    o.insert("created_at".into(), json!(created));
    let incomplete = finish.is_some_and(FinishReason::is_length);
    let status = if in_progress {
        "in_progress"
    } else if incomplete {
        "incomplete"
    } else {
        "completed"
    };
    o.insert("status".into(), json!(status));
    o.insert("error".into(), Value::Null);
    o.insert(
        "incomplete_details".into(),
        if incomplete && !in_progress {
            json!({"reason": "max_output_tokens"})
        } else {
            Value::Null
        },
    );
    o.insert("model".into(), json!(model));
    o.insert("output".into(), Value::Array(output));
    o.insert("previous_response_id".into(), Value::Null);
    o.insert("store".into(), json!(false));
    o.insert("usage".into(), usage.map_or(Value::Null, usage_json));
    o.extend(echo(request));
    Value::Object(o)
}

fn message_item(id: &str, text: &str, done: bool) -> Value {
    json!({
        "type": "message", "id": id, "status": if done { "completed" } else { "in_progress" },
        "role": "assistant",
        "content": if done { json!([{"type": "output_text", "text": text, "annotations": []}]) } else { json!([]) }
    })
}

fn call_item(call_id: &str, name: &str, arguments: &str, done: bool) -> Value {
    json!({
        "type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id, "name": name,
        "arguments": arguments, "status": if done { "completed" } else { "in_progress" }
    })
}

/// The Responses object of a chat answer.
pub fn from_chat(request: &Value, answer: &ChatResponse) -> Value {
    let id = format!("resp_{}", answer.id);
    let mut output = Vec::new();
    let choice = answer.choices.first();
    if let Some(c) = choice {
        let text = c.message.content_text();
        if !text.is_empty() {
            output.push(message_item(&format!("msg_{}", answer.id), &text, true));
        }
        for call in c.message.tool_calls.iter().flatten() {
            output.push(call_item(
                &call.id,
                &call.function.name,
                &call.function.arguments,
                true,
            ));
        }
    }
    response_object(
        request,
        Ident {
            id: &id,
            created: answer.created,
            model: &answer.model,
        },
        output,
        choice.and_then(|c| c.finish_reason),
        answer.usage.as_ref(),
        false,
    )
}

/// A function call being streamed.
struct Call {
    output_index: usize,
    call_id: String,
    name: String,
    arguments: String,
    done: bool,
}

/// Writes a chat stream as Responses events (`event: …` with `sequence_number`s from 0).
pub struct StreamEncoder {
    /// The client's body, read when the first chunk needs translating (a stream an
    /// OpenAI-format provider serves passes as it came and never needs it).
    body: bytes::Bytes,
    request: Value,
    seq: u64,
    started: bool,
    id: String,
    created: u64,
    model: String,
    /// The text item: its output index and text so far, while open.
    text: Option<(usize, String)>,
    /// Items closed so far, for `response.completed`.
    output: Vec<Value>,
    calls: Vec<(u32, Call)>,
    next_index: usize,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl StreamEncoder {
    /// An encoder for the answer to the client's Responses `body`, whose settings it echoes.
    pub fn new(body: bytes::Bytes) -> Self {
        StreamEncoder {
            body,
            request: Value::Null,
            seq: 0,
            started: false,
            id: String::new(),
            created: 0,
            model: String::new(),
            text: None,
            output: Vec::new(),
            calls: Vec::new(),
            next_index: 0,
            finish: None,
            usage: None,
        }
    }

    fn event(&mut self, name: &str, mut data: Value, out: &mut Vec<u8>) {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(data.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
    }

    fn object(&self, in_progress: bool) -> Value {
        let mut output = self.output.clone();
        if in_progress {
            output.clear();
        }
        response_object(
            &self.request,
            Ident {
                id: &self.id,
                created: self.created,
                model: &self.model,
            },
            output,
            self.finish,
            self.usage.as_ref(),
            in_progress,
        )
    }

    fn msg_id(&self) -> String {
        format!("msg_{}", self.id.trim_start_matches("resp_"))
    }

    fn close_text(&mut self, out: &mut Vec<u8>) {
        let Some((index, text)) = self.text.take() else {
            return;
        };
        let item_id = self.msg_id();
        let part = json!({"type": "output_text", "text": text, "annotations": []});
        self.event(
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
            out,
        );
        self.event(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part}),
            out,
        );
        let item = message_item(&item_id, &text, true);
        self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item.clone()}),
            out,
        );
        self.output.push(item);
    }

    fn close_calls(&mut self, out: &mut Vec<u8>) {
        let open: Vec<usize> = (0..self.calls.len())
            .filter(|&i| !self.calls[i].1.done)
            .collect();
        for i in open {
            self.calls[i].1.done = true;
            let c = &self.calls[i].1;
            let (index, item_id, args) = (
                c.output_index,
                format!("fc_{}", c.call_id),
                c.arguments.clone(),
            );
            let item = call_item(&c.call_id, &c.name, &c.arguments, true);
            self.event(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": index, "arguments": args}),
                out,
            );
            self.event(
                "response.output_item.done",
                json!({"output_index": index, "item": item.clone()}),
                out,
            );
            self.output.push(item);
        }
    }

    /// Writes the events of one chat chunk.
    pub fn chunk(&mut self, chunk: &ChatChunk, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.request = serde_json::from_slice(&self.body).unwrap_or_default();
            self.id = format!("resp_{}", chunk.id);
            self.created = chunk.created;
            self.model = chunk.model.clone();
            let o = self.object(true);
            self.event("response.created", json!({"response": o}), out);
            let o = self.object(true);
            self.event("response.in_progress", json!({"response": o}), out);
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        for c in &chunk.choices {
            if let Some(text) = c.delta.content.as_deref().filter(|t| !t.is_empty()) {
                if self.text.is_none() {
                    let index = self.next_index;
                    self.next_index += 1;
                    self.text = Some((index, String::new()));
                    let item_id = self.msg_id();
                    self.event(
                        "response.output_item.added",
                        json!({"output_index": index, "item": message_item(&item_id, "", false)}),
                        out,
                    );
                    self.event(
                        "response.content_part.added",
                        json!({"item_id": item_id, "output_index": index, "content_index": 0,
                               "part": {"type": "output_text", "text": "", "annotations": []}}),
                        out,
                    );
                }
                let item_id = self.msg_id();
                let mut index = 0;
                if let Some((i, t)) = &mut self.text {
                    t.push_str(text);
                    index = *i;
                }
                self.event(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0,
                           "delta": text, "logprobs": []}),
                    out,
                );
            }
            for d in c.delta.tool_calls.iter().flatten() {
                let known = self.calls.iter().position(|(i, _)| *i == d.index);
                let pos = match known {
                    Some(p) => p,
                    None => {
                        self.close_text(out);
                        let f = d.function.as_ref();
                        let call = Call {
                            output_index: self.next_index,
                            call_id: d.id.clone().unwrap_or_else(|| format!("call_{}", d.index)),
                            name: f.and_then(|f| f.name.clone()).unwrap_or_default(),
                            arguments: String::new(),
                            done: false,
                        };
                        self.next_index += 1;
                        let item = call_item(&call.call_id, &call.name, "", false);
                        self.event(
                            "response.output_item.added",
                            json!({"output_index": call.output_index, "item": item}),
                            out,
                        );
                        self.calls.push((d.index, call));
                        self.calls.len() - 1
                    }
                };
                let args = d
                    .function
                    .as_ref()
                    .and_then(|f| f.arguments.as_deref())
                    .unwrap_or_default()
                    .to_owned();
                if !args.is_empty() {
                    let c = &mut self.calls[pos].1;
                    c.arguments.push_str(&args);
                    let (index, item_id) = (c.output_index, format!("fc_{}", c.call_id));
                    self.event(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": index, "delta": args}),
                        out,
                    );
                }
            }
            if c.finish_reason.is_some() {
                self.finish = c.finish_reason;
            }
        }
    }

    /// Closes what is open and writes `response.completed` (or `response.incomplete` when the
    /// output limit cut the answer), with the usage.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            return;
        }
        // Close in the order the items were opened.
        let text_first = match (&self.text, self.calls.iter().find(|(_, c)| !c.done)) {
            (Some((t, _)), Some((_, c))) => *t < c.output_index,
            _ => true,
        };
        if text_first {
            self.close_text(out);
            self.close_calls(out);
        } else {
            self.close_calls(out);
            self.close_text(out);
        }
        let name = if self.finish.is_some_and(FinishReason::is_length) {
            "response.incomplete"
        } else {
            "response.completed"
        };
        let o = self.object(false);
        self.event(name, json!({"response": o}), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::types::{ChunkChoice, Delta, FunctionCallDelta, ToolCallDelta};

    #[test]
    fn requests_read_as_chat() {
        let r = to_chat(&json!({
            "model": "m", "instructions": "Be terse.", "max_output_tokens": 9,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "hi"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "reasoning", "summary": []}
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
            "reasoning": {"effort": "low"}
        }))
        .expect("translatable");
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "Be terse."})
        );
        assert_eq!(v["messages"][1]["content"][1]["image_url"]["detail"], "low");
        assert_eq!(
            v["messages"][2]["tool_calls"].as_array().map(Vec::len),
            Some(2),
            "one turn"
        );
        assert_eq!(v["messages"][3]["tool_call_id"], "c1");
        assert_eq!(
            v["messages"].as_array().map(Vec::len),
            Some(4),
            "reasoning dropped"
        );
        assert_eq!(v["tools"][0]["function"]["name"], "f");
        assert_eq!(v["tool_choice"]["function"]["name"], "f");
        assert_eq!(v["response_format"]["json_schema"]["name"], "s");
        assert_eq!(v["reasoning_effort"], "low");
        assert_eq!(v["max_tokens"], 9);
        for untranslatable in [
            json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}),
            json!({"model": "m", "input": "hi", "background": true}),
            json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}),
            json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
            json!({"model": "m"}),
        ] {
            assert!(to_chat(&untranslatable).is_none(), "{untranslatable}");
        }
    }

    fn chunk(choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatChunk {
        let mut c = ChatChunk::new("c1", "m", 5);
        c.choices = choices;
        c.usage = usage;
        c
    }

    fn delta(
        content: Option<&str>,
        call: Option<(u32, Option<&str>, &str)>,
        finish: Option<FinishReason>,
    ) -> ChunkChoice {
        ChunkChoice {
            index: 0,
            delta: Delta {
                content: content.map(str::to_owned),
                tool_calls: call.map(|(i, name, args)| {
                    vec![ToolCallDelta {
                        index: i,
                        id: name.map(|_| format!("call_{i}")),
                        kind: name.map(|_| "function".to_owned()),
                        function: Some(FunctionCallDelta {
                            name: name.map(str::to_owned),
                            arguments: Some(args.to_owned()),
                        }),
                    }]
                }),
                ..Delta::default()
            },
            finish_reason: finish,
        }
    }

    /// Text, then a call: the items open and close in order, indexes and sequence numbers
    /// count up, and `response.completed` carries both items and the usage.
    #[test]
    fn streams_become_responses_events() {
        let mut enc =
            StreamEncoder::new(bytes::Bytes::from_static(br#"{"model":"m","input":"x"}"#));
        let mut out = Vec::new();
        enc.chunk(&chunk(vec![delta(Some("Hel"), None, None)], None), &mut out);
        enc.chunk(&chunk(vec![delta(Some("lo"), None, None)], None), &mut out);
        enc.chunk(
            &chunk(
                vec![delta(None, Some((0, Some("f"), "{\"a\"")), None)],
                None,
            ),
            &mut out,
        );
        enc.chunk(
            &chunk(
                vec![delta(
                    None,
                    Some((0, None, ":1}")),
                    Some(FinishReason::ToolCalls),
                )],
                None,
            ),
            &mut out,
        );
        enc.chunk(&chunk(Vec::new(), Some(Usage::new(3, 4, 0))), &mut out);
        enc.finish(&mut out);
        let text = String::from_utf8(out).expect("utf-8");
        let events: Vec<(String, Value)> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').expect("two lines");
                (
                    name.trim_start_matches("event: ").to_owned(),
                    serde_json::from_str(data.trim_start_matches("data: ")).expect("json"),
                )
            })
            .collect();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        for (i, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], i as u64);
            assert_eq!(data["type"], name.as_str());
        }
        assert_eq!(events[9].1["output_index"], 1);
        assert_eq!(events[12].1["arguments"], "{\"a\":1}");
        let done = &events[14].1["response"];
        assert_eq!(done["id"], "resp_c1");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["call_id"], "call_0");
        assert_eq!(done["usage"]["total_tokens"], 7);
    }

    #[test]
    fn a_cut_answer_is_incomplete() {
        let answer = ChatResponse {
            id: "x".into(),
            object: "chat.completion".into(),
            created: 1,
            model: "m".into(),
            choices: vec![gateway_core::types::Choice {
                index: 0,
                message: gateway_core::types::Message::text(
                    gateway_core::types::Role::Assistant,
                    "par",
                ),
                finish_reason: Some(FinishReason::Length),
                logprobs: None,
            }],
            usage: None,
            extra: Map::new(),
            raw: None,
        };
        let v = from_chat(&json!({"max_output_tokens": 3}), &answer);
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(v["max_output_tokens"], 3);
        assert_eq!(v["output"][0]["content"][0]["text"], "par");
    }
}
