//! `auditgate_proxy::run` in the test's own process, on a listener bound to port 0: the shape
//! that lets a test start the proxy without racing other tests for a port. The proxy still
//! sits in front of the real example upstream and writes to a real redis-server.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::time::Duration;

use auditgate_rules::Outcome;
use auditgate_tests::{RedisServer, UpstreamProcess, http, wait_until};

const RULES: &str = r#"
version: 1
service: media-library
defaults: { actor: ["{header.X-User-Id}"] }
rules:
  - operation: member.remove
    method: DELETE
    path: /api/orgs/{org}/members/{user}
    resources: [{ type: user, id: "{path.user}" }]
"#;

#[test]
fn the_proxy_runs_in_process_on_port_zero_and_flushes_when_told_to_stop() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    let config_path = dir.path().join("proxy.yaml");
    std::fs::write(
        &config_path,
        format!(
            "listen: 127.0.0.1:0\nupstream: http://{}\nrules: [rules.yaml]\n\
             redis: {{ url: \"{}\" }}\nspool: {{ dir: spool }}\nclient_ip: full\n\
             grace_period_seconds: 3\n",
            upstream.addr,
            redis.url()
        ),
    )
    .unwrap();
    let config = auditgate_proxy::ProxyConfig::load(&config_path).unwrap();
    let listener = auditgate_proxy::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = std::thread::spawn(move || {
        auditgate_proxy::run(config, listener, None, async {
            stopped.await.ok();
        })
    });

    let removed = http(
        &addr,
        "DELETE",
        "/api/orgs/acme/members/u_9",
        &[("X-User-Id", "admin_1"), ("X-Request-Id", "req-in-process")],
        b"",
    )
    .unwrap();
    assert!(removed.status < 500, "status {}", removed.status);
    assert_eq!(removed.header("x-request-id"), Some("req-in-process"));
    // A call no rule matches passes and leaves no record.
    let passed = http(&addr, "GET", "/health", &[], b"").unwrap();
    assert!(passed.status > 0);

    stop.send(()).unwrap();
    let result = proxy.join().unwrap();
    assert!(result.is_ok(), "{result:?}");
    // After `run` returns, the record has been flushed to Redis: nothing waits to be sent.
    assert!(
        wait_until(Duration::from_secs(1), || redis.len("auditgate:records")
            >= 1),
        "the record was not flushed"
    );
    let records = redis.records("auditgate:records");
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record.operation, "member.remove");
    assert_eq!(record.request.id, "req-in-process");
    assert_eq!(
        record.actor.as_ref().unwrap().id.as_deref(),
        Some("admin_1")
    );
    assert_eq!(record.resources[0].id.as_deref(), Some("u_9"));
    assert_eq!(record.response.status, Some(removed.status));
    assert_eq!(record.outcome, Outcome::from_status(removed.status));
    // The port is free again once the proxy has stopped.
    assert!(std::net::TcpListener::bind(&addr).is_ok());
}

#[test]
fn a_bad_config_is_an_error_before_anything_listens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "version: 1\nservice: s\nrules:\n  - operation: a.b\n    methd: POST\n    path: /x\n",
    )
    .unwrap();
    let config_path = dir.path().join("proxy.yaml");
    std::fs::write(
        &config_path,
        "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nrules: [rules.yaml]\n\
         redis: { url: \"redis://127.0.0.1:1\" }\nspool: { dir: spool }\n",
    )
    .unwrap();
    let config = auditgate_proxy::ProxyConfig::load(&config_path).unwrap();
    let listener = auditgate_proxy::bind("127.0.0.1:0").unwrap();
    let err = auditgate_proxy::run(config, listener, None, std::future::pending()).unwrap_err();
    assert!(
        matches!(err, auditgate_proxy::ProxyError::Rules(_)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("rules.yaml:5:5: unknown key \"methd\""),
        "{err}"
    );
}
