//! The consumer loop: stream → store, one transaction per batch, acknowledged after commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate_queue::Consumer;
use tokio::sync::watch;

use crate::metrics;
use crate::store::{Incoming, Store};

/// Drains the stream into the store until `shutdown`; a batch in hand is finished first.
pub async fn ingest(
    store: Arc<dyn Store>,
    mut consumer: Consumer,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut dead_seen = 0;
    loop {
        let batch = tokio::select! {
            _ = shutdown.changed() => break,
            batch = consumer.next_batch() => batch,
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
        let started = Instant::now();
        // Commit, retrying while the store is unavailable; nothing is acknowledged before.
        loop {
            match store.insert(&records).await {
                Ok(new) => {
                    metrics::batch(new, ids.len() - new, started.elapsed());
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "storing a batch failed; retrying in 1 s");
                    if *shutdown.borrow() {
                        // Left pending in Redis: the next start (or another writer) takes it.
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        if let Err(e) = consumer.ack_ids(&ids).await {
            // The entries stay pending and come back; the store ignores ids it has.
            tracing::warn!(error = %e, "acknowledging a committed batch failed");
        }
    }
}
