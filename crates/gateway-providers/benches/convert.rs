//! Request and response conversion per provider family, with the bodies of `cargo xtask bench
//! overhead`: a chat request of about 1 KB and an answer of about 500 bytes.
//!
//! `encode` turns the canonical request into the provider's wire bytes; `decode` turns the
//! provider's response bytes into the canonical response. OpenAI-compatible providers (Groq,
//! Mistral, Together...) and Azure share the `openai` path; Vertex shares Gemini's.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway_core::types::ChatRequest;
use gateway_providers::{anthropic, bedrock, cohere, gemini, openai};
use serde_json::{json, Value};

/// About 500 bytes of answer, as `gateway-mock --reply-bytes 500` sends.
fn answer() -> String {
    let words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
    ];
    let mut s = String::new();
    for w in words.iter().cycle() {
        if s.len() >= 500 {
            break;
        }
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(w);
    }
    s
}

/// The load generator's request: a system message and a user message of about 900 bytes.
fn request() -> ChatRequest {
    let mut prompt = String::from("Summarise the following notes in three short bullet points. ");
    while prompt.len() < 880 {
        prompt.push_str("The quarterly report shows steady growth in every region, with costs held flat and margins improving. ");
    }
    serde_json::from_value(json!({
        "model": "bench",
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 256,
        "temperature": 0.2,
    }))
    .expect("a valid chat request")
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON encodes")
}

fn responses(text: &str) -> [(&'static str, Vec<u8>); 5] {
    [
        (
            "openai",
            bytes(&json!({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
                "model": "gpt-4o-mini", "system_fingerprint": "fp_bench",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                             "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 250, "completion_tokens": 100, "total_tokens": 350,
                          "prompt_tokens_details": {"cached_tokens": 0}},
            })),
        ),
        (
            "anthropic",
            bytes(&json!({
                "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-latest",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 250, "output_tokens": 100,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
            })),
        ),
        (
            "gemini",
            bytes(&json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 250, "candidatesTokenCount": 100, "totalTokenCount": 350},
                "modelVersion": "gemini-2.0-flash", "responseId": "bench",
            })),
        ),
        (
            "bedrock",
            bytes(&json!({
                "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 250, "outputTokens": 100, "totalTokens": 350},
                "metrics": {"latencyMs": 300},
            })),
        ),
        (
            "cohere",
            bytes(&json!({
                "id": "bench", "finish_reason": "COMPLETE",
                "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
                "usage": {"billed_units": {"input_tokens": 250, "output_tokens": 100},
                          "tokens": {"input_tokens": 250, "output_tokens": 100}},
            })),
        ),
    ]
}

fn decode(family: &str, body: &[u8]) -> usize {
    let response = match family {
        "openai" => openai::parse_chat_response(body).expect("openai decodes"),
        "anthropic" => anthropic::parse_message(body).expect("anthropic decodes"),
        "gemini" => {
            let wire: gemini::WireResponse = serde_json::from_slice(body).expect("gemini JSON");
            gemini::decode_response(
                wire,
                "gemini-2.0-flash",
                1_700_000_000,
                &gemini::SignatureStore::default(),
            )
        }
        "bedrock" => {
            let wire: bedrock::WireResponse = serde_json::from_slice(body).expect("bedrock JSON");
            bedrock::decode_response(
                wire,
                "req-1",
                "anthropic.claude-3-5-haiku",
                1_700_000_000,
                &bedrock::ToolNames::default(),
            )
        }
        "cohere" => {
            let wire: cohere::WireResponse = serde_json::from_slice(body).expect("cohere JSON");
            cohere::decode_response(wire, "command-r", 1_700_000_000).expect("cohere decodes")
        }
        other => panic!("unknown family {other}"),
    };
    response.choices.len()
}

fn encode(family: &str, req: &ChatRequest) -> usize {
    match family {
        "openai" => openai::chat_body(
            req,
            "gpt-4o-mini",
            false,
            openai::Quirks::for_kind("openai"),
        )
        .expect("openai encodes")
        .len(),
        "anthropic" => bytes(&anthropic::messages_body(
            req,
            "claude-3-5-haiku-latest",
            false,
        ))
        .len(),
        "gemini" => bytes(
            &gemini::encode_request(req, "gemini-2.0-flash", &gemini::SignatureStore::default())
                .expect("gemini encodes"),
        )
        .len(),
        "bedrock" => bytes(
            &bedrock::encode_request(req, &mut bedrock::ToolNames::default())
                .expect("bedrock encodes"),
        )
        .len(),
        "cohere" => {
            bytes(&cohere::encode_request(req, "command-r", false).expect("cohere encodes")).len()
        }
        other => panic!("unknown family {other}"),
    }
}

fn bench_convert(c: &mut Criterion) {
    let req = request();
    let text = answer();
    let mut group = c.benchmark_group("encode");
    for (family, _) in responses(&text) {
        let n = encode(family, &req);
        group.throughput(Throughput::Bytes(n as u64));
        group.bench_function(family, |b| {
            b.iter(|| black_box(encode(family, black_box(&req))))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("decode");
    for (family, body) in responses(&text) {
        assert_eq!(decode(family, &body), 1, "{family}: one choice");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(family, |b| {
            b.iter(|| black_box(decode(family, black_box(&body))))
        });
        if family == "openai" {
            // What an OpenAI client of an OpenAI upstream costs: the answer passes as it came.
            let body = bytes::Bytes::from(body.clone());
            let passed = openai::pass_chat_response(&body).expect("passes");
            assert!(passed.raw.is_some(), "a plain answer passes raw");
            group.bench_function("openai-passthrough", |b| {
                b.iter(|| black_box(openai::pass_chat_response(black_box(&body))))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_convert);
criterion_main!(benches);
