//! Reading a captured body the way upstreams read it, for `body/` and `response/` templates.
//!
//! Frameworks are lenient, and an audit that is stricter than the upstream it watches misses
//! what the upstream applied. So a body is read as JSON after skipping a UTF-8 byte-order mark
//! (as ASP.NET and Go's decoders do), with lone UTF-16 surrogate escapes taken as U+FFFD (as
//! Python and JavaScript accept them), and numbers of any size (`1e400`) kept rather than refused; an
//! `application/x-www-form-urlencoded` or `multipart/form-data` body is read as an object of its
//! fields (a file part as its file name, never its contents); and a body cut
//! at the capture limit yields the members that were complete before the cut (a streaming
//! parse reaches those), while the record says the body was truncated.
//!
//! ```
//! use auditgate_rules::body::{read_body, BodyKind};
//! let value = read_body(b"\xEF\xBB\xBF{\"name\":\"a\"}", BodyKind::Json, false).unwrap();
//! assert_eq!(value["name"], "a");
//! let cut = read_body(br#"{"fileIds":["f1","f2","f3"#, BodyKind::Json, true).unwrap();
//! assert_eq!(cut["fileIds"], serde_json::json!(["f1", "f2"]));
//! let form = read_body(b"name=tree+1.png&tag=a&tag=b", BodyKind::Form, false).unwrap();
//! assert_eq!(form["name"], "tree 1.png");
//! assert_eq!(form["tag"], serde_json::json!(["a", "b"]));
//! ```

use serde_json::{Map, Value};

use crate::path::decode_param;

/// How deep a value a template yields may nest. A record puts such a value three levels
/// below its top (`details.NAME`), and the writer reads records with `serde_json`'s limit of
/// 128 levels: a deeper subtree is replaced, here and not at the writer, by a marker string.
pub const MAX_VALUE_DEPTH: usize = 64;

/// What replaces a subtree nested deeper than [`MAX_VALUE_DEPTH`].
pub const TOO_DEEP: &str = "…[nested too deep]";

/// How a body is encoded, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// JSON, or anything that is not a form (upstreams often ignore the type).
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `multipart/form-data` (an upload, as ImageKit's upload API takes it).
    Multipart,
}

impl BodyKind {
    /// The kind a `Content-Type` value names.
    pub fn of(content_type: Option<&http::HeaderValue>) -> BodyKind {
        let media_type = content_type
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .unwrap_or("");
        if media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            BodyKind::Form
        } else if media_type.eq_ignore_ascii_case("multipart/form-data") {
            BodyKind::Multipart
        } else {
            BodyKind::Json
        }
    }
}

/// The value of a captured body; `cut` says the bytes are only its start. `None` when the
/// bytes hold no value an upstream would read.
pub fn read_body(bytes: &[u8], kind: BodyKind, cut: bool) -> Option<Value> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match kind {
        BodyKind::Form => Some(form_object(&String::from_utf8_lossy(bytes))),
        // The boundary is the `Content-Type`'s: see [`read_multipart`].
        BodyKind::Multipart => None,
        BodyKind::Json => {
            if let Ok(value) = serde_json::from_slice(bytes) {
                return Some(value);
            }
            let repaired = repair_surrogates(bytes);
            let bytes = repaired.as_deref().unwrap_or(bytes);
            if cut {
                serde_json::from_slice(&complete_prefix(bytes)?).ok()
            } else if repaired.is_some() {
                serde_json::from_slice(bytes).ok()
            } else {
                None
            }
        }
    }
}

/// A form body's fields as an object: a field named more than once becomes an array of its
/// values, in order.
fn form_object(text: &str) -> Value {
    let mut object = Map::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| decode_param(&s.replace('+', " ")).into_owned();
        let (name, value) = (decode(name), Value::String(decode(value)));
        push_field(&mut object, name, value);
    }
    Value::Object(object)
}

/// Adds a form field: a name given more than once becomes an array of its values, in order.
fn push_field(object: &mut Map<String, Value>, name: String, value: Value) {
    match object.get_mut(&name) {
        Some(Value::Array(values)) => values.push(value),
        Some(first) => {
            let first = first.take();
            object.insert(name, Value::Array(vec![first, value]));
        }
        None => {
            object.insert(name, value);
        }
    }
}

/// A `multipart/form-data` request body's fields, read the way the upstreams behind auditgate
/// (Go's `mime/multipart`, busboy, Werkzeug) read them: the boundary is the one `Content-Type`
/// names, a preamble before the first delimiter is skipped, and a delimiter counts only when
/// `--` or a line end follows it. `None` when the type names no boundary, or when the body is
/// one an upstream would read differently or refuse: then the record says `unreadable`
/// rather than show a value the upstream may not have used.
pub fn read_multipart(
    bytes: &[u8],
    content_type: Option<&http::HeaderValue>,
    cut: bool,
) -> Option<Value> {
    let boundary = multipart_boundary(content_type?)?;
    multipart_object(bytes, &boundary, cut)
}

/// The `boundary` parameter of a `multipart/*` `Content-Type` (RFC 2046: 1 to 70 characters).
fn multipart_boundary(content_type: &http::HeaderValue) -> Option<String> {
    let text = content_type.to_str().ok()?;
    let (_, params) = text.split_once(';')?;
    let boundary = parameters(params)?
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))?
        .1;
    (1..=70).contains(&boundary.len()).then_some(boundary)
}

/// A header's `; key=value` parameters (values a token or a quoted string with `\` escapes).
/// `None` when they do not parse: an unterminated quote, a key without a value.
fn parameters(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = text.trim_start_matches([' ', '\t', ';']);
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim();
        if key.is_empty() || key.contains([' ', '\t', ';', '"']) {
            return None;
        }
        let after = after.trim_start_matches([' ', '\t']);
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find([';', ' ', '\t']).unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        out.push((key.to_owned(), value));
        let after = after.trim_start_matches([' ', '\t']);
        rest = match after.strip_prefix(';') {
            Some(next) => next.trim_start_matches([' ', '\t', ';']),
            None if after.is_empty() => after,
            None => return None,
        };
    }
    Some(out)
}

/// The fields of a body delimited by `--boundary`, as [`form_object`] makes them: a text part
/// is its value, a file part the file's name (its last path component), never its contents.
/// Only parts whose end was captured count: a body cut at the capture limit yields the fields
/// before the cut, as the SDKs send text fields first.
fn multipart_object(bytes: &[u8], boundary: &str, cut: bool) -> Option<Value> {
    let dash = format!("--{boundary}").into_bytes();
    let mut separator = b"\r\n".to_vec();
    separator.extend_from_slice(&dash);
    // A delimiter line: `--` after it closes the body; else padding, then CRLF (or, in a body
    // cut right there, nothing yet).
    let ends_delimiter = |tail: &[u8]| {
        if tail.starts_with(b"--") {
            return true;
        }
        let padded = tail
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        let rest = &tail[padded..];
        rest.starts_with(b"\r\n") || (cut && rest.is_empty())
    };
    // The first delimiter, after any preamble.
    let mut at = if bytes.starts_with(&dash) && ends_delimiter(&bytes[dash.len()..]) {
        0
    } else {
        next_delimiter(bytes, 0, &separator, &ends_delimiter)? + 2
    };
    let mut object = Map::new();
    let mut closed = false;
    loop {
        let tail = &bytes[at + dash.len()..];
        if tail.starts_with(b"--") {
            closed = true;
            break;
        }
        let padded = tail
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        let Some(_) = tail[padded..].strip_prefix(b"\r\n") else {
            break; // cut right after the delimiter
        };
        let start = at + dash.len() + padded + 2;
        let Some(end) = next_delimiter(bytes, start, &separator, &ends_delimiter) else {
            break; // a part whose end was not captured
        };
        if let Some((name, value)) = multipart_field(&bytes[start..end])? {
            push_field(&mut object, name, value);
        }
        at = end + 2;
    }
    // A whole body that never closes is one upstreams refuse.
    (closed || cut).then_some(Value::Object(object))
}

/// Where the next `CRLF--boundary` that is a delimiter starts, from `from`.
fn next_delimiter(
    bytes: &[u8],
    mut from: usize,
    separator: &[u8],
    ends_delimiter: &dyn Fn(&[u8]) -> bool,
) -> Option<usize> {
    loop {
        let at = from + find(bytes.get(from..)?, separator)?;
        if ends_delimiter(&bytes[at + separator.len()..]) {
            return Some(at);
        }
        from = at + 1;
    }
}

/// One part's name and value: its text, or for a file part its file name. `Some(None)` for a
/// part upstreams skip (no `form-data` disposition, no name); `None` for one they would read
/// differently from a plain reading (a folded header line, two dispositions, a parameter
/// given twice or in RFC 2231 form, a header that is not `name: value`).
fn multipart_field(part: &[u8]) -> Option<Option<(String, Value)>> {
    let (head, body) = if let Some(body) = part.strip_prefix(b"\r\n") {
        (&b""[..], body)
    } else {
        let end = find(part, b"\r\n\r\n")?;
        (&part[..end], &part[end + 4..])
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut disposition = None;
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return None;
        }
        let (name, value) = line.split_once(':')?;
        if name.is_empty() || name.contains([' ', '\t']) {
            return None;
        }
        if name.eq_ignore_ascii_case("content-disposition") && disposition.replace(value).is_some()
        {
            return None;
        }
    }
    let Some(disposition) = disposition else {
        return Some(None);
    };
    let (kind, params) = disposition.split_once(';').unwrap_or((disposition, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Some(None);
    }
    let params = parameters(params)?;
    let mut seen = std::collections::HashSet::new();
    for (key, _) in &params {
        if key.ends_with('*') || !seen.insert(key.to_ascii_lowercase()) {
            return None;
        }
    }
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    };
    let Some(name) = param("name").filter(|n| !n.is_empty()) else {
        return Some(None);
    };
    let value = match param("filename") {
        Some(file) => file.rsplit(['/', '\\']).next().unwrap_or(file).to_owned(),
        None => String::from_utf8_lossy(body).into_owned(),
    };
    Some(Some((name.clone(), Value::String(value))))
}

/// Where `needle` first starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The JSON text with every lone surrogate escape (`\ud800` not followed by a low surrogate,
/// or a low one alone) written as `\ufffd`; `None` when there is none.
fn repair_surrogates(bytes: &[u8]) -> Option<Vec<u8>> {
    let hex4 = |at: usize| -> Option<u32> {
        let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    };
    let mut out: Option<Vec<u8>> = None;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !in_string {
            in_string = b == b'"';
            if let Some(out) = &mut out {
                out.push(b);
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = false,
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                if let Some(code) = hex4(i + 2) {
                    let high = (0xD800..0xDC00).contains(&code);
                    let low = (0xDC00..0xE000).contains(&code);
                    let paired = high
                        && bytes.get(i + 6) == Some(&b'\\')
                        && bytes.get(i + 7) == Some(&b'u')
                        && hex4(i + 8).is_some_and(|c| (0xDC00..0xE000).contains(&c));
                    if paired {
                        i += 12;
                        continue;
                    }
                    if high || low {
                        let out = out.get_or_insert_with(|| bytes[..i].to_vec());
                        out.extend_from_slice(br"\ufffd");
                        i += 6;
                        continue;
                    }
                }
                // Copied below, two bytes at a time, so that `\\u` is not read as an escape.
                if let Some(out) = &mut out {
                    out.extend_from_slice(&bytes[i..(i + 2).min(bytes.len())]);
                }
                i += 2;
                continue;
            }
            b'\\' => {
                if let Some(out) = &mut out {
                    out.extend_from_slice(&bytes[i..(i + 2).min(bytes.len())]);
                }
                i += 2;
                continue;
            }
            _ => {}
        }
        if let Some(out) = &mut out {
            out.push(b);
        }
        i += 1;
    }
    out
}

/// The start of a JSON document cut anywhere, closed after its last complete value: the text
/// up to the end of the last member or element that was whole, followed by the brackets still
/// open. `None` when not even the outermost container was opened. A value cut in the middle
/// (a string, a number, a literal) is left out, never guessed.
fn complete_prefix(bytes: &[u8]) -> Option<Vec<u8>> {
    // The open containers, innermost last: `{` or `[`.
    let mut open: Vec<u8> = Vec::new();
    // Where the text can be closed, and how deep it was then.
    let mut cut: Option<(usize, usize)> = None;
    // Inside an object, whether the next string is a key.
    let mut key_next = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                if open.len() >= MAX_VALUE_DEPTH * 2 {
                    break;
                }
                open.push(bytes[i]);
                key_next = bytes[i] == b'{';
                i += 1;
                cut = Some((i, open.len()));
            }
            b'}' | b']' => {
                open.pop();
                i += 1;
                if open.is_empty() {
                    // Complete after all: nothing was cut.
                    return Some(bytes[..i].to_vec());
                }
                cut = Some((i, open.len()));
            }
            b',' => {
                key_next = open.last() == Some(&b'{');
                i += 1;
            }
            b':' => i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'"' => {
                let Some(end) = string_end(bytes, i + 1) else {
                    break;
                };
                i = end;
                if std::mem::take(&mut key_next) {
                    continue;
                }
                cut = Some((i, open.len()));
            }
            _ => {
                // A number or literal: complete only if something follows it.
                let end = (i..bytes.len()).find(|&j| {
                    matches!(bytes[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
                });
                let Some(end) = end else { break };
                i = end;
                cut = Some((i, open.len()));
            }
        }
        if open.is_empty() {
            break;
        }
    }
    let (at, depth) = cut?;
    if depth == 0 {
        return None;
    }
    // The containers open at the cut: the first `depth` of those seen, as they were then.
    let open = containers_at(&bytes[..at])?;
    let mut text = bytes[..at].to_vec();
    for bracket in open.iter().rev() {
        text.push(if *bracket == b'{' { b'}' } else { b']' });
    }
    Some(text)
}

/// The index just after the closing quote of a string whose content starts at `from`.
fn string_end(bytes: &[u8], mut from: usize) -> Option<usize> {
    while from < bytes.len() {
        match bytes[from] {
            b'"' => return Some(from + 1),
            b'\\' => from += 2,
            _ => from += 1,
        }
    }
    None
}

/// The containers open at the end of `bytes` (a prefix cut at a value boundary).
fn containers_at(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut open = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => open.push(bytes[i]),
            b'}' | b']' => {
                open.pop();
            }
            b'"' => {
                i = string_end(bytes, i + 1)?;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Some(open)
}

/// `value` with every subtree deeper than `max_depth` replaced by [`TOO_DEEP`].
pub fn limit_depth(value: Value, max_depth: usize) -> Value {
    fn deep(value: &Value, depth: usize, max: usize) -> bool {
        match value {
            Value::Array(items) => depth >= max || items.iter().any(|v| deep(v, depth + 1, max)),
            Value::Object(map) => depth >= max || map.values().any(|v| deep(v, depth + 1, max)),
            _ => false,
        }
    }
    fn cut(value: Value, depth: usize, max: usize) -> Value {
        match value {
            Value::Array(_) | Value::Object(_) if depth >= max => Value::String(TOO_DEEP.into()),
            Value::Array(items) => items.into_iter().map(|v| cut(v, depth + 1, max)).collect(),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, cut(v, depth + 1, max)))
                    .collect(),
            ),
            other => other,
        }
    }
    // Almost every value is shallow: look before rebuilding.
    if deep(&value, 0, max_depth) {
        cut(value, 0, max_depth)
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json(text: &str, cut: bool) -> Option<Value> {
        read_body(text.as_bytes(), BodyKind::Json, cut)
    }

    #[test]
    fn bodies_upstreams_accept_are_read() {
        assert_eq!(json("\u{feff}{\"a\":1}", false), Some(json!({"a": 1})));
        assert_eq!(
            json(r#"{"name":"x\ud800y"}"#, false).unwrap()["name"],
            "x\u{fffd}y"
        );
        assert_eq!(
            json(r#"{"name":"\udc00"}"#, false).unwrap()["name"],
            "\u{fffd}"
        );
        // A pair stays a pair; an escaped backslash before `u` is no escape.
        assert_eq!(
            json(r#"{"e":"\ud83d\ude00","b":"\\ud800"}"#, false),
            Some(json!({"e": "😀", "b": "\\ud800"}))
        );
        let big = json(r#"{"n":1e400,"m":12345678901234567890123}"#, false).unwrap();
        assert_eq!(big["n"].to_string(), "1e+400", "kept, not refused");
        assert_eq!(big["m"].to_string(), "12345678901234567890123");
        assert_eq!(json("not json", false), None);
        assert_eq!(json("", false), None);
    }

    #[test]
    fn a_cut_body_yields_what_was_complete_before_the_cut() {
        let cases = [
            (r#"{"a":"x","b":"partial"#, json!({"a": "x"})),
            (r#"{"a":"x","b":12"#, json!({"a": "x"})),
            (r#"{"a":"x","b""#, json!({"a": "x"})),
            (r#"{"a":"x","#, json!({"a": "x"})),
            (
                r#"{"a":{"b":[1,2,{"c":"d"}"#,
                json!({"a": {"b": [1, 2, {"c": "d"}]}}),
            ),
            (r#"{"s":"br}ace","t":"#, json!({"s": "br}ace"})),
            (r#"{"#, json!({})),
            (r#"[true,nul"#, json!([true])),
        ];
        for (text, want) in cases {
            assert_eq!(json(text, true), Some(want), "{text}");
        }
        assert_eq!(json(r#""just a string cut"#, true), None);
        assert_eq!(json("", true), None);
    }

    fn multipart(body: &[u8], cut: bool) -> Option<Value> {
        let ct = http::HeaderValue::from_static("multipart/form-data; boundary=xyz");
        read_multipart(body, Some(&ct), cut)
    }

    #[test]
    fn multipart_uploads_are_objects_of_their_fields_without_the_files() {
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"fileName\"\r\n\r\ntree.png\r\n\
                     --xyz\r\ncontent-disposition: form-data; name=\"tags\"\r\n\r\na,b\r\n\
                     --xyz\r\nContent-Disposition: form-data; name=tags\r\n\r\nc\r\n\
                     --xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"C:\\\\x\\\\tree.png\"\r\n\
                     Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n\r\n--xyz--\r\n";
        let kind = BodyKind::of(Some(&http::HeaderValue::from_static(
            "multipart/form-data; boundary=xyz",
        )));
        assert_eq!(kind, BodyKind::Multipart);
        assert_eq!(
            multipart(body, false).unwrap(),
            json!({"fileName": "tree.png", "tags": ["a,b", "c"], "file": "tree.png"})
        );
        // Cut inside the file: the fields before it are read, the file part is not.
        let cut = multipart(&body[..body.len() - 12], true).unwrap();
        assert_eq!(cut, json!({"fileName": "tree.png", "tags": ["a,b", "c"]}));
        // Whole but never closed, or not multipart at all: unreadable.
        assert_eq!(multipart(&body[..body.len() - 12], false), None);
        assert_eq!(multipart(b"{\"a\": 1}", false), None);
        // No boundary in the type: unreadable (the body alone does not say).
        let no_boundary = http::HeaderValue::from_static("multipart/form-data");
        assert_eq!(read_multipart(body, Some(&no_boundary), false), None);
        // A quoted boundary, and a preamble before the first delimiter.
        let quoted = http::HeaderValue::from_static("multipart/form-data; boundary=\"xyz\"");
        let with_preamble = [&b"ignored preamble\r\n"[..], &body[..]].concat();
        assert_eq!(
            read_multipart(&with_preamble, Some(&quoted), false).unwrap()["fileName"],
            "tree.png"
        );
    }

    #[test]
    fn multipart_bodies_an_upstream_reads_otherwise_are_not_believed() {
        let field = |name: &str, value: &str| {
            format!("--xyz\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
        };
        // A decoy under another boundary: upstreams skip it as preamble.
        let decoy = format!(
            "--FAKE\r\nContent-Disposition: form-data; name=\"fileName\"\r\n\r\nbenign.png\r\n--FAKE--\r\n{}--xyz--\r\n",
            field("fileName", "real.png")
        );
        assert_eq!(
            multipart(decoy.as_bytes(), false).unwrap(),
            json!({"fileName": "real.png"})
        );
        // `--xyzQ` inside a file is data, not a delimiter.
        let inside = "--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\n\
             data\r\n--xyzQ\r\nContent-Disposition: form-data; name=\"tags\"\r\n\r\nforged\r\n--xyz--\r\n";
        assert_eq!(
            multipart(inside.as_bytes(), false).unwrap(),
            json!({"file": "a.txt"})
        );
        // A semicolon inside a quoted parameter is part of it.
        let quoted = "--xyz\r\nContent-Disposition: form-data; name=\"fileName\"; x=\"; filename=forged.png\"\r\n\r\nreal.png\r\n--xyz--\r\n";
        assert_eq!(
            multipart(quoted.as_bytes(), false).unwrap(),
            json!({"fileName": "real.png"})
        );
        // Ambiguous: RFC 2231 names, a parameter twice, two dispositions, a folded line.
        for head in [
            "Content-Disposition: form-data; name=\"decoy\"; name*=UTF-8''fileName",
            "Content-Disposition: form-data; name=\"a\"; name=\"b\"",
            "Content-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"b\"",
            "Content-Disposition: form-data;\r\n name=\"a\"",
            "Content-Disposition: form-data; name=\"unterminated",
        ] {
            let body = format!("--xyz\r\n{head}\r\n\r\nv\r\n--xyz--\r\n");
            assert_eq!(multipart(body.as_bytes(), false), None, "{head}");
        }
        // Parts upstreams skip: no form-data disposition, no name.
        let skipped = format!(
            "--xyz\r\nContent-Disposition: attachment; name=\"x\"\r\n\r\nv\r\n\
             --xyz\r\nContent-Type: text/plain\r\n\r\nv\r\n{}--xyz--\r\n",
            field("kept", "yes")
        );
        assert_eq!(
            multipart(skipped.as_bytes(), false).unwrap(),
            json!({"kept": "yes"})
        );
        // Transport padding after a delimiter is allowed.
        let padded =
            "--xyz  \r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--xyz--\r\n";
        assert_eq!(
            multipart(padded.as_bytes(), false).unwrap(),
            json!({"a": "1"})
        );
    }

    #[test]
    fn forms_are_objects_of_their_fields() {
        let form = read_body(b"a=1&b=x%20y&a=2&flag", BodyKind::Form, false).unwrap();
        assert_eq!(form, json!({"a": ["1", "2"], "b": "x y", "flag": ""}));
        let kind = BodyKind::of(Some(&http::HeaderValue::from_static(
            "Application/X-WWW-Form-Urlencoded; charset=utf-8",
        )));
        assert_eq!(kind, BodyKind::Form);
        assert_eq!(BodyKind::of(None), BodyKind::Json);
    }

    /// Whether `read` is what a cut can leave of `whole`: equal scalars (never a scalar cut
    /// short), the first elements of an array, some members of an object, each in turn a part.
    fn part_of(read: &Value, whole: &Value) -> bool {
        match (read, whole) {
            (Value::Array(r), Value::Array(w)) => {
                r.len() <= w.len() && r.iter().zip(w).all(|(r, w)| part_of(r, w))
            }
            (Value::Object(r), Value::Object(w)) => r
                .iter()
                .all(|(k, v)| w.get(k).is_some_and(|w| part_of(v, w))),
            (r, w) => r == w,
        }
    }

    proptest::proptest! {
        /// Any bytes, read whole or as the start of a longer body, as JSON or as a form: no
        /// panic, and whatever is read survives serialising (what the record does with it).
        #[test]
        fn any_bytes_are_read_without_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            kind in 0u8..3,
            cut: bool,
        ) {
            let kind = [BodyKind::Json, BodyKind::Form, BodyKind::Multipart][kind as usize];
            // A multipart body starts with its delimiter line: give some inputs one.
            let mut bytes = bytes;
            if kind == BodyKind::Multipart && cut {
                bytes.splice(0..0, b"--b\r\n".iter().copied());
            }
            let read = if kind == BodyKind::Multipart {
                let ct = http::HeaderValue::from_static("multipart/form-data; boundary=b");
                read_multipart(&bytes, Some(&ct), cut)
            } else {
                read_body(&bytes, kind, cut)
            };
            if let Some(value) = read {
                let value = limit_depth(value, MAX_VALUE_DEPTH);
                serde_json::to_string(&value).unwrap();
            }
        }

        /// The start of any JSON document reads as a part of it: nothing made up, nothing cut
        /// short.
        #[test]
        fn the_start_of_a_document_reads_as_its_complete_part(
            keys in proptest::collection::vec("[a-z]{1,4}", 1..8),
            cut_at in 0usize..200,
        ) {
            let doc: serde_json::Map<String, Value> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), json!([i, {"k": k}])))
                .collect();
            let text = serde_json::to_string(&Value::Object(doc.clone())).unwrap();
            let cut = &text.as_bytes()[..cut_at.min(text.len())];
            if let Some(read) = read_body(cut, BodyKind::Json, true) {
                proptest::prop_assert!(
                    part_of(&read, &Value::Object(doc)),
                    "{} read as {}",
                    String::from_utf8_lossy(cut),
                    read
                );
            }
        }
    }

    #[test]
    fn deep_values_are_cut_at_the_depth_limit() {
        let mut deep = json!("leaf");
        for _ in 0..200 {
            deep = json!([deep]);
        }
        let cut = limit_depth(deep, MAX_VALUE_DEPTH);
        let text = serde_json::to_string(&cut).unwrap();
        assert!(text.contains(TOO_DEEP));
        // The marker has a bracket of its own.
        assert_eq!(text.matches('[').count(), MAX_VALUE_DEPTH + 1);
        let shallow = json!({"a": [1, {"b": 2}]});
        assert_eq!(limit_depth(shallow.clone(), MAX_VALUE_DEPTH), shallow);
    }
}
