//! The consumer loop: stream → store, one transaction per commit, acknowledged after it.
//!
//! Reading and committing overlap, and commits grow with the backlog (group commit): while
//! one commit runs on the store's thread, the loop keeps reading what is already in the
//! stream, up to `commit_max` entries, and commits all of it next. An idle stream gives small
//! commits soon after each read; a backlog gives few large ones, which is what makes draining
//! fast, because a commit writes each index page it touched once, however many records
//! touched it. A commit is acknowledged only once it has returned, and the next commit starts
//! only after that, so the store sees commits in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate_queue::{Consumer, Delivery};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics;
use crate::store::{Incoming, Store};

/// Most entries one store transaction takes when a backlog has built up.
pub const DEFAULT_COMMIT_MAX: usize = 16_384;

/// A commit in flight: its stream entries, acknowledged once the commit returns `true`.
struct Committing {
    ids: Vec<(String, String)>,
    task: JoinHandle<bool>,
}

/// Drains the stream into the store until `shutdown`; what has been read by then is committed
/// and acknowledged first. One transaction takes at most `commit_max` entries (at least 1).
pub async fn ingest(
    store: Arc<dyn Store>,
    mut consumer: Consumer,
    commit_max: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let commit_max = commit_max.max(1);
    let mut dead_seen = 0;
    // While Redis is away every read fails: say so once, then every 10 s, not every second.
    let mut failing_since: Option<(std::time::Instant, u64)> = None;
    let mut committing: Option<Committing> = None;
    let mut read: Vec<Delivery> = Vec::new();
    loop {
        if committing.is_none() && !read.is_empty() {
            let batch = take_front(&mut read, commit_max);
            committing = Some(start_commit(&store, batch, &shutdown));
            continue;
        }
        if let Some(c) = committing.take_if(|c| read.len() >= commit_max || c.task.is_finished()) {
            finish(&mut consumer, c).await;
            continue;
        }
        // With a commit in flight, only look for what is already there: an idle stream must
        // not hold back that commit's acknowledgement for a whole blocking read.
        let next = async {
            if committing.is_some() {
                consumer.try_next_batch().await
            } else {
                consumer.next_batch().await
            }
        };
        let batch = tokio::select! {
            _ = shutdown.changed() => break,
            batch = next => batch,
        };
        let dead = consumer.dead_lettered();
        metrics::dead_letters(dead - dead_seen);
        dead_seen = dead;
        if batch.is_ok()
            && let Some((since, _)) = failing_since.take()
        {
            tracing::info!(
                after_s = since.elapsed().as_secs(),
                "reading the stream again"
            );
        }
        match batch {
            Ok(batch) if batch.is_empty() => {
                // Nothing more there: acknowledge the commit in flight rather than wait.
                if let Some(c) = committing.take() {
                    finish(&mut consumer, c).await;
                }
            }
            Ok(batch) => read.extend(batch),
            Err(e) => {
                let (since, failures) = failing_since.get_or_insert((std::time::Instant::now(), 0));
                if *failures % 10 == 0 {
                    tracing::warn!(
                        error = %e,
                        failing_for_s = since.elapsed().as_secs(),
                        "reading the stream failed; retrying every second"
                    );
                }
                *failures += 1;
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    if let Some(c) = committing.take() {
        finish(&mut consumer, c).await;
    }
    while !read.is_empty() {
        let c = start_commit(&store, take_front(&mut read, commit_max), &shutdown);
        finish(&mut consumer, c).await;
    }
}

/// The first `n` deliveries (or all, when fewer), leaving the rest.
fn take_front(read: &mut Vec<Delivery>, n: usize) -> Vec<Delivery> {
    let rest = read.split_off(read.len().min(n));
    std::mem::replace(read, rest)
}

fn start_commit(
    store: &Arc<dyn Store>,
    deliveries: Vec<Delivery>,
    shutdown: &watch::Receiver<bool>,
) -> Committing {
    let mut ids = Vec::with_capacity(deliveries.len());
    let mut records = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        ids.push((d.key, d.entry_id));
        records.push(Incoming::new(d.record, d.json));
    }
    let task = tokio::spawn(commit(store.clone(), records, shutdown.clone()));
    Committing { ids, task }
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

/// Waits for a commit and acknowledges its entries.
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
