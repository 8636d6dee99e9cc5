//! [`ResponseFuture`]: waits for the inner service's response and wraps its body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use auditgate_queue::RecordSink;
use auditgate_rules::Outcome;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;
use crate::pending::PendingRecord;

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
            pending: Option<PendingRecord<K>>,
            request_id: Option<(HeaderName, HeaderValue)>,
        },
        Refused { request_id: Option<(HeaderName, String)> },
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
        pending: PendingRecord<K>,
        request_id: Option<(HeaderName, HeaderValue)>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Audited {
                future,
                pending: Some(pending),
                request_id,
            },
        }
    }

    pub(crate) fn refused(header: HeaderName, request_id: String) -> Self {
        ResponseFuture {
            kind: Kind::Refused {
                request_id: Some((header, request_id)),
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
                pending,
                request_id,
            } => {
                let result = ready!(future.poll(cx));
                let Some(mut pending) = pending.take() else {
                    unreachable!("a ResponseFuture is not polled after it completed");
                };
                match result {
                    Ok(mut response) => {
                        pending.status = Some(response.status().as_u16());
                        if pending.response_body.is_some() {
                            pending.response_encoding =
                                crate::pending::encoding_lines(response.headers());
                        }
                        if let Some((name, value)) = request_id.take() {
                            response.headers_mut().insert(name, value);
                        }
                        let length = body_length(&pending.method, &response);
                        Poll::Ready(Ok(
                            response.map(|b| ResponseBody::audited(b, pending, length))
                        ))
                    }
                    Err(e) => {
                        // The inner service failed without a response; its error passes on.
                        pending.finish(Some(Outcome::Error));
                        Poll::Ready(Err(e))
                    }
                }
            }
            KindProj::Refused { request_id } => {
                let (header, id) = request_id.take().unwrap_or_else(|| {
                    unreachable!("a ResponseFuture is not polled after it completed")
                });
                let body = Bytes::from(auditgate_queue::refusal_body(&id));
                let mut response = Response::new(ResponseBody::refused(body));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                let headers = response.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
                if let Ok(value) = HeaderValue::from_str(&id) {
                    headers.insert(header, value);
                }
                Poll::Ready(Ok(response))
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
