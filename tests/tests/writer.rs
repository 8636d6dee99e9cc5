//! `auditgate writer` as a process with a real redis-server and real stores (an SQLite file,
//! a throwaway PostgreSQL server): filters, pages, history, export, auth, gaps, and a writer
//! killed mid-batch.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::collections::HashSet;
use std::time::Duration;

use auditgate_queue::{QueueConfig, RecordSink, RedisQueue};
use auditgate_rules::{Actor, AuditRecord, Origin, Outcome, Resource};
use auditgate_tests::{
    PostgresServer, RedisServer, VIEWER_TOKEN, WriterProcess, record, wait_until,
};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

/// Which fixture records a query should select.
type Keep = Box<dyn Fn(&AuditRecord) -> bool>;

const OPERATIONS: [&str; 4] = ["asset.rename", "asset.delete", "tag.add", "member.remove"];

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap()
}

/// Record `i` of the filter fixture: every attribute cycles so that each filter selects a
/// different, known subset.
fn fixture(i: u64) -> AuditRecord {
    let mut r = record(i);
    r.time = base_time() + chrono::Duration::seconds(i as i64);
    r.id = uuid::Uuid::now_v7();
    r.operation = OPERATIONS[i as usize % 4].to_owned();
    r.actor = Some(Actor {
        id: Some(format!("u_{}", i % 5)),
        source: "header.X-User-Id".into(),
    });
    r.outcome = if i.is_multiple_of(7) {
        Outcome::Failure
    } else {
        Outcome::Success
    };
    r.response.status = Some(if i.is_multiple_of(7) { 403 } else { 200 });
    r.request.id = format!("req-{i}");
    r.resources = vec![Resource {
        kind: "file".into(),
        id: Some(format!("f{}", i % 10)),
        path: Some(format!("/forest/f{}.png", i % 10)),
        previous_path: None,
    }];
    r
}

/// Pushes the fixture through the real producer; returns it newest first (the API's order).
async fn load_fixture(redis: &RedisServer, n: u64) -> Vec<AuditRecord> {
    let spool = tempfile::tempdir().unwrap();
    let queue = RedisQueue::start(
        QueueConfig::new(redis.url())
            .spool(spool.path(), 1 << 24)
            .instance("fixture"),
    )
    .unwrap();
    let mut all: Vec<AuditRecord> = (0..n).map(fixture).collect();
    for r in &all {
        queue.enqueue(r.clone()).unwrap();
    }
    queue.shutdown().await;
    all.reverse();
    all
}

fn ids_of(page: &Value) -> Vec<String> {
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn expect(all: &[AuditRecord], keep: impl Fn(&AuditRecord) -> bool) -> Vec<String> {
    all.iter()
        .filter(|r| keep(r))
        .map(|r| r.id.to_string())
        .collect()
}

/// Every page of a query, following `next_cursor`.
fn all_pages(writer: &WriterProcess, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let sep = if query.contains('?') { '&' } else { '?' };
        let page = writer.get(&format!("{query}{sep}limit=37{cursor}")).json();
        ids.extend(ids_of(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return ids,
        }
    }
}

async fn filters_pages_history_export_auth(store: &str) {
    let redis = RedisServer::start();
    let all = load_fixture(&redis, 300).await;
    let writer = WriterProcess::start(&redis.url(), store, "");
    assert!(
        wait_until(Duration::from_secs(20), || writer.count() == 300),
        "stored {}",
        writer.count()
    );

    // Newest first, and pages that neither repeat nor skip.
    assert_eq!(
        ids_of(&writer.get("/api/v1/records?limit=50").json()),
        expect(&all, |_| true)[..50]
    );
    assert_eq!(
        all_pages(&writer, "/api/v1/records"),
        expect(&all, |_| true)
    );

    let since = base_time() + chrono::Duration::seconds(100);
    let until = base_time() + chrono::Duration::seconds(200);
    let cases: Vec<(&str, Keep)> = vec![
        (
            "operation=asset.rename",
            Box::new(|r| r.operation == "asset.rename"),
        ),
        (
            "operation=asset.*",
            Box::new(|r| r.operation.starts_with("asset.")),
        ),
        (
            // Several operations at once, exact and prefix alike.
            "operation=asset.delete,%20member.*",
            Box::new(|r| r.operation == "asset.delete" || r.operation.starts_with("member.")),
        ),
        (
            "actor=u_3",
            Box::new(|r| r.actor.as_ref().unwrap().id.as_deref() == Some("u_3")),
        ),
        (
            "resource=f4",
            Box::new(|r| r.resources[0].id.as_deref() == Some("f4")),
        ),
        (
            "resource=/forest/f4.png",
            Box::new(|r| r.resources[0].id.as_deref() == Some("f4")),
        ),
        ("request_id=req-42", Box::new(|r| r.request.id == "req-42")),
        (
            "outcome=failure",
            Box::new(|r| r.outcome == Outcome::Failure),
        ),
        (
            "since=2026-11-20T00:01:40Z&until=2026-11-20T00:03:20Z",
            // Both ends inclusive: the records at 00:01:40 and at 00:03:20 are in.
            Box::new(move |r| r.time >= since && r.time <= until),
        ),
        (
            "operation=asset.*&actor=u_2&outcome=success&since=2026-11-20T00:01:40Z",
            Box::new(move |r| {
                r.operation.starts_with("asset.")
                    && r.actor.as_ref().unwrap().id.as_deref() == Some("u_2")
                    && r.outcome == Outcome::Success
                    && r.time >= since
            }),
        ),
        (
            "resource=f2&operation=tag.add",
            Box::new(|r| r.resources[0].id.as_deref() == Some("f2") && r.operation == "tag.add"),
        ),
    ];
    for (query, keep) in &cases {
        let expected = expect(&all, keep);
        assert!(!expected.is_empty(), "{query} selects something");
        assert_eq!(
            all_pages(&writer, &format!("/api/v1/records?{query}")),
            expected,
            "{query}"
        );
    }

    // One record; a resource's history, oldest first, for a viewer too.
    let one = &all[10];
    assert_eq!(
        writer.get(&format!("/api/v1/records/{}", one.id)).json()["request"]["id"],
        one.request.id.as_str()
    );
    assert_eq!(writer.get("/api/v1/records/nope").status, 404);
    let mut history = expect(&all, |r| {
        r.resources[0].path.as_deref() == Some("/forest/f3.png")
    });
    history.reverse();
    let page = writer
        .get_as(
            VIEWER_TOKEN,
            "/api/v1/history?resource=/forest/f3.png&limit=1000",
        )
        .json();
    assert_eq!(ids_of(&page), history);
    // The other filters narrow a history too.
    let page = writer
        .get_as(
            VIEWER_TOKEN,
            "/api/v1/history?resource=/forest/f3.png&outcome=failure&limit=1000",
        )
        .json();
    let mut failed = expect(&all, |r| {
        r.resources[0].path.as_deref() == Some("/forest/f3.png") && r.outcome == Outcome::Failure
    });
    failed.reverse();
    assert!(!failed.is_empty());
    assert_eq!(ids_of(&page), failed);

    // Auth: no token, a wrong one, a viewer outside history.
    let anon = auditgate_tests::http(&writer.addr, "GET", "/api/v1/records", &[], b"").unwrap();
    assert_eq!(anon.status, 401);
    assert_eq!(
        anon.header("www-authenticate"),
        Some("Bearer realm=\"auditgate\"")
    );
    assert_eq!(writer.get_as("wrong", "/api/v1/records").status, 401);
    assert_eq!(writer.get_as(VIEWER_TOKEN, "/api/v1/records").status, 403);
    assert_eq!(writer.get_as(VIEWER_TOKEN, "/api/v1/export").status, 403);
    // The scheme is case-insensitive; a token under another scheme is no token.
    let as_header = |value: &str| {
        auditgate_tests::http(
            &writer.addr,
            "GET",
            "/api/v1/records?limit=1",
            &[("Authorization", value)],
            b"",
        )
        .unwrap()
        .status
    };
    assert_eq!(
        as_header(&format!("bearer {}", auditgate_tests::ADMIN_TOKEN)),
        200
    );
    assert_eq!(
        as_header(&format!("Basic {}", auditgate_tests::ADMIN_TOKEN)),
        401
    );

    // Bad filters: 400 and what to write instead.
    for (query, says) in [
        ("since=yesterday", "RFC 3339"),
        ("limit=0", "from 1 to 1000"),
        ("outcome=maybe", "success, failure, error or aborted"),
        ("user=u_1", "unknown parameter \"user\""),
        ("cursor=zzz", "not a cursor"),
        ("operation=,%20,", "names no operation"),
    ] {
        let r = writer.get(&format!("/api/v1/records?{query}"));
        assert_eq!(r.status, 400, "{query}");
        assert!(
            r.json()["error"].as_str().unwrap().contains(says),
            "{query}: {}",
            r.json()
        );
    }

    // Export: exactly the filtered records, as one JSON array download.
    let export = writer.get("/api/v1/export?operation=asset.*&outcome=failure");
    assert_eq!(export.status, 200);
    assert!(
        export
            .header("content-disposition")
            .unwrap()
            .starts_with("attachment; filename=")
    );
    let exported: Vec<Value> = serde_json::from_slice(&export.body).unwrap();
    let exported: Vec<String> = exported
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let failed_assets = expect(&all, |r| {
        r.operation.starts_with("asset.") && r.outcome == Outcome::Failure
    });
    assert_eq!(exported, failed_assets);
    // A `/records` query string with its paging works as it is, and exports everything.
    let first = writer.get("/api/v1/records?operation=asset.*&outcome=failure&limit=2");
    let cursor = first.json()["next_cursor"].as_str().unwrap().to_owned();
    let export = writer.get(&format!(
        "/api/v1/export?operation=asset.*&outcome=failure&limit=2&cursor={cursor}"
    ));
    assert_eq!(export.status, 200);
    let exported: Vec<Value> = serde_json::from_slice(&export.body).unwrap();
    assert_eq!(exported.len(), failed_assets.len());
    // The same selection as CSV: a header, then one row per record, in the same order.
    let csv = writer.get("/api/v1/export?operation=asset.*&outcome=failure&format=csv");
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(
        csv.header("content-disposition")
            .unwrap()
            .ends_with(".csv\"")
    );
    let text = String::from_utf8(csv.body.clone()).unwrap();
    let mut lines = text.split_terminator("\r\n");
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("time,id,tenant,service,operation,")
    );
    let csv_ids: Vec<String> = lines
        .map(|row| row.split(',').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(csv_ids, failed_assets);
    let r = writer.get("/api/v1/export?format=xml");
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("json, csv, ocsf, ecs, cef or bundle")
    );

    // Who the page is signed in as.
    assert_eq!(
        writer.get("/api/v1/whoami").json(),
        serde_json::json!({"role": "admin", "tenant": null})
    );
    assert_eq!(
        writer.get_as(VIEWER_TOKEN, "/api/v1/whoami").json()["role"],
        "viewer"
    );

    // The operations the page's filter offers, and the page itself (no token needed for it).
    assert_eq!(
        writer.get("/api/v1/operations").json()["operations"],
        serde_json::json!(["asset.delete", "asset.rename", "member.remove", "tag.add"])
    );
    assert_eq!(
        writer.get_as(VIEWER_TOKEN, "/api/v1/operations").status,
        403
    );
    let page = auditgate_tests::http(&writer.addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = String::from_utf8_lossy(&page.body);
    for needle in [
        "<title>Audit log",
        "id=\"operation\"",
        "name=\"actor\"",
        "name=\"resource\"",
        "name=\"request_id\"",
        "name=\"since\"",
        "src=\"/app.js\"",
    ] {
        assert!(html.contains(needle), "the page has {needle}");
    }
    let script = auditgate_tests::http(&writer.addr, "GET", "/app.js", &[], b"").unwrap();
    assert_eq!(script.status, 200);
    assert!(
        String::from_utf8_lossy(&script.body).contains("/api/v1/export"),
        "the page's script downloads the export"
    );

    // Gaps: none for the fixture; a record lost between 1..=3 shows up. Then the producer
    // crashes after 6, and its next run (from 11) says its crashed run had numbers 5..=10:
    // the gaps in that range were left by the crash, the one before it was not.
    assert_eq!(
        writer.get("/api/v1/gaps").json()["gaps"],
        serde_json::json!([])
    );
    let mut conn = redis.connection().unwrap();
    let mut newest = None;
    for seq in [1u64, 2, 4, 6, 11, 12] {
        let mut r = record(seq);
        newest = Some(r.time);
        r.origin = Some(Origin {
            kind: "proxy".into(),
            instance: "gappy".into(),
            after_crash: (seq == 11).then_some(auditgate_rules::SeqRange { from: 5, to: 10 }),
            seq,
        });
        let _: String = redis::cmd("XADD")
            .arg("auditgate:records")
            .arg("*")
            .arg("record")
            .arg(serde_json::to_string(&r).unwrap())
            .query(&mut conn)
            .unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || writer.count() == 306));
    let last_seen = newest
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let gap = |from: u64, to: u64, crash: bool| {
        serde_json::json!({
            "instance": "gappy", "from": from, "to": to, "last_seen": last_seen,
            "left_by_crash": crash,
        })
    };
    assert_eq!(
        writer.get("/api/v1/gaps").json()["gaps"],
        serde_json::json!([gap(3, 3, false), gap(5, 5, true), gap(7, 10, true)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_filters_pages_history_export_and_auth() {
    filters_pages_history_export_auth("sqlite://audit.db").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_filters_pages_history_export_and_auth() {
    let pg = PostgresServer::start();
    filters_pages_history_export_auth(&pg.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_batch_and_restarted_stores_each_record_once() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let queue = RedisQueue::start(
        QueueConfig::new(redis.url())
            .spool(spool.path(), 1 << 28)
            .instance("load"),
    )
    .unwrap();
    let producer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            let mut sent = HashSet::new();
            for n in 0..30_000u64 {
                let r = record(n);
                sent.insert(r.id.to_string());
                queue.enqueue(r).unwrap();
                if n % 1000 == 0 {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            sent
        })
    };
    let mut writer =
        WriterProcess::start(&redis.url(), "sqlite://audit.db", "claim_idle_seconds: 2\n");
    assert!(wait_until(Duration::from_secs(20), || writer.count() > 5_000));
    writer.child.0.kill().unwrap(); // SIGKILL, in the middle of the stream
    writer.child.0.wait().unwrap();
    let sent = producer.join().unwrap();
    queue.shutdown().await;

    let dir = std::mem::replace(&mut writer.dir, tempfile::tempdir().unwrap());
    drop(writer);
    let writer = WriterProcess::start_in(
        dir,
        &redis.url(),
        "sqlite://audit.db",
        "claim_idle_seconds: 2\n",
    );
    assert!(
        wait_until(Duration::from_secs(60), || writer.count() >= 30_000),
        "stored {} of 30000",
        writer.count()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(writer.count(), 30_000, "each record exactly once");
    let exported: Vec<Value> = serde_json::from_slice(&writer.get("/api/v1/export").body).unwrap();
    let ids: HashSet<String> = exported
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 30_000);
    assert_eq!(ids, sent);
    assert_eq!(
        writer.get("/api/v1/gaps").json()["gaps"],
        serde_json::json!([])
    );
    // Redelivered duplicates may still be on their way through; they are acknowledged too.
    assert!(
        wait_until(Duration::from_secs(15), || redis.len("auditgate:records")
            == 0),
        "committed entries are deleted from the stream: {} left",
        redis.len("auditgate:records")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_started_before_redis_serves_its_store_and_drains_once_redis_is_up() {
    let mut redis = RedisServer::stopped_on(auditgate_tests::free_port());
    let writer = WriterProcess::start(&redis.url(), "sqlite://audit.db", "");
    // Up without Redis: the API answers from the (empty) store.
    let page = writer.get("/api/v1/records");
    assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
    assert_eq!(page.json()["records"], serde_json::json!([]));
    assert_eq!(
        auditgate_tests::http(&writer.addr, "GET", "/healthz", &[], b"")
            .unwrap()
            .status,
        200
    );

    redis.restart();
    let all = load_fixture(&redis, 40).await;
    assert!(
        wait_until(Duration::from_secs(20), || writer.count() == 40),
        "the writer stored {} of 40 once Redis was up",
        writer.count()
    );
    let page = writer.get("/api/v1/records?limit=100");
    assert_eq!(ids_of(&page.json()), expect(&all, |_| true));
}

/// Runs `auditgate writer` on `config` (written into `dir`), which must exit 1 at start; its
/// stderr.
fn writer_that_stops(dir: &std::path::Path, config: &str) -> String {
    let path = dir.join("writer.yaml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(auditgate_tests::workspace_bin("auditgate"))
        .args(["writer", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_writer_that_redis_refuses_stops_with_the_reason() {
    // A Redis that answers, but wants a password the config does not give.
    let port = auditgate_tests::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = auditgate_tests::ChildGuard(
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--requirepass", "s3cret"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let stderr = writer_that_stops(
        dir.path(),
        &format!(
            "redis: {{ url: \"redis://127.0.0.1:{port}\" }}\nstore: sqlite://audit.db\nlisten: 127.0.0.1:0\n"
        ),
    );
    assert!(
        stderr.contains("NOAUTH") || stderr.contains("uthentication"),
        "{stderr}"
    );
    redis.terminate();
}

/// The record ids of `auditgate logs --format ndjson` output, in order.
fn ndjson_ids(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditgate_logs_reads_what_the_api_answers() {
    let redis = RedisServer::start();
    let writer = WriterProcess::start(&redis.url(), "sqlite://audit.db", "");
    let all = load_fixture(&redis, 300).await;
    assert!(wait_until(Duration::from_secs(20), || writer.count() == 300));
    let logs = |token: &str, args: &[&str]| {
        std::process::Command::new(auditgate_tests::workspace_bin("auditgate"))
            .arg("logs")
            .args(["--server", &format!("http://{}", writer.addr)])
            .args(args)
            .env("AUDITGATE_TOKEN", token)
            .output()
            .unwrap()
    };
    let admin = auditgate_tests::ADMIN_TOKEN;

    // ndjson: one record a line, every page followed up to --limit.
    let out = logs(
        admin,
        &[
            "--operation",
            "asset.*",
            "--limit",
            "1000",
            "--format",
            "ndjson",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = ndjson_ids(&out);
    assert_eq!(ids, expect(&all, |r| r.operation.starts_with("asset.")));

    // The default is the newest 100, and stderr says that more match.
    let out = logs(admin, &["--format", "json"]);
    let page: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page.len(), 100);
    assert_eq!(page[0]["id"].as_str(), Some(all[0].id.to_string().as_str()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("more match"));

    // The table: a header, and a row per record with its request ID and outcome.
    let out = logs(admin, &["--request-id", "req-43"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("TIME"), "{table}");
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.contains("req-43") && row.contains("member.remove") && row.contains("success"),
        "{row}"
    );

    // A viewer reads a resource's history, oldest first, and nothing else.
    let out = logs(
        auditgate_tests::VIEWER_TOKEN,
        &["--history", "f3", "--format", "ndjson"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut history = expect(&all, |r| r.resources[0].id.as_deref() == Some("f3"));
    history.reverse();
    let got = ndjson_ids(&out);
    assert_eq!(got, history);
    let out = logs(auditgate_tests::VIEWER_TOKEN, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_writer_whose_sqlite_folder_is_missing_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = writer_that_stops(
        dir.path(),
        "redis: { url: \"redis://127.0.0.1:1\" }\nstore: sqlite://missing/audit.db\nlisten: 127.0.0.1:0\n",
    );
    assert!(
        stderr.contains("cannot open the SQLite file") && stderr.contains("missing does not exist"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("cannot open").count(), 1, "{stderr}");
}

/// A `closed` call's two records, as the store keeps them: the complete record replaces its
/// received one (same `id`), whichever of the two arrives first, in one batch or two; a
/// received record whose complete one never came stays, with outcome `unknown`.
async fn received_records_are_replaced_by_complete_ones(store: &str) {
    let redis = RedisServer::start();
    let writer = WriterProcess::start(&redis.url(), store, "");
    let received = |mut r: AuditRecord| {
        r.stage = Some(auditgate_rules::Stage::Received);
        r.outcome = Outcome::Unknown;
        r.response.status = None;
        r.details.clear();
        r
    };
    let add = |records: &[&AuditRecord]| {
        let mut conn = redis.connection().unwrap();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for r in records {
            pipe.cmd("XADD")
                .arg("auditgate:records")
                .arg("*")
                .arg("record")
                .arg(serde_json::to_string(r).unwrap())
                .ignore();
        }
        pipe.query::<()>(&mut conn).unwrap();
    };
    let (first, second, third, lone) = (record(1), record(2), record(3), record(4));
    add(&[&received(first.clone())]);
    assert!(wait_until(Duration::from_secs(10), || writer.count() == 1));
    add(&[&first]); // later, in a batch of its own
    add(&[&received(second.clone()), &second]); // both in one batch
    add(&[&third]);
    assert!(wait_until(Duration::from_secs(10), || writer.count() == 3));
    add(&[&received(third.clone())]); // the received one after the complete one
    add(&[&received(lone.clone())]); // never completed
    assert!(wait_until(Duration::from_secs(10), || writer.count() == 4));
    let get = |r: &AuditRecord| writer.get(&format!("/api/v1/records/{}", r.id)).json();
    for complete in [&first, &second, &third] {
        let stored = get(complete);
        assert_eq!(stored["outcome"], "success", "{store}: {stored}");
        assert!(stored.get("stage").is_none(), "{store}: {stored}");
        assert_eq!(stored["details"]["new_name"], complete.details["new_name"]);
    }
    let stored = get(&lone);
    assert_eq!(
        (stored["outcome"].as_str(), stored["stage"].as_str()),
        (Some("unknown"), Some("received"))
    );
    let unknown = writer.get("/api/v1/records?outcome=unknown").json();
    assert_eq!(unknown["records"].as_array().unwrap().len(), 1, "{store}");
    assert_eq!(redis.len("auditgate:records:dead"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_replaces_received_records_with_complete_ones() {
    received_records_are_replaced_by_complete_ones("sqlite://audit.db").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replaces_received_records_with_complete_ones() {
    let pg = PostgresServer::start();
    received_records_are_replaced_by_complete_ones(&pg.url()).await;
}
