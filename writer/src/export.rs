//! The formats of `GET /api/v1/export?format=` and `auditgate logs --format`: the stored
//! records as one JSON array (the default); CSV, one row per record, for the spreadsheet an
//! auditor opens; and what SIEMs read: OCSF API Activity (class 6003) and Elastic ECS, one JSON
//! object per line, and ArcSight CEF, one line per record.
//!
//! An export streams: the store hands over a page at a time and each format encodes it on its
//! own, so memory stays bounded whatever the number of records.
//!
//! ```
//! use auditgate_writer::export::Format;
//!
//! let format = Format::parse("csv").unwrap();
//! let mut out = Vec::new();
//! out.extend_from_slice(&format.start());
//! out.extend_from_slice(&format.page(&[r#"{"id": "r1", "operation": "=1+1"}"#.to_owned()], true));
//! out.extend_from_slice(&format.end());
//! let text = String::from_utf8(out).unwrap();
//! assert!(text.starts_with("time,id,tenant,service,operation,"));
//! // A cell a spreadsheet would run as a formula is written as text.
//! assert!(text.contains(r#","'=1+1","#));
//! ```

use bytes::Bytes;
use serde_json::Value;

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON array of the records exactly as stored.
    Json,
    /// RFC 4180 CSV with a header row: the fields an audit-log page shows, flattened.
    Csv,
    /// OCSF 1.3 API Activity (class 6003), one event per line.
    Ocsf,
    /// Elastic Common Schema 8, one document per line.
    Ecs,
    /// ArcSight Common Event Format, one line per record.
    Cef,
}

/// The CSV columns, in order.
const CSV_COLUMNS: &[&str] = &[
    "time",
    "id",
    "tenant",
    "service",
    "operation",
    "description",
    "actor",
    "outcome",
    "status",
    "method",
    "path",
    "route",
    "request_id",
    "client_ip",
    "location",
    "user_agent",
    "resources",
    "changes",
    "duration_ms",
];

impl Format {
    /// `json` or `csv`; `None` for anything else.
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            "ocsf" => Some(Format::Ocsf),
            "ecs" => Some(Format::Ecs),
            "cef" => Some(Format::Cef),
            _ => None,
        }
    }

    /// The names `parse` accepts, for an error message.
    pub const NAMES: &'static str = "json, csv, ocsf, ecs, cef";

    /// The answer's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Ocsf | Format::Ecs => "application/x-ndjson",
            Format::Cef => "text/plain; charset=utf-8",
        }
    }

    /// The download's file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Ocsf => "ocsf.ndjson",
            Format::Ecs => "ecs.ndjson",
            Format::Cef => "cef",
        }
    }

    /// What comes before the first record.
    pub fn start(self) -> Bytes {
        match self {
            Format::Json => Bytes::from_static(b"[\n"),
            Format::Csv => Bytes::from(format!("{}\r\n", CSV_COLUMNS.join(","))),
            Format::Ocsf | Format::Ecs | Format::Cef => Bytes::new(),
        }
    }

    /// One stored record (its JSON) in this format, without a separator; for `Json`, the
    /// record as stored.
    pub fn one(self, json: &str) -> String {
        let record = || serde_json::from_str::<Value>(json).unwrap_or(Value::Null);
        match self {
            Format::Json => json.to_owned(),
            Format::Csv => {
                let mut out = String::new();
                csv_row(&mut out, json);
                out.truncate(out.trim_end_matches("\r\n").len());
                out
            }
            Format::Ocsf => crate::siem::ocsf(&record()).to_string(),
            Format::Ecs => crate::siem::ecs(&record()).to_string(),
            Format::Cef => crate::siem::cef(&record()),
        }
    }

    /// One page of stored records (their JSON); `first` when no record came before.
    pub fn page(self, records: &[String], first: bool) -> Bytes {
        let mut out = String::with_capacity(records.iter().map(|r| r.len() + 2).sum());
        match self {
            Format::Json => {
                for (i, record) in records.iter().enumerate() {
                    if !(first && i == 0) {
                        out.push_str(",\n");
                    }
                    out.push_str(record);
                }
            }
            Format::Csv => {
                for record in records {
                    csv_row(&mut out, record);
                }
            }
            Format::Ocsf | Format::Ecs | Format::Cef => {
                for record in records {
                    out.push_str(&self.one(record));
                    out.push('\n');
                }
            }
        }
        Bytes::from(out)
    }

    /// What comes after the last record.
    pub fn end(self) -> Bytes {
        match self {
            Format::Json => Bytes::from_static(b"\n]\n"),
            Format::Csv | Format::Ocsf | Format::Ecs | Format::Cef => Bytes::new(),
        }
    }
}

/// Appends one record's row. A stored record is always a JSON object (ingest parsed it); one
/// that is not still gets a row, with its text as the id, rather than vanishing from the file.
fn csv_row(out: &mut String, json: &str) {
    let record: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let at = |pointer: &str| record.pointer(pointer).map(text).unwrap_or_default();
    let resources = (record["resources"].as_array().into_iter().flatten())
        .map(|r| {
            let mut one = text(&r["type"]);
            for key in ["id", "path"] {
                if let Some(v) = r.get(key) {
                    one.push(if key == "id" { ':' } else { ' ' });
                    one.push_str(&text(v));
                }
            }
            if let Some(before) = r.get("previous_path") {
                one.push_str(" (was ");
                one.push_str(&text(before));
                one.push(')');
            }
            one
        })
        .collect::<Vec<_>>()
        .join("; ");
    let changes = (record["changes"].as_object().into_iter().flatten())
        .map(|(name, change)| {
            format!(
                "{name}: {} → {}",
                text(&change["from"]),
                text(&change["to"])
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let location = ["country", "region", "city"]
        .iter()
        .filter_map(|k| record.pointer(&format!("/request/location/{k}")).map(text))
        .collect::<Vec<_>>()
        .join("/");
    let id = if record.is_object() {
        at("/id")
    } else {
        json.to_owned()
    };
    let cells = [
        at("/time"),
        id,
        at("/tenant"),
        at("/service"),
        at("/operation"),
        at("/description"),
        at("/actor/id"),
        at("/outcome"),
        at("/response/status"),
        at("/request/method"),
        at("/request/path"),
        at("/request/route"),
        at("/request/id"),
        at("/request/client_ip"),
        location,
        at("/request/user_agent"),
        resources,
        changes,
        at("/duration_ms"),
    ];
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_cell(out, cell);
    }
    out.push_str("\r\n");
}

/// One cell, quoted when RFC 4180 needs it. Clients wrote most of these values (paths, user
/// agents, names in descriptions), so a cell a spreadsheet would evaluate (`=`, `+`, `-`, `@`,
/// or a tab or carriage return first: OWASP's list) is made text with a leading `'`.
fn csv_cell(out: &mut String, cell: &str) {
    let formula = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || cell.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for c in cell.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quote {
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(records: &[&str]) -> String {
        let records: Vec<String> = records.iter().map(|r| (*r).to_owned()).collect();
        let f = Format::Csv;
        let mut out = String::from_utf8(f.start().to_vec()).unwrap();
        out.push_str(std::str::from_utf8(&f.page(&records, true)).unwrap());
        out
    }

    #[test]
    fn a_record_becomes_one_row_under_the_header() {
        let out = csv(&[
            r#"{"time": "2026-11-22T10:00:00Z", "id": "r1", "tenant": "acme",
            "operation": "asset.rename", "description": "Renamed \"a\", then b",
            "actor": {"id": "u_1"}, "outcome": "success", "response": {"status": 200},
            "request": {"method": "PUT", "path": "/v1/files/rename", "id": "req-1",
                        "location": {"country": "DE", "city": "Berlin"}},
            "resources": [{"type": "file", "id": "f1", "path": "/b.png", "previous_path": "/a.png"}],
            "changes": {"name": {"from": "a.png", "to": "b.png"}}, "duration_ms": 1.5}"#,
        ]);
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(lines[0].split(',').count(), CSV_COLUMNS.len());
        assert_eq!(
            lines[1],
            "2026-11-22T10:00:00Z,r1,acme,,asset.rename,\"Renamed \"\"a\"\", then b\",u_1,\
             success,200,PUT,/v1/files/rename,,req-1,,DE/Berlin,,\
             file:f1 /b.png (was /a.png),name: a.png → b.png,1.5"
        );
    }

    #[test]
    fn hostile_cells_stay_text_and_on_their_row() {
        let out = csv(&[
            r#"{"id": "r1", "description": "=HYPERLINK(\"http://x\")", "actor": {"id": "@me"}}"#,
            r#"{"id": "r2", "request": {"user_agent": "a\r\nb,c"}}"#,
        ]);
        assert!(
            out.contains(",\"'=HYPERLINK(\"\"http://x\"\")\",\"'@me\","),
            "{out}"
        );
        assert!(out.contains(",\"a\r\nb,c\","), "{out}");
    }

    #[test]
    fn json_pages_join_into_one_array() {
        let f = Format::Json;
        let mut out = f.start().to_vec();
        out.extend_from_slice(&f.page(&["{\"a\":1}".into(), "{\"a\":2}".into()], true));
        out.extend_from_slice(&f.page(&["{\"a\":3}".into()], false));
        out.extend_from_slice(&f.end());
        let parsed: Vec<Value> = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed.len(), 3);
    }
}
