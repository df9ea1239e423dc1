//! Request handling: routing, body limits, the client dialects, streaming, admin API.

use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_core::Stream;
use gateway_core::extend::{AdminRoutes, Free, Pricing};
use gateway_core::observe::{decimal_digits, hex_digits};
use gateway_core::types::{ChatRequest, NativeRequest, Usage};
use gateway_core::{
    Admission, AdmissionRequest, AllowAll, Engine, EngineStream, Failure, Observer, Passthrough,
    Permit, RequestOptions, RequestRecord,
};
use gateway_providers::http::{HttpClient, HttpConfig};
use http::header::HeaderName;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;

use crate::anthropic;
use crate::assemble::{engine_config, MockPool};
use crate::cache::{CacheKey, Control, Hit, PartialKey, ResponseCache};
use crate::config::{Config, ConfigError};
use crate::errors::{ApiError, Dialect, ErrorKind};
use crate::openai;

/// The response body type of every handler.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Settings read on every request, swapped on reload.
#[derive(Debug)]
pub struct Runtime {
    /// The configuration as loaded (secrets included; never serialised unredacted).
    pub config: Config,
    /// `/admin/*` token; empty disables the admin API.
    pub admin_token: String,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// `[logging] content`: requests and answers go into the request log.
    pub log_content: bool,
    /// The answer cache, when `[cache] enabled` (a reload starts an empty one).
    pub cache: Option<Arc<ResponseCache>>,
}

/// Pluggable parts of a gateway.
#[derive(Clone)]
pub struct Extensions {
    /// Who may call, and their limits.
    pub admission: Arc<dyn Admission>,
    /// Sees every attempt and request.
    pub observer: Arc<dyn Observer>,
    /// Computes cost.
    pub pricing: Arc<dyn Pricing>,
    /// Renders `/metrics`.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Extra admin routes (`/admin/...`), tried before the built-in ones.
    pub admin: Option<Arc<dyn AdminRoutes>>,
    /// Called with a new configuration before it is swapped in (reload); an error refuses it.
    pub on_reload: Option<ReloadHook>,
    /// Your own providers, by kind name: a `[[providers]]` entry whose `kind` is one of these
    /// uses the given adapter (see `examples/custom_provider.rs`).
    pub providers: std::collections::HashMap<String, Arc<dyn gateway_core::Provider>>,
}

impl Default for Extensions {
    fn default() -> Self {
        Extensions {
            admission: Arc::new(AllowAll),
            observer: Arc::new(gateway_core::observe::NoopObserver),
            pricing: Arc::new(Free),
            metrics: None,
            admin: None,
            on_reload: None,
            providers: std::collections::HashMap::new(),
        }
    }
}

/// A reload hook (see [`Extensions::on_reload`]).
pub type ReloadHook = Arc<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

/// Several admin route sets, tried in order.
pub struct AdminChain(pub Vec<Arc<dyn AdminRoutes>>);

#[async_trait::async_trait]
impl AdminRoutes for AdminChain {
    async fn handle(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Option<(u16, serde_json::Value)> {
        for r in &self.0 {
            if let Some(out) = r.handle(method, path, query, body).await {
                return Some(out);
            }
        }
        None
    }
}

/// The gateway: engine, settings and extensions.
pub struct Gateway {
    engine: Arc<Engine>,
    runtime: ArcSwap<Runtime>,
    config_path: Option<PathBuf>,
    client: HttpClient,
    mocks: MockPool,
    ext: ArcSwap<Extensions>,
    reload_lock: tokio::sync::Mutex<()>,
    counter: AtomicU64,
    /// The key behind each stored Responses answer (see [`crate::affinity`]).
    responses: crate::affinity::ResponseAffinity,
    /// Set when the shutdown grace period ends with requests still under way: the streams it
    /// cuts are recorded as cut by the shutdown, not as left by their clients.
    cut: Arc<std::sync::atomic::AtomicBool>,
}

/// Responses remembered for `previous_response_id` (about 100 bytes each).
const RESPONSE_AFFINITY_CAPACITY: usize = 50_000;

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client could not be built.
    #[error("upstream http client: {0}")]
    Http(String),
}

impl Gateway {
    /// Builds a gateway from a configuration (and the file it came from, for reloads).
    pub async fn new(
        config: Config,
        config_path: Option<PathBuf>,
        ext: Extensions,
    ) -> Result<Arc<Self>, StartError> {
        let s = &config.server;
        let client = HttpClient::new(&HttpConfig {
            pool_max_idle_per_host: s.pool_max_idle_per_host,
            pool_idle_timeout: Duration::from_millis(s.pool_idle_timeout_ms),
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            proxy: s.upstream_proxy.clone(),
            no_proxy: s.upstream_no_proxy.clone(),
            http2: s.upstream_http2,
            extra_roots: match &s.upstream_ca_file {
                Some(path) => crate::serve::pem_certificates(path)
                    .map_err(|e| StartError::Http(format!("server.upstream_ca_file: {e}")))?,
                None => Vec::new(),
            },
        })
        .map_err(|e| StartError::Http(e.to_string()))?;
        let mocks = MockPool::default();
        let ec = engine_config(&config, &client, &mocks, &ext.providers).await?;
        let engine = Engine::with_parts(
            ec,
            Arc::new(gateway_core::signals::TokioClock::new()),
            Arc::clone(&ext.observer),
        )
        .map_err(|e| ConfigError::Invalid(e.problems))?;
        Ok(Arc::new(Gateway {
            engine: Arc::new(engine),
            runtime: ArcSwap::from_pointee(runtime_of(config)),
            config_path,
            client,
            mocks,
            ext: ArcSwap::from_pointee(ext),
            reload_lock: tokio::sync::Mutex::new(()),
            counter: AtomicU64::new(0),
            responses: crate::affinity::ResponseAffinity::new(RESPONSE_AFFINITY_CAPACITY),
            cut: Arc::default(),
        }))
    }

    /// How long a client has to send a request's head (`[server] header_read_timeout_ms`;
    /// `None` when disabled).
    pub fn header_read_timeout(&self) -> Option<Duration> {
        let ms = self.runtime.load().config.server.header_read_timeout_ms;
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// The shutdown grace period is over: what is still under way is about to be cut.
    pub fn mark_cut(&self) {
        self.cut.store(true, Ordering::Release);
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The running mock upstream of a `mock` provider.
    pub fn mock(&self, provider: &str) -> Option<gateway_mock::MockServer> {
        self.mocks.server(provider)
    }

    /// The current settings.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Replaces the extensions (used when governance and telemetry are built after the gateway).
    pub fn set_extensions(&self, ext: Extensions) {
        self.ext.store(Arc::new(ext));
    }

    /// Re-reads the configuration file and swaps it in; on error the running one stays.
    pub async fn reload(&self) -> Result<(), StartError> {
        let Some(path) = &self.config_path else {
            return Err(ConfigError::Invalid(vec![
                "no configuration file to reload from".to_owned()
            ])
            .into());
        };
        let config = Config::from_file(path)?;
        self.apply(config).await
    }

    /// Validates `config` and swaps it in atomically; on error the running one stays.
    pub async fn apply(&self, config: Config) -> Result<(), StartError> {
        let _guard = self.reload_lock.lock().await;
        for field in &config.unknown_fields {
            tracing::warn!(field = %field, "unknown configuration field ignored (a typo?)");
        }
        let ext = self.ext.load_full();
        let ec = engine_config(&config, &self.client, &self.mocks, &ext.providers).await?;
        if let Some(hook) = &ext.on_reload {
            hook(&config).map_err(|e| ConfigError::Invalid(vec![e]))?;
        }
        self.engine
            .reload(ec)
            .map_err(|e| ConfigError::Invalid(e.problems))?;
        self.runtime.store(Arc::new(runtime_of(config)));
        Ok(())
    }

    fn request_id(&self, headers: &HeaderMap) -> Arc<str> {
        if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
            if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
                return Arc::from(id);
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // `req_`, 12 random hex digits, 6 of a counter.
        let mut id = [0u8; 22];
        id[..4].copy_from_slice(b"req_");
        hex_digits(&mut id[4..16], u128::from(fastrand::u64(..) >> 16));
        hex_digits(&mut id[16..], u128::from(n));
        Arc::from(std::str::from_utf8(&id).unwrap_or("req_unknown"))
    }

    /// Handles one HTTP request.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let request_id = self.request_id(req.headers());
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let dialect = if path.ends_with("/messages") || path.ends_with("/messages/count_tokens") {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        };
        // With virtual keys, every API request needs one (listing models and counting tokens
        // included; inference endpoints are checked with their limits by admission).
        let gated = path.starts_with("/v1/models")
            || path == "/models"
            || path.ends_with("/messages/count_tokens")
            || path.starts_with("/v1/responses/");
        if gated {
            if let Some(e) = self.unauthorized(req.headers()) {
                let mut r = error_response(&e, dialect, &request_id);
                set_request_id(r.headers_mut(), &request_id, dialect);
                return r;
            }
        }
        let mut resp = match (method.clone(), path.as_str()) {
            (Method::GET, "/health" | "/healthz" | "/v1/health") => {
                json_response(200, &json!({"status": "ok"}))
            }
            (Method::GET, "/metrics") => {
                let ext = self.ext.load();
                match &ext.metrics {
                    Some(render) => {
                        let mut r = Response::new(full(render()));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        r
                    }
                    None => Response::new(full("")),
                }
            }
            (Method::GET, "/v1/models" | "/models") => {
                let models = self.visible_models(req.headers());
                let page = openai::ModelPage::from_query(
                    req.uri().query().unwrap_or_default(),
                    req.headers().contains_key("anthropic-version"),
                );
                match page.and_then(|page| page.encode(&models)) {
                    Ok(body) => {
                        let mut r = Response::new(full(body));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        r
                    }
                    Err(e) => {
                        // The Anthropic SDK reads its own error shape.
                        let dialect = if req.headers().contains_key("anthropic-version") {
                            Dialect::Anthropic
                        } else {
                            dialect
                        };
                        error_response(&e, dialect, &request_id)
                    }
                }
            }
            (Method::GET, p) if p.starts_with("/v1/models/") => {
                let id = &p["/v1/models/".len()..];
                let id = percent_decode(id);
                // The Anthropic SDK reads its own error shape (it sends `anthropic-version`).
                let dialect = if req.headers().contains_key("anthropic-version") {
                    Dialect::Anthropic
                } else {
                    dialect
                };
                let listed = self
                    .visible_models(req.headers())
                    .into_iter()
                    .find(|m| m.id == id);
                // A name the gateway serves without listing it (a bare model some key allows, a
                // provider's model addressed directly) is a model too.
                let served = || {
                    (self.engine.resolves(&id)
                        && self
                            .authorize(presented_key(req.headers()).as_deref(), &id)
                            .is_ok())
                    .then(|| gateway_core::types::ModelInfo {
                        id: id.clone(),
                        owned_by: "gateway".to_owned(),
                        created: 0,
                    })
                };
                match listed.or_else(served) {
                    Some(m) => json_response(200, &openai::model_json(&m)),
                    None => error_response(
                        &ApiError::new(
                            404,
                            ErrorKind::NotFound,
                            format!("The model `{id}` does not exist"),
                        )
                        .code("model_not_found"),
                        dialect,
                        &request_id,
                    ),
                }
            }
            // One call site for both dialects (the path chose `dialect`): the compiler gives each
            // awaited call its own room in this future, and hyper keeps one of these futures per
            // connection. The large, rarely taken ones below (embeddings, admin) are boxed for
            // the same reason.
            (
                Method::POST,
                "/v1/chat/completions"
                | "/chat/completions"
                | "/openai/v1/chat/completions"
                | "/v1/messages"
                | "/anthropic/v1/messages"
                | "/messages"
                | "/v1/responses"
                | "/responses"
                | "/openai/v1/responses"
                | "/v1/completions"
                | "/completions"
                | "/openai/v1/completions",
            ) => {
                let api = if path.ends_with("/responses") {
                    Api::Responses
                } else if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
                    Api::Completions
                } else if dialect == Dialect::Anthropic {
                    Api::Messages
                } else {
                    Api::ChatCompletions
                };
                self.chat(req, api, &request_id, started).await
            }
            (Method::POST, "/v1/messages/count_tokens" | "/anthropic/v1/messages/count_tokens") => {
                Box::pin(self.count_tokens(req, &request_id)).await
            }
            (Method::POST, "/v1/embeddings" | "/embeddings" | "/openai/v1/embeddings") => {
                Box::pin(self.embeddings(req, &request_id, started)).await
            }
            (Method::POST, p) if forwarded_endpoint(p).is_some() => {
                let endpoint = forwarded_endpoint(p).unwrap_or(&FORWARDED[0]);
                Box::pin(self.forward(req, endpoint, &request_id, started)).await
            }
            (_, p) if p.starts_with("/admin/") || p == "/admin" => Box::pin(self.admin(req)).await,
            (_, p) if p.starts_with("/v1/responses/") => {
                Box::pin(self.stored_response(req, &request_id)).await
            }
            (
                _,
                "/v1/chat/completions"
                | "/v1/messages"
                | "/v1/embeddings"
                | "/v1/responses"
                | "/v1/completions",
            ) => error_response(
                &ApiError::new(
                    405,
                    ErrorKind::InvalidRequest,
                    format!("method {method} not allowed on {path}"),
                ),
                dialect,
                &request_id,
            ),
            _ => error_response(
                &ApiError::new(
                    404,
                    ErrorKind::NotFound,
                    format!("no route for {method} {path}"),
                ),
                dialect,
                &request_id,
            ),
        };
        set_request_id(resp.headers_mut(), &request_id, dialect);
        resp
    }

    /// The request body for the request log, with `[logging] content` on (the answer is filled
    /// in when there is one).
    fn content_of(&self, body: &[u8]) -> Option<(String, String)> {
        self.runtime
            .load()
            .log_content
            .then(|| (String::from_utf8_lossy(body).into_owned(), String::new()))
    }

    /// A 401 when virtual keys are in force and the request carries no valid one.
    fn unauthorized(&self, headers: &HeaderMap) -> Option<ApiError> {
        let ext = self.ext.load();
        if !ext.admission.enabled() {
            return None;
        }
        let presented = presented_key(headers);
        if ext.admission.key_name(presented.as_deref()).is_some() {
            return None;
        }
        Some(
            ApiError::new(
                401,
                ErrorKind::Authentication,
                "a valid virtual key is required: Authorization: Bearer <key> or x-api-key: <key>",
            )
            .code("invalid_api_key"),
        )
    }

    async fn read_body(&self, headers: &HeaderMap, body: Incoming) -> Result<Bytes, ApiError> {
        self.read_declared(content_length(headers), body).await
    }

    /// Reads a body of at most `server.max_body_bytes`; `declared` is its `content-length`.
    async fn read_declared(
        &self,
        declared: Option<usize>,
        body: Incoming,
    ) -> Result<Bytes, ApiError> {
        let max = self.runtime.load().max_body_bytes;
        let too_large = || {
            ApiError::new(
                413,
                ErrorKind::TooLarge,
                format!("request body is larger than the {max}-byte limit"),
            )
            .code("request_too_large")
        };
        if let Some(len) = declared {
            if len > max {
                return Err(too_large());
            }
        }
        match Limited::new(body, max).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(too_large())
            }
            Err(e) if e.downcast_ref::<hyper::Error>().is_some() => {
                // The connection failed while the client was sending it (it left, or reset
                // its stream): logged as such, answered to no one.
                Err(ApiError::new(
                    499,
                    ErrorKind::InvalidRequest,
                    "client disconnected before its request was read",
                ))
            }
            Err(e) => Err(ApiError::invalid(format!(
                "could not read the request body: {e}"
            ))),
        }
    }

    /// Admission, with the request's record waiting meanwhile (a client that leaves is
    /// logged): the permit and the record, with its virtual key; or the refusal, answered in
    /// the dialect and recorded.
    #[allow(clippy::too_many_arguments)]
    async fn admit(
        &self,
        record: RequestRecord,
        presented: Option<&str>,
        model: &str,
        fallbacks: &[String],
        (est_input, max_output): (u64, u64),
        dialect: Dialect,
        request_id: &str,
        started: Instant,
        ext: &Extensions,
    ) -> Result<(Box<dyn Permit>, RequestRecord), Response<Body>> {
        let waiting = Unanswered::new(record, started, ext);
        let admitted = self
            .permit(presented, model, fallbacks, est_input, max_output)
            .await;
        let mut record = waiting.answered();
        match admitted {
            Ok(permit) => {
                record.virtual_key = permit.virtual_key().map(str::to_owned);
                Ok((permit, record))
            }
            Err(r) => {
                self.name_refused_model(&mut record);
                Err(refused(r, dialect, request_id, record, started, ext))
            }
        }
    }

    async fn permit(
        &self,
        presented: Option<&str>,
        model: &str,
        fallbacks: &[String],
        est_input: u64,
        max_output: u64,
    ) -> Result<Box<dyn Permit>, Refused> {
        let ext = self.ext.load_full();
        if !ext.admission.enabled() {
            return Ok(gateway_core::admission::no_permit());
        }
        // The request's own fallbacks are models it may end up served by: each must pass the
        // same allow-lists as the model it names, or a key limited to one route could reach any
        // model by naming it as a fallback of a primary that fails.
        for fallback in fallbacks {
            if let Err(r) = self.access(&*ext.admission, presented, fallback) {
                let mut error = ApiError::from(&r);
                error.message = format!("fallback '{fallback}': {}", error.message);
                return Err(Refused {
                    error,
                    reason: r.reason(),
                    virtual_key: ext.admission.key_name(presented),
                });
            }
        }
        let providers = self.engine.providers_for(model);
        let refs: Vec<&str> = providers.iter().map(String::as_str).collect();
        let targets = self.engine.targets_for(model, fallbacks);
        let permit = ext
            .admission
            .admit(&AdmissionRequest {
                presented_key: presented,
                model,
                providers: &refs,
                targets: &targets,
                estimated_input_tokens: est_input,
                max_output_tokens: max_output,
                headroom: self.engine.headroom_for(model),
            })
            .await
            .map_err(|r| Refused {
                error: ApiError::from(&r),
                reason: r.reason(),
                virtual_key: ext.admission.key_name(presented),
            })?;
        Ok(permit)
    }

    /// Answers a request whose body could not be read or decoded (400, 413), with its record:
    /// every client request is logged and counted, bad input included.
    fn bad_input(
        &self,
        e: &ApiError,
        endpoint: &'static str,
        head: &Head,
        dialect: Dialect,
        request_id: &str,
        started: Instant,
    ) -> Response<Body> {
        let ext = self.ext.load();
        let record = RequestRecord {
            request_id: request_id.to_owned(),
            started_at_ms: unix_ms().saturating_sub(started.elapsed().as_millis() as u64),
            endpoint,
            virtual_key: ext.admission.key_name(head.presented.as_deref()),
            status: e.status_for(dialect),
            error: Some(e.message.clone()),
            duration: started.elapsed(),
            trace: Some(head.trace),
            ..RequestRecord::default()
        };
        ext.observer.on_finish(&record);
        let mut resp = error_response(e, dialect, request_id);
        if e.status == 413 {
            // The rest of an oversized body is not read: the connection cannot carry another
            // request, and HTTP/1.1 clients are told so rather than finding a reset.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// Marks a refused request's model as this gateway's (a route, or served) so its metrics
    /// carry the model and route it asked for; a name the gateway does not serve stays `other`.
    fn name_refused_model(&self, record: &mut RequestRecord) {
        if self.engine.is_route(&record.requested_model) {
            record.route = Some(record.requested_model.clone());
        }
        record.known_model = self.engine.resolves(&record.requested_model);
    }

    /// The models the caller may use: all of them, or with virtual keys those the presented
    /// key's allow-lists admit (what an OpenAI key sees of `GET /v1/models`).
    fn visible_models(&self, headers: &HeaderMap) -> Vec<gateway_core::types::ModelInfo> {
        let models = self.engine.models();
        if !self.ext.load().admission.enabled() {
            return models;
        }
        let presented = presented_key(headers);
        models
            .into_iter()
            .filter(|m| self.authorize(presented.as_deref(), &m.id).is_ok())
            .collect()
    }

    /// For a Responses request: the key that must serve it (the one that made the stored
    /// response it continues, while that key's provider serves the model), and whether its
    /// answer is stored (`store` is not `false`), so its key is worth remembering.
    fn responses_state(&self, request: &ChatRequest) -> (Option<gateway_core::PinnedKey>, bool) {
        #[derive(serde::Deserialize)]
        struct State {
            #[serde(default)]
            previous_response_id: Option<String>,
            #[serde(default)]
            store: Option<bool>,
        }
        let Some(state) = request
            .native
            .as_ref()
            .and_then(|n| serde_json::from_slice::<State>(&n.body).ok())
        else {
            return (None, false);
        };
        let pinned = state
            .previous_response_id
            .and_then(|id| self.responses.lookup(&id))
            .filter(|pin| {
                self.engine
                    .providers_for(&request.model)
                    .iter()
                    .any(|p| **p == *pin.provider)
            });
        (pinned, state.store != Some(false))
    }

    /// [`Admission::authorize`]: whether the caller may use `model`, reserving nothing; the
    /// providers it may reach (empty: all).
    fn authorize(&self, presented: Option<&str>, model: &str) -> Result<Vec<String>, ApiError> {
        let ext = self.ext.load();
        if !ext.admission.enabled() {
            return Ok(Vec::new());
        }
        self.access(&*ext.admission, presented, model)
            .map(Option::unwrap_or_default)
            .map_err(|r| ApiError::from(&r))
    }

    /// [`Admission::authorize`] for `model` as this gateway serves it: its access checks,
    /// nothing reserved; the providers the key may reach (`None`: all).
    fn access(
        &self,
        admission: &dyn Admission,
        presented: Option<&str>,
        model: &str,
    ) -> Result<Option<Vec<String>>, gateway_core::Refusal> {
        let providers = self.engine.providers_for(model);
        let refs: Vec<&str> = providers.iter().map(String::as_str).collect();
        admission.authorize(&AdmissionRequest {
            presented_key: presented,
            model,
            providers: &refs,
            targets: &[],
            estimated_input_tokens: 0,
            max_output_tokens: 0,
            headroom: 1.0,
        })
    }

    async fn chat(
        self: &Arc<Self>,
        req: Request<Incoming>,
        api: Api,
        request_id: &Arc<str>,
        started: Instant,
    ) -> Response<Body> {
        let dialect = api.dialect();
        let (head, body) = Head::take(req);
        let trace = head.trace;
        let endpoint = match api {
            Api::ChatCompletions => "chat",
            Api::Messages => "messages",
            Api::Responses => "responses",
            Api::Completions => "completions",
        };
        let ext = self.ext.load_full();
        let reading = Reading::new(request_id, endpoint, trace, started, &ext);
        let body = self.read_declared(head.content_length, body).await;
        reading.done();
        let body = match body {
            Ok(b) => b,
            Err(e) => return self.bad_input(&e, endpoint, &head, dialect, request_id, started),
        };
        let decoded = match api {
            Api::ChatCompletions => openai::decode_chat_legacy(&body),
            Api::Messages => anthropic::decode_request(&body).map(|r| (r, false)),
            // Its body rides along in `native`, copied (see below).
            Api::Responses => openai::decode_responses(&body).map(|r| (r, false)),
            Api::Completions => openai::decode_completions(&body).map(|r| (r, false)),
        };
        let (mut request, legacy_functions) = match decoded {
            Ok(r) => r,
            Err(e) => return self.bad_input(&e, endpoint, &head, dialect, request_id, started),
        };
        // Responses are stateful (stored, chained by id): never answered from the cache.
        let caching = match api {
            Api::Responses => None,
            _ => self.caching(endpoint, &head, &body),
        };
        if dialect == Dialect::Anthropic {
            // An Anthropic upstream gets the client's body as it came (cache breakpoints,
            // thinking blocks and their signatures...). Copied: `body` may be a slice of the
            // connection's read buffer, which must not stay pinned (see `Head`).
            request.native = Some(NativeRequest {
                body: Bytes::copy_from_slice(&body),
                headers: head.native_headers,
                api: gateway_core::types::NativeApi::AnthropicMessages,
            });
        }
        let record = RequestRecord {
            request_id: String::from(&**request_id),
            started_at_ms: unix_ms(),
            endpoint,
            requested_model: request.model.clone(),
            stream: request.stream,
            trace: Some(trace),
            content: self.content_of(&body),
            ..RequestRecord::default()
        };
        // Decoded and copied: the client's bytes go now (see `Head`).
        drop(body);
        let est_input = request.estimate_input_tokens();
        let max_output = u64::from(request.output_limit().unwrap_or(0));
        let (permit, mut record) = match self
            .admit(
                record,
                head.presented.as_deref(),
                &request.model,
                &request.fallbacks,
                (est_input, max_output),
                dialect,
                request_id,
                started,
                &ext,
            )
            .await
        {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal,
        };
        let slot = match caching
            .map(|c| c.consult(permit.virtual_key(), request.stream, &mut record))
            .transpose()
        {
            Ok(slot) => slot,
            Err(hit) => return serve_cached(hit, permit, record, started, &ext),
        };
        let (pinned_key, remember) = match api {
            Api::Responses => self.responses_state(&request),
            _ => (None, false),
        };
        let opts = RequestOptions {
            request_id: Arc::clone(request_id),
            trace: Some(trace),
            allowed_providers: allowed_providers(&*permit),
            pinned_key,
            // Clients get answers and chunks as they came from an upstream of their own dialect
            // (see `encode_chunk` and `anthropic::StreamEncoder`).
            passthrough: match api {
                // A client of the legacy function API gets its answers rewritten.
                Api::ChatCompletions if legacy_functions => Passthrough::Off,
                Api::ChatCompletions => Passthrough::OpenAiChat,
                Api::Messages => Passthrough::AnthropicMessages,
                Api::Responses => Passthrough::OpenAiResponses,
                Api::Completions => Passthrough::OpenAiCompletions,
            },
            ..RequestOptions::default()
        };
        if request.stream {
            // Boxed: its future is about three times the size of the rest of `chat`'s, and inline
            // it would be part of every connection's (see `handle`).
            let mut resp = Box::pin(self.chat_stream(
                request,
                Shape {
                    api,
                    legacy_functions,
                    remember,
                    // A stream is kept while it runs only when it may be stored.
                    cache: slot.as_ref().filter(|s| s.control.write).cloned(),
                },
                opts,
                permit,
                record,
                started,
                ext,
            ))
            .await;
            missed(&mut resp, slot.as_ref());
            return resp;
        }
        let waiting = Unanswered::new(record, started, &ext);
        let answer = self.engine.chat(&request, &opts).await;
        let mut record = waiting.answered();
        let mut resp = match answer {
            Ok(mut out) => {
                if remember && out.value.raw.is_some() {
                    self.responses.remember(
                        &out.value.id,
                        &out.served_by.provider,
                        &out.served_by.key,
                        permit.virtual_key(),
                    );
                }
                // A provider that reports no usage is charged an estimate, never nothing.
                let usage = out
                    .value
                    .usage
                    .unwrap_or_else(|| estimated_usage(est_input, answer_chars(&out.value)));
                let cost = ext
                    .pricing
                    .cost(&out.served_by.provider, &out.served_by.model, &usage);
                permit.settle(&usage, cost);
                // (An answer passed as it came is an OpenAI-format provider's: no lookup.)
                if dialect == Dialect::OpenAi
                    && api != Api::Responses
                    && out.value.raw.is_none()
                    && !openai_format(&out.served_by.provider_kind)
                {
                    openai_id(&mut out.value.id);
                }
                let body = match dialect {
                    // A Responses request served by a provider that does not speak it.
                    Dialect::OpenAi if api == Api::Responses && out.value.raw.is_none() => {
                        let client = crate::responses::client_body(&request);
                        Bytes::from(crate::responses::from_chat(&client, &out.value).to_string())
                    }
                    Dialect::OpenAi if legacy_functions => {
                        let mut v = serde_json::to_value(&out.value).unwrap_or_default();
                        openai::tools_to_legacy_functions(&mut v);
                        Bytes::from(v.to_string())
                    }
                    Dialect::OpenAi => match &out.value.raw {
                        // An OpenAI upstream's answer, as it came.
                        Some(raw) => raw.clone(),
                        None => Bytes::from(serde_json::to_vec(&out.value).unwrap_or_default()),
                    },
                    Dialect::Anthropic => match &out.value.raw {
                        // An Anthropic upstream's message, as it came.
                        Some(raw) => raw.clone(),
                        None => {
                            anthropic::encode_response(&out.value, &anthropic::Asked::of(&request))
                        }
                    },
                };
                let (_, served_by, attempts) =
                    record_served(&mut record, out, Some(usage), cost, started);
                answered(
                    record,
                    body,
                    &served_by,
                    attempts,
                    cost,
                    slot.as_ref(),
                    &ext,
                )
            }
            Err(f) => self.fail(f, dialect, request_id, record, started, &ext),
        };
        missed(&mut resp, slot.as_ref());
        resp
    }

    /// The answer cache's part in a request whose body is `body`, if the cache is on and the
    /// client allows it.
    fn caching(&self, endpoint: &str, head: &Head, body: &[u8]) -> Option<Caching> {
        if !head.cache.any() {
            return None;
        }
        let cache = self.runtime.load().cache.clone()?;
        Some(Caching {
            cache,
            partial: PartialKey::new(endpoint, &head.native_headers, body),
            control: head.cache,
        })
    }

    fn fail(
        &self,
        f: Failure,
        dialect: Dialect,
        request_id: &str,
        mut record: RequestRecord,
        started: Instant,
        ext: &Extensions,
    ) -> Response<Body> {
        let e = ApiError::from(&f.error);
        record.route = f.route.as_deref().map(str::to_owned);
        record.status = e.status_for(dialect);
        record.error = Some(e.message.clone());
        record.duration = started.elapsed();
        let attempts = f.attempts.len();
        record.attempts = f.attempts;
        ext.observer.on_finish(&record);
        let mut resp = error_response(&e, dialect, request_id);
        resp.headers_mut()
            .insert(X_GATEWAY_ATTEMPTS.clone(), HeaderValue::from(attempts));
        resp
    }

    #[allow(clippy::too_many_arguments)]
    async fn chat_stream(
        self: &Arc<Self>,
        request: ChatRequest,
        Shape {
            api,
            legacy_functions,
            remember,
            cache,
        }: Shape,
        opts: RequestOptions,
        permit: Box<dyn Permit>,
        record: RequestRecord,
        started: Instant,
        ext: Arc<Extensions>,
    ) -> Response<Body> {
        let dialect = api.dialect();
        let include_usage = request.wants_stream_usage();
        let est = request.estimate_input_tokens();
        let waiting = Unanswered::new(record, started, &ext);
        let first = self.engine.chat_stream(&request, &opts).await;
        let mut record = waiting.answered();
        match first {
            Ok(out) => {
                // Only a stored answer (an OpenAI-format provider's, as it came) is worth it.
                if let Some(first) = out.value.first().filter(|f| remember && f.raw.is_some()) {
                    self.responses.remember(
                        &first.id,
                        &out.served_by.provider,
                        &out.served_by.key,
                        permit.virtual_key(),
                    );
                }
                record.route = out.route.as_deref().map(str::to_owned);
                record.provider = Some(String::from(&*out.served_by.provider));
                record.model = Some(String::from(&*out.served_by.model));
                record.ttft = Some(started.elapsed());
                let attempts = out.attempts.len();
                record.attempts = out.attempts;
                let provider = Arc::clone(&out.served_by.provider);
                let model = Arc::clone(&out.served_by.model);
                let fill = cache.map(|slot| CacheFill {
                    slot,
                    bytes: Vec::new(),
                    route: record.route.clone(),
                    provider: Arc::clone(&provider),
                    model: Arc::clone(&model),
                });
                let body = SseBody {
                    inner: out.value,
                    dialect,
                    anthropic: (dialect == Dialect::Anthropic).then(|| {
                        anthropic::StreamEncoder::new(&request.model, est)
                            .asked(anthropic::Asked::of(&request))
                    }),
                    responses: (api == Api::Responses).then(|| {
                        crate::responses::StreamEncoder::new(
                            request
                                .native
                                .as_ref()
                                .map(|n| n.body.clone())
                                .unwrap_or_default(),
                        )
                    }),
                    verbatim: matches!(api, Api::Responses | Api::Completions),
                    legacy_functions,
                    include_usage,
                    state: SseState::First,
                    buf: Vec::new(),
                    usage: None,
                    request_id: String::from(&*opts.request_id),
                    sent: record.content.is_some().then(Vec::new),
                    fill,
                    finish: Some(StreamFinish {
                        record,
                        permit,
                        ext,
                        started,
                        provider: Arc::clone(&provider),
                        model: Arc::clone(&model),
                        estimated_input: est,
                        cut: Arc::clone(&self.cut),
                    }),
                    events: 0,
                    foreign_ids: dialect == Dialect::OpenAi
                        && matches!(api, Api::ChatCompletions)
                        && !openai_format(&out.served_by.provider_kind),
                };
                let mut resp = Response::new(StreamBody::new(body).boxed_unsync());
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                h.insert("x-accel-buffering", HeaderValue::from_static("no"));
                served_headers(h, &provider, &model, attempts, 0.0);
                resp
            }
            Err(f) => self.fail(f, dialect, &opts.request_id, record, started, &ext),
        }
    }

    /// `GET` and `DELETE /v1/responses/{id}`, `POST …/{id}/cancel`, `GET …/{id}/input_items`:
    /// sent to the key that made the response ([`crate::affinity`]; only that key's account
    /// holds it), answered as it came. With virtual keys, only the key that asked for the
    /// response may reach it; any other, and an id this gateway does not know, gets a 404.
    async fn stored_response(
        self: &Arc<Self>,
        req: Request<Incoming>,
        request_id: &Arc<str>,
    ) -> Response<Body> {
        use gateway_core::{StoredResponseKind as Kind, StoredResponseOp};
        let dialect = Dialect::OpenAi;
        let path = req.uri().path();
        let rest = path.strip_prefix("/v1/responses/").unwrap_or_default();
        let (id, kind) = match (req.method(), rest.split_once('/')) {
            (&Method::GET, None) => (rest, Kind::Retrieve),
            (&Method::DELETE, None) => (rest, Kind::Delete),
            (&Method::POST, Some((id, "cancel"))) => (id, Kind::Cancel),
            (&Method::GET, Some((id, "input_items"))) => (id, Kind::InputItems),
            _ => {
                return error_response(
                    &ApiError::new(
                        404,
                        ErrorKind::NotFound,
                        format!("no route for {} {path}", req.method()),
                    ),
                    dialect,
                    request_id,
                )
            }
        };
        let id = percent_decode(id);
        let not_found = || {
            error_response(
                &ApiError::new(
                    404,
                    ErrorKind::NotFound,
                    format!(
                        "No response with id '{id}' was made through this gateway by this key (or it is no longer remembered)"
                    ),
                )
                .code("response_not_found")
                .param("response_id"),
                dialect,
                request_id,
            )
        };
        let Some(made) = self.responses.made(&id) else {
            return not_found();
        };
        let ext = self.ext.load_full();
        if ext.admission.enabled() {
            let caller = ext
                .admission
                .key_name(presented_key(req.headers()).as_deref());
            if caller.as_deref() != made.owner.as_deref() {
                return not_found();
            }
        }
        let op = StoredResponseOp {
            id: id.clone(),
            kind,
            query: req.uri().query().unwrap_or_default().to_owned(),
        };
        // `GET …?stream=true` replays a background response's events: read whole, then sent on
        // as the event stream it is.
        let events = kind == Kind::Retrieve
            && op
                .query
                .split('&')
                .any(|p| p.eq_ignore_ascii_case("stream=true"));
        drop(req);
        let answer = self
            .engine
            .with_pinned_key(&made.key, Arc::clone(request_id), |p, call| async move {
                p.stored_response(&call, &op).await
            })
            .await;
        match answer {
            Ok(r) => {
                if kind == Kind::Delete {
                    self.responses.forget(&id);
                }
                let mut resp = bytes_response(200, r.body);
                if events {
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/event-stream"),
                    );
                }
                resp
            }
            Err(e) => {
                // The caller's own error (cancelling a finished response...) comes back as the
                // upstream gave it; anything else is the upstream failing.
                let err = if e.scope() == gateway_core::error::FailoverScope::Caller {
                    gateway_core::EngineError::Caller(e)
                } else {
                    gateway_core::EngineError::Exhausted {
                        attempts: 1,
                        last: e,
                    }
                };
                error_response(&ApiError::from(&err), dialect, request_id)
            }
        }
    }

    /// `POST /v1/messages/count_tokens`: counted by the provider that would serve the request
    /// when it can (Anthropic's own endpoint, with the client's body as it came), else
    /// estimated; an unknown model or a failed count is estimated too, so a client sizing its
    /// context always gets an answer.
    async fn count_tokens(
        self: &Arc<Self>,
        req: Request<Incoming>,
        request_id: &Arc<str>,
    ) -> Response<Body> {
        let dialect = Dialect::Anthropic;
        let (head, body) = Head::take(req);
        let body = match self.read_declared(head.content_length, body).await {
            Ok(b) => b,
            Err(e) => return error_response(&e, dialect, request_id),
        };
        let mut request = match anthropic::decode_count_tokens(&body) {
            Ok(r) => r,
            Err(e) => return error_response(&e, dialect, request_id),
        };
        if !self.engine.resolves(&request.model) {
            // Counting for a model the gateway does not serve is the 404 a request would get.
            let e = ApiError::from(&gateway_core::EngineError::UnknownModel(request.model));
            return error_response(&e, dialect, request_id);
        }
        // Counting generates nothing and is not billed, but a virtual key's allow-lists hold:
        // it may not count on a model or provider it cannot use.
        let allowed_providers = match self.authorize(head.presented.as_deref(), &request.model) {
            Ok(a) => a,
            Err(e) => return error_response(&e, dialect, request_id),
        };
        let estimate = request.estimate_input_tokens();
        request.native = Some(NativeRequest {
            body: Bytes::copy_from_slice(&body),
            headers: head.native_headers,
            api: gateway_core::types::NativeApi::AnthropicMessages,
        });
        drop(body);
        let opts = RequestOptions {
            request_id: Arc::clone(request_id),
            trace: Some(head.trace),
            allowed_providers,
            passthrough: Passthrough::AnthropicMessages,
            ..RequestOptions::default()
        };
        let counted = self
            .engine
            .count_tokens(&request, &opts)
            .await
            .ok()
            .flatten();
        let mut resp = bytes_response(
            200,
            anthropic::count_tokens_answer(counted.unwrap_or(estimate)),
        );
        if counted.is_none() {
            resp.headers_mut()
                .insert("x-gateway-estimate", HeaderValue::from_static("true"));
        }
        resp
    }

    async fn embeddings(
        self: &Arc<Self>,
        req: Request<Incoming>,
        request_id: &Arc<str>,
        started: Instant,
    ) -> Response<Body> {
        let dialect = Dialect::OpenAi;
        let (head, body) = Head::take(req);
        let ext = self.ext.load_full();
        let reading = Reading::new(request_id, "embeddings", head.trace, started, &ext);
        let body = self.read_declared(head.content_length, body).await;
        reading.done();
        let body = match body {
            Ok(b) => b,
            Err(e) => return self.bad_input(&e, "embeddings", &head, dialect, request_id, started),
        };
        let request = match openai::decode_embeddings(&body) {
            Ok(r) => r,
            Err(e) => return self.bad_input(&e, "embeddings", &head, dialect, request_id, started),
        };
        let caching = self.caching("embeddings", &head, &body);
        let trace = head.trace;
        let record = RequestRecord {
            request_id: String::from(&**request_id),
            started_at_ms: unix_ms(),
            endpoint: "embeddings",
            requested_model: request.model.clone(),
            trace: Some(trace),
            content: self.content_of(&body),
            ..RequestRecord::default()
        };
        drop(body);
        let (permit, mut record) = match self
            .admit(
                record,
                head.presented.as_deref(),
                &request.model,
                &request.fallbacks,
                (request.input.estimate_tokens(), 0),
                dialect,
                request_id,
                started,
                &ext,
            )
            .await
        {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal,
        };
        let slot = match caching
            .map(|c| c.consult(permit.virtual_key(), false, &mut record))
            .transpose()
        {
            Ok(slot) => slot,
            Err(hit) => return serve_cached(hit, permit, record, started, &ext),
        };
        let opts = RequestOptions {
            request_id: Arc::clone(request_id),
            trace: Some(trace),
            allowed_providers: allowed_providers(&*permit),
            ..RequestOptions::default()
        };
        let waiting = Unanswered::new(record, started, &ext);
        let answer = self.engine.embed(&request, &opts).await;
        let mut record = waiting.answered();
        let mut resp = match answer {
            Ok(mut out) => {
                let usage = out
                    .value
                    .usage
                    .unwrap_or_else(|| estimated_usage(request.input.estimate_tokens(), 0));
                // OpenAI's embeddings answer always has usage (SDKs read it unguarded); a
                // provider that reports none (Gemini) gets the estimate it is charged at.
                out.value.usage = Some(usage);
                let cost = ext
                    .pricing
                    .cost(&out.served_by.provider, &out.served_by.model, &usage);
                permit.settle(&usage, cost);
                let b64 = request.encoding_format.as_deref() == Some("base64");
                let (value, served_by, attempts) =
                    record_served(&mut record, out, Some(usage), cost, started);
                let body = openai::encode_embeddings(&value, b64);
                answered(
                    record,
                    body,
                    &served_by,
                    attempts,
                    cost,
                    slot.as_ref(),
                    &ext,
                )
            }
            Err(f) => self.fail(f, dialect, request_id, record, started, &ext),
        };
        missed(&mut resp, slot.as_ref());
        resp
    }

    /// An OpenAI endpoint passed on without being modelled ([`FORWARDED`]): the body's `model`
    /// (or the endpoint's default) is resolved and balanced like any model, the body goes to
    /// an OpenAI-format provider with `model` rewritten, and the answer comes back as it came.
    async fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        endpoint: &'static Forwarded,
        request_id: &Arc<str>,
        started: Instant,
    ) -> Response<Body> {
        let dialect = Dialect::OpenAi;
        // An upload keeps its content type (the multipart boundary) for the upstream.
        let content_type = endpoint
            .multipart
            .then(|| {
                req.headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .flatten();
        let (head, body) = Head::take(req);
        let ext = self.ext.load_full();
        let reading = Reading::new(request_id, endpoint.name, head.trace, started, &ext);
        let body = self.read_declared(head.content_length, body).await;
        reading.done();
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                return self.bad_input(&e, endpoint.name, &head, dialect, request_id, started)
            }
        };
        let model = match forwarded_model(&body, endpoint, content_type.as_deref()) {
            Ok(m) => m,
            Err(e) => {
                return self.bad_input(&e, endpoint.name, &head, dialect, request_id, started)
            }
        };
        let trace = head.trace;
        let record = RequestRecord {
            request_id: String::from(&**request_id),
            started_at_ms: unix_ms(),
            endpoint: endpoint.name,
            requested_model: model.clone(),
            trace: Some(trace),
            // An upload (audio) is not logged as text.
            content: if endpoint.multipart {
                None
            } else {
                self.content_of(&body)
            },
            ..RequestRecord::default()
        };
        let est = (body.len() as u64).div_ceil(4);
        let (permit, record) = match self
            .admit(
                record,
                head.presented.as_deref(),
                &model,
                &[],
                (est, 0),
                dialect,
                request_id,
                started,
                &ext,
            )
            .await
        {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal,
        };
        let opts = RequestOptions {
            request_id: Arc::clone(request_id),
            trace: Some(trace),
            allowed_providers: allowed_providers(&*permit),
            ..RequestOptions::default()
        };
        let request = gateway_core::ForwardRequest {
            path: endpoint.path,
            model,
            body,
            content_type,
        };
        let waiting = Unanswered::new(record, started, &ext);
        let answer = self.engine.forward(&request, &opts).await;
        let mut record = waiting.answered();
        match answer {
            Ok(out) => {
                // Only token-priced image models report usage; the others are charged nothing
                // by the price table and counted as requests.
                let usage = out.value.usage.unwrap_or_default();
                let cost = ext
                    .pricing
                    .cost(&out.served_by.provider, &out.served_by.model, &usage);
                permit.settle(&usage, cost);
                let reported = out.value.usage;
                let (answer, served_by, attempts) =
                    record_served(&mut record, out, reported, cost, started);
                if let Some((_, logged)) = &mut record.content {
                    if answer.content_type.starts_with("application/json") {
                        *logged = String::from_utf8_lossy(&answer.body).into_owned();
                    }
                }
                ext.observer.on_finish(&record);
                let mut resp = bytes_response(200, answer.body);
                if let Ok(v) = HeaderValue::from_str(&answer.content_type) {
                    resp.headers_mut().insert(header::CONTENT_TYPE, v);
                }
                served_headers(
                    resp.headers_mut(),
                    &served_by.provider,
                    &served_by.model,
                    attempts,
                    cost,
                );
                resp
            }
            Err(f) => self.fail(f, dialect, request_id, record, started, &ext),
        }
    }

    async fn admin(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let runtime = self.runtime.load_full();
        let token = runtime.admin_token.as_bytes();
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .trim()
            .as_bytes()
            .to_vec();
        if token.is_empty() {
            return json_response(
                403,
                &json!({"error": {"message": "the admin API is disabled: set server.admin_token", "type": "permission_error"}}),
            );
        }
        if !constant_time_eq(&presented, token) {
            return json_response(
                401,
                &json!({"error": {"message": "admin token required: Authorization: Bearer <admin_token>", "type": "authentication_error"}}),
            );
        }
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let (parts, body) = req.into_parts();
        let body = match self.read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err(e) => return json_response(e.status, &json!({"error": {"message": e.message}})),
        };
        if let Some(extra) = self.ext.load().admin.clone() {
            if let Some((status, v)) = extra.handle(method.as_str(), &path, &query, &body).await {
                return json_response(status, &v);
            }
        }
        match (method, path.as_str()) {
            (Method::GET, "/admin/config") => json_response(200, &runtime.config.redacted()),
            (Method::GET, "/admin/health") => {
                json_response(200, &json!({"providers": self.engine.health()}))
            }
            (Method::GET, "/admin/cache") => match &runtime.cache {
                Some(c) => json_response(
                    200,
                    &json!({"enabled": true, "entries": c.len(), "bytes": c.bytes()}),
                ),
                None => json_response(200, &json!({"enabled": false})),
            },
            (Method::DELETE, "/admin/cache") => {
                let removed = runtime.cache.as_ref().map_or(0, |c| c.clear());
                tracing::info!(removed, "answer cache emptied through the admin API");
                json_response(200, &json!({"removed": removed}))
            }
            (Method::POST, "/admin/reload") => match self.reload().await {
                Ok(()) => {
                    tracing::info!("configuration reloaded through the admin API");
                    json_response(200, &json!({"status": "reloaded"}))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reload refused; the running configuration stays");
                    json_response(400, &json!({"status": "refused", "error": e.to_string()}))
                }
            },
            _ => json_response(
                404,
                &json!({"error": {"message": format!("no admin route {path}")}}),
            ),
        }
    }
}

fn runtime_of(config: Config) -> Runtime {
    Runtime {
        admin_token: config.server.admin_token.clone(),
        max_body_bytes: config.server.max_body_bytes,
        log_content: config.logging.content,
        cache: config
            .cache
            .enabled
            .then(|| Arc::new(ResponseCache::new(&config.cache))),
        config,
    }
}

/// The key a client presented: `Authorization: Bearer`, `x-api-key` or `x-bf-vk`.
pub fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_owned());
    }
    if let Some(v) = headers.get("x-bf-vk").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_owned());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|v| v.trim().to_owned())
}

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The record of a request while the engine works on it. A client that leaves before its
/// answer (or a stream's first chunk) drops the handler's future with it: the record is then
/// written with status 499, so that every request is logged and counted once. The reservation
/// is released by the permit's own drop; nothing was delivered, so nothing is charged.
struct Unanswered<'e> {
    record: Option<RequestRecord>,
    started: Instant,
    ext: &'e Extensions,
}

impl<'e> Unanswered<'e> {
    fn new(record: RequestRecord, started: Instant, ext: &'e Extensions) -> Self {
        Unanswered {
            record: Some(record),
            started,
            ext,
        }
    }

    /// The engine answered (or failed): the record goes on to be finished by the handler.
    fn answered(mut self) -> RequestRecord {
        self.record.take().unwrap_or_default()
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.status = 499;
            r.error = Some("client disconnected before the answer".to_owned());
            r.duration = self.started.elapsed();
            self.ext.observer.on_finish(&r);
        }
    }
}

/// A request whose body is being read: if its client leaves meanwhile (the handler is
/// dropped), it is recorded as such (499). Allocates nothing unless it fires.
struct Reading<'a> {
    request_id: &'a Arc<str>,
    endpoint: &'static str,
    trace: gateway_core::observe::TraceContext,
    started: Instant,
    ext: &'a Extensions,
}

impl<'a> Reading<'a> {
    fn new(
        request_id: &'a Arc<str>,
        endpoint: &'static str,
        trace: gateway_core::observe::TraceContext,
        started: Instant,
        ext: &'a Extensions,
    ) -> Self {
        Reading {
            request_id,
            endpoint,
            trace,
            started,
            ext,
        }
    }

    /// The body was read (or failed to be): the handler records what follows.
    fn done(self) {
        std::mem::forget(self);
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let record = RequestRecord {
            request_id: String::from(&**self.request_id),
            started_at_ms: unix_ms().saturating_sub(self.started.elapsed().as_millis() as u64),
            endpoint: self.endpoint,
            trace: Some(self.trace),
            status: 499,
            error: Some("client disconnected before its request was read".to_owned()),
            duration: self.started.elapsed(),
            ..RequestRecord::default()
        };
        self.ext.observer.on_finish(&record);
    }
}

/// An OpenAI endpoint the gateway passes on without modelling it.
pub struct Forwarded {
    /// Its name in logs and metrics.
    name: &'static str,
    /// Its path under the API version.
    path: &'static str,
    /// The model OpenAI uses when the body names none (`None`: `model` is required).
    default_model: Option<&'static str>,
    /// The body is an upload (`multipart/form-data`, `model` a form field), not JSON.
    multipart: bool,
}

/// The endpoints passed on ([`Gateway::forward`]).
const FORWARDED: [Forwarded; 5] = [
    Forwarded {
        name: "moderations",
        path: "/moderations",
        default_model: Some("omni-moderation-latest"),
        multipart: false,
    },
    Forwarded {
        name: "images",
        path: "/images/generations",
        default_model: Some("dall-e-2"),
        multipart: false,
    },
    Forwarded {
        name: "speech",
        path: "/audio/speech",
        default_model: None,
        multipart: false,
    },
    Forwarded {
        name: "transcriptions",
        path: "/audio/transcriptions",
        default_model: None,
        multipart: true,
    },
    Forwarded {
        name: "translations",
        path: "/audio/translations",
        default_model: None,
        multipart: true,
    },
];

/// The passed-on endpoint a request path names (`/v1/...`, or without the version).
fn forwarded_endpoint(path: &str) -> Option<&'static Forwarded> {
    let rest = path.strip_prefix("/v1").unwrap_or(path);
    FORWARDED.iter().find(|f| f.path == rest)
}

/// The model a passed-on request names: its body's `model` (an upload's form field), else the
/// endpoint's default.
fn forwarded_model(
    body: &[u8],
    endpoint: &Forwarded,
    content_type: Option<&str>,
) -> Result<String, ApiError> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        model: Option<String>,
    }
    let model = if endpoint.multipart {
        let boundary = content_type
            .and_then(gateway_providers::multipart::boundary)
            .ok_or_else(|| {
                ApiError::invalid("the body must be multipart/form-data (a file upload)")
            })?;
        gateway_providers::multipart::field(body, boundary, "model")
            .map(|r| String::from_utf8_lossy(&body[r]).trim().to_owned())
    } else {
        let head: Head = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))?;
        head.model
    };
    match model.filter(|m| !m.is_empty()) {
        Some(m) => Ok(m),
        None => endpoint
            .default_model
            .map(str::to_owned)
            .ok_or_else(|| ApiError::invalid("model: field required").param("model")),
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The providers a permit's caller may reach, for [`RequestOptions::allowed_providers`] (empty:
/// all; copied only for keys with an allow-list).
fn allowed_providers(permit: &dyn Permit) -> Vec<String> {
    permit
        .allowed_providers()
        .map(<[String]>::to_vec)
        .unwrap_or_default()
}

static X_GATEWAY_PROVIDER: HeaderName = HeaderName::from_static("x-gateway-provider");
static X_GATEWAY_MODEL: HeaderName = HeaderName::from_static("x-gateway-model");
static X_GATEWAY_ATTEMPTS: HeaderName = HeaderName::from_static("x-gateway-attempts");
static X_GATEWAY_CACHE: HeaderName = HeaderName::from_static("x-gateway-cache");
static MISS: HeaderValue = HeaderValue::from_static("miss");
static X_GATEWAY_COST: HeaderName = HeaderName::from_static("x-gateway-cost-usd");

/// Fills the record of a request `out` answered (who served it, through which route, after
/// which attempts, at what usage and cost, how long it took, status 200) and hands back the
/// answer, who served it and how many attempts it took.
fn record_served<T>(
    record: &mut RequestRecord,
    out: gateway_core::engine::Outcome<T>,
    usage: Option<Usage>,
    cost: f64,
    started: Instant,
) -> (T, gateway_core::engine::ServedBy, usize) {
    record.route = out.route.as_deref().map(str::to_owned);
    record.provider = Some(String::from(&*out.served_by.provider));
    record.model = Some(String::from(&*out.served_by.model));
    record.usage = usage;
    record.cost_usd = cost;
    record.status = 200;
    record.duration = started.elapsed();
    let attempts = out.attempts.len();
    record.attempts = out.attempts;
    (out.value, out.served_by, attempts)
}

fn served_headers(h: &mut HeaderMap, provider: &str, model: &str, attempts: usize, cost: f64) {
    h.reserve(4);
    if let Ok(v) = HeaderValue::from_str(provider) {
        h.insert(X_GATEWAY_PROVIDER.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(model) {
        h.insert(X_GATEWAY_MODEL.clone(), v);
    }
    h.insert(X_GATEWAY_ATTEMPTS.clone(), HeaderValue::from(attempts));
    if let Some(v) = cost_value(cost) {
        h.insert(X_GATEWAY_COST.clone(), v);
    }
}

/// A positive cost in USD with eight decimals (`0.00012345`), without `format!` for the common
/// magnitudes: rounded at the eighth decimal from `cost × 10⁸`, which can differ from exact
/// decimal rounding by one in that last digit.
fn cost_value(cost: f64) -> Option<HeaderValue> {
    if !(cost > 0.0 && cost.is_finite()) {
        return None;
    }
    let scaled = (cost * 1e8).round();
    if scaled >= 1e17 {
        return HeaderValue::from_str(&format!("{cost:.8}")).ok();
    }
    // Below 10¹⁷ the cast is exact and the whole part has at most nine digits.
    let n = scaled as u64;
    let mut buf = [0u8; 18];
    decimal_digits(&mut buf[..9], n / 100_000_000);
    buf[9] = b'.';
    decimal_digits(&mut buf[10..], n % 100_000_000);
    // The whole part without its leading zeros, but one digit at least.
    let first = buf[..8].iter().position(|&c| c != b'0').unwrap_or(8);
    HeaderValue::from_bytes(&buf[first..]).ok()
}

fn bytes_response(status: u16, body: Bytes) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn json_response<T: serde::Serialize>(status: u16, v: &T) -> Response<Body> {
    bytes_response(
        status,
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    )
}

/// An error in the dialect's shape, with `retry-after` and `x-should-retry` where they apply.
pub fn error_response(e: &ApiError, dialect: Dialect, request_id: &str) -> Response<Body> {
    let mut r = bytes_response(e.status_for(dialect), e.body(dialect, request_id));
    let h = r.headers_mut();
    if let Some(d) = e.retry_after {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            h.insert(header::RETRY_AFTER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&d.as_millis().max(1).to_string()) {
            h.insert("retry-after-ms", v);
        }
    }
    if e.no_retry {
        h.insert("x-should-retry", HeaderValue::from_static("false"));
    }
    r
}

/// Records an admission refusal and answers it in the caller's dialect.
fn refused(
    r: Refused,
    dialect: Dialect,
    request_id: &str,
    mut record: RequestRecord,
    started: Instant,
    ext: &Extensions,
) -> Response<Body> {
    record.status = r.error.status_for(dialect);
    record.error = Some(r.error.message.clone());
    record.duration = started.elapsed();
    record.refusal = Some(r.reason);
    record.virtual_key = r.virtual_key;
    ext.observer.on_finish(&record);
    let mut resp = error_response(&r.error, dialect, request_id);
    // Refused before any upstream: every inference response says how many attempts it took.
    resp.headers_mut()
        .insert(X_GATEWAY_ATTEMPTS.clone(), HeaderValue::from(0u32));
    resp
}

/// An admission refusal, with what telemetry labels it by.
struct Refused {
    error: ApiError,
    reason: &'static str,
    virtual_key: Option<String>,
}

struct StreamFinish {
    record: RequestRecord,
    permit: Box<dyn Permit>,
    ext: Arc<Extensions>,
    started: Instant,
    provider: Arc<str>,
    model: Arc<str>,
    /// The admission's estimate of the input tokens, charged when the provider reports none.
    estimated_input: u64,
    /// [`Gateway::mark_cut`]'s flag.
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl StreamFinish {
    /// Settles and records the stream; `events` is how many upstream events it carried, the
    /// output estimate (about a token each) when the provider reported no usage.
    fn done(mut self, usage: Option<Usage>, events: u64, status: u16, error: Option<String>) {
        let u = usage.unwrap_or_else(|| Usage::new(self.estimated_input, events, 0));
        let cost = self.ext.pricing.cost(&self.provider, &self.model, &u);
        self.permit.settle(&u, cost);
        // What was charged, reported or estimated: the log's tokens and cost agree.
        self.record.usage = Some(u);
        self.record.cost_usd = cost;
        self.record.status = status;
        self.record.error = error;
        self.record.duration = self.started.elapsed();
        self.ext.observer.on_finish(&self.record);
    }
}

/// Whether a provider kind speaks the OpenAI format (its ids are already OpenAI's).
fn openai_format(kind: &str) -> bool {
    gateway_providers::registry::kind_info(kind)
        .is_some_and(|i| matches!(i.family, "openai" | "azure"))
}

/// A translated answer's id in OpenAI's form (`chatcmpl-…`): another provider's id (`msg_…`)
/// keeps its value behind the prefix.
fn openai_id(id: &mut String) {
    if !id.starts_with("chatcmpl") {
        id.insert_str(0, "chatcmpl-");
    }
}

/// Usage for settling when the provider reported none: the admission's input estimate, and the
/// answer at about four characters a token.
fn estimated_usage(input: u64, answer_chars: usize) -> Usage {
    Usage::new(input, (answer_chars as u64).div_ceil(4), 0)
}

/// The characters of an answer's text and tool arguments; of its whole raw body when it came
/// as it was and its text was not decoded (a little more than the text: the JSON around it).
fn answer_chars(r: &gateway_core::types::ChatResponse) -> usize {
    let decoded: usize = r
        .choices
        .iter()
        .map(|c| {
            c.message.content_text().len()
                + c.message.tool_calls.as_ref().map_or(0, |calls| {
                    calls.iter().map(|t| t.function.arguments.len()).sum()
                })
        })
        .sum();
    if decoded == 0 {
        r.raw.as_ref().map_or(0, Bytes::len)
    } else {
        decoded
    }
}

/// What the inference handlers need from a request's head, copied out so that the head itself
/// goes before the body is read.
///
/// hyper hands out the head (header values, the URI) and a body that came in the same read as
/// slices of the connection's read buffer, without copying. Kept alive across the upstream call,
/// they pin that buffer, and hyper, reading on for the next request or the client's close,
/// allocates another one: two or three 8–16 KB buffers per connection for as long as a request is
/// in flight, the largest part of the gateway's heap at a few hundred concurrent requests
/// (heaptrack). So the head goes here, and the body as soon as it is decoded.
struct Head {
    trace: gateway_core::observe::TraceContext,
    content_length: Option<usize>,
    /// The virtual key presented, if any ([`presented_key`]).
    presented: Option<String>,
    /// Headers that go with the client's own body to an upstream of its dialect
    /// ([`NATIVE_HEADERS`]).
    native_headers: Vec<(String, String)>,
    /// What the client allows the answer cache (`cache-control`).
    cache: Control,
}

/// Client headers an upstream of the client's own dialect gets with its body: the Anthropic
/// beta features the body's members may belong to.
const NATIVE_HEADERS: [&str; 1] = ["anthropic-beta"];

impl Head {
    fn take(req: Request<Incoming>) -> (Head, Incoming) {
        let (parts, body) = req.into_parts();
        let headers = &parts.headers;
        let head = Head {
            trace: gateway_core::observe::TraceContext::from_traceparent(
                headers.get("traceparent").and_then(|v| v.to_str().ok()),
                &mut fastrand::Rng::new(),
            ),
            content_length: content_length(headers),
            presented: presented_key(headers),
            native_headers: NATIVE_HEADERS
                .iter()
                .flat_map(|name| {
                    headers
                        .get_all(*name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .map(|v| ((*name).to_owned(), v.to_owned()))
                })
                .collect(),
            cache: Control::of(headers),
        };
        (head, body)
    }
}

/// The `content-length` a request declares, if it is a number.
fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

enum SseState {
    /// Nothing sent yet: the first chunk goes out in a frame of its own.
    First,
    /// The first chunk was handed to hyper: return `Pending` once so that hyper writes it (and
    /// the response head) before the events that came with it are read.
    Flush,
    Streaming,
    Done,
}

/// How a chat-like request is answered ([`Gateway::chat_stream`]'s view of it).
struct Shape {
    api: Api,
    /// The client uses the legacy function API.
    legacy_functions: bool,
    /// Remember the key that serves it ([`crate::affinity`]).
    remember: bool,
    /// Where its answer is stored, if the answer cache may keep it.
    cache: Option<CacheSlot>,
}

/// The answer cache's part in one request, before admission names its scope.
struct Caching {
    cache: Arc<ResponseCache>,
    partial: PartialKey,
    control: Control,
}

impl Caching {
    /// Looks an admitted request up, its virtual key (the scope) now known: the stored answer,
    /// or the request's place to keep its own (its record marked a miss).
    fn consult(
        self,
        virtual_key: Option<&str>,
        stream: bool,
        record: &mut RequestRecord,
    ) -> Result<CacheSlot, Hit> {
        let slot = CacheSlot {
            key: self.cache.key(self.partial, virtual_key),
            cache: self.cache,
            control: self.control,
        };
        if let Some(hit) = slot.lookup(stream) {
            return Err(hit);
        }
        record.cache = Some("miss");
        Ok(slot)
    }
}

/// An admitted request's place in the answer cache.
#[derive(Clone)]
struct CacheSlot {
    cache: Arc<ResponseCache>,
    key: CacheKey,
    control: Control,
}

impl CacheSlot {
    /// The stored answer, if the client allows one and it has the shape asked for.
    fn lookup(&self, stream: bool) -> Option<Hit> {
        if !self.control.read {
            return None;
        }
        self.cache
            .get(&self.key, self.control.max_age)
            .filter(|h| h.stream == stream)
    }

    /// Keeps a plain answer, sent as `body`, served by `served_by` (its route in `record`).
    fn store_answer(
        &self,
        body: &Bytes,
        record: &RequestRecord,
        served_by: &gateway_core::engine::ServedBy,
    ) {
        self.store(Hit {
            body: body.clone(),
            stream: false,
            route: record.route.clone(),
            provider: Arc::clone(&served_by.provider),
            model: Arc::clone(&served_by.model),
        });
    }

    /// Keeps `hit`, if the client allows it.
    fn store(&self, hit: Hit) {
        if self.control.write {
            self.cache.put(self.key, hit);
        }
    }
}

/// The response to a request the engine answered: its record finished and logged, the answer
/// kept in the cache when the request may be, the `x-gateway-*` headers.
fn answered(
    mut record: RequestRecord,
    body: Bytes,
    served_by: &gateway_core::engine::ServedBy,
    attempts: usize,
    cost: f64,
    slot: Option<&CacheSlot>,
    ext: &Extensions,
) -> Response<Body> {
    if let Some((_, answer)) = &mut record.content {
        *answer = String::from_utf8_lossy(&body).into_owned();
    }
    if let Some(slot) = slot {
        slot.store_answer(&body, &record, served_by);
    }
    ext.observer.on_finish(&record);
    let mut resp = bytes_response(200, body);
    served_headers(
        resp.headers_mut(),
        &served_by.provider,
        &served_by.model,
        attempts,
        cost,
    );
    resp
}

/// `x-gateway-cache: miss` on the response of a request the cache was asked for and could
/// not answer.
fn missed(resp: &mut Response<Body>, slot: Option<&CacheSlot>) {
    if slot.is_some() {
        resp.headers_mut()
            .insert(X_GATEWAY_CACHE.clone(), MISS.clone());
    }
}

/// A streamed answer being kept for the cache: what was sent so far.
struct CacheFill {
    slot: CacheSlot,
    bytes: Vec<u8>,
    route: Option<String>,
    provider: Arc<str>,
    model: Arc<str>,
}

/// The answer to a request served from the cache. Nothing went upstream: the request counts
/// against its virtual key's request limits, its tokens and cost are zero.
fn serve_cached(
    hit: Hit,
    permit: Box<dyn Permit>,
    mut record: RequestRecord,
    started: Instant,
    ext: &Extensions,
) -> Response<Body> {
    permit.settle(&Usage::default(), 0.0);
    record.route = hit.route.clone();
    record.provider = Some(String::from(&*hit.provider));
    record.model = Some(String::from(&*hit.model));
    record.status = 200;
    record.cache = Some("hit");
    record.duration = started.elapsed();
    if hit.stream {
        record.ttft = Some(record.duration);
    }
    if let Some((_, answer)) = &mut record.content {
        *answer = String::from_utf8_lossy(&hit.body).into_owned();
    }
    ext.observer.on_finish(&record);
    let mut resp = bytes_response(200, hit.body);
    let h = resp.headers_mut();
    if hit.stream {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    served_headers(h, &hit.provider, &hit.model, 0, 0.0);
    h.insert(X_GATEWAY_CACHE.clone(), HeaderValue::from_static("hit"));
    resp
}

/// The API a chat-like request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// OpenAI `POST /v1/responses`, passed through to providers that speak it.
    Responses,
    /// OpenAI's legacy `POST /v1/completions`, passed through likewise.
    Completions,
}

impl Api {
    /// The format of its errors.
    fn dialect(self) -> Dialect {
        match self {
            Api::Messages => Dialect::Anthropic,
            Api::ChatCompletions | Api::Responses | Api::Completions => Dialect::OpenAi,
        }
    }
}

/// The SSE body of a streamed answer, in the client's dialect (`S` is the engine's stream; tests
/// give it a plain one).
struct SseBody<S = EngineStream> {
    inner: S,
    dialect: Dialect,
    anthropic: Option<anthropic::StreamEncoder>,
    /// Chunks are whole SSE events, written as they came (with their end), for the APIs passed
    /// through whole (Responses, legacy Completions).
    verbatim: bool,
    /// A Responses client: chunks an OpenAI-format provider sent go as they came, the others are
    /// written as Responses events, and so is a failure after the stream began.
    responses: Option<crate::responses::StreamEncoder>,
    /// The client uses the legacy function API: tool calls go out as `function_call`.
    legacy_functions: bool,
    include_usage: bool,
    state: SseState,
    buf: Vec<u8>,
    usage: Option<Usage>,
    /// Upstream events seen (a run of pass-through events counts each).
    events: u64,
    /// An OpenAI client of a provider of another format: chunk ids get OpenAI's form.
    foreign_ids: bool,
    request_id: String,
    finish: Option<StreamFinish>,
    /// Everything sent so far, kept for the request log with `[logging] content` on.
    sent: Option<Vec<u8>>,
    /// Everything sent so far, kept for the answer cache (dropped past its entry size).
    fill: Option<CacheFill>,
}

impl<S> SseBody<S> {
    /// Sends what is buffered as one frame.
    fn emit(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let bytes = std::mem::take(&mut self.buf);
        if let Some(sent) = &mut self.sent {
            sent.extend_from_slice(&bytes);
        }
        if let Some(fill) = &mut self.fill {
            if fill.bytes.len() + bytes.len() > fill.slot.cache.max_entry_bytes() {
                self.fill = None;
            } else {
                fill.bytes.extend_from_slice(&bytes);
            }
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(bytes)))))
    }

    /// Settles and logs the request (once), with what was sent and is about to be.
    fn finish(&mut self, status: u16, error: Option<String>) {
        let Some(mut f) = self.finish.take() else {
            return;
        };
        // Only a whole answer is kept: not one that failed or that the client left.
        if let Some(fill) = self
            .fill
            .take()
            .filter(|_| status == 200 && error.is_none())
        {
            let mut bytes = fill.bytes;
            bytes.extend_from_slice(&self.buf);
            fill.slot.store(Hit {
                body: Bytes::from(bytes),
                stream: true,
                route: fill.route,
                provider: fill.provider,
                model: fill.model,
            });
        }
        if let (Some(sent), Some((_, answer))) = (&self.sent, &mut f.record.content) {
            let mut all = String::from_utf8_lossy(sent).into_owned();
            all.push_str(&String::from_utf8_lossy(&self.buf));
            *answer = all;
        }
        f.done(self.usage, self.events, status, error);
    }
}

impl<S> Drop for SseBody<S> {
    fn drop(&mut self) {
        // The client went away mid-stream, or the shutdown cut it: the upstream is cancelled
        // with `inner`; account for it.
        let cut = self
            .finish
            .as_ref()
            .is_some_and(|f| f.cut.load(Ordering::Acquire));
        if cut {
            self.finish(
                503,
                Some("cut by the gateway's shutdown (grace period over)".to_owned()),
            );
        } else {
            self.finish(499, Some("client disconnected".to_owned()));
        }
    }
}

/// The `data:` field of an SSE event, searched for by a finder built once (not per chunk).
static DATA_FIELD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"data:"));

/// Events that are ready together go out in one frame (one write) up to this size; a lone event
/// goes out at once, so coalescing never delays a token. The first chunk is never coalesced: an
/// upstream that sends a burst (the whole answer of a fast model in one read) would otherwise
/// hold the client's first byte until the burst was read and re-encoded.
const SSE_COALESCE_BYTES: usize = 16 * 1024;

impl<S> Stream for SseBody<S>
where
    S: Stream<Item = Result<gateway_core::types::ChatChunk, gateway_core::ProviderError>> + Unpin,
{
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match this.state {
                SseState::Done => {
                    if this.buf.is_empty() {
                        return Poll::Ready(None);
                    }
                    return this.emit();
                }
                SseState::Flush => {
                    // hyper writes what it holds when the body is not ready; come back at once.
                    this.state = SseState::Streaming;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                SseState::First | SseState::Streaming => {}
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => {
                    if this.buf.is_empty() {
                        return Poll::Pending;
                    }
                    return this.emit();
                }
                Poll::Ready(Some(Ok(mut chunk))) => {
                    if let Some(u) = chunk.usage {
                        this.usage = Some(u);
                    }
                    if this.foreign_ids {
                        openai_id(&mut chunk.id);
                    }
                    // A raw chunk for an OpenAI client is its events' data, joined by
                    // `\n\ndata: ` (the first `data: ` is written around it); for the other
                    // APIs it is the events' whole text.
                    this.events += match chunk.raw.as_deref() {
                        None => 1,
                        Some(raw) if this.anthropic.is_some() || this.verbatim => {
                            DATA_FIELD.find_iter(raw).count() as u64
                        }
                        Some(raw) => DATA_FIELD.find_iter(raw).count() as u64 + 1,
                    };
                    match &mut this.anthropic {
                        Some(enc) => enc.chunk(&chunk, &mut this.buf),
                        None if this.verbatim => match (&chunk.raw, &mut this.responses) {
                            (Some(raw), _) => this.buf.extend_from_slice(raw),
                            (None, Some(enc)) => enc.chunk(&chunk, &mut this.buf),
                            (None, None) => {}
                        },
                        None if this.legacy_functions => {
                            openai::encode_legacy_chunk(&chunk, this.include_usage, &mut this.buf);
                        }
                        None => {
                            openai::encode_chunk(&chunk, this.include_usage, &mut this.buf);
                        }
                    }
                    if matches!(this.state, SseState::First) && !this.buf.is_empty() {
                        this.state = SseState::Flush;
                        return this.emit();
                    }
                    if this.buf.len() >= SSE_COALESCE_BYTES {
                        return this.emit();
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.state = SseState::Done;
                    let err = ApiError::from(&gateway_core::EngineError::Exhausted {
                        attempts: 1,
                        last: e,
                    });
                    let msg = format!("upstream stream failed: {}", err.message);
                    let err = ApiError {
                        message: msg.clone(),
                        ..err
                    };
                    if this.responses.is_some() {
                        openai::responses_error_event(&err, &mut this.buf);
                    } else {
                        this.buf
                            .extend_from_slice(&err.sse_event(this.dialect, &this.request_id));
                    }
                    // The status the failure would have had before the first byte: 504 for a
                    // stall past the timeout, 502 for the rest.
                    let status = err.status;
                    this.finish(status, Some(msg));
                    return this.emit();
                }
                Poll::Ready(None) => {
                    this.state = SseState::Done;
                    match &mut this.anthropic {
                        Some(enc) => enc.finish(&mut this.buf),
                        None if this.verbatim => {
                            if let Some(enc) = &mut this.responses {
                                enc.finish(&mut this.buf);
                            }
                        }
                        None => this.buf.extend_from_slice(openai::DONE),
                    }
                    this.finish(200, None);
                    return this.emit();
                }
            }
        }
    }
}

/// The request id on a response: `x-request-id`, and for the Anthropic API also `request-id`,
/// the header Anthropic sends and its SDK reads (`_request_id`).
fn set_request_id(headers: &mut HeaderMap, id: &str, dialect: Dialect) {
    if let Ok(v) = HeaderValue::from_str(id) {
        if dialect == Dialect::Anthropic {
            headers.insert("request-id", v.clone());
        }
        headers.insert("x-request-id", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::{waker, ArcWake};
    use gateway_core::types::ChatChunk;

    struct Wakes(AtomicU64);

    impl ArcWake for Wakes {
        fn wake_by_ref(w: &Arc<Self>) {
            w.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn chunk(text: &str) -> Result<ChatChunk, gateway_core::ProviderError> {
        Ok(ChatChunk {
            id: "c".into(),
            object: "chat.completion.chunk".into(),
            created: 0,
            model: "m".into(),
            choices: Vec::new(),
            usage: None,
            raw: Some(Bytes::from(format!("{{\"t\":\"{text}\"}}"))),
        })
    }

    type Chunks = futures_util::stream::Iter<
        std::vec::IntoIter<Result<ChatChunk, gateway_core::ProviderError>>,
    >;

    /// An OpenAI-dialect SSE body over `chunks`, polled with a waker that counts its wakes.
    struct Polled {
        body: SseBody<Chunks>,
        wakes: Arc<Wakes>,
    }

    impl Polled {
        fn new(chunks: Vec<Result<ChatChunk, gateway_core::ProviderError>>) -> Self {
            Polled {
                body: SseBody {
                    inner: futures_util::stream::iter(chunks),
                    dialect: Dialect::OpenAi,
                    anthropic: None,
                    verbatim: false,
                    responses: None,
                    legacy_functions: false,
                    include_usage: false,
                    state: SseState::First,
                    buf: Vec::new(),
                    usage: None,
                    events: 0,
                    foreign_ids: false,
                    request_id: "req".into(),
                    finish: None,
                    sent: None,
                    fill: None,
                },
                wakes: Arc::new(Wakes(AtomicU64::new(0))),
            }
        }

        fn poll(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let w = waker(Arc::clone(&self.wakes));
            Pin::new(&mut self.body).poll_next(&mut Context::from_waker(&w))
        }

        /// The next poll's data frame, as text.
        fn data(&mut self) -> String {
            match self.poll() {
                Poll::Ready(Some(Ok(f))) => {
                    String::from_utf8(f.into_data().expect("a data frame").to_vec()).expect("utf-8")
                }
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    #[test]
    fn cost_values_have_eight_decimals_as_format_writes_them() {
        let text = |c: f64| cost_value(c).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(text(0.000_123_45).as_deref(), Some("0.00012345"));
        assert_eq!(text(1.5).as_deref(), Some("1.50000000"));
        assert_eq!(text(0.000_000_004).as_deref(), Some("0.00000000"));
        assert_eq!(text(987_654_321.25).as_deref(), Some("987654321.25000000"));
        assert_eq!(
            text(2e10).as_deref(),
            Some("20000000000.00000000"),
            "large: format!"
        );
        for c in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(text(c), None, "{c}");
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let c = rng.f64() * 10f64.powi(rng.i32(-9..6));
            let (ours, std) = (text(c).unwrap(), format!("{c:.8}"));
            // Rounding `c × 10⁸` rather than `c` may move the last digit by one.
            let gap = (ours.parse::<f64>().unwrap() - std.parse::<f64>().unwrap()).abs();
            assert!(ours == std || gap < 1.5e-8, "{c}: {ours} vs {std}");
            assert_eq!(ours.split('.').nth(1).map(str::len), Some(8), "{ours}");
        }
    }

    /// A burst of chunks ready at once: the first goes out alone, then the body yields once so
    /// that hyper writes it, then the rest go out together.
    #[test]
    fn the_first_chunk_of_a_burst_is_flushed_on_its_own() {
        let mut p = Polled::new(vec![chunk("a"), chunk("b"), chunk("c")]);
        assert_eq!(p.data(), "data: {\"t\":\"a\"}\n\n");
        assert!(p.poll().is_pending(), "yields once after the first chunk");
        assert_eq!(
            p.wakes.0.load(Ordering::SeqCst),
            1,
            "and asks to be polled again"
        );
        assert_eq!(
            p.data(),
            "data: {\"t\":\"b\"}\n\ndata: {\"t\":\"c\"}\n\ndata: [DONE]\n\n",
            "the rest of the burst in one frame"
        );
        assert!(matches!(p.poll(), Poll::Ready(None)));
    }

    /// A first chunk that writes nothing (a usage-only chunk the client did not ask for) is not
    /// a first frame: no empty frame goes out, and the next chunk is the one flushed alone.
    #[test]
    fn a_first_chunk_that_writes_nothing_does_not_count() {
        let mut usage_only = ChatChunk::new("c", "m", 0);
        usage_only.usage = Some(Usage::new(1, 2, 0));
        let mut p = Polled::new(vec![Ok(usage_only), chunk("a"), chunk("b")]);
        assert_eq!(p.data(), "data: {\"t\":\"a\"}\n\n");
        assert!(p.poll().is_pending());
        assert_eq!(p.data(), "data: {\"t\":\"b\"}\n\ndata: [DONE]\n\n");
    }
}
