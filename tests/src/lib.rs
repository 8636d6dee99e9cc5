//! Helpers for the end-to-end tests: real `redis-server` processes on free ports, records,
//! and reading a stream back.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use auditgate_rules::{AuditRecord, Outcome, RequestInfo, Resource, ResponseInfo};

/// One `XRANGE` entry: its ID and its fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// A port nothing listens on (right now).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A `redis-server` of this test's own, on a free port, persisting every write to an
/// append-only file so that it can be killed and restarted without losing the stream.
/// Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    pub fn start() -> RedisServer {
        RedisServer::on_port(free_port())
    }

    /// A server on `port`, not started yet: for tests that need Redis to come up later.
    pub fn stopped_on(port: u16) -> RedisServer {
        RedisServer {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        }
    }

    /// Starts a server on `port` and waits until it answers.
    pub fn on_port(port: u16) -> RedisServer {
        let mut server = RedisServer::stopped_on(port);
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL: the server is gone at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts the server (again) on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = self.connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A plain (blocking) connection for checks.
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))
    }

    /// Every record in the stream `key`, oldest first.
    pub fn records(&self, key: &str) -> Vec<AuditRecord> {
        self.entries(key)
            .into_iter()
            .map(|fields| {
                let json = fields.get("record").expect("a record field");
                serde_json::from_slice(json).expect("the entry holds a record")
            })
            .collect()
    }

    /// Every entry of `key` as its fields.
    pub fn entries(&self, key: &str) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
        let mut conn = self.connection().expect("connect to redis");
        let mut out = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let page: Vec<StreamEntry> = redis::cmd("XRANGE")
                .arg(key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(10_000)
                .query(&mut conn)
                .expect("XRANGE");
            let Some((last, _)) = page.last() else { break };
            start = format!("({last}");
            out.extend(page.into_iter().map(|(_, f)| f.into_iter().collect()));
        }
        out
    }

    /// `XLEN key`
    pub fn len(&self, key: &str) -> usize {
        let mut conn = self.connection().expect("connect to redis");
        redis::cmd("XLEN").arg(key).query(&mut conn).expect("XLEN")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A realistic record: a rename of file `n` by one of a few users.
pub fn record(n: u64) -> AuditRecord {
    let time = chrono::Utc::now();
    let id = uuid::Uuid::now_v7();
    let mut details = serde_json::Map::new();
    details.insert("new_name".into(), format!("file-{n}.png").into());
    AuditRecord {
        schema: auditgate_rules::SCHEMA_VERSION,
        id,
        time,
        duration_ms: 1.25,
        service: "media-library".into(),
        operation: "asset.rename".into(),
        rule: Some("file-rename".into()),
        description: Some(format!("Renamed file f{n} to file-{n}.png")),
        actor: Some(auditgate_rules::Actor {
            id: format!("u_{}", n % 7),
            source: "header.X-User-Id".into(),
        }),
        request: RequestInfo {
            id: id.to_string(),
            method: "PATCH".into(),
            path: format!("/v1/files/f{n}/details"),
            route: Some("/v1/files/{fileId}/details".into()),
            client_ip: Some("203.0.113.0".into()),
            user_agent: Some("auditgate-tests".into()),
        },
        resources: vec![Resource {
            kind: "file".into(),
            id: Some(format!("f{n}")),
            path: Some(format!("/forest/file-{n}.png")),
        }],
        response: ResponseInfo { status: Some(200) },
        outcome: Outcome::Success,
        details,
        origin: None,
    }
}
