//! [`Audit`]: the service [`AuditLayer`](crate::AuditLayer) wraps around the inner one.

use std::sync::Arc;
use std::task::{Context, Poll};

use auditgate_call::{Begin, CallerClaims, RequestHead};
use auditgate_queue::RecordSink;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::{ReadAhead, RequestBody, ResponseBody};
use crate::future::ResponseFuture;
use crate::future::{Before, Waiting, WaitingBody};
use crate::layer::Settings;
use crate::{RequestId, VerifiedClaims};

/// Audits the calls its rules match and passes every call to the inner service; built by
/// [`AuditLayer`](crate::AuditLayer), see the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct Audit<S, K> {
    pub(crate) inner: S,
    pub(crate) settings: Arc<Settings>,
    pub(crate) sink: K,
}

/// The inner service is `Clone` because a call whose rule reads the request body is handed to
/// the service only once the body's start is read: that call takes the service that was made
/// ready, and a clone takes its place (the pattern tower's own middleware follows).
impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S, K>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    ReqBody: Body,
    ResBody: Body,
    K: RecordSink + Clone,
{
    type Response = Response<ResponseBody<ResBody, K>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, ReqBody, K, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let settings = &self.settings;
        let head = RequestHead {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
        };
        let mut call = match Begin::new(&settings.rules, &self.sink, &settings.call, head) {
            Begin::Pass => {
                // Not taken apart: a call no rule wants costs the match and nothing else.
                let request = request.map(RequestBody::passthrough);
                return ResponseFuture::passthrough(self.inner.call(request));
            }
            Begin::Refuse(refusal) => return ResponseFuture::refused(refusal),
            Begin::Audit(call) => call,
        };
        let (mut parts, body) = request.into_parts();

        // The handler sees the request ID in its header and as an extension; the client gets
        // it back in the same header.
        let header = call.request_id_header().clone();
        let header_value = HeaderValue::from_str(call.request_id()).ok();
        if let Some(value) = &header_value {
            parts.headers.insert(header.clone(), value.clone());
        }
        parts
            .extensions
            .insert(RequestId(call.request_id().to_owned()));
        call.set_client_ip(client_addr(&parts.extensions));
        if let Some(claims) = parts.extensions.get::<VerifiedClaims>() {
            call.set_claims(CallerClaims::Verified(claims.0.clone()));
        }
        // A `before:` rule's GET goes through a clone of the service, before the call.
        let before = call.before_target().and_then(|target| {
            let mut get = Request::get(target.as_str()).body(()).ok()?;
            for name in [http::header::AUTHORIZATION, http::header::COOKIE] {
                for value in parts.headers.get_all(&name) {
                    get.headers_mut().append(name.clone(), value.clone());
                }
            }
            get.headers_mut().insert(
                http::header::ACCEPT,
                HeaderValue::from_static("application/json"),
            );
            if let Some(value) = &header_value {
                get.headers_mut().insert(header.clone(), value.clone());
            }
            get.extensions_mut()
                .insert(RequestId(call.request_id().to_owned()));
            Some(Before::new(
                self.inner.clone(),
                get,
                settings.before_timeout,
                settings.call.capture_limit,
            ))
        });
        let request_id = header_value.map(|v| (header, v));
        // A `closed` call waits for its received record to be durable before the handler runs.
        let durable = call.is_closed().then(|| {
            (
                call.make_received_durable(),
                Box::pin(tokio::time::sleep(settings.call.closed_timeout)),
            )
        });
        let body = match call.request_capture() {
            // The rule reads the body: read its start before the handler can answer without it.
            Some(capture) if !body.is_end_stream() => {
                WaitingBody::ReadAhead(ReadAhead::new(body, capture, settings.call.capture_limit))
            }
            capture if durable.is_some() || before.is_some() => WaitingBody::Plain(body, capture),
            capture => {
                let request = Request::from_parts(parts, RequestBody::capturing(body, capture));
                return ResponseFuture::audited(self.inner.call(request), call, request_id);
            }
        };
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::waiting(Waiting {
            before,
            service: ready,
            parts,
            body: Some(body),
            durable,
            call: Some(call),
            request_id,
        })
    }
}

fn client_addr(extensions: &http::Extensions) -> Option<std::net::IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>() {
        return Some(info.0.ip());
    }
    extensions.get::<std::net::SocketAddr>().map(|a| a.ip())
}
