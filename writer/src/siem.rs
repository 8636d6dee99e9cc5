//! A stored record in the schemas SIEMs read: OCSF API Activity, Elastic ECS and ArcSight CEF.
//! Each takes the record's JSON as stored (chain included) and maps what it can; what a
//! schema has no field for stays in its extension place (`unmapped` in OCSF, `labels` and
//! `auditgate.*` in ECS, custom strings in CEF), so nothing the record says is dropped.
//!
//! ```
//! use auditgate_writer::siem;
//!
//! let record: serde_json::Value = serde_json::from_str(r#"{
//!     "id": "0193a6f0-7c1e-7d5e-9b1a-2f4c8e9d0a11", "time": "2026-11-22T10:00:00.123456Z",
//!     "service": "media-library", "tenant": "acme", "operation": "asset.delete",
//!     "actor": {"id": "alice"}, "outcome": "success", "response": {"status": 204},
//!     "request": {"id": "req-1", "method": "DELETE", "path": "/v1/files/f1"},
//!     "resources": [{"type": "file", "id": "f1"}]}"#).unwrap();
//! let ocsf = siem::ocsf(&record);
//! assert_eq!((ocsf["class_uid"].as_u64(), ocsf["activity_id"].as_u64()), (Some(6003), Some(4)));
//! assert_eq!(ocsf["api"]["request"]["uid"], "req-1");
//! assert_eq!(siem::ecs(&record)["event"]["action"], "asset.delete");
//! assert!(siem::cef(&record).starts_with("CEF:0|auditgate|auditgate|"));
//! ```

use chrono::DateTime;
use serde_json::{Map, Value, json};

/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.3.0";

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn at(record: &Value, pointer: &str) -> Option<String> {
    record.pointer(pointer).and_then(text)
}

/// Milliseconds since the epoch, as OCSF's `timestamp_t` and CEF's `rt` take them.
fn epoch_ms(record: &Value) -> Option<i64> {
    let time = record.get("time")?.as_str()?;
    Some(DateTime::parse_from_rfc3339(time).ok()?.timestamp_millis())
}

/// Drops the members whose value is null, so that an absent field is absent.
fn compact(value: Value) -> Value {
    match value {
        Value::Object(members) => Value::Object(
            members
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, compact(v)))
                .filter(|(_, v)| !matches!(v, Value::Object(m) if m.is_empty()))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(compact).collect()),
        other => other,
    }
}

/// OCSF API Activity's `activity_id` from the HTTP method: Create, Read, Update, Delete, Other.
fn activity(method: &str) -> (u64, &'static str) {
    match method.to_ascii_uppercase().as_str() {
        "POST" => (1, "Create"),
        "GET" | "HEAD" => (2, "Read"),
        "PUT" | "PATCH" => (3, "Update"),
        "DELETE" => (4, "Delete"),
        _ => (99, "Other"),
    }
}

/// The record as an OCSF API Activity event (class 6003, category 6).
pub fn ocsf(record: &Value) -> Value {
    let method = at(record, "/request/method").unwrap_or_default();
    let (activity_id, activity_name) = activity(&method);
    let (status_id, status) = match record.get("outcome").and_then(Value::as_str) {
        Some("success") => (1, "Success"),
        Some("failure") | Some("error") | Some("aborted") => (2, "Failure"),
        _ => (0, "Unknown"),
    };
    let location = record.pointer("/request/location").map(
        |l| json!({"country": l.get("country"), "region": l.get("region"), "city": l.get("city")}),
    );
    let actor = match at(record, "/actor/id") {
        Some(uid) => json!({"user": {"uid": uid}}),
        // `actor` is required: an actor no rule could name is an unknown user, said so.
        None => json!({"user": {"type_id": 0, "type": "Unknown", "name": "unknown"}}),
    };
    let src_endpoint = match at(record, "/request/client_ip") {
        Some(ip) => json!({"ip": ip, "location": location}),
        None => json!({"name": "unknown", "location": location}),
    };
    let resources: Vec<Value> = (record["resources"].as_array().into_iter().flatten())
        .map(|r| {
            json!({"type": r.get("type"), "uid": r.get("id"), "name": r.get("path"),
                   "data": r.get("previous_path").map(|p| json!({"previous_path": p}))})
        })
        .collect();
    let attestation = record.get("chain").map(|c| {
        json!({
            "chain_uid": c.get("uid"),
            "sequence": c.get("seq"),
            "fingerprint": {"algorithm_id": 3, "algorithm": "SHA-256", "value": c.get("hash")},
            "prev_event": {"fingerprint": {"algorithm_id": 3, "algorithm": "SHA-256", "value": c.get("prev")}},
        })
    });
    let mut unmapped = Map::new();
    for key in [
        "rule", "changes", "details", "capture", "stage", "origin", "outcome",
    ] {
        if let Some(v) = record.get(key).filter(|v| !v.is_null()) {
            unmapped.insert(key.to_owned(), v.clone());
        }
    }
    compact(json!({
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": 600300 + activity_id,
        "type_name": format!("API Activity: {activity_name}"),
        "severity_id": 1,
        "severity": "Informational",
        "time": epoch_ms(record),
        "time_dt": record.get("time"),
        "duration": record.get("duration_ms"),
        "status_id": status_id,
        "status": status,
        "status_code": at(record, "/response/status"),
        "message": record.get("description").cloned().unwrap_or_else(|| json!(at(record, "/operation"))),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": record.get("id"),
            "tenant_uid": record.get("tenant"),
            "log_name": record.get("service"),
            "original_time": record.get("time"),
            "product": {"name": "auditgate", "vendor_name": "auditgate", "version": env!("CARGO_PKG_VERSION")},
        },
        "api": {
            "operation": record.get("operation"),
            "service": {"name": record.get("service")},
            "request": {"uid": record.pointer("/request/id")},
            "response": {"code": record.pointer("/response/status")},
        },
        "actor": actor,
        "src_endpoint": src_endpoint,
        "http_request": {
            "http_method": method,
            "uid": record.pointer("/request/id"),
            "user_agent": record.pointer("/request/user_agent"),
            "url": {"path": record.pointer("/request/path")},
        },
        "http_response": {"code": record.pointer("/response/status")},
        "resources": resources,
        "attestation": attestation,
        "unmapped": Value::Object(unmapped),
    }))
}

/// The record as an Elastic Common Schema document.
pub fn ecs(record: &Value) -> Value {
    let outcome = match record.get("outcome").and_then(Value::as_str) {
        Some("success") => "success",
        Some("failure") | Some("error") | Some("aborted") => "failure",
        _ => "unknown",
    };
    let method = at(record, "/request/method").unwrap_or_default();
    let kind = match activity(&method).0 {
        1 => "creation",
        2 => "access",
        3 => "change",
        4 => "deletion",
        _ => "info",
    };
    compact(json!({
        "@timestamp": record.get("time"),
        "ecs": {"version": "8.11.0"},
        "message": record.get("description"),
        "event": {
            "id": record.get("id"),
            "action": record.get("operation"),
            "outcome": outcome,
            "kind": "event",
            "category": ["web", "configuration"],
            "type": [kind],
            "dataset": "auditgate.audit",
            "provider": record.get("service"),
            "duration": record.get("duration_ms").and_then(Value::as_f64).map(|ms| (ms * 1e6) as i64),
        },
        "user": {"id": record.pointer("/actor/id")},
        "organization": {"id": record.get("tenant")},
        "source": {
            "ip": record.pointer("/request/client_ip"),
            "geo": record.pointer("/request/location").map(|l| json!({
                "country_iso_code": l.get("country"),
                "region_name": l.get("region"),
                "city_name": l.get("city"),
            })),
        },
        "http": {
            "request": {"id": record.pointer("/request/id"), "method": method},
            "response": {"status_code": record.pointer("/response/status")},
        },
        "url": {"path": record.pointer("/request/path")},
        "user_agent": {"original": record.pointer("/request/user_agent")},
        "auditgate": {
            "rule": record.get("rule"),
            "route": record.pointer("/request/route"),
            "resources": record.get("resources"),
            "changes": record.get("changes"),
            "details": record.get("details"),
            "chain": record.get("chain"),
            "outcome": record.get("outcome"),
        },
    }))
}

/// A CEF header field: `\\` and `|` escaped, a line break made a space (the header holds none).
fn cef_header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            c if breaks_or_controls(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A CEF extension value: `\\`, `=`, and line breaks (`\n`, `\r`) escaped.
fn cef_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            // No CEF escape exists for the other control characters; a collector may split
            // lines on some of them (VT, FF, NUL), so none reaches the line as it is.
            c if breaks_or_controls(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A control character, or one some line splitters end a line at (U+0085, U+2028, U+2029).
fn breaks_or_controls(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// The record as one CEF line (no line break at its end).
pub fn cef(record: &Value) -> String {
    let operation = at(record, "/operation").unwrap_or_default();
    let name = at(record, "/description").unwrap_or_else(|| operation.clone());
    let severity = match record.get("outcome").and_then(Value::as_str) {
        Some("success") => 3,
        Some("failure") => 6,
        _ => 5,
    };
    let resources = (record["resources"].as_array().into_iter().flatten())
        .map(|r| {
            let kind = text(&r["type"]).unwrap_or_default();
            match (at(r, "/id"), at(r, "/path")) {
                (Some(id), Some(path)) => format!("{kind}:{id} {path}"),
                (Some(id), None) => format!("{kind}:{id}"),
                (None, Some(path)) => format!("{kind} {path}"),
                (None, None) => kind,
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let fields: Vec<(&str, Option<String>)> = vec![
        ("rt", epoch_ms(record).map(|ms| ms.to_string())),
        ("externalId", at(record, "/id")),
        ("act", Some(operation.clone())),
        ("outcome", at(record, "/outcome")),
        ("suser", at(record, "/actor/id")),
        ("src", at(record, "/request/client_ip")),
        ("requestMethod", at(record, "/request/method")),
        ("request", at(record, "/request/path")),
        (
            "requestClientApplication",
            at(record, "/request/user_agent"),
        ),
        ("msg", at(record, "/description")),
        ("cn1", at(record, "/response/status")),
        (
            "cn1Label",
            at(record, "/response/status").map(|_| "httpStatus".into()),
        ),
        ("cs1", at(record, "/tenant")),
        ("cs1Label", at(record, "/tenant").map(|_| "tenant".into())),
        ("cs2", at(record, "/request/id")),
        ("cs2Label", Some("requestId".into())),
        ("cs3", Some(resources).filter(|r| !r.is_empty())),
        (
            "cs3Label",
            record["resources"]
                .as_array()
                .filter(|r| !r.is_empty())
                .map(|_| "resources".into()),
        ),
        ("cs4", at(record, "/chain/hash")),
        (
            "cs4Label",
            at(record, "/chain/hash").map(|_| "chainHash".into()),
        ),
        ("cs5", at(record, "/service")),
        ("cs5Label", at(record, "/service").map(|_| "service".into())),
    ];
    let extension = fields
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| format!("{key}={}", cef_value(&v))))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "CEF:0|auditgate|auditgate|{}|{}|{}|{severity}|{extension}",
        cef_header(env!("CARGO_PKG_VERSION")),
        cef_header(&operation),
        cef_header(&name),
    )
}
