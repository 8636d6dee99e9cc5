//! The one error type of the queue crate.

use std::path::PathBuf;

/// What can go wrong starting or running the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The Redis URL does not parse.
    #[error("invalid redis url {url:?}: {source}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What redis-rs said.
        source: redis::RedisError,
    },
    /// A Redis command failed (connection refused, timeout, server error).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The spool directory cannot be used.
    #[error("spool {}: {source}", path.display())]
    Spool {
        /// The file or directory.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Another process holds the spool directory.
    #[error(
        "spool {} is in use by another process: give each producer its own spool.dir",
        path.display()
    )]
    SpoolInUse {
        /// The directory.
        path: PathBuf,
    },
    /// `RedisQueue::start` was called outside a tokio runtime.
    #[error(
        "RedisQueue::start needs a tokio runtime: call it inside one, or use RedisQueue::new and drive the Flusher yourself"
    )]
    NoRuntime,
    /// A setting is out of range.
    #[error("invalid queue config: {0}")]
    Config(String),
}
