//! Where records end up: one [`Store`] trait, an SQLite and a PostgreSQL implementation with the
//! same behaviour.
//!
//! Both keep each record's JSON as it arrived, beside the columns the filters use (time,
//! operation, actor, request ID, outcome, origin) and a `resources` table with one row per
//! resource id and per resource path, since one record can touch many resources (SQLite groups
//! those rows in buckets of 65 536 records; see `sqlite.rs`). Records are
//! ordered by `(time, seq)`, `seq` being the store's own insertion counter, which makes keyset
//! pagination exact: no duplicate and no gap between pages, whatever arrives meanwhile.

use std::borrow::Cow;

use auditgate_rules::{AuditRecord, Outcome};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

mod postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::{SqliteStore, Synchronous};

/// A filter on `operation`: exact, or every operation under a prefix (`asset.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationFilter {
    /// This operation only.
    Exact(String),
    /// Operations starting with this text (written `asset.*`, held as `asset.`).
    Prefix(String),
}

/// Newest first (the log) or oldest first (a resource's history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Newest first.
    #[default]
    NewestFirst,
    /// Oldest first.
    OldestFirst,
}

/// A position in the `(time, seq)` order: where the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Microseconds since the Unix epoch of the last record returned.
    pub time_us: i64,
    /// Its store sequence number.
    pub seq: i64,
}

/// What to select.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// `operation=`: any of these (none: every operation).
    pub operation: Vec<OperationFilter>,
    /// `actor=`: the actor's id.
    pub actor: Option<String>,
    /// `resource=`: a resource id, `TYPE:ID` or path.
    pub resource: Option<String>,
    /// Every name the asked resource has gone by ([`Store::linked`]): when set, records that
    /// name any of them are selected, instead of `resource` alone (one history per asset).
    pub resource_names: Vec<String>,
    /// `request_id=`
    pub request_id: Option<String>,
    /// `tenant=`, or the one tenant a token is scoped to.
    pub tenant: Option<String>,
    /// `service=`
    pub service: Option<String>,
    /// `outcome=`
    pub outcome: Option<Outcome>,
    /// `since=`: at or after.
    pub since: Option<DateTime<Utc>>,
    /// `until=`: at or before (both ends of an interval are inclusive, as a person reading
    /// "from 10:00 to 10:05" means them).
    pub until: Option<DateTime<Utc>>,
    /// Records per page.
    pub limit: usize,
    /// Continue after this position.
    pub cursor: Option<Cursor>,
    /// Which end first.
    pub order: Order,
}

/// One page of records.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The records' JSON, as stored.
    pub records: Vec<String>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<Cursor>,
}

/// Sequence numbers a producer instance is missing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// `origin.instance`
    pub instance: String,
    /// First missing `origin.seq`.
    pub from: i64,
    /// Last missing `origin.seq`.
    pub to: i64,
    /// When the instance's newest stored record was made (RFC 3339, UTC): an instance still
    /// running is seen again and again; a gap behind one last seen long ago is what a crash
    /// or a removed instance left. A producer with a spool continues its instance after a
    /// crash, skipping the rest of its reserved block of numbers, so a gap it left is an
    /// upper bound of the records lost.
    pub last_seen: String,
    /// Whether a crash left this gap: the instance restarted after a crash, and this range
    /// lies among the numbers its crashed run may have used (`origin.after_crash`). The size
    /// is then an upper bound of the records lost, not a count; otherwise each number is one
    /// record lost (dropped and logged with its range, or refused by Redis).
    pub left_by_crash: bool,
}

impl Gap {
    /// A gap from its row: instance, first and last missing seq, the instance's newest time.
    pub(crate) fn of(instance: String, from: i64, to: i64, last_us: i64, crash: bool) -> Gap {
        let last_seen = DateTime::<Utc>::from_timestamp_micros(last_us)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        Gap {
            instance,
            from,
            to,
            last_seen,
            left_by_crash: crash,
        }
    }
}

/// A store error: the database said no, or the data is not what it should be.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL, with the server's own message, code and constraint when it sent them.
    #[error("postgres: {}", describe_postgres(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The `store:` setting is not a store this writer knows.
    #[error(
        "store {0:?}: use sqlite://PATH (optionally ?synchronous=normal) or postgres://USER@HOST/DB"
    )]
    Url(String),
    /// Anything else (a worker thread gone, a bad value).
    #[error("{0}")]
    Other(String),
    /// A record the store cannot take whatever it tries (its JSON cannot be made canonical
    /// for the chain): set aside in the dead letters, not retried.
    #[error("{0}")]
    Refused(String),
}

impl StoreError {
    /// Whether the store refused the data (a value it cannot hold, a constraint, a limit)
    /// rather than failed to take it (gone, busy, out of space): what was refused is refused
    /// again on every retry, so the writer finds the record and sets it aside instead of
    /// retrying forever; anything else is retried, since it passes.
    pub fn refuses_data(&self) -> bool {
        match self {
            StoreError::Postgres(e) => e.code().is_some_and(|code| {
                // Classes 22 (data exception: bad encoding, NUL, out of range), 23 (integrity
                // constraint) and 54 (program limit exceeded: an index row too large).
                let class = &code.code()[..2];
                matches!(class, "22" | "23" | "54")
            }),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => matches!(
                failure.code,
                rusqlite::ErrorCode::ConstraintViolation
                    | rusqlite::ErrorCode::TooBig
                    | rusqlite::ErrorCode::TypeMismatch
            ),
            StoreError::Sqlite(rusqlite::Error::ToSqlConversionFailure(_)) => true,
            StoreError::Refused(_) => true,
            _ => false,
        }
    }
}

impl StoreError {
    /// What makes two errors the same one for the log: the text without the parts that
    /// differ from record to record (PostgreSQL's `detail`, which quotes the failing row).
    pub fn distinct(&self) -> String {
        match self {
            StoreError::Postgres(e) => match e.as_db_error() {
                Some(db) => format!(
                    "{} {} {}",
                    db.code().code(),
                    db.constraint().unwrap_or_default(),
                    db.message()
                ),
                None => self.to_string(),
            },
            _ => self.to_string(),
        }
    }
}

/// A PostgreSQL error as an operator needs it: the server's severity, SQLSTATE, message,
/// detail, hint and the constraint, table and column involved; for an error of the client
/// side (a lost connection, a timeout), its chain of causes. `tokio_postgres::Error`'s own
/// `Display` says only "db error".
fn describe_postgres(e: &tokio_postgres::Error) -> String {
    use std::fmt::Write as _;
    let Some(db) = e.as_db_error() else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
        return text;
    };
    let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    for (label, value) in [
        ("detail", db.detail()),
        ("hint", db.hint()),
        ("constraint", db.constraint()),
        ("table", db.table()),
        ("column", db.column()),
    ] {
        if let Some(value) = value {
            let _ = write!(text, "; {label}: {value}");
        }
    }
    text
}

/// The longest value an indexed column holds, in bytes. PostgreSQL refuses a B-tree index
/// row over 2 704 bytes, and the actor, request ID and resource indexes carry the time and
/// sequence besides the value; a value this long is not one anybody types into a filter.
pub const MAX_INDEXED_BYTES: usize = 512;

/// A value as an indexed column holds it, valid in every store: control characters (NUL
/// among them, which PostgreSQL refuses in text) written as `\u00XX` and backslashes
/// doubled, so that distinct values stay distinct; a value over [`MAX_INDEXED_BYTES`] cut at
/// a character boundary and marked with `…[cut <hash>]`, the SHA-256 prefix of the whole
/// value, so that it stays distinct too and a filter on the whole value still finds it. The
/// record's JSON keeps the value whole. Filters go through the same function, so
/// `actor=<the raw value>` finds the record.
///
/// ```
/// use auditgate_writer::store::indexed;
/// assert_eq!(indexed("u_123"), "u_123");
/// assert_eq!(indexed("a\0b"), "a\\u0000b");
/// let long = "x".repeat(3000);
/// assert!(indexed(&long).len() <= auditgate_writer::store::MAX_INDEXED_BYTES);
/// assert!(indexed(&long).contains("…[cut "));
/// ```
pub fn indexed(value: &str) -> Cow<'_, str> {
    let escaped = escaped(value);
    if escaped.len() <= MAX_INDEXED_BYTES {
        return escaped;
    }
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let digest = sha2::Sha256::digest(value.as_bytes());
    let mut mark = String::from("…[cut ");
    for byte in &digest[..8] {
        let _ = write!(mark, "{byte:02x}");
    }
    mark.push(']');
    let mut end = MAX_INDEXED_BYTES - mark.len();
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = escaped[..end].to_owned();
    cut.push_str(&mark);
    Cow::Owned(cut)
}

/// `value` with control characters as `\u00XX` and backslashes doubled.
fn escaped(value: &str) -> Cow<'_, str> {
    let plain = |c: char| !c.is_control() && c != '\\';
    if value.chars().all(plain) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if plain(c) {
            out.push(c);
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            use std::fmt::Write as _;
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
    }
    Cow::Owned(out)
}

fn indexed_owned(value: &str) -> String {
    indexed(value).into_owned()
}

/// A chain's last link, as the store keeps it (`chain_heads`), or a retention cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The chain.
    pub uid: String,
    /// Its last link's `seq` (0: nothing chained yet).
    pub seq: u64,
    /// That link's hash.
    pub hash: [u8; 32],
}

impl ChainHead {
    /// A chain with no link yet.
    pub fn empty(uid: &str) -> ChainHead {
        ChainHead {
            uid: uid.to_owned(),
            seq: 0,
            hash: crate::chain::GENESIS,
        }
    }

    /// A head from its stored columns (the hash in hex).
    pub(crate) fn read(uid: String, seq: i64, hash: &str) -> Result<ChainHead, StoreError> {
        let hash = crate::chain::unhex32(hash)
            .ok_or_else(|| StoreError::Other(format!("chain {uid}: a stored hash is not hex")))?;
        Ok(ChainHead {
            uid,
            seq: seq.max(0) as u64,
            hash,
        })
    }

    /// The link after this head for a record whose canonical JSON is `canonical`.
    pub fn next(&self, canonical: &[u8]) -> crate::chain::Link {
        let head = (self.seq > 0).then_some((self.seq, self.hash));
        crate::chain::Link::after(head, &self.uid, canonical)
    }

    /// Moves the head to `link`.
    pub fn advance(&mut self, link: &crate::chain::Link) {
        self.seq = link.seq;
        self.hash = link.hash;
    }
}

/// The hash retention may sign at a cut, when the cut's link holds up: the record's own hash,
/// its own `time` (the JSON's, not the indexed column a database writer could change) older
/// than `before`, and the next link, if any, chained after it and not older. Otherwise
/// `None`, and nothing is cut.
pub(crate) fn checked_cut(
    cut: &str,
    next: Option<&str>,
    before: DateTime<Utc>,
) -> Option<[u8; 32]> {
    let time = |s: &crate::chain::Stored| {
        s.record
            .get("time")
            .and_then(|t| t.as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let stored = crate::chain::Stored::parse(cut).ok()?;
    if stored.recomputed != stored.link.hash || time(&stored)? >= before {
        tracing::warn!(chain = %stored.link.uid, link = stored.link.seq, "retention: the link at the cut does not hold; nothing cut");
        return None;
    }
    if let Some(next) = next {
        let after = crate::chain::Stored::parse(next).ok()?;
        if after.link.prev != stored.link.hash || after.recomputed != after.link.hash {
            tracing::warn!(chain = %stored.link.uid, link = after.link.seq, "retention: the link after the cut does not hold; nothing cut");
            return None;
        }
    }
    Some(stored.link.hash)
}

/// A stored row as `verify` reads it, in store order.
#[derive(Debug, Clone)]
pub struct ScannedRow {
    /// The row's place in the store (its table's own sequence).
    pub store_seq: i64,
    /// The stored JSON.
    pub json: String,
    /// The chain columns, where the row was chained.
    pub chain: Option<(String, i64)>,
    /// The indexed columns as stored, for a live record (`None` for a superseded one).
    pub columns: Option<Columns>,
}

/// What the filters read instead of the JSON: a change to one of them is a change to the
/// record, as far as a reader of the page is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// `id`.
    pub id: String,
    /// `time` in microseconds.
    pub time_us: i64,
    /// `operation`.
    pub operation: String,
    /// `actor.id`.
    pub actor: Option<String>,
    /// `request.id`.
    pub request_id: String,
    /// `outcome`.
    pub outcome: String,
    /// `tenant`.
    pub tenant: Option<String>,
}

impl Columns {
    /// The columns a record's JSON gives, as the store fills them.
    pub fn of(record: &AuditRecord, json: &str) -> Columns {
        let row = Row::of(&Incoming::new(record.clone(), json.to_owned()));
        Columns {
            id: row.id,
            time_us: row.time_us,
            operation: row.operation,
            actor: row.actor,
            request_id: row.request_id,
            outcome: row.outcome.to_owned(),
            tenant: row.tenant,
        }
    }
}

/// A record about to be chained: its canonical JSON (what the hash covers) and where it stands.
pub(crate) struct Chained {
    pub(crate) canonical: crate::chain::Canonical,
}

impl Chained {
    /// Each record's canonical JSON (made ahead, or now); a record whose JSON does not read
    /// is refused whole.
    pub(crate) fn all(records: &[Incoming]) -> Result<Vec<Chained>, StoreError> {
        records
            .iter()
            .map(|r| match &r.canonical {
                Some(canonical) => Ok(Chained {
                    canonical: canonical.clone(),
                }),
                None => crate::chain::Canonical::of(&r.json)
                    .map(|canonical| Chained { canonical })
                    .map_err(|e| StoreError::Refused(e.to_string())),
            })
            .collect()
    }
}

/// What the writer needs from a database.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts the records whose `id` is not stored yet, durably, before returning: in one
    /// transaction (PostgreSQL splits a large batch into two, committed side by side). After an
    /// error some of them may be stored; inserting the same records again is always safe.
    /// Returns how many were new (the rest were duplicates of records already stored).
    async fn insert(&self, records: &[Incoming]) -> Result<usize, StoreError>;

    /// One page of the records the query selects.
    async fn query(&self, query: &Query) -> Result<Page, StoreError>;

    /// One record by its `id`.
    async fn get(&self, id: &str) -> Result<Option<String>, StoreError>;

    /// Every record the query selects (its `limit` and `cursor` ignored), streamed page by
    /// page (each record's stored JSON) in bounded memory; the caller chooses the format
    /// ([`crate::export`]).
    fn export(&self, query: Query) -> mpsc::Receiver<Result<Vec<String>, StoreError>>;

    /// For each producer instance, the ranges of `origin.seq` not in the store.
    async fn gaps(&self) -> Result<Vec<Gap>, StoreError>;

    /// Deletes records older than `before`; returns how many. A chained record goes only when
    /// its chain has a cut in `cuts` at or after it (see `retention_cuts`), which becomes the
    /// chain's floor; the caller signs each cut first.
    async fn delete_before(
        &self,
        before: DateTime<Utc>,
        cuts: &[ChainHead],
    ) -> Result<u64, StoreError>;

    /// How many records are stored.
    async fn count(&self) -> Result<u64, StoreError>;

    /// The distinct operations stored, sorted (for the page's operation filter).
    async fn operations(&self, tenant: Option<&str>) -> Result<Vec<String>, StoreError>;

    /// Every name a resource has gone by, starting from `name` (an id, a `TYPE:ID` or a path)
    /// and following the links records made (a `TYPE:ID` and its path, a path and its
    /// `previous_path`): `name` included, at most [`MAX_LINKED`].
    async fn linked(&self, name: &str) -> Result<Vec<String>, StoreError>;

    /// Refreshes the planner's statistics (`ANALYZE`), so that each filter uses its index.
    /// The writer calls it at start and hourly.
    async fn optimize(&self) -> Result<(), StoreError>;

    /// From now on, chains what `insert` stores as chain `uid` (crate::chain), continuing
    /// the chain where the store left it. Returns its head.
    async fn chain_as(&self, uid: &str) -> Result<ChainHead, StoreError>;

    /// Whether `insert` chains (so that the writer makes canonical JSON as it reads).
    fn chains(&self) -> bool {
        false
    }

    /// Every chain's head, as stored.
    async fn chain_heads(&self) -> Result<Vec<ChainHead>, StoreError>;

    /// Where retention may cut each chain so that no link newer than `before` goes: the
    /// newest link with every link up to it older than `before` (and that link's hash), for
    /// each chain that has one.
    async fn retention_cuts(&self, before: DateTime<Utc>) -> Result<Vec<ChainHead>, StoreError>;

    /// Up to `limit` rows after `after`, in store order: the live records, or (`superseded`)
    /// the received records a complete one replaced, which keep their place in the chain.
    async fn scan(
        &self,
        superseded: bool,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ScannedRow>, StoreError>;

    /// Keeps a signed checkpoint.
    async fn save_checkpoint(
        &self,
        checkpoint: &crate::chain::Checkpoint,
        note: &str,
    ) -> Result<(), StoreError>;

    /// Every checkpoint kept, oldest first.
    async fn checkpoints(&self) -> Result<Vec<String>, StoreError>;

    /// The retention floors: per chain, the link up to which retention has deleted.
    async fn chain_floors(&self) -> Result<Vec<ChainHead>, StoreError>;
}

/// Opens the store a `store:` URL names, creating or migrating its schema.
pub async fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let (path, options) = rest.split_once('?').unwrap_or((rest, ""));
        let synchronous = match options {
            "" | "synchronous=full" => Synchronous::Full,
            "synchronous=normal" => Synchronous::Normal,
            _ => return Err(StoreError::Url(url.to_owned())),
        };
        Ok(Box::new(SqliteStore::open_with(path, synchronous)?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Box::new(PostgresStore::connect(url).await?))
    } else {
        Err(StoreError::Url(url.to_owned()))
    }
}

/// A record to store, with the JSON it arrived as (kept as it is).
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The parsed record: where the indexed columns come from.
    pub record: AuditRecord,
    /// Its JSON, stored and served unchanged (with its chain link added, when chained).
    pub json: String,
    /// Its canonical JSON, when made ahead ([`Incoming::canonicalized`]): a chaining store
    /// makes it otherwise, on its commit's path.
    pub canonical: Option<crate::chain::Canonical>,
}

impl Incoming {
    /// A record and its JSON as queued.
    pub fn new(record: AuditRecord, json: String) -> Incoming {
        Incoming {
            record,
            json,
            canonical: None,
        }
    }

    /// A record, serialised here.
    pub fn from_record(record: AuditRecord) -> Result<Incoming, StoreError> {
        let json = serde_json::to_string(&record).map_err(|e| StoreError::Other(e.to_string()))?;
        Ok(Incoming::new(record, json))
    }

    /// With its canonical JSON made now: the writer does it as it reads, beside the commit
    /// in flight, not on the commit's path.
    pub fn canonicalized(mut self) -> Incoming {
        self.canonical = crate::chain::Canonical::of(&self.json).ok();
        self
    }
}

/// A record as the stores file it: its JSON and the columns the filters use.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) time_us: i64,
    pub(crate) json: String,
    pub(crate) operation: String,
    pub(crate) actor: Option<String>,
    pub(crate) request_id: String,
    pub(crate) outcome: &'static str,
    pub(crate) status: Option<i32>,
    pub(crate) instance: Option<String>,
    pub(crate) origin_seq: Option<i64>,
    /// The record's `tenant`: a column of its own, indexed, since a tenant's token filters on
    /// it in every query.
    pub(crate) tenant: Option<String>,
    /// `origin.after_crash`: the producer restarted after a crash whose run may have used
    /// these numbers.
    pub(crate) after_crash: Option<(i64, i64)>,
    /// Resource ids, `TYPE:ID`s, paths and previous paths, each once.
    pub(crate) keys: Vec<String>,
    /// Names of one resource, to link (each pair once, in both directions): a `TYPE:ID` and
    /// the path the same entry gives it, a path and its `previous_path`.
    pub(crate) links: Vec<(String, String)>,
}

impl Row {
    pub(crate) fn of(incoming: &Incoming) -> Row {
        let Incoming { record, json, .. } = incoming;
        let json = json.clone();
        let mut keys: Vec<String> = Vec::new();
        let mut links: Vec<(String, String)> = Vec::new();
        for r in &record.resources {
            let typed =
                r.id.as_ref()
                    .map(|id| indexed_owned(&format!("{}:{id}", r.kind)));
            let path = r.path.as_deref().map(indexed_owned);
            let previous = r.previous_path.as_deref().map(indexed_owned);
            keys.extend(r.id.as_deref().map(indexed_owned));
            keys.extend(typed.iter().chain(&path).chain(&previous).cloned());
            if let (Some(typed), Some(path)) = (&typed, &path) {
                links.push((typed.clone(), path.clone()));
            }
            if let (Some(path), Some(previous)) = (&path, &previous)
                && path != previous
            {
                links.push((path.clone(), previous.clone()));
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let mut links: Vec<(String, String)> = links
            .iter()
            .flat_map(|(a, b)| [(a.clone(), b.clone()), (b.clone(), a.clone())])
            .collect();
        links.sort_unstable();
        links.dedup();
        Row {
            id: record.id.to_string(),
            time_us: record.time.timestamp_micros(),
            json,
            operation: indexed_owned(&record.operation),
            actor: (record.actor.as_ref())
                .and_then(|a| a.id.as_deref())
                .map(indexed_owned),
            request_id: indexed_owned(&record.request.id),
            outcome: record.outcome.as_str(),
            status: record.response.status.map(i32::from),
            instance: record.origin.as_ref().map(|o| indexed_owned(&o.instance)),
            tenant: record.tenant.as_deref().map(indexed_owned),
            origin_seq: record.origin.as_ref().map(|o| o.seq as i64),
            after_crash: (record.origin.as_ref())
                .and_then(|o| o.after_crash)
                .map(|c| (saturating_i64(c.from), saturating_i64(c.to))),
            keys,
            links,
        }
    }

    pub(crate) fn all(records: &[Incoming]) -> Vec<Row> {
        records.iter().map(Row::of).collect()
    }

    /// The rows with one per `id`: the complete record where a received one (outcome
    /// `unknown`) has it too, else the first.
    pub(crate) fn one_per_id(rows: Vec<Row>) -> Vec<Row> {
        let mut kept: Vec<Row> = Vec::with_capacity(rows.len());
        let mut at: std::collections::HashMap<String, usize> =
            std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            match at.get(&row.id) {
                Some(&i) => {
                    if kept[i].outcome == "unknown" && row.outcome != "unknown" {
                        kept[i] = row;
                    }
                }
                None => {
                    at.insert(row.id.clone(), kept.len());
                    kept.push(row);
                }
            }
        }
        kept
    }
}

impl Cursor {
    /// `TIME-SEQ`, opaque to clients.
    pub fn encode(&self) -> String {
        format!("{}-{}", self.time_us, self.seq)
    }

    /// Reads what [`Cursor::encode`] wrote.
    pub fn decode(text: &str) -> Option<Cursor> {
        let (time, seq) = text.rsplit_once('-')?;
        Some(Cursor {
            time_us: time.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl OperationFilter {
    /// `asset.*` is a prefix, anything else exact.
    pub fn parse(text: &str) -> OperationFilter {
        match text.strip_suffix('*') {
            Some(prefix) => OperationFilter::Prefix(prefix.to_owned()),
            None => OperationFilter::Exact(text.to_owned()),
        }
    }

    /// `operation=asset.rename,tag.*`: alternatives, separated by commas (an operation name
    /// holds none: rule files refuse it), blanks around them ignored.
    pub fn parse_list(text: &str) -> Vec<OperationFilter> {
        text.split(',')
            .map(str::trim)
            .filter(|one| !one.is_empty())
            .map(OperationFilter::parse)
            .collect()
    }
}

/// A query parameter, before a store turns it into its driver's type.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
}

/// How a store writes its placeholders and the prefix test of `operation`.
pub(crate) struct Dialect {
    /// The placeholder of the `n`th parameter (1-based): `?` or `$n`.
    pub(crate) placeholder: fn(usize) -> String,
    /// The column expression a prefix range compares.
    pub(crate) prefix_column: &'static str,
    /// What identifies a record to `resource_rows`: `r.seq`, or `(r.time_us, r.seq)` where
    /// that is the key (PostgreSQL's partitions).
    pub(crate) resource_columns: &'static str,
    /// The records of one resource key, as `resource_columns`: this text, then the key's
    /// placeholder.
    pub(crate) resource_rows: &'static str,
    /// A top-level string member of the stored record's JSON (`tenant`, `service`).
    pub(crate) json_member: fn(&str) -> String,
}

/// The SQL of one page of `query` (one row more than the limit, to know whether another page
/// follows) and its parameters: the one place that turns filters into SQL for both stores.
pub(crate) fn page_sql(query: &Query, dialect: &Dialect) -> (String, Vec<Param>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let mut bind = |param: Param| {
        params.push(param);
        (dialect.placeholder)(params.len())
    };
    // Several operations are alternatives: one OR group, each an index range or probe.
    let mut alternatives: Vec<String> = Vec::new();
    for filter in &query.operation {
        match filter {
            OperationFilter::Exact(op) => {
                alternatives.push(format!(
                    "r.operation = {}",
                    bind(Param::Text(indexed_owned(op)))
                ));
            }
            OperationFilter::Prefix(prefix) => {
                let column = dialect.prefix_column;
                // Escaped but not cut: a prefix is a beginning, not a whole value.
                let prefix = escaped(prefix).into_owned();
                let from = format!("{column} >= {}", bind(Param::Text(prefix.clone())));
                alternatives.push(match prefix_end(&prefix) {
                    Some(end) => format!("({from} AND {column} < {})", bind(Param::Text(end))),
                    None => from,
                });
            }
        }
    }
    if !alternatives.is_empty() {
        clauses.push(format!("({})", alternatives.join(" OR ")));
    }
    if let Some(actor) = &query.actor {
        clauses.push(format!(
            "r.actor = {}",
            bind(Param::Text(indexed_owned(actor)))
        ));
    }
    if !query.resource_names.is_empty() {
        let names: Vec<String> = (query.resource_names.iter())
            .map(|name| bind(Param::Text(indexed_owned(name))))
            .collect();
        // The rows of each name, one probe each (`resource_rows` ends in `key = `).
        let probes: Vec<String> = names
            .iter()
            .map(|p| format!("{}{p}", dialect.resource_rows))
            .collect();
        clauses.push(format!(
            "{} IN ({})",
            dialect.resource_columns,
            probes.join(" UNION ")
        ));
    } else if let Some(resource) = &query.resource {
        clauses.push(format!(
            "{} IN ({}{})",
            dialect.resource_columns,
            dialect.resource_rows,
            bind(Param::Text(indexed_owned(resource)))
        ));
    }
    if let Some(request_id) = &query.request_id {
        clauses.push(format!(
            "r.request_id = {}",
            bind(Param::Text(indexed_owned(request_id)))
        ));
    }
    if let Some(tenant) = &query.tenant {
        clauses.push(format!(
            "r.tenant = {}",
            bind(Param::Text(indexed_owned(tenant)))
        ));
    }
    if let Some(service) = &query.service {
        clauses.push(format!(
            "{} = {}",
            (dialect.json_member)("service"),
            bind(Param::Text(service.clone()))
        ));
    }
    if let Some(outcome) = query.outcome {
        clauses.push(format!(
            "r.outcome = {}",
            bind(Param::Text(outcome.as_str().to_owned()))
        ));
    }
    if let Some(since) = query.since {
        clauses.push(format!(
            "r.time_us >= {}",
            bind(Param::Int(since.timestamp_micros()))
        ));
    }
    if let Some(until) = query.until {
        clauses.push(format!(
            "r.time_us <= {}",
            bind(Param::Int(until.timestamp_micros()))
        ));
    }
    let (cmp, order) = match query.order {
        Order::NewestFirst => ("<", "ORDER BY r.time_us DESC, r.seq DESC"),
        Order::OldestFirst => (">", "ORDER BY r.time_us ASC, r.seq ASC"),
    };
    if let Some(c) = query.cursor {
        let time = bind(Param::Int(c.time_us));
        let seq = bind(Param::Int(c.seq));
        clauses.push(format!("(r.time_us, r.seq) {cmp} ({time}, {seq})"));
    }
    let where_ = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let sql = format!(
        "SELECT r.time_us, r.seq, r.record FROM records r {where_} {order} LIMIT {}",
        query.limit + 1
    );
    (sql, params)
}

/// A producer's `u64` as a column value: the largest `i64` stands for anything beyond.
fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Missing `origin.seq` ranges per instance, above what retention deleted from that instance
/// (`origin_floor`), with the time of the instance's newest record and whether a restart
/// after a crash names a number inside the gap (`origin_crashes`). The same SQL runs on
/// SQLite and PostgreSQL.
pub(crate) const GAPS_SQL: &str = "WITH s AS (
    SELECT origin_instance AS instance, origin_seq AS seq, time_us,
           LAG(origin_seq) OVER (PARTITION BY origin_instance ORDER BY origin_seq) AS prev
    FROM records WHERE origin_instance IS NOT NULL
), seen AS (
    SELECT instance, MAX(time_us) AS last_us FROM s GROUP BY instance
)
SELECT s.instance, COALESCE(s.prev, f.seq, 0) + 1 AS gap_from, s.seq - 1 AS gap_to,
       seen.last_us,
       EXISTS (SELECT 1 FROM origin_crashes c WHERE c.instance = s.instance
               AND c.from_seq <= s.seq - 1 AND c.to_seq >= COALESCE(s.prev, f.seq, 0) + 1) AS crash
FROM s LEFT JOIN origin_floor f ON f.instance = s.instance
JOIN seen ON seen.instance = s.instance
WHERE s.seq > COALESCE(s.prev, f.seq, 0) + 1
ORDER BY s.instance, gap_from";

/// How many names one history follows at most: an asset renamed and moved hundreds of times
/// is followed through its latest hundreds of names; beyond, the history is the asset's
/// under those names (a bound, so that a path every upload reuses cannot pull in the store).
pub const MAX_LINKED: usize = 256;

/// The names linked to `$1`/`?`, transitively: `UNION` (not `ALL`) drops what was seen, so
/// cycles end. The same SQL runs on SQLite and PostgreSQL.
pub(crate) const LINKED_SQL: &str = "WITH RECURSIVE linked(name) AS (
    SELECT CAST(?1 AS TEXT)
    UNION
    SELECT l.b FROM resource_links l JOIN linked ON l.a = linked.name
) SELECT name FROM linked LIMIT 256";

/// Distinct operations by skipping through the operation index: one seek per operation, not
/// a scan of every record. The same SQL runs on SQLite and PostgreSQL.
pub(crate) const OPERATIONS_SQL: &str = "WITH RECURSIVE ops(op) AS (
    SELECT MIN(operation) FROM records
    UNION ALL
    SELECT (SELECT MIN(operation) FROM records WHERE operation > ops.op) FROM ops WHERE op IS NOT NULL
) SELECT op FROM ops WHERE op IS NOT NULL";

/// The smallest string greater than every string starting with `prefix`: the exclusive upper
/// bound of a prefix range, so that prefix search uses the operation index.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_urls_name_their_durability() {
        let dir = tempfile::tempdir().unwrap();
        let at = |q: &str| format!("sqlite://{}{q}", dir.path().join("a.db").display());
        assert!(open(&at("")).await.is_ok());
        assert!(open(&at("?synchronous=normal")).await.is_ok());
        assert!(open(&at("?synchronous=full")).await.is_ok());
        let Err(e) = open(&at("?synchronous=off")).await else {
            panic!("an unknown option is refused")
        };
        assert!(e.to_string().contains("?synchronous=normal"), "{e}");
    }

    #[test]
    fn indexed_values_are_valid_everywhere_and_stay_distinct() {
        let values = [
            "plain",
            "a\0b",
            "a\\u0000b",
            "tab\there",
            "é\u{7f}",
            &"y".repeat(MAX_INDEXED_BYTES),
            &"y".repeat(MAX_INDEXED_BYTES + 1),
            &"é".repeat(2000),
            &format!("{}\0", "z".repeat(600)),
        ];
        let mut seen = std::collections::HashSet::new();
        for value in values {
            let kept = indexed(value);
            assert!(kept.len() <= MAX_INDEXED_BYTES, "{} bytes", kept.len());
            assert!(!kept.chars().any(char::is_control), "{kept:?}");
            assert!(seen.insert(kept.into_owned()), "{value:?} collides");
        }
        assert_eq!(indexed("plain"), "plain");
        assert!(matches!(indexed("plain"), Cow::Borrowed(_)));
        assert_eq!(
            indexed(&"y".repeat(MAX_INDEXED_BYTES)),
            "y".repeat(MAX_INDEXED_BYTES)
        );
        assert!(indexed(&"y".repeat(MAX_INDEXED_BYTES + 1)).contains("…[cut "));
    }

    #[test]
    fn prefix_bounds_and_cursors() {
        assert_eq!(prefix_end("asset.").as_deref(), Some("asset/"));
        assert_eq!(
            OperationFilter::parse("asset.*"),
            OperationFilter::Prefix("asset.".into())
        );
        assert_eq!(
            OperationFilter::parse("asset.rename"),
            OperationFilter::Exact("asset.rename".into())
        );
        assert_eq!(
            OperationFilter::parse_list(" asset.rename, tag.*,,"),
            vec![
                OperationFilter::Exact("asset.rename".into()),
                OperationFilter::Prefix("tag.".into())
            ]
        );
        let c = Cursor {
            time_us: 1_795_000_000_000_000,
            seq: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("nonsense"), None);
    }
}
