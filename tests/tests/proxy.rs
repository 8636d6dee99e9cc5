//! `auditgate proxy` as a process between a client and the example upstream, with a real
//! redis-server: what the client gets, what the upstream sees, and the records in the stream.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::collections::HashSet;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use auditgate_rules::{AuditRecord, Outcome};
use auditgate_tests::{
    ChildGuard, ProxyProcess, RedisServer, UpstreamProcess, free_port, http, wait_until,
    workspace_bin,
};

const STREAM: &str = "auditgate:records";

const RULES: &str = r#"
version: 1
service: media-library
defaults:
  actor: ["{jwt/sub}", "{header.X-User-Id}"]
rules:
  - operation: asset.upload
    method: POST
    path: /v1/files
    resources: [{ type: file, id: "{response/fileId}", path: "{response/filePath}" }]
    details: { name: "{body/fileName}" }
  - operation: member.remove
    method: DELETE
    path: /api/orgs/{org}/members/{user}
    resources: [{ type: user, id: "{path.user}" }]
  - operation: slow.call
    method: POST
    path: /slow
  - operation: bulk.upload
    method: POST
    path: /upload
    details: { size: "{body/size}" }
  - operation: export.download
    method: POST
    path: /stream
  - operation: echo.call
    method: POST
    path: /echo
"#;

fn records(redis: &RedisServer, at_least: usize) -> Vec<AuditRecord> {
    assert!(
        wait_until(Duration::from_secs(10), || redis.len(STREAM) >= at_least),
        "expected {at_least} records, the stream has {}",
        redis.len(STREAM)
    );
    redis.records(STREAM)
}

#[test]
fn every_outcome_becomes_a_record() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let proxy = ProxyProcess::start(
        &upstream.addr,
        &redis.url(),
        RULES,
        "timeouts: { read_ms: 300 }\n",
    );
    let json = ("Content-Type", "application/json");

    // success, with the resource read from the upstream's response
    let ok = http(
        &proxy.addr,
        "POST",
        "/v1/files",
        &[json, ("X-User-Id", "u_1")],
        br#"{"fileName":"tree.png","folder":"/forest"}"#,
    )
    .unwrap();
    assert_eq!(ok.status, 201);
    // failure: the upstream refused
    let refused = http(
        &proxy.addr,
        "DELETE",
        "/api/orgs/acme/members/owner",
        &[("X-User-Id", "u_2")],
        b"",
    )
    .unwrap();
    assert_eq!(refused.status, 403);
    // error: the upstream did not answer in time
    let timeout = http(&proxy.addr, "POST", "/slow?ms=3000", &[], b"").unwrap();
    assert_eq!(timeout.status, 504);

    let got = records(&redis, 3);
    assert_eq!(got[0].operation, "asset.upload");
    assert_eq!(got[0].outcome, Outcome::Success);
    assert_eq!(got[0].response.status, Some(201));
    assert_eq!(
        got[0].resources[0].id.as_deref(),
        ok.json()["fileId"].as_str()
    );
    assert_eq!(
        got[0].resources[0].path.as_deref(),
        Some("/forest/tree.png")
    );
    assert_eq!(got[0].details["name"], "tree.png");
    assert_eq!(got[0].actor.as_ref().unwrap().id.as_deref(), Some("u_1"));
    assert_eq!(got[0].request.client_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(got[0].origin.as_ref().unwrap().kind, "proxy");
    assert_eq!(got[1].operation, "member.remove");
    assert_eq!(got[1].outcome, Outcome::Failure);
    assert_eq!(got[1].response.status, Some(403));
    assert_eq!(got[2].operation, "slow.call");
    assert_eq!(got[2].outcome, Outcome::Error);
    assert_eq!(got[2].response.status, Some(504));
}

#[test]
fn a_compressed_answer_passes_unchanged_and_its_fields_are_recorded() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, "");
    let created = http(
        &proxy.addr,
        "POST",
        "/v1/files",
        &[
            ("Content-Type", "application/json"),
            ("Accept-Encoding", "br;q=0.5, gzip"),
            ("X-User-Id", "u_1"),
        ],
        br#"{"fileName":"oak.png","folder":"/forest"}"#,
    )
    .unwrap();
    assert_eq!(created.status, 201);
    // The client gets the upstream's gzip, as it asked.
    assert_eq!(created.header("content-encoding"), Some("gzip"));
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&created.body[..])
        .read_to_end(&mut json)
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&json).unwrap();

    // A client that takes zstd (as browsers do) gets zstd, which is read as well.
    let created = http(
        &proxy.addr,
        "POST",
        "/v1/files",
        &[
            ("Content-Type", "application/json"),
            ("Accept-Encoding", "gzip, deflate, br, zstd"),
            ("X-User-Id", "u_1"),
        ],
        br#"{"fileName":"elm.png","folder":"/forest"}"#,
    )
    .unwrap();
    assert_eq!(created.status, 201);
    assert_eq!(created.header("content-encoding"), Some("zstd"));
    let mut json = Vec::new();
    ruzstd::decoding::StreamingDecoder::new(&created.body[..])
        .unwrap()
        .read_to_end(&mut json)
        .unwrap();
    let zstd_answer: serde_json::Value = serde_json::from_slice(&json).unwrap();

    let got = records(&redis, 2);
    assert_eq!(got[0].operation, "asset.upload");
    assert_eq!(got[0].resources[0].id.as_deref(), answer["fileId"].as_str());
    assert_eq!(got[0].resources[0].path.as_deref(), Some("/forest/oak.png"));
    assert_eq!(
        got[1].resources[0].id.as_deref(),
        zstd_answer["fileId"].as_str()
    );
    assert_eq!(got[1].resources[0].path.as_deref(), Some("/forest/elm.png"));
}

/// Reads one HTTP/1.1 request with a `Content-Length` body; `None` at end of stream.
fn read_request(stream: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

#[test]
fn a_request_retried_on_a_fresh_connection_is_recorded_once_with_its_body() {
    // An upstream that answers the first request on each connection and hangs up on the
    // second, as a server whose idle timeout is shorter than the proxy's does: pingora sends
    // the second request on its pooled connection, finds it closed, and retries it (PUT is
    // idempotent) on a new one, passing the body through the body filter again.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                if read_request(&mut stream).is_some() {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                          Content-Length: 11\r\n\r\n{\"ok\":true}",
                    );
                    // The next request on this connection gets no answer.
                    let _ = read_request(&mut stream);
                }
            });
        }
    });
    let rules = "version: 1\nservice: s\nrules:\n  - operation: item.put\n    method: PUT\n    \
                 path: /items/{id}\n    details: { name: \"{body/name}\" }\n";
    let redis = RedisServer::start();
    let proxy = ProxyProcess::start(&upstream, &redis.url(), rules, "");
    for name in ["first", "second", "third"] {
        let body = format!(r#"{{"name":"{name}"}}"#);
        let response = http(&proxy.addr, "PUT", "/items/a", &[], body.as_bytes()).unwrap();
        assert_eq!(response.status, 200, "{name}");
    }
    let got = records(&redis, 3);
    let names: Vec<Option<&str>> = got
        .iter()
        .map(|r| r.details.get("name").and_then(|v| v.as_str()))
        .collect();
    assert_eq!(names, [Some("first"), Some("second"), Some("third")]);
    assert!(got.iter().all(|r| r.outcome == Outcome::Success));
}

#[test]
fn an_unreachable_upstream_is_a_502_and_an_error_record() {
    let redis = RedisServer::start();
    let dead = format!("127.0.0.1:{}", free_port());
    let proxy = ProxyProcess::start(&dead, &redis.url(), RULES, "");
    let r = http(
        &proxy.addr,
        "DELETE",
        "/api/orgs/acme/members/bob",
        &[("X-Request-Id", "req-502")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-request-id"), Some("req-502"));
    // The proxy does not reuse a connection after an error, and says so to a client that
    // asked to keep it.
    let mut keep = std::net::TcpStream::connect(&proxy.addr).unwrap();
    keep.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    keep.write_all(b"DELETE /api/orgs/acme/members/bob HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    keep.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 502"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    let got = records(&redis, 2);
    assert_eq!(got[0].outcome, Outcome::Error);
    assert_eq!(got[0].response.status, Some(502));
    assert_eq!(got[0].request.id, "req-502");
    // One request, no log line per request: errors are counted, warned about rarely.
    let metrics = http(&proxy.metrics_addr, "GET", "/metrics", &[], b"").unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("auditgate_proxy_errors_total{source=\"upstream\""),
        "{text}"
    );
}

#[test]
fn a_client_that_hangs_up_is_an_aborted_record() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, "");
    let mut client = std::net::TcpStream::connect(&proxy.addr).unwrap();
    client
        .write_all(b"POST /stream?chunks=200&size=1024&delay_ms=20 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 64];
    let n = client.read(&mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    drop(client);
    let got = records(&redis, 1);
    assert_eq!(got[0].operation, "export.download");
    assert_eq!(got[0].outcome, Outcome::Aborted);
    assert_eq!(got[0].response.status, Some(200));
}

#[test]
fn the_request_id_goes_upstream_and_back_and_unmatched_calls_are_untouched() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, "");

    let sent = http(
        &proxy.addr,
        "POST",
        "/echo",
        &[("X-Request-Id", "req-7")],
        b"",
    )
    .unwrap();
    assert_eq!(sent.header("x-request-id"), Some("req-7"));
    let seen = sent.json();
    assert_eq!(
        seen["headers"]["x-request-id"], "req-7",
        "the upstream got it"
    );
    assert_eq!(
        seen["headers"]["host"],
        upstream.addr.as_str(),
        "Host is the upstream's"
    );
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    // Forwarded-for lines from hops in front are kept, in order, before this one.
    let hops = http(
        &proxy.addr,
        "POST",
        "/echo",
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-For", ""),
            ("X-Forwarded-For", "198.51.100.7, 10.0.0.2"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(
        hops.json()["headers"]["x-forwarded-for"],
        "203.0.113.9, 198.51.100.7, 10.0.0.2, 127.0.0.1"
    );

    // A redirect to the upstream's own address stays on the proxy.
    let moved = http(&proxy.addr, "GET", "/redirect?to=/v1/files/f9", &[], b"").unwrap();
    assert_eq!(moved.status, 302);
    assert_eq!(moved.header("location"), Some("/v1/files/f9"));
    // Never made into `//host`, which would send the client to another host.
    let away = http(&proxy.addr, "GET", "/redirect?to=//evil.example/", &[], b"").unwrap();
    let absolute = format!("http://{}//evil.example/", upstream.addr);
    assert_eq!(away.header("location"), Some(absolute.as_str()));

    let made = http(&proxy.addr, "POST", "/echo", &[], b"").unwrap();
    let generated = made
        .header("x-request-id")
        .expect("an id was generated")
        .to_owned();
    assert_eq!(made.json()["headers"]["x-request-id"], generated.as_str());
    assert_eq!(
        uuid::Uuid::parse_str(&generated).unwrap().get_version_num(),
        7
    );

    // An unmatched GET passes as it came: no request ID, no record.
    let plain = http(&proxy.addr, "GET", "/echo", &[("X-Custom", "1")], b"").unwrap();
    assert_eq!(plain.status, 200);
    assert!(plain.header("x-request-id").is_none());
    assert!(plain.json()["headers"].get("x-request-id").is_none());
    assert_eq!(plain.json()["headers"]["x-custom"], "1");

    let got = records(&redis, 3);
    assert_eq!(got.len(), 3, "the GET made no record");
    assert_eq!(got[0].request.id, "req-7");
    assert_eq!(got[2].request.id, generated);
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn large_bodies_stream_through_both_ways_with_flat_memory() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, "");
    let before = peak_rss_kib(proxy.child.0.id());

    // 256 MiB up, written in 1 MiB pieces with chunked encoding.
    let mut client = std::net::TcpStream::connect(&proxy.addr).unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    let piece = vec![b'x'; 1 << 20];
    let mut checksum = 0u64;
    for _ in 0..256 {
        client
            .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .unwrap();
        client.write_all(&piece).unwrap();
        client.write_all(b"\r\n").unwrap();
        checksum = piece
            .iter()
            .fold(checksum, |h, &b| h.wrapping_mul(31).wrapping_add(b as u64));
    }
    client.write_all(b"0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(&format!("\"length\":{}", 256u64 << 20)),
        "{text}"
    );
    assert!(text.contains(&format!("\"checksum\":{checksum}")), "{text}");

    // 256 MiB down.
    let down = http(
        &proxy.addr,
        "POST",
        "/stream?chunks=4096&size=65536",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(down.body.len(), 256 << 20);

    let after = peak_rss_kib(proxy.child.0.id());
    assert!(
        after - before < 64 * 1024,
        "512 MiB passed through; peak memory grew by {} KiB",
        after - before
    );
    let got = records(&redis, 2);
    assert_eq!(got[0].operation, "bulk.upload");
    assert_eq!(got[0].outcome, Outcome::Success);
    assert!(
        got[0].details.get("size").is_none(),
        "a body over the capture limit is not read"
    );
    assert_eq!(got[1].operation, "export.download");
}

#[test]
fn rules_reload_on_change_and_a_bad_set_is_rejected() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, "");
    let rules_file = proxy.dir.path().join("rules.yaml");

    // A new rule: recorded once the file has been seen again.
    let with_tags =
        format!("{RULES}  - operation: tag.add\n    method: POST\n    path: /v1/files/addTags\n");
    std::fs::write(&rules_file, &with_tags).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        http(&proxy.addr, "POST", "/v1/files/addTags", &[], b"{}").unwrap();
        redis
            .records(STREAM)
            .iter()
            .any(|r| r.operation == "tag.add")
    }));

    // A broken file: rejected with its place, the previous set still works.
    std::fs::write(
        &rules_file,
        format!("{with_tags}  - operation: x\n    methd: POST\n    path: /x\n"),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || proxy
        .stderr()
        .contains("rules not reloaded")));
    let log = proxy.stderr();
    let line = with_tags.lines().count() + 2;
    assert!(
        log.contains(&format!("rules.yaml:{line}:5: unknown key \"methd\"")),
        "{log}"
    );
    let before = redis.len(STREAM);
    http(&proxy.addr, "POST", "/v1/files/addTags", &[], b"{}").unwrap();
    assert!(wait_until(Duration::from_secs(5), || redis.len(STREAM) == before + 1));

    // SIGHUP reloads too: the fixed file, with one rule fewer.
    std::fs::write(&rules_file, RULES).unwrap();
    Command::new("kill")
        .args(["-HUP", &proxy.child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || proxy
        .stderr()
        .matches("rules reloaded")
        .count()
        >= 2));
    let before = redis.len(STREAM);
    http(&proxy.addr, "POST", "/v1/files/addTags", &[], b"{}").unwrap();
    http(&proxy.addr, "POST", "/echo", &[], b"").unwrap();
    assert!(wait_until(Duration::from_secs(5), || redis.len(STREAM) == before + 1));
    assert_eq!(redis.records(STREAM).last().unwrap().operation, "echo.call");
}

#[test]
fn a_bad_rule_file_stops_the_proxy_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "version: 1\nservice: s\nrules:\n  - operation: a\n    method: DELET\n    path: /x\n",
    )
    .unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("proxy.yaml"),
        format!("listen: 127.0.0.1:{port}\nupstream: http://127.0.0.1:1\nrules: [rules.yaml]\nredis: {{ url: \"redis://127.0.0.1:1\" }}\nspool: {{ dir: spool }}\n"),
    )
    .unwrap();
    let out = Command::new(workspace_bin("auditgate"))
        .args(["proxy", "--config"])
        .arg(dir.path().join("proxy.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rules.yaml:5:13: unknown method \"DELET\""),
        "{err}"
    );
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err());

    std::fs::write(
        dir.path().join("proxy.yaml"),
        "listen: 127.0.0.1:1\nupstrem: x\n",
    )
    .unwrap();
    let out = Command::new(workspace_bin("auditgate"))
        .args(["proxy", "--config"])
        .arg(dir.path().join("proxy.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("proxy.yaml:2:1: unknown field `upstrem`"),
        "{err}"
    );
}

#[test]
fn closed_rules_refuse_with_503_when_records_cannot_be_kept() {
    let upstream = UpstreamProcess::start();
    let dead_redis = format!("redis://127.0.0.1:{}", free_port());
    let rules = format!(
        "{RULES}  - operation: secret.update\n    method: PUT\n    path: /api/repos/{{*repo}}/secrets/{{key}}\n    on_queue_failure: closed\n"
    );
    // Redis away and a spool too small for one record: nothing can be kept.
    let proxy = ProxyProcess::start(
        &upstream.addr,
        &dead_redis,
        &rules,
        "spool: { dir: spool, max_bytes: 100 }\n",
    );
    let r = http(
        &proxy.addr,
        "PUT",
        "/api/repos/acme/site/secrets/TOKEN",
        &[("X-Request-Id", "req-s")],
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "audit_unavailable");
    assert_eq!(r.header("x-request-id"), Some("req-s"));
    // Open rules keep serving: their record waits in the bounded buffer for Redis.
    let open = http(&proxy.addr, "POST", "/echo", &[], b"").unwrap();
    assert_eq!(open.status, 200);
    assert_eq!(proxy.health()["redis_up"], false);
    let metrics = http(&proxy.metrics_addr, "GET", "/metrics", &[], b"").unwrap();
    assert!(String::from_utf8_lossy(&metrics.body).contains("auditgate_proxy_refused_total 1"));
}

/// The spool on a tiny tmpfs, Redis away: once the disk is full a `closed` call is answered
/// 503 (its received record cannot be put on disk), and once space is freed it is served
/// again, its record on disk before the upstream acts.
#[test]
fn a_closed_rule_refuses_while_the_spool_disk_is_full_and_serves_once_freed() {
    let Some(disk) = auditgate_tests::Tmpfs::mount("256k") else {
        eprintln!(
            "SKIPPED a_closed_rule_refuses_while_the_spool_disk_is_full: cannot mount a tmpfs here"
        );
        return;
    };
    let upstream = UpstreamProcess::start();
    let dead_redis = format!("redis://127.0.0.1:{}", free_port());
    let rules = format!(
        "{RULES}  - operation: secret.update\n    method: PUT\n    path: /api/repos/{{*repo}}/secrets/{{key}}\n    on_queue_failure: closed\n"
    );
    let extra = format!(
        "spool: {{ dir: {} }}\nclosed_timeout_ms: 1000\n",
        disk.path().join("spool").display()
    );
    let proxy = ProxyProcess::start(&upstream.addr, &dead_redis, &rules, &extra);
    let put = |key: &str| {
        let path = format!("/api/repos/acme/site/secrets/{key}");
        http(&proxy.addr, "PUT", &path, &[], b"{}").unwrap()
    };
    assert_eq!(put("before").status, 200, "room on the disk: served");

    let filler = disk.fill();
    // The segment's last page may still hold a record or two (tmpfs allocates whole pages):
    // those are on disk, and served. The first that needs a new page is refused.
    let mut answers = Vec::new();
    while answers.len() < 40 && answers.last() != Some(&503) {
        answers.push(put(&format!("full-{}", answers.len())).status);
    }
    assert_eq!(
        answers.last(),
        Some(&503),
        "{answers:?}\n{}",
        proxy.stderr()
    );
    assert!(answers.iter().all(|s| *s == 200 || *s == 503));
    let refused = put("still-full");
    assert_eq!(refused.status, 503, "the disk is still full");
    assert_eq!(refused.json()["error"], "audit_unavailable");
    let served = answers.iter().filter(|s| **s == 200).count();

    std::fs::remove_file(&filler).unwrap();
    // The spool tries the disk again a second after it refused a write.
    assert!(
        wait_until(Duration::from_secs(10), || put("freed").status == 200),
        "space freed: closed calls are served again\n{}",
        proxy.stderr()
    );
    let spooled: usize = std::fs::read_dir(disk.path().join("spool"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .matches(r#""stage":"received""#)
                .count()
        })
        .sum();
    assert_eq!(
        spooled,
        served + 2,
        "every served call's received record is in the spool"
    );
}

/// Sends audited requests from `threads` threads until `stop`; returns the request IDs of
/// those that got a complete response.
fn load(
    addr: String,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<HashSet<String>> {
    std::thread::spawn(move || {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (addr, stop) = (addr.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut done = HashSet::new();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let id = format!("load-{t}-{n}");
                        if let Ok(r) = http(&addr, "POST", "/echo", &[("X-Request-Id", &id)], b"")
                            && r.status == 200
                        {
                            done.insert(id);
                        }
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

#[test]
fn sigterm_under_load_loses_no_record() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let mut proxy = ProxyProcess::start(
        &upstream.addr,
        &redis.url(),
        RULES,
        "grace_period_seconds: 3\n",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(proxy.addr.clone(), 4, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let status = proxy.child.terminate();
    stop.store(true, Ordering::Relaxed);
    let completed = clients.join().unwrap();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        proxy.stderr()
    );
    assert!(
        completed.len() > 100,
        "only {} requests completed",
        completed.len()
    );
    let stored: HashSet<String> = redis
        .records(STREAM)
        .into_iter()
        .map(|r| r.request.id)
        .collect();
    let missing: Vec<_> = completed.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} of {} records missing",
        missing.len(),
        completed.len()
    );
    let spool = proxy.dir.path().join("spool");
    // Segments (`.seg`) beyond their 8-byte header; `ORIGIN` names the producer.
    let left: u64 = std::fs::read_dir(&spool)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.len() > 8)
        .map(|m| m.len())
        .sum();
    assert_eq!(left, 0, "nothing was left in the spool");
}

#[test]
fn redis_restarted_under_load_loses_no_record() {
    let mut redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, "");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(proxy.addr.clone(), 4, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    redis.kill();
    std::thread::sleep(Duration::from_secs(3));
    redis.restart();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let completed = clients.join().unwrap();
    assert!(
        completed.len() > 100,
        "only {} requests completed",
        completed.len()
    );
    let all_there = wait_until(Duration::from_secs(20), || {
        let stored: HashSet<String> = redis
            .records(STREAM)
            .into_iter()
            .map(|r| r.request.id)
            .collect();
        completed.is_subset(&stored)
    });
    let health = proxy.health();
    assert!(
        all_there,
        "records missing after the restart; health {health}"
    );
    assert_eq!(health["dropped"], 0);
}

/// An ES256 signing key and its public JWK.
struct TokenKey {
    kid: &'static str,
    pair: ring::signature::EcdsaKeyPair,
}

impl TokenKey {
    fn new(kid: &'static str) -> TokenKey {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING as ALG, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ALG, &rng).unwrap();
        TokenKey {
            kid,
            pair: EcdsaKeyPair::from_pkcs8(&ALG, pkcs8.as_ref(), &rng).unwrap(),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        use base64::Engine as _;
        use ring::signature::KeyPair as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let point = self.pair.public_key().as_ref();
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": self.kid, "alg": "ES256", "use": "sig",
            "x": b64.encode(&point[1..33]), "y": b64.encode(&point[33..]),
        })
    }

    /// A token for `sub`, signed by this key but naming `kid` as its key.
    fn token_as(&self, kid: &str, sub: &str) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head = b64.encode(format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{kid}"}}"#));
        let claims = b64.encode(format!(r#"{{"sub":"{sub}","exp":{}}}"#, 4_000_000_000u64));
        let signed = format!("{head}.{claims}");
        let rng = ring::rand::SystemRandom::new();
        let signature = self.pair.sign(&rng, signed.as_bytes()).unwrap();
        format!("{signed}.{}", b64.encode(signature.as_ref()))
    }

    fn token(&self, sub: &str) -> String {
        self.token_as(self.kid, sub)
    }
}

#[test]
fn tokens_are_verified_against_a_jwks_file_that_can_rotate() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let keys = tempfile::tempdir().unwrap();
    let jwks_file = keys.path().join("jwks.json");
    let (old, new) = (TokenKey::new("2026-a"), TokenKey::new("2026-b"));
    let write_jwks = |key: &TokenKey| {
        std::fs::write(
            &jwks_file,
            serde_json::json!({ "keys": [key.jwk()] }).to_string(),
        )
        .unwrap()
    };
    write_jwks(&old);
    let proxy = ProxyProcess::start(
        &upstream.addr,
        &redis.url(),
        RULES,
        &format!("jwt: {{ jwks_file: {} }}\n", jwks_file.display()),
    );
    // Each call names its actor twice: in the token, and in a header the rules fall back to.
    let call = |token: &str| {
        let bearer = format!("Bearer {token}");
        let response = http(
            &proxy.addr,
            "DELETE",
            "/api/orgs/acme/members/bob",
            &[
                ("Authorization", bearer.as_str()),
                ("X-User-Id", "u_header"),
            ],
            b"",
        )
        .unwrap();
        assert_eq!(response.status, 200);
    };
    let actor = |n: usize| {
        let got = records(&redis, n);
        let actor = got[n - 1].actor.clone().unwrap();
        (actor.id, actor.source)
    };

    call(&old.token("u_alice"));
    assert_eq!(actor(1), (Some("u_alice".into()), "jwt/sub".into()));
    // Signed by a key the file does not hold, under a kid it does: not trusted, and the
    // header the same client sent is not taken instead.
    call(&new.token_as(old.kid, "u_mallory"));
    assert_eq!(actor(2), (None, "jwt rejected: bad signature".into()));

    // The identity provider rotates its key: the file changes, the proxy re-reads it.
    write_jwks(&new);
    assert!(wait_until(Duration::from_secs(10), || proxy
        .stderr()
        .contains("rules reloaded")));
    call(&new.token("u_bob"));
    assert_eq!(actor(3), (Some("u_bob".into()), "jwt/sub".into()));
    call(&old.token("u_alice"));
    assert_eq!(actor(4), (None, "jwt rejected: unknown key".into()));
}

/// Sends a WebSocket handshake on a raw connection; returns the connection and the response
/// head.
fn upgrade(addr: &str) -> (std::net::TcpStream, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "connection closed in the head"
        );
        head.push(byte[0]);
    }
    (stream, String::from_utf8(head).unwrap())
}

#[test]
fn a_websocket_connection_passes_through_both_ways() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, "");
    // pingora 0.9 tears a tunnel down right after the 101 when it reads the upstream's 101
    // before the upgrade request's empty body has gone through (cloudflare/pingora#946,
    // open): about 1 connection in 100 here, more on a loaded machine, and the bare pingora
    // passthrough alike. A WebSocket client reconnects; so does this test, a few times.
    // Every tunnel that opens must carry bytes both ways.
    let mut opened = None;
    for _ in 0..5 {
        let (mut stream, head) = upgrade(&proxy.addr);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // The upstream's answer to the handshake reaches the client (RFC 6455's example key).
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        stream.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        match stream.read_exact(&mut back) {
            Ok(()) => {
                assert_eq!(&back, b"hello");
                opened = Some(stream);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => continue,
            Err(e) => panic!("reading the echo: {e}"),
        }
    }
    let mut stream = opened.expect("a tunnel opened in 5 tries");
    // Bytes flow both ways, several times, over the one connection.
    for message in ["a second message", &"x".repeat(100_000)] {
        stream.write_all(message.as_bytes()).unwrap();
        let mut back = vec![0u8; message.len()];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, message.as_bytes());
    }
}

#[test]
fn an_https_upstream_is_verified_against_the_configured_ca() {
    // An upstream whose certificate comes from a private CA, as an internal API's would.
    let certs = tempfile::tempdir().unwrap();
    let at = |name: &str| certs.path().join(name);
    let openssl = |args: &[&str]| {
        let done = Command::new("openssl")
            .args(args)
            .current_dir(certs.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(done.success(), "openssl {args:?}");
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
        "/CN=auditgate test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(
        at("leaf.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    let (cert, key, ca) = (at("cert.pem"), at("key.pem"), at("ca.pem"));
    let port = free_port();
    let _server = ChildGuard(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let upstream = format!("127.0.0.1:{port}");
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(&upstream).is_ok()
    }));
    let redis = RedisServer::start();
    let url = format!("https://localhost:{port}");

    let trusted = ProxyProcess::start(
        &url,
        &redis.url(),
        RULES,
        &format!("upstream_ca_file: {}\n", ca.display()),
    );
    let page = http(&trusted.addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(page.status, 200, "{}", trusted.stderr());
    assert!(String::from_utf8_lossy(&page.body).contains("s_server"));

    // Without the CA, the same upstream's certificate is refused: 502, nothing forwarded.
    let untrusting = ProxyProcess::start(&url, &redis.url(), RULES, "");
    let refused = http(&untrusting.addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(refused.status, 502);
}

#[test]
fn a_bad_upstream_ca_file_stops_the_proxy_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
    std::fs::write(
        dir.path().join("proxy.yaml"),
        format!(
            "listen: 127.0.0.1:{}\nupstream: https://localhost:1\nrules: [rules.yaml]\n\
             redis: {{ url: \"redis://127.0.0.1:1\" }}\nspool: {{ dir: spool }}\n\
             upstream_ca_file: ca.pem\n",
            free_port()
        ),
    )
    .unwrap();
    let out = Command::new(workspace_bin("auditgate"))
        .arg("proxy")
        .arg("--config")
        .arg(dir.path().join("proxy.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upstream_ca_file:") && stderr.contains("ca.pem: no certificate in it"),
        "{stderr}"
    );
}

/// An upstream as permissive as Flask or Go's routers upper-cases the method: `delete` deletes.
/// The proxy forwards the method as sent, and audits it as the upstream reads it.
#[test]
fn a_lower_case_method_is_audited_as_the_upstream_reads_it() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, "");
    let response = http(
        &proxy.addr,
        "delete",
        "/api/orgs/acme/members/u_7",
        &[("X-User-Id", "mallory")],
        b"",
    )
    .unwrap();
    assert!(response.status > 0);
    let records = records(&redis, 1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].operation, "member.remove");
    assert_eq!(records[0].request.method, "delete");
    assert_eq!(
        records[0].actor.as_ref().unwrap().id.as_deref(),
        Some("mallory")
    );
    assert_eq!(records[0].resources[0].id.as_deref(), Some("u_7"));
    assert_eq!(records[0].response.status, Some(response.status));
}
