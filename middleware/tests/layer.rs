//! `AuditLayer` through real axum routers (and a bare hyper server over TCP): the records a
//! user would look for, the bodies the handler and the client see, the 503 of closed rules.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use auditgate_middleware::{AuditLayer, RequestId, VerifiedClaims};
use auditgate_queue::MemorySink;
use auditgate_rules::{AuditRecord, ClientIpMode, Outcome, RuleSet};
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path};
use axum::http::{Request, StatusCode};
use axum::routing::{delete, patch, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};

const RULES: &str = r#"
version: 1
service: media-library
defaults:
  actor: ["{jwt/sub}", "{header.X-User-Id}"]
rules:
  - id: file-rename
    operation: asset.rename
    method: PATCH
    path: /v1/files/{fileId}/details
    when: { body: /name }
    resources: [{ type: file, id: "{path.fileId}", path: "{body/filePath}" }]
    details: { new_name: "{body/name}" }
    description: "Renamed file {path.fileId} to {body/name}"
  - operation: asset.upload
    method: POST
    path: /v1/files
    resources: [{ type: file, id: "{response/fileId}" }]
    details: { size: "{response/size}" }
  - operation: asset.delete
    method: DELETE
    path: /v1/files/{fileId}
    resources: [{ type: file, id: "{path.fileId}" }]
  - operation: tag.add
    method: POST
    path: /v1/files/addTags
    resources: [{ type: file, id: "{body/fileIds}" }]
    details: { tags: "{body/tags}" }
  - operation: secret.update
    method: PUT
    path: /api/repos/{*repo}/secrets/{key}
    resources: [{ type: secret, id: "{path.key}" }]
    on_queue_failure: closed
"#;

fn rules() -> RuleSet {
    RuleSet::from_yaml("rules.yaml", RULES).unwrap()
}

/// A small media-library API; `calls` counts handler invocations.
fn app(sink: &MemorySink, calls: Arc<AtomicUsize>) -> Router {
    let c = calls.clone();
    Router::new()
        .route(
            "/v1/files/{file_id}/details",
            patch(move |Path(id): Path<String>, Json(body): Json<Value>| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    if id == "locked" {
                        return (StatusCode::FORBIDDEN, Json(json!({"error": "locked"})));
                    }
                    (
                        StatusCode::OK,
                        Json(json!({"fileId": id, "name": body["name"]})),
                    )
                }
            }),
        )
        .route(
            "/v1/files",
            post(|body: Bytes| async move { Json(json!({"fileId": "new-1", "size": body.len()})) }),
        )
        .route(
            "/v1/files/{file_id}",
            delete(|Extension(RequestId(id)): Extension<RequestId>| async move { id })
                .get(|| async { "a file" }),
        )
        .route(
            "/v1/files/addTags",
            // Templates read what the handler reads: this one reads the whole body.
            post(|_: Bytes| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/api/repos/{*rest}",
            put({
                let calls = calls.clone();
                move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { "stored" }
                }
            }),
        )
        .layer(AuditLayer::new(rules(), sink.clone()))
}

async fn send(app: Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn only(sink: &MemorySink) -> AuditRecord {
    let records = sink.take();
    assert_eq!(records.len(), 1, "{records:#?}");
    records.into_iter().next().unwrap()
}

fn jwt(claims: Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(claims.to_string()),
        b64.encode(b"not-checked-here")
    )
}

#[tokio::test]
async fn a_rename_records_every_field() {
    let sink = MemorySink::new();
    let (status, headers, body) = send(
        app(&sink, Arc::default()),
        Request::patch("/v1/files/abc/details")
            .header(
                "Authorization",
                format!("Bearer {}", jwt(json!({"sub": "u_jwt"}))),
            )
            .header("X-User-Id", "u_header")
            .header("X-Request-Id", "req-42")
            .header("User-Agent", "curl/8.5.0")
            .header("Content-Type", "application/json")
            .body(Body::from(
                r#"{"name":"tree.png","filePath":"/forest/tree.png"}"#,
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["x-request-id"], "req-42",
        "the request ID is echoed"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"fileId": "abc", "name": "tree.png"}),
        "the handler read the whole body"
    );

    let r = only(&sink);
    assert_eq!(r.service, "media-library");
    assert_eq!(r.operation, "asset.rename");
    assert_eq!(r.rule.as_deref(), Some("file-rename"));
    assert_eq!(
        r.description.as_deref(),
        Some("Renamed file abc to tree.png")
    );
    let actor = r.actor.unwrap();
    assert_eq!(actor.id.as_deref(), Some("u_jwt"), "jwt/sub comes first");
    assert_eq!(actor.source, "jwt/sub");
    assert_eq!(r.request.id, "req-42");
    assert_eq!(r.request.method, "PATCH");
    assert_eq!(r.request.path, "/v1/files/abc/details");
    assert_eq!(
        r.request.route.as_deref(),
        Some("/v1/files/{fileId}/details")
    );
    assert_eq!(r.request.user_agent.as_deref(), Some("curl/8.5.0"));
    assert_eq!(
        serde_json::to_value(&r.resources).unwrap(),
        json!([{"type": "file", "id": "abc", "path": "/forest/tree.png"}])
    );
    assert_eq!(r.details["new_name"], "tree.png");
    assert_eq!(r.response.status, Some(200));
    assert_eq!(r.outcome, Outcome::Success);
    assert!(r.duration_ms >= 0.0);
    assert_eq!(r.origin.unwrap().seq, 1);
}

#[tokio::test]
async fn an_unnormalised_path_cannot_slip_past_its_rule() {
    let sink = MemorySink::new();
    let (status, _, _) = send(
        app(&sink, Arc::default()),
        Request::delete("/v1//files/./x/../abc/")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    // axum does not route it; the audit trail still shows the attempt.
    assert_eq!(status, StatusCode::NOT_FOUND);
    let r = only(&sink);
    assert_eq!(r.operation, "asset.delete");
    assert_eq!(r.request.path, "/v1/files/abc");
    assert_eq!(r.resources[0].id.as_deref(), Some("abc"));
    assert_eq!(r.outcome, Outcome::Failure);
}

#[tokio::test]
async fn actor_from_a_header_and_a_refused_call_is_a_failure() {
    let sink = MemorySink::new();
    let (status, headers, _) = send(
        app(&sink, Arc::default()),
        Request::patch("/v1/files/locked/details")
            .header("X-User-Id", "u_9")
            .header("Content-Type", "application/json")
            .body(Body::from(r#"{"name":"x.png"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let r = only(&sink);
    let actor = r.actor.unwrap();
    assert_eq!(
        (actor.id.as_deref().unwrap(), actor.source.as_str()),
        ("u_9", "header.X-User-Id")
    );
    assert_eq!(r.response.status, Some(403));
    assert_eq!(r.outcome, Outcome::Failure);
    // No X-Request-Id was sent: one was generated, echoed, and recorded.
    let echoed = headers["x-request-id"].to_str().unwrap();
    assert_eq!(r.request.id, echoed);
    assert_eq!(uuid::Uuid::parse_str(echoed).unwrap().get_version_num(), 7);
}

#[tokio::test]
async fn verified_claims_from_an_auth_layer_are_read_instead_of_the_token() {
    let sink = MemorySink::new();
    let app = app(&sink, Arc::default())
        .layer(axum::Extension(VerifiedClaims(json!({"sub": "u_checked"}))));
    send(
        app,
        Request::delete("/v1/files/abc")
            .header(
                "authorization",
                format!("Bearer {}", jwt(json!({"sub": "u_forged"}))),
            )
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let actor = only(&sink).actor.unwrap();
    assert_eq!(
        (actor.id.as_deref().unwrap(), actor.source.as_str()),
        ("u_checked", "jwt/sub")
    );
}

#[tokio::test]
async fn the_handler_sees_the_request_id_as_an_extension_and_a_header() {
    let sink = MemorySink::new();
    let (_, headers, body) = send(
        app(&sink, Arc::default()),
        Request::delete("/v1/files/abc")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let r = only(&sink);
    assert_eq!(
        body,
        r.request.id.as_bytes(),
        "the handler read the RequestId extension"
    );
    assert_eq!(headers["x-request-id"].to_str().unwrap(), r.request.id);
    assert_eq!(r.resources[0].id.as_deref(), Some("abc"));
}

#[tokio::test]
async fn resources_from_the_response_and_arrays_in_the_body() {
    let sink = MemorySink::new();
    send(
        app(&sink, Arc::default()),
        Request::post("/v1/files")
            .body(Body::from("12345"))
            .unwrap(),
    )
    .await;
    let r = only(&sink);
    assert_eq!(r.resources[0].id.as_deref(), Some("new-1"));
    assert_eq!(r.details["size"], 5);

    send(
        app(&sink, Arc::default()),
        Request::post("/v1/files/addTags")
            .body(Body::from(r#"{"fileIds":["a","b"],"tags":["forest"]}"#))
            .unwrap(),
    )
    .await;
    let r = only(&sink);
    assert_eq!(r.response.status, Some(204));
    let ids: Vec<_> = r.resources.iter().map(|x| x.id.clone().unwrap()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(r.details["tags"], json!(["forest"]));
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn compressed_bodies_are_read_as_the_json_they_carry() {
    use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
    let sink = MemorySink::new();
    let compressed = gzip(br#"{"fileId":"gz-1","size":7}"#);
    let answer = compressed.clone();
    let app = Router::new()
        .route(
            "/v1/files",
            post(move || async move {
                let headers = [
                    (CONTENT_ENCODING, "gzip"),
                    (CONTENT_TYPE, "application/json"),
                ];
                (headers, answer)
            }),
        )
        .route(
            "/v1/files/addTags",
            post(|_: Bytes| async { StatusCode::NO_CONTENT }),
        )
        .layer(AuditLayer::new(rules(), sink.clone()));

    let (_, headers, body) = send(
        app.clone(),
        Request::post("/v1/files").body(Body::empty()).unwrap(),
    )
    .await;
    // The client gets the bytes the handler sent, still compressed.
    assert_eq!(headers[CONTENT_ENCODING], "gzip");
    assert_eq!(body, compressed);
    let r = only(&sink);
    assert_eq!(r.resources[0].id.as_deref(), Some("gz-1"));
    assert_eq!(r.details["size"], 7);

    send(
        app,
        Request::post("/v1/files/addTags")
            .header(CONTENT_ENCODING, "gzip")
            .body(Body::from(gzip(br#"{"fileIds":["a","b"],"tags":["t"]}"#)))
            .unwrap(),
    )
    .await;
    let r = only(&sink);
    let ids: Vec<_> = r.resources.iter().map(|x| x.id.clone().unwrap()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(r.details["tags"], json!(["t"]));
}

/// A real hyper server over TCP for `app`; returns its address.
async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Sends `request` over a new connection and reads the answer until the server closes it.
async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn complete_answers_without_a_final_poll_are_successes() {
    use axum::http::header::CONTENT_LENGTH;
    let sink = MemorySink::new();
    let rules = RuleSet::from_yaml(
        "rules.yaml",
        "version: 1\nservice: s\nrules:\n  \
         - { operation: file.peek, method: HEAD, path: \"/v1/files/{id}\" }\n  \
         - { operation: file.export, method: POST, path: /v1/export }\n  \
         - { operation: file.touch, method: POST, path: /v1/touch }\n",
    )
    .unwrap();
    let app = Router::new()
        .route("/v1/files/{id}", axum::routing::get(|| async { "a file" }))
        .route(
            "/v1/export",
            // A stream whose length is announced: hyper stops reading it at that length.
            post(|| async {
                let chunks = futures_util::stream::iter(
                    ["one,", "two"].map(|c| Ok::<_, Infallible>(Bytes::from(c))),
                );
                ([(CONTENT_LENGTH, "7")], Body::from_stream(chunks))
            }),
        )
        .route(
            "/v1/touch",
            post(|| async { (StatusCode::NOT_MODIFIED, "ignored") }),
        )
        .layer(AuditLayer::new(rules, sink.clone()));
    let addr = serve(app).await;

    let head = exchange(
        addr,
        "HEAD /v1/files/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let export = exchange(
        addr,
        "POST /v1/export HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(export.ends_with("\r\n\r\none,two"), "{export}");
    let touch = exchange(
        addr,
        "POST /v1/touch HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(touch.starts_with("HTTP/1.1 304"), "{touch}");

    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < 3 && tokio::time::Instant::now() < deadline {
        got.extend(sink.take());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcomes: Vec<(&str, Outcome, Option<u16>)> = got
        .iter()
        .map(|r| (r.operation.as_str(), r.outcome, r.response.status))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("file.peek", Outcome::Success, Some(200)),
            ("file.export", Outcome::Success, Some(200)),
            ("file.touch", Outcome::Success, Some(304)),
        ]
    );
}

#[tokio::test]
async fn unmatched_calls_pass_through_without_a_record() {
    let sink = MemorySink::new();
    let (status, headers, body) = send(
        app(&sink, Arc::default()),
        Request::get("/v1/files/abc").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "a file");
    assert!(!headers.contains_key("x-request-id"));
    assert!(sink.records().is_empty());
}

#[tokio::test]
async fn closed_rules_answer_503_without_calling_the_handler_when_the_sink_refuses() {
    let sink = MemorySink::new();
    let calls = Arc::new(AtomicUsize::new(0));
    sink.set_accepting(false);
    let (status, headers, body) = send(
        app(&sink, calls.clone()),
        Request::put("/api/repos/acme/site/secrets/TOKEN")
            .header("X-Request-Id", "req-503")
            .body(Body::from(r#"{"value":"hunter2"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the handler was not called"
    );
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-request-id"], "req-503");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "audit_unavailable");
    assert_eq!(body["request_id"], "req-503");

    // Open rules keep serving while the sink refuses; the loss is counted by the sink.
    let (status, _, _) = send(
        app(&sink, calls.clone()),
        Request::delete("/v1/files/abc")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sink.dropped(), 1);

    sink.set_accepting(true);
    let (status, _, _) = send(
        app(&sink, calls.clone()),
        Request::put("/api/repos/acme/site/secrets/TOKEN")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A closed call's received record first (made durable before the handler ran), then its
    // complete record under the same id.
    let records = sink.take();
    assert_eq!(records.len(), 2, "{records:#?}");
    let (received, complete) = (&records[0], &records[1]);
    assert_eq!(received.stage, Some(auditgate_rules::Stage::Received));
    assert_eq!(received.outcome, Outcome::Unknown);
    assert_eq!(received.response.status, None);
    assert_eq!(complete.stage, None);
    assert_eq!(complete.outcome, Outcome::Success);
    assert_eq!(complete.id, received.id, "one record to the store");
    assert_eq!(complete.operation, "secret.update");
}

/// A closed call whose received record is not durable within `closed_timeout` is refused with
/// 503, and the handler never runs: a sink that never answers stands for a stalled Redis.
#[tokio::test]
async fn a_closed_call_not_durable_in_time_is_refused_before_the_handler() {
    #[derive(Clone)]
    struct Stalled(MemorySink);
    impl auditgate_queue::RecordSink for Stalled {
        fn enqueue(
            &self,
            r: AuditRecord,
        ) -> Result<auditgate_queue::Accepted, auditgate_queue::Dropped> {
            self.0.enqueue(r)
        }
        fn can_accept(&self) -> bool {
            true
        }
        fn enqueue_durable(&self, _: auditgate_rules::RecordRef<'_>) -> auditgate_queue::Durable {
            // Never resolves while the sender lives.
            let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
            std::mem::forget(tx);
            auditgate_queue::Durable::from_channel(rx)
        }
    }
    let sink = MemorySink::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/api/repos/{*rest}",
            put(move || {
                c.fetch_add(1, Ordering::SeqCst);
                async { "stored" }
            }),
        )
        .layer(
            AuditLayer::new(rules(), Stalled(sink.clone()))
                .closed_timeout(Duration::from_millis(200)),
        );
    let started = std::time::Instant::now();
    let (status, _, _) = send(
        app,
        Request::put("/api/repos/acme/site/secrets/TOKEN")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler never ran");
    let r = only(&sink);
    assert_eq!((r.outcome, r.response.status), (Outcome::Error, Some(503)));
}

/// A body that arrives in `chunks` pieces of `size` bytes each.
fn streaming_body(chunks: usize, size: usize) -> Body {
    Body::from_stream(futures_util::stream::iter((0..chunks).map(move |i| {
        Ok::<_, Infallible>(Bytes::from(vec![(i % 251) as u8; size]))
    })))
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(b as u64))
}

#[tokio::test]
async fn bodies_larger_than_the_capture_limit_pass_intact_both_ways() {
    let sink = MemorySink::new();
    // 1 MiB up, echoed back down; the capture limit is 64 KiB.
    let app = Router::new()
        .route("/v1/files", post(|body: Bytes| async move { body }))
        .layer(AuditLayer::new(rules(), sink.clone()));
    let expected: Vec<u8> = (0..16)
        .flat_map(|i| vec![(i % 251) as u8; 64 * 1024])
        .collect();
    let (status, _, body) = send(
        app,
        Request::post("/v1/files")
            .body(streaming_body(16, 64 * 1024))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), expected.len());
    assert_eq!(checksum(&body), checksum(&expected));
    // The response was too large to read `response/fileId` from: the resource has no id,
    // and the record is still there.
    let r = only(&sink);
    assert_eq!(r.operation, "asset.upload");
    assert!(r.resources.is_empty(), "{:?}", r.resources);
    assert!(!r.details.contains_key("size"));
}

#[tokio::test]
async fn a_body_dropped_early_gives_exactly_one_aborted_record() {
    let sink = MemorySink::new();
    let app = Router::new()
        .route(
            "/v1/files",
            post(|| async { Body::from_stream(slow_stream()) }),
        )
        .layer(AuditLayer::new(rules(), sink.clone()));
    let response = app
        .oneshot(Request::post("/v1/files").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "chunk 0");
    assert!(sink.records().is_empty(), "not before the body ends");
    drop(body); // the client went away
    let r = only(&sink);
    assert_eq!(r.outcome, Outcome::Aborted);
    assert_eq!(r.response.status, Some(200));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(sink.records().is_empty(), "exactly once");
}

#[tokio::test]
async fn a_call_dropped_before_its_response_is_aborted_without_a_status() {
    let sink = MemorySink::new();
    let app = Router::new()
        .route(
            "/v1/files/{id}",
            delete(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "never"
            }),
        )
        .layer(AuditLayer::new(rules(), sink.clone()));
    let call = app.oneshot(Request::delete("/v1/files/x").body(Body::empty()).unwrap());
    assert!(
        tokio::time::timeout(Duration::from_millis(50), call)
            .await
            .is_err()
    );
    let r = only(&sink);
    assert_eq!(r.outcome, Outcome::Aborted);
    assert_eq!(r.response.status, None);
}

fn slow_stream() -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold(0u32, |n| async move {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (n < 100).then(|| (Ok(Bytes::from(format!("chunk {n}"))), n + 1))
    })
}

#[tokio::test]
async fn an_inner_service_error_passes_through_unchanged_and_is_recorded_as_error() {
    #[derive(Debug, PartialEq)]
    struct Broken;
    let sink = MemorySink::new();
    let service = ServiceBuilder::new()
        .layer(AuditLayer::new(rules(), sink.clone()))
        .service_fn(|_req: Request<_>| async { Err::<http::Response<Body>, _>(Broken) });
    let result = service
        .oneshot(
            Request::delete("/v1/files/abc")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(result.err(), Some(Broken));
    let r = only(&sink);
    assert_eq!(r.outcome, Outcome::Error);
    assert_eq!(r.response.status, None);
}

/// A bare hyper 1 server over TCP, with the client's address from a `SocketAddr` extension
/// and a client that hangs up in the middle of a streamed response.
#[tokio::test]
async fn a_bare_hyper_server_records_the_client_address_and_a_hang_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let sink = MemorySink::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = AuditLayer::new(rules(), sink.clone()).client_ip(ClientIpMode::Full);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let service = ServiceBuilder::new()
                .map_request(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer);
                    req
                })
                .layer(layer.clone())
                .service_fn(|req: Request<_>| async move {
                    let body = if req.uri().path() == "/v1/files" {
                        Body::from_stream(slow_stream())
                    } else {
                        Body::from("gone")
                    };
                    Ok::<_, Infallible>(http::Response::new(body))
                });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let service = hyper_util::service::TowerToHyperService::new(service);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });

    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"DELETE /v1/files/abc HTTP/1.1\r\nHost: x\r\nX-User-Id: u_1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("x-request-id: "),
        "{answer}"
    );
    let r = only(&sink);
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.request.client_ip.as_deref(), Some("127.0.0.1"));

    // Hang up after the first chunk of a slow response.
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    drop(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sink.records().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = only(&sink);
    assert_eq!(r.operation, "asset.upload");
    assert_eq!(r.outcome, Outcome::Aborted);
    assert_eq!(r.response.status, Some(200));
}

/// Handlers that never read the body, and one that refuses before reading it: the layer reads
/// the body's start itself when a rule reads `body/`, over a real connection, so the record
/// still names the files (and a PATCH whose `when: { body }` the handler never looks at is
/// still recorded); a handler that does read the body gets all of it, unchanged.
#[tokio::test]
async fn the_layer_reads_the_body_its_rule_needs_before_the_handler_answers() {
    let sink = MemorySink::new();
    let app = Router::new()
        .route(
            "/v1/files/addTags",
            // An authorisation check that answers before the body is read.
            post(|| async { (StatusCode::FORBIDDEN, "not yours") }),
        )
        .route(
            "/v1/files/{file_id}/details",
            // Accepts the rename without reading it (a queue takes it, say).
            patch(|| async { StatusCode::ACCEPTED }),
        )
        .route(
            "/v1/files",
            post(|body: Bytes| async move { format!("{}", body.len()) }),
        )
        .layer(AuditLayer::new(rules(), sink.clone()).capture_limit(64));
    let addr = serve(app).await;

    let tags = r#"{"fileIds":["f1","f2"],"tags":["red"]}"#;
    let answer = exchange(
        addr,
        &format!(
            "POST /v1/files/addTags HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nX-User-Id: u_1\r\nConnection: close\r\n\r\n{tags}",
            tags.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let r = only(&sink);
    assert_eq!(r.operation, "tag.add");
    assert_eq!(r.outcome, Outcome::Failure);
    let ids: Vec<_> = r.resources.iter().map(|x| x.id.clone().unwrap()).collect();
    assert_eq!(ids, ["f1", "f2"], "the files of a refused call are named");

    let rename = r#"{"name":"oak.png","filePath":"/forest/oak.png"}"#;
    let answer = exchange(
        addr,
        &format!(
            "PATCH /v1/files/abc/details HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{rename}",
            rename.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let r = only(&sink);
    assert_eq!(
        r.operation, "asset.rename",
        "`when: {{ body }}` is read by the layer"
    );
    assert_eq!(r.details["new_name"], "oak.png");

    // Longer than the capture limit, in several chunks: the handler gets every byte, the
    // record what was complete within the limit.
    let big = format!(r#"{{"fileIds":["g1"],"tags":["{}"]}}"#, "x".repeat(10_000));
    let answer = exchange(
        addr,
        &format!(
            "POST /v1/files/addTags HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            20,
            &big[..20],
            big.len() - 20,
            &big[20..]
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let r = only(&sink);
    let ids: Vec<_> = r.resources.iter().map(|x| x.id.clone().unwrap()).collect();
    assert_eq!(ids, ["g1"]);
    assert_eq!(
        r.capture.and_then(|c| c.request_body),
        Some(auditgate_rules::BodyNote::Truncated)
    );
}

/// A handler that reads the body after the layer read its start gets the body whole.
#[tokio::test]
async fn a_body_read_ahead_reaches_the_handler_whole() {
    let sink = MemorySink::new();
    let app = Router::new()
        .route(
            "/v1/files/addTags",
            post(
                |body: Bytes| async move { (StatusCode::OK, format!("{:016x}", checksum(&body))) },
            ),
        )
        .layer(AuditLayer::new(rules(), sink.clone()).capture_limit(1024));
    let body = format!(r#"{{"fileIds":["h1"],"tags":["{}"]}}"#, "y".repeat(100_000));
    let (status, _, answer) = send(
        app,
        Request::post("/v1/files/addTags")
            .header("content-type", "application/json")
            .body(Body::from_stream(futures_util::stream::iter(
                body.as_bytes()
                    .chunks(700)
                    .map(|c| Ok::<_, Infallible>(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        String::from_utf8_lossy(&answer),
        format!("{:016x}", checksum(body.as_bytes()))
    );
    let r = only(&sink);
    let ids: Vec<_> = r.resources.iter().map(|x| x.id.clone().unwrap()).collect();
    assert_eq!(ids, ["h1"]);
}

/// A method-override header makes the call match as the method the handler applies.
#[tokio::test]
async fn a_method_override_matches_as_the_overriding_method() {
    let sink = MemorySink::new();
    let app = Router::new()
        .route("/v1/files/{file_id}", post(|| async { "deleted" }))
        .layer(AuditLayer::new(rules(), sink.clone()));
    let (status, _, _) = send(
        app,
        Request::post("/v1/files/f9")
            .header("x-http-method-override", "DELETE")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let r = only(&sink);
    assert_eq!(r.operation, "asset.delete");
    assert_eq!(r.request.method, "DELETE");
    assert_eq!(r.request.method_override.unwrap().sent, "POST");
}

/// An override naming a method no rule audits does not carry the call past the audit: a
/// handler that ignores the header applies the request line's method, which is recorded.
#[tokio::test]
async fn an_override_to_an_unaudited_method_is_recorded_as_sent() {
    let sink = MemorySink::new();
    let app = Router::new()
        .route(
            "/v1/files/addTags",
            post(|| async { StatusCode::NO_CONTENT }),
        )
        .layer(AuditLayer::new(rules(), sink.clone()));
    let (status, _, _) = send(
        app,
        Request::post("/v1/files/addTags")
            .header("x-http-method-override", "GET")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"fileIds":["k1"],"tags":["x"]}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let r = only(&sink);
    assert_eq!(r.operation, "tag.add");
    assert_eq!(r.request.method, "POST");
    assert!(r.request.method_override.is_none());
}

const BEFORE_RULES: &str = r#"
version: 1
service: media-library
rules:
  - operation: asset.rename
    method: PATCH
    path: /v1/files/{fileId}/details
    before: "/v1/files/{path.fileId}/details"
    changes: { name: { from: "{before/name}", to: "{body/name}" } }
    resources:
      - { type: file, id: "{path.fileId}", path: "{response/filePath}", previous_path: "{before/filePath}" }
"#;

/// The layer makes a rule's `before:` GET through the inner service, with the caller's
/// credentials, before the handler changes anything: the record has the old value beside the
/// new. A handler that does not answer the GET (404, or too slowly) leaves `from` out and
/// says so; the call is served all the same.
#[tokio::test]
async fn before_reads_the_resource_through_the_inner_service_first() {
    use axum::routing::get;
    let name = Arc::new(std::sync::Mutex::new("tree.png".to_owned()));
    let seen_auth = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = MemorySink::new();
    let (read, write, auth) = (name.clone(), name.clone(), seen_auth.clone());
    let app = Router::new().route(
        "/v1/files/{id}/details",
        get(move |Path(id): Path<String>, headers: http::HeaderMap| {
            let (read, auth) = (read.clone(), auth.clone());
            async move {
                let header = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                auth.lock().unwrap().extend(header);
                if id == "slow" {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                if id != "f1" && id != "slow" {
                    return Err(StatusCode::NOT_FOUND);
                }
                let name = read.lock().unwrap().clone();
                Ok(Json(
                    json!({"name": name, "filePath": format!("/forest/{name}")}),
                ))
            }
        })
        .patch(move |Json(body): Json<Value>| {
            let write = write.clone();
            async move {
                let new = body["name"].as_str().unwrap().to_owned();
                *write.lock().unwrap() = new.clone();
                Json(json!({"filePath": format!("/forest/{new}")}))
            }
        }),
    );
    // Around the whole router, not `Router::layer` (which wraps each route on its own): the
    // GET must be routed like any request.
    let layer = AuditLayer::new(
        RuleSet::from_yaml("rules.yaml", BEFORE_RULES).unwrap(),
        sink.clone(),
    )
    .before_timeout(Duration::from_millis(300));
    let app = tower::Layer::layer(&layer, app);
    let send = |app: auditgate_middleware::Audit<Router, MemorySink>, request: Request<Body>| async move {
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let _ = response.into_body().collect().await.unwrap();
        (status, (), ())
    };
    let patch = |id: &str, name: &str| {
        Request::patch(format!("/v1/files/{id}/details"))
            .header("content-type", "application/json")
            .header("authorization", "Bearer caller")
            .body(Body::from(format!(r#"{{"name": "{name}"}}"#)))
            .unwrap()
    };
    let (status, _, _) = send(app.clone(), patch("f1", "oak.png")).await;
    assert_eq!(status, StatusCode::OK);
    let record = only(&sink);
    assert_eq!(
        Value::Object(record.changes.clone()),
        json!({"name": {"from": "tree.png", "to": "oak.png"}})
    );
    assert_eq!(
        record.resources[0].previous_path.as_deref(),
        Some("/forest/tree.png")
    );
    assert_eq!(record.resources[0].path.as_deref(), Some("/forest/oak.png"));
    assert_eq!(record.capture, None);
    assert_eq!(
        *seen_auth.lock().unwrap(),
        ["Bearer caller"],
        "the caller's credentials"
    );

    // Not there: 404 to the GET; the PATCH is still served.
    let (status, _, _) = send(app.clone(), patch("nope", "x.png")).await;
    assert_eq!(status, StatusCode::OK);
    let record = only(&sink);
    assert_eq!(
        Value::Object(record.changes.clone()),
        json!({"name": {"to": "x.png"}})
    );
    assert_eq!(
        record.capture.unwrap().before,
        Some(auditgate_rules::BodyNote::Failed)
    );
    // Too slow: the call goes on after the timeout.
    let started = std::time::Instant::now();
    let (status, _, _) = send(app, patch("slow", "y.png")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(3));
    let record = only(&sink);
    assert_eq!(
        record.capture.unwrap().before,
        Some(auditgate_rules::BodyNote::Failed)
    );
}
