//! OpenAI's legacy Completions API (`POST /v1/completions`): a `prompt` (and `suffix`) in, a
//! `text_completion` out, streamed as `data:` chunks with usage when asked and `[DONE]`.

use bytes::Bytes;
use serde_json::{json, Value};

use super::{sse_data, Ctx, ErrorKind};
use crate::plan::{chars_of, text_of, LastTurn, Output, Plan, Prompt};

/// Parses a Completions request: the prompt (a string or strings) is the user's turn; `suffix`
/// counts as input too.
pub(crate) fn parse(body: &Value) -> Prompt {
    let mut p = Prompt::new(body["model"].as_str().unwrap_or_default().to_owned());
    p.chars = chars_of(&body["prompt"]) + chars_of(&body["suffix"]);
    p.last = LastTurn::User(text_of(&body["prompt"]));
    p.stream = body["stream"].as_bool().unwrap_or(false);
    p.include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    p
}

/// Refuses a body without a model or a prompt, as the API does.
pub(crate) fn validate(body: &Value) -> Option<ErrorKind> {
    if !body["model"].is_string() {
        return Some(ErrorKind::BadRequest(
            "you must provide a model parameter".to_owned(),
        ));
    }
    if body.get("prompt").is_none() {
        return Some(ErrorKind::BadRequest(
            "you must provide a prompt".to_owned(),
        ));
    }
    None
}

fn text(plan: &Plan) -> String {
    match &plan.output {
        Output::Text { text, .. } => text.to_string(),
        Output::Tool { arguments, .. } => arguments.clone(),
    }
}

fn id(plan: &Plan) -> String {
    format!("cmpl-mock{:016}", plan.seq)
}

fn usage(plan: &Plan) -> Value {
    json!({
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": plan.total_tokens()
    })
}

/// The non-streamed `text_completion`.
pub(crate) fn json_body(ctx: &Ctx<'_>, plan: &Plan) -> String {
    json!({
        "id": id(plan),
        "object": "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [{"text": text(plan), "index": 0, "logprobs": null, "finish_reason": "stop"}],
        "usage": usage(plan)
    })
    .to_string()
}

/// The streamed chunks: one per chunk of the plan's text, the finish, the usage chunk when
/// `stream_options.include_usage` asked for it, then `[DONE]`.
pub(crate) fn stream(ctx: &Ctx<'_>, plan: &Plan) -> Vec<Bytes> {
    let pieces: Vec<String> = match &plan.output {
        Output::Text { chunks, .. } => chunks.iter().cloned().collect(),
        Output::Tool { fragments, .. } => fragments.clone(),
    };
    let chunk = |text: &str, finish: Value| {
        sse_data(
            &json!({
                "id": id(plan), "object": "text_completion", "created": ctx.created,
                "model": ctx.model,
                "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]
            })
            .to_string(),
        )
    };
    let mut out: Vec<Bytes> = pieces.iter().map(|p| chunk(p, Value::Null)).collect();
    out.push(chunk("", json!("stop")));
    if ctx.include_usage {
        out.push(sse_data(
            &json!({
                "id": id(plan), "object": "text_completion", "created": ctx.created,
                "model": ctx.model, "choices": [], "usage": usage(plan)
            })
            .to_string(),
        ));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}
