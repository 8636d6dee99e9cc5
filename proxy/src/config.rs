//! The proxy's YAML config (`auditgate proxy --config proxy.yaml`).
//!
//! Relative paths (rules, spool, key files) are read relative to the config file's folder, so
//! a config and its files can move together. A rule file or directory that is not there but is
//! in the working directory is read from there (a config kept apart from the checkout whose
//! rules it names); key files are never looked for anywhere else.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use auditgate_queue::{RedisConfig, SpoolConfig};
use auditgate_rules::ClientIpMode;
use ipnet::IpNet;
use serde::Deserialize;

use crate::error::ProxyError;

/// Everything `auditgate proxy` reads from its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where clients connect, e.g. `127.0.0.1:8080`. Required.
    pub listen: String,
    /// The API behind the proxy: `http://host:port` or `https://host:port`. Required.
    pub upstream: String,
    /// Rule files and directories, read as one set; reloaded on change and on SIGHUP. Required.
    /// A single path may be written without the list.
    #[serde(deserialize_with = "one_or_many")]
    pub rules: Vec<PathBuf>,
    /// The Redis stream records go to. Required.
    pub redis: RedisConfig,
    /// Where records wait while Redis is away. Default: `./spool`, 1 GiB.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// How much of the client address records keep: `full`, `anonymized` (default) or `none`.
    #[serde(default, with = "client_ip_mode")]
    pub client_ip: ClientIpMode,
    /// Peers whose `X-Forwarded-For` is believed: CIDR ranges, or single addresses (a /32 or
    /// /128). Default: none.
    #[serde(default, deserialize_with = "ranges")]
    pub trusted_proxies: Vec<IpNet>,
    /// The key `| hmac` templates use. Without it, values a rule hashes are left out of
    /// records (a warning at load). Default: none.
    #[serde(default)]
    pub hmac_key_file: Option<PathBuf>,
    /// Where Prometheus metrics (`/metrics`) and `/healthz` are served. Default: not served.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Worker threads of the proxy. Default 2.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Bearer-token verification. Default: claims are read unverified.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// A PEM file of the CA certificates an `https` upstream's certificate must chain to,
    /// instead of the system's roots: for an API behind an internal CA.
    #[serde(default)]
    pub upstream_ca_file: Option<PathBuf>,
    /// Send the client's `Host` header upstream (`true`) or the upstream's own host (`false`,
    /// the default, as nginx's `proxy_pass` does).
    #[serde(default)]
    pub preserve_host: bool,
    /// Headers that name the method the upstream acts on, whatever the request line says: a
    /// call carrying one matches the rules as that method, and its record says so
    /// (`request.method_override`). Default `X-HTTP-Method-Override`, `X-Method-Override`,
    /// `X-HTTP-Method`; `[]` trusts the request line only.
    #[serde(
        default = "default_method_override_headers",
        deserialize_with = "header_names"
    )]
    pub method_override_headers: Vec<http::HeaderName>,
    /// How long a call to an `on_queue_failure: closed` rule waits for its received record to
    /// be durable (acknowledged by Redis, or fsync'd to the spool) before it is refused with
    /// 503 and never forwarded. Default 2000.
    #[serde(default = "default_closed_timeout_ms")]
    pub closed_timeout_ms: u64,
    /// Bytes of each body that `body/` and `response/` templates may read. Default 65536.
    #[serde(default = "default_capture_limit")]
    pub capture_limit: usize,
    /// Records the in-memory queue buffer holds before spilling to the spool. Default 10000.
    #[serde(default = "default_buffer")]
    pub queue_buffer: usize,
    /// How long the queue's flusher lets records gather after a batch that was not full,
    /// before it sends the next (milliseconds): longer means fuller `XADD` pipelines (less CPU
    /// per record in the proxy and in redis-server) and records reaching Redis that much
    /// later; requests never wait for it. Default 10; 0 sends whatever is there at once.
    #[serde(default = "default_linger_ms")]
    pub queue_linger_ms: u64,
    /// On SIGTERM: how long in-flight requests may take to finish before the proxy exits.
    /// Default 5.
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
    /// How long a rule's `before:` GET may take before the call is forwarded without it (the
    /// record then says `capture.before: failed`). Default 500.
    #[serde(default = "default_before_timeout")]
    pub before_timeout_ms: u64,
    /// Where clients are (`request.location`). Default: countries from the embedded table.
    #[serde(default)]
    pub geoip: GeoipConfig,
}

/// `request.location`: the country from the table built into auditgate, and region and city
/// from a MaxMind-format database when one is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoipConfig {
    /// Record locations at all. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A MaxMind-format city database (GeoLite2-City.mmdb, DB-IP City Lite) for region and
    /// city. Default: none (country only).
    #[serde(default)]
    pub mmdb_file: Option<PathBuf>,
}

impl Default for GeoipConfig {
    fn default() -> Self {
        GeoipConfig {
            enabled: true,
            mmdb_file: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_before_timeout() -> u64 {
    500
}

impl GeoipConfig {
    /// The locator calls use; `None` when locations are off.
    pub fn locator(&self) -> Result<Option<std::sync::Arc<auditgate_geo::Locator>>, ProxyError> {
        if !self.enabled {
            return Ok(None);
        }
        let locator = match &self.mmdb_file {
            Some(path) => auditgate_geo::Locator::with_city_database(path)?,
            None => auditgate_geo::Locator::embedded(),
        };
        Ok(Some(std::sync::Arc::new(locator)))
    }
}

/// How bearer tokens are verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// A file holding the HS256 secret, for HS256 tokens. Default: none.
    #[serde(default)]
    pub hs256_secret_file: Option<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`, as an identity provider publishes it) with the public
    /// keys of RS256/384/512, PS256/384/512, ES256, ES384 and EdDSA tokens. Read at start and
    /// again on each rule reload (file change or SIGHUP), so rotated keys are picked up.
    /// Default: none.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The issuers whose tokens are taken: a token's `iss` must be one of them. One may be
    /// written without the list (`issuer: https://id.example.com`). Default: any issuer.
    #[serde(default, deserialize_with = "crate::jwt::issuers")]
    pub issuer: Option<Vec<String>>,
    /// The audiences tokens must be for: a token's `aud` (a string or a list) must name one of
    /// them. One may be written without the list (`audience: orders-api`). Default: `aud` is
    /// not looked at.
    #[serde(default, deserialize_with = "crate::jwt::audiences")]
    pub audience: Option<Vec<String>>,
}

/// Upstream timeouts, in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP (and TLS) connect. Default 5000.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// Waiting for each read from the upstream (the response head, each body chunk); on
    /// expiry the client gets 504. Default 60000.
    #[serde(default = "default_read_ms")]
    pub read_ms: u64,
    /// Each write to the upstream. Default 60000.
    #[serde(default = "default_read_ms")]
    pub write_ms: u64,
    /// How long an idle upstream connection is kept for reuse. Default 60000.
    #[serde(default = "default_read_ms")]
    pub idle_ms: u64,
}

/// The upstream, parsed and resolved at start-up.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The resolved address.
    pub addr: SocketAddr,
    /// Whether to speak TLS.
    pub tls: bool,
    /// The host name (SNI and, unless `preserve_host`, the `Host` header).
    pub host: String,
    /// `host[:port]` as the `Host` header carries it.
    pub authority: String,
}

/// A config that cannot be used, with the file and, where known, the place in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The YAML does not parse, or holds unknown or mistyped keys.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is well-formed YAML but not usable.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ProxyConfig {
    /// Reads and checks a config file; relative paths in it become relative to its folder.
    pub fn load(path: impl AsRef<Path>) -> Result<ProxyConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = ProxyConfig::from_yaml(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for rules in &mut config.rules {
            let beside = base.join(&*rules);
            *rules = if !beside.exists() && rules.exists() {
                // Absolute, so that a reload reads the same files whatever the directory.
                std::path::absolute(&*rules).unwrap_or_else(|_| rules.clone())
            } else {
                beside
            };
        }
        config.spool.dir = base.join(&config.spool.dir);
        for file in [
            &mut config.hmac_key_file,
            &mut config.upstream_ca_file,
            &mut config.geoip.mmdb_file,
        ]
        .into_iter()
        .flatten()
        {
            *file = base.join(&*file);
        }
        if let Some(jwt) = &mut config.jwt {
            for file in [&mut jwt.hs256_secret_file, &mut jwt.jwks_file]
                .into_iter()
                .flatten()
            {
                *file = base.join(&*file);
            }
        }
        Ok(config)
    }

    /// Parses config text, naming `path` in messages.
    pub fn from_yaml(path: &Path, text: &str) -> Result<ProxyConfig, ConfigError> {
        let config: ProxyConfig = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: e
                    .to_string()
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            }
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if config.rules.is_empty() {
            return Err(invalid(
                "`rules` names no file: list at least one rule file or directory".into(),
            ));
        }
        if config.threads == 0 {
            return Err(invalid("`threads` must be at least 1".into()));
        }
        // The spool syncs what waits in it on the flusher's turns: a long linger would leave
        // spooled records unsynced that long.
        if config.queue_linger_ms > MAX_LINGER_MS {
            return Err(invalid(format!(
                "`queue_linger_ms: {}` is more than {MAX_LINGER_MS}: records would wait that long for Redis, and spooled ones for their fsync; 10 (the default) to 50 is plenty",
                config.queue_linger_ms
            )));
        }
        // A host name (`localhost:8080`) is resolved once, here: what is bound is an address.
        let mut config = config;
        for (key, listen) in std::iter::once(("listen", &mut config.listen)).chain(
            config
                .metrics_listen
                .as_mut()
                .map(|l| ("metrics_listen", l)),
        ) {
            // A name may resolve to both families: IPv4 first, as `localhost` usually means.
            let resolved = listen.parse::<SocketAddr>().ok().or_else(|| {
                let addrs: Vec<SocketAddr> = listen.to_socket_addrs().ok()?.collect();
                addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or(addrs.first())
                    .copied()
            });
            let Some(addr) = resolved else {
                return Err(invalid(format!(
                    "`{key}: {listen}` is not an address: write HOST:PORT, e.g. 127.0.0.1:8080"
                )));
            };
            *listen = addr.to_string();
        }
        if let Some(jwt) = &config.jwt {
            if jwt.hs256_secret_file.is_none() && jwt.jwks_file.is_none() {
                return Err(invalid(
                    "`jwt` names no key: give `hs256_secret_file`, `jwks_file` or both (without `jwt`, claims are read unverified)".into(),
                ));
            }
            for (key, values) in [("issuer", &jwt.issuer), ("audience", &jwt.audience)] {
                if values.as_ref().is_some_and(Vec::is_empty) {
                    return Err(invalid(format!(
                        "`jwt.{key}` is an empty list, which no token could pass: name at least one, or leave `{key}` out"
                    )));
                }
            }
        }
        config.upstream().map_err(|e| invalid(e.to_string()))?;
        Ok(config)
    }

    /// The upstream URL, parsed and resolved.
    pub fn upstream(&self) -> Result<Upstream, ProxyError> {
        let bad = |problem: String| ProxyError::Upstream {
            url: self.upstream.clone(),
            problem,
        };
        let uri: http::Uri = (self.upstream.parse())
            .map_err(|e| bad(format!("is not a URL ({e}): write http://HOST:PORT")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(bad("must start with http:// or https://".into()));
            }
        };
        let Some(host) = uri.host() else {
            return Err(bad("names no host".into()));
        };
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad(
                "has a path; the proxy forwards paths as they come: remove it".into(),
            ));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| bad(format!("cannot be resolved ({host}:{port}): {e}")))?
            .next()
            .ok_or_else(|| bad(format!("resolves to no address ({host}:{port})")))?;
        let authority = uri
            .authority()
            .map_or_else(|| host.clone(), |a| a.as_str().to_owned());
        Ok(Upstream {
            addr,
            tls,
            host,
            authority,
        })
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: default_connect_ms(),
            read_ms: default_read_ms(),
            write_ms: default_read_ms(),
            idle_ms: default_read_ms(),
        }
    }
}

impl Timeouts {
    pub(crate) fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }

    pub(crate) fn read(&self) -> Duration {
        Duration::from_millis(self.read_ms)
    }

    pub(crate) fn write(&self) -> Duration {
        Duration::from_millis(self.write_ms)
    }

    pub(crate) fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
}

fn default_threads() -> usize {
    2
}

fn default_capture_limit() -> usize {
    64 * 1024
}

fn default_buffer() -> usize {
    10_000
}

/// The longest `queue_linger_ms` accepted.
const MAX_LINGER_MS: u64 = 1000;

fn default_linger_ms() -> u64 {
    10
}

fn default_grace() -> u64 {
    5
}

fn default_connect_ms() -> u64 {
    5_000
}

fn default_read_ms() -> u64 {
    60_000
}

fn default_closed_timeout_ms() -> u64 {
    2_000
}

fn default_method_override_headers() -> Vec<http::HeaderName> {
    auditgate_call::CallSettings::default().method_override_headers
}

/// Header names, each checked.
fn header_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<http::HeaderName>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|name| {
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                serde::de::Error::custom(format!(
                    "`method_override_headers`: {name:?} is not a header name"
                ))
            })
        })
        .collect()
}

/// A list, or one item written without the list (`rules: rules.yaml`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(path)) => Ok(vec![path]),
        Ok(OneOrMany::Many(paths)) => Ok(paths),
        Err(_) => Err(serde::de::Error::custom(
            "`rules` is a rule file or directory, or a list of them: rules: [rules.yaml]",
        )),
    }
}

/// CIDR ranges; a bare address is the range of itself alone.
fn ranges<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "trusted_proxies: {text:?} is not an address or a CIDR range: write e.g. 10.0.0.0/8 or 127.0.0.1"
                    ))
                })
        })
        .collect()
}

mod client_ip_mode {
    use auditgate_rules::ClientIpMode;
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ClientIpMode, D::Error> {
        match String::deserialize(d)?.as_str() {
            "full" => Ok(ClientIpMode::Full),
            "anonymized" | "anonymised" => Ok(ClientIpMode::Anonymized),
            "none" => Ok(ClientIpMode::None),
            other => Err(serde::de::Error::custom(format!(
                "client_ip: unknown mode {other:?}: use full, anonymized or none"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "listen: 127.0.0.1:8080\nupstream: http://127.0.0.1:3000\nrules: [rules.yaml]\nredis: { url: \"redis://127.0.0.1:6379\" }\n";

    #[test]
    fn defaults_fill_what_is_not_said() {
        let c = ProxyConfig::from_yaml(Path::new("proxy.yaml"), GOOD).unwrap();
        assert_eq!(c.threads, 2);
        assert_eq!(c.client_ip, ClientIpMode::Anonymized);
        assert_eq!(c.redis.stream, "auditgate:records");
        assert_eq!(c.spool.max_bytes, 1 << 30);
        assert_eq!(c.capture_limit, 65536);
        let up = c.upstream().unwrap();
        assert_eq!(up.addr, "127.0.0.1:3000".parse().unwrap());
        assert!(!up.tls);
        assert_eq!(up.authority, "127.0.0.1:3000");
    }

    #[test]
    fn plausible_spellings_are_read() {
        let text = "listen: localhost:8080\nmetrics_listen: localhost:9100\nupstream: http://127.0.0.1:3000\nrules: rules.yaml\nredis: { url: \"redis://127.0.0.1:6379\" }\ntrusted_proxies: [127.0.0.1, 10.0.0.0/8, \"::1\"]\n";
        let c = ProxyConfig::from_yaml(Path::new("proxy.yaml"), text).unwrap();
        assert_eq!(c.rules, [PathBuf::from("rules.yaml")]);
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:9100"));
        let expected: Vec<IpNet> = ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(c.trusted_proxies, expected);

        let err = ProxyConfig::from_yaml(
            Path::new("p.yaml"),
            &format!("{GOOD}trusted_proxies: [office]\n"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("\"office\" is not an address or a CIDR range"),
            "{err}"
        );
        let err = ProxyConfig::from_yaml(
            Path::new("p.yaml"),
            &GOOD.replace("listen: 127.0.0.1:8080", "listen: 8080"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("`listen: 8080` is not an address"),
            "{err}"
        );
        // The queue's linger: 10 ms unless set, and bounded.
        let c = ProxyConfig::from_yaml(Path::new("p.yaml"), GOOD).unwrap();
        assert_eq!(c.queue_linger_ms, 10);
        let err = ProxyConfig::from_yaml(
            Path::new("p.yaml"),
            &format!(
                "{GOOD}queue_linger_ms: 60000
"
            ),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("`queue_linger_ms: 60000` is more than 1000"),
            "{err}"
        );
    }

    #[test]
    fn rule_files_are_read_beside_the_config_else_from_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("beside.yaml"), "").unwrap();
        // Cargo runs unit tests in the crate's folder, which holds Cargo.toml.
        let config = dir.path().join("proxy.yaml");
        std::fs::write(
            &config,
            GOOD.replace(
                "rules: [rules.yaml]",
                "rules: [beside.yaml, Cargo.toml, nowhere.yaml]\nhmac_key_file: Cargo.toml",
            ),
        )
        .unwrap();
        let c = ProxyConfig::load(&config).unwrap();
        assert_eq!(
            c.rules,
            [
                dir.path().join("beside.yaml"),
                std::env::current_dir().unwrap().join("Cargo.toml"),
                dir.path().join("nowhere.yaml")
            ]
        );
        assert_eq!(c.spool.dir, dir.path().join("spool"));
        // A key is only ever read beside the config: never a same-named file elsewhere.
        assert_eq!(c.hmac_key_file, Some(dir.path().join("Cargo.toml")));
    }

    #[test]
    fn the_example_config_loads_with_its_rules_and_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/proxy.yaml");
        let c = ProxyConfig::load(path).unwrap();
        let rules =
            crate::services::ReloadService::load(&c.rules, c.hmac_key_file.as_ref()).unwrap();
        assert!(rules.warnings().is_empty(), "{:?}", rules.warnings());
        assert_eq!(rules.summary().files, 2);
        assert_eq!(
            c.trusted_proxies,
            ["127.0.0.1/32".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn an_unknown_key_names_its_place() {
        let text = format!("{GOOD}metrics_lisen: 127.0.0.1:9100\n");
        let err = ProxyConfig::from_yaml(Path::new("proxy.yaml"), &text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("proxy.yaml:5:1: unknown field `metrics_lisen`"),
            "{msg}"
        );
        assert!(msg.contains("expected one of"), "{msg}");
    }

    #[test]
    fn bad_values_say_how_to_fix_them() {
        let err = ProxyConfig::from_yaml(
            Path::new("p.yaml"),
            &GOOD.replace("http://127.0.0.1:3000", "ftp://x"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.yaml: `upstream: ftp://x` must start with http:// or https://"
        );
        let err =
            ProxyConfig::from_yaml(Path::new("p.yaml"), &format!("{GOOD}client_ip: partial\n"))
                .unwrap_err();
        assert!(
            err.to_string().contains("use full, anonymized or none"),
            "{err}"
        );
        let err =
            ProxyConfig::from_yaml(Path::new("p.yaml"), &format!("{GOOD}jwt: {{}}\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.yaml: `jwt` names no key: give `hs256_secret_file`, `jwks_file` or both (without `jwt`, claims are read unverified)"
        );
    }
}
