//! Templates: `"Renamed file {path.fileId} to {body/name}"`, `"{body/value | hmac}"`.
//!
//! A template is literal text with `{SOURCE | FILTER ...}` placeholders (`{{` and `}}` stand for
//! literal braces). A template that is exactly one placeholder keeps the JSON type of what it
//! reads (an array of file ids stays an array, so a resource expands to one entry per element);
//! anything else renders to a string. A placeholder whose source is missing makes the whole
//! template yield nothing, so the field is omitted rather than filled with a half-truth.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Where a placeholder reads its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// `path.NAME`: a parameter of the rule's path pattern.
    Path(String),
    /// `query.NAME`: the first value of a query parameter.
    Query(String),
    /// `header.NAME`: the first value of a request header (parsed once, at load).
    Header(http::HeaderName),
    /// `body/POINTER`: a JSON pointer into the request body.
    Body(String),
    /// `response/POINTER`: a JSON pointer into the upstream's response body.
    Response(String),
    /// `jwt/POINTER`: a JSON pointer into the bearer token's claims.
    Jwt(String),
    /// `before/POINTER`: a JSON pointer into the answer of the rule's `before:` GET.
    Before(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filter {
    /// HMAC-SHA256 with the deployment's key, as lower-case hex.
    Hmac,
    Lower,
    /// The text before the last `/` (trailing ones ignored): `/forest/tree.png` → `/forest`,
    /// `acme/chatbot` → `acme`; nothing when there is no `/`.
    Dirname,
    /// The text after the last `/` (trailing ones ignored): `/forest/tree.png` → `tree.png`.
    Basename,
}

/// The filters' names, for messages.
const FILTER_NAMES: &[&str] = &["hmac", "lower", "dirname", "basename"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expr {
    pub(crate) source: Source,
    pub(crate) filters: Vec<Filter>,
    /// The placeholder's text without braces and spaces around `|`, e.g. `jwt/sub`: what a
    /// record's `actor.source` shows.
    pub(crate) text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Literal(String),
    Expr(Expr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pub(crate) parts: Vec<Part>,
    /// The template as written.
    pub(crate) text: String,
    /// Where the template's text starts in its rule file (set by the loader).
    pub(crate) pos: crate::yaml::Pos,
}

/// A problem in a template: the character offset it starts at, and what to say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TemplateError {
    pub(crate) offset: usize,
    pub(crate) message: String,
}

/// What a template can read from one call. Implemented by the evaluator over a real request;
/// every method answers `None` when the call does not have that value.
/// What [`Template::member`] found where a value was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Member {
    /// Not there at all.
    Missing,
    /// There, as JSON `null`.
    Null,
}

pub(crate) trait Lookup {
    fn path_param(&self, name: &str) -> Option<Cow<'_, str>>;
    fn query(&self, name: &str) -> Option<Cow<'_, str>>;
    fn header(&self, name: &http::HeaderName) -> Option<Cow<'_, str>>;
    fn body(&self) -> Option<&Value>;
    fn response(&self) -> Option<&Value>;
    fn jwt(&self) -> Option<&Value>;
    fn before(&self) -> Option<&Value>;
    fn hmac_key(&self) -> Option<&[u8]>;
}

const SOURCES_HELP: &str = "expected path.NAME, query.NAME, header.NAME, body/POINTER, response/POINTER, jwt/POINTER or before/POINTER";

impl Template {
    pub(crate) fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        // Offsets in messages count characters, the way a column does.
        let char_offset = |byte: usize| text[..byte].chars().count();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(TemplateError {
                        offset: char_offset(at),
                        message: "lone '}' in a template (write '}}' for a literal brace)"
                            .to_owned(),
                    });
                }
                '{' => {
                    let start = at + 1;
                    let Some(len) = text[start..].find('}') else {
                        return Err(TemplateError {
                            offset: char_offset(at),
                            message: "unclosed '{' in a template (write '{{' for a literal brace)"
                                .to_owned(),
                        });
                    };
                    let inner = &text[start..start + len];
                    let expr = Expr::parse(inner).map_err(|e| TemplateError {
                        offset: char_offset(start) + e.offset,
                        message: e.message,
                    })?;
                    while chars.peek().is_some_and(|p| p.0 <= start + len) {
                        chars.next();
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Expr(expr));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            parts,
            text: text.to_owned(),
            pos: crate::yaml::Pos::default(),
        })
    }

    pub(crate) fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            Part::Literal(_) => None,
        })
    }

    /// The single placeholder this template consists of, if that is all it is.
    pub(crate) fn single(&self) -> Option<&Expr> {
        match self.parts.as_slice() {
            [Part::Expr(e)] => Some(e),
            _ => None,
        }
    }

    /// For a template that is one placeholder: whether the call is known not to hold its
    /// source (the document was read and has no such member, or the path, query or header
    /// has none: [`Member::Missing`]) or holds `null` there ([`Member::Null`]). `None` when it
    /// holds a value, when its document could not be read, or for a template of text.
    pub(crate) fn member(&self, lookup: &dyn Lookup) -> Option<Member> {
        let expr = self.single()?;
        let doc = |doc: Option<&Value>, ptr: &str| {
            let doc = doc?;
            Some(match pointer(doc, ptr) {
                None => Member::Missing,
                Some(Value::Null) => Member::Null,
                Some(_) => return None,
            })
        };
        match &expr.source {
            Source::Path(name) => lookup.path_param(name).is_none().then_some(Member::Missing),
            Source::Query(name) => lookup.query(name).is_none().then_some(Member::Missing),
            Source::Header(name) => lookup.header(name).is_none().then_some(Member::Missing),
            Source::Body(ptr) => doc(lookup.body(), ptr),
            Source::Response(ptr) => doc(lookup.response(), ptr),
            Source::Jwt(ptr) => doc(lookup.jwt(), ptr),
            Source::Before(ptr) => doc(lookup.before(), ptr),
        }
    }

    pub(crate) fn uses(&self, pred: impl Fn(&Expr) -> bool) -> bool {
        self.exprs().any(pred)
    }

    /// What a record names as the source of a value: `jwt/sub` for `{jwt/sub}`, the template
    /// text for anything longer.
    pub(crate) fn source_name(&self) -> &str {
        match self.single() {
            Some(expr) => &expr.text,
            None => &self.text,
        }
    }

    /// Evaluates the template; `None` when any placeholder's source is missing.
    pub(crate) fn eval(&self, lookup: &dyn Lookup) -> Option<Value> {
        match self.single() {
            Some(expr) => expr.eval(lookup),
            None => self.eval_text(lookup).map(Value::String),
        }
    }

    /// [`Template::eval_text`], borrowing a template that is all literal text.
    pub(crate) fn eval_cow(&self, lookup: &dyn Lookup) -> Option<Cow<'_, str>> {
        match self.parts.as_slice() {
            [Part::Literal(text)] => Some(Cow::Borrowed(text)),
            _ => self.eval_text(lookup).map(Cow::Owned),
        }
    }

    /// Evaluates to text: a string stays itself, a number or boolean is written out, an array
    /// of scalars is joined with ", ".
    ///
    /// Records are built on the request path, so text is written straight into the one
    /// `String` returned, without a `serde_json::Value` in between.
    pub(crate) fn eval_text(&self, lookup: &dyn Lookup) -> Option<String> {
        match self.parts.as_slice() {
            [Part::Literal(text)] => Some(text.clone()),
            [Part::Expr(expr)] => expr.eval_text(lookup),
            parts => {
                let mut out = String::with_capacity(self.text.len());
                for part in parts {
                    match part {
                        Part::Literal(text) => out.push_str(text),
                        Part::Expr(expr) => expr.push_text(lookup, &mut out)?,
                    }
                }
                Some(out)
            }
        }
    }
}

impl Expr {
    fn parse(inner: &str) -> Result<Expr, TemplateError> {
        let mut pieces = inner.split('|');
        let head = pieces.next().unwrap_or_default();
        let lead = head.len() - head.trim_start().len();
        let source_text = head.trim();
        let source = parse_source(source_text).map_err(|message| TemplateError {
            offset: inner[..lead].chars().count(),
            message,
        })?;
        let mut filters = Vec::new();
        let mut text = source_text.to_owned();
        let mut offset = head.chars().count() + 1;
        for piece in pieces {
            let name = piece.trim();
            let lead = piece.chars().count() - piece.trim_start().chars().count();
            let filter = match name {
                "hmac" => Filter::Hmac,
                "lower" => Filter::Lower,
                "dirname" => Filter::Dirname,
                "basename" => Filter::Basename,
                other => {
                    let hint = crate::error::did_you_mean(other, FILTER_NAMES);
                    return Err(TemplateError {
                        offset: offset + lead,
                        message: format!(
                            "unknown filter \"{other}\"{hint}: the filters are {}",
                            FILTER_NAMES.join(", ")
                        ),
                    });
                }
            };
            text.push_str(" | ");
            text.push_str(name);
            filters.push(filter);
            offset += piece.chars().count() + 1;
        }
        Ok(Expr {
            source,
            filters,
            text,
        })
    }

    /// A path, query or header value as it is, when no filter applies: the common case,
    /// which needs no JSON value.
    fn plain<'l>(&self, lookup: &'l dyn Lookup) -> Option<Option<Cow<'l, str>>> {
        if !self.filters.is_empty() {
            return None;
        }
        Some(match &self.source {
            Source::Path(name) => lookup.path_param(name),
            Source::Query(name) => lookup.query(name),
            Source::Header(name) => lookup.header(name),
            Source::Body(_) | Source::Response(_) | Source::Jwt(_) | Source::Before(_) => {
                return None;
            }
        })
    }

    fn eval_text(&self, lookup: &dyn Lookup) -> Option<String> {
        match self.plain(lookup) {
            Some(text) => text.map(Cow::into_owned),
            None => into_text(self.eval(lookup)?),
        }
    }

    fn push_text(&self, lookup: &dyn Lookup, out: &mut String) -> Option<()> {
        match self.plain(lookup) {
            Some(text) => out.push_str(&text?),
            None => match self.eval(lookup)? {
                Value::String(text) => out.push_str(&text),
                value => out.push_str(&to_text(&value)?),
            },
        }
        Some(())
    }

    fn eval(&self, lookup: &dyn Lookup) -> Option<Value> {
        let raw = match &self.source {
            Source::Path(name) => Value::String(lookup.path_param(name)?.into_owned()),
            Source::Query(name) => Value::String(lookup.query(name)?.into_owned()),
            Source::Header(name) => Value::String(lookup.header(name)?.into_owned()),
            Source::Body(ptr) => pointer(lookup.body()?, ptr)?.clone(),
            Source::Response(ptr) => pointer(lookup.response()?, ptr)?.clone(),
            Source::Jwt(ptr) => pointer(lookup.jwt()?, ptr)?.clone(),
            Source::Before(ptr) => pointer(lookup.before()?, ptr)?.clone(),
        };
        let mut value = raw;
        for filter in &self.filters {
            value = apply(*filter, value, lookup)?;
        }
        match value {
            Value::Null => None,
            v => Some(v),
        }
    }
}

fn parse_source(text: &str) -> Result<Source, String> {
    fn named(
        rest: &str,
        kind: &str,
        make: fn(String) -> Source,
        valid: fn(&str) -> bool,
    ) -> Result<Source, String> {
        if rest.is_empty() {
            return Err(format!("\"{kind}.\" needs a name, as in {kind}.id"));
        }
        if !valid(rest) {
            return Err(format!("bad {kind} name \"{rest}\""));
        }
        Ok(make(rest.to_owned()))
    }
    if let Some(rest) = text.strip_prefix("path.") {
        return named(rest, "path", Source::Path, crate::path::is_identifier);
    }
    if let Some(rest) = text.strip_prefix("query.") {
        return named(rest, "query", Source::Query, |n| {
            !n.contains(['&', '=', ' ', '{', '}'])
        });
    }
    if let Some(rest) = text.strip_prefix("header.") {
        if rest.is_empty() {
            return Err("\"header.\" needs a name, as in header.id".to_owned());
        }
        return http::HeaderName::from_bytes(rest.as_bytes())
            .map(Source::Header)
            .map_err(|_| format!("bad header name \"{rest}\""));
    }
    for (prefix, make) in [
        ("body", Source::Body as fn(String) -> Source),
        ("response", Source::Response),
        ("jwt", Source::Jwt),
        ("before", Source::Before),
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            if rest.is_empty() || rest.starts_with('/') {
                check_pointer(rest)?;
                return Ok(make(rest.to_owned()));
            }
            if let Some(r) = rest.strip_prefix('.') {
                return Err(format!(
                    "\"{text}\": a {prefix} field is read with a JSON pointer, write \"{prefix}/{}\"",
                    r.replace('.', "/")
                ));
            }
        }
    }
    for (prefix, kind) in [
        ("path/", "path"),
        ("query/", "query"),
        ("header/", "header"),
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return Err(format!(
                "\"{text}\": {kind} values are named with a dot, write \"{kind}.{rest}\""
            ));
        }
    }
    if let Some(kind) = ["path", "query", "header"].into_iter().find(|k| *k == text) {
        return Err(format!("\"{kind}\" needs a name, as in {kind}.id"));
    }
    let word = text.split(['.', '/']).next().unwrap_or_default().to_owned();
    let hint = crate::error::did_you_mean(
        &word,
        &["path", "query", "header", "body", "response", "jwt"],
    );
    if text.is_empty() {
        return Err(format!("empty placeholder \"{{}}\": {SOURCES_HELP}"));
    }
    Err(format!("unknown source \"{text}\"{hint}: {SOURCES_HELP}"))
}

/// `value.pointer(ptr)`, without the two `String`s per step that serde_json's version makes:
/// a step is only unescaped when it holds a `~`.
pub(crate) fn pointer<'v>(value: &'v Value, ptr: &str) -> Option<&'v Value> {
    if ptr.is_empty() {
        return Some(value);
    }
    let mut target = value;
    for step in ptr.strip_prefix('/')?.split('/') {
        let step: Cow<'_, str> = if step.contains('~') {
            Cow::Owned(step.replace("~1", "/").replace("~0", "~"))
        } else {
            Cow::Borrowed(step)
        };
        target = match target {
            Value::Object(map) => map.get(step.as_ref())?,
            Value::Array(items) => {
                // RFC 6901 indexes: digits, no leading zero (except "0" itself), no sign.
                if step.starts_with('+') || (step.len() > 1 && step.starts_with('0')) {
                    return None;
                }
                items.get(step.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(target)
}

/// Checks RFC 6901 syntax: `~` is only ever followed by `0` or `1`.
fn check_pointer(pointer: &str) -> Result<(), String> {
    let bytes = pointer.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')) {
            return Err(format!(
                "bad JSON pointer \"{pointer}\": '~' must be followed by 0 ('~') or 1 ('/')"
            ));
        }
    }
    Ok(())
}

fn apply(filter: Filter, value: Value, lookup: &dyn Lookup) -> Option<Value> {
    Some(match value {
        Value::Null => Value::Null,
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| apply(filter, v, lookup))
                .collect::<Option<Vec<_>>>()?,
        ),
        Value::String(s) => match filter {
            Filter::Lower => Value::String(s.to_lowercase()),
            Filter::Hmac => Value::String(hmac_hex(lookup.hmac_key()?, s.as_bytes())),
            Filter::Dirname => {
                let (dir, _) = s.trim_end_matches('/').rsplit_once('/')?;
                Value::String(dir.to_owned())
            }
            Filter::Basename => {
                let trimmed = s.trim_end_matches('/');
                let base = trimmed.rsplit_once('/').map_or(trimmed, |(_, base)| base);
                Value::String(base.to_owned())
            }
        },
        other => match filter {
            Filter::Lower | Filter::Dirname | Filter::Basename => other,
            Filter::Hmac => {
                Value::String(hmac_hex(lookup.hmac_key()?, other.to_string().as_bytes()))
            }
        },
    })
}

/// HMAC-SHA256 of `data` under `key`, as lower-case hex.
pub(crate) fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    // `new_from_slice` accepts keys of any length for HMAC; it cannot fail here.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(data);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// Renders a value as record text: strings as themselves, numbers and booleans written out,
/// arrays of scalars joined with ", ", objects as JSON. Null is nothing.
/// [`to_text`] of a value that is no longer needed: a string is moved, not copied.
pub(crate) fn into_text(value: Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s),
        other => to_text(&other),
    }
}

pub(crate) fn to_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(to_text)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Value::Object(_) => Some(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_read_what_serde_json_reads() {
        let doc = json!({"a": {"b/c": [10, {"d~e": "x"}], "": 1}, "0": "zero", "list": [1, 2]});
        for ptr in [
            "",
            "/a",
            "/a/b~1c",
            "/a/b~1c/0",
            "/a/b~1c/1/d~0e",
            "/a/",
            "/0",
            "/list/1",
            "/list/01",
            "/list/+1",
            "/list/2",
            "/missing",
            "/a/b~1c/x",
            "/list/-",
        ] {
            assert_eq!(pointer(&doc, ptr), doc.pointer(ptr), "{ptr:?}");
        }
    }

    #[derive(Default)]
    struct Fake {
        body: Option<Value>,
        response: Option<Value>,
        jwt: Option<Value>,
        key: Option<Vec<u8>>,
    }

    impl Lookup for Fake {
        fn path_param(&self, name: &str) -> Option<Cow<'_, str>> {
            (name == "fileId").then_some(Cow::Borrowed("abc"))
        }
        fn query(&self, name: &str) -> Option<Cow<'_, str>> {
            (name == "dry").then_some(Cow::Borrowed("1"))
        }
        fn header(&self, name: &http::HeaderName) -> Option<Cow<'_, str>> {
            (name == "x-user-id").then_some(Cow::Borrowed("U_7"))
        }
        fn body(&self) -> Option<&Value> {
            self.body.as_ref()
        }
        fn response(&self) -> Option<&Value> {
            self.response.as_ref()
        }
        fn jwt(&self) -> Option<&Value> {
            self.jwt.as_ref()
        }
        fn before(&self) -> Option<&Value> {
            None
        }
        fn hmac_key(&self) -> Option<&[u8]> {
            self.key.as_deref()
        }
    }

    fn eval(template: &str, fake: &Fake) -> Option<Value> {
        Template::parse(template).unwrap().eval(fake)
    }

    #[test]
    fn every_source_reads_its_value() {
        let fake = Fake {
            body: Some(json!({"name": "tree.png", "ids": ["a", "b"], "n": 3, "a/b": {"~c": 1}})),
            response: Some(json!({"fileId": "f_9"})),
            jwt: Some(json!({"sub": "u_123", "org": {"id": 5}})),
            key: None,
        };
        assert_eq!(eval("{path.fileId}", &fake), Some(json!("abc")));
        assert_eq!(eval("{query.dry}", &fake), Some(json!("1")));
        assert_eq!(eval("{header.X-User-Id}", &fake), Some(json!("U_7")));
        assert_eq!(eval("{body/name}", &fake), Some(json!("tree.png")));
        assert_eq!(eval("{body/ids}", &fake), Some(json!(["a", "b"])));
        assert_eq!(eval("{body/ids/1}", &fake), Some(json!("b")));
        assert_eq!(eval("{body/n}", &fake), Some(json!(3)));
        assert_eq!(eval("{body/a~1b/~0c}", &fake), Some(json!(1)));
        assert_eq!(eval("{response/fileId}", &fake), Some(json!("f_9")));
        assert_eq!(eval("{jwt/sub}", &fake), Some(json!("u_123")));
        assert_eq!(eval("{jwt/org/id}", &fake), Some(json!(5)));
        assert_eq!(eval("{ jwt/sub }", &fake), Some(json!("u_123")));
    }

    #[test]
    fn interpolation_renders_text_and_missing_sources_yield_nothing() {
        let fake = Fake {
            body: Some(json!({"name": "tree.png", "tags": ["red", "blue"], "n": 2})),
            ..Fake::default()
        };
        assert_eq!(
            eval("Renamed file {path.fileId} to {body/name}", &fake),
            Some(json!("Renamed file abc to tree.png"))
        );
        assert_eq!(
            eval("tags {body/tags} x{body/n}", &fake),
            Some(json!("tags red, blue x2"))
        );
        assert_eq!(eval("Renamed to {body/missing}", &fake), None);
        assert_eq!(eval("{response/fileId}", &fake), None);
        assert_eq!(
            eval("{{literal}} {body/n}", &fake),
            Some(json!("{literal} 2"))
        );
        assert_eq!(eval("constant", &fake), Some(json!("constant")));
    }

    #[test]
    fn filters() {
        let fake = Fake {
            body: Some(json!({"v": "s3cr3t", "Tags": ["A", "b"], "n": 42})),
            key: Some(b"key".to_vec()),
            ..Fake::default()
        };
        assert_eq!(
            eval("{body/v | hmac}", &fake),
            Some(json!(hmac_hex(b"key", b"s3cr3t")))
        );
        // The well-known HMAC-SHA256 test vector, so the helper is checked against the world.
        assert_eq!(
            hmac_hex(b"key", b"The quick brown fox jumps over the lazy dog"),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        assert_eq!(
            eval("{header.X-User-Id | lower}", &fake),
            Some(json!("u_7"))
        );
        assert_eq!(eval("{body/Tags | lower}", &fake), Some(json!(["a", "b"])));
        let paths = Fake {
            body: Some(
                json!({"file": "/forest/tree.png", "repo": "acme/bot", "top": "/a.png",
                              "folder": "/forest/old/", "plain": "gpt2"}),
            ),
            ..Fake::default()
        };
        // A rename's new path from the old one and the new name (ImageKit's PUT /v1/files/rename).
        assert_eq!(
            eval("{body/file | dirname}/oak.png", &paths),
            Some(json!("/forest/oak.png"))
        );
        assert_eq!(
            eval("{body/file | basename}", &paths),
            Some(json!("tree.png"))
        );
        assert_eq!(
            eval("{body/top | dirname}/b.png", &paths),
            Some(json!("/b.png"))
        );
        assert_eq!(eval("{body/folder | basename}", &paths), Some(json!("old")));
        assert_eq!(
            eval("{body/folder | dirname}", &paths),
            Some(json!("/forest"))
        );
        // A Hub repo id's namespace, and nothing for one without.
        assert_eq!(eval("{body/repo | dirname}", &paths), Some(json!("acme")));
        assert_eq!(eval("{body/plain | dirname}", &paths), None);
        assert_eq!(eval("{body/plain | basename}", &paths), Some(json!("gpt2")));
        assert_eq!(
            eval("{body/n | hmac}", &fake),
            Some(json!(hmac_hex(b"key", b"42")))
        );
        let keyless = Fake {
            body: Some(json!({"v": "s3cr3t"})),
            ..Fake::default()
        };
        assert_eq!(
            eval("{body/v | hmac}", &keyless),
            None,
            "never the raw value"
        );
    }

    #[test]
    fn parse_errors() {
        let err = |t: &str| Template::parse(t).unwrap_err();
        let e = err("{bdy/name}");
        assert_eq!(
            e.message,
            format!("unknown source \"bdy/name\" (did you mean \"body\"?): {SOURCES_HELP}")
        );
        assert_eq!(e.offset, 1);
        let e = err("x {body/name | upper}");
        assert_eq!(
            e.message,
            "unknown filter \"upper\": the filters are hmac, lower, dirname, basename"
        );
        assert_eq!(e.offset, 15);
        let e = err("{body/a~2}");
        assert!(e.message.starts_with("bad JSON pointer \"/a~2\""));
        let e = err("{body.name}");
        assert_eq!(
            e.message,
            "\"body.name\": a body field is read with a JSON pointer, write \"body/name\""
        );
        let e = err("{path/id}");
        assert_eq!(
            e.message,
            "\"path/id\": path values are named with a dot, write \"path.id\""
        );
        assert_eq!(err("ab {path.id").offset, 3);
        assert_eq!(err("a}b").offset, 1);
        assert!(err("{}").message.starts_with("empty placeholder"));
        assert!(
            err("{header.bad name}")
                .message
                .starts_with("bad header name")
        );
        assert!(err("{path.}").message.contains("needs a name"));
    }

    #[test]
    fn expr_text_is_the_actor_source() {
        let t = Template::parse("{ jwt/sub |lower }").unwrap();
        assert_eq!(t.single().unwrap().text, "jwt/sub | lower");
    }
}
