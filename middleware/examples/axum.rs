//! A small media-library API with auditing: one `.layer(AuditLayer::new(rules, queue))`.
//!
//! Every rename, move, delete and tag change becomes an audit record in the Redis stream
//! `auditgate:records`, as `examples/generic-rules/media-library.yaml` describes.
//!
//! ```sh
//! redis-server --port 6379 &
//! cargo run -p auditgate-middleware --example axum -- --listen 127.0.0.1:3000
//!
//! curl -s -X POST localhost:3000/v1/files -H 'X-User-Id: u_alice' \
//!      -H 'Content-Type: application/json' -d '{"fileName": "tree.png", "folder": "/forest"}'
//! curl -si -X PATCH localhost:3000/v1/files/f1/details -H 'X-User-Id: u_alice' \
//!      -H 'Content-Type: application/json' -d '{"name": "oak.png", "filePath": "/forest/tree.png"}'
//! curl -s -X POST localhost:3000/v1/files/addTags -H 'X-User-Id: u_bob' \
//!      -H 'Content-Type: application/json' -d '{"fileIds": ["f1"], "tags": ["trees"]}'
//! curl -s -X DELETE localhost:3000/v1/files/f1 -H 'X-User-Id: u_bob'
//! redis-cli XRANGE auditgate:records - +
//! ```
//!
//! Options: `--listen ADDR` (default 127.0.0.1:3000), `--redis URL` (default
//! redis://127.0.0.1:6379), `--rules PATH`, `--spool DIR` (default ./spool),
//! `--closed-timeout-ms N` (default 2000: how long a `closed` rule's call waits for its
//! received record to be durable before it is refused), and, for
//! comparing throughput (`scripts/bench middleware`): `--no-audit` to serve the same API
//! without the layer, `--discard` to serialise each record as the Redis queue does and then
//! drop it, which tells the layer's own cost from the cost of delivering to Redis.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use auditgate_middleware::AuditLayer;
use auditgate_queue::{Accepted, Dropped, QueueConfig, RecordSink, RedisQueue};
use auditgate_rules::{AuditRecord, RecordRef, RuleSet};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Default)]
struct Library {
    next_id: u64,
    files: HashMap<String, Value>,
}

type Shared = Arc<Mutex<Library>>;

fn api() -> Router {
    Router::new()
        .route("/v1/files", post(upload).get(list))
        .route("/v1/files/{file_id}", get(show).delete(remove))
        .route("/v1/files/{file_id}/details", get(show).patch(rename))
        .route("/v1/files/move", post(move_file))
        .route("/v1/files/addTags", post(add_tags))
        .route("/v1/files/removeTags", post(remove_tags))
        .with_state(Shared::default())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = "127.0.0.1:3000".to_owned();
    let mut redis = "redis://127.0.0.1:6379".to_owned();
    let mut rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/generic-rules/media-library.yaml"
    )
    .to_owned();
    let mut spool = "./spool".to_owned();
    let mut audit = true;
    let mut discard = false;
    let mut closed_timeout_ms: u64 = 2_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?,
            "--redis" => redis = value()?,
            "--rules" => rules = value()?,
            "--spool" => spool = value()?,
            "--no-audit" => audit = false,
            "--discard" => discard = true,
            "--closed-timeout-ms" => closed_timeout_ms = value()?.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let app = api();
    if !audit || discard {
        let app = if audit {
            audited(app, AuditLayer::new(RuleSet::load(&rules)?, Discard))
        } else {
            app
        };
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await?;
        return Ok(());
    }

    let rules = RuleSet::load(&rules)?;
    let closed_timeout = std::time::Duration::from_millis(closed_timeout_ms);
    let mut config = QueueConfig::new(redis).spool(spool, 1 << 30);
    // A closed call's received record waits for Redis half its time, then for the spool.
    config.durable_redis_wait = closed_timeout / 2;
    let queue = RedisQueue::start(config)?;
    let app = audited(
        app,
        AuditLayer::new(rules, queue.clone()).closed_timeout(closed_timeout),
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        tokio::signal::ctrl_c().await.ok();
    })
    .await?;
    queue.shutdown().await; // sends what is still buffered
    Ok(())
}

/// The API with the layer around the whole router (not `Router::layer`, which wraps each route
/// on its own): a rule's `before:` GET is then routed like any request.
fn audited<K: RecordSink + Clone>(api: Router, layer: AuditLayer<K>) -> Router {
    Router::new().fallback_service(tower::Layer::layer(&layer, api))
}

/// `--discard`: a sink that serialises each record, as `RedisQueue` does on the request's
/// thread, and drops the bytes.
#[derive(Clone)]
struct Discard;

impl RecordSink for Discard {
    fn enqueue(&self, record: AuditRecord) -> Result<Accepted, Dropped> {
        std::hint::black_box(serde_json::to_vec(&record).map_err(|_| Dropped)?);
        Ok(Accepted::Buffered)
    }

    fn enqueue_ref(&self, record: RecordRef<'_>) -> Result<Accepted, Dropped> {
        let mut json = Vec::with_capacity(1024);
        record.write_json(&mut json);
        std::hint::black_box(json);
        Ok(Accepted::Buffered)
    }

    fn can_accept(&self) -> bool {
        true
    }

    fn enqueue_durable(&self, record: RecordRef<'_>) -> auditgate_queue::Durable {
        auditgate_queue::Durable::enqueued(self.enqueue_ref(record))
    }
}

async fn upload(State(lib): State<Shared>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let Some(name) = body["fileName"].as_str() else {
        return bad_request("fileName is required");
    };
    let folder = body["folder"].as_str().unwrap_or("/");
    let mut lib = lock(&lib);
    lib.next_id += 1;
    let id = format!("f{}", lib.next_id);
    let file = json!({
        "fileId": id,
        "name": name,
        "filePath": format!("{}/{name}", folder.trim_end_matches('/')),
        "size": body["size"].as_u64().unwrap_or(0),
        "tags": [],
    });
    lib.files.insert(id, file.clone());
    (StatusCode::CREATED, Json(file))
}

async fn list(State(lib): State<Shared>) -> Json<Value> {
    Json(Value::Array(lock(&lib).files.values().cloned().collect()))
}

async fn show(State(lib): State<Shared>, Path(id): Path<String>) -> (StatusCode, Json<Value>) {
    match lock(&lib).files.get(&id) {
        Some(file) => (StatusCode::OK, Json(file.clone())),
        None => not_found(&id),
    }
}

async fn remove(State(lib): State<Shared>, Path(id): Path<String>) -> (StatusCode, Json<Value>) {
    match lock(&lib).files.remove(&id) {
        Some(_) => (StatusCode::OK, Json(json!({"deleted": id}))),
        None => not_found(&id),
    }
}

async fn rename(
    State(lib): State<Shared>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut lib = lock(&lib);
    let Some(file) = lib.files.get_mut(&id) else {
        return not_found(&id);
    };
    if let Some(name) = body["name"].as_str() {
        let path = file["filePath"].as_str().unwrap_or("/").to_owned();
        let folder = path.rsplit_once('/').map_or("", |(f, _)| f);
        file["filePath"] = json!(format!("{folder}/{name}"));
        file["name"] = json!(name);
    }
    (StatusCode::OK, Json(file.clone()))
}

async fn move_file(
    State(lib): State<Shared>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let (Some(source), Some(destination)) = (
        body["sourceFilePath"].as_str(),
        body["destinationPath"].as_str(),
    ) else {
        return bad_request("sourceFilePath and destinationPath are required");
    };
    let mut lib = lock(&lib);
    let Some(file) = lib.files.values_mut().find(|f| f["filePath"] == source) else {
        return not_found(source);
    };
    let name = file["name"].as_str().unwrap_or_default().to_owned();
    file["filePath"] = json!(format!("{}/{name}", destination.trim_end_matches('/')));
    (StatusCode::OK, Json(file.clone()))
}

async fn add_tags(State(lib): State<Shared>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    change_tags(&lib, &body, |tags, tag| {
        if !tags.contains(tag) {
            tags.push(tag.clone());
        }
    })
}

async fn remove_tags(
    State(lib): State<Shared>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    change_tags(&lib, &body, |tags, tag| tags.retain(|t| t != tag))
}

fn change_tags(
    lib: &Shared,
    body: &Value,
    change: impl Fn(&mut Vec<Value>, &Value),
) -> (StatusCode, Json<Value>) {
    let (Some(ids), Some(tags)) = (body["fileIds"].as_array(), body["tags"].as_array()) else {
        return bad_request("fileIds and tags are required");
    };
    let mut lib = lock(lib);
    let mut changed = Vec::new();
    for id in ids.iter().filter_map(Value::as_str) {
        let Some(file) = lib.files.get_mut(id) else {
            return not_found(id);
        };
        if let Some(list) = file["tags"].as_array_mut() {
            for tag in tags {
                change(list, tag);
            }
        }
        changed.push(id.to_owned());
    }
    (
        StatusCode::OK,
        Json(json!({"successfullyUpdatedFileIds": changed})),
    )
}

fn bad_request(message: &str) -> (StatusCode, Json<Value>) {
    (StatusCode::BAD_REQUEST, Json(json!({"message": message})))
}

fn not_found(what: &str) -> (StatusCode, Json<Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": format!("{what} not found")})),
    )
}

fn lock(lib: &Shared) -> std::sync::MutexGuard<'_, Library> {
    lib.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
