//! The durable path of `closed` rules: a received record is acknowledged only once Redis has
//! added it, or the spool has it on disk.
//!
//! Calls waiting for durability share the work (group commit): every record that arrived while
//! the last round ran goes in one pipeline, and what Redis did not add within its share of the
//! wait goes to the spool under one fdatasync. The task runs beside the flusher, on its own
//! connection, so that a `closed` call never waits behind the flusher's batches or backoff.

use std::sync::Arc;
use std::time::Duration;

use crate::link::{Link, Target};
use tokio::sync::{mpsc, oneshot};

use super::{Shared, lock};
use crate::spool::AppendError;

/// A received record's JSON and who waits for it to be durable.
pub(crate) type Waiting = (Vec<u8>, oneshot::Sender<bool>);

/// Records waiting for durability, at most this many at once; past it a `closed` call is
/// refused rather than queued behind more than a round can take.
pub(crate) const WAITING: usize = 4096;

/// How long rounds skip Redis after it failed to answer one in time.
const SKIP_REDIS_FOR: Duration = Duration::from_secs(1);

/// Runs until the queue shuts down.
pub(crate) async fn run(
    shared: Arc<Shared>,
    target: Target,
    keys: Vec<String>,
    redis_wait: Duration,
    mut rx: mpsc::Receiver<Waiting>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut conn: Option<Link> = None;
    let mut next_key = 0;
    // After Redis failed to answer in time, rounds go straight to the spool for a while:
    // calls that queued behind a slow round must not wait for Redis a second time.
    let mut skip_redis_until: Option<tokio::time::Instant> = None;
    let mut round: Vec<Waiting> = Vec::new();
    loop {
        // Ends with the queue's shutdown: its waiters then learn their record is not durable
        // (the senders are dropped), and the task lets go of the queue (and its spool lock).
        let got = tokio::select! {
            _ = shutdown.changed() => 0,
            got = rx.recv_many(&mut round, 512) => got,
        };
        if got == 0 {
            break;
        }
        let mut left: Vec<Waiting> = Vec::new();
        if skip_redis_until.is_some_and(|until| tokio::time::Instant::now() < until) {
            spool_and_sync(&shared, std::mem::take(&mut round)).await;
            continue;
        }
        let added = tokio::time::timeout(redis_wait, async {
            if conn.is_none() {
                conn = Some(target.connect(redis_wait, redis_wait).await?);
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (payload, _) in &round {
                pipe.cmd("XADD")
                    .arg(&keys[next_key])
                    .arg("*")
                    .arg("record")
                    .arg(payload.as_slice());
                next_key = (next_key + 1) % keys.len();
            }
            match conn.as_mut() {
                Some(c) => c.run(&pipe).await,
                None => unreachable!("connected above"),
            }
        })
        .await;
        match added {
            Ok(Ok(replies)) => {
                let mut replies = replies.into_iter();
                for waiting in round.drain(..) {
                    match replies.next() {
                        Some(Ok(_)) => {
                            shared.counters.sent.increment();
                            if shared.stamp.announcing_crash()
                                && let Some(seq) = super::flusher::origin_seq(&waiting.0)
                            {
                                shared.stamp.acknowledged(seq);
                            }
                            let _ = waiting.1.send(true);
                        }
                        _ => left.push(waiting),
                    }
                }
            }
            // No answer in time (a stalled or unreachable Redis): the spool takes them. Redis
            // may still add some later; the writer keeps one record per `id`.
            _ => {
                conn = None;
                skip_redis_until = Some(tokio::time::Instant::now() + SKIP_REDIS_FOR);
                left.append(&mut round);
            }
        }
        if !left.is_empty() {
            spool_and_sync(&shared, left).await;
        }
    }
}

/// Appends the records to the spool and syncs it once; each waiter learns whether its record
/// is on disk.
async fn spool_and_sync(shared: &Arc<Shared>, left: Vec<Waiting>) {
    let shared = shared.clone();
    let written = tokio::task::spawn_blocking(move || {
        let Some(spool) = &shared.spool else {
            return left.into_iter().map(|w| (w, false)).collect::<Vec<_>>();
        };
        let mut spool = lock(spool);
        let mut appended: Vec<(Waiting, bool)> = Vec::with_capacity(left.len());
        for waiting in left {
            let ok = match spool.append(&waiting.0) {
                Ok(()) => true,
                Err(AppendError::Full { .. } | AppendError::Io(_)) => false,
            };
            if ok {
                shared.counters.spooled.increment();
            }
            appended.push((waiting, ok));
        }
        let unsynced = spool.take_unsynced();
        shared.counters.set_spool_bytes(spool.bytes());
        drop(spool);
        if let Err(e) = unsynced.run() {
            tracing::error!(error = %e, "cannot sync the spool: closed calls are refused");
            for (_, ok) in &mut appended {
                *ok = false;
            }
        }
        appended
    })
    .await;
    // A panicked blocking task drops the senders: the waiters see "not durable".
    if let Ok(written) = written {
        for ((_, ack), ok) in written {
            let _ = ack.send(ok);
        }
    }
}
