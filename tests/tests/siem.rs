//! Where the records go next: a writer process's `/export?format=ocsf|ecs|cef` and
//! `auditgate logs --format … [--follow]`, with client-controlled values at their worst.
//! The OCSF events carry every attribute the schema requires of API Activity (class 6003);
//! the CEF lines parse back, by the CEF standard's escaping rules, to the values recorded.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::collections::HashMap;
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use auditgate_queue::RedisConfig;
use auditgate_rules::{AuditRecord, Location};
use auditgate_tests::{
    ADMIN_TOKEN, ChildGuard, RedisServer, WriterProcess, enqueue_all, record, wait_until,
    workspace_bin,
};
use serde_json::Value;

/// What OCSF requires of an API Activity event, from the schema repository
/// (github.com/ocsf/ocsf-schema): `events/base_event.json` at 32de09aa (activity_id,
/// category_uid, class_uid, metadata, severity_id, time, type_uid),
/// `events/application/api_activity.json` at 2b1f2dab (actor, api, src_endpoint),
/// `objects/metadata.json` at 04dbb318 (product, version), `objects/product.json` at 00fc2118
/// (name; vendor_name in 1.x), `objects/api.json` at 244de24e (operation).
const OCSF_REQUIRED: &[&str] = &[
    "/activity_id",
    "/category_uid",
    "/class_uid",
    "/metadata",
    "/metadata/product",
    "/metadata/product/name",
    "/metadata/product/vendor_name",
    "/metadata/version",
    "/severity_id",
    "/time",
    "/type_uid",
    "/actor",
    "/api",
    "/api/operation",
    "/src_endpoint",
];

/// The worst a client can put into the values a record repeats.
const HOSTILE: &str = "a|b=c\\d\ne\rf \u{0}=|\\";

fn hostile_record(n: u64) -> AuditRecord {
    let mut r = record(n);
    r.description = Some(format!("Renamed {HOSTILE}"));
    r.request.path = format!("/v1/files/{HOSTILE}");
    r.request.user_agent = Some(HOSTILE.into());
    r.request.client_ip = Some("203.0.113.0".into());
    r.request.location = Some(Location {
        country: "DE".into(),
        region: None,
        city: Some("Berlin".into()),
    });
    r.tenant = Some("acme".into());
    if let Some(actor) = r.actor.as_mut() {
        actor.id = Some(format!("u|{n}=x"));
    }
    r
}

async fn enqueue(redis: &RedisServer, records: &[AuditRecord]) {
    enqueue_all(RedisConfig::new(redis.url()), "siem", records.to_vec()).await;
}

/// A CEF line split by the ArcSight CEF standard: seven `|`-separated header fields (`\|`
/// and `\\` escaped), then `key=value` pairs where a value runs to the next unescaped
/// ` key=`, with `\=`, `\\`, `\n` and `\r` unescaped.
fn parse_cef(line: &str) -> (Vec<String>, HashMap<String, String>) {
    let mut header = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars();
    while header.len() < 7 {
        match chars.next() {
            Some('\\') => match chars.next() {
                Some(c @ ('|' | '\\')) => field.push(c),
                other => panic!("bad header escape {other:?} in {line}"),
            },
            Some('|') => header.push(std::mem::take(&mut field)),
            Some(c) => field.push(c),
            None => panic!("a CEF header has seven fields: {line}"),
        }
    }
    let rest: Vec<char> = chars.collect();
    // Key starts: an unescaped `=` preceded by a run of key characters after a space.
    let mut starts = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        if rest[i] == '\\' {
            i += 2;
            continue;
        }
        if rest[i] == '=' {
            let mut k = i;
            while k > 0 && (rest[k - 1].is_ascii_alphanumeric() || rest[k - 1] == '_') {
                k -= 1;
            }
            if k < i && (k == 0 || rest[k - 1] == ' ') {
                starts.push((k, i));
            }
        }
        i += 1;
    }
    let mut extension = HashMap::new();
    for (n, (key_start, eq)) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(rest.len(), |(next, _)| next - 1);
        let key: String = rest[*key_start..*eq].iter().collect();
        let mut value = String::new();
        let mut raw = rest[eq + 1..end].iter();
        while let Some(c) = raw.next() {
            if *c == '\\' {
                match raw.next() {
                    Some('n') => value.push('\n'),
                    Some('r') => value.push('\r'),
                    Some(c @ ('=' | '\\')) => value.push(*c),
                    other => panic!("bad extension escape {other:?} in {line}"),
                }
            } else {
                value.push(*c);
            }
        }
        extension.insert(key, value);
    }
    (header, extension)
}

/// What a CEF value holds of `text`: CEF escapes `\n` and `\r` and has no escape for other
/// control characters, which are written as spaces (a collector may split lines at them).
fn cef_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\r' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

fn export(writer: &WriterProcess, format: &str) -> String {
    let answer = writer.get(&format!("/api/v1/export?format={format}"));
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    String::from_utf8(answer.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siem_formats_carry_the_record_truthfully() {
    let redis = RedisServer::start();
    let records: Vec<AuditRecord> = (0..5).map(hostile_record).collect();
    enqueue(&redis, &records).await;
    let writer = WriterProcess::start(&redis.url(), "sqlite://audit.db", "");
    assert!(wait_until(Duration::from_secs(20), || writer.count() == 5));
    let by_id: HashMap<String, &AuditRecord> =
        records.iter().map(|r| (r.id.to_string(), r)).collect();

    // OCSF: one event per line, each with every required attribute.
    let ocsf = export(&writer, "ocsf");
    let events: Vec<Value> = ocsf
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 5);
    for event in &events {
        for pointer in OCSF_REQUIRED {
            assert!(
                event.pointer(pointer).is_some_and(|v| !v.is_null()),
                "{pointer} missing in {event}"
            );
        }
        let r = by_id[event["metadata"]["uid"].as_str().unwrap()];
        assert_eq!(event["class_uid"], 6003);
        assert_eq!(
            event["type_uid"],
            600300 + event["activity_id"].as_u64().unwrap()
        );
        assert_eq!(event["api"]["operation"], r.operation.as_str());
        assert_eq!(event["api"]["request"]["uid"], r.request.id.as_str());
        assert_eq!(
            event["actor"]["user"]["uid"],
            r.actor.as_ref().unwrap().id.as_deref().unwrap()
        );
        assert_eq!(event["src_endpoint"]["ip"], "203.0.113.0");
        assert_eq!(event["src_endpoint"]["location"]["city"], "Berlin");
        assert_eq!(
            event["http_request"]["url"]["path"],
            r.request.path.as_str()
        );
        assert_eq!(event["metadata"]["tenant_uid"], "acme");
        assert_eq!(event["status_id"], 1);
        assert_eq!(event["attestation"]["chain_uid"], "test-writer");
        assert_eq!(
            event["attestation"]["fingerprint"]["value"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
        assert_eq!(event["time"], r.time.timestamp_millis());
    }

    // ECS.
    let ecs = export(&writer, "ecs");
    for line in ecs.lines() {
        let doc: Value = serde_json::from_str(line).unwrap();
        let r = by_id[doc["event"]["id"].as_str().unwrap()];
        assert_eq!(doc["event"]["action"], r.operation.as_str());
        assert_eq!(doc["event"]["outcome"], "success");
        assert_eq!(
            doc["user"]["id"],
            r.actor.as_ref().unwrap().id.as_deref().unwrap()
        );
        assert_eq!(doc["source"]["ip"], "203.0.113.0");
        assert_eq!(doc["source"]["geo"]["country_iso_code"], "DE");
        assert_eq!(doc["http"]["request"]["id"], r.request.id.as_str());
        assert_eq!(doc["url"]["path"], r.request.path.as_str());
        assert_eq!(doc["user_agent"]["original"], HOSTILE);
    }

    // CEF: one line per record, whatever the values hold, and each value parses back.
    let cef = export(&writer, "cef");
    let lines: Vec<&str> = cef.lines().collect();
    assert_eq!(
        lines.len(),
        5,
        "a newline in a value does not break a line: {cef}"
    );
    for line in &lines {
        let (header, ext) = parse_cef(line);
        let r = by_id[ext["externalId"].as_str()];
        assert_eq!(header[0], "CEF:0");
        assert_eq!(header[4], r.operation);
        assert_eq!(
            header[5],
            r.description
                .as_deref()
                .unwrap()
                .replace(|c: char| c.is_control(), " ")
        );
        assert_eq!(ext["msg"], cef_text(r.description.as_deref().unwrap()));
        assert_eq!(ext["request"], cef_text(&r.request.path));
        assert_eq!(ext["requestClientApplication"], cef_text(HOSTILE));
        assert_eq!(
            ext["suser"],
            r.actor.as_ref().unwrap().id.as_deref().unwrap()
        );
        assert_eq!(ext["cs2"], r.request.id);
        assert_eq!(ext["cs1"], "acme");
        assert_eq!(ext["rt"], r.time.timestamp_millis().to_string());
    }

    // `auditgate logs --format cef` prints the same lines as the export.
    let out = Command::new(workspace_bin("auditgate"))
        .args([
            "logs",
            "--server",
            &format!("http://{}", writer.addr),
            "--token",
            ADMIN_TOKEN,
        ])
        .args(["--format", "cef"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut printed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut exported: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    printed.sort();
    exported.sort();
    assert_eq!(printed, exported);

    // `--follow` prints what is stored next, as it is stored.
    let mut follow = ChildGuard(
        Command::new(workspace_bin("auditgate"))
            .args([
                "logs",
                "--server",
                &format!("http://{}", writer.addr),
                "--token",
                ADMIN_TOKEN,
            ])
            .args(["--format", "ocsf", "--follow"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = follow.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let first: Vec<String> = (0..5)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    assert_eq!(first.len(), 5);
    let later = hostile_record(99);
    enqueue(&redis, std::slice::from_ref(&later)).await;
    let next: Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(15)).unwrap()).unwrap();
    assert_eq!(next["metadata"]["uid"], later.id.to_string());
    assert!(
        rx.recv_timeout(Duration::from_secs(3)).is_err(),
        "nothing is printed twice"
    );
}
