//! The record queue of auditgate: how audit records get from the request path into Redis, and
//! from Redis to the writer, without blocking a request and without losing a record.
//!
//! - [`RecordSink`] is what the proxy and the tower layer call. It never waits on the network:
//!   [`RecordSink::enqueue`] puts the record in a bounded buffer (or, when the buffer is full,
//!   on the disk spool) and returns at once. [`MemorySink`] implements it for tests.
//! - [`RedisQueue`] is the production sink: a flusher task sends records to the stream
//!   `auditgate:records` in pipelined `XADD` batches, one field `record` holding the JSON,
//!   reconnects with backoff, and while Redis is away writes records to the [`spool`] and
//!   replays them in order once it is back. See [`producer`] for where a record can be.
//! - [`Consumer`] is the writer's side: the consumer group `auditgate-writers`, acknowledged
//!   only after the caller commits, with dead writers' entries claimed and unparseable entries
//!   moved to `auditgate:records:dead`.
//!
//! Loss is never silent: a record that can be neither buffered nor spooled is counted in
//! `auditgate_queue_dropped_total` ([`QueueStats::dropped`]) and warned about, and its
//! `origin.seq` leaves a gap the writer can see.
//!
//! ```
//! use auditgate_queue::{Accepted, MemorySink, RecordSink};
//! # let record: auditgate_rules::AuditRecord = serde_json::from_str(r#"{"schema":1,
//! #   "id":"0193a6f0-7c1e-7d5e-9b1a-2f4c8e9d0a11","time":"2026-11-22T10:00:00.123456Z",
//! #   "duration_ms":1.0,"service":"s","operation":"asset.rename","actor":null,
//! #   "request":{"id":"r","method":"PATCH","path":"/x"},"resources":[],
//! #   "response":{"status":200},"outcome":"success","details":{}}"#).unwrap();
//!
//! let sink = MemorySink::new();
//! assert_eq!(sink.enqueue(record), Ok(Accepted::Buffered));
//! let stored = sink.records();
//! assert_eq!(stored[0].origin.as_ref().map(|o| o.seq), Some(1));
//! ```

mod config;
mod consumer;
mod error;
mod link;
mod metrics;
mod origin_file;
pub mod producer;
mod sink;
pub mod spool;
mod throttle;

pub use config::{DEFAULT_GROUP, DEFAULT_STREAM, QueueConfig, RedisConfig, SpoolConfig};
pub use consumer::{Consumer, ConsumerConfig, Delivery, read_record};
pub use error::QueueError;
pub use link::{Link, Target};
pub use metrics::{QueueStats, names as metric_names};
pub use producer::{Flusher, RedisQueue};
pub use sink::{Accepted, Dropped, Durable, MemorySink, NotDurable, RecordSink, hostname};
pub use throttle::Throttle;
