//! OpenAI Responses API (`POST /v1/responses`): request parsing, the `response` object and the
//! typed stream events (`event: response.…`, each with a `sequence_number` from 0, no `[DONE]`).

use bytes::Bytes;
use serde_json::{json, Value};

use super::openai::{call_id, server_message};
use super::{sse_event, Ctx, ErrorKind};
use crate::plan::{chars_of, text_of, LastTurn, Output, Plan, Prompt, ToolChoice};

/// The item's type; message items may leave `type` out.
fn item_type(item: &Value) -> &str {
    match item["type"].as_str() {
        Some(t) => t,
        None if item["role"].is_string() => "message",
        None => "",
    }
}

/// Text characters of one input item (ids and types not counted, unknown items ignored).
fn item_chars(item: &Value) -> usize {
    match item_type(item) {
        "message" => chars_of(&item["content"]),
        "function_call" => chars_of(&item["name"]) + chars_of(&item["arguments"]),
        "function_call_output" => chars_of(&item["output"]),
        _ => 0,
    }
}

fn last_turn(item: &Value) -> LastTurn {
    match item_type(item) {
        "message" if item["role"].as_str() == Some("user") => {
            LastTurn::User(text_of(&item["content"]))
        }
        "function_call_output" => LastTurn::ToolResult(text_of(&item["output"])),
        _ => LastTurn::Other,
    }
}

/// Parses a Responses request: chars of `instructions` and `input`, the last input item, the
/// flat function tools and `tool_choice`. Unknown members are ignored.
pub(crate) fn parse(body: &Value) -> Prompt {
    let mut p = Prompt::new(body["model"].as_str().unwrap_or_default().to_owned());
    p.chars = chars_of(&body["instructions"]);
    match &body["input"] {
        Value::String(s) => {
            p.chars += s.chars().count();
            p.last = LastTurn::User(s.clone());
        }
        Value::Array(items) => {
            p.chars += items.iter().map(item_chars).sum::<usize>();
            p.last = items.last().map_or(LastTurn::Other, last_turn);
        }
        _ => {}
    }
    if let Some(tools) = body["tools"].as_array() {
        p.tools = tools
            .iter()
            .filter(|t| t["type"].as_str() == Some("function"))
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
    }
    p.tool_choice = match &body["tool_choice"] {
        Value::String(s) if s.eq_ignore_ascii_case("none") => ToolChoice::None,
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => o
            .get("name")
            .and_then(Value::as_str)
            .map_or(ToolChoice::Auto, |n| ToolChoice::Named(n.to_owned())),
        _ => ToolChoice::Auto,
    };
    p.stream = body["stream"].as_bool().unwrap_or(false);
    p
}

/// What a call about a stored answer returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// The response object (retrieve, cancel).
    Response,
    /// `response.deleted`.
    Deleted,
    /// An empty list of input items.
    InputItems,
}

/// The answer about stored response `id`. The mock keeps no responses: any id is taken to be a
/// completed answer with the configured reply (`cancelled` after a cancel).
pub(crate) fn stored_json(
    ctx: &Ctx<'_>,
    id: &str,
    reply: &str,
    cancelled: bool,
    what: Stored,
) -> String {
    match what {
        Stored::Deleted => {
            json!({"id": id, "object": "response.deleted", "deleted": true}).to_string()
        }
        Stored::InputItems => json!({
            "object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false
        })
        .to_string(),
        Stored::Response => json!({
            "id": id,
            "object": "response",
            "created_at": ctx.created,
            "status": if cancelled { "cancelled" } else { "completed" },
            "error": null,
            "incomplete_details": null,
            "model": "mock",
            "output": [{
                "type": "message", "id": format!("msg_{id}"), "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": reply, "annotations": []}]
            }],
            "parallel_tool_calls": true,
            "tool_choice": "auto",
            "tools": [],
            "usage": null
        })
        .to_string(),
    }
}

/// Validates a Responses request.
pub(crate) fn validate(body: &Value) -> Option<ErrorKind> {
    if !body.is_object() {
        return Some(ErrorKind::BadRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)".to_owned(),
        ));
    }
    if !body["model"].is_string() {
        return Some(ErrorKind::BadRequest(
            "Missing required parameter: 'model'.".to_owned(),
        ));
    }
    match &body["input"] {
        Value::Null | Value::String(_) | Value::Array(_) => None,
        _ => Some(ErrorKind::BadRequest(
            "Invalid type for 'input': expected one of a string or array of input items."
                .to_owned(),
        )),
    }
}

fn response_id(plan: &Plan) -> String {
    format!("resp_mock{:020}", plan.seq)
}

fn message_id(plan: &Plan) -> String {
    format!("msg_mock{:020}", plan.seq)
}

fn function_call_id(plan: &Plan) -> String {
    format!("fc_mock{:020}", plan.seq)
}

/// The id of the plan's output item.
fn item_id(plan: &Plan) -> String {
    match plan.output {
        Output::Text { .. } => message_id(plan),
        Output::Tool { .. } => function_call_id(plan),
    }
}

fn text_part(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [] })
}

/// The output item: complete, or as first announced (no content, empty arguments).
fn item(plan: &Plan, complete: bool) -> Value {
    let status = if complete { "completed" } else { "in_progress" };
    match &plan.output {
        Output::Text { text, .. } => {
            let content = if complete {
                vec![text_part(text)]
            } else {
                Vec::new()
            };
            json!({
                "type": "message",
                "id": message_id(plan),
                "status": status,
                "role": "assistant",
                "content": content
            })
        }
        Output::Tool {
            name, arguments, ..
        } => json!({
            "type": "function_call",
            "id": function_call_id(plan),
            "call_id": call_id(plan),
            "name": name,
            "arguments": if complete { arguments.as_str() } else { "" },
            "status": status
        }),
    }
}

fn usage(plan: &Plan) -> Value {
    json!({
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": { "cached_tokens": 0 },
        "output_tokens": plan.completion_tokens,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": plan.total_tokens()
    })
}

/// A request member echoed into the response, or `default` when absent or null.
fn echo(req: &Value, key: &str, default: Value) -> Value {
    match req.get(key) {
        Some(v) if !v.is_null() => v.clone(),
        _ => default,
    }
}

/// The `response` object; in progress it has no output and `usage: null`.
fn response(ctx: &Ctx<'_>, plan: &Plan, req: &Value, complete: bool) -> Value {
    let (status, output, usage) = if complete {
        ("completed", vec![item(plan, true)], usage(plan))
    } else {
        ("in_progress", Vec::new(), Value::Null)
    };
    json!({
        "id": response_id(plan),
        "object": "response",
        "created_at": ctx.created,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "instructions": echo(req, "instructions", Value::Null),
        "max_output_tokens": echo(req, "max_output_tokens", Value::Null),
        "metadata": echo(req, "metadata", json!({})),
        "model": ctx.model,
        "output": output,
        "parallel_tool_calls": echo(req, "parallel_tool_calls", json!(true)),
        "previous_response_id": echo(req, "previous_response_id", Value::Null),
        "store": echo(req, "store", json!(true)),
        "temperature": echo(req, "temperature", json!(1.0)),
        "tool_choice": echo(req, "tool_choice", json!("auto")),
        "tools": echo(req, "tools", json!([])),
        "top_p": echo(req, "top_p", json!(1.0)),
        "usage": usage
    })
}

/// The non-streamed Responses body.
pub(crate) fn json_body(ctx: &Ctx<'_>, plan: &Plan, req: &Value) -> String {
    response(ctx, plan, req, true).to_string()
}

/// Stream events numbered from 0.
#[derive(Default)]
struct Events {
    out: Vec<Bytes>,
    seq: u64,
}

impl Events {
    /// `event: <kind>` with data `{"type":<kind>,"sequence_number":n,…fields}`.
    fn push(&mut self, kind: &str, fields: &Value) {
        let rest = fields.to_string();
        let inner = rest
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .unwrap_or_default();
        let sep = if inner.is_empty() { "" } else { "," };
        let data = format!(
            r#"{{"type":"{kind}","sequence_number":{}{sep}{inner}}}"#,
            self.seq
        );
        self.out.push(sse_event(kind, &data));
        self.seq += 1;
    }
}

/// The streamed Responses events, from `response.created` to `response.completed`.
pub(crate) fn stream(ctx: &Ctx<'_>, plan: &Plan, req: &Value) -> Vec<Bytes> {
    let mut ev = Events::default();
    let pending = response(ctx, plan, req, false);
    ev.push("response.created", &json!({ "response": &pending }));
    ev.push("response.in_progress", &json!({ "response": &pending }));
    ev.push(
        "response.output_item.added",
        &json!({ "output_index": 0, "item": item(plan, false) }),
    );
    let id = item_id(plan);
    match &plan.output {
        Output::Text { text, chunks } => {
            let at = json!({ "item_id": &id, "output_index": 0, "content_index": 0 });
            let with = |k: &str, v: Value| {
                let mut o = at.clone();
                o[k] = v;
                o
            };
            ev.push("response.content_part.added", &with("part", text_part("")));
            for c in chunks.iter() {
                let mut d = with("delta", json!(c));
                d["logprobs"] = json!([]);
                ev.push("response.output_text.delta", &d);
            }
            let mut done = with("text", json!(&**text));
            done["logprobs"] = json!([]);
            ev.push("response.output_text.done", &done);
            ev.push("response.content_part.done", &with("part", text_part(text)));
        }
        Output::Tool {
            arguments,
            fragments,
            ..
        } => {
            for f in fragments {
                ev.push(
                    "response.function_call_arguments.delta",
                    &json!({ "item_id": &id, "output_index": 0, "delta": f }),
                );
            }
            ev.push(
                "response.function_call_arguments.done",
                &json!({ "item_id": &id, "output_index": 0, "arguments": arguments }),
            );
        }
    }
    ev.push(
        "response.output_item.done",
        &json!({ "output_index": 0, "item": item(plan, true) }),
    );
    ev.push(
        "response.completed",
        &json!({ "response": response(ctx, plan, req, true) }),
    );
    ev.out
}

/// The in-band `error` event after `sent` events, after which the stream ends.
pub(crate) fn stream_error(status: u16, sent: usize) -> Bytes {
    let (message, kind) = server_message(status);
    let data = json!({ "code": kind, "message": message, "param": null }).to_string();
    let inner = data
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or_default();
    sse_event(
        "error",
        &format!(r#"{{"type":"error","sequence_number":{sent},{inner}}}"#),
    )
}

/// A first event cut off mid-object.
pub(crate) const MALFORMED_STREAM: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\n\n";

/// A response object cut off mid-output.
pub(crate) const MALFORMED_BODY: &str =
    "{\"id\":\"resp_malformed\",\"object\":\"response\",\"output\":[{\"type\":";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, Reply};
    use crate::Dialect;

    fn ctx<'a>(model: &'a str, req: &'a Value) -> Ctx<'a> {
        Ctx {
            dialect: Dialect::OpenAi,
            model,
            created: 1_730_000_000,
            include_usage: false,
            sse: true,
            invoke: false,
            responses: Some(req),
            completions: false,
        }
    }

    #[test]
    fn string_and_item_inputs_count_the_same_as_chat() {
        let chat = crate::dialect::openai::parse_chat(
            &json!({ "model": "m", "messages": [
                { "role": "system", "content": "Be terse." },
                { "role": "user", "content": "Say hi" }
            ] }),
            None,
        );
        let a = parse(&json!({ "model": "m", "instructions": "Be terse.", "input": "Say hi" }));
        let b = parse(&json!({ "model": "m", "input": [
            { "role": "developer", "content": "Be terse." },
            { "type": "message", "role": "user", "content": [{ "type": "input_text", "text": "Say hi" }] }
        ] }));
        assert_eq!(a.chars, chat.chars);
        assert_eq!(b.chars, chat.chars);
        assert_eq!(a.last, LastTurn::User("Say hi".into()));
        assert_eq!(b.last, LastTurn::User("Say hi".into()));
    }

    #[test]
    fn function_call_output_last_is_a_tool_result_and_tools_are_flat() {
        let p = parse(&json!({
            "model": "m",
            "input": [
                { "role": "user", "content": "Weather?" },
                { "type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}" },
                { "type": "function_call_output", "call_id": "c1", "output": "18C" }
            ],
            "tools": [
                { "type": "web_search" },
                { "type": "function", "name": "w", "parameters": {} },
                { "type": "function", "name": "t", "parameters": {} }
            ],
            "tool_choice": { "type": "function", "name": "t" }
        }));
        assert_eq!(p.last, LastTurn::ToolResult("18C".into()));
        assert_eq!(p.tools, vec!["w".to_owned(), "t".to_owned()]);
        assert_eq!(p.tool_choice, ToolChoice::Named("t".into()));
        assert_eq!(
            p.chars,
            "Weather?".len() + "w".len() + "{}".len() + "18C".len()
        );
        let none = parse(&json!({ "model": "m", "input": "x", "tool_choice": "none" }));
        assert_eq!(none.tool_choice, ToolChoice::None);
    }

    #[test]
    fn validate_refuses_non_objects_missing_model_and_bad_input() {
        assert!(validate(&json!([])).is_some());
        assert!(validate(&json!({ "input": "x" })).is_some());
        assert!(validate(&json!({ "model": "m", "input": 3 })).is_some());
        assert!(validate(&json!({ "model": "m", "input": "x" })).is_none());
        assert!(validate(&json!({ "model": "m", "input": [] })).is_none());
    }

    #[test]
    fn stream_events_are_numbered_and_end_with_the_whole_response() {
        let req = json!({ "model": "m", "input": "hi", "instructions": "Be terse." });
        let prompt = parse(&req);
        let pl = plan(&Reply::new("one two", 0), &prompt, 7);
        let c = ctx("m", &req);
        let events = stream(&c, &pl, &req);
        let datas: Vec<Value> = events
            .iter()
            .map(|b| {
                let s = String::from_utf8_lossy(b);
                let data = s
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or_default()
                    .to_owned();
                serde_json::from_str(&data).unwrap_or(Value::Null)
            })
            .collect();
        for (i, d) in datas.iter().enumerate() {
            assert_eq!(d["sequence_number"], json!(i), "{d}");
        }
        let last = datas.last().cloned().unwrap_or_default();
        assert_eq!(last["type"], "response.completed");
        let whole: Value = serde_json::from_str(&json_body(&c, &pl, &req)).unwrap_or_default();
        assert_eq!(last["response"], whole);
        assert_eq!(whole["instructions"], "Be terse.");
        assert!(stream_error(500, 3).starts_with(b"event: error\n"));
    }
}
