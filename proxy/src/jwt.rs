//! Bearer-token verification for `jwt/` templates (HS256 with a shared secret).

use std::path::Path;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Verifies HS256 tokens with one secret.
#[derive(Clone)]
pub(crate) struct Hs256 {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Hs256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hs256 { secret: <redacted> }")
    }
}

impl Hs256 {
    /// Reads the secret from a file; a trailing newline is not part of it.
    pub(crate) fn from_file(path: &Path) -> std::io::Result<Hs256> {
        let mut secret = std::fs::read(path)?;
        while secret.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
            secret.pop();
        }
        if secret.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is empty: put the HS256 secret in it", path.display()),
            ));
        }
        Ok(Hs256 { secret })
    }

    /// The claims of the request's `Authorization: Bearer` token when its signature is good
    /// and it has not expired; `None` otherwise (no token, another algorithm, bad signature,
    /// expired).
    pub(crate) fn verify(&self, headers: &http::HeaderMap) -> Option<serde_json::Value> {
        let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?
            .trim();
        let mut parts = token.split('.');
        let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head: serde_json::Value = serde_json::from_slice(&b64.decode(header).ok()?).ok()?;
        if head.get("alg")?.as_str()? != "HS256" {
            return None;
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&b64.decode(signature).ok()?).ok()?;
        let claims: serde_json::Value = serde_json::from_slice(&b64.decode(payload).ok()?).ok()?;
        if let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_i64)
            && exp < chrono::Utc::now().timestamp()
        {
            return None;
        }
        Some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(secret: &[u8], alg: &str, claims: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head = b64.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let body = b64.encode(claims);
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{head}.{body}").as_bytes());
        format!("{head}.{body}.{}", b64.encode(mac.finalize().into_bytes()))
    }

    fn headers(token: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    #[test]
    fn good_tokens_pass_and_bad_ones_do_not() {
        let v = Hs256 {
            secret: b"s3cret".to_vec(),
        };
        let good = token(b"s3cret", "HS256", r#"{"sub":"u_1"}"#);
        assert_eq!(v.verify(&headers(&good)).unwrap()["sub"], "u_1");
        let forged = token(b"other", "HS256", r#"{"sub":"u_1"}"#);
        assert!(v.verify(&headers(&forged)).is_none());
        let none_alg = token(b"s3cret", "none", r#"{"sub":"u_1"}"#);
        assert!(v.verify(&headers(&none_alg)).is_none());
        let expired = token(b"s3cret", "HS256", r#"{"sub":"u_1","exp":1000}"#);
        assert!(v.verify(&headers(&expired)).is_none());
        assert!(v.verify(&http::HeaderMap::new()).is_none());
    }
}
