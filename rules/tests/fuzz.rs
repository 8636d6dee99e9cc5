//! Property tests ("fuzzing" on stable, issue 13 item 9) for the two parts of this crate that
//! read text nobody has checked: the rule loader, which reads rule files (written by hand, by
//! generators and by pull requests that `auditgate rules check` runs on in CI), and the path
//! normaliser, which reads every request path a client sends.
//!
//! Every test here is bounded in time: the case counts below keep each test to a few seconds in
//! a debug build, and shrinking stops after 30 s. `PROPTEST_CASES` (and
//! `PROPTEST_MAX_SHRINK_TIME`) override them, for a longer run:
//!
//! ```text
//! PROPTEST_CASES=20000 cargo test -p auditgate-rules --test fuzz --release
//! ```
//!
//! The templates' side (records made from arbitrary bodies, and whether the writer can read
//! them back) is in `queue/tests/record_round_trip.rs`: it needs the queue's producer and
//! consumer formats.

use std::path::Path;
use std::process::Command;

use auditgate_rules::{Call, RuleSet, RulesError, normalize_path};
use proptest::prelude::*;

/// A configuration of `cases` cases, unless `PROPTEST_CASES` says otherwise.
///
/// `ProptestConfig { cases: n, ..ProptestConfig::default() }` would ignore `PROPTEST_CASES`:
/// the default reads the variable, but an explicit field wins over it. So the variable is
/// looked at here, and only when it is unset does the per-test count apply.
fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let set = |name: &str| std::env::var_os(name).is_some();
    ProptestConfig {
        cases: if set("PROPTEST_CASES") {
            base.cases
        } else {
            cases
        },
        // A failing case of a recursive strategy can take long to shrink; 30 s is enough to
        // get a readable one without a run that seems to hang.
        max_shrink_time: if set("PROPTEST_MAX_SHRINK_TIME") {
            base.max_shrink_time
        } else {
            30_000
        },
        ..base
    }
}

// ---------------------------------------------------------------------------------------------
// The rule loader
// ---------------------------------------------------------------------------------------------

/// File names the loader is given: its messages must name the file exactly as it was named.
const FILE_NAMES: &[&str] = &[
    "rules.yaml",
    "rules/media library.yml",
    "ünï/cødé 🦀.yaml",
    "odd\\name:1:2.yaml",
];

/// The three ways of loading text: plain (`RuleSet::from_yaml`), with a key (so `| hmac`
/// compiles without a warning), and `rules check` (warnings become problems).
fn load_all_ways(name: &str, text: &str) -> Vec<Result<RuleSet, RulesError>> {
    vec![
        RuleSet::from_yaml(name, text),
        RuleSet::loader().hmac_key("fuzz-key").from_yaml(name, text),
        RuleSet::loader().check_only().from_yaml(name, text),
    ]
}

/// The property of every load: it returns (a panic fails the test), and what it reports is
/// placed: every problem and every warning names the file it was given and a 1-based line and
/// column, and prints as `FILE:LINE:COL: message`. That is what `rules check` prints and what
/// editors and CI annotations parse; a problem without a place cannot be found in a large
/// rule directory.
fn check_load(name: &str, text: &str) -> Result<(), TestCaseError> {
    for result in load_all_ways(name, text) {
        match result {
            Ok(set) => {
                for warning in set.warnings() {
                    check_diagnostic(name, warning)?;
                }
                exercise(&set)?;
            }
            Err(err) => {
                // Text has no file to fail to read: the only error is a list of problems.
                prop_assert!(
                    matches!(err, RulesError::Invalid(_)),
                    "from_yaml failed without diagnostics: {}",
                    clip(&format!("{err:?}"))
                );
                let diags = err.diagnostics();
                prop_assert!(
                    !diags.is_empty(),
                    "an invalid rule set with no problem listed"
                );
                for d in diags {
                    check_diagnostic(name, d)?;
                }
                let shown = err.to_string();
                prop_assert!(
                    shown.starts_with(&format!("{name}:")),
                    "the error does not start with the file name: {}",
                    clip(&shown)
                );
            }
        }
    }
    Ok(())
}

fn check_diagnostic(name: &str, d: &auditgate_rules::Diagnostic) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        d.file.as_path(),
        Path::new(name),
        "diagnostic names another file"
    );
    prop_assert!(
        d.line >= 1 && d.col >= 1,
        "diagnostic at {}:{} (lines and columns count from 1): {}",
        d.line,
        d.col,
        clip(&d.message)
    );
    prop_assert!(!d.message.is_empty(), "a diagnostic with no message");
    let shown = d.to_string();
    let place = format!("{name}:{}:{}: ", d.line, d.col);
    prop_assert!(
        shown.starts_with(&place),
        "{} does not start with {place:?}",
        clip(&shown)
    );
    Ok(())
}

/// Uses a set that loaded, as the proxy would: matching and records must not panic either,
/// whatever odd rule the loader accepted (a `{*rest}` at the start, a template of only
/// literal text, `when` on a missing body...).
fn exercise(set: &RuleSet) -> Result<(), TestCaseError> {
    let _ = (set.summary(), set.reads_jwt());
    let methods = [
        http::Method::POST,
        http::Method::PUT,
        http::Method::PATCH,
        http::Method::DELETE,
        http::Method::GET,
    ];
    let paths = [
        "/",
        "/x",
        "/v1/files/abc",
        "/v1/files/abc/details?q=1&dry",
        "/a/b/c/d/e",
        "/%2e%2e/x/%41",
    ];
    let mut headers = http::HeaderMap::new();
    headers.insert("user-agent", http::HeaderValue::from_static("fuzz"));
    headers.insert("x-user-id", http::HeaderValue::from_static("u_1"));
    // `{"sub":"u_2"}` as an unsigned JWT: `jwt/` sources read it.
    headers.insert(
        "authorization",
        http::HeaderValue::from_static("Bearer e30.eyJzdWIiOiJ1XzIifQ.x"),
    );
    let body = br#"{"name":"n","x":{"y":[1,2]},"ids":["a","b"],"v":"s"}"#;
    for method in &methods {
        for raw in paths {
            let Some(found) = set.matches(method, raw) else {
                continue;
            };
            let _ = (
                found.route(),
                found.operation(),
                found.needs_request_body(),
                found.needs_response_body(),
                found.on_queue_failure(),
                found.record_headers(&headers),
            );
            let uri: http::Uri = match raw.parse() {
                Ok(uri) => uri,
                Err(e) => return Err(TestCaseError::fail(format!("test bug: {raw}: {e}"))),
            };
            let mut call = Call::new(method, &uri, &headers);
            call.request_body = Some(body);
            call.response_body = Some(body);
            call.status = Some(200);
            let _ = found.record(&call);
        }
    }
    Ok(())
}

/// The first 300 characters of a message, so a failure with a 100 KB scalar stays readable.
fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(300).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Pieces of YAML syntax and of rule files, for text that is almost YAML: indicators,
/// directives, anchors and tags, quotes, odd line breaks, and whole lines of a rule file.
///
/// (Anchors and aliases appear one at a time: a chain of anchors each aliasing the previous
/// one several times is a "billion laughs" document, which the loader expands in memory; it is
/// left out of the random text so a run cannot eat the machine's memory.)
const YAML_TOKENS: &[&str] = &[
    "version: 1\n",
    "service: s\n",
    "rules:\n",
    "defaults:\n",
    "  - ",
    "    ",
    "operation: a.b",
    "path: /x/{id}",
    "path: /v1/{*rest}/{id}",
    "method: POST",
    "method: [GET, delete]",
    "when: {body: /x}",
    "details: {a: '{body}', b: \"{path.id | lower}\"}",
    "resources: [{type: t, id: '{path.id}'}]",
    "actor: [\"{jwt/sub}\", \"{header.X-User-Id}\"]",
    "description: \"{body/x} {{lit}}\"",
    "\n",
    " ",
    "\t",
    ":",
    ": ",
    "- ",
    "-",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "*b",
    "!!str ",
    "!!map ",
    "!tag ",
    "'",
    "\"",
    "|",
    "|-\n",
    ">",
    "#",
    "---\n",
    "...\n",
    "? ",
    "%YAML 1.2\n",
    "%TAG ! tag:x,2000:\n",
    "<<: *a\n",
    "\0",
    "\u{FEFF}",
    "\r\n",
    "\r",
    "\u{85}",
    "\u{2028}",
    "\\",
    "\\u",
    "\\x",
    "é",
    "🦀",
    "~",
    "null",
    "1",
    "{body/x}",
    "{",
];

/// Arbitrary text, four ways: any characters (NUL, controls, surrogate-free unicode), YAML
/// tokens strung together, arbitrary bytes read lossily, and one huge line.
fn arbitrary_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(any::<char>(), 0..200)
            .prop_map(|c| c.into_iter().collect::<String>()),
        4 => prop::collection::vec(prop::sample::select(YAML_TOKENS), 0..120)
            .prop_map(|t| t.concat()),
        2 => prop::collection::vec(any::<u8>(), 0..400)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => (0usize..200_000, prop::sample::select(vec!["x", "{", "é", "- ", ": "]))
            .prop_map(|(n, s)| s.repeat(n / s.len().max(1))),
    ]
}

/// A YAML scalar and how it is written.
#[derive(Debug, Clone)]
enum Scalar {
    /// As it is: may not even be a valid plain scalar (a `:` or `#` inside, a newline).
    Plain(String),
    /// `"..."`, JSON-escaped (which YAML reads as the same string).
    Double(String),
    /// `'...'`, quotes doubled.
    Single(String),
}

impl Scalar {
    fn render(&self, out: &mut String) {
        match self {
            Scalar::Plain(s) => out.push_str(s),
            Scalar::Double(s) => out.push_str(&serde_json::to_string(s).unwrap_or_default()),
            Scalar::Single(s) => {
                out.push('\'');
                out.push_str(&s.replace('\'', "''"));
                out.push('\'');
            }
        }
    }
}

/// A YAML document as a tree, rendered in block or flow style (see [`render`]).
#[derive(Debug, Clone)]
enum Yaml {
    Scalar(Scalar),
    Seq(Vec<Yaml>),
    Map(Vec<(Scalar, Yaml)>),
}

/// The keys the loader knows (top level, `defaults`, rules, `when`, resources), two near
/// misses that exercise "did you mean", and keys that mean something to YAML itself.
const KEYS: &[&str] = &[
    "version",
    "service",
    "defaults",
    "rules",
    "id",
    "operation",
    "method",
    "methods",
    "path",
    "when",
    "resources",
    "details",
    "description",
    "actor",
    "type",
    "body",
    "query",
    "header",
    "request_id",
    "unmatched",
    "on_queue_failure",
    "methd",
    "opration",
    "<<",
    "~",
    "",
];

/// Values that mean something to the loader, right or wrong: versions, methods, policies,
/// header names, path patterns (good and each kind of bad), templates (each source, filters,
/// each kind of bad), YAML nulls, and characters a message must survive.
const VALUES: &[&str] = &[
    "1",
    "2",
    "1.0",
    "0x1",
    "~",
    "null",
    "",
    "true",
    "svc",
    "media-library",
    "asset.rename",
    "a.b",
    "has space",
    "POST",
    "GET",
    "patch",
    "PURGE",
    "PATHC",
    "record",
    "ignore",
    "recrod",
    "open",
    "closed",
    "X-Request-Id",
    "bad header",
    "/",
    "/x",
    "/v1/files/{fileId}",
    "/v1/files/{fileId}/details",
    "/v1/{*rest}",
    "/v1/{*rest}/secrets/{key}",
    "/{a}/{a}",
    "/{*a}/{*b}",
    "/{1x}",
    "/v1/file-{id}",
    "/v1/{id",
    "v1/no-slash",
    "/x/",
    "//x",
    "/a/../b",
    "/x?y=1",
    "/é",
    "/e x",
    "/%7Eme",
    "{path.fileId}",
    "{path.rest}",
    "{path.nope}",
    "{path.}",
    "{body}",
    "{body/name}",
    "{body/a~1b/~0c}",
    "{body/a~2}",
    "{body.name}",
    "{bdy/x}",
    "{response}",
    "{response/x/0}",
    "{jwt/sub}",
    "{ jwt/sub | lower }",
    "{header.X-User-Id}",
    "{header.bad name}",
    "{query.q}",
    "{query.a=b}",
    "{body/v | hmac}",
    "{body/v | lower | hmac}",
    "{body/v | upper}",
    "{body/v |}",
    "Renamed {path.fileId} to {body/name}",
    "{{literal}} {body/n}",
    "{",
    "}",
    "{}",
    "a}b",
    "{{",
    "/x",
    "\u{0}",
    "\t",
    "é",
    "🦀",
    "\u{FFFD}",
    "line\nbreak",
    "&a",
    "*a",
    "# comment",
    "key: value",
];

// The composite strategies are boxed: their nested types otherwise make the debug build's
// frames so large that generating one rule file overflows a test thread's 2 MiB stack.

/// A string value: mostly a meaningful one, sometimes any characters or a huge one.
fn text_value() -> BoxedStrategy<String> {
    prop_oneof![
        8 => prop::sample::select(VALUES).prop_map(str::to_owned),
        2 => prop::collection::vec(any::<char>(), 0..16)
            .prop_map(|c| c.into_iter().collect::<String>()),
        // Templates made of pieces: placeholders, literal braces, filters, sources.
        2 => prop::collection::vec(
            prop::sample::select(vec![
                "{", "}", "{{", "}}", "body", "/", "path.", "fileId", "|", " hmac", "lower", "x",
                "~", "~1", "jwt/sub", "response", "query.", "header.", " ", "é",
            ]),
            0..12,
        )
        .prop_map(|p| p.concat()),
        1 => (0usize..100_000, prop::sample::select(vec!["x", "{", "é", "/", "{body}"]))
            .prop_map(|(n, s)| s.repeat(n / s.len())),
    ]
    .boxed()
}

fn scalar() -> BoxedStrategy<Scalar> {
    (text_value(), 0u8..4)
        .prop_map(|(text, style)| match style {
            // Plain twice as often: most rule files are written so.
            0 | 1 => Scalar::Plain(text),
            2 => Scalar::Double(text),
            _ => Scalar::Single(text),
        })
        .boxed()
}

fn key() -> BoxedStrategy<Scalar> {
    prop_oneof![
        8 => prop::sample::select(KEYS).prop_map(|k| Scalar::Plain(k.to_owned())),
        1 => scalar(),
    ]
    .boxed()
}

/// Any tree: scalars, lists and mappings nested up to 6 deep, with known and unknown keys.
fn tree() -> BoxedStrategy<Yaml> {
    scalar()
        .prop_map(Yaml::Scalar)
        .prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Yaml::Seq),
                prop::collection::vec((key(), inner), 0..5).prop_map(Yaml::Map),
            ]
        })
        .boxed()
}

/// A `key: value` entry where `value` is usually of the expected shape (`good`), sometimes any
/// tree, and often absent: so that most generated files get past the first checks and into
/// the rules, while each check still sees the wrong shapes too.
fn field(
    name: &'static str,
    good: impl Strategy<Value = Yaml> + 'static,
) -> BoxedStrategy<Option<(Scalar, Yaml)>> {
    // The key as the loader expects it, now and then quoted (the same key to YAML) or another.
    let named = move || {
        prop_oneof![
            12 => Just(Scalar::Plain(name.to_owned())),
            1 => Just(Scalar::Double(name.to_owned())),
            1 => key(),
        ]
    };
    prop_oneof![
        3 => Just(None),
        6 => (named(), good).prop_map(Some),
        1 => (named(), tree()).prop_map(Some),
    ]
    .boxed()
}

fn text_node() -> BoxedStrategy<Yaml> {
    scalar().prop_map(Yaml::Scalar).boxed()
}

/// A scalar or a short list of scalars: `method`, `methods`, `actor`.
fn one_or_list() -> BoxedStrategy<Yaml> {
    prop_oneof![
        text_node(),
        prop::collection::vec(text_node(), 0..4).prop_map(Yaml::Seq),
    ]
    .boxed()
}

/// `{ key: scalar, ... }` with keys from `keys`: `when`, a resource, `details`.
fn small_map(keys: &'static [&'static str]) -> BoxedStrategy<Yaml> {
    prop::collection::vec(
        (
            prop_oneof![
                6 => prop::sample::select(keys).prop_map(|k| Scalar::Plain(k.to_owned())),
                1 => key(),
            ],
            prop_oneof![6 => text_node(), 1 => tree()],
        ),
        0..5,
    )
    .prop_map(Yaml::Map)
    .boxed()
}

/// A mapping of the entries that are present, in a random order.
fn mapping(entries: Vec<Option<(Scalar, Yaml)>>, order: Vec<usize>) -> Yaml {
    let mut entries: Vec<(Scalar, Yaml)> = entries.into_iter().flatten().collect();
    let len = entries.len();
    for (i, j) in order.into_iter().enumerate() {
        if len > 1 {
            entries.swap(i % len, j % len);
        }
    }
    Yaml::Map(entries)
}

fn rule() -> BoxedStrategy<Yaml> {
    (
        (
            field("id", text_node()),
            field("operation", text_node()),
            field("method", one_or_list()),
            field("path", text_node()),
            field("when", small_map(&["body", "query", "header"])),
            field(
                "resources",
                prop::collection::vec(small_map(&["type", "id", "path"]), 0..3).prop_map(Yaml::Seq),
            ),
        ),
        (
            field(
                "details",
                small_map(&["name", "new_name", "fields", "a", "b", "name"]),
            ),
            field("description", text_node()),
            field("actor", one_or_list()),
            field("on_queue_failure", text_node()),
            prop::collection::vec((key(), tree()), 0..2),
            prop::collection::vec(any::<usize>(), 0..4),
        ),
    )
        .prop_map(
            |(
                (id, op, method, path, when, resources),
                (details, desc, actor, oqf, extra, order),
            )| {
                let mut entries = vec![
                    id, op, method, path, when, resources, details, desc, actor, oqf,
                ];
                entries.extend(extra.into_iter().map(Some));
                mapping(entries, order)
            },
        )
        .boxed()
}

fn defaults() -> BoxedStrategy<Yaml> {
    (
        field("methods", one_or_list()),
        field("actor", one_or_list()),
        field("request_id", text_node()),
        field("unmatched", text_node()),
        field("on_queue_failure", text_node()),
        prop::collection::vec(any::<usize>(), 0..3),
    )
        .prop_map(|(m, a, r, u, o, order)| mapping(vec![m, a, r, u, o], order))
        .boxed()
}

/// A rule file: `version`, `service`, `defaults` and `rules` of the expected shapes most of
/// the time, each value sometimes replaced by anything, plus stray keys.
fn rule_file() -> BoxedStrategy<Yaml> {
    (
        field("version", text_node()),
        field("service", text_node()),
        field("defaults", defaults()),
        field(
            "rules",
            prop::collection::vec(rule(), 0..5).prop_map(Yaml::Seq),
        ),
        prop::collection::vec((key(), tree()), 0..2),
        prop::collection::vec(any::<usize>(), 0..3),
    )
        .prop_map(|(v, s, d, r, extra, order)| {
            let mut entries = vec![v, s, d, r];
            entries.extend(extra.into_iter().map(Some));
            mapping(entries, order)
        })
        .boxed()
}

/// Writes `doc` as YAML: block style down to depth `flow_from`, flow style (`{a: [b]}`) from
/// there on; `flow_from == 0` is a document all in flow style, which is also how JSON reads.
fn render(doc: &Yaml, flow_from: usize) -> String {
    let mut out = String::new();
    if flow_from == 0 {
        flow(doc, &mut out);
        out.push('\n');
    } else {
        block(doc, 0, 0, flow_from, &mut out);
    }
    out
}

fn flow(doc: &Yaml, out: &mut String) {
    match doc {
        Yaml::Scalar(s) => s.render(out),
        Yaml::Seq(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flow(item, out);
            }
            out.push(']');
        }
        Yaml::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                k.render(out);
                out.push_str(": ");
                flow(v, out);
            }
            out.push('}');
        }
    }
}

fn block(doc: &Yaml, indent: usize, depth: usize, flow_from: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match doc {
        Yaml::Seq(items) if !items.is_empty() && depth < flow_from => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                block_value(item, indent + 2, depth + 1, flow_from, out);
            }
        }
        Yaml::Map(entries) if !entries.is_empty() && depth < flow_from => {
            for (k, v) in entries {
                out.push_str(&pad);
                k.render(out);
                out.push(':');
                block_value(v, indent + 2, depth + 1, flow_from, out);
            }
        }
        // A scalar, an empty list or mapping, or anything below `flow_from`: on one line.
        _ => {
            out.push_str(&pad);
            flow(doc, out);
            out.push('\n');
        }
    }
}

/// The value after `key:` or `-`: on the same line when it fits there, else indented below.
fn block_value(doc: &Yaml, indent: usize, depth: usize, flow_from: usize, out: &mut String) {
    let nested = match doc {
        Yaml::Seq(items) => !items.is_empty() && depth < flow_from,
        Yaml::Map(entries) => !entries.is_empty() && depth < flow_from,
        Yaml::Scalar(_) => false,
    };
    if nested {
        out.push('\n');
        block(doc, indent, depth, flow_from, out);
    } else {
        out.push(' ');
        flow(doc, out);
        out.push('\n');
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary text never panics the loader, and every problem it reports names the file
    /// and a line and column. Rule files are read by `rules check` in CI on whatever a pull
    /// request holds, and by the proxy on reload: a panic there takes the check (or the
    /// reload) down with a backtrace instead of a message.
    #[test]
    fn arbitrary_text_never_panics_the_loader(
        name in prop::sample::select(FILE_NAMES),
        text in arbitrary_text(),
    ) {
        check_load(name, &text)?;
    }
}

proptest! {
    #![proptest_config(config(192))]

    /// Generated YAML documents (any nesting of lists, mappings and scalars, known and unknown
    /// keys, values that are huge, NUL, unicode, templates and path patterns) never panic the
    /// loader, and every problem names the file and its place. Random text rarely gets past
    /// YAML syntax; these documents reach the rule checks.
    #[test]
    fn generated_yaml_never_panics_the_loader(
        name in prop::sample::select(FILE_NAMES),
        doc in tree(),
        flow_from in 0usize..5,
    ) {
        check_load(name, &render(&doc, flow_from))?;
    }

    /// Rule files of the expected shape with random values (and, now and then, a value of the
    /// wrong shape or a stray key) never panic the loader; problems are placed. This reaches
    /// every check in `load.rs`: methods, path patterns, templates and their `path.` names,
    /// `when`, resources, details, duplicate ids and shadowed rules. When a file loads, the set
    /// is used (matched and recorded) too.
    #[test]
    fn rule_files_with_random_values_never_panic_the_loader(
        name in prop::sample::select(FILE_NAMES),
        doc in rule_file(),
        flow_from in prop_oneof![1 => Just(0usize), 4 => 1usize..8],
    ) {
        check_load(name, &render(&doc, flow_from))?;
    }

    /// Every line of a load error starts with `FILE:LINE:COL:`. The CLI prints the error as it
    /// is, one problem per line, and editors and CI annotations read each line by that prefix:
    /// a message that quotes a key or value holding a line break (`"a\nb": 1` is a valid key)
    /// splits its problem over lines that no longer name a place, and a value holding terminal
    /// escapes is printed raw.
    #[test]
    fn every_line_of_a_load_error_names_the_file(
        name in prop::sample::select(FILE_NAMES),
        doc in rule_file(),
        flow_from in 0usize..6,
    ) {
        let text = render(&doc, flow_from);
        if let Err(err) = RuleSet::from_yaml(name, &text) {
            let shown = err.to_string();
            for line in shown.lines() {
                let placed = line
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .and_then(|rest| rest.split_once(':'))
                    .is_some_and(|(l, rest)| {
                        l.parse::<u32>().is_ok()
                            && rest.split_once(':').is_some_and(|(c, _)| c.parse::<u32>().is_ok())
                    });
                prop_assert!(
                    placed,
                    "a line of the error does not start with {name}:LINE:COL: {:?}",
                    clip(line)
                );
            }
        }
    }
}

/// The environment variable that makes [`deeply_nested_yaml_is_refused_not_a_crash`] do the
/// loading itself rather than watch a copy of this test binary do it.
const DEEP_CHILD: &str = "AUDITGATE_FUZZ_DEEP_YAML_CHILD";

/// Deeply nested YAML is refused (or loaded) with a message, never a crash.
///
/// yaml-rust2 limits flow nesting (`[[[...`) to 255 levels, but block nesting (`- - - - x`,
/// two characters a level) has no limit, and its loader recurses once per level: a rule file
/// of one long line can overflow the stack. A stack overflow is not a panic: it aborts the
/// whole process (the proxy on reload, `rules check`), and it would abort this test binary
/// with every other test in it. So this test runs the loads in a copy of itself (the same
/// binary, this test only, with [`DEEP_CHILD`] set) and checks that the copy finished; the
/// loads run on a thread with 2 MiB of stack, the size of test threads and of tokio's workers,
/// where a reload runs.
#[test]
fn deeply_nested_yaml_is_refused_not_a_crash() {
    if std::env::var_os(DEEP_CHILD).is_some() {
        let loader = std::thread::Builder::new()
            .name("deep-yaml".to_owned())
            .stack_size(2 << 20)
            .spawn(load_deep_documents)
            .expect("a thread for the loads");
        let result = loader.join();
        assert!(result.is_ok(), "loading deep documents panicked");
        eprintln!("deep yaml: all loaded");
        return;
    }
    let exe = std::env::current_exe().expect("the path of this test binary");
    let out = Command::new(exe)
        .args([
            "deeply_nested_yaml_is_refused_not_a_crash",
            "--exact",
            "--nocapture",
        ])
        .env(DEEP_CHILD, "1")
        .output()
        .expect("run a copy of this test binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    };
    assert!(
        out.status.success() && stderr.contains("deep yaml: all loaded"),
        "loading deeply nested YAML crashed the process ({}); the last it said:\n{tail}",
        out.status
    );
}

/// The loads of [`deeply_nested_yaml_is_refused_not_a_crash`], each announced on stderr first
/// so a crash shows which one it was.
fn load_deep_documents() {
    let mut docs: Vec<(String, String)> = Vec::new();
    for depth in [100usize, 254, 255, 256, 1_000, 100_000] {
        docs.push((
            format!("flow lists {depth} deep, closed"),
            format!("{}1{}", "[".repeat(depth), "]".repeat(depth)),
        ));
        docs.push((
            format!("flow mappings {depth} deep, unclosed"),
            "{a: ".repeat(depth),
        ));
    }
    for depth in [100usize, 1_000, 10_000, 100_000] {
        docs.push((
            format!("block lists {depth} deep (`- - - x`)"),
            format!("{}x\n", "- ".repeat(depth)),
        ));
        docs.push((
            format!("complex keys {depth} deep (`? ? ? x`)"),
            format!("{}x\n", "? ".repeat(depth)),
        ));
        docs.push((
            format!("block lists {depth} deep in a rule's details"),
            format!(
                "version: 1\nservice: s\nrules:\n  - operation: a.b\n    path: /x\n    \
                 details:\n      {}x\n",
                "- ".repeat(depth)
            ),
        ));
    }
    for (what, text) in &docs {
        eprintln!("deep yaml: loading {what} ({} bytes)", text.len());
        if let Err(err) = RuleSet::from_yaml("deep.yaml", text) {
            for d in err.diagnostics() {
                assert_eq!(d.file.as_path(), Path::new("deep.yaml"), "{what}: {d}");
                assert!(d.line >= 1 && d.col >= 1, "{what}: {d}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The path normaliser
// ---------------------------------------------------------------------------------------------

/// The pieces a path that tries to look like another is made of: separators, dot segments
/// plain and escaped (`%2e`, `.%2e`), escaped separators (`%2f`, `%5C`), escapes of `%`
/// itself, broken escapes (`%`, `%2`, `%zz`), NUL, query and fragment marks, non-ASCII.
const PATH_TOKENS: &[&str] = &[
    "/", "/", "/", "//", ".", "..", "/./", "/../", "%", "%2e", "%2E", "%2e%2e", ".%2e", "%2e.",
    "%2f", "%2F", "%5C", "%5c", "%25", "%252e", "%00", "%zz", "%2", "%%", "%7e", "%41", "%61",
    "%66", "%45", "%C3%A9", "%c3", "%3F", "%23", "a", "b", "Z", "0", "e", "f", "E", "F", "~", "-",
    "_", "?", "#", "\0", "é", "\u{FFFD}", "\\", ";", " ", "+", "files",
];

/// Arbitrary paths: pieces from [`PATH_TOKENS`], any characters, arbitrary bytes (read
/// lossily, as a proxy reading a raw request line might, and as Latin-1), and strings dense in
/// `/ . % 2 e E f F` and hex digits, where escapes and dot segments form by themselves.
fn any_path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(prop::sample::select(PATH_TOKENS), 0..24)
            .prop_map(|t| t.concat()),
        2 => prop::collection::vec(any::<char>(), 0..40)
            .prop_map(|c| c.into_iter().collect::<String>()),
        1 => prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| b.into_iter().map(char::from).collect::<String>()),
        3 => prop::collection::vec(prop::sample::select(b"/.%2eEfF05aA6?".to_vec()), 0..40)
            .prop_map(|b| b.into_iter().map(char::from).collect::<String>()),
    ]
}

/// A set that records every mutating call (`unmatched: record`), so `matches` answers for any
/// POST: its normalised path can be compared with `normalize_path`.
fn record_everything() -> RuleSet {
    let text = "version: 1\nservice: s\ndefaults: { unmatched: record }\nrules:\n  \
                - { operation: f.read, method: POST, path: \"/v1/files/{id}\" }\n  \
                - { operation: f.any, method: POST, path: \"/v1/{*rest}\" }\n";
    match RuleSet::from_yaml("paths.yaml", text) {
        Ok(set) => set,
        Err(e) => panic!("the fixed rule set loads:\n{e}"),
    }
}

/// The shape every normalised path has. Rules are matched on it and records show it, so each
/// of these is a way to reach a rule's endpoint without matching its pattern:
/// an empty segment (`//`), a dot segment (`/./`, `/../`, a trailing `/.` or `/..`), a
/// trailing `/`, a query or fragment left in. It always starts with `/`.
fn check_normal_shape(raw: &str, out: &str) -> Result<(), TestCaseError> {
    prop_assert!(out.starts_with('/'), "{raw:?} → {out:?}: not absolute");
    prop_assert!(!out.contains("//"), "{raw:?} → {out:?}: an empty segment");
    prop_assert!(
        !out.contains("/./")
            && !out.contains("/../")
            && !out.ends_with("/.")
            && !out.ends_with("/.."),
        "{raw:?} → {out:?}: a dot segment"
    );
    prop_assert!(
        out == "/" || !out.ends_with('/'),
        "{raw:?} → {out:?}: a trailing '/'"
    );
    prop_assert!(
        !out.contains(['?', '#']),
        "{raw:?} → {out:?}: a query or fragment"
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(1024))]

    /// `normalize_path` takes any string without panicking (it runs on every request), and
    /// what it returns is a clean absolute path; `RuleSet::matches` matches on exactly that
    /// path (a rule set that normalised differently from the function it documents would
    /// match on something else than records show).
    #[test]
    fn normalised_paths_are_clean_and_absolute(raw in any_path()) {
        let out = normalize_path(&raw);
        check_normal_shape(&raw, &out)?;
        let set = record_everything();
        let found = set.matches(&http::Method::POST, &raw);
        prop_assert!(found.is_some(), "unmatched: record did not answer for POST {raw:?}");
        if let Some(found) = found {
            prop_assert_eq!(found.path(), &*out, "matches normalised {:?} differently", raw);
        }
    }

    /// Normalising a normalised path changes nothing. The proxy normalises, the layer behind
    /// it may normalise again, records store the result and `rules test` is fed paths copied
    /// from records: if a second pass changed the path (say `%2e` that the first pass
    /// assembled from `%2%65` now decodes to `.` and removes a segment), the same request
    /// would match different rules depending on how many times it was normalised. An escape
    /// left in the output is canonical: upper-case hex, and never one of an unreserved
    /// character (which the first pass decodes).
    #[test]
    fn normalising_is_idempotent(raw in any_path()) {
        let once = normalize_path(&raw).into_owned();
        let twice = normalize_path(&once).into_owned();
        prop_assert_eq!(&twice, &once, "normalising {:?} twice", raw);
        let bytes = once.as_bytes();
        for (i, _) in once.match_indices('%') {
            let hex = |b: Option<&u8>| b.is_some_and(u8::is_ascii_hexdigit);
            if hex(bytes.get(i + 1)) && hex(bytes.get(i + 2)) {
                let escape = &once[i..i + 3];
                let value = u8::from_str_radix(&escape[1..], 16).unwrap_or(0);
                let unreserved = value.is_ascii_alphanumeric() || b"-._~".contains(&value);
                prop_assert!(
                    escape == escape.to_ascii_uppercase() && !unreserved,
                    "{raw:?} → {once:?} keeps the non-canonical escape {escape}"
                );
            }
        }
    }
}
