//! The audit record: one per audited call, serialised as the JSON of DESIGN.md.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The version of the record format written in `schema`.
pub const SCHEMA_VERSION: u32 = 1;

/// One audited call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Always [`SCHEMA_VERSION`].
    pub schema: u32,
    /// A UUIDv7 made from the request's arrival time; the idempotency key end to end.
    pub id: Uuid,
    /// When the request arrived (RFC 3339, UTC, microseconds).
    #[serde(serialize_with = "micros", deserialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    /// From arrival to the end of the response.
    pub duration_ms: f64,
    /// The rule file's `service`.
    pub service: String,
    /// The rule's operation, or `unmatched`.
    pub operation: String,
    /// The rule id; absent for `unmatched` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The rendered `description`, absent when the rule has none or a source was missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who did it; `null` when no actor template yielded a value.
    pub actor: Option<Actor>,
    /// What was called.
    pub request: RequestInfo,
    /// What was touched: one entry per resource (arrays expand to one entry per element).
    pub resources: Vec<Resource>,
    /// What the client got.
    pub response: ResponseInfo,
    /// How the call ended.
    pub outcome: Outcome,
    /// The rule's `details`, each omitted when its source was missing.
    #[serde(default)]
    pub details: Map<String, Value>,
    /// Which producer queued the record; set by the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// The actor of a call and the template that named it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The value, e.g. `u_123`.
    pub id: String,
    /// The template that produced it, e.g. `jwt/sub`; `jwt/sub (unverified)` when the token's
    /// signature was not checked.
    pub source: String,
}

/// The request side of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestInfo {
    /// The request ID: read from the configured header, or a new UUIDv7.
    pub id: String,
    /// The HTTP method.
    pub method: String,
    /// The normalised path (without the query).
    pub path: String,
    /// The matched rule's path pattern; absent for `unmatched` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The client address as configured: full, anonymised or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// The `User-Agent` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// One resource a call touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// What kind of thing, e.g. `file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its id, when the rule says where to find one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its path, when the rule says where to find one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The response side of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseInfo {
    /// The status the client got; absent when it got none (aborted before the head).
    pub status: Option<u16>,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The upstream answered below 400.
    Success,
    /// The upstream answered 400 or above.
    Failure,
    /// No upstream answer: connect failure or timeout; the proxy answered 5xx itself.
    Error,
    /// The client went away before the response completed.
    Aborted,
}

impl Outcome {
    /// `success` below 400, `failure` from 400 on.
    pub fn from_status(status: u16) -> Outcome {
        if status < 400 {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }

    /// The lower-case name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Error => "error",
            Outcome::Aborted => "aborted",
        }
    }
}

/// Which producer queued a record, so the writer can prove nothing is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// `proxy`, `layer`, ...
    pub kind: String,
    /// A name unique to the producer process, e.g. `host-a/3f2c`.
    pub instance: String,
    /// Counts up by one per record from this instance.
    pub seq: u64,
}

fn micros<S: Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_design_example_round_trips() {
        let text = r#"{
          "schema": 1,
          "id": "0193a6f0-7c1e-7d5e-9b1a-2f4c8e9d0a11",
          "time": "2026-11-22T10:00:00.123456Z",
          "duration_ms": 3.21,
          "service": "media-library",
          "operation": "asset.rename",
          "rule": "file-rename",
          "description": "Renamed file abc to tree.png",
          "actor": { "id": "u_123", "source": "jwt/sub" },
          "request": { "id": "r1", "method": "PATCH", "path": "/v1/files/abc/details",
                       "route": "/v1/files/{fileId}/details", "client_ip": "203.0.113.0",
                       "user_agent": "curl/8.5.0" },
          "resources": [ { "type": "file", "id": "abc", "path": "/forest/tree.png" } ],
          "response": { "status": 200 },
          "outcome": "success",
          "details": { "new_name": "tree.png" },
          "origin": { "kind": "proxy", "instance": "host-a/3f2c", "seq": 42 }
        }"#;
        let record: AuditRecord = serde_json::from_str(text).unwrap();
        assert_eq!(record.outcome, Outcome::Success);
        assert_eq!(record.resources[0].kind, "file");
        let again: Value = serde_json::to_value(&record).unwrap();
        let original: Value = serde_json::from_str(text).unwrap();
        assert_eq!(again, original);
    }

    #[test]
    fn outcome_from_status() {
        assert_eq!(Outcome::from_status(204), Outcome::Success);
        assert_eq!(Outcome::from_status(399), Outcome::Success);
        assert_eq!(Outcome::from_status(403), Outcome::Failure);
        assert_eq!(Outcome::from_status(503), Outcome::Failure);
    }
}
