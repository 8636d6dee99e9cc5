//! Producer throughput into a local Redis: records/s from the first `enqueue` until Redis has
//! confirmed the last record, for several batch sizes. `scripts/bench queue` runs it beside
//! `redis-benchmark -P 64` XADD on the same server.
//!
//! ```sh
//! redis-server --port 6390 --save '' &
//! cargo run --release -p auditgate-queue --example throughput -- redis://127.0.0.1:6390 200000
//! ```
//!
//! With `cluster:URL,URL,…` instead of a URL it sends to a Redis Cluster, spread over
//! `SHARDS` (default 6) shard keys; `MIN_REPLICAS=N` sets `redis.min_replicas_acked`.

use std::time::{Duration, Instant};

use auditgate_queue::{QueueConfig, RecordSink, RedisQueue};
use auditgate_rules::AuditRecord;

/// The example record of docs/auditors.md ("The record"): about 600 bytes of JSON.
const RECORD: &str = r#"{"schema":1,"id":"0193a6f0-7c1e-7d5e-9b1a-2f4c8e9d0a11",
  "time":"2026-11-22T10:00:00.123456Z","duration_ms":3.21,"service":"media-library",
  "operation":"asset.rename","rule":"file-rename","description":"Renamed file abc to tree.png",
  "actor":{"id":"u_123","source":"jwt/sub"},"request":{"id":"0193a6f0-7c1e-7d5e-9b1a-2f4c8e9d0a12",
  "method":"PATCH","path":"/v1/files/abc/details","route":"/v1/files/{fileId}/details",
  "client_ip":"203.0.113.0","user_agent":"curl/8.5.0"},
  "resources":[{"type":"file","id":"abc","path":"/forest/tree.png"}],"response":{"status":200},
  "outcome":"success","details":{"new_name":"tree.png"}}"#;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).map_or("redis://127.0.0.1:6379", String::as_str);
    let count: u64 = args.get(2).map_or(Ok(200_000), |n| n.parse())?;
    let template: AuditRecord = serde_json::from_str(RECORD)?;
    let spool = std::env::temp_dir().join(format!("auditgate-bench-spool-{}", std::process::id()));

    for batch in [1usize, 16, 64, 256] {
        // One round trip per record is slow: a tenth of the records tells its rate as well.
        let count = if batch == 1 { count / 10 } else { count };
        let mut config = QueueConfig::new(url)
            .stream(format!("bench:batch{batch}"))
            .spool(spool.join(batch.to_string()), 1 << 30)
            .buffer(count as usize)
            .batch(batch)
            .origin_kind("bench");
        if let Some(nodes) = url.strip_prefix("cluster:") {
            let shards = std::env::var("SHARDS").map_or(Ok(6), |s| s.parse())?;
            config.redis = auditgate_queue::RedisConfig {
                stream: config.redis.stream.clone(),
                shards,
                ..auditgate_queue::RedisConfig::cluster(nodes.split(','))
            };
        }
        // MIN_REPLICAS=1: what waiting for a replica (`WAIT 1`) costs.
        if let Ok(n) = std::env::var("MIN_REPLICAS") {
            config.redis.min_replicas_acked = n.parse()?;
        }
        let queue = RedisQueue::start(config)?;
        // Connected before the clock starts.
        while !queue.stats().redis_up {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        let producer = {
            let queue = queue.clone();
            let template = template.clone();
            std::thread::spawn(move || {
                for _ in 0..count {
                    let mut r = template.clone();
                    r.id = uuid::Uuid::now_v7();
                    queue.enqueue(r).ok();
                }
            })
        };
        loop {
            let s = queue.stats();
            if s.sent + s.replayed + s.dropped >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let took = started.elapsed();
        producer.join().map_err(|_| "producer thread panicked")?;
        queue.shutdown().await;
        let s = queue.stats();
        println!(
            "batch {batch:>3}: {:>9.0} records/s  ({count} records in {:.2?}; spooled {}, dropped {})",
            count as f64 / took.as_secs_f64(),
            took,
            s.spooled,
            s.dropped
        );
    }
    std::fs::remove_dir_all(&spool).ok();
    Ok(())
}
