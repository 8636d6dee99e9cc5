//! The audit-log page in headless Chromium (`tests/browser/page.test.mjs`, playwright-core)
//! against a real writer with real records. Needs Debian's chromium, node and
//! `npm ci --prefix tests/browser`, which `scripts/test` installs; hence `#[ignore]` here and
//! `cargo test -- --ignored` there.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::process::Command;
use std::time::Duration;

use auditgate_queue::{QueueConfig, RecordSink, RedisQueue};
use auditgate_rules::{Actor, Outcome, Resource};
use auditgate_tests::{ADMIN_TOKEN, RedisServer, VIEWER_TOKEN, WriterProcess, record, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and tests/browser/node_modules: run through scripts/test"]
async fn the_page_in_a_browser() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let queue =
        RedisQueue::start(QueueConfig::new(redis.url()).spool(spool.path(), 1 << 24)).unwrap();
    let start = chrono::Utc::now() - chrono::Duration::hours(3);
    for i in 0..240u64 {
        let mut r = record(i);
        r.time = start + chrono::Duration::seconds(i as i64 * 30);
        r.operation =
            ["asset.rename", "asset.delete", "tag.add", "member.remove"][i as usize % 4].into();
        r.actor = Some(Actor {
            id: Some(format!("u_{}", i % 5)),
            source: "header.X-User-Id".into(),
        });
        r.outcome = if i.is_multiple_of(7) {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        r.request.id = format!("req-{i}");
        r.resources = vec![Resource {
            kind: "file".into(),
            id: Some(format!("f{}", i % 10)),
            path: None,
            previous_path: None,
        }];
        queue.enqueue(r).unwrap();
    }
    queue.shutdown().await;
    let writer = WriterProcess::start(&redis.url(), "sqlite://audit.db", "");
    assert!(wait_until(Duration::from_secs(20), || writer.count() == 240));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/page.test.mjs");
    let out = Command::new("node")
        .arg(script)
        .arg(format!("http://{}", writer.addr))
        .arg(ADMIN_TOKEN)
        .arg(VIEWER_TOKEN)
        .output()
        .expect("run node (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("page: all checks passed"), "{stdout}");
}
