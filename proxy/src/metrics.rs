//! The proxy's metrics and the `/metrics` + `/healthz` endpoint on `metrics_listen`.
//!
//! Every counter goes through the `metrics` facade into one Prometheus recorder, installed
//! before the queue starts so that the queue's counters land there too.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use auditgate_queue::{Accepted, Dropped, RecordSink, RedisQueue};
use auditgate_rules::{AuditRecord, Outcome, RecordRef};
use http::Response;
use metrics::Counter;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorSource};

/// Requests proxied (all of them, audited or not).
pub const REQUESTS: &str = "auditgate_proxy_requests_total";
/// Records made, by `operation` and `outcome`.
pub const RECORDS: &str = "auditgate_proxy_records_total";
/// Requests answered 503 because a `closed` rule's record could not be queued.
pub const REFUSED: &str = "auditgate_proxy_refused_total";
/// Failed requests by `source` (upstream, downstream, internal) and `kind`.
pub const ERRORS: &str = "auditgate_proxy_errors_total";
/// Rule reloads by `result` (`ok`, `error`).
pub const RELOADS: &str = "auditgate_proxy_rule_reloads_total";

/// Handles to the counters the request path touches.
#[derive(Debug, Clone)]
pub(crate) struct ProxyMetrics {
    pub(crate) requests: Counter,
    pub(crate) refused: Counter,
}

impl ProxyMetrics {
    pub(crate) fn new() -> ProxyMetrics {
        ProxyMetrics {
            requests: metrics::counter!(REQUESTS),
            refused: metrics::counter!(REFUSED),
        }
    }

    pub(crate) fn error(&self, error: &Error) {
        let source = match error.esource() {
            ErrorSource::Upstream => "upstream",
            ErrorSource::Downstream => "downstream",
            ErrorSource::Internal => "internal",
            ErrorSource::Unset => "unset",
        };
        metrics::counter!(ERRORS, "source" => source, "kind" => error.etype().as_str())
            .increment(1);
    }
}

/// Counts a record by operation and outcome (`auditgate_proxy_records_total`).
fn count_record(operation: &str, outcome: Outcome) {
    thread_local! {
        /// Counter handles by operation and outcome, per request thread: a registry lookup
        /// (hashing, a lock, a key allocation) once per thread rather than per request.
        static RECORD_COUNTERS: RefCell<HashMap<Outcome, HashMap<String, Counter>>> =
            RefCell::new(HashMap::new());
    }
    RECORD_COUNTERS.with_borrow_mut(|by_outcome| {
        let counters = by_outcome.entry(outcome).or_default();
        if let Some(counter) = counters.get(operation) {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(
            RECORDS,
            "operation" => operation.to_owned(),
            "outcome" => outcome.as_str()
        );
        counter.increment(1);
        counters.insert(operation.to_owned(), counter);
    });
}

/// The proxy's record sink: the queue, with every record counted by operation and outcome on
/// its way in — however its call ended, finished or dropped as `aborted`.
#[derive(Debug, Clone)]
pub(crate) struct CountedQueue(pub(crate) RedisQueue);

impl RecordSink for CountedQueue {
    fn enqueue(&self, record: AuditRecord) -> Result<Accepted, Dropped> {
        count_record(&record.operation, record.outcome);
        self.0.enqueue(record)
    }

    fn enqueue_ref(&self, record: RecordRef<'_>) -> Result<Accepted, Dropped> {
        count_record(record.operation, record.outcome);
        self.0.enqueue_ref(record)
    }

    fn can_accept(&self) -> bool {
        self.0.can_accept()
    }

    fn enqueue_durable(&self, record: RecordRef<'_>) -> auditgate_queue::Durable {
        // Counted with its complete record, which follows under the same id.
        self.0.enqueue_durable(record)
    }
}

/// Installs the Prometheus recorder for the whole process: once, first, by the binary (a
/// process has one recorder; a test that runs the proxy in-process may go without).
pub fn install() -> Result<PrometheusHandle, crate::ProxyError> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| crate::ProxyError::Metrics(e.to_string()))?;
    metrics::describe_counter!(REQUESTS, "Requests proxied");
    metrics::describe_counter!(RECORDS, "Audit records made, by operation and outcome");
    metrics::describe_counter!(
        REFUSED,
        "Requests refused (503) because their audit record could not be queued"
    );
    metrics::describe_counter!(ERRORS, "Requests that failed, by error source and kind");
    metrics::describe_counter!(RELOADS, "Rule reloads, by result");
    Ok(handle)
}

/// Serves `/metrics` (Prometheus text) and `/healthz`.
#[derive(Debug)]
pub(crate) struct MetricsApp {
    /// `None` when the process has no recorder: `/metrics` answers 404.
    pub(crate) handle: Option<PrometheusHandle>,
    pub(crate) queue: Arc<RedisQueue>,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let (status, content_type, body) = match path.as_str() {
            "/metrics" => match &self.handle {
                Some(handle) => {
                    handle.run_upkeep();
                    (
                        200,
                        "text/plain; version=0.0.4",
                        handle.render().into_bytes(),
                    )
                }
                None => (
                    404,
                    "text/plain",
                    b"no metrics recorder in this process\n".to_vec(),
                ),
            },
            "/healthz" => {
                let stats = self.queue.stats();
                let body = serde_json::json!({
                    "status": "ok",
                    "redis_up": stats.redis_up,
                    "spool_bytes": stats.spool_bytes,
                    "dropped": stats.dropped,
                });
                (200, "application/json", body.to_string().into_bytes())
            }
            _ => (
                404,
                "text/plain",
                b"not found: try /metrics or /healthz\n".to_vec(),
            ),
        };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
