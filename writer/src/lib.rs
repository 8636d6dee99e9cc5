//! `auditgate writer`: drains the Redis stream into a store and answers the questions
//! administrators and auditors ask — what happened, who did it, to which resource, when, with
//! which request ID — through the query API.
//!
//! - [`ingest`]: consumer group `auditgate-writers`; what is read while a commit runs is
//!   committed next, in one transaction of up to `commit_max` entries, and acknowledged only
//!   after it; an `id` already stored is ignored, so the store holds each record once.
//! - [`store`]: SQLite (default, one file, WAL) or PostgreSQL, behind one trait.
//! - the API: `GET /api/v1/records`, `/records/{id}`, `/history`, `/export` ([`export`]:
//!   JSON or CSV), `/gaps`, `/operations`, `/whoami`, with
//!   bearer tokens (`admin`, `viewer`); `/metrics` and `/healthz`.
//!
//! ```no_run
//! # async fn go() -> Result<(), Box<dyn std::error::Error>> {
//! let config = auditgate_writer::WriterConfig::load("writer.yaml")?;
//! let listener = tokio::net::TcpListener::bind(&config.listen).await?; // port 0 works
//! // The process's metrics recorder, which `/metrics` serves (the binary installs it).
//! let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().ok();
//! auditgate_writer::run(config, listener, metrics, async { tokio::signal::ctrl_c().await.ok(); })
//!     .await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use auditgate_queue::{Consumer, ConsumerConfig};
use chrono::Utc;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

mod api;
pub mod chain;
pub mod checkpoints;
pub mod config;
mod error;
pub mod export;
pub mod ingest;
pub mod metrics;
pub mod minted;
pub mod siem;
pub mod store;
pub mod verify;

pub use config::{Role, TokenConfig, WriterConfig};
pub use error::WriterError;

/// Runs the writer, its API on `listener`, until `shutdown` completes: the batch in hand is
/// committed and acknowledged, then the process may exit. `metrics` is the process's
/// Prometheus recorder, which `/metrics` serves (without one it answers 404). The same as
/// [`Writer::open`] then [`Writer::run`].
pub async fn run(
    config: WriterConfig,
    listener: tokio::net::TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WriterError> {
    Writer::open(config)
        .await?
        .run(listener, metrics, shutdown)
        .await
}

/// A writer whose store is open and set up and whose consumer group is known: what is left
/// is to serve. A caller that announces its address (the binary's `listening on` line) opens
/// first, so that the line means the API is about to answer.
pub struct Writer {
    config: WriterConfig,
    store: Arc<dyn store::Store>,
    consumer: Consumer,
    mint_key: Option<minted::MintKey>,
    evidence: Option<Arc<checkpoints::Evidence>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("store", &self.config.store)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Opens (and migrates) the store and sets up the consumer. Redis may be away: only Redis
    /// answering with an error (a wrong password, a stream key of another type) stops it.
    pub async fn open(config: WriterConfig) -> Result<Writer, WriterError> {
        let mint_key = config.mint_key()?;
        let store: Arc<dyn store::Store> = Arc::from(store::open(&config.store).await?);
        let name = config
            .consumer
            .clone()
            .or_else(auditgate_queue::hostname)
            .unwrap_or_else(|| "writer".to_owned());
        let evidence = if config.chain {
            let uid = config.chain_uid.clone().unwrap_or_else(|| name.clone());
            if !chain::valid_uid(&uid) {
                return Err(WriterError::ChainUid(uid));
            }
            store.chain_as(&uid).await?;
            Some(Arc::new(checkpoints::Evidence {
                uid,
                key: config.signing_key()?,
                dir: config.checkpoint_dir.clone(),
            }))
        } else {
            None
        };
        let mut consumer_config = ConsumerConfig::new(config.redis.clone(), name);
        consumer_config.batch = config.batch;
        consumer_config.claim_idle = Duration::from_secs(config.claim_idle_seconds);
        // Redis may be away at start (or start after the writer): the API serves what the store
        // holds meanwhile, and the stream is read once Redis answers.
        // Redis answering with an error (a wrong password, a stream key of another type) is a
        // misconfiguration and stops the writer; only Redis not answering is waited for.
        let mut consumer = Consumer::new(consumer_config)?;
        match consumer.ensure_connected().await {
            Ok(()) => {}
            Err(auditgate_queue::QueueError::Redis(e))
                if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() =>
            {
                tracing::warn!(error = %e, "Redis does not answer yet; serving the store and retrying");
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Writer {
            config,
            store,
            consumer,
            mint_key,
            evidence,
        })
    }

    /// Serves the API on `listener` and drains the stream until `shutdown` completes; see
    /// [`run`].
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        metrics: Option<PrometheusHandle>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), WriterError> {
        let Writer {
            config,
            store,
            consumer,
            mint_key,
            evidence,
        } = self;
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                let mut hash = [0u8; 32];
                for (i, byte) in hash.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&t.sha256[2 * i..2 * i + 2], 16).unwrap_or(0);
                }
                (
                    hash,
                    api::Access {
                        role: t.role,
                        tenant: t.tenant.clone(),
                    },
                )
            })
            .collect();
        let state = Arc::new(api::AppState {
            store: store.clone(),
            tokens,
            mint_key,
            metrics,
            verifier: evidence
                .as_ref()
                .and_then(|e| e.key.as_ref())
                .map(chain::SigningKey::verifier),
            checkpoint_dir: config.checkpoint_dir.clone(),
        });
        let addr = listener.local_addr().map_err(WriterError::Serve)?;
        tracing::info!(%addr, store = %config.store, "auditgate writer started");

        let (stop_tx, stop_rx) = watch::channel(false);
        let ingest = tokio::spawn(ingest::ingest(
            store.clone(),
            consumer,
            config.commit_max,
            stop_rx.clone(),
        ));
        let retention = tokio::spawn(retention(
            store.clone(),
            config.retention_days,
            evidence.clone(),
            stop_rx.clone(),
        ));
        let periodic = evidence.clone().map(|e| {
            tokio::spawn(checkpoints::every(
                store.clone(),
                e,
                Duration::from_secs(config.checkpoint_seconds.max(1)),
                stop_rx.clone(),
            ))
        });
        let gauges = tokio::spawn(redis_gauges(config.redis.clone(), stop_rx.clone()));
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, api::router(state))
                .with_graceful_shutdown(async move {
                    let _ = server_stop.wait_for(|s| *s).await;
                })
                .await
        });

        shutdown.await;
        tracing::info!("shutting down: finishing the batch in hand");
        stop_tx.send_replace(true);
        let _ = ingest.await;
        // The last checkpoint covers everything this writer stored.
        if let Some(periodic) = periodic {
            periodic.abort();
        }
        if let Some(evidence) = &evidence
            && let Err(e) = evidence.sign_head(&*store).await
        {
            tracing::warn!(error = %e, "signing the last checkpoint failed");
        }
        retention.abort();
        gauges.abort();
        let _ = server.await;
        Ok(())
    }
}

/// Deletes records older than the retention period and refreshes the planner's statistics,
/// at start and every hour.
async fn retention(
    store: Arc<dyn store::Store>,
    days: u32,
    evidence: Option<Arc<checkpoints::Evidence>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = store.optimize().await {
            tracing::warn!(error = %e, "refreshing the store's statistics failed");
        }
        if days == 0 {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => continue,
            }
        }
        let before = Utc::now() - chrono::Duration::days(i64::from(days));
        // Each chain is cut only at a signed retention checkpoint, so verification stays
        // whole; without a signing key, chained records are kept.
        let cuts = match &evidence {
            Some(evidence) => evidence.sign_cuts(&*store, before).await,
            None => Ok(Vec::new()),
        };
        let cuts = match cuts {
            Ok(cuts) => cuts,
            Err(e) => {
                tracing::warn!(error = %e, "retention: signing the chains' cuts failed; chained records kept");
                Vec::new()
            }
        };
        match store.delete_before(before, &cuts).await {
            Ok(0) => {}
            Ok(n) => {
                ::metrics::counter!(metrics::RETAINED_DELETED).increment(n);
                tracing::info!(deleted = n, days, "retention: deleted old records");
            }
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// Pending entries and consumer lag of the group, every 5 s, for `/metrics`.
async fn redis_gauges(redis: auditgate_queue::RedisConfig, mut stop: watch::Receiver<bool>) {
    let Ok(target) = auditgate_queue::Target::open(&redis) else {
        return;
    };
    loop {
        if let Ok(mut conn) = target
            .connect(Duration::from_secs(2), Duration::from_secs(5))
            .await
        {
            let (mut pending, mut lag) = (0i64, 0i64);
            for key in redis.keys() {
                let groups: redis::RedisResult<
                    Vec<std::collections::HashMap<String, redis::Value>>,
                > = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await;
                for group in groups.unwrap_or_default() {
                    let name: Option<String> = group
                        .get("name")
                        .and_then(|v| redis::from_redis_value_ref(v).ok());
                    if name.as_deref() != Some(redis.group.as_str()) {
                        continue;
                    }
                    let num = |field: &str| -> i64 {
                        group
                            .get(field)
                            .and_then(|v| redis::from_redis_value_ref(v).ok())
                            .unwrap_or(0)
                    };
                    pending += num("pending");
                    lag += num("lag");
                }
            }
            ::metrics::gauge!(metrics::PENDING).set(pending as f64);
            ::metrics::gauge!(metrics::LAG).set(lag as f64);
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
