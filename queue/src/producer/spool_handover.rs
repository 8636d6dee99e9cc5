//! The hand-over between the flusher and the spool: records that cannot go to Redis go to
//! disk (in order, behind what is there already), and the spool is replayed oldest segment
//! first once Redis is back.

use crate::link::Link;

use super::connection::MAX_BACKOFF;
use super::{Flusher, TYPICAL_RECORD, lock};
use crate::error::QueueError;
use crate::spool::AppendError;

impl Flusher {
    /// Replays the next batch of the oldest spool segment; deletes the segment once all of
    /// it is confirmed.
    pub(super) async fn replay_batch(&mut self, conn: &mut Link) -> redis::RedisResult<()> {
        if self.replaying.is_none() {
            let Some(spool) = &self.shared.spool else {
                return Ok(());
            };
            // The lock is held to pick the segment, not to read it: request threads may be
            // waiting to append.
            let (oldest, dir) = {
                let mut spool = lock(spool);
                (spool.oldest_segment(), spool.dir().to_owned())
            };
            let read = match oldest {
                Ok(Some(file)) => tokio::task::spawn_blocking(move || file.read().map(Some))
                    .await
                    .unwrap_or_else(|e| {
                        Err(QueueError::Spool {
                            path: dir,
                            source: std::io::Error::other(e),
                        })
                    }),
                other => other.map(|_| None),
            };
            let segment = match read {
                Ok(Some(s)) => s,
                Ok(None) => return Ok(()),
                Err(e) => {
                    // Nothing to send until the file system recovers; do not spin.
                    tracing::error!(error = %e, "cannot read the spool");
                    tokio::time::sleep(MAX_BACKOFF).await;
                    return Ok(());
                }
            };
            if segment.corrupt_bytes > 0 {
                tracing::warn!(
                    segment = segment.number,
                    bytes = segment.corrupt_bytes,
                    "spool segment ends in a torn or damaged entry; skipped it"
                );
                self.shared
                    .counters
                    .spool_corrupt_bytes
                    .add(segment.corrupt_bytes);
            }
            self.replaying = Some((segment, 0));
        }
        let Some((segment, done)) = self.replaying.take() else {
            return Ok(());
        };
        let end = (done + self.batch).min(segment.records.len());
        let chunk: Vec<Vec<u8>> = segment.records[done..end].to_vec();
        // A segment with no valid record (all of it torn or damaged) has nothing to send.
        if !chunk.is_empty() {
            match self.send(conn, chunk).await {
                Err((e, _)) => {
                    self.replaying = Some((segment, done));
                    return Err(e);
                }
                Ok(delivered) => {
                    self.shared.counters.replayed.add(delivered.added as u64);
                    // What Redis failed to add for now goes behind the spool, not again with
                    // the ones it added.
                    self.held.extend(delivered.retry);
                }
            }
        }
        if end < segment.records.len() {
            self.replaying = Some((segment, end));
            return Ok(());
        }
        if let Some(spool) = &self.shared.spool {
            let mut spool = lock(spool);
            if let Err(e) = spool.remove(segment.number) {
                tracing::error!(error = %e, "cannot delete a replayed spool segment");
            }
            self.shared.counters.set_spool_bytes(spool.bytes());
        }
        Ok(())
    }

    /// Moves what the buffer holds into the spool, as far as the spool has room; what does
    /// not fit is held.
    pub(super) fn buffer_to_spool(&mut self, batch: &mut Vec<Vec<u8>>) {
        while self.held.is_empty() && self.spool_has_room() {
            batch.clear();
            for _ in 0..self.batch {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            self.held = std::mem::take(batch);
            self.held_to_spool();
        }
        self.shared.counters.set_buffer_depth(self.rx.len());
    }

    /// The newest of the records a shutdown could not deliver or spool is spooled past the
    /// spool's limit (one record over it), so that the `origin.seq`s dropped before it show in
    /// the writer's gaps: a dropped tail would leave no trace. See
    /// [`Spool::append_past_limit`](crate::spool::Spool::append_past_limit).
    pub(super) fn keep_past_limit(&mut self, newest: Vec<u8>) {
        let kept = self.shared.spool.as_ref().is_some_and(|spool| {
            let mut spool = lock(spool);
            let appended = spool.append_past_limit(&newest).is_ok();
            let unsynced = spool.take_unsynced();
            self.shared.counters.set_spool_bytes(spool.bytes());
            drop(spool);
            appended && unsynced.run().is_ok()
        });
        if kept {
            self.shared.counters.spooled.increment();
        } else {
            self.shared
                .dropped(1, "shutting down with redis unreachable and the spool full");
        }
    }

    /// Appends the held records to the spool; those that do not fit stay held. Without a
    /// spool, or when the disk refuses the write, they are dropped (and counted).
    pub(super) fn held_to_spool(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let Some(spool) = &self.shared.spool else {
            let lost = std::mem::take(&mut self.held);
            self.shared.dropped(
                lost.len() as u64,
                "redis is unreachable and no spool is configured",
            );
            return;
        };
        let mut spool = lock(spool);
        let mut written = 0;
        let mut failed = 0;
        let mut reason = String::new();
        for payload in &self.held {
            match spool.append(payload) {
                Ok(()) => {
                    written += 1;
                    self.shared.counters.spooled.increment();
                }
                Err(AppendError::Full { .. }) => break,
                Err(e @ AppendError::Io(_)) => {
                    written += 1;
                    failed += 1;
                    reason = e.to_string();
                }
            }
        }
        let unsynced = spool.take_unsynced();
        self.shared.counters.set_spool_bytes(spool.bytes());
        drop(spool);
        if let Err(e) = unsynced.run() {
            tracing::warn!(error = %e, "spool fsync failed");
        }
        self.held.drain(..written);
        if failed > 0 {
            self.shared.dropped(failed, &reason);
        }
    }

    pub(super) fn sync_spool(&self) {
        let Some(spool) = &self.shared.spool else {
            return;
        };
        // Taken in its own statement: the lock is released before the fsync.
        let unsynced = lock(spool).take_unsynced();
        if let Err(e) = unsynced.run() {
            tracing::warn!(error = %e, "spool fsync failed");
        }
    }

    pub(super) fn spool_pending(&self) -> bool {
        self.replaying.is_some()
            || self
                .shared
                .spool
                .as_ref()
                .is_some_and(|s| !lock(s).is_empty())
    }

    pub(super) fn spool_has_room(&self) -> bool {
        self.shared
            .spool
            .as_ref()
            .is_some_and(|s| lock(s).has_room_for(TYPICAL_RECORD))
    }
}
