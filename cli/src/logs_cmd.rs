//! `auditgate logs`: the audit log from the command line, through a writer's query API.

use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::{DateTime, Local};
use clap::{Args, ValueEnum};
use serde_json::Value;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  auditgate logs --server http://127.0.0.1:9090 --token $TOKEN --operation 'asset.*' --since 2026-11-22T00:00:00Z\n  auditgate logs --server http://127.0.0.1:9090 --token $TOKEN --history /forest/tree.png --format json"
)]
pub(crate) struct LogsArgs {
    /// The writer's address, e.g. http://127.0.0.1:9090
    #[arg(long, value_name = "URL")]
    server: String,
    /// An API token (admin; viewer tokens may only use --history).
    #[arg(long, value_name = "T", env = "AUDITGATE_TOKEN")]
    token: String,
    /// Operation, exact or a prefix such as 'asset.*'
    #[arg(long)]
    operation: Option<String>,
    /// The actor's id
    #[arg(long)]
    actor: Option<String>,
    /// A resource id or path
    #[arg(long)]
    resource: Option<String>,
    /// A request ID
    #[arg(long)]
    request_id: Option<String>,
    /// success, failure, error or aborted
    #[arg(long)]
    outcome: Option<String>,
    /// At or after this time (RFC 3339)
    #[arg(long)]
    since: Option<String>,
    /// At or before this time (RFC 3339)
    #[arg(long)]
    until: Option<String>,
    /// How many records at most (newest first); pages are followed up to this many.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// One resource's history, oldest first, instead of the filtered log
    #[arg(long, value_name = "RESOURCE")]
    history: Option<String>,
    /// How to print
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Keep printing records as they are stored (oldest first, one per line), until stopped:
    /// for a shipper (Vector, Fluent Bit, a SIEM forwarder) to take them from here.
    #[arg(long, conflicts_with = "history")]
    follow: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// Aligned columns for a terminal
    Table,
    /// One JSON array
    Json,
    /// One record per line
    Ndjson,
    /// RFC 4180 CSV, with a header row
    Csv,
    /// OCSF API Activity (class 6003), one event per line
    Ocsf,
    /// Elastic Common Schema, one document per line
    Ecs,
    /// ArcSight CEF, one line per record
    Cef,
}

impl Format {
    /// The writer's export format of the same name, for those it has.
    fn export(self) -> Option<auditgate_writer::export::Format> {
        use auditgate_writer::export::Format as Export;
        match self {
            Format::Csv => Some(Export::Csv),
            Format::Ocsf => Some(Export::Ocsf),
            Format::Ecs => Some(Export::Ecs),
            Format::Cef => Some(Export::Cef),
            Format::Table | Format::Json | Format::Ndjson => None,
        }
    }
}

pub(crate) fn run(args: LogsArgs) -> ExitCode {
    if args.follow {
        let Err(e) = follow(&args);
        eprintln!("auditgate logs: {e:#}");
        return ExitCode::FAILURE;
    }
    match fetch(&args).and_then(|records| print(&args, &records)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("auditgate logs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn fetch(args: &LogsArgs) -> anyhow::Result<Vec<Value>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = args.server.trim_end_matches('/');
    let (path, mut params): (&str, Vec<(&str, String)>) = match &args.history {
        Some(resource) => ("/api/v1/history", vec![("resource", resource.clone())]),
        None => {
            let mut p = Vec::new();
            for (name, value) in [
                ("operation", &args.operation),
                ("actor", &args.actor),
                ("resource", &args.resource),
                ("request_id", &args.request_id),
                ("outcome", &args.outcome),
                ("since", &args.since),
                ("until", &args.until),
            ] {
                if let Some(v) = value {
                    p.push((name, v.clone()));
                }
            }
            ("/api/v1/records", p)
        }
    };
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    while records.len() < args.limit {
        let mut request = agent
            .get(format!("{base}{path}"))
            .header("Authorization", format!("Bearer {}", args.token))
            .query("limit", (args.limit - records.len()).min(1000).to_string());
        for (k, v) in &params {
            request = request.query(*k, v);
        }
        if let Some(c) = &cursor {
            request = request.query("cursor", c);
        }
        let mut response = request
            .call()
            .with_context(|| format!("cannot reach {base}"))?;
        let status = response.status().as_u16();
        let body: Value = response
            .body_mut()
            .read_json()
            .with_context(|| format!("{base}{path} answered {status} with no JSON"))?;
        if status != 200 {
            bail!(
                "{status}: {}",
                body["error"].as_str().unwrap_or("request refused")
            );
        }
        if let Some(page) = body["records"].as_array() {
            records.extend(page.iter().cloned());
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                cursor = None;
                break;
            }
        }
    }
    if cursor.is_some() && records.len() >= args.limit {
        eprintln!(
            "(the newest {}; more match: raise --limit, or narrow with --since/--until)",
            args.limit
        );
    }
    params.clear();
    records.truncate(args.limit);
    Ok(records)
}

/// How far back each poll of `--follow` looks again: a record stored late, with a time up to
/// this much older than the newest one seen, is still printed (once).
const FOLLOW_OVERLAP: chrono::Duration = chrono::Duration::seconds(120);

/// Polls the writer every second for records newer than the newest seen (less the overlap)
/// and prints those not printed yet, oldest first, flushing each batch.
fn follow(args: &LogsArgs) -> anyhow::Result<std::convert::Infallible> {
    use std::io::Write as _;
    let mut seen: std::collections::HashMap<String, DateTime<chrono::Utc>> =
        std::collections::HashMap::new();
    let mut since = args.since.clone();
    let (mut header, mut wrote_header) = (true, false);
    loop {
        // The first poll shows the newest `--limit`, as `tail -f` does; later ones all that came.
        let polled = LogsArgs {
            since: since.clone(),
            limit: if header { args.limit } else { 10_000 },
            follow: false,
            server: args.server.clone(),
            token: args.token.clone(),
            operation: args.operation.clone(),
            actor: args.actor.clone(),
            resource: args.resource.clone(),
            request_id: args.request_id.clone(),
            outcome: args.outcome.clone(),
            until: None,
            history: None,
            format: args.format,
        };
        let mut records = fetch(&polled)?;
        records.reverse(); // oldest first
        let fresh: Vec<Value> = records
            .into_iter()
            .filter(|r| {
                let id = r["id"].as_str().unwrap_or_default().to_owned();
                let time = r["time"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .unwrap_or_default();
                seen.insert(id, time).is_none()
            })
            .collect();
        if !fresh.is_empty() {
            let mut out = std::io::stdout().lock();
            for record in &fresh {
                match args.format.export() {
                    Some(format) => {
                        if !wrote_header && format == auditgate_writer::export::Format::Csv {
                            out.write_all(&format.start())?;
                            wrote_header = true;
                        }
                        writeln!(out, "{}", format.one(&record.to_string()))?;
                    }
                    None => writeln!(out, "{record}")?,
                }
            }
            out.flush()?;
        }
        header = false;
        if let Some(newest) = seen.values().max().copied() {
            let from = newest - FOLLOW_OVERLAP;
            seen.retain(|_, t| *t >= from);
            since = Some(from.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn print(args: &LogsArgs, records: &[Value]) -> anyhow::Result<()> {
    if let Some(format) = args.format.export() {
        use std::io::Write as _;
        let stored: Vec<String> = records.iter().map(Value::to_string).collect();
        let mut out = std::io::stdout().lock();
        out.write_all(&format.start())?;
        out.write_all(&format.page(&stored, true))?;
        out.write_all(&format.end())?;
        return Ok(());
    }
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(records)?),
        Format::Ndjson => {
            for r in records {
                println!("{r}");
            }
        }
        Format::Table => print_table(records),
        Format::Csv | Format::Ocsf | Format::Ecs | Format::Cef => {}
    }
    Ok(())
}

fn print_table(records: &[Value]) {
    let header = [
        "TIME",
        "USER",
        "OPERATION",
        "RESOURCE",
        "OUTCOME",
        "STATUS",
        "REQUEST ID",
    ];
    let rows: Vec<[String; 7]> = records
        .iter()
        .map(|r| {
            let time = r["time"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| {
                    // With its offset: `--since`/`--until` take any RFC 3339 time, and a
                    // reader comparing the two must know which zone this is.
                    t.with_timezone(&Local)
                        .format("%Y-%m-%d %H:%M:%S%:z")
                        .to_string()
                })
                .unwrap_or_default();
            let resource = r["resources"]
                .as_array()
                .map(|rs| {
                    rs.iter()
                        .map(|x| {
                            let kind = x["type"].as_str().unwrap_or("");
                            let name = x["path"].as_str().or(x["id"].as_str()).unwrap_or("");
                            format!("{kind}:{name}")
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            [
                time,
                r["actor"]["id"].as_str().unwrap_or("-").to_owned(),
                r["operation"].as_str().unwrap_or("").to_owned(),
                resource,
                r["outcome"].as_str().unwrap_or("").to_owned(),
                r["response"]["status"]
                    .as_u64()
                    .map_or("-".to_owned(), |s| s.to_string()),
                r["request"]["id"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count()).min(48);
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| {
                let c: String = c.chars().take(w).collect();
                format!("{c:<w$}")
            })
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        println!("(no records)");
    }
}
