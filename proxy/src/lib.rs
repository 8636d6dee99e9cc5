//! `auditgate proxy`: a pingora reverse proxy that audits the calls its rules match.
//!
//! Operators put it in front of an existing API; every request passes through unchanged, and
//! every request a rule matches also becomes an audit record in the Redis stream — for each
//! outcome: `success`, `failure` (upstream answered ≥ 400), `error` (no upstream answer; the
//! client got 502 or 504) and `aborted` (the client went away). See [`audit`] for the phases.
//!
//! ```no_run
//! let config = auditgate_proxy::ProxyConfig::load("proxy.yaml")?;
//! auditgate_proxy::serve(config)?; // returns after SIGTERM or SIGINT, the queue flushed
//! # Ok::<(), auditgate_proxy::ProxyError>(())
//! ```
//!
//! [`run`] is the same on a listener the caller has bound, until a future the caller
//! chooses: how tests start the proxy in-process on port 0.
//!
//! Threads: the proxy's request threads never await Redis; the queue's flusher runs on a
//! runtime of its own, with rule reloading and the metrics listener.

use std::future::Future;
use std::net::TcpListener;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use auditgate_queue::{QueueConfig, RedisQueue};
use metrics_exporter_prometheus::PrometheusHandle;
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds};
use pingora::services::Service as _;
use pingora::services::listening::Service;

pub mod audit;
mod before;
mod client_ip;
mod config;
mod error;
mod jwt;
pub mod metrics;
mod services;
mod upstream_ca;

pub use audit::AuditProxy;
pub use config::{ConfigError, JwtConfig, ProxyConfig, Timeouts, Upstream};
pub use error::ProxyError;
pub use metrics::install as install_metrics;

use crate::jwt::Verifier;
use crate::metrics::{MetricsApp, ProxyMetrics};
use crate::services::ReloadService;

/// What the binary runs: binds `listen` (and `metrics_listen`), installs the process's metrics
/// recorder, and runs the proxy until SIGTERM, SIGINT or SIGQUIT. Each stops the listeners,
/// lets the requests in flight finish (up to the grace period) and flushes the queue; a second
/// signal exits at once.
pub fn serve(config: ProxyConfig) -> Result<(), ProxyError> {
    // The recorder first: the queue takes its metric handles when it is built.
    let metrics = install_metrics()?;
    let listener = bind(&config.listen)?;
    let shutdown = async {
        let first = next_stop_signal().await;
        tracing::info!(
            "{first} received: finishing the requests in flight, then flushing the audit queue (a second signal exits at once)"
        );
        // The drain can take the grace period and the flush's timeout: an operator who does
        // not want to wait says so again.
        tokio::spawn(async {
            let second = next_stop_signal().await;
            tracing::warn!("{second} received again: exiting without finishing the flush");
            std::process::exit(1);
        });
    };
    run(config, listener, Some(metrics), shutdown)
}

/// The next SIGTERM, SIGINT or SIGQUIT (pingora's graceful upgrade, which this proxy does not
/// do: it stops as for SIGTERM rather than die unflushed), by name. When the handlers cannot
/// be installed, Ctrl-C alone stops the proxy, and the log says so.
async fn next_stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::quit()),
    ) {
        (Ok(mut term), Ok(mut int), Ok(mut quit)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = quit.recv() => "SIGQUIT",
        },
        (term, int, quit) => {
            let error = [term.err(), int.err(), quit.err()]
                .into_iter()
                .flatten()
                .next();
            tracing::error!(
                ?error,
                "cannot install signal handlers; only Ctrl-C stops the proxy"
            );
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Binds an address to listen on (a port of 0 picks a free one), with a clear error when it
/// is taken.
pub fn bind(addr: &str) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr).map_err(|source| ProxyError::Listen {
        addr: addr.to_owned(),
        source,
    })
}

/// Runs the proxy on `listener` until `shutdown` completes, then stops taking connections,
/// waits for the requests in flight (up to `grace_period_seconds`; what is still running then
/// is cut, and a cut audited call is recorded as `aborted`), flushes the queue to Redis or
/// the spool, and returns. Everything that can be wrong with the config, the
/// rules, the keys or the spool is reported before anything is served.
///
/// `metrics` is the process's Prometheus recorder ([`install_metrics`]), which
/// `metrics_listen` serves; without one, `/metrics` answers 404 and `/healthz` still works.
/// A test starts the proxy in-process on port 0 (mini-redis's `server::run` shape):
///
/// ```no_run
/// # fn main() -> Result<(), auditgate_proxy::ProxyError> {
/// let config = auditgate_proxy::ProxyConfig::load("proxy.yaml")?;
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
/// let addr = listener.local_addr().expect("bound");
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let proxy = std::thread::spawn(move || {
///     auditgate_proxy::run(config, listener, None, async { stopped.await.ok(); })
/// });
/// // ... send requests to `addr` ...
/// # let _ = addr;
/// stop.send(()).ok();
/// proxy.join().expect("the proxy thread")?;
/// # Ok(()) }
/// ```
pub fn run(
    config: ProxyConfig,
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    // Taken before the load: a file changed while the proxy starts is reloaded.
    let loaded = services::fingerprint(&config.rules, config.jwt.as_ref());
    let rules = ReloadService::load(&config.rules, config.hmac_key_file.as_ref())?;
    if rules.reads_jwt() && config.jwt.is_none() {
        // A record names the template (`jwt/sub`), not whether it was checked (docs/auditors.md).
        tracing::warn!(
            "rules read jwt/ claims but `jwt:` is not configured: tokens are read without checking their signature, so a client can name any actor; configure jwt: (hs256_secret_file, jwks_file) or put a header your authentication gateway sets first"
        );
    }
    let jwt = match &config.jwt {
        Some(j) => Some(Arc::new(ArcSwap::from_pointee(Verifier::load(j)?))),
        None => None,
    };
    let upstream = config.upstream()?;
    let locator = config.geoip.locator()?;
    let upstream_ca = match &config.upstream_ca_file {
        Some(path) => Some(upstream_ca::load(path)?),
        None => None,
    };
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(bind(addr)?),
        None => None,
    };
    // pingora's services take their listeners from a table of inherited sockets (what a
    // graceful upgrade hands over) by address: the sockets bound here go in it, so a port of
    // 0 is the port actually bound, and a taken port was an error above, not a panic in a
    // service thread.
    let fds: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
    let addr = hand_over(&fds, listener, &config.listen)?;
    let metrics_addr = match (metrics_listener, &config.metrics_listen) {
        (Some(listener), Some(name)) => Some(hand_over(&fds, listener, name)?),
        _ => None,
    };

    let grace = Duration::from_secs(config.grace_period_seconds);
    let mut queue_config = QueueConfig::new(config.redis.url.clone())
        .spool(config.spool.dir.clone(), config.spool.max_bytes)
        .buffer(config.queue_buffer)
        .linger(Duration::from_millis(config.queue_linger_ms))
        .origin_kind("proxy");
    queue_config.redis = config.redis.clone();
    queue_config.shutdown_timeout = grace / 2;
    // A closed call's received record waits for Redis half its time, then for the spool.
    queue_config.durable_redis_wait = Duration::from_millis(config.closed_timeout_ms) / 2;
    let (queue, flusher) = RedisQueue::new(queue_config)?;
    let queue = Arc::new(queue);

    // What pingora's proxy service reads of a server config (pools, timeouts): its defaults.
    // The grace period and threads are this function's to apply.
    let server_conf = Arc::new(ServerConf::default());
    let rules = Arc::new(ArcSwap::from_pointee(rules));
    let reload = ReloadService {
        rules: rules.clone(),
        paths: config.rules.clone(),
        hmac_key_file: config.hmac_key_file.clone(),
        jwt: config.jwt.clone().zip(jwt.clone()),
        loaded,
    };
    let threads = config.threads;
    let mut proxy = AuditProxy::new(
        rules,
        (*queue).clone(),
        upstream,
        config,
        jwt,
        ProxyMetrics::new(),
        locator,
    );
    proxy.upstream_ca = upstream_ca;
    let in_flight = proxy.in_flight.clone();

    let mut proxy_service = pingora::proxy::http_proxy_service(&server_conf, proxy);
    proxy_service.add_tcp(&addr);
    let metrics_service = metrics_addr.as_ref().map(|addr| {
        let mut service = Service::new(
            "metrics".to_owned(),
            MetricsApp {
                handle: metrics,
                queue: queue.clone(),
            },
        );
        service.add_tcp(addr);
        service
    });

    // Two runtimes, as pingora gives each service its own: the request threads, and one
    // thread for the queue's flusher, rule reloading and metrics, so that Redis's latency
    // and the flusher's work never sit on a request thread.
    let request_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("auditgate-proxy")
        .enable_all()
        .build()
        .map_err(ProxyError::Runtime)?;
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("auditgate-queue")
        .enable_all()
        .build()
        .map_err(ProxyError::Runtime)?;
    // Polled from now on (signal handlers are installed when it is first polled), before
    // anything is served.
    let stop_asked = background.spawn(shutdown);

    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    request_runtime.spawn({
        let (fds, stopping) = (fds.clone(), stopping.clone());
        async move { proxy_service.start_service(Some(fds), stopping, 1).await }
    });
    let metrics_task = metrics_service.map(|mut service| {
        let (fds, stopping) = (fds.clone(), stopping.clone());
        background.spawn(async move { service.start_service(Some(fds), stopping, 1).await })
    });
    let flusher_task = background.spawn(flusher.run());
    let reload_task = background.spawn(reload.run(stopping));
    // The addresses actually bound (a port of 0 is a free one): tests and scripts read them.
    match &metrics_addr {
        Some(metrics) => tracing::info!(listen = %addr, %metrics, "auditgate proxy listening"),
        None => tracing::info!(listen = %addr, "auditgate proxy listening"),
    }

    background.block_on(async {
        let _ = stop_asked.await;
        // The listeners stop taking connections; a kept-alive connection closes after the
        // request it is serving.
        stop_tx.send_replace(true);
        services::requests_done(&in_flight, grace).await;
    });
    // What is still running after the grace period is cut here; a call cut short makes its
    // record (`aborted`) as it is dropped, before the queue is flushed below.
    request_runtime.shutdown_timeout(Duration::from_secs(1));
    background.block_on(async {
        // Sends what is buffered, or spools it: every record of this run is then in Redis,
        // in the spool, or counted as dropped.
        queue.shutdown().await;
        let _ = flusher_task.await;
        let _ = reload_task.await;
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
    });
    background.shutdown_timeout(Duration::from_secs(1));
    tracing::info!("auditgate proxy stopped");
    Ok(())
}

/// Puts a bound listener in pingora's socket table under the address it is bound to, and
/// returns that address for `add_tcp`.
fn hand_over(fds: &ListenFds, listener: TcpListener, name: &str) -> Result<String, ProxyError> {
    let listen_error = |source| ProxyError::Listen {
        addr: name.to_owned(),
        source,
    };
    let addr = listener.local_addr().map_err(listen_error)?.to_string();
    // pingora makes a tokio listener of it, which must not block.
    listener.set_nonblocking(true).map_err(listen_error)?;
    fds.lock().add(addr.clone(), listener.into_raw_fd());
    Ok(addr)
}
