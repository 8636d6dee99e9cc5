//! [`RedisQueue`]: the producer side. Requests hand records to a bounded buffer; one flusher
//! task sends them to Redis in pipelined `XADD` batches, spools them while Redis is away and
//! replays the spool, in order, when it is back.
//!
//! # Where a record can be
//!
//! ```text
//! enqueue ─► buffer (bounded channel) ─► flusher ─► XADD pipeline ─► Redis
//!    │ buffer full                           │ Redis down / spool not empty
//!    ▼                                       ▼
//!  spool (disk) ◄────────────────────────────┘ ─► replayed oldest first once Redis is back
//!    │ spool full or unwritable
//!    ▼
//!  dropped (counted in `auditgate_queue_dropped_total`, warned about at most every 10 s)
//! ```
//!
//! A record is serialised by the thread that enqueues it (its allocations are freed where
//! they were made; one buffer crosses to the flusher). Up to two batches are in flight at once,
//! so that the flusher gathers and sends the next batch while Redis works on the previous one;
//! a batch Redis does not confirm is spooled.
//!
//! While anything waits in the spool, new records are appended behind it rather than sent
//! directly, so that the spool replays in the order records were produced. A record that
//! overflows the buffer is spooled by the request thread itself; it can reach Redis before
//! records still in the buffer, which the writer does not mind (records carry their own time
//! and `origin.seq`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use auditgate_rules::{AuditRecord, RecordRef};
use tokio::sync::{mpsc, watch};

mod batch;
mod connection;
mod durable;
mod flusher;
mod spool_handover;

use crate::config::QueueConfig;
use crate::error::QueueError;
use crate::metrics::{Counters, QueueStats};
use crate::origin_file::Reservation;
use crate::sink::{
    Accepted, Dropped, Durable, NotDurable, OriginStamp, RecordSink, default_instance,
};
use crate::spool::{SegmentRecords, Spool};
use crate::throttle::Throttle;

/// The size of a typical record, for asking whether the spool has room.
const TYPICAL_RECORD: usize = 2048;
/// Pipelined batches awaiting Redis's reply at once: two, so that the next batch is being
/// gathered and sent while Redis works on the previous one.
const MAX_IN_FLIGHT: usize = 2;
/// How often an idle flusher looks at the stop flag, besides being woken by `shutdown()`.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// The Redis Streams producer: cheap to clone, safe to share between threads.
///
/// ```no_run
/// use auditgate_queue::{QueueConfig, RedisQueue, RecordSink};
///
/// # async fn run(record: auditgate_rules::AuditRecord) -> Result<(), auditgate_queue::QueueError> {
/// let queue = RedisQueue::start(
///     QueueConfig::new("redis://127.0.0.1:6379").spool("/var/lib/auditgate/spool", 1 << 30),
/// )?;
/// queue.enqueue(record).ok(); // never waits; a loss is counted in the metrics
/// queue.shutdown().await;     // sends what is buffered, or leaves it in the spool
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisQueue {
    shared: Arc<Shared>,
}

/// The task that moves records from the buffer to Redis. [`RedisQueue::start`] spawns it on
/// the current runtime; [`RedisQueue::new`] hands it to the caller (the proxy runs it on its
/// background runtime, beside rule reloading).
#[derive(Debug)]
pub struct Flusher {
    shared: Arc<Shared>,
    /// Records as JSON, serialised by the thread that enqueued them.
    rx: mpsc::Receiver<Vec<u8>>,
    target: crate::link::Target,
    keys: Vec<String>,
    next_key: usize,
    batch: usize,
    linger: Duration,
    response_timeout: Duration,
    shutdown_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    done: watch::Sender<bool>,
    /// The spool segment being replayed and how many of its records Redis has confirmed.
    replaying: Option<(SegmentRecords, usize)>,
    /// Serialised records taken from the buffer and not yet sent or spooled: at most one
    /// batch, kept while Redis is away and the spool is full.
    held: Vec<Vec<u8>>,
    /// Batches sent and not yet answered, oldest first; at most [`MAX_IN_FLIGHT`].
    in_flight: VecDeque<InFlight>,
    /// The durable task's queue, until [`Flusher::run`] starts the task.
    durable_rx: Option<mpsc::Receiver<durable::Waiting>>,
    /// How long the durable task waits for Redis before it spools.
    durable_wait: Duration,
}

/// A pipelined batch Redis has not answered yet.
#[derive(Debug)]
struct InFlight {
    task: tokio::task::JoinHandle<redis::RedisResult<batch::Replies>>,
    payloads: Vec<Vec<u8>>,
    started: Instant,
}

#[derive(Debug)]
struct Shared {
    tx: mpsc::Sender<Vec<u8>>,
    capacity: usize,
    spool: Option<Mutex<Spool>>,
    stamp: OriginStamp,
    counters: Counters,
    redis_up: AtomicBool,
    stopping: AtomicBool,
    shutdown: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    /// "Records dropped" warnings, at most one every 10 s.
    drop_warnings: Throttle,
    shutdown_timeout: Duration,
    /// Received records of `closed` calls, to the durable task (see `durable.rs`).
    durable_tx: mpsc::Sender<durable::Waiting>,
    /// The spool's bound, for `can_accept` when the spool is busy.
    spool_max_bytes: u64,
}

impl RedisQueue {
    /// Builds the queue and its flusher without starting anything. Opens (and locks) the spool
    /// directory, so that a spool left by an earlier run is replayed by this one.
    pub fn new(config: QueueConfig) -> Result<(RedisQueue, Flusher), QueueError> {
        if config.buffer == 0 || config.batch == 0 {
            return Err(QueueError::Config(
                "buffer and batch must be at least 1".to_owned(),
            ));
        }
        let target = crate::link::Target::open(&config.redis)?;
        let spool = match &config.spool {
            Some(s) => Some(Mutex::new(Spool::open(&s.dir, s.max_bytes)?)),
            None => None,
        };
        let (tx, rx) = mpsc::channel(config.buffer);
        let (durable_tx, durable_rx) = mpsc::channel(durable::WAITING);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        // With a spool, the directory keeps the name and the sequence across restarts, so a
        // crash's losses show as a gap of this instance; without one, a name per start.
        let stamp = match &config.spool {
            Some(s) => {
                let (reservation, previous) =
                    Reservation::open(&s.dir, config.instance.as_deref(), default_instance)
                        .map_err(|source| QueueError::Spool {
                            path: s.dir.clone(),
                            source,
                        })?;
                if let Some(crashed) = previous.after_crash {
                    tracing::warn!(
                        instance = reservation.instance(),
                        from_seq = crashed.from,
                        to_seq = crashed.to,
                        "the previous run of this producer did not stop cleanly: records it held in memory are lost, and show in the writer's /api/v1/gaps as a gap left by a crash"
                    );
                }
                OriginStamp::resuming(&config.origin_kind, reservation, previous)
            }
            None => OriginStamp::new(
                &config.origin_kind,
                &config.instance.clone().unwrap_or_else(default_instance),
            ),
        };
        let shared = Arc::new(Shared {
            tx,
            capacity: config.buffer,
            spool,
            stamp,
            counters: Counters::new(),
            redis_up: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            shutdown: shutdown_tx,
            done: done_rx,
            drop_warnings: Throttle::new(Duration::from_secs(10)),
            shutdown_timeout: config.shutdown_timeout,
            durable_tx,
            spool_max_bytes: config.spool.as_ref().map_or(0, |s| s.max_bytes),
        });
        if let Some(spool) = &shared.spool {
            shared.counters.set_spool_bytes(lock(spool).bytes());
        }
        let flusher = Flusher {
            shared: shared.clone(),
            rx,
            target,
            keys: config.redis.keys(),
            next_key: 0,
            batch: config.batch,
            linger: config.linger,
            response_timeout: config.response_timeout,
            shutdown_timeout: config.shutdown_timeout,
            shutdown: shutdown_rx,
            done: done_tx,
            replaying: None,
            held: Vec::new(),
            in_flight: VecDeque::new(),
            durable_rx: Some(durable_rx),
            durable_wait: config.durable_redis_wait,
        };
        Ok((RedisQueue { shared }, flusher))
    }

    /// Builds the queue and spawns its flusher on the current tokio runtime.
    pub fn start(config: QueueConfig) -> Result<RedisQueue, QueueError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| QueueError::NoRuntime)?;
        let (queue, flusher) = RedisQueue::new(config)?;
        handle.spawn(flusher.run());
        Ok(queue)
    }

    /// Stops the flusher after it has sent what is buffered (or spooled it, when Redis is
    /// away) and replayed what it can of the spool within the shutdown timeout. Records
    /// enqueued afterwards go straight to the spool.
    pub async fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.shutdown.send_replace(true);
        let mut done = self.shared.done.clone();
        // An error means the flusher is gone (never run, or its runtime stopped): nothing to
        // wait for. The bound is a last resort: a flusher that does not finish must not keep
        // a process from exiting; what it holds is in the spool or counted.
        let limit = self.shared.shutdown_timeout + Duration::from_secs(10);
        if tokio::time::timeout(limit, done.wait_for(|d| *d))
            .await
            .is_err()
        {
            tracing::error!(
                "the audit queue's flusher did not finish in {limit:?}; exiting without it"
            );
        }
    }

    /// Counters and gauges, as the metrics report them.
    pub fn stats(&self) -> QueueStats {
        let mut stats = self.shared.counters.snapshot();
        stats.buffer_depth = (self.shared.capacity - self.shared.tx.capacity()) as u64;
        stats.redis_up = self.shared.redis_up.load(Ordering::Relaxed);
        stats
    }

    /// This producer's `origin.instance`.
    pub fn instance(&self) -> &str {
        self.shared.stamp.instance()
    }
}

impl RecordSink for RedisQueue {
    fn enqueue_durable(&self, record: RecordRef<'_>) -> Durable {
        if self.shared.stopping.load(Ordering::Relaxed) {
            return Durable::ready(Err(NotDurable));
        }
        self.shared.counters.enqueued.increment();
        let (payload, seq) = self.shared.stamp.encode_ref_seq(&record);
        drop(record);
        let (ack, answer) = tokio::sync::oneshot::channel();
        match self.shared.durable_tx.try_send((payload, ack)) {
            Ok(()) => Durable::waiting(answer, seq),
            // More closed calls waiting than a round takes: refused, not queued further.
            Err(_) => Durable::ready(Err(NotDurable)),
        }
    }

    fn enqueue(&self, mut record: AuditRecord) -> Result<Accepted, Dropped> {
        self.shared.counters.enqueued.increment();
        // Serialised here, on the caller's thread: the record's many small allocations are
        // freed where they were made, and only one buffer crosses to the flusher.
        let payload = self.shared.stamp.encode(&mut record);
        drop(record);
        self.shared.hand_over(payload)
    }

    fn enqueue_ref(&self, record: RecordRef<'_>) -> Result<Accepted, Dropped> {
        self.shared.counters.enqueued.increment();
        let payload = self.shared.stamp.encode_ref(&record);
        drop(record);
        self.shared.hand_over(Ok(payload))
    }

    fn can_accept(&self) -> bool {
        let shared = &self.shared;
        let buffer_room = shared.tx.capacity() > 0 && !shared.stopping.load(Ordering::Relaxed);
        if buffer_room && shared.redis_up.load(Ordering::Relaxed) {
            return true;
        }
        shared.spool.as_ref().is_some_and(|s| match s.try_lock() {
            Ok(spool) => spool.would_keep(TYPICAL_RECORD),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().would_keep(TYPICAL_RECORD),
            // Another thread is appending: the request thread does not wait for it, and
            // goes by the last size it saw.
            Err(std::sync::TryLockError::WouldBlock) => {
                shared.counters.snapshot().spool_bytes + crate::spool::entry_bytes(TYPICAL_RECORD)
                    <= shared.spool_max_bytes
            }
        })
    }
}

impl Shared {
    /// Puts a serialised record in the buffer, or on the spool when the buffer is full.
    fn hand_over(&self, payload: serde_json::Result<Vec<u8>>) -> Result<Accepted, Dropped> {
        let Ok(mut payload) = payload else {
            self.dropped(1, "a record did not serialise");
            return Err(Dropped);
        };
        if !self.stopping.load(Ordering::Relaxed) {
            match self.tx.try_send(payload) {
                Ok(()) => return Ok(Accepted::Buffered),
                Err(mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p)) => {
                    payload = p
                }
            }
        }
        self.spool_one(&payload)
    }

    /// Writes one record to the spool from the caller's thread (the buffer was full).
    fn spool_one(&self, payload: &[u8]) -> Result<Accepted, Dropped> {
        let Some(spool) = &self.spool else {
            self.dropped(1, "the buffer is full and no spool is configured");
            return Err(Dropped);
        };
        let mut spool = lock(spool);
        match spool.append(payload) {
            Ok(()) => {
                self.counters.spooled.increment();
                self.counters.set_spool_bytes(spool.bytes());
                Ok(Accepted::Spooled)
            }
            Err(e) => {
                drop(spool);
                self.dropped(1, e);
                Err(Dropped)
            }
        }
    }

    /// Counts lost records and warns, at most once every 10 s, so that loss is never silent
    /// and never floods the log.
    fn dropped(&self, n: u64, why: impl std::fmt::Display) {
        // `why` is formatted only when the warning is written: a full spool drops on every
        // request, and the request path does not format strings it throws away.
        self.counters.dropped.add(n);
        if self.drop_warnings.allow() {
            tracing::warn!(
                dropped_total = self.counters.dropped.get(),
                "audit records dropped: {why}"
            );
        }
    }
}

/// Locks the spool. A thread that panicked while holding the lock cannot have left the spool
/// in a state worse than a crash would, which the format is built to survive.
fn lock(spool: &Mutex<Spool>) -> MutexGuard<'_, Spool> {
    spool
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
