//! The balancer and failover engine.
//!
//! [`Engine`] holds an immutable [`Snapshot`] of providers, keys and routes behind `arc-swap`; a
//! reload builds a new snapshot, carries over the [`Signals`] of keys whose identity did not change,
//! and swaps it in atomically, so in-flight requests finish on the snapshot they started with.
//!
//! For each request the engine resolves the model to an ordered plan of targets (route targets in
//! the route strategy's order, the route's fallbacks, the request's own fallbacks), picks a key of
//! each target's provider with the provider's strategy, and walks the plan by the error classes of
//! [`ProviderError::scope`]:
//!
//! - caller errors are returned at once;
//! - key-scoped errors (429 of one key, 401) rest or disable that key and try another key;
//! - transient errors (5xx, timeouts, connection errors) are retried at the same provider after a
//!   backoff with jitter, at most `max_retries` times, then the next target: on another key when
//!   one is left, else on a key that failed only transiently (a provider with one key retries it);
//! - provider-scoped errors (overloaded, account-wide throttling, unknown model) go to the next target.
//!
//! A (provider, key, model) candidate is tried again only after a transient error and only when no
//! untried key is left; attempts are bounded by `max_retries`, `max_attempts` and the request
//! deadline. Streams fail over until their first chunk; after that an error ends the stream.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_core::Stream;
use futures_util::StreamExt;
use smallvec::SmallVec;

use crate::error::{EngineError, FailoverScope, ProviderError, RateLimitScope};
use crate::observe::{AttemptRecord, NoopObserver, Observer};
use crate::provider::{Call, ChunkStream, Credential, ForwardAnswer, ForwardRequest, Provider};
use crate::ratelimit::RateLimitInfo;
use crate::signals::{
    AttemptOutcome, Availability, Clock, HealthConfig, InFlight, Signals, SignalsSnapshot,
    TokioClock,
};
use crate::strategy::{Candidate, PickContext, Strategy, StrategyKind};
use crate::types::{
    ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ModelInfo, Usage,
};

/// One credential of a provider.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// Name shown in logs, metrics and health (never the secret).
    pub name: String,
    /// The credential.
    pub credential: Credential,
    /// Share of traffic relative to the provider's other keys.
    pub weight: u32,
    /// Models this key may serve; `None` allows any.
    pub models: Option<Vec<String>>,
    /// Known requests-per-minute limit.
    pub rpm: Option<u64>,
    /// Known tokens-per-minute limit.
    pub tpm: Option<u64>,
    /// Most attempts in flight on this key at once (streams until their end); a request that
    /// finds every key it may use at its cap waits for a slot, until its deadline.
    pub max_concurrent: Option<u32>,
}

/// One upstream provider with its keys.
#[derive(Clone)]
pub struct ProviderConfig {
    /// Unique name; clients address `name/model`.
    pub name: String,
    /// The adapter.
    pub provider: Arc<dyn Provider>,
    /// Its keys (at least one; a keyless local server has one key with [`Credential::None`]).
    pub keys: Vec<KeyConfig>,
    /// How keys are chosen.
    pub strategy: StrategyKind,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Extra attempts at this provider after a transient error.
    pub max_retries: u32,
    /// Models this provider is known to serve (for `/v1/models` and bare-model routing).
    pub models: Vec<String>,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.provider.kind())
            .field("keys", &self.keys)
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

/// A weighted target of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    /// Provider name.
    pub provider: String,
    /// Upstream model id.
    pub model: String,
    /// Share of the route's traffic.
    pub weight: u32,
}

/// A public model name mapped to targets and fallbacks.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// The model name clients ask for.
    pub name: String,
    /// How targets are chosen.
    pub strategy: StrategyKind,
    /// Weighted targets.
    pub targets: Vec<TargetConfig>,
    /// Tried in order after the targets: `provider/model` or another route's name.
    pub fallbacks: Vec<String>,
    /// Tried in order, instead of what is left, once a target refuses the request as too long
    /// for its context window (`ProviderError::ContextLengthExceeded`, otherwise the caller's
    /// error): models with a larger window, `provider/model` or a route's name.
    pub context_window_fallbacks: Vec<String>,
    /// Tried in order, instead of what is left, once a target refuses the request under its
    /// content policy (`ProviderError::ContentFiltered`, otherwise the caller's error): models
    /// of another provider whose policy may accept it.
    pub content_policy_fallbacks: Vec<String>,
}

/// Retry and deadline settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// First backoff before retrying the same provider.
    pub backoff_base: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
    /// Most attempts for one request, over all targets.
    pub max_attempts: u32,
    /// Overall deadline of one request.
    pub request_timeout: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_attempts: 8,
            request_timeout: Duration::from_secs(600),
        }
    }
}

/// Everything the engine is built from.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Providers.
    pub providers: Vec<ProviderConfig>,
    /// Routes.
    pub routes: Vec<RouteConfig>,
    /// Health tuning.
    pub health: HealthConfig,
    /// Retries and deadlines.
    pub retry: RetryConfig,
}

/// A configuration the engine cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct ConfigError {
    /// One message per problem, naming the field.
    pub problems: Vec<String>,
}

struct KeyEntry {
    name: Arc<str>,
    credential: Arc<Credential>,
    weight: u32,
    models: Option<HashSet<String>>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrent: Option<u32>,
    signals: Arc<Signals>,
}

impl KeyEntry {
    fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

struct ProviderEntry {
    name: Arc<str>,
    kind: Arc<str>,
    provider: Arc<dyn Provider>,
    keys: Vec<KeyEntry>,
    strategy: Box<dyn Strategy>,
    timeout: Duration,
    max_retries: u32,
    models: Vec<String>,
    signals: Arc<Signals>,
}

struct TargetEntry {
    provider: usize,
    model: Arc<str>,
    weight: u32,
}

struct RouteEntry {
    name: Arc<str>,
    targets: Vec<TargetEntry>,
    fallbacks: Vec<String>,
    context_window_fallbacks: Vec<String>,
    content_policy_fallbacks: Vec<String>,
    strategy: Box<dyn Strategy>,
}

/// An immutable view of the configuration, swapped atomically on reload.
pub struct Snapshot {
    providers: Vec<ProviderEntry>,
    provider_index: HashMap<String, usize>,
    routes: HashMap<String, RouteEntry>,
    bare_models: HashMap<String, Vec<usize>>,
    /// Bare models that several providers serve, balanced over them like a route (adaptive,
    /// each provider weighted by its keys' weights) rather than sent to the first listed.
    bare_routes: HashMap<String, RouteEntry>,
    health: HealthConfig,
    retry: RetryConfig,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("providers", &self.providers.len())
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

/// Per-request options.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// The gateway's request id.
    pub request_id: Arc<str>,
    /// The request's trace; each attempt gets a child span and a `traceparent` naming it.
    pub trace: Option<crate::observe::TraceContext>,
    /// Fallbacks named by the request itself.
    pub fallbacks: Vec<String>,
    /// Only these providers may serve it (a virtual key's allow-list, names compared
    /// case-insensitively); empty means all.
    pub allowed_providers: Vec<String>,
    /// Fixed RNG seed (tests and simulations).
    pub seed: Option<u64>,
    /// The format in which the caller honours `raw` on answers and chunks (see
    /// [`Call::passthrough`]).
    pub passthrough: crate::provider::Passthrough,
    /// Only this key of this provider may serve the request (state kept by the provider for
    /// one account, such as a stored OpenAI response that `previous_response_id` continues).
    /// Other providers of the plan are passed over; if that key rests, the request waits for it
    /// rather than going elsewhere.
    pub pinned_key: Option<PinnedKey>,
}

/// A provider's key, by name ([`RequestOptions::pinned_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedKey {
    /// The provider's name.
    pub provider: Arc<str>,
    /// The key's name.
    pub key: Arc<str>,
}

/// Who served a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy {
    /// Provider name.
    pub provider: Arc<str>,
    /// Provider kind.
    pub provider_kind: Arc<str>,
    /// Key name.
    pub key: Arc<str>,
    /// Upstream model id.
    pub model: Arc<str>,
}

/// A successful answer and how it was obtained.
#[derive(Debug)]
pub struct Outcome<T> {
    /// The answer.
    pub value: T,
    /// Who served it.
    pub served_by: ServedBy,
    /// Every attempt, the successful one last.
    pub attempts: Vec<AttemptRecord>,
    /// The route the model resolved to, if any.
    pub route: Option<Arc<str>>,
}

/// A failure and the attempts that led to it.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Failure {
    /// What went wrong.
    pub error: EngineError,
    /// Every attempt made.
    pub attempts: Vec<AttemptRecord>,
    /// The route the model resolved to, if any.
    pub route: Option<Arc<str>>,
}

impl From<Failure> for EngineError {
    fn from(f: Failure) -> Self {
        f.error
    }
}

/// Health of one key, for the admin API and telemetry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyHealth {
    /// Key name.
    pub name: String,
    /// `available`, `resting`, `ejected` or `probing`.
    pub state: &'static str,
    /// Milliseconds until it comes back, if resting or ejected.
    pub cooldown_ms: Option<u64>,
    /// Configured weight.
    pub weight: u32,
    /// Live signals.
    pub signals: SignalsSnapshot,
    /// Share of this provider's picks so far.
    pub share: f64,
}

/// Health of one provider.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProviderHealth {
    /// Provider name.
    pub name: String,
    /// Provider kind.
    pub kind: String,
    /// Key strategy.
    pub strategy: &'static str,
    /// Provider-level state.
    pub state: &'static str,
    /// Milliseconds until it comes back, if ejected.
    pub cooldown_ms: Option<u64>,
    /// Provider-level signals.
    pub signals: SignalsSnapshot,
    /// Its keys.
    pub keys: Vec<KeyHealth>,
}

/// The balancer and failover engine. Cheap to share (`Arc<Engine>`).
pub struct Engine {
    snapshot: ArcSwap<Snapshot>,
    registry: Mutex<HashMap<String, Arc<Signals>>>,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

fn state_name(a: Availability) -> &'static str {
    match a {
        Availability::Available => "available",
        Availability::Ejected { .. } => "ejected",
        Availability::Resting { .. } => "resting",
        Availability::Probing => "probing",
    }
}

impl Engine {
    /// Builds an engine on tokio's clock with no observer.
    pub fn new(config: EngineConfig) -> Result<Self, ConfigError> {
        Self::with_parts(config, Arc::new(TokioClock::new()), Arc::new(NoopObserver))
    }

    /// Builds an engine with an injected clock and observer.
    pub fn with_parts(
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, ConfigError> {
        let registry = Mutex::new(HashMap::new());
        let snapshot = build_snapshot(&config, &registry)?;
        Ok(Engine {
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            clock,
            observer,
        })
    }

    /// Validates `config` and swaps it in; health of unchanged keys carries over. On error the
    /// running configuration stays.
    pub fn reload(&self, config: EngineConfig) -> Result<(), ConfigError> {
        let snapshot = build_snapshot(&config, &self.registry)?;
        self.snapshot.store(Arc::new(snapshot));
        Ok(())
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The clock's now, in nanoseconds.
    pub fn now(&self) -> u64 {
        self.clock.now_nanos()
    }

    /// A chat completion, balanced and failed over.
    pub async fn chat(
        &self,
        request: &ChatRequest,
        opts: &RequestOptions,
    ) -> Result<Outcome<ChatResponse>, Failure> {
        let est = request.estimate_input_tokens() + u64::from(request.output_limit().unwrap_or(0));
        let fallbacks = merge_fallbacks(&request.fallbacks, &opts.fallbacks);
        let out = self
            .run(
                &request.model,
                &fallbacks,
                opts,
                est,
                Some(request),
                |p, call| async move {
                    let r = p.chat(&call, request).await?;
                    Ok((r.body, r.rate_limit, None))
                },
            )
            .await?;
        let actual = out.value.usage.map_or(est, |u| u.total_tokens);
        out.key_signals.settle_tokens(est, actual);
        Ok(out.finish(self.now()))
    }

    /// A streamed chat completion. Fails over until the first chunk; the returned stream ends with
    /// an error item if the upstream fails later.
    pub async fn chat_stream(
        &self,
        request: &ChatRequest,
        opts: &RequestOptions,
    ) -> Result<Outcome<EngineStream>, Failure> {
        let est = request.estimate_input_tokens() + u64::from(request.output_limit().unwrap_or(0));
        let fallbacks = merge_fallbacks(&request.fallbacks, &opts.fallbacks);
        let clock = Arc::clone(&self.clock);
        let out = self
            .run(
                &request.model,
                &fallbacks,
                opts,
                est,
                Some(request),
                |p, call| {
                    let clock = Arc::clone(&clock);
                    async move {
                        let start = clock.now_nanos();
                        let s = p.chat_stream(&call, request).await?;
                        let mut chunks = s.chunks;
                        // Chunks that open the stream without content (a role, Anthropic's
                        // `message_start`) are held with the first one that has some: an
                        // upstream that fails between the two (Anthropic's in-band
                        // `overloaded_error`) has sent nothing usable, and the request fails
                        // over like one that failed before its first byte.
                        let mut held = std::collections::VecDeque::new();
                        loop {
                            match chunks.next().await {
                                Some(Ok(c)) => {
                                    let preamble = c.is_preamble();
                                    held.push_back(c);
                                    if !preamble || held.len() >= MAX_PREAMBLE {
                                        break;
                                    }
                                }
                                Some(Err(e)) => return Err(e),
                                None if held.is_empty() => {
                                    return Err(ProviderError::Protocol(
                                        "stream ended before the first chunk".to_owned(),
                                    ))
                                }
                                None => break,
                            }
                        }
                        let ttft = Duration::from_nanos(clock.now_nanos().saturating_sub(start));
                        Ok(((held, chunks), s.rate_limit, Some(ttft)))
                    }
                },
            )
            .await?;
        let ttft = out.attempts.last().and_then(|a| a.ttft);
        let ((held, rest), served_by, attempts, route) =
            (out.value, out.served_by.clone(), out.attempts, out.route);
        let stream = EngineStream {
            held,
            rest,
            credential: out.credential,
            guards: Some(StreamGuards {
                key: out.key_guard,
                target: out.target_guard,
                key_signals: out.key_signals,
                estimated_tokens: est,
                clock: Arc::clone(&self.clock),
                health: out.health,
                ttft: ttft.unwrap_or_default(),
            }),
            usage: None,
        };
        Ok(Outcome {
            value: stream,
            served_by,
            attempts,
            route,
        })
    }

    /// Embeddings, balanced and failed over.
    pub async fn embed(
        &self,
        request: &EmbeddingRequest,
        opts: &RequestOptions,
    ) -> Result<Outcome<EmbeddingResponse>, Failure> {
        let est = request.input.estimate_tokens();
        let fallbacks = merge_fallbacks(&request.fallbacks, &opts.fallbacks);
        let out = self
            .run(
                &request.model,
                &fallbacks,
                opts,
                est,
                None,
                |p, call| async move {
                    let r = p.embed(&call, request).await?;
                    Ok((r.body, r.rate_limit, None))
                },
            )
            .await?;
        Ok(out.finish(self.now()))
    }

    /// A call to an OpenAI endpoint the gateway passes on ([`Provider::forward`]), balanced and
    /// failed over like embeddings; providers without the endpoint are passed over.
    pub async fn forward(
        &self,
        request: &ForwardRequest,
        opts: &RequestOptions,
    ) -> Result<Outcome<ForwardAnswer>, Failure> {
        let out = self
            .run(
                &request.model,
                &opts.fallbacks,
                opts,
                0,
                None,
                |p, call| async move {
                    let r = p.forward(&call, request).await?;
                    Ok((r.body, r.rate_limit, None))
                },
            )
            .await?;
        Ok(out.finish(self.now()))
    }

    /// The input tokens of `request` as the provider that would serve it counts them: one call
    /// ([`Provider::count_tokens`]) to the first target of its plan, with a key its strategy
    /// picks. `Ok(None)` when that provider cannot count, has no usable key, or the count
    /// failed; the caller then estimates. Counting is not a request for the model: it leaves
    /// the keys' signals (windows, latency, health) alone and is not retried.
    pub async fn count_tokens(
        &self,
        request: &ChatRequest,
        opts: &RequestOptions,
    ) -> Result<Option<u64>, EngineError> {
        let snap = self.snapshot.load_full();
        let mut rng = fastrand::Rng::new();
        let fallbacks = merge_fallbacks(&request.fallbacks, &opts.fallbacks);
        let mut plan = Plan::new(&snap, &request.model, &fallbacks, &opts.allowed_providers)?;
        let now = self.now();
        let Some((pi, model_id)) = plan.next_target(&snap, now, &mut rng) else {
            return Ok(None);
        };
        let p = &snap.providers[pi];
        let (idx, cands): (SmallVec<[usize; 16]>, SmallVec<[Candidate<'_>; 16]>) = p
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.allows(&model_id))
            .map(|(ki, k)| {
                let c = Candidate {
                    weight: k.weight,
                    signals: &k.signals,
                    rpm: k.rpm,
                    tpm: k.tpm,
                };
                (ki, c)
            })
            .unzip();
        let ctx = PickContext {
            now,
            health: &snap.health,
        };
        let Some(choice) = p.strategy.pick(&cands, &ctx, &mut rng) else {
            return Ok(None);
        };
        let key = &p.keys[idx[choice]];
        let call = Call {
            credential: Arc::clone(&key.credential),
            key_name: Arc::clone(&key.name),
            model: model_id,
            timeout: p.timeout,
            request_id: Arc::clone(&opts.request_id),
            traceparent: None,
            passthrough: opts.passthrough,
        };
        let counted =
            tokio::time::timeout(p.timeout, p.provider.count_tokens(&call, request)).await;
        Ok(counted.ok().and_then(Result::ok).flatten())
    }

    /// Whether a model name is a route.
    pub fn is_route(&self, model: &str) -> bool {
        self.snapshot.load().routes.contains_key(model)
    }

    /// Whether a model name resolves to something this gateway serves.
    pub fn resolves(&self, model: &str) -> bool {
        let snap = self.snapshot.load();
        snap.routes.contains_key(model)
            || split_direct(&snap, model).is_some()
            || snap.bare_models.contains_key(model)
    }

    /// The providers a model name may reach (for provider allow-lists), route fallbacks included.
    pub fn providers_for(&self, model: &str) -> Vec<String> {
        let snap = self.snapshot.load();
        let mut out = Vec::new();
        let mut push = |i: usize| {
            let n = snap.providers[i].name.to_string();
            if !out.contains(&n) {
                out.push(n);
            }
        };
        if let Some(r) = snap.routes.get(model) {
            for t in &r.targets {
                push(t.provider);
            }
        } else if let Some((p, _)) = split_direct(&snap, model) {
            push(p);
        } else if let Some(ps) = snap.bare_models.get(model) {
            for p in ps {
                push(*p);
            }
        }
        out
    }

    /// The (provider, upstream model) pairs a model name and its fallbacks may be served by: a
    /// route's targets and fallbacks (context-window ones included), a direct `provider/model`, a bare model's providers (for
    /// pricing a reservation, which must hold for the dearest of them).
    pub fn targets_for(&self, model: &str, fallbacks: &[String]) -> Vec<(String, String)> {
        let snap = self.snapshot.load();
        let mut out: Vec<(String, String)> = Vec::new();
        let add = |name: &str, depth: u8, out: &mut Vec<(String, String)>| {
            let mut push = |p: usize, m: &str| {
                let pair = (snap.providers[p].name.to_string(), m.to_owned());
                if !out.contains(&pair) {
                    out.push(pair);
                }
            };
            if let Some(r) = snap.routes.get(name) {
                for t in &r.targets {
                    push(t.provider, &t.model);
                }
                if depth > 0 {
                    for f in r
                        .fallbacks
                        .iter()
                        .chain(&r.context_window_fallbacks)
                        .chain(&r.content_policy_fallbacks)
                    {
                        if let Some((p, m)) = split_direct(&snap, f) {
                            push(p, &m);
                        } else if let Some(fr) = snap.routes.get(f.as_str()) {
                            for t in &fr.targets {
                                push(t.provider, &t.model);
                            }
                        }
                    }
                }
            } else if let Some((p, m)) = split_direct(&snap, name) {
                push(p, &m);
            } else if let Some(ps) = snap.bare_models.get(name) {
                for p in ps {
                    push(*p, name);
                }
            }
        };
        add(model, 1, &mut out);
        for f in fallbacks {
            add(f, 0, &mut out);
        }
        out
    }

    /// Calls `f` with the provider and the key `pin` names, once: for requests about state that
    /// key's account holds (a stored response), which no other key could serve. Like counting
    /// tokens, it is not a request for a model: no signal, window or key state changes.
    /// [`ProviderError::NotFound`] when the provider or the key is no longer configured.
    pub async fn with_pinned_key<T, F, Fut>(
        &self,
        pin: &PinnedKey,
        request_id: Arc<str>,
        f: F,
    ) -> Result<T, ProviderError>
    where
        F: FnOnce(Arc<dyn Provider>, Call) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let snap = self.snapshot.load_full();
        let found = snap
            .providers
            .iter()
            .find(|p| *p.name == *pin.provider)
            .and_then(|p| p.keys.iter().find(|k| *k.name == *pin.key).map(|k| (p, k)));
        let Some((p, key)) = found else {
            return Err(ProviderError::NotFound {
                message: format!(
                    "key `{}` of provider `{}` is no longer configured",
                    pin.key, pin.provider
                ),
            });
        };
        let call = Call {
            credential: Arc::clone(&key.credential),
            key_name: Arc::clone(&key.name),
            model: Arc::from(""),
            timeout: p.timeout,
            request_id,
            traceparent: None,
            passthrough: crate::provider::Passthrough::Off,
        };
        let timeout = p.timeout;
        let credential = Arc::clone(&key.credential);
        match tokio::time::timeout(timeout, f(Arc::clone(&p.provider), call)).await {
            Ok(r) => r.map_err(|e| e.redacted(&credential)),
            Err(_) => Err(ProviderError::Timeout),
        }
    }

    /// Routes and directly addressable models.
    pub fn models(&self) -> Vec<ModelInfo> {
        let snap = self.snapshot.load();
        let mut out: Vec<ModelInfo> = Vec::new();
        let mut names: Vec<&String> = snap.routes.keys().collect();
        names.sort();
        for n in names {
            out.push(ModelInfo {
                id: n.clone(),
                owned_by: "gateway".to_owned(),
                created: 0,
            });
        }
        for p in &snap.providers {
            let mut models: Vec<String> = p.models.clone();
            for k in &p.keys {
                if let Some(m) = &k.models {
                    models.extend(m.iter().cloned());
                }
            }
            for r in snap.routes.values() {
                for t in &r.targets {
                    if snap.providers[t.provider].name == p.name {
                        models.push(t.model.to_string());
                    }
                }
            }
            models.sort();
            models.dedup();
            for m in models {
                out.push(ModelInfo {
                    id: format!("{}/{}", p.name, m),
                    owned_by: p.name.to_string(),
                    created: 0,
                });
            }
        }
        out
    }

    /// Health of every provider and key.
    pub fn health(&self) -> Vec<ProviderHealth> {
        let snap = self.snapshot.load();
        let now = self.now();
        let decay = snap.health.decay;
        let ms = |until: Option<u64>| until.map(|u| u.saturating_sub(now) / 1_000_000);
        snap.providers
            .iter()
            .map(|p| {
                let total: u64 = p
                    .keys
                    .iter()
                    .map(|k| k.signals.snapshot(now, decay, None, None).picks)
                    .sum();
                let pa = p.signals.availability(now);
                ProviderHealth {
                    name: p.name.to_string(),
                    kind: p.kind.to_string(),
                    strategy: p.strategy.name(),
                    state: state_name(pa),
                    cooldown_ms: ms(pa.until()),
                    signals: p.signals.snapshot(now, decay, None, None),
                    keys: p
                        .keys
                        .iter()
                        .map(|k| {
                            let a = k.signals.availability(now);
                            let s = k.signals.snapshot(now, decay, k.rpm, k.tpm);
                            KeyHealth {
                                name: k.name.to_string(),
                                state: state_name(a),
                                cooldown_ms: ms(a.until()),
                                weight: k.weight,
                                share: if total == 0 {
                                    0.0
                                } else {
                                    s.picks as f64 / total as f64
                                },
                                signals: s,
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// The best headroom (0..1) among the usable keys that can serve a model (0 when all rest):
    /// when even the best key is nearly full, capacity is short and batch traffic is held back.
    pub fn headroom_for(&self, model: &str) -> f64 {
        let snap = self.snapshot.load();
        let now = self.now();
        let providers = self.providers_for(model);
        let mut best = 0.0f64;
        let mut any = false;
        for name in providers {
            if let Some(&i) = snap.provider_index.get(&name) {
                for k in &snap.providers[i].keys {
                    any = true;
                    let usable = k.signals.availability(now).is_available();
                    let h = if usable {
                        k.signals.headroom(now, k.rpm, k.tpm)
                    } else {
                        0.0
                    };
                    best = best.max(h);
                }
            }
        }
        if any {
            best
        } else {
            1.0
        }
    }

    async fn run<'r, T, F, Fut>(
        &self,
        model: &str,
        fallbacks: &[String],
        opts: &RequestOptions,
        est_tokens: u64,
        chat: Option<&ChatRequest>,
        mut call_fn: F,
    ) -> Result<Success<T>, Failure>
    where
        F: FnMut(Arc<dyn Provider>, Call) -> Fut,
        Fut: std::future::Future<
                Output = Result<(T, RateLimitInfo, Option<Duration>), ProviderError>,
            > + 'r,
    {
        let snap = self.snapshot.load_full();
        let mut rng = match opts.seed {
            Some(s) => fastrand::Rng::with_seed(s),
            None => fastrand::Rng::new(),
        };
        let mut plan =
            Plan::new(&snap, model, fallbacks, &opts.allowed_providers).map_err(|e| Failure {
                error: e,
                attempts: Vec::new(),
                route: None,
            })?;
        let route = plan.route.clone();
        let retry = snap.retry;
        let health = snap.health;
        let deadline = self
            .now()
            .saturating_add(retry.request_timeout.as_nanos() as u64);
        let mut attempts: Vec<AttemptRecord> = Vec::new();
        let mut tried: SmallVec<[Tried; 8]> = SmallVec::new();
        let mut last_err: Option<ProviderError> = None;
        let mut earliest_back: Option<u64> = None;
        // When the earliest key ejected or disabled (not resting) comes back.
        let mut earliest_out: Option<u64> = None;
        let mut prev_provider: Option<Arc<str>> = None;

        let fail =
            |error: EngineError, attempts: Vec<AttemptRecord>, route: Option<Arc<str>>| Failure {
                error,
                attempts,
                route,
            };

        // Passes over the plan: another only when a key this request may use was at its
        // concurrency cap, after a slot frees (keys tried and failed stay tried).
        let mut waited_out = false;
        'pass: loop {
            // A key passed over because it was at its concurrency cap.
            let mut busy: Option<(Arc<Signals>, u32)> = None;
            while let Some((pi, model_id)) = plan.next_target(&snap, self.now(), &mut rng) {
                let p = &snap.providers[pi];
                let pinned_key = match &opts.pinned_key {
                    Some(pin) if *pin.provider != *p.name => continue,
                    Some(pin) => Some(&*pin.key),
                    None => None,
                };
                // A target that cannot do what the request asks is passed over before any key is
                // picked: no attempt, no signal.
                if let Some(Err(e)) = chat.map(|r| p.provider.supports(&model_id, r)) {
                    last_err = Some(e);
                    continue;
                }
                let mut provider_attempts = 0u32;
                loop {
                    if attempts.len() as u32 >= retry.max_attempts {
                        break;
                    }
                    let now = self.now();
                    // A provider ejected since this request's last attempt at it (by the failures of
                    // others in flight) is not retried: the next target is.
                    if provider_attempts > 0 && !p.signals.availability(now).is_available() {
                        break;
                    }
                    if now >= deadline {
                        return Err(fail(
                            EngineError::DeadlineExceeded {
                                attempts: attempts.len() as u32,
                            },
                            attempts,
                            route,
                        ));
                    }
                    // Candidates: keys that allow the model and were not tried for it; when none is
                    // left after a transient error, those whose failures were all transient.
                    let mut idx: SmallVec<[usize; 16]> = SmallVec::new();
                    let mut cands: SmallVec<[Candidate<'_>; 16]> = SmallVec::new();
                    let retrying = last_err
                        .as_ref()
                        .is_some_and(|e| e.scope() == FailoverScope::Transient)
                        && provider_attempts > 0;
                    for again in [false, true] {
                        if again && (!cands.is_empty() || !retrying) {
                            break;
                        }
                        for (ki, k) in p.keys.iter().enumerate() {
                            if !k.allows(&model_id) || pinned_key.is_some_and(|pk| pk != &*k.name) {
                                continue;
                            }
                            let seen = tried.iter().find(|(tp, tk, tm, _)| {
                                *tp == pi && *tk == ki && **tm == *model_id
                            });
                            let eligible = match seen {
                                None => !again,
                                Some((_, _, _, transient_only)) => again && *transient_only,
                            };
                            if !eligible {
                                continue;
                            }
                            if let Some(cap) =
                                k.max_concurrent.filter(|&cap| k.signals.in_flight() >= cap)
                            {
                                busy.get_or_insert_with(|| (Arc::clone(&k.signals), cap));
                                continue;
                            }
                            idx.push(ki);
                            cands.push(Candidate {
                                weight: k.weight,
                                signals: &k.signals,
                                rpm: k.rpm,
                                tpm: k.tpm,
                            });
                        }
                    }
                    if cands.is_empty() {
                        break;
                    }
                    let ctx = PickContext {
                        now,
                        health: &health,
                    };
                    let Some(choice) = p.strategy.pick(&cands, &ctx, &mut rng).or_else(|| {
                        // Nothing usable: strategies without health (round robin, weighted) never
                        // return None here; for the others, remember when a key comes back.
                        let (limited, out) = crate::strategy::earliest_returns(&cands, now);
                        if let Some(b) = limited {
                            earliest_back = Some(earliest_back.map_or(b, |e| e.min(b)));
                        }
                        if let Some(b) = out {
                            earliest_out = Some(earliest_out.map_or(b, |e| e.min(b)));
                        }
                        // A provider reached with every key ejected after failures (its only
                        // key, a route's last target) is tried on the key that comes back
                        // first rather than refused: the upstream may well have recovered.
                        // Not on a retry: the next target goes first then.
                        if provider_attempts == 0 {
                            return crate::strategy::last_resort(&cands, now);
                        }
                        None
                    }) else {
                        break;
                    };
                    let ki = idx[choice];
                    let key = &p.keys[ki];
                    let slot = match tried
                        .iter()
                        .position(|(tp, tk, tm, _)| *tp == pi && *tk == ki && **tm == *model_id)
                    {
                        Some(i) => i,
                        None => {
                            tried.push((pi, ki, Arc::clone(&model_id), true));
                            tried.len() - 1
                        }
                    };

                    // Backoff before another attempt at the same provider after a transient error.
                    if provider_attempts > 0
                        && last_err
                            .as_ref()
                            .is_some_and(|e| e.scope() == FailoverScope::Transient)
                    {
                        let exp = retry
                            .backoff_base
                            .saturating_mul(1 << provider_attempts.min(10))
                            .min(retry.backoff_max);
                        let jittered = exp.mul_f64(0.5 + rng.f64() * 0.5);
                        let left = Duration::from_nanos(deadline.saturating_sub(self.now()));
                        tokio::time::sleep(jittered.min(left)).await;
                    }

                    let now = self.now();
                    let key_guard = match key.max_concurrent {
                        None => key.signals.start(now, est_tokens),
                        Some(cap) => match key.signals.try_start(now, est_tokens, cap) {
                            Some(g) => g,
                            // Filled by other requests since it was picked (during the backoff):
                            // another key, or a wait for a slot.
                            None => {
                                busy.get_or_insert_with(|| (Arc::clone(&key.signals), cap));
                                continue;
                            }
                        },
                    };
                    let left = Duration::from_nanos(deadline.saturating_sub(now));
                    let timeout = p.timeout.min(left);
                    let span_id = opts.trace.map(|_| rng.u64(1..));
                    let call = Call {
                        credential: Arc::clone(&key.credential),
                        key_name: Arc::clone(&key.name),
                        model: Arc::clone(&model_id),
                        timeout,
                        request_id: Arc::clone(&opts.request_id),
                        traceparent: opts
                            .trace
                            .zip(span_id)
                            .map(|(t, s)| Arc::from(t.traceparent_for(s))),
                        passthrough: opts.passthrough,
                    };
                    let started_at = std::time::SystemTime::now();
                    let target_guard = p.signals.start(now, est_tokens);
                    let under_way = UnderWay {
                        observer: &*self.observer,
                        provider: p,
                        key,
                        model: &model_id,
                        started: std::time::Instant::now(),
                        started_at,
                        is_retry: provider_attempts > 0,
                        span_id,
                    };
                    let result =
                        match tokio::time::timeout(timeout, call_fn(Arc::clone(&p.provider), call))
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => Err(ProviderError::Timeout),
                        };
                    under_way.ended();
                    let end = self.now();
                    let latency = Duration::from_nanos(end.saturating_sub(now));
                    let is_retry = provider_attempts > 0;
                    let fallback_from = match &prev_provider {
                        Some(prev) if *prev != p.name => Some(Arc::clone(prev)),
                        _ => None,
                    };
                    provider_attempts += 1;
                    prev_provider = Some(Arc::clone(&p.name));
                    match result {
                        Ok((value, rate_limit, ttft)) => {
                            key.signals.record_rate_limit(end, &rate_limit);
                            let record = AttemptRecord {
                                provider: Arc::clone(&p.name),
                                provider_kind: Arc::clone(&p.kind),
                                key: Arc::clone(&key.name),
                                model: Arc::clone(&model_id),
                                outcome: "ok",
                                error: None,
                                latency,
                                ttft,
                                rate_limit,
                                is_retry,
                                fallback_from,
                                started_at,
                                span_id,
                            };
                            self.observer.on_attempt(&record);
                            attempts.push(record);
                            return Ok(Success {
                                value,
                                served_by: ServedBy {
                                    provider: Arc::clone(&p.name),
                                    provider_kind: Arc::clone(&p.kind),
                                    key: Arc::clone(&key.name),
                                    model: Arc::clone(&model_id),
                                },
                                attempts,
                                route,
                                key_guard,
                                target_guard,
                                key_signals: Arc::clone(&key.signals),
                                credential: Arc::clone(&key.credential),
                                health,
                            });
                        }
                        Err(err) => {
                            // Whatever the upstream quoted of the key it was sent stays here.
                            let err = err.redacted(&key.credential);
                            let scope = err.scope();
                            if scope != FailoverScope::Transient {
                                tried[slot].3 = false;
                            }
                            // Health bookkeeping by class.
                            match &err {
                                ProviderError::RateLimited {
                                    retry_after,
                                    remaining,
                                    scope: rl_scope,
                                    ..
                                } => {
                                    if let Some(info) = remaining {
                                        key.signals.record_rate_limit(end, info);
                                    }
                                    let wait = retry_after
                                        .or_else(|| remaining.as_ref().and_then(|r| r.wait_hint()))
                                        .unwrap_or(health.default_rest);
                                    let until = end.saturating_add(wait.as_nanos() as u64);
                                    // When it comes back, for the client's `retry-after` if no
                                    // other key serves.
                                    if *rl_scope != RateLimitScope::Quota {
                                        earliest_back =
                                            Some(earliest_back.map_or(until, |e| e.min(until)));
                                    }
                                    match rl_scope {
                                        RateLimitScope::Key => key.signals.rest_until(until),
                                        RateLimitScope::Quota => {
                                            key.signals.disable_until(end.saturating_add(
                                                health.disable_for.as_nanos() as u64,
                                            ))
                                        }
                                        RateLimitScope::Provider => p.signals.rest_until(until),
                                    }
                                    key_guard.finish(end, AttemptOutcome::Neutral, &health);
                                    target_guard.finish(end, AttemptOutcome::Neutral, &health);
                                }
                                ProviderError::Auth { .. } => {
                                    key.signals.disable_until(
                                        end.saturating_add(health.disable_for.as_nanos() as u64),
                                    );
                                    key_guard.finish(end, AttemptOutcome::Failure, &health);
                                    target_guard.finish(end, AttemptOutcome::Neutral, &health);
                                }
                                e if e.is_provider_failure() => {
                                    if let ProviderError::Overloaded {
                                        retry_after: Some(w),
                                        ..
                                    } = e
                                    {
                                        p.signals
                                            .rest_until(end.saturating_add(w.as_nanos() as u64));
                                    }
                                    // The key too: one that fails while the provider's others
                                    // answer (a broken deployment or region behind it) is
                                    // ejected on its own, and costs more to the adaptive pick.
                                    key_guard.finish(end, AttemptOutcome::Failure, &health);
                                    target_guard.finish(end, AttemptOutcome::Failure, &health);
                                }
                                _ => {
                                    key_guard.finish(end, AttemptOutcome::Neutral, &health);
                                    target_guard.finish(end, AttemptOutcome::Neutral, &health);
                                }
                            }
                            let record = AttemptRecord {
                                provider: Arc::clone(&p.name),
                                provider_kind: Arc::clone(&p.kind),
                                key: Arc::clone(&key.name),
                                model: Arc::clone(&model_id),
                                outcome: err.outcome(),
                                error: Some(err.clone()),
                                latency,
                                ttft: None,
                                rate_limit: RateLimitInfo::default(),
                                is_retry,
                                fallback_from,
                                started_at,
                                span_id,
                            };
                            self.observer.on_attempt(&record);
                            attempts.push(record);
                            match scope {
                                FailoverScope::Caller => {
                                    // Too long for this model's window, or against its provider's
                                    // content policy: a route may name models that take it.
                                    if plan.widen(&snap, &err) {
                                        last_err = Some(err);
                                        break;
                                    }
                                    return Err(fail(EngineError::Caller(err), attempts, route));
                                }
                                FailoverScope::Stop => {
                                    return Err(fail(EngineError::Cancelled, attempts, route));
                                }
                                FailoverScope::Key => {
                                    last_err = Some(err);
                                    continue;
                                }
                                FailoverScope::Transient => {
                                    last_err = Some(err);
                                    if provider_attempts > p.max_retries {
                                        break;
                                    }
                                }
                                FailoverScope::Provider => {
                                    last_err = Some(err);
                                    break;
                                }
                            }
                        }
                    }
                }
                if attempts.len() as u32 >= retry.max_attempts {
                    break;
                }
            }
            if let Some((b, cap)) = busy {
                let now = self.now();
                if now >= deadline {
                    waited_out = true;
                } else if (attempts.len() as u32) < retry.max_attempts {
                    // Registered before the check, so a slot freed in between is not missed; the
                    // timeout re-checks in case the slot went to a key of another snapshot.
                    let freed = b.freed().notified();
                    tokio::pin!(freed);
                    freed.as_mut().enable();
                    if b.in_flight() >= cap {
                        let left = Duration::from_nanos(deadline - now);
                        let _ = tokio::time::timeout(left.min(SLOT_RECHECK), freed).await;
                    }
                    plan = Plan::new(&snap, model, fallbacks, &opts.allowed_providers).map_err(
                        |e| Failure {
                            error: e,
                            attempts: Vec::new(),
                            route: None,
                        },
                    )?;
                    continue 'pass;
                }
            }
            break;
        }
        let n = attempts.len() as u32;
        let until = |at: u64| {
            Duration::from_nanos(at.saturating_sub(self.now())).max(Duration::from_millis(1))
        };
        if waited_out && last_err.is_none() {
            // Every key it may use stayed at its concurrency cap until the deadline.
            return Err(fail(
                EngineError::DeadlineExceeded { attempts: n },
                attempts,
                route,
            ));
        }
        let error = match (last_err, earliest_back) {
            // Nothing was tried because everything is resting: say when to come back.
            (None, Some(back)) => EngineError::AllRateLimited {
                retry_after: until(back),
            },
            // The last attempt was rate limited: its own words, and when the first key is back
            // (its own hint, or the rest it was given without one).
            (
                Some(ProviderError::RateLimited {
                    remaining,
                    scope,
                    message,
                    ..
                }),
                Some(back),
            ) => EngineError::Exhausted {
                attempts: n,
                last: ProviderError::RateLimited {
                    retry_after: Some(until(back)),
                    remaining,
                    scope,
                    message,
                },
            },
            (Some(last), _) => EngineError::Exhausted { attempts: n, last },
            // Nothing was tried because every key is out of service (a refused credential, an
            // exhausted quota, ejected after failures): not the caller's rate limit.
            (None, None) if earliest_out.is_some() => EngineError::Unavailable {
                retry_after: until(earliest_out.unwrap_or_default()),
            },
            (None, None) => EngineError::Exhausted {
                attempts: n,
                last: ProviderError::Connect("no usable key for this model".to_owned()),
            },
        };
        Err(fail(error, attempts, route))
    }
}

/// Most content-free chunks held at a stream's start before it is handed over anyway.
const MAX_PREAMBLE: usize = 8;

/// How long a request waiting for a concurrency slot sleeps before looking again, if no slot
/// of the key it waits on frees meanwhile.
const SLOT_RECHECK: Duration = Duration::from_millis(250);

fn merge_fallbacks(a: &[String], b: &[String]) -> Vec<String> {
    if b.is_empty() {
        return a.to_vec();
    }
    let mut v = a.to_vec();
    for f in b {
        if !v.contains(f) {
            v.push(f.clone());
        }
    }
    v
}

/// A candidate tried for a request: (provider, key, model, whether its failures so far were all
/// transient, so it may be tried again when no untried key is left).
type Tried = (usize, usize, Arc<str>, bool);

struct Success<T> {
    value: T,
    served_by: ServedBy,
    attempts: Vec<AttemptRecord>,
    route: Option<Arc<str>>,
    key_guard: InFlight,
    target_guard: InFlight,
    key_signals: Arc<Signals>,
    /// The serving key's credential, to keep it out of a stream's later errors.
    credential: Arc<Credential>,
    health: HealthConfig,
}

impl<T> Success<T> {
    /// Records a non-streaming success and hands out the answer.
    fn finish(self, now: u64) -> Outcome<T> {
        self.key_guard
            .finish(now, AttemptOutcome::Success, &self.health);
        self.target_guard
            .finish(now, AttemptOutcome::Success, &self.health);
        Outcome {
            value: self.value,
            served_by: self.served_by,
            attempts: self.attempts,
            route: self.route,
        }
    }
}

/// Splits `provider/model` when the prefix names a provider.
fn split_direct(snap: &Snapshot, name: &str) -> Option<(usize, Arc<str>)> {
    let (p, m) = name.split_once('/')?;
    let i = *snap.provider_index.get(p)?;
    (!m.is_empty()).then(|| (i, Arc::from(m)))
}

/// An attempt under way. When the request's future is dropped before the attempt ends (the
/// client left before its answer or first chunk), it is reported to the observer as cancelled
/// (`client_error`), so that every attempt is counted once.
struct UnderWay<'a> {
    observer: &'a dyn Observer,
    provider: &'a ProviderEntry,
    key: &'a KeyEntry,
    model: &'a Arc<str>,
    started: std::time::Instant,
    started_at: std::time::SystemTime,
    is_retry: bool,
    span_id: Option<u64>,
}

impl UnderWay<'_> {
    /// The attempt ended: its own record reports it.
    fn ended(self) {
        std::mem::forget(self);
    }
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.observer.on_attempt(&AttemptRecord {
            provider: Arc::clone(&self.provider.name),
            provider_kind: Arc::clone(&self.provider.kind),
            key: Arc::clone(&self.key.name),
            model: Arc::clone(self.model),
            outcome: "client_error",
            error: Some(ProviderError::Cancelled),
            latency: self.started.elapsed(),
            ttft: None,
            rate_limit: RateLimitInfo::default(),
            is_retry: self.is_retry,
            fallback_from: None,
            started_at: self.started_at,
            span_id: self.span_id,
        });
    }
}

/// The ordered targets of one request, produced lazily.
struct Plan<'s> {
    route: Option<Arc<str>>,
    route_entry: Option<&'s RouteEntry>,
    route_tried: SmallVec<[bool; 8]>,
    queue: SmallVec<[(usize, Arc<str>); 4]>,
    queue_pos: usize,
    allowed: &'s [String],
    /// The route's context-window or content-policy fallbacks replaced what was left
    /// ([`Plan::widen`]).
    widened: bool,
}

impl<'s> Plan<'s> {
    fn new(
        snap: &'s Snapshot,
        model: &str,
        fallbacks: &[String],
        allowed: &'s [String],
    ) -> Result<Self, EngineError> {
        let mut plan = Plan {
            route: None,
            route_entry: None,
            route_tried: SmallVec::new(),
            queue: SmallVec::new(),
            queue_pos: 0,
            allowed,
            widened: false,
        };
        if let Some(r) = snap.routes.get(model) {
            plan.route = Some(Arc::clone(&r.name));
            plan.route_entry = Some(r);
            plan.route_tried = SmallVec::from_elem(false, r.targets.len());
            for f in &r.fallbacks {
                plan.push_name(snap, f, 1);
            }
        } else if let Some(t) = split_direct(snap, model) {
            // A provider none of whose keys may serve the model does not serve it: 404 (or its
            // fallbacks), not an upstream failure after no attempt.
            if snap.providers[t.0].keys.iter().any(|k| k.allows(&t.1)) {
                plan.queue.push(t);
            }
        } else if let Some(r) = snap.bare_routes.get(model) {
            // Balanced like a route, but not one: no route name in metrics and logs.
            plan.route_entry = Some(r);
            plan.route_tried = SmallVec::from_elem(false, r.targets.len());
        } else if let Some(ps) = snap.bare_models.get(model) {
            let m: Arc<str> = Arc::from(model);
            for p in ps {
                plan.queue.push((*p, Arc::clone(&m)));
            }
        } else {
            return Err(EngineError::UnknownModel(model.to_owned()));
        }
        for f in fallbacks {
            plan.push_name(snap, f, 1);
        }
        if plan.route_entry.is_none() && plan.queue.is_empty() {
            return Err(EngineError::UnknownModel(model.to_owned()));
        }
        if !allowed.is_empty() {
            let any = plan
                .route_entry
                .is_some_and(|r| r.targets.iter().any(|t| plan.is_allowed(snap, t.provider)))
                || plan.queue.iter().any(|(p, _)| plan.is_allowed(snap, *p));
            if !any {
                return Err(EngineError::InvalidRequest(format!(
                    "model `{model}` is not served by any provider this key may use"
                )));
            }
        }
        Ok(plan)
    }

    /// After a target refused the request as the caller's fault in a way another model may
    /// not (too long for its context window, or against its content policy): what is left of
    /// the plan is replaced by the route's fallbacks for that refusal, once. `false` when there
    /// are none (or a replacement was already made): the refusal is then the caller's answer.
    fn widen(&mut self, snap: &Snapshot, refusal: &ProviderError) -> bool {
        let Some(r) = self.route_entry else {
            return false;
        };
        let names = match refusal {
            ProviderError::ContextLengthExceeded { .. } => &r.context_window_fallbacks,
            ProviderError::ContentFiltered { .. } => &r.content_policy_fallbacks,
            _ => return false,
        };
        if self.widened || names.is_empty() {
            return false;
        }
        self.widened = true;
        self.route_tried.iter_mut().for_each(|t| *t = true);
        self.queue.truncate(self.queue_pos);
        for f in names {
            self.push_name(snap, f, 1);
        }
        self.queue_pos < self.queue.len()
    }

    fn is_allowed(&self, snap: &Snapshot, provider: usize) -> bool {
        self.allowed.is_empty()
            || self
                .allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&snap.providers[provider].name))
    }

    fn push_name(&mut self, snap: &Snapshot, name: &str, depth: u8) {
        if let Some(t) = split_direct(snap, name) {
            self.push(t);
        } else if let Some(r) = snap.routes.get(name) {
            if depth > 0 {
                for t in &r.targets {
                    self.push((t.provider, Arc::clone(&t.model)));
                }
                for f in &r.fallbacks {
                    self.push_name(snap, f, depth - 1);
                }
            }
        } else if let Some(ps) = snap.bare_models.get(name) {
            let m: Arc<str> = Arc::from(name);
            for p in ps {
                self.push((*p, Arc::clone(&m)));
            }
        }
    }

    fn push(&mut self, t: (usize, Arc<str>)) {
        if !self.queue.iter().any(|(p, m)| *p == t.0 && *m == t.1) {
            self.queue.push(t);
        }
    }

    fn next_target(
        &mut self,
        snap: &Snapshot,
        now: u64,
        rng: &mut fastrand::Rng,
    ) -> Option<(usize, Arc<str>)> {
        if let Some(r) = self.route_entry {
            let health = snap.health;
            let ctx = PickContext {
                now,
                health: &health,
            };
            let mut idx: SmallVec<[usize; 8]> = SmallVec::new();
            let mut cands: SmallVec<[Candidate<'_>; 8]> = SmallVec::new();
            let mut untried_unusable: Option<usize> = None;
            for (i, t) in r.targets.iter().enumerate() {
                if self.route_tried[i] || !self.is_allowed(snap, t.provider) {
                    continue;
                }
                let p = &snap.providers[t.provider];
                // A target whose every key is resting is skipped for now (tried last).
                let keys_ok = p.keys.iter().any(|k| {
                    k.allows(&t.model)
                        && Candidate {
                            weight: k.weight,
                            signals: &k.signals,
                            rpm: k.rpm,
                            tpm: k.tpm,
                        }
                        .is_usable(now)
                });
                if !keys_ok || !p.signals.availability(now).is_available() {
                    untried_unusable.get_or_insert(i);
                    // The health-blind strategy still sees it, so its shares stay the weights.
                    if r.strategy.name() == "weighted" {
                        idx.push(i);
                        cands.push(Candidate {
                            weight: t.weight,
                            signals: &p.signals,
                            rpm: None,
                            tpm: None,
                        });
                    }
                    continue;
                }
                idx.push(i);
                cands.push(Candidate {
                    weight: t.weight,
                    signals: &p.signals,
                    rpm: None,
                    tpm: None,
                });
            }
            if let Some(c) = r.strategy.pick(&cands, &ctx, rng) {
                let i = idx[c];
                self.route_tried[i] = true;
                let t = &r.targets[i];
                return Some((t.provider, Arc::clone(&t.model)));
            }
            // Then the fallback queue; unusable route targets come last of all.
            if self.queue_pos >= self.queue.len() {
                if let Some(i) = untried_unusable {
                    self.route_tried[i] = true;
                    let t = &r.targets[i];
                    return Some((t.provider, Arc::clone(&t.model)));
                }
            }
        }
        while self.queue_pos < self.queue.len() {
            let (p, m) = self.queue[self.queue_pos].clone();
            self.queue_pos += 1;
            if self.is_allowed(snap, p) {
                return Some((p, m));
            }
        }
        None
    }
}

fn key_id(provider: &str, kind: &str, k: &KeyConfig) -> String {
    format!(
        "key\x1f{provider}\x1f{kind}\x1f{}\x1f{:x}",
        k.name,
        k.credential.fingerprint()
    )
}

fn build_snapshot(
    config: &EngineConfig,
    registry: &Mutex<HashMap<String, Arc<Signals>>>,
) -> Result<Snapshot, ConfigError> {
    let mut problems = Vec::new();
    let mut provider_index = HashMap::new();
    for (i, p) in config.providers.iter().enumerate() {
        if p.name.is_empty() {
            problems.push(format!("providers[{i}].name: must not be empty"));
        } else if p.name.contains('/') {
            problems.push(format!(
                "providers[{i}].name: `{}` must not contain `/`",
                p.name
            ));
        }
        if provider_index.insert(p.name.clone(), i).is_some() {
            problems.push(format!(
                "providers[{i}].name: duplicate provider `{}`",
                p.name
            ));
        }
        if p.keys.is_empty() {
            problems.push(format!(
                "providers[{i}].keys: provider `{}` has no key",
                p.name
            ));
        }
        let mut seen = HashSet::new();
        for (j, k) in p.keys.iter().enumerate() {
            if !seen.insert(&k.name) {
                problems.push(format!(
                    "providers[{i}].keys[{j}].name: duplicate key `{}` in provider `{}`",
                    k.name, p.name
                ));
            }
        }
    }
    let mut route_names = HashSet::new();
    for (i, r) in config.routes.iter().enumerate() {
        if !route_names.insert(&r.name) {
            problems.push(format!("routes[{i}].name: duplicate route `{}`", r.name));
        }
        if r.targets.is_empty() {
            problems.push(format!(
                "routes[{i}].targets: route `{}` has no target",
                r.name
            ));
        }
        for (j, t) in r.targets.iter().enumerate() {
            if !provider_index.contains_key(&t.provider) {
                problems.push(format!(
                    "routes[{i}].targets[{j}].provider: unknown provider `{}` in route `{}`",
                    t.provider, r.name
                ));
            }
        }
        for (field, names) in [
            ("fallbacks", &r.fallbacks),
            ("context_window_fallbacks", &r.context_window_fallbacks),
            ("content_policy_fallbacks", &r.content_policy_fallbacks),
        ] {
            for (j, f) in names.iter().enumerate() {
                let ok = match f.split_once('/') {
                    Some((p, m)) if provider_index.contains_key(p) && !m.is_empty() => true,
                    _ => config.routes.iter().any(|o| o.name == *f),
                };
                if !ok {
                    problems.push(format!(
                        "routes[{i}].{field}[{j}]: `{f}` is neither `provider/model` with a known provider nor a route"
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }

    let mut reg = registry.lock().map_err(|_| ConfigError {
        problems: vec!["internal: signal registry poisoned".to_owned()],
    })?;
    let mut live = HashSet::new();
    let mut signal_for = |id: String| -> Arc<Signals> {
        live.insert(id.clone());
        Arc::clone(reg.entry(id).or_insert_with(Signals::new))
    };

    let mut providers = Vec::with_capacity(config.providers.len());
    let mut bare_models: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, p) in config.providers.iter().enumerate() {
        let kind = p.provider.kind().to_owned();
        let keys = p
            .keys
            .iter()
            .map(|k| KeyEntry {
                name: Arc::from(k.name.as_str()),
                credential: Arc::new(k.credential.clone()),
                weight: k.weight.max(1),
                models: k.models.as_ref().map(|m| m.iter().cloned().collect()),
                rpm: k.rpm,
                tpm: k.tpm,
                max_concurrent: k.max_concurrent,
                signals: signal_for(key_id(&p.name, &kind, k)),
            })
            .collect::<Vec<_>>();
        let mut known: Vec<String> = p.models.clone();
        for k in &p.keys {
            if let Some(m) = &k.models {
                known.extend(m.iter().cloned());
            }
        }
        for m in known {
            let v = bare_models.entry(m).or_default();
            if !v.contains(&i) {
                v.push(i);
            }
        }
        providers.push(ProviderEntry {
            name: Arc::from(p.name.as_str()),
            kind: Arc::from(kind.as_str()),
            provider: Arc::clone(&p.provider),
            keys,
            strategy: p.strategy.build(),
            timeout: p.timeout,
            max_retries: p.max_retries,
            models: p.models.clone(),
            signals: signal_for(format!("provider\x1f{}\x1f{kind}", p.name)),
        });
    }
    // Signals of keys that are gone are dropped from the registry.
    reg.retain(|k, _| live.contains(k));
    drop(reg);

    let mut routes = HashMap::new();
    for r in &config.routes {
        let targets = r
            .targets
            .iter()
            .filter_map(|t| {
                provider_index.get(&t.provider).map(|&pi| TargetEntry {
                    provider: pi,
                    model: Arc::from(t.model.as_str()),
                    weight: t.weight.max(1),
                })
            })
            .collect();
        routes.insert(
            r.name.clone(),
            RouteEntry {
                name: Arc::from(r.name.as_str()),
                targets,
                fallbacks: r.fallbacks.clone(),
                context_window_fallbacks: r.context_window_fallbacks.clone(),
                content_policy_fallbacks: r.content_policy_fallbacks.clone(),
                strategy: r.strategy.build(),
            },
        );
    }
    let bare_routes = bare_models
        .iter()
        .filter(|(_, ps)| ps.len() > 1)
        .map(|(m, ps)| {
            let targets = ps
                .iter()
                .map(|&pi| TargetEntry {
                    provider: pi,
                    model: Arc::from(m.as_str()),
                    weight: providers[pi]
                        .keys
                        .iter()
                        .filter(|k| k.allows(m))
                        .map(|k| k.weight)
                        .sum::<u32>()
                        .max(1),
                })
                .collect();
            let entry = RouteEntry {
                name: Arc::from(m.as_str()),
                targets,
                fallbacks: Vec::new(),
                context_window_fallbacks: Vec::new(),
                content_policy_fallbacks: Vec::new(),
                strategy: StrategyKind::Adaptive.build(),
            };
            (m.clone(), entry)
        })
        .collect();
    Ok(Snapshot {
        providers,
        provider_index,
        routes,
        bare_models,
        bare_routes,
        health: config.health,
        retry: config.retry,
    })
}

struct StreamGuards {
    key: InFlight,
    target: InFlight,
    key_signals: Arc<Signals>,
    estimated_tokens: u64,
    clock: Arc<dyn Clock>,
    health: HealthConfig,
    ttft: Duration,
}

impl StreamGuards {
    fn finish(self, outcome: AttemptOutcome, usage: Option<Usage>) {
        let now = self.clock.now_nanos();
        if let Some(u) = usage {
            self.key_signals
                .settle_tokens(self.estimated_tokens, u.total_tokens);
        }
        // Streams are judged by time to first token, not by their length.
        let at = self.key.started() + self.ttft.as_nanos() as u64;
        let end = if outcome == AttemptOutcome::Success {
            at.min(now)
        } else {
            now
        };
        self.key.finish(end, outcome, &self.health);
        self.target.finish(end, outcome, &self.health);
    }
}

/// A stream of chunks from the chosen upstream, with health accounting when it ends.
pub struct EngineStream {
    /// The chunks read before the stream was handed over: those that opened it without
    /// content, and the first with some.
    held: std::collections::VecDeque<ChatChunk>,
    rest: ChunkStream,
    credential: Arc<Credential>,
    guards: Option<StreamGuards>,
    usage: Option<Usage>,
}

impl EngineStream {
    /// The first chunk, until the stream is polled.
    pub fn first(&self) -> Option<&ChatChunk> {
        self.held.front()
    }
}

impl std::fmt::Debug for EngineStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineStream").finish_non_exhaustive()
    }
}

impl Stream for EngineStream {
    type Item = Result<ChatChunk, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(first) = this.held.pop_front() {
            if let Some(u) = first.usage {
                this.usage = Some(u);
            }
            return Poll::Ready(Some(Ok(first)));
        }
        if this.guards.is_none() {
            return Poll::Ready(None);
        }
        match this.rest.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(u) = chunk.usage {
                    this.usage = Some(u);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e = e.redacted(&this.credential);
                if let Some(g) = this.guards.take() {
                    let outcome = if e.is_provider_failure() {
                        AttemptOutcome::Failure
                    } else {
                        AttemptOutcome::Neutral
                    };
                    g.finish(outcome, this.usage);
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(g) = this.guards.take() {
                    g.finish(AttemptOutcome::Success, this.usage);
                }
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Secret;
    use crate::testing::{FakeProvider, Step};
    use crate::types::{Message, Role};
    use futures_util::StreamExt;

    fn key(name: &str) -> KeyConfig {
        KeyConfig {
            name: name.to_owned(),
            credential: Credential::ApiKey(Secret::new(format!("secret-{name}"))),
            weight: 1,
            models: None,
            rpm: None,
            tpm: None,
            max_concurrent: None,
        }
    }

    fn provider(
        name: &str,
        fake: &Arc<FakeProvider>,
        keys: &[&str],
        strategy: StrategyKind,
    ) -> ProviderConfig {
        ProviderConfig {
            name: name.to_owned(),
            provider: Arc::clone(fake) as Arc<dyn Provider>,
            keys: keys.iter().map(|k| key(k)).collect(),
            strategy,
            timeout: Duration::from_secs(5),
            max_retries: 2,
            models: vec!["m".to_owned()],
        }
    }

    fn route(name: &str, targets: &[(&str, u32)], fallbacks: &[&str]) -> RouteConfig {
        RouteConfig {
            name: name.to_owned(),
            strategy: StrategyKind::Adaptive,
            targets: targets
                .iter()
                .map(|(p, w)| TargetConfig {
                    provider: (*p).to_owned(),
                    model: "m".to_owned(),
                    weight: *w,
                })
                .collect(),
            fallbacks: fallbacks.iter().map(|f| (*f).to_owned()).collect(),
            context_window_fallbacks: Vec::new(),
            content_policy_fallbacks: Vec::new(),
        }
    }

    fn req(model: &str) -> ChatRequest {
        ChatRequest {
            model: model.to_owned(),
            messages: vec![Message::text(Role::User, "hi")],
            ..ChatRequest::default()
        }
    }

    fn rate_limited(secs: u64) -> ProviderError {
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
            remaining: None,
            scope: RateLimitScope::Key,
            message: "slow down".to_owned(),
        }
    }

    fn server_error() -> ProviderError {
        ProviderError::Server {
            status: 502,
            message: "bad gateway".to_owned(),
        }
    }

    fn opts() -> RequestOptions {
        RequestOptions {
            request_id: Arc::from("t"),
            ..RequestOptions::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_key_rests_until_its_reset_and_another_key_serves() {
        let fake = Arc::new(FakeProvider::new());
        fake.script("a", vec![Step::Fail(rate_limited(30))]);
        let engine = Engine::new(EngineConfig {
            providers: vec![provider("p", &fake, &["a", "b"], StrategyKind::RoundRobin)],
            ..EngineConfig::default()
        })
        .unwrap();
        let out = engine.chat(&req("p/m"), &opts()).await.unwrap();
        assert_eq!(&*out.served_by.key, "b", "failed over to the other key");
        assert_eq!(out.attempts.len(), 2);
        assert_eq!(out.attempts[0].outcome, "rate_limited");
        let health = engine.health();
        assert_eq!(health[0].keys[0].state, "resting");
        assert!(health[0].keys[0].cooldown_ms.unwrap() > 29_000);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            engine.health()[0].keys[0].state,
            "available",
            "back after the reset hint"
        );
    }

    /// A key never has more attempts in flight than its `max_concurrent`; requests beyond every
    /// key's cap wait for a slot and are all served, in turn.
    #[tokio::test(start_paused = true)]
    async fn keys_at_their_concurrency_cap_make_requests_wait_for_a_slot() {
        let fake = Arc::new(FakeProvider::new());
        fake.set_delay(Duration::from_millis(100));
        let mut p = provider("p", &fake, &["a", "b"], StrategyKind::Adaptive);
        p.keys[0].max_concurrent = Some(2);
        p.keys[1].max_concurrent = Some(1);
        let engine = Arc::new(
            Engine::new(EngineConfig {
                providers: vec![p],
                ..EngineConfig::default()
            })
            .unwrap(),
        );
        let started = tokio::time::Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..9 {
            let e = Arc::clone(&engine);
            set.spawn(async move { e.chat(&req("p/m"), &opts()).await.map(|o| o.attempts.len()) });
        }
        while let Some(r) = set.join_next().await {
            assert_eq!(r.unwrap().unwrap(), 1, "each served by its first attempt");
        }
        assert_eq!(fake.max_in_flight("a"), 2);
        assert_eq!(fake.max_in_flight("b"), 1);
        assert_eq!(fake.calls().len(), 9);
        // Three at a time, 100 ms each: three rounds, no 250 ms re-check waited for.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(350),
            "{took:?}"
        );
    }

    /// A key that fails every time while its provider's other key answers is judged on its
    /// own: `adaptive` stops choosing it after its first failure, `round_robin` after the
    /// failures that eject it (the provider stays in).
    #[tokio::test(start_paused = true)]
    async fn a_key_that_keeps_failing_is_avoided_and_ejected_while_its_provider_serves() {
        for (strategy, failures) in [(StrategyKind::Adaptive, 1), (StrategyKind::RoundRobin, 3)] {
            let fake = Arc::new(FakeProvider::new());
            fake.always("a", Step::Fail(server_error()));
            let engine = Engine::new(EngineConfig {
                providers: vec![provider("p", &fake, &["a", "b"], strategy)],
                ..EngineConfig::default()
            })
            .unwrap();
            for _ in 0..20 {
                let out = engine.chat(&req("p/m"), &opts()).await.unwrap();
                assert_eq!(&*out.served_by.key, "b");
            }
            let tried_a = fake.calls().iter().filter(|(k, _)| k == "a").count();
            assert_eq!(tried_a, failures, "{strategy:?}");
            let health = engine.health();
            assert_eq!(health[0].state, "available", "{strategy:?}");
            assert!(health[0].keys[0].signals.error_rate > 0.0, "{strategy:?}");
            if strategy == StrategyKind::RoundRobin {
                assert_eq!(health[0].keys[0].state, "ejected");
            }
        }
    }

    /// A 429 without a wait hint rests the key for `default_rest`, and the client is told so
    /// (`retry-after`) on the very request that found every key limited.
    #[tokio::test(start_paused = true)]
    async fn a_429_without_a_wait_hint_still_says_when_to_come_back() {
        let fake = Arc::new(FakeProvider::new());
        fake.always(
            "a",
            Step::Fail(ProviderError::RateLimited {
                retry_after: None,
                remaining: None,
                scope: RateLimitScope::Key,
                message: "slow down".to_owned(),
            }),
        );
        let engine = Engine::new(EngineConfig {
            providers: vec![provider("p", &fake, &["a"], StrategyKind::Adaptive)],
            ..EngineConfig::default()
        })
        .unwrap();
        let e = engine.chat(&req("p/m"), &opts()).await.unwrap_err();
        // The upstream's own words, with the wait the key was given.
        assert!(e.error.to_string().contains("slow down"), "{}", e.error);
        let wait = e.error.retry_after().expect("a retry-after");
        assert!(wait > Duration::from_millis(900), "{wait:?}");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(e.attempts.len(), 1);
        // The next request finds the key resting: nothing tried, the same hint.
        match engine.chat(&req("p/m"), &opts()).await.unwrap_err().error {
            EngineError::AllRateLimited { retry_after } => {
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A provider whose only key was ejected after failures is still tried (the upstream may
    /// have recovered) rather than refused; one whose key's credential was refused is not.
    #[tokio::test(start_paused = true)]
    async fn an_only_key_ejected_after_failures_is_tried_as_a_last_resort() {
        let fake = Arc::new(FakeProvider::new());
        fake.always("a", Step::Fail(server_error()));
        let engine = Engine::new(EngineConfig {
            providers: vec![provider("p", &fake, &["a"], StrategyKind::Adaptive)],
            ..EngineConfig::default()
        })
        .unwrap();
        for _ in 0..3 {
            assert!(engine.chat(&req("p/m"), &opts()).await.is_err());
        }
        assert_eq!(engine.health()[0].keys[0].state, "ejected");
        // The upstream is back: served at once, not refused for the rest of the ejection.
        fake.always("a", Step::Reply("back".to_owned()));
        let out = engine.chat(&req("p/m"), &opts()).await.unwrap();
        assert_eq!(&*out.served_by.key, "a");
        assert_eq!(
            engine.health()[0].keys[0].state,
            "available",
            "its success ends the ejection"
        );

        let fake = Arc::new(FakeProvider::new());
        fake.script(
            "a",
            vec![Step::Fail(ProviderError::Auth {
                status: 401,
                message: "bad key".to_owned(),
            })],
        );
        let engine = Engine::new(EngineConfig {
            providers: vec![provider("p", &fake, &["a"], StrategyKind::Adaptive)],
            ..EngineConfig::default()
        })
        .unwrap();
        assert!(engine.chat(&req("p/m"), &opts()).await.is_err());
        let e = engine.chat(&req("p/m"), &opts()).await.unwrap_err();
        assert!(
            e.attempts.is_empty(),
            "a refused credential is not tried again"
        );
        assert!(
            matches!(e.error, EngineError::Unavailable { .. }),
            "{:?}",
            e.error
        );
    }

    /// A request that finds no free slot before its deadline gets a 504 without an attempt.
    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_gets_a_slot_times_out_without_an_attempt() {
        let fake = Arc::new(FakeProvider::new());
        fake.set_delay(Duration::from_millis(400));
        let mut p = provider("p", &fake, &["a"], StrategyKind::Adaptive);
        p.keys[0].max_concurrent = Some(1);
        let engine = Arc::new(
            Engine::new(EngineConfig {
                providers: vec![p],
                retry: RetryConfig {
                    request_timeout: Duration::from_millis(300),
                    ..RetryConfig::default()
                },
                ..EngineConfig::default()
            })
            .unwrap(),
        );
        let first = {
            let e = Arc::clone(&engine);
            tokio::spawn(async move { e.chat(&req("p/m"), &opts()).await })
        };
        tokio::task::yield_now().await;
        let second = engine.chat(&req("p/m"), &opts()).await.unwrap_err();
        assert!(
            matches!(second.error, EngineError::DeadlineExceeded { attempts: 0 }),
            "{:?}",
            second.error
        );
        assert!(second.attempts.is_empty());
        assert!(first.await.unwrap().is_err(), "the first timed out itself");
        assert_eq!(fake.max_in_flight("a"), 1, "the second never went upstream");
    }

    /// Counting asks the picked key of the first target once, and leaves every signal alone:
    /// it is not a request for the model.
    #[tokio::test(start_paused = true)]
    async fn count_tokens_asks_once_and_leaves_the_signals_alone() {
        let fake = Arc::new(FakeProvider::new());
        fake.script(
            "a",
            vec![Step::Reply("four".into()), Step::Fail(rate_limited(30))],
        );
        let engine = Engine::new(EngineConfig {
            providers: vec![provider("p", &fake, &["a"], StrategyKind::Adaptive)],
            ..EngineConfig::default()
        })
        .unwrap();
        assert_eq!(
            engine.count_tokens(&req("p/m"), &opts()).await.unwrap(),
            Some(4)
        );
        assert_eq!(
            engine.count_tokens(&req("p/m"), &opts()).await.unwrap(),
            None,
            "a failed count is no count"
        );
        assert_eq!(fake.calls().len(), 2, "one call each, no retry");
        let h = engine.health();
        assert_eq!(h[0].keys[0].signals.picks, 0);
        assert_eq!(
            h[0].keys[0].state, "available",
            "the 429 did not rest the key"
        );
        assert!(engine.count_tokens(&req("nope"), &opts()).await.is_err());
    }

    /// A target that cannot do what the request asks (`n` = 2 on a one-answer API) is passed
    /// over before a key is picked; when no target can, the answer is a 400 naming the field.
    #[tokio::test(start_paused = true)]
    async fn a_target_that_cannot_serve_the_request_is_passed_over_untouched() {
        let single = Arc::new(FakeProvider::new());
        single.single_answer();
        let multi = Arc::new(FakeProvider::new());
        let engine = Engine::new(EngineConfig {
            providers: vec![
                provider("single", &single, &["s"], StrategyKind::Adaptive),
                provider("multi", &multi, &["m"], StrategyKind::Adaptive),
            ],
            routes: vec![route("r", &[("single", 1), ("multi", 1)], &[])],
            ..EngineConfig::default()
        })
        .unwrap();
        let two = ChatRequest {
            n: Some(2),
            ..req("r")
        };
        for _ in 0..8 {
            let out = engine.chat(&two, &opts()).await.unwrap();
            assert_eq!(&*out.served_by.provider, "multi");
            assert_eq!(
                out.attempts.len(),
                1,
                "no attempt at the passed-over target"
            );
            let s = engine.chat_stream(&two, &opts()).await.unwrap();
            assert_eq!(&*s.served_by.provider, "multi");
        }
        assert!(single.calls().is_empty());
        assert_eq!(engine.health()[0].keys[0].signals.picks, 0);
        // One answer: both serve.
        let mut by = std::collections::HashSet::new();
        for _ in 0..16 {
            by.insert(
                engine
                    .chat(&req("r"), &opts())
                    .await
                    .unwrap()
                    .served_by
                    .provider,
            );
        }
        assert_eq!(by.len(), 2, "{by:?}");
        // Nobody can: 400, naming n.
        let err = engine
            .chat(
                &ChatRequest {
                    n: Some(3),
                    ..req("single/m")
                },
                &opts(),
            )
            .await
            .unwrap_err();
        assert!(err.attempts.is_empty());
        assert_eq!(err.error.http_status(), 400);
        assert!(
            matches!(&err.error, EngineError::Exhausted { last: ProviderError::Unsupported { param: Some(p), .. }, .. } if p == "n"),
            "{:?}",
            err.error
        );
    }

    /// A pinned key serves every request, over the strategy and the route; when it rests, the
    /// request waits for it instead of going to another key.
    #[tokio::test(start_paused = true)]
    async fn a_pinned_key_serves_and_is_waited_for() {
        let fake = Arc::new(FakeProvider::new());
        let other = Arc::new(FakeProvider::new());
        let engine = Engine::new(EngineConfig {
            providers: vec![
                provider("p", &fake, &["a", "b"], StrategyKind::RoundRobin),
                provider("q", &other, &["c"], StrategyKind::RoundRobin),
            ],
            routes: vec![route("r", &[("p", 1), ("q", 1)], &[])],
            ..EngineConfig::default()
        })
        .unwrap();
        let pinned = RequestOptions {
            pinned_key: Some(PinnedKey {
                provider: Arc::from("p"),
                key: Arc::from("b"),
            }),
            ..opts()
        };
        for _ in 0..6 {
            let out = engine.chat(&req("r"), &pinned).await.unwrap();
            assert_eq!((&*out.served_by.provider, &*out.served_by.key), ("p", "b"));
        }
        assert!(other.calls().is_empty());
        fake.script("b", vec![Step::Fail(rate_limited(30))]);
        let err = engine.chat(&req("r"), &pinned).await.unwrap_err();
        assert_eq!(err.attempts.len(), 1, "key a was not tried");
        let err = engine.chat(&req("r"), &pinned).await.unwrap_err();
        assert!(
            matches!(err.error, EngineError::AllRateLimited { .. }),
            "{:?}",
            err.error
        );
        assert!(fake.calls().iter().all(|(k, _)| k == "b"));
    }

    #[tokio::test(start_paused = true)]
    async fn resting_key_is_not_picked_by_health_strategies() {
        let fake = Arc::new(FakeProvider::new());
        fake.script("a", vec![Step::Fail(rate_limited(30))]);
        let engine = Engine::new(EngineConfig {
            providers: vec![provider("p", &fake, &["a", "b"], StrategyKind::Health)],
            ..EngineConfig::default()
        })
        .unwrap();
        // Make sure key a gets its 429: try until a is called.
        for _ in 0..20 {
            engine.chat(&req("p/m"), &opts()).await.unwrap();
        }
        let calls = fake.calls();
        let a_calls = calls.iter().filter(|(k, _)| k == "a").count();
        assert_eq!(
            a_calls, 1,
            "after its 429, key a is never picked while resting: {calls:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn all_keys_resting_gives_the_earliest_retry_time() {
        let fake = Arc::new(FakeProvider::new());
        fake.script("a", vec![Step::Fail(rate_limited(20))]);
        fake.script("b", vec![Step::Fail(rate_limited(7))]);
        let engine = Engine::new(EngineConfig {
            providers: vec![provider("p", &fake, &["a", "b"], StrategyKind::Adaptive)],
            ..EngineConfig::default()
        })
        .unwrap();
        let err = engine.chat(&req("p/m"), &opts()).await.unwrap_err();
        assert_eq!(err.attempts.len(), 2);
        let err2 = engine.chat(&req("p/m"), &opts()).await.unwrap_err();
        assert!(
            err2.attempts.is_empty(),
            "nothing is called while every key rests"
        );
        match err2.error {
            EngineError::AllRateLimited { retry_after } => {
                assert!(
                    retry_after <= Duration::from_secs(7) && retry_after > Duration::from_secs(6),
                    "{retry_after:?}"
                )
            }
            other => panic!("expected AllRateLimited, got {other:?}"),
        }
        assert_eq!(err2.error.http_status(), 503, "not the caller's rate limit");
        assert!(err2.error.is_rate_limited());
    }

    #[tokio::test(start_paused = true)]
    async fn caller_errors_are_returned_without_failover() {
        let fake = Arc::new(FakeProvider::new());
        fake.always(
            "a",
            Step::Fail(ProviderError::ContextLengthExceeded {
                message: "too long".to_owned(),
            }),
        );
        let engine = Engine::new(EngineConfig {
            providers: vec![
                provider("p", &fake, &["a", "b"], StrategyKind::RoundRobin),
                provider("q", &fake, &["c"], StrategyKind::RoundRobin),
            ],
            routes: vec![route("chat", &[("p", 1)], &["q/m"])],
            ..EngineConfig::default()
        })
        .unwrap();
        let err = engine.chat(&req("chat"), &opts()).await.unwrap_err();
        assert_eq!(err.attempts.len(), 1, "no retry on the caller's error");
        assert!(matches!(
            err.error,
            EngineError::Caller(ProviderError::ContextLengthExceeded { .. })
        ));
        assert_eq!(err.error.http_status(), 400);
    }

    /// A request too long for a route's model goes to the route's context-window fallbacks
    /// (and only there: the other keys and the ordinary fallbacks have the same window), one
    /// refused under a content policy to its content-policy fallbacks; when they refuse it too,
    /// or a route has none for that refusal, the refusal is the caller's answer.
    #[tokio::test(start_paused = true)]
    async fn refused_requests_go_to_the_routes_fallbacks_for_that_refusal() {
        let too_long = || {
            Step::Fail(ProviderError::ContextLengthExceeded {
                message: "too long".to_owned(),
            })
        };
        let fake = Arc::new(FakeProvider::new());
        fake.always("a", too_long());
        fake.always("b", too_long());
        let mut r = route("chat", &[("p", 1)], &["q/m"]);
        r.context_window_fallbacks = vec!["big/m".to_owned()];
        let mut tight = route("tight", &[("p", 1)], &[]);
        tight.context_window_fallbacks = vec!["p/m".to_owned()];
        // Content-policy fallbacks answer a content-policy refusal, not a context-length one.
        fake.always(
            "s",
            Step::Fail(ProviderError::ContentFiltered {
                message: "filtered".to_owned(),
            }),
        );
        let mut safe = route("safe", &[("strict", 1)], &[]);
        safe.content_policy_fallbacks = vec!["big/m".to_owned()];
        let mut only_policy = route("only-policy", &[("p", 1)], &[]);
        only_policy.content_policy_fallbacks = vec!["big/m".to_owned()];
        let engine = Engine::new(EngineConfig {
            providers: vec![
                provider("p", &fake, &["a", "b"], StrategyKind::RoundRobin),
                provider("q", &fake, &["c"], StrategyKind::RoundRobin),
                provider("big", &fake, &["d"], StrategyKind::RoundRobin),
                provider("strict", &fake, &["s"], StrategyKind::RoundRobin),
            ],
            routes: vec![r, tight, safe, only_policy],
            ..EngineConfig::default()
        })
        .unwrap();
        let ok = engine.chat(&req("safe"), &opts()).await.unwrap();
        assert_eq!(&*ok.served_by.provider, "big");
        let err = engine.chat(&req("only-policy"), &opts()).await.unwrap_err();
        assert!(
            matches!(
                err.error,
                EngineError::Caller(ProviderError::ContextLengthExceeded { .. })
            ),
            "{:?}",
            err.error
        );
        let ok = engine.chat(&req("chat"), &opts()).await.unwrap();
        let keys: Vec<&str> = ok.attempts.iter().map(|a| &*a.key).collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys[1], "d", "straight to the larger window: {keys:?}");
        assert_eq!(&*ok.served_by.provider, "big");
        assert_eq!(
            engine.targets_for("chat", &[]),
            [("p", "m"), ("q", "m"), ("big", "m")]
                .map(|(p, m)| (p.to_owned(), m.to_owned()))
                .to_vec(),
            "priced at the dearest of them all"
        );

        // The fallback refuses it too: the caller's error, no loop.
        let err = engine.chat(&req("tight"), &opts()).await.unwrap_err();
        assert!(
            matches!(
                err.error,
                EngineError::Caller(ProviderError::ContextLengthExceeded { .. })
            ),
            "{:?}",
            err.error
        );
        assert!(err.attempts.len() <= 3, "{:?}", err.attempts.len());
    }

    /// A provider ejected since this request's last attempt at it (here by that attempt, with
    /// `eject_after = 1`; in production by the failures of others in flight) is not retried:
    /// the request moves on to the next target.
    #[tokio::test(start_paused = true)]
    async fn retries_leave_an_ejected_provider() {
        let fake = Arc::new(FakeProvider::new());
        fake.always(
            "a",
            Step::Fail(ProviderError::Server {
                status: 500,
                message: "down".to_owned(),
            }),
        );
        let engine = Engine::new(EngineConfig {
            providers: vec![
                provider("p", &fake, &["a"], StrategyKind::RoundRobin),
                provider("q", &fake, &["c"], StrategyKind::RoundRobin),
            ],
            routes: vec![route("chat", &[("p", 1)], &["q/m"])],
            health: HealthConfig {
                eject_after: 1,
                ..HealthConfig::default()
            },
            ..EngineConfig::default()
        })
        .unwrap();
        let ok = engine.chat(&req("chat"), &opts()).await.unwrap();
        let keys: Vec<&str> = ok.attempts.iter().map(|a| &*a.key).collect();
        assert_eq!(keys, ["a", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn provider_errors_fall_back_to_the_next_target() {
        let fake_p = Arc::new(FakeProvider::new());
        fake_p.always(
            "a",
            Step::Fail(ProviderError::Overloaded {
                retry_after: None,
                message: "529".to_owned(),
            }),
        );
        let fake_q = Arc::new(FakeProvider::new());
        let engine = Engine::new(EngineConfig {
            providers: vec![
                provider("p", &fake_p, &["a", "a2"], StrategyKind::RoundRobin),
                provider("q", &fake_q, &["c"], StrategyKind::RoundRobin),
            ],
            routes: vec![route("chat", &[("p", 1)], &["q/m"])],
            ..EngineConfig::default()
        })
        .unwrap();
        let out = engine.chat(&req("chat"), &opts()).await.unwrap();
        assert_eq!(&*out.served_by.provider, "q");
        assert_eq!(
            out.attempts.len(),
            2,
            "overloaded skips the provider's other keys"
        );
        assert_eq!(out.attempts[1].fallback_from.as_deref(), Some("p"));
        assert_eq!(out.route.as_deref(), Some("chat"));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_retry_another_key_with_backoff_then_fail_over() {
        let fake_p = Arc::new(FakeProvider::new());
        for k in ["a", "b", "c"] {
            fake_p.always(k, Step::Fail(server_error()));
        }
        let fake_q = Arc::new(FakeProvider::new());
        let mut p = provider("p", &fake_p, &["a", "b", "c"], StrategyKind::RoundRobin);
        p.max_retries = 1;
        let engine = Engine::new(EngineConfig {
            providers: vec![p, provider("q", &fake_q, &["z"], StrategyKind::RoundRobin)],
            ..EngineConfig::default()
        })
        .unwrap();
        let mut r = req("p/m");
        r.fallbacks = vec!["q/m".to_owned()];
        let t0 = tokio::time::Instant::now();
        let out = engine.chat(&r, &opts()).await.unwrap();
        assert_eq!(&*out.served_by.provider, "q");
        assert_eq!(
            out.attempts.len(),
            3,
            "one try plus max_retries=1 at p, then q"
        );
        assert!(out.attempts[1].is_retry);
        assert!(
            t0.elapsed() >= Duration::from_millis(50),
            "backoff before the retry"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_with_one_key_retries_it_after_a_transient_error() {
        let fake = Arc::new(FakeProvider::new());
        fake.script(
            "only",
            vec![
                Step::Fail(server_error()),
                Step::Fail(ProviderError::Timeout),
                Step::Reply("third time".to_owned()),
            ],
        );
        let mut p = provider("p", &fake, &["only"], StrategyKind::RoundRobin);
        p.max_retries = 2;
        let engine = Engine::new(EngineConfig {
            providers: vec![p],
            ..EngineConfig::default()
        })
        .unwrap();
        let t0 = tokio::time::Instant::now();
        let out = engine.chat(&req("p/m"), &opts()).await.unwrap();
        assert_eq!(out.attempts.len(), 3, "one try and max_retries = 2 retries");
        assert!(out.attempts[1].is_retry && out.attempts[2].is_retry);
        assert!(t0.elapsed() >= Duration::from_millis(50), "backoff between");
        assert_eq!(fake.calls().len(), 3);

        // max_retries bounds it; a key-scoped failure (401) is not retried.
        fake.always("only", Step::Fail(server_error()));
        let err = engine.chat(&req("p/m"), &opts()).await.unwrap_err();
        assert_eq!(err.attempts.len(), 3);
        let fake = Arc::new(FakeProvider::new());
        fake.always(
            "only",
            Step::Fail(ProviderError::Auth {
                status: 401,
                message: "no".to_owned(),
            }),
        );
        let engine = Engine::new(EngineConfig {
            providers: vec![provider("p", &fake, &["only"], StrategyKind::RoundRobin)],
            ..EngineConfig::default()
        })
        .unwrap();
        let err = engine.chat(&req("p/m"), &opts()).await.unwrap_err();
        assert_eq!(err.attempts.len(), 1, "a refused key is not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn auth_errors_disable_the_key() {
        let fake = Arc::new(FakeProvider::new());
        fake.always(
            "bad",
            Step::Fail(ProviderError::Auth {
                status: 401,
                message: "invalid key".to_owned(),
            }),
        );
        let engine = Engine::new(EngineConfig {
            providers: vec![provider("p", &fake, &["bad", "good"], StrategyKind::Health)],
            ..EngineConfig::default()
        })
        .unwrap();
        for _ in 0..10 {
            let out = engine.chat(&req("p/m"), &opts()).await.unwrap();
            assert_eq!(&*out.served_by.key, "good");
        }
        let bad_calls = fake.calls().iter().filter(|(k, _)| k == "bad").count();
        assert!(bad_calls <= 1, "a refused key leaves rotation: {bad_calls}");
        assert_eq!(engine.health()[0].keys[0].state, "ejected");
    }

    #[test]
    fn targets_for_names_every_provider_and_model_a_name_may_reach() {
        let fake = Arc::new(FakeProvider::new());
        let mut p = provider("p", &fake, &["a"], StrategyKind::RoundRobin);
        p.models = vec!["shared".to_owned()];
        let mut q = provider("q", &fake, &["z"], StrategyKind::RoundRobin);
        q.models = vec!["shared".to_owned()];
        let engine = Engine::new(EngineConfig {
            providers: vec![p, q],
            routes: vec![
                route("chat", &[("p", 1)], &["q/big", "other"]),
                route("other", &[("q", 1)], &[]),
            ],
            ..EngineConfig::default()
        })
        .unwrap();
        let pairs = |v: Vec<(String, String)>| -> Vec<String> {
            v.into_iter().map(|(p, m)| format!("{p}/{m}")).collect()
        };
        assert_eq!(
            pairs(engine.targets_for("chat", &[])),
            ["p/m", "q/big", "q/m"]
        );
        assert_eq!(
            pairs(engine.targets_for("p/x", &["q/y".to_owned()])),
            ["p/x", "q/y"]
        );
        assert_eq!(
            pairs(engine.targets_for("shared", &[])),
            ["p/shared", "q/shared"]
        );
        assert!(engine.targets_for("nope", &[]).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_direct_model_no_key_allows_is_unknown() {
        let fake = Arc::new(FakeProvider::new());
        let mut p = provider("p", &fake, &["a"], StrategyKind::RoundRobin);
        p.keys[0].models = Some(vec!["m1".to_owned()]);
        let engine = Engine::new(EngineConfig {
            providers: vec![p, provider("q", &fake, &["z"], StrategyKind::RoundRobin)],
            ..EngineConfig::default()
        })
        .unwrap();
        let err = engine.chat(&req("p/m2"), &opts()).await.unwrap_err();
        assert!(
            matches!(err.error, EngineError::UnknownModel(_)),
            "{:?}",
            err.error
        );
        assert_eq!(err.error.http_status(), 404);
        assert!(fake.calls().is_empty());
        // Its fallbacks still serve it.
        let mut r = req("p/m2");
        r.fallbacks = vec!["q/m2".to_owned()];
        let out = engine.chat(&r, &opts()).await.unwrap();
        assert_eq!(&*out.served_by.provider, "q");
        assert_eq!(
            &*engine
                .chat(&req("p/m1"), &opts())
                .await
                .unwrap()
                .served_by
                .key,
            "a"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn streams_fail_over_before_the_first_chunk_only() {
        let fake_p = Arc::new(FakeProvider::new());
        fake_p.always("a", Step::StreamFailFirst(server_error()));
        let fake_q = Arc::new(FakeProvider::new());
        fake_q.always("z", Step::StreamFailAfter(2, server_error()));
        let mut p = provider("p", &fake_p, &["a"], StrategyKind::RoundRobin);
        p.max_retries = 0;
        let engine = Engine::new(EngineConfig {
            providers: vec![p, provider("q", &fake_q, &["z"], StrategyKind::RoundRobin)],
            routes: vec![route("chat", &[("p", 1)], &["q/m"])],
            ..EngineConfig::default()
        })
        .unwrap();
        let mut r = req("chat");
        r.stream = true;
        let out = engine.chat_stream(&r, &opts()).await.unwrap();
        assert_eq!(
            &*out.served_by.provider, "q",
            "failed over before the first chunk"
        );
        let items: Vec<_> = out.value.collect().await;
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[1].is_ok());
        assert!(
            items[2].is_err(),
            "after the first chunk an error ends the stream"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_models_and_bare_models() {
        let fake = Arc::new(FakeProvider::new());
        let mut p = provider("p", &fake, &["a"], StrategyKind::RoundRobin);
        p.keys[0].models = Some(vec!["gpt-x".to_owned()]);
        let engine = Engine::new(EngineConfig {
            providers: vec![p],
            ..EngineConfig::default()
        })
        .unwrap();
        let err = engine.chat(&req("nope"), &opts()).await.unwrap_err();
        assert!(matches!(err.error, EngineError::UnknownModel(_)));
        assert_eq!(err.error.http_status(), 404);
        let out = engine.chat(&req("gpt-x"), &opts()).await.unwrap();
        assert_eq!(&*out.served_by.model, "gpt-x");
        assert!(engine.resolves("p/anything"));
        let ids: Vec<String> = engine.models().into_iter().map(|m| m.id).collect();
        assert!(ids.contains(&"p/gpt-x".to_owned()), "{ids:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bare_model_of_several_providers_is_balanced_and_failed_over() {
        let fake_p = Arc::new(FakeProvider::new());
        let fake_q = Arc::new(FakeProvider::new());
        let mut p = provider("p", &fake_p, &["a"], StrategyKind::RoundRobin);
        p.models = vec!["shared".to_owned()];
        let mut q = provider("q", &fake_q, &["z"], StrategyKind::RoundRobin);
        q.models = vec!["shared".to_owned()];
        let engine = Engine::new(EngineConfig {
            providers: vec![p, q],
            ..EngineConfig::default()
        })
        .unwrap();
        let mut served = HashMap::new();
        for _ in 0..60 {
            let out = engine.chat(&req("shared"), &opts()).await.unwrap();
            assert_eq!(out.route, None, "not a route");
            *served
                .entry(out.served_by.provider.to_string())
                .or_insert(0) += 1;
        }
        assert!(
            served.get("p").is_some_and(|n| *n >= 10) && served.get("q").is_some_and(|n| *n >= 10),
            "both providers serve it: {served:?}"
        );
        // One of them failing: the other serves, in the same request.
        fake_p.always("a", Step::Fail(server_error()));
        for _ in 0..10 {
            let out = engine.chat(&req("shared"), &opts()).await.unwrap();
            assert_eq!(&*out.served_by.provider, "q");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reload_keeps_signals_of_unchanged_keys_and_refuses_bad_configs() {
        let fake = Arc::new(FakeProvider::new());
        fake.script("a", vec![Step::Fail(rate_limited(60))]);
        let cfg = EngineConfig {
            providers: vec![provider("p", &fake, &["a", "b"], StrategyKind::Health)],
            ..EngineConfig::default()
        };
        let engine = Engine::new(cfg.clone()).unwrap();
        // Ties between the two healthy keys are broken at random: send until `a` has been tried
        // (it answers 429 and rests; `b` serves every request).
        for _ in 0..64 {
            engine.chat(&req("p/m"), &opts()).await.unwrap();
            if engine.health()[0].keys[0].state == "resting" {
                break;
            }
        }
        assert_eq!(engine.health()[0].keys[0].state, "resting");
        let mut changed = cfg.clone();
        changed.providers[0].keys[1].credential = Credential::ApiKey(Secret::new("rotated"));
        engine.reload(changed).unwrap();
        let h = engine.health();
        assert_eq!(
            h[0].keys[0].state, "resting",
            "unchanged key keeps its state"
        );
        assert_eq!(h[0].keys[1].signals.picks, 0, "a changed key starts fresh");
        let mut bad = cfg;
        bad.routes = vec![route("r", &[("missing", 1)], &[])];
        let e = engine.reload(bad).unwrap_err();
        assert!(e.to_string().contains("unknown provider `missing`"), "{e}");
        assert_eq!(
            engine.health()[0].keys[0].state,
            "resting",
            "running config stays"
        );
    }

    proptest::proptest! {
        #[test]
        fn failover_never_repeats_a_candidate(errors in proptest::collection::vec(0u8..6, 6), seed in 0u64..1000) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async {
                let fakes: Vec<Arc<FakeProvider>> = (0..2).map(|_| Arc::new(FakeProvider::new())).collect();
                let names = [["a", "b", "c"], ["d", "e", "f"]];
                for (pi, keys) in names.iter().enumerate() {
                    for (ki, k) in keys.iter().enumerate() {
                        let e = match errors[pi * 3 + ki] {
                            0 => continue,
                            1 => rate_limited(5),
                            2 => server_error(),
                            3 => ProviderError::Overloaded { retry_after: None, message: String::new() },
                            4 => ProviderError::Auth { status: 401, message: String::new() },
                            _ => ProviderError::Timeout,
                        };
                        fakes[pi].always(k, Step::Fail(e));
                    }
                }
                let engine = Engine::new(EngineConfig {
                    providers: vec![
                        provider("p", &fakes[0], &names[0], StrategyKind::Adaptive),
                        provider("q", &fakes[1], &names[1], StrategyKind::Adaptive),
                    ],
                    routes: vec![route("chat", &[("p", 1), ("q", 1)], &[])],
                    ..EngineConfig::default()
                }).unwrap();
                let o = RequestOptions { seed: Some(seed), ..opts() };
                let attempts = match engine.chat(&req("chat"), &o).await {
                    Ok(out) => out.attempts,
                    Err(f) => f.attempts,
                };
                let mut seen = HashSet::new();
                for a in &attempts {
                    assert!(seen.insert((a.provider.to_string(), a.key.to_string())), "repeated {}/{} in {:?}", a.provider, a.key, attempts.iter().map(|a| format!("{}/{}", a.provider, a.key)).collect::<Vec<_>>());
                }
                assert!(attempts.len() as u32 <= RetryConfig::default().max_attempts);
            });
        }
    }
}
