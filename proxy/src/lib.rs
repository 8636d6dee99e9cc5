//! `auditgate proxy`: a pingora reverse proxy that audits the calls its rules match.
//!
//! Operators put it in front of an existing API; every request passes through unchanged, and
//! every request a rule matches also becomes an audit record in the Redis stream — for each
//! outcome: `success`, `failure` (upstream answered ≥ 400), `error` (no upstream answer; the
//! client got 502 or 504) and `aborted` (the client went away). See [`audit`] for the phases.
//!
//! ```no_run
//! let config = auditgate_proxy::ProxyConfig::load("proxy.yaml")?;
//! auditgate_proxy::run(config)?; // returns after SIGTERM (graceful) or SIGINT (fast)
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Threads: the proxy's request threads never await Redis; the queue's flusher runs as a
//! pingora background service on its own runtime, and so does rule reloading.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use auditgate_queue::{QueueConfig, RedisQueue};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

pub mod audit;
mod client_ip;
mod config;
mod jwt;
pub mod metrics;
mod services;
mod upstream_ca;

pub use audit::AuditProxy;
pub use config::{ConfigError, JwtConfig, ProxyConfig, Timeouts, Upstream};

use crate::jwt::Verifier;
use crate::metrics::{MetricsApp, ProxyMetrics};
use crate::services::{QueueService, ReloadService};

/// Starts the proxy and blocks until it has shut down. Everything that can be wrong with the
/// config, the rules or the spool is reported before anything listens.
pub fn run(config: ProxyConfig) -> anyhow::Result<()> {
    // The recorder first: the queue takes its metric handles when it is built.
    let handle = metrics::install()?;
    // Taken before the load: a file changed while the proxy starts is reloaded.
    let loaded = services::fingerprint(&config.rules, config.jwt.as_ref());
    let rules = ReloadService::load(&config.rules, config.hmac_key_file.as_ref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if rules.reads_jwt() && config.jwt.is_none() {
        // DESIGN.md's records name the template (`jwt/sub`), not whether it was checked.
        tracing::warn!(
            "rules read jwt/ claims but `jwt:` is not configured: tokens are read without checking their signature, so a client can name any actor; configure jwt: (hs256_secret_file, jwks_file) or put a header your authentication gateway sets first"
        );
    }
    let jwt = match &config.jwt {
        Some(j) => Some(Arc::new(ArcSwap::from_pointee(
            Verifier::load(j).map_err(|e| anyhow::anyhow!("jwt: {e}"))?,
        ))),
        None => None,
    };
    let upstream = config.upstream().map_err(|e| anyhow::anyhow!("{e}"))?;
    let upstream_ca = match &config.upstream_ca_file {
        Some(path) => {
            Some(upstream_ca::load(path).map_err(|e| anyhow::anyhow!("upstream_ca_file: {e}"))?)
        }
        None => None,
    };
    for addr in std::iter::once(&config.listen).chain(config.metrics_listen.as_ref()) {
        // Bind once here so that a taken port is a clear error, not a panic in a thread.
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    }

    let grace = Duration::from_secs(config.grace_period_seconds);
    let mut queue_config = QueueConfig::new(config.redis.url.clone())
        .spool(config.spool.dir.clone(), config.spool.max_bytes)
        .buffer(config.queue_buffer)
        .origin_kind("proxy");
    queue_config.redis = config.redis.clone();
    queue_config.shutdown_timeout = grace / 2;
    let (queue, flusher) = RedisQueue::new(queue_config)?;
    let queue = Arc::new(queue);

    let server_conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(config.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(2),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();

    let rules = Arc::new(ArcSwap::from_pointee(rules));
    let listen = config.listen.clone();
    let metrics_listen = config.metrics_listen.clone();
    let reload = ReloadService {
        rules: rules.clone(),
        paths: config.rules.clone(),
        hmac_key_file: config.hmac_key_file.clone(),
        jwt: config.jwt.clone().zip(jwt.clone()),
        loaded,
    };
    let mut proxy = AuditProxy::new(
        rules,
        (*queue).clone(),
        upstream,
        config,
        jwt,
        ProxyMetrics::new(),
    );
    proxy.upstream_ca = upstream_ca;
    let in_flight = proxy.in_flight.clone();
    let mut proxy_service = pingora::proxy::http_proxy_service(&server.configuration, proxy);
    proxy_service.add_tcp(&listen);
    server.add_service(proxy_service);
    server.add_service(background_service(
        "audit queue",
        QueueService {
            flusher: Mutex::new(Some(flusher)),
            queue: queue.clone(),
            in_flight,
            grace,
        },
    ));
    server.add_service(background_service("rule reload", reload));
    if let Some(addr) = metrics_listen {
        let mut service = Service::new(
            "metrics".to_owned(),
            MetricsApp {
                handle,
                queue: queue.clone(),
            },
        );
        service.add_tcp(&addr);
        server.add_service(service);
    }
    tracing::info!(%listen, "auditgate proxy listening");
    server.run(RunArgs::default());
    Ok(())
}
