//! The consumer loop: stream → store, one transaction per batch, acknowledged after commit.
//!
//! Reading and committing overlap: while batch N is being committed (on the store's thread),
//! batch N+1 is read from Redis. A batch is acknowledged only once its commit has returned,
//! and the next commit starts only after that, so the store sees batches in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate_queue::Consumer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics;
use crate::store::{Incoming, Store};

/// A batch being committed: its stream entries, acknowledged once the commit returns `true`.
struct Committing {
    ids: Vec<(String, String)>,
    task: JoinHandle<bool>,
}

/// Drains the stream into the store until `shutdown`; the batch in hand is finished first.
pub async fn ingest(
    store: Arc<dyn Store>,
    mut consumer: Consumer,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut dead_seen = 0;
    let mut committing: Option<Committing> = None;
    loop {
        // With a commit in flight, only look for what is already there: an idle stream must
        // not hold back that commit's acknowledgement for a whole blocking read.
        let read = async {
            if committing.is_some() {
                consumer.try_next_batch().await
            } else {
                consumer.next_batch().await
            }
        };
        let batch = tokio::select! {
            _ = shutdown.changed() => break,
            batch = read => batch,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading the stream failed; retrying in 1 s");
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let dead = consumer.dead_lettered();
        metrics::dead_letters(dead - dead_seen);
        dead_seen = dead;
        // The previous batch first: acknowledged once committed, before the next commit.
        if let Some(previous) = committing.take() {
            finish(&mut consumer, previous).await;
        }
        if batch.is_empty() {
            continue;
        }
        let ids: Vec<(String, String)> = batch
            .iter()
            .map(|d| (d.key.clone(), d.entry_id.clone()))
            .collect();
        let records: Vec<Incoming> = batch
            .into_iter()
            .map(|d| Incoming::new(d.record, d.json))
            .collect();
        let task = tokio::spawn(commit(store.clone(), records, shutdown.clone()));
        committing = Some(Committing { ids, task });
    }
    if let Some(previous) = committing.take() {
        finish(&mut consumer, previous).await;
    }
}

/// Commits one batch, retrying while the store is unavailable; `false` when shutdown came
/// first (the batch stays pending in Redis for the next start or another writer).
async fn commit(
    store: Arc<dyn Store>,
    records: Vec<Incoming>,
    shutdown: watch::Receiver<bool>,
) -> bool {
    let started = Instant::now();
    loop {
        match store.insert(&records).await {
            Ok(new) => {
                metrics::batch(new, records.len() - new, started.elapsed());
                return true;
            }
            Err(e) => {
                tracing::error!(error = %e, "storing a batch failed; retrying in 1 s");
                if *shutdown.borrow() {
                    return false;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Waits for a batch's commit and acknowledges it.
async fn finish(consumer: &mut Consumer, batch: Committing) {
    let committed = batch.task.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "a commit task failed");
        false
    });
    if committed && let Err(e) = consumer.ack_ids(&batch.ids).await {
        // The entries stay pending and come back; the store ignores ids it has.
        tracing::warn!(error = %e, "acknowledging a committed batch failed");
    }
}
