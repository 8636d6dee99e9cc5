//! The stores against real databases, below the API: a large batch into PostgreSQL (split
//! over two connections) stores each record once, duplicates included, and is found again
//! by resource and in full.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use auditgate_tests::{PostgresServer, record};
use auditgate_writer::store::{Incoming, PostgresStore, Query, Store};

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
