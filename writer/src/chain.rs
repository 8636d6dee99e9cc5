//! The evidence the writer keeps: every stored record is a link of a hash chain, and the
//! chain's head is signed, now and then, in a checkpoint an auditor can keep elsewhere.
//!
//! - Each stored record carries `chain: {uid, seq, prev, hash}`: `uid` names the writer
//!   instance whose chain it is (several writers each keep one), `seq` counts from 1 in commit
//!   order, `prev` is the hash of the link before (64 zeros before the first), and
//!   `hash = SHA-256(prev ‖ canonical JSON of the record without its chain)`, where `prev` is
//!   its 32 bytes and the canonical JSON is RFC 8785 (JCS): members sorted by their UTF-16
//!   code units, no whitespace, numbers as ECMAScript prints them. Any reader can recompute it.
//! - A checkpoint is a C2SP `tlog-checkpoint`: origin `auditgate/UID`, the chain's length,
//!   its last hash (base64), a `time` extension line, and a C2SP signed-note Ed25519 signature.
//!   One with a `retention` line also says that every link up to its length may be gone.
//!
//! ```
//! use auditgate_writer::chain::{self, Link, SigningKey, VerifierKey};
//!
//! // The canonical form sorts members and drops whitespace.
//! let canonical = chain::Canonical::of(r#"{"b": 1.50, "a": [true, null, "é\n"]}"#).unwrap();
//! assert_eq!(canonical.text(), r#"{"a":[true,null,"é\n"],"b":1.5}"#);
//!
//! // The first link of a chain, and the record as stored.
//! let link = Link::after(None, "writer-1", canonical.text().as_bytes());
//! assert_eq!(link.seq, 1);
//! // Stored as it arrived, with its link added.
//! let stored = canonical.chained(&link);
//! assert!(stored.starts_with(r#"{"b": 1.50, "a": [true, null, "é\n"],"chain":{"hash":""#));
//! assert_eq!(chain::Stored::parse(&stored).unwrap().recomputed, link.hash);
//!
//! // A signed checkpoint of the chain's head, opened with the public key.
//! let (private, public) = chain::generate_key("auditgate-example").unwrap();
//! let signer = SigningKey::parse(&private).unwrap();
//! let note = signer.sign(&chain::Checkpoint::of(&link, chrono::Utc::now(), false));
//! let checkpoint = VerifierKey::parse(&public).unwrap().open(&note).unwrap();
//! assert_eq!((checkpoint.uid.as_str(), checkpoint.size), ("writer-1", 1));
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev` of a chain's first link.
pub const GENESIS: [u8; 32] = [0; 32];

/// Why a record, a key or a checkpoint cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// The record's JSON is not a JSON object.
    #[error("the record is not a JSON object: {0}")]
    NotAnObject(String),
    /// The record carries no `chain`, or one that does not read.
    #[error("the record's chain field is missing or malformed")]
    NoChain,
    /// A key file that does not read.
    #[error("not an auditgate key: {0}")]
    Key(String),
    /// A checkpoint that does not read, or whose signature does not hold.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

/// One link: where a record stands in its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The chain: the writer instance that made it.
    pub uid: String,
    /// The link's place, from 1.
    pub seq: u64,
    /// The hash of the link before ([`GENESIS`] before the first).
    pub prev: [u8; 32],
    /// `SHA-256(prev ‖ canonical record)`.
    pub hash: [u8; 32],
}

impl Link {
    /// The link after `head` (`None`: the chain's first) for a record whose canonical JSON is
    /// `canonical`.
    pub fn after(head: Option<(u64, [u8; 32])>, uid: &str, canonical: &[u8]) -> Link {
        let (seq, prev) = head.unwrap_or((0, GENESIS));
        Link {
            uid: uid.to_owned(),
            seq: seq + 1,
            prev,
            hash: entry_hash(&prev, canonical),
        }
    }

    /// The `chain` member's canonical JSON.
    fn json(&self) -> String {
        format!(
            r#"{{"hash":"{}","prev":"{}","seq":{},"uid":{}}}"#,
            hex(&self.hash),
            hex(&self.prev),
            self.seq,
            Value::String(self.uid.clone())
        )
    }
}

/// `SHA-256(prev ‖ canonical)`.
pub fn entry_hash(prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut sha = Sha256::new();
    sha.update(prev);
    sha.update(canonical);
    sha.finalize().into()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// 64 hex digits as 32 bytes.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).filter(|_| !c.is_ascii_uppercase());
        out[i] = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
    }
    Some(out)
}

/// A record's canonical JSON without its `chain`, and where a `chain` member goes in it.
#[derive(Debug, Clone)]
pub struct Canonical {
    text: String,
    /// Byte offset of the first top-level member that sorts after `chain`, or of the closing
    /// brace.
    chain_at: usize,
    /// The JSON as it arrived, when it holds no `chain` of its own: the record is stored as
    /// that text with its chain added, so that what the producer wrote is served unchanged.
    source: Option<String>,
}

impl Canonical {
    /// Parses a record's JSON and writes it canonically, leaving out any `chain` it holds.
    pub fn of(json: &str) -> Result<Canonical, ChainError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| ChainError::NotAnObject(e.to_string()))?;
        let mut canonical = Canonical::of_value(&value)?;
        if value.get("chain").is_none() {
            canonical.source = Some(json.trim().to_owned());
        }
        Ok(canonical)
    }

    /// [`Canonical::of`] for a parsed record.
    pub fn of_value(value: &Value) -> Result<Canonical, ChainError> {
        let Value::Object(members) = value else {
            return Err(ChainError::NotAnObject(
                "a JSON value of another kind".into(),
            ));
        };
        let mut keys: Vec<&String> = members.keys().filter(|k| *k != "chain").collect();
        keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
        let mut text = String::with_capacity(1024);
        text.push('{');
        let mut chain_at = None;
        for (i, key) in keys.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            if chain_at.is_none() && key.encode_utf16().cmp("chain".encode_utf16()).is_gt() {
                chain_at = Some(text.len());
            }
            write_string(&mut text, key);
            text.push(':');
            write_value(&mut text, &members[key.as_str()]);
        }
        let chain_at = chain_at.unwrap_or(text.len());
        text.push('}');
        Ok(Canonical {
            text,
            chain_at,
            source: None,
        })
    }

    /// The canonical JSON (what the hash covers).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The record as stored: the JSON as it arrived with `chain` added last (or, for a record
    /// that came with a `chain` of its own, the canonical JSON with `chain` in its place).
    pub fn chained(&self, link: &Link) -> String {
        let member = format!(r#""chain":{}"#, link.json());
        if let Some(source) = &self.source
            && let Some(body) = source.strip_suffix('}')
        {
            let empty = body.trim_end() == "{";
            return format!("{body}{}{member}}}", if empty { "" } else { "," });
        }
        let (before, after) = self.text.split_at(self.chain_at);
        let mut out = String::with_capacity(self.text.len() + member.len() + 2);
        out.push_str(before);
        if before.len() > 1 && !before.ends_with(',') {
            out.push(',');
        }
        out.push_str(&member);
        if after != "}" {
            out.push(',');
        }
        out.push_str(after);
        out
    }
}

/// A stored record, read back: the link it claims and the hash its content gives.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The `chain` member as stored.
    pub link: Link,
    /// `SHA-256(link.prev ‖ canonical record)`: equal to `link.hash` unless the record changed.
    pub recomputed: [u8; 32],
    /// The record without its chain, parsed.
    pub record: Value,
}

impl Stored {
    /// Reads a stored record's chain and recomputes its hash.
    pub fn parse(json: &str) -> Result<Stored, ChainError> {
        let mut record: Value =
            serde_json::from_str(json).map_err(|e| ChainError::NotAnObject(e.to_string()))?;
        let chain = record
            .as_object_mut()
            .ok_or_else(|| ChainError::NotAnObject("a JSON value of another kind".into()))?
            .remove("chain")
            .ok_or(ChainError::NoChain)?;
        let text = |name: &str| chain.get(name).and_then(Value::as_str);
        let link = Link {
            uid: text("uid").ok_or(ChainError::NoChain)?.to_owned(),
            seq: chain
                .get("seq")
                .and_then(Value::as_u64)
                .ok_or(ChainError::NoChain)?,
            prev: text("prev").and_then(unhex32).ok_or(ChainError::NoChain)?,
            hash: text("hash").and_then(unhex32).ok_or(ChainError::NoChain)?,
        };
        let canonical = Canonical::of_value(&record)?;
        Ok(Stored {
            recomputed: entry_hash(&link.prev, canonical.text.as_bytes()),
            link,
            record,
        })
    }
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&es_number(n)),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut keys: Vec<&String> = members.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, &members[key.as_str()]);
            }
            out.push('}');
        }
    }
}

/// JSON.stringify's string form, which JCS takes: `"` and `\` escaped, the two-letter escapes
/// for `\b \f \n \r \t`, `\u00xx` (lower case) for the other control characters, and
/// everything else as it is. serde_json writes exactly that.
fn write_string(out: &mut String, s: &str) {
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// A number as ECMAScript's `Number.prototype.toString` prints its double (RFC 8785 §3.2.2.3):
/// the shortest digits that read back, as an integer up to 21 digits, as a decimal fraction down
/// to 1e-6, and with an exponent beyond.
pub fn es_number(n: &serde_json::Number) -> String {
    // A number beyond a double's range (`1e400`, which a client may send) has no ECMAScript
    // form; RFC 8785 cannot hold it. It stays as written, so that it is still covered.
    let Some(x) = n.as_f64().filter(|x| x.is_finite()) else {
        return n.to_string();
    };
    if x == 0.0 {
        return "0".to_owned();
    }
    // Rust's `{:e}` is the shortest round-trip form: `d.ddde±x`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32;
    let n = exponent.parse::<i32>().unwrap_or(0) + 1; // value = 0.digits × 10^n
    let mut out = String::new();
    if x < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        out.push_str(&(n - 1).abs().to_string());
    }
    out
}

/// The signed-note algorithm byte of Ed25519.
const ED25519: u8 = 1;

/// A key name as signed notes allow it: no space, no `+`, not empty.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The 4-byte key id of a signed note: `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)[..4]`.
fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let mut sha = Sha256::new();
    sha.update(name.as_bytes());
    sha.update(b"\n");
    sha.update([ED25519]);
    sha.update(public);
    let digest = sha.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// A new Ed25519 key pair named `name`, as the text of its two files: the private key
/// (`PRIVATE+KEY+NAME+ID+BASE64`) and the verifier key (`NAME+ID+BASE64`), the formats of Go's
/// `golang.org/x/mod/sumdb/note`.
pub fn generate_key(name: &str) -> Result<(String, String), ChainError> {
    use ring::rand::SecureRandom;
    if !valid_name(name) {
        return Err(ChainError::Key(format!(
            "the name {name:?} holds a space or a +, or is empty"
        )));
    }
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| ChainError::Key("the system gave no random bytes".into()))?;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|_| ChainError::Key("cannot make a key from the seed".into()))?;
    let public = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec();
    let id = hex(&key_id(name, &public));
    let encode = |key: &[u8]| BASE64.encode([&[ED25519][..], key].concat());
    Ok((
        format!("PRIVATE+KEY+{name}+{id}+{}\n", encode(&seed)),
        format!("{name}+{id}+{}\n", encode(&public)),
    ))
}

/// Splits `NAME+ID+BASE64` into its name, id and key bytes (without the algorithm byte).
fn key_parts(text: &str) -> Result<(String, [u8; 4], Vec<u8>), ChainError> {
    let mut parts = text.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ChainError::Key("expected NAME+ID+KEY".into()));
    };
    let bytes = BASE64
        .decode(key)
        .map_err(|_| ChainError::Key("the key is not base64".into()))?;
    match bytes.split_first() {
        Some((&ED25519, key)) if key.len() == 32 => {}
        _ => return Err(ChainError::Key("not a 32-byte Ed25519 key".into())),
    }
    let id: [u8; 4] = u32::from_str_radix(id, 16)
        .map_err(|_| ChainError::Key("the key id is not 8 hex digits".into()))?
        .to_be_bytes();
    Ok((name.to_owned(), id, bytes[1..].to_vec()))
}

/// The private key that signs checkpoints (`signing_key_file`).
pub struct SigningKey {
    name: String,
    id: [u8; 4],
    pair: ring::signature::Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a private key file's text (`PRIVATE+KEY+NAME+ID+BASE64`).
    pub fn parse(text: &str) -> Result<SigningKey, ChainError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| ChainError::Key("a private key starts with PRIVATE+KEY+".into()))?;
        let (name, id, seed) = key_parts(rest)?;
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| ChainError::Key("not an Ed25519 seed".into()))?;
        let public = ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec();
        if key_id(&name, &public) != id {
            return Err(ChainError::Key("the key id does not match the key".into()));
        }
        Ok(SigningKey { name, id, pair })
    }

    /// The verifier key of this key (what `FILE.pub` holds).
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            id: self.id,
            public: ring::signature::KeyPair::public_key(&self.pair)
                .as_ref()
                .to_vec(),
        }
    }

    /// The signed note of `checkpoint`.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let signature = self.pair.sign(body.as_bytes());
        let blob = [&self.id[..], signature.as_ref()].concat();
        format!("{body}\n\u{2014} {} {}\n", self.name, BASE64.encode(blob))
    }
}

/// The public key an auditor verifies with (`NAME+ID+BASE64`, `FILE.pub` of `auditgate keygen`).
#[derive(Debug, Clone)]
pub struct VerifierKey {
    name: String,
    id: [u8; 4],
    public: Vec<u8>,
}

impl VerifierKey {
    /// Reads a verifier key file's text.
    pub fn parse(text: &str) -> Result<VerifierKey, ChainError> {
        if text.trim_start().starts_with("PRIVATE+KEY+") {
            return Err(ChainError::Key(
                "this is the private key; verify takes FILE.pub".into(),
            ));
        }
        let (name, id, public) = key_parts(text)?;
        if key_id(&name, &public) != id {
            return Err(ChainError::Key("the key id does not match the key".into()));
        }
        Ok(VerifierKey { name, id, public })
    }

    /// Checks a signed checkpoint and reads it.
    pub fn open(&self, note: &str) -> Result<Checkpoint, ChainError> {
        let bad = |why: &str| ChainError::Checkpoint(why.to_owned());
        let (body, signatures) = note
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the signatures"))?;
        let body = format!("{body}\n");
        let mut signed = false;
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(bad("a signature line starts with an em dash"));
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                return Err(bad("a signature line is NAME SIGNATURE"));
            };
            let blob = BASE64
                .decode(blob)
                .map_err(|_| bad("a signature is not base64"))?;
            if name != self.name || blob.len() != 68 || blob[..4] != self.id {
                continue; // another key's signature
            }
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.public)
                .verify(body.as_bytes(), &blob[4..])
                .map_err(|_| bad("the signature does not verify: the checkpoint was altered"))?;
            signed = true;
        }
        if !signed {
            return Err(bad(&format!("not signed by the key {}", self.name)));
        }
        Checkpoint::parse_body(&body)
    }
}

/// A chain's state at one moment, as a checkpoint says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The chain.
    pub uid: String,
    /// Its length: the `seq` of its last link.
    pub size: u64,
    /// The last link's hash.
    pub hash: [u8; 32],
    /// When it was signed.
    pub time: DateTime<Utc>,
    /// Signed for retention: every link up to `size` may have been deleted.
    pub retention: bool,
}

impl Checkpoint {
    /// The checkpoint of a chain whose last link is `link`.
    pub fn of(link: &Link, time: DateTime<Utc>, retention: bool) -> Checkpoint {
        Checkpoint {
            uid: link.uid.clone(),
            size: link.seq,
            hash: link.hash,
            time,
            retention,
        }
    }

    /// The note's text before the signatures: origin, size, hash, extension lines.
    fn body(&self) -> String {
        format!(
            "auditgate/{}\n{}\n{}\ntime {}\n{}",
            self.uid,
            self.size,
            BASE64.encode(self.hash),
            self.time.to_rfc3339_opts(SecondsFormat::Micros, true),
            if self.retention { "retention\n" } else { "" }
        )
    }

    fn parse_body(body: &str) -> Result<Checkpoint, ChainError> {
        let bad = |why: &str| ChainError::Checkpoint(why.to_owned());
        let mut lines = body.lines();
        let uid = lines
            .next()
            .and_then(|l| l.strip_prefix("auditgate/"))
            .ok_or_else(|| bad("the origin line is not auditgate/UID"))?;
        let size = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| bad("the second line is not the chain's length"))?;
        let hash: [u8; 32] = lines
            .next()
            .and_then(|l| BASE64.decode(l).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("the third line is not a base64 SHA-256"))?;
        let (mut time, mut retention) = (None, false);
        for line in lines {
            if let Some(t) = line.strip_prefix("time ") {
                time = DateTime::parse_from_rfc3339(t)
                    .ok()
                    .map(|t| t.with_timezone(&Utc));
            } else if line == "retention" {
                retention = true;
            }
        }
        Ok(Checkpoint {
            uid: uid.to_owned(),
            size,
            hash,
            time: time.ok_or_else(|| bad("no time line"))?,
            retention,
        })
    }

    /// The file name it is kept under in `checkpoint_dir`: chain, length, and whether it is a
    /// retention cut, so a directory listing reads in order.
    pub fn file_name(&self) -> String {
        let uid: String = self
            .uid
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!(
            "{uid}.{:012}{}.checkpoint",
            self.size,
            if self.retention { ".retention" } else { "" }
        )
    }
}

/// A chain's uid as the writer takes it from its config: one line, no `/` trickery needed.
pub fn valid_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 200 && !uid.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_ecmascript_does() {
        // RFC 8785 appendix B's table, and the values records hold.
        for (json, es) in [
            ("0", "0"),
            ("-0", "0"),
            ("1", "1"),
            ("3.21", "3.21"),
            ("1.50", "1.5"),
            ("100", "100"),
            ("1e21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("123456789012345680000", "123456789012345680000"),
            ("0.000001", "0.000001"),
            ("0.0000001", "1e-7"),
            ("-5e-324", "-5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("9007199254740993", "9007199254740992"),
            ("295147905179352830000", "295147905179352830000"),
            ("4.50", "4.5"),
            ("2e-3", "0.002"),
            ("333333333.33333329", "333333333.3333333"),
        ] {
            let n: serde_json::Number = serde_json::from_str(json).unwrap();
            assert_eq!(es_number(&n), es, "{json}");
        }
    }

    #[test]
    fn members_sort_by_utf16_code_units() {
        // RFC 8785 §3.2.3: "\u{10000}" (surrogates D800 DC00) sorts before "\u{ff61}".
        let c = Canonical::of(r#"{"｡":1,"𐀀":2,"a":3,"\r":4,"ö":5}"#).unwrap();
        assert_eq!(c.text(), "{\"\\r\":4,\"a\":3,\"ö\":5,\"𐀀\":2,\"｡\":1}");
    }

    #[test]
    fn strings_escape_as_json_stringify() {
        let c = Canonical::of(r#"{"s":"\u001f\u007f\u2028/\"\\\b\f"}"#).unwrap();
        assert_eq!(c.text(), "{\"s\":\"\\u001f\u{7f}\u{2028}/\\\"\\\\\\b\\f\"}");
    }

    #[test]
    fn the_chain_member_goes_in_its_sorted_place() {
        let link = Link::after(None, "w", b"x");
        for (json, prefix) in [
            ("{}", "{\"chain\":"),
            (r#"{"a":1}"#, "{\"a\":1,\"chain\":"),
            (r#"{"z":1}"#, "{\"chain\":"),
            (r#"{"a":1,"z":2,"chain":"forged"}"#, "{\"a\":1,\"chain\":"),
        ] {
            let value: Value = serde_json::from_str(json).unwrap();
            let stored = Canonical::of_value(&value).unwrap().chained(&link);
            assert!(stored.starts_with(prefix), "{stored}");
            let value: Value = serde_json::from_str(&stored).unwrap();
            assert_eq!(value["chain"]["uid"], "w");
            // What the hash covers reads back from the stored record.
            let without: Value = serde_json::from_str(json).unwrap();
            assert_eq!(
                Canonical::of(&stored).unwrap().text(),
                Canonical::of_value(&without).unwrap().text()
            );
        }
    }

    #[test]
    fn a_record_is_stored_as_it_arrived_with_its_link_added() {
        let link = Link::after(None, "w", b"x");
        let json = r#"{"z": 1, "big": 1e400, "n": 9007199254740993}"#;
        let stored = Canonical::of(json).unwrap().chained(&link);
        assert!(stored.starts_with(r#"{"z": 1, "big": 1e400, "n": 9007199254740993,"chain":"#));
        let value: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(value["big"].to_string(), "1e+400");
        assert_eq!(
            Canonical::of("{}")
                .unwrap()
                .chained(&link)
                .find("\"chain\""),
            Some(1)
        );
        // A record that came with a chain of its own is stored canonically, without it.
        let forged = Canonical::of(r#"{"a":1,"chain":"forged"}"#)
            .unwrap()
            .chained(&link);
        assert!(forged.starts_with(r#"{"a":1,"chain":{"hash""#), "{forged}");
    }

    #[test]
    fn a_changed_record_no_longer_gives_its_hash() {
        let c = Canonical::of(r#"{"actor":{"id":"alice"},"operation":"asset.delete"}"#).unwrap();
        let link = Link::after(Some((41, [7; 32])), "w", c.text().as_bytes());
        assert_eq!(link.seq, 42);
        let stored = c.chained(&link);
        assert_eq!(Stored::parse(&stored).unwrap().recomputed, link.hash);
        let forged = stored.replace("alice", "mallory");
        let read = Stored::parse(&forged).unwrap();
        assert_eq!(read.link, link);
        assert_ne!(read.recomputed, link.hash);
    }

    #[test]
    fn a_checkpoint_holds_only_under_its_key() {
        let (private, public) = generate_key("auditgate-test").unwrap();
        let (_, other) = generate_key("auditgate-test").unwrap();
        let signer = SigningKey::parse(&private).unwrap();
        let link = Link::after(None, "writer a", b"{}");
        let note = signer.sign(&Checkpoint::of(&link, Utc::now(), true));
        assert!(note.starts_with("auditgate/writer a\n1\n"), "{note}");
        let opened = VerifierKey::parse(&public).unwrap().open(&note).unwrap();
        assert_eq!(
            (opened.size, opened.hash, opened.retention),
            (1, link.hash, true)
        );
        assert!(VerifierKey::parse(&other).unwrap().open(&note).is_err());
        let altered = note.replacen("\n1\n", "\n2\n", 1);
        assert!(matches!(
            VerifierKey::parse(&public).unwrap().open(&altered),
            Err(ChainError::Checkpoint(why)) if why.contains("altered")
        ));
        assert!(
            VerifierKey::parse(&private).is_err(),
            "the private key is refused"
        );
    }
}
