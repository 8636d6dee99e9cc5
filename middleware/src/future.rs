//! [`ResponseFuture`]: waits for the inner service's response and wraps its body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use auditgate_call::{AuditedCall, Refusal};
use auditgate_queue::RecordSink;
use auditgate_rules::Outcome;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;

pin_project! {
    /// The response future of [`Audit`](crate::Audit).
    #[derive(Debug)]
    pub struct ResponseFuture<F, K: RecordSink> {
        #[pin]
        kind: Kind<F, K>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, K: RecordSink> {
        Passthrough { #[pin] future: F },
        Audited {
            #[pin]
            future: F,
            call: Option<AuditedCall<K>>,
            request_id: Option<(HeaderName, HeaderValue)>,
        },
        Refused { refusal: Option<Refusal> },
    }
}

impl<F, K: RecordSink> ResponseFuture<F, K> {
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

    pub(crate) fn refused(refusal: Refusal) -> Self {
        ResponseFuture {
            kind: Kind::Refused {
                refusal: Some(refusal),
            },
        }
    }
}

impl<F, B, E, K> Future for ResponseFuture<F, K>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    K: RecordSink,
{
    type Output = Result<Response<ResponseBody<B, K>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
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
