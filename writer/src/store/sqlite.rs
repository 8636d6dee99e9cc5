//! The embedded store: one SQLite file in WAL mode. One connection writes, another reads;
//! exports open their own, so a long download never holds up the writer or the page.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;

use super::{
    ChainHead, Chained, Columns, Cursor, Dialect, GAPS_SQL, Gap, Incoming, LINKED_SQL,
    OPERATIONS_SQL, Page, Param, Query, Row, ScannedRow, Store, StoreError, page_sql,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS records (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    time_us         INTEGER NOT NULL,
    operation       TEXT    NOT NULL,
    actor           TEXT,
    request_id      TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    status          INTEGER,
    origin_instance TEXT,
    origin_seq      INTEGER,
    record          TEXT    NOT NULL,
    tenant          TEXT,
    chain_uid       TEXT,
    chain_seq       INTEGER
);
CREATE INDEX IF NOT EXISTS records_time      ON records (time_us, seq);
CREATE INDEX IF NOT EXISTS records_tenant    ON records (tenant, time_us, seq);
CREATE INDEX IF NOT EXISTS records_operation ON records (operation, time_us, seq);
CREATE INDEX IF NOT EXISTS records_actor     ON records (actor, time_us, seq);
CREATE INDEX IF NOT EXISTS records_request   ON records (request_id);
-- No index on outcome: it is rarely selective, and without statistics SQLite would prefer it
-- over a selective one (actor) in combined filters. Outcome filters scan the time index.
DROP INDEX IF EXISTS records_outcome;
CREATE INDEX IF NOT EXISTS records_origin    ON records (origin_instance, origin_seq);
-- One row per resource id and path a record names. Keys are random, and a B-tree that takes
-- random keys rewrites most of its pages at each commit once it outgrows the commit: so the
-- rows are grouped by the record's bucket (seq / 65536), and only the newest bucket's part of
-- the tree is written to. A lookup probes each bucket (one seek each, listed in
-- resource_buckets): at ten million records, about 150 seeks.
CREATE TABLE IF NOT EXISTS resources (
    bucket     INTEGER NOT NULL,
    key        TEXT    NOT NULL,
    record_seq INTEGER NOT NULL REFERENCES records (seq) ON DELETE CASCADE,
    PRIMARY KEY (bucket, key, record_seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS resources_record ON resources (record_seq);
CREATE TABLE IF NOT EXISTS resource_buckets (bucket INTEGER PRIMARY KEY);
-- The highest origin.seq retention has deleted, per instance: what lies below is not a gap.
CREATE TABLE IF NOT EXISTS origin_floor (
    instance TEXT PRIMARY KEY,
    seq      INTEGER NOT NULL
);
-- Names of one resource (a TYPE:ID and its path, a path and its previous path), each pair in
-- both directions: a history follows them from any name to the others.
CREATE TABLE IF NOT EXISTS resource_links (
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    PRIMARY KEY (a, b)
) WITHOUT ROWID;
-- Crashes the restarted producers announced (`origin.after_crash`): the origin.seq numbers
-- each crashed run may have used. A gap among them was left by the crash.
CREATE TABLE IF NOT EXISTS origin_crashes (
    instance TEXT    NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq   INTEGER NOT NULL,
    PRIMARY KEY (instance, from_seq, to_seq)
);
-- The evidence (crate::chain): each chain's head, the received records a complete one
-- replaced (they keep their link), retention's cuts, and the signed checkpoints.
CREATE TABLE IF NOT EXISTS chain_heads (
    uid  TEXT    PRIMARY KEY,
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_superseded (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    chain_uid TEXT    NOT NULL,
    chain_seq INTEGER NOT NULL,
    record    TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_floors (
    uid  TEXT    PRIMARY KEY,
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    uid       TEXT    NOT NULL,
    size      INTEGER NOT NULL,
    retention INTEGER NOT NULL,
    note      TEXT    NOT NULL,
    UNIQUE (uid, size, retention)
);
PRAGMA user_version = 2;
"#;

/// Version 1 kept `resources (key, time_us, record_seq)`: move its rows into buckets.
const MIGRATE_1_TO_2: &str = r#"
ALTER TABLE resources RENAME TO resources_v1;
DROP INDEX IF EXISTS resources_record;
"#;

const MIGRATE_1_TO_2_COPY: &str = r#"
INSERT OR IGNORE INTO resources (bucket, key, record_seq)
    SELECT record_seq >> 16, key, record_seq FROM resources_v1;
INSERT OR IGNORE INTO resource_buckets SELECT DISTINCT bucket FROM resources;
DROP TABLE resources_v1;
"#;

/// Records per resource bucket, as a shift: `bucket = seq >> BUCKET_BITS`.
#[cfg(not(test))]
const BUCKET_BITS: u32 = 16;
/// Four records per bucket, so that tests cross buckets with a handful of records.
#[cfg(test)]
const BUCKET_BITS: u32 = 2;

/// Records in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    /// The chain inserts extend, once `chain_as` has named it.
    chain: Arc<Mutex<Option<ChainHead>>>,
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    _checkpoints: Arc<Checkpointer>,
}

/// WAL frames the writer lets pile up before it checkpoints by itself: only when the
/// checkpointer thread has fallen far behind (or died), as a bound on the WAL's size.
const WRITER_CHECKPOINT_PAGES: i64 = 65_536;

/// How often the checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Copies the WAL into the database file on its own thread and connection (`PASSIVE`: it
/// never blocks the writer or readers). Checkpointing is half of what an insert costs —
/// reading frames back, writing pages in place, `fsync` — and this way the writer's thread
/// only appends to the WAL while another core does the rest.
#[derive(Debug)]
struct Checkpointer {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = connect(path)?;
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                let (lock, wake) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                while !*stopped {
                    stopped = wake
                        .wait_timeout(stopped, CHECKPOINT_EVERY)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "checkpointing the SQLite WAL failed");
                    }
                }
            })
            .map_err(|e| StoreError::Other(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SqliteStore {
    /// Opens (creating) the file and its schema.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, Synchronous::Full)
    }

    /// [`SqliteStore::open`] with the commit durability to use.
    pub fn open_with(
        path: impl AsRef<Path>,
        synchronous: Synchronous,
    ) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut writer = connect(&path).map_err(|e| open_error(&path, e))?;
        writer.pragma_update(None, "synchronous", synchronous.pragma())?;
        migrate(&mut writer)?;
        writer.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        // A WAL that grew during a backlog is cut back to this size once it restarts.
        writer.pragma_update(None, "journal_size_limit", 64 << 20)?;
        let reader = connect(&path)?;
        Ok(SqliteStore {
            _checkpoints: Arc::new(Checkpointer::start(&path)?),
            chain: Arc::new(Mutex::new(None)),
            path,
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    async fn with<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Other(format!("store thread failed: {e}")))?
    }
}

/// Creates the schema, or brings an older file's up to date, in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let has_records = tx
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    // A file from before `tenant` had a column gets it (empty: those records have none).
    let has_tenant = has_records
        && tx
            .query_row(
                "SELECT 1 FROM pragma_table_info('records') WHERE name = 'tenant'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
    if has_records && !has_tenant {
        tx.execute_batch("ALTER TABLE records ADD COLUMN tenant TEXT")?;
    }
    // A file from before the chain gets its columns (its records stay unchained).
    let has_chain = has_records
        && tx
            .query_row(
                "SELECT 1 FROM pragma_table_info('records') WHERE name = 'chain_uid'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
    if has_records && !has_chain {
        tx.execute_batch(
            "ALTER TABLE records ADD COLUMN chain_uid TEXT; ALTER TABLE records ADD COLUMN chain_seq INTEGER;",
        )?;
    }
    if has_records && version < 2 {
        tx.execute_batch(MIGRATE_1_TO_2)?;
        tx.execute_batch(SCHEMA)?;
        tx.execute_batch(MIGRATE_1_TO_2_COPY)?;
    } else {
        tx.execute_batch(SCHEMA)?;
    }
    tx.commit()?;
    Ok(())
}

/// Why the file cannot be opened, said once (rusqlite's own message repeats itself), with the
/// likeliest cause named.
fn open_error(path: &Path, e: StoreError) -> StoreError {
    let why = match (path.parent(), e) {
        (Some(dir), _) if !dir.as_os_str().is_empty() && !dir.exists() => {
            format!("its folder {} does not exist", dir.display())
        }
        (_, StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _))) => failure.to_string(),
        (_, other) => other.to_string(),
    };
    StoreError::Other(format!(
        "cannot open the SQLite file {}: {why}",
        path.display()
    ))
}

/// How durable a commit is once it returns (`PRAGMA synchronous`).
///
/// The writer acknowledges a record to Redis, and deletes it there, once its commit has
/// returned: from then on the store is its only copy. `Full` (the default) syncs the WAL at
/// every commit, so an acknowledged record survives a power cut of the writer's machine;
/// `Normal` syncs only at checkpoints, so it survives a crash of the writer process but a power
/// cut can take the last commits with it. Commits are grouped (up to 16 384 records each), so
/// `Full` costs one fsync per commit, not per record: see docs/benchmarks.md for the figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `PRAGMA synchronous = FULL`.
    #[default]
    Full,
    /// `PRAGMA synchronous = NORMAL`: `sqlite://PATH?synchronous=normal`.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // WAL: readers never wait for the writer. The writer's connection sets its durability
    // (`Synchronous`); the others only read or checkpoint.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Index pages stay in memory (up to 64 MiB per connection): at millions of records the
    // indexes no longer fit SQLite's 2 MiB default cache.
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// `?` placeholders; prefix ranges compare `+r.operation`, which keeps SQLite from answering a
/// prefix through the operation index (sorting every matching row by time): scanning the time
/// index (or a more selective one) newest first finds a page at once.
const SQLITE: Dialect = Dialect {
    placeholder: |_| "?".to_owned(),
    prefix_column: "+r.operation",
    resource_columns: "r.seq",
    resource_rows: "SELECT record_seq FROM resources \
                    WHERE bucket IN (SELECT bucket FROM resource_buckets) AND key = ",
    json_member: |name| format!("json_extract(r.record, '$.{name}')"),
};

fn page(conn: &Connection, query: &Query) -> Result<Page, StoreError> {
    let (sql, params) = page_sql(query, &SQLITE);
    let params = params.into_iter().map(|p| match p {
        Param::Text(t) => SqlValue::Text(t),
        Param::Int(i) => SqlValue::Integer(i),
    });
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut records = Vec::with_capacity(query.limit.min(1024));
    let mut last = None;
    let mut more = false;
    while let Some(row) = rows.next()? {
        if records.len() == query.limit {
            more = true;
            break;
        }
        last = Some(Cursor {
            time_us: row.get(0)?,
            seq: row.get(1)?,
        });
        records.push(row.get::<_, String>(2)?);
    }
    Ok(Page {
        records,
        next_cursor: if more { last } else { None },
    })
}

/// The resource buckets a transaction writes into (see `BUCKET_BITS`), in the order met.
#[derive(Default)]
struct Buckets(Vec<i64>);

impl Buckets {
    /// Files a stored record's resource keys in its bucket.
    fn file(
        &mut self,
        resource: &mut rusqlite::CachedStatement<'_>,
        row: &Row,
        record_seq: i64,
    ) -> Result<(), StoreError> {
        let bucket = record_seq >> BUCKET_BITS;
        if self.0.last() != Some(&bucket) {
            self.0.push(bucket);
        }
        for key in &row.keys {
            resource.execute(params![bucket, key, record_seq])?;
        }
        Ok(())
    }

    /// Lists the buckets written in `resource_buckets`, which lookups probe.
    fn list(self, tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
        let mut bucket_row =
            tx.prepare_cached("INSERT OR IGNORE INTO resource_buckets (bucket) VALUES (?)")?;
        for bucket in self.0 {
            bucket_row.execute([bucket])?;
        }
        Ok(())
    }
}

/// Inserts `rows` in one transaction, each new record the next link of the chain after
/// `head`; a complete record replacing its received one is a new link too, and the received
/// record keeps its link in `chain_superseded`. Returns the records stored and the new head.
fn insert_chained(
    conn: &mut Connection,
    rows: &[Row],
    chained: Vec<Chained>,
    mut head: ChainHead,
) -> Result<(usize, ChainHead), StoreError> {
    let from = (head.seq, head.hash);
    let tx = conn.transaction()?;
    let mut inserted = 0;
    {
        let mut existing = tx.prepare_cached(
            "SELECT seq, outcome, record, chain_uid, chain_seq FROM records WHERE id = ?",
        )?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO records (id, time_us, record, operation, actor, request_id, outcome, status, origin_instance, origin_seq, tenant, chain_uid, chain_seq)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        )?;
        let mut replace = tx.prepare_cached(
            "UPDATE records SET record = ?, tenant = ?, operation = ?, actor = ?, request_id = ?,
                 outcome = ?, status = ?, chain_uid = ?, chain_seq = ? WHERE seq = ?",
        )?;
        let mut supersede = tx.prepare_cached(
            "INSERT INTO chain_superseded (chain_uid, chain_seq, record) VALUES (?, ?, ?)",
        )?;
        let mut resource = tx.prepare_cached(
            "INSERT OR IGNORE INTO resources (bucket, key, record_seq) VALUES (?, ?, ?)",
        )?;
        let mut link =
            tx.prepare_cached("INSERT OR IGNORE INTO resource_links (a, b) VALUES (?, ?)")?;
        let mut crash = tx.prepare_cached(
            "INSERT OR IGNORE INTO origin_crashes (instance, from_seq, to_seq) VALUES (?, ?, ?)",
        )?;
        let mut buckets = Buckets::default();
        for (r, c) in rows.iter().zip(chained) {
            type Found = (i64, String, String, Option<String>, Option<i64>);
            let found: Option<Found> = existing
                .query_row([&r.id], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })
                .optional()?;
            if let (Some(instance), Some((from, to))) = (&r.instance, r.after_crash) {
                crash.execute(params![instance, from, to])?;
            }
            for (a, b) in &r.links {
                link.execute(params![a, b])?;
            }
            let next = head.next(c.canonical.text().as_bytes());
            let json = c.canonical.chained(&next);
            let record_seq = match found {
                None => insert.query_row(
                    params![
                        r.id,
                        r.time_us,
                        json,
                        r.operation,
                        r.actor,
                        r.request_id,
                        r.outcome,
                        r.status,
                        r.instance,
                        r.origin_seq,
                        r.tenant,
                        next.uid,
                        next.seq as i64
                    ],
                    |row| row.get::<_, i64>(0),
                )?,
                Some((seq, outcome, old, old_uid, old_seq))
                    if outcome == "unknown" && r.outcome != "unknown" =>
                {
                    if let (Some(uid), Some(at)) = (old_uid, old_seq) {
                        supersede.execute(params![uid, at, old])?;
                    }
                    replace.execute(params![
                        json,
                        r.tenant,
                        r.operation,
                        r.actor,
                        r.request_id,
                        r.outcome,
                        r.status,
                        next.uid,
                        next.seq as i64,
                        seq
                    ])?;
                    seq
                }
                Some(_) => continue, // already stored: exactly once
            };
            head.advance(&next);
            inserted += 1;
            buckets.file(&mut resource, r, record_seq)?;
        }
        buckets.list(&tx)?;
        // The head moves only from where this commit found it: a second writer on the same
        // chain uid, or a head changed under the writer, fails the commit instead of forking
        // or adopting it.
        let moved = tx.execute(
            "INSERT INTO chain_heads (uid, seq, hash) VALUES (?, ?, ?)
             ON CONFLICT (uid) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
             WHERE chain_heads.seq = ? AND chain_heads.hash = ?",
            params![
                head.uid,
                head.seq as i64,
                crate::chain::hex(&head.hash),
                from.0 as i64,
                crate::chain::hex(&from.1)
            ],
        )?;
        if moved != 1 {
            return Err(StoreError::Other(format!(
                "chain {}: its head in the store is not where this writer left it (another writer uses the same chain_uid, or it was changed); stopping rather than forking the chain",
                head.uid
            )));
        }
    }
    tx.commit()?;
    Ok((inserted, head))
}

/// Chain heads (or floors) from rows of `(uid, seq, hash)`.
fn heads(conn: &Connection, sql: &str) -> Result<Vec<ChainHead>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (uid, seq, hash) = row?;
        out.push(ChainHead::read(uid, seq, &hash)?);
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn chain_as(&self, uid: &str) -> Result<ChainHead, StoreError> {
        let owned = uid.to_owned();
        let found = Self::with(&self.writer, move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT uid, seq, hash FROM chain_heads WHERE uid = ?")?;
            let row = stmt
                .query_row([&owned], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .optional()?;
            row.map(|(uid, seq, hash)| ChainHead::read(uid, seq, &hash))
                .transpose()
        })
        .await?;
        let head = found.unwrap_or_else(|| ChainHead::empty(uid));
        *self.chain.lock().unwrap_or_else(|p| p.into_inner()) = Some(head.clone());
        Ok(head)
    }

    fn chains(&self) -> bool {
        self.chain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    async fn chain_heads(&self) -> Result<Vec<ChainHead>, StoreError> {
        Self::with(&self.reader, |conn| {
            heads(conn, "SELECT uid, seq, hash FROM chain_heads ORDER BY uid")
        })
        .await
    }

    async fn chain_floors(&self) -> Result<Vec<ChainHead>, StoreError> {
        Self::with(&self.reader, |conn| {
            heads(conn, "SELECT uid, seq, hash FROM chain_floors ORDER BY uid")
        })
        .await
    }

    async fn retention_cuts(&self, before: DateTime<Utc>) -> Result<Vec<ChainHead>, StoreError> {
        let before_time = before;
        let before = before.timestamp_micros();
        Self::with(&self.reader, move |conn| {
            // The first link of each chain that is not old enough; the cut is the link before
            // it (or the head, when every link is old enough).
            let mut cuts = Vec::new();
            for head in heads(conn, "SELECT uid, seq, hash FROM chain_heads")? {
                let first_young: Option<i64> = conn.query_row(
                    "SELECT MIN(chain_seq) FROM records WHERE chain_uid = ? AND time_us >= ?",
                    params![head.uid, before],
                    |r| r.get(0),
                )?;
                let cut = first_young.map_or(head.seq as i64, |s| s - 1);
                if cut < 1 {
                    continue;
                }
                let at = |seq: i64| -> Result<Option<String>, StoreError> {
                    Ok(conn
                        .query_row(
                            "SELECT record FROM records WHERE chain_uid = ? AND chain_seq = ?
                             UNION ALL SELECT record FROM chain_superseded WHERE chain_uid = ? AND chain_seq = ?",
                            params![head.uid, seq, head.uid, seq],
                            |r| r.get(0),
                        )
                        .optional()?)
                };
                let (json, next) = (at(cut)?, at(cut + 1)?);
                if let Some(hash) = json
                    .as_deref()
                    .and_then(|j| super::checked_cut(j, next.as_deref(), before_time))
                {
                    cuts.push(ChainHead {
                        uid: head.uid,
                        seq: cut as u64,
                        hash,
                    });
                }
            }
            Ok(cuts)
        })
        .await
    }

    async fn scan(
        &self,
        superseded: bool,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ScannedRow>, StoreError> {
        Self::with(&self.reader, move |conn| {
            let sql = if superseded {
                "SELECT seq, record, chain_uid, chain_seq, NULL, NULL, NULL, NULL, NULL, NULL, NULL
                 FROM chain_superseded WHERE seq > ? ORDER BY seq LIMIT ?"
            } else {
                "SELECT seq, record, chain_uid, chain_seq, id, time_us, operation, actor, request_id, outcome, tenant
                 FROM records WHERE seq > ? ORDER BY seq LIMIT ?"
            };
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                let chain = match (r.get::<_, Option<String>>(2)?, r.get::<_, Option<i64>>(3)?) {
                    (Some(uid), Some(seq)) => Some((uid, seq)),
                    _ => None,
                };
                let columns = match r.get::<_, Option<String>>(4)? {
                    Some(id) => Some(Columns {
                        id,
                        time_us: r.get(5)?,
                        operation: r.get(6)?,
                        actor: r.get(7)?,
                        request_id: r.get(8)?,
                        outcome: r.get(9)?,
                        tenant: r.get(10)?,
                    }),
                    None => None,
                };
                Ok(ScannedRow {
                    store_seq: r.get(0)?,
                    json: r.get(1)?,
                    chain,
                    columns,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn save_checkpoint(
        &self,
        checkpoint: &crate::chain::Checkpoint,
        note: &str,
    ) -> Result<(), StoreError> {
        let (uid, size, retention, note) = (
            checkpoint.uid.clone(),
            checkpoint.size as i64,
            checkpoint.retention,
            note.to_owned(),
        );
        Self::with(&self.writer, move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO checkpoints (uid, size, retention, note) VALUES (?, ?, ?, ?)",
                params![uid, size, retention, note],
            )?;
            Ok(())
        })
        .await
    }

    async fn checkpoints(&self) -> Result<Vec<String>, StoreError> {
        Self::with(&self.reader, |conn| {
            let mut stmt = conn.prepare_cached("SELECT note FROM checkpoints ORDER BY seq")?;
            let notes = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(notes.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn insert(&self, records: &[Incoming]) -> Result<usize, StoreError> {
        let head = self.chain.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(head) = head {
            let rows = Row::all(records);
            let chained = Chained::all(records)?;
            let state = self.chain.clone();
            return Self::with(&self.writer, move |conn| {
                let (inserted, head) = insert_chained(conn, &rows, chained, head)?;
                *state.lock().unwrap_or_else(|p| p.into_inner()) = Some(head);
                Ok(inserted)
            })
            .await;
        }
        let rows = Row::all(records);
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction()?;
            let mut inserted = 0;
            {
                // A record whose `id` is stored already is a redelivery, ignored; except that a
                // complete record replaces its received one (a `closed` call's record made
                // before it was forwarded, outcome `unknown`), whichever of the two came first.
                let mut insert = tx.prepare_cached(
                    "INSERT INTO records (id, time_us, record, operation, actor, request_id, outcome, status, origin_instance, origin_seq, tenant)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                     ON CONFLICT (id) DO UPDATE SET record = excluded.record, tenant = excluded.tenant,
                         operation = excluded.operation, actor = excluded.actor,
                         request_id = excluded.request_id, outcome = excluded.outcome,
                         status = excluded.status
                     WHERE records.outcome = 'unknown' AND excluded.outcome <> 'unknown'
                     RETURNING seq",
                )?;
                let mut resource = tx.prepare_cached(
                    "INSERT OR IGNORE INTO resources (bucket, key, record_seq) VALUES (?, ?, ?)",
                )?;
                let mut link = tx.prepare_cached(
                    "INSERT OR IGNORE INTO resource_links (a, b) VALUES (?, ?)",
                )?;
                let mut crash = tx.prepare_cached(
                    "INSERT OR IGNORE INTO origin_crashes (instance, from_seq, to_seq) VALUES (?, ?, ?)",
                )?;
                let mut buckets = Buckets::default();
                for r in &rows {
                    let stored: Option<i64> = insert
                        .query_row(
                            params![
                                r.id, r.time_us, r.json, r.operation, r.actor, r.request_id,
                                r.outcome, r.status, r.instance, r.origin_seq, r.tenant
                            ],
                            |row| row.get(0),
                        )
                        .optional()?;
                    if let (Some(instance), Some((from, to))) = (&r.instance, r.after_crash) {
                        crash.execute(params![instance, from, to])?;
                    }
                    for (a, b) in &r.links {
                        link.execute(params![a, b])?;
                    }
                    let Some(record_seq) = stored else {
                        continue; // already stored: exactly once
                    };
                    inserted += 1;
                    buckets.file(&mut resource, r, record_seq)?;
                }
                buckets.list(&tx)?;
            }
            tx.commit()?;
            Ok(inserted)
        })
        .await
    }

    async fn query(&self, query: &Query) -> Result<Page, StoreError> {
        let query = query.clone();
        Self::with(&self.reader, move |conn| page(conn, &query)).await
    }

    async fn get(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_owned();
        Self::with(&self.reader, move |conn| {
            Ok(conn
                .query_row("SELECT record FROM records WHERE id = ?", [id], |r| {
                    r.get(0)
                })
                .optional()?)
        })
        .await
    }

    fn export(&self, mut query: Query) -> mpsc::Receiver<Result<Vec<String>, StoreError>> {
        let (tx, rx) = mpsc::channel(4);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match connect(&path) {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            query.limit = 1000;
            query.cursor = None;
            loop {
                let p = match page(&conn, &query) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                if !p.records.is_empty() && tx.blocking_send(Ok(p.records)).is_err() {
                    return; // the client went away
                }
                match p.next_cursor {
                    Some(c) => query.cursor = Some(c),
                    None => break,
                }
            }
        });
        rx
    }

    async fn gaps(&self) -> Result<Vec<Gap>, StoreError> {
        Self::with(&self.reader, |conn| {
            let mut stmt = conn.prepare_cached(GAPS_SQL)?;
            let gaps = stmt
                .query_map([], |r| {
                    Ok(Gap::of(
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(gaps)
        })
        .await
    }

    async fn delete_before(
        &self,
        before: DateTime<Utc>,
        cuts: &[ChainHead],
    ) -> Result<u64, StoreError> {
        let before = before.timestamp_micros();
        let cuts = cuts.to_vec();
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction()?;
            // Which records may go: unchained ones by age alone; chained ones also at or below
            // their chain's cut, so that retention leaves no hole above a signed floor.
            tx.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS retention_cuts (uid TEXT PRIMARY KEY, seq INTEGER NOT NULL);
                 DELETE FROM retention_cuts;",
            )?;
            for cut in &cuts {
                tx.execute(
                    "INSERT INTO retention_cuts (uid, seq) VALUES (?, ?)",
                    params![cut.uid, cut.seq as i64],
                )?;
                tx.execute(
                    "INSERT INTO chain_floors (uid, seq, hash) VALUES (?, ?, ?)
                     ON CONFLICT (uid) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
                     WHERE excluded.seq > chain_floors.seq",
                    params![cut.uid, cut.seq as i64, crate::chain::hex(&cut.hash)],
                )?;
                tx.execute(
                    "DELETE FROM chain_superseded WHERE chain_uid = ? AND chain_seq <= ?",
                    params![cut.uid, cut.seq as i64],
                )?;
            }
            tx.execute_batch(
                "CREATE TEMP VIEW IF NOT EXISTS retention_goes AS
                 SELECT r.seq, r.time_us FROM records r LEFT JOIN retention_cuts c ON c.uid = r.chain_uid
                 WHERE r.chain_uid IS NULL OR r.chain_seq <= c.seq;",
            )?;
            tx.execute(
                "INSERT INTO origin_floor (instance, seq)
                 SELECT origin_instance, MAX(origin_seq) FROM records
                 WHERE seq IN (SELECT seq FROM retention_goes WHERE time_us < ?)
                   AND origin_instance IS NOT NULL GROUP BY origin_instance
                 ON CONFLICT (instance) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                [before],
            )?;
            tx.execute(
                "DELETE FROM resources WHERE record_seq IN (SELECT seq FROM retention_goes WHERE time_us < ?)",
                [before],
            )?;
            let deleted = tx.execute(
                "DELETE FROM records WHERE seq IN (SELECT seq FROM retention_goes WHERE time_us < ?)",
                [before],
            )?;
            tx.execute(
                "DELETE FROM resource_buckets
                 WHERE NOT EXISTS (SELECT 1 FROM resources r WHERE r.bucket = resource_buckets.bucket)",
                [],
            )?;
            tx.commit()?;
            Ok(deleted as u64)
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Self::with(&self.reader, |conn| {
            Ok(conn.query_row("SELECT COUNT(*) FROM records", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }

    async fn optimize(&self) -> Result<(), StoreError> {
        Self::with(&self.writer, |conn| {
            conn.execute_batch("PRAGMA analysis_limit = 1000; PRAGMA optimize;")?;
            Ok(())
        })
        .await
    }

    async fn linked(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let name = crate::store::indexed(name).into_owned();
        Self::with(&self.reader, move |conn| {
            let names = conn
                .prepare_cached(LINKED_SQL)?
                .query_map([name], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(names)
        })
        .await
    }

    async fn operations(&self, tenant: Option<&str>) -> Result<Vec<String>, StoreError> {
        let tenant = tenant.map(str::to_owned);
        Self::with(&self.reader, move |conn| {
            let ops = match tenant {
                None => conn
                    .prepare_cached(OPERATIONS_SQL)?
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?,
                Some(tenant) => conn
                    .prepare_cached(
                        "SELECT DISTINCT operation FROM records WHERE tenant = ? ORDER BY operation",
                    )?
                    .query_map([tenant], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?,
            };
            Ok(ops)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Order;
    use auditgate_rules::AuditRecord;

    fn record(i: u64, resource: &str) -> Incoming {
        let mut r: AuditRecord = serde_json::from_str(
            r#"{"schema":1,"id":"0193a6f0-7c1e-7d5e-9b1a-2f4c8e9d0a11",
            "time":"2026-11-22T10:00:00Z","duration_ms":1.0,"service":"s",
            "operation":"asset.rename","actor":{"id":"u_1","source":"header.X-User-Id"},
            "request":{"id":"r","method":"PATCH","path":"/p"},
            "resources":[{"type":"file","id":"x"}],"response":{"status":200},
            "outcome":"success","details":{}}"#,
        )
        .unwrap();
        r.id = uuid::Uuid::now_v7();
        // Times out of arrival order: pages follow time, not buckets.
        r.time += chrono::Duration::seconds(((i * 7) % 40) as i64);
        r.resources[0].id = Some(resource.to_owned());
        Incoming::from_record(r).unwrap()
    }

    fn all_pages(store: &SqliteStore, key: &str, order: Order) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut query = Query {
            resource: Some(key.to_owned()),
            limit: 3,
            order,
            ..Query::default()
        };
        let mut out = Vec::new();
        loop {
            let page = rt.block_on(store.query(&query)).unwrap();
            out.extend(page.records);
            match page.next_cursor {
                Some(c) => query.cursor = Some(c),
                None => return out,
            }
        }
    }

    #[test]
    fn a_resource_is_found_in_every_bucket_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("a.db")).unwrap();
        let records: Vec<Incoming> = (0..40)
            .map(|i| record(i, if i % 3 == 0 { "hot" } else { "cold" }))
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for batch in records.chunks(9) {
            rt.block_on(store.insert(batch)).unwrap();
        }
        let buckets: i64 = store
            .reader
            .lock()
            .unwrap()
            .query_row("SELECT COUNT(*) FROM resource_buckets", [], |r| r.get(0))
            .unwrap();
        assert_eq!(buckets, 11, "40 records, four per bucket, seq from 1");

        let mut expected: Vec<&Incoming> = records
            .iter()
            .filter(|r| r.record.resources[0].id.as_deref() == Some("hot"))
            .collect();
        // Oldest first by time, then by arrival (seq): the history order.
        expected.sort_by_key(|r| r.record.time);
        let oldest_first: Vec<String> = expected.iter().map(|r| r.json.clone()).collect();
        assert_eq!(all_pages(&store, "hot", Order::OldestFirst), oldest_first);
        let mut newest_first = oldest_first.clone();
        newest_first.reverse();
        assert_eq!(all_pages(&store, "hot", Order::NewestFirst), newest_first);
    }

    #[test]
    fn a_version_1_file_is_migrated_with_its_resources() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(SCHEMA_V1).unwrap();
        let r = record(1, "f1");
        old.execute(
            "INSERT INTO records (id, time_us, operation, request_id, outcome, record)
             VALUES (?, ?, 'asset.rename', 'r', 'success', ?)",
            params![
                r.record.id.to_string(),
                r.record.time.timestamp_micros(),
                r.json
            ],
        )
        .unwrap();
        old.execute(
            "INSERT INTO resources (key, time_us, record_seq) VALUES ('f1', ?, 1)",
            [r.record.time.timestamp_micros()],
        )
        .unwrap();
        drop(old);

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            all_pages(&store, "f1", Order::NewestFirst),
            vec![r.json.clone()]
        );
        let version: i64 = store
            .reader
            .lock()
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
        // And it keeps working: a new record under the same resource.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(store.insert(&[record(2, "f1")])).unwrap();
        assert_eq!(all_pages(&store, "f1", Order::NewestFirst).len(), 2);
    }

    const SCHEMA_V1: &str = r#"
    CREATE TABLE IF NOT EXISTS records (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              TEXT    NOT NULL UNIQUE,
        time_us         INTEGER NOT NULL,
        operation       TEXT    NOT NULL,
        actor           TEXT,
        request_id      TEXT    NOT NULL,
        outcome         TEXT    NOT NULL,
        status          INTEGER,
        origin_instance TEXT,
        origin_seq      INTEGER,
        record          TEXT    NOT NULL
    );
    CREATE INDEX IF NOT EXISTS records_time      ON records (time_us, seq);
    CREATE INDEX IF NOT EXISTS records_operation ON records (operation, time_us, seq);
    CREATE INDEX IF NOT EXISTS records_actor     ON records (actor, time_us, seq);
    CREATE INDEX IF NOT EXISTS records_request   ON records (request_id);
    -- No index on outcome: it is rarely selective, and without statistics SQLite would prefer it
    -- over a selective one (actor) in combined filters. Outcome filters scan the time index.
    DROP INDEX IF EXISTS records_outcome;
    CREATE INDEX IF NOT EXISTS records_origin    ON records (origin_instance, origin_seq);
    CREATE TABLE IF NOT EXISTS resources (
        key        TEXT    NOT NULL,
        time_us    INTEGER NOT NULL,
        record_seq INTEGER NOT NULL REFERENCES records (seq) ON DELETE CASCADE,
        PRIMARY KEY (key, time_us, record_seq)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS resources_record ON resources (record_seq);
    -- The highest origin.seq retention has deleted, per instance: what lies below is not a gap.
    CREATE TABLE IF NOT EXISTS origin_floor (
        instance TEXT PRIMARY KEY,
        seq      INTEGER NOT NULL
    );
    PRAGMA user_version = 1;
"#;
}
