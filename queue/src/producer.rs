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
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};

use crate::config::QueueConfig;
use crate::error::QueueError;
use crate::metrics::{Counters, QueueStats};
use crate::sink::{Accepted, Dropped, OriginStamp, RecordSink, default_instance};
use crate::spool::{AppendError, SegmentRecords, Spool};
use crate::throttle::Throttle;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
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
/// the current runtime; [`RedisQueue::new`] hands it to the caller (the proxy runs it as a
/// pingora background service).
#[derive(Debug)]
pub struct Flusher {
    shared: Arc<Shared>,
    /// Records as JSON, serialised by the thread that enqueued them.
    rx: mpsc::Receiver<Vec<u8>>,
    client: redis::Client,
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
}

/// A pipelined batch Redis has not answered yet.
#[derive(Debug)]
struct InFlight {
    task: tokio::task::JoinHandle<redis::RedisResult<()>>,
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
}

enum Connection {
    Up(MultiplexedConnection),
    Down {
        retry_at: Instant,
        backoff: Duration,
    },
}

impl Connection {
    fn retry_at(&self) -> Option<Instant> {
        match self {
            Connection::Up(_) => None,
            Connection::Down { retry_at, .. } => Some(*retry_at),
        }
    }
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
        let client = redis::Client::open(config.redis.url.as_str()).map_err(|source| {
            QueueError::InvalidUrl {
                url: config.redis.url.clone(),
                source,
            }
        })?;
        let spool = match &config.spool {
            Some(s) => Some(Mutex::new(Spool::open(&s.dir, s.max_bytes)?)),
            None => None,
        };
        let (tx, rx) = mpsc::channel(config.buffer);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        let instance = config.instance.clone().unwrap_or_else(default_instance);
        let shared = Arc::new(Shared {
            tx,
            capacity: config.buffer,
            spool,
            stamp: OriginStamp::new(&config.origin_kind, &instance),
            counters: Counters::new(),
            redis_up: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            shutdown: shutdown_tx,
            done: done_rx,
            drop_warnings: Throttle::new(Duration::from_secs(10)),
            shutdown_timeout: config.shutdown_timeout,
        });
        if let Some(spool) = &shared.spool {
            shared.counters.set_spool_bytes(lock(spool).bytes());
        }
        let flusher = Flusher {
            shared: shared.clone(),
            rx,
            client,
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
        shared
            .spool
            .as_ref()
            .is_some_and(|s| lock(s).has_room_for(TYPICAL_RECORD))
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

impl Flusher {
    /// Runs until [`RedisQueue::shutdown`]: sends, spools, reconnects, replays.
    pub async fn run(mut self) {
        let mut conn = Connection::Down {
            retry_at: Instant::now(),
            backoff: MIN_BACKOFF,
        };
        let mut batch = Vec::with_capacity(self.batch);
        let mut short_batch = false;
        loop {
            if *self.shutdown.borrow() || self.shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            if matches!(conn, Connection::Down { .. }) {
                // Collect what was in flight when Redis went away before deciding anything.
                self.settle_all(&mut conn).await;
            }
            self.connect_if_due(&mut conn).await;
            self.sync_spool();

            if self.spool_pending() && matches!(conn, Connection::Up(_)) {
                self.settle_all(&mut conn).await;
                // Keep order: what is held or buffered goes behind the spooled records.
                self.held_to_spool();
                if self.held.is_empty() {
                    self.buffer_to_spool(&mut batch);
                }
                if let Connection::Up(c) = &mut conn
                    && let Err(e) = self.replay_batch(c).await
                {
                    self.lost_connection(&mut conn, &e);
                }
                continue;
            }

            if !self.held.is_empty() {
                if self.in_flight.len() >= MAX_IN_FLIGHT {
                    self.settle_oldest(&mut conn).await;
                    continue;
                }
                match &conn {
                    Connection::Up(c) => {
                        let c = c.clone();
                        let payloads = std::mem::take(&mut self.held);
                        self.start_send(&c, payloads);
                    }
                    Connection::Down { .. } => self.held_to_spool(),
                }
                if !self.held.is_empty() {
                    // Redis is away and the spool is full: wait for either to change.
                    let retry_at = conn.retry_at().unwrap_or_else(Instant::now);
                    tokio::select! {
                        _ = self.shutdown.changed() => {}
                        _ = tokio::time::sleep_until(retry_at.into()) => {}
                    }
                }
                continue;
            }

            // Wait for records, unless there is nowhere to put them (Redis away, spool full):
            // then they stay in the buffer, which overflows into counted drops at enqueue.
            // Meanwhile, collect Redis's replies to the batches in flight.
            let can_take = matches!(conn, Connection::Up(_)) || self.spool_has_room();
            if can_take && short_batch && !self.linger.is_zero() {
                // The last batch was not full: let records gather for a moment rather than
                // be woken for each one. While the flusher sleeps, no waker is registered on
                // the buffer, so `enqueue` costs request threads no cross-thread wake-up.
                tokio::select! {
                    _ = tokio::time::sleep(self.linger) => {}
                    // The change is consumed here: go round to the stop check rather than
                    // wait below for a change that has already happened.
                    _ = self.shutdown.changed() => continue,
                }
            }
            let Flusher {
                rx,
                in_flight,
                shutdown,
                batch: max_batch,
                ..
            } = &mut self;
            let oldest = async {
                match in_flight.front_mut() {
                    Some(f) => (&mut f.task).await,
                    None => std::future::pending().await,
                }
            };
            let mut settled = None;
            tokio::select! {
                n = rx.recv_many(&mut batch, *max_batch), if can_take => {
                    if n == 0 {
                        // Every sender is gone; nothing more can arrive.
                        break;
                    }
                    short_batch = n < *max_batch;
                }
                result = oldest => settled = Some(result),
                _ = shutdown.changed() => {}
                _ = sleep_until(conn.retry_at()) => {}
                // Belt and braces: an idle flusher also looks at the stop flag now and then.
                _ = tokio::time::sleep(STOP_CHECK) => {}
            }
            if let Some(result) = settled
                && let Some(done) = self.in_flight.pop_front()
            {
                self.settled(done, result, &mut conn);
            }
            self.shared.counters.set_buffer_depth(self.rx.len());
            if !batch.is_empty() {
                self.held = std::mem::take(&mut batch);
            }
        }
        self.drain(conn).await;
        self.done.send_replace(true);
    }

    /// Shutdown: everything held or still buffered goes to Redis or the spool; then the spool
    /// is replayed for as long as Redis answers and the shutdown timeout allows.
    async fn drain(&mut self, mut conn: Connection) {
        self.rx.close();
        self.settle_all(&mut conn).await;
        // One more try to reach Redis, whatever the backoff says: shutting down with records
        // that could have been sent would leave them waiting for the next start.
        if let Connection::Down { retry_at, .. } = &mut conn {
            *retry_at = Instant::now();
            self.connect_if_due(&mut conn).await;
        }
        let deadline = Instant::now() + self.shutdown_timeout;
        let mut batch = Vec::with_capacity(self.batch);
        let mut last_lost: Option<Vec<u8>> = None;
        loop {
            if self.held.is_empty() {
                if self.rx.recv_many(&mut batch, self.batch).await == 0 {
                    break;
                }
                self.held = std::mem::take(&mut batch);
            }
            let payloads = std::mem::take(&mut self.held);
            match &mut conn {
                Connection::Up(c) if !self.spool_pending() => {
                    if let Err(e) = self.send(c, &payloads).await {
                        self.lost_connection(&mut conn, &e);
                        self.held = payloads;
                    } else {
                        self.shared.counters.sent.add(payloads.len() as u64);
                    }
                }
                _ => {
                    self.held = payloads;
                    self.held_to_spool();
                    if !self.held.is_empty() {
                        let mut lost = std::mem::take(&mut self.held);
                        // The newest is kept aside: see `keep_past_limit`.
                        if let Some(newest) = lost.pop() {
                            lost.extend(last_lost.replace(newest));
                        }
                        self.shared.dropped(
                            lost.len() as u64,
                            "shutting down with redis unreachable and the spool full",
                        );
                    }
                }
            }
        }
        if let Some(newest) = last_lost {
            self.keep_past_limit(newest);
        }
        while self.spool_pending() && Instant::now() < deadline {
            let Connection::Up(c) = &mut conn else { break };
            if let Err(e) = self.replay_batch(c).await {
                self.lost_connection(&mut conn, &e);
            }
        }
        self.sync_spool();
        if let Some(spool) = &self.shared.spool {
            let spool = lock(spool);
            if !spool.is_empty() {
                tracing::info!(
                    dir = %spool.dir().display(),
                    bytes = spool.bytes(),
                    "audit records left in the spool; the next start replays them"
                );
            }
        }
    }

    async fn connect_if_due(&mut self, conn: &mut Connection) {
        let Connection::Down { retry_at, backoff } = *conn else {
            return;
        };
        if Instant::now() < retry_at {
            return;
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(self.response_timeout));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => {
                if backoff > MIN_BACKOFF {
                    tracing::info!("redis is reachable again");
                }
                *conn = Connection::Up(c);
                self.shared.redis_up.store(true, Ordering::Relaxed);
                self.shared.counters.set_redis_up(true);
            }
            Err(e) => {
                if backoff == MIN_BACKOFF {
                    tracing::warn!(error = %e, "redis unreachable; spooling audit records");
                }
                *conn = Connection::Down {
                    retry_at: Instant::now() + backoff,
                    backoff: (backoff * 2).min(MAX_BACKOFF),
                };
            }
        }
    }

    fn lost_connection(&self, conn: &mut Connection, error: &redis::RedisError) {
        tracing::warn!(error = %error, "redis write failed; spooling audit records");
        self.shared.redis_up.store(false, Ordering::Relaxed);
        self.shared.counters.set_redis_up(false);
        *conn = Connection::Down {
            retry_at: Instant::now() + MIN_BACKOFF,
            backoff: MIN_BACKOFF * 2,
        };
    }

    /// One pipelined batch of `XADD KEY * record JSON`, spread over the shard keys.
    async fn send(
        &mut self,
        conn: &mut MultiplexedConnection,
        payloads: &[Vec<u8>],
    ) -> redis::RedisResult<()> {
        if payloads.is_empty() {
            // An empty pipeline gets no reply to wait for.
            return Ok(());
        }
        let started = Instant::now();
        let pipe = self.pipeline(payloads);
        let result = pipe.query_async::<()>(conn).await;
        self.shared.counters.batch_seconds(started.elapsed());
        result
    }

    /// Sends a batch without waiting for Redis: the reply is collected by [`Self::settle`].
    /// Records queued meanwhile are serialised while Redis works on this batch.
    fn start_send(&mut self, conn: &MultiplexedConnection, payloads: Vec<Vec<u8>>) {
        if payloads.is_empty() {
            return;
        }
        let pipe = self.pipeline(&payloads);
        let mut conn = conn.clone();
        let task = tokio::spawn(async move { pipe.query_async::<()>(&mut conn).await });
        self.in_flight.push_back(InFlight {
            task,
            payloads,
            started: Instant::now(),
        });
    }

    /// Handles the reply to the oldest batch in flight: counted as sent, or, when Redis
    /// failed, held for the spool (in order behind earlier failures).
    async fn settle_oldest(&mut self, conn: &mut Connection) {
        let Some(mut batch) = self.in_flight.pop_front() else {
            return;
        };
        let result = (&mut batch.task).await;
        self.settled(batch, result, conn);
    }

    fn settled(
        &mut self,
        batch: InFlight,
        result: Result<redis::RedisResult<()>, tokio::task::JoinError>,
        conn: &mut Connection,
    ) {
        self.shared.counters.batch_seconds(batch.started.elapsed());
        match result {
            Ok(Ok(())) => self.shared.counters.sent.add(batch.payloads.len() as u64),
            Ok(Err(e)) => {
                self.held.extend(batch.payloads);
                if matches!(conn, Connection::Up(_)) {
                    self.lost_connection(conn, &e);
                }
            }
            Err(join) => {
                self.held.extend(batch.payloads);
                tracing::error!(error = %join, "redis send task failed");
            }
        }
    }

    /// Waits for every batch in flight.
    async fn settle_all(&mut self, conn: &mut Connection) {
        while !self.in_flight.is_empty() {
            self.settle_oldest(conn).await;
        }
    }

    /// `XADD KEY * record JSON` for each payload, spread over the shard keys.
    fn pipeline(&mut self, payloads: &[Vec<u8>]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for payload in payloads {
            let key = &self.keys[self.next_key];
            self.next_key = (self.next_key + 1) % self.keys.len();
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("record")
                .arg(payload.as_slice())
                .ignore();
        }
        pipe
    }

    /// Replays the next batch of the oldest spool segment; deletes the segment once all of
    /// it is confirmed.
    async fn replay_batch(&mut self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        if self.replaying.is_none() {
            let Some(spool) = &self.shared.spool else {
                return Ok(());
            };
            let oldest = lock(spool).oldest();
            let segment = match oldest {
                Ok(Some(s)) => s,
                Ok(None) => return Ok(()),
                Err(e) => {
                    // Nothing to send until the file system recovers; do not spin.
                    tracing::error!(error = %e, "cannot read the spool");
                    tokio::time::sleep(MAX_BACKOFF).await;
                    return Ok(());
                }
            };
            if segment.corrupt_bytes > 0 {
                tracing::warn!(
                    segment = segment.number,
                    bytes = segment.corrupt_bytes,
                    "spool segment ends in a torn or damaged entry; skipped it"
                );
                self.shared
                    .counters
                    .spool_corrupt_bytes
                    .add(segment.corrupt_bytes);
            }
            self.replaying = Some((segment, 0));
        }
        let Some((segment, done)) = self.replaying.take() else {
            return Ok(());
        };
        let end = (done + self.batch).min(segment.records.len());
        let chunk: Vec<Vec<u8>> = segment.records[done..end].to_vec();
        // A segment with no valid record (all of it torn or damaged) has nothing to send.
        if !chunk.is_empty()
            && let Err(e) = self.send(conn, &chunk).await
        {
            self.replaying = Some((segment, done));
            return Err(e);
        }
        self.shared.counters.replayed.add(chunk.len() as u64);
        if end < segment.records.len() {
            self.replaying = Some((segment, end));
            return Ok(());
        }
        if let Some(spool) = &self.shared.spool {
            let mut spool = lock(spool);
            if let Err(e) = spool.remove(segment.number) {
                tracing::error!(error = %e, "cannot delete a replayed spool segment");
            }
            self.shared.counters.set_spool_bytes(spool.bytes());
        }
        Ok(())
    }

    /// Moves what the buffer holds into the spool, as far as the spool has room; what does
    /// not fit is held.
    fn buffer_to_spool(&mut self, batch: &mut Vec<Vec<u8>>) {
        while self.held.is_empty() && self.spool_has_room() {
            batch.clear();
            for _ in 0..self.batch {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            self.held = std::mem::take(batch);
            self.held_to_spool();
        }
        self.shared.counters.set_buffer_depth(self.rx.len());
    }

    /// The newest of the records a shutdown could not deliver or spool is spooled past the
    /// spool's limit (one record over it), so that the `origin.seq`s dropped before it show in
    /// the writer's gaps: a dropped tail would leave no trace. See
    /// [`Spool::append_past_limit`](crate::spool::Spool::append_past_limit).
    fn keep_past_limit(&mut self, newest: Vec<u8>) {
        let kept = self.shared.spool.as_ref().is_some_and(|spool| {
            let mut spool = lock(spool);
            let kept = spool.append_past_limit(&newest).is_ok() && spool.sync().is_ok();
            self.shared.counters.set_spool_bytes(spool.bytes());
            kept
        });
        if kept {
            self.shared.counters.spooled.increment();
        } else {
            self.shared
                .dropped(1, "shutting down with redis unreachable and the spool full");
        }
    }

    /// Appends the held records to the spool; those that do not fit stay held. Without a
    /// spool, or when the disk refuses the write, they are dropped (and counted).
    fn held_to_spool(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let Some(spool) = &self.shared.spool else {
            let lost = std::mem::take(&mut self.held);
            self.shared.dropped(
                lost.len() as u64,
                "redis is unreachable and no spool is configured",
            );
            return;
        };
        let mut spool = lock(spool);
        let mut written = 0;
        let mut failed = 0;
        let mut reason = String::new();
        for payload in &self.held {
            match spool.append(payload) {
                Ok(()) => {
                    written += 1;
                    self.shared.counters.spooled.increment();
                }
                Err(AppendError::Full { .. }) => break,
                Err(e @ AppendError::Io(_)) => {
                    written += 1;
                    failed += 1;
                    reason = e.to_string();
                }
            }
        }
        if let Err(e) = spool.sync() {
            tracing::warn!(error = %e, "spool fsync failed");
        }
        self.shared.counters.set_spool_bytes(spool.bytes());
        drop(spool);
        self.held.drain(..written);
        if failed > 0 {
            self.shared.dropped(failed, &reason);
        }
    }

    fn sync_spool(&self) {
        if let Some(spool) = &self.shared.spool
            && let Err(e) = lock(spool).sync()
        {
            tracing::warn!(error = %e, "spool fsync failed");
        }
    }

    fn spool_pending(&self) -> bool {
        self.replaying.is_some()
            || self
                .shared
                .spool
                .as_ref()
                .is_some_and(|s| !lock(s).is_empty())
    }

    fn spool_has_room(&self) -> bool {
        self.shared
            .spool
            .as_ref()
            .is_some_and(|s| lock(s).has_room_for(TYPICAL_RECORD))
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Locks the spool. A thread that panicked while holding the lock cannot have left the spool
/// in a state worse than a crash would, which the format is built to survive.
fn lock(spool: &Mutex<Spool>) -> MutexGuard<'_, Spool> {
    spool
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
