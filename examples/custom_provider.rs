//! A custom provider for an in-house model server, plugged into a gateway route.
//!
//! The "in-house server" here speaks its own little JSON protocol (`POST /generate` with
//! `{"prompt"}`, answering `{"completion", "tokens_in", "tokens_out"}`). `InHouse` implements
//! gateway-core's `Provider` trait for it, reusing the gateway's shared HTTP client, and is registered
//! under the kind `inhouse`; the configuration then uses it like any built-in kind, in a route with
//! a fallback. When the in-house server goes down, the route fails over to the fallback.
//!
//! Run with `cargo run --example custom_provider`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gateway_core::types::{
    ChatChunk, ChatRequest, ChatResponse, Choice, Delta, FinishReason, Message, Role, Usage,
};
use gateway_core::{
    Call, Provider, ProviderError, ProviderResponse, ProviderStream, RateLimitInfo,
};
use gateway_providers::http::{HttpClient, HttpConfig};
use gateway_server::{serve, Config, Extensions, Gateway};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

/// The adapter: canonical chat request in, the in-house protocol out.
struct InHouse {
    base_url: String,
    client: HttpClient,
}

#[async_trait]
impl Provider for InHouse {
    fn kind(&self) -> &str {
        "inhouse"
    }

    async fn chat(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderResponse<ChatResponse>, ProviderError> {
        let prompt: String = request
            .messages
            .iter()
            .map(|m| format!("{:?}: {}\n", m.role, m.content_text()))
            .collect();
        let body = serde_json::to_vec(&json!({"prompt": prompt, "model": &*call.model}))
            .unwrap_or_default();
        let req = http::Request::post(format!("{}/generate", self.base_url))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProviderError::Protocol(e.to_string()))?;
        // Connection errors and timeouts come back classified, so failover works as for any provider.
        let resp = self.client.send(req, call.timeout).await?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ProviderError::Connect(e.to_string()))?
            .to_bytes();
        if status >= 500 {
            return Err(ProviderError::Server {
                status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| ProviderError::Protocol(e.to_string()))?;
        let usage = Usage::new(
            v["tokens_in"].as_u64().unwrap_or(0),
            v["tokens_out"].as_u64().unwrap_or(0),
            0,
        );
        Ok(ProviderResponse {
            body: ChatResponse {
                id: "inhouse-1".into(),
                object: "chat.completion".into(),
                created: 0,
                model: call.model.to_string(),
                choices: vec![Choice {
                    index: 0,
                    message: Message::text(
                        Role::Assistant,
                        v["completion"].as_str().unwrap_or_default(),
                    ),
                    finish_reason: Some(FinishReason::Stop),
                    logprobs: None,
                }],
                usage: Some(usage),
                extra: Default::default(),
                raw: None,
            },
            rate_limit: RateLimitInfo::default(),
        })
    }

    /// The in-house server does not stream: answer in one chunk plus a usage chunk.
    async fn chat_stream(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderStream, ProviderError> {
        let full = self.chat(call, request).await?.body;
        let text = full.choices[0].message.content_text();
        let chunk = ChatChunk::new(full.id.clone(), full.model.clone(), 0).with_delta(
            Delta {
                role: Some(Role::Assistant),
                content: Some(text),
                ..Delta::default()
            },
            Some(FinishReason::Stop),
        );
        let mut usage = ChatChunk::new(full.id, full.model, 0);
        usage.usage = full.usage;
        Ok(ProviderStream {
            chunks: Box::pin(futures_util::stream::iter([Ok(chunk), Ok(usage)])),
            rate_limit: RateLimitInfo::default(),
        })
    }
}

/// The in-house model server: answers by reversing the prompt's last line, or 503 while `down`.
async fn start_inhouse_server(down: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let down = Arc::clone(&down);
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let down = down.load(Ordering::Relaxed);
                    async move {
                        if down {
                            let mut r =
                                http::Response::new(Full::new(Bytes::from("down for maintenance")));
                            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            return Ok::<_, Infallible>(r);
                        }
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                        let prompt = v["prompt"].as_str().unwrap_or_default();
                        let last = prompt.lines().last().unwrap_or_default();
                        let answer = format!(
                            "in-house model says: {}",
                            last.chars().rev().collect::<String>()
                        );
                        let out = json!({"completion": answer, "tokens_in": prompt.len() / 4, "tokens_out": 7});
                        Ok(http::Response::new(Full::new(Bytes::from(out.to_string()))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    url
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let down = Arc::new(AtomicBool::new(false));
    let inhouse_url = start_inhouse_server(Arc::clone(&down)).await;
    let client = HttpClient::new(&HttpConfig::default())?;
    let mut providers: HashMap<String, Arc<dyn Provider>> = HashMap::new();
    providers.insert(
        "inhouse".into(),
        Arc::new(InHouse {
            base_url: inhouse_url,
            client,
        }),
    );

    let config = Config::from_toml(
        r#"
        [[providers]]
        name = "ours"
        kind = "inhouse"          # the kind registered in Extensions::providers
        max_retries = 0

        [[providers]]
        name = "backup"
        kind = "mock"             # an in-process mock with the OpenAI wire format

        [[routes]]
        name = "chat"
        targets = [{ provider = "ours", model = "house-llm-7b" }]
        fallbacks = ["backup/mock-model"]
        "#,
    )?;
    let gateway = Gateway::new(
        config,
        None,
        Extensions {
            providers,
            ..Extensions::default()
        },
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(
        gateway,
        listener,
        None,
        async {
            let _ = stop_rx.await;
        },
        Duration::from_secs(1),
    ));

    let http: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let ask = |text: &'static str| {
        let http = http.clone();
        async move {
            let body = json!({"model": "chat", "messages": [{"role": "user", "content": text}]})
                .to_string();
            let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let resp = http.request(req).await.unwrap();
            let provider = resp
                .headers()
                .get("x-gateway-provider")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned();
            let v: Value =
                serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes())
                    .unwrap();
            (
                provider,
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };

    let (provider, answer) = ask("hello gateway").await;
    println!("served by {provider}: {answer}");
    assert_eq!(provider, "ours");

    // The in-house server goes down: the route's fallback serves.
    down.store(true, Ordering::Relaxed);
    let (provider, answer) = ask("hello again").await;
    println!("in-house server down -> served by {provider}: {answer}");
    assert_eq!(provider, "backup");

    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}
