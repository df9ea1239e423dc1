//! An open-loop load generator: requests leave at scheduled instants whatever happened to the
//! earlier ones, and latency is measured from the scheduled instant, so a server that stalls
//! shows its queueing in the figures instead of slowing the generator down (no coordinated
//! omission, as in wrk2 and oha's `--latency-correction`).
//!
//! One scheduler thread sleeps until each send instant and spawns the request onto a
//! multi-threaded tokio runtime; requests share a keep-alive HTTP/1.1 connection pool sized for
//! the rate. The number of requests in flight is capped, so a dead server cannot make the
//! generator open connections without bound; requests over the cap are counted as dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The HTTP client of the generator.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive HTTP/1.1 client whose pool keeps up to `idle` connections per host.
pub fn client(idle: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// What every request of a run sends.
#[derive(Debug, Clone)]
pub struct Target {
    /// `…/chat/completions` or `…/messages`.
    pub uri: Uri,
    /// The JSON body.
    pub body: Bytes,
    /// Headers besides `content-type` (the key, `anthropic-version`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Whether the body asks for a stream (the answer must end with `end`).
    pub stream: bool,
    /// What the last bytes of a complete stream hold (`[DONE]`, `message_stop`).
    pub end: &'static [u8],
    /// Per-request deadline.
    pub timeout: Duration,
}

/// Rate and length of a run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Requests per second.
    pub rate: f64,
    /// How long requests are sent.
    pub duration: Duration,
    /// Most requests in flight; sends above it are dropped and counted.
    pub max_in_flight: usize,
}

/// One successful request, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// From the scheduled instant to the end of the body.
    pub latency: u64,
    /// From the scheduled instant to the first body byte.
    pub ttfb: u64,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Successful requests.
    pub ok: Vec<Sample>,
    /// Failures by kind (`http 502`, `timeout`, `connect`...).
    pub errors: BTreeMap<String, u64>,
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests not sent because `max_in_flight` were outstanding.
    pub dropped: u64,
    /// How late each sent request left, relative to its schedule (ns). Requests still in flight
    /// when the run stopped waiting are counted in `errors` as `unfinished`.
    pub send_lag: Vec<u64>,
    /// From the first scheduled instant to the last completion.
    pub wall: Duration,
    /// Most requests in flight at once.
    pub peak_in_flight: usize,
}

#[derive(Default)]
struct Recorder {
    ok: Mutex<Vec<Sample>>,
    errors: Mutex<BTreeMap<String, u64>>,
    lags: Mutex<Vec<u64>>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    last_done: AtomicU64,
    stop: AtomicBool,
}

impl Recorder {
    fn error(&self, kind: String) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(kind).or_default() += 1;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn one(
    client: HttpClient,
    target: Arc<Target>,
    origin: Instant,
    at: Instant,
    rec: Arc<Recorder>,
) {
    let sent = Instant::now();
    if let Ok(mut l) = rec.lags.lock() {
        l.push(sent.saturating_duration_since(at).as_nanos() as u64);
    }
    let mut builder = Request::post(target.uri.clone()).header(CONTENT_TYPE, "application/json");
    for (name, value) in &target.headers {
        builder = builder.header(name, value);
    }
    let result = match builder.body(Full::new(target.body.clone())) {
        Ok(req) => {
            tokio::time::timeout(target.timeout, async {
                let resp = client.request(req).await.map_err(|e| {
                    if e.is_connect() {
                        "connect".to_owned()
                    } else {
                        "request".to_owned()
                    }
                })?;
                let status = resp.status();
                let mut body = resp.into_body();
                let mut first: Option<Instant> = None;
                // The last bytes of the body, to see the stream's end even if it is split.
                let mut tail: Vec<u8> = Vec::with_capacity(64);
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|_| "body".to_owned())?;
                    if let Some(d) = frame.data_ref() {
                        if d.is_empty() {
                            continue;
                        }
                        first.get_or_insert_with(Instant::now);
                        tail.extend_from_slice(&d[d.len().saturating_sub(32)..]);
                        if tail.len() > 48 {
                            tail.drain(..tail.len() - 32);
                        }
                    }
                }
                let end = Instant::now();
                if !status.is_success() {
                    return Err(format!("http {}", status.as_u16()));
                }
                if target.stream && !contains(&tail, target.end) {
                    return Err(format!(
                        "stream without {}",
                        String::from_utf8_lossy(target.end)
                    ));
                }
                Ok((first.unwrap_or(end), end))
            })
            .await
            .unwrap_or_else(|_| Err("timeout".to_owned()))
        }
        Err(e) => Err(format!("building the request: {e}")),
    };
    match result {
        Ok((first, end)) => {
            if let Ok(mut ok) = rec.ok.lock() {
                ok.push(Sample {
                    latency: end.saturating_duration_since(at).as_nanos() as u64,
                    ttfb: first.saturating_duration_since(at).as_nanos() as u64,
                });
            }
            rec.last_done.fetch_max(
                end.saturating_duration_since(origin).as_nanos() as u64,
                Ordering::Relaxed,
            );
        }
        Err(kind) => rec.error(kind),
    }
    rec.in_flight.fetch_sub(1, Ordering::AcqRel);
}

/// Sends `plan.rate` requests per second to `target` for `plan.duration` and waits for the last
/// answers (at most the request timeout plus a second). Blocks the calling thread.
pub fn run(
    rt: &tokio::runtime::Runtime,
    client: &HttpClient,
    target: &Target,
    plan: Plan,
) -> Result<Outcome> {
    let target = Arc::new(target.clone());
    let rec = Arc::new(Recorder::default());
    let n = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
    let interval_ns = 1e9 / plan.rate;
    let origin = Instant::now() + Duration::from_millis(20);
    let handle = rt.handle().clone();
    let scheduler = {
        let rec = Arc::clone(&rec);
        let client = client.clone();
        let target = Arc::clone(&target);
        std::thread::Builder::new()
            .name("load-scheduler".to_owned())
            .spawn(move || {
                let mut dropped = 0u64;
                for i in 0..n {
                    if rec.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let at = origin + Duration::from_nanos((i as f64 * interval_ns) as u64);
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    if rec.in_flight.load(Ordering::Acquire) >= plan.max_in_flight {
                        dropped += 1;
                        continue;
                    }
                    let now_in_flight = rec.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                    rec.peak_in_flight
                        .fetch_max(now_in_flight, Ordering::Relaxed);
                    handle.spawn(one(
                        client.clone(),
                        Arc::clone(&target),
                        origin,
                        at,
                        Arc::clone(&rec),
                    ));
                }
                dropped
            })
            .context("starting the scheduler thread")?
    };
    let dropped = scheduler
        .join()
        .map_err(|_| anyhow::anyhow!("the scheduler thread panicked"))?;
    // Wait for the answers, bounded by the request timeout.
    let deadline = Instant::now() + target.timeout + Duration::from_secs(1);
    rt.block_on(async {
        while rec.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let unfinished = rec.in_flight.load(Ordering::Acquire) as u64;
    rec.stop.store(true, Ordering::Relaxed);
    let mut errors = rec
        .errors
        .lock()
        .map(|mut e| std::mem::take(&mut *e))
        .unwrap_or_default();
    if unfinished > 0 {
        errors.insert("unfinished".to_owned(), unfinished);
    }
    Ok(Outcome {
        ok: take(&rec.ok),
        errors,
        scheduled: n,
        dropped,
        send_lag: take(&rec.lags),
        wall: Duration::from_nanos(rec.last_done.load(Ordering::Relaxed)),
        peak_in_flight: rec.peak_in_flight.load(Ordering::Relaxed),
    })
}

fn take<T>(m: &Mutex<Vec<T>>) -> Vec<T> {
    m.lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
}

/// Sends one request and returns the status and body (for readiness checks).
pub fn probe(
    rt: &tokio::runtime::Runtime,
    client: &HttpClient,
    target: &Target,
) -> Result<(u16, Bytes)> {
    rt.block_on(async {
        let mut builder =
            Request::post(target.uri.clone()).header(CONTENT_TYPE, "application/json");
        for (name, value) in &target.headers {
            builder = builder.header(name, value);
        }
        let req = builder.body(Full::new(target.body.clone()))?;
        let resp = tokio::time::timeout(target.timeout, client.request(req))
            .await
            .context("timed out")??;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(target.timeout, resp.into_body().collect())
            .await
            .context("timed out reading the body")??
            .to_bytes();
        Ok((status, body))
    })
}

/// A small JSON POST (control endpoints of the mock).
pub fn post_json(
    rt: &tokio::runtime::Runtime,
    client: &HttpClient,
    uri: &str,
    body: String,
) -> Result<u16> {
    let target = Target {
        uri: uri.parse().with_context(|| format!("bad url {uri}"))?,
        body: Bytes::from(body),
        headers: Vec::new(),
        stream: false,
        end: b"",
        timeout: Duration::from_secs(5),
    };
    probe(rt, client, &target).map(|(s, _)| s)
}
