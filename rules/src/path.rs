//! Path normalisation and path patterns.
//!
//! A rule for `/v1/files/{id}` must see `/v1//files/./x/`, `/v1/files/../files/x` and
//! `/v1/%66iles/x` exactly as an upstream would: as `/v1/files/x`. Otherwise a client could
//! change a file without leaving a record, simply by spelling its path differently.

use std::borrow::Cow;

/// Normalises a request path the way an upstream resolves it before routing:
///
/// - anything from `?` or `#` on is dropped (the query is matched separately);
/// - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, and the
///   hex digits of every other escape are upper-cased (`%2f` → `%2F`);
/// - empty segments (`//`) and `.` segments are removed, `..` removes the segment before it
///   (never climbing above the root);
/// - a trailing `/` is dropped; the result always starts with `/`.
///
/// It accepts any input and never panics; already-normal paths are returned borrowed.
///
/// ```
/// use auditgate_rules::normalize_path;
/// assert_eq!(normalize_path("/v1//files/../files/%61bc/"), "/v1/files/abc");
/// assert_eq!(normalize_path("/a/b%2fc"), "/a/b%2Fc");
/// assert_eq!(normalize_path("/../../etc"), "/etc");
/// ```
pub fn normalize_path(raw: &str) -> Cow<'_, str> {
    let path = match raw.find(['?', '#']) {
        Some(end) => &raw[..end],
        None => raw,
    };
    if is_normal(path) {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// True when [`normalize_path`] would return `path` unchanged (the common case, kept cheap).
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    if bytes.len() == 1 {
        return true;
    }
    if bytes.contains(&b'%') || bytes.last() == Some(&b'/') {
        return false;
    }
    // Every segment after a '/' must be non-empty and not `.` or `..`.
    path[1..]
        .split('/')
        .all(|s| !s.is_empty() && s != "." && s != "..")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex_value(bytes[i + 1]), hex_value(bytes[i + 2]))
        {
            let value = hi * 16 + lo;
            out.push_str(&path[copied..i]);
            if is_unreserved(value) {
                out.push(char::from(value));
            } else {
                out.push('%');
                out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
            i += 3;
            copied = i;
            continue;
        }
        if bytes[i] == b'%' {
            // A `%` that starts no escape is a literal percent sign: written as its escape, so
            // that it cannot join what follows into one (`%%41` → `%25A`, not `%A`), and a
            // normalised path normalises to itself.
            out.push_str(&path[copied..i]);
            out.push_str("%25");
            i += 1;
            copied = i;
            continue;
        }
        i += 1;
    }
    out.push_str(&path[copied..]);
    Cow::Owned(out)
}

/// Fully percent-decodes one captured path value for use in a record (`a%20b` → `a b`).
/// Invalid UTF-8 after decoding is replaced rather than refused: a record should still say
/// which resource was touched.
pub(crate) fn decode_param(value: &str) -> Cow<'_, str> {
    if !value.contains('%') {
        return Cow::Borrowed(value);
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex_value(bytes[i + 1]), hex_value(bytes[i + 2]))
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Matches exactly this (normalised) text.
    Static(String),
    /// `{name}`: exactly one segment.
    Param(String),
    /// `{*name}`: one or more segments.
    Rest(String),
}

/// A parsed `path:` pattern such as `/api/repos/{*repo}/secrets/{key}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathPattern {
    pub(crate) segments: Vec<Segment>,
}

/// A problem in a path pattern: the character offset it starts at, and what to say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PatternError {
    pub(crate) offset: usize,
    pub(crate) message: String,
}

impl PathPattern {
    pub(crate) fn parse(text: &str) -> Result<PathPattern, PatternError> {
        let err = |offset: usize, message: String| Err(PatternError { offset, message });
        if !text.starts_with('/') {
            return err(
                0,
                format!("a path pattern starts with '/' (write \"/{text}\")"),
            );
        }
        if let Some(at) = text.find(['?', '#']) {
            return err(
                at,
                "a path pattern has no query or fragment; use `when: { query: NAME }` to require a query parameter"
                    .to_owned(),
            );
        }
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        let mut offset = 1;
        let body = &text[1..];
        let parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        let last = parts.len().saturating_sub(1);
        for (index, part) in parts.iter().enumerate() {
            let here = offset;
            offset += part.chars().count() + 1;
            if part.is_empty() {
                if index == last {
                    return err(
                        here - 1,
                        format!(
                            "trailing '/' in a path pattern: requests are matched without it, write \"{}\"",
                            text.trim_end_matches('/')
                        ),
                    );
                }
                return err(
                    here,
                    format!(
                        "empty segment ('//') in a path pattern: requests are matched with '//' collapsed, write \"{}\"",
                        normalize_path(text)
                    ),
                );
            }
            if *part == "." || *part == ".." {
                return err(
                    here,
                    format!(
                        "'{part}' segment in a path pattern: requests are matched with dot segments resolved, write \"{}\"",
                        normalize_path(text)
                    ),
                );
            }
            if let Some(inner) = part.strip_prefix('{') {
                let Some(inner) = inner.strip_suffix('}') else {
                    return err(
                        here,
                        format!(
                            "a parameter fills a whole segment: write \"{{name}}\" between two '/', not \"{part}\""
                        ),
                    );
                };
                let (rest, name) = match inner.strip_prefix('*') {
                    Some(name) => (true, name),
                    None => (false, inner),
                };
                if !is_identifier(name) {
                    return err(
                        here,
                        format!(
                            "bad parameter name \"{name}\": use letters, digits, '_' and '-', starting with a letter"
                        ),
                    );
                }
                if names.contains(&name) {
                    return err(
                        here,
                        format!("parameter \"{name}\" appears twice in this path"),
                    );
                }
                names.push(name);
                if rest {
                    if segments.iter().any(|s| matches!(s, Segment::Rest(_))) {
                        return err(
                            here,
                            "a path pattern may hold one {*rest} parameter; more would make matching ambiguous"
                                .to_owned(),
                        );
                    }
                    segments.push(Segment::Rest(name.to_owned()));
                } else {
                    segments.push(Segment::Param(name.to_owned()));
                }
                continue;
            }
            if part.contains(['{', '}']) {
                return err(
                    here,
                    format!(
                        "a parameter fills a whole segment: \"{part}\" mixes text and a parameter"
                    ),
                );
            }
            if let Some(bad) = part.chars().find(|c| !is_path_char(*c)) {
                let mut encoded = String::new();
                for c in part.chars() {
                    if is_path_char(c) {
                        encoded.push(c);
                    } else {
                        let mut buf = [0u8; 4];
                        for b in c.encode_utf8(&mut buf).bytes() {
                            encoded.push_str(&format!("%{b:02X}"));
                        }
                    }
                }
                return err(
                    here,
                    format!(
                        "{bad:?} never appears in a request path as it is (clients send it percent-encoded): write \"{encoded}\""
                    ),
                );
            }
            segments.push(Segment::Static(decode_unreserved(part).into_owned()));
        }
        Ok(PathPattern { segments })
    }

    /// The parameter names, in order.
    pub(crate) fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) | Segment::Rest(n) => Some(n.as_str()),
            Segment::Static(_) => None,
        })
    }

    /// The pattern with parameter names erased: two rules with the same shape cannot be told
    /// apart by their path.
    pub(crate) fn shape(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            out.push('/');
            match s {
                Segment::Static(t) => out.push_str(t),
                Segment::Param(_) => out.push_str("{}"),
                Segment::Rest(_) => out.push_str("{*}"),
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }
}

/// What a path segment may hold as it is (RFC 3986 `pchar`, with `%` for escapes).
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%".contains(c)
}

/// A parameter name: a letter or `_`, then letters, digits, `_` and `-` (OpenAPI specs name
/// parameters `{file-id}` too).
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalisation_cases() {
        let cases = [
            ("/", "/"),
            ("", "/"),
            ("//", "/"),
            ("/v1/files/x", "/v1/files/x"),
            ("/v1/files/x/", "/v1/files/x"),
            ("/v1//files///x", "/v1/files/x"),
            ("/v1/./files/./x", "/v1/files/x"),
            ("/v1/files/../files/x", "/v1/files/x"),
            ("/v1//files/../files/x", "/v1/files/x"),
            ("/../../x", "/x"),
            ("/a/b/..", "/a"),
            ("/a/b/.", "/a/b"),
            ("/v1/%66iles/x", "/v1/files/x"),
            ("/v1/%2e%2e/v1/files/x", "/v1/files/x"),
            ("/v1/files/%2E%2e/files/x", "/v1/files/x"),
            ("/a/%7Euser", "/a/~user"),
            ("/a/b%2fc", "/a/b%2Fc"),
            ("/a/b%2Fc", "/a/b%2Fc"),
            // A percent sign that starts no escape is a literal one, written as its escape.
            ("/a/%zz", "/a/%25zz"),
            ("/a/%4", "/a/%254"),
            ("/a/%", "/a/%25"),
            ("/%%41%61", "/%25Aa"),
            ("/%2%65", "/%252e"),
            ("/a/b?x=/../y", "/a/b"),
            ("/a/b#frag", "/a/b"),
            ("relative/path", "/relative/path"),
            ("/ünï/çødé", "/ünï/çødé"),
            ("/a/%C3%A9", "/a/%C3%A9"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input), want, "normalising {input:?}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(normalize_path("/v1/files/x"), Cow::Borrowed(_)));
        assert!(matches!(
            normalize_path("/v1/files/x?y=1"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalize_path("/v1/files/x/"), Cow::Owned(_)));
    }

    #[test]
    fn params_decode_fully() {
        assert_eq!(decode_param("my%20file.png"), "my file.png");
        assert_eq!(decode_param("a%2Fb"), "a/b");
        assert_eq!(decode_param("bad%ff"), "bad\u{fffd}");
        assert_eq!(decode_param("trail%2"), "trail%2");
    }

    #[test]
    fn patterns_parse() {
        let p = PathPattern::parse("/api/repos/{*repo}/secrets/{key}").unwrap();
        assert_eq!(
            p.segments,
            vec![
                Segment::Static("api".into()),
                Segment::Static("repos".into()),
                Segment::Rest("repo".into()),
                Segment::Static("secrets".into()),
                Segment::Param("key".into()),
            ]
        );
        assert_eq!(p.shape(), "/api/repos/{*}/secrets/{}");
        assert_eq!(PathPattern::parse("/").unwrap().segments, vec![]);
        assert_eq!(
            PathPattern::parse("/%7Eme").unwrap().segments,
            vec![Segment::Static("~me".into())]
        );
    }

    #[test]
    fn pattern_errors_point_at_the_segment() {
        let e = PathPattern::parse("/v1/files/{id").unwrap_err();
        assert_eq!(e.offset, 10);
        assert!(e.message.contains("whole segment"), "{}", e.message);
        let e = PathPattern::parse("/v1/file-{id}").unwrap_err();
        assert_eq!(e.offset, 4);
        let e = PathPattern::parse("v1/x").unwrap_err();
        assert_eq!(
            e.message,
            "a path pattern starts with '/' (write \"/v1/x\")"
        );
        let e = PathPattern::parse("/v1/x/").unwrap_err();
        assert_eq!(e.offset, 5);
        assert!(e.message.contains("write \"/v1/x\""), "{}", e.message);
        let e = PathPattern::parse("/v1//x").unwrap_err();
        assert_eq!(e.offset, 4);
        let e = PathPattern::parse("/a/{x}/{x}").unwrap_err();
        assert_eq!(e.message, "parameter \"x\" appears twice in this path");
        let e = PathPattern::parse("/a/{*x}/{*y}").unwrap_err();
        assert_eq!(e.offset, 8);
        let e = PathPattern::parse("/v2/e x").unwrap_err();
        assert_eq!(
            (e.offset, e.message.as_str()),
            (
                4,
                "' ' never appears in a request path as it is (clients send it percent-encoded): write \"e%20x\""
            )
        );
        let e = PathPattern::parse("/café").unwrap_err();
        assert!(e.message.ends_with("write \"caf%C3%A9\""), "{}", e.message);
        assert!(PathPattern::parse("/v2/e%20x/a:b@c").is_ok());
        let e = PathPattern::parse("/a/{1x}").unwrap_err();
        assert!(e.message.starts_with("bad parameter name \"1x\""));
        let e = PathPattern::parse("/a?b=1").unwrap_err();
        assert_eq!(e.offset, 2);
    }

    proptest! {
        #[test]
        fn normalisation_never_panics_and_is_idempotent(raw in ".*") {
            let once = normalize_path(&raw).into_owned();
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.contains("//"));
            prop_assert!(once == "/" || !once.ends_with('/'));
            prop_assert!(!once.split('/').any(|s| s == "." || s == ".."));
            prop_assert_eq!(normalize_path(&once).into_owned(), once.clone());
        }

        #[test]
        fn normalisation_handles_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let raw = String::from_utf8_lossy(&bytes);
            let out = normalize_path(&raw);
            prop_assert!(out.starts_with('/'));
            let _ = decode_param(&out);
        }

        #[test]
        fn dot_segments_and_escapes_cannot_hide_a_path(
            prefix in "[a-z]{1,4}",
            noise in prop::sample::select(vec!["", "/.", "//", "/x/..", "/%2e", "/%2E/", "/./"]),
            escaped in any::<bool>(),
        ) {
            let files = if escaped { "%66iles" } else { "files" };
            let raw = format!("/{prefix}{noise}/{files}/abc/");
            prop_assert_eq!(normalize_path(&raw), format!("/{prefix}/files/abc"));
        }
    }
}
