//! OpenTelemetry traces over OTLP/HTTP (protobuf).
//!
//! For every sampled request: one `SERVER` span with the request's own ids
//! ([`TraceContext`](gateway_core::observe::TraceContext): trace id, span id, and the client's span
//! as remote parent), and one `CLIENT` child span per upstream attempt whose span id is
//! `AttemptRecord::span_id`, the very id the gateway forwarded upstream in `traceparent`. Because
//! the ids are given, spans are built as `SpanData` (the SDK's export form) rather than through a
//! `Tracer`, whose id generator would invent new ones; they are exported by opentelemetry-otlp's
//! `SpanExporter` over opentelemetry-http's hyper client (no reqwest, no tonic).
//!
//! Attributes follow the GenAI semantic conventions (`gen_ai.system`, `gen_ai.operation.name`,
//! `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`) plus `gateway.provider`, `gateway.key` (the key's name),
//! `http.response.status_code` and `error.type`; failed attempts and 5xx requests carry an error
//! status with a scrubbed description.
//!
//! Export is off the hot path: the observer builds nothing but an `Arc` of the record and
//! `try_send`s it to a bounded queue (dropped and counted in `gateway_trace_spans_dropped_total`
//! when full); a dedicated thread with its own single-threaded tokio runtime turns records into
//! spans and exports them in batches of up to [`MAX_BATCH_SPANS`] or every [`EXPORT_EVERY`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_core::observe::{AttemptRecord, RequestRecord};
use metrics::Counter;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use tokio::sync::{mpsc, oneshot};

use crate::record::{attempt_status, Tokens};
use crate::scrub::scrub;
use crate::TelemetryError;

/// Largest span batch.
pub const MAX_BATCH_SPANS: usize = 512;
/// Longest a span waits for its batch.
pub const EXPORT_EVERY: Duration = Duration::from_millis(500);
/// Requests waiting for export before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 4096;

enum Msg {
    Record(Arc<RequestRecord>),
    Flush(oneshot::Sender<()>),
}

/// The sending side of the exporter thread.
pub(crate) struct TraceExporter {
    tx: mpsc::Sender<Msg>,
    dropped: Counter,
}

impl std::fmt::Debug for TraceExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceExporter").finish_non_exhaustive()
    }
}

/// `http://host:4318` gets `/v1/traces` appended; a URL already ending in `/v1/traces` is kept.
pub fn traces_url(endpoint: &str) -> String {
    let e = endpoint.trim().trim_end_matches('/');
    if e.ends_with("/v1/traces") {
        e.to_owned()
    } else {
        format!("{e}/v1/traces")
    }
}

impl TraceExporter {
    /// Builds the OTLP exporter and spawns its thread.
    pub(crate) fn start(
        endpoint: &str,
        protocol: crate::OtlpProtocol,
        service_name: &str,
        dropped: Counter,
        errors: Counter,
    ) -> Result<Self, TelemetryError> {
        let url = traces_url(endpoint);
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(match protocol {
                crate::OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
                crate::OtlpProtocol::HttpJson => Protocol::HttpJson,
            })
            .with_endpoint(url.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| TelemetryError::Otlp(format!("{url}: {e}")))?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(service_name.to_owned())
                .build(),
        );
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let scope = InstrumentationScope::builder("gateway-telemetry")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        // The runtime is built and dropped on the exporter thread: dropping one inside the
        // caller's async context would panic.
        std::thread::Builder::new()
            .name("gateway-otlp-export".to_owned())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(run(rx, exporter, scope, errors)),
                    Err(e) => tracing::error!(error = %e, "no runtime for the OTLP exporter; traces are dropped"),
                }
            })
            .map_err(TelemetryError::Spawn)?;
        Ok(TraceExporter { tx, dropped })
    }

    /// Queues a finished request's spans; never blocks.
    pub(crate) fn submit(&self, record: Arc<RequestRecord>) {
        let spans = 1 + record
            .attempts
            .iter()
            .filter(|a| a.span_id.is_some())
            .count();
        if self.tx.try_send(Msg::Record(record)).is_err() {
            self.dropped.increment(spans as u64);
        }
    }

    /// Waits until everything queued before the call has been handed to the endpoint.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    buf: &mut Vec<SpanData>,
    errors: &Counter,
) {
    if buf.is_empty() {
        return;
    }
    let batch = std::mem::take(buf);
    let n = batch.len();
    if let Err(e) = exporter.export(batch).await {
        errors.increment(1);
        tracing::warn!(error = %e, spans = n, "OTLP trace export failed");
    }
}

async fn run(
    mut rx: mpsc::Receiver<Msg>,
    exporter: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
    errors: Counter,
) {
    let mut buf: Vec<SpanData> = Vec::new();
    loop {
        match tokio::time::timeout(EXPORT_EVERY, rx.recv()).await {
            Ok(Some(Msg::Record(r))) => {
                buf.extend(spans_for(&r, &scope));
                if buf.len() >= MAX_BATCH_SPANS {
                    export(&exporter, &mut buf, &errors).await;
                }
            }
            Ok(Some(Msg::Flush(done))) => {
                export(&exporter, &mut buf, &errors).await;
                let _ = done.send(());
            }
            Ok(None) => {
                export(&exporter, &mut buf, &errors).await;
                break;
            }
            Err(_) => export(&exporter, &mut buf, &errors).await,
        }
    }
}

fn operation(endpoint: &str) -> &'static str {
    match endpoint {
        "embeddings" => "embeddings",
        // Not GenAI operations the conventions name: the endpoint's own.
        "moderations" => "moderations",
        "images" => "images",
        "speech" => "speech",
        "transcriptions" => "transcriptions",
        "translations" => "translations",
        _ => "chat",
    }
}

fn kv_i64(k: &'static str, v: u64) -> KeyValue {
    KeyValue::new(k, i64::try_from(v).unwrap_or(i64::MAX))
}

/// The spans of one finished request: the request span first, then one per traced attempt.
/// Empty when the request is not traced or not sampled.
pub fn spans_for(r: &RequestRecord, scope: &InstrumentationScope) -> Vec<SpanData> {
    let Some(trace) = r.trace.filter(|t| t.sampled) else {
        return Vec::new();
    };
    let trace_id = TraceId::from(trace.trace_id);
    let request_span = SpanId::from(trace.span_id);
    let ctx = |span: SpanId| {
        SpanContext::new(
            trace_id,
            span,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    };
    let op = operation(r.endpoint);
    let start = UNIX_EPOCH + Duration::from_millis(r.started_at_ms);
    let tokens = Tokens::of(r);
    let serving_kind = r
        .attempts
        .iter()
        .rev()
        .find(|a| a.outcome == "ok")
        .map(|a| Arc::clone(&a.provider_kind));
    let mut attrs = vec![
        KeyValue::new("gen_ai.operation.name", op),
        KeyValue::new("gen_ai.request.model", r.requested_model.clone()),
        KeyValue::new("gateway.request_id", r.request_id.clone()),
        KeyValue::new("gateway.endpoint", r.endpoint),
        KeyValue::new("gateway.stream", r.stream),
        kv_i64("gateway.attempts", r.attempts.len() as u64),
        KeyValue::new("http.response.status_code", i64::from(r.status)),
    ];
    if let Some(kind) = &serving_kind {
        attrs.push(KeyValue::new("gen_ai.system", kind.to_string()));
    }
    if let Some(m) = &r.model {
        attrs.push(KeyValue::new("gen_ai.response.model", m.clone()));
    }
    if let Some(p) = &r.provider {
        attrs.push(KeyValue::new("gateway.provider", p.clone()));
    }
    if let Some(route) = &r.route {
        attrs.push(KeyValue::new("gateway.route", route.clone()));
    }
    if let Some(vk) = &r.virtual_key {
        attrs.push(KeyValue::new("gateway.virtual_key", vk.clone()));
    }
    if r.usage.is_some() {
        attrs.push(kv_i64("gen_ai.usage.input_tokens", tokens.prompt));
        attrs.push(kv_i64("gen_ai.usage.output_tokens", tokens.completion));
    }
    if r.cost_usd > 0.0 {
        attrs.push(KeyValue::new("gateway.cost_usd", r.cost_usd));
    }
    let status = if r.status >= 400 {
        attrs.push(KeyValue::new("error.type", r.status.to_string()));
        if r.status >= 500 {
            Status::error(scrub(r.error.as_deref().unwrap_or("error")).into_owned())
        } else {
            Status::Unset
        }
    } else {
        Status::Unset
    };
    let mut spans = Vec::with_capacity(1 + r.attempts.len());
    spans.push(SpanData {
        span_context: ctx(request_span),
        parent_span_id: trace.parent_span_id.map_or(SpanId::INVALID, SpanId::from),
        parent_span_is_remote: trace.parent_span_id.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(format!("{op} {}", r.requested_model)),
        start_time: start,
        end_time: start + r.duration,
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    });
    let serving = r.attempts.iter().rposition(|a| a.outcome == "ok");
    for (i, a) in r.attempts.iter().enumerate() {
        let Some(span_id) = a.span_id else { continue };
        spans.push(attempt_span(
            a,
            ctx(SpanId::from(span_id)),
            request_span,
            op,
            (serving == Some(i) && r.usage.is_some()).then_some(tokens),
            scope,
        ));
    }
    spans
}

fn attempt_span(
    a: &AttemptRecord,
    ctx: SpanContext,
    parent: SpanId,
    op: &'static str,
    tokens: Option<Tokens>,
    scope: &InstrumentationScope,
) -> SpanData {
    let mut attrs = vec![
        KeyValue::new("gen_ai.operation.name", op),
        KeyValue::new("gen_ai.system", a.provider_kind.to_string()),
        KeyValue::new("gen_ai.request.model", a.model.to_string()),
        KeyValue::new("gateway.provider", a.provider.to_string()),
        KeyValue::new("gateway.key", a.key.to_string()),
        KeyValue::new("gateway.outcome", a.outcome),
        KeyValue::new("gateway.is_retry", a.is_retry),
    ];
    if let Some(from) = &a.fallback_from {
        attrs.push(KeyValue::new("gateway.fallback_from", from.to_string()));
    }
    if let Some(s) = attempt_status(a) {
        attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    if let Some(t) = a.ttft {
        attrs.push(KeyValue::new(
            "gateway.time_to_first_token_ms",
            t.as_secs_f64() * 1000.0,
        ));
    }
    if let Some(t) = tokens {
        attrs.push(kv_i64("gen_ai.usage.input_tokens", t.prompt));
        attrs.push(kv_i64("gen_ai.usage.output_tokens", t.completion));
    }
    let status = match &a.error {
        None => {
            attrs.push(KeyValue::new("gen_ai.response.model", a.model.to_string()));
            Status::Unset
        }
        Some(e) => {
            attrs.push(KeyValue::new("error.type", a.outcome));
            Status::error(scrub(&e.to_string()).into_owned())
        }
    };
    let start: SystemTime = a.started_at;
    SpanData {
        span_context: ctx,
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name: Cow::Owned(format!("{op} {}", a.model)),
        start_time: start,
        end_time: start + a.latency,
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}
