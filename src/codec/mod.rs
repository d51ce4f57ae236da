//! STUN/TURN wire format: pure functions on bytes.
//!
//! - [`stun`]: messages (control path): parse, attributes, integrity, fingerprint, writer.
//! - [`channel_data`]: ChannelData (data path), hand-written, no allocation.
//! - [`framing`]: message boundaries on TCP/TLS streams.
pub mod channel_data;
pub mod framing;
pub mod stun;

use md5::{Digest, Md5};
use sha2::Sha256;

/// Hash of `parts` joined by ':' (the long-term key and USERHASH formulas of RFC 8489).
fn colon_joined<D: Digest>(parts: &[&str]) -> D {
    let mut h = D::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p.as_bytes());
    }
    h
}

/// RFC 8489 §9.2.2: key = MD5(username ":" realm ":" password) for PASSWORD-ALGORITHM MD5.
pub fn long_term_key_md5(user: &str, realm: &str, pass: &str) -> [u8; 16] {
    colon_joined::<Md5>(&[user, realm, pass]).finalize().into()
}

/// RFC 8489 §9.2.2: key = SHA-256(username ":" realm ":" password) for PASSWORD-ALGORITHM SHA-256.
pub fn long_term_key_sha256(user: &str, realm: &str, pass: &str) -> [u8; 32] {
    colon_joined::<Sha256>(&[user, realm, pass])
        .finalize()
        .into()
}

/// RFC 8489 §14.4: USERHASH = SHA-256(username ":" realm).
pub fn userhash(user: &str, realm: &str) -> [u8; 32] {
    colon_joined::<Sha256>(&[user, realm]).finalize().into()
}
