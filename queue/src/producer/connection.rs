//! The flusher's connection to Redis: up, or down with a time to try again, the wait doubling
//! from 50 ms to 5 s while Redis stays away.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::link::Link;

use super::Flusher;

pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(50);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Whether the flusher can send, and when it tries to connect again when it cannot.
pub(super) enum Connection {
    Up(Link),
    Down {
        retry_at: Instant,
        backoff: Duration,
    },
}

impl Connection {
    pub(super) fn retry_at(&self) -> Option<Instant> {
        match self {
            Connection::Up(_) => None,
            Connection::Down { retry_at, .. } => Some(*retry_at),
        }
    }
}

impl Flusher {
    pub(super) async fn connect_if_due(&mut self, conn: &mut Connection) {
        let Connection::Down { retry_at, backoff } = *conn else {
            return;
        };
        if Instant::now() < retry_at {
            return;
        }
        match self
            .target
            .connect(Duration::from_secs(1), self.response_timeout)
            .await
        {
            Ok(c) => {
                if backoff > MIN_BACKOFF {
                    tracing::info!("redis is reachable again");
                }
                *conn = Connection::Up(c);
                self.shared.redis_up.store(true, Ordering::Relaxed);
                self.shared.counters.set_redis_up(true);
            }
            Err(e) => {
                if backoff == MIN_BACKOFF {
                    tracing::warn!(error = %e, "redis unreachable; spooling audit records");
                }
                *conn = Connection::Down {
                    retry_at: Instant::now() + backoff,
                    backoff: (backoff * 2).min(MAX_BACKOFF),
                };
            }
        }
    }

    pub(super) fn lost_connection(&self, conn: &mut Connection, error: &redis::RedisError) {
        tracing::warn!(error = %error, "redis write failed; spooling audit records");
        self.shared.redis_up.store(false, Ordering::Relaxed);
        self.shared.counters.set_redis_up(false);
        *conn = Connection::Down {
            retry_at: Instant::now() + MIN_BACKOFF,
            backoff: MIN_BACKOFF * 2,
        };
    }
}
