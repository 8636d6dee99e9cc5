//! [`ProxyError`]: why the proxy cannot start. Each names the file or value at fault and, where
//! there is one, the fix.

use std::path::PathBuf;

use crate::config::ConfigError;

/// Everything that can stop the proxy before (or while) it starts listening.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The config file cannot be read or is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The rule files do not load (every problem, each as `FILE:LINE:COL: message`).
    #[error("{0}")]
    Rules(#[from] auditgate_rules::RulesError),
    /// A `jwt:` key file cannot be read or holds no usable key.
    #[error("jwt: {}: {message}", path.display())]
    Jwt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// `upstream_ca_file` cannot be read or holds no usable certificate.
    #[error("upstream_ca_file: {}: {message}", path.display())]
    UpstreamCa {
        /// The CA file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// `upstream:` is not a usable URL.
    #[error("`upstream: {url}` {problem}")]
    Upstream {
        /// The configured value.
        url: String,
        /// What is wrong with it and how to write it.
        problem: String,
    },
    /// An address the proxy is to listen on cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address, as configured.
        addr: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// `geoip.mmdb_file` is not a MaxMind-format database.
    #[error("geoip: {0}")]
    Geoip(#[from] auditgate_geo::DatabaseError),
    /// The queue (its Redis URL, its spool) cannot be set up.
    #[error(transparent)]
    Queue(#[from] auditgate_queue::QueueError),
    /// The process's metrics recorder cannot be installed (one is installed already).
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    /// The runtime the proxy's threads run on cannot be made.
    #[error("cannot start the proxy's threads: {0}")]
    Runtime(std::io::Error),
}
