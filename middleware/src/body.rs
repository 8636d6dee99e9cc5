//! The request and response bodies of audited calls: they pass every frame through
//! unchanged, and copy the first bytes (up to the capture limit) for templates as they stream.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use auditgate_call::{AuditedCall, RequestCapture};
use auditgate_queue::RecordSink;
use auditgate_rules::Outcome;
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service sees: the client's body, frame for frame.
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        capture: Option<RequestCapture>,
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn passthrough(inner: B) -> Self {
        RequestBody {
            inner,
            capture: None,
        }
    }

    pub(crate) fn capturing(inner: B, capture: Option<RequestCapture>) -> Self {
        RequestBody { inner, capture }
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
        let frame = ready!(this.inner.poll_frame(cx));
        if let (Some(capture), Some(Ok(frame))) = (this.capture.as_ref(), &frame)
            && let Some(data) = frame.data_ref()
        {
            capture.push_buf(data);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
