//! Engine unit tests: a fake clock, a fake runtime and a small TURN client. No sockets.
//!
//! The clock is an `Instant` the tests move forward by hand ([`Harness::set_time`]). The "runtime"
//! ([`Harness::pump`]) answers every [`RelayCommand::Bind`] at once through
//! [`Engine::on_relay_bound`] — with the requested address, or with `AddrInUse` when a test asks
//! for bind failures — and records every `Close`. The [`Client`] keeps REALM, NONCE and
//! PASSWORD-ALGORITHMS from the 401, signs its requests with MESSAGE-INTEGRITY(-SHA256) over the
//! long-term key, and checks the integrity of the answers.
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::allocation::{Relay, V4, V6};
use super::auth::{rest_password, PASSWORD_ALGORITHMS};
use super::peer_filter::{PeerFilter, PeerFilterConfig};
use super::shared::Shared;
use super::{
    ClientAction, Engine, EngineConfig, FiveTuple, RelayCommand, RelayId, Transport, UserKey,
    MAX_BIND_ATTEMPTS, PEER_HEADROOM, PEER_TAILROOM,
};
use crate::codec::stun::{
    attr, decode_address_error_code, decode_error_code, decode_u32, decode_xor_addr, method,
    password_algorithm, Class, IntegrityKind, Message, Writer,
};
use crate::codec::{long_term_key_md5, long_term_key_sha256, userhash};

// ---------------------------------------------------------------------------------- fixtures

const REALM: &str = "example.org";
const MIN_PORT: u16 = 50000;
const MAX_PORT: u16 = 50999;
/// Wall-clock seconds at `t0`.
const UNIX0: u64 = 1_700_000_000;
/// REQUESTED-TRANSPORT value for UDP (RFC 8656 §18.7).
const UDP: [u8; 4] = [17, 0, 0, 0];

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn relay_v4() -> IpAddr {
    ip("192.0.2.1")
}
fn relay_v6() -> IpAddr {
    ip("2001:db8::1")
}
fn server_v4() -> SocketAddr {
    sa("192.0.2.1:3478")
}
fn server_v6() -> SocketAddr {
    sa("[2001:db8::1]:3478")
}
/// Peers in documentation ranges, which the peer filter lets through.
fn p1() -> SocketAddr {
    sa("203.0.113.5:7000")
}
fn p2() -> SocketAddr {
    sa("198.51.100.7:7001")
}
fn p3() -> SocketAddr {
    sa("203.0.113.9:7003")
}
fn p6() -> SocketAddr {
    sa("[2001:db8::5]:7002")
}

fn tuple(client: &str, transport: Transport) -> FiveTuple {
    let client = sa(client);
    let server = if client.is_ipv4() {
        server_v4()
    } else {
        server_v6()
    };
    FiveTuple {
        client,
        server,
        transport,
    }
}
fn udp(client: &str) -> FiveTuple {
    tuple(client, Transport::Udp)
}

fn peer_filter(allow_loopback: bool) -> PeerFilter {
    PeerFilter::new(PeerFilterConfig {
        allow_loopback,
        own_listeners: vec![server_v4(), server_v6()],
        own_ips: vec![relay_v4(), relay_v6()],
        relay_ports: (MIN_PORT, MAX_PORT),
        ..Default::default()
    })
}

/// Two static users (alice, bob), an IPv4 relay address, 1000 relay ports, default filter.
fn cfg() -> EngineConfig {
    let mut users = HashMap::new();
    users.insert("alice".to_owned(), UserKey::Password("alice-pw".to_owned()));
    users.insert("bob".to_owned(), UserKey::Password("bob-pw".to_owned()));
    EngineConfig {
        realm: REALM.to_owned(),
        users,
        relay_ip_v4: Some(relay_v4()),
        min_port: MIN_PORT,
        max_port: MAX_PORT,
        peer_filter: peer_filter(false),
        ..Default::default()
    }
}

static NEXT_TID: AtomicU64 = AtomicU64::new(1);

/// A transaction ID no other request in this test binary uses.
fn new_tid() -> [u8; 12] {
    let n = NEXT_TID.fetch_add(1, Ordering::Relaxed);
    let mut t = [0x5a; 12];
    t[4..].copy_from_slice(&n.to_be_bytes());
    t
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    Writer::new(&mut b, method::SEND, Class::Indication, &new_tid())
        .xor_addr(attr::XOR_PEER_ADDRESS, peer)
        .attr(attr::DATA, data);
    b
}

/// ChannelData (RFC 8656 §12.4); `pad`: add the zero padding a stream transport needs.
fn channel_data(number: u16, payload: &[u8], pad: bool) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&number.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    b.extend_from_slice(payload);
    if pad {
        while b.len() % 4 != 0 {
            b.push(0);
        }
    }
    b
}

fn transport_udp(w: &mut Writer) {
    w.attr(attr::REQUESTED_TRANSPORT, &UDP);
}

// ---------------------------------------------------------------------------------- responses

/// A message the engine produced; every accessor parses it again (and so checks the framing).
#[derive(Clone, PartialEq, Eq)]
struct Resp(Vec<u8>);

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match Message::parse(&self.0) {
            Ok(m) => write!(
                f,
                "Resp(method {:#x}, {:?}, code {:?} {:?}, attrs {:x?})",
                m.method,
                m.class,
                self.code(),
                self.reason(),
                self.types()
            ),
            Err(e) => write!(f, "Resp(unparsable {e:?}: {:x?})", self.0),
        }
    }
}

impl Resp {
    fn msg(&self) -> Message<'_> {
        Message::parse(&self.0).expect("engine output parses as STUN")
    }
    fn method(&self) -> u16 {
        self.msg().method
    }
    fn class(&self) -> Class {
        self.msg().class
    }
    fn tid(&self) -> [u8; 12] {
        self.msg().transaction_id()
    }
    fn get(&self, ty: u16) -> Option<Vec<u8>> {
        self.msg().get(ty).map(|v| v.to_vec())
    }
    fn code(&self) -> Option<u16> {
        self.msg()
            .get(attr::ERROR_CODE)
            .and_then(decode_error_code)
            .map(|(c, _)| c)
    }
    fn reason(&self) -> String {
        self.msg()
            .get(attr::ERROR_CODE)
            .and_then(decode_error_code)
            .map(|(_, r)| r.to_owned())
            .unwrap_or_default()
    }
    fn xor(&self, ty: u16) -> Option<SocketAddr> {
        let m = self.msg();
        decode_xor_addr(m.get(ty)?, &m.transaction_id())
    }
    fn u32(&self, ty: u16) -> Option<u32> {
        self.msg().get(ty).and_then(decode_u32)
    }
    fn integrity(&self) -> Option<IntegrityKind> {
        self.msg().integrity_kind()
    }
    /// Attribute types in wire order, including MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT.
    fn types(&self) -> Vec<u16> {
        let b = &self.0;
        let mut out = Vec::new();
        let mut off = 20;
        while off + 4 <= b.len() {
            out.push(u16::from_be_bytes([b[off], b[off + 1]]));
            let len = u16::from_be_bytes([b[off + 2], b[off + 3]]) as usize;
            off += 4 + len.div_ceil(4) * 4;
        }
        out
    }
    #[track_caller]
    fn assert_ok(&self, m: u16) {
        assert_eq!(
            (self.method(), self.class()),
            (m, Class::Success),
            "expected a success response, got {self:?}"
        );
    }
    #[track_caller]
    fn assert_err(&self, m: u16, code: u16) {
        assert_eq!(
            (self.method(), self.class(), self.code()),
            (m, Class::Error, Some(code)),
            "expected error {code}, got {self:?}"
        );
    }
}

// ---------------------------------------------------------------------------------- client

#[derive(Clone)]
enum Cred {
    Password(String),
    /// A precomputed long-term key (HA1).
    Key(Vec<u8>),
}

/// A TURN client with long-term credentials (RFC 8489 §9.2.3, §9.2.5).
#[derive(Clone)]
struct Client {
    tuple: FiveTuple,
    user: String,
    cred: Cred,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    /// PASSWORD-ALGORITHMS from the last 401/438.
    offered: Vec<u8>,
    /// Which integrity attribute requests carry.
    integrity: IntegrityKind,
    /// Some: send PASSWORD-ALGORITHM with this algorithm and echo PASSWORD-ALGORITHMS.
    algorithm: Option<u16>,
    /// Send this instead of the PASSWORD-ALGORITHMS echo (bid-down tests).
    algorithms_override: Option<Vec<u8>>,
    /// Identify by USERHASH instead of USERNAME (RFC 8489 §14.4).
    userhash: bool,
    fingerprint: bool,
}

impl Client {
    fn new(tuple: FiveTuple, user: &str, pass: &str) -> Self {
        Client {
            tuple,
            user: user.to_owned(),
            cred: Cred::Password(pass.to_owned()),
            realm: None,
            nonce: None,
            offered: Vec::new(),
            integrity: IntegrityKind::Sha1,
            algorithm: None,
            algorithms_override: None,
            userhash: false,
            fingerprint: true,
        }
    }

    fn with_key(tuple: FiveTuple, user: &str, key: &[u8]) -> Self {
        Client {
            cred: Cred::Key(key.to_vec()),
            ..Client::new(tuple, user, "")
        }
    }

    /// The long-term key (RFC 8489 §9.2.2) for the current realm and PASSWORD-ALGORITHM.
    fn key(&self) -> Vec<u8> {
        let realm = self.realm.as_deref().unwrap_or(REALM);
        match &self.cred {
            Cred::Key(k) => k.clone(),
            Cred::Password(p) if self.algorithm == Some(password_algorithm::SHA256) => {
                long_term_key_sha256(&self.user, realm, p).to_vec()
            }
            Cred::Password(p) => long_term_key_md5(&self.user, realm, p).to_vec(),
        }
    }

    /// Take REALM, NONCE and PASSWORD-ALGORITHMS from a 401 or 438.
    fn learn(&mut self, r: &Resp) {
        self.realm = Some(String::from_utf8(r.get(attr::REALM).expect("REALM")).unwrap());
        self.nonce = Some(r.get(attr::NONCE).expect("NONCE"));
        self.offered = r.get(attr::PASSWORD_ALGORITHMS).unwrap_or_default();
    }

    /// A request: `body`'s attributes, then (once a nonce is known) the credentials and
    /// integrity, then FINGERPRINT.
    fn build(&self, m: u16, body: &dyn Fn(&mut Writer)) -> ([u8; 12], Vec<u8>) {
        let tid = new_tid();
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, m, Class::Request, &tid);
        body(&mut w);
        if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
            if self.userhash {
                w.attr(attr::USERHASH, &userhash(&self.user, realm));
            } else {
                w.attr(attr::USERNAME, self.user.as_bytes());
            }
            w.attr(attr::REALM, realm.as_bytes())
                .attr(attr::NONCE, nonce);
            if let Some(alg) = self.algorithm {
                let list = self.algorithms_override.as_ref().unwrap_or(&self.offered);
                w.attr(
                    attr::PASSWORD_ALGORITHM,
                    &[(alg >> 8) as u8, alg as u8, 0, 0],
                )
                .attr(attr::PASSWORD_ALGORITHMS, list);
            }
            w.integrity(self.integrity, &self.key());
        }
        if self.fingerprint {
            w.fingerprint();
        }
        (tid, buf)
    }

    /// RFC 8489 §9.2.5: a response to an authenticated request carries integrity that checks
    /// out with the key the request used.
    #[track_caller]
    fn assert_signed(&self, r: &Resp) {
        assert!(r.integrity().is_some(), "response not signed: {r:?}");
        assert!(
            r.msg().verify_integrity(&self.key()),
            "response integrity does not verify: {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------------- harness

/// What a client datagram turned into on the data path.
#[derive(Debug)]
struct Relayed {
    relay: RelayId,
    peer: SocketAddr,
    payload: Vec<u8>,
    /// Where the payload starts in the client's datagram (it is borrowed, not copied).
    offset: usize,
}

struct Harness {
    engine: Engine,
    shared: Arc<Shared>,
    t0: Instant,
    now: Instant,
    /// Answer this many binds with AddrInUse before answering Ok again.
    fail_binds: usize,
    /// Do not answer binds until [`Harness::release_binds`].
    hold_binds: bool,
    held: Vec<(RelayId, SocketAddr)>,
    /// Every Bind command: (relay, addr, dont_fragment).
    binds: Vec<(RelayId, SocketAddr, bool)>,
    /// Every Close command.
    closes: Vec<RelayId>,
    /// The last bind answered with Ok.
    last_bound: Option<(RelayId, SocketAddr)>,
    /// RFC 6062 commands (Connect, Splice, DropPeer), left for the test to answer.
    peer_cmds: Vec<RelayCommand>,
}

impl Harness {
    fn new(cfg: EngineConfig) -> Self {
        let shared = Arc::new(Shared::new(cfg.min_port, cfg.max_port, [1; 32], 7));
        Self::shard(cfg, shared, Instant::now())
    }

    /// Another shard of the same server: its own engine on `shared`, clock origin `t0`.
    fn shard(cfg: EngineConfig, shared: Arc<Shared>, t0: Instant) -> Self {
        let engine = Engine::new(Arc::new(cfg), shared.clone(), t0, UNIX0, 1);
        Harness {
            engine,
            shared,
            t0,
            now: t0,
            fail_binds: 0,
            hold_binds: false,
            held: Vec::new(),
            binds: Vec::new(),
            closes: Vec::new(),
            last_bound: None,
            peer_cmds: Vec::new(),
        }
    }

    fn at(&self, s: u64) -> Instant {
        self.t0 + secs(s)
    }

    /// Move the clock to `t0 + s` and run the engine's timers.
    fn set_time(&mut self, s: u64) {
        self.now = self.at(s);
        self.engine.handle_timeout(self.now);
        self.pump();
    }

    /// The fake runtime: carry out every queued relay-socket command.
    fn pump(&mut self) {
        while let Some(cmd) = self.engine.poll_command() {
            match cmd {
                RelayCommand::Bind {
                    relay,
                    addr,
                    dont_fragment,
                } => {
                    self.binds.push((relay, addr, dont_fragment));
                    if self.hold_binds {
                        self.held.push((relay, addr));
                    } else {
                        self.answer_bind(relay, addr);
                    }
                }
                RelayCommand::Close { relay } => self.closes.push(relay),
                RelayCommand::BindTcp { relay, addr } => self.answer_bind(relay, addr),
                c @ (RelayCommand::Connect { .. }
                | RelayCommand::Splice { .. }
                | RelayCommand::DropPeer { .. }
                | RelayCommand::CloseConnections { .. }) => self.peer_cmds.push(c),
            }
        }
    }

    fn answer_bind(&mut self, relay: RelayId, addr: SocketAddr) {
        if self.fail_binds > 0 {
            self.fail_binds -= 1;
            self.engine
                .on_relay_bound(self.now, relay, Err(ErrorKind::AddrInUse));
        } else {
            self.engine.on_relay_bound(self.now, relay, Ok(addr));
            self.last_bound = Some((relay, addr));
        }
    }

    /// Answer the held binds; returns what the engine queued for clients.
    fn release_binds(&mut self) -> Vec<Resp> {
        self.hold_binds = false;
        for (relay, addr) in std::mem::take(&mut self.held) {
            self.answer_bind(relay, addr);
        }
        self.pump();
        let mut out = Vec::new();
        while let Some(t) = self.engine.poll_transmit() {
            out.push(Resp(t.data));
        }
        out
    }

    /// A control datagram from a client: must not be relayed; returns the queued answers.
    #[track_caller]
    fn send(&mut self, t: FiveTuple, data: &[u8]) -> Vec<Resp> {
        let action = self.engine.handle_client(self.now, t, data);
        assert_eq!(action, ClientAction::None);
        self.pump();
        let mut out = Vec::new();
        while let Some(tx) = self.engine.poll_transmit() {
            assert_eq!(tx.tuple, t, "answer goes back on the request's 5-tuple");
            out.push(Resp(tx.data));
        }
        out
    }

    #[track_caller]
    fn send_one(&mut self, t: FiveTuple, data: &[u8]) -> Resp {
        let mut v = self.send(t, data);
        assert_eq!(v.len(), 1, "expected exactly one answer, got {v:?}");
        v.pop().unwrap()
    }

    /// One authenticated transaction, doing the 401 dance on first use and retrying after a 438
    /// (RFC 8489 §9.2.5). A success response must verify with the client's key.
    #[track_caller]
    fn transact(&mut self, c: &mut Client, m: u16, body: &dyn Fn(&mut Writer)) -> Resp {
        for _ in 0..3 {
            let (tid, req) = c.build(m, body);
            let r = self.send_one(c.tuple, &req);
            assert_eq!(r.tid(), tid);
            assert_eq!(r.method(), m);
            match r.code() {
                Some(401) if c.nonce.is_none() => c.learn(&r),
                Some(438) => c.learn(&r),
                _ => {
                    if r.class() == Class::Success {
                        c.assert_signed(&r);
                    }
                    return r;
                }
            }
        }
        panic!("no answer after the authentication retries");
    }

    /// Only the 401 round trip: learn REALM and NONCE.
    fn login(&mut self, c: &mut Client) {
        let mut anon = c.clone();
        anon.nonce = None;
        let (_, req) = anon.build(method::ALLOCATE, &transport_udp);
        let r = self.send_one(c.tuple, &req);
        r.assert_err(method::ALLOCATE, 401);
        c.learn(&r);
    }

    /// Allocate with REQUESTED-TRANSPORT UDP plus `body`.
    #[track_caller]
    fn allocate(&mut self, c: &mut Client, body: &dyn Fn(&mut Writer)) -> Resp {
        self.transact(c, method::ALLOCATE, &|w| {
            transport_udp(w);
            body(w);
        })
    }

    /// A successful plain allocation: (relay id, XOR-RELAYED-ADDRESS).
    #[track_caller]
    fn alloc_ok(&mut self, c: &mut Client) -> (RelayId, SocketAddr) {
        self.alloc_ok_with(c, &|_| {})
    }

    #[track_caller]
    fn alloc_ok_with(
        &mut self,
        c: &mut Client,
        body: &dyn Fn(&mut Writer),
    ) -> (RelayId, SocketAddr) {
        let r = self.allocate(c, body);
        r.assert_ok(method::ALLOCATE);
        let (relay, bound) = self.last_bound.expect("a bind was answered");
        let relayed = r
            .xor(attr::XOR_RELAYED_ADDRESS)
            .expect("XOR-RELAYED-ADDRESS");
        assert_eq!(relayed.port(), bound.port());
        (relay, relayed)
    }

    #[track_caller]
    fn refresh(&mut self, c: &mut Client, lifetime: Option<u32>) -> Resp {
        self.transact(c, method::REFRESH, &|w| {
            if let Some(l) = lifetime {
                w.u32(attr::LIFETIME, l);
            }
        })
    }

    #[track_caller]
    fn permit(&mut self, c: &mut Client, peers: &[SocketAddr]) -> Resp {
        self.transact(c, method::CREATE_PERMISSION, &|w| {
            for p in peers {
                w.xor_addr(attr::XOR_PEER_ADDRESS, *p);
            }
        })
    }

    #[track_caller]
    fn channel_bind(&mut self, c: &mut Client, number: u16, peer: SocketAddr) -> Resp {
        self.transact(c, method::CHANNEL_BIND, &|w| {
            w.attr(
                attr::CHANNEL_NUMBER,
                &[(number >> 8) as u8, number as u8, 0, 0],
            )
            .xor_addr(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    /// A data-path datagram from a client (Send indication, ChannelData). Never answered.
    #[track_caller]
    fn client_datagram(&mut self, t: FiveTuple, data: &[u8]) -> Option<Relayed> {
        let out = match self.engine.handle_client(self.now, t, data) {
            ClientAction::None => None,
            ClientAction::ToPeer {
                relay,
                peer,
                payload,
            } => {
                let offset = payload.as_ptr() as usize - data.as_ptr() as usize;
                assert!(offset + payload.len() <= data.len());
                Some(Relayed {
                    relay,
                    peer,
                    payload: payload.to_vec(),
                    offset,
                })
            }
        };
        self.pump();
        assert!(
            self.engine.poll_transmit().is_none(),
            "the data path never answers"
        );
        out
    }

    /// A datagram from `peer` on relay socket `relay`, with exactly the required headroom.
    fn peer_datagram(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        payload: &[u8],
    ) -> Option<(FiveTuple, Vec<u8>)> {
        let mut buf = vec![0xee; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        let (t, range) = self.engine.handle_peer(
            self.now,
            relay,
            peer,
            &mut buf,
            PEER_HEADROOM,
            payload.len(),
        )?;
        Some((t, buf[range].to_vec()))
    }

    /// `peer_datagram` that must produce a Data indication for `t`; returns (XOR-PEER-ADDRESS, DATA).
    #[track_caller]
    fn data_indication(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        payload: &[u8],
        t: FiveTuple,
    ) -> (SocketAddr, Vec<u8>) {
        let (to, bytes) = self
            .peer_datagram(relay, peer, payload)
            .expect("peer data relayed");
        assert_eq!(to, t);
        let r = Resp(bytes);
        assert_eq!((r.method(), r.class()), (method::DATA, Class::Indication));
        assert_eq!(r.types(), vec![attr::XOR_PEER_ADDRESS, attr::DATA]);
        (
            r.xor(attr::XOR_PEER_ADDRESS).unwrap(),
            r.get(attr::DATA).unwrap(),
        )
    }
}

// ================================================================================== Binding

#[test]
fn binding_reflects_ipv4_client_with_fingerprint_and_no_software() {
    // RFC 8489 §7.3.1: XOR-MAPPED-ADDRESS is the request's source transport address.
    // §14.7: FINGERPRINT. §14.14: SOFTWARE is optional; off by default (no version disclosure).
    let mut h = Harness::new(cfg());
    let t = udp("198.51.100.20:40000");
    let tid = new_tid();
    let mut req = Vec::new();
    Writer::new(&mut req, method::BINDING, Class::Request, &tid);
    let r = h.send_one(t, &req);
    r.assert_ok(method::BINDING);
    assert_eq!(r.tid(), tid);
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(t.client));
    assert!(r.msg().has_fingerprint);
    assert_eq!(r.types(), vec![attr::XOR_MAPPED_ADDRESS, attr::FINGERPRINT]);
    assert!(r.get(attr::SOFTWARE).is_none());
    assert!(r.integrity().is_none(), "Binding is not authenticated");
    assert!(h.binds.is_empty());
}

#[test]
fn binding_reflects_ipv6_client() {
    // RFC 8489 §14.2: XOR-MAPPED-ADDRESS for IPv6 is XORed with cookie and transaction ID.
    let mut h = Harness::new(cfg());
    let t = udp("[2001:db8:1234::20]:40001");
    let tid = new_tid();
    let mut req = Vec::new();
    Writer::new(&mut req, method::BINDING, Class::Request, &tid).fingerprint();
    let r = h.send_one(t, &req);
    r.assert_ok(method::BINDING);
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(t.client));
    assert!(r.msg().has_fingerprint);
}

#[test]
fn binding_carries_software_when_configured() {
    // RFC 8489 §14.14 SOFTWARE, when it fits under the amplification bound: here the request
    // carries its own SOFTWARE, so the answer may too.
    let mut c = cfg();
    c.software = Some("ferroturn-test 1.0".to_owned());
    let mut h = Harness::new(c);
    let mut req = Vec::new();
    Writer::new(&mut req, method::BINDING, Class::Request, &new_tid())
        .attr(attr::SOFTWARE, b"some client 2.0 (linux)");
    let r = h.send_one(udp("198.51.100.20:40000"), &req);
    r.assert_ok(method::BINDING);
    assert_eq!(
        r.get(attr::SOFTWARE).as_deref(),
        Some(&b"ferroturn-test 1.0"[..])
    );
}

#[test]
fn binding_response_at_most_32_bytes_larger_than_request() {
    // Reflection guard: whatever SOFTWARE is configured, a minimal Binding request (20 bytes,
    // the cheapest thing to spoof) gets at most BINDING_MAX_GROWTH more bytes back.
    let mut c = cfg();
    c.software = Some("x".repeat(120));
    let mut h = Harness::new(c);
    for client in ["198.51.100.20:40000", "[2001:db8::20]:40000"] {
        for fp in [false, true] {
            let mut req = Vec::new();
            let mut w = Writer::new(&mut req, method::BINDING, Class::Request, &new_tid());
            if fp {
                w.fingerprint();
            }
            let r = h.send_one(udp(client), &req);
            r.assert_ok(method::BINDING);
            assert!(r.get(attr::SOFTWARE).is_none());
            assert!(
                r.0.len() <= req.len() + super::BINDING_MAX_GROWTH,
                "{} vs {}",
                r.0.len(),
                req.len()
            );
        }
    }
    assert_eq!(super::BINDING_MAX_GROWTH, 32);
}

#[test]
fn binding_with_unknown_comprehension_required_attribute_gets_420() {
    // RFC 8489 §6.3.1: 420 with UNKNOWN-ATTRIBUTES (§14.9) listing the unknown attributes.
    let mut h = Harness::new(cfg());
    let tid = new_tid();
    let mut req = Vec::new();
    Writer::new(&mut req, method::BINDING, Class::Request, &tid)
        .attr(0x7777, b"what")
        .attr(0x8777, b"optional");
    let r = h.send_one(udp("198.51.100.20:40000"), &req);
    r.assert_err(method::BINDING, 420);
    assert_eq!(r.tid(), tid);
    assert_eq!(r.get(attr::UNKNOWN_ATTRIBUTES), Some(vec![0x77, 0x77]));
    assert!(r.get(attr::XOR_MAPPED_ADDRESS).is_none());
}

#[test]
fn binding_ignores_unknown_comprehension_optional_attribute() {
    // RFC 8489 §6.3: unknown comprehension-optional attributes (0x8000-0xFFFF) are ignored.
    let mut h = Harness::new(cfg());
    let mut req = Vec::new();
    Writer::new(&mut req, method::BINDING, Class::Request, &new_tid()).attr(0x8777, b"optional");
    let t = udp("198.51.100.20:40000");
    let r = h.send_one(t, &req);
    r.assert_ok(method::BINDING);
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(t.client));
}

#[test]
fn malformed_request_gets_400() {
    // RFC 8489 §6.3: a request whose attributes do not parse (length past the message end)
    // is answered with 400 Bad Request.
    let mut h = Harness::new(cfg());
    let tid = new_tid();
    let mut req = Vec::new();
    Writer::new(&mut req, method::BINDING, Class::Request, &tid).attr(attr::SOFTWARE, b"abcd");
    req[22..24].copy_from_slice(&100u16.to_be_bytes());
    let r = h.send_one(udp("198.51.100.20:40000"), &req);
    r.assert_err(method::BINDING, 400);
    assert_eq!(r.tid(), tid);
    // The same damage on an indication or a response is silently dropped.
    let mut ind = Vec::new();
    Writer::new(&mut ind, method::BINDING, Class::Indication, &tid).attr(attr::SOFTWARE, b"abcd");
    ind[22..24].copy_from_slice(&100u16.to_be_bytes());
    assert!(h.send(udp("198.51.100.20:40000"), &ind).is_empty());
}

#[test]
fn garbage_and_non_stun_are_dropped_silently() {
    // RFC 8489 §6.3 / RFC 7983 §7: what is not a STUN request is not answered.
    let mut h = Harness::new(cfg());
    let t = udp("198.51.100.20:40000");
    let mut valid = Vec::new();
    Writer::new(&mut valid, method::BINDING, Class::Request, &new_tid()).fingerprint();
    let mut bad_fp = valid.clone();
    let l = bad_fp.len() - 1;
    bad_fp[l] ^= 1;
    let mut no_cookie = valid.clone();
    no_cookie[4] = 0;
    let mut wrong_len = valid.clone();
    wrong_len[3] += 4; // header length no longer matches the datagram
    let mut response = Vec::new();
    Writer::new(&mut response, method::BINDING, Class::Success, &new_tid())
        .xor_addr(attr::XOR_MAPPED_ADDRESS, t.client);
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0; 19],
        no_cookie,
        wrong_len,
        bad_fp,
        response,
        vec![0x80, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], // RTP
        vec![0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0], // DTLS
        vec![0xff; 64],
        channel_data(0x4000, b"no allocation", false),
        vec![0x40, 0x00, 0x00, 0x10, 1, 2], // ChannelData length past the end
    ];
    for c in &cases {
        assert!(h.send(t, c).is_empty(), "answered {c:x?}");
    }
    assert!(h.binds.is_empty());
    assert_eq!(h.engine.allocation_count(), 0);
}

#[test]
fn binding_indication_gets_nothing() {
    // RFC 8489 §6.3.2: no response is generated for an indication (Binding keepalive).
    let mut h = Harness::new(cfg());
    let mut ind = Vec::new();
    Writer::new(&mut ind, method::BINDING, Class::Indication, &new_tid()).fingerprint();
    assert!(h.send(udp("198.51.100.20:40000"), &ind).is_empty());
}

// ================================================================================== auth

#[test]
fn request_without_integrity_is_challenged_with_401() {
    // RFC 8489 §9.2.4: no MESSAGE-INTEGRITY → 401 with REALM, NONCE (nonce cookie, §9.2) and
    // PASSWORD-ALGORITHMS, without integrity.
    let mut h = Harness::new(cfg());
    let c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (tid, req) = c.build(method::ALLOCATE, &transport_udp);
    let r = h.send_one(c.tuple, &req);
    r.assert_err(method::ALLOCATE, 401);
    assert_eq!(r.tid(), tid);
    assert_eq!(r.get(attr::REALM).as_deref(), Some(REALM.as_bytes()));
    let nonce = r.get(attr::NONCE).unwrap();
    assert!(nonce.starts_with(b"obMatJos2"), "nonce cookie");
    assert_eq!(
        r.get(attr::PASSWORD_ALGORITHMS),
        Some(PASSWORD_ALGORITHMS.to_vec())
    );
    // SHA-256 (2) first, then MD5 (1), no parameters (§14.11).
    assert_eq!(PASSWORD_ALGORITHMS, [0, 2, 0, 0, 0, 1, 0, 0]);
    assert!(r.integrity().is_none());
    assert!(r.get(attr::USERNAME).is_none());
    assert!(h.binds.is_empty());
    assert_eq!(h.engine.stats.auth_challenges, 1);
}

#[test]
fn nonces_differ_per_client_transport_address() {
    // RFC 8489 §9.2.4: "The server MUST NOT choose the same NONCE for two requests unless they
    // have the same source IP address and port."
    let mut h = Harness::new(cfg());
    let mut nonces = Vec::new();
    for client in [
        "198.51.100.20:40000",
        "198.51.100.20:40001",
        "198.51.100.21:40000",
    ] {
        let mut c = Client::new(udp(client), "alice", "alice-pw");
        h.login(&mut c);
        nonces.push(c.nonce.unwrap());
    }
    assert_ne!(nonces[0], nonces[1], "same IP, other port");
    assert_ne!(nonces[0], nonces[2], "other IP");
    // Every challenge is salted, so even the same address gets a fresh nonce.
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.login(&mut c);
    assert_ne!(c.nonce.unwrap(), nonces[0]);
}

#[test]
fn wrong_password_gets_401() {
    // RFC 8489 §9.2.4: integrity does not check out → 401 with REALM and NONCE, no integrity.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "not-alices-pw");
    let r = h.allocate(&mut c, &|_| {});
    r.assert_err(method::ALLOCATE, 401);
    assert!(r.get(attr::REALM).is_some() && r.get(attr::NONCE).is_some());
    assert!(r.get(attr::PASSWORD_ALGORITHMS).is_some());
    assert!(r.integrity().is_none());
    assert!(h.binds.is_empty());
    assert_eq!(h.engine.allocation_count(), 0);
    assert_eq!(h.engine.stats.auth_failures, 1);
}

#[test]
fn unknown_user_gets_401() {
    // RFC 8489 §9.2.4: USERNAME not valid → 401 with REALM, NONCE, PASSWORD-ALGORITHMS.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "mallory", "whatever");
    let r = h.allocate(&mut c, &|_| {});
    r.assert_err(method::ALLOCATE, 401);
    assert!(r.get(attr::NONCE).is_some() && r.get(attr::PASSWORD_ALGORITHMS).is_some());
    assert!(r.integrity().is_none());
    assert!(h.binds.is_empty());
}

#[test]
fn expired_nonce_gets_438_then_the_new_nonce_works() {
    // RFC 8489 §9.2.4: NONCE no longer valid → 438 with a new NONCE, REALM and
    // PASSWORD-ALGORITHMS; §9.2.5: the client retries with the new nonce.
    let mut h = Harness::new(cfg()); // nonce_lifetime 600 s
    let mut early = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let mut late = Client::new(udp("198.51.100.21:40000"), "alice", "alice-pw");
    h.login(&mut early);
    h.login(&mut late);
    h.set_time(599);
    let (_, req) = early.build(method::ALLOCATE, &transport_udp);
    h.send_one(early.tuple, &req).assert_ok(method::ALLOCATE);

    h.set_time(600);
    let old = late.nonce.clone().unwrap();
    let (_, req) = late.build(method::ALLOCATE, &transport_udp);
    let r = h.send_one(late.tuple, &req);
    r.assert_err(method::ALLOCATE, 438);
    let fresh = r.get(attr::NONCE).unwrap();
    assert_ne!(fresh, old);
    assert_eq!(r.get(attr::REALM).as_deref(), Some(REALM.as_bytes()));
    assert_eq!(
        r.get(attr::PASSWORD_ALGORITHMS),
        Some(PASSWORD_ALGORITHMS.to_vec())
    );
    assert!(r.integrity().is_none());
    assert_eq!(h.binds.len(), 1, "no relay for a stale request");
    assert_eq!(h.engine.stats.stale_nonces, 1);

    late.learn(&r);
    let (_, req) = late.build(method::ALLOCATE, &transport_udp);
    let r = h.send_one(late.tuple, &req);
    r.assert_ok(method::ALLOCATE);
    late.assert_signed(&r);
    assert_eq!(h.engine.allocation_count(), 2);
}

#[test]
fn nonce_from_another_client_address_gets_438() {
    // The nonce is bound to the client IP it was issued to, so from another IP it is not valid
    // → 438. (Another port of the same IP is fine: RFC 6062 data connections reuse the nonce.)
    let mut h = Harness::new(cfg());
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.login(&mut a);
    for other in ["198.51.100.99:40000", "198.51.100.21:40000"] {
        let mut b = a.clone();
        b.tuple = udp(other);
        let (_, req) = b.build(method::ALLOCATE, &transport_udp);
        let r = h.send_one(b.tuple, &req);
        r.assert_err(method::ALLOCATE, 438);
        assert_ne!(r.get(attr::NONCE), a.nonce);
    }
    assert!(h.binds.is_empty());
}

#[test]
fn integrity_without_nonce_realm_or_username_gets_400() {
    // RFC 8489 §9.2.4: MESSAGE-INTEGRITY present but USERNAME/USERHASH, REALM or NONCE
    // missing → 400, without REALM/NONCE and without integrity.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.login(&mut c);
    let key = c.key();
    let nonce = c.nonce.clone().unwrap();
    type Build = fn(&mut Writer, &[u8]);
    let variants: [(&str, Build); 3] = [
        ("no NONCE", |w, _| {
            w.attr(attr::USERNAME, b"alice")
                .attr(attr::REALM, REALM.as_bytes());
        }),
        ("no REALM", |w, n| {
            w.attr(attr::USERNAME, b"alice").attr(attr::NONCE, n);
        }),
        ("no USERNAME", |w, n| {
            w.attr(attr::REALM, REALM.as_bytes()).attr(attr::NONCE, n);
        }),
    ];
    for (what, build) in variants {
        let mut req = Vec::new();
        let mut w = Writer::new(&mut req, method::ALLOCATE, Class::Request, &new_tid());
        w.attr(attr::REQUESTED_TRANSPORT, &UDP);
        build(&mut w, &nonce);
        w.integrity(IntegrityKind::Sha1, &key);
        let r = h.send_one(c.tuple, &req);
        r.assert_err(method::ALLOCATE, 400);
        assert!(r.get(attr::NONCE).is_none(), "{what}");
        assert!(r.get(attr::REALM).is_none(), "{what}");
        assert!(r.integrity().is_none(), "{what}");
    }
    assert!(h.binds.is_empty());
}

#[test]
fn ha1_user_authenticates_with_md5_only() {
    // coturn-style HA1 key = MD5(user:realm:pass) (RFC 8489 §9.2.2). With no password there is
    // no SHA-256 key, so the challenge offers MD5 alone: an RFC 8489 client takes the first
    // algorithm it supports and would not retry another after a 401 (§9.2.5).
    let mut config = cfg();
    let ha1 = long_term_key_md5("carol", REALM, "carol-pw");
    config.users.insert("carol".to_owned(), UserKey::Ha1(ha1));
    let mut h = Harness::new(config);
    let mut c = Client::with_key(udp("198.51.100.20:40000"), "carol", &ha1);
    let (_, relayed) = h.alloc_ok(&mut c);
    assert_eq!(relayed.ip(), relay_v4());
    assert_eq!(c.offered, [0, 1, 0, 0]);
    // Password users of the same server use MD5 then too.
    let mut m = Client::new(udp("198.51.100.20:40002"), "alice", "alice-pw");
    m.algorithm = Some(password_algorithm::MD5);
    m.integrity = IntegrityKind::Sha256;
    let r = h.allocate(&mut m, &|_| {});
    r.assert_ok(method::ALLOCATE);
    m.assert_signed(&r);

    // SHA-256 was not offered: 400 (§9.2.4, PASSWORD-ALGORITHM not in the list).
    let mut s = Client::with_key(udp("198.51.100.20:40001"), "carol", &ha1);
    s.algorithm = Some(password_algorithm::SHA256);
    s.integrity = IntegrityKind::Sha256;
    h.allocate(&mut s, &|_| {})
        .assert_err(method::ALLOCATE, 400);
}

fn rest_cfg(secrets: &[&str]) -> EngineConfig {
    EngineConfig {
        auth_secrets: secrets.iter().map(|s| s.to_string()).collect(),
        users: HashMap::new(),
        ..cfg()
    }
}

#[test]
fn rest_api_credential_works() {
    // TURN REST API (draft-uberti-behave-turn-rest-00 §2.2): username "expiry:user",
    // password base64(HMAC-SHA1(secret, username)).
    let mut h = Harness::new(rest_cfg(&["s3cret"]));
    let user = format!("{}:alice", UNIX0 + 3600);
    let mut c = Client::new(
        udp("198.51.100.20:40000"),
        &user,
        &rest_password("s3cret", &user),
    );
    h.alloc_ok(&mut c);
    assert_eq!(h.engine.allocations().next().unwrap().username, user);
    // A bare timestamp is a valid REST username too.
    let user = format!("{}", UNIX0 + 60);
    let mut c = Client::new(
        udp("198.51.100.20:40001"),
        &user,
        &rest_password("s3cret", &user),
    );
    h.alloc_ok(&mut c);
    // A password made with another secret is not.
    let user = format!("{}:alice", UNIX0 + 3600);
    let mut c = Client::new(
        udp("198.51.100.20:40002"),
        &user,
        &rest_password("other", &user),
    );
    h.allocate(&mut c, &|_| {})
        .assert_err(method::ALLOCATE, 401);
}

#[test]
fn rest_api_expired_credential_gets_401() {
    // draft-uberti-behave-turn-rest-00 §2.2: a username whose timestamp has passed is rejected.
    let mut h = Harness::new(rest_cfg(&["s3cret"]));
    for (i, expiry) in [UNIX0 - 1, UNIX0].into_iter().enumerate() {
        let user = format!("{expiry}:alice");
        let t = udp(&format!("198.51.100.20:{}", 40000 + i));
        let mut c = Client::new(t, &user, &rest_password("s3cret", &user));
        h.allocate(&mut c, &|_| {})
            .assert_err(method::ALLOCATE, 401);
    }
    // Valid now, expired later: the Refresh after the timestamp fails.
    let user = format!("{}:alice", UNIX0 + 100);
    let mut c = Client::new(
        udp("198.51.100.20:40005"),
        &user,
        &rest_password("s3cret", &user),
    );
    h.alloc_ok(&mut c);
    h.set_time(100);
    h.refresh(&mut c, None).assert_err(method::REFRESH, 401);
    assert_eq!(h.binds.len(), 1);
}

#[test]
fn rest_api_accepts_every_configured_secret() {
    // Secret rotation: all listed secrets are accepted.
    let mut h = Harness::new(rest_cfg(&["new-secret", "old-secret"]));
    for (i, secret) in ["new-secret", "old-secret"].into_iter().enumerate() {
        let user = format!("{}:alice", UNIX0 + 3600);
        let t = udp(&format!("198.51.100.20:{}", 40000 + i));
        let mut c = Client::new(t, &user, &rest_password(secret, &user));
        h.alloc_ok(&mut c);
    }
    assert_eq!(h.engine.allocation_count(), 2);
}

#[test]
fn static_users_and_rest_api_together() {
    let mut config = cfg();
    config.auth_secrets = vec!["s3cret".to_owned()];
    let mut h = Harness::new(config);
    let mut alice = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut alice);
    let user = format!("{}:dave", UNIX0 + 3600);
    let mut dave = Client::new(
        udp("198.51.100.20:40001"),
        &user,
        &rest_password("s3cret", &user),
    );
    h.alloc_ok(&mut dave);
    let mut bob = Client::new(udp("198.51.100.20:40002"), "bob", "wrong");
    h.allocate(&mut bob, &|_| {})
        .assert_err(method::ALLOCATE, 401);
    assert_eq!(h.engine.allocation_count(), 2);
}

#[test]
fn message_integrity_sha256_request_gets_sha256_response() {
    // RFC 8489 §14.6 / §9.2.4: a request protected by MESSAGE-INTEGRITY-SHA256 is answered with
    // MESSAGE-INTEGRITY-SHA256 (and no MESSAGE-INTEGRITY).
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    c.integrity = IntegrityKind::Sha256;
    let r = h.allocate(&mut c, &|_| {});
    r.assert_ok(method::ALLOCATE);
    assert_eq!(r.integrity(), Some(IntegrityKind::Sha256));
    assert!(r.types().contains(&attr::MESSAGE_INTEGRITY_SHA256));
    assert!(!r.types().contains(&attr::MESSAGE_INTEGRITY));
    c.assert_signed(&r);
    let r = h.refresh(&mut c, None);
    r.assert_ok(method::REFRESH);
    assert_eq!(r.integrity(), Some(IntegrityKind::Sha256));
}

#[test]
fn password_algorithm_sha256_works() {
    // RFC 8489 §9.2.4 / §18.5: PASSWORD-ALGORITHM SHA-256 with the PASSWORD-ALGORITHMS echo
    // uses key = SHA-256(user:realm:pass), and the response carries MESSAGE-INTEGRITY-SHA256.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    c.algorithm = Some(password_algorithm::SHA256);
    c.integrity = IntegrityKind::Sha256;
    let r = h.allocate(&mut c, &|_| {});
    r.assert_ok(method::ALLOCATE);
    assert_eq!(
        c.key(),
        long_term_key_sha256("alice", REALM, "alice-pw").to_vec()
    );
    assert!(r
        .msg()
        .verify_integrity(&long_term_key_sha256("alice", REALM, "alice-pw")));
    assert!(!r
        .msg()
        .verify_integrity(&long_term_key_md5("alice", REALM, "alice-pw")));
    assert_eq!(r.integrity(), Some(IntegrityKind::Sha256));
}

#[test]
fn password_algorithm_present_means_sha256_response_integrity() {
    // RFC 8489 §9.2.4 (last paragraph): every response MUST carry MESSAGE-INTEGRITY-SHA256
    // unless the request had neither PASSWORD-ALGORITHM nor PASSWORD-ALGORITHMS. Here the
    // client negotiated an algorithm but protected the request with MESSAGE-INTEGRITY.
    let mut h = Harness::new(cfg());
    for (i, alg) in [password_algorithm::SHA256, password_algorithm::MD5]
        .into_iter()
        .enumerate()
    {
        let mut c = Client::new(
            udp(&format!("198.51.100.20:{}", 40000 + i)),
            "alice",
            "alice-pw",
        );
        c.algorithm = Some(alg);
        c.integrity = IntegrityKind::Sha1;
        let r = h.allocate(&mut c, &|_| {});
        r.assert_ok(method::ALLOCATE);
        assert_eq!(
            r.integrity(),
            Some(IntegrityKind::Sha256),
            "algorithm {alg}"
        );
        c.assert_signed(&r);
    }
}

#[test]
fn password_algorithms_mismatch_gets_400() {
    // RFC 8489 §9.2.4 bid-down protection: PASSWORD-ALGORITHMS must equal what the server sent
    // and PASSWORD-ALGORITHM must be present with it and one of them; otherwise 400.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.login(&mut c);
    c.integrity = IntegrityKind::Sha256;

    c.algorithm = Some(password_algorithm::MD5);
    c.algorithms_override = Some(vec![0, 1, 0, 0]); // SHA-256 stripped by an attacker
    let r = h.allocate(&mut c, &|_| {});
    r.assert_err(method::ALLOCATE, 400);
    assert!(r.integrity().is_none());

    c.algorithm = Some(3); // not offered
    c.algorithms_override = None;
    h.allocate(&mut c, &|_| {})
        .assert_err(method::ALLOCATE, 400);

    // PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS.
    c.algorithm = None;
    let key = long_term_key_md5("alice", REALM, "alice-pw");
    let mut req = Vec::new();
    Writer::new(&mut req, method::ALLOCATE, Class::Request, &new_tid())
        .attr(attr::REQUESTED_TRANSPORT, &UDP)
        .attr(attr::USERNAME, b"alice")
        .attr(attr::REALM, REALM.as_bytes())
        .attr(attr::NONCE, c.nonce.as_ref().unwrap())
        .attr(attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0])
        .integrity(IntegrityKind::Sha1, &key);
    h.send_one(c.tuple, &req).assert_err(method::ALLOCATE, 400);
    assert!(h.binds.is_empty());
}

#[test]
fn userhash_identifies_a_static_user() {
    // RFC 8489 §14.4: USERHASH = SHA-256(user:realm) in place of USERNAME.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    c.userhash = true;
    let r = h.allocate(&mut c, &|_| {});
    r.assert_ok(method::ALLOCATE);
    assert_eq!(h.engine.allocations().next().unwrap().username, "alice");
    let mut n = Client::new(udp("198.51.100.20:40001"), "nobody", "x");
    n.userhash = true;
    h.allocate(&mut n, &|_| {})
        .assert_err(method::ALLOCATE, 401);
}

// ================================================================================== Allocate

#[test]
fn allocate_success() {
    // RFC 8656 §7.2 / §7.3 (success response): XOR-RELAYED-ADDRESS, LIFETIME (default 600 s,
    // §3.2), XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut c, &|_| {});
    r.assert_ok(method::ALLOCATE);
    c.assert_signed(&r);
    assert_eq!(r.integrity(), Some(IntegrityKind::Sha1));
    assert!(r.msg().has_fingerprint, "FINGERPRINT mirrors the request");
    assert_eq!(h.binds.len(), 1);
    let (relay, addr, dont_fragment) = h.binds[0];
    assert_eq!(addr.ip(), relay_v4());
    assert!((MIN_PORT..=MAX_PORT).contains(&addr.port()));
    assert!(!dont_fragment);
    assert_eq!(r.xor(attr::XOR_RELAYED_ADDRESS), Some(addr));
    assert_eq!(r.u32(attr::LIFETIME), Some(600));
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(c.tuple.client));
    assert!(r.get(attr::RESERVATION_TOKEN).is_none());
    assert!(r.get(attr::USERNAME).is_none() && r.get(attr::NONCE).is_none());
    assert_eq!(h.engine.allocation_count(), 1);
    let a = h.engine.allocations().next().unwrap();
    let r = a.relays[V4].expect("an IPv4 relay");
    assert_eq!((r.id, r.addr, a.tuple), (relay, addr, c.tuple));
    assert!(a.relays[V6].is_none());
    assert_eq!(h.shared.ports_in_use(), 1);
    assert_eq!(h.shared.total_allocations(), 1);
    assert_eq!(h.engine.poll_timeout(), Some(h.at(600)));
    assert_eq!(h.engine.stats.allocations_created, 1);
}

#[test]
fn allocate_advertises_external_ip() {
    // RFC 8656 §7.2: XOR-RELAYED-ADDRESS is the address peers reach; behind a NAT that is the
    // configured external IP, while the socket binds the local relay IP.
    let mut config = cfg();
    config.external_ip_v4 = Some(ip("203.0.113.77"));
    let mut h = Harness::new(config);
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (_, relayed) = h.alloc_ok(&mut c);
    let (_, bound, _) = h.binds[0];
    assert_eq!(bound.ip(), relay_v4());
    assert_eq!(relayed, SocketAddr::new(ip("203.0.113.77"), bound.port()));
}

#[test]
fn allocate_lifetime_rules() {
    // RFC 8656 §7.2: desired lifetime = min(requested, max) but not below the default;
    // an Allocate LIFETIME of 0 is not a delete and gets the default.
    let mut h = Harness::new(cfg()); // default 600, max 3600
    let cases = [
        (None, 600),
        (Some(1200), 1200),
        (Some(99999), 3600),
        (Some(30), 600),
        (Some(0), 600),
    ];
    for (i, (requested, want)) in cases.into_iter().enumerate() {
        let mut c = Client::new(
            udp(&format!("198.51.100.20:{}", 40000 + i)),
            "alice",
            "alice-pw",
        );
        let r = h.allocate(&mut c, &|w| {
            if let Some(l) = requested {
                w.u32(attr::LIFETIME, l);
            }
        });
        r.assert_ok(method::ALLOCATE);
        assert_eq!(r.u32(attr::LIFETIME), Some(want), "requested {requested:?}");
    }
}

#[test]
fn allocate_retransmission_gets_the_same_answer() {
    // RFC 8656 §7.2 / RFC 8489 §6.3.1: a retransmitted Allocate (same transaction ID) gets the
    // same response and does not allocate again, also while the relay socket is being bound.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.login(&mut c);
    h.hold_binds = true;
    let (tid, req) = c.build(method::ALLOCATE, &transport_udp);
    assert!(h.send(c.tuple, &req).is_empty());
    assert!(h.send(c.tuple, &req).is_empty());
    assert_eq!(h.binds.len(), 1);
    let mut answers = h.release_binds();
    assert_eq!(answers.len(), 1);
    let first = answers.pop().unwrap();
    first.assert_ok(method::ALLOCATE);
    assert_eq!(first.tid(), tid);
    let again = h.send_one(c.tuple, &req);
    assert_eq!(again, first, "byte-identical");
    assert_eq!(h.binds.len(), 1);
    assert_eq!(h.engine.allocation_count(), 1);
    assert_eq!(h.shared.ports_in_use(), 1);
}

#[test]
fn allocate_retransmission_outlives_the_transaction_cache() {
    // RFC 8656 §7.2: the shard's transaction cache is bounded and shared by every request, so
    // a busy shard may evict an Allocate's answer within the 40 s its client retransmits;
    // the retransmission still gets the original success, not 437. After 40 s the same
    // transaction ID is a new request: 437.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.login(&mut c);
    let (tid, req) = c.build(method::ALLOCATE, &transport_udp);
    let first = h.send_one(c.tuple, &req);
    first.assert_ok(method::ALLOCATE);
    h.engine.txn = super::txn_cache::TxnCache::new(4096); // as if other transactions had evicted it
    let again = h.send_one(c.tuple, &req);
    assert_eq!(again, first, "byte-identical");
    assert_eq!(again.tid(), tid);
    // Another client's identical transaction ID on another 5-tuple is not a retransmission.
    let mut d = Client::new(udp("198.51.100.21:40000"), "alice", "alice-pw");
    h.login(&mut d);
    let other = h.send_one(d.tuple, &req);
    assert_ne!(other, first);
    assert_eq!(
        h.engine.allocation_count(),
        1,
        "a copied Allocate allocates nothing new"
    );
    h.set_time(41);
    h.engine.txn = super::txn_cache::TxnCache::new(4096);
    let late = h.send_one(c.tuple, &req);
    late.assert_err(method::ALLOCATE, 437);
    assert_eq!(h.binds.len(), 1);
    assert_eq!(h.shared.total_allocations(), 1);
}

#[test]
fn second_allocate_on_same_five_tuple_gets_437() {
    // RFC 8656 §7.2: the 5-tuple is already in use → 437 Allocation Mismatch.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut c);
    let r = h.allocate(&mut c, &|_| {});
    r.assert_err(method::ALLOCATE, 437);
    c.assert_signed(&r);
    assert_eq!(h.binds.len(), 1);
    assert_eq!(h.shared.total_allocations(), 1);
}

#[test]
fn allocate_requested_transport_checks() {
    // RFC 8656 §7.2: REQUESTED-TRANSPORT missing or malformed → 400; neither UDP nor TCP → 442;
    // RFC 6062 §5.1: TCP asked for over a UDP client leg → 400.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.transact(&mut c, method::ALLOCATE, &|_| {});
    r.assert_err(method::ALLOCATE, 400);
    c.assert_signed(&r);
    h.transact(&mut c, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0]);
    })
    .assert_err(method::ALLOCATE, 400);
    let r = h.transact(&mut c, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    r.assert_err(method::ALLOCATE, 400);
    c.assert_signed(&r);
    let r = h.transact(&mut c, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[132, 0, 0, 0]);
    });
    r.assert_err(method::ALLOCATE, 442);
    c.assert_signed(&r);
    assert!(h.binds.is_empty());
    assert_eq!(h.shared.total_allocations(), 0);
}

#[test]
fn allocate_ipv6_without_ipv6_relay_gets_440() {
    // RFC 8656 §7.2: an address family the server does not support → 440.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    for family in [2u8, 3] {
        let r = h.allocate(&mut c, &|w| {
            w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[family, 0, 0, 0]);
        });
        r.assert_err(method::ALLOCATE, 440);
        c.assert_signed(&r);
    }
    assert!(h.binds.is_empty());
    assert_eq!(h.shared.total_allocations(), 0);
}

#[test]
fn allocate_ipv6_relay() {
    // RFC 8656 §7.2 / §18.11: REQUESTED-ADDRESS-FAMILY IPv6 gets an IPv6 relayed address;
    // family 3 is unknown → 440; explicit IPv4 works.
    let mut config = cfg();
    config.relay_ip_v6 = Some(relay_v6());
    let mut h = Harness::new(config);
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (_, relayed) = h.alloc_ok_with(&mut c, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(relayed.ip(), relay_v6());
    assert_eq!(h.binds[0].1.ip(), relay_v6());
    let mut d = Client::new(udp("198.51.100.20:40001"), "alice", "alice-pw");
    let r = h.allocate(&mut d, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0]);
    });
    r.assert_err(method::ALLOCATE, 440);
    let (_, relayed) = h.alloc_ok_with(&mut d, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0]);
    });
    assert_eq!(relayed.ip(), relay_v4());
}

#[test]
fn reservation_token_excludes_even_port_and_families() {
    // RFC 8656 §7.2: RESERVATION-TOKEN together with EVEN-PORT, REQUESTED-ADDRESS-FAMILY or
    // ADDITIONAL-ADDRESS-FAMILY → 400.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let token = [1, 2, 3, 4, 5, 6, 7, 8];
    let extras: [(u16, &[u8]); 3] = [
        (attr::EVEN_PORT, &[0x80]),
        (attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0]),
        (attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]),
    ];
    for (ty, value) in extras {
        let r = h.allocate(&mut c, &|w| {
            w.attr(attr::RESERVATION_TOKEN, &token).attr(ty, value);
        });
        r.assert_err(method::ALLOCATE, 400);
        c.assert_signed(&r);
    }
    assert!(h.binds.is_empty());
    assert_eq!(h.shared.total_allocations(), 0);
}

#[test]
fn even_port_with_reservation_and_token_redemption() {
    // RFC 8656 §7.2 / §14.6: EVEN-PORT with R → an even port, the next port reserved, and a
    // RESERVATION-TOKEN; an Allocate on another 5-tuple with that token gets port + 1. A token
    // is single-use (→ 508 after).
    let mut h = Harness::new(cfg());
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut a, &|w| {
        w.attr(attr::EVEN_PORT, &[0x80]);
    });
    r.assert_ok(method::ALLOCATE);
    let port = r.xor(attr::XOR_RELAYED_ADDRESS).unwrap().port();
    assert_eq!(port % 2, 0);
    let token = r.get(attr::RESERVATION_TOKEN).expect("RESERVATION-TOKEN");
    assert_eq!(token.len(), 8);
    assert_eq!(h.shared.ports_in_use(), 2);

    let mut b = Client::new(udp("198.51.100.30:41000"), "bob", "bob-pw");
    let r = h.allocate(&mut b, &|w| {
        w.attr(attr::RESERVATION_TOKEN, &token);
    });
    r.assert_ok(method::ALLOCATE);
    assert_eq!(r.xor(attr::XOR_RELAYED_ADDRESS).unwrap().port(), port + 1);
    assert_eq!(h.binds[1].1.port(), port + 1);
    assert!(r.get(attr::RESERVATION_TOKEN).is_none());
    assert_eq!(h.shared.ports_in_use(), 2);

    let mut c = Client::new(udp("198.51.100.30:41001"), "bob", "bob-pw");
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::RESERVATION_TOKEN, &token);
    });
    r.assert_err(method::ALLOCATE, 508);
    assert_eq!(h.shared.total_allocations(), 2);
    assert_eq!(h.binds.len(), 2);
}

#[test]
fn reservation_token_keeps_the_family() {
    // RFC 8656 §7.2: the token stands for the reserved transport address, so a token taken on
    // an IPv6 allocation gives an IPv6 relayed address (the Allocate that redeems it may not
    // carry REQUESTED-ADDRESS-FAMILY, step 5).
    let mut config = cfg();
    config.relay_ip_v6 = Some(relay_v6());
    let mut h = Harness::new(config);
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut a, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80]);
    });
    r.assert_ok(method::ALLOCATE);
    let first = r.xor(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(first.ip(), relay_v6());
    let token = r.get(attr::RESERVATION_TOKEN).expect("RESERVATION-TOKEN");
    let mut b = Client::new(udp("198.51.100.30:41000"), "bob", "bob-pw");
    let r = h.allocate(&mut b, &|w| {
        w.attr(attr::RESERVATION_TOKEN, &token);
    });
    r.assert_ok(method::ALLOCATE);
    assert_eq!(
        r.xor(attr::XOR_RELAYED_ADDRESS).unwrap(),
        SocketAddr::new(relay_v6(), first.port() + 1)
    );
}

#[test]
fn even_port_without_reservation() {
    // RFC 8656 §14.6: EVEN-PORT with R = 0: an even port, nothing reserved.
    let mut h = Harness::new(cfg());
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut a, &|w| {
        w.attr(attr::EVEN_PORT, &[0x00]);
    });
    r.assert_ok(method::ALLOCATE);
    assert_eq!(r.xor(attr::XOR_RELAYED_ADDRESS).unwrap().port() % 2, 0);
    assert!(r.get(attr::RESERVATION_TOKEN).is_none());
    assert_eq!(h.shared.ports_in_use(), 1);
}

#[test]
fn reservation_expires_after_30_seconds() {
    // RFC 8656 §7.2: the reserved port is held for about 30 seconds, then released.
    let mut h = Harness::new(cfg());
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut a, &|w| {
        w.attr(attr::EVEN_PORT, &[0x80]);
    });
    let token = r.get(attr::RESERVATION_TOKEN).unwrap();
    h.set_time(31);
    let mut b = Client::new(udp("198.51.100.30:41000"), "bob", "bob-pw");
    let r = h.allocate(&mut b, &|w| {
        w.attr(attr::RESERVATION_TOKEN, &token);
    });
    r.assert_err(method::ALLOCATE, 508);
    assert_eq!(h.shared.ports_in_use(), 1);
}

#[test]
fn bogus_reservation_token_gets_508() {
    // RFC 8656 §7.2: a token that is not valid → 508 Insufficient Capacity.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    for token in [&[9u8; 8][..], &[1, 2, 3, 4]] {
        let r = h.allocate(&mut c, &|w| {
            w.attr(attr::RESERVATION_TOKEN, token);
        });
        r.assert_err(method::ALLOCATE, 508);
        c.assert_signed(&r);
    }
    assert!(h.binds.is_empty());
    assert_eq!(h.shared.total_allocations(), 0);
    assert_eq!(h.shared.ports_in_use(), 0);
}

#[test]
fn user_quota_gets_486() {
    // RFC 8656 §7.2: 486 Allocation Quota Reached; released when the allocation goes.
    let mut config = cfg();
    config.user_quota = 1;
    let mut h = Harness::new(config);
    let mut a1 = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let mut a2 = Client::new(udp("198.51.100.20:40001"), "alice", "alice-pw");
    let mut b = Client::new(udp("198.51.100.30:40000"), "bob", "bob-pw");
    h.alloc_ok(&mut a1);
    let r = h.allocate(&mut a2, &|_| {});
    r.assert_err(method::ALLOCATE, 486);
    a2.assert_signed(&r);
    h.alloc_ok(&mut b);
    assert_eq!(h.binds.len(), 2);
    h.refresh(&mut a1, Some(0)).assert_ok(method::REFRESH);
    h.alloc_ok(&mut a2);
}

#[test]
fn total_quota_gets_508() {
    // RFC 8656 §7.2: server out of capacity → 508.
    let mut config = cfg();
    config.total_quota = 1;
    let mut h = Harness::new(config);
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let mut b = Client::new(udp("198.51.100.30:40000"), "bob", "bob-pw");
    h.alloc_ok(&mut a);
    let r = h.allocate(&mut b, &|_| {});
    r.assert_err(method::ALLOCATE, 508);
    b.assert_signed(&r);
    assert_eq!(h.shared.total_allocations(), 1);
    assert_eq!(h.binds.len(), 1);
}

#[test]
fn bind_failure_is_retried_on_another_port() {
    // A port held by another process (AddrInUse) is not the client's problem: the engine picks
    // another port and binds again.
    let mut h = Harness::new(cfg());
    h.fail_binds = 1;
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, relayed) = h.alloc_ok(&mut c);
    assert_eq!(h.binds.len(), 2);
    assert_eq!(h.binds[0].0, h.binds[1].0, "same relay slot");
    assert_ne!(h.binds[0].1.port(), h.binds[1].1.port());
    assert_eq!(relayed, h.binds[1].1);
    assert_eq!(relay, h.binds[1].0);
    assert_eq!(h.shared.ports_in_use(), 1);
    assert_eq!(h.shared.total_allocations(), 1);

    // With EVEN-PORT R the reservation moves with the retry.
    h.fail_binds = 1;
    let mut d = Client::new(udp("198.51.100.20:40001"), "alice", "alice-pw");
    let r = h.allocate(&mut d, &|w| {
        w.attr(attr::EVEN_PORT, &[0x80]);
    });
    r.assert_ok(method::ALLOCATE);
    assert_eq!(h.binds.len(), 4);
    let port = r.xor(attr::XOR_RELAYED_ADDRESS).unwrap().port();
    assert_eq!((port % 2, port), (0, h.binds[3].1.port()));
    assert_eq!(h.shared.ports_in_use(), 3);
}

#[test]
fn bind_failing_every_time_gets_508() {
    // After MAX_BIND_ATTEMPTS the Allocate fails with 508 and gives back port and quota.
    let mut h = Harness::new(cfg());
    h.fail_binds = 100;
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut c, &|_| {});
    r.assert_err(method::ALLOCATE, 508);
    c.assert_signed(&r);
    assert_eq!(h.binds.len(), MAX_BIND_ATTEMPTS as usize);
    assert_eq!(h.engine.allocation_count(), 0);
    assert_eq!(h.shared.ports_in_use(), 0);
    assert_eq!(h.shared.total_allocations(), 0);
    // A token's port cannot be swapped for another: one attempt, then 508.
    h.fail_binds = 0;
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::EVEN_PORT, &[0x80]);
    });
    let token = r.get(attr::RESERVATION_TOKEN).unwrap();
    let n = h.binds.len();
    h.fail_binds = 100;
    let mut d = Client::new(udp("198.51.100.20:40001"), "alice", "alice-pw");
    let r = h.allocate(&mut d, &|w| {
        w.attr(attr::RESERVATION_TOKEN, &token);
    });
    r.assert_err(method::ALLOCATE, 508);
    assert_eq!(h.binds.len(), n + 1);
    assert_eq!(h.shared.ports_in_use(), 1);
    assert_eq!(h.shared.total_allocations(), 1);
}

#[test]
fn port_range_exhausted_gets_508() {
    // RFC 8656 §7.2: no relayed transport address available → 508.
    let mut config = cfg();
    config.min_port = 50000;
    config.max_port = 50000;
    let mut h = Harness::new(config);
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let mut b = Client::new(udp("198.51.100.30:40000"), "bob", "bob-pw");
    let (_, relayed) = h.alloc_ok(&mut a);
    assert_eq!(relayed.port(), 50000);
    let r = h.allocate(&mut b, &|_| {});
    r.assert_err(method::ALLOCATE, 508);
    b.assert_signed(&r);
    assert_eq!(h.shared.total_allocations(), 1);
    // Freed by the delete, the port serves the next client.
    h.refresh(&mut a, Some(0)).assert_ok(method::REFRESH);
    let (_, relayed) = h.alloc_ok(&mut b);
    assert_eq!(relayed.port(), 50000);
}

#[test]
fn dont_fragment_reaches_the_bind() {
    // RFC 8656 §14.8 DONT-FRAGMENT: the relay socket is bound with DF set.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok_with(&mut c, &|w| {
        w.attr(attr::DONT_FRAGMENT, &[]);
    });
    assert!(h.binds[0].2);
}

#[test]
fn send_indication_with_dont_fragment_needs_a_df_allocation() {
    // RFC 8656 §11.2: a server that cannot set DF on the datagram treats DONT-FRAGMENT in a
    // Send indication as an unknown comprehension-required attribute and discards it. DF is
    // set per relay socket, by an Allocate with DONT-FRAGMENT.
    let df_send = |peer| {
        let mut b = Vec::new();
        Writer::new(&mut b, method::SEND, Class::Indication, &new_tid())
            .xor_addr(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, b"df")
            .attr(attr::DONT_FRAGMENT, &[]);
        b
    };
    let mut h = Harness::new(cfg());
    let mut plain = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut plain);
    h.permit(&mut plain, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    assert!(h.client_datagram(plain.tuple, &df_send(p1())).is_none());
    assert_eq!(h.engine.stats.dropped_malformed, 1);
    // Without the attribute the same allocation relays.
    assert!(h
        .client_datagram(plain.tuple, &send_indication(p1(), b"no df"))
        .is_some());
    let mut df = Client::new(udp("198.51.100.21:40000"), "alice", "alice-pw");
    h.alloc_ok_with(&mut df, &|w| {
        w.attr(attr::DONT_FRAGMENT, &[]);
    });
    h.permit(&mut df, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    let out = h
        .client_datagram(df.tuple, &df_send(p1()))
        .expect("relayed");
    assert_eq!((out.peer, &out.payload[..]), (p1(), &b"df"[..]));
}

#[test]
fn unknown_comprehension_required_attribute_in_allocate_after_authentication() {
    // RFC 8489 §6.3: the unknown-attribute check comes after the authentication checks, so an
    // unauthenticated Allocate is challenged (401) and an authenticated one gets a signed 420.
    let mut h = Harness::new(cfg());
    let c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (_, req) = c.build(method::ALLOCATE, &|w| {
        transport_udp(w);
        w.attr(0x7abc, b"?");
    });
    h.send_one(c.tuple, &req).assert_err(method::ALLOCATE, 401);
    let mut c = c;
    let r = h.allocate(&mut c, &|w| {
        w.attr(0x7abc, b"?");
    });
    r.assert_err(method::ALLOCATE, 420);
    assert_eq!(r.get(attr::UNKNOWN_ATTRIBUTES), Some(vec![0x7a, 0xbc]));
    c.assert_signed(&r);
    assert!(h.binds.is_empty());
}

// ================================================================================== Refresh

#[test]
fn refresh_extends_the_allocation() {
    // RFC 8656 §7.3: a Refresh sets time-to-expiry to the desired lifetime, counted from now.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    assert_eq!(h.engine.poll_timeout(), Some(h.at(600)));
    h.set_time(100);
    let r = h.refresh(&mut c, Some(1200));
    r.assert_ok(method::REFRESH);
    c.assert_signed(&r);
    assert_eq!(r.u32(attr::LIFETIME), Some(1200));
    // The old deadline may still be queued, but it no longer expires the allocation.
    h.set_time(600);
    assert_eq!(h.engine.allocation_count(), 1);
    assert!(h.closes.is_empty());
    assert_eq!(h.engine.poll_timeout(), Some(h.at(1300)));
    // Without LIFETIME: the default, from now.
    h.set_time(1000);
    let r = h.refresh(&mut c, None);
    assert_eq!(r.u32(attr::LIFETIME), Some(600));
    h.set_time(1300);
    assert_eq!(h.engine.allocation_count(), 1);
    h.set_time(1599);
    assert_eq!(h.engine.allocation_count(), 1);
    h.set_time(1600);
    assert_eq!(h.engine.allocation_count(), 0);
    assert_eq!(h.closes, vec![relay]);
}

#[test]
fn refresh_zero_deletes_and_is_idempotent_on_retransmission() {
    // RFC 8656 §7.3: LIFETIME 0 deletes the allocation, answered with LIFETIME 0. A retransmitted
    // Refresh gets the cached success (RFC 8489 §6.3.1); a new Refresh finds nothing → 437.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    h.permit(&mut c, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    let (_, req) = c.build(method::REFRESH, &|w| {
        w.u32(attr::LIFETIME, 0);
    });
    let first = h.send_one(c.tuple, &req);
    first.assert_ok(method::REFRESH);
    c.assert_signed(&first);
    assert_eq!(first.u32(attr::LIFETIME), Some(0));
    assert_eq!(h.closes, vec![relay]);
    assert_eq!(h.engine.allocation_count(), 0);
    assert_eq!(h.shared.ports_in_use(), 0);
    assert_eq!(h.shared.total_allocations(), 0);
    assert_eq!(h.engine.stats.allocations_deleted, 1);
    assert!(h.peer_datagram(relay, p1(), b"late").is_none());

    assert_eq!(h.send_one(c.tuple, &req), first);
    assert_eq!(h.closes.len(), 1);

    let r = h.refresh(&mut c, Some(0));
    r.assert_err(method::REFRESH, 437);
    c.assert_signed(&r);
}

#[test]
fn refresh_by_another_user_gets_441() {
    // RFC 8656 §7.3 (and §9.2, §11.2): a request on an allocation with other credentials than
    // the ones that created it → 441 Wrong Credentials; the allocation is untouched.
    let mut h = Harness::new(cfg());
    let t = udp("198.51.100.20:40000");
    let mut alice = Client::new(t, "alice", "alice-pw");
    let mut bob = Client::new(t, "bob", "bob-pw");
    h.alloc_ok(&mut alice);
    let r = h.refresh(&mut bob, Some(0));
    r.assert_err(method::REFRESH, 441);
    bob.assert_signed(&r);
    h.permit(&mut bob, &[p1()])
        .assert_err(method::CREATE_PERMISSION, 441);
    h.channel_bind(&mut bob, 0x4000, p1())
        .assert_err(method::CHANNEL_BIND, 441);
    assert_eq!(h.engine.allocation_count(), 1);
    assert!(h.closes.is_empty());
    h.refresh(&mut alice, None).assert_ok(method::REFRESH);
}

#[test]
fn refresh_without_allocation_gets_437() {
    // RFC 8656 §7.3: no allocation on this 5-tuple → 437.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.refresh(&mut c, Some(600));
    r.assert_err(method::REFRESH, 437);
    c.assert_signed(&r);
}

#[test]
fn refresh_with_other_address_family_gets_443() {
    // RFC 8656 §7.3: REQUESTED-ADDRESS-FAMILY not matching the allocation → 443.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut c);
    h.transact(&mut c, method::REFRESH, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    })
    .assert_err(method::REFRESH, 443);
    h.transact(&mut c, method::REFRESH, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0]);
    })
    .assert_ok(method::REFRESH);
}

// ================================================================================== expiry

#[test]
fn allocation_expires_when_its_lifetime_runs_out() {
    // RFC 8656 §7: when time-to-expiry reaches zero the allocation is deleted: relay socket
    // closed, port and quota given back.
    let mut config = cfg();
    config.user_quota = 1;
    let mut h = Harness::new(config);
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    h.permit(&mut c, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    assert_eq!(h.shared.total_allocations(), 1);
    h.set_time(599);
    assert_eq!(h.engine.allocation_count(), 1);
    assert!(h.closes.is_empty());
    h.set_time(600);
    assert_eq!(h.closes, vec![relay]);
    assert_eq!(h.engine.allocation_count(), 0);
    assert_eq!(h.shared.total_allocations(), 0);
    assert_eq!(h.shared.ports_in_use(), 0);
    assert_eq!(h.engine.poll_timeout(), None);
    assert!(h.peer_datagram(relay, p1(), b"late").is_none());
    assert!(h
        .client_datagram(c.tuple, &send_indication(p1(), b"late"))
        .is_none());
    h.refresh(&mut c, None).assert_err(method::REFRESH, 437);
    // The quota is free again.
    let mut d = Client::new(udp("198.51.100.20:40001"), "alice", "alice-pw");
    h.alloc_ok(&mut d);
}

// ================================================================================== CreatePermission

#[test]
fn create_permission_with_several_peers() {
    // RFC 8656 §9.2: every XOR-PEER-ADDRESS gets a permission; the port is ignored (§9).
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    let r = h.permit(&mut c, &[p1(), p2(), p3()]);
    r.assert_ok(method::CREATE_PERMISSION);
    c.assert_signed(&r);
    assert!(r.get(attr::XOR_PEER_ADDRESS).is_none());
    for p in [p1(), p2(), p3(), sa("203.0.113.5:1")] {
        assert!(h.peer_datagram(relay, p, b"hi").is_some(), "{p}");
    }
    assert!(h
        .peer_datagram(relay, sa("203.0.113.6:7000"), b"hi")
        .is_none());
}

#[test]
fn create_permission_with_a_forbidden_peer_installs_nothing() {
    // RFC 8656 §9.2: a peer address the server does not allow → 403, and (all attributes are
    // checked first) no permission is installed. RFC 8656 §21: loopback and private ranges are
    // refused by default.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    for bad in [
        "10.0.0.1:80",
        "127.0.0.1:80",
        "169.254.169.254:80",
        "0.0.0.0:80",
    ] {
        let r = h.permit(&mut c, &[p1(), sa(bad)]);
        r.assert_err(method::CREATE_PERMISSION, 403);
        c.assert_signed(&r);
    }
    // The server's own listener.
    h.permit(&mut c, &[server_v4()])
        .assert_err(method::CREATE_PERMISSION, 403);
    assert!(h.peer_datagram(relay, p1(), b"hi").is_none());
    assert!(h
        .client_datagram(c.tuple, &send_indication(p1(), b"hi"))
        .is_none());
    assert!(h.engine.stats.peers_denied >= 5);
}

/// A host address that appears while running (wildcard listener) becomes own at once: new
/// channels to it are refused, the one already bound to it and Send indications stop relaying
/// (as on a SIGHUP that tightens the filter); when it goes away it is an ordinary peer again.
#[test]
fn host_address_change_applies_to_installed_channels() {
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut c);
    h.channel_bind(&mut c, 0x4000, p1())
        .assert_ok(method::CHANNEL_BIND);
    let cd = channel_data(0x4000, b"hi", false);
    assert!(h.client_datagram(c.tuple, &cd).is_some());
    h.engine.set_host_addresses(vec![p1().ip()]);
    assert!(h.client_datagram(c.tuple, &cd).is_none());
    assert!(h
        .client_datagram(c.tuple, &send_indication(p1(), b"hi"))
        .is_none());
    h.channel_bind(&mut c, 0x4001, p1())
        .assert_err(method::CHANNEL_BIND, 403);
    h.engine.set_host_addresses(vec![p2().ip()]);
    h.channel_bind(&mut c, 0x4001, p1())
        .assert_ok(method::CHANNEL_BIND);
    assert!(h
        .client_datagram(c.tuple, &channel_data(0x4001, b"hi", false))
        .is_some());
}

#[test]
fn create_permission_loopback_allowed_by_config() {
    let mut config = cfg();
    config.peer_filter = peer_filter(true);
    let mut h = Harness::new(config);
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    let lo = sa("127.0.0.1:9000");
    h.permit(&mut c, &[lo]).assert_ok(method::CREATE_PERMISSION);
    let out = h
        .client_datagram(c.tuple, &send_indication(lo, b"x"))
        .unwrap();
    assert_eq!(out.peer, lo);
    let (peer, data) = h.data_indication(relay, lo, b"y", c.tuple);
    assert_eq!((peer, data), (lo, b"y".to_vec()));
    // Private ranges stay forbidden.
    h.permit(&mut c, &[sa("192.168.1.1:80")])
        .assert_err(method::CREATE_PERMISSION, 403);
}

#[test]
fn create_permission_family_mismatch_gets_443() {
    // RFC 8656 §9.2: XOR-PEER-ADDRESS of another family than the relayed address → 443.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut c);
    let r = h.permit(&mut c, &[p1(), p6()]);
    r.assert_err(method::CREATE_PERMISSION, 443);
    c.assert_signed(&r);
}

#[test]
fn create_permission_without_peer_gets_400() {
    // RFC 8656 §9.2: at least one XOR-PEER-ADDRESS; none, or a malformed one → 400.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut c);
    let r = h.permit(&mut c, &[]);
    r.assert_err(method::CREATE_PERMISSION, 400);
    c.assert_signed(&r);
    h.transact(&mut c, method::CREATE_PERMISSION, &|w| {
        w.attr(attr::XOR_PEER_ADDRESS, &[0, 1, 2]);
    })
    .assert_err(method::CREATE_PERMISSION, 400);
}

#[test]
fn create_permission_without_allocation_gets_437() {
    // RFC 8656 §9.2 (via §5): no allocation on the 5-tuple → 437.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.permit(&mut c, &[p1()]);
    r.assert_err(method::CREATE_PERMISSION, 437);
    c.assert_signed(&r);
}

// ================================================================================== data path

#[test]
fn send_indication_to_permitted_peer_is_relayed() {
    // RFC 8656 §10.2: XOR-PEER-ADDRESS and DATA present, permission installed → the DATA value
    // goes to the peer from the relayed address. DATA may be empty.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    h.permit(&mut c, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    let ind = send_indication(p1(), b"hello, peer");
    let out = h.client_datagram(c.tuple, &ind).expect("relayed");
    assert_eq!((out.relay, out.peer), (relay, p1()));
    assert_eq!(out.payload, b"hello, peer");
    // header + XOR-PEER-ADDRESS (4 + 8) + DATA header: the payload is borrowed in place.
    assert_eq!(out.offset, 20 + 12 + 4);
    // Another port on the permitted IP: permissions are per IP (§9).
    let other = sa("203.0.113.5:9999");
    assert_eq!(
        h.client_datagram(c.tuple, &send_indication(other, b"x"))
            .unwrap()
            .peer,
        other
    );
    let empty = h
        .client_datagram(c.tuple, &send_indication(p1(), b""))
        .unwrap();
    assert!(empty.payload.is_empty());
    assert_eq!(h.engine.stats.packets_to_peer, 3);
}

#[test]
fn send_indication_without_permission_or_attributes_is_dropped() {
    // RFC 8656 §10.2: no permission, or XOR-PEER-ADDRESS / DATA missing → silently discarded.
    // RFC 8489 §6.3.2: an indication with an unknown comprehension-required attribute too.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    assert!(h
        .client_datagram(c.tuple, &send_indication(p1(), b"x"))
        .is_none());
    h.alloc_ok(&mut c);
    h.permit(&mut c, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    assert!(h
        .client_datagram(c.tuple, &send_indication(p2(), b"x"))
        .is_none());
    let mut no_data = Vec::new();
    Writer::new(&mut no_data, method::SEND, Class::Indication, &new_tid())
        .xor_addr(attr::XOR_PEER_ADDRESS, p1());
    assert!(h.client_datagram(c.tuple, &no_data).is_none());
    let mut no_peer = Vec::new();
    Writer::new(&mut no_peer, method::SEND, Class::Indication, &new_tid()).attr(attr::DATA, b"x");
    assert!(h.client_datagram(c.tuple, &no_peer).is_none());
    let mut unknown = Vec::new();
    Writer::new(&mut unknown, method::SEND, Class::Indication, &new_tid())
        .xor_addr(attr::XOR_PEER_ADDRESS, p1())
        .attr(attr::DATA, b"x")
        .attr(0x7abc, b"?");
    assert!(h.client_datagram(c.tuple, &unknown).is_none());
    // An IPv6 peer on an IPv4 relay.
    assert!(h
        .client_datagram(c.tuple, &send_indication(p6(), b"x"))
        .is_none());
    // From another 5-tuple: no allocation there.
    let stranger = udp("198.51.100.20:40001");
    assert!(h
        .client_datagram(stranger, &send_indication(p1(), b"x"))
        .is_none());
    assert_eq!(h.engine.stats.packets_to_peer, 0);
}

#[test]
fn peer_data_becomes_a_data_indication() {
    // RFC 8656 §10.3: permitted peer, no channel → Data indication with XOR-PEER-ADDRESS and
    // DATA, sent to the client's 5-tuple.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    h.permit(&mut c, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    for payload in [&b"pong!"[..], b"", b"four", &[0xab; 1200]] {
        let (peer, data) = h.data_indication(relay, p1(), payload, c.tuple);
        assert_eq!(peer, p1());
        assert_eq!(data, payload);
    }
    // Unpermitted peer, unknown relay id: dropped.
    assert!(h
        .peer_datagram(relay, sa("203.0.113.99:7000"), b"x")
        .is_none());
    assert!(h.peer_datagram(relay + 7, p1(), b"x").is_none());
    assert_eq!(h.engine.stats.packets_to_client, 4);
}

#[test]
fn ipv6_relay_data_path() {
    // RFC 8656 §7.2 / §10: an IPv6 allocation relays to IPv6 peers both ways.
    let mut config = cfg();
    config.relay_ip_v6 = Some(relay_v6());
    let mut h = Harness::new(config);
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok_with(&mut c, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    h.permit(&mut c, &[p1()])
        .assert_err(method::CREATE_PERMISSION, 443);
    h.permit(&mut c, &[p6()])
        .assert_ok(method::CREATE_PERMISSION);
    let out = h
        .client_datagram(c.tuple, &send_indication(p6(), b"v6"))
        .unwrap();
    assert_eq!((out.peer, out.payload.as_slice()), (p6(), &b"v6"[..]));
    assert_eq!(out.offset, 20 + 24 + 4);
    let (peer, data) = h.data_indication(relay, p6(), b"back", c.tuple);
    assert_eq!((peer, data), (p6(), b"back".to_vec()));
    h.channel_bind(&mut c, 0x4000, p6())
        .assert_ok(method::CHANNEL_BIND);
    let (_, bytes) = h.peer_datagram(relay, p6(), b"ch").unwrap();
    assert_eq!(bytes, channel_data(0x4000, b"ch", false));
}

#[test]
fn permission_expires_after_300_seconds() {
    // RFC 8656 §9: a permission lasts 300 s unless refreshed; then data both ways is dropped.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    h.permit(&mut c, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    h.set_time(299);
    assert!(h.peer_datagram(relay, p1(), b"x").is_some());
    assert!(h
        .client_datagram(c.tuple, &send_indication(p1(), b"x"))
        .is_some());
    h.set_time(300);
    assert!(h.peer_datagram(relay, p1(), b"x").is_none());
    assert!(h
        .client_datagram(c.tuple, &send_indication(p1(), b"x"))
        .is_none());
    assert_eq!(h.engine.allocation_count(), 1, "the allocation lives on");
}

#[test]
fn refreshed_permission_stays_alive() {
    // RFC 8656 §9.2: CreatePermission on an existing permission refreshes it to 300 s from now.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok_with(&mut c, &|w| {
        w.u32(attr::LIFETIME, 3600);
    });
    h.permit(&mut c, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    h.set_time(200);
    h.permit(&mut c, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    h.set_time(499);
    assert!(h.peer_datagram(relay, p1(), b"x").is_some());
    assert!(h
        .client_datagram(c.tuple, &send_indication(p1(), b"x"))
        .is_some());
    h.set_time(500);
    assert!(h.peer_datagram(relay, p1(), b"x").is_none());
}

// ================================================================================== ChannelBind

#[test]
fn channel_number_out_of_range_gets_400() {
    // RFC 8656 §11.2 / §12: channel numbers 0x4000-0x4FFF; anything else → 400; CHANNEL-NUMBER
    // or XOR-PEER-ADDRESS missing → 400. Nothing is installed.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    for n in [0x3FFF, 0x5000, 0x0000, 0xFFFF] {
        let r = h.channel_bind(&mut c, n, p1());
        r.assert_err(method::CHANNEL_BIND, 400);
        c.assert_signed(&r);
    }
    h.transact(&mut c, method::CHANNEL_BIND, &|w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, p1());
    })
    .assert_err(method::CHANNEL_BIND, 400);
    h.transact(&mut c, method::CHANNEL_BIND, &|w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0]);
    })
    .assert_err(method::CHANNEL_BIND, 400);
    assert!(h.peer_datagram(relay, p1(), b"x").is_none());
}

#[test]
fn channel_bind_peer_checks() {
    // RFC 8656 §11.2: forbidden peer → 403, other family → 443, no allocation → 437.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.channel_bind(&mut c, 0x4000, p1())
        .assert_err(method::CHANNEL_BIND, 437);
    h.alloc_ok(&mut c);
    h.channel_bind(&mut c, 0x4000, sa("10.0.0.1:80"))
        .assert_err(method::CHANNEL_BIND, 403);
    h.channel_bind(&mut c, 0x4000, p6())
        .assert_err(method::CHANNEL_BIND, 443);
    // Port 0 cannot be sent to: 400, even with a permission for the IP.
    let zero = SocketAddr::new(p1().ip(), 0);
    h.channel_bind(&mut c, 0x4000, zero)
        .assert_err(method::CHANNEL_BIND, 400);
    // None of that bound 0x4000.
    h.channel_bind(&mut c, 0x4000, p1())
        .assert_ok(method::CHANNEL_BIND);
    // A Send indication to the permitted IP's port 0 is dropped, not relayed.
    assert!(h
        .client_datagram(c.tuple, &send_indication(zero, b"x"))
        .is_none());
    assert!(h
        .client_datagram(c.tuple, &send_indication(p1(), b"x"))
        .is_some());
}

#[test]
fn channel_data_both_ways() {
    // RFC 8656 §12.5: ChannelData on a bound channel goes to the peer; §12.7: peer data on a
    // bound channel comes back as ChannelData, unpadded over UDP (§12.5).
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    let r = h.channel_bind(&mut c, 0x4000, p1());
    r.assert_ok(method::CHANNEL_BIND);
    c.assert_signed(&r);

    for padded in [false, true] {
        let cd = channel_data(0x4000, b"hello", padded);
        let out = h.client_datagram(c.tuple, &cd).expect("relayed");
        assert_eq!((out.relay, out.peer), (relay, p1()));
        assert_eq!((out.payload.as_slice(), out.offset), (&b"hello"[..], 4));
    }
    let (t, bytes) = h.peer_datagram(relay, p1(), b"world!").unwrap();
    assert_eq!(t, c.tuple);
    assert_eq!(bytes, [&[0x40, 0x00, 0x00, 0x06][..], b"world!"].concat());
    // Same IP, other port: no channel, but the (per-IP) permission → Data indication.
    let other = sa("203.0.113.5:7777");
    let (peer, data) = h.data_indication(relay, other, b"z", c.tuple);
    assert_eq!((peer, data), (other, b"z".to_vec()));
    // Unbound channel number, or a length past the datagram: dropped.
    assert!(h
        .client_datagram(c.tuple, &channel_data(0x4001, b"x", false))
        .is_none());
    assert!(h
        .client_datagram(c.tuple, &[0x40, 0x00, 0x00, 0x09, 1, 2, 3])
        .is_none());
    // Other 5-tuple: no allocation.
    assert!(h
        .client_datagram(
            udp("198.51.100.20:40001"),
            &channel_data(0x4000, b"x", false)
        )
        .is_none());
}

#[test]
fn channel_data_over_tcp_is_padded() {
    // RFC 8656 §12.5: over a stream transport ChannelData is padded to a multiple of 4.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(
        tuple("198.51.100.20:40000", Transport::Tcp),
        "alice",
        "alice-pw",
    );
    let (relay, _) = h.alloc_ok(&mut c);
    h.channel_bind(&mut c, 0x4abc, p1())
        .assert_ok(method::CHANNEL_BIND);
    let (t, bytes) = h.peer_datagram(relay, p1(), b"hello").unwrap();
    assert_eq!(t, c.tuple);
    assert_eq!(bytes, channel_data(0x4abc, b"hello", true));
    assert_eq!(bytes.len(), 12);
    let out = h
        .client_datagram(c.tuple, &channel_data(0x4abc, b"hi", true))
        .unwrap();
    assert_eq!(out.payload, b"hi");
}

#[test]
fn channel_rebind_rules() {
    // RFC 8656 §11.2: rebinding the same number to the same peer refreshes the binding; the
    // number bound to another peer, or the peer to another number → 400.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok_with(&mut c, &|w| {
        w.u32(attr::LIFETIME, 3600);
    });
    h.channel_bind(&mut c, 0x4000, p1())
        .assert_ok(method::CHANNEL_BIND);
    h.set_time(500);
    h.channel_bind(&mut c, 0x4000, p1())
        .assert_ok(method::CHANNEL_BIND);
    h.set_time(700); // past the first binding's 600 s
    let out = h
        .client_datagram(c.tuple, &channel_data(0x4000, b"x", false))
        .unwrap();
    assert_eq!(out.peer, p1());
    let (_, bytes) = h.peer_datagram(relay, p1(), b"y").unwrap();
    assert_eq!(bytes, channel_data(0x4000, b"y", false));

    let r = h.channel_bind(&mut c, 0x4000, p2());
    r.assert_err(method::CHANNEL_BIND, 400);
    c.assert_signed(&r);
    h.channel_bind(&mut c, 0x4001, p1())
        .assert_err(method::CHANNEL_BIND, 400);
    h.channel_bind(&mut c, 0x4001, p2())
        .assert_ok(method::CHANNEL_BIND);
    // A channel is bound to a transport address: another port of p1's IP is another peer.
    h.channel_bind(&mut c, 0x4002, sa("203.0.113.5:7777"))
        .assert_ok(method::CHANNEL_BIND);
    assert_eq!(
        h.client_datagram(c.tuple, &channel_data(0x4001, b"x", false))
            .unwrap()
            .peer,
        p2()
    );
}

#[test]
fn channel_expiry_and_cooldown() {
    // RFC 8656 §11: a channel binding lasts 600 s; after it expires the number and the peer
    // stay reserved for 5 more minutes. Permissions (300 s, §9) expire on their own.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok_with(&mut c, &|w| {
        w.u32(attr::LIFETIME, 3600);
    });
    h.channel_bind(&mut c, 0x4000, p1())
        .assert_ok(method::CHANNEL_BIND);
    h.channel_bind(&mut c, 0x4002, p3())
        .assert_ok(method::CHANNEL_BIND);
    // Keep p1's permission alive past the channel; p3's lapses at 300.
    h.set_time(250);
    h.permit(&mut c, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    h.set_time(500);
    h.permit(&mut c, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);

    h.set_time(599);
    assert_eq!(
        h.client_datagram(c.tuple, &channel_data(0x4000, b"a", false))
            .unwrap()
            .peer,
        p1()
    );
    let (_, bytes) = h.peer_datagram(relay, p1(), b"b").unwrap();
    assert_eq!(bytes, channel_data(0x4000, b"b", false));
    // p3: channel live, permission gone → dropped both ways.
    assert!(h
        .client_datagram(c.tuple, &channel_data(0x4002, b"a", false))
        .is_none());
    assert!(h.peer_datagram(relay, p3(), b"b").is_none());

    h.set_time(600);
    // Channel expired: ChannelData dropped; the permission (until 800) still lets peer data
    // through, now as a Data indication.
    assert!(h
        .client_datagram(c.tuple, &channel_data(0x4000, b"a", false))
        .is_none());
    let (peer, data) = h.data_indication(relay, p1(), b"b", c.tuple);
    assert_eq!((peer, data), (p1(), b"b".to_vec()));
    assert!(h.peer_datagram(relay, p3(), b"b").is_none());

    // Cool-down: neither the number nor the peer may be bound to something else.
    h.set_time(700);
    h.channel_bind(&mut c, 0x4000, p2())
        .assert_err(method::CHANNEL_BIND, 400);
    h.channel_bind(&mut c, 0x4001, p1())
        .assert_err(method::CHANNEL_BIND, 400);
    // Binding the same pair again is allowed (and re-installs the permission).
    h.channel_bind(&mut c, 0x4002, p3())
        .assert_ok(method::CHANNEL_BIND);
    assert_eq!(
        h.client_datagram(c.tuple, &channel_data(0x4002, b"a", false))
            .unwrap()
            .peer,
        p3()
    );
    h.set_time(899);
    h.channel_bind(&mut c, 0x4000, p2())
        .assert_err(method::CHANNEL_BIND, 400);

    h.set_time(900);
    h.channel_bind(&mut c, 0x4000, p2())
        .assert_ok(method::CHANNEL_BIND);
    assert_eq!(
        h.client_datagram(c.tuple, &channel_data(0x4000, b"a", false))
            .unwrap()
            .peer,
        p2()
    );
    let (_, bytes) = h.peer_datagram(relay, p2(), b"c").unwrap();
    assert_eq!(bytes, channel_data(0x4000, b"c", false));
    h.channel_bind(&mut c, 0x4001, p1())
        .assert_ok(method::CHANNEL_BIND);
}

#[test]
fn channel_bind_installs_the_permission() {
    // RFC 8656 §11.2: a successful ChannelBind installs or refreshes the permission for the
    // peer's IP, so a Send indication works without CreatePermission.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    h.channel_bind(&mut c, 0x4000, p1())
        .assert_ok(method::CHANNEL_BIND);
    assert_eq!(
        h.client_datagram(c.tuple, &send_indication(p1(), b"x"))
            .unwrap()
            .peer,
        p1()
    );
    let other = sa("203.0.113.5:9");
    assert_eq!(
        h.client_datagram(c.tuple, &send_indication(other, b"x"))
            .unwrap()
            .peer,
        other
    );
    assert!(h
        .client_datagram(c.tuple, &send_indication(p2(), b"x"))
        .is_none());
    let (_, bytes) = h.peer_datagram(relay, p1(), b"y").unwrap();
    assert_eq!(bytes, channel_data(0x4000, b"y", false));
    // The binding's permission expires after 300 s like any other.
    h.set_time(300);
    assert!(h
        .client_datagram(c.tuple, &send_indication(p1(), b"x"))
        .is_none());
}

// ================================================================================== dual allocation

/// `cfg()` with an IPv6 relay address too.
fn dual_cfg() -> EngineConfig {
    let mut c = cfg();
    c.relay_ip_v6 = Some(relay_v6());
    c
}

/// ADDITIONAL-ADDRESS-FAMILY IPv6: ask for a dual allocation (RFC 8656 §7.2, §18.11).
fn additional_v6(w: &mut Writer) {
    w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
}

/// A second IPv6 peer in the documentation range.
fn p7() -> SocketAddr {
    sa("[2001:db8::7]:7005")
}

impl Resp {
    /// Every XOR-RELAYED-ADDRESS, in wire order.
    fn relayed(&self) -> Vec<SocketAddr> {
        let m = self.msg();
        m.iter()
            .filter(|(t, _)| *t == attr::XOR_RELAYED_ADDRESS)
            .map(|(_, v)| decode_xor_addr(v, &m.transaction_id()).expect("XOR-RELAYED-ADDRESS"))
            .collect()
    }
    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12) as (family, code, reason).
    fn address_error(&self) -> Option<(u8, u16, String)> {
        let m = self.msg();
        let (f, code, why) = decode_address_error_code(m.get(attr::ADDRESS_ERROR_CODE)?)?;
        Some((f, code, why.to_owned()))
    }
}

impl Harness {
    /// A successful dual allocation: its IPv4 and IPv6 relays.
    #[track_caller]
    fn alloc_dual(&mut self, c: &mut Client) -> (Relay, Relay) {
        let r = self.allocate(c, &additional_v6);
        r.assert_ok(method::ALLOCATE);
        assert!(r.address_error().is_none(), "fully met: {r:?}");
        let a = self
            .engine
            .allocations()
            .find(|a| a.tuple == c.tuple)
            .expect("the allocation");
        let (v4, v6) = (a.relays[V4].unwrap(), a.relays[V6].unwrap());
        assert_eq!(r.relayed(), vec![v4.addr, v6.addr]);
        (v4, v6)
    }

    /// Refresh with REQUESTED-ADDRESS-FAMILY `family` (RFC 8656 §8.1).
    #[track_caller]
    fn refresh_family(&mut self, c: &mut Client, family: u8, lifetime: Option<u32>) -> Resp {
        self.transact(c, method::REFRESH, &|w| {
            w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[family, 0, 0, 0]);
            if let Some(l) = lifetime {
                w.u32(attr::LIFETIME, l);
            }
        })
    }

    /// A dual Allocate whose binds are answered by hand: `fail(addr)` decides which fail
    /// (retries included). Checks the answer waits for every bind; returns it.
    #[track_caller]
    fn alloc_dual_failing(&mut self, c: &mut Client, fail: impl Fn(SocketAddr) -> bool) -> Resp {
        self.login(c);
        self.hold_binds = true;
        let (tid, req) = c.build(method::ALLOCATE, &|w| {
            transport_udp(w);
            additional_v6(w);
        });
        assert!(self.send(c.tuple, &req).is_empty());
        assert!(
            self.send(c.tuple, &req).is_empty(),
            "retransmission while binding"
        );
        loop {
            let held = std::mem::take(&mut self.held);
            if held.is_empty() {
                break;
            }
            let mut answers = Vec::new();
            for (relay, addr) in held {
                assert!(answers.is_empty(), "answered before every bind settled");
                let result = if fail(addr) {
                    Err(ErrorKind::AddrInUse)
                } else {
                    Ok(addr)
                };
                self.engine.on_relay_bound(self.now, relay, result);
                while let Some(t) = self.engine.poll_transmit() {
                    answers.push(Resp(t.data));
                }
            }
            self.pump();
            if !answers.is_empty() {
                assert!(self.held.is_empty());
                assert_eq!(answers.len(), 1);
                let r = answers.pop().unwrap();
                assert_eq!(r.tid(), tid);
                self.hold_binds = false;
                return r;
            }
        }
        panic!("no answer to the dual Allocate");
    }
}

#[test]
fn dual_allocation_success() {
    // RFC 8656 §7.2 step 9: ADDITIONAL-ADDRESS-FAMILY IPv6 → one IPv4 and one IPv6 relayed
    // address, two XOR-RELAYED-ADDRESS attributes (IPv4 first), one relay socket per family
    // bound to that family's relay IP (and advertised with its external IP), DONT-FRAGMENT on
    // both. One allocation: one quota unit, one LIFETIME; two ports from the pool.
    let mut config = dual_cfg();
    config.external_ip_v6 = Some(ip("2001:db8::77"));
    let mut h = Harness::new(config);
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut c, &|w| {
        additional_v6(w);
        w.attr(attr::DONT_FRAGMENT, &[]);
    });
    r.assert_ok(method::ALLOCATE);
    c.assert_signed(&r);
    assert_eq!(h.binds.len(), 2);
    let (r4, b4, df4) = h.binds[0];
    let (r6, b6, df6) = h.binds[1];
    assert_ne!(r4, r6);
    assert_eq!((b4.ip(), b6.ip()), (relay_v4(), relay_v6()));
    assert!(df4 && df6);
    for p in [b4.port(), b6.port()] {
        assert!((MIN_PORT..=MAX_PORT).contains(&p));
    }
    assert_eq!(
        r.relayed(),
        vec![b4, SocketAddr::new(ip("2001:db8::77"), b6.port())]
    );
    assert_eq!(
        r.types(),
        vec![
            attr::XOR_RELAYED_ADDRESS,
            attr::XOR_RELAYED_ADDRESS,
            attr::LIFETIME,
            attr::XOR_MAPPED_ADDRESS,
            attr::MESSAGE_INTEGRITY,
            attr::FINGERPRINT
        ]
    );
    assert_eq!(r.u32(attr::LIFETIME), Some(600));
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(c.tuple.client));
    assert!(r.address_error().is_none());
    let a = h.engine.allocations().next().unwrap();
    assert_eq!(
        a.relays.map(|r| r.map(|r| (r.id, r.port))),
        [Some((r4, b4.port())), Some((r6, b6.port()))]
    );
    assert_eq!(h.engine.allocation_count(), 1);
    assert_eq!(h.shared.total_allocations(), 1);
    assert_eq!(h.shared.ports_in_use(), 2);
    assert_eq!(h.engine.poll_timeout(), Some(h.at(600)));
    // A second Allocate on the 5-tuple: 437, nothing bound.
    h.allocate(&mut c, &additional_v6)
        .assert_err(method::ALLOCATE, 437);
    assert_eq!(h.binds.len(), 2);
}

#[test]
fn dual_allocation_relays_each_family_through_its_own_relay() {
    // RFC 8656 §10.2 / §12.2: a peer of either family of the allocation is accepted (no 443);
    // §11.2 / §12.5: data to an IPv4 peer leaves from the IPv4 relay, to an IPv6 peer from the
    // IPv6 relay; §11.3 / §12.7: what peers send to either relay comes back on the 5-tuple.
    let mut h = Harness::new(dual_cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (v4, v6) = h.alloc_dual(&mut c);
    h.permit(&mut c, &[p1(), p6()])
        .assert_ok(method::CREATE_PERMISSION);

    // Send / Data indications.
    for (relay, peer) in [(v4.id, p1()), (v6.id, p6())] {
        let out = h
            .client_datagram(c.tuple, &send_indication(peer, b"out"))
            .expect("relayed");
        assert_eq!((out.relay, out.peer), (relay, peer));
        assert_eq!(out.payload, b"out");
        let (from, data) = h.data_indication(relay, peer, b"in", c.tuple);
        assert_eq!((from, data), (peer, b"in".to_vec()));
    }
    // No permission for p7 (IPv6) or p2 (IPv4): dropped both ways.
    assert!(h
        .client_datagram(c.tuple, &send_indication(p7(), b"x"))
        .is_none());
    assert!(h.peer_datagram(v6.id, p7(), b"x").is_none());
    assert!(h.peer_datagram(v4.id, p2(), b"x").is_none());

    // Channels: one number space for the allocation, each channel on its peer's relay.
    h.channel_bind(&mut c, 0x4000, p7())
        .assert_ok(method::CHANNEL_BIND);
    h.channel_bind(&mut c, 0x4001, p2())
        .assert_ok(method::CHANNEL_BIND);
    for (relay, number, peer) in [(v6.id, 0x4000, p7()), (v4.id, 0x4001, p2())] {
        let out = h
            .client_datagram(c.tuple, &channel_data(number, b"cd", false))
            .expect("relayed");
        assert_eq!(
            (out.relay, out.peer, out.payload.as_slice()),
            (relay, peer, &b"cd"[..])
        );
        let (t, bytes) = h.peer_datagram(relay, peer, b"back").unwrap();
        assert_eq!((t, bytes), (c.tuple, channel_data(number, b"back", false)));
    }
    // The other peer of the same family bound to a number already taken: 400.
    h.channel_bind(&mut c, 0x4000, p6())
        .assert_err(method::CHANNEL_BIND, 400);
}

#[test]
fn additional_address_family_checks() {
    // RFC 8656 §7.2 step 9: ADDITIONAL-ADDRESS-FAMILY IPv4 (or any value but IPv6) → 400;
    // step 8: with EVEN-PORT R = 1 → 400; step 6: with REQUESTED-ADDRESS-FAMILY → 400.
    let mut h = Harness::new(dual_cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let bad: [&dyn Fn(&mut Writer); 5] = [
        &|w| {
            w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[1, 0, 0, 0]);
        },
        &|w| {
            w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[3, 0, 0, 0]);
        },
        &|w| {
            w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[]);
        },
        &|w| {
            additional_v6(w);
            w.attr(attr::EVEN_PORT, &[0x80]);
        },
        &|w| {
            additional_v6(w);
            w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0]);
        },
    ];
    for body in bad {
        let r = h.allocate(&mut c, body);
        r.assert_err(method::ALLOCATE, 400);
        c.assert_signed(&r);
    }
    assert!(h.binds.is_empty());
    assert_eq!(h.shared.total_allocations(), 0);
}

#[test]
fn dual_allocation_even_port_applies_to_ipv4() {
    // RFC 8656 §7.2 does not say which relayed address of a dual allocation EVEN-PORT (R = 0)
    // is for; ferroturn makes the IPv4 one even.
    let mut h = Harness::new(dual_cfg());
    for i in 0..8 {
        let mut c = Client::new(
            udp(&format!("198.51.100.20:{}", 40000 + i)),
            "alice",
            "alice-pw",
        );
        let r = h.allocate(&mut c, &|w| {
            additional_v6(w);
            w.attr(attr::EVEN_PORT, &[0x00]);
        });
        r.assert_ok(method::ALLOCATE);
        let relayed = r.relayed();
        assert_eq!(relayed.len(), 2);
        assert_eq!(relayed[0].port() % 2, 0, "{relayed:?}");
        assert!(r.get(attr::RESERVATION_TOKEN).is_none());
    }
    assert_eq!(h.shared.ports_in_use(), 16);
}

#[test]
fn dual_allocation_without_ipv6_relay_gets_ipv4_and_address_error_code_440() {
    // RFC 8656 §7.2 step 9: a dual Allocate the server can only partly meet succeeds with the
    // family it has and ADDRESS-ERROR-CODE (§18.12) 440 for the other.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut c, &additional_v6);
    r.assert_ok(method::ALLOCATE);
    c.assert_signed(&r);
    assert_eq!(h.binds.len(), 1);
    assert_eq!(h.binds[0].1.ip(), relay_v4());
    assert_eq!(r.relayed(), vec![h.binds[0].1]);
    assert_eq!(
        r.address_error(),
        Some((2, 440, "Address Family not Supported".to_owned()))
    );
    assert_eq!(
        r.types(),
        vec![
            attr::XOR_RELAYED_ADDRESS,
            attr::LIFETIME,
            attr::XOR_MAPPED_ADDRESS,
            attr::ADDRESS_ERROR_CODE,
            attr::MESSAGE_INTEGRITY,
            attr::FINGERPRINT
        ]
    );
    assert_eq!(h.shared.ports_in_use(), 1);
    // An IPv4 allocation: IPv6 peers → 443, Refresh of IPv6 → 443.
    h.permit(&mut c, &[p6()])
        .assert_err(method::CREATE_PERMISSION, 443);
    h.refresh_family(&mut c, 2, None)
        .assert_err(method::REFRESH, 443);
    h.refresh_family(&mut c, 1, None).assert_ok(method::REFRESH);
}

#[test]
fn dual_allocation_without_ipv4_relay_gets_440() {
    // RFC 8656 §7.2 step 7 comes before step 9: with REQUESTED-ADDRESS-FAMILY absent (as it is
    // in a dual Allocate) and no IPv4 support → 440. An explicit IPv6 Allocate still works.
    let mut config = dual_cfg();
    config.relay_ip_v4 = None;
    let mut h = Harness::new(config);
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut c, &additional_v6);
    r.assert_err(method::ALLOCATE, 440);
    c.assert_signed(&r);
    assert!(h.binds.is_empty());
    assert_eq!(h.shared.total_allocations(), 0);
    let (_, relayed) = h.alloc_ok_with(&mut c, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(relayed.ip(), relay_v6());
}

#[test]
fn dual_allocation_partial_when_ports_run_out() {
    // RFC 8656 §7.2 step 9: no port for the IPv6 relay → IPv4 only, ADDRESS-ERROR-CODE 508
    // for IPv6; no port at all → 508.
    let mut config = dual_cfg();
    config.max_port = MIN_PORT;
    let mut h = Harness::new(config);
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut c, &additional_v6);
    r.assert_ok(method::ALLOCATE);
    assert_eq!(r.relayed(), vec![SocketAddr::new(relay_v4(), MIN_PORT)]);
    assert_eq!(
        r.address_error(),
        Some((2, 508, "Insufficient Capacity".to_owned()))
    );
    let mut d = Client::new(udp("198.51.100.20:40001"), "alice", "alice-pw");
    h.allocate(&mut d, &additional_v6)
        .assert_err(method::ALLOCATE, 508);
    assert_eq!(h.binds.len(), 1);
    assert_eq!(h.shared.total_allocations(), 1);
}

#[test]
fn dual_allocation_answers_once_both_binds_settle() {
    // The Allocate is answered when both relay sockets are bound or given up on. A family
    // whose bind keeps failing (after the retries on other ports every allocation gets) is
    // reported with ADDRESS-ERROR-CODE 508 (RFC 8656 §7.2 step 9); both failing → 508.
    for (fail_v4, fail_v6) in [(false, false), (false, true), (true, false), (true, true)] {
        let mut h = Harness::new(dual_cfg());
        let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
        let r = h.alloc_dual_failing(&mut c, |a| if a.is_ipv4() { fail_v4 } else { fail_v6 });
        let attempts = |v4: bool| h.binds.iter().filter(|(_, a, _)| a.is_ipv4() == v4).count();
        let want = |fail: bool| if fail { MAX_BIND_ATTEMPTS as usize } else { 1 };
        assert_eq!(
            (attempts(true), attempts(false)),
            (want(fail_v4), want(fail_v6))
        );
        if fail_v4 && fail_v6 {
            r.assert_err(method::ALLOCATE, 508);
            assert_eq!(h.engine.allocation_count(), 0);
            assert_eq!(h.shared.total_allocations(), 0);
            assert_eq!(h.shared.ports_in_use(), 0);
            continue;
        }
        r.assert_ok(method::ALLOCATE);
        c.assert_signed(&r);
        let families: Vec<bool> = r.relayed().iter().map(|a| a.is_ipv4()).collect();
        let failed = match (fail_v4, fail_v6) {
            (false, false) => None,
            (false, true) => Some(2),
            _ => Some(1),
        };
        assert_eq!(
            r.address_error().map(|(f, code, _)| (f, code)),
            failed.map(|f| (f, 508))
        );
        let want_families: Vec<bool> = [(true, !fail_v4), (false, !fail_v6)]
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(v4, _)| *v4)
            .collect();
        assert_eq!(families, want_families);
        assert_eq!(h.shared.ports_in_use(), want_families.len());
        assert_eq!(h.shared.total_allocations(), 1);
        // The allocation holds exactly the relays that were bound, each Active for it.
        let a = h.engine.allocations().next().unwrap();
        let ids: Vec<RelayId> = a.relays.iter().flatten().map(|r| r.id).collect();
        assert_eq!(ids.len(), want_families.len());
        let (tuple, relayed) = (a.tuple, r.relayed());
        for (id, addr) in ids.into_iter().zip(relayed) {
            let peer = if addr.is_ipv4() { p1() } else { p6() };
            h.permit(&mut c, &[peer])
                .assert_ok(method::CREATE_PERMISSION);
            let (to, _) = h.peer_datagram(id, peer, b"x").expect("relay is live");
            assert_eq!(to, tuple);
        }
    }
}

#[test]
fn dual_allocation_deletion_closes_both_relays() {
    // RFC 8656 §8.2: Refresh LIFETIME 0 without REQUESTED-ADDRESS-FAMILY deletes the whole
    // allocation: both relay sockets closed, both ports and the quota unit given back. The
    // same on expiry and when a TCP client's connection closes.
    let mut h = Harness::new(dual_cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (v4, v6) = h.alloc_dual(&mut c);
    h.permit(&mut c, &[p1(), p6()])
        .assert_ok(method::CREATE_PERMISSION);
    let r = h.refresh(&mut c, Some(0));
    r.assert_ok(method::REFRESH);
    assert_eq!(r.u32(attr::LIFETIME), Some(0));
    assert_eq!(h.closes, vec![v4.id, v6.id]);
    assert_eq!(h.engine.allocation_count(), 0);
    assert_eq!(h.shared.ports_in_use(), 0);
    assert_eq!(h.shared.total_allocations(), 0);
    assert_eq!(h.engine.stats.allocations_deleted, 1);
    assert!(h.peer_datagram(v4.id, p1(), b"late").is_none());
    assert!(h.peer_datagram(v6.id, p6(), b"late").is_none());

    // Expiry.
    h.closes.clear();
    let mut d = Client::new(udp("198.51.100.20:40001"), "alice", "alice-pw");
    let (v4, v6) = h.alloc_dual(&mut d);
    h.set_time(599);
    assert!(h.closes.is_empty());
    h.set_time(600);
    assert_eq!(h.closes, vec![v4.id, v6.id]);
    assert_eq!(h.shared.ports_in_use(), 0);
    assert_eq!(h.engine.poll_timeout(), None);

    // TCP connection gone.
    h.closes.clear();
    let mut e = Client::new(
        tuple("198.51.100.20:40002", Transport::Tcp),
        "alice",
        "alice-pw",
    );
    let (v4, v6) = h.alloc_dual(&mut e);
    h.engine.on_client_closed(h.now, e.tuple);
    h.pump();
    assert_eq!(h.closes, vec![v4.id, v6.id]);
    assert_eq!(h.shared.ports_in_use(), 0);
    assert_eq!(h.shared.total_allocations(), 0);
}

#[test]
fn dual_allocation_refresh_zero_of_one_family_deletes_only_that_family() {
    // RFC 8656 §8.1: a Refresh with REQUESTED-ADDRESS-FAMILY and LIFETIME 0 deletes that
    // family's relayed address and "destroys any permissions or channels associated with" it;
    // those of the other family are untouched. §8.2: REQUESTED-ADDRESS-FAMILY of a family the
    // allocation (no longer) has → 443. Deleting the last family deletes the allocation.
    let mut h = Harness::new(dual_cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (v4, v6) = h.alloc_dual(&mut c);
    h.permit(&mut c, &[p1(), p6()])
        .assert_ok(method::CREATE_PERMISSION);
    h.channel_bind(&mut c, 0x4000, p6())
        .assert_ok(method::CHANNEL_BIND);
    h.channel_bind(&mut c, 0x4001, p1())
        .assert_ok(method::CHANNEL_BIND);

    let r = h.refresh_family(&mut c, 2, Some(0));
    r.assert_ok(method::REFRESH);
    c.assert_signed(&r);
    assert_eq!(r.u32(attr::LIFETIME), Some(0));
    assert_eq!(h.closes, vec![v6.id]);
    assert_eq!(h.engine.allocation_count(), 1);
    assert_eq!(h.shared.ports_in_use(), 1);
    assert_eq!(h.shared.total_allocations(), 1);
    // IPv6: gone both ways.
    assert!(h.peer_datagram(v6.id, p6(), b"x").is_none());
    assert!(h
        .client_datagram(c.tuple, &send_indication(p6(), b"x"))
        .is_none());
    assert!(h
        .client_datagram(c.tuple, &channel_data(0x4000, b"x", false))
        .is_none());
    h.permit(&mut c, &[p6()])
        .assert_err(method::CREATE_PERMISSION, 443);
    h.channel_bind(&mut c, 0x4002, p6())
        .assert_err(method::CHANNEL_BIND, 443);
    h.refresh_family(&mut c, 2, None)
        .assert_err(method::REFRESH, 443);
    let a = h.engine.allocations().next().unwrap();
    assert!(a.relays[V6].is_none());
    assert_eq!(a.permissions.len(), 1);
    assert_eq!(a.permissions[0].ip, p1().ip());
    assert_eq!(a.channels.len(), 1);
    assert_eq!((a.channels[0].number, a.channels[0].peer), (0x4001, p1()));
    // IPv4: permission and channel still there.
    let out = h
        .client_datagram(c.tuple, &channel_data(0x4001, b"v4", false))
        .unwrap();
    assert_eq!((out.relay, out.peer), (v4.id, p1()));
    let (_, bytes) = h.peer_datagram(v4.id, p1(), b"v4").unwrap();
    assert_eq!(bytes, channel_data(0x4001, b"v4", false));
    // The destroyed channel's number is free again (deleted, not expired: no cool-down).
    h.channel_bind(&mut c, 0x4000, p2())
        .assert_ok(method::CHANNEL_BIND);

    // The last family: the allocation goes.
    let r = h.refresh_family(&mut c, 1, Some(0));
    r.assert_ok(method::REFRESH);
    assert_eq!(h.closes, vec![v6.id, v4.id]);
    assert_eq!(h.engine.allocation_count(), 0);
    assert_eq!(h.shared.ports_in_use(), 0);
    assert_eq!(h.shared.total_allocations(), 0);
    assert_eq!(h.engine.stats.allocations_deleted, 1);
    h.refresh(&mut c, None).assert_err(method::REFRESH, 437);
}

#[test]
fn dual_allocation_families_have_their_own_lifetime() {
    // RFC 8656 §8.1: "When refreshing a dual allocation, the client includes a
    // REQUESTED-ADDRESS-FAMILY attribute indicating the address family type that should be
    // refreshed"; without it the Refresh is for both. Each relayed address expires on its own.
    let mut h = Harness::new(dual_cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (v4, v6) = h.alloc_dual(&mut c);
    h.permit(&mut c, &[p1(), p6()])
        .assert_ok(method::CREATE_PERMISSION);
    h.set_time(100);
    let r = h.refresh_family(&mut c, 2, Some(1200));
    r.assert_ok(method::REFRESH);
    assert_eq!(r.u32(attr::LIFETIME), Some(1200));
    h.set_time(599);
    assert!(h.closes.is_empty());
    // The IPv4 relayed address was not refreshed: it expires at 600, the IPv6 one lives on.
    h.set_time(600);
    assert_eq!(h.closes, vec![v4.id]);
    assert_eq!(h.engine.allocation_count(), 1);
    assert_eq!(h.shared.ports_in_use(), 1);
    assert!(h
        .client_datagram(c.tuple, &send_indication(p1(), b"x"))
        .is_none());
    assert!(h.peer_datagram(v4.id, p1(), b"x").is_none());
    h.permit(&mut c, &[p6()])
        .assert_ok(method::CREATE_PERMISSION);
    let (peer, _) = h.data_indication(v6.id, p6(), b"alive", c.tuple);
    assert_eq!(peer, p6());
    h.refresh_family(&mut c, 1, None)
        .assert_err(method::REFRESH, 443);
    // Without REQUESTED-ADDRESS-FAMILY: every relayed address the allocation still has.
    h.set_time(800);
    h.refresh(&mut c, None).assert_ok(method::REFRESH);
    h.set_time(1300);
    assert_eq!(h.engine.allocation_count(), 1);
    h.set_time(1400);
    assert_eq!(h.closes, vec![v4.id, v6.id]);
    assert_eq!(h.engine.allocation_count(), 0);
    assert_eq!(h.shared.ports_in_use(), 0);
    assert_eq!(h.shared.total_allocations(), 0);
}

// ================================================================================== codec limits

#[test]
fn attribute_past_offset_65535_over_tcp() {
    // RFC 8489 §5: a STUN message may be up to 20 + 65532 bytes on a stream transport; an
    // attribute whose value starts past offset 65535 must still be read correctly.
    let mut h = Harness::new(cfg());
    let t = tuple("198.51.100.20:40000", Transport::Tcp);
    let mut c = Client::new(t, "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut c);
    h.permit(&mut c, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    let payload = vec![0x5au8; 65508];
    let mut ind = Vec::new();
    Writer::new(&mut ind, method::SEND, Class::Indication, &new_tid())
        .attr(attr::DATA, &payload)
        .xor_addr(attr::XOR_PEER_ADDRESS, p1());
    assert_eq!(ind.len(), 20 + 4 + 65508 + 12);
    let out = h.client_datagram(t, &ind).expect("relayed");
    assert_eq!((out.relay, out.peer), (relay, p1()));
    assert_eq!(out.payload.len(), 65508);
}

// ================================================================================== robustness

/// xorshift64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())].clone()
    }
}

/// Damage a message: bit flips, byte overwrites, truncation, extension, bogus length fields;
/// half of the time the STUN header length is then repaired so parsing gets further.
fn mutate(rng: &mut Rng, msg: &[u8]) -> Vec<u8> {
    let mut m = msg.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] = rng.next_u64() as u8;
            }
            2 => {
                let n = rng.below(m.len() + 1);
                m.truncate(n);
            }
            3 => {
                let n = rng.below(24);
                m.extend(rng.bytes(n));
            }
            4 if m.len() >= 4 => {
                let any = rng.next_u64() as u16;
                let l = rng.pick(&[0u16, 4, 8, 0xfffc, any]);
                m[2..4].copy_from_slice(&l.to_be_bytes());
            }
            5 if m.len() >= 24 => {
                // An attribute length field somewhere in the body.
                let off = 20 + 4 * rng.below((m.len() - 20) / 4);
                if off + 4 <= m.len() {
                    let any = rng.next_u64() as u16;
                    let l = rng.pick(&[0u16, 1, 3, 4, 8, 20, 32, 0xffff, any]);
                    m[off + 2..off + 4].copy_from_slice(&l.to_be_bytes());
                }
            }
            6 if m.len() > 20 => {
                // An attribute type somewhere in the body.
                let off = 20 + 4 * rng.below((m.len() - 20) / 4);
                if off + 2 <= m.len() {
                    let t = rng.next_u64() as u16;
                    m[off..off + 2].copy_from_slice(&t.to_be_bytes());
                }
            }
            _ => {}
        }
    }
    if m.len() >= 20 && rng.one_in(2) {
        m.truncate(m.len() / 4 * 4);
        let l = (m.len() - 20) as u16;
        m[2..4].copy_from_slice(&l.to_be_bytes());
    }
    m
}

/// A random attribute for a signed request: sensible values half of the time.
fn random_attr(
    rng: &mut Rng,
    tokens: &[Vec<u8>],
    peers: &[SocketAddr],
) -> (u16, Option<SocketAddr>, Vec<u8>) {
    let types = [
        attr::REQUESTED_TRANSPORT,
        attr::LIFETIME,
        attr::XOR_PEER_ADDRESS,
        attr::CHANNEL_NUMBER,
        attr::EVEN_PORT,
        attr::RESERVATION_TOKEN,
        attr::REQUESTED_ADDRESS_FAMILY,
        attr::ADDITIONAL_ADDRESS_FAMILY,
        attr::DONT_FRAGMENT,
        attr::DATA,
        attr::SOFTWARE,
        rng.next_u64() as u16,
    ];
    let ty = rng.pick(&types);
    if rng.one_in(2) {
        let n = rng.below(24);
        return (ty, None, rng.bytes(n));
    }
    let value = match ty {
        attr::REQUESTED_TRANSPORT => vec![rng.pick(&[17u8, 6, 0]), 0, 0, 0],
        attr::LIFETIME => rng
            .pick(&[0u32, 1, 600, 1200, 3600, 99999, u32::MAX])
            .to_be_bytes()
            .to_vec(),
        attr::XOR_PEER_ADDRESS => return (ty, Some(rng.pick(peers)), Vec::new()),
        attr::CHANNEL_NUMBER => vec![
            rng.pick(&[0x40u8, 0x4f, 0x3f, 0x50]),
            rng.below(4) as u8,
            0,
            0,
        ],
        attr::EVEN_PORT => vec![rng.pick(&[0x80u8, 0])],
        attr::RESERVATION_TOKEN if !tokens.is_empty() => rng.pick(tokens),
        attr::REQUESTED_ADDRESS_FAMILY | attr::ADDITIONAL_ADDRESS_FAMILY => {
            vec![rng.pick(&[1u8, 2, 3]), 0, 0, 0]
        }
        attr::DONT_FRAGMENT => Vec::new(),
        _ => {
            let n = rng.below(40);
            rng.bytes(n)
        }
    };
    (ty, None, value)
}

/// Everything the engine queued for clients must be a well-formed STUN response.
fn drain_and_check(
    h: &mut Harness,
    from: FiveTuple,
    clients: &mut [Client],
    tokens: &mut Vec<Vec<u8>>,
) {
    h.pump();
    while let Some(tx) = h.engine.poll_transmit() {
        assert_eq!(tx.tuple, from);
        let r = Resp(tx.data);
        let class = r.class();
        assert!(matches!(class, Class::Success | Class::Error), "{r:?}");
        if let Some(t) = r.get(attr::RESERVATION_TOKEN) {
            tokens.push(t);
        }
        if matches!(r.code(), Some(401 | 438)) {
            if let Some(c) = clients.iter_mut().find(|c| c.tuple == tx.tuple) {
                if r.get(attr::NONCE).is_some() {
                    c.learn(&r);
                }
            }
        }
    }
}

#[test]
fn fuzzed_datagrams_do_not_break_the_engine() {
    let mut config = cfg();
    config.relay_ip_v6 = Some(relay_v6());
    config.auth_secrets = vec!["s3cret".to_owned()];
    config.min_port = MIN_PORT;
    config.max_port = MIN_PORT + 63;
    let mut h = Harness::new(config);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // Legitimate state to aim at: allocations, permissions, channels, cached answers.
    let mut clients: Vec<Client> = (0..4)
        .map(|i| {
            let t = if i == 3 {
                tuple("198.51.100.50:45000", Transport::Tcp)
            } else {
                udp(&format!("198.51.100.{}:{}", 40 + i, 41000 + i))
            };
            let (user, pass) = if i % 2 == 0 {
                ("alice", "alice-pw")
            } else {
                ("bob", "bob-pw")
            };
            let mut c = Client::new(t, user, pass);
            if i == 2 {
                c.integrity = IntegrityKind::Sha256;
                c.algorithm = Some(password_algorithm::SHA256);
            }
            c
        })
        .collect();
    let peers = [
        p1(),
        p2(),
        p3(),
        p6(),
        sa("10.0.0.1:1"),
        sa("127.0.0.1:1"),
        server_v4(),
    ];
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for c in clients.iter_mut() {
        let (relay, _) = h.alloc_ok(c);
        h.permit(c, &[p1(), p2()])
            .assert_ok(method::CREATE_PERMISSION);
        h.channel_bind(c, 0x4000, p1())
            .assert_ok(method::CHANNEL_BIND);
        for m in [
            method::REFRESH,
            method::CREATE_PERMISSION,
            method::CHANNEL_BIND,
            method::ALLOCATE,
        ] {
            let (_, req) = c.build(m, &|w| {
                w.attr(attr::REQUESTED_TRANSPORT, &UDP)
                    .u32(attr::LIFETIME, 600)
                    .attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0])
                    .xor_addr(attr::XOR_PEER_ADDRESS, p2());
            });
            corpus.push(req);
        }
        let (_, dual) = c.build(method::ALLOCATE, &|w| {
            transport_udp(w);
            additional_v6(w);
        });
        corpus.push(dual);
        assert!(h.peer_datagram(relay, p1(), b"warm").is_some());
    }
    corpus.push(send_indication(p1(), b"payload"));
    corpus.push(send_indication(p6(), b"payload"));
    corpus.push(channel_data(0x4000, b"payload", true));
    let mut binding = Vec::new();
    Writer::new(&mut binding, method::BINDING, Class::Request, &new_tid())
        .attr(attr::SOFTWARE, b"x")
        .fingerprint();
    corpus.push(binding);

    let strangers = [
        udp("198.51.100.200:1"),
        udp("[2001:db8::99]:2"),
        tuple("198.51.100.201:3", Transport::Tls),
    ];
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let mut elapsed = 0u64;
    let methods = [
        method::BINDING,
        method::ALLOCATE,
        method::REFRESH,
        method::CREATE_PERMISSION,
        method::CHANNEL_BIND,
        method::CONNECT,
        method::CONNECTION_BIND,
        method::SEND,
        method::DATA,
        0x0ff,
    ];

    for _ in 0..20_000 {
        let ci = rng.below(clients.len());
        let mut from = if rng.one_in(5) {
            rng.pick(&strangers)
        } else {
            clients[ci].tuple
        };
        match rng.below(40) {
            0..=3 => {
                // Raw noise, biased towards the STUN and ChannelData first bytes.
                let n = rng.below(120);
                let mut d = rng.bytes(n);
                if !d.is_empty() && rng.one_in(2) {
                    d[0] = rng.pick(&[0x00, 0x01, 0x40, 0x4f]);
                }
                if d.len() >= 8 && rng.one_in(2) {
                    d[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
                }
                let _ = h.engine.handle_client(h.now, from, &d);
            }
            4..=13 => {
                let base = rng.pick(&corpus);
                let d = mutate(&mut rng, &base);
                let _ = h.engine.handle_client(h.now, from, &d);
            }
            14..=19 => {
                // A well-signed request with random attributes.
                let m = rng.pick(&methods);
                let attrs: Vec<_> = (0..rng.below(6))
                    .map(|_| random_attr(&mut rng, &tokens, &peers))
                    .collect();
                let (_, req) = clients[ci].build(m, &|w| {
                    for (ty, peer, value) in &attrs {
                        match peer {
                            Some(p) => w.xor_addr(*ty, *p),
                            None => w.attr(*ty, value),
                        };
                    }
                });
                from = clients[ci].tuple;
                let _ = h.engine.handle_client(h.now, from, &req);
            }
            20..=25 => {
                // A valid operation, so that allocations, permissions and channels keep coming
                // back after expiry and the fuzzed traffic has live state to hit.
                let peer = rng.pick(&[p1(), p2(), p3(), p6()]);
                let number = 0x4000 + rng.below(4) as u16;
                let token = match tokens.is_empty() || !rng.one_in(3) {
                    true => None,
                    false => Some(rng.pick(&tokens)),
                };
                let even = rng.one_in(4);
                let v6 = rng.one_in(4);
                let dual = rng.one_in(2);
                let family = rng.pick(&[0u8, 0, 1, 2]);
                let lifetime = rng.pick(&[0u32, 600, 1200, 3600]);
                let m = rng.pick(&[
                    method::ALLOCATE,
                    method::ALLOCATE,
                    method::REFRESH,
                    method::CREATE_PERMISSION,
                    method::CHANNEL_BIND,
                ]);
                let (_, req) = clients[ci].build(m, &|w| match m {
                    method::ALLOCATE => {
                        w.attr(attr::REQUESTED_TRANSPORT, &UDP);
                        if let Some(t) = &token {
                            w.attr(attr::RESERVATION_TOKEN, t);
                        } else if even {
                            w.attr(attr::EVEN_PORT, &[0x80]);
                        } else if v6 {
                            w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
                        } else if dual {
                            additional_v6(w);
                        }
                    }
                    method::REFRESH => {
                        w.u32(attr::LIFETIME, lifetime);
                        if family != 0 {
                            w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[family, 0, 0, 0]);
                        }
                    }
                    method::CREATE_PERMISSION => {
                        w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
                    }
                    _ => {
                        w.attr(
                            attr::CHANNEL_NUMBER,
                            &[(number >> 8) as u8, number as u8, 0, 0],
                        )
                        .xor_addr(attr::XOR_PEER_ADDRESS, peer);
                    }
                });
                from = clients[ci].tuple;
                let _ = h.engine.handle_client(h.now, from, &req);
            }
            26 | 27 => {
                // ChannelData with random numbers and length fields.
                let n = rng.below(64);
                let mut d =
                    channel_data(0x4000 + rng.below(3) as u16, &rng.bytes(n), rng.one_in(2));
                if rng.one_in(3) {
                    let l = rng.next_u64() as u16;
                    d[2..4].copy_from_slice(&l.to_be_bytes());
                }
                if rng.one_in(4) {
                    let n = rng.below(d.len() + 1);
                    d.truncate(n);
                }
                let _ = h.engine.handle_client(h.now, from, &d);
            }
            28 | 29 => {
                // Send indications, well-formed but to random peers.
                let n = rng.below(64);
                let d = send_indication(rng.pick(&peers), &rng.bytes(n));
                if let ClientAction::ToPeer { payload, .. } =
                    h.engine.handle_client(h.now, from, &d)
                {
                    assert_eq!(payload.len(), n);
                }
            }
            30..=38 => {
                // Peer datagrams on random relays, with exact or extra headroom.
                let live: Vec<RelayId> = h
                    .engine
                    .allocations()
                    .flat_map(|a| a.relays.iter().flatten().map(|r| r.id))
                    .collect();
                let relay = if !live.is_empty() && !rng.one_in(4) {
                    rng.pick(&live)
                } else {
                    rng.below(12) as RelayId
                };
                let peer = if rng.one_in(4) {
                    let octets = (rng.next_u64() as u32).to_be_bytes();
                    SocketAddr::new(IpAddr::from(octets), rng.next_u64() as u16)
                } else {
                    rng.pick(&peers)
                };
                let len = rng.below(300);
                let start = PEER_HEADROOM + rng.below(3) * 4;
                let mut buf = vec![0xcc; start + len + PEER_TAILROOM + rng.below(8)];
                let payload = rng.bytes(len);
                buf[start..start + len].copy_from_slice(&payload);
                if let Some((t, range)) = h
                    .engine
                    .handle_peer(h.now, relay, peer, &mut buf, start, len)
                {
                    assert!(range.end <= buf.len());
                    let out = &buf[range];
                    if (0x40..=0x4f).contains(&out[0]) {
                        assert_eq!(&out[4..4 + len], &payload[..]);
                        if t.transport == Transport::Udp {
                            assert_eq!(out.len(), 4 + len);
                        } else {
                            assert_eq!(out.len() % 4, 0);
                        }
                    } else {
                        let r = Resp(out.to_vec());
                        assert_eq!((r.method(), r.class()), (method::DATA, Class::Indication));
                        assert_eq!(r.get(attr::DATA).unwrap(), payload);
                        assert_eq!(r.xor(attr::XOR_PEER_ADDRESS), Some(peer));
                    }
                }
            }
            _ => {
                // Time jumps, timers, and now and then failing binds.
                let jump = rng.pick(&[1u64, 5, 10, 29, 31, 60, 120, 301, 601]);
                elapsed += jump;
                h.set_time(elapsed);
                if rng.one_in(4) {
                    h.fail_binds = 1 + rng.below(3);
                }
            }
        }
        drain_and_check(&mut h, from, &mut clients, &mut tokens);
        // Quota accounting stays in step with the allocations (no pending binds: all answered).
        assert_eq!(
            h.shared.total_allocations() as usize,
            h.engine.allocation_count()
        );
        // Every relayed address holds a port (reservations hold more).
        let relays: usize = h
            .engine
            .allocations()
            .map(|a| a.relays.iter().flatten().count())
            .sum();
        assert!(h.shared.ports_in_use() >= relays);
    }

    // Afterwards: everything can be torn down, nothing leaks, and a normal client works.
    h.fail_binds = 0;
    h.engine.close_all(h.now);
    h.pump();
    assert_eq!(h.engine.allocation_count(), 0);
    assert_eq!(h.shared.total_allocations(), 0);
    h.set_time(elapsed + 31); // outstanding reservations lapse
    let mut fresh = Client::new(udp("198.51.100.77:50000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut fresh);
    assert_eq!(h.shared.ports_in_use(), 1);
    h.permit(&mut fresh, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    let out = h
        .client_datagram(fresh.tuple, &send_indication(p1(), b"still works"))
        .unwrap();
    assert_eq!(
        (out.relay, out.peer, out.payload.as_slice()),
        (relay, p1(), &b"still works"[..])
    );
    let (peer, data) = h.data_indication(relay, p1(), b"reply", fresh.tuple);
    assert_eq!((peer, data), (p1(), b"reply".to_vec()));
    h.channel_bind(&mut fresh, 0x4000, p2())
        .assert_ok(method::CHANNEL_BIND);
    assert_eq!(
        h.client_datagram(fresh.tuple, &channel_data(0x4000, b"c", false))
            .unwrap()
            .peer,
        p2()
    );
    let (_, bytes) = h.peer_datagram(relay, p2(), b"d").unwrap();
    assert_eq!(bytes, channel_data(0x4000, b"d", false));
}

#[test]
fn dual_allocation_with_draft_code_point() {
    // coturn's turnutils_uclient -Z sends ADDITIONAL-ADDRESS-FAMILY under the pre-RFC 8656
    // code point 0x8032; it is accepted as an alias and gives the same dual allocation.
    let mut h = Harness::new(dual_cfg());
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut c, &|w| {
        w.attr(attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT, &[2, 0, 0, 0]);
    });
    r.assert_ok(method::ALLOCATE);
    assert_eq!(h.binds.len(), 2);
    let relayed = r.relayed();
    assert_eq!(relayed.len(), 2);
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6());
}

#[test]
fn tcp_allocation_rules() {
    // RFC 6062 §5.1: REQUESTED-TRANSPORT TCP needs a TCP/TLS client leg and excludes
    // DONT-FRAGMENT, EVEN-PORT and RESERVATION-TOKEN; over TCP it binds a TCP listener.
    let mut h = Harness::new(cfg());
    let tcp_tuple = FiveTuple {
        transport: Transport::Tcp,
        ..udp("198.51.100.20:40000")
    };
    let mut c = Client::new(tcp_tuple, "alice", "alice-pw");
    let r = h.transact(&mut c, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
        w.attr(attr::EVEN_PORT, &[0]);
    });
    r.assert_err(method::ALLOCATE, 400);
    let r = h.transact(&mut c, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    r.assert_ok(method::ALLOCATE);
    // ChannelBind and Send do not apply to a TCP allocation.
    let peer: SocketAddr = "203.0.113.5:5000".parse().unwrap();
    h.transact(&mut c, method::CHANNEL_BIND, &|w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0])
            .xor_addr(attr::XOR_PEER_ADDRESS, peer);
    })
    .assert_err(method::CHANNEL_BIND, 400);
}

fn tcp_tuple(client: &str) -> FiveTuple {
    FiveTuple {
        transport: Transport::Tcp,
        ..udp(client)
    }
}

/// A client with a TCP allocation (RFC 6062 §5.1); returns its relay id.
fn tcp_allocation(h: &mut Harness, c: &mut Client) -> RelayId {
    h.transact(c, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    })
    .assert_ok(method::ALLOCATE);
    h.last_bound.expect("a TCP relay was bound").0
}

#[test]
fn tcp_connect_result_and_timeout() {
    // RFC 6062 §5.2: Connect is answered when the runtime reports the handshake: success with
    // CONNECTION-ID; failure, or no result within 30 s → 447.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(tcp_tuple("198.51.100.20:40000"), "alice", "alice-pw");
    tcp_allocation(&mut h, &mut c);
    let peer: SocketAddr = "203.0.113.5:80".parse().unwrap();
    let connect = |h: &mut Harness, c: &mut Client, p: SocketAddr| {
        let (_, req) = c.build(method::CONNECT, &|w| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, p);
        });
        assert!(
            h.send(c.tuple, &req).is_empty(),
            "answered only when connected"
        );
        match h.peer_cmds.pop() {
            Some(RelayCommand::Connect { conn_id, peer, .. }) => {
                assert_eq!(peer, p);
                conn_id
            }
            other => panic!("expected a Connect command, got {other:?}"),
        }
    };
    // Success.
    let id = connect(&mut h, &mut c, peer);
    h.engine.on_tcp_connected(h.now, id, Ok(()));
    let r = Resp(h.engine.poll_transmit().unwrap().data);
    r.assert_ok(method::CONNECT);
    assert_eq!(r.u32(attr::CONNECTION_ID), Some(id));
    // A second Connect to that peer → 446.
    h.transact(&mut c, method::CONNECT, &|w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
    })
    .assert_err(method::CONNECT, 446);
    // Refused → 447.
    let id2 = connect(&mut h, &mut c, "203.0.113.6:80".parse().unwrap());
    h.engine
        .on_tcp_connected(h.now, id2, Err(ErrorKind::ConnectionRefused));
    Resp(h.engine.poll_transmit().unwrap().data).assert_err(method::CONNECT, 447);
    // No answer in 30 s → 447, and the runtime is told to drop the attempt.
    let id3 = connect(&mut h, &mut c, "203.0.113.7:80".parse().unwrap());
    h.set_time(31);
    let mut answers = Vec::new();
    while let Some(t) = h.engine.poll_transmit() {
        answers.push(Resp(t.data));
    }
    assert_eq!(answers.len(), 1);
    answers[0].assert_err(method::CONNECT, 447);
    assert!(h
        .peer_cmds
        .iter()
        .any(|c| matches!(c, RelayCommand::DropPeer { conn_id } if *conn_id == id3)));
}

#[test]
fn tcp_connection_attempt_bind_and_expiry() {
    // RFC 6062 §5.3/§5.4: an incoming peer connection needs a permission; it is announced with
    // ConnectionAttempt and bound by ConnectionBind on another connection within 30 s.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(tcp_tuple("198.51.100.20:40000"), "alice", "alice-pw");
    let relay = tcp_allocation(&mut h, &mut c);
    let peer: SocketAddr = "203.0.113.5:3333".parse().unwrap();
    assert_eq!(
        h.engine.on_peer_tcp_accepted(h.now, relay, peer),
        None,
        "no permission"
    );
    h.transact(&mut c, method::CREATE_PERMISSION, &|w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
    })
    .assert_ok(method::CREATE_PERMISSION);
    let id = h
        .engine
        .on_peer_tcp_accepted(h.now, relay, peer)
        .expect("accepted");
    let t = h.engine.poll_transmit().expect("ConnectionAttempt");
    assert_eq!(t.tuple, c.tuple);
    let m = Message::parse(&t.data).unwrap();
    assert_eq!(
        (m.method, m.class),
        (method::CONNECTION_ATTEMPT, Class::Indication)
    );
    assert_eq!(
        m.get(attr::CONNECTION_ID)
            .and_then(crate::codec::stun::decode_u32),
        Some(id)
    );
    // ConnectionBind on the control connection itself → 400; on a new one → success + Splice.
    h.transact(&mut c, method::CONNECTION_BIND, &|w| {
        w.u32(attr::CONNECTION_ID, id);
    })
    .assert_err(method::CONNECTION_BIND, 400);
    let mut data = Client::new(tcp_tuple("198.51.100.20:40001"), "alice", "alice-pw");
    h.transact(&mut data, method::CONNECTION_BIND, &|w| {
        w.u32(attr::CONNECTION_ID, id);
    })
    .assert_ok(method::CONNECTION_BIND);
    assert!(matches!(
        h.peer_cmds.pop(),
        Some(RelayCommand::Splice { tuple, conn_id }) if tuple == data.tuple && conn_id == id
    ));
    // Another peer connection left unbound for 30 s is dropped; a late bind gets 400.
    let peer2: SocketAddr = "203.0.113.5:4444".parse().unwrap();
    let id2 = h.engine.on_peer_tcp_accepted(h.now, relay, peer2).unwrap();
    while h.engine.poll_transmit().is_some() {}
    h.set_time(31);
    assert!(h
        .peer_cmds
        .iter()
        .any(|c| matches!(c, RelayCommand::DropPeer { conn_id } if *conn_id == id2)));
    let mut late = Client::new(tcp_tuple("198.51.100.20:40002"), "alice", "alice-pw");
    h.transact(&mut late, method::CONNECTION_BIND, &|w| {
        w.u32(attr::CONNECTION_ID, id2);
    })
    .assert_err(method::CONNECTION_BIND, 400);
}

mod abuse;
/// Drain, kill, session records and operations counters.
mod ops_tests;
/// RFC 6062 connections closed with their allocation.
mod tcp_close;
