//! What runs beside the request threads: rule reloading, and the wait for requests in flight
//! at shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use auditgate_rules::RuleSet;
use tokio::sync::watch;

use crate::config::JwtConfig;
use crate::jwt::Verifier;
use crate::metrics::RELOADS;

/// Waits, once the listeners have stopped, until no request has been in flight for a moment
/// or `grace` has passed. "None in flight" must hold for a while: a connection accepted just
/// before the stop may not have reached its first phase yet.
pub(crate) async fn requests_done(in_flight: &AtomicUsize, grace: Duration) {
    const QUIET: Duration = Duration::from_millis(300);
    let deadline = Instant::now() + grace;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        if in_flight.load(Ordering::Relaxed) > 0 {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reloads the rules when a rule file changes (checked every second) or on SIGHUP. A set
/// that does not load is rejected with its errors logged, and the old set stays.
#[derive(Debug)]
pub(crate) struct ReloadService {
    pub(crate) rules: Arc<ArcSwap<RuleSet>>,
    pub(crate) paths: Vec<PathBuf>,
    pub(crate) hmac_key_file: Option<PathBuf>,
    /// The `jwt:` config and the keys in use, re-read with the rules.
    pub(crate) jwt: Option<(JwtConfig, Arc<ArcSwap<Verifier>>)>,
    /// The files as they were just before the rules in use were loaded: a change made
    /// between that load and this service's start is a change too.
    pub(crate) loaded: Fingerprint,
}

/// Name, size and modification time of every rule and key file.
pub(crate) type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

impl ReloadService {
    /// Loads the rule set as configured, and logs what it warns about (once per load, never
    /// per request).
    pub(crate) fn load(
        paths: &[PathBuf],
        hmac_key_file: Option<&PathBuf>,
    ) -> Result<RuleSet, auditgate_rules::RulesError> {
        let mut loader = RuleSet::loader();
        if let Some(key) = hmac_key_file {
            loader = loader.hmac_key_file(key)?;
        }
        let rules = loader.load_all(paths)?;
        for warning in rules.warnings() {
            tracing::warn!("rules: {warning}");
        }
        Ok(rules)
    }

    fn reload(&self, why: &str) {
        if let Some((config, keys)) = &self.jwt {
            match Verifier::load(config) {
                Ok(verifier) => keys.store(Arc::new(verifier)),
                Err(e) => {
                    tracing::error!(
                        "token keys not reloaded ({why}); keeping the previous ones: {e}"
                    )
                }
            }
        }
        match Self::load(&self.paths, self.hmac_key_file.as_ref()) {
            Ok(rules) => {
                let s = rules.summary();
                self.rules.store(Arc::new(rules));
                metrics::counter!(RELOADS, "result" => "ok").increment(1);
                tracing::info!(files = s.files, rules = s.rules, "rules reloaded ({why})");
            }
            Err(e) => {
                metrics::counter!(RELOADS, "result" => "error").increment(1);
                tracing::error!("rules not reloaded ({why}); keeping the previous set:\n{e}");
            }
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.paths, self.jwt.as_ref().map(|(c, _)| c))
    }
}

/// The [`Fingerprint`] of the rule files (or directories) `paths` and the key files `jwt`
/// names: a change in any is a change.
pub(crate) fn fingerprint(paths: &[PathBuf], jwt: Option<&JwtConfig>) -> Fingerprint {
    let mut out = Vec::new();
    let key_files = jwt.into_iter().flat_map(|c| {
        [&c.hs256_secret_file, &c.jwks_file]
            .into_iter()
            .flatten()
            .cloned()
    });
    for path in paths.iter().cloned().chain(key_files) {
        let mut files = vec![path.clone()];
        if path.is_dir() {
            files = std::fs::read_dir(&path)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
        }
        for file in files {
            let meta = std::fs::metadata(&file).ok();
            out.push((
                file,
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            ));
        }
    }
    out
}

impl ReloadService {
    /// Watches the files and SIGHUP until `shutdown` turns true.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        let mut seen = self.loaded.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async {
                    match hangups.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    seen = self.fingerprint();
                    self.reload("SIGHUP");
                }
                _ = tick.tick() => {
                    let now = self.fingerprint();
                    if now != seen {
                        seen = now;
                        self.reload("a rule or key file changed");
                    }
                }
            }
        }
    }
}
