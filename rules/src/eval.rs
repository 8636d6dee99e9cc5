//! Turning a matched call into its [`AuditRecord`].

use std::borrow::Cow;
use std::cell::OnceCell;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::Value;
use smallvec::SmallVec;
use uuid::Uuid;

use crate::RuleSet;
use crate::body::{BodyKind, MAX_VALUE_DEPTH, limit_depth, read_body, read_multipart};
use crate::matcher::Candidates;
use crate::model::{FileMeta, OnQueueFailure, Rule, When};
use crate::path::decode_param;
use crate::record::{
    ActorRef, AuditRecord, BodyNote, Capture, ChangeRef, Location, Outcome, RecordRef, RequestRef,
    ResourceRef, ResponseInfo, SCHEMA_VERSION,
};
use crate::template::{Lookup, Member, Source, Template, into_text, pointer, to_text};

/// The operation of a record for a mutating call that no rule matched (`unmatched: record`).
pub const UNMATCHED_OPERATION: &str = "unmatched";

/// How far a bearer token's claims can be trusted.
#[derive(Debug, Clone, Copy, Default)]
pub enum Claims<'a> {
    /// Decode the claims from `Authorization: Bearer` without checking the signature (the
    /// rules crate never verifies: whoever can, says so with `Verified` or `Absent`).
    #[default]
    Unverified,
    /// Claims whose signature the caller has checked.
    Verified(&'a Value),
    /// There is no token, or it must not be read: `jwt/` sources yield nothing.
    Absent,
    /// A token was sent and the caller's check refused it, for this short reason (`expired`):
    /// `jwt/` sources yield nothing, and an actor list reaching a `jwt/` template stops there,
    /// with a null actor whose source says `jwt rejected: REASON`, rather than falling through
    /// to a header the client also controls.
    Rejected(&'a str),
}

/// Everything the capturing side knows about a call once it is over.
///
/// Built with [`Call::new`] and filled in field by field; the record takes from it only what
/// the rule asks for.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// The request method, as the upstream acts on it (a method-override header's, when one
    /// named it).
    pub method: &'a http::Method,
    /// The method-override header that named `method`, and the request line's method.
    pub method_override: Option<(&'a str, &'a str)>,
    /// The request target; its path is normalised, its query read by `query.` sources.
    pub uri: &'a http::Uri,
    /// The request headers.
    pub headers: &'a http::HeaderMap,
    /// The request body as captured (its decoded content), or its first bytes when
    /// `request_body_note` says it was truncated; `None` when not captured.
    pub request_body: Option<&'a [u8]>,
    /// Set when the request body was not captured whole ([`BodyNote::Truncated`]: the
    /// bytes above are its start) or could not be decoded ([`BodyNote::Unreadable`]).
    pub request_body_note: Option<BodyNote>,
    /// The status the client got; `None` when none was sent.
    pub status: Option<u16>,
    /// A gRPC call's `grpc-status`, when its answer carried one (`0` is OK).
    pub grpc_status: Option<u32>,
    /// The response body as captured, like `request_body`.
    pub response_body: Option<&'a [u8]>,
    /// Like `request_body_note`, for the response body.
    pub response_body_note: Option<BodyNote>,
    /// Set when the call did not simply get a response: [`Outcome::Error`] when the proxy
    /// answered itself, [`Outcome::Aborted`] when the client left. Otherwise the outcome
    /// follows `status`.
    pub outcome: Option<Outcome>,
    /// The client address as it should appear in the record (see [`ClientIpMode`]).
    pub client_ip: Option<String>,
    /// Where the client is, from its full address (`request.location`).
    pub location: Option<Location>,
    /// The answer of the rule's `before:` GET ([`Match::before_target`]), as received;
    /// `None` when there was none to read.
    pub before: Option<&'a [u8]>,
    /// Set when the `before:` GET gave nothing usable ([`BodyNote::Failed`]) or was cut.
    pub before_note: Option<BodyNote>,
    /// How to read `jwt/` sources.
    pub claims: Claims<'a>,
    /// The request ID given to the call at its start ([`Match::request_id`]); read from the
    /// headers, or generated, when `None`.
    pub request_id: Option<&'a str>,
    /// When the request arrived.
    pub time: DateTime<Utc>,
    /// From arrival to the end of the response.
    pub duration: Duration,
    /// The record's `id`, when the caller fixed it at the call's start (a `closed` call's
    /// received record and its complete record share one); else a new UUIDv7 of `time`.
    pub record_id: Option<Uuid>,
    /// The request body has not been read yet (the received record of a `closed` call): a
    /// `when: { body }` cannot be judged, and holds.
    pub body_pending: bool,
}

impl<'a> Call<'a> {
    /// A call that arrived now, with no bodies, no status and unverified claims.
    pub fn new(
        method: &'a http::Method,
        uri: &'a http::Uri,
        headers: &'a http::HeaderMap,
    ) -> Call<'a> {
        Call {
            method,
            method_override: None,
            uri,
            headers,
            request_body: None,
            request_body_note: None,
            status: None,
            grpc_status: None,
            response_body: None,
            response_body_note: None,
            outcome: None,
            client_ip: None,
            location: None,
            before: None,
            before_note: None,
            claims: Claims::Unverified,
            request_id: None,
            time: Utc::now(),
            duration: Duration::ZERO,
            record_id: None,
            body_pending: false,
        }
    }
}

/// How much of the client's address a record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIpMode {
    /// The whole address.
    Full,
    /// IPv4 cut to its /24, IPv6 to its /48.
    #[default]
    Anonymized,
    /// No address.
    None,
}

impl ClientIpMode {
    /// The address as a record shows it.
    ///
    /// ```
    /// use auditgate_rules::ClientIpMode;
    /// let ip = "203.0.113.77".parse().unwrap();
    /// assert_eq!(ClientIpMode::Anonymized.render(ip).as_deref(), Some("203.0.113.0"));
    /// let ip6 = "2001:db8:1234:5678::1".parse().unwrap();
    /// assert_eq!(ClientIpMode::Anonymized.render(ip6).as_deref(), Some("2001:db8:1234::"));
    /// assert_eq!(ClientIpMode::None.render(ip), None);
    /// ```
    pub fn render(self, ip: IpAddr) -> Option<String> {
        // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`: they are IPv4 clients,
        // and anonymised as such (their /48 would be `::` for all of them).
        let ip = ip.to_canonical();
        match self {
            ClientIpMode::Full => Some(match ip {
                IpAddr::V4(v4) => dotted(v4.octets()),
                IpAddr::V6(v6) => v6.to_string(),
            }),
            ClientIpMode::None => None,
            ClientIpMode::Anonymized => Some(match ip {
                IpAddr::V4(v4) => {
                    let [a, b, c, _] = v4.octets();
                    dotted([a, b, c, 0])
                }
                IpAddr::V6(v6) => {
                    let s = v6.segments();
                    std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
                }
            }),
        }
    }
}

/// An IPv4 address in dotted decimal, as `Ipv4Addr`'s `Display` writes it, without the
/// formatting machinery: one allocation, on every audited call.
fn dotted(octets: [u8; 4]) -> String {
    let mut out = String::with_capacity(15);
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// The longest path, query or header value a template reads. A client controls these, and
/// a record is not the place for a megabyte of header (bodies have the capture limit, request
/// IDs 128 characters): a longer value yields nothing, as a missing one does.
pub const MAX_VALUE_BYTES: usize = 4096;

fn bounded(value: Cow<'_, str>) -> Option<Cow<'_, str>> {
    (value.len() <= MAX_VALUE_BYTES).then_some(value)
}

/// The rules a request's method and path matched, found when the request starts.
///
/// It tells the capturing side what to collect (bodies or not, which request-ID header, whether
/// a queue failure must refuse the call) and, once the call is over, makes its record.
#[derive(Debug, Clone)]
pub struct Match {
    pub(crate) rules: RuleSet,
    pub(crate) path: String,
    pub(crate) bounds: SmallVec<[(u32, u32); 8]>,
    pub(crate) candidates: Candidates,
    /// For `unmatched: record`: the file whose settings the record takes.
    pub(crate) unmatched: Option<usize>,
}

impl Match {
    fn candidate_rules(&self) -> impl Iterator<Item = &Rule> {
        self.candidates
            .iter()
            .map(|c| &self.rules.inner.rules[c.rule as usize])
    }

    fn file(&self) -> &FileMeta {
        let index = self
            .candidate_rules()
            .next()
            .map(|r| r.file)
            .or(self.unmatched)
            .unwrap_or(0);
        &self.rules.inner.files[index]
    }

    /// The normalised path the rules were matched against.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path pattern of the most specific matching rule.
    pub fn route(&self) -> Option<&str> {
        self.candidate_rules().next().map(|r| r.route.as_str())
    }

    /// The operation of the most specific matching rule (`unmatched` when none did).
    pub fn operation(&self) -> &str {
        self.candidate_rules()
            .next()
            .map_or(UNMATCHED_OPERATION, |r| r.operation.as_str())
    }

    /// Whether any matching rule reads the request body (`body/` sources or `when.body`).
    pub fn needs_request_body(&self) -> bool {
        let reads = &self.rules.inner.body_reads;
        self.candidates
            .iter()
            .any(|c| reads[c.rule as usize].request)
    }

    /// Whether any matching rule reads the response body (`response/` sources).
    pub fn needs_response_body(&self) -> bool {
        let reads = &self.rules.inner.body_reads;
        self.candidates
            .iter()
            .any(|c| reads[c.rule as usize].response)
    }

    /// `Closed` when any matching rule says `on_queue_failure: closed`: the choice between
    /// them may depend on the body, which has not arrived when the call must be refused.
    pub fn on_queue_failure(&self) -> OnQueueFailure {
        if self
            .candidate_rules()
            .any(|r| r.on_queue_failure == OnQueueFailure::Closed)
        {
            OnQueueFailure::Closed
        } else {
            self.file().on_queue_failure
        }
    }

    /// The header that carries the request ID (`defaults.request_id`).
    pub fn request_id_header(&self) -> &http::HeaderName {
        &self.file().request_id
    }

    /// The request ID for this call: the one in the request-ID header when it is a sane value
    /// (1 to 128 visible ASCII characters), else a new UUIDv7. Callers forward it upstream,
    /// echo it to the client and pass it back in [`Call::request_id`].
    pub fn request_id(&self, headers: &http::HeaderMap) -> String {
        self.request_id_at(headers, Utc::now())
    }

    /// [`Match::request_id`] for a call that arrived at `time`: a generated ID carries that
    /// time, and the caller that has read the clock already does not read it again.
    pub fn request_id_at(&self, headers: &http::HeaderMap, time: DateTime<Utc>) -> String {
        read_request_id(headers, self.request_id_header()).map_or_else(
            || {
                // Straight into a buffer: `to_string` would go through `fmt`.
                let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
                uuid_at(time)
                    .hyphenated()
                    .encode_lower(&mut text)
                    .to_owned()
            },
            str::to_owned,
        )
    }

    /// A copy of the request headers that holds only what a record can read (`User-Agent`,
    /// `Authorization` when a template reads the JWT, and the headers templates and `when`
    /// name), for a caller that must keep them until the call ends. The request-ID header is
    /// not among them: such a caller passes the ID in [`Call::request_id`].
    pub fn record_headers(&self, headers: &http::HeaderMap) -> http::HeaderMap {
        let mut kept = http::HeaderMap::new();
        for name in &self.rules.inner.record_headers {
            for value in headers.get_all(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        kept
    }

    /// Makes the call's record: the first candidate (most specific first) whose `when` holds
    /// wins. `None` when no candidate's `when` holds and unmatched calls are not recorded.
    pub fn record(&self, call: &Call<'_>) -> Option<AuditRecord> {
        self.record_ref(call).map(RecordRef::into_owned)
    }

    /// [`Match::record`], borrowing what it can from the rules and the call: what the proxy
    /// and the layer hand to a sink on the request path (see [`RecordRef`]).
    pub fn record_ref<'a>(&'a self, call: &'a Call<'a>) -> Option<RecordRef<'a>> {
        let lookup = CallLookup::new(self, call);
        let chosen = self.choose(&lookup);
        let (rule, file, lookup) = match chosen {
            Some(c) => {
                let rule = &self.rules.inner.rules[c.rule as usize];
                let lookup = CallLookup {
                    rule: Some(rule),
                    captures: &c.captures,
                    ..lookup
                };
                (Some(rule), &self.rules.inner.files[rule.file], lookup)
            }
            None => (None, &self.rules.inner.files[self.unmatched?], lookup),
        };

        let actor_templates = rule.and_then(|r| r.actor.as_ref()).unwrap_or(&file.actor);
        let actor = actor_templates.iter().find_map(|t| {
            if let Claims::Rejected(reason) = call.claims
                && t.uses(|e| matches!(e.source, Source::Jwt(_)))
            {
                return Some(ActorRef {
                    id: None,
                    source: Cow::Owned(format!("jwt rejected: {reason}")),
                });
            }
            let id = t.eval_text(&lookup).filter(|s| !s.is_empty())?;
            Some(ActorRef {
                id: Some(Cow::Owned(id)),
                source: Cow::Borrowed(t.source_name()),
            })
        });

        let tenant = (rule.and_then(|r| r.tenant.as_ref()))
            .or(file.tenant.as_ref())
            .and_then(|t| t.eval_text(&lookup))
            .filter(|t| !t.is_empty());
        let mut resources = Vec::new();
        let mut details = Vec::new();
        let mut changes = Vec::new();
        let mut description = None;
        if let Some(rule) = rule {
            for change in &rule.changes {
                let eval = |t: &Option<Template>| {
                    (t.as_ref())
                        .and_then(|t| t.eval(&lookup))
                        .map(|v| limit_depth(v, MAX_VALUE_DEPTH))
                };
                let (from, mut to) = (eval(&change.from), eval(&change.to));
                // A field the call did not set did not change: a `to` the rule names whose
                // member the call lacks leaves the change out (a rule that names only `from`,
                // for what a delete removed, keeps it). A field set to `null` was cleared, and
                // says so; a `to` whose body could not be read keeps the known `from`.
                if let Some(target) = &change.to
                    && to.is_none()
                {
                    match target.member(&lookup) {
                        Some(Member::Missing) => continue,
                        Some(Member::Null) => to = Some(Value::Null),
                        None => {}
                    }
                }
                if from.is_some() || to.is_some() {
                    changes.push(ChangeRef {
                        name: change.name.as_str(),
                        from,
                        to,
                    });
                }
            }
            for r in &rule.resources {
                expand_resource(r, &lookup, &mut resources);
            }
            // The loader keeps `details` in name order, the order of a JSON object.
            for (name, template) in &rule.details {
                if let Some(value) = template.eval(&lookup) {
                    details.push((name.as_str(), limit_depth(value, MAX_VALUE_DEPTH)));
                }
            }
            description = rule.description.as_ref().and_then(|t| t.eval_text(&lookup));
        }

        let request_id = match call.request_id {
            Some(id) => Cow::Borrowed(id),
            None => Cow::Owned(self.request_id(call.headers)),
        };
        let outcome = call
            .outcome
            .unwrap_or(match (call.status, call.grpc_status) {
                // A gRPC call that failed is answered 200 with its status in `grpc-status`.
                (Some(status), Some(code)) if status < 400 && code != 0 => Outcome::Failure,
                (Some(status), _) => Outcome::from_status(status),
                (None, _) => Outcome::Aborted,
            });
        let reads = chosen.map(|c| self.rules.inner.body_reads[c.rule as usize]);
        let capture = Capture {
            request_body: reads
                .filter(|r| r.request)
                .and_then(|_| body_note(call.request_body, call.request_body_note, lookup.body())),
            response_body: reads.filter(|r| r.response).and_then(|_| {
                body_note(
                    call.response_body,
                    call.response_body_note,
                    lookup.response(),
                )
            }),
            before: rule.filter(|r| r.before.is_some()).and_then(|_| {
                match (call.before, call.before_note) {
                    (_, Some(note)) => Some(note),
                    (None, None) => Some(BodyNote::Failed),
                    (Some(bytes), None) => body_note(Some(bytes), None, lookup.before()),
                }
            }),
        };
        Some(RecordRef {
            capture: (!capture.is_empty()).then_some(capture),
            schema: SCHEMA_VERSION,
            id: call.record_id.unwrap_or_else(|| uuid_at(call.time)),
            time: call.time,
            duration_ms: (call.duration.as_secs_f64() * 1_000_000.0).round() / 1000.0,
            service: &file.service,
            tenant,
            operation: rule.map_or(UNMATCHED_OPERATION, |r| &r.operation),
            rule: rule.map(|r| r.id.as_str()),
            description,
            actor,
            request: RequestRef {
                id: request_id,
                method: call.method.as_str(),
                method_override: call.method_override,
                path: &self.path,
                route: rule.map(|r| r.route.as_str()),
                client_ip: call.client_ip.as_deref(),
                location: call.location.as_ref(),
                user_agent: call
                    .headers
                    .get(http::header::USER_AGENT)
                    .map(|v| String::from_utf8_lossy(v.as_bytes())),
            },
            resources,
            response: ResponseInfo {
                status: call.status,
                grpc_status: call.grpc_status,
            },
            outcome,
            stage: None,
            origin_seq: None,
            details,
            changes,
        })
    }

    /// The first candidate (most specific first) whose `when` holds.
    fn choose<'a>(&'a self, lookup: &CallLookup<'a>) -> Option<&'a crate::matcher::Candidate> {
        self.candidates.iter().find(|c| {
            let rule = &self.rules.inner.rules[c.rule as usize];
            rule.when.as_ref().is_none_or(|w| when_holds(w, lookup))
        })
    }

    /// The upstream path (and query) the host GETs before it forwards the call, when the
    /// rule that will record it has `before:`: its answer, as [`Call::before`], is what
    /// `before/` templates read. Judged before the body is read (a `when: { body }` holds).
    /// `None` when the rule has none or its template yields nothing.
    pub fn before_target(&self, call: &Call<'_>) -> Option<String> {
        let pending = Call {
            body_pending: true,
            ..call.clone()
        };
        let lookup = CallLookup::new(self, &pending);
        let chosen = self.choose(&lookup)?;
        let rule = &self.rules.inner.rules[chosen.rule as usize];
        let lookup = CallLookup {
            rule: Some(rule),
            captures: &chosen.captures,
            ..lookup
        };
        let target = rule.before.as_ref()?.eval_text(&lookup)?;
        // A path of this API only: a template that came out as `//host/…` or a full URL
        // would send the caller's credentials elsewhere.
        (target.starts_with('/') && !target.starts_with("//") && !target.contains(['\r', '\n']))
            .then_some(target)
    }

    /// Whether a matching rule has `before:` (the host then calls [`Match::before_target`]).
    pub fn has_before(&self) -> bool {
        self.candidates
            .iter()
            .any(|c| self.rules.inner.rules[c.rule as usize].before.is_some())
    }
}

pub(crate) fn read_request_id<'h>(
    headers: &'h http::HeaderMap,
    name: &http::HeaderName,
) -> Option<&'h str> {
    let value = headers.get(name)?.to_str().ok()?;
    let sane = (1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic());
    sane.then_some(value)
}

/// A UUIDv7 whose timestamp is the request's arrival, so ids sort by time.
pub fn uuid_at(time: DateTime<Utc>) -> Uuid {
    let secs = u64::try_from(time.timestamp()).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs, time.timestamp_subsec_nanos());
    Uuid::new_v7(ts)
}

/// What `capture` says of a body a rule reads: the note the capturing side gave, or
/// `unreadable` when bytes were there and no value could be read from them.
fn body_note(
    bytes: Option<&[u8]>,
    note: Option<BodyNote>,
    value: Option<&Value>,
) -> Option<BodyNote> {
    note.or_else(|| {
        let present = bytes.is_some_and(|b| !b.iter().all(u8::is_ascii_whitespace));
        (present && value.is_none()).then_some(BodyNote::Unreadable)
    })
}

fn when_holds(when: &When, lookup: &CallLookup<'_>) -> bool {
    // A body that was not read whole cannot say a pointer is absent: the rule is taken, and
    // its record says what was cut (`capture`), rather than the call going unrecorded.
    let body_unknown = lookup.call.request_body_note.is_some() || lookup.call.body_pending;
    when.body
        .as_ref()
        .is_none_or(|ptr| body_unknown || lookup.body().and_then(|b| pointer(b, ptr)).is_some())
        && when
            .query
            .as_ref()
            .is_none_or(|name| lookup.query(name).is_some())
        && when
            .header
            .as_ref()
            .is_none_or(|name| lookup.call.headers.contains_key(name))
}

/// A resource field's value: one, or one per element when its template yields an array.
enum Field {
    One(Option<String>),
    Many(Vec<Option<String>>),
}

impl Field {
    fn eval(template: Option<&Template>, lookup: &CallLookup<'_>) -> Field {
        match template.and_then(|t| t.eval(lookup)) {
            Some(Value::Array(items)) => Field::Many(items.iter().map(to_text).collect()),
            Some(value) => Field::One(into_text(value)),
            None => Field::One(None),
        }
    }

    fn len(&self) -> Option<usize> {
        match self {
            Field::One(_) => None,
            Field::Many(items) => Some(items.len()),
        }
    }

    /// The value for resource `index`; the last one takes it rather than copying it.
    fn take(&mut self, index: usize, last: bool) -> Option<String> {
        let value = match self {
            Field::One(value) => value,
            Field::Many(items) => items.get_mut(index)?,
        };
        if last { value.take() } else { value.clone() }
    }
}

/// Adds one resource, or one per element when `id` or `path` yields an array (arrays in both
/// are paired up by position). A resource with neither an id nor a path is left out.
fn expand_resource<'a>(
    template: &'a crate::model::ResourceTemplate,
    lookup: &CallLookup<'_>,
    out: &mut Vec<ResourceRef<'a>>,
) {
    let Some(kind) = template.kind.eval_cow(lookup) else {
        return;
    };
    let mut ids = Field::eval(template.id.as_ref(), lookup);
    let mut paths = Field::eval(template.path.as_ref(), lookup);
    let mut previous = Field::eval(template.previous_path.as_ref(), lookup);
    let count = match (ids.len(), paths.len(), previous.len()) {
        (None, None, None) => 1,
        (a, b, c) => a.unwrap_or(0).max(b.unwrap_or(0)).max(c.unwrap_or(0)),
    };
    for index in 0..count {
        let last = index + 1 == count;
        let (id, path) = (ids.take(index, last), paths.take(index, last));
        let previous_path = previous.take(index, last);
        // Where it was is worth recording even when where it is now is not known.
        if id.is_some() || path.is_some() || previous_path.is_some() {
            out.push(ResourceRef {
                kind: kind.clone(),
                id,
                path,
                previous_path,
            });
        }
    }
}

/// The [`Lookup`] over one call: bodies and claims are parsed at most once, and only when a
/// template asks for them.
struct CallLookup<'a> {
    m: &'a Match,
    call: &'a Call<'a>,
    /// The chosen rule and its captures; unset while `when` conditions are being tried.
    rule: Option<&'a Rule>,
    captures: &'a [(u32, u32)],
    body: OnceCell<Option<Value>>,
    response: OnceCell<Option<Value>>,
    jwt: OnceCell<Option<Value>>,
    before: OnceCell<Option<Value>>,
}

impl<'a> CallLookup<'a> {
    fn new(m: &'a Match, call: &'a Call<'a>) -> Self {
        CallLookup {
            m,
            call,
            rule: None,
            captures: &[],
            body: OnceCell::new(),
            response: OnceCell::new(),
            jwt: OnceCell::new(),
            before: OnceCell::new(),
        }
    }
}

impl Lookup for CallLookup<'_> {
    fn path_param(&self, name: &str) -> Option<Cow<'_, str>> {
        let rule = self.rule?;
        let index = rule.pattern.params().position(|p| p == name)?;
        let (start, end) = *self.captures.get(index)?;
        let from = self.m.bounds.get(start as usize)?.0 as usize;
        let to = self.m.bounds.get(end.checked_sub(1)? as usize)?.1 as usize;
        let raw = self.m.path.get(from..to)?;
        bounded(decode_param(raw))
    }

    fn query(&self, name: &str) -> Option<Cow<'_, str>> {
        let query = self.call.uri.query()?;
        let value = query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(key) == name).then(|| form_decode(value).into_owned())
        })?;
        bounded(Cow::Owned(value))
    }

    fn header(&self, name: &http::HeaderName) -> Option<Cow<'_, str>> {
        let value = self.call.headers.get(name)?;
        bounded(String::from_utf8_lossy(value.as_bytes()))
    }

    fn body(&self) -> Option<&Value> {
        self.body
            .get_or_init(|| {
                let content_type = self.call.headers.get(http::header::CONTENT_TYPE);
                let cut = self.call.request_body_note == Some(BodyNote::Truncated);
                match BodyKind::of(content_type) {
                    BodyKind::Multipart => {
                        read_multipart(self.call.request_body?, content_type, cut)
                    }
                    kind => read_body(self.call.request_body?, kind, cut),
                }
            })
            .as_ref()
    }

    fn response(&self) -> Option<&Value> {
        self.response
            .get_or_init(|| {
                let cut = self.call.response_body_note == Some(BodyNote::Truncated);
                read_body(self.call.response_body?, BodyKind::Json, cut)
            })
            .as_ref()
    }

    fn before(&self) -> Option<&Value> {
        self.before
            .get_or_init(|| {
                let cut = self.call.before_note == Some(BodyNote::Truncated);
                read_body(self.call.before?, BodyKind::Json, cut)
            })
            .as_ref()
    }

    fn jwt(&self) -> Option<&Value> {
        match self.call.claims {
            Claims::Verified(claims) => Some(claims),
            Claims::Absent | Claims::Rejected(_) => None,
            Claims::Unverified => self
                .jwt
                .get_or_init(|| decode_bearer_claims(self.call.headers))
                .as_ref(),
        }
    }

    fn hmac_key(&self) -> Option<&[u8]> {
        self.m.rules.inner.hmac_key.as_deref()
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case), trimmed.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The claims of `Authorization: Bearer <jwt>`, decoded without checking the signature.
pub fn decode_bearer_claims(headers: &http::HeaderMap) -> Option<Value> {
    let payload = bearer_token(headers)?.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.is_object().then_some(claims)
}

/// `application/x-www-form-urlencoded` decoding of one query key or value.
fn form_decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['+', '%']) {
        return Cow::Borrowed(text);
    }
    let spaced = text.replace('+', " ");
    Cow::Owned(decode_param(&spaced).into_owned())
}
