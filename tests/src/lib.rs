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

    /// `CLIENT PAUSE 60000 WRITE`: Redis keeps its connections and answers reads, but runs no
    /// write until [`RedisServer::resume_writes`] — a fork, a failover, a partition that does
    /// not reset, as a producer sees them.
    pub fn pause_writes(&self) {
        let mut conn = self.connection().expect("connect to redis");
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(60_000)
            .arg("WRITE")
            .query(&mut conn)
            .expect("CLIENT PAUSE");
    }

    /// `CLIENT UNPAUSE`.
    pub fn resume_writes(&self) {
        let mut conn = self.connection().expect("connect to redis");
        let _: () = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query(&mut conn)
            .expect("CLIENT UNPAUSE");
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
        tenant: None,
        operation: "asset.rename".into(),
        rule: Some("file-rename".into()),
        description: Some(format!("Renamed file f{n} to file-{n}.png")),
        actor: Some(auditgate_rules::Actor {
            id: Some(format!("u_{}", n % 7)),
            source: "header.X-User-Id".into(),
        }),
        request: RequestInfo {
            id: id.to_string(),
            method: "PATCH".into(),
            method_override: None,
            path: format!("/v1/files/f{n}/details"),
            route: Some("/v1/files/{fileId}/details".into()),
            client_ip: Some("203.0.113.0".into()),
            location: None,
            user_agent: Some("auditgate-tests".into()),
        },
        resources: vec![Resource {
            kind: "file".into(),
            id: Some(format!("f{n}")),
            path: Some(format!("/forest/file-{n}.png")),
            previous_path: None,
        }],
        response: ResponseInfo {
            status: Some(200),
            grpc_status: None,
        },
        outcome: Outcome::Success,
        stage: None,
        details,
        changes: serde_json::Map::new(),
        capture: None,
        origin: None,
    }
}

/// What a client got back.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of a header, by its lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// One HTTP/1.1 call over a fresh connection (`Connection: close`), the way a plain client
/// makes it: for tests of servers, where the client must not be the thing under test.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad HTTP response"))
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // The `kill` command, as an operator would send it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        self.0.wait().expect("wait for the child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the child's stdout until a line starting with `prefix`, and returns the rest of it.
pub fn wait_for_line(child: &mut Child, prefix: &str) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read child stdout");
        assert!(n > 0, "the child exited before printing {prefix:?}");
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            let rest = rest.to_owned();
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                    sink.clear();
                }
            });
            return rest;
        }
    }
}

/// A binary of this workspace (`auditgate`, `upstream`), as `cargo test --workspace` builds
/// them next to the test binaries.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// The example upstream API (`examples/upstream/main.rs`) on a free port.
#[derive(Debug)]
pub struct UpstreamProcess {
    /// `127.0.0.1:PORT`
    pub addr: String,
    _child: ChildGuard,
}

impl UpstreamProcess {
    /// Starts the upstream and waits until it listens.
    pub fn start() -> UpstreamProcess {
        let mut child = Command::new(workspace_bin("upstream"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the example upstream");
        let addr = wait_for_line(&mut child, "listening on http://");
        UpstreamProcess {
            addr,
            _child: ChildGuard(child),
        }
    }
}

/// `auditgate proxy` as a process, with its config and rules in a temp dir.
#[derive(Debug)]
pub struct ProxyProcess {
    /// `127.0.0.1:PORT` clients connect to.
    pub addr: String,
    /// `127.0.0.1:PORT` of `/metrics` and `/healthz`.
    pub metrics_addr: String,
    /// The folder holding `proxy.yaml`, `rules.yaml`, `spool/`, `stderr.log`.
    pub dir: tempfile::TempDir,
    /// The running process.
    pub child: ChildGuard,
}

impl ProxyProcess {
    /// Writes `rules.yaml` and a `proxy.yaml` (plus `extra` config lines) and starts the
    /// proxy; waits until it answers. `upstream` is `HOST:PORT` (plain HTTP) or a URL.
    pub fn start(upstream: &str, redis_url: &str, rules: &str, extra: &str) -> ProxyProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("rules.yaml"), rules).expect("write rules");
        ProxyProcess::start_in(dir, upstream, redis_url, "rules.yaml", extra)
    }

    /// Starts the proxy on rule files or directories of the workspace (`examples/rules`),
    /// rather than rules written for the test.
    pub fn start_on(upstream: &str, redis_url: &str, rules: &[&str], extra: &str) -> ProxyProcess {
        let rules: Vec<String> = rules
            .iter()
            .map(|r| format!("\"{}\"", workspace_root().join(r).display()))
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        ProxyProcess::start_in(dir, upstream, redis_url, &rules.join(", "), extra)
    }

    fn start_in(
        dir: tempfile::TempDir,
        upstream: &str,
        redis_url: &str,
        rules: &str,
        extra: &str,
    ) -> ProxyProcess {
        let spool = if extra.contains("spool:") {
            ""
        } else {
            "spool: { dir: spool }\n"
        };
        let upstream = if upstream.contains("://") {
            upstream.to_owned()
        } else {
            format!("http://{upstream}")
        };
        // Records keep the full client address unless the test says otherwise.
        let client_ip = if extra.contains("client_ip:") {
            ""
        } else {
            "client_ip: full\n"
        };
        let redis = redis_block(redis_url);
        let config = format!(
            "listen: 127.0.0.1:0\nupstream: {upstream}\nrules: [{rules}]\n\
             redis: {redis}\n{spool}\
             metrics_listen: 127.0.0.1:0\n{client_ip}{extra}"
        );
        std::fs::write(dir.path().join("proxy.yaml"), config).expect("write config");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let child = Command::new(workspace_bin("auditgate"))
            .arg("proxy")
            .arg("--config")
            .arg(dir.path().join("proxy.yaml"))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start auditgate proxy");
        let mut proxy = ProxyProcess {
            addr: String::new(),
            metrics_addr: String::new(),
            dir,
            child: ChildGuard(child),
        };
        // Ports of 0: the proxy says which ones it bound (no race with other tests for a
        // port picked in advance).
        let announced = wait_until(Duration::from_secs(15), || {
            let log = proxy.stderr();
            let Some(line) = log
                .lines()
                .find(|l| l.contains("auditgate proxy listening"))
            else {
                return false;
            };
            let value = |key: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(key))
                    .map(str::to_owned)
            };
            proxy.addr = value("listen=").unwrap_or_default();
            proxy.metrics_addr = value("metrics=").unwrap_or_default();
            true
        });
        assert!(announced, "the proxy did not start:\n{}", proxy.stderr());
        let up = wait_until(Duration::from_secs(15), || {
            http(&proxy.metrics_addr, "GET", "/healthz", &[], b"").is_ok()
                && std::net::TcpStream::connect(&proxy.addr).is_ok()
        });
        assert!(up, "the proxy did not start:\n{}", proxy.stderr());
        proxy
    }

    /// What the proxy has logged.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// `/healthz` as JSON.
    pub fn health(&self) -> serde_json::Value {
        http(&self.metrics_addr, "GET", "/healthz", &[], b"")
            .expect("healthz")
            .json()
    }
}

/// The admin token every test writer accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The viewer token every test writer accepts.
pub const VIEWER_TOKEN: &str = "test-viewer-token";
/// An admin token of every test writer that sees tenant `acme` only.
pub const ACME_TOKEN: &str = "test-acme-token";
/// An admin token of every test writer that sees tenant `globex` only.
pub const GLOBEX_TOKEN: &str = "test-globex-token";

/// A Redis Cluster on loopback: six `redis-server --cluster-enabled yes` (three masters, each
/// with a replica), made one cluster with `redis-cli --cluster create`, a node timeout of one
/// second so that a killed master's replica takes over within seconds. Killed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    /// Every node's port, in the order they were created (masters first).
    pub ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts the six nodes, joins them, and waits until every node says the cluster is ok.
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = cluster_ports(6);
        let nodes = ports
            .iter()
            .map(|port| {
                let data = dir.path().join(port.to_string());
                std::fs::create_dir_all(&data).expect("node dir");
                Some(
                    Command::new("redis-server")
                        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                        // A replica may take over however long ago it last heard from its
                        // master: the test kills masters seconds after the cluster formed.
                        .args(["--cluster-replica-validity-factor", "0"])
                        .args(["--cluster-config-file", "nodes.conf"])
                        .args(["--appendonly", "no", "--save", ""])
                        .arg("--dir")
                        .arg(&data)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("start redis-server (scripts/test installs it)"),
                )
            })
            .collect();
        let cluster = RedisCluster {
            ports,
            nodes,
            _dir: dir,
        };
        for port in &cluster.ports {
            assert!(
                wait_until(Duration::from_secs(10), || cluster.cli(*port, &["PING"])
                    == "PONG"),
                "node {port} did not start"
            );
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            wait_until(Duration::from_secs(30), || cluster.ports.iter().all(|p| {
                cluster
                    .cli(*p, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            })),
            "the cluster did not come up"
        );
        // Every replica has its master's data before a test kills anything.
        assert!(
            wait_until(Duration::from_secs(30), || cluster.ports[3..].iter().all(
                |p| cluster
                    .cli(*p, &["INFO", "replication"])
                    .contains("master_link_status:up")
            )),
            "the replicas did not sync"
        );
        cluster
    }

    /// `redis-cli -p PORT ARGS…`'s output, trimmed ("" when the node is gone).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    /// The `redis:` block of a config with every node listed, and `extra` fields.
    pub fn yaml(&self, extra: &str) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("\"redis://127.0.0.1:{p}\""))
            .collect();
        format!("{{ cluster: [{}], {extra} }}", nodes.join(", "))
    }

    /// The port of the master serving `key` now, as a live node sees it (`None` while no
    /// master does: between a master's failure and its replica's promotion).
    pub fn master_of(&self, key: &str) -> Option<u16> {
        let alive = self.alive();
        let slot: u16 = self
            .cli(alive, &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot");
        for line in self.cli(alive, &["CLUSTER", "NODES"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            for range in &fields[8..] {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(from), Ok(to)) = (from.parse::<u16>(), to.parse::<u16>())
                    && (from..=to).contains(&slot)
                {
                    return fields[1]
                        .split(['@', ':'])
                        .nth(1)
                        .and_then(|p| p.parse().ok());
                }
            }
        }
        None
    }

    /// A node still running.
    fn alive(&self) -> u16 {
        self.ports
            .iter()
            .zip(&self.nodes)
            .find(|(_, n)| n.is_some())
            .map(|(p, _)| *p)
            .expect("a live node")
    }

    /// SIGKILL the node on `port`: gone at once, as in a crash.
    pub fn kill(&mut self, port: u16) {
        if let Some(i) = self.ports.iter().position(|p| *p == port)
            && let Some(mut child) = self.nodes[i].take()
        {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Whether every live node says the cluster is ok.
    pub fn is_ok(&self) -> bool {
        self.ports
            .iter()
            .zip(&self.nodes)
            .filter(|(_, n)| n.is_some())
            .all(|(p, _)| {
                self.cli(*p, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            })
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// `n` ports a cluster node can use: free, and with the cluster bus port (`port + 10000`)
/// free too, so at most 55535. The system's ephemeral ports go above that.
fn cluster_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    let mut port = start;
    while ports.len() < n {
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            ports.push(port);
        }
        port = if port >= 45_000 { 20_000 } else { port + 1 };
        assert_ne!(port, start, "no free ports for a cluster");
    }
    ports
}

/// Sends `records` through a real producer (`RedisQueue`, with a spool of its own) to the
/// Redis `redis` names, as producer instance `instance`, and waits until it has flushed.
pub async fn enqueue_all(
    redis: auditgate_queue::RedisConfig,
    instance: &str,
    records: impl IntoIterator<Item = AuditRecord>,
) {
    use auditgate_queue::RecordSink as _;
    let spool = tempfile::tempdir().expect("tempdir");
    let mut config = auditgate_queue::QueueConfig::new("")
        .spool(spool.path(), 1 << 24)
        .instance(instance);
    config.redis = redis;
    let queue = auditgate_queue::RedisQueue::start(config).expect("start the queue");
    for r in records {
        queue.enqueue(r).expect("enqueue");
    }
    queue.shutdown().await;
}

/// The `redis:` value of a test config: `{ url: "URL" }` for a URL, or `redis_url` itself when
/// it is already a flow mapping (`{ cluster: ["redis://…", …], shards: 6 }`).
fn redis_block(redis_url: &str) -> String {
    if redis_url.trim_start().starts_with('{') {
        redis_url.to_owned()
    } else {
        format!("{{ url: \"{redis_url}\" }}")
    }
}

/// `auditgate writer` as a process, with its config in a temp dir.
#[derive(Debug)]
pub struct WriterProcess {
    /// `127.0.0.1:PORT` of the API.
    pub addr: String,
    /// The folder holding `writer.yaml` and `stderr.log` (and the SQLite file, if any).
    pub dir: tempfile::TempDir,
    /// The running process.
    pub child: ChildGuard,
}

impl WriterProcess {
    /// Starts a writer on `store` (`sqlite://…` relative to its folder, or `postgres://…`).
    pub fn start(redis_url: &str, store: &str, extra: &str) -> WriterProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        WriterProcess::start_in(dir, redis_url, store, extra)
    }

    /// Starts a writer in an existing folder (to restart one on the same SQLite file).
    pub fn start_in(
        dir: tempfile::TempDir,
        redis_url: &str,
        store: &str,
        extra: &str,
    ) -> WriterProcess {
        use sha2::Digest;
        let hex = |t: &str| {
            sha2::Sha256::digest(t.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        // Writers sharing a store name themselves (`consumer:` in `extra`).
        let consumer = if extra.contains("consumer:") {
            ""
        } else {
            "consumer: test-writer\n"
        };
        let config = format!(
            "redis: {}\nstore: {store}\nlisten: 127.0.0.1:0\n{consumer}\
             tokens:\n  - {{ sha256: \"{}\", role: admin }}\n  - {{ sha256: \"{}\", role: viewer }}\n\
             \x20 - {{ sha256: \"{}\", role: admin, tenant: acme }}\n\
             \x20 - {{ sha256: \"{}\", role: admin, tenant: globex }}\n{extra}",
            redis_block(redis_url),
            hex(ADMIN_TOKEN),
            hex(VIEWER_TOKEN),
            hex(ACME_TOKEN),
            hex(GLOBEX_TOKEN),
        );
        std::fs::write(dir.path().join("writer.yaml"), config).expect("write config");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("stderr.log"))
            .expect("log file");
        let mut child = Command::new(workspace_bin("auditgate"))
            .arg("writer")
            .arg("--config")
            .arg(dir.path().join("writer.yaml"))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start auditgate writer");
        let addr = wait_for_line(&mut child, "listening on http://");
        WriterProcess {
            addr,
            dir,
            child: ChildGuard(child),
        }
    }

    /// GET with the admin token; the response.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.get_as(ADMIN_TOKEN, path)
    }

    /// GET with a token.
    pub fn get_as(&self, token: &str, path: &str) -> HttpResponse {
        http(
            &self.addr,
            "GET",
            path,
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
        .expect("writer API call")
    }

    /// The records `/api/v1/records?QUERY` answers a token; asserts the answer is 200.
    pub fn select_as(&self, token: &str, query: &str) -> Vec<serde_json::Value> {
        let page = self.get_as(token, &format!("/api/v1/records?{query}"));
        assert_eq!(
            page.status,
            200,
            "{query}: {}",
            String::from_utf8_lossy(&page.body)
        );
        page.json()["records"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// How many records the store holds (`/healthz`).
    pub fn count(&self) -> u64 {
        http(&self.addr, "GET", "/healthz", &[], b"")
            .ok()
            .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .and_then(|v| v["records"].as_u64())
            .unwrap_or(0)
    }
}

/// A throwaway PostgreSQL server: `initdb` and `pg_ctl` (as the unprivileged `postgres`
/// user when run as root, since initdb refuses root) on a free port in a temp dir.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
    pg_ctl: std::path::PathBuf,
}

fn pg_bin(name: &str) -> std::path::PathBuf {
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| std::path::PathBuf::from(name))
}

impl PostgresServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> PostgresServer {
        let dir = tempfile::Builder::new()
            .prefix("auditgate-pg")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let data = dir.path().join("data");
        let port = free_port();
        let as_root = is_root();
        let run = |program: &std::path::Path, args: &[&str]| {
            let mut cmd = if as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            };
            let out = cmd.args(args).output().expect("run a PostgreSQL tool");
            assert!(
                out.status.success(),
                "{} failed: {}",
                program.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        if as_root {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status();
        }
        let initdb = pg_bin("initdb");
        let data_text = data.to_string_lossy().to_string();
        run(
            &initdb,
            &[
                "-D",
                &data_text,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        let pg_ctl = pg_bin("pg_ctl");
        let options = format!("-p {port} -h 127.0.0.1 -k {} -F", dir.path().display());
        let log = dir.path().join("log").to_string_lossy().to_string();
        run(
            &pg_ctl,
            &["-D", &data_text, "-o", &options, "-l", &log, "-w", "start"],
        );
        PostgresServer {
            port,
            data,
            _dir: dir,
            pg_ctl,
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL with `psql` (stopping at the first error); its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(pg_bin("psql"))
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-d", &self.url(), "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Whether this process runs as root, read from /proc (no libc call needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.data.to_string_lossy().to_string();
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&self.pg_ctl);
            c
        } else {
            Command::new(&self.pg_ctl)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A tiny tmpfs of this test's own, as a disk that fills up: writes past its size fail with
/// ENOSPC. Unmounted when dropped (lazily: a process may still hold a file open there).
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`64k`) on a fresh directory. `None` where the test may not
    /// mount (mounting needs root and CAP_SYS_ADMIN; `scripts/test` runs as root on these
    /// machines): the caller says it skipped, loudly, rather than failing.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status();
        mounted.is_ok_and(|s| s.success()).then_some(Tmpfs { dir })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills what room is left with one file (`filler`), and returns its path: delete it to
    /// free the space.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let block = [0u8; 4096];
        while file.write_all(&block).is_ok() {}
        // The last, partial block: byte by byte until the disk says no.
        while file.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The demo's whole stack, as `scripts/demo` runs it: a redis-server, the example upstream,
/// the proxy on `examples/rules/` (the ImageKit and Hugging Face sets; client addresses
/// anonymised, `X-Forwarded-For` believed from loopback as from the demo's load balancer, the
/// example HMAC key) and a writer on `store`.
#[derive(Debug)]
pub struct DemoStack {
    /// The writer, last: it is dropped first, then the proxy, the upstream and Redis.
    pub writer: WriterProcess,
    /// The proxy in front of the upstream.
    pub proxy: ProxyProcess,
    /// The example API.
    pub upstream: UpstreamProcess,
    /// The stream's server.
    pub redis: RedisServer,
}

impl DemoStack {
    /// Starts every part; returns once each answers.
    pub fn start(store: &str) -> DemoStack {
        let redis = RedisServer::start();
        let upstream = UpstreamProcess::start();
        let key = workspace_root().join("examples/hmac.key");
        let proxy = ProxyProcess::start_on(
            &upstream.addr,
            &redis.url(),
            &["examples/rules"],
            &format!(
                "client_ip: anonymized\ntrusted_proxies: [127.0.0.1/32]\nhmac_key_file: \"{}\"\n",
                key.display()
            ),
        );
        let writer = WriterProcess::start(&redis.url(), store, "");
        DemoStack {
            writer,
            proxy,
            upstream,
            redis,
        }
    }

    /// The proxy's base URL.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    /// Sends the demo's burst (`examples/burst.rs`) through the proxy and waits until the
    /// writer has stored a record of each audited call; returns how many that is.
    pub fn burst(&self) -> u64 {
        let out = Command::new(workspace_bin("burst"))
            .arg(self.proxy_url())
            .output()
            .expect("run the burst");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the burst failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Its last line: "N audited calls sent".
        let audited: u64 = stdout
            .lines()
            .last()
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("the burst says how many audited calls it sent");
        let stored = wait_until(Duration::from_secs(30), || self.writer.count() >= audited);
        assert!(
            stored,
            "stored {} of the burst's {audited} records\n{}",
            self.writer.count(),
            self.proxy.stderr()
        );
        audited
    }
}

/// The workspace's root folder (where `examples/` and `scripts/` are).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
