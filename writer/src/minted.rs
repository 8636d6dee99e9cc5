//! Short-lived tokens for one tenant, minted by `POST /api/v1/tokens`.
//!
//! A SaaS backend that shows each customer organisation its own audit log holds one unscoped
//! admin token. When an organisation's admin opens the log, the backend asks the writer for a
//! token of that tenant and role, valid for `ttl_seconds`, and opens the page with it
//! (`/#token=…`): no long-lived secret reaches the browser, and the token can see that tenant's
//! records only, until it expires.
//!
//! A minted token is `agt1.PAYLOAD.MAC`: `PAYLOAD` the base64url (unpadded) JSON
//! `{"tenant":…,"role":…,"exp":UNIX_SECONDS}`, `MAC` the base64url HMAC-SHA256 of
//! `agt1.PAYLOAD` under the key in the writer's `token_key_file`. The writer keeps no list of
//! them: the MAC says the writer made it, `exp` when it stops working. A writer without
//! `token_key_file` mints none and accepts none.
//!
//! ```
//! use auditgate_writer::minted::{Minted, MintKey};
//! use auditgate_writer::config::Role;
//!
//! let key = MintKey::new(b"a key of at least thirty-two bytes!!".to_vec()).unwrap();
//! let token = key.mint("acme", Role::Viewer, 3600, 1_800_000_000);
//! let read = key.read(&token, 1_800_000_100).unwrap();
//! assert_eq!(read, Minted { tenant: "acme".into(), role: Role::Viewer, exp: 1_800_003_600 });
//! assert!(key.read(&token, 1_800_003_601).is_none(), "expired");
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Role;

const PREFIX: &str = "agt1.";

/// The longest life a minted token may be given: a day.
pub const MAX_TTL_SECONDS: u64 = 86_400;

/// The key minted tokens are signed with (`token_key_file`).
#[derive(Clone)]
pub struct MintKey(Vec<u8>);

impl std::fmt::Debug for MintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MintKey(..)")
    }
}

/// What a minted token grants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Minted {
    /// The one tenant it sees.
    pub tenant: String,
    /// Its role.
    pub role: Role,
    /// When it stops working (Unix seconds).
    pub exp: u64,
}

impl MintKey {
    /// A key of at least 32 bytes; `None` when shorter (an HMAC key that short can be
    /// guessed).
    pub fn new(bytes: Vec<u8>) -> Option<MintKey> {
        (bytes.len() >= 32).then_some(MintKey(bytes))
    }

    /// A token for `tenant` and `role`, valid from `now` for `ttl` seconds.
    pub fn mint(&self, tenant: &str, role: Role, ttl: u64, now: u64) -> String {
        let grant = Minted {
            tenant: tenant.to_owned(),
            role,
            exp: now.saturating_add(ttl),
        };
        let payload = serde_json::to_vec(&grant).unwrap_or_default();
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(payload));
        let mac = URL_SAFE_NO_PAD.encode(self.mac(&signed).finalize().into_bytes());
        format!("{signed}.{mac}")
    }

    /// What `token` grants at `now`: `None` when this key did not make it, it is malformed,
    /// or it has expired.
    pub fn read(&self, token: &str, now: u64) -> Option<Minted> {
        let (signed, mac) = token.rsplit_once('.')?;
        let payload = signed.strip_prefix(PREFIX)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        // Checked in constant time, before the payload is even parsed.
        self.mac(signed).verify_slice(&mac).ok()?;
        let grant: Minted = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (now < grant.exp).then_some(grant)
    }

    /// Whether `token` is of the minted form (then only [`MintKey::read`] decides about it).
    pub fn looks_minted(token: &str) -> bool {
        token.starts_with(PREFIX)
    }

    fn mac(&self, signed: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(signed.as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MintKey {
        MintKey::new(vec![byte; 32]).unwrap()
    }

    #[test]
    fn a_token_is_read_only_by_its_key_unaltered_and_in_time() {
        let token = key(1).mint("acme", Role::Admin, 60, 1000);
        assert_eq!(key(1).read(&token, 1059).unwrap().tenant, "acme");
        assert!(key(1).read(&token, 1060).is_none(), "expired at exp");
        assert!(key(2).read(&token, 1000).is_none(), "another key");
        // Another tenant written into the payload, the MAC kept: refused.
        let (_, mac) = token.rsplit_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"tenant":"globex","role":"admin","exp":9999}"#);
        assert!(key(1).read(&format!("agt1.{forged}.{mac}"), 1000).is_none());
        for bad in [
            "",
            "agt1.",
            "agt1..",
            "agt1.x.y",
            "x.y.z",
            &token[..token.len() - 1],
        ] {
            assert!(key(1).read(bad, 1000).is_none(), "{bad:?}");
        }
        assert!(MintKey::new(vec![0; 31]).is_none(), "too short a key");
    }
}
