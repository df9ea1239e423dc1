//! The shared Redis store: several instances enforce one set of limits together.
//!
//! Each test starts its own `redis-server` on a free loopback port and kills it at the end. When
//! `redis-server` is not installed the tests say so and return (CI installs it).

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gateway_core::admission::Refusal;
use gateway_governance::{Governance, GovernanceConfig, LimitsSpec, ManualClock};

struct RedisServer {
    child: Child,
    url: String,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server` on a free port, or `None` (with a message) when it is not installed.
async fn redis() -> Option<RedisServer> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = match spawn_redis(port) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED: redis-server is not installed ({e}); install it (apt-get install -y redis-server) to run the Redis store tests");
            return None;
        }
    };
    let server = RedisServer {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis-server did not start listening on port {port}");
}

/// `redis-server` on `port`, without persistence.
fn spawn_redis(port: u16) -> std::io::Result<Child> {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

async fn instances(
    server: &RedisServer,
    keys: Vec<LimitsSpec>,
    clock: &Arc<ManualClock>,
) -> (Vec<Arc<Governance>>, Vec<tempfile::TempDir>) {
    let mut govs = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = GovernanceConfig {
            store: Some(server.url.clone()),
            ..config(&dir, keys.clone())
        };
        govs.push(open(cfg, clock).await);
        dirs.push(dir);
    }
    (govs, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_keys_rpm_exactly() {
    let Some(server) = redis().await else { return };
    let c = clock();
    let (govs, _dirs) = instances(
        &server,
        vec![LimitsSpec {
            rpm: Some(10),
            ..key("k")
        }],
        &c,
    )
    .await;
    let (admitted, refusals) = admit_concurrently(&govs, &secret("k"), 30).await;
    assert_eq!(
        admitted, 10,
        "exactly rpm requests pass across both instances; refusals: {refusals:?}"
    );
    for r in &refusals {
        let wait = retry_after(r);
        assert!(
            wait > Duration::from_secs(5) && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
    }
    c.advance(Duration::from_secs(6));
    expect_ok(
        Req::new(Some(&secret("k"))).admit(&govs[1]).await,
        "one cell back after 6 s",
    );
    expect_refused(
        Req::new(Some(&secret("k"))).admit(&govs[0]).await,
        "only one",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_concurrency_and_budget_are_shared_and_settled() {
    let Some(server) = redis().await else { return };
    let c = clock();
    let spec = LimitsSpec {
        tpm: Some(1000),
        max_concurrent: Some(2),
        budget_usd: Some(1.0),
        budget_period: Some("1h".into()),
        ..key("k")
    };
    let (govs, _dirs) = instances(&server, vec![spec], &c).await;
    let s = secret("k");
    // 300 + 300 tokens = $0.60 reserved on instance 0.
    let a = expect_ok(
        Req::new(Some(&s)).tokens(300, 300).admit(&govs[0]).await,
        "first",
    );
    let r = expect_refused(
        Req::new(Some(&s)).tokens(300, 300).admit(&govs[1]).await,
        "budget reservation seen by instance 1",
    );
    assert!(
        matches!(&r, Refusal::BudgetExceeded { message, .. } if message.contains("cannot cover")),
        "{r:?}"
    );
    let r = expect_refused(
        Req::new(Some(&s))
            .model("unpriced")
            .tokens(200, 250)
            .admit(&govs[1])
            .await,
        "tokens: 600 + 450 > 1000",
    );
    assert!(
        matches!(&r, Refusal::RateLimited { message, .. } if message.contains("tokens-per-minute")),
        "{r:?}"
    );
    let b = expect_ok(
        Req::new(Some(&s)).tokens(100, 100).admit(&govs[1]).await,
        "small one fits",
    );
    let r = expect_refused(
        Req::new(Some(&s))
            .model("unpriced")
            .tokens(1, 1)
            .admit(&govs[1])
            .await,
        "two in flight across instances",
    );
    assert!(
        matches!(&r, Refusal::RateLimited { message, .. } if message.contains("concurrency")),
        "{r:?}"
    );
    // Settle on 0 (actual $0.50, 500 tokens), drop on 1 (released).
    a.settle(&usage(300, 200), 0.5);
    drop(b);
    govs[0].flush().await.unwrap();
    govs[1].flush().await.unwrap();
    let (_, v) = gateway_core::extend::AdminRoutes::handle(
        &*govs[1],
        "GET",
        "/admin/virtual-keys/k",
        "",
        b"",
    )
    .await
    .unwrap();
    let u = &v["usage"];
    assert_eq!(u["spend_usd"], 0.5, "{v}");
    assert_eq!(u["in_flight"], 0, "{v}");
    assert_eq!(u["reserved_usd"], 0.0, "{v}");
    assert_eq!(u["tpm_available"], 500, "1000 - 500 used: {v}");
    assert_eq!(u["requests_this_minute"], 2, "{v}");
    assert_eq!(
        u["requests_this_period"], 1,
        "one settled, one released: {v}"
    );
    assert_eq!(u["tokens_this_period"], 500, "{v}");
    assert_eq!(u["resets_at"], "2026-11-24T11:00:00Z", "{v}");
    let p = expect_ok(
        Req::new(Some(&s)).tokens(200, 200).admit(&govs[1]).await,
        "$0.50 + $0.40 fits",
    );
    p.settle(&usage(200, 200), 0.5);
    govs[1].flush().await.unwrap();
    let r = expect_refused(
        Req::new(Some(&s)).model("unpriced").admit(&govs[0]).await,
        "budget spent on both",
    );
    assert!(
        matches!(&r, Refusal::BudgetExceeded { message, resets_in: Some(_) } if message.contains("is spent")),
        "{r:?}"
    );
    c.advance(Duration::from_secs(3600));
    expect_ok(Req::new(Some(&s)).admit(&govs[0]).await, "next hour");
}

#[tokio::test]
async fn an_unreachable_store_refuses_with_unavailable() {
    let Some(server) = redis().await else { return };
    let c = clock();
    let (govs, _dirs) = instances(&server, vec![key("k")], &c).await;
    drop(server);
    let r = expect_refused(
        Req::new(Some(&secret("k"))).admit(&govs[0]).await,
        "redis gone",
    );
    assert!(matches!(r, Refusal::Unavailable(_)), "{r:?}");
}

#[tokio::test]
async fn keys_made_on_one_instance_work_on_the_others() {
    use gateway_core::extend::AdminRoutes;
    let Some(server) = redis().await else { return };
    let c = clock();
    let (govs, _dirs) = instances(&server, vec![key("from-file")], &c).await;
    let (status, v) = govs[0]
        .handle(
            "POST",
            "/admin/virtual-keys",
            "",
            br#"{"name": "shared", "rpm": 1}"#,
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    let first = v["secret"].as_str().unwrap().to_string();
    let r = expect_refused(
        Req::new(Some(&first)).admit(&govs[1]).await,
        "before instance 1 refreshes",
    );
    assert!(matches!(r, Refusal::Unauthorized(_)), "{r:?}");
    govs[1].refresh_keys().await.unwrap();
    expect_ok(
        Req::new(Some(&first)).admit(&govs[1]).await,
        "after the refresh",
    );
    let r = expect_refused(
        Req::new(Some(&first)).admit(&govs[0]).await,
        "the rpm of 1 is shared",
    );
    assert!(matches!(r, Refusal::RateLimited { .. }), "{r:?}");

    let (status, v) = govs[1]
        .handle("POST", "/admin/virtual-keys/shared/rotate", "", b"")
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    let second = v["secret"].as_str().unwrap().to_string();
    govs[0].refresh_keys().await.unwrap();
    let r = expect_refused(
        Req::new(Some(&first)).admit(&govs[0]).await,
        "rotated away on the other instance",
    );
    assert!(matches!(r, Refusal::Unauthorized(_)), "{r:?}");

    // A new instance (a restart) reads the keys from Redis.
    let dir = tempfile::tempdir().unwrap();
    let third = open(
        GovernanceConfig {
            store: Some(server.url.clone()),
            ..config(&dir, vec![key("from-file")])
        },
        &c,
    )
    .await;
    c.advance(Duration::from_secs(60));
    expect_ok(
        Req::new(Some(&second)).admit(&third).await,
        "a fresh instance knows the key",
    );

    let (status, _) = third
        .handle("DELETE", "/admin/virtual-keys/shared", "", b"")
        .await
        .unwrap();
    assert_eq!(status, 200);
    govs[0].refresh_keys().await.unwrap();
    c.advance(Duration::from_secs(60));
    let r = expect_refused(
        Req::new(Some(&second)).admit(&govs[0]).await,
        "revoked on another instance",
    );
    assert!(matches!(r, Refusal::Unauthorized(_)), "{r:?}");
}

/// Settlements reach Redis after the response; a client's next request may come first. A refusal
/// that settling could lift waits for this instance's queued settlements and asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_request_does_not_race_the_previous_ones_settlement() {
    let Some(server) = redis().await else { return };
    let c = clock();
    let spec = LimitsSpec {
        max_concurrent: Some(1),
        tpm: Some(500),
        ..key("k")
    };
    let (govs, _dirs) = instances(&server, vec![spec], &c).await;
    let s = secret("k");
    for i in 0..50 {
        let p = expect_ok(
            Req::new(Some(&s)).tokens(200, 200).admit(&govs[0]).await,
            &format!("request {i}: the previous one has settled"),
        );
        p.settle(&usage(1, 1), 0.0);
    }
    // rpm is not given back by settling: no wait for it (and no false refusal either).
    let held = expect_ok(Req::new(Some(&s)).admit(&govs[0]).await, "held");
    let r = expect_refused(Req::new(Some(&s)).admit(&govs[0]).await, "one in flight");
    assert!(
        matches!(&r, Refusal::RateLimited { message, .. } if message.contains("concurrency")),
        "{r:?}"
    );
    drop(held);
}

fn signal(server: &RedisServer, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &server.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

async fn in_flight(gov: &Governance, key: &str) -> serde_json::Value {
    let (_, v) = gateway_core::extend::AdminRoutes::handle(
        gov,
        "GET",
        &format!("/admin/virtual-keys/{key}"),
        "",
        b"",
    )
    .await
    .unwrap();
    v["usage"]["in_flight"].clone()
}

/// A Redis that stops answering (frozen, not gone) refuses requests with 503 within the call
/// timeout instead of holding them; admissions abandoned meanwhile (timed out, or their client
/// gone) leave no concurrency lease behind once Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_refuses_at_once_and_abandoned_admissions_leave_no_lease() {
    let Some(server) = redis().await else {
        return;
    };
    let c = clock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = GovernanceConfig {
        store: Some(server.url.clone()),
        ..config(
            &dir,
            vec![LimitsSpec {
                max_concurrent: Some(3),
                ..key("k")
            }],
        )
    };
    let gov = open(cfg, &c).await;
    let s = secret("k");
    expect_ok(Req::new(Some(&s)).admit(&gov).await, "Redis up").settle(&usage(1, 1), 0.0);
    gov.flush().await.unwrap();

    signal(&server, "-STOP");
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), Req::new(Some(&s)).admit(&gov))
        .await
        .expect("an answer, not a hang");
    let r = expect_refused(r, "Redis frozen");
    assert!(matches!(r, Refusal::Unavailable(_)), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused within the call timeout, not held: {:?}",
        started.elapsed()
    );
    // Three clients that give up after 300 ms: their admission scripts wait in the socket.
    for _ in 0..3 {
        let gone =
            tokio::time::timeout(Duration::from_millis(300), Req::new(Some(&s)).admit(&gov)).await;
        assert!(gone.is_err(), "still waiting on the frozen Redis");
    }
    signal(&server, "-CONT");
    // Redis runs the queued scripts, then the releases queued after them.
    let mut admitted = None;
    for _ in 0..50 {
        if let Ok(p) = Req::new(Some(&s)).admit(&gov).await {
            admitted = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = admitted.expect("admissions work again once Redis answers");
    p.settle(&usage(1, 1), 0.0);
    gov.flush().await.unwrap();
    assert_eq!(in_flight(&gov, "k").await, 0, "no lease left behind");
}

/// Redis gone and back on the same port: requests are refused meanwhile (503, at once), and
/// admitted again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_refused_while_redis_is_down_and_admitted_when_it_is_back() {
    let Some(mut server) = redis().await else {
        return;
    };
    let c = clock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = GovernanceConfig {
        store: Some(server.url.clone()),
        ..config(&dir, vec![key("k")])
    };
    let gov = open(cfg, &c).await;
    let s = secret("k");
    expect_ok(Req::new(Some(&s)).admit(&gov).await, "Redis up").settle(&usage(1, 1), 0.0);
    let _ = server.child.kill();
    let _ = server.child.wait();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let r = expect_refused(Req::new(Some(&s)).admit(&gov).await, "Redis down");
        assert!(matches!(r, Refusal::Unavailable(_)), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Back on the same port.
    let port = server.url.rsplit(':').next().unwrap().parse().unwrap();
    server.child = spawn_redis(port).unwrap();
    let mut back = false;
    for _ in 0..100 {
        if Req::new(Some(&s)).admit(&gov).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "admitted again within 10 s of Redis coming back");
}

/// A Redis that cannot be reached at start stops the start with a reason, quickly, and
/// without its password.
#[tokio::test]
async fn an_unreachable_redis_at_start_is_an_error_not_a_hang() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = GovernanceConfig {
        store: Some(format!("redis://:hunter2-secret@127.0.0.1:{port}")),
        ..config(&dir, vec![key("k")])
    };
    let started = std::time::Instant::now();
    let Err(e) = Governance::open_with_clock(cfg, clock()).await else {
        panic!("no Redis, no start");
    };
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(!e.to_string().contains("hunter2"), "{e}");
}
