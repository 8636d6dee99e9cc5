//! Tests across the crate: loading errors with their exact `FILE:LINE:COL` messages, match
//! precedence, and the exact records produced.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::*;

fn load(text: &str) -> RuleSet {
    match RuleSet::loader()
        .hmac_key("k")
        .from_yaml("rules.yaml", text)
    {
        Ok(set) => set,
        Err(e) => panic!("rules should load:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match RuleSet::loader().check_only().from_yaml("rules.yaml", text) {
        Ok(_) => panic!("rules should not load"),
        Err(e) => e.diagnostics().iter().map(ToString::to_string).collect(),
    }
}

fn error(text: &str) -> String {
    let all = errors(text);
    assert_eq!(all.len(), 1, "expected one problem, got {all:#?}");
    all.into_iter().next().unwrap_or_default()
}

/// A rule file around one list of rules.
fn with_rules(rules: &str) -> String {
    format!("version: 1\nservice: svc\nrules:\n{rules}")
}

struct Req<'a> {
    method: http::Method,
    uri: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    body: Option<&'a str>,
    status: Option<u16>,
    response: Option<&'a str>,
    /// `None`: unverified claims; `Some(Some(c))`: verified `c`; `Some(None)`: refused.
    verified: Option<Option<Value>>,
}

fn req(method: &str, uri: &'static str) -> Req<'static> {
    Req {
        method: http::Method::from_bytes(method.as_bytes()).unwrap(),
        uri,
        headers: Vec::new(),
        body: None,
        status: Some(200),
        response: None,
        verified: None,
    }
}

impl<'a> Req<'a> {
    fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }
    fn body(mut self, body: &'a str) -> Self {
        self.body = Some(body);
        self
    }
    fn status(mut self, status: Option<u16>) -> Self {
        self.status = status;
        self
    }
    fn response(mut self, body: &'a str) -> Self {
        self.response = Some(body);
        self
    }

    fn record_with(&self, set: &RuleSet, edit: impl FnOnce(&mut Call<'_>)) -> Option<AuditRecord> {
        let uri: http::Uri = self.uri.parse().unwrap();
        let mut headers = http::HeaderMap::new();
        for (k, v) in &self.headers {
            headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        let found = set.matches(&self.method, uri.path())?;
        let mut call = Call::new(&self.method, &uri, &headers);
        call.request_body = self.body.map(str::as_bytes);
        call.response_body = self.response.map(str::as_bytes);
        call.status = self.status;
        call.claims = match &self.verified {
            None => Claims::Unverified,
            Some(Some(claims)) => Claims::Verified(claims),
            Some(None) => Claims::Absent,
        };
        edit(&mut call);
        let borrowed = found.record_ref(&call)?;
        let mut json = Vec::new();
        borrowed.write_json(&mut json);
        let owned = borrowed.into_owned();
        // Every record these tests make also checks that the two forms write the same JSON.
        assert_eq!(
            String::from_utf8(json).unwrap(),
            serde_json::to_string(&owned).unwrap()
        );
        Some(owned)
    }

    fn record(&self, set: &RuleSet) -> Option<AuditRecord> {
        self.record_with(set, |_| {})
    }

    fn operation(&self, set: &RuleSet) -> Option<String> {
        self.record(set).map(|r| r.operation)
    }
}

fn bearer(claims: Value) -> String {
    use base64::Engine as _;
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "Bearer {}.{}.sig",
        enc.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        enc.encode(claims.to_string())
    )
}

// ---------------------------------------------------------------- loading errors

#[test]
fn yaml_syntax_error_has_its_position() {
    let e = error("version: 1\nservice: svc\nrules: [\n  {operation: a, path: /x\n");
    assert!(e.starts_with("rules.yaml:5:1: YAML syntax error: "), "{e}");
}

#[test]
fn unknown_keys_are_named_with_a_suggestion() {
    let e = error(&with_rules(
        "  - operation: a.b\n    methd: POST\n    path: /x\n",
    ));
    assert_eq!(
        e,
        "rules.yaml:5:5: unknown key \"methd\" in a rule (did you mean \"method\"?)"
    );
    let e = error("version: 1\nservice: svc\nrulez: []\nrules: []\n");
    assert_eq!(
        e,
        "rules.yaml:3:1: unknown key \"rulez\" at the top of a rule file (did you mean \"rules\"?)"
    );
    let e = error("version: 1\nservice: svc\ndefaults: { actr: \"{jwt/sub}\" }\nrules: []\n");
    assert_eq!(
        e,
        "rules.yaml:3:13: unknown key \"actr\" in `defaults` (did you mean \"actor\"?)"
    );
    let all = errors(&with_rules(
        "  - operation: a.b\n    path: /x\n    resources: [{ type: file, idd: x }]\n",
    ));
    assert_eq!(
        all,
        vec![
            "rules.yaml:6:19: resource needs an `id` or a `path` (or both) to say which one was touched",
            "rules.yaml:6:31: unknown key \"idd\" in a resource (did you mean \"id\"?)",
        ]
    );
    let e = error(&with_rules(
        "  - operation: a.b\n    path: /x\n    when: { zzz: /a }\n",
    ));
    assert_eq!(
        e,
        "rules.yaml:6:13: unknown key \"zzz\" in `when`; known keys here: body, query, header"
    );
}

#[test]
fn missing_operation_and_path() {
    let all = errors(&with_rules("  - method: POST\n"));
    assert_eq!(
        all,
        vec![
            "rules.yaml:4:5: rule has no `operation`: name what it records, e.g. `operation: asset.rename`",
            "rules.yaml:4:5: rule has no `path`: say which endpoint it covers, e.g. `path: /v1/files/{fileId}`",
        ]
    );
}

#[test]
fn bad_method() {
    let e = error(&with_rules(
        "  - operation: a.b\n    method: PATHC\n    path: /x\n",
    ));
    assert_eq!(
        e,
        "rules.yaml:5:13: unknown method \"PATHC\" (did you mean \"PATCH\"?): use one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, CONNECT, TRACE"
    );
    let e = error(&with_rules(
        "  - operation: a.b\n    method: [POST, FETCH]\n    path: /x\n",
    ));
    assert!(
        e.starts_with("rules.yaml:5:20: unknown method \"FETCH\""),
        "{e}"
    );
}

#[test]
fn bad_templates() {
    let e = error(&with_rules(
        "  - operation: a.b\n    path: /x\n    details: { n: \"{bdy/name}\" }\n",
    ));
    assert_eq!(
        e,
        "rules.yaml:6:21: unknown source \"bdy/name\" (did you mean \"body\"?): expected path.NAME, query.NAME, header.NAME, body/POINTER, response/POINTER, jwt/POINTER or before/POINTER"
    );
    let e = error(&with_rules(
        "  - operation: a.b\n    path: /x\n    details: { n: \"{body/a~2}\" }\n",
    ));
    assert_eq!(
        e,
        "rules.yaml:6:21: bad JSON pointer \"/a~2\": '~' must be followed by 0 ('~') or 1 ('/')"
    );
    let e = error(&with_rules(
        "  - operation: a.b\n    path: /x\n    description: \"set {body/n | upper}\"\n",
    ));
    assert_eq!(
        e,
        "rules.yaml:6:33: unknown filter \"upper\": the filters are hmac, lower, dirname, basename"
    );
}

#[test]
fn unknown_path_parameter() {
    let e = error(&with_rules(
        "  - operation: a.b\n    path: /v1/files/{fileId}\n    resources: [{ type: file, id: \"{path.fileID}\" }]\n",
    ));
    assert_eq!(
        e,
        "rules.yaml:6:37: unknown path parameter \"fileID\" (did you mean \"fileId\"?): the rule's path has fileId"
    );
}

#[test]
fn bad_path_pattern() {
    let e = error(&with_rules("  - operation: a.b\n    path: /v1/files/{id\n"));
    assert_eq!(
        e,
        "rules.yaml:5:21: a parameter fills a whole segment: write \"{name}\" between two '/', not \"{id\""
    );
}

#[test]
fn rules_that_cannot_be_told_apart() {
    let e = error(&with_rules(
        "  - operation: a.one\n    method: PATCH\n    path: /v1/x/{id}\n  - operation: a.two\n    method: PATCH\n    path: /v1/x/{other}\n",
    ));
    assert_eq!(
        e,
        "rules.yaml:7:5: rule \"a.two\" can never match: rule \"a.one\" at rules.yaml:4:5 takes PATCH /v1/x/{id} first and has no `when`; give one of them a `when`, or remove one"
    );
    // A `when` on the first makes the second its fallback: both load.
    load(&with_rules(
        "  - operation: a.one\n    method: PATCH\n    path: /v1/x/{id}\n    when: { body: /name }\n  - operation: a.two\n    method: PATCH\n    path: /v1/x/{other}\n",
    ));
    // Different methods on one path are different endpoints.
    load(&with_rules(
        "  - operation: a.one\n    method: PATCH\n    path: /v1/x/{id}\n  - operation: a.two\n    method: DELETE\n    path: /v1/x/{id}\n",
    ));
}

#[test]
fn versions() {
    let e = error("version: 2\nservice: svc\nrules: []\n");
    assert_eq!(
        e,
        "rules.yaml:1:10: unsupported version \"2\": this auditgate reads `version: 1`"
    );
    let e = error("service: svc\nrules: []\n");
    assert_eq!(
        e,
        "rules.yaml:1:1: missing `version`: add `version: 1` at the top of the file"
    );
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let all = errors(
        "version: 3\nrules:\n  - operation: a.b\n    methd: POST\n    path: /x/{id}\n    details: { n: \"{path.ID}\" }\n  - path: /y\n    method: GETT\n",
    );
    assert_eq!(all.len(), 6, "{all:#?}");
    assert!(all[0].starts_with("rules.yaml:1:1: missing `service`"));
    assert!(all[1].starts_with("rules.yaml:1:10: unsupported version"));
    assert!(all[2].starts_with("rules.yaml:4:5: unknown key \"methd\""));
    assert!(all[3].starts_with("rules.yaml:6:21: unknown path parameter \"ID\""));
    assert!(all[4].starts_with("rules.yaml:7:5: rule has no `operation`"));
    assert!(all[5].starts_with("rules.yaml:8:13: unknown method \"GETT\""));
}

#[test]
fn hmac_without_a_key_warns_and_leaves_the_value_out() {
    let text = with_rules(
        "  - operation: secret.update\n    method: PUT\n    path: /s/{key}\n    details: { value: \"{body/value | hmac}\", key: \"{path.key}\" }\n",
    );
    let set = RuleSet::from_yaml("rules.yaml", &text).unwrap();
    let warnings: Vec<String> = set.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "rules.yaml:7:38: rule \"secret.update\" uses `| hmac` but no HMAC key was given, so its records leave that value out: pass --hmac-key-file, set hmac_key_file in the proxy config, or call Loader::hmac_key"
        ]
    );
    let record = req("PUT", "/s/TOKEN")
        .body(r#"{"value":"hunter2"}"#)
        .record(&set)
        .unwrap();
    assert_eq!(
        record.details,
        json!({"key": "TOKEN"}).as_object().cloned().unwrap()
    );
    // `rules check` needs no key and says nothing of it.
    let checked = RuleSet::loader()
        .check_only()
        .from_yaml("rules.yaml", &text)
        .unwrap();
    assert!(checked.warnings().is_empty());
    let set = load(&text);
    let record = req("PUT", "/s/K")
        .body(r#"{"value":"s3cr3t"}"#)
        .record(&set)
        .unwrap();
    assert_eq!(
        record.details["value"],
        json!(template::hmac_hex(b"k", b"s3cr3t"))
    );
    assert_ne!(record.details["value"], json!("s3cr3t"));
}

#[test]
fn duplicate_explicit_ids_and_defaulted_ids() {
    let e = error(&with_rules(
        "  - { id: x, operation: a, path: /a }\n  - { id: x, operation: b, path: /b }\n",
    ));
    assert_eq!(
        e,
        "rules.yaml:5:7: rule id \"x\" is already used at rules.yaml:4:7; rule ids must be unique"
    );
    let set = load(&with_rules(
        "  - { operation: tag.add, method: POST, path: /a }\n  - { operation: tag.add, method: POST, path: /b }\n",
    ));
    assert_eq!(
        req("POST", "/a").record(&set).unwrap().rule.as_deref(),
        Some("tag.add")
    );
    assert_eq!(
        req("POST", "/b").record(&set).unwrap().rule.as_deref(),
        Some("tag.add#2")
    );
}

#[test]
fn a_directory_is_one_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "version: 1\nservice: one\nrules:\n  - { operation: a.x, method: POST, path: /x }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.yml"),
        "version: 1\nservice: two\nrules:\n  - { operation: b.y, method: POST, path: /y }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not rules").unwrap();
    let set = RuleSet::load(dir.path()).unwrap();
    assert_eq!(
        set.summary(),
        Summary {
            files: 2,
            rules: 2,
            operations: 2
        }
    );
    let r = req("POST", "/y").record(&set).unwrap();
    assert_eq!((r.service.as_str(), r.operation.as_str()), ("two", "b.y"));

    // A conflict across files names both places.
    std::fs::write(
        dir.path().join("c.yaml"),
        "version: 1\nservice: three\nrules:\n  - { operation: c.x, method: POST, path: /x }\n",
    )
    .unwrap();
    let a = dir.path().join("a.yaml");
    let expected = format!("c.x\" can never match: rule \"a.x\" at {}:4:7", a.display());
    let err = RuleSet::loader()
        .check_only()
        .load(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&expected), "{err}");
    // Loading for use warns and lets file order decide, as ties do (docs/rules.md, "Paths and matching").
    let set = RuleSet::load(dir.path()).unwrap();
    assert_eq!(set.warnings().len(), 1);
    assert!(set.warnings()[0].to_string().contains(&expected));
    let r = req("POST", "/x").record(&set).unwrap();
    assert_eq!((r.service.as_str(), r.operation.as_str()), ("one", "a.x"));

    let empty = tempfile::tempdir().unwrap();
    let err = RuleSet::load(empty.path()).unwrap_err().to_string();
    assert!(
        err.ends_with("no rule files (*.yaml, *.yml) in this directory"),
        "{err}"
    );
}

// ---------------------------------------------------------------- matching

#[test]
fn most_specific_path_wins() {
    let set = load(&with_rules(
        r#"  - { operation: rest, method: POST, path: "/v1/{*any}" }
  - { operation: param, method: POST, path: "/v1/files/{id}" }
  - { operation: static, method: POST, path: /v1/files/special }
  - { operation: param-then-static, method: POST, path: "/v1/{kind}/special/x" }
  - { operation: static-then-param, method: POST, path: "/v1/files/{id}/x" }
"#,
    ));
    assert_eq!(
        req("POST", "/v1/files/special").operation(&set).as_deref(),
        Some("static")
    );
    assert_eq!(
        req("POST", "/v1/files/other").operation(&set).as_deref(),
        Some("param")
    );
    assert_eq!(
        req("POST", "/v1/a/b/c").operation(&set).as_deref(),
        Some("rest")
    );
    // Segment by segment from the left: `files` (static) beats `{kind}` at the second segment.
    assert_eq!(
        req("POST", "/v1/files/special/x")
            .operation(&set)
            .as_deref(),
        Some("static-then-param")
    );
    assert_eq!(
        req("POST", "/v1/dirs/special/x").operation(&set).as_deref(),
        Some("param-then-static")
    );
    assert_eq!(req("POST", "/v2/files/x").operation(&set), None);
}

#[test]
fn ties_go_to_file_order_and_when_falls_through() {
    let set = load(&with_rules(
        r#"  - { operation: asset.rename, method: PATCH, path: "/f/{id}", when: { body: /name } }
  - { operation: asset.move, method: PATCH, path: "/f/{fid}", when: { body: /folder } }
  - { operation: asset.update, method: PATCH, path: "/f/{x}" }
"#,
    ));
    let patch = |body| req("PATCH", "/f/1").body(body).operation(&set);
    assert_eq!(
        patch(r#"{"name":"a","folder":"b"}"#).as_deref(),
        Some("asset.rename")
    );
    assert_eq!(patch(r#"{"folder":"b"}"#).as_deref(), Some("asset.move"));
    assert_eq!(patch(r#"{"other":1}"#).as_deref(), Some("asset.update"));
    assert_eq!(patch("not json").as_deref(), Some("asset.update"));
}

#[test]
fn when_on_query_and_header() {
    let set = load(&with_rules(
        r#"  - { operation: hard.delete, method: DELETE, path: "/f/{id}", when: { query: permanent } }
  - { operation: sudo.delete, method: DELETE, path: "/f/{id}", when: { header: X-Sudo } }
  - { operation: soft.delete, method: DELETE, path: "/f/{id}" }
"#,
    ));
    assert_eq!(
        req("DELETE", "/f/1?permanent=1").operation(&set).as_deref(),
        Some("hard.delete")
    );
    assert_eq!(
        req("DELETE", "/f/1")
            .header("x-sudo", "1")
            .operation(&set)
            .as_deref(),
        Some("sudo.delete")
    );
    assert_eq!(
        req("DELETE", "/f/1").operation(&set).as_deref(),
        Some("soft.delete")
    );
}

#[test]
fn methods_come_from_the_rule_or_the_defaults() {
    let set = load(
        "version: 1\nservice: s\ndefaults: { methods: [POST, DELETE] }\nrules:\n  - { operation: a, path: /a }\n  - { operation: b, method: get, path: /b }\n",
    );
    assert_eq!(req("POST", "/a").operation(&set).as_deref(), Some("a"));
    assert_eq!(req("DELETE", "/a").operation(&set).as_deref(), Some("a"));
    assert_eq!(req("PUT", "/a").operation(&set), None);
    assert_eq!(req("GET", "/b").operation(&set).as_deref(), Some("b"));
    assert_eq!(req("POST", "/b").operation(&set), None);
    // Without defaults, a rule with no method covers POST, PUT, PATCH and DELETE.
    let set = load(&with_rules("  - { operation: a, path: /a }\n"));
    for m in ["POST", "PUT", "PATCH", "DELETE"] {
        assert_eq!(req(m, "/a").operation(&set).as_deref(), Some("a"), "{m}");
    }
    assert_eq!(req("GET", "/a").operation(&set), None);
    assert!(
        set.matches(&http::Method::from_bytes(b"PURGE").unwrap(), "/a")
            .is_none()
    );
}

#[test]
fn normalised_paths_cannot_slip_past_a_rule() {
    let set = load(&with_rules(
        "  - { operation: f.delete, method: DELETE, path: \"/v1/files/{id}\", resources: [{ type: file, id: \"{path.id}\" }] }\n",
    ));
    for path in [
        "/v1/files/x",
        "/v1/files/x/",
        "/v1//files/x",
        "/v1//files/../files/x",
        "/v1/./files/x",
        "/v1/%66iles/x",
        "/v1/files/%78",
        "/v1/other/%2e%2e/files/x",
        "/x/../v1/files/x?y=1",
    ] {
        let r = req("DELETE", path).record(&set);
        let r = r.unwrap_or_else(|| panic!("{path} must match"));
        assert_eq!(r.request.path, "/v1/files/x", "{path}");
        assert_eq!(r.resources[0].id.as_deref(), Some("x"), "{path}");
    }
    // An encoded slash is part of one segment, exactly as the upstream sees it.
    let r = req("DELETE", "/v1/files/a%2fb").record(&set).unwrap();
    assert_eq!(r.request.path, "/v1/files/a%2Fb");
    assert_eq!(r.resources[0].id.as_deref(), Some("a/b"));
}

#[test]
fn rest_parameters_capture_several_segments() {
    let set = load(&with_rules(
        r#"  - operation: secret.update
    method: PUT
    path: /api/repos/{*repo}/secrets/{key}
    resources: [{ type: secret, id: "{path.key}", path: "{path.repo}" }]
"#,
    ));
    let r = req("PUT", "/api/repos/acme/site/secrets/TOKEN")
        .record(&set)
        .unwrap();
    assert_eq!(
        r.resources,
        vec![Resource {
            kind: "secret".into(),
            id: Some("TOKEN".into()),
            path: Some("acme/site".into()),
            previous_path: None,
        }]
    );
    assert_eq!(req("PUT", "/api/repos/secrets/TOKEN").record(&set), None);
}

#[test]
fn unmatched_mutations_are_recorded_when_asked() {
    let text = "version: 1\nservice: s\ndefaults: { unmatched: record }\nrules:\n  - { operation: a, method: POST, path: /a }\n";
    let set = load(text);
    let r = req("DELETE", "/nothing/here")
        .status(Some(404))
        .record(&set)
        .unwrap();
    assert_eq!(r.operation, "unmatched");
    assert_eq!(r.rule, None);
    assert_eq!(r.request.route, None);
    assert_eq!(r.outcome, Outcome::Failure);
    assert!(set.matches(&http::Method::GET, "/nothing/here").is_none());
    let ignoring = load(&with_rules(
        "  - { operation: a, method: POST, path: /a }\n",
    ));
    assert!(
        ignoring
            .matches(&http::Method::DELETE, "/nothing")
            .is_none()
    );
}

// ---------------------------------------------------------------- evaluation

const MEDIA: &str = r#"version: 1
service: media-library
defaults:
  actor: ["{jwt/sub}", "{header.X-User-Id}"]
rules:
  - id: file-rename
    operation: asset.rename
    method: PATCH
    path: /v1/files/{fileId}/details
    resources:
      - { type: file, id: "{path.fileId}", path: "{body/filePath}" }
    details: { new_name: "{body/name}", dry_run: "{query.dry_run}", q: "{query.q}", size: "{body/size}", tags: "{body/tags | lower}" }
    description: "Renamed file {path.fileId} to {body/name}"
  - operation: tag.add
    method: POST
    path: /v1/files/addTags
    resources: [{ type: file, id: "{body/fileIds}", path: "{body/paths}" }]
  - operation: asset.create
    method: POST
    path: /v1/files
    resources: [{ type: file, id: "{response/fileId}" }]
"#;

#[test]
fn the_full_record() {
    let set = load(MEDIA);
    let time = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap()
        + chrono::Duration::microseconds(123456);
    let record = req("PATCH", "/v1/files/abc/details?dry_run=yes%21&q=a+b")
        .header("authorization", &bearer(json!({"sub": "u_123"})))
        .header("x-request-id", "req-1")
        .header("user-agent", "curl/8.5.0")
        .body(r#"{"name": "tree.png", "filePath": "/forest/tree.png", "size": 42, "tags": ["Red", "BLUE"]}"#)
        .record_with(&set, |call| {
            call.time = time;
            call.duration = Duration::from_micros(3210);
            call.client_ip = ClientIpMode::Anonymized.render("203.0.113.77".parse().unwrap());
        })
        .unwrap();
    let mut json = serde_json::to_value(&record).unwrap();
    let id = json["id"].take();
    assert_eq!(
        json,
        json!({
            "schema": 1,
            "id": null,
            "time": "2026-11-22T10:00:00.123456Z",
            "duration_ms": 3.21,
            "service": "media-library",
            "operation": "asset.rename",
            "rule": "file-rename",
            "description": "Renamed file abc to tree.png",
            "actor": { "id": "u_123", "source": "jwt/sub" },
            "request": { "id": "req-1", "method": "PATCH", "path": "/v1/files/abc/details",
                         "route": "/v1/files/{fileId}/details", "client_ip": "203.0.113.0",
                         "user_agent": "curl/8.5.0" },
            "resources": [ { "type": "file", "id": "abc", "path": "/forest/tree.png" } ],
            "response": { "status": 200 },
            "outcome": "success",
            "details": { "new_name": "tree.png", "dry_run": "yes!", "q": "a b", "size": 42, "tags": ["red", "blue"] }
        })
    );
    // The id is a UUIDv7 carrying the arrival time.
    let id: uuid::Uuid = serde_json::from_value(id).unwrap();
    assert_eq!(id.get_version_num(), 7);
    let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
    assert_eq!((secs, nanos / 1_000_000), (time.timestamp() as u64, 123));
}

#[test]
fn a_borrowed_record_serialises_as_its_owned_copy() {
    let set = load(&format!(
        "{MEDIA}  - operation: file.delete\n    method: DELETE\n    path: /v1/files/{{id}}\n    \
         actor: [\"{{header.X-User-Id}}\"]\n    details: {{ z: \"{{path.id}}\", a: \"é\\\"\\n\" }}\n"
    ));
    let token = bearer(json!({"sub": "u_\"1"}));
    let requests = [
        req("PATCH", "/v1/files/abc/details?dry_run=1")
            .header("authorization", &token)
            .header("user-agent", "ag\u{e9}nt")
            .body(r#"{"name": "t\u00e9\"e", "filePath": "/a/b", "size": 4.5, "tags": ["A"]}"#),
        req("POST", "/v1/files/addTags").body(r#"{"fileIds": ["a", "b"], "paths": ["/x"]}"#),
        req("POST", "/v1/files").status(None),
        req("DELETE", "/v1/files/x%20y").header("x-user-id", "u_9"),
        // A tab in a header value: the one string here that must be escaped.
        req("DELETE", "/v1/files/%22q%5C").header("x-user-id", "u\t9"),
    ];
    for request in requests {
        // `record` asserts that both forms write the same bytes.
        request.record(&set).expect("a record");
    }
    let r = req("DELETE", "/v1/files/x%20y")
        .header("x-user-id", "u_9")
        .record(&set)
        .unwrap();
    let json = serde_json::to_value(&r).unwrap();
    // Details in name order, whatever order the rule wrote them in.
    let names: Vec<&String> = json["details"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["a", "z"]);
    assert_eq!(json["details"]["a"], "é\"\n");
}

#[test]
fn actor_sources_in_order() {
    let set = load(MEDIA);
    let call = |r: Req<'_>| r.record(&set).unwrap().actor;
    let base = || req("POST", "/v1/files");
    assert_eq!(
        call(base().header("x-user-id", "u_h")),
        Some(Actor {
            id: Some("u_h".into()),
            source: "header.X-User-Id".into()
        })
    );
    let token = bearer(json!({"sub": "u_j"}));
    assert_eq!(
        call(
            base()
                .header("x-user-id", "u_h")
                .header("authorization", &token)
        ),
        Some(Actor {
            id: Some("u_j".into()),
            source: "jwt/sub".into()
        })
    );
    // A token without `sub`, or not a JWT at all, falls through to the next source.
    let no_sub = bearer(json!({"name": "x"}));
    assert_eq!(
        call(
            base()
                .header("x-user-id", "u_h")
                .header("authorization", &no_sub)
        )
        .and_then(|a| a.id),
        Some("u_h".into())
    );
    assert_eq!(call(base().header("authorization", "Bearer garbage")), None);
    assert_eq!(call(base()), None);

    // Verified claims say so by not being marked; refused claims are not read at all.
    let mut r = base().header("authorization", &token);
    r.verified = Some(Some(json!({"sub": "u_v"})));
    let a = r.record(&set).unwrap().actor;
    assert_eq!(
        a,
        Some(Actor {
            id: Some("u_v".into()),
            source: "jwt/sub".into()
        })
    );
    r.verified = Some(None);
    let a = r.record(&set).unwrap().actor;
    assert_eq!(a, None);
}

#[test]
fn request_ids_are_read_or_generated() {
    let set = load(MEDIA);
    let found = set.matches(&http::Method::POST, "/v1/files").unwrap();
    assert_eq!(found.request_id_header().as_str(), "x-request-id");
    let mut headers = http::HeaderMap::new();
    headers.insert("x-request-id", http::HeaderValue::from_static("abc-123"));
    assert_eq!(found.request_id(&headers), "abc-123");
    let generated = found.request_id(&http::HeaderMap::new());
    let uuid: uuid::Uuid = generated.parse().unwrap();
    assert_eq!(uuid.get_version_num(), 7);
    // A value no one should have to store is replaced.
    let long = "x".repeat(200);
    headers.insert("x-request-id", http::HeaderValue::from_str(&long).unwrap());
    assert_ne!(found.request_id(&headers), long);
    headers.insert("x-request-id", http::HeaderValue::from_static("has space"));
    assert_ne!(found.request_id(&headers), "has space");

    let custom = load(
        "version: 1\nservice: s\ndefaults: { request_id: X-Trace }\nrules:\n  - { operation: a, method: POST, path: /a }\n",
    );
    let r = req("POST", "/a")
        .header("x-trace", "t-1")
        .record(&custom)
        .unwrap();
    assert_eq!(r.request.id, "t-1");
}

#[test]
fn resources_expand_arrays() {
    let set = load(MEDIA);
    let r = req("POST", "/v1/files/addTags")
        .body(r#"{"fileIds": ["a", "b", 7], "paths": ["/x/a", "/x/b"]}"#)
        .record(&set)
        .unwrap();
    let got: Vec<(Option<&str>, Option<&str>)> = r
        .resources
        .iter()
        .map(|r| (r.id.as_deref(), r.path.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("a"), Some("/x/a")),
            (Some("b"), Some("/x/b")),
            (Some("7"), None)
        ]
    );
    let r = req("POST", "/v1/files/addTags")
        .body(r#"{"fileIds": []}"#)
        .record(&set)
        .unwrap();
    assert!(r.resources.is_empty());
}

#[test]
fn response_sources_and_missing_values() {
    let set = load(MEDIA);
    let r = req("POST", "/v1/files")
        .status(Some(201))
        .response(r#"{"fileId": "f_9"}"#)
        .record(&set)
        .unwrap();
    assert_eq!(r.resources[0].id.as_deref(), Some("f_9"));
    // No response body: the resource is left out, not invented.
    let r = req("POST", "/v1/files")
        .status(Some(500))
        .record(&set)
        .unwrap();
    assert!(r.resources.is_empty());
    assert_eq!(r.outcome, Outcome::Failure);
    // A missing body leaves out details and the description, never half-filled.
    let r = req("PATCH", "/v1/files/abc/details").record(&set).unwrap();
    assert!(r.details.is_empty(), "{:?}", r.details);
    assert_eq!(r.description, None);
    assert_eq!(r.resources[0].id.as_deref(), Some("abc"));
    assert_eq!(r.resources[0].path, None);
}

#[test]
fn outcomes() {
    let set = load(MEDIA);
    let base = || req("POST", "/v1/files");
    assert_eq!(
        base().status(Some(201)).record(&set).unwrap().outcome,
        Outcome::Success
    );
    assert_eq!(
        base().status(Some(403)).record(&set).unwrap().outcome,
        Outcome::Failure
    );
    assert_eq!(
        base().status(None).record(&set).unwrap().outcome,
        Outcome::Aborted
    );
    let r = base()
        .status(Some(502))
        .record_with(&set, |c| c.outcome = Some(Outcome::Error))
        .unwrap();
    assert_eq!((r.outcome, r.response.status), (Outcome::Error, Some(502)));
}

#[test]
fn client_ip_modes() {
    let v4 = "198.51.100.23".parse().unwrap();
    let v6 = "2001:db8:aaaa:bbbb:cccc::1".parse().unwrap();
    assert_eq!(
        ClientIpMode::Full.render(v4).as_deref(),
        Some("198.51.100.23")
    );
    assert_eq!(
        ClientIpMode::Anonymized.render(v4).as_deref(),
        Some("198.51.100.0")
    );
    assert_eq!(
        ClientIpMode::Anonymized.render(v6).as_deref(),
        Some("2001:db8:aaaa::")
    );
    assert_eq!(ClientIpMode::None.render(v6), None);
    // Written as `Ipv4Addr`'s Display writes them, every octet width included.
    for text in ["0.0.0.0", "9.10.99.100", "255.255.255.255", "1.20.200.7"] {
        let ip: std::net::IpAddr = text.parse().unwrap();
        assert_eq!(ClientIpMode::Full.render(ip).as_deref(), Some(text));
    }
    // An IPv4 client seen through a dual-stack socket is an IPv4 client.
    let mapped = "::ffff:198.51.100.77".parse().unwrap();
    assert_eq!(
        ClientIpMode::Anonymized.render(mapped).as_deref(),
        Some("198.51.100.0")
    );
    assert_eq!(
        ClientIpMode::Full.render(mapped).as_deref(),
        Some("198.51.100.77")
    );
}

#[test]
fn match_tells_the_capturing_side_what_to_collect() {
    let set = load(
        r#"version: 1
service: s
rules:
  - { operation: a, method: POST, path: /a, details: { n: "{body/n}" } }
  - { operation: b, method: POST, path: /b, resources: [{ type: t, id: "{response/id}" }] }
  - { operation: c, method: POST, path: /c, on_queue_failure: closed }
  - { operation: d, method: POST, path: /d, when: { body: /x } }
"#,
    );
    let m = |p| set.matches(&http::Method::POST, p).unwrap();
    assert!(m("/a").needs_request_body() && !m("/a").needs_response_body());
    assert!(!m("/b").needs_request_body() && m("/b").needs_response_body());
    assert!(m("/d").needs_request_body());
    assert_eq!(m("/a").on_queue_failure(), OnQueueFailure::Open);
    assert_eq!(m("/c").on_queue_failure(), OnQueueFailure::Closed);
    assert_eq!(m("/c").operation(), "c");
}

proptest! {
    #[test]
    fn matching_any_input_never_panics(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE", "PURGE"]),
        path in ".{0,80}",
        body in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let set = load(MEDIA);
        let method = http::Method::from_bytes(method.as_bytes()).unwrap();
        if let Some(found) = set.matches(&method, &path) {
            let uri = http::Uri::from_static("/");
            let headers = http::HeaderMap::new();
            let mut call = Call::new(&method, &uri, &headers);
            call.request_body = Some(&body);
            let _ = found.record(&call);
        }
    }
}

#[test]
fn record_headers_keep_what_templates_read_and_nothing_else() {
    let set = load(&format!(
        "{}defaults: {{ actor: [\"{{jwt/sub}}\"], tenant: \"{{header.X-Org-Id}}\" }}\n",
        with_rules(
            "  - operation: tag.add\n    method: POST\n    path: /tags\n    \
             actor: [\"{header.X-User-Id}\"]\n    details: { tenant: \"{header.X-Tenant}\" }\n  \
             - operation: tag.mark\n    method: POST\n    path: /marks\n    when: { header: X-Dry-Run }\n",
        )
    ));
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("user-agent", "curl/8"),
        ("authorization", "Bearer x"),
        ("x-user-id", "u_1"),
        ("x-tenant", "acme"),
        ("x-tenant", "beta"),
        ("x-dry-run", "1"),
        ("x-org-id", "acme"),
        ("cookie", "session=secret"),
        ("accept", "*/*"),
    ] {
        headers.append(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    let found = set
        .matches(&http::Method::POST, "/tags")
        .expect("the rule matches");
    let kept = found.record_headers(&headers);
    let mut names: Vec<&str> = kept.keys().map(http::HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "authorization",
            "user-agent",
            "x-dry-run",
            "x-org-id",
            "x-tenant",
            "x-user-id"
        ]
    );
    assert_eq!(kept.get_all("x-tenant").iter().count(), 2);
}

#[test]
fn parameter_names_may_hold_hyphens_as_openapi_specs_write_them() {
    let set = load(&with_rules(
        "  - operation: a.delete\n    method: DELETE\n    path: /v1/files/{file-id}\n    resources: [{ type: file, id: \"{path.file-id}\" }]\n",
    ));
    let r = req("DELETE", "/v1/files/f-7").record(&set).unwrap();
    assert_eq!(r.resources[0].id.as_deref(), Some("f-7"));
    assert_eq!(r.request.route.as_deref(), Some("/v1/files/{file-id}"));
}

#[test]
fn values_over_4_kib_from_the_client_are_left_out() {
    let set = load(&with_rules(
        "  - operation: a.delete\n    method: DELETE\n    path: /x/{id}\n    details: { ticket: \"{header.X-Ticket}\", why: \"{query.why}\" }\n",
    ));
    let at_limit: &'static str = Box::leak("t".repeat(MAX_VALUE_BYTES).into_boxed_str());
    let over: &'static str = Box::leak("t".repeat(MAX_VALUE_BYTES + 1).into_boxed_str());
    let uri = |why: &str| -> &'static str { Box::leak(format!("/x/1?why={why}").into_boxed_str()) };
    let r = req("DELETE", uri(at_limit))
        .header("X-Ticket", at_limit)
        .record(&set)
        .unwrap();
    assert_eq!(
        r.details["ticket"].as_str().map(str::len),
        Some(MAX_VALUE_BYTES)
    );
    assert_eq!(
        r.details["why"].as_str().map(str::len),
        Some(MAX_VALUE_BYTES)
    );
    let r = req("DELETE", uri(over))
        .header("X-Ticket", over)
        .record(&set)
        .unwrap();
    assert!(r.details.is_empty(), "{:?}", r.details);
}

#[test]
fn check_messages_say_what_to_write() {
    let e = error(&with_rules(
        "  - operation: a.b\n    method: POST\n    path: /x\n    details: { d: \"{path}\" }\n",
    ));
    assert!(e.ends_with("\"path\" needs a name, as in path.id"), "{e}");
    let e = error(&with_rules(
        "  - operation: a.b\n    method: POST\n    path: /x\n    when: { body: name.first }\n",
    ));
    assert!(
        e.ends_with("`when.body` is a JSON pointer, starting with '/': write \"/name/first\", not \"name.first\""),
        "{e}"
    );
    let e = error(&with_rules(
        "  - operation: a.b\n    method: POST\n    path: /x\n    when: { query: \"\" }\n",
    ));
    assert!(e.contains("`when.query` names no parameter"), "{e}");
    // Every bad template of an actor list, at once.
    let all = errors(&with_rules(
        "  - operation: a.b\n    method: POST\n    path: /x\n    actor: [\"{jwt/sub\", \"{header.X | upper}\"]\n",
    ));
    assert_eq!(all.len(), 2, "{all:#?}");
}

#[test]
fn a_file_named_twice_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.yaml");
    std::fs::write(
        &file,
        "version: 1\nservice: one\nrules:\n  - { operation: a.x, method: POST, path: /x }\n",
    )
    .unwrap();
    let set = RuleSet::loader()
        .check_only()
        .load_all(&[dir.path().to_path_buf(), file])
        .unwrap();
    assert_eq!(set.summary().files, 1);
}

#[test]
fn methods_match_whatever_their_case_as_permissive_upstreams_read_them() {
    let set = load(&with_rules(
        "  - { operation: asset.delete, method: DELETE, path: \"/v1/files/{id}\" }\n",
    ));
    for method in ["DELETE", "delete", "Delete", "dElEtE"] {
        let record = req(method, "/v1/files/abc").record(&set);
        let record = record.unwrap_or_else(|| panic!("{method} must be audited"));
        assert_eq!(record.operation, "asset.delete");
        // The record says what the client sent.
        assert_eq!(record.request.method, method);
    }
    // A method no rule names, in any case, still matches nothing.
    assert_eq!(req("purge", "/v1/files/abc").operation(&set), None);
    assert_eq!(req("post", "/v1/files/abc").operation(&set), None);
}

#[test]
fn unmatched_record_catches_a_lower_case_mutation() {
    let set = load(
        "version: 1\nservice: svc\ndefaults: { unmatched: record }\nrules:\n  - { operation: a.b, method: POST, path: /x }\n",
    );
    let record = req("patch", "/elsewhere").record(&set).unwrap();
    assert_eq!(record.operation, UNMATCHED_OPERATION);
    assert_eq!(record.request.method, "patch");
    assert_eq!(req("get", "/elsewhere").operation(&set), None);
}

const ORGANISATION_RULES: &str = r#"
version: 1
service: media-library
defaults:
  tenant: "{header.X-Org-Id}"
rules:
  - operation: asset.rename
    method: PATCH
    path: /v1/files/{fileId}/details
    before: "/v1/files/{path.fileId}/details"
    changes:
      name: { from: "{before/name}", to: "{body/name}" }
      tags: { to: "{body/tags}" }
    resources:
      - { type: file, id: "{path.fileId}", path: "{response/filePath}", previous_path: "{before/filePath}" }
  - operation: member.remove
    method: DELETE
    path: /api/organizations/{org}/members/{user}
    tenant: "{path.org}"
    resources: [{ type: member, id: "{path.user}" }]
"#;

#[test]
fn tenant_changes_and_previous_path_are_recorded() {
    let set = load(ORGANISATION_RULES);
    let rename = req("PATCH", "/v1/files/abc/details")
        .header("X-Org-Id", "acme")
        .body(r#"{"name": "oak.png", "tags": ["t"]}"#)
        .response(r#"{"filePath": "/forest/oak.png"}"#);
    let before = br#"{"name": "tree.png", "filePath": "/forest/tree.png"}"#;
    let r = rename
        .record_with(&set, |call| call.before = Some(before))
        .unwrap();
    assert_eq!(r.tenant.as_deref(), Some("acme"));
    assert_eq!(
        serde_json::Value::Object(r.changes.clone()),
        serde_json::json!({"name": {"from": "tree.png", "to": "oak.png"}, "tags": {"to": ["t"]}})
    );
    assert_eq!(r.resources[0].path.as_deref(), Some("/forest/oak.png"));
    assert_eq!(
        r.resources[0].previous_path.as_deref(),
        Some("/forest/tree.png")
    );
    assert_eq!(r.capture, None, "the before answer was read");

    // No answer to the before GET: `from` is left out, and `capture` says why.
    let r = rename.record_with(&set, |_| {}).unwrap();
    assert_eq!(
        serde_json::Value::Object(r.changes.clone()),
        serde_json::json!({"name": {"to": "oak.png"}, "tags": {"to": ["t"]}})
    );
    assert_eq!(r.capture.unwrap().before, Some(BodyNote::Failed));
    assert_eq!(r.resources[0].previous_path, None);
    // A call that does not set a field did not change it: no `tags` change, and no lone
    // `from` for the name.
    let r = req("PATCH", "/v1/files/abc/details")
        .header("X-Org-Id", "acme")
        .body(r#"{"description": "an oak"}"#)
        .record_with(&set, |call| call.before = Some(before))
        .unwrap();
    assert!(r.changes.is_empty(), "{:?}", r.changes);
    // A field set to null was cleared: its change says so.
    let r = req("PATCH", "/v1/files/abc/details")
        .header("X-Org-Id", "acme")
        .body(r#"{"tags": null}"#)
        .record_with(&set, |call| call.before = Some(before))
        .unwrap();
    assert_eq!(
        serde_json::Value::Object(r.changes.clone()),
        serde_json::json!({"tags": {"to": null}})
    );
    // A body that could not be read keeps what is known from before the call.
    let r = req("PATCH", "/v1/files/abc/details")
        .header("X-Org-Id", "acme")
        .body("{not json")
        .record_with(&set, |call| call.before = Some(before))
        .unwrap();
    assert_eq!(
        serde_json::Value::Object(r.changes.clone()),
        serde_json::json!({"name": {"from": "tree.png"}})
    );
    // An answer that is not JSON: unreadable.
    let r = rename
        .record_with(&set, |call| call.before = Some(b"<html>"))
        .unwrap();
    assert_eq!(r.capture.unwrap().before, Some(BodyNote::Unreadable));

    // A rule's own tenant wins over the default.
    let removed = req("DELETE", "/api/organizations/huggingface/members/u1")
        .header("X-Org-Id", "acme")
        .record(&set)
        .unwrap();
    assert_eq!(removed.tenant.as_deref(), Some("huggingface"));
    // No tenant source: no tenant.
    let r = req("PATCH", "/v1/files/abc/details").record(&set).unwrap();
    assert_eq!(r.tenant, None);
}

#[test]
fn before_targets_are_paths_of_this_api() {
    let set = load(ORGANISATION_RULES);
    let uri: http::Uri = "/v1/files/abc/details".parse().unwrap();
    let headers = http::HeaderMap::new();
    let found = set.matches(&http::Method::PATCH, uri.path()).unwrap();
    let call = Call::new(&http::Method::PATCH, &uri, &headers);
    assert!(found.has_before());
    assert_eq!(
        found.before_target(&call).as_deref(),
        Some("/v1/files/abc/details")
    );
    // A path parameter that would make the target leave this API (`//evil`): no target.
    let uri: http::Uri = "/v1/files/%2F%2Fevil/details".parse().unwrap();
    let found = set.matches(&http::Method::PATCH, uri.path()).unwrap();
    let call = Call::new(&http::Method::PATCH, &uri, &headers);
    let target = found.before_target(&call);
    assert!(
        target.as_deref().is_none_or(|t| !t.starts_with("//")),
        "{target:?}"
    );
}

#[test]
fn new_keys_are_checked_with_their_place() {
    let e = error(&with_rules(
        "  - operation: a.b\n    method: GET\n    path: /x/{id}\n    before: \"/x/{path.id}\"\n",
    ));
    assert!(
        e.starts_with("rules.yaml:7:13: `before` records what a call changes, and a GET or HEAD changes nothing"),
        "{e}"
    );
    let e = error(&with_rules(
        "  - operation: a.b\n    method: PATCH\n    path: /x/{id}\n    changes: { name: { from: \"{before/name}\" } }\n",
    ));
    assert!(
        e.starts_with("rules.yaml:7:32: \"before/name\" reads the answer of the rule's `before:` GET, and this rule has none"),
        "{e}"
    );
    let e = error(&with_rules(
        "  - operation: a.b\n    method: PATCH\n    path: /x/{id}\n    before: \"/x/{body/id}\"\n",
    ));
    assert!(e.contains("cannot read \"body/id\""), "{e}");
    let e = error(&with_rules(
        "  - operation: a.b\n    path: /x/{id}\n    resources: [{ type: file, id: \"{path.id}\", previous_path: \"{body/old}\" }]\n",
    ));
    assert!(
        e.starts_with("rules.yaml:6:")
            && e.contains(
                "`previous_path` says where a resource was before the call, so it needs `path`"
            ),
        "{e}"
    );
    let all = errors(&with_rules(
        "  - operation: a.b\n    path: /x\n    changes: { name: { form: \"{body/a}\" } }\n",
    ));
    assert!(
        all.iter()
            .any(|e| e.contains("unknown key \"form\" in a change (did you mean \"from\"?)")),
        "{all:?}"
    );
    let e = error(&with_rules(
        "  - operation: a.b\n    path: /x/{id}\n    changes: { name: { to: \"{path.nope}\" } }\n",
    ));
    assert!(e.contains("unknown path parameter \"nope\""), "{e}");
}
