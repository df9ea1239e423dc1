//! Embedding gateway-core without any HTTP: a custom in-process provider, weighted balancing over
//! two keys, and a failover to a fallback provider when the primary is overloaded.
//!
//! Run with `cargo run --example embed_core`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gateway_core::types::{ChatRequest, ChatResponse, Choice, FinishReason, Message, Role, Usage};
use gateway_core::{
    Call, Credential, Engine, EngineConfig, KeyConfig, Provider, ProviderConfig, ProviderError,
    ProviderResponse, ProviderStream, RateLimitInfo, RequestOptions, RouteConfig, Secret,
    StrategyKind, TargetConfig,
};

/// An "in-house model server": answers in-process, counts calls per key, and can be made to fail.
struct InHouse {
    name: &'static str,
    overloaded: AtomicBool,
    calls: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl Provider for InHouse {
    fn kind(&self) -> &str {
        "in-house"
    }

    async fn chat(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderResponse<ChatResponse>, ProviderError> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(call.key_name.to_string())
            .or_default() += 1;
        if self.overloaded.load(Ordering::Relaxed) {
            return Err(ProviderError::Overloaded {
                retry_after: None,
                message: format!("{} is overloaded", self.name),
            });
        }
        let question = request
            .messages
            .last()
            .map(Message::content_text)
            .unwrap_or_default();
        Ok(ProviderResponse {
            body: ChatResponse {
                id: "local-1".into(),
                object: "chat.completion".into(),
                created: 0,
                model: call.model.to_string(),
                choices: vec![Choice {
                    index: 0,
                    message: Message::text(
                        Role::Assistant,
                        format!("{} says: you asked {question:?}", self.name),
                    ),
                    finish_reason: Some(FinishReason::Stop),
                    logprobs: None,
                }],
                usage: Some(Usage::new(8, 6, 0)),
                extra: Default::default(),
                raw: None,
            },
            rate_limit: RateLimitInfo::default(),
        })
    }

    async fn chat_stream(
        &self,
        _call: &Call,
        _request: &ChatRequest,
    ) -> Result<ProviderStream, ProviderError> {
        Err(ProviderError::BadRequest {
            status: 400,
            message: "streaming not supported by this example".into(),
            param: Some("stream".into()),
            code: None,
        })
    }
}

fn key(name: &str, weight: u32) -> KeyConfig {
    KeyConfig {
        name: name.into(),
        credential: Credential::ApiKey(Secret::new(format!("secret-of-{name}"))),
        weight,
        models: None,
        rpm: None,
        tpm: None,
        max_concurrent: None,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let primary = Arc::new(InHouse {
        name: "primary",
        overloaded: AtomicBool::new(false),
        calls: Mutex::default(),
    });
    let backup = Arc::new(InHouse {
        name: "backup",
        overloaded: AtomicBool::new(false),
        calls: Mutex::default(),
    });
    let engine = Engine::new(EngineConfig {
        providers: vec![
            ProviderConfig {
                name: "primary".into(),
                provider: primary.clone(),
                keys: vec![key("big", 3), key("small", 1)],
                strategy: StrategyKind::Weighted,
                timeout: Duration::from_secs(5),
                max_retries: 1,
                models: vec!["llm-large".into()],
            },
            ProviderConfig {
                name: "backup".into(),
                provider: backup.clone(),
                keys: vec![key("only", 1)],
                strategy: StrategyKind::Adaptive,
                timeout: Duration::from_secs(5),
                max_retries: 1,
                models: vec!["llm-small".into()],
            },
        ],
        routes: vec![RouteConfig {
            name: "chat".into(),
            strategy: StrategyKind::Adaptive,
            targets: vec![TargetConfig {
                provider: "primary".into(),
                model: "llm-large".into(),
                weight: 1,
            }],
            fallbacks: vec!["backup/llm-small".into()],
            context_window_fallbacks: Vec::new(),
            content_policy_fallbacks: Vec::new(),
        }],
        ..EngineConfig::default()
    })?;

    let request = ChatRequest {
        model: "chat".into(),
        messages: vec![Message::text(Role::User, "what is 2+2?")],
        ..ChatRequest::default()
    };
    let opts = RequestOptions {
        request_id: Arc::from("example"),
        ..RequestOptions::default()
    };

    // 1. Weighted balancing: keys "big" (weight 3) and "small" (weight 1).
    for _ in 0..400 {
        engine.chat(&request, &opts).await?;
    }
    let calls = primary.calls.lock().unwrap().clone();
    println!(
        "weighted balancing over 400 requests: big={} small={} (expected about 300/100)",
        calls["big"], calls["small"]
    );

    // 2. Failover: the primary starts answering "overloaded"; the route's fallback serves.
    primary.overloaded.store(true, Ordering::Relaxed);
    let out = engine.chat(&request, &opts).await?;
    println!(
        "primary overloaded -> served by {}/{} after {} attempts: {}",
        out.served_by.provider,
        out.served_by.model,
        out.attempts.len(),
        out.value.choices[0].message.content_text()
    );
    for a in &out.attempts {
        println!(
            "  attempt: provider={} key={} outcome={}",
            a.provider, a.key, a.outcome
        );
    }
    assert_eq!(&*out.served_by.provider, "backup");
    Ok(())
}
