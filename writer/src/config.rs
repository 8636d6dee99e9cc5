//! The writer's YAML config (`auditgate writer --config writer.yaml`).

use std::path::{Path, PathBuf};

use auditgate_queue::RedisConfig;
use serde::Deserialize;

use crate::error::WriterError;

/// Everything `auditgate writer` reads from its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterConfig {
    /// The stream and the consumer group. Required.
    pub redis: RedisConfig,
    /// `sqlite://PATH` (relative to the config file) or `postgres://USER@HOST/DB`. Required.
    pub store: String,
    /// Where the query API and the page are served. Default `127.0.0.1:9090`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// API tokens, stored as the SHA-256 (hex) of the token. Default: none (every API call is
    /// refused).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// A file holding the key (at least 32 bytes) that signs the short-lived tokens
    /// `POST /api/v1/tokens` mints. Default: none (no token is minted or accepted).
    #[serde(default)]
    pub token_key_file: Option<PathBuf>,
    /// Records older than this many days are deleted. Default 365; 0 keeps everything.
    #[serde(default = "default_retention")]
    pub retention_days: u32,
    /// This writer's name in the consumer group. Default: the host name. Writers sharing a
    /// host need distinct names.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Entries left unacknowledged by another writer this long are claimed. Default 30.
    #[serde(default = "default_claim_idle")]
    pub claim_idle_seconds: u64,
    /// Entries per read from the stream (`XREADGROUP COUNT`). Default 512.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Most entries in one store transaction. While a commit runs, the writer keeps reading
    /// what is waiting, up to this many, and commits it next: a backlog drains in few large
    /// transactions. Default 16384.
    #[serde(default = "default_commit_max")]
    pub commit_max: usize,
    /// Chain what is stored (`chain: {uid, seq, prev, hash}` on each record; crate::chain).
    /// Default true; false only for a store that is a copy, or to measure what it costs.
    #[serde(default = "default_true")]
    pub chain: bool,
    /// This writer's chain. Default: its consumer name. Writers sharing a store need
    /// distinct ones (they have distinct consumer names already).
    #[serde(default)]
    pub chain_uid: Option<String>,
    /// The Ed25519 private key (`auditgate keygen`) that signs checkpoints of the chain.
    /// Default: none (the chain is kept, no checkpoint is signed).
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// How often the chain's head is signed, when it has moved. Default 60.
    #[serde(default = "default_checkpoint_seconds")]
    pub checkpoint_seconds: u64,
    /// Where each signed checkpoint is also written, as a file of its own: the directory an
    /// operator ships off the box (an object-locked bucket, another host). Default: none.
    #[serde(default)]
    pub checkpoint_dir: Option<PathBuf>,
}

/// One API token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// SHA-256 of the token, hex: `printf %s "$TOKEN" | sha256sum`.
    pub sha256: String,
    /// `admin` (everything) or `viewer` (resource history only).
    pub role: Role,
    /// The one organisation this token sees: every endpoint, the export and the page show
    /// only records whose `tenant` is this. Default: every tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Resource history only.
    Viewer,
    /// Everything.
    Admin,
}

impl WriterConfig {
    /// The checkpoint signing key, read from `signing_key_file`.
    pub fn signing_key(&self) -> Result<Option<crate::chain::SigningKey>, WriterError> {
        let Some(path) = &self.signing_key_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| WriterError::ReadConfig {
            path: path.clone(),
            source,
        })?;
        crate::chain::SigningKey::parse(&text)
            .map(Some)
            .map_err(|e| WriterError::SigningKey {
                path: path.clone(),
                why: e.to_string(),
            })
    }

    /// Reads a config file; a relative SQLite path is taken relative to the file's folder.
    pub fn load(path: impl AsRef<Path>) -> Result<WriterConfig, WriterError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| WriterError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        let mut config: WriterConfig = serde_yaml_ng::from_str(&text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            WriterError::ConfigSyntax {
                path: path.to_owned(),
                line,
                column,
                message: message.to_owned(),
            }
        })?;
        if let Some(file) = config.store.strip_prefix("sqlite://") {
            let base = path.parent().unwrap_or(Path::new("."));
            config.store = format!("sqlite://{}", base.join(PathBuf::from(file)).display());
        }
        for file in [
            &mut config.token_key_file,
            &mut config.signing_key_file,
            &mut config.checkpoint_dir,
        ]
        .into_iter()
        .flatten()
        {
            *file = path.parent().unwrap_or(Path::new(".")).join(&*file);
        }
        for t in &config.tokens {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(WriterError::TokenHash {
                    path: path.to_owned(),
                    sha256: t.sha256.clone(),
                });
            }
        }
        Ok(config)
    }
}

impl WriterConfig {
    /// The minting key, read from `token_key_file` (a trailing newline is not part of it).
    pub fn mint_key(&self) -> Result<Option<crate::minted::MintKey>, WriterError> {
        let Some(path) = &self.token_key_file else {
            return Ok(None);
        };
        let mut bytes = std::fs::read(path).map_err(|source| WriterError::ReadConfig {
            path: path.clone(),
            source,
        })?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        crate::minted::MintKey::new(bytes)
            .map(Some)
            .ok_or_else(|| WriterError::TokenKey { path: path.clone() })
    }
}

fn default_true() -> bool {
    true
}

fn default_checkpoint_seconds() -> u64 {
    60
}

fn default_listen() -> String {
    "127.0.0.1:9090".to_owned()
}

fn default_retention() -> u32 {
    365
}

fn default_claim_idle() -> u64 {
    30
}

fn default_commit_max() -> usize {
    crate::ingest::DEFAULT_COMMIT_MAX
}

fn default_batch() -> usize {
    512
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_loads_with_the_tokens_it_names() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let config = WriterConfig::load(format!("{dir}/writer.yaml")).unwrap();
        let hex = |token: &str| {
            use sha2::Digest;
            sha2::Sha256::digest(token)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let roles: Vec<(String, Role)> = config
            .tokens
            .iter()
            .map(|t| (t.sha256.clone(), t.role))
            .collect();
        assert_eq!(
            roles,
            [
                (hex("admin-token"), Role::Admin),
                (hex("viewer-token"), Role::Viewer)
            ]
        );
        assert!(
            config.store.ends_with("examples/./audit.db"),
            "{}",
            config.store
        );
        assert_eq!(config.redis.group, "auditgate-writers");
    }
}
