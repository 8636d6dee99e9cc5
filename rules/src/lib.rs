//! Rule files, matching and record evaluation for auditgate.
//!
//! A rule set maps API endpoints to named audit operations and says where the actor, the request
//! ID and the touched resources come from. This crate is pure: it reads the files it is given,
//! matches a method and a path to the most specific rule, and turns a finished call into an
//! [`AuditRecord`]. The proxy and the tower layer do the I/O around it.
//!
//! ```
//! use auditgate_rules::{Call, RuleSet};
//!
//! let rules = RuleSet::from_yaml("rules.yaml", r#"
//! version: 1
//! service: media-library
//! rules:
//!   - id: file-rename
//!     operation: asset.rename
//!     method: PATCH
//!     path: /v1/files/{fileId}/details
//!     resources: [{ type: file, id: "{path.fileId}" }]
//!     details: { new_name: "{body/name}" }
//! "#)?;
//!
//! let method = http::Method::PATCH;
//! let uri: http::Uri = "/v1//files/abc/details/".parse()?;
//! let headers = http::HeaderMap::new();
//!
//! // When the request starts: does any rule want it?
//! let found = rules.matches(&method, uri.path()).expect("a rule matches");
//! assert_eq!(found.route(), Some("/v1/files/{fileId}/details"));
//!
//! // When it is over: its record.
//! let mut call = Call::new(&method, &uri, &headers);
//! call.request_body = Some(br#"{"name": "tree.png"}"#);
//! call.status = Some(200);
//! let record = found.record(&call).expect("a record");
//! assert_eq!(record.operation, "asset.rename");
//! assert_eq!(record.resources[0].id.as_deref(), Some("abc"));
//! assert_eq!(record.details["new_name"], "tree.png");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Loading reports every problem at once, each as `FILE:LINE:COL: message`:
//!
//! ```
//! use auditgate_rules::RuleSet;
//!
//! let err = RuleSet::from_yaml("rules.yaml", "version: 1\nservice: x\nrules:\n  - operation: a.b\n    methd: POST\n    path: /x\n").unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "rules.yaml:5:5: unknown key \"methd\" in a rule (did you mean \"method\"?)"
//! );
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use smallvec::SmallVec;

pub mod body;
mod coverage;
mod error;
mod eval;
mod load;
mod matcher;
mod model;
mod path;
mod record;
mod template;
mod yaml;

pub use coverage::{Coverage, Recorded, RuleInfo};
pub use error::{Diagnostic, RulesError};
pub use eval::{
    Call, Claims, ClientIpMode, MAX_VALUE_BYTES, Match, UNMATCHED_OPERATION, bearer_token,
    decode_bearer_claims, uuid_at,
};
pub use model::{OnQueueFailure, Unmatched};
pub use path::normalize_path;
pub use record::{
    Actor, ActorRef, AuditRecord, BodyNote, Capture, ChangeRef, Location, MethodOverride, Origin,
    OriginJson, Outcome, RecordRef, RequestInfo, RequestRef, Resource, ResourceRef, ResponseInfo,
    SCHEMA_VERSION, SeqRange, Stage,
};

use load::FileReader;
use matcher::Matcher;
use model::{FileMeta, MethodSet, Rule};
use template::{Source, Template};

/// A loaded, checked and compiled set of rules: cheap to clone and share between threads.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) files: Vec<FileMeta>,
    pub(crate) rules: Vec<Rule>,
    matcher: Matcher,
    pub(crate) hmac_key: Option<Box<[u8]>>,
    /// What loaded but may not do what was meant: see [`RuleSet::warnings`].
    warnings: Vec<Diagnostic>,
    /// The first file that says `unmatched: record`.
    unmatched: Option<usize>,
    /// The methods `unmatched: record` applies to (that file's default methods).
    unmatched_methods: MethodSet,
    /// Every request header a record can read: see [`Match::record_headers`].
    pub(crate) record_headers: Vec<http::HeaderName>,
    /// Which bodies each rule reads, by rule index: asked on every matching request.
    pub(crate) body_reads: Vec<BodyReads>,
}

/// The bodies one rule's record needs captured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyReads {
    /// `body/` sources or `when.body`.
    pub(crate) request: bool,
    /// `response/` sources.
    pub(crate) response: bool,
}

impl BodyReads {
    fn of(rule: &Rule, file: &FileMeta) -> BodyReads {
        BodyReads {
            request: rule.when.as_ref().is_some_and(|w| w.body.is_some())
                || rule.reads(file, |s| matches!(s, Source::Body(_))),
            response: rule.reads(file, |s| matches!(s, Source::Response(_))),
        }
    }
}

/// Options for loading a rule set; see [`RuleSet::loader`].
#[derive(Debug, Default, Clone)]
pub struct Loader {
    hmac_key: Option<Vec<u8>>,
    check_only: bool,
}

/// What a valid rule set holds, for `rules check`'s summary line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Rule files read.
    pub files: usize,
    /// Rules in them.
    pub rules: usize,
    /// Distinct operations.
    pub operations: usize,
}

impl Loader {
    /// The key `| hmac` uses. Without one, a set that uses `hmac` loads with a warning and
    /// leaves those values out of its records (never the raw value in their place).
    pub fn hmac_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.hmac_key = Some(key.into());
        self
    }

    /// Reads the HMAC key from a file; a trailing newline is not part of the key.
    pub fn hmac_key_file(self, path: impl AsRef<Path>) -> Result<Self, RulesError> {
        let path = path.as_ref();
        let key = read_key_file(path).map_err(|source| RulesError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if key.is_empty() {
            return Err(RulesError::EmptyHmacKey {
                path: path.to_path_buf(),
            });
        }
        Ok(self.hmac_key(key))
    }

    /// Checks the rules as `auditgate rules check` does: no HMAC key is needed (`| hmac`
    /// evaluates to nothing, never to the raw value), and what other loads only warn about
    /// (a rule that can never match) is a problem.
    pub fn check_only(mut self) -> Self {
        self.check_only = true;
        self
    }

    /// Loads a file, or a directory whose `*.yaml` / `*.yml` files are read as one set.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<RuleSet, RulesError> {
        self.load_all(&[path.as_ref().to_path_buf()])
    }

    /// Loads several files and directories as one set, in the order given.
    pub fn load_all(&self, paths: &[PathBuf]) -> Result<RuleSet, RulesError> {
        let files = load::expand(paths)?;
        let mut texts = Vec::with_capacity(files.len());
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| RulesError::Io {
                path: file.clone(),
                source,
            })?;
            texts.push((file, text));
        }
        self.compile(&texts)
    }

    /// Loads a set from text, naming it `name` in messages.
    pub fn from_yaml(&self, name: impl AsRef<Path>, text: &str) -> Result<RuleSet, RulesError> {
        self.compile(&[(name.as_ref().to_path_buf(), text.to_owned())])
    }

    fn compile(&self, texts: &[(PathBuf, String)]) -> Result<RuleSet, RulesError> {
        let mut diags = Vec::new();
        let mut files = Vec::new();
        let mut rules = Vec::new();
        for (path, text) in texts {
            let mut reader = FileReader::new(path, files.len(), &mut diags);
            if let Some((meta, file_rules)) = reader.read(text) {
                files.push(meta);
                rules.extend(file_rules);
            }
        }
        load::check_ids(&files, &mut rules, &mut diags);
        // What still loads but may not do what the author meant: a warning for loaders, a
        // problem for `rules check`.
        let mut warnings = Vec::new();
        load::check_shadowing(&files, &rules, &mut warnings);
        if self.hmac_key.is_none() && !self.check_only {
            for rule in &rules {
                let file = &files[rule.file];
                let hmac = rule
                    .templates()
                    .chain(file.actor.iter())
                    .find(|t| t.uses(|e| e.filters.contains(&template::Filter::Hmac)));
                if let Some(t) = hmac {
                    let offset = t
                        .text
                        .find("hmac")
                        .map_or(0, |i| t.text[..i].chars().count());
                    let at = t.pos.shifted(offset);
                    warnings.push(Diagnostic {
                        file: file.path.clone(),
                        line: at.line,
                        col: at.col,
                        message: format!(
                            "rule \"{}\" uses `| hmac` but no HMAC key was given, so its records leave that value out: pass --hmac-key-file, set hmac_key_file in the proxy config, or call Loader::hmac_key",
                            rule.id
                        ),
                    });
                }
            }
        }
        if self.check_only {
            diags.append(&mut warnings);
        }
        warnings.sort();
        if !diags.is_empty() {
            diags.sort();
            diags.dedup();
            return Err(RulesError::Invalid(diags));
        }
        let unmatched = files.iter().position(|f| f.unmatched == Unmatched::Record);
        let unmatched_methods = unmatched.map_or(MethodSet::default(), |i| files[i].methods);
        let matcher = Matcher::build(&rules);
        let record_headers = record_headers(&files, &rules);
        let body_reads = rules
            .iter()
            .map(|r| BodyReads::of(r, &files[r.file]))
            .collect();
        Ok(RuleSet {
            inner: Arc::new(Inner {
                files,
                rules,
                matcher,
                hmac_key: self.hmac_key.clone().map(Vec::into_boxed_slice),
                warnings,
                unmatched,
                unmatched_methods,
                record_headers,
                body_reads,
            }),
        })
    }
}

/// Reads a file holding a secret key; a trailing newline (as editors and `echo` write) is not
/// part of the key. Used for `hmac_key_file` and the proxy's token secrets.
pub fn read_key_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut key = std::fs::read(path)?;
    while key.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        key.pop();
    }
    Ok(key)
}

/// The request headers a record of this set can read: `User-Agent`, `Authorization` when a
/// template reads the JWT, and every `header.` source (of rules and of each file's default
/// actor and tenant) and `when.header`.
fn record_headers(files: &[FileMeta], rules: &[Rule]) -> Vec<http::HeaderName> {
    let templates = rules.iter().flat_map(Rule::templates).chain(
        files
            .iter()
            .flat_map(|f| f.actor.iter().chain(f.tenant.iter())),
    );
    // `Content-Type` says whether a body is a form.
    let mut names = vec![http::header::USER_AGENT, http::header::CONTENT_TYPE];
    for expr in templates.flat_map(Template::exprs) {
        let name = match &expr.source {
            Source::Jwt(_) => Some(http::header::AUTHORIZATION),
            Source::Header(name) => Some(name.clone()),
            _ => None,
        };
        names.extend(name);
    }
    names.extend(rules.iter().filter_map(|r| r.when.as_ref()?.header.clone()));
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

impl RuleSet {
    /// Options for loading: an HMAC key, or checking only.
    pub fn loader() -> Loader {
        Loader::default()
    }

    /// Loads a file or a directory of rule files, without an HMAC key.
    pub fn load(path: impl AsRef<Path>) -> Result<RuleSet, RulesError> {
        Loader::default().load(path)
    }

    /// Loads a set from text, naming it `name` in messages, without an HMAC key.
    pub fn from_yaml(name: impl AsRef<Path>, text: &str) -> Result<RuleSet, RulesError> {
        Loader::default().from_yaml(name, text)
    }

    /// What loaded but may not do what its author meant, each with its `FILE:LINE:COL`: a
    /// rule that can never match (an earlier rule with the same methods and path shape and
    /// no `when` takes its calls: ties go to file order), and `| hmac` without a key. Callers
    /// that load rules (the proxy, a service with the layer) log these; `rules check`
    /// reports them as problems.
    ///
    /// ```
    /// use auditgate_rules::RuleSet;
    ///
    /// let set = RuleSet::from_yaml("rules.yaml", "version: 1\nservice: s\nrules:
    ///   - { operation: a.first, method: POST, path: \"/x/{id}\" }
    ///   - { operation: a.second, method: POST, path: \"/x/{other}\" }\n")?;
    /// assert_eq!(set.warnings().len(), 1);
    /// let warning = set.warnings()[0].to_string();
    /// assert!(warning.starts_with("rules.yaml:5:7: rule \"a.second\" can never match"), "{warning}");
    /// # Ok::<(), auditgate_rules::RulesError>(())
    /// ```
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.inner.warnings
    }

    /// Counts for a summary line.
    pub fn summary(&self) -> Summary {
        let mut operations: Vec<&str> = self
            .inner
            .rules
            .iter()
            .map(|r| r.operation.as_str())
            .collect();
        operations.sort_unstable();
        operations.dedup();
        Summary {
            files: self.inner.files.len(),
            rules: self.inner.rules.len(),
            operations: operations.len(),
        }
    }

    /// Whether any rule reads `jwt/` claims (so a proxy knows whether to verify tokens).
    pub fn reads_jwt(&self) -> bool {
        self.inner
            .rules
            .iter()
            .any(|r| r.reads(&self.inner.files[r.file], |s| matches!(s, Source::Jwt(_))))
    }

    /// Matches a request's method and path (normalised here; a query is ignored). `None` when
    /// nothing is to be recorded: no rule matches and the call is not an `unmatched: record`
    /// mutation. Rules with `when` are candidates until [`Match::record`] sees the call.
    pub fn matches(&self, method: &http::Method, path: &str) -> Option<Match> {
        let method_bit = MethodSet::of(method);
        let normal = normalize_path(path);
        let mut bounds: SmallVec<[(u32, u32); 8]> = SmallVec::new();
        let mut candidates = SmallVec::new();
        {
            let mut segments: SmallVec<[&str; 8]> = SmallVec::new();
            if normal.len() > 1 {
                let mut start = 1usize;
                for part in normal[1..].split('/') {
                    let end = start + part.len();
                    bounds.push((start as u32, end as u32));
                    segments.push(part);
                    start = end + 1;
                }
            }
            self.inner
                .matcher
                .find(method_bit, &segments, &mut candidates);
        }
        let unmatched = self
            .inner
            .unmatched
            .filter(|_| self.inner.unmatched_methods.contains(method_bit));
        if candidates.is_empty() && unmatched.is_none() {
            return None;
        }
        Some(Match {
            rules: self.clone(),
            path: normal.into_owned(),
            bounds,
            candidates,
            unmatched,
        })
    }
}

#[cfg(test)]
mod tests;
