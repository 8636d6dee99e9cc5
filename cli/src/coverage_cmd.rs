//! `auditgate rules coverage RULES --openapi spec.yaml`: the mutating operations of an OpenAPI
//! (3.x) or Swagger (2.0) description that no rule records, and the rules no operation reaches.
//! Exit 0: every mutating operation has a rule; 1: some have none; 2: the rules or the
//! description cannot be read.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use auditgate_rules::{Recorded, RuleSet};
use serde_json::Value;

/// The methods whose calls change something: what an audit trail is for.
const MUTATING: [&str; 4] = ["post", "put", "patch", "delete"];

/// One operation of the description.
#[derive(Debug, PartialEq, Eq)]
struct ApiOperation {
    method: http::Method,
    /// The path template with the base path in front, as the proxy sees calls.
    path: String,
    /// `operationId`, else `summary`, else nothing.
    name: String,
}

pub(crate) fn run(rules: &Path, spec: &Path, base_path: Option<&str>) -> anyhow::Result<ExitCode> {
    // Loaded as the proxy loads it: a shadowed rule is a warning here (and shows as reached
    // by nothing), not a reason to refuse.
    // Coverage makes no records, so `| hmac` needs no key here: an empty one keeps the
    // warning about a missing key out of this report.
    let set = match RuleSet::loader().hmac_key(Vec::new()).load(rules) {
        Ok(set) => set,
        Err(err) => {
            crate::rules_cmd::report(&err);
            return Ok(ExitCode::from(2));
        }
    };
    for warning in set.warnings() {
        eprintln!("warning: {warning}");
    }
    let text = std::fs::read_to_string(spec).with_context(|| format!("{}", spec.display()))?;
    let operations = operations(&text, base_path).with_context(|| format!("{}", spec.display()))?;
    let asked: Vec<(http::Method, &str)> = operations
        .iter()
        .map(|o| (o.method.clone(), o.path.as_str()))
        .collect();
    let report = set.coverage(&asked);

    let width = operations.iter().map(|o| o.path.len()).max().unwrap_or(0);
    let line =
        |o: &ApiOperation| format!("  {:<6} {:<width$}  {}", o.method.as_str(), o.path, o.name);
    let (mut not, mut unmatched, mut when, mut always) = (vec![], vec![], vec![], 0);
    for (operation, recorded) in operations.iter().zip(&report.operations) {
        match recorded {
            Recorded::Always { .. } => always += 1,
            Recorded::When { rules } => when.push((operation, rules)),
            Recorded::AsUnmatched => unmatched.push(operation),
            Recorded::Not => not.push(operation),
        }
    }
    println!(
        "{}: {} mutating operation{}; {always} recorded by a rule, {} only when a rule's `when` holds, {} as `unmatched`, {} not recorded",
        spec.display(),
        operations.len(),
        crate::rules_cmd::plural(operations.len()),
        when.len(),
        unmatched.len(),
        not.len(),
    );
    if !not.is_empty() {
        println!("\nnot recorded (no rule names them):");
        not.iter().for_each(|o| println!("{}", line(o)));
    }
    if !unmatched.is_empty() {
        println!("\nrecorded only as operation `unmatched` (no rule names them):");
        unmatched.iter().for_each(|o| println!("{}", line(o)));
    }
    if !when.is_empty() {
        println!("\nrecorded only when a rule's `when` holds:");
        for (operation, rules) in &when {
            println!("{}", line(operation));
            for rule in rules.iter() {
                println!("      {} ({})", rule.operation, rule.place);
            }
        }
    }
    // Only mutating operations were asked about: a rule for GET alone is not stale for that.
    let unreached: Vec<_> = report
        .unreached
        .iter()
        .filter(|rule| {
            rule.methods
                .split(", ")
                .any(|m| MUTATING.contains(&m.to_ascii_lowercase().as_str()))
        })
        .collect();
    if !unreached.is_empty() {
        println!("\nrules no operation of the description reaches:");
        for rule in &unreached {
            println!(
                "  {} {} {}  ({})",
                rule.operation, rule.methods, rule.route, rule.place
            );
        }
    }
    // Like a linter: a gap is a failure, so CI can hold a release that adds an endpoint
    // without its rule.
    Ok(if not.is_empty() && unmatched.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The mutating operations of an OpenAPI 3 or Swagger 2 description (YAML or JSON).
fn operations(text: &str, base_path: Option<&str>) -> anyhow::Result<Vec<ApiOperation>> {
    let spec: Value = serde_yaml_ng::from_str(text).context("not YAML or JSON")?;
    if spec.get("openapi").is_none() && spec.get("swagger").is_none() {
        bail!("not an OpenAPI description: it has no `openapi:` (3.x) or `swagger:` (2.0) key");
    }
    let Some(paths) = spec.get("paths").and_then(Value::as_object) else {
        bail!("no `paths` mapping: nothing to compare the rules with");
    };
    let base = match base_path {
        Some(base) => base.to_owned(),
        None => spec_base_path(&spec),
    };
    let base = base.trim_end_matches('/');
    let mut out = Vec::new();
    for (template, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for method in MUTATING {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let name = ["operationId", "summary"]
                .iter()
                .find_map(|k| operation.get(*k).and_then(Value::as_str))
                .unwrap_or_default();
            out.push(ApiOperation {
                method: method.to_ascii_uppercase().parse()?,
                path: format!("{base}{template}"),
                name: name.to_owned(),
            });
        }
    }
    Ok(out)
}

/// Where the paths live on the server: Swagger's `basePath`, or the path of OpenAPI's first
/// `servers` URL with its variables at their defaults (`https://api.example.com/{version}`).
fn spec_base_path(spec: &Value) -> String {
    if let Some(base) = spec.get("basePath").and_then(Value::as_str) {
        return base.to_owned();
    }
    let Some(server) = spec.pointer("/servers/0") else {
        return String::new();
    };
    let mut url = server
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(variables) = server.get("variables").and_then(Value::as_object) {
        for (name, variable) in variables {
            if let Some(default) = variable.get("default").and_then(Value::as_str) {
                url = url.replace(&format!("{{{name}}}"), default);
            }
        }
    }
    // `https://host/v1` → `/v1`; a relative `/v1` stays as it is.
    match url.split_once("://") {
        Some((_, rest)) => rest
            .find('/')
            .map_or(String::new(), |i| rest[i..].to_owned()),
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_3_and_swagger_2_give_their_mutating_operations_under_their_base() {
        let v3 = "openapi: 3.0.3\nservers:\n  - url: https://api.example.com/{version}\n    variables: { version: { default: v1 } }\npaths:\n  /files/{id}:\n    get: { operationId: getFile }\n    delete: { operationId: deleteFile }\n    patch: { summary: Rename a file }\n  /tags:\n    post: {}\n";
        let ops = operations(v3, None).unwrap();
        let seen: Vec<(String, String, String)> = ops
            .into_iter()
            .map(|o| (o.method.to_string(), o.path, o.name))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "PATCH".into(),
                    "/v1/files/{id}".into(),
                    "Rename a file".into()
                ),
                (
                    "DELETE".into(),
                    "/v1/files/{id}".into(),
                    "deleteFile".into()
                ),
                ("POST".into(), "/v1/tags".into(), String::new()),
            ]
        );
        let v2 = r#"{"swagger": "2.0", "basePath": "/api/", "paths": {"/x": {"put": {"operationId": "putX"}}}}"#;
        assert_eq!(operations(v2, None).unwrap()[0].path, "/api/x");
        assert_eq!(operations(v2, Some("")).unwrap()[0].path, "/x");
        assert!(
            operations("a: 1\n", None)
                .unwrap_err()
                .to_string()
                .contains("not an OpenAPI description")
        );
    }
}
