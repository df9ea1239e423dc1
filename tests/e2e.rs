//! End-to-end: the real gateway server, real adapters, mock upstreams speaking each provider's wire
//! format on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use gateway_mock::{Faults, MockServer, MockUpstream};
use gateway_tests::{chat, messages, sse_ids, stand_in_upstream, TestGateway};
use serde_json::{json, Value};

async fn mock(keys: &[&str]) -> MockServer {
    let mut m = MockUpstream::new();
    for k in keys {
        m = m.key(k);
    }
    m.start().await.unwrap()
}

/// One OpenAI provider and one Anthropic provider, a route over both.
fn two_providers(openai: &MockServer, anthropic: &MockServer) -> String {
    format!(
        r#"
[server]
admin_token = "adm-token-123"
max_body_bytes = 4096

[[providers]]
name = "oai"
kind = "openai"
base_url = "{}"
models = ["gpt-4o-mini", "text-embedding-3-small"]
[[providers.keys]]
name = "k1"
secret = "sk-test-openai-1"
[[providers.keys]]
name = "k2"
secret = "sk-test-openai-2"

[[providers]]
name = "ant"
kind = "anthropic"
base_url = "{}"
models = ["claude-3-5-haiku-latest"]
[[providers.keys]]
name = "main"
secret = "sk-ant-test-1"

[[routes]]
name = "chat"
targets = [{{ provider = "oai", model = "gpt-4o-mini" }}]
fallbacks = ["ant/claude-3-5-haiku-latest"]
"#,
        openai.openai_base(),
        anthropic.url()
    )
}

/// [`setup`] plus a route `both` whose targets alternate between the Anthropic and the OpenAI
/// provider.
async fn setup_with_route_over_both() -> (TestGateway, MockServer, MockServer) {
    let o = mock(&["sk-test-openai-1", "sk-test-openai-2"]).await;
    let a = mock(&["sk-ant-test-1"]).await;
    let toml = two_providers(&o, &a)
        + r#"
[[routes]]
name = "both"
strategy = "round_robin"
targets = [{ provider = "ant", model = "claude-3-5-haiku-latest" }, { provider = "oai", model = "gpt-4o-mini" }]
"#;
    (TestGateway::start(&toml).await, o, a)
}

/// [`setup`] with the OpenAI provider's two keys taken in turn (`round_robin`).
async fn setup_round_robin_keys() -> (TestGateway, MockServer, MockServer) {
    let o = mock(&["sk-test-openai-1", "sk-test-openai-2"]).await;
    let a = mock(&["sk-ant-test-1"]).await;
    let toml = two_providers(&o, &a).replacen(
        "kind = \"openai\"",
        "kind = \"openai\"\nstrategy = \"round_robin\"",
        1,
    );
    (TestGateway::start(&toml).await, o, a)
}

/// The `authorization` of the last request `upstream` received: which key served it.
fn key_of_last(upstream: &MockServer) -> String {
    upstream
        .last_request()
        .unwrap()
        .header("authorization")
        .unwrap()
        .to_owned()
}

async fn setup() -> (TestGateway, MockServer, MockServer) {
    let o = mock(&["sk-test-openai-1", "sk-test-openai-2"]).await;
    let a = mock(&["sk-ant-test-1"]).await;
    let gw = TestGateway::start(&two_providers(&o, &a)).await;
    (gw, o, a)
}

#[tokio::test]
async fn openai_chat_non_stream_and_stream() {
    let (gw, o, _a) = setup().await;
    let r = gw
        .post("/v1/chat/completions", &chat("oai/gpt-4o-mini", "hello"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("mock"));
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(r.header("x-gateway-provider"), Some("oai"));
    assert_eq!(r.header("x-gateway-model"), Some("gpt-4o-mini"));
    assert!(r.header("x-request-id").is_some());
    let sent = o.last_request().unwrap();
    assert_eq!(
        sent.body["model"], "gpt-4o-mini",
        "upstream gets the upstream model id"
    );
    let auth = sent.header("authorization").unwrap();
    assert!(
        auth == "Bearer sk-test-openai-1" || auth == "Bearer sk-test-openai-2",
        "{auth}"
    );

    let mut body = chat("chat", "stream please");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"]
                .get(0)
                .and_then(|ch| ch["delta"]["content"].as_str())
        })
        .collect();
    assert_eq!(text, "Hello from the mock upstream.");
    // OpenAI upstream to OpenAI client: text chunks pass as the upstream sent them (the mock's
    // `system_fingerprint` is not a canonical field, so only a pass-through keeps it).
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["system_fingerprint"] == "fp_mock"),
        "{chunks:?}"
    );
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(
        usage_chunk["choices"],
        json!([]),
        "usage chunk last, as OpenAI sends it"
    );
    assert!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // Without include_usage, no usage chunk reaches the client.
    let mut body = chat("chat", "stream please");
    body["stream"] = json!(true);
    let r = gw.post("/v1/chat/completions", &body).await;
    let data = r.sse_data();
    assert!(data[..data.len() - 1].iter().all(|d| {
        let v: Value = serde_json::from_str(d).unwrap();
        v["choices"].as_array().is_some_and(|c| !c.is_empty())
    }));
    gw.stop().await;
}

#[tokio::test]
async fn anthropic_messages_native_and_cross_format() {
    let (gw, o, a) = setup().await;
    // Anthropic client -> Anthropic provider.
    let r = gw
        .post_anthropic(&messages("ant/claude-3-5-haiku-latest", "hi"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["stop_reason"], "end_turn");
    let sent = a.last_request().unwrap();
    assert_eq!(
        sent.header("x-api-key"),
        Some("sk-ant-test-1"),
        "the provider key, not the client's"
    );
    assert!(sent.header("anthropic-version").is_some());

    // Anthropic client -> OpenAI provider, streamed.
    let mut body = messages("oai/gpt-4o-mini", "hi");
    body["system"] = json!("Be terse.");
    body["stream"] = json!(true);
    let r = gw.post_anthropic(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let events = r.sse_events();
    assert_eq!(events.first().map(String::as_str), Some("message_start"));
    assert_eq!(events.last().map(String::as_str), Some("message_stop"));
    assert!(events.contains(&"content_block_delta".to_owned()));
    let sent = o.last_request().unwrap();
    assert_eq!(
        sent.body["messages"][0]["role"], "system",
        "system prompt placed as OpenAI expects"
    );

    // OpenAI client -> Anthropic provider, streamed, with usage.
    let mut body = chat("ant/claude-3-5-haiku-latest", "hi");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let sent = a.last_request().unwrap();
    assert!(
        sent.body["max_tokens"].as_u64().unwrap() > 0,
        "max_tokens filled for Anthropic"
    );
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"]
                .get(0)
                .and_then(|ch| ch["delta"]["content"].as_str().map(str::to_owned))
        })
        .collect();
    assert_eq!(text, "Hello from the mock upstream.");
    gw.stop().await;
}

/// An Anthropic client of an Anthropic provider: its request reaches the upstream as written
/// (cache breakpoints, thinking, members the gateway does not know) with only the model replaced
/// and the gateway's own `fallbacks` taken out, and the answer comes back as the upstream wrote
/// it: thinking blocks with their signatures, which the client replays in its next turn (the mock
/// checks the signature and, as the API does, that a tool-use turn starts with its thinking).
#[tokio::test]
async fn anthropic_clients_of_anthropic_upstreams_get_everything_through() {
    let (gw, _o, a) = setup().await;
    let tools = json!([{"name": "get_weather", "input_schema": {"type": "object"},
        "cache_control": {"type": "ephemeral"}}]);
    let mut body = json!({
        "model": "ant/claude-3-5-haiku-latest", "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "system": [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
        "tools": tools, "metadata": {"user_id": "u-1"}, "service_tier": "auto",
        "fallbacks": ["oai/gpt-4o-mini"],
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    });
    let r = gw
        .request(
            "POST",
            "/v1/messages?beta=true",
            &[
                ("content-type", "application/json"),
                ("x-api-key", "client-key"),
                ("anthropic-version", "2023-06-01"),
                ("anthropic-beta", "interleaved-thinking-2025-05-14"),
            ],
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["content"][0]["type"], "thinking", "{answer}");
    assert!(answer["content"][0]["signature"]
        .as_str()
        .is_some_and(|s| s.starts_with("EqMock")));
    assert_eq!(answer["content"][1]["type"], "tool_use");
    assert_eq!(answer["stop_reason"], "tool_use");
    assert_eq!(
        answer["usage"]["service_tier"], "standard",
        "the upstream's own usage object"
    );
    let sent = a.last_request().unwrap().body.clone();
    let mut expected = body.clone();
    expected["model"] = json!("claude-3-5-haiku-latest");
    expected.as_object_mut().unwrap().remove("fallbacks");
    assert_eq!(sent, expected, "the client's body, model replaced");
    assert_eq!(
        a.last_request().unwrap().header("anthropic-beta"),
        Some("interleaved-thinking-2025-05-14"),
        "the beta features the body's members belong to"
    );

    // The next turn replays the thinking block, streamed.
    let call_id = answer["content"][1]["id"].clone();
    body["stream"] = json!(true);
    body["messages"] = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": answer["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "18C sunny"}]},
    ]);
    let r = gw.post_anthropic(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let events = r.sse_events();
    assert_eq!(
        events[..8],
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "ping",
        ],
        "{text}"
    );
    assert_eq!(
        events[events.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"],
        "{text}"
    );
    // Written by the upstream, not re-encoded: the mock's ping has a space the gateway's
    // encoder would not write, and the signature comes as its own delta.
    assert!(
        text.contains("event: ping\ndata: {\"type\": \"ping\"}\n\n"),
        "{text}"
    );
    assert!(
        text.contains("\"type\":\"signature_delta\",\"signature\":\"EqMock"),
        "{text}"
    );
    let said: String = r
        .sse_data()
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter(|v| v["delta"]["type"] == "text_delta")
        .map(|v| v["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(said, "Tool said: 18C sunny");

    // Without its thinking block the upstream refuses the turn, and the client hears why: the
    // check above is real.
    body["messages"][1]["content"] = json!([answer["content"][1]]);
    let r = gw.post_anthropic(&body).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("Expected `thinking`"), "{}", r.text());
    gw.stop().await;
}

/// An OpenAI client asking Claude to reason and call tools: the OpenAI format has no place for
/// the thinking blocks the API requires back in the next turn (the mock checks them as the API
/// does), so the adapter keeps them by tool-call id and puts them back. Whether the call came in
/// an answer or a stream.
#[tokio::test]
async fn openai_clients_of_claude_continue_a_thinking_tool_turn() {
    let (gw, _o, a) = setup().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]);
    for stream in [false, true] {
        let mut body = chat("ant/claude-3-5-haiku-latest", "Weather in Paris?");
        body["tools"] = tools.clone();
        body["reasoning_effort"] = json!("low");
        body["stream"] = json!(stream);
        let r = gw.post("/v1/chat/completions", &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let call = if stream {
            let calls: Vec<Value> = r.sse_data()[..r.sse_data().len() - 1]
                .iter()
                .map(|d| serde_json::from_str::<Value>(d).unwrap())
                .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
                .collect();
            json!({"id": calls[0]["id"], "type": "function", "function": {
                "name": calls[0]["function"]["name"],
                "arguments": calls.iter().filter_map(|c| c["function"]["arguments"].as_str()).collect::<String>()}})
        } else {
            let v = r.json();
            assert!(
                v["choices"][0]["message"]["reasoning_content"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty()),
                "{v}"
            );
            v["choices"][0]["message"]["tool_calls"][0].clone()
        };
        let sent = a.last_request().unwrap();
        assert_eq!(sent.body["thinking"]["type"], "enabled");
        body["stream"] = json!(false);
        body["messages"] = json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "18C sunny"},
        ]);
        let r = gw.post("/v1/chat/completions", &body).await;
        assert_eq!(r.status, 200, "stream {stream}: {}", r.text());
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            "Tool said: 18C sunny"
        );
        let turn = &a.last_request().unwrap().body["messages"][1]["content"];
        assert_eq!(turn[0]["type"], "thinking", "{turn}");
        assert_eq!(turn[1]["type"], "tool_use", "{turn}");
    }
    // A call the gateway never saw (another instance, a restart) goes without; the API's
    // refusal reaches the client as the caller error it is.
    let mut body = chat("ant/claude-3-5-haiku-latest", "Weather in Paris?");
    body["tools"] = tools;
    body["reasoning_effort"] = json!("low");
    body["messages"] = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_unknown", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_unknown", "content": "18C sunny"},
    ]);
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 400, "{}", r.text());
    gw.stop().await;
}

#[tokio::test]
async fn tools_cross_formats() {
    let (gw, _o, _a) = setup().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]);
    let mut body = chat("ant/claude-3-5-haiku-latest", "Weather in Paris?");
    body["tools"] = tools.clone();
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(
        v["id"].as_str().unwrap().starts_with("chatcmpl-msg_"),
        "an OpenAI client's id is OpenAI's form: {v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let s = gw.post("/v1/chat/completions", &streamed).await;
    let ids = sse_ids(&s);
    assert!(
        !ids.is_empty() && ids.iter().all(|id| id.starts_with("chatcmpl-")),
        "{ids:?}"
    );
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["query"], "Weather in Paris?");

    let body = json!({"model": "oai/gpt-4o-mini", "max_tokens": 50, "stream": true,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "Weather?"}]});
    let r = gw.post_anthropic(&body).await;
    let text = r.text();
    assert!(text.contains("\"type\":\"tool_use\""), "{text}");
    assert!(text.contains("input_json_delta"), "{text}");
    assert!(text.contains("\"stop_reason\":\"tool_use\""), "{text}");
    gw.stop().await;
}

/// Claude on Bedrock with `claude_invoke`: an Anthropic client's request goes to `InvokeModel`
/// with its own body (the mock checks Bedrock's `anthropic_version` and refuses `model`,
/// `stream` and `fallbacks` there), and thinking comes back signed, streamed or not. Without the
/// setting the same request goes through Converse.
#[tokio::test]
async fn anthropic_clients_of_claude_on_bedrock_through_invoke_model() {
    let m = MockUpstream::new()
        .aws_key("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
        .start()
        .await
        .unwrap();
    // The second provider gives the secret access key as `secret`, like other kinds' keys.
    let provider = |name: &str, invoke: bool| {
        let field = if invoke {
            "secret_access_key"
        } else {
            "secret"
        };
        format!(
            r#"
[[providers]]
name = "{name}"
kind = "bedrock"
base_url = "{}"
region = "us-east-1"
claude_invoke = {invoke}
[[providers.keys]]
name = "k"
access_key_id = "AKIDEXAMPLE"
{field} = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
"#,
            m.url()
        )
    };
    let gw = TestGateway::start(&(provider("bedi", true) + &provider("bed", false))).await;
    let model = "anthropic.claude-3-5-haiku-20241022-v1:0";
    let mut body = json!({
        "model": format!("bedi/{model}"), "max_tokens": 2048, "fallbacks": ["bed/x"],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "hello"}],
    });
    let r = gw.post_anthropic(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["content"][0]["type"], "thinking", "{v}");
    assert!(v["content"][0]["signature"].is_string());
    let sent = m.last_request().unwrap();
    assert!(sent.path.ends_with("/invoke"), "{}", sent.path);
    assert_eq!(sent.body["anthropic_version"], "bedrock-2023-05-31");
    assert_eq!(sent.body["thinking"]["budget_tokens"], 1024);

    body["stream"] = json!(true);
    let r = gw.post_anthropic(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(text.contains("\"type\":\"signature_delta\""), "{text}");
    assert_eq!(
        r.sse_events().last().map(String::as_str),
        Some("message_stop")
    );
    assert!(m
        .last_request()
        .unwrap()
        .path
        .ends_with("/invoke-with-response-stream"));

    body["model"] = json!(format!("bed/{model}"));
    let r = gw.post_anthropic(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(m.last_request().unwrap().path.ends_with("/converse-stream"));
    gw.stop().await;
}

/// An audio conversation continues: the assistant turn that answered with audio (content null,
/// `audio: {id}`) reaches an OpenAI upstream as the client sent it.
#[tokio::test]
async fn openai_assistant_audio_turns_reach_the_upstream() {
    let (gw, o, _a) = setup().await;
    let messages = json!([
        {"role": "user", "content": "Say hi out loud."},
        {"role": "assistant", "content": null, "audio": {"id": "audio_abc123"}},
        {"role": "user", "content": "Again, slower."}
    ]);
    let body = json!({"model": "oai/gpt-4o-mini", "messages": messages,
        "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}});
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = o.last_request().unwrap();
    assert_eq!(sent.body["messages"], messages);
    assert_eq!(sent.body["audio"], body["audio"]);
    gw.stop().await;
}

/// OpenAI's other kinds of tool (`custom`) and tool choice (`allowed_tools`) are valid requests:
/// an OpenAI provider gets them as written, another provider gets the function tools alone (and
/// decides itself), and a function tool without its function is the caller's error.
#[tokio::test]
async fn openai_custom_tools_and_allowed_tools_choice() {
    let (gw, o, a) = setup().await;
    let tools = json!([
        {"type": "custom", "custom": {"name": "code_exec", "description": "Runs code", "format": {"type": "text"}}},
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}
    ]);
    let choice = json!({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}});
    let mut body = chat("oai/gpt-4o-mini", "Weather in Paris?");
    body["tools"] = tools.clone();
    body["tool_choice"] = choice.clone();
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = o.last_request().unwrap();
    assert_eq!(sent.body["tools"], tools);
    assert_eq!(sent.body["tool_choice"], choice);

    body["model"] = json!("ant/claude-3-5-haiku-latest");
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = a.last_request().unwrap();
    let names: Vec<&str> = sent.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["get_weather"]);
    assert!(sent.body.get("tool_choice").is_none(), "{}", sent.body);

    body["tools"] = json!([{"type": "function"}]);
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "tools[0].function");
    gw.stop().await;
}

#[tokio::test]
async fn embeddings_models_health_and_count_tokens() {
    let (gw, o, _a) = setup().await;
    let r = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "oai/text-embedding-3-small", "input": ["a", "b"], "input_type": "search_query"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        o.last_request().unwrap().body.get("input_type").is_none(),
        "Cohere's input_type is not sent to OpenAI"
    );
    let v = r.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert!(v["data"][0]["embedding"].is_array());
    let r = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "text-embedding-3-small", "input": "a", "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["data"][0]["embedding"].is_string(),
        "base64 as the OpenAI SDK asks by default"
    );

    let r = gw.get("/v1/models", &[]).await;
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.contains(&"chat".to_owned()) && ids.contains(&"oai/gpt-4o-mini".to_owned()),
        "{ids:?}"
    );
    assert_eq!(gw.get("/health", &[]).await.status, 200);
    let r = gw
        .request(
            "POST",
            "/v1/messages/count_tokens",
            &[("content-type", "application/json")],
            serde_json::to_vec(
                &json!({"model": "chat", "messages": [{"role": "user", "content": "hello there"}]}),
            )
            .unwrap(),
        )
        .await;
    assert!(r.json()["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        r.header("x-gateway-estimate"),
        Some("true"),
        "an OpenAI provider cannot count"
    );
    let r = gw
        .request(
            "POST",
            "/v1/messages/count_tokens",
            &[("content-type", "application/json")],
            serde_json::to_vec(
                &json!({"model": "nope/x", "messages": [{"role": "user", "content": "hello"}]}),
            )
            .unwrap(),
        )
        .await;
    assert_eq!(
        r.status,
        404,
        "a model the gateway does not serve: {}",
        r.text()
    );
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    gw.stop().await;
}

/// An Anthropic provider counts for itself: the client's body goes to its `count_tokens` as
/// written (model replaced), with the client's betas, and its count comes back.
#[tokio::test]
async fn anthropic_count_tokens_asks_the_anthropic_upstream() {
    let (gw, _o, a) = setup().await;
    let body = json!({"model": "ant/claude-3-5-haiku-latest",
        "system": [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hello there, how many tokens is this?"}]});
    let r = gw
        .request(
            "POST",
            "/v1/messages/count_tokens",
            &[
                ("content-type", "application/json"),
                ("anthropic-version", "2023-06-01"),
                ("anthropic-beta", "token-counting-2024-11-01"),
            ],
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-gateway-estimate"), None, "{}", r.text());
    let sent = a.last_request().unwrap();
    assert_eq!(sent.path, "/v1/messages/count_tokens");
    assert_eq!(
        sent.header("anthropic-beta"),
        Some("token-counting-2024-11-01")
    );
    let mut expected = body.clone();
    expected["model"] = json!("claude-3-5-haiku-latest");
    assert_eq!(sent.body, expected);
    // The mock counts a token per four characters of text: 46 here. The gateway's own
    // estimate (which adds per-message overhead) would say more.
    assert_eq!(r.json()["input_tokens"], 46 / 4);
    gw.stop().await;
}

#[tokio::test]
async fn key_failover_on_429_and_provider_fallback_on_5xx() {
    let (gw, o, a) = setup().await;
    o.set_key_faults(
        "sk-test-openai-1",
        Faults {
            rate_limit_always: true,
            retry_after_ms: Some(30_000),
            ..Faults::default()
        },
    );
    for _ in 0..10 {
        let r = gw
            .post("/v1/chat/completions", &chat("oai/gpt-4o-mini", "hi"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        o.requests_for_key("sk-test-openai-1"),
        1,
        "a key that said 429 rests until its reset"
    );
    assert_eq!(o.requests_for_key("sk-test-openai-2"), 10);

    o.set_faults(Faults {
        error_rate: 1.0,
        error_status: Some(500),
        ..Faults::default()
    });
    o.clear_key_faults("sk-test-openai-1");
    let before = a.requests();
    let r = gw.post("/v1/chat/completions", &chat("chat", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-gateway-provider"),
        Some("ant"),
        "route fallback served"
    );
    assert_eq!(a.requests(), before + 1);

    // Request-level fallbacks.
    let mut body = chat("oai/gpt-4o-mini", "hi");
    body["fallbacks"] = json!(["ant/claude-3-5-haiku-latest"]);
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-gateway-provider"), Some("ant"));

    // Everything failing: a 502 naming the last upstream reason, never a key.
    let r = gw
        .post("/v1/chat/completions", &chat("oai/gpt-4o-mini", "hi"))
        .await;
    assert!(matches!(r.status, 502 | 503), "{} {}", r.status, r.text());
    let e = r.json();
    assert_eq!(e["error"]["type"], "server_error");
    assert!(!r.text().contains("sk-test-openai"), "{}", r.text());
    gw.stop().await;
}

/// `n` = 2 asks for two answers: a route over an OpenAI target (which gives them) and an
/// Anthropic one (one answer per request) is served by the OpenAI target every time, the
/// Anthropic upstream never called; asked of Claude alone, it is a 400 naming `n`.
#[tokio::test]
async fn several_answers_go_to_a_target_that_gives_them() {
    let (gw, _o, a) = setup_with_route_over_both().await;
    let mut two = chat("both", "hi");
    two["n"] = json!(2);
    for _ in 0..4 {
        let r = gw.post("/v1/chat/completions", &two).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-gateway-provider"), Some("oai"));
        let choices = r.json()["choices"].as_array().unwrap().clone();
        assert_eq!(choices.len(), 2, "{}", r.text());
        assert_eq!(choices[1]["index"], 1);
        assert_eq!(r.header("x-gateway-attempts"), Some("1"));
    }
    assert_eq!(a.requests(), 0, "the Anthropic upstream was never asked");
    // One answer: both targets serve.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = gw.post("/v1/chat/completions", &chat("both", "hi")).await;
        seen.insert(r.header("x-gateway-provider").unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Nobody can: 400 in the caller's format, naming `n`.
    let mut claude = chat("ant/claude-3-5-haiku-latest", "hi");
    claude["n"] = json!(3);
    let before = a.requests();
    for stream in [false, true] {
        claude["stream"] = json!(stream);
        let r = gw.post("/v1/chat/completions", &claude).await;
        assert_eq!(r.status, 400, "{}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["param"], "n");
        assert_eq!(e["code"], "unsupported_parameter");
        assert!(e["message"].as_str().unwrap().contains("anthropic"), "{e}");
    }
    assert_eq!(a.requests(), before);
    gw.stop().await;
}

/// The OpenAI Responses API reaches an OpenAI-format provider as the client wrote it (model
/// rewritten, the gateway's `fallbacks` removed) and comes back as it came; a request that
/// cannot be read as chat (here, one continuing a stored response) is refused by the others.
#[tokio::test]
async fn responses_pass_through_to_providers_that_speak_it() {
    let (gw, o, a) = setup_with_route_over_both().await;
    let body = json!({
        "model": "oai/gpt-4o-mini",
        "instructions": "Be terse.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
        "max_output_tokens": 64,
        "store": false,
        "metadata": {"team": "search"},
        "some_future_member": {"kept": [1, 2.50, "x"]},
        "fallbacks": null
    });
    for _ in 0..3 {
        let r = gw.post("/v1/responses", &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-gateway-provider"), Some("oai"));
        let v = r.json();
        assert_eq!(v["object"], "response");
        assert!(v["id"].as_str().unwrap().starts_with("resp_"), "{v}");
        assert!(!v["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .is_empty());
        assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    }
    // The upstream got the client's body: its model rewritten, `fallbacks` gone, the rest as
    // written (numbers included).
    let seen = o.last_request().unwrap();
    assert_eq!(seen.path, "/v1/responses");
    assert_eq!(seen.body["model"], "gpt-4o-mini");
    assert!(seen.body.get("fallbacks").is_none(), "{}", seen.body);
    assert_eq!(seen.body["some_future_member"], body["some_future_member"]);
    assert_eq!(seen.body["metadata"], body["metadata"]);
    assert_eq!(seen.body["input"], body["input"]);
    assert!(seen
        .header("authorization")
        .unwrap()
        .starts_with("Bearer sk-test-openai-"));

    // Streamed: the upstream's events, named, in order, and nothing added.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = gw.post("/v1/responses", &streamed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let names = r.sse_events();
    assert_eq!(
        names.first().map(String::as_str),
        Some("response.created"),
        "{names:?}"
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("response.completed"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "response.output_text.delta"));
    let data = r.sse_data();
    assert!(!data.iter().any(|d| d == "[DONE]"));
    let seqs: Vec<u64> = data
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["sequence_number"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(o.last_request().unwrap().body["stream"], true);

    assert_eq!(a.requests(), 0);
    // Continuing a stored response needs the provider that stored it: a model only Anthropic
    // serves is a 400 naming the API, nothing sent.
    let mut claude = body.clone();
    claude["model"] = json!("ant/claude-3-5-haiku-latest");
    claude["previous_response_id"] = json!("resp_abc");
    let r = gw.post("/v1/responses", &claude).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unsupported_parameter");
    assert!(
        r.text().contains("OpenAI Responses request"),
        "{}",
        r.text()
    );
    assert_eq!(a.requests(), 0);
    // Bad input gets the OpenAI error shape.
    let r = gw.post("/v1/responses", &json!({"input": "hi"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "model");
    let r = gw
        .post("/v1/responses", &json!({"model": "no-such", "input": "hi"}))
        .await;
    assert_eq!(r.status, 404);
    gw.stop().await;
}

/// A stored response lives in the account of the key that made it: a request continuing it
/// (`previous_response_id`) goes to that key, streamed or not, while other requests keep being
/// balanced over both keys.
#[tokio::test]
async fn a_continued_response_goes_to_the_key_that_made_it() {
    let (gw, o, _a) = setup_round_robin_keys().await;
    let key_of_last = || key_of_last(&o);
    for stream in [false, true] {
        let first = json!({"model": "oai/gpt-4o-mini", "input": "hi", "stream": stream});
        let r = gw.post("/v1/responses", &first).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let id = if stream {
            let created: Value = serde_json::from_str(&r.sse_data()[0]).unwrap();
            created["response"]["id"].as_str().unwrap().to_owned()
        } else {
            r.json()["id"].as_str().unwrap().to_owned()
        };
        let maker = key_of_last();
        for _ in 0..4 {
            let next =
                json!({"model": "oai/gpt-4o-mini", "input": "more", "previous_response_id": id});
            let r = gw.post("/v1/responses", &next).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(key_of_last(), maker, "stream {stream}");
        }
    }
    // Anything else is balanced as usual.
    let mut keys = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = gw
            .post(
                "/v1/responses",
                &json!({"model": "oai/gpt-4o-mini", "input": "x", "previous_response_id": "resp_unknown"}),
            )
            .await;
        assert_eq!(r.status, 200);
        keys.insert(key_of_last());
    }
    assert_eq!(keys.len(), 2, "{keys:?}");
    gw.stop().await;
}

/// A Responses request reaches a provider that does not speak the API (Anthropic here) read as
/// chat, and its answer, streamed or not, comes back as a Responses object and events: so a
/// route can balance and fail over Responses traffic across every kind.
#[tokio::test]
async fn responses_are_translated_for_other_providers() {
    let (gw, o, a) = setup_with_route_over_both().await;
    let body = json!({
        "model": "ant/claude-3-5-haiku-latest",
        "instructions": "Be terse.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
        "max_output_tokens": 64,
        "metadata": {"team": "search"}
    });
    let r = gw.post("/v1/responses", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-gateway-provider"), Some("ant"));
    let v = r.json();
    assert_eq!(
        (v["object"].as_str(), v["status"].as_str()),
        (Some("response"), Some("completed"))
    );
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    let text = v["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!text.is_empty());
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v["metadata"], json!({"team": "search"}));
    let seen = a.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.body["system"], "Be terse.");
    assert_eq!(seen.body["max_tokens"], 64);
    assert!(
        seen.body["messages"][0]["content"]
            .to_string()
            .contains("hello"),
        "{}",
        seen.body
    );

    // Streamed: Responses events, numbered, the text rebuilt from the deltas, usage at the end.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = gw.post("/v1/responses", &streamed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let names = r.sse_events();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
        .into_iter()
        .chain(std::iter::repeat_n(
            "response.output_text.delta",
            names.len() - 8
        ))
        .chain([
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ])
        .collect::<Vec<_>>()
    );
    let data: Vec<Value> = r
        .sse_data()
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["sequence_number"], i as u64);
        assert_eq!(d["type"], names[i].as_str());
    }
    let deltas: String = data.iter().filter_map(|d| d["delta"].as_str()).collect();
    assert_eq!(deltas, text);
    let done = &data[data.len() - 1]["response"];
    assert_eq!(done["output"][0]["content"][0]["text"], text.as_str());
    assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0);

    // A function call round trip, flat tools and items.
    let tools =
        json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
    let r = gw
        .post(
            "/v1/responses",
            &json!({"model": "ant/claude-3-5-haiku-latest", "input": "weather in Paris", "tools": tools}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let call = r.json()["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "function_call")
        .cloned()
        .unwrap();
    assert_eq!(call["name"], "get_weather");
    let r = gw
        .post(
            "/v1/responses",
            &json!({"model": "ant/claude-3-5-haiku-latest", "tools": tools, "input": [
                {"role": "user", "content": "weather in Paris"},
                {"type": "function_call", "call_id": call["call_id"], "name": "get_weather", "arguments": call["arguments"]},
                {"type": "function_call_output", "call_id": call["call_id"], "output": "18C sunny"}
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["output"][0]["content"][0]["text"],
        "Tool said: 18C sunny"
    );
    assert_eq!(o.requests(), 0, "all of it through Anthropic");
    gw.stop().await;
}

/// OpenAI's legacy Completions API goes to OpenAI-format providers as written (model rewritten,
/// the gateway's members removed) and back as it came; a stream always asks upstream for its
/// usage, and the client gets the usage chunk only when it asked for it.
#[tokio::test]
async fn legacy_completions_pass_through() {
    let (gw, o, a) = setup_with_route_over_both().await;
    let body = json!({"model": "both", "prompt": "def add(a, b):", "suffix": "\n", "max_tokens": 16,
                      "temperature": 0.2, "fallbacks": null});
    for _ in 0..2 {
        let r = gw.post("/v1/completions", &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-gateway-provider"), Some("oai"));
        let v = r.json();
        assert_eq!(v["object"], "text_completion");
        assert!(!v["choices"][0]["text"].as_str().unwrap().is_empty());
        assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    }
    let seen = o.last_request().unwrap();
    assert_eq!(seen.path, "/v1/completions");
    assert_eq!(seen.body["model"], "gpt-4o-mini");
    assert_eq!(seen.body["suffix"], "\n");
    assert!(seen.body.get("fallbacks").is_none());
    assert_eq!(a.requests(), 0);

    for asked in [false, true] {
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        if asked {
            streamed["stream_options"] = json!({"include_usage": true});
        }
        let r = gw.post("/v1/completions", &streamed).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let data = r.sse_data();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let usage_chunks = chunks.iter().filter(|c| c["usage"].is_object()).count();
        assert_eq!(usage_chunks, usize::from(asked), "asked {asked}: {data:?}");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert!(!text.is_empty());
        let up = o.last_request().unwrap();
        assert_eq!(up.body["stream_options"], json!({"include_usage": true}));
        assert_eq!(up.body["stream"], true);
    }
    // Only OpenAI-format providers serve it.
    let r = gw
        .post(
            "/v1/completions",
            &json!({"model": "ant/claude-3-5-haiku-latest", "prompt": "x"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("Completions API"), "{}", r.text());
    let r = gw.post("/v1/completions", &json!({"model": "both"})).await;
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("prompt"))
    );
    gw.stop().await;
}

/// A stored response is reached through the gateway at the key that made it: retrieve, list
/// its input items, cancel, delete; an id the gateway did not make, or has forgotten after a
/// delete, is a 404.
#[tokio::test]
async fn stored_responses_are_reached_at_the_key_that_made_them() {
    let (gw, o, _a) = setup_round_robin_keys().await;
    let key_of_last = || key_of_last(&o);
    let mut made = Vec::new();
    for _ in 0..2 {
        let r = gw
            .post(
                "/v1/responses",
                &json!({"model": "oai/gpt-4o-mini", "input": "hi"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        made.push((r.json()["id"].as_str().unwrap().to_owned(), key_of_last()));
    }
    assert_ne!(made[0].1, made[1].1, "the round robin used both keys");
    for (id, key) in &made {
        for _ in 0..2 {
            let r = gw.get(&format!("/v1/responses/{id}"), &[]).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["id"], id.as_str());
            assert_eq!(&key_of_last(), key);
            assert_eq!(
                o.last_request().unwrap().path,
                format!("/v1/responses/{id}")
            );
        }
        let r = gw
            .get(&format!("/v1/responses/{id}/input_items?limit=5"), &[])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["object"], "list");
        let seen = o.last_request().unwrap();
        assert_eq!(
            (seen.path.as_str(), seen.query.as_str()),
            (
                format!("/v1/responses/{id}/input_items").as_str(),
                "limit=5"
            )
        );
        assert_eq!(&key_of_last(), key);
    }
    let (id, key) = &made[0];
    // Replaying a background response's events: the query goes upstream, the answer is an
    // event stream.
    let r = gw
        .get(&format!("/v1/responses/{id}?stream=true"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(o.last_request().unwrap().query, "stream=true");
    let r = gw
        .request(
            "POST",
            &format!("/v1/responses/{id}/cancel"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "cancelled");
    let r = gw
        .request("DELETE", &format!("/v1/responses/{id}"), &[], Vec::new())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["deleted"], true);
    assert_eq!(&key_of_last(), key);
    let before = o.requests();
    for path in [
        format!("/v1/responses/{id}"),
        "/v1/responses/resp_never_made".to_owned(),
    ] {
        let r = gw.get(&path, &[]).await;
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "response_not_found");
    }
    assert_eq!(o.requests(), before, "nothing was asked upstream");
    gw.stop().await;
}

#[tokio::test]
async fn caller_errors_are_not_failed_over() {
    let (gw, o, a) = setup().await;
    o.set_faults(Faults {
        error_rate: 1.0,
        error_status: Some(400),
        ..Faults::default()
    });
    let before = (o.requests(), a.requests());
    let r = gw.post("/v1/chat/completions", &chat("chat", "hi")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(
        (o.requests(), a.requests()),
        (before.0 + 1, before.1),
        "one attempt, no fallback"
    );
    gw.stop().await;
}

#[tokio::test]
async fn bad_input_of_every_kind_and_the_server_keeps_serving() {
    let (gw, o, _a) = setup().await;
    let h = [("content-type", "application/json")];
    // Malformed JSON, both dialects.
    let r = gw
        .request("POST", "/v1/chat/completions", &h, "{nope")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = gw.request("POST", "/v1/messages", &h, "{nope").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    // Missing fields.
    let r = gw
        .post("/v1/chat/completions", &json!({"model": "chat"}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "messages");
    // Unknown model, both dialects.
    let r = gw
        .post("/v1/chat/completions", &chat("no-such-model", "hi"))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let r = gw.post_anthropic(&messages("no-such-model", "hi")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    // Oversized body (limit 4096 in this config).
    let big = "x".repeat(10_000);
    let r = gw.post("/v1/chat/completions", &chat("chat", &big)).await;
    assert_eq!(r.status, 413);
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "the unread rest of the body ends the connection, and the client is told"
    );
    let r = gw.post_anthropic(&messages("chat", &big)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["type"], "request_too_large");
    // Upstream garbage.
    o.set_faults(Faults {
        malformed: true,
        ..Faults::default()
    });
    let r = gw
        .post("/v1/chat/completions", &chat("oai/gpt-4o-mini", "hi"))
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    // Disconnect mid-stream: the stream ends with an in-band error.
    o.set_faults(Faults {
        disconnect_after_chunks: Some(3),
        ..Faults::default()
    });
    let mut body = chat("oai/gpt-4o-mini", "hi");
    body["stream"] = json!(true);
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200);
    let data = r.sse_data();
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(
        last.get("error").is_some(),
        "in-band error after the first chunk: {data:?}"
    );
    // Wrong method, unknown path.
    assert_eq!(gw.get("/v1/chat/completions", &[]).await.status, 405);
    assert_eq!(gw.get("/nope", &[]).await.status, 404);
    // Still serving.
    o.set_faults(Faults::default());
    let r = gw
        .post("/v1/chat/completions", &chat("oai/gpt-4o-mini", "hi"))
        .await;
    assert_eq!(r.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn weighted_shares_follow_weights() {
    let o = mock(&["w-heavy", "w-light"]).await;
    let cfg = format!(
        r#"
[[providers]]
name = "p"
kind = "openai"
base_url = "{}"
strategy = "weighted"
[[providers.keys]]
name = "heavy"
secret = "w-heavy"
weight = 3
[[providers.keys]]
name = "light"
secret = "w-light"
weight = 1
"#,
        o.openai_base()
    );
    let gw = TestGateway::start(&cfg).await;
    for _ in 0..400 {
        assert_eq!(
            gw.post("/v1/chat/completions", &chat("p/m", "hi"))
                .await
                .status,
            200
        );
    }
    let heavy = o.requests_for_key("w-heavy") as f64;
    let share = heavy / 400.0;
    assert!((share - 0.75).abs() < 0.07, "heavy key share {share}");
    gw.stop().await;
}

#[tokio::test]
async fn admin_api_needs_its_token_and_never_shows_secrets() {
    let (gw, _o, _a) = setup().await;
    assert_eq!(gw.get("/admin/config", &[]).await.status, 401);
    assert_eq!(
        gw.get("/admin/config", &[("authorization", "Bearer wrong")])
            .await
            .status,
        401
    );
    let auth = [("authorization", "Bearer adm-token-123")];
    for path in ["/admin/config", "/admin/health"] {
        let r = gw.get(path, &auth).await;
        assert_eq!(r.status, 200, "{path}");
        for secret in [
            "sk-test-openai-1",
            "sk-test-openai-2",
            "sk-ant-test-1",
            "adm-token-123",
        ] {
            assert!(!r.text().contains(secret), "{secret} leaked by {path}");
        }
    }
    gw.post("/v1/chat/completions", &chat("oai/gpt-4o-mini", "hi"))
        .await;
    let h = gw.get("/admin/health", &auth).await.json();
    let oai = h["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "oai")
        .unwrap();
    assert_eq!(oai["keys"].as_array().unwrap().len(), 2);
    assert!(oai["keys"][0]["state"].is_string());
    gw.stop().await;
}

#[tokio::test]
async fn hot_reload_under_load_loses_no_request() {
    let o = mock(&["r-1", "r-2"]).await;
    let dir = std::env::temp_dir().join(format!("gw-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.toml");
    let cfg = |w: u32| {
        format!(
            r#"
[server]
admin_token = "adm"
[[providers]]
name = "p"
kind = "openai"
base_url = "{}"
[[providers.keys]]
name = "a"
secret = "r-1"
weight = {w}
[[providers.keys]]
name = "b"
secret = "r-2"
[[routes]]
name = "chat"
targets = [{{ provider = "p", model = "m" }}]
"#,
            o.openai_base()
        )
    };
    std::fs::write(&path, cfg(1)).unwrap();
    let gw =
        Arc::new(TestGateway::start_with(&cfg(1), Default::default(), Some(path.clone())).await);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let gw = Arc::clone(&gw);
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..50 {
                statuses.push(
                    gw.post("/v1/chat/completions", &chat("chat", "hi"))
                        .await
                        .status,
                );
            }
            statuses
        }));
    }
    for w in [5, 2, 9, 1] {
        std::fs::write(&path, cfg(w)).unwrap();
        let r = gw
            .request(
                "POST",
                "/admin/reload",
                &[("authorization", "Bearer adm")],
                "",
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An invalid file is refused and the running config stays.
    std::fs::write(
        &path,
        "[[routes]]\nname = \"x\"\ntargets = [{ provider = \"missing\", model = \"m\" }]\n",
    )
    .unwrap();
    let r = gw
        .request(
            "POST",
            "/admin/reload",
            &[("authorization", "Bearer adm")],
            "",
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("unknown provider `missing`"),
        "{}",
        r.text()
    );
    for t in tasks {
        let statuses = t.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert_eq!(
        gw.post("/v1/chat/completions", &chat("chat", "hi"))
            .await
            .status,
        200
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn demo_configuration_serves_without_keys() {
    let gw = TestGateway::start(gateway_server::DEFAULT_CONFIG).await;
    for _ in 0..20 {
        let r = gw
            .post("/v1/chat/completions", &chat("chat", "hello"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = gw.post_anthropic(&messages("chat", "hello")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    gw.stop().await;
}

/// The in-process mocks (`kind = "mock"`) count tokens like the provider they imitate.
#[tokio::test]
async fn in_process_anthropic_mock_counts_tokens() {
    let gw = TestGateway::start(
        r#"
[[providers]]
name = "m"
kind = "mock"
dialect = "anthropic"
models = ["claude-x"]
[[providers.keys]]
name = "k"
secret = "any"
"#,
    )
    .await;
    let body = json!({"model": "m/claude-x", "messages": [{"role": "user", "content": "hello there, how many tokens is this?"}]});
    let r = gw
        .request(
            "POST",
            "/v1/messages/count_tokens",
            &[("content-type", "application/json")],
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-gateway-estimate"), None, "{}", r.text());
    assert_eq!(r.json()["input_tokens"], 37 / 4, "the mock's count");
    gw.stop().await;
}

/// Kinds whose paths carry their API version take the host root, but a base written with the
/// version (as OpenAI bases are) works too: no `/v1/v1/messages`.
#[tokio::test]
async fn a_versioned_base_url_of_a_host_root_kind_is_not_doubled() {
    let m = mock(&["sk-ant-v1", "co-v2", "AIza-v1beta"]).await;
    let gw = TestGateway::start(&format!(
        r#"
[[providers]]
name = "ant"
kind = "anthropic"
base_url = "{base}/v1/"
[[providers.keys]]
name = "k"
secret = "sk-ant-v1"
[[providers]]
name = "co"
kind = "cohere"
base_url = "{base}/v2"
[[providers.keys]]
name = "k"
secret = "co-v2"
[[providers]]
name = "gem"
kind = "gemini"
base_url = "{base}/v1beta"
[[providers.keys]]
name = "k"
secret = "AIza-v1beta"
"#,
        base = m.url()
    ))
    .await;
    for (model, path) in [
        ("ant/claude-3-5-haiku-latest", "/v1/messages"),
        ("co/command-r", "/v2/chat"),
        (
            "gem/gemini-2.0-flash",
            "/v1beta/models/gemini-2.0-flash:generateContent",
        ),
    ] {
        let r = gw.post("/v1/chat/completions", &chat(model, "hi")).await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert_eq!(m.last_request().unwrap().path, path, "{model}");
    }
    // Gemini reports no usage for embeddings: the answer carries the estimate it is charged at,
    // as OpenAI's always carries usage.
    let r = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "gem/text-embedding-004", "input": ["one text", "another text"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["usage"]["prompt_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{}",
        r.text()
    );
    // 250 inputs (OpenAI takes 2,048) go to Gemini in batches of its limit, 100, and come back
    // as one answer in input order.
    let before = m.requests();
    let inputs: Vec<String> = (0..250).map(|i| format!("text {i}")).collect();
    let r = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "gem/text-embedding-004", "input": inputs}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(m.requests() - before, 3, "three batches");
    let indices: Vec<u64> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, (0..250).collect::<Vec<u64>>());
    gw.stop().await;
}

/// A key the upstream refuses (401) is taken out for a while. The next request finds no usable
/// key: that is the gateway being out of service (503), not the caller being rate limited (429).
#[tokio::test]
async fn keys_out_of_service_answer_503_not_429() {
    let m = mock(&["sk-the-right-one"]).await;
    let gw = TestGateway::start(&format!(
        r#"
[[providers]]
name = "oai"
kind = "openai"
base_url = "{}"
[[providers.keys]]
name = "revoked"
secret = "sk-revoked-upstream"
"#,
        m.openai_base()
    ))
    .await;
    let first = gw
        .post("/v1/chat/completions", &chat("oai/gpt-4o-mini", "hi"))
        .await;
    assert_eq!(first.status, 502, "{}", first.text());
    let next = gw
        .post("/v1/chat/completions", &chat("oai/gpt-4o-mini", "hi"))
        .await;
    assert_eq!(next.status, 503, "{}", next.text());
    assert_eq!(
        next.json()["error"]["code"],
        "upstream_unavailable",
        "{}",
        next.text()
    );
    let wait: u64 = next.header("retry-after").unwrap().parse().unwrap();
    assert!(
        wait > 60,
        "a long wait, so SDKs do not retry at once: {wait}"
    );
    let ant = gw.post_anthropic(&messages("oai/gpt-4o-mini", "hi")).await;
    assert_eq!(ant.status, 503, "{}", ant.text());
    assert_eq!(ant.json()["error"]["type"], "api_error");
    assert!(
        !next.text().contains("sk-revoked-upstream")
            && !first.text().contains("sk-revoked-upstream")
    );
    gw.stop().await;
}

/// An upstream on 127.0.0.1 that answers every request with `status` and an OpenAI error whose
/// message quotes the whole key it was sent, as a careless provider (or proxy) might.
async fn key_quoting_upstream(status: u16) -> String {
    stand_in_upstream(move |headers, _| {
        let key = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .trim_start_matches("Bearer ")
            .to_owned();
        let body = json!({"error": {
            "message": format!("Key {key} was refused (key={key})"),
            "type": "invalid_request_error", "code": null}});
        (status, "application/json", body.to_string())
    })
    .await
}

/// Whatever the shape of a provider key, an upstream message quoting it never carries it to the
/// client, the request log or the admin API.
#[tokio::test]
async fn a_key_quoted_by_the_upstream_never_reaches_the_client() {
    for status in [401, 500, 400] {
        let base = key_quoting_upstream(status).await;
        let gw = TestGateway::start(&format!(
            r#"
[server]
admin_token = "adm"
[[providers]]
name = "odd"
kind = "openai"
base_url = "{base}"
[[providers.keys]]
name = "k"
secret = "test-key-1"
"#
        ))
        .await;
        let r = gw.post("/v1/chat/completions", &chat("odd/m", "hi")).await;
        assert!(r.status >= 400, "{status}: {}", r.text());
        assert!(
            r.text().contains("was refused"),
            "the reason is kept: {}",
            r.text()
        );
        assert!(!r.text().contains("test-key-1"), "{status}: {}", r.text());
        let a = gw.post_anthropic(&messages("odd/m", "hi")).await;
        assert!(!a.text().contains("test-key-1"), "{status}: {}", a.text());
        let health = gw
            .get("/admin/health", &[("authorization", "Bearer adm")])
            .await;
        assert!(!health.text().contains("test-key-1"), "{}", health.text());
        gw.stop().await;
    }
}

/// An OpenAI-compatible upstream whose ids are not `chatcmpl-…` (Mistral's `cmpl-…`), streaming
/// a tool call: every chunk keeps the upstream's one id, decoded or passed as it came.
#[tokio::test]
async fn an_openai_format_upstreams_ids_are_kept() {
    let base = stand_in_upstream(|_, _| {
        let chunk = |choices: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "cmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices})
            )
        };
        let mut sse = chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": "Let me look."}, "finish_reason": null}]));
        sse += &chunk(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "abc123XYZ", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}, "finish_reason": null}]));
        sse += &chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]));
        sse += "data: [DONE]\n\n";
        (200, "text/event-stream", sse)
    })
    .await;
    let gw = TestGateway::start(&format!(
        r#"
[[providers]]
name = "mis"
kind = "mistral"
base_url = "{base}"
[[providers.keys]]
name = "k"
secret = "mistral-key-123"
"#
    ))
    .await;
    let mut body = chat("mis/mistral-large", "weather?");
    body["stream"] = json!(true);
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ids = sse_ids(&r);
    assert!(
        ids.len() >= 3 && ids.iter().all(|id| id == "cmpl-1"),
        "{ids:?}"
    );
    gw.stop().await;
}

/// A call about a stored response that the upstream refuses as the caller's mistake (cancelling
/// a response that is not in progress) comes back as the upstream said it, not as a failure of
/// the gateway.
#[tokio::test]
async fn a_refused_call_about_a_stored_response_comes_back_as_it_came() {
    let base = stand_in_upstream(|_, body| {
        if body.is_empty() {
            let e = json!({"error": {"message": "Cannot cancel a response that is not in progress.",
                "type": "invalid_request_error", "param": null, "code": null}});
            (400, "application/json", e.to_string())
        } else {
            let r = json!({"id": "resp_abc", "object": "response", "created_at": 1, "status": "completed",
                "model": "gpt-4o-mini", "output": [{"type": "message", "id": "msg_1", "status": "completed",
                "role": "assistant", "content": [{"type": "output_text", "text": "hi", "annotations": []}]}],
                "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}});
            (200, "application/json", r.to_string())
        }
    })
    .await;
    let gw = TestGateway::start(&format!(
        r#"
[[providers]]
name = "oai"
kind = "openai"
base_url = "{base}"
[[providers.keys]]
name = "k"
secret = "sk-stored-123"
"#
    ))
    .await;
    let r = gw
        .post(
            "/v1/responses",
            &json!({"model": "oai/gpt-4o-mini", "input": "hi"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let c = gw
        .request(
            "POST",
            "/v1/responses/resp_abc/cancel",
            &[("authorization", "Bearer client-key")],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(c.status, 400, "{}", c.text());
    assert_eq!(
        c.json()["error"]["message"],
        "Cannot cancel a response that is not in progress.",
        "{}",
        c.text()
    );
    gw.stop().await;
}

/// The `data:` payloads of an SSE body, with their event names.
fn sse_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_owned();
        } else if let Some(d) = line.strip_prefix("data: ") {
            if let Ok(v) = serde_json::from_str::<Value>(d) {
                out.push((std::mem::take(&mut name), v));
            }
        }
    }
    out
}

/// An Anthropic client's extended thinking reaches a Gemini model as a thinking budget that
/// asks for the thoughts back, and the thoughts come back as a `thinking` block before the text,
/// whole and streamed. Without thinking, neither the budget nor the block.
#[tokio::test]
async fn an_anthropic_clients_thinking_crosses_to_gemini_and_back() {
    let seen: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "Two and two.", "thought": true}, {"text": "Four."}]},
        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2, "thoughtsTokenCount": 4,
            "totalTokenCount": 15},
        "modelVersion": "gemini-2.5-flash", "responseId": "r1"});
    let whole = {
        let seen = Arc::clone(&seen);
        let answer = answer.clone();
        stand_in_upstream(move |_, body| {
            seen.lock()
                .unwrap()
                .push(serde_json::from_slice(body).unwrap());
            (200, "application/json", answer.to_string())
        })
        .await
    };
    let streamed = {
        let seen = Arc::clone(&seen);
        stand_in_upstream(move |_, body| {
            seen.lock()
                .unwrap()
                .push(serde_json::from_slice(body).unwrap());
            let first = json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "Two and two.", "thought": true}]}, "index": 0}],
                "modelVersion": "gemini-2.5-flash", "responseId": "r2"});
            let second = json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "Four."}]}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2,
                    "thoughtsTokenCount": 4, "totalTokenCount": 15},
                "modelVersion": "gemini-2.5-flash", "responseId": "r2"});
            (
                200,
                "text/event-stream",
                format!("data: {first}\r\n\r\ndata: {second}\r\n\r\n"),
            )
        })
        .await
    };
    let gw = TestGateway::start(&format!(
        r#"
[[providers]]
name = "gem"
kind = "gemini"
base_url = "{whole}"
[[providers.keys]]
name = "k"
secret = "AIza-whole"

[[providers]]
name = "gems"
kind = "gemini"
base_url = "{streamed}"
[[providers.keys]]
name = "k"
secret = "AIza-streamed"
"#,
        whole = whole.trim_end_matches("/v1"),
        streamed = streamed.trim_end_matches("/v1"),
    ))
    .await;
    // Each request's answer and the body the upstream got.
    let send = |model: &'static str, thinking: bool, stream: bool| {
        let gw = &gw;
        let seen = Arc::clone(&seen);
        async move {
            let mut b = json!({"model": model, "max_tokens": 4096, "stream": stream,
                "messages": [{"role": "user", "content": "2+2?"}]});
            if thinking {
                b["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
            }
            let r = gw.post_anthropic(&b).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let sent = seen.lock().unwrap().pop().unwrap();
            (r, sent["generationConfig"].get("thinkingConfig").cloned())
        }
    };

    let (r, config) = send("gem/gemini-2.5-flash", true, false).await;
    assert_eq!(
        config,
        Some(json!({"thinkingBudget": 2048, "includeThoughts": true}))
    );
    let v = r.json();
    assert_eq!(
        v["content"],
        json!([{"type": "thinking", "thinking": "Two and two.", "signature": ""},
            {"type": "text", "text": "Four."}]),
        "{v}"
    );

    // Not asked: no budget sent, no thinking block (a client reading `content[0].text` is safe).
    let (r, config) = send("gem/gemini-2.5-flash", false, false).await;
    assert_eq!(config, None);
    let v = r.json();
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Four."}]),
        "{v}"
    );

    // A model that cannot think is not sent a thinking configuration it would refuse.
    let (_, config) = send("gem/gemini-2.0-flash", true, false).await;
    assert_eq!(config, None);

    let (r, config) = send("gems/gemini-2.5-flash", true, true).await;
    assert_eq!(config.unwrap()["includeThoughts"], true);
    let events = sse_events(&r.body);
    let blocks: Vec<(String, Value)> = events
        .iter()
        .filter(|(n, _)| n.starts_with("content_block"))
        .cloned()
        .collect();
    assert_eq!(
        blocks[0].1["content_block"]["type"], "thinking",
        "{events:?}"
    );
    assert_eq!(blocks[0].1["index"], 0);
    assert_eq!(
        blocks[1].1["delta"],
        json!({"type": "thinking_delta", "thinking": "Two and two."})
    );
    assert_eq!(blocks[2].1["delta"]["type"], "signature_delta");
    assert_eq!(blocks[3].0, "content_block_stop");
    assert_eq!(blocks[3].1["index"], 0);
    assert_eq!(blocks[4].1["content_block"]["type"], "text");
    assert_eq!(blocks[4].1["index"], 1);
    assert_eq!(blocks[5].1["delta"]["text"], "Four.");
    gw.stop().await;
}

/// OpenAI's reasoning models refuse `max_tokens`: an Anthropic client's limit reaches them as
/// `max_completion_tokens`, and its thinking budget as `reasoning_effort`; other models keep
/// `max_tokens` and are sent no effort.
#[tokio::test]
async fn an_anthropic_client_reaches_openai_reasoning_models() {
    let seen: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let base = {
        let seen = Arc::clone(&seen);
        stand_in_upstream(move |_, body| {
            let v: Value = serde_json::from_slice(body).unwrap();
            let model = v["model"].as_str().unwrap_or_default().to_owned();
            seen.lock().unwrap().push(v);
            let r = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Four."}}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 70, "total_tokens": 79,
                    "completion_tokens_details": {"reasoning_tokens": 64}}});
            (200, "application/json", r.to_string())
        })
        .await
    };
    let gw = TestGateway::start(&format!(
        r#"
[[providers]]
name = "oai"
kind = "openai"
base_url = "{base}"
[[providers.keys]]
name = "k"
secret = "sk-reasoning-1"
"#
    ))
    .await;
    for (model, thinking, output_effort, effort) in [
        ("oai/o4-mini", Some(2048), None, Some("low")),
        ("oai/gpt-5", Some(20_000), None, Some("high")),
        ("oai/o3", None, None, None),
        ("oai/o3", None, Some("max"), Some("high")),
        (
            "oai/gpt-5-mini",
            Some(20_000),
            Some("medium"),
            Some("medium"),
        ),
        ("oai/gpt-4o-mini", Some(2048), Some("low"), None),
    ] {
        let mut b = json!({"model": model, "max_tokens": 30_000,
            "messages": [{"role": "user", "content": "2+2?"}]});
        if let Some(budget) = thinking {
            b["thinking"] = json!({"type": "enabled", "budget_tokens": budget});
        }
        if let Some(e) = output_effort {
            b["output_config"] = json!({"effort": e});
        }
        let r = gw.post_anthropic(&b).await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert_eq!(r.json()["content"][0]["text"], "Four.", "{model}");
        let sent = seen.lock().unwrap().pop().unwrap();
        let reasons = model != "oai/gpt-4o-mini";
        assert_eq!(
            sent.get("max_tokens").is_some(),
            !reasons,
            "{model}: {sent}"
        );
        assert_eq!(
            sent.get("max_completion_tokens").is_some(),
            reasons,
            "{model}: {sent}"
        );
        assert_eq!(
            sent.get("reasoning_effort").and_then(Value::as_str),
            effort,
            "{model}: {sent}"
        );
    }
    gw.stop().await;
}

/// An Anthropic client of Bedrock and Cohere: an answer that ended on a stop sequence says so
/// (`stop_reason: "stop_sequence"`, and the sequence when the request had one), a context window
/// that filled up is Anthropic's own reason, and a tool result marked `is_error` reaches Bedrock
/// as a failed tool result.
#[tokio::test]
async fn anthropic_clients_of_bedrock_and_cohere_keep_stop_reasons_and_tool_errors() {
    let seen: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let bedrock = {
        let seen = Arc::clone(&seen);
        stand_in_upstream(move |_, body| {
            let v: Value = serde_json::from_slice(body).unwrap();
            let last = v["messages"].as_array().unwrap().last().unwrap()["content"][0].clone();
            let reason = match last["text"].as_str() {
                Some("long") => "model_context_window_exceeded",
                _ => "stop_sequence",
            };
            seen.lock().unwrap().push(v);
            let r = json!({"output": {"message": {"role": "assistant", "content": [{"text": "Four"}]}},
                "stopReason": reason,
                "usage": {"inputTokens": 5, "outputTokens": 1, "totalTokens": 6}});
            (200, "application/json", r.to_string())
        })
        .await
    };
    let cohere = stand_in_upstream(|_, _| {
        let r = json!({"id": "c1", "finish_reason": "STOP_SEQUENCE",
            "message": {"role": "assistant", "content": [{"type": "text", "text": "Four"}]},
            "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 1},
                "tokens": {"input_tokens": 5, "output_tokens": 1}}});
        (200, "application/json", r.to_string())
    })
    .await;
    let gw = TestGateway::start(&format!(
        r#"
[[providers]]
name = "bed"
kind = "bedrock"
base_url = "{bedrock}"
region = "us-east-1"
[[providers.keys]]
name = "k"
access_key_id = "AKIDEXAMPLE"
secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

[[providers]]
name = "coh"
kind = "cohere"
base_url = "{cohere}"
[[providers.keys]]
name = "k"
secret = "co-key"
"#,
        bedrock = bedrock.trim_end_matches("/v1"),
        cohere = cohere.trim_end_matches("/v1"),
    ))
    .await;
    let model = "bed/anthropic.claude-3-5-haiku-20241022-v1:0";
    for (model, stops, want) in [
        (model, json!(["END"]), json!("END")),
        (model, json!(["END", "STOP"]), Value::Null),
        ("coh/command-a-03-2025", json!(["END"]), json!("END")),
    ] {
        let r = gw
            .post_anthropic(
                &json!({"model": model, "max_tokens": 50, "stop_sequences": stops,
                "messages": [{"role": "user", "content": "count"}]}),
            )
            .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let v = r.json();
        assert_eq!(v["stop_reason"], "stop_sequence", "{model}: {v}");
        assert_eq!(v["stop_sequence"], want, "{model} {stops}: {v}");
    }
    let r = gw
        .post_anthropic(&json!({"model": model, "max_tokens": 50,
            "messages": [{"role": "user", "content": "long"}]}))
        .await;
    assert_eq!(r.json()["stop_reason"], "model_context_window_exceeded");
    // The same answer to an OpenAI client is a `length` finish.
    let r = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "long"}]}),
        )
        .await;
    assert_eq!(
        r.json()["choices"][0]["finish_reason"],
        "length",
        "{}",
        r.text()
    );

    seen.lock().unwrap().clear();
    let r = gw
        .post_anthropic(&json!({"model": model, "max_tokens": 50, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                "content": "city not found", "is_error": true}]}]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = seen.lock().unwrap().pop().unwrap();
    let result = &sent["messages"][2]["content"][0]["toolResult"];
    assert_eq!(result["status"], "error", "{sent}");
    gw.stop().await;
}

/// A request too long for a route's model is served by the route's context-window fallback
/// (here an Anthropic model, for both an OpenAI and an Anthropic client) instead of being
/// refused; a short one stays on the route's target, and a route without context-window
/// fallbacks answers the upstream's 400.
#[tokio::test]
async fn too_long_requests_reach_a_larger_context_window() {
    let small = stand_in_upstream(|_, body| {
        if body.len() > 2_000 {
            let e = json!({"error": {"message": "This model's maximum context length is 128 tokens. However, your messages resulted in 700 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}});
            return (400, "application/json", e.to_string());
        }
        let r = json!({"id": "chatcmpl-s", "object": "chat.completion", "created": 1, "model": "small",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "small"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}});
        (200, "application/json", r.to_string())
    })
    .await;
    let big = mock(&["sk-ant-big"]).await;
    let gw = TestGateway::start(&format!(
        r#"
[[providers]]
name = "small"
kind = "openai"
base_url = "{small}"
[[providers.keys]]
name = "k"
secret = "sk-small-1"

[[providers]]
name = "big"
kind = "anthropic"
base_url = "{big}"
[[providers.keys]]
name = "k"
secret = "sk-ant-big"

[[routes]]
name = "chat"
targets = [{{ provider = "small", model = "gpt-4o-mini" }}]
context_window_fallbacks = ["big/claude-sonnet-4-5"]

[[routes]]
name = "plain"
targets = [{{ provider = "small", model = "gpt-4o-mini" }}]
"#,
        big = big.url()
    ))
    .await;
    let long = "word ".repeat(600);
    let r = gw.post("/v1/chat/completions", &chat("chat", &long)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-gateway-provider"], "big");
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from the mock upstream."
    );
    let r = gw.post_anthropic(&messages("chat", &long)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-gateway-provider"], "big");
    let r = gw
        .post("/v1/chat/completions", &chat("chat", "short"))
        .await;
    assert_eq!(r.headers["x-gateway-provider"], "small");
    assert_eq!(r.json()["choices"][0]["message"]["content"], "small");
    let r = gw.post("/v1/chat/completions", &chat("plain", &long)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json()["error"]["code"],
        "context_length_exceeded",
        "{}",
        r.text()
    );
    gw.stop().await;
}

/// A client that trickles its request head, or opens a connection and sends nothing, is cut
/// off after `header_read_timeout_ms`; a client that sends in time is served.
#[tokio::test]
async fn slow_and_silent_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = mock(&["sk-test-openai-1"]).await;
    let gw = TestGateway::start(&format!(
        r#"
[server]
header_read_timeout_ms = 400
[[providers]]
name = "oai"
kind = "openai"
base_url = "{}"
[[providers.keys]]
name = "k"
secret = "sk-test-openai-1"
"#,
        m.url()
    ))
    .await;
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut trickling = tokio::net::TcpStream::connect(&addr).await.unwrap();
    trickling
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let closed = |mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 256];
        // The gateway closes it (a read of 0 bytes, or a reset) well before the test's bound.
        matches!(
            tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        ) || matches!(
            tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    };
    let started = std::time::Instant::now();
    let (a, b) = tokio::join!(closed(silent), closed(trickling));
    assert!(a, "a silent connection is closed");
    assert!(b, "a trickled head is cut off");
    assert!(started.elapsed() < Duration::from_secs(3));
    let r = gw
        .post("/v1/chat/completions", &chat("oai/gpt-4o-mini", "hi"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    gw.stop().await;
}

/// Records of the requests a test's gateway finished.
#[derive(Default)]
struct Collected(std::sync::Mutex<Vec<gateway_core::RequestRecord>>);

impl gateway_core::Observer for Collected {
    fn on_finish(&self, record: &gateway_core::RequestRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

/// Streams still running when the shutdown grace period ends are cut, and each is recorded
/// (499) before the server returns, so that the binary's final flush writes it.
#[tokio::test]
async fn streams_cut_by_the_grace_period_are_recorded_before_shutdown_ends() {
    use tokio::io::AsyncReadExt;
    let words: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    let m = MockUpstream::new()
        .key("sk-test-openai-1")
        .reply(words.join(" "))
        .chunk_delay(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let collected = Arc::new(Collected::default());
    let ext = gateway_server::Extensions {
        observer: Arc::clone(&collected) as Arc<dyn gateway_core::Observer>,
        ..Default::default()
    };
    let gw = TestGateway::start_with(
        &format!(
            r#"
[server]
shutdown_grace_ms = 300
[[providers]]
name = "oai"
kind = "openai"
base_url = "{}"
[[providers.keys]]
name = "k"
secret = "sk-test-openai-1"
"#,
            m.url()
        ),
        ext,
        None,
    )
    .await;
    let mut body = chat("oai/gpt-4o-mini", "a long answer");
    body["stream"] = json!(true);
    let mut tcp = gw.open_post("/v1/chat/completions", &[], &body).await;
    let mut buf = [0u8; 4096];
    assert!(tcp.read(&mut buf).await.unwrap() > 0, "the stream began");
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    gw.stop().await;
    let records = collected.0.lock().unwrap().clone();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].status, 503, "{:?}", records[0]);
    assert_eq!(
        records[0].error.as_deref(),
        Some("cut by the gateway's shutdown (grace period over)")
    );
    assert!(records[0].stream);
    reader.abort();
}

/// A request whose body is still arriving when the shutdown grace period ends is cut, and
/// recorded (499, "before its request was read"), not lost.
#[tokio::test]
async fn a_request_cut_while_its_body_arrives_is_recorded() {
    let collected = Arc::new(Collected::default());
    let ext = gateway_server::Extensions {
        observer: Arc::clone(&collected) as Arc<dyn gateway_core::Observer>,
        ..Default::default()
    };
    let gw = TestGateway::start_with(
        "[server]\nshutdown_grace_ms = 300\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n",
        ext,
        None,
    )
    .await;
    let tcp = gw
        .send_raw(b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"model\":")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.stop().await;
    let records = collected.0.lock().unwrap().clone();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].status, 499, "{:?}", records[0]);
    assert_eq!(records[0].endpoint, "embeddings");
    assert_eq!(
        records[0].error.as_deref(),
        Some("client disconnected before its request was read")
    );
    drop(tcp);
}

/// A stream that stalls past the provider's timeout after its first chunk ends with an in-band
/// error, and its record says 504 (a timeout), not 502.
#[tokio::test]
async fn a_stream_stalled_past_its_timeout_is_logged_as_a_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that sends its role and first words, then stalls.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = tcp.read(&mut buf).await;
                let event = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"one\"},\"finish_reason\":null}]}\n\n";
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let chunk = format!("{head}{:x}\r\n{event}\r\n", event.len());
                let _ = tcp.write_all(chunk.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            });
        }
    });
    let upstream = format!("http://{addr}/v1");
    let collected = Arc::new(Collected::default());
    let ext = gateway_server::Extensions {
        observer: Arc::clone(&collected) as Arc<dyn gateway_core::Observer>,
        ..Default::default()
    };
    let gw = TestGateway::start_with(
        &format!(
            r#"
[[providers]]
name = "oai"
kind = "openai"
base_url = "{}"
timeout_ms = 150
[[providers.keys]]
name = "k"
secret = "sk-test-openai-1"
"#,
            upstream
        ),
        ext,
        None,
    )
    .await;
    let mut body = chat("oai/gpt-4o-mini", "stall");
    body["stream"] = json!(true);
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "the stream began: {}", r.text());
    assert!(r.text().contains("upstream stream failed"), "{}", r.text());
    gw.stop().await;
    let records = collected.0.lock().unwrap().clone();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].status, 504, "{:?}", records[0]);
}

/// A gateway whose route `chat` goes to provider `first` (`kind` at `base`, no retries), with
/// the mock's OpenAI API (`oai/gpt-4o-mini`) as its fallback.
async fn first_then_mock(kind: &str, base: &str, m: &MockServer) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[[providers]]
name = "first"
kind = "{kind}"
base_url = "{base}"
max_retries = 0
[[providers.keys]]
name = "k"
secret = "sk-first"
[[providers]]
name = "oai"
kind = "openai"
base_url = "{}"
[[providers.keys]]
name = "k"
secret = "sk-test-openai-1"
[[routes]]
name = "chat"
targets = [{{ provider = "first", model = "model-x" }}]
fallbacks = ["oai/gpt-4o-mini"]
"#,
        m.openai_base()
    ))
    .await
}

/// Anthropic's usual overload: a 200 that opens the stream (`message_start`) and then fails
/// in-band (`overloaded_error`) before any content. Nothing usable was sent, so the request
/// fails over to the route's fallback, for clients of both APIs, and the client sees one
/// clean stream.
#[tokio::test]
async fn a_stream_that_fails_after_its_opening_event_fails_over() {
    let overloaded = stand_in_upstream(|_, _| {
        (
            200,
            "text/event-stream",
            concat!(
                "event: message_start\n",
                "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
                "event: ping\n",
                "data: {\"type\":\"ping\"}\n\n",
                "event: error\n",
                "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            )
            .to_owned(),
        )
    })
    .await;
    let root = overloaded.trim_end_matches("/v1").to_owned();
    let m = MockUpstream::new()
        .key("sk-test-openai-1")
        .start()
        .await
        .unwrap();
    let gw = first_then_mock("anthropic", &root, &m).await;
    let mut ask = chat("chat", "hello");
    ask["stream"] = json!(true);
    let r = gw.post("/v1/chat/completions", &ask).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-gateway-provider"), Some("oai"), "{}", r.text());
    assert_eq!(r.header("x-gateway-attempts"), Some("2"));
    assert!(!r.text().contains("overloaded"), "{}", r.text());
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    let mut ask = messages("chat", "hello");
    ask["stream"] = json!(true);
    let r = gw.post_anthropic(&ask).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-gateway-provider"), Some("oai"));
    assert!(!r.text().contains("overloaded_error"), "{}", r.text());
    assert!(r.text().contains("event: message_stop"), "{}", r.text());
    // msg_1's opening never reached the client: one message_start, the fallback's.
    assert_eq!(
        r.text().matches("event: message_start").count(),
        1,
        "{}",
        r.text()
    );
    assert!(!r.text().contains("msg_1"), "{}", r.text());
    gw.stop().await;

    // The same from an OpenAI-format upstream: its role chunk, then an in-band error.
    let broken = stand_in_upstream(|_, _| {
        (
            200,
            "text/event-stream",
            concat!(
                "data: {\"id\":\"chatcmpl-broken\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"finish_reason\":null}]}\n\n",
                "data: {\"error\":{\"message\":\"The server is overloaded\",\"type\":\"server_error\"}}\n\n",
            )
            .to_owned(),
        )
    })
    .await;
    let gw = first_then_mock("openai", &broken, &m).await;
    let mut ask = chat("chat", "hello");
    ask["stream"] = json!(true);
    let r = gw.post("/v1/chat/completions", &ask).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-gateway-provider"), Some("oai"), "{}", r.text());
    assert!(!r.text().contains("chatcmpl-broken"), "{}", r.text());
    assert!(!r.text().contains("overloaded"), "{}", r.text());
    gw.stop().await;
}
