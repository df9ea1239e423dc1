//! Server behaviour around requests: TLS and HTTP/2, graceful shutdown, request ids, client
//! disconnects, and secrets kept out of logs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gateway_mock::{MockServer, MockUpstream};
use gateway_server::{serve, Config, Extensions, Gateway};
use gateway_tests::{chat, messages, TestGateway};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

fn config(m: &MockServer, secret: &str) -> String {
    format!(
        r#"
[server]
admin_token = "adm"
[[providers]]
name = "p"
kind = "openai"
base_url = "{}"
[[providers.keys]]
name = "k"
secret = "{secret}"
"#,
        m.openai_base()
    )
}

#[test]
fn worker_threads_default_to_half_the_cores() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let n = gateway_server::config::default_worker_threads();
    assert_eq!(n, (cores / 2).max(1));
    let cfg = Config::from_toml("[server]\n").unwrap();
    assert_eq!(cfg.server.worker_threads, None);
    assert_eq!(cfg.server.runtime_threads(), n);
}

#[tokio::test]
async fn worker_threads_must_be_a_sane_count() {
    let m = MockUpstream::new().start().await.unwrap();
    for (n, ok) in [(0, false), (1, true), (4, true), (5000, false)] {
        let toml = config(&m, "sk").replace("[server]", &format!("[server]\nworker_threads = {n}"));
        let cfg = Config::from_toml(&toml).unwrap();
        assert_eq!(cfg.server.worker_threads, Some(n));
        if ok {
            assert_eq!(cfg.server.runtime_threads(), n);
        }
        match Gateway::new(cfg, None, Extensions::default()).await {
            Ok(_) => assert!(ok, "worker_threads = {n} accepted"),
            Err(e) => {
                assert!(!ok, "worker_threads = {n} refused: {e}");
                assert!(e.to_string().contains("server.worker_threads"), "{e}");
            }
        }
    }
}

#[tokio::test]
async fn tls_with_http2_negotiated_by_alpn() {
    let m = MockUpstream::new().start().await.unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("gw-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::File::create(&cert_path)
        .unwrap()
        .write_all(cert.cert.pem().as_bytes())
        .unwrap();
    std::fs::File::create(&key_path)
        .unwrap()
        .write_all(cert.key_pair.serialize_pem().as_bytes())
        .unwrap();
    let acceptor = serve::tls_acceptor(&cert_path, &key_path).unwrap();

    let cfg = Config::from_toml(&config(&m, "sk-tls")).unwrap();
    let gw = Gateway::new(cfg, None, Extensions::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve::serve(
        gw,
        listener,
        Some(acceptor),
        async {
            let _ = rx.await;
        },
        Duration::from_secs(2),
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let req = http::Request::post(format!("https://localhost:{port}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&chat("p/m", "over tls")).unwrap(),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2, "ALPN picked h2");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn graceful_shutdown_drains_an_in_flight_stream() {
    let m = MockUpstream::new()
        .stream_chunks(10)
        .chunk_delay(Duration::from_millis(40))
        .start()
        .await
        .unwrap();
    let cfg = Config::from_toml(&config(&m, "sk-drain")).unwrap();
    let gw = Gateway::new(cfg, None, Extensions::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve::serve(
        gw,
        listener,
        None,
        async {
            let _ = rx.await;
        },
        Duration::from_secs(10),
    ));

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut body = chat("p/m", "long answer");
    body["stream"] = json!(true);
    let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Shut down while the stream is still running.
    let _ = tx.send(());
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the stream finished: {text}"
    );
    task.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn request_ids_are_kept_or_generated() {
    let m = MockUpstream::new().start().await.unwrap();
    let gw = TestGateway::start(&config(&m, "sk-id")).await;
    let r = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                ("x-request-id", "my-trace-42"),
            ],
            serde_json::to_vec(&chat("p/m", "hi")).unwrap(),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("my-trace-42"));
    let a = gw.post("/v1/chat/completions", &chat("p/m", "hi")).await;
    let b = gw.post("/v1/chat/completions", &chat("p/m", "hi")).await;
    assert_ne!(
        a.header("x-request-id"),
        b.header("x-request-id"),
        "generated ids are unique"
    );
    for id in [a.header("x-request-id"), b.header("x-request-id")] {
        let id = id.expect("a generated id");
        assert!(
            id.len() == 22
                && id.starts_with("req_")
                && id[4..]
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "generated ids are req_ and 18 lower-case hex digits: {id}"
        );
    }
    let e = gw.post("/v1/chat/completions", &chat("nope", "hi")).await;
    assert!(
        e.header("x-request-id").is_some(),
        "errors carry the id too"
    );
    assert_eq!(
        e.header("request-id"),
        None,
        "request-id is Anthropic's header"
    );
    // The Anthropic API also answers `request-id`, which its SDK reads.
    let m = gw.post_anthropic(&messages("p/m", "hi")).await;
    assert_eq!(m.status, 200, "{}", m.text());
    let id = m.header("x-request-id").expect("an id");
    assert_eq!(m.header("request-id"), Some(id));
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_stream() {
    let m = MockUpstream::new()
        .stream_chunks(200)
        .chunk_delay(Duration::from_millis(20))
        .start()
        .await
        .unwrap();
    let gw = TestGateway::start(&config(&m, "sk-cancel")).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let body = serde_json::to_vec(
        &json!({"model": "p/m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let in_flight = |gw: &TestGateway| gw.gateway.engine().health()[0].keys[0].signals.in_flight;
    assert_eq!(in_flight(&gw), 1, "stream in flight");
    drop(stream);
    let mut released = false;
    for _ in 0..100 {
        if in_flight(&gw) == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        released,
        "the upstream stream was dropped with the client (200 chunks x 20 ms would take 4 s)"
    );
    gw.stop().await;
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn provider_secrets_never_reach_logs_or_clients() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The mock knows only "sk-right-key-0123456789abcdef"; the gateway's key is wrong, so the upstream
    // answers 401 quoting what it received.
    let m = MockUpstream::new()
        .key("sk-right-key-0123456789abcdef")
        .start()
        .await
        .unwrap();
    let secret = "sk-wrong-key-0123456789abcdefghij";
    let gw = TestGateway::start(&config(&m, secret)).await;
    let r = gw.post("/v1/chat/completions", &chat("p/m", "hi")).await;
    assert_eq!(
        r.status,
        502,
        "a refused provider key is the gateway's problem, not the caller's: {}",
        r.text()
    );
    assert!(!r.text().contains(secret), "{}", r.text());
    let h = gw
        .get("/admin/health", &[("authorization", "Bearer adm")])
        .await;
    assert!(!h.text().contains(secret));
    assert_eq!(
        h.json()["providers"][0]["keys"][0]["state"],
        "ejected",
        "the refused key left rotation"
    );
    let reload = gw
        .request(
            "POST",
            "/admin/reload",
            &[("authorization", "Bearer adm")],
            "",
        )
        .await;
    assert!(!reload.text().contains(secret));
    gw.stop().await;
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(!logs.contains(secret), "secret in logs:\n{logs}");
}

/// A TLS upstream on 127.0.0.1 that offers h2 and http/1.1 by ALPN, answers every request with a
/// chat completion, and records the HTTP version of each request it served.
async fn tls_upstream(
    dir: &std::path::Path,
) -> (u16, std::path::PathBuf, Arc<Mutex<Vec<http::Version>>>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let acceptor = serve::tls_acceptor(&cert_path, &key_path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), Arc::clone(&log));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    log.lock().unwrap().push(req.version());
                    let body = json!({
                        "id": "chatcmpl-tls", "object": "chat.completion", "created": 1,
                        "model": "m",
                        "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "over tls upstream"}}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
                    });
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, cert_path, seen)
}

fn tls_upstream_config(port: u16, server_extra: &str) -> String {
    format!(
        r#"
[server]
{server_extra}
[[providers]]
name = "p"
kind = "openai"
base_url = "https://localhost:{port}/v1"
[[providers.keys]]
name = "k"
secret = "sk-tls-up"
"#
    )
}

#[tokio::test]
async fn upstream_tls_trusts_the_ca_file_and_speaks_http1_unless_http2_is_asked() {
    let dir = std::env::temp_dir().join(format!("gw-up-tls-{}", std::process::id()));
    let (port, ca, seen) = tls_upstream(&dir).await;
    let ca_line = format!("upstream_ca_file = {:?}", ca.display().to_string());

    // Without the CA the self-signed upstream is not trusted: the request fails, nothing served.
    let gw = TestGateway::start(&tls_upstream_config(port, "")).await;
    let r = gw.post("/v1/chat/completions", &chat("p/m", "hi")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(seen.lock().unwrap().is_empty());
    gw.stop().await;

    // With it, the default is HTTP/1.1 even though the upstream offers h2: one connection per
    // request in flight, never a queue behind an HTTP/2 stream limit.
    let gw = TestGateway::start(&tls_upstream_config(port, &ca_line)).await;
    for _ in 0..2 {
        let r = gw.post("/v1/chat/completions", &chat("p/m", "hi")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            "over tls upstream"
        );
    }
    assert_eq!(
        std::mem::take(&mut *seen.lock().unwrap()),
        vec![http::Version::HTTP_11; 2]
    );
    gw.stop().await;

    // Opted in, ALPN picks h2.
    let gw = TestGateway::start(&tls_upstream_config(
        port,
        &format!("{ca_line}\nupstream_http2 = true"),
    ))
    .await;
    let r = gw.post("/v1/chat/completions", &chat("p/m", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(*seen.lock().unwrap(), vec![http::Version::HTTP_2]);
    gw.stop().await;

    // A file with no certificate in it stops the start, naming the field.
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let cfg = Config::from_toml(&tls_upstream_config(
        port,
        &format!("upstream_ca_file = {:?}", empty.display().to_string()),
    ))
    .unwrap();
    match Gateway::new(cfg, None, Extensions::default()).await {
        Ok(_) => panic!("a CA file without a certificate was accepted"),
        Err(e) => assert!(e.to_string().contains("server.upstream_ca_file"), "{e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Vertex provider needs a service account: in `credentials_file`, or as each key's `secret`;
/// a key with neither is named in the refusal.
#[tokio::test]
async fn vertex_keys_need_a_service_account_somewhere() {
    let toml = r#"
[[providers]]
name = "vx"
kind = "vertex"
project = "p"
location = "us-central1"
[[providers.keys]]
name = "a"
"#;
    let cfg = Config::from_toml(toml).unwrap();
    match Gateway::new(cfg, None, Extensions::default()).await {
        Ok(_) => panic!("a vertex key without a service account was accepted"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("credentials_file"), "{e}");
        }
    }
    // With a secret on every key, no credentials_file is asked for (the JSON's own checks
    // decide the rest).
    let with_secret = toml.replace("name = \"a\"", "name = \"a\"\nsecret = \"{}\"");
    let cfg = Config::from_toml(&with_secret).unwrap();
    if let Err(e) = Gateway::new(cfg, None, Extensions::default()).await {
        assert!(!e.to_string().contains("required for kind `vertex`"), "{e}");
    }
}
