//! One audited call's life, shared by auditgate's two front ends: the pingora proxy and the
//! tower layer. Each is a thin *host* that feeds a call the events it sees; everything about
//! what a call records — the rule match, the request ID, the `closed` refusal, body capture and
//! decoding, status → outcome, the record and its enqueue — is here, once.
//!
//! # The call's states
//!
//! ```text
//!            Begin::new(rules, sink, settings, request head)
//!                 │
//!   ┌─────────────┼──────────────────────┐
//!   ▼             ▼                      ▼
//! Pass         Refuse(Refusal)         Audit(AuditedCall)
//! (no rule)    (closed rule, the       │  request_data …      request bytes, up to the limit
//!               sink cannot keep a     │  response_head       status, Content-Encoding
//!               record: answer 503,    │  response_data …     response bytes, up to the limit
//!               never forward)         ▼
//!                                    finish(outcome) ──► record ──► sink.enqueue_ref
//!                                      or dropped    ──► record (outcome `aborted`) ──► sink
//! ```
//!
//! | event | the proxy (pingora phases) | the layer (tower) |
//! |---|---|---|
//! | [`Begin::new`] | `request_filter` | `Audit::call` |
//! | [`AuditedCall::request_data`] | `request_body_filter` | `RequestBody::poll_frame`, through [`RequestCapture`] |
//! | [`AuditedCall::restart_capture`] | `upstream_peer` (a retry replays the body) | — |
//! | [`AuditedCall::stop_capture`] | `response_filter` on `101` | — |
//! | [`AuditedCall::response_head`] | `logging` (the head the client got) | `ResponseFuture::poll` |
//! | [`AuditedCall::response_data`] | `response_body_filter` | `ResponseBody::poll_frame` ([`AuditedCall::response_buf`]) |
//! | [`AuditedCall::finish`] | `logging`, with the error's outcome | the body's end; `error` when the inner service fails |
//! | `Drop` | a filter panicked (no `logging`) | the client left; the body was dropped unfinished |
//!
//! What stays with the hosts is what only they can know: the proxy's client address behind
//! trusted proxies (`X-Forwarded-For`) and its JWT verification, the layer's `ConnectInfo` and
//! `VerifiedClaims`, and the proxy's count of calls in flight for shutdown.
//!
//! # Exactly one record
//!
//! An [`AuditedCall`] emits its record exactly once: [`AuditedCall::finish`] consumes it, and
//! its `Drop` emits the record as `aborted` only when `finish` was never reached. A flag
//! (`emitted`) makes the two paths one: whichever comes first writes the record, the other
//! does nothing. A [`Begin::Pass`] or [`Begin::Refuse`] call has no record at all (a refused call
//! was never forwarded; the client's 503 says so).
//!
//! Nothing here awaits anything: the sink's `enqueue_ref` returns at once, and a record it
//! cannot take is counted by the sink.
//!
//! ```
//! use auditgate_call::{Begin, CallSettings};
//! use auditgate_queue::MemorySink;
//! use auditgate_rules::RuleSet;
//!
//! let rules = RuleSet::from_yaml("rules.yaml", r#"
//! version: 1
//! service: media-library
//! rules:
//!   - operation: asset.rename
//!     method: PATCH
//!     path: /v1/files/{fileId}/details
//!     resources: [{ type: file, id: "{path.fileId}" }]
//!     details: { new_name: "{body/name}" }
//! "#)?;
//! let sink = MemorySink::new();
//! let request = http::Request::patch("/v1/files/abc/details").body(())?;
//! let (parts, ()) = request.into_parts();
//!
//! let head = (&parts).into();
//! let Begin::Audit(mut call) = Begin::new(&rules, &sink, &CallSettings::default(), head) else {
//!     panic!("a rule matches");
//! };
//! call.request_data(br#"{"name": "tree.png"}"#);
//! call.response_head(200, &http::HeaderMap::new());
//! call.finish(None);
//!
//! let records = sink.records();
//! assert_eq!(records[0].operation, "asset.rename");
//! assert_eq!(records[0].details["new_name"], "tree.png");
//! assert_eq!(records[0].resources[0].id.as_deref(), Some("abc"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use auditgate_geo::Locator;
use auditgate_queue::{Durable, RecordSink};
use auditgate_rules::{
    BodyNote, Call, Claims, ClientIpMode, Location, Match, OnQueueFailure, Outcome, RuleSet, Stage,
};
use bytes::Buf;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};

mod capture;
mod refusal;

pub use capture::BodyCapture;
pub use refusal::Refusal;

/// The default for how much of a request or response body is read for `body/` and
/// `response/` templates: 64 KiB.
pub const DEFAULT_CAPTURE_LIMIT: usize = 64 * 1024;

/// What every call of one host shares.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// How many bytes of each body templates may read (default [`DEFAULT_CAPTURE_LIMIT`]).
    pub capture_limit: usize,
    /// How the client's address is recorded (default: anonymised).
    pub client_ip: ClientIpMode,
    /// Headers that name the method an upstream acts on, whatever the request line says
    /// (default [`DEFAULT_METHOD_OVERRIDE_HEADERS`]; empty to trust the request line only). A
    /// call carrying one matches the rules as that method, and its record says so.
    pub method_override_headers: Vec<HeaderName>,
    /// How long a `closed` call waits for its received record to be durable before it is
    /// refused with 503 and never forwarded (default [`DEFAULT_CLOSED_TIMEOUT`]).
    pub closed_timeout: std::time::Duration,
    /// Finds `request.location` from the client's full address (default: countries from
    /// the embedded table); `None` records no location.
    pub locator: Option<Arc<Locator>>,
}

/// The default of [`CallSettings::closed_timeout`]: 2 s.
pub const DEFAULT_CLOSED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The method-override headers frameworks honour: `X-HTTP-Method-Override` (ASP.NET, Express's
/// method-override, Google APIs), `X-Method-Override` and `X-HTTP-Method` (OData, Spring).
pub const DEFAULT_METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
];

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            capture_limit: DEFAULT_CAPTURE_LIMIT,
            client_ip: ClientIpMode::default(),
            closed_timeout: DEFAULT_CLOSED_TIMEOUT,
            locator: Some(Arc::new(Locator::embedded())),
            method_override_headers: DEFAULT_METHOD_OVERRIDE_HEADERS
                .iter()
                .map(|name| HeaderName::from_static(name))
                .collect(),
        }
    }
}

impl CallSettings {
    /// The first method-override header the request carries with a method in it, and that
    /// method. Honoured whatever the request line's method: an upstream that applies the
    /// override to a `GET` is rarer than one that applies it to a `POST`, but an audit that
    /// records one call too many is wrong in the safe direction (and [`Begin::new`] falls
    /// back to the request line's method when no rule audits the overriding one).
    fn method_override(&self, headers: &HeaderMap) -> Option<(&HeaderName, http::Method)> {
        self.method_override_headers.iter().find_map(|name| {
            let value = headers.get(name)?.as_bytes().trim_ascii();
            Some((name, http::Method::from_bytes(value).ok()?))
        })
    }
}

/// The head of a request that has just arrived, borrowed from the host (a host need not take
/// its request apart for a call no rule wants).
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method, as the client sent it.
    pub method: &'a http::Method,
    /// The request target.
    pub uri: &'a http::Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

impl<'a> From<&'a http::request::Parts> for RequestHead<'a> {
    fn from(parts: &'a http::request::Parts) -> Self {
        RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        }
    }
}

/// How a call starts: what the host is to do with it.
#[derive(Debug)]
// Made once per call and taken apart at once: boxing the call would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Begin<K: RecordSink> {
    /// No rule wants the call: forward it untouched.
    Pass,
    /// A `closed` rule matched and the sink cannot keep a record durably: answer with the
    /// refusal and do not forward the call.
    Refuse(Refusal),
    /// The call is audited: forward it (with [`AuditedCall::request_id`] in its request-ID
    /// header) and feed the call what passes.
    Audit(AuditedCall<K>),
}

/// How far the caller's bearer-token claims can be trusted, as the host found out.
#[derive(Debug, Clone, Default)]
pub enum CallerClaims {
    /// Not checked: `jwt/` templates decode the token without its signature.
    #[default]
    Unverified,
    /// Checked by the host (the proxy's `jwt:` keys, the layer's `VerifiedClaims`).
    Verified(serde_json::Value),
    /// Checked and refused, for this short, fixed reason (`expired`): `jwt/` templates yield
    /// nothing, and the record's actor says `jwt rejected: REASON` (see
    /// [`auditgate_rules::Claims::Rejected`]).
    Rejected(&'static str),
    /// No token to check: `jwt/` templates yield nothing.
    Absent,
}

/// Where a call keeps its request body's capture: its own, until a host asks to share it.
#[derive(Debug)]
enum RequestBody {
    /// The host feeds the call the body itself (the proxy): no lock.
    Owned(BodyCapture),
    /// The body is read elsewhere (the layer's request body, polled by the handler).
    Shared(RequestCapture),
}

/// The request body's capture, shared between the call and a host that reads the body
/// somewhere else (the layer's request body, polled by the handler).
#[derive(Debug, Clone)]
pub struct RequestCapture(Arc<Mutex<BodyCapture>>);

impl RequestCapture {
    /// Copies a data frame, up to the capture limit.
    pub fn push_buf(&self, data: &impl Buf) {
        self.lock().push_buf(data);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BodyCapture> {
        // A panic while pushing leaves a capture that is at worst incomplete.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A call a rule matched, from its start until its record is emitted; see the
/// [crate docs](crate) for its events and the exactly-once rule.
#[derive(Debug)]
pub struct AuditedCall<K: RecordSink> {
    sink: K,
    found: Match,
    method: http::Method,
    /// The method-override header that named `method`, and the request line's method.
    method_override: Option<(HeaderName, http::Method)>,
    uri: http::Uri,
    /// Only what the record reads: a browser's dozen headers are not copied per call.
    headers: HeaderMap,
    request_id: String,
    time: DateTime<Utc>,
    started: Instant,
    client_ip: Option<IpAddr>,
    client_ip_mode: ClientIpMode,
    locator: Option<Arc<Locator>>,
    /// Found once the host sets the client's address.
    location: Option<Location>,
    /// The answer of the rule's `before:` GET, once the host has made it.
    before: Option<Vec<u8>>,
    before_note: Option<BodyNote>,
    claims: CallerClaims,
    request_body: Option<RequestBody>,
    /// The request's `Content-Encoding` lines, kept when its body is captured.
    request_encoding: Vec<HeaderValue>,
    response_body: Option<BodyCapture>,
    /// The response's `Content-Encoding` lines, kept when its body is captured.
    response_encoding: Vec<HeaderValue>,
    status: Option<u16>,
    grpc_status: Option<u32>,
    emitted: bool,
    /// The record's `id`, fixed at the start: a `closed` call's received record and its
    /// complete record are one record to the store.
    record_id: uuid::Uuid,
    /// The received record's `origin.seq`, which the complete record takes too.
    origin_seq: Option<u64>,
}

impl<K: RecordSink + Clone> Begin<K> {
    /// Matches a request that has just arrived (its method and its path, normalised) and
    /// decides what becomes of it. The request ID is the client's when it sent a sane one in
    /// the rules' request-ID header, else a new UUIDv7 of this moment.
    pub fn new(
        rules: &RuleSet,
        sink: &K,
        settings: &CallSettings,
        request: RequestHead<'_>,
    ) -> Begin<K> {
        let path = request.uri.path();
        // The overriding method when the rules audit it; else the request line's, so that an
        // override naming a method no rule audits (`POST` with `X-HTTP-Method-Override: GET`)
        // cannot carry past the audit a call an upstream ignoring the header applies as `POST`.
        let (found, overridden) = match settings.method_override(request.headers) {
            Some((name, method)) => match rules.matches(&method, path) {
                Some(found) => (Some(found), Some((name, method))),
                None => (rules.matches(request.method, path), None),
            },
            None => (rules.matches(request.method, path), None),
        };
        let Some(found) = found else {
            return Begin::Pass;
        };
        let method = overridden.as_ref().map_or(request.method, |(_, m)| m);
        let time = Utc::now();
        let started = Instant::now();
        let request_id = found.request_id_at(request.headers, time);
        if found.on_queue_failure() == OnQueueFailure::Closed && !sink.can_accept() {
            let header = found.request_id_header().clone();
            return Begin::Refuse(Refusal::new(header, request_id));
        }
        let limit = settings.capture_limit;
        let request_body = found
            .needs_request_body()
            .then(|| RequestBody::Owned(BodyCapture::new(limit)));
        let request_encoding = match request_body {
            Some(_) => encoding_lines(request.headers),
            None => Vec::new(),
        };
        Begin::Audit(AuditedCall {
            sink: sink.clone(),
            method: method.clone(),
            method_override: overridden.map(|(name, _)| (name.clone(), request.method.clone())),
            uri: request.uri.clone(),
            headers: found.record_headers(request.headers),
            request_id,
            time,
            started,
            client_ip: None,
            client_ip_mode: settings.client_ip,
            locator: settings.locator.clone(),
            location: None,
            before: None,
            before_note: None,
            claims: CallerClaims::Unverified,
            request_body,
            request_encoding,
            response_body: found.needs_response_body().then(|| BodyCapture::new(limit)),
            response_encoding: Vec::new(),
            status: None,
            grpc_status: None,
            emitted: false,
            record_id: auditgate_rules::uuid_at(time),
            origin_seq: None,
            found,
        })
    }
}

impl<K: RecordSink> AuditedCall<K> {
    /// The call's request ID: the host forwards it in [`Self::request_id_header`] and
    /// echoes it to the client.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The header that carries the request ID (the rules' `defaults.request_id`).
    pub fn request_id_header(&self) -> &HeaderName {
        self.found.request_id_header()
    }

    /// The method of the request line: what HTTP itself goes by (an answer to `HEAD` has no
    /// body, whatever a method-override header says the upstream did).
    pub fn method(&self) -> &http::Method {
        self.method_override
            .as_ref()
            .map_or(&self.method, |(_, sent)| sent)
    }

    /// The client's address, as the host determined it (the record keeps as much of it as
    /// [`CallSettings::client_ip`] says).
    pub fn set_client_ip(&mut self, ip: Option<IpAddr>) {
        self.client_ip = ip;
        // From the full address, before the record anonymises it.
        self.location = (self.locator.as_ref()).and_then(|l| l.locate(ip?));
    }

    /// The upstream path (and query) to GET before forwarding, when the matching rule has
    /// `before:`; the host GETs it with the caller's credentials and hands the answer to
    /// [`AuditedCall::set_before`]. `None`: nothing to fetch.
    pub fn before_target(&self) -> Option<String> {
        if !self.found.has_before() {
            return None;
        }
        let call = Call {
            method_override: (self.method_override.as_ref())
                .map(|(header, sent)| (header.as_str(), sent.as_str())),
            claims: self.claims(),
            request_id: Some(&self.request_id),
            time: self.time,
            ..Call::new(&self.method, &self.uri, &self.headers)
        };
        self.found.before_target(&call)
    }

    /// The answer of the `before:` GET: its body when it was answered 2xx (cut at the
    /// capture limit, and then `truncated`), or `None` when it failed, timed out or was
    /// answered otherwise (the record's `capture.before` says `failed`).
    pub fn set_before(&mut self, body: Option<Vec<u8>>, truncated: bool) {
        self.before_note = match &body {
            None => Some(BodyNote::Failed),
            Some(_) if truncated => Some(BodyNote::Truncated),
            Some(_) => None,
        };
        self.before = body;
    }

    /// How `jwt/` templates read the caller's token.
    pub fn set_claims(&mut self, claims: CallerClaims) {
        self.claims = claims;
    }

    /// The request body's capture, for a host that sees the body elsewhere; `None` when no
    /// matching rule reads it.
    pub fn request_capture(&mut self) -> Option<RequestCapture> {
        let shared = match self.request_body.take()? {
            RequestBody::Owned(capture) => RequestCapture(Arc::new(Mutex::new(capture))),
            RequestBody::Shared(shared) => shared,
        };
        self.request_body = Some(RequestBody::Shared(shared.clone()));
        Some(shared)
    }

    /// Copies the next bytes of the request body, up to the capture limit.
    pub fn request_data(&mut self, chunk: &[u8]) {
        match &mut self.request_body {
            Some(RequestBody::Owned(capture)) => capture.push(chunk),
            Some(RequestBody::Shared(shared)) => shared.lock().push(chunk),
            None => {}
        }
    }

    /// Forgets what was captured: the request is sent again (a retried upstream attempt
    /// replays the body from its start), and so is its answer.
    pub fn restart_capture(&mut self) {
        match &mut self.request_body {
            Some(RequestBody::Owned(capture)) => capture.restart(),
            Some(RequestBody::Shared(shared)) => shared.lock().restart(),
            None => {}
        }
        if let Some(capture) = &mut self.response_body {
            capture.restart();
        }
    }

    /// Stops capturing: what follows is another protocol's traffic (WebSocket frames after a
    /// `101`), not bodies.
    pub fn stop_capture(&mut self) {
        self.request_body = None;
        self.response_body = None;
    }

    /// The head of the response the client got. A `1xx` other than `101` is not the answer
    /// (a client that leaves after `100 Continue` got none) and leaves the status unset.
    pub fn response_head(&mut self, status: u16, headers: &HeaderMap) {
        self.status = (status >= 200 || status == 101).then_some(status);
        if self.response_body.is_some() {
            self.response_encoding = encoding_lines(headers);
        }
        // A gRPC error with no message to send back comes as headers only ("trailers-only").
        self.read_grpc_status(headers);
    }

    /// The response's trailers: a gRPC call's outcome is its `grpc-status`, sent here.
    pub fn response_trailers(&mut self, trailers: &HeaderMap) {
        self.read_grpc_status(trailers);
    }

    fn read_grpc_status(&mut self, headers: &HeaderMap) {
        if let Some(code) = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
        {
            self.grpc_status = Some(code);
        }
    }

    /// Copies the next bytes of the response body, up to the capture limit.
    pub fn response_data(&mut self, chunk: &[u8]) {
        if let Some(capture) = &mut self.response_body {
            capture.push(chunk);
        }
    }

    /// [`Self::response_data`] for a data frame that may be in several pieces.
    pub fn response_buf(&mut self, data: &impl Buf) {
        if let Some(capture) = &mut self.response_body {
            capture.push_buf(data);
        }
    }

    /// Whether a matching rule says `on_queue_failure: closed`: the host makes the call's
    /// received record durable ([`AuditedCall::make_received_durable`]) before it forwards
    /// the call, and refuses the call ([`AuditedCall::refuse`]) when that does not happen in
    /// [`CallSettings::closed_timeout`].
    pub fn is_closed(&self) -> bool {
        self.found.on_queue_failure() == OnQueueFailure::Closed
    }

    /// Hands the sink the call's received record (`"stage": "received"`, outcome `unknown`,
    /// no response yet) to make durable; the host awaits the answer, bounded by
    /// [`CallSettings::closed_timeout`], and on `Ok(seq)` passes `seq` to
    /// [`AuditedCall::received_is_durable`]. The complete record follows when the call ends,
    /// with the same `id`, and replaces the received one in the store.
    pub fn make_received_durable(&self) -> Durable {
        let call = Call {
            method: &self.method,
            method_override: (self.method_override.as_ref())
                .map(|(header, sent)| (header.as_str(), sent.as_str())),
            record_id: Some(self.record_id),
            body_pending: true,
            client_ip: self.client_ip.and_then(|ip| self.client_ip_mode.render(ip)),
            location: self.location.clone(),
            before: self.before.as_deref(),
            before_note: self.before_note,
            claims: self.claims(),
            request_id: Some(&self.request_id),
            time: self.time,
            outcome: Some(Outcome::Unknown),
            ..Call::new(&self.method, &self.uri, &self.headers)
        };
        match self.found.record_ref(&call) {
            Some(mut record) => {
                record.stage = Some(Stage::Received);
                self.sink.enqueue_durable(record)
            }
            // No record to make (no rule's `when` holds without the body): nothing to wait for.
            None => Durable::ready(Ok(0)),
        }
    }

    /// The received record is durable under `seq` (`0`: the sink stamps none): the complete
    /// record takes the same `origin.seq`.
    pub fn received_is_durable(&mut self, seq: u64) {
        self.origin_seq = (seq != 0).then_some(seq);
    }

    /// Refuses the call (its received record could not be made durable in time): the
    /// record says the call was answered 503 by auditgate itself and never forwarded, and
    /// the host sends the returned refusal.
    pub fn refuse(mut self) -> Refusal {
        self.status = Some(503);
        let refusal = Refusal::new(self.request_id_header().clone(), self.request_id.clone());
        self.emit(Some(Outcome::Error));
        refusal
    }

    fn claims(&self) -> Claims<'_> {
        match &self.claims {
            CallerClaims::Unverified => Claims::Unverified,
            CallerClaims::Verified(claims) => Claims::Verified(claims),
            CallerClaims::Rejected(reason) => Claims::Rejected(reason),
            CallerClaims::Absent => Claims::Absent,
        }
    }

    /// Ends the call and emits its record. `None` lets the status decide the outcome
    /// (`success` below 400, `failure` from 400, `aborted` when no answer was sent);
    /// [`Outcome::Error`] says the upstream gave no answer, [`Outcome::Aborted`] that the
    /// client left.
    pub fn finish(mut self, outcome: Option<Outcome>) {
        self.emit(outcome);
    }

    fn emit(&mut self, outcome: Option<Outcome>) {
        if std::mem::replace(&mut self.emitted, true) {
            return;
        }
        // Taken out of the lock: the record is emitted once, and a body still being read (a
        // 204 sent before the handler read it all) must not wait while it is serialised.
        let request_body = self.request_body.as_mut().map(|body| match body {
            RequestBody::Owned(capture) => std::mem::take(capture),
            RequestBody::Shared(shared) => std::mem::take(&mut *shared.lock()),
        });
        // Templates read JSON: a compressed body is decoded first (within the capture limit).
        let (request_body, request_body_note) =
            (request_body.as_ref()).map_or((None, None), |b| b.contents(&self.request_encoding));
        let (response_body, response_body_note) = (self.response_body.as_ref())
            .map_or((None, None), |b| b.contents(&self.response_encoding));
        let call = Call {
            method: &self.method,
            method_override: (self.method_override.as_ref())
                .map(|(header, sent)| (header.as_str(), sent.as_str())),
            uri: &self.uri,
            headers: &self.headers,
            request_body: request_body.as_deref(),
            request_body_note,
            status: self.status,
            grpc_status: self.grpc_status,
            response_body: response_body.as_deref(),
            response_body_note,
            outcome,
            client_ip: self.client_ip.and_then(|ip| self.client_ip_mode.render(ip)),
            location: self.location.take(),
            before: self.before.as_deref(),
            before_note: self.before_note,
            claims: self.claims(),
            request_id: Some(&self.request_id),
            time: self.time,
            duration: self.started.elapsed(),
            record_id: Some(self.record_id),
            body_pending: false,
        };
        if let Some(mut record) = self.found.record_ref(&call) {
            record.origin_seq = self.origin_seq;
            // A record the sink cannot take is counted there (`auditgate_queue_dropped_total`);
            // the response has been sent, so there is nothing else to do with the refusal.
            let _ = self.sink.enqueue_ref(record);
        }
    }
}

impl<K: RecordSink> Drop for AuditedCall<K> {
    fn drop(&mut self) {
        // Dropped before `finish`: the client went away, the body was dropped unfinished, or
        // the host's code panicked. The call happened; its record says how it ended.
        self.emit(Some(Outcome::Aborted));
    }
}

/// A message's `Content-Encoding` lines (none, almost always: no allocation then).
fn encoding_lines(headers: &HeaderMap) -> Vec<HeaderValue> {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .cloned()
        .collect()
}
