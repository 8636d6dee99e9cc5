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

use auditgate_queue::Consumer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics;
use crate::store::{Incoming, Store};

/// Most entries one store transaction takes when a backlog has built up.
pub const DEFAULT_COMMIT_MAX: usize = 16_384;

/// A commit in flight: its stream entries, acknowledged once the commit has returned.
struct Committing {
    ids: Vec<(String, String)>,
    task: JoinHandle<Option<Vec<Refused>>>,
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
    let errors = Arc::new(ErrorLog::default());
    let mut read: Vec<Pending> = Vec::new();
    loop {
        if committing.is_none() && !read.is_empty() {
            let batch = take_front(&mut read, commit_max);
            committing = Some(start_commit(&store, batch, &shutdown, &errors));
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
            // A chaining store needs each record's canonical JSON: made here, while the
            // commit in flight runs on the store's thread.
            Ok(batch) => {
                let chains = store.chains();
                read.extend(batch.into_iter().map(|d| {
                    let incoming = Incoming::new(d.record, d.json);
                    Pending {
                        key: d.key,
                        entry_id: d.entry_id,
                        incoming: if chains {
                            incoming.canonicalized()
                        } else {
                            incoming
                        },
                    }
                }))
            }
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
        let c = start_commit(
            &store,
            take_front(&mut read, commit_max),
            &shutdown,
            &errors,
        );
        finish(&mut consumer, c).await;
    }
}

/// A delivery read and not yet committed: its stream entry and the record as the store takes it.
struct Pending {
    key: String,
    entry_id: String,
    incoming: Incoming,
}

/// The first `n` deliveries (or all, when fewer), leaving the rest.
fn take_front(read: &mut Vec<Pending>, n: usize) -> Vec<Pending> {
    let rest = read.split_off(read.len().min(n));
    std::mem::replace(read, rest)
}

fn start_commit(
    store: &Arc<dyn Store>,
    deliveries: Vec<Pending>,
    shutdown: &watch::Receiver<bool>,
    errors: &Arc<ErrorLog>,
) -> Committing {
    let mut ids = Vec::with_capacity(deliveries.len());
    let mut records = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        ids.push((d.key, d.entry_id));
        records.push(d.incoming);
    }
    let task = tokio::spawn(commit(
        store.clone(),
        records,
        shutdown.clone(),
        errors.clone(),
    ));
    Committing { ids, task }
}

/// A record the store refused, by its place in the batch, with its JSON and the store's error.
struct Refused {
    index: usize,
    json: String,
    error: String,
}

/// Commits one batch, retrying while the store is unavailable; `None` when shutdown came
/// first (the batch stays pending in Redis for the next start or another writer). When the
/// store refuses the data itself, the batch is split in halves until the refused records are
/// found: those come back, to go to the dead letters, and everything else is stored.
async fn commit(
    store: Arc<dyn Store>,
    records: Vec<Incoming>,
    shutdown: watch::Receiver<bool>,
    errors: Arc<ErrorLog>,
) -> Option<Vec<Refused>> {
    let started = Instant::now();
    let mut new = 0;
    let mut refused = Vec::new();
    // Ranges still to store, the next one last.
    let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
    todo.push(0..records.len());
    while let Some(range) = todo.pop() {
        match store.insert(&records[range.clone()]).await {
            Ok(n) => new += n,
            Err(e) if e.refuses_data() && range.len() > 1 => {
                let middle = range.start + range.len() / 2;
                todo.push(middle..range.end);
                todo.push(range.start..middle);
            }
            Err(e) if e.refuses_data() => {
                errors.log(
                    &e,
                    "the store refused a record; it goes to the dead letters",
                );
                refused.push(Refused {
                    index: range.start,
                    json: records[range.start].json.clone(),
                    error: e.to_string(),
                });
            }
            Err(e) => {
                errors.log(&e, "storing a batch failed; retrying every second");
                if *shutdown.borrow() {
                    return None;
                }
                todo.push(range);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let duplicates = records.len() - new - refused.len();
    metrics::batch(new, duplicates, started.elapsed());
    Some(refused)
}

/// Waits for a commit, dead-letters what the store refused and acknowledges the rest.
async fn finish(consumer: &mut Consumer, batch: Committing) {
    let refused = match batch.task.await {
        Ok(Some(refused)) => refused,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "a commit task failed");
            return;
        }
    };
    if !refused.is_empty() {
        let letters: Vec<(&str, &str, &str, &str)> = refused
            .iter()
            .map(|r| {
                let (key, id) = &batch.ids[r.index];
                (key.as_str(), id.as_str(), r.json.as_str(), r.error.as_str())
            })
            .collect();
        match consumer.dead_letter_refused(&letters).await {
            Ok(()) => metrics::dead_letters(refused.len() as u64),
            // Not acknowledged either: they come back and are tried again.
            Err(e) => {
                tracing::warn!(error = %e, "moving refused records to the dead letters failed")
            }
        }
    }
    if let Err(e) = consumer.ack_ids(&batch.ids).await {
        // The entries stay pending and come back; the store ignores ids it has.
        tracing::warn!(error = %e, "acknowledging a committed batch failed");
    }
}

/// Store errors, each logged once with its full text (and again only if it comes back after
/// ten minutes): a store that is down fails every second, and a constraint that refuses one
/// record refuses every record like it. What is not logged is still counted, in
/// [`metrics::DEAD_LETTERS`] for refused records.
#[derive(Default)]
pub(crate) struct ErrorLog {
    last_logged: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

impl ErrorLog {
    const AGAIN_AFTER: Duration = Duration::from_secs(600);
    /// Distinct errors remembered; past that, the oldest are forgotten.
    const REMEMBERED: usize = 1024;

    fn log(&self, error: &crate::store::StoreError, what: &str) {
        let text = error.to_string();
        let key = error.distinct();
        let now = Instant::now();
        {
            let mut seen = self
                .last_logged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < Self::AGAIN_AFTER)
            {
                return;
            }
            if seen.len() >= Self::REMEMBERED {
                seen.retain(|_, at| now.duration_since(*at) < Self::AGAIN_AFTER);
            }
            seen.insert(key, now);
        }
        tracing::error!(error = %text, "{what}");
    }
}
