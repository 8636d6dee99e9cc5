//! The flusher's loop, as the state machine [`Step`] names, and its drain at shutdown.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::connection::{Connection, MIN_BACKOFF};
use super::{Flusher, MAX_IN_FLIGHT, STOP_CHECK, lock};

/// What the flusher does next: decided afresh on every turn of its loop, from where records
/// are (held, buffered, spooled) and whether Redis is up. A turn begins by looking at the stop
/// flag: once [`RedisQueue::shutdown`](super::RedisQueue::shutdown) is called, the loop ends
/// and [`Flusher::drain`] sends or spools what is held and buffered, then replays what it can.
///
/// ```text
///            ┌──────────── Redis up and the spool holds records ───────────┐
///            │                                                              ▼
///  Gather ──►┤  records taken from the buffer (held) ──► SendHeld ──► Gather  Replay ──► Gather
///            │                                                              (held and buffered
///            └── shutdown asked ──► drain: send or spool, replay              go behind the spool)
/// ```
#[derive(Debug)]
enum Step {
    /// Redis is up and the spool holds records: replay the oldest, with what is held or
    /// buffered appended behind them, so that records reach Redis in the order they were made.
    Replay,
    /// Records taken from the buffer wait: send them (Redis up) or spool them (Redis away).
    SendHeld,
    /// Nothing waits: take the next records from the buffer, or Redis's reply to a batch in
    /// flight, or a reconnection that is due.
    Gather,
}

impl Flusher {
    /// Runs until [`RedisQueue::shutdown`](super::RedisQueue::shutdown): sends, spools, reconnects, replays.
    pub async fn run(mut self) {
        if let Some(rx) = self.durable_rx.take() {
            tokio::spawn(super::durable::run(
                self.shared.clone(),
                self.target.clone(),
                self.keys.clone(),
                self.durable_wait,
                rx,
                self.shutdown.clone(),
            ));
        }
        let mut conn = Connection::Down {
            retry_at: Instant::now(),
            backoff: MIN_BACKOFF,
        };
        let mut batch = Vec::with_capacity(self.batch);
        let mut short_batch = false;
        loop {
            if self.stop_requested() {
                break;
            }
            if matches!(conn, Connection::Down { .. }) {
                // Collect what was in flight when Redis went away before deciding anything.
                self.settle_all(&mut conn).await;
            }
            self.connect_if_due(&mut conn).await;
            self.sync_spool();
            self.shared.stamp.reserve_ahead();
            match self.next_step(&conn) {
                Step::Replay => self.replay(&mut conn, &mut batch).await,
                Step::SendHeld => self.send_held(&mut conn).await,
                Step::Gather => {
                    if !self.gather(&mut conn, &mut batch, &mut short_batch).await {
                        break;
                    }
                }
            }
        }
        self.drain(conn).await;
        self.shared.stamp.release();
        self.done.send_replace(true);
    }

    fn stop_requested(&self) -> bool {
        *self.shutdown.borrow() || self.shared.stopping.load(Ordering::SeqCst)
    }

    fn next_step(&self, conn: &Connection) -> Step {
        if self.spool_pending() && matches!(conn, Connection::Up(_)) {
            Step::Replay
        } else if !self.held.is_empty() {
            Step::SendHeld
        } else {
            Step::Gather
        }
    }

    /// [`Step::Replay`].
    async fn replay(&mut self, conn: &mut Connection, batch: &mut Vec<Vec<u8>>) {
        self.settle_all(conn).await;
        // Keep order: what is held or buffered goes behind the spooled records.
        self.held_to_spool();
        if self.held.is_empty() {
            self.buffer_to_spool(batch);
        }
        if let Connection::Up(c) = conn
            && let Err(e) = self.replay_batch(c).await
        {
            self.lost_connection(conn, &e);
        }
    }

    /// [`Step::SendHeld`].
    async fn send_held(&mut self, conn: &mut Connection) {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.settle_oldest(conn).await;
            return;
        }
        match &*conn {
            Connection::Up(c) => {
                let c = c.clone();
                let payloads = std::mem::take(&mut self.held);
                self.start_send(&c, payloads);
            }
            Connection::Down { .. } => self.held_to_spool(),
        }
        if !self.held.is_empty() {
            // Redis is away and the spool is full: wait for either to change.
            let retry_at = conn.retry_at().unwrap_or_else(Instant::now);
            tokio::select! {
                _ = self.shutdown.changed() => {}
                _ = tokio::time::sleep_until(retry_at.into()) => {}
            }
        }
    }

    /// [`Step::Gather`]; `false` when no record can arrive any more (every sender is gone).
    async fn gather(
        &mut self,
        conn: &mut Connection,
        batch: &mut Vec<Vec<u8>>,
        short_batch: &mut bool,
    ) -> bool {
        // Wait for records, unless there is nowhere to put them (Redis away, spool full):
        // then they stay in the buffer, which overflows into counted drops at enqueue.
        // Meanwhile, collect Redis's replies to the batches in flight.
        let can_take = matches!(conn, Connection::Up(_)) || self.spool_has_room();
        if can_take && *short_batch && !self.linger.is_zero() {
            // The last batch was not full: let records gather for a moment rather than
            // be woken for each one. While the flusher sleeps, no waker is registered on
            // the buffer, so `enqueue` costs request threads no cross-thread wake-up.
            tokio::select! {
                _ = tokio::time::sleep(self.linger) => {}
                // The change is consumed here: go round to the stop check rather than
                // wait below for a change that has already happened.
                _ = self.shutdown.changed() => return true,
            }
        }
        let Flusher {
            rx,
            in_flight,
            shutdown,
            batch: max_batch,
            ..
        } = self;
        let oldest = async {
            match in_flight.front_mut() {
                Some(f) => (&mut f.task).await,
                None => std::future::pending().await,
            }
        };
        let mut settled = None;
        tokio::select! {
            n = rx.recv_many(batch, *max_batch), if can_take => {
                if n == 0 {
                    // Every sender is gone; nothing more can arrive.
                    return false;
                }
                *short_batch = n < *max_batch;
            }
            result = oldest => settled = Some(result),
            _ = shutdown.changed() => {}
            _ = sleep_until(conn.retry_at()) => {}
            // Belt and braces: an idle flusher also looks at the stop flag now and then.
            _ = tokio::time::sleep(STOP_CHECK) => {}
        }
        if let Some(result) = settled
            && let Some(done) = self.in_flight.pop_front()
        {
            self.settled(done, result, conn);
        }
        self.shared.counters.set_buffer_depth(self.rx.len());
        if !batch.is_empty() {
            self.held = std::mem::take(batch);
        }
        true
    }

    /// Shutdown: everything held or still buffered goes to Redis or the spool; then the spool
    /// is replayed for as long as Redis answers and the shutdown timeout allows.
    async fn drain(&mut self, mut conn: Connection) {
        self.rx.close();
        self.settle_all(&mut conn).await;
        // One more try to reach Redis, whatever the backoff says: shutting down with records
        // that could have been sent would leave them waiting for the next start.
        if let Connection::Down { retry_at, .. } = &mut conn {
            *retry_at = Instant::now();
            self.connect_if_due(&mut conn).await;
        }
        let deadline = Instant::now() + self.shutdown_timeout;
        let mut batch = Vec::with_capacity(self.batch);
        let mut last_lost: Option<Vec<u8>> = None;
        loop {
            if self.held.is_empty() {
                if self.rx.recv_many(&mut batch, self.batch).await == 0 {
                    break;
                }
                self.held = std::mem::take(&mut batch);
            }
            let payloads = std::mem::take(&mut self.held);
            match &mut conn {
                Connection::Up(c) if !self.spool_pending() => match self.send(c, payloads).await {
                    Err((e, payloads)) => {
                        self.lost_connection(&mut conn, &e);
                        self.held = payloads;
                    }
                    Ok(delivered) => {
                        self.shared.counters.sent.add(delivered.added as u64);
                        // What failed for now waits in the spool rather than spinning here.
                        self.held = delivered.retry;
                        self.held_to_spool();
                    }
                },
                _ => {
                    self.held = payloads;
                    self.held_to_spool();
                    if !self.held.is_empty() {
                        let mut lost = std::mem::take(&mut self.held);
                        // The newest is kept aside: see `keep_past_limit`.
                        if let Some(newest) = lost.pop() {
                            lost.extend(last_lost.replace(newest));
                        }
                        // Said with their numbers: the writer shows them as a gap, and this line
                        // says the gap is a loss at shutdown, not a crash.
                        let seqs: Vec<u64> = lost.iter().filter_map(|p| origin_seq(p)).collect();
                        tracing::warn!(
                            records = lost.len(),
                            first_seq = seqs.iter().min().copied().unwrap_or_default(),
                            last_seq = seqs.iter().max().copied().unwrap_or_default(),
                            "audit records dropped at shutdown: redis unreachable and the spool full"
                        );
                        self.shared.dropped(
                            lost.len() as u64,
                            "shutting down with redis unreachable and the spool full",
                        );
                    }
                }
            }
        }
        if let Some(newest) = last_lost {
            self.keep_past_limit(newest);
        }
        while self.spool_pending() && Instant::now() < deadline {
            let Connection::Up(c) = &mut conn else { break };
            if let Err(e) = self.replay_batch(c).await {
                self.lost_connection(&mut conn, &e);
            }
        }
        self.sync_spool();
        if let Some(spool) = &self.shared.spool {
            let spool = lock(spool);
            if !spool.is_empty() {
                tracing::info!(
                    dir = %spool.dir().display(),
                    bytes = spool.bytes(),
                    "audit records left in the spool; the next start replays them"
                );
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The `origin.seq` of a record's JSON as the producer wrote it: `origin` is its last member,
/// and `seq` the last member of `origin` (`…,"seq":42}}`).
pub(super) fn origin_seq(payload: &[u8]) -> Option<u64> {
    let at = payload.windows(6).rposition(|w| w == b"\"seq\":")? + 6;
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seq_of_a_payload_is_read_from_its_end() {
        assert_eq!(
            super::origin_seq(
                br#"{"a":"\"seq\":1","origin":{"kind":"proxy","instance":"h","seq":42}}"#
            ),
            Some(42)
        );
        assert_eq!(super::origin_seq(b"{}"), None);
    }
}
