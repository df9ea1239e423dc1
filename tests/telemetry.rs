//! End-to-end telemetry: the real gateway with gateway-telemetry as observer, metrics renderer and
//! admin routes, against mock upstreams and an in-process OTLP collector on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use gateway_mock::{Faults, MockServer, MockUpstream};
use gateway_server::Extensions;
use gateway_telemetry::testing::{sample, OtlpReceiver};
use gateway_telemetry::{Telemetry, TelemetryConfig};
use gateway_tests::{chat, messages, TestGateway};
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("authorization", "Bearer adm-token-123");

async fn mock(keys: &[&str]) -> MockServer {
    let mut m = MockUpstream::new();
    for k in keys {
        m = m.key(k);
    }
    m.start().await.unwrap()
}

fn config(openai: &MockServer, anthropic: &MockServer) -> String {
    format!(
        r#"
[server]
admin_token = "adm-token-123"

[[providers]]
name = "oai"
kind = "openai"
base_url = "{}"
models = ["gpt-4o-mini"]
[[providers.keys]]
name = "k1"
secret = "sk-test-openai-1"
[[providers.keys]]
name = "k2"
secret = "sk-test-openai-2"

[[providers]]
name = "ant"
kind = "anthropic"
base_url = "{}"
models = ["claude-3-5-haiku-latest"]
[[providers.keys]]
name = "main"
secret = "sk-ant-test-1"

[[routes]]
name = "chat"
targets = [{{ provider = "oai", model = "gpt-4o-mini" }}]
fallbacks = ["ant/claude-3-5-haiku-latest"]
"#,
        openai.openai_base(),
        anthropic.url()
    )
}

struct Setup {
    gw: TestGateway,
    telemetry: std::sync::Arc<Telemetry>,
    collector: OtlpReceiver,
    openai: MockServer,
    anthropic: MockServer,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let openai = mock(&["sk-test-openai-1", "sk-test-openai-2"]).await;
    let anthropic = mock(&["sk-ant-test-1"]).await;
    let collector = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Telemetry::start(TelemetryConfig {
        data_dir: dir.path().to_path_buf(),
        otlp_endpoint: Some(collector.endpoint()),
        service_name: "gateway-e2e".to_owned(),
        ..TelemetryConfig::default()
    })
    .unwrap();
    let ext = Extensions {
        observer: telemetry.observer(),
        metrics: Some(telemetry.metrics_renderer()),
        admin: Some(telemetry.admin_routes()),
        ..Default::default()
    };
    let gw = TestGateway::start_with(&config(&openai, &anthropic), ext, None).await;
    telemetry.attach_engine(gw.gateway.engine());
    Setup {
        gw,
        telemetry,
        collector,
        openai,
        anthropic,
        _dir: dir,
    }
}

fn assert_no_secret(text: &str) {
    for secret in ["sk-test-openai-1", "sk-test-openai-2", "sk-ant-test-1"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[tokio::test]
async fn metrics_logs_and_traces_of_a_scripted_run() {
    let Setup {
        gw,
        telemetry,
        collector,
        openai: o,
        anthropic: a,
        _dir,
    } = setup().await;

    // 1. Key k1 answers 429 and rests; k2 serves all ten requests.
    o.set_key_faults(
        "sk-test-openai-1",
        Faults {
            rate_limit_always: true,
            retry_after_ms: Some(30_000),
            ..Faults::default()
        },
    );
    for _ in 0..10 {
        let r = gw
            .post("/v1/chat/completions", &chat("oai/gpt-4o-mini", "hi"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(o.requests_for_key("sk-test-openai-1"), 1);
    assert_eq!(o.requests_for_key("sk-test-openai-2"), 10);

    // 2. The whole provider fails: the route falls over to Anthropic. The client sends a
    //    traceparent, so this request's spans continue its trace.
    o.set_faults(Faults {
        error_rate: 1.0,
        error_status: Some(500),
        ..Faults::default()
    });
    o.clear_key_faults("sk-test-openai-1");
    let before_o = o.requests();
    let r = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
            ],
            serde_json::to_vec(&chat("chat", "hi")).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-gateway-provider"), Some("ant"));
    let oai_500s = o.requests() - before_o;
    assert!(oai_500s >= 1);
    let upstream_traceparent = a
        .last_request()
        .unwrap()
        .header("traceparent")
        .unwrap()
        .to_owned();

    // 3. A stream straight to Anthropic (time to first token).
    let mut body = chat("ant/claude-3-5-haiku-latest", "stream please");
    body["stream"] = json!(true);
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("[DONE]"));

    // Metrics, scraped over HTTP.
    let m = gw.get("/metrics", &[]).await;
    assert_eq!(m.status, 200);
    let text = m.text();
    assert_no_secret(&text);
    let s = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
    let up = |p: &str, k: &str, model: &str, outcome: &str| {
        s(
            "gateway_upstream_requests_total",
            &[
                ("provider", p),
                ("key", k),
                ("model", model),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(
        up("oai", "k1", "gpt-4o-mini", "rate_limited"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(up("oai", "k2", "gpt-4o-mini", "ok"), Some(10.0), "{text}");
    let oai_server_errors = up("oai", "k1", "gpt-4o-mini", "server_error").unwrap_or(0.0)
        + up("oai", "k2", "gpt-4o-mini", "server_error").unwrap_or(0.0);
    assert_eq!(
        oai_server_errors, oai_500s as f64,
        "one count per 500 the mock sent: {text}"
    );
    assert_eq!(
        up("ant", "main", "claude-3-5-haiku-latest", "ok"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        s(
            "gateway_fallbacks_total",
            &[("from_provider", "oai"), ("to_provider", "ant")]
        ),
        Some(1.0),
        "{text}"
    );
    let requests = |route: &str, model: &str| {
        s(
            "gateway_requests_total",
            &[
                ("route", route),
                ("model", model),
                ("status", "200"),
                ("virtual_key", "none"),
            ],
        )
    };
    assert_eq!(requests("none", "oai/gpt-4o-mini"), Some(10.0), "{text}");
    assert_eq!(requests("chat", "chat"), Some(1.0), "{text}");
    assert_eq!(
        s(
            "gateway_time_to_first_token_seconds_count",
            &[("provider", "ant"), ("model", "claude-3-5-haiku-latest")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        s(
            "gateway_upstream_duration_seconds_count",
            &[("provider", "oai"), ("model", "gpt-4o-mini")]
        ),
        Some(11.0 + oai_500s as f64)
    );
    // Key state from the engine's health: k1 rests after its 429, ant's key is available.
    assert_eq!(
        s("gateway_key_state", &[("provider", "oai"), ("key", "k1")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        s("gateway_key_state", &[("provider", "ant"), ("key", "main")]),
        Some(1.0)
    );
    assert!(
        s(
            "gateway_key_cooldown_seconds",
            &[("provider", "oai"), ("key", "k1")]
        )
        .unwrap()
            > 20.0,
        "{text}"
    );
    assert!(text.contains("gateway_tokens_total{"), "{text}");
    assert_eq!(s("gateway_log_dropped_total", &[]), Some(0.0));

    // The log API: every request, newest first, with attempts, never a secret.
    telemetry.flush().await;
    let logs = gw.get("/admin/logs?limit=1000", &[ADMIN]).await;
    assert_eq!(logs.status, 200, "{}", logs.text());
    assert_no_secret(&logs.text());
    let v = logs.json();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 12, "{v}");
    assert!(
        data.iter().all(|e| e.get("content").is_none()),
        "no content without [logging] content = true"
    );
    assert_eq!(data[0]["stream"], true);
    assert_eq!(data[0]["provider"], "ant");
    let fallback = &data[1];
    assert_eq!(fallback["route"], "chat");
    assert_eq!(fallback["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let attempts = fallback["attempts"].as_array().unwrap();
    assert_eq!(attempts.len() as u64, oai_500s + 1, "{fallback}");
    assert_eq!(attempts.last().unwrap()["fallback_from"], "oai");
    assert!(attempts[..attempts.len() - 1]
        .iter()
        .all(|a| a["outcome"] == "server_error" && a["status"] == 500));
    let first_phase: Vec<&Value> = data[2..].iter().collect();
    let with_429: Vec<&&Value> = first_phase
        .iter()
        .filter(|e| e["attempts"].as_array().unwrap().len() == 2)
        .collect();
    assert_eq!(with_429.len(), 1, "exactly one request met k1's 429");
    assert_eq!(with_429[0]["attempts"][0]["key"], "k1");
    assert_eq!(with_429[0]["attempts"][0]["outcome"], "rate_limited");
    assert_eq!(with_429[0]["attempts"][0]["status"], 429);
    assert!(first_phase
        .iter()
        .all(|e| e["status"] == 200 && e["tokens"]["prompt"].as_u64().unwrap() > 0));
    let filtered = gw
        .get("/admin/logs?provider=ant&status=2xx", &[ADMIN])
        .await
        .json();
    assert_eq!(filtered["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        gw.get("/admin/logs", &[]).await.status,
        401,
        "admin token required"
    );

    // Stats per provider and key.
    let st = gw.get("/admin/stats?window=1h", &[ADMIN]).await.json();
    assert_eq!(st["requests"]["requests"], 12, "{st}");
    assert_eq!(st["requests"]["with_fallback"], 1);
    let oai = st["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "oai")
        .unwrap();
    assert_eq!(oai["requests"].as_u64().unwrap(), 11 + oai_500s, "{oai}");
    assert_eq!(oai["rate_limited"], 1);
    assert_eq!(oai["fallbacks_out"], 1);
    let k1 = oai["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "k1")
        .unwrap();
    assert_eq!(k1["rate_limited"], 1);
    assert!(oai["latency"]["p99_ms"].as_f64().unwrap() > 0.0);

    // Traces: the fallback request's span continues the client's trace, and its attempt spans
    // carry exactly the ids the gateway sent upstream.
    let want = 12 + 11 + oai_500s as usize + 2;
    let spans = collector.wait_for(want, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), want, "one span per request and per attempt");
    let trace: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736")
        .collect();
    assert_eq!(trace.len() as u64, 1 + oai_500s + 1, "{trace:#?}");
    let root = trace.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(root.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(root.service_name.as_deref(), Some("gateway-e2e"));
    assert_eq!(root.attr_str("gateway.route"), Some("chat"));
    assert_eq!(root.attr_str("gen_ai.system"), Some("anthropic"));
    assert_eq!(
        root.span_id,
        fallback["span_id"].as_str().unwrap(),
        "the log and the trace name the same span"
    );
    let upstream_span = upstream_traceparent.split('-').nth(2).unwrap();
    let served = trace
        .iter()
        .find(|s| s.span_id == upstream_span)
        .unwrap_or_else(|| panic!("no span {upstream_span} in {trace:#?}"));
    assert_eq!(served.parent_span_id, root.span_id);
    assert_eq!(served.kind, 3);
    assert_eq!(served.attr_str("gateway.provider"), Some("ant"));
    assert_eq!(served.attr_str("gateway.key"), Some("main"));
    assert_eq!(
        served.attr_str("gen_ai.request.model"),
        Some("claude-3-5-haiku-latest")
    );
    assert!(served.attr_i64("gen_ai.usage.output_tokens").unwrap() > 0);
    let failed: Vec<_> = trace
        .iter()
        .filter(|s| s.kind == 3 && s.status_code == 2)
        .collect();
    assert_eq!(failed.len() as u64, oai_500s);
    assert!(failed
        .iter()
        .all(|s| s.attr_i64("http.response.status_code") == Some(500)
            && s.attr_str("gateway.provider") == Some("oai")
            && s.parent_span_id == root.span_id));
    assert_no_secret(&format!("{spans:?}"));
    gw.stop().await;
}

#[tokio::test]
async fn content_logging_keeps_prompts_and_answers_scrubbed() {
    let openai = mock(&["sk-test-openai-1", "sk-test-openai-2"]).await;
    let anthropic = mock(&["sk-ant-test-1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Telemetry::start(TelemetryConfig {
        data_dir: dir.path().to_path_buf(),
        log_content: true,
        ..TelemetryConfig::default()
    })
    .unwrap();
    let ext = Extensions {
        observer: telemetry.observer(),
        admin: Some(telemetry.admin_routes()),
        ..Default::default()
    };
    let toml =
        config(&openai, &anthropic).replace("[server]", "[logging]\ncontent = true\n\n[server]");
    let gw = TestGateway::start_with(&toml, ext, None).await;

    let secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
    let r = gw
        .post(
            "/v1/chat/completions",
            &chat("chat", &format!("plain prompt {secret}")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut body = chat("chat", "streamed prompt");
    body["stream"] = json!(true);
    let s = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(s.status, 200, "{}", s.text());
    let m = gw
        .post(
            "/v1/messages",
            &messages("ant/claude-3-5-haiku-latest", "anthropic prompt"),
        )
        .await;
    assert_eq!(m.status, 200, "{}", m.text());

    telemetry.flush().await;
    let logs = gw.get("/admin/logs?limit=10", &[ADMIN]).await;
    assert_eq!(logs.status, 200, "{}", logs.text());
    assert!(
        !logs.text().contains(secret),
        "a secret in a prompt is scrubbed"
    );
    let v = logs.json();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{v}");
    let (messages_log, stream_log, plain_log) = (&data[0], &data[1], &data[2]);

    let request = plain_log["content"]["request"].as_str().unwrap();
    assert!(request.contains("plain prompt sk-"), "{request}");
    let response = plain_log["content"]["response"].as_str().unwrap();
    assert!(response.contains(&answer), "{response}");

    assert_eq!(stream_log["stream"], true);
    assert!(stream_log["content"]["request"]
        .as_str()
        .unwrap()
        .contains("streamed prompt"));
    let streamed = stream_log["content"]["response"].as_str().unwrap();
    assert!(
        streamed.starts_with("data: "),
        "the stream as sent: {streamed}"
    );
    assert!(streamed.trim_end().ends_with("data: [DONE]"), "{streamed}");

    assert_eq!(messages_log["endpoint"], "messages");
    assert!(messages_log["content"]["request"]
        .as_str()
        .unwrap()
        .contains("anthropic prompt"));
    assert!(messages_log["content"]["response"]
        .as_str()
        .unwrap()
        .contains("\"type\":\"message\""));
    gw.stop().await;
}

/// Every client request has its record and its count, the ones refused for their body too.
#[tokio::test]
async fn bad_bodies_are_logged_and_counted() {
    let s = setup().await;
    let gw = &s.gw;
    let headers = [("content-type", "application/json")];
    let r = gw
        .request("POST", "/v1/chat/completions", &headers, "{not json")
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let big = format!(r#"{{"model":"chat","input":"{}"}}"#, "x".repeat(11 << 20));
    let r = gw.request("POST", "/v1/embeddings", &headers, big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let r = gw
        .request("POST", "/v1/messages", &headers, r#"{"model":"chat"}"#)
        .await;
    assert_eq!(r.status, 400, "{}", r.text());

    let logs = gw.get("/admin/logs?status=4xx", &[ADMIN]).await.json();
    let got: Vec<(String, u64)> = logs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["endpoint"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("messages".to_owned(), 400),
            ("embeddings".to_owned(), 413),
            ("chat".to_owned(), 400)
        ],
        "{logs}"
    );
    let metrics = gw.get("/metrics", &[]).await.text();
    for status in ["400", "413"] {
        let line = format!("gateway_requests_total{{route=\"none\",model=\"other\",status=\"{status}\",virtual_key=\"none\"}}");
        assert!(metrics.contains(&line), "{line} missing in:\n{metrics}");
    }
    s.gw.stop().await;
}

/// A client that leaves before its answer (or its stream's first chunk) still has its record
/// (status 499), its request count and its cancelled attempt (`client_error`).
#[tokio::test]
async fn clients_that_leave_before_the_answer_are_logged_and_counted() {
    let s = setup().await;
    let gw = &s.gw;
    s.openai.set_latency(Duration::from_millis(1500));
    s.openai.set_ttft(Duration::from_millis(1500));
    for stream in [false, true] {
        let mut body = chat("oai/gpt-4o-mini", "leaving");
        body["stream"] = json!(stream);
        let tcp = gw.open_post("/v1/chat/completions", &[], &body).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(tcp);
    }
    // One that leaves half-way through sending its body.
    let tcp = gw
        .send_raw(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"model\":")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.telemetry.flush().await;
    let logs = gw.get("/admin/logs?status=499", &[ADMIN]).await.json();
    let data = logs["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{logs}");
    let unread: Vec<_> = data
        .iter()
        .filter(|e| e["error"] == "client disconnected before its request was read")
        .collect();
    assert_eq!(unread.len(), 1, "{logs}");
    assert_eq!(unread[0]["endpoint"], "chat", "{logs}");
    for e in data.iter().filter(|e| e["error"] != unread[0]["error"]) {
        assert_eq!(e["error"], "client disconnected before the answer", "{e}");
        assert_eq!(e["requested_model"], "oai/gpt-4o-mini", "{e}");
    }
    let metrics = gw.get("/metrics", &[]).await.text();
    let sum = |metric: &str, label: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(metric) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        sum("gateway_requests_total{", "status=\"499\""),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        sum(
            "gateway_upstream_requests_total{",
            "outcome=\"client_error\""
        ),
        2.0,
        "{metrics}"
    );
    s.gw.stop().await;
}
