//! The store at scale: PostgreSQL, same tables and behaviour as the SQLite store.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, mpsc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use super::{
    Cursor, Dialect, GAPS_SQL, Gap, Incoming, OPERATIONS_SQL, Page, Param, Query, Row, Store,
    StoreError, array_chunk, page_sql,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS records (
    seq             BIGSERIAL PRIMARY KEY,
    id              TEXT   NOT NULL UNIQUE,
    time_us         BIGINT NOT NULL,
    operation       TEXT   NOT NULL,
    actor           TEXT,
    request_id      TEXT   NOT NULL,
    outcome         TEXT   NOT NULL,
    status          INTEGER,
    origin_instance TEXT,
    origin_seq      BIGINT,
    record          TEXT   NOT NULL
);
CREATE INDEX IF NOT EXISTS records_time      ON records (time_us, seq);
CREATE INDEX IF NOT EXISTS records_operation ON records (operation text_pattern_ops, time_us, seq);
CREATE INDEX IF NOT EXISTS records_actor     ON records (actor, time_us, seq);
CREATE INDEX IF NOT EXISTS records_request   ON records (request_id);
CREATE INDEX IF NOT EXISTS records_outcome   ON records (outcome, time_us, seq);
CREATE INDEX IF NOT EXISTS records_origin    ON records (origin_instance, origin_seq);
CREATE TABLE IF NOT EXISTS resources (
    key        TEXT   NOT NULL,
    time_us    BIGINT NOT NULL,
    record_seq BIGINT NOT NULL REFERENCES records (seq) ON DELETE CASCADE,
    PRIMARY KEY (key, time_us, record_seq)
);
CREATE INDEX IF NOT EXISTS resources_record ON resources (record_seq);
CREATE TABLE IF NOT EXISTS origin_floor (
    instance TEXT PRIMARY KEY,
    seq      BIGINT NOT NULL
);
"#;

/// Records in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    url: String,
    writer: Arc<Mutex<Client>>,
    /// A second connection for the other half of a large batch: one backend inserts at
    /// about one core's speed, so two halves commit side by side.
    second_writer: Arc<Mutex<Client>>,
    reader: Arc<Client>,
}

/// A batch at least this large is split over both writer connections.
const SPLIT_AT: usize = 1024;

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::error!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

impl PostgresStore {
    /// Connects and creates the schema.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let writer = connect(url).await?;
        writer.batch_execute(SCHEMA).await?;
        let second_writer = connect(url).await?;
        let reader = connect(url).await?;
        Ok(PostgresStore {
            url: url.to_owned(),
            writer: Arc::new(Mutex::new(writer)),
            second_writer: Arc::new(Mutex::new(second_writer)),
            reader: Arc::new(reader),
        })
    }
}

/// `$n` placeholders; the operation index (`text_pattern_ops`) serves prefix ranges.
const POSTGRES: Dialect = Dialect {
    placeholder: |n| format!("${n}"),
    prefix_column: "r.operation",
    resource_rows: "SELECT record_seq FROM resources WHERE key = ",
};

async fn page(client: &Client, query: &Query) -> Result<Page, StoreError> {
    let (sql, params) = page_sql(query, &POSTGRES);
    let params: Vec<Box<dyn ToSql + Sync + Send>> = params
        .into_iter()
        .map(|p| -> Box<dyn ToSql + Sync + Send> {
            match p {
                Param::Text(t) => Box::new(t),
                Param::Int(i) => Box::new(i),
            }
        })
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(&sql, &refs).await?;
    let more = rows.len() > query.limit;
    let mut records = Vec::with_capacity(rows.len().min(query.limit));
    let mut last = None;
    for row in rows.iter().take(query.limit) {
        last = Some(Cursor {
            time_us: row.get(0),
            seq: row.get(1),
        });
        records.push(row.get::<_, String>(2));
    }
    Ok(Page {
        records,
        next_cursor: if more { last } else { None },
    })
}

/// Inserts one part of a batch in one transaction; returns how many records were new.
async fn insert_part(client: &Mutex<Client>, records: &[Incoming]) -> Result<usize, StoreError> {
    let rows = Row::all(records);
    // Two statements a batch, whatever its size: the columns go over as arrays.
    let mut ids = Vec::with_capacity(rows.len());
    let mut times = Vec::with_capacity(rows.len());
    let mut jsons = Vec::with_capacity(rows.len());
    let mut operations = Vec::with_capacity(rows.len());
    let mut actors = Vec::with_capacity(rows.len());
    let mut request_ids = Vec::with_capacity(rows.len());
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut statuses = Vec::with_capacity(rows.len());
    let mut instances = Vec::with_capacity(rows.len());
    let mut seqs = Vec::with_capacity(rows.len());
    for r in &rows {
        ids.push(r.id.clone());
        times.push(r.time_us);
        jsons.push(r.json.clone());
        operations.push(r.operation.clone());
        actors.push(r.actor.clone());
        request_ids.push(r.request_id.clone());
        outcomes.push(r.outcome.to_owned());
        statuses.push(r.status);
        instances.push(r.instance.clone());
        seqs.push(r.origin_seq);
    }
    let mut client = client.lock().await;
    let tx = client.transaction().await?;
    let inserted = tx
        .query(
            "INSERT INTO records (id, time_us, record, operation, actor, request_id, outcome, status, origin_instance, origin_seq)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[], $9::text[], $10::bigint[])
             ON CONFLICT (id) DO NOTHING
             RETURNING seq, id",
            &[&ids, &times, &jsons, &operations, &actors, &request_ids, &outcomes, &statuses, &instances, &seqs],
        )
        .await?;
    let new: std::collections::HashMap<String, i64> = inserted
        .iter()
        .map(|row| (row.get::<_, String>(1), row.get::<_, i64>(0)))
        .collect();
    let (mut keys, mut key_times, mut key_seqs) = (Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        if let Some(seq) = new.get(&r.id) {
            for key in &r.keys {
                keys.push(key.clone());
                key_times.push(r.time_us);
                key_seqs.push(*seq);
            }
        }
    }
    if !keys.is_empty() {
        tx.execute(
            "INSERT INTO resources (key, time_us, record_seq)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) ON CONFLICT DO NOTHING",
            &[&keys, &key_times, &key_seqs],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(new.len())
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    /// Large batches are split in two halves, each committed in its own transaction on its
    /// own connection, side by side. The batch counts as stored once both have committed. If
    /// one half fails, the caller does not acknowledge the batch, and the half that did commit
    /// is skipped as duplicates when the batch comes back.
    async fn insert(&self, records: &[Incoming]) -> Result<usize, StoreError> {
        if records.len() < SPLIT_AT {
            return insert_part(&self.writer, records).await;
        }
        let (first, second) = records.split_at(records.len() / 2);
        let (a, b) = tokio::join!(
            insert_part(&self.writer, first),
            insert_part(&self.second_writer, second)
        );
        Ok(a? + b?)
    }

    async fn query(&self, query: &Query) -> Result<Page, StoreError> {
        page(&self.reader, query).await
    }

    async fn get(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .reader
            .query_opt("SELECT record FROM records WHERE id = $1", &[&id])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    fn export(&self, mut query: Query) -> mpsc::Receiver<Result<Bytes, StoreError>> {
        let (tx, rx) = mpsc::channel(4);
        let url = self.url.clone();
        tokio::spawn(async move {
            let client = match connect(&url).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            query.limit = 1000;
            query.cursor = None;
            let mut first = true;
            if tx.send(Ok(Bytes::from_static(b"[\n"))).await.is_err() {
                return;
            }
            loop {
                let p = match page(&client, &query).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if !p.records.is_empty()
                    && tx
                        .send(Ok(array_chunk(&p.records, &mut first)))
                        .await
                        .is_err()
                {
                    return;
                }
                match p.next_cursor {
                    Some(c) => query.cursor = Some(c),
                    None => break,
                }
            }
            let _ = tx.send(Ok(Bytes::from_static(b"\n]\n"))).await;
        });
        rx
    }

    async fn gaps(&self) -> Result<Vec<Gap>, StoreError> {
        let rows = self.reader.query(GAPS_SQL, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| Gap {
                instance: r.get(0),
                from: r.get(1),
                to: r.get(2),
            })
            .collect())
    }

    async fn delete_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let before = before.timestamp_micros();
        let mut client = self.writer.lock().await;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO origin_floor (instance, seq)
             SELECT origin_instance, MAX(origin_seq) FROM records
             WHERE time_us < $1 AND origin_instance IS NOT NULL GROUP BY origin_instance
             ON CONFLICT (instance) DO UPDATE SET seq = GREATEST(origin_floor.seq, excluded.seq)",
            &[&before],
        )
        .await?;
        let deleted = tx
            .execute("DELETE FROM records WHERE time_us < $1", &[&before])
            .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let row = self
            .reader
            .query_one("SELECT COUNT(*) FROM records", &[])
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn optimize(&self) -> Result<(), StoreError> {
        self.writer
            .lock()
            .await
            .batch_execute("ANALYZE records; ANALYZE resources;")
            .await?;
        Ok(())
    }

    async fn operations(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.reader.query(OPERATIONS_SQL, &[]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
