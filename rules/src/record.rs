//! The audit record: one per audited call, serialised as the JSON of docs/auditors.md ("The
//! record"). This module owns that wire format: the serde derives of [`AuditRecord`] (what the
//! writer reads back) and the direct writer of [`RecordRef`] (what producers send), which
//! write the same bytes.
//!
//! Two types carry it. [`AuditRecord`] owns its fields: it is what the writer reads back, the
//! API serves and tests compare. [`RecordRef`] is the same record borrowed from the rule set
//! and the call that made it: the proxy and the layer make one per audited request, and the
//! queue serialises it straight into the bytes it sends, without first copying the rule's
//! service, operation, route and the request's path into strings of their own. Both serialise
//! to the same JSON, byte for byte (`a_borrowed_record_serialises_as_its_owned_copy` in
//! `tests.rs`); a field added to one is added to the other.

use std::borrow::Cow;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The version of the record format written in `schema`.
pub const SCHEMA_VERSION: u32 = 1;

/// One audited call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// A UUIDv7 made from the request's arrival time; the idempotency key end to end.
    pub id: Uuid,
    /// When the request arrived (RFC 3339, UTC, microseconds).
    #[serde(serialize_with = "micros", deserialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    /// From arrival to the end of the response.
    pub duration_ms: f64,
    /// The rule file's `service`.
    pub service: String,
    /// The organisation the record belongs to (the rules' `tenant:`); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The rule's operation, or `unmatched`.
    pub operation: String,
    /// The rule id; absent for `unmatched` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The rendered `description`, absent when the rule has none or a source was missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who did it; `null` when no actor template yielded a value.
    pub actor: Option<Actor>,
    /// What was called.
    pub request: RequestInfo,
    /// What was touched: one entry per resource (arrays expand to one entry per element).
    pub resources: Vec<Resource>,
    /// What the client got.
    pub response: ResponseInfo,
    /// How the call ended.
    pub outcome: Outcome,
    /// `received` for the record a `closed` call makes durable before it is forwarded;
    /// absent on the complete record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// The rule's `details`, each omitted when its source was missing.
    #[serde(default)]
    pub details: Map<String, Value>,
    /// The rule's `changes`: `{"name": {"from": "tree.png", "to": "oak.png"}}`, `from` and
    /// `to` each omitted when its source was missing; absent when none.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub changes: Map<String, Value>,
    /// Which bodies the rule reads could not be read whole, so that a value missing from the
    /// record is never silently missing; absent when nothing was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<Capture>,
    /// Which producer queued the record; set by the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// `capture`: what became of the bodies a rule reads, when not all of it could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capture {
    /// The request body's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<BodyNote>,
    /// The response body's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<BodyNote>,
    /// The answer of the rule's `before:` GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<BodyNote>,
}

/// Why a body's values may be missing from a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyNote {
    /// Longer than the capture limit: only values complete within its first bytes were read.
    Truncated,
    /// Present, but not JSON or a form the record could read (or encoded in a way it
    /// cannot decode).
    Unreadable,
    /// Not there: the `before:` GET failed, timed out or was not answered 2xx.
    Failed,
}

impl BodyNote {
    /// The word in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyNote::Truncated => "truncated",
            BodyNote::Unreadable => "unreadable",
            BodyNote::Failed => "failed",
        }
    }
}

impl Capture {
    pub(crate) fn is_empty(&self) -> bool {
        self.request_body.is_none() && self.response_body.is_none() && self.before.is_none()
    }
}

/// The actor of a call and the template that named it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The value, e.g. `u_123`; `null` when the source refused to say (a rejected token:
    /// the source then says why, `jwt rejected: expired`).
    pub id: Option<String>,
    /// The template that produced it, e.g. `jwt/sub` or `header.X-User-Id`.
    pub source: String,
}

/// The request side of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestInfo {
    /// The request ID: read from the configured header, or a new UUIDv7.
    pub id: String,
    /// The HTTP method, as the upstream acts on it: the request line's, or a method-override
    /// header's (then `method_override` says so).
    pub method: String,
    /// Set when a method-override header (`X-HTTP-Method-Override: DELETE` on a `POST`) named
    /// the method: which header, and the method of the request line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method_override: Option<MethodOverride>,
    /// The normalised path (without the query).
    pub path: String,
    /// The matched rule's path pattern; absent for `unmatched` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The client address as configured: full, anonymised or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// Where the client is, from its full address before anonymising; absent for private,
    /// loopback and unknown addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// The `User-Agent` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// `request.location`: the client's country, and region and city when the operator gave a
/// city database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// ISO 3166-1 alpha-2 (`DE`).
    pub country: Cow<'static, str>,
    /// The largest subdivision (state, province), in English.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The city, in English.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
}

/// `request.method_override`: the header that named the method, and the request line's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodOverride {
    /// The header, in lower case (`x-http-method-override`).
    pub header: String,
    /// The method of the request line (`POST`).
    pub sent: String,
}

/// One resource a call touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// What kind of thing, e.g. `file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its id, when the rule says where to find one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its path, when the rule says where to find one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Where it was before the call (a move, a rename), when the rule says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_path: Option<String>,
}

/// The response side of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseInfo {
    /// The status the client got; absent when it got none (aborted before the head).
    pub status: Option<u16>,
    /// A gRPC call's `grpc-status` (from its trailers, or its headers for a trailers-only
    /// answer): gRPC answers HTTP 200 to a failed call too, so this says how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The upstream answered below 400.
    Success,
    /// The upstream answered 400 or above.
    Failure,
    /// No upstream answer: connect failure or timeout; the proxy answered 5xx itself.
    Error,
    /// The client went away before the response completed.
    Aborted,
    /// A `closed` call's received record whose complete record never came (the producer died
    /// between forwarding the call and its end): the call may or may not have happened.
    Unknown,
}

/// `stage`: a record made before the call was forwarded (`closed` rules), replaced in the store
/// by the complete record of the same `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The call was received and is about to be forwarded; no response yet.
    Received,
}

impl Outcome {
    /// `success` below 400, `failure` from 400 on.
    pub fn from_status(status: u16) -> Outcome {
        if status < 400 {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }

    /// The lower-case name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Error => "error",
            Outcome::Aborted => "aborted",
            Outcome::Unknown => "unknown",
        }
    }
}

/// Which producer queued a record, so the writer can prove nothing is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// `proxy`, `layer`, ...
    pub kind: String,
    /// A name unique to the producer process, e.g. `host-a/3f2c`.
    pub instance: String,
    /// Set when this instance restarted after a crash, on its records until Redis has
    /// acknowledged one: the numbers the crashed run may have used. A gap among them was
    /// left by the crash, and its size is an upper bound of the records lost, not a count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_crash: Option<SeqRange>,
    /// Counts up by one per record from this instance.
    pub seq: u64,
}

/// `origin.seq` numbers from `from` to `to`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    /// The first number.
    pub from: u64,
    /// The last number.
    pub to: u64,
}

/// A producer's `origin` as JSON, its kind and instance escaped once: every record a producer
/// sends ends in it, and only `seq` differs from one to the next. See
/// [`RecordRef::write_json_with_origin`].
///
/// ```
/// use auditgate_rules::OriginJson;
/// let origin = OriginJson::new("proxy", "host-a/3f2c");
/// assert_eq!(origin.kind(), "proxy");
/// assert_eq!(origin.instance(), "host-a/3f2c");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginJson {
    kind: String,
    instance: String,
    after_crash: Option<SeqRange>,
    /// `,"origin":{"kind":…,"instance":…,"seq":`, with `"after_crash":{…},` before `seq`
    /// when set.
    prefix: Vec<u8>,
}

impl OriginJson {
    /// The origin of a producer of `kind` (`proxy`, `layer`, …) named `instance`.
    pub fn new(kind: &str, instance: &str) -> OriginJson {
        let mut prefix = br#","origin":{"kind":"#.to_vec();
        push_str(&mut prefix, kind);
        prefix.extend_from_slice(br#","instance":"#);
        push_str(&mut prefix, instance);
        prefix.extend_from_slice(br#","seq":"#);
        OriginJson {
            kind: kind.to_owned(),
            instance: instance.to_owned(),
            after_crash: None,
            prefix,
        }
    }

    /// The same origin with `after_crash` (see [`Origin::after_crash`]).
    ///
    /// ```
    /// use auditgate_rules::{OriginJson, SeqRange};
    /// let crashed = SeqRange { from: 1, to: 8192 };
    /// let origin = OriginJson::new("proxy", "host-a/3f2c").after_crash(crashed);
    /// assert_eq!(origin.with_seq(8193).after_crash, Some(crashed));
    /// ```
    pub fn after_crash(&self, crashed: SeqRange) -> OriginJson {
        let mut prefix = self.prefix.clone();
        prefix.truncate(prefix.len() - br#""seq":"#.len());
        let SeqRange { from, to } = crashed;
        prefix
            .extend_from_slice(format!(r#""after_crash":{{"from":{from},"to":{to}}},"#).as_bytes());
        prefix.extend_from_slice(br#""seq":"#);
        OriginJson {
            after_crash: Some(crashed),
            prefix,
            ..self.clone()
        }
    }

    /// See [`Origin::kind`].
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// See [`Origin::instance`].
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The owned [`Origin`] with this kind and instance.
    pub fn with_seq(&self, seq: u64) -> Origin {
        Origin {
            kind: self.kind.clone(),
            instance: self.instance.clone(),
            after_crash: self.after_crash,
            seq,
        }
    }
}

/// An audit record borrowed from its rule set and its call.
///
/// Made by [`Match::record_ref`](crate::Match::record_ref) on the request path and handed to a
/// sink, which either writes it as JSON ([`RecordRef::write_json`], the bytes `serde_json`
/// writes for the [`AuditRecord`]) or keeps [`RecordRef::into_owned`]. The rule's service,
/// operation and route and the request's path stay borrowed, so nothing is copied to send it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordRef<'a> {
    /// Always [`SCHEMA_VERSION`].
    pub(crate) schema: u32,
    /// See [`AuditRecord::id`].
    pub id: Uuid,
    /// See [`AuditRecord::time`].
    pub time: DateTime<Utc>,
    /// See [`AuditRecord::duration_ms`].
    pub duration_ms: f64,
    /// See [`AuditRecord::service`].
    pub service: &'a str,
    /// See [`AuditRecord::tenant`].
    pub tenant: Option<String>,
    /// See [`AuditRecord::operation`].
    pub operation: &'a str,
    /// See [`AuditRecord::rule`].
    pub rule: Option<&'a str>,
    /// See [`AuditRecord::description`].
    pub description: Option<String>,
    /// See [`AuditRecord::actor`].
    pub actor: Option<ActorRef<'a>>,
    /// See [`AuditRecord::request`].
    pub request: RequestRef<'a>,
    /// See [`AuditRecord::resources`].
    pub resources: Vec<ResourceRef<'a>>,
    /// See [`AuditRecord::response`].
    pub response: ResponseInfo,
    /// See [`AuditRecord::outcome`].
    pub outcome: Outcome,
    /// See [`AuditRecord::stage`].
    pub stage: Option<Stage>,
    /// The `origin.seq` a sink is to stamp, when the record must share its received record's
    /// (a `closed` call's two records are one record to the store); `None` for the next one.
    pub origin_seq: Option<u64>,
    /// In name order, without repeats (the order of the JSON object `write_json` writes):
    /// private to the crate so that it stays so.
    pub(crate) details: Vec<(&'a str, Value)>,
    /// See [`AuditRecord::changes`]: in name order, without repeats, like `details`.
    pub(crate) changes: Vec<ChangeRef<'a>>,
    /// See [`AuditRecord::capture`].
    pub capture: Option<Capture>,
}

/// [`Actor`], borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorRef<'a> {
    /// See [`Actor::id`].
    pub id: Option<Cow<'a, str>>,
    /// See [`Actor::source`].
    pub source: Cow<'a, str>,
}

/// [`RequestInfo`], borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRef<'a> {
    /// See [`RequestInfo::id`].
    pub id: Cow<'a, str>,
    /// See [`RequestInfo::method`].
    pub method: &'a str,
    /// See [`RequestInfo::method_override`]: the header and the request line's method.
    pub method_override: Option<(&'a str, &'a str)>,
    /// See [`RequestInfo::path`].
    pub path: &'a str,
    /// See [`RequestInfo::route`].
    pub route: Option<&'a str>,
    /// See [`RequestInfo::client_ip`].
    pub client_ip: Option<&'a str>,
    /// See [`RequestInfo::location`].
    pub location: Option<&'a Location>,
    /// See [`RequestInfo::user_agent`].
    pub user_agent: Option<Cow<'a, str>>,
}

/// [`Resource`], borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef<'a> {
    /// See [`Resource::kind`].
    pub kind: Cow<'a, str>,
    /// See [`Resource::id`].
    pub id: Option<String>,
    /// See [`Resource::path`].
    pub path: Option<String>,
    /// See [`Resource::previous_path`].
    pub previous_path: Option<String>,
}

/// One of a [`RecordRef`]'s changes: a field's value before and after the call.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRef<'a> {
    /// The change's name in the rule.
    pub name: &'a str,
    /// The value before; `None` when its source was missing.
    pub from: Option<Value>,
    /// The value after; `None` when its source was missing.
    pub to: Option<Value>,
}

impl<'a> RecordRef<'a> {
    /// See [`AuditRecord::details`]: the rule's details, in name order.
    pub fn details(&self) -> &[(&'a str, Value)] {
        &self.details
    }

    /// Appends the record's JSON to `out`: the bytes `serde_json` writes for
    /// [`RecordRef::into_owned`] (which has no `origin` yet), written directly. A record is
    /// serialised per request, and serde's generic path escapes every key and walks every
    /// string byte by byte through its escape table; here keys are constants and a string
    /// that needs no escaping is copied whole.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_members(out);
        out.push(b'}');
    }

    /// [`RecordRef::write_json`] with `origin` as its last member: the bytes `serde_json`
    /// writes for the owned record with [`AuditRecord::origin`] set to `origin` and `seq`.
    pub fn write_json_with_origin(&self, out: &mut Vec<u8>, origin: &OriginJson, seq: u64) {
        self.write_members(out);
        out.extend_from_slice(&origin.prefix);
        push_u64(out, seq);
        out.extend_from_slice(b"}}");
    }

    /// Everything but the closing brace.
    fn write_members(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"schema\":");
        push_u64(out, self.schema.into());
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        field(out, b"id", self.id.hyphenated().encode_lower(&mut id));
        with_micros(&self.time, |time| field(out, b"time", time));
        key(out, b"duration_ms");
        push_value(out, &self.duration_ms);
        field(out, b"service", self.service);
        optional(out, b"tenant", self.tenant.as_deref());
        field(out, b"operation", self.operation);
        optional(out, b"rule", self.rule);
        optional(out, b"description", self.description.as_deref());
        key(out, b"actor");
        match &self.actor {
            Some(actor) => {
                out.extend_from_slice(b"{\"id\":");
                match &actor.id {
                    Some(id) => push_str(out, id),
                    None => out.extend_from_slice(b"null"),
                }
                field(out, b"source", &actor.source);
                out.push(b'}');
            }
            None => out.extend_from_slice(b"null"),
        }
        let request = &self.request;
        out.extend_from_slice(b",\"request\":{\"id\":");
        push_str(out, &request.id);
        field(out, b"method", request.method);
        if let Some((header, sent)) = request.method_override {
            out.extend_from_slice(b",\"method_override\":{\"header\":");
            push_str(out, header);
            field(out, b"sent", sent);
            out.push(b'}');
        }
        field(out, b"path", request.path);
        optional(out, b"route", request.route);
        optional(out, b"client_ip", request.client_ip);
        if let Some(location) = request.location {
            out.extend_from_slice(b",\"location\":{\"country\":");
            push_str(out, &location.country);
            optional(out, b"region", location.region.as_deref());
            optional(out, b"city", location.city.as_deref());
            out.push(b'}');
        }
        optional(out, b"user_agent", request.user_agent.as_deref());
        out.extend_from_slice(b"},\"resources\":[");
        for (i, resource) in self.resources.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"type\":");
            push_str(out, &resource.kind);
            optional(out, b"id", resource.id.as_deref());
            optional(out, b"path", resource.path.as_deref());
            optional(out, b"previous_path", resource.previous_path.as_deref());
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"response\":{\"status\":");
        match self.response.status {
            Some(status) => push_u64(out, status.into()),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(code) = self.response.grpc_status {
            key(out, b"grpc_status");
            push_u64(out, code.into());
        }
        out.push(b'}');
        field(out, b"outcome", self.outcome.as_str());
        if self.stage == Some(Stage::Received) {
            field(out, b"stage", "received");
        }
        out.extend_from_slice(b",\"details\":{");
        for (i, (name, value)) in self.details.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_str(out, name);
            out.push(b':');
            push_value(out, value);
        }
        out.push(b'}');
        if !self.changes.is_empty() {
            key(out, b"changes");
            out.push(b'{');
            for (i, change) in self.changes.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_str(out, change.name);
                out.push(b':');
                out.push(b'{');
                let mut first = true;
                for (name, value) in [("from", &change.from), ("to", &change.to)] {
                    let Some(value) = value else { continue };
                    if !std::mem::take(&mut first) {
                        out.push(b',');
                    }
                    push_str(out, name);
                    out.push(b':');
                    push_value(out, value);
                }
                out.push(b'}');
            }
            out.push(b'}');
        }
        if let Some(capture) = self.capture.filter(|c| !c.is_empty()) {
            // `,"capture":{"request_body":"…","response_body":"…"}`, each when set.
            key(out, b"capture");
            out.push(b'{');
            let mut members = Vec::with_capacity(3);
            members.extend(capture.request_body.map(|n| ("request_body", n)));
            members.extend(capture.response_body.map(|n| ("response_body", n)));
            members.extend(capture.before.map(|n| ("before", n)));
            for (i, (name, note)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_str(out, name);
                out.push(b':');
                push_str(out, note.as_str());
            }
            out.push(b'}');
        }
    }

    /// The same record with fields of its own (and no `origin` yet).
    pub fn into_owned(self) -> AuditRecord {
        AuditRecord {
            schema: self.schema,
            id: self.id,
            time: self.time,
            duration_ms: self.duration_ms,
            service: self.service.to_owned(),
            tenant: self.tenant,
            operation: self.operation.to_owned(),
            rule: self.rule.map(str::to_owned),
            description: self.description,
            actor: self.actor.map(|a| Actor {
                id: a.id.map(Cow::into_owned),
                source: a.source.into_owned(),
            }),
            request: RequestInfo {
                id: self.request.id.into_owned(),
                method: self.request.method.to_owned(),
                method_override: self.request.method_override.map(|(header, sent)| {
                    MethodOverride {
                        header: header.to_owned(),
                        sent: sent.to_owned(),
                    }
                }),
                path: self.request.path.to_owned(),
                route: self.request.route.map(str::to_owned),
                client_ip: self.request.client_ip.map(str::to_owned),
                location: self.request.location.cloned(),
                user_agent: self.request.user_agent.map(Cow::into_owned),
            },
            resources: self
                .resources
                .into_iter()
                .map(|r| Resource {
                    kind: r.kind.into_owned(),
                    id: r.id,
                    path: r.path,
                    previous_path: r.previous_path,
                })
                .collect(),
            response: self.response,
            outcome: self.outcome,
            stage: self.stage,
            details: self
                .details
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect(),
            changes: self
                .changes
                .into_iter()
                .map(|c| {
                    let mut change = Map::new();
                    change.extend(c.from.map(|v| ("from".to_owned(), v)));
                    change.extend(c.to.map(|v| ("to".to_owned(), v)));
                    (c.name.to_owned(), Value::Object(change))
                })
                .collect(),
            capture: self.capture.filter(|c| !c.is_empty()),
            origin: None,
        }
    }
}

/// `2026-11-22T10:00:00.123456Z`: RFC 3339, UTC, microseconds.
fn micros<S: Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    with_micros(time, |text| s.serialize_str(text))
}

/// Hands `time` as [`micros`] writes it to `f`: from a stack buffer, or from chrono for what
/// the fixed layout cannot hold.
fn with_micros<R>(time: &DateTime<Utc>, f: impl FnOnce(&str) -> R) -> R {
    let mut text = [0u8; 27];
    match write_micros(time, &mut text) {
        Some(text) => f(text),
        None => f(&time.to_rfc3339_opts(SecondsFormat::Micros, true)),
    }
}

/// [`micros`] without chrono's formatting machinery (a record is serialised per request):
/// `None` for what the fixed layout cannot hold — years outside 0..=9999, a leap second —
/// which chrono then writes.
fn write_micros<'b>(time: &DateTime<Utc>, out: &'b mut [u8; 27]) -> Option<&'b str> {
    let year = u32::try_from(time.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut value = value;
        for i in (at..at + digits).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, time.month(), 2);
    put(8, time.day(), 2);
    put(11, time.hour(), 2);
    put(14, time.minute(), 2);
    put(17, time.second(), 2);
    put(20, nanos / 1000, 6);
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = sep;
    }
    out[26] = b'Z';
    std::str::from_utf8(out).ok()
}

/// `,"name":` (names here need no escaping).
fn key(out: &mut Vec<u8>, name: &[u8]) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name);
    out.extend_from_slice(b"\":");
}

/// `,"name":"value"`.
fn field(out: &mut Vec<u8>, name: &[u8], value: &str) {
    key(out, name);
    push_str(out, value);
}

/// [`field`] when there is a value; nothing when there is none (serde's
/// `skip_serializing_if = "Option::is_none"`).
fn optional(out: &mut Vec<u8>, name: &[u8], value: Option<&str>) {
    if let Some(value) = value {
        field(out, name, value);
    }
}

/// A JSON string: copied whole when nothing in it needs escaping, else escaped by serde_json.
fn push_str(out: &mut Vec<u8>, text: &str) {
    // A fold without early exit: the compiler turns it into a vector loop.
    let needs_escape = text.bytes().fold(false, |seen, b| {
        seen | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        push_value(out, text);
    }
}

fn push_value(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    // Writing into a Vec cannot fail, and these values (numbers, strings, JSON values
    // with string keys) always serialise.
    let _ = serde_json::to_writer(out, value);
}

/// A whole number in decimal, without `fmt`'s machinery.
fn push_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_design_example_round_trips() {
        let text = r#"{
          "schema": 1,
          "id": "0193a6f0-7c1e-7d5e-9b1a-2f4c8e9d0a11",
          "time": "2026-11-22T10:00:00.123456Z",
          "duration_ms": 3.21,
          "service": "media-library",
          "operation": "asset.rename",
          "rule": "file-rename",
          "description": "Renamed file abc to tree.png",
          "actor": { "id": "u_123", "source": "jwt/sub" },
          "request": { "id": "r1", "method": "PATCH", "path": "/v1/files/abc/details",
                       "route": "/v1/files/{fileId}/details", "client_ip": "203.0.113.0",
                       "user_agent": "curl/8.5.0" },
          "resources": [ { "type": "file", "id": "abc", "path": "/forest/tree.png" } ],
          "response": { "status": 200 },
          "outcome": "success",
          "details": { "new_name": "tree.png" },
          "origin": { "kind": "proxy", "instance": "host-a/3f2c", "seq": 42 }
        }"#;
        let record: AuditRecord = serde_json::from_str(text).unwrap();
        assert_eq!(record.outcome, Outcome::Success);
        assert_eq!(record.resources[0].kind, "file");
        let again: Value = serde_json::to_value(&record).unwrap();
        let original: Value = serde_json::from_str(text).unwrap();
        assert_eq!(again, original);
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        for text in [
            "2026-11-22T10:00:00.123456Z",
            "2026-01-02T03:04:05.000000Z",
            "0001-12-31T23:59:59.999999Z",
            "9999-12-31T23:59:59.000001Z",
        ] {
            let time: DateTime<Utc> = text.parse().unwrap();
            let mut buf = [0u8; 27];
            assert_eq!(write_micros(&time, &mut buf), Some(text));
            assert_eq!(time.to_rfc3339_opts(SecondsFormat::Micros, true), text);
        }
        // Sub-microsecond digits are cut, as chrono cuts them.
        let time: DateTime<Utc> = "2026-11-22T10:00:00.123456789Z".parse().unwrap();
        let mut buf = [0u8; 27];
        assert_eq!(
            write_micros(&time, &mut buf).map(str::to_owned),
            Some(time.to_rfc3339_opts(SecondsFormat::Micros, true))
        );
        // Beyond the fixed layout: chrono writes it.
        let far = DateTime::<Utc>::from_timestamp(300_000_000_000, 0).unwrap();
        assert_eq!(write_micros(&far, &mut buf), None);
        let mut json = Vec::new();
        let location = Location {
            country: "DE".into(),
            region: None,
            city: Some("Berlin \"Mitte\"".into()),
        };
        RecordRef {
            schema: SCHEMA_VERSION,
            id: Uuid::nil(),
            time: far,
            duration_ms: 0.0,
            service: "s",
            tenant: Some("acme".into()),
            operation: "o",
            rule: None,
            description: None,
            actor: None,
            request: RequestRef {
                id: "r".into(),
                method: "GET",
                method_override: Some(("x-http-method-override", "POST")),
                path: "/",
                route: None,
                client_ip: None,
                location: Some(&location),
                user_agent: None,
            },
            resources: Vec::new(),
            response: ResponseInfo {
                status: None,
                grpc_status: Some(7),
            },
            outcome: Outcome::Aborted,
            stage: Some(Stage::Received),
            origin_seq: None,
            details: Vec::new(),
            changes: vec![ChangeRef {
                name: "name",
                from: None,
                to: Some(Value::String("oak.png".into())),
            }],
            capture: Some(Capture {
                request_body: Some(BodyNote::Truncated),
                response_body: None,
                before: Some(BodyNote::Failed),
            }),
        }
        .write_json(&mut json);
        let json: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            json["time"],
            far.to_rfc3339_opts(SecondsFormat::Micros, true)
        );
        assert_eq!(
            json["capture"],
            serde_json::json!({"request_body": "truncated", "before": "failed"})
        );
        assert_eq!(json["tenant"], "acme");
        assert_eq!(
            json["changes"],
            serde_json::json!({"name": {"to": "oak.png"}})
        );
        assert_eq!(
            json["response"],
            serde_json::json!({"status": null, "grpc_status": 7})
        );
        assert_eq!(
            json["request"]["method_override"],
            serde_json::json!({"header": "x-http-method-override", "sent": "POST"})
        );
        assert_eq!(
            json["request"]["location"],
            serde_json::json!({"country": "DE", "city": "Berlin \"Mitte\""})
        );
        // The owned record reads what was written (at a time the RFC 3339 reader takes).
        let mut json = json;
        json["time"] = "2026-11-22T10:00:00.000000Z".into();
        let owned: AuditRecord = serde_json::from_value(json).unwrap();
        assert_eq!(owned.response.grpc_status, Some(7));
        assert_eq!(owned.request.method_override.unwrap().sent, "POST");
    }

    #[test]
    fn outcome_from_status() {
        assert_eq!(Outcome::from_status(204), Outcome::Success);
        assert_eq!(Outcome::from_status(399), Outcome::Success);
        assert_eq!(Outcome::from_status(403), Outcome::Failure);
        assert_eq!(Outcome::from_status(503), Outcome::Failure);
    }
}
