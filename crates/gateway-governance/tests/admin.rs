//! The admin API: create, read, update, rotate, revoke; persistence and hashed storage.

mod common;

use std::sync::Arc;

use common::*;
use gateway_core::admission::Refusal;
use gateway_core::extend::AdminRoutes;
use gateway_governance::{Governance, GovernanceConfig, LimitsSpec};
use serde_json::Value;

async fn call(gov: &Arc<Governance>, method: &str, path: &str, body: &str) -> (u16, Value) {
    match gov.handle(method, path, "", body.as_bytes()).await {
        Some(answer) => answer,
        None => panic!("{method} {path} was not handled"),
    }
}

fn with_team(dir: &tempfile::TempDir) -> GovernanceConfig {
    GovernanceConfig {
        teams: vec![LimitsSpec {
            name: "ml".into(),
            rpm: Some(100),
            ..LimitsSpec::default()
        }],
        ..config(dir, vec![key("from-file")])
    }
}

#[tokio::test]
async fn create_use_update_rotate_and_revoke_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let gov = open(with_team(&dir), &c).await;

    let (status, v) = call(
        &gov,
        "POST",
        "/admin/virtual-keys",
        r#"{"name": "bob", "team": "ml", "rpm": 2, "budget_usd": 5, "budget_period": "1w"}"#,
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("vk-") && secret.len() == 35,
        "generated secret: {secret}"
    );

    let p = expect_ok(Req::new(Some(&secret)).admit(&gov).await, "new key works");
    assert_eq!(p.virtual_key(), Some("bob"));
    p.settle(&usage(100, 100), 0.25);

    let (status, v) = call(&gov, "GET", "/admin/virtual-keys", "").await;
    assert_eq!(status, 200);
    let text = v.to_string();
    assert!(
        !text.contains(&secret) && !text.contains("secret"),
        "lists never show secrets: {text}"
    );
    let names: Vec<&str> = v["virtual_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob", "from-file"]);

    let (status, v) = call(&gov, "GET", "/admin/virtual-keys/bob", "").await;
    assert_eq!(status, 200, "{v}");
    let u = &v["usage"];
    assert_eq!(u["spend_usd"], 0.25, "{v}");
    assert_eq!(u["budget_usd"], 5.0);
    assert_eq!(u["budget_period"], "1w");
    assert_eq!(
        u["period_start"], "2026-11-23T00:00:00Z",
        "ISO week starts on Monday"
    );
    assert_eq!(u["resets_at"], "2026-11-30T00:00:00Z");
    assert_eq!(u["requests_this_minute"], 1);
    assert_eq!(u["tokens_this_minute"], 200);
    assert_eq!(u["in_flight"], 0);
    assert_eq!(
        v["team_usage"]["rpm"], 100,
        "the team's usage is shown too: {v}"
    );
    assert_eq!(v["source"], "api");

    // PATCH merges; null removes a limit.
    let (status, v) = call(
        &gov,
        "PATCH",
        "/admin/virtual-keys/bob",
        r#"{"rpm": 1, "budget_usd": null, "budget_period": null}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rpm"], 1);
    assert_eq!(v["budget_usd"], Value::Null);
    assert_eq!(v["team"], "ml", "untouched fields stay");
    let r = expect_refused(
        Req::new(Some(&secret)).admit(&gov).await,
        "rpm lowered to 1, one already used",
    );
    assert!(matches!(r, Refusal::RateLimited { .. }), "{r:?}");
    let (status, v) = call(
        &gov,
        "PATCH",
        "/admin/virtual-keys/bob",
        r#"{"priority": "urgent"}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("virtual_key.priority"),
        "{v}"
    );
    let (status, _) = call(
        &gov,
        "PUT",
        "/admin/virtual-keys/bob",
        r#"{"team": "ml", "tpm": 1000}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (_, v) = call(&gov, "GET", "/admin/virtual-keys/bob", "").await;
    assert_eq!(
        (v["rpm"].clone(), v["tpm"].clone()),
        (Value::Null, Value::from(1000)),
        "PUT replaces: {v}"
    );

    // Rotate: the old secret stops working.
    let (status, v) = call(&gov, "POST", "/admin/virtual-keys/bob/rotate", "").await;
    assert_eq!(status, 200, "{v}");
    let rotated = v["secret"].as_str().unwrap().to_string();
    assert_ne!(rotated, secret);
    let r = expect_refused(
        Req::new(Some(&secret)).admit(&gov).await,
        "old secret after rotation",
    );
    assert!(matches!(r, Refusal::Unauthorized(_)), "{r:?}");
    expect_ok(Req::new(Some(&rotated)).admit(&gov).await, "new secret");

    // Revoke.
    let (status, _) = call(&gov, "DELETE", "/admin/virtual-keys/bob", "").await;
    assert_eq!(status, 200);
    let r = expect_refused(Req::new(Some(&rotated)).admit(&gov).await, "revoked key");
    assert!(matches!(r, Refusal::Unauthorized(_)), "{r:?}");
    let (status, _) = call(&gov, "GET", "/admin/virtual-keys/bob", "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn bad_requests_and_config_keys_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let gov = open(with_team(&dir), &clock()).await;
    let cases = [
        (
            r#"{"name": "x", "team": "nope"}"#,
            400,
            "virtual_key.team: unknown team",
        ),
        (
            r#"{"name": "x", "budget_period": "1d"}"#,
            400,
            "virtual_key.budget_period: set budget_usd",
        ),
        (r#"{"name": "x", "rmp": 3}"#, 400, "unknown field `rmp`"),
        (r#"{"name": "has space"}"#, 400, "virtual_key.name"),
        (r#"{"name": "from-file"}"#, 409, "already exists"),
        (r#"{"name": "x", "secret": ""}"#, 400, "virtual_key.secret"),
    ];
    for (body, status, message) in cases {
        let (got, v) = call(&gov, "POST", "/admin/virtual-keys", body).await;
        assert_eq!(got, status, "{body} -> {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(message),
            "{body} -> {v}"
        );
    }
    for (method, path) in [
        ("PATCH", "/admin/virtual-keys/from-file"),
        ("DELETE", "/admin/virtual-keys/from-file"),
        ("POST", "/admin/virtual-keys/from-file/rotate"),
    ] {
        let (status, v) = call(&gov, method, path, "{}").await;
        assert_eq!(status, 409, "{method} {path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("configuration file"),
            "{v}"
        );
    }
    assert!(
        gov.handle("GET", "/admin/config", "", b"").await.is_none(),
        "other admin paths are the server's"
    );
    let (status, v) = call(&gov, "GET", "/admin/teams/ml", "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["rpm"], 100);
    let (status, v) = call(&gov, "GET", "/admin/teams", "").await;
    assert_eq!(status, 200);
    assert_eq!(v["teams"][0]["name"], "ml");
    let (status, v) = call(&gov, "GET", "/admin/pricing", "").await;
    assert_eq!(status, 200);
    assert!(
        v["pricing"].as_array().unwrap().len() > 50,
        "built-in table"
    );
    let (status, v) = gov
        .handle(
            "GET",
            "/admin/pricing",
            "model=us.anthropic.claude-3-5-haiku-20241022-v1:0",
            b"",
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["price"]["output_per_mtok"], 4.0, "{v}");
}

#[tokio::test]
async fn api_keys_persist_across_restarts_and_only_their_hash_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let cfg = with_team(&dir);
    let gov = open(cfg.clone(), &c).await;
    let (_, v) = call(
        &gov,
        "POST",
        "/admin/virtual-keys",
        r#"{"name": "keep", "secret": "my-very-own-plaintext-secret", "budget_usd": 1}"#,
    )
    .await;
    assert_eq!(v["secret"], "my-very-own-plaintext-secret");
    let (_, v) = call(&gov, "POST", "/admin/virtual-keys", r#"{"name": "gone"}"#).await;
    let gone = v["secret"].as_str().unwrap().to_string();
    let (_, v) = call(&gov, "POST", "/admin/virtual-keys", r#"{"name": "turned"}"#).await;
    let turned_old = v["secret"].as_str().unwrap().to_string();
    let (_, v) = call(&gov, "POST", "/admin/virtual-keys/turned/rotate", "").await;
    let turned = v["secret"].as_str().unwrap().to_string();
    call(&gov, "DELETE", "/admin/virtual-keys/gone", "").await;
    expect_ok(
        Req::new(Some("my-very-own-plaintext-secret"))
            .admit(&gov)
            .await,
        "keep",
    )
    .settle(&usage(1, 1), 1.0);
    gov.flush().await.unwrap();

    // The database and its write-ahead log hold no plaintext secret.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        for s in ["my-very-own-plaintext-secret", &gone, &turned, &turned_old] {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{} contains the plaintext secret {s}",
                path.display()
            );
        }
    }

    drop(gov);
    let gov = open(cfg, &c).await;
    let r = expect_refused(
        Req::new(Some("my-very-own-plaintext-secret"))
            .admit(&gov)
            .await,
        "kept key, spent budget",
    );
    assert!(
        matches!(r, Refusal::BudgetExceeded { .. }),
        "the key and its spend survive a restart: {r:?}"
    );
    expect_ok(
        Req::new(Some(&turned)).admit(&gov).await,
        "rotated secret survives",
    );
    for (s, what) in [(&gone, "deleted key"), (&turned_old, "secret rotated away")] {
        let r = expect_refused(Req::new(Some(s)).admit(&gov).await, what);
        assert!(matches!(r, Refusal::Unauthorized(_)), "{what}: {r:?}");
    }
    let (_, v) = call(&gov, "GET", "/admin/virtual-keys/keep", "").await;
    assert_eq!(v["usage"]["spend_usd"], 1.0, "{v}");
    assert_eq!(
        v["spend_usd"], 1.0,
        "the key's own usage is also at the top: {v}"
    );
    assert_eq!(
        v["requests_this_period"], 1,
        "the period's requests survive a restart: {v}"
    );
    assert_eq!(v["created_at"], "2026-11-24T10:00:00Z");
}

#[tokio::test]
async fn deleting_the_last_key_keeps_keys_required_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let gov = open(config(&dir, vec![]), &c).await;
    use gateway_core::admission::Admission;
    assert!(!gov.enabled(), "no key made yet: open");
    expect_ok(Req::new(None).admit(&gov).await, "open gateway");

    let (status, v) = call(&gov, "POST", "/admin/virtual-keys", r#"{"name": "only"}"#).await;
    assert_eq!(status, 201, "{v}");
    let s = v["secret"].as_str().unwrap().to_string();
    expect_ok(Req::new(Some(&s)).admit(&gov).await, "the key works");
    let (status, v) = call(&gov, "DELETE", "/admin/virtual-keys/only", "").await;
    assert_eq!(status, 200, "{v}");
    for (k, what) in [(Some(s.as_str()), "revoked secret"), (None, "no key")] {
        let r = expect_refused(Req::new(k).admit(&gov).await, what);
        assert!(matches!(r, Refusal::Unauthorized(_)), "{what}: {r:?}");
    }
    gov.flush().await.unwrap();
    drop(gov);

    let gov = open(config(&dir, vec![]), &c).await;
    assert!(gov.enabled(), "still required after a restart");
    let r = expect_refused(
        Req::new(Some(&s)).admit(&gov).await,
        "revoked after restart",
    );
    assert!(matches!(r, Refusal::Unauthorized(_)), "{r:?}");
}
