//! Fakes for tests of this and other crates: a scripted in-process provider.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::ProviderError;
use crate::provider::{Call, Provider, ProviderResponse, ProviderStream};
use crate::ratelimit::RateLimitInfo;
use crate::types::{
    ChatChunk, ChatRequest, ChatResponse, Choice, Delta, FinishReason, Message, Role, Usage,
};

/// What a scripted key does on its next call.
#[derive(Debug, Clone)]
pub enum Step {
    /// Answer with this text.
    Reply(String),
    /// Fail with this error.
    Fail(ProviderError),
    /// Stream: fail before the first chunk.
    StreamFailFirst(ProviderError),
    /// Stream: send `n` chunks, then fail.
    StreamFailAfter(usize, ProviderError),
}

/// A provider whose keys follow scripts; a key with an empty script replies `ok from <key>`.
#[derive(Debug, Default)]
pub struct FakeProvider {
    scripts: Mutex<HashMap<String, Vec<Step>>>,
    always: Mutex<HashMap<String, Step>>,
    calls: Mutex<Vec<(String, String)>>,
    single_answer: std::sync::atomic::AtomicBool,
    /// How long a plain answer takes (ms).
    delay_ms: std::sync::atomic::AtomicU64,
    /// Per key: plain calls under way, and the most seen at once.
    concurrency: Mutex<HashMap<String, (u32, u32)>>,
}

impl FakeProvider {
    /// A fake with no scripts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues steps for `key`, consumed in order.
    pub fn script(&self, key: &str, steps: Vec<Step>) {
        if let Ok(mut s) = self.scripts.lock() {
            s.insert(key.to_owned(), steps.into_iter().rev().collect());
        }
    }

    /// Makes `key` do `step` on every call once its script is consumed.
    pub fn always(&self, key: &str, step: Step) {
        if let Ok(mut s) = self.always.lock() {
            s.insert(key.to_owned(), step);
        }
    }

    /// Makes the fake an API with one answer per request: `n` above 1 is unsupported.
    pub fn single_answer(&self) {
        self.single_answer
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes every plain answer take `d` (tokio time: a paused clock advances through it).
    pub fn set_delay(&self, d: std::time::Duration) {
        self.delay_ms.store(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The most plain calls that were under way at once with `key`.
    pub fn max_in_flight(&self, key: &str) -> u32 {
        self.concurrency
            .lock()
            .ok()
            .and_then(|c| c.get(key).map(|v| v.1))
            .unwrap_or(0)
    }

    fn count_in(&self, key: &str, delta: i32) {
        if let Ok(mut c) = self.concurrency.lock() {
            let e = c.entry(key.to_owned()).or_default();
            e.0 = e.0.saturating_add_signed(delta);
            e.1 = e.1.max(e.0);
        }
    }

    /// Every call so far as (key name, model).
    pub fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn next(&self, call: &Call) -> Step {
        let key = call.key_name.to_string();
        if let Ok(mut c) = self.calls.lock() {
            c.push((key.clone(), call.model.to_string()));
        }
        if let Some(step) = self
            .scripts
            .lock()
            .ok()
            .and_then(|mut s| s.get_mut(&key).and_then(Vec::pop))
        {
            return step;
        }
        if let Some(step) = self.always.lock().ok().and_then(|s| s.get(&key).cloned()) {
            return step;
        }
        Step::Reply(format!("ok from {key}"))
    }
}

fn response(model: &str, text: String) -> ChatResponse {
    ChatResponse {
        id: "fake".to_owned(),
        object: "chat.completion".to_owned(),
        created: 0,
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: Message::text(Role::Assistant, text),
            finish_reason: Some(FinishReason::Stop),
            logprobs: None,
        }],
        usage: Some(Usage::new(5, 2, 0)),
        extra: serde_json::Map::new(),
        raw: None,
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn kind(&self) -> &str {
        "fake"
    }

    fn supports(&self, _model: &str, r: &ChatRequest) -> Result<(), ProviderError> {
        if self
            .single_answer
            .load(std::sync::atomic::Ordering::Relaxed)
            && r.n.is_some_and(|n| n > 1)
        {
            return Err(ProviderError::Unsupported {
                message: "one answer per request".to_owned(),
                param: Some("n".to_owned()),
            });
        }
        Ok(())
    }

    async fn chat(
        &self,
        call: &Call,
        _r: &ChatRequest,
    ) -> Result<ProviderResponse<ChatResponse>, ProviderError> {
        let delay = self.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            // Counted down even when the engine drops the call (its timeout).
            struct Out<'a>(&'a FakeProvider, &'a str);
            impl Drop for Out<'_> {
                fn drop(&mut self) {
                    self.0.count_in(self.1, -1);
                }
            }
            self.count_in(&call.key_name, 1);
            let _out = Out(self, &call.key_name);
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        match self.next(call) {
            Step::Reply(t) => Ok(ProviderResponse {
                body: response(&call.model, t),
                rate_limit: RateLimitInfo::default(),
            }),
            Step::Fail(e) | Step::StreamFailFirst(e) | Step::StreamFailAfter(_, e) => Err(e),
        }
    }

    /// Counts the reply's bytes (or fails with the step's error).
    async fn count_tokens(
        &self,
        call: &Call,
        _r: &ChatRequest,
    ) -> Result<Option<u64>, ProviderError> {
        match self.next(call) {
            Step::Reply(t) => Ok(Some(t.len() as u64)),
            Step::Fail(e) | Step::StreamFailFirst(e) | Step::StreamFailAfter(_, e) => Err(e),
        }
    }

    async fn chat_stream(
        &self,
        call: &Call,
        _r: &ChatRequest,
    ) -> Result<ProviderStream, ProviderError> {
        let chunk = |text: &str| {
            Ok(
                ChatChunk::new("fake", call.model.to_string(), 0).with_delta(
                    Delta {
                        content: Some(text.to_owned()),
                        ..Delta::default()
                    },
                    None,
                ),
            )
        };
        let items: Vec<Result<ChatChunk, ProviderError>> = match self.next(call) {
            Step::Fail(e) => return Err(e),
            Step::Reply(t) => t.split_inclusive(' ').map(chunk).collect(),
            Step::StreamFailFirst(e) => vec![Err(e)],
            Step::StreamFailAfter(n, e) => (0..n)
                .map(|i| chunk(&i.to_string()))
                .chain([Err(e)])
                .collect(),
        };
        Ok(ProviderStream {
            chunks: Box::pin(futures_util::stream::iter(items)),
            rate_limit: RateLimitInfo::default(),
        })
    }
}
