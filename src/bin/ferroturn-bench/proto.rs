//! The client side of TURN control: request encoding, long-term credentials (401 → realm and
//! nonce → MESSAGE-INTEGRITY, 438 stale nonce), response handling, retransmission timers, and the
//! layout of the benchmark payload. Transport-free: callers move the bytes.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferroturn::codec::long_term_key_md5;
use ferroturn::codec::stun::{
    attr, decode_error_code, decode_u32, decode_xor_addr, method, Class, IntegrityKind, Message,
    Writer,
};

/// REQUESTED-TRANSPORT value: UDP (RFC 8656 §18.11), protocol number in the first byte.
const TRANSPORT_UDP: u32 = 17 << 24;
/// How many times a request is re-sent after 401/438 before giving up.
const MAX_AUTH_RETRIES: u8 = 3;

/// Long-term credentials of one client (one socket: nonces may be bound to the source port).
#[derive(Clone)]
pub struct Auth {
    pub user: String,
    pub password: String,
    /// `--realm`: use this realm instead of the one the server sends.
    pub realm_override: Option<String>,
    realm: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
    key: Option<[u8; 16]>,
}

impl Auth {
    pub fn new(user: String, password: String, realm_override: Option<String>) -> Self {
        Auth {
            user,
            password,
            realm_override,
            realm: None,
            nonce: None,
            key: None,
        }
    }

    /// Forget realm, nonce and key (a new socket: nonces may be bound to the source port).
    pub fn reset(&mut self) {
        self.realm = None;
        self.nonce = None;
        self.key = None;
    }

    /// Take REALM and NONCE from a 401/438 answer; (re)compute the key when the realm changes.
    fn learn(&mut self, m: &Message) -> bool {
        let Some(nonce) = m.get(attr::NONCE) else {
            return false;
        };
        self.nonce = Some(nonce.to_vec());
        let realm: Vec<u8> = match (&self.realm_override, m.get(attr::REALM)) {
            (Some(r), _) => r.as_bytes().to_vec(),
            (None, Some(r)) => r.to_vec(),
            (None, None) => match &self.realm {
                Some(r) => r.clone(),
                None => return false,
            },
        };
        if self.realm.as_deref() != Some(&realm[..]) || self.key.is_none() {
            let r = String::from_utf8_lossy(&realm).into_owned();
            self.key = Some(long_term_key_md5(&self.user, &r, &self.password));
            self.realm = Some(realm);
        }
        true
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Req {
    Allocate { lifetime: u32 },
    Refresh { lifetime: u32 },
    CreatePermission { peer: SocketAddr },
    ChannelBind { channel: u16, peer: SocketAddr },
}

impl Req {
    pub fn name(&self) -> &'static str {
        match self {
            Req::Allocate { .. } => "Allocate",
            Req::Refresh { .. } => "Refresh",
            Req::CreatePermission { .. } => "CreatePermission",
            Req::ChannelBind { .. } => "ChannelBind",
        }
    }

    fn method(&self) -> u16 {
        match self {
            Req::Allocate { .. } => method::ALLOCATE,
            Req::Refresh { .. } => method::REFRESH,
            Req::CreatePermission { .. } => method::CREATE_PERMISSION,
            Req::ChannelBind { .. } => method::CHANNEL_BIND,
        }
    }
}

/// What a successful answer told us.
#[derive(Clone, Copy, Debug, Default)]
pub struct Success {
    pub relayed: Option<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    pub lifetime: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// An error response (code, reason).
    Error(u16, String),
    /// 401 (or 441) to a request that already carried MESSAGE-INTEGRITY: wrong credentials.
    AuthFailed(u16, String),
    /// No answer before the deadline.
    Timeout,
    /// Socket error (connection refused, reset, ...).
    Io(String),
}

impl Failure {
    /// The key under which failures are counted in the report ("401", "timeout", ...).
    pub fn key(&self) -> String {
        match self {
            Failure::Error(c, _) | Failure::AuthFailed(c, _) => c.to_string(),
            Failure::Timeout => "timeout".into(),
            Failure::Io(_) => "io".into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(c, r) => write!(f, "error {c} {r}"),
            Failure::AuthFailed(c, r) => write!(f, "authentication failed ({c}): {r}"),
            Failure::Timeout => write!(f, "timeout"),
            Failure::Io(e) => write!(f, "{e}"),
        }
    }
}

pub enum Outcome {
    /// Not an answer to the outstanding transaction: ignore.
    NotOurs,
    Done(Success),
    /// Credentials learned or nonce refreshed: `Txn::buf` holds the new request; send it.
    Resend,
    Failed(Failure),
}

/// Transaction ids per getrandom call: 4 KiB of OS randomness serves 341 requests, instead of
/// one system call per request (RFC 8489 §6: ids are cryptographically random; they still are).
const TID_POOL: usize = 12 * 341;

struct TidPool {
    buf: [u8; TID_POOL],
    used: usize,
}

thread_local! {
    static TIDS: std::cell::RefCell<TidPool> = const {
        std::cell::RefCell::new(TidPool { buf: [0; TID_POOL], used: TID_POOL })
    };
}

fn random_tid() -> [u8; 12] {
    let mut t = [0u8; 12];
    let pooled = TIDS.with(|p| {
        let mut p = p.borrow_mut();
        if p.used == TID_POOL {
            if getrandom::fill(&mut p.buf).is_err() {
                return false;
            }
            p.used = 0;
        }
        let u = p.used;
        t.copy_from_slice(&p.buf[u..u + 12]);
        p.used += 12;
        true
    });
    if !pooled {
        // getrandom failed: a counter mixed with the wall clock and the pid still gives
        // distinct ids (they need to be unique, not secret, for a load client).
        static FALLBACK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let k = FALLBACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = clock ^ (u128::from(k) << 64) ^ u128::from(std::process::id());
        t.copy_from_slice(&n.to_le_bytes()[..12]);
    }
    t
}

/// One outstanding request with its retransmission state (RFC 8489 §6.2.1: over UDP, RTO
/// starting at 500 ms and doubling, given up at the deadline; over TCP, sent once).
pub struct Txn {
    pub req: Req,
    pub tid: [u8; 12],
    /// The encoded request, for (re)sending.
    pub buf: Vec<u8>,
    pub started: Instant,
    pub deadline: Instant,
    pub next_rto: Option<Instant>,
    rto: Duration,
    auth_retries: u8,
    with_integrity: bool,
}

impl Txn {
    pub fn new(req: Req, auth: &Auth, now: Instant, timeout: Duration, reliable: bool) -> Txn {
        let mut t = Txn {
            req,
            tid: [0; 12],
            buf: Vec::with_capacity(256),
            started: now,
            deadline: now + timeout,
            next_rto: None,
            rto: Duration::from_millis(500),
            auth_retries: 0,
            with_integrity: false,
        };
        t.encode(auth, now, reliable);
        t
    }

    /// (Re)build the request with a fresh transaction id and the current credentials.
    fn encode(&mut self, auth: &Auth, now: Instant, reliable: bool) {
        self.tid = random_tid();
        self.buf.clear();
        let mut w = Writer::new(&mut self.buf, self.req.method(), Class::Request, &self.tid);
        match self.req {
            Req::Allocate { lifetime } => {
                w.u32(attr::REQUESTED_TRANSPORT, TRANSPORT_UDP);
                w.u32(attr::LIFETIME, lifetime);
            }
            Req::Refresh { lifetime } => {
                w.u32(attr::LIFETIME, lifetime);
            }
            Req::CreatePermission { peer } => {
                w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
            }
            Req::ChannelBind { channel, peer } => {
                w.u32(attr::CHANNEL_NUMBER, u32::from(channel) << 16);
                w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
            }
        }
        self.with_integrity = false;
        if let (Some(realm), Some(nonce), Some(key)) = (&auth.realm, &auth.nonce, &auth.key) {
            w.attr(attr::USERNAME, auth.user.as_bytes());
            w.attr(attr::REALM, realm);
            w.attr(attr::NONCE, nonce);
            w.integrity(IntegrityKind::Sha1, key);
            self.with_integrity = true;
        }
        w.fingerprint();
        self.rto = Duration::from_millis(500);
        self.next_rto = (!reliable).then(|| now + self.rto);
    }

    /// Called when the retransmission timer fired: true = send `buf` again.
    pub fn on_rto(&mut self, now: Instant) -> bool {
        match self.next_rto {
            Some(t) if now >= t => {
                self.rto *= 2;
                self.next_rto = Some(now + self.rto);
                true
            }
            _ => false,
        }
    }

    /// The earliest instant this transaction needs attention.
    pub fn wake_at(&self) -> Instant {
        match self.next_rto {
            Some(t) => t.min(self.deadline),
            None => self.deadline,
        }
    }

    /// Handle a STUN message that arrived on the client's connection.
    pub fn on_message(
        &mut self,
        m: &Message,
        auth: &mut Auth,
        now: Instant,
        timeout: Duration,
        reliable: bool,
    ) -> Outcome {
        if m.transaction_id() != self.tid
            || m.method != self.req.method()
            || !matches!(m.class, Class::Success | Class::Error)
        {
            return Outcome::NotOurs;
        }
        if m.class == Class::Success {
            let tid = m.transaction_id();
            return Outcome::Done(Success {
                relayed: m
                    .get(attr::XOR_RELAYED_ADDRESS)
                    .and_then(|v| decode_xor_addr(v, &tid)),
                mapped: m
                    .get(attr::XOR_MAPPED_ADDRESS)
                    .and_then(|v| decode_xor_addr(v, &tid)),
                lifetime: m.get(attr::LIFETIME).and_then(decode_u32),
            });
        }
        let (code, reason) = m
            .get(attr::ERROR_CODE)
            .and_then(decode_error_code)
            .map(|(c, r)| (c, r.to_owned()))
            .unwrap_or((0, "no ERROR-CODE".into()));
        match code {
            401 if !self.with_integrity => {
                if !auth.learn(m) {
                    return Outcome::Failed(Failure::Error(code, "401 without REALM/NONCE".into()));
                }
            }
            401 | 441 => return Outcome::Failed(Failure::AuthFailed(code, reason)),
            438 => {
                if self.auth_retries >= MAX_AUTH_RETRIES || !auth.learn(m) {
                    return Outcome::Failed(Failure::Error(code, reason));
                }
            }
            _ => return Outcome::Failed(Failure::Error(code, reason)),
        }
        self.auth_retries += 1;
        if self.auth_retries > MAX_AUTH_RETRIES {
            return Outcome::Failed(Failure::Error(code, reason));
        }
        self.encode(auth, now, reliable);
        // A fresh deadline for the authenticated attempt.
        self.deadline = now + timeout;
        Outcome::Resend
    }
}

// ---------------------------------------------------------------- payload

/// Benchmark payload header: magic, sender client index, epoch, sequence, send time.
pub const PAYLOAD_MAGIC: [u8; 4] = *b"FtB1";
pub const PAYLOAD_HEADER: usize = 24;

/// Write the header into the first 24 bytes of `p`.
#[inline]
pub fn write_payload(p: &mut [u8], client: u32, epoch: u32, seq: u32, ts_ns: u64) {
    p[0..4].copy_from_slice(&PAYLOAD_MAGIC);
    p[4..8].copy_from_slice(&client.to_le_bytes());
    p[8..12].copy_from_slice(&epoch.to_le_bytes());
    p[12..16].copy_from_slice(&seq.to_le_bytes());
    p[16..24].copy_from_slice(&ts_ns.to_le_bytes());
}

pub struct PayloadHeader {
    pub client: u32,
    pub epoch: u32,
    pub seq: u32,
    pub ts_ns: u64,
}

#[inline]
pub fn read_payload(p: &[u8]) -> Option<PayloadHeader> {
    if p.len() < PAYLOAD_HEADER || p[0..4] != PAYLOAD_MAGIC {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&p[16..24]);
    Some(PayloadHeader {
        client: u32_at(4),
        epoch: u32_at(8),
        seq: u32_at(12),
        ts_ns: u64::from_le_bytes(ts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroturn::codec::stun::Writer;

    #[test]
    fn auth_flow_401_then_integrity() {
        let now = Instant::now();
        let t = Duration::from_secs(3);
        let mut auth = Auth::new("u".into(), "p".into(), None);
        let mut txn = Txn::new(Req::Allocate { lifetime: 600 }, &auth, now, t, false);
        assert!(!Message::parse(&txn.buf).unwrap().has_integrity());
        // the server's 401
        let mut b = Vec::new();
        Writer::new(&mut b, method::ALLOCATE, Class::Error, &txn.tid)
            .error_code(401, "Unauthorized")
            .attr(attr::REALM, b"r")
            .attr(attr::NONCE, b"n1");
        let m = Message::parse(&b).unwrap();
        assert!(matches!(
            txn.on_message(&m, &mut auth, now, t, false),
            Outcome::Resend
        ));
        let req = Message::parse(&txn.buf).unwrap();
        assert!(req.verify_integrity(&long_term_key_md5("u", "r", "p")));
        assert_eq!(req.get(attr::NONCE), Some(&b"n1"[..]));
        // a second 401 means wrong credentials
        let mut b = Vec::new();
        Writer::new(&mut b, method::ALLOCATE, Class::Error, &txn.tid)
            .error_code(401, "Unauthorized")
            .attr(attr::REALM, b"r")
            .attr(attr::NONCE, b"n2");
        let m = Message::parse(&b).unwrap();
        assert!(matches!(
            txn.on_message(&m, &mut auth, now, t, false),
            Outcome::Failed(Failure::AuthFailed(401, _))
        ));
    }

    #[test]
    fn transaction_ids_differ_across_pool_refills() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 * TID_POOL / 12 {
            assert!(seen.insert(random_tid()), "a transaction id came twice");
        }
    }

    #[test]
    fn payload_roundtrip() {
        let mut p = [0u8; 40];
        write_payload(&mut p, 7, 3, 99, 123_456_789);
        let h = read_payload(&p).unwrap();
        assert_eq!((h.client, h.epoch, h.ts_ns), (7, 3, 123_456_789));
        assert!(read_payload(&p[..20]).is_none());
    }
}
