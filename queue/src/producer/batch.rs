//! Batches: one pipeline of `XADD`s per batch, up to `MAX_IN_FLIGHT` (two) of them awaiting
//! Redis's reply at once, and what happens to a batch Redis does not confirm.

use std::time::Instant;

use redis::aio::MultiplexedConnection;

use super::connection::Connection;
use super::{Flusher, InFlight};

impl Flusher {
    /// One pipelined batch of `XADD KEY * record JSON`, spread over the shard keys.
    pub(super) async fn send(
        &mut self,
        conn: &mut MultiplexedConnection,
        payloads: &[Vec<u8>],
    ) -> redis::RedisResult<()> {
        if payloads.is_empty() {
            // An empty pipeline gets no reply to wait for.
            return Ok(());
        }
        let started = Instant::now();
        let pipe = self.pipeline(payloads);
        let result = pipe.query_async::<()>(conn).await;
        self.shared.counters.batch_seconds(started.elapsed());
        result
    }

    /// Sends a batch without waiting for Redis: the reply is collected by [`Self::settle_oldest`].
    /// Records queued meanwhile are serialised while Redis works on this batch.
    pub(super) fn start_send(&mut self, conn: &MultiplexedConnection, payloads: Vec<Vec<u8>>) {
        if payloads.is_empty() {
            return;
        }
        let pipe = self.pipeline(&payloads);
        let mut conn = conn.clone();
        let task = tokio::spawn(async move { pipe.query_async::<()>(&mut conn).await });
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
        result: Result<redis::RedisResult<()>, tokio::task::JoinError>,
        conn: &mut Connection,
    ) {
        self.shared.counters.batch_seconds(batch.started.elapsed());
        match result {
            Ok(Ok(())) => self.shared.counters.sent.add(batch.payloads.len() as u64),
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

    /// `XADD KEY * record JSON` for each payload, spread over the shard keys.
    pub(super) fn pipeline(&mut self, payloads: &[Vec<u8>]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for payload in payloads {
            let key = &self.keys[self.next_key];
            self.next_key = (self.next_key + 1) % self.keys.len();
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("record")
                .arg(payload.as_slice())
                .ignore();
        }
        pipe
    }
}
