//! OpenAI's legacy Completions API (`POST /v1/completions`), passed through.
//!
//! As with [`crate::responses`], an OpenAI-format upstream gets the client's body with `model`
//! (and `stream`) rewritten and `fallbacks` removed, and the answer or every event goes back as it
//! came. A stream always asks for its usage (`stream_options.include_usage`), which budgets and
//! token limits need; the usage chunk reaches the client only if it asked for it too.

use std::collections::VecDeque;

use bytes::Bytes;
use gateway_core::types::{ChatChunk, ChatRequest, ChatResponse, Usage};
use gateway_core::ProviderError;
use serde::Deserialize;

use crate::anthropic::rewrite_native_without;
use crate::sse::SseEvent;
use crate::stream::StreamDecoder;

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize, Default)]
struct Head {
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

/// The upstream body: the client's, with `model` set to the upstream model id; streamed, with
/// `stream_options: {"include_usage": true}` in place of the client's. Also whether the client
/// asked for the usage chunk itself.
pub fn completions_body(
    request: &ChatRequest,
    model: &str,
    stream: bool,
) -> Result<(Bytes, bool), ProviderError> {
    let native = request
        .native
        .as_ref()
        .ok_or_else(|| ProviderError::Protocol("a Completions request without its body".into()))?;
    let mut lead = b"\"model\":".to_vec();
    serde_json::to_writer(&mut lead, model)
        .map_err(|e| ProviderError::Protocol(format!("encoding the request: {e}")))?;
    if !stream {
        return Ok((
            rewrite_native_without(&native.body, &lead, false, &[])?,
            false,
        ));
    }
    let wants_usage = serde_json::from_slice::<Head>(&native.body)
        .ok()
        .and_then(|h| h.stream_options)
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    lead.extend_from_slice(b",\"stream_options\":{\"include_usage\":true}");
    let body = rewrite_native_without(&native.body, &lead, true, &[b"stream_options"])?;
    Ok((body, wants_usage))
}

#[derive(Deserialize)]
struct Object {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    choices: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// A non-streamed answer: `raw` is the upstream's body as it came; `id`, `model`, `created` and
/// `usage` are read from it.
pub fn parse_completion(body: &Bytes) -> Result<ChatResponse, ProviderError> {
    let o: Object = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Protocol(format!("a Completions answer: {e}")))?;
    Ok(ChatResponse {
        id: o.id,
        object: "text_completion".to_owned(),
        created: o.created,
        model: o.model,
        choices: Vec::new(),
        usage: o.usage,
        extra: serde_json::Map::new(),
        raw: Some(body.clone()),
    })
}

/// Passes a Completions event stream on as it came (each chunk's `raw` is one event's SSE text,
/// `data: …\n\n`), reads the usage chunk (passed on only when the client asked for it) and ends
/// at `data: [DONE]`, which goes on too. A body that ends before `[DONE]` is an error.
#[derive(Debug, Default)]
pub struct CompletionsStreamDecoder {
    /// The client asked for the usage chunk itself.
    wants_usage: bool,
    done: bool,
}

impl CompletionsStreamDecoder {
    /// A decoder that passes the usage chunk on when `wants_usage`.
    pub fn new(wants_usage: bool) -> Self {
        CompletionsStreamDecoder {
            wants_usage,
            done: false,
        }
    }
}

impl StreamDecoder<SseEvent> for CompletionsStreamDecoder {
    fn event(
        &mut self,
        event: SseEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, ProviderError> {
        let data = event.data;
        let mut chunk = ChatChunk::new(String::new(), String::new(), 0);
        let mut raw = Vec::with_capacity(data.len() + 8);
        raw.extend_from_slice(b"data: ");
        raw.extend_from_slice(&data);
        raw.extend_from_slice(b"\n\n");
        if &data[..] == b"[DONE]" {
            self.done = true;
            chunk.raw = Some(Bytes::from(raw));
            out.push_back(chunk);
            return Ok(true);
        }
        let o: Object = serde_json::from_slice(&data)
            .map_err(|e| ProviderError::Protocol(format!("a Completions event: {e}")))?;
        let usage_only = o.choices.is_empty() && o.usage.is_some();
        chunk.id = o.id;
        chunk.model = o.model;
        chunk.usage = o.usage;
        if !usage_only || self.wants_usage {
            chunk.raw = Some(Bytes::from(raw));
        }
        out.push_back(chunk);
        Ok(false)
    }

    fn end(&mut self, _out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError> {
        if self.done {
            Ok(())
        } else {
            Err(ProviderError::Protocol(
                "the Completions stream ended before [DONE]".to_owned(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::types::{NativeApi, NativeRequest};

    fn request(body: serde_json::Value) -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            native: Some(NativeRequest {
                body: serde_json::to_vec(&body).expect("json").into(),
                headers: Vec::new(),
                api: NativeApi::OpenAiCompletions,
            }),
            ..ChatRequest::default()
        }
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: Bytes::copy_from_slice(data.as_bytes()),
            id: None,
            run: false,
        }
    }

    #[test]
    fn bodies_ask_for_usage_when_streamed() {
        let r = request(
            serde_json::json!({"model": "pub", "prompt": "def f(", "suffix": ")",
            "stream_options": {"include_usage": false}, "fallbacks": ["x"], "temperature": 0.25}),
        );
        let (body, wants) = completions_body(&r, "up", true).expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"model": "up", "stream_options": {"include_usage": true},
                "prompt": "def f(", "suffix": ")", "temperature": 0.25, "stream": true})
        );
        assert!(!wants);
        let (body, _) = completions_body(&r, "up", false).expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v["stream_options"]["include_usage"], false,
            "kept as written"
        );
        assert!(v.get("stream").is_none() && v.get("fallbacks").is_none());
        let asked =
            request(serde_json::json!({"prompt": "x", "stream_options": {"include_usage": true}}));
        assert!(completions_body(&asked, "up", true).expect("body").1);
    }

    #[test]
    fn events_pass_as_they_came_and_the_usage_chunk_only_when_asked() {
        for wants_usage in [false, true] {
            let mut d = CompletionsStreamDecoder::new(wants_usage);
            let mut out = VecDeque::new();
            let text = r#"{"id":"c","object":"text_completion","created":1,"model":"m","choices":[{"text":"Hi","index":0,"logprobs":null,"finish_reason":null}]}"#;
            let usage = r#"{"id":"c","object":"text_completion","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
            assert!(!d.event(ev(text), &mut out).expect("text"));
            assert!(!d.event(ev(usage), &mut out).expect("usage"));
            assert!(d.event(ev("[DONE]"), &mut out).expect("done"));
            assert_eq!(
                out[0].raw.as_deref(),
                Some(format!("data: {text}\n\n").as_bytes())
            );
            assert_eq!(out[1].usage.map(|u| u.total_tokens), Some(4));
            assert_eq!(out[1].raw.is_some(), wants_usage);
            assert_eq!(out[2].raw.as_deref(), Some(&b"data: [DONE]\n\n"[..]));
            assert!(d.end(&mut out).is_ok());
        }
        let mut d = CompletionsStreamDecoder::default();
        assert!(d.end(&mut VecDeque::new()).is_err(), "cut before [DONE]");
        assert!(d.event(ev("not json"), &mut VecDeque::new()).is_err());
    }
}
