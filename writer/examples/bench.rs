//! Writer throughput and query latency at scale: fills a stream with N records, drains it into
//! a store through the consumer group (the writer's own loop), then times each filter and a
//! full export. `scripts/bench writer` runs it against SQLite and PostgreSQL.
//!
//! ```sh
//! cargo run --release -p auditgate-writer --example bench -- redis://127.0.0.1:6379 sqlite:///tmp/bench.db 1000000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate_queue::{Consumer, ConsumerConfig, RedisConfig};
use auditgate_rules::AuditRecord;
use auditgate_writer::store::{self, OperationFilter, Order, Query, Store};
use chrono::{TimeZone, Utc};

// The allocator the `auditgate` binary runs the writer with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TEMPLATE: &str = r#"{"schema":1,"id":"0193a6f0-7c1e-7d5e-9b1a-2f4c8e9d0a11",
  "time":"2026-11-22T10:00:00.123456Z","duration_ms":3.21,"service":"media-library",
  "operation":"asset.rename","rule":"file-rename","description":"Renamed file abc to tree.png",
  "actor":{"id":"u_123","source":"jwt/sub"},"request":{"id":"r","method":"PATCH",
  "path":"/v1/files/abc/details","route":"/v1/files/{fileId}/details","client_ip":"203.0.113.0",
  "user_agent":"curl/8.5.0"},"resources":[{"type":"file","id":"abc","path":"/forest/tree.png"}],
  "response":{"status":200},"outcome":"success","details":{"new_name":"tree.png"},
  "origin":{"kind":"proxy","instance":"bench","seq":1}}"#;

const OPERATIONS: [&str; 8] = [
    "asset.rename",
    "asset.delete",
    "asset.move",
    "tag.add",
    "tag.remove",
    "member.remove",
    "secret.update",
    "repo.delete",
];

fn record(template: &AuditRecord, i: u64) -> AuditRecord {
    let mut r = template.clone();
    r.id = uuid::Uuid::now_v7();
    r.time = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
        + chrono::Duration::milliseconds(i as i64 * 20);
    r.operation = OPERATIONS[(i % 8) as usize].to_owned();
    if let Some(a) = r.actor.as_mut() {
        a.id = Some(format!("u_{}", i % 1000));
    }
    r.request.id = format!("req-{i}");
    r.resources[0].id = Some(format!("f{}", i % 50_000));
    r.resources[0].path = Some(format!("/folder{}/file{}.png", i % 100, i % 50_000));
    r.outcome = if i.is_multiple_of(13) {
        auditgate_rules::Outcome::Failure
    } else {
        auditgate_rules::Outcome::Success
    };
    if let Some(o) = r.origin.as_mut() {
        o.seq = i + 1;
    }
    r
}

/// Resident anonymous memory (heap, not mapped files), MiB.
fn anon_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("RssAnon:")).map(|v| {
                v.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
        / 1024
}

/// Inserts `count` records into a new file with the store's schema, indexes and pragmas, straight
/// from memory: the same statements the store runs, in transactions of the writer's commit size,
/// without Redis, parsing, or anything else. Answers records per second.
fn bare_sqlite_loop(
    path: &str,
    template: &AuditRecord,
    count: u64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let (file, options) = path.split_once('?').unwrap_or((path, ""));
    let synchronous = if options == "synchronous=normal" {
        "NORMAL"
    } else {
        "FULL"
    };
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{file}{suffix}"));
    }
    // The store makes the schema; then a plain connection does the inserting.
    drop(store::SqliteStore::open(file)?);
    let mut conn = rusqlite::Connection::open(file)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "cache_size", -65536)?;
    // id, time, JSON, operation, actor, request id, resource keys.
    type BareRow = (String, i64, String, String, String, String, Vec<String>);
    let rows: Vec<BareRow> = (0..count)
        .map(|i| {
            let r = record(template, i);
            let keys = vec![
                r.resources[0].id.clone().unwrap_or_default(),
                format!("file:{}", r.resources[0].id.clone().unwrap_or_default()),
                r.resources[0].path.clone().unwrap_or_default(),
            ];
            let json = serde_json::to_string(&r).unwrap_or_default();
            let actor = r.actor.and_then(|a| a.id).unwrap_or_default();
            (
                r.id.to_string(),
                r.time.timestamp_micros(),
                json,
                r.operation,
                actor,
                r.request.id,
                keys,
            )
        })
        .collect();
    let started = Instant::now();
    for chunk in rows.chunks(auditgate_writer::ingest::DEFAULT_COMMIT_MAX) {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (id, time_us, record, operation, actor, request_id, outcome, status, origin_instance, origin_seq, tenant)
                 VALUES (?, ?, ?, ?, ?, ?, 'success', 200, 'bench', ?, NULL)
                 ON CONFLICT (id) DO NOTHING RETURNING seq",
            )?;
            let mut resource = tx.prepare_cached(
                "INSERT OR IGNORE INTO resources (bucket, key, record_seq) VALUES (?, ?, ?)",
            )?;
            let mut link =
                tx.prepare_cached("INSERT OR IGNORE INTO resource_links (a, b) VALUES (?, ?)")?;
            let mut bucket =
                tx.prepare_cached("INSERT OR IGNORE INTO resource_buckets VALUES (?)")?;
            for (n, (id, time, json, operation, actor, request, keys)) in chunk.iter().enumerate() {
                let seq: i64 = insert.query_row(
                    rusqlite::params![id, time, json, operation, actor, request, n as i64],
                    |row| row.get(0),
                )?;
                for key in keys {
                    resource.execute(rusqlite::params![seq >> 16, key, seq])?;
                }
                link.execute(rusqlite::params![keys[1], keys[2]])?;
                link.execute(rusqlite::params![keys[2], keys[1]])?;
                bucket.execute([seq >> 16])?;
            }
        }
        tx.commit()?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).map_or("redis://127.0.0.1:6379", String::as_str);
    let store_url = args
        .get(2)
        .map_or("sqlite:///tmp/auditgate-bench.db", String::as_str);
    let count: u64 = args.get(3).map_or(Ok(1_000_000), |n| n.parse())?;
    let template: AuditRecord = serde_json::from_str(TEMPLATE)?;
    let stream = format!("bench:{}", std::process::id());

    // Fill the stream (pipelined, 1000 per round trip).
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let started = Instant::now();
    for chunk in 0..count.div_ceil(1000) {
        let mut pipe = redis::pipe();
        for i in chunk * 1000..((chunk + 1) * 1000).min(count) {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("record")
                .arg(serde_json::to_vec(&record(&template, i))?)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    println!(
        "filled {count} records into the stream in {:.1?}",
        started.elapsed()
    );

    // Drain it with the writer's loop.
    let store: Arc<dyn Store> = Arc::from(store::open(store_url).await?);
    // The writer chains what it stores unless told not to (`chain: false`); CHAIN=0 measures
    // what the chain costs.
    let chained = std::env::var("CHAIN").map_or(true, |v| v != "0");
    if chained {
        store.chain_as("bench").await?;
    }
    let mut redis_config = RedisConfig::new(url);
    redis_config.stream = stream.clone();
    let mut consumer_config = ConsumerConfig::new(redis_config, "bench");
    consumer_config.batch = 2000;
    let commit_max = std::env::var("COMMIT_MAX")
        .map_or(Ok(auditgate_writer::ingest::DEFAULT_COMMIT_MAX), |v| {
            v.parse()
        })?;
    consumer_config.block = Duration::from_millis(200);
    let consumer = Consumer::connect(consumer_config).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let ingest = tokio::spawn(auditgate_writer::ingest::ingest(
        store.clone(),
        consumer,
        commit_max,
        stopped,
    ));
    // Entries are deleted from the stream once committed and acknowledged: an empty stream
    // means every record is in the store.
    loop {
        let left: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    stop.send_replace(true);
    ingest.await?;
    let stored = store.count().await?;
    if stored != count {
        return Err(format!("the store holds {stored} records, not {count}").into());
    }
    println!(
        "drained into {}, chain {}: {:.0} records/s ({count} in {took:.1?})",
        store_url.split("://").next().unwrap_or(store_url),
        if chained { "on" } else { "off" },
        count as f64 / took.as_secs_f64()
    );
    if chained {
        let started = Instant::now();
        let report = auditgate_writer::verify::verify_store(&*store, &[], None).await?;
        println!(
            "verified the chain of {} records in {:.1?}: {}",
            report.records,
            started.elapsed(),
            if report.intact {
                "intact"
            } else {
                "NOT intact"
            }
        );
        for problem in report.problems.iter().take(5) {
            println!("  {}: {}", problem.kind, problem.message);
        }
    }

    // What SQLite itself does with the same rows, in the same run: the target is the drain at
    // 0.95x this loop or better.
    if let Some(path) = store_url.strip_prefix("sqlite://")
        && std::env::var("BARE").is_ok_and(|v| v == "1")
    {
        let (file, options) = path.split_once('?').unwrap_or((path, ""));
        let bare = bare_sqlite_loop(&format!("{file}.bare?{options}"), &template, count)?;
        let drained = count as f64 / took.as_secs_f64();
        println!(
            "bare rusqlite loop, same schema and indexes: {bare:.0} records/s; the drain is {:.2}x it",
            drained / bare
        );
    }

    // What the writer does hourly: refresh the planner's statistics.
    store.optimize().await?;

    // Query latency, newest-first page of 100, median of 5.
    let base = Query {
        limit: 100,
        ..Query::default()
    };
    let since = Utc.with_ymd_and_hms(2026, 1, 1, 2, 0, 0).unwrap();
    let cases: Vec<(&str, Query)> = vec![
        ("no filter", base.clone()),
        (
            "operation=asset.rename",
            Query {
                operation: vec![OperationFilter::Exact("asset.rename".into())],
                ..base.clone()
            },
        ),
        (
            "operation=asset.*",
            Query {
                operation: vec![OperationFilter::Prefix("asset.".into())],
                ..base.clone()
            },
        ),
        (
            "actor=u_42",
            Query {
                actor: Some("u_42".into()),
                ..base.clone()
            },
        ),
        (
            "resource=f4242",
            Query {
                resource: Some("f4242".into()),
                ..base.clone()
            },
        ),
        (
            "resource=/folder42/file4242.png",
            Query {
                resource: Some("/folder42/file4242.png".into()),
                ..base.clone()
            },
        ),
        (
            "request_id=req-424242",
            Query {
                request_id: Some("req-424242".into()),
                ..base.clone()
            },
        ),
        (
            "outcome=failure",
            Query {
                outcome: Some(auditgate_rules::Outcome::Failure),
                ..base.clone()
            },
        ),
        (
            "since..until (1 h)",
            Query {
                since: Some(since),
                until: Some(since + chrono::Duration::hours(1)),
                ..base.clone()
            },
        ),
        (
            "actor+operation prefix+outcome",
            Query {
                actor: Some("u_7".into()),
                operation: vec![OperationFilter::Prefix("tag.".into())],
                outcome: Some(auditgate_rules::Outcome::Success),
                ..base.clone()
            },
        ),
        (
            "history resource=f4242",
            Query {
                resource: Some("f4242".into()),
                order: Order::OldestFirst,
                ..base.clone()
            },
        ),
    ];
    // One history per asset: the names linked to the path (its TYPE:ID), then the page.
    {
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let names = store.linked("/folder42/file4242.png").await?;
            let query = Query {
                resource: Some("/folder42/file4242.png".into()),
                resource_names: names,
                order: Order::OldestFirst,
                ..base.clone()
            };
            n = store.query(&query).await?.records.len();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "  {:36} {:>8.2} ms  ({n} records)",
            "history, linked names (/history)",
            times[2].as_secs_f64() * 1000.0
        );
    }
    for (name, query) in cases {
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..5 {
            let t = Instant::now();
            n = store.query(&query).await?.records.len();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "  {name:36} {:>8.2} ms  ({n} records)",
            times[2].as_secs_f64() * 1000.0
        );
    }

    // Export everything, counting bytes, watching memory.
    let rss_before = anon_mib();
    let mut rss_max = rss_before;
    let started = Instant::now();
    let mut rx = store.export(Query::default());
    let mut bytes = 0usize;
    let mut chunks = 0u64;
    while let Some(chunk) = rx.recv().await {
        bytes += chunk?.iter().map(String::len).sum::<usize>();
        chunks += 1;
        if chunks.is_multiple_of(64) {
            rss_max = rss_max.max(anon_mib());
        }
    }
    println!(
        "export of {count} records: {} MiB in {:.1?}; anonymous memory {} MiB before, at most {} MiB during",
        bytes >> 20,
        started.elapsed(),
        rss_before,
        rss_max
    );
    redis::cmd("DEL")
        .arg(&stream)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}
