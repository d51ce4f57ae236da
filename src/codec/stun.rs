//! STUN message parsing and writing (RFC 8489 §5, §14), with the TURN attributes of RFC 8656 §18,
//! RFC 6062 §6.2 and RFC 6156/8656 address families.
//!
//! Parsing is zero-copy and allocation-free: [`Message::parse`] validates the framing once and
//! keeps the attribute offsets in a fixed array, so every later lookup is a scan of at most
//! [`MAX_ATTRS`] entries. Writing appends to a caller-owned `Vec<u8>` that the caller reuses.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

pub const HEADER_LEN: usize = 20;
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const COOKIE_BYTES: [u8; 4] = MAGIC_COOKIE.to_be_bytes();
/// RFC 8489 §14.7: CRC-32 XOR 0x5354554e.
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// More attributes than this in one message is not a real client: reject (bounded parse work).
pub const MAX_ATTRS: usize = 32;

/// Methods (RFC 8489 §18.2, RFC 8656 §17, RFC 6062 §6.1).
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
    pub const CONNECT: u16 = 0x00a;
    pub const CONNECTION_BIND: u16 = 0x00b;
    pub const CONNECTION_ATTEMPT: u16 = 0x00c;
}

/// Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 6062 §6.2, RFC 5780 §7).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const CHANGE_REQUEST: u16 = 0x0003;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const CONNECTION_ID: u16 = 0x002A;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    /// The code point of ADDITIONAL-ADDRESS-FAMILY in draft-ietf-tram-turnbis, still sent by
    /// coturn's clients; accepted as an alias.
    pub const ADDITIONAL_ADDRESS_FAMILY_DRAFT: u16 = 0x8032;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const ICMP: u16 = 0x8004;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    pub const OTHER_ADDRESS: u16 = 0x802C;

    /// Comprehension-required attributes (type < 0x8000) this server understands. Any other
    /// comprehension-required attribute in a request earns a 420 (RFC 8489 §6.3.1, §15).
    pub const KNOWN_REQUIRED: &[u16] = &[
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        CHANNEL_NUMBER,
        LIFETIME,
        XOR_PEER_ADDRESS,
        DATA,
        REALM,
        NONCE,
        XOR_RELAYED_ADDRESS,
        REQUESTED_ADDRESS_FAMILY,
        EVEN_PORT,
        REQUESTED_TRANSPORT,
        DONT_FRAGMENT,
        MESSAGE_INTEGRITY_SHA256,
        PASSWORD_ALGORITHM,
        USERHASH,
        XOR_MAPPED_ADDRESS,
        RESERVATION_TOKEN,
        PRIORITY,
        USE_CANDIDATE,
        CONNECTION_ID,
    ];
}

/// Password algorithm numbers (RFC 8489 §18.5).
pub mod password_algorithm {
    pub const MD5: u16 = 0x0001;
    pub const SHA256: u16 = 0x0002;
}

/// Message class (RFC 8489 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// RFC 8489 §5: the class bits C1 C0 are bits 8 and 4 of the type; the method fills the rest.
pub fn encode_type(method: u16, class: Class) -> u16 {
    let c = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    let m = method & 0x0fff;
    (m & 0x000f) | ((m & 0x0070) << 1) | ((m & 0x0f80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

pub fn decode_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000f) | ((t & 0x00e0) >> 1) | ((t & 0x3e00) >> 2);
    let class = match ((t >> 7) & 2) | ((t >> 4) & 1) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not a STUN message at all (wrong leading bits, no magic cookie, too short): drop silently.
    NotStun,
    /// The header is STUN but the body is broken: a request may get a 400.
    Malformed(&'static str),
    /// FINGERPRINT present and wrong: per RFC 8489 §7.3 this is not a STUN message; drop.
    BadFingerprint,
}

#[derive(Clone, Copy, Debug, Default)]
struct AttrPos {
    ty: u16,
    /// Offset of the value (after the 4-byte attribute header). u32: on a stream transport a
    /// message can be 20 + 65532 bytes, so a value may start past offset 65535.
    off: u32,
    len: u16,
}

/// A parsed, framing-validated STUN message borrowing the datagram.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    raw: &'a [u8],
    pub method: u16,
    pub class: Class,
    attrs: [AttrPos; MAX_ATTRS],
    n_attrs: usize,
    /// Offset of the MESSAGE-INTEGRITY / -SHA256 attribute headers, if present.
    mi_off: Option<usize>,
    mi256_off: Option<usize>,
    pub has_fingerprint: bool,
}

/// Cheap check used by the demultiplexer (RFC 7983 §7): first two bits 0, magic cookie present.
#[inline]
pub fn looks_like_stun(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN && b[0] < 4 && b[4..8] == COOKIE_BYTES
}

impl<'a> Message<'a> {
    /// Length of the message on the wire (header and attributes).
    pub fn wire_len(&self) -> usize {
        self.raw.len()
    }

    /// Parse and validate framing: header, attribute lengths and padding, the attribute
    /// ordering rules of RFC 8489 §14.5-§14.7 (only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
    /// may follow MESSAGE-INTEGRITY; nothing may follow FINGERPRINT), and the FINGERPRINT value.
    /// Attributes after MESSAGE-INTEGRITY other than those are ignored, as §14.5 requires.
    pub fn parse(raw: &'a [u8]) -> Result<Self, ParseError> {
        if !looks_like_stun(raw) {
            return Err(ParseError::NotStun);
        }
        let t = u16::from_be_bytes([raw[0], raw[1]]);
        let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
        // RFC 8489 §5: the length excludes the header and is a multiple of 4; over UDP the
        // datagram holds exactly one message.
        if len % 4 != 0 || HEADER_LEN + len != raw.len() {
            return Err(ParseError::NotStun);
        }
        let (method, class) = decode_type(t);
        let mut m = Message {
            raw,
            method,
            class,
            attrs: [AttrPos::default(); MAX_ATTRS],
            n_attrs: 0,
            mi_off: None,
            mi256_off: None,
            has_fingerprint: false,
        };
        let mut off = HEADER_LEN;
        // Once integrity is seen, further attributes other than the permitted trailers are ignored.
        let mut ignoring = false;
        while off < raw.len() {
            if raw.len() - off < 4 {
                return Err(ParseError::Malformed("truncated attribute header"));
            }
            let ty = u16::from_be_bytes([raw[off], raw[off + 1]]);
            let alen = u16::from_be_bytes([raw[off + 2], raw[off + 3]]) as usize;
            let padded = (alen + 3) & !3;
            if off + 4 + padded > raw.len() {
                return Err(ParseError::Malformed("attribute overruns message"));
            }
            if m.has_fingerprint {
                return Err(ParseError::Malformed("attribute after FINGERPRINT"));
            }
            match ty {
                attr::MESSAGE_INTEGRITY if !ignoring => {
                    if alen != 20 {
                        return Err(ParseError::Malformed("MESSAGE-INTEGRITY length"));
                    }
                    m.mi_off = Some(off);
                    ignoring = true;
                }
                attr::MESSAGE_INTEGRITY_SHA256 if m.mi256_off.is_none() => {
                    // RFC 8489 §14.6: 16..=32 bytes, multiple of 4.
                    if !(16..=32).contains(&alen) || alen % 4 != 0 {
                        return Err(ParseError::Malformed("MESSAGE-INTEGRITY-SHA256 length"));
                    }
                    m.mi256_off = Some(off);
                    ignoring = true;
                }
                attr::FINGERPRINT => {
                    if alen != 4 {
                        return Err(ParseError::Malformed("FINGERPRINT length"));
                    }
                    let want = u32::from_be_bytes([
                        raw[off + 4],
                        raw[off + 5],
                        raw[off + 6],
                        raw[off + 7],
                    ]);
                    if fingerprint(raw, off) != want {
                        return Err(ParseError::BadFingerprint);
                    }
                    m.has_fingerprint = true;
                }
                _ if ignoring => {}
                _ => {
                    if m.n_attrs == MAX_ATTRS {
                        return Err(ParseError::Malformed("too many attributes"));
                    }
                    m.attrs[m.n_attrs] = AttrPos {
                        ty,
                        off: (off + 4) as u32,
                        len: alen as u16,
                    };
                    m.n_attrs += 1;
                }
            }
            off += 4 + padded;
        }
        Ok(m)
    }

    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        let mut t = [0u8; 12];
        t.copy_from_slice(&self.raw[8..20]);
        t
    }

    /// The first attribute of this type (before MESSAGE-INTEGRITY), if any.
    pub fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.iter().find(|(t, _)| *t == ty).map(|(_, v)| v)
    }

    /// All attributes (before MESSAGE-INTEGRITY), in order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &'a [u8])> + '_ {
        let raw = self.raw;
        self.attrs[..self.n_attrs]
            .iter()
            .map(move |a| (a.ty, &raw[a.off as usize..a.off as usize + a.len as usize]))
    }

    pub fn has(&self, ty: u16) -> bool {
        self.get(ty).is_some()
    }

    pub fn has_integrity(&self) -> bool {
        self.mi_off.is_some() || self.mi256_off.is_some()
    }

    /// Which integrity attribute the server should check: SHA-256 when present (RFC 8489 §9.2.4:
    /// a server that supports it uses it), else SHA-1.
    pub fn integrity_kind(&self) -> Option<IntegrityKind> {
        if self.mi256_off.is_some() {
            Some(IntegrityKind::Sha256)
        } else if self.mi_off.is_some() {
            Some(IntegrityKind::Sha1)
        } else {
            None
        }
    }

    /// Comprehension-required attributes this server does not understand (RFC 8489 §15).
    pub fn unknown_required(&self, out: &mut [u16; 8]) -> usize {
        let mut n = 0;
        for (t, _) in self.iter() {
            if t < 0x8000 && !attr::KNOWN_REQUIRED.contains(&t) && n < out.len() {
                out[n] = t;
                n += 1;
            }
        }
        n
    }

    /// Verify MESSAGE-INTEGRITY(-SHA256) with `key`, in constant time (hmac's `verify_*`).
    /// RFC 8489 §14.5: the HMAC covers the message up to the attribute, with the header length
    /// field rewritten to end just after the integrity attribute.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let (off, kind) = match (self.mi256_off, self.mi_off) {
            (Some(o), _) => (o, IntegrityKind::Sha256),
            (None, Some(o)) => (o, IntegrityKind::Sha1),
            _ => return false,
        };
        let alen = u16::from_be_bytes([self.raw[off + 2], self.raw[off + 3]]) as usize;
        let claimed = &self.raw[off + 4..off + 4 + alen];
        let patched_len = ((off + 4 + alen - HEADER_LEN) as u16).to_be_bytes();
        match kind {
            IntegrityKind::Sha1 => {
                let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
                    return false;
                };
                mac.update(&self.raw[0..2]);
                mac.update(&patched_len);
                mac.update(&self.raw[4..off]);
                mac.verify_slice(claimed).is_ok()
            }
            IntegrityKind::Sha256 => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                    return false;
                };
                mac.update(&self.raw[0..2]);
                mac.update(&patched_len);
                mac.update(&self.raw[4..off]);
                // §14.6: may be truncated to as few as 16 bytes (leftmost).
                mac.verify_truncated_left(claimed).is_ok()
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegrityKind {
    Sha1,
    Sha256,
}

/// RFC 8489 §14.7: CRC-32 of the message up to the FINGERPRINT attribute at `off`, with the
/// length field covering the FINGERPRINT attribute, XOR 0x5354554e.
fn fingerprint(raw: &[u8], off: usize) -> u32 {
    let patched_len = ((off + 8 - HEADER_LEN) as u16).to_be_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&raw[0..2]);
    h.update(&patched_len);
    h.update(&raw[4..off]);
    h.finalize() ^ FINGERPRINT_XOR
}

// ---------------------------------------------------------------- attribute value decoders

/// Decode an XOR-*-ADDRESS value (RFC 8489 §14.2).
pub fn decode_xor_addr(v: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match (v[1], v.len()) {
        (0x01, 8) => {
            let x = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x)), port))
        }
        (0x02, 20) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&v[4..20]);
            for (i, x) in b.iter_mut().enumerate() {
                *x ^= if i < 4 { COOKIE_BYTES[i] } else { tid[i - 4] };
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), port))
        }
        _ => None,
    }
}

/// Decode a plain (non-XOR) address value such as MAPPED-ADDRESS (RFC 8489 §14.1).
pub fn decode_addr(v: &[u8]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]);
    match (v[1], v.len()) {
        (0x01, 8) => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(v[4], v[5], v[6], v[7])),
            port,
        )),
        (0x02, 20) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&v[4..20]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), port))
        }
        _ => None,
    }
}

pub fn decode_u32(v: &[u8]) -> Option<u32> {
    (v.len() == 4).then(|| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}

/// ERROR-CODE (RFC 8489 §14.8) → (code, reason).
pub fn decode_error_code(v: &[u8]) -> Option<(u16, &str)> {
    if v.len() < 4 {
        return None;
    }
    let code = (v[2] & 0x7) as u16 * 100 + v[3] as u16;
    Some((code, std::str::from_utf8(&v[4..]).unwrap_or("")))
}

/// ADDRESS-ERROR-CODE (RFC 8656 §18.12) → (family, code, reason).
pub fn decode_address_error_code(v: &[u8]) -> Option<(u8, u16, &str)> {
    let (code, reason) = decode_error_code(v)?;
    Some((v[0], code, reason))
}

// ---------------------------------------------------------------- writer

/// Appends one STUN message to a reusable buffer. The length field is kept current, so
/// integrity and fingerprint can be computed at any point.
pub struct Writer<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
}

impl<'b> Writer<'b> {
    pub fn new(buf: &'b mut Vec<u8>, method: u16, class: Class, tid: &[u8; 12]) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&encode_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&COOKIE_BYTES);
        buf.extend_from_slice(tid);
        Writer { buf, start }
    }

    fn set_len(&mut self) {
        let l = (self.buf.len() - self.start - HEADER_LEN) as u16;
        self.buf[self.start + 2..self.start + 4].copy_from_slice(&l.to_be_bytes());
    }

    pub fn tid(&self) -> [u8; 12] {
        let mut t = [0u8; 12];
        t.copy_from_slice(&self.buf[self.start + 8..self.start + 20]);
        t
    }

    /// Append an attribute; pads to 4 bytes with zeros (RFC 8489 §14).
    pub fn attr(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        self.attr_with(ty, value.len(), |b| b.extend_from_slice(value))
    }

    fn attr_with(&mut self, ty: u16, len: usize, f: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.buf.extend_from_slice(&ty.to_be_bytes());
        self.buf.extend_from_slice(&(len as u16).to_be_bytes());
        f(self.buf);
        let pad = (4 - len % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self.set_len();
        self
    }

    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS (RFC 8489 §14.2).
    pub fn xor_addr(&mut self, ty: u16, addr: SocketAddr) -> &mut Self {
        let tid = self.tid();
        let port = (addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes();
        match addr.ip() {
            IpAddr::V4(ip) => {
                let x = (u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes();
                self.attr_with(ty, 8, |b| {
                    b.extend_from_slice(&[0, 1, port[0], port[1]]);
                    b.extend_from_slice(&x);
                })
            }
            IpAddr::V6(ip) => {
                let mut o = ip.octets();
                for (i, x) in o.iter_mut().enumerate() {
                    *x ^= if i < 4 { COOKIE_BYTES[i] } else { tid[i - 4] };
                }
                self.attr_with(ty, 20, |b| {
                    b.extend_from_slice(&[0, 2, port[0], port[1]]);
                    b.extend_from_slice(&o);
                })
            }
        }
    }

    /// A plain address attribute (MAPPED-ADDRESS, ALTERNATE-SERVER, OTHER-ADDRESS, ...).
    pub fn addr(&mut self, ty: u16, addr: SocketAddr) -> &mut Self {
        let port = addr.port().to_be_bytes();
        match addr.ip() {
            IpAddr::V4(ip) => self.attr_with(ty, 8, |b| {
                b.extend_from_slice(&[0, 1, port[0], port[1]]);
                b.extend_from_slice(&ip.octets());
            }),
            IpAddr::V6(ip) => self.attr_with(ty, 20, |b| {
                b.extend_from_slice(&[0, 2, port[0], port[1]]);
                b.extend_from_slice(&ip.octets());
            }),
        }
    }

    /// ERROR-CODE (RFC 8489 §14.8).
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let reason = &reason.as_bytes()[..reason.len().min(763)];
        self.attr_with(attr::ERROR_CODE, 4 + reason.len(), |b| {
            b.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
            b.extend_from_slice(reason);
        })
    }

    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12): why one family of a dual allocation was not
    /// allocated. Family (0x01 IPv4, 0x02 IPv6), 13 reserved bits, class and number as in
    /// ERROR-CODE, reason phrase.
    pub fn address_error_code(&mut self, family: u8, code: u16, reason: &str) -> &mut Self {
        let reason = &reason.as_bytes()[..reason.len().min(763)];
        self.attr_with(attr::ADDRESS_ERROR_CODE, 4 + reason.len(), |b| {
            b.extend_from_slice(&[family, 0, (code / 100) as u8, (code % 100) as u8]);
            b.extend_from_slice(reason);
        })
    }

    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.9).
    pub fn unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        self.attr_with(attr::UNKNOWN_ATTRIBUTES, types.len() * 2, |b| {
            for t in types {
                b.extend_from_slice(&t.to_be_bytes());
            }
        })
    }

    /// MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 over everything written so far.
    pub fn integrity(&mut self, kind: IntegrityKind, key: &[u8]) -> &mut Self {
        let (ty, alen) = match kind {
            IntegrityKind::Sha1 => (attr::MESSAGE_INTEGRITY, 20usize),
            IntegrityKind::Sha256 => (attr::MESSAGE_INTEGRITY_SHA256, 32usize),
        };
        // The length field must already count the integrity attribute (RFC 8489 §14.5).
        let l = (self.buf.len() - self.start - HEADER_LEN + 4 + alen) as u16;
        self.buf[self.start + 2..self.start + 4].copy_from_slice(&l.to_be_bytes());
        let msg = &self.buf[self.start..];
        match kind {
            IntegrityKind::Sha1 => {
                let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC accepts any key");
                mac.update(msg);
                let out = mac.finalize().into_bytes();
                self.attr(ty, &out)
            }
            IntegrityKind::Sha256 => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key");
                mac.update(msg);
                let out = mac.finalize().into_bytes();
                self.attr(ty, &out)
            }
        }
    }

    /// FINGERPRINT; must be the last attribute (RFC 8489 §14.7).
    pub fn fingerprint(&mut self) -> &mut Self {
        let off = self.buf.len() - self.start;
        self.attr(attr::FINGERPRINT, &[0; 4]);
        let v = fingerprint(&self.buf[self.start..], off);
        let n = self.buf.len();
        self.buf[n - 4..].copy_from_slice(&v.to_be_bytes());
        self
    }

    /// Bytes of this message written so far.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes a Data indication (RFC 8656 §10.3) needs in front of its payload: header, XOR-PEER-ADDRESS
/// (IPv6 worst case) and the DATA attribute header.
pub const DATA_INDICATION_HEADROOM: usize = HEADER_LEN + 4 + 20 + 4;

/// Build a Data indication around a payload already in `buf[start..start + len]`, writing the
/// header and XOR-PEER-ADDRESS in front and zero padding behind (up to 3 bytes of tail room).
/// No allocation, no copy of the payload: this is the peer-to-client path without a channel.
pub fn data_indication_in_place(
    buf: &mut [u8],
    start: usize,
    len: usize,
    peer: SocketAddr,
    tid: &[u8; 12],
) -> std::ops::Range<usize> {
    let addr_len = if peer.is_ipv4() { 8 } else { 20 };
    let h = start - (HEADER_LEN + 4 + addr_len + 4);
    let pad = (4 - len % 4) % 4;
    let body = 4 + addr_len + 4 + len + pad;
    buf[h..h + 2].copy_from_slice(&encode_type(method::DATA, Class::Indication).to_be_bytes());
    buf[h + 2..h + 4].copy_from_slice(&(body as u16).to_be_bytes());
    buf[h + 4..h + 8].copy_from_slice(&COOKIE_BYTES);
    buf[h + 8..h + 20].copy_from_slice(tid);
    let a = h + HEADER_LEN;
    buf[a..a + 2].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    buf[a + 2..a + 4].copy_from_slice(&(addr_len as u16).to_be_bytes());
    let port = (peer.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes();
    buf[a + 4..a + 8].copy_from_slice(&[0, if peer.is_ipv4() { 1 } else { 2 }, port[0], port[1]]);
    match peer.ip() {
        IpAddr::V4(ip) => {
            buf[a + 8..a + 12].copy_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes())
        }
        IpAddr::V6(ip) => {
            let o = ip.octets();
            for i in 0..16 {
                buf[a + 8 + i] = o[i] ^ if i < 4 { COOKIE_BYTES[i] } else { tid[i - 4] };
            }
        }
    }
    let d = a + 4 + addr_len;
    buf[d..d + 2].copy_from_slice(&attr::DATA.to_be_bytes());
    buf[d + 2..d + 4].copy_from_slice(&(len as u16).to_be_bytes());
    debug_assert_eq!(d + 4, start);
    buf[start + len..start + len + pad].fill(0);
    h..start + len + pad
}

/// Reason phrases (RFC 8489 §14.8, RFC 8656 §19, RFC 6062 §6.3).
pub fn reason(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        446 => "Connection Already Exists",
        447 => "Connection Timeout or Failure",
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5769 §2.1: sample request (short-term credential, password "VOkJxbRl1RmTxUk/WvJxBt").
    const REQ: &str = "0001 0058 2112a442 b7e7a701 bc34d686 fa87dfae
        80220010 5354554e 20746573 7420636c 69656e74
        00240004 6e0001ff
        80290008 932ff9b1 51263b36
        00060009 6576746a 3a683676 59202020
        00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
        80280004 e57a3bcf";
    /// RFC 5769 §2.2: sample IPv4 response.
    const RESP4: &str = "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220
        002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96";
    /// RFC 5769 §2.3: sample IPv6 response.
    const RESP6: &str = "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220
        002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed41
        80280004c8fb0b4c";
    /// RFC 5769 §2.4: request with long-term credentials (username "マトリックス" → SASLprep'd,
    /// realm "example.org", nonce, password "TheMatrIX").
    const REQ_LT: &str = "0001 0060 2112a442 78ad3433 c6ad72c0 29da412e
        00060012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
        0015001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
        0014000b 6578616d 706c652e 6f726700
        00080014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666";

    #[test]
    fn rfc5769_request_short_term() {
        let b = hex(REQ);
        let m = Message::parse(&b).unwrap();
        assert_eq!((m.method, m.class), (method::BINDING, Class::Request));
        assert!(m.has_fingerprint);
        assert_eq!(m.get(attr::SOFTWARE).unwrap(), b"STUN test client");
        assert_eq!(m.get(attr::PRIORITY).unwrap(), &[0x6e, 0, 1, 0xff]);
        assert_eq!(m.get(attr::USERNAME).unwrap(), b"evtj:h6vY");
        assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBT"));
    }

    #[test]
    fn rfc5769_responses() {
        for (v, want) in [
            (RESP4, "192.0.2.1:32853"),
            (RESP6, "[2001:db8:1234:5678:11:2233:4455:6677]:32853"),
        ] {
            let b = hex(v);
            let m = Message::parse(&b).unwrap();
            assert_eq!(m.class, Class::Success);
            let a = decode_xor_addr(
                m.get(attr::XOR_MAPPED_ADDRESS).unwrap(),
                &m.transaction_id(),
            );
            assert_eq!(a.unwrap(), want.parse::<SocketAddr>().unwrap());
            assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        }
    }

    #[test]
    fn rfc5769_long_term() {
        let b = hex(REQ_LT);
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.get(attr::REALM).unwrap(), b"example.org");
        // key = MD5(username ":" realm ":" SASLprep(password)); "TheMatrIX" is unchanged by SASLprep.
        let key = crate::codec::long_term_key_md5(
            "\u{30de}\u{30c8}\u{30ea}\u{30c3}\u{30af}\u{30b9}",
            "example.org",
            "TheMatrIX",
        );
        assert!(m.verify_integrity(&key));
    }

    #[test]
    fn writer_roundtrip_matches_rfc5769_response() {
        // Re-encode the RFC 5769 IPv4 response and compare byte for byte.
        let want = hex(RESP4);
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&want[8..20]);
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Success, &tid);
        w.attr(attr::SOFTWARE, b"test vector")
            .xor_addr(attr::XOR_MAPPED_ADDRESS, "192.0.2.1:32853".parse().unwrap())
            .integrity(IntegrityKind::Sha1, b"VOkJxbRl1RmTxUk/WvJxBt")
            .fingerprint();
        // RFC 5769 pads SOFTWARE with spaces where we pad with zeros (both valid, §14), so
        // compare what a receiver sees rather than bytes.
        let ours = Message::parse(&buf).unwrap();
        let theirs = Message::parse(&want).unwrap();
        assert_eq!(
            ours.get(attr::XOR_MAPPED_ADDRESS),
            theirs.get(attr::XOR_MAPPED_ADDRESS)
        );
        assert!(ours.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert_eq!(buf.len(), want.len());
    }

    #[test]
    fn data_indication_in_place_parses() {
        for peer in ["203.0.113.9:4000", "[2001:db8::9]:4000"] {
            let peer: SocketAddr = peer.parse().unwrap();
            let mut buf = [0xffu8; 128];
            let start = DATA_INDICATION_HEADROOM;
            buf[start..start + 5].copy_from_slice(b"hello");
            let r = data_indication_in_place(&mut buf, start, 5, peer, &[4; 12]);
            let m = Message::parse(&buf[r]).unwrap();
            assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
            assert_eq!(
                decode_xor_addr(m.get(attr::XOR_PEER_ADDRESS).unwrap(), &[4; 12]),
                Some(peer)
            );
            assert_eq!(m.get(attr::DATA).unwrap(), b"hello");
        }
    }

    #[test]
    fn type_encoding() {
        for m in [
            method::BINDING,
            method::ALLOCATE,
            method::CONNECTION_ATTEMPT,
            0xfff,
        ] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                assert_eq!(decode_type(encode_type(m, c)), (m, c));
            }
        }
        assert_eq!(encode_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(encode_type(method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(encode_type(method::DATA, Class::Indication), 0x0017);
    }

    #[test]
    fn rejects_bad_framing() {
        let mut b = hex(REQ);
        assert_eq!(Message::parse(&b[..19]).unwrap_err(), ParseError::NotStun);
        b[4] = 0; // no magic cookie
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::NotStun);
        let mut b = hex(REQ);
        let last = b.len() - 1;
        b[last] ^= 1;
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadFingerprint);
        // attribute length overrunning the message
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::BINDING, Class::Request, &[1; 12])
            .attr(attr::SOFTWARE, b"abcd");
        buf[22..24].copy_from_slice(&100u16.to_be_bytes());
        assert!(matches!(
            Message::parse(&buf),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[7; 12]);
        w.attr(attr::USERNAME, b"u")
            .integrity(IntegrityKind::Sha1, b"k");
        w.attr(attr::SOFTWARE, b"late");
        let m = Message::parse(&buf).unwrap();
        assert!(m.get(attr::SOFTWARE).is_none());
        assert!(m.verify_integrity(b"k"));
    }

    #[test]
    fn sha256_integrity_and_truncation() {
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[3; 12])
            .attr(attr::USERNAME, b"alice")
            .integrity(IntegrityKind::Sha256, b"secret-key");
        let m = Message::parse(&buf).unwrap();
        assert_eq!(m.integrity_kind(), Some(IntegrityKind::Sha256));
        assert!(m.verify_integrity(b"secret-key"));
        assert!(!m.verify_integrity(b"secret-kez"));
        // A sender may truncate the HMAC to 16 bytes (§14.6); the length field then counts
        // the 16-byte attribute. Build one by hand.
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[3; 12])
            .attr(attr::USERNAME, b"alice");
        let l = (buf.len() - HEADER_LEN + 20) as u16;
        buf[2..4].copy_from_slice(&l.to_be_bytes());
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret-key").unwrap();
        mac.update(&buf);
        let full = mac.finalize().into_bytes();
        buf.extend_from_slice(&attr::MESSAGE_INTEGRITY_SHA256.to_be_bytes());
        buf.extend_from_slice(&16u16.to_be_bytes());
        buf.extend_from_slice(&full[..16]);
        let m = Message::parse(&buf).unwrap();
        assert!(m.verify_integrity(b"secret-key"));
        assert!(!m.verify_integrity(b"other"));
    }

    #[test]
    fn xor_addr_roundtrip() {
        let tid = [9u8; 12];
        for a in ["1.2.3.4:5", "[2001:db8::1]:65535", "[::ffff:1.2.3.4]:1"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut buf = Vec::new();
            Writer::new(&mut buf, method::BINDING, Class::Success, &tid)
                .xor_addr(attr::XOR_MAPPED_ADDRESS, a)
                .addr(attr::MAPPED_ADDRESS, a);
            let m = Message::parse(&buf).unwrap();
            assert_eq!(
                decode_xor_addr(m.get(attr::XOR_MAPPED_ADDRESS).unwrap(), &tid),
                Some(a)
            );
            assert_eq!(decode_addr(m.get(attr::MAPPED_ADDRESS).unwrap()), Some(a));
        }
    }

    #[test]
    fn address_error_code_layout() {
        // RFC 8656 §18.12: Family (8 bits), Reserved (13), Class (3), Number (8), reason.
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::ALLOCATE, Class::Success, &[3; 12]).address_error_code(
            2,
            440,
            "Address Family not Supported",
        );
        let m = Message::parse(&buf).unwrap();
        let v = m.get(attr::ADDRESS_ERROR_CODE).unwrap();
        assert_eq!(&v[..4], &[2, 0, 4, 40]);
        assert_eq!(
            decode_address_error_code(v),
            Some((2, 440, "Address Family not Supported"))
        );
    }

    #[test]
    fn unknown_required_attributes() {
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::BINDING, Class::Request, &[1; 12])
            .attr(0x7777, b"x")
            .attr(0x8777, b"optional is fine")
            .attr(attr::CHANGE_REQUEST, &[0, 0, 0, 6]);
        let m = Message::parse(&buf).unwrap();
        let mut u = [0u16; 8];
        let n = m.unknown_required(&mut u);
        assert_eq!(&u[..n], &[0x7777, attr::CHANGE_REQUEST]);
    }
}
