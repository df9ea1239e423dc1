//! A mock LLM provider server that speaks every provider's real wire format.
//!
//! One listener serves all dialects, chosen by path: OpenAI and OpenAI-compatible
//! (`…/chat/completions`, the Responses API `…/responses`, `…/embeddings`, `/v1/models`),
//! Azure OpenAI (`/openai/deployments/{d}/…?api-version=`), Anthropic (`/v1/messages`), Gemini
//! AI Studio (`/v1beta/models/{m}:generateContent`), Vertex AI
//! (`/v1/projects/…/publishers/google/models/{m}:…` with OAuth tokens from the mock's own
//! `POST /token`), Bedrock (`/model/{id}/converse[-stream]`, and
//! `/model/{id}/invoke[-with-response-stream]` with Claude's Anthropic body and events, SigV4
//! verified, binary eventstream) and Cohere v2 (`/v2/chat`, `/v2/embed`). `GET /v1/models`
//! answers in Anthropic's shape when an `anthropic-version` header is sent, and
//! `/v1/messages/count_tokens` and Gemini `:countTokens` are served too. The formats follow
//! `shared/reference/wire-formats.md`; the gateway's adapters are written independently against
//! the same reference, so this mock is their check.
//!
//! Answers are deterministic: the configured reply (default `Hello from the mock upstream.`),
//! streamed one word per chunk (or in `stream_chunks` pieces); a tool call of the named or first
//! tool with arguments `{"query":"<last user text>"}` when tools are offered and the last turn is
//! user text; `Tool said: <result>` when the last turn is a tool result; a JSON value of the
//! schema when structured output is asked for in the provider's own field (OpenAI and Cohere
//! `response_format`, Gemini `responseSchema`, Anthropic `output_config.format`). Thinking asked
//! for (Anthropic `thinking`, Gemini `includeThoughts`, Claude's `thinking` on Bedrock) comes
//! first as that provider's thinking block, thought part or reasoning block. Usage is
//! prompt = characters / 4 (at least 1), completion = number of chunks, identical in streamed and
//! non-streamed answers.
//!
//! Keys, per-key `rpm`/`tpm` limits (fixed one-minute windows, with each provider's real 429 and
//! rate-limit headers) and [`Faults`] (latency, errors, hangs, malformed bodies, mid-stream
//! disconnects and in-band errors) are set on the [`MockUpstream`] builder and changed at runtime
//! through the [`MockServer`] handle or the control endpoints (`GET /_mock/stats`,
//! `POST /_mock/faults`, `POST /_mock/reset`). The last request of each dialect is recorded so
//! tests can assert on what the gateway sent.
//!
//! Use it in-process from tests (`MockUpstream::new()….start().await`) or as the `gateway-mock`
//! binary for benchmarks. The hot path takes no lock across an `.await`: counters are atomics and
//! faults are swapped with `arc-swap` (the pattern of pingora's `LoadBalancer::update`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use gateway_mock::{Faults, MockUpstream};
//!
//! let server = MockUpstream::new()
//!     .reply("Hi there")
//!     .key("sk-test")
//!     .start()
//!     .await?;
//! assert!(server.openai_base().ends_with("/v1"));
//! server.set_faults(Faults { error_rate: 1.0, error_status: Some(503), ..Faults::default() });
//! assert_eq!(server.requests(), 0);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod body;
mod dialect;
mod eventstream;
mod format;
mod keys;
mod plan;
mod server;
mod sigv4;
mod state;
mod vertex;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use eventstream::encode_event_frame;
pub use keys::{TEST_PRIVATE_KEY_PEM, TEST_PUBLIC_KEY_PEM};
pub use vertex::{test_service_account, TEST_CLIENT_EMAIL, TEST_PRIVATE_KEY_ID, TEST_PROJECT_ID};

use state::{lock, Config, Limits, Shared};

/// The default reply text.
pub const DEFAULT_REPLY: &str = "Hello from the mock upstream.";

/// Injected misbehaviour, global or per key. Per-key faults, when set, replace the global ones
/// for requests made with that key.
///
/// The timing fields add to the base timing set with [`MockUpstream::latency`],
/// [`MockUpstream::ttft`] and [`MockUpstream::chunk_delay`]. Stream faults count *events*: SSE
/// events (including the first role/`message_start` event and Azure's filter chunk) or Bedrock
/// eventstream frames, and apply only when the stream has more events than the count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Extra delay before the response headers.
    pub latency_ms: Option<u64>,
    /// Extra delay before the first stream event.
    pub ttft_ms: Option<u64>,
    /// Extra delay between stream events.
    pub chunk_delay_ms: Option<u64>,
    /// Share of requests (0..=1) answered with `error_status`; deterministic: the k-th request
    /// fails when `floor(k * rate)` steps up (rate 0.5 fails every second request).
    pub error_rate: f64,
    /// Status for `error_rate` failures (default 500), rendered in the dialect's error shape
    /// (529 on Anthropic is `overloaded_error`, 503 on Gemini `UNAVAILABLE`, …).
    pub error_status: Option<u16>,
    /// Every request gets the dialect's 429 rate-limit answer with its retry hint.
    pub rate_limit_always: bool,
    /// Every request gets the dialect's quota/billing-exhausted answer (OpenAI 429
    /// `insufficient_quota`, Anthropic 400 credit balance, Gemini 429 `PerDay` quota, Azure 429
    /// retry after 86400 s, Bedrock 429 tokens per day, Cohere 429 trial key limit).
    pub quota_exhausted: bool,
    /// Never answer; hold the connection until the client gives up or the server stops.
    pub hang: bool,
    /// Answer 200 with a body that is not valid JSON (a broken event for streams, a frame with
    /// a bad CRC for Bedrock streams).
    pub malformed: bool,
    /// Stream this many events, then drop the connection without the terminator.
    pub disconnect_after_chunks: Option<usize>,
    /// Retry hint for `rate_limit_always` answers (default 1000 ms), in `retry-after`,
    /// `retry-after-ms`, `x-ratelimit-reset-*`, Anthropic's reset instants and Gemini's
    /// `RetryInfo`.
    pub retry_after_ms: Option<u64>,
    /// Stream this many events, then send the dialect's in-band error (status from
    /// `error_status`, default 500; 529 on Anthropic is `overloaded_error`) and end.
    pub mid_stream_error_after: Option<usize>,
}

/// The provider dialects the mock speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// OpenAI and every OpenAI-compatible provider.
    OpenAi,
    /// Azure OpenAI (classic deployments URL).
    Azure,
    /// Anthropic Messages.
    Anthropic,
    /// Gemini AI Studio.
    Gemini,
    /// Vertex AI (Gemini on Google Cloud).
    Vertex,
    /// Bedrock Converse.
    Bedrock,
    /// Cohere v2.
    Cohere,
}

impl Dialect {
    /// Number of dialects.
    pub const COUNT: usize = 7;
    /// Every dialect, in index order.
    pub const ALL: [Dialect; Self::COUNT] = [
        Dialect::OpenAi,
        Dialect::Azure,
        Dialect::Anthropic,
        Dialect::Gemini,
        Dialect::Vertex,
        Dialect::Bedrock,
        Dialect::Cohere,
    ];

    /// Position in [`Dialect::ALL`].
    pub fn index(self) -> usize {
        match self {
            Dialect::OpenAi => 0,
            Dialect::Azure => 1,
            Dialect::Anthropic => 2,
            Dialect::Gemini => 3,
            Dialect::Vertex => 4,
            Dialect::Bedrock => 5,
            Dialect::Cohere => 6,
        }
    }

    /// Lowercase name, as in `/_mock/stats`.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Azure => "azure",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
            Dialect::Vertex => "vertex",
            Dialect::Bedrock => "bedrock",
            Dialect::Cohere => "cohere",
        }
    }
}

/// A request as the mock received it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRequest {
    /// Which dialect served it.
    pub dialect: Dialect,
    /// HTTP method.
    pub method: String,
    /// Path without the query, as received (percent-encoding kept).
    pub path: String,
    /// Query string without `?` (empty when none).
    pub query: String,
    /// Headers, names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The JSON body (`Null` when empty or not JSON).
    pub body: serde_json::Value,
}

impl RecordedRequest {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Builder for a mock upstream server.
#[derive(Clone, Debug)]
pub struct MockUpstream {
    reply: String,
    stream_chunks: usize,
    latency: Duration,
    ttft: Duration,
    chunk_delay: Duration,
    api_keys: HashSet<String>,
    limits: HashMap<String, Limits>,
    aws_keys: HashMap<String, String>,
    faults: Faults,
    key_faults: Vec<(String, Faults)>,
    token_lifetime: Duration,
    rate_window: Duration,
    jwt_public_key: Option<String>,
}

impl Default for MockUpstream {
    fn default() -> Self {
        Self::new()
    }
}

impl MockUpstream {
    /// A mock with the default reply, one stream chunk per word, no delays, any key accepted.
    pub fn new() -> Self {
        Self {
            reply: DEFAULT_REPLY.to_owned(),
            stream_chunks: 0,
            latency: Duration::ZERO,
            ttft: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            api_keys: HashSet::new(),
            limits: HashMap::new(),
            aws_keys: HashMap::new(),
            faults: Faults::default(),
            key_faults: Vec::new(),
            token_lifetime: Duration::from_secs(3599),
            rate_window: state::DEFAULT_WINDOW,
            jwt_public_key: None,
        }
    }

    /// The reply text.
    pub fn reply(mut self, text: impl Into<String>) -> Self {
        self.reply = text.into();
        self
    }

    /// Splits streamed replies into `n` chunks of near-equal length (`0` = one per word, the
    /// default).
    pub fn stream_chunks(mut self, n: usize) -> Self {
        self.stream_chunks = n;
        self
    }

    /// Delay before every response's headers.
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    /// Delay before the first stream event.
    pub fn ttft(mut self, d: Duration) -> Self {
        self.ttft = d;
        self
    }

    /// Delay between stream events.
    pub fn chunk_delay(mut self, d: Duration) -> Self {
        self.chunk_delay = d;
        self
    }

    /// Registers a valid API key for every key-based dialect (OpenAI, Azure, Anthropic, Gemini,
    /// Cohere, Bedrock bearer keys). Once any key is registered, other keys are refused with the
    /// dialect's 401/403 (Gemini: 400 `API_KEY_INVALID`); with none registered any non-empty key
    /// is accepted (and, for OpenAI-compatible paths only, no key at all, as Ollama and vLLM do).
    pub fn key(mut self, secret: &str) -> Self {
        self.api_keys.insert(secret.to_owned());
        self
    }

    /// Registers a key with per-minute request and token limits (fixed one-minute windows;
    /// tokens = prompt + completion tokens of the request).
    pub fn key_limits(mut self, secret: &str, rpm: Option<u64>, tpm: Option<u64>) -> Self {
        self.api_keys.insert(secret.to_owned());
        self.limits.insert(secret.to_owned(), Limits { rpm, tpm });
        self
    }

    /// Length of the fixed rate-limit windows behind `rpm`/`tpm` (default one minute; shorten
    /// it so tests can see a key recover without waiting a minute). The limits stay "per
    /// window".
    pub fn rate_window(mut self, d: Duration) -> Self {
        self.rate_window = d.max(Duration::from_millis(1));
        self
    }

    /// Registers AWS credentials for Bedrock; requests must be SigV4-signed with them. With none
    /// registered, any well-formed SigV4 header is accepted without checking the signature.
    pub fn aws_key(mut self, access_key_id: &str, secret_access_key: &str) -> Self {
        self.aws_keys
            .insert(access_key_id.to_owned(), secret_access_key.to_owned());
        self
    }

    /// Global faults.
    pub fn faults(mut self, f: Faults) -> Self {
        self.faults = f;
        self
    }

    /// Faults for one key (registering it as a valid API key, like [`MockUpstream::key`]).
    /// For Bedrock the key is the access key id, for Vertex the access token.
    pub fn key_faults(mut self, secret: &str, f: Faults) -> Self {
        self.api_keys.insert(secret.to_owned());
        self.key_faults.push((secret.to_owned(), f));
        self
    }

    /// Lifetime of the Vertex access tokens issued by `POST /token` (default 3599 s, which is
    /// also the `expires_in` reported).
    pub fn token_lifetime(mut self, d: Duration) -> Self {
        self.token_lifetime = d;
        self
    }

    /// A public key (PEM) to verify every RS256 JWT assertion sent to `POST /token`. Assertions
    /// whose `kid` is [`TEST_PRIVATE_KEY_ID`] are always verified against the built-in test key.
    pub fn jwt_public_key(mut self, pem: &str) -> Self {
        self.jwt_public_key = Some(pem.to_owned());
        self
    }

    /// Starts the server on `127.0.0.1` with an OS-chosen port.
    pub async fn start(self) -> std::io::Result<MockServer> {
        self.start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the server on `addr`.
    pub async fn start_on(self, addr: SocketAddr) -> std::io::Result<MockServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let config = Config {
            reply: plan::Reply::new(&self.reply, self.stream_chunks),
            api_keys: self.api_keys,
            limits: self.limits,
            aws_keys: self.aws_keys,
            token_lifetime: self.token_lifetime,
            rate_window: self.rate_window,
            jwt_public_key: self.jwt_public_key,
        };
        let shared = Arc::new(Shared::new(
            config,
            self.faults,
            self.key_faults,
            rx.clone(),
        ));
        shared.timing.set_latency(self.latency);
        shared.timing.set_ttft(self.ttft);
        shared.timing.set_chunk_delay(self.chunk_delay);
        let task = tokio::spawn(server::serve(listener, shared.clone(), rx));
        Ok(MockServer {
            inner: Arc::new(ServerInner {
                addr,
                shared,
                shutdown: tx,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

#[derive(Debug)]
struct ServerInner {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ServerInner {
    fn drop(&mut self) {
        // The accept loop and every connection stop when they see this (or the closed channel).
        let _ = self.shutdown.send(true);
    }
}

/// A running mock server. Cheap to clone; stops when the last clone is dropped or on
/// [`MockServer::shutdown`] (which closes the listener and every open connection).
#[derive(Clone, Debug)]
pub struct MockServer {
    inner: Arc<ServerInner>,
}

impl MockServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT`: the base URL for Anthropic, Azure, Gemini, Vertex, Bedrock and
    /// Cohere.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// `url() + "/v1"`: the OpenAI base URL.
    pub fn openai_base(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// `url() + "/token"`: the OAuth token endpoint for Vertex service accounts.
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.url())
    }

    /// Replaces the global faults.
    pub fn set_faults(&self, f: Faults) {
        self.inner.shared.faults.store(Arc::new(f));
    }

    /// Replaces one key's faults (they take precedence over the global ones for that key). This
    /// does not change which keys are valid.
    pub fn set_key_faults(&self, secret: &str, f: Faults) {
        self.inner.shared.set_key_faults(secret, f);
    }

    /// Removes one key's faults, so the global faults apply to it again.
    pub fn clear_key_faults(&self, secret: &str) {
        self.inner.shared.entry(secret).faults.store(None);
    }

    /// Base delay before every response's headers.
    pub fn set_latency(&self, d: Duration) {
        self.inner.shared.timing.set_latency(d);
    }

    /// Base delay before the first stream event.
    pub fn set_ttft(&self, d: Duration) {
        self.inner.shared.timing.set_ttft(d);
    }

    /// Base delay between stream events.
    pub fn set_chunk_delay(&self, d: Duration) {
        self.inner.shared.timing.set_chunk_delay(d);
    }

    /// Provider requests received (control and token requests excluded).
    pub fn requests(&self) -> u64 {
        self.inner.shared.total.load(Ordering::Relaxed)
    }

    /// Requests received with this key (API key, Bedrock access key id or Vertex token),
    /// including refused ones.
    pub fn requests_for_key(&self, key: &str) -> u64 {
        self.inner.shared.requests_for_key(key)
    }

    /// Requests received by one dialect.
    pub fn requests_for_dialect(&self, dialect: Dialect) -> u64 {
        self.inner.shared.per_dialect[dialect.index()].load(Ordering::Relaxed)
    }

    /// Successful `POST /token` calls.
    pub fn token_fetches(&self) -> u64 {
        self.inner.shared.tokens.fetches.load(Ordering::Relaxed)
    }

    /// Makes every Vertex access token issued so far invalid (the next call gets 401
    /// `UNAUTHENTICATED`, as with an expired token).
    pub fn expire_tokens(&self) {
        lock(&self.inner.shared.tokens.issued).clear();
    }

    /// The last provider request, any dialect.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.inner.shared.recorded).any.as_deref().cloned()
    }

    /// The last request served by one dialect.
    pub fn last_request_for(&self, dialect: Dialect) -> Option<RecordedRequest> {
        lock(&self.inner.shared.recorded).by_dialect[dialect.index()]
            .as_deref()
            .cloned()
    }

    /// Zeroes every counter (total, per key, per dialect, token fetches).
    pub fn reset_counts(&self) {
        self.inner.shared.reset_counts();
    }

    /// Stops accepting, closes every open connection and waits for the server task to end.
    pub async fn shutdown(self) {
        let _ = self.inner.shutdown.send(true);
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
