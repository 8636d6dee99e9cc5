//! The way to Redis shared by the producer and the consumer: one node (`redis.url`), or a Redis
//! Cluster (`redis.cluster`), where a cluster-aware client follows `MOVED` and `ASK` and
//! refreshes the topology when a master fails over.
//!
//! A cluster takes a pipeline only when all of its commands touch one slot. [`Link::run`]
//! therefore groups a pipeline's commands by their key (each shard key `STREAM:{N}` is one
//! slot) and sends each group as one pipeline, in the order of its first command. On a single
//! node it is one pipeline, as before.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::config::RedisConfig;
use crate::error::QueueError;

/// Where Redis is: a client for one node or for a cluster, and how many replicas must have
/// a write before it counts (`redis.min_replicas_acked`).
#[derive(Clone)]
pub struct Target {
    client: Client,
    replicas: u32,
}

#[derive(Clone)]
enum Client {
    Node(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("cluster", &self.is_cluster())
            .field("replicas", &self.replicas)
            .finish()
    }
}

/// How long a write waits for its replicas (`WAIT`) before it counts as not acknowledged.
const WAIT_MS: u64 = 1000;

impl Target {
    /// The client the config names: `cluster` when it lists nodes, else `url`. `rediss://`
    /// URLs use TLS, trusting `tls_ca_file` (or the system's roots).
    pub fn open(config: &RedisConfig) -> Result<Target, QueueError> {
        let certs = tls_certificates(config)?;
        let invalid = |url: String| move |source| QueueError::InvalidUrl { url, source };
        let client = if config.cluster.is_empty() {
            if config.url.is_empty() {
                return Err(QueueError::Config(
                    "redis: give `url` (one node) or `cluster` (a Redis Cluster's nodes)".into(),
                ));
            }
            match certs {
                Some(certs) => redis::Client::build_with_tls(config.url.as_str(), certs),
                None => redis::Client::open(config.url.as_str()),
            }
            .map(|c| Client::Node(Box::new(c)))
            .map_err(invalid(config.url.clone()))?
        } else {
            let mut builder = redis::cluster::ClusterClientBuilder::new(config.cluster.clone());
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            builder
                .build()
                .map(|c| Client::Cluster(Box::new(c)))
                .map_err(invalid(config.cluster.join(", ")))?
        };
        Ok(Target {
            client,
            replicas: config.min_replicas_acked,
        })
    }

    /// Connects, waiting at most `connect` for each connection and `response` for each answer.
    pub async fn connect(&self, connect: Duration, response: Duration) -> RedisResult<Link> {
        let conn = match &self.client {
            Client::Node(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(response));
                Conn::Node(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Client::Cluster(client) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(response);
                Conn::Cluster(Box::new(
                    client.get_async_connection_with_config(config).await?,
                ))
            }
        };
        Ok(Link {
            conn,
            replicas: self.replicas,
        })
    }

    /// Whether this is a cluster (whose commands may each touch one slot only).
    pub fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }
}

/// The CA to trust for `rediss://`, read from `tls_ca_file`; `None` without one. TLS needs a
/// process-wide crypto provider: ring's, installed here unless one is already.
fn tls_certificates(config: &RedisConfig) -> Result<Option<redis::TlsCertificates>, QueueError> {
    let tls = config.url.starts_with("rediss://")
        || config.cluster.iter().any(|u| u.starts_with("rediss://"));
    if tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let Some(path) = &config.tls_ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| {
        QueueError::Config(format!(
            "redis.tls_ca_file: cannot read {}: {e}",
            path.display()
        ))
    })?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A live connection: to one node, or to a cluster (a connection to each master).
#[derive(Clone)]
pub struct Link {
    conn: Conn,
    replicas: u32,
}

#[derive(Clone)]
enum Conn {
    Node(MultiplexedConnection),
    Cluster(Box<ClusterConnection>),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.conn {
            Conn::Node(_) => "Link::Node",
            Conn::Cluster(_) => "Link::Cluster",
        })
    }
}

impl Link {
    /// Runs `pipe`'s commands, each answered on its own (an error answers that command only);
    /// `Err` when Redis gave no answer. On a cluster the commands go as one pipeline per key,
    /// the groups one after another in the order of their first command, so that a command
    /// never runs before one that came before it on another key.
    ///
    /// With `min_replicas_acked`, each pipeline ends with `WAIT N`, on the node that took its
    /// writes; when fewer replicas than that confirm in time, its commands answer with an
    /// error, so that their records are sent again (a duplicate the writer ignores, never a
    /// loss on failover).
    pub async fn run(&mut self, pipe: &Pipeline) -> RedisResult<Vec<RedisResult<Value>>> {
        let replicas = self.replicas;
        // The usual case, one node and no replicas to wait for: the pipeline as it is (each
        // command answered on its own), without copying a command.
        if let (Conn::Node(conn), 0) = (&mut self.conn, replicas) {
            let mut answers = pipe.query_async::<Vec<RedisResult<Value>>>(conn).await?;
            answers.resize_with(pipe.len(), || Ok(Value::Nil));
            return Ok(answers);
        }
        let cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
        match &mut self.conn {
            Conn::Node(conn) => one_pipeline(conn, &cmds, replicas).await,
            Conn::Cluster(conn) => {
                let mut groups: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
                for (i, cmd) in cmds.iter().enumerate() {
                    let key = key_of(cmd);
                    match groups.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, members)) => members.push(i),
                        None => groups.push((key, vec![i])),
                    }
                }
                let mut answers: Vec<Option<RedisResult<Value>>> =
                    (0..cmds.len()).map(|_| None).collect();
                for (_, members) in groups {
                    let group: Vec<&Cmd> = members.iter().map(|&i| cmds[i]).collect();
                    let replies = one_pipeline(&mut **conn, &group, replicas).await?;
                    for (i, reply) in members.into_iter().zip(replies) {
                        answers[i] = Some(reply);
                    }
                }
                Ok(answers
                    .into_iter()
                    .map(|a| a.unwrap_or(Ok(Value::Nil)))
                    .collect())
            }
        }
    }

    /// Runs `pipe` as it is (a transaction stays one) on a single node; on a cluster, one
    /// transaction per key, one after another in the order of their first command. Fails on
    /// the first error.
    pub async fn run_all(&mut self, pipe: &Pipeline) -> RedisResult<()> {
        match &mut self.conn {
            Conn::Node(conn) => pipe.query_async::<()>(conn).await,
            Conn::Cluster(conn) => {
                let mut groups: Vec<(Vec<u8>, Pipeline)> = Vec::new();
                for cmd in pipe.cmd_iter() {
                    let key = key_of(cmd);
                    let at = match groups.iter().position(|(k, _)| *k == key) {
                        Some(at) => at,
                        None => {
                            let mut group = redis::pipe();
                            group.atomic();
                            groups.push((key, group));
                            groups.len() - 1
                        }
                    };
                    groups[at].1.add_command(cmd.clone()).ignore();
                }
                for (_, group) in groups {
                    group.query_async::<()>(&mut **conn).await?;
                }
                Ok(())
            }
        }
    }
}

/// A command's key: its first argument (every command auditgate pipelines names one key there).
fn key_of(cmd: &Cmd) -> Vec<u8> {
    match cmd.args_iter().nth(1) {
        Some(redis::Arg::Simple(bytes)) => bytes.to_vec(),
        _ => Vec::new(),
    }
}

async fn one_pipeline(
    conn: &mut impl ConnectionLike,
    cmds: &[&Cmd],
    replicas: u32,
) -> RedisResult<Vec<RedisResult<Value>>> {
    if cmds.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for cmd in cmds {
        pipe.add_command((*cmd).clone());
    }
    if replicas == 0 {
        return pipe.query_async::<Vec<RedisResult<Value>>>(conn).await;
    }
    pipe.cmd("WAIT").arg(replicas).arg(WAIT_MS);
    let mut replies = pipe.query_async::<Vec<RedisResult<Value>>>(conn).await?;
    let acked = match replies.pop() {
        Some(Ok(Value::Int(n))) => n,
        _ => 0,
    };
    if acked < i64::from(replicas) {
        return Ok(replies
            .into_iter()
            .map(|_| {
                Err(RedisError::from((
                    redis::ErrorKind::Io,
                    "written, but not yet on enough replicas (min_replicas_acked)",
                )))
            })
            .collect());
    }
    Ok(replies)
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.conn {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.conn {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.conn {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
