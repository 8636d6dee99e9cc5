//! The example app (`examples/axum.rs`) as a process, with the real Redis queue: the calls a
//! user makes with curl become records in the stream.

use std::process::{Command, Stdio};
use std::time::Duration;

use auditgate_tests::{ChildGuard, RedisServer, http, wait_for_line, wait_until};

/// `target/debug/examples/axum`, built by `cargo test` before the tests run.
fn example_binary() -> std::path::PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("examples").join("axum")
}

#[test]
fn the_example_app_audits_into_redis() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().expect("tempdir");
    let mut app = ChildGuard(
        Command::new(example_binary())
            .args(["--listen", "127.0.0.1:0", "--redis", &redis.url()])
            .arg("--spool")
            .arg(spool.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the example (cargo test builds it)"),
    );
    let url = wait_for_line(&mut app.0, "listening on http://");
    let addr = url.as_str();
    let json = [
        ("Content-Type", "application/json"),
        ("X-User-Id", "u_alice"),
    ];

    let created = http(
        addr,
        "POST",
        "/v1/files",
        &json,
        br#"{"fileName":"tree.png","folder":"/forest"}"#,
    )
    .expect("upload");
    assert_eq!(created.status, 201);
    let id = created.json()["fileId"].as_str().expect("an id").to_owned();
    let renamed = http(
        addr,
        "PATCH",
        &format!("/v1/files/{id}/details"),
        &[
            ("Content-Type", "application/json"),
            ("X-User-Id", "u_alice"),
            ("X-Request-Id", "req-rename"),
        ],
        br#"{"name":"oak.png","filePath":"/forest/tree.png"}"#,
    )
    .expect("rename");
    assert_eq!(renamed.status, 200);
    assert_eq!(renamed.header("x-request-id"), Some("req-rename"));
    let listed = http(addr, "GET", "/v1/files", &[], b"").expect("list");
    assert_eq!(listed.status, 200);
    let gone = http(
        addr,
        "DELETE",
        "/v1/files/nope",
        &[("X-User-Id", "u_bob")],
        b"",
    )
    .expect("delete");
    assert_eq!(gone.status, 404);

    let stream = "auditgate:records";
    assert!(
        wait_until(Duration::from_secs(10), || redis.len(stream) >= 3),
        "records in the stream: {}",
        redis.len(stream)
    );
    let records = redis.records(stream);
    let ops: Vec<&str> = records.iter().map(|r| r.operation.as_str()).collect();
    assert_eq!(
        ops,
        ["asset.upload", "asset.rename", "asset.delete"],
        "the GET is not audited"
    );
    assert_eq!(records[0].resources[0].id.as_deref(), Some(id.as_str()));
    assert_eq!(
        records[0].resources[0].path.as_deref(),
        Some("/forest/tree.png")
    );
    assert_eq!(records[1].request.id, "req-rename");
    assert_eq!(records[1].details["new_name"], "oak.png");
    assert_eq!(
        records[1].actor.as_ref().and_then(|a| a.id.as_deref()),
        Some("u_alice")
    );
    assert_eq!(records[1].request.client_ip.as_deref(), Some("127.0.0.0"));
    assert_eq!(records[2].outcome, auditgate_rules::Outcome::Failure);
    assert_eq!(records[2].response.status, Some(404));
    assert_eq!(
        records[2].origin.as_ref().map(|o| o.kind.as_str()),
        Some("layer")
    );
}
