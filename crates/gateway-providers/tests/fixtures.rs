//! Conversion fixtures: canonical request → wire bodies, wire responses → canonical, and recorded
//! streams → canonical chunks that assemble into the same message and usage as the non-stream path.

use bytes::Bytes;
use expect_test::{expect, Expect};
use futures_util::StreamExt;
use gateway_core::types::{ChatChunk, ChatRequest, ChatResponse, StreamAccumulator, Usage};
use gateway_core::ProviderError;
use gateway_providers::anthropic::{messages_body, parse_message, MessageStreamDecoder};
use gateway_providers::openai::{
    chat_body_value, parse_chat_response, parse_embeddings, pass_chat_response, ChunkDecoder,
    Quirks,
};
use gateway_providers::sse::SseStream;
use gateway_providers::stream::{decode_stream, StreamDecoder};
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::{json, Value};

/// A request using every feature the conversions care about.
fn rich_request() -> ChatRequest {
    serde_json::from_value(json!({
        "model": "public-name",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": "Use metric units."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these images, and the weather in Paris?"},
                {"type": "text", "text": ""},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}}
            ]},
            {"role": "assistant", "content": "Checking.", "reasoning_content": "The user wants weather.",
             "tool_calls": [
                {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_def", "type": "function", "function": {"name": "get_time", "arguments": "not json"}}
            ]},
            {"role": "tool", "tool_call_id": "call_abc", "content": "18C sunny"},
            {"role": "tool", "tool_call_id": "call_def", "content": [{"type": "text", "text": "14:00"}]},
            {"role": "user", "content": "Thanks. Summarise."}
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "get_time"}}
        ],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "stop": "END",
        "temperature": 1.5,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "user": "user-42",
        "max_tokens": 300,
        "logit_bias": {"50256": -100},
        "fallbacks": ["other-model"]
    }))
    .expect("valid canonical request")
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("serialisable")
}

#[test]
fn openai_request_body() {
    let body = chat_body_value(
        &rich_request(),
        "gpt-4o-mini",
        false,
        Quirks::for_kind("openai"),
    )
    .expect("body");
    expect![[r#"
        {
          "logit_bias": {
            "50256": -100
          },
          "max_tokens": 300,
          "messages": [
            {
              "content": "Be terse.",
              "role": "system"
            },
            {
              "content": "Use metric units.",
              "role": "developer"
            },
            {
              "content": [
                {
                  "text": "What is in these images, and the weather in Paris?",
                  "type": "text"
                },
                {
                  "text": "",
                  "type": "text"
                },
                {
                  "image_url": {
                    "url": "data:image/png;base64,iVBORw0KGgo="
                  },
                  "type": "image_url"
                },
                {
                  "image_url": {
                    "detail": "low",
                    "url": "https://example.com/cat.jpg"
                  },
                  "type": "image_url"
                }
              ],
              "role": "user"
            },
            {
              "content": "Checking.",
              "role": "assistant",
              "tool_calls": [
                {
                  "function": {
                    "arguments": "{\"city\":\"Paris\"}",
                    "name": "get_weather"
                  },
                  "id": "call_abc",
                  "type": "function"
                },
                {
                  "function": {
                    "arguments": "not json",
                    "name": "get_time"
                  },
                  "id": "call_def",
                  "type": "function"
                }
              ]
            },
            {
              "content": "18C sunny",
              "role": "tool",
              "tool_call_id": "call_abc"
            },
            {
              "content": [
                {
                  "text": "14:00",
                  "type": "text"
                }
              ],
              "role": "tool",
              "tool_call_id": "call_def"
            },
            {
              "content": "Thanks. Summarise.",
              "role": "user"
            }
          ],
          "model": "gpt-4o-mini",
          "parallel_tool_calls": false,
          "seed": 7,
          "stop": "END",
          "temperature": 1.5,
          "tool_choice": "required",
          "tools": [
            {
              "function": {
                "description": "Weather by city",
                "name": "get_weather",
                "parameters": {
                  "properties": {
                    "city": {
                      "type": "string"
                    }
                  },
                  "required": [
                    "city"
                  ],
                  "type": "object"
                }
              },
              "type": "function"
            },
            {
              "function": {
                "name": "get_time"
              },
              "type": "function"
            }
          ],
          "top_p": 0.9,
          "user": "user-42"
        }"#]]
    .assert_eq(&pretty(&body));
}

#[test]
fn openai_stream_body_forces_usage() {
    let mut req = rich_request();
    req.stream = true;
    let body = chat_body_value(&req, "llama", true, Quirks::for_kind("vllm")).expect("body");
    assert_eq!(body["stream"], json!(true));
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["top_k"], json!(40), "vLLM keeps top_k");
    assert!(
        body.get("fallbacks").is_none(),
        "gateway-only field dropped"
    );
    assert!(
        body["messages"][3].get("reasoning_content").is_none(),
        "reasoning is never sent back"
    );
}

#[test]
fn mistral_quirks() {
    let body = chat_body_value(
        &rich_request(),
        "mistral-large",
        false,
        Quirks::for_kind("mistral"),
    )
    .expect("body");
    let picked = json!({
        "tool_choice": body["tool_choice"],
        "seed": body.get("seed"),
        "random_seed": body["random_seed"],
        "top_k": body.get("top_k"),
        "call_ids": [body["messages"][3]["tool_calls"][0]["id"], body["messages"][3]["tool_calls"][1]["id"]],
        "result_ids": [body["messages"][4]["tool_call_id"], body["messages"][5]["tool_call_id"]],
    });
    expect![[r#"{"call_ids":["wfh8Yra8U","x6TFwxZgU"],"random_seed":7,"result_ids":["wfh8Yra8U","x6TFwxZgU"],"seed":null,"tool_choice":"any","top_k":null}"#]]
        .assert_eq(&picked.to_string());
}

#[test]
fn mistral_gets_only_the_fields_it_knows() {
    // Mistral answers 422 to unknown fields: a stream must not carry `stream_options` (its last
    // chunk has the usage anyway), nor OpenAI-only fields such as `user` or `logit_bias`.
    let mut req = rich_request();
    req.stream = true;
    req.max_tokens = None;
    req.max_completion_tokens = Some(77);
    req.messages[0].name = Some("bob".to_owned());
    let body =
        chat_body_value(&req, "mistral-large", true, Quirks::for_kind("mistral")).expect("body");
    assert!(
        body["messages"][0].get("name").is_none(),
        "name only on tool messages: {}",
        body["messages"][0]
    );
    let mut fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    expect![[r#"["max_tokens", "messages", "model", "parallel_tool_calls", "random_seed", "stop", "stream", "temperature", "tool_choice", "tools", "top_p"]"#]]
        .assert_eq(&format!("{fields:?}"));
    assert_eq!(
        body["max_tokens"], 77,
        "max_completion_tokens becomes max_tokens"
    );
    assert_eq!(body["stream"], true);
}

#[test]
fn anthropic_request_body() {
    let body = messages_body(&rich_request(), "claude-sonnet-4-5", false);
    expect![[r#"
        {
          "max_tokens": 300,
          "messages": [
            {
              "content": [
                {
                  "text": "What is in these images, and the weather in Paris?",
                  "type": "text"
                },
                {
                  "source": {
                    "data": "iVBORw0KGgo=",
                    "media_type": "image/png",
                    "type": "base64"
                  },
                  "type": "image"
                },
                {
                  "source": {
                    "type": "url",
                    "url": "https://example.com/cat.jpg"
                  },
                  "type": "image"
                }
              ],
              "role": "user"
            },
            {
              "content": [
                {
                  "text": "Checking.",
                  "type": "text"
                },
                {
                  "id": "call_abc",
                  "input": {
                    "city": "Paris"
                  },
                  "name": "get_weather",
                  "type": "tool_use"
                },
                {
                  "id": "call_def",
                  "input": {},
                  "name": "get_time",
                  "type": "tool_use"
                }
              ],
              "role": "assistant"
            },
            {
              "content": [
                {
                  "content": "18C sunny",
                  "tool_use_id": "call_abc",
                  "type": "tool_result"
                },
                {
                  "content": [
                    {
                      "text": "14:00",
                      "type": "text"
                    }
                  ],
                  "tool_use_id": "call_def",
                  "type": "tool_result"
                },
                {
                  "text": "Thanks. Summarise.",
                  "type": "text"
                }
              ],
              "role": "user"
            }
          ],
          "metadata": {
            "user_id": "user-42"
          },
          "model": "claude-sonnet-4-5",
          "stop_sequences": [
            "END"
          ],
          "system": "Be terse.\n\nUse metric units.",
          "temperature": 1.0,
          "tool_choice": {
            "disable_parallel_tool_use": true,
            "type": "any"
          },
          "tools": [
            {
              "description": "Weather by city",
              "input_schema": {
                "properties": {
                  "city": {
                    "type": "string"
                  }
                },
                "required": [
                  "city"
                ],
                "type": "object"
              },
              "name": "get_weather"
            },
            {
              "input_schema": {
                "properties": {},
                "type": "object"
              },
              "name": "get_time"
            }
          ],
          "top_k": 40,
          "top_p": 0.9
        }"#]]
    .assert_eq(&pretty(&body));
}

#[test]
fn anthropic_request_defaults_and_options() {
    let req: ChatRequest = serde_json::from_value(json!({
        "model": "x",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "?"}
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}},
        "reasoning_effort": "low",
        "temperature": 0.2
    }))
    .expect("request");
    let body = messages_body(&req, "claude-3-haiku-20240307", true);
    expect![[r#"{"max_tokens":4096,"messages":[{"content":[{"text":"Hi","type":"text"},{"text":"again","type":"text"},{"text":"?","type":"text"}],"role":"user"}],"model":"claude-3-haiku-20240307","stream":true,"system":"Respond with a single valid JSON object and nothing else. It must match this JSON schema: {\"type\":\"object\"}","thinking":{"budget_tokens":1024,"type":"enabled"},"tool_choice":{"name":"f","type":"tool"},"tools":[{"input_schema":{"properties":{},"type":"object"},"name":"f"}]}"#]]
        .assert_eq(&body.to_string());
}

const OPENAI_RESPONSE: &str = r#"{"id":"chatcmpl-123","object":"chat.completion","created":1730000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1",
 "choices":[{"index":0,"message":{"role":"assistant","content":"Checking.","refusal":null,
   "tool_calls":[{"id":"call_abc","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                 {"id":"call_def","type":"function","function":{"name":"get_time","arguments":"{}"}}]},
   "logprobs":null,"finish_reason":"tool_calls"}],
 "usage":{"prompt_tokens":82,"completion_tokens":17,"total_tokens":99,"prompt_tokens_details":{"cached_tokens":64},"completion_tokens_details":{"reasoning_tokens":0}}}"#;

#[test]
fn openai_response_to_canonical() {
    let resp = parse_chat_response(OPENAI_RESPONSE.as_bytes()).expect("parses");
    expect![[r#"{"id":"chatcmpl-123","object":"chat.completion","created":1730000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Checking.","tool_calls":[{"id":"call_abc","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},{"id":"call_def","type":"function","function":{"name":"get_time","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":82,"completion_tokens":17,"total_tokens":99,"prompt_tokens_details":{"cached_tokens":64},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_1"}"#]]
        .assert_eq(&serde_json::to_string(&resp).expect("json"));
}

#[test]
fn openai_response_quirks() {
    // DeepSeek cache counts, an unknown finish reason, arguments sent as an object.
    let resp = parse_chat_response(
        br#"{"id":"x","model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"ok","reasoning_content":"think",
            "tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":{"a":1}}}]},"finish_reason":"eos"}],
            "usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,"prompt_cache_hit_tokens":8,"prompt_cache_miss_tokens":2}}"#,
    )
    .expect("parses");
    let c = &resp.choices[0];
    assert_eq!(c.message.reasoning_content.as_deref(), Some("think"));
    assert_eq!(
        c.message
            .tool_calls
            .as_ref()
            .map(|t| t[0].function.arguments.as_str()),
        Some("{\"a\":1}")
    );
    assert_eq!(
        c.finish_reason,
        Some(gateway_core::types::FinishReason::Stop)
    );
    assert_eq!(resp.usage.map(|u| u.cached_tokens()), Some(8));
    // An error payload with status 200.
    let err = parse_chat_response(br#"{"error":{"message":"Provider returned error","code":502}}"#)
        .expect_err("error payload");
    assert!(
        matches!(err, ProviderError::Server { status: 502, .. }),
        "{err:?}"
    );
}

const ANTHROPIC_RESPONSE: &str = r#"{"id":"msg_01X","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",
 "content":[{"type":"thinking","thinking":"Need weather.","signature":"sig"},{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_01A","name":"get_weather","input":{"city":"Paris"}}],
 "stop_reason":"tool_use","stop_sequence":null,
 "usage":{"input_tokens":412,"output_tokens":57,"cache_creation_input_tokens":100,"cache_read_input_tokens":200}}"#;

#[test]
fn anthropic_response_to_canonical() {
    let mut resp = parse_message(ANTHROPIC_RESPONSE.as_bytes()).expect("parses");
    resp.created = 0;
    expect![[r#"{"id":"msg_01X","object":"chat.completion","created":0,"model":"claude-sonnet-4-5-20250929","choices":[{"index":0,"message":{"role":"assistant","content":"Checking.","tool_calls":[{"id":"toolu_01A","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}],"reasoning_content":"Need weather."},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":712,"completion_tokens":57,"total_tokens":769,"prompt_tokens_details":{"cached_tokens":200}}}"#]]
        .assert_eq(&serde_json::to_string(&resp).expect("json"));
}

#[test]
fn embeddings_floats_and_base64() {
    let floats = parse_embeddings(
        br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-1.0]}],"model":"m","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
    )
    .expect("floats");
    // base64 of little-endian f32 [0.5, -1.0]
    let b64 = parse_embeddings(
        br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AAAAPwAAgL8="}],"model":"m","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
    )
    .expect("base64");
    assert_eq!(floats, b64);
    assert_eq!(floats.data[0].embedding, vec![0.5, -1.0]);
    assert_eq!(floats.usage.map(|u| u.prompt_tokens), Some(8));
}

// ---------------------------------------------------------------------------------------------
// Streams

/// Feeds `raw` through the SSE stream adapter in small, uneven pieces and decodes it.
async fn decode<D: StreamDecoder<gateway_providers::sse::SseEvent>>(
    raw: &str,
    decoder: D,
) -> Vec<Result<ChatChunk, ProviderError>> {
    let bytes = raw.as_bytes();
    let mut frames: Vec<Result<Frame<Bytes>, std::io::Error>> = Vec::new();
    let mut at = 0;
    let mut step = 1;
    while at < bytes.len() {
        let end = (at + step).min(bytes.len());
        frames.push(Ok(Frame::data(Bytes::copy_from_slice(&bytes[at..end]))));
        at = end;
        step = step % 37 + 7;
    }
    let body = StreamBody::new(futures_util::stream::iter(frames));
    decode_stream(SseStream::new(body), decoder).collect().await
}

/// An Anthropic stream in pass-through as the adapter reads it (named runs), the body arriving
/// in reads of `sizes` bytes in turn (the last size repeating).
async fn pass_anthropic(raw: &str, sizes: &[usize]) -> Vec<Result<ChatChunk, ProviderError>> {
    let bytes = raw.as_bytes();
    let mut frames: Vec<Result<Frame<Bytes>, std::io::Error>> = Vec::new();
    let (mut at, mut k) = (0, 0);
    while at < bytes.len() {
        let end = (at + sizes[k.min(sizes.len() - 1)]).min(bytes.len());
        frames.push(Ok(Frame::data(Bytes::copy_from_slice(&bytes[at..end]))));
        at = end;
        k += 1;
    }
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let decoder = MessageStreamDecoder::new().passthrough(true);
    decode_stream(SseStream::new(body).named_runs(), decoder)
        .collect()
        .await
}

/// The text a client gets from pass-through chunks, and the errors among them.
fn passed_text(items: &[Result<ChatChunk, ProviderError>]) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut errors = Vec::new();
    for i in items {
        match i {
            Ok(c) => {
                text.push_str(std::str::from_utf8(c.raw.as_deref().expect("raw")).expect("utf-8"))
            }
            Err(e) => errors.push(format!("{} {e}", e.outcome())),
        }
    }
    (text, errors)
}

fn assemble(items: &[Result<ChatChunk, ProviderError>]) -> ChatResponse {
    let mut acc = StreamAccumulator::default();
    for item in items {
        acc.push(item.as_ref().expect("no error in this stream"));
    }
    acc.into_response()
}

fn render(items: &[Result<ChatChunk, ProviderError>]) -> String {
    items
        .iter()
        .map(|i| match i {
            Ok(c) => {
                let mut v = serde_json::to_value(c).expect("json");
                v.as_object_mut().map(|o| {
                    o.remove("object");
                    o.remove("created")
                });
                v.to_string()
            }
            Err(e) => format!("ERR {}: {e}", e.outcome()),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn check(actual: &str, expect: Expect) {
    expect.assert_eq(actual);
}

const OPENAI_TOOL_STREAM: &str = concat!(
    ": keep-alive\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Check\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ing.\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_abc\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"ci\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ty\\\":\\\"Paris\\\"}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_def\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":82,\"completion_tokens\":17,\"total_tokens\":99,\"prompt_tokens_details\":{\"cached_tokens\":64},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

#[tokio::test]
async fn openai_stream_matches_non_stream() {
    let items = decode(OPENAI_TOOL_STREAM, ChunkDecoder::new()).await;
    check(
        &render(&items),
        expect![[r#"
            {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}],"id":"chatcmpl-123","model":"gpt-4o-mini-2024-07-18","usage":null}
            {"choices":[{"delta":{"content":"Check"},"finish_reason":null,"index":0}],"id":"chatcmpl-123","model":"gpt-4o-mini-2024-07-18","usage":null}
            {"choices":[{"delta":{"content":"ing."},"finish_reason":null,"index":0}],"id":"chatcmpl-123","model":"gpt-4o-mini-2024-07-18","usage":null}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"get_weather"},"id":"call_abc","index":0,"type":"function"}]},"finish_reason":null,"index":0}],"id":"chatcmpl-123","model":"gpt-4o-mini-2024-07-18","usage":null}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"ci"},"index":0}]},"finish_reason":null,"index":0}],"id":"chatcmpl-123","model":"gpt-4o-mini-2024-07-18","usage":null}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"ty\":\"Paris\"}"},"index":0}]},"finish_reason":null,"index":0}],"id":"chatcmpl-123","model":"gpt-4o-mini-2024-07-18","usage":null}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}","name":"get_time"},"id":"call_def","index":1,"type":"function"}]},"finish_reason":null,"index":0}],"id":"chatcmpl-123","model":"gpt-4o-mini-2024-07-18","usage":null}
            {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0}],"id":"chatcmpl-123","model":"gpt-4o-mini-2024-07-18","usage":null}
            {"choices":[],"id":"chatcmpl-123","model":"gpt-4o-mini-2024-07-18","usage":{"completion_tokens":17,"completion_tokens_details":{"reasoning_tokens":0},"prompt_tokens":82,"prompt_tokens_details":{"cached_tokens":64},"total_tokens":99}}"#]],
    );
    let streamed = assemble(&items);
    let direct = parse_chat_response(OPENAI_RESPONSE.as_bytes()).expect("parses");
    assert_eq!(streamed.choices[0].message, direct.choices[0].message);
    assert_eq!(
        streamed.choices[0].finish_reason,
        direct.choices[0].finish_reason
    );
    assert_eq!(streamed.usage, direct.usage);
}

#[tokio::test]
async fn azure_xai_and_groq_stream_shapes() {
    // Azure: an empty-identity first chunk with prompt_filter_results and choices: [], a chunk
    // without delta; CRLF line endings.
    let azure = concat!(
        "data: {\"id\":\"\",\"object\":\"\",\"created\":0,\"model\":\"\",\"choices\":[],\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\r\n\r\n",
        "data: {\"id\":\"a1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null,\"content_filter_results\":{}}]}\r\n\r\n",
        "data: {\"id\":\"a1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"finish_reason\":\"stop\",\"content_filter_results\":{}}]}\r\n\r\n",
        "data: {\"id\":\"a1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\r\n\r\n",
        "data: [DONE]\r\n\r\n",
    );
    let items = decode(azure, ChunkDecoder::new()).await;
    check(
        &render(&items),
        expect![[r#"
            {"choices":[{"delta":{"content":"Hi","role":"assistant"},"finish_reason":null,"index":0}],"id":"a1","model":"gpt-4o","usage":null}
            {"choices":[{"delta":{},"finish_reason":"stop","index":0}],"id":"a1","model":"gpt-4o","usage":null}
            {"choices":[],"id":"a1","model":"gpt-4o","usage":{"completion_tokens":1,"prompt_tokens":5,"total_tokens":6}}"#]],
    );

    // xAI: usage before a trailing empty chunk; the usage still comes last.
    let xai = concat!(
        "data: {\"id\":\"x\",\"model\":\"grok\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Yo\"}}]}\n\n",
        "data: {\"id\":\"x\",\"model\":\"grok\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
        "data: {\"id\":\"x\",\"model\":\"grok\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"}}]}\n\n",
        "data: [DONE]\n\n",
    );
    let items = decode(xai, ChunkDecoder::new()).await;
    let last = items
        .last()
        .and_then(|i| i.as_ref().ok())
        .expect("a last chunk");
    assert!(
        last.choices.is_empty() && last.usage == Some(Usage::new(3, 1, 0)),
        "{last:?}"
    );
    assert_eq!(assemble(&items).choices[0].message.content_text(), "Yo");

    // Groq: usage in x_groq on the last chunk; no [DONE] but a finish reason, so the end is fine.
    let groq = concat!(
        "data: {\"id\":\"g\",\"model\":\"llama\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hey\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"g\",\"model\":\"llama\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"x_groq\":{\"id\":\"req_1\",\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1,\"total_tokens\":8}}}\n\n",
    );
    let items = decode(groq, ChunkDecoder::new()).await;
    assert_eq!(assemble(&items).usage, Some(Usage::new(7, 1, 0)));
}

#[tokio::test]
async fn openai_stream_errors() {
    let mid = concat!(
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n",
        "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"code\":null}}\n\n",
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"never\"}}]}\n\n",
    );
    check(
        &render(&decode(mid, ChunkDecoder::new()).await),
        expect![[r#"
            {"choices":[{"delta":{"content":"par"},"finish_reason":null,"index":0}],"id":"c","model":"m","usage":null}
            ERR server_error: upstream server error 500: The server had an error while processing your request."#]],
    );
    // OpenRouter: an error chunk with finish_reason "error".
    let openrouter = "data: {\"id\":\"o\",\"model\":\"m\",\"error\":{\"code\":502,\"message\":\"Provider returned error\"},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n";
    check(
        &render(&decode(openrouter, ChunkDecoder::new()).await),
        expect!["ERR server_error: upstream server error 502: Provider returned error"],
    );
    // vLLM's error object.
    let vllm = "data: {\"object\":\"error\",\"message\":\"bad input\",\"type\":\"BadRequestError\",\"param\":null,\"code\":400}\n\n";
    check(
        &render(&decode(vllm, ChunkDecoder::new()).await),
        expect!["ERR client_error: bad input"],
    );
    // Cut off before any finish reason.
    let cut = "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n";
    let items = decode(cut, ChunkDecoder::new()).await;
    assert!(
        matches!(items.last(), Some(Err(ProviderError::Connect(_)))),
        "a stream cut before it finished ends with an error: {items:?}"
    );
    // Garbage.
    let items = decode("data: {not json\n\n", ChunkDecoder::new()).await;
    assert!(
        matches!(items.last(), Some(Err(ProviderError::Protocol(_)))),
        "{items:?}"
    );
}

const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01X\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":412,\"output_tokens\":1,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":200}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Need weather.\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"sig\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\":\"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Check\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"ing.\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01A\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Par\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"is\\\"}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":57}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

#[tokio::test]
async fn anthropic_stream_matches_non_stream() {
    let items = decode(ANTHROPIC_STREAM, MessageStreamDecoder::new()).await;
    check(
        &render(&items),
        expect![[r#"
            {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}],"id":"msg_01X","model":"claude-sonnet-4-5-20250929","usage":null}
            {"choices":[{"delta":{"reasoning_content":"Need weather."},"finish_reason":null,"index":0}],"id":"msg_01X","model":"claude-sonnet-4-5-20250929","usage":null}
            {"choices":[{"delta":{"content":"Check"},"finish_reason":null,"index":0}],"id":"msg_01X","model":"claude-sonnet-4-5-20250929","usage":null}
            {"choices":[{"delta":{"content":"ing."},"finish_reason":null,"index":0}],"id":"msg_01X","model":"claude-sonnet-4-5-20250929","usage":null}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"get_weather"},"id":"toolu_01A","index":0,"type":"function"}]},"finish_reason":null,"index":0}],"id":"msg_01X","model":"claude-sonnet-4-5-20250929","usage":null}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"city\": \"Par"},"index":0}]},"finish_reason":null,"index":0}],"id":"msg_01X","model":"claude-sonnet-4-5-20250929","usage":null}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"is\"}"},"index":0}]},"finish_reason":null,"index":0}],"id":"msg_01X","model":"claude-sonnet-4-5-20250929","usage":null}
            {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0}],"id":"msg_01X","model":"claude-sonnet-4-5-20250929","usage":null}
            {"choices":[],"id":"msg_01X","model":"claude-sonnet-4-5-20250929","usage":{"completion_tokens":57,"prompt_tokens":712,"prompt_tokens_details":{"cached_tokens":200},"total_tokens":769}}"#]],
    );
    let streamed = assemble(&items);
    let direct = parse_message(ANTHROPIC_RESPONSE.as_bytes()).expect("parses");
    let (s, d) = (&streamed.choices[0], &direct.choices[0]);
    assert_eq!(s.message.content, d.message.content);
    assert_eq!(s.finish_reason, d.finish_reason);
    assert_eq!(streamed.usage, direct.usage);
    // Streamed arguments are the same JSON, whitespace aside.
    let args = |r: &ChatResponse| -> Value {
        let calls = r.choices[0]
            .message
            .tool_calls
            .as_ref()
            .expect("tool calls");
        serde_json::from_str(&calls[0].function.arguments).expect("json arguments")
    };
    assert_eq!(args(&streamed), args(&direct));
}

/// An OpenAI-format client has no place for Anthropic's thinking blocks: the adapter remembers
/// those before each `tool_use` (from an answer or a stream) and, with thinking on, puts them
/// back at the start of the assistant turn that carries the call.
#[tokio::test]
async fn anthropic_thinking_before_a_tool_call_comes_back_with_it() {
    use gateway_providers::anthropic::{messages_body_with, parse_message_with};
    use gateway_providers::signatures::SignatureStore;
    let want = r#"[{"signature":"sig","thinking":"Need weather.","type":"thinking"}]"#;
    let answered = SignatureStore::new();
    parse_message_with(ANTHROPIC_RESPONSE.as_bytes(), Some(&answered)).expect("parses");
    let streamed = std::sync::Arc::new(SignatureStore::new());
    let items = decode(
        ANTHROPIC_STREAM,
        MessageStreamDecoder::new().remember_thinking(Some(std::sync::Arc::clone(&streamed))),
    )
    .await;
    assert!(items.iter().all(Result::is_ok));
    for store in [&answered, &*streamed] {
        let got: Value =
            serde_json::from_str(&store.get("toolu_01A").expect("remembered")).unwrap();
        assert_eq!(got, serde_json::from_str::<Value>(want).unwrap());
        assert_eq!(store.len(), 1);
    }

    let mut req: ChatRequest = serde_json::from_value(json!({
        "model": "m", "reasoning_effort": "low",
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "18C"}
        ]
    }))
    .unwrap();
    let body = messages_body_with(&req, "claude-sonnet-4-5", false, Some(&answered));
    let turn = &body["messages"][1]["content"];
    assert_eq!(turn[0], serde_json::from_str::<Value>(want).unwrap()[0]);
    assert_eq!(turn[1]["type"], "text");
    assert_eq!(turn[2]["type"], "tool_use");
    // Without thinking the blocks stay out (they would only cost input tokens).
    req.reasoning_effort = None;
    let body = messages_body_with(&req, "claude-sonnet-4-5", false, Some(&answered));
    assert_eq!(body["messages"][1]["content"][0]["type"], "text");
}

/// In pass-through, every event reaches the caller as the upstream wrote it, in order (thinking,
/// signature, ping and block boundaries included), and what the gateway needs is still decoded:
/// the same usage and finish reason as the full decode.
#[tokio::test]
async fn anthropic_stream_passthrough_carries_every_event_as_it_came() {
    let items = decode(
        ANTHROPIC_STREAM,
        MessageStreamDecoder::new().passthrough(true),
    )
    .await;
    let chunks: Vec<&ChatChunk> = items
        .iter()
        .map(|i| i.as_ref().expect("no error"))
        .collect();
    let text: String = chunks
        .iter()
        .map(|c| std::str::from_utf8(c.raw.as_deref().expect("every chunk raw")).expect("utf-8"))
        .collect();
    assert_eq!(text, ANTHROPIC_STREAM);
    let full = assemble(&decode(ANTHROPIC_STREAM, MessageStreamDecoder::new()).await);
    let passed = assemble(&items);
    assert_eq!(passed.usage, full.usage);
    assert_eq!(
        passed.choices[0].finish_reason,
        full.choices[0].finish_reason
    );
    assert!(
        chunks
            .iter()
            .all(|c| c.choices.iter().all(|ch| ch.finish_reason.is_some())),
        "only finishing choices"
    );
    assert_eq!(
        chunks.iter().filter(|c| c.usage.is_some()).count(),
        1,
        "usage once, with message_stop"
    );
}

/// Read in runs (all the events of a read after the first in one chunk), a pass-through stream
/// gives the client the same text, usage and finish reason, however the body is cut into reads:
/// a run that meets the end of the stream stops there, and one that meets an error hands on the
/// events before it, then the error.
#[tokio::test]
async fn anthropic_stream_passthrough_in_runs_is_the_same_stream() {
    let one_by_one = decode(
        ANTHROPIC_STREAM,
        MessageStreamDecoder::new().passthrough(true),
    )
    .await;
    let want = assemble(&one_by_one);
    for sizes in [&[usize::MAX][..], &[1], &[7, 13], &[400, 5000], &[2000]] {
        let items = pass_anthropic(ANTHROPIC_STREAM, sizes).await;
        let (text, errors) = passed_text(&items);
        assert_eq!(text, ANTHROPIC_STREAM, "reads of {sizes:?}");
        assert!(errors.is_empty(), "{errors:?}");
        let got = assemble(&items);
        assert_eq!(got.usage, want.usage, "reads of {sizes:?}");
        assert_eq!(got.choices[0].finish_reason, want.choices[0].finish_reason);
        if sizes == [usize::MAX] {
            assert_eq!(items.len(), 2, "the first event alone, then one run");
        }
    }

    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n";
    let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
    let finish = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n";
    let stop = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let garbage = "event: content_block_delta\ndata: {\"type\":\n\n";

    // Nothing after message_stop is read.
    let stream = [start, delta, finish, stop, delta].concat();
    let (text, errors) = passed_text(&pass_anthropic(&stream, &[usize::MAX]).await);
    assert_eq!(text, [start, delta, finish, stop].concat());
    assert!(errors.is_empty(), "{errors:?}");

    // An error, or garbage, in the middle of a run.
    for (bad, outcome) in [(error, "overloaded"), (garbage, "invalid stream event")] {
        let stream = [start, delta, delta, bad, delta].concat();
        let (text, errors) = passed_text(&pass_anthropic(&stream, &[usize::MAX]).await);
        assert_eq!(text, [start, delta, delta].concat(), "{bad}");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_lowercase().contains(outcome), "{errors:?}");
    }
}

#[tokio::test]
async fn anthropic_stream_passthrough_edges() {
    // No `event:` lines: the names come from the data's type, as the SDK needs them.
    let unnamed = concat!(
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
    );
    let items = decode(unnamed, MessageStreamDecoder::new().passthrough(true)).await;
    let text: String = items
        .iter()
        .map(|i| String::from_utf8(i.as_ref().unwrap().raw.clone().unwrap().to_vec()).unwrap())
        .collect();
    // ... and a stream that ended after its message_delta gets the message_stop it left out.
    assert_eq!(
        text,
        concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        )
    );
    let last = items.last().unwrap().as_ref().unwrap();
    assert_eq!(last.usage.map(|u| u.completion_tokens), Some(2));

    // Garbage is an error, not something to forward; so are an upstream error and a cut stream.
    for (stream, want) in [
        (
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\n\n",
            "protocol",
        ),
        (
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            "overloaded",
        ),
        (
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\"}}\n\n",
            "connect",
        ),
    ] {
        let items = decode(stream, MessageStreamDecoder::new().passthrough(true)).await;
        match items.last() {
            Some(Err(e)) => assert!(
                format!("{} {e:?}", e.outcome()).to_lowercase().contains(want),
                "{stream}: {e:?}"
            ),
            other => panic!("{stream}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn anthropic_stream_errors() {
    let overloaded = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "event: error\n",
        "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    check(
        &render(&decode(overloaded, MessageStreamDecoder::new()).await),
        expect![[r#"
            {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}],"id":"m","model":"c","usage":null}
            ERR overloaded: provider overloaded: Overloaded"#]],
    );
    let cut = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
    );
    let items = decode(cut, MessageStreamDecoder::new()).await;
    assert!(
        matches!(items.last(), Some(Err(ProviderError::Connect(_)))),
        "{items:?}"
    );
}

/// Decodes `stream` with [`ChunkDecoder::raw`] and with [`ChunkDecoder::new`] and checks that
/// they agree: the same items, errors included; a chunk passed raw carries exactly its `data:`
/// payload, and that payload decodes (with the full decoder) to the choices the full decode
/// produced. Returns which chunks went raw.
async fn raw_agrees(stream: &str) -> Vec<bool> {
    let raw = decode(stream, ChunkDecoder::raw()).await;
    let full = decode(stream, ChunkDecoder::new()).await;
    assert_eq!(raw.len(), full.len(), "{stream}");
    let payloads: Vec<&str> = stream
        .split('\n')
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::trim_end)
        .collect();
    let mut went_raw = Vec::new();
    for (r, f) in raw.iter().zip(&full) {
        match (r, f) {
            (Ok(r), Ok(f)) => match &r.raw {
                Some(bytes) => {
                    let text = std::str::from_utf8(bytes).expect("utf-8");
                    assert!(payloads.contains(&text), "raw chunk is a payload: {text}");
                    // Usage passes raw only as the upstream's own usage chunk, decoded alike.
                    assert_eq!(r.usage, f.usage, "{text}");
                    assert!(r.usage.is_none() || r.choices.is_empty(), "{text}");
                    let again = decode(
                        &format!("data: {text}\n\ndata: [DONE]\n\n"),
                        ChunkDecoder::new(),
                    )
                    .await;
                    let again = again[0].as_ref().expect("the payload decodes");
                    assert_eq!(again.choices, f.choices, "{text}");
                    let finish: Vec<_> = r
                        .choices
                        .iter()
                        .map(|c| (c.index, c.finish_reason))
                        .collect();
                    let want: Vec<_> = f
                        .choices
                        .iter()
                        .map(|c| (c.index, c.finish_reason))
                        .collect();
                    assert_eq!(finish, want, "{text}");
                    went_raw.push(true);
                }
                None => {
                    assert_eq!(r, f);
                    went_raw.push(false);
                }
            },
            (Err(r), Err(f)) => {
                assert_eq!(r.to_string(), f.to_string());
                went_raw.push(false);
            }
            other => panic!("raw and full decodes differ: {other:?}"),
        }
    }
    went_raw
}

#[tokio::test]
async fn stream_chunks_pass_as_they_came_and_agree_with_the_full_decode() {
    // Text chunks, the finish chunk and the usage chunk pass raw; tool-call deltas do not.
    assert_eq!(
        raw_agrees(OPENAI_TOOL_STREAM).await,
        [true, true, true, false, false, false, false, true, true]
    );
    // Escapes in content, several choices, Azure's extra fields: still raw, byte for byte...
    let plain = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":3,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"line\\n\\\"q\\\" \\u00e9\"},\"finish_reason\":null,\"content_filter_results\":{}},{\"index\":1,\"delta\":{\"content\":\"b\"}}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":3,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"refusal\":null,\"reasoning_content\":\"why\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":3,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"},{\"index\":1,\"finish_reason\":\"content_filter\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    // ...except a choice without `delta` (Azure's content-filter annotation): decoded, so the
    // client gets `"delta": {}`, which SDKs read unguarded.
    assert_eq!(raw_agrees(plain).await, [true, true, false]);
    // What needs normalising takes the full decode: a `reasoning` object, the role `model`, an
    // unusual finish reason, usage on a choice chunk (held back to the end), Groq's usage.
    let odd = concat!(
        "data: {\"id\":\"o\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"model\",\"content\":\"a\"}}]}\n\n",
        "data: {\"id\":\"o\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":{\"text\":\"r\"}}}]}\n\n",
        "data: {\"id\":\"o\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\n",
        "data: {\"id\":\"o\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"eos\"}],\"x_groq\":{\"id\":\"q\"}}\n\n",
        "data: [DONE]\n\n",
    );
    assert_eq!(raw_agrees(odd).await, [false, false, false, false, false]);
    let groq = concat!(
        "data: {\"id\":\"g\",\"model\":\"llama\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hey\"},\"finish_reason\":null}],\"x_groq\":{\"id\":\"req_1\"}}\n\n",
        "data: {\"id\":\"g\",\"model\":\"llama\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"x_groq\":{\"id\":\"req_1\",\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1,\"total_tokens\":8}}}\n\n",
    );
    assert_eq!(raw_agrees(groq).await, [true, false, false]);
    // Errors, cut streams and garbage end the same way on both paths.
    for s in [
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\ndata: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"code\":null}}\n\n",
        "data: {\"id\":\"o\",\"model\":\"m\",\"error\":{\"code\":502,\"message\":\"Provider returned error\"},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n",
        "data: {\"object\":\"error\",\"message\":\"bad input\",\"type\":\"BadRequestError\",\"param\":null,\"code\":400}\n\n",
        "event: error\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n",
        "data: {not json\n\n",
    ] {
        raw_agrees(s).await;
    }
}

/// [`pass_chat_response`] passes plain text answers as they came and agrees with
/// [`parse_chat_response`] on everything it decodes; anything else is decoded fully, exactly as
/// `parse_chat_response` does. Returns whether `body` passed raw.
fn passes_raw(body: &str) -> bool {
    let bytes = Bytes::copy_from_slice(body.as_bytes());
    let full = parse_chat_response(&bytes);
    let passed = pass_chat_response(&bytes);
    match (&passed, &full) {
        (Ok(p), Ok(f)) => match &p.raw {
            Some(raw) => {
                assert_eq!(raw.as_ref(), body.as_bytes());
                assert_eq!(
                    (&p.id, &p.model, p.created, p.usage),
                    (&f.id, &f.model, f.created, f.usage)
                );
                let got: Vec<_> = p
                    .choices
                    .iter()
                    .map(|c| (c.index, c.finish_reason))
                    .collect();
                let want: Vec<_> = f
                    .choices
                    .iter()
                    .map(|c| (c.index, c.finish_reason))
                    .collect();
                assert_eq!(got, want);
                true
            }
            None => {
                assert_eq!(p, f);
                false
            }
        },
        (Err(p), Err(f)) => {
            assert_eq!(p.to_string(), f.to_string());
            false
        }
        other => panic!("passthrough and full decode differ: {other:?}"),
    }
}

#[test]
fn plain_answers_pass_as_they_came() {
    // Text answers, with the fields OpenAI adds (refusal, annotations, logprobs, service_tier).
    assert!(passes_raw(
        r#"{"id":"chatcmpl-1","object":"chat.completion","created":1730000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"there\"\n","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":0}},"service_tier":"default","system_fingerprint":"fp_1"}"#
    ));
    assert!(passes_raw(
        r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"a"},"finish_reason":"length"},{"index":1,"message":{"content":"b"},"finish_reason":"content_filter"}]}"#
    ));
    // Usage read in place, null, with null or unknown details, or after the choices.
    for usage in [
        r#"null"#,
        r#"{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,"prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":1,"audio_tokens":0},"extra":[1,{"a":null}]}"#,
        r#"{"prompt_tokens":5,"completion_tokens":2,"prompt_cache_hit_tokens":3}"#,
    ] {
        assert!(passes_raw(&format!(
            r#"{{"id":"c","object":"chat.completion","created":1,"model":"m","usage":{usage},"choices":[{{"index":0,"message":{{"role":"assistant","content":"a"}},"finish_reason":"stop"}}]}}"#
        )));
    }
    // A usage the skimmer leaves to serde still passes raw when serde reads it.
    assert!(passes_raw(
        r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"a"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"prompt_tok\u0065ns_x":1}}"#
    ));
    // Tool calls, reasoning objects, other roles, unusual finish reasons, a missing object or id,
    // no choices, errors, a repeated usage and garbage all take the full decode (and agree with
    // it).
    for body in [
        OPENAI_RESPONSE,
        r#"{"id":"x","model":"deepseek-chat","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"eos"}]}"#,
        r#"{"id":"x","model":"m","object":"chat.completion","choices":[{"index":0,"message":{"role":"model","content":"ok"},"finish_reason":"stop"}]}"#,
        r#"{"id":"x","model":"m","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok","reasoning":{"text":"r"}},"finish_reason":"stop"}]}"#,
        r#"{"id":"x","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#,
        r#"{"model":"m","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#,
        r#"{"id":"x","model":"m","object":"chat.completion","choices":[]}"#,
        r#"{"id":"x","model":"m","object":"chat.completion","choices":[{"index":0,"finish_reason":"stop"}]}"#,
        r#"{"error":{"message":"boom","type":"server_error"}}"#,
        r#"{"object":"error","message":"bad input","type":"BadRequestError","code":400}"#,
        r#"{"id":"c","object":"chat.completion","created":1,"model":"m","usage":{"prompt_tokens":1},"choices":[{"index":0,"message":{"role":"assistant","content":"a"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2}}"#,
        "{not json",
    ] {
        assert!(!passes_raw(body), "{body}");
    }
}
