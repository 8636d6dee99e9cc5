//! [`ResponseFuture`]: waits for the inner service's response and wraps its body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use auditgate_call::{AuditedCall, Refusal};
use auditgate_queue::RecordSink;
use auditgate_rules::Outcome;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::{ReadAhead, RequestBody, ResponseBody};

pin_project! {
    /// The response future of [`Audit`](crate::Audit): `F` is the inner service's future, `S`
    /// the service and `B` the request body (for a call whose body is read before the service
    /// is called).
    #[derive(Debug)]
    pub struct ResponseFuture<F, S, B: Body, K: RecordSink> {
        #[pin]
        kind: Kind<F, S, B, K>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, S, B: Body, K: RecordSink> {
        Passthrough { #[pin] future: F },
        // Reading the request body's start; the service is called once it is read.
        Reading { reading: Option<Box<Reading<S, B, K>>> },
        Audited {
            #[pin]
            future: F,
            call: Option<AuditedCall<K>>,
            request_id: Option<(HeaderName, HeaderValue)>,
        },
        Refused { refusal: Option<Refusal> },
    }
}

/// A call waiting for its request body's start (see [`ReadAhead`]).
#[derive(Debug)]
struct Reading<S, B: Body, K: RecordSink> {
    service: S,
    parts: http::request::Parts,
    read: ReadAhead<B>,
    call: AuditedCall<K>,
    request_id: Option<(HeaderName, HeaderValue)>,
}

impl<F, S, B: Body, K: RecordSink> ResponseFuture<F, S, B, K> {
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

    /// Reads the start of the request body, then calls `service` with it.
    pub(crate) fn reading(
        service: S,
        parts: http::request::Parts,
        read: ReadAhead<B>,
        call: AuditedCall<K>,
        request_id: Option<(HeaderName, HeaderValue)>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Reading {
                reading: Some(Box::new(Reading {
                    service,
                    parts,
                    read,
                    call,
                    request_id,
                })),
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

impl<F, S, ReqBody, ResBody, E, K> Future for ResponseFuture<F, S, ReqBody, K>
where
    S: Service<Request<RequestBody<ReqBody>>, Future = F>,
    F: Future<Output = Result<Response<ResBody>, E>>,
    ReqBody: Body,
    ResBody: Body,
    K: RecordSink,
{
    type Output = Result<Response<ResponseBody<ResBody, K>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let KindProj::Reading { reading } = self.as_mut().project().kind.project() {
            let Some(waiting) = reading.as_mut() else {
                unreachable!("a ResponseFuture is not polled after it completed");
            };
            ready!(waiting.read.poll_read(cx));
            let Some(waiting) = reading.take() else {
                unreachable!("checked above");
            };
            let Reading {
                mut service,
                parts,
                read,
                call,
                request_id,
            } = *waiting;
            let request = Request::from_parts(parts, RequestBody::after_read_ahead(read));
            let future = service.call(request);
            self.as_mut().project().kind.set(Kind::Audited {
                future,
                call: Some(call),
                request_id,
            });
        }
        match self.project().kind.project() {
            KindProj::Reading { .. } => unreachable!("left above"),
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
