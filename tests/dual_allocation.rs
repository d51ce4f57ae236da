//! Dual allocation (RFC 8656 §7.2, ADDITIONAL-ADDRESS-FAMILY) over real loopback sockets: a UDP
//! client on 127.0.0.1 gets an IPv4 relayed address on 127.0.0.1 and an IPv6 one on [::1], and
//! reaches an IPv4 echo peer and an IPv6 echo peer each through the relay of its family, with
//! Send/Data indications and ChannelData. Then Refresh deletes the IPv6 half alone (§8.1), then
//! the rest.
//!
//! The client is a small blocking one built on ferroturn's codec (webrtc-rs's client does not
//! speak ADDITIONAL-ADDRESS-FAMILY).
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use common::{start_server, ServerOpts, PASS, REALM, USER};
use ferroturn::codec::stun::{
    attr, decode_address_error_code, decode_error_code, decode_u32, decode_xor_addr, method, Class,
    IntegrityKind, Message, Writer,
};
use ferroturn::codec::{channel_data, long_term_key_md5};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A UDP echo peer on `ip` in a thread; reports the source address of every datagram (the
/// relayed address the server sent it from). Stops when the test's receiver is gone.
fn echo_peer(ip: &str) -> (SocketAddr, mpsc::Receiver<SocketAddr>) {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let addr = s.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut b) {
            if tx.send(from).is_err() {
                return;
            }
            let _ = s.send_to(&b[..n], from);
        }
    });
    (addr, rx)
}

/// A TURN client over UDP with long-term credentials.
struct Client {
    s: UdpSocket,
    server: SocketAddr,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    key: [u8; 16],
    tid: u32,
}

impl Client {
    fn new(server: SocketAddr) -> Self {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        Client {
            s,
            server,
            realm: Vec::new(),
            nonce: Vec::new(),
            key: long_term_key_md5(USER, REALM, PASS),
            tid: 0,
        }
    }

    fn recv(&mut self) -> Vec<u8> {
        let mut b = vec![0u8; 2048];
        let (n, from) = self
            .s
            .recv_from(&mut b)
            .expect("a datagram from the server");
        assert_eq!(from, self.server);
        b.truncate(n);
        b
    }

    /// One request with the long-term credential dance (401 → realm/nonce → signed retry).
    /// Returns the signed response.
    fn request(&mut self, m: u16, body: impl Fn(&mut Writer)) -> Vec<u8> {
        for _ in 0..3 {
            self.tid += 1;
            let mut tid = [0x77; 12];
            tid[8..].copy_from_slice(&self.tid.to_be_bytes());
            let mut buf = Vec::new();
            let mut w = Writer::new(&mut buf, m, Class::Request, &tid);
            body(&mut w);
            if !self.nonce.is_empty() {
                w.attr(attr::USERNAME, USER.as_bytes())
                    .attr(attr::REALM, &self.realm)
                    .attr(attr::NONCE, &self.nonce)
                    .integrity(IntegrityKind::Sha1, &self.key);
            }
            self.s.send_to(&buf, self.server).unwrap();
            let resp = self.recv();
            let msg = Message::parse(&resp).expect("a STUN response");
            assert_eq!((msg.method, msg.transaction_id()), (m, tid));
            if msg.class == Class::Error {
                let (code, _) = decode_error_code(msg.get(attr::ERROR_CODE).unwrap()).unwrap();
                if code == 401 || code == 438 {
                    self.realm = msg.get(attr::REALM).unwrap().to_vec();
                    self.nonce = msg.get(attr::NONCE).unwrap().to_vec();
                    continue;
                }
            }
            assert!(msg.verify_integrity(&self.key), "response signed");
            return resp;
        }
        panic!("authentication did not converge");
    }

    fn expect_success(&mut self, m: u16, body: impl Fn(&mut Writer)) -> Vec<u8> {
        let resp = self.request(m, body);
        let msg = Message::parse(&resp).unwrap();
        if msg.class != Class::Success {
            let e = decode_error_code(msg.get(attr::ERROR_CODE).unwrap()).unwrap();
            panic!("method {m:#x} failed: {} {}", e.0, e.1);
        }
        resp
    }

    fn expect_error(&mut self, m: u16, body: impl Fn(&mut Writer)) -> u16 {
        let resp = self.request(m, body);
        let msg = Message::parse(&resp).unwrap();
        assert_eq!(msg.class, Class::Error);
        decode_error_code(msg.get(attr::ERROR_CODE).unwrap())
            .unwrap()
            .0
    }

    /// Allocate with ADDITIONAL-ADDRESS-FAMILY IPv6: (XOR-RELAYED-ADDRESSes in order,
    /// ADDRESS-ERROR-CODE as (family, code)).
    fn allocate_dual(&mut self) -> (Vec<SocketAddr>, Option<(u8, u16)>) {
        let resp = self.expect_success(method::ALLOCATE, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        });
        let m = Message::parse(&resp).unwrap();
        let tid = m.transaction_id();
        let relayed = m
            .iter()
            .filter(|(t, _)| *t == attr::XOR_RELAYED_ADDRESS)
            .map(|(_, v)| decode_xor_addr(v, &tid).unwrap())
            .collect();
        let error = m
            .get(attr::ADDRESS_ERROR_CODE)
            .and_then(decode_address_error_code)
            .map(|(f, code, _)| (f, code));
        (relayed, error)
    }

    fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) {
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::SEND, Class::Indication, &[0x55; 12])
            .xor_addr(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, payload);
        self.s.send_to(&buf, self.server).unwrap();
    }

    fn recv_data_indication(&mut self) -> (SocketAddr, Vec<u8>) {
        let d = self.recv();
        let m = Message::parse(&d).expect("a Data indication");
        assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
        let peer = decode_xor_addr(m.get(attr::XOR_PEER_ADDRESS).unwrap(), &m.transaction_id());
        (peer.unwrap(), m.get(attr::DATA).unwrap().to_vec())
    }

    fn channel_bind(&mut self, number: u16, peer: SocketAddr) {
        self.expect_success(method::CHANNEL_BIND, |w| {
            w.attr(
                attr::CHANNEL_NUMBER,
                &[(number >> 8) as u8, number as u8, 0, 0],
            )
            .xor_addr(attr::XOR_PEER_ADDRESS, peer);
        });
    }

    fn send_channel_data(&mut self, number: u16, payload: &[u8]) {
        let mut b = vec![0u8; 4 + payload.len()];
        b[4..].copy_from_slice(payload);
        let r = channel_data::frame_in_place(&mut b, 4, payload.len(), number, false);
        self.s.send_to(&b[r], self.server).unwrap();
    }

    fn recv_channel_data(&mut self) -> (u16, Vec<u8>) {
        let d = self.recv();
        let (ch, p) = channel_data::parse(&d, channel_data::MAX_CHANNEL).expect("ChannelData");
        (ch, p.to_vec())
    }

    /// Refresh; `family`: REQUESTED-ADDRESS-FAMILY (RFC 8656 §8.1). Returns LIFETIME.
    fn refresh(&mut self, family: Option<u8>, lifetime: u32) -> u32 {
        let resp = self.expect_success(method::REFRESH, |w| {
            if let Some(f) = family {
                w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[f, 0, 0, 0]);
            }
            w.u32(attr::LIFETIME, lifetime);
        });
        let m = Message::parse(&resp).unwrap();
        decode_u32(m.get(attr::LIFETIME).unwrap()).unwrap()
    }
}

/// Whether a UDP port is free on `addr`'s IP (the relay socket on it is closed).
fn port_free(addr: SocketAddr) -> bool {
    UdpSocket::bind(addr).is_ok()
}

#[test]
fn dual_allocation_relays_ipv4_and_ipv6_peers() {
    let srv =
        start_server(ServerOpts::block(40).tweak(|e| e.relay_ip_v6 = Some("::1".parse().unwrap())));
    let (peer4, seen4) = echo_peer("127.0.0.1");
    let (peer6, seen6) = echo_peer("::1");
    let mut c = Client::new(srv.addr);

    // RFC 8656 §7.2: two XOR-RELAYED-ADDRESS, IPv4 first, both in the relay port range.
    let (relayed, error) = c.allocate_dual();
    assert_eq!(error, None);
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    let (relay4, relay6) = (relayed[0], relayed[1]);
    assert_eq!(relay4.ip(), common::LOOPBACK);
    assert_eq!(relay6.ip(), "::1".parse::<std::net::IpAddr>().unwrap());
    for r in [relay4, relay6] {
        assert!((srv.min_port..=srv.max_port).contains(&r.port()), "{r}");
        assert!(!port_free(r), "relay socket bound on {r}");
    }
    assert_eq!(srv.allocation_count(), 1);

    // One CreatePermission for a peer of each family.
    c.expect_success(method::CREATE_PERMISSION, |w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, peer4)
            .xor_addr(attr::XOR_PEER_ADDRESS, peer6);
    });

    // Send / Data indications: each peer is reached from, and answers to, its family's relay.
    for (peer, relay, seen) in [(peer4, relay4, &seen4), (peer6, relay6, &seen6)] {
        for i in 0..10u8 {
            let p = vec![i; 1 + i as usize * 53];
            c.send_indication(peer, &p);
            let (from, back) = c.recv_data_indication();
            assert_eq!((from, back), (peer, p));
            assert_eq!(seen.recv_timeout(IO_TIMEOUT).unwrap(), relay);
        }
    }

    // ChannelData both ways, a channel per family.
    c.channel_bind(0x4000, peer6);
    c.channel_bind(0x4001, peer4);
    for i in 0..20usize {
        for (number, relay, seen) in [(0x4000, relay6, &seen6), (0x4001, relay4, &seen4)] {
            let p: Vec<u8> = (0..(1 + i * 61))
                .map(|x| (x + i + number as usize) as u8)
                .collect();
            c.send_channel_data(number, &p);
            assert_eq!(c.recv_channel_data(), (number, p));
            assert_eq!(seen.recv_timeout(IO_TIMEOUT).unwrap(), relay);
        }
    }

    // §8.1: a Refresh with REQUESTED-ADDRESS-FAMILY IPv6 and LIFETIME 0 deletes the IPv6
    // relayed address only; the IPv4 channel keeps working.
    assert_eq!(c.refresh(Some(2), 0), 0);
    assert!(port_free(relay6), "IPv6 relay socket closed");
    assert!(!port_free(relay4));
    assert_eq!(srv.allocation_count(), 1);
    let code = c.expect_error(method::REFRESH, |w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(code, 443);
    let code = c.expect_error(method::CREATE_PERMISSION, |w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, peer6);
    });
    assert_eq!(code, 443);
    c.send_channel_data(0x4001, b"still here");
    assert_eq!(c.recv_channel_data(), (0x4001, b"still here".to_vec()));
    assert_eq!(seen4.recv_timeout(IO_TIMEOUT).unwrap(), relay4);
    // The IPv6 channel is gone with its relay: nothing reaches the IPv6 peer.
    c.send_channel_data(0x4000, b"dropped");
    assert!(seen6.recv_timeout(Duration::from_millis(300)).is_err());

    // A Refresh without REQUESTED-ADDRESS-FAMILY and LIFETIME 0 deletes the rest.
    assert_eq!(c.refresh(None, 0), 0);
    assert!(port_free(relay4), "IPv4 relay socket closed");
    assert_eq!(srv.allocation_count(), 0);
}

#[test]
fn dual_allocation_without_ipv6_relay_is_ipv4_only_with_address_error_code() {
    // RFC 8656 §7.2 step 9: the server has no IPv6 relay address → success with the IPv4 relayed
    // address and ADDRESS-ERROR-CODE 440 (Address Family not Supported) for IPv6.
    let srv = start_server(ServerOpts::block(41));
    let (peer4, seen4) = echo_peer("127.0.0.1");
    let mut c = Client::new(srv.addr);
    let (relayed, error) = c.allocate_dual();
    assert_eq!(error, Some((2, 440)));
    assert_eq!(relayed.len(), 1);
    assert!(srv.in_relay_range(relayed[0]));
    c.channel_bind(0x4000, peer4);
    c.send_channel_data(0x4000, b"v4 only");
    assert_eq!(c.recv_channel_data(), (0x4000, b"v4 only".to_vec()));
    assert_eq!(seen4.recv_timeout(IO_TIMEOUT).unwrap(), relayed[0]);
    assert_eq!(c.refresh(None, 0), 0);
    assert_eq!(srv.allocation_count(), 0);
}
