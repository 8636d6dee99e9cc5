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
  actor: ["{jwt/sub}", "{header.X-User-Id}"]
rules:
  - operation: file.delete
    method: DELETE
    path: /v1/files/{fileId}
    resources: [{ type: file, id: "{path.fileId}" }]
  - operation: tag.add
    method: POST
    path: /v1/files/addTags
    when: { body: /fileIds }
    resources: [{ type: file, id: "{body/fileIds}" }]
    details: { tags: "{body/tags}" }
  - operation: secret.update
    method: PUT
    path: /api/repos/{*repo}/secrets/{key}
    resources: [{ type: secret, id: "{path.key}" }]
    on_queue_failure: closed
"#;

/// One call of an attack: method, target, headers, body.
type Attack<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>);

/// The records a filter selects, as the API answers an admin.
fn select(writer: &WriterProcess, query: &str) -> Vec<Value> {
    writer.select_as(auditgate_tests::ADMIN_TOKEN, query)
}

/// The one record a filter selects.
fn one(writer: &WriterProcess, query: &str) -> Value {
    let found = select(writer, query);
    assert_eq!(found.len(), 1, "{query}: {found:#?}");
    found[0].clone()
}

/// The ids of a record's resources.
fn resource_ids(record: &Value) -> Vec<&str> {
    record["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect()
}

/// Every attack of issue 13 on values and bodies, through the proxy into `store`: each call the
/// upstream applied is in the store, telling the truth about what could be read, and nothing is
/// dead-lettered.
///
/// - NUL in a resource id and a 3 000-byte actor: PostgreSQL refuses NUL in text and index rows
///   over 2 704 bytes, so either used to stop a PostgreSQL writer for good.
/// - A lower-case method, which permissive upstreams apply as the upper-case one.
/// - A bearer token the proxy rejects, beside an `X-User-Id` the same client wrote.
/// - A body with a byte-order mark, with a lone surrogate and `1e400`, a form, a body over the
///   capture limit (values before the cut, and a `when` whose pointer lies beyond it), and a
///   value nested 126 deep (two levels short of the writer's parser limit, before the record
///   adds its own).
fn hostile_calls_are_stored_truthfully(store: &str) {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let keys = tempfile::tempdir().unwrap();
    let secret = keys.path().join("jwt.secret");
    std::fs::write(&secret, "a shared secret of the test").unwrap();
    let proxy = ProxyProcess::start(
        &upstream.addr,
        &redis.url(),
        RULES,
        &format!(
            "capture_limit: 1024\njwt: {{ hs256_secret_file: {} }}\n",
            secret.display()
        ),
    );
    let writer = WriterProcess::start(&redis.url(), store, "");

    let long_actor = "x".repeat(3000);
    let json = ("Content-Type", "application/json");
    let user = |id: &'static str| ("X-User-Id", id);
    let deep = format!(
        "{{\"fileIds\":[\"deep\"],\"tags\":{}\"leaf\"{}}}",
        "[".repeat(126),
        "]".repeat(126)
    );
    let past_limit = format!(
        "{{\"fileIds\":[\"big1\",\"big2\"],\"tags\":[\"{}\"]}}",
        "t".repeat(2000)
    );
    let pointer_past_limit = format!(
        "{{\"tags\":[\"{}\"],\"fileIds\":[\"hidden\"]}}",
        "t".repeat(2000)
    );
    let calls: Vec<Attack<'_>> = vec![
        ("DELETE", "/v1/files/a%00b", vec![user("u_nul")], vec![]),
        (
            "DELETE",
            "/v1/files/abc",
            vec![("X-User-Id", &long_actor)],
            vec![],
        ),
        ("delete", "/v1/files/lower", vec![user("u_lower")], vec![]),
        (
            "DELETE",
            "/v1/files/forged",
            vec![("Authorization", "Bearer a.b.c"), user("alice")],
            vec![],
        ),
        (
            "POST",
            "/v1/files/addTags",
            vec![json, user("u_bom")],
            b"\xEF\xBB\xBF{\"fileIds\":[\"bom1\"],\"tags\":[\"t\"]}".to_vec(),
        ),
        (
            "POST",
            "/v1/files/addTags",
            vec![json, user("u_surrogate")],
            br#"{"fileIds":["sur\ud800"],"tags":[1e400]}"#.to_vec(),
        ),
        (
            "POST",
            "/v1/files/addTags",
            vec![
                ("Content-Type", "application/x-www-form-urlencoded"),
                user("u_form"),
            ],
            b"fileIds=form1&fileIds=form2&tags=red".to_vec(),
        ),
        (
            "POST",
            "/v1/files/addTags",
            vec![json, user("u_big")],
            past_limit.into_bytes(),
        ),
        (
            "POST",
            "/v1/files/addTags",
            vec![json, user("u_hidden")],
            pointer_past_limit.into_bytes(),
        ),
        (
            "POST",
            "/v1/files/addTags",
            vec![json, user("u_deep")],
            deep.into_bytes(),
        ),
        ("DELETE", "/v1/files/after", vec![user("u_after")], vec![]),
    ];
    let expected = calls.len() as u64;
    for (method, path, headers, body) in &calls {
        let answer = http(&proxy.addr, method, path, headers, body).unwrap();
        assert!(
            answer.status < 300,
            "{method} {path}: the upstream applies it ({})",
            answer.status
        );
    }
    assert!(
        wait_until(Duration::from_secs(15), || writer.count() == expected),
        "{store}: {} of {expected} records stored; writer log:\n{}",
        writer.count(),
        std::fs::read_to_string(writer.dir.path().join("stderr.log")).unwrap_or_default()
    );

    let nul = one(&writer, "resource=a%00b");
    assert_eq!(
        nul["resources"][0]["id"], "a\u{0}b",
        "kept whole in the JSON"
    );
    assert_eq!(nul["request"]["path"], "/v1/files/a%00b");

    let long = one(&writer, &format!("actor={long_actor}"));
    assert_eq!(long["actor"]["id"].as_str().unwrap().len(), 3000);
    assert!(
        select(&writer, &format!("actor={}", &long_actor[..2999])).is_empty(),
        "a value one byte shorter is another actor"
    );

    let lower = one(&writer, "resource=lower");
    assert_eq!(lower["operation"], "file.delete");
    assert_eq!(lower["request"]["method"], "delete", "the method as sent");

    let forged = one(&writer, "resource=forged");
    assert_eq!(
        forged["actor"],
        serde_json::json!({"id": null, "source": "jwt rejected: malformed"}),
        "the header beside a rejected token is not taken"
    );
    assert!(select(&writer, "actor=alice").is_empty());

    assert_eq!(
        one(&writer, "resource=bom1")["details"]["tags"],
        serde_json::json!(["t"])
    );
    let surrogate = one(&writer, "actor=u_surrogate");
    assert_eq!(resource_ids(&surrogate), ["sur\u{fffd}"]);
    assert_eq!(surrogate["details"]["tags"][0].to_string(), "1e+400");

    let form = one(&writer, "actor=u_form");
    assert_eq!(resource_ids(&form), ["form1", "form2"]);
    assert_eq!(form["details"]["tags"], "red");

    let big = one(&writer, "actor=u_big");
    assert_eq!(
        resource_ids(&big),
        ["big1", "big2"],
        "values before the cut are read"
    );
    assert_eq!(
        big["capture"],
        serde_json::json!({"request_body": "truncated"})
    );

    let hidden = one(&writer, "actor=u_hidden");
    assert_eq!(
        hidden["operation"], "tag.add",
        "a `when` that cannot be read still matches"
    );
    assert_eq!(
        hidden["capture"],
        serde_json::json!({"request_body": "truncated"})
    );

    let deep = one(&writer, "actor=u_deep");
    assert_eq!(resource_ids(&deep), ["deep"]);
    assert!(
        deep["details"]["tags"]
            .to_string()
            .contains("nested too deep"),
        "cut at capture, not at the writer"
    );

    assert_eq!(one(&writer, "actor=u_after")["operation"], "file.delete");
    assert_eq!(redis.len(DEAD), 0, "{store}: nothing is dead-lettered");
}

#[test]
fn hostile_calls_reach_a_sqlite_store_truthfully() {
    hostile_calls_are_stored_truthfully("sqlite://audit.db");
}

#[test]
fn hostile_calls_reach_a_postgres_store_truthfully() {
    let pg = PostgresServer::start();
    hostile_calls_are_stored_truthfully(&pg.url());
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

/// Targets and methods as the upstream reads them: a target that is not a path is refused
/// before it reaches the upstream; an absolute-form target is matched by its path; a
/// method-override header makes the call match as the method the upstream applies, and the
/// record says so.
#[test]
fn targets_and_method_overrides_are_matched_as_the_upstream_reads_them() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, "");
    // `ours`: refused by auditgate's check, which says why. pingora itself refuses CONNECT
    // and an absolute target whose authority is not the `Host`, before any filter runs.
    let foreign = format!("ftp://{}/v1/files/x", proxy.addr);
    for (method, target, ours) in [
        ("OPTIONS", "*", true),
        ("DELETE", "*", true),
        ("DELETE", foreign.as_str(), true),
        ("CONNECT", "upstream.example:443", false),
        ("DELETE", "ftp://host/v1/files/x", false),
    ] {
        let answer = http(&proxy.addr, method, target, &[], b"").unwrap();
        assert_eq!(answer.status, 400, "{method} {target} is refused");
        let says = String::from_utf8_lossy(&answer.body).contains("request target must be a path");
        assert_eq!(says, ours, "{method} {target}: who refused it");
    }

    // The authority agrees with `Host`, as HTTP/1.1 requires of a request to an origin.
    let absolute = http(
        &proxy.addr,
        "DELETE",
        &format!("http://{}/v1/files/absolute", proxy.addr),
        &[("X-User-Id", "u_abs")],
        b"",
    )
    .unwrap();
    assert_eq!(absolute.status, 200);
    let overridden = http(
        &proxy.addr,
        "POST",
        "/v1/files/overridden",
        &[("X-HTTP-Method-Override", "DELETE"), ("X-User-Id", "u_ovr")],
        b"",
    )
    .unwrap();
    assert!(overridden.status < 300);

    assert!(wait_until(Duration::from_secs(10), || redis
        .len("auditgate:records")
        == 2));
    let records = redis.records("auditgate:records");
    assert_eq!(records[0].request.path, "/v1/files/absolute");
    assert_eq!(records[0].operation, "file.delete");
    let r = &records[1];
    assert_eq!(
        r.operation, "file.delete",
        "matched as the overriding method"
    );
    assert_eq!(r.request.method, "DELETE");
    let how = r.request.method_override.as_ref().unwrap();
    assert_eq!(
        (how.header.as_str(), how.sent.as_str()),
        ("x-http-method-override", "POST")
    );
}

/// Stops the proxy with `signal` while Redis accepts connections but executes no write
/// (`CLIENT PAUSE … WRITE`: a fork, a failover, a partition that does not reset), after 20
/// audited calls were answered; then a new proxy starts on the same spool once Redis resumes.
/// Every record ends in the stream, once each, under one instance with no gap in its sequence:
/// what the stop could not send went to the spool, and nothing is lost or unreported.
fn a_stop_with_redis_paused_loses_nothing(signal: &str) {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let spool = tempfile::tempdir().unwrap();
    let extra = format!("spool: {{ dir: {} }}\n", spool.path().display());
    let mut proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, &extra);
    redis.pause_writes();
    for n in 0..20 {
        let path = format!("/v1/files/paused-{n}");
        let answer = http(&proxy.addr, "DELETE", &path, &[("X-User-Id", "u_p")], b"").unwrap();
        assert_eq!(
            answer.status, 200,
            "open rules keep serving while Redis stalls"
        );
    }
    let _ = std::process::Command::new("kill")
        .args([signal, &proxy.child.0.id().to_string()])
        .status();
    let status = proxy.child.0.wait().unwrap();
    assert!(status.success(), "{signal}: {status}\n{}", proxy.stderr());
    redis.resume_writes();

    let next = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, &extra);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let ids: std::collections::HashSet<_> = redis
                .records("auditgate:records")
                .iter()
                .map(|r| r.id)
                .collect();
            ids.len() == 20
        }),
        "{signal}: {} records in the stream\nfirst proxy:\n{}\nsecond proxy:\n{}",
        redis.len("auditgate:records"),
        proxy.stderr(),
        next.stderr()
    );
    let records = redis.records("auditgate:records");
    let mut seqs: Vec<u64> = records
        .iter()
        .map(|r| r.origin.as_ref().unwrap().seq)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs,
        (1..=20).collect::<Vec<_>>(),
        "{signal}: no gap, nothing lost"
    );
    let instances: std::collections::HashSet<_> = records
        .iter()
        .map(|r| r.origin.as_ref().unwrap().instance.clone())
        .collect();
    assert_eq!(instances.len(), 1);
    assert!(
        records
            .iter()
            .all(|r| r.origin.as_ref().unwrap().after_crash.is_none()),
        "{signal}: a clean stop, not a crash"
    );
}

#[test]
fn sigterm_with_redis_paused_loses_nothing() {
    a_stop_with_redis_paused_loses_nothing("-TERM");
}

#[test]
fn sigint_with_redis_paused_loses_nothing() {
    a_stop_with_redis_paused_loses_nothing("-INT");
}

/// The crash of issue 14: Redis stalls, 40 calls to an `open` rule are answered, the proxy is
/// killed with SIGKILL (an OOM kill, a node drain), Redis resumes and a new proxy starts on the
/// same spool. The records that were only in memory are lost — `open` allows that — but never
/// silently: the new proxy continues the same instance past the dead one's reserved numbers, so
/// every lost record lies inside a range `/api/v1/gaps` reports.
#[test]
fn records_lost_in_a_crash_lie_inside_a_reported_gap() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let writer = WriterProcess::start(&redis.url(), "sqlite://audit.db", "");
    let spool = tempfile::tempdir().unwrap();
    let extra = format!("spool: {{ dir: {} }}\n", spool.path().display());
    let mut proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, &extra);
    let call = |addr: &str, n: u32| {
        let path = format!("/v1/files/crash-{n}");
        let answer = http(addr, "DELETE", &path, &[("X-User-Id", "u_c")], b"").unwrap();
        assert_eq!(answer.status, 200);
    };
    call(&proxy.addr, 0);
    assert!(wait_until(Duration::from_secs(10), || writer.count() == 1));
    redis.pause_writes();
    for n in 1..=40 {
        call(&proxy.addr, n);
    }
    proxy.child.0.kill().unwrap(); // SIGKILL: nothing flushed
    proxy.child.0.wait().unwrap();
    redis.resume_writes();

    let next = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, &extra);
    call(&next.addr, 41);
    let stored = |w: &WriterProcess| {
        let page = w.get("/api/v1/records?limit=1000").json();
        page["records"].as_array().unwrap().clone()
    };
    assert!(wait_until(Duration::from_secs(15), || stored(&writer)
        .iter()
        .any(|r| r["resources"][0]["id"] == "crash-41")));
    // The crash has reached the writer: later records no longer announce it.
    call(&next.addr, 42);
    assert!(wait_until(Duration::from_secs(15), || stored(&writer)
        .iter()
        .any(|r| r["resources"][0]["id"] == "crash-42")));
    // Whatever the writer still receives from the dead proxy's paused pipeline, give it time.
    std::thread::sleep(Duration::from_secs(1));
    let records = stored(&writer);
    let instance = records[0]["origin"]["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        records
            .iter()
            .all(|r| r["origin"]["instance"] == instance.as_str()),
        "one instance across the crash"
    );
    let record_of = |id: &str| records.iter().find(|r| r["resources"][0]["id"] == id);
    let seq_of = |id: &str| record_of(id).map(|r| r["origin"]["seq"].as_u64().unwrap());
    let gaps = writer.get("/api/v1/gaps").json()["gaps"].clone();
    let in_a_gap = |seq: u64| {
        gaps.as_array().unwrap().iter().any(|g| {
            g["instance"] == instance.as_str()
                && g["from"].as_u64().unwrap() <= seq
                && seq <= g["to"].as_u64().unwrap()
                && g["left_by_crash"] == true
        })
    };
    let mut lost = 0;
    for n in 1..=40u32 {
        let id = format!("crash-{n}");
        // The n-th call of the dead proxy had seq n + 1 (the first call had seq 1).
        match seq_of(&id) {
            Some(seq) => assert_eq!(seq, u64::from(n) + 1),
            None => {
                lost += 1;
                assert!(
                    in_a_gap(u64::from(n) + 1),
                    "{id} is lost but in no gap: {gaps}"
                );
            }
        }
    }
    assert!(lost > 0, "the crash lost what was in memory");
    let after = seq_of("crash-41").unwrap();
    assert!(
        after > 41,
        "the new proxy continues past the dead one's numbers: {after}"
    );
    let announced = &record_of("crash-41").unwrap()["origin"]["after_crash"];
    assert_eq!(
        (announced["from"].as_u64(), announced["to"].as_u64()),
        (Some(1), Some(after - 1)),
        "the first record after the crash names the crashed run's numbers"
    );
    assert!(
        record_of("crash-42").unwrap()["origin"]
            .get("after_crash")
            .is_none(),
        "once acknowledged, the crash is not announced again"
    );
}

/// Issue 14's scenario for `closed` rules: Redis stalls, 40 concurrent calls to a `closed`
/// rule and 40 to an `open` one are all answered 2xx, the proxy is killed with SIGKILL, Redis
/// resumes and a new proxy starts on the same spool. Every `closed` call that got a 2xx is in
/// the store (its received record was on disk before the upstream was called; the complete one
/// died with the proxy, so it shows as outcome `unknown`), and every `open` record that is not
/// lies inside a range `/api/v1/gaps` reports as left by the crash.
#[test]
fn closed_calls_answered_2xx_survive_a_crash_with_redis_stalled() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let writer = WriterProcess::start(&redis.url(), "sqlite://audit.db", "");
    let spool = tempfile::tempdir().unwrap();
    // A generous bound, for a loaded test machine: half of it for Redis, then the spool.
    let extra = format!(
        "spool: {{ dir: {} }}\nclosed_timeout_ms: 4000\n",
        spool.path().display()
    );
    let mut proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, &extra);
    redis.pause_writes();
    let addr = proxy.addr.clone();
    let closed: Vec<_> = (0..40)
        .map(|n| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let path = format!("/api/repos/acme/site/secrets/key-{n}");
                http(&addr, "PUT", &path, &[("X-User-Id", "u_s")], b"")
                    .unwrap()
                    .status
            })
        })
        .collect();
    let closed: Vec<u16> = closed.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        closed.iter().all(|s| *s == 200),
        "closed calls are answered once their received record is on disk: {closed:?}"
    );
    for n in 0..40 {
        let path = format!("/v1/files/open-{n}");
        let answer = http(&proxy.addr, "DELETE", &path, &[("X-User-Id", "u_o")], b"").unwrap();
        assert_eq!(answer.status, 200);
    }
    proxy.child.0.kill().unwrap(); // SIGKILL
    proxy.child.0.wait().unwrap();
    redis.resume_writes();
    let next = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, &extra);

    let secrets = |w: &WriterProcess| {
        let page = w
            .get("/api/v1/records?operation=secret.update&limit=1000")
            .json();
        page["records"].as_array().unwrap().clone()
    };
    assert!(
        wait_until(Duration::from_secs(20), || secrets(&writer).len() == 40),
        "{} of the 40 closed calls are in the store; stream {}, dead {}, spool {:?}\nfirst:\n{}\nnext:\n{}",
        secrets(&writer).len(),
        redis.len("auditgate:records"),
        redis.len(DEAD),
        std::fs::read_dir(spool.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>(),
        proxy.stderr(),
        next.stderr()
    );
    for r in secrets(&writer) {
        assert!(
            r["outcome"] == "unknown" || r["outcome"] == "success",
            "a received record stays, outcome unknown, unless its complete one came: {r}"
        );
    }
    // The restarted proxy's first record tells the writer of the crash.
    let answer = http(&next.addr, "DELETE", "/v1/files/after", &[], b"").unwrap();
    assert_eq!(answer.status, 200);
    every_seq_is_stored_or_in_a_crash_gap(&writer);
}

/// The same crash for a service using the layer (the example axum app, `closed` `tag.add` and
/// `open` `tag.remove`): Redis stalls, calls of both kinds are answered 200, the service is
/// killed with SIGKILL and restarted on its spool. Every `closed` call is in the store, and
/// every `origin.seq` up to the highest stored is stored or inside a reported gap.
#[test]
fn a_layer_service_killed_with_redis_stalled_keeps_its_closed_calls() {
    let redis = RedisServer::start();
    let writer = WriterProcess::start(&redis.url(), "sqlite://audit.db", "");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        r#"
version: 1
service: media-library
defaults: { actor: ["{header.X-User-Id}"] }
rules:
  - operation: tag.add
    method: POST
    path: /v1/files/addTags
    resources: [{ type: file, id: "{body/fileIds}" }]
    on_queue_failure: closed
  - operation: tag.remove
    method: POST
    path: /v1/files/removeTags
    resources: [{ type: file, id: "{body/fileIds}" }]
"#,
    )
    .unwrap();
    let spool = dir.path().join("spool");
    let start = || {
        let mut child = std::process::Command::new(example_bin("axum"))
            .args(["--listen", "127.0.0.1:0", "--redis", &redis.url()])
            .arg("--rules")
            .arg(&rules)
            .arg("--spool")
            .arg(&spool)
            .args(["--closed-timeout-ms", "4000"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let addr = auditgate_tests::wait_for_line(&mut child, "listening on http://");
        (auditgate_tests::ChildGuard(child), addr)
    };
    let (mut service, addr) = start();
    let json = ("Content-Type", "application/json");
    let upload = http(
        &addr,
        "POST",
        "/v1/files",
        &[json],
        br#"{"fileName":"a.png","folder":"/x"}"#,
    )
    .unwrap();
    let file_id = upload.json()["fileId"].as_str().unwrap().to_owned();
    redis.pause_writes();
    let closed: Vec<_> = (0..20)
        .map(|n| {
            let (addr, file_id) = (addr.clone(), file_id.clone());
            std::thread::spawn(move || {
                let body = format!(r#"{{"fileIds":["{file_id}"],"tags":["t{n}"]}}"#);
                let headers = [("Content-Type", "application/json"), ("X-User-Id", "u_l")];
                http(
                    &addr,
                    "POST",
                    "/v1/files/addTags",
                    &headers,
                    body.as_bytes(),
                )
                .unwrap()
                .status
            })
        })
        .collect();
    let closed: Vec<u16> = closed.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(closed.iter().all(|s| *s == 200), "{closed:?}");
    // `tag.remove`, the `open` rule: the status the service answered.
    let remove_tag = |addr: &str, tag: &str| {
        let body = format!(r#"{{"fileIds":["{file_id}"],"tags":["{tag}"]}}"#);
        http(
            addr,
            "POST",
            "/v1/files/removeTags",
            &[json],
            body.as_bytes(),
        )
        .unwrap()
        .status
    };
    for n in 0..20 {
        assert_eq!(remove_tag(&addr, &format!("t{n}")), 200);
    }
    service.0.kill().unwrap(); // SIGKILL
    service.0.wait().unwrap();
    redis.resume_writes();
    let (_restarted, addr) = start();
    // The restarted example has forgotten the file (it kept it in memory): a 404, audited
    // all the same, and the first record to tell the writer of the crash.
    assert_eq!(remove_tag(&addr, "after"), 404);

    let added = || {
        writer
            .get("/api/v1/records?operation=tag.add&limit=1000")
            .json()["records"]
            .as_array()
            .unwrap()
            .len()
    };
    assert!(
        wait_until(Duration::from_secs(20), || added() == 20),
        "{} of the 20 closed calls are in the store",
        added()
    );
    every_seq_is_stored_or_in_a_crash_gap(&writer);
}

/// A binary of a workspace example (`target/<profile>/examples/NAME`), which `cargo test`
/// builds with the tests.
fn example_bin(name: &str) -> std::path::PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (which builds the examples)",
        path.display()
    );
    path
}

/// Every `origin.seq` up to the highest the writer stores is stored, or inside a range
/// `/api/v1/gaps` reports as left by a crash: nothing lost silently. Waits until the
/// restarted producer's record is stored, and a moment more for anything still on its way (a
/// paused pipeline of a dead producer that Redis ran after all).
fn every_seq_is_stored_or_in_a_crash_gap(writer: &WriterProcess) {
    assert!(
        wait_until(Duration::from_secs(15), || {
            writer.get("/api/v1/records?limit=1000").json()["records"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["origin"].get("after_crash").is_some())
        }),
        "the restarted producer announced the crash"
    );
    std::thread::sleep(Duration::from_secs(1));
    let all = writer.get("/api/v1/records?limit=1000").json()["records"]
        .as_array()
        .unwrap()
        .clone();
    let gaps = writer.get("/api/v1/gaps").json()["gaps"].clone();
    let stored: std::collections::HashSet<u64> = all
        .iter()
        .map(|r| r["origin"]["seq"].as_u64().unwrap())
        .collect();
    for seq in 1..=stored.iter().copied().max().unwrap() {
        let in_a_gap = gaps
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["from"].as_u64().unwrap() <= seq && seq <= g["to"].as_u64().unwrap());
        assert!(
            stored.contains(&seq) || in_a_gap,
            "origin.seq {seq} is neither stored nor in a gap: {gaps}"
        );
    }
    for gap in gaps.as_array().unwrap() {
        assert_eq!(gap["left_by_crash"], true, "{gap}");
    }
}
