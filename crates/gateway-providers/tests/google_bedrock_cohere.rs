//! The Gemini, Vertex, Bedrock and Cohere adapters against `gateway-mock` on 127.0.0.1: the same
//! checks stamped out per provider (answer, stream assembled into the same message and usage,
//! tool calls, error classes), plus SigV4 verification and Vertex token caching.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gateway_core::types::{
    ChatRequest, ChatResponse, EmbeddingInput, EmbeddingRequest, FinishReason, StreamAccumulator,
};
use gateway_core::{Call, Credential, Provider, ProviderError, RateLimitScope, Secret};
use gateway_mock::{Faults, MockServer, MockUpstream, DEFAULT_REPLY};
use gateway_providers::bedrock::{BedrockConfig, BedrockProvider};
use gateway_providers::cohere::{CohereConfig, CohereProvider};
use gateway_providers::gemini::{GeminiConfig, GeminiProvider};
use gateway_providers::vertex::{VertexConfig, VertexProvider};
use gateway_providers::{HttpClient, HttpConfig};
use serde_json::json;

const AKID: &str = "AKIDMOCK000000000001";
const AWS_SECRET: &str = "mock/secret/key+0123456789abcdefghijklmn";
const BEDROCK_MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

fn client() -> HttpClient {
    HttpClient::new(&HttpConfig::default()).expect("client builds")
}

fn call(credential: Credential, model: &str) -> Call {
    Call {
        credential: Arc::new(credential),
        key_name: "k".into(),
        model: model.into(),
        timeout: Duration::from_secs(10),
        request_id: "req-1".into(),
        traceparent: None,
        passthrough: gateway_core::Passthrough::Off,
    }
}

fn api_key(k: &str) -> Credential {
    Credential::ApiKey(Secret::new(k))
}

fn aws(secret: &str) -> Credential {
    Credential::Aws {
        access_key_id: AKID.into(),
        secret_access_key: Secret::new(secret),
        session_token: None,
    }
}

fn hello() -> ChatRequest {
    serde_json::from_value(json!({
        "model": "public",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Say hello."}
        ],
        "max_tokens": 64
    }))
    .expect("valid request")
}

fn with_tool() -> ChatRequest {
    serde_json::from_value(json!({
        "model": "public",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
    }))
    .expect("valid request")
}

async fn stream_to_response(
    p: &dyn Provider,
    call: &Call,
    req: &ChatRequest,
) -> Result<(ChatResponse, usize), ProviderError> {
    let mut s = p.chat_stream(call, req).await?;
    let mut acc = StreamAccumulator::default();
    while let Some(item) = s.chunks.next().await {
        acc.push(&item?);
    }
    let n = acc.chunks;
    Ok((acc.into_response(), n))
}

/// One provider under test: how to build it against a server, and the credentials to use.
struct Case {
    name: &'static str,
    model: &'static str,
    build: fn(&MockServer) -> Arc<dyn Provider>,
    good: fn(&MockServer) -> Credential,
    /// Error class of a 429 rate limit for this provider.
    rate_scope: RateLimitScope,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "gemini",
            model: "gemini-2.5-flash",
            build: |s| {
                Arc::new(GeminiProvider::new(
                    &GeminiConfig {
                        base_url: Some(s.url()),
                    },
                    client(),
                ))
            },
            good: |_| api_key("g-key"),
            rate_scope: RateLimitScope::Key,
        },
        Case {
            name: "vertex",
            model: "gemini-2.5-flash",
            build: |s| {
                Arc::new(VertexProvider::new(
                    &VertexConfig {
                        project: None,
                        location: "us-central1".into(),
                        base_url: Some(s.url()),
                    },
                    client(),
                ))
            },
            good: |s| {
                Credential::ServiceAccount(Secret::new(gateway_mock::test_service_account(
                    &s.token_uri(),
                )))
            },
            rate_scope: RateLimitScope::Provider,
        },
        Case {
            name: "bedrock",
            model: BEDROCK_MODEL,
            build: |s| {
                Arc::new(BedrockProvider::new(
                    &BedrockConfig {
                        region: "us-east-1".into(),
                        base_url: Some(s.url()),
                        claude_invoke: false,
                    },
                    client(),
                ))
            },
            good: |_| aws(AWS_SECRET),
            rate_scope: RateLimitScope::Provider,
        },
        Case {
            name: "cohere",
            model: "command-a-03-2025",
            build: |s| {
                Arc::new(CohereProvider::new(
                    &CohereConfig {
                        base_url: Some(s.url()),
                    },
                    client(),
                ))
            },
            good: |_| api_key("c-key"),
            rate_scope: RateLimitScope::Key,
        },
    ]
}

async fn server() -> MockServer {
    MockUpstream::new()
        .key("g-key")
        .key("c-key")
        .aws_key(AKID, AWS_SECRET)
        .start()
        .await
        .expect("mock starts")
}

#[tokio::test]
async fn chat_and_stream_agree() {
    let server = server().await;
    for case in cases() {
        let p = (case.build)(&server);
        let c = call((case.good)(&server), case.model);
        let direct = p
            .chat(&c, &hello())
            .await
            .unwrap_or_else(|e| panic!("{}: chat failed: {e}", case.name))
            .body;
        let msg = &direct.choices[0].message;
        assert_eq!(
            msg.content_text(),
            DEFAULT_REPLY,
            "{}: reply text",
            case.name
        );
        assert_eq!(
            direct.choices[0].finish_reason,
            Some(FinishReason::Stop),
            "{}",
            case.name
        );
        let usage = direct
            .usage
            .unwrap_or_else(|| panic!("{}: usage", case.name));
        assert!(
            usage.prompt_tokens > 0 && usage.completion_tokens > 0,
            "{}: {usage:?}",
            case.name
        );

        let (streamed, chunks) = stream_to_response(p.as_ref(), &c, &hello())
            .await
            .unwrap_or_else(|e| panic!("{}: stream failed: {e}", case.name));
        assert!(chunks > 2, "{}: several chunks", case.name);
        assert_eq!(
            streamed.choices[0].message.content_text(),
            DEFAULT_REPLY,
            "{}: streamed text",
            case.name
        );
        assert_eq!(
            streamed.choices[0].finish_reason,
            Some(FinishReason::Stop),
            "{}",
            case.name
        );
        assert_eq!(
            streamed.usage, direct.usage,
            "{}: same usage streamed and not",
            case.name
        );
    }
}

#[tokio::test]
async fn tool_calls_round_trip() {
    let server = server().await;
    for case in cases() {
        let p = (case.build)(&server);
        let c = call((case.good)(&server), case.model);
        let resp = p
            .chat(&c, &with_tool())
            .await
            .unwrap_or_else(|e| panic!("{}: chat failed: {e}", case.name))
            .body;
        let choice = &resp.choices[0];
        assert_eq!(
            choice.finish_reason,
            Some(FinishReason::ToolCalls),
            "{}",
            case.name
        );
        let calls = choice
            .message
            .tool_calls
            .clone()
            .unwrap_or_else(|| panic!("{}: tool calls", case.name));
        assert_eq!(calls[0].function.name, "get_weather", "{}", case.name);
        let args: serde_json::Value =
            serde_json::from_str(&calls[0].function.arguments).expect("json args");
        assert_eq!(args["query"], "Weather in Paris?", "{}", case.name);
        assert!(!calls[0].id.is_empty(), "{}: a call id", case.name);

        let (streamed, _) = stream_to_response(p.as_ref(), &c, &with_tool())
            .await
            .unwrap_or_else(|e| panic!("{}: stream failed: {e}", case.name));
        let scalls = streamed.choices[0]
            .message
            .tool_calls
            .clone()
            .unwrap_or_default();
        assert_eq!(scalls.len(), 1, "{}: one streamed call", case.name);
        assert_eq!(
            scalls[0].function.arguments, calls[0].function.arguments,
            "{}",
            case.name
        );
        assert_eq!(
            streamed.choices[0].finish_reason,
            Some(FinishReason::ToolCalls),
            "{}",
            case.name
        );

        // Send the result back: the mock answers with the tool's output.
        let mut next = with_tool();
        next.messages.push(
            serde_json::from_value(json!({
                "role": "assistant", "content": null, "tool_calls": [calls[0]]
            }))
            .expect("message"),
        );
        next.messages.push(
            serde_json::from_value(json!({
                "role": "tool", "tool_call_id": calls[0].id, "content": "18C sunny"
            }))
            .expect("message"),
        );
        let resp = p
            .chat(&c, &next)
            .await
            .unwrap_or_else(|e| panic!("{}: tool result turn failed: {e}", case.name))
            .body;
        assert!(
            resp.choices[0].message.content_text().contains("18C sunny"),
            "{}: {:?}",
            case.name,
            resp.choices[0].message
        );
    }
}

#[tokio::test]
async fn errors_are_classified() {
    for case in cases() {
        let server = server().await;
        let p = (case.build)(&server);
        let c = call((case.good)(&server), case.model);

        server.set_faults(Faults {
            rate_limit_always: true,
            retry_after_ms: Some(3000),
            ..Faults::default()
        });
        match p.chat(&c, &hello()).await {
            Err(ProviderError::RateLimited { scope, .. }) => {
                assert_eq!(scope, case.rate_scope, "{}: rate-limit scope", case.name)
            }
            other => panic!("{}: expected a rate limit, got {other:?}", case.name),
        }
        server.set_faults(Faults {
            error_rate: 1.0,
            error_status: Some(503),
            ..Faults::default()
        });
        let err = p.chat(&c, &hello()).await.expect_err("503");
        assert!(
            matches!(
                err,
                ProviderError::Overloaded { .. } | ProviderError::Server { .. }
            ),
            "{}: 503 is provider capacity: {err:?}",
            case.name
        );
        server.set_faults(Faults {
            error_rate: 1.0,
            error_status: Some(500),
            ..Faults::default()
        });
        let err = p.chat(&c, &hello()).await.expect_err("500");
        assert!(
            matches!(err, ProviderError::Server { .. }),
            "{}: {err:?}",
            case.name
        );
        server.set_faults(Faults {
            mid_stream_error_after: Some(2),
            error_status: Some(500),
            ..Faults::default()
        });
        let err = stream_to_response(p.as_ref(), &c, &hello())
            .await
            .expect_err("mid-stream error");
        assert!(
            matches!(
                err,
                ProviderError::Server { .. } | ProviderError::Overloaded { .. }
            ),
            "{}: in-band error: {err:?}",
            case.name
        );
        server.set_faults(Faults {
            disconnect_after_chunks: Some(2),
            ..Faults::default()
        });
        let err = stream_to_response(p.as_ref(), &c, &hello())
            .await
            .expect_err("cut off");
        assert!(
            matches!(err, ProviderError::Connect(_) | ProviderError::Protocol(_)),
            "{}: a cut-off stream is an error: {err:?}",
            case.name
        );
        server.set_faults(Faults {
            malformed: true,
            ..Faults::default()
        });
        let err = p.chat(&c, &hello()).await.expect_err("malformed");
        assert!(
            matches!(err, ProviderError::Protocol(_)),
            "{}: {err:?}",
            case.name
        );
        server.set_faults(Faults::default());
        assert!(
            p.chat(&c, &hello()).await.is_ok(),
            "{}: recovers",
            case.name
        );
    }
}

#[tokio::test]
async fn refused_credentials_are_auth_errors() {
    let server = server().await;
    let cases: Vec<(&str, Arc<dyn Provider>, Credential, &str)> = vec![
        (
            "gemini",
            (cases()[0].build)(&server),
            api_key("wrong"),
            "gemini-2.5-flash",
        ),
        (
            "bedrock",
            (cases()[2].build)(&server),
            aws("wrong-secret"),
            BEDROCK_MODEL,
        ),
        (
            "cohere",
            (cases()[3].build)(&server),
            api_key("wrong"),
            "command-a-03-2025",
        ),
    ];
    for (name, p, cred, model) in cases {
        let err = p
            .chat(&call(cred, model), &hello())
            .await
            .expect_err("refused");
        assert!(matches!(err, ProviderError::Auth { .. }), "{name}: {err:?}");
    }
}

#[tokio::test]
async fn gemini_quota_and_request_shape() {
    let server = server().await;
    let p = (cases()[0].build)(&server);
    let c = call(api_key("g-key"), "gemini-2.5-flash");
    p.chat(&c, &hello()).await.expect("chat");
    let rec = server.last_request().expect("recorded");
    assert_eq!(rec.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(rec.header("x-goog-api-key"), Some("g-key"));
    assert_eq!(
        rec.body["systemInstruction"]["parts"][0]["text"],
        "Be terse."
    );

    server.set_faults(Faults {
        quota_exhausted: true,
        ..Faults::default()
    });
    match p.chat(&c, &hello()).await {
        Err(ProviderError::RateLimited {
            scope: RateLimitScope::Quota,
            ..
        }) => {}
        other => panic!("a PerDay quota exhausts the key: {other:?}"),
    }
    server.set_faults(Faults::default());

    let emb = p
        .embed(
            &call(api_key("g-key"), "text-embedding-004"),
            &EmbeddingRequest {
                model: "e".into(),
                input: EmbeddingInput::Many(vec!["a".into(), "b".into()]),
                encoding_format: None,
                dimensions: None,
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
    let models = p.list_models(&c).await.expect("models");
    assert!(
        !models.is_empty() && !models[0].id.starts_with("models/"),
        "{models:?}"
    );
}

#[tokio::test]
async fn vertex_token_is_fetched_once_and_refreshed() {
    let server = MockUpstream::new().start().await.expect("mock starts");
    let p = (cases()[1].build)(&server);
    let c = call((cases()[1].good)(&server), "gemini-2.5-flash");
    for _ in 0..3 {
        p.chat(&c, &hello()).await.expect("chat");
    }
    stream_to_response(p.as_ref(), &c, &hello())
        .await
        .expect("stream");
    assert_eq!(server.token_fetches(), 1, "one token serves every call");
    let rec = server.last_request().expect("recorded");
    assert_eq!(
        rec.path,
        "/v1/projects/mock-project/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert!(rec
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer ya29.")));

    // Concurrent calls share one token too.
    let req = hello();
    let futs: Vec<_> = (0..8).map(|_| p.chat(&c, &req)).collect();
    for r in futures_util::future::join_all(futs).await {
        r.expect("concurrent chat");
    }
    assert_eq!(server.token_fetches(), 1, "still one token");

    // The server forgets its tokens: a 401 triggers one refresh and a retry.
    server.expire_tokens();
    p.chat(&c, &hello())
        .await
        .expect("chat after a 401 refresh");
    assert_eq!(server.token_fetches(), 2, "refreshed once after the 401");
}

#[tokio::test]
async fn vertex_token_is_refreshed_before_expiry() {
    // A 2 s token is replaced 1 s before it expires (the margin is at most half the lifetime).
    let server = MockUpstream::new()
        .token_lifetime(Duration::from_secs(2))
        .start()
        .await
        .expect("mock starts");
    let p = (cases()[1].build)(&server);
    let c = call((cases()[1].good)(&server), "gemini-2.5-flash");
    p.chat(&c, &hello()).await.expect("chat");
    p.chat(&c, &hello()).await.expect("chat");
    assert_eq!(server.token_fetches(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    p.chat(&c, &hello()).await.expect("chat after expiry");
    assert_eq!(
        server.token_fetches(),
        2,
        "a token near its expiry is replaced"
    );
}

#[tokio::test]
async fn bedrock_sigv4_is_accepted_and_paths_are_encoded() {
    let server = server().await;
    let p = (cases()[2].build)(&server);
    let c = call(aws(AWS_SECRET), BEDROCK_MODEL);
    p.chat(&c, &hello())
        .await
        .expect("signed converse accepted");
    let rec = server.last_request().expect("recorded");
    assert_eq!(
        rec.path, "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
        "the model id is one percent-encoded segment"
    );
    let auth = rec.header("authorization").unwrap_or_default();
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={AKID}/"))
            && auth.contains("/us-east-1/bedrock/aws4_request"),
        "{auth}"
    );
    stream_to_response(p.as_ref(), &c, &hello())
        .await
        .expect("signed converse-stream accepted");

    // An ARN with `/` and `:` in the model id.
    let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0";
    p.chat(&call(aws(AWS_SECRET), arn), &hello())
        .await
        .expect("ARN model id signed");

    // Temporary credentials carry a session token.
    let temp = Credential::Aws {
        access_key_id: AKID.into(),
        secret_access_key: Secret::new(AWS_SECRET),
        session_token: Some(Secret::new("FwoGZXIvYXdzEXAMPLETOKEN")),
    };
    p.chat(&call(temp, BEDROCK_MODEL), &hello())
        .await
        .expect("session token signed");
    let rec = server.last_request().expect("recorded");
    assert_eq!(
        rec.header("x-amz-security-token"),
        Some("FwoGZXIvYXdzEXAMPLETOKEN")
    );

    // A Bedrock API key is a bearer token.
    let keyed = MockUpstream::new()
        .key("bedrock-api-key")
        .start()
        .await
        .expect("mock starts");
    let p2 = (cases()[2].build)(&keyed);
    p2.chat(&call(api_key("bedrock-api-key"), BEDROCK_MODEL), &hello())
        .await
        .expect("API key accepted");
    assert_eq!(
        keyed
            .last_request()
            .and_then(|r| r.header("authorization").map(str::to_owned))
            .as_deref(),
        Some("Bearer bedrock-api-key")
    );
}

/// Bedrock counts tokens itself (`CountTokens`, signed like any call): the request as
/// Converse would send it, under `input.converse`, without inference settings.
#[tokio::test]
async fn bedrock_counts_tokens_with_count_tokens() {
    let server = server().await;
    let p = (cases()[2].build)(&server);
    let c = call(aws(AWS_SECRET), BEDROCK_MODEL);
    let n = p.count_tokens(&c, &hello()).await.expect("counted");
    // The mock: a token per four characters of the text ("Be terse." + "Say hello.").
    assert_eq!(n, Some((9 + 10) / 4));
    let rec = server.last_request().expect("recorded");
    assert_eq!(
        rec.path,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/count-tokens"
    );
    let converse = &rec.body["input"]["converse"];
    assert_eq!(converse["messages"][0]["content"][0]["text"], "Say hello.");
    assert_eq!(converse["system"][0]["text"], "Be terse.");
    assert!(converse.get("inferenceConfig").is_none(), "{converse}");
    // A refused count is an error (the gateway then estimates).
    let err = p
        .count_tokens(&call(aws("wrong-secret"), BEDROCK_MODEL), &hello())
        .await
        .expect_err("bad signature");
    assert!(matches!(err, ProviderError::Auth { .. }), "{err:?}");
}

#[tokio::test]
async fn cohere_embeddings() {
    let server = server().await;
    let p = (cases()[3].build)(&server);
    let emb = p
        .embed(
            &call(api_key("c-key"), "embed-v4.0"),
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
        .expect("embeddings")
        .body;
    assert_eq!(emb.data.len(), 1);
    assert!(!emb.data[0].embedding.is_empty());
    let rec = server.last_request().expect("recorded");
    assert_eq!(rec.path, "/v2/embed");
    assert_eq!(rec.body["input_type"], "search_document");
    assert_eq!(rec.body["embedding_types"], json!(["float"]));
}

#[test]
fn eventstream_frames_match_the_mock_encoder() {
    use gateway_providers::eventstream::{encode_frame, FrameDecoder, HeaderValue};
    let headers = [
        (":event-type", "contentBlockDelta"),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ];
    let payload = br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#;
    let theirs = gateway_mock::encode_event_frame(&headers, payload);
    let ours = encode_frame(
        &headers.map(|(n, v)| (n.to_owned(), HeaderValue::String(v.to_owned()))),
        payload,
    );
    assert_eq!(ours, theirs, "two independent encoders agree byte for byte");
    let mut d = FrameDecoder::new();
    d.push(&theirs);
    let frame = d.next_frame().expect("valid").expect("a frame");
    assert_eq!(frame.header_str(":event-type"), Some("contentBlockDelta"));
    assert_eq!(&frame.payload[..], payload);
}

/// A loopback stand-in server: records each request (path, JSON body, `authorization`) in `seen`
/// and answers with `answer(path)`, a content type and a body.
async fn stand_in(
    seen: Seen,
    answer: impl Fn(&str) -> (&'static str, Vec<u8>) + Send + Sync + 'static,
) -> String {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, answer) = (Arc::clone(&seen), Arc::clone(&answer));
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (seen, answer) = (Arc::clone(&seen), Arc::clone(&answer));
                    async move {
                        let path = req.uri().path().to_owned();
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let json: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        seen.lock().expect("lock").push((path.clone(), json, auth));
                        let (ct, bytes) = answer(&path);
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", ct)
                                .body(Full::new(bytes::Bytes::from(bytes)))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// A loopback stand-in for Vertex's Anthropic publisher (the mock serves only the Google one):
/// answers `:rawPredict` with a Messages response and `:streamRawPredict` with a Messages stream,
/// and records the paths and bodies it saw.
async fn claude_on_vertex_server(seen: Seen) -> String {
    stand_in(seen, |path| {
        if path.ends_with(":streamRawPredict") {
            let events = [
                r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_v1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#,
                r#"event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
                r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello from "}}"#,
                r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Claude."}}"#,
                r#"event: content_block_stop
data: {"type":"content_block_stop","index":0}"#,
                r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":4}}"#,
                r#"event: message_stop
data: {"type":"message_stop"}"#,
            ];
            ("text/event-stream", (events.join("\n\n") + "\n\n").into_bytes())
        } else {
            ("application/json", r#"{"id":"msg_v1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello from Claude."}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":4}}"#.as_bytes().to_vec())
        }
    })
    .await
}

/// Claude on Vertex counts with the Anthropic publisher's `count-tokens:rawPredict`: the count
/// body with the Vertex model id, a bearer token; Gemini models are left to the estimate.
#[tokio::test]
async fn vertex_counts_claude_tokens_with_count_tokens() {
    let tokens = MockUpstream::new().start().await.expect("mock starts");
    let seen = Seen::default();
    let base = stand_in(Arc::clone(&seen), |path| {
        if path.ends_with("/count-tokens:rawPredict") {
            ("application/json", br#"{"input_tokens":42}"#.to_vec())
        } else {
            ("application/json", b"{}".to_vec())
        }
    })
    .await;
    let p = VertexProvider::new(
        &VertexConfig {
            project: Some("proj".into()),
            location: "us-east5".into(),
            base_url: Some(base),
        },
        client(),
    );
    let sa = || {
        Credential::ServiceAccount(Secret::new(gateway_mock::test_service_account(
            &tokens.token_uri(),
        )))
    };
    let c = call(sa(), "claude-sonnet-4-5@20250929");
    assert_eq!(
        p.count_tokens(&c, &hello()).await.expect("counted"),
        Some(42)
    );
    let (path, body, auth) = seen.lock().expect("lock").last().cloned().expect("seen");
    assert_eq!(
        path,
        "/v1/projects/proj/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict"
    );
    assert_eq!(body["model"], "claude-sonnet-4-5@20250929");
    assert_eq!(body["messages"][0]["content"], "Say hello.");
    assert_eq!(body["system"], "Be terse.");
    assert!(body.get("max_tokens").is_none(), "{body}");
    assert!(auth.starts_with("Bearer "), "{auth}");
}

/// Gemini models count with `countTokens`: AI Studio with the whole `generateContentRequest`,
/// Vertex with its contents, system instruction and tools.
#[tokio::test]
async fn gemini_models_count_tokens_with_count_tokens() {
    let server = server().await;
    for case in &cases()[..2] {
        let p = (case.build)(&server);
        let c = call((case.good)(&server), case.model);
        let n = p.count_tokens(&c, &hello()).await.expect("counted");
        // The mock counts the contents: "Say hello." is 10 characters, a token per four.
        assert_eq!(n, Some(10 / 4), "{}", case.name);
        let rec = server.last_request().expect("recorded");
        assert!(
            rec.path.ends_with("/models/gemini-2.5-flash:countTokens"),
            "{}",
            rec.path
        );
        let body = if case.name == "gemini" {
            let inner = &rec.body["generateContentRequest"];
            assert_eq!(inner["model"], "models/gemini-2.5-flash");
            inner.clone()
        } else {
            rec.body.clone()
        };
        assert_eq!(body["contents"][0]["parts"][0]["text"], "Say hello.");
        assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be terse.");
        assert!(body.get("generationConfig").is_none(), "{body}");
    }
}

/// What a stand-in saw: path, JSON body, authorization.
type Seen = Arc<std::sync::Mutex<Vec<(String, serde_json::Value, String)>>>;

/// A Vertex provider in project `proj` against the Claude stand-in, and a call for Claude with
/// a service account whose tokens `tokens` issues.
async fn vertex_claude(tokens: &MockServer, seen: &Seen) -> (VertexProvider, Call) {
    let base = claude_on_vertex_server(Arc::clone(seen)).await;
    let p = VertexProvider::new(
        &VertexConfig {
            project: Some("proj".into()),
            location: "us-east5".into(),
            base_url: Some(base),
        },
        client(),
    );
    let c = call(
        Credential::ServiceAccount(Secret::new(gateway_mock::test_service_account(
            &tokens.token_uri(),
        ))),
        "claude-sonnet-4-5@20250929",
    );
    (p, c)
}

#[tokio::test]
async fn vertex_serves_claude_through_raw_predict() {
    let tokens = MockUpstream::new().start().await.expect("mock starts");
    let seen = Seen::default();
    let (p, c) = vertex_claude(&tokens, &seen).await;
    let direct = p.chat(&c, &hello()).await.expect("rawPredict").body;
    assert_eq!(
        direct.choices[0].message.content_text(),
        "Hello from Claude."
    );
    let (streamed, _) = stream_to_response(&p, &c, &hello())
        .await
        .expect("streamRawPredict");
    assert_eq!(
        streamed.choices[0].message.content_text(),
        "Hello from Claude."
    );
    assert_eq!(
        streamed.choices[0].finish_reason,
        direct.choices[0].finish_reason
    );
    assert_eq!(streamed.usage, direct.usage, "same usage streamed and not");
    assert_eq!(tokens.token_fetches(), 1, "one token for both calls");

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen.iter().map(|(p, _, _)| p.as_str()).collect::<Vec<_>>(),
        [
            "/v1/projects/proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
            "/v1/projects/proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
        ]
    );
    let (_, body, auth) = &seen[0];
    assert!(auth.starts_with("Bearer ya29."), "{auth}");
    assert_eq!(body["anthropic_version"], "vertex-2023-10-16");
    assert!(body.get("model").is_none(), "{body}");
    assert_eq!(body["system"], "Be terse.");
}

/// An Anthropic client's own request to Claude on Vertex: its members reach `rawPredict` as
/// written (with the Vertex `anthropic_version`, without `model` and the gateway's
/// `fallbacks`), and the answer and every streamed event come back as Vertex sent them.
#[tokio::test]
async fn vertex_claude_passes_an_anthropic_clients_request_and_answer_through() {
    let tokens = MockUpstream::new().start().await.expect("mock starts");
    let seen = Seen::default();
    let (p, mut c) = vertex_claude(&tokens, &seen).await;
    c.passthrough = gateway_core::Passthrough::AnthropicMessages;
    let client_body = json!({
        "model": "my-route", "max_tokens": 64, "fallbacks": ["x/y"],
        "system": [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Say hello."}],
    });
    let mut req = hello();
    req.native = Some(gateway_core::types::NativeRequest {
        body: serde_json::to_vec(&client_body).expect("json").into(),
        headers: Vec::new(),
        api: gateway_core::types::NativeApi::AnthropicMessages,
    });
    let direct = p.chat(&c, &req).await.expect("rawPredict").body;
    let raw: serde_json::Value =
        serde_json::from_slice(direct.raw.as_deref().expect("raw answer")).expect("JSON");
    assert_eq!(raw["id"], "msg_v1", "Vertex's own message");
    assert_eq!(direct.usage.map(|u| u.completion_tokens), Some(4));

    req.stream = true;
    let mut s = p.chat_stream(&c, &req).await.expect("streamRawPredict");
    let mut text = String::new();
    while let Some(chunk) = s.chunks.next().await {
        let chunk = chunk.expect("chunk");
        text.push_str(std::str::from_utf8(chunk.raw.as_deref().expect("raw")).expect("utf-8"));
    }
    assert!(
        text.starts_with("event: message_start\ndata: {\"type\":\"message_start\""),
        "{text}"
    );
    assert!(
        text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{text}"
    );
    assert_eq!(text.matches("event: ").count(), 7, "{text}");

    let seen = seen.lock().expect("lock").clone();
    let mut expected = client_body.clone();
    let o = expected.as_object_mut().expect("object");
    o.remove("model");
    o.remove("fallbacks");
    o.insert("anthropic_version".into(), json!("vertex-2023-10-16"));
    assert_eq!(seen[0].1, expected);
    expected["stream"] = json!(true);
    assert_eq!(seen[1].1, expected);
}

/// A loopback stand-in for Bedrock's `InvokeModel` with Claude: `/invoke` answers Anthropic's
/// message, `/invoke-with-response-stream` Anthropic's `events`, each the base64 `bytes` of a
/// `chunk` frame; it records what it saw.
async fn claude_on_bedrock_server(seen: Seen, events: Vec<&'static str>) -> String {
    use base64::Engine as _;
    use gateway_providers::eventstream::{encode_frame, HeaderValue as EvHeader};
    stand_in(seen, move |path| {
        if !path.ends_with("/invoke-with-response-stream") {
            return ("application/json", br#"{"id":"msg_bdrk_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"thinking","thinking":"Hm.","signature":"EqB"},{"type":"text","text":"Hello from Claude."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":4,"cache_read_input_tokens":3}}"#.to_vec());
        }
        let mut out = Vec::new();
        for e in &events {
            let b64 = base64::engine::general_purpose::STANDARD.encode(e);
            let payload = json!({"bytes": b64, "p": "abcdefgh"}).to_string();
            out.extend(encode_frame(
                &[
                    (":event-type".into(), EvHeader::String("chunk".into())),
                    (":content-type".into(), EvHeader::String("application/json".into())),
                    (":message-type".into(), EvHeader::String("event".into())),
                ],
                payload.as_bytes(),
            ));
        }
        ("application/vnd.amazon.eventstream", out)
    })
    .await
}

/// An Anthropic client's own request for Claude on Bedrock goes to `InvokeModel` as written
/// (Bedrock's `anthropic_version`, its betas as `anthropic_beta`, no `model`, `stream` or
/// `fallbacks`), and the message and every streamed event come back as Anthropic wrote them.
#[tokio::test]
async fn bedrock_claude_passes_an_anthropic_clients_request_and_answer_through() {
    let events = vec![
        r#"{"type":"message_start","message":{"id":"msg_bdrk_2","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":4}}"#,
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":12,"outputTokenCount":4}}"#,
    ];
    let seen = Seen::default();
    let base = claude_on_bedrock_server(Arc::clone(&seen), events.clone()).await;
    let p = BedrockProvider::new(
        &BedrockConfig {
            region: "us-east-1".into(),
            base_url: Some(base),
            claude_invoke: true,
        },
        client(),
    );
    let mut c = call(
        api_key("bedrock-api-key"),
        "us.anthropic.claude-sonnet-4-5-v1:0",
    );
    c.passthrough = gateway_core::Passthrough::AnthropicMessages;
    let client_body = json!({
        "model": "my-route", "max_tokens": 64, "stream": true, "fallbacks": ["x/y"],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "system": [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Say hello."}],
    });
    let mut req = hello();
    req.native = Some(gateway_core::types::NativeRequest {
        body: serde_json::to_vec(&client_body).expect("json").into(),
        headers: vec![(
            "anthropic-beta".into(),
            "interleaved-thinking-2025-05-14".into(),
        )],
        api: gateway_core::types::NativeApi::AnthropicMessages,
    });
    let answer = p.chat(&c, &req).await.expect("invoke").body;
    let raw: serde_json::Value =
        serde_json::from_slice(answer.raw.as_deref().expect("raw answer")).expect("JSON");
    assert_eq!(
        raw["content"][0]["signature"], "EqB",
        "the thinking block, signed"
    );
    assert_eq!(
        answer.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((15, 4))
    );

    let mut s = p
        .chat_stream(&c, &req)
        .await
        .expect("invoke-with-response-stream");
    let (mut text, mut usage) = (String::new(), None);
    while let Some(chunk) = s.chunks.next().await {
        let chunk = chunk.expect("chunk");
        usage = chunk.usage.or(usage);
        text.push_str(std::str::from_utf8(chunk.raw.as_deref().expect("raw")).expect("utf-8"));
    }
    let want: String = events
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).expect("event");
            format!(
                "event: {}\ndata: {e}\n\n",
                v["type"].as_str().expect("type")
            )
        })
        .collect();
    assert_eq!(text, want);
    assert_eq!(usage.map(|u| u.completion_tokens), Some(4));

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen.iter().map(|(p, _, _)| p.as_str()).collect::<Vec<_>>(),
        [
            "/model/us.anthropic.claude-sonnet-4-5-v1%3A0/invoke",
            "/model/us.anthropic.claude-sonnet-4-5-v1%3A0/invoke-with-response-stream",
        ]
    );
    let mut expected = client_body.clone();
    let o = expected.as_object_mut().expect("object");
    for k in ["model", "stream", "fallbacks"] {
        o.remove(k);
    }
    o.insert("anthropic_version".into(), json!("bedrock-2023-05-31"));
    o.insert(
        "anthropic_beta".into(),
        json!(["interleaved-thinking-2025-05-14"]),
    );
    assert_eq!(seen[0].1, expected);
    assert_eq!(
        seen[1].1, expected,
        "the stream is the endpoint's, not a member"
    );
    assert_eq!(seen[0].2, "Bearer bedrock-api-key");
}
