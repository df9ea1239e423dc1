//! Governance through the real server: virtual keys in both header styles, refusals in each
//! dialect's shape, spend settled from real usage, admin-made keys, all with the gateway's own
//! Services (embedded SQLite in a temporary data_dir).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use gateway_mock::MockUpstream;
use gateway_server::{Config, Services};
use gateway_tests::{chat, messages, stand_in_upstream, TestGateway};
use serde_json::json;

async fn start(extra: &str) -> (TestGateway, Services, std::path::PathBuf) {
    let m = MockUpstream::new().start().await.unwrap();
    let started = start_on(&m.openai_base(), extra).await;
    // Keep the mock alive as long as the test: leak its handle into the gateway's lifetime.
    std::mem::forget(m);
    started
}

/// A gateway with governance and telemetry whose provider `oai` is the OpenAI API at `base`.
async fn start_on(base: &str, extra: &str) -> (TestGateway, Services, std::path::PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("gw-gov-{}-{}", std::process::id(), fastrand_name()));
    let toml = format!(
        r#"
[server]
admin_token = "adm"
data_dir = "{}"
[[providers]]
name = "oai"
kind = "openai"
base_url = "{}"
models = ["gpt-4o-mini"]
[[providers.keys]]
name = "k"
secret = "sk-upstream-secret"
{extra}
"#,
        dir.display(),
        base
    )
    .replace("{OAI_BASE}", base);
    let config = Config::from_toml(&toml).unwrap();
    let services = Services::start(&config).await.unwrap();
    let gw = TestGateway::start_with(&toml, services.extensions(), None).await;
    services.attach(&gw.gateway);
    (gw, services, dir)
}

fn fastrand_name() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

const KEYS: &str = r#"
[[virtual_keys]]
name = "team-a-app"
secret = "vk-team-a-0123456789"
team = "a"
models = ["oai/gpt-4o-mini", "gpt-4o-mini"]
[[virtual_keys]]
name = "tiny-budget"
secret = "vk-tiny-0123456789"
budget_usd = 0.000001
budget_period = "1d"
[[virtual_keys]]
name = "slow"
secret = "vk-slow-0123456789"
rpm = 2
[[teams]]
name = "a"
"#;

#[tokio::test]
async fn virtual_keys_are_required_and_refusals_have_each_dialects_shape() {
    let (gw, services, dir) = start(KEYS).await;
    // No key, wrong key: 401 in both shapes.
    let r = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            serde_json::to_vec(&chat("oai/gpt-4o-mini", "hi")).unwrap(),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    assert_eq!(
        r.header("x-gateway-attempts"),
        Some("0"),
        "refused before any upstream"
    );
    let r = gw
        .request(
            "POST",
            "/v1/messages",
            &[
                ("content-type", "application/json"),
                ("x-api-key", "vk-wrong"),
                ("anthropic-version", "2023-06-01"),
            ],
            serde_json::to_vec(&messages("oai/gpt-4o-mini", "hi")).unwrap(),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "authentication_error");

    // A valid key, both header styles; the provider sees its own key, never the virtual one.
    let ok = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer vk-team-a-0123456789"),
            ],
            serde_json::to_vec(&chat("oai/gpt-4o-mini", "hi")).unwrap(),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let ok = gw
        .request(
            "POST",
            "/v1/messages",
            &[
                ("content-type", "application/json"),
                ("x-api-key", "vk-team-a-0123456789"),
                ("anthropic-version", "2023-06-01"),
            ],
            serde_json::to_vec(&messages("gpt-4o-mini", "hi")).unwrap(),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    // Listing models needs a key too.
    assert_eq!(gw.get("/v1/models", &[]).await.status, 401);
    assert_eq!(
        gw.get(
            "/v1/models",
            &[("authorization", "Bearer vk-team-a-0123456789")]
        )
        .await
        .status,
        200
    );

    // Model allow-list: 403.
    let r = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer vk-team-a-0123456789"),
            ],
            serde_json::to_vec(&chat("oai/other-model", "hi")).unwrap(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // A fallback named in the body passes the same allow-list.
    let mut with_fallback = chat("oai/gpt-4o-mini", "hi");
    with_fallback["fallbacks"] = json!(["oai/other-model"]);
    let r = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer vk-team-a-0123456789"),
            ],
            serde_json::to_vec(&with_fallback).unwrap(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("fallback 'oai/other-model'"),
        "{}",
        r.text()
    );
    with_fallback["fallbacks"] = json!(["gpt-4o-mini"]);
    let r = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer vk-team-a-0123456789"),
            ],
            serde_json::to_vec(&with_fallback).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "an allowed fallback: {}", r.text());

    // rpm: the third request in a minute is refused with retry-after.
    let slow = [
        ("content-type", "application/json"),
        ("authorization", "Bearer vk-slow-0123456789"),
    ];
    let body = serde_json::to_vec(&chat("oai/gpt-4o-mini", "hi")).unwrap();
    assert_eq!(
        gw.request("POST", "/v1/chat/completions", &slow, body.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        gw.request("POST", "/v1/chat/completions", &slow, body.clone())
            .await
            .status,
        200
    );
    let r = gw
        .request("POST", "/v1/chat/completions", &slow, body.clone())
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());

    // Budget: the first request is admitted (the budget is not spent, though its estimate is
    // larger than what is left) and spends more than the budget; the next is refused with 402.
    let tiny = [
        ("content-type", "application/json"),
        ("authorization", "Bearer vk-tiny-0123456789"),
    ];
    let first = gw
        .request("POST", "/v1/chat/completions", &tiny, body.clone())
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let refused = gw
        .request("POST", "/v1/chat/completions", &tiny, body.clone())
        .await;
    assert_eq!(refused.status, 402, "{}", refused.text());
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("is spent") && m.contains("resets at")),
        "{}",
        refused.text()
    );
    assert_eq!(refused.json()["error"]["type"], "budget_exceeded");
    assert_eq!(refused.header("x-should-retry"), Some("false"));

    // Refusals are counted under the key that was refused, by reason.
    let metrics = gw.get("/metrics", &[]).await.text();
    for (key, reason) in [
        ("slow", "rate_limited"),
        ("tiny-budget", "budget_exceeded"),
        ("team-a-app", "forbidden"),
        ("none", "unauthorized"),
    ] {
        let line = format!(
            "gateway_virtual_key_rejections_total{{virtual_key=\"{key}\",reason=\"{reason}\"}}"
        );
        assert!(metrics.contains(&line), "{line} missing in:\n{metrics}");
    }
    // ... and the requests themselves under the model they asked for.
    let refused_request = "gateway_requests_total{route=\"none\",model=\"oai/gpt-4o-mini\",status=\"429\",virtual_key=\"slow\"} 1";
    assert!(
        metrics.contains(refused_request),
        "{refused_request} missing in:\n{metrics}"
    );

    services.shutdown().await;
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A route spanning two providers, and keys allowed only one of them (directly or through
/// their team).
const PINNED: &str = r#"
[[providers]]
name = "oai2"
kind = "openai"
base_url = "{OAI_BASE}"
models = ["gpt-4o-mini"]
[[providers.keys]]
name = "k2"
secret = "sk-upstream-secret-2"

[[routes]]
name = "both"
strategy = "round_robin"
targets = [{ provider = "oai", model = "gpt-4o-mini" }, { provider = "oai2", model = "gpt-4o-mini" }]

[[virtual_keys]]
name = "pinned"
secret = "vk-pinned-0123456789"
providers = ["OAI2"]
[[virtual_keys]]
name = "member"
secret = "vk-member-0123456789"
team = "t"
[[virtual_keys]]
name = "open"
secret = "vk-open-0123456789"
[[virtual_keys]]
name = "chat-only"
secret = "vk-chat-only-0123456789"
models = ["both"]
[[teams]]
name = "t"
providers = ["oai"]
"#;

#[tokio::test]
async fn a_provider_allow_list_decides_which_targets_serve() {
    let (gw, services, dir) = start(PINNED).await;
    let served = |vk: &'static str, path: &'static str| {
        let gw = &gw;
        async move {
            let mut by = Vec::new();
            for _ in 0..6 {
                let (headers, body) = if path == "/v1/messages" {
                    (
                        [("content-type", "application/json"), ("x-api-key", vk)],
                        messages("both", "hi"),
                    )
                } else {
                    (
                        [("content-type", "application/json"), ("x-api-key", vk)],
                        chat("both", "hi"),
                    )
                };
                let r = gw
                    .request("POST", path, &headers, serde_json::to_vec(&body).unwrap())
                    .await;
                assert_eq!(r.status, 200, "{vk} {path}: {}", r.text());
                by.push(r.header("x-gateway-provider").unwrap().to_owned());
            }
            by
        }
    };
    // Without a list the round robin uses both providers...
    let open = served("vk-open-0123456789", "/v1/chat/completions").await;
    assert!(
        open.iter().any(|p| p == "oai") && open.iter().any(|p| p == "oai2"),
        "{open:?}"
    );
    // ...with one, only the allowed provider serves, through either API (the key's list is
    // matched without regard to case).
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let pinned = served("vk-pinned-0123456789", path).await;
        assert!(pinned.iter().all(|p| p == "oai2"), "{path}: {pinned:?}");
        let member = served("vk-member-0123456789", path).await;
        assert!(member.iter().all(|p| p == "oai"), "{path}: {member:?}");
    }

    // Listing models shows what the key may use.
    let ids = |vk: &'static str| {
        let gw = &gw;
        async move {
            let r = gw
                .get("/v1/models", &[("authorization", &format!("Bearer {vk}"))])
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let mut ids: Vec<String> = r.json()["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(ids("vk-chat-only-0123456789").await, ["both"]);
    assert_eq!(
        ids("vk-pinned-0123456789").await,
        ["both", "oai2/gpt-4o-mini"]
    );
    assert_eq!(
        ids("vk-open-0123456789").await,
        ["both", "oai/gpt-4o-mini", "oai2/gpt-4o-mini"]
    );
    let one = |vk: &'static str| {
        let gw = &gw;
        async move {
            gw.get(
                "/v1/models/oai/gpt-4o-mini",
                &[("authorization", &format!("Bearer {vk}"))],
            )
            .await
            .status
        }
    };
    assert_eq!(one("vk-open-0123456789").await, 200);
    assert_eq!(one("vk-pinned-0123456789").await, 404);

    // Counting tokens honours both allow-lists.
    let count = |vk: &'static str, model: &'static str| {
        let gw = &gw;
        async move {
            gw.request(
                "POST",
                "/v1/messages/count_tokens",
                &[
                    ("content-type", "application/json"),
                    ("x-api-key", vk),
                    ("anthropic-version", "2023-06-01"),
                ],
                serde_json::to_vec(&json!({
                    "model": model,
                    "messages": [{"role": "user", "content": "hi"}]
                }))
                .unwrap(),
            )
            .await
        }
    };
    let ok = count("vk-chat-only-0123456789", "both").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.json()["input_tokens"].as_u64().unwrap() > 0);
    let r = count("vk-chat-only-0123456789", "oai/gpt-4o-mini").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "permission_error");
    let r = count("vk-pinned-0123456789", "oai/gpt-4o-mini").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("no provider allowed"), "{}", r.text());
    assert_eq!(count("vk-pinned-0123456789", "both").await.status, 200);
    assert_eq!(count("vk-nobody-0123456789", "both").await.status, 401);

    drop(services);
    let _ = std::fs::remove_dir_all(dir);
}

/// A stored response is reachable only with the virtual key that asked for it.
#[tokio::test]
async fn a_stored_response_belongs_to_its_virtual_key() {
    let (gw, services, dir) = start(PINNED).await;
    let auth = |vk: &'static str| [("authorization", format!("Bearer {vk}"))];
    let r = gw
        .request(
            "POST",
            "/v1/responses",
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer vk-open-0123456789"),
            ],
            serde_json::to_vec(&json!({"model": "oai/gpt-4o-mini", "input": "hi"})).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/responses/{id}");
    let get = |vk: &'static str| {
        let (gw, path) = (&gw, &path);
        async move {
            let h = auth(vk);
            gw.get(path, &[(h[0].0, h[0].1.as_str())]).await.status
        }
    };
    assert_eq!(get("vk-open-0123456789").await, 200);
    assert_eq!(
        get("vk-member-0123456789").await,
        404,
        "another key's response"
    );
    assert_eq!(gw.get(&path, &[]).await.status, 401);
    drop(services);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn admin_made_keys_work_and_show_usage() {
    let (gw, services, dir) = start(KEYS).await;
    let auth = [
        ("authorization", "Bearer adm"),
        ("content-type", "application/json"),
    ];
    let r = gw
        .request(
            "POST",
            "/admin/virtual-keys",
            &auth,
            serde_json::to_vec(&json!({"name": "made", "rpm": 100})).unwrap(),
        )
        .await;
    assert!(matches!(r.status, 200 | 201), "{}", r.text());
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {secret}");
    let h = [
        ("content-type", "application/json"),
        ("authorization", bearer.as_str()),
    ];
    let ok = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &h,
            serde_json::to_vec(&chat("oai/gpt-4o-mini", "hi")).unwrap(),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let usage = gw.get("/admin/virtual-keys/made", &auth).await;
    assert_eq!(usage.status, 200, "{}", usage.text());
    assert!(
        !usage.text().contains(&secret),
        "the secret is shown only once"
    );
    let spent = usage.json()["spend_usd"].as_f64();
    assert!(spent.is_some_and(|usd| usd > 0.0), "{}", usage.text());
    assert_eq!(usage.json()["usage"]["spend_usd"].as_f64(), spent);
    assert_eq!(usage.json()["requests_this_minute"], 1, "{}", usage.text());
    let list = gw.get("/admin/virtual-keys", &auth).await;
    assert!(
        !list.text().contains("vk-team-a-0123456789"),
        "{}",
        list.text()
    );
    // Metrics and logs see the virtual key's name.
    // No flush here: the log API reads its own writes.
    let logs = gw.get("/admin/logs?virtual_key=made", &auth).await;
    assert_eq!(logs.status, 200, "{}", logs.text());
    assert_eq!(
        logs.json()["data"].as_array().unwrap().len(),
        1,
        "{}",
        logs.text()
    );
    let metrics = gw.get("/metrics", &[]).await.text();
    assert!(metrics.contains("gateway_requests_total"), "{metrics}");
    assert!(!metrics.contains("sk-upstream-secret"));
    services.shutdown().await;
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn two_gateways_on_one_redis_share_a_keys_rpm_exactly() {
    let Some(redis) = gateway_tests::start_redis().await else {
        return;
    };
    let m = MockUpstream::new().start().await.unwrap();
    let mut gateways = Vec::new();
    let mut services = Vec::new();
    for i in 0..2 {
        let dir = std::env::temp_dir().join(format!(
            "gw-redis-{}-{i}-{}",
            std::process::id(),
            fastrand_name()
        ));
        let toml = format!(
            r#"
[server]
data_dir = "{}"
[governance]
store = "{}"
[[providers]]
name = "oai"
kind = "openai"
base_url = "{}"
[[providers.keys]]
name = "k"
secret = "sk-upstream"
[[virtual_keys]]
name = "shared"
secret = "vk-shared-0123456789"
rpm = 10
"#,
            dir.display(),
            redis.url,
            m.openai_base()
        );
        let config = Config::from_toml(&toml).unwrap();
        let s = Services::start(&config).await.unwrap();
        gateways.push(std::sync::Arc::new(
            TestGateway::start_with(&toml, s.extensions(), None).await,
        ));
        services.push(s);
    }
    let mut tasks = Vec::new();
    for i in 0..30 {
        let gw = std::sync::Arc::clone(&gateways[i % 2]);
        tasks.push(tokio::spawn(async move {
            gw.request(
                "POST",
                "/v1/chat/completions",
                &[
                    ("content-type", "application/json"),
                    ("authorization", "Bearer vk-shared-0123456789"),
                ],
                serde_json::to_vec(&chat("oai/gpt-4o-mini", "hi")).unwrap(),
            )
            .await
            .status
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        (ok, limited),
        (10, 20),
        "rpm 10 holds across both instances together"
    );
    for s in &services {
        s.shutdown().await;
    }
}

/// An OpenAI-compatible upstream that never reports usage, streamed or not (some servers ignore
/// `stream_options.include_usage`).
async fn usage_less_upstream() -> String {
    stand_in_upstream(|_, body| {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        if v["stream"] == true {
            let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
                format!(
                    "data: {}\n\n",
                    json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                )
            };
            let mut sse = String::new();
            for _ in 0..20 {
                sse += &chunk(json!({"content": "word "}), json!(null));
            }
            sse += &chunk(json!({}), json!("stop"));
            sse += "data: [DONE]\n\n";
            (200, "text/event-stream", sse)
        } else {
            let text = "x".repeat(400);
            let body = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]});
            (200, "application/json", body.to_string())
        }
    })
    .await
}

/// A provider that reports no usage is charged an estimate: budgets move, streams included.
#[tokio::test]
async fn answers_without_usage_are_charged_an_estimate() {
    let base = usage_less_upstream().await;
    let dir = std::env::temp_dir().join(format!(
        "gw-gov-nousage-{}-{}",
        std::process::id(),
        fastrand_name()
    ));
    let toml = format!(
        r#"
[server]
admin_token = "adm"
data_dir = "{}"
[[providers]]
name = "raw"
kind = "openai"
base_url = "{base}"
[[providers.keys]]
name = "k"
secret = "sk-raw-0123456789"
[[virtual_keys]]
name = "metered"
secret = "vk-metered-0123456789"
budget_usd = 10.0
"#,
        dir.display()
    );
    let config = Config::from_toml(&toml).unwrap();
    let services = Services::start(&config).await.unwrap();
    let gw = TestGateway::start_with(&toml, services.extensions(), None).await;
    services.attach(&gw.gateway);
    let h = [
        ("content-type", "application/json"),
        ("authorization", "Bearer vk-metered-0123456789"),
    ];
    let spend = |v: serde_json::Value| v["spend_usd"].as_f64().unwrap();
    let admin = [("authorization", "Bearer adm")];
    let r = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &h,
            serde_json::to_vec(&chat("raw/gpt-4o-mini", "hi")).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let after_plain = spend(gw.get("/admin/virtual-keys/metered", &admin).await.json());
    // 400 characters of answer, about 100 tokens at $0.60 per million.
    assert!(after_plain >= 100.0 * 0.6e-6, "{after_plain}");
    let mut body = chat("raw/gpt-4o-mini", "hi");
    body["stream"] = json!(true);
    let r = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &h,
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let after_stream = spend(gw.get("/admin/virtual-keys/metered", &admin).await.json());
    // 21 events, about a token each.
    assert!(
        after_stream - after_plain >= 20.0 * 0.6e-6,
        "{after_plain} -> {after_stream}"
    );
    services.shutdown().await;
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A stream the client leaves before its usage chunk is charged for what it carried, about a
/// token an event, not for its input alone (a client that closes just before the end must not
/// get the answer for the price of the question).
#[tokio::test]
async fn a_stream_the_client_leaves_is_charged_for_what_it_carried() {
    use tokio::io::AsyncReadExt;
    let words: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
    let m = MockUpstream::new()
        .reply(words.join(" "))
        .chunk_delay(std::time::Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    let (gw, services, dir) = start_on(
        &m.openai_base(),
        r#"
[[virtual_keys]]
name = "metered"
secret = "vk-metered-0123456789"
budget_usd = 10.0
"#,
    )
    .await;
    let mut body = chat("oai/gpt-4o-mini", "hi");
    body["stream"] = json!(true);
    let mut tcp = gw
        .open_post(
            "/v1/chat/completions",
            &["authorization: Bearer vk-metered-0123456789"],
            &body,
        )
        .await;
    // Read until about 150 events have come, then leave.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(5).filter(|w| w == b"data:").count() < 150 {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(tcp);
    let admin = [("authorization", "Bearer adm")];
    let mut spend = 0.0;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        spend = gw.get("/admin/virtual-keys/metered", &admin).await.json()["spend_usd"]
            .as_f64()
            .unwrap();
        if spend > 0.0 {
            break;
        }
    }
    // At least the 150 events read, at about a token each, at $0.60 per million output tokens.
    assert!(spend >= 150.0 * 0.6e-6, "{spend}");
    services.shutdown().await;
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// `[cache]`: a repeated request is answered from the cache, the same bytes for a plain answer,
/// a stream and an embedding, without reaching the provider and without cost; each virtual key
/// has its own answers, a hit still counts against the key's request rate, `cache-control:
/// no-store` goes around it, a stream the client left is not kept, and the logs and metrics
/// say which requests were hits.
#[tokio::test]
async fn the_answer_cache_serves_repeats_per_virtual_key_for_free() {
    use tokio::io::AsyncReadExt;
    let m = MockUpstream::new().start().await.unwrap();
    let extra = format!("{KEYS}\n[cache]\nenabled = true\nttl_ms = 60000\n");
    let (gw, services, dir) = start_on(&m.openai_base(), &extra).await;
    let auth = [("authorization", "Bearer adm")];
    let post = |key: &'static str,
                path: &'static str,
                body: serde_json::Value,
                extra: &'static [(&'static str, &'static str)]| {
        let gw = &gw;
        async move {
            let bearer = format!("Bearer {key}");
            let mut h = vec![
                ("content-type", "application/json"),
                ("authorization", bearer.as_str()),
            ];
            h.extend_from_slice(extra);
            gw.request("POST", path, &h, serde_json::to_vec(&body).unwrap())
                .await
        }
    };
    const A: &str = "vk-team-a-0123456789";
    const SLOW: &str = "vk-slow-0123456789";
    let ask = chat("oai/gpt-4o-mini", "what is the capital of France?");

    // A plain answer: a miss, then a hit with the same bytes, one upstream request.
    let first = post(A, "/v1/chat/completions", ask.clone(), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-gateway-cache"), Some("miss"));
    assert!(
        first.header("x-gateway-cost-usd").is_some(),
        "{:?} {}",
        first.headers,
        first.text()
    );
    let upstream = m.requests();
    let second = post(A, "/v1/chat/completions", ask.clone(), &[]).await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.header("x-gateway-cache"), Some("hit"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("x-gateway-provider"), Some("oai"));
    assert_eq!(second.header("x-gateway-attempts"), Some("0"));
    assert_eq!(
        second.header("x-gateway-cost-usd"),
        None,
        "a hit costs nothing"
    );
    assert_eq!(m.requests(), upstream, "a hit does not reach the provider");

    // Another request, or the same one past `no-store`, goes upstream.
    let other = post(
        A,
        "/v1/chat/completions",
        chat("oai/gpt-4o-mini", "and of Spain?"),
        &[],
    )
    .await;
    assert_eq!(other.header("x-gateway-cache"), Some("miss"));
    let fresh = post(
        A,
        "/v1/chat/completions",
        ask.clone(),
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.header("x-gateway-cache"), None);
    assert_eq!(m.requests(), upstream + 2);

    // A stream: the second gets the first one's events, byte for byte.
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let s1 = post(A, "/v1/chat/completions", streamed.clone(), &[]).await;
    assert_eq!(s1.header("x-gateway-cache"), Some("miss"));
    assert!(s1.text().ends_with("data: [DONE]\n\n"), "{}", s1.text());
    let s2 = post(A, "/v1/chat/completions", streamed.clone(), &[]).await;
    assert_eq!(s2.header("x-gateway-cache"), Some("hit"));
    assert_eq!(s2.header("content-type"), Some("text/event-stream"));
    assert_eq!(s2.body, s1.body);
    assert_eq!(m.requests(), upstream + 3);

    // The Anthropic API and embeddings likewise.
    let msg = messages("oai/gpt-4o-mini", "hello there");
    let a1 = post(
        A,
        "/v1/messages",
        msg.clone(),
        &[("anthropic-version", "2023-06-01")],
    )
    .await;
    let a2 = post(
        A,
        "/v1/messages",
        msg.clone(),
        &[("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(a1.status, 200, "{}", a1.text());
    assert_eq!(
        (a1.header("x-gateway-cache"), a2.header("x-gateway-cache")),
        (Some("miss"), Some("hit"))
    );
    assert_eq!(a2.body, a1.body);
    assert_eq!(a2.json()["type"], "message");
    let emb = json!({"model": "oai/gpt-4o-mini", "input": ["a", "b"]});
    let e1 = post(A, "/v1/embeddings", emb.clone(), &[]).await;
    let e2 = post(A, "/v1/embeddings", emb.clone(), &[]).await;
    assert_eq!(e1.status, 200, "{}", e1.text());
    assert_eq!(e2.header("x-gateway-cache"), Some("hit"));
    assert_eq!(e2.body, e1.body);
    assert_eq!(m.requests(), upstream + 5);

    // Another virtual key does not get team A's answers; its own hits count against its
    // rate (2 a minute): the third request is refused even though it would be a hit.
    let b1 = post(SLOW, "/v1/chat/completions", ask.clone(), &[]).await;
    assert_eq!(b1.header("x-gateway-cache"), Some("miss"));
    assert_eq!(m.requests(), upstream + 6);
    let b2 = post(SLOW, "/v1/chat/completions", ask.clone(), &[]).await;
    assert_eq!(b2.header("x-gateway-cache"), Some("hit"));
    let b3 = post(SLOW, "/v1/chat/completions", ask.clone(), &[]).await;
    assert_eq!(b3.status, 429, "{}", b3.text());

    // A stream the client leaves is not kept: the same request later is a miss.
    m.set_chunk_delay(std::time::Duration::from_millis(30));
    let mut left = chat("oai/gpt-4o-mini", "one two three four five six seven eight");
    left["stream"] = json!(true);
    let mut tcp = gw
        .open_post(
            "/v1/chat/completions",
            &[&format!("authorization: Bearer {A}")],
            &left,
        )
        .await;
    let mut buf = [0u8; 512];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(n > 0);
    drop(tcp);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    m.set_chunk_delay(std::time::Duration::ZERO);
    let again = post(A, "/v1/chat/completions", left.clone(), &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.header("x-gateway-cache"),
        Some("miss"),
        "a cut stream was kept"
    );

    // Logs and metrics tell the hits; hits cost nothing.
    let logs = gw
        .get("/admin/logs?virtual_key=team-a-app&limit=100", &auth)
        .await;
    let rows = logs.json()["data"].as_array().unwrap().clone();
    let hits: Vec<_> = rows.iter().filter(|r| r["cache"] == "hit").collect();
    assert_eq!(hits.len(), 4, "{}", logs.text());
    assert!(hits
        .iter()
        .all(|r| r["cost_usd"] == 0.0 && r["attempts"].as_array().unwrap().is_empty()));
    assert!(rows
        .iter()
        .filter(|r| r["cache"] == "miss")
        .all(|r| r["cost_usd"].as_f64().unwrap() > 0.0));
    let metrics = gw.get("/metrics", &[]).await.text();
    assert!(
        metrics.contains("gateway_cache_requests_total{endpoint=\"chat\",result=\"hit\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_cache_requests_total{endpoint=\"embeddings\",result=\"hit\"} 1"),
        "{metrics}"
    );
    // The admin API tells what the cache holds and empties it.
    let held = gw.get("/admin/cache", &auth).await;
    assert_eq!(held.status, 200, "{}", held.text());
    let entries = held.json()["entries"].as_u64().unwrap();
    assert!(entries >= 6, "{}", held.text());
    assert!(held.json()["bytes"].as_u64().unwrap() > 0);
    assert_eq!(gw.get("/admin/cache", &[]).await.status, 401);
    let emptied = gw
        .request("DELETE", "/admin/cache", &auth, Vec::new())
        .await;
    assert_eq!(emptied.json()["removed"].as_u64(), Some(entries));
    let after = post(A, "/v1/chat/completions", ask.clone(), &[]).await;
    assert_eq!(after.header("x-gateway-cache"), Some("miss"));
    services.shutdown().await;
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The issue's reference configuration, as written: a key names team `data`, which has no
/// `[[teams]]` section. The gateway starts, the key works within its limits, and the team
/// groups it.
#[tokio::test]
async fn a_team_named_only_by_its_keys_is_a_team_without_limits() {
    let extra = r#"
[[routes]]
name = "chat"
targets = [{ provider = "oai", model = "gpt-4o-mini" }]

[[virtual_keys]]
name = "batch-pipeline"
secret = "vk-batch-0123456789"
team = "data"                 # optional; [[teams]] and [[customers]] carry their own limits
rpm = 60
tpm = 100000
budget_usd = 50.0
budget_period = "1d"
models = ["chat"]

[[pricing]]                   # overrides or extends the built-in price table
model = "gpt-4o-mini"
input_per_mtok = 0.15         # USD per million tokens
output_per_mtok = 0.60
"#;
    let (gw, services, dir) = start(extra).await;
    let ok = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer vk-batch-0123456789"),
            ],
            serde_json::to_vec(&chat("chat", "hi")).unwrap(),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // Its own allow-list still holds.
    let refused = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer vk-batch-0123456789"),
            ],
            serde_json::to_vec(&chat("oai/gpt-4o-mini", "hi")).unwrap(),
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    let key = gw
        .get(
            "/admin/virtual-keys/batch-pipeline",
            &[("authorization", "Bearer adm")],
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.text());
    assert_eq!(key.json()["team"], "data", "{}", key.text());
    assert!(
        key.json()["spend_usd"].as_f64().unwrap() > 0.0,
        "{}",
        key.text()
    );
    services.shutdown().await;
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
