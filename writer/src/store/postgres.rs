//! The store at scale: PostgreSQL, the same tables and behaviour as the SQLite store, with
//! records and their resource keys partitioned by month.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, mpsc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, NoTls, Transaction};

use super::{
    ChainHead, Chained, Columns, Cursor, Dialect, GAPS_SQL, Gap, Incoming, LINKED_SQL,
    OPERATIONS_SQL, Page, Param, Query, Row, ScannedRow, Store, StoreError, page_sql,
};

/// The tables, partitioned by month of `time_us` (docs/operators.md, "PostgreSQL"):
/// retention drops whole months, and a query for a time interval reads only its months.
/// PostgreSQL's unique keys on a partitioned table must hold the partition key, so a record is
/// unique by `(time_us, id)`: a redelivered record carries its time with it. `{records}` and
/// `{resources}` are the table names (a migration builds new tables beside the old ones).
///
/// Key columns are `COLLATE "C"`: they are identifiers, compared byte by byte. Under the
/// database's default collation, when it is a linguistic one, every index insert compares
/// through `strcoll`, and the `operation` prefix range `asset.` <= x < `asset/` holds whatever
/// that collation sorts between `.` and `/` (ICU's `en` puts `@`, `*`, `(`… there).
fn tables_sql(records: &str, resources: &str) -> String {
    format!(
        r#"
CREATE SEQUENCE IF NOT EXISTS record_seqs;
CREATE TABLE IF NOT EXISTS {records} (
    seq             BIGINT NOT NULL DEFAULT nextval('record_seqs'),
    id              TEXT   COLLATE "C" NOT NULL,
    time_us         BIGINT NOT NULL,
    operation       TEXT   COLLATE "C" NOT NULL,
    actor           TEXT   COLLATE "C",
    request_id      TEXT   COLLATE "C" NOT NULL,
    outcome         TEXT   COLLATE "C" NOT NULL,
    status          INTEGER,
    origin_instance TEXT   COLLATE "C",
    origin_seq      BIGINT,
    record          TEXT   NOT NULL,
    PRIMARY KEY (time_us, seq),
    UNIQUE (time_us, id)
) PARTITION BY RANGE (time_us);
CREATE TABLE IF NOT EXISTS {resources} (
    key        TEXT   COLLATE "C" NOT NULL,
    time_us    BIGINT NOT NULL,
    record_seq BIGINT NOT NULL,
    PRIMARY KEY (key, time_us, record_seq)
) PARTITION BY RANGE (time_us);
CREATE TABLE IF NOT EXISTS origin_floor (
    instance TEXT COLLATE "C" PRIMARY KEY,
    seq      BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS resource_links (
    a TEXT COLLATE "C" NOT NULL,
    b TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (a, b)
);
CREATE TABLE IF NOT EXISTS chain_heads (
    uid  TEXT   COLLATE "C" PRIMARY KEY,
    seq  BIGINT NOT NULL,
    hash TEXT   NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_superseded (
    seq       BIGSERIAL PRIMARY KEY,
    chain_uid TEXT   COLLATE "C" NOT NULL,
    chain_seq BIGINT NOT NULL,
    record    TEXT   NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_floors (
    uid  TEXT   COLLATE "C" PRIMARY KEY,
    seq  BIGINT NOT NULL,
    hash TEXT   NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq       BIGSERIAL PRIMARY KEY,
    uid       TEXT    COLLATE "C" NOT NULL,
    size      BIGINT  NOT NULL,
    retention BOOLEAN NOT NULL,
    note      TEXT    NOT NULL,
    UNIQUE (uid, size, retention)
);
CREATE TABLE IF NOT EXISTS origin_crashes (
    instance TEXT   COLLATE "C" NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq   BIGINT NOT NULL,
    PRIMARY KEY (instance, from_seq, to_seq)
);
"#
    )
}

/// Indexes of the partitioned tables: each partition gets its own.
const INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS records_id        ON records (id);
CREATE INDEX IF NOT EXISTS records_operation ON records (operation text_pattern_ops, time_us, seq);
CREATE INDEX IF NOT EXISTS records_actor     ON records (actor, time_us, seq);
CREATE INDEX IF NOT EXISTS records_request   ON records (request_id);
CREATE INDEX IF NOT EXISTS records_outcome   ON records (outcome, time_us, seq);
CREATE INDEX IF NOT EXISTS records_origin    ON records (origin_instance, origin_seq);
CREATE INDEX IF NOT EXISTS records_tenant    ON records (tenant, time_us, seq);
"#;

/// Serialises partition creation between writers (`pg_advisory_xact_lock`).
const PARTITION_LOCK: i64 = 0x6175_6469_7467_7465; // "auditgte"

/// One month of records: the partitions `records_pYYYY_MM` and `resources_pYYYY_MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Month {
    year: i32,
    month: u32,
}

impl Month {
    fn of(time_us: i64) -> Month {
        use chrono::Datelike;
        let t = DateTime::<Utc>::from_timestamp_micros(time_us).unwrap_or_default();
        Month {
            year: t.year(),
            month: t.month(),
        }
    }

    fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                month: self.month + 1,
                ..self
            }
        }
    }

    /// The first microsecond of the month.
    fn start_us(self) -> i64 {
        chrono::NaiveDate::from_ymd_opt(self.year, self.month, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(i64::MIN, |t| t.and_utc().timestamp_micros())
    }

    fn suffix(self) -> String {
        format!("p{:04}_{:02}", self.year, self.month)
    }

    /// Reads `records_pYYYY_MM` back.
    fn from_partition(name: &str) -> Option<Month> {
        let rest = name.strip_prefix("records_p")?;
        let (year, month) = rest.split_once('_')?;
        Some(Month {
            year: year.parse().ok()?,
            month: month.parse().ok().filter(|m| (1..=12).contains(m))?,
        })
    }
}

/// Creates the partitions of `months` that do not exist yet, inside `tx` (which holds
/// `PARTITION_LOCK`).
async fn partition_ddl(
    tx: &Transaction<'_>,
    records: &str,
    resources: &str,
    months: impl IntoIterator<Item = Month>,
) -> Result<(), StoreError> {
    for month in months {
        let (from, to) = (month.start_us(), month.next().start_us());
        let suffix = month.suffix();
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS \"records_{suffix}\" PARTITION OF {records} FOR VALUES FROM ({from}) TO ({to});
             CREATE TABLE IF NOT EXISTS \"resources_{suffix}\" PARTITION OF {resources} FOR VALUES FROM ({from}) TO ({to});"
        ))
        .await?;
    }
    Ok(())
}

/// Creates the partitions of `months` that do not exist yet, in a transaction of its own.
async fn create_partitions(
    client: &mut Client,
    months: impl IntoIterator<Item = Month>,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .await?;
    partition_ddl(&tx, "records", "resources", months).await?;
    tx.commit().await?;
    Ok(())
}

/// The months that have partitions now.
async fn partition_months(client: &impl GenericClient) -> Result<Vec<Month>, StoreError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'records'::regclass",
            &[],
        )
        .await?;
    let mut months: Vec<Month> = rows
        .iter()
        .filter_map(|r| Month::from_partition(&r.get::<_, String>(0)))
        .collect();
    months.sort();
    Ok(months)
}

/// This month and the next: made ahead (at start and hourly), so that an insert rarely has to
/// wait for the exclusive lock creating a partition takes.
fn months_ahead() -> [Month; 2] {
    let now = Month::of(Utc::now().timestamp_micros());
    [now, now.next()]
}

/// Creates or upgrades the schema. Writers starting together take turns (`PARTITION_LOCK`),
/// so exactly one of them migrates a store made before partitioning.
async fn set_up(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .await?;
    let kind = tx
        .query_opt(
            "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass('records')",
            &[],
        )
        .await?
        .map(|row| row.get::<_, String>(0));
    if kind.as_deref() == Some("r") {
        migrate_unpartitioned(&tx).await?;
    }
    tx.batch_execute(&tables_sql("records", "resources"))
        .await?;
    // A store from before `tenant` had a column gets it (empty: those records have none).
    tx.batch_execute("ALTER TABLE records ADD COLUMN IF NOT EXISTS tenant TEXT COLLATE \"C\"")
        .await?;
    // And before the chain: its records stay unchained.
    tx.batch_execute(
        "ALTER TABLE records ADD COLUMN IF NOT EXISTS chain_uid TEXT COLLATE \"C\";
         ALTER TABLE records ADD COLUMN IF NOT EXISTS chain_seq BIGINT;",
    )
    .await?;
    tx.batch_execute(INDEXES).await?;
    partition_ddl(&tx, "records", "resources", months_ahead()).await?;
    tx.commit().await?;
    Ok(())
}

/// Moves the records of a store made before the tables were partitioned into partitioned
/// tables, inside the set-up transaction: nothing is lost if it stops half-way. The old tables
/// are locked first, so a writer of the earlier version waits rather than writes into a month
/// that has no partition; the copy needs about as much free disk again as the tables hold.
async fn migrate_unpartitioned(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tracing::info!("PostgreSQL store: moving records into monthly partitions (once)");
    tx.batch_execute("LOCK TABLE records, resources IN ACCESS EXCLUSIVE MODE;")
        .await?;
    let months: Vec<Month> = tx
        .query(
            "SELECT DISTINCT EXTRACT(YEAR FROM t)::int, EXTRACT(MONTH FROM t)::int
             FROM (SELECT to_timestamp(time_us / 1000000.0) AT TIME ZONE 'UTC' AS t FROM records) s",
            &[],
        )
        .await?
        .iter()
        .map(|r| Month {
            year: r.get(0),
            month: r.get::<_, i32>(1) as u32,
        })
        .collect();
    tx.batch_execute(&tables_sql("records_partitioned", "resources_partitioned"))
        .await?;
    partition_ddl(tx, "records_partitioned", "resources_partitioned", months).await?;
    tx.batch_execute(
        "INSERT INTO records_partitioned (seq, id, time_us, operation, actor, request_id, outcome, status, origin_instance, origin_seq, record)
           SELECT seq, id, time_us, operation, actor, request_id, outcome, status, origin_instance, origin_seq, record FROM records;
         INSERT INTO resources_partitioned (key, time_us, record_seq) SELECT key, time_us, record_seq FROM resources;
         SELECT setval('record_seqs', GREATEST((SELECT MAX(seq) FROM records), 1));
         DROP TABLE resources;
         DROP TABLE records;
         ALTER TABLE records_partitioned RENAME TO records;
         ALTER TABLE resources_partitioned RENAME TO resources;",
    )
    .await?;
    Ok(())
}

/// The shared recursive query with each name in byte order (`COLLATE "C"`): the two terms of
/// a recursive query must agree on a collation, and a store made before its columns were
/// `"C"` has the database's default one.
static POSTGRES_LINKED_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    LINKED_SQL
        .replace("CAST(?1 AS TEXT)", "CAST($1 AS TEXT) COLLATE \"C\"")
        .replace("SELECT l.b FROM", "SELECT l.b COLLATE \"C\" FROM")
        .replace("ON l.a = linked.name", "ON l.a COLLATE \"C\" = linked.name")
});

/// Records in a PostgreSQL database, in monthly partitions.
#[derive(Clone)]
pub struct PostgresStore {
    url: String,
    /// The months known to have partitions: a batch creates the ones it needs first.
    months: Arc<std::sync::Mutex<std::collections::BTreeSet<Month>>>,
    writer: Arc<Mutex<Client>>,
    /// A second connection for the other half of a large batch: one backend inserts at
    /// about one core's speed, so two halves commit side by side.
    second_writer: Arc<Mutex<Client>>,
    reader: Arc<Client>,
    /// The chain inserts extend, once `chain_as` has named it.
    chain: Arc<std::sync::Mutex<Option<ChainHead>>>,
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
    /// Creates the partitions of the months `records` fall in that are not known to exist.
    async fn ensure_partitions(&self, records: &[Incoming]) -> Result<(), StoreError> {
        self.ensure_months(
            records
                .iter()
                .map(|r| Month::of(r.record.time.timestamp_micros())),
        )
        .await
    }

    /// Creates the partitions of `months` that are not known to exist.
    async fn ensure_months(&self, months: impl Iterator<Item = Month>) -> Result<(), StoreError> {
        let missing: Vec<Month> = {
            let known = self.months.lock().unwrap_or_else(|e| e.into_inner());
            let mut missing: Vec<Month> = months.filter(|m| !known.contains(m)).collect();
            missing.sort();
            missing.dedup();
            missing
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.writer.lock().await;
        create_partitions(&mut client, missing.iter().copied()).await?;
        drop(client);
        self.months
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(missing);
        Ok(())
    }

    /// Large batches are split in two halves, each committed in its own transaction on its
    /// own connection, side by side. The batch counts as stored once both have committed. If
    /// one half fails, the caller does not acknowledge the batch, and the half that did commit
    /// is skipped as duplicates when the batch comes back.
    async fn insert_halves(&self, records: &[Incoming]) -> Result<usize, StoreError> {
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

    /// Connects and creates the schema; a store made before the tables were partitioned is
    /// moved into partitions first.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let mut writer = connect(url).await?;
        set_up(&mut writer).await?;
        let months = partition_months(&writer).await?;
        let second_writer = connect(url).await?;
        let reader = connect(url).await?;
        Ok(PostgresStore {
            url: url.to_owned(),
            months: Arc::new(std::sync::Mutex::new(months.into_iter().collect())),
            writer: Arc::new(Mutex::new(writer)),
            second_writer: Arc::new(Mutex::new(second_writer)),
            reader: Arc::new(reader),
            chain: Arc::new(std::sync::Mutex::new(None)),
        })
    }
}

/// `$n` placeholders; the operation index (`text_pattern_ops`) serves prefix ranges.
const POSTGRES: Dialect = Dialect {
    placeholder: |n| format!("${n}"),
    // Byte order whatever the column's collation (a store made before its columns were
    // `COLLATE "C"`): under a linguistic one, `asset.` <= x < `asset/` also holds `asset@x`.
    prefix_column: "r.operation COLLATE \"C\"",
    // By the primary key, so each partition is probed by (time, seq), not by seq alone.
    resource_columns: "(r.time_us, r.seq)",
    resource_rows: "SELECT time_us, record_seq FROM resources WHERE key = ",
    json_member: |name| format!("(r.record::json ->> '{name}')"),
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

/// The rows beside the records: the resource keys of the records `stored` (with the store's
/// seq for each), and the resource links and crashes that `named` rows announce.
async fn insert_beside(
    tx: &Transaction<'_>,
    stored: &[(&Row, i64)],
    named: &[&Row],
) -> Result<(), StoreError> {
    let (mut keys, mut key_times, mut key_seqs) = (Vec::new(), Vec::new(), Vec::new());
    for (r, seq) in stored {
        for key in &r.keys {
            keys.push(key.clone());
            key_times.push(r.time_us);
            key_seqs.push(*seq);
        }
    }
    let (mut link_a, mut link_b) = (Vec::new(), Vec::new());
    let (mut crash_instances, mut crash_from, mut crash_to) = (Vec::new(), Vec::new(), Vec::new());
    for r in named {
        for (a, b) in &r.links {
            link_a.push(a.clone());
            link_b.push(b.clone());
        }
        if let (Some(instance), Some((from, to))) = (&r.instance, r.after_crash) {
            crash_instances.push(instance.clone());
            crash_from.push(from);
            crash_to.push(to);
        }
    }
    if !link_a.is_empty() {
        tx.execute(
            "INSERT INTO resource_links (a, b)
             SELECT * FROM UNNEST($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
            &[&link_a, &link_b],
        )
        .await?;
    }
    if !crash_instances.is_empty() {
        tx.execute(
            "INSERT INTO origin_crashes (instance, from_seq, to_seq)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) ON CONFLICT DO NOTHING",
            &[&crash_instances, &crash_from, &crash_to],
        )
        .await?;
    }
    if !keys.is_empty() {
        tx.execute(
            "INSERT INTO resources (key, time_us, record_seq)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) ON CONFLICT DO NOTHING",
            &[&keys, &key_times, &key_seqs],
        )
        .await?;
    }
    Ok(())
}

/// Inserts one part of a batch in one transaction; returns how many records were new.
async fn insert_part(client: &Mutex<Client>, records: &[Incoming]) -> Result<usize, StoreError> {
    // One row per `id`: `ON CONFLICT DO UPDATE` refuses a command that would touch one row
    // twice, which a batch holding a record twice (a redelivery), or a received record and
    // its complete one, would.
    let rows = Row::one_per_id(Row::all(records));
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
    let mut tenants = Vec::with_capacity(rows.len());
    for r in &rows {
        tenants.push(r.tenant.clone());
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
            "INSERT INTO records (id, time_us, record, operation, actor, request_id, outcome, status, origin_instance, origin_seq, tenant)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[], $9::text[], $10::bigint[], $11::text[])
             ON CONFLICT (time_us, id) DO UPDATE SET record = EXCLUDED.record, tenant = EXCLUDED.tenant,
                 operation = EXCLUDED.operation, actor = EXCLUDED.actor,
                 request_id = EXCLUDED.request_id, outcome = EXCLUDED.outcome,
                 status = EXCLUDED.status
             WHERE records.outcome = 'unknown' AND EXCLUDED.outcome <> 'unknown'
             RETURNING seq, id",
            &[&ids, &times, &jsons, &operations, &actors, &request_ids, &outcomes, &statuses, &instances, &seqs, &tenants],
        )
        .await?;
    let new: std::collections::HashMap<String, i64> = inserted
        .iter()
        .map(|row| (row.get::<_, String>(1), row.get::<_, i64>(0)))
        .collect();
    let stored: Vec<(&Row, i64)> = rows
        .iter()
        .filter_map(|r| new.get(&r.id).map(|seq| (r, *seq)))
        .collect();
    let named: Vec<&Row> = rows.iter().collect();
    insert_beside(&tx, &stored, &named).await?;
    tx.commit().await?;
    Ok(new.len())
}

/// A record of a chained batch, ready to commit: its row, its JSON with its link, the link's
/// place, and whether it replaces a stored received record (whose old JSON keeps its link).
struct Planned<'a> {
    row: &'a Row,
    json: String,
    chain_seq: i64,
    hash: [u8; 32],
    supersedes: Option<(String, i64, String)>,
}

/// Inserts a batch, each new record the next link of the chain after `head` (see the SQLite
/// store's `insert_chained`). A large batch is committed as two halves on two connections side
/// by side, as unchained batches are; the links stay in order because each half moves the
/// chain's head only from where the half before it left it: the second half's update of
/// `chain_heads` waits on the first's row lock, and fails (rolling its half back) unless the
/// first committed. Another writer storing one of the same records meanwhile fails the commit,
/// and the batch is read again; the head is then read back from the store.
async fn insert_chained(
    store: &PostgresStore,
    records: &[Incoming],
    head: ChainHead,
) -> Result<(usize, ChainHead), StoreError> {
    let result = insert_chained_once(store, records, head.clone()).await;
    if result.is_err() {
        // One half may have committed: the head is what the store says.
        let row = store
            .reader
            .query_opt(
                "SELECT uid, seq, hash FROM chain_heads WHERE uid = $1",
                &[&head.uid],
            )
            .await?;
        let stored = match row {
            Some(r) => ChainHead::read(r.get(0), r.get(1), &r.get::<_, String>(2))?,
            None => ChainHead::empty(&head.uid),
        };
        *store.chain.lock().unwrap_or_else(|p| p.into_inner()) = Some(stored);
    }
    result
}

async fn insert_chained_once(
    store: &PostgresStore,
    records: &[Incoming],
    mut head: ChainHead,
) -> Result<(usize, ChainHead), StoreError> {
    // One per id (a batch may hold a record twice, or a received record and its complete one),
    // each with its canonical JSON.
    let rows = Row::all(records);
    let canonicals = Chained::all(records)?;
    let mut kept: Vec<(&Row, &crate::chain::Canonical)> = Vec::with_capacity(rows.len());
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (row, c) in rows.iter().zip(&canonicals) {
        match at.get(row.id.as_str()) {
            Some(&i) => {
                if kept[i].0.outcome == "unknown" && row.outcome != "unknown" {
                    kept[i] = (row, &c.canonical);
                }
            }
            None => {
                at.insert(&row.id, kept.len());
                kept.push((row, &c.canonical));
            }
        }
    }
    let ids: Vec<&str> = kept.iter().map(|(r, _)| r.id.as_str()).collect();
    type Found = (String, String, Option<String>, Option<i64>);
    let mut stored: std::collections::HashMap<String, Found> = std::collections::HashMap::new();
    for row in store
        .reader
        .query(
            "SELECT id, outcome, record, chain_uid, chain_seq FROM records WHERE id = ANY($1)",
            &[&ids],
        )
        .await?
    {
        stored.insert(row.get(0), (row.get(1), row.get(2), row.get(3), row.get(4)));
    }
    let before = head.seq as i64;
    let mut planned = Vec::with_capacity(kept.len());
    for (row, canonical) in kept {
        let supersedes = match stored.get(&row.id) {
            None => None,
            Some((outcome, old, uid, at)) if outcome == "unknown" && row.outcome != "unknown" => {
                Some((uid.clone(), *at, old.clone()))
            }
            Some(_) => continue, // already stored: exactly once
        };
        let link = head.next(canonical.text().as_bytes());
        let json = canonical.chained(&link);
        head.advance(&link);
        planned.push(Planned {
            row,
            json,
            chain_seq: link.seq as i64,
            hash: link.hash,
            supersedes: supersedes
                .map(|(uid, at, old)| (uid.unwrap_or_default(), at.unwrap_or(-1), old)),
        });
    }
    // Links and crashes are keyed by value, so two halves could each wait on the other's
    // row: the first half writes them all.
    let shared: Vec<&Row> = rows.iter().collect();
    if planned.len() < SPLIT_AT {
        let n = commit_part(
            &store.writer,
            &planned,
            Some(&shared),
            &head,
            before,
            head.seq as i64,
            None,
        )
        .await?;
        return Ok((n, head));
    }
    let (first, second) = planned.split_at(planned.len() / 2);
    let middle = first.last().map_or(before, |p| p.chain_seq);
    let middle_hash = first.last().map_or(crate::chain::GENESIS, |p| p.hash);
    let first_head = ChainHead {
        uid: head.uid.clone(),
        seq: middle as u64,
        hash: middle_hash,
    };
    // The second half moves the head only once the first has committed.
    let (committed, first_done) = tokio::sync::oneshot::channel();
    let (a, b) = tokio::join!(
        async {
            let n = commit_part(
                &store.writer,
                first,
                Some(&shared),
                &first_head,
                before,
                middle,
                None,
            )
            .await?;
            let _ = committed.send(());
            Ok::<_, StoreError>(n)
        },
        commit_part(
            &store.second_writer,
            second,
            None,
            &head,
            middle,
            head.seq as i64,
            Some(first_done)
        )
    );
    Ok((a? + b?, head))
}

/// Commits one part of a chained batch in one transaction, moving the chain's head from
/// `from` to `to` (`head`); returns how many records it stored.
async fn commit_part(
    client: &Mutex<Client>,
    part: &[Planned<'_>],
    shared: Option<&[&Row]>,
    head: &ChainHead,
    from: i64,
    to: i64,
    after: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<usize, StoreError> {
    let mut client = client.lock().await;
    let tx = client.transaction().await?;
    let new: Vec<&Planned<'_>> = part.iter().filter(|p| p.supersedes.is_none()).collect();
    let mut record_seqs: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    if !new.is_empty() {
        let col = |f: &dyn Fn(&Row) -> Option<String>| -> Vec<Option<String>> {
            new.iter().map(|p| f(p.row)).collect()
        };
        let ids = col(&|r| Some(r.id.clone()));
        let times: Vec<i64> = new.iter().map(|p| p.row.time_us).collect();
        let jsons: Vec<&str> = new.iter().map(|p| p.json.as_str()).collect();
        let operations = col(&|r| Some(r.operation.clone()));
        let actors = col(&|r| r.actor.clone());
        let request_ids = col(&|r| Some(r.request_id.clone()));
        let outcomes = col(&|r| Some(r.outcome.to_owned()));
        let statuses: Vec<Option<i32>> = new.iter().map(|p| p.row.status).collect();
        let instances = col(&|r| r.instance.clone());
        let seqs: Vec<Option<i64>> = new.iter().map(|p| p.row.origin_seq).collect();
        let tenants = col(&|r| r.tenant.clone());
        let chain_uids: Vec<&str> = new.iter().map(|_| head.uid.as_str()).collect();
        let chain_seqs: Vec<i64> = new.iter().map(|p| p.chain_seq).collect();
        let inserted = tx
            .query(
                "INSERT INTO records (id, time_us, record, operation, actor, request_id, outcome, status, origin_instance, origin_seq, tenant, chain_uid, chain_seq)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[], $9::text[], $10::bigint[], $11::text[], $12::text[], $13::bigint[])
                 ON CONFLICT (time_us, id) DO NOTHING
                 RETURNING seq, id",
                &[&ids, &times, &jsons, &operations, &actors, &request_ids, &outcomes, &statuses, &instances, &seqs, &tenants, &chain_uids, &chain_seqs],
            )
            .await?;
        if inserted.len() != new.len() {
            return Err(StoreError::Other(
                "another writer stored some of these records meanwhile; the batch is read again"
                    .into(),
            ));
        }
        record_seqs.extend(inserted.iter().map(|row| (row.get(1), row.get(0))));
    }
    for p in part.iter().filter(|p| p.supersedes.is_some()) {
        let r = p.row;
        let updated = tx
            .query(
                "UPDATE records SET record = $1, tenant = $2, operation = $3, actor = $4,
                     request_id = $5, outcome = $6, status = $7, chain_uid = $8, chain_seq = $9
                 WHERE id = $10 AND time_us = $11 AND outcome = 'unknown' RETURNING seq",
                &[
                    &p.json,
                    &r.tenant,
                    &r.operation,
                    &r.actor,
                    &r.request_id,
                    &r.outcome,
                    &r.status,
                    &head.uid,
                    &p.chain_seq,
                    &r.id,
                    &r.time_us,
                ],
            )
            .await?;
        let Some(row) = updated.first() else {
            return Err(StoreError::Other(
                "another writer completed a record of this batch meanwhile; the batch is read again"
                    .into(),
            ));
        };
        record_seqs.insert(r.id.clone(), row.get(0));
        if let Some((uid, at, old)) = &p.supersedes
            && *at >= 0
        {
            tx.execute(
                "INSERT INTO chain_superseded (chain_uid, chain_seq, record) VALUES ($1, $2, $3)",
                &[uid, at, old],
            )
            .await?;
        }
    }
    let stored: Vec<(&Row, i64)> = part
        .iter()
        .filter_map(|p| record_seqs.get(&p.row.id).map(|seq| (p.row, *seq)))
        .collect();
    insert_beside(&tx, &stored, shared.unwrap_or_default()).await?;
    // The head moves only from where this part found it: the second half waits here for the
    // first's commit (and is rolled back if that fails), and a second writer using the same
    // chain uid fails instead of forking it.
    if let Some(after) = after
        && after.await.is_err()
    {
        return Err(StoreError::Other(
            "the first half of this batch failed; the batch is read again".into(),
        ));
    }
    let moved = tx
        .execute(
            "INSERT INTO chain_heads (uid, seq, hash) VALUES ($1, $2, $3)
             ON CONFLICT (uid) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
             WHERE chain_heads.seq = $4",
            &[&head.uid, &to, &crate::chain::hex(&head.hash), &from],
        )
        .await?;
    if moved != 1 {
        return Err(StoreError::Other(format!(
            "chain {}: the head moved under this commit (the batch's first half failed, or another writer extends the same chain: give each writer its own chain_uid)",
            head.uid
        )));
    }
    tx.commit().await?;
    Ok(record_seqs.len())
}

/// Chain heads (or floors) from rows of `(uid, seq, hash)`.
async fn heads(client: &impl GenericClient, sql: &str) -> Result<Vec<ChainHead>, StoreError> {
    client
        .query(sql, &[])
        .await?
        .iter()
        .map(|r| ChainHead::read(r.get(0), r.get(1), &r.get::<_, String>(2)))
        .collect()
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn chain_as(&self, uid: &str) -> Result<ChainHead, StoreError> {
        let row = self
            .writer
            .lock()
            .await
            .query_opt(
                "SELECT uid, seq, hash FROM chain_heads WHERE uid = $1",
                &[&uid],
            )
            .await?;
        let head = match row {
            Some(r) => ChainHead::read(r.get(0), r.get(1), &r.get::<_, String>(2))?,
            None => ChainHead::empty(uid),
        };
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
        heads(
            &*self.reader,
            "SELECT uid, seq, hash FROM chain_heads ORDER BY uid",
        )
        .await
    }

    async fn chain_floors(&self) -> Result<Vec<ChainHead>, StoreError> {
        heads(
            &*self.reader,
            "SELECT uid, seq, hash FROM chain_floors ORDER BY uid",
        )
        .await
    }

    async fn retention_cuts(&self, before: DateTime<Utc>) -> Result<Vec<ChainHead>, StoreError> {
        let before_time = before;
        let before = before.timestamp_micros();
        let mut cuts = Vec::new();
        for head in self.chain_heads().await? {
            let first_young: Option<i64> = self
                .reader
                .query_one(
                    "SELECT MIN(chain_seq) FROM records WHERE chain_uid = $1 AND time_us >= $2",
                    &[&head.uid, &before],
                )
                .await?
                .get(0);
            let cut = first_young.map_or(head.seq as i64, |s| s - 1);
            if cut < 1 {
                continue;
            }
            let mut at = Vec::new();
            for seq in [cut, cut + 1] {
                let row = self
                    .reader
                    .query_opt(
                        "SELECT record FROM records WHERE chain_uid = $1 AND chain_seq = $2
                         UNION ALL SELECT record FROM chain_superseded WHERE chain_uid = $1 AND chain_seq = $2
                         LIMIT 1",
                        &[&head.uid, &seq],
                    )
                    .await?;
                at.push(row.map(|r| r.get::<_, String>(0)));
            }
            if let Some(hash) = at[0]
                .as_deref()
                .and_then(|j| super::checked_cut(j, at[1].as_deref(), before_time))
            {
                cuts.push(ChainHead {
                    uid: head.uid,
                    seq: cut as u64,
                    hash,
                });
            }
        }
        Ok(cuts)
    }

    async fn scan(
        &self,
        superseded: bool,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ScannedRow>, StoreError> {
        let sql = if superseded {
            "SELECT seq, record, chain_uid, chain_seq, NULL::text, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text
             FROM chain_superseded WHERE seq > $1 ORDER BY seq LIMIT $2"
        } else {
            "SELECT seq, record, chain_uid, chain_seq, id, time_us, operation, actor, request_id, outcome, tenant
             FROM records WHERE seq > $1 ORDER BY seq LIMIT $2"
        };
        let rows = self.reader.query(sql, &[&after, &(limit as i64)]).await?;
        Ok(rows
            .iter()
            .map(|r| ScannedRow {
                store_seq: r.get(0),
                json: r.get(1),
                chain: match (r.get::<_, Option<String>>(2), r.get::<_, Option<i64>>(3)) {
                    (Some(uid), Some(seq)) => Some((uid, seq)),
                    _ => None,
                },
                columns: r.get::<_, Option<String>>(4).map(|id| Columns {
                    id,
                    time_us: r.get(5),
                    operation: r.get(6),
                    actor: r.get(7),
                    request_id: r.get(8),
                    outcome: r.get(9),
                    tenant: r.get(10),
                }),
            })
            .collect())
    }

    async fn save_checkpoint(
        &self,
        checkpoint: &crate::chain::Checkpoint,
        note: &str,
    ) -> Result<(), StoreError> {
        self.writer
            .lock()
            .await
            .execute(
                "INSERT INTO checkpoints (uid, size, retention, note) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[
                    &checkpoint.uid,
                    &(checkpoint.size as i64),
                    &checkpoint.retention,
                    &note,
                ],
            )
            .await?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .reader
            .query("SELECT note FROM checkpoints ORDER BY seq", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The months the batch falls in get their partitions first; see `insert_halves`.
    async fn insert(&self, records: &[Incoming]) -> Result<usize, StoreError> {
        let head = self.chain.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(head) = head {
            self.ensure_partitions(records).await?;
            let (inserted, head) = insert_chained(self, records, head).await?;
            *self.chain.lock().unwrap_or_else(|p| p.into_inner()) = Some(head);
            return Ok(inserted);
        }
        self.ensure_partitions(records).await?;
        match self.insert_halves(records).await {
            // Another writer's retention dropped a month this one thought was there (a late
            // record): learn the partitions again and retry once.
            Err(StoreError::Postgres(e))
                if e.code() == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION) =>
            {
                let known = partition_months(&*self.writer.lock().await).await?;
                *self.months.lock().unwrap_or_else(|e| e.into_inner()) =
                    known.into_iter().collect();
                self.ensure_partitions(records).await?;
                self.insert_halves(records).await
            }
            result => result,
        }
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

    fn export(&self, mut query: Query) -> mpsc::Receiver<Result<Vec<String>, StoreError>> {
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
            loop {
                let p = match page(&client, &query).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if !p.records.is_empty() && tx.send(Ok(p.records)).await.is_err() {
                    return;
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
        let rows = self.reader.query(GAPS_SQL, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| Gap::of(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect())
    }

    /// Months wholly before `before` are dropped as partitions, in a short transaction of
    /// their own; the records of the month `before` falls in are deleted row by row first.
    async fn delete_before(
        &self,
        before: DateTime<Utc>,
        cuts: &[ChainHead],
    ) -> Result<u64, StoreError> {
        let cut = Month::of(before.timestamp_micros());
        let (before, cut_start) = (before.timestamp_micros(), cut.start_us());
        let mut client = self.writer.lock().await;
        let tx = client.transaction().await?;
        let cut_uids: Vec<&str> = cuts.iter().map(|c| c.uid.as_str()).collect();
        let cut_seqs: Vec<i64> = cuts.iter().map(|c| c.seq as i64).collect();
        let cut_hashes: Vec<String> = cuts.iter().map(|c| crate::chain::hex(&c.hash)).collect();
        tx.execute(
            "INSERT INTO chain_floors (uid, seq, hash)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[])
             ON CONFLICT (uid) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
             WHERE excluded.seq > chain_floors.seq",
            &[&cut_uids, &cut_seqs, &cut_hashes],
        )
        .await?;
        tx.execute(
            "DELETE FROM chain_superseded s USING UNNEST($1::text[], $2::bigint[]) c(uid, seq)
             WHERE s.chain_uid = c.uid AND s.chain_seq <= c.seq",
            &[&cut_uids, &cut_seqs],
        )
        .await?;
        // A month holding a chained record above its chain's cut (or of a chain without one)
        // is not dropped whole: its old records go one by one, the rest stay.
        let keeps =
            "EXISTS (SELECT 1 FROM records k LEFT JOIN UNNEST($1::text[], $2::bigint[]) c(uid, seq)
                     ON c.uid = k.chain_uid WHERE k.time_us < $3 AND k.chain_uid IS NOT NULL
                     AND (c.seq IS NULL OR k.chain_seq > c.seq))";
        let held: bool = tx
            .query_one(
                &format!("SELECT {keeps}"),
                &[&cut_uids, &cut_seqs, &cut_start],
            )
            .await?
            .get(0);
        let cut_start = if held { i64::MIN } else { cut_start };
        // What the deleted records said of their producers' sequences stays known, so that
        // `/gaps` does not report the deleted range as lost.
        tx.execute(
            "INSERT INTO origin_floor (instance, seq)
             SELECT origin_instance, MAX(origin_seq) FROM records
             WHERE time_us < $1 AND origin_instance IS NOT NULL GROUP BY origin_instance
             ON CONFLICT (instance) DO UPDATE SET seq = GREATEST(origin_floor.seq, excluded.seq)",
            &[&before],
        )
        .await?;
        let in_whole_months: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM records WHERE time_us < $1",
                &[&cut_start],
            )
            .await?
            .get(0);
        // The resource keys of these rows stay until their month is dropped: they point at no
        // record, so no query shows them, and finding them would scan the month (no index of
        // `resources` leads with the time).
        let deleted = tx
            .execute(
                "DELETE FROM records r WHERE time_us >= $1 AND time_us < $2
                 AND (r.chain_uid IS NULL OR r.chain_seq <= (SELECT c.seq FROM UNNEST($3::text[], $4::bigint[]) c(uid, seq) WHERE c.uid = r.chain_uid))",
                &[&cut_start, &before, &cut_uids, &cut_seqs],
            )
            .await?;
        tx.commit().await?;

        if !held && partition_months(&*client).await?.iter().any(|m| *m < cut) {
            let tx = client.transaction().await?;
            // A chained batch's second half holds `records` while it waits for its first
            // half, which waits for this connection: give up rather than wait in that circle
            // (PostgreSQL cannot see its in-process edge); the next hour tries again.
            tx.batch_execute("SET LOCAL lock_timeout = '5s'").await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
                .await?;
            let whole: Vec<Month> = partition_months(&tx)
                .await?
                .into_iter()
                .filter(|m| *m < cut)
                .collect();
            // In the order inserts take them, so that neither waits on the other in a circle.
            tx.batch_execute("LOCK TABLE records, resources IN ACCESS EXCLUSIVE MODE;")
                .await?;
            for month in &whole {
                let suffix = month.suffix();
                tx.batch_execute(&format!(
                    "DROP TABLE IF EXISTS \"records_{suffix}\"; DROP TABLE IF EXISTS \"resources_{suffix}\";"
                ))
                .await?;
            }
            tx.commit().await?;
            let mut known = self.months.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|m| *m >= cut);
        }
        Ok(in_whole_months as u64 + deleted)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let row = self
            .reader
            .query_one("SELECT COUNT(*) FROM records", &[])
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn optimize(&self) -> Result<(), StoreError> {
        self.ensure_months(months_ahead().into_iter()).await?;
        self.writer
            .lock()
            .await
            .batch_execute("ANALYZE records; ANALYZE resources;")
            .await?;
        Ok(())
    }

    async fn linked(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let name = crate::store::indexed(name).into_owned();
        let rows = self.reader.query(&*POSTGRES_LINKED_SQL, &[&name]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn operations(&self, tenant: Option<&str>) -> Result<Vec<String>, StoreError> {
        let rows = match tenant {
            None => self.reader.query(OPERATIONS_SQL, &[]).await?,
            Some(tenant) => self
                .reader
                .query(
                    "SELECT DISTINCT operation FROM records WHERE tenant = $1 ORDER BY operation",
                    &[&tenant],
                )
                .await?,
        };
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn us(y: i32, m: u32, d: u32) -> i64 {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn months_have_exact_bounds_and_names_that_read_back() {
        let nov = Month::of(us(2026, 11, 1));
        assert_eq!((nov.year, nov.month), (2026, 11));
        assert_eq!(nov.start_us(), us(2026, 11, 1));
        // The last microsecond of October is October's.
        assert_eq!(Month::of(us(2026, 11, 1) - 1).month, 10);
        let dec = Month::of(us(2026, 12, 31));
        assert_eq!(
            dec.next(),
            Month {
                year: 2027,
                month: 1
            }
        );
        assert_eq!(dec.next().start_us(), us(2027, 1, 1));
        // Before 1970 too: division rounds towards the past, not towards zero.
        let old = Month::of(us(1969, 12, 31) + 5);
        assert_eq!((old.year, old.month), (1969, 12));
        for month in [nov, dec, old] {
            assert_eq!(
                Month::from_partition(&format!("records_{}", month.suffix())),
                Some(month)
            );
        }
        assert_eq!(Month::from_partition("records_p2026_13"), None);
        assert_eq!(Month::from_partition("records"), None);
    }
}
