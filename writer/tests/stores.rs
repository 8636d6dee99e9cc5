//! The stores against real databases, below the API: a large batch into PostgreSQL (split
//! over two connections) stores each record once, duplicates included, and is found again
//! by resource and in full; records live in monthly partitions that retention drops whole;
//! a store made before partitioning is moved into partitions at start.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use auditgate_rules::Origin;
use auditgate_tests::{PostgresServer, record};
use auditgate_writer::store::{Incoming, PostgresStore, Query, Store};
use chrono::{TimeZone, Utc};

/// A plain connection to look at the tables the store made.
async fn client(pg: &PostgresServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn partitions(client: &tokio_postgres::Client, parent: &str) -> Vec<String> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = $1::text::regclass ORDER BY 1",
            &[&parent],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// `months` (`2026_09`, ...) as partitions of `parent`, with the current and the next month,
/// which a store makes ahead of need.
fn with_months_ahead(parent: &str, months: &[&str]) -> Vec<String> {
    use chrono::Datelike;
    let now = Utc::now();
    let next = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let mut all: Vec<String> = months
        .iter()
        .map(|m| format!("{parent}_p{m}"))
        .chain([
            format!("{parent}_p{:04}_{:02}", now.year(), now.month()),
            format!("{parent}_p{:04}_{:02}", next.0, next.1),
        ])
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Record `n`, on the 10th of `month` 2026 at noon plus `n` seconds, from producer `p1`.
fn in_month(month: u32, n: u64) -> Incoming {
    let mut r = record(n);
    r.time = Utc.with_ymd_and_hms(2026, month, 10, 12, 0, 0).unwrap()
        + chrono::Duration::seconds(n as i64);
    r.origin = Some(Origin {
        kind: "proxy".into(),
        instance: "p1".into(),
        after_crash: None,
        seq: n,
    });
    Incoming::from_record(r).unwrap()
}

async fn found(store: &PostgresStore, resource: &str) -> usize {
    store
        .query(&Query {
            resource: Some(resource.into()),
            limit: 100,
            ..Query::default()
        })
        .await
        .unwrap()
        .records
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_records_live_in_monthly_partitions_that_retention_drops_whole() {
    let pg = PostgresServer::start();
    let store = PostgresStore::connect(&pg.url()).await.unwrap();
    let db = client(&pg).await;
    // Ten records each in September, October and November; origin.seq 1..=30.
    let batch: Vec<Incoming> = (1..=30u64)
        .map(|n| in_month(9 + ((n - 1) / 10) as u32, n))
        .collect();
    assert_eq!(store.insert(&batch).await.unwrap(), 30);
    assert_eq!(
        store.insert(&batch).await.unwrap(),
        0,
        "duplicates are ignored"
    );
    assert_eq!(
        partitions(&db, "records").await,
        with_months_ahead("records", &["2026_09", "2026_10", "2026_11"])
    );
    assert_eq!(
        partitions(&db, "resources").await,
        with_months_ahead("resources", &["2026_09", "2026_10", "2026_11"])
    );

    // Up to October 10th 12:00:15: September goes as a partition, October's 11..=14 as rows.
    // Two writers' retention at once: both succeed, and together they delete those 14.
    let before = Utc.with_ymd_and_hms(2026, 10, 10, 12, 0, 15).unwrap();
    let other = PostgresStore::connect(&pg.url()).await.unwrap();
    let (a, b) = tokio::join!(
        store.delete_before(before, &[]),
        other.delete_before(before, &[])
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a + b >= 14 && a.max(b) <= 14, "{a} + {b}");
    assert_eq!(
        partitions(&db, "records").await,
        with_months_ahead("records", &["2026_10", "2026_11"])
    );
    assert_eq!(store.count().await.unwrap(), 16);
    assert_eq!(found(&store, "f3").await, 0);
    assert_eq!(found(&store, "f14").await, 0);
    assert_eq!(found(&store, "f15").await, 1);
    assert_eq!(found(&store, "/forest/file-25.png").await, 1);
    // What retention deleted is not reported as lost.
    assert!(store.gaps().await.unwrap().is_empty());

    // A late September record makes its month again.
    assert_eq!(store.insert(&[in_month(9, 31)]).await.unwrap(), 1);
    assert_eq!(found(&store, "f31").await, 1);
    assert_eq!(
        partitions(&db, "records").await,
        with_months_ahead("records", &["2026_09", "2026_10", "2026_11"])
    );

    // Another writer's retention drops that month behind this store's back: the next late
    // record still lands.
    db.batch_execute("DROP TABLE resources_p2026_09; DROP TABLE records_p2026_09;")
        .await
        .unwrap();
    assert_eq!(store.insert(&[in_month(9, 32)]).await.unwrap(), 1);
    assert_eq!(found(&store, "f32").await, 1);
}

/// The schema of stores made before partitioning.
const UNPARTITIONED: &str = r#"
CREATE TABLE records (
    seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, time_us BIGINT NOT NULL,
    operation TEXT NOT NULL, actor TEXT, request_id TEXT NOT NULL, outcome TEXT NOT NULL,
    status INTEGER, origin_instance TEXT, origin_seq BIGINT, record TEXT NOT NULL
);
CREATE INDEX records_time      ON records (time_us, seq);
CREATE INDEX records_operation ON records (operation text_pattern_ops, time_us, seq);
CREATE INDEX records_actor     ON records (actor, time_us, seq);
CREATE INDEX records_request   ON records (request_id);
CREATE INDEX records_outcome   ON records (outcome, time_us, seq);
CREATE INDEX records_origin    ON records (origin_instance, origin_seq);
CREATE TABLE resources (
    key TEXT NOT NULL, time_us BIGINT NOT NULL,
    record_seq BIGINT NOT NULL REFERENCES records (seq) ON DELETE CASCADE,
    PRIMARY KEY (key, time_us, record_seq)
);
CREATE INDEX resources_record ON resources (record_seq);
CREATE TABLE origin_floor (instance TEXT PRIMARY KEY, seq BIGINT NOT NULL);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_made_before_partitioning_is_moved_into_partitions() {
    let pg = PostgresServer::start();
    let db = client(&pg).await;
    db.batch_execute(UNPARTITIONED).await.unwrap();
    let old: Vec<Incoming> = [(10, 1u64), (10, 2), (11, 3)]
        .into_iter()
        .map(|(month, n)| in_month(month, n))
        .collect();
    for r in &old {
        let rec = &r.record;
        let seq: i64 = db
            .query_one(
                "INSERT INTO records (id, time_us, operation, actor, request_id, outcome, status, origin_instance, origin_seq, record)
                 VALUES ($1, $2, $3, NULL, $4, 'success', 200, 'p1', $5, $6) RETURNING seq",
                &[
                    &rec.id.to_string(),
                    &rec.time.timestamp_micros(),
                    &rec.operation,
                    &rec.request.id,
                    &(rec.origin.as_ref().unwrap().seq as i64),
                    &r.json,
                ],
            )
            .await
            .unwrap()
            .get(0);
        for key in [
            rec.resources[0].id.clone().unwrap(),
            rec.resources[0].path.clone().unwrap(),
        ] {
            db.execute(
                "INSERT INTO resources (key, time_us, record_seq) VALUES ($1, $2, $3)",
                &[&key, &rec.time.timestamp_micros(), &seq],
            )
            .await
            .unwrap();
        }
    }

    // Two writers start together: one migrates, the other waits and finds it done.
    let url = pg.url();
    let (store, other) = tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
    let (store, _other) = (store.unwrap(), other.unwrap());
    let kind: String = db
        .query_one(
            "SELECT relkind::text FROM pg_class WHERE oid = 'records'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "p", "records is partitioned now");
    assert_eq!(
        partitions(&db, "records").await,
        with_months_ahead("records", &["2026_10", "2026_11"])
    );
    assert_eq!(store.count().await.unwrap(), 3);
    assert_eq!(found(&store, "f2").await, 1);
    assert_eq!(found(&store, "/forest/file-3.png").await, 1);
    let id = old[0].record.id.to_string();
    assert_eq!(
        store.get(&id).await.unwrap().as_deref(),
        Some(old[0].json.as_str())
    );
    // Stored records stay duplicates; a new one comes after them, newest first.
    assert_eq!(store.insert(&old).await.unwrap(), 0);
    assert_eq!(store.insert(&[in_month(11, 4)]).await.unwrap(), 1);
    let newest = store
        .query(&Query {
            limit: 1,
            ..Query::default()
        })
        .await
        .unwrap();
    assert!(
        newest.records[0].contains("file-4.png"),
        "{:?}",
        newest.records
    );
    // The sequence went on from the copied records: every seq is still one record's.
    let distinct: bool = db
        .query_one("SELECT COUNT(DISTINCT seq) = COUNT(*) FROM records", &[])
        .await
        .unwrap()
        .get(0);
    assert!(distinct);
    assert_eq!(found(&store, "f4").await, 1);

    // A second start finds the partitioned tables and leaves them.
    drop(store);
    let again = PostgresStore::connect(&pg.url()).await.unwrap();
    assert_eq!(again.count().await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_postgres_batch_is_stored_once_across_both_halves() {
    let pg = PostgresServer::start();
    let store = PostgresStore::connect(&pg.url()).await.unwrap();
    let mut records: Vec<Incoming> = (0..3000)
        .map(|i| {
            let mut r = record(i);
            // One resource shared by a record in each half of the batch, and many more.
            if i % 100 == 7 {
                r.resources[0].id = Some("shared".into());
            }
            Incoming::from_record(r).unwrap()
        })
        .collect();
    assert_eq!(store.insert(&records).await.unwrap(), 3000);

    // Again, with 1000 of them repeated: only the new ones count.
    records.truncate(1000);
    records.extend((3000..4500).map(|i| Incoming::from_record(record(i)).unwrap()));
    assert_eq!(store.insert(&records).await.unwrap(), 1500);
    assert_eq!(store.count().await.unwrap(), 4500);

    let shared = store
        .query(&Query {
            resource: Some("shared".into()),
            limit: 100,
            ..Query::default()
        })
        .await
        .unwrap();
    assert_eq!(shared.records.len(), 30, "records 7, 107, ... 2907");
    let one = &records[1200];
    let path = one.record.resources[0].path.clone().unwrap();
    let by_path = store
        .query(&Query {
            resource: Some(path),
            limit: 10,
            ..Query::default()
        })
        .await
        .unwrap();
    assert_eq!(by_path.records, vec![one.json.clone()]);
}

/// A database whose default collation is a linguistic one (ICU `en`, as many are made): the
/// `asset.*` prefix still holds exactly the operations that begin with `asset.`, where that
/// collation sorts `@` and `(` between `.` and `/`; and a history still follows linked names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_prefixes_are_byte_ranges_under_a_linguistic_database_collation() {
    let pg = PostgresServer::start();
    client(&pg)
        .await
        .batch_execute(
            "CREATE DATABASE linguistic TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C.UTF-8'",
        )
        .await
        .unwrap();
    let url = format!("{}/linguistic", pg.url().rsplit_once('/').unwrap().0);
    let store = PostgresStore::connect(&url).await.unwrap();
    let operations = ["asset.rename", "asset@shared", "asset(copy)", "assets.list"];
    let records: Vec<Incoming> = operations
        .iter()
        .enumerate()
        .map(|(n, op)| {
            let mut r = record(n as u64);
            r.operation = (*op).into();
            Incoming::from_record(r).unwrap()
        })
        .collect();
    assert_eq!(store.insert(&records).await.unwrap(), 4);
    let page = store
        .query(&Query {
            operation: vec![auditgate_writer::store::OperationFilter::Prefix(
                "asset.".into(),
            )],
            limit: 100,
            ..Query::default()
        })
        .await
        .unwrap();
    let found: Vec<String> = page
        .records
        .iter()
        .map(|json| {
            serde_json::from_str::<serde_json::Value>(json).unwrap()["operation"].to_string()
        })
        .collect();
    assert_eq!(found, ["\"asset.rename\""]);
    // `record(n)` names a file by id and path: the history query follows the link.
    let path = records[0].record.resources[0].path.clone().unwrap();
    assert!(
        store.linked(&path).await.unwrap().len() > 1,
        "the path's id is linked"
    );
}

/// A chained batch large enough to be committed in two halves: each record stored once, the
/// redelivered ones skipped without a link, a complete record replacing its received one as a
/// new link (the received one keeping its own), and the whole chain verifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_chained_postgres_batch_keeps_one_unbroken_chain() {
    let pg = PostgresServer::start();
    let store = PostgresStore::connect(&pg.url()).await.unwrap();
    store.chain_as("w1").await.unwrap();
    let mut first: Vec<Incoming> = (0..3000)
        .map(|i| {
            let mut r = record(i);
            if i % 500 == 3 {
                r.outcome = auditgate_rules::Outcome::Unknown;
                r.stage = Some(auditgate_rules::Stage::Received);
            }
            Incoming::from_record(r).unwrap()
        })
        .collect();
    assert_eq!(store.insert(&first).await.unwrap(), 3000);
    // The complete records of the six received ones, 1000 redeliveries, 1500 new.
    let completes: Vec<Incoming> = first
        .iter()
        .filter(|r| r.record.stage.is_some())
        .map(|r| {
            let mut done = r.record.clone();
            done.stage = None;
            done.outcome = auditgate_rules::Outcome::Success;
            Incoming::from_record(done).unwrap()
        })
        .collect();
    assert_eq!(completes.len(), 6);
    first.truncate(1000);
    first.extend(completes);
    first.extend((3000..4500).map(|i| Incoming::from_record(record(i)).unwrap()));
    assert_eq!(store.insert(&first).await.unwrap(), 1506);
    assert_eq!(store.count().await.unwrap(), 4500);
    let heads = store.chain_heads().await.unwrap();
    assert_eq!((heads[0].uid.as_str(), heads[0].seq), ("w1", 4506));
    let report = auditgate_writer::verify::verify_store(&store, &[], None)
        .await
        .unwrap();
    assert!(report.intact, "{:?}", report.problems);
    assert_eq!(report.records, 4506, "4500 live, 6 superseded");
    assert_eq!(report.chains[0].links, 4506);
}
