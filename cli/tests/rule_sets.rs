//! The two model rule sets, `examples/rules/imagekit.yaml` and `examples/rules/huggingface.yaml`,
//! against the calls their products' SDKs really send: `auditgate rules test` for every case
//! of `tests/rule-cases/*.yaml` (the path, the body fields, the answer), each checked for its
//! operation, tenant and resources; every rule reached by a case; and `auditgate rules
//! coverage` against each product's API description, with no mutating operation left out.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn auditgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("run auditgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A YAML value as JSON (the case files are YAML for reading; the command takes JSON).
fn json_of(yaml: &serde_yaml_ng::Value) -> Value {
    serde_json::to_value(yaml).unwrap()
}

/// The rule names records carry, in file order: `id`, else the operation, with `#2`, `#3`...
/// for a name used again.
fn rule_names(rules_file: &Path) -> Vec<String> {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(rules_file).unwrap()).unwrap();
    let mut names = Vec::new();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for rule in doc["rules"].as_sequence().unwrap() {
        let base = rule["id"]
            .as_str()
            .or(rule["operation"].as_str())
            .unwrap()
            .to_owned();
        let n = seen.entry(base.clone()).or_insert(0);
        *n += 1;
        names.push(if *n == 1 { base } else { format!("{base}#{n}") });
    }
    names
}

/// Whether `record` has a resource with every field of `wanted`.
fn has_resource(record: &Value, wanted: &Value) -> bool {
    let wanted = wanted.as_object().unwrap();
    record["resources"].as_array().is_some_and(|all| {
        all.iter()
            .any(|r| wanted.iter().all(|(k, v)| r.get(k) == Some(v)))
    })
}

/// Runs every case of one case file; returns the problems and the rules the cases reached.
fn run_cases(case_file: &str) -> (Vec<String>, BTreeSet<String>, PathBuf) {
    let path = root().join(case_file);
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let rules = root().join(doc["rules"].as_str().unwrap());
    let key = root().join("examples/hmac.key");
    let mut problems = Vec::new();
    let mut reached = BTreeSet::new();
    let cases = doc["cases"].as_sequence().unwrap();
    assert!(!cases.is_empty(), "{case_file} has no cases");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut args: Vec<String> = vec![
            "rules".into(),
            "test".into(),
            rules.display().to_string(),
            "--hmac-key-file".into(),
            key.display().to_string(),
            "--method".into(),
            case["method"].as_str().unwrap().into(),
            "--path".into(),
            case["path"].as_str().unwrap().into(),
        ];
        if let Some(headers) = case["headers"].as_mapping() {
            for (k, v) in headers {
                let v = match v {
                    serde_yaml_ng::Value::String(s) => s.clone(),
                    other => json_of(other).to_string(),
                };
                args.push("--header".into());
                args.push(format!("{}: {v}", k.as_str().unwrap()));
            }
        }
        for (key, flag) in [
            ("body", "--body"),
            ("response", "--response"),
            ("before", "--before"),
        ] {
            match &case[key] {
                serde_yaml_ng::Value::Null => {}
                // A form or NDJSON body, as it is sent.
                serde_yaml_ng::Value::String(raw) => {
                    args.push(flag.into());
                    args.push(raw.clone());
                }
                value => {
                    args.push(flag.into());
                    args.push(json_of(value).to_string());
                }
            }
        }
        if let Some(status) = case["status"].as_u64() {
            args.push("--status".into());
            args.push(status.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = auditgate(&args);
        if !out.status.success() {
            problems.push(format!(
                "{name}: exit {:?}: {}",
                out.status.code(),
                text(&out.stderr)
            ));
            continue;
        }
        let record: Value = match serde_json::from_slice(&out.stdout) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{name}: not a record ({e}): {}", text(&out.stdout)));
                continue;
            }
        };
        let expect = &case["expect"];
        let operation = expect["operation"].as_str().unwrap();
        if record["operation"] != operation {
            problems.push(format!(
                "{name}: operation {} (expected {operation})",
                record["operation"]
            ));
        }
        if let Some(tenant) = expect["tenant"].as_str()
            && record["tenant"] != tenant
        {
            problems.push(format!(
                "{name}: tenant {} (expected {tenant})",
                record["tenant"]
            ));
        }
        for wanted in expect["resources"].as_sequence().into_iter().flatten() {
            let wanted = json_of(wanted);
            if !has_resource(&record, &wanted) {
                problems.push(format!(
                    "{name}: no resource {wanted} in {}",
                    record["resources"]
                ));
            }
        }
        // Every rule says what happened in words, as the products' pages do.
        if record["description"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{name}: no description"));
        }
        reached.insert(record["rule"].as_str().unwrap_or("").to_owned());
    }
    (problems, reached, rules)
}

fn every_rule_of_the_set_records_its_cases(case_file: &str) {
    let (mut problems, reached, rules) = run_cases(case_file);
    for rule in rule_names(&rules) {
        if !reached.contains(&rule) {
            problems.push(format!("rule {rule:?} is reached by no case"));
        }
    }
    assert!(
        problems.is_empty(),
        "{case_file}: {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn imagekit_rules_record_what_the_sdk_sends() {
    every_rule_of_the_set_records_its_cases("tests/rule-cases/imagekit.yaml");
}

#[test]
fn huggingface_rules_record_what_the_hub_library_sends() {
    every_rule_of_the_set_records_its_cases("tests/rule-cases/huggingface.yaml");
}

/// `rules coverage` against a product's API description: exit 0, nothing unrecorded.
fn covers(rules: &str, spec: &str, extra: &[&str]) {
    let mut args = vec!["rules", "coverage", rules, "--openapi", spec];
    args.extend_from_slice(extra);
    let out = auditgate(&args);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains(" 0 not recorded"), "{stdout}");
}

#[test]
fn the_rule_sets_cover_every_mutating_operation_of_their_apis() {
    covers(
        "examples/rules/imagekit.yaml",
        "tests/openapi/imagekit.yaml",
        &[],
    );
    covers(
        "examples/rules/huggingface.yaml",
        "tests/openapi/huggingface.yaml",
        &[],
    );
}
