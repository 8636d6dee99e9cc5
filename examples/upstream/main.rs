//! An example upstream API for auditgate's demo, tests and benchmarks: the ImageKit and
//! Hugging Face endpoints of `examples/rules/`, the generic media-library endpoints the tests
//! use, plus a few endpoints that misbehave on purpose.
//!
//! ```sh
//! cargo run -p auditgate-tests --bin upstream -- --listen 127.0.0.1:3000
//! curl -s -X POST localhost:3000/v1/files -H 'Content-Type: application/json' \
//!      -d '{"fileName": "tree.png", "folder": "/forest"}'
//! ```
//!
//! Behaviour, for any method and path:
//! - ImageKit's Media and upload API (`imagekit.rs`) and the Hugging Face Hub's API (`hub.rs`),
//!   the routes of `examples/rules/`, answered as their SDKs parse them; files, custom metadata
//!   fields, public links, repos, Space runtimes and variables, and collections are remembered
//!   and listed.
//! - `POST /v1/files` creates a file: `{"fileId", "filePath", "name", "size"}` (201), and the
//!   upstream remembers it: `GET /v1/files/{id}/details` answers it, `PATCH /v1/files/{id}/details` with `{"name"}` renames it (its `filePath` follows),
//!   `POST /v1/files/move` with `{"sourceFilePath", "destinationPath"}` moves it, and
//!   `DELETE /v1/files/{id}` forgets it; each answers the file as it is then. Calls on files
//!   it does not have get the answers below.
//! - Other `POST`s create something: `{"id": "..."}` (201); `PUT`/`PATCH`/`DELETE` answer
//!   `{"ok": true, ...}` (200); `GET` answers `{"path": ...}`.
//! - A caller whose `X-User-Id` starts with `guest` is refused every change (403), and a
//!   `DELETE` of `.../members/owner` is refused to everyone (403): failures for the audit log.
//! - `X-Upstream-Status: N` makes any call answer N.
//! - `/slow?ms=N` answers after N ms; `/stream?chunks=N&size=S&delay_ms=D` streams N chunks;
//!   `/upload` reads the whole body as it streams and answers its length and checksum;
//!   `/echo` answers the request's method, path and headers as JSON; `/redirect?to=PATH`
//!   answers 302 with an absolute `Location` built from the `Host` it was sent.
//! - `/upgrade` with a WebSocket handshake (`Connection: Upgrade`, `Upgrade: websocket`,
//!   `Sec-WebSocket-Key`) switches protocols (101) and then echoes every byte it reads: the
//!   connection stays open both ways, as a WebSocket's does.
//! - A JSON answer is compressed when the request's `Accept-Encoding` allows it, as many APIs
//!   do: `zstd` first (as Caddy's `encode zstd gzip` prefers it), else `gzip`. `response/`
//!   templates must read through it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{Value, json};

mod hub;
mod imagekit;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A number no other answer has used: the ids this upstream makes.
fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The files `POST /v1/files` made, by id: what `before:` GETs read.
static FILES: std::sync::Mutex<Option<HashMap<String, Value>>> = std::sync::Mutex::new(None);

/// Runs `f` on the file store.
fn files<R>(f: impl FnOnce(&mut HashMap<String, Value>) -> R) -> R {
    let mut files = FILES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(files.get_or_insert_with(HashMap::new))
}

/// A stored file's answer to a call on it; `None` for calls on files the store does not have
/// (they get the stateless answers below, as before the store existed).
fn file_call(method: &Method, path: &str, body: &Value) -> Option<Response> {
    let ok = |file: &Value| json_response(StatusCode::OK, file.clone());
    if let Some(id) = path
        .strip_prefix("/v1/files/")
        .and_then(|rest| rest.strip_suffix("/details"))
    {
        return files(|files| {
            let file = files.get_mut(id)?;
            match *method {
                Method::GET => Some(ok(file)),
                Method::PATCH => {
                    if let Some(name) = body["name"].as_str() {
                        let folder = file["filePath"]
                            .as_str()
                            .and_then(|p| p.rsplit_once('/'))
                            .map_or("", |(folder, _)| folder)
                            .to_owned();
                        file["name"] = json!(name);
                        file["filePath"] = json!(format!("{folder}/{name}"));
                    }
                    Some(ok(file))
                }
                _ => None,
            }
        });
    }
    if *method == Method::POST && path == "/v1/files/move" {
        let source = body["sourceFilePath"].as_str()?;
        let destination = body["destinationPath"].as_str()?.trim_end_matches('/');
        return files(|files| {
            let file = files.values_mut().find(|f| f["filePath"] == source)?;
            let name = file["name"].as_str().unwrap_or_default().to_owned();
            file["filePath"] = json!(format!("{destination}/{name}"));
            Some(ok(file))
        });
    }
    if *method == Method::DELETE
        && let Some(id) = path
            .strip_prefix("/v1/files/")
            .filter(|id| !id.contains('/'))
    {
        return files(|files| files.remove(id)).map(|file| ok(&file));
    }
    None
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = "127.0.0.1:3000".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            other => return Err(format!("unknown option {other}; use --listen ADDR").into()),
        }
    }
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let app = Router::new().fallback(any);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            tokio::signal::ctrl_c().await.ok();
        })
        .await?;
    Ok(())
}

async fn any(query: Query<HashMap<String, String>>, request: Request) -> Response {
    // Chosen in a block of its own: the closure borrows the request, whose body is not
    // `Sync`, and must be gone before the await below for the future to be `Send`.
    let coding = {
        let accepts = |name: &str| {
            request
                .headers()
                .get_all("accept-encoding")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|coding| {
                    let mut parts = coding.split(';').map(str::trim);
                    // `gzip;q=0` refuses gzip.
                    parts.next() == Some(name) && !parts.any(|p| p.replace(' ', "") == "q=0")
                })
        };
        if accepts("zstd") {
            Some("zstd")
        } else if accepts("gzip") {
            Some("gzip")
        } else {
            None
        }
    };
    let response = answer(query, request).await;
    let json = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/json");
    let Some(coding) = coding.filter(|_| json) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let compressed = if coding == "zstd" {
        use ruzstd::encoding::{CompressionLevel, compress_to_vec};
        compress_to_vec(&body[..], CompressionLevel::Fastest)
    } else {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let written =
            std::io::Write::write_all(&mut encoder, &body).and_then(|()| encoder.finish());
        let Ok(compressed) = written else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        compressed
    };
    let headers = &mut parts.headers;
    headers.remove("content-length");
    headers.insert(
        "content-encoding",
        axum::http::HeaderValue::from_static(coding),
    );
    headers.insert(
        "vary",
        axum::http::HeaderValue::from_static("accept-encoding"),
    );
    Response::from_parts(parts, Body::from(compressed))
}

async fn answer(Query(query): Query<HashMap<String, String>>, mut request: Request) -> Response {
    if request.uri().path() == "/upgrade" {
        return upgrade(&mut request);
    }
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let number = |name: &str, default: u64| {
        query
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(number("ms", 1000))).await;
            return json_response(StatusCode::OK, json!({"slept_ms": number("ms", 1000)}));
        }
        "/stream" => {
            return stream(
                number("chunks", 10),
                number("size", 1024),
                number("delay_ms", 0),
            );
        }
        "/upload" => return upload(body).await,
        "/redirect" => {
            let host = parts
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let to = query.get("to").map_or("/", String::as_str);
            let location = format!("http://{host}{to}");
            return (StatusCode::FOUND, [("location", location)]).into_response();
        }
        "/echo" => {
            let headers: serde_json::Map<String, Value> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
                .collect();
            return json_response(
                StatusCode::OK,
                json!({"method": parts.method.as_str(), "path": path, "headers": headers}),
            );
        }
        _ => {}
    }

    let raw = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    if let Some(status) = parts
        .headers
        .get("x-upstream-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
    {
        return json_response(status, json!({"status": status.as_u16()}));
    }
    let user = parts
        .headers
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let method = parts.method;
    if method != Method::GET
        && (user.starts_with("guest")
            || (method == Method::DELETE && path.ends_with("/members/owner")))
    {
        return json_response(StatusCode::FORBIDDEN, json!({"error": "forbidden"}));
    }
    // Credentials this API does not know: `Bearer invalid`, or HTTP Basic with the user (an
    // ImageKit private key) `invalid`.
    if parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(refused_credentials)
    {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Your account cannot be authenticated.", "error": "Invalid credentials"}),
        );
    }
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(answer) = imagekit::answer(&method, &path, content_type, &raw, &body) {
        return answer;
    }
    if let Some(answer) = hub::answer(&method, &path, &query, &body) {
        return answer;
    }
    if let Some(answer) = file_call(&method, &path, &body) {
        return answer;
    }
    let id = next_id();
    match method {
        Method::POST if path == "/v1/files" => {
            let name = body["fileName"].as_str().unwrap_or("untitled");
            let folder = body["folder"].as_str().unwrap_or("").trim_end_matches('/');
            let file = json!({"fileId": format!("f{id}"), "name": name, "filePath": format!("{folder}/{name}"), "size": body["size"].as_u64().unwrap_or(1024)});
            files(|files| files.insert(format!("f{id}"), file.clone()));
            json_response(StatusCode::CREATED, file)
        }
        Method::POST => json_response(StatusCode::CREATED, json!({"id": format!("id{id}")})),
        Method::GET => json_response(StatusCode::OK, json!({"path": path})),
        _ => json_response(StatusCode::OK, json!({"ok": true, "path": path})),
    }
}

/// Whether an `Authorization` value names the credentials this upstream refuses.
fn refused_credentials(value: &str) -> bool {
    let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials.trim())
            .unwrap_or_default();
        decoded.starts_with(b"invalid")
    } else {
        credentials.trim() == "invalid"
    }
}

/// `101 Switching Protocols` for a WebSocket handshake, then every byte read is written back
/// (raw bytes, not WebSocket frames: a proxy passes either unchanged).
fn upgrade(request: &mut Request) -> Response {
    let headers = request.headers();
    let websocket = headers
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = headers.get("sec-websocket-key").filter(|_| websocket) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "send a WebSocket handshake: Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Key"}),
        );
    };
    // RFC 6455 §4.2.2: base64(SHA-1(key + the protocol's GUID)).
    let mut accept = key.as_bytes().to_vec();
    accept.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &accept);
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let (mut reader, mut writer) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(Body::empty())
        .unwrap_or_default()
}

fn stream(chunks: u64, size: u64, delay_ms: u64) -> Response {
    let body = futures_util::stream::unfold(0u64, move |n| async move {
        if n >= chunks {
            return None;
        }
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        let chunk = Bytes::from(vec![b'a' + (n % 26) as u8; size as usize]);
        Some((Ok::<_, Infallible>(chunk), n + 1))
    });
    Body::from_stream(body).into_response()
}

async fn upload(body: Body) -> Response {
    let mut stream = body.into_data_stream();
    let (mut length, mut checksum) = (0u64, 0u64);
    while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
        length += chunk.len() as u64;
        checksum = chunk
            .iter()
            .fold(checksum, |h, &b| h.wrapping_mul(31).wrapping_add(b as u64));
    }
    json_response(
        StatusCode::OK,
        json!({"length": length, "checksum": checksum}),
    )
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}
