//! Admission: authentication, limits, budgets, hierarchy, allow-lists and priority (embedded store).

mod common;

use std::time::Duration;

use common::*;
use gateway_core::admission::Refusal;
use gateway_governance::{GovernanceConfig, LimitsSpec};

#[tokio::test]
async fn without_virtual_keys_everything_is_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let gov = open(config(&dir, vec![]), &clock()).await;
    let p = expect_ok(Req::new(None).admit(&gov).await, "no keys configured");
    assert_eq!(p.virtual_key(), None);
    assert!(!gov.has_virtual_keys());
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let gov = open(config(&dir, vec![key("alice")]), &clock()).await;
    let r = expect_refused(Req::new(None).admit(&gov).await, "no key presented");
    assert!(
        matches!(&r, Refusal::Unauthorized(m) if m.contains("virtual key is required")),
        "{r:?}"
    );
    let r = expect_refused(
        Req::new(Some("sk-wrong-0123456789")).admit(&gov).await,
        "wrong key",
    );
    assert!(matches!(r, Refusal::Unauthorized(_)), "{r:?}");
    let r = expect_refused(Req::new(Some("   ")).admit(&gov).await, "blank key");
    assert!(matches!(r, Refusal::Unauthorized(_)), "{r:?}");
    let p = expect_ok(
        Req::new(Some(&secret("alice"))).admit(&gov).await,
        "right key",
    );
    assert_eq!(p.virtual_key(), Some("alice"));
    assert!(!p.is_batch());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_is_exact_under_30_concurrent_admissions() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let gov = open(
        config(
            &dir,
            vec![LimitsSpec {
                rpm: Some(10),
                ..key("k")
            }],
        ),
        &c,
    )
    .await;
    let (admitted, refusals) =
        admit_concurrently(std::slice::from_ref(&gov), &secret("k"), 30).await;
    assert_eq!(
        admitted, 10,
        "exactly rpm requests pass; refusals: {refusals:?}"
    );
    assert_eq!(refusals.len(), 20);
    for r in &refusals {
        let wait = retry_after(r);
        assert!(
            wait > Duration::from_secs(5) && wait <= Duration::from_secs(6),
            "GCRA emission interval is 6 s, got {wait:?}"
        );
        assert!(
            matches!(r, Refusal::RateLimited { message, .. } if message.contains("requests-per-minute (10)") && message.contains("'k'"))
        );
    }
    // One cell comes back every 60/10 seconds.
    c.advance(Duration::from_secs(6));
    expect_ok(
        Req::new(Some(&secret("k"))).admit(&gov).await,
        "one request after 6 s",
    );
    expect_refused(
        Req::new(Some(&secret("k"))).admit(&gov).await,
        "only one after 6 s",
    );
    c.advance(Duration::from_secs(60));
    let (admitted, _) = admit_concurrently(std::slice::from_ref(&gov), &secret("k"), 30).await;
    assert_eq!(admitted, 10, "a full burst after a quiet minute");
}

#[tokio::test]
async fn tpm_reservation_blocks_a_concurrent_request_and_settlement_frees_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let gov = open(
        config(
            &dir,
            vec![LimitsSpec {
                tpm: Some(1000),
                ..key("k")
            }],
        ),
        &c,
    )
    .await;
    let s = secret("k");
    let a = expect_ok(
        Req::new(Some(&s)).tokens(300, 500).admit(&gov).await,
        "800 of 1000 tokens",
    );
    let r = expect_refused(
        Req::new(Some(&s)).tokens(200, 100).admit(&gov).await,
        "300 more would overshoot",
    );
    assert!(
        matches!(&r, Refusal::RateLimited { message, .. } if message.contains("tokens-per-minute (1000)")),
        "{r:?}"
    );
    // 100 tokens are missing: the bucket refills 1000 per minute, so 6 s.
    assert_eq!(retry_after(&r), Duration::from_secs(6));
    // The first request used 200 of its 800: 600 come back.
    a.settle(&usage(150, 50), 0.0);
    let b = expect_ok(
        Req::new(Some(&s)).tokens(200, 100).admit(&gov).await,
        "after settlement",
    );
    let _c = expect_ok(
        Req::new(Some(&s)).tokens(400, 100).admit(&gov).await,
        "800 - 300 = 500 left",
    );
    expect_refused(
        Req::new(Some(&s)).tokens(1, 0).admit(&gov).await,
        "bucket is empty (max_output 0 counts as 1024)",
    );
    // A dropped permit (failed request) gives back everything it reserved.
    drop(b);
    let _d = expect_ok(
        Req::new(Some(&s)).tokens(250, 50).admit(&gov).await,
        "after the drop",
    );
    let detail =
        gateway_core::extend::AdminRoutes::handle(&*gov, "GET", "/admin/virtual-keys/k", "", b"")
            .await;
    let (status, v) = detail.unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["usage"]["tokens_this_minute"], 200, "{v}");
    assert_eq!(v["usage"]["requests_this_minute"], 4, "{v}");
    assert_eq!(v["usage"]["in_flight"], 2, "{v}");
}

#[tokio::test]
async fn concurrency_slot_is_held_by_the_permit() {
    let dir = tempfile::tempdir().unwrap();
    let gov = open(
        config(
            &dir,
            vec![LimitsSpec {
                max_concurrent: Some(2),
                ..key("k")
            }],
        ),
        &clock(),
    )
    .await;
    let s = secret("k");
    let a = expect_ok(Req::new(Some(&s)).admit(&gov).await, "first");
    let b = expect_ok(Req::new(Some(&s)).admit(&gov).await, "second");
    let r = expect_refused(
        Req::new(Some(&s)).admit(&gov).await,
        "third while two are in flight",
    );
    assert!(
        matches!(&r, Refusal::RateLimited { message, .. } if message.contains("concurrency")),
        "{r:?}"
    );
    drop(a);
    let c = expect_ok(Req::new(Some(&s)).admit(&gov).await, "after a drop");
    b.settle(&usage(1, 1), 0.0);
    let _d = expect_ok(Req::new(Some(&s)).admit(&gov).await, "after a settle");
    drop(c);
}

#[tokio::test]
async fn budget_is_reserved_refused_when_spent_kept_across_restart_and_reset_next_period() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let spec = LimitsSpec {
        budget_usd: Some(1.0),
        budget_period: Some("1d".into()),
        ..key("k")
    };
    let cfg = config(&dir, vec![spec]);
    let gov = open(cfg.clone(), &c).await;
    let s = secret("k");
    // $1 per 1000 tokens: 300 + 300 tokens may cost $0.60.
    let a = expect_ok(
        Req::new(Some(&s)).tokens(300, 300).admit(&gov).await,
        "first $0.60",
    );
    let r = expect_refused(
        Req::new(Some(&s)).tokens(300, 300).admit(&gov).await,
        "a second $0.60 would overshoot",
    );
    assert!(
        matches!(&r, Refusal::BudgetExceeded { message, .. } if message.contains("cannot cover")),
        "{r:?}"
    );
    a.settle(&usage(300, 100), 0.40);
    let b = expect_ok(
        Req::new(Some(&s)).tokens(300, 300).admit(&gov).await,
        "0.40 + 0.60 fits",
    );
    b.settle(&usage(300, 300), 0.60);
    let r = expect_refused(
        Req::new(Some(&s)).model("unpriced").admit(&gov).await,
        "spent: even unpriced requests",
    );
    match &r {
        Refusal::BudgetExceeded { message, resets_in } => {
            assert!(
                message.contains("virtual key 'k'")
                    && message.contains("$1.00 per day")
                    && message.contains("is spent"),
                "{message}"
            );
            assert!(
                message.contains("2026-11-25T00:00:00Z"),
                "names the reset time: {message}"
            );
            assert_eq!(
                *resets_in,
                Some(Duration::from_secs(14 * 3600)),
                "10:00 to midnight"
            );
        }
        other => panic!("expected BudgetExceeded, got {other:?}"),
    }
    // Restart on the same data_dir: the spend is still there.
    gov.flush().await.unwrap();
    drop(gov);
    let gov = open(cfg.clone(), &c).await;
    expect_refused(
        Req::new(Some(&s)).admit(&gov).await,
        "still spent after a restart",
    );
    // The next UTC day the budget is fresh.
    c.advance(Duration::from_secs(14 * 3600));
    expect_ok(Req::new(Some(&s)).admit(&gov).await, "a new day");
    let (_, v) =
        gateway_core::extend::AdminRoutes::handle(&*gov, "GET", "/admin/virtual-keys/k", "", b"")
            .await
            .unwrap();
    assert_eq!(v["usage"]["spend_usd"], 0.0, "{v}");
    assert_eq!(v["usage"]["period_start"], "2026-11-25T00:00:00Z", "{v}");
    assert_eq!(v["usage"]["resets_at"], "2026-11-26T00:00:00Z", "{v}");
}

#[tokio::test]
async fn lifetime_budget_never_resets() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let gov = open(
        config(
            &dir,
            vec![LimitsSpec {
                budget_usd: Some(0.5),
                ..key("k")
            }],
        ),
        &c,
    )
    .await;
    let s = secret("k");
    expect_ok(Req::new(Some(&s)).admit(&gov).await, "first").settle(&usage(1, 1), 0.5);
    c.advance(Duration::from_secs(400 * 86_400));
    let r = expect_refused(Req::new(Some(&s)).admit(&gov).await, "a year later");
    assert!(
        matches!(&r, Refusal::BudgetExceeded { message, resets_in: None } if message.contains("lifetime") && message.contains("does not reset")),
        "{r:?}"
    );
}

fn hierarchy() -> GovernanceConfig {
    let dir_unused = std::path::PathBuf::new();
    GovernanceConfig {
        customers: vec![LimitsSpec {
            name: "acme".into(),
            rpm: Some(3),
            ..LimitsSpec::default()
        }],
        teams: vec![
            LimitsSpec {
                name: "search".into(),
                customer: Some("acme".into()),
                budget_usd: Some(1.0),
                budget_period: Some("1M".into()),
                ..LimitsSpec::default()
            },
            LimitsSpec {
                name: "ads".into(),
                customer: Some("acme".into()),
                ..LimitsSpec::default()
            },
        ],
        virtual_keys: vec![
            LimitsSpec {
                team: Some("search".into()),
                ..key("s1")
            },
            LimitsSpec {
                team: Some("search".into()),
                ..key("s2")
            },
            LimitsSpec {
                team: Some("ads".into()),
                rpm: Some(2),
                ..key("a1")
            },
        ],
        pricing: vec![dollar_per_thousand()],
        data_dir: dir_unused,
        ..GovernanceConfig::default()
    }
}

#[tokio::test]
async fn a_team_budget_stops_all_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let gov = open(
        GovernanceConfig {
            data_dir: dir.path().into(),
            ..hierarchy()
        },
        &clock(),
    )
    .await;
    expect_ok(Req::new(Some(&secret("s1"))).admit(&gov).await, "s1").settle(&usage(500, 500), 1.0);
    let r = expect_refused(
        Req::new(Some(&secret("s2"))).admit(&gov).await,
        "s2 shares the team budget",
    );
    match &r {
        Refusal::BudgetExceeded { message, .. } => {
            assert!(
                message.contains("team 'search'")
                    && message.contains("per month")
                    && message.contains("2026-12-01T00:00:00Z"),
                "{message}"
            );
        }
        other => panic!("expected BudgetExceeded, got {other:?}"),
    }
    expect_ok(
        Req::new(Some(&secret("a1"))).admit(&gov).await,
        "another team is unaffected",
    );
}

#[tokio::test]
async fn a_customer_rpm_applies_across_teams_and_a_refusal_takes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let gov = open(
        GovernanceConfig {
            data_dir: dir.path().into(),
            ..hierarchy()
        },
        &c,
    )
    .await;
    expect_ok(
        Req::new(Some(&secret("s1"))).admit(&gov).await,
        "1st for acme",
    );
    expect_ok(
        Req::new(Some(&secret("a1"))).admit(&gov).await,
        "2nd for acme",
    );
    expect_ok(
        Req::new(Some(&secret("s2"))).admit(&gov).await,
        "3rd for acme",
    );
    let r = expect_refused(
        Req::new(Some(&secret("a1"))).admit(&gov).await,
        "4th for acme, other team",
    );
    assert!(
        matches!(&r, Refusal::RateLimited { message, .. } if message.contains("customer 'acme'")),
        "{r:?}"
    );
    // a1's own rpm (2) was charged once; the refused request must not have taken its second cell.
    c.advance(Duration::from_secs(20)); // acme regains one cell (60/3 s)
    expect_ok(
        Req::new(Some(&secret("a1"))).admit(&gov).await,
        "a1's second cell is still there",
    );
}

#[tokio::test]
async fn model_allow_list_is_enforced_at_every_level() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = GovernanceConfig {
        data_dir: dir.path().into(),
        ..hierarchy()
    };
    cfg.virtual_keys[0].models = Some(vec!["test-model".into(), "openai/*".into()]);
    cfg.teams[1].models = Some(vec!["cheap".into()]);
    let gov = open(cfg, &clock()).await;
    let s1 = secret("s1");
    expect_ok(Req::new(Some(&s1)).admit(&gov).await, "listed model");
    expect_ok(
        Req::new(Some(&s1)).model("openai/gpt-4o").admit(&gov).await,
        "provider wildcard",
    );
    let r = expect_refused(
        Req::new(Some(&s1))
            .model("anthropic/claude-sonnet-4")
            .providers(&["anthropic"])
            .admit(&gov)
            .await,
        "unlisted",
    );
    assert!(
        matches!(&r, Refusal::Forbidden(m) if m.contains("'anthropic/claude-sonnet-4'") && m.contains("virtual key 's1'")),
        "{r:?}"
    );
    let r = expect_refused(Req::new(Some(&secret("a1"))).admit(&gov).await, "team list");
    assert!(
        matches!(&r, Refusal::Forbidden(m) if m.contains("team 'ads'")),
        "{r:?}"
    );
}

#[tokio::test]
async fn provider_allow_list_needs_one_allowed_provider() {
    let dir = tempfile::tempdir().unwrap();
    let gov = open(
        config(
            &dir,
            vec![LimitsSpec {
                providers: Some(vec!["azure".into()]),
                ..key("k")
            }],
        ),
        &clock(),
    )
    .await;
    let s = secret("k");
    expect_ok(
        Req::new(Some(&s))
            .providers(&["openai", "azure"])
            .admit(&gov)
            .await,
        "azure can serve it",
    );
    let r = expect_refused(
        Req::new(Some(&s)).providers(&["openai"]).admit(&gov).await,
        "only openai serves it",
    );
    assert!(
        matches!(&r, Refusal::Forbidden(m) if m.contains("no provider allowed") && m.contains("azure")),
        "{r:?}"
    );
    // A model no provider serves is not a permission matter: the engine answers 404.
    expect_ok(
        Req::new(Some(&s)).providers(&[]).admit(&gov).await,
        "unknown model: left to the engine",
    );
}

#[tokio::test]
async fn the_permit_names_the_providers_allowed_at_every_level() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = GovernanceConfig {
        data_dir: dir.path().into(),
        ..hierarchy()
    };
    // s1: its own list and its team's meet in azure; a1: its list and its team's never meet;
    // s2: no list of its own, so the team's holds.
    cfg.virtual_keys[0].providers = Some(vec!["openai".into(), "azure".into()]);
    cfg.teams[0].providers = Some(vec!["Azure".into(), "bedrock".into()]);
    cfg.virtual_keys[2].providers = Some(vec!["openai".into()]);
    cfg.teams[1].providers = Some(vec!["azure".into()]);
    let gov = open(cfg, &clock()).await;
    let serving: &[&str] = &["openai", "azure"];
    let p = expect_ok(
        Req::new(Some(&secret("s1")))
            .providers(serving)
            .admit(&gov)
            .await,
        "azure is allowed by key and team",
    );
    assert_eq!(p.allowed_providers(), Some(&["azure".to_owned()][..]));
    let p = expect_ok(
        Req::new(Some(&secret("s2")))
            .providers(serving)
            .admit(&gov)
            .await,
        "team list only",
    );
    // (Lists are kept lower-cased.)
    assert_eq!(
        p.allowed_providers(),
        Some(&["azure".to_owned(), "bedrock".to_owned()][..])
    );
    // Each of a1's levels allows one serving provider, but no provider is allowed by both.
    let r = expect_refused(
        Req::new(Some(&secret("a1")))
            .providers(serving)
            .admit(&gov)
            .await,
        "disjoint lists",
    );
    assert!(
        matches!(&r, Refusal::Forbidden(m) if m.contains("allowed by all: none") && m.contains("'a1'")),
        "{r:?}"
    );
    let r = expect_refused(
        Req::new(Some(&secret("s1")))
            .providers(&["openai"])
            .admit(&gov)
            .await,
        "openai is the key's but not the team's",
    );
    assert!(matches!(&r, Refusal::Forbidden(_)), "{r:?}");
}

#[tokio::test]
async fn authorize_checks_access_and_reserves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gov = open(
        config(
            &dir,
            vec![LimitsSpec {
                rpm: Some(1),
                models: Some(vec!["test-model".into()]),
                providers: Some(vec!["azure".into()]),
                ..key("k")
            }],
        ),
        &clock(),
    )
    .await;
    let s = secret("k");
    let serving: &[&str] = &["openai", "azure"];
    for _ in 0..3 {
        assert_eq!(
            Req::new(Some(&s)).providers(serving).authorize(&gov),
            Ok(Some(vec!["azure".to_owned()]))
        );
    }
    assert!(matches!(
        Req::new(Some(&s))
            .providers(serving)
            .model("other-model")
            .authorize(&gov),
        Err(Refusal::Forbidden(_))
    ));
    assert!(matches!(
        Req::new(Some(&s)).providers(&["openai"]).authorize(&gov),
        Err(Refusal::Forbidden(_))
    ));
    assert!(matches!(
        Req::new(None).providers(serving).authorize(&gov),
        Err(Refusal::Unauthorized(_))
    ));
    // The key's one request a minute is still there.
    expect_ok(
        Req::new(Some(&s)).providers(serving).admit(&gov).await,
        "authorize took no rpm cell",
    );
}

#[tokio::test]
async fn under_low_headroom_batch_yields_and_interactive_passes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GovernanceConfig {
        teams: vec![LimitsSpec {
            name: "etl".into(),
            priority: Some("batch".into()),
            ..LimitsSpec::default()
        }],
        virtual_keys: vec![
            LimitsSpec {
                priority: Some("batch".into()),
                ..key("nightly")
            },
            LimitsSpec {
                team: Some("etl".into()),
                ..key("etl-key")
            },
            key("app"),
        ],
        batch_headroom: Some(0.3),
        ..config(&dir, vec![])
    };
    let gov = open(cfg, &clock()).await;
    let r = expect_refused(
        Req::new(Some(&secret("nightly")))
            .headroom(0.1)
            .admit(&gov)
            .await,
        "batch under low headroom",
    );
    assert_eq!(retry_after(&r), gateway_governance::BATCH_RETRY_AFTER);
    expect_refused(
        Req::new(Some(&secret("etl-key")))
            .headroom(0.29)
            .admit(&gov)
            .await,
        "batch inherited from the team",
    );
    let p = expect_ok(
        Req::new(Some(&secret("app")))
            .headroom(0.1)
            .admit(&gov)
            .await,
        "interactive under low headroom",
    );
    assert!(!p.is_batch());
    let p = expect_ok(
        Req::new(Some(&secret("nightly")))
            .headroom(0.5)
            .admit(&gov)
            .await,
        "batch with headroom",
    );
    assert!(p.is_batch());
}

#[tokio::test]
async fn reload_keeps_api_keys_and_usage_and_applies_new_limits() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let cfg = config(
        &dir,
        vec![LimitsSpec {
            budget_usd: Some(1.0),
            ..key("k")
        }],
    );
    let gov = open(cfg.clone(), &c).await;
    let admin = |m: &'static str, p: &'static str, b: &'static [u8]| {
        let gov = gov.clone();
        async move {
            gateway_core::extend::AdminRoutes::handle(&*gov, m, p, "", b)
                .await
                .unwrap()
        }
    };
    let (status, created) = admin("POST", "/admin/virtual-keys", br#"{"name": "made"}"#).await;
    assert_eq!(status, 201, "{created}");
    let made = created["secret"].as_str().unwrap().to_string();
    expect_ok(Req::new(Some(&secret("k"))).admit(&gov).await, "k").settle(&usage(1, 1), 1.0);
    let mut next = cfg.clone();
    next.virtual_keys[0].rpm = Some(1);
    next.virtual_keys.push(key("new"));
    gov.reload(&next).unwrap();
    expect_ok(
        Req::new(Some(&made)).admit(&gov).await,
        "API key survives a reload",
    );
    expect_ok(
        Req::new(Some(&secret("new"))).admit(&gov).await,
        "new config key",
    );
    let r = expect_refused(
        Req::new(Some(&secret("k")))
            .tokens(200, 200)
            .admit(&gov)
            .await,
        "spend kept: $1 of $1 spent",
    );
    assert!(matches!(r, Refusal::BudgetExceeded { .. }), "{r:?}");
    // An invalid configuration is refused and the old one stays.
    let mut bad = next.clone();
    bad.virtual_keys[1].budget_period = Some("fortnight".into());
    let e = gov.reload(&bad).unwrap_err().to_string();
    assert!(
        e.contains("virtual_keys[1].budget_period: unknown period \"fortnight\""),
        "{e}"
    );
    expect_ok(
        Req::new(Some(&secret("new"))).admit(&gov).await,
        "old config still in force",
    );
}

#[tokio::test]
async fn rate_limit_windows_survive_a_restart_within_the_minute() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let spec = LimitsSpec {
        rpm: Some(2),
        tpm: Some(1_000),
        ..key("k")
    };
    let cfg = config(&dir, vec![spec]);
    let gov = open(cfg.clone(), &c).await;
    let s = secret("k");
    for _ in 0..2 {
        expect_ok(
            Req::new(Some(&s)).tokens(300, 100).admit(&gov).await,
            "within rpm",
        )
        .settle(&usage(300, 100), 0.0);
    }
    assert!(matches!(
        expect_refused(Req::new(Some(&s)).admit(&gov).await, "third"),
        Refusal::RateLimited { .. }
    ));
    gov.flush().await.unwrap();
    drop(gov);

    // A restart 10 s later: the rpm burst is not handed out again, nor the tokens.
    c.advance(Duration::from_secs(10));
    let gov = open(cfg.clone(), &c).await;
    let r = expect_refused(
        Req::new(Some(&s)).admit(&gov).await,
        "rpm kept across a restart",
    );
    assert!(
        matches!(&r, Refusal::RateLimited { message, .. } if message.contains("requests-per-minute")),
        "{r:?}"
    );
    let (_, v) =
        gateway_core::extend::AdminRoutes::handle(&*gov, "GET", "/admin/virtual-keys/k", "", b"")
            .await
            .unwrap();
    assert_eq!(v["requests_this_minute"], 2, "{v}");
    assert!(
        v["tpm_available"].as_i64().unwrap() < 500,
        "800 tokens used 10 s ago, refilled at 1000 a minute: {v}"
    );
    gov.flush().await.unwrap();
    drop(gov);

    // Saved windows older than a minute are not read: a fresh start.
    c.advance(Duration::from_secs(61));
    let gov = open(cfg, &c).await;
    expect_ok(Req::new(Some(&s)).admit(&gov).await, "a minute later");
}

#[tokio::test]
async fn a_route_name_reserves_what_its_dearest_target_may_cost() {
    let dir = tempfile::tempdir().unwrap();
    let spec = LimitsSpec {
        budget_usd: Some(1.0),
        ..key("k")
    };
    let gov = open(config(&dir, vec![spec]), &clock()).await;
    let s = secret("k");
    // A route name has no price; its targets do ($1 per 1000 tokens): 300 + 300 may cost $0.60.
    fn route(r: Req<'_>) -> Req<'_> {
        r.model("chat")
            .targets(&[("cheap", "unpriced"), ("p", "test-model")])
    }
    let first = expect_ok(
        route(Req::new(Some(&s)).tokens(300, 300)).admit(&gov).await,
        "first through the route",
    );
    let r = expect_refused(
        route(Req::new(Some(&s)).tokens(300, 300)).admit(&gov).await,
        "a concurrent second would pass the budget",
    );
    assert!(
        matches!(&r, Refusal::BudgetExceeded { message, .. } if message.contains("cannot cover")),
        "{r:?}"
    );
    // Without its targets the route would reserve nothing, and the burst would pass.
    expect_ok(
        Req::new(Some(&s))
            .model("chat")
            .tokens(300, 300)
            .admit(&gov)
            .await,
        "unknown targets: the name's own price (none)",
    );
    drop(first);
}

#[tokio::test]
async fn provider_wildcards_admit_the_bare_names_only_that_provider_serves() {
    let dir = tempfile::tempdir().unwrap();
    let spec = LimitsSpec {
        models: Some(vec!["ant/*".into()]),
        ..key("k")
    };
    let gov = open(config(&dir, vec![spec]), &clock()).await;
    let s = secret("k");
    expect_ok(
        Req::new(Some(&s))
            .model("ant/claude-x")
            .providers(&["ant"])
            .admit(&gov)
            .await,
        "addressed through the provider",
    );
    expect_ok(
        Req::new(Some(&s))
            .model("claude-x")
            .providers(&["ant"])
            .admit(&gov)
            .await,
        "a bare name only ant serves",
    );
    let r = expect_refused(
        Req::new(Some(&s))
            .model("gpt-x")
            .providers(&["ant", "oai"])
            .admit(&gov)
            .await,
        "a bare name oai serves too",
    );
    assert!(matches!(r, Refusal::Forbidden(_)), "{r:?}");
}

/// A burst of requests that set no output limit (most OpenAI SDK calls) reserves
/// `default_output_tokens` each: no more are admitted together than the budget and the tpm
/// can pay for at that size, so answers up to it cannot overshoot either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_without_output_limits_reserves_the_default_output() {
    for (limits, what) in [
        (
            LimitsSpec {
                budget_usd: Some(10.0),
                ..key("k")
            },
            "budget",
        ),
        (
            LimitsSpec {
                tpm: Some(10_000),
                ..key("k")
            },
            "tpm",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let gov = open(config(&dir, vec![limits]), &clock()).await;
        let s = secret("k");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (gov, s, barrier) = (gov.clone(), s.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut r = Req::new(Some(&s));
                r.output = 0;
                r.admit(&gov).await
            }));
        }
        let mut permits = Vec::new();
        for t in tasks {
            if let Ok(p) = t.await.unwrap() {
                permits.push(p);
            }
        }
        // Each reserves 10 + 4096 tokens ($4.106 at $1 per 1000): two fit in $10 and in
        // 10,000 tokens, a third does not.
        assert_eq!(permits.len(), 2, "{what}");
        // Answers of 3,000 tokens each, within the reservation: $6.02 and 6,020 tokens.
        for p in permits {
            p.settle(&usage(10, 3000), 3.01);
        }
    }
}
