//! Which operations of an API description a rule set records: what `auditgate rules coverage`
//! reports, so that a rule author sees the mutating endpoints no rule names yet, and the rules
//! that no endpoint reaches any more.
//!
//! ```
//! use auditgate_rules::{Recorded, RuleSet};
//!
//! let set = RuleSet::from_yaml("rules.yaml", r#"version: 1
//! service: media-library
//! rules:
//!   - { operation: asset.delete, method: DELETE, path: "/v1/files/{fileId}" }
//!   - { operation: asset.rename, method: PATCH, path: "/v1/files/{fileId}", when: { body: /name } }
//!   - { operation: legacy.copy, method: POST, path: /v0/copy }
//! "#)?;
//! let report = set.coverage(&[
//!     (http::Method::DELETE, "/v1/files/{id}"),
//!     (http::Method::PATCH, "/v1/files/{id}"),
//!     (http::Method::POST, "/v1/files/{id}/copy"),
//! ]);
//! assert!(matches!(report.operations[0], Recorded::Always { operation: "asset.delete", .. }));
//! assert!(matches!(&report.operations[1], Recorded::When { rules } if rules[0].operation == "asset.rename"));
//! assert!(matches!(report.operations[2], Recorded::Not));
//! assert_eq!(report.unreached[0].operation, "legacy.copy");
//! # Ok::<(), auditgate_rules::RulesError>(())
//! ```

use crate::RuleSet;

/// How a rule set records calls to one operation of an API description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded<'a> {
    /// Every call: this rule has no `when` (rules before it, with one, may take some calls).
    Always {
        /// The rule's id.
        rule: &'a str,
        /// The operation its records carry.
        operation: &'a str,
    },
    /// Only calls for which one of these rules' `when` holds.
    When {
        /// The rules, most specific first.
        rules: Vec<RuleInfo<'a>>,
    },
    /// No rule names it, but the set says `unmatched: record`: its records say `unmatched`.
    AsUnmatched,
    /// Nothing records it.
    Not,
}

/// A rule, as a coverage report names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo<'a> {
    /// The rule's id.
    pub id: &'a str,
    /// Its operation.
    pub operation: &'a str,
    /// Its methods, e.g. `POST, PUT`.
    pub methods: String,
    /// Its path pattern.
    pub route: &'a str,
    /// Where it is written: `FILE:LINE:COL`.
    pub place: String,
}

/// What [`RuleSet::coverage`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage<'a> {
    /// For each operation asked about, in the same order, how it is recorded.
    pub operations: Vec<Recorded<'a>>,
    /// Rules that none of the operations reaches, in file order.
    pub unreached: Vec<RuleInfo<'a>>,
}

impl RuleSet {
    /// How each operation — a method and a path template as an API description writes it,
    /// `/v1/files/{id}` — is recorded, and which rules none of them reaches. A template's
    /// parameters stand for any value, so a rule with a static segment where the template has
    /// a parameter does not count as recording it.
    pub fn coverage<'a>(&'a self, operations: &[(http::Method, &str)]) -> Coverage<'a> {
        let rules = &self.inner.rules;
        let mut reached = vec![false; rules.len()];
        let recorded = operations
            .iter()
            .map(|(method, template)| {
                let Some(found) = self.matches(method, &sample_path(template)) else {
                    return Recorded::Not;
                };
                let mut conditional = Vec::new();
                for candidate in found.candidates.iter() {
                    let index = candidate.rule as usize;
                    reached[index] = true;
                    let rule = &rules[index];
                    if rule.when.is_none() {
                        return Recorded::Always {
                            rule: &rule.id,
                            operation: &rule.operation,
                        };
                    }
                    conditional.push(self.rule_info(index));
                }
                if conditional.is_empty() {
                    Recorded::AsUnmatched
                } else {
                    Recorded::When { rules: conditional }
                }
            })
            .collect();
        let unreached = (0..rules.len())
            .filter(|&i| !reached[i])
            .map(|i| self.rule_info(i))
            .collect();
        Coverage {
            operations: recorded,
            unreached,
        }
    }

    fn rule_info(&self, index: usize) -> RuleInfo<'_> {
        let rule = &self.inner.rules[index];
        RuleInfo {
            id: &rule.id,
            operation: &rule.operation,
            methods: rule.methods.to_string(),
            route: &rule.route,
            place: format!(
                "{}:{}:{}",
                self.inner.files[rule.file].path.display(),
                rule.pos.line,
                rule.pos.col
            ),
        }
    }
}

/// A concrete path for a template: each `{name}` becomes `(name)`, a value no static segment
/// of a rule is likely to be, so only parameters and `{*rest}` match it.
fn sample_path(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push('(');
        out.push_str(&rest[open + 1..open + close]);
        out.push(')');
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_become_paths_that_only_parameters_match() {
        assert_eq!(sample_path("/v1/files/{id}"), "/v1/files/(id)");
        assert_eq!(sample_path("/v1/{name}:cancel"), "/v1/(name):cancel");
        assert_eq!(sample_path("/a/{x}/b/{y}.json"), "/a/(x)/b/(y).json");
        assert_eq!(sample_path("/broken/{x"), "/broken/{x");
    }

    #[test]
    fn static_segments_and_unmatched_are_told_apart() {
        let set = RuleSet::from_yaml(
            "r.yaml",
            "version: 1\nservice: s\ndefaults: { unmatched: record }\nrules:\n  - { operation: f.recent, method: POST, path: /files/recent }\n  - { operation: f.any, method: POST, path: \"/tags/{*rest}\" }\n",
        )
        .unwrap();
        let report = set.coverage(&[
            (http::Method::POST, "/files/{id}"),
            (http::Method::POST, "/tags/{a}/{b}"),
            (http::Method::POST, "/files/recent"),
        ]);
        assert_eq!(report.operations[0], Recorded::AsUnmatched);
        assert!(matches!(
            report.operations[1],
            Recorded::Always {
                operation: "f.any",
                ..
            }
        ));
        assert!(matches!(
            report.operations[2],
            Recorded::Always {
                operation: "f.recent",
                ..
            }
        ));
        assert!(report.unreached.is_empty());
    }
}
