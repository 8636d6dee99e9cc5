//! Issue 13, item 7, against a real writer: a viewer token gets what a resource's history
//! needs and nothing else (no client address, user agent or details, only the asked
//! resource's entries, 403 outside `/history`); the page and its files answer under a strict
//! Content-Security-Policy, every answer with `nosniff`; `/healthz` does not tell anonymous
//! callers what the store said.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::time::Duration;

use auditgate_queue::{QueueConfig, RecordSink, RedisQueue};
use auditgate_rules::{AuditRecord, Resource};
use auditgate_tests::{
    ADMIN_TOKEN, HttpResponse, PostgresServer, RedisServer, VIEWER_TOKEN, WriterProcess, http,
    record, wait_until,
};
use chrono::Utc;
use serde_json::{Value, json};

/// Pushes records through the real producer.
async fn enqueue(redis: &RedisServer, records: &[AuditRecord]) {
    let spool = tempfile::tempdir().unwrap();
    let queue =
        RedisQueue::start(QueueConfig::new(redis.url()).spool(spool.path(), 1 << 24)).unwrap();
    for r in records {
        queue.enqueue(r.clone()).unwrap();
    }
    queue.shutdown().await;
}

/// File `f1` (`/forest/a.png`) renamed, then moved out of a folder (a record naming two
/// resources, with details), then another file renamed: oldest first.
fn fixture() -> Vec<AuditRecord> {
    let start = Utc::now() - chrono::Duration::hours(1);
    let f1 = Resource {
        kind: "file".into(),
        id: Some("f1".into()),
        path: Some("/forest/a.png".into()),
        previous_path: None,
    };
    let mut rename = record(1);
    rename.time = start;
    rename.resources = vec![f1.clone()];
    rename.description = Some("Renamed file f1 to a.png".into());

    let mut moved = record(2);
    moved.time = start + chrono::Duration::seconds(1);
    moved.operation = "asset.move".into();
    moved.request.path = "/v1/files/f1/move".into();
    moved.resources = vec![
        f1,
        Resource {
            kind: "folder".into(),
            id: Some("d9".into()),
            path: Some("/hidden/folder".into()),
            previous_path: None,
        },
    ];
    moved.description = Some("Moved file f1 out of /hidden/folder".into());
    moved
        .details
        .insert("reason".into(), "a reason only admins read".into());

    let mut other = record(3);
    other.time = start + chrono::Duration::seconds(2);
    other.request.path = "/v1/files/f2/details".into();
    other.resources = vec![Resource {
        kind: "file".into(),
        id: Some("f2".into()),
        path: Some("/forest/b.png".into()),
        previous_path: None,
    }];
    vec![rename, moved, other]
}

fn records_of(response: &HttpResponse) -> Vec<Value> {
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    response.json()["records"].as_array().unwrap().clone()
}

fn nosniff(response: &HttpResponse) -> bool {
    response.header("x-content-type-options") == Some("nosniff")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_only_the_asked_resource_in_its_history() {
    let redis = RedisServer::start();
    let all = fixture();
    enqueue(&redis, &all).await;
    let writer = WriterProcess::start(&redis.url(), "sqlite://audit.db", "");
    assert!(
        wait_until(Duration::from_secs(20), || writer.count() == 3),
        "stored {}",
        writer.count()
    );
    let (rename, moved) = (&all[0], &all[1]);
    let f1 = json!([{"type": "file", "id": "f1", "path": "/forest/a.png"}]);

    // By id and by path: the same two records, oldest first, cut down.
    for resource in ["f1", "/forest/a.png"] {
        let answer = writer.get_as(
            VIEWER_TOKEN,
            &format!("/api/v1/history?resource={resource}"),
        );
        assert!(nosniff(&answer), "{resource}: {:?}", answer.headers);
        let records = records_of(&answer);
        let ids: Vec<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            [rename.id.to_string(), moved.id.to_string()],
            "{resource}"
        );
        for r in &records {
            let request = r["request"].as_object().unwrap();
            for hidden in ["client_ip", "user_agent", "location"] {
                assert!(!request.contains_key(hidden), "{resource}: {hidden} in {r}");
            }
            for hidden in ["details", "origin", "changes"] {
                assert!(r.get(hidden).is_none(), "{resource}: {hidden} in {r}");
            }
            // Only the asked resource's entry: not the folder the file was moved out of.
            assert_eq!(r["resources"], f1, "{resource}: {r}");
            // What the page and `auditgate logs` show of a history is still there.
            assert!(r["request"]["id"].is_string() && r["response"]["status"] == 200);
            assert!(r["time"].is_string() && r["operation"].is_string());
            assert!(r["actor"]["id"].is_string() && r["outcome"] == "success");
        }
        // A description is kept where the record is about this resource alone: the move's
        // names the folder.
        assert_eq!(records[0]["description"], "Renamed file f1 to a.png");
        assert!(records[1].get("description").is_none(), "{}", records[1]);
        let body = String::from_utf8_lossy(&answer.body);
        for leak in [
            "203.0.113",
            "auditgate-tests",
            "new_name",
            "a reason only admins read",
            "/hidden/folder",
            "\"d9\"",
        ] {
            assert!(!body.contains(leak), "{resource}: {leak} in {body}");
        }
    }

    // An admin's history is the records as stored.
    let records = records_of(&writer.get("/api/v1/history?resource=f1"));
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["resources"].as_array().unwrap().len(), 2);
    assert_eq!(records[1]["request"]["client_ip"], "203.0.113.0");
    assert_eq!(records[1]["details"]["reason"], "a reason only admins read");
    assert_eq!(
        records[1]["description"],
        "Moved file f1 out of /hidden/folder"
    );

    // Outside `/history` a viewer gets 403, whatever it asks for.
    let one = format!("/api/v1/records/{}", moved.id);
    for path in [
        "/api/v1/records",
        "/api/v1/records?resource=f1",
        one.as_str(),
        "/api/v1/export",
        "/api/v1/export?resource=f1",
        "/api/v1/gaps",
        "/api/v1/operations",
    ] {
        let answer = writer.get_as(VIEWER_TOKEN, path);
        assert_eq!(answer.status, 403, "{path}");
        assert!(nosniff(&answer), "{path}: {:?}", answer.headers);
    }
    let stored = writer.get_as(ADMIN_TOKEN, &one);
    assert_eq!(stored.status, 200);
    assert_eq!(stored.json()["request"]["client_ip"], "203.0.113.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_the_api_answer_with_a_strict_policy() {
    let redis = RedisServer::start();
    let writer = WriterProcess::start(&redis.url(), "sqlite://audit.db", "");

    // The page: no token needed, a policy that allows its own files only.
    let page = http(&writer.addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} not in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert!(nosniff(&page));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));

    // Nothing in the page that such a policy would block: no inline script, style or handler.
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("<script src=\"/app.js\""), "{html}");
    assert!(html.contains("<link rel=\"stylesheet\" href=\"/app.css\">"));
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=").count(),
        "an inline script: {html}"
    );
    assert!(!html.contains("<style"), "an inline style sheet: {html}");
    assert!(
        !html.contains(" style="),
        "an inline style attribute: {html}"
    );
    for handler in [
        " onclick=",
        " onload=",
        " onsubmit=",
        " onchange=",
        " oninput=",
    ] {
        assert!(!html.contains(handler), "{handler} in {html}");
    }

    // Its files, with the types `nosniff` requires.
    for (path, content_type, holds) in [
        ("/app.js", "text/javascript", "addEventListener"),
        ("/app.css", "text/css", ".hidden"),
    ] {
        let file = http(&writer.addr, "GET", path, &[], b"").unwrap();
        assert_eq!(file.status, 200, "{path}");
        assert!(
            file.header("content-type")
                .unwrap()
                .starts_with(content_type),
            "{path}: {:?}",
            file.header("content-type")
        );
        assert!(nosniff(&file), "{path}");
        assert!(
            String::from_utf8_lossy(&file.body).contains(holds),
            "{path}"
        );
    }

    // Every other answer: `nosniff`, and a policy under which nothing loads or is framed.
    let answers = [
        ("/api/v1/records", writer.get("/api/v1/records")),
        (
            "/api/v1/records (no token)",
            http(&writer.addr, "GET", "/api/v1/records", &[], b"").unwrap(),
        ),
        (
            "/healthz",
            http(&writer.addr, "GET", "/healthz", &[], b"").unwrap(),
        ),
        (
            "/no-such-page",
            http(&writer.addr, "GET", "/no-such-page", &[], b"").unwrap(),
        ),
    ];
    for (label, answer) in &answers {
        assert!(nosniff(answer), "{label}: {:?}", answer.headers);
        let csp = answer.header("content-security-policy").unwrap_or("");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{label}: {csp:?}"
        );
    }
    assert_eq!(answers[0].1.status, 200);
    assert_eq!(answers[1].1.status, 401);
    assert_eq!(answers[3].1.status, 404);
}

// A writer pointed at a PostgreSQL URL nobody listens on does not start (the store is opened
// before the API is served), so the store is taken away under a running writer instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_does_not_tell_anonymous_callers_what_the_store_said() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let writer = WriterProcess::start(&redis.url(), &pg.url(), "");
    let health = || http(&writer.addr, "GET", "/healthz", &[], b"").unwrap();
    assert_eq!(health().status, 200);

    drop(pg); // `pg_ctl stop -m immediate`: the server is gone under the writer
    assert!(
        wait_until(Duration::from_secs(20), || health().status == 503),
        "healthz still answers {}",
        String::from_utf8_lossy(&health().body)
    );
    for _ in 0..5 {
        let answer = health();
        assert_eq!(answer.status, 503);
        assert_eq!(answer.json(), json!({"status": "unavailable"}));
        assert!(nosniff(&answer));
    }

    // The detail is in the writer's log instead, once per distinct error rather than once per
    // probe (the first probes may meet the server's goodbye before the closed connection).
    let log = std::fs::read_to_string(writer.dir.path().join("stderr.log")).unwrap();
    let logged = log.matches("healthz: the store does not answer").count();
    assert!((1..=2).contains(&logged), "logged {logged} times:\n{log}");
}
