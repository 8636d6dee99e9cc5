//! The query API: records, one record, a resource's history, export, gaps; `/metrics` and
//! `/healthz`. Every `/api` call needs `Authorization: Bearer TOKEN`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};

use crate::config::Role;
use crate::store::{Cursor, OperationFilter, Order, Page, Query, Store, StoreError};

/// What the handlers share.
pub(crate) struct AppState {
    pub(crate) store: Arc<dyn Store>,
    /// SHA-256 of each token, with its role.
    pub(crate) tokens: Vec<([u8; 32], Role)>,
    pub(crate) metrics: Option<PrometheusHandle>,
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
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .with_state(state)
}

impl AppState {
    /// 401 without a known token, 403 when its role is too small.
    fn authorize(&self, headers: &HeaderMap, needs: Role) -> Result<(), ApiError> {
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
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let role = self
            .tokens
            .iter()
            .find(|(hash, _)| *hash == digest)
            .map(|(_, role)| *role)
            .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unknown token".into()))?;
        if role < needs {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "this token's role (viewer) may only read resource history".into(),
            ));
        }
        Ok(())
    }
}

const FILTERS: &[&str] = &[
    "operation",
    "actor",
    "resource",
    "request_id",
    "outcome",
    "since",
    "until",
    "limit",
    "cursor",
];

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
    Ok(Query {
        operation: text("operation").map(|o| OperationFilter::parse(&o)),
        actor: text("actor"),
        resource: text("resource"),
        request_id: text("request_id"),
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
    [Success, Failure, Error, Aborted]
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
    state.authorize(&headers, Role::Admin)?;
    let query = parse_query(&params, FILTERS)?;
    Ok(page_response(state.store.query(&query).await?))
}

async fn record(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.authorize(&headers, Role::Admin)?;
    match state.store.get(&id).await? {
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
    state.authorize(&headers, Role::Viewer)?;
    let mut query = parse_query(&params, FILTERS)?;
    if query.resource.is_none() {
        return Err(bad("history needs resource=ID_OR_PATH"));
    }
    query.order = Order::OldestFirst;
    Ok(page_response(state.store.query(&query).await?))
}

async fn export(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    state.authorize(&headers, Role::Admin)?;
    // Everything the filters select: paging parameters are read (a query string from
    // `/records` can be reused as it is) but do not narrow an export.
    let mut query = parse_query(&params, FILTERS)?;
    query.cursor = None;
    let chunks = state.store.export(query);
    let stream = futures_util::stream::unfold(chunks, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((chunk.map_err(std::io::Error::other), rx))
    });
    let filename = format!(
        "attachment; filename=\"auditgate-export-{}.json\"",
        Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&filename) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

async fn gaps(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers, Role::Admin)?;
    let gaps = state.store.gaps().await?;
    Ok(axum::Json(serde_json::json!({ "gaps": gaps })).into_response())
}

async fn operations(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers, Role::Admin)?;
    let operations = state.store.operations().await?;
    Ok(axum::Json(serde_json::json!({ "operations": operations })).into_response())
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.count().await {
        Ok(n) => axum::Json(serde_json::json!({"status": "ok", "records": n})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "store unavailable", "error": e.to_string()})),
        )
            .into_response(),
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

/// The audit-log page: one self-contained HTML file; it signs in with an API token and uses
/// the API above.
async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("page.html"),
    )
        .into_response()
}
