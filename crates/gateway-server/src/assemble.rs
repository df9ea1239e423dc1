//! Turns a validated [`Config`] into the engine's configuration: builds provider adapters, starts
//! the in-process mock upstreams of `mock` providers, and checks everything the engine cannot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gateway_core::engine::{KeyConfig, ProviderConfig, RetryConfig, RouteConfig, TargetConfig};
use gateway_core::signals::HealthConfig;
use gateway_core::types::{
    ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ModelInfo,
};
use gateway_core::{
    Call, Credential, EngineConfig, Provider, ProviderError, ProviderResponse, ProviderStream,
    Secret, StrategyKind,
};
use gateway_mock::{Faults, MockServer, MockUpstream};
use gateway_providers::http::HttpClient;
use gateway_providers::registry::{build_provider, kind_info, ProviderSettings};

use crate::config::{Config, ConfigError, ProviderSection, WORKER_THREADS};

/// Mock upstreams started for `mock` providers, kept across reloads while their settings match.
#[derive(Default)]
pub struct MockPool {
    servers: std::sync::Mutex<HashMap<String, (ProviderSection, MockServer)>>,
}

impl std::fmt::Debug for MockPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MockPool")
    }
}

impl MockPool {
    async fn get(&self, p: &ProviderSection) -> Result<MockServer, String> {
        if let Ok(s) = self.servers.lock() {
            if let Some((cfg, server)) = s.get(&p.name) {
                if cfg == p {
                    return Ok(server.clone());
                }
            }
        }
        let mut m = MockUpstream::new();
        if let Some(r) = &p.reply {
            m = m.reply(r.clone());
        }
        if let Some(l) = p.latency_ms {
            m = m.latency(Duration::from_millis(l));
        }
        for k in &p.keys {
            let secret = mock_secret(&p.name, k);
            m = if k.rpm.is_some() || k.tpm.is_some() {
                m.key_limits(&secret, k.rpm, k.tpm)
            } else {
                m.key(&secret)
            };
        }
        if let Some(rate) = p.error_rate {
            m = m.faults(Faults {
                error_rate: rate,
                error_status: Some(p.error_status.unwrap_or(500)),
                ..Faults::default()
            });
        }
        let server = m
            .start()
            .await
            .map_err(|e| format!("providers.{}: cannot start the mock upstream: {e}", p.name))?;
        if let Ok(mut s) = self.servers.lock() {
            s.insert(p.name.clone(), (p.clone(), server.clone()));
        }
        Ok(server)
    }

    /// The running mock of a provider, for tests and demos.
    pub fn server(&self, provider: &str) -> Option<MockServer> {
        self.servers
            .lock()
            .ok()
            .and_then(|s| s.get(provider).map(|(_, m)| m.clone()))
    }
}

fn mock_secret(provider: &str, k: &crate::config::KeySection) -> String {
    k.secret
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("mock-{provider}-{}", k.name))
}

/// Keeps an in-process mock alive as long as the adapter that talks to it.
struct MockBacked {
    inner: Arc<dyn Provider>,
    _server: MockServer,
}

#[async_trait]
impl Provider for MockBacked {
    fn kind(&self) -> &str {
        "mock"
    }
    fn supports(&self, model: &str, r: &ChatRequest) -> Result<(), ProviderError> {
        self.inner.supports(model, r)
    }
    async fn chat(
        &self,
        call: &Call,
        r: &ChatRequest,
    ) -> Result<ProviderResponse<ChatResponse>, ProviderError> {
        self.inner.chat(call, r).await
    }
    async fn chat_stream(
        &self,
        call: &Call,
        r: &ChatRequest,
    ) -> Result<ProviderStream, ProviderError> {
        self.inner.chat_stream(call, r).await
    }
    async fn embed(
        &self,
        call: &Call,
        r: &EmbeddingRequest,
    ) -> Result<ProviderResponse<EmbeddingResponse>, ProviderError> {
        self.inner.embed(call, r).await
    }
    async fn count_tokens(
        &self,
        call: &Call,
        r: &ChatRequest,
    ) -> Result<Option<u64>, ProviderError> {
        self.inner.count_tokens(call, r).await
    }
    async fn stored_response(
        &self,
        call: &Call,
        op: &gateway_core::StoredResponseOp,
    ) -> Result<ProviderResponse<bytes::Bytes>, ProviderError> {
        self.inner.stored_response(call, op).await
    }
    async fn list_models(&self, call: &Call) -> Result<Vec<ModelInfo>, ProviderError> {
        self.inner.list_models(call).await
    }
}

fn strategy(s: &str, field: &str, problems: &mut Vec<String>) -> StrategyKind {
    s.parse().unwrap_or_else(|e: String| {
        problems.push(format!("{field}: {e}"));
        StrategyKind::Adaptive
    })
}

/// Builds the engine configuration, or every problem found.
pub async fn engine_config(
    cfg: &Config,
    client: &HttpClient,
    mocks: &MockPool,
    custom: &HashMap<String, Arc<dyn Provider>>,
) -> Result<EngineConfig, ConfigError> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    let mut providers = Vec::new();
    for (i, p) in cfg.providers.iter().enumerate() {
        let field = format!("providers[{i}]");
        if !names.insert(p.name.clone()) {
            problems.push(format!(
                "{field}.name: duplicate provider name `{}`",
                p.name
            ));
        }
        if p.name.is_empty() || p.name.contains('/') {
            problems.push(format!(
                "{field}.name: `{}` must be non-empty and contain no `/`",
                p.name
            ));
        }
        let strategy = strategy(&p.strategy, &format!("{field}.strategy"), &mut problems);
        let is_mock = p.kind == "mock";
        let custom_adapter = custom.get(&p.kind).cloned();
        let info = if is_mock || custom_adapter.is_some() {
            None
        } else {
            kind_info(&p.kind)
        };
        if !is_mock && custom_adapter.is_none() && info.is_none() {
            problems.push(format!(
                "{field}.kind: unknown provider kind `{}` (see docs/providers.md)",
                p.kind
            ));
            continue;
        }
        let family = info.map_or("openai", |i| i.family);
        let key_required = info.is_some_and(|i| i.key_required);
        if let Some(rate) = p.error_rate {
            if !(0.0..=1.0).contains(&rate) {
                problems.push(format!("{field}.error_rate: must be between 0 and 1"));
            }
        }
        // Keys → credentials.
        let mut keys = Vec::new();
        let mut key_names = HashSet::new();
        let service_account = match (&p.credentials_file, family) {
            (Some(path), _) => match std::fs::read_to_string(path) {
                Ok(s) => Some(s),
                Err(e) => {
                    problems.push(format!(
                        "{field}.credentials_file: cannot read {}: {e}",
                        path.display()
                    ));
                    None
                }
            },
            (None, "vertex")
                if !p
                    .keys
                    .iter()
                    .any(|k| k.secret.as_deref().is_some_and(|s| !s.is_empty())) =>
            {
                problems.push(format!(
                    "{field}.credentials_file: required for kind `vertex` unless every key's `secret` holds the service-account JSON"
                ));
                None
            }
            _ => None,
        };
        for (j, k) in p.keys.iter().enumerate() {
            let kf = format!("{field}.keys[{j}]");
            if !key_names.insert(k.name.clone()) {
                problems.push(format!("{kf}.name: duplicate key name `{}`", k.name));
            }
            let credential = if is_mock {
                Credential::ApiKey(Secret::new(mock_secret(&p.name, k)))
            } else if family == "bedrock" && k.access_key_id.is_some() {
                // The secret access key in `secret_access_key`, or in `secret` like other kinds.
                match (
                    &k.access_key_id,
                    k.secret_access_key.as_ref().or(k.secret.as_ref()),
                ) {
                    (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
                        Credential::Aws {
                            access_key_id: id.clone(),
                            secret_access_key: Secret::new(secret.as_str()),
                            session_token: k
                                .session_token
                                .clone()
                                .filter(|t| !t.is_empty())
                                .map(Secret::new),
                        }
                    }
                    _ => {
                        problems.push(format!(
                            "{kf}: bedrock keys need access_key_id and secret_access_key (or secret)"
                        ));
                        Credential::None
                    }
                }
            } else if family == "vertex" {
                match (&k.secret, &service_account) {
                    (Some(s), _) if !s.is_empty() => {
                        Credential::ServiceAccount(Secret::new(s.as_str()))
                    }
                    (_, Some(sa)) => Credential::ServiceAccount(Secret::new(sa.as_str())),
                    (_, None) => {
                        if p.credentials_file.is_none() {
                            problems.push(format!(
                                "{kf}.secret: the service-account JSON, or set {field}.credentials_file"
                            ));
                        }
                        Credential::None
                    }
                }
            } else {
                match &k.secret {
                    Some(s) if !s.is_empty() => Credential::ApiKey(Secret::new(s.as_str())),
                    _ if key_required => {
                        problems.push(format!(
                            "{kf}.secret: missing secret for provider `{}` (kind `{}` needs a key)",
                            p.name, p.kind
                        ));
                        Credential::None
                    }
                    _ => Credential::None,
                }
            };
            if k.weight == 0 {
                problems.push(format!("{kf}.weight: must be at least 1"));
            }
            if k.max_concurrent == Some(0) {
                problems.push(format!("{kf}.max_concurrent: must be at least 1"));
            }
            keys.push(KeyConfig {
                name: k.name.clone(),
                credential,
                weight: k.weight.max(1),
                models: k.models.clone(),
                rpm: k.rpm,
                tpm: k.tpm,
                max_concurrent: k.max_concurrent,
            });
        }
        if keys.is_empty() {
            if key_required && service_account.is_none() {
                problems.push(format!(
                    "{field}.keys: provider `{}` needs at least one key",
                    p.name
                ));
            }
            let credential = match &service_account {
                Some(sa) => Credential::ServiceAccount(Secret::new(sa.as_str())),
                None if is_mock => {
                    Credential::ApiKey(Secret::new(format!("mock-{}-default", p.name)))
                }
                None => Credential::None,
            };
            keys.push(KeyConfig {
                name: "default".to_owned(),
                credential,
                weight: 1,
                models: None,
                rpm: None,
                tpm: None,
                max_concurrent: None,
            });
        }
        // The adapter.
        let mut settings = ProviderSettings {
            name: p.name.clone(),
            kind: p.kind.clone(),
            base_url: p.base_url.clone(),
            api_version: p.api_version.clone(),
            deployments: p.deployments.clone().into_iter().collect(),
            region: p.region.clone(),
            claude_invoke: p.claude_invoke,
            project: p.project.clone(),
            location: p.location.clone(),
            headers: p.headers.clone().into_iter().collect(),
        };
        let adapter: Arc<dyn Provider> = if let Some(a) = custom_adapter {
            a
        } else if is_mock {
            let dialect = p.dialect.clone().unwrap_or_else(|| "openai".to_owned());
            let server = match mocks.get(p).await {
                Ok(s) => s,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            settings.kind.clone_from(&dialect);
            settings.base_url = Some(match dialect.as_str() {
                "openai" => server.openai_base(),
                "anthropic" => server.url(),
                other => {
                    problems.push(format!(
                        "{field}.dialect: mock dialect `{other}` is not supported (openai or anthropic)"
                    ));
                    continue;
                }
            });
            match build_provider(&settings, client) {
                Ok(inner) => Arc::new(MockBacked {
                    inner,
                    _server: server,
                }),
                Err(e) => {
                    problems.push(format!("{field}: {e}"));
                    continue;
                }
            }
        } else {
            match build_provider(&settings, client) {
                Ok(a) => a,
                Err(e) => {
                    problems.push(format!("{field}: {e}"));
                    continue;
                }
            }
        };
        let mut models = p.models.clone();
        if is_mock && models.is_empty() {
            models.push("mock-model".to_owned());
        }
        providers.push(ProviderConfig {
            name: p.name.clone(),
            provider: adapter,
            keys,
            strategy,
            timeout: Duration::from_millis(p.timeout_ms.max(1)),
            max_retries: p.max_retries,
            models,
        });
    }
    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let field = format!("routes[{i}]");
        if !route_names.insert(r.name.clone()) {
            problems.push(format!("{field}.name: duplicate route name `{}`", r.name));
        }
        if names.contains(r.name.split('/').next().unwrap_or_default()) && r.name.contains('/') {
            problems.push(format!(
                "{field}.name: `{}` would shadow a `provider/model` name",
                r.name
            ));
        }
        let strategy = strategy(&r.strategy, &format!("{field}.strategy"), &mut problems);
        if r.targets.is_empty() {
            problems.push(format!(
                "{field}.targets: route `{}` needs at least one target",
                r.name
            ));
        }
        for (j, t) in r.targets.iter().enumerate() {
            if !names.contains(&t.provider) {
                problems.push(format!(
                    "{field}.targets[{j}].provider: unknown provider `{}` in route `{}`",
                    t.provider, r.name
                ));
            }
        }
        for (j, f) in r.fallbacks.iter().enumerate() {
            let ok = match f.split_once('/') {
                Some((p, m)) => names.contains(p) && !m.is_empty(),
                None => cfg.routes.iter().any(|o| o.name == *f),
            };
            if !ok {
                problems.push(format!(
                    "{field}.fallbacks[{j}]: `{f}` is neither `provider/model` with a configured provider nor a route"
                ));
            }
        }
        routes.push(RouteConfig {
            name: r.name.clone(),
            strategy,
            targets: r
                .targets
                .iter()
                .map(|t| TargetConfig {
                    provider: t.provider.clone(),
                    model: t.model.clone(),
                    weight: t.weight.max(1),
                })
                .collect(),
            fallbacks: r.fallbacks.clone(),
            context_window_fallbacks: r.context_window_fallbacks.clone(),
            content_policy_fallbacks: r.content_policy_fallbacks.clone(),
        });
    }
    let s = &cfg.server;
    if s.worker_threads
        .is_some_and(|n| !WORKER_THREADS.contains(&n))
    {
        problems.push(format!(
            "server.worker_threads: must be between {} and {}",
            WORKER_THREADS.start(),
            WORKER_THREADS.end()
        ));
    }
    if s.max_body_bytes == 0 {
        problems.push("server.max_body_bytes: must be positive".to_owned());
    }
    // An address, or a host name and port (`localhost:8080`, resolved when binding).
    let host_port = s
        .listen
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if s.listen.parse::<std::net::SocketAddr>().is_err() && !host_port {
        problems.push(format!(
            "server.listen: `{}` is not an address like 127.0.0.1:8080",
            s.listen
        ));
    }
    if s.tls_cert.is_some() != s.tls_key.is_some() {
        problems.push("server.tls_cert and server.tls_key: set both or neither".to_owned());
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    let h = &cfg.health;
    Ok(EngineConfig {
        providers,
        routes,
        health: HealthConfig {
            eject_after: h.eject_after.max(1),
            eject_for: Duration::from_millis(h.eject_for_ms),
            max_eject_for: Duration::from_millis(h.max_eject_for_ms.max(h.eject_for_ms)),
            decay: Duration::from_millis(h.decay_ms.max(1)),
            default_rest: Duration::from_millis(h.default_rest_ms),
            disable_for: Duration::from_millis(h.disable_for_ms),
            ..HealthConfig::default()
        },
        retry: RetryConfig {
            backoff_base: Duration::from_millis(s.retry_backoff_ms),
            backoff_max: Duration::from_millis(s.retry_backoff_max_ms),
            max_attempts: s.max_attempts.max(1),
            request_timeout: Duration::from_millis(s.request_timeout_ms.max(1)),
        },
    })
}
