//! Stream parsing throughput: SSE framing ([`SseParser`]) alone and with the OpenAI and Anthropic
//! chunk decoders, and Bedrock's eventstream framing ([`FrameDecoder`]) alone and with the
//! Converse stream decoder. The streams carry a 500-byte answer in 50 deltas, as
//! `gateway-mock --reply-bytes 500 --stream-chunks 50` sends, fed in 1 KiB reads.
#![allow(missing_docs)]

use std::collections::VecDeque;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway_providers::eventstream::{encode_frame, FrameDecoder, HeaderValue};
use gateway_providers::sse::SseParser;
use gateway_providers::stream::StreamDecoder;
use gateway_providers::{anthropic, bedrock, openai};
use serde_json::json;

const READ: usize = 1024;
const DELTAS: usize = 50;

fn delta(i: usize) -> String {
    format!("lorem{i:02} ")
}

fn openai_stream() -> Vec<u8> {
    let mut s = String::new();
    let mut event = |v: serde_json::Value| {
        s.push_str("data: ");
        s.push_str(&v.to_string());
        s.push_str("\n\n");
    };
    let base = |delta: serde_json::Value, finish: serde_json::Value| {
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "gpt-4o-mini", "system_fingerprint": "fp_bench",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    event(base(
        json!({"role": "assistant", "content": ""}),
        json!(null),
    ));
    for i in 0..DELTAS {
        event(base(json!({"content": delta(i)}), json!(null)));
    }
    event(base(json!({}), json!("stop")));
    event(
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
                 "model": "gpt-4o-mini", "choices": [],
                 "usage": {"prompt_tokens": 250, "completion_tokens": 100, "total_tokens": 350}}),
    );
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

fn anthropic_stream() -> Vec<u8> {
    let mut s = String::new();
    let mut event = |name: &str, v: serde_json::Value| {
        s.push_str(&format!("event: {name}\ndata: {v}\n\n"));
    };
    event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_bench", "type": "message",
        "role": "assistant", "model": "claude-3-5-haiku-latest", "content": [], "stop_reason": null,
        "stop_sequence": null, "usage": {"input_tokens": 250, "output_tokens": 1}}}),
    );
    event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}}),
    );
    for i in 0..DELTAS {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": delta(i)}}),
        );
    }
    event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 100}}),
    );
    event("message_stop", json!({"type": "message_stop"}));
    s.into_bytes()
}

fn bedrock_stream() -> Vec<u8> {
    let frame = |kind: &str, payload: serde_json::Value| {
        encode_frame(
            &[
                (
                    ":event-type".to_owned(),
                    HeaderValue::String(kind.to_owned()),
                ),
                (
                    ":content-type".to_owned(),
                    HeaderValue::String("application/json".to_owned()),
                ),
                (
                    ":message-type".to_owned(),
                    HeaderValue::String("event".to_owned()),
                ),
            ],
            payload.to_string().as_bytes(),
        )
    };
    let mut out = frame("messageStart", json!({"role": "assistant", "p": "abcd"}));
    for i in 0..DELTAS {
        out.extend(frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": delta(i)}, "p": "abcdefgh"}),
        ));
    }
    out.extend(frame("contentBlockStop", json!({"contentBlockIndex": 0})));
    out.extend(frame("messageStop", json!({"stopReason": "end_turn"})));
    out.extend(frame(
        "metadata",
        json!({"usage": {"inputTokens": 250, "outputTokens": 100, "totalTokens": 350},
        "metrics": {"latencyMs": 300}}),
    ));
    out
}

/// SSE framing only: events out of 1 KiB reads.
fn sse_events(bytes: &[u8]) -> usize {
    let mut p = SseParser::new();
    let mut n = 0;
    for read in bytes.chunks(READ) {
        p.push(read);
        while let Some(ev) = p.next_event() {
            n += ev.data.len();
        }
    }
    n
}

/// SSE framing and a provider's chunk decoder: canonical chunks out.
fn sse_chunks<D: StreamDecoder<gateway_providers::sse::SseEvent>>(
    bytes: &[u8],
    decoder: D,
) -> usize {
    sse_chunks_with(SseParser::new(), bytes, decoder)
}

fn sse_chunks_with<D: StreamDecoder<gateway_providers::sse::SseEvent>>(
    mut p: SseParser,
    bytes: &[u8],
    mut decoder: D,
) -> usize {
    let mut out = VecDeque::new();
    let mut n = 0;
    'reads: for read in bytes.chunks(READ) {
        p.push(read);
        while let Some(ev) = p.next_event() {
            let done = decoder.event(ev, &mut out).expect("decodes");
            n += out.drain(..).count();
            if done {
                break 'reads;
            }
        }
    }
    n
}

fn frames(bytes: &[u8]) -> usize {
    let mut d = FrameDecoder::new();
    let mut n = 0;
    for read in bytes.chunks(READ) {
        d.push(read);
        while let Some(f) = d.next_frame().expect("valid frames") {
            n += f.payload.len();
        }
    }
    n
}

fn bedrock_chunks(bytes: &[u8]) -> usize {
    let mut d = FrameDecoder::new();
    let mut s = bedrock::BedrockStream::new(
        "req-1",
        "anthropic.claude-3-5-haiku",
        1_700_000_000,
        bedrock::ToolNames::default(),
    );
    let mut n = 0;
    for read in bytes.chunks(READ) {
        d.push(read);
        while let Some(f) = d.next_frame().expect("valid frames") {
            n += s.on_frame(&f).expect("decodes").len();
        }
    }
    n
}

fn bench_streams(c: &mut Criterion) {
    let oa = openai_stream();
    let an = anthropic_stream();
    let br = bedrock_stream();
    assert!(
        sse_chunks(&oa, openai::ChunkDecoder::new()) >= DELTAS,
        "openai stream decodes"
    );
    assert!(
        sse_chunks(&an, anthropic::MessageStreamDecoder::new()) >= DELTAS,
        "anthropic stream decodes"
    );
    assert!(bedrock_chunks(&br) >= DELTAS, "bedrock stream decodes");

    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Bytes(oa.len() as u64));
    group.bench_function("parse/openai", |b| {
        b.iter(|| black_box(sse_events(black_box(&oa))))
    });
    group.bench_function("decode/openai", |b| {
        b.iter(|| black_box(sse_chunks(black_box(&oa), openai::ChunkDecoder::new())))
    });
    // An OpenAI client of an OpenAI upstream: text chunks pass as they came.
    group.bench_function("decode/openai-passthrough", |b| {
        b.iter(|| black_box(sse_chunks(black_box(&oa), openai::ChunkDecoder::raw())))
    });
    // The same with runs, as the OpenAI adapter reads a stream for such a client: the events of
    // a read that pass as they came go on as one chunk.
    group.bench_function("decode/openai-passthrough-runs", |b| {
        b.iter(|| {
            black_box(sse_chunks_with(
                SseParser::with_runs(),
                black_box(&oa),
                openai::ChunkDecoder::raw(),
            ))
        })
    });
    group.throughput(Throughput::Bytes(an.len() as u64));
    group.bench_function("parse/anthropic", |b| {
        b.iter(|| black_box(sse_events(black_box(&an))))
    });
    group.bench_function("decode/anthropic", |b| {
        b.iter(|| {
            black_box(sse_chunks(
                black_box(&an),
                anthropic::MessageStreamDecoder::new(),
            ))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("eventstream");
    group.throughput(Throughput::Bytes(br.len() as u64));
    group.bench_function("frames/bedrock", |b| {
        b.iter(|| black_box(frames(black_box(&br))))
    });
    group.bench_function("decode/bedrock", |b| {
        b.iter(|| black_box(bedrock_chunks(black_box(&br))))
    });
    group.finish();
}

criterion_group!(benches, bench_streams);
criterion_main!(benches);
