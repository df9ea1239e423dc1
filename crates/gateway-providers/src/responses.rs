//! The OpenAI Responses API (`POST /v1/responses`), passed through.
//!
//! The gateway does not translate Responses requests: an OpenAI-format upstream gets the client's
//! body with only `model` (and `stream`) rewritten and the gateway's `fallbacks` removed, and the
//! answer, or every streamed event, goes back as it came. Only the usage is read, for budgets,
//! rate limits and the request log (wire-formats §1.3).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use gateway_core::provider::{
    ProviderResponse, ProviderStream, StoredResponseKind, StoredResponseOp,
};
use gateway_core::types::{ChatChunk, ChatRequest, ChatResponse, PromptTokensDetails, Usage};
use gateway_core::ProviderError;
use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::anthropic::{native_body, skim_type, sse_text};
use crate::classify::classify;
use crate::headers::rate_limit_info;
use crate::http::{json_request, HttpClient};
use crate::openai::accept_event_stream;
use crate::sse::{SseEvent, SseStream};
use crate::stream::{decode_stream, StreamDecoder};

/// The upstream body of a Responses request ([`ChatRequest::is_responses`]): the client's, with
/// `model` set to the upstream model id and `stream` as this call streams.
pub fn responses_body(
    request: &ChatRequest,
    model: &str,
    stream: bool,
) -> Result<Bytes, ProviderError> {
    let native = request
        .native
        .as_ref()
        .ok_or_else(|| ProviderError::Protocol("a Responses request without its body".into()))?;
    native_body(&native.body, model, stream)
}

/// Sends a non-streamed Responses request for `model` (the upstream's model id or deployment)
/// to `url` and reads the answer ([`parse_response`]).
pub async fn fetch(
    client: &HttpClient,
    url: &str,
    headers: &[(HeaderName, HeaderValue)],
    request: &ChatRequest,
    model: &str,
    timeout: Duration,
) -> Result<ProviderResponse<ChatResponse>, ProviderError> {
    let body = responses_body(request, model, false)?;
    let req = json_request(Method::POST, url, headers, body)?;
    let resp = client.fetch(req, timeout, classify).await?;
    Ok(ProviderResponse {
        body: parse_response(resp.body())?,
        rate_limit: rate_limit_info(resp.headers()),
    })
}

/// Opens a streamed Responses request: its events pass on as they came
/// ([`ResponsesStreamDecoder`]).
pub async fn open_stream(
    client: &HttpClient,
    url: &str,
    headers: &[(HeaderName, HeaderValue)],
    request: &ChatRequest,
    model: &str,
    timeout: Duration,
) -> Result<ProviderStream, ProviderError> {
    let body = responses_body(request, model, true)?;
    let mut req = json_request(Method::POST, url, headers, body)?;
    accept_event_stream(&mut req);
    let resp = client.open_stream(req, timeout, classify).await?;
    let rate_limit = rate_limit_info(resp.headers());
    let events = SseStream::new(resp.into_body()).idle_timeout(timeout);
    Ok(ProviderStream {
        chunks: decode_stream(events, ResponsesStreamDecoder::default()),
        rate_limit,
    })
}

/// Characters escaped in a response id put in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'-')
    .remove(b'.');

/// The URL of `op` under `responses_url` (which may carry a query of its own, such as Azure's
/// `api-version`): `{responses}/{id}`, `/cancel` or `/input_items`, and the client's query.
pub fn stored_url(responses_url: &str, op: &StoredResponseOp) -> String {
    let (path, own_query) = responses_url
        .split_once('?')
        .map_or((responses_url, ""), |(p, q)| (p, q));
    let mut url = format!(
        "{path}/{}",
        percent_encoding::utf8_percent_encode(&op.id, SEGMENT)
    );
    match op.kind {
        StoredResponseKind::Cancel => url.push_str("/cancel"),
        StoredResponseKind::InputItems => url.push_str("/input_items"),
        StoredResponseKind::Retrieve | StoredResponseKind::Delete => {}
    }
    let queries: Vec<&str> = [own_query, op.query.as_str()]
        .into_iter()
        .filter(|q| !q.is_empty())
        .collect();
    if !queries.is_empty() {
        url.push('?');
        url.push_str(&queries.join("&"));
    }
    url
}

/// Sends `op` about a stored response and hands its answer back as it came.
pub async fn stored(
    client: &HttpClient,
    responses_url: &str,
    headers: &[(HeaderName, HeaderValue)],
    op: &StoredResponseOp,
    timeout: Duration,
) -> Result<ProviderResponse<Bytes>, ProviderError> {
    let method = match op.kind {
        StoredResponseKind::Retrieve | StoredResponseKind::InputItems => Method::GET,
        StoredResponseKind::Delete => Method::DELETE,
        StoredResponseKind::Cancel => Method::POST,
    };
    let req = json_request(
        method,
        &stored_url(responses_url, op),
        headers,
        Bytes::new(),
    )?;
    let resp = client.fetch(req, timeout, classify).await?;
    Ok(ProviderResponse {
        rate_limit: rate_limit_info(resp.headers()),
        body: resp.into_body(),
    })
}

#[derive(Deserialize)]
struct Object {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    created_at: u64,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    input_tokens_details: Option<PromptTokensDetails>,
}

impl WireUsage {
    fn canonical(self) -> Usage {
        Usage {
            prompt_tokens: self.input_tokens,
            completion_tokens: self.output_tokens,
            total_tokens: self
                .total_tokens
                .unwrap_or(self.input_tokens.saturating_add(self.output_tokens)),
            prompt_tokens_details: self.input_tokens_details,
            completion_tokens_details: None,
        }
    }
}

/// A non-streamed Responses answer: `raw` is the upstream's body, as it came; `id`, `model`,
/// `created` and `usage` are read from it, nothing else.
pub fn parse_response(body: &Bytes) -> Result<ChatResponse, ProviderError> {
    let o: Object = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Protocol(format!("a Responses answer: {e}")))?;
    Ok(ChatResponse {
        id: o.id,
        object: "response".to_owned(),
        created: o.created_at,
        model: o.model,
        choices: Vec::new(),
        usage: o.usage.map(WireUsage::canonical),
        extra: serde_json::Map::new(),
        raw: Some(body.clone()),
    })
}

/// The events that end a Responses stream; each carries the whole response, usage included.
const FINAL_EVENTS: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// Passes a Responses event stream on as it came: each chunk's `raw` is one event's whole SSE
/// text (`event: …\ndata: …\n\n`; the name is taken from the data's `type` when the upstream
/// wrote no `event:` line); the response's id and model are read into the chunk of
/// `response.created` and of the final event, and the final event's usage into its chunk. The stream is complete at `response.completed`, `response.incomplete`,
/// `response.failed` or `error`; a body that ends before one of them is an error.
#[derive(Debug, Default)]
pub struct ResponsesStreamDecoder {
    done: bool,
}

#[derive(Deserialize)]
struct FinalEvent {
    response: Object,
}

impl StreamDecoder<SseEvent> for ResponsesStreamDecoder {
    fn event(
        &mut self,
        event: SseEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, ProviderError> {
        let data = event.data;
        let name: &[u8] = match &event.event {
            Some(n) => n,
            None => match skim_type(&data) {
                Some(t) => t.as_bytes(),
                None => return Ok(false),
            },
        };
        let name_str = std::str::from_utf8(name).unwrap_or_default();
        let last = FINAL_EVENTS.contains(&name_str);
        // The first event names the response (for continuing it with the same key) and the
        // last one carries the usage.
        let object = if last || name_str == "response.created" {
            serde_json::from_slice::<FinalEvent>(&data)
                .ok()
                .map(|f| f.response)
        } else {
            None
        };
        let mut chunk = ChatChunk::new(String::new(), String::new(), 0);
        if let Some(o) = object {
            chunk.id = o.id;
            chunk.model = o.model;
            chunk.usage = o.usage.filter(|_| last).map(WireUsage::canonical);
        }
        chunk.raw = Some(sse_text(name, &data));
        out.push_back(chunk);
        self.done = last || name_str == "error";
        Ok(self.done)
    }

    fn end(&mut self, _out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError> {
        if self.done {
            return Ok(());
        }
        Err(ProviderError::Protocol(
            "the Responses stream ended before response.completed".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: name.map(|n| Bytes::copy_from_slice(n.as_bytes())),
            data: Bytes::copy_from_slice(data.as_bytes()),
            id: None,
            run: false,
        }
    }

    #[test]
    fn events_pass_as_they_came_and_the_final_one_carries_usage() {
        let mut d = ResponsesStreamDecoder::default();
        let mut out = VecDeque::new();
        assert!(!d
            .event(
                ev(
                    Some("response.created"),
                    r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","model":"m","usage":null}}"#
                ),
                &mut out
            )
            .unwrap());
        let created = out.pop_front().unwrap();
        assert_eq!((created.id.as_str(), created.usage), ("resp_1", None));
        assert!(!d
            .event(
                ev(
                    Some("response.output_text.delta"),
                    r#"{"type":"response.output_text.delta","delta":"Hi","sequence_number":3}"#
                ),
                &mut out
            )
            .unwrap());
        // No `event:` line: the name comes from `type`.
        let done = r#"{"type":"response.completed","sequence_number":4,"response":{"id":"resp_1","model":"m","usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":2},"output_tokens":3,"total_tokens":10}}}"#;
        assert!(d.event(ev(None, done), &mut out).unwrap());
        assert_eq!(
            out[0].raw.as_deref(),
            Some(&b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\",\"sequence_number\":3}\n\n"[..])
        );
        assert_eq!(out[0].usage, None);
        assert_eq!(
            out[1].raw.as_deref(),
            Some(format!("event: response.completed\ndata: {done}\n\n").as_bytes())
        );
        let u = out[1].usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (7, 3, 10)
        );
        assert_eq!(u.prompt_tokens_details.unwrap().cached_tokens, 2);
        assert!(d.end(&mut out).is_ok());
    }

    #[test]
    fn a_stream_cut_before_its_end_is_an_error() {
        let mut d = ResponsesStreamDecoder::default();
        let mut out = VecDeque::new();
        d.event(
            ev(Some("response.created"), r#"{"type":"response.created"}"#),
            &mut out,
        )
        .unwrap();
        assert!(d.end(&mut out).is_err());
        // An `error` event ends it too, and goes to the client.
        let mut d = ResponsesStreamDecoder::default();
        assert!(d
            .event(
                ev(Some("error"), r#"{"type":"error","message":"boom"}"#),
                &mut out
            )
            .unwrap());
        assert!(d.end(&mut out).is_ok());
    }

    #[test]
    fn stored_response_urls() {
        let op = |kind, query: &str| StoredResponseOp {
            id: "resp_1a".into(),
            kind,
            query: query.into(),
        };
        assert_eq!(
            stored_url(
                "http://h/v1/responses",
                &op(StoredResponseKind::Retrieve, "")
            ),
            "http://h/v1/responses/resp_1a"
        );
        assert_eq!(
            stored_url(
                "http://h/openai/v1/responses?api-version=preview",
                &op(StoredResponseKind::InputItems, "limit=5")
            ),
            "http://h/openai/v1/responses/resp_1a/input_items?api-version=preview&limit=5"
        );
        assert_eq!(
            stored_url("http://h/v1/responses", &op(StoredResponseKind::Cancel, "")),
            "http://h/v1/responses/resp_1a/cancel"
        );
        let odd = StoredResponseOp {
            id: "a/b?c".into(),
            ..op(StoredResponseKind::Delete, "")
        };
        assert_eq!(stored_url("http://h/r", &odd), "http://h/r/a%2Fb%3Fc");
    }

    #[test]
    fn the_answer_is_kept_whole_and_its_usage_read() {
        let body = Bytes::from_static(
            br#"{"id":"resp_9","object":"response","created_at":5,"model":"gpt-x","output":[],"usage":{"input_tokens":4,"output_tokens":6}}"#,
        );
        let r = parse_response(&body).unwrap();
        assert_eq!(r.raw.as_ref(), Some(&body));
        assert_eq!(r.id, "resp_9");
        assert_eq!(r.usage.unwrap().total_tokens, 10);
        assert!(parse_response(&Bytes::from_static(b"not json")).is_err());
    }
}
