//! Queue settings: where Redis is, where the spool lives, how big the buffer is.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The stream records go to unless configured otherwise.
pub const DEFAULT_STREAM: &str = "auditgate:records";
/// The consumer group writers share.
pub const DEFAULT_GROUP: &str = "auditgate-writers";

/// The `redis:` block of the proxy and writer configs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (`rediss://` for TLS). Required unless
    /// `cluster` is given.
    #[serde(default)]
    pub url: String,
    /// A Redis Cluster's nodes (any of them; the rest are found): `["redis://10.0.0.1:6379",
    /// …]`. With it, `url` is not used; spread records over several `shards`, so that each
    /// master holds some.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// The stream key. Default `auditgate:records`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Spread records over `N` hash-tagged keys `STREAM:{0}` … `STREAM:{N-1}` (for Redis
    /// Cluster). Default 1: the single key `STREAM`. Producers and writers must agree.
    #[serde(default = "one")]
    pub shards: u32,
    /// The PEM file of the certificate authority that signed the Redis servers' certificates,
    /// for `rediss://` URLs (TLS); default: the system's trusted roots.
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// How many replicas must hold a record before Redis's acknowledgement counts (`WAIT N`
    /// after each pipeline). Redis replicates asynchronously, so a record a master
    /// acknowledged can be lost when that master dies before its replica has it; with this,
    /// a record not yet on N replicas is sent again. Default 0 (the master's word is enough).
    #[serde(default)]
    pub min_replicas_acked: u32,
    /// The consumer group; used by writers only. Default `auditgate-writers`.
    #[serde(default = "default_group")]
    pub group: String,
}

/// The `spool:` block: where records wait while Redis is unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The spool directory, one per producer process. Default `./spool`.
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// The most the spool may hold on disk; records beyond it are dropped (and counted) or,
    /// for `on_queue_failure: closed` rules, refused. Default 1 GiB.
    #[serde(default = "default_spool_bytes")]
    pub max_bytes: u64,
}

/// Everything [`RedisQueue`](crate::RedisQueue) needs.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Where to send records.
    pub redis: RedisConfig,
    /// Where records wait while Redis is away; `None` keeps them only in memory (and drops
    /// what does not fit in the buffer).
    pub spool: Option<SpoolConfig>,
    /// Records the in-memory buffer holds before overflowing to the spool. Default 10 000.
    pub buffer: usize,
    /// Records per pipelined `XADD` batch at most. Default 256.
    pub batch: usize,
    /// After a batch that was not full, how long the flusher lets records gather before it
    /// looks again. Fewer, larger batches and no wake-up per record; the cost is this much
    /// delay before a record reaches Redis. Default 10 ms: against 2 ms, in one run of the
    /// proxy at saturation, 2.9 against 5.9 µs of the flusher's CPU per record and 4.8
    /// against 6.4 µs of redis-server's (`docs/benchmarks.md`).
    pub linger: Duration,
    /// `origin.kind` of the records this queue sends: `proxy`, `layer`, ... Default `layer`.
    pub origin_kind: String,
    /// `origin.instance`; default `HOSTNAME/XXXX` with four random hex digits.
    pub instance: Option<String>,
    /// How long a pipelined batch may take before the connection is given up. Default 5 s.
    pub response_timeout: Duration,
    /// How long a `closed` call's received record waits for Redis's acknowledgement before
    /// it is written to the spool instead (see [`RecordSink::enqueue_durable`](crate::RecordSink::enqueue_durable)).
    /// Default 1 s: half the hosts' default `closed_timeout_ms`, which bounds the whole wait.
    pub durable_redis_wait: Duration,
    /// How long `shutdown()` may spend replaying the spool before leaving the rest on disk
    /// for the next run. Default 10 s.
    pub shutdown_timeout: Duration,
}

impl RedisConfig {
    /// The given URL with the default stream, one shard and the default group.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            cluster: Vec::new(),
            min_replicas_acked: 0,
            tls_ca_file: None,
            stream: default_stream(),
            shards: 1,
            group: default_group(),
        }
    }

    /// The same settings for a Redis Cluster reached through any of `nodes`.
    pub fn cluster(nodes: impl IntoIterator<Item = impl Into<String>>) -> RedisConfig {
        RedisConfig {
            cluster: nodes.into_iter().map(Into::into).collect(),
            ..RedisConfig::new("")
        }
    }

    /// Where Redis is, for messages: the URL, or the cluster's nodes.
    pub fn describe(&self) -> String {
        if self.cluster.is_empty() {
            self.url.clone()
        } else {
            format!("cluster {}", self.cluster.join(", "))
        }
    }

    /// The stream keys records are spread over.
    pub fn keys(&self) -> Vec<String> {
        if self.shards <= 1 {
            vec![self.stream.clone()]
        } else {
            (0..self.shards)
                .map(|i| format!("{}:{{{i}}}", self.stream))
                .collect()
        }
    }

    /// Where records that cannot be parsed go: `STREAM:dead`.
    pub fn dead_letter_key(&self) -> String {
        format!("{}:dead", self.stream)
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: default_spool_dir(),
            max_bytes: default_spool_bytes(),
        }
    }
}

impl QueueConfig {
    /// Defaults for everything but the URL; the spool in `./spool`.
    pub fn new(url: impl Into<String>) -> QueueConfig {
        QueueConfig {
            redis: RedisConfig::new(url),
            spool: Some(SpoolConfig::default()),
            buffer: 10_000,
            batch: 256,
            linger: Duration::from_millis(10),
            origin_kind: "layer".to_owned(),
            instance: None,
            response_timeout: Duration::from_secs(5),
            durable_redis_wait: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// Sets the stream key.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.redis.stream = stream.into();
        self
    }

    /// Spreads records over `shards` keys.
    pub fn shards(mut self, shards: u32) -> Self {
        self.redis.shards = shards;
        self
    }

    /// Puts the spool in `dir`, bounded by `max_bytes`.
    pub fn spool(mut self, dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        self.spool = Some(SpoolConfig {
            dir: dir.into(),
            max_bytes,
        });
        self
    }

    /// Runs without a spool: records that do not fit the buffer while Redis is away are lost
    /// (and counted).
    pub fn without_spool(mut self) -> Self {
        self.spool = None;
        self
    }

    /// Sets the buffer size in records.
    pub fn buffer(mut self, records: usize) -> Self {
        self.buffer = records;
        self
    }

    /// Sets the largest pipelined batch.
    pub fn batch(mut self, records: usize) -> Self {
        self.batch = records;
        self
    }

    /// Sets the linger time (zero: send whatever is there at once).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets `origin.kind`.
    pub fn origin_kind(mut self, kind: impl Into<String>) -> Self {
        self.origin_kind = kind.into();
        self
    }

    /// Sets `origin.instance`.
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }
}

fn default_stream() -> String {
    DEFAULT_STREAM.to_owned()
}

fn default_group() -> String {
    DEFAULT_GROUP.to_owned()
}

fn one() -> u32 {
    1
}

fn default_spool_dir() -> PathBuf {
    PathBuf::from("./spool")
}

fn default_spool_bytes() -> u64 {
    1 << 30
}
