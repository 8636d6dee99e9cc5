//! What the proxy and the layer hand records to.

use crate::origin_file::{Previous, Reservation};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use auditgate_rules::{AuditRecord, OriginJson, RecordRef, SeqRange};

/// Where a record went when it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Into the in-memory buffer; the flusher sends it to Redis (or spools it) shortly.
    Buffered,
    /// Onto the disk spool: durable, replayed to Redis when it can be.
    Spooled,
}

/// A record the sink could not take: the buffer and the spool are both full, or unwritable.
/// The sink has counted it as dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("audit record dropped: the queue's buffer and spool are full or unwritable")]
pub struct Dropped;

/// Takes finished audit records without ever waiting on the network.
///
/// Both calls return at once: they are made on the request path. `enqueue` stamps the
/// record's `origin` (with a sequence number that counts up per producer) and hands it over.
pub trait RecordSink: Send + Sync + 'static {
    /// Hands a record over. `Err(Dropped)` when it could be neither buffered nor spooled; the
    /// sink has counted the loss.
    fn enqueue(&self, record: AuditRecord) -> Result<Accepted, Dropped>;

    /// Hands over a record borrowed from its rules and call, as the proxy and the layer make
    /// them ([`Match::record_ref`](auditgate_rules::Match::record_ref)). A sink that sends
    /// JSON serialises it as it is; the default copies it into an [`AuditRecord`] for
    /// [`enqueue`](RecordSink::enqueue).
    fn enqueue_ref(&self, record: RecordRef<'_>) -> Result<Accepted, Dropped> {
        self.enqueue(record.into_owned())
    }

    /// Whether a record enqueued now would be kept durably: Redis is reachable and the buffer
    /// has room, or the spool has room. A rule with `on_queue_failure: closed` refuses the
    /// request when this is false.
    fn can_accept(&self) -> bool;

    /// Makes a record durable before the caller acts on it — a `closed` call's received
    /// record, before the call is forwarded — and says when it is: the returned [`Durable`]
    /// resolves to `Ok(seq)` (the `origin.seq` stamped, for the complete record to share;
    /// `0` when the sink stamps none) once Redis acknowledged the record or the spool has it
    /// on disk. The caller decides how long to wait. No default: a sink that wraps another
    /// must pass this on, or `closed` would silently mean less. A sink with nothing more
    /// durable than its `enqueue` answers [`Durable::enqueued`].
    fn enqueue_durable(&self, record: RecordRef<'_>) -> Durable;
}

/// A record that could not be made durable (Redis did not acknowledge it and the spool could
/// not take it), or the sink stopped first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit record could not be made durable")]
pub struct NotDurable;

/// The answer of [`RecordSink::enqueue_durable`]: a future of the record's `origin.seq`.
#[derive(Debug)]
pub struct Durable(DurableState);

#[derive(Debug)]
enum DurableState {
    Ready(Option<Result<u64, NotDurable>>),
    Waiting(tokio::sync::oneshot::Receiver<bool>, u64),
}

impl Durable {
    /// An answer known at once.
    pub fn ready(result: Result<u64, NotDurable>) -> Durable {
        Durable(DurableState::Ready(Some(result)))
    }

    /// The answer of a sink whose `enqueue` is as durable as it gets (memory, a test's sink):
    /// durable when enqueued.
    pub fn enqueued(result: Result<Accepted, Dropped>) -> Durable {
        Durable::ready(result.map(|_| 0).map_err(|_| NotDurable))
    }

    /// An answer a task gives later (`true`: durable) for the record stamped `seq`.
    pub(crate) fn waiting(rx: tokio::sync::oneshot::Receiver<bool>, seq: u64) -> Durable {
        Durable(DurableState::Waiting(rx, seq))
    }

    /// An answer another sink's task gives later on `rx` (`true`: durable), for a sink that
    /// stamps no sequence.
    pub fn from_channel(rx: tokio::sync::oneshot::Receiver<bool>) -> Durable {
        Durable::waiting(rx, 0)
    }
}

impl std::future::Future for Durable {
    type Output = Result<u64, NotDurable>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        match &mut self.0 {
            DurableState::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(NotDurable))),
            DurableState::Waiting(rx, seq) => match std::pin::Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(true)) => Poll::Ready(Ok(*seq)),
                Poll::Ready(_) => Poll::Ready(Err(NotDurable)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: RecordSink> RecordSink for Arc<T> {
    fn enqueue(&self, record: AuditRecord) -> Result<Accepted, Dropped> {
        (**self).enqueue(record)
    }

    fn enqueue_ref(&self, record: RecordRef<'_>) -> Result<Accepted, Dropped> {
        (**self).enqueue_ref(record)
    }

    fn enqueue_durable(&self, record: RecordRef<'_>) -> Durable {
        (**self).enqueue_durable(record)
    }

    fn can_accept(&self) -> bool {
        (**self).can_accept()
    }
}

/// Stamps `origin` on records: one instance name, a sequence counting up from 1.
#[derive(Debug)]
pub(crate) struct OriginStamp {
    origin: OriginJson,
    seq: AtomicU64,
    /// With a spool: the name and sequence kept across restarts (see `origin_file`).
    reservation: Option<Reservation>,
    /// After a crash: the origin with `after_crash`, and the numbers the crashed run may have
    /// used. Records carry it until Redis acknowledges one of this run's.
    crashed: Option<(OriginJson, SeqRange)>,
    announcing: AtomicBool,
}

impl OriginStamp {
    pub(crate) fn new(kind: &str, instance: &str) -> OriginStamp {
        OriginStamp {
            origin: OriginJson::new(kind, instance),
            seq: AtomicU64::new(0),
            reservation: None,
            crashed: None,
            announcing: AtomicBool::new(false),
        }
    }

    /// A stamp that continues the reservation's name and sequence: the first record gets
    /// the number after `previous.used`, and records say `after_crash` when the previous run
    /// crashed.
    pub(crate) fn resuming(
        kind: &str,
        reservation: Reservation,
        previous: Previous,
    ) -> OriginStamp {
        let origin = OriginJson::new(kind, reservation.instance());
        let crashed = previous
            .after_crash
            .map(|range| (origin.after_crash(range), range));
        OriginStamp {
            origin,
            seq: AtomicU64::new(previous.used),
            reservation: Some(reservation),
            announcing: AtomicBool::new(crashed.is_some()),
            crashed,
        }
    }

    /// The origin records get now: with `after_crash` until one of this run's is
    /// acknowledged.
    fn current(&self) -> &OriginJson {
        match &self.crashed {
            Some((crashed, _)) if self.announcing.load(Ordering::Relaxed) => crashed,
            _ => &self.origin,
        }
    }

    /// Redis acknowledged the record stamped `seq`. Once that is one of this run's (not a
    /// spooled record of the crashed run), the crash has reached the writer, and later
    /// records no longer say `after_crash`.
    pub(crate) fn acknowledged(&self, seq: u64) {
        if let Some((_, crashed)) = &self.crashed
            && seq > crashed.to
            && self.announcing.swap(false, Ordering::Relaxed)
            && let Some(reservation) = &self.reservation
        {
            reservation.crash_announced(crashed.to + 1);
        }
    }

    /// Whether records still say `after_crash` (the flusher asks before it looks at seqs).
    pub(crate) fn announcing_crash(&self) -> bool {
        self.announcing.load(Ordering::Relaxed)
    }

    /// Reserves the next block of numbers when the current one is half used (the flusher's
    /// turn, off the request path).
    pub(crate) fn reserve_ahead(&self) {
        if let Some(r) = &self.reservation {
            r.reserve_ahead(self.seq.load(Ordering::Relaxed));
        }
    }

    /// On a clean shutdown: only the numbers used stay reserved, so the next start leaves no
    /// gap.
    pub(crate) fn release(&self) {
        if let Some(r) = &self.reservation
            && let Err(e) = r.release(self.seq.load(Ordering::Relaxed))
        {
            tracing::warn!(error = %e, "cannot record the last origin.seq used; the next start skips the rest of its block");
        }
    }

    pub(crate) fn instance(&self) -> &str {
        self.origin.instance()
    }

    fn next_seq(&self) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(r) = &self.reservation {
            r.cover(seq);
        }
        seq
    }

    /// The record's JSON with this producer's `origin` and the next `seq`.
    pub(crate) fn encode(&self, record: &mut AuditRecord) -> serde_json::Result<Vec<u8>> {
        self.stamp(record);
        serde_json::to_vec(record)
    }

    /// [`OriginStamp::encode`] for a borrowed record: the same bytes, written directly
    /// ([`RecordRef::write_json_with_origin`]).
    pub(crate) fn encode_ref(&self, record: &RecordRef<'_>) -> Vec<u8> {
        self.encode_ref_seq(record).0
    }

    /// [`OriginStamp::encode_ref`], and the `origin.seq` it stamped (the record's own
    /// `origin_seq` when it has one).
    pub(crate) fn encode_ref_seq(&self, record: &RecordRef<'_>) -> (Vec<u8>, u64) {
        let mut json = Vec::with_capacity(1024);
        let seq = record.origin_seq.unwrap_or_else(|| self.next_seq());
        record.write_json_with_origin(&mut json, self.current(), seq);
        (json, seq)
    }

    /// Sets the record's `origin`, for sinks that keep records rather than their JSON.
    pub(crate) fn stamp(&self, record: &mut AuditRecord) {
        record.origin = Some(self.current().with_seq(self.next_seq()));
    }
}

/// A name for this process: `HOSTNAME/XXXX`, four random hex digits telling apart processes on
/// one host (pids are reused; these are not, in practice).
pub(crate) fn default_instance() -> String {
    let host = hostname().unwrap_or_else(|| "localhost".to_owned());
    // The random bits of a UUIDv7.
    let bytes = uuid::Uuid::now_v7().into_bytes();
    format!("{host}/{:02x}{:02x}", bytes[14], bytes[15])
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`): the default
/// name of producer instances and writer consumers.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

/// A sink that keeps records in memory: for tests of the code that produces them.
///
/// ```
/// use auditgate_queue::{MemorySink, RecordSink};
///
/// let sink = MemorySink::new();
/// assert!(sink.can_accept());
/// sink.set_accepting(false);
/// assert!(!sink.can_accept());
/// assert!(sink.records().is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct MemorySink {
    inner: Arc<MemoryInner>,
}

#[derive(Debug)]
struct MemoryInner {
    records: Mutex<Vec<AuditRecord>>,
    accepting: AtomicBool,
    dropped: AtomicU64,
    stamp: OriginStamp,
}

impl MemorySink {
    /// An empty sink that accepts everything.
    pub fn new() -> MemorySink {
        MemorySink {
            inner: Arc::new(MemoryInner {
                records: Mutex::new(Vec::new()),
                accepting: AtomicBool::new(true),
                dropped: AtomicU64::new(0),
                stamp: OriginStamp::new("memory", "memory"),
            }),
        }
    }

    /// Makes the sink refuse (as a queue whose Redis and spool are both unavailable does) or
    /// accept again.
    pub fn set_accepting(&self, accepting: bool) {
        self.inner.accepting.store(accepting, Ordering::SeqCst);
    }

    /// The records taken so far, in order.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.lock().clone()
    }

    /// Removes and returns the records taken so far.
    pub fn take(&self) -> Vec<AuditRecord> {
        std::mem::take(&mut *self.lock())
    }

    /// Records refused while not accepting.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AuditRecord>> {
        // A panic elsewhere while holding the lock leaves a valid Vec: keep using it.
        self.inner
            .records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemorySink {
    fn default() -> Self {
        MemorySink::new()
    }
}

impl RecordSink for MemorySink {
    fn enqueue(&self, mut record: AuditRecord) -> Result<Accepted, Dropped> {
        self.inner.stamp.stamp(&mut record);
        if !self.can_accept() {
            self.inner.dropped.fetch_add(1, Ordering::SeqCst);
            return Err(Dropped);
        }
        self.lock().push(record);
        Ok(Accepted::Buffered)
    }

    fn can_accept(&self) -> bool {
        self.inner.accepting.load(Ordering::SeqCst)
    }

    fn enqueue_durable(&self, record: RecordRef<'_>) -> Durable {
        Durable::enqueued(self.enqueue_ref(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_crash_records_say_so_until_one_of_this_run_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = Reservation::open(dir.path(), None, || "h/1".into()).unwrap();
        drop(first); // a crash: no release
        let (reservation, previous) = Reservation::open(dir.path(), None, || "h/2".into()).unwrap();
        let crashed = previous.after_crash.expect("the crash is known");
        let stamp = OriginStamp::resuming("proxy", reservation, previous);
        let origin_of = |stamp: &OriginStamp| {
            let json = stamp.encode(&mut sample_record()).unwrap();
            serde_json::from_slice::<AuditRecord>(&json)
                .unwrap()
                .origin
                .unwrap()
        };
        let announcing = origin_of(&stamp);
        assert_eq!(announcing.after_crash, Some(crashed));
        assert_eq!(announcing.seq, crashed.to + 1);
        stamp.acknowledged(crashed.to); // a spooled record of the crashed run: not enough
        assert_eq!(origin_of(&stamp).after_crash, Some(crashed));
        stamp.acknowledged(announcing.seq);
        assert_eq!(origin_of(&stamp).after_crash, None, "announced once");
    }

    #[test]
    fn an_encoded_record_is_the_record_with_its_origin_serialised() {
        let stamp = OriginStamp::new("proxy", "host \"a\"/3f2c");
        let mut record = sample_record();
        let first = stamp.encode(&mut record).unwrap();
        let second = stamp.encode(&mut record).unwrap();
        record.origin = Some(auditgate_rules::Origin {
            kind: "proxy".into(),
            instance: "host \"a\"/3f2c".into(),
            after_crash: None,
            seq: 2,
        });
        assert_eq!(second, serde_json::to_vec(&record).unwrap());
        let parsed: AuditRecord = serde_json::from_slice(&first).unwrap();
        assert_eq!(parsed.origin.unwrap().seq, 1);
    }

    #[test]
    fn a_borrowed_record_encodes_as_its_owned_copy() {
        let rules = auditgate_rules::RuleSet::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/generic-rules/media-library.yaml"
        ))
        .unwrap();
        let method = http::Method::PATCH;
        let uri: http::Uri = "/v1/files/abc/details".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user-id", "u_\"1".parse().unwrap());
        headers.insert("user-agent", "curl/8.5.0".parse().unwrap());
        let found = rules.matches(&method, uri.path()).unwrap();
        let mut call = auditgate_rules::Call::new(&method, &uri, &headers);
        call.request_body = Some(br#"{"name":"oak.png"}"#);
        call.response_body = Some(br#"{"filePath":"/forest/oak.png"}"#);
        call.before = Some(br#"{"name":"tree.png","filePath":"/forest/tree.png"}"#);
        call.status = Some(200);
        let borrowed = found.record_ref(&call).unwrap();

        let stamp = OriginStamp::new("layer", "host/1");
        let from_ref = stamp.encode_ref(&borrowed);
        let mut owned = borrowed.into_owned();
        let from_owned = stamp.encode(&mut owned).unwrap();
        // Same text but for the sequence number, which counts up per record.
        let from_ref = String::from_utf8(from_ref).unwrap();
        assert_eq!(
            from_ref.replace(r#""seq":1}"#, r#""seq":2}"#),
            String::from_utf8(from_owned).unwrap()
        );
        let parsed: AuditRecord = serde_json::from_str(&from_ref).unwrap();
        assert_eq!(parsed.resources[0].path.as_deref(), Some("/forest/oak.png"));
        assert_eq!(
            parsed.resources[0].previous_path.as_deref(),
            Some("/forest/tree.png")
        );
        assert_eq!(
            serde_json::Value::Object(parsed.changes),
            serde_json::json!({"name": {"from": "tree.png", "to": "oak.png"}})
        );
    }

    fn sample_record() -> AuditRecord {
        serde_json::from_str(
            r#"{"schema":1,"id":"0193a6f0-7c1e-7d5e-9b1a-2f4c8e9d0a11",
            "time":"2026-11-22T10:00:00.123456Z","duration_ms":3.21,"service":"media-library",
            "operation":"asset.rename","actor":null,"request":{"id":"r1","method":"PATCH",
            "path":"/v1/files/abc"},"resources":[],"response":{"status":200},
            "outcome":"success","details":{"new_name":"tree.png"}}"#,
        )
        .unwrap()
    }
}
