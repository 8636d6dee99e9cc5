//! `AuditLayer`: tower middleware that records who changed what through a Rust HTTP service.
//!
//! Add the layer to an axum router (or any tower stack over `http` requests) with the rule set
//! and a record sink. Every call a rule matches yields one audit record: operation, actor,
//! request ID, resources, details and outcome, as the rules say. Calls no rule matches pass
//! straight through.
//!
//! - **Request ID**: read from the rule file's `request_id` header (default `X-Request-Id`)
//!   or generated (UUIDv7); the handler finds it in that header and as a [`RequestId`]
//!   extension, and the client gets it back in the same header.
//! - **Bodies**: `body/...` and `response/...` templates read the bodies *as they stream*
//!   to the handler and to the client, up to the capture limit (64 KiB by default), decoded
//!   first when they are sent `gzip`, `deflate`, `br` or `zstd`. The handler and the client see every
//!   byte unchanged; nothing waits for a whole body.
//! - **Exactly one record** per matching call, emitted when the response body ends (or has
//!   yielded its `Content-Length`, or at once when there is none to send: HEAD, 204, 304) —
//!   or, when the client goes away or the body is dropped unfinished, with outcome `aborted`. A
//!   response of 400 or more is a `failure`; an error from the inner service passes through
//!   unchanged and is recorded as `error`.
//! - **`on_queue_failure: closed`**: when a matching rule says so and the sink cannot accept
//!   a record durably, the call is answered `503` with a short JSON body and the handler is
//!   not called.
//! - **JWT claims** are read unverified unless an authentication layer in front inserted
//!   [`VerifiedClaims`], which `jwt/` templates then read instead.
//!
//! # Default setup
//!
//! ```
//! use auditgate_middleware::AuditLayer;
//! use auditgate_queue::MemorySink; // RedisQueue in production
//! use auditgate_rules::RuleSet;
//! use axum::{Router, routing::delete};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rules = RuleSet::from_yaml("rules.yaml", r#"
//! version: 1
//! service: media-library
//! defaults: { actor: ["{header.X-User-Id}"] }
//! rules:
//!   - operation: asset.delete
//!     method: DELETE
//!     path: /v1/files/{fileId}
//!     resources: [{ type: file, id: "{path.fileId}" }]
//! "#)?;
//! let sink = MemorySink::new();
//! let app = Router::new()
//!     .route("/v1/files/{file_id}", delete(|| async { "deleted" }))
//!     .layer(AuditLayer::new(rules, sink.clone()));
//!
//! let response = app
//!     .oneshot(
//!         http::Request::delete("/v1/files/abc")
//!             .header("X-User-Id", "u_123")
//!             .body(axum::body::Body::empty())?,
//!     )
//!     .await?;
//! assert!(response.headers().contains_key("x-request-id"));
//! // The record is emitted once the body has been sent.
//! axum::body::to_bytes(response.into_body(), usize::MAX).await?;
//!
//! let records = sink.records();
//! assert_eq!(records[0].operation, "asset.delete");
//! assert_eq!(records[0].actor.as_ref().unwrap().id.as_deref(), Some("u_123"));
//! assert_eq!(records[0].resources[0].id.as_deref(), Some("abc"));
//! # Ok(()) }
//! ```
//!
//! # Customised: Redis, full client addresses, a smaller capture limit
//!
//! ```no_run
//! use auditgate_middleware::AuditLayer;
//! use auditgate_queue::{QueueConfig, RedisQueue};
//! use auditgate_rules::{ClientIpMode, RuleSet};
//! use axum::{Router, routing::patch};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rules = RuleSet::loader()
//!     .hmac_key_file("/etc/auditgate/hmac.key")? // for `| hmac` templates
//!     .load("/etc/auditgate/rules")?;            // a file or a directory
//! let queue = RedisQueue::start(
//!     QueueConfig::new("redis://127.0.0.1:6379").spool("/var/lib/myapp/audit-spool", 1 << 30),
//! )?;
//! let app = Router::new()
//!     .route("/v1/files/{file_id}/details", patch(|| async { "ok" }))
//!     .layer(
//!         AuditLayer::new(rules, queue.clone())
//!             .client_ip(ClientIpMode::Full)
//!             .capture_limit(16 * 1024),
//!     );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(
//!     listener,
//!     app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
//! )
//! .await?;
//! queue.shutdown().await; // sends what is still buffered
//! # Ok(()) }
//! ```

mod body;
mod future;
mod layer;
mod service;

pub use auditgate_call::DEFAULT_CAPTURE_LIMIT;
pub use body::{RequestBody, ResponseBody};
pub use future::ResponseFuture;
pub use layer::AuditLayer;
pub use service::Audit;

/// The request ID of an audited call, as an extension handlers can read:
/// `Extension(RequestId(id)): Extension<RequestId>` in axum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Claims of the caller's token that an authentication layer in front has verified. When
/// present, `jwt/` templates read these instead of decoding the bearer token unverified.
#[derive(Debug, Clone)]
pub struct VerifiedClaims(pub serde_json::Value);
