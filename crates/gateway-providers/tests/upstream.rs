//! The adapters against the mock upstream (gateway-mock) and small hand-written servers, all on
//! 127.0.0.1: what they send, what they make of the answers, and how failures are classified.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gateway_core::types::{
    ChatRequest, ChatResponse, EmbeddingInput, EmbeddingRequest, StreamAccumulator,
};
use gateway_core::{Call, Credential, Provider, ProviderError, RateLimitScope, Secret};
use gateway_mock::{Dialect, Faults, MockServer, MockUpstream, DEFAULT_REPLY};
use gateway_providers::registry::{build_provider, ProviderSettings};
use gateway_providers::{HttpClient, HttpConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client() -> HttpClient {
    HttpClient::new(&HttpConfig::default()).expect("client builds")
}

fn call(key: &str, model: &str) -> Call {
    Call {
        credential: Arc::new(Credential::ApiKey(Secret::new(key))),
        key_name: "k".into(),
        model: model.into(),
        timeout: Duration::from_secs(10),
        request_id: "req-1".into(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        passthrough: gateway_core::Passthrough::Off,
    }
}

fn provider(settings: ProviderSettings) -> Arc<dyn Provider> {
    build_provider(&settings, &client()).expect("provider builds")
}

fn request(stream: bool) -> ChatRequest {
    serde_json::from_value(json!({
        "model": "public-name",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Say hello."}
        ],
        "stream": stream,
        "fallbacks": ["elsewhere"]
    }))
    .expect("request")
}

async fn stream_all(
    p: &dyn Provider,
    call: &Call,
    req: &ChatRequest,
) -> (ChatResponse, Vec<gateway_core::types::ChatChunk>) {
    let s = p.chat_stream(call, req).await.expect("stream opens");
    let chunks: Vec<_> = s.chunks.map(|c| c.expect("no error item")).collect().await;
    let mut acc = StreamAccumulator::default();
    for c in &chunks {
        acc.push(c);
    }
    (acc.into_response(), chunks)
}

/// Chat and stream give the same text and usage; the stream ends with a usage-only chunk.
async fn chat_and_stream_agree(p: &dyn Provider, call: &Call) -> ChatResponse {
    let resp = p
        .chat(call, &request(false))
        .await
        .expect("chat succeeds")
        .body;
    assert_eq!(resp.choices[0].message.content_text(), DEFAULT_REPLY);
    assert!(resp
        .usage
        .is_some_and(|u| u.prompt_tokens > 0 && u.completion_tokens > 0));
    let (streamed, chunks) = stream_all(p, call, &request(true)).await;
    assert_eq!(streamed.choices[0].message.content_text(), DEFAULT_REPLY);
    assert_eq!(
        streamed.choices[0].finish_reason,
        resp.choices[0].finish_reason
    );
    assert_eq!(
        streamed.usage, resp.usage,
        "streamed usage equals non-stream usage"
    );
    let last = chunks.last().expect("chunks");
    assert!(
        last.choices.is_empty() && last.usage.is_some(),
        "usage chunk last: {last:?}"
    );
    resp
}

async fn mock(builder: MockUpstream) -> MockServer {
    builder.start().await.expect("mock starts")
}

fn header<'a>(r: &'a gateway_mock::RecordedRequest, name: &str) -> Option<&'a str> {
    r.header(name)
}

#[tokio::test]
async fn openai_chat_stream_embeddings_models() {
    let server = mock(MockUpstream::new().key("sk-1")).await;
    let p = provider(ProviderSettings::new("oa", "openai").with_base_url(server.openai_base()));
    let c = call("sk-1", "gpt-4o-mini");
    chat_and_stream_agree(p.as_ref(), &c).await;

    let last = server.last_request_for(Dialect::OpenAi).expect("recorded");
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(header(&last, "authorization"), Some("Bearer sk-1"));
    assert_eq!(header(&last, "traceparent"), c.traceparent.as_deref());
    assert_eq!(
        last.body["model"], "gpt-4o-mini",
        "upstream model id, not the public name"
    );
    assert_eq!(last.body["stream_options"], json!({"include_usage": true}));
    assert!(last.body.get("fallbacks").is_none());

    let emb = p
        .embed(
            &call("sk-1", "text-embedding-3-small"),
            &EmbeddingRequest {
                model: "public".into(),
                input: EmbeddingInput::Many(vec!["a".into(), "bb".into()]),
                encoding_format: Some("base64".into()),
                dimensions: Some(8),
                user: None,
                fallbacks: Vec::new(),
                input_type: None,
            },
        )
        .await
        .expect("embeddings")
        .body;
    assert_eq!(emb.data.len(), 2);
    assert!(!emb.data[0].embedding.is_empty());
    let last = server.last_request_for(Dialect::OpenAi).expect("recorded");
    assert_eq!(last.path, "/v1/embeddings");
    assert_eq!(
        last.body["encoding_format"], "float",
        "floats are always asked for"
    );

    let models = p.list_models(&c).await.expect("models");
    assert!(!models.is_empty(), "the mock lists models");
    server.shutdown().await;
}

#[tokio::test]
async fn compat_preset_keeps_base_path_prefix() {
    let server = mock(MockUpstream::new()).await;
    let mut s =
        ProviderSettings::new("groq", "groq").with_base_url(format!("{}/openai/v1", server.url()));
    s.headers.push(("X-Title".into(), "gateway".into()));
    let p = provider(s);
    assert_eq!(p.kind(), "groq");
    chat_and_stream_agree(p.as_ref(), &call("gsk-any", "llama-3.3-70b")).await;
    let last = server.last_request_for(Dialect::OpenAi).expect("recorded");
    assert_eq!(last.path, "/openai/v1/chat/completions");
    assert_eq!(
        header(&last, "x-title"),
        Some("gateway"),
        "configured headers are sent"
    );
    let models = p.list_models(&call("gsk-any", "m")).await.expect("models");
    assert!(!models.is_empty());
    assert_eq!(
        server.last_request_for(Dialect::OpenAi).map(|r| r.path),
        Some("/openai/v1/models".to_owned())
    );

    // A keyless local server (vLLM) sends no Authorization header.
    let p = provider(ProviderSettings::new("local", "vllm").with_base_url(server.openai_base()));
    let mut c = call("", "llama");
    c.credential = Arc::new(Credential::None);
    p.chat(&c, &request(false)).await.expect("keyless chat");
    let last = server.last_request_for(Dialect::OpenAi).expect("recorded");
    assert_eq!(header(&last, "authorization"), None);
    server.shutdown().await;
}

#[tokio::test]
async fn azure_url_key_and_version() {
    let server = mock(MockUpstream::new().key("az-key")).await;
    let mut s = ProviderSettings::new("az", "azure").with_base_url(server.url());
    s.deployments = HashMap::from([("gpt-4o".to_owned(), "prod-4o".to_owned())]);
    let p = provider(s);
    let c = call("az-key", "gpt-4o");
    chat_and_stream_agree(p.as_ref(), &c).await;
    let last = server.last_request_for(Dialect::Azure).expect("recorded");
    assert_eq!(last.path, "/openai/deployments/prod-4o/chat/completions");
    assert_eq!(last.query, "api-version=2024-10-21");
    assert_eq!(header(&last, "api-key"), Some("az-key"));
    assert_eq!(header(&last, "authorization"), None);

    let mut s = ProviderSettings::new("az", "azure").with_base_url(server.url());
    s.api_version = Some("2025-01-01-preview".into());
    let p = provider(s);
    let emb = p
        .embed(
            &call("az-key", "text-embedding-3-small"),
            &EmbeddingRequest {
                model: "e".into(),
                input: EmbeddingInput::One("hello".into()),
                encoding_format: None,
                dimensions: None,
                user: None,
                fallbacks: Vec::new(),
                input_type: None,
            },
        )
        .await
        .expect("embeddings");
    assert_eq!(emb.body.data.len(), 1);
    let last = server.last_request_for(Dialect::Azure).expect("recorded");
    assert_eq!(
        (last.path.as_str(), last.query.as_str()),
        (
            "/openai/deployments/text-embedding-3-small/embeddings",
            "api-version=2025-01-01-preview"
        ),
        "an unmapped model is its own deployment"
    );

    let err = p
        .chat(&call("wrong", "gpt-4o"), &request(false))
        .await
        .expect_err("bad key");
    assert!(
        matches!(err, ProviderError::Auth { status: 401, .. }),
        "{err:?}"
    );
    server.shutdown().await;
}

/// A Responses request as the server makes it: the client's body in `native`.
fn responses_request(stream: bool) -> ChatRequest {
    let body = json!({"model": "public-name", "input": "Say hello.", "store": false,
                      "fallbacks": ["elsewhere"]});
    ChatRequest {
        model: "public-name".into(),
        stream,
        native: Some(gateway_core::types::NativeRequest {
            body: serde_json::to_vec(&body).expect("json").into(),
            headers: Vec::new(),
            api: gateway_core::types::NativeApi::OpenAiResponses,
        }),
        ..ChatRequest::default()
    }
}

/// The Responses API: OpenAI at `{base}/responses`, Azure at the v1 API's `/openai/v1/responses`
/// with the deployment as the model, whichever base URL is configured; the answer and the
/// events come back as the mock wrote them, with their usage read. Other kinds refuse it before
/// sending anything.
#[tokio::test]
async fn responses_go_to_openai_and_azure_as_written() {
    let server = mock(MockUpstream::new().key("sk-oai").key("az-key")).await;
    let oai = provider(ProviderSettings::new("oai", "openai").with_base_url(server.openai_base()));
    let mut s = ProviderSettings::new("az", "azure").with_base_url(server.url());
    s.deployments = HashMap::from([("gpt-4o".to_owned(), "prod-4o".to_owned())]);
    let az = provider(s);
    let mut s =
        ProviderSettings::new("az1", "azure").with_base_url(format!("{}/openai/v1", server.url()));
    s.api_version = Some("preview".into());
    let az_v1 = provider(s);
    for (p, c, path, query, model) in [
        (
            &oai,
            call("sk-oai", "gpt-4o-mini"),
            "/v1/responses",
            "",
            "gpt-4o-mini",
        ),
        (
            &az,
            call("az-key", "gpt-4o"),
            "/openai/v1/responses",
            "",
            "prod-4o",
        ),
        (
            &az_v1,
            call("az-key", "gpt-4o"),
            "/openai/v1/responses",
            "api-version=preview",
            "gpt-4o",
        ),
    ] {
        assert!(p.supports(&c.model, &responses_request(false)).is_ok());
        let answer = p
            .chat(&c, &responses_request(false))
            .await
            .expect("answer")
            .body;
        let raw: serde_json::Value =
            serde_json::from_slice(answer.raw.as_deref().expect("raw")).expect("json");
        assert_eq!(raw["object"], "response");
        assert_eq!(raw["output"][0]["content"][0]["text"], DEFAULT_REPLY);
        let usage = answer.usage.expect("usage");
        assert_eq!(
            usage.prompt_tokens,
            raw["usage"]["input_tokens"].as_u64().expect("input")
        );
        let last = server.last_request().expect("recorded");
        assert_eq!((last.path.as_str(), last.query.as_str()), (path, query));
        assert_eq!(last.body["model"], model);
        assert_eq!(last.body["store"], false);
        assert!(last.body.get("fallbacks").is_none());
        assert!(last.body.get("stream").is_none());

        let s = p
            .chat_stream(&c, &responses_request(true))
            .await
            .expect("stream");
        let chunks: Vec<_> = s.chunks.map(|c| c.expect("no error item")).collect().await;
        let text: Vec<u8> = chunks
            .iter()
            .flat_map(|c| c.raw.as_deref().expect("raw event").to_vec())
            .collect();
        let text = String::from_utf8(text).expect("utf-8");
        assert!(
            text.starts_with("event: response.created\ndata: "),
            "{text}"
        );
        assert!(text.contains("event: response.completed\n"), "{text}");
        assert!(chunks.last().expect("chunks").usage.is_some());
        assert_eq!(
            server.last_request().expect("recorded").body["stream"],
            true
        );
    }
    let before = server.requests();
    let ant = provider(ProviderSettings::new("ant", "anthropic").with_base_url(server.url()));
    let err = ant
        .supports("claude-sonnet-4-5", &responses_request(false))
        .expect_err("anthropic does not speak it");
    assert!(matches!(err, ProviderError::Unsupported { .. }), "{err:?}");
    assert_eq!(server.requests(), before);
    server.shutdown().await;
}

#[tokio::test]
async fn anthropic_headers_max_tokens_and_system() {
    let server = mock(MockUpstream::new().key("sk-ant")).await;
    let p = provider(ProviderSettings::new("claude", "anthropic").with_base_url(server.url()));
    let c = call("sk-ant", "claude-sonnet-4-5");
    chat_and_stream_agree(p.as_ref(), &c).await;
    let last = server
        .last_request_for(Dialect::Anthropic)
        .expect("recorded");
    assert_eq!(last.path, "/v1/messages");
    assert_eq!(header(&last, "x-api-key"), Some("sk-ant"));
    assert_eq!(header(&last, "anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        last.body["max_tokens"],
        json!(8192),
        "max_tokens always filled"
    );
    assert_eq!(last.body["system"], "Be terse.", "system is top-level");
    assert_eq!(
        last.body["messages"],
        json!([{"role": "user", "content": "Say hello."}])
    );
    assert_eq!(last.body["stream"], json!(true));

    let models = p.list_models(&c).await.expect("models");
    assert!(!models.is_empty());

    let mut s = ProviderSettings::new("claude", "anthropic").with_base_url(server.url());
    s.headers
        .push(("anthropic-beta".into(), "prompt-caching-2024-07-31".into()));
    provider(s).chat(&c, &request(false)).await.expect("chat");
    let last = server
        .last_request_for(Dialect::Anthropic)
        .expect("recorded");
    assert_eq!(
        header(&last, "anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limits_are_key_scoped_with_headroom() {
    let server = mock(MockUpstream::new().key_limits("sk-2", Some(1), None)).await;
    let p = provider(ProviderSettings::new("oa", "openai").with_base_url(server.openai_base()));
    let c = call("sk-2", "gpt-4o-mini");
    let ok = p
        .chat(&c, &request(false))
        .await
        .expect("first request fits");
    assert_eq!(ok.rate_limit.limit_requests, Some(1), "{:?}", ok.rate_limit);
    assert_eq!(ok.rate_limit.remaining_requests, Some(0));
    match p.chat(&c, &request(false)).await {
        Err(ProviderError::RateLimited {
            retry_after,
            remaining,
            scope,
            ..
        }) => {
            assert_eq!(scope, RateLimitScope::Key);
            assert!(
                retry_after.is_some_and(|d| d > Duration::ZERO),
                "{retry_after:?}"
            );
            let info = remaining.expect("rate-limit headers on the 429");
            assert_eq!(info.remaining_requests, Some(0));
            assert!(info.reset_requests.is_some(), "{info:?}");
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }

    // Anthropic's 429, and a stream refused before it starts.
    let ap = provider(ProviderSettings::new("a", "anthropic").with_base_url(server.url()));
    match ap
        .chat_stream(&call("sk-2", "claude"), &request(true))
        .await
    {
        Err(ProviderError::RateLimited {
            scope, retry_after, ..
        }) => {
            assert_eq!(scope, RateLimitScope::Key);
            assert!(retry_after.is_some());
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn quota_overload_and_server_errors() {
    let server = mock(MockUpstream::new()).await;
    let oa = provider(ProviderSettings::new("oa", "openai").with_base_url(server.openai_base()));
    let an = provider(ProviderSettings::new("a", "anthropic").with_base_url(server.url()));
    let az = provider(ProviderSettings::new("az", "azure").with_base_url(server.url()));
    let c = call("sk-x", "m");

    server.set_faults(Faults {
        quota_exhausted: true,
        ..Faults::default()
    });
    for p in [&oa, &an, &az] {
        let err = p.chat(&c, &request(false)).await.expect_err("quota");
        assert!(
            matches!(
                err,
                ProviderError::RateLimited {
                    scope: RateLimitScope::Quota,
                    ..
                }
            ),
            "{}: {err:?}",
            p.kind()
        );
    }

    server.set_faults(Faults {
        error_rate: 1.0,
        error_status: Some(529),
        ..Faults::default()
    });
    let err = an.chat(&c, &request(false)).await.expect_err("529");
    assert!(matches!(err, ProviderError::Overloaded { .. }), "{err:?}");

    server.set_faults(Faults {
        error_rate: 1.0,
        error_status: Some(500),
        ..Faults::default()
    });
    let err = oa.chat(&c, &request(false)).await.expect_err("500");
    assert!(
        matches!(err, ProviderError::Server { status: 500, .. }),
        "{err:?}"
    );

    server.set_faults(Faults {
        malformed: true,
        ..Faults::default()
    });
    let err = oa.chat(&c, &request(false)).await.expect_err("malformed");
    assert!(matches!(err, ProviderError::Protocol(_)), "{err:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn connection_refused_is_connect() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let p =
        provider(ProviderSettings::new("oa", "openai").with_base_url(format!("http://{addr}/v1")));
    let err = p
        .chat(&call("k", "m"), &request(false))
        .await
        .expect_err("refused");
    assert!(matches!(err, ProviderError::Connect(_)), "{err:?}");
    let err = p
        .chat_stream(&call("k", "m"), &request(true))
        .await
        .expect_err("refused");
    assert!(matches!(err, ProviderError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn https_to_a_plain_server_fails_the_handshake() {
    let server = mock(MockUpstream::new()).await;
    let base = server.openai_base().replace("http://", "https://");
    let p = provider(ProviderSettings::new("oa", "openai").with_base_url(base));
    let err = p
        .chat(&call("k", "m"), &request(false))
        .await
        .expect_err("no TLS there");
    assert!(matches!(err, ProviderError::Connect(_)), "{err:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn hanging_server_times_out_under_call_timeout() {
    let server = mock(MockUpstream::new().faults(Faults {
        hang: true,
        ..Faults::default()
    }))
    .await;
    let p = provider(ProviderSettings::new("a", "anthropic").with_base_url(server.url()));
    let mut c = call("k", "claude");
    c.timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let err = p.chat(&c, &request(false)).await.expect_err("hang");
    assert!(matches!(err, ProviderError::Timeout), "{err:?}");
    let err = p.chat_stream(&c, &request(true)).await.expect_err("hang");
    assert!(matches!(err, ProviderError::Timeout), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "both gave up near the timeout"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn mid_stream_failures_end_with_an_error_item() {
    let server = mock(MockUpstream::new().reply("one two three four five six")).await;
    let oa = provider(ProviderSettings::new("oa", "openai").with_base_url(server.openai_base()));
    let an = provider(ProviderSettings::new("a", "anthropic").with_base_url(server.url()));
    let c = call("k", "m");
    for (faults, what) in [
        (
            Faults {
                disconnect_after_chunks: Some(3),
                ..Faults::default()
            },
            "disconnect",
        ),
        (
            Faults {
                mid_stream_error_after: Some(3),
                error_status: Some(529),
                ..Faults::default()
            },
            "in-band error",
        ),
    ] {
        server.set_faults(faults);
        for p in [&oa, &an] {
            let s = p
                .chat_stream(&c, &request(true))
                .await
                .expect("stream opens");
            let items: Vec<_> = s.chunks.collect().await;
            let oks = items.iter().filter(|i| i.is_ok()).count();
            assert!(
                oks >= 1,
                "{} {what}: some chunks first: {items:?}",
                p.kind()
            );
            let last = items.last().expect("items");
            assert!(
                last.is_err(),
                "{} {what}: ends with an error: {items:?}",
                p.kind()
            );
            if what == "in-band error" {
                assert!(
                    matches!(
                        last,
                        Err(ProviderError::Overloaded { .. } | ProviderError::Server { .. })
                    ),
                    "{} {what}: {last:?}",
                    p.kind()
                );
            } else {
                assert!(
                    matches!(last, Err(ProviderError::Connect(_))),
                    "{} {what}: {last:?}",
                    p.kind()
                );
            }
        }
    }
    server.shutdown().await;
}

/// A forwarding proxy stand-in: answers every request itself and records the request line and
/// the `proxy-authorization` header.
async fn fake_proxy(reply: String) -> (String, tokio::sync::mpsc::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let _ = tx.send(head).await;
                let _ = sock.write_all(reply.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://user:secret@{addr}"), rx)
}

/// A complete HTTP/1.1 answer with a small chat completion.
fn json_reply() -> String {
    let body = r#"{"id":"p","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"via"}}]}"#;
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn outbound_proxy_absolute_form_and_connect() {
    let (proxy, mut seen) = fake_proxy(json_reply()).await;
    let client = HttpClient::new(&HttpConfig {
        proxy: Some(proxy.clone()),
        ..HttpConfig::default()
    })
    .expect("client");
    let p = build_provider(
        &ProviderSettings::new("oa", "openai").with_base_url("http://upstream.example/v1"),
        &client,
    )
    .expect("builds");
    let resp = p
        .chat(&call("k", "m"), &request(false))
        .await
        .expect("answered by the proxy");
    assert_eq!(resp.body.choices[0].message.content_text(), "via");
    let head = seen.recv().await.expect("proxy saw a request");
    assert!(
        head.starts_with("POST http://upstream.example/v1/chat/completions HTTP/1.1"),
        "absolute form: {head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authorization: basic dxnlcjpzzwnyzxq="),
        "credentials from the proxy URL: {head}"
    );

    // https goes through CONNECT; a refusing proxy is a connection failure.
    let (proxy, mut seen) = fake_proxy(
        "HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n".to_owned(),
    )
    .await;
    let client = HttpClient::new(&HttpConfig {
        proxy: Some(proxy),
        ..HttpConfig::default()
    })
    .expect("client");
    let p = build_provider(
        &ProviderSettings::new("oa", "openai").with_base_url("https://upstream.example/v1"),
        &client,
    )
    .expect("builds");
    let err = p
        .chat(&call("k", "m"), &request(false))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, ProviderError::Connect(m) if m.contains("proxy authentication required")),
        "{err:?}"
    );
    let head = seen.recv().await.expect("proxy saw CONNECT");
    assert!(
        head.starts_with("CONNECT upstream.example:443 HTTP/1.1"),
        "{head}"
    );
    assert!(
        head.contains("Proxy-Authorization: Basic dXNlcjpzZWNyZXQ="),
        "{head}"
    );
}

#[tokio::test]
async fn json_answer_to_a_stream_request_is_replayed() {
    // Some servers ignore `stream: true`; the proxy stand-in answers with plain JSON.
    let (url, _seen) = fake_proxy(json_reply()).await;
    let base = url.replace("user:secret@", "") + "/v1";
    let p = provider(ProviderSettings::new("x", "openai_compatible").with_base_url(base));
    let (resp, _) = stream_all(p.as_ref(), &call("k", "m"), &request(true)).await;
    assert_eq!(resp.choices[0].message.content_text(), "via");
}

/// One deadline bounds the whole of `fetch`: an upstream that sends its head and then stalls in
/// the body is given up on near the timeout, not waited on.
#[tokio::test]
async fn fetch_times_out_when_the_body_stalls_after_the_head() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 4096];
        let _ = sock.read(&mut buf).await;
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":")
            .await
            .expect("head");
        // Hold the connection open without finishing the body.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .expect("request");
    let started = std::time::Instant::now();
    let err = client()
        .fetch(req, Duration::from_millis(300), |s, _, _| {
            ProviderError::Protocol(format!("status {s}"))
        })
        .await
        .expect_err("the body never completes");
    assert!(matches!(err, ProviderError::Timeout), "{err:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "gave up after {took:?}"
    );
    server.abort();
}
