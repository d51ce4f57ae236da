//! The SSRF guard end to end (RFC 8656 §21, README "Peer filtering"): a real server on loopback
//! with the SECURE DEFAULT peer filter (loopback denied), driven by a small blocking client built
//! on ferroturn's codec over UDP and TCP.
//!
//! Every forbidden peer form is tried through every way a client can name a peer:
//! CreatePermission, ChannelBind and RFC 6062 Connect must answer 403 (not 443: the IPv6 forms
//! go through an IPv6 relay), a Send indication must be dropped without a word. Then each form
//! is shown reachable only by explicit configuration (`allowed-peer-ip`, `allow-loopback-peers`).
//!
//! Traffic only ever goes to loopback: a Send indication or a Connect towards a non-loopback
//! forbidden address is issued only after the same address was refused (403) on the same
//! allocation, so no permission exists for it and nothing can leave the host even if a check
//! were missing; data is relayed only to sockets of this test on 127.0.0.1 / [::1].
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{start_server, ServerOpts, TestServer, LOOPBACK, PASS, REALM, USER};
use ferroturn::codec::framing::frame_len;
use ferroturn::codec::stun::{
    attr, decode_error_code, decode_xor_addr, method, Class, IntegrityKind, Message, Writer,
};
use ferroturn::codec::{channel_data, long_term_key_md5};
use ferroturn::engine::peer_filter::{PeerFilter, PeerFilterConfig};
use ferroturn::engine::Stats;

const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a dropped datagram is waited for before concluding it was not relayed.
const SILENCE: Duration = Duration::from_millis(300);
const LOOPBACK_V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
/// A documentation address (reachable for the filter, like a public one) configured as one of
/// the server's own IPs, as an `external-ip` would be: the own-address rule without loopback
/// in the way. Only control messages ever name it (no data is sent there).
const OWN_PUBLIC: &str = "192.0.2.1";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn with_port(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}")), port)
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// A server with an IPv6 relay ([::1]) next to the IPv4 one, UDP and TCP on the same listening
/// address, and the peer filter rebuilt from the secure default: own listeners (UDP and TCP),
/// own IPs 127.0.0.1, ::1 and [`OWN_PUBLIC`], the relay port range. `adjust` then adds the
/// explicit configuration a test wants (allow lists, allow_loopback).
fn ssrf_server(block: u16, adjust: impl Fn(&mut PeerFilterConfig) + 'static) -> TestServer {
    let srv = start_server(ServerOpts::block(block).runtime(move |c| {
        c.engine.relay_ip_v6 = Some(LOOPBACK_V6);
        // The default test config listens for TCP next to UDP on the same address; the filter
        // must know both (a relay into our own TCP port is as bad as into the UDP one).
        assert!(!c.tcp_listen.is_empty(), "test server has a TCP listener");
        let mut f = PeerFilterConfig {
            own_listeners: c.listen.iter().chain(&c.tcp_listen).copied().collect(),
            own_ips: vec![LOOPBACK, LOOPBACK_V6, OWN_PUBLIC.parse().unwrap()],
            relay_ports: (c.engine.min_port, c.engine.max_port),
            ..Default::default()
        };
        adjust(&mut f);
        c.engine.peer_filter = PeerFilter::new(f);
    }));
    assert_eq!(
        srv.server().tcp_addrs(),
        [srv.addr],
        "TCP on the UDP address"
    );
    srv
}

/// Wait until the published counters satisfy `cond` (they are published once a second).
fn wait_stats(srv: &TestServer, what: &str, cond: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let mut sum = Stats::default();
        for s in srv.server().stats() {
            let e = &s.engine;
            sum.peers_denied += e.peers_denied;
            sum.dropped_no_permission += e.dropped_no_permission;
            sum.packets_to_peer += e.packets_to_peer;
            sum.packets_to_client += e.packets_to_client;
        }
        if cond(&sum) {
            return sum;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: counters never got there: {sum:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// A blocking TURN client over UDP or TCP, on ferroturn's codec
// ---------------------------------------------------------------------------------------------

enum Link {
    Udp { sock: UdpSocket, server: SocketAddr },
    Tcp { s: TcpStream, rbuf: Vec<u8> },
}

impl Link {
    fn send(&mut self, b: &[u8]) {
        match self {
            Link::Udp { sock, server } => {
                sock.send_to(b, *server).expect("send to server");
            }
            Link::Tcp { s, .. } => s.write_all(b).expect("write to server"),
        }
    }

    /// The next message from the server within `limit`, or None.
    fn recv(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + limit;
        match self {
            Link::Udp { sock, server } => {
                let mut b = vec![0u8; 65536];
                loop {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                        .unwrap();
                    match sock.recv_from(&mut b) {
                        Ok((n, from)) if from == *server => return Some(b[..n].to_vec()),
                        Ok(_) => continue,
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            return None
                        }
                        Err(e) => panic!("recv: {e}"),
                    }
                }
            }
            Link::Tcp { s, rbuf } => loop {
                let framed = frame_len(rbuf, channel_data::MAX_CHANNEL);
                if let Some(n) = framed.expect("server sends TURN framing") {
                    return Some(rbuf.drain(..n).collect());
                }
                let left = deadline.checked_duration_since(Instant::now())?;
                s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .unwrap();
                let mut b = [0u8; 4096];
                match s.read(&mut b) {
                    Ok(0) => panic!("server closed the connection"),
                    Ok(n) => rbuf.extend_from_slice(&b[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        return None
                    }
                    Err(e) => panic!("read: {e}"),
                }
            },
        }
    }
}

/// Which relayed addresses an Allocate asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    V4,
    V6,
    /// RFC 8656 §7.2 dual allocation (ADDITIONAL-ADDRESS-FAMILY IPv6).
    Dual,
}

struct Client {
    link: Link,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    key: [u8; 16],
    tid: u32,
}

impl Client {
    fn udp(server: SocketAddr) -> Self {
        let sock = UdpSocket::bind((LOOPBACK, 0)).expect("bind client");
        Self::new(Link::Udp { sock, server })
    }

    fn tcp(server: SocketAddr) -> Self {
        let s = TcpStream::connect_timeout(&server, IO_TIMEOUT).expect("connect to server");
        s.set_nodelay(true).unwrap();
        Self::new(Link::Tcp {
            s,
            rbuf: Vec::new(),
        })
    }

    fn new(link: Link) -> Self {
        Client {
            link,
            realm: Vec::new(),
            nonce: Vec::new(),
            key: long_term_key_md5(USER, REALM, PASS),
            tid: 0,
        }
    }

    fn next_tid(&mut self) -> [u8; 12] {
        self.tid += 1;
        let mut t = [0x5a; 12];
        t[8..].copy_from_slice(&self.tid.to_be_bytes());
        t
    }

    /// One transaction: over UDP retransmitted (same transaction id) until answered.
    fn transact(&mut self, req: &[u8], tid: [u8; 12]) -> Vec<u8> {
        let tries = if matches!(self.link, Link::Udp { .. }) {
            5
        } else {
            1
        };
        for _ in 0..tries {
            self.link.send(req);
            let deadline = Instant::now() + IO_TIMEOUT / tries;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                let Some(m) = self.link.recv(left) else { break };
                if Message::parse(&m).is_ok_and(|p| p.transaction_id() == tid) {
                    return m;
                }
            }
        }
        panic!("no answer to transaction {tid:?}");
    }

    /// A request with the long-term credential dance (401/438 → realm, nonce → signed retry);
    /// `Ok(success response)` or `Err(error code)`. Answers are checked to be signed.
    fn request(&mut self, m: u16, body: impl Fn(&mut Writer)) -> Result<Vec<u8>, u16> {
        for _ in 0..3 {
            let tid = self.next_tid();
            let mut buf = Vec::new();
            let mut w = Writer::new(&mut buf, m, Class::Request, &tid);
            body(&mut w);
            if !self.nonce.is_empty() {
                w.attr(attr::USERNAME, USER.as_bytes())
                    .attr(attr::REALM, &self.realm)
                    .attr(attr::NONCE, &self.nonce)
                    .integrity(IntegrityKind::Sha1, &self.key);
            }
            let resp = self.transact(&buf, tid);
            let msg = Message::parse(&resp).expect("a STUN response");
            if msg.class == Class::Success {
                assert!(msg.verify_integrity(&self.key), "success signed");
                return Ok(resp);
            }
            assert_eq!(msg.class, Class::Error);
            let (code, _) = decode_error_code(msg.get(attr::ERROR_CODE).expect("ERROR-CODE"))
                .expect("valid ERROR-CODE");
            if code == 401 || code == 438 {
                self.realm = msg.get(attr::REALM).expect("REALM").to_vec();
                self.nonce = msg.get(attr::NONCE).expect("NONCE").to_vec();
                continue;
            }
            assert!(
                msg.verify_integrity(&self.key),
                "error {code} to an authenticated request is signed"
            );
            return Err(code);
        }
        panic!("authentication did not converge");
    }

    /// Allocate; the relayed addresses (IPv4 first).
    fn allocate(&mut self, transport: u8, family: Family) -> Vec<SocketAddr> {
        let resp = self
            .request(method::ALLOCATE, |w| {
                w.attr(attr::REQUESTED_TRANSPORT, &[transport, 0, 0, 0]);
                match family {
                    Family::V4 => {}
                    Family::V6 => {
                        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
                    }
                    Family::Dual => {
                        w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
                    }
                }
            })
            .unwrap_or_else(|code| panic!("Allocate {family:?} failed: {code}"));
        let m = Message::parse(&resp).unwrap();
        let relayed: Vec<SocketAddr> = m
            .iter()
            .filter(|(t, _)| *t == attr::XOR_RELAYED_ADDRESS)
            .map(|(_, v)| decode_xor_addr(v, &m.transaction_id()).unwrap())
            .collect();
        let want: &[bool] = match family {
            Family::V4 => &[true],
            Family::V6 => &[false],
            Family::Dual => &[true, false],
        };
        let got: Vec<bool> = relayed.iter().map(SocketAddr::is_ipv4).collect();
        assert_eq!(got, want, "relayed addresses of a {family:?} allocation");
        relayed
    }

    fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), u16> {
        self.request(method::CREATE_PERMISSION, |w| {
            for p in peers {
                w.xor_addr(attr::XOR_PEER_ADDRESS, *p);
            }
        })
        .map(drop)
    }

    fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> Result<(), u16> {
        self.request(method::CHANNEL_BIND, |w| {
            w.u32(attr::CHANNEL_NUMBER, u32::from(number) << 16)
                .xor_addr(attr::XOR_PEER_ADDRESS, peer);
        })
        .map(drop)
    }

    /// RFC 6062 Connect → CONNECTION-ID or the error code.
    fn connect(&mut self, peer: SocketAddr) -> Result<u32, u16> {
        let resp = self.request(method::CONNECT, |w| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
        })?;
        let m = Message::parse(&resp).unwrap();
        Ok(u32::from_be_bytes(
            m.get(attr::CONNECTION_ID).unwrap().try_into().unwrap(),
        ))
    }

    fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) {
        let tid = self.next_tid();
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::SEND, Class::Indication, &tid)
            .xor_addr(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, payload);
        self.link.send(&buf);
    }

    fn send_channel_data(&mut self, number: u16, payload: &[u8]) {
        let mut b = vec![0u8; 4 + payload.len() + 3];
        b[4..4 + payload.len()].copy_from_slice(payload);
        let stream = matches!(self.link, Link::Tcp { .. });
        let r = channel_data::frame_in_place(&mut b, 4, payload.len(), number, stream);
        self.link.send(&b[r]);
    }

    /// The next Data indication: (peer, payload).
    fn recv_data_indication(&mut self) -> (SocketAddr, Vec<u8>) {
        let f = self.link.recv(IO_TIMEOUT).expect("a Data indication");
        let m = Message::parse(&f).expect("a STUN message");
        assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
        let peer = decode_xor_addr(m.get(attr::XOR_PEER_ADDRESS).unwrap(), &m.transaction_id());
        (peer.unwrap(), m.get(attr::DATA).unwrap().to_vec())
    }

    /// Nothing at all arrives from the server for [`SILENCE`].
    fn assert_silent(&mut self, what: &str) {
        if let Some(m) = self.link.recv(SILENCE) {
            panic!("{what}: unexpected message from the server: {m:02x?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Peers: loopback sinks that must stay silent, an echo that must answer
// ---------------------------------------------------------------------------------------------

/// A UDP socket that records whether anything reached it.
struct UdpSink(UdpSocket);

impl UdpSink {
    fn bind(ip: IpAddr) -> Self {
        UdpSink(UdpSocket::bind((ip, 0)).expect("bind sink"))
    }
    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }
    fn assert_nothing(&self, what: &str) {
        self.0.set_read_timeout(Some(SILENCE)).unwrap();
        let mut b = [0u8; 2048];
        if let Ok((n, from)) = self.0.recv_from(&mut b) {
            panic!(
                "{what}: {n} bytes from {from} reached {} (relayed to a forbidden peer)",
                self.addr()
            );
        }
    }
}

/// A TCP listener that must never see a connection.
struct TcpSink(TcpListener);

impl TcpSink {
    fn bind(ip: IpAddr) -> Self {
        let l = TcpListener::bind((ip, 0)).expect("bind TCP sink");
        l.set_nonblocking(true).unwrap();
        TcpSink(l)
    }
    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }
    fn assert_nothing(&self, what: &str) {
        match self.0.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok((_, from)) => panic!("{what}: the relay connected to {} from {from}", self.addr()),
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A UDP echo peer, bounded in datagrams, in its own thread.
fn udp_echo(ip: IpAddr) -> SocketAddr {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        for _ in 0..1000 {
            let Ok((n, from)) = s.recv_from(&mut b) else {
                return;
            };
            let _ = s.send_to(&b[..n], from);
        }
    });
    addr
}

/// A TCP listener that accepts (and holds) a few connections, in its own thread.
fn tcp_acceptor(ip: IpAddr) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().take(4) {
            match s {
                Ok(s) => held.push(s),
                Err(_) => return,
            }
        }
        std::thread::sleep(Duration::from_secs(20));
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// The forbidden forms
// ---------------------------------------------------------------------------------------------

/// Every forbidden peer form of the brief, with the port it is tried on: loopback forms point
/// at the sinks (so a leak would be seen there), the server's own sockets at themselves.
fn forbidden_peers(
    listen: SocketAddr,
    udp4: SocketAddr,
    udp4b: SocketAddr,
    udp6: SocketAddr,
) -> Vec<(&'static str, SocketAddr)> {
    let lp = listen.port();
    let (p4, p6) = (udp4.port(), udp6.port());
    vec![
        ("loopback", udp4),
        ("loopback 127/8", udp4b),
        ("unspecified v4", with_port("0.0.0.0", p4)),
        ("unspecified v6", with_port("::", p4)),
        ("loopback v6", udp6),
        ("v4-mapped loopback", with_port("::ffff:127.0.0.1", p4)),
        ("v4-mapped private", with_port("::ffff:10.0.0.1", 5000)),
        ("v4-compatible loopback", with_port("::127.0.0.1", p4)),
        ("NAT64 loopback", with_port("64:ff9b::7f00:1", p4)),
        ("6to4 loopback", with_port("2002:7f00:1::", p6)),
        ("RFC 1918 10/8", with_port("10.0.0.1", 5000)),
        ("RFC 1918 172.16/12", with_port("172.16.0.1", 5000)),
        ("RFC 1918 192.168/16", with_port("192.168.1.1", 5000)),
        ("CGNAT", with_port("100.64.0.1", 5000)),
        ("cloud metadata", with_port("169.254.169.254", 80)),
        ("link-local v6", with_port("fe80::1", 5000)),
        ("unique local", with_port("fc00::1", 5000)),
        ("multicast", with_port("224.0.0.1", 5000)),
        ("broadcast", with_port("255.255.255.255", 5000)),
        ("own listener", SocketAddr::new(LOOPBACK, lp)),
        ("own listener, v4-mapped", with_port("::ffff:127.0.0.1", lp)),
        (
            "own IP, port outside the relay range",
            SocketAddr::new(LOOPBACK, 22),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Secure default: 403 on CreatePermission / ChannelBind / Connect for every forbidden form (IPv6
/// ones through an IPv6 relay, so 403 and not 443), Send indications and ChannelData dropped
/// silently, nothing reaching the loopback sinks, and the counters agreeing exactly.
#[test]
fn forbidden_peers_are_refused_on_every_path() {
    let srv = ssrf_server(20, |_| {});
    let (s4, s4b, s6) = (
        UdpSink::bind(LOOPBACK),
        UdpSink::bind("127.1.2.3".parse().unwrap()),
        UdpSink::bind(LOOPBACK_V6),
    );
    let (t4, t6) = (TcpSink::bind(LOOPBACK), TcpSink::bind(LOOPBACK_V6));
    let cases = forbidden_peers(srv.addr, s4.addr(), s4b.addr(), s6.addr());
    assert!(
        !srv.in_relay_range(s4.addr()),
        "sink port outside the relay range"
    );
    let mut denied = 0u64; // 403s given: each counts once in peers_denied

    // UDP, dual allocation: both families through one client.
    let mut dual = Client::udp(srv.addr);
    let relayed = dual.allocate(17, Family::Dual);
    assert!(relayed
        .iter()
        .all(|r| (srv.min_port..=srv.max_port).contains(&r.port())));
    // UDP, IPv6-only allocation: the IPv6 forms again, and a family mismatch for contrast.
    let mut v6 = Client::udp(srv.addr);
    v6.allocate(17, Family::V6);
    assert_eq!(v6.create_permission(&[sa("8.8.8.8:53")]), Err(443));
    for (i, &(what, peer)) in cases.iter().enumerate() {
        let ch = 0x4000 + i as u16;
        assert_eq!(dual.create_permission(&[peer]), Err(403), "{what} {peer}");
        // Port 0 ("no port", as webrtc-rs sends): the IP rules alone still refuse.
        let no_port = SocketAddr::new(peer.ip(), 0);
        assert_eq!(
            dual.create_permission(&[no_port]),
            Err(403),
            "{what} {no_port}"
        );
        assert_eq!(dual.channel_bind(ch, peer), Err(403), "{what} {peer}");
        denied += 3;
        if peer.is_ipv6() {
            assert_eq!(v6.create_permission(&[peer]), Err(403), "{what} v6-only");
            assert_eq!(v6.channel_bind(ch, peer), Err(403), "{what} v6-only");
            denied += 2;
        }
    }
    // A forbidden peer among allowed ones refuses the whole request (RFC 8656 §9.2).
    let public = sa("203.0.113.5:5000");
    assert_eq!(
        dual.create_permission(&[public, sa("10.0.0.1:5000"), public]),
        Err(403)
    );
    denied += 1;

    // The own-address rule without loopback masking it: an own IP (as external-ip) on a port
    // outside the relay range is refused, inside it (another allocation) it is reachable.
    // Control messages only: nothing is ever sent there.
    let own22 = with_port(OWN_PUBLIC, 22);
    let own_relay = with_port(OWN_PUBLIC, srv.min_port + 50);
    assert_eq!(dual.create_permission(&[own22]), Err(403));
    assert_eq!(dual.channel_bind(0x4100, own22), Err(403));
    assert_eq!(
        dual.channel_bind(0x4100, with_port(OWN_PUBLIC, srv.addr.port())),
        Err(403)
    );
    denied += 3;
    assert_eq!(dual.channel_bind(0x4101, own_relay), Ok(()));

    // Data towards every forbidden form, only now that none of them has a permission: Send
    // indications and ChannelData on the refused channel numbers are dropped silently.
    for (i, &(_, peer)) in cases.iter().enumerate() {
        dual.send_indication(peer, b"must not arrive");
        dual.send_channel_data(0x4000 + i as u16, b"must not arrive");
        if peer.is_ipv6() {
            v6.send_indication(peer, b"must not arrive");
        }
    }
    let sends = cases.len() * 2 + cases.iter().filter(|(_, p)| p.is_ipv6()).count();
    dual.assert_silent("Send/ChannelData to forbidden peers");
    v6.assert_silent("Send to forbidden peers (IPv6 relay)");

    // RFC 6062: Connect from a TCP allocation of each family. Each peer is first refused by
    // CreatePermission on the same allocation (so no SYN can leave for a non-loopback address
    // even if Connect skipped the check), then by Connect itself.
    let mut tcp4 = Client::tcp(srv.addr);
    tcp4.allocate(6, Family::V4);
    let mut tcp6 = Client::tcp(srv.addr);
    tcp6.allocate(6, Family::V6);
    let tcp_cases: Vec<(&str, SocketAddr)> = cases
        .iter()
        .map(|&(what, p)| {
            // Loopback forms at the TCP sinks instead of the UDP ones.
            let port = if p == s4.addr() || p == s4b.addr() || p.port() == s4.addr().port() {
                t4.addr().port()
            } else if p == s6.addr() || p.port() == s6.addr().port() {
                t6.addr().port()
            } else {
                p.port()
            };
            (what, SocketAddr::new(p.ip(), port))
        })
        .collect();
    for &(what, peer) in &tcp_cases {
        let c = if peer.is_ipv4() { &mut tcp4 } else { &mut tcp6 };
        assert_eq!(c.create_permission(&[peer]), Err(403), "TCP {what} {peer}");
        assert_eq!(c.connect(peer), Err(403), "Connect {what} {peer}");
        denied += 2;
    }
    // The wrong family is still a 443, so the 403s above were the filter's.
    assert_eq!(tcp4.connect(sa("[2001:db8::1]:80")), Err(443));

    for (sink, name) in [(&s4, "127.0.0.1"), (&s4b, "127.1.2.3"), (&s6, "::1")] {
        sink.assert_nothing(name);
    }
    t4.assert_nothing("TCP 127.0.0.1");
    t6.assert_nothing("TCP ::1");

    let s = wait_stats(&srv, "forbidden peers", |s| {
        s.peers_denied >= denied && s.dropped_no_permission >= sends as u64
    });
    assert_eq!(s.peers_denied, denied, "every refusal counted once");
    assert_eq!(
        s.dropped_no_permission, sends as u64,
        "every Send/ChannelData dropped"
    );
    assert_eq!(s.packets_to_peer, 0, "nothing relayed to any peer");
    assert_eq!(srv.allocation_count(), 4);
}

/// `allowed-peer-ip` lifts exactly what it lists: every forbidden form becomes permissible when
/// (and only when) it is listed; its neighbours stay refused. Listing 127.0.0.1 makes it a
/// real peer (data flows), and since the allow list "beats every rule", even the own listener.
#[test]
fn allowed_peer_ip_lifts_exactly_what_it_lists() {
    let allowed = [
        "127.0.0.1",
        "127.1.2.3",
        "0.0.0.0",
        "::",
        "::1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "fe80::1",
        "fc00::1",
        "224.0.0.1",
        "255.255.255.255",
    ];
    let srv = ssrf_server(21, move |f| {
        f.allowed = allowed.iter().map(|s| s.parse().unwrap()).collect();
    });
    let echo = udp_echo(LOOPBACK);
    let (s4b, s6) = (
        UdpSink::bind("127.1.2.3".parse().unwrap()),
        UdpSink::bind(LOOPBACK_V6),
    );
    let cases = forbidden_peers(srv.addr, echo, s4b.addr(), s6.addr());
    let mut c = Client::udp(srv.addr);
    c.allocate(17, Family::Dual);
    for &(what, peer) in &cases {
        // Wrapped spellings (::ffff:, ::a.b.c.d, 64:ff9b::) are listed through the IPv4 they
        // carry; 6to4 2002:7f00:1:: too.
        assert_eq!(
            c.create_permission(&[peer]),
            Ok(()),
            "{what} {peer} allowed"
        );
    }
    let mut denied = 0;
    for peer in [
        "127.0.0.2:5000",
        "10.0.0.2:5000",
        "172.16.0.2:5000",
        "192.168.1.2:5000",
        "100.64.0.2:5000",
        "169.254.169.253:80",
        "[fe80::2]:5000",
        "[fc00::2]:5000",
        "[::ffff:10.0.0.2]:5000",
        "224.0.0.2:5000",
    ] {
        assert_eq!(
            c.create_permission(&[sa(peer)]),
            Err(403),
            "{peer} not listed"
        );
        assert_eq!(
            c.channel_bind(0x4000, sa(peer)),
            Err(403),
            "{peer} not listed"
        );
        denied += 2;
    }
    // A listed address is a real peer.
    c.send_indication(echo, b"listed");
    assert_eq!(c.recv_data_indication(), (echo, b"listed".to_vec()));
    let s = wait_stats(&srv, "allowed", |s| {
        s.packets_to_peer >= 1 && s.peers_denied >= denied
    });
    assert_eq!((s.packets_to_peer, s.peers_denied), (1, denied));
}

/// `allow-loopback-peers` lifts the loopback rule and nothing else: loopback peers work in every
/// spelling and through every path, while unspecified, private, link-local and the server's
/// own listeners stay refused, also for a Send indication on an existing permission.
#[test]
fn allow_loopback_lifts_loopback_only() {
    let srv = ssrf_server(22, |f| f.allow_loopback = true);
    let echo4 = udp_echo(LOOPBACK);
    let echo6 = udp_echo(LOOPBACK_V6);
    let own = srv.addr;
    let mut denied = 0u64;
    let mut relayed = 0u64;

    let mut c = Client::udp(srv.addr);
    c.allocate(17, Family::Dual);
    // Loopback works: Send and ChannelData, both families.
    c.create_permission(&[echo4, echo6])
        .expect("loopback allowed");
    for (i, peer) in [echo4, echo6].into_iter().enumerate() {
        c.send_indication(peer, b"hello");
        assert_eq!(c.recv_data_indication(), (peer, b"hello".to_vec()));
        let ch = 0x4000 + i as u16;
        c.channel_bind(ch, peer)
            .expect("channel to a loopback peer");
        c.send_channel_data(ch, b"over a channel");
        let f = c.link.recv(IO_TIMEOUT).expect("ChannelData back");
        assert_eq!(
            channel_data::parse(&f, channel_data::MAX_CHANNEL),
            Some((ch, &b"over a channel"[..]))
        );
        relayed += 2;
    }
    for peer in [
        "127.1.2.3:5000",
        "[::ffff:127.0.0.1]:5000",
        "[::127.0.0.1]:5000",
        "[64:ff9b::7f00:1]:5000",
        // Own IP, port outside the relay range: with loopback allowed, reachable (single-host
        // setups run their peers there).
        "127.0.0.1:22",
    ] {
        assert_eq!(c.create_permission(&[sa(peer)]), Ok(()), "{peer}");
    }
    // Still refused.
    for (what, peer) in [
        ("unspecified", with_port("0.0.0.0", echo4.port())),
        ("unspecified v6", with_port("::", echo6.port())),
        ("private", sa("10.0.0.1:5000")),
        ("mapped private", sa("[::ffff:10.0.0.1]:5000")),
        ("metadata", sa("169.254.169.254:80")),
        ("link-local v6", sa("[fe80::1]:5000")),
        ("own listener", own),
        (
            "own listener, v4-mapped",
            with_port("::ffff:127.0.0.1", own.port()),
        ),
        (
            "own listener, v4-compatible",
            with_port("::127.0.0.1", own.port()),
        ),
        (
            "own listener, NAT64",
            with_port("64:ff9b::7f00:1", own.port()),
        ),
    ] {
        // CreatePermission with the port: own listeners are refused by address.
        assert_eq!(c.create_permission(&[peer]), Err(403), "{what} {peer}");
        assert_eq!(c.channel_bind(0x4010, peer), Err(403), "{what} {peer}");
        denied += 2;
    }
    // A permission for 127.0.0.1 exists; a Send indication to our own listener on it is
    // still dropped (the full address is checked on Send).
    // The payload is a Binding request: relayed, it would be answered back to the relay and
    // come to us as a Data indication.
    let mut binding = Vec::new();
    Writer::new(&mut binding, method::BINDING, Class::Request, &[7; 12]);
    c.send_indication(own, &binding);
    denied += 1;
    c.assert_silent("Send to the own listener");

    // One forbidden peer makes the whole CreatePermission fail, installing nothing.
    let sink = UdpSink::bind(LOOPBACK);
    let mut c2 = Client::udp(srv.addr);
    c2.allocate(17, Family::V4);
    assert_eq!(
        c2.create_permission(&[sink.addr(), sa("10.0.0.1:5000")]),
        Err(403)
    );
    denied += 1;
    c2.send_indication(sink.addr(), b"no permission was installed");
    sink.assert_nothing("permission of a refused CreatePermission");

    // RFC 6062: Connect to a loopback peer works, to our own TCP listener it does not.
    let acceptor = tcp_acceptor(LOOPBACK);
    let mut t = Client::tcp(srv.addr);
    t.allocate(6, Family::V4);
    assert!(t.connect(acceptor).is_ok(), "Connect to a loopback peer");
    let tcp_own = srv.server().tcp_addrs()[0];
    for peer in [tcp_own, with_port("0.0.0.0", acceptor.port())] {
        assert_eq!(t.create_permission(&[peer]), Err(403), "{peer}");
        assert_eq!(t.connect(peer), Err(403), "Connect {peer}");
        denied += 2;
    }

    let s = wait_stats(&srv, "allow_loopback", |s| {
        s.peers_denied >= denied && s.packets_to_peer >= relayed
    });
    assert_eq!(s.peers_denied, denied, "every refusal counted once");
    assert_eq!(
        s.packets_to_peer, relayed,
        "only the loopback echoes were relayed"
    );
}

/// A reload (SIGHUP) that forbids a peer must stop relaying to it, on every path, including
/// channels bound before the reload (the engine drops permissions and channels the new filter
/// refuses).
#[test]
fn reload_that_forbids_a_peer_stops_existing_channels() {
    use std::sync::{Arc, Mutex};
    let stash: Arc<Mutex<Option<ferroturn::engine::EngineConfig>>> = Arc::default();
    let st = stash.clone();
    let srv = start_server(ServerOpts::block(23).runtime(move |c| {
        *st.lock().unwrap() = Some(c.engine.clone());
    }));
    let echo = udp_echo(LOOPBACK);
    let mut c = Client::udp(srv.addr);
    c.allocate(17, Family::V4);
    c.channel_bind(0x4000, echo)
        .expect("loopback allowed before the reload");
    c.send_channel_data(0x4000, b"before");
    assert!(
        c.link.recv(IO_TIMEOUT).is_some(),
        "relayed before the reload"
    );
    // The operator's new configuration: loopback peers no longer allowed.
    let mut cfg = stash.lock().unwrap().clone().expect("config stashed");
    cfg.peer_filter = PeerFilter::new(PeerFilterConfig {
        own_listeners: vec![srv.addr],
        own_ips: vec![LOOPBACK],
        relay_ports: (srv.min_port, srv.max_port),
        ..Default::default()
    });
    srv.server().reload(cfg);
    // The reload is applied once every shard answers a new request with it.
    let deadline = Instant::now() + IO_TIMEOUT;
    while c.create_permission(&[echo]) != Err(403) {
        assert!(Instant::now() < deadline, "reload never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.send_indication(echo, b"send after the reload");
    c.assert_silent("Send indication after the reload");
    c.send_channel_data(0x4000, b"channel after the reload");
    c.assert_silent("ChannelData after the reload");
}
