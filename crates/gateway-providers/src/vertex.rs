//! Gemini on Google Cloud Vertex AI, kind `vertex`.
//!
//! `POST {base}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`
//! (or `:streamGenerateContent?alt=sse`), with the same body as AI Studio ([`crate::gemini`]; the
//! role of every turn is always sent). The base defaults from the location:
//! `https://{location}-aiplatform.googleapis.com`, `https://aiplatform.googleapis.com` for `global`,
//! and the regional endpoints `https://aiplatform.{us,eu}.rep.googleapis.com` for `us` and `eu`.
//!
//! Authentication is an OAuth access token minted from the service-account key JSON of the call's
//! [`Credential::ServiceAccount`] (the two-legged JWT-bearer flow of google-auth-library): an RS256
//! JWT with `kid` = `private_key_id` and claims `iss` = `client_email`, `scope` = cloud-platform,
//! `aud` = `token_uri`, `iat`, `exp` = `iat + 3600` is posted as a form to the `token_uri` named in
//! the JSON (so tests can point it at a mock). [`TokenCache`] keeps one token per credential until
//! shortly before it expires; refreshes are single-flight (a `tokio` mutex held only around the
//! refresh, never while a request is in flight), and a 401 from Vertex forces one refresh and one
//! retry.
//!
//! Vertex's 429 "Resource exhausted" is shared capacity, so it is a provider-scope rate limit.
//!
//! Claude models on Vertex (model ids starting with `claude`, e.g. `claude-sonnet-4-5@20250929`)
//! go to `publishers/anthropic/models/{model}:rawPredict` (`:streamRawPredict` for streams) with
//! the Anthropic Messages body of [`crate::anthropic`] minus `model` and with
//! `"anthropic_version": "vertex-2023-10-16"`; answers and streams are Anthropic's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use gateway_core::types::{
    ChatRequest, ChatResponse, Embedding, EmbeddingRequest, EmbeddingResponse, Usage,
};
use gateway_core::{
    Call, Credential, Passthrough, Provider, ProviderError, ProviderResponse, ProviderStream,
    RateLimitInfo, Secret,
};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::anthropic::{
    self, messages_body_with, parse_message_with, rewrite_native, MessageStreamDecoder,
};
use crate::classify::{classify, classify_details, parse_error_body};
use crate::gemini::{
    classify_vertex, decode_response, encode_request, parse_response, to_bytes, unix_now,
    GeminiStream, GoogleApi, SignatureStore,
};
use crate::http::{bearer, join_url, json_request, HttpClient};
use crate::openai::{accept_event_stream, push_traceparent, unsupported_credential};
use crate::sse::SseStream;
use crate::stream::decode_stream;

/// The OAuth scope requested for Vertex calls.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Google's token endpoint, used when the key JSON names none.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// How long before its expiry a cached token is replaced (at most half its lifetime).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The location used when none is configured.
pub const DEFAULT_LOCATION: &str = "us-central1";

/// The default endpoint of a location.
pub fn default_base_url(location: &str) -> String {
    match location {
        "global" => "https://aiplatform.googleapis.com".to_owned(),
        "us" | "eu" => format!("https://aiplatform.{location}.rep.googleapis.com"),
        loc => format!("https://{loc}-aiplatform.googleapis.com"),
    }
}

// ---------------------------------------------------------------------------------------------
// Service-account tokens
// ---------------------------------------------------------------------------------------------

/// The fields of a service-account key JSON the gateway uses.
#[derive(Debug, Clone, Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
}

impl ServiceAccount {
    fn parse(json: &Secret) -> Result<Self, ProviderError> {
        serde_json::from_str(json.expose()).map_err(|e| ProviderError::Auth {
            status: 401,
            message: format!("the service-account key is not valid JSON of a service account: {e}"),
        })
    }

    fn token_uri(&self) -> &str {
        self.token_uri
            .as_deref()
            .filter(|u| !u.is_empty())
            .unwrap_or(DEFAULT_TOKEN_URI)
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// The signed JWT assertion for `sa` at `now` (Unix seconds).
fn assertion(sa: &ServiceAccount, now: u64) -> Result<String, ProviderError> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = sa.private_key_id.clone();
    let claims = Claims {
        iss: &sa.client_email,
        scope: SCOPE,
        aud: sa.token_uri(),
        iat: now,
        exp: now + 3600,
    };
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(sa.private_key.as_bytes()).map_err(|e| {
        ProviderError::Auth {
            status: 401,
            message: format!("the service-account private key is not a usable RSA PEM key: {e}"),
        }
    })?;
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| ProviderError::Auth {
        status: 401,
        message: format!("signing the service-account JWT: {e}"),
    })
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A token endpoint's refusal: a bad grant refuses the key; other failures are classified as usual.
fn classify_token_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let details = parse_error_body(body);
    if matches!(status, 400 | 401 | 403) {
        let description = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                v.get("error_description")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        return ProviderError::Auth {
            status,
            message: format!(
                "service-account token request refused: {} {description}",
                details.message
            )
            .trim_end()
            .to_owned(),
        };
    }
    classify_details(status, headers, &details)
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

#[derive(Debug, Default)]
struct TokenSlot {
    current: Mutex<Option<CachedToken>>,
    refresh: tokio::sync::Mutex<()>,
}

impl TokenSlot {
    /// The cached token, unless it is due for refresh or is the one just `rejected`.
    fn usable(&self, rejected: Option<&Secret>) -> Option<Secret> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|c| Instant::now() < c.refresh_at && Some(&c.token) != rejected)
            .map(|c| c.token.clone())
    }
}

/// OAuth access tokens per service account, shared by every call of a provider.
#[derive(Debug, Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<u64, Arc<TokenSlot>>>,
}

impl TokenCache {
    /// An empty cache.
    pub fn new() -> Self {
        TokenCache::default()
    }

    fn slot(&self, key: &Secret) -> Arc<TokenSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(slots.entry(key.fingerprint()).or_default())
    }

    /// A valid access token for the service account `key`, fetched from its `token_uri` through
    /// `client` when none is cached (or when the cached one is `rejected` by the API). Concurrent
    /// callers share one fetch.
    pub async fn token(
        &self,
        client: &HttpClient,
        key: &Secret,
        timeout: Duration,
        rejected: Option<&Secret>,
    ) -> Result<Secret, ProviderError> {
        let slot = self.slot(key);
        if let Some(t) = slot.usable(rejected) {
            return Ok(t);
        }
        let _single_flight = slot.refresh.lock().await;
        // Someone else may have refreshed while we waited.
        if let Some(t) = slot.usable(rejected) {
            return Ok(t);
        }
        let sa = ServiceAccount::parse(key)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let jwt = assertion(&sa, now)?;
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}"
        );
        let mut req = json_request(Method::POST, sa.token_uri(), &[], Bytes::from(form))?;
        req.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let started = Instant::now();
        let resp = client.fetch(req, timeout, classify_token_error).await?;
        let answer: TokenAnswer = serde_json::from_slice(resp.body())
            .map_err(|e| ProviderError::Protocol(format!("token endpoint answer: {e}")))?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        let token = Secret::new(answer.access_token);
        *slot.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(CachedToken {
            token: token.clone(),
            refresh_at: started + lifetime - margin,
        });
        Ok(token)
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------------------------

/// The `:predict` body of a Vertex text-embedding model.
pub fn encode_embeddings(texts: &[String], dimensions: Option<u32>) -> Value {
    let instances: Vec<Value> = texts
        .iter()
        .map(|t| json!({ "content": t, "task_type": "RETRIEVAL_DOCUMENT" }))
        .collect();
    let mut body = json!({ "instances": instances });
    if let (Some(d), Value::Object(m)) = (dimensions, &mut body) {
        m.insert("parameters".into(), json!({ "outputDimensionality": d }));
    }
    body
}

/// Converts a `:predict` embeddings answer (`predictions[].embeddings.{values,statistics}`).
pub fn decode_embeddings(body: &Value, model: &str) -> Result<EmbeddingResponse, ProviderError> {
    let predictions = body
        .get("predictions")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ProviderError::Protocol("vertex embeddings answer has no predictions".into())
        })?;
    let mut data = Vec::with_capacity(predictions.len());
    let mut tokens = 0u64;
    for (i, p) in predictions.iter().enumerate() {
        let e = p.get("embeddings").unwrap_or(&Value::Null);
        let values: Vec<f32> = serde_json::from_value(
            e.get("values").cloned().unwrap_or(Value::Null),
        )
        .map_err(|err| ProviderError::Protocol(format!("vertex embedding values: {err}")))?;
        tokens = tokens.saturating_add(
            e.pointer("/statistics/token_count")
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map_or(0, |x| x as u64),
        );
        data.push(Embedding {
            object: "embedding".into(),
            index: u32::try_from(i).unwrap_or(u32::MAX),
            embedding: values,
        });
    }
    Ok(EmbeddingResponse {
        object: "list".into(),
        data,
        model: model.to_owned(),
        usage: (tokens > 0).then(|| Usage::new(tokens, 0, 0)),
    })
}

// ---------------------------------------------------------------------------------------------
// Claude on Vertex
// ---------------------------------------------------------------------------------------------

/// The `anthropic_version` Vertex expects in Claude bodies.
pub const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// Whether `model` is a Claude model, served through the Anthropic publisher's `rawPredict`.
pub fn is_claude(model: &str) -> bool {
    model.starts_with("claude")
}

/// The `rawPredict` body: the Anthropic Messages body without `model`, with the Vertex
/// `anthropic_version` (thinking blocks replayed from `thinking`, see
/// [`anthropic::messages_body_with`]).
pub fn claude_body(
    request: &ChatRequest,
    model: &str,
    stream: bool,
    thinking: Option<&SignatureStore>,
) -> Value {
    let mut body = messages_body_with(request, model, stream, thinking);
    if let Value::Object(m) = &mut body {
        m.remove("model");
        m.insert(
            "anthropic_version".into(),
            Value::from(VERTEX_ANTHROPIC_VERSION),
        );
    }
    body
}

/// The `rawPredict` body for a client's own Messages request ([`crate::anthropic::native_body`]):
/// its members as written, without `model`, with the Vertex `anthropic_version`.
pub fn claude_native_body(body: &[u8], stream: bool) -> Result<Bytes, ProviderError> {
    let lead = format!("\"anthropic_version\":\"{VERTEX_ANTHROPIC_VERSION}\"");
    rewrite_native(body, lead.as_bytes(), stream)
}

/// The `rawPredict` body for `request`: the client's own when it wrote one and takes answers as
/// they come, else [`claude_body`].
fn claude_upstream_body(
    call: &Call,
    request: &ChatRequest,
    stream: bool,
    thinking: &SignatureStore,
) -> Result<Bytes, ProviderError> {
    match anthropic::native(call, request) {
        Some(native) => claude_native_body(&native.body, stream),
        None => to_bytes(&claude_body(request, &call.model, stream, Some(thinking))),
    }
}

/// Errors of `rawPredict`: Anthropic's own error bodies pass through; Google's (quota, auth) do not.
pub fn classify_claude(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let anthropic_shaped = serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|v| v.get("type").and_then(Value::as_str) == Some("error"));
    if anthropic_shaped {
        classify(status, headers, body)
    } else {
        classify_vertex(status, headers, body)
    }
}

// ---------------------------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------------------------

/// Settings of a Vertex provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexConfig {
    /// The Google Cloud project; `None` to use the `project_id` of each service-account key.
    pub project: Option<String>,
    /// The location (`us-central1`, `europe-west4`, `global`...).
    pub location: String,
    /// The endpoint; `None` for [`default_base_url`] of the location.
    pub base_url: Option<String>,
}

/// The Vertex AI Gemini adapter.
#[derive(Debug, Clone)]
pub struct VertexProvider {
    base_url: Arc<str>,
    project: Option<Arc<str>>,
    location: Arc<str>,
    client: HttpClient,
    signatures: Arc<SignatureStore>,
    tokens: Arc<TokenCache>,
}

impl VertexProvider {
    /// A provider for `config`, sending through `client`.
    pub fn new(config: &VertexConfig, client: HttpClient) -> Self {
        let base = config
            .base_url
            .clone()
            .filter(|b| !b.trim().is_empty())
            .unwrap_or_else(|| default_base_url(&config.location));
        VertexProvider {
            base_url: base.trim_end_matches('/').into(),
            project: config
                .project
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(Into::into),
            location: config.location.as_str().into(),
            client,
            signatures: Arc::new(SignatureStore::new()),
            tokens: Arc::new(TokenCache::new()),
        }
    }

    /// The URL of `method` for `model` in `project`: under the `anthropic` publisher for Claude
    /// models, `google` otherwise. A model given as a full resource name
    /// (`projects/.../endpoints/...`) is used as is.
    pub fn url(&self, project: &str, model: &str, method: &str) -> String {
        if model.starts_with("projects/") {
            return join_url(&self.base_url, &format!("/v1/{model}:{method}"));
        }
        let publisher = if is_claude(model) {
            "anthropic"
        } else {
            "google"
        };
        join_url(
            &self.base_url,
            &format!(
                "/v1/projects/{project}/locations/{}/publishers/{publisher}/models/{model}:{method}",
                self.location
            ),
        )
    }

    /// The service-account key of the call, and the project to bill.
    fn account(&self, call: &Call) -> Result<(Secret, String), ProviderError> {
        let Credential::ServiceAccount(key) = call.credential.as_ref() else {
            return Err(unsupported_credential("vertex", &call.credential));
        };
        let project = match &self.project {
            Some(p) => p.to_string(),
            None => ServiceAccount::parse(key)?
                .project_id
                .ok_or_else(|| ProviderError::Auth {
                    status: 401,
                    message:
                        "no Vertex project configured and the service-account key has no project_id"
                            .into(),
                })?,
        };
        Ok((key.clone(), project))
    }

    fn headers(
        &self,
        call: &Call,
        token: &Secret,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, ProviderError> {
        let mut headers = vec![(AUTHORIZATION, bearer(token.expose())?)];
        push_traceparent(&mut headers, call)?;
        Ok(headers)
    }

    /// Sends a request with a token, refreshing the token once if Vertex answers 401. `send` gets
    /// the headers and what is left of the call's time budget (the token fetch counts against it).
    async fn with_token<T, F, Fut>(
        &self,
        call: &Call,
        key: &Secret,
        send: F,
    ) -> Result<T, ProviderError>
    where
        F: Fn(Vec<(HeaderName, HeaderValue)>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let deadline = Instant::now() + call.timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let token = self.tokens.token(&self.client, key, left(), None).await?;
        match send(self.headers(call, &token)?, left()).await {
            Err(ProviderError::Auth { status: 401, .. }) => {
                let fresh = self
                    .tokens
                    .token(&self.client, key, left(), Some(&token))
                    .await?;
                send(self.headers(call, &fresh)?, left()).await
            }
            other => other,
        }
    }
}

#[async_trait]
impl Provider for VertexProvider {
    fn kind(&self) -> &str {
        "vertex"
    }

    fn supports(&self, model: &str, request: &ChatRequest) -> Result<(), ProviderError> {
        if is_claude(model) {
            crate::one_answer_only("Claude on Vertex", request)
        } else {
            gateway_core::provider::responses_unsupported("vertex", request)
        }
    }

    async fn chat(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderResponse<ChatResponse>, ProviderError> {
        let (key, project) = self.account(call)?;
        if is_claude(&call.model) {
            let body = claude_upstream_body(call, request, false, &self.signatures)?;
            let url = self.url(&project, &call.model, "rawPredict");
            let resp = self
                .with_token(call, &key, |headers, timeout| {
                    let req = json_request(Method::POST, &url, &headers, body.clone());
                    async move { self.client.fetch(req?, timeout, classify_claude).await }
                })
                .await?;
            let passthrough = call.passthrough == Passthrough::AnthropicMessages;
            let remember = (!passthrough).then_some(&*self.signatures);
            let mut body = parse_message_with(resp.body(), remember)?;
            if passthrough {
                body.raw = Some(resp.body().clone());
            }
            return Ok(ProviderResponse {
                body,
                rate_limit: RateLimitInfo::default(),
            });
        }
        let body = to_bytes(&encode_request(request, &call.model, &self.signatures)?)?;
        let url = self.url(&project, &call.model, "generateContent");
        let resp = self
            .with_token(call, &key, |headers, timeout| {
                let req = json_request(Method::POST, &url, &headers, body.clone());
                async move { self.client.fetch(req?, timeout, classify_vertex).await }
            })
            .await?;
        let wire = parse_response(resp.body())?;
        Ok(ProviderResponse {
            body: decode_response(wire, &call.model, unix_now(), &self.signatures),
            rate_limit: RateLimitInfo::default(),
        })
    }

    /// Claude models count on Vertex's Anthropic `count-tokens:rawPredict` (the Anthropic count
    /// body, `model` the Vertex model id; the client's own body when it wrote one), Gemini
    /// models on `:countTokens` (contents, system instruction and tools).
    async fn count_tokens(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<Option<u64>, ProviderError> {
        let (key, project) = self.account(call)?;
        if !is_claude(&call.model) {
            let mut body = encode_request(request, &call.model, &self.signatures)?;
            if let Value::Object(o) = &mut body {
                o.retain(|k, _| matches!(k.as_str(), "contents" | "systemInstruction" | "tools"));
            }
            let body = to_bytes(&body)?;
            let url = self.url(&project, &call.model, "countTokens");
            let resp = self
                .with_token(call, &key, |headers, timeout| {
                    let req = json_request(Method::POST, &url, &headers, body.clone());
                    async move { self.client.fetch(req?, timeout, classify_vertex).await }
                })
                .await?;
            return crate::gemini::parse_count(resp.body()).map(Some);
        }
        let body = match anthropic::native(call, request) {
            Some(native) => anthropic::native_body(&native.body, &call.model, false)?,
            None => to_bytes(&anthropic::count_tokens_body(
                request,
                &call.model,
                &self.signatures,
            ))?,
        };
        let url = join_url(
            &self.base_url,
            &format!(
                "/v1/projects/{project}/locations/{}/publishers/anthropic/models/count-tokens:rawPredict",
                self.location
            ),
        );
        let resp = self
            .with_token(call, &key, |headers, timeout| {
                let req = json_request(Method::POST, &url, &headers, body.clone());
                async move { self.client.fetch(req?, timeout, classify_claude).await }
            })
            .await?;
        anthropic::parse_count(resp.body()).map(Some)
    }

    async fn chat_stream(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderStream, ProviderError> {
        let (key, project) = self.account(call)?;
        if is_claude(&call.model) {
            let body = claude_upstream_body(call, request, true, &self.signatures)?;
            let url = self.url(&project, &call.model, "streamRawPredict");
            let resp = self
                .with_token(call, &key, |headers, timeout| {
                    let req = json_request(Method::POST, &url, &headers, body.clone());
                    async move {
                        let mut req = req?;
                        accept_event_stream(&mut req);
                        self.client.open_stream(req, timeout, classify_claude).await
                    }
                })
                .await?;
            let passthrough = call.passthrough == Passthrough::AnthropicMessages;
            let events = SseStream::new(resp.into_body()).idle_timeout(call.timeout);
            let events = if passthrough {
                events.named_runs()
            } else {
                events
            };
            return Ok(ProviderStream {
                chunks: decode_stream(
                    events,
                    MessageStreamDecoder::new()
                        .passthrough(passthrough)
                        .remember_thinking((!passthrough).then(|| Arc::clone(&self.signatures))),
                ),
                rate_limit: RateLimitInfo::default(),
            });
        }
        let body = to_bytes(&encode_request(request, &call.model, &self.signatures)?)?;
        let url = self.url(&project, &call.model, "streamGenerateContent?alt=sse");
        let resp = self
            .with_token(call, &key, |headers, timeout| {
                let req = json_request(Method::POST, &url, &headers, body.clone());
                async move {
                    let mut req = req?;
                    accept_event_stream(&mut req);
                    self.client.open_stream(req, timeout, classify_vertex).await
                }
            })
            .await?;
        let events = SseStream::new(resp.into_body()).idle_timeout(call.timeout);
        let decoder = GeminiStream::new(
            &call.model,
            unix_now(),
            Arc::clone(&self.signatures),
            GoogleApi::Vertex,
        );
        Ok(ProviderStream {
            chunks: decode_stream(events, decoder),
            rate_limit: RateLimitInfo::default(),
        })
    }

    async fn embed(
        &self,
        call: &Call,
        request: &EmbeddingRequest,
    ) -> Result<ProviderResponse<EmbeddingResponse>, ProviderError> {
        let texts = request.input.texts();
        if texts.is_empty() {
            return Err(ProviderError::BadRequest {
                status: 400,
                message: "vertex embeddings take text input, not token arrays".into(),
                param: Some("input".into()),
                code: None,
            });
        }
        let (key, project) = self.account(call)?;
        let url = self.url(&project, &call.model, "predict");
        // `:predict` takes at most 250 instances; `gemini-embedding-001` one.
        let max = if call.model.contains("gemini-embedding") {
            1
        } else {
            250
        };
        crate::embed_in_batches(&texts, max, |batch| {
            let (url, key) = (&url, &key);
            async move {
                let body = to_bytes(&encode_embeddings(batch, request.dimensions))?;
                let resp = self
                    .with_token(call, key, |headers, timeout| {
                        let req = json_request(Method::POST, url, &headers, body.clone());
                        async move { self.client.fetch(req?, timeout, classify_vertex).await }
                    })
                    .await?;
                let value: Value = serde_json::from_slice(resp.body())
                    .map_err(|e| ProviderError::Protocol(format!("vertex embeddings: {e}")))?;
                Ok(ProviderResponse {
                    body: decode_embeddings(&value, &call.model)?,
                    rate_limit: RateLimitInfo::default(),
                })
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn default_endpoints() {
        assert_eq!(
            default_base_url("us-central1"),
            "https://us-central1-aiplatform.googleapis.com"
        );
        assert_eq!(
            default_base_url("global"),
            "https://aiplatform.googleapis.com"
        );
        assert_eq!(
            default_base_url("eu"),
            "https://aiplatform.eu.rep.googleapis.com"
        );
    }

    #[test]
    fn urls() {
        let client = HttpClient::new(&crate::HttpConfig::default()).expect("client");
        let p = VertexProvider::new(
            &VertexConfig {
                project: Some("p1".into()),
                location: "europe-west4".into(),
                base_url: None,
            },
            client,
        );
        assert_eq!(
            p.url("p1", "gemini-2.5-flash", "streamGenerateContent?alt=sse"),
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/p1/locations/europe-west4/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            p.url("p1", "projects/p1/locations/europe-west4/endpoints/123", "generateContent"),
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/p1/locations/europe-west4/endpoints/123:generateContent"
        );
    }

    #[test]
    fn claude_goes_to_the_anthropic_publisher() {
        let client = HttpClient::new(&crate::HttpConfig::default()).expect("client");
        let p = VertexProvider::new(
            &VertexConfig {
                project: Some("p1".into()),
                location: "us-east5".into(),
                base_url: None,
            },
            client,
        );
        assert_eq!(
            p.url("p1", "claude-sonnet-4-5@20250929", "streamRawPredict"),
            "https://us-east5-aiplatform.googleapis.com/v1/projects/p1/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"
        );
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "x", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10
        }))
        .expect("request");
        let body = claude_body(&req, "claude-sonnet-4-5@20250929", true, None);
        assert!(body.get("model").is_none(), "no model in the body: {body}");
        assert_eq!(body["anthropic_version"], VERTEX_ANTHROPIC_VERSION);
        assert_eq!(body["stream"], true);
        assert_eq!(body["max_tokens"], 10);

        let overloaded = classify_claude(
            529,
            &HeaderMap::new(),
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert!(
            matches!(overloaded, ProviderError::Overloaded { .. }),
            "{overloaded:?}"
        );
        let exhausted = classify_claude(
            429,
            &HeaderMap::new(),
            br#"{"error":{"code":429,"message":"Resource exhausted. Please try again later.","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert!(
            matches!(
                exhausted,
                ProviderError::RateLimited {
                    scope: gateway_core::RateLimitScope::Provider,
                    ..
                }
            ),
            "{exhausted:?}"
        );
    }

    #[test]
    fn jwt_assertion_has_the_documented_header_and_claims() {
        let json = Secret::new(
            json!({
                "type": "service_account",
                "client_email": "sa@p.iam.gserviceaccount.com",
                "private_key_id": "kid-1",
                "private_key": TEST_KEY,
                "token_uri": "http://127.0.0.1:9/token",
                "project_id": "p"
            })
            .to_string(),
        );
        let sa = ServiceAccount::parse(&json).expect("parses");
        let jwt = assertion(&sa, 1_730_000_000).expect("signs");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        use base64::Engine as _;
        let decode = |s: &str| -> Value {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .expect("base64url");
            serde_json::from_slice(&bytes).expect("json")
        };
        expect![[r#"{"alg":"RS256","kid":"kid-1","typ":"JWT"}"#]]
            .assert_eq(&decode(parts[0]).to_string());
        expect![[r#"{"aud":"http://127.0.0.1:9/token","exp":1730003600,"iat":1730000000,"iss":"sa@p.iam.gserviceaccount.com","scope":"https://www.googleapis.com/auth/cloud-platform"}"#]]
            .assert_eq(&decode(parts[1]).to_string());
    }

    #[test]
    fn bad_keys_refuse_the_credential() {
        let err = ServiceAccount::parse(&Secret::new("not json")).unwrap_err();
        assert!(matches!(err, ProviderError::Auth { .. }), "{err:?}");
        let sa = ServiceAccount::parse(&Secret::new(
            json!({"client_email": "x", "private_key": "garbage"}).to_string(),
        ))
        .expect("parses");
        assert_eq!(sa.token_uri(), DEFAULT_TOKEN_URI);
        let err = assertion(&sa, 0).unwrap_err();
        assert!(matches!(err, ProviderError::Auth { .. }), "{err:?}");
        let err = classify_token_error(
            400,
            &HeaderMap::new(),
            br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
        );
        assert!(
            matches!(err, ProviderError::Auth { status: 400, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn embeddings_conversion() {
        expect![[r#"{"instances":[{"content":"a","task_type":"RETRIEVAL_DOCUMENT"}],"parameters":{"outputDimensionality":8}}"#]]
            .assert_eq(&encode_embeddings(&["a".into()], Some(8)).to_string());
        let resp = decode_embeddings(
            &json!({"predictions": [
                {"embeddings": {"values": [0.5, 0.25], "statistics": {"token_count": 3, "truncated": false}}},
                {"embeddings": {"values": [1.0, 0.0], "statistics": {"token_count": 2}}}
            ]}),
            "text-embedding-005",
        )
        .expect("converts");
        expect![[r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,0.25]},{"object":"embedding","index":1,"embedding":[1.0,0.0]}],"model":"text-embedding-005","usage":{"prompt_tokens":5,"completion_tokens":0,"total_tokens":5}}"#]]
            .assert_eq(&serde_json::to_string(&resp).expect("json"));
    }

    /// An RSA 2048 key generated for this test only (`openssl genrsa 2048`); it protects nothing.
    const TEST_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDdaHdmWKFAcWWc\n\
4fjrW8xXkJdyTBhDMl6tJ8XfxXrClI7rF6tSonl+My4YWqTVMUOvrXAhy1xwfkW6\n\
JnBKM0RL0bGUUS+FrSCKsygNOlaFHwesZ6cdsnpgGUfKaes6LR7Bucw7kARzErUy\n\
N4hbyHmv2i7C3xzkAEJWW+cycWBH/9nFLNKXlSg3Aa3pZblbYqqAG2Pr39XS5NFO\n\
z1JN+AH2c42Sr6mtgN3PZ5HCDqkT55UWZtk1iUHTRel4kQlFQrlHIcRuehwkHDlP\n\
yDJaCF7LrJRKRuuyePWjTb03nnFo7/pt0TipHT0Z/RM+OtnHnbjRgwDrZo1vG4a3\n\
CL+M1S2BAgMBAAECggEAHECgGc599x3xODFqpMfQPa088hANOYfkJmbQnGMT7N/t\n\
k8ivqyoB5E1uGJv6dBzm9PQl/p33VAB878nHYuSDVsRxi0pHzOBAaop9diCnWTHS\n\
Nhj87XBwprIbI9RbuI744YIOslwIgVGWDwwgiYu9oWevN10mj96LmH7+M8TdYxph\n\
PHrAG9yL7bInAF8lx64iJ35tL1GVEQxv9mto6ErUdAe+1sQmxGMsD9hXVcxJvuKA\n\
6P35dwlZZGF6DPKLxhNa0di/+oIuRexORL+zGFwxLAgKgvTKkNfq86GzMJzcXQA7\n\
KZHsVjlcBYwd+lybfRcFQYj8YIQZ5CEt6RdKYETP5QKBgQD0qkhVHXYog0dUhaTK\n\
USdhK922l83Y9KqIV9WgZyGG3pS6AjskwvzIrbogrjfJJAJR6gkQxnbwYweT9Jqg\n\
eQHcIueMfMJeglECLcnc7p2yunybsOFK2jHA322l+bEAmhkoRRxggZhyuZYqaMN1\n\
L/2d4eAWxkW58Da15F/X+0DnvQKBgQDnqlsV86FjoJfOIp1R3E8FWfKUnAH/HTJB\n\
ts8ajNLkR7fsMum7Nns40SAKJfNALP1GrbKaL8GmcsvDaDHOGMGe8IWPU2NN7QUu\n\
TLDCmGJty60sMCTUbfK1R7tM+q/Tw+paoB74nSOa/AdiWT2SUgtQHW6d5+uaPJQb\n\
KdI1b5wHFQKBgQDzqD2+3kdVE2BPMYUqo2V3ZUs5U7cB8K+AdxDd3LdL7JDrKdui\n\
wbkjVbg+YaJW41CYKV374dqDjev3EiuH0triU7SLeZfMrTVl2Rnmt5A/dW8xUhcc\n\
B25zKU+2cpMvCUgyjZk0FvwujNqaw5icNT37JP6ZT74S7cJepOA6ZRN/dQKBgDuH\n\
ArC5UZcQBPHq4xHN0mBFpJebHsg28FsCZmUkGmyeIRyIWJbKgQ8wbVMuPTsYVFx8\n\
9Y+5BcGHbeRgOawDoHz+wNL7UmELrnEfM6xNC726wFzCYjRTrDH4pKA7KkL37Jgs\n\
3Mh1WFjSufMDi1a1zkJfzbS1i0yulEAGlwU0EJuhAoGBAJ1qH8h5Fa2geK7ItVra\n\
GZegq95F1sePlmZfx15avtJxp1Btt2nOfkd3OSZUcP5W2/mwfqI3Q6NySm5RPxil\n\
iy/wch8dzC/ZrVyqTFY73uzV79p/Y8NO8h1wjCvSKJw1vK8fwKdXFTe56xna4ggb\n\
2oS4ViffDD8xJiYObpUyzeZA\n\
-----END PRIVATE KEY-----\n\
";
}
