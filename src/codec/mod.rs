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

/// RFC 8489 §9.2.2: key = MD5(username ":" realm ":" password) for PASSWORD-ALGORITHM MD5.
pub fn long_term_key_md5(user: &str, realm: &str, pass: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(pass.as_bytes());
    h.finalize().into()
}

/// RFC 8489 §9.2.2: key = SHA-256(username ":" realm ":" password) for PASSWORD-ALGORITHM SHA-256.
pub fn long_term_key_sha256(user: &str, realm: &str, pass: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(pass.as_bytes());
    h.finalize().into()
}

/// RFC 8489 §14.4: USERHASH = SHA-256(username ":" realm).
pub fn userhash(user: &str, realm: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.finalize().into()
}
