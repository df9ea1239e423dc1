//! The listener, the router and the request pipeline.
//!
//! One request goes: route by path → authenticate in the dialect's way → count → base latency
//! and `hang` → parse and validate the body → record it → rate-limit window → faults
//! (`rate_limit_always`, `quota_exhausted`, `error_rate`, `malformed`) → render the answer
//! (whole, or as paced stream events with the stream faults applied).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::body::{MockBody, Step};
use crate::dialect::{
    self, anthropic, bedrock, cohere, completions, google, openai, responses, Ctx, ErrorKind,
};
use crate::format::unix_now;
use crate::plan::{self, chars_of, tokens_for_chars, Plan, Prompt};
use crate::sigv4::{self, SigV4Error, SignedRequest};
use crate::state::{LimitKind, Shared};
use crate::vertex::{self, TokenProblem};
use crate::{Dialect, Faults, RecordedRequest};

/// Waits until the server is told to stop (or every handle is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Accepts connections until shutdown, then closes them all.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let mut stop = shutdown.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(shared, req).await) }
                        });
                        let builder = auto::Builder::new(TokioExecutor::new());
                        let conn = builder.serve_connection(TokioIo::new(stream), svc);
                        tokio::select! {
                            _ = conn => {}
                            () = stopped(&mut stop) => {}
                        }
                    });
                }
                // Out of file descriptors and the like: back off briefly.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// What a provider path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Chat,
    /// OpenAI Responses API.
    Responses,
    /// OpenAI's legacy Completions API.
    Completions,
    /// A stored Responses answer (`/responses/{id}`...), its id in `Call::path_model`.
    StoredResponse(StoredOp),
    Embed,
    BatchEmbed,
    Models,
    CountTokens,
    /// OpenAI's other endpoints: moderations, image generation, speech.
    Other(OtherOp),
}

/// OpenAI endpoints beyond chat and embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OtherOp {
    Moderations,
    Images,
    Speech,
    /// Transcriptions and translations: a `multipart/form-data` upload.
    Transcribe,
}

/// What is asked of a stored Responses answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoredOp {
    Retrieve,
    Delete,
    Cancel,
    InputItems,
}

#[derive(Debug)]
struct Call {
    dialect: Dialect,
    op: Op,
    /// Model from the path (Gemini, Vertex, Bedrock) or the Azure deployment.
    path_model: Option<String>,
    /// Streaming decided by the path (Gemini, Vertex, Bedrock).
    path_stream: bool,
    /// Gemini streams with `alt=sse`.
    sse: bool,
    /// Bedrock `InvokeModel` (an Anthropic body) rather than Converse.
    invoke: bool,
}

impl Call {
    fn new(dialect: Dialect, op: Op) -> Self {
        Self {
            dialect,
            op,
            path_model: None,
            path_stream: false,
            sse: true,
            invoke: false,
        }
    }
}

#[derive(Debug)]
enum Route {
    Stats,
    Faults,
    Reset,
    Token,
    Provider(Call),
    NotFound,
}

fn google_route(dialect: Dialect, tail: &str, query: Option<&str>) -> Route {
    let Some((model, method)) = tail.rsplit_once(':') else {
        return Route::NotFound;
    };
    let model = percent_decode_str(model).decode_utf8_lossy().into_owned();
    let alt_sse = query.is_some_and(|q| q.split('&').any(|p| p == "alt=sse"));
    let (op, stream) = match method {
        "generateContent" => (Op::Chat, false),
        "streamGenerateContent" => (Op::Chat, true),
        "embedContent" => (Op::Embed, false),
        "batchEmbedContents" => (Op::BatchEmbed, false),
        "countTokens" => (Op::CountTokens, false),
        _ => return Route::NotFound,
    };
    Route::Provider(Call {
        dialect,
        op,
        path_model: Some(model),
        path_stream: stream,
        sse: alt_sse,
        invoke: false,
    })
}

fn route(method: &Method, path: &str, query: Option<&str>, parts: &Parts) -> Route {
    let get = method == Method::GET;
    let post = method == Method::POST;
    let provider = |d, op| Route::Provider(Call::new(d, op));
    match path {
        "/_mock/stats" if get => return Route::Stats,
        "/_mock/faults" if post => return Route::Faults,
        "/_mock/reset" if post => return Route::Reset,
        "/token" if post => return Route::Token,
        "/v1/messages" if post => return provider(Dialect::Anthropic, Op::Chat),
        "/v1/messages/count_tokens" if post => {
            return provider(Dialect::Anthropic, Op::CountTokens)
        }
        "/v1/models" if get => {
            return if parts.headers.contains_key("anthropic-version") {
                provider(Dialect::Anthropic, Op::Models)
            } else {
                provider(Dialect::OpenAi, Op::Models)
            }
        }
        "/v1beta/models" if get => return provider(Dialect::Gemini, Op::Models),
        "/v2/chat" if post => return provider(Dialect::Cohere, Op::Chat),
        "/v2/embed" if post => return provider(Dialect::Cohere, Op::Embed),
        _ => {}
    }
    if post {
        if let Some(rest) = path.strip_prefix("/model/") {
            let Some((id, action)) = rest.split_once('/') else {
                return Route::NotFound;
            };
            let path_model = percent_decode_str(id).decode_utf8_lossy().into_owned();
            let (op, stream, invoke) = match action {
                "converse" => (Op::Chat, false, false),
                "converse-stream" => (Op::Chat, true, false),
                "invoke" if bedrock::is_embed_model(&path_model) => (Op::Embed, false, true),
                "invoke" => (Op::Chat, false, true),
                "invoke-with-response-stream" => (Op::Chat, true, true),
                "count-tokens" => (Op::CountTokens, false, false),
                _ => return Route::NotFound,
            };
            return Route::Provider(Call {
                dialect: Dialect::Bedrock,
                op,
                path_model: Some(path_model),
                path_stream: stream,
                sse: false,
                invoke,
            });
        }
        if let Some(rest) = path.strip_prefix("/openai/deployments/") {
            let Some((deployment, action)) = rest.split_once('/') else {
                return Route::NotFound;
            };
            let op = match action {
                "chat/completions" => Op::Chat,
                "embeddings" => Op::Embed,
                "images/generations" => Op::Other(OtherOp::Images),
                "audio/speech" => Op::Other(OtherOp::Speech),
                "audio/transcriptions" | "audio/translations" => Op::Other(OtherOp::Transcribe),
                _ => return Route::NotFound,
            };
            let mut call = Call::new(Dialect::Azure, op);
            call.path_model = Some(
                percent_decode_str(deployment)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
            return Route::Provider(call);
        }
        const PUBLISHER: &str = "/publishers/google/models/";
        if path.starts_with("/v1/projects/") || path.starts_with("/v1beta1/projects/") {
            return match path.find(PUBLISHER) {
                Some(i) => google_route(Dialect::Vertex, &path[i + PUBLISHER.len()..], query),
                None => Route::NotFound,
            };
        }
        for prefix in ["/v1beta/models/", "/v1/models/"] {
            if let Some(tail) = path.strip_prefix(prefix) {
                return google_route(Dialect::Gemini, tail, query);
            }
        }
        if path.ends_with("/chat/completions") {
            return provider(Dialect::OpenAi, Op::Chat);
        }
        if path.ends_with("/completions") {
            return provider(Dialect::OpenAi, Op::Completions);
        }
        if path.ends_with("/responses") {
            return provider(Dialect::OpenAi, Op::Responses);
        }
        if let Some(r) = stored_response_route(path, StoredOp::Cancel, "/cancel") {
            return r;
        }
        if path.ends_with("/embeddings") {
            return provider(Dialect::OpenAi, Op::Embed);
        }
        for (suffix, op) in [
            ("/moderations", OtherOp::Moderations),
            ("/images/generations", OtherOp::Images),
            ("/audio/speech", OtherOp::Speech),
            ("/audio/transcriptions", OtherOp::Transcribe),
            ("/audio/translations", OtherOp::Transcribe),
        ] {
            if path.ends_with(suffix) {
                return provider(Dialect::OpenAi, Op::Other(op));
            }
        }
    }
    if get && path.ends_with("/models") {
        return provider(Dialect::OpenAi, Op::Models);
    }
    if get {
        if let Some(r) = stored_response_route(path, StoredOp::InputItems, "/input_items")
            .or_else(|| stored_response_route(path, StoredOp::Retrieve, ""))
        {
            return r;
        }
    }
    if method == Method::DELETE {
        if let Some(r) = stored_response_route(path, StoredOp::Delete, "") {
            return r;
        }
    }
    Route::NotFound
}

/// `…/responses/{id}{suffix}`: a call about a stored Responses answer.
fn stored_response_route(path: &str, op: StoredOp, suffix: &str) -> Option<Route> {
    let (_, rest) = path.split_once("/responses/")?;
    let id = rest.strip_suffix(suffix)?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    let mut call = Call::new(Dialect::OpenAi, Op::StoredResponse(op));
    call.path_model = Some(percent_decode_str(id).decode_utf8_lossy().into_owned());
    Some(Route::Provider(call))
}

fn respond(
    status: u16,
    content_type: &str,
    body: MockBody,
    headers: &[(&'static str, String)],
) -> Response<MockBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(hyper::header::CONTENT_TYPE, v);
    }
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.append(n, v);
        }
    }
    resp
}

fn json_response(status: u16, body: impl Into<Bytes>) -> Response<MockBody> {
    respond(status, "application/json", MockBody::full(body.into()), &[])
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return json_response(
                400,
                r#"{"error":{"message":"could not read the request body"}}"#,
            )
        }
    };
    let path = parts.uri.path().to_owned();
    match route(&parts.method, &path, parts.uri.query(), &parts) {
        Route::Stats => json_response(200, stats(&shared)),
        Route::Faults => set_faults(&shared, &body),
        Route::Reset => {
            shared.reset_all();
            json_response(200, r#"{"ok":true}"#)
        }
        Route::Token => {
            let answer = vertex::issue_token(&shared, &body);
            respond(
                answer.status,
                "application/json; charset=utf-8",
                MockBody::full(answer.body),
                &[("cache-control", "no-cache, no-store, max-age=0, must-revalidate".to_owned())],
            )
        }
        Route::Provider(call) => provider(&shared, call, &parts, body).await,
        Route::NotFound => json_response(
            404,
            json!({ "error": { "message": format!("mock: no route for {} {path}", parts.method), "type": "invalid_request_error", "code": "not_found" } })
                .to_string(),
        ),
    }
}

fn stats(shared: &Shared) -> String {
    let per_key: serde_json::Map<String, Value> = shared
        .per_key_counts()
        .into_iter()
        .map(|(k, n)| (k, json!(n)))
        .collect();
    let per_dialect: serde_json::Map<String, Value> = Dialect::ALL
        .iter()
        .map(|d| {
            (
                d.name().to_owned(),
                json!(shared.per_dialect[d.index()].load(Ordering::Relaxed)),
            )
        })
        .collect();
    json!({
        "total": shared.total.load(Ordering::Relaxed),
        "token_fetches": shared.tokens.fetches.load(Ordering::Relaxed),
        "per_key": per_key,
        "per_dialect": per_dialect,
        "faults": &**shared.faults.load(),
    })
    .to_string()
}

fn set_faults(shared: &Shared, body: &[u8]) -> Response<MockBody> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return json_response(400, json!({ "error": e.to_string() }).to_string()),
    };
    if let (Some(key), Some(faults)) = (value["key"].as_str(), value.get("faults")) {
        match serde_json::from_value::<Faults>(faults.clone()) {
            Ok(f) => shared.set_key_faults(key, f),
            Err(e) => return json_response(400, json!({ "error": e.to_string() }).to_string()),
        }
    } else {
        match serde_json::from_value::<Faults>(value) {
            Ok(f) => shared.faults.store(Arc::new(f)),
            Err(e) => return json_response(400, json!({ "error": e.to_string() }).to_string()),
        }
    }
    json_response(200, r#"{"ok":true}"#)
}

type AuthResult = (Option<String>, Result<(), ErrorKind>);

fn key_check(shared: &Shared, key: Option<&str>, allow_missing: bool) -> AuthResult {
    match key.map(str::trim).filter(|k| !k.is_empty()) {
        None if allow_missing => (Some(String::new()), Ok(())),
        None => (None, Err(ErrorKind::MissingKey)),
        Some(k) if shared.api_key_ok(k) => (Some(k.to_owned()), Ok(())),
        Some(k) => (Some(k.to_owned()), Err(ErrorKind::InvalidKey(k.to_owned()))),
    }
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

fn sig_error(e: SigV4Error) -> ErrorKind {
    match e {
        SigV4Error::Invalid(m) => ErrorKind::Signature("InvalidSignatureException", m),
        SigV4Error::Incomplete(m) => ErrorKind::Signature("IncompleteSignatureException", m),
    }
}

/// Finds the credential the dialect uses and checks it; returns the key to count under.
fn authenticate(shared: &Shared, call: &Call, parts: &Parts, body: &[u8]) -> AuthResult {
    let bearer = header(parts, "authorization").and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    });
    match call.dialect {
        Dialect::OpenAi => key_check(
            shared,
            bearer.or_else(|| header(parts, "api-key")),
            shared.config.api_keys.is_empty(),
        ),
        Dialect::Azure => key_check(shared, header(parts, "api-key").or(bearer), false),
        Dialect::Anthropic => key_check(shared, header(parts, "x-api-key").or(bearer), false),
        Dialect::Cohere => key_check(shared, bearer, false),
        Dialect::Gemini => {
            let query_key = parts
                .uri
                .query()
                .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("key=")));
            let decoded = query_key.map(|k| percent_decode_str(k).decode_utf8_lossy().into_owned());
            key_check(
                shared,
                header(parts, "x-goog-api-key").or(decoded.as_deref()),
                false,
            )
        }
        Dialect::Vertex => {
            let token = bearer.map(str::trim);
            match vertex::check_token(shared, token) {
                Ok(()) => (token.map(str::to_owned), Ok(())),
                Err(TokenProblem::Missing) => (None, Err(ErrorKind::MissingKey)),
                Err(TokenProblem::Unknown) => {
                    (token.map(str::to_owned), Err(ErrorKind::TokenInvalid))
                }
                Err(TokenProblem::Expired) => {
                    (token.map(str::to_owned), Err(ErrorKind::TokenExpired))
                }
            }
        }
        Dialect::Bedrock => {
            let Some(authz) = header(parts, "authorization") else {
                return (None, Err(ErrorKind::MissingKey));
            };
            if bearer.is_some() {
                return key_check(shared, bearer, false);
            }
            let auth = match sigv4::parse_authorization(authz) {
                Ok(a) => a,
                Err(e) => return (None, Err(sig_error(e))),
            };
            let akid = auth.access_key_id.clone();
            if shared.config.aws_keys.is_empty() {
                return (Some(akid), Ok(()));
            }
            let Some(secret) = shared.config.aws_keys.get(&akid) else {
                return (Some(akid.clone()), Err(ErrorKind::InvalidKey(akid)));
            };
            let req = SignedRequest {
                method: parts.method.as_str(),
                raw_path: parts.uri.path(),
                raw_query: parts.uri.query(),
                headers: &parts.headers,
                authority: parts.uri.authority().map(|a| a.as_str()),
                body,
            };
            let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
            (
                Some(akid),
                sigv4::verify(&req, &auth, secret, now).map_err(sig_error),
            )
        }
    }
}

fn ms(v: Option<u64>) -> Duration {
    Duration::from_millis(v.unwrap_or(0))
}

/// Deterministic error rate: the k-th request fails when `floor(k * rate)` steps up.
fn should_fail(rate: f64, counter: &AtomicU64) -> bool {
    if rate.is_nan() || rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    let n = counter.fetch_add(1, Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let (a, b) = ((n as f64 * rate).floor(), ((n + 1) as f64 * rate).floor());
    b > a
}

fn error_response(
    d: Dialect,
    e: &ErrorKind,
    seq: u64,
    mut headers: Vec<(&'static str, String)>,
) -> Response<MockBody> {
    let r = dialect::error(d, e, seq);
    headers.extend(r.headers);
    respond(
        r.status,
        "application/json",
        MockBody::full(r.body),
        &headers,
    )
}

fn recorded(d: Dialect, parts: &Parts, body: Value) -> Arc<RecordedRequest> {
    Arc::new(RecordedRequest {
        dialect: d,
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    })
}

/// Parses the request into a prompt and finds the first validation error.
fn prepare(call: &Call, parts: &Parts, value: &Value) -> (Option<Prompt>, Option<ErrorKind>) {
    let model = call.path_model.as_deref().unwrap_or_default();
    match (call.dialect, call.op) {
        (_, Op::Models) => (None, None),
        (Dialect::OpenAi, Op::Chat) => (
            Some(openai::parse_chat(value, None)),
            openai::validate_chat(value),
        ),
        (Dialect::OpenAi, Op::Responses) => {
            (Some(responses::parse(value)), responses::validate(value))
        }
        (Dialect::OpenAi, Op::Completions) => (
            Some(completions::parse(value)),
            completions::validate(value),
        ),
        (Dialect::Azure, op) => {
            let has_version = parts.uri.query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p.starts_with("api-version=") && p.len() > 12)
            });
            if !has_version {
                return (
                    None,
                    Some(ErrorKind::BadRequest(
                        "Missing API version parameter. Please add the api-version query parameter to the request URL (e.g. ?api-version=2024-10-21).".to_owned(),
                    )),
                );
            }
            if op == Op::Chat {
                (
                    Some(openai::parse_chat(value, Some(model))),
                    openai::validate_chat(value),
                )
            } else {
                (None, None)
            }
        }
        (Dialect::Anthropic, op @ (Op::Chat | Op::CountTokens)) => (
            Some(anthropic::parse(value)),
            anthropic::validate(
                value,
                parts.headers.contains_key("anthropic-version"),
                op == Op::CountTokens,
            ),
        ),
        (Dialect::Gemini | Dialect::Vertex, Op::Chat) => (
            Some(google::parse(value, model, call.path_stream)),
            google::validate(value, call.dialect == Dialect::Vertex),
        ),
        (Dialect::Bedrock, Op::Chat) if call.invoke => {
            let mut p = anthropic::parse(value);
            p.model = model.to_owned();
            p.stream = call.path_stream;
            (Some(p), bedrock::validate_invoke(value))
        }
        (Dialect::Bedrock, Op::Chat) => (
            Some(bedrock::parse(value, model, call.path_stream)),
            bedrock::validate(value),
        ),
        // CountTokens: `{"input": {"converse": {messages, system...}}}` is counted as that
        // Converse request would be.
        (Dialect::Bedrock, Op::CountTokens) => match value["input"].get("converse") {
            Some(converse) => (
                Some(bedrock::parse(converse, model, false)),
                bedrock::validate(converse),
            ),
            None => (
                None,
                Some(ErrorKind::BadRequest(
                    "input: one of converse or invokeModel is required (this mock counts converse)"
                        .to_owned(),
                )),
            ),
        },
        (Dialect::Cohere, Op::Chat) => (
            Some(openai::parse_chat(value, None)),
            cohere::validate(value),
        ),
        _ => (None, None),
    }
}

/// A body that is not valid JSON (or, for Bedrock streams, a frame with a bad CRC).
fn malformed(d: Dialect, op: Op, stream: bool, sse: bool) -> (String, MockBody) {
    let sse_ct = "text/event-stream; charset=utf-8".to_owned();
    match (d, stream) {
        (_, true) if op == Op::Responses => (sse_ct, MockBody::full(responses::MALFORMED_STREAM)),
        (_, false) if op == Op::Responses => (
            "application/json".to_owned(),
            MockBody::full(responses::MALFORMED_BODY),
        ),
        (Dialect::Bedrock, true) => (
            "application/vnd.amazon.eventstream".to_owned(),
            MockBody::full(bedrock::malformed_frame()),
        ),
        (Dialect::Anthropic, true) => (
            sse_ct,
            MockBody::full(
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\n\n",
            ),
        ),
        (Dialect::Cohere, true) => (
            sse_ct,
            MockBody::full(
                "event: message-start\ndata: {\"type\":\"message-start\",\"delta\":\n\n",
            ),
        ),
        (Dialect::Gemini | Dialect::Vertex, true) if !sse => (
            "application/json; charset=UTF-8".to_owned(),
            MockBody::full("[{\"candidates\": [{\"content\": "),
        ),
        (Dialect::Gemini | Dialect::Vertex, true) => (
            sse_ct,
            MockBody::full("data: {\"candidates\": [{\"content\": \r\n\r\n"),
        ),
        (_, true) => (
            sse_ct,
            MockBody::full("data: {\"id\":\"chatcmpl-malformed\",\"choices\":[{\"delta\":\n\n"),
        ),
        (_, false) => (
            "application/json".to_owned(),
            MockBody::full("{\"id\":\"mock-malformed\",\"choices\":[{\"index\":0,\"message\":"),
        ),
    }
}

async fn provider(
    shared: &Arc<Shared>,
    call: Call,
    parts: &Parts,
    body: Bytes,
) -> Response<MockBody> {
    let seq = shared.next_seq();
    let d = call.dialect;
    let (key, auth) = authenticate(shared, &call, parts, &body);
    let entry = key.as_deref().map(|k| shared.entry(k));
    shared.count(d, entry.as_deref());
    let key_faults = entry.as_ref().and_then(|e| e.faults.load_full());
    let (faults, fault_seq): (Arc<Faults>, &AtomicU64) = match (&key_faults, &entry) {
        (Some(f), Some(e)) => (f.clone(), &e.fault_seq),
        _ => (shared.faults.load_full(), &shared.fault_seq),
    };

    let latency = shared.timing.latency() + ms(faults.latency_ms);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if faults.hang {
        let mut stop = shared.shutdown.clone();
        stopped(&mut stop).await;
        return respond(503, "application/json", MockBody::empty(), &[]);
    }

    let mut headers: Vec<(&'static str, String)> = Vec::with_capacity(12);
    dialect::common_headers(d, seq, &mut headers);
    if call.op == Op::Other(OtherOp::Transcribe) {
        if let Err(e) = auth {
            return error_response(d, &e, seq, headers);
        }
        let content_type = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return match openai::transcription(content_type, &body) {
            Ok((ct, text)) => respond(200, ct, MockBody::full(text), &headers),
            Err(e) => error_response(d, &e, seq, headers),
        };
    }
    let parsed: Result<Value, String> = if body.is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    };
    if let Err(e) = auth {
        shared.record(recorded(d, parts, parsed.unwrap_or_default()));
        return error_response(d, &e, seq, headers);
    }
    let value = match parsed {
        Ok(v) => v,
        Err(e) => {
            shared.record(recorded(d, parts, Value::Null));
            let e = ErrorKind::BadRequest(format!(
                "We could not parse the JSON body of your request: {e}"
            ));
            return error_response(d, &e, seq, headers);
        }
    };
    let (prompt, invalid) = prepare(&call, parts, &value);
    let plan: Option<Plan> = prompt
        .as_ref()
        .map(|p| plan::plan(&shared.config.reply, p, seq));
    let tokens = match (&plan, call.op) {
        (Some(p), _) => p.total_tokens(),
        (None, Op::Embed | Op::BatchEmbed) => tokens_for_chars(chars_of(&value)),
        (None, _) => 0,
    };
    let rec = recorded(d, parts, value);
    shared.record(rec.clone());
    let value = &rec.body;

    let mut snap = entry.as_ref().map(|e| e.rate_check(tokens));
    let mut refusal = invalid;
    if refusal.is_none() {
        if let Some(kind) = snap.as_ref().and_then(|s| s.limited) {
            refusal = snap.as_ref().map(|s| ErrorKind::rate_limited(s, kind));
        }
    }
    if refusal.is_none() && faults.rate_limit_always {
        let retry = ms(Some(faults.retry_after_ms.unwrap_or(1000)));
        if let Some(s) = snap.as_mut() {
            s.req_remaining = 0;
            s.reset = retry;
            s.reset_unix = unix_now() + crate::format::ceil_secs(retry);
            refusal = Some(ErrorKind::rate_limited(s, LimitKind::Requests));
        }
    }
    if let Some(s) = &snap {
        dialect::rate_headers(d, s, &mut headers);
    }
    if refusal.is_none() && faults.quota_exhausted {
        refusal = Some(ErrorKind::Quota);
    }
    if refusal.is_none() && should_fail(faults.error_rate, fault_seq) {
        refusal = Some(ErrorKind::Server(faults.error_status.unwrap_or(500)));
    }
    if let Some(e) = refusal {
        return error_response(d, &e, seq, headers);
    }

    let stream = prompt.as_ref().is_some_and(|p| p.stream)
        && matches!(call.op, Op::Chat | Op::Responses | Op::Completions);
    if faults.malformed {
        let (ct, body) = malformed(d, call.op, stream, call.sse);
        return respond(200, &ct, body, &headers);
    }

    let ctx = Ctx {
        dialect: d,
        model: prompt
            .as_ref()
            .map_or(call.path_model.as_deref().unwrap_or_default(), |p| &p.model),
        created: unix_now(),
        include_usage: prompt.as_ref().is_some_and(|p| p.include_usage),
        sse: call.sse,
        invoke: call.invoke,
        responses: (call.op == Op::Responses).then_some(value),
        completions: call.op == Op::Completions,
    };
    let model_name = ctx.model.to_owned();
    let rendered: Result<String, ErrorKind> = match (call.op, &plan) {
        (Op::StoredResponse(op), _) => Ok(responses::stored_json(
            &ctx,
            call.path_model.as_deref().unwrap_or_default(),
            &shared.config.reply.text,
            op == StoredOp::Cancel,
            match op {
                StoredOp::Retrieve | StoredOp::Cancel => responses::Stored::Response,
                StoredOp::Delete => responses::Stored::Deleted,
                StoredOp::InputItems => responses::Stored::InputItems,
            },
        )),
        (Op::Models, _) => Ok(match d {
            Dialect::Anthropic => anthropic::models_json(),
            Dialect::Gemini | Dialect::Vertex => google::models_json(),
            _ => openai::models_json(),
        }),
        (Op::Embed, _) => match d {
            Dialect::Bedrock => {
                bedrock::embed_json(&model_name, value, seq).map(|(body, tokens)| {
                    headers.push(("x-amzn-bedrock-input-token-count", tokens.to_string()));
                    body
                })
            }
            Dialect::Gemini | Dialect::Vertex => Ok(google::embed_json(value)),
            Dialect::Cohere => cohere::embed_json(value, seq),
            _ => openai::embeddings_json(
                value,
                call.path_model
                    .as_deref()
                    .or_else(|| value["model"].as_str())
                    .unwrap_or_default(),
            ),
        },
        (Op::BatchEmbed, _) => google::batch_embed_json(value),
        (Op::Other(OtherOp::Moderations), _) => openai::moderations_json(value, seq),
        (Op::Other(OtherOp::Images), _) => openai::images_json(value),
        // Answered before the body is read as JSON (`transcription`).
        (Op::Other(OtherOp::Speech | OtherOp::Transcribe), _) => Ok(String::new()),
        (Op::CountTokens, Some(p)) if d == Dialect::Anthropic => {
            Ok(anthropic::count_tokens_json(p))
        }
        (Op::CountTokens, Some(p)) if d == Dialect::Bedrock => {
            Ok(serde_json::json!({ "inputTokens": p.prompt_tokens }).to_string())
        }
        (Op::CountTokens, _) => Ok(google::count_tokens_json(value)),
        (Op::Chat | Op::Responses | Op::Completions, Some(p)) if stream => {
            return stream_response(shared, &ctx, p, &faults, headers);
        }
        (Op::Completions, Some(p)) => Ok(completions::json_body(&ctx, p)),
        (Op::Chat, Some(p)) => Ok(match d {
            Dialect::OpenAi | Dialect::Azure => openai::chat_json(&ctx, p),
            Dialect::Anthropic => anthropic::chat_json(&ctx, p),
            Dialect::Gemini | Dialect::Vertex => google::chat_json(&ctx, p),
            Dialect::Bedrock if call.invoke => anthropic::chat_json(&ctx, p),
            Dialect::Bedrock => bedrock::chat_json(p),
            Dialect::Cohere => cohere::chat_json(p),
        }),
        (Op::Responses, Some(p)) => Ok(responses::json_body(&ctx, p, value)),
        (Op::Chat | Op::Responses | Op::Completions, None) => Err(ErrorKind::NotFound(model_name)),
    };
    if let Op::Other(OtherOp::Speech) = call.op {
        // Speech answers audio, not JSON.
        return match openai::speech_audio(value) {
            Ok((content_type, audio)) => {
                respond(200, content_type, MockBody::full(audio), &headers)
            }
            Err(e) => error_response(d, &e, seq, headers),
        };
    }
    match rendered {
        Ok(body) => respond(200, "application/json", MockBody::full(body), &headers),
        Err(e) => error_response(d, &e, seq, headers),
    }
}

fn stream_response(
    shared: &Shared,
    ctx: &Ctx<'_>,
    plan: &Plan,
    faults: &Faults,
    mut headers: Vec<(&'static str, String)>,
) -> Response<MockBody> {
    let d = ctx.dialect;
    let frames = match d {
        Dialect::OpenAi | Dialect::Azure => match ctx.responses {
            Some(req) => responses::stream(ctx, plan, req),
            None if ctx.completions => completions::stream(ctx, plan),
            None => openai::chat_stream(ctx, plan),
        },
        Dialect::Anthropic => anthropic::chat_stream(ctx, plan),
        Dialect::Gemini | Dialect::Vertex => google::chat_stream(ctx, plan),
        Dialect::Bedrock if ctx.invoke => {
            bedrock::invoke_stream(&anthropic::chat_stream(ctx, plan))
        }
        Dialect::Bedrock => bedrock::chat_stream(plan),
        Dialect::Cohere => cohere::chat_stream(plan),
    };
    let mut steps: Vec<Step> = frames.into_iter().map(Step::Data).collect();
    if let Some(n) = faults.mid_stream_error_after.filter(|n| *n < steps.len()) {
        steps.truncate(n);
        let status = faults.error_status.unwrap_or(500);
        steps.push(Step::Data(dialect::stream_error(ctx, status, n)));
    } else if let Some(n) = faults.disconnect_after_chunks.filter(|n| *n < steps.len()) {
        steps.truncate(n);
        steps.push(Step::Abort);
    }
    let content_type = match d {
        Dialect::Bedrock => "application/vnd.amazon.eventstream",
        Dialect::Gemini | Dialect::Vertex if !ctx.sse => "application/json; charset=UTF-8",
        _ => "text/event-stream; charset=utf-8",
    };
    if content_type.starts_with("text/event-stream") {
        headers.push(("cache-control", "no-cache".to_owned()));
    }
    let ttft = shared.timing.ttft() + ms(faults.ttft_ms);
    let gap = shared.timing.chunk_delay() + ms(faults.chunk_delay_ms);
    respond(
        200,
        content_type,
        MockBody::paced(steps, ttft, gap),
        &headers,
    )
}
