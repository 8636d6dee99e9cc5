//! Hostile clients against the whole pipeline — a real proxy in front of an upstream that takes
//! any method and target, a real redis-server, real SQLite and PostgreSQL writers: every call
//! that reaches the upstream with a mutating method is in the store (or was refused before it
//! reached the upstream), the writer goes on storing after each hostile record, and nothing is
//! dead-lettered by a client's choice.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::time::Duration;

use auditgate_tests::{
    PostgresServer, ProxyProcess, RedisServer, UpstreamProcess, WriterProcess, http, record,
    wait_until,
};
use serde_json::Value;

const DEAD: &str = "auditgate:records:dead";

const RULES: &str = r#"
version: 1
service: media-library
defaults:
  actor: ["{header.X-User-Id}"]
rules:
  - operation: file.delete
    method: DELETE
    path: /v1/files/{fileId}
    resources: [{ type: file, id: "{path.fileId}" }]
"#;

/// The records a filter selects, as the API answers them.
fn select(writer: &WriterProcess, query: &str) -> Vec<Value> {
    let page = writer.get(&format!("/api/v1/records?{query}"));
    assert_eq!(
        page.status,
        200,
        "{query}: {}",
        String::from_utf8_lossy(&page.body)
    );
    page.json()["records"].as_array().unwrap().clone()
}

/// NUL in a resource id and a 3 000-byte actor: PostgreSQL refuses NUL in text and index rows
/// over 2 704 bytes, so either used to stop a PostgreSQL writer for good.
fn hostile_values_are_stored_and_found(store: &str) {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, "");
    let writer = WriterProcess::start(&redis.url(), store, "");

    let long_actor = "x".repeat(3000);
    let calls: [(&str, &str); 3] = [
        ("/v1/files/a%00b", "u_nul"),
        ("/v1/files/abc", &long_actor),
        ("/v1/files/after", "u_after"),
    ];
    for (path, user) in calls {
        let answer = http(&proxy.addr, "DELETE", path, &[("X-User-Id", user)], b"").unwrap();
        assert_eq!(answer.status, 200, "{path}: the upstream answers");
    }
    assert!(
        wait_until(Duration::from_secs(15), || writer.count() == 3),
        "{store}: {} of 3 records stored; writer log:\n{}",
        writer.count(),
        std::fs::read_to_string(writer.dir.path().join("stderr.log")).unwrap_or_default()
    );

    let nul = select(&writer, "resource=a%00b");
    assert_eq!(nul.len(), 1, "{store}: the NUL id is found by its value");
    assert_eq!(
        nul[0]["resources"][0]["id"], "a\u{0}b",
        "kept whole in the JSON"
    );
    assert_eq!(nul[0]["request"]["path"], "/v1/files/a%00b");

    let long = select(&writer, &format!("actor={long_actor}"));
    assert_eq!(
        long.len(),
        1,
        "{store}: the long actor is found by its whole value"
    );
    assert_eq!(long[0]["actor"]["id"].as_str().unwrap().len(), 3000);
    assert!(
        select(&writer, &format!("actor={}", &long_actor[..2999])).is_empty(),
        "a value one byte shorter is another actor"
    );

    assert_eq!(select(&writer, "actor=u_after").len(), 1);
    assert_eq!(redis.len(DEAD), 0, "{store}: nothing is dead-lettered");
}

#[test]
fn hostile_values_reach_a_sqlite_store() {
    hostile_values_are_stored_and_found("sqlite://audit.db");
}

#[test]
fn hostile_values_reach_a_postgres_store() {
    let pg = PostgresServer::start();
    hostile_values_are_stored_and_found(&pg.url());
}

/// Three records in one stream read, the middle one of an operation the store refuses.
fn add_three_with_a_refused_one(redis: &RedisServer) -> Vec<String> {
    let mut conn = redis.connection().unwrap();
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut ids = Vec::new();
    for n in 1..=3 {
        let mut r = record(n);
        if n == 2 {
            r.operation = "evil".into();
        }
        ids.push(r.id.to_string());
        pipe.cmd("XADD")
            .arg("auditgate:records")
            .arg("*")
            .arg("record")
            .arg(serde_json::to_string(&r).unwrap())
            .ignore();
    }
    pipe.query::<()>(&mut conn).unwrap();
    ids
}

/// What the store refuses goes to the dead letters with the store's own error, the rest of its
/// batch is stored, and the writer goes on.
fn a_refused_record_is_dead_lettered_with_the_store_error(
    writer: &WriterProcess,
    redis: &RedisServer,
    store_says: &str,
) {
    let ids = add_three_with_a_refused_one(redis);
    assert!(
        wait_until(Duration::from_secs(15), || writer.count() == 2
            && redis.len(DEAD) == 1),
        "stored {}, dead letters {}",
        writer.count(),
        redis.len(DEAD)
    );
    let stored: Vec<String> = select(writer, "")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        stored.contains(&ids[0]) && stored.contains(&ids[2]),
        "{stored:?}"
    );
    let dead = &redis.entries(DEAD)[0];
    let reason = String::from_utf8_lossy(&dead["reason"]).into_owned();
    assert!(
        reason.contains(store_says),
        "the reason is the store's: {reason}"
    );
    let record: Value = serde_json::from_slice(&dead["record"]).unwrap();
    assert_eq!(record["id"], ids[1].as_str());
    assert_eq!(
        redis.len("auditgate:records"),
        0,
        "the stream is drained, not stuck behind the refused record"
    );

    // The writer goes on.
    let mut conn = redis.connection().unwrap();
    let _: String = redis::cmd("XADD")
        .arg("auditgate:records")
        .arg("*")
        .arg("record")
        .arg(serde_json::to_string(&record_after()).unwrap())
        .query(&mut conn)
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || writer.count() == 3));
    let log = std::fs::read_to_string(writer.dir.path().join("stderr.log")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains(store_says)).count(),
        1,
        "the store's error is logged once, with its detail:\n{log}"
    );
}

fn record_after() -> auditgate_rules::AuditRecord {
    record(4)
}

#[test]
fn a_record_postgres_refuses_is_dead_lettered_and_the_writer_goes_on() {
    let pg = PostgresServer::start();
    let redis = RedisServer::start();
    let writer = WriterProcess::start(&redis.url(), &pg.url(), "");
    pg.psql("ALTER TABLE records ADD CONSTRAINT no_evil_operations CHECK (operation <> 'evil')");
    a_refused_record_is_dead_lettered_with_the_store_error(&writer, &redis, "no_evil_operations");
}

#[test]
fn a_record_sqlite_refuses_is_dead_lettered_and_the_writer_goes_on() {
    let redis = RedisServer::start();
    let writer = WriterProcess::start(&redis.url(), "sqlite://audit.db", "");
    let db = rusqlite::Connection::open(writer.dir.path().join("audit.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER no_evil BEFORE INSERT ON records WHEN NEW.operation = 'evil'
         BEGIN SELECT RAISE(ABORT, 'evil operations are refused here'); END;",
    )
    .unwrap();
    drop(db);
    a_refused_record_is_dead_lettered_with_the_store_error(
        &writer,
        &redis,
        "evil operations are refused here",
    );
}
