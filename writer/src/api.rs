//! The query API: records, one record, a resource's history, export, gaps; `/metrics` and
//! `/healthz`; the audit-log page (`/`, `/app.js`, `/app.css`). Every `/api` call needs
//! `Authorization: Bearer TOKEN`.
//!
//! - An `admin` token sees everything. A `viewer` token reaches `/api/v1/history` only (403
//!   elsewhere), and each record it gets there is cut down to what the resource's history needs:
//!   see [`for_viewer`].
//! - Every answer carries `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
//!   `X-Frame-Options: DENY` and a Content-Security-Policy: the page's own ([`PAGE_CSP`]: its
//!   script and styles are files of their own, nothing inline) or, on every other answer,
//!   one that lets nothing load ([`API_CSP`]).
//! - `/healthz` needs no token, so a failing store is answered `{"status":"unavailable"}`
//!   without the error's text (which names hosts, users, files); the text goes to the log,
//!   once per distinct error.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::Role;
use crate::export::Format;
use crate::store::{Cursor, OperationFilter, Order, Page, Query, Store, StoreError};

/// What the handlers share.
pub(crate) struct AppState {
    pub(crate) store: Arc<dyn Store>,
    /// SHA-256 of each token, with what it may see.
    pub(crate) tokens: Vec<([u8; 32], Access)>,
    /// Signs and checks minted tokens (`POST /api/v1/tokens`), when configured.
    pub(crate) mint_key: Option<crate::minted::MintKey>,
    pub(crate) metrics: Option<PrometheusHandle>,
    /// The public half of the checkpoint signing key, and where checkpoints are also kept,
    /// for `GET /api/v1/verify`.
    pub(crate) verifier: Option<crate::chain::VerifierKey>,
    pub(crate) checkpoint_dir: Option<std::path::PathBuf>,
}

/// An error answer: status and a message that says what to fix.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 }).to_string();
        let mut response =
            (self.0, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            // RFC 6750: a 401 names the scheme it wants.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"auditgate\""),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store query failed");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the store failed to answer".into(),
        )
    }
}

/// The page's policy: its own script, styles and API only; no inline script or style, no
/// plugins, no `<base>`, no form submissions, no framing (clickjacking).
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                        img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                        form-action 'none'; frame-ancestors 'none'";

/// Every other answer (JSON, the export, metrics, errors) is data, never a document: should a
/// browser render one anyway, nothing in it may load or run, nor may it be framed.
const API_CSP: &str = "default-src 'none'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'";

/// What a viewer keeps of a record's top-level fields, besides `request`, `response` and
/// `resources` (cut down themselves) and `description` and `changes` (kept only when the
/// record is about the asked resource alone). A list of what to keep rather than of what to
/// drop: a field added to the record later stays an admin's until someone decides otherwise.
const VIEWER_FIELDS: &[&str] = &[
    "schema",
    "id",
    "time",
    "duration_ms",
    "service",
    "tenant",
    "operation",
    "rule",
    "stage",
    "actor",
    "outcome",
];

/// What a viewer keeps of `request`: not `client_ip`, `user_agent` or `location`.
const VIEWER_REQUEST_FIELDS: &[&str] = &["id", "method", "path", "route"];

/// What a viewer keeps of `response`.
const VIEWER_RESPONSE_FIELDS: &[&str] = &["status"];

/// The last store error `/healthz` logged: a probe every few seconds against a store that is
/// down logs the error once, not once per probe (and again once it changes or after the store
/// has answered in between). One per process, not per writer: this module's state is built by
/// the crate root, and two writers in one process would at worst share the deduplication.
static HEALTH_ERROR: Mutex<Option<String>> = Mutex::new(None);

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/records", get(records))
        .route("/api/v1/records/{id}", get(record))
        .route("/api/v1/history", get(history))
        .route("/api/v1/export", get(export))
        .route("/api/v1/gaps", get(gaps))
        .route("/api/v1/operations", get(operations))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/verify", get(verify))
        .route("/api/v1/tokens", axum::routing::post(mint))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .with_state(state)
        .layer(axum::middleware::map_response(security_headers))
}

/// The headers every answer carries (see the module doc). A handler that sets its own
/// Content-Security-Policy (the page and its files) keeps it.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(API_CSP),
        );
    }
    response
}

/// What a token may see: its role, and the one tenant it is scoped to (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Access {
    pub(crate) role: Role,
    pub(crate) tenant: Option<String>,
}

impl Access {
    /// Narrows a query to the token's tenant. A `tenant=` naming another one is refused (403)
    /// rather than answered empty, so that a mistyped scope is noticed.
    fn scope(&self, query: &mut Query) -> Result<(), ApiError> {
        let Some(own) = &self.tenant else {
            return Ok(());
        };
        if query.tenant.as_ref().is_some_and(|asked| asked != own) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("this token sees tenant {own:?} only"),
            ));
        }
        query.tenant = Some(own.clone());
        Ok(())
    }

    /// Refuses what only an unscoped token may see (every instance's gaps).
    fn unscoped(&self) -> Result<(), ApiError> {
        match &self.tenant {
            None => Ok(()),
            Some(own) => Err(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "this token sees tenant {own:?} only, and this endpoint covers every tenant"
                ),
            )),
        }
    }
}

impl AppState {
    /// What the token may see; 401 without a known token, 403 when its role is too small.
    fn authorize(&self, headers: &HeaderMap, needs: Role) -> Result<Access, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme is case-insensitive (RFC 9110 §11.1): `bearer T` is the same token.
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| {
                ApiError(
                    StatusCode::UNAUTHORIZED,
                    "send Authorization: Bearer TOKEN".into(),
                )
            })?;
        let token = token.trim();
        if crate::minted::MintKey::looks_minted(token) {
            let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
            let grant = (self.mint_key.as_ref())
                .and_then(|key| key.read(token, now))
                .ok_or_else(|| {
                    ApiError(
                        StatusCode::UNAUTHORIZED,
                        "this minted token has expired, or was not minted by this writer".into(),
                    )
                })?;
            let access = Access {
                role: grant.role,
                tenant: Some(grant.tenant),
            };
            if access.role < needs {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    "this token's role (viewer) may only read resource history".into(),
                ));
            }
            return Ok(access);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let access = self
            .tokens
            .iter()
            .find(|(hash, _)| *hash == digest)
            .map(|(_, access)| access.clone())
            .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unknown token".into()))?;
        if access.role < needs {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "this token's role (viewer) may only read resource history".into(),
            ));
        }
        Ok(access)
    }
}

const FILTERS: &[&str] = &[
    "operation",
    "actor",
    "resource",
    "request_id",
    "tenant",
    "service",
    "outcome",
    "since",
    "until",
    "limit",
    "cursor",
];

/// How many alternatives one `operation=` may name: each is a clause of the query.
const MAX_OPERATIONS: usize = 64;

/// Reads the filters, refusing unknown parameters and bad values with a message.
fn parse_query(params: &HashMap<String, String>, allowed: &[&str]) -> Result<Query, ApiError> {
    if let Some(unknown) = params.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown parameter {unknown:?}: use {}",
            allowed.join(", ")
        )));
    }
    let text = |name: &str| params.get(name).filter(|v| !v.is_empty()).cloned();
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
        text(name)
            .map(|v| {
                DateTime::parse_from_rfc3339(&v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        bad(format!(
                            "{name}={v:?} is not an RFC 3339 time: write e.g. 2026-11-22T10:00:00Z"
                        ))
                    })
            })
            .transpose()
    };
    let limit = match text("limit") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => return Err(bad(format!("limit={v:?}: use a number from 1 to 1000"))),
        },
    };
    let outcome = text("outcome")
        .map(|v| {
            parse_outcome(&v).ok_or_else(|| {
                bad(format!(
                    "outcome={v:?}: use success, failure, error or aborted"
                ))
            })
        })
        .transpose()?;
    let cursor = text("cursor")
        .map(|v| {
            Cursor::decode(&v)
                .ok_or_else(|| bad(format!("cursor={v:?} is not a cursor this API gave out")))
        })
        .transpose()?;
    let operations = match text("operation") {
        None => Vec::new(),
        Some(v) => {
            let list = OperationFilter::parse_list(&v);
            if list.is_empty() {
                return Err(bad(format!(
                    "operation={v:?} names no operation: write e.g. asset.rename,tag.*"
                )));
            }
            list
        }
    };
    if operations.len() > MAX_OPERATIONS {
        return Err(bad(format!(
            "operation= names {} operations: at most {MAX_OPERATIONS}, or a prefix such as asset.*",
            operations.len()
        )));
    }
    Ok(Query {
        operation: operations,
        actor: text("actor"),
        resource: text("resource"),
        resource_names: Vec::new(),
        request_id: text("request_id"),
        tenant: text("tenant"),
        service: text("service"),
        outcome,
        since: time("since")?,
        until: time("until")?,
        limit,
        cursor,
        order: Order::NewestFirst,
    })
}

fn parse_outcome(text: &str) -> Option<auditgate_rules::Outcome> {
    use auditgate_rules::Outcome::*;
    [Success, Failure, Error, Aborted, Unknown]
        .into_iter()
        .find(|o| o.as_str() == text)
}

/// `{"records": [...], "next_cursor": "..." | null}` without re-parsing the stored JSON.
fn page_response(page: Page) -> Response {
    let mut body =
        String::with_capacity(page.records.iter().map(|r| r.len() + 1).sum::<usize>() + 64);
    body.push_str("{\"records\":[");
    body.push_str(&page.records.join(","));
    body.push_str("],\"next_cursor\":");
    match page.next_cursor {
        Some(c) => body.push_str(&serde_json::Value::String(c.encode()).to_string()),
        None => body.push_str("null"),
    }
    body.push('}');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn records(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let access = state.authorize(&headers, Role::Admin)?;
    let mut query = parse_query(&params, FILTERS)?;
    access.scope(&mut query)?;
    Ok(page_response(state.store.query(&query).await?))
}

async fn record(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let access = state.authorize(&headers, Role::Admin)?;
    let found = state.store.get(&id).await?.filter(|json| {
        // Another tenant's record is not there, to this token: the same 404 as no record.
        access.tenant.as_ref().is_none_or(|own| {
            serde_json::from_str::<Value>(json)
                .ok()
                .is_some_and(|r| r.get("tenant").and_then(Value::as_str) == Some(own))
        })
    });
    match found {
        Some(json) => Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no record with id {id:?}"),
        )),
    }
}

async fn history(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let access = state.authorize(&headers, Role::Viewer)?;
    let role = access.role;
    let mut query = parse_query(&params, FILTERS)?;
    access.scope(&mut query)?;
    let Some(resource) = query.resource.clone() else {
        return Err(bad("history needs resource=ID_OR_PATH"));
    };
    query.order = Order::OldestFirst;
    // One history per asset: every name the resource has gone by (its TYPE:ID, its paths
    // before and after each move and rename), as the records linked them.
    query.resource_names = state.store.linked(&resource).await?;
    let mut page = state.store.query(&query).await?;
    if role != Role::Admin {
        page.records = for_viewer(&page.records, &resource, &query.resource_names);
    }
    Ok(page_response(page))
}

/// A page of `asked`'s history as a viewer sees it. Of each record it keeps what tells what
/// happened to that resource, when, by whom, with which outcome ([`VIEWER_FIELDS`], `request`
/// without `client_ip`, `user_agent` and `location`, `response.status`), and drops `details`,
/// `origin`, `chain`, `capture` and every field not listed. `resources` keeps the entries that
/// are the asked resource ([`asked_aliases`]); `description` and `changes`, which a rule may
/// render from any of the record's resources, are kept only when every entry is.
fn for_viewer(records: &[String], asked: &str, names: &[String]) -> Vec<String> {
    let parsed: Vec<Map<String, Value>> = records
        .iter()
        .filter_map(|json| match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(record)) => Some(record),
            // Cannot happen (ingest parsed every stored record), and a record that cannot be
            // cut down is not shown whole to a viewer.
            _ => {
                tracing::error!(
                    "a stored record is not a JSON object: left out of a viewer's history"
                );
                None
            }
        })
        .collect();
    let mut aliases = asked_aliases(&parsed, asked);
    aliases.extend(names.iter().cloned());
    parsed
        .iter()
        .map(|record| cut_down(record, asked, &aliases).to_string())
        .collect()
}

/// The names the asked resource goes by in this page: `asked` itself, and the `path`,
/// `previous_path` and `TYPE:ID` of every entry found to be it, until no entry adds one. An
/// entry is it when its `id` is `asked` (the store matches a bare id), or one of those names of
/// it is known: so the history of `/forest/tree.png` also names the entry of its delete that
/// carried only `file:abc`, when the upload that linked the two is on the same page.
fn asked_aliases(records: &[Map<String, Value>], asked: &str) -> HashSet<String> {
    let mut aliases = HashSet::from([asked.to_owned()]);
    loop {
        let known = aliases.len();
        for entry in records.iter().flat_map(entries) {
            if is_asked(entry, asked, &aliases) {
                aliases.extend(entry_names(entry));
            }
        }
        // The set only grows, within the page's finite names: this ends.
        if aliases.len() == known {
            return aliases;
        }
    }
}

/// A record's `resources`, empty when absent.
fn entries(record: &Map<String, Value>) -> &[Value] {
    record
        .get("resources")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A text field of a JSON object.
fn text_field<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value.get(name).and_then(Value::as_str)
}

/// An entry's `path`, `previous_path` and `TYPE:ID`.
fn entry_names(entry: &Value) -> Vec<String> {
    let typed = match (text_field(entry, "type"), text_field(entry, "id")) {
        (Some(kind), Some(id)) => Some(format!("{kind}:{id}")),
        _ => None,
    };
    [
        text_field(entry, "path").map(str::to_owned),
        text_field(entry, "previous_path").map(str::to_owned),
        typed,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Whether a resource entry is the asked resource (see [`asked_aliases`]).
fn is_asked(entry: &Value, asked: &str, aliases: &HashSet<String>) -> bool {
    text_field(entry, "id") == Some(asked)
        || entry_names(entry).iter().any(|name| aliases.contains(name))
}

/// The fields `names` of an object, those it has.
fn pick(from: &Map<String, Value>, names: &[&str]) -> Map<String, Value> {
    names
        .iter()
        .filter_map(|name| from.get(*name).map(|v| ((*name).to_owned(), v.clone())))
        .collect()
}

/// One record as a viewer sees it (see [`for_viewer`]).
fn cut_down(record: &Map<String, Value>, asked: &str, aliases: &HashSet<String>) -> Value {
    let mut out = pick(record, VIEWER_FIELDS);
    for (name, keep) in [
        ("request", VIEWER_REQUEST_FIELDS),
        ("response", VIEWER_RESPONSE_FIELDS),
    ] {
        if let Some(Value::Object(part)) = record.get(name) {
            out.insert(name.to_owned(), Value::Object(pick(part, keep)));
        }
    }
    let all = entries(record);
    let kept: Vec<Value> = all
        .iter()
        .filter(|entry| is_asked(entry, asked, aliases))
        .cloned()
        .collect();
    let about_it_alone = !all.is_empty() && kept.len() == all.len();
    out.insert("resources".to_owned(), Value::Array(kept));
    if about_it_alone {
        out.extend(pick(record, &["description", "changes"]));
    }
    Value::Object(out)
}

async fn export(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let access = state.authorize(&headers, Role::Admin)?;
    let mut params = params;
    let (format, bundle) = match params.remove("format").as_deref() {
        None | Some("") => (Format::Json, false),
        // The records as the JSON export holds them, with the signed checkpoints beside
        // them: what `auditgate verify --export` checks offline with the public key alone.
        Some("bundle") => (Format::Json, true),
        Some(name) => (
            Format::parse(name)
                .ok_or_else(|| bad(format!("format={name:?}: use {} or bundle", Format::NAMES)))?,
            false,
        ),
    };
    // Everything the filters select: paging parameters are read (a query string from
    // `/records` can be reused as it is) but do not narrow an export.
    let mut query = parse_query(&params, FILTERS)?;
    access.scope(&mut query)?;
    query.cursor = None;
    let (start, end) = if bundle {
        let unfiltered = Query {
            limit: query.limit,
            order: query.order,
            ..Query::default()
        };
        let filtered = format!("{query:?}") != format!("{unfiltered:?}");
        let checkpoints = state.store.checkpoints().await?;
        // The received records complete ones replaced keep their links: an unfiltered
        // bundle holds them, so that its chain has no hole where they are.
        let mut superseded: Vec<serde_json::Value> = Vec::new();
        if !filtered {
            let mut after = i64::MIN;
            loop {
                let rows = state.store.scan(true, after, 5000).await?;
                let Some(last) = rows.last() else { break };
                after = last.store_seq;
                superseded.extend(
                    rows.iter()
                        .filter_map(|r| serde_json::from_str(&r.json).ok()),
                );
            }
        }
        (
            bytes::Bytes::from(format!("{{\"filtered\":{filtered},\"records\":[\n")),
            bytes::Bytes::from(format!(
                "\n],\"superseded\":{},\"checkpoints\":{}}}\n",
                serde_json::Value::from(superseded),
                serde_json::Value::from(checkpoints)
            )),
        )
    } else {
        (format.start(), format.end())
    };
    let pages = state.store.export(query);
    // (pages, whether no record has been written yet, whether the end has been written)
    let stream =
        futures_util::stream::unfold((pages, true, false), move |(mut rx, first, done)| {
            let end = end.clone();
            async move {
                if done {
                    return None;
                }
                match rx.recv().await {
                    Some(Ok(records)) => {
                        let chunk = format.page(&records, first);
                        Some((Ok(chunk), (rx, first && records.is_empty(), false)))
                    }
                    Some(Err(e)) => Some((Err(std::io::Error::other(e)), (rx, first, true))),
                    None => Some((Ok(end), (rx, first, true))),
                }
            }
        });
    let stream =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(start) }).chain(stream);
    let filename = format!(
        "attachment; filename=\"auditgate-{}-{}.{}\"",
        if bundle { "bundle" } else { "export" },
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        format.extension()
    );
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&filename) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// `GET /api/v1/verify`: what `auditgate verify` reports for this store, with the writer's
/// own public key and `checkpoint_dir`. Every tenant's records are in the chain, so only an
/// unscoped admin token may ask. An auditor who does not trust the writer runs
/// `auditgate verify` with the public key instead.
async fn verify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers, Role::Admin)?.unscoped()?;
    let extra = match &state.checkpoint_dir {
        Some(dir) if dir.exists() => crate::verify::read_checkpoint_dir(dir).map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {}: {e}", dir.display()),
            )
        })?,
        _ => Vec::new(),
    };
    let report =
        crate::verify::verify_store(&*state.store, &extra, state.verifier.as_ref()).await?;
    Ok(axum::Json(report).into_response())
}

/// `GET /api/v1/whoami`: what the token in hand may see, `{"role", "tenant"}` (`tenant` null
/// for an unscoped token), so that the page can show whose log it is and which filters apply.
async fn whoami(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let access = state.authorize(&headers, Role::Viewer)?;
    let role = match access.role {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    };
    Ok(axum::Json(serde_json::json!({ "role": role, "tenant": access.tenant })).into_response())
}

async fn gaps(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers, Role::Admin)?.unscoped()?;
    let gaps = state.store.gaps().await?;
    Ok(axum::Json(serde_json::json!({ "gaps": gaps })).into_response())
}

async fn operations(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let access = state.authorize(&headers, Role::Admin)?;
    let operations = state.store.operations(access.tenant.as_deref()).await?;
    Ok(axum::Json(serde_json::json!({ "operations": operations })).into_response())
}

/// What `POST /api/v1/tokens` takes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    tenant: String,
    #[serde(default = "viewer")]
    role: Role,
    #[serde(default = "default_ttl")]
    ttl_seconds: u64,
}

fn viewer() -> Role {
    Role::Viewer
}

fn default_ttl() -> u64 {
    3600
}

/// `POST /api/v1/tokens {"tenant", "role", "ttl_seconds"}`: a short-lived token of one tenant
/// (see [`crate::minted`]), for an unscoped admin token only.
async fn mint(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    state.authorize(&headers, Role::Admin)?.unscoped()?;
    let Some(key) = &state.mint_key else {
        return Err(ApiError(
            StatusCode::NOT_IMPLEMENTED,
            "this writer mints no tokens: set token_key_file in its config".into(),
        ));
    };
    let asked: MintRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "{e}: send {{\"tenant\": \"acme\", \"role\": \"viewer\", \"ttl_seconds\": 3600}}"
        ))
    })?;
    if asked.tenant.is_empty()
        || asked.tenant.len() > 256
        || asked.tenant.chars().any(char::is_control)
    {
        return Err(bad("tenant: 1 to 256 characters, no control characters"));
    }
    if !(1..=crate::minted::MAX_TTL_SECONDS).contains(&asked.ttl_seconds) {
        return Err(bad(format!(
            "ttl_seconds: 1 to {}",
            crate::minted::MAX_TTL_SECONDS
        )));
    }
    let now = Utc::now();
    let seconds = u64::try_from(now.timestamp()).unwrap_or(0);
    let token = key.mint(&asked.tenant, asked.role, asked.ttl_seconds, seconds);
    let expires = now + chrono::Duration::seconds(i64::try_from(asked.ttl_seconds).unwrap_or(0));
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({
            "token": token,
            "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "tenant": asked.tenant,
            "role": asked.role,
        })),
    )
        .into_response())
}

/// `{"status": "ok", "records": N}`, or 503 `{"status": "unavailable"}`: no token is needed,
/// so the store's error (which can name hosts, users and files) is logged, not answered.
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let counted = state.store.count().await;
    let mut last = HEALTH_ERROR.lock().unwrap_or_else(PoisonError::into_inner);
    match counted {
        Ok(n) => {
            if last.take().is_some() {
                tracing::info!("healthz: the store answers again");
            }
            axum::Json(serde_json::json!({"status": "ok", "records": n})).into_response()
        }
        Err(e) => {
            let error = e.to_string();
            if last.as_deref() != Some(error.as_str()) {
                tracing::error!(%error, "healthz: the store does not answer");
                *last = Some(error);
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "unavailable"})),
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match &state.metrics {
        Some(handle) => {
            handle.run_upkeep();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                handle.render(),
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// The audit-log page: it signs in with an API token and uses the API above. Its script and
/// styles are [`script`] and [`style`].
async fn index() -> Response {
    page_file("text/html; charset=utf-8", include_str!("page.html"))
}

/// The page's script, `/app.js`.
async fn script() -> Response {
    page_file("text/javascript; charset=utf-8", include_str!("page.js"))
}

/// The page's styles, `/app.css`.
async fn style() -> Response {
    page_file("text/css; charset=utf-8", include_str!("page.css"))
}

/// One of the page's files, under the page's policy; revalidated on each load, so that a new
/// writer's page is never mixed with an old one's script.
fn page_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
        ],
        body,
    )
        .into_response()
}
