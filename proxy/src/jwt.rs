//! Bearer-token verification for `jwt/` templates: HS256 with a shared secret, and the
//! public-key algorithms of a JWKS file (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA).
//!
//! A token is trusted when its signature checks out with a configured key, its `alg` is one
//! that key is for (never `none`, and never an HMAC check with a public key), and `exp`/`nbf`
//! (when present) hold, with 60 s of leeway for clock skew. Anything else — no token, an
//! unknown `kid`, a bad signature, an expired token — leaves `jwt/` templates empty, so no
//! actor is taken from a token nobody vouched for.
//!
//! ```yaml
//! jwt:
//!   hs256_secret_file: ./jwt.secret   # HS256 tokens
//!   jwks_file: ./jwks.json            # {"keys": [...]} as an identity provider publishes it
//! ```

use std::path::Path;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde::Deserialize;
use sha2::Sha256;

use crate::error::ProxyError;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: i64 = 60;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Checks bearer tokens against the configured keys.
#[derive(Default)]
pub(crate) struct Verifier {
    hs256: Option<Vec<u8>>,
    keys: Vec<PublicKey>,
}

/// One public key of a JWKS file.
struct PublicKey {
    kid: Option<String>,
    /// The `alg` values this key verifies.
    algs: &'static [&'static str],
    /// The key's own `alg`, when the file names one: tokens must then use exactly it.
    alg: Option<String>,
    kind: KeyKind,
}

enum KeyKind {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed SEC1 point (`04 || x || y`), and the curve's algorithm.
    Ec {
        point: Vec<u8>,
        alg: &'static str,
    },
    Ed25519(Vec<u8>),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.as_ref().map(|_| "<redacted>"))
            .field("public_keys", &self.keys.len())
            .finish()
    }
}

/// A JWKS file as identity providers publish it.
#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

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
    /// Reads the key files a `jwt:` config names; the error names the file.
    pub(crate) fn load(config: &crate::config::JwtConfig) -> Result<Verifier, ProxyError> {
        Verifier::from_files(
            config.hs256_secret_file.as_deref(),
            config.jwks_file.as_deref(),
        )
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
            verifier.hs256 = Some(secret);
        }
        if let Some(path) = jwks_file {
            let text = std::fs::read(path).map_err(unreadable(path))?;
            verifier.keys = parse_jwks(&text).map_err(|message| bad_key(path, message))?;
        }
        Ok(verifier)
    }

    /// The claims of the request's `Authorization: Bearer` token when a configured key
    /// vouches for it and it is within its validity; `None` otherwise.
    pub(crate) fn verify(&self, headers: &http::HeaderMap) -> Option<serde_json::Value> {
        let token = auditgate_rules::bearer_token(headers)?;
        let (signed, signature) = token.rsplit_once('.')?;
        let (header, payload) = signed.split_once('.')?;
        if payload.contains('.') {
            return None;
        }
        #[derive(Deserialize)]
        struct Header {
            alg: String,
            #[serde(default)]
            kid: Option<String>,
        }
        let head: Header = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
        let signature = B64.decode(signature).ok()?;
        let good = if head.alg == "HS256" {
            let secret = self.hs256.as_ref()?;
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
            mac.update(signed.as_bytes());
            mac.verify_slice(&signature).is_ok()
        } else {
            self.keys
                .iter()
                .filter(|k| k.accepts(&head.alg, head.kid.as_deref()))
                .any(|k| k.verify(&head.alg, signed.as_bytes(), &signature))
        };
        if !good {
            return None;
        }
        let claims: serde_json::Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        let now = chrono::Utc::now().timestamp();
        let claim = |name| claims.get(name).and_then(serde_json::Value::as_i64);
        if claim("exp").is_some_and(|exp| exp + LEEWAY_SECONDS < now)
            || claim("nbf").is_some_and(|nbf| nbf - LEEWAY_SECONDS > now)
        {
            return None;
        }
        claims.is_object().then_some(claims)
    }
}

impl PublicKey {
    fn accepts(&self, alg: &str, kid: Option<&str>) -> bool {
        let kid_ok = match (kid, &self.kid) {
            (Some(wanted), Some(have)) => wanted == have,
            _ => true,
        };
        kid_ok && self.algs.contains(&alg) && self.alg.as_deref().is_none_or(|a| a == alg)
    }

    /// Checks a signature; `accepts` has checked that `alg` fits the key.
    fn verify(&self, alg: &str, message: &[u8], signature: &[u8]) -> bool {
        match &self.kind {
            KeyKind::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                    "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                    "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                    "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, message, signature)
                    .is_ok()
            }
            KeyKind::Ec { point, alg } => {
                let algorithm: &dyn VerificationAlgorithm = if *alg == "ES256" {
                    &signature::ECDSA_P256_SHA256_FIXED
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED
                };
                UnparsedPublicKey::new(algorithm, point)
                    .verify(message, signature)
                    .is_ok()
            }
            KeyKind::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, signature)
                .is_ok(),
        }
    }
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
        let member = |value: &Option<String>, member: &str| -> Result<Vec<u8>, JwksProblem> {
            let text = value
                .as_deref()
                .ok_or_else(|| format!("{name}: missing \"{member}\""))?;
            B64.decode(text.trim_end_matches('='))
                .map_err(|e| format!("{name}: \"{member}\" is not base64url: {e}"))
        };
        let (kind, algs): (KeyKind, &'static [&'static str]) = match (
            jwk.kty.as_str(),
            jwk.crv.as_deref(),
        ) {
            ("RSA", _) => (
                KeyKind::Rsa {
                    n: member(&jwk.n, "n")?,
                    e: member(&jwk.e, "e")?,
                },
                &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"],
            ),
            ("EC", Some(curve @ ("P-256" | "P-384"))) => {
                let (alg, algs): (&'static str, &'static [&'static str]) = if curve == "P-256" {
                    ("ES256", &["ES256"])
                } else {
                    ("ES384", &["ES384"])
                };
                let mut point = vec![4u8];
                point.extend(member(&jwk.x, "x")?);
                point.extend(member(&jwk.y, "y")?);
                (KeyKind::Ec { point, alg }, algs)
            }
            ("OKP", Some("Ed25519")) => (KeyKind::Ed25519(member(&jwk.x, "x")?), &["EdDSA"]),
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
        if let Some(alg) = &jwk.alg
            && !algs.contains(&alg.as_str())
        {
            return Err(format!(
                "{name}: \"alg\": {alg:?} does not fit a {} key (use one of {})",
                jwk.kty,
                algs.join(", ")
            ));
        }
        keys.push(PublicKey {
            kid: jwk.kid,
            algs,
            alg: jwk.alg,
            kind,
        });
    }
    if keys.is_empty() {
        return Err("no signing keys in it".to_owned());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    use super::*;

    fn encode(head: &str, claims: &str) -> String {
        format!("{}.{}", B64.encode(head), B64.encode(claims))
    }

    fn hs256(secret: &[u8], alg: &str, claims: &str) -> String {
        let signed = encode(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#), claims);
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(signed.as_bytes());
        format!("{signed}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    fn headers(token: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    fn verifier(jwks: &str) -> Verifier {
        Verifier {
            hs256: None,
            keys: parse_jwks(jwks.as_bytes()).unwrap(),
        }
    }

    #[test]
    fn hs256_tokens_pass_and_bad_ones_do_not() {
        let v = Verifier {
            hs256: Some(b"s3cret".to_vec()),
            keys: Vec::new(),
        };
        let good = hs256(b"s3cret", "HS256", r#"{"sub":"u_1"}"#);
        assert_eq!(v.verify(&headers(&good)).unwrap()["sub"], "u_1");
        let forged = hs256(b"other", "HS256", r#"{"sub":"u_1"}"#);
        assert!(v.verify(&headers(&forged)).is_none());
        let none_alg = hs256(b"s3cret", "none", r#"{"sub":"u_1"}"#);
        assert!(v.verify(&headers(&none_alg)).is_none());
        let expired = hs256(b"s3cret", "HS256", r#"{"sub":"u_1","exp":1000}"#);
        assert!(v.verify(&headers(&expired)).is_none());
        let not_yet = hs256(b"s3cret", "HS256", r#"{"sub":"u_1","nbf":99999999999}"#);
        assert!(v.verify(&headers(&not_yet)).is_none());
        assert!(v.verify(&http::HeaderMap::new()).is_none());
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
        let claims = r#"{"sub":"u_9","exp":99999999999}"#;

        let signed = encode(r#"{"alg":"ES256","kid":"ec1"}"#, claims);
        let sig = ec.sign(&rng, signed.as_bytes()).unwrap();
        let token = format!("{signed}.{}", B64.encode(sig.as_ref()));
        assert_eq!(v.verify(&headers(&token)).unwrap()["sub"], "u_9");

        let signed = encode(r#"{"alg":"EdDSA","kid":"ed1"}"#, claims);
        let token = format!(
            "{signed}.{}",
            B64.encode(ed.sign(signed.as_bytes()).as_ref())
        );
        assert_eq!(v.verify(&headers(&token)).unwrap()["sub"], "u_9");

        // The EdDSA signature under another key id, a tampered payload, an algorithm switch.
        let wrong_kid = token.replacen(
            &B64.encode(r#"{"alg":"EdDSA","kid":"ed1"}"#),
            &B64.encode(r#"{"alg":"EdDSA","kid":"ec1"}"#),
            1,
        );
        assert!(v.verify(&headers(&wrong_kid)).is_none());
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let tampered = format!("{head}.{}.{sig}", B64.encode(r#"{"sub":"admin"}"#));
        assert!(v.verify(&headers(&tampered)).is_none());
        let hs = hs256(b"anything", "HS256", claims);
        assert!(
            v.verify(&headers(&hs)).is_none(),
            "no HS256 secret configured"
        );
    }

    #[test]
    fn rs256_tokens_verify_against_an_rsa_jwk() {
        // A 2048-bit test key (PKCS#1 DER, base64url): `openssl genpkey -algorithm RSA
        // -pkeyopt rsa_keygen_bits:2048 -outform DER`.
        let der = B64.decode(TEST_RSA_PKCS1.replace(['\n', ' '], "")).unwrap();
        let key = signature::RsaKeyPair::from_der(&der).unwrap();
        let components = signature::RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
        let (n, e) = (components.n, components.e);
        let v = verifier(&format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"r1","alg":"RS256","n":"{}","e":"{}"}}]}}"#,
            B64.encode(n),
            B64.encode(e)
        ));
        let signed = encode(r#"{"alg":"RS256","kid":"r1"}"#, r#"{"sub":"u_r"}"#);
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(
            &signature::RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signed.as_bytes(),
            &mut sig,
        )
        .unwrap();
        let token = format!("{signed}.{}", B64.encode(&sig));
        assert_eq!(v.verify(&headers(&token)).unwrap()["sub"], "u_r");
        // The key says RS256: a PS256 claim on the same key is refused.
        let ps = token.replacen(
            &B64.encode(r#"{"alg":"RS256","kid":"r1"}"#),
            &B64.encode(r#"{"alg":"PS256","kid":"r1"}"#),
            1,
        );
        assert!(v.verify(&headers(&ps)).is_none());
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
            err(r#"{"keys":[{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}]}"#)
                .contains("unsupported key type \"EC\" with curve \"P-521\"")
        );
        assert!(err(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).contains("hs256_secret_file"));
        assert!(
            err(r#"{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"RS256","x":"AA"}]}"#)
                .contains("does not fit a OKP key")
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
