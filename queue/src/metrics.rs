//! The queue's counters: kept as atomics for [`QueueStats`] and reported through the
//! [`metrics`] facade, so that whichever recorder the binary installs (the proxy's Prometheus
//! endpoint) sees them. Install the recorder before building the queue: handles are taken once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Metric names, as they appear in Prometheus.
pub mod names {
    /// Records handed to the queue.
    pub const ENQUEUED: &str = "auditgate_queue_enqueued_total";
    /// Records confirmed by Redis straight from the buffer.
    pub const SENT: &str = "auditgate_queue_sent_total";
    /// Records written to the disk spool.
    pub const SPOOLED: &str = "auditgate_queue_spooled_total";
    /// Spooled records confirmed by Redis.
    pub const REPLAYED: &str = "auditgate_queue_replayed_total";
    /// Records lost: buffer and spool both full or unwritable.
    pub const DROPPED: &str = "auditgate_queue_dropped_total";
    /// Bytes of damaged spool entries skipped on replay.
    pub const SPOOL_CORRUPT_BYTES: &str = "auditgate_queue_spool_corrupt_bytes_total";
    /// Seconds per pipelined `XADD` batch.
    pub const BATCH_SECONDS: &str = "auditgate_queue_batch_seconds";
    /// Records waiting in the in-memory buffer.
    pub const BUFFER_DEPTH: &str = "auditgate_queue_buffer_depth";
    /// Bytes on disk in the spool.
    pub const SPOOL_BYTES: &str = "auditgate_queue_spool_bytes";
    /// 1 while the flusher holds a working Redis connection.
    pub const REDIS_UP: &str = "auditgate_queue_redis_up";
}

/// A snapshot of a queue's counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Records handed to `enqueue`.
    pub enqueued: u64,
    /// Records Redis confirmed straight from the buffer.
    pub sent: u64,
    /// Records written to the spool.
    pub spooled: u64,
    /// Spooled records Redis confirmed.
    pub replayed: u64,
    /// Records lost, each also reported in `auditgate_queue_dropped_total`.
    pub dropped: u64,
    /// Bytes of damaged spool entries skipped.
    pub spool_corrupt_bytes: u64,
    /// Records in the buffer now.
    pub buffer_depth: u64,
    /// Bytes in the spool now.
    pub spool_bytes: u64,
    /// Whether the flusher holds a working connection now.
    pub redis_up: bool,
}

/// A counter kept twice: an atomic for [`QueueStats`], a facade handle for the exporter.
#[derive(Debug)]
pub(crate) struct Counter {
    value: AtomicU64,
    handle: metrics::Counter,
}

impl Counter {
    fn new(name: &'static str) -> Counter {
        Counter {
            value: AtomicU64::new(0),
            handle: metrics::counter!(name),
        }
    }

    pub(crate) fn increment(&self) {
        self.add(1);
    }

    pub(crate) fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.handle.increment(n);
    }

    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) enqueued: Counter,
    pub(crate) sent: Counter,
    pub(crate) spooled: Counter,
    pub(crate) replayed: Counter,
    pub(crate) dropped: Counter,
    pub(crate) spool_corrupt_bytes: Counter,
    spool_bytes: AtomicU64,
    batch_seconds: metrics::Histogram,
    buffer_depth_gauge: metrics::Gauge,
    spool_bytes_gauge: metrics::Gauge,
    redis_up_gauge: metrics::Gauge,
}

impl Counters {
    pub(crate) fn new() -> Counters {
        Counters {
            enqueued: Counter::new(names::ENQUEUED),
            sent: Counter::new(names::SENT),
            spooled: Counter::new(names::SPOOLED),
            replayed: Counter::new(names::REPLAYED),
            dropped: Counter::new(names::DROPPED),
            spool_corrupt_bytes: Counter::new(names::SPOOL_CORRUPT_BYTES),
            spool_bytes: AtomicU64::new(0),
            batch_seconds: metrics::histogram!(names::BATCH_SECONDS),
            buffer_depth_gauge: metrics::gauge!(names::BUFFER_DEPTH),
            spool_bytes_gauge: metrics::gauge!(names::SPOOL_BYTES),
            redis_up_gauge: metrics::gauge!(names::REDIS_UP),
        }
    }

    pub(crate) fn batch_seconds(&self, took: Duration) {
        self.batch_seconds.record(took.as_secs_f64());
    }

    pub(crate) fn set_buffer_depth(&self, depth: usize) {
        self.buffer_depth_gauge.set(depth as f64);
    }

    pub(crate) fn set_spool_bytes(&self, bytes: u64) {
        self.spool_bytes.store(bytes, Ordering::Relaxed);
        self.spool_bytes_gauge.set(bytes as f64);
    }

    pub(crate) fn set_redis_up(&self, up: bool) {
        self.redis_up_gauge.set(if up { 1.0 } else { 0.0 });
    }

    pub(crate) fn snapshot(&self) -> QueueStats {
        QueueStats {
            enqueued: self.enqueued.get(),
            sent: self.sent.get(),
            spooled: self.spooled.get(),
            replayed: self.replayed.get(),
            dropped: self.dropped.get(),
            spool_corrupt_bytes: self.spool_corrupt_bytes.get(),
            buffer_depth: 0,
            spool_bytes: self.spool_bytes.load(Ordering::Relaxed),
            redis_up: false,
        }
    }
}
