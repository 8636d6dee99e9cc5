//! [`ResponseFuture`]: waits for the inner service's response and wraps its body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use auditgate_call::{AuditedCall, Refusal, RequestCapture};
use auditgate_queue::{Durable, RecordSink};
use auditgate_rules::Outcome;
use bytes::Buf;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::{ReadAhead, RequestBody, ResponseBody};

pin_project! {
    /// The response future of [`Audit`](crate::Audit): `F` is the inner service's future, `S`
    /// the service, `B` the request body (for a call whose body is read before the service
    /// is called) and `R` the service's response body (for a `before:` GET's answer).
    #[derive(Debug)]
    pub struct ResponseFuture<F, S, B: Body, K: RecordSink, R> {
        #[pin]
        kind: Kind<F, S, B, K, R>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, S, B: Body, K: RecordSink, R> {
        Passthrough { #[pin] future: F },
        // Waiting for a `before:` GET, for the received record to be durable, or reading the
        // request body's start; the service is called after.
        Waiting { waiting: Option<Box<Waiting<S, B, K, F, R>>> },
        Audited {
            #[pin]
            future: F,
            call: Option<AuditedCall<K>>,
            request_id: Option<(HeaderName, HeaderValue)>,
        },
        Refused { refusal: Option<Refusal> },
    }
}

/// A call not yet handed to the service: a `closed` call waiting for its received record to be
/// durable (bounded by the settings' `closed_timeout`, then refused with 503), and a call whose
/// rule reads the body waiting for the body's start (see [`ReadAhead`]).
#[derive(Debug)]
pub(crate) struct Waiting<S, B: Body, K: RecordSink, F, R> {
    pub(crate) before: Option<Before<S, F, R>>,
    pub(crate) service: S,
    pub(crate) parts: http::request::Parts,
    pub(crate) body: Option<WaitingBody<B>>,
    pub(crate) durable: Option<(Durable, Pin<Box<tokio::time::Sleep>>)>,
    pub(crate) call: Option<AuditedCall<K>>,
    pub(crate) request_id: Option<(HeaderName, HeaderValue)>,
}

/// The request body of a waiting call.
#[derive(Debug)]
pub(crate) enum WaitingBody<B: Body> {
    /// Passed on as it is, with its capture (if a rule reads it).
    Plain(B, Option<RequestCapture>),
    /// Its start is read before the service is called.
    ReadAhead(ReadAhead<B>),
}

/// What a waiting call does next.
enum Next {
    Call,
    Refuse,
}

/// A rule's `before:` GET, made through a clone of the inner service before the call is
/// handed to it: its answer (2xx, up to the capture limit) is what `before/` templates read.
/// It never fails the call: no answer within the timeout, or any other answer, leaves
/// `capture.before: failed` in the record.
pub(crate) struct Before<S, F, R> {
    stage: BeforeStage<S, F, R>,
    timeout: Pin<Box<tokio::time::Sleep>>,
    limit: usize,
    collected: Vec<u8>,
}

enum BeforeStage<S, F, R> {
    /// Waiting for the service clone to be ready, with the GET to send.
    Ready {
        service: S,
        request: Option<Box<Request<()>>>,
    },
    Calling(Pin<Box<F>>),
    Reading(Pin<Box<R>>),
    Done,
}

impl<S, F, R> std::fmt::Debug for Before<S, F, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Before")
            .field("collected", &self.collected.len())
            .finish_non_exhaustive()
    }
}

impl<S, F, R> Before<S, F, R> {
    pub(crate) fn new(
        service: S,
        request: Request<()>,
        timeout: std::time::Duration,
        limit: usize,
    ) -> Self {
        Before {
            stage: BeforeStage::Ready {
                service,
                request: Some(Box::new(request)),
            },
            timeout: Box::pin(tokio::time::sleep(timeout)),
            limit,
            collected: Vec::new(),
        }
    }

    /// The answer's body and whether it was cut at the limit; `None` when there is no
    /// usable answer.
    fn poll_answer<B, E>(&mut self, cx: &mut Context<'_>) -> Poll<Option<(Vec<u8>, bool)>>
    where
        S: Service<Request<RequestBody<B>>, Future = F>,
        F: Future<Output = Result<Response<R>, E>>,
        B: Body,
        R: Body,
    {
        if self.timeout.as_mut().poll(cx).is_ready() {
            self.stage = BeforeStage::Done;
            return Poll::Ready(None);
        }
        loop {
            match &mut self.stage {
                BeforeStage::Ready { service, request } => {
                    if ready!(service.poll_ready(cx)).is_err() {
                        self.stage = BeforeStage::Done;
                        return Poll::Ready(None);
                    }
                    let Some(request) = request.take() else {
                        unreachable!("sent once, then Calling");
                    };
                    let future = service.call(request.map(|()| RequestBody::empty()));
                    self.stage = BeforeStage::Calling(Box::pin(future));
                }
                BeforeStage::Calling(future) => match ready!(future.as_mut().poll(cx)) {
                    Ok(response) if response.status().is_success() => {
                        self.stage = BeforeStage::Reading(Box::pin(response.into_body()));
                    }
                    _ => {
                        self.stage = BeforeStage::Done;
                        return Poll::Ready(None);
                    }
                },
                BeforeStage::Reading(body) => match ready!(body.as_mut().poll_frame(cx)) {
                    None => {
                        self.stage = BeforeStage::Done;
                        return Poll::Ready(Some((std::mem::take(&mut self.collected), false)));
                    }
                    Some(Ok(frame)) => {
                        let Ok(mut data) = frame.into_data() else {
                            continue; // trailers
                        };
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            let room = self.limit - self.collected.len();
                            if chunk.len() > room {
                                self.collected.extend_from_slice(&chunk[..room]);
                                self.stage = BeforeStage::Done;
                                let collected = std::mem::take(&mut self.collected);
                                return Poll::Ready(Some((collected, true)));
                            }
                            self.collected.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                    Some(Err(_)) => {
                        self.stage = BeforeStage::Done;
                        return Poll::Ready(None);
                    }
                },
                BeforeStage::Done => return Poll::Ready(None),
            }
        }
    }
}

impl<S, B: Body, K: RecordSink, F, R> Waiting<S, B, K, F, R> {
    /// Waits for durability, then for the body's start.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        if let Some((durable, timeout)) = &mut self.durable {
            match Pin::new(durable).poll(cx) {
                Poll::Ready(Ok(seq)) => {
                    if let Some(call) = self.call.as_mut() {
                        call.received_is_durable(seq);
                    }
                    self.durable = None;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Next::Refuse),
                Poll::Pending => {
                    ready!(timeout.as_mut().poll(cx));
                    return Poll::Ready(Next::Refuse);
                }
            }
        }
        if let Some(WaitingBody::ReadAhead(read)) = &mut self.body {
            ready!(read.poll_read(cx));
        }
        Poll::Ready(Next::Call)
    }
}

impl<F, S, B: Body, K: RecordSink, R> ResponseFuture<F, S, B, K, R> {
    pub(crate) fn passthrough(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Passthrough { future },
        }
    }

    pub(crate) fn audited(
        future: F,
        call: AuditedCall<K>,
        request_id: Option<(HeaderName, HeaderValue)>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Audited {
                future,
                call: Some(call),
                request_id,
            },
        }
    }

    /// Waits as `waiting` says, then calls its service.
    pub(crate) fn waiting(waiting: Waiting<S, B, K, F, R>) -> Self {
        ResponseFuture {
            kind: Kind::Waiting {
                waiting: Some(Box::new(waiting)),
            },
        }
    }

    pub(crate) fn refused(refusal: Refusal) -> Self {
        ResponseFuture {
            kind: Kind::Refused {
                refusal: Some(refusal),
            },
        }
    }
}

impl<F, S, ReqBody, ResBody, E, K> Future for ResponseFuture<F, S, ReqBody, K, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>, Future = F>,
    F: Future<Output = Result<Response<ResBody>, E>>,
    ReqBody: Body,
    ResBody: Body,
    K: RecordSink,
{
    type Output = Result<Response<ResponseBody<ResBody, K>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let KindProj::Waiting { waiting } = self.as_mut().project().kind.project() {
            let Some(w) = waiting.as_mut() else {
                unreachable!("a ResponseFuture is not polled after it completed");
            };
            if let Some(before) = w.before.as_mut() {
                let answer = ready!(before.poll_answer(cx));
                if let Some(call) = w.call.as_mut() {
                    match answer {
                        Some((body, truncated)) => call.set_before(Some(body), truncated),
                        None => call.set_before(None, false),
                    }
                }
                w.before = None;
            }
            let next = ready!(w.poll_ready(cx));
            let Some(w) = waiting.take() else {
                unreachable!("checked above");
            };
            let Waiting {
                mut service,
                parts,
                body,
                call,
                request_id,
                ..
            } = *w;
            let (Some(call), Some(body)) = (call, body) else {
                unreachable!("a waiting call has its call and body until it moves on");
            };
            let next_kind = match next {
                // Never handed to the service: the record says so, the client gets the 503.
                Next::Refuse => Kind::Refused {
                    refusal: Some(call.refuse()),
                },
                Next::Call => {
                    let body = match body {
                        WaitingBody::Plain(body, capture) => RequestBody::capturing(body, capture),
                        WaitingBody::ReadAhead(read) => RequestBody::after_read_ahead(read),
                    };
                    Kind::Audited {
                        future: service.call(Request::from_parts(parts, body)),
                        call: Some(call),
                        request_id,
                    }
                }
            };
            self.as_mut().project().kind.set(next_kind);
        }
        match self.project().kind.project() {
            KindProj::Waiting { .. } => unreachable!("left above"),
            KindProj::Passthrough { future } => {
                let result = ready!(future.poll(cx));
                Poll::Ready(result.map(|r| r.map(ResponseBody::passthrough)))
            }
            KindProj::Audited {
                future,
                call,
                request_id,
            } => {
                let result = ready!(future.poll(cx));
                let Some(mut call) = call.take() else {
                    unreachable!("a ResponseFuture is not polled after it completed");
                };
                match result {
                    Ok(mut response) => {
                        call.response_head(response.status().as_u16(), response.headers());
                        if let Some((name, value)) = request_id.take() {
                            response.headers_mut().insert(name, value);
                        }
                        let length = body_length(call.method(), &response);
                        Poll::Ready(Ok(response.map(|b| ResponseBody::audited(b, call, length))))
                    }
                    Err(e) => {
                        // The inner service failed without a response; its error passes on.
                        call.finish(Some(Outcome::Error));
                        Poll::Ready(Err(e))
                    }
                }
            }
            KindProj::Refused { refusal } => {
                let Some(refusal) = refusal.take() else {
                    unreachable!("a ResponseFuture is not polled after it completed");
                };
                Poll::Ready(Ok(refusal.into_response().map(ResponseBody::refused)))
            }
        }
    }
}

/// How many body bytes the client is to get, when the response says: none for an answer to
/// HEAD, a 1xx, 204 or 304, else its `Content-Length`.
fn body_length<B>(method: &http::Method, response: &Response<B>) -> Option<u64> {
    let status = response.status();
    if method == http::Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Some(0);
    }
    response
        .headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
