//! OpenAI Chat Completions, Embeddings and Models, plus the Azure OpenAI variant
//! (`prompt_filter_results`, per-choice `content_filter_results`, the empty first stream chunk,
//! string error codes, `retry-after-ms`).

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use super::{redact, sse_data, Ctx, ErrorKind, ErrorResponse};
use crate::format::{ceil_secs, go_duration, js};
use crate::plan::{
    chars_of, embedding, embedding_dims, text_of, LastTurn, Output, Plan, Prompt, ToolChoice,
};
use crate::state::LimitKind;
use crate::Dialect;

const FILTER_OK: &str = r#"{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}"#;

fn filter_ok() -> Value {
    serde_json::from_str(FILTER_OK).unwrap_or(Value::Null)
}

fn prompt_filter_results() -> Value {
    json!([{ "prompt_index": 0, "content_filter_results": filter_ok() }])
}

/// Parses a Chat Completions request (also used for Cohere v2, whose messages are OpenAI-shaped).
pub(crate) fn parse_chat(body: &Value, model_override: Option<&str>) -> Prompt {
    let model = model_override
        .map(str::to_owned)
        .or_else(|| body["model"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut p = Prompt::new(model);
    if let Some(msgs) = body["messages"].as_array() {
        p.chars = msgs.iter().map(|m| chars_of(&m["content"])).sum::<usize>()
            + msgs
                .iter()
                .map(|m| chars_of(&m["tool_calls"]))
                .sum::<usize>();
        p.last = match msgs.last() {
            Some(m) => match m["role"].as_str() {
                Some("tool") => LastTurn::ToolResult(text_of(&m["content"])),
                Some("user") => LastTurn::User(text_of(&m["content"])),
                _ => LastTurn::Other,
            },
            None => LastTurn::Other,
        };
    }
    if let Some(tools) = body["tools"].as_array() {
        p.tools = tools
            .iter()
            .filter_map(|t| {
                t["function"]["name"]
                    .as_str()
                    .or_else(|| t["name"].as_str())
                    .map(str::to_owned)
            })
            .collect();
    }
    p.tool_choice = match &body["tool_choice"] {
        Value::String(s) if s.eq_ignore_ascii_case("none") => ToolChoice::None,
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| o.get("name"))
            .and_then(Value::as_str)
            .map_or(ToolChoice::Auto, |n| ToolChoice::Named(n.to_owned())),
        _ => ToolChoice::Auto,
    };
    p.stream = body["stream"].as_bool().unwrap_or(false);
    p.choices = body["n"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
        .clamp(1, 128);
    p.include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    // OpenAI: `{"type": "json_schema", "json_schema": {"name", "schema"}}`; Cohere (whose chat
    // this parser reads too): `{"type": "json_object", "json_schema": {...}}`.
    let format = &body["response_format"];
    p.schema = match format["type"].as_str() {
        Some("json_schema") => format["json_schema"].get("schema").cloned(),
        Some("json_object") => format.get("json_schema").filter(|s| s.is_object()).cloned(),
        _ => None,
    };
    p
}

/// Validates a Chat Completions request.
pub(crate) fn validate_chat(body: &Value) -> Option<ErrorKind> {
    if !body.is_object() {
        return Some(ErrorKind::BadRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)".to_owned(),
        ));
    }
    match body["messages"].as_array() {
        None => Some(ErrorKind::BadRequest(
            "Missing required parameter: 'messages'.".to_owned(),
        )),
        Some(m) if m.is_empty() => Some(ErrorKind::BadRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.".to_owned(),
        )),
        Some(_) => None,
    }
}

fn usage(plan: &Plan) -> Value {
    json!({
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": plan.total_tokens(),
        "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
        "completion_tokens_details": { "reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0 }
    })
}

pub(super) fn call_id(plan: &Plan) -> String {
    format!("call_mock{:015}", plan.seq)
}

fn completion_id(plan: &Plan) -> String {
    format!("chatcmpl-mock{:016}", plan.seq)
}

/// The non-streamed Chat Completions body.
pub(crate) fn chat_json(ctx: &Ctx<'_>, plan: &Plan) -> String {
    let azure = ctx.dialect == Dialect::Azure;
    let (message, finish) = match &plan.output {
        Output::Text { text, .. } => (
            json!({ "role": "assistant", "content": &**text, "refusal": null }),
            "stop",
        ),
        Output::Tool {
            name, arguments, ..
        } => (
            json!({
                "role": "assistant",
                "content": null,
                "refusal": null,
                "tool_calls": [{
                    "id": call_id(plan),
                    "type": "function",
                    "function": { "name": name, "arguments": arguments }
                }]
            }),
            "tool_calls",
        ),
    };
    let mut choice =
        json!({ "index": 0, "message": message, "logprobs": null, "finish_reason": finish });
    let mut body = json!({
        "id": completion_id(plan),
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": "fp_mock",
        "choices": [],
        "usage": usage(plan),
    });
    if azure {
        choice["content_filter_results"] = filter_ok();
        body["prompt_filter_results"] = prompt_filter_results();
    } else {
        body["service_tier"] = json!("default");
    }
    let choices: Vec<Value> = (0..plan.choices)
        .map(|i| {
            let mut c = choice.clone();
            c["index"] = json!(i);
            c
        })
        .collect();
    body["choices"] = Value::Array(choices);
    body.to_string()
}

/// The streamed Chat Completions events, `[DONE]` included.
pub(crate) fn chat_stream(ctx: &Ctx<'_>, plan: &Plan) -> Vec<Bytes> {
    let azure = ctx.dialect == Dialect::Azure;
    let head = format!(
        r#"{{"id":"{}","object":"chat.completion.chunk","created":{},"model":{},"system_fingerprint":"fp_mock","choices":["#,
        completion_id(plan),
        ctx.created,
        js(ctx.model)
    );
    let tail = if ctx.include_usage {
        r#"],"usage":null}"#
    } else {
        "]}"
    };
    let filters = if azure {
        format!(r#","content_filter_results":{FILTER_OK}"#)
    } else {
        String::new()
    };
    let empty_filters = if azure {
        r#","content_filter_results":{}"#
    } else {
        ""
    };
    let chunk = |delta: &str, finish: &str, filters: &str| {
        sse_data(&format!(
            r#"{head}{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}{filters}}}{tail}"#
        ))
    };
    let mut out = Vec::new();
    if azure {
        out.push(sse_data(&format!(
            r#"{{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":{}}}"#,
            prompt_filter_results()
        )));
    }
    let finish = match &plan.output {
        Output::Text { chunks, .. } => {
            out.push(chunk(
                r#"{"role":"assistant","content":"","refusal":null}"#,
                "null",
                empty_filters,
            ));
            for c in chunks.iter() {
                out.push(chunk(
                    &format!(r#"{{"content":{}}}"#, js(c)),
                    "null",
                    &filters,
                ));
            }
            "stop"
        }
        Output::Tool {
            name, fragments, ..
        } => {
            out.push(chunk(
                &format!(
                    r#"{{"role":"assistant","content":null,"tool_calls":[{{"index":0,"id":"{}","type":"function","function":{{"name":{},"arguments":""}}}}],"refusal":null}}"#,
                    call_id(plan),
                    js(name)
                ),
                "null",
                empty_filters,
            ));
            for f in fragments {
                out.push(chunk(
                    &format!(
                        r#"{{"tool_calls":[{{"index":0,"function":{{"arguments":{}}}}}]}}"#,
                        js(f)
                    ),
                    "null",
                    empty_filters,
                ));
            }
            "tool_calls"
        }
    };
    out.push(chunk("{}", &format!("\"{finish}\""), empty_filters));
    if ctx.include_usage {
        out.push(sse_data(&format!(
            r#"{{"id":"{}","object":"chat.completion.chunk","created":{},"model":{},"system_fingerprint":"fp_mock","choices":[],"usage":{}}}"#,
            completion_id(plan),
            ctx.created,
            js(ctx.model),
            usage(plan)
        )));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// The in-band error chunk (`data: {"error":…}`), after which the stream ends without `[DONE]`.
pub(crate) fn stream_error(status: u16) -> Bytes {
    let (message, kind) = server_message(status);
    sse_data(
        &json!({ "error": { "message": message, "type": kind, "param": null, "code": null } })
            .to_string(),
    )
}

/// Input texts of an embeddings request: a string, strings, or token arrays (as JSON text).
pub(crate) fn embedding_inputs(body: &Value) -> Vec<String> {
    match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_number) => {
            vec![Value::Array(items.clone()).to_string()]
        }
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The embeddings body; `encoding_format: "base64"` gives base64 of little-endian f32.
pub(crate) fn embeddings_json(body: &Value, model: &str) -> Result<String, ErrorKind> {
    let inputs = embedding_inputs(body);
    if inputs.is_empty() {
        return Err(ErrorKind::BadRequest(
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.".to_owned(),
        ));
    }
    let dims = embedding_dims(body["dimensions"].as_u64());
    let base64 = body["encoding_format"].as_str() == Some("base64");
    let mut chars = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            chars += text.chars().count();
            let v = embedding(text, dims);
            let emb = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": i, "embedding": emb })
        })
        .collect();
    let tokens = crate::plan::tokens_for_chars(chars);
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens }
    })
    .to_string())
}

/// `GET /v1/models`.
pub(crate) fn models_json() -> String {
    json!({
        "object": "list",
        "data": [
            { "id": "gpt-4o-mini", "object": "model", "created": 1_721_172_741, "owned_by": "system" },
            { "id": "gpt-4o", "object": "model", "created": 1_715_367_049, "owned_by": "system" },
            { "id": "text-embedding-3-small", "object": "model", "created": 1_705_948_997, "owned_by": "system" }
        ]
    })
    .to_string()
}

pub(super) fn server_message(status: u16) -> (&'static str, &'static str) {
    match status {
        503 => (
            "The engine is currently overloaded, please try again later.",
            "server_error",
        ),
        502 => ("Bad gateway.", "server_error"),
        504 => ("Gateway timeout.", "server_error"),
        _ => (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
        ),
    }
}

fn openai_body(message: &str, kind: &str, param: Value, code: Value) -> String {
    json!({ "error": { "message": message, "type": kind, "param": param, "code": code } })
        .to_string()
}

/// OpenAI error shapes.
pub(crate) fn error(e: &ErrorKind) -> ErrorResponse {
    let mut headers = Vec::new();
    let (status, body) = match e {
        ErrorKind::MissingKey => (
            401,
            openai_body(
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username. You can obtain an API key from https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                Value::Null,
                Value::Null,
            ),
        ),
        ErrorKind::InvalidKey(key) => (
            401,
            openai_body(
                &format!(
                    "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                    redact(key)
                ),
                "invalid_request_error",
                Value::Null,
                json!("invalid_api_key"),
            ),
        ),
        ErrorKind::TokenInvalid | ErrorKind::TokenExpired | ErrorKind::Signature(..) => (
            401,
            openai_body(
                "Incorrect API key provided.",
                "invalid_request_error",
                Value::Null,
                json!("invalid_api_key"),
            ),
        ),
        ErrorKind::BadRequest(msg) => (
            400,
            openai_body(msg, "invalid_request_error", Value::Null, Value::Null),
        ),
        ErrorKind::NotFound(what) => (
            404,
            openai_body(
                &format!("The model `{what}` does not exist or you do not have access to it."),
                "invalid_request_error",
                Value::Null,
                json!("model_not_found"),
            ),
        ),
        ErrorKind::RateLimited {
            kind,
            limit,
            used,
            requested,
            retry_after,
        } => {
            headers.push(("retry-after", ceil_secs(*retry_after).to_string()));
            let (what, short, kind_name) = match kind {
                LimitKind::Requests => ("requests per min", "RPM", "requests"),
                LimitKind::Tokens => ("tokens per min", "TPM", "tokens"),
            };
            (
                429,
                openai_body(
                    &format!(
                        "Rate limit reached for mock-model in organization org-mock on {what} ({short}): Limit {limit}, Used {used}, Requested {requested}. Please try again in {}. Visit https://platform.openai.com/account/rate-limits to learn more.",
                        go_duration(*retry_after)
                    ),
                    kind_name,
                    Value::Null,
                    json!("rate_limit_exceeded"),
                ),
            )
        }
        ErrorKind::Quota => (
            429,
            openai_body(
                "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                Value::Null,
                json!("insufficient_quota"),
            ),
        ),
        ErrorKind::Server(status) => {
            let (msg, kind) = server_message(*status);
            (*status, openai_body(msg, kind, Value::Null, Value::Null))
        }
    };
    ErrorResponse {
        status,
        body,
        headers,
    }
}

fn azure_body(code: &str, message: &str) -> String {
    json!({ "error": { "code": code, "message": message } }).to_string()
}

/// Azure OpenAI error shapes (string `code`, `retry-after` and `retry-after-ms`).
pub(crate) fn azure_error(e: &ErrorKind) -> ErrorResponse {
    let mut headers = Vec::new();
    let (status, body) = match e {
        ErrorKind::MissingKey
        | ErrorKind::InvalidKey(_)
        | ErrorKind::Signature(..)
        | ErrorKind::TokenInvalid
        | ErrorKind::TokenExpired => (
            401,
            azure_body(
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
            ),
        ),
        ErrorKind::BadRequest(msg) => (400, azure_body("BadRequest", msg)),
        ErrorKind::NotFound(_) => (
            404,
            azure_body(
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
            ),
        ),
        ErrorKind::RateLimited {
            kind, retry_after, ..
        } => {
            let secs = ceil_secs(*retry_after);
            headers.push(("retry-after", secs.to_string()));
            headers.push(("retry-after-ms", retry_after.as_millis().max(1).to_string()));
            let what = match kind {
                LimitKind::Requests => "call rate limit",
                LimitKind::Tokens => "token rate limit",
            };
            (
                429,
                azure_body(
                    "429",
                    &format!(
                        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded {what} of your current OpenAI S0 pricing tier. Please retry after {secs} seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."
                    ),
                ),
            )
        }
        ErrorKind::Quota => {
            headers.push(("retry-after", "86400".to_owned()));
            headers.push(("retry-after-ms", "86400000".to_owned()));
            (
                429,
                azure_body(
                    "429",
                    "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 86400 seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.",
                ),
            )
        }
        ErrorKind::Server(status) => {
            let msg = match status {
                503 => "The service is temporarily unable to process your request. Please try again later.",
                _ => "The server had an error while processing your request. Sorry about that!",
            };
            (*status, azure_body(&status.to_string(), msg))
        }
    };
    ErrorResponse {
        status,
        body,
        headers,
    }
}

/// `POST /v1/moderations`: `input` (a string or a list of them) is required; each input gets a
/// result, flagged when it contains `FLAGME`.
pub(crate) fn moderations_json(body: &Value, seq: u64) -> Result<String, ErrorKind> {
    let inputs: Vec<&str> = match &body["input"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => {
            return Err(ErrorKind::BadRequest(
                "you must provide an input".to_owned(),
            ))
        }
    };
    let results: Vec<Value> = inputs
        .iter()
        .map(|t| {
            let flagged = t.contains("FLAGME");
            json!({
                "flagged": flagged,
                "categories": {"harassment": flagged, "violence": false},
                "category_scores": {"harassment": if flagged { 0.98 } else { 0.01 }, "violence": 0.0},
            })
        })
        .collect();
    Ok(json!({
        "id": format!("modr-mock{seq:012}"),
        "model": body["model"].as_str().unwrap_or("omni-moderation-latest"),
        "results": results,
    })
    .to_string())
}

/// `POST /v1/images/generations`: `prompt` is required; `n` images (default 1), as
/// `b64_json` or `url` (`response_format`); token-priced models (`gpt-image-*`) report usage.
pub(crate) fn images_json(body: &Value) -> Result<String, ErrorKind> {
    let Some(prompt) = body["prompt"].as_str() else {
        return Err(ErrorKind::BadRequest(
            "Missing required parameter: 'prompt'.".to_owned(),
        ));
    };
    let n = body["n"].as_u64().unwrap_or(1).clamp(1, 10);
    let b64 = body["response_format"].as_str() == Some("b64_json")
        || body["model"]
            .as_str()
            .is_some_and(|m| m.starts_with("gpt-image"));
    let data: Vec<Value> = (0..n)
        .map(|i| {
            if b64 {
                json!({"b64_json": "aW1hZ2U="})
            } else {
                json!({"url": format!("https://mock.invalid/image-{i}.png"), "revised_prompt": prompt})
            }
        })
        .collect();
    let mut out = json!({"created": 1_730_000_000u64, "data": data});
    if body["model"]
        .as_str()
        .is_some_and(|m| m.starts_with("gpt-image"))
    {
        out["usage"] = json!({"input_tokens": 10, "output_tokens": 272 * n, "total_tokens": 10 + 272 * n,
            "input_tokens_details": {"text_tokens": 10, "image_tokens": 0}});
    }
    Ok(out.to_string())
}

/// `POST /v1/audio/speech`: `input` and `voice` are required; the answer is audio bytes of the
/// requested `response_format` (default mp3).
pub(crate) fn speech_audio(body: &Value) -> Result<(&'static str, bytes::Bytes), ErrorKind> {
    if body["input"].as_str().is_none() || body["voice"].is_null() {
        return Err(ErrorKind::BadRequest(
            "Missing required parameter: 'input' and 'voice'.".to_owned(),
        ));
    }
    let content_type = match body["response_format"].as_str() {
        Some("wav") => "audio/wav",
        Some("opus") => "audio/ogg",
        Some("aac") => "audio/aac",
        Some("flac") => "audio/flac",
        Some("pcm") => "audio/pcm",
        _ => "audio/mpeg",
    };
    // An ID3 header and a few bytes: enough to be told apart from JSON.
    Ok((
        content_type,
        bytes::Bytes::from_static(b"ID3\x04\x00\x00\x00\x00\x00\x00mock-audio"),
    ))
}

/// `POST /v1/audio/transcriptions` (and translations): a `multipart/form-data` upload with a
/// `file` and a `model`; the answer is `{"text"}`, or the bare text for
/// `response_format=text`.
pub(crate) fn transcription(
    content_type: &str,
    body: &[u8],
) -> Result<(&'static str, String), ErrorKind> {
    let Some(boundary) = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
    else {
        return Err(ErrorKind::BadRequest(
            "Invalid request: expected multipart/form-data".to_owned(),
        ));
    };
    let field = |name: &str| -> Option<String> {
        let text = String::from_utf8_lossy(body);
        let marker = format!("name=\"{name}\"");
        let at = text.find(&marker)?;
        let value_at = at + text[at..].find("\r\n\r\n")? + 4;
        let end = value_at + text[value_at..].find(&format!("\r\n--{boundary}"))?;
        Some(text[value_at..end].to_owned())
    };
    if field("file").is_none() {
        return Err(ErrorKind::BadRequest(
            "Missing required parameter: 'file'.".to_owned(),
        ));
    }
    match field("model") {
        None => {
            return Err(ErrorKind::BadRequest(
                "Missing required parameter: 'model'.".to_owned(),
            ))
        }
        // A gateway's `provider/model` name is not OpenAI's.
        Some(m) if m.is_empty() || m.contains('/') => {
            return Err(ErrorKind::BadRequest(format!(
                "The model `{m}` does not exist or you do not have access to it."
            )))
        }
        Some(_) => {}
    }
    let text = "Hello from the mock upstream.";
    Ok(match field("response_format").as_deref() {
        Some("text") => ("text/plain; charset=utf-8", format!("{text}\n")),
        _ => ("application/json", json!({"text": text}).to_string()),
    })
}
