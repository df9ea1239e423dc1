//! The response body: a whole buffer, or a paced sequence of frames.
//!
//! Streams are pre-rendered into frames and paced by a timer held inside the body (no task per
//! request): `ttft` before the first frame, `chunk_delay` between frames. A stream may end by
//! failing, which makes hyper drop the connection without the chunked terminator (HTTP/1) or
//! reset the stream (HTTP/2): that is how `disconnect_after_chunks` is delivered.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// Pause before dropping the connection, so the events before it reach the client.
const ABORT_FLUSH_DELAY: Duration = Duration::from_millis(20);

/// One step of a paced stream.
#[derive(Debug)]
pub(crate) enum Step {
    Data(Bytes),
    /// Fail the body: the connection is dropped.
    Abort,
}

/// A paced frame sequence.
#[derive(Debug)]
pub(crate) struct Paced {
    steps: VecDeque<Step>,
    first_delay: Duration,
    gap: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    started: bool,
    waited: bool,
}

/// The mock's response body.
#[derive(Debug)]
pub(crate) enum MockBody {
    Full(Option<Bytes>),
    Paced(Box<Paced>),
}

impl MockBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            Self::Full(None)
        } else {
            Self::Full(Some(b))
        }
    }

    pub(crate) fn empty() -> Self {
        Self::Full(None)
    }

    /// A stream of steps; with no delays and no abort, frames are joined into one buffer.
    pub(crate) fn paced(steps: Vec<Step>, first_delay: Duration, gap: Duration) -> Self {
        let aborts = steps.iter().any(|s| matches!(s, Step::Abort));
        if !aborts && first_delay.is_zero() && gap.is_zero() {
            let mut buf = Vec::new();
            for s in &steps {
                if let Step::Data(b) = s {
                    buf.extend_from_slice(b);
                }
            }
            // Keep chunked transfer (no content-length) as a real stream would.
            return Self::Paced(Box::new(Paced {
                steps: VecDeque::from([Step::Data(Bytes::from(buf))]),
                first_delay,
                gap,
                sleep: None,
                started: false,
                waited: false,
            }));
        }
        Self::Paced(Box::new(Paced {
            steps: steps.into(),
            first_delay,
            gap,
            sleep: None,
            started: false,
            waited: false,
        }))
    }
}

impl Paced {
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
                self.waited = true;
            }
            if self.steps.is_empty() {
                return Poll::Ready(None);
            }
            let mut delay = if self.started {
                self.gap
            } else {
                self.first_delay
            };
            if matches!(self.steps.front(), Some(Step::Abort)) {
                // Let hyper flush what was sent before the connection is dropped.
                delay = delay.max(ABORT_FLUSH_DELAY);
            }
            if !self.waited && !delay.is_zero() {
                self.sleep = Some(Box::pin(tokio::time::sleep(delay)));
                continue;
            }
            self.waited = false;
            self.started = true;
            return match self.steps.pop_front() {
                Some(Step::Data(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Some(Step::Abort) => {
                    self.steps.clear();
                    Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "mock: connection dropped mid-stream",
                    ))))
                }
                None => Poll::Ready(None),
            };
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Paced(p) => p.poll_step(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Paced(p) => p.steps.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(u64::try_from(b.len()).unwrap_or(0)),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Paced(_) => SizeHint::default(),
        }
    }
}
