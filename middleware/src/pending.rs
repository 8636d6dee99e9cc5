//! The record of one call while the call is still going: filled in as the response arrives,
//! emitted exactly once — when the response body ends, or, if the call is dropped first, as
//! `aborted` (like tower-http's `on_early_drop`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use auditgate_queue::RecordSink;
use auditgate_rules::{BodyCapture, Call, Claims, Match, Outcome};
use bytes::Buf;
use chrono::{DateTime, Utc};

/// A request body's capture, written by the body as the handler reads it.
pub(crate) type SharedCapture = Arc<Mutex<BodyCapture>>;

/// Copies a data frame (any `Buf`, possibly in pieces) into a capture.
pub(crate) fn capture_buf(capture: &mut BodyCapture, data: &impl Buf) {
    let mut slices = [std::io::IoSlice::new(&[]); 16];
    let n = data.chunks_vectored(&mut slices);
    let copied: usize = slices[..n].iter().map(|s| s.len()).sum();
    if copied < data.remaining() {
        // More pieces than slices: a rare Buf; treat the body as too large rather than guess.
        capture.give_up();
        return;
    }
    for s in &slices[..n] {
        capture.push(s);
    }
}

/// A message's `Content-Encoding` lines (none, almost always: no allocation then).
pub(crate) fn encoding_lines(headers: &http::HeaderMap) -> Vec<http::HeaderValue> {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .cloned()
        .collect()
}

/// Everything a record needs from a call, held from its start to its end.
#[derive(Debug)]
pub(crate) struct PendingRecord<K: RecordSink> {
    pub(crate) sink: K,
    pub(crate) found: Match,
    pub(crate) method: http::Method,
    pub(crate) uri: http::Uri,
    pub(crate) headers: http::HeaderMap,
    pub(crate) request_id: String,
    pub(crate) time: DateTime<Utc>,
    pub(crate) started: Instant,
    pub(crate) client_ip: Option<String>,
    pub(crate) verified_claims: Option<serde_json::Value>,
    pub(crate) request_body: Option<SharedCapture>,
    /// The request's `Content-Encoding` lines, kept when its body is captured.
    pub(crate) request_encoding: Vec<http::HeaderValue>,
    pub(crate) response_body: Option<BodyCapture>,
    /// The response's `Content-Encoding` lines, kept when its body is captured.
    pub(crate) response_encoding: Vec<http::HeaderValue>,
    pub(crate) status: Option<u16>,
    emitted: bool,
}

impl<K: RecordSink> PendingRecord<K> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        sink: K,
        found: Match,
        request: &http::request::Parts,
        request_id: String,
        time: DateTime<Utc>,
        started: Instant,
        client_ip: Option<String>,
        verified_claims: Option<serde_json::Value>,
        request_body: Option<SharedCapture>,
        capture_limit: usize,
    ) -> Self {
        let response_body = found
            .needs_response_body()
            .then(|| BodyCapture::new(capture_limit));
        PendingRecord {
            sink,
            method: request.method.clone(),
            uri: request.uri.clone(),
            // Only what the record reads: a browser's dozen headers are not copied per call.
            headers: found.record_headers(&request.headers),
            request_id,
            time,
            started,
            client_ip,
            verified_claims,
            request_encoding: match request_body {
                Some(_) => encoding_lines(&request.headers),
                None => Vec::new(),
            },
            request_body,
            response_body,
            response_encoding: Vec::new(),
            status: None,
            emitted: false,
            found,
        }
    }

    /// Reads a response data frame, up to the capture limit.
    pub(crate) fn capture_response(&mut self, data: &impl Buf) {
        if let Some(capture) = &mut self.response_body {
            capture_buf(capture, data);
        }
    }

    /// Emits the record: `None` lets the status decide the outcome.
    pub(crate) fn finish(mut self, outcome: Option<Outcome>) {
        self.emit(outcome);
    }

    fn emit(&mut self, outcome: Option<Outcome>) {
        if std::mem::replace(&mut self.emitted, true) {
            return;
        }
        // Copied out of the lock (at most the capture limit): the record may be made before
        // the handler has read the whole request body (a 204 sent early, say), and the body
        // must not wait on the lock while the record is serialised and queued.
        let request_body = (self.request_body.as_ref())
            .map(|c| c.lock().unwrap_or_else(PoisonError::into_inner).clone());
        // Templates read JSON: a compressed body is decoded first (within the capture limit).
        let request_body = (request_body.as_ref()).and_then(|b| b.decoded(&self.request_encoding));
        let response_body =
            (self.response_body.as_ref()).and_then(|b| b.decoded(&self.response_encoding));
        let call = Call {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            request_body: request_body.as_deref(),
            status: self.status,
            response_body: response_body.as_deref(),
            outcome,
            client_ip: self.client_ip.take(),
            claims: match &self.verified_claims {
                Some(claims) => Claims::Verified(claims),
                None => Claims::Unverified,
            },
            request_id: Some(&self.request_id),
            time: self.time,
            duration: self.started.elapsed(),
        };
        if let Some(record) = self.found.record_ref(&call) {
            // A refusal is counted by the sink itself (dropped metric): nothing to add here,
            // and the response has been sent already.
            let _ = self.sink.enqueue_ref(record);
        }
    }
}

impl<K: RecordSink> Drop for PendingRecord<K> {
    fn drop(&mut self) {
        // Dropped before `finish`: the client went away, or the body was dropped unfinished.
        self.emit(Some(Outcome::Aborted));
    }
}
