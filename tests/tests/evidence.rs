//! Evidence an auditor can check, end to end: `auditgate keygen` makes the pair, a writer
//! process chains what it stores and signs checkpoints into a separate directory, and
//! `auditgate verify` (the command, its exit code and its words) passes an untouched store and
//! fails one where a record was changed, deleted from the middle, forged in, or the newest cut
//! off; retention keeps verification whole. On a real SQLite file and a real PostgreSQL server.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed: the panic says where

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use auditgate_queue::RedisConfig;
use auditgate_rules::AuditRecord;
use auditgate_tests::{
    PostgresServer, RedisServer, WriterProcess, enqueue_all, record, wait_until, workspace_bin,
};
use chrono::Utc;

/// `auditgate verify`'s exit code and output.
fn verify(store: &str, checkpoints: Option<&Path>, public_key: &Path) -> (i32, String) {
    let mut cmd = Command::new(workspace_bin("auditgate"));
    cmd.args(["verify", "--store", store, "--public-key"])
        .arg(public_key);
    if let Some(dir) = checkpoints {
        cmd.arg("--checkpoints").arg(dir);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `auditgate verify --export`'s exit code and output.
fn verify_export(file: &Path, public_key: &Path) -> (i32, String) {
    let out = Command::new(workspace_bin("auditgate"))
        .args(["verify", "--export"])
        .arg(file)
        .arg("--public-key")
        .arg(public_key)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Makes the key pair with the command an operator runs.
fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("signing.key");
    let out = Command::new(workspace_bin("auditgate"))
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is the owner's alone");
    // A second run refuses to overwrite it.
    let again = Command::new(workspace_bin("auditgate"))
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    (key.clone(), PathBuf::from(format!("{}.pub", key.display())))
}

async fn enqueue(redis: &RedisServer, records: Vec<AuditRecord>) {
    enqueue_all(RedisConfig::new(redis.url()), "evidence", records).await;
}

/// How to reach a store, and how to make a copy of it to tamper with.
trait Stores {
    /// The writer's `store:` value.
    fn writer_store(&self) -> String;
    /// A copy of the (stopped) writer's store, as a URL `verify` takes.
    fn copy(&self, writer: &WriterProcess, name: &str) -> String;
    /// Runs SQL against a copy.
    fn sql(&self, url: &str, sql: &str);
}

struct Sqlite;

impl Stores for Sqlite {
    fn writer_store(&self) -> String {
        "sqlite://audit.db".into()
    }
    fn copy(&self, writer: &WriterProcess, name: &str) -> String {
        let to = writer.dir.path().join(format!("{name}.db"));
        // The writer stopped cleanly: its WAL is checkpointed into the file, but copy it too.
        for suffix in ["", "-wal", "-shm"] {
            let from = writer.dir.path().join(format!("audit.db{suffix}"));
            if from.exists() {
                std::fs::copy(from, format!("{}{suffix}", to.display())).unwrap();
            }
        }
        format!("sqlite://{}", to.display())
    }
    fn sql(&self, url: &str, sql: &str) {
        let conn = rusqlite::Connection::open(url.strip_prefix("sqlite://").unwrap()).unwrap();
        conn.execute_batch(sql).unwrap();
    }
}

struct Postgres(PostgresServer);

impl Postgres {
    fn psql(&self, db: &str, sql: &str) {
        let url = format!("{}/{db}", self.0.url().rsplit_once('/').unwrap().0);
        let out = Command::new("psql")
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-d", &url, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Stores for Postgres {
    fn writer_store(&self) -> String {
        self.0.url()
    }
    fn copy(&self, _writer: &WriterProcess, name: &str) -> String {
        // From another database: a template must have no connection.
        self.psql(
            "template1",
            &format!("CREATE DATABASE {name} TEMPLATE postgres"),
        );
        format!("{}/{name}", self.0.url().rsplit_once('/').unwrap().0)
    }
    fn sql(&self, url: &str, sql: &str) {
        self.psql(url.rsplit_once('/').unwrap().1, sql);
    }
}

/// The id of the record at link `seq` of the writer's chain, as the API served it.
fn id_at(writer: &WriterProcess, seq: u64) -> String {
    writer_records(writer)
        .iter()
        .find(|r| r["chain"]["seq"] == seq)
        .and_then(|r| r["id"].as_str())
        .unwrap()
        .to_owned()
}

/// Every record the writer served before it stopped.
fn writer_records(writer: &WriterProcess) -> Vec<serde_json::Value> {
    let path = writer.dir.path().join("records.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn evidence_holds_and_tampering_is_named(stores: &dyn Stores) {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path());
    let shipped = tempfile::tempdir().unwrap(); // "another host"
    let redis = RedisServer::start();
    // 10 records older than the retention period, then 20 of today.
    let mut records: Vec<AuditRecord> = (0..30).map(record).collect();
    for r in &mut records[..10] {
        r.time = Utc::now() - chrono::Duration::days(400);
    }
    enqueue(&redis, records).await;
    let extra = format!(
        "signing_key_file: {}\ncheckpoint_seconds: 1\ncheckpoint_dir: {}\nretention_days: 0\n",
        key.display(),
        shipped.path().display()
    );
    let mut writer = WriterProcess::start(&redis.url(), &stores.writer_store(), &extra);
    assert!(wait_until(Duration::from_secs(20), || writer.count() == 30));
    let page = writer.get("/api/v1/records?limit=100").json();
    let served = page["records"].as_array().unwrap().clone();
    for r in &served {
        assert_eq!(r["chain"]["uid"], "test-writer", "{r}");
        assert_eq!(r["chain"]["hash"].as_str().unwrap().len(), 64);
    }
    std::fs::write(
        writer.dir.path().join("records.json"),
        serde_json::to_string(&served).unwrap(),
    )
    .unwrap();
    // Until its first checkpoint, a chain is one nothing vouches for.
    let early = writer.get("/api/v1/verify").json();
    if early["checkpoints_verified"] == 0 {
        assert_eq!(early["intact"], false, "{early}");
    }
    assert!(wait_until(Duration::from_secs(10), || {
        shipped
            .path()
            .join("test-writer.000000000030.checkpoint")
            .exists()
    }));
    // The API reports the same as the command.
    let report = writer.get("/api/v1/verify").json();
    assert_eq!(report["intact"], true, "{report}");
    assert_eq!(report["records"], 30);
    // An export bundle verifies offline with the public key alone; one changed byte of a
    // record in it does not.
    let bundle = writer.get("/api/v1/export?format=bundle");
    assert_eq!(bundle.status, 200);
    let file = keys.path().join("bundle.json");
    std::fs::write(&file, &bundle.body).unwrap();
    let (code, out) = verify_export(&file, &public);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("newest checkpoint link 30"), "{out}");
    let text = String::from_utf8(bundle.body.clone()).unwrap();
    std::fs::write(&file, text.replacen("file-3.png", "file-9.png", 1)).unwrap();
    let (code, out) = verify_export(&file, &public);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ALTERED"), "{out}");
    // A filtered one holds what its records say of themselves.
    let some = writer.get("/api/v1/export?format=bundle&actor=u_3");
    std::fs::write(&file, &some.body).unwrap();
    let (code, out) = verify_export(&file, &public);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("newest checkpoint link 30"), "{out}");

    // A clean stop signs a last checkpoint, here and in the shipped directory.
    assert!(writer.child.terminate().success());
    let shipped_files: Vec<String> = std::fs::read_dir(shipped.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        shipped_files
            .iter()
            .any(|f| f == "test-writer.000000000030.checkpoint"),
        "{shipped_files:?}"
    );

    let store = stores.copy(&writer, "untouched");
    let (code, out) = verify(&store, Some(shipped.path()), &public);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 30 records"), "{out}");

    // One value of one record changed.
    let victim = id_at(&writer, 7);
    let altered = stores.copy(&writer, "altered");
    stores.sql(
        &altered,
        &format!("UPDATE records SET record = replace(record, '\"id\":\"u_', '\"id\":\"mallory_') WHERE id = '{victim}'"),
    );
    let (code, out) = verify(&altered, Some(shipped.path()), &public);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("ALTERED: chain test-writer: record {victim}")),
        "{out}"
    );

    // An indexed column changed (what the filters read), the JSON left alone.
    let column = stores.copy(&writer, "indexed");
    stores.sql(
        &column,
        &format!("UPDATE records SET actor = 'nobody' WHERE id = '{victim}'"),
    );
    let (code, out) = verify(&column, Some(shipped.path()), &public);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("indexed column actor"), "{out}");

    // A record deleted from the middle.
    let middle = stores.copy(&writer, "middle");
    stores.sql(&middle, "DELETE FROM records WHERE chain_seq = 15");
    let (code, out) = verify(&middle, Some(shipped.path()), &public);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("REMOVED: chain test-writer: links 15..15 are missing"),
        "{out}"
    );

    // A forged record inserted: a copy of another under a new id, claiming its link; and one
    // with no link at all.
    let forged = stores.copy(&writer, "forged");
    stores.sql(
        &forged,
        "INSERT INTO records (id, time_us, operation, actor, request_id, outcome, status, origin_instance, origin_seq, record, tenant, chain_uid, chain_seq)
         SELECT 'forged-1', time_us, operation, actor, request_id, outcome, status, origin_instance, origin_seq, replace(record, id, 'forged-1'), tenant, chain_uid, chain_seq
         FROM records WHERE chain_seq = 20;
         INSERT INTO records (id, time_us, operation, actor, request_id, outcome, status, origin_instance, origin_seq, record, tenant)
         SELECT 'forged-2', time_us, operation, actor, request_id, outcome, status, origin_instance, origin_seq, '{\"id\":\"forged-2\"}', tenant
         FROM records WHERE chain_seq = 21;",
    );
    let (code, out) = verify(&forged, Some(shipped.path()), &public);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("INSERTED: chain test-writer:"), "{out}");
    assert!(out.contains("two records claim link 20"), "{out}");
    assert!(out.contains("record forged-2 has no chain link"), "{out}");

    // The newest five cut off, the head moved back to match and the store's own checkpoints
    // deleted: only the checkpoint kept elsewhere tells.
    let cut = stores.copy(&writer, "cut");
    let new_head = writer_records(&writer)
        .iter()
        .find(|r| r["chain"]["seq"] == 25)
        .map(|r| r["chain"]["hash"].as_str().unwrap().to_owned())
        .unwrap();
    stores.sql(
        &cut,
        &format!(
            "DELETE FROM records WHERE chain_seq > 25; DELETE FROM checkpoints;
             UPDATE chain_heads SET seq = 25, hash = '{new_head}';"
        ),
    );
    let (code, out) = verify(&cut, Some(shipped.path()), &public);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("REMOVED: chain test-writer: the checkpoint signed"),
        "{out}"
    );
    assert!(
        out.contains("covers link 30, but the chain ends at link 25"),
        "{out}"
    );
    // Without the shipped checkpoints the cut itself is not seen, but a chain no signature
    // covers any more is.
    let (code, out) = verify(&cut, None, &public);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no signed checkpoint covers this chain"),
        "{out}"
    );

    // A record hidden by moving it among the replaced received records.
    let hidden = stores.copy(&writer, "hidden");
    let victim = id_at(&writer, 9);
    stores.sql(
        &hidden,
        &format!(
            "INSERT INTO chain_superseded (chain_uid, chain_seq, record)
             SELECT chain_uid, chain_seq, record FROM records WHERE id = '{victim}';
             DELETE FROM records WHERE id = '{victim}';"
        ),
    );
    let (code, out) = verify(&hidden, Some(shipped.path()), &public);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("hidden from every reader"), "{out}");

    // Another key's public half does not vouch for these checkpoints.
    let other = tempfile::tempdir().unwrap();
    let (_, other_public) = keygen(other.path());
    let (code, out) = verify(&store, Some(shipped.path()), &other_public);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not signed by the key"), "{out}");

    // Retention: the writer, restarted with a year's retention, deletes the 10 old records at
    // a signed cut, and the store still verifies.
    let dir = std::mem::replace(&mut writer.dir, tempfile::tempdir().unwrap());
    drop(writer);
    let extra = extra.replace("retention_days: 0", "retention_days: 365");
    let writer = WriterProcess::start_in(dir, &redis.url(), &stores.writer_store(), &extra);
    assert!(
        wait_until(Duration::from_secs(20), || writer.count() == 20),
        "{} records after retention",
        writer.count()
    );
    let report = writer.get("/api/v1/verify").json();
    assert_eq!(report["intact"], true, "{report}");
    assert_eq!(report["chains"][0]["retention_floor"], 10, "{report}");
    let mut writer = writer;
    assert!(writer.child.terminate().success());
    let kept = stores.copy(&writer, "retained");
    let (code, out) = verify(&kept, Some(shipped.path()), &public);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("retention floor 10"), "{out}");
    // Deleting the oldest kept records is not retention: no signed cut allows it.
    let early = stores.copy(&writer, "early");
    stores.sql(&early, "DELETE FROM records WHERE chain_seq <= 12");
    let (code, out) = verify(&early, Some(shipped.path()), &public);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("links 11..12 are missing"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_evidence_holds_and_tampering_is_named() {
    evidence_holds_and_tampering_is_named(&Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_evidence_holds_and_tampering_is_named() {
    evidence_holds_and_tampering_is_named(&Postgres(PostgresServer::start())).await;
}
