//! An engine with one allocation, a channel and a permission, set up through real signed
//! requests (codec + the long-term credential round trip), for the zero-allocation test and the
//! relay-path benchmark (both include this file with `#[path]`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ferroturn::codec::long_term_key_md5;
use ferroturn::codec::stun::{attr, method, Class, IntegrityKind, Message, Writer};
use ferroturn::engine::peer_filter::{PeerFilter, PeerFilterConfig};
use ferroturn::engine::shared::Shared;
use ferroturn::engine::{Engine, EngineConfig, FiveTuple, RelayCommand, Transport, UserKey};

pub const CHANNEL: u16 = 0x4000;

pub struct Setup {
    pub engine: Engine,
    pub now: Instant,
    pub tuple: FiveTuple,
    pub relay: u32,
    /// Bound to CHANNEL.
    pub chan_peer: SocketAddr,
    /// Permitted, no channel: Send / Data indications.
    pub ind_peer: SocketAddr,
}

fn request(
    engine: &mut Engine,
    now: Instant,
    tuple: FiveTuple,
    m: u16,
    nonce: &mut Option<(Vec<u8>, Vec<u8>)>,
    tid: u8,
    body: &dyn Fn(&mut Writer),
) -> Vec<u8> {
    let key = long_term_key_md5("u", "bench", "p");
    let mut buf = Vec::new();
    let mut w = Writer::new(&mut buf, m, Class::Request, &[tid; 12]);
    body(&mut w);
    if let Some((realm, n)) = nonce {
        w.attr(attr::USERNAME, b"u")
            .attr(attr::REALM, realm)
            .attr(attr::NONCE, n)
            .integrity(IntegrityKind::Sha1, &key);
    }
    let _ = engine.handle_client(now, tuple, &buf);
    while let Some(cmd) = engine.poll_command() {
        if let RelayCommand::Bind { relay, addr, .. } = cmd {
            engine.on_relay_bound(now, relay, Ok(addr));
        }
    }
    let mut last = Vec::new();
    while let Some(t) = engine.poll_transmit() {
        last = t.data;
    }
    last
}

pub fn setup() -> Setup {
    let mut cfg = EngineConfig {
        realm: "bench".into(),
        relay_ip_v4: Some("192.0.2.1".parse().unwrap()),
        min_port: 50000,
        max_port: 50010,
        peer_filter: PeerFilter::new(PeerFilterConfig::default()),
        ..Default::default()
    };
    cfg.users.insert("u".into(), UserKey::Password("p".into()));
    let now = Instant::now();
    let shared = Arc::new(Shared::new(50000, 50010, [9; 32], 3));
    let mut engine = Engine::new(Arc::new(cfg), shared, now, 1_700_000_000, 7);
    let tuple = FiveTuple {
        client: "198.51.100.9:40000".parse().unwrap(),
        server: "192.0.2.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    };
    let chan_peer: SocketAddr = "203.0.113.5:5000".parse().unwrap();
    let ind_peer: SocketAddr = "203.0.113.6:6000".parse().unwrap();
    let transport = |w: &mut Writer| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    let mut nonce = None;
    // 401 → REALM and NONCE, then the signed Allocate.
    let r = request(
        &mut engine,
        now,
        tuple,
        method::ALLOCATE,
        &mut nonce,
        1,
        &transport,
    );
    let m = Message::parse(&r).unwrap();
    nonce = Some((
        m.get(attr::REALM).unwrap().to_vec(),
        m.get(attr::NONCE).unwrap().to_vec(),
    ));
    let r = request(
        &mut engine,
        now,
        tuple,
        method::ALLOCATE,
        &mut nonce,
        2,
        &transport,
    );
    assert_eq!(
        Message::parse(&r).unwrap().class,
        Class::Success,
        "allocate"
    );
    let r = request(
        &mut engine,
        now,
        tuple,
        method::CREATE_PERMISSION,
        &mut nonce,
        3,
        &|w| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, ind_peer);
        },
    );
    assert_eq!(
        Message::parse(&r).unwrap().class,
        Class::Success,
        "permission"
    );
    let r = request(
        &mut engine,
        now,
        tuple,
        method::CHANNEL_BIND,
        &mut nonce,
        4,
        &|w| {
            w.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0])
                .xor_addr(attr::XOR_PEER_ADDRESS, chan_peer);
        },
    );
    assert_eq!(
        Message::parse(&r).unwrap().class,
        Class::Success,
        "channel bind"
    );
    let relay = engine.allocations().next().unwrap().relays[0]
        .as_ref()
        .unwrap()
        .id;
    Setup {
        engine,
        now,
        tuple,
        relay,
        chan_peer,
        ind_peer,
    }
}

/// A Send indication to `peer` carrying `payload`.
pub fn send_indication(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    Writer::new(&mut buf, method::SEND, Class::Indication, &[5; 12])
        .xor_addr(attr::XOR_PEER_ADDRESS, peer)
        .attr(attr::DATA, payload);
    buf
}

/// ChannelData on CHANNEL carrying `payload` (datagram form, no padding).
pub fn channel_data(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0x40, 0x00, 0, 0];
    b[2..4].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    b.extend_from_slice(payload);
    b
}
