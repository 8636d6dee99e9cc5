//! [`AuditProxy`]: the `ProxyHttp` implementation. Each phase does one thing:
//!
//! | phase | what it does |
//! |---|---|
//! | `request_filter` | match the rules; set the request ID; GET a `before:` path (`before.rs`); refuse (503) a `closed` rule whose record cannot be queued |
//! | `upstream_peer` | the configured upstream, with its timeouts; bodies captured afresh for each attempt (a retry replays the request body) |
//! | `upstream_request_filter` | `Host`, `X-Forwarded-For` (every line kept, the peer appended) |
//! | `request_body_filter` | copy the first bytes of the request body for `body/` templates |
//! | `response_filter` | echo the request ID to the client; a `Location` at the upstream's own address made relative; no capture after `101` |
//! | `response_body_filter` | copy the first bytes of the response body for `response/` templates |
//! | `fail_to_proxy` | answer 502, or 504 on a timeout, when the upstream gave no answer |
//! | `logging` | the one phase every request reaches: build the record and hand it to the queue |
//!
//! Nothing here awaits Redis or logs per request: the record goes to the queue's bounded
//! buffer, and failures are counted in metrics (with a warning at most every 10 s).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use auditgate_call::{AuditedCall, Begin, CallSettings, CallerClaims, Refusal};
use auditgate_queue::{RedisQueue, Throttle};
use auditgate_rules::{Outcome, RuleSet};
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};

use crate::before::BeforeFetcher;
use crate::client_ip::client_ip;
use crate::config::{ProxyConfig, Upstream};
use crate::jwt::{Verdict, Verifier};
use crate::metrics::{CountedQueue, ProxyMetrics};

/// The audit proxy: what every request shares.
#[derive(Debug)]
pub struct AuditProxy {
    pub(crate) rules: Arc<ArcSwap<RuleSet>>,
    /// The queue, counting records as they go in.
    pub(crate) sink: CountedQueue,
    pub(crate) upstream: Upstream,
    pub(crate) config: ProxyConfig,
    /// The capture limit and client-address mode every call shares.
    call_settings: CallSettings,
    /// The CAs an `https` upstream must chain to, when not the system's.
    pub(crate) upstream_ca: Option<Arc<[pingora::utils::tls::WrappedX509]>>,
    /// Bearer-token keys, swapped when the rules reload.
    pub(crate) jwt: Option<Arc<ArcSwap<Verifier>>>,
    pub(crate) metrics: ProxyMetrics,
    /// Requests not yet logged: shutdown waits for them before flushing the queue.
    pub(crate) in_flight: Arc<AtomicUsize>,
    /// Proxy-error warnings, at most one every 10 s.
    error_warnings: Throttle,
    /// `before:` GETs.
    before: BeforeFetcher,
}

/// Per-request state.
#[derive(Debug)]
pub struct Ctx {
    /// The audited call, when a rule wants the request.
    audit: Option<Box<AuditedCall<CountedQueue>>>,
    /// Counts the request in [`AuditProxy::in_flight`] for as long as it lives. Declared
    /// after `audit`, so that a call dropped unfinished has made its record before the count
    /// that shutdown waits for goes down.
    _in_flight: InFlight,
}

/// One request not yet logged. Dropping it, however the request ends (even by a panic in a
/// filter, which skips `logging`), takes it off the count shutdown waits for.
#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AuditProxy {
    pub(crate) fn new(
        rules: Arc<ArcSwap<RuleSet>>,
        queue: RedisQueue,
        upstream: Upstream,
        config: ProxyConfig,
        jwt: Option<Arc<ArcSwap<Verifier>>>,
        metrics: ProxyMetrics,
        locator: Option<Arc<auditgate_geo::Locator>>,
    ) -> AuditProxy {
        let before = BeforeFetcher::new(
            Duration::from_millis(config.before_timeout_ms),
            config.capture_limit,
        );
        AuditProxy {
            rules,
            sink: CountedQueue(queue),
            upstream,
            call_settings: CallSettings {
                capture_limit: config.capture_limit,
                client_ip: config.client_ip,
                method_override_headers: config.method_override_headers.clone(),
                closed_timeout: Duration::from_millis(config.closed_timeout_ms),
                locator,
            },
            config,
            jwt,
            metrics,
            upstream_ca: None,
            in_flight: Arc::new(AtomicUsize::new(0)),
            error_warnings: Throttle::new(Duration::from_secs(10)),
            before,
        }
    }

    /// The configured upstream, with its timeouts and CAs.
    fn peer(&self) -> HttpPeer {
        let up = &self.upstream;
        let mut peer = HttpPeer::new(up.addr, up.tls, up.host.clone());
        let t = &self.config.timeouts;
        peer.options.connection_timeout = Some(t.connect());
        peer.options.read_timeout = Some(t.read());
        peer.options.write_timeout = Some(t.write());
        peer.options.idle_timeout = Some(t.idle());
        peer.options.ca = self.upstream_ca.clone();
        peer
    }

    fn client_ip_of(&self, session: &Session) -> Option<IpAddr> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        client_ip(peer, session.req_header(), &self.config.trusted_proxies)
    }

    /// A redirect to the upstream's own address (made from the `Host` the proxy sent it)
    /// becomes a path on the proxy, as nginx's `proxy_redirect default` does: clients are
    /// not sent around the proxy. It is made relative, which keeps whatever scheme and host
    /// the client used to reach the proxy.
    fn relative_location(&self, response: &mut ResponseHeader) -> Result<()> {
        let Some(location) = response.headers.get(http::header::LOCATION) else {
            return Ok(());
        };
        let scheme = if self.upstream.tls {
            "https://"
        } else {
            "http://"
        };
        let Some(rest) = location
            .to_str()
            .ok()
            .and_then(|l| strip_prefix_ignore_case(l, scheme))
            .and_then(|l| strip_prefix_ignore_case(l, &self.upstream.authority))
            .filter(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
            // `//host` and `/\host` would send the client to another host: left absolute.
            .filter(|rest| !(rest.starts_with("//") || rest.starts_with("/\\")))
        else {
            return Ok(());
        };
        let relative = if rest.starts_with('/') {
            rest.to_owned()
        } else {
            format!("/{rest}")
        };
        response.insert_header(http::header::LOCATION, relative)
    }

    /// Answers a call its record could not be kept for with the refusal's 503; the upstream
    /// is never called.
    async fn refuse(&self, session: &mut Session, refusal: Refusal) -> Result<bool> {
        self.metrics.refused.increment(1);
        let (parts, body) = refusal.into_response().into_parts();
        let response = ResponseHeader::from(parts);
        session
            .write_response_header(Box::new(response), false)
            .await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    /// A warning about failing requests, at most every 10 s: the log shows that something is
    /// wrong without one line per request.
    fn warn_rarely(&self, error: &Error) {
        if self.error_warnings.allow() {
            tracing::warn!(error = %error, "proxying failed (further failures in the next 10 s are only counted: auditgate_proxy_errors_total)");
        }
    }
}

/// The answer to a request target that is not a path.
const BAD_TARGET: &[u8] =
    br#"{"error":"the request target must be a path (/...) or an http(s) URL"}"#;

/// Whether a request target is one the rules can be matched against as the upstream reads it:
/// origin-form (`/v1/files`) or absolute-form with an `http` or `https` scheme. Asterisk-form
/// (`OPTIONS *`), authority-form (`CONNECT host:443`), a bare query and other schemes would
/// reach the upstream as targets no rule path describes, so they are refused, not passed.
fn is_path_target(target: &[u8]) -> bool {
    let starts = |prefix: &[u8]| {
        target
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    target.first() == Some(&b'/') || starts(b"http://") || starts(b"https://")
}

fn strip_prefix_ignore_case<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[async_trait]
impl ProxyHttp for AuditProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            audit: None,
            _in_flight: InFlight::new(&self.in_flight),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if !is_path_target(session.req_header().raw_path()) {
            let body = Bytes::from_static(BAD_TARGET);
            let mut response = ResponseHeader::build(400, Some(3))?;
            response.insert_header(http::header::CONTENT_TYPE, "application/json")?;
            response.insert_header(http::header::CONTENT_LENGTH, body.len())?;
            session
                .write_response_header(Box::new(response), false)
                .await?;
            session.write_response_body(Some(body), true).await?;
            return Ok(true);
        }
        let rules = self.rules.load();
        let head: &http::request::Parts = session.req_header();
        let begun = Begin::new(&rules, &self.sink, &self.call_settings, head.into());
        let mut call = match begun {
            Begin::Pass => return Ok(false),
            Begin::Refuse(refusal) => return self.refuse(session, refusal).await,
            Begin::Audit(call) => call,
        };
        session
            .req_header_mut()
            .insert_header(call.request_id_header().clone(), call.request_id())?;
        call.set_client_ip(self.client_ip_of(session));
        if let Some(verifier) = &self.jwt {
            call.set_claims(
                match verifier.load().verify(&session.req_header().headers) {
                    Verdict::Verified(claims) => CallerClaims::Verified(claims),
                    Verdict::Rejected(reason) => CallerClaims::Rejected(reason),
                    Verdict::NoToken => CallerClaims::Absent,
                },
            );
        }
        // What a `before:` rule's resource was, read before the call can change it.
        if let Some(target) = call.before_target() {
            let peer = self.peer();
            let host = match session.req_header().headers.get(http::header::HOST) {
                Some(host) if self.config.preserve_host => host.to_str().unwrap_or_default(),
                _ => self.upstream.authority.as_str(),
            };
            let answer = self
                .before
                .fetch(
                    &peer,
                    host,
                    &target,
                    &session.req_header().headers,
                    (call.request_id_header(), call.request_id()),
                )
                .await;
            match answer {
                Some((body, truncated)) => call.set_before(Some(body), truncated),
                None => call.set_before(None, false),
            }
        }
        // A `closed` call is forwarded only once its received record is durable.
        if call.is_closed() {
            let durable = call.make_received_durable();
            match tokio::time::timeout(self.call_settings.closed_timeout, durable).await {
                Ok(Ok(seq)) => call.received_is_durable(seq),
                _ => return self.refuse(session, call.refuse()).await,
            }
        }
        ctx.audit = Some(Box::new(call));
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Called once per attempt. When pingora retries a request (a pooled connection was
        // found closed), it passes the request body through `request_body_filter` again:
        // each attempt captures the bodies afresh.
        if let Some(audit) = ctx.audit.as_mut() {
            audit.restart_capture();
        }
        Ok(Box::new(self.peer()))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        if !self.config.preserve_host {
            upstream_request.insert_header(http::header::HOST, self.upstream.authority.as_str())?;
        }
        if let Some(peer) = session.client_addr().and_then(|a| a.as_inet()) {
            // Every line the client (or a proxy in front) sent, in order, then this hop.
            let mut forwarded = String::new();
            for line in upstream_request.headers.get_all("x-forwarded-for") {
                let line = String::from_utf8_lossy(line.as_bytes());
                if !line.trim().is_empty() {
                    forwarded.push_str(line.trim());
                    forwarded.push_str(", ");
                }
            }
            // Writing into a String cannot fail.
            let _ = std::fmt::Write::write_fmt(&mut forwarded, format_args!("{}", peer.ip()));
            upstream_request.insert_header("x-forwarded-for", forwarded)?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(audit), Some(chunk)) = (ctx.audit.as_mut(), body.as_ref()) {
            audit.request_data(chunk);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !self.config.preserve_host {
            self.relative_location(upstream_response)?;
        }
        if let Some(audit) = ctx.audit.as_mut() {
            upstream_response
                .insert_header(audit.request_id_header().clone(), audit.request_id())?;
            if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
                audit.stop_capture();
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let (Some(audit), Some(chunk)) = (ctx.audit.as_mut(), body.as_ref()) {
            audit.response_data(chunk);
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
                if *e.esource() == ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0
            && let Ok(mut response) = ResponseHeader::build(code, Some(4))
        {
            let _ = response.insert_header(http::header::CONTENT_LENGTH, "0");
            if let Some(audit) = &ctx.audit {
                let _ =
                    response.insert_header(audit.request_id_header().clone(), audit.request_id());
            }
            // As pingora's own error responses: `Connection: close` (the connection is not
            // reused after an error), and nothing when a response has begun already.
            let _ = session.write_error_response(response, Bytes::new()).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        // No log line per failed request: count it, and warn at most every 10 s.
        self.metrics.error(error);
        self.warn_rarely(error);
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        self.metrics.requests.increment(1);
        let Some(mut call) = ctx.audit.take() else {
            return;
        };
        if let Some(response) = session.response_written() {
            call.response_head(response.status.as_u16(), &response.headers);
        }
        let outcome = match e.map(|e| e.esource()) {
            None => None,
            // The client went away (or broke the protocol) before the response was complete.
            Some(ErrorSource::Downstream) => Some(Outcome::Aborted),
            // No complete answer from the upstream: the proxy answered (502/504) or cut off.
            Some(_) => Some(Outcome::Error),
        };
        call.finish(outcome);
    }
}
