//! Server-sent events: an incremental parser and a `Stream` over a response body.
//!
//! The parser follows the WHATWG event-stream rules that matter for LLM APIs: lines end in `\n`,
//! `\r\n` or `\r` (also when the two bytes of `\r\n` arrive in different reads), lines starting with
//! `:` are comments (`: keep-alive`, `: OPENROUTER PROCESSING`), several `data:` lines join with
//! `\n`, `event:` names the event, a blank line dispatches it, and an event without data is dropped.
//! A leading UTF-8 byte-order mark is skipped.
//!
//! It is on the hot path of every streamed token, so it copies each read once into its buffer and
//! hands out single-line `data` values as zero-copy [`Bytes`] slices of that buffer. A parser made
//! with [`SseParser::with_runs`] also hands out *runs*: consecutive events that are each exactly
//! one `data: ` line and a blank line come out as one [`SseEvent`] (see [`SseEvent::run`]), so
//! that a consumer passing them on unchanged handles a read's worth of events at once.
//!
//! ```
//! use gateway_providers::sse::SseParser;
//! let mut p = SseParser::new();
//! p.push(b"event: ping\ndata: {\"a\":");
//! assert!(p.next_event().is_none(), "the event is not complete yet");
//! p.push(b"1}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n");
//! let ev = p.next_event().expect("first event");
//! assert_eq!((ev.event_name(), ev.data()), (Some("ping"), &b"{\"a\":1}"[..]));
//! assert!(p.next_event().expect("second event").is_done());
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_core::Stream;
use gateway_core::ProviderError;
use hyper::body::Body;
use tokio::time::{Instant, Sleep};

use crate::http::error_chain;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<Bytes>,
    /// The `data:` lines joined with `\n`.
    pub data: Bytes,
    /// The `id:` field, if any.
    pub id: Option<Bytes>,
    /// `data` holds the data of several events, joined by `\n\ndata: `: each of them was the
    /// one line `data: <value>\n` followed by a blank line `\n`, and no value holds `\n` or
    /// `\r`. So `data: {data}\n\n` is those events' exact text. Only a parser made with
    /// [`SseParser::with_runs`] makes runs, and never of a single event.
    ///
    /// From a parser made with [`SseParser::with_named_runs`] instead, a run's `data` is the
    /// exact text of several events, each the two lines `event: <name>\n` and `data: <value>\n`
    /// followed by a blank line `\n`, with no `\r` in a name or value and no empty value; its
    /// `event` is `None`.
    pub run: bool,
}

impl SseEvent {
    /// The event name as text (`None` if absent or not UTF-8).
    pub fn event_name(&self) -> Option<&str> {
        self.event
            .as_deref()
            .and_then(|e| std::str::from_utf8(e).ok())
    }

    /// The data bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The data as text, if it is UTF-8.
    pub fn data_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.data).ok()
    }

    /// Whether the data is OpenAI's `[DONE]` sentinel.
    pub fn is_done(&self) -> bool {
        self.data.trim_ascii() == b"[DONE]"
    }
}

#[derive(Debug, Default)]
enum DataBuf {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

/// Incremental event-stream parser: [`push`](SseParser::push) bytes as they arrive, then take
/// complete events with [`next_event`](SseParser::next_event).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: BytesMut,
    /// Bytes of `buf` already known to hold no line ending.
    scanned: usize,
    /// The previous line ended in `\r` at the end of a read: a leading `\n` belongs to it.
    skip_lf: bool,
    /// A first line was taken (a byte-order mark may only start the first one).
    started: bool,
    event: Option<Bytes>,
    id: Option<Bytes>,
    data: DataBuf,
    /// Hand out runs of plain `data:` events ([`SseParser::with_runs`]).
    runs: bool,
    /// Hand out runs of named events instead ([`SseParser::with_named_runs`]).
    named_runs: bool,
}

impl SseParser {
    /// An empty parser.
    pub fn new() -> Self {
        SseParser::default()
    }

    /// A parser that hands out runs of plain events as one [`SseEvent`] ([`SseEvent::run`]).
    /// The first event, events with other fields or comments, and events whose line ends in
    /// `\r` come out one by one, as from [`SseParser::new`].
    pub fn with_runs() -> Self {
        SseParser {
            runs: true,
            ..SseParser::default()
        }
    }

    /// A parser that hands out runs of *named* events (`event: <name>`, `data: <value>`, a blank
    /// line; Anthropic's framing) as one [`SseEvent`] whose `data` is their exact text
    /// ([`SseEvent::run`]). The first event, a lone event, and events with other fields,
    /// comments or `\r` come out one by one, as from [`SseParser::new`].
    pub fn with_named_runs() -> Self {
        SseParser {
            named_runs: true,
            ..SseParser::default()
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, mut chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        if self.skip_lf {
            self.skip_lf = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if one is buffered.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        if let Some(ev) = self.next_run() {
            return Some(ev);
        }
        while let Some(line) = self.next_line() {
            if let Some(ev) = self.process_line(line) {
                return Some(ev);
            }
        }
        None
    }

    /// Ends the stream: a last line without a line ending and an event without its blank line are
    /// still delivered (lenient, for servers that close right after the last `data:` line).
    pub fn finish(&mut self) -> Option<SseEvent> {
        if let Some(ev) = self.next_event() {
            return Some(ev);
        }
        if !self.buf.is_empty() {
            let line = self.buf.split().freeze();
            self.scanned = 0;
            if let Some(ev) = self.process_line(line) {
                return Some(ev);
            }
        }
        self.dispatch()
    }

    /// Whether bytes of an unfinished line or event are buffered.
    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty() || !matches!(self.data, DataBuf::Empty)
    }

    /// The complete plain events at the start of the buffer, as one event (a run when there are
    /// several): each is `data: `, a value without `\n` or `\r`, then `\n\n`. `None` when the
    /// buffer does not start with one, or when the parser is not between events.
    fn next_run(&mut self) -> Option<SseEvent> {
        const FIELD: &[u8] = b"data: ";
        if self.named_runs {
            return self.next_named_run();
        }
        if !self.runs || !self.between_events() {
            return None;
        }
        let buf = &self.buf[..];
        let (mut pos, mut data_end, mut n) = (0, 0, 0u32);
        while buf[pos..].starts_with(FIELD) {
            // The bytes `next_line` already found without a line ending (a long first line
            // arriving in many reads) are not searched again.
            let from = (pos + FIELD.len()).max(if n == 0 { self.scanned } else { 0 });
            let Some(rel) = memchr::memchr2(b'\n', b'\r', &buf[from..]) else {
                break;
            };
            let nl = from + rel;
            if buf[nl] != b'\n' || buf.get(nl + 1) != Some(&b'\n') {
                break;
            }
            n += 1;
            data_end = nl;
            pos = nl + 2;
        }
        if n == 0 {
            return None;
        }
        self.scanned = 0;
        let events = self.buf.split_to(pos).freeze();
        Some(SseEvent {
            event: None,
            data: events.slice(FIELD.len()..data_end),
            id: None,
            run: n > 1,
        })
    }

    /// Whether the parser stands between events, where a run may start: past the first line,
    /// no `\r\n` half read, and no field of an unfinished event held (an `id` is held for good).
    fn between_events(&self) -> bool {
        self.started
            && !self.skip_lf
            && self.event.is_none()
            && self.id.is_none()
            && matches!(self.data, DataBuf::Empty)
    }

    /// The complete named events at the start of the buffer, as one run, when there are at
    /// least two: each is `event: `, a name, `\n`, `data: `, a value that is not empty, `\n\n`,
    /// without `\r`.
    fn next_named_run(&mut self) -> Option<SseEvent> {
        const EVENT: &[u8] = b"event: ";
        const DATA: &[u8] = b"data: ";
        if !self.between_events() {
            return None;
        }
        let buf = &self.buf[..];
        // The end of a line starting at `from`, if it ends in `\n` alone.
        let line_end = |from: usize| {
            let nl = from + memchr::memchr2(b'\n', b'\r', buf.get(from..)?)?;
            (buf[nl] == b'\n').then_some(nl)
        };
        let (mut pos, mut n) = (0, 0u32);
        while buf[pos..].starts_with(EVENT) {
            // The bytes `next_line` already found without a line ending are not searched again.
            let from = (pos + EVENT.len()).max(if n == 0 { self.scanned } else { 0 });
            let Some(name_end) = line_end(from) else {
                break;
            };
            if !buf[name_end + 1..].starts_with(DATA) {
                break;
            }
            let data_start = name_end + 1 + DATA.len();
            let Some(data_end) = line_end(data_start) else {
                break;
            };
            if data_end == data_start || buf.get(data_end + 1) != Some(&b'\n') {
                break;
            }
            n += 1;
            pos = data_end + 2;
        }
        if n < 2 {
            return None;
        }
        self.scanned = 0;
        Some(SseEvent {
            event: None,
            data: self.buf.split_to(pos).freeze(),
            id: None,
            run: true,
        })
    }

    fn next_line(&mut self) -> Option<Bytes> {
        let rel = memchr::memchr2(b'\n', b'\r', &self.buf[self.scanned..]);
        let Some(rel) = rel else {
            self.scanned = self.buf.len();
            return None;
        };
        let end = self.scanned + rel;
        let mut consumed = end + 1;
        if self.buf[end] == b'\r' {
            if consumed < self.buf.len() {
                if self.buf[consumed] == b'\n' {
                    consumed += 1;
                }
            } else {
                self.skip_lf = true;
            }
        }
        self.scanned = 0;
        let mut line = self.buf.split_to(consumed).freeze();
        line.truncate(end);
        if !self.started {
            self.started = true;
            if line.starts_with(b"\xEF\xBB\xBF") {
                line = line.slice(3..);
            }
        }
        Some(line)
    }

    fn process_line(&mut self, line: Bytes) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None;
        }
        let (field, value) = match memchr::memchr(b':', &line) {
            Some(i) => {
                let start = if line.get(i + 1) == Some(&b' ') {
                    i + 2
                } else {
                    i + 1
                };
                (line.slice(..i), line.slice(start..))
            }
            None => (line.clone(), Bytes::new()),
        };
        match &field[..] {
            b"data" => {
                self.data = match std::mem::take(&mut self.data) {
                    DataBuf::Empty => DataBuf::One(value),
                    DataBuf::One(first) => {
                        let mut joined = BytesMut::with_capacity(first.len() + value.len() + 1);
                        joined.extend_from_slice(&first);
                        joined.put_u8(b'\n');
                        joined.extend_from_slice(&value);
                        DataBuf::Many(joined)
                    }
                    DataBuf::Many(mut joined) => {
                        joined.put_u8(b'\n');
                        joined.extend_from_slice(&value);
                        DataBuf::Many(joined)
                    }
                };
            }
            b"event" => self.event = Some(value),
            b"id" if !value.contains(&0) => self.id = Some(value),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let data = match std::mem::take(&mut self.data) {
            DataBuf::Empty => {
                self.event = None;
                return None;
            }
            DataBuf::One(b) => b,
            DataBuf::Many(b) => b.freeze(),
        };
        Some(SseEvent {
            event: self.event.take(),
            data,
            id: self.id.clone(),
            run: false,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Draining,
    Done,
}

pin_project_lite::pin_project! {
    /// Events from a response body, e.g. a hyper [`Incoming`](hyper::body::Incoming).
    ///
    /// A body error (the connection broke) is yielded as [`ProviderError::Connect`] and ends the
    /// stream; with [`idle_timeout`](SseStream::idle_timeout) set, a body that sends nothing for
    /// that long yields [`ProviderError::Timeout`] and ends the stream.
    pub struct SseStream<B> {
        #[pin]
        body: B,
        parser: SseParser,
        state: State,
        idle: Option<Duration>,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> SseStream<B> {
    /// Wraps a body.
    pub fn new(body: B) -> Self {
        SseStream {
            body,
            parser: SseParser::new(),
            state: State::Reading,
            idle: None,
            sleep: None,
        }
    }

    /// Hands out runs of plain events ([`SseParser::with_runs`]).
    pub fn runs(mut self) -> Self {
        self.parser.runs = true;
        self
    }

    /// Hands out runs of named events ([`SseParser::with_named_runs`]).
    pub fn named_runs(mut self) -> Self {
        self.parser.named_runs = true;
        self
    }

    /// Fails the stream when no bytes arrive for `idle` (comments such as `: keep-alive` count as
    /// bytes).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self.sleep = Some(Box::pin(tokio::time::sleep(idle)));
        self
    }
}

impl<B> Stream for SseStream<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<SseEvent, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            match *this.state {
                State::Done => return Poll::Ready(None),
                State::Draining => {
                    let ev = this.parser.finish();
                    if ev.is_none() {
                        *this.state = State::Done;
                    }
                    return Poll::Ready(ev.map(Ok));
                }
                State::Reading => {}
            }
            if let Some(ev) = this.parser.next_event() {
                return Poll::Ready(Some(Ok(ev)));
            }
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.parser.push(&data);
                        if let (Some(idle), Some(sleep)) = (*this.idle, this.sleep.as_mut()) {
                            sleep.as_mut().reset(Instant::now() + idle);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    *this.state = State::Done;
                    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                    return Poll::Ready(Some(Err(ProviderError::Connect(format!(
                        "stream broke: {}",
                        error_chain(e.as_ref())
                    )))));
                }
                Poll::Ready(None) => *this.state = State::Draining,
                Poll::Pending => {
                    if let Some(sleep) = this.sleep.as_mut() {
                        if sleep.as_mut().poll(cx).is_ready() {
                            *this.state = State::Done;
                            return Poll::Ready(Some(Err(ProviderError::Timeout)));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    /// Every event `p` hands out for `parts` read one after the other, then at the end.
    fn drain(mut p: SseParser, parts: &[&[u8]]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for part in parts {
            p.push(part);
            while let Some(ev) = p.next_event() {
                out.push(ev);
            }
        }
        while let Some(ev) = p.finish() {
            out.push(ev);
        }
        out
    }

    fn events(parts: &[&[u8]]) -> Vec<(Option<String>, String)> {
        drain(SseParser::new(), parts)
            .into_iter()
            .map(|e| {
                (
                    e.event_name().map(str::to_owned),
                    String::from_utf8_lossy(&e.data).into_owned(),
                )
            })
            .collect()
    }

    fn ev(name: Option<&str>, data: &str) -> (Option<String>, String) {
        (name.map(str::to_owned), data.to_owned())
    }

    #[test]
    fn crlf_comments_and_multiline() {
        let got = events(&[b": OPENROUTER PROCESSING\r\n\r\nevent: a\r\ndata: x\r\ndata:y\r\n\r\ndata: [DONE]\r\n\r\n"]);
        assert_eq!(got, vec![ev(Some("a"), "x\ny"), ev(None, "[DONE]")]);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let input: &[u8] =
            b"\xEF\xBB\xBFevent: message_start\r\ndata: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: 1\rdata: 2\r\r\ndata: z\n\n";
        let expected = vec![
            ev(Some("message_start"), "{\"a\":1}"),
            ev(None, "1\n2"),
            ev(None, "z"),
        ];
        assert_eq!(events(&[input]), expected, "whole input");
        for i in 0..input.len() {
            for j in i..input.len() {
                let got = events(&[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(got, expected, "split at {i} and {j}");
            }
        }
    }

    /// Events from a parser with runs, each run taken apart again, and how many runs came.
    fn events_with_runs(parts: &[&[u8]]) -> (Vec<(Option<String>, String)>, usize) {
        let mut out = Vec::new();
        let mut runs = 0;
        for e in drain(SseParser::with_runs(), parts) {
            let data = String::from_utf8_lossy(&e.data).into_owned();
            if e.run {
                runs += 1;
                assert!(e.event.is_none() && e.id.is_none());
                let parts: Vec<&str> = data.split("\n\ndata: ").collect();
                assert!(parts.len() > 1, "a run is never one event: {data:?}");
                for part in parts {
                    assert!(!part.contains(['\n', '\r']), "{part:?}");
                    out.push((None, part.to_owned()));
                }
            } else {
                out.push((e.event_name().map(str::to_owned), data));
            }
        }
        (out, runs)
    }

    #[test]
    fn runs_are_the_same_events_at_every_split_point() {
        let input: &[u8] =
            b"data: {\"first\":0}\n\ndata: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: \n\n\
            : keep-alive\n\ndata: c\n\ndata: d\r\n\r\ndata: e\n\ndata: f\n\nevent: x\ndata: g\n\n\
            data: h\ndata: i\n\ndata: j\n\ndata: k\n\ndata: [DONE]\n\ndata: tail";
        let expected = events(&[input]);
        let (whole, runs) = events_with_runs(&[input]);
        assert_eq!(whole, expected, "whole input");
        // {"a":1} to the empty event; e and f; j, k and [DONE]. The first event and those
        // after a comment, a CR, a named event or a multi-line one come alone.
        assert_eq!(runs, 3, "the input in one read makes runs");
        for i in 0..input.len() {
            for j in i..input.len() {
                let (got, _) = events_with_runs(&[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(got, expected, "split at {i} and {j}");
            }
        }
    }

    /// Events from a parser with named runs, each run taken apart by a plain parser (a run is
    /// the events' exact text), and how many runs came.
    fn events_with_named_runs(parts: &[&[u8]]) -> (Vec<(Option<String>, String)>, usize) {
        let mut out = Vec::new();
        let mut runs = 0;
        for e in drain(SseParser::with_named_runs(), parts) {
            if e.run {
                runs += 1;
                assert!(e.event.is_none() && e.id.is_none());
                let text = String::from_utf8_lossy(&e.data).into_owned();
                let inner = events(&[e.data.as_ref()]);
                assert!(inner.len() > 1, "a run is never one event: {text:?}");
                assert_eq!(
                    inner
                        .iter()
                        .map(|(n, d)| format!("event: {}\ndata: {d}\n\n", n.as_deref().unwrap()))
                        .collect::<String>(),
                    text,
                    "each event of a run is its two lines and a blank line"
                );
                out.extend(inner);
            } else {
                out.push((
                    e.event_name().map(str::to_owned),
                    String::from_utf8_lossy(&e.data).into_owned(),
                ));
            }
        }
        (out, runs)
    }

    #[test]
    fn named_runs_are_the_same_events_at_every_split_point() {
        let input: &[u8] = b"event: message_start\ndata: {\"first\":0}\n\n\
            event: a\ndata: 1\n\nevent: b\ndata: 2\n\nevent: c\ndata: \n\n\
            : keep-alive\n\nevent: d\ndata: 4\n\nevent: e\ndata: 5\r\n\r\n\
            event: f\ndata: 6\n\nevent: g\ndata: 7\n\ndata: unnamed\n\n\
            event: h\ndata: 8\ndata: 9\n\nevent: i\ndata: 10\n\nevent:j\ndata: 11\n\n\
            event: k\nid: 3\ndata: 12\n\nevent: l\ndata: 13\n\nevent: m\ndata: 14\n\nevent: n\ndata: tail";
        let expected = events(&[input]);
        let (whole, runs) = events_with_named_runs(&[input]);
        assert_eq!(whole, expected, "whole input");
        // a and b; f and g. The first event, a lone one, and those next to an empty value, a
        // comment, a CR, a data-only event, a multi-line one or `event:` without its space come
        // alone, and so does every event after an id (each carries the last id: l and m).
        assert_eq!(runs, 2, "the input in one read makes runs");
        for i in 0..input.len() {
            for j in i..input.len() {
                let (got, _) = events_with_named_runs(&[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(got, expected, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn an_event_id_or_a_byte_order_mark_keeps_events_apart() {
        let (got, runs) = events_with_runs(&[b"id: 1\ndata: a\n\ndata: b\n\ndata: c\n\n"]);
        assert_eq!(got.len(), 3);
        assert_eq!(runs, 0, "every event carries the last id");
        let (got, runs) = events_with_runs(&[b"\xEF\xBB\xBFdata: a\n\ndata: b\n\ndata: c\n\n"]);
        assert_eq!(got, vec![ev(None, "a"), ev(None, "b"), ev(None, "c")]);
        assert_eq!(runs, 1);
    }

    #[test]
    fn events_without_data_are_dropped_and_trailing_event_is_kept() {
        assert_eq!(
            events(&[b"event: ping\n\nid: 3\ndata:no-space\n\ndata: last"]),
            vec![ev(None, "no-space"), ev(None, "last")]
        );
        let mut p = SseParser::new();
        p.push(b"id: 7\ndata: x\n\n");
        let e = p.next_event().expect("event");
        assert_eq!(e.id.as_deref(), Some(&b"7"[..]));
        assert!(!p.has_pending());
    }

    #[tokio::test]
    async fn stream_adapter_reports_body_errors() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"data: a\n\nda"))),
            Ok(Frame::data(Bytes::from_static(b"ta: b\n\n"))),
            Err(std::io::Error::other("reset by peer")),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let items: Vec<_> = SseStream::new(body).collect().await;
        assert_eq!(items.len(), 3, "two events then the error: {items:?}");
        assert_eq!(
            items[1].as_ref().map(|e| e.data.clone()).ok(),
            Some(Bytes::from_static(b"b"))
        );
        assert!(
            matches!(&items[2], Err(ProviderError::Connect(m)) if m.contains("reset by peer")),
            "{:?}",
            items[2]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stream_adapter_idle_timeout() {
        let first: Result<Frame<Bytes>, std::io::Error> =
            Ok(Frame::data(Bytes::from_static(b"data: a\n\n")));
        let body = StreamBody::new(
            futures_util::stream::iter(vec![first]).chain(futures_util::stream::pending()),
        );
        let mut s = SseStream::new(body).idle_timeout(Duration::from_secs(5));
        assert!(matches!(s.next().await, Some(Ok(_))));
        assert!(matches!(s.next().await, Some(Err(ProviderError::Timeout))));
        assert!(
            s.next().await.is_none(),
            "the stream ends after the timeout"
        );
    }
}
