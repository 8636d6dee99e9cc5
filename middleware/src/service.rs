//! [`Audit`]: the service [`AuditLayer`](crate::AuditLayer) wraps around the inner one.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use auditgate_queue::RecordSink;
use auditgate_rules::{BodyCapture, OnQueueFailure};
use http::{HeaderValue, Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::{RequestBody, ResponseBody};
use crate::future::ResponseFuture;
use crate::layer::Settings;
use crate::pending::PendingRecord;
use crate::{RequestId, VerifiedClaims};

/// Audits the calls its rules match and passes every call to the inner service; built by
/// [`AuditLayer`](crate::AuditLayer), see the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct Audit<S, K> {
    pub(crate) inner: S,
    pub(crate) settings: Arc<Settings>,
    pub(crate) sink: K,
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S, K>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ResBody: Body,
    K: RecordSink + Clone,
{
    type Response = Response<ResponseBody<ResBody, K>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(found) = self
            .settings
            .rules
            .matches(request.method(), request.uri().path())
        else {
            return ResponseFuture::passthrough(
                self.inner.call(request.map(RequestBody::passthrough)),
            );
        };
        let time = chrono::Utc::now();
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();

        // The request ID: the client's when it sent a sane one, else a new one; the handler
        // sees it in the header and as an extension, the client gets it back.
        let request_id = found.request_id_at(&parts.headers, time);
        let header = found.request_id_header().clone();
        let header_value = HeaderValue::from_str(&request_id).ok();
        if let Some(value) = &header_value {
            parts.headers.insert(header.clone(), value.clone());
        }
        parts.extensions.insert(RequestId(request_id.clone()));

        if found.on_queue_failure() == OnQueueFailure::Closed && !self.sink.can_accept() {
            return ResponseFuture::refused(header, request_id);
        }

        let client_ip =
            client_addr(&parts.extensions).and_then(|ip| self.settings.client_ip.render(ip));
        let verified_claims = parts
            .extensions
            .get::<VerifiedClaims>()
            .map(|c| c.0.clone());
        let limit = self.settings.capture_limit;
        let capture = found
            .needs_request_body()
            .then(|| Arc::new(Mutex::new(BodyCapture::new(limit))));
        let pending = PendingRecord::new(
            self.sink.clone(),
            found,
            &parts,
            request_id,
            time,
            started,
            client_ip,
            verified_claims,
            capture.clone(),
            limit,
        );
        let request = Request::from_parts(parts, RequestBody::capturing(body, capture));
        ResponseFuture::audited(
            self.inner.call(request),
            pending,
            header_value.map(|v| (header, v)),
        )
    }
}

fn client_addr(extensions: &http::Extensions) -> Option<std::net::IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>() {
        return Some(info.0.ip());
    }
    extensions.get::<std::net::SocketAddr>().map(|a| a.ip())
}
