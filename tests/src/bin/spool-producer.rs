//! A producer process for the "killed with records in its spool" test: enqueues COUNT records
//! while Redis is unreachable, prints each record id, then `spooled` once all of them are on
//! disk, and waits to be killed.
//!
//! Usage: spool-producer REDIS_URL SPOOL_DIR COUNT

use std::time::Duration;

use auditgate_queue::{QueueConfig, RecordSink, RedisQueue};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, dir, count] = args.as_slice() else {
        eprintln!("usage: spool-producer REDIS_URL SPOOL_DIR COUNT");
        std::process::exit(2);
    };
    let count: u64 = count.parse().expect("COUNT is a number");
    let queue = RedisQueue::start(QueueConfig::new(url.as_str()).spool(dir, 1 << 30))
        .expect("start the queue");
    for n in 0..count {
        let record = auditgate_tests::record(n);
        println!("{}", record.id);
        queue.enqueue(record).expect("accepted");
    }
    while queue.stats().spooled < count {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("spooled");
    std::future::pending::<()>().await;
}
