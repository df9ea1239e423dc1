//! Talks to a started mock over 127.0.0.1 with a raw hyper client and checks each dialect's wire
//! format, auth, rate limits and faults.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use gateway_mock::{
    test_service_account, Dialect, Faults, MockServer, MockUpstream, DEFAULT_REPLY,
};
use serde_json::{json, Value};
use support::{client, frames, jwt_assertion, post_json, send, sigv4_headers, sse, Resp};

const KEY: &str = "sk-test-key-123456";
const BEDROCK_MODEL: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
const BEDROCK_MODEL_ENC: &str = "anthropic.claude-3-5-haiku-20241022-v1%3A0";
const AKID: &str = "AKIDMOCKTEST";
const AWS_SECRET: &str = "mock/secret/key";

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            { "role": "system", "content": "Be terse." },
            { "role": "user", "content": "Say hello to the gateway tests" }
        ],
        "stream": stream,
        "stream_options": { "include_usage": true }
    })
}

/// Prompt tokens for `chat_body`: characters / 4.
fn chat_prompt_tokens() -> u64 {
    (("Be terse.".len() + "Say hello to the gateway tests".len()) / 4) as u64
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

async fn start(m: MockUpstream) -> MockServer {
    m.start().await.expect("mock starts")
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

// ---------------------------------------------------------------- OpenAI

#[tokio::test]
async fn openai_non_stream_body_and_headers() {
    let s = start(MockUpstream::new().key(KEY)).await;
    let c = client();
    let auth = bearer(KEY);
    let r = post_json(
        &c,
        &format!("{}/chat/completions", s.openai_base()),
        &[("authorization", &auth)],
        &chat_body(false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], DEFAULT_REPLY);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], chat_prompt_tokens());
    assert_eq!(v["usage"]["completion_tokens"], words(DEFAULT_REPLY));
    assert_eq!(
        v["usage"]["total_tokens"],
        chat_prompt_tokens() + words(DEFAULT_REPLY)
    );
    for h in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "x-request-id",
    ] {
        assert!(r.header(h).is_some(), "missing header {h}");
    }
    assert_eq!(s.requests(), 1);
    assert_eq!(s.requests_for_key(KEY), 1);
    let rec = s.last_request().expect("recorded");
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(
        rec.body["messages"][1]["content"],
        "Say hello to the gateway tests"
    );
    assert_eq!(rec.header("authorization"), Some(auth.as_str()));
}

#[tokio::test]
async fn openai_stream_has_role_chunk_usage_chunk_and_done() {
    let s = start(MockUpstream::new()).await;
    let c = client();
    let r = post_json(
        &c,
        &format!("{}/chat/completions", s.openai_base()),
        &[("authorization", "Bearer anything")],
        &chat_body(true),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    let events = sse(&r.text());
    assert_eq!(
        events.last().map(|e| e.1.as_str()),
        Some("[DONE]"),
        "ends with [DONE]"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).expect("chunk json"))
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["role"], "assistant",
        "role chunk first"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, DEFAULT_REPLY);
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count() as u64;
    assert_eq!(content_chunks, words(DEFAULT_REPLY), "one chunk per word");
    let n = chunks.len();
    assert_eq!(
        chunks[n - 2]["choices"][0]["finish_reason"],
        "stop",
        "finish chunk"
    );
    assert_eq!(
        chunks[n - 1]["choices"],
        json!([]),
        "usage chunk has no choices"
    );
    assert_eq!(
        chunks[n - 1]["usage"]["prompt_tokens"],
        chat_prompt_tokens()
    );
    assert_eq!(
        chunks[n - 1]["usage"]["completion_tokens"],
        words(DEFAULT_REPLY)
    );
    for c in &chunks[..n - 1] {
        assert!(
            c["usage"].is_null() && c.get("usage").is_some(),
            "usage:null on {c}"
        );
    }
}

#[tokio::test]
async fn openai_compatible_prefixes_and_n_chunks() {
    let s = start(MockUpstream::new().reply("abcdefghij").stream_chunks(3)).await;
    let c = client();
    for path in [
        "/chat/completions",
        "/openai/v1/chat/completions",
        "/inference/v1/chat/completions",
        "/v1beta/openai/chat/completions",
    ] {
        let mut body = chat_body(true);
        body["stream_options"]["include_usage"] = json!(false);
        let r = post_json(
            &c,
            &format!("{}{path}", s.url()),
            &[("authorization", "Bearer k")],
            &body,
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        let events = sse(&r.text());
        let deltas: Vec<String> = events
            .iter()
            .filter(|(_, d)| d != "[DONE]")
            .filter_map(|(_, d)| {
                let v: Value = serde_json::from_str(d).ok()?;
                assert!(
                    v.get("usage").is_none(),
                    "no usage field without include_usage"
                );
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .filter(|t| !t.is_empty())
            .collect();
        assert_eq!(deltas, vec!["abcd", "efg", "hij"], "{path}");
    }
}

fn tool_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [{ "role": "user", "content": "Weather in Paris?" }],
        "tools": [
            { "type": "function", "function": { "name": "get_weather", "parameters": { "type": "object" } } },
            { "type": "function", "function": { "name": "get_time", "parameters": { "type": "object" } } }
        ],
        "tool_choice": { "type": "function", "function": { "name": "get_time" } }
    })
}

#[tokio::test]
async fn openai_tool_calls_whole_and_streamed_in_fragments() {
    let s = start(MockUpstream::new()).await;
    let c = client();
    let url = format!("{}/chat/completions", s.openai_base());
    let r = post_json(
        &c,
        &url,
        &[("authorization", "Bearer k")],
        &tool_body(false),
    )
    .await;
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert!(v["choices"][0]["message"]["content"].is_null());
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(
        call["function"]["name"], "get_time",
        "named tool_choice wins"
    );
    let args: Value = serde_json::from_str(
        call["function"]["arguments"]
            .as_str()
            .expect("string arguments"),
    )
    .expect("arguments are JSON text");
    assert_eq!(args, json!({ "query": "Weather in Paris?" }));

    let r = post_json(&c, &url, &[("authorization", "Bearer k")], &tool_body(true)).await;
    let events = sse(&r.text());
    let chunks: Vec<Value> = events
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| serde_json::from_str(d).expect("json"))
        .collect();
    let header = chunks
        .iter()
        .find(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"].is_string())
        .expect("tool header chunk");
    assert_eq!(
        header["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        ""
    );
    let fragments: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .filter(|a| !a.is_empty())
        .collect();
    assert!(fragments.len() >= 2, "arguments split, got {fragments:?}");
    assert_eq!(fragments.concat(), r#"{"query":"Weather in Paris?"}"#);
    assert_eq!(
        chunks.last().expect("chunks")["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // A tool result as last message gets "Tool said: …".
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            { "role": "user", "content": "Weather in Paris?" },
            { "role": "assistant", "content": null, "tool_calls": [{ "id": "call_1", "type": "function", "function": { "name": "get_weather", "arguments": "{}" } }] },
            { "role": "tool", "tool_call_id": "call_1", "content": "18C sunny" }
        ],
        "tools": tool_body(false)["tools"].clone()
    });
    let v = post_json(&c, &url, &[("authorization", "Bearer k")], &body)
        .await
        .json();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Tool said: 18C sunny"
    );
}

#[tokio::test]
async fn openai_embeddings_float_and_base64_agree() {
    let s = start(MockUpstream::new()).await;
    let c = client();
    let url = format!("{}/embeddings", s.openai_base());
    let float = post_json(
        &c,
        &url,
        &[("authorization", "Bearer k")],
        &json!({ "model": "text-embedding-3-small", "input": ["hello", "world"], "encoding_format": "float", "dimensions": 4 }),
    )
    .await
    .json();
    assert_eq!(float["object"], "list");
    assert_eq!(float["data"][1]["index"], 1);
    let f0: Vec<f32> =
        serde_json::from_value(float["data"][0]["embedding"].clone()).expect("floats");
    assert_eq!(f0.len(), 4, "dimensions honoured");
    let b64 = post_json(
        &c,
        &url,
        &[("authorization", "Bearer k")],
        &json!({ "model": "text-embedding-3-small", "input": "hello", "encoding_format": "base64", "dimensions": 4 }),
    )
    .await
    .json();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().expect("base64 string"))
        .expect("valid base64");
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(
        decoded, f0,
        "base64 is little-endian f32 of the same vector"
    );
    assert!(b64["usage"]["prompt_tokens"].as_u64().is_some());
    let models = send(
        &c,
        "GET",
        &format!("{}/models", s.openai_base()),
        &[("authorization", "Bearer k")],
        b"",
    )
    .await;
    assert_eq!(models.json()["object"], "list");
}

#[tokio::test]
async fn openai_rpm_limit_gives_429_with_headers() {
    let s = start(MockUpstream::new().key_limits(KEY, Some(2), None)).await;
    let c = client();
    let url = format!("{}/chat/completions", s.openai_base());
    let auth = bearer(KEY);
    let mut remaining = Vec::new();
    for _ in 0..2 {
        let r = post_json(&c, &url, &[("authorization", &auth)], &chat_body(false)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
        remaining.push(
            r.header("x-ratelimit-remaining-requests")
                .map(str::to_owned),
        );
    }
    assert_eq!(remaining, vec![Some("1".to_owned()), Some("0".to_owned())]);
    let r = post_json(&c, &url, &[("authorization", &auth)], &chat_body(false)).await;
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "requests");
    let retry: u64 = r
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    let reset = r
        .header("x-ratelimit-reset-requests")
        .expect("reset header");
    assert!(reset.ends_with('s'), "Go duration, got {reset}");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
}

#[tokio::test]
async fn a_limited_key_recovers_when_its_window_resets() {
    let s = start(
        MockUpstream::new()
            .key_limits(KEY, Some(1), None)
            .rate_window(Duration::from_millis(300)),
    )
    .await;
    assert_eq!(probe(&s, Dialect::Anthropic, KEY).await.status, 200);
    let r = probe(&s, Dialect::Anthropic, KEY).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert_eq!(
        r.header("anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
    assert!(r.header("retry-after").is_some());
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        probe(&s, Dialect::Anthropic, KEY).await.status,
        200,
        "window reset"
    );
}

#[tokio::test]
async fn tpm_limit_counts_prompt_and_completion_tokens() {
    // chat_body costs chat_prompt_tokens() + 5 completion tokens = 14 tokens.
    let s = start(MockUpstream::new().key_limits(KEY, None, Some(20))).await;
    assert_eq!(probe(&s, Dialect::OpenAi, KEY).await.status, 200);
    let r = probe(&s, Dialect::OpenAi, KEY).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "tokens");
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("20"));
}

// ---------------------------------------------------------------- OpenAI Responses

/// The same text as `chat_body`, as instructions plus one user message item.
fn responses_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "instructions": "Be terse.",
        "input": [{
            "role": "user",
            "content": [{ "type": "input_text", "text": "Say hello to the gateway tests" }]
        }],
        "max_output_tokens": 64,
        "previous_response_id": "resp_prev123",
        "store": false,
        "unknown_member": { "ignored": true },
        "stream": stream
    })
}

fn responses_tool_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "input": "Weather in Paris?",
        "tools": [
            { "type": "function", "name": "get_weather", "description": "Weather", "parameters": { "type": "object" } },
            { "type": "function", "name": "get_time", "parameters": { "type": "object" } }
        ]
    })
}

fn responses_url(s: &MockServer) -> String {
    format!("{}/responses", s.openai_base())
}

/// Stream events as (event name, data), checking that the data's `type` is the event name.
fn response_events(r: &Resp) -> Vec<(String, Value)> {
    sse(&r.text())
        .into_iter()
        .map(|(name, data)| {
            let v: Value = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("event data is JSON ({e}): {data}"));
            assert_eq!(v["type"], name.as_str(), "type matches the event name");
            (name, v)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn responses_non_stream_shape_and_usage_match_chat() {
    let s = start(MockUpstream::new().key(KEY)).await;
    let c = client();
    let auth = bearer(KEY);
    let r = post_json(
        &c,
        &responses_url(&s),
        &[("authorization", &auth)],
        &responses_body(false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    for h in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-tokens",
        "x-request-id",
    ] {
        assert!(r.header(h).is_some(), "missing header {h}");
    }
    let v = r.json();
    let id = v["id"].as_str().expect("id");
    assert!(id.starts_with("resp_"), "id {id}");
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert!(v["created_at"].as_u64().is_some_and(|t| t > 1_700_000_000));
    assert!(v["error"].is_null() && v["incomplete_details"].is_null());
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["instructions"], "Be terse.", "echoed");
    assert_eq!(v["max_output_tokens"], 64, "echoed");
    assert_eq!(v["previous_response_id"], "resp_prev123", "echoed");
    assert_eq!(v["tool_choice"], "auto");
    assert_eq!(v["tools"], json!([]));
    let output = v["output"].as_array().expect("output array");
    assert_eq!(output.len(), 1);
    let msg = &output[0];
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["role"], "assistant");
    assert_eq!(msg["status"], "completed");
    assert!(msg["id"].as_str().is_some_and(|i| i.starts_with("msg_")));
    assert_eq!(
        msg["content"],
        json!([{ "type": "output_text", "text": DEFAULT_REPLY, "annotations": [] }])
    );
    let u = &v["usage"];
    assert_eq!(u["input_tokens"], chat_prompt_tokens());
    assert_eq!(u["output_tokens"], words(DEFAULT_REPLY));
    assert_eq!(
        u["total_tokens"],
        chat_prompt_tokens() + words(DEFAULT_REPLY)
    );
    assert_eq!(u["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 0);

    // The same conversation through Chat Completions is planned the same.
    let chat = post_json(
        &c,
        &format!("{}/chat/completions", s.openai_base()),
        &[("authorization", &auth)],
        &chat_body(false),
    )
    .await
    .json();
    assert_eq!(u["input_tokens"], chat["usage"]["prompt_tokens"]);
    assert_eq!(u["output_tokens"], chat["usage"]["completion_tokens"]);
    assert_eq!(u["total_tokens"], chat["usage"]["total_tokens"]);

    // A string input counts like the message item.
    let mut body = responses_body(false);
    body["input"] = json!("Say hello to the gateway tests");
    let v2 = post_json(&c, &responses_url(&s), &[("authorization", &auth)], &body)
        .await
        .json();
    assert_eq!(v2["usage"], v["usage"]);
    assert_ne!(v2["id"], v["id"], "ids are per request");

    assert_eq!(s.requests(), 3);
    assert_eq!(s.requests_for_key(KEY), 3);
    assert_eq!(s.requests_for_dialect(Dialect::OpenAi), 3);
    let rec = s.last_request().expect("recorded");
    assert_eq!(rec.dialect, Dialect::OpenAi);
    assert_eq!(rec.path, "/v1/responses");
    assert_eq!(rec.body["input"], "Say hello to the gateway tests");
}

#[tokio::test]
async fn responses_tool_call_when_tools_are_offered() {
    let s = start(MockUpstream::new()).await;
    let c = client();
    let url = responses_url(&s);
    let auth = [("authorization", "Bearer k")];
    let v = post_json(&c, &url, &auth, &responses_tool_body(false))
        .await
        .json();
    let output = v["output"].as_array().expect("output");
    assert_eq!(output.len(), 1);
    let call = &output[0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "get_weather", "first tool by default");
    assert_eq!(call["status"], "completed");
    assert!(call["id"].as_str().is_some_and(|i| i.starts_with("fc_")));
    assert!(call["call_id"]
        .as_str()
        .is_some_and(|i| i.starts_with("call_")));
    let arguments = call["arguments"].as_str().expect("string arguments");
    let args: Value = serde_json::from_str(arguments).expect("arguments are JSON text");
    assert_eq!(args, json!({ "query": "Weather in Paris?" }));
    assert_eq!(v["tools"][1]["name"], "get_time", "tools echoed");
    let out_tokens = v["usage"]["output_tokens"].as_u64().expect("output_tokens");
    assert!(out_tokens >= 2, "one token per argument fragment");
    assert_eq!(
        v["usage"]["total_tokens"].as_u64(),
        v["usage"]["input_tokens"].as_u64().map(|i| i + out_tokens)
    );

    let mut named = responses_tool_body(false);
    named["tool_choice"] = json!({ "type": "function", "name": "get_time" });
    let v = post_json(&c, &url, &auth, &named).await.json();
    assert_eq!(v["output"][0]["name"], "get_time", "named tool_choice wins");
    assert_eq!(v["tool_choice"]["name"], "get_time", "tool_choice echoed");

    let mut none = responses_tool_body(false);
    none["tool_choice"] = json!("none");
    let v = post_json(&c, &url, &auth, &none).await.json();
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["text"], DEFAULT_REPLY);

    let r = post_json(&c, &url, &auth, &responses_tool_body(true)).await;
    let events = response_events(&r);
    let n = names(&events);
    assert_eq!(
        n[..3],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added"
        ]
    );
    assert_eq!(
        n[n.len() - 3..],
        [
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let deltas = &n[3..n.len() - 3];
    assert!(deltas.len() >= 2, "arguments in fragments: {n:?}");
    assert!(deltas
        .iter()
        .all(|d| *d == "response.function_call_arguments.delta"));
    let added = &events[2].1["item"];
    assert_eq!(added["type"], "function_call");
    assert_eq!(added["arguments"], "");
    assert_eq!(added["status"], "in_progress");
    let item_id = added["id"].clone();
    let streamed: String = events[3..n.len() - 3]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["item_id"], item_id);
            assert_eq!(d["output_index"], 0);
            d["delta"].as_str().expect("delta")
        })
        .collect();
    assert_eq!(streamed, r#"{"query":"Weather in Paris?"}"#);
    assert_eq!(events[n.len() - 3].1["arguments"], streamed.as_str());
    let done_item = &events[n.len() - 2].1["item"];
    assert_eq!(done_item["status"], "completed");
    assert_eq!(done_item["arguments"], streamed.as_str());
    assert_eq!(events[n.len() - 1].1["response"]["output"][0], *done_item);
}

#[tokio::test]
async fn responses_function_call_output_last_gives_tool_said() {
    let s = start(MockUpstream::new()).await;
    let c = client();
    let mut body = responses_tool_body(false);
    body["input"] = json!([
        { "type": "message", "role": "user", "content": "Weather in Paris?" },
        { "type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"query\":\"Paris\"}" },
        { "type": "function_call_output", "call_id": "call_1", "output": "18C sunny" }
    ]);
    let auth = [("authorization", "Bearer k")];
    let v = post_json(&c, &responses_url(&s), &auth, &body).await.json();
    assert_eq!(v["output"][0]["type"], "message", "no second tool call");
    assert_eq!(v["output"][0]["content"][0]["text"], "Tool said: 18C sunny");
    assert_eq!(v["usage"]["output_tokens"], words("Tool said: 18C sunny"));
    let chars = "Weather in Paris?".len()
        + "get_weather".len()
        + r#"{"query":"Paris"}"#.len()
        + "18C sunny".len();
    assert_eq!(v["usage"]["input_tokens"], (chars / 4) as u64);

    body["stream"] = json!(true);
    let r = post_json(&c, &responses_url(&s), &auth, &body).await;
    let text: String = response_events(&r)
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .filter_map(|(_, d)| d["delta"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Tool said: 18C sunny");
}

#[tokio::test]
async fn responses_stream_event_sequence() {
    let s = start(MockUpstream::new()).await;
    let c = client();
    for path in [
        "/v1/responses",
        "/openai/v1/responses",
        "/v1beta/openai/responses",
    ] {
        let r = post_json(
            &c,
            &format!("{}{path}", s.url()),
            &[("authorization", "Bearer k")],
            &responses_body(true),
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/event-stream"));
        assert!(!r.text().contains("[DONE]"), "no [DONE]");
        let events = response_events(&r);
        let mut expected = vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ];
        expected.extend(std::iter::repeat_n(
            "response.output_text.delta",
            words(DEFAULT_REPLY) as usize,
        ));
        expected.extend([
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]);
        assert_eq!(names(&events), expected, "{path}");
        for (i, (name, d)) in events.iter().enumerate() {
            assert_eq!(d["sequence_number"], i as u64, "{name}");
        }

        let created = &events[0].1["response"];
        assert_eq!(created["status"], "in_progress");
        assert_eq!(created["output"], json!([]));
        assert!(created["usage"].is_null());
        assert_eq!(events[1].1["response"], *created);
        let added = &events[2].1;
        assert_eq!(added["output_index"], 0);
        assert_eq!(added["item"]["type"], "message");
        assert_eq!(added["item"]["status"], "in_progress");
        assert_eq!(added["item"]["content"], json!([]));
        let item_id = added["item"]["id"].clone();
        let part = &events[3].1;
        assert_eq!(part["item_id"], item_id);
        assert_eq!(
            (part["output_index"].clone(), part["content_index"].clone()),
            (json!(0), json!(0))
        );
        assert_eq!(
            part["part"],
            json!({ "type": "output_text", "text": "", "annotations": [] })
        );
        let deltas = &events[4..events.len() - 4];
        let text: String = deltas
            .iter()
            .map(|(_, d)| {
                assert_eq!(d["item_id"], item_id);
                assert_eq!(d["content_index"], 0);
                assert_eq!(d["logprobs"], json!([]));
                d["delta"].as_str().expect("delta")
            })
            .collect();
        assert_eq!(text, DEFAULT_REPLY);
        let n = events.len();
        assert_eq!(events[n - 4].1["text"], DEFAULT_REPLY);
        assert_eq!(events[n - 3].1["part"]["text"], DEFAULT_REPLY);
        let item = &events[n - 2].1["item"];
        assert_eq!(item["status"], "completed");
        assert_eq!(item["id"], item_id);
        assert_eq!(item["content"][0]["text"], DEFAULT_REPLY);

        let done = &events[n - 1].1["response"];
        assert_eq!(done["id"], created["id"]);
        assert!(done["id"].as_str().is_some_and(|i| i.starts_with("resp_")));
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"], json!([item]));
        assert_eq!(done["instructions"], "Be terse.");
        assert_eq!(done["usage"]["input_tokens"], chat_prompt_tokens());
        assert_eq!(done["usage"]["output_tokens"], words(DEFAULT_REPLY));
        assert_eq!(
            done["usage"]["total_tokens"],
            chat_prompt_tokens() + words(DEFAULT_REPLY)
        );
    }
}

#[tokio::test]
async fn responses_wrong_or_missing_key_is_401() {
    let s = start(MockUpstream::new().key(KEY)).await;
    let c = client();
    let r = post_json(
        &c,
        &responses_url(&s),
        &[("authorization", "Bearer sk-wrong-key-000000")],
        &responses_body(false),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["code"], "invalid_api_key");
    assert_eq!(e["type"], "invalid_request_error");
    assert!(e["param"].is_null() && e.get("param").is_some());
    assert!(e["message"]
        .as_str()
        .is_some_and(|m| m.contains("Incorrect API key") && !m.contains("sk-wrong-key-000000")));
    assert_eq!(s.requests_for_key("sk-wrong-key-000000"), 1, "counted");

    let r = post_json(&c, &responses_url(&s), &[], &responses_body(false)).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["message"].is_string());

    let auth = bearer(KEY);
    let ok = post_json(
        &c,
        &responses_url(&s),
        &[("authorization", &auth)],
        &responses_body(false),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(s.requests(), 3);
}

#[tokio::test]
async fn responses_share_the_chat_limits_and_faults() {
    let auth = bearer(KEY);
    let limited = start(MockUpstream::new().key_limits(KEY, Some(1), None)).await;
    let c = client();
    let url = responses_url(&limited);
    let ok = post_json(
        &c,
        &url,
        &[("authorization", &auth)],
        &responses_body(false),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-ratelimit-limit-requests"), Some("1"));
    let r = post_json(
        &c,
        &url,
        &[("authorization", &auth)],
        &responses_body(false),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));

    let s = start(MockUpstream::new()).await;
    let url = responses_url(&s);
    let k = [("authorization", "Bearer k")];
    let bad = post_json(&c, &url, &k, &json!({ "model": "m", "input": 3 })).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["type"], "invalid_request_error");

    s.set_faults(Faults {
        error_rate: 1.0,
        error_status: Some(503),
        ..Faults::default()
    });
    let r = post_json(&c, &url, &k, &responses_body(false)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["type"], "server_error");

    s.set_faults(Faults {
        rate_limit_always: true,
        ..Faults::default()
    });
    let r = post_json(&c, &url, &k, &responses_body(false)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));

    s.set_faults(Faults {
        quota_exhausted: true,
        ..Faults::default()
    });
    let r = post_json(&c, &url, &k, &responses_body(false)).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (429, json!("insufficient_quota"))
    );

    s.set_faults(Faults {
        malformed: true,
        ..Faults::default()
    });
    let r = post_json(&c, &url, &k, &responses_body(false)).await;
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    let r = post_json(&c, &url, &k, &responses_body(true)).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    let events = sse(&r.text());
    assert!(!events.is_empty());
    assert!(events
        .iter()
        .all(|(_, d)| serde_json::from_str::<Value>(d).is_err()));

    s.set_faults(Faults {
        disconnect_after_chunks: Some(2),
        ..Faults::default()
    });
    let r = post_json(&c, &url, &k, &responses_body(true)).await;
    assert_eq!(r.status, 200);
    assert!(r.body_error.is_some(), "connection dropped");
    assert_eq!(
        names(&response_events(&r)),
        ["response.created", "response.in_progress"]
    );

    s.set_faults(Faults {
        mid_stream_error_after: Some(3),
        error_status: Some(503),
        ..Faults::default()
    });
    let r = post_json(&c, &url, &k, &responses_body(true)).await;
    let events = response_events(&r);
    assert_eq!(events.len(), 4);
    let (name, e) = &events[3];
    assert_eq!(name, "error");
    assert_eq!(e["sequence_number"], 3);
    assert_eq!(e["code"], "server_error");
    assert!(e["message"].is_string());

    s.set_faults(Faults {
        ttft_ms: Some(40),
        chunk_delay_ms: Some(10),
        ..Faults::default()
    });
    let t = Instant::now();
    let r = post_json(&c, &url, &k, &responses_body(true)).await;
    let n = response_events(&r).len() as u32;
    // 40 ms before the first event, 10 ms between the others.
    assert!(
        t.elapsed() >= Duration::from_millis(40) + Duration::from_millis(10) * (n - 1),
        "took {:?} for {n} events",
        t.elapsed()
    );
    assert_eq!(s.requests(), 9, "every request counted");
}

// ---------------------------------------------------------------- Azure

#[tokio::test]
async fn azure_shapes_version_and_first_stream_chunk() {
    let s = start(MockUpstream::new().key(KEY)).await;
    let c = client();
    let base = format!("{}/openai/deployments/my-gpt4o/chat/completions", s.url());
    let r = post_json(&c, &base, &[("api-key", KEY)], &chat_body(false)).await;
    assert_eq!(r.status, 400, "api-version is required");
    assert!(r.json()["error"]["message"].as_str().is_some());

    let url = format!("{base}?api-version=2024-10-21");
    let r = post_json(&c, &url, &[("api-key", KEY)], &chat_body(false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["model"], "my-gpt4o", "model is the deployment");
    assert!(v["prompt_filter_results"][0]["content_filter_results"].is_object());
    assert!(v["choices"][0]["content_filter_results"]["hate"].is_object());
    assert!(r.header("apim-request-id").is_some());

    let r = post_json(&c, &url, &[("api-key", KEY)], &chat_body(true)).await;
    let events = sse(&r.text());
    let first: Value = serde_json::from_str(&events[0].1).expect("json");
    assert_eq!(first["id"], "");
    assert_eq!(first["choices"], json!([]));
    assert!(first["prompt_filter_results"].is_array());
    assert_eq!(events.last().expect("events").1, "[DONE]");

    let r = post_json(&c, &url, &[("api-key", "wrong")], &chat_body(false)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "401", "Azure codes are strings");

    s.set_faults(Faults {
        rate_limit_always: true,
        retry_after_ms: Some(2500),
        ..Faults::default()
    });
    let r = post_json(&c, &url, &[("api-key", KEY)], &chat_body(false)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(r.header("retry-after-ms"), Some("2500"));
    assert_eq!(r.json()["error"]["code"], "429");
}

// ---------------------------------------------------------------- Anthropic

fn anthropic_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "system": "Be terse.",
        "stream": stream,
        "messages": [{ "role": "user", "content": "Say hello to the gateway tests" }]
    })
}

fn anthropic_headers(key: &str) -> Vec<(&str, &str)> {
    vec![("x-api-key", key), ("anthropic-version", "2023-06-01")]
}

#[tokio::test]
async fn anthropic_requires_version_and_max_tokens() {
    let s = start(MockUpstream::new()).await;
    let c = client();
    let url = format!("{}/v1/messages", s.url());
    let r = post_json(&c, &url, &[("x-api-key", "k")], &anthropic_body(false)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let mut body = anthropic_body(false);
    body.as_object_mut().expect("object").remove("max_tokens");
    let r = post_json(&c, &url, &anthropic_headers("k"), &body).await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("max_tokens"));
    assert!(v["request_id"].is_string());
}

#[tokio::test]
async fn anthropic_message_and_event_sequence() {
    let s = start(MockUpstream::new().key(KEY)).await;
    let c = client();
    let url = format!("{}/v1/messages", s.url());
    let r = post_json(&c, &url, &anthropic_headers(KEY), &anthropic_body(false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert!(v["id"].as_str().unwrap_or_default().starts_with("msg_"));
    assert_eq!(
        v["content"][0],
        json!({ "type": "text", "text": DEFAULT_REPLY })
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["stop_sequence"].is_null());
    assert_eq!(v["usage"]["input_tokens"], chat_prompt_tokens());
    assert_eq!(v["usage"]["output_tokens"], words(DEFAULT_REPLY));
    assert_eq!(v["usage"]["cache_read_input_tokens"], 0);
    assert!(r.header("request-id").is_some());
    let reset = r
        .header("anthropic-ratelimit-requests-reset")
        .expect("reset header");
    assert!(
        reset.len() == 20 && reset.ends_with('Z') && &reset[10..11] == "T",
        "RFC 3339: {reset}"
    );
    assert!(r.header("anthropic-ratelimit-tokens-remaining").is_some());

    let r = post_json(&c, &url, &anthropic_headers(KEY), &anthropic_body(true)).await;
    let events = sse(&r.text());
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    let n = words(DEFAULT_REPLY) as usize;
    let mut want = vec!["message_start", "content_block_start", "ping"];
    want.extend(std::iter::repeat_n("content_block_delta", n));
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    for (name, data) in &events {
        let v: Value = serde_json::from_str(data).expect("json data");
        assert_eq!(v["type"], *name, "event name equals data.type");
    }
    let start: Value = serde_json::from_str(&events[0].1).expect("json");
    assert_eq!(
        start["message"]["usage"]["input_tokens"],
        chat_prompt_tokens()
    );
    let delta: Value = serde_json::from_str(&events[events.len() - 2].1).expect("json");
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], words(DEFAULT_REPLY));
}

#[tokio::test]
async fn anthropic_tool_use_is_streamed_as_input_json_deltas() {
    let s = start(MockUpstream::new()).await;
    let c = client();
    let url = format!("{}/v1/messages", s.url());
    let mut body = anthropic_body(true);
    body["tools"] = json!([{ "name": "get_weather", "input_schema": { "type": "object" } }]);
    let r = post_json(&c, &url, &anthropic_headers("k"), &body).await;
    let events = sse(&r.text());
    let start: Value = serde_json::from_str(&events[1].1).expect("json");
    assert_eq!(start["content_block"]["type"], "tool_use");
    assert_eq!(start["content_block"]["name"], "get_weather");
    let partial: Vec<String> = events
        .iter()
        .filter(|(e, _)| e == "content_block_delta")
        .map(|(_, d)| {
            let v: Value = serde_json::from_str(d).expect("json");
            assert_eq!(v["delta"]["type"], "input_json_delta");
            v["delta"]["partial_json"]
                .as_str()
                .expect("partial_json")
                .to_owned()
        })
        .collect();
    assert!(
        partial.iter().filter(|p| !p.is_empty()).count() >= 2,
        "{partial:?}"
    );
    let input: Value = serde_json::from_str(&partial.concat()).expect("concatenated JSON");
    assert_eq!(input, json!({ "query": "Say hello to the gateway tests" }));
    let delta: Value = serde_json::from_str(&events[events.len() - 2].1).expect("json");
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");

    body["stream"] = json!(false);
    let v = post_json(&c, &url, &anthropic_headers("k"), &body)
        .await
        .json();
    assert_eq!(v["content"][0]["type"], "tool_use");
    assert_eq!(
        v["content"][0]["input"]["query"],
        "Say hello to the gateway tests"
    );
    assert_eq!(v["stop_reason"], "tool_use");

    // Tool result as last turn.
    let body = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 100,
        "tools": [{ "name": "get_weather", "input_schema": { "type": "object" } }],
        "messages": [
            { "role": "user", "content": "Weather?" },
            { "role": "assistant", "content": [{ "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {} }] },
            { "role": "user", "content": [{ "type": "tool_result", "tool_use_id": "toolu_1", "content": "18C sunny" }] }
        ]
    });
    let v = post_json(&c, &url, &anthropic_headers("k"), &body)
        .await
        .json();
    assert_eq!(v["content"][0]["text"], "Tool said: 18C sunny");
}

// ---------------------------------------------------------------- Gemini

fn gemini_body() -> Value {
    json!({
        "systemInstruction": { "parts": [{ "text": "Be terse." }] },
        "contents": [{ "role": "user", "parts": [{ "text": "Say hello to the gateway tests" }] }]
    })
}

#[tokio::test]
async fn gemini_generate_stream_and_function_call() {
    let s = start(MockUpstream::new().key(KEY)).await;
    let c = client();
    let base = format!("{}/v1beta/models/gemini-2.5-flash", s.url());
    let r = post_json(
        &c,
        &format!("{base}:generateContent"),
        &[("x-goog-api-key", KEY)],
        &gemini_body(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        DEFAULT_REPLY
    );
    assert_eq!(v["candidates"][0]["content"]["role"], "model");
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["usageMetadata"]["promptTokenCount"], chat_prompt_tokens());
    assert_eq!(
        v["usageMetadata"]["candidatesTokenCount"],
        words(DEFAULT_REPLY)
    );
    assert!(
        r.header("x-ratelimit-limit-requests").is_none(),
        "Google sends no rate-limit headers"
    );

    let r = post_json(
        &c,
        &format!("{base}:streamGenerateContent?alt=sse&key={KEY}"),
        &[],
        &gemini_body(),
    )
    .await;
    assert_eq!(r.status, 200, "?key= works: {}", r.text());
    assert!(
        r.text().contains("\r\n\r\n"),
        "Google separates events with CRLF"
    );
    let events = sse(&r.text());
    assert!(
        events.iter().all(|(e, d)| e.is_empty() && d != "[DONE]"),
        "data-only, no sentinel"
    );
    let chunks: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).expect("json"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str())
        .collect();
    assert_eq!(text, DEFAULT_REPLY);
    let last = chunks.last().expect("chunks");
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        last["usageMetadata"]["candidatesTokenCount"],
        words(DEFAULT_REPLY),
        "cumulative usage"
    );

    let mut body = gemini_body();
    body["tools"] = json!([{ "functionDeclarations": [{ "name": "get_weather", "parameters": { "type": "object" } }] }]);
    let r = post_json(
        &c,
        &format!("{base}:streamGenerateContent?alt=sse"),
        &[("x-goog-api-key", KEY)],
        &body,
    )
    .await;
    let events = sse(&r.text());
    assert_eq!(events.len(), 1, "function call arrives whole in one chunk");
    let v: Value = serde_json::from_str(&events[0].1).expect("json");
    let part = &v["candidates"][0]["content"]["parts"][0];
    assert_eq!(part["functionCall"]["name"], "get_weather");
    assert_eq!(
        part["functionCall"]["args"],
        json!({ "query": "Say hello to the gateway tests" })
    );
    assert!(part["functionCall"].get("id").is_none(), "no call ids");
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");

    // Without alt=sse: a streamed JSON array.
    let r = post_json(
        &c,
        &format!("{base}:streamGenerateContent"),
        &[("x-goog-api-key", KEY)],
        &gemini_body(),
    )
    .await;
    let arr = r.json();
    assert_eq!(
        arr.as_array().map(Vec::len),
        Some(words(DEFAULT_REPLY) as usize)
    );
}

#[tokio::test]
async fn gemini_bad_key_is_400_api_key_invalid_and_429_has_retry_info() {
    let s = start(MockUpstream::new().key_limits(KEY, Some(1), None)).await;
    let c = client();
    let url = format!("{}/v1beta/models/gemini-2.5-flash:generateContent", s.url());
    let r = post_json(
        &c,
        &url,
        &[("x-goog-api-key", "AIza-wrong")],
        &gemini_body(),
    )
    .await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(v["error"]["details"][0]["reason"], "API_KEY_INVALID");

    assert_eq!(
        post_json(&c, &url, &[("x-goog-api-key", KEY)], &gemini_body())
            .await
            .status,
        200
    );
    let r = post_json(&c, &url, &[("x-goog-api-key", KEY)], &gemini_body()).await;
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    let details = v["error"]["details"].as_array().expect("details");
    assert!(details
        .iter()
        .any(|d| d["@type"] == "type.googleapis.com/google.rpc.QuotaFailure"));
    let retry = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .expect("RetryInfo");
    assert!(retry["retryDelay"]
        .as_str()
        .unwrap_or_default()
        .ends_with('s'));

    let emb = post_json(
        &c,
        &format!(
            "{}/v1beta/models/text-embedding-004:batchEmbedContents",
            s.url()
        ),
        &[("x-goog-api-key", "AIza-wrong")],
        &json!({}),
    )
    .await;
    assert_eq!(emb.status, 400, "embed checks the key too");
}

#[tokio::test]
async fn gemini_embeddings_and_models() {
    let s = start(MockUpstream::new()).await;
    let c = client();
    let v = post_json(
        &c,
        &format!("{}/v1beta/models/text-embedding-004:embedContent", s.url()),
        &[("x-goog-api-key", "k")],
        &json!({ "content": { "parts": [{ "text": "hello" }] }, "outputDimensionality": 5 }),
    )
    .await
    .json();
    assert_eq!(v["embedding"]["values"].as_array().map(Vec::len), Some(5));
    let v = post_json(
        &c,
        &format!(
            "{}/v1beta/models/text-embedding-004:batchEmbedContents",
            s.url()
        ),
        &[("x-goog-api-key", "k")],
        &json!({ "requests": [
            { "model": "models/text-embedding-004", "content": { "parts": [{ "text": "a" }] } },
            { "model": "models/text-embedding-004", "content": { "parts": [{ "text": "b" }] } }
        ] }),
    )
    .await
    .json();
    assert_eq!(v["embeddings"].as_array().map(Vec::len), Some(2));
    let r = send(
        &c,
        "GET",
        &format!("{}/v1beta/models", s.url()),
        &[("x-goog-api-key", "k")],
        b"",
    )
    .await;
    assert!(r.json()["models"].is_array());
}

// ---------------------------------------------------------------- Vertex

#[tokio::test]
async fn vertex_token_endpoint_and_bearer_flow() {
    let s = start(MockUpstream::new()).await;
    let c = client();
    let sa = test_service_account(&s.token_uri());
    let sa_json: Value = serde_json::from_str(&sa).expect("json");
    assert_eq!(sa_json["type"], "service_account");
    assert_eq!(sa_json["token_uri"], s.token_uri());
    assert!(sa_json["private_key"]
        .as_str()
        .unwrap_or_default()
        .contains("BEGIN PRIVATE KEY"));

    let form = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={}",
        jwt_assertion(&sa, 3600)
    );
    let r = send(
        &c,
        "POST",
        &s.token_uri(),
        &[("content-type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let token = v["access_token"].as_str().expect("token").to_owned();
    assert!(token.starts_with("ya29.mock-"));
    assert_eq!(v["expires_in"], 3599);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(s.token_fetches(), 1);

    let url = format!(
        "{}/v1/projects/mock-project/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent",
        s.url()
    );
    let auth = bearer(&token);
    let r = post_json(&c, &url, &[("authorization", &auth)], &gemini_body()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["candidates"][0]["content"]["parts"][0]["text"],
        DEFAULT_REPLY
    );
    assert_eq!(s.requests_for_dialect(Dialect::Vertex), 1);
    assert_eq!(s.requests_for_key(&token), 1);

    let stream_url = url.replace(":generateContent", ":streamGenerateContent?alt=sse");
    let r = post_json(&c, &stream_url, &[("authorization", &auth)], &gemini_body()).await;
    assert_eq!(sse(&r.text()).len(), words(DEFAULT_REPLY) as usize);

    let r = post_json(
        &c,
        &url,
        &[("authorization", "Bearer ya29.forged")],
        &gemini_body(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["status"], "UNAUTHENTICATED");

    s.expire_tokens();
    let r = post_json(&c, &url, &[("authorization", &auth)], &gemini_body()).await;
    assert_eq!(r.status, 401, "expired token refused");

    // Vertex insists on roles.
    let form2 = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={}",
        jwt_assertion(&sa, 3600)
    );
    let token2 = send(
        &c,
        "POST",
        &s.token_uri(),
        &[("content-type", "application/x-www-form-urlencoded")],
        form2.as_bytes(),
    )
    .await
    .json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let no_role = json!({ "contents": [{ "parts": [{ "text": "hi" }] }] });
    let r = post_json(&c, &url, &[("authorization", &bearer(&token2))], &no_role).await;
    assert_eq!(r.status, 400);

    // Forged claims under a genuine signature are refused.
    let genuine = jwt_assertion(&sa, 3600);
    let parts: Vec<&str> = genuine.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value =
        serde_json::from_slice(&b64.decode(parts[1]).expect("b64")).expect("json");
    claims["iss"] = json!("attacker@evil.iam.gserviceaccount.com");
    let jwt = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    let form =
        format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}");
    let r = send(
        &c,
        "POST",
        &s.token_uri(),
        &[("content-type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
    // A two-part token is refused.
    let r = send(
        &c,
        "POST",
        &s.token_uri(),
        &[],
        b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(s.token_fetches(), 2);
}

// ---------------------------------------------------------------- Bedrock

fn converse_body() -> Value {
    json!({
        "system": [{ "text": "Be terse." }],
        "messages": [{ "role": "user", "content": [{ "text": "Say hello to the gateway tests" }] }],
        "inferenceConfig": { "maxTokens": 256 }
    })
}

async fn bedrock_call(
    s: &MockServer,
    action: &str,
    body: &Value,
    akid: &str,
    secret: &str,
    tamper: bool,
) -> Resp {
    let url = format!("{}/model/{BEDROCK_MODEL_ENC}/{action}", s.url());
    let bytes = body.to_string().into_bytes();
    let headers = sigv4_headers(&url, &bytes, akid, secret);
    let mut sent = bytes.clone();
    if tamper {
        sent.extend_from_slice(b" ");
    }
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    send(&client(), "POST", &url, &h, &sent).await
}

#[tokio::test]
async fn bedrock_sigv4_converse_and_stream_frames() {
    let s = start(MockUpstream::new().aws_key(AKID, AWS_SECRET)).await;
    let r = bedrock_call(&s, "converse", &converse_body(), AKID, AWS_SECRET, false).await;
    assert_eq!(r.status, 200, "correct signature accepted: {}", r.text());
    let v = r.json();
    assert_eq!(v["output"]["message"]["role"], "assistant");
    assert_eq!(v["output"]["message"]["content"][0]["text"], DEFAULT_REPLY);
    assert_eq!(v["stopReason"], "end_turn");
    assert_eq!(v["usage"]["inputTokens"], chat_prompt_tokens());
    assert_eq!(v["usage"]["outputTokens"], words(DEFAULT_REPLY));
    assert_eq!(s.requests_for_key(AKID), 1);
    let rec = s.last_request_for(Dialect::Bedrock).expect("recorded");
    assert_eq!(rec.path, format!("/model/{BEDROCK_MODEL_ENC}/converse"));

    let r = bedrock_call(
        &s,
        "converse-stream",
        &converse_body(),
        AKID,
        AWS_SECRET,
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.amazon.eventstream")
    );
    let fs = frames(&r.body);
    let types: Vec<&str> = fs
        .iter()
        .map(|f| f.headers[":event-type"].as_str())
        .collect();
    let n = words(DEFAULT_REPLY) as usize;
    let mut want = vec!["messageStart"];
    want.extend(std::iter::repeat_n("contentBlockDelta", n));
    want.extend(["contentBlockStop", "messageStop", "metadata"]);
    assert_eq!(types, want);
    for f in &fs {
        assert_eq!(f.headers[":message-type"], "event");
        assert_eq!(f.headers[":content-type"], "application/json");
    }
    let text: String = fs
        .iter()
        .filter_map(|f| f.json()["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, DEFAULT_REPLY);
    assert_eq!(fs[n + 2].json()["stopReason"], "end_turn");
    assert_eq!(
        fs[n + 3].json()["usage"]["outputTokens"],
        words(DEFAULT_REPLY)
    );

    // Tool use streams start/delta/stop.
    let mut body = converse_body();
    body["toolConfig"] = json!({ "tools": [{ "toolSpec": { "name": "get_weather", "inputSchema": { "json": { "type": "object" } } } }] });
    let r = bedrock_call(&s, "converse-stream", &body, AKID, AWS_SECRET, false).await;
    let fs = frames(&r.body);
    assert_eq!(fs[1].headers[":event-type"], "contentBlockStart");
    assert_eq!(fs[1].json()["start"]["toolUse"]["name"], "get_weather");
    let input: String = fs
        .iter()
        .filter_map(|f| {
            f.json()["delta"]["toolUse"]["input"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).expect("json"),
        json!({ "query": "Say hello to the gateway tests" })
    );
    let stop = fs
        .iter()
        .find(|f| f.headers[":event-type"] == "messageStop")
        .expect("messageStop");
    assert_eq!(stop.json()["stopReason"], "tool_use");
}

#[tokio::test]
async fn bedrock_rejects_tampered_unknown_and_throttles() {
    let s = start(MockUpstream::new().aws_key(AKID, AWS_SECRET)).await;
    let r = bedrock_call(&s, "converse", &converse_body(), AKID, AWS_SECRET, true).await;
    assert_eq!(r.status, 403, "tampered body refused");
    assert!(r
        .header("x-amzn-errortype")
        .unwrap_or_default()
        .starts_with("InvalidSignatureException"));
    assert!(r.json()["message"]
        .as_str()
        .unwrap_or_default()
        .contains("signature we calculated does not match"));

    let r = bedrock_call(
        &s,
        "converse",
        &converse_body(),
        AKID,
        "wrong-secret",
        false,
    )
    .await;
    assert_eq!(r.status, 403, "wrong secret refused");
    assert!(r
        .header("x-amzn-errortype")
        .unwrap_or_default()
        .starts_with("InvalidSignatureException"));

    let r = bedrock_call(
        &s,
        "converse",
        &converse_body(),
        "AKIDUNKNOWN",
        AWS_SECRET,
        false,
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r
        .header("x-amzn-errortype")
        .unwrap_or_default()
        .starts_with("UnrecognizedClientException"));

    s.set_faults(Faults {
        rate_limit_always: true,
        ..Faults::default()
    });
    let r = bedrock_call(&s, "converse", &converse_body(), AKID, AWS_SECRET, false).await;
    assert_eq!(r.status, 429);
    assert!(r
        .header("x-amzn-errortype")
        .unwrap_or_default()
        .starts_with("ThrottlingException"));
    assert_eq!(
        r.json()["message"],
        "Too many requests, please wait before trying again."
    );

    s.set_faults(Faults {
        mid_stream_error_after: Some(2),
        ..Faults::default()
    });
    let r = bedrock_call(
        &s,
        "converse-stream",
        &converse_body(),
        AKID,
        AWS_SECRET,
        false,
    )
    .await;
    let fs = frames(&r.body);
    assert_eq!(fs.len(), 3);
    assert_eq!(fs[2].headers[":message-type"], "exception");
    assert_eq!(fs[2].headers[":exception-type"], "internalServerException");
    assert!(fs[2].json()["message"].is_string());
    assert_eq!(BEDROCK_MODEL.replace(':', "%3A"), BEDROCK_MODEL_ENC);
}

// ---------------------------------------------------------------- Cohere

#[tokio::test]
async fn cohere_chat_stream_and_tool_events() {
    let s = start(MockUpstream::new().key(KEY)).await;
    let c = client();
    let url = format!("{}/v2/chat", s.url());
    let auth = bearer(KEY);
    let body = json!({ "model": "command-a-03-2025", "messages": [{ "role": "user", "content": "Say hello to the gateway tests" }] });
    let v = post_json(&c, &url, &[("authorization", &auth)], &body)
        .await
        .json();
    assert_eq!(v["finish_reason"], "COMPLETE");
    assert_eq!(v["message"]["content"][0]["text"], DEFAULT_REPLY);
    assert_eq!(
        v["usage"]["billed_units"]["output_tokens"],
        words(DEFAULT_REPLY)
    );
    assert_eq!(
        v["usage"]["tokens"]["input_tokens"],
        (("Say hello to the gateway tests".len()) / 4) as u64
    );

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let events = sse(&post_json(&c, &url, &[("authorization", &auth)], &sbody)
        .await
        .text());
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"message-start"));
    assert_eq!(names[1], "content-start");
    assert_eq!(names.last(), Some(&"message-end"));
    let end: Value = serde_json::from_str(&events.last().expect("events").1).expect("json");
    assert_eq!(end["delta"]["finish_reason"], "COMPLETE");
    assert!(end["delta"]["usage"]["billed_units"].is_object());

    sbody["tools"] =
        json!([{ "type": "function", "function": { "name": "get_weather", "parameters": {} } }]);
    let events = sse(&post_json(&c, &url, &[("authorization", &auth)], &sbody)
        .await
        .text());
    let start = events
        .iter()
        .find(|(e, _)| e == "tool-call-start")
        .expect("tool-call-start");
    let start: Value = serde_json::from_str(&start.1).expect("json");
    assert!(
        start["delta"]["message"]["tool_calls"].is_object(),
        "tool_calls is an object"
    );
    assert_eq!(
        start["delta"]["message"]["tool_calls"]["function"]["name"],
        "get_weather"
    );
    let args: String = events
        .iter()
        .filter(|(e, _)| e == "tool-call-delta")
        .map(|(_, d)| {
            let v: Value = serde_json::from_str(d).expect("json");
            v["delta"]["message"]["tool_calls"]["function"]["arguments"]
                .as_str()
                .expect("args")
                .to_owned()
        })
        .collect();
    assert_eq!(args, r#"{"query":"Say hello to the gateway tests"}"#);
    let end: Value = serde_json::from_str(&events.last().expect("events").1).expect("json");
    assert_eq!(end["delta"]["finish_reason"], "TOOL_CALL");

    let r = post_json(
        &c,
        &format!("{}/v2/embed", s.url()),
        &[("authorization", &auth)],
        &json!({ "model": "embed-v4.0", "texts": ["a", "b"], "input_type": "search_document" }),
    )
    .await;
    assert_eq!(
        r.json()["embeddings"]["float"].as_array().map(Vec::len),
        Some(2)
    );
}

// ---------------------------------------------------------------- Every dialect (table)

/// Checks the error body shape of one dialect.
type ShapeCheck = fn(&Resp) -> bool;

/// One request per dialect with the given key, for table-driven checks.
async fn probe(s: &MockServer, d: Dialect, key: &str) -> Resp {
    let c = client();
    let auth = bearer(key);
    match d {
        Dialect::OpenAi => post_json(&c, &format!("{}/chat/completions", s.openai_base()), &[("authorization", &auth)], &chat_body(false)).await,
        Dialect::Azure => post_json(&c, &format!("{}/openai/deployments/d1/chat/completions?api-version=2024-10-21", s.url()), &[("api-key", key)], &chat_body(false)).await,
        Dialect::Anthropic => post_json(&c, &format!("{}/v1/messages", s.url()), &anthropic_headers(key), &anthropic_body(false)).await,
        Dialect::Gemini => post_json(&c, &format!("{}/v1beta/models/gemini-2.5-flash:generateContent", s.url()), &[("x-goog-api-key", key)], &gemini_body()).await,
        Dialect::Vertex => post_json(&c, &format!("{}/v1/projects/p/locations/l/publishers/google/models/m:generateContent", s.url()), &[("authorization", &auth)], &gemini_body()).await,
        Dialect::Bedrock => bedrock_call(s, "converse", &converse_body(), key, AWS_SECRET, false).await,
        Dialect::Cohere => post_json(&c, &format!("{}/v2/chat", s.url()), &[("authorization", &auth)], &json!({ "model": "command-a-03-2025", "messages": [{ "role": "user", "content": "hi" }] })).await,
    }
}

#[tokio::test]
async fn every_dialect_refuses_an_unknown_key_its_own_way() {
    let s = start(MockUpstream::new().key(KEY).aws_key(AKID, AWS_SECRET)).await;
    let table: [(Dialect, u16, ShapeCheck); 7] = [
        (Dialect::OpenAi, 401, |r| {
            r.json()["error"]["code"] == "invalid_api_key"
        }),
        (Dialect::Azure, 401, |r| r.json()["error"]["code"] == "401"),
        (Dialect::Anthropic, 401, |r| {
            r.json()["error"]["type"] == "authentication_error"
        }),
        (Dialect::Gemini, 400, |r| {
            r.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        }),
        (Dialect::Vertex, 401, |r| {
            r.json()["error"]["status"] == "UNAUTHENTICATED"
        }),
        (Dialect::Bedrock, 403, |r| {
            r.header("x-amzn-errortype")
                .unwrap_or_default()
                .starts_with("UnrecognizedClientException")
        }),
        (Dialect::Cohere, 401, |r| r.json()["message"].is_string()),
    ];
    for (d, status, check) in table {
        let r = probe(&s, d, "not-a-registered-key").await;
        assert_eq!(r.status, status, "{d:?}: {}", r.text());
        assert!(
            s.last_request_for(d).is_some(),
            "{d:?}: refused requests are recorded too"
        );
        assert!(check(&r), "{d:?} error shape: {}", r.text());
        let ok = probe(&s, d, if d == Dialect::Bedrock { AKID } else { KEY }).await;
        if d != Dialect::Vertex {
            assert_eq!(
                ok.status,
                200,
                "{d:?} accepts the registered key: {}",
                ok.text()
            );
        }
    }
}

#[tokio::test]
async fn every_dialect_renders_injected_errors_and_429s() {
    let s = start(MockUpstream::new()).await;
    s.set_faults(Faults {
        error_rate: 1.0,
        error_status: Some(503),
        ..Faults::default()
    });
    let table: [(Dialect, ShapeCheck); 5] = [
        (Dialect::OpenAi, |r| {
            r.json()["error"]["type"] == "server_error"
        }),
        (Dialect::Azure, |r| r.json()["error"]["code"] == "503"),
        (Dialect::Anthropic, |r| {
            r.json()["error"]["type"] == "api_error"
        }),
        (Dialect::Gemini, |r| {
            r.json()["error"]["status"] == "UNAVAILABLE"
        }),
        (Dialect::Cohere, |r| r.json()["message"].is_string()),
    ];
    for (d, check) in table {
        let r = probe(&s, d, "k").await;
        assert_eq!(r.status, 503, "{d:?}");
        assert!(check(&r), "{d:?}: {}", r.text());
    }
    s.set_faults(Faults {
        rate_limit_always: true,
        ..Faults::default()
    });
    for d in [
        Dialect::OpenAi,
        Dialect::Azure,
        Dialect::Anthropic,
        Dialect::Gemini,
        Dialect::Cohere,
    ] {
        let r = probe(&s, d, "k").await;
        assert_eq!(r.status, 429, "{d:?}");
        if matches!(d, Dialect::OpenAi | Dialect::Azure | Dialect::Anthropic) {
            assert_eq!(r.header("retry-after"), Some("1"), "{d:?}");
        }
    }
    s.set_faults(Faults {
        quota_exhausted: true,
        ..Faults::default()
    });
    let r = probe(&s, Dialect::OpenAi, "k").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (429, json!("insufficient_quota"))
    );
    let r = probe(&s, Dialect::Anthropic, "k").await;
    assert_eq!(r.status, 400, "Anthropic billing is a 400");
    let r = probe(&s, Dialect::Gemini, "k").await;
    assert!(r.text().contains("PerDay"), "Gemini daily quota");
}

// ---------------------------------------------------------------- Faults and control

#[tokio::test]
async fn anthropic_error_rate_one_with_529_is_overloaded() {
    let s = start(MockUpstream::new().faults(Faults {
        error_rate: 1.0,
        error_status: Some(529),
        ..Faults::default()
    }))
    .await;
    let r = probe(&s, Dialect::Anthropic, "k").await;
    assert_eq!(r.status, 529);
    assert_eq!(r.json()["error"]["type"], "overloaded_error");
    assert!(
        r.header("anthropic-ratelimit-requests-remaining").is_some(),
        "headers on errors too"
    );
}

#[tokio::test]
async fn error_rate_half_fails_every_second_request() {
    let s = start(MockUpstream::new().faults(Faults {
        error_rate: 0.5,
        ..Faults::default()
    }))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(probe(&s, Dialect::OpenAi, "k").await.status);
    }
    assert_eq!(statuses, vec![200, 500, 200, 500]);
}

#[tokio::test]
async fn malformed_bodies_are_not_json() {
    let s = start(MockUpstream::new().faults(Faults {
        malformed: true,
        ..Faults::default()
    }))
    .await;
    let r = probe(&s, Dialect::OpenAi, "k").await;
    assert_eq!(r.status, 200);
    assert!(
        serde_json::from_slice::<Value>(&r.body).is_err(),
        "not JSON: {}",
        r.text()
    );
}

#[tokio::test]
async fn disconnect_mid_stream_drops_the_connection_without_done() {
    let s = start(MockUpstream::new().faults(Faults {
        disconnect_after_chunks: Some(2),
        ..Faults::default()
    }))
    .await;
    let c = client();
    let r = post_json(
        &c,
        &format!("{}/chat/completions", s.openai_base()),
        &[("authorization", "Bearer k")],
        &chat_body(true),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body_error.is_some(), "body ends with an error");
    let events = sse(&r.text());
    assert_eq!(events.len(), 2, "two events arrived: {}", r.text());
    assert!(!r.text().contains("[DONE]"));
}

#[tokio::test]
async fn mid_stream_error_is_in_band_per_dialect() {
    let s = start(MockUpstream::new().faults(Faults {
        mid_stream_error_after: Some(3),
        error_status: Some(529),
        ..Faults::default()
    }))
    .await;
    let c = client();
    let r = post_json(
        &c,
        &format!("{}/chat/completions", s.openai_base()),
        &[("authorization", "Bearer k")],
        &chat_body(true),
    )
    .await;
    let events = sse(&r.text());
    assert_eq!(events.len(), 4);
    let last: Value = serde_json::from_str(&events[3].1).expect("json");
    assert!(
        last["error"]["message"].is_string(),
        "OpenAI in-band error: {last}"
    );
    assert!(!r.text().contains("[DONE]"));

    let r = post_json(
        &c,
        &format!("{}/v1/messages", s.url()),
        &anthropic_headers("k"),
        &anthropic_body(true),
    )
    .await;
    let events = sse(&r.text());
    assert_eq!(events.len(), 4);
    assert_eq!(events[3].0, "error");
    let v: Value = serde_json::from_str(&events[3].1).expect("json");
    assert_eq!(v["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn latency_ttft_and_chunk_delay_are_applied() {
    let s = start(
        MockUpstream::new()
            .latency(Duration::from_millis(60))
            .ttft(Duration::from_millis(40))
            .chunk_delay(Duration::from_millis(10)),
    )
    .await;
    let t = Instant::now();
    let r = post_json(
        &client(),
        &format!("{}/chat/completions", s.openai_base()),
        &[("authorization", "Bearer k")],
        &chat_body(true),
    )
    .await;
    assert_eq!(r.status, 200);
    // 60 latency + 40 ttft + 10 ms between ~9 events.
    assert!(
        t.elapsed() >= Duration::from_millis(170),
        "took {:?}",
        t.elapsed()
    );
    s.set_latency(Duration::ZERO);
}

#[tokio::test]
async fn hang_holds_until_the_client_gives_up_and_shutdown_frees_it() {
    let s = start(MockUpstream::new()).await;
    s.set_key_faults(
        "slow",
        Faults {
            hang: true,
            ..Faults::default()
        },
    );
    let hung = tokio::time::timeout(
        Duration::from_millis(200),
        probe(&s, Dialect::OpenAi, "slow"),
    )
    .await;
    assert!(hung.is_err(), "no answer while hanging");
    assert_eq!(
        probe(&s, Dialect::OpenAi, "fast").await.status,
        200,
        "other keys unaffected"
    );
    let addr = s.addr();
    tokio::time::timeout(Duration::from_secs(2), s.shutdown())
        .await
        .expect("shutdown does not wait for hung requests");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn control_endpoints_set_faults_and_report_stats() {
    let s = start(MockUpstream::new()).await;
    let c = client();
    assert_eq!(probe(&s, Dialect::OpenAi, "k1").await.status, 200);
    let r = post_json(
        &c,
        &format!("{}/_mock/faults", s.url()),
        &[],
        &json!({ "key": "k1", "faults": { "error_rate": 1.0, "error_status": 502 } }),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(probe(&s, Dialect::OpenAi, "k1").await.status, 502);
    assert_eq!(probe(&s, Dialect::OpenAi, "k2").await.status, 200);
    let r = post_json(
        &c,
        &format!("{}/_mock/faults", s.url()),
        &[],
        &json!({ "rate_limit_always": true }),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(probe(&s, Dialect::OpenAi, "k2").await.status, 429);
    let stats = send(&c, "GET", &format!("{}/_mock/stats", s.url()), &[], b"")
        .await
        .json();
    assert_eq!(stats["total"], 4);
    assert_eq!(stats["per_key"]["k1"], 2);
    assert_eq!(stats["per_key"]["k2"], 2);
    assert_eq!(stats["per_dialect"]["openai"], 4);
    let r = send(&c, "POST", &format!("{}/_mock/reset", s.url()), &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(s.requests(), 0);
    assert_eq!(
        probe(&s, Dialect::OpenAi, "k1").await.status,
        200,
        "faults cleared by reset"
    );
    s.reset_counts();
    assert_eq!(s.requests_for_key("k1"), 0);
}

#[tokio::test]
async fn server_stops_when_the_last_handle_is_dropped() {
    let s = start(MockUpstream::new()).await;
    let addr = s.addr();
    let clone = s.clone();
    drop(s);
    assert_eq!(
        probe(&clone, Dialect::OpenAi, "k").await.status,
        200,
        "a clone keeps it alive"
    );
    drop(clone);
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener closed after the last handle was dropped");
}
