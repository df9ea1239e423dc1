//! From upstream stream events to a canonical [`ChunkStream`].
//!
//! Every streaming adapter is a [`StreamDecoder`]: a small synchronous state machine that turns one
//! upstream event (an SSE event, an AWS event-stream frame...) into zero or more canonical chunks.
//! [`decode_stream`] drives it over the event stream: buffered chunks come out first, then an error
//! (which ends the stream), and the decoder is told when the body ends so it can flush a final usage
//! chunk or report a cut-off stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use gateway_core::types::{ChatChunk, ChatResponse, Delta, FunctionCallDelta, ToolCallDelta};
use gateway_core::{ChunkStream, ProviderError};

/// Turns upstream events into canonical chunks.
pub trait StreamDecoder<E>: Send + 'static {
    /// Handles one event, pushing any chunks it produces to `out`. Returns `Ok(true)` when the
    /// upstream said the stream is complete (`[DONE]`, `message_stop`...): nothing more is read.
    fn event(&mut self, event: E, out: &mut VecDeque<ChatChunk>) -> Result<bool, ProviderError>;

    /// The body ended without the decoder reporting completion. Push final chunks, or return an
    /// error if the stream was cut short.
    fn end(&mut self, out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError>;
}

/// Drives `decoder` over `events` and returns the canonical chunk stream.
pub fn decode_stream<S, E, D>(events: S, decoder: D) -> ChunkStream
where
    S: Stream<Item = Result<E, ProviderError>> + Send + 'static,
    E: 'static,
    D: StreamDecoder<E>,
{
    Box::pin(Decoded {
        events: Box::pin(events),
        decoder,
        out: VecDeque::new(),
        error: None,
        done: false,
        drain: false,
    })
}

struct Decoded<E, D> {
    events: Pin<Box<dyn Stream<Item = Result<E, ProviderError>> + Send>>,
    decoder: D,
    out: VecDeque<ChatChunk>,
    error: Option<ProviderError>,
    done: bool,
    /// The upstream said it is complete: read what is already buffered of the body's end so the
    /// connection can go back to the pool, but never wait for it.
    drain: bool,
}

// No field is structurally pinned (the event stream is boxed), so moving the decoder is fine.
impl<E, D> Unpin for Decoded<E, D> {}

impl<E, D: StreamDecoder<E>> Stream for Decoded<E, D> {
    type Item = Result<ChatChunk, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            if let Some(err) = this.error.take() {
                return Poll::Ready(Some(Err(err)));
            }
            if this.done {
                while this.drain {
                    match this.events.as_mut().poll_next(cx) {
                        Poll::Ready(Some(_)) => {}
                        Poll::Ready(None) | Poll::Pending => this.drain = false,
                    }
                }
                return Poll::Ready(None);
            }
            match this.events.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(ev))) => match this.decoder.event(ev, &mut this.out) {
                    Ok(false) => {}
                    Ok(true) => {
                        this.done = true;
                        this.drain = true;
                    }
                    Err(e) => {
                        this.done = true;
                        this.error = Some(e);
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.error = Some(e);
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if let Err(e) = this.decoder.end(&mut this.out) {
                        this.error = Some(e);
                    }
                }
            }
        }
    }
}

/// The chunks a streaming client would have seen for a complete response: one chunk per choice with
/// the role, content, reasoning and whole tool calls plus the finish reason, then a usage chunk with
/// no choices if the response has usage. Used when an upstream answers a stream request with JSON.
pub fn response_to_chunks(resp: &ChatResponse) -> Vec<ChatChunk> {
    let mut out = Vec::with_capacity(resp.choices.len() + 1);
    for choice in &resp.choices {
        let msg = &choice.message;
        let tool_calls = msg.tool_calls.as_ref().map(|calls| {
            calls
                .iter()
                .enumerate()
                .map(|(i, c)| ToolCallDelta {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    id: Some(c.id.clone()),
                    kind: Some(c.kind.clone()),
                    function: Some(FunctionCallDelta {
                        name: Some(c.function.name.clone()),
                        arguments: Some(c.function.arguments.clone()),
                    }),
                })
                .collect()
        });
        let mut chunk = ChatChunk::new(resp.id.clone(), resp.model.clone(), resp.created);
        chunk = chunk.with_delta(
            Delta {
                role: Some(msg.role),
                content: msg.content.as_ref().map(|c| c.text()),
                reasoning_content: msg.reasoning_content.clone(),
                refusal: msg.refusal.clone(),
                tool_calls,
            },
            choice.finish_reason,
        );
        if let Some(c) = chunk.choices.last_mut() {
            c.index = choice.index;
        }
        out.push(chunk);
    }
    if let Some(usage) = resp.usage {
        let mut chunk = ChatChunk::new(resp.id.clone(), resp.model.clone(), resp.created);
        chunk.usage = Some(usage);
        out.push(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use gateway_core::types::{StreamAccumulator, Usage};

    /// Emits one chunk per number; 0 completes; end() fails unless completed.
    struct Numbers;

    impl StreamDecoder<u32> for Numbers {
        fn event(&mut self, n: u32, out: &mut VecDeque<ChatChunk>) -> Result<bool, ProviderError> {
            if n == 0 {
                return Ok(true);
            }
            if n == 99 {
                out.push_back(ChatChunk::new("before-error", "m", 0));
                return Err(ProviderError::Protocol("bad event".into()));
            }
            out.push_back(ChatChunk::new(n.to_string(), "m", 0));
            Ok(false)
        }

        fn end(&mut self, _out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError> {
            Err(ProviderError::Connect("cut".into()))
        }
    }

    async fn run(events: Vec<Result<u32, ProviderError>>) -> Vec<String> {
        decode_stream(futures_util::stream::iter(events), Numbers)
            .map(|r| match r {
                Ok(c) => c.id,
                Err(e) => format!("err:{}", e.outcome()),
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn completion_error_and_cut_off() {
        assert_eq!(
            run(vec![Ok(1), Ok(2), Ok(0), Ok(3)]).await,
            ["1", "2"],
            "stops at completion"
        );
        assert_eq!(
            run(vec![Ok(1), Ok(99), Ok(2)]).await,
            ["1", "before-error", "err:server_error"],
            "chunks buffered before an error come first, the error ends the stream"
        );
        assert_eq!(
            run(vec![Ok(1)]).await,
            ["1", "err:connect_error"],
            "end() may fail"
        );
        assert_eq!(
            run(vec![Ok(1), Err(ProviderError::Timeout)]).await,
            ["1", "err:timeout"]
        );
    }

    #[test]
    fn json_response_as_chunks_accumulates_back() {
        let resp: ChatResponse = serde_json::from_value(serde_json::json!({
            "id": "r", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        }))
        .expect("valid response");
        let mut acc = StreamAccumulator::default();
        for c in response_to_chunks(&resp) {
            acc.push(&c);
        }
        let back = acc.into_response();
        assert_eq!(
            back.choices[0].message.tool_calls,
            resp.choices[0].message.tool_calls
        );
        assert_eq!(back.choices[0].message.content_text(), "hi");
        assert_eq!(back.usage, Some(Usage::new(3, 2, 0)));
    }
}
