//! Test support: start the real gateway on 127.0.0.1:0 and talk to it over HTTP.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_server::{serve, Config, Extensions, Gateway};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A running gateway.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// SSE `data:` payloads in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|ev| {
                ev.lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .map(str::to_owned)
            })
            .collect()
    }
    /// SSE `event:` names in order.
    pub fn sse_events(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .map(str::to_owned)
            .collect()
    }
}

impl TestGateway {
    /// Starts a gateway from TOML text (listen address is replaced by 127.0.0.1:0).
    pub async fn start(toml: &str) -> TestGateway {
        Self::start_with(toml, Extensions::default(), None).await
    }

    pub async fn start_with(
        toml: &str,
        ext: Extensions,
        path: Option<std::path::PathBuf>,
    ) -> TestGateway {
        let mut config = Config::from_toml(toml).unwrap_or_else(|e| panic!("config: {e}"));
        config.server.listen = "127.0.0.1:0".to_owned();
        // The configured grace, but tests do not wait more than 5 s at their end.
        let grace = Duration::from_millis(config.server.shutdown_grace_ms.min(5_000));
        let gateway = Gateway::new(config, path, ext)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let gw = Arc::clone(&gateway);
        let task = tokio::spawn(async move {
            let _ = serve::serve(
                gw,
                listener,
                None,
                async {
                    let _ = rx.await;
                },
                grace,
            )
            .await;
        });
        TestGateway {
            addr,
            gateway,
            stop: Some(tx),
            task: Some(task),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut b = http::Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("gateway answered in time")
            .expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.request(
            "POST",
            path,
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer client-key"),
            ],
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    pub async fn post_anthropic(&self, body: &Value) -> Answer {
        self.request(
            "POST",
            "/v1/messages",
            &[
                ("content-type", "application/json"),
                ("x-api-key", "client-key"),
                ("anthropic-version", "2023-06-01"),
            ],
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    /// A `POST` of `body` sent over a raw connection, left open for the test to read as
    /// little of the answer as it wants and to leave when it wants (`extra` headers are
    /// `name: value` lines).
    pub async fn open_post(
        &self,
        path: &str,
        extra: &[&str],
        body: &Value,
    ) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let body = serde_json::to_vec(body).unwrap();
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for h in extra {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&body).await.unwrap();
        tcp
    }

    /// A connection that has sent `bytes` as they are (a request cut short, say), left open.
    pub async fn send_raw(&self, bytes: &[u8]) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        tcp
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.request("GET", path, headers, Bytes::new()).await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// An OpenAI chat body.
pub fn chat(model: &str, text: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// An Anthropic messages body.
pub fn messages(model: &str, text: &str) -> Value {
    serde_json::json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]})
}

/// A `redis-server` child process on a free loopback port, killed on drop.
pub struct Redis {
    child: std::process::Child,
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server`, or says why not and returns `None` when it is not installed
/// (`.ci/run` installs it, so CI always runs these tests).
pub async fn start_redis() -> Option<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = match std::process::Command::new("redis-server")
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
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED: redis-server is not installed ({e}); apt-get install -y redis-server to run this test");
            return None;
        }
    };
    let redis = Redis {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(redis);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis-server did not start listening on port {port}");
}

/// A stand-in upstream on 127.0.0.1 for shapes the mock does not produce: every request is
/// answered by `answer(headers, body)` as `(status, content type, body)`. Returns the base URL
/// of its OpenAI-style API (`http://127.0.0.1:PORT/v1`).
pub async fn stand_in_upstream<F>(answer: F) -> String
where
    F: Fn(&http::HeaderMap, &[u8]) -> (u16, &'static str, String) + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let answer = Arc::clone(&answer);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let (status, content_type, out) = answer(&parts.headers, &body);
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", content_type)
                                    .body(Full::new(Bytes::from(out)))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}/v1")
}

/// The `id` of every JSON event of an SSE answer (`[DONE]` left out).
pub fn sse_ids(answer: &Answer) -> Vec<String> {
    answer
        .sse_data()
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}
