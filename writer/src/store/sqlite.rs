//! The embedded store: one SQLite file in WAL mode. One connection writes, another reads;
//! exports open their own, so a long download never holds up the writer or the page.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;

use super::{
    Cursor, Dialect, GAPS_SQL, Gap, Incoming, OPERATIONS_SQL, Page, Param, Query, Row, Store,
    StoreError, array_chunk, page_sql,
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

/// Records in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating) the file and its schema.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let writer = connect(&path)?;
        writer.execute_batch(SCHEMA)?;
        let reader = connect(&path)?;
        Ok(SqliteStore {
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

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // WAL: readers never wait for the writer; NORMAL sync is durable across process crashes
    // (the writer acknowledges Redis only after commit returns).
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

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert(&self, records: &[Incoming]) -> Result<usize, StoreError> {
        let rows = Row::all(records);
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction()?;
            let mut inserted = 0;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO records (id, time_us, record, operation, actor, request_id, outcome, status, origin_instance, origin_seq)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                )?;
                let mut resource = tx.prepare_cached(
                    "INSERT OR IGNORE INTO resources (key, time_us, record_seq) VALUES (?, ?, ?)",
                )?;
                for r in &rows {
                    let changed = insert.execute(params![
                        r.id, r.time_us, r.json, r.operation, r.actor, r.request_id, r.outcome,
                        r.status, r.instance, r.origin_seq
                    ])?;
                    if changed == 0 {
                        continue; // already stored: exactly once
                    }
                    inserted += 1;
                    let record_seq = tx.last_insert_rowid();
                    for key in &r.keys {
                        resource.execute(params![key, r.time_us, record_seq])?;
                    }
                }
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

    fn export(&self, mut query: Query) -> mpsc::Receiver<Result<Bytes, StoreError>> {
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
            let mut first = true;
            if tx.blocking_send(Ok(Bytes::from_static(b"[\n"))).is_err() {
                return;
            }
            loop {
                let p = match page(&conn, &query) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                if !p.records.is_empty()
                    && tx
                        .blocking_send(Ok(array_chunk(&p.records, &mut first)))
                        .is_err()
                {
                    return; // the client went away
                }
                match p.next_cursor {
                    Some(c) => query.cursor = Some(c),
                    None => break,
                }
            }
            let _ = tx.blocking_send(Ok(Bytes::from_static(b"\n]\n")));
        });
        rx
    }

    async fn gaps(&self) -> Result<Vec<Gap>, StoreError> {
        Self::with(&self.reader, |conn| {
            let mut stmt = conn.prepare_cached(GAPS_SQL)?;
            let gaps = stmt
                .query_map([], |r| {
                    Ok(Gap {
                        instance: r.get(0)?,
                        from: r.get(1)?,
                        to: r.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(gaps)
        })
        .await
    }

    async fn delete_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let before = before.timestamp_micros();
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO origin_floor (instance, seq)
                 SELECT origin_instance, MAX(origin_seq) FROM records
                 WHERE time_us < ? AND origin_instance IS NOT NULL GROUP BY origin_instance
                 ON CONFLICT (instance) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                [before],
            )?;
            tx.execute(
                "DELETE FROM resources WHERE record_seq IN (SELECT seq FROM records WHERE time_us < ?)",
                [before],
            )?;
            let deleted = tx.execute("DELETE FROM records WHERE time_us < ?", [before])?;
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

    async fn operations(&self) -> Result<Vec<String>, StoreError> {
        Self::with(&self.reader, |conn| {
            let mut stmt = conn.prepare_cached(OPERATIONS_SQL)?;
            let ops = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ops)
        })
        .await
    }
}
