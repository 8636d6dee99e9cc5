//! `auditgate rules check` and `auditgate rules test` as a user runs them: the real binary,
//! real files, exit codes and the exact text printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn auditgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(args)
        .output()
        .expect("run auditgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write file");
    path
}

const RULES: &str = r#"version: 1
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
    details: { new_name: "{body/name}" }
    description: "Renamed file {path.fileId} to {body/name}"
  - operation: tag.add
    method: POST
    path: /v1/files/addTags
    resources: [{ type: file, id: "{body/fileIds}" }]
  - operation: secret.update
    method: PUT
    path: /api/repos/{*repo}/secrets/{key}
    details: { value: "{body/value | hmac}" }
    on_queue_failure: closed
"#;

#[test]
fn check_accepts_a_valid_file_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let out = auditgate(&["rules", "check", rules.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "ok: 1 rule file, 3 rules, 3 operations\n"
    );
}

#[test]
fn check_reports_every_problem_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        "version: 1\nservice: s\nrules:\n  - operation: a.b\n    methd: POST\n    path: /x/{id}\n  - operation: c.d\n    method: DELET\n    path: /y\n    resources: [{ type: t, id: \"{path.id}\" }]\n",
    );
    let out = auditgate(&["rules", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let f = bad.display();
    assert_eq!(
        text(&out.stderr),
        format!(
            "{f}:5:5: unknown key \"methd\" in a rule (did you mean \"method\"?)\n\
             {f}:8:13: unknown method \"DELET\" (did you mean \"DELETE\"?): use one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, CONNECT, TRACE\n\
             {f}:10:34: unknown path parameter \"id\": the rule's path has no parameters\n\
             3 problems found\n"
        )
    );
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn check_reads_several_paths_and_directories_as_one_set() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        "version: 1\nservice: a\nrules:\n  - { operation: x, method: POST, path: /x }\n",
    );
    write(
        dir.path(),
        "b.yaml",
        "version: 1\nservice: b\nrules:\n  - { operation: x, method: POST, path: /x }\n",
    );
    let out = auditgate(&["rules", "check", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("b.yaml:4:7: rule \"x#2\" can never match: rule \"x\" at"),
        "{}",
        text(&out.stderr)
    );
    let missing = dir.path().join("nope.yaml");
    let out = auditgate(&["rules", "check", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with(&format!("{}: No such file", missing.display())));
}

#[test]
fn the_example_rule_sets_are_valid() {
    // The model products' sets (the demo's), and the generic ones the layer's example uses.
    for dir in ["../examples/rules", "../examples/generic-rules"] {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let out = auditgate(&["rules", "check", examples.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{dir}: {}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with("ok: 2 rule files, "), "{dir}");
    }
}

#[test]
fn test_prints_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let key = write(dir.path(), "hmac.key", "k3y\n");
    let out = auditgate(&[
        "rules",
        "test",
        rules.to_str().unwrap(),
        "--method",
        "PATCH",
        "--path",
        "/v1//files/abc/details/",
        "--header",
        "X-User-Id: u_9",
        "--header",
        "X-Request-Id: req-7",
        "--body",
        r#"{"name": "tree.png", "filePath": "/forest/tree.png"}"#,
        "--status",
        "403",
        "--hmac-key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["operation"], "asset.rename");
    assert_eq!(record["rule"], "file-rename");
    assert_eq!(record["service"], "media-library");
    assert_eq!(record["description"], "Renamed file abc to tree.png");
    assert_eq!(record["actor"]["id"], "u_9");
    assert_eq!(record["actor"]["source"], "header.X-User-Id");
    assert_eq!(record["request"]["id"], "req-7");
    assert_eq!(record["request"]["path"], "/v1/files/abc/details");
    assert_eq!(record["request"]["route"], "/v1/files/{fileId}/details");
    assert_eq!(
        record["resources"],
        serde_json::json!([{ "type": "file", "id": "abc", "path": "/forest/tree.png" }])
    );
    assert_eq!(record["details"]["new_name"], "tree.png");
    assert_eq!(record["response"]["status"], 403);
    assert_eq!(record["outcome"], "failure");
}

#[test]
fn test_hashes_secrets_with_the_key_and_leaves_them_out_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let args = [
        "rules",
        "test",
        rules.to_str().unwrap(),
        "--method",
        "PUT",
        "--path",
        "/api/repos/acme/site/secrets/TOKEN",
        "--body",
        r#"{"value": "hunter2"}"#,
    ];
    let out = auditgate(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("warning: ")
            && text(&out.stderr).contains("uses `| hmac` but no HMAC key was given"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("hunter2"));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["operation"], "secret.update");
    assert!(record["details"].get("value").is_none(), "{record}");

    // HMAC-SHA256("key", "hunter2"), computed independently:
    //   printf hunter2 | openssl dgst -sha256 -hmac key
    let key = write(dir.path(), "hmac.key", "key");
    let mut with_key = args.to_vec();
    with_key.extend(["--hmac-key-file", key.to_str().unwrap()]);
    let out = auditgate(&with_key);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        record["details"]["value"],
        "05d210d8af05129cb4bc04565faa72f94362ebaf20427cdf098059b5429d95bf"
    );
    assert!(!text(&out.stdout).contains("hunter2"));
}

#[test]
fn test_exits_2_when_no_rule_matches() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let key = write(dir.path(), "hmac.key", "k");
    let out = auditgate(&[
        "rules",
        "test",
        rules.to_str().unwrap(),
        "--method",
        "GET",
        "--path",
        "/v1/files/abc/details",
        "--hmac-key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "no rule matches\n");

    // A rule whose path matches but whose `when` does not: the same answer, and why on stderr.
    let guarded = write(
        dir.path(),
        "guarded.yaml",
        "version: 1\nservice: s\nrules:\n  - { operation: a.rename, method: PATCH, path: \"/v1/files/{id}\", when: { body: /name } }\n",
    );
    // A PATCH without the `name` the rules' `when` asks for.
    let patch_without_name = |rules: &Path| {
        auditgate(&[
            "rules",
            "test",
            rules.to_str().unwrap(),
            "--method",
            "PATCH",
            "--path",
            "/v1/files/abc",
            "--body",
            "{}",
        ])
    };
    let out = patch_without_name(&guarded);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "no rule matches\n");
    assert!(
        text(&out.stderr)
            .contains("a.rename /v1/files/{id} matched the path, but its `when` does not hold"),
        "{}",
        text(&out.stderr)
    );

    // With `unmatched: record`, the call is recorded as `unmatched`, and stderr says why.
    let caught = write(
        dir.path(),
        "caught.yaml",
        "version: 1\nservice: s\ndefaults: { unmatched: record }\nrules:\n  - { operation: a.rename, method: PATCH, path: \"/v1/files/{id}\", when: { body: /name } }\n",
    );
    let out = patch_without_name(&caught);
    assert_eq!(out.status.code(), Some(0));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["operation"], "unmatched");
    assert!(
        text(&out.stderr).contains("its `when` does not hold: recorded as `unmatched`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_is_everywhere() {
    for args in [
        &["--help"][..],
        &["rules", "--help"],
        &["rules", "check", "--help"],
        &["rules", "test", "--help"],
    ] {
        let out = auditgate(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(text(&out.stdout).contains("Usage: auditgate"), "{args:?}");
    }
}

#[test]
fn coverage_lists_the_mutating_operations_no_rule_records() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.yaml",
        "version: 1\nservice: media\nrules:\n  - { operation: asset.delete, method: DELETE, path: \"/v1/files/{fileId}\" }\n  - { operation: asset.rename, method: PATCH, path: \"/v1/files/{fileId}\", when: { body: /name } }\n  - { operation: legacy.copy, method: POST, path: /v0/copy }\n  - { operation: file.read, method: GET, path: \"/v1/files/{fileId}\" }\n  - { operation: asset.remove, method: DELETE, path: \"/v1/files/{other}\" }\n",
    );
    let spec = write(
        dir.path(),
        "openapi.yaml",
        "openapi: 3.0.3\nservers: [{ url: \"https://media.example.com/v1\" }]\npaths:\n  /files/{id}:\n    get: { operationId: getFile }\n    delete: { operationId: deleteFile }\n    patch: { operationId: updateFile }\n  /files/{id}/copy:\n    post: { operationId: copyFile }\n",
    );
    let args = |spec: &Path| {
        auditgate(&[
            "rules",
            "coverage",
            rules.to_str().unwrap(),
            "--openapi",
            spec.to_str().unwrap(),
        ])
    };
    let out = args(&spec);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("3 mutating operations; 1 recorded by a rule, 1 only when a rule's `when` holds, 0 as `unmatched`, 1 not recorded"),
        "{stdout}"
    );
    let section = |title: &str| {
        stdout
            .split("\n\n")
            .find(|s| s.starts_with(title))
            .unwrap_or_else(|| panic!("no {title:?} in {stdout}"))
            .to_owned()
    };
    assert!(
        section("not recorded").contains("POST   /v1/files/{id}/copy  copyFile"),
        "{stdout}"
    );
    assert!(
        section("recorded only when").contains("PATCH  /v1/files/{id}"),
        "{stdout}"
    );
    assert!(
        section("recorded only when").contains("asset.rename ("),
        "{stdout}"
    );
    assert!(
        section("rules no operation").contains("legacy.copy POST /v0/copy"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("getFile"),
        "GET is not a mutation: {stdout}"
    );
    assert!(
        !stdout.contains("file.read"),
        "a GET rule is not stale: {stdout}"
    );
    // A rule another one shadows loads (with a warning), and nothing reaches it.
    assert!(
        section("rules no operation").contains("asset.remove DELETE"),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("\"asset.remove\" can never match"),
        "{}",
        text(&out.stderr)
    );

    // Every mutating operation with a rule: exit 0.
    let covered = write(
        dir.path(),
        "covered.json",
        r#"{"swagger": "2.0", "basePath": "/v1", "paths": {"/files/{f}": {"delete": {}}}}"#,
    );
    let out = args(&covered);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // Not a description: exit 2 (not a gap) and why.
    let out = args(&rules);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not an OpenAPI description"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn test_refuses_a_status_no_server_sends() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let out = auditgate(&[
        "rules",
        "test",
        rules.to_str().unwrap(),
        "--method",
        "DELETE",
        "--path",
        "/v1/files/abc",
        "--status",
        "99",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("100..=599"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn test_takes_the_before_answer_and_shows_the_changes() {
    let examples =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/generic-rules/media-library.yaml");
    let out = auditgate(&[
        "rules",
        "test",
        examples.to_str().unwrap(),
        "--method",
        "PATCH",
        "--path",
        "/v1/files/abc/details",
        "--body",
        r#"{"name": "oak.png"}"#,
        "--response",
        r#"{"filePath": "/forest/oak.png"}"#,
        "--before",
        r#"{"name": "tree.png", "filePath": "/forest/tree.png"}"#,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("before: GET /v1/files/abc/details"),
        "{}",
        text(&out.stderr)
    );
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        record["changes"],
        serde_json::json!({"name": {"from": "tree.png", "to": "oak.png"}})
    );
    assert_eq!(record["resources"][0]["previous_path"], "/forest/tree.png");
    assert!(record.get("capture").is_none(), "{record}");

    // Without --before: what a failed GET leaves.
    let out = auditgate(&[
        "rules",
        "test",
        examples.to_str().unwrap(),
        "--method",
        "PATCH",
        "--path",
        "/v1/files/abc/details",
        "--body",
        r#"{"name": "oak.png"}"#,
    ]);
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        record["changes"],
        serde_json::json!({"name": {"to": "oak.png"}})
    );
    assert_eq!(record["capture"]["before"], "failed");
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    // `auditgate rules check … | head -0`: the pipe's reader is gone before anything is
    // written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rules");
    let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["rules", "check", examples.to_str().unwrap()])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(141), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}
