//! Long-term credential mechanism (RFC 8489 §9.2): static users, the TURN REST API shared secret
//! (draft-uberti-behave-turn-rest-00, as coturn implements it), stateless nonces, USERHASH and
//! PASSWORD-ALGORITHMS. Every MAC comparison goes through `hmac`'s constant-time `verify_*`.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use super::config::{EngineConfig, UserKey};
use crate::codec::stun::{attr, password_algorithm, IntegrityKind, Message};
use crate::codec::{long_term_key_md5, long_term_key_sha256, userhash};

/// RFC 8489 §9.2: nonce cookie announcing the security features of §9.2.
const NONCE_COOKIE: &str = "obMatJos2";
/// Security feature set after the cookie (§9.2, registry §18.1): bit 0 "password algorithms",
/// bit 1 "username anonymity", 24 bits in base64. Implementations disagree on which end bit 0
/// is (stun-rs: the most significant bit; RFC 8489's Appendix B vector: the least), so each
/// feature is set at both ends; the other end's bit is unassigned and ignored by either reading.
/// Password algorithms alone: 0x80 0x00 0x01.
const FEATURES_ALGORITHMS: &str = "gAAB";
/// Both features: 0xC0 0x00 0x03.
const FEATURES_ALGORITHMS_ANONYMITY: &str = "wAAD";
/// Nonce stamp bit: the nonce was issued with [`PASSWORD_ALGORITHMS_MD5`].
const LIST_BIT: u64 = 0x0080_0000;
/// Nonce HMAC tag length in bytes (hex-encoded in the nonce).
const NONCE_TAG_LEN: usize = 10;
/// The PASSWORD-ALGORITHMS value we offer: SHA-256 first (preferred), then MD5; no parameters.
pub const PASSWORD_ALGORITHMS: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];
/// Offered instead when a user has only an HA1 (MD5) key: a client takes the first algorithm
/// it supports and does not retry with another (§9.2.5), so offering SHA-256 would lock such
/// users out.
pub const PASSWORD_ALGORITHMS_MD5: [u8; 4] = [0, 1, 0, 0];

/// A derived long-term key (MD5 → 16 bytes, SHA-256 → 32 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    bytes: [u8; 32],
    len: u8,
}

impl Key {
    pub fn md5(k: [u8; 16]) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&k);
        Key { bytes, len: 16 }
    }
    pub fn sha256(k: [u8; 32]) -> Self {
        Key { bytes: k, len: 32 }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Who sent an authenticated request, and how to sign the answer.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub username: String,
    pub key: Key,
    /// How to sign responses (RFC 8489 §9.2.4): MESSAGE-INTEGRITY-SHA256 once a password
    /// algorithm was negotiated, else the integrity attribute the request used.
    pub kind: IntegrityKind,
    /// PASSWORD-ALGORITHM used to derive `key`; later requests on the allocation must match.
    pub algorithm: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No MESSAGE-INTEGRITY: the normal first round trip → 401 with REALM and NONCE.
    Challenge,
    /// Integrity present but required attributes missing or inconsistent → 400.
    BadRequest(&'static str),
    /// NONCE not ours or expired → 438 with a fresh one.
    StaleNonce,
    /// Unknown user, wrong password, expired REST credential → 401.
    Unauthorized(&'static str),
}

struct StaticUser {
    md5: [u8; 16],
    sha256: Option<[u8; 32]>,
}

/// Credential checking, built once from the config (and rebuilt on reload).
pub struct Auth {
    realm: String,
    users: HashMap<String, StaticUser>,
    /// USERHASH → username (RFC 8489 §14.4); only static users can be found this way.
    by_hash: HashMap<[u8; 32], String>,
    secrets: Vec<String>,
    nonce_key: [u8; 32],
    nonce_lifetime: u64,
    /// PASSWORD-ALGORITHMS sent in every 401/438 and expected back.
    algorithms: &'static [u8],
    /// The nonce's security features: username anonymity only when a USERHASH can name every
    /// user (static users; a TURN REST API name cannot be found from its hash), since a client
    /// told so MUST send USERHASH (§9.2.5).
    features: &'static str,
}

impl Auth {
    pub fn new(cfg: &EngineConfig, nonce_key: [u8; 32]) -> Self {
        let mut users = HashMap::new();
        let mut by_hash = HashMap::new();
        for (name, k) in &cfg.users {
            let u = match k {
                UserKey::Password(p) => StaticUser {
                    md5: long_term_key_md5(name, &cfg.realm, p),
                    sha256: Some(long_term_key_sha256(name, &cfg.realm, p)),
                },
                UserKey::Ha1(h) => StaticUser {
                    md5: *h,
                    sha256: None,
                },
            };
            users.insert(name.clone(), u);
            by_hash.insert(userhash(name, &cfg.realm), name.clone());
        }
        let ha1_only = users.values().any(|u| u.sha256.is_none());
        Auth {
            realm: cfg.realm.clone(),
            users,
            by_hash,
            secrets: cfg.auth_secrets.clone(),
            nonce_key,
            nonce_lifetime: cfg.nonce_lifetime.as_secs().max(1),
            algorithms: if ha1_only {
                &PASSWORD_ALGORITHMS_MD5
            } else {
                &PASSWORD_ALGORITHMS
            },
            features: if cfg.auth_secrets.is_empty() {
                FEATURES_ALGORITHMS_ANONYMITY
            } else {
                FEATURES_ALGORITHMS
            },
        }
    }

    /// The PASSWORD-ALGORITHMS value of this configuration's challenges.
    pub fn algorithms(&self) -> &'static [u8] {
        self.algorithms
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// HMAC(key, expiry:salt || client IP). The IP, not the port: an RFC 6062 client reuses
    /// its control connection's nonce on its data connections, which come from other ports.
    /// The random salt keeps nonces distinct per challenge (RFC 8489 §9.2.4: never the same
    /// NONCE for requests from different transport addresses).
    fn nonce_mac(&self, stamp: u64, client: SocketAddr) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.nonce_key).expect("any key");
        mac.update(&stamp.to_be_bytes());
        match client.ip() {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        mac
    }

    /// A stateless nonce: cookie + features + hex(expiry) + hex(HMAC(key, expiry || client
    /// transport address)). Nothing is stored per client; any shard can verify it.
    pub fn make_nonce(&self, client: SocketAddr, unix_now: u64, salt: u32) -> String {
        let expiry = unix_now + self.nonce_lifetime;
        // 40 bits of expiry (Unix seconds), 1 bit for the PASSWORD-ALGORITHMS offered with it,
        // 23 bits of salt.
        let stamp = (expiry << 24) | self.list_bit() | u64::from(salt & 0x007f_ffff);
        let tag: [u8; 32] = self.nonce_mac(stamp, client).finalize().into_bytes().into();
        let mut s = String::with_capacity(64);
        s.push_str(NONCE_COOKIE);
        s.push_str(self.features);
        s.push_str(&format!("{stamp:016x}"));
        for b in &tag[..NONCE_TAG_LEN] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn nonce_valid(&self, nonce: &[u8], client: SocketAddr, unix_now: u64) -> bool {
        let prefix = NONCE_COOKIE.len() + self.features.len();
        if nonce.len() != prefix + 16 + 2 * NONCE_TAG_LEN
            || !nonce.starts_with(NONCE_COOKIE.as_bytes())
        {
            return false;
        }
        let Some(stamp) = parse_hex_u64(&nonce[prefix..prefix + 16]) else {
            return false;
        };
        let expiry = stamp >> 24;
        let mut claimed = [0u8; NONCE_TAG_LEN];
        for (i, c) in claimed.iter_mut().enumerate() {
            let o = prefix + 16 + 2 * i;
            match parse_hex_u64(&nonce[o..o + 2]) {
                Some(v) => *c = v as u8,
                None => return false,
            }
        }
        self.nonce_mac(stamp, client)
            .verify_truncated_left(&claimed)
            .is_ok()
            && expiry > unix_now
            // Issued with the other PASSWORD-ALGORITHMS (a reload added the first `0x<md5>`
            // user or removed the last): stale, so the 438 carries the list now offered, and
            // a client echoing a list we never sent with this nonce still gets 400 (§9.2.4).
            && stamp & LIST_BIT == self.list_bit()
    }

    fn list_bit(&self) -> u64 {
        if self.algorithms == PASSWORD_ALGORITHMS_MD5 {
            LIST_BIT
        } else {
            0
        }
    }

    /// RFC 8489 §9.2.4: check a request that should carry long-term credentials.
    pub fn authenticate(
        &self,
        msg: &Message,
        client: SocketAddr,
        unix_now: u64,
    ) -> Result<Authenticated, AuthError> {
        let Some(kind) = msg.integrity_kind() else {
            return Err(AuthError::Challenge);
        };
        let username = msg.get(attr::USERNAME);
        let uhash = msg.get(attr::USERHASH);
        let (Some(realm), Some(nonce)) = (msg.get(attr::REALM), msg.get(attr::NONCE)) else {
            return Err(AuthError::BadRequest("missing REALM or NONCE"));
        };
        if username.is_none() && uhash.is_none() {
            return Err(AuthError::BadRequest("missing USERNAME"));
        }
        if !self.nonce_valid(nonce, client, unix_now) {
            return Err(AuthError::StaleNonce);
        }
        if realm != self.realm.as_bytes() {
            return Err(AuthError::Unauthorized("wrong realm"));
        }
        // Bid-down protection (§9.2.4): PASSWORD-ALGORITHMS must echo what we sent, and
        // PASSWORD-ALGORITHM must be one of them; with neither, MD5.
        let algorithm = match (
            msg.get(attr::PASSWORD_ALGORITHM),
            msg.get(attr::PASSWORD_ALGORITHMS),
        ) {
            (None, None) => password_algorithm::MD5,
            (Some(a), Some(list)) => {
                if list != self.algorithms {
                    return Err(AuthError::BadRequest("PASSWORD-ALGORITHMS mismatch"));
                }
                if a.len() < 4 {
                    return Err(AuthError::BadRequest("PASSWORD-ALGORITHM length"));
                }
                // §9.2.4: the algorithm must be one of those offered (4-byte entries: ours
                // carry no parameters).
                let alg = u16::from_be_bytes([a[0], a[1]]);
                if !list.chunks(4).any(|e| e[..2] == alg.to_be_bytes()) {
                    return Err(AuthError::BadRequest("unsupported PASSWORD-ALGORITHM"));
                }
                alg
            }
            _ => return Err(AuthError::BadRequest("PASSWORD-ALGORITHM(S) incomplete")),
        };
        // §9.2.4, last paragraph: responses carry MESSAGE-INTEGRITY-SHA256 unless the request had
        // neither PASSWORD-ALGORITHM nor PASSWORD-ALGORITHMS (then the attribute it used).
        let kind = if msg.has(attr::PASSWORD_ALGORITHM) {
            IntegrityKind::Sha256
        } else {
            kind
        };
        let name: String = match (uhash, username) {
            (Some(h), _) => {
                let Ok(h): Result<[u8; 32], _> = h.try_into() else {
                    return Err(AuthError::BadRequest("USERHASH length"));
                };
                match self.by_hash.get(&h) {
                    Some(n) => n.clone(),
                    None => return Err(AuthError::Unauthorized("unknown user")),
                }
            }
            (None, Some(u)) => match std::str::from_utf8(u) {
                Ok(s) => s.to_owned(),
                Err(_) => return Err(AuthError::BadRequest("USERNAME not UTF-8")),
            },
            (None, None) => unreachable!("checked above"),
        };

        if let Some(u) = self.users.get(&name) {
            let key = match algorithm {
                password_algorithm::SHA256 => match u.sha256 {
                    Some(k) => Key::sha256(k),
                    None => return Err(AuthError::Unauthorized("SHA-256 key not available")),
                },
                _ => Key::md5(u.md5),
            };
            return if msg.verify_integrity(key.as_bytes()) {
                Ok(Authenticated {
                    username: name,
                    key,
                    kind,
                    algorithm,
                })
            } else {
                Err(AuthError::Unauthorized("bad MESSAGE-INTEGRITY"))
            };
        }

        if !self.secrets.is_empty() {
            // TURN REST API: username "expiry:user" (or just "expiry"), expiry in Unix seconds.
            let ts = name.split(':').next().unwrap_or("");
            let Ok(expiry) = ts.parse::<u64>() else {
                return Err(AuthError::Unauthorized("unknown user"));
            };
            if expiry <= unix_now {
                return Err(AuthError::Unauthorized("REST credential expired"));
            }
            for secret in &self.secrets {
                let pass = rest_password(secret, &name);
                let key = match algorithm {
                    password_algorithm::SHA256 => {
                        Key::sha256(long_term_key_sha256(&name, &self.realm, &pass))
                    }
                    _ => Key::md5(long_term_key_md5(&name, &self.realm, &pass)),
                };
                if msg.verify_integrity(key.as_bytes()) {
                    return Ok(Authenticated {
                        username: name,
                        key,
                        kind,
                        algorithm,
                    });
                }
            }
            return Err(AuthError::Unauthorized("bad MESSAGE-INTEGRITY"));
        }
        Err(AuthError::Unauthorized("unknown user"))
    }

    /// Re-derive the key of an allocation's owner for a later request that names the same user
    /// (the allocation keeps the key it was created with; RFC 8656 §7.1: same credentials).
    pub fn verify_with(&self, msg: &Message, key: &Key) -> bool {
        msg.verify_integrity(key.as_bytes())
    }
}

/// TURN REST API password: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn parse_hex_u64(b: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(b).ok()?;
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_coturn_recipe() {
        // Reference value computed independently with openssl:
        // `echo -n 1700000000:alice | openssl dgst -binary -sha1 -hmac s3cret | base64`.
        assert_eq!(
            rest_password("s3cret", "1700000000:alice"),
            "TtElzSjT0GdnTQ9xdcRNxx96yQs="
        );
    }

    #[test]
    fn nonce_features_and_algorithms_follow_the_config() {
        // A TURN REST API user cannot be found from a USERHASH: no anonymity bit then (a client
        // told so must send USERHASH, RFC 8489 §9.2.5).
        let ip: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let rest = EngineConfig {
            auth_secrets: vec!["s3cret".into()],
            ..EngineConfig::default()
        };
        let a = Auth::new(&rest, [7; 32]);
        let n = a.make_nonce(ip, 1000, 7);
        assert!(n.starts_with("obMatJos2gAAB"), "{n}");
        assert!(a.nonce_valid(n.as_bytes(), ip, 1000));
        // base64 of the 24 bits: 0x800001 and 0xC00003.
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(b64.decode(FEATURES_ALGORITHMS).unwrap(), [0x80, 0, 0x01]);
        assert_eq!(
            b64.decode(FEATURES_ALGORITHMS_ANONYMITY).unwrap(),
            [0xc0, 0, 0x03]
        );
        assert_eq!(a.algorithms(), PASSWORD_ALGORITHMS);
        // An HA1-only user has no SHA-256 key: MD5 alone is offered.
        let mut ha1 = EngineConfig::default();
        ha1.users.insert("carol".into(), UserKey::Ha1([1; 16]));
        let md5 = Auth::new(&ha1, [7; 32]);
        assert_eq!(md5.algorithms(), PASSWORD_ALGORITHMS_MD5);
        // A reload that changes the list makes the nonces issued with the other one stale
        // (same nonce key), so clients get a 438 with the new list rather than a 400.
        let both = Auth::new(&EngineConfig::default(), [7; 32]);
        let n = both.make_nonce(ip, 1000, 7);
        assert!(both.nonce_valid(n.as_bytes(), ip, 1000));
        assert!(!md5.nonce_valid(n.as_bytes(), ip, 1000));
        let n = md5.make_nonce(ip, 1000, 7);
        assert!(md5.nonce_valid(n.as_bytes(), ip, 1000));
        assert!(!both.nonce_valid(n.as_bytes(), ip, 1000));
    }

    #[test]
    fn nonce_roundtrip_and_expiry() {
        let cfg = EngineConfig::default();
        let a = Auth::new(&cfg, [7; 32]);
        let ip: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let n = a.make_nonce(ip, 1000, 7);
        assert_ne!(
            n,
            a.make_nonce(ip, 1000, 8),
            "salted: distinct per challenge"
        );
        // Static users only: password algorithms and username anonymity, at both ends.
        assert!(n.starts_with("obMatJos2wAAD"));
        assert!(n.len() < 128);
        assert!(a.nonce_valid(n.as_bytes(), ip, 1000));
        assert!(a.nonce_valid(n.as_bytes(), ip, 1000 + 599));
        assert!(!a.nonce_valid(n.as_bytes(), ip, 1000 + 600));
        assert!(!a.nonce_valid(n.as_bytes(), "192.0.2.2:5000".parse().unwrap(), 1000));
        // Valid from another port of the same IP (RFC 6062 data connections reuse it).
        assert!(a.nonce_valid(n.as_bytes(), "192.0.2.1:5001".parse().unwrap(), 1000));
        let mut bad = n.clone().into_bytes();
        let l = bad.len() - 1;
        bad[l] = if bad[l] == b'0' { b'1' } else { b'0' };
        assert!(!a.nonce_valid(&bad, ip, 1000));
        let other = Auth::new(&cfg, [8; 32]);
        assert!(!other.nonce_valid(n.as_bytes(), ip, 1000));
        assert!(!a.nonce_valid(b"obMatJos2wAADzzzz", ip, 1000));
    }
}
