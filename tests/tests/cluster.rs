//! Scale-out on a real Redis Cluster (six nodes on loopback, three masters with a replica
//! each): a proxy process spreads records over six shard keys held by all three masters, two
//! writer processes share the consumer group and one PostgreSQL store, and one master is
//! killed with SIGKILL in the middle of 1 000 calls. Its replica takes over; every record is
//! stored exactly once and `/gaps` is empty. Then an ACL user in the URL, and `rediss://` to a
//! server whose certificate a CA made by the test signed.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::collections::HashSet;
use std::time::Duration;

use auditgate_tests::{
    PostgresServer, ProxyProcess, RedisCluster, UpstreamProcess, WriterProcess, http, wait_until,
};

const RULES: &str = r#"
version: 1
service: org
rules:
  - operation: member.remove
    method: DELETE
    path: /api/orgs/{org}/members/{user}
    resources: [{ type: user, id: "{path.user}" }]
"#;

const CALLS: usize = 1000;

#[test]
fn a_master_killed_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let mut cluster = RedisCluster::start();
    let keys: Vec<String> = (0..6)
        .map(|i| format!("auditgate:records:{{{i}}}"))
        .collect();
    let masters: HashSet<u16> = keys.iter().map(|k| cluster.master_of(k).unwrap()).collect();
    assert_eq!(
        masters.len(),
        3,
        "the six shards are spread over all three masters"
    );

    let pg = PostgresServer::start();
    // The producer waits for a replica to hold each record (`WAIT 1`): what a master
    // acknowledged then survives its death.
    let producer_redis = cluster.yaml("shards: 6, min_replicas_acked: 1");
    let writer_redis = cluster.yaml("shards: 6");
    let upstream = UpstreamProcess::start();
    let proxy = ProxyProcess::start(&upstream.addr, &producer_redis, RULES, "");
    let writers = [
        WriterProcess::start(&writer_redis, &pg.url(), "consumer: w1\n"),
        WriterProcess::start(&writer_redis, &pg.url(), "consumer: w2\n"),
    ];

    let victim = cluster.master_of(&keys[0]).unwrap();
    for i in 0..CALLS {
        if i == CALLS / 3 {
            cluster.kill(victim);
        }
        let id = format!("call-{i}");
        let answer = http(
            &proxy.addr,
            "DELETE",
            &format!("/api/orgs/acme/members/u{i}"),
            &[("X-Request-Id", &id), ("X-User-Id", "alice")],
            b"",
        )
        .unwrap();
        assert!(answer.status > 0, "call {i} answered");
    }
    assert!(
        wait_until(Duration::from_secs(30), || cluster
            .master_of(&keys[0])
            .is_some_and(|m| m != victim)
            && cluster.is_ok()),
        "the victim's replica took over its shards"
    );

    assert!(
        wait_until(Duration::from_secs(60), || writers[0].count()
            >= CALLS as u64),
        "{} of {CALLS} records stored",
        writers[0].count()
    );
    // Redeliveries settle: nothing more arrives.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(writers[0].count(), CALLS as u64, "each record stored once");
    let export = writers[1].get("/api/v1/export");
    let records: Vec<serde_json::Value> = serde_json::from_slice(&export.body).unwrap();
    let request_ids: HashSet<&str> = records
        .iter()
        .map(|r| r["request"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(request_ids.len(), CALLS, "every call has its record");
    assert!((0..CALLS).all(|i| request_ids.contains(format!("call-{i}").as_str())));
    let gaps = writers[0].get("/api/v1/gaps").json();
    assert_eq!(gaps["gaps"], serde_json::json!([]), "{gaps}");
    // Each writer keeps its own chain; every chain verifies.
    let report = writers[0].get("/api/v1/verify").json();
    assert_eq!(report["intact"], true, "{report}");
}

/// A redis-server started with `args`, killed when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn redis_server(args: &[&str]) -> Server {
    Server(
        std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Sends `n` records through a real producer and reads them back through a consumer in the
/// group, both on `redis`; the records read.
async fn round_trip(redis: auditgate_queue::RedisConfig, n: u64) -> usize {
    use auditgate_queue::{Consumer, ConsumerConfig};
    auditgate_tests::enqueue_all(redis.clone(), "t", (0..n).map(auditgate_tests::record)).await;
    let mut consumer = Consumer::connect(ConsumerConfig::new(redis, "reader"))
        .await
        .unwrap();
    let mut read = 0;
    for _ in 0..20 {
        read += consumer.next_batch().await.unwrap().len();
        if read as u64 >= n {
            break;
        }
    }
    read
}

/// An ACL user and password in the URL: records go through; a wrong password is refused with
/// Redis's own words, not taken for Redis being away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_and_password_work_and_a_wrong_one_is_refused() {
    let port = auditgate_tests::free_port();
    let _server = redis_server(&[
        "--port",
        &port.to_string(),
        "--user",
        "default",
        "off",
        "--user",
        "auditgate",
        "on",
        ">s3cret",
        "~*",
        "&*",
        "+@all",
    ]);
    let url = format!("redis://auditgate:s3cret@127.0.0.1:{port}");
    assert!(wait_until(Duration::from_secs(10), || {
        redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .is_ok()
    }));
    assert_eq!(
        round_trip(auditgate_queue::RedisConfig::new(&url), 20).await,
        20
    );
    let wrong =
        auditgate_queue::RedisConfig::new(format!("redis://auditgate:nope@127.0.0.1:{port}"));
    let refused =
        auditgate_queue::Consumer::connect(auditgate_queue::ConsumerConfig::new(wrong, "r")).await;
    let message = refused.unwrap_err().to_string();
    assert!(
        message.to_lowercase().contains("authentication failed"),
        "{message}"
    );
}

/// `rediss://` to a server whose certificate a CA made by the test signed, trusted through
/// `tls_ca_file`; without the CA the connection is refused rather than made in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_carries_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.crt"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &path("server.key"),
        "-out",
        &path("server.csr"),
    ]);
    std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.crt"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &path("san.ext"),
        "-out",
        &path("server.crt"),
    ]);
    let port = auditgate_tests::free_port();
    let _server = redis_server(&[
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &path("server.crt"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]);
    let mut redis = auditgate_queue::RedisConfig::new(format!("rediss://127.0.0.1:{port}"));
    redis.tls_ca_file = Some(dir.path().join("ca.crt"));
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    assert_eq!(round_trip(redis.clone(), 20).await, 20);
    // Without the CA, the server's certificate is not trusted.
    redis.tls_ca_file = None;
    let untrusted =
        auditgate_queue::Consumer::connect(auditgate_queue::ConsumerConfig::new(redis, "r")).await;
    assert!(
        untrusted.is_err(),
        "a certificate no trusted CA signed is refused"
    );
}
