//! The consumer loop against a real redis-server and a real SQLite file: a backlog drains in
//! commits that grow while the store is busy, never beyond `commit_max`, each record once.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditgate_queue::{Consumer, ConsumerConfig, QueueConfig, RecordSink, RedisConfig, RedisQueue};
use auditgate_tests::{RedisServer, record, wait_until};
use auditgate_writer::store::{
    ChainHead, Gap, Incoming, Page, Query, ScannedRow, SqliteStore, Store, StoreError,
};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

/// An SQLite store that takes 50 ms per commit and notes each commit's size.
struct SlowStore {
    inner: SqliteStore,
    commits: Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl Store for SlowStore {
    async fn insert(&self, records: &[Incoming]) -> Result<usize, StoreError> {
        self.commits.lock().unwrap().push(records.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.inner.insert(records).await
    }
    async fn query(&self, query: &Query) -> Result<Page, StoreError> {
        self.inner.query(query).await
    }
    async fn get(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.inner.get(id).await
    }
    fn export(&self, query: Query) -> mpsc::Receiver<Result<Vec<String>, StoreError>> {
        self.inner.export(query)
    }
    async fn gaps(&self) -> Result<Vec<Gap>, StoreError> {
        self.inner.gaps().await
    }
    async fn delete_before(
        &self,
        before: DateTime<Utc>,
        cuts: &[ChainHead],
    ) -> Result<u64, StoreError> {
        self.inner.delete_before(before, cuts).await
    }
    async fn chain_as(&self, uid: &str) -> Result<ChainHead, StoreError> {
        self.inner.chain_as(uid).await
    }
    async fn chain_heads(&self) -> Result<Vec<ChainHead>, StoreError> {
        self.inner.chain_heads().await
    }
    async fn chain_floors(&self) -> Result<Vec<ChainHead>, StoreError> {
        self.inner.chain_floors().await
    }
    async fn retention_cuts(&self, before: DateTime<Utc>) -> Result<Vec<ChainHead>, StoreError> {
        self.inner.retention_cuts(before).await
    }
    async fn scan(
        &self,
        superseded: bool,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ScannedRow>, StoreError> {
        self.inner.scan(superseded, after, limit).await
    }
    async fn save_checkpoint(
        &self,
        checkpoint: &auditgate_writer::chain::Checkpoint,
        note: &str,
    ) -> Result<(), StoreError> {
        self.inner.save_checkpoint(checkpoint, note).await
    }
    async fn checkpoints(&self) -> Result<Vec<String>, StoreError> {
        self.inner.checkpoints().await
    }
    async fn count(&self) -> Result<u64, StoreError> {
        self.inner.count().await
    }
    async fn linked(&self, name: &str) -> Result<Vec<String>, StoreError> {
        self.inner.linked(name).await
    }
    async fn operations(&self, tenant: Option<&str>) -> Result<Vec<String>, StoreError> {
        self.inner.operations(tenant).await
    }
    async fn optimize(&self) -> Result<(), StoreError> {
        self.inner.optimize().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_in_commits_that_grow_up_to_commit_max() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let queue =
        RedisQueue::start(QueueConfig::new(redis.url()).spool(spool.path(), 1 << 24)).unwrap();
    for i in 0..1000 {
        queue.enqueue(record(i)).unwrap();
    }
    queue.shutdown().await;
    assert_eq!(redis.len("auditgate:records"), 1000);

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SlowStore {
        inner: SqliteStore::open(dir.path().join("audit.db")).unwrap(),
        commits: Mutex::new(Vec::new()),
    });
    let mut consumer = ConsumerConfig::new(RedisConfig::new(redis.url()), "test");
    consumer.batch = 64;
    let consumer = Consumer::connect(consumer).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let ingest = tokio::spawn(auditgate_writer::ingest::ingest(
        store.clone(),
        consumer,
        200,
        stopped,
    ));
    let drained = wait_until(Duration::from_secs(20), || {
        redis.len("auditgate:records") == 0
    });
    stop.send_replace(true);
    ingest.await.unwrap();
    assert!(
        drained,
        "the stream still holds {} entries",
        redis.len("auditgate:records")
    );

    assert_eq!(store.count().await.unwrap(), 1000, "each record once");
    let commits = store.commits.lock().unwrap().clone();
    assert_eq!(commits.iter().sum::<usize>(), 1000, "commits {commits:?}");
    assert!(commits.iter().all(|&n| n <= 200), "commits {commits:?}");
    // The first commit is one read; while it runs, reads pile up to commit_max.
    assert_eq!(commits[0], 64, "commits {commits:?}");
    assert_eq!(commits[1], 200, "commits {commits:?}");
    assert!(
        commits.len() <= 7,
        "a backlog takes few commits: {commits:?}"
    );
}
