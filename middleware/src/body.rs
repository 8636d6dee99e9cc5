//! The request and response bodies of audited calls: they pass every frame through
//! unchanged, and copy the first bytes (up to the capture limit) for templates as they stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use auditgate_call::{AuditedCall, RequestCapture};
use auditgate_queue::RecordSink;
use auditgate_rules::Outcome;
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service sees: the client's body, frame for frame. When the
    /// layer has read its start before calling the service (a rule reads `body/`), those
    /// frames come first, then the rest of the stream.
    #[derive(Debug)]
    pub struct RequestBody<B: Body> {
        #[pin]
        inner: Inner<B>,
        capture: Option<RequestCapture>,
        // Frames read ahead, handed out before the stream is polled again.
        replay: VecDeque<Result<Frame<B::Data>, B::Error>>,
        // The stream ended while it was read ahead: it is not polled again.
        ended: bool,
    }
}

pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner<B> {
        // The client's body, as the server gave it.
        Direct { #[pin] body: B },
        // The same body after the layer read its start: boxed to move it into the request.
        ReadAhead { body: Pin<Box<B>> },
        // No body: the layer's own `before:` GET.
        Empty,
    }
}

impl<B: Body> RequestBody<B> {
    pub(crate) fn passthrough(inner: B) -> Self {
        RequestBody::capturing(inner, None)
    }

    pub(crate) fn capturing(inner: B, capture: Option<RequestCapture>) -> Self {
        RequestBody {
            inner: Inner::Direct { body: inner },
            capture,
            replay: VecDeque::new(),
            ended: false,
        }
    }

    /// No body at all: the request of a `before:` GET the layer makes itself.
    pub(crate) fn empty() -> Self {
        RequestBody {
            inner: Inner::Empty,
            capture: None,
            replay: VecDeque::new(),
            ended: true,
        }
    }

    /// The body after [`ReadAhead`] read its start: `read.frames` first, then the stream.
    pub(crate) fn after_read_ahead(read: ReadAhead<B>) -> Self {
        RequestBody {
            inner: Inner::ReadAhead { body: read.body },
            capture: Some(read.capture),
            replay: read.frames,
            ended: read.ended,
        }
    }
}

impl<B: Body> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(frame) = this.replay.pop_front() {
            // Captured when it was read ahead.
            return Poll::Ready(Some(frame));
        }
        if *this.ended {
            return Poll::Ready(None);
        }
        let frame = match this.inner.project() {
            InnerProj::Direct { body } => ready!(body.poll_frame(cx)),
            InnerProj::ReadAhead { body } => ready!(body.as_mut().poll_frame(cx)),
            InnerProj::Empty => None,
        };
        if let (Some(capture), Some(Ok(frame))) = (this.capture.as_ref(), &frame)
            && let Some(data) = frame.data_ref()
        {
            capture.push_buf(data);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.replay.is_empty()
            && (self.ended
                || match &self.inner {
                    Inner::Direct { body } => body.is_end_stream(),
                    Inner::ReadAhead { body } => body.is_end_stream(),
                    Inner::Empty => true,
                })
    }

    fn size_hint(&self) -> SizeHint {
        let replayed: u64 = (self.replay.iter())
            .filter_map(|frame| frame.as_ref().ok()?.data_ref())
            .map(|data| data.remaining() as u64)
            .sum();
        if self.ended {
            return SizeHint::with_exact(replayed);
        }
        let rest = match &self.inner {
            Inner::Direct { body } => body.size_hint(),
            Inner::ReadAhead { body } => body.size_hint(),
            Inner::Empty => SizeHint::with_exact(0),
        };
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(replayed));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(replayed));
        }
        hint
    }
}

/// The start of a request body, read before the inner service is called because a rule reads
/// the body (`body/` or `when: { body }`): a handler that answers before reading it (an
/// authorisation check), or never reads it, still has its call recorded with the body's
/// values. At most the capture limit is read ahead (plus the rest of the frame that crosses
/// it); the handler then gets the same frames, followed by the rest of the stream.
pub(crate) struct ReadAhead<B: Body> {
    body: Pin<Box<B>>,
    capture: RequestCapture,
    frames: VecDeque<Result<Frame<B::Data>, B::Error>>,
    read: usize,
    limit: usize,
    ended: bool,
}

impl<B: Body> std::fmt::Debug for ReadAhead<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead")
            .field("read", &self.read)
            .field("limit", &self.limit)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<B: Body> ReadAhead<B> {
    pub(crate) fn new(body: B, capture: RequestCapture, limit: usize) -> Self {
        ReadAhead {
            body: Box::pin(body),
            capture,
            frames: VecDeque::new(),
            read: 0,
            limit,
            ended: false,
        }
    }

    /// Reads until the limit, the body's end or its first error (which the handler gets in
    /// its turn, as it would have).
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.ended && self.read <= self.limit {
            if self.body.is_end_stream() {
                self.ended = true;
                break;
            }
            match ready!(self.body.as_mut().poll_frame(cx)) {
                None => self.ended = true,
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.read += data.remaining();
                        self.capture.push_buf(data);
                    }
                    self.frames.push_back(Ok(frame));
                }
                Some(Err(e)) => {
                    self.frames.push_back(Err(e));
                    self.ended = true;
                }
            }
        }
        Poll::Ready(())
    }
}

pin_project! {
    /// The response body the client gets: the inner service's body, frame for frame; the
    /// call's record is emitted when it ends, or as `aborted` when it is dropped unfinished.
    #[derive(Debug)]
    pub struct ResponseBody<B, K: RecordSink> {
        #[pin]
        kind: Kind<B, K>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B, K: RecordSink> {
        Passthrough { #[pin] inner: B },
        Audited {
            #[pin]
            inner: B,
            call: Option<AuditedCall<K>>,
            // Bytes still to come when the length is known: a server that has sent them all
            // may drop the body without polling it to its end.
            remaining: Option<u64>,
        },
        /// The 503 of a `closed` rule whose record cannot be queued.
        Refused { body: Option<Bytes> },
    }
}

impl<B: Body, K: RecordSink> ResponseBody<B, K> {
    pub(crate) fn passthrough(inner: B) -> Self {
        ResponseBody {
            kind: Kind::Passthrough { inner },
        }
    }

    /// `length`: what the response says its body holds (`Some(0)` for one that has none:
    /// an answer to HEAD, a 204 or 304), else the body's exact size hint.
    pub(crate) fn audited(inner: B, call: AuditedCall<K>, length: Option<u64>) -> Self {
        let remaining = length.or_else(|| inner.size_hint().exact());
        let call = if inner.is_end_stream() || remaining == Some(0) {
            // A body that is empty, or not sent at all, may never be polled: the call is
            // complete already.
            call.finish(None);
            None
        } else {
            Some(call)
        };
        ResponseBody {
            kind: Kind::Audited {
                inner,
                call,
                remaining,
            },
        }
    }

    pub(crate) fn refused(body: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Refused { body: Some(body) },
        }
    }
}

impl<B, K> Body for ResponseBody<B, K>
where
    B: Body,
    B::Data: From<Bytes>,
    K: RecordSink,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Passthrough { inner } => inner.poll_frame(cx),
            KindProj::Audited {
                mut inner,
                call,
                remaining,
            } => {
                let frame = ready!(inner.as_mut().poll_frame(cx));
                match &frame {
                    Some(Ok(frame)) => {
                        if let (Some(c), Some(trailers)) = (call.as_mut(), frame.trailers_ref()) {
                            c.response_trailers(trailers);
                        }
                        if let (Some(c), Some(data)) = (call.as_mut(), frame.data_ref()) {
                            c.response_buf(data);
                            if let Some(left) = remaining.as_mut() {
                                *left = left.saturating_sub(data.remaining() as u64);
                            }
                        }
                        if (inner.is_end_stream() || *remaining == Some(0))
                            && let Some(c) = call.take()
                        {
                            c.finish(None);
                        }
                    }
                    // The client did not get the whole response.
                    Some(Err(_)) => {
                        if let Some(c) = call.take() {
                            c.finish(Some(Outcome::Aborted));
                        }
                    }
                    None => {
                        if let Some(c) = call.take() {
                            c.finish(None);
                        }
                    }
                }
                Poll::Ready(frame)
            }
            KindProj::Refused { body } => {
                Poll::Ready(body.take().map(|b| Ok(Frame::data(B::Data::from(b)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { inner } | Kind::Audited { inner, .. } => inner.is_end_stream(),
            Kind::Refused { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { inner } | Kind::Audited { inner, .. } => inner.size_hint(),
            Kind::Refused { body } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
