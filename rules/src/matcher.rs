//! The route matcher: a segment trie searched most-specific-first.
//!
//! Each trie node has static children (a hash map), one `{param}` child and one `{*rest}`
//! child. A depth-first walk that tries static, then param, then rest at every level visits
//! matching patterns in exactly the precedence order rule authors are promised (static over
//! `{param}` over `{*rest}`, compared segment by segment from the left); rules that share one
//! pattern keep file order. The walk stops at the first rule without `when` for the method,
//! since nothing after it could ever be chosen, so a lookup costs one hash probe per segment in
//! the common case whatever the number of rules.

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::model::{MethodSet, Rule};
use crate::path::Segment;

/// A rule that matched the method and path, with the segment ranges its parameters captured
/// (in the order they appear in its pattern).
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) rule: u32,
    pub(crate) captures: SmallVec<[(u32, u32); 4]>,
}

pub(crate) type Candidates = SmallVec<[Candidate; 2]>;

#[derive(Debug, Default)]
struct Node {
    statics: FxHashMap<Box<str>, u32>,
    param: Option<u32>,
    rest: Option<u32>,
    /// The rules ending here, in file order, with what the walk needs of them kept inline so
    /// that a lookup does not touch the (large) rules themselves.
    rules: Vec<Ending>,
}

/// A rule ending at a node.
#[derive(Debug, Clone, Copy)]
struct Ending {
    rule: u32,
    methods: MethodSet,
    has_when: bool,
}

#[derive(Debug)]
pub(crate) struct Matcher {
    nodes: Vec<Node>,
}

impl Matcher {
    pub(crate) fn build(rules: &[Rule]) -> Matcher {
        let mut nodes = vec![Node::default()];
        for (index, rule) in rules.iter().enumerate() {
            let mut at = 0usize;
            for segment in &rule.pattern.segments {
                let next = nodes.len() as u32;
                let node = &mut nodes[at];
                let (child, created) = match segment {
                    Segment::Static(text) => match node.statics.get(text.as_str()) {
                        Some(&c) => (c, false),
                        None => {
                            node.statics.insert(text.as_str().into(), next);
                            (next, true)
                        }
                    },
                    Segment::Param(_) => match node.param {
                        Some(c) => (c, false),
                        None => {
                            node.param = Some(next);
                            (next, true)
                        }
                    },
                    Segment::Rest(_) => match node.rest {
                        Some(c) => (c, false),
                        None => {
                            node.rest = Some(next);
                            (next, true)
                        }
                    },
                };
                if created {
                    nodes.push(Node::default());
                }
                at = child as usize;
            }
            nodes[at].rules.push(Ending {
                rule: index as u32,
                methods: rule.methods,
                has_when: rule.when.is_some(),
            });
        }
        Matcher { nodes }
    }

    /// Fills `out` with the rules matching `method` and `segments`, most specific first.
    pub(crate) fn find(&self, method: MethodSet, segments: &[&str], out: &mut Candidates) {
        let mut captures = SmallVec::new();
        self.walk(0, method, segments, 0, &mut captures, out);
    }

    /// Returns true once a rule without `when` has been found: the search is then over.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        node: usize,
        method: MethodSet,
        segments: &[&str],
        at: usize,
        captures: &mut SmallVec<[(u32, u32); 4]>,
        out: &mut Candidates,
    ) -> bool {
        let here = &self.nodes[node];
        if at == segments.len() {
            for ending in &here.rules {
                if ending.methods.contains(method) {
                    out.push(Candidate {
                        rule: ending.rule,
                        captures: captures.clone(),
                    });
                    if !ending.has_when {
                        return true;
                    }
                }
            }
            return false;
        }
        if let Some(&child) = here.statics.get(segments[at])
            && self.walk(child as usize, method, segments, at + 1, captures, out)
        {
            return true;
        }
        if let Some(child) = here.param {
            captures.push((at as u32, at as u32 + 1));
            let done = self.walk(child as usize, method, segments, at + 1, captures, out);
            captures.pop();
            if done {
                return true;
            }
        }
        if let Some(child) = here.rest {
            // Shortest remainder first: `/repos/{*repo}/secrets/{key}` takes as little as it
            // can and leaves the rest to the segments after it. A pattern holds at most one
            // rest, so this loop never nests and a lookup stays linear in the path length.
            for end in at + 1..=segments.len() {
                captures.push((at as u32, end as u32));
                let done = self.walk(child as usize, method, segments, end, captures, out);
                captures.pop();
                if done {
                    return true;
                }
            }
        }
        false
    }
}
