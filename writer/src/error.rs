//! [`WriterError`]: why the writer cannot start or go on. Each names the file or address at
//! fault and, where there is one, the fix.

use std::path::PathBuf;

use crate::store::StoreError;

/// Everything that stops the writer.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The config file cannot be read.
    #[error("{}: {source}", path.display())]
    ReadConfig {
        /// The config file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The config's YAML does not parse, or holds unknown or mistyped keys.
    #[error("{}:{line}:{column}: {message}", path.display())]
    ConfigSyntax {
        /// The config file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A configured token hash is not a SHA-256 in hex.
    #[error("{}: tokens: {sha256:?} is not a SHA-256 in hex (64 characters): write the output of `printf %s \"$TOKEN\" | sha256sum`", path.display())]
    TokenHash {
        /// The config file.
        path: PathBuf,
        /// The configured value.
        sha256: String,
    },
    /// `token_key_file` holds too short a key.
    #[error("{}: token_key_file: the key must be at least 32 bytes: write one with `head -c 32 /dev/urandom | base64 > FILE`", path.display())]
    TokenKey {
        /// The key file.
        path: PathBuf,
    },
    /// `signing_key_file` is not an auditgate private key.
    #[error("{}: signing_key_file: {why}: make one with `auditgate keygen --out FILE` and name FILE here (FILE.pub goes to the auditors)", path.display())]
    SigningKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// `chain_uid` cannot name a chain.
    #[error(
        "chain_uid {0:?}: a chain's uid is 1 to 200 characters, none of them control characters"
    )]
    ChainUid(String),
    /// The store cannot be opened or set up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The consumer group cannot be set up (Redis answered with an error).
    #[error(transparent)]
    Queue(#[from] auditgate_queue::QueueError),
    /// The API's listener failed.
    #[error("the API server failed: {0}")]
    Serve(std::io::Error),
}
