//! Prometheus metrics: counters and histograms fed by the observer, gauges refreshed from
//! [`Engine::health`](gateway_core::Engine::health) on every scrape.
//!
//! Every [`crate::Telemetry`] owns a *local* `PrometheusRecorder` (metrics-exporter-prometheus
//! built with `build_recorder`, never installed globally) and registers its metrics on it directly.
//! Each gateway therefore counts only its own traffic, several gateways can live in one process (as
//! the tests do), and nothing depends on a process-wide recorder that can be installed only once.
//! Histograms use explicit buckets from 1 ms to 120 s, so p50/p99 per provider come from
//! `histogram_quantile` over `_bucket` series.
//!
//! `gateway_cost_usd_total` is a floating-point counter, which the `metrics` facade does not have
//! (its counters are integers): it is kept here and appended to the rendered text as a proper
//! `counter`.
//!
//! Label values are names from the configuration (providers, keys, routes, upstream models,
//! virtual keys) and never secrets. The client-chosen model name is only used as a label once the
//! request reached a route or provider (otherwise `other`), so random model names cannot grow the
//! series without bound.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};

use gateway_core::engine::ProviderHealth;
use gateway_core::observe::{AttemptRecord, RequestRecord};
use gateway_core::ProviderError;
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::record::Tokens;

/// Histogram buckets in seconds, 1 ms to 120 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0,
];

/// Metric names and their help text (the documented contract).
pub mod names {
    /// Client requests by route, model, status and virtual key.
    pub const REQUESTS: &str = "gateway_requests_total";
    /// Client request duration.
    pub const REQUEST_DURATION: &str = "gateway_request_duration_seconds";
    /// Upstream attempts by provider, key, model and outcome.
    pub const UPSTREAM_REQUESTS: &str = "gateway_upstream_requests_total";
    /// Upstream attempt latency.
    pub const UPSTREAM_DURATION: &str = "gateway_upstream_duration_seconds";
    /// Time to first token of streamed attempts.
    pub const TTFT: &str = "gateway_time_to_first_token_seconds";
    /// Moves from one provider to another within a request.
    pub const FALLBACKS: &str = "gateway_fallbacks_total";
    /// Retries at the same provider.
    pub const RETRIES: &str = "gateway_retries_total";
    /// Tokens by provider, model and kind.
    pub const TOKENS: &str = "gateway_tokens_total";
    /// Spend in USD.
    pub const COST: &str = "gateway_cost_usd_total";
    /// 1 when a key is available, 0 when resting, ejected or probing.
    pub const KEY_STATE: &str = "gateway_key_state";
    /// Seconds until a resting or ejected key returns.
    pub const KEY_COOLDOWN: &str = "gateway_key_cooldown_seconds";
    /// 1 when a provider is available, 0 otherwise.
    pub const PROVIDER_STATE: &str = "gateway_provider_state";
    /// Last rate-limit headroom the provider reported for a key.
    pub const KEY_REMAINING: &str = "gateway_key_ratelimit_remaining";
    /// Requests refused by admission (virtual keys).
    pub const REJECTIONS: &str = "gateway_virtual_key_rejections_total";
    /// Request log records dropped because the queue was full.
    pub const LOG_DROPPED: &str = "gateway_log_dropped_total";
    /// Request log batches that could not be written.
    pub const LOG_WRITE_ERRORS: &str = "gateway_log_write_errors_total";
    /// Trace spans dropped because the export queue was full.
    pub const SPANS_DROPPED: &str = "gateway_trace_spans_dropped_total";
    /// Span batches the OTLP endpoint did not accept.
    pub const TRACE_EXPORT_ERRORS: &str = "gateway_trace_export_errors_total";
    /// Counter: requests the answer cache was asked for, by endpoint and result (`hit`, `miss`).
    pub const CACHE: &str = "gateway_cache_requests_total";
}

const HELP: &[(&str, &str)] = &[
    (
        names::REQUESTS,
        "Client requests by route, model, HTTP status and virtual key.",
    ),
    (
        names::REQUEST_DURATION,
        "Client request duration in seconds (streams: until the last byte).",
    ),
    (
        names::UPSTREAM_REQUESTS,
        "Upstream attempts by provider, key, model and outcome.",
    ),
    (
        names::UPSTREAM_DURATION,
        "Upstream attempt latency in seconds (streams: until the first chunk).",
    ),
    (
        names::TTFT,
        "Time to first token of streamed upstream attempts, in seconds.",
    ),
    (
        names::FALLBACKS,
        "Requests that moved from one provider to another.",
    ),
    (names::RETRIES, "Attempts that retried the same provider."),
    (
        names::TOKENS,
        "Tokens by provider, upstream model and kind (prompt, completion, cached).",
    ),
    (
        names::KEY_STATE,
        "1 when the key is available, 0 when resting, ejected or probing.",
    ),
    (
        names::KEY_COOLDOWN,
        "Seconds until a resting or ejected key returns (0 when available).",
    ),
    (
        names::PROVIDER_STATE,
        "1 when the provider is available, 0 when ejected or probing.",
    ),
    (
        names::KEY_REMAINING,
        "Last remaining requests or tokens the provider reported for the key.",
    ),
    (
        names::REJECTIONS,
        "Requests refused before routing, by virtual key and reason.",
    ),
    (
        names::LOG_DROPPED,
        "Request log records dropped because the log queue was full.",
    ),
    (
        names::LOG_WRITE_ERRORS,
        "Request log batches the store failed to write.",
    ),
    (
        names::SPANS_DROPPED,
        "Trace spans dropped because the export queue was full.",
    ),
    (
        names::CACHE,
        "Requests the answer cache was asked for, by endpoint and result (hit or miss).",
    ),
    (
        names::TRACE_EXPORT_ERRORS,
        "Span batches the OTLP endpoint did not accept.",
    ),
];

static META: Metadata<'static> = Metadata::new("gateway_telemetry", Level::INFO, None);

/// The `outcome` label of an upstream attempt: one of `ok`, `rate_limited`, `overloaded`,
/// `server_error`, `timeout`, `connect_error`, `client_error`, `auth_error`. An attempt cancelled
/// because the client went away counts as `client_error` (the upstream did nothing wrong).
pub fn outcome_label(outcome: &str) -> &'static str {
    OUTCOMES[outcome_slot(outcome)]
}

/// The index in [`OUTCOMES`] of an attempt's outcome label.
fn outcome_slot(outcome: &str) -> usize {
    let slot = |label: &str| OUTCOMES.iter().position(|l| *l == label);
    match outcome {
        // The client went away: the upstream did nothing wrong.
        "cancelled" => slot("client_error"),
        o => slot(o).or_else(|| slot("server_error")),
    }
    .unwrap_or_default()
}

/// The `reason` of a refusal by admission, from the status, or `None` when the request was not
/// refused before routing.
pub fn rejection_reason(r: &RequestRecord) -> Option<&'static str> {
    r.refusal
}

fn label(k: &'static str, v: impl Into<SharedString>) -> Label {
    Label::new(k, v)
}

/// At most 128 bytes of a label value.
fn bounded_str(v: &str) -> &str {
    let mut end = v.len().min(128);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    &v[..end]
}

type CostKey = (String, String, String);

/// The outcomes [`outcome_label`] can give, in the order of [`AttemptSeries::requests`]; an
/// outcome not listed is `server_error`, `cancelled` is `client_error`.
const OUTCOMES: [&str; 8] = [
    "ok",
    "rate_limited",
    "overloaded",
    "server_error",
    "timeout",
    "connect_error",
    "client_error",
    "auth_error",
];

/// The handles of one (provider, key, upstream model): registered once, then bumped per attempt
/// without building labels or looking the series up in the recorder again.
struct AttemptSeries {
    /// `gateway_upstream_requests_total` per outcome, registered on first use.
    requests: [std::sync::OnceLock<Counter>; OUTCOMES.len()],
    duration: Histogram,
    ttft: Histogram,
    /// `gateway_key_ratelimit_remaining` of this series' key, `requests` then `tokens`, registered on
    /// first use (every model of a key shares the same two gauges).
    remaining: [std::sync::OnceLock<Gauge>; 2],
}

/// The handles of one (route, model, status, virtual key) of finished requests.
struct RequestSeries {
    requests: Counter,
    duration: Histogram,
}

/// Tokens per (provider, upstream model): prompt, completion, cached.
struct TokenSeries {
    kinds: [Counter; 3],
}

/// Registered handles by their label values, joined into one string with a separator no
/// configured name contains. The label sets are bounded (configured names, a bounded model
/// label, HTTP statuses), so the caches are too; a reload that renames things leaves the old
/// entries, as the recorder keeps the old series.
struct HandleCache<V> {
    map: RwLock<HashMap<String, Arc<V>>>,
}

impl<V> HandleCache<V> {
    fn new() -> Self {
        HandleCache {
            map: RwLock::new(HashMap::new()),
        }
    }

    /// The handles for `parts`, made by `make` the first time.
    fn get(&self, parts: &[&str], make: impl FnOnce() -> V) -> Arc<V> {
        thread_local! {
            static KEY: RefCell<String> = const { RefCell::new(String::new()) };
        }
        KEY.with(|k| {
            let mut k = k.borrow_mut();
            k.clear();
            for p in parts {
                k.push_str(p);
                k.push('\u{1f}');
            }
            if let Ok(m) = self.map.read() {
                if let Some(v) = m.get(k.as_str()) {
                    return Arc::clone(v);
                }
            }
            let v = Arc::new(make());
            if let Ok(mut m) = self.map.write() {
                return Arc::clone(m.entry(k.clone()).or_insert(v));
            }
            v
        })
    }
}

/// The recorder and what it cannot hold.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    cost: Mutex<HashMap<CostKey, f64>>,
    attempt_series: HandleCache<AttemptSeries>,
    request_series: HandleCache<RequestSeries>,
    token_series: HandleCache<TokenSeries>,
    cache_series: HandleCache<Counter>,
    pub(crate) log_dropped: Counter,
    pub(crate) log_write_errors: Counter,
    pub(crate) spans_dropped: Counter,
    pub(crate) trace_export_errors: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// How long a gauge no render refreshed stays in the output (see [`Metrics::new`]).
const GAUGE_IDLE: std::time::Duration = std::time::Duration::from_secs(120);

impl Metrics {
    pub(crate) fn new() -> Self {
        Self::with_gauge_idle(GAUGE_IDLE)
    }

    /// [`Metrics::new`], with gauges that no render refreshed for `gauge_idle` left out.
    fn with_gauge_idle(gauge_idle: std::time::Duration) -> Self {
        // The key and provider gauges are set from the engine's health before every render, so
        // only the series of keys and providers a reload removed go stale: after a while they
        // leave the output instead of showing a key that no longer exists.
        let builder = PrometheusBuilder::new()
            .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(gauge_idle));
        // `set_buckets` only fails on an empty list.
        let builder = match builder.set_buckets(LATENCY_BUCKETS) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        for (name, help) in HELP {
            let key = KeyName::from_const_str(name);
            match *name {
                names::REQUEST_DURATION | names::UPSTREAM_DURATION | names::TTFT => {
                    recorder.describe_histogram(key, None, SharedString::const_str(help));
                }
                names::KEY_STATE
                | names::KEY_COOLDOWN
                | names::PROVIDER_STATE
                | names::KEY_REMAINING => {
                    recorder.describe_gauge(key, None, SharedString::const_str(help));
                }
                _ => recorder.describe_counter(key, None, SharedString::const_str(help)),
            }
        }
        let c = |name: &'static str| {
            let c = recorder.register_counter(&Key::from_static_name(name), &META);
            c.increment(0);
            c
        };
        Metrics {
            log_dropped: c(names::LOG_DROPPED),
            log_write_errors: c(names::LOG_WRITE_ERRORS),
            spans_dropped: c(names::SPANS_DROPPED),
            trace_export_errors: c(names::TRACE_EXPORT_ERRORS),
            cost: Mutex::new(HashMap::new()),
            attempt_series: HandleCache::new(),
            request_series: HandleCache::new(),
            token_series: HandleCache::new(),
            cache_series: HandleCache::new(),
            recorder,
            handle,
        }
    }

    /// The recorder's handle (for upkeep).
    pub(crate) fn handle(&self) -> PrometheusHandle {
        self.handle.clone()
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &META)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>, v: f64) {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &META)
            .set(v);
    }

    fn remaining_handle(&self, provider: &Arc<str>, key: &Arc<str>, kind: &'static str) -> Gauge {
        self.recorder.register_gauge(
            &Key::from_parts(
                names::KEY_REMAINING,
                vec![
                    label("provider", Arc::clone(provider)),
                    label("key", Arc::clone(key)),
                    label("kind", kind),
                ],
            ),
            &META,
        )
    }

    fn histogram_handle(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &META)
    }

    /// Counts one upstream attempt.
    pub(crate) fn on_attempt(&self, a: &AttemptRecord) {
        let series = self
            .attempt_series
            .get(&[&a.provider, &a.key, &a.model], || {
                let pm = || {
                    vec![
                        label("provider", Arc::clone(&a.provider)),
                        label("model", Arc::clone(&a.model)),
                    ]
                };
                AttemptSeries {
                    requests: Default::default(),
                    duration: self.histogram_handle(names::UPSTREAM_DURATION, pm()),
                    ttft: self.histogram_handle(names::TTFT, pm()),
                    remaining: Default::default(),
                }
            });
        let slot = outcome_slot(a.outcome);
        series.requests[slot]
            .get_or_init(|| {
                self.counter(
                    names::UPSTREAM_REQUESTS,
                    vec![
                        label("provider", Arc::clone(&a.provider)),
                        label("key", Arc::clone(&a.key)),
                        label("model", Arc::clone(&a.model)),
                        label("outcome", OUTCOMES[slot]),
                    ],
                )
            })
            .increment(1);
        if !matches!(a.error, Some(ProviderError::Cancelled)) {
            series.duration.record(a.latency.as_secs_f64());
        }
        if let Some(t) = a.ttft {
            series.ttft.record(t.as_secs_f64());
        }
        if let Some(from) = &a.fallback_from {
            self.counter(
                names::FALLBACKS,
                vec![
                    label("from_provider", Arc::clone(from)),
                    label("to_provider", Arc::clone(&a.provider)),
                ],
            )
            .increment(1);
        }
        if a.is_retry {
            self.counter(
                names::RETRIES,
                vec![label("provider", Arc::clone(&a.provider))],
            )
            .increment(1);
        }
        let mut rl = a.rate_limit;
        if let Some(ProviderError::RateLimited {
            remaining: Some(r), ..
        }) = &a.error
        {
            rl.remaining_requests = rl.remaining_requests.or(r.remaining_requests);
            rl.remaining_tokens = rl.remaining_tokens.or(r.remaining_tokens);
        }
        for (i, (kind, v)) in [
            ("requests", rl.remaining_requests),
            ("tokens", rl.remaining_tokens),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(v) = v {
                series.remaining[i]
                    .get_or_init(|| self.remaining_handle(&a.provider, &a.key, kind))
                    .set(v as f64);
            }
        }
    }

    /// Counts one finished client request.
    pub(crate) fn on_finish(&self, r: &RequestRecord) {
        let reached =
            !r.attempts.is_empty() || r.route.is_some() || r.provider.is_some() || r.known_model;
        let model = if reached {
            bounded_str(&r.requested_model)
        } else {
            "other"
        };
        let route = r.route.as_deref().map_or("none", bounded_str);
        let vk = r.virtual_key.as_deref().map_or("none", bounded_str);
        let mut status = itoa::Buffer::new();
        let status = status.format(r.status);
        let series = self.request_series.get(&[route, model, status, vk], || {
            let route = label("route", route.to_owned());
            RequestSeries {
                requests: self.counter(
                    names::REQUESTS,
                    vec![
                        route.clone(),
                        label("model", model.to_owned()),
                        label("status", status.to_owned()),
                        label("virtual_key", vk.to_owned()),
                    ],
                ),
                duration: self.histogram_handle(names::REQUEST_DURATION, vec![route]),
            }
        });
        series.requests.increment(1);
        series.duration.record(r.duration.as_secs_f64());
        if let Some(result) = r.cache {
            self.cache_series
                .get(&[r.endpoint, result], || {
                    self.counter(
                        names::CACHE,
                        vec![label("endpoint", r.endpoint), label("result", result)],
                    )
                })
                .increment(1);
        }
        if let Some(reason) = rejection_reason(r) {
            self.counter(
                names::REJECTIONS,
                vec![label("virtual_key", vk.to_owned()), label("reason", reason)],
            )
            .increment(1);
        }
        let (Some(provider), Some(model)) = (r.provider.as_deref(), r.model.as_deref()) else {
            return;
        };
        let t = Tokens::of(r);
        let tokens = self.token_series.get(&[provider, model], || {
            let c = |kind: &'static str| {
                self.counter(
                    names::TOKENS,
                    vec![
                        label("provider", provider.to_owned()),
                        label("model", model.to_owned()),
                        label("kind", kind),
                    ],
                )
            };
            TokenSeries {
                kinds: [c("prompt"), c("completion"), c("cached")],
            }
        });
        for (c, n) in tokens.kinds.iter().zip([t.prompt, t.completion, t.cached]) {
            c.increment(n);
        }
        if r.cost_usd > 0.0 && r.cost_usd.is_finite() {
            let key = (
                r.virtual_key.clone().unwrap_or_else(|| "none".to_owned()),
                provider.to_owned(),
                model.to_owned(),
            );
            if let Ok(mut m) = self.cost.lock() {
                *m.entry(key).or_insert(0.0) += r.cost_usd;
            }
        }
    }

    /// Sets the key and provider gauges from the engine's health.
    pub(crate) fn refresh_health(&self, health: &[ProviderHealth]) {
        for p in health {
            let up = if p.state == "available" { 1.0 } else { 0.0 };
            self.gauge(
                names::PROVIDER_STATE,
                vec![label("provider", p.name.clone())],
                up,
            );
            for k in &p.keys {
                let labels = || {
                    vec![
                        label("provider", p.name.clone()),
                        label("key", k.name.clone()),
                    ]
                };
                let up = if k.state == "available" { 1.0 } else { 0.0 };
                self.gauge(names::KEY_STATE, labels(), up);
                let cooldown = k.cooldown_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
                self.gauge(names::KEY_COOLDOWN, labels(), cooldown);
                for (kind, v) in [
                    ("requests", k.signals.remaining_requests),
                    ("tokens", k.signals.remaining_tokens),
                ] {
                    if let Some(v) = v {
                        let mut l = labels();
                        l.push(label("kind", kind));
                        self.gauge(names::KEY_REMAINING, l, v as f64);
                    }
                }
            }
        }
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = self.handle.render();
        let mut cost: Vec<(CostKey, f64)> = match self.cost.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            Err(_) => Vec::new(),
        };
        cost.sort_by(|a, b| a.0.cmp(&b.0));
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "# HELP {} Spend in USD by virtual key, provider and upstream model.\n# TYPE {} counter",
            names::COST,
            names::COST
        );
        for ((vk, p, m), v) in cost {
            let _ = writeln!(
                out,
                "{}{{virtual_key=\"{}\",provider=\"{}\",model=\"{}\"}} {}",
                names::COST,
                escape(&vk),
                escape(p.as_str()),
                escape(m.as_str()),
                v
            );
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gauge that renders no longer refresh (a key a reload removed) leaves the output after
    /// the idle time; the refreshed ones and every counter stay.
    #[test]
    fn gauges_of_removed_keys_leave_the_output() {
        let m = Metrics::with_gauge_idle(std::time::Duration::from_millis(200));
        let key = |k: &'static str| vec![label("provider", "p"), label("key", k)];
        m.gauge(names::KEY_STATE, key("kept"), 1.0);
        m.gauge(names::KEY_STATE, key("removed"), 1.0);
        let out = m.render();
        assert!(
            out.contains("key=\"kept\"") && out.contains("key=\"removed\""),
            "{out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        m.gauge(names::KEY_STATE, key("kept"), 0.0);
        let out = m.render();
        assert!(
            out.contains("gateway_key_state{provider=\"p\",key=\"kept\"} 0"),
            "{out}"
        );
        assert!(!out.contains("key=\"removed\""), "{out}");
        assert!(out.contains(names::LOG_DROPPED), "counters stay: {out}");
    }
}
