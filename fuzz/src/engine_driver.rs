//! A deterministic harness around one [`Engine`], shared by the `engine_step` fuzz target and the
//! engine property test (`tests/properties.rs` includes this file with `#[path]`).
//!
//! It plays the runtime: it answers every relay-socket command at once (bind, TCP listen, TCP
//! connect; success or failure as told), plays eight clients (four UDP, four TCP 5-tuples) and a
//! table of peers, and it can build VALID signed requests with the codec, so that a fuzzer gets
//! past authentication: the nonce comes from the engine's own 401/438 (a first unsigned request
//! if the client has none yet), exactly as a real client does.
//!
//! After every step it checks the invariants a TURN relay must keep whatever it is fed:
//! - no panic (the harness itself never panics on input, only on a broken invariant);
//! - the SSRF guard: every datagram the engine hands out for a peer (`ClientAction::ToPeer`) and
//!   every TCP `Connect` goes to an address the peer filter accepts, from a bound relay socket of
//!   the peer's address family;
//! - relay sockets are bound inside the port range, on the relay IP of their family;
//! - what `handle_peer` frames for the client is a ChannelData or Data indication carrying
//!   exactly the peer's payload; everything queued for clients is a well-formed STUN message;
//! - allocations never exceed the port range, the shared quota counter equals the allocation
//!   count, and at the end (everything expired, then `close_all`) no port or quota unit leaks.
#![allow(dead_code)] // the fuzz target and the property test use different entry points

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroturn::codec::channel_data;
use ferroturn::codec::long_term_key_md5;
use ferroturn::codec::stun::{
    attr, decode_error_code, decode_xor_addr, method, Class, IntegrityKind, Message, Writer,
};
use ferroturn::engine::peer_filter::{PeerFilter, PeerFilterConfig};
use ferroturn::engine::shared::Shared;
use ferroturn::engine::{
    ClientAction, Engine, EngineConfig, FiveTuple, RelayCommand, Transport, UserKey, PEER_HEADROOM,
    PEER_TAILROOM,
};

pub const USER: &str = "u";
pub const PASS: &str = "p";
pub const REALM: &str = "fuzz";
pub const MIN_PORT: u16 = 50000;
pub const MAX_PORT: u16 = 50015;
pub const UNIX_START: u64 = 1_700_000_000;
const RELAY_V4: &str = "192.0.2.1";
const RELAY_V6: &str = "2001:db8::1";
const LISTEN: &str = "192.0.2.1:3478";

/// Peers the harness can name (index & 15): reachable ones, and one of each kind of forbidden
/// form, so that the SSRF invariant is exercised.
pub const PEERS: [&str; 16] = [
    "203.0.113.1:5000",
    "203.0.113.2:6000",
    "[2001:db8::7]:5000",
    "192.0.2.1:50003", // own relay IP, inside the relay range: another allocation, allowed
    "192.0.2.1:3478",  // own listener
    "192.0.2.1:22",    // own IP, outside the relay range
    "127.0.0.1:5000",
    "10.0.0.1:5000",
    "[::ffff:127.0.0.1]:5000",
    "[64:ff9b::a9fe:a9fe]:80",
    "0.0.0.0:5000",
    "[::1]:5000",
    "169.254.169.254:80",
    "[fe80::1]:5000",
    "203.0.113.1:0",
    "[2001:db8::7]:0",
];

pub fn peer(i: u8) -> SocketAddr {
    PEERS[(i & 15) as usize].parse().expect("peer table")
}

/// Request methods a signed request can carry (index & 7); 7 is an (unsigned) Send indication.
pub const METHODS: [u16; 8] = [
    method::ALLOCATE,
    method::REFRESH,
    method::CREATE_PERMISSION,
    method::CHANNEL_BIND,
    method::CONNECT,
    method::CONNECTION_BIND,
    method::BINDING,
    method::SEND,
];

pub fn config() -> EngineConfig {
    let mut cfg = EngineConfig {
        realm: REALM.into(),
        relay_ip_v4: Some(RELAY_V4.parse().unwrap()),
        relay_ip_v6: Some(RELAY_V6.parse().unwrap()),
        min_port: MIN_PORT,
        max_port: MAX_PORT,
        auth_secrets: vec!["s".into()],
        // The secure default, as the runtime builds it for a server on 192.0.2.1:3478.
        peer_filter: PeerFilter::new(PeerFilterConfig {
            own_listeners: vec![LISTEN.parse().unwrap()],
            own_ips: vec![RELAY_V4.parse().unwrap(), RELAY_V6.parse().unwrap()],
            relay_ports: (MIN_PORT, MAX_PORT),
            ..Default::default()
        }),
        ..Default::default()
    };
    cfg.users
        .insert(USER.into(), UserKey::Password(PASS.into()));
    cfg
}

pub struct Driver {
    pub e: Engine,
    shared: Arc<Shared>,
    filter: PeerFilter,
    pub now: Instant,
    key: [u8; 16],
    /// (realm, nonce) per client tuple, from the last 401/438 it got.
    nonces: HashMap<FiveTuple, (Vec<u8>, Vec<u8>)>,
    /// Bound relay sockets: id → (local address, TCP).
    relays: HashMap<u32, (SocketAddr, bool)>,
    /// CONNECTION-IDs and RESERVATION-TOKENs seen in answers, for later requests to name.
    conn_ids: Vec<u32>,
    tokens: Vec<[u8; 8]>,
    tid: u32,
    /// Whether relay binds / TCP connects fail during the current step.
    pub fail: bool,
    buf: Vec<u8>,
}

impl Default for Driver {
    fn default() -> Self {
        Self::new()
    }
}

impl Driver {
    pub fn new() -> Self {
        let cfg = config();
        let filter = cfg.peer_filter.clone();
        let shared = Arc::new(Shared::new(MIN_PORT, MAX_PORT, [3; 32], 9));
        let now = Instant::now();
        let e = Engine::new(Arc::new(cfg), shared.clone(), now, UNIX_START, 5);
        Driver {
            e,
            shared,
            filter,
            now,
            key: long_term_key_md5(USER, REALM, PASS),
            nonces: HashMap::new(),
            relays: HashMap::new(),
            conn_ids: Vec::new(),
            tokens: Vec::new(),
            tid: 0,
            fail: false,
            buf: vec![0u8; PEER_HEADROOM + 70_000 + PEER_TAILROOM],
        }
    }

    /// Client `who & 7`: 0-3 over UDP, 4-7 over TCP, each its own 5-tuple.
    pub fn tuple(who: u8) -> FiveTuple {
        let who = who & 7;
        FiveTuple {
            client: SocketAddr::from(([198, 51, 100, 1 + (who & 3)], 40000 + u16::from(who))),
            server: LISTEN.parse().unwrap(),
            transport: if who & 4 == 0 {
                Transport::Udp
            } else {
                Transport::Tcp
            },
        }
    }

    fn next_tid(&mut self) -> [u8; 12] {
        self.tid = self.tid.wrapping_add(1);
        let mut t = [0xa5; 12];
        t[8..].copy_from_slice(&self.tid.to_be_bytes());
        t
    }

    // ------------------------------------------------------------------ steps

    /// Raw bytes from a client.
    pub fn client_datagram(&mut self, who: u8, data: &[u8]) {
        let tuple = Self::tuple(who);
        let action = self.e.handle_client(self.now, tuple, data);
        self.check_action(&action);
        self.pump();
    }

    /// A datagram from peer `peer_ix` on relay socket `relay` (any id: unknown ones too).
    pub fn peer_datagram(&mut self, relay: u8, peer_ix: u8, payload: &[u8]) {
        let peer = peer(peer_ix);
        let n = payload
            .len()
            .min(self.buf.len() - PEER_HEADROOM - PEER_TAILROOM);
        let payload = &payload[..n];
        self.buf[PEER_HEADROOM..PEER_HEADROOM + n].copy_from_slice(payload);
        let relay = self.pick_relay(relay);
        if let Some((tuple, range)) =
            self.e
                .handle_peer(self.now, relay, peer, &mut self.buf, PEER_HEADROOM, n)
        {
            let framed = &self.buf[range];
            let stream = tuple.transport != Transport::Udp;
            match channel_data::parse(framed, channel_data::MAX_CHANNEL_LEGACY) {
                Some((_, p)) => {
                    assert_eq!(p, payload, "ChannelData carries the peer's payload");
                    assert!(!stream || framed.len() % 4 == 0, "padded on streams");
                }
                None => {
                    let m = Message::parse(framed).expect("a Data indication");
                    assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
                    assert_eq!(m.get(attr::DATA), Some(payload));
                    let from = m
                        .get(attr::XOR_PEER_ADDRESS)
                        .and_then(|v| decode_xor_addr(v, &m.transaction_id()));
                    assert_eq!(from, Some(peer));
                }
            }
        }
        self.pump();
    }

    /// Time passes.
    pub fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.e.handle_timeout(self.now);
        self.pump();
    }

    /// A TCP peer connects to relay `relay` (`close` false), or a known connection (picked by
    /// `peer_ix`) closes (`close` true).
    pub fn peer_tcp(&mut self, relay: u8, peer_ix: u8, close: bool) {
        let relay = self.pick_relay(relay);
        let p = peer(peer_ix);
        if close {
            let n = self.conn_ids.len().max(1);
            let id = self.conn_ids.get(peer_ix as usize % n).copied();
            self.e
                .on_peer_tcp_closed(id.unwrap_or(u32::from(peer_ix)), 0, 0);
        } else if let Some(id) = self.e.on_peer_tcp_accepted(self.now, relay, p) {
            assert!(
                self.relays.get(&relay).is_some_and(|r| r.1),
                "a peer connection accepted on a TCP relay"
            );
            self.conn_ids.push(id);
        }
        self.pump();
    }

    /// The client's connection closed (a no-op for UDP clients, as in the runtime).
    pub fn client_closed(&mut self, who: u8) {
        let tuple = Self::tuple(who);
        if tuple.transport != Transport::Udp {
            self.e.on_client_closed(self.now, tuple);
            self.pump();
        }
    }

    /// A request built with the codec; signed (valid credentials and nonce) unless it is a
    /// Binding request or a Send indication. `script` adds attributes, see [`Driver::attrs`].
    pub fn signed_request(&mut self, who: u8, method_ix: u8, script: &[u8]) {
        let tuple = Self::tuple(who);
        let m = METHODS[(method_ix & 7) as usize];
        if m == method::SEND || m == method::BINDING {
            let class = if m == method::SEND {
                Class::Indication
            } else {
                Class::Request
            };
            let tid = self.next_tid();
            let mut b = Vec::new();
            let mut w = Writer::new(&mut b, m, class, &tid);
            self.attrs(&mut w, script);
            let action = self.e.handle_client(self.now, tuple, &b);
            self.check_action(&action);
            self.pump();
            return;
        }
        // At most: (no nonce yet → 401) + signed + (stale → 438) + signed again.
        for _ in 0..3 {
            let tid = self.next_tid();
            let mut b = Vec::new();
            let mut w = Writer::new(&mut b, m, Class::Request, &tid);
            self.attrs(&mut w, script);
            if let Some((realm, nonce)) = self.nonces.get(&tuple) {
                w.attr(attr::USERNAME, USER.as_bytes())
                    .attr(attr::REALM, realm)
                    .attr(attr::NONCE, nonce)
                    .integrity(IntegrityKind::Sha1, &self.key);
            }
            if method_ix & 0x80 != 0 {
                w.fingerprint();
            }
            let action = self.e.handle_client(self.now, tuple, &b);
            self.check_action(&action);
            let challenged = self.pump_until(tuple, tid);
            if !challenged {
                return;
            }
        }
    }

    /// A valid Allocate: REQUESTED-TRANSPORT UDP (TCP if `flags & 1` on a TCP client), and by
    /// `flags >> 1 & 3`: IPv4, REQUESTED-ADDRESS-FAMILY IPv6, ADDITIONAL-ADDRESS-FAMILY IPv6
    /// (dual), or EVEN-PORT with R. `flags & 8`: LIFETIME from `flags`.
    pub fn allocate(&mut self, who: u8, flags: u8) {
        let tcp = flags & 1 != 0 && Self::tuple(who).transport == Transport::Tcp;
        let mut script = vec![0, 1, if tcp { 6 } else { 17 }];
        match flags >> 1 & 3 {
            1 => script.extend_from_slice(&[4, 1, 2]),
            2 => script.extend_from_slice(&[5, 1, 2]),
            3 if !tcp => script.extend_from_slice(&[6, 1, 0x80]),
            _ => {}
        }
        if flags & 8 != 0 {
            script.extend_from_slice(&[1, 4, 0, 0, 0, flags]);
        }
        self.signed_request(who, 0, &script);
    }

    /// Attributes from a script of `[selector, len, value...]` entries (selector & 15):
    /// 0 REQUESTED-TRANSPORT (value[0]), 1 LIFETIME, 2 XOR-PEER-ADDRESS (peer table),
    /// 3 CHANNEL-NUMBER (0x4000 + one byte, or around the valid range with two),
    /// 4 REQUESTED-ADDRESS-FAMILY, 5 ADDITIONAL-ADDRESS-FAMILY, 6 EVEN-PORT, 7 DONT-FRAGMENT,
    /// 8 RESERVATION-TOKEN (a seen one, or raw), 9 CONNECTION-ID (a seen one, or raw), 10 DATA,
    /// else a raw attribute whose type is the first two value bytes.
    fn attrs(&self, w: &mut Writer, script: &[u8]) {
        let mut i = 0;
        while i + 2 <= script.len() {
            let sel = script[i] & 15;
            let len = (script[i + 1] as usize).min(script.len() - i - 2);
            let v = &script[i + 2..i + 2 + len];
            i += 2 + len;
            let b0 = v.first().copied().unwrap_or(0);
            let u32v = |v: &[u8]| {
                let mut x = [0u8; 4];
                let n = v.len().min(4);
                x[..n].copy_from_slice(&v[..n]);
                u32::from_be_bytes(x)
            };
            match sel {
                0 => {
                    w.attr(attr::REQUESTED_TRANSPORT, &[b0, 0, 0, 0]);
                }
                1 => {
                    w.u32(attr::LIFETIME, u32v(v));
                }
                2 => {
                    w.xor_addr(attr::XOR_PEER_ADDRESS, peer(b0));
                }
                3 => {
                    // One byte: a channel ChannelData steps can use; two: anything around the
                    // valid range (0x4000-0x4FFF, legacy up to 0x7FFF).
                    let n = match v {
                        [a, b, ..] => 0x4000 + u32::from(u16::from_be_bytes([*a, *b])) % 0x4100,
                        _ => 0x4000 + u32::from(b0),
                    };
                    w.u32(attr::CHANNEL_NUMBER, n << 16);
                }
                4 => {
                    w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[b0, 0, 0, 0]);
                }
                5 => {
                    w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[b0, 0, 0, 0]);
                }
                6 => {
                    w.attr(attr::EVEN_PORT, &[b0]);
                }
                7 => {
                    w.attr(attr::DONT_FRAGMENT, &[]);
                }
                8 => match self.tokens.get(b0 as usize % self.tokens.len().max(1)) {
                    Some(t) if len <= 1 => {
                        w.attr(attr::RESERVATION_TOKEN, t);
                    }
                    _ => {
                        w.attr(attr::RESERVATION_TOKEN, v);
                    }
                },
                9 => match self.conn_ids.get(b0 as usize % self.conn_ids.len().max(1)) {
                    Some(id) if len <= 1 => {
                        w.u32(attr::CONNECTION_ID, *id);
                    }
                    _ => {
                        w.u32(attr::CONNECTION_ID, u32v(v));
                    }
                },
                10 => {
                    w.attr(attr::DATA, v);
                }
                _ => {
                    let ty = u16::from_be_bytes([b0, v.get(1).copied().unwrap_or(0)]);
                    // Integrity and fingerprint are the harness's business.
                    if ![
                        attr::MESSAGE_INTEGRITY,
                        attr::MESSAGE_INTEGRITY_SHA256,
                        attr::FINGERPRINT,
                    ]
                    .contains(&ty)
                    {
                        w.attr(ty, v.get(2..).unwrap_or(&[]));
                    }
                }
            }
        }
    }

    /// ChannelData from client `who` on channel 0x4000 + `ch` (bound or not), framed for its
    /// transport. (Out-of-range numbers come as raw client datagrams.)
    pub fn channel_data(&mut self, who: u8, ch: u8, payload: &[u8]) {
        let tuple = Self::tuple(who);
        let n = payload.len().min(65535);
        let mut b = vec![0u8; 4 + n + 3];
        b[4..4 + n].copy_from_slice(&payload[..n]);
        let number = 0x4000 + u16::from(ch);
        let r =
            channel_data::frame_in_place(&mut b, 4, n, number, tuple.transport != Transport::Udp);
        let action = self.e.handle_client(self.now, tuple, &b[r]);
        self.check_action(&action);
        self.pump();
    }

    /// Everything expires, then shutdown: no port, quota unit or allocation may remain.
    pub fn finish(&mut self) {
        self.advance(4000);
        self.e.close_all(self.now);
        self.pump();
        assert_eq!(self.e.allocation_count(), 0);
        assert_eq!(self.shared.total_allocations(), 0, "quota units leaked");
        // Reservations are released when they expire (on the next pool operation).
        let _ = self.shared.redeem(0, self.now);
        assert_eq!(self.shared.ports_in_use(), 0, "relay ports leaked");
        assert!(
            self.relays.is_empty(),
            "relay sockets never closed: {:?}",
            self.relays
        );
    }

    // ------------------------------------------------------------------ fuzz input

    /// Run a fuzz input: frames `[op, len, bytes...]`. `op & 7` is the step, `op >> 3 & 7` the
    /// client; `op & 0xC0 == 0xC0` makes relay binds and TCP connects of this step fail.
    ///   0 raw client datagram        1 signed request: [method_ix, script...]
    ///   2 valid Allocate: [flags]    3 peer datagram: [relay, peer, payload...]
    ///   4 time: [n] → n*13 s (n*13+1 if absent, 1 s) 5 TCP peer: [relay, peer, close]
    ///   6 client connection closed   7 ChannelData: [channel, payload...]
    pub fn run(data: &[u8]) {
        let mut d = Driver::new();
        let mut i = 0;
        while i + 2 <= data.len() {
            let op = data[i];
            let len = (data[i + 1] as usize).min(data.len() - i - 2);
            let chunk = &data[i + 2..i + 2 + len];
            i += 2 + len;
            d.step(op, chunk);
        }
        d.finish();
    }

    pub fn step(&mut self, op: u8, chunk: &[u8]) {
        let who = op >> 3 & 7;
        let b = |k: usize| chunk.get(k).copied().unwrap_or(0);
        self.fail = op & 0xC0 == 0xC0;
        match op & 7 {
            0 => self.client_datagram(who, chunk),
            1 => self.signed_request(who, b(0), chunk.get(1..).unwrap_or(&[])),
            2 => self.allocate(who, b(0)),
            3 => self.peer_datagram(b(0), b(1), chunk.get(2..).unwrap_or(&[])),
            4 => self.advance(u64::from(b(0)) * 13 + 1),
            5 => self.peer_tcp(b(0), b(1), b(2) & 1 != 0),
            6 => self.client_closed(who),
            _ => self.channel_data(who, b(0), chunk.get(1..).unwrap_or(&[])),
        }
        self.fail = false;
    }

    // ------------------------------------------------------------------ the runtime's part

    /// Relay ids the engine used, or a few that it did not.
    fn pick_relay(&self, r: u8) -> u32 {
        let mut ids: Vec<u32> = self.relays.keys().copied().collect();
        ids.sort_unstable();
        match ids.get(r as usize % 8) {
            Some(&id) if r < 0xf0 => id,
            _ => u32::from(r % 16),
        }
    }

    /// The SSRF and relay invariants of one client action.
    fn check_action(&self, action: &ClientAction) {
        if let ClientAction::ToPeer { relay, peer, .. } = *action {
            assert!(
                self.filter.check(peer).is_ok(),
                "SSRF: data relayed to forbidden peer {peer}"
            );
            let (local, tcp) = self
                .relays
                .get(&relay)
                .unwrap_or_else(|| panic!("data from relay {relay}, which is not bound"));
            assert!(!tcp, "datagram from a TCP relay");
            assert_eq!(
                local.is_ipv4(),
                peer.is_ipv4(),
                "relay of the peer's family"
            );
        }
    }

    /// Carry out every command, drain every transmit, check the invariants.
    fn pump(&mut self) {
        self.pump_until(Self::tuple(0), [0; 12]);
    }

    /// [`Driver::pump`]; true if the answer to `tid` on `tuple` was a 401/438 challenge.
    fn pump_until(&mut self, tuple: FiveTuple, tid: [u8; 12]) -> bool {
        let mut challenged = false;
        loop {
            let mut progress = false;
            while let Some(c) = self.e.poll_command() {
                progress = true;
                self.command(c);
            }
            while let Some(t) = self.e.poll_transmit() {
                progress = true;
                let m = Message::parse(&t.data).expect("the engine sends well-formed STUN");
                self.learn(t.tuple, &m);
                if t.tuple == tuple && m.transaction_id() == tid && m.class == Class::Error {
                    let code = m.get(attr::ERROR_CODE).and_then(decode_error_code);
                    challenged |= matches!(code, Some((401 | 438, _)));
                }
            }
            if !progress {
                break;
            }
        }
        let n = self.e.allocation_count();
        assert!(n <= usize::from(MAX_PORT - MIN_PORT + 1));
        assert_eq!(
            self.shared.total_allocations() as usize,
            n,
            "quota count equals allocations (no bind is left pending)"
        );
        challenged
    }

    fn command(&mut self, c: RelayCommand) {
        let now = self.now;
        match c {
            RelayCommand::Bind { relay, addr, .. } | RelayCommand::BindTcp { relay, addr } => {
                let tcp = matches!(c, RelayCommand::BindTcp { .. });
                assert!((MIN_PORT..=MAX_PORT).contains(&addr.port()), "{addr}");
                let want: IpAddr = if addr.is_ipv4() {
                    RELAY_V4.parse().unwrap()
                } else {
                    RELAY_V6.parse().unwrap()
                };
                assert_eq!(addr.ip(), want, "relay bound on the relay IP");
                assert!(
                    !self.relays.contains_key(&relay),
                    "relay id {relay} bound twice"
                );
                if self.fail {
                    self.e
                        .on_relay_bound(now, relay, Err(std::io::ErrorKind::AddrInUse));
                } else {
                    self.relays.insert(relay, (addr, tcp));
                    self.e.on_relay_bound(now, relay, Ok(addr));
                }
            }
            RelayCommand::Close { relay } => {
                // A relay whose bind failed is never closed: it was never bound.
                self.relays.remove(&relay);
            }
            RelayCommand::Connect {
                relay,
                conn_id,
                peer,
            } => {
                assert!(
                    self.filter.check(peer).is_ok(),
                    "SSRF: TCP connection to forbidden peer {peer}"
                );
                let bound = self.relays.get(&relay).copied();
                assert!(bound.is_some_and(|(a, tcp)| tcp && a.is_ipv4() == peer.is_ipv4()));
                let r = if self.fail {
                    Err(std::io::ErrorKind::ConnectionRefused)
                } else {
                    Ok(())
                };
                self.e.on_tcp_connected(now, conn_id, r);
            }
            RelayCommand::Splice { tuple, .. } => {
                assert_ne!(tuple.transport, Transport::Udp, "splice on a stream");
            }
            RelayCommand::DropPeer { .. } => {}
            RelayCommand::CloseConnections { mut conn_ids } => {
                // RFC 6062 §5.5: one command per deleted allocation, each connection once.
                assert!(!conn_ids.is_empty(), "no empty close command");
                conn_ids.sort_unstable();
                let n = conn_ids.len();
                conn_ids.dedup();
                assert_eq!(conn_ids.len(), n, "a connection named twice");
            }
        }
    }

    /// Remember what a client would: nonces, CONNECTION-IDs, RESERVATION-TOKENs.
    fn learn(&mut self, tuple: FiveTuple, m: &Message) {
        if let (Some(realm), Some(nonce)) = (m.get(attr::REALM), m.get(attr::NONCE)) {
            self.nonces.insert(tuple, (realm.to_vec(), nonce.to_vec()));
        }
        if let Some(id) = m.get(attr::CONNECTION_ID).and_then(|v| v.try_into().ok()) {
            if self.conn_ids.len() < 64 {
                self.conn_ids.push(u32::from_be_bytes(id));
            }
        }
        if let Some(t) = m
            .get(attr::RESERVATION_TOKEN)
            .and_then(|v| v.try_into().ok())
        {
            if self.tokens.len() < 64 {
                self.tokens.push(t);
            }
        }
    }
}
