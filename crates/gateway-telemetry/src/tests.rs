//! Crate tests: exact metric counts, the log API, a full queue, spans at a collector.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gateway_core::extend::AdminRoutes;
use gateway_core::observe::{AttemptRecord, Observer, RequestRecord, TraceContext};
use gateway_core::types::{PromptTokensDetails, Usage};
use gateway_core::{ProviderError, RateLimitInfo, RateLimitScope};
use serde_json::Value;

use crate::testing::{sample, OtlpReceiver};
use crate::{store, Hooks, Telemetry, TelemetryConfig, WriterPriority};

fn config(dir: &tempfile::TempDir) -> TelemetryConfig {
    TelemetryConfig {
        data_dir: dir.path().to_path_buf(),
        ..TelemetryConfig::default()
    }
}

fn attempt(provider: &str, key: &str, error: Option<ProviderError>) -> AttemptRecord {
    AttemptRecord {
        provider: Arc::from(provider),
        provider_kind: Arc::from(if provider == "ant" {
            "anthropic"
        } else {
            "openai"
        }),
        key: Arc::from(key),
        model: Arc::from(if provider == "ant" {
            "claude-3-5-haiku"
        } else {
            "gpt-4o-mini"
        }),
        outcome: error.as_ref().map_or("ok", ProviderError::outcome),
        error,
        latency: Duration::from_millis(120),
        ttft: None,
        rate_limit: RateLimitInfo::default(),
        is_retry: false,
        fallback_from: None,
        started_at: SystemTime::now(),
        span_id: None,
    }
}

fn rate_limited() -> ProviderError {
    ProviderError::RateLimited {
        retry_after: Some(Duration::from_secs(30)),
        remaining: Some(Box::new(RateLimitInfo {
            remaining_requests: Some(0),
            ..RateLimitInfo::default()
        })),
        scope: RateLimitScope::Key,
        message: "Rate limit reached for key sk-proj-SECRETSECRET123".to_owned(),
    }
}

fn server_error() -> ProviderError {
    ProviderError::Server {
        status: 500,
        message: "boom (key AIzaSyA-SECRETSECRETSECRET12)".to_owned(),
    }
}

fn usage(prompt: u64, completion: u64, cached: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        prompt_tokens_details: Some(PromptTokensDetails {
            cached_tokens: cached,
        }),
        completion_tokens_details: None,
    }
}

fn finished(id: &str, attempts: Vec<AttemptRecord>, status: u16) -> RequestRecord {
    let served = attempts.iter().rev().find(|a| a.error.is_none()).cloned();
    RequestRecord {
        request_id: id.to_owned(),
        started_at_ms: crate::time::now_ms(),
        virtual_key: Some("team-a".to_owned()),
        endpoint: "chat",
        requested_model: "chat".to_owned(),
        route: Some("chat".to_owned()),
        provider: served.as_ref().map(|a| a.provider.to_string()),
        model: served.as_ref().map(|a| a.model.to_string()),
        usage: served.as_ref().map(|_| usage(100, 20, 40)),
        cost_usd: if served.is_some() { 0.0015 } else { 0.0 },
        status,
        error: (status >= 400).then(|| "all attempts failed: sk-ant-api03-SECRETSECRET".to_owned()),
        duration: Duration::from_millis(300),
        attempts,
        ..RequestRecord::default()
    }
}

/// Feeds a request to the observer the way engine and server do: attempts, then the finish.
fn run(t: &Telemetry, r: &RequestRecord) {
    for a in &r.attempts {
        t.on_attempt(a);
    }
    t.on_finish(r);
}

/// A scripted run: a key hitting 429s, a provider failing over, a rejection.
fn scripted(t: &Telemetry) {
    // 1: k1 says 429, k2 serves.
    let mut ok = attempt("oai", "k2", None);
    ok.is_retry = true;
    ok.rate_limit.remaining_requests = Some(57);
    ok.rate_limit.remaining_tokens = Some(9000);
    run(
        t,
        &finished(
            "r1",
            vec![attempt("oai", "k1", Some(rate_limited())), ok],
            200,
        ),
    );
    // 2: k2 fails with 500, the route falls back to ant, which streams.
    let mut fb = attempt("ant", "main", None);
    fb.fallback_from = Some(Arc::from("oai"));
    fb.ttft = Some(Duration::from_millis(80));
    let mut r2 = finished(
        "r2",
        vec![attempt("oai", "k2", Some(server_error())), fb],
        200,
    );
    r2.stream = true;
    run(t, &r2);
    // 3: everything fails.
    run(
        t,
        &finished("r3", vec![attempt("oai", "k2", Some(server_error()))], 502),
    );
    // 4: refused by admission (no attempts, no route).
    let refused = RequestRecord {
        request_id: "r4".to_owned(),
        started_at_ms: crate::time::now_ms(),
        endpoint: "chat",
        requested_model: "random-model-name-from-a-stranger".to_owned(),
        status: 402,
        error: Some("budget exceeded".to_owned()),
        refusal: Some("budget_exceeded"),
        virtual_key: Some("batch-job".to_owned()),
        ..RequestRecord::default()
    };
    run(t, &refused);
}

#[tokio::test]
async fn metrics_count_a_scripted_run_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let t = Telemetry::start(config(&dir)).unwrap();
    scripted(&t);
    let text = t.render();
    let s = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
    let up = |p: &str, k: &str, m: &str, o: &str| {
        s(
            "gateway_upstream_requests_total",
            &[("provider", p), ("key", k), ("model", m), ("outcome", o)],
        )
    };
    assert_eq!(
        up("oai", "k1", "gpt-4o-mini", "rate_limited"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(up("oai", "k2", "gpt-4o-mini", "ok"), Some(1.0), "{text}");
    assert_eq!(
        up("oai", "k2", "gpt-4o-mini", "server_error"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        up("ant", "main", "claude-3-5-haiku", "ok"),
        Some(1.0),
        "{text}"
    );
    let req = |status: &str, vk: &str, route: &str, model: &str| {
        s(
            "gateway_requests_total",
            &[
                ("route", route),
                ("model", model),
                ("status", status),
                ("virtual_key", vk),
            ],
        )
    };
    assert_eq!(req("200", "team-a", "chat", "chat"), Some(2.0), "{text}");
    assert_eq!(req("502", "team-a", "chat", "chat"), Some(1.0), "{text}");
    assert_eq!(
        req("402", "batch-job", "none", "other"),
        Some(1.0),
        "a refused request's client-chosen model is not a label: {text}"
    );
    assert_eq!(
        s(
            "gateway_virtual_key_rejections_total",
            &[("virtual_key", "batch-job"), ("reason", "budget_exceeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s(
            "gateway_fallbacks_total",
            &[("from_provider", "oai"), ("to_provider", "ant")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s("gateway_retries_total", &[("provider", "oai")]),
        Some(1.0)
    );
    let tokens = |p: &str, m: &str, kind: &str| {
        s(
            "gateway_tokens_total",
            &[("provider", p), ("model", m), ("kind", kind)],
        )
    };
    assert_eq!(tokens("oai", "gpt-4o-mini", "prompt"), Some(100.0));
    assert_eq!(tokens("ant", "claude-3-5-haiku", "completion"), Some(20.0));
    assert_eq!(tokens("ant", "claude-3-5-haiku", "cached"), Some(40.0));
    assert_eq!(
        s(
            "gateway_cost_usd_total",
            &[
                ("virtual_key", "team-a"),
                ("provider", "oai"),
                ("model", "gpt-4o-mini")
            ]
        ),
        Some(0.0015)
    );
    assert!(
        text.contains("# TYPE gateway_cost_usd_total counter"),
        "{text}"
    );
    // Histograms: 4 oai attempts in the 0.25 s bucket, the ant one too; ttft only for the stream.
    assert_eq!(
        s(
            "gateway_upstream_duration_seconds_bucket",
            &[
                ("provider", "oai"),
                ("model", "gpt-4o-mini"),
                ("le", "0.25")
            ]
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        s(
            "gateway_upstream_duration_seconds_bucket",
            &[("provider", "oai"), ("model", "gpt-4o-mini"), ("le", "0.1")]
        ),
        Some(0.0)
    );
    assert_eq!(
        s(
            "gateway_time_to_first_token_seconds_count",
            &[("provider", "ant"), ("model", "claude-3-5-haiku")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s(
            "gateway_request_duration_seconds_count",
            &[("route", "chat")]
        ),
        Some(3.0)
    );
    // Headroom from the attempts' headers and from a 429's body.
    let rem = |k: &str, kind: &str| {
        s(
            "gateway_key_ratelimit_remaining",
            &[("provider", "oai"), ("key", k), ("kind", kind)],
        )
    };
    assert_eq!(rem("k2", "requests"), Some(57.0));
    assert_eq!(rem("k2", "tokens"), Some(9000.0));
    assert_eq!(rem("k1", "requests"), Some(0.0));
    assert_eq!(s("gateway_log_dropped_total", &[]), Some(0.0));
    assert!(!text.contains("SECRET"), "no secret in metrics");
}

#[test]
fn outcomes_map_to_the_documented_labels() {
    use crate::metrics::outcome_label;
    for o in [
        "ok",
        "rate_limited",
        "overloaded",
        "server_error",
        "timeout",
        "connect_error",
        "client_error",
        "auth_error",
    ] {
        assert_eq!(outcome_label(o), o);
    }
    assert_eq!(
        outcome_label(ProviderError::Cancelled.outcome()),
        "client_error"
    );
}

async fn admin(t: &Telemetry, path: &str, query: &str) -> (u16, Value) {
    t.handle("GET", path, query, b"").await.expect("our route")
}

#[tokio::test]
async fn the_log_api_returns_every_request_with_its_attempts_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let t = Telemetry::start(config(&dir)).unwrap();
    scripted(&t);
    t.flush().await;

    let (status, v) = admin(&t, "/admin/logs", "").await;
    assert_eq!(status, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["r4", "r3", "r2", "r1"], "newest first");
    let r2 = &data[2];
    assert_eq!(r2["stream"], true);
    assert_eq!(r2["provider"], "ant");
    assert_eq!(r2["tokens"]["prompt"], 100);
    assert_eq!(r2["tokens"]["cached"], 40);
    let attempts = r2["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["provider"], "oai");
    assert_eq!(attempts[0]["key"], "k2");
    assert_eq!(attempts[0]["outcome"], "server_error");
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[1]["fallback_from"], "oai");
    assert_eq!(attempts[1]["ttft_ms"], 80.0);
    assert!(r2.get("content").is_none());
    let all = v.to_string();
    for secret in ["SECRETSECRET", "sk-proj-S", "AIzaSyA-S", "sk-ant-api03-S"] {
        assert!(!all.contains(secret), "{secret} leaked: {all}");
    }
    assert!(all.contains("sk-***"), "scrubbed, not removed: {all}");

    // Filters.
    let ids_of = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids_of(&admin(&t, "/admin/logs", "provider=ant").await.1),
        ["r2"]
    );
    assert_eq!(
        ids_of(&admin(&t, "/admin/logs", "status=5xx").await.1),
        ["r3"]
    );
    assert_eq!(
        ids_of(&admin(&t, "/admin/logs", "status=error").await.1),
        ["r4", "r3"]
    );
    assert_eq!(
        ids_of(
            &admin(&t, "/admin/logs", "virtual_key=team-a&limit=2")
                .await
                .1
        ),
        ["r3", "r2"]
    );
    assert_eq!(
        ids_of(&admin(&t, "/admin/logs", "model=claude-3-5-haiku").await.1),
        ["r2"]
    );
    assert!(ids_of(
        &admin(&t, "/admin/logs", "until=2000-01-01T00:00:00Z")
            .await
            .1
    )
    .is_empty());
    assert_eq!(
        ids_of(
            &admin(&t, "/admin/logs", "since=2000-01-01T00:00:00Z")
                .await
                .1
        )
        .len(),
        4
    );
    let (status, one) = admin(&t, "/admin/logs/r1", "").await;
    assert_eq!(status, 200);
    assert_eq!(one["attempts"][0]["outcome"], "rate_limited");
    assert_eq!(one["attempts"][0]["status"], 429);
    assert_eq!(admin(&t, "/admin/logs/nope", "").await.0, 404);
    assert_eq!(admin(&t, "/admin/logs", "since=whenever").await.0, 400);
    assert!(
        t.handle("GET", "/admin/keys", "", b"").await.is_none(),
        "not ours"
    );

    // Stats over the last hour.
    let (status, st) = admin(&t, "/admin/stats", "window=1h").await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["requests"]["requests"], 4);
    assert_eq!(st["requests"]["errors"], 2);
    assert_eq!(st["requests"]["with_fallback"], 1);
    let providers = st["providers"].as_array().unwrap();
    let oai = providers.iter().find(|p| p["provider"] == "oai").unwrap();
    assert_eq!(oai["requests"], 4, "{oai}");
    assert_eq!(oai["errors"], 3);
    assert_eq!(oai["rate_limited"], 1);
    assert_eq!(oai["rate_limited_rate"], 0.25);
    assert_eq!(oai["fallbacks_out"], 1);
    assert_eq!(oai["latency"]["p50_ms"], 120.0);
    assert_eq!(
        oai["tokens"]["prompt"], 100,
        "only the served request's tokens"
    );
    let k1 = oai["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "k1")
        .unwrap();
    assert_eq!(k1["rate_limited_rate"], 1.0);
    let ant = providers.iter().find(|p| p["provider"] == "ant").unwrap();
    assert_eq!(ant["fallbacks_in"], 1);
    assert_eq!(ant["cost_usd"], 0.0015);
    assert_eq!(admin(&t, "/admin/stats", "window=soon").await.0, 400);
}

#[tokio::test]
async fn content_is_logged_only_when_asked_and_scrubbed() {
    for on in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let t = Telemetry::start(TelemetryConfig {
            log_content: on,
            ..config(&dir)
        })
        .unwrap();
        let mut r = finished("c", vec![attempt("oai", "k1", None)], 200);
        r.content = Some((
            "{\"messages\":\"my key is sk-live-ABCDEFGHIJKL\"}".to_owned(),
            "{\"reply\":\"hi\"}".to_owned(),
        ));
        run(&t, &r);
        t.flush().await;
        let (_, v) = admin(&t, "/admin/logs", "").await;
        let content = &v["data"][0]["content"];
        if on {
            assert_eq!(content["response"], "{\"reply\":\"hi\"}");
            assert!(content["request"].as_str().unwrap().contains("sk-***"));
            assert!(!v.to_string().contains("ABCDEFGHIJKL"));
        } else {
            assert!(content.is_null(), "content off: {v}");
        }
    }
}

#[tokio::test]
async fn a_full_log_queue_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let t = Telemetry::start_with_hooks(
        TelemetryConfig {
            queue_capacity: 1,
            ..config(&dir)
        },
        Hooks {
            gate: Some(Arc::clone(&gate)),
            ..Hooks::default()
        },
    );
    let started = Instant::now();
    for i in 0..50 {
        t.on_finish(&finished(
            &format!("q{i}"),
            vec![attempt("oai", "k1", None)],
            200,
        ));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "submitting never waits for the paused writer"
    );
    assert_eq!(
        t.dropped_logs(),
        49,
        "capacity 1: one queued, the rest dropped"
    );
    assert_eq!(
        sample(&t.render(), "gateway_log_dropped_total", &[]),
        Some(49.0)
    );
    drop(held);
    t.flush().await;
    let (_, v) = admin(&t, "/admin/logs", "").await;
    let data = v["data"].as_array().unwrap();
    assert_eq!(
        data.len(),
        1,
        "the queued one is written once the writer runs"
    );
    assert_eq!(data[0]["id"], "q0");
}

#[test]
fn retention_keeps_the_newest_rows_and_drops_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = store::open(&dir.path().join("r.db")).unwrap();
    let now = crate::time::now_ms();
    let entries: Vec<_> = (0..5u64)
        .map(|i| {
            let mut r = finished(&format!("e{i}"), vec![attempt("oai", "k1", None)], 200);
            r.started_at_ms = now - (5 - i) * 86_400_000;
            crate::record::LogEntry::from_record(&r, false)
        })
        .collect();
    store::insert_batch(&mut conn, &entries).unwrap();
    let q = store::LogQuery {
        limit: 100,
        ..store::LogQuery::default()
    };
    // Older than 3.5 days: e0 (5 days), e1 (4 days).
    let n =
        store::apply_retention(&mut conn, now, Some(3 * 86_400_000 + 43_200_000), None).unwrap();
    assert_eq!(n, 2);
    let ids: Vec<String> = store::query_logs(&conn, &q)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["e4", "e3", "e2"]);
    store::apply_retention(&mut conn, now, None, Some(1)).unwrap();
    let ids: Vec<String> = store::query_logs(&conn, &q)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["e4"]);
    let attempts: i64 = conn
        .query_row("SELECT COUNT(*) FROM attempts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(attempts, 1, "attempts go with their requests");
}

#[tokio::test]
async fn spans_reach_the_collector_as_a_request_span_with_attempt_children() {
    let rx = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = Telemetry::start(TelemetryConfig {
        otlp_endpoint: Some(rx.endpoint()),
        service_name: "gw-test".to_owned(),
        ..config(&dir)
    })
    .unwrap();
    let trace = TraceContext {
        trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
        span_id: 0x1111_2222_3333_4444,
        parent_span_id: Some(0x00f0_67aa_0ba9_02b7),
        sampled: true,
    };
    let mut failed = attempt("oai", "k1", Some(rate_limited()));
    failed.span_id = Some(0xaaaa_0000_0000_0001);
    let mut served = attempt("ant", "main", None);
    served.span_id = Some(0xaaaa_0000_0000_0002);
    served.fallback_from = Some(Arc::from("oai"));
    let mut r = finished("traced", vec![failed, served], 200);
    r.trace = Some(trace);
    run(&t, &r);
    // Not sampled: no spans.
    let mut quiet = finished("quiet", vec![attempt("oai", "k2", None)], 200);
    quiet.trace = Some(TraceContext {
        sampled: false,
        trace_id: 7,
        ..trace
    });
    run(&t, &quiet);
    t.flush().await;
    let spans = rx.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert!(spans.iter().all(|s| !s.json), "protobuf by default");
    let root = spans
        .iter()
        .find(|s| s.span_id == "1111222233334444")
        .unwrap();
    assert_eq!(root.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        root.parent_span_id, "00f067aa0ba902b7",
        "the client's span is the parent"
    );
    assert_eq!(root.kind, 2, "server span");
    assert_eq!(root.service_name.as_deref(), Some("gw-test"));
    assert_eq!(root.attr_str("gen_ai.request.model"), Some("chat"));
    assert_eq!(
        root.attr_str("gen_ai.response.model"),
        Some("claude-3-5-haiku")
    );
    assert_eq!(root.attr_str("gen_ai.system"), Some("anthropic"));
    assert_eq!(root.attr_i64("gen_ai.usage.input_tokens"), Some(100));
    assert_eq!(root.attr_i64("gen_ai.usage.output_tokens"), Some(20));
    assert_eq!(root.attr_i64("http.response.status_code"), Some(200));
    assert_eq!(root.end_unix_nano - root.start_unix_nano, 300_000_000);
    let child = |id: &str| spans.iter().find(|s| s.span_id == id).unwrap();
    let first = child("aaaa000000000001");
    let second = child("aaaa000000000002");
    for c in [first, second] {
        assert_eq!(c.trace_id, root.trace_id);
        assert_eq!(
            c.parent_span_id, root.span_id,
            "attempts are children of the request"
        );
        assert_eq!(c.kind, 3, "client span");
        assert_eq!(c.end_unix_nano - c.start_unix_nano, 120_000_000);
    }
    assert_eq!(first.attr_str("gateway.provider"), Some("oai"));
    assert_eq!(first.attr_str("gateway.key"), Some("k1"));
    assert_eq!(first.attr_str("gen_ai.system"), Some("openai"));
    assert_eq!(first.attr_i64("http.response.status_code"), Some(429));
    assert_eq!(first.attr_str("error.type"), Some("rate_limited"));
    assert_eq!(first.status_code, 2, "a failed attempt has an error status");
    assert!(
        !first.status_message.contains("SECRET"),
        "{}",
        first.status_message
    );
    assert_eq!(second.status_code, 0);
    assert_eq!(second.attr_str("gateway.fallback_from"), Some("oai"));
    assert_eq!(second.attr_i64("gen_ai.usage.output_tokens"), Some(20));
    assert_eq!(
        second.attr_str("gen_ai.response.model"),
        Some("claude-3-5-haiku")
    );
}

#[test]
fn the_traces_url_gets_its_path() {
    use crate::otlp::traces_url;
    assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
    assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
    assert_eq!(
        traces_url("http://c:4318/v1/traces"),
        "http://c:4318/v1/traces"
    );
}

/// Every metric is documented, and the dashboard queries only metrics that exist.
#[test]
fn docs_and_dashboard_match_the_metrics() {
    use crate::metrics::names::*;
    let all = [
        REQUESTS,
        REQUEST_DURATION,
        UPSTREAM_REQUESTS,
        UPSTREAM_DURATION,
        TTFT,
        FALLBACKS,
        RETRIES,
        TOKENS,
        COST,
        KEY_STATE,
        KEY_COOLDOWN,
        PROVIDER_STATE,
        KEY_REMAINING,
        REJECTIONS,
        LOG_DROPPED,
        LOG_WRITE_ERRORS,
        SPANS_DROPPED,
        TRACE_EXPORT_ERRORS,
    ];
    let doc = include_str!("../../../docs/observability.md");
    for name in all {
        assert!(
            doc.contains(&format!("`{name}`")),
            "{name} is not documented"
        );
    }
    let dashboard: Value =
        serde_json::from_str(include_str!("../../../docs/grafana-dashboard.json")).unwrap();
    let text = dashboard.to_string();
    let mut used = 0;
    for (i, _) in text.match_indices("gateway_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_count")
            .trim_end_matches("_sum");
        assert!(all.contains(&base), "the dashboard queries unknown {name}");
        used += 1;
    }
    assert!(used > 20, "the dashboard queries the metrics");
}

/// A `Write` into shared memory, standing in for stdout.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn json_lines_are_one_record_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::default();
    let t = Telemetry::start_with_hooks(
        TelemetryConfig {
            stdout_json: true,
            ..config(&dir)
        },
        Hooks {
            json_lines: Some(Box::new(sink.clone())),
            ..Hooks::default()
        },
    );
    scripted(&t);
    t.flush().await;
    let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["r1", "r2", "r3", "r4"], "{out}");
    assert_eq!(lines[1]["attempts"][1]["fallback_from"], "oai");
    assert!(!out.contains("SECRET"), "{out}");
}

/// Scheduling policies (field 41 of `/proc/self/task/*/stat`) of this process's log writers.
#[cfg(target_os = "linux")]
fn writer_policies() -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (head, rest) = stat.rsplit_once(')').unwrap();
        if head.ends_with("(gateway-log-wri") {
            // Fields after the name start at field 3.
            let policy = rest.split_whitespace().nth(41 - 3).unwrap();
            out.push(policy.parse().unwrap());
        }
    }
    out
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_log_writer_runs_at_idle_priority_and_still_writes() {
    const SCHED_IDLE: u32 = 5;
    let dir = tempfile::tempdir().unwrap();
    let t = Telemetry::start(config(&dir)).unwrap();
    assert_eq!(t.log_writer_priority(), WriterPriority::Idle);
    assert!(
        writer_policies().contains(&SCHED_IDLE),
        "a writer thread at SCHED_IDLE: {:?}",
        writer_policies()
    );
    t.on_finish(&finished("idle-1", vec![attempt("oai", "k1", None)], 200));
    t.flush().await;
    let (_, v) = admin(&t, "/admin/logs", "").await;
    assert_eq!(v["data"][0]["id"], "idle-1");
}

#[tokio::test]
async fn a_normal_priority_writer_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let t = Telemetry::start(TelemetryConfig {
        writer_priority: WriterPriority::Normal,
        ..config(&dir)
    })
    .unwrap();
    assert_eq!(t.log_writer_priority(), WriterPriority::Normal);
}

#[tokio::test]
async fn spans_go_as_otlp_json_when_asked() {
    assert_eq!("http/json".parse(), Ok(crate::OtlpProtocol::HttpJson));
    assert_eq!(
        "http/protobuf".parse(),
        Ok(crate::OtlpProtocol::HttpProtobuf)
    );
    assert!("grpc".parse::<crate::OtlpProtocol>().is_err());
    let rx = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = Telemetry::start(TelemetryConfig {
        otlp_endpoint: Some(rx.endpoint()),
        otlp_protocol: crate::OtlpProtocol::HttpJson,
        service_name: "gw-json".to_owned(),
        ..config(&dir)
    })
    .unwrap();
    let mut a = attempt("oai", "k1", None);
    a.span_id = Some(0xaaaa_0000_0000_0009);
    let mut r = finished("json", vec![a], 200);
    r.trace = Some(TraceContext {
        trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
        span_id: 0x1111_2222_3333_4444,
        parent_span_id: None,
        sampled: true,
    });
    run(&t, &r);
    t.flush().await;
    let spans = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|s| s.json), "sent as OTLP/JSON");
    let root = spans
        .iter()
        .find(|s| s.span_id == "1111222233334444")
        .unwrap();
    assert_eq!(root.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(root.service_name.as_deref(), Some("gw-json"));
    assert!(spans.iter().any(|s| s.span_id == "aaaa000000000009"));
}
