//! The records the two model products show their customers (issue 15): where the client was,
//! which organisation a record belongs to, what changed, and one history per asset. A real
//! proxy in front of the example upstream, a real redis-server, and writers on SQLite and on
//! PostgreSQL.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::time::Duration;

use auditgate_tests::{
    PostgresServer, ProxyProcess, RedisServer, UpstreamProcess, WriterProcess, http, wait_until,
};
use serde_json::Value;

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

/// The records a filter selects, as the API answers an admin.
fn select(writer: &WriterProcess, query: &str) -> Vec<Value> {
    writer.select_as(auditgate_tests::ADMIN_TOKEN, query)
}

/// A call through a trusted proxy (`X-Forwarded-For: 8.8.8.8`, the proxy's peer 127.0.0.1
/// trusted) is recorded with the anonymised address and the country of the full one; a
/// private address has no location.
fn location_of_a_forwarded_client(store: &str) {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let writer = WriterProcess::start(&redis.url(), store, "");
    let proxy = ProxyProcess::start(
        &upstream.addr,
        &redis.url(),
        RULES,
        "client_ip: anonymized\ntrusted_proxies: [127.0.0.1/32]\n",
    );
    for (file, forwarded) in [
        ("far", "8.8.8.8"),
        ("near", "10.1.2.3"),
        ("v6", "2001:4860:4860::8888"),
    ] {
        let path = format!("/v1/files/{file}");
        let answer = http(
            &proxy.addr,
            "DELETE",
            &path,
            &[("X-Forwarded-For", forwarded)],
            b"",
        )
        .unwrap();
        assert_eq!(answer.status, 200);
    }
    assert!(wait_until(Duration::from_secs(15), || writer.count() == 3));
    let request_of =
        |file: &str| select(&writer, &format!("resource={file}"))[0]["request"].clone();
    let far = request_of("far");
    assert_eq!(far["client_ip"], "8.8.8.0");
    assert_eq!(far["location"], serde_json::json!({"country": "US"}));
    let near = request_of("near");
    assert_eq!(near["client_ip"], "10.1.2.0");
    assert!(
        near.get("location").is_none(),
        "a private address is nowhere: {near}"
    );
    let v6 = request_of("v6");
    assert_eq!(v6["client_ip"], "2001:4860:4860::");
    assert_eq!(v6["location"]["country"], "US");
}

#[test]
fn sqlite_location_of_a_forwarded_client() {
    location_of_a_forwarded_client("sqlite://audit.db");
}

#[test]
fn postgres_location_of_a_forwarded_client() {
    let pg = PostgresServer::start();
    location_of_a_forwarded_client(&pg.url());
}

/// A city database (`geoip.mmdb_file`) adds region and city; the proxy refuses to start on a
/// file that is not one, and says which.
#[test]
fn a_city_database_adds_region_and_city() {
    use auditgate_geo::mmdb_writer::{Entry, write_city_database};
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let mmdb = dir.path().join("city.mmdb");
    write_city_database(
        &mmdb,
        &[Entry {
            network: "81.2.69.0/24".parse().unwrap(),
            country: "GB",
            region: Some("England"),
            city: Some("London"),
        }],
    )
    .unwrap();
    let extra = format!(
        "trusted_proxies: [127.0.0.1/32]\ngeoip: {{ mmdb_file: {} }}\n",
        mmdb.display()
    );
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), RULES, &extra);
    let forwarded = [("X-Forwarded-For", "81.2.69.160")];
    let answer = http(&proxy.addr, "DELETE", "/v1/files/london", &forwarded, b"").unwrap();
    assert_eq!(answer.status, 200);
    assert!(wait_until(Duration::from_secs(10), || redis
        .len("auditgate:records")
        == 1));
    let record = &redis.records("auditgate:records")[0];
    let location = record.request.location.as_ref().unwrap();
    assert_eq!(
        (
            &*location.country,
            location.region.as_deref(),
            location.city.as_deref()
        ),
        ("GB", Some("England"), Some("London"))
    );

    std::fs::write(&mmdb, b"not a database").unwrap();
    let config = proxy.dir.path().join("proxy.yaml");
    let out = std::process::Command::new(auditgate_tests::workspace_bin("auditgate"))
        .args(["proxy", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("city.mmdb: not a MaxMind-format database"),
        "{err}"
    );
}

const ORGANISATION_RULES: &str = r#"
version: 1
service: hub
defaults:
  actor: ["{header.X-User-Id}"]
  tenant: "{path.org}"
rules:
  - operation: member.remove
    method: DELETE
    path: /api/organizations/{org}/members/{user}
    resources: [{ type: member, id: "{path.user}" }]
  - operation: file.delete
    method: DELETE
    path: /v1/files/{fileId}
    resources: [{ type: file, id: "{path.fileId}" }]
"#;

/// Two organisations' records interleaved, and a record of none: each tenant's token sees
/// exactly its own on every endpoint — records (every page), one record, history, export,
/// operations — and is refused another's tenant and the all-tenant gaps.
fn tenants_see_their_own_records(store: &str) {
    use auditgate_tests::{ACME_TOKEN, ADMIN_TOKEN, GLOBEX_TOKEN};
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let writer = WriterProcess::start(&redis.url(), store, "");
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), ORGANISATION_RULES, "");
    for n in 0..10 {
        let org = if n % 2 == 0 { "acme" } else { "globex" };
        let path = format!("/api/organizations/{org}/members/u{n}");
        let answer = http(&proxy.addr, "DELETE", &path, &[("X-User-Id", "admin")], b"").unwrap();
        assert_eq!(answer.status, 200);
    }
    let answer = http(&proxy.addr, "DELETE", "/v1/files/f1", &[], b"").unwrap();
    assert_eq!(answer.status, 200);
    assert!(wait_until(Duration::from_secs(15), || writer.count() == 11));

    let all = writer.get("/api/v1/records?limit=1000").json()["records"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(all.len(), 11, "an unscoped admin sees everything");
    let id_of = |member: &str| {
        all.iter()
            .find(|r| r["resources"][0]["id"] == member)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for (token, own, other, own_member, other_member) in [
        (ACME_TOKEN, "acme", "globex", "u0", "u1"),
        (GLOBEX_TOKEN, "globex", "acme", "u1", "u0"),
    ] {
        let get = |path: &str| writer.get_as(token, path);
        let only_own = |records: &[Value]| records.iter().all(|r| r["tenant"] == own);
        // Records, every page of two.
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = get(&format!("/api/v1/records?limit=2{cursor}")).json();
            seen.extend(page["records"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 5, "{own}: its five records, paged");
        assert!(only_own(&seen), "{own}: {seen:?}");
        // One record: its own, and not another's (the same 404 as no record at all).
        assert_eq!(
            get(&format!("/api/v1/records/{}", id_of(own_member))).status,
            200
        );
        assert_eq!(
            get(&format!("/api/v1/records/{}", id_of(other_member))).status,
            404
        );
        assert_eq!(get(&format!("/api/v1/records/{}", id_of("f1"))).status, 404);
        // History and filters cannot reach past the tenant.
        let history = get(&format!("/api/v1/history?resource={other_member}")).json();
        assert_eq!(history["records"], serde_json::json!([]), "{own}");
        let history = get(&format!("/api/v1/history?resource={own_member}")).json();
        assert_eq!(history["records"].as_array().unwrap().len(), 1);
        assert_eq!(writer.select_as(token, "resource=f1").len(), 0);
        assert_eq!(writer.select_as(token, "service=hub").len(), 5);
        assert_eq!(get(&format!("/api/v1/records?tenant={other}")).status, 403);
        assert_eq!(writer.select_as(token, &format!("tenant={own}")).len(), 5);
        // The export.
        let export: Value = serde_json::from_slice(&get("/api/v1/export").body).unwrap();
        let export = export.as_array().unwrap();
        assert_eq!(export.len(), 5);
        assert!(only_own(export));
        // Operations: only those of its records; gaps cover every tenant: refused.
        assert_eq!(
            get("/api/v1/operations").json()["operations"],
            serde_json::json!(["member.remove"])
        );
        assert_eq!(get("/api/v1/gaps").status, 403);
    }
    let unscoped = writer
        .get_as(ADMIN_TOKEN, "/api/v1/records?tenant=acme")
        .json();
    assert_eq!(
        unscoped["records"].as_array().unwrap().len(),
        5,
        "the tenant= filter"
    );
}

#[test]
fn sqlite_tenants_see_their_own_records() {
    tenants_see_their_own_records("sqlite://audit.db");
}

#[test]
fn postgres_tenants_see_their_own_records() {
    let pg = PostgresServer::start();
    tenants_see_their_own_records(&pg.url());
}

const CHANGE_RULES: &str = r#"
version: 1
service: media-library
defaults:
  actor: ["{header.X-User-Id}"]
rules:
  - operation: asset.upload
    method: POST
    path: /v1/files
    resources: [{ type: file, id: "{response/fileId}", path: "{response/filePath}" }]
  - operation: asset.rename
    method: PATCH
    path: /v1/files/{fileId}/details
    before: "/v1/files/{path.fileId}/details"
    changes: { name: { from: "{before/name}", to: "{body/name}" } }
    resources:
      - { type: file, id: "{path.fileId}", path: "{response/filePath}", previous_path: "{before/filePath}" }
  - operation: asset.retag
    method: PUT
    path: /v1/files/{fileId}/tags
    before: "/slow?ms=3000"
    changes: { tags: { from: "{before/tags}", to: "{body/tags}" } }
    resources: [{ type: file, id: "{path.fileId}" }]
  - operation: asset.check
    method: POST
    path: /v1/files/{fileId}/check
    before: "/echo?of={path.fileId}"
    changes:
      authorization: { from: "{before/headers/authorization}" }
      cookie: { from: "{before/headers/cookie}" }
      request_id: { from: "{before/headers/x-request-id}" }
      other: { from: "{before/headers/x-other}" }
    resources: [{ type: file, id: "{path.fileId}" }]
"#;

/// A PATCH whose rule has `before:` records the old value beside the new one: the proxy GETs
/// the file's details from the upstream (with the caller's credentials) before forwarding the
/// rename. A `before:` GET that does not answer in time leaves `from` out and says so, and the
/// call goes through all the same.
fn changes_record_the_old_and_new_value(store: &str) {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let writer = WriterProcess::start(&redis.url(), store, "");
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), CHANGE_RULES, "");
    let json = ("Content-Type", "application/json");
    let uploaded = http(
        &proxy.addr,
        "POST",
        "/v1/files",
        &[json],
        br#"{"fileName": "tree.png", "folder": "/forest"}"#,
    )
    .unwrap();
    assert_eq!(uploaded.status, 201);
    let file_id = uploaded.json()["fileId"].as_str().unwrap().to_owned();
    let path = format!("/v1/files/{file_id}/details");
    let renamed = http(
        &proxy.addr,
        "PATCH",
        &path,
        &[
            json,
            ("Authorization", "Bearer caller-token"),
            ("X-User-Id", "u_1"),
        ],
        br#"{"name": "oak.png"}"#,
    )
    .unwrap();
    assert_eq!(renamed.status, 200);
    assert_eq!(renamed.json()["filePath"], "/forest/oak.png");
    let started = std::time::Instant::now();
    let retagged = http(
        &proxy.addr,
        "PUT",
        &format!("/v1/files/{file_id}/tags"),
        &[json],
        br#"{"tags": ["t"]}"#,
    )
    .unwrap();
    assert_eq!(
        retagged.status, 200,
        "a before: GET that times out does not fail the call"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the call waited for before_timeout_ms (500), not for the slow GET"
    );
    // The before: GET carries the caller's credentials and the call's request ID, nothing
    // else of its headers.
    let checked = http(
        &proxy.addr,
        "POST",
        "/v1/files/f9/check",
        &[
            ("Authorization", "Bearer caller-token"),
            ("Cookie", "session=s1"),
            ("X-Other", "not carried"),
            ("X-Request-Id", "req-check"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(checked.status, 201);
    assert!(wait_until(Duration::from_secs(15), || writer.count() == 4));
    let check = &select(&writer, "operation=asset.check")[0];
    assert_eq!(
        check["changes"],
        serde_json::json!({
            "authorization": {"from": "Bearer caller-token"},
            "cookie": {"from": "session=s1"},
            "request_id": {"from": "req-check"},
        })
    );

    let rename = &select(&writer, "operation=asset.rename")[0];
    assert_eq!(
        rename["changes"],
        serde_json::json!({"name": {"from": "tree.png", "to": "oak.png"}})
    );
    assert_eq!(rename["resources"][0]["path"], "/forest/oak.png");
    assert_eq!(rename["resources"][0]["previous_path"], "/forest/tree.png");
    assert!(rename.get("capture").is_none(), "{rename}");
    let retag = &select(&writer, "operation=asset.retag")[0];
    assert_eq!(retag["changes"], serde_json::json!({"tags": {"to": ["t"]}}));
    assert_eq!(retag["capture"], serde_json::json!({"before": "failed"}));
}

#[test]
fn sqlite_changes_record_the_old_and_new_value() {
    changes_record_the_old_and_new_value("sqlite://audit.db");
}

#[test]
fn postgres_changes_record_the_old_and_new_value() {
    let pg = PostgresServer::start();
    changes_record_the_old_and_new_value(&pg.url());
}

const HISTORY_RULES: &str = r#"
version: 1
service: media-library
rules:
  - operation: asset.upload
    method: POST
    path: /v1/files
    resources: [{ type: file, id: "{response/fileId}", path: "{response/filePath}" }]
  - operation: asset.rename
    method: PATCH
    path: /v1/files/{fileId}/details
    before: "/v1/files/{path.fileId}/details"
    changes: { name: { from: "{before/name}", to: "{body/name}" } }
    resources:
      - { type: file, id: "{path.fileId}", path: "{response/filePath}", previous_path: "{before/filePath}" }
  - operation: asset.move
    method: POST
    path: /v1/files/move
    resources:
      - { type: file, path: "{response/filePath}", previous_path: "{body/sourceFilePath}" }
  - operation: asset.delete
    method: DELETE
    path: /v1/files/{fileId}
    resources: [{ type: file, id: "{path.fileId}" }]
  - operation: collection.delete
    method: DELETE
    path: /v1/collections/{id}
    resources: [{ type: collection, id: "{path.id}" }]
"#;

/// ImageKit's "View File Deletion History": the history of a file's first path shows its
/// upload, its rename, its move and the delete that named only its id, oldest first — the
/// writer links an id with the path the same record gives it, and a path with its previous
/// one. `TYPE:ID` keeps a file and a collection of the same id apart.
fn one_history_per_asset(store: &str) {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let writer = WriterProcess::start(&redis.url(), store, "");
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), HISTORY_RULES, "");
    let json = [("Content-Type", "application/json")];
    let call = |method: &str, path: &str, body: &str| {
        let answer = http(&proxy.addr, method, path, &json, body.as_bytes()).unwrap();
        assert!(answer.status < 300, "{method} {path}: {}", answer.status);
        answer
    };
    // Another file first, so that ids and paths are not all of one asset.
    call(
        "POST",
        "/v1/files",
        r#"{"fileName": "other.png", "folder": "/forest"}"#,
    );
    let uploaded = call(
        "POST",
        "/v1/files",
        r#"{"fileName": "tree.png", "folder": "/forest"}"#,
    );
    let id = uploaded.json()["fileId"].as_str().unwrap().to_owned();
    call(
        "PATCH",
        &format!("/v1/files/{id}/details"),
        r#"{"name": "oak.png"}"#,
    );
    call(
        "POST",
        "/v1/files/move",
        r#"{"sourceFilePath": "/forest/oak.png", "destinationPath": "/park"}"#,
    );
    call("DELETE", &format!("/v1/files/{id}"), "");
    call("DELETE", &format!("/v1/collections/{id}"), "");
    assert!(wait_until(Duration::from_secs(15), || writer.count() == 6));

    let history = |resource: &str| {
        let page = writer.get(&format!("/api/v1/history?resource={resource}"));
        assert_eq!(page.status, 200);
        page.json()["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["operation"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let whole = ["asset.upload", "asset.rename", "asset.move", "asset.delete"];
    assert_eq!(history("/forest/tree.png"), whole, "from its first path");
    assert_eq!(history("/park/oak.png"), whole, "from its last path");
    assert_eq!(history(&format!("file:{id}")), whole, "from its TYPE:ID");
    assert_eq!(
        history(&format!("collection:{id}")),
        ["collection.delete"],
        "a collection of the same id is another asset"
    );
    assert_eq!(history("/forest/other.png"), ["asset.upload"]);
    // A viewer's history of the path keeps the delete's entry, which named only the id.
    let viewer = writer.get_as(
        auditgate_tests::VIEWER_TOKEN,
        "/api/v1/history?resource=/forest/tree.png",
    );
    let records = viewer.json()["records"].as_array().unwrap().clone();
    assert_eq!(records.len(), 4);
    assert_eq!(records[3]["resources"][0]["id"], id.as_str());
}

#[test]
fn sqlite_one_history_per_asset() {
    one_history_per_asset("sqlite://audit.db");
}

#[test]
fn postgres_one_history_per_asset() {
    let pg = PostgresServer::start();
    one_history_per_asset(&pg.url());
}

/// `POST /api/v1/tokens`: an unscoped admin mints a short-lived token for one tenant; it sees
/// that tenant's records only, in its role, until it expires; a scoped or minted token cannot
/// mint; a token altered or minted by another key is refused; without `token_key_file`
/// nothing is minted.
#[test]
fn minted_tokens_work_until_they_expire_and_never_beyond_their_tenant() {
    use auditgate_tests::{ACME_TOKEN, ADMIN_TOKEN};
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mint.key"),
        "a-test-key-of-more-than-32-bytes-0123456789\n",
    )
    .unwrap();
    let writer = WriterProcess::start_in(
        dir,
        &redis.url(),
        "sqlite://audit.db",
        "token_key_file: mint.key\n",
    );
    let proxy = ProxyProcess::start(&upstream.addr, &redis.url(), ORGANISATION_RULES, "");
    for (org, user) in [("acme", "u1"), ("globex", "u2"), ("acme", "u3")] {
        let path = format!("/api/organizations/{org}/members/{user}");
        assert_eq!(
            http(&proxy.addr, "DELETE", &path, &[], b"").unwrap().status,
            200
        );
    }
    assert!(wait_until(Duration::from_secs(15), || writer.count() == 3));
    let mint = |token: &str, body: &str| {
        let auth = format!("Bearer {token}");
        http(
            &writer.addr,
            "POST",
            "/api/v1/tokens",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap()
    };
    let minted = mint(
        ADMIN_TOKEN,
        r#"{"tenant": "acme", "role": "admin", "ttl_seconds": 3}"#,
    );
    assert_eq!(
        minted.status,
        201,
        "{}",
        String::from_utf8_lossy(&minted.body)
    );
    let answer = minted.json();
    let token = answer["token"].as_str().unwrap().to_owned();
    assert!(answer["expires_at"].as_str().unwrap().ends_with('Z'));
    let seen = writer.get_as(&token, "/api/v1/records").json()["records"].clone();
    let seen = seen.as_array().unwrap();
    assert_eq!(seen.len(), 2, "acme's two records");
    assert!(seen.iter().all(|r| r["tenant"] == "acme"));
    assert_eq!(
        writer
            .get_as(&token, "/api/v1/records?tenant=globex")
            .status,
        403
    );
    assert_eq!(writer.get_as(&token, "/api/v1/gaps").status, 403);
    // Neither a minted token nor a scoped one mints.
    assert_eq!(mint(&token, r#"{"tenant": "globex"}"#).status, 403);
    assert_eq!(mint(ACME_TOKEN, r#"{"tenant": "globex"}"#).status, 403);
    // A viewer token reads history only.
    let viewer = mint(ADMIN_TOKEN, r#"{"tenant": "acme"}"#).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(writer.get_as(&viewer, "/api/v1/records").status, 403);
    let history = writer.get_as(&viewer, "/api/v1/history?resource=u1").json();
    assert_eq!(history["records"].as_array().unwrap().len(), 1);
    let other = writer.get_as(&viewer, "/api/v1/history?resource=u2").json();
    assert_eq!(other["records"], serde_json::json!([]), "globex's member");
    // Altered: another tenant written into the payload, the signature kept.
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_payload = base64_url(br#"{"tenant":"globex","role":"admin","exp":99999999999}"#);
    parts[1] = &forged_payload;
    assert_eq!(
        writer.get_as(&parts.join("."), "/api/v1/records").status,
        401
    );
    // Bad requests.
    assert_eq!(mint(ADMIN_TOKEN, r#"{"tenant": ""}"#).status, 400);
    assert_eq!(
        mint(ADMIN_TOKEN, r#"{"tenant": "a", "ttl_seconds": 999999}"#).status,
        400
    );
    assert_eq!(
        mint(ADMIN_TOKEN, r#"{"tenant": "a", "role": "root"}"#).status,
        400
    );
    // Expired.
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(writer.get_as(&token, "/api/v1/records").status, 401);

    let plain = WriterProcess::start(&redis.url(), "sqlite://other.db", "");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let refused = http(
        &plain.addr,
        "POST",
        "/api/v1/tokens",
        &[("Authorization", &auth)],
        br#"{"tenant": "acme"}"#,
    )
    .unwrap();
    assert_eq!(refused.status, 501);
    assert_eq!(plain.get_as(&token, "/api/v1/records").status, 401);
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
