//! [`Consumer`]: the writer's side of the stream, through the consumer group.
//!
//! Delivery is at least once: an entry is acknowledged and deleted ([`Consumer::ack`]) only
//! after the caller has committed its records, so a writer that dies between reading and
//! committing leaves its entries pending, and another writer claims them once they have been
//! idle for `claim_idle`. Entries that do not hold a parseable record are moved to the
//! dead-letter stream (`STREAM:dead`) with the reason, so that one bad entry never blocks the
//! rest.
//!
//! ```no_run
//! use auditgate_queue::{Consumer, ConsumerConfig, RedisConfig};
//!
//! # async fn run() -> Result<(), auditgate_queue::QueueError> {
//! let mut consumer = Consumer::connect(ConsumerConfig::new(
//!     RedisConfig::new("redis://127.0.0.1:6379"),
//!     "writer-1",
//! ))
//! .await?;
//! loop {
//!     let batch = consumer.next_batch().await?; // waits up to `block` for entries
//!     // ... commit batch.iter().map(|d| &d.record) to the store ...
//!     consumer.ack(&batch).await?;              // only now are they gone from Redis
//! }
//! # }
//! ```

use std::time::{Duration, Instant};

use auditgate_rules::{AuditRecord, SCHEMA_VERSION};
use redis::Value;

use crate::config::RedisConfig;
use crate::error::QueueError;

/// How a writer reads the stream.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The stream, its shards and the group.
    pub redis: RedisConfig,
    /// This consumer's name in the group, unique per writer process; a writer restarted with
    /// the same name first re-reads what it had read but not acknowledged.
    pub name: String,
    /// Entries per read at most. Default 512.
    pub batch: usize,
    /// How long a read waits for new entries. Default 2 s.
    pub block: Duration,
    /// How long an entry must sit unacknowledged with another consumer before this one claims
    /// it. Default 30 s.
    pub claim_idle: Duration,
}

/// One stream entry and the record it holds.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The stream key it came from (one of the shards).
    pub key: String,
    /// Its stream entry ID.
    pub entry_id: String,
    /// The record.
    pub record: AuditRecord,
    /// The record's JSON as it was queued: what a store keeps, without serialising again.
    pub json: String,
}

/// How long a read of a sharded stream on a cluster waits, when every shard was empty, before
/// it answers empty (a cluster cannot block on several shards at once).
const CLUSTER_POLL: Duration = Duration::from_millis(100);

/// A consumer in the group, on its own connection.
#[derive(Debug)]
pub struct Consumer {
    target: crate::link::Target,
    conn: Option<crate::link::Link>,
    config: ConsumerConfig,
    keys: Vec<String>,
    dead_key: String,
    /// Until our own pending entries have been read once (after a restart under the same name).
    reread_own: bool,
    next_claim: Instant,
    claim_cursors: Vec<String>,
    dead_lettered: u64,
}

/// One entry as Redis returned it: the `record` field, if the entry still exists and has one.
struct RawEntry {
    key: String,
    id: String,
    record: Option<Vec<u8>>,
    /// The entry's other fields: kept for the dead letters, where someone will want to see
    /// what was written instead of a record.
    others: Fields,
}

/// An entry on its way to the dead-letter stream.
struct DeadLetter<'a> {
    key: &'a str,
    entry_id: &'a str,
    record: &'a [u8],
    reason: &'a str,
    others: &'a [(Vec<u8>, Vec<u8>)],
}

/// Field names and values of a stream entry.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

impl ConsumerConfig {
    /// Defaults for everything but the stream and the name.
    pub fn new(redis: RedisConfig, name: impl Into<String>) -> ConsumerConfig {
        ConsumerConfig {
            redis,
            name: name.into(),
            batch: 512,
            block: Duration::from_secs(2),
            claim_idle: Duration::from_secs(30),
        }
    }
}

impl Consumer {
    /// Connects and creates the group (reading from the stream's beginning) when it is
    /// missing.
    pub async fn connect(config: ConsumerConfig) -> Result<Consumer, QueueError> {
        let mut consumer = Consumer::new(config)?;
        consumer.ensure_connected().await?;
        Ok(consumer)
    }

    /// A consumer that connects (and creates the group) on its first read, and again after
    /// any failure: a writer can start, and serve what it has stored, while Redis is away.
    /// Only a URL that cannot be a Redis URL is an error here.
    pub fn new(config: ConsumerConfig) -> Result<Consumer, QueueError> {
        let target = crate::link::Target::open(&config.redis)?;
        let keys = config.redis.keys();
        Ok(Consumer {
            target,
            conn: None,
            claim_cursors: vec!["0-0".to_owned(); keys.len()],
            dead_key: config.redis.dead_letter_key(),
            keys,
            config,
            reread_own: true,
            next_claim: Instant::now(),
            dead_lettered: 0,
        })
    }

    /// Connects now, if not connected: for a caller that wants to know at start whether Redis
    /// answers. Reads connect by themselves.
    pub async fn ensure_connected(&mut self) -> Result<(), QueueError> {
        self.connection().await.map(|_| ())
    }

    /// Entries moved to the dead-letter stream by this consumer.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered
    }

    /// The next entries to commit: this consumer's own unacknowledged ones first (after a
    /// restart), then entries idle with dead consumers, then new ones (waiting up to `block`).
    /// Empty when nothing arrived in time. Unparseable entries are dead-lettered, not returned.
    pub async fn next_batch(&mut self) -> Result<Vec<Delivery>, QueueError> {
        self.batch_waiting(Some(self.config.block)).await
    }

    /// Like [`Consumer::next_batch`], but returns at once (empty) when nothing new is there:
    /// for a caller that has other work (a commit to acknowledge) once the stream is drained.
    pub async fn try_next_batch(&mut self) -> Result<Vec<Delivery>, QueueError> {
        self.batch_waiting(None).await
    }

    async fn batch_waiting(
        &mut self,
        block: Option<Duration>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let result = self.read(block).await;
        if result.is_err() {
            // Reconnect on the next call; the group may also need re-creating.
            self.conn = None;
        }
        result
    }

    /// Acknowledges and deletes delivered entries: call after their records are committed.
    pub async fn ack(&mut self, deliveries: &[Delivery]) -> Result<(), QueueError> {
        let ids: Vec<(String, String)> = deliveries
            .iter()
            .map(|d| (d.key.clone(), d.entry_id.clone()))
            .collect();
        self.ack_ids(&ids).await
    }

    /// [`Consumer::ack`] by `(stream key, entry ID)`, for callers that have moved the records
    /// out of their deliveries.
    pub async fn ack_ids(&mut self, entries: &[(String, String)]) -> Result<(), QueueError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        // Acknowledge and delete in one transaction: an entry is never left deleted but
        // pending, nor acknowledged but kept forever.
        pipe.atomic();
        for key in &self.keys {
            let ids: Vec<&str> = entries
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, id)| id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            pipe.cmd("XACK")
                .arg(key)
                .arg(&self.config.redis.group)
                .arg(&ids)
                .ignore();
            pipe.cmd("XDEL").arg(key).arg(&ids).ignore();
        }
        let conn = self.connection().await?;
        let result = conn.run_all(&pipe).await;
        if result.is_err() {
            self.conn = None;
        }
        Ok(result?)
    }

    async fn read(&mut self, block: Option<Duration>) -> Result<Vec<Delivery>, QueueError> {
        if self.reread_own {
            let entries = self.read_group("0", None).await?;
            if entries.is_empty() {
                self.reread_own = false;
            } else {
                return self.sort(entries).await;
            }
        }
        if Instant::now() >= self.next_claim {
            let entries = self.claim().await?;
            if !entries.is_empty() {
                return self.sort(entries).await;
            }
            self.next_claim = Instant::now() + self.config.claim_idle / 2;
        }
        let entries = self.read_group(">", block).await?;
        self.sort(entries).await
    }

    /// `XREADGROUP GROUP g me COUNT n [BLOCK ms] STREAMS keys... ids...`. A cluster takes a
    /// command on one slot only: there, each shard is read on its own without blocking, and
    /// when none had anything the read waits a little before answering empty.
    async fn read_group(
        &mut self,
        from: &str,
        block: Option<Duration>,
    ) -> Result<Vec<RawEntry>, QueueError> {
        if self.target.is_cluster() && self.keys.len() > 1 {
            let mut entries = Vec::new();
            for key in self.keys.clone() {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP")
                    .arg(&self.config.redis.group)
                    .arg(&self.config.name)
                    .arg("COUNT")
                    .arg(self.config.batch)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(from);
                let conn = self.connection().await?;
                let reply: Value = cmd.query_async(conn).await?;
                entries.extend(parse_read_reply(reply));
            }
            if entries.is_empty()
                && let Some(block) = block
            {
                tokio::time::sleep(block.min(CLUSTER_POLL)).await;
            }
            return Ok(entries);
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.config.redis.group)
            .arg(&self.config.name)
            .arg("COUNT")
            .arg(self.config.batch);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.keys);
        for _ in &self.keys {
            cmd.arg(from);
        }
        let conn = self.connection().await?;
        let reply: Value = cmd.query_async(conn).await?;
        Ok(parse_read_reply(reply))
    }

    /// `XAUTOCLAIM` over each shard: entries idle with other consumers for `claim_idle`.
    async fn claim(&mut self) -> Result<Vec<RawEntry>, QueueError> {
        let mut entries = Vec::new();
        for i in 0..self.keys.len() {
            let key = self.keys[i].clone();
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&key)
                .arg(&self.config.redis.group)
                .arg(&self.config.name)
                .arg(self.config.claim_idle.as_millis() as u64)
                .arg(&self.claim_cursors[i])
                .arg("COUNT")
                .arg(self.config.batch);
            let conn = self.connection().await?;
            let reply: Value = cmd.query_async(conn).await?;
            let (cursor, claimed) = parse_autoclaim_reply(&key, reply);
            self.claim_cursors[i] = cursor;
            entries.extend(claimed);
            if entries.len() >= self.config.batch {
                break;
            }
        }
        if !entries.is_empty() {
            tracing::info!(
                entries = entries.len(),
                "claimed audit records left pending by another writer"
            );
        }
        Ok(entries)
    }

    /// Parses entries into deliveries; dead-letters the rest.
    async fn sort(&mut self, entries: Vec<RawEntry>) -> Result<Vec<Delivery>, QueueError> {
        let mut deliveries = Vec::with_capacity(entries.len());
        let mut dead = Vec::new();
        for entry in entries {
            match parse_record(entry.record.as_deref()) {
                Ok(record) => {
                    let RawEntry {
                        key,
                        id,
                        record: bytes,
                        ..
                    } = entry;
                    // parse_record accepted the bytes, so they are valid UTF-8 JSON: the
                    // check below never copies.
                    let json = String::from_utf8(bytes.unwrap_or_default())
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                    deliveries.push(Delivery {
                        key,
                        entry_id: id,
                        record,
                        json,
                    });
                }
                Err(reason) => dead.push((entry, reason)),
            }
        }
        if !dead.is_empty() {
            self.dead_letter(&dead).await?;
        }
        Ok(deliveries)
    }

    async fn dead_letter(&mut self, dead: &[(RawEntry, String)]) -> Result<(), QueueError> {
        let letters: Vec<DeadLetter<'_>> = dead
            .iter()
            .map(|(entry, reason)| DeadLetter {
                key: &entry.key,
                entry_id: &entry.id,
                record: entry.record.as_deref().unwrap_or_default(),
                reason,
                others: &entry.others,
            })
            .collect();
        self.move_to_dead_letters(&letters).await?;
        tracing::warn!(
            entries = dead.len(),
            stream = %self.dead_key,
            "moved unparseable audit records to the dead-letter stream"
        );
        Ok(())
    }

    /// Moves records the store refused to the dead-letter stream, each with the store's own
    /// error as its `reason`, and acknowledges them: a record that can never be stored must
    /// not hold back the ones behind it, nor vanish. `refused` holds each delivery's stream
    /// key, entry ID, record JSON and the store's error.
    pub async fn dead_letter_refused(
        &mut self,
        refused: &[(&str, &str, &str, &str)],
    ) -> Result<(), QueueError> {
        let letters: Vec<DeadLetter<'_>> = refused
            .iter()
            .map(|&(key, entry_id, record, reason)| DeadLetter {
                key,
                entry_id,
                record: record.as_bytes(),
                reason,
                others: &[],
            })
            .collect();
        self.move_to_dead_letters(&letters).await
    }

    /// Adds each letter to the dead-letter stream and removes its entry from the stream it
    /// came from, in one transaction.
    async fn move_to_dead_letters(&mut self, letters: &[DeadLetter<'_>]) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for letter in letters {
            pipe.cmd("XADD")
                .arg(&self.dead_key)
                .arg("*")
                .arg("record")
                .arg(letter.record)
                .arg("reason")
                .arg(letter.reason)
                .arg("source")
                .arg(format!("{} {}", letter.key, letter.entry_id));
            for (name, value) in letter.others {
                pipe.arg([b"original.".as_slice(), name].concat())
                    .arg(value);
            }
            pipe.ignore();
            pipe.cmd("XACK")
                .arg(letter.key)
                .arg(&self.config.redis.group)
                .arg(letter.entry_id)
                .ignore();
            pipe.cmd("XDEL")
                .arg(letter.key)
                .arg(letter.entry_id)
                .ignore();
        }
        let conn = self.connection().await?;
        conn.run_all(&pipe).await?;
        self.dead_lettered += letters.len() as u64;
        Ok(())
    }

    /// The connection, made (and the group ensured) when there is none.
    async fn connection(&mut self) -> Result<&mut crate::link::Link, QueueError> {
        if self.conn.is_none() {
            // The response timeout must outlast a blocking read.
            let mut conn = self
                .target
                .connect(
                    Duration::from_secs(2),
                    self.config.block + Duration::from_secs(10),
                )
                .await?;
            for key in &self.keys {
                let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(key)
                    .arg(&self.config.redis.group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await;
                match created {
                    Ok(()) => {}
                    Err(e) if e.code() == Some("BUSYGROUP") => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.conn = Some(conn);
        }
        match self.conn.as_mut() {
            Some(conn) => Ok(conn),
            None => unreachable!("the connection was set above"),
        }
    }
}

fn parse_record(field: Option<&[u8]>) -> Result<AuditRecord, String> {
    let Some(bytes) = field else {
        return Err("the entry has no `record` field".to_owned());
    };
    read_record(bytes)
}

/// A record's JSON as the writer reads it from the stream: the record, or why it is not one
/// (it then goes to the dead letters). Public so that what producers write can be tested
/// against the very reader that takes it.
pub fn read_record(bytes: &[u8]) -> Result<AuditRecord, String> {
    let record: AuditRecord =
        serde_json::from_slice(bytes).map_err(|e| format!("not an audit record: {e}"))?;
    if record.schema != SCHEMA_VERSION {
        return Err(format!(
            "unsupported schema {} (this writer reads {SCHEMA_VERSION})",
            record.schema
        ));
    }
    Ok(record)
}

/// `[[key, [[id, [field, value, ...]], ...]], ...]`, or a map of key to entries (RESP3), or nil.
fn parse_read_reply(reply: Value) -> Vec<RawEntry> {
    let mut out = Vec::new();
    let streams: Vec<(Value, Value)> = match reply {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let entries = pair.pop()?;
                    let key = pair.pop()?;
                    Some((key, entries))
                }
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs,
        _ => return out,
    };
    for (key, entries) in streams {
        let Some(key) = text(&key) else { continue };
        parse_entries(&key, entries, &mut out);
    }
    out
}

/// `[cursor, [[id, fields], ...], [deleted ids]]`
fn parse_autoclaim_reply(key: &str, reply: Value) -> (String, Vec<RawEntry>) {
    let mut out = Vec::new();
    let Value::Array(mut items) = reply else {
        return ("0-0".to_owned(), out);
    };
    if items.len() >= 2 {
        let entries = std::mem::take(&mut items[1]);
        parse_entries(key, entries, &mut out);
    }
    let cursor = items.first().and_then(text).unwrap_or_else(|| "0-0".into());
    (cursor, out)
}

fn parse_entries(key: &str, entries: Value, out: &mut Vec<RawEntry>) {
    let Value::Array(entries) = entries else {
        return;
    };
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        let mut parts = parts.into_iter();
        let Some(id) = parts.next().as_ref().and_then(text) else {
            continue;
        };
        // A deleted entry that is still pending comes back with nil fields; it has nothing to
        // commit, so it goes to the dead letters as "no record field" and is acknowledged.
        let (record, others) = match parts.next() {
            Some(Value::Array(fields)) => split_fields(fields.into_iter()),
            Some(Value::Map(pairs)) => split_fields(pairs.into_iter().flat_map(|(k, v)| [k, v])),
            _ => (None, Vec::new()),
        };
        out.push(RawEntry {
            key: key.to_owned(),
            id,
            record,
            others,
        });
    }
}

/// The `record` field of an entry's flat field list, and the other fields.
fn split_fields(mut flat: impl Iterator<Item = Value>) -> (Option<Vec<u8>>, Fields) {
    let bytes = |v: Value| match v {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    };
    let (mut record, mut others) = (None, Vec::new());
    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
        let (Some(k), Some(v)) = (bytes(k), bytes(v)) else {
            continue;
        };
        if k == b"record" && record.is_none() {
            record = Some(v);
        } else {
            others.push((k, v));
        }
    }
    (record, others)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
