//! Reading rule files: YAML → checked [`Rule`]s, with every problem reported at its position.

use std::path::{Path, PathBuf};

use crate::error::{Diagnostic, did_you_mean};
use crate::model::{
    Change, FileMeta, METHODS, MethodSet, OnQueueFailure, ResourceTemplate, Rule, Unmatched, When,
};
use crate::path::PathPattern;
use crate::template::{Source, Template, TemplateError};
use crate::yaml::{self, Kind, Node, Pos};

const TOP_KEYS: &[&str] = &["version", "service", "defaults", "rules"];
const DEFAULT_KEYS: &[&str] = &[
    "methods",
    "actor",
    "tenant",
    "request_id",
    "unmatched",
    "on_queue_failure",
];
const RULE_KEYS: &[&str] = &[
    "id",
    "operation",
    "method",
    "path",
    "when",
    "resources",
    "details",
    "description",
    "actor",
    "tenant",
    "before",
    "changes",
    "on_queue_failure",
];
const WHEN_KEYS: &[&str] = &["body", "query", "header"];
const RESOURCE_KEYS: &[&str] = &["type", "id", "path", "previous_path"];
const CHANGE_KEYS: &[&str] = &["from", "to"];

/// Collects the problems of one file while it is read.
pub(crate) struct FileReader<'a> {
    path: &'a Path,
    file_index: usize,
    diags: &'a mut Vec<Diagnostic>,
}

impl<'a> FileReader<'a> {
    pub(crate) fn new(path: &'a Path, file_index: usize, diags: &'a mut Vec<Diagnostic>) -> Self {
        FileReader {
            path,
            file_index,
            diags,
        }
    }

    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            file: self.path.to_path_buf(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        });
    }

    /// Reads one file's text into its metadata and rules. Problems go to the diagnostics;
    /// whatever could still be understood is returned, so later checks can run on it too.
    pub(crate) fn read(&mut self, text: &str) -> Option<(FileMeta, Vec<Rule>)> {
        let root = match yaml::parse(text) {
            Ok(Some(root)) => root,
            Ok(None) => {
                self.error(
                    Pos { line: 1, col: 1 },
                    "empty rule file: start with `version: 1`, `service: NAME` and `rules:`",
                );
                return None;
            }
            Err(e) => {
                self.error(e.pos, format!("YAML syntax error: {}", e.message));
                return None;
            }
        };
        let entries = self.mapping(&root, "the rule file")?;
        self.check_keys(entries, TOP_KEYS, "at the top of a rule file");

        match find(entries, "version") {
            None => self.error(
                root.pos,
                "missing `version`: add `version: 1` at the top of the file",
            ),
            Some(v) if v.as_str() == Some("1") => {}
            Some(v) => {
                let shown = v.as_str().unwrap_or(v.describe());
                self.error(
                    v.pos,
                    format!("unsupported version \"{shown}\": this auditgate reads `version: 1`"),
                );
            }
        }
        let service = match find(entries, "service") {
            None => {
                self.error(
                    root.pos,
                    "missing `service`: name the API these rules describe, e.g. `service: media-library` (it is recorded in every record)",
                );
                String::new()
            }
            Some(node) => self.string(node, "`service`").unwrap_or_default(),
        };

        let mut meta = FileMeta {
            path: self.path.to_path_buf(),
            service,
            methods: MethodSet::parse_one("POST")
                .into_iter()
                .chain(MethodSet::parse_one("PUT"))
                .chain(MethodSet::parse_one("PATCH"))
                .chain(MethodSet::parse_one("DELETE"))
                .fold(MethodSet::default(), MethodSet::union),
            actor: vec![Template::parse("{jwt/sub}").ok()?],
            tenant: None,
            request_id: http::HeaderName::from_static("x-request-id"),
            unmatched: Unmatched::Ignore,
            on_queue_failure: OnQueueFailure::Open,
        };
        if let Some(defaults) = find(entries, "defaults") {
            self.defaults(defaults, &mut meta);
        }

        let mut rules = Vec::new();
        match find(entries, "rules") {
            None => self.error(
                root.pos,
                "missing `rules`: add a list of rules, each with an `operation` and a `path`",
            ),
            Some(list) => match &list.kind {
                Kind::Seq(items) => {
                    for item in items {
                        if let Some(rule) = self.rule(item, &meta) {
                            rules.push(rule);
                        }
                    }
                }
                _ if list.is_null() => {}
                _ => self.error(
                    list.pos,
                    format!(
                        "`rules` must be a list (`- operation: ...`), found {}",
                        list.describe()
                    ),
                ),
            },
        }
        Some((meta, rules))
    }

    fn defaults(&mut self, node: &Node, meta: &mut FileMeta) {
        let Some(entries) = self.mapping(node, "`defaults`") else {
            return;
        };
        self.check_keys(entries, DEFAULT_KEYS, "in `defaults`");
        if let Some(methods) = find(entries, "methods")
            && let Some(set) = self.methods(methods)
        {
            meta.methods = set;
        }
        if let Some(actor) = find(entries, "actor")
            && let Some(list) = self.actor(actor, None)
        {
            meta.actor = list;
        }
        if let Some(tenant) = find(entries, "tenant") {
            meta.tenant = self.template(tenant, None);
            if let Some(t) = &meta.tenant {
                self.no_before(t, false);
            }
        }
        if let Some(header) = find(entries, "request_id")
            && let Some(name) = self.string(header, "`request_id`")
        {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => meta.request_id = h,
                    Err(_) => self.error(
                        header.pos,
                        format!("`request_id` names a header, and \"{name}\" is not a valid header name (e.g. X-Request-Id)"),
                    ),
                }
        }
        if let Some(node) = find(entries, "unmatched") {
            match self.string(node, "`unmatched`").as_deref() {
                Some("ignore") => meta.unmatched = Unmatched::Ignore,
                Some("record") => meta.unmatched = Unmatched::Record,
                Some(other) => self.error(
                    node.pos,
                    format!(
                        "`unmatched` is `ignore` or `record`, not \"{other}\"{}",
                        did_you_mean(other, &["ignore", "record"])
                    ),
                ),
                None => {}
            }
        }
        if let Some(node) = find(entries, "on_queue_failure")
            && let Some(policy) = self.queue_failure(node)
        {
            meta.on_queue_failure = policy;
        }
    }

    fn rule(&mut self, node: &Node, meta: &FileMeta) -> Option<Rule> {
        let entries = self.mapping(node, "a rule")?;
        self.check_keys(entries, RULE_KEYS, "in a rule");
        let operation = match find(entries, "operation") {
            Some(n) => self.string(n, "`operation`"),
            None => {
                self.error(
                    node.pos,
                    "rule has no `operation`: name what it records, e.g. `operation: asset.rename`",
                );
                None
            }
        };
        if let (Some(op), Some(n)) = (&operation, find(entries, "operation"))
            && (op.is_empty() || op.contains(|c: char| c.is_whitespace() || c == ',' || c == '*'))
        {
            // Commas and `*` mean "any of" and "starting with" in the writer's operation filter.
            self.error(
                n.pos,
                format!(
                    "operation \"{op}\" must be one word without spaces, commas or `*`, e.g. asset.rename"
                ),
            );
        }
        let pattern = match find(entries, "path") {
            Some(n) => self
                .string(n, "`path`")
                .and_then(|text| match PathPattern::parse(&text) {
                    Ok(p) => Some((p, text)),
                    Err(e) => {
                        self.error(n.pos.shifted(n.value_offset + e.offset), e.message);
                        None
                    }
                }),
            None => {
                self.error(
                    node.pos,
                    "rule has no `path`: say which endpoint it covers, e.g. `path: /v1/files/{fileId}`",
                );
                None
            }
        };
        let methods = match find(entries, "method") {
            Some(n) => self.methods(n),
            None => Some(meta.methods),
        };
        let id = match find(entries, "id") {
            Some(n) => self.string(n, "`id`"),
            None => operation.clone(),
        };
        let on_queue_failure = match find(entries, "on_queue_failure") {
            Some(n) => self.queue_failure(n),
            None => Some(meta.on_queue_failure),
        };
        let when = find(entries, "when").and_then(|n| self.when(n));
        let actor = find(entries, "actor").and_then(|n| self.actor(n, pattern.as_ref()));
        let params = pattern.as_ref().map(|(p, _)| p);

        let mut resources = Vec::new();
        if let Some(list) = find(entries, "resources") {
            match &list.kind {
                Kind::Seq(items) => {
                    for item in items {
                        if let Some(r) = self.resource(item, params) {
                            resources.push(r);
                        }
                    }
                }
                Kind::Map(_) => self.error(
                    list.pos,
                    "`resources` is a list: write `resources: [{ type: file, id: \"{path.fileId}\" }]`",
                ),
                _ if list.is_null() => {}
                _ => self.error(
                    list.pos,
                    format!("`resources` must be a list, found {}", list.describe()),
                ),
            }
        }
        let mut details = Vec::new();
        if let Some(map) = find(entries, "details")
            && let Some(items) = self.mapping(map, "`details`")
        {
            for (key, value) in items {
                let (Some(name), Some(t)) = (
                    self.string(key, "a `details` key"),
                    self.template(value, params),
                ) else {
                    continue;
                };
                if details.iter().any(|(n, _)| *n == name) {
                    self.error(key.pos, format!("details key \"{name}\" appears twice"));
                    continue;
                }
                details.push((name, t));
            }
        }
        // In name order, the order of the record's JSON object: a record then writes them
        // as they come, without sorting per call.
        details.sort_by(|a, b| a.0.cmp(&b.0));
        let description = find(entries, "description").and_then(|n| self.template(n, params));
        let tenant = find(entries, "tenant").and_then(|n| self.template(n, params));
        let before = find(entries, "before").and_then(|n| self.before(n, params, methods));
        let changes = find(entries, "changes")
            .map(|n| self.changes(n, params))
            .unwrap_or_default();
        // `before/` reads the answer of the rule's `before:` GET: without one it has nothing.
        let has_before = find(entries, "before").is_some();
        for template in resources
            .iter()
            .flat_map(|r| [&r.id, &r.path, &r.previous_path])
            .flatten()
            .chain(details.iter().map(|(_, t)| t))
            .chain(description.iter())
            .chain(tenant.iter())
            .chain(
                changes
                    .iter()
                    .flat_map(|c| c.from.iter().chain(c.to.iter())),
            )
        {
            self.no_before(template, has_before);
        }

        let (pattern, route) = pattern?;
        Some(Rule {
            id: id?,
            id_explicit: find(entries, "id").is_some(),
            operation: operation?,
            file: self.file_index,
            pos: node.pos,
            methods: methods?,
            pattern,
            route,
            when,
            resources,
            details,
            description,
            actor,
            tenant,
            before,
            changes,
            on_queue_failure: on_queue_failure?,
        })
    }

    /// Reports a `before/` source in a template of a rule that has no `before:` GET.
    fn no_before(&mut self, template: &Template, has_before: bool) {
        if has_before {
            return;
        }
        if let Some(expr) = template
            .exprs()
            .find(|e| matches!(e.source, Source::Before(_)))
        {
            let offset = template.text.find(&expr.text).unwrap_or(0);
            self.error(
                template.pos.shifted(template.text[..offset].chars().count()),
                format!(
                    "\"{}\" reads the answer of the rule's `before:` GET, and this rule has none: add `before: \"/path/of/the/resource\"`",
                    expr.text
                ),
            );
        }
    }

    /// `before:`: a template of the upstream path to GET before the call is forwarded. It can
    /// read only what is known before forwarding (path, query, headers, claims), and a rule
    /// that only reads (GET) has no "before".
    fn before(
        &mut self,
        node: &Node,
        params: Option<&PathPattern>,
        methods: Option<MethodSet>,
    ) -> Option<Template> {
        let template = self.template(node, params)?;
        if let Some(expr) = template.exprs().find(|e| {
            matches!(
                e.source,
                Source::Body(_) | Source::Response(_) | Source::Before(_)
            )
        }) {
            self.error(
                template.pos,
                format!(
                    "`before` is fetched before the call is forwarded, so it cannot read \"{}\": use path., query., header. or jwt/ sources",
                    expr.text
                ),
            );
            return None;
        }
        if !template.text.starts_with('/') {
            self.error(
                template.pos,
                format!("`before` is an upstream path starting with /, e.g. \"/v1/files/{{path.fileId}}/details\", not \"{}\"", template.text),
            );
            return None;
        }
        let get = MethodSet::parse_one("GET").unwrap_or_default();
        let head = MethodSet::parse_one("HEAD").unwrap_or_default();
        if let Some(methods) = methods
            && !methods.intersects(MethodSet(!(get.0 | head.0)))
        {
            self.error(
                node.pos,
                "`before` records what a call changes, and a GET or HEAD changes nothing: remove `before`, or give the rule the method that changes the resource",
            );
            return None;
        }
        Some(template)
    }

    /// `changes:`: `NAME: { from: TEMPLATE, to: TEMPLATE }`, in name order.
    fn changes(&mut self, node: &Node, params: Option<&PathPattern>) -> Vec<Change> {
        let mut changes: Vec<Change> = Vec::new();
        let Some(items) = self.mapping(node, "`changes`") else {
            return changes;
        };
        for (key, value) in items {
            let Some(name) = self.string(key, "a `changes` key") else {
                continue;
            };
            let Some(entries) = self.mapping(
                value,
                "a change (`{ from: \"{before/name}\", to: \"{body/name}\" }`)",
            ) else {
                continue;
            };
            self.check_keys(entries, CHANGE_KEYS, "in a change");
            let from = find(entries, "from").and_then(|n| self.template(n, params));
            let to = find(entries, "to").and_then(|n| self.template(n, params));
            // A `from` or `to` that is there but bad was reported already.
            if find(entries, "from").is_none() && find(entries, "to").is_none() {
                self.error(
                    value.pos,
                    format!("change \"{name}\" needs `from` or `to` (or both), e.g. {{ from: \"{{before/name}}\", to: \"{{body/name}}\" }}"),
                );
                continue;
            }
            if changes.iter().any(|c| c.name == name) {
                self.error(key.pos, format!("changes key \"{name}\" appears twice"));
                continue;
            }
            if from.is_none() && to.is_none() {
                continue;
            }
            changes.push(Change { name, from, to });
        }
        changes.sort_by(|a, b| a.name.cmp(&b.name));
        changes
    }

    fn resource(&mut self, node: &Node, params: Option<&PathPattern>) -> Option<ResourceTemplate> {
        let entries = self.mapping(node, "a resource")?;
        self.check_keys(entries, RESOURCE_KEYS, "in a resource");
        let kind = match find(entries, "type") {
            Some(n) => self.template(n, params),
            None => {
                self.error(
                    node.pos,
                    "resource has no `type`: say what it is, e.g. `type: file`",
                );
                None
            }
        };
        let id = find(entries, "id").and_then(|n| self.template(n, params));
        let path = find(entries, "path").and_then(|n| self.template(n, params));
        let previous_path = find(entries, "previous_path").and_then(|n| self.template(n, params));
        if let Some(previous) = find(entries, "previous_path")
            && find(entries, "path").is_none()
        {
            self.error(
                previous.pos,
                "`previous_path` says where a resource was before the call, so it needs `path`, where it is after: add `path: \"{response/filePath}\"`",
            );
        }
        if find(entries, "id").is_none() && find(entries, "path").is_none() {
            self.error(
                node.pos,
                "resource needs an `id` or a `path` (or both) to say which one was touched",
            );
        }
        Some(ResourceTemplate {
            kind: kind?,
            id,
            path,
            previous_path,
        })
    }

    fn when(&mut self, node: &Node) -> Option<When> {
        let entries = self.mapping(node, "`when`")?;
        self.check_keys(entries, WHEN_KEYS, "in `when`");
        let mut when = When::default();
        if let Some(n) = find(entries, "body")
            && let Some(ptr) = self.string(n, "`when.body`")
        {
            if !(ptr.is_empty() || ptr.starts_with('/')) {
                let fixed = ptr.replace('.', "/");
                self.error(
                    n.pos,
                    format!("`when.body` is a JSON pointer, starting with '/': write \"/{fixed}\", not \"{ptr}\""),
                );
            } else if let Err(e) = Template::parse(&format!("{{body{ptr}}}")) {
                self.error(n.pos, format!("`when.body`: {}", e.message));
            } else {
                when.body = Some(ptr);
            }
        }
        if let Some(n) = find(entries, "query")
            && let Some(name) = self.string(n, "`when.query`")
        {
            if name.is_empty() {
                self.error(
                    n.pos,
                    "`when.query` names no parameter: write e.g. `query: force`",
                );
            } else {
                when.query = Some(name);
            }
        }
        if let Some(n) = find(entries, "header")
            && let Some(name) = self.string(n, "`when.header`")
        {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => when.header = Some(h),
                Err(_) => self.error(n.pos, format!("\"{name}\" is not a valid header name")),
            }
        }
        if entries.is_empty() {
            self.error(
                node.pos,
                "empty `when`: name a `body` pointer, `query` parameter or `header` that must be present",
            );
            return None;
        }
        Some(when)
    }

    fn actor(
        &mut self,
        node: &Node,
        pattern: Option<&(PathPattern, String)>,
    ) -> Option<Vec<Template>> {
        let items: Vec<&Node> = match &node.kind {
            Kind::Seq(items) => items.iter().collect(),
            Kind::Scalar { .. } => vec![node],
            Kind::Map(_) => {
                self.error(
                    node.pos,
                    "`actor` is a template or a list of templates, e.g. [\"{jwt/sub}\", \"{header.X-User-Id}\"]",
                );
                return None;
            }
        };
        let params = pattern.map(|(p, _)| p);
        // Every template is read, so that every bad one is reported at once.
        let out: Vec<Option<Template>> = items
            .into_iter()
            .map(|item| self.template(item, params))
            .collect();
        out.into_iter().collect()
    }

    fn methods(&mut self, node: &Node) -> Option<MethodSet> {
        let items: Vec<&Node> = match &node.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut set = MethodSet::default();
        let mut ok = true;
        for item in items {
            let Some(name) = self.string(item, "a method") else {
                ok = false;
                continue;
            };
            match MethodSet::parse_one(&name) {
                Some(m) => set = set.union(m),
                None => {
                    ok = false;
                    self.error(
                        item.pos,
                        format!(
                            "unknown method \"{name}\"{}: use one of {}",
                            did_you_mean(&name, &METHODS),
                            METHODS.join(", ")
                        ),
                    );
                }
            }
        }
        if ok && set == MethodSet::default() {
            self.error(node.pos, "empty method list: name at least one method");
            return None;
        }
        ok.then_some(set)
    }

    fn queue_failure(&mut self, node: &Node) -> Option<OnQueueFailure> {
        match self.string(node, "`on_queue_failure`")?.as_str() {
            "open" => Some(OnQueueFailure::Open),
            "closed" => Some(OnQueueFailure::Closed),
            other => {
                self.error(
                    node.pos,
                    format!(
                        "`on_queue_failure` is `open` or `closed`, not \"{other}\"{}",
                        did_you_mean(other, &["open", "closed"])
                    ),
                );
                None
            }
        }
    }

    /// Parses a template and checks that every `path.NAME` it reads is a parameter of the rule.
    fn template(&mut self, node: &Node, params: Option<&PathPattern>) -> Option<Template> {
        let text = self.string(node, "a template")?;
        let mut template = match Template::parse(&text) {
            Ok(t) => t,
            Err(TemplateError { offset, message }) => {
                self.error(node.pos.shifted(node.value_offset + offset), message);
                return None;
            }
        };
        template.pos = node.pos.shifted(node.value_offset);
        if let Some(pattern) = params {
            let known: Vec<&str> = pattern.params().collect();
            for expr in template.exprs() {
                if let Source::Path(name) = &expr.source
                    && !known.contains(&name.as_str())
                {
                    let offset = text.find(&format!("path.{name}")).unwrap_or(0);
                    let has = if known.is_empty() {
                        "the rule's path has no parameters".to_owned()
                    } else {
                        format!("the rule's path has {}", known.join(", "))
                    };
                    self.error(
                        node.pos
                            .shifted(node.value_offset + text[..offset].chars().count()),
                        format!(
                            "unknown path parameter \"{name}\"{}: {has}",
                            did_you_mean(name, &known)
                        ),
                    );
                    return None;
                }
            }
        }
        Some(template)
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.kind {
            Kind::Scalar { value, .. } if !node.is_null() => Some(value.clone()),
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be a string, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn mapping<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [(Node, Node)]> {
        match &node.kind {
            Kind::Map(entries) => Some(entries),
            _ => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be a mapping (key: value), found {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    fn check_keys(&mut self, entries: &[(Node, Node)], allowed: &[&str], place: &str) {
        let mut seen: Vec<&str> = Vec::new();
        for (key, _) in entries {
            let Some(name) = key.as_str() else {
                self.error(key.pos, "keys must be plain words");
                continue;
            };
            if seen.contains(&name) {
                self.error(key.pos, format!("key \"{name}\" appears twice"));
                continue;
            }
            seen.push(name);
            if !allowed.contains(&name) {
                let hint = did_you_mean(name, allowed);
                let fix = if hint.is_empty() {
                    format!("; known keys here: {}", allowed.join(", "))
                } else {
                    hint
                };
                self.error(key.pos, format!("unknown key \"{name}\" {place}{fix}"));
            }
        }
    }
}

fn find<'n>(entries: &'n [(Node, Node)], key: &str) -> Option<&'n Node> {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Expands the command-line arguments: files as they are, directories to their `*.yaml` and
/// `*.yml` files in name order (not recursive), so a directory reads as one rule set in a
/// stable order.
pub(crate) fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, crate::RulesError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| crate::RulesError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| crate::RulesError::Io {
                    path: path.clone(),
                    source,
                })?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            if found.is_empty() {
                return Err(crate::RulesError::EmptyDirectory { path: path.clone() });
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    // A file named twice (`rules/ rules/*.yaml`) is read once, where it first appears: read
    // twice, each of its rules would shadow itself.
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    Ok(files)
}

/// Checks across all files: rules that can never win because an earlier rule with the same
/// methods and path shape, and no `when`, always takes the call first.
pub(crate) fn check_shadowing(files: &[FileMeta], rules: &[Rule], diags: &mut Vec<Diagnostic>) {
    let mut by_shape: rustc_hash::FxHashMap<String, Vec<usize>> = Default::default();
    for (index, rule) in rules.iter().enumerate() {
        by_shape
            .entry(rule.pattern.shape())
            .or_default()
            .push(index);
    }
    for indices in by_shape.values() {
        for (k, &later) in indices.iter().enumerate() {
            let rule = &rules[later];
            let mut covered = MethodSet::default();
            let mut first_cover = None;
            for &earlier in &indices[..k] {
                let e = &rules[earlier];
                if e.when.is_none() && e.methods.intersects(rule.methods) {
                    covered = covered.union(e.methods);
                    first_cover.get_or_insert(earlier);
                }
            }
            if let Some(earlier) = first_cover.filter(|_| covered.contains(rule.methods)) {
                let e = &rules[earlier];
                diags.push(Diagnostic {
                    file: files[rule.file].path.clone(),
                    line: rule.pos.line,
                    col: rule.pos.col,
                    message: format!(
                        "rule \"{}\" can never match: rule \"{}\" at {}:{}:{} takes {} {} first and has no `when`; give one of them a `when`, or remove one",
                        rule.id,
                        e.id,
                        files[e.file].path.display(),
                        e.pos.line,
                        e.pos.col,
                        rule.methods,
                        e.route,
                    ),
                });
            }
        }
    }
}

/// Rule ids name rules in records, so each must be unique; an id left to default to the
/// operation gets `#2`, `#3`, ... when the operation is shared.
pub(crate) fn check_ids(files: &[FileMeta], rules: &mut [Rule], diags: &mut Vec<Diagnostic>) {
    let explicit: Vec<bool> = rules.iter().map(|r| r.id_explicit).collect();
    let mut seen: rustc_hash::FxHashMap<String, usize> = Default::default();
    for (index, is_explicit) in explicit.iter().enumerate() {
        if !is_explicit {
            continue;
        }
        let id = rules[index].id.clone();
        if let Some(&first) = seen.get(&id) {
            let f = &rules[first];
            diags.push(Diagnostic {
                file: files[rules[index].file].path.clone(),
                line: rules[index].pos.line,
                col: rules[index].pos.col,
                message: format!(
                    "rule id \"{id}\" is already used at {}:{}:{}; rule ids must be unique",
                    files[f.file].path.display(),
                    f.pos.line,
                    f.pos.col
                ),
            });
        } else {
            seen.insert(id, index);
        }
    }
    for (index, is_explicit) in explicit.iter().enumerate() {
        if *is_explicit {
            continue;
        }
        let base = rules[index].id.clone();
        let mut id = base.clone();
        let mut n = 1;
        while seen.contains_key(&id) {
            n += 1;
            id = format!("{base}#{n}");
        }
        seen.insert(id.clone(), index);
        rules[index].id = id;
    }
}
