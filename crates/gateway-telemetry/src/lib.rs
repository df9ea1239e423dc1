//! gateway-telemetry: Prometheus metrics, request logs and OTLP traces for the AI gateway.
//!
//! [`Telemetry`] implements gateway-core's [`Observer`] (the engine calls `on_attempt` after every
//! upstream attempt, the server calls `on_finish` when a client request ends) and
//! [`AdminRoutes`] (`/admin/logs`, `/admin/stats`). Nothing on the request path blocks or does I/O:
//!
//! - **metrics** ([`metrics`](crate::metrics)): counters and histograms on a per-instance
//!   Prometheus recorder (atomic updates); key and provider gauges are refreshed from
//!   [`Engine::health`] when `/metrics` is rendered;
//! - **request logs** ([`record`], [`store`]): the record is cloned into a bounded queue (dropped and
//!   counted when full) that a dedicated thread writes to SQLite in batches, one transaction each,
//!   and optionally prints as JSON lines;
//! - **traces** ([`otlp`]): the same record goes to a second bounded queue; a dedicated exporter
//!   thread builds a server span per request and a client span per attempt, with exactly the ids
//!   the gateway forwarded upstream, and ships them over OTLP/HTTP.
//!
//! Where it comes from: Bifrost's per-request log rows and Prometheus names, the OpenTelemetry
//! GenAI semantic conventions for span attributes.
//!
//! ```no_run
//! # async fn demo(engine: std::sync::Arc<gateway_core::Engine>) -> Result<(), gateway_telemetry::TelemetryError> {
//! use gateway_telemetry::{Telemetry, TelemetryConfig};
//!
//! let telemetry = Telemetry::start(TelemetryConfig {
//!     data_dir: "data".into(),
//!     otlp_endpoint: Some("http://127.0.0.1:4318".into()),
//!     ..TelemetryConfig::default()
//! })?;
//! let observer = telemetry.observer(); // give it to the engine / server
//! let admin = telemetry.admin_routes(); // `/admin/logs`, `/admin/stats`
//! telemetry.attach_engine(&engine); // key gauges on every scrape
//! let render = telemetry.metrics_renderer(); // `GET /metrics`
//! println!("{}", render());
//! telemetry.flush().await; // at shutdown: everything queued is written and exported
//! # let _ = (observer, admin);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod metrics;
pub mod otlp;
pub mod record;
pub mod scrub;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod time;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use gateway_core::extend::AdminRoutes;
use gateway_core::observe::{AttemptRecord, Observer, RequestRecord};
use gateway_core::Engine;
use rusqlite::Connection;
use serde_json::{json, Value};

pub use crate::record::{AttemptEntry, LogEntry, Tokens};
pub use crate::store::{LogQuery, Stats, StatusFilter};

use crate::metrics::Metrics;
use crate::otlp::TraceExporter;
use crate::writer::{LogWriter, WriterSettings};

/// File name of the request-log store inside `data_dir`.
pub const LOG_DB: &str = "logs.db";

/// Telemetry settings (from `[logging]` and `[telemetry]`).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Directory of the request-log store (`logs.db`); created if missing.
    pub data_dir: PathBuf,
    /// One JSON line per request on stdout (`[logging] stdout = "json"`).
    pub stdout_json: bool,
    /// Keep prompt and completion in the logs (`[logging] content = true`).
    pub log_content: bool,
    /// Delete request logs older than this many days.
    pub retention_days: Option<u64>,
    /// Keep at most this many request logs.
    pub retention_rows: Option<u64>,
    /// Requests waiting to be written before new ones are dropped.
    pub queue_capacity: usize,
    /// Scheduling priority of the request-log writer thread (`[logging] writer_priority`).
    pub writer_priority: WriterPriority,
    /// OTLP/HTTP endpoint for traces (`http://collector:4318`; `/v1/traces` is appended unless
    /// the URL already ends with it). No traces when unset.
    pub otlp_endpoint: Option<String>,
    /// The OTLP encoding: protobuf (the default, as in the OTLP specification) or JSON.
    pub otlp_protocol: OtlpProtocol,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

/// How spans go to the OTLP endpoint (OTLP over HTTP; gRPC is not built in).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`.
    #[default]
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
}

impl std::str::FromStr for OtlpProtocol {
    type Err = String;

    /// The names of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "http/protobuf" | "" => Ok(OtlpProtocol::HttpProtobuf),
            "http/json" => Ok(OtlpProtocol::HttpJson),
            "grpc" => Err(
                "`grpc` is not supported: send OTLP over HTTP (`http/protobuf` or `http/json`, a collector's port 4318)"
                    .to_owned(),
            ),
            other => Err(format!(
                "unknown OTLP protocol `{other}` (`http/protobuf` or `http/json`)"
            )),
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            data_dir: PathBuf::from("data"),
            stdout_json: false,
            log_content: false,
            retention_days: None,
            retention_rows: None,
            queue_capacity: 10_000,
            writer_priority: WriterPriority::default(),
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::default(),
            service_name: "ai-gateway".to_owned(),
        }
    }
}

/// Scheduling priority of the request-log writer thread.
///
/// The writer turns a batch of records into SQLite rows every 20 ms, about a
/// millisecond of CPU per hundred requests. At normal priority that burst competes with the
/// runtime thread for a core, and a request that becomes ready meanwhile can wait for it: at 5,000
/// RPS on two cores this was most of the p99 (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriterPriority {
    /// Linux `SCHED_IDLE`: the writer runs only on CPU time nothing else wants, and any request
    /// work that wakes up preempts it at once. On a host whose cores are all busy for long the
    /// writer falls behind; the queue ([`TelemetryConfig::queue_capacity`]) absorbs that, and past
    /// it records are dropped and counted. Elsewhere than Linux this is [`WriterPriority::Normal`].
    #[default]
    Idle,
    /// The process's own priority: logs keep up even on a saturated host, at the cost of tail
    /// latency while a batch is written.
    Normal,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request-log store could not be opened.
    #[error("cannot open the request log store {path}: {source}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The OTLP exporter could not be built (bad endpoint).
    #[error("otlp exporter: {0}")]
    Otlp(String),
    /// A background thread could not be started.
    #[error("cannot start a telemetry thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Metrics, request logs and traces of one gateway. Share it as `Arc<Telemetry>`.
pub struct Telemetry {
    config: TelemetryConfig,
    metrics: Metrics,
    logs: LogWriter,
    reader: Arc<Mutex<Connection>>,
    traces: Option<TraceExporter>,
    engine: Mutex<Weak<Engine>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Opens the store, spawns the log writer and (with an endpoint) the OTLP exporter.
    pub fn start(config: TelemetryConfig) -> Result<Arc<Self>, TelemetryError> {
        Self::start_inner(config, Hooks::default())
    }

    fn start_inner(config: TelemetryConfig, hooks: Hooks) -> Result<Arc<Self>, TelemetryError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| TelemetryError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let path = config.data_dir.join(LOG_DB);
        let store_err = |source| TelemetryError::Store {
            path: path.clone(),
            source,
        };
        let conn = store::open(&path).map_err(store_err)?;
        let reader = store::open_reader(&path).map_err(store_err)?;
        let metrics = Metrics::new();
        let logs = LogWriter::start(WriterSettings {
            conn,
            path: path.clone(),
            capacity: config.queue_capacity,
            priority: config.writer_priority,
            json_lines: match hooks.json_lines {
                Some(w) => Some(w),
                None if config.stdout_json => Some(Box::new(std::io::stdout())),
                None => None,
            },
            log_content: config.log_content,
            max_age_ms: config.retention_days.map(|d| d.saturating_mul(86_400_000)),
            max_rows: config.retention_rows,
            dropped: metrics.log_dropped.clone(),
            write_errors: metrics.log_write_errors.clone(),
            metrics: metrics.handle(),
            gate: hooks.gate,
        })
        .map_err(TelemetryError::Spawn)?;
        let traces = match config
            .otlp_endpoint
            .as_deref()
            .filter(|e| !e.trim().is_empty())
        {
            Some(endpoint) => Some(TraceExporter::start(
                endpoint,
                config.otlp_protocol,
                &config.service_name,
                metrics.spans_dropped.clone(),
                metrics.trace_export_errors.clone(),
            )?),
            None => None,
        };
        Ok(Arc::new(Telemetry {
            config,
            metrics,
            logs,
            reader: Arc::new(Mutex::new(reader)),
            traces,
            engine: Mutex::new(Weak::new()),
        }))
    }

    /// The settings it runs with.
    pub fn config(&self) -> &TelemetryConfig {
        &self.config
    }

    /// This telemetry as the engine's and server's observer.
    pub fn observer(self: &Arc<Self>) -> Arc<dyn Observer> {
        Arc::clone(self) as Arc<dyn Observer>
    }

    /// This telemetry's admin routes (`/admin/logs`, `/admin/stats`).
    pub fn admin_routes(self: &Arc<Self>) -> Arc<dyn AdminRoutes> {
        Arc::clone(self) as Arc<dyn AdminRoutes>
    }

    /// Lets [`Telemetry::render`] read key and provider health from `engine` (held weakly: the
    /// engine holds this telemetry as its observer).
    pub fn attach_engine(&self, engine: &Arc<Engine>) {
        if let Ok(mut e) = self.engine.lock() {
            *e = Arc::downgrade(engine);
        }
    }

    /// The Prometheus text, with key and provider gauges from the attached engine, if any.
    pub fn render(&self) -> String {
        let engine = self.engine.lock().ok().and_then(|e| e.upgrade());
        match engine {
            Some(e) => self.render_with(&e),
            None => self.metrics.render(),
        }
    }

    /// The Prometheus text, with key and provider gauges from `engine`.
    pub fn render_with(&self, engine: &Engine) -> String {
        self.metrics.refresh_health(&engine.health());
        self.metrics.render()
    }

    /// A `GET /metrics` renderer for the server's `Extensions::metrics`.
    pub fn metrics_renderer(self: &Arc<Self>) -> Arc<dyn Fn() -> String + Send + Sync> {
        let t = Arc::clone(self);
        Arc::new(move || t.render())
    }

    /// The priority the log writer thread runs at: the one asked for, or
    /// [`WriterPriority::Normal`] when the system refused [`WriterPriority::Idle`].
    pub fn log_writer_priority(&self) -> WriterPriority {
        self.logs.priority()
    }

    /// Request logs dropped because the queue was full.
    pub fn dropped_logs(&self) -> u64 {
        self.logs.dropped()
    }

    /// Waits until every request finished before the call is written to the store (and printed)
    /// and, with traces on, handed to the OTLP endpoint. For tests and shutdown.
    pub async fn flush(&self) {
        self.logs.flush().await;
        if let Some(t) = &self.traces {
            t.flush().await;
        }
    }

    /// Request logs, newest first (what `GET /admin/logs` serves).
    pub async fn logs(&self, query: LogQuery) -> Result<Vec<LogEntry>, rusqlite::Error> {
        let reader = Arc::clone(&self.reader);
        blocking(move || {
            let conn = reader.lock().map_err(|_| poisoned())?;
            store::query_logs(&conn, &query)
        })
        .await
    }

    /// Figures per provider and key over `[since_ms, until_ms]` (what `GET /admin/stats` serves).
    pub async fn stats(&self, since_ms: u64, until_ms: u64) -> Result<Stats, rusqlite::Error> {
        let reader = Arc::clone(&self.reader);
        blocking(move || {
            let conn = reader.lock().map_err(|_| poisoned())?;
            store::stats(&conn, since_ms, until_ms)
        })
        .await
    }

    #[cfg(test)]
    fn start_with_hooks(config: TelemetryConfig, hooks: Hooks) -> Arc<Self> {
        Self::start_inner(config, hooks).unwrap()
    }
}

/// Test seams of the log writer.
#[derive(Default)]
struct Hooks {
    /// Held by a test to keep the writer from taking anything off the queue.
    gate: Option<Arc<Mutex<()>>>,
    /// Replaces stdout for JSON lines.
    json_lines: Option<Box<dyn std::io::Write + Send>>,
}

fn poisoned() -> rusqlite::Error {
    rusqlite::Error::InvalidParameterName("the log reader lock is poisoned".to_owned())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, rusqlite::Error> + Send + 'static,
) -> Result<T, rusqlite::Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(rusqlite::Error::InvalidParameterName(format!(
            "the log query did not finish: {e}"
        ))),
    }
}

impl Observer for Telemetry {
    fn on_attempt(&self, record: &AttemptRecord) {
        self.metrics.on_attempt(record);
    }

    fn on_finish(&self, record: &RequestRecord) {
        self.metrics.on_finish(record);
        let mut r = record.clone();
        if !self.config.log_content {
            r.content = None;
        }
        let r = Arc::new(r);
        if let Some(t) = &self.traces {
            if r.trace.is_some_and(|t| t.sampled) {
                t.submit(Arc::clone(&r));
            }
        }
        self.logs.submit(r);
    }
}

fn store_error(e: &rusqlite::Error) -> (u16, Value) {
    tracing::warn!(error = %e, "request log query failed");
    (
        500,
        json!({"error": {"message": format!("request log store: {e}"), "type": "server_error"}}),
    )
}

/// How long a read of the request log waits for queued records to be written first.
const READ_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[async_trait]
impl AdminRoutes for Telemetry {
    async fn handle(
        &self,
        method: &str,
        path: &str,
        query: &str,
        _body: &[u8],
    ) -> Option<(u16, Value)> {
        let path = path.trim_end_matches('/');
        let is_ours =
            path == "/admin/logs" || path == "/admin/stats" || path.starts_with("/admin/logs/");
        if !is_ours {
            return None;
        }
        if method != "GET" {
            return Some((
                405,
                json!({"error": {"message": format!("method {method} not allowed on {path}"), "type": "invalid_request_error"}}),
            ));
        }
        // Read your writes: records of requests that just ended may still be queued for the
        // writer (which rests between batches at idle priority). Bounded, so a stuck writer
        // cannot hold the admin API.
        let _ = tokio::time::timeout(READ_FLUSH_WAIT, self.logs.flush()).await;
        if path == "/admin/stats" {
            let (since, until) = match admin::stats_window(query) {
                Ok(w) => w,
                Err(m) => return Some(admin::bad_request(m)),
            };
            return Some(match self.stats(since, until).await {
                Ok(s) => (200, serde_json::to_value(s).unwrap_or(Value::Null)),
                Err(e) => store_error(&e),
            });
        }
        if let Some(id) = path.strip_prefix("/admin/logs/") {
            let q = LogQuery {
                request_id: Some(admin::decode(id)),
                limit: 1,
                ..LogQuery::default()
            };
            return Some(match self.logs(q).await {
                Ok(mut v) if !v.is_empty() => (
                    200,
                    serde_json::to_value(v.remove(0)).unwrap_or(Value::Null),
                ),
                Ok(_) => (
                    404,
                    json!({"error": {"message": format!("no request log {id}"), "type": "not_found_error"}}),
                ),
                Err(e) => store_error(&e),
            });
        }
        let q = match admin::log_query(query) {
            Ok(q) => q,
            Err(m) => return Some(admin::bad_request(m)),
        };
        Some(match self.logs(q).await {
            Ok(v) => (200, json!({"data": v})),
            Err(e) => store_error(&e),
        })
    }
}

#[cfg(test)]
mod tests;
