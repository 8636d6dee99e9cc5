//! A YAML document as a tree whose every node knows where it was written.
//!
//! serde-based YAML loaders forget positions once a value is deserialised, but every
//! message `rules check` prints starts with `FILE:LINE:COL`. So the rule loader walks this
//! tree by hand instead, reporting every problem it finds rather than stopping at the first.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column in a rule file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub(crate) line: u32,
    pub(crate) col: u32,
}

impl Pos {
    fn from_marker(mark: Marker) -> Self {
        Pos {
            line: u32::try_from(mark.line()).unwrap_or(u32::MAX),
            // yaml-rust2 counts columns from 0; editors and compilers count from 1.
            col: u32::try_from(mark.col() + 1).unwrap_or(u32::MAX),
        }
    }

    /// The position `offset` characters further along the same line.
    pub(crate) fn shifted(self, offset: usize) -> Pos {
        Pos {
            line: self.line,
            col: self
                .col
                .saturating_add(u32::try_from(offset).unwrap_or(u32::MAX)),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// `plain` is false for quoted and block scalars: `"1"` is a string, `1` may be a number.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) pos: Pos,
    /// For a single-line quoted scalar, the column offset from `pos` to the first character of
    /// its value, so errors inside a template point at the character itself.
    pub(crate) value_offset: usize,
}

impl Node {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// True for an explicit or implicit YAML null (`~`, `null`, or an empty value).
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { value, plain: true } if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub(crate) fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar { .. } if self.is_null() => "nothing",
            Kind::Scalar { .. } => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub(crate) pos: Pos,
    pub(crate) message: String,
}

/// How deep a rule file may nest: far more than any rule needs, and few enough that walking
/// (and dropping) the tree recursively is safe on any thread's stack.
pub(crate) const MAX_DEPTH: usize = 64;

/// How many nodes aliases may add in all: a few anchors used a few times each can otherwise
/// expand to billions ("billion laughs").
pub(crate) const MAX_ALIASED_NODES: usize = 100_000;

/// Parses the first document of `text`. `Ok(None)` for a file with no document at all.
///
/// The parser's events are pulled here, one at a time, rather than through
/// `Parser::load`, which recurses once per level of nesting (a file of 100 000 `- ` would
/// overflow the stack) and asserts on input it does not expect.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token().map_err(|e| SyntaxError {
            pos: Pos::from_marker(*e.marker()),
            message: e.info().to_owned(),
        })?;
        if event == Event::StreamEnd {
            break;
        }
        builder.on_event(event, mark);
        if let Some(refused) = builder.refused.take() {
            return Err(refused);
        }
        if builder.second_document.is_some() {
            break;
        }
    }
    if let Some(pos) = builder.second_document {
        return Err(SyntaxError {
            pos,
            message:
                "a rule file holds one YAML document; split the others into files of their own"
                    .to_owned(),
        });
    }
    Ok(builder.documents.into_iter().next())
}

enum Open {
    Seq(Vec<Node>, Pos, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Pos, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    documents: Vec<Node>,
    anchors: Vec<(usize, Node)>,
    second_document: Option<Pos>,
    in_document: usize,
    /// Nodes added by aliases so far.
    aliased_nodes: usize,
    /// Why the text is refused before it is read to its end.
    refused: Option<SyntaxError>,
}

/// How many nodes `node` holds, itself included (the tree is at most `MAX_DEPTH` deep).
fn node_count(node: &Node) -> usize {
    1 + match &node.kind {
        Kind::Scalar { .. } => 0,
        Kind::Seq(items) => items.iter().map(node_count).sum(),
        Kind::Map(entries) => entries
            .iter()
            .map(|(k, v)| node_count(k) + node_count(v))
            .sum(),
    }
}

impl Builder {
    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            Some(Open::Seq(items, ..)) => items.push(node),
            Some(Open::Map(entries, key, ..)) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => *key = Some(node),
            },
            None => self.documents.push(node),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match ev {
            Event::DocumentStart => {
                self.in_document += 1;
                if self.in_document == 2 && self.second_document.is_none() {
                    self.second_document = Some(pos);
                }
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let plain = style == TScalarStyle::Plain;
                let quoted = matches!(
                    style,
                    TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted
                );
                let node = Node {
                    kind: Kind::Scalar { value, plain },
                    pos,
                    value_offset: usize::from(quoted),
                };
                self.push_node(node, anchor);
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if self.stack.len() >= MAX_DEPTH => {
                self.refused = Some(SyntaxError {
                    pos,
                    message: format!(
                        "nested deeper than {MAX_DEPTH} levels: a rule file never needs that many"
                    ),
                });
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq(Vec::new(), pos, anchor)),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Map(Vec::new(), None, pos, anchor))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Open::Seq(items, pos, anchor)) => (
                        Node {
                            kind: Kind::Seq(items),
                            pos,
                            value_offset: 0,
                        },
                        anchor,
                    ),
                    Some(Open::Map(entries, _, pos, anchor)) => (
                        Node {
                            // The parser marks a block mapping's start after its first key;
                            // the first key is where a reader sees the mapping begin.
                            pos: entries.first().map_or(pos, |(k, _)| k.pos),
                            kind: Kind::Map(entries),
                            value_offset: 0,
                        },
                        anchor,
                    ),
                    None => return,
                };
                self.push_node(node, anchor);
            }
            Event::Alias(id) => {
                let target = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| n.clone());
                if let Some(mut node) = target {
                    self.aliased_nodes += node_count(&node);
                    if self.aliased_nodes > MAX_ALIASED_NODES {
                        self.refused = Some(SyntaxError {
                            pos,
                            message: format!(
                                "aliases here expand to more than {MAX_ALIASED_NODES} values: write the rules out, or use fewer aliases of aliases"
                            ),
                        });
                        return;
                    }
                    node.pos = pos;
                    self.push_node(node, 0);
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let doc = parse("a: 1\nb:\n  - \"x\"\n").unwrap().unwrap();
        let Kind::Map(entries) = &doc.kind else {
            panic!("not a map")
        };
        assert_eq!(entries[0].0.pos, Pos { line: 1, col: 1 });
        assert_eq!(entries[0].1.pos, Pos { line: 1, col: 4 });
        let Kind::Seq(items) = &entries[1].1.kind else {
            panic!("not a seq")
        };
        assert_eq!(items[0].pos, Pos { line: 3, col: 5 });
        assert_eq!(items[0].value_offset, 1);
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1);
        assert!(!err.message.is_empty());
    }

    #[test]
    fn empty_text_has_no_document() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
    }

    #[test]
    fn deep_nesting_and_alias_bombs_are_refused_not_a_crash() {
        let deep = "- ".repeat(100_000) + "x\n";
        let err = parse(&deep).unwrap_err();
        assert!(err.message.contains("nested deeper"), "{}", err.message);
        let flow = "[".repeat(10_000);
        assert!(parse(&flow).is_err());
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (i, name) in ["b", "c", "d", "e", "f", "g"].iter().enumerate() {
            let prev = ["a", "b", "c", "d", "e", "f"][i];
            bomb.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let err = parse(&bomb).unwrap_err();
        assert!(err.message.contains("aliases"), "{}", err.message);
        assert!(
            parse("a: &x [1, 2]\nb: *x\n").is_ok(),
            "a few aliases are fine"
        );
    }

    #[test]
    fn a_second_document_is_refused() {
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.pos.line, 2);
    }
}
