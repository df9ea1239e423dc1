//! The TOML configuration: parsing, `${ENV}` substitution and validation.
//!
//! The field names here are the public interface (see `docs/configuration.md`). Validation collects
//! every problem with the field that has it, so one run of `gateway-server --config` tells the
//! operator everything that is wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gateway_core::observe::redact_url;
use serde::{Deserialize, Serialize};

// Governance sections are the governance crate's own types, and strict about unknown fields: a
// mistyped limit (`rmp = 10`) must not silently leave a key unlimited.
pub use gateway_governance::{GovernanceSection, LimitsSpec, PricingSpec};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Config {
    /// Fields the file has that the gateway does not know (ignored, reported as warnings).
    #[serde(skip)]
    pub unknown_fields: Vec<String>,
    /// `[server]`.
    #[serde(default)]
    pub server: ServerSection,
    /// `[[providers]]`.
    #[serde(default)]
    pub providers: Vec<ProviderSection>,
    /// `[[routes]]`.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// `[health]`.
    #[serde(default)]
    pub health: HealthSection,
    /// `[logging]`.
    #[serde(default)]
    pub logging: LoggingSection,
    /// `[telemetry]`.
    #[serde(default)]
    pub telemetry: TelemetrySection,
    /// `[cache]`.
    #[serde(default)]
    pub cache: CacheSection,
    /// `[governance]`.
    #[serde(default)]
    pub governance: GovernanceSection,
    /// `[[virtual_keys]]`.
    #[serde(default)]
    pub virtual_keys: Vec<LimitsSpec>,
    /// `[[teams]]`.
    #[serde(default)]
    pub teams: Vec<LimitsSpec>,
    /// `[[customers]]`.
    #[serde(default)]
    pub customers: Vec<LimitsSpec>,
    /// `[[pricing]]`.
    #[serde(default)]
    pub pricing: Vec<PricingSpec>,
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerSection {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Token for `/admin/*`; empty disables the admin API.
    #[serde(default)]
    pub admin_token: String,
    /// Directory of the embedded store.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Largest accepted request body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Overall deadline of one request, all attempts included.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// Most upstream attempts for one request.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First backoff before retrying the same provider.
    #[serde(default = "default_backoff")]
    pub retry_backoff_ms: u64,
    /// Largest backoff.
    #[serde(default = "default_backoff_max")]
    pub retry_backoff_max_ms: u64,
    /// PEM certificate chain for TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// How long shutdown waits for in-flight requests and streams.
    #[serde(default = "default_drain")]
    pub shutdown_grace_ms: u64,
    /// How long a client has to send a request's head (HTTP/1), from the moment the
    /// connection waits for one (an idle keep-alive connection included); 0 disables. Read at
    /// start.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_ms: u64,
    /// Outbound HTTP client: idle connections kept per upstream host.
    #[serde(default = "default_pool")]
    pub pool_max_idle_per_host: usize,
    /// Outbound HTTP client: idle connection lifetime.
    #[serde(default = "default_pool_idle")]
    pub pool_idle_timeout_ms: u64,
    /// Outbound HTTP client: connect timeout.
    #[serde(default = "default_connect")]
    pub connect_timeout_ms: u64,
    /// Outbound HTTP proxy for upstream calls.
    #[serde(default)]
    pub upstream_proxy: Option<String>,
    /// Upstream hosts that bypass `upstream_proxy`: `*`, host names (with their subdomains), IP
    /// addresses, CIDR ranges (the `NO_PROXY` convention; an entry may hold several, comma
    /// separated). Loopback always goes direct.
    #[serde(default)]
    pub upstream_no_proxy: Vec<String>,
    /// Offer HTTP/2 to TLS upstreams (ALPN). Off: see [`gateway_providers::HttpConfig::http2`].
    #[serde(default)]
    pub upstream_http2: bool,
    /// PEM file of certificates trusted for upstream TLS besides the public web roots.
    #[serde(default)]
    pub upstream_ca_file: Option<PathBuf>,
    /// Threads of the async runtime that serves requests; [`default_worker_threads`] when unset.
    /// Read at start only.
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

/// The `server.worker_threads` values accepted.
pub const WORKER_THREADS: std::ops::RangeInclusive<usize> = 1..=1024;

/// Runtime threads when `server.worker_threads` is unset: half the available cores (as the
/// process sees them, CPU quotas included), at least one.
///
/// A request costs the gateway about 100 µs of CPU, a third of it in the kernel's network stack,
/// and its background threads (request log, governance store) need a core's share too. Measured
/// on 2 cores at 5,000 requests per second, one runtime thread instead of two took about 15% off
/// the CPU per request and 20–30% off the added latency (tokio's workers wake each other for
/// every hand-off between the client and upstream connections); one thread still serves several
/// thousand requests per second. See docs/benchmarks.md.
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

impl ServerSection {
    /// The runtime threads to start: `worker_threads` or [`default_worker_threads`].
    pub fn runtime_threads(&self) -> usize {
        self.worker_threads
            .filter(|n| WORKER_THREADS.contains(n))
            .unwrap_or_else(default_worker_threads)
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_max_body() -> usize {
    10 * 1024 * 1024
}
fn default_request_timeout() -> u64 {
    600_000
}
fn default_max_attempts() -> u32 {
    8
}
fn default_backoff() -> u64 {
    50
}
fn default_backoff_max() -> u64 {
    2_000
}
fn default_drain() -> u64 {
    30_000
}
fn default_header_read_timeout() -> u64 {
    30_000
}
fn default_pool() -> usize {
    256
}
fn default_pool_idle() -> u64 {
    90_000
}
fn default_connect() -> u64 {
    5_000
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            admin_token: String::new(),
            data_dir: default_data_dir(),
            max_body_bytes: default_max_body(),
            request_timeout_ms: default_request_timeout(),
            max_attempts: default_max_attempts(),
            retry_backoff_ms: default_backoff(),
            retry_backoff_max_ms: default_backoff_max(),
            tls_cert: None,
            tls_key: None,
            shutdown_grace_ms: default_drain(),
            header_read_timeout_ms: default_header_read_timeout(),
            pool_max_idle_per_host: default_pool(),
            pool_idle_timeout_ms: default_pool_idle(),
            connect_timeout_ms: default_connect(),
            upstream_proxy: None,
            upstream_no_proxy: Vec::new(),
            upstream_http2: false,
            upstream_ca_file: None,
            worker_threads: None,
        }
    }
}

/// `[[providers]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProviderSection {
    /// Unique name; clients address `name/model`.
    pub name: String,
    /// Wire format and preset (`openai`, `anthropic`, `groq`, `mock`...).
    pub kind: String,
    /// Base URL override.
    #[serde(default)]
    pub base_url: Option<String>,
    /// How this provider's keys are chosen.
    #[serde(default = "default_strategy")]
    pub strategy: String,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Extra attempts at this provider after a transient error.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Models this provider serves (for `/v1/models` and bare-model routing).
    #[serde(default)]
    pub models: Vec<String>,
    /// Azure: `api-version`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Azure: model → deployment.
    #[serde(default)]
    pub deployments: BTreeMap<String, String>,
    /// Bedrock: AWS region.
    #[serde(default)]
    pub region: Option<String>,
    /// Bedrock: Anthropic clients' requests for Claude models go to `InvokeModel` with their own
    /// body instead of Converse.
    #[serde(default)]
    pub claude_invoke: bool,
    /// Vertex: project id.
    #[serde(default)]
    pub project: Option<String>,
    /// Vertex: location.
    #[serde(default)]
    pub location: Option<String>,
    /// Vertex: service-account JSON file.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Extra headers sent upstream.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `mock` kind: which wire format the in-process mock speaks (`openai` or `anthropic`).
    #[serde(default)]
    pub dialect: Option<String>,
    /// `mock` kind: added latency.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// `mock` kind: share of requests answered with `error_status`.
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// `mock` kind: the status of injected errors (default 500).
    #[serde(default)]
    pub error_status: Option<u16>,
    /// `mock` kind: the reply text.
    #[serde(default)]
    pub reply: Option<String>,
    /// The provider's keys.
    #[serde(default)]
    pub keys: Vec<KeySection>,
}

fn default_strategy() -> String {
    "adaptive".to_owned()
}
fn default_timeout() -> u64 {
    60_000
}
fn default_retries() -> u32 {
    2
}

/// `[[providers.keys]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeySection {
    /// Name shown in metrics, logs and health.
    pub name: String,
    /// The API key.
    #[serde(default)]
    pub secret: Option<String>,
    /// Share of traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Models this key may serve.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Known requests per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Known tokens per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Most requests in flight on this key at once (streams until their end).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Bedrock: access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Bedrock: secret access key.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Bedrock: session token.
    #[serde(default)]
    pub session_token: Option<String>,
}

fn default_weight() -> u32 {
    1
}

/// A target of a route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetSection {
    /// Provider name.
    pub provider: String,
    /// Upstream model id.
    pub model: String,
    /// Share of the route's traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// `[[routes]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteSection {
    /// The model name clients ask for.
    pub name: String,
    /// How targets are chosen.
    #[serde(default = "default_strategy")]
    pub strategy: String,
    /// Weighted targets.
    #[serde(default)]
    pub targets: Vec<TargetSection>,
    /// Tried in order after the targets.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Tried in order, instead of what is left, when a target refuses the request as too long
    /// for its context window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context_window_fallbacks: Vec<String>,
    /// Tried in order, instead of what is left, when a target refuses the request under its
    /// content policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_policy_fallbacks: Vec<String>,
}

/// `[health]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthSection {
    /// Consecutive failures that eject a key or provider.
    #[serde(default = "default_eject_after")]
    pub eject_after: u32,
    /// First ejection length.
    #[serde(default = "default_eject_for")]
    pub eject_for_ms: u64,
    /// Longest ejection.
    #[serde(default = "default_max_eject")]
    pub max_eject_for_ms: u64,
    /// EWMA time constant.
    #[serde(default = "default_decay")]
    pub decay_ms: u64,
    /// Rest after a 429 without a wait hint.
    #[serde(default = "default_rest")]
    pub default_rest_ms: u64,
    /// How long a key with exhausted quota or a refused credential stays out.
    #[serde(default = "default_disable")]
    pub disable_for_ms: u64,
}

fn default_eject_after() -> u32 {
    3
}
fn default_eject_for() -> u64 {
    5_000
}
fn default_max_eject() -> u64 {
    60_000
}
fn default_decay() -> u64 {
    10_000
}
fn default_rest() -> u64 {
    1_000
}
fn default_disable() -> u64 {
    300_000
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            eject_after: default_eject_after(),
            eject_for_ms: default_eject_for(),
            max_eject_for_ms: default_max_eject(),
            decay_ms: default_decay(),
            default_rest_ms: default_rest(),
            disable_for_ms: default_disable(),
        }
    }
}

/// `[logging]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoggingSection {
    /// `json` for one JSON line per request on stdout.
    #[serde(default)]
    pub stdout: Option<String>,
    /// Log prompt and completion content.
    #[serde(default)]
    pub content: bool,
    /// Log filter (`info`, `debug`, `gateway_server=debug`...).
    #[serde(default)]
    pub level: Option<String>,
    /// Keep request logs this many days.
    #[serde(default)]
    pub retention_days: Option<u64>,
    /// Keep at most this many request logs.
    #[serde(default)]
    pub retention_rows: Option<u64>,
    /// Capacity of the log queue.
    #[serde(default)]
    pub queue_capacity: Option<usize>,
    /// Priority of the request-log writer thread: `idle` (default) or `normal`.
    #[serde(default)]
    pub writer_priority: Option<gateway_telemetry::WriterPriority>,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TelemetrySection {
    /// OTLP/HTTP endpoint for traces (else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (default) or `http/json` (else `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`).
    #[serde(default)]
    pub otlp_protocol: Option<String>,
    /// Service name on spans (else `OTEL_SERVICE_NAME`, then `ai-gateway`).
    #[serde(default)]
    pub service_name: Option<String>,
}

/// `[cache]`: the exact-match answer cache ([`crate::cache`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CacheSection {
    /// Off unless turned on.
    #[serde(default)]
    pub enabled: bool,
    /// How long an answer may be served.
    #[serde(default = "default_cache_ttl")]
    pub ttl_ms: u64,
    /// Most bytes held; the oldest answers go first.
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: usize,
    /// Largest answer stored.
    #[serde(default = "default_cache_entry")]
    pub max_entry_bytes: usize,
    /// Who shares answers: each virtual key its own (default), or everyone.
    #[serde(default)]
    pub scope: CacheScope,
}

/// Who shares a cached answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// Each virtual key its own answers (requests without one share theirs).
    #[default]
    VirtualKey,
    /// Every client the same answers.
    Global,
}

fn default_cache_ttl() -> u64 {
    300_000
}
fn default_cache_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_cache_entry() -> usize {
    1024 * 1024
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            enabled: false,
            ttl_ms: default_cache_ttl(),
            max_bytes: default_cache_bytes(),
            max_entry_bytes: default_cache_entry(),
            scope: CacheScope::default(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or types.
    #[error("invalid config: {0}")]
    Parse(String),
    /// One or more validation problems.
    #[error("invalid config:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string of `value`, recording unset variables.
fn substitute(value: &mut toml::Value, path: &str, problems: &mut Vec<String>) {
    match value {
        toml::Value::String(s) if s.contains("${") => match expand(s) {
            Ok(v) => *s = v,
            Err(var) => problems.push(format!("{path}: environment variable `{var}` is not set")),
        },
        toml::Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                substitute(v, &format!("{path}[{i}]"), problems);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                substitute(v, &p, problems);
            }
        }
        _ => {}
    }
}

/// Expands `${VAR}` / `${VAR:-default}`; returns the first unset variable's name on failure.
pub fn expand(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => out.push_str(&v),
            _ => match default {
                Some(d) => out.push_str(d),
                None => return Err(name.to_owned()),
            },
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Config {
    /// Reads and parses a file (validation is separate: see [`Config::validate`]).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::from_toml(&text)?;
        // Relative paths in the file are relative to the file.
        if let Some(dir) = path.parent() {
            for p in &mut cfg.providers {
                if let Some(f) = &p.credentials_file {
                    if f.is_relative() && !f.exists() {
                        p.credentials_file = Some(dir.join(f));
                    }
                }
            }
        }
        Ok(cfg)
    }

    /// Parses TOML text, substituting environment variables.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let (cfg, problems) = Self::from_toml_lenient(text)?;
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(cfg)
    }

    /// [`Config::from_file`] that does not stop at unset environment variables: it returns them
    /// as problems beside the configuration, whose fields keep their `${VAR}` text. For
    /// reporting every problem of a file at once; never serve from it.
    pub fn from_file_lenient(path: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_lenient(&text)
    }

    fn from_toml_lenient(text: &str) -> Result<(Self, Vec<String>), ConfigError> {
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut problems = Vec::new();
        substitute(&mut value, "", &mut problems);
        let mut unknown = Vec::new();
        let mut cfg: Config =
            serde_ignored::deserialize(value, |path| unknown.push(path.to_string()))
                .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        cfg.unknown_fields = unknown;
        Ok((cfg, problems))
    }

    /// A copy with every secret replaced by `"***"`, for `GET /admin/config`.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let hide = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some("***".to_owned());
            }
        };
        if !c.server.admin_token.is_empty() {
            c.server.admin_token = "***".to_owned();
        }
        for p in &mut c.providers {
            for k in &mut p.keys {
                hide(&mut k.secret);
                hide(&mut k.secret_access_key);
                hide(&mut k.session_token);
                if k.access_key_id.is_some() {
                    k.access_key_id = Some("***".to_owned());
                }
            }
            for (name, v) in p.headers.iter_mut() {
                let n = name.to_ascii_lowercase();
                if ["auth", "key", "token", "secret", "cookie", "pass"]
                    .iter()
                    .any(|w| n.contains(w))
                {
                    *v = "***".to_owned();
                }
            }
            if let Some(u) = &p.base_url {
                p.base_url = Some(redact_url(u));
            }
        }
        for v in c
            .virtual_keys
            .iter_mut()
            .chain(c.teams.iter_mut())
            .chain(c.customers.iter_mut())
        {
            hide(&mut v.secret);
        }
        if let Some(s) = &c.governance.store {
            c.governance.store = Some(redact_url(s));
        }
        if let Some(u) = &c.server.upstream_proxy {
            c.server.upstream_proxy = Some(redact_url(u));
        }
        if let Some(u) = &c.telemetry.otlp_endpoint {
            c.telemetry.otlp_endpoint = Some(redact_url(u));
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_substitution_with_defaults_and_unset_variables() {
        std::env::set_var("GW_TEST_SET", "value");
        assert_eq!(expand("a-${GW_TEST_SET}-b").unwrap(), "a-value-b");
        assert_eq!(expand("${GW_TEST_UNSET_X:-dflt}").unwrap(), "dflt");
        assert_eq!(expand("${GW_TEST_UNSET_X}").unwrap_err(), "GW_TEST_UNSET_X");
        let err = Config::from_toml(
            "[[providers]]\nname='p'\nkind='openai'\n[[providers.keys]]\nname='k'\nsecret='${GW_TEST_UNSET_Y}'\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("providers[0].keys[0].secret"), "{msg}");
        assert!(msg.contains("GW_TEST_UNSET_Y"), "{msg}");
    }

    #[test]
    fn the_log_writer_priority_is_idle_normal_or_an_error() {
        let cfg = Config::from_toml("[server]\n").unwrap();
        assert_eq!(
            cfg.logging.writer_priority, None,
            "unset: the default applies"
        );
        let cfg = Config::from_toml("[logging]\nwriter_priority = 'normal'\n").unwrap();
        assert_eq!(
            cfg.logging.writer_priority,
            Some(gateway_telemetry::WriterPriority::Normal)
        );
        let cfg = Config::from_toml("[logging]\nwriter_priority = 'idle'\n").unwrap();
        assert_eq!(
            cfg.logging.writer_priority,
            Some(gateway_telemetry::WriterPriority::Idle)
        );
        let err = Config::from_toml("[logging]\nwriter_priority = 'low'\n").unwrap_err();
        assert!(err.to_string().contains("writer_priority"), "{err}");
    }

    #[test]
    fn unknown_fields_are_named_not_fatal() {
        let cfg = Config::from_toml("[server]\nlisten='127.0.0.1:1'\nlistn='x'\n[[providers]]\nname='p'\nkind='openai'\nfoo=1\n").unwrap();
        let mut u = cfg.unknown_fields.clone();
        u.sort();
        assert_eq!(
            u,
            vec!["providers.0.foo".to_owned(), "server.listn".to_owned()]
        );
    }

    #[test]
    fn redaction_hides_every_secret() {
        let cfg = Config::from_toml(
            r#"
[server]
admin_token = "adm-secret"
upstream_proxy = "http://proxyuser:proxy-secret@127.0.0.1:3128"
[telemetry]
otlp_endpoint = "https://otel:otel-secret@collector.invalid:4318"
[governance]
store = "redis://:redis-secret@127.0.0.1:6379"
[[providers]]
name = "p"
kind = "openai"
base_url = "https://user:pw@example.invalid/v1?key=qs-secret"
headers = { "x-api-key" = "hdr-secret", "x-title" = "ok" }
[[providers.keys]]
name = "k"
secret = "sk-secret"
[[providers.keys]]
name = "aws"
access_key_id = "AKIDSECRET"
secret_access_key = "aws-secret"
session_token = "sess-secret"
[[virtual_keys]]
name = "vk"
secret = "vk-secret"
"#,
        )
        .unwrap();
        let text = serde_json::to_string(&cfg.redacted()).unwrap();
        for s in [
            "adm-secret",
            "pw@",
            "qs-secret",
            "hdr-secret",
            "sk-secret",
            "AKIDSECRET",
            "aws-secret",
            "sess-secret",
            "vk-secret",
            "proxy-secret",
            "otel-secret",
            "redis-secret",
        ] {
            assert!(!text.contains(s), "{s} leaked in {text}");
        }
        assert!(text.contains("\"x-title\":\"ok\""));
    }
}
