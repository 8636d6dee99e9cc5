//! Batches: one pipeline of `XADD`s per batch, up to `MAX_IN_FLIGHT` (two) of them awaiting
//! Redis's reply at once, and what happens to a batch Redis does not confirm.

use std::time::Instant;

use crate::link::Link;
use redis::{RedisError, RedisResult, Value};

use super::connection::Connection;
use super::{Flusher, InFlight};

/// Redis's reply to each command of a pipelined batch.
pub(super) type Replies = Vec<RedisResult<Value>>;

/// What became of a batch Redis answered: how many records it added, and those it failed to
/// add for now (to send again). Those it refused for good are counted as dropped already.
#[derive(Debug, Default)]
pub(super) struct Delivered {
    pub(super) added: usize,
    pub(super) retry: Vec<Vec<u8>>,
}

/// Whether Redis refused a command for good: the key holds another type (`WRONGTYPE`), the
/// user may not write it (`NOPERM`), or the command itself is wrong (`ERR`). The same command
/// gets the same answer every time, so it is counted and reported, never re-sent. Anything else
/// (`LOADING`, `BUSY`, `OOM`, `TRYAGAIN`, `MOVED`, `CLUSTERDOWN`, `READONLY`) passes.
fn refused_for_good(error: &RedisError) -> bool {
    matches!(error.code(), Some("WRONGTYPE" | "NOPERM" | "ERR"))
}

impl Flusher {
    /// One pipelined batch of `XADD KEY * record JSON`, spread over the shard keys. `Err` when
    /// the batch as a whole got no answer (the connection failed); otherwise what each
    /// command's answer made of its record.
    pub(super) async fn send(
        &mut self,
        conn: &mut Link,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Delivered, (RedisError, Vec<Vec<u8>>)> {
        if payloads.is_empty() {
            // An empty pipeline gets no reply to wait for.
            return Ok(Delivered::default());
        }
        let started = Instant::now();
        let pipe = self.pipeline(&payloads);
        let result = conn.run(&pipe).await;
        self.shared.counters.batch_seconds(started.elapsed());
        match result {
            Ok(replies) => Ok(self.sort_replies(payloads, replies)),
            Err(e) => Err((e, payloads)),
        }
    }

    /// Pairs each record with its command's answer: only the commands that failed are sent
    /// again, and a command Redis refused for good is counted as dropped (its `origin.seq`
    /// shows as a gap in the store), not re-sent forever.
    pub(super) fn sort_replies(&mut self, payloads: Vec<Vec<u8>>, replies: Replies) -> Delivered {
        let mut delivered = Delivered::default();
        let mut replies = replies.into_iter();
        let announcing = self.shared.stamp.announcing_crash();
        for payload in payloads {
            match replies.next() {
                Some(Ok(_)) => {
                    delivered.added += 1;
                    if announcing && let Some(seq) = super::flusher::origin_seq(&payload) {
                        self.shared.stamp.acknowledged(seq);
                    }
                }
                Some(Err(e)) if refused_for_good(&e) => {
                    self.shared
                        .dropped(1, format_args!("redis refused a record for good: {e}"));
                }
                // Failed for now, or no answer for it at all: sent again.
                Some(Err(_)) | None => delivered.retry.push(payload),
            }
        }
        delivered
    }

    /// Sends a batch without waiting for Redis: the reply is collected by [`Self::settle_oldest`].
    /// Records queued meanwhile are serialised while Redis works on this batch.
    pub(super) fn start_send(&mut self, conn: &Link, payloads: Vec<Vec<u8>>) {
        if payloads.is_empty() {
            return;
        }
        let pipe = self.pipeline(&payloads);
        let mut conn = conn.clone();
        let task = tokio::spawn(async move { conn.run(&pipe).await });
        self.in_flight.push_back(InFlight {
            task,
            payloads,
            started: Instant::now(),
        });
    }

    /// Handles the reply to the oldest batch in flight: counted as sent, or, when Redis
    /// failed, held for the spool (in order behind earlier failures).
    pub(super) async fn settle_oldest(&mut self, conn: &mut Connection) {
        let Some(mut batch) = self.in_flight.pop_front() else {
            return;
        };
        let result = (&mut batch.task).await;
        self.settled(batch, result, conn);
    }

    pub(super) fn settled(
        &mut self,
        batch: InFlight,
        result: Result<RedisResult<Replies>, tokio::task::JoinError>,
        conn: &mut Connection,
    ) {
        self.shared.counters.batch_seconds(batch.started.elapsed());
        match result {
            Ok(Ok(replies)) => {
                let delivered = self.sort_replies(batch.payloads, replies);
                self.shared.counters.sent.add(delivered.added as u64);
                self.held.extend(delivered.retry);
            }
            Ok(Err(e)) => {
                self.held.extend(batch.payloads);
                if matches!(conn, Connection::Up(_)) {
                    self.lost_connection(conn, &e);
                }
            }
            Err(join) => {
                self.held.extend(batch.payloads);
                tracing::error!(error = %join, "redis send task failed");
            }
        }
    }

    /// Waits for every batch in flight.
    pub(super) async fn settle_all(&mut self, conn: &mut Connection) {
        while !self.in_flight.is_empty() {
            self.settle_oldest(conn).await;
        }
    }

    /// `XADD KEY * record JSON` for each payload, spread over the shard keys; each command's
    /// answer comes back on its own (`ignore_errors`), so that one failed command does not
    /// fail, and re-send, the whole batch.
    pub(super) fn pipeline(&mut self, payloads: &[Vec<u8>]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for payload in payloads {
            let key = &self.keys[self.next_key];
            self.next_key = (self.next_key + 1) % self.keys.len();
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("record")
                .arg(payload.as_slice());
        }
        pipe
    }
}
