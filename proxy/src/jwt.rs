//! Bearer-token verification for `jwt/` templates, with the `jsonwebtoken` crate: HS256 with a
//! shared secret, and the public-key algorithms of a JWKS file (RS256/384/512, PS256/384/512,
//! ES256, ES384, EdDSA).
//!
//! ```yaml
//! jwt:
//!   hs256_secret_file: ./jwt.secret   # HS256 tokens
//!   jwks_file: ./jwks.json            # {"keys": [...]} as an identity provider publishes it
//!   issuer: https://id.example.com    # optional: `iss` must be this (or one of a list)
//!   audience: [orders-api]            # optional: `aud` must name this (or one of a list)
//! ```
//!
//! A token's claims fill `jwt/` templates only when all of these hold. A token that fails one
//! is refused, and its record says why, as `actor.source: "jwt rejected: REASON"` with one of
//! these fixed reasons (never text from the token):
//!
//! - It is a JWS in three base64url parts, a JSON header and JSON claims, of at most 16 KiB;
//!   else `malformed`. Claims that `jsonwebtoken` cannot read are malformed too: a `sub` that
//!   is an object or a list, or one of `exp`, `nbf`, `sub`, `iss`, `aud` given twice.
//! - A configured key is for its `alg`: HS256 with `hs256_secret_file`; a JWKS key for the
//!   algorithms of its type (RSA: RS256/384/512, PS256/384/512; EC P-256: ES256; EC P-384:
//!   ES384; OKP Ed25519: EdDSA), and only for its own `alg` when the key names one. `none`,
//!   HS384, HS512 and an HMAC check with a public key never are: else `algorithm not allowed`.
//! - One of the keys for that `alg` has its `kid` (a token or a key without `kid` matches
//!   any): else `unknown key`.
//! - Its signature checks out with such a key: else `bad signature`.
//! - `exp` and `nbf`, when present, are numbers (else `exp is not a number`, `nbf is not a
//!   number`) and hold, with 60 s of leeway for clock skew: else `expired`, `not yet valid`.
//!   A token without `exp` does not expire.
//! - With `issuer`: its `iss` is a string, one of them; else, and when it has no `iss`,
//!   `wrong issuer`.
//! - With `audience`: its `aud` (a string or a list) names one of them; else, and when it has
//!   no `aud`, `wrong audience`. Without `audience`, `aud` is not looked at.
//! - Its claims are a JSON object: else `claims are not an object`.
//!
//! A request without an `Authorization: Bearer` token is not a refusal; either way no actor is
//! taken from a token nobody vouched for.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::ProxyError;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: f64 = 60.0;

/// Longer tokens are refused unread, as `malformed`: identity providers issue far shorter ones,
/// and a longer one would only cost decoding work.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

const MALFORMED: &str = "malformed";
const UNKNOWN_KEY: &str = "unknown key";
const ALGORITHM_NOT_ALLOWED: &str = "algorithm not allowed";
const BAD_SIGNATURE: &str = "bad signature";
const EXPIRED: &str = "expired";
const NOT_YET_VALID: &str = "not yet valid";
const EXP_NOT_A_NUMBER: &str = "exp is not a number";
const NBF_NOT_A_NUMBER: &str = "nbf is not a number";
const WRONG_ISSUER: &str = "wrong issuer";
const WRONG_AUDIENCE: &str = "wrong audience";
const NOT_AN_OBJECT: &str = "claims are not an object";

/// The algorithms of each key type this proxy reads from a JWKS file.
const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const P256_ALGORITHMS: &[Algorithm] = &[Algorithm::ES256];
const P384_ALGORITHMS: &[Algorithm] = &[Algorithm::ES384];
const ED25519_ALGORITHMS: &[Algorithm] = &[Algorithm::EdDSA];

/// What a request's bearer token says about its caller.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// No `Authorization: Bearer` token.
    NoToken,
    /// A configured key vouches for it, and it is within its validity.
    Verified(serde_json::Value),
    /// A token was sent and refused; the reason is short and fixed (it goes into the record as
    /// `actor.source: "jwt rejected: REASON"`), never text from the token.
    Rejected(&'static str),
}

/// Checks bearer tokens against the configured keys.
#[derive(Default)]
pub(crate) struct Verifier {
    hs256: Option<DecodingKey>,
    keys: Vec<PublicKey>,
    validations: Validations,
}

/// One public key of a JWKS file.
struct PublicKey {
    kid: Option<String>,
    /// The algorithms this key verifies: those of its type, or only its own `alg` when the
    /// file names one.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// What `jsonwebtoken` checks besides the signature, once per key family: its `decode` refuses
/// a key whose family differs from any algorithm the `Validation` lists.
struct Validations {
    hmac: Validation,
    rsa: Validation,
    ec: Validation,
    ed: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.as_ref().map(|_| "<redacted>"))
            .field("public_keys", &self.keys.len())
            .field("issuer", &self.validations.hmac.iss)
            .field("audience", &self.validations.hmac.aud)
            .finish()
    }
}

/// A JWKS file as identity providers publish it.
#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// One key of a JWKS file, read leniently: a key this proxy does not use is skipped or named in
/// an error, instead of failing the whole file as `jsonwebtoken::jwk::JwkSet` would.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// A key file that cannot be read.
fn unreadable(path: &Path) -> impl FnOnce(std::io::Error) -> ProxyError + '_ {
    move |e| bad_key(path, e.to_string())
}

fn bad_key(path: &Path, message: String) -> ProxyError {
    ProxyError::Jwt {
        path: path.to_owned(),
        message,
    }
}

/// Why a JWKS document cannot be used; the caller adds the file's name.
type JwksProblem = String;

impl Verifier {
    /// Reads the key files a `jwt:` config names, and takes its `issuer` and `audience`; the
    /// error names the file.
    pub(crate) fn load(config: &crate::config::JwtConfig) -> Result<Verifier, ProxyError> {
        let mut verifier = Verifier::from_files(
            config.hs256_secret_file.as_deref(),
            config.jwks_file.as_deref(),
        )?;
        verifier.validations =
            Validations::new(config.issuer.as_deref(), config.audience.as_deref());
        Ok(verifier)
    }

    /// Reads the HS256 secret file and the JWKS file, whichever are given.
    pub(crate) fn from_files(
        hs256_secret_file: Option<&Path>,
        jwks_file: Option<&Path>,
    ) -> Result<Verifier, ProxyError> {
        let mut verifier = Verifier::default();
        if let Some(path) = hs256_secret_file {
            let secret = auditgate_rules::read_key_file(path).map_err(unreadable(path))?;
            if secret.is_empty() {
                return Err(bad_key(
                    path,
                    "it is empty: put the HS256 secret in it".into(),
                ));
            }
            verifier.hs256 = Some(DecodingKey::from_secret(&secret));
        }
        if let Some(path) = jwks_file {
            let text = std::fs::read(path).map_err(unreadable(path))?;
            verifier.keys = parse_jwks(&text).map_err(|message| bad_key(path, message))?;
        }
        Ok(verifier)
    }

    /// What the request's `Authorization: Bearer` token says about its caller.
    pub(crate) fn verify(&self, headers: &http::HeaderMap) -> Verdict {
        let Some(token) = auditgate_rules::bearer_token(headers) else {
            return Verdict::NoToken;
        };
        match self.check(token) {
            Ok(claims) => Verdict::Verified(claims),
            Err(reason) => Verdict::Rejected(reason),
        }
    }

    /// The claims of `token`, or why it is refused.
    fn check(&self, token: &str) -> Result<Value, &'static str> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(MALFORMED);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| header_refusal(token, &e))?;
        let alg = header.alg;
        if alg == Algorithm::HS256
            && let Some(secret) = &self.hs256
        {
            return self.decode(token, alg, std::iter::once(secret));
        }
        // Only keys for the token's own algorithm are tried: an HS256 token never meets a
        // public key, whose bytes an attacker knows.
        if self.keys_for(alg).next().is_none() {
            return Err(ALGORITHM_NOT_ALLOWED);
        }
        let kid = header.kid.as_deref();
        let named = self.keys_for(alg).filter(|k| k.answers_to(kid));
        let mut named = named.peekable();
        if named.peek().is_none() {
            return Err(UNKNOWN_KEY);
        }
        self.decode(token, alg, named.map(|k| &k.key))
    }

    /// The JWKS keys that verify `alg`.
    fn keys_for(&self, alg: Algorithm) -> impl Iterator<Item = &PublicKey> {
        self.keys
            .iter()
            .filter(move |key| key.algorithms.contains(&alg))
    }

    /// Decodes `token` with the first of `keys` whose signature it carries, and checks its
    /// claims.
    fn decode<'k>(
        &self,
        token: &str,
        alg: Algorithm,
        keys: impl Iterator<Item = &'k DecodingKey>,
    ) -> Result<Value, &'static str> {
        let validation = self.validations.for_algorithm(alg);
        for key in keys {
            match jsonwebtoken::decode::<Value>(token, key, validation) {
                Ok(data) => return checked_claims(data.claims, validation),
                // Keys without a `kid`, or rotated ones sharing it: another may have signed.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => return Err(refusal(token, &e)),
            }
        }
        Err(BAD_SIGNATURE)
    }
}

impl PublicKey {
    /// Whether a token naming key `kid` may be checked with this key.
    fn answers_to(&self, kid: Option<&str>) -> bool {
        match (kid, &self.kid) {
            (Some(wanted), Some(have)) => wanted == have,
            _ => true,
        }
    }
}

impl Default for Validations {
    fn default() -> Self {
        Validations::new(None, None)
    }
}

impl Validations {
    fn new(issuer: Option<&[String]>, audience: Option<&[String]>) -> Validations {
        let validation = |algorithms: &[Algorithm]| {
            let mut v = Validation::new(Algorithm::HS256);
            v.algorithms = algorithms.to_vec();
            // `check_times` checks `exp` and `nbf`, and `checked_claims` refuses a missing
            // `iss` or `aud` (in a fixed order: this set's is random), so none is required.
            v.validate_exp = false;
            v.validate_nbf = false;
            v.required_spec_claims.clear();
            if let Some(issuer) = issuer {
                v.set_issuer(issuer);
            }
            // Left on without a configured audience, `jsonwebtoken` refuses every token that
            // has an `aud`: this proxy records callers, it is not the token's audience.
            v.validate_aud = audience.is_some();
            if let Some(audience) = audience {
                v.set_audience(audience);
            }
            v
        };
        Validations {
            hmac: validation(&[Algorithm::HS256]),
            rsa: validation(RSA_ALGORITHMS),
            ec: validation(&[Algorithm::ES256, Algorithm::ES384]),
            ed: validation(&[Algorithm::EdDSA]),
        }
    }

    fn for_algorithm(&self, alg: Algorithm) -> &Validation {
        match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => &self.hmac,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => &self.rsa,
            Algorithm::ES256 | Algorithm::ES384 => &self.ec,
            Algorithm::EdDSA => &self.ed,
        }
    }
}

/// Why `decode_header` refused `token`: an `alg` that `jsonwebtoken` has no name for (`none`,
/// say) is not allowed; anything else is malformed.
fn header_refusal(token: &str, error: &JwtError) -> &'static str {
    #[derive(Deserialize)]
    struct Alg {
        alg: String,
    }
    // A JSON error means the header was base64url: the first of three parts.
    let unknown_alg = matches!(error.kind(), ErrorKind::Json(_))
        && token
            .split('.')
            .next()
            .and_then(|head| B64.decode(head).ok())
            .and_then(|json| serde_json::from_slice::<Alg>(&json).ok())
            .is_some_and(|head| head.alg.parse::<Algorithm>().is_err());
    if unknown_alg {
        ALGORITHM_NOT_ALLOWED
    } else {
        MALFORMED
    }
}

/// The reason for an error of `jsonwebtoken::decode`, once `decode_header` has read the header.
fn refusal(token: &str, error: &JwtError) -> &'static str {
    match error.kind() {
        ErrorKind::InvalidSignature => BAD_SIGNATURE,
        // Not raised while `check_times` does these checks; mapped all the same.
        ErrorKind::ExpiredSignature => EXPIRED,
        ErrorKind::ImmatureSignature => NOT_YET_VALID,
        ErrorKind::InvalidIssuer => WRONG_ISSUER,
        ErrorKind::InvalidAudience => WRONG_AUDIENCE,
        // The key family fits the algorithm by construction; kept for safety.
        ErrorKind::InvalidAlgorithm => ALGORITHM_NOT_ALLOWED,
        // The header was read before, so a JSON error is the claims', read after the
        // signature checked out. Some values of `exp` or `nbf` (a non-empty list or object)
        // make it stop reading the claims, instead of passing over the claim.
        ErrorKind::Json(_) => {
            let claims = token
                .split('.')
                .nth(1)
                .and_then(|payload| B64.decode(payload).ok())
                .and_then(|json| serde_json::from_slice::<Value>(&json).ok());
            match claims.as_ref().map(Value::as_object) {
                None => MALFORMED,
                Some(None) => NOT_AN_OBJECT,
                Some(Some(map)) => check_times(map).err().unwrap_or(MALFORMED),
            }
        }
        _ => MALFORMED,
    }
}

/// The checks `jsonwebtoken` leaves out, on claims it has accepted.
fn checked_claims(claims: Value, validation: &Validation) -> Result<Value, &'static str> {
    let Some(map) = claims.as_object() else {
        return Err(NOT_AN_OBJECT);
    };
    check_times(map)?;
    // `jsonwebtoken` compares `iss` and `aud` with the configured ones only when it can read
    // them, so a missing or unreadable one is refused here. It also takes a list as `iss` when
    // one of its members is configured; an issuer is one string (RFC 7519, 4.1.1).
    if validation.iss.is_some() && !map.get("iss").is_some_and(Value::is_string) {
        return Err(WRONG_ISSUER);
    }
    if validation.aud.is_some() && !map.get("aud").is_some_and(is_audience) {
        return Err(WRONG_AUDIENCE);
    }
    Ok(claims)
}

/// Whether `aud` is a string or a list of strings (RFC 7519, 4.1.3).
fn is_audience(aud: &Value) -> bool {
    match aud {
        Value::String(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        _ => false,
    }
}

/// `exp` and `nbf`, checked here rather than by `jsonwebtoken`: it reads them only as a u64,
/// and passes over any other value as if the claim were absent (a string, `null`, a negative
/// number, and, with serde_json's `arbitrary_precision`, which this workspace turns on, any
/// fraction).
fn check_times(claims: &serde_json::Map<String, Value>) -> Result<(), &'static str> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    if let Some(exp) = claims.get("exp") {
        let exp = seconds(exp).ok_or(EXP_NOT_A_NUMBER)?;
        if exp + LEEWAY_SECONDS < now {
            return Err(EXPIRED);
        }
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = seconds(nbf).ok_or(NBF_NOT_A_NUMBER)?;
        if nbf - LEEWAY_SECONDS > now {
            return Err(NOT_YET_VALID);
        }
    }
    Ok(())
}

/// A time claim in seconds since 1970; `None` when it is not a number. A number beyond an
/// f64 (serde_json keeps one with `arbitrary_precision`) is taken as an infinity of its sign.
fn seconds(value: &Value) -> Option<f64> {
    let number = value.as_number()?;
    Some(number.as_f64().unwrap_or_else(|| {
        if number.to_string().starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        }
    }))
}

/// A base64url member (`n`, `e`, `x`, `y`) of a JWK, without the padding some publishers add.
fn member<'a>(name: &str, value: Option<&'a str>, which: &str) -> Result<&'a str, JwksProblem> {
    let text = value
        .ok_or_else(|| format!("{name}: missing \"{which}\""))?
        .trim_end_matches('=');
    B64.decode(text)
        .map_err(|e| format!("{name}: \"{which}\" is not base64url: {e}"))?;
    Ok(text)
}

/// The public keys of a JWKS document. Keys for encryption (`use: enc`) are skipped; a key
/// this proxy cannot use (an unknown `kty` or curve, a missing member) is an error naming it,
/// so that a typo does not silently leave every token unverified.
fn parse_jwks(text: &[u8]) -> Result<Vec<PublicKey>, JwksProblem> {
    let set: JwkSet = serde_json::from_slice(text)
        .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    let mut keys = Vec::new();
    for (index, jwk) in set.keys.into_iter().enumerate() {
        if jwk.use_.as_deref() == Some("enc") {
            continue;
        }
        let name = match &jwk.kid {
            Some(kid) => format!("key {index} (kid {kid:?})"),
            None => format!("key {index}"),
        };
        let (key, algorithms) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("RSA", _) => (
                DecodingKey::from_rsa_components(
                    member(&name, jwk.n.as_deref(), "n")?,
                    member(&name, jwk.e.as_deref(), "e")?,
                ),
                RSA_ALGORITHMS,
            ),
            ("EC", Some(curve @ ("P-256" | "P-384"))) => (
                DecodingKey::from_ec_components(
                    member(&name, jwk.x.as_deref(), "x")?,
                    member(&name, jwk.y.as_deref(), "y")?,
                ),
                if curve == "P-256" {
                    P256_ALGORITHMS
                } else {
                    P384_ALGORITHMS
                },
            ),
            ("OKP", Some("Ed25519")) => (
                DecodingKey::from_ed_components(member(&name, jwk.x.as_deref(), "x")?),
                ED25519_ALGORITHMS,
            ),
            ("oct", _) => {
                return Err(format!(
                    "{name}: symmetric (\"oct\") keys are not read from the JWKS file; put an HS256 secret in jwt.hs256_secret_file"
                ));
            }
            (kty, crv) => {
                return Err(format!(
                    "{name}: unsupported key type {kty:?}{}: use RSA, EC (P-256, P-384) or OKP (Ed25519)",
                    crv.map(|c| format!(" with curve {c:?}"))
                        .unwrap_or_default()
                ));
            }
        };
        let key = key.map_err(|e| format!("{name}: {e}"))?;
        let algorithms = match &jwk.alg {
            None => algorithms.to_vec(),
            Some(alg) => match alg.parse::<Algorithm>() {
                Ok(alg) if algorithms.contains(&alg) => vec![alg],
                _ => {
                    let names: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
                    return Err(format!(
                        "{name}: \"alg\": {alg:?} does not fit a {} key (use one of {})",
                        jwk.kty,
                        names.join(", ")
                    ));
                }
            },
        };
        keys.push(PublicKey {
            kid: jwk.kid,
            algorithms,
            key,
        });
    }
    if keys.is_empty() {
        return Err("no signing keys in it".to_owned());
    }
    Ok(keys)
}

/// `jwt.issuer` in the config: one issuer, or a list of them.
pub(crate) fn issuers<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    one_or_many(
        d,
        "issuer: https://id.example.com, or issuer: [https://a.example, https://b.example]",
    )
}

/// `jwt.audience` in the config: one audience, or a list of them.
pub(crate) fn audiences<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    one_or_many(
        d,
        "audience: orders-api, or audience: [orders-api, admin-api]",
    )
}

/// A string, or a list of them; `example` says how to write one in an error.
fn one_or_many<'de, D: Deserializer<'de>>(
    d: D,
    example: &str,
) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(one)) => Ok(Some(vec![one])),
        Ok(OneOrMany::Many(many)) => Ok(Some(many)),
        Err(_) => Err(serde::de::Error::custom(format!(
            "give a string or a list of strings (quote one that looks like a number): {example}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{
        self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
    };

    use super::*;
    use crate::config::{JwtConfig, ProxyConfig};

    fn encode(head: &str, claims: &str) -> String {
        format!("{}.{}", B64.encode(head), B64.encode(claims))
    }

    /// A token signed with HMAC-SHA256 under `secret`, whatever `alg` its header names.
    fn hs256(secret: &[u8], alg: &str, claims: &str) -> String {
        let signed = encode(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#), claims);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, signed.as_bytes());
        format!("{signed}.{}", B64.encode(tag.as_ref()))
    }

    fn headers(token: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    fn verifier(jwks: &str) -> Verifier {
        Verifier {
            keys: parse_jwks(jwks.as_bytes()).unwrap(),
            ..Verifier::default()
        }
    }

    fn hs_verifier(secret: &[u8]) -> Verifier {
        Verifier {
            hs256: Some(DecodingKey::from_secret(secret)),
            ..Verifier::default()
        }
    }

    /// The claims of a token the verifier must accept.
    fn claims(v: &Verifier, token: &str) -> Value {
        match v.verify(&headers(token)) {
            Verdict::Verified(claims) => claims,
            other => panic!("{token}: {other:?}"),
        }
    }

    /// Why the verifier refuses a token; `None` when it accepts it.
    fn refused(v: &Verifier, token: &str) -> Option<&'static str> {
        match v.verify(&headers(token)) {
            Verdict::Verified(_) => None,
            Verdict::Rejected(reason) => Some(reason),
            Verdict::NoToken => panic!("{token}: not read as a token"),
        }
    }

    #[test]
    fn hs256_tokens_pass_and_bad_ones_do_not() {
        let v = hs_verifier(b"s3cret");
        let good = hs256(b"s3cret", "HS256", r#"{"sub":"u_1"}"#);
        assert_eq!(claims(&v, &good)["sub"], "u_1");
        let forged = hs256(b"other", "HS256", r#"{"sub":"u_1"}"#);
        assert_eq!(refused(&v, &forged), Some(BAD_SIGNATURE));
        let none_alg = hs256(b"s3cret", "none", r#"{"sub":"u_1"}"#);
        assert_eq!(refused(&v, &none_alg), Some(ALGORITHM_NOT_ALLOWED));
        let unsigned = format!("{}.", encode(r#"{"alg":"none"}"#, r#"{"sub":"u_1"}"#));
        assert_eq!(refused(&v, &unsigned), Some(ALGORITHM_NOT_ALLOWED));
        let hs512 = hs256(b"s3cret", "HS512", r#"{"sub":"u_1"}"#);
        assert_eq!(refused(&v, &hs512), Some(ALGORITHM_NOT_ALLOWED));
        let expired = hs256(b"s3cret", "HS256", r#"{"sub":"u_1","exp":1000}"#);
        assert_eq!(refused(&v, &expired), Some(EXPIRED));
        let not_yet = hs256(b"s3cret", "HS256", r#"{"sub":"u_1","nbf":99999999999}"#);
        assert_eq!(refused(&v, &not_yet), Some(NOT_YET_VALID));

        assert_eq!(v.verify(&http::HeaderMap::new()), Verdict::NoToken);
        let mut basic = http::HeaderMap::new();
        basic.insert("authorization", "Basic dTpw".parse().unwrap());
        assert_eq!(v.verify(&basic), Verdict::NoToken);
    }

    #[test]
    fn exp_and_nbf_allow_a_minute_of_clock_skew() {
        let v = hs_verifier(b"s3cret");
        let token = |claims: String| hs256(b"s3cret", "HS256", &claims);
        let now = jsonwebtoken::get_current_timestamp();
        let exp = |exp: u64| token(format!(r#"{{"exp":{exp}}}"#));
        let nbf = |nbf: u64| token(format!(r#"{{"nbf":{nbf}}}"#));
        assert_eq!(refused(&v, &exp(now - 30)), None);
        assert_eq!(refused(&v, &nbf(now + 30)), None);
        assert_eq!(refused(&v, &exp(now - 120)), Some(EXPIRED));
        assert_eq!(refused(&v, &nbf(now + 120)), Some(NOT_YET_VALID));
        let both = token(format!(r#"{{"exp":{}.5,"nbf":{now}}}"#, now + 3600));
        assert_eq!(refused(&v, &both), None);
        // No `exp`: the token does not expire.
        assert_eq!(refused(&v, &token(r#"{"sub":"u_1"}"#.to_owned())), None);
    }

    #[test]
    fn exp_and_nbf_that_jsonwebtoken_passes_over_are_refused_here() {
        let v = hs_verifier(b"s3cret");
        let reason = |claims: &str| refused(&v, &hs256(b"s3cret", "HS256", claims));
        let not_numbers = [r#""99999999999""#, "null", "true", "[]", "[1]", "{}"];
        for value in not_numbers.into_iter().chain([r#"{"a":1}"#]) {
            let exp = format!(r#"{{"exp":{value}}}"#);
            assert_eq!(reason(&exp), Some(EXP_NOT_A_NUMBER), "{exp}");
            let nbf = format!(r#"{{"nbf":{value}}}"#);
            assert_eq!(reason(&nbf), Some(NBF_NOT_A_NUMBER), "{nbf}");
        }
        // Numbers it cannot hold in a u64, and fractions (which, with `arbitrary_precision`,
        // it does not read at all).
        assert_eq!(reason(r#"{"exp":-5}"#), Some(EXPIRED));
        assert_eq!(reason(r#"{"exp":-0.5}"#), Some(EXPIRED));
        assert_eq!(reason(r#"{"exp":1000.5}"#), Some(EXPIRED));
        assert_eq!(reason(r#"{"exp":1e3}"#), Some(EXPIRED));
        assert_eq!(reason(r#"{"nbf":1e20}"#), Some(NOT_YET_VALID));
        assert_eq!(reason(r#"{"nbf":99999999999.5}"#), Some(NOT_YET_VALID));
        assert_eq!(reason(r#"{"exp":1e20}"#), None);
        assert_eq!(reason(r#"{"nbf":-5}"#), None);
    }

    #[test]
    fn what_is_not_a_signed_json_object_is_malformed_or_not_an_object() {
        let v = hs_verifier(b"s3cret");
        for token in ["not-a-token", "a.b", "a.b.c.d", "%%%.e30.sig"] {
            assert_eq!(refused(&v, token), Some(MALFORMED), "{token}");
        }
        let not_json_head = format!("{}.{}.sig", B64.encode("{alg"), B64.encode("{}"));
        assert_eq!(refused(&v, &not_json_head), Some(MALFORMED));
        // Signed properly, but the claims are not JSON, or not an object.
        let signed = |claims: &str| hs256(b"s3cret", "HS256", claims);
        assert_eq!(refused(&v, &signed("{sub")), Some(MALFORMED));
        // The five-member list is one `jsonwebtoken` reads as its claims, in order.
        let five = r#"[99999999999,0,"s","i","a"]"#;
        for c in [r#""u_1""#, "5", "null", "[1,2]", five] {
            assert_eq!(refused(&v, &signed(c)), Some(NOT_AN_OBJECT), "{c}");
        }
        // A claim jsonwebtoken cannot read, and a registered claim given twice.
        assert_eq!(refused(&v, &signed(r#"{"sub":{"id":1}}"#)), Some(MALFORMED));
        let twice = signed(r#"{"exp":1,"exp":99999999999}"#);
        assert_eq!(refused(&v, &twice), Some(MALFORMED));
        // Not an HMAC of the header and claims.
        let head = B64.encode(r#"{"alg":"HS256"}"#);
        let bad_sig = format!("{head}.{}.!!", B64.encode("{}"));
        assert_eq!(refused(&v, &bad_sig), Some(BAD_SIGNATURE));
        // Too long to read, though signed.
        let long = signed(&format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_TOKEN_BYTES)));
        assert_eq!(refused(&v, &long), Some(MALFORMED));
    }

    #[test]
    fn es256_and_eddsa_tokens_verify_against_their_jwks_keys() {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let ec = EcdsaKeyPair::from_pkcs8(
            alg,
            EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap().as_ref(),
            &rng,
        )
        .unwrap();
        let point = ec.public_key().as_ref();
        let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref())
            .unwrap();
        let jwks = format!(
            r#"{{"keys":[
              {{"kty":"EC","crv":"P-256","kid":"ec1","use":"sig","x":"{}","y":"{}"}},
              {{"kty":"OKP","crv":"Ed25519","kid":"ed1","alg":"EdDSA","x":"{}"}},
              {{"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"}}
            ]}}"#,
            B64.encode(&point[1..33]),
            B64.encode(&point[33..]),
            B64.encode(ed.public_key().as_ref()),
        );
        let v = verifier(&jwks);
        let payload = r#"{"sub":"u_9","exp":99999999999}"#;

        let signed = encode(r#"{"alg":"ES256","kid":"ec1"}"#, payload);
        let sig = ec.sign(&rng, signed.as_bytes()).unwrap();
        let token = format!("{signed}.{}", B64.encode(sig.as_ref()));
        assert_eq!(claims(&v, &token)["sub"], "u_9");

        let ed_token = |head: &str| {
            let signed = encode(head, payload);
            let sig = ed.sign(signed.as_bytes());
            format!("{signed}.{}", B64.encode(sig.as_ref()))
        };
        let token = ed_token(r#"{"alg":"EdDSA","kid":"ed1"}"#);
        assert_eq!(claims(&v, &token)["sub"], "u_9");
        // A token without `kid` is tried against every key for its algorithm.
        let no_kid = ed_token(r#"{"alg":"EdDSA"}"#);
        assert_eq!(claims(&v, &no_kid)["sub"], "u_9");

        // The EdDSA signature under another key id, a tampered payload, an algorithm switch.
        let wrong_kid = token.replacen(
            &B64.encode(r#"{"alg":"EdDSA","kid":"ed1"}"#),
            &B64.encode(r#"{"alg":"EdDSA","kid":"ec1"}"#),
            1,
        );
        assert_eq!(refused(&v, &wrong_kid), Some(UNKNOWN_KEY));
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let tampered = format!("{head}.{}.{sig}", B64.encode(r#"{"sub":"admin"}"#));
        assert_eq!(refused(&v, &tampered), Some(BAD_SIGNATURE));
        let es384 = encode(r#"{"alg":"ES384","kid":"ec1"}"#, payload) + ".c2ln";
        assert_eq!(refused(&v, &es384), Some(ALGORITHM_NOT_ALLOWED));
        // No HS256 secret is configured, and HMAC with a public key is never tried.
        let hs = hs256(b"anything", "HS256", payload);
        assert_eq!(refused(&v, &hs), Some(ALGORITHM_NOT_ALLOWED));
        let confused = hs256(point, "HS256", payload);
        assert_eq!(refused(&v, &confused), Some(ALGORITHM_NOT_ALLOWED));
    }

    #[test]
    fn rs256_and_ps256_tokens_verify_against_rsa_jwks() {
        // A 2048-bit test key (PKCS#1 DER, base64url): `openssl genpkey -algorithm RSA
        // -pkeyopt rsa_keygen_bits:2048 -outform DER`.
        let der = B64.decode(TEST_RSA_PKCS1.replace(['\n', ' '], "")).unwrap();
        let key = signature::RsaKeyPair::from_der(&der).unwrap();
        let components = signature::RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
        let (n, e) = (B64.encode(components.n), B64.encode(components.e));
        // The same key twice: under `r1` for RS256 only, under `r2` (padded, as some
        // publishers write it) for any RSA algorithm.
        let r1 = format!(r#"{{"kty":"RSA","kid":"r1","alg":"RS256","n":"{n}","e":"{e}"}}"#);
        let r2 = format!(r#"{{"kty":"RSA","kid":"r2","n":"{n}==","e":"{e}"}}"#);
        let v = verifier(&format!(r#"{{"keys":[{r1},{r2}]}}"#));
        let r1_only = verifier(&format!(r#"{{"keys":[{r1}]}}"#));
        let sign = |head: &str, padding: &'static dyn signature::RsaEncoding| {
            let msg = encode(head, r#"{"sub":"u_r"}"#);
            let mut sig = vec![0; key.public().modulus_len()];
            let rng = SystemRandom::new();
            key.sign(padding, &rng, msg.as_bytes(), &mut sig).unwrap();
            format!("{msg}.{}", B64.encode(&sig))
        };
        let rs = sign(r#"{"alg":"RS256","kid":"r1"}"#, &RSA_PKCS1_SHA256);
        assert_eq!(claims(&v, &rs)["sub"], "u_r");
        let ps = sign(r#"{"alg":"PS256","kid":"r2"}"#, &RSA_PSS_SHA256);
        assert_eq!(claims(&v, &ps)["sub"], "u_r");
        // The key `r1` says RS256: a PS256 token naming it finds no key of its kid for PS256,
        // and no key at all for PS256 where `r1` is the only key.
        let ps_as_r1 = sign(r#"{"alg":"PS256","kid":"r1"}"#, &RSA_PSS_SHA256);
        assert_eq!(refused(&v, &ps_as_r1), Some(UNKNOWN_KEY));
        assert_eq!(refused(&r1_only, &ps_as_r1), Some(ALGORITHM_NOT_ALLOWED));
        assert_eq!(refused(&r1_only, &ps), Some(ALGORITHM_NOT_ALLOWED));
        // An RS256 signature relabelled RS512: the key takes RS512, the signature is wrong.
        let relabelled = rs.replacen(
            &B64.encode(r#"{"alg":"RS256","kid":"r1"}"#),
            &B64.encode(r#"{"alg":"RS512","kid":"r2"}"#),
            1,
        );
        assert_eq!(refused(&v, &relabelled), Some(BAD_SIGNATURE));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let issuer = ["https://id.example", "https://id2.example"].map(String::from);
        let audience = ["orders".to_owned()];
        let v = Verifier {
            validations: Validations::new(Some(&issuer[..]), Some(&audience[..])),
            ..hs_verifier(b"s3cret")
        };
        let reason = |claims: &str| refused(&v, &hs256(b"s3cret", "HS256", claims));
        let iss = r#""iss":"https://id.example""#;
        assert_eq!(reason(&format!(r#"{{{iss},"aud":"orders"}}"#)), None);
        assert_eq!(reason(&format!(r#"{{{iss},"aud":["x","orders"]}}"#)), None);
        let other = r#"{"iss":"https://id2.example","aud":"orders"}"#;
        assert_eq!(reason(other), None);
        for bad_iss in [
            r#"{"aud":"orders"}"#,
            r#"{"iss":"https://evil.example","aud":"orders"}"#,
            r#"{"iss":["https://id.example"],"aud":"orders"}"#,
            r#"{"iss":5,"aud":"orders"}"#,
        ] {
            assert_eq!(reason(bad_iss), Some(WRONG_ISSUER), "{bad_iss}");
        }
        for aud in ["", r#""billing""#, "[]", "5", r#"["orders",5]"#] {
            let bad_aud = match aud {
                "" => format!("{{{iss}}}"),
                aud => format!(r#"{{{iss},"aud":{aud}}}"#),
            };
            assert_eq!(reason(&bad_aud), Some(WRONG_AUDIENCE), "{bad_aud}");
        }
        // Lacking both, the issuer is named, whatever the order of checks inside.
        assert_eq!(reason(r#"{"sub":"u_1"}"#), Some(WRONG_ISSUER));

        // Without `audience`, `aud` is not looked at.
        let v = hs_verifier(b"s3cret");
        let token = hs256(b"s3cret", "HS256", r#"{"sub":"u_1","aud":"someone"}"#);
        assert_eq!(claims(&v, &token)["sub"], "u_1");
    }

    #[test]
    fn the_config_names_issuer_and_audience_as_one_or_a_list() {
        let c: JwtConfig = serde_yaml_ng::from_str(
            "jwks_file: k.json\nissuer: https://id.example\naudience: [orders, admin]\n",
        )
        .unwrap();
        assert_eq!(c.issuer.unwrap(), ["https://id.example"]);
        assert_eq!(c.audience.unwrap(), ["orders", "admin"]);
        let c: JwtConfig = serde_yaml_ng::from_str("hs256_secret_file: k\n").unwrap();
        assert_eq!((c.issuer, c.audience), (None, None));
        let text = "jwks_file: k.json\naudience: {a: 1}\n";
        let err = serde_yaml_ng::from_str::<JwtConfig>(text).unwrap_err();
        assert!(err.to_string().contains("audience: orders-api"), "{err}");

        let text = "listen: 127.0.0.1:8080\nupstream: http://127.0.0.1:3000\nrules: [rules.yaml]\nredis: { url: \"redis://127.0.0.1:6379\" }\njwt: { jwks_file: k.json, issuer: [] }\n";
        let err = ProxyConfig::from_yaml(Path::new("p.yaml"), text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.yaml: `jwt.issuer` is an empty list, which no token could pass: name at least one, or leave `issuer` out"
        );
    }

    #[test]
    fn load_reads_the_key_files_and_names_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("jwt.secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let config = JwtConfig {
            hs256_secret_file: Some(secret.clone()),
            jwks_file: None,
            issuer: Some(vec!["https://id.example".to_owned()]),
            audience: None,
        };
        let v = Verifier::load(&config).unwrap();
        let token = hs256(b"s3cret", "HS256", r#"{"iss":"https://id.example"}"#);
        assert_eq!(refused(&v, &token), None);
        let token = hs256(b"s3cret", "HS256", r#"{"sub":"u_1"}"#);
        assert_eq!(refused(&v, &token), Some(WRONG_ISSUER));

        std::fs::write(&secret, "\n").unwrap();
        let err = Verifier::from_files(Some(&secret), None).unwrap_err();
        let expected = format!("jwt: {}: it is empty", secret.display());
        assert!(err.to_string().starts_with(&expected), "{err}");
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, "[]").unwrap();
        let err = Verifier::from_files(None, Some(&jwks)).unwrap_err();
        let expected = format!("jwt: {}: not a JWKS document", jwks.display());
        assert!(err.to_string().starts_with(&expected), "{err}");
    }

    #[test]
    fn bad_jwks_files_say_what_is_wrong() {
        let err = |text: &str| parse_jwks(text.as_bytes()).err().unwrap();
        assert!(err("[]").contains("not a JWKS document"));
        assert!(err(r#"{"keys":[]}"#).contains("no signing keys"));
        assert!(
            err(r#"{"keys":[{"kty":"RSA","kid":"a","e":"AQAB"}]}"#)
                .contains("key 0 (kid \"a\"): missing \"n\"")
        );
        assert!(
            err(r#"{"keys":[{"kty":"RSA","n":"A*","e":"AQAB"}]}"#)
                .contains("key 0: \"n\" is not base64url")
        );
        assert!(
            err(r#"{"keys":[{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}]}"#)
                .contains("unsupported key type \"EC\" with curve \"P-521\"")
        );
        assert!(err(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).contains("hs256_secret_file"));
        assert_eq!(
            err(r#"{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"RS256","x":"AA"}]}"#),
            "key 0: \"alg\": \"RS256\" does not fit a OKP key (use one of EdDSA)"
        );
        assert!(
            err(r#"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES384","x":"AA","y":"AA"}]}"#)
                .contains("does not fit a EC key (use one of ES256)")
        );
    }

    const TEST_RSA_PKCS1: &str = "\
        MIIEoAIBAAKCAQEApY520luWbQr5S08BZQjKreqMUAHiF0ZtVnGEoV_I4qgrEqtVmGtpF8WOQZ_HFjYqZ_bicBgU__T57EAl\
        3SrZzJbYTeGY3hzKaLV0RlnSIN48Zq6IzobLXOz9XjvI8KpEeF1YF29YNUAWs8BeIvtI91LXIv_3OpiY_1svAMPyvlYq2ITk\
        KfyEa3VImPg70kt2TtDNUTpw4js9jqUcCEUEliLLlzIqWgzo7CRQYeev4RBX6BXcWLehvqvfWM6vY2OcZrOPksradZgzo0Rd\
        Z5J1dI6OLnAGOgSGMUJvPznavSpDfr3ijK9MGbjhcKuRdGJ3GCldCW16w9k4lhhHF0D7BQIDAQABAoH_YltBJSy41Js8C8eH\
        I9xbGPf52KXRZry2Zxk4hBtj4FvZ9VS9y1t5K3e-l8nglK6wsXBv0OLa3NjFFpZ6FtQv1uf1yH3Ka0Ij5yigjp-IfOcuEo0S\
        6Iig1KuaOHkduYAo0HDS5RlYq2F_MpEuFlR5p-pgzrAsGdJgWPfqgHKjrSoDsjw2a8ioyFNmS-ZNBZsQf-YnyhqR8MnUnk69\
        mvAPy4tI423HwV5qnVWnRKPuLcykswEfPvo_2-tbB2KEbO_1AoweNL9XVrBefsFGHrGstHDz7QsDUH0F_cN2cVm5ra5hv5qm\
        -4B_W0xikrnkHP_fCh5CvVzE9v69YpotKQ4hAoGBANVwn2jA8EFVaOBCoxUExBAv-Qrz04rEbf2DAdAqme3HGn-6MSJXHZ3g\
        _86tkTQRAbQV49hDgzRrN0tHrpxAV2QXpWqH-0HVJ2LDLJNCzAYWQ0umJGsFNP4UCw5KJtx89go9kJ_8YurTkXD0jHwDG_Ln\
        D5G2nVf3omLnn0eIdzI9AoGBAMaRjmo9IzuNlL8fWrnVLx1pk8mfOQAODK3XErObMALBAZULFfC_qWFpg9henLDoiTNuaHw9\
        bx4ICgWxnp6z9Ma0bDBSWBX1Al6RFFpYPknRx-8hoHs8YgOOzwVpOUVbECmwSrrrizpW3uJk1BahgeniKTPr2po2pwkRW-XK\
        iOBpAoGAICx86xaCYObWC1AgMy_nuiTxHpSIo9deWSOhZ1a0o2Iq_Wv8shd9sGnVRbtmMvoJTrMqCFSM957d0-w3Rvhv8_eY\
        iMl8t3zBFiMjmgMsrBI5DLM7tCIxzccJr5q_5uazU_HZ1jP-WTWRK_zBHIR_dwsbjrR_XV5HzS7rFKZeiWUCgYBeFigB5Ngl\
        5q79ZFDrzryVVipFlaE_imitkkP1QGoeU-94_Ji3y0jptEJZqnLaTER-TylI_R8CftKo4gGDt0cbQ_AjcVD1jnNB9cJMEJXr\
        CnCOuUM-QV07zFYBfVs6pqxg5Hx0VxlQWksfwKDR3FMfTB8zz-Rzv8Ojw0rk9fOnSQKBgC-d28wKX7xKgMtZaipnrHaAZq1i\
        HfshEG72hNe4pjlIYswqz_aPwYBBLSCHNevkV-O4nWnVmCgGAzo_a2sGTxB0tUDX7w8vlH_rQKypPV3_drsKKa_rx5hH_Yd9\
        Vq9CJbpzLSC8KM3omtjfGUuK_Swn-pMKmc2wxix3g_RdIRiT\
    ";
}
