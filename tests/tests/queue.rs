//! The record queue against real redis-server processes: volume, Redis crashes, producer
//! crashes, a full spool, and the consumer group.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate_queue::{
    Accepted, Consumer, ConsumerConfig, QueueConfig, RecordSink, RedisConfig, RedisQueue,
};
use auditgate_tests::{RedisServer, free_port, record, wait_until};
use uuid::Uuid;

const STREAM: &str = "auditgate:records";

fn ids(records: &[auditgate_rules::AuditRecord]) -> HashSet<Uuid> {
    records.iter().map(|r| r.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_records_from_four_producers_arrive_exactly_once() {
    let redis = RedisServer::start();
    let spools = tempfile::tempdir().unwrap();
    let mut producers = Vec::new();
    for p in 0..4 {
        let queue = RedisQueue::start(
            QueueConfig::new(redis.url())
                .spool(spools.path().join(p.to_string()), 1 << 30)
                .instance(format!("producer-{p}")),
        )
        .unwrap();
        producers.push(queue);
    }
    let threads: Vec<_> = producers
        .iter()
        .cloned()
        .enumerate()
        .map(|(p, queue)| {
            std::thread::spawn(move || {
                let mut sent = Vec::with_capacity(25_000);
                for n in 0..25_000u64 {
                    let r = record(p as u64 * 100_000 + n);
                    sent.push(r.id);
                    queue.enqueue(r).expect("accepted");
                }
                sent
            })
        })
        .collect();
    let mut sent = HashSet::new();
    for t in threads {
        sent.extend(t.join().unwrap());
    }
    for queue in &producers {
        queue.shutdown().await;
        let stats = queue.stats();
        assert_eq!(stats.enqueued, 25_000);
        assert_eq!(stats.dropped, 0);
        assert_eq!(stats.sent + stats.replayed, 25_000, "{stats:?}");
    }

    let stored = redis.records(STREAM);
    assert_eq!(stored.len(), 100_000, "each record once, no more, no less");
    assert_eq!(ids(&stored), sent);
    // origin.seq counts 1..=25 000 per producer, without gaps.
    for p in 0..4 {
        let mut seqs: Vec<u64> = stored
            .iter()
            .filter_map(|r| r.origin.as_ref())
            .filter(|o| o.instance == format!("producer-{p}"))
            .map(|o| o.seq)
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=25_000).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_five_seconds_later_loses_nothing() {
    let mut redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let buffer = 1_000;
    let queue = RedisQueue::start(
        QueueConfig::new(redis.url())
            .spool(spool.path(), 1 << 30)
            .buffer(buffer),
    )
    .unwrap();

    // A steady producer: 20 000 records over about 8 s, timing every enqueue.
    let producer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            let mut sent = HashSet::new();
            let mut slowest = Duration::ZERO;
            let mut deepest = 0;
            for n in 0..20_000u64 {
                let r = record(n);
                sent.insert(r.id);
                let started = Instant::now();
                queue.enqueue(r).expect("accepted");
                slowest = slowest.max(started.elapsed());
                deepest = deepest.max(queue.stats().buffer_depth);
                if n % 250 == 0 {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            (sent, slowest, deepest)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    redis.kill();
    assert!(wait_until(Duration::from_secs(5), || !queue
        .stats()
        .redis_up));
    std::thread::sleep(Duration::from_secs(5));
    let spooled_while_down = queue.stats().spooled;
    redis.restart();
    let (sent, slowest, deepest) = producer.join().unwrap();
    queue.shutdown().await;

    let stats = queue.stats();
    assert!(
        spooled_while_down > 0,
        "the spool took the records: {stats:?}"
    );
    assert!(deepest <= buffer as u64, "memory stays bounded: {deepest}");
    assert_eq!(stats.dropped, 0);
    assert!(
        slowest < Duration::from_secs(1),
        "enqueue never waited on the dead Redis: slowest call {slowest:?}"
    );
    let stored = ids(&redis.records(STREAM));
    let missing = sent.difference(&stored).count();
    assert_eq!(missing, 0, "every record arrived; {stats:?}");
    assert_eq!(
        queue.stats().spool_bytes,
        0,
        "the spool was replayed and deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_producer_leaves_a_spool_that_the_next_one_replays() {
    let spool = tempfile::tempdir().unwrap();
    let dead_redis = format!("redis://127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_spool-producer"))
        .arg(&dead_redis)
        .arg(spool.path())
        .arg("500")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sent = HashSet::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == "spooled" {
            break;
        }
        sent.insert(Uuid::parse_str(&line).unwrap());
    }
    child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    child.wait().unwrap();
    assert_eq!(sent.len(), 500);

    let redis = RedisServer::start();
    let queue =
        RedisQueue::start(QueueConfig::new(redis.url()).spool(spool.path(), 1 << 30)).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || redis.len(STREAM) >= 500),
        "replayed {} of 500",
        redis.len(STREAM)
    );
    // The restarted producer continues the dead one's name and sequence, past what the crash
    // may have used: a record lost in that crash would lie in a gap of this one instance.
    let after = record(9_999);
    let after_id = after.id;
    queue.enqueue(after).unwrap();
    queue.shutdown().await;
    let records = redis.records(STREAM);
    let (replayed, new): (Vec<_>, Vec<_>) = records.iter().partition(|r| r.id != after_id);
    assert_eq!(ids(&redis.records(STREAM)).len(), 501);
    assert_eq!(queue.stats().replayed, 500);
    let origin = |r: &auditgate_rules::AuditRecord| r.origin.clone().unwrap();
    let instances: HashSet<String> = records.iter().map(|r| origin(r).instance).collect();
    assert_eq!(
        instances.len(),
        1,
        "one instance across the crash: {instances:?}"
    );
    let last_before = replayed.iter().map(|r| origin(r).seq).max().unwrap();
    assert_eq!(last_before, 500);
    assert!(
        origin(new[0]).seq > last_before,
        "the sequence goes on past the crash: {} after {last_before}",
        origin(new[0]).seq
    );

    // A clean stop leaves no gap: the next start takes the next number.
    drop(queue); // the spool's lock goes with it
    let next =
        RedisQueue::start(QueueConfig::new(redis.url()).spool(spool.path(), 1 << 30)).unwrap();
    let clean = record(10_000);
    let clean_id = clean.id;
    next.enqueue(clean).unwrap();
    next.shutdown().await;
    let clean = redis
        .records(STREAM)
        .into_iter()
        .find(|r| r.id == clean_id)
        .unwrap();
    assert_eq!(origin(&clean).seq, origin(new[0]).seq + 1);
    assert_eq!(origin(&clean).instance, origin(new[0]).instance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_must_drop_keeps_the_newest_record_so_the_drops_show_as_a_gap() {
    let mut redis = RedisServer::stopped_on(free_port());
    let spool = tempfile::tempdir().unwrap();
    let url = redis.url();
    let config = || {
        QueueConfig::new(url.clone())
            .spool(spool.path(), 4 * 1024)
            .buffer(64)
            .instance("tail")
    };
    let queue = RedisQueue::start(config()).unwrap();
    for n in 1..=20 {
        queue.enqueue(record(n)).unwrap();
    }
    queue.shutdown().await;
    let dropped = queue.stats().dropped;
    assert!(dropped > 0, "4 KiB cannot hold 20 records");
    drop(queue); // releases the spool for the next start

    redis.restart();
    let next = RedisQueue::start(config()).unwrap();
    let expected = 20 - dropped as usize;
    assert!(
        wait_until(Duration::from_secs(20), || redis.len(STREAM) >= expected),
        "{} of {expected} arrived",
        redis.len(STREAM)
    );
    next.shutdown().await;
    let seqs: HashSet<u64> = redis
        .records(STREAM)
        .iter()
        .map(|r| r.origin.as_ref().unwrap().seq)
        .collect();
    assert_eq!(seqs.len(), expected);
    // The newest made it, so every drop is a gap below it, which the writer reports.
    assert!(seqs.contains(&20), "{seqs:?}");
    assert_eq!(
        (1..20).filter(|s| !seqs.contains(s)).count() as u64,
        dropped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_and_spool_full_counts_every_drop_and_refuses_closed_rules() {
    let mut redis = RedisServer::stopped_on(free_port());
    let spool = tempfile::tempdir().unwrap();
    let queue = RedisQueue::start(
        QueueConfig::new(redis.url())
            .spool(spool.path(), 64 * 1024)
            .buffer(16)
            .instance("full"),
    )
    .unwrap();
    assert!(queue.can_accept(), "the spool has room");

    let mut refused = 0;
    for n in 0..1_000 {
        match queue.enqueue(record(n)) {
            Ok(Accepted::Buffered | Accepted::Spooled) => {}
            Err(_) => refused += 1,
        }
        if n % 100 == 0 {
            // Let the flusher move the buffer to the spool, as it would under real traffic.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(refused > 0, "64 KiB cannot hold 1 000 records");
    assert_eq!(queue.stats().dropped, refused);
    assert!(
        !queue.can_accept(),
        "closed: Redis down and the spool full means a closed rule must refuse"
    );

    redis.restart();
    let expected = 1_000 - refused as usize;
    assert!(
        wait_until(Duration::from_secs(20), || redis.len(STREAM) >= expected),
        "{} of {expected} arrived",
        redis.len(STREAM)
    );
    queue.shutdown().await;
    let stored = redis.records(STREAM);
    assert_eq!(
        stored.len(),
        expected,
        "exactly the records not counted as dropped"
    );
    // The gaps in origin.seq are exactly the drops.
    let seqs: HashSet<u64> = stored
        .iter()
        .map(|r| r.origin.as_ref().unwrap().seq)
        .collect();
    let gaps = (1..=1_000).filter(|s| !seqs.contains(s)).count() as u64;
    assert_eq!(gaps, refused);
    assert!(queue.can_accept());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_entries_are_claimed_and_garbage_is_dead_lettered() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let queue =
        RedisQueue::start(QueueConfig::new(redis.url()).spool(spool.path(), 1 << 20)).unwrap();
    let sent: HashSet<Uuid> = (0..10)
        .map(|n| {
            let r = record(n);
            let id = r.id;
            queue.enqueue(r).unwrap();
            id
        })
        .collect();
    queue.shutdown().await;
    let mut conn = redis.connection().unwrap();
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("record")
        .arg("{not json")
        .query(&mut conn)
        .unwrap();
    // And an entry someone wrote by hand, without a record field.
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("other")
        .arg("x")
        .query(&mut conn)
        .unwrap();

    let config = |name: &str| {
        let mut c = ConsumerConfig::new(RedisConfig::new(redis.url()), name);
        c.block = Duration::from_millis(100);
        c.claim_idle = Duration::from_millis(300);
        c
    };
    // Writer A reads everything, then dies before committing.
    let mut a = Consumer::connect(config("writer-a")).await.unwrap();
    let read = a.next_batch().await.unwrap();
    assert_eq!(read.len(), 10);
    assert_eq!(a.dead_lettered(), 2);
    drop(a);

    // Writer B gets nothing new, then claims A's entries once they have been idle.
    let mut b = Consumer::connect(config("writer-b")).await.unwrap();
    let mut claimed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while claimed.len() < 10 && Instant::now() < deadline {
        let batch = b.next_batch().await.unwrap();
        b.ack(&batch).await.unwrap();
        claimed.extend(batch.into_iter().map(|d| d.record.id));
    }
    assert_eq!(claimed.iter().copied().collect::<HashSet<_>>(), sent);
    assert_eq!(claimed.len(), 10, "each committed once");
    assert_eq!(redis.len(STREAM), 0, "acknowledged entries are deleted");
    // XPENDING's summary starts with the number of pending entries.
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg("auditgate-writers")
        .query(&mut conn)
        .unwrap();
    assert_eq!(pending[0], redis::Value::Int(0), "nothing left pending");

    let dead = redis.entries("auditgate:records:dead");
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["record"], b"{not json");
    let reason = String::from_utf8_lossy(&dead[0]["reason"]).into_owned();
    assert!(reason.starts_with("not an audit record"), "{reason}");
    // What the hand-written entry held is kept beside the reason.
    assert_eq!(dead[1]["original.other"], b"x");
    assert_eq!(dead[1]["reason"], b"the entry has no `record` field");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_spread_records_and_one_consumer_reads_them_all() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let queue = Arc::new(
        RedisQueue::start(
            QueueConfig::new(redis.url())
                .shards(4)
                .spool(spool.path(), 1 << 20),
        )
        .unwrap(),
    );
    let sent: HashSet<Uuid> = (0..100)
        .map(|n| {
            let r = record(n);
            let id = r.id;
            queue.enqueue(r).unwrap();
            id
        })
        .collect();
    queue.shutdown().await;
    for shard in 0..4 {
        assert_eq!(redis.len(&format!("{STREAM}:{{{shard}}}")), 25);
    }
    let mut redis_config = RedisConfig::new(redis.url());
    redis_config.shards = 4;
    let mut consumer = Consumer::connect(ConsumerConfig::new(redis_config, "w"))
        .await
        .unwrap();
    let mut got = HashSet::new();
    while got.len() < 100 {
        let batch = consumer.next_batch().await.unwrap();
        assert!(!batch.is_empty());
        consumer.ack(&batch).await.unwrap();
        got.extend(batch.into_iter().map(|d| d.record.id));
    }
    assert_eq!(got, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_right_after_enqueue_sends_everything_and_later_records_are_spooled() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let queue =
        RedisQueue::start(QueueConfig::new(redis.url()).spool(spool.path(), 1 << 20)).unwrap();
    for n in 0..50 {
        queue.enqueue(record(n)).unwrap();
    }
    queue.shutdown().await;
    assert_eq!(redis.len(STREAM), 50);
    assert_eq!(queue.stats().sent, 50);

    // The flusher is gone: a late record is kept on disk for the next start, not lost.
    assert_eq!(queue.enqueue(record(50)), Ok(Accepted::Spooled));
    drop(queue);
    let next =
        RedisQueue::start(QueueConfig::new(redis.url()).spool(spool.path(), 1 << 20)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || redis.len(STREAM) == 51));
    next.shutdown().await;
}

/// The `calls` of `cmdstat_xadd` in `INFO commandstats`: every XADD Redis received.
fn xadd_calls(redis: &RedisServer) -> u64 {
    let mut conn = redis.connection().expect("connect to redis");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .expect("INFO commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_xadd:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One shard key holds a string (a wrong-typed key, as a careless operator leaves one): each
/// XADD to it fails with WRONGTYPE while the others in the same pipeline succeed. Only the
/// failed commands are dealt with, and a permanent refusal is counted as dropped, not re-sent:
/// the other shard holds each of its records once, and Redis sees each XADD once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_fails_in_part_is_not_resent_whole_nor_forever() {
    let redis = RedisServer::start();
    let mut conn = redis.connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{STREAM}:{{1}}"))
        .arg("not a stream")
        .query(&mut conn)
        .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let queue = RedisQueue::start(
        QueueConfig::new(redis.url())
            .shards(2)
            .spool(spool.path(), 1 << 20),
    )
    .unwrap();
    for n in 0..100 {
        queue.enqueue(record(n)).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            let stats = queue.stats();
            stats.sent + stats.dropped == 100
        }),
        "{:?}",
        queue.stats()
    );
    // Long enough for a retry loop to show (the flusher turns every ~100 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = queue.stats();
    assert_eq!((stats.sent, stats.dropped), (50, 50), "{stats:?}");
    assert_eq!(redis.len(&format!("{STREAM}:{{0}}")), 50, "no duplicates");
    assert_eq!(xadd_calls(&redis), 100, "each XADD sent once");
    queue.shutdown().await;
    assert_eq!(xadd_calls(&redis), 100);
}

/// The spool on a tiny tmpfs, as a full disk: writes fail with ENOSPC. A record the disk
/// refuses is counted as dropped, `can_accept` (what `closed` rules ask) is false while the
/// disk refuses, and once space is freed spooling resumes — a segment the full disk left
/// half-made does not stand in the way of the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_closed_calls_until_space_is_freed() {
    let Some(dir) = auditgate_tests::Tmpfs::mount("64k") else {
        eprintln!(
            "SKIPPED a_full_disk_refuses_closed_calls_until_space_is_freed: cannot mount a tmpfs here"
        );
        return;
    };
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; 40 * 1024]).unwrap();
    let dead_redis = format!("redis://127.0.0.1:{}", free_port());
    let queue =
        RedisQueue::start(QueueConfig::new(dead_redis).spool(dir.path().join("spool"), 1 << 30))
            .unwrap();
    assert!(queue.can_accept());
    for n in 0..200 {
        let _ = queue.enqueue(record(n));
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            let stats = queue.stats();
            stats.spooled + stats.dropped == 200
        }),
        "every record is spooled or counted: {:?}",
        queue.stats()
    );
    let stats = queue.stats();
    assert!(
        stats.spooled > 0 && stats.dropped > 0,
        "the disk filled up: {stats:?}"
    );
    // One more, refused by the disk just now: closed rules are refused from then on.
    queue.enqueue(record(999)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || queue
        .stats()
        .dropped
        == stats.dropped + 1));
    assert!(
        !queue.can_accept(),
        "a disk that refuses writes is full for closed rules"
    );
    assert!(
        received(&queue).await.is_err(),
        "a closed call's received record is refused while the disk is full"
    );

    std::fs::remove_file(&filler).unwrap();
    // A second after the last refusal, a caller may try again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        queue.can_accept(),
        "space freed: closed rules are accepted again"
    );
    assert!(
        received(&queue).await.is_ok(),
        "and a closed call's received record is on disk once answered"
    );
    let before = queue.stats();
    for n in 1000..1005 {
        queue.enqueue(record(n)).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || queue.stats().spooled
            >= before.spooled + 5),
        "spooling resumes: {:?}",
        queue.stats()
    );
    assert_eq!(
        queue.stats().dropped,
        before.dropped,
        "nothing more dropped"
    );
    queue.shutdown().await;
}

/// `enqueue_durable`, the contract `closed` rules stand on, against a real redis-server: every
/// record of 100 concurrent callers is durable (in the stream) once its answer says so; with
/// Redis unreachable the spool takes them (on disk once answered); with no spool either, the
/// answer is that nothing is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_means_in_the_stream_or_on_disk_when_answered() {
    // Redis up: acknowledged by Redis.
    let redis = RedisServer::start();
    let first_spool = tempfile::tempdir().unwrap();
    let queue = Arc::new(
        RedisQueue::start(QueueConfig::new(redis.url()).spool(first_spool.path(), 1 << 20))
            .unwrap(),
    );
    let waits: Vec<_> = (0..100).map(|_| received(&queue)).collect();
    let mut seqs = HashSet::new();
    for wait in waits {
        seqs.insert(wait.await.expect("durable"));
    }
    assert_eq!(seqs.len(), 100, "each has its own origin.seq");
    assert_eq!(redis.len(STREAM), 100, "all in the stream once answered");
    queue.shutdown().await;

    // Redis unreachable: the spool takes them, on disk once answered.
    let spool = tempfile::tempdir().unwrap();
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let mut config = QueueConfig::new(dead.clone()).spool(spool.path(), 1 << 20);
    config.durable_redis_wait = Duration::from_millis(200);
    let queue = RedisQueue::start(config).unwrap();
    for _ in 0..10 {
        received(&queue).await.expect("durable in the spool");
    }
    assert_eq!(queue.stats().spooled, 10);
    queue.shutdown().await;

    // Neither: not durable.
    let mut config = QueueConfig::new(dead);
    config.spool = None;
    config.durable_redis_wait = Duration::from_millis(200);
    let queue = RedisQueue::start(config).unwrap();
    let answer = received(&queue).await;
    assert!(
        answer.is_err(),
        "without Redis or a spool nothing is durable"
    );
    queue.shutdown().await;
}

/// A `closed` call's received record, as the proxy and the layer make it, handed to
/// `enqueue_durable`.
fn received(queue: &RedisQueue) -> auditgate_queue::Durable {
    use auditgate_rules::RuleSet;
    use axum::http;
    let rules = RuleSet::from_yaml(
        "r.yaml",
        "version: 1\nservice: s\nrules:\n  - { operation: x.y, method: POST, path: /x }\n",
    )
    .expect("the rule set loads");
    let method = http::Method::POST;
    let uri: http::Uri = "/x".parse().expect("a path");
    let headers = http::HeaderMap::new();
    let found = rules.matches(&method, "/x").expect("the rule matches");
    let call = auditgate_rules::Call::new(&method, &uri, &headers);
    queue.enqueue_durable(found.record_ref(&call).expect("a record"))
}
