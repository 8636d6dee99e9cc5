//! Scale-out on a real Redis Cluster (six nodes on loopback, three masters with a replica
//! each): a proxy process spreads records over six shard keys held by all three masters, two
//! writer processes share the consumer group and one PostgreSQL store, and one master is
//! killed with SIGKILL in the middle of 1 000 calls. Its replica takes over; every record is
//! stored exactly once and `/gaps` is empty.

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
