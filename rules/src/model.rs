//! The compiled form of a rule set: what the loader produces and the matcher and evaluator read.

use std::fmt;
use std::path::PathBuf;

use crate::path::PathPattern;
use crate::template::{Source, Template};
use crate::yaml::Pos;

/// What happens to a call when its record cannot be queued durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnQueueFailure {
    /// Serve the call anyway; the lost record is counted in metrics.
    #[default]
    Open,
    /// Refuse the call with 503 and do not forward it.
    Closed,
}

/// What happens to a mutating call that no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unmatched {
    /// Nothing is recorded.
    #[default]
    Ignore,
    /// A record with operation `unmatched` is written.
    Record,
}

/// The HTTP methods a rule can name, as a bit set.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct MethodSet(pub(crate) u16);

pub(crate) const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

impl MethodSet {
    pub(crate) fn parse_one(name: &str) -> Option<MethodSet> {
        let upper = name.to_ascii_uppercase();
        METHODS
            .iter()
            .position(|m| *m == upper)
            .map(|i| MethodSet(1 << i))
    }

    /// The bit of a request's method, its case ignored: `delete` is `DELETE` to the many
    /// upstreams that upper-case the method (Flask, ASP.NET, Rails, Go's routers), so it
    /// must be audited as one. Other extension methods get no bit and match no rule.
    pub(crate) fn of(method: &http::Method) -> MethodSet {
        let bit = match *method {
            http::Method::GET => 0,
            http::Method::HEAD => 1,
            http::Method::POST => 2,
            http::Method::PUT => 3,
            http::Method::PATCH => 4,
            http::Method::DELETE => 5,
            http::Method::OPTIONS => 6,
            http::Method::CONNECT => 7,
            http::Method::TRACE => 8,
            _ => match METHODS
                .iter()
                .position(|name| name.eq_ignore_ascii_case(method.as_str()))
            {
                Some(bit) => bit,
                None => return MethodSet(0),
            },
        };
        MethodSet(1 << bit)
    }

    pub(crate) fn contains(self, other: MethodSet) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }

    pub(crate) fn union(self, other: MethodSet) -> MethodSet {
        MethodSet(self.0 | other.0)
    }

    pub(crate) fn intersects(self, other: MethodSet) -> bool {
        self.0 & other.0 != 0
    }
}

impl fmt::Debug for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| *m)
            .collect();
        write!(f, "{}", names.join(", "))
    }
}

/// A rule file's own settings: every rule in the file inherits them.
#[derive(Debug, Clone)]
pub(crate) struct FileMeta {
    pub(crate) path: PathBuf,
    pub(crate) service: String,
    pub(crate) methods: MethodSet,
    pub(crate) actor: Vec<Template>,
    /// `defaults.tenant`: the organisation a record belongs to.
    pub(crate) tenant: Option<Template>,
    pub(crate) request_id: http::HeaderName,
    pub(crate) unmatched: Unmatched,
    pub(crate) on_queue_failure: OnQueueFailure,
}

/// `when:` conditions; each named value must exist for the rule to apply.
#[derive(Debug, Clone, Default)]
pub(crate) struct When {
    pub(crate) body: Option<String>,
    pub(crate) query: Option<String>,
    pub(crate) header: Option<http::HeaderName>,
}

#[derive(Debug, Clone)]
pub(crate) struct ResourceTemplate {
    pub(crate) kind: Template,
    pub(crate) id: Option<Template>,
    pub(crate) path: Option<Template>,
    /// The path it had before the call (a move, a rename).
    pub(crate) previous_path: Option<Template>,
}

/// One `changes:` entry: a field's value before the call and after it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) name: String,
    pub(crate) from: Option<Template>,
    pub(crate) to: Option<Template>,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) id: String,
    /// False when `id` was left to default to the operation.
    pub(crate) id_explicit: bool,
    pub(crate) operation: String,
    pub(crate) file: usize,
    pub(crate) pos: Pos,
    pub(crate) methods: MethodSet,
    pub(crate) pattern: PathPattern,
    /// The pattern as written, recorded as `request.route`.
    pub(crate) route: String,
    pub(crate) when: Option<When>,
    pub(crate) resources: Vec<ResourceTemplate>,
    pub(crate) details: Vec<(String, Template)>,
    pub(crate) description: Option<Template>,
    /// A rule-level `actor:` list replaces the file's default.
    pub(crate) actor: Option<Vec<Template>>,
    /// A rule-level `tenant:` replaces the file's default.
    pub(crate) tenant: Option<Template>,
    /// The upstream path to GET before the call is forwarded (`before/` templates read its
    /// answer).
    pub(crate) before: Option<Template>,
    /// In name order, as the record's JSON object.
    pub(crate) changes: Vec<Change>,
    pub(crate) on_queue_failure: OnQueueFailure,
}

impl Rule {
    pub(crate) fn templates(&self) -> impl Iterator<Item = &Template> {
        self.resources
            .iter()
            .flat_map(|r| {
                std::iter::once(&r.kind)
                    .chain(r.id.iter())
                    .chain(r.path.iter())
                    .chain(r.previous_path.iter())
            })
            .chain(self.details.iter().map(|(_, t)| t))
            .chain(self.description.iter())
            .chain(self.actor.iter().flatten())
            .chain(self.tenant.iter())
            .chain(self.before.iter())
            .chain(
                self.changes
                    .iter()
                    .flat_map(|c| c.from.iter().chain(c.to.iter())),
            )
    }

    pub(crate) fn reads(&self, file: &FileMeta, pred: impl Fn(&Source) -> bool) -> bool {
        let actor = self.actor.as_ref().unwrap_or(&file.actor);
        let tenant = self.tenant.as_ref().or(file.tenant.as_ref());
        self.templates()
            .chain(actor.iter())
            .chain(tenant)
            .any(|t| t.uses(|e| pred(&e.source)))
    }
}
