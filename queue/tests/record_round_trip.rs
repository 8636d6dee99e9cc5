//! Property tests (issue 13 item 9, "Fuzzing"): every record a producer sends, the writer
//! can read back, and reads back as the record that was made.
//!
//! A record is made from whatever the client sent: a request body and a response body of any
//! bytes, any path, query and header values. Templates copy parts of them into `details`,
//! `resources`, `description` and `actor`. The producer writes the record with
//! `RecordRef::write_json_with_origin` (what `RedisQueue::enqueue_ref` sends; the owned path,
//! `RecordSink::enqueue`, writes `serde_json::to_vec` of the `AuditRecord`). The writer's
//! consumer reads each entry with `parse_record` (private to `consumer.rs`, replicated below):
//! an entry it cannot parse is moved to the dead-letter stream, so the audit trail loses the
//! call. So, for any input:
//!
//! 1. making the record does not panic (it runs on the request path);
//! 2. what the producer wrote parses with the consumer's parser;
//! 3. and gives back an `AuditRecord` equal to the one made (what the writer stores is what
//!    was audited);
//! 4. and the direct writer and serde_json write the same bytes (`record.rs` promises it; a
//!    difference means one of them changed without the other).
//!
//! The time of each test is bounded: the case counts below keep each test to a few seconds in
//! a debug build, and shrinking stops after 30 s; `PROPTEST_CASES` (and
//! `PROPTEST_MAX_SHRINK_TIME`) override them for longer runs.

use std::sync::LazyLock;
use std::time::Duration;

use auditgate_rules::{AuditRecord, Call, OriginJson, Outcome, RuleSet};
use proptest::prelude::*;
use serde_json::Value;

/// A configuration of `cases` cases, unless `PROPTEST_CASES` says otherwise (an explicit
/// `cases` would win over the variable, which only `ProptestConfig::default()` reads).
fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let set = |name: &str| std::env::var_os(name).is_some();
    ProptestConfig {
        cases: if set("PROPTEST_CASES") {
            base.cases
        } else {
            cases
        },
        max_shrink_time: if set("PROPTEST_MAX_SHRINK_TIME") {
            base.max_shrink_time
        } else {
            30_000
        },
        ..base
    }
}

/// The reader the writer's consumer takes stream entries with.
fn parse_record(field: Option<&[u8]>) -> Result<AuditRecord, String> {
    auditgate_queue::read_record(field.ok_or("no record")?)
}

/// Rules whose templates read every part of a call: the whole request and response bodies
/// (`{body}`, `{response}`), pointers into them, arrays that expand resources, filters,
/// interpolated text, path, rest and query parameters, headers and JWT claims, and a `when`
/// on the body. `unmatched: record` makes a record of every other mutating call too.
const RULES: &str = r#"
version: 1
service: fuzz-service
defaults:
  methods: [POST, PUT, PATCH, DELETE]
  actor: ["{jwt/sub}", "{header.X-User-Id}", "{body/user}"]
  unmatched: record
rules:
  - id: item-flag
    operation: item.flag
    method: POST
    path: /v1/items/{itemId}
    when: { body: /x }
    resources:
      - { type: item, id: "{path.itemId}" }
      - { type: tag, id: "{body/ids}", path: "{response/paths}" }
    details:
      whole: "{body}"
      x: "{body/x}"
      name: "{body/name | lower}"
      secret: "{body/v | hmac}"
      result: "{response/result}"
      q: "{query.q}"
    description: "Flagged {path.itemId} as {body/name}: {body/x} -> {response/result}"

  - id: item-change
    operation: item.change
    method: [POST, PUT, PATCH]
    path: /v1/items/{itemId}
    resources:
      - { type: item, id: "{path.itemId}", path: "{body/path}" }
      - { type: "{body/kind}", id: "{body/ids}" }
    details:
      body: "{body}"
      response: "{response}"
      ids: "{body/ids}"
      deep: "{body/x/x/x}"
      text: "n={body/n} name={body/name}"
      agent: "{header.User-Agent}"
    description: "Changed {path.itemId} to {body/name} ({body/n})"

  - id: bulk
    operation: item.bulk
    method: POST
    path: /v1/bulk/{*rest}
    resources: [{ type: item, id: "{body/ids}", path: "{response/paths}" }]
    details: { all: "{response}", rest: "{path.rest}", first: "{body/0}" }
"#;

static RULE_SET: LazyLock<Result<RuleSet, String>> = LazyLock::new(|| {
    RuleSet::loader()
        .hmac_key("fuzz-key")
        .from_yaml("fuzz.yaml", RULES)
        .map_err(|e| e.to_string())
});

/// A time with whole microseconds (records carry microseconds, so a time with nanoseconds
/// could not come back equal), taken from a parsed record so this crate needs no chrono.
static TIME: LazyLock<AuditRecord> = LazyLock::new(|| {
    serde_json::from_str(
        r#"{"schema":1,"id":"0193a6f0-7c1e-7d5e-9b1a-2f4c8e9d0a11",
        "time":"2026-11-22T10:00:00.123456Z","duration_ms":1.0,"service":"s",
        "operation":"o","actor":null,"request":{"id":"r","method":"POST","path":"/"},
        "resources":[],"response":{"status":200},"outcome":"success","details":{}}"#,
    )
    .expect("the sample record parses")
});

/// Bytes shown as text, cut to 600 characters: failures print their input, and a body may
/// hold a 64 KB string.
#[derive(Clone)]
struct Bytes(Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.0);
        let shown: String = text.chars().take(600).collect();
        if shown.len() < text.len() {
            write!(f, "{shown:?}… ({} bytes)", self.0.len())
        } else {
            write!(f, "{shown:?}")
        }
    }
}

/// One call, as the capturing side sees it once it is over.
#[derive(Debug, Clone)]
struct Input {
    method: http::Method,
    /// Path and query, percent-encoded so it parses as a URI; decoded back by the rules.
    uri: String,
    /// Header values as bytes: those that are no valid header value are left out.
    headers: Vec<(http::HeaderName, Bytes)>,
    request_body: Option<Bytes>,
    response_body: Option<Bytes>,
    status: Option<u16>,
    outcome: Option<Outcome>,
    client_ip: Option<String>,
    request_id: Option<String>,
    duration_micros: u64,
    /// The producer's instance name and sequence number, written into `origin`.
    instance: String,
    seq: u64,
}

/// Makes the call's record and checks properties 1 to 4 (see the top of the file).
fn check_round_trip(input: &Input) -> Result<(), TestCaseError> {
    let rules = match &*RULE_SET {
        Ok(rules) => rules,
        Err(e) => return Err(TestCaseError::fail(format!("the fixed rules load: {e}"))),
    };
    // The generator only writes URIs that parse; a rejection here is a bug in it, which
    // proptest reports once too many cases are rejected.
    let Ok(uri) = input.uri.parse::<http::Uri>() else {
        return Err(TestCaseError::reject(format!("not a URI: {:?}", input.uri)));
    };
    let mut headers = http::HeaderMap::new();
    for (name, value) in &input.headers {
        if let Ok(value) = http::HeaderValue::from_bytes(&value.0) {
            headers.append(name.clone(), value);
        }
    }
    let Some(found) = rules.matches(&input.method, uri.path()) else {
        return Ok(());
    };
    let mut call = Call::new(&input.method, &uri, &headers);
    call.request_body = input.request_body.as_ref().map(|b| b.0.as_slice());
    call.response_body = input.response_body.as_ref().map(|b| b.0.as_slice());
    call.status = input.status;
    call.outcome = input.outcome;
    call.client_ip = input.client_ip.clone();
    call.request_id = input.request_id.as_deref();
    call.time = TIME.time;
    call.duration = Duration::from_micros(input.duration_micros);

    // 1. Making it: a panic fails the test.
    let Some(record) = found.record_ref(&call) else {
        return Ok(());
    };
    let origin = OriginJson::new("proxy", &input.instance);
    let mut produced = Vec::new();
    record.write_json_with_origin(&mut produced, &origin, input.seq);
    let mut expected = record.into_owned();
    expected.origin = Some(origin.with_seq(input.seq));
    let owned = match serde_json::to_vec(&expected) {
        Ok(bytes) => bytes,
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "serde_json cannot write it: {e}"
            )));
        }
    };

    for (writer, bytes) in [
        ("RecordRef::write_json_with_origin", &produced),
        ("serde_json::to_vec(&AuditRecord)", &owned),
    ] {
        // 2. The writer can read it.
        let parsed = match parse_record(Some(bytes.as_slice())) {
            Ok(parsed) => parsed,
            Err(reason) => {
                return Err(TestCaseError::fail(format!(
                    "the writer would dead-letter what {writer} wrote: {reason} \
                     ({} bytes, nested {} deep)",
                    bytes.len(),
                    nesting(bytes.as_slice())
                )));
            }
        };
        // 3. As the record that was made.
        if parsed != expected {
            let difference = first_difference(&to_value(&expected)?, &to_value(&parsed)?, "")
                .unwrap_or_else(|| "(no difference as JSON values)".to_owned());
            return Err(TestCaseError::fail(format!(
                "what {writer} wrote reads back as another record; first difference, \
                 made vs read: {difference}"
            )));
        }
    }
    // 4. Both writers wrote the same bytes.
    if produced != owned {
        let at = produced
            .iter()
            .zip(&owned)
            .position(|(a, b)| a != b)
            .unwrap_or(produced.len().min(owned.len()));
        let around = |b: &[u8]| {
            String::from_utf8_lossy(&b[at.saturating_sub(40)..b.len().min(at + 40)]).into_owned()
        };
        return Err(TestCaseError::fail(format!(
            "write_json_with_origin and serde_json differ at byte {at}: {:?} vs {:?}",
            around(produced.as_slice()),
            around(owned.as_slice())
        )));
    }
    Ok(())
}

fn to_value(record: &AuditRecord) -> Result<Value, TestCaseError> {
    serde_json::to_value(record).map_err(|e| TestCaseError::fail(format!("to_value: {e}")))
}

/// The JSON pointer of the first place where `a` and `b` differ, with both values (cut short).
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (key, value) in x {
                let here = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                match y.get(key) {
                    Some(other) => {
                        if let Some(d) = first_difference(value, other, &here) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{here}: only in the record made")),
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{at}/{k}: only in the record read"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{at}/{i}"))),
        _ if a == b => None,
        _ => {
            let cut = |v: &Value| v.to_string().chars().take(200).collect::<String>();
            Some(format!("{at}: {} vs {}", cut(a), cut(b)))
        }
    }
}

/// How deeply `json` nests arrays and objects (outside strings), for failure messages.
fn nesting(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// JSON string literals written as text, so they can hold what no Rust string holds: lone
/// surrogates (`\ud800`: serde_json refuses the body, a lenient reader makes it U+FFFD; either
/// way the record must round-trip), escaped NUL, a valid surrogate pair, an unescaped control
/// character (invalid JSON).
const RAW_STRINGS: &[&str] = &[
    r#""\ud800""#,
    r#""\udc00""#,
    r#""x\ud800y""#,
    r#""\ud800\u0041""#,
    r#""\ud83d\ude00""#,
    r#""\uDBFF\uDFFF""#,
    r#""\u0000""#,
    r#""a\u0000b""#,
    r#""\/\b\f\n\r\t\\\"""#,
    r#""\uFFFF\uFFFE""#,
    "\"raw\ttab\"",
    "\"\u{7f}\u{85}\u{2028}\"",
    r#""""#,
];

/// Any JSON string: any characters (NUL, controls, quotes and backslashes escaped by
/// serde_json), runs of the characters that need escaping, the raw literals above, and long
/// strings (up to 64 KB: a body is captured up to its limit, and a detail may copy all of it).
fn json_string() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::collection::vec(any::<char>(), 0..24)
            .prop_map(|c| quote(&c.into_iter().collect::<String>())),
        2 => prop::collection::vec(
            prop::sample::select(vec![
                "\0", "\"", "\\", "\n", "\u{1}", "\u{1f}", "\u{7f}", "é", "🦀", "/", "~1",
            ]),
            0..16,
        )
        .prop_map(|p| quote(&p.concat())),
        2 => prop::sample::select(RAW_STRINGS).prop_map(str::to_owned),
        1 => (0usize..65_536, prop::sample::select(vec!["a", "é", "\0", "\"", "\u{10FFFF}"]))
            .prop_map(|(n, s)| quote(&s.repeat(n / s.len()))),
    ]
    .boxed()
}

/// Numbers whose value survives being read, written and read again with serde_json's default
/// (not exact) float parsing, and numbers no `f64` holds (`1e400`: serde_json refuses the body
/// today, so `body/` sources yield nothing; a reader that keeps such numbers as written must
/// write them back so they read the same).
const EXACT_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "0.5",
    "-2.25",
    "1.5e3",
    "1E+2",
    "0e0",
    "-0.0",
    "4096",
    "1e400",
    "-1e400",
    "1e-400",
    "1e999999999999",
    "9007199254740993",
];

/// A JSON scalar: null, booleans, whole numbers of any size that fit 64 bits, the numbers
/// above, strings.
fn exact_scalar() -> BoxedStrategy<String> {
    prop_oneof![
        1 => Just("null".to_owned()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        2 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(EXACT_NUMBERS).prop_map(str::to_owned),
        4 => json_string(),
    ]
    .boxed()
}

/// Floating-point numbers as clients write them: any finite `f64` in its shortest form (what
/// JavaScript's `JSON.stringify` writes), and long decimals with exponents.
fn float_literal() -> BoxedStrategy<String> {
    prop_oneof![
        3 => any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap_or_default()),
        1 => any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        1 => "-?[1-9][0-9]{0,20}\\.[0-9]{1,20}([eE][-+]?[0-9]{1,3})?",
        1 => prop::sample::select(vec![
            "123456789012345678901234567890",
            "18446744073709551616",
            "-9223372036854775809",
            "0.1",
            "117.63331139400017",
            "2.2250738585072011e-308",
            "4.9e-324",
            "1.7976931348623157e308",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

/// Keys the templates read, so bodies reach them, and any others.
const BODY_KEYS: &[&str] = &[
    "x", "name", "ids", "n", "path", "kind", "user", "result", "paths", "v", "sub", "",
];

fn json_key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(BODY_KEYS).prop_map(quote),
        1 => json_string(),
    ]
    .boxed()
}

fn object(entries: Vec<(String, String)>) -> String {
    let members: Vec<String> = entries
        .into_iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// JSON text nested up to 6 deep (the deep cases have a strategy of their own), built from
/// `leaf` scalars.
fn json_value(leaf: BoxedStrategy<String>) -> BoxedStrategy<String> {
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((json_key(), inner), 0..6).prop_map(object),
        ]
    })
    .boxed()
}

/// A body: mostly an object holding the keys the templates read, else any JSON value.
fn json_body(leaf: BoxedStrategy<String>) -> BoxedStrategy<Vec<u8>> {
    let value = json_value(leaf);
    prop_oneof![
        3 => prop::collection::vec((json_key(), value.clone()), 0..8).prop_map(object),
        1 => value,
    ]
    .prop_map(String::into_bytes)
    .boxed()
}

/// Bodies that are not JSON, or not quite: any bytes, and JSON with a few bytes put in
/// (invalid UTF-8 in a string, a stray quote, a truncation marker).
fn broken_body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..512),
        3 => (
            json_body(exact_scalar()),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        )
            .prop_map(|(mut body, edits)| {
                for (at, byte) in edits {
                    let i = at.index(body.len() + 1);
                    body.insert(i, byte);
                }
                body
            }),
    ]
    .boxed()
}

/// Depths around serde_json's limit: it reads at most 127 nested arrays and objects, and a
/// body's value sits two levels down in a record (`{"details":{"body":...}}`), so bodies 126
/// and 127 deep parse at capture but make records the writer cannot read.
fn depth() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => 0usize..=100,
        4 => 120usize..=130,
        1 => prop::sample::select(vec![200usize, 255, 256, 300]),
    ]
}

/// A body nested `depth` deep: arrays and `{"x": ...}` objects in any mix around a scalar, as
/// it is or under `x` of an object that also names it (so `{body/x}` and `when: {body: /x}`
/// read it).
fn deep_body() -> BoxedStrategy<Vec<u8>> {
    (
        depth(),
        prop::collection::vec(any::<bool>(), 300),
        exact_scalar(),
        any::<bool>(),
    )
        .prop_map(|(depth, arrays, leaf, under_x)| {
            let mut text = leaf;
            for &array in arrays.iter().take(depth) {
                text = if array {
                    format!("[{text}]")
                } else {
                    format!("{{\"x\":{text}}}")
                };
            }
            if under_x {
                text = format!("{{\"name\":\"Deep\",\"x\":{text}}}");
            }
            text.into_bytes()
        })
        .boxed()
}

/// Bytes percent-encoded for a URI: letters and digits as they are, everything else escaped
/// (`%2F` stays one segment, `%2E%2E` becomes `..` when the path is normalised).
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A path parameter's bytes: any (NUL, quotes, invalid UTF-8, `/`), or a plain id.
fn param() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 1..40).prop_map(|b| percent_encode(&b)),
        1 => "[a-z0-9]{1,12}",
        1 => prop::sample::select(vec!["%2E%2E", "%2e", "a%2Fb", "%00", "%22", "%5C"])
            .prop_map(str::to_owned),
    ]
}

/// A request target: the rules' paths with any parameters, another path, and a query.
fn uri() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        4 => param().prop_map(|id| format!("/v1/items/{id}")),
        2 => (param(), param()).prop_map(|(a, b)| format!("/v1/bulk/{a}/{b}")),
        1 => param().prop_map(|id| format!("/v1//items/./{id}/")),
        1 => param().prop_map(|p| format!("/other/{p}")),
    ];
    let query = prop::option::of(prop::collection::vec(
        (
            prop_oneof![3 => Just(b"q".to_vec()), 1 => prop::collection::vec(any::<u8>(), 0..4)],
            prop::collection::vec(any::<u8>(), 0..40),
        ),
        1..3,
    ));
    (path, query).prop_map(|(path, query)| match query {
        None => path,
        Some(pairs) => {
            let pairs: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
    })
}

/// URL-safe base64 without padding, as JWTs write it.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Header values of any bytes (those `http` refuses are dropped), and a bearer token whose
/// `sub` claim is any JSON value: the actor templates read `jwt/sub` and `header.X-User-Id`,
/// the details `User-Agent`.
fn headers(sub: BoxedStrategy<String>) -> impl Strategy<Value = Vec<(http::HeaderName, Bytes)>> {
    let value = || {
        prop_oneof![
            2 => prop::collection::vec(any::<u8>(), 0..40),
            1 => "[ -~]{0,40}".prop_map(String::into_bytes),
        ]
    };
    (
        prop::option::of(value()),
        prop::option::of(value()),
        prop::option::of(sub),
        prop::option::of(value()),
    )
        .prop_map(|(agent, user, sub, request_id)| {
            let mut out = Vec::new();
            if let Some(agent) = agent {
                out.push((http::header::USER_AGENT, Bytes(agent)));
            }
            if let Some(user) = user {
                out.push((http::HeaderName::from_static("x-user-id"), Bytes(user)));
            }
            if let Some(sub) = sub {
                let claims = format!("{{\"sub\":{sub}}}");
                let token = format!("Bearer e30.{}.sig", base64url(claims.as_bytes()));
                out.push((http::header::AUTHORIZATION, Bytes(token.into_bytes())));
            }
            if let Some(id) = request_id {
                out.push((http::HeaderName::from_static("x-request-id"), Bytes(id)));
            }
            out
        })
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..40).prop_map(|c| c.into_iter().collect::<String>())
}

/// A whole call whose bodies come from `body`.
fn input(body: BoxedStrategy<Vec<u8>>, sub: BoxedStrategy<String>) -> impl Strategy<Value = Input> {
    let methods = vec![
        http::Method::POST,
        http::Method::PUT,
        http::Method::PATCH,
        http::Method::DELETE,
        http::Method::GET,
    ];
    let outcomes = vec![
        Outcome::Success,
        Outcome::Failure,
        Outcome::Error,
        Outcome::Aborted,
    ];
    (
        prop_oneof![
            6 => prop::sample::select(methods),
            // A lower-case method is audited as the upper-case one.
            1 => Just(http::Method::from_bytes(b"delete").expect("a method")),
        ],
        uri(),
        headers(sub),
        prop::option::weighted(0.9, body.clone().prop_map(Bytes)),
        prop::option::weighted(0.7, body.prop_map(Bytes)),
        prop::option::of(any::<u16>()),
        prop::option::weighted(0.2, prop::sample::select(outcomes)),
        prop::option::of(text()),
        prop::option::of(text()),
        // Up to a day: a call's duration, in microseconds.
        0u64..86_400_000_000,
        text(),
        any::<u64>(),
    )
        .prop_map(
            |(
                method,
                uri,
                headers,
                request_body,
                response_body,
                status,
                outcome,
                client_ip,
                request_id,
                duration_micros,
                instance,
                seq,
            )| Input {
                method,
                uri,
                headers,
                request_body,
                response_body,
                status,
                outcome,
                client_ip,
                request_id,
                duration_micros,
                instance,
                seq,
            },
        )
}

proptest! {
    #![proptest_config(config(128))]

    /// Bodies of any bytes, JSON or not quite: no panic, and the record round-trips. Most of
    /// these are no JSON, so `body/` sources yield nothing: what is left (path, query and
    /// header values, any bytes percent-decoded, lossily read) must still be written so that it
    /// reads back.
    #[test]
    fn records_of_arbitrary_bodies_round_trip(call in input(broken_body(), exact_scalar())) {
        check_round_trip(&call)?;
    }

    /// JSON bodies of any shape (nested up to 6 deep) holding strings of any characters and
    /// length, whole numbers of any size, nulls and booleans, copied into details, resources,
    /// descriptions and the actor: the record round-trips exactly.
    #[test]
    fn records_of_json_bodies_round_trip(
        call in input(json_body(exact_scalar()), json_value(exact_scalar())),
    ) {
        check_round_trip(&call)?;
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Bodies nested around serde_json's limit of 127 levels (and beyond it): every record
    /// the producer emits must parse. A body too deep to parse yields nothing, which is fine;
    /// a body that parses but is copied whole into `details` nests two levels deeper in the
    /// record, and serde_json on the writer's side then refuses the whole record. The fix is
    /// at capture (cut what a template copies before it nears the limit), not here.
    #[test]
    fn records_of_deeply_nested_bodies_round_trip(call in input(deep_body(), exact_scalar())) {
        check_round_trip(&call)?;
    }

    /// Bodies with floating-point numbers, as browsers and SDKs send them: a record that
    /// copies one must read back with the same number. The producer writes the shortest
    /// digits that name the `f64` exactly; serde_json without its `float_roundtrip` feature
    /// reads some of those digits back one unit in the last place off, and the writer then
    /// holds a record that differs from what was audited.
    #[test]
    fn records_of_bodies_with_floats_round_trip(
        call in input(
            json_body(prop_oneof![1 => exact_scalar(), 2 => float_literal()].boxed()),
            float_literal(),
        ),
    ) {
        check_round_trip(&call)?;
    }
}
